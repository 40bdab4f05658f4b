//! What this host remembers of the events it handled: one bounded ring per pipeline (plugin,
//! event type and source: stream entries or jobs) of recent attempts — where the event came
//! from, when it was read and settled, which plugin version ran it, its attempt number, what
//! became of it (acknowledged, left for a retry with the error, dead-lettered with kind and
//! error) and its rows per table. `sluice trace` and `GET /api/trace/{id}` read it (`story`
//! puts it together with what Redis and ClickHouse hold).
//!
//! Cost: the pipeline records a batch once it is settled, with one lock for the whole batch. A
//! ring holds batches, not events: a batch's ids go into one string and each event is a note
//! of a few words pointing into it, so recording allocates a handful of times per batch and
//! never per event or per row (rows are counted per table from the writer's chunk, which
//! already knows how many rows each event has): about 10 ns per event (the ignored test
//! `recording_cost`), against the microseconds an event costs in the plugin and the writer. An
//! event retried is recorded once per attempt: that is its story.
//!
//! Bound: [`RING_CAPACITY`] events per pipeline, whole batches forgotten oldest first — a
//! constant, not a setting: it is a window on recent history for an operator asking "what
//! happened to this event", not a record to rely on (Redis and ClickHouse are); at about a
//! hundred bytes an event it costs about a megabyte per pipeline. The rings live in the
//! process: a restart forgets them, and each host of several knows only what it handled itself.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};

use serde::{Deserialize, Serialize};

use crate::dead_letter::DeadLetterKind;
use crate::plugin::LoadedPlugin;
use crate::source::bullmq::BullQueue;
use crate::source::{Settlement, SourceEvent, Subscriber};

/// Attempts remembered per pipeline (see the module's comment): at least this many, at most
/// one batch more.
pub const RING_CAPACITY: usize = 10_000;

/// One pipeline's ring: (plugin, event type, whether its events are jobs).
type Key = (Arc<str>, Arc<str>, bool);

static RINGS: LazyLock<Mutex<HashMap<Key, Ring>>> = LazyLock::new(Default::default);

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

/// The rows of a batch's events: the tables written, and (event index, table index, rows) for
/// each event a table holds rows of — one allocation per batch, none per event.
#[derive(Debug, Default)]
pub struct BatchRows {
    tables: Box<[Arc<str>]>,
    rows: Vec<(u32, u16, u32)>,
}

impl BatchRows {
    /// From the tables written: each table's name, the events (by index in the batch) whose
    /// rows it holds and, in the same order, how many rows each.
    pub fn of<'a>(tables: impl Iterator<Item = (&'a str, &'a [usize])>, counts: &[Vec<u32>]) -> BatchRows {
        let mut names = Vec::new();
        let mut rows = Vec::with_capacity(counts.iter().map(Vec::len).sum());
        for (t, ((table, listed), counts)) in tables.zip(counts).enumerate() {
            names.push(Arc::from(table));
            rows.extend(listed.iter().zip(counts).map(|(&e, &n)| (e as u32, t as u16, n)));
        }
        BatchRows { tables: names.into(), rows }
    }

    /// Rows per table of event `i`.
    fn of_event(&self, i: u32) -> impl Iterator<Item = (&str, u32)> {
        self.rows.iter().filter(move |r| r.0 == i).map(|&(_, t, n)| (&*self.tables[t as usize], n))
    }
}

/// One settled batch, as a ring keeps it: what its events share (times, versions, streams,
/// rows), their ids in one string, and a few words per event — filled with sequential writes,
/// freed in one piece when the ring forgets it.
#[derive(Debug)]
struct Batch {
    read_at: i64,
    settled_at: i64,
    /// The versions that ran its events: the stage's first, then any canary's.
    versions: Vec<Arc<Version>>,
    streams: Vec<Arc<str>>,
    rows: BatchRows,
    /// Entry ids and producer event ids, one after the other.
    ids: String,
    events: Vec<Note>,
    /// The events not acknowledged (by index), with what became of them.
    failed: Vec<(u32, Outcome)>,
}

