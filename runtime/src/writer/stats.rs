//! What the console shows per table: inserts, rows, errors, the last insert and the latency of
//! the recent inserts (p50/p99). Recorded once per INSERT (never per row), kept in memory: the
//! figures start empty when the host starts.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

/// Latencies kept per table: the inserts of the last 15 minutes, at most this many of them.
const KEEP_LATENCIES: usize = 2048;
const KEEP_FOR: Duration = Duration::from_secs(15 * 60);

#[derive(Default)]
struct Table {
    inserts: u64,
    rows: u64,
    errors: u64,
    last_insert: Option<chrono::DateTime<chrono::Utc>>,
    last_error: Option<(chrono::DateTime<chrono::Utc>, String)>,
    /// (when, seconds) of the recent successful inserts.
    latencies: VecDeque<(Instant, f64)>,
}

static TABLES: Mutex<BTreeMap<String, Table>> = Mutex::new(BTreeMap::new());

/// One successful INSERT of `rows` rows into `table`, which took `took`.
pub fn inserted(table: &str, rows: usize, took: Duration) {
    let mut tables = TABLES.lock().unwrap();
    let t = tables.entry(table.to_string()).or_default();
    t.inserts += 1;
    t.rows += rows as u64;
    t.last_insert = Some(chrono::Utc::now());
    let now = Instant::now();
    t.latencies.push_back((now, took.as_secs_f64()));
    while t.latencies.len() > KEEP_LATENCIES || t.latencies.front().is_some_and(|(at, _)| now - *at > KEEP_FOR) {
        t.latencies.pop_front();
    }
}

/// One failed INSERT attempt into `table`.
pub fn failed(table: &str, error: &str) {
    let mut tables = TABLES.lock().unwrap();
    let t = tables.entry(table.to_string()).or_default();
    t.errors += 1;
    t.last_error = Some((chrono::Utc::now(), error.chars().take(500).collect()));
}

/// A table's figures, as the admin API serves them.
#[derive(Debug, Clone, Serialize)]
pub struct TableStats {
    pub table: String,
    pub inserts: u64,
    pub rows: u64,
    pub errors: u64,
    pub last_insert: Option<chrono::DateTime<chrono::Utc>>,
    pub last_error: Option<String>,
    pub last_error_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Over the inserts of the last 15 minutes (at most 2048 of them); null without any.
    pub insert_p50_s: Option<f64>,
    pub insert_p99_s: Option<f64>,
    /// How many inserts the quantiles are taken over.
    pub latency_samples: usize,
}

/// The `q` quantile (nearest rank) of sorted values.
fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

/// Every table written since the host started.
pub fn snapshot() -> Vec<TableStats> {
    let now = Instant::now();
    let tables = TABLES.lock().unwrap();
    tables
        .iter()
        .map(|(name, t)| {
            let mut l: Vec<f64> = t.latencies.iter().filter(|(at, _)| now - *at <= KEEP_FOR).map(|(_, s)| *s).collect();
            l.sort_by(f64::total_cmp);
            TableStats {
                table: name.clone(),
                inserts: t.inserts,
                rows: t.rows,
                errors: t.errors,
                last_insert: t.last_insert,
                last_error: t.last_error.as_ref().map(|(_, e)| e.clone()),
                last_error_at: t.last_error.as_ref().map(|(at, _)| *at),
                insert_p50_s: quantile(&l, 0.5),
                insert_p99_s: quantile(&l, 0.99),
                latency_samples: l.len(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), Some(50.0));
        assert_eq!(quantile(&v, 0.99), Some(99.0));
        assert_eq!(quantile(&[0.3], 0.99), Some(0.3));
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn inserts_and_errors_are_counted_per_table() {
        inserted("stats_test_t", 10, Duration::from_millis(4));
        inserted("stats_test_t", 5, Duration::from_millis(8));
        failed("stats_test_t", "boom");
        let s = snapshot().into_iter().find(|t| t.table == "stats_test_t").unwrap();
        assert_eq!((s.inserts, s.rows, s.errors, s.latency_samples), (2, 15, 1, 2));
        assert_eq!(s.insert_p99_s, Some(0.008));
        assert_eq!(s.last_error.as_deref(), Some("boom"));
    }
}
