//! Helpers for tests with the test-only `echo` plugin (plugins/testing/echo): its tables come
//! from its sidecar settings and each event carries the raw values of its rows.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use serde_json::{Value, json};

use crate::{ClickHouse, Host, Redis};

/// Short retries and lingers, so that failures show quickly.
pub const CONFIG: &str =
    "retry_base_ms = 100\nretry_max_ms = 500\nmax_attempts = 2\ninsert_linger_ms = 50\nblock_ms = 200\n";

pub fn manifest(name: &str, version: &str, tables: Value) -> String {
    json!({"name": name, "version": version, "subscriptions": [format!("{name}.event")], "tables": tables}).to_string()
}

pub fn publish(conn: &mut redis::Connection, event_type: &str, payloads: &[Value]) -> Result<()> {
    // Ids `<type>-0`, `<type>-1`... numbered on across a test's calls (each test runs in a
    // thread of its own): the host drops an event whose id it has seen.
    thread_local! {
        static NEXT: std::cell::RefCell<std::collections::HashMap<String, u64>> = Default::default();
    }
    let first = NEXT.with(|n| {
        let mut n = n.borrow_mut();
        let next = n.entry(event_type.to_string()).or_default();
        let first = *next;
        *next += payloads.len() as u64;
        first
    });
    let mut pipe = redis::pipe();
    for (k, p) in payloads.iter().enumerate() {
        let i = first + k as u64;
        pipe.cmd("XADD")
            .arg(format!("events:{event_type}"))
            .arg("*")
            .arg("payload")
            .arg(p.to_string())
            .arg("id")
            .arg(format!("{event_type}-{i}"))
            .ignore();
    }
    pipe.query::<()>(conn)?;
    Ok(())
}

pub fn start_host(redis: &Redis, ch: &ClickHouse, plugins: &Path, config: &Path) -> Result<Host> {
    let h = Host::start(redis, ch, plugins, &[("SLUICE_CONFIG", &config.display().to_string())])?;
    h.wait_running(Duration::from_secs(60))?;
    Ok(h)
}
