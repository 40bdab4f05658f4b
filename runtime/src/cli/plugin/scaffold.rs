//! `sluice plugin new`: a ready-to-build plugin project — manifest, one handler, one fixture,
//! one test — in Rust, Python (componentize-py), JavaScript (componentize-js) or TypeScript
//! (tsc, then componentize-js; the contract's types generated from the WIT, rows typed by their
//! table's columns). The project
//! depends on nothing but public packages: the SDK of its language and the WIT contract are
//! copied into it (from the ones this binary was built with), so it builds anywhere.
//!
//! All three languages get the same example (`example.created` events → rows of
//! `<name>_rows`) and the same fixture, so a project's fixture passes whichever it is in.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

const SDK_LIB: &str = include_str!("../../../../plugins/sdk/src/lib.rs");
const SDK_TIME: &str = include_str!("../../../../plugins/sdk/src/time.rs");
const SDK_VALUE: &str = include_str!("../../../../plugins/sdk/src/value.rs");
const SDK_PYTHON: &str = include_str!("../../../../sdk/python/sluice_sdk.py");
const SDK_JS: &str = include_str!("../../../../sdk/js/sluice_sdk.js");
const SDK_JS_TYPES: &str = include_str!("../../../../sdk/js/sluice_sdk.d.ts");
const WIT: &str = include_str!("../../../../wit/sluice.wit");
/// The contract the Python and JavaScript SDKs build against (batches and rows as JSON text).
pub const WIT_JSON: &str = include_str!("../../../../wit/0.2.0/sluice.wit");

