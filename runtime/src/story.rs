//! An event's story, for `sluice trace` and `GET /api/trace/{id}`: what the hosts remember of
//! it (`trace`, this process's rings) put together with what Redis and ClickHouse hold — the
//! stream entry, whether it is pending and with whom, its dead letter, a BullMQ/Bull job's hash,
//! and its rows read back from ClickHouse where the table lets the host find them.
//!
//! An id is one of three forms: a stream entry id (`1717245000123-0`: looked up in every stream
//! a plugin's consumer group reads, the plugins' replay streams, the rings and the dead
//! letters), or else an event id or a job id (any printable text without spaces: looked up in
//! the rings, the dead letters' `event_id`, and as a job of each BullMQ queue the host
//! consumes). What is found once the rings forgot an event (a restart, or more than
//! `trace::RING_CAPACITY` attempts since): by entry id, the entry, its pending state, its dead
//! letter and its rows; by event id, only a dead-lettered event (streams are not searched by
//! field: that would read them whole, and the idempotency sets keep ids without where they came
//! from); by job id, the job.
//!
//! Rows are counted in ClickHouse for tables with the hidden entry column (exactly-once tables
//! on Replicated engines, see `writer::dedup`): `count()` where it equals the event's
//! `schema::entry_hash`. Other tables have no trace of which event a row came from: their count
//! is the one the host recorded when it handed the rows over (`from: host`).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use anyhow::{Result, bail};
use redis::{Value, cmd};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::dead_letter::{self as record, DeadLetterEntry};
use crate::redis_conn::RedisConn;
use crate::source::bullmq::{BullQueue, Library};
use crate::trace::{Attempt, Find, RING_CAPACITY, Remembered};
use crate::writer::clickhouse::ChClient;

/// The longest id looked up (event ids are UUIDs or similar; job ids are short).
const MAX_ID_LEN: usize = 256;

/// The answer to a trace: every event the id matches (one per plugin that reads it).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Trace {
    pub query: String,
    pub matches: Vec<Match>,
}

/// One event as one plugin saw it.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Match {
    pub plugin: Option<String>,
    pub event_type: Option<String>,
    /// `stream`, `bullmq` or `bull`.
    pub source: String,
    /// The stream, or the queue's key (`bull:orders`).
    pub stream: String,
    pub entry_id: Option<String>,
    pub event_id: Option<String>,
    pub job_id: Option<String>,
    pub published_at: Option<String>,
    /// `acknowledged`, `pending`, `retry_scheduled`, `dead_lettered` or `unknown`.
    pub state: String,
    pub attempts: Vec<Attempt>,
    pub rows: Vec<Rows>,
    pub dead_letter: Option<serde_json::Value>,
    pub pending: Option<Pending>,
    /// What a BullMQ/Bull job's hash and sets say (`state`: completed, failed, delayed, active,
    /// waiting; `attempts_made`, `failed_reason`).
    #[serde(default)]
    pub job: Option<serde_json::Value>,
    /// Whether the plugin's consumer group has read past the entry (streams).
    #[serde(default)]
    pub read_by_group: Option<bool>,
    /// What could not be asked (ClickHouse down, the hosts unreachable...).
    #[serde(default)]
    pub notes: Vec<String>,
    pub story: Vec<String>,
}

/// Rows of the event in one table.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Rows {
    pub table: String,
    pub count: u64,
    /// `clickhouse` (counted by the entry column) or `host` (as the host recorded them).
    pub from: String,
}

/// The entry in the consumer group's pending list.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Pending {
    pub consumer: String,
    pub idle_ms: u64,
    pub deliveries: u64,
}

/// What an id is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// A stream entry id.
    Entry,
    /// An event id or a job id (both are looked for).
    EventOrJob,
}

