//! The batch ledger in Redis: what the writer is about to insert into an exactly-once table,
//! recorded before the INSERT so that a crash between the INSERT and the acknowledgement of
//! its events costs no duplicate.
//!
//! Keys (every one under `sluice:`):
//! - `sluice:batch:<id>` — a hash: the table, the INSERT statement, the RowBinary block
//!   exactly as sent, its parts (which entry's rows are where), the plugin versions whose rows
//!   it holds, and which host recorded it when. `<id>` is a
//!   fresh UUID per batch, never reused: it is also the batch's `insert_deduplication_token`.
//!   Deleted once the block is committed.
//! - `sluice:written:<group>:<stream>` (on a Redis Cluster `sluice:written:<group>:{<stream>}`)
//!   — a hash with a field `<entry id>\t<table>` per event and table, whose value is the id of
//!   the batch holding that event's rows for that table. The braces put it in the stream's
//!   slot (a stream name that has a hash tag of its own is used as it is). Written with the batch record; deleted with the event's
//!   XACK, in one MULTI.
//!
//! On one server a batch is recorded (and closed) in one MULTI. On a cluster its keys live in
//! several slots, so the steps run in an order that is safe at every point of a crash: the
//! batch hash before the fields that point to it (a field whose batch is missing reads as
//! "committed"), and at the close, the fields of failed parts before the batch hash.
//! - `sluice:written-tables:<group>` — a set of every table a group's batches were recorded
//!   for, so that events delivered again are also checked for tables the running plugin version
//!   no longer declares (or no longer writes exactly-once).
//!
//! So for an event delivered again (a retry, or recovered from a dead host), each field says:
//! its rows for that table are in batch `<id>`; if that batch's record still exists it may
//! not have landed, and is inserted again — the identical block, which the table drops if it
//! had landed (see `dedup`) — and if the record is gone, the batch was committed. Either way
//! the event's new rows for that table are dropped, whichever plugin version made them.

use std::sync::Arc;

use crate::redis_conn::RedisConn;
use anyhow::{Context, Result, bail};

/// The rows of one event in a recorded block.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedPart {
    /// Consumer group (`sluice:<plugin>`), stream and entry id of the event.
    pub group: Arc<str>,
    pub stream: Arc<str>,
    pub entry_id: Arc<str>,
    /// Its rows: `data[start..end]`, `rows` of them.
    pub start: usize,
    pub end: usize,
    pub rows: usize,
}

/// A block as recorded before its INSERT.
#[derive(Debug, Clone)]
pub struct BatchRecord {
    pub id: String,
    pub table: String,
    /// The INSERT statement, with the column list of the version that made the rows.
    pub sql: String,
    pub low_cardinality: bool,
    /// Whether the INSERT carries `insert_deduplication_token` (see `dedup`).
    pub token: bool,
    /// `plugin@sha256` of every plugin version whose rows are in the block (for operators:
    /// recovery re-sends the bytes, it does not run a plugin).
    pub versions: String,
    pub data: bytes::Bytes,
    pub parts: Vec<RecordedPart>,
}

pub fn batch_key(id: &str) -> String {
    format!("sluice:batch:{id}")
}

/// On a Redis Cluster, in the slot of `stream`: its XACK and the deletion of its fields are
/// one MULTI. On one server the key keeps the name it always had (`…:<stream>`), so that
/// batches recorded by an older version are still found after an upgrade.
pub fn written_key(group: &str, stream: &str, cluster: bool) -> String {
    match cluster {
        true => format!("sluice:written:{group}:{}", crate::redis_conn::same_slot_as(stream)),
        false => format!("sluice:written:{group}:{stream}"),
    }
}

pub fn tables_key(group: &str) -> String {
    format!("sluice:written-tables:{group}")
}

pub fn written_field(entry_id: &str, table: &str) -> String {
    format!("{entry_id}\t{table}")
}

