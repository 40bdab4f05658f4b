//! What the host says about itself: the plugin files and pipelines the deployer keeps current,
//! their statuses, and the recent errors — written by the stages, read by the admin server.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use serde::Serialize;

/// What became of a plugin file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PluginStatus {
    /// A version of it runs.
    Running,
    /// Its tables are incompatible with the live ones (or not its own).
    Refused,
    /// It cannot be loaded (not a component, bad manifest, its name taken, describe failed...).
    Failed,
    /// A candidate version running on a share of its plugin's events (see `rollout`).
    Canary,
    /// A candidate rolled back: it fails more than the running version.
    RolledBack,
    /// A version a promoted candidate replaced.
    Superseded,
}

impl PluginStatus {
    pub const ALL: [PluginStatus; 6] = [
        PluginStatus::Running,
        PluginStatus::Refused,
        PluginStatus::Failed,
        PluginStatus::Canary,
        PluginStatus::RolledBack,
        PluginStatus::Superseded,
    ];

    pub fn name(self) -> &'static str {
        match self {
            PluginStatus::Running => "running",
            PluginStatus::Refused => "refused",
            PluginStatus::Failed => "failed",
            PluginStatus::Canary => "canary",
            PluginStatus::RolledBack => "rolled_back",
            PluginStatus::Superseded => "superseded",
        }
    }

    /// The file is where the operator meant it to be: a rollout's verdicts are decisions, not
    /// deployment errors, and do not make the host unready.
    pub fn is_settled(self) -> bool {
        !matches!(self, PluginStatus::Refused | PluginStatus::Failed)
    }
}

impl std::fmt::Display for PluginStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A plugin file as the host found it.
#[derive(Clone)]
pub struct PluginEntry {
    pub file: String,
    pub status: PluginStatus,
    pub error: Option<String>,
    /// The version running from it, if any.
    pub plugin: Option<Arc<PluginSummary>>,
}

/// What the admin API shows of a running plugin version.
#[derive(Debug)]
pub struct PluginSummary {
    pub name: String,
    pub version: String,
    pub hash: String,
    pub subscriptions: Vec<String>,
    /// Each table, with its guarantee (`exactly_once_replicated`, `exactly_once_token` or
    /// `at_least_once`; see `writer::dedup`).
    pub tables: Vec<(String, &'static str)>,
    pub call_timeout_ms: u64,
    pub max_memory_bytes: usize,
    pub max_rows_per_event: u32,
    pub max_bytes_per_event: usize,
    /// Linear memory of its latest instance, kept current by the sandbox.
    pub memory: Arc<AtomicUsize>,
}

impl PluginSummary {
    pub fn memory_bytes(&self) -> usize {
        self.memory.load(Ordering::Relaxed)
    }
}

/// One (plugin, event type) pipeline, for the stream views.
#[derive(Clone)]
pub struct PipelineEntry {
    pub plugin: String,
    pub event_type: String,
    pub stream: String,
    pub group: String,
}

/// The plugin files and pipelines, kept current by the deployer (hot reload).
#[derive(Default)]
pub struct Registry {
    /// By file path.
    pub plugins: BTreeMap<String, PluginEntry>,
    pub pipelines: Vec<PipelineEntry>,
    /// The host is still starting (loading the plugins directory): not ready yet.
    pub starting: bool,
    /// Retention of each stream the housekeeping trims (see `upkeep`), by stream.
    pub retention: BTreeMap<String, StreamRetention>,
    /// Streams under the event prefix that no running plugin reads.
    pub unsubscribed: Vec<Unsubscribed>,
    /// Canary rollouts running and finished (see `rollout`).
    pub rollouts: Rollouts,
}

/// What the housekeeping did to a stream.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StreamRetention {
    /// The policy, in words.
    pub retention: String,
    /// Entries trimmed by this host since it started.
    pub trimmed_total: u64,
    /// Why the stream keeps more than its retention: the consumer group that has not finished.
    pub held_back_by: Option<String>,
}

/// A stream nobody here reads.
#[derive(Debug, Clone, Serialize)]
pub struct Unsubscribed {
    pub stream: String,
    pub event_type: String,
    pub length: u64,
}

/// The registry, shared.
pub type SharedRegistry = Arc<RwLock<Registry>>;

/// One line of the dashboard's "recent errors".
#[derive(Clone, Serialize)]
pub struct RecentError {
    pub at: String,
    pub plugin: String,
    pub event_type: String,
    pub kind: String,
    pub message: String,
}

static RECENT: Mutex<VecDeque<RecentError>> = Mutex::new(VecDeque::new());
const RECENT_MAX: usize = 100;

