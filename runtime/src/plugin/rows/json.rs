//! Rows given as JSON text (`batch-output.rows-json` of `sluice:plugin@0.2.0`), rewritten in
//! the packed encoding in one streaming pass, so that they are checked and encoded by the same
//! code as packed rows: a JSON row and a packed row with the same values are the same row.
//!
//! `[[event, table, [v, ...]], ...]`; a value maps to a tag as the contract says: null, bool,
//! integer (i64 or u64), float, string, array, and an object to an array of [key, value]
//! pairs (a Map column). serde_json bounds nesting (128 levels), so a hostile row cannot
//! exhaust the stack.

use serde::de::{self, DeserializeSeed, Deserializer as _, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::MalformedRows;
use super::packed::*;

/// The packed rows of a JSON row text (UTF-8, checked here).
pub fn json_to_packed(text: &[u8]) -> Result<Vec<u8>, MalformedRows> {
    let mut out = Vec::with_capacity(text.len() + text.len() / 2);
    let mut d = serde_json::Deserializer::from_slice(text);
    d.deserialize_seq(RowsSeed(&mut out)).and_then(|()| d.end()).map_err(|e| MalformedRows {
        offset: if e.line() <= 1 { e.column().saturating_sub(1) } else { 0 },
        reason: format!("rows-json: {e}"),
    })?;
    Ok(out)
}

/// Writes a u32 count at `at`, where a placeholder was left.
fn patch_u32(out: &mut [u8], at: usize, n: u32) {
    out[at..at + 4].copy_from_slice(&n.to_le_bytes());
}

/// Writes the elements of a JSON array as packed values; returns how many (a row's values and
/// an array value's elements alike).
fn write_elements<'de, A: SeqAccess<'de>>(out: &mut Vec<u8>, mut seq: A) -> Result<u32, A::Error> {
    let mut n = 0u32;
    while seq.next_element_seed(ValueSeed(&mut *out))?.is_some() {
        n += 1;
    }
    Ok(n)
}

struct RowsSeed<'a>(&'a mut Vec<u8>);

impl<'de> Visitor<'de> for RowsSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an array of rows")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(RowSeed(&mut *self.0))?.is_some() {}
        Ok(())
    }
}

struct RowSeed<'a>(&'a mut Vec<u8>);

impl<'de> DeserializeSeed<'de> for RowSeed<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for RowSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a row: [event index, table index, [values]]")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let missing = || de::Error::custom("a row must be [event index, table index, [values]]");
        let event: u32 = seq.next_element()?.ok_or_else(missing)?;
        let table: u16 = seq.next_element()?.ok_or_else(missing)?;
        self.0.extend_from_slice(&event.to_le_bytes());
        self.0.extend_from_slice(&table.to_le_bytes());
        let at = self.0.len();
        self.0.extend_from_slice(&[0, 0]);
        let n = seq.next_element_seed(ValuesSeed(&mut *self.0))?.ok_or_else(missing)?;
        let n = u16::try_from(n).map_err(|_| de::Error::custom(format!("a row of {n} values")))?;
        self.0[at..at + 2].copy_from_slice(&n.to_le_bytes());
        if seq.next_element::<IgnoredAny>()?.is_some() {
            return Err(missing());
        }
        Ok(())
    }
}

/// A row's values; returns how many.
struct ValuesSeed<'a>(&'a mut Vec<u8>);

impl<'de> DeserializeSeed<'de> for ValuesSeed<'_> {
    type Value = u32;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<u32, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ValuesSeed<'_> {
    type Value = u32;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an array of values")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<u32, A::Error> {
        write_elements(self.0, seq)
    }
}

