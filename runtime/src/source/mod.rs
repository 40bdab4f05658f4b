//! Sources: where events come from — Redis Streams (`streams`) and BullMQ queues (`bullmq`),
//! plus the delayed set that feeds the streams (`delayed`) — and the contract between a source
//! and the delivery core (`pipeline`):
//!
//! - an [`Intake`] hands the core batches of [`SourceEvent`]s, each batch with its own
//!   [`Settle`]: the source's way of acknowledging those events;
//! - the core calls the plugin, hands the rows to the writer, waits for their commit, decides a
//!   [`Settlement`] per event, and gives them back through [`Settle::settle`]. The source carries
//!   them out its own way (XACK, XADD `sluice:dlq`...; or a job completed, failed for a retry,
//!   failed for good). The core never asks which source it serves.
//!
//! The wire format (`docs/contract.md`): an event of type `T` is an entry of stream
//! `<prefix>T` with a JSON `payload` field and optional `id`, `ts`, `source`, `tenant`; or the
//! layouts the Python services write: one JSON envelope `{type, aggregate_id, data, timestamp,
//! ...}` in a field `event` or `data` (its `data` becomes the payload); the envelope's keys as
//! fields of their own (`type`, `aggregate_id`, `data`, `timestamp`, ...: `data` is the
//! payload); or `data` holding the payload alone.

pub mod bullmq;
pub mod delayed;
pub mod streams;

use std::future::Future;
use std::sync::Arc;

use crate::contract::wit;
use crate::dead_letter::DeadLetterKind;

/// One event read from a source, with what is needed to acknowledge it.
#[derive(Debug, Clone)]
pub struct SourceEvent {
    /// The stream key, e.g. `events:order.created`.
    pub stream: Arc<str>,
    /// The Redis entry id, e.g. `1717245000123-0`.
    pub entry_id: String,
    /// How many times the entry has been delivered (1 on first read).
    pub deliveries: u64,
    /// The entry's fields as read, for the dead-letter stream.
    pub fields: Vec<(String, Vec<u8>)>,
    /// The event for the plugin, or why the entry is not a valid event.
    pub parsed: Result<wit::Event, String>,
    /// Tables (by index in the plugin's declaration) that already hold this event's rows from
    /// an earlier delivery (exactly-once tables only, see `writer::ledger`): its new rows for
    /// them are dropped.
    pub written: Vec<usize>,
    /// The ledger's chunk fields (see `writer::ledger`) that list this event, found when it
    /// was delivered again: it leaves them when it is acknowledged or dead-lettered.
    pub chunk_refs: Vec<String>,
}

/// Whose events a pipeline reads: a plugin version, through its consumer group, for one
/// event type.
#[derive(Debug, Clone)]
pub struct Subscriber {
    pub plugin: Arc<str>,
    /// The version's hash (dead letters name it).
    pub version: Arc<str>,
    pub event_type: Arc<str>,
    /// `sluice:<plugin>` (see `keys::group_name`): the consumer group, and the ledger's key space.
    pub group: Arc<str>,
    /// The plugin's exactly-once tables: acknowledging an event also deletes its ledger fields
    /// for them (see `ledger`).
    pub ledger_tables: Arc<[String]>,
}

impl Subscriber {
    /// How `/ready` names this version's pipeline over `source` when it cannot read (the
    /// version is in it: during a hot swap the old version's stop must not clear the new one's).
    pub fn pipeline_name(&self, source: &str) -> String {
        format!("{}@{} / {} from {source}", self.plugin, &self.version[..self.version.len().min(12)], self.event_type)
    }
}

/// What becomes of one event, as the delivery core decided it (`pipeline::decide`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    /// Its rows are committed (or it had none): done.
    Ack,
    /// A transient failure: deliver it again later (the reason, for the source's records).
    Retry(String),
    /// No further attempt can help: out of the way, with why.
    DeadLetter { kind: DeadLetterKind, error: String },
}

