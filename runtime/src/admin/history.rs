//! The console's last 15 minutes: every 5 seconds a task started with the admin server samples
//! the header figures (events/s, total lag, dead letters, insert errors) and the series per
//! plugin, per table and per stream, into a bounded ring (180 points). Kept in memory only: a
//! restarted host starts with an empty history.
//!
//! The counters are read from the host's own metrics registry (one render every 5 s, the
//! `sluice_*_total` lines taken from it) and the lags from Redis (one `XINFO GROUPS` per
//! pipeline), so the hot path pays nothing for it.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::AdminState;

/// How often a point is taken.
pub const INTERVAL: Duration = Duration::from_secs(5);
/// How many points are kept: 15 minutes.
pub const KEEP: usize = 180;

/// The counters a point's rates come from.
#[derive(Default, Clone)]
struct Counters {
    /// By plugin: handled, retried, dead-lettered.
    plugins: BTreeMap<String, [f64; 3]>,
    /// Handled, by `plugin|event_type` (a pipeline).
    pipelines: BTreeMap<String, f64>,
    /// Rows written, by table.
    rows: BTreeMap<String, f64>,
    insert_errors: f64,
}

impl Counters {
    /// The `sluice_*_total` counters the console follows, out of the Prometheus text.
    fn parse(text: &str) -> Counters {
        let mut c = Counters::default();
        for line in text.lines() {
            let Some((series, value)) = line.rsplit_once(' ') else { continue };
            let Ok(value) = value.parse::<f64>() else { continue };
            let (name, labels) = series.split_once('{').unwrap_or((series, ""));
            let label = |k: &str| {
                let start = labels.find(&format!("{k}=\""))? + k.len() + 2;
                let len = labels[start..].find('"')?;
                Some(labels[start..start + len].to_string())
            };
            let slot = match name {
                "sluice_events_handled_total" => 0,
                "sluice_events_retried_total" => 1,
                "sluice_events_dead_lettered_total" => 2,
                "sluice_rows_written_total" => {
                    if let Some(t) = label("table") {
                        *c.rows.entry(t).or_default() += value;
                    }
                    continue;
                }
                "sluice_insert_errors_total" => {
                    c.insert_errors += value;
                    continue;
                }
                _ => continue,
            };
            let Some(plugin) = label("plugin") else { continue };
            if slot == 0
                && let Some(t) = label("event_type")
            {
                *c.pipelines.entry(format!("{plugin}|{t}")).or_default() += value;
            }
            c.plugins.entry(plugin).or_default()[slot] += value;
        }
        c
    }
}

/// One sample.
#[derive(Clone, Default)]
struct Point {
    at_ms: i64,
    events_per_s: f64,
    lag: Option<i64>,
    dead_letters: Option<i64>,
    insert_errors: f64,
    insert_errors_per_s: f64,
    /// By plugin: handled/s, retried/s, dead-lettered/s.
    plugins: BTreeMap<String, [f64; 3]>,
    /// Rows/s, by table.
    tables: BTreeMap<String, f64>,
    /// By `stream|group`: lag, handled/s (of its plugin and event type, whatever the source).
    streams: BTreeMap<String, (Option<i64>, f64)>,
}

/// The ring of points, and when the last sample was taken with its counters (the base of the
/// next rates).
#[derive(Default)]
pub struct History {
    inner: Mutex<Ring>,
}

type Ring = (VecDeque<Point>, Option<(Instant, Counters)>);

fn rate(now: f64, before: Option<f64>, secs: f64) -> f64 {
    // A counter that went down (a plugin unloaded and loaded again) restarts from zero.
    let d = now - before.unwrap_or(0.0);
    if d < 0.0 { now / secs } else { d / secs }
}