/// One event of a batch.
#[derive(Debug, Clone, Copy)]
struct Note {
    /// Its entry id (a stream entry's or a job's), a range of `Batch::ids`.
    entry: (u32, u32),
    /// The producer's event id, a range of `Batch::ids` (empty: none).
    event_id: (u32, u32),
    attempt: u32,
    stream: u16,
    version: u16,
}

impl Batch {
    fn text(&self, (from, to): (u32, u32)) -> &str {
        &self.ids[from as usize..to as usize]
    }

    fn event_id(&self, n: &Note) -> Option<&str> {
        (n.event_id.0 < n.event_id.1).then(|| self.text(n.event_id))
    }

    fn outcome(&self, i: u32) -> &Outcome {
        self.failed.iter().find(|(e, _)| *e == i).map(|(_, o)| o).unwrap_or(&Outcome::Acknowledged)
    }
}

/// A pipeline's ring: its batches, oldest first, and how many events they hold.
#[derive(Debug, Default)]
struct Ring {
    batches: VecDeque<Batch>,
    events: usize,
}

/// Records a settled batch: one attempt per event. `versions`: per event, the version that ran
/// it when not `plugin` (a canary); empty when `plugin` ran them all.
#[allow(clippy::too_many_arguments)]
pub fn record(
    who: &Subscriber,
    jobs: bool,
    plugin: &LoadedPlugin,
    versions: &[Arc<LoadedPlugin>],
    events: &[SourceEvent],
    settlements: &[Settlement],
    read_at: i64,
    rows: BatchRows,
) {
    let mut tags = vec![Version::of(plugin)];
    let mut seen: Vec<*const LoadedPlugin> = vec![plugin];
    let version_of = |i: usize| match versions.get(i) {
        Some(v) => {
            let p = Arc::as_ptr(v);
            match seen.iter().position(|q| *q == p) {
                Some(at) => at as u16,
                None => {
                    seen.push(p);
                    tags.push(Version::of(v));
                    (tags.len() - 1) as u16
                }
            }
        }
        None => 0,
    };
    let notes = notes(events, version_of);
    let key = (who.plugin.clone(), who.event_type.clone(), jobs);
    push(key, batch(tags, notes, events, settlements, read_at, rows));
}

/// Each event's note (the ids kept in one string), with the version index `version_of` gives.
fn notes(events: &[SourceEvent], mut version_of: impl FnMut(usize) -> u16) -> (String, Vec<Arc<str>>, Vec<Note>) {
    let mut ids = String::with_capacity(events.len() * 24);
    let mut streams: Vec<Arc<str>> = Vec::new();
    let mut notes = Vec::with_capacity(events.len());
    let mut keep = |text: &str| {
        let from = ids.len() as u32;
        ids.push_str(text);
        (from, ids.len() as u32)
    };
    for (i, e) in events.iter().enumerate() {
        let stream = match streams.iter().position(|s| Arc::ptr_eq(s, &e.stream) || *s == e.stream) {
            Some(at) => at,
            None => {
                streams.push(e.stream.clone());
                streams.len() - 1
            }
        };
        let entry = keep(&e.entry_id);
        let event_id = event_id(e).map(&mut keep).unwrap_or((0, 0));
        let attempt = e.deliveries.min(u32::MAX as u64) as u32;
        notes.push(Note { entry, event_id, attempt, stream: stream as u16, version: version_of(i) });
    }
    (ids, streams, notes)
}

fn batch(
    versions: Vec<Arc<Version>>,
    (ids, streams, events): (String, Vec<Arc<str>>, Vec<Note>),
    all: &[SourceEvent],
    settlements: &[Settlement],
    read_at: i64,
    rows: BatchRows,
) -> Batch {
    debug_assert_eq!(all.len(), settlements.len());
    let failed = settlements
        .iter()
        .enumerate()
        .filter_map(|(i, s)| match s {
            Settlement::Ack => None,
            Settlement::Retry(why) => Some((i as u32, Outcome::Retry(short(why)))),
            Settlement::DeadLetter { kind, error } => {
                Some((i as u32, Outcome::DeadLettered { kind: *kind, error: short(error) }))
            }
        })
        .collect();
    Batch { read_at, settled_at: now_ms(), versions, streams, rows, ids, events, failed }
}

