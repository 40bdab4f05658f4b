//! The BullMQ source: consumes the queues Node.js services already write with `bullmq`, keeping
//! the job lifecycle exactly as BullMQ's own workers keep it, so that BullMQ's tools (Bull Board,
//! `queue.getJobCounts()`) keep telling the truth.
//!
//! The lifecycle is BullMQ's Rust port (`bullmq-official`, the same Lua scripts as the Node.js
//! package): jobs move to `active` with a lock (renewed while they wait), complete only after
//! their rows are committed, are retried with their own `attempts` and `backoff`, land in the
//! failed set with the error after the last attempt, honour `removeOnComplete` /
//! `removeOnFail`, and jobs of a dead host (lock expired) are moved back to wait by the stalled
//! check of any live one.
//!
//! Batching: the port's worker hands over one job per processor call and runs up to
//! `concurrency` of them at once. Each call only routes its job — job name = event type — to the
//! pipeline of every plugin subscribed to that type (`Routes`, one channel per (plugin, event
//! type)) and waits for the outcome; the pipelines gather what is queued into batches for the
//! plugin call and the writer, as for streams. So a job holds its lock until its batch is
//! committed, however slow ClickHouse is.
//!
//! A job run again (a retry, or after its lock expired) first looks up the batch records of
//! exactly-once tables (`ledger`, keyed by the queue and job id): rows an earlier run
//! committed are not written twice. Those records are deleted once BullMQ shows the job completed
//! or removed (`records`); a job failed for good keeps them until it is removed, so that a retry
//! from the failed set does not write its committed rows again.

mod bull;
mod config;
mod jobs;
mod records;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Result;
use bullmq::options::RedisConnectionOptions;
use bullmq::worker::WorkerEvent;
use bullmq::{Job, Worker, WorkerOptions};
use tokio::sync::{mpsc, oneshot};

use self::bull::Finished;
pub use self::bull::refuse_repeatable;
pub use self::config::{BullQueue, BullSection, Library, resolve_queues};
use self::jobs::Records;
pub use self::jobs::{Delivery, JobInbox, JobsIntake};
use self::records::{forget_finished, sweep_records};
use super::{Settlement, SourceEvent};
use crate::contract::wit;
use crate::redis_conn::{RedisConn, RedisOptions};

/// How long a job whose event type no running plugin subscribes to waits before it is looked at
/// again.
const UNROUTED_DELAY: Duration = Duration::from_secs(10);

/// Where one plugin takes an event type's jobs: (plugin name, its pipeline's channel).
pub type Route = (String, mpsc::Sender<Delivery>);

/// The pipelines jobs go to, by event type: one channel per plugin subscribed to it. Kept in
/// step with the running plugins by the deployer.
#[derive(Clone, Default)]
pub struct Routes(Arc<RwLock<HashMap<String, Vec<Route>>>>);

impl Routes {
    /// Replaces every route.
    pub fn set(&self, routes: HashMap<String, Vec<Route>>) {
        *self.0.write().unwrap() = routes;
    }

    /// Every plugin jobs may go to.
    fn plugins(&self) -> Vec<String> {
        let mut p: Vec<String> = self.0.read().unwrap().values().flatten().map(|(p, _)| p.clone()).collect();
        p.sort();
        p.dedup();
        p
    }

    fn get(&self, event_type: &str) -> Vec<Route> {
        self.0.read().unwrap().get(event_type).cloned().unwrap_or_default()
    }
}

