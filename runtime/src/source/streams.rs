//! The Redis Streams source: one consumer-group reader per (plugin, event type).
//!
//! Policy:
//! - Group `sluice:<plugin>` on stream `<prefix><type>`, created at `0` so events published
//!   before the host started are processed.
//! - New entries are read with XREADGROUP in batches; an entry is acknowledged only after every
//!   row it produced is committed (see `router`).
//! - Retries and crash recovery keep their state in Redis, not in memory: an entry that failed
//!   transiently stays in the pending-entries list, and is claimed again (XCLAIM) once it has
//!   been idle for its backoff (entries of this consumer) or for the visibility timeout
//!   (entries of any other consumer, e.g. a dead instance). The delivery count the PEL keeps is
//!   the attempt number.
//! - A dead letter is written to `sluice:dlq` and the original acknowledged in one MULTI.
//! - Each pipeline also reads its plugin's replay stream (`sluice:replay:<plugin>:<type>`),
//!   where `sluice dlq reprocess` and `sluice replay` put events for that plugin alone.

use std::sync::Arc;
use std::time::Duration;

use crate::redis_conn::RedisConn;
use anyhow::{Context, Result, bail};
use redis::{Value, cmd};

use super::{SourceEvent, parse_entry};

/// The dead-letter stream.
pub const DLQ_STREAM: &str = "sluice:dlq";

/// A URL with any password replaced by `***`, for messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// The stream a plugin's re-fed events go to: dead letters reprocessed and history replayed
/// for that plugin alone (re-adding them to `events:<type>` would feed every plugin again).
pub fn replay_stream(plugin: &str, event_type: &str) -> String {
    format!("sluice:replay:{plugin}:{event_type}")
}

/// Reads the streams of one (plugin, event type) through the plugin's consumer group: the
/// event stream itself and the plugin's replay stream for that type.
pub struct StreamReader {
    conn: RedisConn,
    /// The event stream (`<prefix><type>`) first, then the replay stream.
    pub streams: [Arc<str>; 2],
    pub event_type: Arc<str>,
    pub group: String,
    pub consumer: String,
    /// The plugin's exactly-once tables: acknowledging or dead-lettering an entry also
    /// deletes its batch-ledger fields for them (see `writer::ledger`).
    pub ledger_tables: Arc<[String]>,
}

/// An entry of the pending-entries list.
#[derive(Debug, Clone)]
pub struct PendingEntry {
    pub stream: Arc<str>,
    pub id: String,
    pub consumer: String,
    pub idle_ms: u64,
    pub deliveries: u64,
}

impl StreamReader {
    pub fn new(conn: RedisConn, stream: &str, plugin: &str, event_type: &str, group: &str, consumer: &str) -> Self {
        StreamReader {
            conn,
            streams: [Arc::from(stream), Arc::from(replay_stream(plugin, event_type).as_str())],
            event_type: Arc::from(event_type),
            group: group.to_string(),
            consumer: consumer.to_string(),
            ledger_tables: Arc::from(Vec::new()),
        }
    }

    /// The same reader, deleting ledger fields of `tables` with every acknowledgement.
    pub fn with_ledger_tables(mut self, tables: Vec<String>) -> Self {
        self.ledger_tables = Arc::from(tables);
        self
    }

    /// The connection, for other keys of the same consumer group (the batch ledger).
    pub fn conn(&mut self) -> &mut RedisConn {
        &mut self.conn
    }

    /// The event stream.
    pub fn stream(&self) -> &Arc<str> {
        &self.streams[0]
    }

    /// Another reader on the same (multiplexed) connection.
    pub fn with_same_connection(&self) -> StreamReader {
        StreamReader {
            conn: self.conn.clone(),
            streams: self.streams.clone(),
            event_type: self.event_type.clone(),
            group: self.group.clone(),
            consumer: self.consumer.clone(),
            ledger_tables: self.ledger_tables.clone(),
        }
    }

