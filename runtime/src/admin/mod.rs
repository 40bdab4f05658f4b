//! The admin HTTP server (`SLUICE_ADMIN_ADDR`): liveness and readiness, Prometheus metrics, a
//! JSON API over plugins, streams and dead letters, and the dashboard page at `/`.
//!
//! Reads are open; calls that change anything (reprocess, purge, replay) need
//! `Authorization: Bearer <SLUICE_ADMIN_TOKEN>`, and are refused outright when no token is
//! configured — an admin port is never writable by accident.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::redis_conn::RedisConn;
use anyhow::Result;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::status::{PipelineEntry, PluginEntry, PluginStatus};
use crate::writer::clickhouse::ChClient;

mod console;
pub mod history;
pub mod live;
mod trace;

const DASHBOARD: &str = include_str!("dashboard.html");

/// How long a readiness probe waits for Redis or ClickHouse.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Installs the process-wide metrics recorder; histograms get buckets suited to them.
pub fn install_metrics() -> Result<PrometheusHandle> {
    const SECONDS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
    const EVENTS: &[f64] = &[1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0];
    Ok(PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)?
        .set_buckets_for_metric(Matcher::Suffix("_events".into()), EVENTS)?
        .install_recorder()?)
}

/// What the admin server reads.
pub struct AdminState {
    /// When the process started (`uptime_s`).
    pub started: Instant,
    /// The host's shared Redis connection, once Redis has answered: the admin API is served
    /// from the first second, while the host still waits for its dependencies.
    pub redis: Arc<std::sync::OnceLock<RedisConn>>,
    pub clickhouse: ChClient,
    pub stream_prefix: String,
    pub token: Option<String>,
    /// Plugin files and pipelines, kept current by the deployer (hot reload).
    pub registry: crate::status::SharedRegistry,
    pub metrics: PrometheusHandle,
    /// The BullMQ/bull queues consumed, as key bases `<prefix>:<queue>` (`/api/queues`).
    pub bullmq: Vec<String>,
    /// The console's last 15 minutes, sampled by `history::run`.
    pub history: history::History,
}

impl AdminState {
    /// The Redis connection, or the answer saying what the host is still waiting for.
    #[allow(clippy::result_large_err)]
    fn redis(&self) -> Result<RedisConn, Response> {
        self.redis.get().cloned().ok_or_else(|| error(StatusCode::SERVICE_UNAVAILABLE, not_connected("Redis")))
    }
    fn plugins(&self) -> Vec<PluginEntry> {
        self.registry.read().unwrap().plugins.values().cloned().collect()
    }
    fn pipelines(&self) -> Vec<PipelineEntry> {
        self.registry.read().unwrap().pipelines.clone()
    }
}

/// Binds the admin address (at start-up, so that a bad or busy address is one clear error).
pub async fn bind(addr: &str) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        anyhow::anyhow!("cannot listen on the admin address {addr} (SLUICE_ADMIN_ADDR; `off` disables it): {e}")
    })
}

/// Serves the admin API until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, state: Arc<AdminState>) -> Result<()> {
    tracing::info!(addr = %listener.local_addr()?, "admin API listening");
    let sampler = tokio::spawn(history::run(state.clone()));
    let served = axum::serve(listener, router(state)).await;
    sampler.abort();
    served?;
    Ok(())
}

fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/", get(|| async { Html(DASHBOARD) }))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics_text))
        .route("/api/plugins", get(plugins))
        .route("/api/streams", get(streams))
        .route("/api/errors", get(|| async { Json(crate::status::recent_errors()) }))
        .route("/api/dlq", get(dlq_list).delete(dlq_purge))
        .route("/api/dlq/reprocess", post(dlq_reprocess_all))
        .route("/api/dlq/{id}", get(dlq_get))
        .route("/api/dlq/{id}/reprocess", post(dlq_reprocess_one))
        .route("/api/replay", post(replay))
        .route(
            "/api/rollouts",
            get(|State(s): State<Arc<AdminState>>| async move { Json(s.registry.read().unwrap().rollouts.to_json()) }),
        )
        .route("/api/trace/{id}", get(trace::trace))
        .merge(console::routes())
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint; see docs/operations.md, \"Admin API\"") })
        .with_state(state)
}

/// Why a dependency is not connected yet: what the start-up wait last saw.
fn not_connected(what: &str) -> String {
    crate::status::waits()
        .into_iter()
        .find(|(w, _)| w.starts_with(what))
        .map(|(_, m)| m)
        .unwrap_or_else(|| format!("the host has not connected to {what} yet"))
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({"error": message.into()}))).into_response()
}

