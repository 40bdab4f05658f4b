//! The delivery core: one pipeline per (plugin, event type) and source. Every event takes the
//! same four steps, whichever source it came from:
//!
//! 1. **read** — the source's [`Intake`] hands over a batch with its [`Settle`];
//! 2. **call** — events delivered before are looked up in the ledger first (`recover`), then the
//!    plugin runs the batch in its sandbox, behind the call gate (`gate`), while Redis says which
//!    events repeat one already seen (`dedup`: their rows and failures are dropped);
//! 3. **write** — the rows go to the writer's table channels, all of a batch's or none;
//! 4. **settle** — once the writer says what was committed, [`decide`] gives each event its
//!    [`Settlement`], and the source carries them out (XACK / dead letter, or the job's outcome).
//!
//! Backpressure: a pipeline holds at most `max_inflight_events` events between read and
//! settlement; it stops reading while they wait for ClickHouse. Steps 2–3 run in the pipeline's
//! task for up to `CALLS_PER_PIPELINE` batches at once, while step 1 reads the next batch; step
//! 4 runs in a task per batch, so reading goes on while the writer lingers.
//!
//! A stop: no more reads; in-flight batches get up to the grace period to settle. A batch
//! whose rows could not reach the writer by then (ClickHouse down, its channel full) is dropped
//! unsettled: its source delivers it again later.

pub mod decide;
mod dedup;
pub mod gate;
mod recover;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};

use self::decide::{Attempts, Outcome, decide};
use self::gate::PriorityGate;
use crate::backoff::Backoff;
use crate::contract::wit;
use crate::plugin::{LoadedPlugin, Sandbox};
use crate::policy::DeliveryPolicy;
use crate::redis_conn::RedisConn;
use crate::rollout::RolloutSlot;
use crate::schema::entry_hash;
use crate::source::{Batch, Intake, Recorded, Settle, Settled, Settlement, SourceEvent, Subscriber};
use crate::writer::{ChunkOrigin, CommitResult, RowChunk, Writer};

/// What a pipeline needs besides its intake: the plugin and its policy, the gate, the writer.
pub struct Stage {
    pub plugin: Arc<LoadedPlugin>,
    pub who: Subscriber,
    pub policy: DeliveryPolicy,
    pub gate: PriorityGate,
    pub writer: Writer,
    /// The writer's channel for each of the plugin's tables, in declaration order.
    pub tables: Vec<mpsc::Sender<RowChunk>>,
    /// The host's shared Redis connection, for ledger lookups.
    pub control: RedisConn,
    /// The plugin's canary, when one runs: it takes its share of each batch (see `rollout`).
    pub rollout: RolloutSlot,
}

/// One (plugin, event type) pipeline over one source.
pub struct Pipeline<I: Intake> {
    stage: Stage,
    intake: I,
}

/// A batch between the plugin call and its settlement.
struct Handled<S> {
    events: Vec<SourceEvent>,
    settle: S,
    /// Per event: its settlement if already decided (invalid, failed), else `None` (its rows
    /// decide).
    decided: Vec<Option<Settlement>>,
    /// Per table written: its name, the events (by index) whose rows it holds, and its
    /// commit notice.
    commits: Vec<(String, Vec<usize>, oneshot::Receiver<CommitResult>)>,
    chunk: Option<Arc<str>>,
    calls: u32,
    handled_in: Duration,
    /// For the trace (`trace`): when the batch was read (ms since the epoch), how many rows each
    /// event listed in `commits` has there (same order), and per event the plugin version that
    /// ran it when not the stage's (a canary; empty: the stage's ran them all).
    read_at: i64,
    rows: Vec<Vec<u32>>,
    versions: Vec<Arc<LoadedPlugin>>,
}

impl<I: Intake> Pipeline<I> {
    pub fn new(stage: Stage, intake: I) -> Self {
        Pipeline { stage, intake }
    }

    /// Whose events it reads, and from where (for logs).
    pub fn describe(&self) -> (Subscriber, Arc<str>) {
        (self.stage.who.clone(), self.intake.source().clone())
    }

