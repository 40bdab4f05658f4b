//! The dead-letter record: one entry of `sluice:dlq` per event no further attempt can help,
//! built and parsed here only. Whoever dead-letters an event (the streams source, the delayed
//! mover's Lua script and its cluster path) writes these fields; `sluice dlq`, the admin API
//! and the dashboard read them back through [`DeadLetterEntry`].
//!
//! Fields, in order (every value a string; `docs/contract.md` has the table):
//! `stream`, `entry_id`, `event_id`, `event_type`, `group`, `plugin`, `plugin_version`,
//! `attempts`, `error_kind`, `error`, `failed_at`, then `field:<name>` for each field of the
//! original entry. A delayed event that is not valid JSON has only `stream` (`sluice:delayed`),
//! `entry_id` (empty), `error_kind`, `error` and `field:member`.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

pub const STREAM: &str = "stream";
pub const ENTRY_ID: &str = "entry_id";
pub const EVENT_ID: &str = "event_id";
pub const EVENT_TYPE: &str = "event_type";
pub const GROUP: &str = "group";
pub const PLUGIN: &str = "plugin";
pub const PLUGIN_VERSION: &str = "plugin_version";
pub const ATTEMPTS: &str = "attempts";
pub const ERROR_KIND: &str = "error_kind";
pub const ERROR: &str = "error";
pub const FAILED_AT: &str = "failed_at";
/// Prefix of the original entry's fields.
pub const ORIGINAL: &str = "field:";

/// Why an event was dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadLetterKind {
    /// The entry is not a valid event (no payload, bad envelope, bad `ts`...).
    InvalidEvent,
    /// The handler said no attempt can help (a permanent error).
    Permanent,
    /// Every attempt the policy allows failed, or the host stopped while handling it each time.
    RetriesExhausted,
    /// The event was handled, but ClickHouse refused or did not take its rows on the last attempt.
    InsertFailed,
}

impl DeadLetterKind {
    pub const ALL: [DeadLetterKind; 4] = [
        DeadLetterKind::InvalidEvent,
        DeadLetterKind::Permanent,
        DeadLetterKind::RetriesExhausted,
        DeadLetterKind::InsertFailed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DeadLetterKind::InvalidEvent => "invalid_event",
            DeadLetterKind::Permanent => "permanent",
            DeadLetterKind::RetriesExhausted => "retries_exhausted",
            DeadLetterKind::InsertFailed => "insert_failed",
        }
    }
}

impl fmt::Display for DeadLetterKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DeadLetterKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        DeadLetterKind::ALL.into_iter().find(|k| k.name() == s).ok_or_else(|| {
            let names: Vec<&str> = DeadLetterKind::ALL.iter().map(|k| k.name()).collect();
            format!("unknown dead-letter kind `{s}` (one of {})", names.join(", "))
        })
    }
}

/// One event on its way to `sluice:dlq`.
pub struct DeadLetter<'a> {
    pub stream: &'a str,
    pub entry_id: &'a str,
    /// The event's id, empty if the entry is not a valid event.
    pub event_id: &'a str,
    pub event_type: &'a str,
    pub group: &'a str,
    pub plugin: &'a str,
    pub plugin_version: &'a str,
    pub attempts: u64,
    pub kind: DeadLetterKind,
    pub error: &'a str,
    /// The original entry's fields.
    pub original: &'a [(String, Vec<u8>)],
}

impl DeadLetter<'_> {
    /// Adds the record's XADD to `pipe`.
    pub fn add_to(&self, pipe: &mut redis::Pipeline, dlq: &str, failed_at: &str) {
        let c = pipe.cmd("XADD").arg(dlq).arg("*");
        c.arg(STREAM).arg(self.stream);
        c.arg(ENTRY_ID).arg(self.entry_id);
        c.arg(EVENT_ID).arg(self.event_id);
        c.arg(EVENT_TYPE).arg(self.event_type);
        c.arg(GROUP).arg(self.group);
        c.arg(PLUGIN).arg(self.plugin);
        c.arg(PLUGIN_VERSION).arg(self.plugin_version);
        c.arg(ATTEMPTS).arg(self.attempts);
        c.arg(ERROR_KIND).arg(self.kind.name());
        c.arg(ERROR).arg(self.error);
        c.arg(FAILED_AT).arg(failed_at);
        for (k, v) in self.original {
            c.arg(format!("{ORIGINAL}{k}")).arg(v.as_slice());
        }
        pipe.ignore();
    }
}