/// Remembers an error for the dashboard (the last 100).
pub fn recent_error(plugin: &str, event_type: &str, kind: &str, message: &str) {
    let mut r = RECENT.lock().unwrap();
    if r.len() == RECENT_MAX {
        r.pop_front();
    }
    r.push_back(RecentError {
        at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        plugin: plugin.to_string(),
        event_type: event_type.to_string(),
        kind: kind.to_string(),
        message: message.chars().take(1000).collect(),
    });
}

/// The recent errors, newest first.
pub fn recent_errors() -> Vec<RecentError> {
    RECENT.lock().unwrap().iter().rev().cloned().collect()
}

/// A pipeline that cannot make progress: why, and since when.
#[derive(Clone, Serialize)]
pub struct Stall {
    pub pipeline: String,
    pub error: String,
    /// Failed reads in a row.
    pub attempts: u64,
    #[serde(skip)]
    pub since: std::time::Instant,
}

static STALLS: Mutex<BTreeMap<String, Stall>> = Mutex::new(BTreeMap::new());

/// A pipeline's read failed (`pipeline` names it: plugin, event type, source): it is stalled
/// until [`progressing`]. `/ready` is false meanwhile, naming it.
pub fn stalled(pipeline: &str, error: &str) {
    let mut s = STALLS.lock().unwrap();
    ANY_STALLED.store(true, Ordering::Relaxed);
    let entry = s.entry(pipeline.to_string()).or_insert_with(|| Stall {
        pipeline: pipeline.to_string(),
        error: String::new(),
        attempts: 0,
        since: std::time::Instant::now(),
    });
    entry.error = error.chars().take(1000).collect();
    entry.attempts += 1;
}

/// Whether [`STALLS`] may hold anything: every read of every pipeline says it progressed, and
/// almost always nothing is stalled — that case takes no lock.
static ANY_STALLED: AtomicBool = AtomicBool::new(false);

/// A pipeline read again (or stopped): no longer stalled.
pub fn progressing(pipeline: &str) {
    if !ANY_STALLED.load(Ordering::Relaxed) {
        return;
    }
    let mut s = STALLS.lock().unwrap();
    s.remove(pipeline);
    ANY_STALLED.store(!s.is_empty(), Ordering::Relaxed);
}

/// The pipelines stalled now.
pub fn stalls() -> Vec<Stall> {
    STALLS.lock().unwrap().values().cloned().collect()
}

/// What the host is waiting for (a dependency not reachable yet), by name: the message
/// `/ready` shows ("waiting for Redis at redis://…: connection refused, attempt 7, next in 5s").
static WAITING: Mutex<BTreeMap<String, String>> = Mutex::new(BTreeMap::new());

/// The host waits for `what` (`Redis at …`, `ClickHouse at …`).
pub fn waiting(what: &str, message: String) {
    WAITING.lock().unwrap().insert(what.to_string(), message);
}

/// `what` answered.
pub fn arrived(what: &str) {
    WAITING.lock().unwrap().remove(what);
}

/// What the host waits for now: (what, message).
pub fn waits() -> Vec<(String, String)> {
    WAITING.lock().unwrap().iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// A canary rollout as the admin API shows it (see `rollout`): live while it runs.
pub trait ShownRollout: Send + Sync {
    fn plugin(&self) -> &str;
    fn to_json(&self) -> serde_json::Value;
}

/// Finished rollouts the admin API keeps showing.
const ROLLOUT_HISTORY: usize = 20;

/// The rollouts this host runs or ran, for the admin API: current ones by plugin, then the
/// last finished ones.
#[derive(Default)]
pub struct Rollouts {
    pub current: BTreeMap<String, Arc<dyn ShownRollout>>,
    /// What they looked like when they ended (not the rollouts: their candidate's compiled
    /// code and instances are freed).
    pub finished: VecDeque<serde_json::Value>,
}

impl Rollouts {
    pub fn finish(&mut self, r: Arc<dyn ShownRollout>) {
        let same = |c: &Arc<dyn ShownRollout>| std::ptr::addr_eq(Arc::as_ptr(c), Arc::as_ptr(&r));
        if self.current.get(r.plugin()).is_some_and(same) {
            self.current.remove(r.plugin());
        }
        if self.finished.len() == ROLLOUT_HISTORY {
            self.finished.pop_back();
        }
        self.finished.push_front(r.to_json());
    }
    pub fn to_json(&self) -> Vec<serde_json::Value> {
        self.current.values().map(|r| r.to_json()).chain(self.finished.iter().cloned()).collect()
    }
}
