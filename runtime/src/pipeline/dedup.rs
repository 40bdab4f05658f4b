//! Idempotency by the producer's event id: an event whose id was already seen by the same plugin
//! on the same stream or queue within the window is acknowledged without running — the same
//! event published twice (a producer's retry after a timeout) gives one set of rows.
//!
//! The id is the first of the configured keys an event has (`id` — the producer's event id on a
//! stream: the field `id` or the envelope's; `field:<name>` — another stream field;
//! `payload:eventId` — a path in the payload; `job-id` — a BullMQ job's id). Seen ids live in
//! Redis, shared by every host and kept across restarts: one set per time bucket (a fifth of the
//! window), `sluice:seen:<group>:{<stream>}:<bucket>`, each expiring a window after its bucket
//! ends. An id is claimed on its event's first delivery, by one script that checks every bucket
//! of the window and adds the new ids to the current one, so two copies read at once — by two
//! hosts, or in one batch — are told apart: the first runs, the second is dropped.
//!
//! What holds at the edges:
//! - a copy read within `window` of the first copy's claim is dropped; one read more than
//!   `window` plus a fifth later runs again; in between it may go either way (the bucket);
//! - the claim is made when the first copy is read, not when its rows commit: a first copy that
//!   is retried keeps its claim (its redeliveries are not checked) and a first copy that ends
//!   dead-lettered keeps it too — its copies are dropped, and the dead letter is the way back
//!   (reprocessing and replay go through the plugin's replay stream, which is never checked);
//! - events without any of the keys are never dropped.

use anyhow::Result;
use sha2::Digest;

use crate::policy::{IdKey, Idempotency};
use crate::redis_conn::RedisConn;
use crate::source::SourceEvent;

/// The id `e` is known by, as stored: the id itself, or a digest of a long one. `job_ids`: the
/// source's entry ids are a producer's job ids (BullMQ).
fn id_of(policy: &Idempotency, e: &SourceEvent, job_ids: bool) -> Option<Vec<u8>> {
    let id = policy.keys.iter().find_map(|k| match k {
        IdKey::EventId => {
            let id = &e.parsed.as_ref().ok()?.id;
            let stand_in = id.len() == e.stream.len() + 1 + e.entry_id.len()
                && id.starts_with(&*e.stream)
                && id.ends_with(&e.entry_id);
            (!job_ids && !stand_in).then(|| id.as_bytes().to_vec())
        }
        IdKey::Field(f) => e.fields.iter().find(|(n, _)| n == f).map(|(_, v)| v.clone()),
        IdKey::Payload(path) => {
            let payload: serde_json::Value = serde_json::from_str(&e.parsed.as_ref().ok()?.payload).ok()?;
            match path.iter().try_fold(&payload, |v, k| v.get(k))? {
                serde_json::Value::String(s) => Some(s.as_bytes().to_vec()),
                serde_json::Value::Number(n) => Some(n.to_string().into_bytes()),
                _ => None,
            }
        }
        IdKey::JobId => job_ids.then(|| e.entry_id.as_bytes().to_vec()),
    })?;
    if id.is_empty() {
        return None;
    }
    // Memory: a UUID is kept as it is; a longer id as 16 bytes of its SHA-256.
    Some(if id.len() <= 40 { id } else { sha2::Sha256::digest(&id)[..16].to_vec() })
}

/// Buckets per window: an id is remembered for the window and up to one bucket more.
const BUCKETS: u64 = 5;

