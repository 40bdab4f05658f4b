//! The Rust SDK for Sluice plugins.
//!
//! A plugin is a type that implements [`Plugin`]: a [`Manifest`] naming the event types it
//! handles and the tables it writes, and a `handle` function that turns one [`Event`] into
//! rows. Rows are plain structs declared with [`table!`]; [`export_plugin!`] wires the type to
//! the WIT world `sluice:plugin/plugin`.
//!
//! ```ignore
//! use sluice_sdk::{Event, Failure, Manifest, Output, Plugin, Table, Date, DateTime};
//!
//! sluice_sdk::table! {
//!     pub struct Visit = "visits" {
//!         event_date: Date = "Date",
//!         created_at: DateTime = "DateTime",
//!         page: String = "String",
//!     }
//! }
//!
//! struct Visits;
//! impl Plugin for Visits {
//!     fn manifest() -> Manifest {
//!         Manifest::new("visits", env!("CARGO_PKG_VERSION"))
//!             .subscribe("page.viewed")
//!             .table(Table::of::<Visit>().order_by(["event_date", "page"]))
//!     }
//!     fn handle(event: &Event, out: &mut Output) -> Result<(), Failure> {
//!         #[derive(serde::Deserialize)]
//!         struct PageViewed { page: String }
//!         let p: PageViewed = event.json()?;
//!         let at = DateTime::from_millis(event.timestamp_ms)?;
//!         out.row(&Visit { event_date: at.date(), created_at: at, page: p.page })
//!     }
//! }
//! sluice_sdk::export_plugin!(Visits);
//! ```
//!
//! Handling is per event, but the host calls the plugin with whole batches: the SDK loops over
//! the batch, encodes rows straight into the packed row buffer of the WIT contract, and turns
//! each `Err` into that event's failure without touching its batch-mates.

mod time;
mod value;

pub use time::{Date, DateTime, Timestamp, parse_rfc3339_millis, parse_rfc3339_nanos};
pub use value::{Value, ValueWriter};

use std::cell::RefCell;

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "plugin",
        path: "../../wit",
        pub_export_macro: true,
        default_bindings_module: "sluice_sdk::bindings",
    });
}

use bindings::sluice::plugin::host;
use bindings::sluice::plugin::types as wit;

pub use wit::Engine;

/// Reads one setting from the plugin's config: the `[settings]` table of the sidecar file
/// `<plugin file stem>.toml` beside the `.wasm` in the plugins directory.
pub fn config(key: &str) -> Option<String> {
    host::config_get(key)
}

/// Log severity for [`log`].
pub use host::Level;

/// Writes a structured log line through the host (attributed to this plugin).
pub fn log(level: Level, message: &str, fields: &[(&str, &str)]) {
    let fields: Vec<(String, String)> = fields.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    host::log(level, message, &fields);
}

/// One event handed to the plugin.
pub struct Event {
    pub id: String,
    pub event_type: String,
    pub timestamp_ms: i64,
    pub payload: String,
    pub source: Option<String>,
    pub tenant: Option<String>,
    /// 1 on the first delivery, 2 on the first retry, and so on.
    pub attempt: u32,
}

impl Event {
    /// Parses the JSON payload into `T`. A payload that is not valid JSON, is not an object,
    /// or lacks a field `T` requires, is a permanent failure that says so in plain words:
    /// `invalid order.created payload: payload is not valid JSON (line 1, column 2): …`,
    /// `… payload must be a JSON object, got an array`, `… missing field `orderId``.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, Failure> {
        serde_json::from_str(&self.payload).map_err(|e| {
            let what = if e.is_syntax() || e.is_eof() {
                let detail = e.to_string();
                let detail = detail.split(" at line ").next().unwrap_or(&detail).to_string();
                format!("payload is not valid JSON (line {}, column {}): {detail}", e.line(), e.column())
            } else {
                // Only on failure: what the payload is, to say an array is not an object.
                match serde_json::from_str::<serde_json::Value>(&self.payload) {
                    Ok(v) if !v.is_object() => format!("payload must be a JSON object, got {}", json_kind(&v)),
                    _ => e.to_string(),
                }
            };
            Failure::permanent(format!("invalid {} payload: {what}", self.event_type))
        })
    }
}