/// The rows of a batch recorded in the ledger for one exactly-once table (see `ledger`).
#[derive(Debug, Clone)]
pub struct Recorded {
    pub table: String,
    /// The recorded batch's id.
    pub batch: Arc<str>,
    /// The events (by index in the batch) whose rows it holds.
    pub events: Vec<usize>,
}

/// A batch's outcome, handed back to its source.
pub struct Settled {
    pub events: Vec<SourceEvent>,
    /// One per event, in order.
    pub settlements: Vec<Settlement>,
    /// The batch's chunk id, when the ledger indexed its rows by chunk ([`Intake::CHUNKED_LEDGER`]).
    pub chunk: Option<Arc<str>>,
    /// Where its rows were recorded, per exactly-once table.
    pub recorded: Vec<Recorded>,
}

/// Events read together, and how to acknowledge them.
pub struct Batch<S> {
    pub events: Vec<SourceEvent>,
    /// These events may have been delivered before: the core looks up the ledger for rows an
    /// earlier delivery already wrote (exactly-once tables) before handling them.
    pub maybe_written: bool,
    pub settle: S,
}

/// Where a pipeline's events come from: one implementation per source.
pub trait Intake: Send + 'static {
    type Settle: Settle;
    /// The ledger indexes this source's rows by batch (one field per batch and table, dropped
    /// with the batch's acknowledgement), not event by event.
    const CHUNKED_LEDGER: bool;
    /// The source retries by a policy of its own (BullMQ's `attempts` and `backoff`): the host
    /// never dead-letters its events for their delivery count.
    const OWN_RETRY_POLICY: bool;
    /// Where this source's dead letters go, for logs.
    const DEAD_LETTERS: &'static str;
    /// Entry ids are the producer's job ids (BullMQ), which the `job-id` idempotency key names.
    const JOB_IDS: bool;

    /// The stream or queue name, for logs and metrics.
    fn source(&self) -> &Arc<str>;

    /// Gets ready to read (consumer groups, the job inbox...).
    fn start(&mut self) -> impl Future<Output = anyhow::Result<()>> + Send;

    /// Waits for the next batch of at most `max` events (never an empty one). `Ok(None)`: the
    /// source is closed. Cancelled at any await point by a stop: what it read but did not return
    /// is delivered again.
    fn next(&mut self, max: usize) -> impl Future<Output = anyhow::Result<Option<Batch<Self::Settle>>>> + Send;
}

/// A batch's acknowledgement. Dropped without [`Settle::settle`] (a stop), its events are
/// delivered again later.
pub trait Settle: Send + 'static {
    /// Every row of the batch was handed to the writer: from now on the rows may be committed
    /// whatever happens to this host.
    fn rows_handed_over(&self) {}

    /// Carries the settlements out.
    fn settle(self, settled: Settled) -> impl Future<Output = ()> + Send;
}

/// Milliseconds part of a stream entry id.
pub fn entry_id_millis(entry_id: &str) -> Option<i64> {
    entry_id.split('-').next()?.parse().ok()
}

fn field<'a>(fields: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a [u8]> {
    fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_slice())
}

fn utf8<'a>(name: &str, v: &'a [u8]) -> Result<&'a str, String> {
    std::str::from_utf8(v).map_err(|_| format!("field `{name}` is not UTF-8"))
}

