//! What a table guarantees about a batch inserted twice, as the schema stage records it: the
//! guarantee, the deduplication window, and the hidden entry column of tables whose engine
//! deduplicates by data (see `writer::dedup` for how the server's offer is detected).

use serde::Serialize;

/// The hidden column of exactly-once tables created on servers without deduplication tokens.
pub const ENTRY_COLUMN: &str = "sluice_entry";

/// What a table remembers of the blocks inserted into it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DedupWindow {
    /// The last this many blocks (or tokens).
    pub blocks: u64,
    /// ...and only those inserted within this many seconds (Replicated tables).
    pub seconds: Option<u64>,
}

impl std::fmt::Display for DedupWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.seconds {
            Some(s) => write!(f, "the last {} blocks inserted within {}", self.blocks, human_seconds(s)),
            None => write!(f, "the last {} blocks", self.blocks),
        }
    }
}

fn human_seconds(s: u64) -> String {
    match s {
        86_400 => "1 day".into(),
        3600 => "1 hour".into(),
        s if s % 86_400 == 0 => format!("{} days", s / 86_400),
        s if s % 3600 == 0 => format!("{} hours", s / 3600),
        s => format!("{s} s"),
    }
}

/// What happens to rows of a batch that is inserted again (after a crash or a retry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Guarantee {
    /// The table keeps the rows twice: a batch recovered after a crash may double-count.
    #[default]
    AtLeastOnce,
    /// A Replicated*MergeTree table drops a block whose data it already stored.
    ExactlyOnceReplicated,
    /// The table drops a block whose `insert_deduplication_token` it already saw.
    ExactlyOnceToken,
}

impl Guarantee {
    pub fn exactly_once(self) -> bool {
        self != Guarantee::AtLeastOnce
    }

    /// For the log, `sluice plugin inspect` and the admin API.
    pub fn describe(self) -> &'static str {
        match self {
            Guarantee::AtLeastOnce => {
                "at-least-once: rows of a batch recovered after a crash may be written twice (the table deduplicates nothing)"
            }
            Guarantee::ExactlyOnceReplicated => {
                "exactly-once: batches recorded in Redis, re-inserted identically after a crash, dropped by the Replicated engine's block deduplication"
            }
            Guarantee::ExactlyOnceToken => {
                "exactly-once: batches recorded in Redis, re-inserted after a crash with the same insert_deduplication_token"
            }
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Guarantee::AtLeastOnce => "at_least_once",
            Guarantee::ExactlyOnceReplicated => "exactly_once_replicated",
            Guarantee::ExactlyOnceToken => "exactly_once_token",
        }
    }
}

/// A row's entry column value: which consumer group (plugin) and Redis entry (stream and id)
/// it came from — two plugins writing alike rows of one event into one table must not look
/// alike either. FNV-1a, so that it is the same in every build and on every host.
pub fn entry_hash(group: &str, stream: &str, entry_id: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in group.bytes().chain([0u8]).chain(stream.bytes()).chain([0u8]).chain(entry_id.bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_hashes_differ_by_stream_and_id() {
        assert_ne!(entry_hash("g", "a", "1-0"), entry_hash("g", "a", "1-1"));
        assert_ne!(entry_hash("g", "a1", "-0"), entry_hash("g", "a", "1-0"));
        assert_ne!(entry_hash("sluice:p", "a", "1-0"), entry_hash("sluice:q", "a", "1-0"));
        assert_eq!(entry_hash("g", "events:x", "5-0"), entry_hash("g", "events:x", "5-0"));
    }
}
