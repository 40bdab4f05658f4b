//! Housekeeping of what the host keeps in Redis, every `housekeeping_interval_ms` (30 s) on
//! every host (each step is idempotent, so several hosts doing it at once is harmless):
//!
//! - **Retention.** Event streams are trimmed (`XTRIM MINID`) to their retention (a number of
//!   entries and/or an age, see `RetentionPolicy`) — but never past the oldest entry some
//!   consumer group has not acknowledged or not read yet: a slow or stopped plugin holds its
//!   stream's history, and says so (`held_back_by`). Replay streams keep nothing acknowledged;
//!   the dead-letter stream keeps its newest `dlq_max_len`; BullMQ's completed and failed sets
//!   their newest `bullmq_keep_*` jobs.
//! - **Streams nobody reads.** A stream under the event prefix that no running plugin
//!   subscribes to (a producer's typo, a plugin not deployed) is logged once, counted in
//!   `sluice_unsubscribed_stream_length` and listed on the dashboard.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

use anyhow::{Context, Result};
use redis::{Value, cmd};

use crate::keys::StreamId;
use crate::policy::{Retention, RetentionPolicy};
use crate::redis_conn::RedisConn;
use crate::status::{SharedRegistry, StreamRetention, Unsubscribed};

/// Entries trimmed by length per stream and run, at most (the rest next time): finding where
/// to cut reads the entries.
const LEN_STEP: u64 = 10_000;
const LEN_STEPS_PER_RUN: u32 = 10;

/// What the housekeeping needs.
pub struct Upkeep {
    pub conn: RedisConn,
    pub stream_prefix: String,
    pub retention: RetentionPolicy,
    /// BullMQ queues' key bases (`<prefix>:<queue>`).
    pub bullmq: Vec<String>,
    pub registry: SharedRegistry,
}

impl Upkeep {
    /// Runs until the task is aborted; the first run is a few seconds after start.
    pub async fn run(mut self, every: Duration) {
        let mut warned: HashSet<String> = HashSet::new();
        tokio::time::sleep(Duration::from_secs(2).min(every)).await;
        loop {
            if let Err(e) = self.once(&mut warned).await {
                tracing::warn!(error = format!("{e:#}"), "housekeeping of Redis failed; trying again later");
            }
            tokio::time::sleep(every).await;
        }
    }

