//! What a plugin instance's store holds, and the `host` interface the plugin may call.
//!
//! Containment policy (what a plugin can do to the host through these):
//! - WASI: an empty context — no files, network, environment, arguments or stdio — plus what the
//!   sidecar's `[grants]` add. Every WASI import is asynchronous on the host: a call that waits
//!   (a sleep through `wasi:clocks`, a poll) is cut off by the call's deadline like a loop is.
//! - `log`: bounded — the message to [`MAX_LOG_MESSAGE`] bytes, at most [`MAX_LOG_FIELDS`]
//!   fields of at most [`MAX_LOG_KEY`] / [`MAX_LOG_VALUE`] bytes — and rate-limited per plugin
//!   (a burst of [`LOG_BURST`] lines, then [`LOG_PER_SECOND`] a second); lines over the rate are
//!   dropped, counted in `sluice_plugin_log_lines_dropped_total{plugin}` and said once every
//!   ten seconds.
//! - Memory and tables: [`Limiter`] bounds the *total* of every linear memory and every table an
//!   instance creates (a module may declare several), not each one alone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::sluice::plugin::host::{self, Level};
use super::bindings_json::sluice::plugin::host as json_host;
use super::wit;

pub const MAX_LOG_MESSAGE: usize = 4096;
pub const MAX_LOG_FIELDS: usize = 16;
pub const MAX_LOG_KEY: usize = 64;
pub const MAX_LOG_VALUE: usize = 1024;
pub const LOG_BURST: f64 = 200.0;
pub const LOG_PER_SECOND: f64 = 100.0;
/// Elements all the tables of one instance may hold together (function references, 8-16
/// bytes each).
pub const MAX_TABLE_ELEMENTS: usize = 1_000_000;

/// What an instance's store holds: an empty WASI context (no files, network, environment,
/// arguments or stdio, unless granted) and the plugin's own settings.
pub struct HostState {
    pub(super) wasi: WasiCtx,
    pub(super) table: ResourceTable,
    pub(super) limiter: Limiter,
    pub(super) plugin: Arc<str>,
    pub(super) settings: Arc<HashMap<String, String>>,
    pub(super) logs: Arc<LogBudget>,
    /// The last panic message the guest reported (the SDK's panic hook logs it with
    /// `panic=true`), for the trap's error.
    pub(super) last_panic: Option<String>,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// `s` cut to at most `max` bytes, on a character boundary.
fn cut(s: &str, max: usize) -> &str {
    &s[..s.floor_char_boundary(max)]
}

impl host::Host for HostState {
    async fn log(&mut self, level: Level, message: String, fields: Vec<(String, String)>) {
        if fields.iter().any(|(k, v)| k == "panic" && v == "true") {
            self.last_panic = Some(cut(&message, 1024).to_string());
        }
        if !self.logs.take(&self.plugin) {
            return;
        }
        let plugin = &*self.plugin;
        let message = cut(&message, MAX_LOG_MESSAGE);
        let mut shown: Vec<String> = fields
            .iter()
            .take(MAX_LOG_FIELDS)
            .map(|(k, v)| format!("{}={}", cut(k, MAX_LOG_KEY), cut(v, MAX_LOG_VALUE)))
            .collect();
        if fields.len() > MAX_LOG_FIELDS {
            shown.push(format!("(+{} fields dropped)", fields.len() - MAX_LOG_FIELDS));
        }
        let fields = shown.join(" ");
        match level {
            Level::Trace => tracing::trace!(target: "sluice::plugin_log", plugin, %fields, "{message}"),
            Level::Debug => tracing::debug!(target: "sluice::plugin_log", plugin, %fields, "{message}"),
            Level::Info => tracing::info!(target: "sluice::plugin_log", plugin, %fields, "{message}"),
            Level::Warn => tracing::warn!(target: "sluice::plugin_log", plugin, %fields, "{message}"),
            Level::Error => tracing::error!(target: "sluice::plugin_log", plugin, %fields, "{message}"),
        }
    }

    async fn config_get(&mut self, key: String) -> Option<String> {
        self.settings.get(&key).cloned()
    }
}

impl wit::Host for HostState {}

/// The same `host` interface for components of `sluice:plugin@0.2.0`.
impl json_host::Host for HostState {
    async fn log(&mut self, level: json_host::Level, message: String, fields: Vec<(String, String)>) {
        let level = match level {
            json_host::Level::Trace => Level::Trace,
            json_host::Level::Debug => Level::Debug,
            json_host::Level::Info => Level::Info,
            json_host::Level::Warn => Level::Warn,
            json_host::Level::Error => Level::Error,
        };
        host::Host::log(self, level, message, fields).await
    }

