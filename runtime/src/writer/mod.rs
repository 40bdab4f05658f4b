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
//!
//! Exactly-once tables (see `dedup`): before its INSERT a block is recorded in Redis with the
//! entries its rows came from (see `ledger`), and closed after. Whoever handles one of those
//! entries again — a retry here, or another host recovering a dead one's work — first calls
//! [`Writer::recover`] on the batch, which re-sends the identical block (the same halves, if
//! it had to be split) with the same deduplication identity, then drops its own new rows for
//! that table.

pub mod clickhouse;
pub mod dedup;
pub mod evolve;
pub mod server;
pub mod stats;

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::redis_conn::RedisConn;
use anyhow::Result;
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use self::clickhouse::{ChClient, ChError, ErrorClass};
use crate::ledger::{self, BatchRecord, RecordedPart};
use crate::schema::TableSchema;

/// The result of committing a chunk: Ok once all its rows are in ClickHouse.
pub type CommitResult = Result<Committed, ChunkFailure>;

/// A chunk whose rows are all in ClickHouse.
#[derive(Debug, Clone, Default)]
pub struct Committed {
    /// The recorded batch that held them (exactly-once tables): its chunk field (see
    /// `ledger`) goes with the chunk's acknowledgement.
    pub batch: Option<Arc<str>>,
}

/// Some events of a chunk whose rows were not committed (the other events' rows were).
#[derive(Debug, Clone)]
pub struct ChunkFailure {
    pub error: Arc<str>,
    /// The events (as numbered in the chunk's `events`) whose rows are not in ClickHouse.
    pub events: Vec<u32>,
    /// The recorded batch that held the chunk, if it was recorded.
    pub batch: Option<Arc<str>>,
}

/// Where the events of a plugin call came from, for the batch ledger: the consumer group, the
/// plugin version (file SHA-256) that made the rows and, by event number, (stream, entry id).
#[derive(Debug)]
pub struct ChunkOrigin {
    pub group: Arc<str>,
    pub version: Arc<str>,
    pub entries: Vec<(Arc<str>, Arc<str>)>,
    /// The pipeline batch these rows come from, when its events are acknowledged together (a
    /// streams pipeline): the ledger indexes them by it, one field per chunk (see `ledger`).
    /// None: one field per event (BullMQ jobs).
    pub ack_unit: Option<Arc<str>>,
}

/// Rows of one plugin call for one table.
pub struct RowChunk {
    pub data: Vec<u8>,
    pub rows: usize,
    /// Each event's rows in `data`: (event, end offset, row count), in order.
    pub events: Vec<(u32, usize, usize)>,
    pub origin: Arc<ChunkOrigin>,
    pub done: oneshot::Sender<CommitResult>,
}

/// Batching settings (their defaults: `config::defaults`).
#[derive(Debug, Clone, Copy)]
pub struct BatchPolicy {
    pub max_rows: usize,
    pub max_bytes: usize,
    pub linger: Duration,
}

/// The Redis side of exactly-once: a connection for batch records and who writes them.
#[derive(Clone)]
pub struct LedgerConn {
    pub conn: RedisConn,
    /// This host's consumer name, recorded as each batch's owner (for operators).
    pub owner: Arc<str>,
}

/// Handles to every table's batching task.
#[derive(Clone)]
pub struct Writer {
    tables: Arc<std::sync::Mutex<HashMap<String, mpsc::Sender<RowChunk>>>>,
    client: ChClient,
    policy: BatchPolicy,
    ledger: Option<LedgerConn>,
}

impl Writer {
    pub fn new(client: ChClient, policy: BatchPolicy, ledger: Option<LedgerConn>) -> Self {
        Writer { tables: Default::default(), client, policy, ledger }
    }

    pub fn client(&self) -> &ChClient {
        &self.client
    }

    /// The sender for `schema`'s chunks, starting its batching task on first use. The table
    /// must exist (see [`evolve::prepare_plugin`]).
    pub fn table(&self, schema: &TableSchema) -> mpsc::Sender<RowChunk> {
        let mut tables = self.tables.lock().unwrap();
        // Keyed by the column list too: a version whose rows have other columns (one added by
        // schema evolution, or the entry column) gets a task of its own, so that one INSERT
        // never mixes two row layouts.
        let key = format!("{}|{}|{}", schema.name, schema.column_list(), schema.guarantee.name());
        tables
            .entry(key)
            .or_insert_with(|| {
                // Bounded: at most this many chunks wait per table; senders block beyond it.
                let (tx, rx) = mpsc::channel(64);
                let ledger = if schema.guarantee.exactly_once() { self.ledger.clone() } else { None };
                let target = Target::of(&self.client, schema);
                tokio::spawn(run_table(self.client.clone(), target, ledger, self.policy, rx));
                tx
            })
            .clone()
    }

