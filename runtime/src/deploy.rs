//! Deployments: the plugins directory is the source of truth, kept in step while the host runs.
//!
//! A `.wasm` file (with its sidecar `<stem>.toml`) is one deployment. The directory is watched
//! (`notify`, plus a rescan every second for file systems that send no events, such as some
//! container volumes); a file whose size or modification time changed is acted on once it has
//! stayed the same for [`STABLE_FOR`], so a copy in progress is never loaded.
//! - new file: loaded, its tables prepared, its pipelines started;
//! - changed file: the new version is compiled and checked off the hot path (component, WIT
//!   world, manifest, tables against the live ones); only then are its pipelines started and
//!   the old version's stopped — the old one finishes the batches it has in flight, so each
//!   event is handled by exactly one version and nothing is lost or handled twice;
//! - a new version that fails any check leaves the old one running, and says why in the log,
//!   the admin API (`error` of the plugin) and `sluice_plugin_reloads_total{result}`;
//! - removed file: its pipelines stop after their in-flight work; its consumer groups and
//!   backlog stay in Redis for when it comes back.
//!
//! With BullMQ queues configured, each (plugin, event type) also gets a jobs pipeline, fed by
//! a channel that outlives versions (`jobs`), and the queue consumers' routes follow the
//! running plugins (`source::bullmq::Routes`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::pipeline::gate::PriorityGate;
use crate::pipeline::{Pipeline, Stage};
use crate::plugin::{LoadedPlugin, PluginDefaults, SandboxEngine};
use crate::policy::{DeliveryPolicy, Priority};
use crate::redis_conn::{RedisConn, RedisOptions};
use crate::rollout::{Decided, Rollout, RolloutSlot};
use crate::source::Subscriber;
use crate::source::bullmq::{Delivery, JobInbox, JobsIntake, Route, Routes};
use crate::source::streams::{InflightIds, StreamsIntake};
use crate::status::{PipelineEntry, PluginEntry, PluginStatus, SharedRegistry};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use crate::writer::Writer;
use crate::writer::dedup::ServerDedup;
use crate::writer::evolve::{self, Owner, PrepareError};

/// How long a changed file must stay unchanged before it is loaded.
pub const STABLE_FOR: Duration = Duration::from_millis(500);
/// How often the directory is rescanned even without file-system events.
const RESCAN_EVERY: Duration = Duration::from_secs(1);

/// A file's identity for change detection: size and modification time of the `.wasm` and of
/// its sidecar.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint {
    wasm: (u64, Option<SystemTime>),
    sidecar: Option<(u64, Option<SystemTime>)>,
}

fn fingerprint(path: &Path) -> Option<Fingerprint> {
    let meta = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.len(), m.modified().ok()));
    Some(Fingerprint { wasm: meta(path)?, sidecar: meta(&path.with_extension("toml")) })
}