/// Records `b` and its events' fields, atomically.
pub async fn record(conn: &mut RedisConn, b: &BatchRecord, owner: &str) -> Result<()> {
    let cluster = conn.is_cluster();
    let mut parts = String::new();
    for p in &b.parts {
        parts.push_str(&format!("{}\t{}\t{}\t{}\t{}\t{}\n", p.group, p.stream, p.entry_id, p.start, p.end, p.rows));
    }
    let mut pipe = redis::pipe();
    pipe.cmd("HSET")
        .arg(batch_key(&b.id))
        .arg("table")
        .arg(&b.table)
        .arg("sql")
        .arg(&b.sql)
        .arg("low_cardinality")
        .arg(b.low_cardinality as u8)
        .arg("token")
        .arg(b.token as u8)
        .arg("versions")
        .arg(&b.versions)
        .arg("parts")
        .arg(parts)
        .arg("owner")
        .arg(owner)
        .arg("recorded_at")
        .arg(chrono::Utc::now().timestamp_millis())
        .arg("data")
        .arg(b.data.as_ref())
        .ignore();
    let mut groups: Vec<&str> = Vec::new();
    for ((group, stream), parts) in by_stream(&b.parts) {
        let c = pipe.cmd("HSET").arg(written_key(group, stream, cluster));
        for p in parts {
            c.arg(written_field(&p.entry_id, &b.table)).arg(&b.id);
        }
        c.ignore();
        if !groups.contains(&group) {
            groups.push(group);
        }
    }
    for group in groups {
        pipe.cmd("SADD").arg(tables_key(group)).arg(&b.table).ignore();
    }
    let what = || format!("cannot record batch {} of table {} in Redis", b.id, b.table);
    if !cluster {
        pipe.atomic();
        return pipe.query_async::<()>(conn).await.with_context(what);
    }
    // Cluster: the batch hash first, then the tables set, then the fields (see the module).
    let cmds: Vec<redis::Cmd> = pipe.cmd_iter().cloned().collect();
    let (batch, rest) = cmds.split_first().expect("the batch HSET");
    batch.query_async::<()>(conn).await.with_context(what)?;
    let (fields, sets): (Vec<&redis::Cmd>, Vec<&redis::Cmd>) =
        rest.iter().partition(|c| matches!(c.args_iter().next(), Some(redis::Arg::Simple(b"HSET"))));
    for step in [sets, fields] {
        let mut p = redis::pipe();
        for c in step {
            p.add_command(c.clone()).ignore();
        }
        p.query_async::<()>(conn).await.with_context(what)?;
    }
    // Before the INSERT, the record, the fields — and the deliveries of their events, written
    // earlier on the same shards — must survive a primary's failover.
    let mut keys = vec![batch_key(&b.id)];
    keys.extend(by_stream(&b.parts).iter().map(|((group, stream), _)| written_key(group, stream, true)));
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    if !conn.wait_replicated(&keys, REPLICA_WAIT).await.with_context(what)? {
        tracing::warn!(batch = %b.id, table = %b.table, "a Redis Cluster shard has no replica answering: this batch's record would not survive its primary's failover");
    }
    Ok(())
}

/// How long recording a batch waits for the replicas on a Redis Cluster.
const REPLICA_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// Closes a batch whose INSERT is done: the parts that failed lose their fields (their events
/// must write those rows again when retried), then the record goes.
pub async fn close(conn: &mut RedisConn, b: &BatchRecord, failed: &[&RecordedPart]) -> Result<()> {
    let cluster = conn.is_cluster();
    let mut pipe = redis::pipe();
    for ((group, stream), parts) in by_stream(failed.iter().copied()) {
        let c = pipe.cmd("HDEL").arg(written_key(group, stream, cluster));
        for p in parts {
            c.arg(written_field(&p.entry_id, &b.table));
        }
        c.ignore();
    }
    let what = || format!("cannot close batch {} in Redis", b.id);
    if !cluster {
        pipe.atomic();
        pipe.cmd("DEL").arg(batch_key(&b.id)).ignore();
        return pipe.query_async::<()>(conn).await.with_context(what);
    }
    // Cluster: the failed parts' fields first (on a replica too: a field of a refused part
    // that came back after a failover would read as committed), then the record.
    if !pipe.is_empty() {
        pipe.query_async::<()>(conn).await.with_context(what)?;
        let keys: Vec<String> =
            by_stream(failed.iter().copied()).iter().map(|((g, s), _)| written_key(g, s, true)).collect();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        if !conn.wait_replicated(&keys, REPLICA_WAIT).await.with_context(what)? {
            tracing::warn!(batch = %b.id, "a Redis Cluster shard has no replica answering: the closing of this batch would not survive its primary's failover");
        }
    }
    redis::cmd("DEL").arg(batch_key(&b.id)).query_async::<()>(conn).await.with_context(what)
}

