//! The admin server of a host running on real Redis and ClickHouse: every endpoint, metrics
//! that parse as Prometheus text and move when events flow, readiness following ClickHouse,
//! bearer-token rules for mutating calls, and the dashboard in headless Chromium.

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;
use sluice_tests::{
    ClickHouse, Host, Redis, Release, config_file, on_every_release, plugin_dir_with, plugins_dir, sluice, wait_until,
};

const TOKEN: &str = "test-admin-token";

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// Parses Prometheus text format 0.0.4: every line is a comment (`# HELP`/`# TYPE`) or
/// `name{labels} value`; returns samples as (name, labels, value). Fails on anything else.
fn parse_prometheus(text: &str) -> Result<Vec<(String, HashMap<String, String>, f64)>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.is_empty() || line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').with_context(|| format!("line {}: no value: {line}", i + 1))?;
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().with_context(|| format!("line {}: bad value: {line}", i + 1))?,
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.strip_suffix('}').with_context(|| format!("line {}: unclosed labels", i + 1))?),
            None => (series, ""),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            bail!("line {}: bad metric name: {line}", i + 1);
        }
        let mut map = HashMap::new();
        for pair in labels.split("\",").filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once("=\"").with_context(|| format!("line {}: bad label: {line}", i + 1))?;
            map.insert(k.to_string(), v.trim_end_matches('"').to_string());
        }
        out.push((name.to_string(), map, value));
    }
    Ok(out)
}

fn sum(samples: &[(String, HashMap<String, String>, f64)], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|(n, l, _)| n == name && labels.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v)))
        .map(|(_, _, v)| v)
        .sum()
}

fn start(redis: &Redis, ch: &ClickHouse, plugins: &std::path::Path, token: Option<&str>) -> Result<Host> {
    let cfg = tempfile::tempdir()?.keep();
    let config = config_file(&cfg, "insert_linger_ms = 50\nretry_base_ms = 100\nhousekeeping_interval_ms = 300\n")?
        .display()
        .to_string();
    let mut env = vec![("SLUICE_CONFIG", config.as_str())];
    if let Some(t) = token {
        env.push(("SLUICE_ADMIN_TOKEN", t));
    }
    let h = Host::start(redis, ch, plugins, &env)?;
    h.wait_running(Duration::from_secs(60))?;
    Ok(h)
}