/// A running version of a plugin.
struct Live {
    plugin: Arc<LoadedPlugin>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

/// The settings the deployer uses (from the host's).
pub struct DeploySettings {
    pub plugins_dir: PathBuf,
    pub stream_prefix: String,
    /// For each streams pipeline's own reading connection.
    pub redis: RedisOptions,
    /// The BullMQ queues consumed (`<prefix>:<name>`): none, no jobs pipelines.
    pub bullmq_queues: Vec<String>,
    /// The host's delivery policy (plugins' `[delivery]` over it).
    pub delivery: DeliveryPolicy,
    /// Priority of each event type (others: `default`; a plugin's own wins).
    pub priorities: HashMap<String, Priority>,
    /// `[tables.<name>] shared_with`.
    pub table_shares: crate::writer::evolve::Shares,
}

/// What the deployer starts pipelines with, built once by the host.
pub struct Wiring {
    pub settings: DeploySettings,
    /// This process's consumer name (see `host::consumer_name`).
    pub consumer: Arc<str>,
    pub gate: PriorityGate,
    pub writer: Writer,
    /// What the ClickHouse server offers for deduplication (detected at start).
    pub server: Arc<ServerDedup>,
    /// The host's shared Redis connection.
    pub control: RedisConn,
    pub engine: SandboxEngine,
    pub defaults: PluginDefaults,
    /// What the admin API shows (created before the deployer: it is served from the start).
    pub registry: SharedRegistry,
}

/// Keeps the running plugins in step with the plugins directory.
pub struct Deployer {
    settings: DeploySettings,
    consumer: Arc<str>,
    gate: PriorityGate,
    writer: Writer,
    server: Arc<ServerDedup>,
    control: RedisConn,
    engine: SandboxEngine,
    defaults: Arc<PluginDefaults>,
    /// What the admin API shows: written here, read there.
    pub registry: SharedRegistry,
    live: HashMap<PathBuf, Live>,
    /// The fingerprint last acted on, per file (deployed or refused): not retried until it changes.
    seen: HashMap<PathBuf, Fingerprint>,
    /// Changed files waiting to be stable: fingerprint and since when.
    settling: HashMap<PathBuf, (Fingerprint, Instant)>,
    /// In-flight ids per (plugin, event type), shared across versions.
    inflight: HashMap<(String, String), InflightIds>,
    /// BullMQ jobs per (plugin, event type), shared across versions.
    jobs: HashMap<(String, String), (tokio::sync::mpsc::Sender<Delivery>, JobInbox)>,
    /// Where the BullMQ queue consumers send each event type's jobs.
    pub routes: Routes,
    /// Each plugin's rollout slot (by name), shared by its pipelines across versions.
    slots: HashMap<String, RolloutSlot>,
    /// Canaries running, by the candidate's file, with their controller.
    canaries: HashMap<PathBuf, (Arc<Rollout>, tokio::task::AbortHandle)>,
    /// Verdicts from the rollout controllers.
    decided: (UnboundedSender<Decided>, UnboundedReceiver<Decided>),
}

/// Jobs waiting for a (plugin, event type) pipeline; when full, the queue consumer waits (its
/// jobs stay locked and active meanwhile).
const JOB_CHANNEL: usize = 1024;

/// The `*.wasm` files of a directory, sorted. Files whose name starts with `.` (editors'
/// and copy tools' temporaries) are skipped.
pub fn plugin_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let entries =
        std::fs::read_dir(dir).map_err(|e| anyhow::anyhow!("cannot read plugins directory {}: {e}", dir.display()))?;
    for entry in entries {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if path.extension().and_then(|e| e.to_str()) == Some("wasm") && !name.starts_with('.') && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

impl Deployer {
    pub fn new(w: Wiring) -> Self {
        Deployer {
            settings: w.settings,
            consumer: w.consumer,
            gate: w.gate,
            writer: w.writer,
            server: w.server,
            control: w.control,
            engine: w.engine,
            defaults: Arc::new(w.defaults),
            registry: w.registry,
            live: HashMap::new(),
            seen: HashMap::new(),
            settling: HashMap::new(),
            inflight: HashMap::new(),
            jobs: HashMap::new(),
            routes: Routes::default(),
            slots: HashMap::new(),
            canaries: HashMap::new(),
            decided: tokio::sync::mpsc::unbounded_channel(),
        }
    }

    /// Deploys every file of the directory (at start-up: no waiting for files to settle).
    pub async fn deploy_all(&mut self) -> anyhow::Result<()> {
        let files: Vec<(PathBuf, Fingerprint)> = plugin_files(&self.settings.plugins_dir)?
            .into_iter()
            .filter_map(|p| fingerprint(&p).map(|fp| (p, fp)))
            .collect();
        self.apply_all(files.into_iter().map(|(p, fp)| (p, fp, None)).collect()).await;
        Ok(())
    }

    /// Loads the files at once (compiling and `describe` run in parallel, each within its
    /// deadline, so that a slow or stuck plugin delays the others by no more than that), then
    /// starts them one by one in file order, so that what runs does not depend on timing.
    async fn apply_all(&mut self, files: Vec<(PathBuf, Fingerprint, Option<Instant>)>) {
        let loads = files.iter().map(|(path, _, _)| {
            let (engine, defaults, path) = (self.engine.clone(), self.defaults.clone(), path.clone());
            async move { LoadedPlugin::load(&engine, &path, &defaults).await }
        });
        let loaded = futures::future::join_all(loads).await;
        // Candidates (`[rollout]`) after the versions they are compared with.
        let mut all: Vec<_> = files.into_iter().zip(loaded).collect();
        all.sort_by_key(|(_, p)| p.as_ref().is_ok_and(|p| p.rollout.is_some()));
        for ((path, fp, changed_at), plugin) in all {
            self.apply(&path, fp, changed_at, plugin).await;
        }
    }

    pub fn pipeline_count(&self) -> usize {
        self.live.values().map(|l| l.tasks.len()).sum()
    }

    /// Watches the directory until `stop` turns true, applying changes as they settle.
    pub async fn watch(&mut self, mut stop: watch::Receiver<bool>) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        // The watcher only wakes the loop; the rescan decides what changed. Access events are
        // ignored: the rescan itself opens the directory, and inotify reports that open, so
        // waking on it made the host rescan in a busy loop (a third of a core, found by `make
        // bench` under perf).
        let watcher = notify::recommended_watcher(move |e: notify::Result<notify::Event>| {
            if !matches!(e, Ok(notify::Event { kind: notify::EventKind::Access(_), .. })) {
                let _ = tx.send(());
            }
        })
        .and_then(|mut w| {
            notify::Watcher::watch(&mut w, &self.settings.plugins_dir, notify::RecursiveMode::NonRecursive)?;
            Ok(w)
        });
        let _watcher = match watcher {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(dir = %self.settings.plugins_dir.display(), error = %e, "cannot watch the plugins directory; rescanning it every second instead");
                None
            }
        };
        loop {
            // While files are settling, look again soon; otherwise on an event or the rescan tick.
            let wait = if self.settling.is_empty() { RESCAN_EVERY } else { STABLE_FOR / 4 };
            tokio::select! {
                _ = stop.changed() => return,
                _ = rx.recv() => {}
                _ = tokio::time::sleep(wait) => {}
                Some(d) = self.decided.1.recv() => {
                    self.on_verdict(d).await;
                    continue;
                }
            }
            while rx.try_recv().is_ok() {}
            self.rescan().await;
        }
    }

