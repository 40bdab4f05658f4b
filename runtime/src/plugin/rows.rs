//! Turns a plugin's packed rows (the `batch-output.rows` encoding of the WIT contract) into
//! ClickHouse RowBinary, checking every value against its declared column on the way.
//!
//! Two kinds of fault are kept apart:
//! - a value that does not fit its column (wrong type, out of range, null in a non-Nullable
//!   column) fails only the event that emitted it: its rows are dropped and the reason names the
//!   table, column and value;
//! - a buffer that cannot be parsed at all (unknown tag, truncated data, a row for an event or
//!   table that does not exist, events out of order) means the plugin is broken, and fails the
//!   whole call.
//!
//! Values are decoded and encoded in one pass with no intermediate representation.

use crate::writer::schema::{ColumnType, TableSchema};

const TAG_NULL: u8 = 0x00;
const TAG_BOOL: u8 = 0x01;
const TAG_INT: u8 = 0x02;
const TAG_UINT: u8 = 0x03;
const TAG_FLOAT: u8 = 0x04;
const TAG_STRING: u8 = 0x05;
const TAG_BYTES: u8 = 0x06;
const TAG_ARRAY: u8 = 0x07;

/// RowBinary rows for one table, from the events of one batch that succeeded.
#[derive(Debug, Default, Clone)]
pub struct TableRows {
    pub data: Vec<u8>,
    pub rows: usize,
    /// Each event's rows in `data`, in order: (event index, end offset, row count). An event's
    /// rows are contiguous, so the writer can tell which event a refused row came from.
    pub events: Vec<(u32, usize, usize)>,
}

impl TableRows {
    /// These rows without those of the events `drop` picks.
    pub fn without(self, drop: impl Fn(u32) -> bool) -> TableRows {
        let mut out = TableRows::default();
        let mut start = 0;
        for (e, end, n) in self.events {
            if !drop(e) {
                out.data.extend_from_slice(&self.data[start..end]);
                out.rows += n;
                out.events.push((e, out.data.len(), n));
            }
            start = end;
        }
        out
    }

    /// Appends the rows of a call made on a sub-slice of the batch starting at event `offset`.
    pub fn append(&mut self, other: TableRows, offset: u32) {
        let base = self.data.len();
        self.data.extend_from_slice(&other.data);
        self.rows += other.rows;
        self.events.extend(other.events.into_iter().map(|(e, end, n)| (e + offset, base + end, n)));
    }
}

/// The checked output of one plugin call.
#[derive(Debug, Default)]
pub struct DecodedRows {
    /// Indexed like the plugin's tables.
    pub tables: Vec<TableRows>,
    /// Events whose rows were refused: (event index, reason).
    pub rejected: Vec<(u32, String)>,
    /// Rows produced per event, for limits and metrics.
    pub rows_per_event: Vec<u32>,
}

/// Limits on what one event may produce.
#[derive(Debug, Clone, Copy)]
pub struct OutputLimits {
    pub max_rows_per_event: u32,
    pub max_bytes_per_event: usize,
}

impl Default for OutputLimits {
    fn default() -> Self {
        OutputLimits { max_rows_per_event: 10_000, max_bytes_per_event: 4 << 20 }
    }
}

/// The plugin's output cannot be parsed: the whole call fails.
#[derive(Debug, thiserror::Error)]
#[error("plugin returned a malformed row buffer at byte {offset}: {reason}")]
pub struct MalformedRows {
    pub offset: usize,
    pub reason: String,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn fail<T>(&self, reason: impl Into<String>) -> Result<T, MalformedRows> {
        Err(MalformedRows { offset: self.pos, reason: reason.into() })
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], MalformedRows> {
        if self.buf.len() - self.pos < n {
            return self.fail(format!("needs {n} more bytes, {} left", self.buf.len() - self.pos));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, MalformedRows> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, MalformedRows> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))
    }
    fn u32(&mut self) -> Result<u32, MalformedRows> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64, MalformedRows> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
}

/// One decoded value, borrowing from the buffer.
#[derive(Debug, Clone, Copy)]
enum Val<'a> {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(&'a str),
    Bytes(&'a [u8]),
    /// An array: element count and where its elements start.
    Array(u32, usize),
}

