//! BullMQ jobs as a pipeline's intake: the queue consumers route each job to the inbox of every
//! (plugin, event type) subscribed to it; the pipeline takes what is queued as one batch, and
//! each job's settlement goes back to the queue consumer waiting for it, which completes the job
//! or fails it (for a retry, or for good).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Result;
use tokio::sync::{OwnedMutexGuard, mpsc, oneshot};

use crate::source::{Batch, Intake, Settle, Settled, Settlement, SourceEvent, Subscriber};

/// How long a batch waits for more jobs to join once it has one.
const JOB_LINGER: Duration = Duration::from_millis(5);

/// What became of a job in one plugin's pipeline.
#[derive(Debug)]
pub struct JobOutcome {
    pub settlement: Settlement,
    /// The plugin's exactly-once batch records of this job, to delete once the job is finished.
    pub records: Option<Records>,
}

/// Batch-record fields of a job: `(group, tables)`.
#[derive(Debug, Clone)]
pub struct Records {
    pub group: Arc<str>,
    pub tables: Arc<[String]>,
}

/// A job on its way to one plugin's pipeline.
pub struct Delivery {
    pub event: SourceEvent,
    pub reply: oneshot::Sender<JobOutcome>,
    /// Set by the pipeline once the job's rows are handed to the writer: from then on the job
    /// is never handed back (its rows may yet be committed); at worst it stalls.
    pub sent: Arc<AtomicBool>,
}

/// The jobs of one (plugin, event type) from every BullMQ queue, shared by the plugin's
/// versions: one version at a time holds it (a new one waits until the old one stopped).
pub type JobInbox = Arc<tokio::sync::Mutex<mpsc::Receiver<Delivery>>>;

/// A pipeline's intake of BullMQ jobs.
pub struct JobsIntake {
    inbox: JobInbox,
    /// The inbox, once this version holds it.
    rx: Option<OwnedMutexGuard<mpsc::Receiver<Delivery>>>,
    who: Subscriber,
    source: Arc<str>,
}

impl JobsIntake {
    pub fn new(inbox: JobInbox, who: Subscriber) -> Self {
        JobsIntake { inbox, rx: None, who, source: Arc::from("bullmq") }
    }
}

impl Intake for JobsIntake {
    type Settle = JobsSettle;
    const CHUNKED_LEDGER: bool = false;
    const JOB_IDS: bool = true;
    const OWN_RETRY_POLICY: bool = true;
    const DEAD_LETTERS: &'static str = "BullMQ's failed set";

    fn source(&self) -> &Arc<str> {
        &self.source
    }

    /// Waits for the previous version of the plugin to let the inbox go.
    async fn start(&mut self) -> Result<()> {
        self.rx = Some(self.inbox.clone().lock_owned().await);
        Ok(())
    }

    /// Whatever jobs are queued, up to `max`, waiting [`JOB_LINGER`] for more once one came.
    /// Retries, backoff and stalled jobs are BullMQ's: every job's batch records are looked up
    /// (exactly-once tables), not only those of jobs started before — a job retried by hand
    /// from the failed set may have its counters reset, and its records are kept for that.
    async fn next(&mut self, max: usize) -> Result<Option<Batch<JobsSettle>>> {
        let rx = self.rx.as_mut().expect("started");
        let mut got: Vec<Delivery> = Vec::with_capacity(max);
        if rx.recv_many(&mut got, max).await == 0 {
            return Ok(None);
        }
        let until = tokio::time::Instant::now() + JOB_LINGER;
        while got.len() < max {
            let room = max - got.len();
            match tokio::time::timeout_at(until, rx.recv_many(&mut got, room)).await {
                Ok(n) if n > 0 => {}
                _ => break,
            }
        }
        let started_before = got.iter().filter(|d| d.event.deliveries > 1).count();
        if started_before > 0 {
            tracing::info!(plugin = %self.who.plugin, event_type = %self.who.event_type, jobs = started_before, "jobs started before (a retry, a stall, a hand-back): checking their batch records");
        }
        let records = (!self.who.ledger_tables.is_empty())
            .then(|| Records { group: self.who.group.clone(), tables: self.who.ledger_tables.clone() });
        let (events, replies) = got.into_iter().map(|d| (d.event, (d.reply, d.sent))).unzip();
        Ok(Some(Batch { events, maybe_written: true, settle: JobsSettle { replies, records } }))
    }
}

/// Where each job of a batch reports its outcome. Dropped unsettled (a stop before its rows
/// reached the writer), its jobs are handed back to their queue.
pub struct JobsSettle {
    replies: Vec<(oneshot::Sender<JobOutcome>, Arc<AtomicBool>)>,
    records: Option<Records>,
}

impl Settle for JobsSettle {
    fn rows_handed_over(&self) {
        for (_, sent) in &self.replies {
            sent.store(true, Ordering::SeqCst);
        }
    }

    async fn settle(self, s: Settled) {
        for (settlement, (reply, _)) in s.settlements.into_iter().zip(self.replies) {
            let _ = reply.send(JobOutcome { settlement, records: self.records.clone() });
        }
    }
}