/// Loads a recorded batch; None if it is closed (committed).
pub async fn load(conn: &mut RedisConn, id: &str) -> Result<Option<BatchRecord>> {
    let fields: std::collections::HashMap<String, Vec<u8>> = redis::cmd("HGETALL")
        .arg(batch_key(id))
        .query_async(conn)
        .await
        .with_context(|| format!("cannot read batch {id} from Redis"))?;
    if fields.is_empty() {
        return Ok(None);
    }
    let text = |k: &str| -> Result<String> {
        let v = fields.get(k).with_context(|| format!("batch {id} has no `{k}`"))?;
        String::from_utf8(v.clone()).with_context(|| format!("batch {id}: `{k}` is not UTF-8"))
    };
    let mut parts = Vec::new();
    for line in text("parts")?.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() != 6 {
            bail!("batch {id}: unreadable part `{line}`");
        }
        let n = |s: &str| s.parse::<usize>().with_context(|| format!("batch {id}: bad number in part `{line}`"));
        parts.push(RecordedPart {
            group: Arc::from(f[0]),
            stream: Arc::from(f[1]),
            entry_id: Arc::from(f[2]),
            start: n(f[3])?,
            end: n(f[4])?,
            rows: n(f[5])?,
        });
    }
    Ok(Some(BatchRecord {
        id: id.to_string(),
        table: text("table")?,
        sql: text("sql")?,
        low_cardinality: text("low_cardinality")? == "1",
        token: text("token")? == "1",
        versions: text("versions").unwrap_or_default(),
        data: bytes::Bytes::from(fields.get("data").cloned().unwrap_or_default()),
        parts,
    }))
}

/// Every table a group's batches were ever recorded for.
pub async fn recorded_tables(conn: &mut RedisConn, group: &str) -> Result<Vec<String>> {
    redis::cmd("SMEMBERS")
        .arg(tables_key(group))
        .query_async(conn)
        .await
        .with_context(|| format!("cannot read {} from Redis", tables_key(group)))
}

/// For each of `entries` (of one group and stream): the batch holding its rows for `table`,
/// if any.
pub async fn written_in(
    conn: &mut RedisConn,
    group: &str,
    stream: &str,
    entries: &[&str],
    table: &str,
) -> Result<Vec<Option<String>>> {
    if entries.is_empty() {
        return Ok(Vec::new());
    }
    let mut c = redis::cmd("HMGET");
    c.arg(written_key(group, stream, conn.is_cluster()));
    for e in entries {
        c.arg(written_field(e, table));
    }
    c.query_async(conn).await.with_context(|| format!("cannot read batch fields of {stream} from Redis"))
}

/// Adds to `pipe` the deletion of the fields of `entries` (acknowledged or dead-lettered) for
/// every table in `tables`.
pub fn forget(
    pipe: &mut redis::Pipeline,
    group: &str,
    stream: &str,
    entries: &[&str],
    tables: &[String],
    cluster: bool,
) {
    if entries.is_empty() || tables.is_empty() {
        return;
    }
    let c = pipe.cmd("HDEL").arg(written_key(group, stream, cluster));
    for e in entries {
        for t in tables {
            c.arg(written_field(e, t));
        }
    }
    c.ignore();
}

/// Parts grouped by (group, stream), in first-seen order.
fn by_stream<'a>(
    parts: impl IntoIterator<Item = &'a RecordedPart>,
) -> Vec<((&'a str, &'a str), Vec<&'a RecordedPart>)> {
    let mut out: Vec<((&str, &str), Vec<&RecordedPart>)> = Vec::new();
    for p in parts {
        let key = (&*p.group, &*p.stream);
        match out.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => v.push(p),
            None => out.push((key, vec![p])),
        }
    }
    out
}