impl History {
    /// Adds a point from the counters now and the lags and dead letters read from Redis
    /// (`None` when Redis could not be read). The first call only sets the counters' base.
    /// `lags` is by `stream|group`, with the pipeline's `plugin|event_type`.
    fn record(
        &self,
        counters: Counters,
        lags: BTreeMap<String, (String, Option<i64>)>,
        dead_letters: Option<i64>,
        now: Instant,
        at_ms: i64,
    ) {
        let mut inner = self.inner.lock().unwrap();
        let (ring, last) = &mut *inner;
        if let Some((then, before)) = last.as_ref() {
            let secs = (now - *then).as_secs_f64().max(0.001);
            let mut p = Point { at_ms, dead_letters, insert_errors: counters.insert_errors, ..Default::default() };
            p.insert_errors_per_s = rate(counters.insert_errors, Some(before.insert_errors), secs);
            for (plugin, c) in &counters.plugins {
                let b = before.plugins.get(plugin);
                let r: [f64; 3] = std::array::from_fn(|i| rate(c[i], b.map(|b| b[i]), secs));
                p.events_per_s += r[0];
                p.plugins.insert(plugin.clone(), r);
            }
            for (table, n) in &counters.rows {
                p.tables.insert(table.clone(), rate(*n, before.rows.get(table).copied(), secs));
            }
            for (key, (pipeline, lag)) in &lags {
                let handled = counters.pipelines.get(pipeline).copied().unwrap_or(0.0);
                p.streams.insert(key.clone(), (*lag, rate(handled, before.pipelines.get(pipeline).copied(), secs)));
            }
            // The sum of the lags known (a BullMQ pipeline has none; nor has a group Redis
            // cannot measure, e.g. after entries were deleted from the middle of its stream).
            let known: Vec<i64> = lags.values().filter_map(|(_, l)| *l).collect();
            p.lag = (!known.is_empty() || lags.is_empty()).then(|| known.iter().sum());
            ring.push_back(p);
            while ring.len() > KEEP {
                ring.pop_front();
            }
        }
        *last = Some((now, counters));
    }

    /// The history as series aligned with `at` (milliseconds since the epoch): the header's,
    /// then per plugin, table and stream; `null` where a series has no value at a point.
    pub fn to_json(&self) -> Value {
        let inner = self.inner.lock().unwrap();
        let ring = &inner.0;
        let at: Vec<i64> = ring.iter().map(|p| p.at_ms).collect();
        let col = |f: &dyn Fn(&Point) -> Value| ring.iter().map(f).collect::<Vec<Value>>();
        let round = |x: f64| (x * 100.0).round() / 100.0;
        let mut plugins = serde_json::Map::new();
        let names: std::collections::BTreeSet<&String> = ring.iter().flat_map(|p| p.plugins.keys()).collect();
        for name in names {
            let s = |i: usize| col(&|p: &Point| json!(p.plugins.get(name).map(|r| round(r[i]))));
            plugins.insert(
                name.clone(),
                json!({"handled_per_s": s(0), "retried_per_s": s(1), "dead_lettered_per_s": s(2)}),
            );
        }
        let mut tables = serde_json::Map::new();
        let names: std::collections::BTreeSet<&String> = ring.iter().flat_map(|p| p.tables.keys()).collect();
        for name in names {
            tables.insert(
                name.clone(),
                json!({"rows_per_s": col(&|p: &Point| json!(p.tables.get(name).map(|r| round(*r))))}),
            );
        }
        let mut streams = serde_json::Map::new();
        let names: std::collections::BTreeSet<&String> = ring.iter().flat_map(|p| p.streams.keys()).collect();
        for name in names {
            streams.insert(
                name.clone(),
                json!({
                    "lag": col(&|p: &Point| json!(p.streams.get(name).and_then(|s| s.0))),
                    "handled_per_s": col(&|p: &Point| json!(p.streams.get(name).map(|s| round(s.1)))),
                }),
            );
        }
        // Totals since the host started, per plugin: handled, retried, dead-lettered.
        let totals: serde_json::Map<String, Value> = inner
            .1
            .as_ref()
            .map(|(_, c)| {
                c.plugins
                    .iter()
                    .map(|(p, v)| (p.clone(), json!({"handled": v[0], "retried": v[1], "dead_lettered": v[2]})))
                    .collect()
            })
            .unwrap_or_default();
        json!({
            "totals": totals,
            "interval_s": INTERVAL.as_secs(),
            "keep": KEEP,
            "at": at,
            "header": {
                "events_per_s": col(&|p: &Point| json!(round(p.events_per_s))),
                "lag": col(&|p: &Point| json!(p.lag)),
                "dead_letters": col(&|p: &Point| json!(p.dead_letters)),
                "insert_errors": col(&|p: &Point| json!(p.insert_errors)),
                "insert_errors_per_s": col(&|p: &Point| json!(round(p.insert_errors_per_s))),
            },
            "plugins": plugins,
            "tables": tables,
            "streams": streams,
        })
    }
}

