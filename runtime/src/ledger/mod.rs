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
//!   — a hash saying, for the events of that stream whose rows are recorded, which batch holds
//!   them. The braces put it in the stream's slot (a stream name that has a hash tag of its own
//!   is used as it is). Two kinds of field:
//!   - per chunk (streams): `@<chunk>\t<table>` → `<batch id>\t<ms>\t<entry id>,<entry id>,…`,
//!     one field for the rows of one pipeline batch (a chunk: the events acknowledged together)
//!     in one table. Written with the batch record; deleted with the chunk's XACK, in one MULTI
//!     (rewritten with the events still unacknowledged if some are not acknowledged then).
//!     One field per chunk instead of one per event is what keeps exactly-once cheap: the
//!     per-event fields cost Redis and the host a hash operation per event twice, about a
//!     fifth of the throughput (measured on ClickHouse 26.9, where nothing else is paid).
//!   - per event (BullMQ jobs, whose completions come one job at a time, and batches recorded
//!     by earlier versions): `<entry id>\t<table>` → `<batch id>`, deleted with the event's
//!     acknowledgement.
//!
//!   Chunk fields whose host died before acknowledging are left behind once their events were
//!   handled elsewhere: [`collect_garbage`] deletes those none of whose events is pending.
//!
//!   On one server a batch is recorded (and closed) in one MULTI. On a cluster its keys live in
//!   several slots, so the steps run in an order that is safe at every point of a crash: the
//!   batch hash before the fields that point to it (a field whose batch is missing reads as
//!   "committed"), and at the close, the fields of failed parts before the batch hash.
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
    /// The chunk (pipeline batch) whose acknowledgement deletes its field, for events indexed
    /// by chunk; None for events indexed one by one (BullMQ jobs).
    pub chunk: Option<Arc<str>>,
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

mod events;

pub use self::events::{collect_garbage, forget, leave_chunks, written_in};
pub use crate::keys::batch as batch_key;

pub use crate::keys::{written as written_key, written_tables as tables_key};

pub fn written_field(entry_id: &str, table: &str) -> String {
    format!("{entry_id}\t{table}")
}

/// The field of a chunk's rows in `table`.
pub fn chunk_field(chunk: &str, table: &str) -> String {
    format!("@{chunk}\t{table}")
}

/// A chunk field's value: the batch, when it was written, and the events.
pub(super) fn chunk_value<'a>(batch: &str, entries: impl Iterator<Item = &'a str>) -> String {
    let mut v = format!("{batch}\t{}\t", chrono::Utc::now().timestamp_millis());
    for (i, e) in entries.enumerate() {
        if i > 0 {
            v.push(',');
        }
        v.push_str(e);
    }
    v
}

/// (batch, written at ms, entries) of a chunk field's value.
pub(super) fn parse_chunk_value(v: &str) -> Option<(&str, i64, impl Iterator<Item = &str>)> {
    let mut f = v.splitn(3, '\t');
    let (batch, ms, entries) = (f.next()?, f.next()?.parse().ok()?, f.next()?);
    Some((batch, ms, entries.split(',').filter(|e| !e.is_empty())))
}

/// What a chunk's acknowledgement does to its field: deletes it, or keeps the events still
/// unacknowledged.
#[derive(Debug, Clone)]
pub struct ChunkMark {
    pub group: Arc<str>,
    pub stream: Arc<str>,
    pub chunk: Arc<str>,
    pub table: String,
    pub batch: Arc<str>,
    /// Events of the chunk not acknowledged now (their rows stay recorded).
    pub remaining: Vec<Arc<str>>,
}

impl ChunkMark {
    /// Adds the field's deletion (or rewrite) to `pipe`.
    pub fn apply(&self, pipe: &mut redis::Pipeline, cluster: bool) {
        let key = written_key(&self.group, &self.stream, cluster);
        let field = chunk_field(&self.chunk, &self.table);
        if self.remaining.is_empty() {
            pipe.cmd("HDEL").arg(key).arg(field).ignore();
        } else {
            let v = chunk_value(&self.batch, self.remaining.iter().map(|e| &**e));
            pipe.cmd("HSET").arg(key).arg(field).arg(v).ignore();
        }
    }
}

