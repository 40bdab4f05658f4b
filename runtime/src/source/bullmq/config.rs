//! Which BullMQ queues to consume, and how: from the flags, the environment or the `[bullmq]`
//! section of the config file.

use std::time::Duration;

use anyhow::{Result, bail};
use serde::Deserialize;

/// One queue to consume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BullQueue {
    pub name: String,
    /// BullMQ's key prefix: the queue's keys are `<prefix>:<name>:...`.
    pub prefix: String,
    /// Jobs of this queue held at once by this host (the batches are made of them).
    pub concurrency: usize,
    /// How long a job's lock lasts without renewal (renewed every half of it).
    pub lock: Duration,
    /// Times a job may be found stalled (its host died holding it) before BullMQ fails it.
    pub max_stalled: u32,
    /// Which library writes the queue: classic Bull and BullMQ share the key layout but not all
    /// of their habits (`bull.rs`).
    pub library: Library,
}

/// The Node.js library a queue's producers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Library {
    /// Told apart per job: classic Bull stores `timestamp` in a job's options, BullMQ does not.
    #[default]
    Auto,
    /// `bull` 3/4 (`@nestjs/bull`).
    Bull,
    /// `bullmq` (`@nestjs/bullmq`).
    Bullmq,
}

impl BullQueue {
    /// The queue's key base, `<prefix>:<name>`: the "stream" of its events in logs, metrics and
    /// batch records.
    pub fn key(&self) -> String {
        format!("{}:{}", self.prefix, self.name)
    }

    pub fn validate(&self) -> Result<()> {
        // BullMQ (Node.js since 5.x, and its Rust port) refuses both: the job key
        // `<prefix>:<queue>:<id>` must parse back unambiguously.
        if self.name.is_empty() || self.name.contains(':') {
            bail!("BullMQ queue name `{}`: must be non-empty and without `:` (BullMQ refuses such names)", self.name);
        }
        if self.prefix.is_empty() || self.prefix.contains(':') {
            bail!(
                "queue prefix `{}` of queue `{}`: must be non-empty and without `:`. Classic Bull and Node.js BullMQ accept one, but Sluice's queue consumer (BullMQ's Rust port) reads a job's key `<prefix>:<queue>:<id>` back by its `:`s and refuses such a prefix; give the producers and Sluice a prefix without `:` (e.g. `myapp-bull`)",
                self.prefix,
                self.name
            );
        }
        if self.concurrency == 0 {
            bail!("BullMQ queue `{}`: concurrency must be at least 1", self.name);
        }
        if self.lock < Duration::from_secs(1) {
            bail!("BullMQ queue `{}`: lock_duration_ms must be at least 1000", self.name);
        }
        Ok(())
    }
}

/// The `[bullmq]` section of the config file.
#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct BullSection {
    /// Default prefix of the queues below [bull].
    pub prefix: Option<String>,
    /// Default concurrency of the queues below [1000].
    pub concurrency: Option<usize>,
    /// Lock duration of every queue, in milliseconds [30000].
    pub lock_duration_ms: Option<u64>,
    /// Times a job may stall (its host died holding it) before BullMQ fails it [3].
    pub max_stalled_count: Option<u32>,
    /// Which library writes the queues below: "bull", "bullmq" or "auto" (per job) ["auto"].
    pub library: Option<Library>,
    /// Queue names, or tables `{ name, prefix?, concurrency?, library? }`.
    #[serde(default)]
    pub queues: Vec<QueueEntry>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub enum QueueEntry {
    Name(String),
    Table { name: String, prefix: Option<String>, concurrency: Option<usize>, library: Option<Library> },
}

pub const DEFAULT_PREFIX: &str = "bull";
pub const DEFAULT_CONCURRENCY: usize = 1000;
pub const DEFAULT_LOCK_MS: u64 = 30_000;
/// BullMQ's own default is 1, a guard against jobs that crash their worker; a plugin cannot
/// crash the host, so a job stalls only when its host dies — twice is bad luck, not a poison job.
pub const DEFAULT_MAX_STALLED: u32 = 3;

