//! ClickHouse column types as the host understands them: parsed from a plugin's manifest or
//! from `system.columns` of a live table, printed back in ClickHouse's canonical spelling, and
//! asked which type families they need from the server.
//!
//! Policy: a type is a tree at most [`MAX_TYPE_DEPTH`] levels deep — the only recursion over
//! plugin-supplied data the host does (checking and encoding a value, rendering it as JSON)
//! follows this tree, so its depth bounds every such walk. Enum items are kept sorted by value,
//! as ClickHouse stores them, so a declaration in any order equals the live type.

use std::fmt;

/// The deepest type accepted: `Array(Array(...))` nested this many times, or tuples, maps...
pub const MAX_TYPE_DEPTH: usize = 16;
/// The longest type text accepted (a big Enum fits easily).
pub(super) const MAX_TYPE_TEXT: usize = 64 * 1024;

/// A time zone of a `DateTime('tz')` or `DateTime64(p, 'tz')` column.
#[derive(Debug, Clone)]
pub struct TimeZone {
    pub name: String,
    pub tz: chrono_tz::Tz,
}

impl PartialEq for TimeZone {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl TimeZone {
    pub(super) fn parse(name: &str) -> Result<TimeZone, String> {
        let tz = name.parse::<chrono_tz::Tz>().map_err(|_| format!("unknown time zone '{name}'"))?;
        Ok(TimeZone { name: name.to_string(), tz })
    }
}

/// A ClickHouse column type the host can check values against and encode as RowBinary.
#[derive(Debug, Clone, PartialEq)]
pub enum ColumnType {
    UInt8,
    UInt16,
    UInt32,
    UInt64,
    UInt128,
    UInt256,
    Int8,
    Int16,
    Int32,
    Int64,
    Int128,
    Int256,
    Float32,
    Float64,
    Bool,
    String,
    FixedString(usize),
    Date,
    Date32,
    /// Seconds since the epoch; the zone only says how ClickHouse shows it (and how the host
    /// reads a time written without an offset).
    DateTime(Option<TimeZone>),
    /// Ticks of 10^-precision seconds since the epoch.
    DateTime64 {
        precision: u32,
        tz: Option<TimeZone>,
    },
    Uuid,
    IPv4,
    IPv6,
    /// Decimal(P, S): stored in 4, 8 or 16 bytes depending on P.
    Decimal {
        precision: u32,
        scale: u32,
    },
    /// Items sorted by value.
    Enum8(Vec<(String, i64)>),
    Enum16(Vec<(String, i64)>),
    Nullable(Box<ColumnType>),
    Array(Box<ColumnType>),
    LowCardinality(Box<ColumnType>),
    Map(Box<ColumnType>, Box<ColumnType>),
    /// Elements with their names (all named or none).
    Tuple(Vec<(Option<String>, ColumnType)>),
    /// The JSON object type of current releases, written from JSON text.
    Json,
}

impl ColumnType {
    /// The types directly inside this one.
    fn children(&self) -> Vec<&ColumnType> {
        use ColumnType::*;
        match self {
            Nullable(t) | Array(t) | LowCardinality(t) => vec![t],
            Map(k, v) => vec![k, v],
            Tuple(items) => items.iter().map(|(_, t)| t).collect(),
            _ => vec![],
        }
    }

    /// True if this type (or what it wraps) is LowCardinality.
    pub fn uses_low_cardinality(&self) -> bool {
        matches!(self, ColumnType::LowCardinality(_)) || self.children().iter().any(|t| t.uses_low_cardinality())
    }

    /// True if this type (or what it wraps) is JSON.
    pub fn uses_json(&self) -> bool {
        matches!(self, ColumnType::Json) || self.children().iter().any(|t| t.uses_json())
    }

    pub fn is_numeric(&self) -> bool {
        use ColumnType::*;
        matches!(
            self,
            UInt8
                | UInt16
                | UInt32
                | UInt64
                | UInt128
                | UInt256
                | Int8
                | Int16
                | Int32
                | Int64
                | Int128
                | Int256
                | Float32
                | Float64
                | Decimal { .. }
        )
    }

