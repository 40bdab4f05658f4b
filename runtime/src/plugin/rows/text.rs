//! Values written as text and what they mean to a column: dates, date-times (in a column's
//! time zone), exact decimals, integers wider than 64 bits.

use chrono::{NaiveDate, NaiveDateTime, TimeZone as _};

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

/// `YYYY-MM-DD` as days since 1970-01-01 (any range: the column checks its own).
pub fn parse_date(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (n(0..4)?, n(5..7)?, n(8..10)?);
    NaiveDate::from_ymd_opt(y as i32, m as u32, d as u32)?;
    Some(days_from_civil(y, m, d))
}

/// A date as days since 1970-01-01: `YYYY-MM-DD`, or the UTC date of an RFC 3339 time (what
/// the SDKs' `date()` of a parsed timestamp gives), so that a plugin can hand a timestamp
/// over as it arrived.
pub fn parse_day(s: &str) -> Option<i64> {
    parse_date(s).or_else(|| parse_datetime(s, None).ok().map(|t| t.secs.div_euclid(86_400)))
}

/// A point in time read from text: seconds since the epoch and nanoseconds after them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Instant {
    pub secs: i64,
    pub nanos: u32,
}

/// RFC 3339 (`2024-06-01T10:00:00.5+02:00`, `Z`), or a time without an offset
/// (`2024-06-01 10:00:00`, `T` also accepted, optional fraction) read in `tz` — the column's
/// zone, UTC when it has none — as ClickHouse reads it. A time a daylight-saving change skips
/// does not exist and is refused; one it repeats is the earlier of the two.
pub fn parse_datetime(s: &str, tz: Option<&chrono_tz::Tz>) -> Result<Instant, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(Instant::leap_second_after(t.timestamp(), t.timestamp_subsec_nanos()));
    }
    let naive = ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dt%H:%M:%S%.f"]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
        // A date alone is its midnight, as in the SDKs.
        .or_else(|| parse_date(s).and_then(|_| NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()?.and_hms_opt(0, 0, 0)))
        .ok_or_else(|| "is not a date-time (YYYY-MM-DD hh:mm:ss[.fff] or RFC 3339)".to_string())?;
    let t = match tz {
        None => naive.and_utc(),
        Some(tz) => match tz.from_local_datetime(&naive) {
            chrono::LocalResult::Single(t) => t.to_utc(),
            chrono::LocalResult::Ambiguous(first, _) => first.to_utc(),
            chrono::LocalResult::None => {
                return Err(format!("does not exist in time zone {tz} (skipped by a daylight-saving change)"));
            }
        },
    };
    Ok(Instant::leap_second_after(t.timestamp(), t.timestamp_subsec_nanos()))
}

impl Instant {
    /// chrono keeps a leap second (`23:59:60`) as a second billion nanoseconds of 23:59:59;
    /// ClickHouse and the SDKs read it as the next second, 00:00:00.
    fn leap_second_after(secs: i64, nanos: u32) -> Instant {
        if nanos >= 1_000_000_000 {
            Instant { secs: secs + 1, nanos: nanos - 1_000_000_000 }
        } else {
            Instant { secs, nanos }
        }
    }
}

/// Why a value is not a decimal of a column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecimalError {
    NotANumber,
    /// More fractional digits than the scale keeps (none of them may be lost).
    FractionalDigits,
    /// More digits than the precision holds.
    TooManyDigits,
}

/// An exact decimal text (`-12.345`) scaled by 10^scale.
pub fn parse_decimal(s: &str, scale: u32) -> Result<i128, DecimalError> {
    let (neg, digits) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if (int.is_empty() && frac.is_empty())
        || !int.bytes().all(|c| c.is_ascii_digit())
        || !frac.bytes().all(|c| c.is_ascii_digit())
    {
        return Err(DecimalError::NotANumber);
    }
    // Trailing zeros of the fraction lose nothing.
    let frac = frac.trim_end_matches('0');
    if frac.len() > scale as usize {
        return Err(DecimalError::FractionalDigits);
    }
    let int = int.trim_start_matches('0');
    if int.len() + scale as usize > 38 {
        return Err(DecimalError::TooManyDigits);
    }
    let mut x: i128 = if int.is_empty() { 0 } else { int.parse().map_err(|_| DecimalError::TooManyDigits)? };
    x = x.checked_mul(10i128.pow(scale)).ok_or(DecimalError::TooManyDigits)?;
    if !frac.is_empty() {
        x += frac.parse::<i128>().map_err(|_| DecimalError::NotANumber)? * 10i128.pow(scale - frac.len() as u32);
    }
    Ok(if neg { -x } else { x })
}

