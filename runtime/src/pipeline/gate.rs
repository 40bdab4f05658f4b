//! Who runs a plugin call next when the host is saturated: priorities, fairness between
//! plugins, and calls that run long.
//!
//! Policy: plugin calls are the host's CPU work, so they pass a gate with one slot per core.
//! - **Priorities.** Each event type has a priority (`high`, `default`, `low`; from config).
//!   When slots are free, anyone gets one at once. When calls wait, freed slots go to the
//!   classes in weighted round robin — 4 to `high`, 2 to `default`, 1 to `low` out of every 7 —
//!   so higher priorities are served first and lower ones still progress (no starvation). Each
//!   class also has its own concurrency cap.
//! - **Fair between plugins.** Within a class, a freed slot goes to the waiting call whose
//!   plugin holds the fewest slots now (then the fewest long calls, then the earliest to ask):
//!   a plugin with many pipelines, or many calls queued, gets no more than its share while
//!   others wait.
//! - **Long calls give their slot up.** A call that holds its slot longer than [`SLICE`] — an
//!   endless loop running to its deadline, a plugin sleeping in a host call, a trapping batch
//!   being split to find its culprit — stops counting against the gate: its slot goes to the
//!   next waiter, and the long call goes on beside it (the OS shares the cores), up to its
//!   deadline. Its plugin counts it as a long call and waits behind plugins that have none. So
//!   one plugin's slow calls cost a neighbour a share of the CPU, never its turn.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::policy::Priority;

/// How long a call holds its slot before the slot goes to the next waiter.
pub const SLICE: Duration = Duration::from_millis(250);

struct Waiter {
    plugin: Arc<str>,
    /// Given the slot's id.
    tx: oneshot::Sender<u64>,
}

/// What a plugin holds now.
#[derive(Default, Clone, Copy)]
struct Use {
    /// Slots held by its calls that have not run long.
    slots: usize,
    /// Its calls that ran longer than [`SLICE`] and gave their slot up.
    long: usize,
}

struct Held {
    since: Instant,
    class: usize,
    plugin: Arc<str>,
    /// Ran longer than [`SLICE`]: no longer counted against the gate.
    long: bool,
}

struct State {
    free: usize,
    running: [usize; 3],
    caps: [usize; 3],
    credits: [u32; 3],
    waiting: [VecDeque<Waiter>; 3],
    plugins: HashMap<Arc<str>, Use>,
    held: HashMap<u64, Held>,
    next_id: u64,
}

impl State {
    fn eligible(&self, c: usize) -> bool {
        !self.waiting[c].is_empty() && self.running[c] < self.caps[c]
    }

    /// Gives a slot to the waiter `i` of class `c`; false if it stopped waiting.
    fn grant(&mut self, c: usize, i: usize) -> bool {
        let w = self.waiting[c].remove(i).expect("a waiter");
        let id = self.next_id;
        self.next_id += 1;
        if w.tx.send(id).is_err() {
            return false;
        }
        self.free -= 1;
        self.running[c] += 1;
        self.plugins.entry(w.plugin.clone()).or_default().slots += 1;
        self.held.insert(id, Held { since: Instant::now(), class: c, plugin: w.plugin, long: false });
        true
    }

    /// The waiter of class `c` whose plugin holds least: fewest slots, then fewest long calls,
    /// then the earliest.
    fn fairest(&self, c: usize) -> usize {
        let load = |p: &Arc<str>| self.plugins.get(p).map_or((0, 0), |u| (u.slots, u.long));
        (0..self.waiting[c].len()).min_by_key(|&i| (load(&self.waiting[c][i].plugin), i)).unwrap_or(0)
    }

    /// Hands free slots to waiters: classes by weighted round robin, plugins fairly within one.
    fn dispatch(&mut self) {
        while self.free > 0 {
            if !(0..3).any(|c| self.eligible(c)) {
                return;
            }
            let c = match (0..3).find(|&c| self.eligible(c) && self.credits[c] > 0) {
                Some(c) => c,
                None => {
                    self.credits = Priority::ALL.map(|p| p.weight());
                    continue;
                }
            };
            let i = self.fairest(c);
            // Turns are counted only while another class waits too.
            let contended = (0..3).any(|k| k != c && !self.waiting[k].is_empty());
            if self.grant(c, i) && contended {
                self.credits[c] -= 1;
            }
        }
    }

    /// Calls that held their slot longer than [`SLICE`] give it up.
    fn release_long(&mut self) {
        let now = Instant::now();
        for h in self.held.values_mut().filter(|h| !h.long && now.duration_since(h.since) >= SLICE) {
            h.long = true;
            self.free += 1;
            self.running[h.class] -= 1;
            let u = self.plugins.entry(h.plugin.clone()).or_default();
            u.slots -= 1;
            u.long += 1;
        }
        self.dispatch();
    }

    fn release(&mut self, id: u64) {
        let Some(h) = self.held.remove(&id) else { return };
        let u = self.plugins.entry(h.plugin.clone()).or_default();
        if h.long {
            u.long -= 1;
        } else {
            u.slots -= 1;
            self.free += 1;
            self.running[h.class] -= 1;
        }
        if u.slots == 0 && u.long == 0 {
            self.plugins.remove(&h.plugin);
        }
        self.dispatch();
    }
}

/// The gate plugin calls pass; see the module comment.
#[derive(Clone)]
pub struct PriorityGate {
    state: Arc<Mutex<State>>,
}

/// A slot; given back when dropped.
pub struct Slot {
    gate: PriorityGate,
    id: u64,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.gate.state.lock().unwrap().release(self.id);
    }
}

