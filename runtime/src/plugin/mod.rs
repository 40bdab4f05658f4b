//! Plugins: loading a component file, checking its manifest, and calling it with batches.
//!
//! A [`LoadedPlugin`] is one version of one plugin (identified by the SHA-256 of its file),
//! compiled and checked once. A [`PluginInstance`] is a live sandbox of it, reused for batch
//! after batch until it traps.

pub mod engine;
pub mod rows;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use sha2::{Digest, Sha256};
use wasmtime::component::{Linker, ResourceTable};
use wasmtime::{Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

pub use engine::SandboxEngine;
use rows::{DecodedRows, OutputLimits, decode_rows};

use crate::writer::schema::TableSchema;

mod bindings {
    wasmtime::component::bindgen!({
        world: "plugin",
        path: "../wit",
    });
}

/// The WIT types, as the host sees them.
pub mod wit {
    pub use super::bindings::sluice::plugin::types::*;
}

use bindings::sluice::plugin::host::{self, Level};

/// Limits applied to every call of a plugin.
#[derive(Debug, Clone, Copy)]
pub struct PluginLimits {
    /// Wall-clock deadline of one `handle-batch` call.
    pub call_timeout: Duration,
    /// Linear memory one instance may grow to.
    pub max_memory_bytes: usize,
    pub output: OutputLimits,
}

impl Default for PluginLimits {
    fn default() -> Self {
        PluginLimits {
            call_timeout: Duration::from_secs(5),
            max_memory_bytes: 128 << 20,
            output: OutputLimits::default(),
        }
    }
}

/// What an instance's store holds: an empty WASI context (no files, network, environment,
/// arguments or stdio) and the plugin's own settings.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: MemoryMeter,
    plugin: Arc<str>,
    settings: Arc<HashMap<String, String>>,
    /// The last panic message the guest reported (the SDK's panic hook logs it with
    /// `panic=true`), for the trap's error.
    last_panic: Option<String>,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl host::Host for HostState {
    fn log(&mut self, level: Level, message: String, fields: Vec<(String, String)>) {
        let plugin = &*self.plugin;
        // Bound what a plugin can push into the host's logs.
        let message: String = message.chars().take(4096).collect();
        if fields.iter().any(|(k, v)| k == "panic" && v == "true") {
            self.last_panic = Some(message.chars().take(1024).collect());
        }
        let fields: Vec<String> = fields.iter().take(32).map(|(k, v)| format!("{k}={v}")).collect();
        let fields = fields.join(" ");
        match level {
            Level::Trace => tracing::trace!(target: "sluice::plugin_log", plugin, %fields, "{message}"),
            Level::Debug => tracing::debug!(target: "sluice::plugin_log", plugin, %fields, "{message}"),
            Level::Info => tracing::info!(target: "sluice::plugin_log", plugin, %fields, "{message}"),
            Level::Warn => tracing::warn!(target: "sluice::plugin_log", plugin, %fields, "{message}"),
            Level::Error => tracing::error!(target: "sluice::plugin_log", plugin, %fields, "{message}"),
        }
    }

    fn config_get(&mut self, key: String) -> Option<String> {
        self.settings.get(&key).cloned()
    }
}

impl wit::Host for HostState {}

/// One checked version of a plugin, ready to instantiate.
pub struct LoadedPlugin {
    pub path: PathBuf,
    /// SHA-256 of the file, hex: the version's identity.
    pub hash: String,
    pub manifest: wit::Manifest,
    pub tables: Vec<TableSchema>,
    pub limits: PluginLimits,
    settings: Arc<HashMap<String, String>>,
    /// The sidecar's delivery settings and grants.
    pub delivery: Delivery,
    pub grants: Grants,
    /// Linear memory of the latest instance, in bytes.
    memory_bytes: Arc<std::sync::atomic::AtomicUsize>,
    /// Whether the compiled code came from the cache, and how long getting it took.
    pub compiled: (bool, u64),
    engine: SandboxEngine,
    pre: bindings::PluginPre<HostState>,
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin").field("name", &self.manifest.name).field("hash", &self.hash).finish()
    }
}