/// A float as the decimal of `scale` fractional digits nearest to its exact binary value
/// (ties to even), computed in decimal rather than in float arithmetic.
pub fn float_to_decimal(f: f64, scale: u32) -> Result<i128, DecimalError> {
    if !f.is_finite() {
        return Err(DecimalError::NotANumber);
    }
    // Rust prints a float with a given number of digits exactly rounded from its binary value.
    parse_decimal(&format!("{f:.*}", scale as usize), scale)
}

/// An integer of up to 256 bits: sign and magnitude (little-endian 64-bit limbs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wide {
    pub negative: bool,
    pub magnitude: [u64; 4],
}

impl Wide {
    pub fn from_i128(v: i128) -> Wide {
        let m = v.unsigned_abs();
        Wide { negative: v < 0, magnitude: [m as u64, (m >> 64) as u64, 0, 0] }
    }

    /// A decimal integer text (`-123`); None if it is not one or needs more than 256 bits.
    pub fn parse(s: &str) -> Option<Wide> {
        let (negative, digits) = match s.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, s.strip_prefix('+').unwrap_or(s)),
        };
        if digits.is_empty() || digits.len() > 80 || !digits.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        let mut m = [0u64; 4];
        for d in digits.bytes() {
            let mut carry = (d - b'0') as u128;
            for limb in m.iter_mut() {
                let x = (*limb as u128) * 10 + carry;
                *limb = x as u64;
                carry = x >> 64;
            }
            if carry != 0 {
                return None;
            }
        }
        Some(Wide { negative: negative && m != [0; 4], magnitude: m })
    }

    /// The value as `bits` (128 or 256) little-endian bytes, two's complement when `signed`;
    /// None if it does not fit.
    pub fn to_le(self, bits: u32, signed: bool) -> Option<Vec<u8>> {
        let limbs = (bits / 64) as usize;
        if self.magnitude[limbs..].iter().any(|&l| l != 0) {
            return None;
        }
        let top = self.magnitude[limbs - 1] >> 63;
        let fits = match (signed, self.negative) {
            (false, true) => false,
            (false, false) => true,
            // Below 2^(bits-1), or exactly 2^(bits-1) when negative.
            (true, false) => top == 0,
            (true, true) => {
                top == 0
                    || (self.magnitude[limbs - 1] == 1 << 63 && self.magnitude[..limbs - 1].iter().all(|&l| l == 0))
            }
        };
        if !fits {
            return None;
        }
        let mut m = self.magnitude;
        if self.negative {
            // Two's complement: invert and add one.
            let mut carry = 1u128;
            for limb in m.iter_mut().take(limbs) {
                let x = (!*limb) as u128 + carry;
                *limb = x as u64;
                carry = x >> 64;
            }
        }
        Some(m[..limbs].iter().flat_map(|l| l.to_le_bytes()).collect())
    }

    /// Reads `bytes` (16 or 32, little-endian, two's complement when `signed`).
    pub fn from_le(bytes: &[u8], signed: bool) -> Wide {
        let mut m = [0u64; 4];
        for (i, c) in bytes.chunks(8).enumerate() {
            m[i] = u64::from_le_bytes(c.try_into().unwrap());
        }
        let limbs = bytes.len() / 8;
        let negative = signed && m[limbs - 1] >> 63 == 1;
        if negative {
            let mut carry = 1u128;
            for limb in m.iter_mut().take(limbs) {
                let x = (!*limb) as u128 + carry;
                *limb = x as u64;
                carry = x >> 64;
            }
        }
        Wide { negative, magnitude: m }
    }
}

impl std::fmt::Display for Wide {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut m = self.magnitude;
        let mut digits = Vec::new();
        loop {
            // Divide by 10, most significant limb first.
            let mut rem = 0u128;
            for limb in m.iter_mut().rev() {
                let x = (rem << 64) | *limb as u128;
                *limb = (x / 10) as u64;
                rem = x % 10;
            }
            digits.push(b'0' + rem as u8);
            if m == [0; 4] {
                break;
            }
        }
        if self.negative {
            digits.push(b'-');
        }
        digits.reverse();
        f.write_str(std::str::from_utf8(&digits).unwrap())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_are_exact_and_errors_say_why() {
        assert_eq!(parse_decimal(".5", 2), Ok(50));
        assert_eq!(parse_decimal("-12.30", 1), Ok(-123));
        assert_eq!(parse_decimal("1.234", 2), Err(DecimalError::FractionalDigits));
        assert_eq!(parse_decimal("x", 2), Err(DecimalError::NotANumber));
        let nines38 = "9".repeat(38);
        assert_eq!(parse_decimal(&nines38, 0), Ok(nines38.parse::<i128>().unwrap()));
        assert_eq!(parse_decimal(&"9".repeat(39), 0), Err(DecimalError::TooManyDigits));
        assert_eq!(parse_decimal(&format!("0000{nines38}"), 0), Ok(nines38.parse::<i128>().unwrap()));
        // The float nearest 99999999999999.99 is 99999999999999.984375.
        assert_eq!(float_to_decimal(99999999999999.99, 4), Ok(999_999_999_999_999_844));
        assert_eq!(float_to_decimal(0.1, 2), Ok(10));
        assert_eq!(float_to_decimal(-2.5, 0), Ok(-2));
        assert_eq!(float_to_decimal(1e300, 2), Err(DecimalError::TooManyDigits));
    }

