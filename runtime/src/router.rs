//! The router: one pipeline per (plugin, event type), each reading stream `<prefix><type>`
//! through group `sluice:<plugin>`, calling the plugin with batches, handing rows to the
//! writer and acknowledging events once their rows are committed. With BullMQ queues
//! configured, a second pipeline per (plugin, event type) takes the jobs of that type
//! (`source::bullmq`) and reports each job's outcome instead of acknowledging.
//!
//! Delivery policy, per event of a batch:
//! - rows committed in every table → XACK;
//! - the event is not a valid event (no payload...) or the plugin/host marks it permanent →
//!   dead-lettered (XADD `sluice:dlq` + XACK in one MULTI);
//! - transient failure (retryable handler error, trap, failed insert) → left pending; it is
//!   claimed again after its backoff, and dead-lettered once `max_attempts` deliveries failed.
//!
//! A BullMQ job's outcome goes back to its queue consumer instead: committed → completed;
//! invalid or permanent → failed for good (BullMQ's failed set, with the error); transient →
//! failed for a retry, which BullMQ schedules by the job's own `attempts` and `backoff`.
//!
//! Backpressure: a pipeline holds at most `max_inflight_events` events between read and
//! acknowledgement; it stops reading while they wait for ClickHouse.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::redis_conn::RedisConn;
use anyhow::Result;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};

use crate::config::Settings;
use crate::plugin::{LoadedPlugin, Sandbox, wit};
use crate::priority::{Priority, PriorityGate};
use crate::source::SourceEvent;
use crate::source::bullmq::{Delivery, Failure, Outcome, Records};

/// Where a job's outcome goes, and the flag telling its queue consumer that the job's rows were
/// handed to the writer (a job in that state is never handed back: it may yet be committed).
type JobReply = (oneshot::Sender<Outcome>, Arc<std::sync::atomic::AtomicBool>);
use crate::source::streams::{DeadLetter, StreamReader};
use crate::writer::dedup::entry_hash;
use crate::writer::{ChunkOrigin, CommitResult, RowChunk, Writer, ledger};

/// How often a pipeline looks for entries to retry or recover.
const RECLAIM_INTERVAL: Duration = Duration::from_secs(1);
/// How often a streams pipeline deletes the ledger fields dead hosts left (see
/// `ledger::collect_garbage`).
const LEDGER_GC_INTERVAL: Duration = Duration::from_secs(60);
/// How long a jobs pipeline waits for more jobs to join a batch once it has one.
const JOB_LINGER: Duration = Duration::from_millis(5);
/// Deliveries beyond `max_attempts` that ended with no outcome at all (the host died while
/// handling them each time) before such an entry is dead-lettered anyway.
const CRASH_ALLOWANCE: u64 = 2;

/// The consumer group of a plugin.
pub fn group_name(plugin: &str) -> String {
    format!("sluice:{plugin}")
}

/// The jobs of one (plugin, event type) from every BullMQ queue, shared by the plugin's
/// versions: one version at a time holds it (a new one waits until the old one stopped).
pub type JobInbox = Arc<tokio::sync::Mutex<mpsc::Receiver<Delivery>>>;

/// Where a pipeline's events come from.
pub enum Input {
    /// The event and replay streams, read on this connection (blocking reads only).
    Streams(RedisConn),
    /// BullMQ jobs.
    Jobs(JobInbox),
}

/// One (plugin, event type) pipeline.
pub struct Pipeline {
    pub plugin: Arc<LoadedPlugin>,
    pub settings: Arc<Settings>,
    /// Blocking reads only (streams pipelines).
    reader: Option<StreamReader>,
    /// Jobs (BullMQ pipelines).
    inbox: Option<JobInbox>,
    /// Where the events come from, for logs: the stream, or `bullmq`.
    pub source: Arc<str>,
    /// Acks, claims and dead letters (a blocked XREADGROUP would hold up a shared connection);
    /// the group and the batch ledger's connection for both kinds.
    pub control: StreamReader,
    /// The writer's channel for each of the plugin's tables, in declaration order.
    pub tables: Vec<mpsc::Sender<RowChunk>>,
    /// Plugin calls pass this gate, by the event type's priority.
    pub gate: PriorityGate,
    pub priority: Priority,
    /// For recovering recorded batches of events delivered again (exactly-once tables).
    pub writer: Writer,
}

/// (stream, entry id) of the events a (plugin, event type) pair has in flight on this host,
/// shared by every version of the plugin: during a hot swap the new version must not reclaim,
/// as a retry, an event the old version is still handling.
pub type InflightIds = Arc<Mutex<HashSet<(Arc<str>, String)>>>;

