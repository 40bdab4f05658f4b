//! What this host remembers of the events it handled: one bounded ring per pipeline (plugin,
//! event type and source: stream entries or jobs) of recent attempts — where the event came
//! from, when it was read and settled, which plugin version ran it, its attempt number, what
//! became of it (acknowledged, left for a retry with the error, dead-lettered with kind and
//! error) and its rows per table. `sluice trace` and `GET /api/trace/{id}` read it (`story`
//! puts it together with what Redis and ClickHouse hold).
//!
//! Cost: the pipeline records a batch once it is settled, with one lock for the whole batch;
//! per event it keeps a few words and its ids, nothing per row (rows are counted per table from
//! the writer's chunk, which already knows where each event's rows end). An event retried is
//! recorded once per attempt: that is its story.
//!
//! Bound: [`RING_CAPACITY`] attempts per pipeline, the oldest forgotten first — a constant, not
//! a setting: it is a window on recent history for an operator asking "what happened to this
//! event", not a record to rely on (Redis and ClickHouse are); at a few hundred bytes an attempt
//! it costs a few megabytes per pipeline at most. The rings live in the process: a restart
//! forgets them, and each host of several knows only what it handled itself.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};

use serde::{Deserialize, Serialize};

use crate::dead_letter::DeadLetterKind;
use crate::plugin::LoadedPlugin;
use crate::source::bullmq::BullQueue;
use crate::source::{Settlement, SourceEvent, Subscriber};

/// Attempts remembered per pipeline (see the module's comment).
pub const RING_CAPACITY: usize = 10_000;

/// One pipeline's ring: (plugin, event type, whether its events are jobs).
type Key = (Arc<str>, Arc<str>, bool);

static RINGS: LazyLock<Mutex<HashMap<Key, VecDeque<Record>>>> = LazyLock::new(Default::default);

/// This process's consumer name (who read the events), set once at start.
static HOST: OnceLock<String> = OnceLock::new();

/// The BullMQ queues this host consumes (where a job id is looked up).
static QUEUES: OnceLock<Vec<BullQueue>> = OnceLock::new();

/// Names this host in the records it serves, and says which queues it reads (`host::run` calls
/// it once, with its consumer name).
pub fn set_host(consumer: &str, queues: &[BullQueue]) {
    let _ = HOST.set(consumer.to_string());
    let _ = QUEUES.set(queues.to_vec());
}

/// The BullMQ queues this host consumes.
pub fn queues() -> &'static [BullQueue] {
    QUEUES.get().map(Vec::as_slice).unwrap_or(&[])
}

/// This host's consumer name (`unknown` before `set_host`).
pub fn host() -> &'static str {
    HOST.get().map(String::as_str).unwrap_or("unknown")
}

/// Now, in milliseconds since the epoch.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A plugin version as the records name it.
#[derive(Debug)]
struct Version {
    version: String,
    hash: String,
}

impl Version {
    fn of(p: &LoadedPlugin) -> Arc<Version> {
        Arc::new(Version { version: p.manifest.version.clone(), hash: p.short_hash().to_string() })
    }
}

#[derive(Debug, Clone)]
enum Outcome {
    Acknowledged,
    Retry(String),
    DeadLettered { kind: DeadLetterKind, error: String },
}

/// One attempt at one event.
#[derive(Debug)]
struct Record {
    stream: Arc<str>,
    entry_id: Box<str>,
    /// The producer's event id, when it gave one (not the `<stream>/<entry id>` stand-in).
    event_id: Option<Box<str>>,
    read_at: i64,
    settled_at: i64,
    attempt: u64,
    version: Arc<Version>,
    outcome: Outcome,
    /// Rows per table handed to the writer for it (committed, if acknowledged).
    rows: Vec<(Arc<str>, u32)>,
}

/// Rows per event of a batch, from the tables written: each table's name, the events (by index
/// in the batch) whose rows it holds and, in the same order, how many rows each.
pub fn rows_by_event<'a>(
    events: usize,
    tables: impl Iterator<Item = (&'a str, &'a [usize])>,
    counts: &[Vec<u32>],
) -> Vec<Vec<(Arc<str>, u32)>> {
    let mut out = vec![Vec::new(); events];
    for ((table, listed), counts) in tables.zip(counts) {
        let name: Arc<str> = Arc::from(table);
        for (&e, &n) in listed.iter().zip(counts) {
            if let Some(rows) = out.get_mut(e) {
                rows.push((name.clone(), n));
            }
        }
    }
    out
}