/// One value, in the packed encoding.
struct ValueSeed<'a>(&'a mut Vec<u8>);

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        self.0.push(TAG_NULL);
        Ok(())
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.visit_unit()
    }
    fn visit_bool<E>(self, v: bool) -> Result<(), E> {
        self.0.extend_from_slice(&[TAG_BOOL, v as u8]);
        Ok(())
    }
    fn visit_i64<E>(self, v: i64) -> Result<(), E> {
        self.0.push(TAG_INT);
        self.0.extend_from_slice(&v.to_le_bytes());
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        match i64::try_from(v) {
            Ok(v) => self.visit_i64(v),
            Err(_) => {
                self.0.push(TAG_UINT);
                self.0.extend_from_slice(&v.to_le_bytes());
                Ok(())
            }
        }
    }
    fn visit_f64<E>(self, v: f64) -> Result<(), E> {
        self.0.push(TAG_FLOAT);
        self.0.extend_from_slice(&v.to_le_bytes());
        Ok(())
    }
    fn visit_str<E>(self, v: &str) -> Result<(), E> {
        self.0.push(TAG_STRING);
        self.0.extend_from_slice(&(v.len() as u32).to_le_bytes());
        self.0.extend_from_slice(v.as_bytes());
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        self.0.push(TAG_ARRAY);
        let at = self.0.len();
        self.0.extend_from_slice(&[0; 4]);
        let n = write_elements(self.0, seq)?;
        patch_u32(self.0, at, n);
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.0.push(TAG_ARRAY);
        let at = self.0.len();
        self.0.extend_from_slice(&[0; 4]);
        let mut n = 0u32;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            self.0.push(TAG_ARRAY);
            self.0.extend_from_slice(&2u32.to_le_bytes());
            ValueSeed(&mut *self.0).visit_str::<A::Error>(&key)?;
            map.next_value_seed(ValueSeed(&mut *self.0))?;
            n += 1;
        }
        patch_u32(self.0, at, n);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_rows_become_the_same_packed_rows() {
        let packed = json_to_packed(
            r#"[[0, 1, [null, true, -3, 18446744073709551615, 2.5, "é", [1, [2]], {"k": 7}]]]"#.as_bytes(),
        )
        .unwrap();
        let mut want = vec![0, 0, 0, 0, 1, 0, 8, 0, TAG_NULL, TAG_BOOL, 1, TAG_INT];
        want.extend_from_slice(&(-3i64).to_le_bytes());
        want.push(TAG_UINT);
        want.extend_from_slice(&u64::MAX.to_le_bytes());
        want.push(TAG_FLOAT);
        want.extend_from_slice(&2.5f64.to_le_bytes());
        want.extend_from_slice(&[TAG_STRING, 2, 0, 0, 0, 0xc3, 0xa9]);
        want.extend_from_slice(&[TAG_ARRAY, 2, 0, 0, 0, TAG_INT]);
        want.extend_from_slice(&1i64.to_le_bytes());
        want.extend_from_slice(&[TAG_ARRAY, 1, 0, 0, 0, TAG_INT]);
        want.extend_from_slice(&2i64.to_le_bytes());
        want.extend_from_slice(&[TAG_ARRAY, 1, 0, 0, 0, TAG_ARRAY, 2, 0, 0, 0, TAG_STRING, 1, 0, 0, 0, b'k', TAG_INT]);
        want.extend_from_slice(&7i64.to_le_bytes());
        assert_eq!(packed, want);
        assert!(json_to_packed(b"[]").unwrap().is_empty());
        // Floats are read correctly rounded (serde_json's `float_roundtrip`): the plain parser
        // reads this one a bit low, and the row would differ from the Rust SDK's.
        let packed = json_to_packed(b"[[0, 0, [1000000000000000.5]]]").unwrap();
        assert_eq!(packed[9..], (1e15f64 + 0.5).to_le_bytes());
    }

    #[test]
    fn malformed_json_rows_say_what_is_wrong() {
        for (text, says) in [
            ("[[0, 0]]", "must be [event index"),
            ("[[0, 0, [1], 4]]", "must be [event index"),
            ("[[-1, 0, []]]", "invalid value"),
            ("[[0, 70000, []]]", "invalid value"),
            ("[[0, 0, [NaN]]]", "expected value"),
            ("[[0, 0, [1]]] x", "trailing characters"),
        ] {
            let e = json_to_packed(text.as_bytes()).unwrap_err().to_string();
            assert!(e.contains("rows-json") && e.contains(says), "{text}: {e}");
        }
        let deep = format!("[[0, 0, [{}{}]]]", "[".repeat(10_000), "]".repeat(10_000));
        assert!(json_to_packed(deep.as_bytes()).unwrap_err().to_string().contains("recursion limit"));
    }
}