/// The record of a delayed-set member that cannot be delivered (not the JSON the format asks
/// for, or refused by its stream): the fields in XADD order, for Rust and for the mover's Lua
/// script alike (which takes them as arguments).
pub fn undeliverable_member<'a>(
    delayed_key: &'a str,
    error: &'a str,
    member: &'a [u8],
) -> [(&'static str, &'a [u8]); 5] {
    [
        (STREAM, delayed_key.as_bytes()),
        (ENTRY_ID, b""),
        (ERROR_KIND, DeadLetterKind::InvalidEvent.name().as_bytes()),
        (ERROR, error.as_bytes()),
        (MEMBER, member),
    ]
}

/// The field holding a delayed-set member in its dead letter.
pub const MEMBER: &str = "field:member";

/// One entry of `sluice:dlq` as read back.
#[derive(Debug, Clone)]
pub struct DeadLetterEntry {
    /// The entry's id in `sluice:dlq`.
    pub id: String,
    /// Its fields in order: `stream`, `entry_id`, `plugin`, ..., `field:<original field>`.
    pub fields: Vec<(String, Vec<u8>)>,
}

impl DeadLetterEntry {
    pub fn get(&self, name: &str) -> Option<String> {
        self.fields.iter().find(|(k, _)| k == name).map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }

    /// The kind, if the record names a known one.
    pub fn kind(&self) -> Option<DeadLetterKind> {
        self.get(ERROR_KIND)?.parse().ok()
    }

    /// The original entry's fields.
    pub fn original_fields(&self) -> Vec<(String, Vec<u8>)> {
        self.fields.iter().filter_map(|(k, v)| k.strip_prefix(ORIGINAL).map(|k| (k.to_string(), v.clone()))).collect()
    }

    /// `{"dlq_id", <record fields>..., "fields": {<original fields>}}`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        m.insert("dlq_id".into(), self.id.clone().into());
        let mut original = serde_json::Map::new();
        for (k, v) in &self.fields {
            let v = String::from_utf8_lossy(v).into_owned();
            match k.strip_prefix(ORIGINAL) {
                Some(f) => {
                    original.insert(f.to_string(), v.into());
                }
                None => {
                    m.insert(k.clone(), v.into());
                }
            }
        }
        m.insert("fields".into(), original.into());
        m.into()
    }
}

/// Entries of an XRANGE reply on `sluice:dlq`.
pub fn parse_entries(v: redis::Value) -> anyhow::Result<Vec<DeadLetterEntry>> {
    type Entry = (String, Vec<(String, Vec<u8>)>);
    let entries: Vec<Entry> =
        redis::from_redis_value(v).map_err(|e| anyhow::anyhow!("unexpected XRANGE reply: {e}"))?;
    Ok(entries.into_iter().map(|(id, fields)| DeadLetterEntry { id, fields }).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_and_unknown_ones_say_what_is_known() {
        for k in DeadLetterKind::ALL {
            assert_eq!(k.name().parse::<DeadLetterKind>(), Ok(k));
        }
        let e = "lost".parse::<DeadLetterKind>().unwrap_err();
        assert!(e.contains("invalid_event, permanent, retries_exhausted, insert_failed"), "{e}");
    }

    #[test]
    fn a_record_reads_back_as_written() {
        let original = vec![("payload".to_string(), b"{}".to_vec()), ("id".to_string(), b"e-1".to_vec())];
        let letter = DeadLetter {
            stream: "events:x",
            entry_id: "1-0",
            event_id: "e-1",
            event_type: "x",
            group: "sluice:p",
            plugin: "p",
            plugin_version: "sha",
            attempts: 3,
            kind: DeadLetterKind::RetriesExhausted,
            error: "boom",
            original: &original,
        };
        let mut pipe = redis::pipe();
        letter.add_to(&mut pipe, "sluice:dlq", "2026-01-01T00:00:00.000Z");
        let args: Vec<String> = pipe
            .cmd_iter()
            .next()
            .unwrap()
            .args_iter()
            .map(|a| match a {
                redis::Arg::Simple(b) => String::from_utf8_lossy(b).into_owned(),
                _ => String::new(),
            })
            .collect();
        assert_eq!(&args[..3], ["XADD", "sluice:dlq", "*"]);
        let fields: Vec<(String, Vec<u8>)> =
            args[3..].chunks(2).map(|kv| (kv[0].clone(), kv[1].clone().into_bytes())).collect();
        let entry = DeadLetterEntry { id: "9-0".into(), fields };
        assert_eq!(entry.kind(), Some(DeadLetterKind::RetriesExhausted));
        assert_eq!(entry.get(ATTEMPTS).as_deref(), Some("3"));
        assert_eq!(entry.original_fields(), original);
        assert_eq!(entry.to_json()["fields"]["id"], "e-1");
    }
}
