//! Which hosts are alive, for counting a stream's consumers live: every running host keeps its
//! beat — its pipelines' streams and groups, and until when it counts as alive (15 s after the
//! beat, renewed every 5 s) — in one hash, `sluice:hosts`, and removes it when it stops. One
//! key, read with one HGETALL: no scan of the keyspace at each scrape (a Redis holding BullMQ
//! has a key per job), and one slot on a Redis Cluster. Beats past their time are ignored by
//! readers and removed by the next host's renewal (hosts' clocks are trusted to a few seconds).
//!
//! Why not the consumer group's own idle times: Redis (before 7.2) refreshes a consumer's idle
//! time only when a read delivers something, so a live host on a quiet stream looks exactly
//! like a stopped one; and a host whose reads are paused (ClickHouse away) is alive all the
//! same. The beat is written by a task of its own, whatever the pipelines do.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::redis_conn::RedisConn;
use crate::status::SharedRegistry;

/// How often a host renews its key.
pub const BEAT: Duration = Duration::from_secs(5);
/// How long the key outlives its last renewal: a host that died is no longer counted after it.
pub const EXPIRY: Duration = Duration::from_secs(15);

/// What a host's beat holds.
#[derive(Debug, Serialize, Deserialize)]
pub struct Beat {
    pub consumer: String,
    pub pid: u32,
    pub started_at: chrono::DateTime<chrono::Utc>,
    /// Until when it counts as alive (milliseconds since the epoch, the host's clock).
    pub alive_until_ms: i64,
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
        let now = chrono::Utc::now().timestamp_millis();
        let alive_until_ms = now + EXPIRY.as_millis() as i64;
        let beat = Beat { consumer: consumer.to_string(), pid: std::process::id(), started_at, alive_until_ms, reads };
        let value = serde_json::to_string(&beat).expect("a beat serializes");
        let renew = async {
            let _: () =
                redis::cmd("HSET").arg(crate::keys::HOSTS).arg(&*consumer).arg(value).query_async(&mut conn).await?;
            // Beats of hosts gone without a word (a crash) go, so the hash stays small.
            let stale: Vec<String> =
                all(&mut conn).await?.into_iter().filter(|b| b.alive_until_ms < now).map(|b| b.consumer).collect();
            if !stale.is_empty() {
                let _: () = redis::cmd("HDEL").arg(crate::keys::HOSTS).arg(stale).query_async(&mut conn).await?;
            }
            anyhow::Ok(())
        };
        match tokio::time::timeout(BEAT, renew).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "cannot renew this host's beat"),
            Err(_) => tracing::debug!("renewing this host's beat timed out"),
        }
    }
}

/// Removes this host's beat: a host that stops is not counted a moment longer.
pub async fn forget(conn: &mut RedisConn, consumer: &str) {
    let mut del = redis::cmd("HDEL");
    del.arg(crate::keys::HOSTS).arg(consumer);
    let _ = tokio::time::timeout(Duration::from_secs(2), del.query_async::<()>(conn)).await;
}

/// Every beat in the hash, alive or not.
async fn all(conn: &mut RedisConn) -> anyhow::Result<Vec<Beat>> {
    let map: std::collections::HashMap<String, String> =
        redis::cmd("HGETALL").arg(crate::keys::HOSTS).query_async(conn).await?;
    Ok(map.into_values().filter_map(|v| serde_json::from_str::<Beat>(&v).ok()).collect())
}

/// The hosts alive now.
pub async fn hosts(conn: &mut RedisConn) -> anyhow::Result<Vec<Beat>> {
    let now = chrono::Utc::now().timestamp_millis();
    Ok(all(conn).await?.into_iter().filter(|b| b.alive_until_ms >= now).collect())
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
