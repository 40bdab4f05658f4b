//! Which tables drop a batch inserted twice, and how the host creates tables that do.
//!
//! Exactly-once rests on two things: the writer records each batch in Redis before inserting
//! it, so whoever recovers it after a crash inserts the *identical* block again (see
//! `ledger`); and the table drops a block it has already stored. ClickHouse does the second in
//! two ways, detected at start:
//! - **Replicated*MergeTree** (ZooKeeper configured on the server; every release, 18.16
//!   included): a block whose data hashes like one of the table's last
//!   `replicated_deduplication_window` blocks is dropped. Because the hash is of the data, two
//!   *different* batches with identical rows would also collide (e.g. two events with the same
//!   counts): tables the host creates this way get a hidden column [`ENTRY_COLUMN`](crate::schema::ENTRY_COLUMN), a hash of
//!   the Redis stream and entry id each row came from, so blocks of different events never hash
//!   alike and the same event's block always does.
//! - **`insert_deduplication_token`** (current releases): the writer sends the batch's id as the
//!   token; MergeTree tables keep a window of tokens with `non_replicated_deduplication_window`,
//!   Replicated ones anyway.
//!
//! Where neither is available (18.16 without ZooKeeper, or `exactly_once = "off"`), tables are
//! plain MergeTree and the guarantee is at-least-once: said at start for each table.
//!
//! The window must cover every block inserted into a table between a batch's first insert and
//! its recovery (a visibility timeout or a restart later): [`DEDUP_WINDOW`] blocks. Replicated
//! tables also forget blocks older than `replicated_deduplication_window_seconds` (7 days on
//! 18.16, one hour on current releases since 25.10): tables the host creates keep
//! [`DEDUP_WINDOW_SECONDS`]. MergeTree's token window counts blocks only. A batch recovered
//! after its block left the window is inserted again and its rows are doubled: what a table
//! remembers is logged at start for each table ([`DedupWindow`]) and shown by `plugin inspect`.

use super::clickhouse::{ChClient, ChError};
use crate::schema::{DedupWindow, Guarantee, LiveTable, TableSchema};

/// Blocks (or tokens) a table remembers. At 10 inserts per second per table and host (the
/// default linger is 100 ms), 10,000 covers ten hosts for 100 s — more than the default
/// visibility timeout of 60 s after which a dead host's batches are recovered.
pub const DEDUP_WINDOW: u64 = 10_000;

/// How long a Replicated table the host creates remembers a block: a week, so that a batch
/// recorded before an outage of days is still recognised when it is re-sent.
pub const DEDUP_WINDOW_SECONDS: u64 = 7 * 24 * 3600;

/// What the server offers for deduplication, detected once at start.
#[derive(Debug, Clone, Default)]
pub struct ServerDedup {
    /// `exactly_once = "off"`: plain tables, no batch records.
    pub disabled: bool,
    /// ZooKeeper (or ClickHouse Keeper) is configured: Replicated engines work.
    pub zookeeper: bool,
    /// The `insert_deduplication_token` setting exists (22.2+).
    pub token: bool,
    /// The MergeTree setting `non_replicated_deduplication_window` exists.
    pub non_replicated_window: bool,
    /// The server defines the `{shard}` / `{replica}` macros.
    pub shard_macro: bool,
    pub replica_macro: bool,
    /// The server's host name: the replica name when there is no `{replica}` macro.
    pub hostname: String,
    /// The server's defaults of the MergeTree settings that bound deduplication windows
    /// (`replicated_deduplication_window`, `..._seconds`, `non_replicated_deduplication_window`).
    pub window_defaults: std::collections::HashMap<String, u64>,
}

impl ServerDedup {
    /// Asks the server.
    pub async fn detect(client: &ChClient, disabled: bool) -> Result<ServerDedup, ChError> {
        // Without a <zookeeper> section the table system.zookeeper does not exist (code 60);
        // with one, a ZooKeeper that is down right now still means Replicated tables work.
        let zookeeper = match client.query_json("SELECT count() AS n FROM system.zookeeper WHERE path = '/'").await {
            Ok(_) => true,
            Err(ChError::Server { code: 60, .. }) => false,
            Err(ChError::Server { message, .. }) => {
                let m = message.to_ascii_lowercase();
                !(m.contains("no zookeeper configuration") || m.contains("no hosts passed"))
            }
            Err(e) => return Err(e),
        };
        let token = client
            .query_count("SELECT count() AS n FROM system.settings WHERE name = 'insert_deduplication_token'")
            .await?
            > 0;
        let non_replicated_window = client
            .query_count(
                "SELECT count() AS n FROM system.merge_tree_settings WHERE name = 'non_replicated_deduplication_window'",
            )
            .await?
            > 0;
        let macros: Vec<String> = client
            .query_json("SELECT macro FROM system.macros")
            .await
            .unwrap_or_default()
            .iter()
            .filter_map(|r| r.get("macro").and_then(|m| m.as_str()).map(str::to_string))
            .collect();
        let window_defaults = client
            .query_json(
                "SELECT name, value FROM system.merge_tree_settings WHERE name IN \
                 ('replicated_deduplication_window', 'replicated_deduplication_window_seconds', 'non_replicated_deduplication_window')",
            )
            .await?
            .iter()
            .filter_map(|r| {
                let name = r.get("name")?.as_str()?.to_string();
                let value = r.get("value")?.as_str()?.parse().ok()?;
                Some((name, value))
            })
            .collect();
        let hostname = client
            .query_json("SELECT hostName() AS h")
            .await?
            .first()
            .and_then(|r| r.get("h").and_then(|h| h.as_str()).map(str::to_string))
            .unwrap_or_default();
        Ok(ServerDedup {
            disabled,
            zookeeper,
            token,
            non_replicated_window,
            shard_macro: macros.iter().any(|m| m == "shard"),
            replica_macro: macros.iter().any(|m| m == "replica"),
            hostname,
            window_defaults,
        })
    }

