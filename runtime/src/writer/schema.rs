//! Table declarations as the host understands them: ClickHouse column types parsed from the
//! plugin's manifest, identifiers checked, and the DDL rendered by the host alone.
//!
//! Policy: a plugin never sends SQL. Names must be plain identifiers; partition and order keys
//! are expressions made only of identifiers, numbers, commas, parentheses and spaces (enough
//! for `toYYYYMM(event_date)` or `(event_date, user_id)`), so nothing can be injected.

use std::fmt;

use crate::plugin::wit;

/// A ClickHouse column type the host can check values against and encode as RowBinary.
#[derive(Debug, Clone, PartialEq)]
pub enum ColumnType {
    UInt8,
    UInt16,
    UInt32,
    UInt64,
    Int8,
    Int16,
    Int32,
    Int64,
    Float32,
    Float64,
    String,
    FixedString(usize),
    Date,
    DateTime,
    Uuid,
    /// Decimal(P, S): stored in 4, 8 or 16 bytes depending on P.
    Decimal {
        precision: u32,
        scale: u32,
    },
    Enum8(Vec<(String, i64)>),
    Enum16(Vec<(String, i64)>),
    Nullable(Box<ColumnType>),
    Array(Box<ColumnType>),
    LowCardinality(Box<ColumnType>),
}

impl ColumnType {
    /// Parses a type as ClickHouse writes it, e.g. `Nullable(Array(UInt32))`.
    pub fn parse(text: &str) -> Result<ColumnType, String> {
        let mut p = TypeParser { s: text.as_bytes(), i: 0 };
        let t = p.ty().map_err(|e| format!("invalid column type `{text}`: {e}"))?;
        p.ws();
        if p.i != p.s.len() {
            return Err(format!("invalid column type `{text}`: unexpected text at position {}", p.i));
        }
        Ok(t)
    }

    /// True if this type (or what it wraps) needs LowCardinality enabled on old servers.
    pub fn uses_low_cardinality(&self) -> bool {
        match self {
            ColumnType::LowCardinality(_) => true,
            ColumnType::Nullable(t) | ColumnType::Array(t) => t.uses_low_cardinality(),
            _ => false,
        }
    }

    pub fn is_numeric(&self) -> bool {
        use ColumnType::*;
        matches!(
            self,
            UInt8 | UInt16 | UInt32 | UInt64 | Int8 | Int16 | Int32 | Int64 | Float32 | Float64 | Decimal { .. }
        )
    }
}

impl fmt::Display for ColumnType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ColumnType::*;
        let enum_items = |f: &mut fmt::Formatter<'_>, name: &str, items: &[(std::string::String, i64)]| {
            write!(f, "{name}(")?;
            for (i, (n, v)) in items.iter().enumerate() {
                if i > 0 {
                    write!(f, ", ")?;
                }
                write!(f, "'{}' = {v}", n.replace('\\', "\\\\").replace('\'', "\\'"))?;
            }
            write!(f, ")")
        };
        match self {
            UInt8 => write!(f, "UInt8"),
            UInt16 => write!(f, "UInt16"),
            UInt32 => write!(f, "UInt32"),
            UInt64 => write!(f, "UInt64"),
            Int8 => write!(f, "Int8"),
            Int16 => write!(f, "Int16"),
            Int32 => write!(f, "Int32"),
            Int64 => write!(f, "Int64"),
            Float32 => write!(f, "Float32"),
            Float64 => write!(f, "Float64"),
            String => write!(f, "String"),
            FixedString(n) => write!(f, "FixedString({n})"),
            Date => write!(f, "Date"),
            DateTime => write!(f, "DateTime"),
            Uuid => write!(f, "UUID"),
            Decimal { precision, scale } => write!(f, "Decimal({precision}, {scale})"),
            Enum8(items) => enum_items(f, "Enum8", items),
            Enum16(items) => enum_items(f, "Enum16", items),
            Nullable(t) => write!(f, "Nullable({t})"),
            Array(t) => write!(f, "Array({t})"),
            LowCardinality(t) => write!(f, "LowCardinality({t})"),
        }
    }
}