/// The sidecar file of a plugin: `<stem>.toml` beside `<stem>.wasm`. Only what the host
/// understands is allowed in it, so a typo is an error rather than a silently ignored line.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Sidecar {
    /// What the plugin reads with `config-get`. Values are strings; numbers and booleans are
    /// accepted and passed on as their text.
    #[serde(default)]
    settings: HashMap<String, toml::Value>,
    /// Settings whose values come from environment variables of the host: setting name →
    /// variable name. Only this plugin can read them; they are never logged or shown.
    #[serde(default)]
    secrets: HashMap<String, String>,
    /// This plugin's limits, overriding the host's defaults.
    #[serde(default)]
    limits: SidecarLimits,
    /// Retries, priority and which of its event types to consume.
    #[serde(default)]
    delivery: Delivery,
    #[serde(default)]
    clickhouse: SidecarClickHouse,
    /// What the sandbox lets this plugin see beyond the WIT interface.
    #[serde(default)]
    grants: Grants,
}

/// A plugin's own delivery settings (the host's apply where unset).
#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Delivery {
    pub max_attempts: Option<u64>,
    pub retry_base_ms: Option<u64>,
    pub retry_max_ms: Option<u64>,
    /// `high`, `default` or `low`, for all its event types.
    pub priority: Option<String>,
    /// Consume only these of the event types the plugin subscribes to.
    pub event_types: Option<Vec<String>>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SidecarClickHouse {
    /// Prepended to every table name the plugin declares (e.g. `staging_`).
    table_prefix: Option<String>,
}

/// Capabilities granted to one plugin. Nothing is granted by default.
#[derive(Debug, Default, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grants {
    /// Host directories the plugin may read, at the same path inside the sandbox.
    #[serde(default)]
    pub read_dirs: Vec<PathBuf>,
    /// Host environment variables passed to the plugin (those that are set).
    #[serde(default)]
    pub env: Vec<String>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SidecarLimits {
    call_timeout_ms: Option<u64>,
    max_memory_mb: Option<usize>,
    max_rows_per_event: Option<u32>,
    max_bytes_per_event: Option<usize>,
}

/// What a plugin's sidecar file gives it.
#[derive(Debug, Default)]
pub struct PluginConfig {
    pub settings: HashMap<String, String>,
    /// The host's defaults with the sidecar's `[limits]` applied.
    pub limits: PluginLimits,
    pub delivery: Delivery,
    pub table_prefix: Option<String>,
    pub grants: Grants,
}

/// What the host gives every plugin before its sidecar file: its default limits, and the
/// `[plugins.<stem>]` sections of the host's config file (same keys as a sidecar file).
#[derive(Debug, Default, Clone)]
pub struct PluginDefaults {
    pub limits: PluginLimits,
    pub sections: HashMap<String, toml::Table>,
}

