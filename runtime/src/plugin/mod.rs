//! Plugins: loading a component file, checking its manifest, and calling it with batches.
//!
//! A [`LoadedPlugin`] is one version of one plugin (identified by the SHA-256 of its file),
//! compiled and checked once. A [`sandbox::PluginInstance`] is a live sandbox of it, reused for
//! batch after batch until it traps.
//!
//! - `engine`: the one wasmtime configuration (sandbox settings, compiled-code cache);
//! - `config`: a plugin's configuration (host defaults, host config section, sidecar file);
//! - `identity`: which plugin a file is (its name bound to its file name);
//! - `host_api`: what an instance's store holds and the `host` interface (logs bounded), the
//!   resource limiter;
//! - `sandbox`: calling a plugin within its deadline, isolating the events that trap;
//! - `rows`: the packed rows a plugin returns, checked and turned into RowBinary.

pub mod config;
pub mod engine;
pub mod host_api;
pub mod identity;
mod json_batch;
pub mod rows;
pub mod sandbox;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use sha2::{Digest, Sha256};
use wasmtime::component::Linker;
use wasmtime_wasi::WasiCtx;

pub use config::{Delivery, Grants, PluginConfig, PluginDefaults, read_sidecar};
pub use engine::SandboxEngine;
use host_api::HostState;
use rows::OutputLimits;
pub use rows::TableRows;
pub use sandbox::{BatchOutcome, Sandbox, off_reactor};

use crate::schema::TableSchema;

pub use crate::contract::wit;
pub(crate) use crate::contract::{bindings, bindings_json};

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

/// How to fix a component built against another version of the contract.
const WIT_FIX: &str = "build it against a contract this host speaks, package sluice:plugin@0.1.0 (wit/sluice.wit, the Rust SDK) or @0.2.0 (wit/0.2.0/sluice.wit, the Python and JavaScript SDKs) of this release (`sluice plugin new` makes a project that does), or run a host that supports its version";

/// A compiled version, ready to instantiate, in the contract version it speaks.
enum PluginPre {
    /// `sluice:plugin@0.1.0`: events as records, rows packed.
    Records(bindings::PluginPre<HostState>),
    /// `sluice:plugin@0.2.0`: events and rows as JSON text (see `json_batch`).
    Json(bindings_json::PluginPre<HostState>),
}

/// A plugin file must be a WebAssembly component: a core module (what `wasm32-wasip1` or
/// `wasm32-unknown-unknown` builds give) or something else entirely is named as such, with the
/// fix.
fn check_header(path: &Path, bytes: &[u8]) -> Result<()> {
    match bytes.get(..8) {
        Some([0, b'a', b's', b'm', 0x0d, 0, 1, 0]) => Ok(()),
        Some([0, b'a', b's', b'm', 1, 0, 0, 0]) => Err(anyhow!(
            "{} is not a valid WebAssembly component: it is a core WebAssembly module — build the plugin for wasm32-wasip2 (`cargo build --target wasm32-wasip2`, componentize-py, jco componentize), or wrap a WASI module with `wasm-tools component new --adapt`",
            path.display()
        )),
        Some([0, b'a', b's', b'm', ..]) => Err(anyhow!(
            "{} is not a valid WebAssembly component: it starts with \\0asm but its version bytes {:02x?} are neither a component's nor a core module's (a truncated or corrupt file, or a toolchain newer than this host)",
            path.display(),
            &bytes[4..8]
        )),
        _ => Err(anyhow!(
            "{} is not a valid WebAssembly component: it does not start with \\0asm as WebAssembly does (it starts with {:?}) — the plugin's source, or a text file?",
            path.display(),
            String::from_utf8_lossy(&bytes[..bytes.len().min(16)])
        )),
    }
}

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
    /// `[rollout]`: this file is a candidate beside the running version of its plugin.
    pub rollout: Option<config::RolloutSettings>,
    /// Linear memory of the latest instance, in bytes.
    memory_bytes: Arc<std::sync::atomic::AtomicUsize>,
    /// The log rate of all its instances.
    logs: Arc<host_api::LogBudget>,
    /// Whether the compiled code came from the cache, and how long getting it took.
    pub compiled: (bool, u64),
    engine: SandboxEngine,
    pre: PluginPre,
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin").field("name", &self.manifest.name).field("hash", &self.hash).finish()
    }
}