    /// Creates the consumer groups (and the streams) if missing, starting from the beginning.
    pub async fn ensure_group(&mut self) -> Result<()> {
        for stream in self.streams.clone() {
            let r: redis::RedisResult<()> = cmd("XGROUP")
                .arg("CREATE")
                .arg(&*stream)
                .arg(&self.group)
                .arg("0")
                .arg("MKSTREAM")
                .query_async(&mut self.conn)
                .await;
            match r {
                Ok(()) => {}
                Err(e) if e.code() == Some("BUSYGROUP") => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot create consumer group {} on {stream}", self.group));
                }
            }
        }
        Ok(())
    }

    /// Reads up to `count` new entries of either stream, waiting up to `block` for the first.
    pub async fn read_new(&mut self, count: usize, block: Duration) -> Result<Vec<SourceEvent>> {
        let mut c = cmd("XREADGROUP");
        c.arg("GROUP").arg(&self.group).arg(&self.consumer).arg("COUNT").arg(count);
        let reply: redis::RedisResult<Value> = if self.conn.is_cluster() {
            // The two streams may live on different shards: one XREADGROUP cannot name both.
            // The replay stream is looked at without waiting, then the event stream waits.
            let mut replay = c.clone();
            replay.arg("STREAMS").arg(&*self.streams[1]).arg(">");
            match replay.query_async::<Value>(&mut self.conn).await {
                Ok(v) if !matches!(v, Value::Nil) => Ok(v),
                Ok(_) => {
                    c.arg("BLOCK").arg(block.as_millis() as u64).arg("STREAMS").arg(&*self.streams[0]).arg(">");
                    c.query_async(&mut self.conn).await
                }
                Err(e) => Err(e),
            }
        } else {
            c.arg("BLOCK").arg(block.as_millis() as u64);
            c.arg("STREAMS").arg(&*self.streams[0]).arg(&*self.streams[1]).arg(">").arg(">");
            c.query_async(&mut self.conn).await
        };
        let reply = match reply {
            Ok(v) => v,
            // A group vanished (stream deleted): recreate it and read again next time.
            Err(e) if e.code() == Some("NOGROUP") => {
                self.ensure_group().await?;
                return Ok(Vec::new());
            }
            Err(e) => return Err(e).with_context(|| format!("XREADGROUP on {} failed", self.streams[0])),
        };
        let mut out = Vec::new();
        for (stream, entries) in stream_replies(reply)? {
            let stream = self.streams.iter().find(|s| ***s == *stream).cloned().unwrap_or_else(|| Arc::from(stream));
            for (id, fields) in entries {
                if let Some(fields) = fields {
                    out.push(self.event(&stream, id, 1, fields));
                }
            }
        }
        Ok(out)
    }

    fn event(
        &self,
        stream: &Arc<str>,
        entry_id: String,
        deliveries: u64,
        fields: Vec<(String, Vec<u8>)>,
    ) -> SourceEvent {
        let parsed = parse_entry(stream, &self.event_type, &entry_id, &fields);
        SourceEvent {
            stream: stream.clone(),
            entry_id,
            deliveries,
            fields,
            parsed,
            written: Vec::new(),
            chunk_refs: Vec::new(),
        }
    }

    /// Pending entries of both streams idle for at least `min_idle`, oldest first per stream.
    pub async fn pending(&mut self, min_idle: Duration, count: usize) -> Result<Vec<PendingEntry>> {
        let mut out = Vec::new();
        for stream in self.streams.clone() {
            let reply: Value = cmd("XPENDING")
                .arg(&*stream)
                .arg(&self.group)
                .arg("IDLE")
                .arg(min_idle.as_millis() as u64)
                .arg("-")
                .arg("+")
                .arg(count)
                .query_async(&mut self.conn)
                .await
                .with_context(|| format!("XPENDING on {stream} failed"))?;
            for item in array(reply)? {
                let f = array(item)?;
                if f.len() < 4 {
                    bail!("unexpected XPENDING reply");
                }
                let mut f = f.into_iter();
                out.push(PendingEntry {
                    stream: stream.clone(),
                    id: string(f.next().unwrap())?,
                    consumer: string(f.next().unwrap())?,
                    idle_ms: int(f.next().unwrap())? as u64,
                    deliveries: int(f.next().unwrap())? as u64,
                });
            }
        }
        Ok(out)
    }

    /// Claims entries for this consumer if they are still idle for `min_idle` (so two
    /// instances never both win one entry). Returns the claimed entries with their attempt
    /// number, and the entries deleted from their stream meanwhile (to acknowledge).
    pub async fn claim(
        &mut self,
        entries: &[PendingEntry],
        min_idle: Duration,
    ) -> Result<(Vec<SourceEvent>, Vec<PendingEntry>)> {
        let mut claimed = Vec::new();
        let mut deleted = Vec::new();
        for stream in self.streams.clone() {
            let mine: Vec<&PendingEntry> = entries.iter().filter(|e| e.stream == stream).collect();
            if mine.is_empty() {
                continue;
            }
            let mut c = cmd("XCLAIM");
            c.arg(&*stream).arg(&self.group).arg(&self.consumer).arg(min_idle.as_millis() as u64);
            for e in &mine {
                c.arg(&e.id);
            }
            let reply: Value =
                c.query_async(&mut self.conn).await.with_context(|| format!("XCLAIM on {stream} failed"))?;
            for (id, fields) in entries_reply(reply)? {
                match fields {
                    Some(fields) => {
                        let deliveries = mine.iter().find(|e| e.id == id).map(|e| e.deliveries + 1).unwrap_or(1);
                        claimed.push(self.event(&stream, id, deliveries, fields));
                    }
                    // Redis 6 answers a pending id trimmed from the stream with a nil entry.
                    None => deleted.extend(mine.iter().filter(|e| e.id == id).map(|e| (*e).clone())),
                }
            }
            // An id absent from the answer was not claimed: another instance claimed it first
            // (its idle time is no longer `min_idle`), or — Redis 7 — it was trimmed from the
            // stream and XCLAIM has already dropped it from the pending list. Either way it
            // is not this instance's to acknowledge.
        }
        Ok((claimed, deleted))
    }

    /// Resets the idle time of this consumer's entries without counting a delivery.
    pub async fn touch(&mut self, entries: &[(Arc<str>, String)]) -> Result<()> {
        let mut p = redis::pipe();
        for stream in &self.streams {
            for chunk in entries.iter().filter(|(s, _)| s == stream).collect::<Vec<_>>().chunks(1000) {
                let c = p.cmd("XCLAIM").arg(&**stream).arg(&self.group).arg(&self.consumer).arg(0);
                for (_, id) in chunk {
                    c.arg(id);
                }
                c.arg("JUSTID").ignore();
            }
        }
        let _: () = p.query_async(&mut self.conn).await.context("XCLAIM JUSTID (heartbeat) failed")?;
        Ok(())
    }

    /// Acknowledges entries, grouped by stream, in one round trip, with their ledger fields
    /// (see `writer::ledger`): each entry's own (when `.2`: an entry delivered before may have
    /// one from a batch indexed event by event), the chunk fields that list it (`.3`, found when
    /// it was delivered again), and the chunk fields of `marks` (this batch's own).
    pub async fn ack<'a>(
        &mut self,
        entries: impl IntoIterator<Item = (&'a str, &'a str, bool, &'a [String])>,
        marks: &[crate::writer::ledger::ChunkMark],
    ) -> Result<()> {
        /// What one stream's MULTI does.
        #[derive(Default)]
        struct Step<'a> {
            ids: Vec<&'a str>,
            own_fields: Vec<&'a str>,
            chunk_refs: Vec<(&'a str, &'a [String])>,
        }
        let mut steps: Vec<(Arc<str>, Step<'a>)> = Vec::new();
        let mut step = |stream: &str| -> usize {
            match steps.iter().position(|(s, _)| &**s == stream) {
                Some(i) => i,
                None => {
                    steps.push((Arc::from(stream), Step::default()));
                    steps.len() - 1
                }
            }
        };
        let mut plan: Vec<(usize, &'a str, bool, &'a [String])> = Vec::new();
        for (stream, id, own_fields, chunks) in entries {
            plan.push((step(stream), id, own_fields, chunks));
        }
        for m in marks {
            step(&m.stream);
        }
        for (i, id, own_fields, chunks) in plan {
            let s = &mut steps[i].1;
            s.ids.push(id);
            if own_fields {
                s.own_fields.push(id);
            }
            if !chunks.is_empty() {
                s.chunk_refs.push((id, chunks));
            }
        }
        // One MULTI per stream with its ledger fields (which share the stream's slot, see
        // `ledger::written_key`): an entry acknowledged keeps none, and one not acknowledged
        // keeps all of them.
        let cluster = self.conn.is_cluster();
        for (stream, s) in &steps {
            let mut p = redis::pipe();
            if !s.ids.is_empty() {
                p.cmd("XACK").arg(&**stream).arg(&self.group).arg(&s.ids).ignore();
            }
            crate::writer::ledger::forget(&mut p, &self.group, stream, &s.own_fields, &self.ledger_tables, cluster);
            crate::writer::ledger::leave_chunks(&mut p, &self.group, stream, s.chunk_refs.iter().copied(), cluster);
            for m in marks.iter().filter(|m| m.stream == *stream) {
                m.apply(&mut p, cluster);
            }
            if p.cmd_iter().count() > 1 {
                p.atomic();
            }
            let _: () = p.query_async(&mut self.conn).await.with_context(|| format!("XACK on {stream} failed"))?;
        }
        Ok(())
    }

    /// Moves entries to the dead-letter stream and acknowledges them: atomically on one
    /// server; on a cluster (where `sluice:dlq` lives in another slot than the streams) the
    /// dead letters are written first, then the entries acknowledged — a crash in between
    /// dead-letters them again, never loses them.
    pub async fn dead_letter(&mut self, letters: &[DeadLetter<'_>]) -> Result<()> {
        if letters.is_empty() {
            return Ok(());
        }
        let cluster = self.conn.is_cluster();
        let mut p = redis::pipe();
        if !cluster {
            p.atomic();
        }
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        for l in letters {
            let c = p.cmd("XADD").arg(DLQ_STREAM).arg("*");
            c.arg("stream").arg(&*l.event.stream);
            c.arg("entry_id").arg(&l.event.entry_id);
            c.arg("event_id").arg(l.event.parsed.as_ref().map(|e| e.id.as_str()).unwrap_or(""));
            c.arg("event_type").arg(&*self.event_type);
            c.arg("group").arg(&self.group);
            c.arg("plugin").arg(l.plugin);
            c.arg("plugin_version").arg(l.plugin_version);
            c.arg("attempts").arg(l.event.deliveries);
            c.arg("error_kind").arg(l.error_kind);
            c.arg("error").arg(l.error);
            c.arg("failed_at").arg(&now);
            for (k, v) in &l.event.fields {
                c.arg(format!("field:{k}")).arg(v.as_slice());
            }
            p.ignore();
            if !cluster {
                p.cmd("XACK").arg(&*l.event.stream).arg(&self.group).arg(&l.event.entry_id).ignore();
                crate::writer::ledger::forget(
                    &mut p,
                    &self.group,
                    &l.event.stream,
                    &[l.event.entry_id.as_str()],
                    &self.ledger_tables,
                    false,
                );
                crate::writer::ledger::leave_chunks(
                    &mut p,
                    &self.group,
                    &l.event.stream,
                    [(l.event.entry_id.as_str(), l.event.chunk_refs.as_slice())],
                    false,
                );
            }
        }
        let _: () = p
            .query_async(&mut self.conn)
            .await
            .with_context(|| format!("cannot dead-letter {} entries of {}", letters.len(), self.streams[0]))?;
        if cluster {
            self.ack(
                letters
                    .iter()
                    .map(|l| (&*l.event.stream, l.event.entry_id.as_str(), true, l.event.chunk_refs.as_slice())),
                &[],
            )
            .await?;
        }
        Ok(())
    }
}