/// `an array`, `string "x"`, `number `1``: what a JSON value is, for messages.
fn json_kind(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "null".into(),
        serde_json::Value::Bool(b) => format!("boolean `{b}`"),
        serde_json::Value::Number(n) => format!("number `{n}`"),
        serde_json::Value::String(s) => format!("string {}", serde_json::Value::String(s.clone())),
        serde_json::Value::Array(_) => "an array".into(),
        serde_json::Value::Object(_) => "an object".into(),
    }
}

/// Why an event failed. `permanent` goes to the dead-letter stream at once, `transient` is
/// retried with backoff.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub permanent: bool,
    pub message: String,
}

impl Failure {
    pub fn permanent(message: impl Into<String>) -> Self {
        Failure { permanent: true, message: message.into() }
    }
    pub fn transient(message: impl Into<String>) -> Self {
        Failure { permanent: false, message: message.into() }
    }
}

/// A row type: a struct declared with [`table!`].
pub trait Row {
    /// The table name.
    const TABLE: &'static str;
    /// The columns, as (name, ClickHouse type), in declaration order.
    const COLUMNS: &'static [(&'static str, &'static str)];
    /// Writes one value per column, in declaration order.
    fn write_values(&self, w: &mut ValueWriter);
}

/// A table declaration, built from a [`Row`] type.
pub struct Table {
    inner: wit::Table,
}

impl Table {
    /// Declares the table of row type `R`: a MergeTree with no partition and no order key
    /// until set.
    pub fn of<R: Row>() -> Self {
        Table::new(R::TABLE, R::COLUMNS.iter().copied())
    }
    /// Declares a table from its name and (column name, ClickHouse type) pairs, for tables
    /// only known at run time; emit its rows with [`Output::dynamic_row`].
    pub fn new<N: AsRef<str>, T: AsRef<str>>(name: &str, columns: impl IntoIterator<Item = (N, T)>) -> Self {
        Table {
            inner: wit::Table {
                name: name.to_string(),
                columns: columns
                    .into_iter()
                    .map(|(n, t)| wit::Column {
                        name: n.as_ref().to_string(),
                        ty: t.as_ref().to_string(),
                        comment: None,
                    })
                    .collect(),
                engine: Engine::MergeTree,
                partition_by: None,
                order_by: Vec::new(),
                settings: Vec::new(),
            },
        }
    }
    pub fn engine(mut self, engine: Engine) -> Self {
        self.inner.engine = engine;
        self
    }
    /// SummingMergeTree over `columns` (all numeric columns when empty).
    pub fn summing<S: AsRef<str>>(self, columns: impl IntoIterator<Item = S>) -> Self {
        self.engine(Engine::SummingMergeTree(columns.into_iter().map(|c| c.as_ref().to_string()).collect()))
    }
    pub fn partition_by(mut self, expr: &str) -> Self {
        self.inner.partition_by = Some(expr.to_string());
        self
    }
    pub fn order_by<S: AsRef<str>>(mut self, keys: impl IntoIterator<Item = S>) -> Self {
        self.inner.order_by = keys.into_iter().map(|k| k.as_ref().to_string()).collect();
        self
    }
    pub fn setting(mut self, name: &str, value: &str) -> Self {
        self.inner.settings.push((name.to_string(), value.to_string()));
        self
    }
    /// Sets a column's comment.
    pub fn comment(mut self, column: &str, comment: &str) -> Self {
        if let Some(c) = self.inner.columns.iter_mut().find(|c| c.name == column) {
            c.comment = Some(comment.to_string());
        }
        self
    }
}

/// What a plugin is: name, version, subscriptions and tables.
pub struct Manifest {
    inner: wit::Manifest,
}

