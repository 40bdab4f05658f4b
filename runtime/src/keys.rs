//! The Redis keys the host owns, named in one place (the contract: `docs/contract.md`).
//! Everything Sluice keeps in Redis is under `sluice:`, besides the event streams producers
//! write (`<prefix><type>`, `events:` by default) and BullMQ's own keys.

/// The default prefix of event streams: an event of type `T` is an entry of `events:T`.
pub const DEFAULT_STREAM_PREFIX: &str = "events:";

/// The dead-letter stream (its record: `dead_letter`).
pub const DLQ_STREAM: &str = "sluice:dlq";

/// The sorted set of delayed events (see `source::delayed`).
pub const DELAYED: &str = "sluice:delayed";

/// Which host moves delayed events on a Redis Cluster, for a few seconds at a time.
pub const DELAYED_MOVER_LOCK: &str = "sluice:delayed-mover";

/// `s` with the glob characters of `SCAN MATCH` escaped.
pub fn glob_escape(s: &str) -> String {
    s.chars().flat_map(|c| if "*?[]\\".contains(c) { vec!['\\', c] } else { vec![c] }).collect()
}

/// The stream of events of type `event_type`.
pub fn event_stream(prefix: &str, event_type: &str) -> String {
    format!("{prefix}{event_type}")
}

/// The record of a plugin's canary rollout (see `rollout`): its candidate, counts and verdict.
pub fn rollout(plugin: &str) -> String {
    format!("sluice:rollout:{plugin}")
}

/// The consumer group of a plugin, on every stream it reads.
pub fn group_name(plugin: &str) -> String {
    format!("sluice:{plugin}")
}

/// The running hosts (see `admin::live`): a hash, consumer name → its last beat.
pub const HOSTS: &str = "sluice:hosts";

/// The stream a plugin's re-fed events go to: dead letters reprocessed and history replayed
/// for that plugin alone (re-adding them to `events:<type>` would feed every plugin again).
pub fn replay_stream(plugin: &str, event_type: &str) -> String {
    format!("sluice:replay:{plugin}:{event_type}")
}

/// Whether `stream` is one of the plugins' replay streams.
pub fn is_replay_stream(stream: &str) -> bool {
    stream.starts_with("sluice:replay:")
}

/// The ids of `stream`'s events `group` saw in time bucket `bucket` (see `pipeline::dedup`): in
/// the stream's slot, so that one script checks a window's buckets on a Redis Cluster too.
pub fn seen(group: &str, stream: &str, bucket: u64) -> String {
    format!("sluice:seen:{group}:{}:{bucket}", same_slot_as(stream))
}

/// A recorded batch of an exactly-once table (see `ledger`).
pub fn batch(id: &str) -> String {
    format!("sluice:batch:{id}")
}

/// Which recorded batch holds the rows of which events of `stream` read by `group` (see
/// `ledger`). On a Redis Cluster it lives in the stream's slot, so that an event's XACK and the
/// deletion of its fields are one MULTI; on one server the key keeps the name it always had
/// (`…:<stream>`), so that batches recorded by an older version are still found.
pub fn written(group: &str, stream: &str, cluster: bool) -> String {
    match cluster {
        true => format!("sluice:written:{group}:{}", same_slot_as(stream)),
        false => format!("sluice:written:{group}:{stream}"),
    }
}

/// Every table a group's batches were ever recorded for.
pub fn written_tables(group: &str) -> String {
    format!("sluice:written-tables:{group}")
}

/// The part of a key Redis Cluster hashes: the hash tag (between the first `{` and the next
/// `}`, if not empty), else the whole key.
pub fn slot_tag(key: &str) -> &str {
    if let Some(open) = key.find('{')
        && let Some(len) = key[open + 1..].find('}')
        && len > 0
    {
        return &key[open + 1..open + 1 + len];
    }
    key
}

/// `key` as a suffix of another key that must live in the same slot: itself if it carries a
/// hash tag, else wrapped in `{}`.
pub fn same_slot_as(key: &str) -> String {
    if slot_tag(key).len() < key.len() { key.to_string() } else { format!("{{{key}}}") }
}

/// A stream entry id, ordered as Redis orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct StreamId(pub u64, pub u64);

impl StreamId {
    /// `1717245000123-5`, or `1717245000123` (sequence 0).
    pub fn parse(s: &str) -> Option<StreamId> {
        let (ms, seq) = s.split_once('-').unwrap_or((s, "0"));
        Some(StreamId(ms.parse().ok()?, seq.parse().ok()?))
    }

    /// The id right after this one.
    pub fn next(self) -> StreamId {
        if self.1 == u64::MAX { StreamId(self.0 + 1, 0) } else { StreamId(self.0, self.1 + 1) }
    }
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.0, self.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_order_and_step() {
        let a = StreamId::parse("1717245000123-5").unwrap();
        assert!(a < StreamId::parse("1717245000124-0").unwrap());
        assert!(a > StreamId::parse("1717245000123").unwrap());
        assert_eq!(a.next().to_string(), "1717245000123-6");
        assert_eq!(StreamId(7, u64::MAX).next(), StreamId(8, 0));
        assert!(StreamId::parse("x-1").is_none());
    }

    #[test]
    fn names() {
        assert_eq!(event_stream(DEFAULT_STREAM_PREFIX, "order.created"), "events:order.created");
        assert_eq!(group_name("p"), "sluice:p");
        assert_eq!(replay_stream("p", "t"), "sluice:replay:p:t");
        assert_eq!(written("sluice:p", "events:a", false), "sluice:written:sluice:p:events:a");
        assert_eq!(written("sluice:p", "events:a", true), "sluice:written:sluice:p:{events:a}");
        assert_eq!(
            written("sluice:p", "events:{orders}:created", true),
            "sluice:written:sluice:p:events:{orders}:created"
        );
        assert_eq!(slot_tag("events:order.created"), "events:order.created");
        assert_eq!(slot_tag("{orders}:created"), "orders");
        assert_eq!(slot_tag("a{}b"), "a{}b");
    }
}
