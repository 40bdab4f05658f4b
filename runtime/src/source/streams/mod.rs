//! The Redis Streams source: one consumer-group reader per (plugin, event type).
//!
//! Policy:
//! - Group `sluice:<plugin>` on stream `<prefix><type>`, created at `0` so events published
//!   before the host started are processed.
//! - New entries are read with XREADGROUP in batches; an entry is acknowledged only after every
//!   row it produced is committed (the core settles it `Ack`).
//! - Retries and crash recovery keep their state in Redis, not in memory: an entry that failed
//!   transiently stays in the pending-entries list, and is claimed again (XCLAIM) once it has
//!   been idle for its backoff (entries of this consumer) or for the visibility timeout
//!   (entries of any other consumer, e.g. a dead instance). The delivery count the PEL keeps is
//!   the attempt number.
//! - While an entry is in flight here its idle time is reset every third of the visibility
//!   timeout (XCLAIM JUSTID, which counts no delivery), so other instances only claim entries
//!   whose consumer really stopped, however long ClickHouse keeps a batch waiting.
//! - A dead letter is written to `sluice:dlq` and the original acknowledged in one MULTI.
//! - Each pipeline also reads its plugin's replay stream (`sluice:replay:<plugin>:<type>`),
//!   where `sluice dlq reprocess` and `sluice replay` put events for that plugin alone.

mod reader;
mod reply;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;

use self::reader::{Letter, StreamReader};
use super::{Batch, Intake, Recorded, Settle, Settled, Settlement, SourceEvent, Subscriber};
use crate::backoff::Backoff;
use crate::ledger;
use crate::policy::DeliveryPolicy;
use crate::redis_conn::RedisConn;

/// How often a pipeline looks for entries to retry or recover.
const RECLAIM_INTERVAL: Duration = Duration::from_secs(1);
/// How often a pipeline deletes the ledger fields dead hosts left (see `ledger::collect_garbage`).
const LEDGER_GC_INTERVAL: Duration = Duration::from_secs(60);
/// Times an acknowledgement is tried (Redis briefly away) before its events are left pending.
const ACK_TRIES: u32 = 20;

/// (stream, entry id) of the events a (plugin, event type) pair has in flight on this host,
/// shared by every version of the plugin: during a hot swap the new version must not reclaim,
/// as a retry, an event the old version is still handling.
pub type InflightIds = Arc<Mutex<HashSet<(Arc<str>, String)>>>;

/// The streams of one (plugin, event type), as a pipeline's intake.
pub struct StreamsIntake {
    /// Blocking reads only: a blocked XREADGROUP would hold up a shared connection.
    reader: StreamReader,
    /// Claims, acknowledgements, dead letters and heartbeats, on the shared connection.
    control: StreamReader,
    policy: DeliveryPolicy,
    inflight: InflightIds,
    /// Exactly-once is on: the ledger has fields to collect.
    exactly_once: bool,
    last_reclaim: Instant,
    last_ledger_gc: Instant,
    heartbeat: Option<AbortOnDrop>,
    /// This pipeline's name in `/ready`'s stalled list.
    stall_name: String,
}

