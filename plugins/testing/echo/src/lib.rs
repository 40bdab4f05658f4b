//! A test-only plugin (not shipped) for the schema tests: its manifest comes from the
//! `manifest` setting of its sidecar file, and each event's payload lists the raw values of the
//! rows to emit, so a test can put any value — good, wrong-typed, out of range, or a row of the
//! wrong width — into any declared column.
//!
//! Sidecar `echo.toml`:
//! ```toml
//! [settings]
//! manifest = '''{"name": "echo", "version": "1", "subscriptions": ["echo.event"],
//!   "tables": [{"name": "t", "columns": [["k", "UInt64"], ["s", "String"]], "order_by": ["k"],
//!               "engine": "merge-tree", "partition_by": null}]}'''
//! ```
//! Engines: `"merge-tree"`, `"aggregating-merge-tree"`, `{"replacing": "ver"}` (or null),
//! `{"summing": ["col", ...]}`.
//!
//! Payload: `{"rows": [{"table": "t", "values": [1, "x"]}], "fail": "why"}` — `fail` (optional)
//! makes the event fail permanently. A value is JSON: null, a bool, an integer (unsigned when
//! it is not negative), a float, a string, an array, or `{"float": "nan" | "inf" | "-inf"}`,
//! `{"bytes": [0, 255]}` for what JSON cannot say, `{"setting": "key"}` for the value of one of
//! its own settings (which version of a hot-reloaded plugin wrote a row).
//!
//! The setting `fail_every_event = "why"` makes every event fail permanently (a bad version).

use serde::Deserialize;
use serde_json::Value as Json;
use sluice_sdk::{Engine, Event, Failure, Manifest, Output, Plugin, Table, ValueWriter};

#[derive(Deserialize)]
struct ManifestConfig {
    name: String,
    version: String,
    subscriptions: Vec<String>,
    tables: Vec<TableConfig>,
}

#[derive(Deserialize)]
struct TableConfig {
    name: String,
    columns: Vec<(String, String)>,
    #[serde(default)]
    engine: Option<Json>,
    #[serde(default)]
    partition_by: Option<String>,
    order_by: Vec<String>,
}

const DEFAULT_MANIFEST: &str = r#"{"name": "echo", "version": "1", "subscriptions": ["echo.event"],
  "tables": [{"name": "echo_rows", "columns": [["k", "UInt64"], ["s", "String"]], "order_by": ["k"]}]}"#;

fn engine(e: &Option<Json>) -> Engine {
    match e {
        None => Engine::MergeTree,
        Some(Json::String(s)) if s == "aggregating-merge-tree" => Engine::AggregatingMergeTree,
        Some(Json::Object(o)) if o.contains_key("replacing") => {
            Engine::ReplacingMergeTree(o["replacing"].as_str().map(str::to_string))
        }
        Some(Json::Object(o)) if o.contains_key("summing") => Engine::SummingMergeTree(
            o["summing"].as_array().into_iter().flatten().filter_map(|c| c.as_str().map(str::to_string)).collect(),
        ),
        Some(_) => Engine::MergeTree,
    }
}

#[derive(Deserialize)]
struct Payload {
    #[serde(default)]
    rows: Vec<RowSpec>,
    #[serde(default)]
    fail: Option<String>,
}

#[derive(Deserialize)]
struct RowSpec {
    table: String,
    values: Vec<Json>,
}

fn write_json(v: &Json, w: &mut ValueWriter) {
    match v {
        Json::Null => w.null(),
        Json::Bool(b) => w.bool(*b),
        Json::Number(n) => {
            if let Some(u) = n.as_u64() {
                w.uint(u)
            } else if let Some(i) = n.as_i64() {
                w.int(i)
            } else {
                w.float(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Json::String(s) => w.string(s),
        Json::Array(items) => {
            w.array(items.len());
            for i in items {
                write_json(i, w);
            }
        }
        Json::Object(o) if o.contains_key("setting") => {
            let key = o["setting"].as_str().unwrap_or_default();
            w.string(&sluice_sdk::config(key).unwrap_or_default())
        }
        Json::Object(o) => match (o.get("float").and_then(Json::as_str), o.get("bytes")) {
            (Some("nan"), _) => w.float(f64::NAN),
            (Some("inf"), _) => w.float(f64::INFINITY),
            (Some("-inf"), _) => w.float(f64::NEG_INFINITY),
            (_, Some(Json::Array(b))) => {
                let bytes: Vec<u8> = b.iter().filter_map(|x| x.as_u64()).map(|x| x as u8).collect();
                w.bytes(&bytes)
            }
            _ => w.string(&v.to_string()),
        },
    }
}

pub struct Echo;

impl Plugin for Echo {
    fn manifest() -> Manifest {
        let text = sluice_sdk::config("manifest").unwrap_or_else(|| DEFAULT_MANIFEST.to_string());
        let m: ManifestConfig = serde_json::from_str(&text).expect("echo: invalid `manifest` setting");
        let mut out = Manifest::new(&m.name, &m.version);
        for s in &m.subscriptions {
            out = out.subscribe(s);
        }
        for t in &m.tables {
            let mut table = Table::new(&t.name, t.columns.iter().map(|(n, ty)| (n.as_str(), ty.as_str())))
                .engine(engine(&t.engine))
                .order_by(&t.order_by);
            if let Some(p) = &t.partition_by {
                table = table.partition_by(p);
            }
            out = out.table(table);
        }
        out
    }

    fn handle(event: &Event, out: &mut Output) -> Result<(), Failure> {
        // A version that fails every event (a bad canary, for the rollout tests).
        if let Some(why) = sluice_sdk::config("fail_every_event") {
            return Err(Failure::permanent(why));
        }
        let p: Payload = event.json()?;
        if let Some(why) = p.fail {
            return Err(Failure::permanent(why));
        }
        for row in &p.rows {
            out.dynamic_row(&row.table, row.values.len(), |w| {
                for v in &row.values {
                    write_json(v, w);
                }
            })?;
        }
        Ok(())
    }
}

sluice_sdk::export_plugin!(Echo);
