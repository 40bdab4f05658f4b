//! What a value must be to fit a column, and its RowBinary encoding.
//!
//! Each value is checked against its column's type before it is encoded: the server checks
//! nothing about RowBinary (an i64 sent into a Float64 column is stored as garbage). The walk
//! follows the column's type, whose depth is bounded ([`MAX_TYPE_DEPTH`]), never the value's.
//!
//! [`MAX_TYPE_DEPTH`]: crate::schema::MAX_TYPE_DEPTH

use super::packed::{Reader, Val, read_val};
use super::text::{self, DecimalError, Wide};
use crate::schema::ColumnType;

/// DateTime64's range: 1900-01-01 00:00:00 to 2299-12-31 23:59:59 (seconds since the epoch).
const DT64_MIN_SECS: i64 = -2_208_988_800;
const DT64_MAX_SECS: i64 = 10_413_791_999;
/// Date32's range in days since the epoch: 1900-01-01 to 2299-12-31.
const DATE32_MIN: i64 = -25_567;
const DATE32_MAX: i64 = 120_529;

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

/// The elements of an array value, read from the whole row buffer `buf`.
fn elements<'a>(buf: &'a [u8], n: u32, start: usize) -> impl Iterator<Item = Result<Val<'a>, String>> {
    let mut r = Reader { buf, pos: start };
    (0..n).map(move |_| read_val(&mut r).map_err(|e| e.to_string()))
}

