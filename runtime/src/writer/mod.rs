//! The writer: the only part of the host that talks to ClickHouse.
//!
//! - `schema`: table declarations, checked, and their DDL.
//! - `clickhouse`: the HTTP client (TCP_NODELAY, validation off, errors classified by code).
//! - `evolve`: creating the declared tables, adding new columns, refusing incompatible changes.
//! - here: one batching task per table. Pipelines hand it [`RowChunk`]s (RowBinary rows of
//!   one plugin call for one table) and get a commit notice back for each.
//!
//! Batching policy: a table's chunks are gathered until `max_rows` rows or `max_bytes`
//! bytes are waiting, or `linger` has passed since the first one, then inserted as one
//! INSERT (one block, atomic, up to 1,048,576 rows). Channels are bounded, so a slow
//! ClickHouse fills them and pipelines wait instead of reading more: memory stays bounded.
//! A failed insert is retried with exponential backoff for as long as the error is retryable
//! (network, overload: [`ErrorClass::Retry`]); one that blames rows ([`ErrorClass::Rows`]) is
//! split down to single events' rows until only the events at fault fail; one that blames the table
//! (schema, auth) fails the chunks. Failed chunks' events are retried and finally
//! dead-lettered by the router.

pub mod clickhouse;
pub mod evolve;
pub mod schema;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use tokio::sync::{mpsc, oneshot};

use self::clickhouse::{ChClient, ChError, ErrorClass};
use self::schema::TableSchema;

/// The result of committing a chunk: Ok once all its rows are in ClickHouse.
pub type CommitResult = Result<(), ChunkFailure>;

/// Some events of a chunk whose rows were not committed (the other events' rows were).
#[derive(Debug, Clone)]
pub struct ChunkFailure {
    pub error: Arc<str>,
    /// The events (as numbered in the chunk's `events`) whose rows are not in ClickHouse.
    pub events: Vec<u32>,
}

/// Rows of one plugin call for one table.
pub struct RowChunk {
    pub data: Vec<u8>,
    pub rows: usize,
    /// Each event's rows in `data`: (event, end offset, row count), in order.
    pub events: Vec<(u32, usize, usize)>,
    pub done: oneshot::Sender<CommitResult>,
}

/// The rows of one event within a chunk: the unit a refused block is split down to.
struct Part {
    chunk: usize,
    event: u32,
    bytes: std::ops::Range<usize>,
    rows: usize,
}

/// Batching settings.
#[derive(Debug, Clone, Copy)]
pub struct BatchPolicy {
    pub max_rows: usize,
    pub max_bytes: usize,
    pub linger: Duration,
}

impl Default for BatchPolicy {
    fn default() -> Self {
        BatchPolicy { max_rows: 200_000, max_bytes: 64 << 20, linger: Duration::from_millis(200) }
    }
}

/// Handles to every table's batching task.
#[derive(Clone)]
pub struct Writer {
    tables: Arc<std::sync::Mutex<HashMap<String, mpsc::Sender<RowChunk>>>>,
    client: ChClient,
    policy: BatchPolicy,
}

impl Writer {
    pub fn new(client: ChClient, policy: BatchPolicy) -> Self {
        Writer { tables: Default::default(), client, policy }
    }

    pub fn client(&self) -> &ChClient {
        &self.client
    }

    /// The sender for `schema`'s chunks, starting its batching task on first use. The table
    /// must exist (see [`evolve::prepare_plugin`]).
    pub fn table(&self, schema: &TableSchema) -> mpsc::Sender<RowChunk> {
        let mut tables = self.tables.lock().unwrap();
        let tx = tables
            .entry(schema.name.clone())
            .or_insert_with(|| {
                // Bounded: at most this many chunks wait per table; senders block beyond it.
                let (tx, rx) = mpsc::channel(64);
                tokio::spawn(run_table(self.client.clone(), schema.clone(), self.policy, rx));
                tx
            })
            .clone();
        tx
    }
}

async fn run_table(client: ChClient, schema: TableSchema, policy: BatchPolicy, mut rx: mpsc::Receiver<RowChunk>) {
    let insert_sql =
        format!("INSERT INTO {}.{} {} FORMAT RowBinary", client.database(), schema.name, schema.column_list());
    let mut pending: Vec<RowChunk> = Vec::new();
    loop {
        // Wait for the first chunk of a block.
        let Some(first) = rx.recv().await else { return };
        let started = Instant::now();
        let (mut rows, mut bytes) = (first.rows, first.data.len());
        pending.push(first);
        // Gather more until full or the linger time is up.
        while rows < policy.max_rows && bytes < policy.max_bytes {
            let left = policy.linger.saturating_sub(started.elapsed());
            match tokio::time::timeout(left, rx.recv()).await {
                Ok(Some(c)) => {
                    rows += c.rows;
                    bytes += c.data.len();
                    pending.push(c);
                }
                Ok(None) | Err(_) => break,
            }
        }
        commit(&client, &schema, &insert_sql, std::mem::take(&mut pending)).await;
    }
}