/// Reads the plugin's configuration: the host config's `[plugins.<stem>]` section, then the
/// sidecar file `<stem>.toml` over it (key by key): settings, secrets (from the environment),
/// limits over the host's defaults, delivery, table prefix and grants. Every error names where
/// the bad key is.
pub fn read_sidecar(wasm: &Path, defaults: &PluginDefaults) -> Result<PluginConfig> {
    let path = wasm.with_extension("toml");
    let stem = wasm.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let mut merged = defaults.sections.get(&stem).cloned().unwrap_or_default();
    let mut sources = Vec::new();
    if !merged.is_empty() {
        sources.push(format!("[plugins.{stem}] of the host config"));
    }
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let file: toml::Table =
                toml::from_str(&text).map_err(|e| anyhow!("invalid plugin settings file {}: {e}", path.display()))?;
            for (k, v) in file {
                match (merged.get_mut(&k), v) {
                    (Some(toml::Value::Table(base)), toml::Value::Table(over)) => base.extend(over),
                    (_, v) => {
                        merged.insert(k, v);
                    }
                }
            }
            sources.push(path.display().to_string());
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(anyhow!("cannot read plugin settings {}: {e}", path.display())),
    }
    if sources.is_empty() {
        return Ok(PluginConfig { limits: defaults.limits, ..Default::default() });
    }
    let from = sources.join(" and ");
    let bad = |what: String| anyhow!("invalid plugin settings ({from}): {what}");
    let sidecar: Sidecar =
        serde::Deserialize::deserialize(toml::Value::Table(merged)).map_err(|e: toml::de::Error| bad(e.to_string()))?;
    let defaults = defaults.limits;
    let mut settings = HashMap::new();
    for (k, v) in sidecar.settings {
        let v = match v {
            toml::Value::String(s) => s,
            toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Boolean(_) => v.to_string(),
            other => {
                return Err(bad(format!("setting `{k}` is a {}; use a string, number or boolean", other.type_str())));
            }
        };
        settings.insert(k, v);
    }
    for (k, var) in sidecar.secrets {
        let value =
            std::env::var(&var).map_err(|_| bad(format!("secret `{k}`: the environment variable {var} is not set")))?;
        settings.insert(k, value);
    }
    let l = sidecar.limits;
    let mut limits = defaults;
    if let Some(ms) = l.call_timeout_ms {
        if !(1..=600_000).contains(&ms) {
            return Err(bad(format!("limits.call_timeout_ms must be between 1 and 600000, got {ms}")));
        }
        limits.call_timeout = Duration::from_millis(ms);
    }
    if let Some(mb) = l.max_memory_mb {
        if !(1..=4096).contains(&mb) {
            return Err(bad(format!("limits.max_memory_mb must be between 1 and 4096, got {mb}")));
        }
        limits.max_memory_bytes = mb << 20;
    }
    if let Some(n) = l.max_rows_per_event {
        if n == 0 {
            return Err(bad("limits.max_rows_per_event must be at least 1".into()));
        }
        limits.output.max_rows_per_event = n;
    }
    if let Some(n) = l.max_bytes_per_event {
        if n == 0 {
            return Err(bad("limits.max_bytes_per_event must be at least 1".into()));
        }
        limits.output.max_bytes_per_event = n;
    }
    let d = &sidecar.delivery;
    if d.max_attempts == Some(0) {
        return Err(bad("delivery.max_attempts must be at least 1".into()));
    }
    if let Some(p) = &d.priority {
        p.parse::<crate::priority::Priority>().map_err(|e| bad(format!("delivery.priority: {e}")))?;
    }
    if d.retry_base_ms == Some(0) || d.retry_max_ms == Some(0) {
        return Err(bad("delivery.retry_base_ms and retry_max_ms must be at least 1".into()));
    }
    let table_prefix = sidecar.clickhouse.table_prefix;
    if let Some(p) = &table_prefix {
        crate::writer::schema::check_identifier("clickhouse.table_prefix", p).map_err(bad)?;
    }
    for dir in &sidecar.grants.read_dirs {
        if !dir.is_absolute() || !dir.is_dir() {
            return Err(bad(format!("grants.read_dirs: {} is not an absolute path to a directory", dir.display())));
        }
    }
    Ok(PluginConfig { settings, limits, delivery: sidecar.delivery, table_prefix, grants: sidecar.grants })
}

/// The store's resource limits, which also report the instance's linear memory size to
/// `sluice_plugin_memory_bytes` (refreshed at scrape time from [`LoadedPlugin::memory_bytes`]).
struct MemoryMeter {
    limits: StoreLimits,
    bytes: Arc<std::sync::atomic::AtomicUsize>,
}

impl wasmtime::ResourceLimiter for MemoryMeter {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        let ok = self.limits.memory_growing(current, desired, maximum)?;
        if ok {
            self.bytes.store(desired, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(ok)
    }
    fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }
    fn instances(&self) -> usize {
        self.limits.instances()
    }
    fn tables(&self) -> usize {
        self.limits.tables()
    }
    fn memories(&self) -> usize {
        self.limits.memories()
    }
}

/// A plugin call failed as a whole.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The plugin trapped (panic, deadline, memory limit, bad output); the instance is gone.
    #[error("plugin `{plugin}` trapped: {reason}")]
    Trap { plugin: String, reason: String },
}

/// The outcome of a successful `handle-batch` call, rows already checked and encoded.
#[derive(Debug)]
pub struct BatchResult {
    pub rows: DecodedRows,
    /// Events that failed: (index, permanent?, message). Includes rows refused by the host.
    pub failures: Vec<EventFailure>,
}

#[derive(Debug, Clone)]
pub struct EventFailure {
    pub event: u32,
    pub permanent: bool,
    pub message: String,
}