impl Val<'_> {
    fn describe(&self) -> String {
        match self {
            Val::Null => "null".into(),
            Val::Bool(b) => format!("bool {b}"),
            Val::Int(v) => format!("int {v}"),
            Val::UInt(v) => format!("uint {v}"),
            Val::Float(v) => format!("float {v}"),
            Val::Str(s) if s.len() > 64 => format!("string {:?}...", &s[..s.floor_char_boundary(64)]),
            Val::Str(s) => format!("string {s:?}"),
            Val::Bytes(b) => format!("{} bytes", b.len()),
            Val::Array(n, _) => format!("array of {n}"),
        }
    }
}

fn read_val<'a>(r: &mut Reader<'a>) -> Result<Val<'a>, MalformedRows> {
    let tag = r.u8()?;
    Ok(match tag {
        TAG_NULL => Val::Null,
        TAG_BOOL => match r.u8()? {
            0 => Val::Bool(false),
            1 => Val::Bool(true),
            b => return r.fail(format!("bool byte {b}")),
        },
        TAG_INT => Val::Int(r.u64()? as i64),
        TAG_UINT => Val::UInt(r.u64()?),
        TAG_FLOAT => Val::Float(f64::from_bits(r.u64()?)),
        TAG_STRING => {
            let n = r.u32()? as usize;
            let at = r.pos;
            match std::str::from_utf8(r.take(n)?) {
                Ok(s) => Val::Str(s),
                Err(_) => return Err(MalformedRows { offset: at, reason: "string is not UTF-8".into() }),
            }
        }
        TAG_BYTES => {
            let n = r.u32()? as usize;
            Val::Bytes(r.take(n)?)
        }
        TAG_ARRAY => {
            let n = r.u32()?;
            let start = r.pos;
            // Skip the elements now so the caller's cursor moves past the whole array.
            for _ in 0..n {
                skip_val(r)?;
            }
            Val::Array(n, start)
        }
        t => return r.fail(format!("unknown value tag 0x{t:02x}")),
    })
}

fn skip_val(r: &mut Reader<'_>) -> Result<(), MalformedRows> {
    read_val(r).map(|_| ())
}