/// Parses a stream entry into an event following the wire format. The error names what is
/// wrong with the entry.
pub fn parse_entry(
    stream: &str,
    event_type: &str,
    entry_id: &str,
    fields: &[(String, Vec<u8>)],
) -> Result<wit::Event, String> {
    let entry_ms = entry_id_millis(entry_id).ok_or_else(|| format!("entry id `{entry_id}` is not a stream id"))?;
    let opt = |name: &str| -> Result<Option<String>, String> {
        field(fields, name).map(|v| utf8(name, v).map(str::to_string)).transpose()
    };
    let (payload, envelope_id, envelope_ts) = if let Some(p) = field(fields, "payload") {
        (utf8("payload", p)?.to_string(), None, None)
    } else if let Some((name, raw)) = ["event", "data"].iter().find_map(|n| field(fields, n).map(|v| (*n, v))) {
        // The Python services' layouts (see the module's comment).
        let value: serde_json::Value = serde_json::from_slice(raw)
            .map_err(|e| format!("field `{name}` is neither a JSON envelope nor a JSON payload: {e}"))?;
        let text_field = |k: &str| field(fields, k).and_then(|v| std::str::from_utf8(v).ok());
        if is_envelope(&value) {
            // {"type", "aggregate_id", "aggregate_type", "data", "timestamp", "event_id"?} in one field.
            let data = &value["data"];
            let ts = value.get("timestamp").and_then(|t| t.as_str()).and_then(parse_envelope_time);
            let id = value.get("event_id").or_else(|| value.get("id")).and_then(|v| v.as_str()).map(str::to_string);
            (data.to_string(), id, ts)
        } else if name == "data" {
            // Flat: the envelope's keys as fields, `data` the payload — or `data` alone.
            let ts = match text_field("timestamp") {
                Some(t) => Some(
                    parse_envelope_time(t)
                        .ok_or_else(|| format!("field `timestamp` = {t:?} is not an RFC 3339 or ISO 8601 time"))?,
                ),
                None => None,
            };
            // The field's own text, not re-serialised: numbers keep every digit.
            (utf8("data", raw)?.trim().to_string(), text_field("event_id").map(str::to_string), ts)
        } else {
            return Err(
                "field `event` is not an envelope: a JSON object with `data` and `type`, `aggregate_id` or `timestamp`"
                    .into(),
            );
        }
    } else {
        return Err("entry has no `payload` field (nor an `event`/`data` envelope)".into());
    };
    let id = match opt("id")? {
        Some(id) if !id.is_empty() => id,
        _ => envelope_id.unwrap_or_else(|| format!("{stream}/{entry_id}")),
    };
    let timestamp_ms = match opt("ts")? {
        Some(ts) => {
            ts.trim().parse::<i64>().map_err(|_| format!("field `ts` = {ts:?} is not milliseconds since the epoch"))?
        }
        None => envelope_ts.unwrap_or(entry_ms),
    };
    // An event time no column can hold is the event's fault, said here, not an INSERT error
    // blamed on the plugin's table later.
    if !(0..=MAX_EVENT_TIME_MS).contains(&timestamp_ms) {
        return Err(format!(
            "event time {timestamp_ms} (field `ts` or the envelope's timestamp) is out of range: milliseconds since the epoch from 0 (1970-01-01) to {MAX_EVENT_TIME_MS} (2106-02-07, the end of ClickHouse's DateTime) — seconds or microseconds by mistake?"
        ));
    }
    Ok(wit::Event {
        id,
        event_type: event_type.to_string(),
        timestamp_ms,
        payload,
        source: opt("source")?,
        tenant: opt("tenant")?,
        attempt: 1,
    })
}

/// Whether a JSON value is the Python services' envelope (rather than a payload that happens to
/// be in a field named `data`): an object with `data` and at least one of the envelope's other
/// keys (`id` included: envelopes name their event id so).
fn is_envelope(v: &serde_json::Value) -> bool {
    v.get("data").is_some()
        && ["type", "aggregate_id", "aggregate_type", "timestamp", "event_id", "id"].iter().any(|k| v.get(*k).is_some())
}

/// The last millisecond ClickHouse's `DateTime` holds (2106-02-07T06:28:15.999Z).
pub const MAX_EVENT_TIME_MS: i64 = u32::MAX as i64 * 1000 + 999;

