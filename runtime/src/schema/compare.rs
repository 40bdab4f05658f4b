//! How a plugin's declaration compares with the table as it exists in ClickHouse, and the
//! changes the host applies itself (new columns, Enums with new items). See `evolve` for when
//! they are applied.

use super::types::ColumnType;
use super::{Column, RESERVED_PREFIX, TableSchema};

impl TableSchema {
    /// Compares this declaration with the table as it exists. Returns the changes that bring
    /// the live table to the declaration (new columns, Enums with new items), or every reason
    /// the declaration is incompatible.
    ///
    /// Compatible: the same engine, partition key and order key, and every live column the
    /// declaration names has the same type (or, for an Enum, the same items and more). A table
    /// Sluice created must also keep all its columns (dropping one is refused); a table it did
    /// not create may have extra columns (they get their defaults) but is never altered, so a
    /// change it would need is refused too.
    pub fn compare(&self, live: &LiveTable) -> Result<Vec<Change>, Vec<String>> {
        let mut problems = Vec::new();
        let mut changes = Vec::new();
        for c in &self.columns {
            match live.columns.iter().find(|(n, _)| *n == c.name) {
                None => changes.push(Change::AddColumn(c.clone())),
                Some((_, live_ty)) => {
                    let parsed = ColumnType::parse(live_ty);
                    let same = match &parsed {
                        Ok(t) => *t == c.ty,
                        Err(_) => squash(live_ty) == squash(&c.ty.to_string()),
                    };
                    if !same && parsed.as_ref().is_ok_and(|t| extends_enum(t, &c.ty)) {
                        changes.push(Change::ExtendEnum(c.clone()));
                    } else if !same {
                        problems.push(format!(
                            "column `{}` is {live_ty} in the live table but the plugin declares {}: changing a column's type is refused",
                            c.name, c.ty
                        ));
                    }
                }
            }
        }
        if live.managed {
            for (name, ty) in &live.columns {
                // The host's own columns (the entry column) are not the plugin's to declare.
                if !name.starts_with(RESERVED_PREFIX) && !self.columns.iter().any(|c| &c.name == name) {
                    problems.push(format!(
                        "column `{name}` ({ty}) is in the live table but the plugin no longer declares it: removing a column is refused (drop it by hand with ALTER TABLE ... DROP COLUMN if you mean it)"
                    ));
                }
            }
        } else if !changes.is_empty() {
            let needed: Vec<String> = changes.iter().map(|c| c.describe()).collect();
            problems.push(format!(
                "the live table needs {}; it was not created by Sluice, so Sluice does not alter it: change it by hand",
                needed.join(", ")
            ));
        }
        let declared_engine = canonical_engine(&self.engine_clause());
        let live_engine = canonical_engine(&live.engine);
        if declared_engine != live_engine {
            problems.push(format!(
                "the engine is {} in the live table but the plugin declares {}: changing the engine is refused",
                live.engine.trim(),
                self.engine_clause()
            ));
        }
        let declared_partition = self.partition_by.as_deref().map(canonical_key).unwrap_or_default();
        if declared_partition != canonical_key(&live.partition_key) {
            problems.push(format!(
                "the partition key is `{}` in the live table but the plugin declares `{}`: changing the partition key is refused",
                live.partition_key,
                self.partition_by.as_deref().unwrap_or("")
            ));
        }
        if canonical_key(&self.order_by.join(", ")) != canonical_key(&live.sorting_key) {
            problems.push(format!(
                "the order key is `{}` in the live table but the plugin declares `{}`: changing the order key is refused",
                live.sorting_key,
                self.order_by.join(", ")
            ));
        }
        if problems.is_empty() { Ok(changes) } else { Err(problems) }
    }
}

/// A change to a live table that a new declaration brings and the host applies itself.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// A column the live table lacks; existing rows read its default.
    AddColumn(Column),
    /// An Enum column whose new type keeps every name and value and adds items (a metadata
    /// change in ClickHouse: no data is rewritten).
    ExtendEnum(Column),
}

impl Change {
    pub fn column(&self) -> &Column {
        match self {
            Change::AddColumn(c) | Change::ExtendEnum(c) => c,
        }
    }