/// Which of the three forms `id` has; an error naming them when none.
pub fn classify(id: &str) -> Result<Form> {
    let entry = id.split_once('-').is_some_and(|(ms, seq)| {
        !ms.is_empty()
            && !seq.is_empty()
            && ms.bytes().all(|b| b.is_ascii_digit())
            && seq.bytes().all(|b| b.is_ascii_digit())
    });
    if entry {
        return Ok(Form::Entry);
    }
    if id.is_empty() || id.len() > MAX_ID_LEN || id.chars().any(|c| c.is_whitespace() || c.is_control()) {
        bail!(
            "`{}` is not an id sluice can trace: expected a stream entry id (1717245000123-0), an event id or a job id (printable text without spaces, at most {MAX_ID_LEN} bytes)",
            id.escape_debug()
        );
    }
    Ok(Form::EventOrJob)
}

/// Where the story is read from.
pub struct Stores<'a> {
    pub redis: &'a mut RedisConn,
    /// None: ClickHouse is not asked (rows come from the hosts' records alone).
    pub clickhouse: Option<&'a ChClient>,
    pub stream_prefix: &'a str,
    pub queues: &'a [BullQueue],
}

/// What one event is, before its facts are gathered.
#[derive(Debug, Clone, PartialEq)]
struct Subject {
    plugin: Option<String>,
    event_type: Option<String>,
    stream: String,
    entry_id: String,
    /// The queue, when it is a job.
    queue: Option<BullQueue>,
}