    /// One line for the start-up log.
    pub fn describe(&self) -> String {
        if self.disabled {
            return "exactly-once is off (exactly_once = \"off\"): new tables are plain, every table is at-least-once"
                .into();
        }
        match (self.zookeeper, self.token && self.non_replicated_window) {
            (true, _) => format!(
                "ZooKeeper is configured: new tables are Replicated*MergeTree with replicated_deduplication_window = {DEDUP_WINDOW}{}{}",
                if self.window_defaults.contains_key("replicated_deduplication_window_seconds") {
                    format!(" and replicated_deduplication_window_seconds = {DEDUP_WINDOW_SECONDS}")
                } else {
                    String::new()
                },
                if self.token { ", inserts carry insert_deduplication_token" } else { "" }
            ),
            (false, true) => format!(
                "no ZooKeeper, but insert_deduplication_token: new tables are MergeTree with non_replicated_deduplication_window = {DEDUP_WINDOW}"
            ),
            (false, false) => "neither ZooKeeper nor insert_deduplication_token on this server: new tables are plain MergeTree, at-least-once (configure <zookeeper> in ClickHouse for exactly-once)".into(),
        }
    }

    /// The CREATE TABLE for a new table: the Replicated variant of the declared engine when
    /// ZooKeeper is there, a token window when only tokens are, as declared otherwise.
    pub fn create_ddl(&self, schema: &TableSchema, database: &str) -> String {
        let declared = schema.engine_clause();
        if self.disabled {
            return schema.create_ddl(database);
        }
        if self.zookeeper {
            let shard = if self.shard_macro { "{shard}/" } else { "" };
            let path = format!("/clickhouse/tables/{shard}{database}.{}", schema.name);
            let replica = if self.replica_macro { "{replica}".to_string() } else { self.hostname.clone() };
            let engine = replicated_engine(&declared, &path, &replica);
            let mut settings = vec![("replicated_deduplication_window", DEDUP_WINDOW.to_string())];
            if self.window_defaults.contains_key("replicated_deduplication_window_seconds") {
                settings.push(("replicated_deduplication_window_seconds", DEDUP_WINDOW_SECONDS.to_string()));
            }
            return schema.create_ddl_as(database, &engine, &settings, !self.token);
        }
        if self.token && self.non_replicated_window {
            let settings = [("non_replicated_deduplication_window", DEDUP_WINDOW.to_string())];
            return schema.create_ddl_as(database, &declared, &settings, false);
        }
        schema.create_ddl(database)
    }

    /// The guarantee of a table [`Self::create_ddl`] would create.
    pub fn guarantee_of_new(&self) -> Guarantee {
        match (self.disabled, self.zookeeper, self.token) {
            (true, _, _) => Guarantee::AtLeastOnce,
            (false, true, true) => Guarantee::ExactlyOnceToken,
            (false, true, false) => Guarantee::ExactlyOnceReplicated,
            (false, false, true) if self.non_replicated_window => Guarantee::ExactlyOnceToken,
            _ => Guarantee::AtLeastOnce,
        }
    }

    /// What a live table of guarantee `g` remembers: its own settings, else the server's
    /// defaults. None for an at-least-once table.
    pub fn window_of(&self, live: &LiveTable, g: Guarantee) -> Option<DedupWindow> {
        let get = |name: &str| setting_of(&live.engine_full, name).or_else(|| self.window_defaults.get(name).copied());
        if !g.exactly_once() {
            return None;
        }
        if live.engine.trim_start().starts_with("Replicated") {
            Some(DedupWindow {
                blocks: get("replicated_deduplication_window").unwrap_or(100),
                seconds: get("replicated_deduplication_window_seconds"),
            })
        } else {
            Some(DedupWindow { blocks: get("non_replicated_deduplication_window").unwrap_or(0), seconds: None })
        }
    }

    /// What a table [`Self::create_ddl`] would create remembers.
    pub fn window_of_new(&self) -> Option<DedupWindow> {
        match self.guarantee_of_new() {
            Guarantee::AtLeastOnce => None,
            _ if self.zookeeper => Some(DedupWindow {
                blocks: DEDUP_WINDOW,
                seconds: self
                    .window_defaults
                    .contains_key("replicated_deduplication_window_seconds")
                    .then_some(DEDUP_WINDOW_SECONDS),
            }),
            _ => Some(DedupWindow { blocks: DEDUP_WINDOW, seconds: None }),
        }
    }

