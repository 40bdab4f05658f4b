//! `sluice plugin new`: a ready-to-build plugin project — manifest, one handler, one fixture,
//! one test — that depends on nothing but public crates: the Rust SDK and the WIT contract are
//! copied into the project (from the ones this binary was built with), so it builds anywhere.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

const SDK_LIB: &str = include_str!("../../plugins/sdk/src/lib.rs");
const SDK_TIME: &str = include_str!("../../plugins/sdk/src/time.rs");
const SDK_VALUE: &str = include_str!("../../plugins/sdk/src/value.rs");
const WIT: &str = include_str!("../../wit/sluice.wit");

/// Creates the project `<dir>/<name>`; returns its path.
pub fn new_plugin(name: &str, lang: &str, dir: &Path) -> Result<PathBuf> {
    if lang != "rust" {
        bail!(
            "--lang {lang}: only `rust` scaffolds exist so far; plugins in other languages implement the same WIT (wit/sluice.wit)"
        );
    }
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.as_bytes()[0].is_ascii_lowercase()
        && name.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-');
    if !ok {
        bail!(
            "plugin name `{name}`: use lower-case letters, digits and `-`, starting with a letter (it names the consumer groups)"
        );
    }
    let root = dir.join(name);
    if root.exists() {
        bail!("{} already exists; choose another name or directory", root.display());
    }
    let snake = name.replace('-', "_");
    let table = format!("{snake}_rows");
    let files: Vec<(String, String)> = vec![
        ("Cargo.toml".into(), CARGO_TOML.replace("{name}", name)),
        ("src/lib.rs".into(), PLUGIN_LIB.replace("{name}", name).replace("{table}", &table)),
        ("fixtures/example.json".into(), FIXTURE.replace("{name}", name).replace("{table}", &table)),
        ("README.md".into(), README.replace("{name}", name).replace("{snake}", &snake)),
        (".gitignore".into(), "/target\n".into()),
        ("sluice-sdk/Cargo.toml".into(), SDK_CARGO_TOML.into()),
        // The SDK finds the WIT two levels up in the Sluice repository; here it is one level up.
        ("sluice-sdk/src/lib.rs".into(), SDK_LIB.replace("path: \"../../wit\"", "path: \"../wit\"")),
        ("sluice-sdk/src/time.rs".into(), SDK_TIME.into()),
        ("sluice-sdk/src/value.rs".into(), SDK_VALUE.into()),
        ("wit/sluice.wit".into(), WIT.into()),
    ];
    for (path, text) in files {
        let p = root.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).with_context(|| format!("cannot create {}", p.display()))?;
        std::fs::write(&p, text).with_context(|| format!("cannot write {}", p.display()))?;
    }
    Ok(root)
}

/// What to run next, printed after the project is made.
pub fn next_steps(root: &Path, name: &str) -> String {
    let wasm = format!("target/wasm32-wasip2/release/{}.wasm", name.replace('-', "_"));
    format!(
        "created {}\n\nbuild:  cd {} && cargo build --release --target wasm32-wasip2\ntest:   cargo test && sluice plugin test {wasm} --fixtures fixtures\ndeploy: cp {wasm} <plugins dir>/{name}.wasm   (the host hot-reloads it)",
        root.display(),
        root.display()
    )
}

const CARGO_TOML: &str = r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
rust-version = "1.95"
publish = false

# A WebAssembly component: cargo build --release --target wasm32-wasip2
[lib]
crate-type = ["cdylib"]

[dependencies]
sluice-sdk = { path = "sluice-sdk" }
serde = { version = "1", features = ["derive"] }
serde_json = "1"

[profile.release]
opt-level = 3
lto = true
codegen-units = 1
panic = "abort"
strip = true

[workspace]
"#;

const SDK_CARGO_TOML: &str = r#"[package]
name = "sluice-sdk"
description = "Write Sluice event-handler plugins in Rust (a copy of the SDK, made by `sluice plugin new`)"
version = "0.1.0"
edition = "2024"
rust-version = "1.95"
publish = false

[dependencies]
serde = { version = "1", features = ["derive"] }
serde_json = "1"
wit-bindgen = { version = "0.63", default-features = false, features = ["macros", "realloc"] }
"#;

