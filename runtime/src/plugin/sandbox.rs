//! Calling a plugin: live instances, the wall-clock bound on every call, and isolating the
//! events that make a call fail.
//!
//! Time policy: every call into a plugin — `describe`, `handle-batch`, and instantiation with
//! its start functions — has a deadline (`call_timeout`, or the share of it described below).
//! A loop in wasm traps at it (epoch interruption, 10 ms ticks); a wait inside a host call (a
//! sleep through `wasi:clocks`, a poll on a pollable) is cut off at it too, because every host
//! import is asynchronous and the call is a future raced against the deadline. Either way the
//! instance is discarded and the next call gets a fresh one.
//!
//! Isolation policy: when a call traps, the batch is split in halves and each half is called
//! again on a fresh instance, down to single events. Only events that trap on their own fail
//! (transiently, so they follow the retry rules); their batch-mates are handled normally. A
//! half gets the whole deadline again after a panic or a memory trap, but only its share of the
//! batch's deadline after the deadline was what ran out (at least [`MIN_SHARE`]); a single event
//! that runs out of its share is called once more alone with the whole deadline, so an honest
//! slow event never fails for its neighbours' time. Finding k endless loops among N events then
//! costs about k + 1 deadlines, not N of them, and a neighbour waiting for the same CPU is not
//! starved by the search (the gate gives its slot to others once a call runs long).
//!
//! CPU: calls run on Tokio's blocking pool ([`off_reactor`]), so wasm never holds a reactor
//! thread; the priority gate (`priority`) decides how many run at once and whose turn it is.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, anyhow};
use wasmtime::Store;

use super::host_api::{HostState, Limiter};
use super::rows::{self, DecodedRows, decode_rows};
use super::{LoadedPlugin, PluginPre, SandboxEngine, bindings, bindings_json, json_batch, wit};

/// The smallest share of a deadline a part of a batch gets while a deadline trap is isolated.
pub const MIN_SHARE: Duration = Duration::from_millis(50);

/// Runs `f` on Tokio's blocking pool, so that a plugin's CPU work never holds a reactor
/// thread; its async host calls and deadline still run on the runtime's timers.
pub async fn off_reactor<T: Send + 'static>(f: impl Future<Output = T> + Send + 'static) -> T {
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || handle.block_on(f)).await.expect("a plugin call does not panic the host")
}

/// A plugin call failed as a whole; the instance is gone.
#[derive(Debug, thiserror::Error)]
#[error("plugin `{plugin}` trapped: {reason}")]
pub struct CallError {
    pub plugin: String,
    pub reason: String,
    /// The call ran out of time (a loop, or a wait in a host call).
    pub deadline: bool,
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

/// A live instance of a plugin version.
pub struct PluginInstance {
    pub(super) store: Store<HostState>,
    pub(super) bindings: Bindings,
}

/// An instance's exports, in the contract version it speaks.
pub(super) enum Bindings {
    Records(bindings::Plugin),
    Json(bindings_json::Plugin),
}

impl LoadedPlugin {
    /// A fresh sandbox of this version; its start functions get `deadline`.
    pub async fn instantiate(&self, deadline: Duration) -> Result<PluginInstance> {
        let state = HostState {
            wasi: self.wasi_ctx()?,
            table: wasmtime::component::ResourceTable::new(),
            limiter: Limiter::new(self.limits.max_memory_bytes, self.memory_bytes.clone()),
            plugin: Arc::from(self.manifest.name.as_str()),
            settings: self.settings.clone(),
            logs: self.logs.clone(),
            last_panic: None,
        };
        let mut store = Store::new(&self.engine.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.set_epoch_deadline(SandboxEngine::ticks(deadline));
        let instantiated = async {
            Ok::<_, wasmtime::Error>(match &self.pre {
                PluginPre::Records(pre) => Bindings::Records(pre.instantiate_async(&mut store).await?),
                PluginPre::Json(pre) => Bindings::Json(pre.instantiate_async(&mut store).await?),
            })
        };
        let bindings = match tokio::time::timeout(deadline, instantiated).await {
            Ok(b) => b?,
            Err(_) => return Err(anyhow!("instantiation exceeded the deadline of {deadline:?} (call_timeout)")),
        };
        Ok(PluginInstance { store, bindings })
    }
}

impl PluginInstance {
    /// Calls `describe` within `deadline`.
    pub async fn describe(&mut self, deadline: Duration) -> Result<wit::Manifest> {
        self.store.set_epoch_deadline(SandboxEngine::ticks(deadline));
        let call = async {
            match &self.bindings {
                Bindings::Records(b) => b.sluice_plugin_handler().call_describe(&mut self.store).await,
                Bindings::Json(b) => {
                    b.sluice_plugin_handler().call_describe(&mut self.store).await.map(json_batch::manifest)
                }
            }
        };
        match tokio::time::timeout(deadline, call).await {
            Ok(Ok(m)) => Ok(m),
            Ok(Err(e)) => {
                let panic = self.store.data_mut().last_panic.take();
                let refused = self.store.data().limiter.memory_refused;
                Err(anyhow!("{}", describe_trap(&e, deadline, panic, refused)))
            }
            Err(_) => Err(anyhow!("{}", waited_too_long(deadline))),
        }
    }

