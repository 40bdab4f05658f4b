//! Canary rollouts: a candidate version (`echo.next.wasm`, `[rollout]` in its settings) runs
//! beside the stable one on its share of the events. One that fails every event is rolled back
//! on its own — the events it failed handled by the stable version, nothing lost, nothing
//! dead-lettered, no row written twice, the stable version never restarted — and stays rolled
//! back across a restart; a good one is promoted and takes every event. Rows go to a table that
//! deduplicates (exactly once), and are counted with plain `count()`.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use serde_json::{Value, json};
use sluice_tests::browser::Browser;
use sluice_tests::*;

const TABLE: &str = "canary_rows";
/// Where the host creates it.
const QUALIFIED: &str = "analytics.canary_rows";
const EVENT_TYPE: &str = "echo.event";

fn manifest(version: &str) -> String {
    echo::manifest(
        "echo",
        version,
        json!([{"name": TABLE, "columns": [["k", "UInt64"], ["tag", "String"]], "order_by": ["k"]}]),
    )
}

/// The echo plugin as `<stem>.wasm` whose rows carry its `tag` setting; `rollout`: the
/// settings file's `[rollout]` section, `more`: more of its settings.
fn install(dir: &Path, stem: &str, version: &str, tag: &str, rollout: &str, more: &str) -> Result<()> {
    let toml = format!("{rollout}\n[settings]\nmanifest = '''{}'''\ntag = \"{tag}\"\n{more}", manifest(version));
    // The sidecar first: the directory is watched, and the .wasm makes the file a plugin.
    std::fs::write(dir.join(format!("{stem}.toml")), toml)?;
    std::fs::copy(test_plugin("echo"), dir.join(format!("{stem}.wasm")))?;
    Ok(())
}

/// Events `range`: event k writes the row (k, <tag of the version that handled it>).
fn publish(conn: &mut redis::Connection, range: std::ops::Range<u64>) -> Result<()> {
    let payloads: Vec<Value> =
        range.map(|k| json!({"rows": [{"table": TABLE, "values": [k, {"setting": "tag"}]}]})).collect();
    echo::publish(conn, EVENT_TYPE, &payloads)
}

