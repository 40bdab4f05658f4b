//! The Redis commands of a streams pipeline: XGROUP, XREADGROUP, XPENDING, XCLAIM, XACK and
//! the dead-letter XADD, on the event stream of one (plugin, event type) and the plugin's
//! replay stream for that type.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use redis::{Value, cmd};

use super::reply::{array, entries_reply, int, stream_replies, string};
use crate::contract::wit;
use crate::dead_letter::{DeadLetter, DeadLetterKind};
use crate::keys::{DLQ_STREAM, replay_stream};
use crate::redis_conn::RedisConn;
use crate::source::{SourceEvent, Subscriber, parse_entry};

/// Reads the streams of one (plugin, event type) through the plugin's consumer group: the
/// event stream itself and the plugin's replay stream for that type. Cheap to clone: clones
/// share the (multiplexed) connection.
#[derive(Clone)]
pub(crate) struct StreamReader {
    conn: RedisConn,
    /// The event stream (`<prefix><type>`) first, then the replay stream.
    pub streams: [Arc<str>; 2],
    pub who: Subscriber,
    pub consumer: Arc<str>,
}

/// An entry of the pending-entries list.
#[derive(Debug, Clone)]
pub(crate) struct PendingEntry {
    pub stream: Arc<str>,
    pub id: String,
    pub consumer: String,
    pub idle_ms: u64,
    pub deliveries: u64,
}

/// One event on its way to the dead-letter stream.
pub(crate) struct Letter<'a> {
    pub event: &'a SourceEvent,
    pub kind: DeadLetterKind,
    pub error: &'a str,
}

impl StreamReader {
    pub fn new(conn: RedisConn, stream: &str, who: Subscriber, consumer: Arc<str>) -> Self {
        let replay = replay_stream(&who.plugin, &who.event_type);
        StreamReader { conn, streams: [Arc::from(stream), Arc::from(replay.as_str())], who, consumer }
    }

    /// The connection, for other keys of the same consumer group (the batch ledger).
    pub fn conn(&mut self) -> &mut RedisConn {
        &mut self.conn
    }

    /// The event stream.
    pub fn stream(&self) -> &Arc<str> {
        &self.streams[0]
    }

    fn group(&self) -> &str {
        &self.who.group
    }

    /// A command failed because the group or its stream is gone — Redis restarted without
    /// its data, a `FLUSHALL`, a failover to an empty replica, the stream deleted: the groups
    /// are created again (from `0`, so whatever was published since is read) and the pipeline
    /// goes on. Says so once per loss. `Ok(false)`: `e` is another error.
    async fn recreate_if_missing(&mut self, e: &redis::RedisError, during: &str) -> Result<bool> {
        if !is_missing_group(e) {
            return Ok(false);
        }
        // Only the caller that really creates the group speaks: the reader and the control
        // connection of a pipeline both notice the loss.
        if self.create_groups().await? {
            tracing::warn!(
                stream = %self.streams[0],
                group = %self.who.group,
                during,
                "the consumer group was gone — did Redis lose its data (a restart without persistence, FLUSHALL, a failover to an empty replica) or was the stream deleted? Created it again from the start of the stream and resumed; events that were pending in it cannot be recovered"
            );
            metrics::counter!("sluice_consumer_groups_recreated_total", "stream" => self.streams[0].to_string())
                .increment(1);
        }
        Ok(true)
    }

    /// Creates the consumer groups (and the streams) if missing, starting from the beginning.
    pub async fn ensure_group(&mut self) -> Result<()> {
        self.create_groups().await.map(|_| ())
    }