/// An error as the ring keeps it: its first 500 bytes (a batch failing during an outage holds
/// one per event; the dead letter keeps the whole text).
fn short(error: &str) -> String {
    const MAX: usize = 500;
    if error.len() <= MAX {
        return error.to_string();
    }
    let mut end = MAX;
    while !error.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &error[..end])
}

/// Adds a batch to its pipeline's ring (one lock), forgetting the oldest batches beyond
/// [`RING_CAPACITY`] events.
fn push(key: Key, batch: Batch) {
    let mut rings = RINGS.lock().unwrap();
    let ring = rings.entry(key).or_default();
    ring.events += batch.events.len();
    ring.batches.push_back(batch);
    while ring.events > RING_CAPACITY && ring.batches.len() > 1 {
        let gone = ring.batches.pop_front().expect("more than one");
        ring.events -= gone.events.len();
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
        for b in &ring.batches {
            for (i, n) in b.events.iter().enumerate() {
                let hit = match find {
                    Find::Entry(id) => b.text(n.entry) == id,
                    Find::EventId(id) => b.event_id(n) == Some(id),
                };
                if !hit {
                    continue;
                }
                let (stream, entry_id) = (&*b.streams[n.stream as usize], b.text(n.entry));
                let found = out.iter().position(|m| {
                    m.plugin == **plugin && m.event_type == **event_type && m.stream == stream && m.entry_id == entry_id
                });
                let at = found.unwrap_or_else(|| {
                    out.push(Remembered {
                        plugin: plugin.to_string(),
                        event_type: event_type.to_string(),
                        jobs: *jobs,
                        stream: stream.to_string(),
                        entry_id: entry_id.to_string(),
                        event_id: b.event_id(n).map(str::to_string),
                        attempts: Vec::new(),
                    });
                    out.len() - 1
                });
                out[at].attempts.push(attempt(b, i as u32, n));
            }
        }
    }
    out
}

