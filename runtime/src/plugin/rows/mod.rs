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
//! Values are decoded and encoded in one pass with no intermediate representation:
//! `packed` reads the plugin's values (arrays skipped without recursion), `encode` checks each
//! against its column and writes RowBinary, `text` reads dates, times, decimals and wide
//! integers given as text, `render` turns RowBinary back into JSON for `plugin run` and
//! fixtures.

mod encode;
mod json;
mod packed;
mod render;
mod text;

pub use json::json_to_packed;
pub use render::rowbinary_to_json;

use crate::schema::TableSchema;
use encode::encode;
use packed::{Reader, read_val, skip_values};

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
            if let Some(c) = current
                && event < c
            {
                return Err(MalformedRows {
                    offset: row_at,
                    reason: format!("rows of event {event} come after rows of event {c}"),
                });
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
            skip_values(&mut r, values as u64)?;
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
    use super::packed::*;
    use super::*;
    use crate::contract::wit;

    fn schema(cols: &[(&str, &str)]) -> TableSchema {
        crate::schema::test_table(cols, wit::Engine::MergeTree, None, &[cols[0].0])
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
    }
}
