//! The endpoints the console page reads besides the original API: the last 15 minutes
//! (`/api/history`), the tables' insert figures, the BullMQ queues' counts, dead letters a page
//! at a time with their total and facets, reprocessing a selection, and the replay plan shown
//! before a replay runs.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{AdminState, Answer, DlqQuery, authorize, error, internal};
use crate::dead_letter as record;

pub(super) fn routes() -> Router<Arc<AdminState>> {
    Router::new()
        .route("/api/history", get(|State(s): State<Arc<AdminState>>| async move { Json(s.history.to_json()) }))
        .route("/api/tables", get(tables))
        .route("/api/queues", get(queues))
        .route("/api/dlq/page", get(dlq_page))
        .route("/api/dlq/reprocess-selected", post(dlq_reprocess_selected))
        .route("/api/replay/plan", post(replay_plan))
}

/// Per table: inserts, rows, errors, last insert, p50/p99 of the recent inserts' latency.
async fn tables() -> Json<Vec<crate::writer::stats::TableStats>> {
    Json(crate::writer::stats::snapshot())
}

/// The job counts of one BullMQ/bull queue, by the key layout both libraries share:
/// `<prefix>:<queue>:wait|paused|active` are lists, `delayed|prioritized|failed|completed|
/// waiting-children` sorted sets (`prioritized` is BullMQ's; classic bull keeps prioritized
/// jobs in `wait`).
async fn queue_counts(conn: &mut crate::redis_conn::RedisConn, base: &str) -> redis::RedisResult<Value> {
    const LISTS: [&str; 3] = ["wait", "paused", "active"];
    const SETS: [&str; 5] = ["delayed", "prioritized", "failed", "completed", "waiting-children"];
    let mut p = redis::pipe();
    for l in LISTS {
        p.cmd("LLEN").arg(format!("{base}:{l}"));
    }
    for z in SETS {
        p.cmd("ZCARD").arg(format!("{base}:{z}"));
    }
    p.cmd("HEXISTS").arg(format!("{base}:meta")).arg("paused");
    let (lists, sets, paused): ([u64; 3], [u64; 5], bool) = {
        let v: Vec<redis::Value> = p.query_async(conn).await?;
        let n = |i: usize| redis::from_redis_value::<u64>(v[i].clone()).unwrap_or(0);
        ([n(0), n(1), n(2)], [n(3), n(4), n(5), n(6), n(7)], n(8) == 1)
    };
    let (prefix, name) = base.split_once(':').unwrap_or(("", base));
    Ok(json!({
        "queue": name, "prefix": prefix, "key": base, "paused": paused,
        "waiting": lists[0] + lists[1], "active": lists[2], "delayed": sets[0], "prioritized": sets[1],
        "failed": sets[2], "completed": sets[3], "waiting_children": sets[4],
    }))
}

async fn queues(State(s): State<Arc<AdminState>>) -> Answer {
    if s.bullmq.is_empty() {
        return Ok(Json(Vec::<Value>::new()).into_response());
    }
    let mut conn = s.redis()?;
    let mut out = Vec::with_capacity(s.bullmq.len());
    for base in &s.bullmq {
        out.push(queue_counts(&mut conn, base).await.map_err(|e| internal(e.into()))?);
    }
    Ok(Json(out).into_response())
}

#[derive(Deserialize)]
struct PageQuery {
    // Not `#[serde(flatten)] DlqQuery`: query strings are all text, and a flattened number
    // is refused by serde_urlencoded.
    plugin: Option<String>,
    event_type: Option<String>,
    kind: Option<String>,
    limit: Option<usize>,
    offset: Option<usize>,
    /// `newest` (the default) or `oldest` first.
    order: Option<String>,
}

/// Counts by value of a dead-letter field.
fn facet(entries: &[record::DeadLetterEntry], field: &str) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for e in entries {
        *m.entry(e.get(field).unwrap_or_default()).or_default() += 1;
    }
    m
}

/// What identifies the dead letters' current state: their count and the newest and oldest ids
/// (an addition changes the newest, a deletion or trim the count).
type DlqState = (usize, Option<String>, Option<String>);

/// The facets of the dead letters as they were at a state: reading all of them again is only
/// needed when they changed (the console asks every 2 s).
static FACETS: std::sync::Mutex<Option<(DlqState, Value)>> = std::sync::Mutex::new(None);

async fn dlq_state(conn: &mut crate::redis_conn::RedisConn) -> anyhow::Result<DlqState> {
    let dlq = crate::keys::DLQ_STREAM;
    let len: usize = redis::cmd("XLEN").arg(dlq).query_async(conn).await?;
    let end = |cmd: &'static str, from: &'static str, to: &'static str| {
        let mut c = redis::cmd(cmd);
        c.arg(dlq).arg(from).arg(to).arg("COUNT").arg(1);
        c
    };
    let newest: Vec<(String, redis::Value)> = end("XREVRANGE", "+", "-").query_async(conn).await?;
    let oldest: Vec<(String, redis::Value)> = end("XRANGE", "-", "+").query_async(conn).await?;
    Ok((len, newest.into_iter().next().map(|e| e.0), oldest.into_iter().next().map(|e| e.0)))
}

fn facets(all: &[record::DeadLetterEntry]) -> Value {
    json!({
        "plugin": facet(all, record::PLUGIN),
        "event_type": facet(all, record::EVENT_TYPE),
        "kind": facet(all, record::ERROR_KIND),
    })
}