    async fn rescan(&mut self) {
        let files = match plugin_files(&self.settings.plugins_dir) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = format!("{e:#}"), "cannot list the plugins directory");
                return;
            }
        };
        let mut ready = Vec::new();
        for path in &files {
            let Some(fp) = fingerprint(path) else { continue };
            if self.seen.get(path) == Some(&fp) {
                self.settling.remove(path);
                continue;
            }
            match self.settling.get(path) {
                Some((settling, since)) if *settling == fp => {
                    if since.elapsed() >= STABLE_FOR {
                        let detected = *since;
                        self.settling.remove(path);
                        ready.push((path.clone(), fp, Some(detected)));
                    }
                }
                _ => {
                    self.settling.insert(path.clone(), (fp, Instant::now()));
                }
            }
        }
        self.apply_all(ready).await;
        let gone: Vec<PathBuf> = self.seen.keys().filter(|p| !files.contains(p)).cloned().collect();
        for path in gone {
            self.remove(&path).await;
        }
    }

    /// Checks and starts the version loaded from `path`, replacing the running one if any.
    async fn apply(
        &mut self,
        path: &Path,
        fp: Fingerprint,
        changed_at: Option<Instant>,
        loaded: anyhow::Result<LoadedPlugin>,
    ) {
        self.seen.insert(path.to_path_buf(), fp);
        let file = path.display().to_string();
        // A new version of a candidate ends its rollout (a new one may begin below).
        if let Some((rollout, _)) = self.canaries.get(path).cloned() {
            self.end_canary(path, &rollout, "its file changed before a verdict").await;
        }
        let mut plugin = match loaded {
            Ok(p) => p,
            Err(e) => return self.refuse(path, PluginStatus::Failed, format!("{e:#}")),
        };
        // Two files bound to one name (see `plugin::identity`): the one running keeps it,
        // unless the new one is its canary.
        if let Some((other, stable)) =
            self.live.iter().find(|(f, l)| f.as_path() != path && l.plugin.name() == plugin.name())
        {
            if plugin.rollout.is_some() {
                let (other, stable) = (other.clone(), stable.plugin.clone());
                return self.begin_canary(path, &other, stable, plugin).await;
            }
            let why = format!(
                "its name `{}` is already the plugin of {}: two files cannot be one plugin (bind at most one file to a name)",
                plugin.name(),
                other.display()
            );
            return self.refuse(path, PluginStatus::Failed, why);
        }
        if let Some(old) = self.live.get(path)
            && old.plugin.hash == plugin.hash
            && old.plugin.settings_equal(&plugin)
        {
            return; // touched, not changed
        }
        // A new running version ends its canary: the candidate was checked against the old one's
        // tables. It is looked at again at the next scan, against the new one.
        self.end_canaries_of(path, "the running version changed before a verdict").await;
        if plugin.rollout.is_some() {
            tracing::warn!(path = %file, plugin = plugin.name(), "this file has a [rollout] section, but no other file runs the plugin `{}` to compare it with: it runs as the plugin", plugin.name());
        }
        let (name, version, hash) = (plugin.name().to_string(), plugin.manifest.version.clone(), plugin.hash.clone());
        // A retryable error (ClickHouse away) waits; a refusal or a fatal error is the answer.
        let prepared = crate::backoff::until_ok("ClickHouse", || {
            let (client, server, mut tables) =
                (self.writer.client().clone(), self.server.clone(), plugin.tables.clone());
            let (name, version, hash, shares) = (&name, &version, &hash, &self.settings.table_shares);
            async move {
                let owner = Owner { plugin: name, version, hash };
                match evolve::prepare_plugin(&client, &server, &mut tables, owner, shares).await {
                    Err(PrepareError::ClickHouse(e)) if e.retryable() => Err(anyhow::Error::from(e)),
                    other => Ok(other.map(|_| tables)),
                }
            }
        })
        .await;
        match prepared {
            Ok(Ok(tables)) => plugin.tables = tables,
            Ok(Err(e)) => {
                let why = match e {
                    PrepareError::Refused(why) => format!("its tables are incompatible with the live ones: {why}"),
                    PrepareError::ClickHouse(e) => format!("cannot prepare its tables: {e}"),
                };
                return self.refuse(path, PluginStatus::Refused, why);
            }
            Err(e) => return self.refuse(path, PluginStatus::Refused, format!("cannot prepare its tables: {e:#}")),
        }
        // Said plainly for every table: what a crash can cost.
        for t in &plugin.tables {
            let db = self.writer.client().database();
            if t.guarantee.exactly_once() {
                let window = t.window.map(|w| w.to_string()).unwrap_or_default();
                tracing::info!(plugin = %name, table = %format!("{db}.{}", t.name), guarantee = t.guarantee.name(), %window, "{} (a batch recovered after its block left the window is written twice)", t.guarantee.describe());
            } else {
                tracing::warn!(plugin = %name, table = %format!("{db}.{}", t.name), guarantee = t.guarantee.name(), "{}", t.guarantee.describe());
            }
        }
        let plugin = Arc::new(plugin);
        // Start the new version, then stop the old: the stream never goes unread, and the old
        // version finishes what it holds.
        let new = self.start(plugin.clone());
        let serving_ms = changed_at.map(|t| t.elapsed().as_millis() as u64);
        let old = self.live.insert(path.to_path_buf(), new);
        // BullMQ routes follow at once: jobs of a type only the new version takes must not wait
        // for the old one to drain.
        self.refresh_pipelines();
        let replaced = old.as_ref().map(|o| o.plugin.short_hash().to_string());
        if let Some(old) = old {
            if old.plugin.name() != plugin.name() {
                tracing::info!(old = old.plugin.name(), new = plugin.name(), "the file now holds another plugin");
            }
            self.stop(old).await;
        }
        {
            let mut reg = self.registry.write().unwrap();
            reg.plugins.insert(
                file.clone(),
                PluginEntry {
                    file: file.clone(),
                    status: PluginStatus::Running,
                    error: None,
                    plugin: Some(Arc::new(plugin.summary())),
                },
            );
        }
        self.refresh_pipelines();
        // Latency: from the change being seen (the write, give or take a scan) to the new
        // version's pipelines running; then until the old version had drained.
        match (replaced, serving_ms) {
            (Some(old), Some(ms)) => {
                metrics::counter!("sluice_plugin_reloads_total", "result" => "ok").increment(1);
                metrics::histogram!("sluice_plugin_reload_duration_seconds").record(ms as f64 / 1000.0);
                tracing::info!(plugin = plugin.name(), version = %plugin.manifest.version, hash = plugin.short_hash(), replaced = %old, path = %file, change_to_serving_ms = ms, old_drained_ms = changed_at.map(|t| t.elapsed().as_millis() as u64), "plugin reloaded");
            }
            (None, Some(ms)) => {
                metrics::counter!("sluice_plugin_reloads_total", "result" => "ok").increment(1);
                tracing::info!(plugin = plugin.name(), version = %plugin.manifest.version, hash = plugin.short_hash(), path = %file, change_to_serving_ms = ms, "new plugin loaded");
            }
            _ => {
                metrics::counter!("sluice_plugin_loads_total", "result" => "ok").increment(1);
                tracing::info!(plugin = plugin.name(), version = %plugin.manifest.version, hash = plugin.short_hash(), path = %file, subscriptions = ?plugin.manifest.subscriptions, compiled_from_cache = plugin.compiled.0, compile_ms = plugin.compiled.1, "plugin loaded");
            }
        }
    }

    /// Starts `candidate` as a canary of the version `stable` runs from `stable_path`: its
    /// tables must be the stable version's (its rows go to the same writers), and the rollout's
    /// record in Redis may already hold a verdict on it (another host's, or before a restart).
    async fn begin_canary(
        &mut self,
        path: &Path,
        stable_path: &Path,
        stable: Arc<LoadedPlugin>,
        mut candidate: LoadedPlugin,
    ) {
        let file = path.display().to_string();
        if let Some(other) = self
            .canaries
            .iter()
            .find(|(p, (r, _))| p.as_path() != path && r.plugin == stable.name())
            .map(|(p, _)| p.clone())
        {
            let why = format!(
                "it is a canary ([rollout]) of the plugin `{}`, which has one already ({}): one canary at a time — remove that file, or wait for its verdict",
                stable.name(),
                other.display()
            );
            return self.refuse(path, PluginStatus::Failed, why);
        }
        if let Err(why) = same_tables(&stable, &candidate) {
            let why = format!(
                "it is a canary ([rollout]) of the plugin `{}` running from {}, but {why}: a canary writes into the running version's tables, so a schema change is deployed as a plain reload",
                stable.name(),
                stable_path.display()
            );
            return self.refuse(path, PluginStatus::Refused, why);
        }
        // The stable version's tables as prepared (entry column, guarantee), which are the
        // candidate's too.
        candidate.tables = stable.tables.clone();
        let settings = candidate.rollout.clone().expect("a candidate");
        let candidate = Arc::new(candidate);
        let rollout = Arc::new(Rollout::new(&stable, candidate.clone(), settings));
        let record = crate::backoff::until_ok("Redis", || {
            let (mut conn, r) = (self.control.clone(), rollout.clone());
            async move { crate::rollout::begin(&mut conn, &r).await }
        })
        .await;
        let record = match record {
            Ok(crate::rollout::Begun::Record(r)) => r,
            Ok(crate::rollout::Begun::Busy(other)) => {
                let why = format!(
                    "it is a canary ([rollout]) of the plugin `{}`, which has one already (candidate {other}, running on another host: see {}): one canary at a time",
                    stable.name(),
                    crate::keys::rollout(stable.name())
                );
                return self.refuse(path, PluginStatus::Failed, why);
            }
            Err(e) => return self.refuse(path, PluginStatus::Failed, format!("cannot start its rollout: {e:#}")),
        };
        let entry = |status, error| PluginEntry {
            file: file.clone(),
            status,
            error,
            plugin: Some(Arc::new(candidate.summary())),
        };
        match record.state {
            crate::rollout::State::Running => {
                self.slots.entry(rollout.plugin.clone()).or_default().set(Some(rollout.clone()));
                let task = tokio::spawn(crate::rollout::control(
                    rollout.clone(),
                    self.control.clone(),
                    self.decided.0.clone(),
                ));
                self.canaries.insert(path.to_path_buf(), (rollout.clone(), task.abort_handle()));
                {
                    let mut reg = self.registry.write().unwrap();
                    reg.plugins.insert(file.clone(), entry(PluginStatus::Canary, None));
                    reg.rollouts.current.insert(rollout.plugin.clone(), rollout.clone());
                }
                metrics::gauge!("sluice_rollout_active", "plugin" => rollout.plugin.clone()).set(1.0);
                let s = &rollout.settings;
                tracing::info!(plugin = %rollout.plugin, stable = stable.short_hash(), stable_version = %stable.manifest.version, candidate = candidate.short_hash(), candidate_version = %candidate.manifest.version, path = %file, share = s.share, promote_after_events = s.promote_after_events, promote_after_s = s.promote_after.as_secs(), started_at = ?record.started_at, "canary rollout running: the candidate takes its share of the events");
            }
            crate::rollout::State::Promoted => {
                tracing::info!(plugin = %rollout.plugin, candidate = candidate.short_hash(), path = %file, "this candidate was promoted before (its rollout's record says so): it replaces the running version");
                self.registry.write().unwrap().rollouts.finish(rollout.clone());
                self.promote(path, &rollout).await;
            }
            crate::rollout::State::RolledBack | crate::rollout::State::Withdrawn => {
                let why = format!(
                    "this candidate was rolled back: {} (change the file to try another build)",
                    record.reason.as_deref().unwrap_or("no reason recorded")
                );
                tracing::warn!(plugin = %rollout.plugin, candidate = candidate.short_hash(), path = %file, "{why}");
                let mut reg = self.registry.write().unwrap();
                reg.plugins.insert(file.clone(), entry(PluginStatus::RolledBack, Some(why)));
                reg.rollouts.finish(rollout);
            }
        }
    }

    /// A rollout without a verdict ends (its file changed or went, or its running version's).
    async fn end_canary(&mut self, path: &Path, rollout: &Arc<Rollout>, why: &str) {
        if let Some((_, task)) = self.canaries.remove(path) {
            task.abort();
        }
        if let Some(slot) = self.slots.get(&rollout.plugin) {
            slot.set(None);
        }
        crate::rollout::withdraw(&mut self.control.clone(), rollout, why).await;
        metrics::gauge!("sluice_rollout_active", "plugin" => rollout.plugin.clone()).set(0.0);
        self.registry.write().unwrap().rollouts.finish(rollout.clone());
    }

    /// Ends the canaries of the plugin running from `path` (its version changes or goes), and
    /// has their files looked at again at the next scan.
    async fn end_canaries_of(&mut self, path: &Path, why: &str) {
        let Some(name) = self.live.get(path).map(|l| l.plugin.name().to_string()) else { return };
        let canaries: Vec<_> = self
            .canaries
            .iter()
            .filter(|(_, (r, _))| r.plugin == name)
            .map(|(p, (r, _))| (p.clone(), r.clone()))
            .collect();
        for (p, r) in canaries {
            self.end_canary(&p, &r, why).await;
            self.seen.remove(&p);
        }
    }

    /// A controller's verdict: the candidate replaces the running version, or is dropped.
    async fn on_verdict(&mut self, d: Decided) {
        let Some(path) = self.canaries.iter().find(|(_, (r, _))| Arc::ptr_eq(r, &d.rollout)).map(|(p, _)| p.clone())
        else {
            return; // ended meanwhile
        };
        self.canaries.remove(&path);
        if let Some(slot) = self.slots.get(&d.rollout.plugin) {
            slot.set(None);
        }
        let plugin = d.rollout.plugin.clone();
        metrics::gauge!("sluice_rollout_active", "plugin" => plugin.clone()).set(0.0);
        self.registry.write().unwrap().rollouts.finish(d.rollout.clone());
        match d.state {
            crate::rollout::State::Promoted => {
                metrics::counter!("sluice_rollouts_total", "plugin" => plugin.clone(), "result" => "promoted")
                    .increment(1);
                tracing::info!(plugin = %plugin, candidate = d.rollout.candidate.short_hash(), candidate_version = %d.rollout.candidate.manifest.version, reason = %d.reason, "canary promoted: it replaces the running version");
                self.promote(&path, &d.rollout).await;
            }
            state => {
                metrics::counter!("sluice_rollouts_total", "plugin" => plugin.clone(), "result" => state.name())
                    .increment(1);
                let what = match state {
                    crate::rollout::State::Withdrawn => "canary rollout withdrawn (by another host)",
                    _ => "canary rolled back",
                };
                tracing::error!(plugin = %plugin, candidate = d.rollout.candidate.short_hash(), candidate_version = %d.rollout.candidate.manifest.version, reason = %d.reason, "{what}: every event goes to the running version again");
                crate::status::recent_error(&plugin, "", "rollout_rolled_back", &d.reason);
                let file = path.display().to_string();
                let entry = PluginEntry {
                    file: file.clone(),
                    status: PluginStatus::RolledBack,
                    error: Some(format!(
                        "{}: {}",
                        if state == crate::rollout::State::Withdrawn { "withdrawn" } else { "rolled back" },
                        d.reason
                    )),
                    plugin: Some(Arc::new(d.rollout.candidate.summary())),
                };
                self.registry.write().unwrap().plugins.insert(file, entry);
            }
        }
    }

    /// The candidate at `path` becomes the running version of its plugin, as a reload: its
    /// pipelines start, then the old version's stop after finishing what they hold.
    async fn promote(&mut self, path: &Path, rollout: &Arc<Rollout>) {
        let candidate = rollout.candidate.clone();
        let new = self.start(candidate.clone());
        self.live.insert(path.to_path_buf(), new);
        let old_path = self
            .live
            .iter()
            .find(|(p, l)| p.as_path() != path && l.plugin.name() == candidate.name())
            .map(|(p, _)| p.clone());
        self.refresh_pipelines();
        let file = path.display().to_string();
        if let Some(old_path) = old_path
            && let Some(old) = self.live.remove(&old_path)
        {
            let old_file = old_path.display().to_string();
            let summary = Arc::new(old.plugin.summary());
            self.stop(old).await;
            let why = format!(
                "superseded by {file}, a promoted canary; remove this file (and the [rollout] section of the other's settings) when convenient"
            );
            let entry = PluginEntry {
                file: old_file.clone(),
                status: PluginStatus::Superseded,
                error: Some(why),
                plugin: Some(summary),
            };
            self.registry.write().unwrap().plugins.insert(old_file, entry);
        }
        let entry = PluginEntry {
            file: file.clone(),
            status: PluginStatus::Running,
            error: None,
            plugin: Some(Arc::new(candidate.summary())),
        };
        self.registry.write().unwrap().plugins.insert(file, entry);
        self.refresh_pipelines();
    }

    /// Reports a version that cannot run; the running version of the file, if any, stays.
    fn refuse(&mut self, path: &Path, status: PluginStatus, why: String) {
        let file = path.display().to_string();
        let running = self.live.get(path).map(|l| l.plugin.clone());
        match &running {
            Some(old) => {
                tracing::error!(path = %file, running = old.short_hash(), "new version not started, the running version stays: {why}");
                metrics::counter!("sluice_plugin_reloads_total", "result" => status.name()).increment(1);
            }
            None => {
                tracing::error!(path = %file, "plugin not started: {why}");
                metrics::counter!("sluice_plugin_loads_total", "result" => status.name()).increment(1);
            }
        }
        crate::status::recent_error(
            running.as_ref().map(|p| p.name()).unwrap_or(&file),
            "",
            &format!("plugin_{status}"),
            &why,
        );
        let entry = match running {
            Some(old) => PluginEntry {
                file: file.clone(),
                status: PluginStatus::Running,
                error: Some(format!("a new version in this file was {status}: {why}")),
                plugin: Some(Arc::new(old.summary())),
            },
            None => PluginEntry { file: file.clone(), status, error: Some(why), plugin: None },
        };
        self.registry.write().unwrap().plugins.insert(file, entry);
    }

    /// Stops the file's plugin (it was removed).
    async fn remove(&mut self, path: &Path) {
        self.seen.remove(path);
        self.settling.remove(path);
        let file = path.display().to_string();
        self.registry.write().unwrap().plugins.remove(&file);
        if let Some((rollout, _)) = self.canaries.get(path).cloned() {
            self.end_canary(path, &rollout, "its file was removed before a verdict").await;
            tracing::info!(plugin = %rollout.plugin, path = %file, "canary file removed: all events go to the running version");
        }
        // Its canary has nothing left to be compared with: it runs alone at the next scan.
        self.end_canaries_of(path, "the running version's file was removed").await;
        // Files refused (their name was taken, or a canary's running version is gone) are
        // looked at again at the next scan: the name may be free now. Verdicts stay.
        let refused: Vec<PathBuf> = {
            let reg = self.registry.read().unwrap();
            self.seen
                .keys()
                .filter(|p| {
                    !self.live.contains_key(*p)
                        && reg.plugins.get(&p.display().to_string()).is_none_or(|e| !e.status.is_settled())
                })
                .cloned()
                .collect()
        };
        for p in refused {
            self.seen.remove(&p);
        }
        if let Some(old) = self.live.remove(path) {
            tracing::info!(plugin = old.plugin.name(), hash = old.plugin.short_hash(), path = %file, "plugin file removed: stopping its pipelines (its consumer groups and backlog stay)");
            // Routes first: the queue consumers must not keep filling its channels meanwhile.
            self.refresh_pipelines();
            self.stop(old).await;
            metrics::counter!("sluice_plugin_reloads_total", "result" => "removed").increment(1);
        }
        self.refresh_pipelines();
    }

    fn start(&mut self, plugin: Arc<LoadedPlugin>) -> Live {
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let tables: Vec<_> = plugin.tables.iter().map(|t| self.writer.table(t)).collect();
        let rollout = self.slots.entry(plugin.name().to_string()).or_default().clone();
        let ledger_tables: Arc<[String]> =
            plugin.tables.iter().filter(|t| t.guarantee.exactly_once()).map(|t| t.name.clone()).collect();
        for event_type in &plugin.consumed_event_types() {
            let key = (plugin.name().to_string(), event_type.clone());
            let who = Subscriber {
                plugin: Arc::from(plugin.name()),
                version: Arc::from(plugin.hash.as_str()),
                event_type: Arc::from(event_type.as_str()),
                group: Arc::from(crate::keys::group_name(plugin.name()).as_str()),
                ledger_tables: ledger_tables.clone(),
            };
            let policy = self.policy_of(&plugin, event_type);
            let (gate, writer, control) = (self.gate.clone(), self.writer.clone(), self.control.clone());
            let stage = || Stage {
                plugin: plugin.clone(),
                who: who.clone(),
                policy: policy.clone(),
                gate: gate.clone(),
                writer: writer.clone(),
                tables: tables.clone(),
                control: control.clone(),
                rollout: rollout.clone(),
            };
            // Streams always.
            let (streams, inflight) = (stage(), self.inflight.entry(key.clone()).or_default().clone());
            let stream = crate::keys::event_stream(&self.settings.stream_prefix, event_type);
            let (redis, control, consumer) = (self.settings.redis.clone(), self.control.clone(), self.consumer.clone());
            let exactly_once = self.writer.exactly_once();
            let rx = stop_rx.clone();
            tasks.spawn(async move {
                // A connection of its own: a blocked XREADGROUP would hold up a shared one.
                let block = streams.policy.block;
                let reading =
                    match crate::backoff::until_ok("Redis", || crate::redis_conn::connect(&redis, block)).await {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::error!(stream = %stream, error = format!("{e:#}"), "the pipeline cannot connect to Redis and stops");
                            return;
                        }
                    };
                let policy = streams.policy.clone();
                let who = streams.who.clone();
                let intake =
                    StreamsIntake::new(reading, control, &stream, who, consumer, policy, inflight, exactly_once);
                run_pipeline(Pipeline::new(streams, intake), rx).await
            });
            // BullMQ jobs too when queues are configured.
            if !self.settings.bullmq_queues.is_empty() {
                let (_, inbox) = self.jobs.entry(key).or_insert_with(|| {
                    let (tx, rx) = tokio::sync::mpsc::channel(JOB_CHANNEL);
                    (tx, Arc::new(tokio::sync::Mutex::new(rx)))
                });
                let intake = JobsIntake::new(inbox.clone(), who.clone());
                tasks.spawn(run_pipeline(Pipeline::new(stage(), intake), stop_rx.clone()));
            }
        }
        Live { plugin, stop, tasks }
    }

    /// The delivery policy of one of `plugin`'s pipelines: the host's, with the plugin's own
    /// `[delivery]` settings and the event type's priority.
    fn policy_of(&self, plugin: &LoadedPlugin, event_type: &str) -> DeliveryPolicy {
        let mut policy = plugin.delivery_policy(&self.settings.delivery);
        if plugin.delivery.priority.is_none() {
            policy.priority = self.settings.priorities.get(event_type).copied().unwrap_or(Priority::Default);
        }
        policy
    }

    /// Stops a version: no new reads, in-flight work finished (up to the grace period).
    async fn stop(&self, mut live: Live) {
        let _ = live.stop.send(true);
        while live.tasks.join_next().await.is_some() {}
    }

    /// Stops every plugin (shutdown).
    pub async fn stop_all(&mut self) {
        let all: Vec<Live> = self.live.drain().map(|(_, l)| l).collect();
        futures::future::join_all(all.into_iter().map(|l| self.stop(l))).await;
    }

    /// The admin API's pipelines, and the BullMQ routes: every running plugin's event types.
    fn refresh_pipelines(&mut self) {
        let mut pipelines = Vec::new();
        let mut routes: HashMap<String, Vec<Route>> = HashMap::new();
        let queues = &self.settings.bullmq_queues;
        for l in self.live.values() {
            for t in &l.plugin.consumed_event_types() {
                pipelines.push(PipelineEntry {
                    plugin: l.plugin.name().to_string(),
                    event_type: t.clone(),
                    stream: format!("{}{t}", self.settings.stream_prefix),
                    group: crate::keys::group_name(l.plugin.name()),
                });
                if let Some((tx, _)) = self.jobs.get(&(l.plugin.name().to_string(), t.clone())) {
                    pipelines.push(PipelineEntry {
                        plugin: l.plugin.name().to_string(),
                        event_type: t.clone(),
                        stream: format!("bullmq {}", queues.join(",")),
                        group: crate::keys::group_name(l.plugin.name()),
                    });
                    routes.entry(t.clone()).or_default().push((l.plugin.name().to_string(), tx.clone()));
                }
            }
        }
        // Channels of pairs no longer running go: jobs still queued in them are handed back to
        // their queue once the old version has stopped.
        let live: std::collections::HashSet<(String, String)> = self
            .live
            .values()
            .flat_map(|l| l.plugin.consumed_event_types().into_iter().map(|t| (l.plugin.name().to_string(), t)))
            .collect();
        self.jobs.retain(|k, _| live.contains(k));
        self.routes.set(routes);
        pipelines.sort_by(|a, b| (&a.plugin, &a.event_type).cmp(&(&b.plugin, &b.event_type)));
        self.registry.write().unwrap().pipelines = pipelines;
    }
}

