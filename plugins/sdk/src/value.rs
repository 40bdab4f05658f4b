//! The packed value encoding of the WIT contract (`batch-output.rows`), written without any
//! intermediate representation: each `Value` appends its tag and bytes to one buffer.

use crate::time::{Date, DateTime, Timestamp};

pub const TAG_NULL: u8 = 0x00;
pub const TAG_BOOL: u8 = 0x01;
pub const TAG_INT: u8 = 0x02;
pub const TAG_UINT: u8 = 0x03;
pub const TAG_FLOAT: u8 = 0x04;
pub const TAG_STRING: u8 = 0x05;
pub const TAG_BYTES: u8 = 0x06;
pub const TAG_ARRAY: u8 = 0x07;

/// The buffer rows are written into.
#[derive(Default)]
pub struct ValueWriter {
    buf: Vec<u8>,
}

impl ValueWriter {
    pub fn with_capacity(n: usize) -> Self {
        ValueWriter { buf: Vec::with_capacity(n) }
    }
    pub fn len(&self) -> usize {
        self.buf.len()
    }
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
    pub fn truncate(&mut self, len: usize) {
        self.buf.truncate(len)
    }
    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }
    pub(crate) fn raw_u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn raw_u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn null(&mut self) {
        self.buf.push(TAG_NULL);
    }
    pub fn bool(&mut self, v: bool) {
        self.buf.extend_from_slice(&[TAG_BOOL, v as u8]);
    }
    pub fn int(&mut self, v: i64) {
        self.buf.push(TAG_INT);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn uint(&mut self, v: u64) {
        self.buf.push(TAG_UINT);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn float(&mut self, v: f64) {
        self.buf.push(TAG_FLOAT);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn string(&mut self, v: &str) {
        self.buf.push(TAG_STRING);
        self.buf.extend_from_slice(&(v.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(v.as_bytes());
    }
    pub fn bytes(&mut self, v: &[u8]) {
        self.buf.push(TAG_BYTES);
        self.buf.extend_from_slice(&(v.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(v);
    }
    /// Starts an array of `len` values; write exactly `len` values after it.
    pub fn array(&mut self, len: usize) {
        self.buf.push(TAG_ARRAY);
        self.buf.extend_from_slice(&(len as u32).to_le_bytes());
    }
}

/// A Rust value that can fill a column.
pub trait Value {
    /// Writes the value without knowing its column.
    fn write(&self, w: &mut ValueWriter);
    /// Writes the value for a column of ClickHouse type `column` (as declared in
    /// [`table!`](crate::table)): times become the ticks a `DateTime64(p)` column counts, map
    /// and tuple members follow their own types. By default, as [`Value::write`].
    fn write_for(&self, w: &mut ValueWriter, column: &str) {
        let _ = column;
        self.write(w)
    }
}

/// What a column stores a point in time as.
enum TimeColumn {
    Date,
    DateTime,
    DateTime64(u32),
    Other,
}

/// `column` without `Nullable(...)` and `LowCardinality(...)` around it.
fn unwrapped(column: &str) -> &str {
    let mut c = column.trim();
    loop {
        match ["Nullable(", "LowCardinality("].iter().find_map(|w| c.strip_prefix(w)) {
            Some(inner) => c = inner.strip_suffix(')').unwrap_or(inner).trim(),
            None => return c,
        }
    }
}

fn time_column(column: &str) -> TimeColumn {
    let c = unwrapped(column);
    if let Some(args) = c.strip_prefix("DateTime64(") {
        let p: String = args.chars().skip_while(|c| c.is_whitespace()).take_while(char::is_ascii_digit).collect();
        return TimeColumn::DateTime64(p.parse().unwrap_or(3).min(9));
    }
    match c.split('(').next().unwrap_or("") {
        "Date" | "Date32" => TimeColumn::Date,
        "DateTime" => TimeColumn::DateTime,
        _ => TimeColumn::Other,
    }
}

/// The argument types of `Name(a, b, ...)` (top-level commas; quoted Enum names skipped), with
/// a tuple element's name dropped (`a UInt8` → `UInt8`).
fn type_args<'a>(column: &'a str, name: &str) -> Vec<&'a str> {
    let c = unwrapped(column);
    let Some(inner) = c.strip_prefix(name).and_then(|r| r.strip_prefix('(')).and_then(|r| r.strip_suffix(')')) else {
        return Vec::new();
    };
    let (mut out, mut depth, mut start, mut quoted, mut escaped) = (Vec::new(), 0i32, 0usize, false, false);
    for (i, ch) in inner.char_indices() {
        match ch {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '\'' => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted => depth -= 1,
            ',' if !quoted && depth == 0 => {
                out.push(inner[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(inner[start..].trim());
    out.into_iter()
        .map(|a| match a.split_once(' ') {
            Some((n, ty)) if !n.contains('(') && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') => ty.trim(),
            _ => a,
        })
        .collect()
}

macro_rules! ints {
    ($($t:ty => $m:ident as $as:ty),*) => {
        $(impl Value for $t {
            fn write(&self, w: &mut ValueWriter) { w.$m(*self as $as) }
        })*
    };
}
ints!(i8 => int as i64, i16 => int as i64, i32 => int as i64, i64 => int as i64,
      u8 => uint as u64, u16 => uint as u64, u32 => uint as u64, u64 => uint as u64,
      f32 => float as f64, f64 => float as f64);

/// Integers wider than 64 bits travel as decimal text (for `Int128`/`UInt128`/`Int256`/
/// `UInt256` and `Decimal` columns).
impl Value for i128 {
    fn write(&self, w: &mut ValueWriter) {
        w.string(&self.to_string())
    }
}
impl Value for u128 {
    fn write(&self, w: &mut ValueWriter) {
        w.string(&self.to_string())
    }
}

impl Value for bool {
    fn write(&self, w: &mut ValueWriter) {
        w.bool(*self)
    }
}
impl Value for String {
    fn write(&self, w: &mut ValueWriter) {
        w.string(self)
    }
}
impl Value for &str {
    fn write(&self, w: &mut ValueWriter) {
        w.string(self)
    }
}
/// JSON columns take a JSON object as text.
impl Value for serde_json::Value {
    fn write(&self, w: &mut ValueWriter) {
        w.string(&self.to_string())
    }
}
impl Value for std::net::Ipv4Addr {
    fn write(&self, w: &mut ValueWriter) {
        w.string(&self.to_string())
    }
}
impl Value for std::net::Ipv6Addr {
    fn write(&self, w: &mut ValueWriter) {
        w.string(&self.to_string())
    }
}
impl Value for std::net::IpAddr {
    fn write(&self, w: &mut ValueWriter) {
        w.string(&self.to_string())
    }
}
impl<T: Value> Value for Option<T> {
    fn write(&self, w: &mut ValueWriter) {
        match self {
            Some(v) => v.write(w),
            None => w.null(),
        }
    }
    fn write_for(&self, w: &mut ValueWriter, column: &str) {
        match self {
            Some(v) => v.write_for(w, column),
            None => w.null(),
        }
    }
}
impl<T: Value> Value for Vec<T> {
    fn write(&self, w: &mut ValueWriter) {
        w.array(self.len());
        for v in self {
            v.write(w);
        }
    }
    fn write_for(&self, w: &mut ValueWriter, column: &str) {
        let element = type_args(column, "Array").first().copied().unwrap_or("");
        w.array(self.len());
        for v in self {
            v.write_for(w, element);
        }
    }
}

/// A `Map(K, V)` column takes its entries as [key, value] pairs.
fn write_map<'a, K: Value + 'a, V: Value + 'a>(
    w: &mut ValueWriter,
    len: usize,
    entries: impl Iterator<Item = (&'a K, &'a V)>,
    column: &str,
) {
    let args = type_args(column, "Map");
    let (kt, vt) = (args.first().copied().unwrap_or(""), args.get(1).copied().unwrap_or(""));
    w.array(len);
    for (k, v) in entries {
        w.array(2);
        k.write_for(w, kt);
        v.write_for(w, vt);
    }
}
impl<K: Value, V: Value> Value for std::collections::BTreeMap<K, V> {
    fn write(&self, w: &mut ValueWriter) {
        write_map(w, self.len(), self.iter(), "")
    }
    fn write_for(&self, w: &mut ValueWriter, column: &str) {
        write_map(w, self.len(), self.iter(), column)
    }
}
impl<K: Value, V: Value, S> Value for std::collections::HashMap<K, V, S> {
    fn write(&self, w: &mut ValueWriter) {
        write_map(w, self.len(), self.iter(), "")
    }
    fn write_for(&self, w: &mut ValueWriter, column: &str) {
        write_map(w, self.len(), self.iter(), column)
    }
}

/// A `Tuple(...)` column takes its elements in order.
macro_rules! tuples {
    ($( ($($t:ident . $i:tt),+) ),*) => {$(
        impl<$($t: Value),+> Value for ($($t,)+) {
            fn write(&self, w: &mut ValueWriter) {
                self.write_for(w, "")
            }
            fn write_for(&self, w: &mut ValueWriter, column: &str) {
                let args = type_args(column, "Tuple");
                w.array([$($i),+].len());
                $( self.$i.write_for(w, args.get($i).copied().unwrap_or("")); )+
            }
        }
    )*};
}
tuples!((A.0), (A.0, B.1), (A.0, B.1, C.2), (A.0, B.1, C.2, D.3), (A.0, B.1, C.2, D.3, E.4), (A.0, B.1, C.2, D.3, E.4, F.5));

impl Value for Date {
    fn write(&self, w: &mut ValueWriter) {
        w.int(self.days() as i64)
    }
    fn write_for(&self, w: &mut ValueWriter, column: &str) {
        let secs = self.days() as i64 * 86_400;
        match time_column(column) {
            TimeColumn::DateTime => w.int(secs),
            TimeColumn::DateTime64(p) => w.int(secs.saturating_mul(10i64.pow(p))),
            _ => self.write(w),
        }
    }
}
impl Value for DateTime {
    fn write(&self, w: &mut ValueWriter) {
        w.int(self.seconds())
    }
    fn write_for(&self, w: &mut ValueWriter, column: &str) {
        match time_column(column) {
            TimeColumn::Date => w.int(self.date().days() as i64),
            TimeColumn::DateTime64(p) => w.int(self.seconds().saturating_mul(10i64.pow(p))),
            _ => self.write(w),
        }
    }
}
impl Value for Timestamp {
    /// Without its column: RFC 3339 text, which every date-time column reads exactly.
    fn write(&self, w: &mut ValueWriter) {
        w.string(&self.to_rfc3339())
    }
    fn write_for(&self, w: &mut ValueWriter, column: &str) {
        match time_column(column) {
            TimeColumn::Date => w.int(self.date().days() as i64),
            TimeColumn::DateTime => w.int(self.seconds()),
            TimeColumn::DateTime64(p) => w.int(self.ticks(p) as i64),
            TimeColumn::Other => self.write(w),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(v: &dyn Fn(&mut ValueWriter)) -> Vec<u8> {
        let mut w = ValueWriter::default();
        v(&mut w);
        w.into_bytes()
    }

    #[test]
    fn column_types_are_read_as_clickhouse_writes_them() {
        assert_eq!(type_args("Map(String, Array(Nullable(DateTime64(3))))", "Map"), ["String", "Array(Nullable(DateTime64(3)))"]);
        assert_eq!(type_args("Tuple(a UInt8, b Enum8('x, y' = 1, 'z)' = 2))", "Tuple"), ["UInt8", "Enum8('x, y' = 1, 'z)' = 2)"]);
        assert_eq!(type_args("Nullable(Tuple(DateTime, String))", "Tuple"), ["DateTime", "String"]);
        assert!(matches!(time_column("LowCardinality(Nullable(DateTime64(6, 'UTC')))"), TimeColumn::DateTime64(6)));
        assert!(matches!(time_column("DateTime('Asia/Tokyo')"), TimeColumn::DateTime));
        assert!(matches!(time_column("Date32"), TimeColumn::Date));
    }

    #[test]
    fn times_follow_their_column() {
        let t = Timestamp::parse("2024-06-01T12:30:00.123456Z").unwrap();
        let mut expect = ValueWriter::default();
        expect.int(1_717_245_000_123);
        assert_eq!(bytes(&|w| t.write_for(w, "DateTime64(3)")), expect.into_bytes());
        let mut expect = ValueWriter::default();
        expect.int(1_717_245_000);
        assert_eq!(bytes(&|w| t.write_for(w, "Nullable(DateTime)")), expect.into_bytes());
        let dt = DateTime::from_seconds(10);
        let mut expect = ValueWriter::default();
        expect.int(10_000_000);
        assert_eq!(bytes(&|w| dt.write_for(w, "DateTime64(6, 'UTC')")), expect.into_bytes());
        // Inside a map and a tuple.
        let m: std::collections::BTreeMap<String, DateTime> = [("a".to_string(), dt)].into();
        let mut expect = ValueWriter::default();
        expect.array(1);
        expect.array(2);
        expect.string("a");
        expect.int(10_000);
        assert_eq!(bytes(&|w| m.write_for(w, "Map(String, DateTime64(3))")), expect.into_bytes());
        let mut expect = ValueWriter::default();
        expect.array(2);
        expect.int(7);
        expect.int(100);
        assert_eq!(bytes(&|w| (7i32, dt).write_for(w, "Tuple(n Int32, t DateTime64(1))")), expect.into_bytes());
        let mut expect = ValueWriter::default();
        expect.string("170141183460469231731687303715884105727");
        assert_eq!(bytes(&|w| i128::MAX.write(w)), expect.into_bytes());
    }
}