    async fn config_get(&mut self, key: String) -> Option<String> {
        host::Host::config_get(self, key).await
    }
}

impl super::bindings_json::sluice::plugin::types::Host for HostState {}

/// A plugin's log rate: a token bucket shared by all its instances.
pub struct LogBudget {
    state: Mutex<Bucket>,
}

struct Bucket {
    tokens: f64,
    refilled: Instant,
    dropped: u64,
    reported: Instant,
}

impl Default for LogBudget {
    fn default() -> Self {
        let now = Instant::now();
        LogBudget { state: Mutex::new(Bucket { tokens: LOG_BURST, refilled: now, dropped: 0, reported: now }) }
    }
}

impl LogBudget {
    /// Whether one more line may be written now; counts (and now and then reports) the
    /// dropped ones.
    pub fn take(&self, plugin: &str) -> bool {
        let mut b = self.state.lock().unwrap();
        let now = Instant::now();
        b.tokens = (b.tokens + now.duration_since(b.refilled).as_secs_f64() * LOG_PER_SECOND).min(LOG_BURST);
        b.refilled = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return true;
        }
        b.dropped += 1;
        metrics::counter!("sluice_plugin_log_lines_dropped_total", "plugin" => plugin.to_string()).increment(1);
        if now.duration_since(b.reported) >= Duration::from_secs(10) {
            tracing::warn!(
                plugin,
                dropped = b.dropped,
                "the plugin logs more than {LOG_PER_SECOND} lines a second: lines over that rate are dropped"
            );
            b.dropped = 0;
            b.reported = now;
        }
        false
    }
}

/// The store's resource limits. Counts of instances, tables and memories are capped, and so is
/// the total size of all linear memories and of all tables together. It also reports the
/// instance's memory to `sluice_plugin_memory_bytes`, and remembers whether the memory limit
/// refused a grow (so that a trap is blamed on the right cause).
pub struct Limiter {
    max_memory_bytes: usize,
    memory_bytes: usize,
    table_elements: usize,
    /// Set when a grow was refused for the memory limit.
    pub memory_refused: bool,
    /// Where the instance's current memory size is reported.
    pub(super) reported: Arc<std::sync::atomic::AtomicUsize>,
}

impl Limiter {
    pub fn new(max_memory_bytes: usize, reported: Arc<std::sync::atomic::AtomicUsize>) -> Self {
        Limiter { max_memory_bytes, memory_bytes: 0, table_elements: 0, memory_refused: false, reported }
    }
}

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let total = self.memory_bytes - current.min(self.memory_bytes) + desired;
        if total > self.max_memory_bytes {
            self.memory_refused = true;
            // Trap rather than let the guest see a failed grow: an allocation failure in most
            // guests is an abort anyway, and the trap names the limit.
            wasmtime::bail!(
                "memory limit of {} MiB exceeded (the plugin asked for {} MiB in all)",
                self.max_memory_bytes >> 20,
                total.div_ceil(1 << 20)
            );
        }
        self.memory_bytes = total;
        self.reported.store(total, std::sync::atomic::Ordering::Relaxed);
        Ok(true)
    }

    fn table_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let total = self.table_elements - current.min(self.table_elements) + desired;
        if total > MAX_TABLE_ELEMENTS {
            wasmtime::bail!("table limit of {MAX_TABLE_ELEMENTS} elements exceeded");
        }
        self.table_elements = total;
        Ok(true)
    }

    fn instances(&self) -> usize {
        16
    }
    fn tables(&self) -> usize {
        64
    }
    fn memories(&self) -> usize {
        16
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::ResourceLimiter;

    #[test]
    fn memories_are_bounded_in_total_not_each() {
        let mut l = Limiter::new(10 << 20, Default::default());
        assert!(l.memory_growing(0, 6 << 20, None).unwrap());
        // A second memory of 6 MiB would pass a per-memory limit of 10 MiB, not the total.
        assert!(l.memory_growing(0, 6 << 20, None).is_err());
        assert!(l.memory_refused);
        // The first memory growing within the total is fine.
        assert!(l.memory_growing(6 << 20, 9 << 20, None).unwrap());
        assert!(l.table_growing(0, MAX_TABLE_ELEMENTS, None).unwrap());
        assert!(l.table_growing(0, 1, None).is_err());
    }

    #[test]
    fn logs_are_rate_limited() {
        let b = LogBudget::default();
        let allowed = (0..1000).filter(|_| b.take("p")).count();
        assert!((200..=210).contains(&allowed), "{allowed}");
    }
}