impl LoadedPlugin {
    /// Reads, compiles and checks a plugin file. Errors name the file and what is wrong.
    /// Loads `path` with its configuration (see [`read_sidecar`]) over the host's defaults.
    pub fn load(engine: &SandboxEngine, path: &Path, defaults: &PluginDefaults) -> Result<LoadedPlugin> {
        let PluginConfig { settings, limits, delivery, table_prefix, grants } = read_sidecar(path, defaults)?;
        let bytes = std::fs::read(path).with_context(|| format!("cannot read plugin file {}", path.display()))?;
        let hash = hex::encode(Sha256::digest(&bytes));
        let compile_started = std::time::Instant::now();
        let (component, cached) = engine
            .compile(&bytes, &hash)
            .map_err(|e| anyhow!("{} is not a valid WebAssembly component: {}", path.display(), first_line(&e)))?;
        let compile_ms = compile_started.elapsed().as_millis() as u64;
        let mut linker: Linker<HostState> = Linker::new(&engine.engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        bindings::Plugin::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |s| s)?;
        let instance_pre = linker
            .instantiate_pre(&component)
            .map_err(|e| anyhow!("{} does not match the sluice:plugin@0.1.0 world: {e:#}", path.display()))?;
        let pre = bindings::PluginPre::new(instance_pre)
            .map_err(|e| anyhow!("{} does not export the sluice:plugin@0.1.0 handler: {e:#}", path.display()))?;
        let mut plugin = LoadedPlugin {
            path: path.to_path_buf(),
            hash,
            manifest: wit::Manifest {
                name: String::new(),
                version: String::new(),
                subscriptions: vec![],
                tables: vec![],
                extensions: vec![],
            },
            tables: vec![],
            limits,
            settings: Arc::new(settings),
            delivery,
            grants,
            memory_bytes: Default::default(),
            compiled: (cached, compile_ms),
            engine: engine.clone(),
            pre,
        };
        let mut inst = plugin.instantiate().with_context(|| format!("cannot instantiate {}", path.display()))?;
        inst.store.set_epoch_deadline(SandboxEngine::ticks(limits.call_timeout));
        let manifest = inst
            .bindings
            .sluice_plugin_handler()
            .call_describe(&mut inst.store)
            .map_err(|e| anyhow!("{}: describe() failed: {e:#}", path.display()))?;
        plugin.tables = check_manifest(&manifest).map_err(|e| anyhow!("{}: bad manifest: {e}", path.display()))?;
        if let Some(prefix) = &table_prefix {
            for t in &mut plugin.tables {
                t.name = format!("{prefix}{}", t.name);
            }
        }
        if let Some(types) = &plugin.delivery.event_types {
            if let Some(t) = types.iter().find(|t| !manifest.subscriptions.contains(t)) {
                bail!(
                    "{}: delivery.event_types lists `{t}`, which the plugin does not subscribe to ({})",
                    path.with_extension("toml").display(),
                    manifest.subscriptions.join(", ")
                );
            }
        }
        plugin.manifest = manifest;
        Ok(plugin)
    }

    /// The event types to consume: the subscriptions, or the sidecar's subset of them.
    pub fn consumed_event_types(&self) -> Vec<String> {
        match &self.delivery.event_types {
            Some(t) => self.manifest.subscriptions.iter().filter(|s| t.contains(s)).cloned().collect(),
            None => self.manifest.subscriptions.clone(),
        }
    }

    /// The host's settings with this plugin's delivery overrides.
    pub fn delivery_settings(&self, host: &crate::config::Settings) -> crate::config::Settings {
        let mut s = host.clone();
        let d = &self.delivery;
        if let Some(n) = d.max_attempts {
            s.max_attempts = n;
        }
        if let Some(ms) = d.retry_base_ms {
            s.retry_base = Duration::from_millis(ms);
        }
        if let Some(ms) = d.retry_max_ms {
            s.retry_max = Duration::from_millis(ms);
        }
        if let Some(p) = d.priority.as_deref().and_then(|p| p.parse().ok()) {
            for t in &self.manifest.subscriptions {
                s.priorities.insert(t.clone(), p);
            }
        }
        s
    }

    pub fn name(&self) -> &str {
        &self.manifest.name
    }

    /// True if both were loaded with the same sidecar settings.
    pub fn settings_equal(&self, other: &LoadedPlugin) -> bool {
        self.settings == other.settings
    }