impl StreamsIntake {
    /// `reading`: a connection of its own; `control`: the host's shared one.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        reading: RedisConn,
        control: RedisConn,
        stream: &str,
        who: Subscriber,
        consumer: Arc<str>,
        policy: DeliveryPolicy,
        inflight: InflightIds,
        exactly_once: bool,
    ) -> Self {
        StreamsIntake {
            stall_name: who.pipeline_name(stream),
            reader: StreamReader::new(reading, stream, who.clone(), consumer.clone()),
            control: StreamReader::new(control, stream, who, consumer),
            policy,
            inflight,
            exactly_once,
            last_reclaim: Instant::now() - RECLAIM_INTERVAL,
            last_ledger_gc: Instant::now(),
            heartbeat: None,
        }
    }

    /// A batch of `events` now in flight here, with its acknowledgement.
    fn batch(&self, events: Vec<SourceEvent>, maybe_written: bool) -> Batch<StreamsSettle> {
        let ids: Vec<(Arc<str>, String)> = events.iter().map(|e| (e.stream.clone(), e.entry_id.clone())).collect();
        self.inflight.lock().unwrap().extend(ids.iter().cloned());
        let settle = StreamsSettle { control: self.control.clone(), inflight: self.inflight.clone(), ids };
        Batch { events, maybe_written, settle }
    }

    /// Entries to retry (this consumer's, after their backoff) or recover (another
    /// consumer's, after the visibility timeout), claimed for this consumer.
    async fn reclaim(&mut self, max: usize) -> Result<Vec<SourceEvent>> {
        let p = &self.policy;
        let min_idle = p.retry_base.min(p.visibility_timeout);
        let pending = self.control.pending(min_idle, max).await?;
        let due: Vec<_> = {
            let ids = self.inflight.lock().unwrap();
            pending
                .into_iter()
                .filter(|e| {
                    let idle = Duration::from_millis(e.idle_ms);
                    if *e.consumer == *self.control.consumer {
                        !ids.contains(&(e.stream.clone(), e.id.clone())) && idle >= p.retry_delay(e.deliveries)
                    } else {
                        idle >= p.visibility_timeout
                    }
                })
                .collect()
        };
        if due.is_empty() {
            return Ok(Vec::new());
        }
        let (claimed, deleted) = self.control.claim(&due, min_idle).await?;
        if !deleted.is_empty() {
            tracing::warn!(stream = %self.control.stream(), count = deleted.len(), "pending entries were deleted from the stream before they were handled; acknowledging them");
            self.control.ack(deleted.iter().map(|e| (&*e.stream, e.id.as_str(), true, &[][..])), &[]).await?;
        }
        if !claimed.is_empty() {
            tracing::info!(stream = %self.control.stream(), plugin = %self.control.who.plugin, count = claimed.len(), "claimed pending entries for retry or recovery");
        }
        Ok(claimed)
    }

    /// Deletes the ledger's chunk fields a dead host left behind once their events were handled
    /// (see `ledger::collect_garbage`): those older than a few visibility timeouts.
    async fn collect_ledger_garbage(&mut self) {
        let older_than = (self.policy.visibility_timeout * 3).max(LEDGER_GC_INTERVAL);
        let group = self.control.who.group.clone();
        for stream in self.control.streams.clone() {
            match ledger::collect_garbage(self.control.conn(), &group, &stream, older_than).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(stream = %stream, group = %group, fields = n, "deleted the ledger fields of chunks whose events were all handled after their host stopped")
                }
                Err(e) => {
                    tracing::warn!(stream = %stream, error = format!("{e:#}"), "cannot clean the batch ledger; trying again later")
                }
            }
        }
    }
}

impl Intake for StreamsIntake {
    type Settle = StreamsSettle;
    const CHUNKED_LEDGER: bool = true;
    const JOB_IDS: bool = false;
    const OWN_RETRY_POLICY: bool = false;
    const DEAD_LETTERS: &'static str = crate::keys::DLQ_STREAM;

    fn source(&self) -> &Arc<str> {
        self.control.stream()
    }

    async fn start(&mut self) -> Result<()> {
        self.reader.ensure_group().await?;
        let (control, inflight, every) =
            (self.control.clone(), self.inflight.clone(), self.policy.visibility_timeout / 3);
        self.heartbeat = Some(AbortOnDrop(tokio::spawn(heartbeat(control, inflight, every))));
        Ok(())
    }

    /// Retries and recoveries first (once a second), then new entries.
    async fn next(&mut self, max: usize) -> Result<Option<Batch<StreamsSettle>>> {
        loop {
            if self.exactly_once && self.last_ledger_gc.elapsed() >= LEDGER_GC_INTERVAL {
                self.last_ledger_gc = Instant::now();
                self.collect_ledger_garbage().await;
            }
            if self.last_reclaim.elapsed() >= RECLAIM_INTERVAL {
                self.last_reclaim = Instant::now();
                let claimed = self.reclaim(max).await?;
                if !claimed.is_empty() {
                    return Ok(Some(self.batch(claimed, true)));
                }
            }
            let block = self.policy.block.min(RECLAIM_INTERVAL);
            let read = self.reader.read_new(max, block).await?;
            // A read that worked, even an empty one: the pipeline is not stalled (an idle stream
            // returns no batch for hours, and must not stay "stalled" after a blip).
            crate::status::progressing(&self.stall_name);
            if !read.is_empty() {
                return Ok(Some(self.batch(read, false)));
            }
        }
    }
}