/// A ledger key's (group, stream).
type GroupStream<'a> = (&'a str, &'a str);

/// The fields of `parts` for `table` in the batch `batch`: per chunk, and per event for parts
/// without a chunk. Each is ((group, stream), field, value).
fn fields_of<'a>(parts: &[&'a RecordedPart], table: &str, batch: &str) -> Vec<(GroupStream<'a>, String, String)> {
    let mut out = Vec::new();
    // (group, stream, chunk) → the chunk's entries.
    type Chunk<'a> = ((&'a str, &'a str, &'a str), Vec<&'a str>);
    let mut chunks: Vec<Chunk<'_>> = Vec::new();
    for p in parts {
        match &p.chunk {
            None => out.push(((&*p.group, &*p.stream), written_field(&p.entry_id, table), batch.to_string())),
            Some(c) => {
                let key = (&*p.group, &*p.stream, &**c);
                // A chunk's parts are contiguous: look at the last one first.
                match chunks.iter_mut().rev().find(|(k, _)| *k == key) {
                    Some((_, v)) => v.push(&p.entry_id),
                    None => chunks.push((key, vec![&p.entry_id])),
                }
            }
        }
    }
    for ((group, stream, chunk), entries) in chunks {
        out.push(((group, stream), chunk_field(chunk, table), chunk_value(batch, entries.into_iter())));
    }
    out
}