/// Checks `v` against `ty` and appends its RowBinary encoding. `buf` is the whole row buffer
/// (array elements are read again from their start).
pub fn encode(ty: &ColumnType, v: Val<'_>, buf: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
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
        T::UInt128 | T::UInt256 | T::Int128 | T::Int256 => {
            // Integers beyond 64 bits come as decimal text; smaller ones as ints too.
            let wide = match v {
                Val::Int(i) => Wide::from_i128(i as i128),
                Val::UInt(u) => Wide::from_i128(u as i128),
                Val::Str(s) => Wide::parse(s).ok_or_else(|| format!("{} is not an integer", v.describe()))?,
                _ => return mismatch(),
            };
            let (bits, signed) = match ty {
                T::UInt128 => (128, false),
                T::UInt256 => (256, false),
                T::Int128 => (128, true),
                _ => (256, true),
            };
            let bytes = wide.to_le(bits, signed).ok_or_else(|| format!("{} is out of range for {ty}", v.describe()))?;
            out.extend_from_slice(&bytes);
        }
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
        T::Bool => match v {
            Val::Bool(b) => out.push(b as u8),
            Val::Int(0) | Val::UInt(0) => out.push(0),
            Val::Int(1) | Val::UInt(1) => out.push(1),
            _ => return Err(format!("expected Bool (a bool, or 0 or 1), got {}", v.describe())),
        },
        T::String | T::Json => {
            let b = match v {
                Val::Str(s) => s.as_bytes(),
                Val::Bytes(b) if matches!(ty, T::String) => b,
                _ => return mismatch(),
            };
            if matches!(ty, T::Json) {
                // serde_json stops at 128 levels of nesting: a deeper document is refused, not
                // a host stack overflow.
                match serde_json::from_slice::<serde_json::Value>(b) {
                    Ok(serde_json::Value::Object(_)) => {}
                    Ok(_) => return Err(format!("{} is not a JSON object", v.describe())),
                    Err(e) => return Err(format!("{} is not JSON: {e}", v.describe())),
                }
            }
            write_varint(out, b.len() as u64);
            out.extend_from_slice(b);
        }
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
                Val::Str(s) => text::parse_day(s)
                    .ok_or_else(|| format!("{} is not a date (YYYY-MM-DD, or an RFC 3339 time)", v.describe()))?,
                _ => int_range(0, u16::MAX as i128).map_err(|_| {
                    format!("{} is not a day number in 0..=65535 (1970-01-01..2149-06-06)", v.describe())
                })? as i64,
            };
            if !(0..=u16::MAX as i64).contains(&days) {
                return Err(format!("{} is outside Date's range 1970-01-01..2149-06-06", v.describe()));
            }
            out.extend_from_slice(&(days as u16).to_le_bytes());
        }
        T::Date32 => {
            let days = match v {
                Val::Str(s) => text::parse_day(s)
                    .ok_or_else(|| format!("{} is not a date (YYYY-MM-DD, or an RFC 3339 time)", v.describe()))?,
                _ => int_range(DATE32_MIN as i128, DATE32_MAX as i128)? as i64,
            };
            if !(DATE32_MIN..=DATE32_MAX).contains(&days) {
                return Err(format!("{} is outside Date32's range 1900-01-01..2299-12-31", v.describe()));
            }
            out.extend_from_slice(&(days as i32).to_le_bytes());
        }
        T::DateTime(tz) => {
            let secs = match v {
                // A fraction of a second is dropped, as ClickHouse drops it.
                Val::Str(s) => {
                    text::parse_datetime(s, tz.as_ref().map(|t| &t.tz))
                        .map_err(|e| format!("{} {e}", v.describe()))?
                        .secs
                }
                _ => int_range(0, u32::MAX as i128)
                    .map_err(|_| format!("{} is outside DateTime's range (0..=4294967295 seconds)", v.describe()))?
                    as i64,
            };
            if !(0..=u32::MAX as i64).contains(&secs) {
                return Err(format!("{} is outside DateTime's range 1970..2106", v.describe()));
            }
            out.extend_from_slice(&(secs as u32).to_le_bytes());
        }
        T::DateTime64 { precision, tz } => {
            let unit = 10i64.pow(*precision);
            let ticks: i128 = match v {
                // Digits beyond the precision are dropped (toward the past), as ClickHouse does.
                Val::Str(s) => {
                    let t = text::parse_datetime(s, tz.as_ref().map(|t| &t.tz))
                        .map_err(|e| format!("{} {e}", v.describe()))?;
                    t.secs as i128 * unit as i128 + (t.nanos as i128) / 10i128.pow(9 - precision)
                }
                // An integer counts ticks of the column's precision, as in ClickHouse.
                Val::Int(i) => i as i128,
                Val::UInt(u) => u as i128,
                // A float counts seconds.
                Val::Float(f) => text::float_to_decimal(f, *precision)
                    .map_err(|_| format!("{} is not a time in seconds that {ty} can hold", v.describe()))?,
                _ => return mismatch(),
            };
            let (lo, hi) = (DT64_MIN_SECS as i128 * unit as i128, (DT64_MAX_SECS as i128 + 1) * unit as i128 - 1);
            if ticks < lo || ticks > hi {
                return Err(format!(
                    "{} is outside {ty}'s range 1900-01-01 00:00:00..2299-12-31 23:59:59",
                    v.describe()
                ));
            }
            out.extend_from_slice(&(ticks as i64).to_le_bytes());
        }
        T::Uuid => {
            let raw: [u8; 16] = match v {
                Val::Str(s) => {
                    *uuid::Uuid::try_parse(s).map_err(|_| format!("{} is not a UUID", v.describe()))?.as_bytes()
                }
                Val::Bytes(b) if b.len() == 16 => b.try_into().unwrap(),
                _ => return mismatch(),
            };
            // RowBinary UUID: the high 64 bits, then the low 64 bits, each little-endian.
            let hi = u64::from_be_bytes(raw[..8].try_into().unwrap());
            let lo = u64::from_be_bytes(raw[8..].try_into().unwrap());
            out.extend_from_slice(&hi.to_le_bytes());
            out.extend_from_slice(&lo.to_le_bytes());
        }
        T::IPv4 => {
            let n: u32 = match v {
                Val::Str(s) => u32::from(
                    s.parse::<std::net::Ipv4Addr>().map_err(|_| format!("{} is not an IPv4 address", v.describe()))?,
                ),
                _ => int_range(0, u32::MAX as i128)? as u32,
            };
            out.extend_from_slice(&n.to_le_bytes());
        }
        T::IPv6 => {
            let octets: [u8; 16] = match v {
                // An IPv4 address is stored IPv4-mapped (::ffff:a.b.c.d), as ClickHouse does.
                Val::Str(s) => match s.parse::<std::net::IpAddr>() {
                    Ok(std::net::IpAddr::V6(a)) => a.octets(),
                    Ok(std::net::IpAddr::V4(a)) => a.to_ipv6_mapped().octets(),
                    Err(_) => return Err(format!("{} is not an IP address", v.describe())),
                },
                Val::Bytes(b) if b.len() == 16 => b.try_into().unwrap(),
                _ => return mismatch(),
            };
            // Network order, as ClickHouse keeps it.
            out.extend_from_slice(&octets);
        }
        T::Decimal { precision, scale } => {
            let scaled: i128 = match v {
                Val::Str(s) => text::parse_decimal(s, *scale).map_err(|e| match e {
                    DecimalError::NotANumber => format!("{} is not a decimal number", v.describe()),
                    DecimalError::FractionalDigits => {
                        format!("{} has more than {scale} fractional digits for {ty}", v.describe())
                    }
                    DecimalError::TooManyDigits => {
                        format!("{} has more than {precision} digits for {ty}", v.describe())
                    }
                })?,
                Val::Int(i) => (i as i128)
                    .checked_mul(10i128.pow(*scale))
                    .ok_or_else(|| format!("{} overflows {ty}", v.describe()))?,
                Val::UInt(u) => (u as i128)
                    .checked_mul(10i128.pow(*scale))
                    .ok_or_else(|| format!("{} overflows {ty}", v.describe()))?,
                Val::Float(f) => text::float_to_decimal(f, *scale).map_err(|e| match e {
                    DecimalError::TooManyDigits => {
                        format!("{} has more than {precision} digits for {ty}", v.describe())
                    }
                    _ => format!("{} is not a number {ty} can hold", v.describe()),
                })?,
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
                for (i, e) in elements(buf, n, start).enumerate() {
                    encode(inner, e?, buf, out).map_err(|e| format!("element {i}: {e}"))?;
                }
            }
            _ => return mismatch(),
        },
        T::Map(k, val) => match v {
            // An array of [key, value] pairs.
            Val::Array(n, start) => {
                write_varint(out, n as u64);
                for (i, pair) in elements(buf, n, start).enumerate() {
                    let pair = pair?;
                    let Val::Array(2, at) = pair else {
                        return Err(format!(
                            "entry {i}: expected a [key, value] pair for {ty}, got {}",
                            pair.describe()
                        ));
                    };
                    let mut kv = elements(buf, 2, at);
                    encode(k, kv.next().unwrap()?, buf, out).map_err(|e| format!("entry {i} key: {e}"))?;
                    encode(val, kv.next().unwrap()?, buf, out).map_err(|e| format!("entry {i} value: {e}"))?;
                }
            }
            _ => return Err(format!("expected {ty} as an array of [key, value] pairs, got {}", v.describe())),
        },
        T::Tuple(items) => match v {
            // An array of the elements, in order.
            Val::Array(n, start) if n as usize == items.len() => {
                for (i, ((name, t), e)) in items.iter().zip(elements(buf, n, start)).enumerate() {
                    let label = name.clone().unwrap_or_else(|| format!("element {}", i + 1));
                    encode(t, e?, buf, out).map_err(|e| format!("{label}: {e}"))?;
                }
            }
            _ => {
                return Err(format!("expected {ty} as an array of its {} elements, got {}", items.len(), v.describe()));
            }
        },
    }
    Ok(())
}