struct TypeParser<'a> {
    s: &'a [u8],
    i: usize,
}

impl TypeParser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }
    fn eat(&mut self, c: u8) -> Result<(), String> {
        self.ws();
        if self.s.get(self.i) == Some(&c) {
            self.i += 1;
            Ok(())
        } else {
            Err(format!("expected `{}` at position {}", c as char, self.i))
        }
    }
    fn ident(&mut self) -> Result<&str, String> {
        self.ws();
        let start = self.i;
        while self.i < self.s.len() && (self.s[self.i].is_ascii_alphanumeric() || self.s[self.i] == b'_') {
            self.i += 1;
        }
        if start == self.i {
            return Err(format!("expected a type name at position {start}"));
        }
        Ok(std::str::from_utf8(&self.s[start..self.i]).unwrap())
    }
    fn int(&mut self) -> Result<i64, String> {
        self.ws();
        let start = self.i;
        if self.s.get(self.i) == Some(&b'-') {
            self.i += 1;
        }
        while self.i < self.s.len() && self.s[self.i].is_ascii_digit() {
            self.i += 1;
        }
        std::str::from_utf8(&self.s[start..self.i])
            .unwrap()
            .parse()
            .map_err(|_| format!("expected a number at position {start}"))
    }
    fn quoted(&mut self) -> Result<String, String> {
        self.eat(b'\'')?;
        let mut out = Vec::new();
        loop {
            match self.s.get(self.i) {
                None => return Err("unterminated string".into()),
                Some(b'\\') => {
                    out.push(*self.s.get(self.i + 1).ok_or("unterminated string")?);
                    self.i += 2;
                }
                Some(b'\'') => {
                    self.i += 1;
                    break;
                }
                Some(c) => {
                    out.push(*c);
                    self.i += 1;
                }
            }
        }
        String::from_utf8(out).map_err(|_| "enum name is not UTF-8".to_string())
    }
    fn ty(&mut self) -> Result<ColumnType, String> {
        use ColumnType::*;
        let name = self.ident()?.to_string();
        Ok(match name.as_str() {
            "UInt8" => UInt8,
            "UInt16" => UInt16,
            "UInt32" => UInt32,
            "UInt64" => UInt64,
            "Int8" => Int8,
            "Int16" => Int16,
            "Int32" => Int32,
            "Int64" => Int64,
            "Float32" => Float32,
            "Float64" => Float64,
            "String" => String,
            "Date" => Date,
            "DateTime" => DateTime,
            "UUID" => Uuid,
            "FixedString" => {
                self.eat(b'(')?;
                let n = self.int()?;
                self.eat(b')')?;
                if !(1..=1_048_576).contains(&n) {
                    return Err(format!("FixedString length {n} out of range"));
                }
                FixedString(n as usize)
            }
            "Decimal" | "Decimal32" | "Decimal64" | "Decimal128" => {
                self.eat(b'(')?;
                let (precision, scale) = if name == "Decimal" {
                    let p = self.int()?;
                    self.eat(b',')?;
                    (p, self.int()?)
                } else {
                    let p = match name.as_str() {
                        "Decimal32" => 9,
                        "Decimal64" => 18,
                        _ => 38,
                    };
                    (p, self.int()?)
                };
                self.eat(b')')?;
                if !(1..=38).contains(&precision) || scale < 0 || scale > precision {
                    return Err(format!("Decimal({precision}, {scale}) out of range"));
                }
                Decimal { precision: precision as u32, scale: scale as u32 }
            }
            "Enum8" | "Enum16" => {
                self.eat(b'(')?;
                let mut items = Vec::new();
                loop {
                    let n = self.quoted()?;
                    self.eat(b'=')?;
                    let v = self.int()?;
                    let (lo, hi) = if name == "Enum8" { (-128, 127) } else { (-32768, 32767) };
                    if v < lo || v > hi {
                        return Err(format!("{name} value {v} out of range"));
                    }
                    items.push((n, v));
                    self.ws();
                    if self.s.get(self.i) == Some(&b',') {
                        self.i += 1;
                        continue;
                    }
                    break;
                }
                self.eat(b')')?;
                for (i, (n, v)) in items.iter().enumerate() {
                    if items[..i].iter().any(|(n2, v2)| n2 == n || v2 == v) {
                        return Err(format!("{name} repeats the name '{n}' or the value {v}"));
                    }
                }
                if name == "Enum8" { Enum8(items) } else { Enum16(items) }
            }
            "Nullable" | "Array" | "LowCardinality" => {
                self.eat(b'(')?;
                let inner = Box::new(self.ty()?);
                self.eat(b')')?;
                match name.as_str() {
                    "Nullable" => {
                        if matches!(*inner, Nullable(_) | Array(_) | LowCardinality(_)) {
                            return Err(format!("Nullable({inner}) is not allowed"));
                        }
                        Nullable(inner)
                    }
                    "Array" => Array(inner),
                    _ => {
                        let ok = match &*inner {
                            String | FixedString(_) => true,
                            Nullable(t) => matches!(**t, String | FixedString(_)),
                            _ => false,
                        };
                        if !ok {
                            return Err(format!("LowCardinality({inner}) is not supported; use it for strings"));
                        }
                        LowCardinality(inner)
                    }
                }
            }
            other => return Err(format!("unsupported type `{other}`")),
        })
    }
}

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