/// Traces `id`: this process's rings, then Redis and ClickHouse. The matches are empty when
/// nothing knows the id.
pub async fn trace(id: &str, stores: Stores<'_>) -> Result<Trace> {
    let form = classify(id)?;
    let Stores { redis: conn, clickhouse, stream_prefix, queues } = stores;
    let mut remembered = crate::trace::find(Find::Entry(id));
    // An event id may look like an entry id (`20240601-0001`): the rings are asked both ways.
    {
        for r in crate::trace::find(Find::EventId(id)) {
            if !remembered.iter().any(|m| same(m, &r)) {
                remembered.push(r);
            }
        }
    }
    // An entry's dead letters come after it was published: only those are read.
    let since = match form {
        Form::Entry => crate::source::entry_id_millis(id).map(|ms| ms.to_string()),
        Form::EventOrJob => None,
    };
    let letters = letters_since(conn, since.as_deref().unwrap_or("-")).await?;
    let mut subjects: Vec<Subject> = Vec::new();
    fn add(subjects: &mut Vec<Subject>, s: Subject) {
        if !subjects.iter().any(|t| t.plugin == s.plugin && t.stream == s.stream && t.entry_id == s.entry_id) {
            subjects.push(s);
        }
    }
    for r in &remembered {
        let queue = r.jobs.then(|| queues.iter().find(|q| q.key() == r.stream).cloned()).flatten();
        add(
            &mut subjects,
            Subject {
                plugin: Some(r.plugin.clone()),
                event_type: Some(r.event_type.clone()),
                stream: r.stream.clone(),
                entry_id: r.entry_id.clone(),
                queue: queue.or_else(|| r.jobs.then(|| unknown_queue(&r.stream))),
            },
        );
    }
    match form {
        Form::Entry => {
            for (stream, event_type, plugins) in read_streams(conn, stream_prefix).await? {
                let found: Value = cmd("XRANGE").arg(&stream).arg(id).arg(id).query_async(conn).await?;
                let in_stream = matches!(&found, Value::Array(a) if !a.is_empty());
                for plugin in plugins {
                    if in_stream || pending(conn, &stream, &plugin, id).await?.is_some() {
                        add(
                            &mut subjects,
                            Subject {
                                plugin: Some(plugin),
                                event_type: Some(event_type.clone()),
                                stream: stream.clone(),
                                entry_id: id.to_string(),
                                queue: None,
                            },
                        );
                    }
                }
            }
            for l in letters.iter().filter(|l| l.get(record::ENTRY_ID).as_deref() == Some(id)) {
                add(&mut subjects, letter_subject(l, queues));
            }
        }
        Form::EventOrJob => {
            for l in letters.iter().filter(|l| l.get(record::EVENT_ID).as_deref() == Some(id)) {
                add(&mut subjects, letter_subject(l, queues));
            }
            for q in queues {
                let exists: bool = cmd("EXISTS").arg(format!("{}:{id}", q.key())).query_async(conn).await?;
                let known = subjects.iter().any(|s| s.stream == q.key() && s.entry_id == id);
                if exists && !known {
                    add(
                        &mut subjects,
                        Subject {
                            plugin: None,
                            event_type: None,
                            stream: q.key(),
                            entry_id: id.to_string(),
                            queue: Some(q.clone()),
                        },
                    );
                }
            }
        }
    }
    // Which tables have the entry column, asked once.
    let mut notes = Vec::new();
    let entry_tables = match clickhouse {
        Some(ch) => match entry_tables(ch).await {
            Ok(t) => Some(t),
            Err(e) => {
                notes.push(format!("ClickHouse could not be asked for the rows: {e:#}"));
                None
            }
        },
        None => None,
    };
    let mut matches = Vec::new();
    for s in subjects {
        let attempts: Vec<Attempt> = remembered
            .iter()
            .filter(|r| Some(&r.plugin) == s.plugin.as_ref() && r.stream == s.stream && r.entry_id == s.entry_id)
            .flat_map(|r| r.attempts.iter().cloned())
            .collect();
        let event_id = remembered
            .iter()
            .find(|r| r.stream == s.stream && r.entry_id == s.entry_id)
            .and_then(|r| r.event_id.clone());
        let mut m = Match {
            plugin: s.plugin.clone(),
            event_type: s.event_type.clone(),
            source: "stream".into(),
            stream: s.stream.clone(),
            entry_id: Some(s.entry_id.clone()),
            event_id,
            attempts,
            notes: notes.clone(),
            ..Default::default()
        };
        match &s.queue {
            Some(q) => job_facts(conn, q, &s.entry_id, &mut m).await?,
            None => stream_facts(conn, &s, &mut m).await?,
        }
        if let Some(l) = latest_letter(&letters, &s) {
            m.event_id = m.event_id.or_else(|| l.get(record::EVENT_ID).filter(|i| !i.is_empty()));
            m.event_type = m.event_type.or_else(|| l.get(record::EVENT_TYPE));
            m.dead_letter = Some(l.to_json());
        }
        rows(clickhouse, entry_tables.as_ref(), &s, &mut m).await;
        tell(&mut m);
        matches.push(m);
    }
    Ok(Trace { query: id.to_string(), matches })
}

/// The dead letters from `start` (a stream position) on, oldest first.
async fn letters_since(conn: &mut RedisConn, start: &str) -> Result<Vec<DeadLetterEntry>> {
    const PAGE: usize = 1000;
    let mut out = Vec::new();
    let mut from = start.to_string();
    loop {
        let v: Value = cmd("XRANGE")
            .arg(crate::keys::DLQ_STREAM)
            .arg(&from)
            .arg("+")
            .arg("COUNT")
            .arg(PAGE)
            .query_async(conn)
            .await?;
        let page = record::parse_entries(v)?;
        let (n, last) = (page.len(), page.last().map(|e| e.id.clone()));
        out.extend(page);
        match last {
            Some(last) if n == PAGE => from = format!("({last}"),
            _ => return Ok(out),
        }
    }
}

fn same(a: &Remembered, b: &Remembered) -> bool {
    a.plugin == b.plugin && a.event_type == b.event_type && a.stream == b.stream && a.entry_id == b.entry_id
}

/// A queue this host does not consume (any more): its key is all that is known.
fn unknown_queue(key: &str) -> BullQueue {
    let (prefix, name) = key.split_once(':').unwrap_or(("bull", key));
    BullQueue {
        name: name.into(),
        prefix: prefix.into(),
        concurrency: 1,
        lock: std::time::Duration::from_secs(30),
        max_stalled: 1,
        library: Library::Auto,
    }
}

