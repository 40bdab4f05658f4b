//! Dates and times as ClickHouse stores them, and the RFC 3339 parsing event payloads need.

use crate::Failure;

/// A calendar date: days since 1970-01-01 (a ClickHouse `Date`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Date(i32);

/// A point in time with second precision: seconds since the epoch (a ClickHouse `DateTime`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct DateTime(i64);

/// A point in time with nanosecond precision: nanoseconds since the epoch (a ClickHouse
/// `DateTime64(p)` of any precision; written into a `DateTime` column it keeps its seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp(i128);

impl Timestamp {
    pub fn from_nanos(ns: i128) -> Self {
        Timestamp(ns)
    }
    pub fn from_micros(us: i64) -> Self {
        Timestamp(us as i128 * 1_000)
    }
    pub fn from_millis(ms: i64) -> Self {
        Timestamp(ms as i128 * 1_000_000)
    }
    pub fn from_seconds(s: i64) -> Self {
        Timestamp(s as i128 * 1_000_000_000)
    }
    /// Parses an RFC 3339 / ISO 8601 timestamp, keeping up to nine fractional digits
    /// (`2024-06-01T12:30:00.123456Z`). A missing offset means UTC.
    pub fn parse(text: &str) -> Result<Self, Failure> {
        parse_rfc3339_nanos(text).map(Timestamp)
    }
    pub fn nanos(&self) -> i128 {
        self.0
    }
    /// Ticks of 10^-precision seconds (what a `DateTime64(precision)` column stores), rounded
    /// toward the past.
    pub fn ticks(&self, precision: u32) -> i128 {
        self.0.div_euclid(10i128.pow(9 - precision.min(9)))
    }
    /// Whole seconds, rounded toward the past.
    pub fn seconds(&self) -> i64 {
        self.0.div_euclid(1_000_000_000) as i64
    }
    /// The UTC calendar date of this instant.
    pub fn date(&self) -> Date {
        Date(self.seconds().div_euclid(86_400) as i32)
    }
    /// RFC 3339 in UTC with nine fractional digits, e.g. `2024-06-01T12:30:00.123456789Z`.
    pub fn to_rfc3339(&self) -> String {
        let secs = self.seconds();
        let nanos = self.0.rem_euclid(1_000_000_000);
        let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
        let t = secs.rem_euclid(86_400);
        format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z", t / 3600, t / 60 % 60, t % 60)
    }
}

impl From<DateTime> for Timestamp {
    fn from(t: DateTime) -> Self {
        Timestamp::from_seconds(t.0)
    }
}

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

/// The civil date (y, m, d) of a day number (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + (m <= 2) as i64, m, d)
}

/// Parses an RFC 3339 timestamp into milliseconds since the epoch (fractions beyond
/// milliseconds are dropped).
pub fn parse_rfc3339_millis(text: &str) -> Result<i64, Failure> {
    parse_rfc3339_nanos(text).map(|ns| ns.div_euclid(1_000_000) as i64)
}

/// Parses an RFC 3339 timestamp into nanoseconds since the epoch.
pub fn parse_rfc3339_nanos(text: &str) -> Result<i128, Failure> {
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
    let mut ns = days_from_civil(y, mo, d) as i128 * 86_400_000_000_000;
    if b.len() == 10 {
        return Ok(ns);
    }
    if !(b[10] == b'T' || b[10] == b't' || b[10] == b' ') || b.len() < 19 || b[13] != b':' || b[16] != b':' {
        return Err(bad());
    }
    let (h, mi, s) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    if h > 23 || mi > 59 || s > 60 {
        return Err(bad());
    }
    ns += (h * 3600 + mi * 60 + s) as i128 * 1_000_000_000;
    let mut i = 19;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        let mut frac = 0i128;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 9 {
                frac = frac * 10 + (b[i] - b'0') as i128;
            }
            i += 1;
        }
        if i == start {
            return Err(bad());
        }
        for _ in (i - start).min(9)..9 {
            frac *= 10;
        }
        ns += frac;
    }
    match b.get(i) {
        None => Ok(ns),
        Some(b'Z') | Some(b'z') if i + 1 == b.len() => Ok(ns),
        Some(sign @ (b'+' | b'-')) if b.len() == i + 6 && b[i + 3] == b':' => {
            let off = (num(i + 1, 2)? * 60 + num(i + 4, 2)?) as i128 * 60_000_000_000;
            Ok(if *sign == b'+' { ns - off } else { ns + off })
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
    fn timestamps_keep_nanoseconds() {
        let t = Timestamp::parse("2024-06-01T12:30:00.123456789Z").unwrap();
        assert_eq!(t.nanos(), 1_717_245_000_123_456_789);
        assert_eq!(t.ticks(3), 1_717_245_000_123);
        assert_eq!(t.ticks(6), 1_717_245_000_123_456);
        assert_eq!(t.seconds(), 1_717_245_000);
        assert_eq!(t.to_rfc3339(), "2024-06-01T12:30:00.123456789Z");
        let before = Timestamp::parse("1969-12-31T23:59:59.5Z").unwrap();
        assert_eq!((before.seconds(), before.ticks(1)), (-1, -5));
        assert_eq!(before.to_rfc3339(), "1969-12-31T23:59:59.500000000Z");
        assert_eq!(Timestamp::parse("1900-01-01T00:00:00Z").unwrap().to_rfc3339(), "1900-01-01T00:00:00.000000000Z");
    }

    #[test]
    fn dates() {
        assert_eq!(Date::from_ymd(1970, 1, 1).days(), 0);
        assert_eq!(Date::from_ymd(2024, 6, 1).days(), 19_875);
        assert_eq!(DateTime::from_millis(1_717_245_000_123).date(), Date::from_ymd(2024, 6, 1));
    }
}