    /// The registry's name for the change.
    pub fn kind(&self) -> &'static str {
        match self {
            Change::AddColumn(_) => "add column",
            Change::ExtendEnum(_) => "extend enum",
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Change::AddColumn(c) => format!("column `{}` {} added", c.name, c.ty),
            Change::ExtendEnum(c) => format!("column `{}` extended to {}", c.name, c.ty),
        }
    }

    pub fn ddl(&self, database: &str, table: &str) -> String {
        match self {
            Change::AddColumn(c) => format!("ALTER TABLE {database}.{table} ADD COLUMN {}", c.definition()),
            Change::ExtendEnum(c) => format!("ALTER TABLE {database}.{table} MODIFY COLUMN {} {}", c.name, c.ty),
        }
    }
}

/// True if `new` is the Enum `old` with items added: every name keeps its value.
fn extends_enum(old: &ColumnType, new: &ColumnType) -> bool {
    use ColumnType::*;
    match (old, new) {
        (Enum8(a), Enum8(b)) | (Enum16(a), Enum16(b)) => b.len() > a.len() && a.iter().all(|item| b.contains(item)),
        (Nullable(a), Nullable(b)) => extends_enum(a, b),
        _ => false,
    }
}

/// A table as it exists in ClickHouse (from `system.tables` and `system.columns`).
#[derive(Debug, Clone, PartialEq)]
pub struct LiveTable {
    /// (name, type) in table order.
    pub columns: Vec<(String, String)>,
    /// The engine with its arguments, e.g. `SummingMergeTree(n)` (the start of `engine_full`).
    pub engine: String,
    /// `engine_full`: the engine with its keys and settings.
    pub engine_full: String,
    pub partition_key: String,
    pub sorting_key: String,
    /// True if Sluice created it (a `create` row in the registry): only then may it add
    /// columns.
    pub managed: bool,
    /// The plugin it belongs to: the one that created it, or adopted it first (a table Sluice
    /// did not create); None if no plugin has declared it yet.
    pub owner: Option<String>,
}

fn squash(s: &str) -> String {
    s.chars().filter(|c| !c.is_whitespace()).collect()
}

/// Strips one pair of parentheses around the whole of `s`, if there is such a pair.
fn strip_outer_parens(s: &str) -> &str {
    if let Some(inner) = s.strip_prefix('(').and_then(|r| r.strip_suffix(')')) {
        let mut depth = 0i32;
        for c in inner.chars() {
            depth += (c == '(') as i32 - (c == ')') as i32;
            if depth < 0 {
                return s; // `(a), (b)`: the parentheses do not enclose the whole
            }
        }
        if depth == 0 {
            return inner;
        }
    }
    s
}

/// A key expression without spaces and without parentheses around the whole, so that
/// `(a, b)` and `a, b` compare equal, and `tuple()` means no key.
fn canonical_key(s: &str) -> String {
    let k = squash(s);
    let k = strip_outer_parens(&k).to_string();
    if k == "tuple()" { String::new() } else { k }
}

/// An engine with its arguments, without spaces, empty `()`, parentheses around a single
/// argument list, or the ZooKeeper path and replica name of a Replicated engine — so that
/// what the host renders and what ClickHouse reports compare equal.
fn canonical_engine(s: &str) -> String {
    let e = squash(s);
    let (name, args) = match e.find('(') {
        Some(i) => (&e[..i], e[i..].strip_prefix('(').and_then(|a| a.strip_suffix(')')).unwrap_or("")),
        None => (e.as_str(), ""),
    };
    let (name, args) = match name.strip_prefix("Replicated") {
        Some(base) => {
            // Drop the two leading string arguments ('/path', '{replica}').
            let rest: Vec<&str> = args.splitn(3, ',').collect();
            let quoted = |x: &str| x.starts_with('\'');
            let args = match rest.as_slice() {
                [a, b, rest] if quoted(a) && quoted(b) => rest,
                [a, b] if quoted(a) && quoted(b) => "",
                _ => args,
            };
            (base, args)
        }
        None => (name, args),
    };
    let args = strip_outer_parens(args);
    if args.is_empty() { name.to_string() } else { format!("{name}({args})") }
}

#[cfg(test)]
mod tests {
    use super::super::test_table;
    use super::*;
    use crate::contract::wit;

    fn declared(engine: wit::Engine, cols: &[(&str, &str)], order: &[&str]) -> TableSchema {
        test_table(cols, engine, Some("toYYYYMM(d)"), order)
    }

    fn live(managed: bool, engine: &str, cols: &[(&str, &str)], sorting: &str) -> LiveTable {
        LiveTable {
            columns: cols.iter().map(|(n, t)| (n.to_string(), t.to_string())).collect(),
            engine: engine.into(),
            engine_full: engine.into(),
            partition_key: "toYYYYMM(d)".into(),
            sorting_key: sorting.into(),
            managed,
            owner: None,
        }
    }