fn letter_subject(l: &DeadLetterEntry, queues: &[BullQueue]) -> Subject {
    let stream = l.get(record::STREAM).unwrap_or_default();
    Subject {
        plugin: l.get(record::PLUGIN),
        event_type: l.get(record::EVENT_TYPE),
        queue: queues.iter().find(|q| q.key() == stream).cloned(),
        stream,
        entry_id: l.get(record::ENTRY_ID).unwrap_or_default(),
    }
}

/// The newest dead letter of the subject's event (by that plugin).
fn latest_letter<'a>(letters: &'a [DeadLetterEntry], s: &Subject) -> Option<&'a DeadLetterEntry> {
    letters.iter().rev().find(|l| {
        l.get(record::STREAM).as_deref() == Some(&s.stream)
            && l.get(record::ENTRY_ID).as_deref() == Some(&s.entry_id)
            && (s.plugin.is_none() || l.get(record::PLUGIN) == s.plugin)
    })
}

/// The streams plugins read — the event streams with a `sluice:<plugin>` group, and the plugins'
/// replay streams — each with its event type and the plugins reading it.
async fn read_streams(conn: &mut RedisConn, prefix: &str) -> Result<Vec<(String, String, Vec<String>)>> {
    let mut out = Vec::new();
    for (event_type, groups) in crate::dlq::groups_by_type(conn, prefix).await? {
        let plugins: Vec<String> =
            groups.iter().filter_map(|g| g.strip_prefix("sluice:")).map(str::to_string).collect();
        if !plugins.is_empty() {
            out.push((crate::keys::event_stream(prefix, &event_type), event_type, plugins));
        }
    }
    for key in conn.scan_keys("sluice:replay:*", "stream").await? {
        // sluice:replay:<plugin>:<type>
        if let Some((plugin, event_type)) = key.strip_prefix("sluice:replay:").and_then(|r| r.split_once(':')) {
            out.push((key.clone(), event_type.to_string(), vec![plugin.to_string()]));
        }
    }
    Ok(out)
}

/// A stream entry as XRANGE gives it: id and fields.
type RawEntry = (String, Vec<(String, Vec<u8>)>);