/// Publishes `range` in slices while a rollout runs, so that several batches see it.
fn publish_slowly(conn: &mut redis::Connection, range: std::ops::Range<u64>) -> Result<()> {
    let mut k = range.start;
    while k < range.end {
        let end = (k + 25).min(range.end);
        publish(conn, k..end)?;
        k = end;
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn wait_rows(ch: &ClickHouse, host: &Host, n: i64) -> Result<()> {
    let sql = format!("SELECT count() FROM {QUALIFIED}");
    wait_until(&format!("{n} rows in {TABLE}"), Duration::from_secs(90), || ch.number(&sql) >= n)
        .map_err(|e| e.context(format!("{} rows; host log:\n{}", ch.number(&sql), host.log_text())))
}

fn rollouts(host: &Host) -> Result<Vec<Value>> {
    let (status, body) = host.admin("GET", "/api/rollouts", &[])?;
    assert_eq!(status, 200, "{body}");
    Ok(serde_json::from_str(&body)?)
}

fn plugin_status(host: &Host, file: &str) -> Result<Value> {
    let (_, body) = host.admin("GET", "/api/plugins", &[])?;
    let plugins: Vec<Value> = serde_json::from_str(&body)?;
    Ok(plugins.into_iter().find(|p| p["file"].as_str().is_some_and(|f| f.ends_with(file))).unwrap_or(Value::Null))
}

/// Redis, a ClickHouse whose tables deduplicate (exactly once), a plugins directory with the
/// stable version (`echo.wasm`, tag `stable`) and a host config.
struct Rig {
    ch: ClickHouse,
    redis: Redis,
    conn: redis::Connection,
    dir: tempfile::TempDir,
    config: String,
    /// 18.16's ZooKeeper and the config's directory, kept while the test runs.
    _keep: (Option<ZooKeeper>, tempfile::TempDir),
}

impl Rig {
    fn start(release: Release) -> Result<Rig> {
        let DedupClickHouse { ch, zookeeper } = DedupClickHouse::start(release)?;
        let redis = Redis::start()?;
        let conn = redis.conn()?;
        let (dir, cfg) = (tempfile::tempdir()?, tempfile::tempdir()?);
        let config = config_file(cfg.path(), echo::CONFIG)?.display().to_string();
        install(dir.path(), "echo", "1", "stable", "", "")?;
        Ok(Rig { ch, redis, conn, dir, config, _keep: (zookeeper, cfg) })
    }
}

fn a_canary_failing_every_event_is_rolled_back_with_nothing_lost_or_doubled(release: Release) -> Result<()> {
    let Rig { ch, redis, mut conn, dir, config, _keep } = Rig::start(release)?;
    let mut host = echo::start_host(&redis, &ch, dir.path(), Path::new(&config))?;
    publish(&mut conn, 0..200)?;
    wait_rows(&ch, &host, 200)?;

    // A version that fails every event (permanently: without the rollout, each would be
    // dead-lettered), on half of the events.
    let rules = "[rollout]\nshare = 0.5\nmin_events = 20\npromote_after_events = 1000000\n";
    install(dir.path(), "echo.next", "2", "candidate", rules, "fail_every_event = \"bad build\"\n")?;
    host.wait_for_log("canary rollout running", Duration::from_secs(30))?;
    publish_slowly(&mut conn, 200..800)?;
    host.wait_for_log("canary rolled back", Duration::from_secs(60))?;
    wait_rows(&ch, &host, 800)?;
    publish(&mut conn, 800..900)?;
    wait_rows(&ch, &host, 900)?;
    // Settled: nothing pending, nothing dead-lettered, every event's row once, all the stable
    // version's (the candidate's failures went back to it).
    wait_until("every event acknowledged", Duration::from_secs(30), || {
        total_pending(&mut conn, &["events:echo.event"]).is_ok_and(|n| n == 0)
    })?;
    assert_eq!(dead_letters(&mut conn).len(), 0, "nothing dead-lettered:\n{}", host.log_text());
    assert_eq!(
        ch.query(&format!("SELECT count(), uniqExact(k), countIf(tag = 'stable') FROM {QUALIFIED}"))?.trim(),
        "900\t900\t900",
        "each event's row once, from the stable version:\n{}",
        host.log_text()
    );
    let r = rollouts(&host)?;
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0]["state"], "rolled_back", "{r:?}");
    let failed = r[0]["counts"]["candidate"]["failed"].as_u64().unwrap_or(0);
    assert!(failed >= 20, "the candidate was judged on at least min_events failures: {r:?}");
    assert_eq!(r[0]["counts"]["candidate"]["sent_back"].as_u64(), Some(failed), "{r:?}");
    assert!(r[0]["reason"].as_str().is_some_and(|s| s.contains("more than 5 points worse")), "{r:?}");
    assert_eq!(plugin_status(&host, "echo.next.wasm")?["status"], "rolled_back");
    assert_eq!(plugin_status(&host, "echo.wasm")?["status"], "running");
    assert_eq!(host.metric("sluice_rollouts_total", "result=\"rolled_back\""), 1.0);
    let (ready, body) = host.admin("GET", "/ready", &[])?;
    assert_eq!(ready, 200, "a verdict is not a deployment error: {body}");
    // Shown in the console: the rollout with its verdict and reason, the candidate's file.
    let mut browser = Browser::launch()?;
    let mut page = browser.open(&format!("http://127.0.0.1:{}/", host.admin_port))?;
    page.wait_for("the console's first refresh", Duration::from_secs(30), "document.body.dataset.loaded === 'true'")?;
    let row = page.text("#rollouts tr[data-rollout='echo']")?;
    assert!(row.contains("rolled back") && row.contains("points worse"), "{row}");
    let plugins = page.text("#plugins")?;
    assert!(plugins.contains("rolled back"), "{plugins}");
    drop(page);
    // The stable version never stopped: its pipeline started once.
    let log = host.log_text();
    assert_eq!(log.matches("pipeline started").count(), 1, "the stable pipeline ran throughout:\n{log}");

    // The verdict is kept in Redis: after a restart the candidate stays out.
    host.stop();
    let host = echo::start_host(&redis, &ch, dir.path(), Path::new(&config))?;
    assert_eq!(plugin_status(&host, "echo.next.wasm")?["status"], "rolled_back", "{}", host.log_text());
    publish(&mut conn, 900..1000)?;
    wait_rows(&ch, &host, 1000)?;
    assert_eq!(
        ch.query(&format!("SELECT count(), uniqExact(k), countIf(tag = 'stable') FROM {QUALIFIED}"))?.trim(),
        "1000\t1000\t1000",
        "{}",
        host.log_text()
    );
    Ok(())
}