    #[test]
    fn compares_declarations_with_live_tables() {
        let v1 = [("d", "Date"), ("k", "String"), ("n", "UInt64"), ("e", "Enum8('a' = 1, 'b' = 2)")];
        let summing = || wit::Engine::SummingMergeTree(vec!["n".into()]);
        // As 18.16 reports a table Sluice created: same thing, other spelling.
        let l = live(
            true,
            "SummingMergeTree(n)",
            &[("d", "Date"), ("k", "String"), ("n", "UInt64"), ("e", "Enum8(\'a\' = 1, \'b\' = 2)")],
            "d, k",
        );
        let t = declared(summing(), &v1, &["d", "k"]);
        assert_eq!(t.compare(&l), Ok(vec![]));
        let names = |r: Result<Vec<Change>, Vec<String>>| -> Vec<String> {
            r.unwrap().iter().map(|c| format!("{} {}", c.kind(), c.column().name)).collect()
        };
        // A new column is added.
        let mut v2 = v1.to_vec();
        v2.push(("country", "LowCardinality(String)"));
        let t2 = declared(summing(), &v2, &["d", "k"]);
        assert_eq!(names(t2.compare(&l)), vec!["add column country"]);
        // An Enum may gain items, never lose or renumber them.
        let mut wider = v1.to_vec();
        wider[3] = ("e", "Enum8('a' = 1, 'b' = 2, 'c' = 3)");
        assert_eq!(names(declared(summing(), &wider, &["d", "k"]).compare(&l)), vec!["extend enum e"]);
        for other in
            ["Enum8('a' = 1, 'c' = 3)", "Enum8('a' = 1, 'b' = 3, 'c' = 2)", "Enum16('a' = 1, 'b' = 2, 'c' = 3)"]
        {
            wider[3] = ("e", other);
            let e = declared(summing(), &wider, &["d", "k"]).compare(&l).unwrap_err();
            assert!(e[0].contains("changing a column's type is refused"), "{other}: {e:?}");
        }
        assert!(ColumnType::parse("Enum8('a' = 1, 'b' = 1)").unwrap_err().contains("repeats"));
        // ... but never to a table Sluice did not create.
        let foreign = LiveTable { managed: false, ..l.clone() };
        assert_eq!(
            t2.compare(&foreign).unwrap_err(),
            vec![
                "the live table needs column `country` LowCardinality(String) added; it was not created by Sluice, so Sluice does not alter it: change it by hand"
            ]
        );
        // A foreign table may have more columns than declared.
        let t_less = declared(summing(), &v1[..3], &["d", "k"]);
        assert_eq!(t_less.compare(&foreign), Ok(vec![]));
        // ... a table Sluice created may not lose one.
        let e = t_less.compare(&l).unwrap_err();
        assert_eq!(e.len(), 1);
        assert!(
            e[0].starts_with(
                "column `e` (Enum8('a' = 1, 'b' = 2)) is in the live table but the plugin no longer declares it"
            ),
            "{e:?}"
        );
        // Type, engine and key changes are refused, each named.
        let mut v3 = v1.to_vec();
        v3[2] = ("n", "UInt32");
        let e = declared(wit::Engine::MergeTree, &v3, &["d"]).compare(&l).unwrap_err();
        assert_eq!(e.len(), 3, "{e:?}");
        assert_eq!(
            e[0],
            "column `n` is UInt64 in the live table but the plugin declares UInt32: changing a column's type is refused"
        );
        assert!(
            e[1].contains("engine is SummingMergeTree(n) in the live table but the plugin declares MergeTree()"),
            "{}",
            e[1]
        );
        assert!(e[2].contains("order key is `d, k` in the live table but the plugin declares `d`"), "{}", e[2]);
    }

    #[test]
    fn canonical_forms() {
        assert_eq!(canonical_engine("MergeTree()"), "MergeTree");
        assert_eq!(canonical_engine("SummingMergeTree((a, b))"), canonical_engine("SummingMergeTree(a, b)"));
        assert_eq!(
            canonical_engine("ReplicatedReplacingMergeTree('/ch/t', '{replica}', ver)"),
            "ReplacingMergeTree(ver)"
        );
        assert_eq!(canonical_engine("ReplicatedMergeTree('/ch/t', '{replica}')"), "MergeTree");
        assert_eq!(canonical_key("(a, b)"), canonical_key("a, b"));
        assert_eq!(canonical_key("tuple()"), "");
        assert_eq!(canonical_key("(a), (b)"), "(a),(b)");
    }
}
