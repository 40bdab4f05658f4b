//! RowBinary rows back into JSON objects (for `sluice plugin run` and fixtures): what a row
//! will look like in ClickHouse, spelled as ClickHouse's JSON formats spell it (64-bit and
//! wider integers and decimals quoted, dates and times as text in the column's zone, maps as
//! objects, named tuples as objects). The walk follows the column's type (bounded depth).

use serde_json::{Value as J, json};

use super::text::Wide;
use crate::schema::{ColumnType, TableSchema};

/// Decodes the RowBinary rows of `schema` into JSON objects.
pub fn rowbinary_to_json(data: &[u8], schema: &TableSchema) -> Result<Vec<serde_json::Map<String, J>>, String> {
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

/// `secs` (and `nanos`) as `YYYY-MM-DD hh:mm:ss[.fraction]` in `tz` (UTC without one).
fn time_text(secs: i64, nanos: u32, digits: u32, tz: Option<&crate::schema::TimeZone>) -> String {
    let Some(utc) = chrono::DateTime::from_timestamp(secs, nanos) else { return secs.to_string() };
    let base = match tz {
        Some(tz) => utc.with_timezone(&tz.tz).format("%Y-%m-%d %H:%M:%S").to_string(),
        None => utc.format("%Y-%m-%d %H:%M:%S").to_string(),
    };
    if digits == 0 {
        return base;
    }
    let frac = format!("{nanos:09}");
    format!("{base}.{}", &frac[..digits as usize])
}

fn rb_value(ty: &ColumnType, data: &[u8], pos: &mut usize) -> Result<J, String> {
    use ColumnType as T;
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
        // 64-bit and wider integers as ClickHouse's JSON formats print them by default: quoted.
        T::UInt64 => J::String(num!(u64).to_string()),
        T::Int8 => json!(num!(i8)),
        T::Int16 => json!(num!(i16)),
        T::Int32 => json!(num!(i32)),
        T::Int64 => J::String(num!(i64).to_string()),
        T::UInt128 => J::String(Wide::from_le(rb_take(data, pos, 16)?, false).to_string()),
        T::Int128 => J::String(Wide::from_le(rb_take(data, pos, 16)?, true).to_string()),
        T::UInt256 => J::String(Wide::from_le(rb_take(data, pos, 32)?, false).to_string()),
        T::Int256 => J::String(Wide::from_le(rb_take(data, pos, 32)?, true).to_string()),
        T::Float32 => json_float(num!(f32) as f64),
        T::Float64 => json_float(num!(f64)),
        T::Bool => J::Bool(num!(u8) != 0),
        T::String => {
            let n = rb_varint(data, pos)? as usize;
            J::String(String::from_utf8_lossy(rb_take(data, pos, n)?).into_owned())
        }
        T::Json => {
            let n = rb_varint(data, pos)? as usize;
            serde_json::from_slice(rb_take(data, pos, n)?).map_err(|e| format!("JSON column: {e}"))?
        }
        T::FixedString(n) => J::String(String::from_utf8_lossy(rb_take(data, pos, *n)?).into_owned()),
        T::Date => J::String(date_text(num!(u16) as i64)),
        T::Date32 => J::String(date_text(num!(i32) as i64)),
        T::DateTime(tz) => J::String(time_text(num!(u32) as i64, 0, 0, tz.as_ref())),
        T::DateTime64 { precision, tz } => {
            let ticks = num!(i64);
            let unit = 10i64.pow(*precision);
            let (secs, frac) = (ticks.div_euclid(unit), ticks.rem_euclid(unit));
            let nanos = (frac * 10i64.pow(9 - precision)) as u32;
            J::String(time_text(secs, nanos, *precision, tz.as_ref()))
        }
        T::Uuid => {
            let hi = num!(u64);
            let lo = num!(u64);
            J::String(uuid::Uuid::from_u64_pair(hi, lo).to_string())
        }
        T::IPv4 => J::String(std::net::Ipv4Addr::from(num!(u32)).to_string()),
        T::IPv6 => {
            let b: [u8; 16] = rb_take(data, pos, 16)?.try_into().unwrap();
            J::String(std::net::Ipv6Addr::from(b).to_string())
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
        T::Map(k, val) => {
            let n = rb_varint(data, pos)?;
            let mut m = serde_json::Map::new();
            for _ in 0..n {
                let key = match rb_value(k, data, pos)? {
                    J::String(s) => s,
                    other => other.to_string(),
                };
                m.insert(key, rb_value(val, data, pos)?);
            }
            J::Object(m)
        }
        T::Tuple(items) => {
            if items.iter().all(|(n, _)| n.is_some()) {
                let mut m = serde_json::Map::new();
                for (name, t) in items {
                    m.insert(name.clone().unwrap_or_default(), rb_value(t, data, pos)?);
                }
                J::Object(m)
            } else {
                let mut v = Vec::with_capacity(items.len());
                for (_, t) in items {
                    v.push(rb_value(t, data, pos)?);
                }
                J::Array(v)
            }
        }
    })
}

fn date_text(days: i64) -> String {
    match chrono::DateTime::from_timestamp(days * 86_400, 0) {
        Some(t) => t.format("%Y-%m-%d").to_string(),
        None => days.to_string(),
    }
}

/// JSON has no NaN or infinities: print them as ClickHouse does, as strings.
fn json_float(f: f64) -> J {
    if f.is_finite() {
        json!(f)
    } else if f.is_nan() {
        J::String("nan".into())
    } else if f > 0.0 {
        J::String("inf".into())
    } else {
        J::String("-inf".into())
    }
}