/// Whether a candidate declares the same tables as the running version (unprefixed
/// declarations, and the names they get): the error says which differs.
fn same_tables(stable: &LoadedPlugin, candidate: &LoadedPlugin) -> Result<(), String> {
    let declared = |p: &LoadedPlugin| crate::plugin::check_manifest(&p.manifest).map_err(|e| format!("{e:#}"));
    let (a, b) = (declared(stable)?, declared(candidate)?);
    let names = |p: &LoadedPlugin| p.tables.iter().map(|t| t.name.clone()).collect::<Vec<_>>();
    if names(stable) != names(candidate) {
        return Err(format!("its tables are {:?}, the running version's {:?}", names(candidate), names(stable)));
    }
    for (s, c) in a.iter().zip(&b) {
        if s != c {
            return Err(format!("its table `{}` is declared differently", c.name));
        }
    }
    Ok(())
}

/// Runs a pipeline to its end, saying why if it stopped on an error.
async fn run_pipeline<I: crate::source::Intake>(p: Pipeline<I>, stop: watch::Receiver<bool>) {
    let (who, source) = p.describe();
    if let Err(e) = p.run(stop).await {
        tracing::error!(plugin = %who.plugin, event_type = %who.event_type, source = %source, "pipeline stopped: {e:#}");
    }
}