/// Inserts `chunks` as one block and tells each chunk's sender how it went. When ClickHouse
/// blames rows rather than the table, the block is split in halves and the halves inserted
/// apart, down to the rows of single events, so that only the events whose rows are refused
/// fail: their batch-mates, and other plugins' rows sharing the block, still land. (A block is
/// atomic, so a half either lands whole or not at all.)
async fn commit(client: &ChClient, schema: &TableSchema, sql: &str, chunks: Vec<RowChunk>) {
    let mut parts = Vec::new();
    for (i, c) in chunks.iter().enumerate() {
        let mut start = 0;
        for &(event, end, rows) in &c.events {
            parts.push(Part { chunk: i, event, bytes: start..end, rows });
            start = end;
        }
    }
    let mut failed: Vec<Option<ChunkFailure>> = vec![None; chunks.len()];
    let mut groups = vec![parts];
    while let Some(group) = groups.pop() {
        let mut block = Vec::with_capacity(group.iter().map(|p| p.bytes.len()).sum());
        for p in &group {
            block.extend_from_slice(&chunks[p.chunk].data[p.bytes.clone()]);
        }
        let rows = group.iter().map(|p| p.rows).sum();
        match insert_with_retry(client, schema, sql, block, rows).await {
            Ok(()) => {}
            Err(e) if e.class() == ErrorClass::Rows && group.len() > 1 => {
                tracing::warn!(table = %schema.name, events = group.len(), error = %e, "ClickHouse refused rows of a block; inserting its halves apart to find the events at fault");
                let mut left = group;
                let right = left.split_off(left.len() / 2);
                groups.push(right);
                groups.push(left);
            }
            Err(e) => {
                let error: Arc<str> = Arc::from(e.to_string());
                for p in group {
                    let f = failed[p.chunk]
                        .get_or_insert_with(|| ChunkFailure { error: error.clone(), events: Vec::new() });
                    f.events.push(p.event);
                }
            }
        }
    }
    for (c, f) in chunks.into_iter().zip(failed) {
        let _ = c.done.send(f.map_or(Ok(()), Err));
    }
}

/// Inserts one block. Retryable errors (network, timeouts, overload, too many parts) are
/// retried for as long as they last, with backoff up to 10 s: meanwhile this table's channel
/// fills and the pipelines feeding it stop reading, so an outage costs no memory and no event
/// attempts. A fatal error (schema, auth, bad data) fails the block at once.
async fn insert_with_retry(
    client: &ChClient,
    schema: &TableSchema,
    sql: &str,
    block: Vec<u8>,
    rows: usize,
) -> Result<(), ChError> {
    let block = bytes::Bytes::from(block);
    let mut delay = Duration::from_millis(100);
    let mut attempt = 1u64;
    let started = Instant::now();
    loop {
        let t = Instant::now();
        let result = client.insert_rowbinary(sql, block.clone(), schema.uses_low_cardinality()).await;
        if let Err(e) = &result {
            let class = match e.class() {
                ErrorClass::Retry => "retry",
                ErrorClass::Rows => "rows",
                ErrorClass::Table => "table",
            };
            metrics::counter!("sluice_insert_errors_total", "table" => schema.name.clone(), "class" => class)
                .increment(1);
        }
        match result {
            Ok(()) => {
                let table = schema.name.clone();
                metrics::counter!("sluice_rows_written_total", "table" => table.clone()).increment(rows as u64);
                metrics::counter!("sluice_bytes_written_total", "table" => table.clone()).increment(block.len() as u64);
                metrics::histogram!("sluice_insert_duration_seconds", "table" => table)
                    .record(t.elapsed().as_secs_f64());
                if attempt > 1 {
                    tracing::info!(table = %schema.name, rows, attempts = attempt, outage_s = started.elapsed().as_secs(), "insert succeeded after retries");
                }
                tracing::debug!(table = %schema.name, rows, bytes = block.len(), ms = t.elapsed().as_millis() as u64, "inserted");
                return Ok(());
            }
            Err(e) if e.retryable() => {
                // Log the first failures, then one line every ~10 attempts.
                if attempt <= 3 || attempt % 10 == 0 {
                    tracing::warn!(table = %schema.name, rows, attempt, error = %e, "insert failed; retrying in {delay:?} (reading pauses while ClickHouse is unavailable)");
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
                attempt += 1;
            }
            Err(e) => {
                tracing::error!(table = %schema.name, rows, attempt, error = %e, "insert failed with a fatal error; the events will be retried and then dead-lettered");
                return Err(e);
            }
        }
    }
}