/// The queues to consume: from the flags/environment (comma-separated names, one prefix and
/// concurrency for all) if given, else from the file.
pub fn resolve_queues(
    names: Option<&str>,
    prefix: Option<&str>,
    concurrency: Option<usize>,
    file: Option<&BullSection>,
) -> Result<Vec<BullQueue>> {
    let file = file.cloned().unwrap_or_default();
    let prefix = prefix.map(str::to_string).or(file.prefix.clone()).unwrap_or_else(|| DEFAULT_PREFIX.into());
    let concurrency = concurrency.or(file.concurrency).unwrap_or(DEFAULT_CONCURRENCY);
    let lock = Duration::from_millis(file.lock_duration_ms.unwrap_or(DEFAULT_LOCK_MS));
    let max_stalled = file.max_stalled_count.unwrap_or(DEFAULT_MAX_STALLED);
    let library = file.library.unwrap_or_default();
    let queues: Vec<BullQueue> = match names {
        Some(names) => names
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(|n| BullQueue { name: n.to_string(), prefix: prefix.clone(), concurrency, lock, max_stalled, library })
            .collect(),
        None => file
            .queues
            .iter()
            .map(|q| match q {
                QueueEntry::Name(n) => {
                    BullQueue { name: n.clone(), prefix: prefix.clone(), concurrency, lock, max_stalled, library }
                }
                QueueEntry::Table { name, prefix: p, concurrency: c, library: l } => BullQueue {
                    name: name.clone(),
                    prefix: p.clone().unwrap_or_else(|| prefix.clone()),
                    concurrency: c.unwrap_or(concurrency),
                    lock,
                    max_stalled,
                    library: l.unwrap_or(library),
                },
            })
            .collect(),
    };
    for (i, q) in queues.iter().enumerate() {
        q.validate()?;
        if queues[..i].iter().any(|o| o.key() == q.key()) {
            bail!("BullMQ queue `{}` is listed twice", q.key());
        }
    }
    Ok(queues)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queues_from_flags_and_file() {
        let file: BullSection = toml::from_str(
            r#"prefix = "app"
               concurrency = 10
               library = "bull"
               queues = ["events", { name = "payments", prefix = "pay", concurrency = 2, library = "bullmq" }]"#,
        )
        .unwrap();
        let q = resolve_queues(None, None, None, Some(&file)).unwrap();
        assert_eq!(q.iter().map(|q| q.key()).collect::<Vec<_>>(), ["app:events", "pay:payments"]);
        assert_eq!((q[0].concurrency, q[1].concurrency), (10, 2));
        assert_eq!((q[0].library, q[1].library), (Library::Bull, Library::Bullmq));
        let q = resolve_queues(Some("a, b"), None, None, Some(&file)).unwrap();
        assert_eq!(q.iter().map(|q| q.key()).collect::<Vec<_>>(), ["app:a", "app:b"]);
        let q = resolve_queues(Some("events"), None, None, None).unwrap();
        assert_eq!((q[0].key().as_str(), q[0].concurrency), ("bull:events", DEFAULT_CONCURRENCY));
        assert_eq!(q[0].library, Library::Auto);
        assert!(resolve_queues(None, None, None, None).unwrap().is_empty());
    }

    #[test]
    fn bad_queues_say_why() {
        let e = resolve_queues(Some("events:high"), None, None, None).unwrap_err().to_string();
        assert!(e.contains("`events:high`") && e.contains("without `:`"), "{e}");
        let e = resolve_queues(Some("events"), Some("bull:x"), None, None).unwrap_err().to_string();
        assert!(e.contains("prefix `bull:x`"), "{e}");
        let e = resolve_queues(Some("a,a"), None, None, None).unwrap_err().to_string();
        assert!(e.contains("listed twice"), "{e}");
        let e = resolve_queues(Some("a"), None, Some(0), None).unwrap_err().to_string();
        assert!(e.contains("concurrency"), "{e}");
    }
}