    /// The guarantee a live table gives.
    pub fn guarantee_of(&self, live: &LiveTable) -> Guarantee {
        if self.disabled {
            return Guarantee::AtLeastOnce;
        }
        let engine = live.engine.trim_start();
        if engine.starts_with("Replicated") {
            return if self.token { Guarantee::ExactlyOnceToken } else { Guarantee::ExactlyOnceReplicated };
        }
        if self.token && setting_of(&live.engine_full, "non_replicated_deduplication_window").is_some_and(|n| n > 0) {
            return Guarantee::ExactlyOnceToken;
        }
        Guarantee::AtLeastOnce
    }
}

/// `SummingMergeTree((a, b))` → `ReplicatedSummingMergeTree('path', 'replica', (a, b))`.
pub fn replicated_engine(engine: &str, path: &str, replica: &str) -> String {
    let (name, args) = match engine.find('(') {
        Some(i) => (&engine[..i], engine[i + 1..].strip_suffix(')').unwrap_or("")),
        None => (engine, ""),
    };
    let q = crate::schema::sql_string;
    if args.trim().is_empty() {
        format!("Replicated{name}({}, {})", q(path), q(replica))
    } else {
        format!("Replicated{name}({}, {}, {args})", q(path), q(replica))
    }
}

/// The value of a numeric `SETTINGS` entry in `engine_full`.
fn setting_of(engine_full: &str, name: &str) -> Option<u64> {
    let at = engine_full.find(" SETTINGS ")?;
    engine_full[at + 10..].split(',').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k.trim() == name).then(|| v.trim().parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicated_variants() {
        assert_eq!(replicated_engine("MergeTree()", "/p", "r"), "ReplicatedMergeTree('/p', 'r')");
        assert_eq!(
            replicated_engine("SummingMergeTree((n, m))", "/p", "{replica}"),
            "ReplicatedSummingMergeTree('/p', '{replica}', (n, m))"
        );
        assert_eq!(replicated_engine("ReplacingMergeTree(v)", "/p", "r"), "ReplicatedReplacingMergeTree('/p', 'r', v)");
    }

    #[test]
    fn settings_in_engine_full() {
        let e = "MergeTree ORDER BY a SETTINGS non_replicated_deduplication_window = 100, index_granularity = 8192";
        assert_eq!(setting_of(e, "non_replicated_deduplication_window"), Some(100));
        assert_eq!(setting_of(e, "index_granularity"), Some(8192));
        assert_eq!(setting_of("MergeTree ORDER BY a", "x"), None);
    }

    #[test]
    fn what_tables_remember() {
        let t = crate::schema::test_table(&[("k", "UInt64")], crate::contract::wit::Engine::MergeTree, None, &["k"]);
        let defaults = [("replicated_deduplication_window_seconds", 3600), ("replicated_deduplication_window", 10_000)];
        let server = ServerDedup {
            zookeeper: true,
            token: true,
            replica_macro: true,
            window_defaults: defaults.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            ..Default::default()
        };
        let ddl = server.create_ddl(&t, "db");
        assert!(
            ddl.contains(
                "SETTINGS replicated_deduplication_window = 10000, replicated_deduplication_window_seconds = 604800"
            ),
            "{ddl}"
        );
        assert_eq!(server.window_of_new(), Some(DedupWindow { blocks: 10_000, seconds: Some(604_800) }));
        let live = |engine_full: &str| LiveTable {
            columns: vec![],
            engine: engine_full.split(' ').next().unwrap().into(),
            engine_full: engine_full.into(),
            partition_key: String::new(),
            sorting_key: "k".into(),
            managed: true,
            owner: None,
        };
        // A table made elsewhere with the server's default: one hour, as 26.x gives it.
        let made_elsewhere = live("ReplicatedMergeTree('/p', 'r') ORDER BY k SETTINGS index_granularity = 8192");
        let g = server.guarantee_of(&made_elsewhere);
        assert_eq!(server.window_of(&made_elsewhere, g), Some(DedupWindow { blocks: 10_000, seconds: Some(3600) }));
        assert_eq!(
            server.window_of(&made_elsewhere, g).unwrap().to_string(),
            "the last 10000 blocks inserted within 1 hour"
        );
        let tokens = ServerDedup { zookeeper: false, token: true, non_replicated_window: true, ..Default::default() };
        let mergetree =
            live("MergeTree ORDER BY k SETTINGS non_replicated_deduplication_window = 10000, index_granularity = 8192");
        let g = tokens.guarantee_of(&mergetree);
        assert_eq!(g, Guarantee::ExactlyOnceToken);
        assert_eq!(tokens.window_of(&mergetree, g), Some(DedupWindow { blocks: 10_000, seconds: None }));
        assert_eq!(tokens.window_of(&live("MergeTree ORDER BY k"), Guarantee::AtLeastOnce), None);
    }
}