/// Creates the project `<dir>/<name>` in `lang` (`rust`, `python` or `js`); returns its path.
pub fn new_plugin(name: &str, lang: &str, dir: &Path) -> Result<PathBuf> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.as_bytes()[0].is_ascii_lowercase()
        && name.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-');
    if !ok {
        bail!(
            "plugin name `{name}`: use lower-case letters, digits and `-`, starting with a letter (it names the consumer groups)"
        );
    }
    // The host keeps `sluice_*` tables (its registry) and `sluice:*` keys for itself: a plugin
    // named so could not load.
    if name == "sluice" || name.starts_with("sluice-") {
        bail!(
            "plugin name `{name}`: names starting with `sluice` are the host's own (its `sluice_` tables and `sluice:` keys); choose another, e.g. `{}`",
            name.trim_start_matches("sluice").trim_start_matches('-').to_string()
                + if name == "sluice" { "my-plugin" } else { "" }
        );
    }
    let root = dir.join(name);
    if root.exists() {
        bail!("{} already exists; choose another name or directory", root.display());
    }
    let snake = name.replace('-', "_");
    let table = format!("{snake}_rows");
    let fill = |t: &str| t.replace("{name}", name).replace("{table}", &table).replace("{snake}", &snake);
    let wit = if lang == "rust" { WIT } else { WIT_JSON };
    let mut files: Vec<(&str, String)> = vec![("fixtures/example.json", fill(FIXTURE)), ("wit/sluice.wit", wit.into())];
    match lang {
        "rust" => files.extend([
            ("Cargo.toml", fill(CARGO_TOML)),
            ("src/lib.rs", fill(PLUGIN_LIB)),
            ("README.md", fill(README)),
            (".gitignore", "/target\n".into()),
            ("sluice-sdk/Cargo.toml", SDK_CARGO_TOML.into()),
            // The SDK finds the WIT two levels up in the Sluice repository; here it is one level up.
            ("sluice-sdk/src/lib.rs", SDK_LIB.replace("path: \"../../wit\"", "path: \"../wit\"")),
            ("sluice-sdk/src/time.rs", SDK_TIME.into()),
            ("sluice-sdk/src/value.rs", SDK_VALUE.into()),
        ]),
        "python" => files.extend([
            ("app.py", fill(PY_APP)),
            ("test_app.py", fill(PY_TEST)),
            ("sluice_sdk.py", SDK_PYTHON.into()),
            ("requirements.txt", PY_REQUIREMENTS.into()),
            ("build.sh", fill(PY_BUILD)),
            ("README.md", fill(PY_README)),
            (".gitignore", "/.venv\n/build\n__pycache__/\n*.wasm\n".into()),
        ]),
        "js" => files.extend([
            ("package.json", fill(JS_PACKAGE)),
            ("plugin.js", fill(JS_ENTRY)),
            ("handler.js", fill(JS_HANDLER)),
            ("handler.test.js", fill(JS_TEST)),
            ("sluice_sdk.js", SDK_JS.into()),
            ("README.md", fill(JS_README)),
            (".gitignore", "/node_modules\n*.wasm\n".into()),
        ]),
        "ts" => files.extend([
            ("package.json", fill(TS_PACKAGE)),
            ("tsconfig.json", TS_CONFIG.into()),
            ("src/plugin.ts", TS_ENTRY.into()),
            ("src/handler.ts", fill(TS_HANDLER)),
            ("src/handler.test.ts", fill(TS_TEST)),
            ("src/sluice_sdk.js", SDK_JS.into()),
            ("src/sluice_sdk.d.ts", SDK_JS_TYPES.into()),
            ("types/sluice-plugin.d.ts", super::ts_types::declarations(WIT_JSON, "wit/sluice.wit")?),
            ("README.md", fill(TS_README)),
            (".gitignore", "/node_modules\n/dist\n*.wasm\n".into()),
        ]),
        other => bail!("--lang {other}: choose rust, python, js or ts"),
    }
    for (path, text) in files {
        let p = root.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).with_context(|| format!("cannot create {}", p.display()))?;
        std::fs::write(&p, text).with_context(|| format!("cannot write {}", p.display()))?;
    }
    #[cfg(unix)]
    if lang == "python" {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(root.join("build.sh"), std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(root)
}

/// What to run next, printed after the project is made.
pub fn next_steps(root: &Path, name: &str, lang: &str) -> String {
    let (test, wasm) = match lang {
        "python" => ("python3 -m unittest".to_string(), format!("{name}.wasm")),
        "js" | "ts" => ("npm test".to_string(), format!("{name}.wasm")),
        _ => ("cargo test".to_string(), format!("target/wasm32-wasip2/release/{}.wasm", name.replace('-', "_"))),
    };
    let sluice = crate::cli::this_command();
    format!(
        "created {}\n\nbuild:  cd {} && {sluice} plugin build\ntest:   {test} && {sluice} plugin test {wasm} --fixtures fixtures\ndeploy: cp {wasm} <plugins dir>/{name}.wasm   (the host hot-reloads it)",
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
sluice plugin build                                   # -> target/wasm32-wasip2/release/{snake}.wasm
                                                      #    (cargo build --release --target wasm32-wasip2)
cargo test                                            # the unit test in src/lib.rs
sluice plugin test target/wasm32-wasip2/release/{snake}.wasm --fixtures fixtures
sluice plugin inspect target/wasm32-wasip2/release/{snake}.wasm   # manifest and DDL
cp target/wasm32-wasip2/release/{snake}.wasm /path/to/plugins/{name}.wasm   # hot-reloaded
```

`sluice-sdk/` and `wit/` are copies of the Rust SDK and the WIT contract (`sluice:plugin@0.1.0`)
from the Sluice release that made this project.
"#;

const PY_REQUIREMENTS: &str = "componentize-py==0.25.1\n";

const PY_APP: &str = r#""""The `{name}` Sluice plugin: `example.created` events become rows of `{table}`.

Edit the payload fields, the table and `to_row`; keep the plugin's name stable (it names the
consumer groups). The host checks every row against the declared columns.
"""

import math

import sluice_sdk
from sluice_sdk import DateTime, Permanent, Plugin, Table

ROWS = Table(
    "{table}",
    [
        ("event_date", "Date"),
        ("created_at", "DateTime"),
        ("id", "String"),
        ("amount", "Float64"),
        ("note", "Nullable(String)"),
    ],
    partition_by="toYYYYMM(event_date)",
    order_by=["event_date", "id"],
)

# The event's payload, as the producer writes it (JSON, camelCase): required fields and types.
EXAMPLE_CREATED = {"id": str, "amount": float, "createdAt": str}


def to_row(p):
    """Turns one payload into its row; a bad value is a permanent failure that names it."""
    amount = float(p["amount"])
    if not math.isfinite(amount) or amount < 0:
        raise Permanent(f"amount must be a non-negative number, got {p['amount']}")
    note = p.get("note")
    if note is not None and not isinstance(note, str):
        raise Permanent(f"note must be a string, got {note!r}")
    at = DateTime.parse(p["createdAt"])
    return {"event_date": at.date(), "created_at": at, "id": p["id"], "amount": amount, "note": note}


class Example(Plugin):
    name = "{name}"
    version = "0.1.0"
    subscriptions = ["example.created"]
    tables = [ROWS]

    def handle(self, event, out):
        out.row(ROWS, to_row(event.json(EXAMPLE_CREATED)))


# What componentize-py exports as the WIT `handler` interface.
Handler = sluice_sdk.export(Example())
"#;

const PY_TEST: &str = r#"import unittest

from app import to_row
from sluice_sdk import Permanent


class ToRow(unittest.TestCase):
    def test_a_payload_becomes_a_row_and_a_negative_amount_fails(self):
        def p(amount):
            return {"id": "x1", "amount": amount, "createdAt": "2024-06-01T10:30:00Z"}

        row = to_row(p(12.5))
        self.assertEqual((row["id"], row["amount"]), ("x1", 12.5))
        with self.assertRaisesRegex(Permanent, "non-negative"):
            to_row(p(-1.0))


if __name__ == "__main__":
    unittest.main()
"#;

const PY_BUILD: &str = r#"#!/bin/sh
# Builds {name}.wasm with componentize-py, installed on first use into .venv (the version
# pinned in requirements.txt). Only app.py's own directory is packed into the component.
set -eu
cd "$(dirname "$0")"
if [ ! -x .venv/bin/componentize-py ]; then
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
fi
rm -rf build && mkdir -p build && cp app.py sluice_sdk.py build/
.venv/bin/componentize-py -q -d wit -w plugin componentize -p build app -o {name}.wasm
echo "built {name}.wasm"
"#;

const PY_README: &str = r#"# {name}

A Sluice plugin in Python, made by `sluice plugin new {name} --lang python`.

```sh
sluice plugin build                               # -> {name}.wasm (./build.sh: componentize-py in .venv)
python3 -m unittest                               # the unit test in test_app.py
sluice plugin test {name}.wasm --fixtures fixtures
sluice plugin inspect {name}.wasm                 # manifest and DDL
cp {name}.wasm /path/to/plugins/{name}.wasm       # hot-reloaded
```

`sluice_sdk.py` and `wit/` are copies of the Python SDK and the WIT contract
(`sluice:plugin@0.2.0`: batches in and rows out as JSON text) from the Sluice release that made this project. Needs python3 with
venv. The component is about 18 MB (it carries the Python interpreter) and takes a few seconds
to compile the first time the host loads it; the host caches the compiled code.
"#;

const JS_PACKAGE: &str = r#"{
  "name": "{name}",
  "version": "0.1.0",
  "private": true,
  "description": "A Sluice plugin made by `sluice plugin new {name} --lang js`",
  "type": "module",
  "engines": {
    "node": ">=20"
  },
  "scripts": {
    "build": "componentize-js plugin.js --wit wit -n plugin -d http fetch-event -o {name}.wasm",
    "test": "node --test"
  },
  "devDependencies": {
    "@bytecodealliance/componentize-js": "0.23.0",
    "@bytecodealliance/preview2-shim": "0.25.0"
  }
}
"#;

const JS_ENTRY: &str = r#"// The component's entry module: the only one that imports the host interface.
import * as host from 'sluice:plugin/host@0.2.0';
import { exportPlugin } from './sluice_sdk.js';
import { plugin } from './handler.js';

export const handler = exportPlugin(plugin, host);
"#;

const JS_HANDLER: &str = r#"// The `{name}` Sluice plugin: `example.created` events become rows of `{table}`.
//
// Edit the payload fields, the table and `toRow`; keep the plugin's name stable (it names the
// consumer groups). The host checks every row against the declared columns.

import { Instant, Permanent, Table } from './sluice_sdk.js';

export const rows = new Table(
  '{table}',
  [
    ['event_date', 'Date'],
    ['created_at', 'DateTime'],
    ['id', 'String'],
    ['amount', 'Float64'],
    ['note', 'Nullable(String)'],
  ],
  { partitionBy: 'toYYYYMM(event_date)', orderBy: ['event_date', 'id'] },
);

// The event's payload, as the producer writes it (JSON, camelCase): required fields and kinds.
const exampleCreated = { id: 'string', amount: 'number', createdAt: 'string' };

/** Turns one payload into its row; a bad value is a permanent failure that names it. */
export function toRow(p) {
  if (!Number.isFinite(p.amount) || p.amount < 0) {
    throw new Permanent(`amount must be a non-negative number, got ${p.amount}`);
  }
  const note = p.note ?? null;
  if (note !== null && typeof note !== 'string') throw new Permanent(`note must be a string, got ${JSON.stringify(note)}`);
  const at = Instant.parse(p.createdAt);
  return { event_date: at.date(), created_at: at, id: p.id, amount: p.amount, note };
}

export const plugin = {
  name: '{name}',
  version: '0.1.0',
  subscriptions: ['example.created'],
  tables: [rows],
  handle(event, out) {
    out.row(rows, toRow(event.json(exampleCreated)));
  },
};
"#;

const JS_TEST: &str = r#"import assert from 'node:assert/strict';
import { test } from 'node:test';
import { toRow } from './handler.js';

test('a payload becomes a row and a negative amount fails', () => {
  const p = (amount) => ({ id: 'x1', amount, createdAt: '2024-06-01T10:30:00Z' });
  const row = toRow(p(12.5));
  assert.deepEqual([row.id, row.amount], ['x1', 12.5]);
  assert.throws(() => toRow(p(-1)), /non-negative/);
});
"#;

const JS_README: &str = r#"# {name}

A Sluice plugin in JavaScript, made by `sluice plugin new {name} --lang js`.

```sh
sluice plugin build                               # -> {name}.wasm (npm install, npm run build: componentize-js)
npm test                                          # the unit test in handler.test.js
sluice plugin test {name}.wasm --fixtures fixtures
sluice plugin inspect {name}.wasm                 # manifest and DDL
cp {name}.wasm /path/to/plugins/{name}.wasm       # hot-reloaded
```

`sluice_sdk.js` and `wit/` are copies of the JavaScript SDK and the WIT contract
(`sluice:plugin@0.2.0`: batches in and rows out as JSON text) from the Sluice release that made this project. Needs Node.js 20 or
later. componentize-js only resolves imports inside this directory: keep modules here.
`@bytecodealliance/preview2-shim` is listed because componentize-js 0.23.0 imports it without
declaring it (a fresh `npm ci` would otherwise leave it out). The
component is about 12 MB (it carries a JavaScript engine); the host caches the compiled code.
"#;

const TS_PACKAGE: &str = r#"{
  "name": "{name}",
  "version": "0.1.0",
  "private": true,
  "description": "A Sluice plugin made by `sluice plugin new {name} --lang ts`",
  "type": "module",
  "engines": {
    "node": ">=20"
  },
  "scripts": {
    "compile": "tsc -p . && node -e \"require('fs').copyFileSync('src/sluice_sdk.js', 'dist/sluice_sdk.js')\"",
    "build": "npm run compile && componentize-js dist/plugin.js --wit wit -n plugin -d http fetch-event -o {name}.wasm",
    "test": "npm run compile && node --test dist/"
  },
  "devDependencies": {
    "@bytecodealliance/componentize-js": "0.23.0",
    "@bytecodealliance/preview2-shim": "0.25.0",
    "@types/node": "20.19.43",
    "typescript": "5.9.3"
  }
}
"#;

const TS_CONFIG: &str = r#"{
  "compilerOptions": {
    "target": "ES2022",
    "module": "ES2022",
    "moduleResolution": "Bundler",
    "strict": true,
    "noEmitOnError": true,
    "types": ["node"],
    "rootDir": "src",
    "outDir": "dist"
  },
  "include": ["src", "types"]
}
"#;

const TS_ENTRY: &str = r#"// The component's entry module: the only one that imports the host interface. Its export is
// checked against the contract's `handler` interface (types/sluice-plugin.d.ts, generated from
// wit/sluice.wit).
import * as host from 'sluice:plugin/host@0.2.0';
import type * as Handler from 'sluice:plugin/handler@0.2.0';
import { exportPlugin } from './sluice_sdk.js';
import { plugin } from './handler.js';

export const handler: typeof Handler = exportPlugin(plugin, host);
"#;

const TS_HANDLER: &str = r#"// The `{name}` Sluice plugin: `example.created` events become rows of `{table}`.
//
// Edit the payload fields, the table and `toRow`; keep the plugin's name stable (it names the
// consumer groups). The table's columns type its rows: a missing or misspelled column, or a
// value its ClickHouse type does not take, is a compile error. The host checks every row too.

import { Instant, Permanent, Table, type Payload, type Plugin, type Row } from './sluice_sdk.js';

export const rows = new Table(
  '{table}',
  [
    ['event_date', 'Date'],
    ['created_at', 'DateTime'],
    ['id', 'String'],
    ['amount', 'Float64'],
    ['note', 'Nullable(String)'],
  ],
  { partitionBy: 'toYYYYMM(event_date)', orderBy: ['event_date', 'id'] },
);

// The event's payload, as the producer writes it (JSON, camelCase): required fields and kinds.
const exampleCreated = { id: 'string', amount: 'number', createdAt: 'string' } as const;

/** Turns one payload into its row; a bad value is a permanent failure that names it. */
export function toRow(p: Payload<typeof exampleCreated>): Row<typeof rows.columns> {
  if (!Number.isFinite(p.amount) || p.amount < 0) {
    throw new Permanent(`amount must be a non-negative number, got ${p.amount}`);
  }
  const note = p.note ?? null;
  if (note !== null && typeof note !== 'string') throw new Permanent(`note must be a string, got ${JSON.stringify(note)}`);
  const at = Instant.parse(p.createdAt);
  return { event_date: at.date(), created_at: at, id: p.id, amount: p.amount, note };
}

export const plugin: Plugin = {
  name: '{name}',
  version: '0.1.0',
  subscriptions: ['example.created'],
  tables: [rows],
  handle(event, out) {
    out.row(rows, toRow(event.json(exampleCreated)));
  },
};
"#;

const TS_TEST: &str = r#"import assert from 'node:assert/strict';
import { test } from 'node:test';
import { toRow } from './handler.js';

test('a payload becomes a row and a negative amount fails', () => {
  const p = (amount: number) => ({ id: 'x1', amount, createdAt: '2024-06-01T10:30:00Z' });
  const row = toRow(p(12.5));
  assert.deepEqual([row.id, row.amount], ['x1', 12.5]);
  assert.throws(() => toRow(p(-1)), /non-negative/);
});
"#;

const TS_README: &str = r#"# {name}

A Sluice plugin in TypeScript, made by `sluice plugin new {name} --lang ts`.

```sh
sluice plugin build                               # -> {name}.wasm (npm install; npm run build: tsc, componentize-js)
npm test                                          # tsc, then the unit test in src/handler.test.ts
sluice plugin test {name}.wasm --fixtures fixtures
sluice plugin dev --plugins-dir /path/to/plugins  # build, test and deploy on every save
```

- `src/handler.ts`: the plugin. A `Table`'s column declarations type its rows (`Row<...>`), and
  `event.json(fields)` types the payload's required fields (`Payload<...>`).
- `types/sluice-plugin.d.ts`: the contract's types (`sluice:plugin@0.2.0`, `wit/sluice.wit`),
  generated from the WIT; `src/plugin.ts` checks the component's export against them.
  `sluice plugin types > types/sluice-plugin.d.ts` regenerates them for a newer release.
- `src/sluice_sdk.js` and `src/sluice_sdk.d.ts`: the JavaScript SDK and its types, copied from
  the Sluice release that made this project.

Needs Node.js 20 or later. componentize-js only resolves imports inside this directory: keep
modules here. The component is about 12 MB (it carries a JavaScript engine); the host caches
the compiled code.
"#;