    /// The type family names this type needs from the server (`system.data_type_families`),
    /// e.g. `["Map", "String", "DateTime64"]`.
    pub fn families(&self) -> Vec<&'static str> {
        use ColumnType::*;
        let own = match self {
            UInt8 => "UInt8",
            UInt16 => "UInt16",
            UInt32 => "UInt32",
            UInt64 => "UInt64",
            UInt128 => "UInt128",
            UInt256 => "UInt256",
            Int8 => "Int8",
            Int16 => "Int16",
            Int32 => "Int32",
            Int64 => "Int64",
            Int128 => "Int128",
            Int256 => "Int256",
            Float32 => "Float32",
            Float64 => "Float64",
            Bool => "Bool",
            String => "String",
            FixedString(_) => "FixedString",
            Date => "Date",
            Date32 => "Date32",
            DateTime(_) => "DateTime",
            DateTime64 { .. } => "DateTime64",
            Uuid => "UUID",
            IPv4 => "IPv4",
            IPv6 => "IPv6",
            Decimal { .. } => "Decimal",
            Enum8(_) => "Enum8",
            Enum16(_) => "Enum16",
            Nullable(_) => "Nullable",
            Array(_) => "Array",
            LowCardinality(_) => "LowCardinality",
            Map(..) => "Map",
            Tuple(_) => "Tuple",
            Json => "JSON",
        };
        let mut out = vec![own];
        for c in self.children() {
            for f in c.families() {
                if !out.contains(&f) {
                    out.push(f);
                }
            }
        }
        out
    }
}