/// The table engine a plugin declared.
#[derive(Debug, Clone, PartialEq)]
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
    /// [`ENTRY_COLUMN`](super::dedup::ENTRY_COLUMN) (which event they came from), so that two
    /// batches of different events never hash alike (see `dedup`).
    pub entry_column: bool,
    /// Set by the host from the live table: what a batch inserted twice does.
    pub guarantee: super::dedup::Guarantee,
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
                if let Some(v) = v {
                    if !has(v) {
                        return Err(ctx(format!("ReplacingMergeTree version column `{v}` is not a column")));
                    }
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
        })
    }

    /// The column list of an INSERT, e.g. `(a, b, c)`.
    pub fn column_list(&self) -> String {
        let mut names: Vec<&str> = self.columns.iter().map(|c| c.name.as_str()).collect();
        if self.entry_column {
            names.push(super::dedup::ENTRY_COLUMN);
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
            defs.push(format!("{} UInt64", super::dedup::ENTRY_COLUMN));
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

/// Table and column names the host keeps for itself (its registry of the tables it created,
/// the entry column of exactly-once tables).
pub const RESERVED_PREFIX: &str = "sluice_";

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
    /// True if Sluice created it (it is in the registry): only then may it add columns.
    pub managed: bool,
}

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
    fn parses_and_prints_types() {
        for t in [
            "UInt8",
            "Nullable(String)",
            "Array(Nullable(Int32))",
            "LowCardinality(String)",
            "Decimal(18, 4)",
            "FixedString(16)",
            "Enum8('a' = 1, 'b\\'c' = -2)",
            "UUID",
            "DateTime",
        ] {
            let parsed = ColumnType::parse(t).unwrap();
            assert_eq!(parsed.to_string(), t);
        }
        assert_eq!(ColumnType::parse("Decimal64(4)").unwrap().to_string(), "Decimal(18, 4)");
        assert!(ColumnType::parse("Nullable(Array(String))").is_err());
        assert!(ColumnType::parse("String; DROP TABLE x").is_err());
        assert!(ColumnType::parse("Map(String, String)").unwrap_err().contains("unsupported type `Map`"));
        assert!(ColumnType::parse("LowCardinality(UInt8)").is_err());
    }

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
