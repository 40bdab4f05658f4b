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
    // Ids unique in the test process: the host drops an event whose id it has seen.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut pipe = redis::pipe();
    for p in payloads {
        let i = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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