fn every_endpoint_answers_metrics_move_readiness_follows_clickhouse_and_changes_need_the_token(
    release: Release,
) -> Result<()> {
    let redis = Redis::start()?;
    let mut ch = ClickHouse::start(release)?;
    let dir =
        plugin_dir_with(&[plugins_dir().join("promo-code-analytics.wasm"), plugins_dir().join("user-stats.wasm")])?;
    let host = start(&redis, &ch, dir.path(), Some(TOKEN))?;

    let (status, body) = host.admin("GET", "/health", &[])?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["status"], "ok");
    let (status, body) = host.admin("GET", "/ready", &[])?;
    assert_eq!(status, 200, "{body}");
    let ready = json(&body);
    assert_eq!(
        (ready["ready"].as_bool(), ready["redis"]["ok"].as_bool(), ready["clickhouse"]["ok"].as_bool()),
        (Some(true), Some(true), Some(true))
    );

    // Events flow; the counters follow.
    let env = [("SLUICE_REDIS_URL", redis.url())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    sluice(&["publish", "PromoCodeAppliedEvent", "--count", "1000"], &env)?;
    wait_until("1000 promo rows", Duration::from_secs(60), || {
        ch.query("SELECT count() FROM analytics.promo_code_usages_analytics").map(|c| c == "1000").unwrap_or(false)
    })?;
    let (status, text) = host.admin("GET", "/metrics", &[])?;
    assert_eq!(status, 200);
    let samples = parse_prometheus(&text)?;
    assert!(text.contains("# TYPE sluice_events_handled_total counter"), "{text}");
    assert!(text.contains("# TYPE sluice_plugin_call_duration_seconds histogram"), "{text}");
    let promo = [("plugin", "promo-code-analytics"), ("event_type", "PromoCodeAppliedEvent")];
    wait_until("handled counter at 1000", Duration::from_secs(10), || {
        host.admin("GET", "/metrics", &[])
            .ok()
            .and_then(|(_, t)| parse_prometheus(&t).ok())
            .is_some_and(|s| sum(&s, "sluice_events_handled_total", &promo) == 1000.0)
    })?;
    assert!(sum(&samples, "sluice_events_read_total", &promo) >= 1000.0);
    assert_eq!(sum(&samples, "sluice_rows_written_total", &[("table", "promo_code_usages_analytics")]), 1000.0);
    assert!(sum(&samples, "sluice_bytes_written_total", &[("table", "promo_code_usages_analytics")]) > 50_000.0);
    assert!(sum(&samples, "sluice_insert_duration_seconds_count", &[("table", "promo_code_usages_analytics")]) >= 1.0);
    assert!(sum(&samples, "sluice_plugin_call_duration_seconds_count", &[("plugin", "user-stats")]) >= 1.0);
    assert!(sum(&samples, "sluice_batch_size_events_sum", &[("plugin", "user-stats")]) >= 1000.0);
    assert_eq!(sum(&samples, "sluice_stream_length", &[("stream", "events:PromoCodeAppliedEvent")]), 1000.0);
    assert_eq!(sum(&samples, "sluice_plugins", &[("state", "running")]), 2.0);
    assert!(sum(&samples, "sluice_plugin_memory_bytes", &[("plugin", "user-stats")]) >= 65536.0);
    assert_eq!(sum(&samples, "sluice_dead_letters", &[]), 0.0);

    let plugins = json(&host.admin("GET", "/api/plugins", &[])?.1);
    let names: Vec<&str> = plugins.as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["promo-code-analytics", "user-stats"]);
    assert!(plugins[0]["hash"].as_str().unwrap().len() == 64 && plugins[0]["status"] == "running");
    assert_eq!(plugins[0]["limits"]["call_timeout_ms"], 5000);
    // Said plainly, per table: at-least-once on 18.16 without ZooKeeper, tokens on 26.9.
    assert_eq!(plugins[0]["guarantees"]["promo_code_usages_analytics"], release.plain_guarantee(), "{plugins}");
    let streams = json(&host.admin("GET", "/api/streams", &[])?.1);
    let s0 = &streams.as_array().unwrap()[0];
    assert_eq!(
        (s0["stream"].as_str(), s0["length"].as_i64(), s0["pending"].as_i64(), s0["lag"].as_i64()),
        (Some("events:PromoCodeAppliedEvent"), Some(1000), Some(0), Some(0)),
        "{streams}"
    );
    assert_eq!(s0["consumers"], 1);

    // A dead letter, browsed and reprocessed through the API.
    let mut conn = redis.conn()?;
    redis::cmd("XADD")
        .arg("events:PromoCodeAppliedEvent")
        .arg("*")
        .arg("no_payload")
        .arg("x")
        .query::<String>(&mut conn)?;
    wait_until("a dead letter", Duration::from_secs(30), || {
        host.admin("GET", "/api/dlq", &[])
            .map(|(_, b)| json(&b).as_array().is_some_and(|a| a.len() == 2))
            .unwrap_or(false)
    })?;
    let listed = json(&host.admin("GET", "/api/dlq?plugin=user-stats", &[])?.1);
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    let by_kind = json(&host.admin("GET", "/api/dlq?kind=invalid_event&event_type=PromoCodeAppliedEvent", &[])?.1);
    assert_eq!(by_kind.as_array().unwrap().len(), 2, "{by_kind}");
    assert_eq!(json(&host.admin("GET", "/api/dlq?kind=permanent", &[])?.1).as_array().unwrap().len(), 0);
    let id = listed[0]["dlq_id"].as_str().unwrap().to_string();
    assert_eq!(listed[0]["error_kind"], "invalid_event");
    let (status, one) = host.admin("GET", &format!("/api/dlq/{id}"), &[])?;
    assert_eq!((status, json(&one)["plugin"].as_str()), (200, Some("user-stats")));
    assert_eq!(host.admin("GET", "/api/dlq/0-1", &[])?.0, 404);
    let errors = json(&host.admin("GET", "/api/errors", &[])?.1);
    assert!(errors.as_array().unwrap().iter().any(|e| e["kind"] == "invalid_event"), "{errors}");

    // Changes need the token.
    let reprocess = format!("/api/dlq/{id}/reprocess");
    assert_eq!(host.admin("POST", &reprocess, &[])?.0, 401);
    assert_eq!(host.admin("POST", &reprocess, &[("Authorization", "Bearer wrong")])?.0, 401);
    assert_eq!(host.admin("DELETE", "/api/dlq", &[])?.0, 401);
    assert_eq!(host.admin("POST", "/api/replay", &[])?.0, 401);
    let bearer = format!("Bearer {TOKEN}");
    let (status, body) = host.admin("POST", &reprocess, &[("Authorization", &bearer)])?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["reprocessed"], 1);
    let (status, body) = host.admin("DELETE", "/api/dlq?plugin=promo-code-analytics", &[("Authorization", &bearer)])?;
    assert_eq!((status, json(&body)["purged"].as_u64()), (200, Some(1)), "{body}");

    // A host without a token refuses every change.
    let open = start(&redis, &ch, dir.path(), None)?;
    let (status, body) = open.admin("POST", "/api/dlq/reprocess", &[("Authorization", &bearer)])?;
    assert_eq!(status, 403, "{body}");
    assert!(json(&body)["error"].as_str().unwrap().contains("set SLUICE_ADMIN_TOKEN"));
    drop(open);

    // Readiness follows ClickHouse.
    ch.stop();
    wait_until("/ready to say 503", Duration::from_secs(30), || {
        host.admin("GET", "/ready", &[]).is_ok_and(|(s, b)| s == 503 && json(&b)["clickhouse"]["ok"] == false)
    })?;
    assert_eq!(host.admin("GET", "/health", &[])?.0, 200, "alive while ClickHouse is away");
    // `sluice health`, the containers' health check, says the same.
    let addr = format!("127.0.0.1:{}", host.admin_port);
    assert!(sluice(&["health", "--admin-addr", &addr], &[])?.contains("\"status\":\"ok\""));
    let not_ready = sluice(&["health", "--ready", "--admin-addr", &addr], &[]).unwrap_err().to_string();
    assert!(not_ready.contains("\"ready\":false"), "{not_ready}");
    ch.restart()?;
    wait_until("/ready to say 200 again", Duration::from_secs(30), || {
        host.admin("GET", "/ready", &[]).is_ok_and(|(s, _)| s == 200)
    })?;
    sluice(&["health", "--ready", "--admin-addr", &addr], &[])?;
    // No host there: unhealthy (1, what container health checks expect), not an error (2).
    let nobody = format!("127.0.0.1:{}", sluice_tests::free_port());
    let out =
        std::process::Command::new(sluice_tests::sluice_bin()).args(["health", "--admin-addr", &nobody]).output()?;
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the admin API"), "{out:?}");
    assert_eq!(host.admin("GET", "/nope", &[])?.0, 404);
    Ok(())
}