    /// Whether batches are recorded (exactly-once is not off).
    pub fn exactly_once(&self) -> bool {
        self.ledger.is_some()
    }

    /// Makes sure recorded batch `id` is in ClickHouse: if its record is still open, inserts
    /// its block again (identical, with the same deduplication identity, so the table drops it
    /// if it had landed) and closes it. Parts ClickHouse refuses lose their ledger fields, so
    /// their events write those rows again. Waits while ClickHouse is away.
    pub async fn recover(&self, id: &str) -> Result<()> {
        let Some(ledger) = &self.ledger else { anyhow::bail!("batch {id} is recorded but exactly-once is off") };
        let mut conn = ledger.conn.clone();
        let Some(record) = ledger::load(&mut conn, id).await? else { return Ok(()) };
        tracing::info!(batch = id, table = %record.table, events = record.parts.len(), "recovering a recorded batch: inserting it again (the table drops it if it had landed)");
        let target = Target {
            table: record.table.clone(),
            sql: record.sql.clone(),
            low_cardinality: record.low_cardinality,
            dedup: true,
            token: record.token,
        };
        let token = record.token.then_some(record.id.as_str());
        let failed = insert_parts(&self.client, &target, &record.data, &record.parts, token).await;
        // Only a success, or ClickHouse refusing the rows themselves, says what became of the
        // block. Any other failure (a proxy's 502, a cancelled query, the table gone) may
        // follow a first send that landed: the record stays open and the events pending.
        if let Some((_, error, _)) = failed.iter().find(|(_, _, class)| *class != ErrorClass::Rows) {
            anyhow::bail!("cannot re-send recorded batch {id} to {}: {error}; it stays recorded", record.table);
        }
        let failed: Vec<&RecordedPart> = failed.iter().map(|(i, _, _)| &record.parts[*i]).collect();
        ledger::close(&mut conn, &record, &failed).await?;
        metrics::counter!("sluice_batches_recovered_total", "table" => record.table.clone()).increment(1);
        Ok(())
    }
}

/// What an INSERT goes to.
#[derive(Debug, Clone)]
struct Target {
    table: String,
    sql: String,
    /// Recorded with a batch for hosts of earlier versions, which pass the setting by it; the
    /// client now sends it wherever the server has it.
    low_cardinality: bool,
    /// An exactly-once table: INSERTs force `insert_deduplicate=1`.
    dedup: bool,
    /// Its blocks carry their batch id as `insert_deduplication_token` (see `dedup`).
    token: bool,
}

impl Target {
    fn of(client: &ChClient, schema: &TableSchema) -> Target {
        Target {
            table: schema.name.clone(),
            sql: format!("INSERT INTO {}.{} {} FORMAT RowBinary", client.database(), schema.name, schema.column_list()),
            low_cardinality: schema.uses_low_cardinality(),
            dedup: schema.guarantee.exactly_once(),
            token: schema.guarantee == crate::schema::Guarantee::ExactlyOnceToken,
        }
    }
}

async fn run_table(
    client: ChClient,
    target: Target,
    ledger: Option<LedgerConn>,
    policy: BatchPolicy,
    mut rx: mpsc::Receiver<RowChunk>,
) {
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
        commit(&client, &target, ledger.as_ref(), std::mem::take(&mut pending)).await;
    }
}