/// The script that claims ids: KEYS are the window's buckets (and the next one), the current
/// one last; ARGV[1] the current bucket's time to live in ms, then the ids. Answers 1 for
/// each id already seen (a duplicate, also of an earlier id of the same call), 0 for each
/// claimed now. One SMISMEMBER per bucket and one SADD, in chunks that Lua's `unpack` can pass.
const CLAIM: &str = r#"
local n = #ARGV - 1
local seen = {}
for k = 1, #KEYS do
  -- A bucket nobody wrote (the window's older part, at start or on a quiet stream) is skipped.
  if k == #KEYS or redis.call('EXISTS', KEYS[k]) == 1 then
  for from = 2, #ARGV, 1000 do
    local to = math.min(from + 999, #ARGV)
    local r = redis.call('SMISMEMBER', KEYS[k], unpack(ARGV, from, to))
    for i = 1, #r do
      if r[i] == 1 then seen[from - 2 + i] = true end
    end
  end
  end
end
local out, new, here = {}, {}, {}
for i = 1, n do
  local id = ARGV[i + 1]
  if seen[i] or here[id] then
    out[i] = 1
  else
    here[id] = true
    new[#new + 1] = id
    out[i] = 0
  end
end
for from = 1, #new, 1000 do
  redis.call('SADD', KEYS[#KEYS], unpack(new, from, math.min(from + 999, #new)))
end
if #new > 0 then redis.call('PEXPIRE', KEYS[#KEYS], ARGV[1]) end
return out
"#;

/// Per event of a batch: whether it repeats an event already seen (and is to be dropped).
/// Only first deliveries are checked (a redelivery is the claimer itself, or an event whose
/// copy was already let through), and never the replay streams.
pub async fn duplicates(
    conn: &mut RedisConn,
    policy: &Idempotency,
    group: &str,
    events: &[SourceEvent],
    job_ids: bool,
) -> Result<Vec<bool>> {
    let mut dup = vec![false; events.len()];
    // By stream (a batch has one, but nothing here needs that): (event index, id).
    type Ids = Vec<(usize, Vec<u8>)>;
    let mut by_stream: Vec<(&str, Ids)> = Vec::new();
    for (i, e) in events.iter().enumerate() {
        if e.deliveries > 1 || crate::keys::is_replay_stream(&e.stream) {
            continue;
        }
        let Some(id) = id_of(policy, e, job_ids) else { continue };
        match by_stream.iter_mut().find(|(s, _)| *s == &*e.stream) {
            Some((_, ids)) => ids.push((i, id)),
            None => by_stream.push((&e.stream, vec![(i, id)])),
        }
    }
    if by_stream.is_empty() {
        return Ok(dup);
    }
    let bucket_ms = (policy.window.as_millis() as u64 / BUCKETS).max(1000);
    let now = chrono::Utc::now().timestamp_millis().max(0) as u64;
    let current = now / bucket_ms;
    // Buckets back to the one holding `now - window`.
    let back = policy.window.as_millis() as u64 / bucket_ms + 1;
    // Relative, so that Redis's clock does not matter: the current bucket is kept until a window
    // after it ends, by this host's clock.
    let expire_in = (current + 1) * bucket_ms - now + policy.window.as_millis() as u64;
    static SCRIPT: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| redis::Script::new(CLAIM));
    for (stream, ids) in by_stream {
        let mut inv = SCRIPT.prepare_invoke();
        // The next bucket too: a host whose clock is a little ahead may have claimed there.
        for b in current.saturating_sub(back)..current {
            inv.key(crate::keys::seen(group, stream, b));
        }
        inv.key(crate::keys::seen(group, stream, current + 1));
        inv.key(crate::keys::seen(group, stream, current));
        inv.arg(expire_in);
        for (_, id) in &ids {
            inv.arg(id.as_slice());
        }
        let seen: Vec<u8> = inv.invoke_async(conn).await?;
        for ((i, _), s) in ids.iter().zip(seen) {
            dup[*i] = s == 1;
        }
    }
    Ok(dup)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::contract::wit;

    fn event(fields: &[(&str, &str)], payload: &str) -> SourceEvent {
        let id = fields.iter().find(|(k, _)| *k == "id").map_or("events:t/7".to_string(), |(_, v)| v.to_string());
        SourceEvent {
            stream: Arc::from("events:t"),
            entry_id: "7".into(),
            deliveries: 1,
            fields: fields.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())).collect(),
            parsed: Ok(wit::Event {
                id,
                event_type: "t".into(),
                timestamp_ms: 0,
                payload: payload.into(),
                source: None,
                tenant: None,
                attempt: 1,
            }),
            written: Vec::new(),
            chunk_refs: Vec::new(),
        }
    }

    #[test]
    fn keys_in_order_of_preference() {
        let p = Idempotency::parse("id, payload:meta.eventId, job-id", Some(Duration::from_secs(60))).unwrap().unwrap();
        assert_eq!(p.keys[1], IdKey::Payload(vec!["meta".into(), "eventId".into()]));
        assert_eq!(
            Idempotency::parse("field:key", Some(Duration::from_secs(1))).unwrap().unwrap().keys,
            [IdKey::Field("key".into())]
        );
        assert_eq!(id_of(&p, &event(&[("id", "a")], r#"{"meta":{"eventId":"b"}}"#), false), Some(b"a".to_vec()));
        // A job's id is only `job-id`; an event without an id of its own has its stand-in.
        assert_eq!(id_of(&p, &event(&[("id", "a")], r#"{"meta":{"eventId":"b"}}"#), true), Some(b"b".to_vec()));
        assert_eq!(id_of(&p, &event(&[], r#"{"meta":{"eventId":"b"}}"#), false), Some(b"b".to_vec()));
        assert_eq!(id_of(&p, &event(&[], r#"{"meta":{"eventId":12}}"#), false), Some(b"12".to_vec()));
        // No key found: the job id only where entry ids are a producer's job ids.
        assert_eq!(id_of(&p, &event(&[], "{}"), true), Some(b"7".to_vec()));
        assert_eq!(id_of(&p, &event(&[], "{}"), false), None);
        // Long ids are kept as a digest.
        let long = "x".repeat(100);
        assert_eq!(id_of(&p, &event(&[("id", &long)], "{}"), false).unwrap().len(), 16);
    }

    #[test]
    fn off_and_bad_keys() {
        assert_eq!(Idempotency::parse("off", Some(Duration::from_secs(1))).unwrap(), None);
        assert!(Idempotency::parse(" ", Some(Duration::from_secs(1))).unwrap_err().contains("or say `off`"));
        assert_eq!(Idempotency::parse("field:id", None).unwrap(), None);
        let e = Idempotency::parse("eventId", Some(Duration::from_secs(1))).unwrap_err();
        assert!(e.contains("unknown idempotency key `eventId`") && e.contains("payload:<path>"), "{e}");
        assert!(Idempotency::parse("payload:a..b", Some(Duration::from_secs(1))).is_err());
    }
}