fn a_broken_plugin_file_makes_the_host_not_ready_and_says_why(release: Release) -> Result<()> {
    let redis = Redis::start()?;
    let ch = ClickHouse::start(release)?;
    let dir = plugin_dir_with(&[plugins_dir().join("order-analytics.wasm")])?;
    std::fs::write(dir.path().join("broken.wasm"), b"not wasm")?;
    let host = start(&redis, &ch, dir.path(), None)?;
    let (status, body) = host.admin("GET", "/ready", &[])?;
    assert_eq!(status, 503, "{body}");
    let ready = json(&body);
    let broken = ready["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["file"].as_str().unwrap().ends_with("broken.wasm"))
        .unwrap()
        .clone();
    assert_eq!(broken["status"], "failed");
    assert!(broken["error"].as_str().unwrap().contains("is not a valid WebAssembly component"), "{broken}");
    Ok(())
}

fn the_dashboard_loads_in_headless_chromium_and_shows_the_plugins(release: Release) -> Result<()> {
    let redis = Redis::start()?;
    let ch = ClickHouse::start(release)?;
    let dir = plugin_dir_with(&[plugins_dir().join("order-analytics.wasm"), plugins_dir().join("user-stats.wasm")])?;
    let host = start(&redis, &ch, dir.path(), None)?;
    let env = [("SLUICE_REDIS_URL", redis.url())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    sluice(&["publish", "OrderCreatedEvent", "--count", "200"], &env)?;
    // A producer's typo: a stream nobody reads, shown as such.
    sluice(&["publish", "OrderPlaced", "{}"], &env)?;
    wait_until("the unread stream in the API", Duration::from_secs(20), || {
        host.admin("GET", "/api/streams", &[]).is_ok_and(|(_, b)| b.contains("events:OrderPlaced"))
    })?;
    let profile = tempfile::tempdir()?;
    let out = Command::new("timeout")
        .args([
            "90",
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(["--enable-logging=stderr", "--v=0", "--virtual-time-budget=8000", "--dump-dom"])
        .arg(format!("http://127.0.0.1:{}/", host.admin_port))
        .output()
        .context("cannot run chromium (scripts/install-deps.sh test installs it)")?;
    let dom = String::from_utf8_lossy(&out.stdout);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "chromium failed: {log}");
    // The page's scripts ran to the end of a refresh, without an error of their own...
    assert!(dom.contains("data-loaded=\"true\""), "the dashboard never finished a refresh:\n{dom}\n{log}");
    assert!(!dom.contains("style=\"display: block;\""), "the dashboard shows a problem:\n{dom}");
    let console_errors: Vec<&str> =
        log.lines().filter(|l| l.contains("CONSOLE") && (l.contains("Uncaught") || l.contains("rror"))).collect();
    assert!(console_errors.is_empty(), "console errors: {console_errors:#?}");
    // ...and show the loaded plugins, running, and their streams.
    for plugin in ["order-analytics", "user-stats"] {
        assert!(dom.contains(&format!("data-plugin=\"{plugin}\"")), "{plugin} missing from:\n{dom}");
    }
    assert!(dom.contains(">running<"), "{dom}");
    assert!(dom.contains("events:OrderCreatedEvent"), "{dom}");
    assert!(dom.contains("events:OrderPlaced") && dom.contains(">no subscriber<"), "the unread stream: {dom}");
    assert!(dom.contains("keep 7d"), "each stream's retention: {dom}");
    let shown = format!("orders_analytics ({})", release.plain_guarantee().replace('_', "-"));
    assert!(dom.contains(&shown), "each table's guarantee: {dom}");
    assert!(dom.contains(">ready<"), "{dom}");
    Ok(())
}

on_every_release!(
    every_endpoint_answers_metrics_move_readiness_follows_clickhouse_and_changes_need_the_token,
    a_broken_plugin_file_makes_the_host_not_ready_and_says_why,
    the_dashboard_loads_in_headless_chromium_and_shows_the_plugins,
);
