//! Table declarations as the host understands them: ClickHouse column types parsed from the
//! plugin's manifest, identifiers checked, and the DDL rendered by the host alone.
//!
//! Policy: a plugin never sends SQL. Names must be plain identifiers; partition and order keys
//! are expressions made only of identifiers, numbers, commas, parentheses and spaces (enough
//! for `toYYYYMM(event_date)` or `(event_date, user_id)`), so nothing can be injected.

mod compare;
mod guarantee;
mod parse;
mod types;

pub use compare::{Change, LiveTable};
pub use guarantee::{DedupWindow, ENTRY_COLUMN, Guarantee, entry_hash};
pub use types::{ColumnType, TimeZone};

use crate::contract::wit;

/// Checks that `name` is a plain identifier: ASCII letters, digits and `_`, not starting with
/// a digit, at most 128 bytes.
pub fn check_identifier(what: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.as_bytes()[0].is_ascii_digit()
        && name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!("{what} `{name}` is not a plain identifier (letters, digits and `_`, not starting with a digit)"))
    }
}

/// Checks a key expression: identifiers, numbers, `(`, `)`, `,` and spaces only.
fn check_expression(what: &str, expr: &str) -> Result<(), String> {
    let ok = !expr.trim().is_empty()
        && expr.len() <= 512
        && expr.bytes().all(|c| c.is_ascii_alphanumeric() || b"_(), ".contains(&c));
    let balanced = expr.bytes().try_fold(0i32, |depth, c| {
        let d = depth + (c == b'(') as i32 - (c == b')') as i32;
        (d >= 0).then_some(d)
    }) == Some(0);
    if ok && balanced {
        Ok(())
    } else {
        Err(format!("{what} `{expr}` is not allowed: use column names and function calls only"))
    }
}

/// One column of a checked table declaration.
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    pub name: String,
    pub ty: ColumnType,
    pub comment: Option<String>,
}

/// The table engine a plugin declared (named as ClickHouse names them).
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::enum_variant_names)]
pub enum TableEngine {
    MergeTree,
    ReplacingMergeTree(Option<String>),
    SummingMergeTree(Vec<String>),
    AggregatingMergeTree,
}

/// A checked table declaration.
#[derive(Debug, Clone, PartialEq)]
pub struct TableSchema {
    pub name: String,
    pub columns: Vec<Column>,
    pub engine: TableEngine,
    pub partition_by: Option<String>,
    pub order_by: Vec<String>,
    pub settings: Vec<(String, String)>,
    /// Set by the host from the live table, not by the plugin: rows carry the hidden column
    /// [`ENTRY_COLUMN`](self::guarantee::ENTRY_COLUMN) (which event they came from), so that two
    /// batches of different events never hash alike (see `dedup`).
    pub entry_column: bool,
    /// Set by the host from the live table: what a batch inserted twice does.
    pub guarantee: self::guarantee::Guarantee,
    /// Set by the host from the live table: what it remembers of inserted blocks.
    pub window: Option<self::guarantee::DedupWindow>,
}