    /// The linear memory of the plugin's latest instance, in bytes.
    pub fn memory_bytes(&self) -> usize {
        self.memory_bytes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A short form of the version hash for logs.
    pub fn short_hash(&self) -> &str {
        &self.hash[..12]
    }

    /// The WASI context: empty, plus what the sidecar's `[grants]` allow.
    fn wasi_ctx(&self) -> Result<WasiCtx> {
        let mut b = WasiCtx::builder();
        for dir in &self.grants.read_dirs {
            let guest = dir.to_string_lossy();
            b.preopened_dir(dir, guest.as_ref(), wasmtime_wasi::FsPerms::ReadOnly)
                .map_err(|e| anyhow!("grants.read_dirs: cannot open {}: {e}", dir.display()))?;
        }
        for var in &self.grants.env {
            if let Ok(v) = std::env::var(var) {
                b.env(var, v);
            }
        }
        Ok(b.build())
    }

    /// A fresh sandbox of this version.
    pub fn instantiate(&self) -> Result<PluginInstance> {
        let limits = StoreLimitsBuilder::new()
            .memory_size(self.limits.max_memory_bytes)
            .instances(16)
            .tables(64)
            .memories(16)
            .trap_on_grow_failure(true)
            .build();
        let state = HostState {
            wasi: self.wasi_ctx()?,
            table: ResourceTable::new(),
            limits: MemoryMeter { limits, bytes: self.memory_bytes.clone() },
            plugin: Arc::from(self.manifest.name.as_str()),
            settings: self.settings.clone(),
            last_panic: None,
        };
        let mut store = Store::new(&self.engine.engine, state);
        store.limiter(|s| &mut s.limits);
        store.set_epoch_deadline(SandboxEngine::ticks(self.limits.call_timeout));
        let bindings = self.pre.instantiate(&mut store)?;
        Ok(PluginInstance { store, bindings })
    }
}

/// Checks a manifest; returns its table declarations.
pub fn check_manifest(m: &wit::Manifest) -> Result<Vec<TableSchema>> {
    let name_ok = !m.name.is_empty()
        && m.name.len() <= 64
        && m.name.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && !m.name.starts_with('-');
    if !name_ok {
        bail!("plugin name `{}` must be 1-64 lower-case letters, digits and `-`", m.name);
    }
    if m.subscriptions.is_empty() {
        bail!("plugin `{}` subscribes to no event type", m.name);
    }
    for s in &m.subscriptions {
        if s.is_empty() || s.len() > 200 || s.bytes().any(|c| c.is_ascii_whitespace() || c.is_ascii_control()) {
            bail!("plugin `{}`: event type `{s}` must be non-empty, without spaces", m.name);
        }
    }
    if m.tables.is_empty() {
        bail!("plugin `{}` declares no table", m.name);
    }
    if m.tables.len() > u16::MAX as usize {
        bail!("plugin `{}` declares too many tables", m.name);
    }
    let mut tables: Vec<TableSchema> = Vec::new();
    for t in &m.tables {
        let s = TableSchema::from_wit(t).map_err(|e| anyhow!("{e}"))?;
        if tables.iter().any(|x| x.name == s.name) {
            bail!("table `{}` is declared twice", s.name);
        }
        tables.push(s);
    }
    Ok(tables)
}

/// A live instance of a plugin version.
pub struct PluginInstance {
    store: Store<HostState>,
    bindings: bindings::Plugin,
}

impl PluginInstance {
    /// Calls `handle-batch` and checks its rows against the declared tables. A trap (including
    /// a deadline overrun or the memory limit) or a malformed row buffer is a [`CallError`];
    /// the instance must then be dropped.
    /// `entries`: each event's entry-column value (see `writer::dedup`), or empty.
    pub fn handle_batch(
        &mut self,
        plugin: &LoadedPlugin,
        events: &[wit::Event],
        entries: &[u64],
    ) -> Result<BatchResult, CallError> {
        self.store.set_epoch_deadline(SandboxEngine::ticks(plugin.limits.call_timeout));
        let out = self.bindings.sluice_plugin_handler().call_handle_batch(&mut self.store, events).map_err(|e| {
            let panic = self.store.data_mut().last_panic.take();
            CallError::Trap { plugin: plugin.name().to_string(), reason: describe_trap(&e, plugin, panic) }
        })?;
        let rows = decode_rows(&out.rows, &plugin.tables, events.len(), entries, plugin.limits.output)
            .map_err(|e| CallError::Trap { plugin: plugin.name().to_string(), reason: e.to_string() })?;
        let mut failures: Vec<EventFailure> = Vec::with_capacity(out.failures.len() + rows.rejected.len());
        for f in out.failures {
            if (f.event as usize) < events.len() {
                failures.push(EventFailure {
                    event: f.event,
                    permanent: matches!(f.kind, wit::FailureKind::Permanent),
                    message: f.message.chars().take(2048).collect(),
                });
            }
        }
        for (event, message) in &rows.rejected {
            // A row that does not fit its column will not fit on a retry either.
            failures.push(EventFailure { event: *event, permanent: true, message: message.clone() });
        }
        Ok(BatchResult { rows, failures })
    }
}

/// The first line of an error, without wasmparser's dump of the bytes it expected.
fn first_line(e: &wasmtime::Error) -> String {
    let text = format!("{e:#}");
    let line = text.lines().next().unwrap_or("").to_string();
    match line.find(" - expected=") {
        Some(i) => line[..i].to_string(),
        None => line,
    }
}

/// A one-line reason for a trap: the guest's panic message if it sent one, else the trap kind
/// (without wasmtime's backtrace).
fn describe_trap(e: &wasmtime::Error, plugin: &LoadedPlugin, panic: Option<String>) -> String {
    if let Some(trap) = e.downcast_ref::<wasmtime::Trap>() {
        return match (trap, panic) {
            (wasmtime::Trap::Interrupt, _) => {
                format!("deadline of {:?} exceeded (call_timeout)", plugin.limits.call_timeout)
            }
            (wasmtime::Trap::StackOverflow, _) => "stack overflow (max_wasm_stack 512 KiB)".into(),
            (wasmtime::Trap::UnreachableCodeReached, Some(p)) => p,
            (other, _) => {
                let text = other.to_string();
                if text.contains("memory") {
                    format!("{text} (memory limit {} MiB)", plugin.limits.max_memory_bytes >> 20)
                } else {
                    text
                }
            }
        };
    }
    if let Some(p) = panic {
        return p;
    }
    let text = format!("{e:#}");
    let root = text.rsplit(": ").next().unwrap_or(&text);
    if text.contains("memory") && text.contains("grow") {
        return format!("memory limit of {} MiB exceeded: {root}", plugin.limits.max_memory_bytes >> 20);
    }
    root.to_string()
}

/// The outcome of running a batch through a plugin, with traps isolated to their events.
#[derive(Debug, Default)]
pub struct BatchOutcome {
    /// RowBinary rows per declared table, from the events that succeeded.
    pub tables: Vec<rows::TableRows>,
    /// Events that failed, by index in the batch.
    pub failures: Vec<EventFailure>,
    /// Plugin calls made (more than one when a trap had to be isolated).
    pub calls: u32,
}

/// A plugin version with at most one live instance, which it replaces after a trap.
///
/// Isolation policy: when a call traps, the batch is split in halves and each half is called
/// again on a fresh instance, down to single events. Only events that trap on their own fail
/// (transiently, so they follow the retry rules); their batch-mates are handled normally.
pub struct Sandbox {
    pub plugin: Arc<LoadedPlugin>,
    instance: Option<PluginInstance>,
}

impl Sandbox {
    pub fn new(plugin: Arc<LoadedPlugin>) -> Self {
        Sandbox { plugin, instance: None }
    }