    /// Runs until `shutdown` turns true, then waits (up to the grace period) for in-flight
    /// batches to settle.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
        let policy = self.stage.policy.clone();
        let source = self.intake.source().clone();
        tokio::select! {
            r = self.intake.start() => r?,
            _ = shutdown.wait_for(|&stop| stop) => return Ok(()),
        }
        let who = &self.stage.who;
        tracing::info!(plugin = %who.plugin, version = self.stage.plugin.short_hash(), source = %source, event_type = %who.event_type, group = %who.group, priority = %policy.priority, "pipeline started");
        // How `/ready` names this pipeline when it cannot read.
        let name = who.pipeline_name(&source);
        let permits = Arc::new(Semaphore::new(policy.max_inflight_events));
        // One sandbox per call that may run at once; the gate decides how many actually do.
        let mut idle: Vec<Sandbox> = (0..CALLS_PER_PIPELINE).map(|_| Sandbox::new(self.stage.plugin.clone())).collect();
        let mut backoff = Backoff::brief();
        let stage = &self.stage;
        let (grace, batch_size) = (policy.stop_grace, policy.batch_size);
        // Steps 2-3 for one batch; its settlement starts the moment it is handled. None when a
        // stop's grace period ran out first (the batch is then delivered again later).
        let call = |sb: Sandbox, batch: Batch<I::Settle>, held: OwnedSemaphorePermit| {
            let mut stopping = shutdown.clone();
            async move {
                let stop_waiting = async {
                    let _ = stopping.wait_for(|&stop| stop).await;
                    tokio::time::sleep(grace).await;
                };
                let handled = tokio::select! {
                    r = stage.handle::<I>(sb, batch) => r,
                    _ = stop_waiting => return None,
                };
                Some(match handled {
                    Ok((sb, handled)) => {
                        tokio::spawn(stage.settle_when_committed::<I>(handled, held));
                        (sb, false)
                    }
                    Err((sb, unhandled)) => {
                        tokio::spawn(unhandled);
                        (sb, true)
                    }
                })
            }
        };
        let mut calls = futures::stream::FuturesUnordered::new();
        // A batch read and waiting for a sandbox; the read under way, which holds the intake
        // and gives it back (step 1 runs while the calls do: the plugin's CPU and Redis' round
        // trips overlap instead of taking turns).
        let mut waiting: Option<(OwnedSemaphorePermit, Batch<I::Settle>)> = None;
        type Reading<'a, I> = std::pin::Pin<Box<dyn Future<Output = (&'a mut I, Option<ReadAhead<I>>)> + Send + 'a>>;
        let mut reading: Option<Reading<'_, I>> = None;
        let mut intake: Option<&mut I> = Some(&mut self.intake);
        // The next read waits this long first: after a failed read, or a batch left unhandled.
        let mut pause: Option<Duration> = None;
        // Wakes the loop when the stop comes, to stop reading.
        let mut stop_comes = shutdown.clone();
        loop {
            let stopping = *shutdown.borrow();
            // A batch read is handled even if the stop came meanwhile: nothing read is left
            // unsettled by a graceful stop.
            if waiting.is_some()
                && let Some(sb) = idle.pop()
            {
                let (held, batch) = waiting.take().expect("checked");
                calls.push(call(sb, batch, held));
            }
            if reading.is_none() && waiting.is_none() && !stopping {
                let intake = intake.take().expect("one read at a time");
                let (permits, mut stop, delay) = (permits.clone(), shutdown.clone(), pause.take());
                reading = Some(Box::pin(async move {
                    if let Some(delay) = delay {
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => {}
                            _ = stop.wait_for(|&stop| stop) => return (intake, None),
                        }
                    }
                    let read = read_ahead(&mut *intake, &permits, batch_size, stop).await;
                    (intake, read)
                }));
            }
            if reading.is_none() && waiting.is_none() && calls.is_empty() {
                break;
            }
            tokio::select! {
                (back, read) = async { reading.as_mut().expect("checked").await }, if reading.is_some() => {
                    reading = None;
                    intake = Some(back);
                    match read {
                        None => {}
                        Some((_, Ok(None))) => break,
                        Some((held, Ok(Some(batch)))) => {
                            crate::status::progressing(&name);
                            backoff.reset();
                            waiting = Some((held, batch));
                        }
                        Some((_, Err(e))) => {
                            let delay = backoff.next_delay();
                            let error = format!("{e:#}");
                            tracing::error!(source = %source, error = %error, "cannot read from Redis; retrying in {delay:?}");
                            crate::status::stalled(&name, &format!("{error} (next try in {delay:?})"));
                            pause = Some(delay);
                        }
                    }
                }
                Some(called) = futures::StreamExt::next(&mut calls), if !calls.is_empty() => {
                    let Some((sb, failed)) = called else { break };
                    idle.push(sb);
                    if failed {
                        pause = Some(backoff.next_delay());
                    }
                }
                _ = stop_comes.wait_for(|&stop| stop), if !stopping => {}
            }
        }
        // Both borrow the intake and the stage, which the graceful stop below uses.
        drop(calls);
        drop(reading);
        // Graceful stop: wait for every in-flight batch to settle (or be left for redelivery).
        // The intake lives on meanwhile (its heartbeats keep the events from looking abandoned).
        let all = policy.max_inflight_events as u32;
        let who = &self.stage.who;
        match tokio::time::timeout(policy.stop_grace, permits.acquire_many(all)).await {
            Ok(_) => {
                tracing::info!(source = %source, event_type = %who.event_type, plugin = %who.plugin, "pipeline stopped; in-flight events finished")
            }
            Err(_) => {
                tracing::warn!(source = %source, event_type = %who.event_type, plugin = %who.plugin, "pipeline stopped after the grace period; unfinished events stay pending and will be recovered")
            }
        }
        drop(self.intake);
        crate::status::progressing(&name);
        Ok(())
    }
}