/// Inserts `chunks` as one block and tells each chunk's sender how it went. For an
/// exactly-once table the block is recorded in Redis first and closed after.
async fn commit(client: &ChClient, target: &Target, ledger: Option<&LedgerConn>, chunks: Vec<RowChunk>) {
    let total: usize = chunks.iter().map(|c| c.data.len()).sum();
    let mut data = Vec::with_capacity(total);
    let mut parts = Vec::new();
    // (chunk, event) of each part.
    let mut owners = Vec::new();
    for (i, c) in chunks.iter().enumerate() {
        let mut start = 0;
        for &(event, end, rows) in &c.events {
            let (stream, entry_id) = c.origin.entries[event as usize].clone();
            let at = data.len();
            data.extend_from_slice(&c.data[start..end]);
            parts.push(RecordedPart {
                group: c.origin.group.clone(),
                stream,
                entry_id,
                start: at,
                end: data.len(),
                rows,
                chunk: c.origin.ack_unit.clone(),
            });
            owners.push((i, event));
            start = end;
        }
    }
    let data = Bytes::from(data);
    let mut unrecorded = parts;
    let mut versions: Vec<String> = Vec::new();
    for c in &chunks {
        let v = format!("{}@{}", c.origin.group.trim_start_matches("sluice:"), c.origin.version);
        if !versions.contains(&v) {
            versions.push(v);
        }
    }
    let record = ledger.map(|_| BatchRecord {
        id: uuid::Uuid::new_v4().simple().to_string(),
        table: target.table.clone(),
        sql: target.sql.clone(),
        low_cardinality: target.low_cardinality,
        token: target.token,
        versions: versions.join(","),
        data: data.clone(),
        parts: std::mem::take(&mut unrecorded),
    });
    if let (Some(r), Some(l)) = (&record, ledger) {
        // Nothing is inserted before it is recorded: keep trying while Redis is away (the
        // table's channel fills meanwhile, and the pipelines stop reading).
        until_redis_answers(&target.table, "cannot record a batch before inserting it", || {
            let mut conn = l.conn.clone();
            async move { ledger::record(&mut conn, r, &l.owner).await }
        })
        .await;
    }
    let parts: &[RecordedPart] = record.as_ref().map_or(&unrecorded, |r| &r.parts);
    let token_id = record.as_ref().filter(|_| target.token).map(|r| r.id.as_str());
    let failed = insert_parts(client, target, &data, parts, token_id).await;
    if record.is_some() && failed.is_empty() {
        #[cfg(feature = "failpoints")]
        failpoint_exit_after_insert();
    }
    // A failure other than ClickHouse refusing the rows (an error after the data was committed,
    // e.g. a materialized view throwing, or a proxy's answer) leaves the record open: the
    // events are retried, re-send this very block with the same identity, and only then know.
    let settled = failed.iter().all(|(_, _, class)| *class == ErrorClass::Rows);
    if let (Some(r), Some(l), true) = (&record, ledger, settled) {
        let failed_parts: Vec<&RecordedPart> = failed.iter().map(|(i, _, _)| &r.parts[*i]).collect();
        // Closed before the events are acknowledged: an acknowledged event is never handled
        // again, so nobody else would close its batch. If this host dies first, whoever
        // handles the events again re-sends the batch (dropped as a duplicate) and closes it.
        let failed_parts = &failed_parts;
        let what = format!("cannot close a committed batch in Redis (batch {})", r.id);
        until_redis_answers(&target.table, &what, || {
            let mut conn = l.conn.clone();
            async move { ledger::close(&mut conn, r, failed_parts).await }
        })
        .await;
    }
    let batch: Option<Arc<str>> = record.as_ref().map(|r| Arc::from(r.id.as_str()));
    let mut failures: Vec<Option<ChunkFailure>> = vec![None; chunks.len()];
    for (part, error, _) in failed {
        let (chunk, event) = owners[part];
        failures[chunk]
            .get_or_insert_with(|| ChunkFailure { error: error.clone(), events: Vec::new(), batch: batch.clone() })
            .events
            .push(event);
    }
    for (c, f) in chunks.into_iter().zip(failures) {
        let _ = c.done.send(f.map_or_else(|| Ok(Committed { batch: batch.clone() }), Err));
    }
}

/// Runs a batch-ledger write until Redis takes it, with backoff (100 ms doubling to 5 s),
/// logging `what` and the error at each failure.
async fn until_redis_answers<F, Fut>(table: &str, what: &str, mut write: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let mut backoff = crate::backoff::Backoff::brief();
    while let Err(e) = write().await {
        let delay = backoff.next_delay();
        tracing::warn!(table, error = format!("{e:#}"), "{what}; retrying in {delay:?}");
        tokio::time::sleep(delay).await;
    }
}

/// Test-only fault injection, compiled only with the `failpoints` feature (the test suite's
/// `target/release/sluice-failpoints`, never the release binary): with
/// `SLUICE_FAILPOINT_EXIT_AFTER_INSERT=N`, the process exits (as if killed) right after the
/// N-th recorded batch landed, before it is closed and its events acknowledged — the one crash
/// exactly-once exists for, made deterministic.
#[cfg(feature = "failpoints")]
fn failpoint_exit_after_insert() {
    use std::sync::atomic::{AtomicU64, Ordering};
    static AFTER: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    static SEEN: AtomicU64 = AtomicU64::new(0);
    let after = *AFTER.get_or_init(|| std::env::var("SLUICE_FAILPOINT_EXIT_AFTER_INSERT").ok()?.parse().ok());
    if let Some(n) = after
        && SEEN.fetch_add(1, Ordering::SeqCst) + 1 == n
    {
        eprintln!("failpoint: exiting after inserting recorded batch {n}, before closing it");
        std::process::exit(86);
    }
}

