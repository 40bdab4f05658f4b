//! A test-only plugin (not shipped) that misbehaves on demand, for the sandbox tests. Each
//! `hostile.event` payload is `{"k": n, "do": what}`:
//! - `ok`: one row (k, "ok");
//! - `loop`: never returns (the host's deadline must stop it);
//! - `alloc`: allocates without bound (the memory limit must stop it);
//! - `panic`: panics;
//! - `rows`: returns ten million rows for one event;
//! - `undeclared`: writes a row for a table it did not declare (bypassing the SDK's check);
//! - `wrong_types`: writes a string where the table has a number;
//! - `escape`: tries to read a file and an environment variable, and says what it got.

use serde::Deserialize;
use sluice_sdk::{Event, Failure, Manifest, Output, Plugin, Table};

sluice_sdk::table! {
    pub struct HostileRow = "hostile_rows" {
        k: u64 = "UInt64",
        s: String = "String",
    }
}

#[derive(Deserialize)]
struct Payload {
    k: u64,
    #[serde(rename = "do")]
    action: String,
}

pub struct Hostile;

impl Plugin for Hostile {
    fn manifest() -> Manifest {
        Manifest::new("hostile", "1.0.0").subscribe("hostile.event").table(Table::of::<HostileRow>().order_by(["k"]))
    }

    fn handle(event: &Event, out: &mut Output) -> Result<(), Failure> {
        let p: Payload = event.json()?;
        match p.action.as_str() {
            "ok" => out.row(&HostileRow { k: p.k, s: "ok".into() }),
            "loop" => {
                let mut x = p.k;
                loop {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            }
            "alloc" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "panic" => panic!("hostile: asked to panic on k={}", p.k),
            "rows" => {
                for i in 0..10_000_000u64 {
                    out.row(&HostileRow { k: i, s: String::new() })?;
                }
                Ok(())
            }
            "undeclared" => {
                // Table index 7 does not exist: the host must refuse the buffer.
                let w = out.unchecked_row(7, 1);
                w.uint(p.k);
                Ok(())
            }
            "wrong_types" => out.dynamic_row("hostile_rows", 2, |w| {
                w.string("not a number");
                w.uint(p.k);
            }),
            "escape" => {
                let file = std::fs::read_to_string("/etc/passwd")
                    .map(|s| s.len().to_string())
                    .unwrap_or_else(|e| e.to_string());
                let env = std::env::var("HOME").unwrap_or_else(|e| e.to_string());
                let args = std::env::args().count();
                Err(Failure::permanent(format!("escape attempt: file: {file}; env HOME: {env}; args: {args}")))
            }
            other => Err(Failure::permanent(format!("unknown action {other}"))),
        }
    }
}

sluice_sdk::export_plugin!(Hostile);