/// Records a settled batch: one attempt per event. `versions`: per event, the version that ran
/// it when not `plugin` (a canary); empty when `plugin` ran them all. `rows`: per event, as
/// [`rows_by_event`] gives them (empty: none).
#[allow(clippy::too_many_arguments)]
pub fn record(
    who: &Subscriber,
    jobs: bool,
    plugin: &LoadedPlugin,
    versions: &[Arc<LoadedPlugin>],
    events: &[SourceEvent],
    settlements: &[Settlement],
    read_at: i64,
    mut rows: Vec<Vec<(Arc<str>, u32)>>,
) {
    let settled_at = now_ms();
    let main = Version::of(plugin);
    let mut other: Vec<(*const LoadedPlugin, Arc<Version>)> = Vec::new();
    let mut records = Vec::with_capacity(events.len());
    for (i, (e, s)) in events.iter().zip(settlements).enumerate() {
        let version = match versions.get(i) {
            Some(v) if !std::ptr::eq(&**v, plugin) => {
                let p = Arc::as_ptr(v);
                match other.iter().find(|(q, _)| *q == p) {
                    Some((_, tag)) => tag.clone(),
                    None => {
                        let tag = Version::of(v);
                        other.push((p, tag.clone()));
                        tag
                    }
                }
            }
            _ => main.clone(),
        };
        let outcome = match s {
            Settlement::Ack => Outcome::Acknowledged,
            Settlement::Retry(why) => Outcome::Retry(why.clone()),
            Settlement::DeadLetter { kind, error } => Outcome::DeadLettered { kind: *kind, error: error.clone() },
        };
        records.push(Record {
            stream: e.stream.clone(),
            entry_id: e.entry_id.as_str().into(),
            event_id: event_id(e).map(Into::into),
            read_at,
            settled_at,
            attempt: e.deliveries,
            version,
            outcome,
            rows: rows.get_mut(i).map(std::mem::take).unwrap_or_default(),
        });
    }
    push((who.plugin.clone(), who.event_type.clone(), jobs), records);
}

/// Adds a batch's records to its pipeline's ring: one lock, the oldest forgotten beyond
/// [`RING_CAPACITY`].
fn push(key: Key, records: Vec<Record>) {
    let mut rings = RINGS.lock().unwrap();
    let ring = rings.entry(key).or_default();
    for r in records {
        if ring.len() == RING_CAPACITY {
            ring.pop_front();
        }
        ring.push_back(r);
    }
}

/// The producer's id of `e`, if it gave one: a stream entry without an `id` gets the stand-in
/// `<stream>/<entry id>`, which says nothing its entry id does not.
fn event_id(e: &SourceEvent) -> Option<&str> {
    let id = &e.parsed.as_ref().ok()?.id;
    let stand_in =
        id.len() == e.stream.len() + 1 + e.entry_id.len() && id.starts_with(&*e.stream) && id.ends_with(&e.entry_id);
    (!id.is_empty() && !stand_in).then_some(id.as_str())
}

/// One attempt, as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Attempt {
    /// When it was settled (RFC 3339, UTC).
    pub at: String,
    /// When its batch was read (RFC 3339, UTC).
    #[serde(default)]
    pub read_at: Option<String>,
    /// The consumer name of the host that read it.
    pub host: String,
    pub attempt: u64,
    pub version: String,
    pub hash: String,
    /// `retry`, `acknowledged` or `dead_lettered`.
    pub outcome: String,
    pub error: Option<String>,
    pub kind: Option<String>,
    /// Rows per table handed to the writer in this attempt.
    pub rows: std::collections::BTreeMap<String, u64>,
}

/// What a ring holds of one event: where it came from, and its attempts.
#[derive(Debug, Clone)]
pub struct Remembered {
    pub plugin: String,
    pub event_type: String,
    pub jobs: bool,
    pub stream: String,
    pub entry_id: String,
    pub event_id: Option<String>,
    pub attempts: Vec<Attempt>,
}