/// Writes ClickHouse's unsigned LEB128 length prefix.
pub fn write_varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Checks `v` against `ty` and appends its RowBinary encoding. `buf` is the whole row buffer
/// (for arrays, whose elements are read again from their start).
fn encode(ty: &ColumnType, v: Val<'_>, buf: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    use ColumnType as T;
    let mismatch = || Err(format!("expected {ty}, got {}", v.describe()));
    let int_range = |lo: i128, hi: i128| -> Result<i128, String> {
        let x: i128 = match v {
            Val::Int(i) => i as i128,
            Val::UInt(u) => u as i128,
            Val::Bool(b) => b as i128,
            _ => return Err(format!("expected {ty}, got {}", v.describe())),
        };
        if x < lo || x > hi {
            return Err(format!("{} is out of range for {ty} ({lo}..={hi})", v.describe()));
        }
        Ok(x)
    };
    match ty {
        T::UInt8 => out.push(int_range(0, u8::MAX as i128)? as u8),
        T::UInt16 => out.extend_from_slice(&(int_range(0, u16::MAX as i128)? as u16).to_le_bytes()),
        T::UInt32 => out.extend_from_slice(&(int_range(0, u32::MAX as i128)? as u32).to_le_bytes()),
        T::UInt64 => out.extend_from_slice(&(int_range(0, u64::MAX as i128)? as u64).to_le_bytes()),
        T::Int8 => out.push(int_range(i8::MIN as i128, i8::MAX as i128)? as i8 as u8),
        T::Int16 => out.extend_from_slice(&(int_range(i16::MIN as i128, i16::MAX as i128)? as i16).to_le_bytes()),
        T::Int32 => out.extend_from_slice(&(int_range(i32::MIN as i128, i32::MAX as i128)? as i32).to_le_bytes()),
        T::Int64 => out.extend_from_slice(&(int_range(i64::MIN as i128, i64::MAX as i128)? as i64).to_le_bytes()),
        T::Float32 | T::Float64 => {
            let f = match v {
                Val::Float(f) => f,
                Val::Int(i) => i as f64,
                Val::UInt(u) => u as f64,
                _ => return mismatch(),
            };
            if matches!(ty, T::Float32) {
                if f.is_finite() && f.abs() > f32::MAX as f64 {
                    return Err(format!("{} is out of range for Float32", v.describe()));
                }
                out.extend_from_slice(&(f as f32).to_le_bytes());
            } else {
                out.extend_from_slice(&f.to_le_bytes());
            }
        }
        T::String => match v {
            Val::Str(s) => {
                write_varint(out, s.len() as u64);
                out.extend_from_slice(s.as_bytes());
            }
            Val::Bytes(b) => {
                write_varint(out, b.len() as u64);
                out.extend_from_slice(b);
            }
            _ => return mismatch(),
        },
        T::FixedString(n) => {
            let b = match v {
                Val::Str(s) => s.as_bytes(),
                Val::Bytes(b) => b,
                _ => return mismatch(),
            };
            if b.len() > *n {
                return Err(format!("{} is longer than {ty}", v.describe()));
            }
            out.extend_from_slice(b);
            out.resize(out.len() + (n - b.len()), 0);
        }
        T::Date => {
            let days = match v {
                Val::Str(s) => parse_date(s).ok_or_else(|| format!("{} is not a date (YYYY-MM-DD)", v.describe()))?,
                _ => int_range(0, u16::MAX as i128).map_err(|_| {
                    format!("{} is not a day number in 0..=65535 (1970-01-01..2149-06-06)", v.describe())
                })? as i64,
            };
            if !(0..=u16::MAX as i64).contains(&days) {
                return Err(format!("{} is outside Date's range 1970-01-01..2149-06-06", v.describe()));
            }
            out.extend_from_slice(&(days as u16).to_le_bytes());
        }
        T::DateTime => {
            let secs = match v {
                Val::Str(s) => parse_datetime(s)
                    .ok_or_else(|| format!("{} is not a date-time (YYYY-MM-DD hh:mm:ss or RFC 3339)", v.describe()))?,
                _ => int_range(0, u32::MAX as i128)
                    .map_err(|_| format!("{} is outside DateTime's range (0..=4294967295 seconds)", v.describe()))?
                    as i64,
            };
            if !(0..=u32::MAX as i64).contains(&secs) {
                return Err(format!("{} is outside DateTime's range 1970..2106", v.describe()));
            }
            out.extend_from_slice(&(secs as u32).to_le_bytes());
        }
        T::Uuid => {
            let raw: [u8; 16] = match v {
                Val::Str(s) => parse_uuid(s).ok_or_else(|| format!("{} is not a UUID", v.describe()))?,
                Val::Bytes(b) if b.len() == 16 => b.try_into().unwrap(),
                _ => return mismatch(),
            };
            // RowBinary UUID: the high 64 bits, then the low 64 bits, each little-endian.
            let hi = u64::from_be_bytes(raw[..8].try_into().unwrap());
            let lo = u64::from_be_bytes(raw[8..].try_into().unwrap());
            out.extend_from_slice(&hi.to_le_bytes());
            out.extend_from_slice(&lo.to_le_bytes());
        }
        T::Decimal { precision, scale } => {
            let scaled: i128 = match v {
                Val::Str(s) => parse_decimal(s, *scale).ok_or_else(|| {
                    format!("{} is not a decimal number with at most {scale} fractional digits", v.describe())
                })?,
                Val::Int(i) => (i as i128)
                    .checked_mul(10i128.pow(*scale))
                    .ok_or_else(|| format!("{} overflows {ty}", v.describe()))?,
                Val::UInt(u) => (u as i128)
                    .checked_mul(10i128.pow(*scale))
                    .ok_or_else(|| format!("{} overflows {ty}", v.describe()))?,
                Val::Float(f) if f.is_finite() => {
                    let x = (f * 10f64.powi(*scale as i32)).round();
                    if x.abs() >= 1e38 {
                        return Err(format!("{} overflows {ty}", v.describe()));
                    }
                    x as i128
                }
                _ => return mismatch(),
            };
            if scaled.unsigned_abs() >= 10u128.pow(*precision) {
                return Err(format!("{} has more than {precision} digits for {ty}", v.describe()));
            }
            match precision {
                1..=9 => out.extend_from_slice(&(scaled as i32).to_le_bytes()),
                10..=18 => out.extend_from_slice(&(scaled as i64).to_le_bytes()),
                _ => out.extend_from_slice(&scaled.to_le_bytes()),
            }
        }
        T::Enum8(items) | T::Enum16(items) => {
            let value = match v {
                Val::Str(s) => items.iter().find(|(n, _)| n == s).map(|(_, v)| *v),
                Val::Int(i) => items.iter().find(|(_, x)| *x == i).map(|(_, v)| *v),
                Val::UInt(u) => items.iter().find(|(_, x)| *x as i128 == u as i128).map(|(_, v)| *v),
                _ => return mismatch(),
            }
            .ok_or_else(|| format!("{} is not a value of {ty}", v.describe()))?;
            if matches!(ty, T::Enum8(_)) {
                out.push(value as i8 as u8);
            } else {
                out.extend_from_slice(&(value as i16).to_le_bytes());
            }
        }
        T::Nullable(inner) => match v {
            // A null is the flag byte alone; every other arm refuses a null.
            Val::Null => out.push(1),
            _ => {
                out.push(0);
                encode(inner, v, buf, out)?;
            }
        },
        T::LowCardinality(inner) => encode(inner, v, buf, out)?,
        T::Array(inner) => match v {
            Val::Array(n, start) => {
                write_varint(out, n as u64);
                let mut r = Reader { buf, pos: start };
                for i in 0..n {
                    let e = read_val(&mut r).map_err(|e| e.to_string())?;
                    encode(inner, e, buf, out).map_err(|e| format!("element {i}: {e}"))?;
                }
            }
            _ => return mismatch(),
        },
    }
    Ok(())
}