impl TableSchema {
    /// Checks a declaration from a plugin's manifest.
    pub fn from_wit(t: &wit::Table) -> Result<TableSchema, String> {
        check_identifier("table name", &t.name)?;
        if t.name.starts_with(RESERVED_PREFIX) {
            return Err(format!("table name `{}`: names starting with `{RESERVED_PREFIX}` are the host's own", t.name));
        }
        let ctx = |e: String| format!("table `{}`: {e}", t.name);
        if t.columns.is_empty() {
            return Err(ctx("declares no columns".into()));
        }
        let mut columns = Vec::with_capacity(t.columns.len());
        for c in &t.columns {
            check_identifier("column name", &c.name).map_err(ctx)?;
            if c.name.starts_with(RESERVED_PREFIX) {
                return Err(ctx(format!(
                    "column name `{}`: names starting with `{RESERVED_PREFIX}` are the host's own",
                    c.name
                )));
            }
            if columns.iter().any(|x: &Column| x.name == c.name) {
                return Err(ctx(format!("column `{}` is declared twice", c.name)));
            }
            let ty = ColumnType::parse(&c.ty).map_err(|e| ctx(format!("column `{}`: {e}", c.name)))?;
            columns.push(Column { name: c.name.clone(), ty, comment: c.comment.clone() });
        }
        let has = |n: &str| columns.iter().any(|c| c.name == n);
        let engine = match &t.engine {
            wit::Engine::MergeTree => TableEngine::MergeTree,
            wit::Engine::AggregatingMergeTree => TableEngine::AggregatingMergeTree,
            wit::Engine::ReplacingMergeTree(v) => {
                if let Some(v) = v
                    && !has(v)
                {
                    return Err(ctx(format!("ReplacingMergeTree version column `{v}` is not a column")));
                }
                TableEngine::ReplacingMergeTree(v.clone())
            }
            wit::Engine::SummingMergeTree(cols) => {
                for c in cols {
                    let col = columns.iter().find(|x| &x.name == c);
                    match col {
                        None => return Err(ctx(format!("SummingMergeTree column `{c}` is not a column"))),
                        Some(col) if !col.ty.is_numeric() => {
                            return Err(ctx(format!("SummingMergeTree column `{c}` is {} , not numeric", col.ty)));
                        }
                        _ => {}
                    }
                }
                TableEngine::SummingMergeTree(cols.clone())
            }
        };
        if let Some(p) = &t.partition_by {
            check_expression("partition key", p).map_err(ctx)?;
        }
        if t.order_by.is_empty() {
            return Err(ctx("declares no ORDER BY key".into()));
        }
        for k in &t.order_by {
            check_expression("order key", k).map_err(ctx)?;
        }
        for (k, v) in &t.settings {
            check_identifier("setting name", k).map_err(ctx)?;
            if !v.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'.') || v.is_empty() {
                return Err(ctx(format!("setting `{k}` has a value that is not a plain number or word")));
            }
        }
        Ok(TableSchema {
            name: t.name.clone(),
            columns,
            engine,
            partition_by: t.partition_by.clone(),
            order_by: t.order_by.clone(),
            settings: t.settings.clone(),
            entry_column: false,
            guarantee: Default::default(),
            window: None,
        })
    }

    /// The column list of an INSERT, e.g. `(a, b, c)`.
    pub fn column_list(&self) -> String {
        let mut names: Vec<&str> = self.columns.iter().map(|c| c.name.as_str()).collect();
        if self.entry_column {
            names.push(self::guarantee::ENTRY_COLUMN);
        }
        format!("({})", names.join(", "))
    }

    /// `CREATE TABLE IF NOT EXISTS` for this table in `database`, as declared.
    pub fn create_ddl(&self, database: &str) -> String {
        self.create_ddl_as(database, &self.engine_clause(), &[], false)
    }

    /// `CREATE TABLE IF NOT EXISTS` with the engine clause `engine` (e.g. the Replicated
    /// variant of the declared one), `extra_settings` the plugin did not set itself, and the
    /// hidden entry column if `entry_column`.
    pub fn create_ddl_as(
        &self,
        database: &str,
        engine: &str,
        extra_settings: &[(&str, String)],
        entry_column: bool,
    ) -> String {
        let mut sql = format!("CREATE TABLE IF NOT EXISTS {database}.{} (\n", self.name);
        let mut defs: Vec<String> = self.columns.iter().map(|c| c.definition()).collect();
        if entry_column {
            defs.push(format!("{} UInt64", self::guarantee::ENTRY_COLUMN));
        }
        sql.push_str(&defs.iter().map(|d| format!("    {d}")).collect::<Vec<_>>().join(",\n"));
        sql.push_str("\n) ENGINE = ");
        sql.push_str(engine);
        if let Some(p) = &self.partition_by {
            sql.push_str(&format!("\nPARTITION BY {p}"));
        }
        sql.push_str(&format!("\nORDER BY ({})", self.order_by.join(", ")));
        let mut settings: Vec<String> = self.settings.iter().map(|(k, v)| format!("{k} = {v}")).collect();
        for (k, v) in extra_settings {
            if !self.settings.iter().any(|(name, _)| name == k) {
                settings.push(format!("{k} = {v}"));
            }
        }
        if !settings.is_empty() {
            sql.push_str(&format!("\nSETTINGS {}", settings.join(", ")));
        }
        sql
    }

    pub fn uses_low_cardinality(&self) -> bool {
        self.columns.iter().any(|c| c.ty.uses_low_cardinality())
    }

    /// The engine as it appears after `ENGINE =`, e.g. `SummingMergeTree((n))`.
    pub fn engine_clause(&self) -> String {
        match &self.engine {
            TableEngine::MergeTree => "MergeTree()".to_string(),
            TableEngine::AggregatingMergeTree => "AggregatingMergeTree()".to_string(),
            TableEngine::ReplacingMergeTree(None) => "ReplacingMergeTree()".to_string(),
            TableEngine::ReplacingMergeTree(Some(v)) => format!("ReplacingMergeTree({v})"),
            TableEngine::SummingMergeTree(cols) if cols.is_empty() => "SummingMergeTree()".to_string(),
            TableEngine::SummingMergeTree(cols) => format!("SummingMergeTree(({}))", cols.join(", ")),
        }
    }
}