impl Manifest {
    /// `name` names the plugin's consumer groups: keep it stable across versions.
    pub fn new(name: &str, version: &str) -> Self {
        Manifest {
            inner: wit::Manifest {
                name: name.to_string(),
                version: version.to_string(),
                subscriptions: Vec::new(),
                tables: Vec::new(),
                extensions: Vec::new(),
            },
        }
    }
    pub fn subscribe(mut self, event_type: &str) -> Self {
        self.inner.subscriptions.push(event_type.to_string());
        self
    }
    pub fn table(mut self, table: Table) -> Self {
        self.inner.tables.push(table.inner);
        self
    }
}

/// Collects the rows of a batch in the packed encoding of the WIT contract.
pub struct Output {
    w: ValueWriter,
    event: u32,
    tables: Vec<&'static str>,
}

impl Output {
    /// Emits one row of `R`'s table for the current event.
    pub fn row<R: Row>(&mut self, row: &R) -> Result<(), Failure> {
        let Some(index) = self.tables.iter().position(|t| *t == R::TABLE) else {
            return Err(Failure::permanent(format!(
                "plugin bug: table `{}` is not declared in the manifest",
                R::TABLE
            )));
        };
        self.w.raw_u32(self.event);
        self.w.raw_u16(index as u16);
        self.w.raw_u16(R::COLUMNS.len() as u16);
        row.write_values(&mut self.w);
        Ok(())
    }

    /// Starts a row with a raw table index and value count and no checks at all, for tests of
    /// the host's own checks. Never use it in a real plugin.
    #[doc(hidden)]
    pub fn unchecked_row(&mut self, table_index: u16, values: u16) -> &mut ValueWriter {
        self.w.raw_u32(self.event);
        self.w.raw_u16(table_index);
        self.w.raw_u16(values);
        &mut self.w
    }

    /// Emits one row of `table` whose values `write` puts in the buffer, for plugins whose
    /// tables are only known at run time (declared from config, say). `write` must write
    /// exactly `values` values, one per column in declaration order; the host refuses the
    /// event otherwise. Prefer [`Output::row`] with a [`table!`] type where you can.
    pub fn dynamic_row(
        &mut self,
        table: &str,
        values: usize,
        write: impl FnOnce(&mut ValueWriter),
    ) -> Result<(), Failure> {
        let Some(index) = self.tables.iter().position(|t| *t == table) else {
            return Err(Failure::permanent(format!("plugin bug: table `{table}` is not declared in the manifest")));
        };
        let values = u16::try_from(values).map_err(|_| Failure::permanent(format!("{values} values in one row")))?;
        self.w.raw_u32(self.event);
        self.w.raw_u16(index as u16);
        self.w.raw_u16(values);
        write(&mut self.w);
        Ok(())
    }
}

/// A Sluice plugin.
pub trait Plugin {
    /// Describes the plugin; called once per loaded version.
    fn manifest() -> Manifest;
    /// Handles one event: emit its rows with [`Output::row`], or return why it failed.
    fn handle(event: &Event, out: &mut Output) -> Result<(), Failure>;
}

thread_local! {
    // Table names of the manifest, in order, computed once per instance.
    static TABLES: RefCell<Option<Vec<&'static str>>> = const { RefCell::new(None) };
}

fn table_names<P: Plugin>() -> Vec<&'static str> {
    TABLES.with(|t| {
        t.borrow_mut()
            .get_or_insert_with(|| {
                P::manifest().inner.tables.into_iter().map(|t| &*Box::leak(t.name.into_boxed_str())).collect()
            })
            .clone()
    })
}

/// Sends panic messages to the host, which puts them in the trap's error (a guest has no
/// stderr): "asked to panic on event 17" beats "wasm `unreachable` instruction executed".
fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            host::log(Level::Error, &format!("panicked: {info}"), &[("panic".to_string(), "true".to_string())]);
        }));
    });
}

#[doc(hidden)]
pub fn __describe<P: Plugin>() -> wit::Manifest {
    install_panic_hook();
    P::manifest().inner
}