fn internal(e: anyhow::Error) -> Response {
    error(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}"))
}

/// A handler's answer: the response, or the error response it stopped at (so that handlers
/// read as their steps, with `?`).
type Answer = Result<Response, Response>;

/// Checks the bearer token of a mutating call. (The refusal is the response itself: handlers
/// return it as it is.)
#[allow(clippy::result_large_err)]
fn authorize(state: &AdminState, headers: &HeaderMap) -> Result<(), Response> {
    let Some(token) = &state.token else {
        return Err(error(
            StatusCode::FORBIDDEN,
            "changes through the admin API are disabled: set SLUICE_ADMIN_TOKEN to enable them",
        ));
    };
    let given =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    // Compare in constant time, so the token cannot be guessed byte by byte from timings.
    let ok = given.is_some_and(|g| {
        g.len() == token.len() && g.bytes().zip(token.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    });
    if ok { Ok(()) } else { Err(error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token")) }
}

async fn health(State(s): State<Arc<AdminState>>) -> Json<Value> {
    Json(json!({"status": "ok", "uptime_s": s.started.elapsed().as_secs()}))
}

async fn probe_redis(s: &AdminState) -> Result<(), String> {
    let Some(mut conn) = s.redis.get().cloned() else { return Err(not_connected("Redis")) };
    match tokio::time::timeout(PROBE_TIMEOUT, redis::cmd("PING").query_async::<String>(&mut conn)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {PROBE_TIMEOUT:?}")),
    }
}

async fn probe_clickhouse(s: &AdminState) -> Result<(), String> {
    match tokio::time::timeout(PROBE_TIMEOUT, s.clickhouse.ping()).await {
        Ok(Ok(_)) => Ok(()),
        // At start, the wait's message says more (attempts, next try).
        Ok(Err(_)) if crate::status::waits().iter().any(|(w, _)| w.starts_with("ClickHouse")) => {
            Err(not_connected("ClickHouse"))
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {PROBE_TIMEOUT:?}")),
    }
}

fn component(r: &Result<(), String>) -> Value {
    match r {
        Ok(()) => json!({"ok": true}),
        Err(e) => json!({"ok": false, "error": e}),
    }
}

/// Ready: Redis and ClickHouse answer, every plugin file found is running (a refused or
/// broken plugin is a deployment error that should stop a rollout), and every pipeline can
/// read (a pipeline whose reads fail is named, with the error).
async fn ready(State(s): State<Arc<AdminState>>) -> Response {
    let (redis, ch) = tokio::join!(probe_redis(&s), probe_clickhouse(&s));
    let entries = s.plugins();
    let plugins: Vec<Value> =
        entries.iter().map(|p| json!({"file": p.file, "name": p.plugin.as_ref().map(|x| &x.name), "status": p.status, "error": p.error})).collect();
    let all_running = entries.iter().all(|p| p.status.is_settled());
    let starting = s.registry.read().unwrap().starting;
    let stalls = crate::status::stalls();
    let ready = redis.is_ok() && ch.is_ok() && all_running && !starting && stalls.is_empty();
    metrics::gauge!("sluice_up", "component" => "redis").set(redis.is_ok() as u8 as f64);
    metrics::gauge!("sluice_up", "component" => "clickhouse").set(ch.is_ok() as u8 as f64);
    let mut body =
        json!({"ready": ready, "redis": component(&redis), "clickhouse": component(&ch), "plugins": plugins});
    if starting {
        let waits = crate::status::waits();
        body["starting"] = match waits.is_empty() {
            true => json!("the host is starting: the plugins directory is being loaded"),
            false => json!(waits.into_iter().map(|(_, m)| m).collect::<Vec<_>>().join("; ")),
        };
    }
    if !stalls.is_empty() {
        body["stalled"] = json!(stalls
            .iter()
            .map(|st| json!({"pipeline": st.pipeline, "error": st.error, "failed_reads": st.attempts, "for_s": st.since.elapsed().as_secs()}))
            .collect::<Vec<_>>());
    }
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(body)).into_response()
}

fn plugin_json(p: &PluginEntry) -> Value {
    let mut v = json!({"file": p.file, "status": p.status, "error": p.error});
    if let Some(l) = &p.plugin {
        v["name"] = json!(l.name);
        v["version"] = json!(l.version);
        v["hash"] = json!(l.hash);
        v["subscriptions"] = json!(l.subscriptions);
        v["tables"] = json!(l.tables.iter().map(|(t, _)| t.clone()).collect::<Vec<_>>());
        // What a crash can cost, per table (see `writer::dedup`).
        v["guarantees"] = json!(l.tables.iter().cloned().collect::<BTreeMap<_, _>>());
        v["limits"] = json!({
            "call_timeout_ms": l.call_timeout_ms,
            "max_memory_bytes": l.max_memory_bytes,
            "max_rows_per_event": l.max_rows_per_event,
            "max_bytes_per_event": l.max_bytes_per_event,
        });
        v["memory_bytes"] = json!(l.memory_bytes());
    }
    v
}

async fn plugins(State(s): State<Arc<AdminState>>) -> Json<Vec<Value>> {
    Json(s.plugins().iter().map(plugin_json).collect())
}

/// The live consumers of each (stream, group): the hosts whose liveness key is there (`live`).
type Live = BTreeMap<(String, String), std::collections::BTreeSet<String>>;

async fn live_readers(conn: &mut RedisConn) -> Option<Live> {
    live::hosts(conn).await.ok().map(|h| live::readers(&h))
}

/// The names of a group's consumers, as the group holds them (stopped hosts included).
async fn registered_consumers(conn: &mut RedisConn, stream: &str, group: &str) -> Option<Vec<String>> {
    let consumers: Vec<std::collections::HashMap<String, redis::Value>> =
        redis::cmd("XINFO").arg("CONSUMERS").arg(stream).arg(group).query_async(conn).await.ok()?;
    Some(
        consumers
            .iter()
            .filter_map(|c| c.get("name").and_then(|v| redis::from_redis_value::<String>(v.clone()).ok()))
            .collect(),
    )
}

/// Length, lag, pending count, consumers (live and registered) and oldest pending age of a
/// pipeline's stream and group.
async fn stream_info(conn: &mut RedisConn, p: &PipelineEntry, live: Option<&Live>) -> Value {
    let length: i64 = redis::cmd("XLEN").arg(&p.stream).query_async(conn).await.unwrap_or(0);
    let group = crate::dlq::group_info(conn, &p.stream, &p.group).await;
    let field =
        |k: &str| group.as_ref().and_then(|g| g.get(k)).and_then(|v| redis::from_redis_value::<i64>(v.clone()).ok());
    // XPENDING summary: [count, smallest id, greatest id, consumers]; the smallest id's time
    // is when the oldest unfinished event was published.
    let summary: (i64, Option<String>, Option<String>, redis::Value) = redis::cmd("XPENDING")
        .arg(&p.stream)
        .arg(&p.group)
        .query_async(conn)
        .await
        .unwrap_or((0, None, None, redis::Value::Nil));
    let oldest_ms = summary.1.as_deref().and_then(|id| id.split('-').next()?.parse::<i64>().ok());
    let age_s = oldest_ms.map(|ms| ((chrono::Utc::now().timestamp_millis() - ms).max(0)) as f64 / 1000.0);
    let registered = registered_consumers(conn, &p.stream, &p.group).await.unwrap_or_default();
    let readers = live.and_then(|l| l.get(&(p.stream.clone(), p.group.clone())));
    // Consumers the group holds whose host is gone (stopped, or crashed 15 s ago or more).
    let gone: Vec<&String> = registered.iter().filter(|c| readers.is_none_or(|r| !r.contains(*c))).take(20).collect();
    json!({
        "plugin": p.plugin, "event_type": p.event_type, "stream": p.stream, "group": p.group,
        "length": length, "lag": field("lag"), "pending": field("pending"),
        "consumers": live.map(|_| readers.map_or(0, |r| r.len())), "consumers_registered": registered.len(),
        "consumers_gone": if live.is_some() { json!(gone) } else { Value::Null },
        "oldest_pending_age_s": age_s,
    })
}

async fn streams(State(s): State<Arc<AdminState>>) -> Answer {
    let mut conn = s.redis()?;
    let pipelines = s.pipelines();
    let (retention, unsubscribed) = {
        let reg = s.registry.read().unwrap();
        (reg.retention.clone(), reg.unsubscribed.clone())
    };
    let mut out = Vec::with_capacity(pipelines.len() + unsubscribed.len());
    let live = live_readers(&mut conn).await;
    for p in &pipelines {
        let mut row = stream_info(&mut conn, p, live.as_ref()).await;
        row["subscribed"] = json!(true);
        row["retention"] = json!(retention.get(&p.stream));
        out.push(row);
    }
    // Streams under the prefix that nobody here reads (see `upkeep`).
    for u in &unsubscribed {
        out.push(json!({
            "plugin": null, "event_type": u.event_type, "stream": u.stream, "group": null,
            "length": u.length, "subscribed": false, "retention": retention.get(&u.stream),
        }));
    }
    Ok(Json(out).into_response())
}

/// Prometheus text. Gauges that live in Redis (stream lengths, lag, pending, dead letters) and
/// plugin memory are read now, so a scrape always sees the current values.
async fn metrics_text(State(s): State<Arc<AdminState>>) -> Response {
    if let Some(mut conn) = s.redis.get().cloned() {
        redis_gauges(&s, &mut conn).await;
    }
    let plugins = s.plugins();
    for state in PluginStatus::ALL {
        let n = plugins.iter().filter(|p| p.status == state).count();
        metrics::gauge!("sluice_plugins", "state" => state.name()).set(n as f64);
    }
    for p in plugins.iter().filter_map(|p| p.plugin.as_ref()) {
        metrics::gauge!("sluice_plugin_memory_bytes", "plugin" => p.name.clone()).set(p.memory_bytes() as f64);
    }
    metrics::gauge!("sluice_pipelines_stalled").set(crate::status::stalls().len() as f64);
    metrics::gauge!("sluice_uptime_seconds").set(s.started.elapsed().as_secs_f64());
    s.metrics.run_upkeep();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], s.metrics.render()).into_response()
}

/// The gauges read from Redis: per pipeline stream, and the dead letters.
async fn redis_gauges(s: &AdminState, conn: &mut RedisConn) {
    let live = live_readers(conn).await;
    for p in &s.pipelines() {
        let info = stream_info(conn, p, live.as_ref()).await;
        let labels = [("stream", p.stream.clone()), ("group", p.group.clone())];
        metrics::gauge!("sluice_stream_length", "stream" => p.stream.clone())
            .set(info["length"].as_f64().unwrap_or(0.0));
        metrics::gauge!("sluice_consumer_group_pending", &labels).set(info["pending"].as_f64().unwrap_or(0.0));
        if let Some(lag) = info["lag"].as_f64() {
            metrics::gauge!("sluice_consumer_group_lag", &labels).set(lag);
        }
        if let Some(live) = info["consumers"].as_f64() {
            metrics::gauge!("sluice_consumer_group_live_consumers", &labels).set(live);
        }
    }
    if let Ok(n) = redis::cmd("XLEN").arg(crate::keys::DLQ_STREAM).query_async::<i64>(conn).await {
        metrics::gauge!("sluice_dead_letters").set(n as f64);
    }
}

#[derive(Deserialize)]
struct DlqQuery {
    plugin: Option<String>,
    event_type: Option<String>,
    kind: Option<String>,
    limit: Option<usize>,
}

impl DlqQuery {
    #[allow(clippy::result_large_err)]
    fn filter(&self) -> Result<crate::dlq::Filter<'_>, Response> {
        let kind = self.kind.as_deref().map(str::parse).transpose().map_err(|e| error(StatusCode::BAD_REQUEST, e))?;
        Ok(crate::dlq::Filter { plugin: self.plugin.as_deref(), event_type: self.event_type.as_deref(), kind })
    }
}