    #[test]
    fn times_read_as_the_sdks_read_them() {
        let at = |s: &str| parse_datetime(s, None).map(|t| (t.secs, t.nanos));
        assert_eq!(at("2024-06-30T23:59:60Z"), at("2024-07-01T00:00:00Z"));
        assert_eq!(at("2025-01-15"), at("2025-01-15 00:00:00"));
        assert_eq!(at("2024-07-04t12:00:00z"), at("2024-07-04T12:00:00Z"));
        assert_eq!(parse_day("2024-12-31T23:59:59.999+03:00"), parse_date("2024-12-31"));
        assert_eq!(parse_day("2024-12-31T23:59:59-01:00"), parse_date("2025-01-01"));
        assert_eq!(parse_day("yesterday"), None);
        assert!(at("2024-13-01T00:00:00Z").is_err() && at("2024-06-01T10:30").is_err());
        // Every form the Python SDK hands over as text (`_HOST_READS`), read as it reads them.
        let utc = |s: &str| at(s).unwrap();
        assert_eq!(utc("2024-03-10 08:15:00+03:00"), (1_710_047_700, 0));
        assert_eq!(utc("2024-03-10t08:15:00-00:30"), (1_710_060_300, 0));
        assert_eq!(utc("2024-03-10 08:15:00.123456789z"), (1_710_058_500, 123_456_789));
        assert_eq!(utc("2024-03-10T08:15:00.5"), (1_710_058_500, 500_000_000));
        assert_eq!(utc("2024-03-10t23:59:60.25+23:59"), (1_710_028_860, 250_000_000));
    }

    #[test]
    fn date_times_in_a_zone() {
        let tokyo: chrono_tz::Tz = "Asia/Tokyo".parse().unwrap();
        let utc = parse_datetime("2024-06-01 10:00:00", None).unwrap();
        assert_eq!(utc, Instant { secs: 1_717_236_000, nanos: 0 });
        assert_eq!(parse_datetime("2024-06-01 10:00:00", Some(&tokyo)).unwrap().secs, 1_717_236_000 - 9 * 3600);
        assert_eq!(parse_datetime("2024-06-01T10:00:00.25+00:00", Some(&tokyo)).unwrap().nanos, 250_000_000);
        assert_eq!(parse_datetime("2024-06-01T10:00:00.123456789", None).unwrap().nanos, 123_456_789);
        let paris: chrono_tz::Tz = "Europe/Paris".parse().unwrap();
        assert!(parse_datetime("2024-03-31 02:30:00", Some(&paris)).unwrap_err().contains("daylight-saving"));
        assert!(parse_datetime("2024-13-01 00:00:00", None).is_err());
        assert_eq!(parse_date("2024-02-29"), Some(19_782));
        assert_eq!(parse_date("2023-02-29"), None);
        assert_eq!(parse_date("1900-01-01"), Some(-25_567));
    }

    #[test]
    fn wide_integers() {
        let max_u256 = "115792089237316195423570985008687907853269984665640564039457584007913129639935";
        let w = Wide::parse(max_u256).unwrap();
        assert_eq!(w.to_string(), max_u256);
        assert_eq!(w.to_le(256, false).unwrap(), vec![0xff; 32]);
        assert!(w.to_le(256, true).is_none());
        assert!(Wide::parse(&format!("{max_u256}0")).is_none());
        let min_i256 = "-57896044618658097711785492504343953926634992332820282019728792003956564819968";
        let w = Wide::parse(min_i256).unwrap();
        let le = w.to_le(256, true).unwrap();
        assert_eq!(Wide::from_le(&le, true).to_string(), min_i256);
        assert!(Wide::parse(&min_i256.replace("68", "69")).unwrap().to_le(256, true).is_none());
        let m1 = Wide::parse("-1").unwrap().to_le(128, true).unwrap();
        assert_eq!(m1, vec![0xff; 16]);
        assert_eq!(Wide::from_le(&m1, true).to_string(), "-1");
        assert_eq!(Wide::from_i128(i128::MIN).to_le(128, true).unwrap(), i128::MIN.to_le_bytes().to_vec());
        assert!(Wide::parse("340282366920938463463374607431768211456").unwrap().to_le(128, false).is_none());
        assert_eq!(Wide::parse("-0").unwrap(), Wide::parse("0").unwrap());
    }
}