    /// [`Self::ensure_group`], saying whether a group was created.
    async fn create_groups(&mut self) -> Result<bool> {
        let mut created = false;
        for stream in self.streams.clone() {
            let r: redis::RedisResult<()> = cmd("XGROUP")
                .arg("CREATE")
                .arg(&*stream)
                .arg(self.group())
                .arg("0")
                .arg("MKSTREAM")
                .query_async(&mut self.conn)
                .await;
            match r {
                Ok(()) => created = true,
                Err(e) if e.code() == Some("BUSYGROUP") => {}
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("cannot create consumer group {} on {stream}", self.who.group));
                }
            }
        }
        Ok(created)
    }

    /// Reads up to `count` new entries of either stream, waiting up to `block` for the first.
    pub async fn read_new(&mut self, count: usize, block: Duration) -> Result<Vec<SourceEvent>> {
        let mut c = cmd("XREADGROUP");
        c.arg("GROUP").arg(self.group()).arg(&*self.consumer).arg("COUNT").arg(count);
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
            Err(e) => {
                if self.recreate_if_missing(&e, "XREADGROUP").await? {
                    return Ok(Vec::new());
                }
                return Err(e).with_context(|| format!("XREADGROUP on {} failed", self.streams[0]));
            }
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
        // The attempt the plugin sees is the delivery count Redis keeps.
        let parsed = parse_entry(stream, &self.who.event_type, &entry_id, &fields)
            .map(|e| wit::Event { attempt: deliveries.min(u32::MAX as u64) as u32, ..e });
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
            let reply: redis::RedisResult<Value> = cmd("XPENDING")
                .arg(&*stream)
                .arg(self.group())
                .arg("IDLE")
                .arg(min_idle.as_millis() as u64)
                .arg("-")
                .arg("+")
                .arg(count)
                .query_async(&mut self.conn)
                .await;
            let reply = match reply {
                Ok(v) => v,
                // Nothing is pending in a group created now.
                Err(e) if self.recreate_if_missing(&e, "XPENDING").await? => return Ok(Vec::new()),
                Err(e) => return Err(e).with_context(|| format!("XPENDING on {stream} failed")),
            };
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
            c.arg(&*stream).arg(self.group()).arg(&*self.consumer).arg(min_idle.as_millis() as u64);
            for e in &mine {
                c.arg(&e.id);
            }
            let reply: Value = match c.query_async(&mut self.conn).await {
                Ok(v) => v,
                // Nothing pending in a group created now; what the other stream gave is kept.
                Err(e) if self.recreate_if_missing(&e, "XCLAIM").await? => continue,
                Err(e) => return Err(e).with_context(|| format!("XCLAIM on {stream} failed")),
            };
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
                let c = p.cmd("XCLAIM").arg(&**stream).arg(self.group()).arg(&*self.consumer).arg(0);
                for (_, id) in chunk {
                    c.arg(id);
                }
                c.arg("JUSTID").ignore();
            }
        }
        match p.query_async::<()>(&mut self.conn).await {
            Ok(()) => Ok(()),
            // The entries went with the group: nothing left to keep alive.
            Err(e) if self.recreate_if_missing(&e, "heartbeat").await? => Ok(()),
            Err(e) => Err(e).context("XCLAIM JUSTID (heartbeat) failed"),
        }
    }

    /// Acknowledges entries, grouped by stream, in one round trip, with their ledger fields
    /// (see `writer::ledger`): each entry's own (when `.2`: an entry delivered before may have
    /// one from a batch indexed event by event), the chunk fields that list it (`.3`, found when
    /// it was delivered again), and the chunk fields of `marks` (this batch's own).
    pub async fn ack<'a>(
        &mut self,
        entries: impl IntoIterator<Item = (&'a str, &'a str, bool, &'a [String])>,
        marks: &[crate::ledger::ChunkMark],
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
                p.cmd("XACK").arg(&**stream).arg(self.group()).arg(&s.ids).ignore();
            }
            crate::ledger::forget(&mut p, &self.who.group, stream, &s.own_fields, &self.who.ledger_tables, cluster);
            crate::ledger::leave_chunks(&mut p, &self.who.group, stream, s.chunk_refs.iter().copied(), cluster);
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
    pub async fn dead_letter(&mut self, letters: &[Letter<'_>]) -> Result<()> {
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
            let e = l.event;
            DeadLetter {
                stream: &e.stream,
                entry_id: &e.entry_id,
                event_id: e.parsed.as_ref().map(|e| e.id.as_str()).unwrap_or(""),
                event_type: &self.who.event_type,
                group: self.group(),
                plugin: &self.who.plugin,
                plugin_version: &self.who.version,
                attempts: e.deliveries,
                kind: l.kind,
                error: l.error,
                original: &e.fields,
            }
            .add_to(&mut p, DLQ_STREAM, &now);
            if !cluster {
                p.cmd("XACK").arg(&*l.event.stream).arg(self.group()).arg(&l.event.entry_id).ignore();
                crate::ledger::forget(
                    &mut p,
                    &self.who.group,
                    &l.event.stream,
                    &[l.event.entry_id.as_str()],
                    &self.who.ledger_tables,
                    false,
                );
                crate::ledger::leave_chunks(
                    &mut p,
                    &self.who.group,
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

/// The error Redis gives for a command on a group (or stream) that does not exist (also when
/// it comes back inside a pipeline's failures).
fn is_missing_group(e: &redis::RedisError) -> bool {
    e.code() == Some("NOGROUP") || e.to_string().contains("NOGROUP")
}