/// Records `b` and its events' fields, atomically.
pub async fn record(conn: &mut RedisConn, b: &BatchRecord, owner: &str) -> Result<()> {
    let cluster = conn.is_cluster();
    use std::fmt::Write as _;
    let (mut parts, mut chunks) = (String::new(), String::new());
    for p in &b.parts {
        let _ = writeln!(parts, "{}\t{}\t{}\t{}\t{}\t{}", p.group, p.stream, p.entry_id, p.start, p.end, p.rows);
        let _ = writeln!(chunks, "{}", p.chunk.as_deref().unwrap_or(""));
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
        // Beside `parts` (not in it), so that hosts of earlier versions still read the record.
        .arg("chunks")
        .arg(chunks)
        .arg("owner")
        .arg(owner)
        .arg("recorded_at")
        .arg(chrono::Utc::now().timestamp_millis())
        .arg("data")
        .arg(b.data.as_ref())
        .ignore();
    let mut groups: Vec<&str> = Vec::new();
    let all: Vec<&RecordedPart> = b.parts.iter().collect();
    let mut by_key: Vec<(GroupStream<'_>, Vec<(String, String)>)> = Vec::new();
    for (key, field, value) in fields_of(&all, &b.table, &b.id) {
        match by_key.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => v.push((field, value)),
            None => by_key.push((key, vec![(field, value)])),
        }
    }
    for ((group, stream), fields) in by_key {
        let c = pipe.cmd("HSET").arg(written_key(group, stream, cluster));
        for (f, v) in fields {
            c.arg(f).arg(v);
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
    let failed_keys = by_stream(failed.iter().copied());
    for ((group, stream), parts) in &failed_keys {
        // Events indexed one by one lose their fields; a chunk's field keeps its other events.
        let key = written_key(group, stream, cluster);
        let singles: Vec<&&RecordedPart> = parts.iter().filter(|p| p.chunk.is_none()).collect();
        if !singles.is_empty() {
            let c = pipe.cmd("HDEL").arg(&key);
            for p in singles {
                c.arg(written_field(&p.entry_id, &b.table));
            }
            c.ignore();
        }
        let mut chunks: Vec<&str> = parts.iter().filter_map(|p| p.chunk.as_deref()).collect();
        chunks.dedup();
        for chunk in chunks {
            let kept: Vec<&RecordedPart> = b
                .parts
                .iter()
                .filter(|p| p.chunk.as_deref() == Some(chunk) && &*p.group == *group && &*p.stream == *stream)
                .filter(|p| !failed.iter().any(|f| f.entry_id == p.entry_id && f.stream == p.stream))
                .collect();
            ChunkMark {
                group: Arc::from(*group),
                stream: Arc::from(*stream),
                chunk: Arc::from(chunk),
                table: b.table.clone(),
                batch: Arc::from(b.id.as_str()),
                remaining: kept.iter().map(|p| p.entry_id.clone()).collect(),
            }
            .apply(&mut pipe, cluster);
        }
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
        let keys: Vec<String> = failed_keys.iter().map(|((g, s), _)| written_key(g, s, true)).collect();
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
    // Records of earlier versions have no `chunks`: their events are indexed one by one.
    let chunks: Vec<String> = text("chunks").map(|c| c.lines().map(str::to_string).collect()).unwrap_or_default();
    let mut parts = Vec::new();
    for (i, line) in text("parts")?.lines().enumerate() {
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
            chunk: chunks.get(i).filter(|c| !c.is_empty()).map(|c| Arc::from(c.as_str())),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn part(stream: &str, id: &str, chunk: Option<&str>) -> RecordedPart {
        RecordedPart {
            group: Arc::from("sluice:p"),
            stream: Arc::from(stream),
            entry_id: Arc::from(id),
            start: 0,
            end: 0,
            rows: 1,
            chunk: chunk.map(Arc::from),
        }
    }

    #[test]
    fn one_field_per_chunk_and_stream_one_per_event_without_a_chunk() {
        let parts = [
            part("events:a", "1-0", Some("c1")),
            part("events:a", "2-0", Some("c1")),
            part("events:b", "3-0", Some("c1")),
            part("events:a", "4-0", Some("c2")),
            part("bull:q", "job7", None),
        ];
        let refs: Vec<&RecordedPart> = parts.iter().collect();
        let fields = fields_of(&refs, "t", "B");
        let short: Vec<(&str, String, String)> = fields
            .iter()
            .map(|((_, s), f, v)| {
                let v = match parse_chunk_value(v) {
                    Some((batch, _, ids)) if f.starts_with('@') => {
                        format!("{batch}:{}", ids.collect::<Vec<_>>().join(","))
                    }
                    _ => v.clone(),
                };
                (*s, f.clone(), v)
            })
            .collect();
        assert_eq!(
            short,
            vec![
                ("bull:q", "job7\tt".to_string(), "B".to_string()),
                ("events:a", "@c1\tt".to_string(), "B:1-0,2-0".to_string()),
                ("events:b", "@c1\tt".to_string(), "B:3-0".to_string()),
                ("events:a", "@c2\tt".to_string(), "B:4-0".to_string()),
            ]
        );
    }

    #[test]
    fn chunk_marks_delete_or_keep_what_is_left() {
        let mark = |remaining: &[&str]| ChunkMark {
            group: Arc::from("sluice:p"),
            stream: Arc::from("events:a"),
            chunk: Arc::from("c1"),
            table: "t".into(),
            batch: Arc::from("B"),
            remaining: remaining.iter().map(|r| Arc::from(*r)).collect(),
        };
        let mut p = redis::pipe();
        mark(&[]).apply(&mut p, false);
        mark(&["2-0"]).apply(&mut p, false);
        let cmds: Vec<Vec<String>> = p
            .cmd_iter()
            .map(|c| {
                c.args_iter()
                    .map(|a| match a {
                        redis::Arg::Simple(b) => String::from_utf8_lossy(b).into_owned(),
                        _ => String::new(),
                    })
                    .collect()
            })
            .collect();
        assert_eq!(cmds[0], ["HDEL", "sluice:written:sluice:p:events:a", "@c1\tt"]);
        assert_eq!(cmds[1][..3], ["HSET", "sluice:written:sluice:p:events:a", "@c1\tt"]);
        let (batch, _, ids) = parse_chunk_value(&cmds[1][3]).unwrap();
        assert_eq!((batch, ids.collect::<Vec<_>>()), ("B", vec!["2-0"]));
    }
}