/// Which events to find in the rings.
pub enum Find<'a> {
    /// A stream entry id, or a job id.
    Entry(&'a str),
    /// A producer's event id.
    EventId(&'a str),
}

/// The events the rings remember under `find`, oldest attempt first, one per (plugin, event
/// type, stream, entry).
pub fn find(find: Find<'_>) -> Vec<Remembered> {
    let rings = RINGS.lock().unwrap();
    let mut out: Vec<Remembered> = Vec::new();
    for ((plugin, event_type, jobs), ring) in rings.iter() {
        for r in ring {
            let hit = match find {
                Find::Entry(id) => &*r.entry_id == id,
                Find::EventId(id) => r.event_id.as_deref() == Some(id),
            };
            if !hit {
                continue;
            }
            let found = out.iter().position(|m| {
                m.plugin == **plugin
                    && m.event_type == **event_type
                    && m.stream == *r.stream
                    && m.entry_id == *r.entry_id
            });
            let i = found.unwrap_or_else(|| {
                out.push(Remembered {
                    plugin: plugin.to_string(),
                    event_type: event_type.to_string(),
                    jobs: *jobs,
                    stream: r.stream.to_string(),
                    entry_id: r.entry_id.to_string(),
                    event_id: r.event_id.as_deref().map(str::to_string),
                    attempts: Vec::new(),
                });
                out.len() - 1
            });
            out[i].attempts.push(attempt(r));
        }
    }
    out
}

fn attempt(r: &Record) -> Attempt {
    let (outcome, error, kind) = match &r.outcome {
        Outcome::Acknowledged => ("acknowledged", None, None),
        Outcome::Retry(why) => ("retry", Some(why.clone()), None),
        Outcome::DeadLettered { kind, error } => ("dead_lettered", Some(error.clone()), Some(kind.name().to_string())),
    };
    Attempt {
        at: time(r.settled_at),
        read_at: Some(time(r.read_at)),
        host: host().to_string(),
        attempt: r.attempt,
        version: r.version.version.clone(),
        hash: r.version.hash.clone(),
        outcome: outcome.into(),
        error,
        kind,
        rows: r.rows.iter().map(|(t, n)| (t.to_string(), *n as u64)).collect(),
    }
}

/// Milliseconds since the epoch as RFC 3339, UTC, to the millisecond.
pub fn time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| ms.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_counted_per_event_and_table() {
        let a: &[usize] = &[0, 2];
        let b: &[usize] = &[2];
        let rows = rows_by_event(3, [("a", a), ("b", b)].into_iter(), &[vec![1, 3], vec![2]]);
        assert_eq!(rows[0], vec![(Arc::from("a"), 1)]);
        assert!(rows[1].is_empty());
        assert_eq!(rows[2], vec![(Arc::from("a"), 3), (Arc::from("b"), 2)]);
    }

    #[test]
    fn a_ring_keeps_the_latest_attempts_and_finds_them_by_entry_and_event_id() {
        let version = Arc::new(Version { version: "1.0.0".into(), hash: "abcdef123456".into() });
        let record = |i: usize, outcome: Outcome| Record {
            stream: Arc::from("events:ring-test"),
            entry_id: format!("{i}-0").into(),
            event_id: Some(format!("ev-{i}").into()),
            read_at: 1_000,
            settled_at: 2_000 + i as i64,
            attempt: 1,
            version: version.clone(),
            outcome,
            rows: vec![(Arc::from("t"), 2)],
        };
        let key: Key = (Arc::from("ring-test"), Arc::from("ring.type"), false);
        let all = (0..RING_CAPACITY + 5).map(|i| record(i, Outcome::Acknowledged)).collect();
        push(key.clone(), all);
        push(key.clone(), vec![record(7, Outcome::Retry("boom".into()))]);
        assert_eq!(RINGS.lock().unwrap()[&key].len(), RING_CAPACITY);
        assert!(find(Find::Entry("0-0")).iter().all(|m| m.plugin != "ring-test"), "the oldest are forgotten");
        let found: Vec<_> = find(Find::EventId("ev-7")).into_iter().filter(|m| m.plugin == "ring-test").collect();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].entry_id, "7-0");
        let outcomes: Vec<_> = found[0].attempts.iter().map(|a| a.outcome.as_str()).collect();
        assert_eq!(outcomes, ["acknowledged", "retry"]);
        assert_eq!(found[0].attempts[0].rows["t"], 2);
        assert_eq!(found[0].attempts[1].error.as_deref(), Some("boom"));
    }

    #[test]
    fn times_are_rfc3339_to_the_millisecond() {
        assert_eq!(time(1_717_245_000_123), "2024-06-01T12:30:00.123Z");
    }
}