#[doc(hidden)]
pub fn __handle_batch<P: Plugin>(events: Vec<wit::Event>) -> wit::BatchOutput {
    install_panic_hook();
    let mut out = Output { w: ValueWriter::with_capacity(events.len() * 128), event: 0, tables: table_names::<P>() };
    let mut failures = Vec::new();
    for (i, e) in events.into_iter().enumerate() {
        let event = Event {
            id: e.id,
            event_type: e.event_type,
            timestamp_ms: e.timestamp_ms,
            payload: e.payload,
            source: e.source,
            tenant: e.tenant,
            attempt: e.attempt,
        };
        out.event = i as u32;
        let start = out.w.len();
        if let Err(f) = P::handle(&event, &mut out) {
            // Drop the rows this event emitted before it failed.
            out.w.truncate(start);
            failures.push(wit::EventFailure {
                event: i as u32,
                kind: if f.permanent { wit::FailureKind::Permanent } else { wit::FailureKind::Transient },
                message: f.message,
            });
        }
    }
    wit::BatchOutput { rows: out.w.into_bytes(), failures }
}

/// Exports `$plugin` (a type implementing [`Plugin`]) as the component's `handler`.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        #[doc(hidden)]
        pub struct __SluiceExport;
        impl $crate::bindings::exports::sluice::plugin::handler::Guest for __SluiceExport {
            fn describe() -> $crate::bindings::sluice::plugin::types::Manifest {
                $crate::__describe::<$plugin>()
            }
            fn handle_batch(
                events: ::std::vec::Vec<$crate::bindings::sluice::plugin::types::Event>,
            ) -> $crate::bindings::sluice::plugin::types::BatchOutput {
                $crate::__handle_batch::<$plugin>(events)
            }
        }
        $crate::bindings::export!(__SluiceExport with_types_in $crate::bindings);
    };
}

/// Declares a row struct and its table's columns.
///
/// ```ignore
/// sluice_sdk::table! {
///     /// One promo code use.
///     pub struct PromoCodeUsage = "promo_code_usages_analytics" {
///         event_date: Date = "Date",
///         order_amount: f64 = "Float64",
///     }
/// }
/// ```
/// Each field's Rust type must implement [`Value`]; the string after `=` is its ClickHouse
/// type, checked by the host when the plugin loads and against every row it emits.
#[macro_export]
macro_rules! table {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident = $table:literal {
            $( $(#[$fmeta:meta])* $field:ident : $fty:ty = $chty:literal ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq)]
        $vis struct $name {
            $( $(#[$fmeta])* pub $field: $fty, )*
        }
        impl $crate::Row for $name {
            const TABLE: &'static str = $table;
            const COLUMNS: &'static [(&'static str, &'static str)] = &[ $( (stringify!($field), $chty) ),* ];
            fn write_values(&self, w: &mut $crate::ValueWriter) {
                $( $crate::Value::write_for(&self.$field, w, $chty); )*
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(payload: &str) -> Event {
        Event {
            id: "e".into(),
            event_type: "order.created".into(),
            timestamp_ms: 0,
            payload: payload.into(),
            source: None,
            tenant: None,
            attempt: 1,
        }
    }

    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct Order {
        #[serde(rename = "orderId")]
        order_id: String,
    }

    #[test]
    fn payload_errors_are_said_in_plain_words() {
        let e = |p: &str| event(p).json::<Order>().unwrap_err().message;
        assert_eq!(e("{\"orderId\": "), "invalid order.created payload: payload is not valid JSON (line 1, column 12): EOF while parsing a value");
        assert!(e("{\"a\" 1}").starts_with("invalid order.created payload: payload is not valid JSON (line 1, column 6): "), "{}", e("{\"a\" 1}"));
        assert_eq!(e("[1]"), "invalid order.created payload: payload must be a JSON object, got an array");
        assert_eq!(e("\"x\""), "invalid order.created payload: payload must be a JSON object, got string \"x\"");
        assert!(e("{}").contains("missing field `orderId`"), "{}", e("{}"));
        assert!(event("{\"orderId\": \"o\"}").json::<Order>().is_ok());
    }
}