fn parse_date(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (n(0..4)?, n(5..7)?, n(8..10)?);
    if !(1..=12).contains(&m) || !(1..=days_in_month(y, m)).contains(&d) {
        return None;
    }
    Some(days_from_civil(y, m, d))
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a civil date.
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `YYYY-MM-DD hh:mm:ss`, or RFC 3339 (`T`, optional fraction, `Z` or offset), as UTC seconds.
fn parse_datetime(s: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp())
        .ok()
        .or_else(|| chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S").ok().map(|t| t.and_utc().timestamp()))
}

fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    uuid::Uuid::try_parse(s).ok().map(|u| *u.as_bytes())
}

/// An exact decimal text (`-12.345`) scaled by 10^scale; None if it has more fractional digits.
fn parse_decimal(s: &str, scale: u32) -> Option<i128> {
    let (neg, digits) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    if !int.bytes().all(|c| c.is_ascii_digit())
        || !frac.bytes().all(|c| c.is_ascii_digit())
        || frac.len() > scale as usize
        || int.len() > 38
    {
        return None;
    }
    let mut x: i128 = if int.is_empty() { 0 } else { int.parse().ok()? };
    x = x.checked_mul(10i128.pow(scale))?;
    if !frac.is_empty() {
        x += frac.parse::<i128>().ok()? * 10i128.pow(scale - frac.len() as u32);
    }
    Some(if neg { -x } else { x })
}