/// One entry on its way to the dead-letter stream.
pub struct DeadLetter<'a> {
    pub event: &'a SourceEvent,
    pub plugin: &'a str,
    pub plugin_version: &'a str,
    /// `invalid_event`, `permanent`, `retries_exhausted`...
    pub error_kind: &'a str,
    pub error: &'a str,
}

type Entry = (String, Option<Vec<(String, Vec<u8>)>>);

fn array(v: Value) -> Result<Vec<Value>> {
    match v {
        Value::Array(a) => Ok(a),
        Value::Nil => Ok(Vec::new()),
        other => bail!("unexpected Redis reply {other:?}"),
    }
}

fn string(v: Value) -> Result<String> {
    match v {
        Value::BulkString(b) => Ok(String::from_utf8(b)?),
        Value::SimpleString(s) => Ok(s),
        other => bail!("unexpected Redis reply {other:?}, expected a string"),
    }
}

fn bytes(v: Value) -> Result<Vec<u8>> {
    match v {
        Value::BulkString(b) => Ok(b),
        Value::SimpleString(s) => Ok(s.into_bytes()),
        Value::Int(i) => Ok(i.to_string().into_bytes()),
        other => bail!("unexpected Redis reply {other:?}, expected a string"),
    }
}

fn int(v: Value) -> Result<i64> {
    match v {
        Value::Int(i) => Ok(i),
        other => Ok(string(other)?.parse()?),
    }
}