    /// Calls `handle-batch` within `deadline` and checks its rows against the declared tables.
    /// A trap (including the deadline or the memory limit) or a malformed row buffer is a
    /// [`CallError`]; the instance must then be dropped.
    /// `entries`: each event's entry-column value (see `writer::dedup`), or empty.
    pub async fn handle_batch(
        &mut self,
        plugin: &LoadedPlugin,
        events: &[wit::Event],
        entries: &[u64],
        deadline: Duration,
    ) -> Result<BatchResult, CallError> {
        let trap = |reason: String, deadline: bool| CallError { plugin: plugin.name().to_string(), reason, deadline };
        self.store.set_epoch_deadline(SandboxEngine::ticks(deadline));
        // A 0.2.0 plugin's JSON rows are rewritten as packed rows, or are malformed.
        let call = async {
            match &self.bindings {
                Bindings::Records(b) => {
                    b.sluice_plugin_handler().call_handle_batch(&mut self.store, events).await.map(Ok)
                }
                Bindings::Json(b) => {
                    let (payloads, meta) = json_batch::events_json(events);
                    let out = b.sluice_plugin_handler().call_handle_json(&mut self.store, &payloads, &meta).await?;
                    Ok(json_batch::output(out))
                }
            }
        };
        let out = match tokio::time::timeout(deadline, call).await {
            Ok(Ok(Ok(out))) => out,
            Ok(Ok(Err(malformed))) => return Err(trap(malformed.to_string(), false)),
            Ok(Err(e)) => {
                let interrupted = matches!(e.downcast_ref::<wasmtime::Trap>(), Some(wasmtime::Trap::Interrupt));
                let panic = self.store.data_mut().last_panic.take();
                let refused = self.store.data().limiter.memory_refused;
                return Err(trap(describe_trap(&e, deadline, panic, refused), interrupted));
            }
            Err(_) => return Err(trap(waited_too_long(deadline), true)),
        };
        let rows = decode_rows(&out.rows, &plugin.tables, events.len(), entries, plugin.limits.output)
            .map_err(|e| trap(e.to_string(), false))?;
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

fn waited_too_long(deadline: Duration) -> String {
    format!("deadline of {deadline:?} exceeded (call_timeout) while the plugin waited in a host call (a sleep, a poll)")
}

/// The first line of an error, without wasmparser's dump of the bytes it expected.
pub(super) fn first_line(e: &wasmtime::Error) -> String {
    let text = format!("{e:#}");
    let line = text.lines().next().unwrap_or("").to_string();
    match line.find(" - expected=") {
        Some(i) => line[..i].to_string(),
        None => line,
    }
}

/// A one-line reason for a trap: the guest's panic message if it sent one, else the trap kind
/// (without wasmtime's backtrace), blamed on the limit that caused it.
fn describe_trap(e: &wasmtime::Error, deadline: Duration, panic: Option<String>, memory_refused: bool) -> String {
    let text = format!("{e:#}");
    if let Some(limit) = text.lines().find(|l| l.contains("memory limit of") || l.contains("table limit of")) {
        let at = limit.find("memory limit of").or_else(|| limit.find("table limit of")).unwrap_or(0);
        return limit[at..].to_string();
    }
    if let Some(trap) = e.downcast_ref::<wasmtime::Trap>() {
        return match (trap, panic) {
            (wasmtime::Trap::Interrupt, _) => format!("deadline of {deadline:?} exceeded (call_timeout)"),
            (wasmtime::Trap::StackOverflow, _) => "stack overflow (max_wasm_stack 512 KiB)".into(),
            (wasmtime::Trap::UnreachableCodeReached, Some(p)) => p,
            (wasmtime::Trap::MemoryOutOfBounds, _) if memory_refused => {
                "out of bounds memory access after the memory limit refused to grow".into()
            }
            (wasmtime::Trap::MemoryOutOfBounds, _) => {
                // Rust and C guests keep their stack in linear memory: overflowing it reads below
                // address 0, which is also out of bounds.
                "out of bounds memory access: a bug in the plugin, or its stack in linear memory overflowed (deep recursion)".into()
            }
            (other, _) => other.to_string(),
        };
    }
    if let Some(p) = panic {
        return p;
    }
    text.rsplit(": ").next().unwrap_or(&text).to_string()
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

impl BatchOutcome {
    /// One failure per event, in order (a plugin may report one twice, or a row of a failed
    /// event be refused too), and no rows for a failed event, whatever the plugin emitted for
    /// it (the SDKs drop them; a plugin written against the bare WIT might not): its retry, or
    /// the version it is handed to, writes them — once.
    fn settle_failures(&mut self) {
        self.failures.sort_by_key(|f| f.event);
        self.failures.dedup_by_key(|f| f.event);
        if self.failures.is_empty() {
            return;
        }
        let failed: std::collections::HashSet<u32> = self.failures.iter().map(|f| f.event).collect();
        for t in &mut self.tables {
            if t.events.iter().any(|(e, _, _)| failed.contains(e)) {
                *t = std::mem::take(t).without(|e| failed.contains(&e));
            }
        }
    }
}

/// A plugin version with at most one live instance, which it replaces after a trap.
pub struct Sandbox {
    pub plugin: Arc<LoadedPlugin>,
    instance: Option<PluginInstance>,
}

impl Sandbox {
    pub fn new(plugin: Arc<LoadedPlugin>) -> Self {
        Sandbox { plugin, instance: None }
    }

    /// Runs `events` through the plugin (see the module comment for deadlines and isolation).
    /// Never fails as a whole. `entries`: each event's entry-column value (see
    /// `writer::dedup`), or empty.
    pub async fn run(&mut self, events: &[wit::Event], entries: &[u64]) -> BatchOutcome {
        let mut out =
            BatchOutcome { tables: vec![rows::TableRows::default(); self.plugin.tables.len()], ..Default::default() };
        let full = self.plugin.limits.call_timeout;
        // Ranges of the batch still to call, each with its deadline; the first range first.
        let mut todo: Vec<(std::ops::Range<usize>, Duration)> = vec![(0..events.len(), full)];
        while let Some((range, deadline)) = todo.pop() {
            if range.is_empty() {
                continue;
            }
            out.calls += 1;
            let slice = &events[range.clone()];
            let slice_entries = entries.get(range.clone()).unwrap_or(&[]);
            let offset = range.start as u32;
            let mut inst = match self.instance.take() {
                Some(inst) => inst,
                None => match self.plugin.instantiate(deadline).await {
                    Ok(inst) => inst,
                    Err(e) => {
                        // Nothing of the events is at fault: they all fail (transiently), unsplit.
                        let message = format!("plugin trapped: cannot instantiate: {e:#}");
                        out.failures.extend(range.map(|i| EventFailure {
                            event: i as u32,
                            permanent: false,
                            message: message.clone(),
                        }));
                        continue;
                    }
                },
            };
            let result = inst.handle_batch(&self.plugin, slice, slice_entries, deadline).await;
            if result.is_ok() {
                self.instance = Some(inst);
            }
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
                // An event that ran out of its share gets one call alone with the whole
                // deadline: an honest slow event never fails for its neighbours' time.
                Err(e) if range.len() == 1 && e.deadline && deadline < full => todo.push((range, full)),
                Err(e) if range.len() == 1 => {
                    out.failures.push(EventFailure {
                        event: offset,
                        permanent: false,
                        message: format!("plugin trapped: {}", e.reason),
                    });
                }
                Err(e) => {
                    tracing::warn!(plugin = self.plugin.name(), events = range.len(), reason = %e.reason, "plugin call trapped; isolating the culprit");
                    let mid = range.start + range.len() / 2;
                    let share = |part: usize| -> Duration {
                        if e.deadline {
                            deadline.mul_f64(part as f64 / range.len() as f64).max(MIN_SHARE.min(full))
                        } else {
                            full
                        }
                    };
                    todo.push((mid..range.end, share(range.end - mid)));
                    todo.push((range.start..mid, share(mid - range.start)));
                }
            }
        }
        out.settle_failures();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_event_keeps_no_rows_and_fails_once() {
        // Events 0, 1, 2 with one row each (3 bytes apiece); the plugin failed event 1 twice.
        let rows =
            rows::TableRows { data: b"aaabbbccc".to_vec(), rows: 3, events: vec![(0, 3, 1), (1, 6, 1), (2, 9, 1)] };
        let fail = |event| EventFailure { event, permanent: false, message: "no".into() };
        let mut out = BatchOutcome { tables: vec![rows], failures: vec![fail(1), fail(1)], calls: 1 };
        out.settle_failures();
        assert_eq!(out.failures.len(), 1);
        assert_eq!(out.tables[0].data, b"aaaccc");
        assert_eq!(out.tables[0].rows, 2);
        assert_eq!(out.tables[0].events, vec![(0, 3, 1), (2, 6, 1)]);
    }
}
