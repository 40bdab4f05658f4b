//! Sources: where events come from: Redis Streams (`streams.rs`) and BullMQ queues
//! (`bullmq.rs`).
//!
//! The wire format (fixed by DESIGN.md): an event of type `T` is an entry of stream
//! `<prefix>T` with a JSON `payload` field and optional `id`, `ts`, `source`, `tenant`; or,
//! as the seed's Python services write it, one JSON envelope `{type, aggregate_id, data,
//! timestamp, ...}` in a field `event` or `data`, whose `data` becomes the payload.

pub mod bullmq;
pub mod delayed;
pub mod streams;

use std::sync::Arc;

use crate::plugin::wit;

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
        // The seed's Python envelope: {"type", "aggregate_id", "aggregate_type", "data", "timestamp"}.
        let env: serde_json::Value =
            serde_json::from_slice(raw).map_err(|e| format!("field `{name}` is not a JSON envelope: {e}"))?;
        let data = env.get("data").ok_or_else(|| format!("envelope in field `{name}` has no `data`"))?;
        let ts = env.get("timestamp").and_then(|t| t.as_str()).and_then(parse_envelope_time);
        let id = env.get("event_id").or_else(|| env.get("id")).and_then(|v| v.as_str()).map(str::to_string);
        (data.to_string(), id, ts)
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
    }

    #[test]
    fn bad_entries_say_why() {
        assert!(parse_entry("s", "x", "1-0", &f(&[("foo", "bar")])).unwrap_err().contains("no `payload`"));
        assert!(
            parse_entry("s", "x", "1-0", &f(&[("payload", "{}"), ("ts", "yesterday")])).unwrap_err().contains("`ts`")
        );
        assert!(parse_entry("s", "x", "1-0", &f(&[("data", "not json")])).unwrap_err().contains("not a JSON envelope"));
    }
}
