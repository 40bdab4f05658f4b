//! Priorities: which pipelines' plugin calls run first when the host is saturated.
//!
//! Policy: plugin calls are the host's CPU work, so they pass a gate with one slot per core.
//! Each event type has a priority (`high`, `default`, `low`; from config). When slots are
//! free, anyone gets one at once. When calls wait, freed slots go to the classes in weighted
//! round robin — 4 to `high`, 2 to `default`, 1 to `low` out of every 7 — so higher priorities
//! are served first and lower ones still progress (no starvation). Each class also has its own
//! concurrency cap: at most that many of its calls run at once, whatever is free.

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Priority {
    High = 0,
    Default = 1,
    Low = 2,
}

impl Priority {
    pub const ALL: [Priority; 3] = [Priority::High, Priority::Default, Priority::Low];
    /// Share of freed slots when every class waits.
    pub fn weight(self) -> u32 {
        match self {
            Priority::High => 4,
            Priority::Default => 2,
            Priority::Low => 1,
        }
    }
}

impl FromStr for Priority {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "high" => Ok(Priority::High),
            "default" => Ok(Priority::Default),
            "low" => Ok(Priority::Low),
            other => Err(format!("unknown priority `{other}` (use high, default or low)")),
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Priority::High => "high",
            Priority::Default => "default",
            Priority::Low => "low",
        })
    }
}

struct State {
    free: usize,
    running: [usize; 3],
    caps: [usize; 3],
    credits: [u32; 3],
    waiting: [VecDeque<oneshot::Sender<()>>; 3],
}

impl State {
    fn eligible(&self, c: usize) -> bool {
        !self.waiting[c].is_empty() && self.running[c] < self.caps[c]
    }

    /// Hands free slots to waiters, by weighted round robin.
    fn dispatch(&mut self) {
        while self.free > 0 {
            if !(0..3).any(|c| self.eligible(c)) {
                return;
            }
            let pick = (0..3).find(|&c| self.eligible(c) && self.credits[c] > 0);
            let c = match pick {
                Some(c) => c,
                None => {
                    self.credits = Priority::ALL.map(|p| p.weight());
                    continue;
                }
            };
            let tx = self.waiting[c].pop_front().unwrap();
            if tx.send(()).is_ok() {
                self.credits[c] -= 1;
                self.free -= 1;
                self.running[c] += 1;
            }
        }
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
    class: usize,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut s = self.gate.state.lock().unwrap();
        s.free += 1;
        s.running[self.class] -= 1;
        s.dispatch();
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
            })),
        }
    }

    pub async fn acquire(&self, priority: Priority) -> Slot {
        let c = priority as usize;
        let rx = {
            let mut s = self.state.lock().unwrap();
            let nobody_waits = s.waiting.iter().all(|w| w.is_empty());
            if s.free > 0 && nobody_waits && s.running[c] < s.caps[c] {
                s.free -= 1;
                s.running[c] += 1;
                return Slot { gate: self.clone(), class: c };
            }
            let (tx, rx) = oneshot::channel();
            s.waiting[c].push_back(tx);
            s.dispatch();
            rx
        };
        // The sender is only dropped with the gate, which outlives every waiter.
        let _ = rx.await;
        Slot { gate: self.clone(), class: c }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Saturate a one-slot gate with every class waiting; record who gets the slot.
    #[tokio::test]
    async fn weighted_round_robin_without_starvation() {
        let gate = PriorityGate::new(1, [8, 8, 8]);
        let order = Arc::new(Mutex::new(Vec::new()));
        let first = gate.acquire(Priority::Low).await; // hold the slot while everyone queues
        let mut tasks = Vec::new();
        for p in [Priority::Low, Priority::Default, Priority::High] {
            for _ in 0..14 {
                let (g, o) = (gate.clone(), order.clone());
                tasks.push(tokio::spawn(async move {
                    let _slot = g.acquire(p).await;
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
        let a = gate.acquire(Priority::Low).await;
        // A second low call must wait although slots are free.
        let g = gate.clone();
        let second = tokio::spawn(async move { g.acquire(Priority::Low).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!second.is_finished());
        let _h = gate.acquire(Priority::High).await; // other classes still get slots
        drop(a);
        tokio::time::timeout(Duration::from_secs(1), second).await.unwrap().unwrap();
    }
}