    async fn once(&mut self, warned: &mut HashSet<String>) -> Result<()> {
        // The streams some running plugin reads.
        let subscribed: BTreeSet<String> =
            self.registry.read().unwrap().pipelines.iter().map(|p| p.stream.clone()).collect();
        let prefix = self.stream_prefix.clone();
        let mut streams = self.conn.scan_keys(&format!("{}*", crate::keys::glob_escape(&prefix)), "stream").await?;
        streams.retain(|s| !s.starts_with("sluice:"));
        streams.sort();
        let mut report = BTreeMap::new();
        let mut unsubscribed = Vec::new();
        for stream in &streams {
            let event_type = &stream[prefix.len()..];
            let retention = self.retention.of_type(event_type);
            match trim(&mut self.conn, stream, retention, false).await {
                Ok(r) => {
                    report.insert(stream.clone(), r);
                }
                Err(e) => {
                    tracing::warn!(stream = %stream, error = format!("{e:#}"), "cannot apply the stream's retention")
                }
            }
            if !subscribed.contains(stream) {
                let length: u64 = cmd("XLEN").arg(stream).query_async(&mut self.conn).await.unwrap_or(0);
                if warned.insert(stream.clone()) {
                    let types: Vec<&str> = subscribed.iter().filter_map(|s| s.strip_prefix(&prefix)).collect();
                    tracing::warn!(
                        stream = %stream,
                        length,
                        "no plugin subscribes to event type `{event_type}`: its events are kept (for the streams' retention) but nobody reads them (a typo in the producer's type, or a plugin not deployed?); subscribed types: {}",
                        if types.is_empty() { "none".to_string() } else { types.join(", ") }
                    );
                }
                metrics::gauge!("sluice_unsubscribed_stream_length", "stream" => stream.clone()).set(length as f64);
                unsubscribed.push(Unsubscribed { stream: stream.clone(), event_type: event_type.to_string(), length });
            }
        }
        // A stream that gained a subscriber (or vanished) is no longer counted.
        for gone in warned.iter().filter(|s| !unsubscribed.iter().any(|u| &&u.stream == s)) {
            metrics::gauge!("sluice_unsubscribed_stream_length", "stream" => gone.clone()).set(0.0);
        }
        warned.retain(|s| unsubscribed.iter().any(|u| &u.stream == s));

        // Replay streams: what every group acknowledged is done with. One without a group
        // (its plugin's group not created yet) keeps everything: it is waiting for a reader.
        for stream in self.conn.scan_keys("sluice:replay:*", "stream").await? {
            let done = Retention { max_len: Some(0), max_age: None };
            if let Err(e) = trim(&mut self.conn, &stream, done, true).await {
                tracing::warn!(stream = %stream, error = format!("{e:#}"), "cannot trim the replay stream");
            }
        }
        let dlq = crate::keys::DLQ_STREAM;
        match trim(&mut self.conn, dlq, self.retention.dead_letters, false).await {
            Ok(r) => {
                report.insert(dlq.to_string(), r);
            }
            Err(e) => tracing::warn!(stream = dlq, error = format!("{e:#}"), "cannot trim the dead letters"),
        }
        for base in self.bullmq.clone() {
            for (set, keep) in
                [("completed", self.retention.bullmq_keep_completed), ("failed", self.retention.bullmq_keep_failed)]
            {
                let Some(keep) = keep else { continue };
                match trim_jobs(&mut self.conn, &base, set, keep).await {
                    Ok(0) => {}
                    Ok(n) => {
                        metrics::counter!("sluice_bullmq_jobs_trimmed_total", "queue" => base.clone(), "set" => set)
                            .increment(n);
                        tracing::debug!(queue = %base, set, jobs = n, "removed the oldest finished jobs beyond the retention");
                    }
                    Err(e) => {
                        tracing::warn!(queue = %base, set, error = format!("{e:#}"), "cannot trim BullMQ's finished jobs")
                    }
                }
            }
        }
        let mut reg = self.registry.write().unwrap();
        for (stream, r) in report {
            let entry = reg.retention.entry(stream).or_default();
            entry.trimmed_total += r.trimmed_total;
            entry.retention = r.retention;
            entry.held_back_by = r.held_back_by;
        }
        reg.unsubscribed = unsubscribed;
        Ok(())
    }
}

/// Trims `stream` to `retention`, never past what a consumer group still needs;
/// `needs_a_group`: a stream without any group keeps everything. Returns what was done
/// (`trimmed_total` of this run).
async fn trim(
    conn: &mut RedisConn,
    stream: &str,
    retention: Retention,
    needs_a_group: bool,
) -> Result<StreamRetention> {
    let mut out = StreamRetention { retention: retention.to_string(), ..StreamRetention::default() };
    if retention.is_unbounded() {
        return Ok(out);
    }
    // Where retention would cut: entries with ids below `cut` go.
    let mut cut: Option<StreamId> = None;
    if let Some(age) = retention.max_age {
        let now = chrono::Utc::now().timestamp_millis().max(0) as u64;
        cut = Some(StreamId(now.saturating_sub(age.as_millis() as u64), 0));
    }
    if let Some(max_len) = retention.max_len {
        let len: u64 = cmd("XLEN").arg(stream).query_async(conn).await?;
        if len > max_len {
            let by_len = nth_id(conn, stream, (len - max_len).min(LEN_STEP * LEN_STEPS_PER_RUN as u64)).await?;
            cut = cut.max(by_len);
        }
    }
    let Some(cut) = cut else { return Ok(out) };
    let (floor, holder) = match oldest_needed(conn, stream).await? {
        Some((floor, group)) if floor < cut => (floor, Some(group)),
        None if needs_a_group => return Ok(out),
        _ => (cut, None),
    };
    let trimmed: u64 = cmd("XTRIM").arg(stream).arg("MINID").arg(floor.to_string()).query_async(conn).await?;
    if trimmed > 0 {
        metrics::counter!("sluice_stream_trimmed_total", "stream" => stream.to_string()).increment(trimmed);
    }
    if let Some(group) = &holder {
        // How much history the group holds beyond the retention, for operators.
        let age_s = (chrono::Utc::now().timestamp_millis().max(0) as u64).saturating_sub(floor.0) / 1000;
        metrics::gauge!("sluice_stream_retention_held_seconds", "stream" => stream.to_string()).set(age_s as f64);
        out.held_back_by =
            Some(format!("consumer group {group} has not finished entries since {floor} ({age_s} s old)"));
    } else {
        metrics::gauge!("sluice_stream_retention_held_seconds", "stream" => stream.to_string()).set(0.0);
    }
    out.trimmed_total = trimmed;
    Ok(out)
}