/// A bad dead-letter id is the caller's mistake (400), not the server's.
#[allow(clippy::result_large_err)]
fn dlq_id(id: &str) -> Result<(), Response> {
    crate::dlq::check_id(id).map_err(|e| error(StatusCode::BAD_REQUEST, format!("{e:#}")))
}

async fn dlq_list(State(s): State<Arc<AdminState>>, Query(q): Query<DlqQuery>) -> Answer {
    let mut conn = s.redis()?;
    let entries =
        crate::dlq::list(&mut conn, q.filter()?, q.limit.unwrap_or(100).min(10_000)).await.map_err(internal)?;
    Ok(Json(entries.iter().map(|e| e.to_json()).collect::<Vec<_>>()).into_response())
}

async fn dlq_get(State(s): State<Arc<AdminState>>, Path(id): Path<String>) -> Answer {
    dlq_id(&id)?;
    let mut conn = s.redis()?;
    match crate::dlq::get(&mut conn, &id).await.map_err(internal)? {
        Some(e) => Ok(Json(e.to_json()).into_response()),
        None => Err(error(StatusCode::NOT_FOUND, format!("no dead letter {id} in sluice:dlq"))),
    }
}

async fn dlq_reprocess_one(State(s): State<Arc<AdminState>>, headers: HeaderMap, Path(id): Path<String>) -> Answer {
    authorize(&s, &headers)?;
    dlq_id(&id)?;
    let mut conn = s.redis()?;
    let entry = crate::dlq::get(&mut conn, &id)
        .await
        .map_err(internal)?
        .ok_or_else(|| error(StatusCode::NOT_FOUND, format!("no dead letter {id} in sluice:dlq")))?;
    match crate::dlq::reprocess(&mut conn, &entry).await.map_err(internal)? {
        Some((stream, new_id)) => {
            tracing::info!(dlq_id = %id, stream = %stream, entry_id = %new_id, "dead letter reprocessed through the admin API");
            Ok(Json(json!({"reprocessed": 1, "stream": stream, "entry_id": new_id})).into_response())
        }
        None => Err(error(StatusCode::NOT_FOUND, format!("dead letter {id} was removed meanwhile"))),
    }
}