/// Inserts the block `data` made of `parts` (contiguous, in order). When ClickHouse blames
/// rows rather than the table, the block is split in halves and the halves inserted apart,
/// down to the rows of single events, so that only the events whose rows are refused fail:
/// their batch-mates, and other plugins' rows sharing the block, still land. (A block is
/// atomic, so a half either lands whole or not at all.) The splits depend only on the parts
/// and the data, so a recovered batch is split the same way, and each piece carries the token
/// `<token>:<first part>-<last part>`. Returns the parts that failed, with the error and its
/// class.
async fn insert_parts(
    client: &ChClient,
    target: &Target,
    data: &Bytes,
    parts: &[RecordedPart],
    token: Option<&str>,
) -> Vec<(usize, Arc<str>, ErrorClass)> {
    let mut failed = Vec::new();
    // A stack of part ranges still to insert, the whole block first.
    let mut groups: Vec<Range<usize>> = Vec::new();
    groups.push(0..parts.len());
    while let Some(group) = groups.pop() {
        if group.is_empty() {
            continue;
        }
        let block = data.slice(parts[group.start].start..parts[group.end - 1].end);
        let rows = parts[group.clone()].iter().map(|p| p.rows).sum();
        let piece_token = token.map(|t| format!("{t}:{}-{}", group.start, group.end - 1));
        match insert_with_retry(client, target, block, rows, piece_token.as_deref()).await {
            Ok(()) => {}
            Err(e) if e.class() == ErrorClass::Rows && group.len() > 1 => {
                tracing::warn!(table = %target.table, events = group.len(), error = %e, "ClickHouse refused rows of a block; inserting its halves apart to find the events at fault");
                let mid = group.start + group.len() / 2;
                groups.push(mid..group.end);
                groups.push(group.start..mid);
            }
            Err(e) => {
                let error: Arc<str> = Arc::from(e.to_string());
                let class = e.class();
                failed.extend(group.map(|i| (i, error.clone(), class)));
            }
        }
    }
    failed
}

/// Inserts one block. Retryable errors (network, timeouts, overload, too many parts) are
/// retried for as long as they last, with backoff up to 10 s: meanwhile this table's channel
/// fills and the pipelines feeding it stop reading, so an outage costs no memory and no event
/// attempts. A fatal error (schema, auth, bad data) fails the block at once.
async fn insert_with_retry(
    client: &ChClient,
    target: &Target,
    block: Bytes,
    rows: usize,
    token: Option<&str>,
) -> Result<(), ChError> {
    let mut backoff = crate::backoff::Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
    let mut attempt = 1u64;
    let started = Instant::now();
    let table = &target.table;
    loop {
        let t = Instant::now();
        let result = client.insert_rowbinary(&target.sql, block.clone(), token, target.dedup).await;
        if let Err(e) = &result {
            let class = match e.class() {
                ErrorClass::Retry => "retry",
                ErrorClass::Rows => "rows",
                ErrorClass::Table => "table",
            };
            metrics::counter!("sluice_insert_errors_total", "table" => table.clone(), "class" => class).increment(1);
            stats::failed(table, &e.to_string());
        }
        match result {
            Ok(()) => {
                metrics::counter!("sluice_rows_written_total", "table" => table.clone()).increment(rows as u64);
                metrics::counter!("sluice_bytes_written_total", "table" => table.clone()).increment(block.len() as u64);
                metrics::histogram!("sluice_insert_duration_seconds", "table" => table.clone())
                    .record(t.elapsed().as_secs_f64());
                stats::inserted(table, rows, t.elapsed());
                if attempt > 1 {
                    tracing::info!(table = %table, rows, attempts = attempt, outage_s = started.elapsed().as_secs(), "insert succeeded after retries");
                }
                tracing::debug!(table = %table, rows, bytes = block.len(), ms = t.elapsed().as_millis() as u64, "inserted");
                return Ok(());
            }
            Err(e) if e.retryable() => {
                let delay = backoff.next_delay();
                // Log the first failures, then one line every ~10 attempts.
                if attempt <= 3 || attempt.is_multiple_of(10) {
                    tracing::warn!(table = %table, rows, attempt, error = %e, "insert failed; retrying in {delay:?} (reading pauses while ClickHouse is unavailable)");
                }
                tokio::time::sleep(delay).await;
                attempt += 1;
            }
            Err(e) => {
                tracing::error!(table = %table, rows, attempt, error = %e, "insert failed with a fatal error; the events will be retried and then dead-lettered");
                return Err(e);
            }
        }
    }
}
