//! A test-only plugin (not shipped) that misbehaves on demand, for the sandbox tests. Each
//! `hostile.event` payload is `{"k": n, "do": what}`:
//! - `ok`: one row (k, "ok");
//! - `loop`: never returns (the host's deadline must stop it);
//! - `alloc`: allocates without bound (the memory limit must stop it);
//! - `panic`: panics;
//! - `rows`: returns ten million rows for one event;
//! - `undeclared`: writes a row for a table it did not declare (bypassing the SDK's check);
//! - `wrong_types`: writes a string where the table has a number;
//! - `escape`: tries to read a file and an environment variable, and says what it got;
//! - `deep`: returns one row whose value is an array nested 500,000 levels deep (2.5 MB);
//! - `sleep`: sleeps ten minutes through `wasi:clocks` (a blocking host call, not a loop);
//! - `udp`: opens a UDP socket and waits for a datagram;
//! - `log_flood`: writes 32 log lines of 32 fields of 1 MiB each, then 5,000 short ones;
//! - `recurse`: recurses until its stack (in linear memory) overflows.
//!
//! Its sidecar may set `name` (default `hostile`: copies under other file names say theirs) and
//! `describe_sleep_ms`, which makes `describe` sleep that long first.

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

/// Recurses for ever, with a frame the optimizer keeps.
#[allow(unconditional_recursion)]
fn recurse(n: u64, pad: &[u8; 64]) -> u64 {
    let mut local = *pad;
    local[(n % 64) as usize] = n as u8;
    std::hint::black_box(&local);
    recurse(n.wrapping_add(1), &local).wrapping_add(local[0] as u64)
}

pub struct Hostile;

impl Plugin for Hostile {
    fn manifest() -> Manifest {
        if let Some(ms) = sluice_sdk::config("describe_sleep_ms").and_then(|v| v.parse().ok()) {
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
        let name = sluice_sdk::config("name").unwrap_or_else(|| "hostile".into());
        Manifest::new(&name, "1.0.0").subscribe("hostile.event").table(Table::of::<HostileRow>().order_by(["k"]))
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
            "deep" => {
                let depth = 500_000;
                let w = out.unchecked_row(0, 2);
                w.uint(p.k);
                for _ in 0..depth {
                    w.array(1);
                }
                w.string("bottom");
                Ok(())
            }
            "sleep" => {
                std::thread::sleep(std::time::Duration::from_secs(600));
                Err(Failure::permanent("woke up after ten minutes"))
            }
            "udp" => {
                let got = std::net::UdpSocket::bind("0.0.0.0:0").and_then(|s| {
                    let mut buf = [0u8; 16];
                    s.recv(&mut buf)
                });
                Err(Failure::permanent(format!("udp: {got:?}")))
            }
            "log_flood" => {
                let big = "x".repeat(1 << 20);
                let keys: Vec<String> = (0..32).map(|i| format!("field{i}")).collect();
                let fields: Vec<(&str, &str)> = keys.iter().map(|k| (k.as_str(), big.as_str())).collect();
                for _ in 0..32 {
                    sluice_sdk::log(sluice_sdk::Level::Info, &big, &fields);
                }
                for i in 0..5000 {
                    sluice_sdk::log(sluice_sdk::Level::Info, "flood", &[("line", &i.to_string())]);
                }
                out.row(&HostileRow { k: p.k, s: "flooded".into() })
            }
            "recurse" => Err(Failure::permanent(format!("depth {}", recurse(p.k, &[0; 64])))),
            other => Err(Failure::permanent(format!("unknown action {other}"))),
        }
    }
}

sluice_sdk::export_plugin!(Hostile);