/// A streams batch's acknowledgement: XACK, dead letters, and the batch's ledger fields.
pub struct StreamsSettle {
    control: StreamReader,
    inflight: InflightIds,
    /// The batch's entries, in flight until settled or dropped.
    ids: Vec<(Arc<str>, String)>,
}

impl Drop for StreamsSettle {
    /// Settled or abandoned, the entries are no longer in flight here: left pending, they can
    /// be claimed again.
    fn drop(&mut self) {
        let mut ids = self.inflight.lock().unwrap();
        for id in &self.ids {
            ids.remove(id);
        }
    }
}

impl StreamsSettle {
    /// What acknowledging `acked` does to the batch's chunk fields in the ledger: for each
    /// exactly-once table written, the field goes, or keeps the events not acknowledged now.
    fn chunk_marks(
        &self,
        events: &[SourceEvent],
        chunk: &Option<Arc<str>>,
        recorded: &[Recorded],
        acked: &HashSet<usize>,
    ) -> Vec<ledger::ChunkMark> {
        let Some(chunk) = chunk else { return Vec::new() };
        let mut marks = Vec::new();
        for r in recorded {
            let mut streams: Vec<&Arc<str>> = r.events.iter().map(|&i| &events[i].stream).collect();
            streams.sort();
            streams.dedup();
            for stream in streams {
                let remaining = r
                    .events
                    .iter()
                    .filter(|&&i| &events[i].stream == stream && !acked.contains(&i))
                    .map(|&i| Arc::from(events[i].entry_id.as_str()))
                    .collect();
                marks.push(ledger::ChunkMark {
                    group: self.control.who.group.clone(),
                    stream: stream.clone(),
                    chunk: chunk.clone(),
                    table: r.table.clone(),
                    batch: r.batch.clone(),
                    remaining,
                });
            }
        }
        marks
    }
}

impl Settle for StreamsSettle {
    /// Acknowledged events go (with their ledger fields), dead letters go to `sluice:dlq`,
    /// retried events stay pending until their backoff has passed.
    async fn settle(mut self, s: Settled) {
        let mut acked = HashSet::new();
        let mut letters = Vec::new();
        for (i, (e, settlement)) in s.events.iter().zip(&s.settlements).enumerate() {
            match settlement {
                Settlement::Ack => {
                    acked.insert(i);
                }
                Settlement::DeadLetter { kind, error } => letters.push(Letter { event: e, kind: *kind, error }),
                Settlement::Retry(_) => {}
            }
        }
        let marks = self.chunk_marks(&s.events, &s.chunk, &s.recorded, &acked);
        // Only an event delivered before may have ledger fields of its own (`.2`).
        let acks: Vec<(&str, &str, bool, &[String])> = acked
            .iter()
            .map(|&i| &s.events[i])
            .map(|e| (&*e.stream, e.entry_id.as_str(), e.deliveries > 1, e.chunk_refs.as_slice()))
            .collect();
        // Redis may be briefly unreachable: keep trying, the events stay pending meanwhile.
        let mut backoff = Backoff::brief();
        for attempt in 1..=ACK_TRIES {
            let r = async {
                self.control.ack(acks.iter().copied(), &marks).await?;
                self.control.dead_letter(&letters).await
            }
            .await;
            match r {
                Ok(()) => break,
                Err(e) if attempt < ACK_TRIES => {
                    tracing::warn!(stream = %self.control.stream(), error = format!("{e:#}"), "cannot acknowledge yet; retrying");
                    backoff.wait().await;
                }
                Err(e) => {
                    tracing::error!(stream = %self.control.stream(), error = format!("{e:#}"), "giving up acknowledging; the events stay pending and will be recovered")
                }
            }
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Keeps in-flight entries from looking abandoned: every `every`, their idle time in the PEL is
/// reset (XCLAIM JUSTID, which does not count a delivery).
async fn heartbeat(mut control: StreamReader, inflight: InflightIds, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let ids: Vec<(Arc<str>, String)> = inflight.lock().unwrap().iter().cloned().collect();
        if ids.is_empty() {
            continue;
        }
        if let Err(e) = control.touch(&ids).await {
            tracing::warn!(stream = %control.stream(), error = format!("{e:#}"), "cannot refresh in-flight entries");
        }
    }
}