/// The id right after the `n`-th entry (1-based) from the start: trimming below it removes
/// `n` entries.
async fn nth_id(conn: &mut RedisConn, stream: &str, n: u64) -> Result<Option<StreamId>> {
    let mut start = "-".to_string();
    let mut left = n;
    let mut last = None;
    while left > 0 {
        let count = left.min(LEN_STEP);
        let v: Value = cmd("XRANGE").arg(stream).arg(&start).arg("+").arg("COUNT").arg(count).query_async(conn).await?;
        let Value::Array(entries) = v else { break };
        if entries.is_empty() {
            break;
        }
        let got = entries.len() as u64;
        if let Some(Value::Array(e)) = entries.last()
            && let Some(id) = e.first().and_then(|v| redis::from_redis_value::<String>(v.clone()).ok())
        {
            last = StreamId::parse(&id);
            start = format!("({id}");
        }
        left = left.saturating_sub(got);
        if got < count {
            break;
        }
    }
    Ok(last.map(StreamId::next))
}

/// The oldest entry some consumer group still needs — its oldest pending entry, or the first
/// it has not read — and that group's name. `None`: no group needs anything (or none exists).
async fn oldest_needed(conn: &mut RedisConn, stream: &str) -> Result<Option<(StreamId, String)>> {
    let groups: Vec<HashMap<String, Value>> =
        cmd("XINFO").arg("GROUPS").arg(stream).query_async(conn).await.context("XINFO GROUPS")?;
    let mut oldest: Option<(StreamId, String)> = None;
    for g in groups {
        let text = |k: &str| g.get(k).and_then(|v| redis::from_redis_value::<String>(v.clone()).ok());
        let Some(name) = text("name") else { continue };
        let pending = g.get("pending").and_then(|v| redis::from_redis_value::<u64>(v.clone()).ok()).unwrap_or(0);
        let needed = if pending > 0 {
            // XPENDING's summary: [count, smallest id, greatest id, consumers].
            let summary: (u64, Option<String>, Option<String>, Value) =
                cmd("XPENDING").arg(stream).arg(&name).query_async(conn).await.context("XPENDING")?;
            summary.1.as_deref().and_then(StreamId::parse)
        } else {
            text("last-delivered-id").as_deref().and_then(StreamId::parse).map(StreamId::next)
        };
        // A group whose position cannot be read holds everything.
        let needed = needed.unwrap_or(StreamId(0, 0));
        if oldest.as_ref().is_none_or(|(o, _)| needed < *o) {
            oldest = Some((needed, name));
        }
    }
    Ok(oldest)
}

/// Removes the oldest jobs of BullMQ's `completed` or `failed` set beyond the newest `keep`,
/// with their job hashes and logs (at most 1000 per run).
const TRIM_JOBS: &str = r#"
local n = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[2])
if n <= 0 then return 0 end
if n > 1000 then n = 1000 end
local ids = redis.call('ZRANGE', KEYS[1], 0, n - 1)
for _, id in ipairs(ids) do
  redis.call('DEL', ARGV[1] .. ':' .. id, ARGV[1] .. ':' .. id .. ':logs')
end
redis.call('ZREM', KEYS[1], unpack(ids))
return #ids
"#;

async fn trim_jobs(conn: &mut RedisConn, base: &str, set: &str, keep: u64) -> Result<u64> {
    let n: u64 =
        redis::Script::new(TRIM_JOBS).key(format!("{base}:{set}")).arg(base).arg(keep).invoke_async(conn).await?;
    Ok(n)
}
