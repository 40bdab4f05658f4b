//! What one ClickHouse server offers, asked once per client: its version, the data types it
//! knows (`system.data_type_families`) and which of the settings the host may send it has
//! (`system.settings`).
//!
//! Policy: the host sends a setting only to a server that has it — an unknown setting is an
//! error (18.16 needs `allow_experimental_low_cardinality_type`, 26.x refuses it as unknown) —
//! and decides by what the server says it has, not by its version number, so releases in
//! between and forks behave as they say. A type the server lacks refuses the plugin version
//! at load, naming the type and the server's version.

use std::collections::HashSet;

use crate::schema::ColumnType;

/// Settings the host sends where the server has them, and why.
const KNOWN_SETTINGS: &[&str] = &[
    // 18.x: LowCardinality columns are experimental (DDL and inserts).
    "allow_experimental_low_cardinality_type",
    // Current releases: LowCardinality of numbers and dates needs it (DDL).
    "allow_suspicious_low_cardinality_types",
    // 24.x: the JSON type is experimental (DDL); obsolete and harmless on 25+.
    "allow_experimental_json_type",
    // JSON columns are written from JSON text in RowBinary (inserts).
    "input_format_binary_read_json_as_string",
    // The host batches itself: an INSERT must be one block, committed when it returns, with
    // its own deduplication token (inserts; current servers may default it to 1).
    "async_insert",
    // 26.x: what decides deduplication of an INSERT (insert_deduplicate only under
    // `backward_compatible_choice`).
    "deduplicate_insert",
    "insert_deduplication_token",
];

/// What a server offers (see the module comment).
#[derive(Debug, Clone, Default)]
pub struct ServerCaps {
    /// `SELECT version()`, e.g. `26.9.2.1`.
    pub version: String,
    /// Type family names and aliases it knows.
    types: HashSet<String>,
    /// Those of [`KNOWN_SETTINGS`] it has.
    settings: HashSet<String>,
}

impl ServerCaps {
    /// Reads them from what the server reports (`version`, the names of
    /// `system.data_type_families` and of `system.settings` among [`KNOWN_SETTINGS`]).
    pub fn new(
        version: String,
        types: impl IntoIterator<Item = String>,
        settings: impl IntoIterator<Item = String>,
    ) -> Self {
        ServerCaps { version, types: types.into_iter().collect(), settings: settings.into_iter().collect() }
    }

    /// The query listing which of the known settings the server has.
    pub fn settings_query() -> String {
        let names: Vec<String> = KNOWN_SETTINGS.iter().map(|s| crate::schema::sql_string(s)).collect();
        format!("SELECT name FROM system.settings WHERE name IN ({})", names.join(", "))
    }

    pub fn has_setting(&self, name: &str) -> bool {
        self.settings.contains(name)
    }

    /// Settings of the host's DDL (CREATE / ALTER TABLE), for what its declarations may use.
    pub fn ddl_settings(&self) -> Vec<(&'static str, &'static str)> {
        [
            ("allow_experimental_low_cardinality_type", "1"),
            ("allow_suspicious_low_cardinality_types", "1"),
            ("allow_experimental_json_type", "1"),
        ]
        .into_iter()
        .filter(|(k, _)| self.has_setting(k))
        .collect()
    }

    /// Settings of an INSERT; `dedup`: into an exactly-once table, whose deduplication a user
    /// profile must not have turned off.
    pub fn insert_settings(&self, dedup: bool) -> Vec<(&'static str, &'static str)> {
        let mut s: Vec<(&'static str, &'static str)> = [
            ("allow_experimental_low_cardinality_type", "1"),
            ("input_format_binary_read_json_as_string", "1"),
            ("async_insert", "0"),
        ]
        .into_iter()
        .filter(|(k, _)| self.has_setting(k))
        .collect();
        if dedup {
            s.push(("insert_deduplicate", "1"));
            if self.has_setting("deduplicate_insert") {
                s.push(("deduplicate_insert", "enable"));
            }
        }
        s
    }

    /// Why the server cannot hold a column of type `ty`, if it cannot: the type families it
    /// lacks, or (JSON) what writing it needs.
    pub fn lacks(&self, ty: &ColumnType) -> Option<String> {
        let missing: Vec<&str> = ty.families().into_iter().filter(|f| !self.types.contains(*f)).collect();
        if !missing.is_empty() {
            return Some(format!("ClickHouse {} has no {}", self.version, missing.join(", ")));
        }
        if ty.uses_json() && !self.has_setting("input_format_binary_read_json_as_string") {
            return Some(format!(
                "ClickHouse {} cannot take JSON columns written as text (it has no input_format_binary_read_json_as_string)",
                self.version
            ));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(types: &[&str], settings: &[&str]) -> ServerCaps {
        ServerCaps::new("18.16.1".into(), types.iter().map(|s| s.to_string()), settings.iter().map(|s| s.to_string()))
    }

    #[test]
    fn settings_only_where_the_server_has_them() {
        let old = caps(&[], &["allow_experimental_low_cardinality_type"]);
        assert_eq!(old.ddl_settings(), vec![("allow_experimental_low_cardinality_type", "1")]);
        assert_eq!(
            old.insert_settings(true),
            vec![("allow_experimental_low_cardinality_type", "1"), ("insert_deduplicate", "1")]
        );
        let new = caps(&[], &["allow_suspicious_low_cardinality_types", "async_insert", "deduplicate_insert"]);
        assert_eq!(new.ddl_settings(), vec![("allow_suspicious_low_cardinality_types", "1")]);
        assert_eq!(
            new.insert_settings(true),
            vec![("async_insert", "0"), ("insert_deduplicate", "1"), ("deduplicate_insert", "enable")]
        );
        assert_eq!(new.insert_settings(false), vec![("async_insert", "0")]);
    }

    #[test]
    fn types_the_server_lacks_are_named_with_its_version() {
        let old = caps(&["String", "Array", "UInt8", "Nullable"], &[]);
        assert_eq!(old.lacks(&ColumnType::parse("Array(Nullable(UInt8))").unwrap()), None);
        assert_eq!(
            old.lacks(&ColumnType::parse("Map(String, DateTime64(3))").unwrap()).unwrap(),
            "ClickHouse 18.16.1 has no Map, DateTime64"
        );
        let json = caps(&["JSON"], &[]);
        assert!(json.lacks(&ColumnType::Json).unwrap().contains("input_format_binary_read_json_as_string"));
    }
}
