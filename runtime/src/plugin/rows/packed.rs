//! Reading the packed value encoding of the WIT contract (`batch-output.rows`): a one-byte tag
//! and its data per value. Arrays are skipped without recursion — a plugin may send an array
//! nested a million levels deep, and only the column's type decides how deep the host looks.

use super::MalformedRows;

pub const TAG_NULL: u8 = 0x00;
pub const TAG_BOOL: u8 = 0x01;
pub const TAG_INT: u8 = 0x02;
pub const TAG_UINT: u8 = 0x03;
pub const TAG_FLOAT: u8 = 0x04;
pub const TAG_STRING: u8 = 0x05;
pub const TAG_BYTES: u8 = 0x06;
pub const TAG_ARRAY: u8 = 0x07;

pub struct Reader<'a> {
    pub buf: &'a [u8],
    pub pos: usize,
}

impl<'a> Reader<'a> {
    pub fn fail<T>(&self, reason: impl Into<String>) -> Result<T, MalformedRows> {
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
    pub fn u8(&mut self) -> Result<u8, MalformedRows> {
        Ok(self.take(1)?[0])
    }
    pub fn u16(&mut self) -> Result<u16, MalformedRows> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))
    }
    pub fn u32(&mut self) -> Result<u32, MalformedRows> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    pub fn u64(&mut self) -> Result<u64, MalformedRows> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
}

/// One decoded value, borrowing from the buffer.
#[derive(Debug, Clone, Copy)]
pub enum Val<'a> {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(&'a str),
    Bytes(&'a [u8]),
    /// An array: element count and where its elements start (read them with [`Reader`] from
    /// there).
    Array(u32, usize),
}

impl Val<'_> {
    /// The value for an error message (long strings cut).
    pub fn describe(&self) -> String {
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

/// Reads one value; an array is skipped over whole (its elements are read again from its
/// start by whoever needs them).
pub fn read_val<'a>(r: &mut Reader<'a>) -> Result<Val<'a>, MalformedRows> {
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
            skip_values(r, n as u64)?;
            Val::Array(n, start)
        }
        t => return r.fail(format!("unknown value tag 0x{t:02x}")),
    })
}

/// Moves past `n` values, however deeply their arrays nest: an array only adds its elements
/// to the count still to skip, so nothing recurses.
pub fn skip_values(r: &mut Reader<'_>, mut n: u64) -> Result<(), MalformedRows> {
    while n > 0 {
        // Every value takes at least one byte: a count beyond what is left cannot be right.
        let left = (r.buf.len() - r.pos) as u64;
        if n > left {
            return r.fail(format!("{n} values still to read, but only {left} bytes left"));
        }
        n -= 1;
        match r.u8()? {
            TAG_NULL => {}
            TAG_BOOL => {
                r.u8()?;
            }
            TAG_INT | TAG_UINT | TAG_FLOAT => {
                r.u64()?;
            }
            TAG_STRING | TAG_BYTES => {
                let len = r.u32()? as usize;
                r.take(len)?;
            }
            TAG_ARRAY => n += r.u32()? as u64,
            t => {
                r.pos -= 1;
                return r.fail(format!("unknown value tag 0x{t:02x}"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_arrays_nested_far_deeper_than_any_stack() {
        // An array holding an array holding ... 2,000,000 levels, then a string.
        let depth = 2_000_000;
        let mut buf = Vec::with_capacity(depth * 5 + 8);
        for _ in 0..depth {
            buf.push(TAG_ARRAY);
            buf.extend_from_slice(&1u32.to_le_bytes());
        }
        buf.push(TAG_STRING);
        buf.extend_from_slice(&1u32.to_le_bytes());
        buf.push(b'x');
        buf.push(TAG_NULL);
        let mut r = Reader { buf: &buf, pos: 0 };
        assert!(matches!(read_val(&mut r).unwrap(), Val::Array(1, 5)));
        assert!(matches!(read_val(&mut r).unwrap(), Val::Null));
        assert_eq!(r.pos, buf.len());
        // Truncated: the same array without its innermost value is malformed, not a crash.
        let mut r = Reader { buf: &buf[..depth * 5], pos: 0 };
        assert!(read_val(&mut r).is_err());
    }

    #[test]
    fn an_element_count_beyond_the_buffer_is_malformed_at_once() {
        let mut buf = vec![TAG_ARRAY];
        buf.extend_from_slice(&u32::MAX.to_le_bytes());
        buf.push(TAG_NULL);
        let e = read_val(&mut Reader { buf: &buf, pos: 0 }).unwrap_err();
        assert!(e.reason.contains("only 1 bytes left"), "{}", e.reason);
    }
}
