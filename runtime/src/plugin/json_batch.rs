//! The `sluice:plugin@0.2.0` side of a call: a batch of events written as the two JSON texts
//! `handle-json` takes, and what such a plugin returns turned into the host's (0.1.0) types, so
//! that nothing past the sandbox knows which version a plugin speaks.
//!
//! Why JSON: an interpreter inside a component (CPython, SpiderMonkey) lifts a `list<event>`
//! record by record and field by field in its own bytecode, and parses each payload with a
//! separate call; a JSON text is parsed by the interpreter's native parser in one call, with
//! the payloads already spliced in as values (docs/performance.md has the figures).

use std::fmt::Write as _;

use serde::de::{self, Deserializer as _, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::bindings_json::sluice::plugin::types as v2;
use super::rows::{MalformedRows, json_to_packed};
use super::wit;

/// Accepts any JSON value, parsing every number (so that `1e400` is refused, as it would be by
/// a plugin's own parser) and every string escape, and keeps nothing.
struct Validate;

impl<'de> de::Deserialize<'de> for Validate {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(Validate)
    }
}

impl<'de> Visitor<'de> for Validate {
    type Value = Validate;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self, E> {
        Ok(Validate)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self, E> {
        Ok(Validate)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self, E> {
        Ok(Validate)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self, E> {
        Ok(Validate)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self, E> {
        Ok(Validate)
    }
    fn visit_unit<E>(self) -> Result<Self, E> {
        Ok(Validate)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self, A::Error> {
        while seq.next_element::<Validate>()?.is_some() {}
        Ok(Validate)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self, A::Error> {
        while map.next_entry::<IgnoredAny, Validate>()?.is_some() {}
        Ok(Validate)
    }
}

/// True if `text` is one JSON value that JSON parsers agree on.
fn is_json(text: &str) -> bool {
    let mut d = serde_json::Deserializer::from_str(text);
    d.deserialize_any(Validate).is_ok() && d.end().is_ok()
}

/// Appends `s` as a JSON string.
fn push_str(out: &mut String, s: &str) {
    out.push_str(&serde_json::to_string(s).expect("a string is always JSON"));
}

/// The batch as `handle-json` takes it (see `wit/0.2.0/sluice.wit`): the payloads as one JSON
/// array, each spliced in verbatim when it is valid JSON (else `null`), and the other fields as
/// another, per event `[id, event-type, timestamp-ms, attempt, source, tenant]` and the payload's
/// text when it was not valid JSON.
pub fn events_json(events: &[wit::Event]) -> (String, String) {
    let size: usize = events.iter().map(|e| e.payload.len() + 1).sum();
    let mut payloads = String::with_capacity(size + 2);
    let mut meta = String::with_capacity(events.iter().map(|e| e.id.len() + e.event_type.len() + 48).sum());
    payloads.push('[');
    meta.push('[');
    for (i, e) in events.iter().enumerate() {
        if i > 0 {
            payloads.push(',');
            meta.push(',');
        }
        let valid = is_json(&e.payload);
        payloads.push_str(if valid { &e.payload } else { "null" });
        meta.push('[');
        push_str(&mut meta, &e.id);
        meta.push(',');
        push_str(&mut meta, &e.event_type);
        let _ = write!(meta, ",{},{}", e.timestamp_ms, e.attempt);
        for v in [&e.source, &e.tenant] {
            meta.push(',');
            match v {
                Some(s) => push_str(&mut meta, s),
                None => meta.push_str("null"),
            }
        }
        if !valid {
            meta.push(',');
            push_str(&mut meta, &e.payload);
        }
        meta.push(']');
    }
    payloads.push(']');
    meta.push(']');
    (payloads, meta)
}

/// A 0.2.0 manifest in the host's types (the two versions' records are the same).
pub fn manifest(m: v2::Manifest) -> wit::Manifest {
    wit::Manifest {
        name: m.name,
        version: m.version,
        subscriptions: m.subscriptions,
        tables: m
            .tables
            .into_iter()
            .map(|t| wit::Table {
                name: t.name,
                columns: t
                    .columns
                    .into_iter()
                    .map(|c| wit::Column { name: c.name, ty: c.ty, comment: c.comment })
                    .collect(),
                engine: match t.engine {
                    v2::Engine::MergeTree => wit::Engine::MergeTree,
                    v2::Engine::ReplacingMergeTree(v) => wit::Engine::ReplacingMergeTree(v),
                    v2::Engine::SummingMergeTree(c) => wit::Engine::SummingMergeTree(c),
                    v2::Engine::AggregatingMergeTree => wit::Engine::AggregatingMergeTree,
                },
                partition_by: t.partition_by,
                order_by: t.order_by,
                settings: t.settings,
            })
            .collect(),
        extensions: m.extensions,
    }
}

/// What a 0.2.0 plugin returned, in the host's types: its JSON rows rewritten as packed rows.
/// Malformed if the rows do not parse, or if it filled both `rows` and `rows-json`.
pub fn output(out: v2::BatchOutput) -> Result<wit::BatchOutput, MalformedRows> {
    let failures = out.failures.into_iter().map(failure).collect();
    let rows = match (out.rows.is_empty(), out.rows_json.is_empty()) {
        (_, true) => out.rows,
        (true, false) => json_to_packed(&out.rows_json)?,
        (false, false) => {
            return Err(MalformedRows {
                offset: 0,
                reason: "the plugin returned both rows and rows-json; one of them must be empty".into(),
            });
        }
    };
    Ok(wit::BatchOutput { rows, failures })
}

/// A 0.2.0 failure in the host's types.
fn failure(f: v2::EventFailure) -> wit::EventFailure {
    wit::EventFailure {
        event: f.event,
        kind: match f.kind {
            v2::FailureKind::Permanent => wit::FailureKind::Permanent,
            v2::FailureKind::Transient => wit::FailureKind::Transient,
        },
        message: f.message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(payload: &str) -> wit::Event {
        wit::Event {
            id: "id-\"1\"".into(),
            event_type: "t".into(),
            timestamp_ms: -5,
            payload: payload.into(),
            source: Some("s".into()),
            tenant: None,
            attempt: 2,
        }
    }

    #[test]
    fn payloads_are_spliced_in_and_bad_ones_travel_as_text() {
        let (payloads, meta) =
            events_json(&[event(r#" {"a": [1, 2.5, "x"]} "#), event("{\"a\": 1e400}"), event("nope")]);
        let p: serde_json::Value = serde_json::from_str(&payloads).unwrap();
        let m: serde_json::Value = serde_json::from_str(&meta).unwrap();
        assert_eq!(p, serde_json::json!([{"a": [1, 2.5, "x"]}, null, null]));
        assert_eq!(m[0], serde_json::json!(["id-\"1\"", "t", -5, 2, "s", null]));
        assert_eq!(m[1], serde_json::json!(["id-\"1\"", "t", -5, 2, "s", null, "{\"a\": 1e400}"]));
        assert_eq!(m[2][6], "nope");
        assert!(!is_json("{} {}") && !is_json("[1,") && !is_json("\"\\ud800\"") && is_json(" 3 "));
    }
}