const PLUGIN_LIB: &str = r#"//! The `{name}` Sluice plugin: `example.created` events become rows of `{table}`.
//!
//! Edit the payload type, the row type and `handle`; keep the manifest's name stable (it names
//! the consumer groups). The host checks every row against the declared columns.

use serde::Deserialize;
use sluice_sdk::{DateTime, Event, Failure, Manifest, Output, Plugin, Table};

sluice_sdk::table! {
    /// One row per event.
    pub struct ExampleRow = "{table}" {
        event_date: sluice_sdk::Date = "Date",
        created_at: DateTime = "DateTime",
        id: String = "String",
        amount: f64 = "Float64",
        note: Option<String> = "Nullable(String)",
    }
}

/// The event's payload, as the producer writes it (JSON, camelCase).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExampleCreated {
    pub id: String,
    pub amount: f64,
    pub created_at: String,
    #[serde(default)]
    pub note: Option<String>,
}

/// Turns one payload into its row; a bad value is a permanent failure that names it.
pub fn to_row(p: ExampleCreated) -> Result<ExampleRow, Failure> {
    if !p.amount.is_finite() || p.amount < 0.0 {
        return Err(Failure::permanent(format!("amount must be a non-negative number, got {}", p.amount)));
    }
    let at = DateTime::parse(&p.created_at)?;
    Ok(ExampleRow { event_date: at.date(), created_at: at, id: p.id, amount: p.amount, note: p.note })
}

pub struct Example;

impl Plugin for Example {
    fn manifest() -> Manifest {
        Manifest::new("{name}", env!("CARGO_PKG_VERSION"))
            .subscribe("example.created")
            .table(Table::of::<ExampleRow>().partition_by("toYYYYMM(event_date)").order_by(["event_date", "id"]))
    }

    fn handle(event: &Event, out: &mut Output) -> Result<(), Failure> {
        let payload: ExampleCreated = event.json()?;
        out.row(&to_row(payload)?)
    }
}

sluice_sdk::export_plugin!(Example);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_becomes_a_row_and_a_negative_amount_fails() {
        let p = |amount: f64| ExampleCreated {
            id: "x1".into(),
            amount,
            created_at: "2024-06-01T10:30:00Z".into(),
            note: None,
        };
        let row = to_row(p(12.5)).unwrap();
        assert_eq!((row.id.as_str(), row.amount), ("x1", 12.5));
        assert!(to_row(p(-1.0)).unwrap_err().message.contains("non-negative"));
    }
}
"#;

const FIXTURE: &str = r#"{
  "description": "an example.created event becomes one row; a bad payload fails permanently",
  "events": [
    {"type": "example.created", "id": "e1", "ts": 1717245000000,
     "payload": {"id": "x1", "amount": 12.5, "createdAt": "2024-06-01T10:30:00Z", "note": "first"}},
    {"type": "example.created", "id": "e2", "payload": {"id": "x2", "amount": -3, "createdAt": "2024-06-01T10:30:00Z"}},
    {"type": "example.created", "id": "e3", "payload": {"id": "x3"}}
  ],
  "expect": [
    {"event": 0, "table": "{table}",
     "row": {"event_date": "2024-06-01", "created_at": "2024-06-01 10:30:00", "id": "x1", "amount": 12.5, "note": "first"}},
    {"event": 1, "error": "permanent", "message_contains": "amount must be a non-negative number"},
    {"event": 2, "error": "permanent", "message_contains": "missing field `amount`"}
  ]
}
"#;

const README: &str = r#"# {name}

A Sluice plugin made by `sluice plugin new {name}`.

```sh
rustup target add wasm32-wasip2                       # once
cargo build --release --target wasm32-wasip2          # -> target/wasm32-wasip2/release/{snake}.wasm
cargo test                                            # the unit test in src/lib.rs
sluice plugin test target/wasm32-wasip2/release/{snake}.wasm --fixtures fixtures
sluice plugin inspect target/wasm32-wasip2/release/{snake}.wasm   # manifest and DDL
cp target/wasm32-wasip2/release/{snake}.wasm /path/to/plugins/{name}.wasm   # hot-reloaded
```

`sluice-sdk/` and `wit/` are copies of the Rust SDK and the WIT contract (`sluice:plugin@0.1.0`)
from the Sluice release that made this project.
"#;