/// A string as ClickHouse quotes it in a type (Enum names) or a literal.
pub fn quote(s: &str) -> std::string::String {
    let mut out = std::string::String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\0' => out.push_str("\\0"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => out.push_str(&format!("\\x{:02X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
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
                write!(f, "{} = {v}", quote(n))?;
            }
            write!(f, ")")
        };
        match self {
            UInt8 => write!(f, "UInt8"),
            UInt16 => write!(f, "UInt16"),
            UInt32 => write!(f, "UInt32"),
            UInt64 => write!(f, "UInt64"),
            UInt128 => write!(f, "UInt128"),
            UInt256 => write!(f, "UInt256"),
            Int8 => write!(f, "Int8"),
            Int16 => write!(f, "Int16"),
            Int32 => write!(f, "Int32"),
            Int64 => write!(f, "Int64"),
            Int128 => write!(f, "Int128"),
            Int256 => write!(f, "Int256"),
            Float32 => write!(f, "Float32"),
            Float64 => write!(f, "Float64"),
            Bool => write!(f, "Bool"),
            String => write!(f, "String"),
            FixedString(n) => write!(f, "FixedString({n})"),
            Date => write!(f, "Date"),
            Date32 => write!(f, "Date32"),
            DateTime(None) => write!(f, "DateTime"),
            DateTime(Some(tz)) => write!(f, "DateTime({})", quote(&tz.name)),
            DateTime64 { precision, tz: None } => write!(f, "DateTime64({precision})"),
            DateTime64 { precision, tz: Some(tz) } => write!(f, "DateTime64({precision}, {})", quote(&tz.name)),
            Uuid => write!(f, "UUID"),
            IPv4 => write!(f, "IPv4"),
            IPv6 => write!(f, "IPv6"),
            Decimal { precision, scale } => write!(f, "Decimal({precision}, {scale})"),
            Enum8(items) => enum_items(f, "Enum8", items),
            Enum16(items) => enum_items(f, "Enum16", items),
            Nullable(t) => write!(f, "Nullable({t})"),
            Array(t) => write!(f, "Array({t})"),
            LowCardinality(t) => write!(f, "LowCardinality({t})"),
            Map(k, v) => write!(f, "Map({k}, {v})"),
            Tuple(items) => {
                write!(f, "Tuple(")?;
                for (i, (name, t)) in items.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    match name {
                        Some(n) => write!(f, "{n} {t}")?,
                        None => write!(f, "{t}")?,
                    }
                }
                write!(f, ")")
            }
            Json => write!(f, "JSON"),
        }
    }
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
            "LowCardinality(UInt32)",
            "LowCardinality(Nullable(Date))",
            "Decimal(18, 4)",
            "FixedString(16)",
            "Enum8('b\\'c' = -2, 'a' = 1)",
            "UUID",
            "DateTime",
            "DateTime('Asia/Tokyo')",
            "DateTime64(3)",
            "DateTime64(6, 'UTC')",
            "Date32",
            "Bool",
            "Int128",
            "UInt256",
            "IPv4",
            "IPv6",
            "Map(String, Array(Nullable(Int32)))",
            "Map(LowCardinality(String), UInt64)",
            "Tuple(UInt8, String)",
            "Tuple(a UInt8, b Tuple(c String, d Array(Float64)))",
            "JSON",
        ] {
            let parsed = ColumnType::parse(t).unwrap();
            assert_eq!(parsed.to_string(), t);
        }
        assert_eq!(ColumnType::parse("Decimal64(4)").unwrap().to_string(), "Decimal(18, 4)");
        assert!(ColumnType::parse("Nullable(Array(String))").is_err());
        assert!(ColumnType::parse("Nullable(Map(String, String))").is_err());
        assert!(ColumnType::parse("String; DROP TABLE x").is_err());
        assert!(ColumnType::parse("Variant(String, UInt8)").unwrap_err().contains("unsupported type `Variant`"));
        assert!(ColumnType::parse("LowCardinality(UUID)").is_err());
        assert!(ColumnType::parse("Map(Float64, String)").unwrap_err().contains("Map key type"));
        assert!(ColumnType::parse("DateTime('Mars/Olympus')").unwrap_err().contains("unknown time zone"));
        assert!(ColumnType::parse("DateTime64(10)").is_err());
        assert!(ColumnType::parse("Tuple(a UInt8, String)").unwrap_err().contains("all its elements or none"));
        assert!(ColumnType::parse("JSON(max_dynamic_paths = 10)").is_err());
    }

    #[test]
    fn nesting_is_bounded() {
        let deep = |n: usize| format!("{}UInt8{}", "Array(".repeat(n), ")".repeat(n));
        assert!(ColumnType::parse(&deep(MAX_TYPE_DEPTH)).is_ok());
        assert!(ColumnType::parse(&deep(MAX_TYPE_DEPTH + 1)).unwrap_err().contains("nested more than"));
        // Far deeper than any stack would take: refused without recursing.
        let e = ColumnType::parse(&deep(200_000)).unwrap_err();
        assert!(e.contains("too long") || e.contains("nested more than"), "{e}");
        assert!(ColumnType::parse(&deep(5_000)).unwrap_err().contains("nested more than"));
    }

    #[test]
    fn enums_compare_in_value_order_and_unescape() {
        let declared = ColumnType::parse("Enum8('pending' = 0, 'failed' = -1, 'done' = 2)").unwrap();
        let live = ColumnType::parse("Enum8('failed' = -1, 'pending' = 0, 'done' = 2)").unwrap();
        assert_eq!(declared, live);
        let tab = ColumnType::parse("Enum8('a\\tb' = 1, 'c\\nd' = 2, 'e\\\\f' = 3, 'g\\x01' = 4)").unwrap();
        match &tab {
            ColumnType::Enum8(items) => {
                assert_eq!(items[0].0, "a\tb");
                assert_eq!(items[1].0, "c\nd");
                assert_eq!(items[2].0, "e\\f");
                assert_eq!(items[3].0, "g\u{1}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(ColumnType::parse(&tab.to_string()).unwrap(), tab);
        assert!(ColumnType::parse("Enum8('a' = 1, 'a' = 2)").unwrap_err().contains("repeats the name"));
        assert!(ColumnType::parse("Enum8('a' = 1, 'b' = 1)").unwrap_err().contains("repeats the value"));
    }

    #[test]
    fn families_and_json() {
        let t = ColumnType::parse("Map(String, Array(Nullable(DateTime64(3))))").unwrap();
        assert_eq!(t.families(), vec!["Map", "String", "Array", "Nullable", "DateTime64"]);
        assert!(ColumnType::parse("Tuple(a JSON)").unwrap().uses_json());
    }
}