/// The entry `id` in the pending list of `plugin`'s group on `stream`.
async fn pending(conn: &mut RedisConn, stream: &str, plugin: &str, id: &str) -> Result<Option<Pending>> {
    let group = crate::keys::group_name(plugin);
    let rows: redis::RedisResult<Vec<(String, String, u64, u64)>> =
        cmd("XPENDING").arg(stream).arg(&group).arg(id).arg(id).arg(1).query_async(conn).await;
    match rows {
        Ok(rows) => Ok(rows.into_iter().find(|r| r.0 == id).map(|(_, consumer, idle_ms, deliveries)| Pending {
            consumer,
            idle_ms,
            deliveries,
        })),
        // No such group (any more): nothing is pending in it.
        Err(e) if e.code() == Some("NOGROUP") => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// What Redis holds of a stream entry: its fields (event id, publication time), whether it is
/// pending, whether the group read past it.
async fn stream_facts(conn: &mut RedisConn, s: &Subject, m: &mut Match) -> Result<()> {
    m.published_at = crate::source::entry_id_millis(&s.entry_id).map(crate::trace::time);
    let found: Vec<RawEntry> =
        cmd("XRANGE").arg(&s.stream).arg(&s.entry_id).arg(&s.entry_id).query_async(conn).await.unwrap_or_default();
    if let Some((_, fields)) = found.first() {
        let event_type = s.event_type.as_deref().unwrap_or("");
        if let Ok(e) = crate::source::parse_entry(&s.stream, event_type, &s.entry_id, fields) {
            let stand_in = e.id == format!("{}/{}", s.stream, s.entry_id);
            if !stand_in && !e.id.is_empty() {
                m.event_id = Some(e.id);
            }
        }
    } else {
        m.notes.push(format!("the entry is no longer in {} (trimmed by the retention, or deleted)", s.stream));
    }
    if let Some(plugin) = &s.plugin {
        m.pending = pending(conn, &s.stream, plugin, &s.entry_id).await?;
        let group = crate::keys::group_name(plugin);
        if let Some(info) = crate::dlq::group_info(conn, &s.stream, &group).await {
            let last = info.get("last-delivered-id").and_then(|v| redis::from_redis_value::<String>(v.clone()).ok());
            let (last, this) =
                (last.as_deref().and_then(crate::keys::StreamId::parse), crate::keys::StreamId::parse(&s.entry_id));
            if let (Some(last), Some(this)) = (last, this) {
                m.read_by_group = Some(this <= last);
            }
        }
    }
    Ok(())
}

/// What Redis holds of a job: its hash (name, time, attempts, failed reason) and which set holds
/// it.
async fn job_facts(conn: &mut RedisConn, q: &BullQueue, id: &str, m: &mut Match) -> Result<()> {
    m.entry_id = None;
    m.job_id = Some(id.to_string());
    let key = q.key();
    let hash: HashMap<String, String> = cmd("HGETALL").arg(format!("{key}:{id}")).query_async(conn).await?;
    let bull = match q.library {
        Library::Bull => true,
        Library::Bullmq => false,
        // Classic Bull stores `timestamp` in a job's options, BullMQ does not (`bull.rs`).
        Library::Auto => hash.get("opts").is_some_and(|o| o.contains("\"timestamp\"")),
    };
    m.source = if bull { "bull" } else { "bullmq" }.into();
    if hash.is_empty() {
        m.notes.push(format!("job {id} is no longer in {key} (removed on completion or failure, or trimmed)"));
        return Ok(());
    }
    m.event_type = m.event_type.take().or_else(|| hash.get("name").cloned());
    m.published_at = hash.get("timestamp").and_then(|t| t.parse().ok()).map(crate::trace::time);
    let mut state = None;
    for set in ["completed", "failed", "delayed"] {
        let score: Option<f64> = cmd("ZSCORE").arg(format!("{key}:{set}")).arg(id).query_async(conn).await?;
        if score.is_some() {
            state = Some(set);
            break;
        }
    }
    if state.is_none() {
        for list in ["active", "wait", "paused"] {
            let at: Option<i64> =
                cmd("LPOS").arg(format!("{key}:{list}")).arg(id).query_async(conn).await.unwrap_or(None);
            if at.is_some() {
                state = Some(if list == "wait" { "waiting" } else { list });
                break;
            }
        }
    }
    let num = |k: &str| hash.get(k).and_then(|v| v.parse::<u64>().ok());
    m.job = Some(json!({
        "state": state.unwrap_or("unknown"),
        // BullMQ 5 keeps it as `atm`, earlier releases and Bull as `attemptsMade`.
        "attempts_made": num("atm").or(num("attemptsMade")),
        "failed_reason": hash.get("failedReason").filter(|r| !r.is_empty()),
        "processed_on": num("processedOn").map(|t| crate::trace::time(t as i64)),
        "finished_on": num("finishedOn").map(|t| crate::trace::time(t as i64)),
    }));
    Ok(())
}

/// The tables with the entry column, in the host's database.
async fn entry_tables(ch: &ChClient) -> Result<BTreeSet<String>> {
    let sql = format!(
        "SELECT table FROM system.columns WHERE database = '{}' AND name = '{}' FORMAT JSONEachRow",
        ch.database().replace('\'', "\\'"),
        crate::schema::ENTRY_COLUMN
    );
    let rows = ch.query_json(&sql).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(rows.iter().filter_map(|r| r.get("table").and_then(|t| t.as_str()).map(str::to_string)).collect())
}

/// The event's rows: counted in ClickHouse where its tables have the entry column, as the host
/// recorded them elsewhere.
async fn rows(ch: Option<&ChClient>, entry_tables: Option<&BTreeSet<String>>, s: &Subject, m: &mut Match) {
    // What the hosts recorded as committed (acknowledged attempts).
    let mut recorded: BTreeMap<String, u64> = BTreeMap::new();
    for a in m.attempts.iter().filter(|a| a.outcome == "acknowledged") {
        for (t, n) in &a.rows {
            *recorded.entry(t.clone()).or_default() += n;
        }
    }
    let mut counted = BTreeSet::new();
    if let (Some(ch), Some(tables), Some(plugin)) = (ch, entry_tables, &s.plugin) {
        let hash = crate::schema::entry_hash(&crate::keys::group_name(plugin), &s.stream, &s.entry_id);
        for t in tables {
            let sql = format!(
                "SELECT count() AS n FROM `{}`.`{}` WHERE {} = {hash} FORMAT JSONEachRow",
                ch.database(),
                t,
                crate::schema::ENTRY_COLUMN
            );
            match ch.query_count(&sql).await {
                Ok(n) if n > 0 || recorded.contains_key(t) => {
                    m.rows.push(Rows { table: t.clone(), count: n, from: "clickhouse".into() });
                    counted.insert(t.clone());
                }
                Ok(_) => {}
                Err(e) => m.notes.push(format!("cannot count the rows in {t}: {e}")),
            }
        }
    }
    for (t, n) in recorded {
        if !counted.contains(&t) {
            m.rows.push(Rows { table: t, count: n, from: "host".into() });
        }
    }
}

/// Merges answers of several hosts (each knows its own attempts; Redis and ClickHouse say the
/// same to all), then tells each event's story again.
pub fn merge(query: &str, answers: Vec<Trace>) -> Trace {
    let mut matches: Vec<Match> = Vec::new();
    for t in answers {
        for m in t.matches {
            let same = |o: &Match| {
                o.plugin == m.plugin && o.stream == m.stream && o.entry_id == m.entry_id && o.job_id == m.job_id
            };
            match matches.iter_mut().find(|o| same(o)) {
                Some(o) => {
                    for a in m.attempts {
                        if !o.attempts.contains(&a) {
                            o.attempts.push(a);
                        }
                    }
                    // Host-recorded rows: each host counted its own attempts.
                    for r in m.rows.into_iter().filter(|r| r.from == "host") {
                        match o.rows.iter_mut().find(|x| x.table == r.table && x.from == "host") {
                            Some(x) => x.count += r.count,
                            None => o.rows.push(r),
                        }
                    }
                }
                None => matches.push(m),
            }
        }
    }
    for m in &mut matches {
        tell(m);
    }
    Trace { query: query.to_string(), matches }
}

/// The event's state and story from its facts (called again after a merge).
pub fn tell(m: &mut Match) {
    m.attempts.sort_by(|a, b| (a.read_at.as_deref(), &a.at).cmp(&(b.read_at.as_deref(), &b.at)));
    let last = m.attempts.last().map(|a| a.outcome.as_str());
    let job_state = m.job.as_ref().and_then(|j| j["state"].as_str()).map(str::to_string);
    m.state = if m.dead_letter.is_some() {
        "dead_lettered"
    } else if let Some(js) = &job_state {
        match js.as_str() {
            "completed" => "acknowledged",
            "failed" => "dead_lettered",
            "delayed" if last == Some("retry") => "retry_scheduled",
            "unknown" => from_attempts(last),
            _ if last == Some("retry") => "retry_scheduled",
            _ => "pending",
        }
    } else if m.pending.is_some() {
        if last == Some("retry") { "retry_scheduled" } else { "pending" }
    } else if last.is_some() {
        from_attempts(last)
    } else if m.read_by_group == Some(true) {
        "acknowledged"
    } else {
        "unknown"
    }
    .to_string();
    let mut story = Vec::new();
    // A job's event id is its job id unless the producer gave one: said once.
    let id = |m: &Match| {
        m.event_id
            .as_ref()
            .filter(|i| m.job_id.as_ref() != Some(*i))
            .map(|i| format!(", event id {i}"))
            .unwrap_or_default()
    };
    let at = m.published_at.as_ref().map(|t| format!(" at {t}")).unwrap_or_default();
    match &m.job_id {
        Some(job) => story.push(format!(
            "{} job {job} of queue {}{}, added{at}{}",
            m.source,
            m.stream,
            m.event_type.as_ref().map(|t| format!(" (event type {t})")).unwrap_or_default(),
            id(m)
        )),
        None => story.push(format!(
            "entry {} of {}, published{at}{}",
            m.entry_id.as_deref().unwrap_or("?"),
            m.stream,
            id(m)
        )),
    }
    match (&m.plugin, &m.job_id) {
        (Some(p), None) => story.push(format!("plugin {p} reads it (consumer group sluice:{p})")),
        (Some(p), Some(_)) => story.push(format!("plugin {p} handles it")),
        (None, _) => {}
    }
    if m.attempts.is_empty() {
        story.push(format!(
            "no attempt is known: the hosts asked do not remember it (each keeps its last {RING_CAPACITY} attempts per pipeline, until it restarts)"
        ));
    }
    for a in &m.attempts {
        let rows = if a.rows.is_empty() {
            "no rows".to_string()
        } else {
            format!("rows: {}", a.rows.iter().map(|(t, n)| format!("{t} {n}")).collect::<Vec<_>>().join(", "))
        };
        let outcome = match a.outcome.as_str() {
            "retry" => format!("failed, to be retried: {}", a.error.as_deref().unwrap_or("?")),
            "dead_lettered" => {
                format!("dead-lettered ({}): {}", a.kind.as_deref().unwrap_or("?"), a.error.as_deref().unwrap_or("?"))
            }
            _ => format!("acknowledged, {rows}"),
        };
        story.push(format!(
            "{} attempt {}: read by host {}, plugin version {} ({}) -> {outcome} (settled {})",
            a.read_at.as_deref().unwrap_or(&a.at),
            a.attempt,
            a.host,
            a.version,
            a.hash,
            a.at
        ));
    }
    if let Some(p) = &m.pending {
        story.push(format!(
            "pending with consumer {} for {:.1} s, delivered {} time(s)",
            p.consumer,
            p.idle_ms as f64 / 1000.0,
            p.deliveries
        ));
    }
    if let Some(j) = &m.job {
        let mut line = format!("the job is {}", j["state"].as_str().unwrap_or("unknown"));
        if let Some(n) = j["attempts_made"].as_u64() {
            line.push_str(&format!(" after {n} attempt(s)"));
        }
        if let Some(r) = j["failed_reason"].as_str() {
            line.push_str(&format!("; failed reason: {r}"));
        }
        story.push(line);
    }
    if let Some(d) = &m.dead_letter {
        let f = |k: &str| d[k].as_str().unwrap_or("?").to_string();
        story.push(format!(
            "dead letter {} in {}: {} after {} attempt(s), version {}, at {}: {}",
            f("dlq_id"),
            crate::keys::DLQ_STREAM,
            f(record::ERROR_KIND),
            f(record::ATTEMPTS),
            f(record::PLUGIN_VERSION),
            f(record::FAILED_AT),
            f(record::ERROR)
        ));
    }
    for r in &m.rows {
        story.push(match r.from.as_str() {
            "clickhouse" => format!("rows in ClickHouse: {} {} (counted by the entry column)", r.table, r.count),
            _ => format!(
                "rows written: {} {} (as the host recorded them; the table has no entry column to count them by)",
                r.table, r.count
            ),
        });
    }
    if m.rows.is_empty() && m.state == "acknowledged" {
        story.push("no rows are known for it".into());
    }
    story.extend(m.notes.iter().cloned());
    story.push(format!("state: {}", m.state.replace('_', " ")));
    m.story = story;
}

fn from_attempts(last: Option<&str>) -> &'static str {
    match last {
        Some("acknowledged") => "acknowledged",
        Some("dead_lettered") => "dead_lettered",
        Some("retry") => "retry_scheduled",
        _ => "unknown",
    }
}

/// What to say when nothing matches `id`.
pub fn not_found(id: &str, queues: &[BullQueue]) -> String {
    let jobs = match queues {
        [] => String::new(),
        q => format!(", nor a job of {}", q.iter().map(|q| q.key()).collect::<Vec<_>>().join(", ")),
    };
    format!(
        "no event {id} found: not in the hosts' recent history (their last {RING_CAPACITY} attempts per pipeline), not an entry of a stream a plugin reads, not in the dead letters{jobs}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_three_forms_and_others_are_refused() {
        assert_eq!(classify("1717245000123-0").unwrap(), Form::Entry);
        assert_eq!(classify("6f1c2a34-9b1e-4d2a-8f00-123456789abc").unwrap(), Form::EventOrJob);
        assert_eq!(classify("42").unwrap(), Form::EventOrJob);
        for bad in ["", "two words", "tab\there", &"x".repeat(MAX_ID_LEN + 1)] {
            let e = classify(bad).unwrap_err().to_string();
            assert!(e.contains("not an id sluice can trace"), "{e}");
        }
    }

    fn attempt(outcome: &str, n: u64, read_at: &str) -> Attempt {
        Attempt {
            at: read_at.into(),
            read_at: Some(read_at.into()),
            host: "h".into(),
            attempt: n,
            version: "1.0.0".into(),
            hash: "abc".into(),
            outcome: outcome.into(),
            error: (outcome != "acknowledged").then(|| "boom".into()),
            kind: None,
            rows: Default::default(),
        }
    }

    #[test]
    fn the_state_follows_redis_then_the_last_attempt() {
        let mut m = Match { stream: "events:t".into(), entry_id: Some("1-0".into()), ..Default::default() };
        tell(&mut m);
        assert_eq!(m.state, "unknown");
        m.attempts = vec![attempt("retry", 1, "2024-01-01T00:00:01.000Z")];
        m.pending = Some(Pending { consumer: "c".into(), idle_ms: 5, deliveries: 1 });
        tell(&mut m);
        assert_eq!(m.state, "retry_scheduled");
        m.pending = None;
        m.attempts.insert(0, attempt("acknowledged", 2, "2024-01-01T00:00:02.000Z"));
        tell(&mut m);
        assert_eq!(m.state, "acknowledged");
        assert!(m.story.iter().any(|l| l.contains("attempt 1") && l.contains("to be retried: boom")), "{:?}", m.story);
        assert_eq!(m.story.last().unwrap(), "state: acknowledged");
    }

    #[test]
    fn merged_hosts_add_their_attempts() {
        let m = |a: Attempt| Match {
            stream: "s".into(),
            entry_id: Some("1-0".into()),
            attempts: vec![a],
            ..Default::default()
        };
        let a = attempt("retry", 1, "2024-01-01T00:00:01.000Z");
        let b = attempt("acknowledged", 2, "2024-01-01T00:00:02.000Z");
        let t = |m: Match| Trace { query: "1-0".into(), matches: vec![m] };
        let merged = merge("1-0", vec![t(m(b.clone())), t(m(a.clone())), t(m(a.clone()))]);
        assert_eq!(merged.matches.len(), 1);
        assert_eq!(merged.matches[0].attempts, vec![a, b]);
        assert_eq!(merged.matches[0].state, "acknowledged");
    }
}