/// `{"total", "offset", "entries": [...], "all", "facets": {"plugin", "event_type", "kind"}}`:
/// `total` matches the filter, `all` is every dead letter, the facets count all of them by
/// plugin, type and kind (what the filters can choose). Without a filter, a page is read
/// directly (`XREVRANGE`/`XRANGE`) and the facets come from a cache while the dead letters do
/// not change: a console left open on a large dead-letter stream reads it whole only when it
/// changes, or when filtered.
async fn dlq_page(State(s): State<Arc<AdminState>>, Query(q): Query<PageQuery>) -> Answer {
    let dq =
        DlqQuery { plugin: q.plugin.clone(), event_type: q.event_type.clone(), kind: q.kind.clone(), limit: q.limit };
    let filter = dq.filter()?;
    let newest = match q.order.as_deref() {
        None | Some("newest") => true,
        Some("oldest") => false,
        Some(o) => return Err(error(StatusCode::BAD_REQUEST, format!("order `{o}`: give newest or oldest"))),
    };
    let offset = q.offset.unwrap_or(0);
    let limit = q.limit.unwrap_or(50).min(10_000);
    let mut conn = s.redis()?;
    let state = dlq_state(&mut conn).await.map_err(internal)?;
    let cached = FACETS.lock().unwrap().as_ref().filter(|(at, _)| *at == state).map(|(_, f)| f.clone());
    let unfiltered = filter.plugin.is_none() && filter.event_type.is_none() && filter.kind.is_none();
    let (total, all, entries, facets) = match (unfiltered, cached) {
        (true, Some(facets)) => {
            let (cmd, from, to) = if newest { ("XREVRANGE", "+", "-") } else { ("XRANGE", "-", "+") };
            let v: redis::Value = redis::cmd(cmd)
                .arg(crate::keys::DLQ_STREAM)
                .arg(from)
                .arg(to)
                .arg("COUNT")
                .arg(offset + limit)
                .query_async(&mut conn)
                .await
                .map_err(|e| internal(e.into()))?;
            let page = record::parse_entries(v).map_err(internal)?;
            let entries: Vec<Value> = page.iter().skip(offset).take(limit).map(|e| e.to_json()).collect();
            (state.0, state.0, entries, facets)
        }
        _ => {
            let all = crate::dlq::list(&mut conn, Default::default(), usize::MAX).await.map_err(internal)?;
            let facets = facets(&all);
            // The state read before the list: a change in between only costs a later re-read.
            let count = all.len();
            *FACETS.lock().unwrap() = Some((state, facets.clone()));
            let mut matching: Vec<&record::DeadLetterEntry> = all.iter().filter(|e| filter.matches(e)).collect();
            if newest {
                matching.reverse();
            }
            let entries: Vec<Value> = matching.iter().skip(offset).take(limit).map(|e| e.to_json()).collect();
            (matching.len(), count, entries, facets)
        }
    };
    Ok(Json(json!({"total": total, "offset": offset, "entries": entries, "all": all, "facets": facets}))
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Selection {
    ids: Vec<String>,
}

/// Reprocesses the dead letters named: `{"reprocessed": n, "missing": [ids gone meanwhile]}`.
async fn dlq_reprocess_selected(
    State(s): State<Arc<AdminState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Answer {
    authorize(&s, &headers)?;
    let sel: Selection = serde_json::from_slice(&body).map_err(|e| {
        error(StatusCode::BAD_REQUEST, format!("expected {{\"ids\": [\"<dead-letter id>\", ...]}}: {e}"))
    })?;
    if sel.ids.is_empty() {
        return Err(error(StatusCode::BAD_REQUEST, "no dead letter selected: `ids` is empty"));
    }
    for id in &sel.ids {
        super::dlq_id(id)?;
    }
    let mut conn = s.redis()?;
    let (mut n, mut missing) = (0, Vec::new());
    for id in &sel.ids {
        let done = match crate::dlq::get(&mut conn, id).await.map_err(internal)? {
            Some(e) => crate::dlq::reprocess(&mut conn, &e).await.map_err(internal)?.is_some(),
            None => false,
        };
        if done { n += 1 } else { missing.push(id.clone()) }
    }
    tracing::info!(count = n, missing = missing.len(), "selected dead letters reprocessed through the admin API");
    Ok(Json(json!({"reprocessed": n, "missing": missing})).into_response())
}

/// What `POST /api/replay` with the same body would queue, without queueing anything:
/// per event type, the stream, the replay stream it would go to, how many entries and the
/// first and last ids.
async fn replay_plan(State(s): State<Arc<AdminState>>, body: axum::body::Bytes) -> Answer {
    let (req, from, to) = super::replay_request(&body)?;
    let mut conn = s.redis()?;
    let types = super::replay_types(&s, &mut conn, &req).await?;
    let mut plan = Vec::with_capacity(types.len());
    let mut total = 0;
    for t in &types {
        let stream = format!("{}{t}", s.stream_prefix);
        let (n, first, last) = crate::dlq::count_range(&mut conn, &stream, &from, &to).await.map_err(internal)?;
        total += n;
        plan.push(json!({
            "event_type": t, "stream": stream, "target": crate::keys::replay_stream(&req.plugin, t),
            "entries": n, "first": first, "last": last,
        }));
    }
    Ok(Json(json!({"plugin": req.plugin, "from": from, "to": to, "types": plan, "total": total})).into_response())
}