    /// Runs `events` through the plugin. Never fails as a whole. `entries`: each event's
    /// entry-column value (see `writer::dedup`), or empty.
    pub fn run(&mut self, events: &[wit::Event], entries: &[u64]) -> BatchOutcome {
        let mut out =
            BatchOutcome { tables: vec![rows::TableRows::default(); self.plugin.tables.len()], ..Default::default() };
        self.run_into(events, entries, 0, &mut out);
        out.failures.sort_by_key(|f| f.event);
        out
    }

    fn run_into(&mut self, events: &[wit::Event], entries: &[u64], offset: u32, out: &mut BatchOutcome) {
        if events.is_empty() {
            return;
        }
        out.calls += 1;
        let result = match self.instance.take() {
            Some(inst) => Ok(inst),
            None => self.plugin.instantiate(),
        }
        .map_err(|e| CallError::Trap {
            plugin: self.plugin.name().to_string(),
            reason: format!("cannot instantiate: {e:#}"),
        })
        .and_then(|mut inst| {
            let r = inst.handle_batch(&self.plugin, events, entries);
            if r.is_ok() {
                self.instance = Some(inst);
            }
            r
        });
        match result {
            Ok(r) => {
                for (dst, src) in out.tables.iter_mut().zip(r.rows.tables) {
                    dst.append(src, offset);
                }
                out.failures.extend(r.failures.into_iter().map(|mut f| {
                    f.event += offset;
                    f
                }));
            }
            Err(CallError::Trap { reason, .. }) if events.len() == 1 => {
                out.failures.push(EventFailure {
                    event: offset,
                    permanent: false,
                    message: format!("plugin trapped: {reason}"),
                });
            }
            Err(CallError::Trap { reason, .. }) => {
                tracing::warn!(plugin = self.plugin.name(), events = events.len(), %reason, "plugin call trapped; isolating the culprit");
                let mid = events.len() / 2;
                let (head, tail) = entries.split_at(mid.min(entries.len()));
                self.run_into(&events[..mid], head, offset, out);
                self.run_into(&events[mid..], tail, offset + mid as u32, out);
            }
        }
    }
}