/// The envelope's `timestamp`: RFC 3339, or Python's `isoformat()` without an offset (UTC).
fn parse_envelope_time(s: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(s).map(|t| t.timestamp_millis()).ok().or_else(|| {
        chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f").ok().map(|t| t.and_utc().timestamp_millis())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(pairs: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())).collect()
    }

    #[test]
    fn plain_entries() {
        let e = parse_entry("events:x", "x", "1717245000123-0", &f(&[("payload", "{\"a\":1}")])).unwrap();
        assert_eq!(e.id, "events:x/1717245000123-0");
        assert_eq!(e.timestamp_ms, 1_717_245_000_123);
        assert_eq!(e.payload, "{\"a\":1}");
        let e =
            parse_entry("events:x", "x", "5-0", &f(&[("payload", "{}"), ("id", "u-1"), ("ts", "42"), ("tenant", "t")]))
                .unwrap();
        assert_eq!((e.id.as_str(), e.timestamp_ms, e.tenant.as_deref()), ("u-1", 42, Some("t")));
    }

    #[test]
    fn envelopes() {
        let env = r#"{"type":"task.created","aggregate_id":"1","aggregate_type":"task","data":{"task_id":1},"timestamp":"2025-01-15T10:30:00"}"#;
        let e = parse_entry("events:task.created", "task.created", "9-0", &f(&[("event", env)])).unwrap();
        assert_eq!(e.payload, r#"{"task_id":1}"#);
        assert_eq!(e.timestamp_ms, 1_736_937_000_000);
        // The same envelope in `data`.
        let e = parse_entry("events:task.created", "task.created", "9-0", &f(&[("data", env)])).unwrap();
        assert_eq!((e.payload.as_str(), e.timestamp_ms), (r#"{"task_id":1}"#, 1_736_937_000_000));
        // Flat: the envelope's keys as fields of their own.
        let flat = f(&[
            ("type", "task.created"),
            ("aggregate_id", "1"),
            ("aggregate_type", "task"),
            ("data", r#"{"task_id":1,"title":"Fix bug"}"#),
            ("timestamp", "2025-01-15T10:30:00"),
            ("event_id", "ev-1"),
        ]);
        let e = parse_entry("events:task.created", "task.created", "9-0", &flat).unwrap();
        assert_eq!(e.payload, r#"{"task_id":1,"title":"Fix bug"}"#);
        assert_eq!((e.id.as_str(), e.timestamp_ms), ("ev-1", 1_736_937_000_000));
        // `data` holding the payload alone (a payload may have a `data` key of its own).
        let e =
            parse_entry("events:user.created", "user.created", "7-0", &f(&[("data", r#"{"email":"a@b"}"#)])).unwrap();
        assert_eq!((e.payload.as_str(), e.timestamp_ms), (r#"{"email":"a@b"}"#, 7));
        let e = parse_entry("s", "x", "7-0", &f(&[("data", r#"{"data":[1],"n":2}"#)])).unwrap();
        assert_eq!(e.payload, r#"{"data":[1],"n":2}"#);
        // An envelope naming its id `id`; a payload keeps every digit of its numbers.
        let e = parse_entry("s", "x", "7-0", &f(&[("data", r#"{"id":"e1","data":{"a":1}}"#)])).unwrap();
        assert_eq!((e.payload.as_str(), e.id.as_str()), (r#"{"a":1}"#, "e1"));
        let e = parse_entry("s", "x", "7-0", &f(&[("data", r#"{"big": 123456789012345678901234567890}"#)])).unwrap();
        assert_eq!(e.payload, r#"{"big": 123456789012345678901234567890}"#);
        assert!(
            parse_entry("s", "x", "7-0", &f(&[("data", "{}"), ("timestamp", "soon")]))
                .unwrap_err()
                .contains("field `timestamp`")
        );
    }

    #[test]
    fn bad_entries_say_why() {
        assert!(parse_entry("s", "x", "1-0", &f(&[("foo", "bar")])).unwrap_err().contains("no `payload`"));
        assert!(
            parse_entry("s", "x", "1-0", &f(&[("payload", "{}"), ("ts", "yesterday")])).unwrap_err().contains("`ts`")
        );
        assert!(
            parse_entry("s", "x", "1-0", &f(&[("payload", "{}"), ("ts", "99999999999999999")]))
                .unwrap_err()
                .contains("is out of range")
        );
        assert!(
            parse_entry("s", "x", "1-0", &f(&[("payload", "{}"), ("ts", "-1")]))
                .unwrap_err()
                .contains("is out of range")
        );
        assert!(
            parse_entry("s", "x", "1-0", &f(&[("data", "not json")])).unwrap_err().contains("neither a JSON envelope")
        );
    }
}
