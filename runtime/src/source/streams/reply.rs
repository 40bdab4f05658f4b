//! Reading the replies of the stream commands (RESP2 arrays or RESP3 maps).

use anyhow::{Result, bail};
use redis::Value;

pub(super) type Entry = (String, Option<Vec<(String, Vec<u8>)>>);

pub(super) fn array(v: Value) -> Result<Vec<Value>> {
    match v {
        Value::Array(a) => Ok(a),
        Value::Nil => Ok(Vec::new()),
        other => bail!("unexpected Redis reply {other:?}"),
    }
}

pub(super) fn string(v: Value) -> Result<String> {
    match v {
        Value::BulkString(b) => Ok(String::from_utf8(b)?),
        Value::SimpleString(s) => Ok(s),
        other => bail!("unexpected Redis reply {other:?}, expected a string"),
    }
}

pub(super) fn bytes(v: Value) -> Result<Vec<u8>> {
    match v {
        Value::BulkString(b) => Ok(b),
        Value::SimpleString(s) => Ok(s.into_bytes()),
        Value::Int(i) => Ok(i.to_string().into_bytes()),
        other => bail!("unexpected Redis reply {other:?}, expected a string"),
    }
}

pub(super) fn int(v: Value) -> Result<i64> {
    match v {
        Value::Int(i) => Ok(i),
        other => Ok(string(other)?.parse()?),
    }
}

/// `[[id, [k, v, ...]], ...]`; a nil field list means the entry was deleted.
pub(super) fn entries_reply(v: Value) -> Result<Vec<Entry>> {
    let mut out = Vec::new();
    for e in array(v)? {
        if matches!(e, Value::Nil) {
            continue;
        }
        let mut parts = array(e)?.into_iter();
        let id = string(parts.next().ok_or_else(|| anyhow::anyhow!("empty stream entry"))?)?;
        let fields = match parts.next() {
            None | Some(Value::Nil) => None,
            Some(f) => {
                let flat = array(f)?;
                let mut fields = Vec::with_capacity(flat.len() / 2);
                let mut it = flat.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    fields.push((string(k)?, bytes(v)?));
                }
                Some(fields)
            }
        };
        out.push((id, fields));
    }
    Ok(out)
}

/// The reply of XREAD/XREADGROUP: `[[stream, entries], ...]` (RESP2) or a map (RESP3).
pub(super) fn stream_replies(v: Value) -> Result<Vec<(String, Vec<Entry>)>> {
    let pairs: Vec<(Value, Value)> = match v {
        Value::Nil => return Ok(Vec::new()),
        Value::Map(m) => m,
        Value::Array(a) => a
            .into_iter()
            .map(|s| {
                let mut it = array(s)?.into_iter();
                match (it.next(), it.next()) {
                    (Some(k), Some(v)) => Ok((k, v)),
                    _ => bail!("unexpected XREADGROUP reply"),
                }
            })
            .collect::<Result<_>>()?,
        other => bail!("unexpected XREADGROUP reply {other:?}"),
    };
    pairs.into_iter().map(|(k, v)| Ok((string(k)?, entries_reply(v)?))).collect()
}