impl PriorityGate {
    /// `slots` calls at once in all; `caps[p]` at once for priority `p`.
    pub fn new(slots: usize, caps: [usize; 3]) -> Self {
        PriorityGate {
            state: Arc::new(Mutex::new(State {
                free: slots.max(1),
                running: [0; 3],
                caps: caps.map(|c| c.max(1)),
                credits: Priority::ALL.map(|p| p.weight()),
                waiting: Default::default(),
                plugins: HashMap::new(),
                held: HashMap::new(),
                next_id: 0,
            })),
        }
    }

    /// A slot for a call of `plugin` at `priority`.
    pub async fn acquire(&self, priority: Priority, plugin: &str) -> Slot {
        let c = priority as usize;
        let mut rx = {
            let mut s = self.state.lock().unwrap();
            let (tx, rx) = oneshot::channel();
            s.waiting[c].push_back(Waiter { plugin: Arc::from(plugin), tx });
            s.dispatch();
            rx
        };
        loop {
            // While it waits, calls that run long give their slots up (checked here, by the
            // waiters, so that an idle gate costs nothing).
            tokio::select! {
                biased;
                id = &mut rx => {
                    // The sender is only dropped with the gate, which outlives every waiter.
                    return Slot { gate: self.clone(), id: id.expect("the gate outlives its waiters") };
                }
                _ = tokio::time::sleep(SLICE / 2) => self.state.lock().unwrap().release_long(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Saturate a one-slot gate with every class waiting; record who gets the slot.
    #[tokio::test]
    async fn weighted_round_robin_without_starvation() {
        let gate = PriorityGate::new(1, [8, 8, 8]);
        let order = Arc::new(Mutex::new(Vec::new()));
        let first = gate.acquire(Priority::Low, "p").await; // hold the slot while everyone queues
        let mut tasks = Vec::new();
        for p in [Priority::Low, Priority::Default, Priority::High] {
            for _ in 0..14 {
                let (g, o) = (gate.clone(), order.clone());
                tasks.push(tokio::spawn(async move {
                    let _slot = g.acquire(p, "p").await;
                    o.lock().unwrap().push(p);
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }));
                tokio::task::yield_now().await;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(first);
        for t in tasks {
            t.await.unwrap();
        }
        let order = order.lock().unwrap().clone();
        let first7 = &order[..7];
        let count = |s: &[Priority], p| s.iter().filter(|&&x| x == p).count();
        assert_eq!(
            (count(first7, Priority::High), count(first7, Priority::Default), count(first7, Priority::Low)),
            (4, 2, 1),
            "{order:?}"
        );
        assert_eq!(order[0], Priority::High);
        // Low got a turn in every round of 7 while all waited.
        for round in order[..21].chunks(7) {
            assert!(round.contains(&Priority::Low), "{order:?}");
        }
    }

    #[tokio::test]
    async fn per_class_caps() {
        let gate = PriorityGate::new(4, [4, 4, 1]);
        let a = gate.acquire(Priority::Low, "p").await;
        // A second low call must wait although slots are free.
        let g = gate.clone();
        let second = tokio::spawn(async move { g.acquire(Priority::Low, "p").await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!second.is_finished());
        let _h = gate.acquire(Priority::High, "q").await; // other classes still get slots
        drop(a);
        tokio::time::timeout(Duration::from_secs(1), second).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_plugin_with_many_calls_waiting_gets_its_share_not_every_slot() {
        let gate = PriorityGate::new(2, [8, 8, 8]);
        let a1 = gate.acquire(Priority::Default, "busy").await;
        let a2 = gate.acquire(Priority::Default, "busy").await;
        // Ten more calls of `busy` queue first, then one of `quiet`.
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for name in std::iter::repeat_n("busy", 10).chain(["quiet"]) {
            let (g, o) = (gate.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let _s = g.acquire(Priority::Default, name).await;
                o.lock().unwrap().push(name);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }));
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        drop(a1); // `busy` still holds a slot: the freed one goes to `quiet`
        tokio::time::sleep(Duration::from_millis(1)).await;
        drop(a2);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(order.lock().unwrap()[0], "quiet", "{:?}", order.lock().unwrap());
    }

    #[tokio::test]
    async fn a_call_that_runs_long_gives_its_slot_up() {
        let gate = PriorityGate::new(1, [8, 8, 8]);
        let stuck = gate.acquire(Priority::Default, "sleepy").await;
        let started = Instant::now();
        // The neighbour gets a slot about one SLICE later, although `stuck` is still held.
        let s = tokio::time::timeout(Duration::from_secs(2), gate.acquire(Priority::Default, "good")).await.unwrap();
        let waited = started.elapsed();
        assert!(waited >= SLICE && waited < SLICE * 3, "{waited:?}");
        // Another `sleepy` call and a `good` one wait for `s`: `good` goes first, since `sleepy`
        // has a long call going on.
        let g = gate.clone();
        let second = tokio::spawn(async move { g.acquire(Priority::Default, "sleepy").await });
        tokio::task::yield_now().await;
        let g = gate.clone();
        let third = tokio::spawn(async move { g.acquire(Priority::Default, "good").await });
        tokio::time::sleep(Duration::from_millis(10)).await;
        drop(s);
        let good = tokio::time::timeout(Duration::from_secs(2), third).await.unwrap().unwrap();
        assert!(!second.is_finished());
        drop(good);
        drop(stuck);
        tokio::time::timeout(Duration::from_secs(2), second).await.unwrap().unwrap();
    }
}