/// Samples until the admin server stops (the task is aborted with it).
pub async fn run(state: Arc<AdminState>) {
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        sample(&state).await;
    }
}

async fn sample(s: &AdminState) {
    let counters = Counters::parse(&s.metrics.render());
    let mut lags = BTreeMap::new();
    let mut dead_letters = None;
    if let Some(mut conn) = s.redis.get().cloned() {
        for p in s.pipelines() {
            // A slow Redis costs a point's lag, not the sampler.
            let info =
                tokio::time::timeout(Duration::from_secs(2), crate::dlq::group_info(&mut conn, &p.stream, &p.group))
                    .await
                    .ok()
                    .flatten();
            let lag = info.and_then(|g| g.get("lag").and_then(|v| redis::from_redis_value::<i64>(v.clone()).ok()));
            lags.insert(format!("{}|{}", p.stream, p.group), (format!("{}|{}", p.plugin, p.event_type), lag));
        }
        dead_letters = tokio::time::timeout(
            Duration::from_secs(2),
            redis::cmd("XLEN").arg(crate::keys::DLQ_STREAM).query_async::<i64>(&mut conn),
        )
        .await
        .ok()
        .and_then(Result::ok);
    }
    s.history.record(counters, lags, dead_letters, Instant::now(), chrono::Utc::now().timestamp_millis());
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# TYPE sluice_events_handled_total counter
sluice_events_handled_total{plugin="a",event_type="X"} 100
sluice_events_handled_total{plugin="a",event_type="Y"} 50
sluice_events_retried_total{plugin="a",event_type="X"} 4
sluice_events_dead_lettered_total{plugin="a",event_type="X",kind="permanent"} 2
sluice_rows_written_total{table="t"} 300
sluice_insert_errors_total{table="t",class="retry"} 1
sluice_insert_duration_seconds_bucket{table="t",le="0.5"} 3
"#;

    #[test]
    fn counters_are_read_from_the_prometheus_text() {
        let c = Counters::parse(TEXT);
        assert_eq!(c.plugins["a"], [150.0, 4.0, 2.0]);
        assert_eq!(c.pipelines["a|X"], 100.0);
        assert_eq!(c.rows["t"], 300.0);
        assert_eq!(c.insert_errors, 1.0);
    }

    #[test]
    fn points_are_rates_between_samples_and_the_ring_is_bounded() {
        let h = History::default();
        let t0 = Instant::now();
        let lags = || {
            BTreeMap::from([
                ("events:X|sluice:a".to_string(), ("a|X".to_string(), Some(7))),
                ("events:Y|sluice:a".to_string(), ("a|Y".to_string(), Some(3))),
                ("bullmq bull:q|sluice:a".to_string(), ("a|X".to_string(), None)),
            ])
        };
        h.record(Counters::parse(TEXT), lags(), Some(2), t0, 0);
        assert_eq!(h.to_json()["at"].as_array().unwrap().len(), 0, "the first sample is the base");
        let later = TEXT.replace("} 100", "} 200");
        h.record(Counters::parse(&later), lags(), Some(2), t0 + Duration::from_secs(10), 10_000);
        let j = h.to_json();
        assert_eq!(j["header"]["events_per_s"], json!([10.0]));
        assert_eq!(j["header"]["lag"], json!([10]));
        assert_eq!(j["plugins"]["a"]["handled_per_s"], json!([10.0]));
        assert_eq!(j["streams"]["events:X|sluice:a"]["handled_per_s"], json!([10.0]));
        assert_eq!(j["streams"]["events:X|sluice:a"]["lag"], json!([7]));
        assert_eq!(j["streams"]["bullmq bull:q|sluice:a"]["lag"], json!([null]));
        assert_eq!(j["tables"]["t"]["rows_per_s"], json!([0.0]));
        for i in 0..KEEP + 10 {
            h.record(Counters::parse(&later), lags(), None, t0 + Duration::from_secs(20 + i as u64), 0);
        }
        assert_eq!(h.to_json()["at"].as_array().unwrap().len(), KEEP);
    }
}