/// Shared state of a pipeline's in-flight work.
struct Inflight {
    permits: Arc<Semaphore>,
    /// (stream, entry id) of every event read and not yet acknowledged or left for retry.
    ids: InflightIds,
}

impl Pipeline {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        gate: PriorityGate,
        plugin: Arc<LoadedPlugin>,
        settings: Arc<Settings>,
        input: Input,
        control_conn: RedisConn,
        event_type: &str,
        consumer: &str,
        tables: Vec<mpsc::Sender<RowChunk>>,
        writer: Writer,
    ) -> Self {
        let stream = format!("{}{}", settings.stream_prefix, event_type);
        let group = group_name(plugin.name());
        let ledger_tables =
            plugin.tables.iter().filter(|t| t.guarantee.exactly_once()).map(|t| t.name.clone()).collect();
        let (reader, inbox, source) = match input {
            Input::Streams(conn) => (
                Some(StreamReader::new(conn, &stream, plugin.name(), event_type, &group, consumer)),
                None,
                Arc::from(stream.as_str()),
            ),
            Input::Jobs(inbox) => (None, Some(inbox), Arc::from("bullmq")),
        };
        Pipeline {
            reader,
            inbox,
            source,
            control: StreamReader::new(control_conn, &stream, plugin.name(), event_type, &group, consumer)
                .with_ledger_tables(ledger_tables),
            writer,
            priority: settings.priority_of(event_type),
            plugin,
            settings,
            tables,
            gate,
        }
    }

    /// Runs until `shutdown` turns true, then waits (up to `grace`) for in-flight events.
    pub async fn run(mut self, ids: InflightIds, mut shutdown: watch::Receiver<bool>, grace: Duration) -> Result<()> {
        let inflight = Arc::new(Inflight { permits: Arc::new(Semaphore::new(self.settings.max_inflight_events)), ids });
        let mut sandbox = Some(Sandbox::new(self.plugin.clone()));
        let mut heartbeat = None;
        if let Some(reader) = &mut self.reader {
            reader.ensure_group().await?;
            heartbeat = Some(AbortOnDrop(tokio::spawn(heartbeat_loop(
                self.control.with_same_connection(),
                inflight.clone(),
                self.settings.visibility_timeout / 3,
            ))));
        }
        tracing::info!(plugin = self.plugin.name(), version = self.plugin.short_hash(), source = %self.source, event_type = %self.control.event_type, group = %self.control.group, priority = %self.priority, "pipeline started");
        match self.inbox.clone() {
            None => self.read_streams(&inflight, &mut sandbox, &mut shutdown).await,
            Some(inbox) => self.take_jobs(inbox, &inflight, &mut sandbox, &mut shutdown, grace).await,
        }
        // Graceful stop: wait for every in-flight event to be acknowledged (or left pending).
        let _stop_heartbeat_on_return = heartbeat;
        let all = self.settings.max_inflight_events as u32;
        match tokio::time::timeout(grace, inflight.permits.acquire_many(all)).await {
            Ok(_) => {
                tracing::info!(source = %self.source, event_type = %self.control.event_type, plugin = self.plugin.name(), "pipeline stopped; in-flight events finished")
            }
            Err(_) => {
                tracing::warn!(source = %self.source, event_type = %self.control.event_type, plugin = self.plugin.name(), "pipeline stopped after the grace period; unfinished events stay pending and will be recovered")
            }
        }
        Ok(())
    }

    /// The streams loop: retries and recoveries first, then new entries.
    async fn read_streams(
        &mut self,
        inflight: &Arc<Inflight>,
        sandbox: &mut Option<Sandbox>,
        shutdown: &mut watch::Receiver<bool>,
    ) {
        let mut last_reclaim = Instant::now() - RECLAIM_INTERVAL;
        let mut last_ledger_gc = Instant::now();
        let mut error_backoff = Duration::from_millis(100);
        while !*shutdown.borrow() {
            let permits = tokio::select! {
                p = inflight.permits.clone().acquire_many_owned(self.settings.batch_size as u32) => p.expect("the semaphore is never closed"),
                _ = shutdown.changed() => break,
            };
            let mut batch = Vec::new();
            let mut read_error = None;
            if self.writer.exactly_once() && last_ledger_gc.elapsed() >= LEDGER_GC_INTERVAL {
                last_ledger_gc = Instant::now();
                self.collect_ledger_garbage().await;
            }
            if last_reclaim.elapsed() >= RECLAIM_INTERVAL {
                last_reclaim = Instant::now();
                // Recovering a dead host's batches can wait on ClickHouse: never past a stop.
                tokio::select! {
                    r = self.reclaim(inflight) => match r {
                        Ok(b) => batch = b,
                        Err(e) => read_error = Some(e),
                    },
                    _ = shutdown.changed() => break,
                }
            }
            if batch.is_empty() && read_error.is_none() {
                let block = self.settings.block.min(RECLAIM_INTERVAL);
                let reader = self.reader.as_mut().expect("a streams pipeline has a reader");
                tokio::select! {
                    r = reader.read_new(self.settings.batch_size, block) => match r {
                        Ok(b) => batch = b,
                        Err(e) => read_error = Some(e),
                    },
                    _ = shutdown.changed() => break,
                }
            }
            if let Some(e) = read_error {
                tracing::error!(stream = %self.source, error = format!("{e:#}"), "cannot read from Redis; retrying in {error_backoff:?}");
                tokio::time::sleep(error_backoff).await;
                error_backoff = (error_backoff * 2).min(Duration::from_secs(5));
                continue;
            }
            error_backoff = Duration::from_millis(100);
            if batch.is_empty() {
                continue;
            }
            {
                let mut ids = inflight.ids.lock().unwrap();
                ids.extend(batch.iter().map(|e| (e.stream.clone(), e.entry_id.clone())));
            }
            let sb = sandbox.take().expect("sandbox is returned after every batch");
            *sandbox = Some(self.process(sb, batch, None, permits, inflight.clone()).await);
        }
    }

    /// The jobs loop: batches of whatever jobs the queue consumers routed here. Retries,
    /// backoff and stalled jobs are BullMQ's; a job run again only has its batch records
    /// looked up, so that rows an earlier run committed are not written twice.
    async fn take_jobs(
        &mut self,
        inbox: JobInbox,
        inflight: &Arc<Inflight>,
        sandbox: &mut Option<Sandbox>,
        shutdown: &mut watch::Receiver<bool>,
        grace: Duration,
    ) {
        let batch_size = self.settings.batch_size;
        let mut rx = tokio::select! {
            rx = inbox.lock_owned() => rx,
            _ = shutdown.changed() => return,
        };
        while !*shutdown.borrow() {
            let permits = tokio::select! {
                p = inflight.permits.clone().acquire_many_owned(batch_size as u32) => p.expect("the semaphore is never closed"),
                _ = shutdown.changed() => break,
            };
            let mut got: Vec<Delivery> = Vec::with_capacity(batch_size);
            tokio::select! {
                n = rx.recv_many(&mut got, batch_size) => if n == 0 { break },
                _ = shutdown.changed() => break,
            }
            let until = tokio::time::Instant::now() + JOB_LINGER;
            while got.len() < batch_size {
                let room = batch_size - got.len();
                match tokio::time::timeout_at(until, rx.recv_many(&mut got, room)).await {
                    Ok(n) if n > 0 => {}
                    _ => break,
                }
            }
            // Every job's batch records are looked up (exactly-once tables): not only jobs started
            // before (a retry, a stall, a hand-back) — a job retried by hand from the failed set
            // may have its counters reset, and its records are kept for that.
            let started_before = got.iter().filter(|d| d.event.deliveries > 1).count();
            let (mut batch, replies): (Vec<SourceEvent>, Vec<JobReply>) =
                got.into_iter().map(|d| (d.event, (d.reply, d.sent))).unzip();
            if started_before > 0 {
                tracing::info!(plugin = self.plugin.name(), event_type = %self.control.event_type, jobs = started_before, "jobs started before (a retry, a stall, a hand-back): checking their batch records");
            }
            if let Err(e) = self.find_written(&mut batch).await {
                // Without knowing what an earlier run wrote, the jobs must not run now.
                let ids: Vec<&str> = batch.iter().map(|e| e.entry_id.as_str()).collect();
                tracing::error!(plugin = self.plugin.name(), event_type = %self.control.event_type, jobs = ?ids, error = format!("{e:#}"), "cannot look up the jobs' batch records; they fail for a retry");
                for (reply, _) in replies {
                    let message = format!("cannot look up earlier batch records: {e:#}");
                    let _ = reply.send(Outcome { failure: Some(Failure { permanent: false, message }), records: None });
                }
                continue;
            }
            let sb = sandbox.take().expect("sandbox is returned after every batch");
            // A stop waits at most `grace` for a writer that cannot take rows (ClickHouse down,
            // its channel full): jobs whose rows were not handed over get no outcome, and their
            // queue consumer hands them back to the queue.
            let stop_waiting = async {
                let _ = shutdown.changed().await;
                tokio::time::sleep(grace).await;
            };
            tokio::select! {
                sb = self.process(sb, batch, Some(replies), permits, inflight.clone()) => *sandbox = Some(sb),
                _ = stop_waiting => break,
            }
        }
    }

    /// Deletes the ledger's chunk fields a dead host left behind once their events were handled
    /// (see `ledger::collect_garbage`): those older than a few visibility timeouts.
    async fn collect_ledger_garbage(&mut self) {
        let older_than = (self.settings.visibility_timeout * 3).max(LEDGER_GC_INTERVAL);
        let group = self.control.group.clone();
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

    /// Entries to retry (this consumer's, after their backoff) or recover (another
    /// consumer's, after the visibility timeout), claimed for this consumer.
    async fn reclaim(&mut self, inflight: &Inflight) -> Result<Vec<SourceEvent>> {
        let s = &self.settings;
        let min_idle = s.retry_base.min(s.visibility_timeout);
        let pending = self.control.pending(min_idle, s.batch_size).await?;
        let due: Vec<_> = {
            let ids = inflight.ids.lock().unwrap();
            pending
                .into_iter()
                .filter(|p| {
                    if p.consumer == self.control.consumer {
                        !ids.contains(&(p.stream.clone(), p.id.clone()))
                            && Duration::from_millis(p.idle_ms) >= s.retry_delay(p.deliveries)
                    } else {
                        Duration::from_millis(p.idle_ms) >= s.visibility_timeout
                    }
                })
                .collect()
        };
        if due.is_empty() {
            return Ok(Vec::new());
        }
        let (mut claimed, deleted) = self.control.claim(&due, min_idle).await?;
        if !deleted.is_empty() {
            tracing::warn!(stream = %self.control.stream(), count = deleted.len(), "pending entries were deleted from the stream before they were handled; acknowledging them");
            self.control.ack(deleted.iter().map(|e| (&*e.stream, e.id.as_str(), true, &[][..])), &[]).await?;
        }
        if !claimed.is_empty() {
            tracing::info!(stream = %self.control.stream(), plugin = self.plugin.name(), count = claimed.len(), "claimed pending entries for retry or recovery");
            // In flight from now on (heartbeats, and no other version of this plugin on this
            // host claims them), also while their recorded batches are re-sent.
            let mut guard = ClaimGuard {
                ids: inflight.ids.clone(),
                claimed: claimed.iter().map(|e| (e.stream.clone(), e.entry_id.clone())).collect(),
                keep: false,
            };
            inflight.ids.lock().unwrap().extend(guard.claimed.iter().cloned());
            self.find_written(&mut claimed).await?;
            guard.keep = true;
        }
        Ok(claimed)
    }

    /// For events delivered again: which exactly-once tables already hold their rows. A
    /// recorded batch still open (its writer died, or has not closed it yet) is inserted again
    /// first — identical, so the table drops it if it had landed — and then counts as written.
    async fn find_written(&mut self, events: &mut [SourceEvent]) -> Result<()> {
        if !self.writer.exactly_once() {
            // Off: at-least-once, the events are handled again in full.
            return Ok(());
        }
        let group = self.control.group.clone();
        // This version's exactly-once tables, and any table an earlier version recorded
        // batches for (dropped since, or no longer exactly-once): those batches are re-sent
        // too, or their rows would be lost.
        let mut tables: Vec<String> = self.control.ledger_tables.to_vec();
        for t in ledger::recorded_tables(self.control.conn(), &group).await? {
            if !tables.contains(&t) {
                tables.push(t);
            }
        }
        let mut streams: Vec<Arc<str>> = Vec::new();
        for e in events.iter() {
            if !streams.contains(&e.stream) {
                streams.push(e.stream.clone());
            }
        }
        for table in &tables {
            let table_index = self.plugin.tables.iter().position(|t| &t.name == table);
            let acked_with_fields = self.control.ledger_tables.contains(table);
            for stream in streams.iter().cloned() {
                let idx: Vec<usize> = (0..events.len()).filter(|&i| events[i].stream == stream).collect();
                let ids: Vec<&str> = idx.iter().map(|&i| events[i].entry_id.as_str()).collect();
                let chunks = self.inbox.is_none();
                let mut batches = ledger::written_in(self.control.conn(), &group, &stream, &ids, table, chunks).await?;
                let open: HashSet<String> = batches.iter().flatten().map(|f| f.batch.clone()).collect();
                if open.is_empty() {
                    continue;
                }
                for id in &open {
                    self.writer.recover(id).await?;
                }
                // Recovery drops the fields of rows ClickHouse refused: read them again.
                batches = ledger::written_in(self.control.conn(), &group, &stream, &ids, table, chunks).await?;
                if !acked_with_fields {
                    // Acknowledging will not delete fields of a table this version does not
                    // write exactly-once: delete them now that their batches are closed.
                    let mut p = redis::pipe();
                    let cluster = self.control.conn().is_cluster();
                    ledger::forget(&mut p, &group, &stream, &ids, std::slice::from_ref(table), cluster);
                    p.query_async::<()>(self.control.conn()).await?;
                }
                let mut written = 0;
                for (&i, found) in idx.iter().zip(&batches) {
                    if let (Some(_), Some(t)) = (found, table_index) {
                        events[i].written.push(t);
                    }
                    if let Some(f) = found.as_ref().and_then(|f| f.chunk_field.clone()) {
                        if !events[i].chunk_refs.contains(&f) {
                            events[i].chunk_refs.push(f);
                        }
                    }
                    written += found.is_some() as usize;
                }
                tracing::info!(stream = %stream, plugin = self.plugin.name(), table = %table, events = written, batches = open.len(), "events delivered again already have rows in this table (exactly-once): their new rows for it are dropped");
            }
        }
        Ok(())
    }

    /// Handles one batch: plugin call, rows to the writer, then (in a task) acknowledgement.
    async fn process(
        &mut self,
        sandbox: Sandbox,
        batch: Vec<SourceEvent>,
        replies: Option<Vec<JobReply>>,
        permits: OwnedSemaphorePermit,
        inflight: Arc<Inflight>,
    ) -> Sandbox {
        // A BullMQ job's attempts are counted by BullMQ, against the job's own `attempts`.
        let jobs = replies.is_some();
        let s = &self.settings;
        metrics::counter!("sluice_events_read_total", "plugin" => self.plugin.name().to_string(), "event_type" => self.control.event_type.to_string())
            .increment(batch.len() as u64);
        // Events the plugin gets, and where each came from in `batch`.
        let mut events: Vec<wit::Event> = Vec::with_capacity(batch.len());
        let mut origin: Vec<usize> = Vec::with_capacity(batch.len());
        // The entry column's value per event given to the plugin (tables that have one).
        let with_entries = self.plugin.tables.iter().any(|t| t.entry_column);
        let mut entries: Vec<u64> = Vec::new();
        let mut verdicts: Vec<Verdict> = vec![Verdict::Ok; batch.len()];
        for (i, e) in batch.iter().enumerate() {
            match &e.parsed {
                Err(reason) => verdicts[i] = Verdict::Dead { kind: "invalid_event", error: reason.clone() },
                Ok(_) if !jobs && e.deliveries > s.max_attempts + CRASH_ALLOWANCE => {
                    verdicts[i] = Verdict::Dead {
                        kind: "retries_exhausted",
                        error: format!(
                            "delivered {} times without an outcome (the host stopped while handling it each time)",
                            e.deliveries
                        ),
                    }
                }
                Ok(ev) => {
                    let mut ev = ev.clone();
                    if !jobs {
                        // A job's attempt is BullMQ's (`attemptsMade + 1`, set by the source).
                        ev.attempt = e.deliveries.min(u32::MAX as u64) as u32;
                    }
                    events.push(ev);
                    origin.push(i);
                    if with_entries {
                        entries.push(entry_hash(&self.control.group, &e.stream, &e.entry_id));
                    }
                }
            }
        }
        let slot = self.gate.acquire(self.priority, self.plugin.name()).await;
        let started = Instant::now();
        let (sandbox, outcome) = {
            let events = std::mem::take(&mut events);
            crate::plugin::off_reactor(async move {
                let mut sandbox = sandbox;
                let outcome = sandbox.run(&events, &entries).await;
                (sandbox, outcome)
            })
            .await
        };
        let handled_in = started.elapsed();
        let plugin = self.plugin.name().to_string();
        metrics::histogram!("sluice_plugin_call_duration_seconds", "plugin" => plugin.clone())
            .record(handled_in.as_secs_f64());
        metrics::histogram!("sluice_batch_size_events", "plugin" => plugin).record(batch.len() as f64);
        drop(slot);
        for f in &outcome.failures {
            let i = origin[f.event as usize];
            verdicts[i] = if f.permanent {
                Verdict::Dead { kind: "permanent", error: f.message.clone() }
            } else if !jobs && batch[i].deliveries >= s.max_attempts {
                Verdict::Dead {
                    kind: "retries_exhausted",
                    error: format!("failed {} attempts; last error: {}", batch[i].deliveries, f.message),
                }
            } else {
                Verdict::Retry(f.message.clone())
            };
        }
        // Per table written: its commit notice, and which events (by index in `batch`) it holds.
        let mut commits: Vec<(usize, Vec<usize>, oneshot::Receiver<CommitResult>)> = Vec::new();
        // A streams batch is acknowledged as one: the ledger indexes its rows by it (one field
        // per table instead of one per event; see `writer::ledger`).
        let ack_unit = (!jobs).then(|| Arc::from(&uuid::Uuid::new_v4().simple().to_string()[..16]));
        let chunk_origin = Arc::new(ChunkOrigin {
            group: Arc::from(self.control.group.as_str()),
            version: Arc::from(self.plugin.hash.as_str()),
            entries: batch.iter().map(|e| (e.stream.clone(), Arc::from(e.entry_id.as_str()))).collect(),
            ack_unit: ack_unit.clone(),
        });
        let mut chunks = Vec::new();
        for (table, mut rows) in outcome.tables.into_iter().enumerate() {
            if batch.iter().any(|e| e.written.contains(&table)) {
                rows = rows.without(|e| batch[origin[e as usize]].written.contains(&table));
            }
            if rows.rows == 0 {
                continue;
            }
            let (done, rx) = oneshot::channel();
            // Events numbered as in `batch`, so that a refused row fails its own event.
            let events: Vec<(u32, usize, usize)> =
                rows.events.iter().map(|&(e, end, n)| (origin[e as usize] as u32, end, n)).collect();
            commits.push((table, events.iter().map(|(e, _, _)| *e as usize).collect(), rx));
            chunks.push((
                table,
                RowChunk { data: rows.data, rows: rows.rows, events, origin: chunk_origin.clone(), done },
            ));
        }
        // Room in every table's channel first, then all chunks at once: a batch abandoned while
        // a writer is full (a stop) has handed over all of its rows or none.
        let mut slots = Vec::with_capacity(chunks.len());
        for (table, _) in &chunks {
            slots.push(self.tables[*table].reserve().await);
        }
        if let Some(replies) = &replies {
            for (_, sent) in replies {
                sent.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        for (slot, (table, chunk)) in slots.into_iter().zip(chunks) {
            match slot {
                Ok(slot) => slot.send(chunk),
                Err(_) => tracing::error!(table = %self.plugin.tables[table].name, "writer is gone"),
            }
        }
        tracing::debug!(plugin = self.plugin.name(), source = %self.source, events = batch.len(), calls = outcome.calls, ms = handled_in.as_millis() as u64, "batch handled");
        let records = (jobs && !self.control.ledger_tables.is_empty())
            .then(|| Records { group: self.control.group.clone(), tables: self.control.ledger_tables.clone() });
        let ack = AckTask {
            control: self.control.with_same_connection(),
            ack_unit,
            replies: replies.map(|r| (r, records)),
            max_attempts: s.max_attempts,
            plugin: self.plugin.clone(),
            batch,
            verdicts,
            commits,
            _permits: permits,
            inflight,
        };
        // One span per batch: plugin, event type, size, plugin calls, and (once committed) the
        // outcome — how many events were acknowledged, left for retry and dead-lettered.
        let span = tracing::info_span!(
            "batch",
            plugin = self.plugin.name(),
            version = self.plugin.short_hash(),
            event_type = %self.control.event_type,
            events = ack.batch.len(),
            calls = outcome.calls,
            handled_ms = handled_in.as_millis() as u64,
            acked = tracing::field::Empty,
            retried = tracing::field::Empty,
            dead_lettered = tracing::field::Empty,
        );
        tokio::spawn(tracing::Instrument::instrument(ack.run(), span));
        sandbox
    }
}

/// Entries claimed for this pipeline, in the in-flight set until handed over (`keep`); taken
/// out again if the claim is abandoned (an error, or a stop while batches were re-sent), so
/// that they can be claimed again.
struct ClaimGuard {
    ids: InflightIds,
    claimed: Vec<(Arc<str>, String)>,
    keep: bool,
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        if !self.keep {
            let mut ids = self.ids.lock().unwrap();
            for c in &self.claimed {
                ids.remove(c);
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
/// reset (XCLAIM JUSTID, which does not count a delivery), so other instances only ever claim
/// entries whose consumer really stopped, however long ClickHouse keeps a batch waiting.
async fn heartbeat_loop(mut control: StreamReader, inflight: Arc<Inflight>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let ids: Vec<(Arc<str>, String)> = inflight.ids.lock().unwrap().iter().cloned().collect();
        if ids.is_empty() {
            continue;
        }
        if let Err(e) = control.touch(&ids).await {
            tracing::warn!(stream = %control.stream(), error = format!("{e:#}"), "cannot refresh in-flight entries");
        }
    }
}

impl AckTask {
    /// Sends each job's outcome to its queue consumer, which completes or fails the job.
    fn report(self, not_committed: HashMap<usize, Arc<str>>, replies: Vec<JobReply>, records: Option<Records>) {
        let (mut done, mut retry, mut failed) = (0u64, 0u64, 0u64);
        let labels = [("plugin", self.plugin.name().to_string()), ("event_type", self.control.event_type.to_string())];
        for (i, (v, (reply, _))) in self.verdicts.iter().zip(replies).enumerate() {
            let failure = match (v, not_committed.get(&i)) {
                (Verdict::Ok, None) => None,
                (Verdict::Ok, Some(e)) => {
                    Some(Failure { permanent: false, message: format!("rows not committed: {e}") })
                }
                (Verdict::Retry(m), _) => Some(Failure { permanent: false, message: m.clone() }),
                (Verdict::Dead { kind, error }, _) => {
                    let mut l = labels.to_vec();
                    l.push(("kind", kind.to_string()));
                    metrics::counter!("sluice_events_dead_lettered_total", &l).increment(1);
                    crate::admin::recent_error(self.plugin.name(), &self.control.event_type, kind, error);
                    Some(Failure { permanent: true, message: format!("{kind}: {error}") })
                }
            };
            match &failure {
                None => done += 1,
                Some(f) if f.permanent => failed += 1,
                Some(_) => retry += 1,
            }
            let _ = reply.send(Outcome { failure, records: records.clone() });
        }
        metrics::counter!("sluice_events_handled_total", &labels).increment(done);
        metrics::counter!("sluice_events_retried_total", &labels).increment(retry);
        let span = tracing::Span::current();
        span.record("acked", done);
        span.record("retried", retry);
        span.record("dead_lettered", failed);
    }
}

#[derive(Debug, Clone)]
enum Verdict {
    Ok,
    Retry(String),
    Dead { kind: &'static str, error: String },
}

/// Waits for a batch's rows to be committed, then acknowledges and dead-letters its events
/// (streams), or reports each job's outcome (BullMQ).
struct AckTask {
    control: StreamReader,
    /// The batch's chunk id in the ledger (streams), see `ChunkOrigin::ack_unit`.
    ack_unit: Option<Arc<str>>,
    /// BullMQ jobs: where each job's outcome goes, and its batch records.
    replies: Option<(Vec<JobReply>, Option<Records>)>,
    max_attempts: u64,
    plugin: Arc<LoadedPlugin>,
    batch: Vec<SourceEvent>,
    verdicts: Vec<Verdict>,
    /// Per table written: its index, the events whose rows it holds, and its commit notice.
    commits: Vec<(usize, Vec<usize>, oneshot::Receiver<CommitResult>)>,
    _permits: OwnedSemaphorePermit,
    inflight: Arc<Inflight>,
}

impl AckTask {
    /// What acknowledging `acked` does to this batch's chunk fields in the ledger: for each
    /// exactly-once table written, the field goes, or keeps the events not acknowledged now.
    fn chunk_marks(
        &self,
        recorded: &[(usize, Vec<usize>, Arc<str>)],
        acked: &[(&str, &str, bool, &[String])],
    ) -> Vec<ledger::ChunkMark> {
        let Some(chunk) = &self.ack_unit else { return Vec::new() };
        let acked: HashSet<(&str, &str)> = acked.iter().map(|(s, id, _, _)| (*s, *id)).collect();
        let mut marks = Vec::new();
        for (table, events, batch) in recorded {
            let mut streams: Vec<&Arc<str>> = events.iter().map(|&i| &self.batch[i].stream).collect();
            streams.sort();
            streams.dedup();
            for stream in streams {
                let remaining = events
                    .iter()
                    .map(|&i| &self.batch[i])
                    .filter(|e| &e.stream == stream && !acked.contains(&(&*e.stream, e.entry_id.as_str())))
                    .map(|e| Arc::from(e.entry_id.as_str()))
                    .collect();
                marks.push(ledger::ChunkMark {
                    group: Arc::from(self.control.group.as_str()),
                    stream: stream.clone(),
                    chunk: chunk.clone(),
                    table: self.plugin.tables[*table].name.clone(),
                    batch: batch.clone(),
                    remaining,
                });
            }
        }
        marks
    }

    async fn run(mut self) {
        // Events (by index in `batch`) whose rows were not committed, and why.
        let mut not_committed: HashMap<usize, Arc<str>> = HashMap::new();
        // Per exactly-once table written: the recorded batch and the events it holds.
        let mut recorded: Vec<(usize, Vec<usize>, Arc<str>)> = Vec::new();
        for (table, events, rx) in std::mem::take(&mut self.commits) {
            match rx.await {
                Ok(Ok(c)) => recorded.extend(c.batch.map(|b| (table, events, b))),
                Ok(Err(f)) => {
                    not_committed.extend(f.events.iter().map(|&e| (e as usize, f.error.clone())));
                    recorded.extend(f.batch.map(|b| (table, events, b)));
                }
                Err(_) => {
                    let e: Arc<str> = Arc::from("the writer stopped before committing");
                    not_committed.extend((0..self.batch.len()).map(|i| (i, e.clone())));
                }
            }
        }
        if let Some((replies, records)) = self.replies.take() {
            return self.report(not_committed, replies, records);
        }
        let mut ack: Vec<(&str, &str, bool, &[String])> = Vec::new();
        let mut dead: Vec<DeadLetter<'_>> = Vec::new();
        let mut retry = 0usize;
        let mut first_commit_error = None;
        for (i, (e, v)) in self.batch.iter().zip(&self.verdicts).enumerate() {
            let commit_error = not_committed.get(&i);
            match v {
                // Only an event delivered before may have fields of its own in the ledger.
                Verdict::Ok if commit_error.is_none() => {
                    ack.push((&e.stream, &e.entry_id, e.deliveries > 1, &e.chunk_refs))
                }
                Verdict::Ok if e.deliveries >= self.max_attempts => {
                    let error = commit_error.map(|e| &**e).unwrap_or_default();
                    tracing::error!(stream = %e.stream, entry_id = %e.entry_id, plugin = self.plugin.name(), kind = "insert_failed", error, "event dead-lettered to sluice:dlq");
                    dead.push(DeadLetter {
                        event: e,
                        plugin: self.plugin.name(),
                        plugin_version: &self.plugin.hash,
                        error_kind: "insert_failed",
                        error,
                    });
                }
                Verdict::Ok => {
                    retry += 1;
                    first_commit_error = first_commit_error.or(commit_error);
                }
                Verdict::Retry(msg) => {
                    retry += 1;
                    tracing::warn!(stream = %e.stream, entry_id = %e.entry_id, plugin = self.plugin.name(), attempt = e.deliveries, error = %msg, "event failed; it will be retried");
                }
                Verdict::Dead { kind, error } => {
                    tracing::error!(stream = %e.stream, entry_id = %e.entry_id, plugin = self.plugin.name(), kind, error = %error, "event dead-lettered to sluice:dlq");
                    dead.push(DeadLetter {
                        event: e,
                        plugin: self.plugin.name(),
                        plugin_version: &self.plugin.hash,
                        error_kind: kind,
                        error,
                    });
                }
            }
        }
        let labels = [("plugin", self.plugin.name().to_string()), ("event_type", self.control.event_type.to_string())];
        metrics::counter!("sluice_events_handled_total", &labels).increment(ack.len() as u64);
        metrics::counter!("sluice_events_retried_total", &labels).increment(retry as u64);
        for d in &dead {
            let mut l = labels.to_vec();
            l.push(("kind", d.error_kind.to_string()));
            metrics::counter!("sluice_events_dead_lettered_total", &l).increment(1);
            crate::admin::recent_error(self.plugin.name(), &self.control.event_type, d.error_kind, d.error);
        }
        if let Some(e) = first_commit_error {
            tracing::error!(stream = %self.control.stream(), plugin = self.plugin.name(), events = retry, error = %e, "rows not committed; the events stay pending and will be retried");
        }
        let span = tracing::Span::current();
        span.record("acked", ack.len());
        span.record("retried", retry);
        span.record("dead_lettered", dead.len());
        tracing::debug!("batch done");
        // Redis may be briefly unreachable: keep trying, the events stay pending meanwhile.
        let marks = self.chunk_marks(&recorded, &ack);
        let mut delay = Duration::from_millis(100);
        for attempt in 1..=20 {
            let r = async {
                self.control.ack(ack.iter().copied(), &marks).await?;
                self.control.dead_letter(&dead).await
            }
            .await;
            match r {
                Ok(()) => break,
                Err(e) if attempt < 20 => {
                    tracing::warn!(stream = %self.control.stream(), error = format!("{e:#}"), "cannot acknowledge yet; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(e) => {
                    tracing::error!(stream = %self.control.stream(), error = format!("{e:#}"), "giving up acknowledging; the events stay pending and will be recovered")
                }
            }
        }
        let mut ids = self.inflight.ids.lock().unwrap();
        for e in &self.batch {
            ids.remove(&(e.stream.clone(), e.entry_id.clone()));
        }
    }
}