fn a_good_canary_is_promoted_and_every_event_lands_once(release: Release) -> Result<()> {
    let Rig { ch, redis, mut conn, dir, config, _keep } = Rig::start(release)?;
    let host = echo::start_host(&redis, &ch, dir.path(), Path::new(&config))?;
    publish(&mut conn, 0..100)?;
    wait_rows(&ch, &host, 100)?;

    let rules = "[rollout]\nshare = 0.5\nmin_events = 10\npromote_after_events = 100\npromote_after = \"2s\"\n";
    install(dir.path(), "echo.next", "2", "candidate", rules, "")?;
    host.wait_for_log("canary rollout running", Duration::from_secs(30))?;
    publish_slowly(&mut conn, 100..500)?;
    host.wait_for_log("canary promoted", Duration::from_secs(60))?;
    wait_rows(&ch, &host, 500)?;
    // Both versions had their share before the verdict.
    let by_candidate = ch.number(&format!("SELECT count() FROM {QUALIFIED} WHERE k >= 100 AND tag = 'candidate'"));
    assert!(by_candidate > 50, "the candidate handled its share: {by_candidate} rows:\n{}", host.log_text());
    let by_stable = ch.number(&format!("SELECT count() FROM {QUALIFIED} WHERE k >= 100 AND tag = 'stable'"));
    assert!(by_stable > 0, "the stable version kept the rest: {by_stable}");
    // The trace names the version that handled each event.
    for (tag, version) in [("candidate", "2"), ("stable", "1")] {
        let k = ch.number(&format!("SELECT min(k) FROM {QUALIFIED} WHERE k >= 100 AND k < 500 AND tag = '{tag}'"));
        let (status, body) = host.admin("GET", &format!("/api/trace/{EVENT_TYPE}-{k}"), &[])?;
        assert_eq!(status, 200, "{body}");
        let trace: Value = serde_json::from_str(&body)?;
        let attempts = &trace["matches"][0]["attempts"];
        assert_eq!(attempts[0]["version"], version, "event {k}, handled by the {tag} version: {trace:#}");
    }
    // After the promotion, every event goes to the new version (once the old one drained).
    wait_until("the old version stopped", Duration::from_secs(30), || {
        plugin_status(&host, "echo.wasm").is_ok_and(|p| p["status"] == "superseded")
    })?;
    publish(&mut conn, 500..700)?;
    wait_rows(&ch, &host, 700)?;
    assert_eq!(
        ch.query(&format!("SELECT count(), uniqExact(k), countIf(k >= 500 AND tag = 'candidate') FROM {QUALIFIED}"))?
            .trim(),
        "700\t700\t200",
        "each event's row once; after the promotion all the candidate's:\n{}",
        host.log_text()
    );
    assert_eq!(dead_letters(&mut conn).len(), 0);
    let r = rollouts(&host)?;
    assert_eq!(r[0]["state"], "promoted", "{r:?}");
    assert_eq!(r[0]["counts"]["candidate"]["failed"], 0, "{r:?}");
    assert!(r[0]["counts"]["candidate"]["events"].as_u64().unwrap_or(0) >= 100, "{r:?}");
    assert_eq!(plugin_status(&host, "echo.next.wasm")?["status"], "running");
    assert_eq!(host.metric("sluice_rollouts_total", "result=\"promoted\""), 1.0);
    let (ready, body) = host.admin("GET", "/ready", &[])?;
    assert_eq!(ready, 200, "{body}");

    // Tidying up as the docs say: the candidate renamed over the old file, without [rollout].
    let toml = std::fs::read_to_string(dir.path().join("echo.next.toml"))?.replace(rules, "");
    std::fs::write(dir.path().join("echo.toml"), toml)?;
    std::fs::remove_file(dir.path().join("echo.next.toml"))?;
    std::fs::rename(dir.path().join("echo.next.wasm"), dir.path().join("echo.wasm"))?;
    wait_until("the plugin running from echo.wasm alone", Duration::from_secs(30), || {
        plugin_status(&host, "echo.wasm").is_ok_and(|p| p["status"] == "running" && p["version"] == "2")
            && plugin_status(&host, "echo.next.wasm").is_ok_and(|p| p.is_null())
    })
    .map_err(|e| e.context(host.log_text()))?;
    publish(&mut conn, 700..800)?;
    wait_rows(&ch, &host, 800)?;
    assert_eq!(
        ch.query(&format!("SELECT count(), uniqExact(k), countIf(k >= 700 AND tag = 'candidate') FROM {QUALIFIED}"))?
            .trim(),
        "800\t800\t100"
    );
    let (ready, body) = host.admin("GET", "/ready", &[])?;
    assert_eq!(ready, 200, "{body}");
    Ok(())
}

/// One canary at a time: a second candidate is refused while the first runs, naming it.
fn a_second_canary_waits_for_the_first(release: Release) -> Result<()> {
    let Rig { ch, redis, conn: _conn, dir, config, _keep } = Rig::start(release)?;
    let host = echo::start_host(&redis, &ch, dir.path(), Path::new(&config))?;
    let rules = "[rollout]\nshare = 0.5\npromote_after_events = 1000000\n";
    install(dir.path(), "echo.next", "2", "candidate", rules, "")?;
    host.wait_for_log("canary rollout running", Duration::from_secs(30))?;
    install(dir.path(), "echo.other", "3", "other", rules, "")?;
    wait_until("the second canary refused", Duration::from_secs(30), || {
        plugin_status(&host, "echo.other.wasm").is_ok_and(|p| p["status"] == "failed")
    })?;
    let error = plugin_status(&host, "echo.other.wasm")?["error"].as_str().unwrap_or_default().to_string();
    assert!(error.contains("one canary at a time") && error.contains("echo.next.wasm"), "{error}");
    assert_eq!(plugin_status(&host, "echo.next.wasm")?["status"], "canary");
    Ok(())
}