/// The event a job carries. The job name is the event type, its id and timestamp are the
/// event's; the data is the payload — or, for jobs the seed's NestJS adapter writes
/// (`queue.add(event, { event, payload })`), its `payload`.
pub fn job_event(job: &Job) -> Result<wit::Event, String> {
    let data = job.data();
    let payload = match data.as_object() {
        Some(o)
            if o.len() == 2
                && o.contains_key("payload")
                && o.get("event").and_then(|e| e.as_str()) == Some(job.name()) =>
        {
            &o["payload"]
        }
        _ => data,
    };
    if payload.is_null() {
        // The port reads data that is not JSON as null.
        return Err("job data is missing, null or not JSON".into());
    }
    if !payload.is_object() {
        return Err(format!("job data is not a JSON object: {}", truncate(&payload.to_string(), 200)));
    }
    let field = |k: &str| payload.get(k).and_then(|v| v.as_str()).map(str::to_string);
    Ok(wit::Event {
        id: job.id().to_string(),
        event_type: job.name().to_string(),
        timestamp_ms: job.timestamp().min(i64::MAX as u64) as i64,
        payload: payload.to_string(),
        source: field("source"),
        tenant: field("tenant"),
        attempt: job.attempts_made().saturating_add(1),
    })
}

fn truncate(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// What this host's processor answered for each job, until the worker reports the job done
/// or failed: whether it expected completion, whether a failure was the last attempt, and the
/// batch records to delete once the job is really finished.
#[derive(Default)]
struct Answers {
    by_job: Mutex<HashMap<String, Answer>>,
    /// Jobs handed back to the queue since start (stops and reloads).
    handed_back: std::sync::atomic::AtomicU64,
    /// When "no plugin subscribes" was last said, per event type (said once per interval).
    unrouted_said: Mutex<HashMap<String, std::time::Instant>>,
}

struct Answer {
    completed: bool,
    records: Vec<Records>,
    at: std::time::Instant,
    /// What to announce on bull's channels once the worker reports the job finished (bull
    /// jobs only).
    bull: Option<Finished>,
}

/// What every job of one queue is handled with.
struct QueueCtx {
    /// The queue's key base, `<prefix>:<name>`.
    stream: Arc<str>,
    routes: Routes,
    answers: Arc<Answers>,
    library: Library,
    conn: RedisConn,
}

/// A running consumer of one queue.
pub struct QueueConsumer {
    queue: BullQueue,
    worker: Arc<Worker>,
    /// Turned true at shutdown, once no pipeline takes jobs any more: jobs still waiting for one
    /// are handed back to the queue (wait), neither failed nor left to stall.
    hand_back: tokio::sync::watch::Sender<bool>,
    answers: Arc<Answers>,
    events: tokio::task::JoinHandle<()>,
    sweeper: tokio::task::JoinHandle<()>,
    /// Wakes the worker on bull's announcements of new jobs (queues bull may write).
    wake: Option<tokio::task::JoinHandle<()>>,
}

impl QueueConsumer {
    /// Starts consuming `queue`, routing its jobs by `routes`.
    pub async fn start(
        queue: BullQueue,
        redis: &RedisOptions,
        routes: Routes,
        ledger: RedisConn,
    ) -> Result<QueueConsumer> {
        let stream: Arc<str> = Arc::from(queue.key().as_str());
        let answers: Arc<Answers> = Default::default();
        let (hand_back, hand_back_rx) = tokio::sync::watch::channel(false);
        let routes_for_sweeper = routes.clone();
        let ctx = Arc::new(QueueCtx {
            stream: stream.clone(),
            routes,
            answers: answers.clone(),
            library: queue.library,
            conn: ledger.clone(),
        });
        let processor = move |job: Job, _cancel| {
            let (ctx, hand_back) = (ctx.clone(), hand_back_rx.clone());
            async move { process(job, ctx, hand_back).await }
        };
        let wake = match queue.library {
            Library::Bullmq => None,
            Library::Bull | Library::Auto => {
                Some(tokio::spawn(bull::wake_on_signals(redis.first_client()?, ledger.clone(), queue.key())))
            }
        };
        let opts = WorkerOptions::new()
            .connection(RedisConnectionOptions::new().url(redis.url_with_password()))
            .prefix(queue.prefix.clone())
            .concurrency(queue.concurrency)
            .lock_duration(queue.lock)
            .stalled_interval(queue.lock)
            .max_stalled_count(queue.max_stalled);
        let worker = Worker::with_options(&queue.name, processor, opts)
            .await
            .map_err(|e| anyhow::anyhow!("cannot start the BullMQ worker of queue {}: {e}", queue.key()))?;
        let worker = Arc::new(worker);
        let events =
            tokio::spawn(watch_events(worker.clone(), stream.clone(), answers.clone(), ledger.clone(), queue.key()));
        let sweep_every = queue.lock.max(Duration::from_secs(5));
        let sweeper = tokio::spawn(sweep_records(routes_for_sweeper, stream, ledger, queue.key(), sweep_every));
        tracing::info!(queue = %queue.key(), library = ?queue.library, concurrency = queue.concurrency, lock_ms = queue.lock.as_millis() as u64, max_stalled = queue.max_stalled, "BullMQ queue consumer started");
        Ok(QueueConsumer { queue, worker, hand_back, answers, events, sweeper, wake })
    }

    /// First step of a stop: fetch no more jobs (those held go on being handled).
    pub fn pause(&self) {
        self.worker.pause();
    }

    /// Last step of a stop, once the pipelines have stopped: jobs still held are handed back to
    /// the queue, and the worker closes (up to `timeout`).
    pub async fn stop(self, timeout: Duration) {
        let _ = self.hand_back.send(true);
        self.sweeper.abort();
        if let Some(w) = &self.wake {
            w.abort();
        }
        if let Err(e) = self.worker.close(timeout.as_millis() as u64).await {
            tracing::warn!(queue = %self.queue.key(), error = %e, "BullMQ worker did not close cleanly");
        }
        // The events of the last completions are still queued: let them be handled.
        let _ = tokio::time::timeout(Duration::from_secs(5), self.events).await;
        let handed_back = self.answers.handed_back.load(std::sync::atomic::Ordering::Relaxed);
        tracing::info!(queue = %self.queue.key(), handed_back, "BullMQ queue consumer stopped (handed_back: jobs given back to the queue unhandled since start, no attempt counted)");
    }
}

/// One job: handed to every subscribed plugin's pipeline; succeeds when all committed its
/// rows. A transient failure of any plugin fails the attempt (BullMQ retries per the job's
/// `attempts` and `backoff`; rows other plugins committed to exactly-once tables are found in
/// their records then); only when every failure is permanent, or on the last attempt, does the
/// job fail for good. A job no plugin could take (none subscribed, a plugin stopping, the host
/// stopping) is handed back without counting an attempt.
async fn process(
    job: Job,
    ctx: Arc<QueueCtx>,
    mut hand_back: tokio::sync::watch::Receiver<bool>,
) -> bullmq::Result<serde_json::Value> {
    use bullmq::Error::{ProcessingError, RateLimited, Unrecoverable};
    let (stream, answers) = (&ctx.stream, &ctx.answers);
    let bull = bull::is_bull(ctx.library, &job);
    if bull {
        if let Err(e) = bull::taken(&mut ctx.conn.clone(), stream, &job).await {
            tracing::warn!(queue = %stream, job_id = job.id(), error = format!("{e:#}"), "cannot remove a taken bull job from bull's priority set");
        }
        if job.opts().repeat.is_some() {
            let reason = bull::REPEAT_REFUSED.to_string();
            tracing::error!(queue = %stream, job_id = job.id(), event_type = job.name(), "job failed for good: {reason}");
            let _ = bull::failed_attempt(&mut ctx.conn.clone(), stream, &job, &reason, false).await;
            let answer = Answer {
                completed: false,
                records: vec![],
                at: std::time::Instant::now(),
                bull: Some(Finished::Failed(reason.clone())),
            };
            answers.by_job.lock().unwrap().insert(job.id().to_string(), answer);
            return Err(Unrecoverable(reason));
        }
    }
    let targets = ctx.routes.get(job.name());
    if targets.is_empty() {
        // Not a failure of the job: no plugin for its type runs (yet, or any more). It waits in
        // the delayed set, no attempt counted, and comes back until one does.
        let due = chrono::Utc::now().timestamp_millis() as u64 + UNROUTED_DELAY.as_millis() as u64;
        let say = {
            let mut said = answers.unrouted_said.lock().unwrap();
            let due = said.get(job.name()).is_none_or(|t| t.elapsed() >= UNROUTED_DELAY);
            if due {
                said.insert(job.name().to_string(), std::time::Instant::now());
            }
            due
        };
        return match job.move_to_delayed(due).await {
            Ok(()) => {
                if say {
                    tracing::warn!(queue = %stream, job_id = job.id(), event_type = job.name(), "no running plugin subscribes to this event type: its jobs wait in the delayed set and come back every {UNROUTED_DELAY:?} (said once per interval)");
                }
                Err(bullmq::Error::Delayed)
            }
            Err(e) => {
                // Back to wait rather than a failed attempt.
                tracing::warn!(queue = %stream, job_id = job.id(), event_type = job.name(), error = %e, "no running plugin subscribes to this event type, and the job could not be delayed: handed back");
                Err(RateLimited { delay_ms: 0 })
            }
        };
    }
    let event = SourceEvent {
        stream: stream.clone(),
        entry_id: job.id().to_string(),
        // Started before (a retry, a stall, a hand-back): its rows may be recorded already.
        deliveries: job.attempts_started().max(1) as u64,
        fields: Vec::new(),
        parsed: job_event(&job),
        written: Vec::new(),
        chunk_refs: Vec::new(),
    };
    let mut waiting = Vec::with_capacity(targets.len());
    let mut untaken = Vec::new();
    for (plugin, tx) in targets {
        let (reply, rx) = oneshot::channel();
        let sent = Arc::new(std::sync::atomic::AtomicBool::new(false));
        tokio::select! {
            r = tx.send(Delivery { event: event.clone(), reply, sent: sent.clone() }) => match r {
                Ok(()) => waiting.push((plugin, rx, sent)),
                Err(_) => untaken.push(plugin),
            },
            _ = handed_back(&mut hand_back) => untaken.push(plugin),
        }
    }
    let (mut permanent, mut transient, mut records) = (Vec::new(), Vec::new(), Vec::new());
    for (plugin, mut rx, sent) in waiting {
        let outcome = tokio::select! {
            o = &mut rx => o.ok(),
            // At shutdown: a job whose rows never reached the writer can go back to the queue.
            // One whose rows did may still be committed: it waits for its outcome (or, if the
            // worker closes first, stalls and is recovered once this host is gone).
            _ = handed_back(&mut hand_back) => match rx.try_recv() {
                Ok(o) => Some(o),
                Err(_) if sent.load(std::sync::atomic::Ordering::SeqCst) => rx.await.ok(),
                Err(_) => None,
            },
        };
        match outcome {
            Some(o) => {
                records.extend(o.records);
                match o.settlement {
                    Settlement::Ack => {}
                    Settlement::DeadLetter { kind, error } => permanent.push(format!("{plugin}: {kind}: {error}")),
                    Settlement::Retry(reason) => transient.push(format!("{plugin}: {reason}")),
                }
            }
            None => untaken.push(plugin),
        }
    }
    let attempts = job.opts().attempts.unwrap_or(1).max(1);
    let last_attempt = job.attempts_made() + 1 >= attempts;
    let result = if transient.is_empty() && !permanent.is_empty() || last_attempt && !permanent.is_empty() {
        permanent.extend(transient);
        Err(Unrecoverable(permanent.join("; ")))
    } else if !transient.is_empty() || !permanent.is_empty() {
        transient.extend(permanent);
        Err(ProcessingError(transient.join("; ")))
    } else if !untaken.is_empty() {
        // Back to wait, no attempt counted (the worker's rate-limit path).
        tracing::debug!(queue = %stream, job_id = job.id(), plugins = ?untaken, "job handed back to the queue: its rows never reached a writer (a pipeline stopping)");
        answers.handed_back.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return Err(RateLimited { delay_ms: 0 });
    } else {
        Ok(serde_json::Value::Null)
    };
    let last = matches!(result, Err(Unrecoverable(_))) || result.is_err() && last_attempt;
    let mut announce = None;
    if let Err(e) = &result {
        let (queue, id, attempt) = (&**stream, job.id(), job.attempts_made() + 1);
        let reason = e.to_string();
        if bull {
            // bull's backoff, not BullMQ's: the job is moved to the delayed set here, and its
            // attempt counted with the others (BullMQ's script, skipped, would have).
            let delayed = match bull::backoff_ms(&job).filter(|_| !last) {
                Some(delay_ms) => {
                    let due = chrono::Utc::now().timestamp_millis() as u64 + delay_ms;
                    match job.move_to_delayed(due).await {
                        Ok(()) => Some(delay_ms),
                        Err(e) => {
                            tracing::warn!(queue, job_id = id, error = %e, "cannot delay a failed bull job by bull's backoff: BullMQ's backoff applies");
                            None
                        }
                    }
                }
                None => None,
            };
            if let Err(e) = bull::failed_attempt(&mut ctx.conn.clone(), stream, &job, &reason, delayed.is_some()).await
            {
                tracing::warn!(
                    queue,
                    job_id = id,
                    error = format!("{e:#}"),
                    "cannot count a failed attempt of a bull job"
                );
            }
            if let Some(delay_ms) = delayed {
                tracing::warn!(queue, job_id = id, event_type = job.name(), attempt, delay_ms, error = %e, "job failed; it runs again after bull's backoff");
                return Err(bullmq::Error::Delayed);
            }
            if last {
                announce = Some(Finished::Failed(reason));
            }
        }
        match last {
            true => {
                tracing::error!(queue, job_id = id, event_type = job.name(), attempt, error = %e, "job failed for good: it goes to the queue's failed set")
            }
            false => {
                tracing::warn!(queue, job_id = id, event_type = job.name(), attempt, error = %e, "job failed; it runs again (per its attempts and backoff)")
            }
        }
    } else if bull {
        announce = Some(Finished::Completed);
    }
    // Records are deleted once the job completes; a job failed for good keeps them, so that a
    // retry from the failed set (Bull Board) does not write its committed rows again — they go
    // when the job is removed (`removeOnFail`, by hand), by the sweep.
    answers.by_job.lock().unwrap().insert(
        job.id().to_string(),
        Answer { completed: result.is_ok(), records, at: std::time::Instant::now(), bull: announce },
    );
    result
}

/// Resolves once the host asks for held jobs to be handed back (or the consumer is gone).
async fn handed_back(rx: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|h| *h).await;
}