/// Checks and encodes a plugin call's packed rows. `events` is the batch size.
/// `entries`: by event, the value of the entry column (see `writer::dedup`) for tables that
/// have one; 0 where missing.
pub fn decode_rows(
    buf: &[u8],
    tables: &[TableSchema],
    events: usize,
    entries: &[u64],
    limits: OutputLimits,
) -> Result<DecodedRows, MalformedRows> {
    let mut out = DecodedRows {
        tables: vec![TableRows::default(); tables.len()],
        rejected: Vec::new(),
        rows_per_event: vec![0; events],
    };
    let mut r = Reader { buf, pos: 0 };
    // Where each table stood when the current event started, to drop a failed event's rows.
    let mark = |t: &TableRows| (t.data.len(), t.rows, t.events.len());
    let mut marks: Vec<(usize, usize, usize)> = out.tables.iter().map(mark).collect();
    let mut current: Option<u32> = None;
    let mut current_failed = false;
    let mut event_start = 0usize;
    while r.pos < buf.len() {
        let row_at = r.pos;
        let event = r.u32()?;
        let table = r.u16()? as usize;
        let values = r.u16()? as usize;
        if event as usize >= events {
            return Err(MalformedRows {
                offset: row_at,
                reason: format!("row for event {event}, but the batch has {events} events"),
            });
        }
        if table >= tables.len() {
            return Err(MalformedRows {
                offset: row_at,
                reason: format!("row for table index {table}, but the plugin declares {} tables", tables.len()),
            });
        }
        if current != Some(event) {
            if let Some(c) = current {
                if event < c {
                    return Err(MalformedRows {
                        offset: row_at,
                        reason: format!("rows of event {event} come after rows of event {c}"),
                    });
                }
            }
            current = Some(event);
            current_failed = false;
            event_start = row_at;
            marks = out.tables.iter().map(mark).collect();
        }
        let schema = &tables[table];
        let mut row_error = None;
        if values != schema.columns.len() {
            // The row is still self-delimiting (every value is tagged): skip it, fail its event.
            for _ in 0..values {
                skip_val(&mut r)?;
            }
            if !current_failed {
                row_error = Some(format!(
                    "table `{}`: the row has {values} values, the table has {} columns",
                    schema.name,
                    schema.columns.len()
                ));
            }
        } else {
            let dst = &mut out.tables[table].data;
            for col in &schema.columns {
                let v = read_val(&mut r)?;
                if current_failed || row_error.is_some() {
                    continue;
                }
                if let Err(e) = encode(&col.ty, v, buf, dst) {
                    row_error = Some(format!("table `{}`, column `{}`: {e}", schema.name, col.name));
                }
            }
            if schema.entry_column && !current_failed && row_error.is_none() {
                dst.extend_from_slice(&entries.get(event as usize).copied().unwrap_or(0).to_le_bytes());
            }
        }
        if current_failed {
            continue;
        }
        let n = &mut out.rows_per_event[event as usize];
        *n += 1;
        let limit_error = if *n > limits.max_rows_per_event {
            Some(format!(
                "event produced more than {} rows (the plugin's max_rows_per_event)",
                limits.max_rows_per_event
            ))
        } else if r.pos - event_start > limits.max_bytes_per_event {
            Some(format!(
                "event produced more than {} bytes of rows (the plugin's max_bytes_per_event)",
                limits.max_bytes_per_event
            ))
        } else {
            None
        };
        match row_error.or(limit_error) {
            Some(reason) => {
                for (t, (len, rows, events)) in out.tables.iter_mut().zip(&marks) {
                    t.data.truncate(*len);
                    t.rows = *rows;
                    t.events.truncate(*events);
                }
                out.rejected.push((event, reason));
                current_failed = true;
            }
            None => {
                let t = &mut out.tables[table];
                t.rows += 1;
                match t.events.last_mut() {
                    Some((e, end, n)) if *e == event => {
                        *end = t.data.len();
                        *n += 1;
                    }
                    _ => t.events.push((event, t.data.len(), 1)),
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::wit;

    fn schema(cols: &[(&str, &str)]) -> TableSchema {
        crate::writer::schema::test_table(cols, wit::Engine::MergeTree, None, &[cols[0].0])
    }

    struct W(Vec<u8>);
    impl W {
        fn row(&mut self, event: u32, table: u16, values: u16) -> &mut Self {
            self.0.extend_from_slice(&event.to_le_bytes());
            self.0.extend_from_slice(&table.to_le_bytes());
            self.0.extend_from_slice(&values.to_le_bytes());
            self
        }
        fn int(&mut self, v: i64) -> &mut Self {
            self.0.push(TAG_INT);
            self.0.extend_from_slice(&v.to_le_bytes());
            self
        }
        fn uint(&mut self, v: u64) -> &mut Self {
            self.0.push(TAG_UINT);
            self.0.extend_from_slice(&v.to_le_bytes());
            self
        }
        fn float(&mut self, v: f64) -> &mut Self {
            self.0.push(TAG_FLOAT);
            self.0.extend_from_slice(&v.to_le_bytes());
            self
        }
        fn str(&mut self, s: &str) -> &mut Self {
            self.0.push(TAG_STRING);
            self.0.extend_from_slice(&(s.len() as u32).to_le_bytes());
            self.0.extend_from_slice(s.as_bytes());
            self
        }
        fn null(&mut self) -> &mut Self {
            self.0.push(TAG_NULL);
            self
        }
    }

    #[test]
    fn encodes_rowbinary_and_rejects_only_the_bad_event() {
        let t = schema(&[("d", "Date"), ("s", "String"), ("n", "UInt8"), ("f", "Float64"), ("o", "Nullable(String)")]);
        let mut w = W(Vec::new());
        w.row(0, 0, 5).str("2024-06-01").str("a").uint(7).float(1.5).null();
        w.row(1, 0, 5).int(0).str("b").uint(300).float(2.0).str("x"); // 300 does not fit UInt8
        w.row(2, 0, 5).int(1).str("").int(255).int(3).str("y");
        let d = decode_rows(&w.0, &[t], 3, &[], OutputLimits::default()).unwrap();
        assert_eq!(d.tables[0].rows, 2);
        assert_eq!(d.rejected.len(), 1);
        assert_eq!(d.rejected[0].0, 1);
        assert!(d.rejected[0].1.contains("column `n`"), "{}", d.rejected[0].1);
        assert!(d.rejected[0].1.contains("out of range for UInt8"), "{}", d.rejected[0].1);
        let mut expect = Vec::new();
        expect.extend_from_slice(&19_875u16.to_le_bytes());
        expect.extend_from_slice(&[1, b'a', 7]);
        expect.extend_from_slice(&1.5f64.to_le_bytes());
        expect.push(1);
        expect.extend_from_slice(&1u16.to_le_bytes());
        expect.extend_from_slice(&[0, 255]);
        expect.extend_from_slice(&3f64.to_le_bytes());
        expect.extend_from_slice(&[0, 1, b'y']);
        assert_eq!(d.tables[0].data, expect);
        assert_eq!(d.tables[0].events, vec![(0, 14, 1), (2, expect.len(), 1)]);
    }

    #[test]
    fn wrong_types_and_nulls_are_named() {
        let t = schema(&[("s", "String"), ("f", "Float64")]);
        let mut w = W(Vec::new());
        w.row(0, 0, 2).int(5).float(1.0);
        w.row(1, 0, 2).str("x").null();
        w.row(2, 0, 2).str("x").str("1.0");
        let d = decode_rows(&w.0, &[t], 3, &[], OutputLimits::default()).unwrap();
        assert_eq!(d.tables[0].rows, 0);
        let msgs: Vec<&str> = d.rejected.iter().map(|(_, m)| m.as_str()).collect();
        assert_eq!(msgs[0], "table `t`, column `s`: expected String, got int 5");
        assert_eq!(msgs[1], "table `t`, column `f`: expected Float64, got null");
        assert_eq!(msgs[2], "table `t`, column `f`: expected Float64, got string \"1.0\"");
    }

    #[test]
    fn a_row_of_the_wrong_width_fails_only_its_event() {
        let t = schema(&[("s", "String"), ("n", "UInt32")]);
        let mut w = W(Vec::new());
        w.row(0, 0, 2).str("a").uint(1);
        w.row(1, 0, 1).str("short");
        w.row(2, 0, 3).str("long").uint(2).uint(3);
        w.row(3, 0, 2).str("b").uint(4);
        let d = decode_rows(&w.0, &[t], 4, &[], OutputLimits::default()).unwrap();
        assert_eq!(d.tables[0].rows, 2);
        let msgs: Vec<(u32, &str)> = d.rejected.iter().map(|(e, m)| (*e, m.as_str())).collect();
        assert_eq!(
            msgs,
            vec![
                (1, "table `t`: the row has 1 values, the table has 2 columns"),
                (2, "table `t`: the row has 3 values, the table has 2 columns")
            ]
        );
    }

    #[test]
    fn a_failed_event_drops_its_earlier_rows_in_every_table() {
        let a = schema(&[("s", "String")]);
        let mut b = a.clone();
        b.name = "u".into();
        let mut w = W(Vec::new());
        w.row(0, 0, 1).str("ok");
        w.row(1, 0, 1).str("dropped");
        w.row(1, 1, 1).int(1); // wrong type: event 1 fails, its row in table 0 goes too
        w.row(2, 1, 1).str("ok");
        let d = decode_rows(&w.0, &[a, b], 3, &[], OutputLimits::default()).unwrap();
        assert_eq!((d.tables[0].rows, d.tables[1].rows), (1, 1));
        assert_eq!(d.tables[0].data, vec![2, b'o', b'k']);
        // Event boundaries: event 1's row in table 0 is gone with it.
        assert_eq!((d.tables[0].events.clone(), d.tables[1].events.clone()), (vec![(0, 3, 1)], vec![(2, 3, 1)]));
        assert_eq!(d.rejected.iter().map(|r| r.0).collect::<Vec<_>>(), vec![1]);
    }

    #[test]
    fn malformed_buffers_fail_the_call() {
        let t = schema(&[("s", "String")]);
        let mut w = W(Vec::new());
        w.row(0, 0, 1).str("x");
        let mut truncated = w.0.clone();
        truncated.pop();
        assert!(decode_rows(&truncated, std::slice::from_ref(&t), 1, &[], OutputLimits::default()).is_err());
        assert!(
            decode_rows(&w.0, std::slice::from_ref(&t), 0, &[], OutputLimits::default())
                .unwrap_err()
                .reason
                .contains("batch has 0 events")
        );
        let mut w2 = W(Vec::new());
        w2.row(0, 3, 1).str("x");
        assert!(
            decode_rows(&w2.0, std::slice::from_ref(&t), 1, &[], OutputLimits::default())
                .unwrap_err()
                .reason
                .contains("table index 3")
        );
        let mut w3 = W(Vec::new());
        w3.row(1, 0, 1).str("x").row(0, 0, 1).str("y");
        assert!(decode_rows(&w3.0, &[t], 2, &[], OutputLimits::default()).unwrap_err().reason.contains("come after"));
    }

    #[test]
    fn entry_column_follows_each_row_and_rows_can_be_dropped_by_event() {
        let mut t = schema(&[("n", "UInt8")]);
        t.entry_column = true;
        let mut w = W(Vec::new());
        w.row(0, 0, 1).uint(1);
        w.row(0, 0, 1).uint(2);
        w.row(1, 0, 1).uint(3);
        w.row(2, 0, 1).uint(4);
        let d = decode_rows(&w.0, &[t], 3, &[10, 20, 30], OutputLimits::default()).unwrap();
        let row = |n: u8, entry: u64| [vec![n], entry.to_le_bytes().to_vec()].concat();
        let all = [row(1, 10), row(2, 10), row(3, 20), row(4, 30)].concat();
        assert_eq!(d.tables[0].data, all);
        assert_eq!(d.tables[0].events, vec![(0, 18, 2), (1, 27, 1), (2, 36, 1)]);
        let kept = d.tables[0].clone().without(|e| e == 1);
        assert_eq!(kept.data, [row(1, 10), row(2, 10), row(4, 30)].concat());
        assert_eq!((kept.rows, kept.events), (3, vec![(0, 18, 2), (2, 27, 1)]));
    }

    #[test]
    fn row_limit_per_event() {
        let t = schema(&[("s", "String")]);
        let mut w = W(Vec::new());
        for _ in 0..3 {
            w.row(0, 0, 1).str("x");
        }
        w.row(1, 0, 1).str("y");
        let d = decode_rows(&w.0, &[t], 2, &[], OutputLimits { max_rows_per_event: 2, max_bytes_per_event: 1 << 20 })
            .unwrap();
        assert_eq!(d.tables[0].rows, 1);
        assert!(d.rejected[0].1.contains("more than 2 rows"));
    }

    #[test]
    fn decimal_uuid_enum_array() {
        let t =
            schema(&[("d", "Decimal(9, 2)"), ("u", "UUID"), ("e", "Enum8('a' = 1, 'b' = 2)"), ("a", "Array(UInt16)")]);
        let mut w = W(Vec::new());
        w.row(0, 0, 4).str("-12.3").str("00112233-4455-6677-8899-aabbccddeeff").str("b");
        w.0.push(TAG_ARRAY);
        w.0.extend_from_slice(&2u32.to_le_bytes());
        w.uint(1).uint(65535);
        let d = decode_rows(&w.0, &[t], 1, &[], OutputLimits::default()).unwrap();
        assert!(d.rejected.is_empty(), "{:?}", d.rejected);
        let mut expect = Vec::new();
        expect.extend_from_slice(&(-1230i32).to_le_bytes());
        expect.extend_from_slice(&0x0011223344556677u64.to_le_bytes());
        expect.extend_from_slice(&0x8899aabbccddeeffu64.to_le_bytes());
        expect.push(2);
        expect.push(2);
        expect.extend_from_slice(&1u16.to_le_bytes());
        expect.extend_from_slice(&65535u16.to_le_bytes());
        assert_eq!(d.tables[0].data, expect);
        assert_eq!(parse_decimal("1.234", 2), None);
        assert_eq!(parse_decimal(".5", 2), Some(50));
    }
}

/// Decodes RowBinary rows of `schema` back into JSON objects (for `sluice plugin run` and
/// fixtures): what a row will look like in ClickHouse.
pub fn rowbinary_to_json(
    data: &[u8],
    schema: &TableSchema,
) -> Result<Vec<serde_json::Map<String, serde_json::Value>>, String> {
    let mut pos = 0usize;
    let mut rows = Vec::new();
    while pos < data.len() {
        let mut row = serde_json::Map::new();
        for c in &schema.columns {
            row.insert(c.name.clone(), rb_value(&c.ty, data, &mut pos)?);
        }
        rows.push(row);
    }
    Ok(rows)
}

fn rb_take<'a>(data: &'a [u8], pos: &mut usize, n: usize) -> Result<&'a [u8], String> {
    let s = data.get(*pos..*pos + n).ok_or("truncated RowBinary")?;
    *pos += n;
    Ok(s)
}

fn rb_varint(data: &[u8], pos: &mut usize) -> Result<u64, String> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = rb_take(data, pos, 1)?[0];
        v |= ((b & 0x7f) as u64) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("bad varint".into())
}

fn rb_value(ty: &ColumnType, data: &[u8], pos: &mut usize) -> Result<serde_json::Value, String> {
    use ColumnType as T;
    use serde_json::{Value as J, json};
    macro_rules! num {
        ($t:ty) => {{
            let b = rb_take(data, pos, std::mem::size_of::<$t>())?;
            <$t>::from_le_bytes(b.try_into().unwrap())
        }};
    }
    let fmt_scaled = |v: i128, scale: u32| -> String {
        if scale == 0 {
            return v.to_string();
        }
        let p = 10i128.pow(scale);
        let sign = if v < 0 { "-" } else { "" };
        format!("{sign}{}.{:0width$}", (v / p).unsigned_abs(), (v % p).unsigned_abs(), width = scale as usize)
    };
    Ok(match ty {
        T::UInt8 => json!(num!(u8)),
        T::UInt16 => json!(num!(u16)),
        T::UInt32 => json!(num!(u32)),
        // 64-bit integers as ClickHouse's JSON formats print them by default: quoted.
        T::UInt64 => J::String(num!(u64).to_string()),
        T::Int8 => json!(num!(i8)),
        T::Int16 => json!(num!(i16)),
        T::Int32 => json!(num!(i32)),
        T::Int64 => J::String(num!(i64).to_string()),
        T::Float32 => json_float(num!(f32) as f64),
        T::Float64 => json_float(num!(f64)),
        T::String => {
            let n = rb_varint(data, pos)? as usize;
            J::String(String::from_utf8_lossy(rb_take(data, pos, n)?).into_owned())
        }
        T::FixedString(n) => J::String(String::from_utf8_lossy(rb_take(data, pos, *n)?).into_owned()),
        T::Date => {
            let d = num!(u16) as i64;
            J::String(chrono::DateTime::from_timestamp(d * 86_400, 0).unwrap().format("%Y-%m-%d").to_string())
        }
        T::DateTime => {
            let s = num!(u32) as i64;
            J::String(chrono::DateTime::from_timestamp(s, 0).unwrap().format("%Y-%m-%d %H:%M:%S").to_string())
        }
        T::Uuid => {
            let hi = num!(u64);
            let lo = num!(u64);
            J::String(uuid::Uuid::from_u64_pair(hi, lo).to_string())
        }
        T::Decimal { precision, scale } => {
            let v: i128 = match precision {
                1..=9 => num!(i32) as i128,
                10..=18 => num!(i64) as i128,
                _ => num!(i128),
            };
            J::String(fmt_scaled(v, *scale))
        }
        T::Enum8(items) | T::Enum16(items) => {
            let v = if matches!(ty, T::Enum8(_)) { num!(i8) as i64 } else { num!(i16) as i64 };
            J::String(items.iter().find(|(_, x)| *x == v).map(|(n, _)| n.clone()).unwrap_or_else(|| v.to_string()))
        }
        T::Nullable(inner) => {
            if rb_take(data, pos, 1)?[0] == 1 {
                J::Null
            } else {
                rb_value(inner, data, pos)?
            }
        }
        T::LowCardinality(inner) => rb_value(inner, data, pos)?,
        T::Array(inner) => {
            let n = rb_varint(data, pos)?;
            let mut v = Vec::with_capacity(n.min(1024) as usize);
            for _ in 0..n {
                v.push(rb_value(inner, data, pos)?);
            }
            J::Array(v)
        }
    })
}

/// JSON has no NaN or infinities: print them as ClickHouse does, as strings.
fn json_float(f: f64) -> serde_json::Value {
    if f.is_finite() {
        serde_json::json!(f)
    } else if f.is_nan() {
        serde_json::Value::String("nan".into())
    } else if f > 0.0 {
        serde_json::Value::String("inf".into())
    } else {
        serde_json::Value::String("-inf".into())
    }
}