/// Plugin calls one pipeline may have under way at once, each on its own instance of the plugin
/// and its own batch: an interpreted plugin (Python, JavaScript) takes most of a core per call,
/// and a second call keeps the other core busy. The gate (`gate`) still decides how many calls
/// run at once in the whole host: one per core.
const CALLS_PER_PIPELINE: usize = 2;

/// A batch read (or the error reading it), with its room among the in-flight events.
type ReadAhead<I> = (OwnedSemaphorePermit, anyhow::Result<Option<Batch<<I as Intake>::Settle>>>);

/// Step 1: room for a batch among the in-flight events, then the batch; None when the host
/// stops first. The permit travels with the batch to its settlement.
async fn read_ahead<I: Intake>(
    intake: &mut I,
    permits: &Arc<Semaphore>,
    batch_size: usize,
    mut shutdown: watch::Receiver<bool>,
) -> Option<ReadAhead<I>> {
    let held = tokio::select! {
        biased;
        _ = shutdown.wait_for(|&stop| stop) => return None,
        p = permits.clone().acquire_many_owned(batch_size as u32) => p.expect("never closed"),
    };
    tokio::select! {
        biased;
        _ = shutdown.wait_for(|&stop| stop) => None,
        b = intake.next(batch_size) => Some((held, b)),
    }
}

/// A batch that could not be handled (its earlier rows could not be looked up): the future
/// settling every event for a retry.
type Unhandled = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

