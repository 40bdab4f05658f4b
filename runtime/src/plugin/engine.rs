//! The one place that configures wasmtime. Everything else in the host uses [`SandboxEngine`]
//! and never touches engine knobs.
//!
//! Policy (why each setting):
//! - Epoch interruption with a 10 ms tick: a call gets a wall-clock deadline (set before each
//!   batch) and an endless loop traps at it. Cheaper than fuel (about 20% vs 28% per call, as
//!   measured in DESIGN.md) and bounded by time, which is what operators reason about.
//! - `max_wasm_stack` 512 KiB: deep recursion traps instead of exhausting the host thread.
//! - Memory is bounded per instance by a `StoreLimiter` (`trap_on_grow_failure`), so a memory
//!   bomb traps in its own call.
//! - Component-model concurrency off: the host calls plugins synchronously, and the async
//!   machinery costs ~0.35 µs per call.
//! - Instances are reused across batches (a fresh instance per call costs 16-24 µs); a trapped
//!   instance is discarded and the next call gets a new one.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Result;
use wasmtime::{Config, Engine};

/// Epoch tick: the granularity of call deadlines.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// A wasmtime engine with Sluice's fixed sandbox settings and its epoch ticker.
#[derive(Clone)]
pub struct SandboxEngine {
    pub engine: Engine,
    _ticker: Arc<Ticker>,
}

struct Ticker {
    stop: Arc<AtomicBool>,
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl SandboxEngine {
    pub fn new() -> Result<Self> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.max_wasm_stack(512 * 1024);
        config.concurrency_support(false);
        config.wasm_component_model(true);
        let engine = Engine::new(&config)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (e, s) = (engine.clone(), stop.clone());
        std::thread::Builder::new().name("sluice-epoch".into()).spawn(move || {
            while !s.load(Ordering::Relaxed) {
                std::thread::sleep(EPOCH_TICK);
                e.increment_epoch();
            }
        })?;
        Ok(SandboxEngine { engine, _ticker: Arc::new(Ticker { stop }) })
    }

    /// Epoch ticks for a deadline.
    pub fn ticks(deadline: Duration) -> u64 {
        (deadline.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64
    }
}