impl LoadedPlugin {
    /// Reads, compiles and checks a plugin file. Errors name the file and what is wrong.
    /// Loads `path` with its configuration (see [`read_sidecar`]) over the host's defaults.
    /// Compiling runs on the blocking pool, and `describe` (like every call) within the
    /// plugin's `call_timeout`: a plugin that never answers costs its own load that much, never
    /// the host.
    pub async fn load(engine: &SandboxEngine, path: &Path, defaults: &PluginDefaults) -> Result<LoadedPlugin> {
        let PluginConfig { name: bound_name, settings, limits, delivery, table_prefix, grants, rollout } =
            read_sidecar(path, defaults)?;
        // A canary's file may name its plugin as `<plugin>.<label>.wasm` (see `identity`).
        let bound_name = bound_name.or_else(|| rollout.as_ref().and_then(|_| identity::canary_name(path)));
        let bytes =
            tokio::fs::read(path).await.with_context(|| format!("cannot read plugin file {}", path.display()))?;
        check_header(path, &bytes)?;
        let hash = hex::encode(Sha256::digest(&bytes));
        let compile_started = std::time::Instant::now();
        let (compiler, h) = (engine.clone(), hash.clone());
        let (component, cached) = tokio::task::spawn_blocking(move || compiler.compile(&bytes, &h))
            .await
            .context("the compiler stopped")?
            .map_err(|e| {
                anyhow!("{} is not a valid WebAssembly component: {}", path.display(), sandbox::first_line(&e))
            })?;
        let compile_ms = compile_started.elapsed().as_millis() as u64;
        let mut linker: Linker<HostState> = Linker::new(&engine.engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        bindings::Plugin::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |s| s)?;
        bindings_json::Plugin::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |s| s)?;
        let instance_pre = linker.instantiate_pre(&component).map_err(|e| {
            anyhow!(
                "{} does not match the sluice:plugin world ({}): {WIT_FIX}",
                path.display(),
                sandbox::first_line(&e)
            )
        })?;
        let pre = match bindings::PluginPre::new(instance_pre.clone()) {
            Ok(pre) => PluginPre::Records(pre),
            Err(records) => PluginPre::Json(bindings_json::PluginPre::new(instance_pre).map_err(|_| {
                let exports: Vec<String> =
                    component.component_type().exports(&engine.engine).map(|(name, _)| name.to_string()).collect();
                anyhow!(
                    "{} does not export the sluice:plugin handler, neither @0.1.0 nor @0.2.0 (it exports: {}; {}): {WIT_FIX}",
                    path.display(),
                    if exports.is_empty() { "nothing".to_string() } else { exports.join(", ") },
                    sandbox::first_line(&records)
                )
            })?),
        };
        let mut plugin = LoadedPlugin {
            path: path.to_path_buf(),
            hash,
            manifest: wit::Manifest {
                // Until `describe` answers, its logs carry the name it must have.
                name: identity::expected_name(path, bound_name.as_deref()),
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
            rollout,
            memory_bytes: Default::default(),
            logs: Default::default(),
            compiled: (cached, compile_ms),
            engine: engine.clone(),
            pre,
        };
        let deadline = limits.call_timeout;
        let (plugin_, shown) = (Arc::new(plugin), path.display().to_string());
        let described = {
            let p = plugin_.clone();
            sandbox::off_reactor(async move {
                let mut inst = p.instantiate(deadline).await.with_context(|| format!("cannot instantiate {shown}"))?;
                inst.describe(deadline).await.map_err(|e| anyhow!("{shown}: describe() failed: {e:#}"))
            })
            .await
        };
        let manifest = described?;
        plugin = Arc::try_unwrap(plugin_).map_err(|_| anyhow!("{}: the plugin is still in use", path.display()))?;
        plugin.tables = check_manifest(&manifest).map_err(|e| anyhow!("{}: bad manifest: {e}", path.display()))?;
        identity::check(path, &manifest.name, bound_name.as_deref())?;
        if let Some(prefix) = &table_prefix {
            for t in &mut plugin.tables {
                t.name = format!("{prefix}{}", t.name);
            }
        }
        if let Some(types) = &plugin.delivery.event_types
            && let Some(t) = types.iter().find(|t| !manifest.subscriptions.contains(t))
        {
            bail!(
                "{}: delivery.event_types lists `{t}`, which the plugin does not subscribe to ({})",
                path.with_extension("toml").display(),
                manifest.subscriptions.join(", ")
            );
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

    /// The host's delivery policy with this plugin's `[delivery]` settings over it.
    pub fn delivery_policy(&self, host: &crate::policy::DeliveryPolicy) -> crate::policy::DeliveryPolicy {
        let mut p = host.clone();
        let d = &self.delivery;
        if let Some(n) = d.max_attempts {
            p.max_attempts = n;
        }
        if let Some(ms) = d.retry_base_ms {
            p.retry_base = Duration::from_millis(ms);
        }
        if let Some(ms) = d.retry_max_ms {
            p.retry_max = Duration::from_millis(ms);
        }
        if let Some(priority) = d.priority.as_deref().and_then(|p| p.parse().ok()) {
            p.priority = priority;
        }
        // Checked when the sidecar was read.
        if let Ok(i) = d.idempotency(host.idempotency.as_ref()) {
            p.idempotency = i;
        }
        p
    }

    pub fn name(&self) -> &str {
        &self.manifest.name
    }

    /// The version's identity with its settings: the same file with other settings is another
    /// candidate in a rollout.
    pub fn identity(&self) -> String {
        let mut settings: Vec<_> = self.settings.iter().collect();
        settings.sort();
        let mut h = Sha256::new();
        h.update(self.hash.as_bytes());
        for (k, v) in settings {
            h.update([0]);
            h.update(k.as_bytes());
            h.update([0]);
            h.update(v.as_bytes());
        }
        hex::encode(h.finalize())[..24].to_string()
    }

    /// True if both were loaded with the same sidecar settings.
    pub fn settings_equal(&self, other: &LoadedPlugin) -> bool {
        self.settings == other.settings
    }

    /// What the admin API shows of this version.
    pub fn summary(&self) -> crate::status::PluginSummary {
        let o = &self.limits.output;
        crate::status::PluginSummary {
            name: self.manifest.name.clone(),
            version: self.manifest.version.clone(),
            hash: self.hash.clone(),
            subscriptions: self.manifest.subscriptions.clone(),
            tables: self.tables.iter().map(|t| (t.name.clone(), t.guarantee.name())).collect(),
            call_timeout_ms: self.limits.call_timeout.as_millis() as u64,
            max_memory_bytes: self.limits.max_memory_bytes,
            max_rows_per_event: o.max_rows_per_event,
            max_bytes_per_event: o.max_bytes_per_event,
            memory: self.memory_bytes.clone(),
        }
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