/// A candidate whose tables differ from the running version's is refused, naming the table;
/// the running version goes on.
fn a_canary_with_other_tables_is_refused(release: Release) -> Result<()> {
    let Rig { ch, redis, mut conn, dir, config, _keep } = Rig::start(release)?;
    let host = echo::start_host(&redis, &ch, dir.path(), Path::new(&config))?;
    let other = echo::manifest(
        "echo",
        "2",
        json!([{"name": TABLE, "columns": [["k", "UInt64"], ["tag", "String"], ["extra", "UInt8"]], "order_by": ["k"]}]),
    );
    std::fs::write(
        dir.path().join("echo.next.toml"),
        format!("[rollout]\nshare = 0.5\n[settings]\nmanifest = '''{other}'''\ntag = \"candidate\"\n"),
    )?;
    std::fs::copy(test_plugin("echo"), dir.path().join("echo.next.wasm"))?;
    wait_until("the canary refused", Duration::from_secs(30), || {
        plugin_status(&host, "echo.next.wasm").is_ok_and(|p| p["status"] == "refused")
    })?;
    let p = plugin_status(&host, "echo.next.wasm")?;
    let error = p["error"].as_str().unwrap_or_default();
    assert!(error.contains(&format!("table `{TABLE}` is declared differently")), "{error}");
    publish(&mut conn, 0..50)?;
    wait_rows(&ch, &host, 50)?;
    assert!(
        ch.number(&format!(
            "SELECT count() FROM system.columns WHERE database = 'analytics' AND table = '{TABLE}' AND name = 'extra'"
        )) == 0
    );
    Ok(())
}

/// Two hosts share the plugins directory: both split their batches, their counts add up in
/// Redis, and both act on the one verdict.
fn two_hosts_judge_one_rollout_together(release: Release) -> Result<()> {
    let Rig { ch, redis, mut conn, dir, config, _keep } = Rig::start(release)?;
    let a = echo::start_host(&redis, &ch, dir.path(), Path::new(&config))?;
    let b = echo::start_host(&redis, &ch, dir.path(), Path::new(&config))?;
    let rules = "[rollout]\nshare = 0.5\nmin_events = 40\npromote_after_events = 1000000\n";
    install(dir.path(), "echo.next", "2", "candidate", rules, "fail_every_event = \"bad build\"\n")?;
    a.wait_for_log("canary rollout running", Duration::from_secs(30))?;
    b.wait_for_log("canary rollout running", Duration::from_secs(30))?;
    publish_slowly(&mut conn, 0..1000)?;
    a.wait_for_log("canary rolled back", Duration::from_secs(60))?;
    b.wait_for_log("canary rolled back", Duration::from_secs(60))?;
    wait_rows(&ch, &a, 1000)?;
    wait_until("every event acknowledged", Duration::from_secs(30), || {
        total_pending(&mut conn, &["events:echo.event"]).is_ok_and(|n| n == 0)
    })?;
    assert_eq!(
        ch.query(&format!("SELECT count(), uniqExact(k), countIf(tag = 'stable') FROM {QUALIFIED}"))?.trim(),
        "1000\t1000\t1000"
    );
    assert_eq!(dead_letters(&mut conn).len(), 0);
    // One record, one verdict, counts from both hosts.
    let record: std::collections::HashMap<String, String> =
        redis::cmd("HGETALL").arg("sluice:rollout:echo").query(&mut conn)?;
    assert_eq!(record.get("state").map(String::as_str), Some("rolled_back"), "{record:?}");
    let events: u64 = record["stable_events"].parse::<u64>()? + record["candidate_events"].parse::<u64>()?;
    assert!(events > 0 && events <= 1000, "{record:?}");
    for h in [&a, &b] {
        assert_eq!(rollouts(h)?[0]["state"], "rolled_back");
        // Both hosts gave the candidate its share.
        assert!(h.metric("sluice_rollout_events_total", "role=\"candidate\"") > 0.0, "{}", h.log_text());
    }
    Ok(())
}

on_every_release!(
    a_canary_failing_every_event_is_rolled_back_with_nothing_lost_or_doubled,
    a_good_canary_is_promoted_and_every_event_lands_once,
    a_canary_with_other_tables_is_refused,
    two_hosts_judge_one_rollout_together,
    a_second_canary_waits_for_the_first,
);
