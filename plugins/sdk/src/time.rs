//! Dates and times as ClickHouse stores them, and the RFC 3339 parsing event payloads need.

use crate::Failure;

/// A calendar date: days since 1970-01-01 (a ClickHouse `Date`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Date(i32);

/// A point in time with second precision: seconds since the epoch (a ClickHouse `DateTime`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct DateTime(i64);

impl Date {
    pub fn from_days(days: i32) -> Self {
        Date(days)
    }
    pub fn days(&self) -> i32 {
        self.0
    }
    /// The date of `y-m-d` in the proleptic Gregorian calendar.
    pub fn from_ymd(y: i32, m: u32, d: u32) -> Self {
        Date(days_from_civil(y as i64, m as i64, d as i64) as i32)
    }
}

impl DateTime {
    pub fn from_seconds(s: i64) -> Self {
        DateTime(s)
    }
    /// From milliseconds since the epoch (e.g. `Event::timestamp_ms`), truncated to seconds.
    pub fn from_millis(ms: i64) -> Self {
        DateTime(ms.div_euclid(1000))
    }
    /// Parses an RFC 3339 / ISO 8601 timestamp such as `2024-06-01T12:30:00.123Z` or
    /// `2024-06-01T12:30:00+03:00` (what JavaScript's `Date.toJSON` and Python's
    /// `isoformat` write). A missing offset means UTC.
    pub fn parse(text: &str) -> Result<Self, Failure> {
        parse_rfc3339_millis(text).map(Self::from_millis)
    }
    pub fn seconds(&self) -> i64 {
        self.0
    }
    /// The UTC calendar date of this instant.
    pub fn date(&self) -> Date {
        Date(self.0.div_euclid(86_400) as i32)
    }
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses an RFC 3339 timestamp into milliseconds since the epoch.
pub fn parse_rfc3339_millis(text: &str) -> Result<i64, Failure> {
    let bad = || Failure::permanent(format!("invalid timestamp `{text}`: expected RFC 3339 like 2024-06-01T12:30:00Z"));
    let b = text.as_bytes();
    let num = |from: usize, len: usize| -> Result<i64, Failure> {
        let s = b.get(from..from + len).ok_or_else(bad)?;
        if !s.iter().all(u8::is_ascii_digit) {
            return Err(bad());
        }
        Ok(s.iter().fold(0i64, |a, c| a * 10 + (c - b'0') as i64))
    };
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return Err(bad());
    }
    let (y, mo, d) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) {
        return Err(bad());
    }
    let mut ms = days_from_civil(y, mo, d) * 86_400_000;
    if b.len() == 10 {
        return Ok(ms);
    }
    if !(b[10] == b'T' || b[10] == b't' || b[10] == b' ') || b.len() < 19 || b[13] != b':' || b[16] != b':' {
        return Err(bad());
    }
    let (h, mi, s) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    if h > 23 || mi > 59 || s > 60 {
        return Err(bad());
    }
    ms += (h * 3600 + mi * 60 + s) * 1000;
    let mut i = 19;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        let mut frac = 0i64;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 3 {
                frac = frac * 10 + (b[i] - b'0') as i64;
            }
            i += 1;
        }
        if i == start {
            return Err(bad());
        }
        for _ in (i - start)..3 {
            frac *= 10;
        }
        ms += frac;
    }
    match b.get(i) {
        None => Ok(ms),
        Some(b'Z') | Some(b'z') if i + 1 == b.len() => Ok(ms),
        Some(sign @ (b'+' | b'-')) if b.len() == i + 6 && b[i + 3] == b':' => {
            let off = (num(i + 1, 2)? * 60 + num(i + 4, 2)?) * 60_000;
            Ok(if *sign == b'+' { ms - off } else { ms + off })
        }
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_forms() {
        assert_eq!(parse_rfc3339_millis("1970-01-01T00:00:00Z").unwrap(), 0);
        assert_eq!(parse_rfc3339_millis("2024-06-01T12:30:00.123Z").unwrap(), 1_717_245_000_123);
        assert_eq!(parse_rfc3339_millis("2024-06-01T15:30:00+03:00").unwrap(), 1_717_245_000_000);
        assert_eq!(parse_rfc3339_millis("2024-06-01").unwrap(), 1_717_200_000_000);
        assert_eq!(parse_rfc3339_millis("2024-06-01T12:30:00.5").unwrap(), 1_717_245_000_500);
        assert!(parse_rfc3339_millis("yesterday").is_err());
        assert!(parse_rfc3339_millis("2024-13-01T00:00:00Z").is_err());
    }

    #[test]
    fn dates() {
        assert_eq!(Date::from_ymd(1970, 1, 1).days(), 0);
        assert_eq!(Date::from_ymd(2024, 6, 1).days(), 19_875);
        assert_eq!(DateTime::from_millis(1_717_245_000_123).date(), Date::from_ymd(2024, 6, 1));
    }
}
