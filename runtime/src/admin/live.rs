//! Which hosts are alive, for counting a stream's consumers live: every running host keeps a
//! key `sluice:host:<consumer name>` (its pipelines' streams and groups) that expires 15 s
//! after its last renewal (every 5 s), and deletes it when it stops.
//!
//! Why not the consumer group's own idle times: Redis (before 7.2) refreshes a consumer's idle
//! time only when a read delivers something, so a live host on a quiet stream looks exactly
//! like a stopped one; and a host whose reads are paused (ClickHouse away) is alive all the
//! same. The key is written by a task of its own, whatever the pipelines do.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::redis_conn::RedisConn;
use crate::status::SharedRegistry;

/// How often a host renews its key.
pub const BEAT: Duration = Duration::from_secs(5);
/// How long the key outlives its last renewal: a host that died is no longer counted after it.
pub const EXPIRY: Duration = Duration::from_secs(15);

/// What a host's key holds.
#[derive(Debug, Serialize, Deserialize)]
pub struct Beat {
    pub consumer: String,
    pub pid: u32,
    pub started_at: chrono::DateTime<chrono::Utc>,
    /// (stream, group) of every pipeline it runs.
    pub reads: Vec<(String, String)>,
}

/// Renews this host's key until aborted (see `forget` for a clean stop).
pub async fn run(mut conn: RedisConn, consumer: std::sync::Arc<str>, registry: SharedRegistry) {
    let started_at = chrono::Utc::now();
    let mut tick = tokio::time::interval(BEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let reads = registry.read().unwrap().pipelines.iter().map(|p| (p.stream.clone(), p.group.clone())).collect();
        let beat = Beat { consumer: consumer.to_string(), pid: std::process::id(), started_at, reads };
        let value = serde_json::to_string(&beat).expect("a beat serializes");
        let mut set = redis::cmd("SET");
        set.arg(crate::keys::host_alive(&consumer)).arg(value).arg("PX").arg(EXPIRY.as_millis() as u64);
        match tokio::time::timeout(BEAT, set.query_async::<()>(&mut conn)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "cannot renew this host's liveness key"),
            Err(_) => tracing::debug!("renewing this host's liveness key timed out"),
        }
    }
}

/// Deletes this host's key: a host that stops is not counted a moment longer.
pub async fn forget(conn: &mut RedisConn, consumer: &str) {
    let mut del = redis::cmd("DEL");
    del.arg(crate::keys::host_alive(consumer));
    let _ = tokio::time::timeout(Duration::from_secs(2), del.query_async::<()>(conn)).await;
}

/// The hosts alive now.
pub async fn hosts(conn: &mut RedisConn) -> anyhow::Result<Vec<Beat>> {
    let mut out = Vec::new();
    for k in conn.scan_keys("sluice:host:*", "string").await? {
        // One GET per key: in a cluster the keys live in different slots.
        let v: Option<String> = redis::cmd("GET").arg(&k).query_async(conn).await?;
        if let Some(beat) = v.and_then(|v| serde_json::from_str::<Beat>(&v).ok()) {
            out.push(beat);
        }
    }
    Ok(out)
}

/// Per (stream, group): the live consumers' names.
pub fn readers(hosts: &[Beat]) -> std::collections::BTreeMap<(String, String), BTreeSet<String>> {
    let mut m: std::collections::BTreeMap<(String, String), BTreeSet<String>> = Default::default();
    for h in hosts {
        for r in &h.reads {
            m.entry(r.clone()).or_default().insert(h.consumer.clone());
        }
    }
    m
}
