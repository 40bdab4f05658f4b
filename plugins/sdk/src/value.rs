//! The packed value encoding of the WIT contract (`batch-output.rows`), written without any
//! intermediate representation: each `Value` appends its tag and bytes to one buffer.

use crate::time::{Date, DateTime};

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
    fn write(&self, w: &mut ValueWriter);
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
impl<T: Value> Value for Option<T> {
    fn write(&self, w: &mut ValueWriter) {
        match self {
            Some(v) => v.write(w),
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
}
impl Value for Date {
    fn write(&self, w: &mut ValueWriter) {
        w.int(self.days() as i64)
    }
}
impl Value for DateTime {
    fn write(&self, w: &mut ValueWriter) {
        w.int(self.seconds())
    }
}