fn attempt(b: &Batch, i: u32, n: &Note) -> Attempt {
    let (outcome, error, kind) = match b.outcome(i) {
        Outcome::Acknowledged => ("acknowledged", None, None),
        Outcome::Retry(why) => ("retry", Some(why.clone()), None),
        Outcome::DeadLettered { kind, error } => ("dead_lettered", Some(error.clone()), Some(kind.name().to_string())),
    };
    let version = &b.versions[n.version as usize];
    Attempt {
        at: time(b.settled_at),
        read_at: Some(time(b.read_at)),
        host: host().to_string(),
        attempt: n.attempt as u64,
        version: version.version.clone(),
        hash: version.hash.clone(),
        outcome: outcome.into(),
        error,
        kind,
        rows: b.rows.of_event(i).map(|(t, n)| (t.to_string(), n as u64)).collect(),
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
        let rows = BatchRows::of([("a", a), ("b", b)].into_iter(), &[vec![1, 3], vec![2]]);
        assert_eq!(rows.of_event(0).collect::<Vec<_>>(), [("a", 1)]);
        assert_eq!(rows.of_event(1).count(), 0);
        assert_eq!(rows.of_event(2).collect::<Vec<_>>(), [("a", 3), ("b", 2)]);
    }

    fn event(stream: &str, entry_id: &str, id: Option<&str>) -> SourceEvent {
        let parsed = crate::contract::wit::Event {
            id: id.map(str::to_string).unwrap_or_else(|| format!("{stream}/{entry_id}")),
            event_type: "t".into(),
            timestamp_ms: 0,
            payload: "{}".into(),
            source: None,
            tenant: None,
            attempt: 1,
        };
        SourceEvent {
            stream: Arc::from(stream),
            entry_id: entry_id.into(),
            deliveries: 1,
            fields: Vec::new(),
            parsed: Ok(parsed),
            written: Vec::new(),
            chunk_refs: Vec::new(),
        }
    }

    fn test_batch(events: &[SourceEvent], settlements: &[Settlement], read_at: i64, rows: BatchRows) -> Batch {
        let version = Arc::new(Version { version: "1.0.0".into(), hash: "abcdef123456".into() });
        batch(vec![version], notes(events, |_| 0), events, settlements, read_at, rows)
    }

    #[test]
    fn a_ring_keeps_the_latest_attempts_and_finds_them_by_entry_event_and_job_id() {
        let key: Key = (Arc::from("ring-test"), Arc::from("ring.type"), false);
        // Eleven batches of a thousand: the first is forgotten.
        let per_batch = 1000;
        let batches = RING_CAPACITY / per_batch + 1;
        for b in 0..batches {
            let events: Vec<SourceEvent> = (b * per_batch..(b + 1) * per_batch)
                .map(|i| event("events:ring", &format!("{i}-0"), Some(&format!("ev-{i}"))))
                .collect();
            let acks = vec![Settlement::Ack; events.len()];
            // Every event but the first of a batch has two rows in `t`.
            let listed: Vec<usize> = (1..events.len()).collect();
            let rows = BatchRows::of([("t", listed.as_slice())].into_iter(), &[vec![2; listed.len()]]);
            push(key.clone(), test_batch(&events, &acks, 1_000, rows));
        }
        assert_eq!(RINGS.lock().unwrap()[&key].events, RING_CAPACITY);
        assert!(find(Find::Entry("0-0")).iter().all(|m| m.plugin != "ring-test"), "the oldest are forgotten");
        // The last one retried: a second attempt (and the oldest batch left goes).
        let last = (batches * per_batch - 1).to_string();
        let again = [event("events:ring", &format!("{last}-0"), Some(&format!("ev-{last}")))];
        push(key.clone(), test_batch(&again, &[Settlement::Retry("boom".into())], 3_000, BatchRows::default()));
        assert_eq!(RINGS.lock().unwrap()[&key].events, RING_CAPACITY - per_batch + 1);
        for found in [find(Find::EventId(&format!("ev-{last}"))), find(Find::Entry(&format!("{last}-0")))] {
            let found: Vec<_> = found.into_iter().filter(|m| m.plugin == "ring-test").collect();
            assert_eq!(found.len(), 1);
            assert_eq!(found[0].event_id, Some(format!("ev-{last}")));
            let outcomes: Vec<_> = found[0].attempts.iter().map(|a| a.outcome.as_str()).collect();
            assert_eq!(outcomes, ["acknowledged", "retry"]);
            assert_eq!(found[0].attempts[0].rows["t"], 2);
            assert!(found[0].attempts[1].rows.is_empty());
            assert_eq!(found[0].attempts[1].error.as_deref(), Some("boom"));
        }
        let first_of_last = find(Find::Entry(&format!("{}-0", (batches - 1) * per_batch)));
        assert!(first_of_last.iter().any(|m| m.plugin == "ring-test" && m.attempts[0].rows.is_empty()));
        // A job id is its own text: the job `7` is not the stream entry `7-0`.
        let jobs: Key = (Arc::from("ring-test"), Arc::from("ring.type"), true);
        push(jobs, test_batch(&[event("bull:q", "7", None)], &[Settlement::Ack], 1, BatchRows::default()));
        let found: Vec<_> = find(Find::Entry("7")).into_iter().filter(|m| m.plugin == "ring-test").collect();
        assert_eq!((found.len(), found[0].jobs, found[0].event_id.as_deref()), (1, true, None));
    }

    /// What recording costs per event (run with `--ignored --nocapture`): the hot path's share.
    #[test]
    #[ignore]
    fn recording_cost() {
        let key: Key = (Arc::from("cost"), Arc::from("cost.type"), false);
        let batch: Vec<SourceEvent> = (0..1000)
            .map(|i| event("events:cost", &format!("17172450{i:05}-0"), Some(&format!("evt-{i:08}"))))
            .collect();
        let acks = vec![Settlement::Ack; batch.len()];
        let listed: Vec<usize> = (0..batch.len()).collect();
        let started = std::time::Instant::now();
        let rounds = 200;
        for _ in 0..rounds {
            let rows = BatchRows::of([("t", listed.as_slice())].into_iter(), &[vec![1; batch.len()]]);
            push(key.clone(), test_batch(&batch, &acks, 0, rows));
        }
        let ns = started.elapsed().as_nanos() as f64 / (rounds * batch.len()) as f64;
        println!("recording: {ns:.0} ns per event");
    }

    #[test]
    fn times_are_rfc3339_to_the_millisecond() {
        assert_eq!(time(1_717_245_000_123), "2024-06-01T12:30:00.123Z");
    }
}