/// Drains the worker's events (its channel is unbounded): deletes the batch records of jobs
/// that are really finished, says so when BullMQ itself failed a job (a stall limit), and logs
/// the worker's own errors.
async fn watch_events(
    worker: Arc<Worker>,
    stream: Arc<str>,
    answers: Arc<Answers>,
    mut ledger: RedisConn,
    key_base: String,
) {
    let mut closed = false;
    while !closed {
        let Some(first) = worker.next_event().await else { break };
        // Whatever else is queued, handled with the first in one round trip.
        let mut events = vec![first];
        while events.len() < 1000 {
            match tokio::time::timeout(Duration::ZERO, worker.next_event()).await {
                Ok(Some(ev)) => events.push(ev),
                _ => break,
            }
        }
        let mut finished: Vec<(String, Vec<Records>)> = Vec::new();
        let mut announce: Vec<(String, Finished)> = Vec::new();
        for ev in events {
            let (job_id, completed, error) = match ev {
                WorkerEvent::Completed { job_id, .. } => (job_id, true, String::new()),
                WorkerEvent::Failed { job_id, error } => (job_id, false, error),
                WorkerEvent::Error(e) => {
                    tracing::warn!(queue = %stream, error = %e, "BullMQ worker error");
                    continue;
                }
                WorkerEvent::Stalled { job_id } => {
                    tracing::warn!(queue = %stream, job_id, "stalled job (its host stopped renewing the lock) found");
                    continue;
                }
                WorkerEvent::Closed => {
                    closed = true;
                    continue;
                }
                _ => continue,
            };
            let answer = answers.by_job.lock().unwrap().remove(&job_id);
            match answer.as_ref().and_then(|a| a.bull.clone()) {
                Some(f @ Finished::Completed) if completed => announce.push((job_id.clone(), f)),
                Some(f @ Finished::Failed(_)) if !completed => announce.push((job_id.clone(), f)),
                _ => {}
            }
            match answer {
                None if !completed => {
                    tracing::error!(queue = %stream, job_id, error, "BullMQ failed this job without running it (e.g. it stalled more than max_stalled_count times): it is in the failed set")
                }
                None => {}
                Some(a) if a.completed && completed && !a.records.is_empty() => finished.push((job_id, a.records)),
                Some(_) => {}
            }
        }
        // Answers whose event never came (a completion lost to a Redis error, a close timeout):
        // their records, if any, are left to the sweep.
        {
            let mut by_job = answers.by_job.lock().unwrap();
            if by_job.len() > 10_000 {
                by_job.retain(|_, a| a.at.elapsed() < Duration::from_secs(600));
            }
        }
        if !announce.is_empty()
            && let Err(e) = bull::publish_finished(&mut ledger, &stream, &announce).await
        {
            tracing::warn!(queue = %stream, jobs = announce.len(), error = format!("{e:#}"), "cannot announce finished bull jobs on bull's channels");
        }
        if finished.is_empty() {
            continue;
        }
        if let Err(e) = forget_finished(&mut ledger, &stream, &key_base, &finished).await {
            // Harmless: a finished job is not run again (unless its id is reused).
            tracing::warn!(queue = %stream, jobs = finished.len(), error = format!("{e:#}"), "cannot delete the batch records of finished jobs");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_events() {
        let job = |name: &str, data: &str| {
            let f = [("name", name), ("data", data), ("timestamp", "1717245000123"), ("atm", "1")];
            Job::from_redis_hash("17", &f.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()).unwrap()
        };
        let e = job_event(&job("PromoCodeAppliedEvent", r#"{"promo_code":"A","source":"shop"}"#)).unwrap();
        assert_eq!((e.timestamp_ms, e.attempt), (1_717_245_000_123, 2));
        assert_eq!(
            (e.id.as_str(), e.event_type.as_str(), e.source.as_deref()),
            ("17", "PromoCodeAppliedEvent", Some("shop"))
        );
        assert_eq!(e.payload, r#"{"promo_code":"A","source":"shop"}"#);
        // The seed's NestJS adapter: { event, payload }.
        let e = job_event(&job("order.created", r#"{"event":"order.created","payload":{"orderId":"o"}}"#)).unwrap();
        assert_eq!(e.payload, r#"{"orderId":"o"}"#);
        assert!(job_event(&job("x", "[1,2]")).unwrap_err().contains("not a JSON object"));
        assert!(job_event(&job("x", "{not json")).unwrap_err().contains("not JSON"));
        // Two fields, one `event` = the name, but no `payload`: a plain payload, not an envelope.
        let e = job_event(&job("user.signup", r#"{"event":"user.signup","userId":"u"}"#)).unwrap();
        assert_eq!(e.payload, r#"{"event":"user.signup","userId":"u"}"#);
    }
}