async fn dlq_reprocess_all(State(s): State<Arc<AdminState>>, headers: HeaderMap, Query(q): Query<DlqQuery>) -> Answer {
    authorize(&s, &headers)?;
    let mut conn = s.redis()?;
    let entries = crate::dlq::list(&mut conn, q.filter()?, usize::MAX).await.map_err(internal)?;
    let mut n = 0;
    for e in &entries {
        if crate::dlq::reprocess(&mut conn, e).await.map_err(internal)?.is_some() {
            n += 1;
        }
    }
    tracing::info!(count = n, plugin = ?q.plugin, "dead letters reprocessed through the admin API");
    Ok(Json(json!({"reprocessed": n})).into_response())
}

async fn dlq_purge(State(s): State<Arc<AdminState>>, headers: HeaderMap, Query(q): Query<DlqQuery>) -> Answer {
    authorize(&s, &headers)?;
    let mut conn = s.redis()?;
    let entries = crate::dlq::list(&mut conn, q.filter()?, usize::MAX).await.map_err(internal)?;
    let n = crate::dlq::delete(&mut conn, &entries).await.map_err(internal)?;
    tracing::info!(count = n, plugin = ?q.plugin, "dead letters purged through the admin API");
    Ok(Json(json!({"purged": n})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayRequest {
    plugin: String,
    from: String,
    #[serde(default)]
    to: Option<String>,
    #[serde(default)]
    types: Vec<String>,
}

/// A replay's body, and its positions as stream ids (`from`, `to`).
#[allow(clippy::result_large_err)]
fn replay_request(body: &[u8]) -> Result<(ReplayRequest, String, String), Response> {
    let req: ReplayRequest = serde_json::from_slice(body).map_err(|e| {
        error(StatusCode::BAD_REQUEST, format!("expected {{\"plugin\", \"from\", \"to\"?, \"types\"?}}: {e}"))
    })?;
    let to_arg = req.to.as_deref().unwrap_or("+");
    let (from, to) = crate::dlq::position(&req.from)
        .and_then(|f| {
            let t = crate::dlq::position(to_arg)?;
            crate::dlq::check_range(&f, &t, &req.from, to_arg)?;
            Ok((f, t))
        })
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("{e:#}")))?;
    Ok((req, from, to))
}

/// The event types a replay covers: those given, else every one the plugin subscribes to.
async fn replay_types(s: &AdminState, conn: &mut RedisConn, req: &ReplayRequest) -> Result<Vec<String>, Response> {
    let types = if req.types.is_empty() {
        crate::dlq::subscribed_types(conn, &s.stream_prefix, &req.plugin).await.map_err(internal)?
    } else {
        req.types.clone()
    };
    if types.is_empty() {
        return Err(error(StatusCode::NOT_FOUND, format!("no stream has the consumer group sluice:{}", req.plugin)));
    }
    Ok(types)
}

/// Re-feeds stream history to one plugin; answers when it is queued (the pipelines then work
/// through the replay streams at their own pace). `POST /api/replay/plan` says beforehand what
/// it would queue.
async fn replay(State(s): State<Arc<AdminState>>, headers: HeaderMap, body: axum::body::Bytes) -> Answer {
    authorize(&s, &headers)?;
    let (req, from, to) = replay_request(&body)?;
    let mut conn = s.redis()?;
    let types = replay_types(&s, &mut conn, &req).await?;
    let mut total = 0;
    for t in &types {
        let stream = format!("{}{t}", s.stream_prefix);
        total += crate::dlq::replay(&mut conn, &stream, &req.plugin, t, &from, &to, |_| {}).await.map_err(internal)?;
    }
    tracing::info!(plugin = %req.plugin, events = total, types = ?types, "replay queued through the admin API");
    Ok(Json(json!({"replayed": total, "plugin": req.plugin, "types": types})).into_response())
}