impl Stage {
    /// Steps 2 and 3: recovery, the plugin call, the rows to the writer.
    async fn handle<I: Intake>(
        &self,
        sandbox: Sandbox,
        mut batch: Batch<I::Settle>,
    ) -> Result<(Sandbox, Handled<I::Settle>), (Sandbox, Unhandled)> {
        let chunked = I::CHUNKED_LEDGER;
        let read_at = crate::trace::now_ms();
        // Without knowing what an earlier delivery wrote, the events must not run now.
        if batch.maybe_written
            && let Err(e) = self.find_written(&mut batch.events, chunked).await
        {
            return Err((sandbox, self.retry_all::<I>(batch, format!("cannot look up earlier batch records: {e:#}"))));
        }
        let plugin = self.plugin.clone();
        metrics::counter!("sluice_events_read_total", "plugin" => plugin.name().to_string(), "event_type" => self.who.event_type.to_string())
            .increment(batch.events.len() as u64);
        // The events the plugin gets, and where each came from in the batch.
        let mut calls: Vec<wit::Event> = Vec::with_capacity(batch.events.len());
        let mut origin: Vec<usize> = Vec::with_capacity(batch.events.len());
        // The entry column's value per event given to the plugin (tables that have one).
        let with_entries = plugin.tables.iter().any(|t| t.entry_column);
        let mut entries: Vec<u64> = Vec::new();
        let mut decided: Vec<Option<Settlement>> = vec![None; batch.events.len()];
        for (i, e) in batch.events.iter().enumerate() {
            let attempts = self.attempts(e, I::OWN_RETRY_POLICY);
            let admitted = match &e.parsed {
                Err(why) => decide(Outcome::Invalid(why), attempts),
                Ok(_) => decide(Outcome::Delivered, attempts),
            };
            match (admitted, &e.parsed) {
                (Some(s), _) => decided[i] = Some(s),
                (None, Ok(ev)) => {
                    calls.push(ev.clone());
                    origin.push(i);
                    if with_entries {
                        entries.push(entry_hash(&self.who.group, &e.stream, &e.entry_id));
                    }
                }
                (None, Err(_)) => unreachable!("an invalid event is always decided"),
            }
        }
        let rollout = self.rollout.current().filter(|r| r.splits(&self.who.event_type));
        let slot = self.gate.acquire(self.policy.priority, plugin.name()).await;
        let started = Instant::now();
        let call = crate::plugin::off_reactor(async move {
            let mut sandbox = sandbox;
            let (outcome, candidate) = match rollout {
                Some(r) => {
                    let (outcome, by_candidate) = r.run(&mut sandbox, &calls, &entries).await;
                    (outcome, Some((r.candidate.clone(), by_candidate)))
                }
                None => (sandbox.run(&calls, &entries).await, None),
            };
            (sandbox, (outcome, candidate))
        });
        // Which events repeat one already seen is asked of Redis while the plugin runs (the
        // round trip is hidden behind the call); a repeat's rows and failures are then dropped.
        let claim = async {
            match &self.policy.idempotency {
                Some(p) => {
                    dedup::duplicates(&mut self.control.clone(), p, &self.who.group, &batch.events, I::JOB_IDS).await
                }
                None => Ok(Vec::new()),
            }
        };
        let ((sandbox, (outcome, candidate)), duplicate) = tokio::join!(call, claim);
        // Which version handled each event, for the trace: a canary's events are the
        // candidate's, the others the stage's.
        let versions: Vec<Arc<LoadedPlugin>> = match candidate {
            Some((candidate, by_candidate)) => {
                let mut v = vec![plugin.clone(); batch.events.len()];
                for c in by_candidate {
                    v[origin[c as usize]] = candidate.clone();
                }
                v
            }
            None => Vec::new(),
        };
        let handled_in = started.elapsed();
        drop(slot);
        let duplicate = match duplicate {
            Ok(d) => d,
            Err(e) => {
                let why = format!("cannot check the events' ids against those already seen: {e:#}");
                return Err((sandbox, self.retry_all::<I>(batch, why)));
            }
        };
        let repeated = |i: usize| duplicate.get(i).copied().unwrap_or(false);
        let dropped = duplicate.iter().filter(|d| **d).count();
        if dropped > 0 {
            for (i, d) in decided.iter_mut().enumerate() {
                if repeated(i) {
                    // Acknowledged without effect: its first copy is (or was) handled.
                    *d = Some(Settlement::Ack);
                }
            }
            metrics::counter!("sluice_duplicates_dropped_total", "plugin" => self.who.plugin.to_string(), "event_type" => self.who.event_type.to_string())
                .increment(dropped as u64);
            tracing::debug!(plugin = %self.who.plugin, event_type = %self.who.event_type, events = dropped, "events whose id was already seen dropped");
        }
        metrics::histogram!("sluice_plugin_call_duration_seconds", "plugin" => plugin.name().to_string())
            .record(handled_in.as_secs_f64());
        metrics::histogram!("sluice_batch_size_events", "plugin" => plugin.name().to_string())
            .record(batch.events.len() as f64);
        for f in &outcome.failures {
            let i = origin[f.event as usize];
            if repeated(i) {
                continue;
            }
            let attempts = self.attempts(&batch.events[i], I::OWN_RETRY_POLICY);
            let failed = Outcome::Failed { permanent: f.permanent, message: &f.message };
            decided[i] = decide(failed, attempts);
            if let Some(Settlement::Retry(_)) = &decided[i] {
                let e = &batch.events[i];
                tracing::warn!(stream = %e.stream, entry_id = %e.entry_id, plugin = plugin.name(), attempt = e.deliveries, error = %f.message, "event failed; it will be retried");
            }
        }
        // A batch the ledger indexes as one gets a chunk id (one field per table, see `ledger`).
        let chunk = chunked.then(|| Arc::from(&uuid::Uuid::new_v4().simple().to_string()[..16]));
        let chunk_origin = Arc::new(ChunkOrigin {
            group: self.who.group.clone(),
            version: self.who.version.clone(),
            entries: batch.events.iter().map(|e| (e.stream.clone(), Arc::from(e.entry_id.as_str()))).collect(),
            ack_unit: chunk.clone(),
        });
        let mut commits = Vec::new();
        let mut rows_n = Vec::new();
        let mut chunks = Vec::new();
        for (table, mut rows) in outcome.tables.into_iter().enumerate() {
            // Rows an earlier delivery already committed to this table are dropped, and those of
            // repeated events.
            if dropped > 0 || batch.events.iter().any(|e| e.written.contains(&table)) {
                rows = rows.without(|e| {
                    let i = origin[e as usize];
                    repeated(i) || batch.events[i].written.contains(&table)
                });
            }
            if rows.rows == 0 {
                continue;
            }
            let (done, rx) = oneshot::channel();
            // Events numbered as in the batch, so that a refused row fails its own event.
            let events: Vec<(u32, usize, usize)> =
                rows.events.iter().map(|&(e, end, n)| (origin[e as usize] as u32, end, n)).collect();
            let name = plugin.tables[table].name.clone();
            commits.push((name, events.iter().map(|(e, _, _)| *e as usize).collect(), rx));
            rows_n.push(events.iter().map(|&(_, _, n)| n as u32).collect());
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
        batch.settle.rows_handed_over();
        for (slot, (table, chunk)) in slots.into_iter().zip(chunks) {
            match slot {
                Ok(slot) => slot.send(chunk),
                Err(_) => tracing::error!(table = %plugin.tables[table].name, "writer is gone"),
            }
        }
        tracing::debug!(
            plugin = plugin.name(),
            events = batch.events.len(),
            calls = outcome.calls,
            ms = handled_in.as_millis() as u64,
            "batch handled"
        );
        let handled = Handled {
            events: batch.events,
            settle: batch.settle,
            decided,
            commits,
            chunk,
            calls: outcome.calls,
            handled_in,
            read_at,
            rows: rows_n,
            versions,
        };
        Ok((sandbox, handled))
    }

    /// Every event of a batch that could not be handled is left for a retry, saying why.
    fn retry_all<I: Intake>(&self, batch: Batch<I::Settle>, why: String) -> Unhandled {
        tracing::error!(plugin = %self.who.plugin, event_type = %self.who.event_type, events = batch.events.len(), error = %why, "the events are retried");
        let n = batch.events.len();
        let settlements = vec![Settlement::Retry(why); n];
        crate::trace::record(
            &self.who,
            I::JOB_IDS,
            &self.plugin,
            &[],
            &batch.events,
            &settlements,
            crate::trace::now_ms(),
            Default::default(),
        );
        let settled = Settled { events: batch.events, settlements, chunk: None, recorded: Vec::new() };
        self.count(&settled.settlements);
        Box::pin(batch.settle.settle(settled))
    }

    /// Whose count says when `e` has had enough attempts.
    fn attempts(&self, e: &SourceEvent, own_retry_policy: bool) -> Attempts {
        match own_retry_policy {
            true => Attempts::BySource,
            false => Attempts::Counted { delivery: e.deliveries, max: self.policy.max_attempts },
        }
    }

    /// Step 4, in a task of its own: waits for the batch's rows to be committed, decides each
    /// event's settlement, and hands them to the source. Holds the batch's in-flight permits
    /// until then.
    fn settle_when_committed<I: Intake>(
        &self,
        h: Handled<I::Settle>,
        held: OwnedSemaphorePermit,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let (plugin, who, max_attempts) = (self.plugin.clone(), self.who.clone(), self.policy.max_attempts);
        // One span per batch: plugin, event type, size, plugin calls, and (once settled) how
        // many events were acknowledged, left for retry and dead-lettered.
        let span = tracing::info_span!(
            "batch",
            plugin = %who.plugin,
            version = plugin.short_hash(),
            event_type = %who.event_type,
            events = h.events.len(),
            calls = h.calls,
            handled_ms = h.handled_in.as_millis() as u64,
            acked = tracing::field::Empty,
            retried = tracing::field::Empty,
            dead_lettered = tracing::field::Empty,
        );
        let task = async move {
            let _held = held;
            let traced_rows =
                crate::trace::BatchRows::of(h.commits.iter().map(|(t, e, _)| (t.as_str(), e.as_slice())), &h.rows);
            // Events (by index) whose rows were not committed, and why.
            let mut not_committed: Vec<Option<Arc<str>>> = vec![None; h.events.len()];
            let mut recorded = Vec::new();
            for (table, events, rx) in h.commits {
                match rx.await {
                    Ok(Ok(c)) => recorded.extend(c.batch.map(|batch| Recorded { table, batch, events })),
                    Ok(Err(f)) => {
                        for &e in &f.events {
                            not_committed[e as usize] = Some(f.error.clone());
                        }
                        recorded.extend(f.batch.map(|batch| Recorded { table, batch, events }));
                    }
                    Err(_) => {
                        let e: Arc<str> = Arc::from("the writer stopped before committing");
                        not_committed.iter_mut().for_each(|n| *n = Some(e.clone()));
                    }
                }
            }
            let own = I::OWN_RETRY_POLICY;
            let mut first_commit_error = None;
            let settlements: Vec<Settlement> = h
                .decided
                .into_iter()
                .zip(&h.events)
                .zip(&not_committed)
                .map(|((decided, e), not_committed)| {
                    decided.unwrap_or_else(|| {
                        let attempts = match own {
                            true => Attempts::BySource,
                            false => Attempts::Counted { delivery: e.deliveries, max: max_attempts },
                        };
                        let outcome = match not_committed {
                            Some(why) => {
                                first_commit_error = first_commit_error.clone().or(Some(why.clone()));
                                Outcome::NotCommitted(why)
                            }
                            None => Outcome::Committed,
                        };
                        decide(outcome, attempts).expect("rows always decide")
                    })
                })
                .collect();
            let retried = settlements.iter().filter(|s| matches!(s, Settlement::Retry(_))).count();
            if let Some(e) = first_commit_error {
                tracing::error!(plugin = %who.plugin, event_type = %who.event_type, events = retried, error = %e, "rows not committed; the events will be retried");
            }
            for (e, s) in h.events.iter().zip(&settlements) {
                if let Settlement::DeadLetter { kind, error } = s {
                    tracing::error!(stream = %e.stream, entry_id = %e.entry_id, plugin = %who.plugin, kind = %kind, error = %error, "event dead-lettered to {}", I::DEAD_LETTERS);
                }
            }
            count(&who, &settlements);
            crate::trace::record(
                &who,
                I::JOB_IDS,
                &plugin,
                &h.versions,
                &h.events,
                &settlements,
                h.read_at,
                traced_rows,
            );
            h.settle.settle(Settled { events: h.events, settlements, chunk: h.chunk, recorded }).await;
        };
        tracing::Instrument::instrument(task, span)
    }

    fn count(&self, settlements: &[Settlement]) {
        count(&self.who, settlements)
    }
}

/// The delivery metrics and the dashboard's recent errors, the same for every source.
fn count(who: &Subscriber, settlements: &[Settlement]) {
    let labels = [("plugin", who.plugin.to_string()), ("event_type", who.event_type.to_string())];
    let (mut acked, mut retried, mut dead) = (0u64, 0u64, 0u64);
    for s in settlements {
        match s {
            Settlement::Ack => acked += 1,
            Settlement::Retry(_) => retried += 1,
            Settlement::DeadLetter { kind, error } => {
                dead += 1;
                let mut l = labels.to_vec();
                l.push(("kind", kind.to_string()));
                metrics::counter!("sluice_events_dead_lettered_total", &l).increment(1);
                crate::status::recent_error(&who.plugin, &who.event_type, kind.name(), error);
            }
        }
    }
    metrics::counter!("sluice_events_handled_total", &labels).increment(acked);
    metrics::counter!("sluice_events_retried_total", &labels).increment(retried);
    let span = tracing::Span::current();
    span.record("acked", acked);
    span.record("retried", retried);
    span.record("dead_lettered", dead);
}