/// `[[id, [k, v, ...]], ...]`; a nil field list means the entry was deleted.
fn entries_reply(v: Value) -> Result<Vec<Entry>> {
    let mut out = Vec::new();
    for e in array(v)? {
        if matches!(e, Value::Nil) {
            continue;
        }
        let mut parts = array(e)?.into_iter();
        let id = string(parts.next().ok_or_else(|| anyhow::anyhow!("empty stream entry"))?)?;
        let fields = match parts.next() {
            None | Some(Value::Nil) => None,
            Some(f) => {
                let flat = array(f)?;
                let mut fields = Vec::with_capacity(flat.len() / 2);
                let mut it = flat.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    fields.push((string(k)?, bytes(v)?));
                }
                Some(fields)
            }
        };
        out.push((id, fields));
    }
    Ok(out)
}

/// The reply of XREAD/XREADGROUP: `[[stream, entries], ...]` (RESP2) or a map (RESP3).
fn stream_replies(v: Value) -> Result<Vec<(String, Vec<Entry>)>> {
    let pairs: Vec<(Value, Value)> = match v {
        Value::Nil => return Ok(Vec::new()),
        Value::Map(m) => m,
        Value::Array(a) => a
            .into_iter()
            .map(|s| {
                let mut it = array(s)?.into_iter();
                match (it.next(), it.next()) {
                    (Some(k), Some(v)) => Ok((k, v)),
                    _ => bail!("unexpected XREADGROUP reply"),
                }
            })
            .collect::<Result<_>>()?,
        other => bail!("unexpected XREADGROUP reply {other:?}"),
    };
    pairs.into_iter().map(|(k, v)| Ok((string(k)?, entries_reply(v)?))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact_url("redis://:secret@host:6379/0"), "redis://:***@host:6379/0");
        assert_eq!(redact_url("redis://user:secret@host"), "redis://user:***@host");
        assert_eq!(redact_url("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }
}