/// Table and column names the host keeps for itself (its registry of the tables it created,
/// the entry column of exactly-once tables).
pub const RESERVED_PREFIX: &str = "sluice_";

impl Column {
    /// The column as it appears in CREATE TABLE and ALTER TABLE ADD COLUMN.
    pub fn definition(&self) -> String {
        match &self.comment {
            Some(comment) => format!("{} {} COMMENT {}", self.name, self.ty, sql_string(comment)),
            None => format!("{} {}", self.name, self.ty),
        }
    }
}

/// A ClickHouse string literal.
pub fn sql_string(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// A checked declaration of table `t` for unit tests.
#[cfg(test)]
pub(crate) fn test_table(
    cols: &[(&str, &str)],
    engine: wit::Engine,
    partition_by: Option<&str>,
    order_by: &[&str],
) -> TableSchema {
    TableSchema::from_wit(&wit::Table {
        name: "t".into(),
        columns: cols
            .iter()
            .map(|(n, t)| wit::Column { name: n.to_string(), ty: t.to_string(), comment: None })
            .collect(),
        engine,
        partition_by: partition_by.map(str::to_string),
        order_by: order_by.iter().map(|s| s.to_string()).collect(),
        settings: vec![],
    })
    .unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_injection_in_names_and_keys() {
        assert!(check_identifier("table name", "t; DROP").is_err());
        assert!(check_identifier("table name", "1abc").is_err());
        assert!(check_identifier("table name", "abc_1").is_ok());
        assert!(check_expression("k", "toYYYYMM(event_date)").is_ok());
        assert!(check_expression("k", "a) SETTINGS x=(1").is_err());
        assert!(check_expression("k", "sleep(3)'").is_err());
        assert!(check_expression("k", "f(a))(").is_err());
    }

    #[test]
    fn renders_ddl() {
        let t = wit::Table {
            name: "users_analytics".into(),
            columns: vec![
                wit::Column { name: "event_date".into(), ty: "Date".into(), comment: None },
                wit::Column { name: "user_id".into(), ty: "String".into(), comment: Some("who's".into()) },
                wit::Column { name: "n".into(), ty: "UInt64".into(), comment: None },
            ],
            engine: wit::Engine::SummingMergeTree(vec!["n".into()]),
            partition_by: Some("toYYYYMM(event_date)".into()),
            order_by: vec!["event_date".into(), "user_id".into()],
            settings: vec![("index_granularity".into(), "8192".into())],
        };
        let s = TableSchema::from_wit(&t).unwrap();
        assert_eq!(
            s.create_ddl("analytics"),
            "CREATE TABLE IF NOT EXISTS analytics.users_analytics (\n    event_date Date,\n    user_id String COMMENT 'who\\'s',\n    n UInt64\n) ENGINE = SummingMergeTree((n))\nPARTITION BY toYYYYMM(event_date)\nORDER BY (event_date, user_id)\nSETTINGS index_granularity = 8192"
        );
        let mut bad = t.clone();
        bad.engine = wit::Engine::SummingMergeTree(vec!["user_id".into()]);
        assert!(TableSchema::from_wit(&bad).unwrap_err().contains("not numeric"));
    }
}
