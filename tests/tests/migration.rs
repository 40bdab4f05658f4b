//! The three migration guides (docs/migrating-from-*.md), step by step, with the services they
//! replace (examples/bull/consumer.js, examples/bullmq/consumer.js,
//! examples/python-streams/consumer.py) and the real producer packages: the old service and
//! Sluice side by side, then Sluice alone — every event's row lands once.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use sluice_tests::*;

/// A service being replaced, running.
struct OldService {
    child: Child,
    log: tempfile::NamedTempFile,
}

impl OldService {
    fn start(program: &Path, script: &str, redis: &Redis, ch: &ClickHouse) -> Result<OldService> {
        let log = tempfile::NamedTempFile::new()?;
        let child = Command::new(program)
            .arg(repo_root().join(script))
            .args(["--redis-url", &redis.url(), "--clickhouse-url", &ch.url()])
            .stdout(Stdio::from(log.reopen()?))
            .stderr(Stdio::from(log.reopen()?))
            .spawn()
            .with_context(|| format!("cannot start {script}"))?;
        let s = OldService { child, log };
        wait_until(&format!("{script} to consume"), Duration::from_secs(30), || s.output().contains("consuming"))
            .map_err(|e| anyhow::anyhow!("{e}: {}", s.output()))?;
        Ok(s)
    }

    fn output(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// The guides' "stop it gracefully": SIGTERM, and it exits once the work in hand is done.
    fn stop(mut self) -> Result<()> {
        signal(&self.child, 15);
        wait_until("the old service to exit", Duration::from_secs(30), || {
            matches!(self.child.try_wait(), Ok(Some(_)))
        })?;
        assert!(self.child.wait()?.success(), "{}", self.output());
        Ok(())
    }
}

impl Drop for OldService {
    fn drop(&mut self) {
        stop_child(&mut self.child);
    }
}

fn count(ch: &ClickHouse, table: &str) -> (i64, i64) {
    let r = ch.query(&format!("SELECT count(), uniqExact(order_id) FROM analytics.{table}")).unwrap_or_default();
    let v: Vec<i64> = r.split('\t').map(|x| x.trim().parse().unwrap_or(-1)).collect();
    (v[0], *v.get(1).unwrap_or(&-1))
}

const TABLE: &str = "promo_code_usages_analytics";

/// A queue consumer (bull or BullMQ) and Sluice on the same queue: each job is taken by one of
/// them, so no row is doubled; then the old consumer stops and Sluice does the rest.
fn side_by_side_on_a_queue(
    release: Release,
    old: &str,
    add: impl Fn(&Redis, &[&str]) -> Result<serde_json::Value>,
    shape: &[&str],
) -> Result<()> {
    let redis = Redis::start()?;
    let ch = ClickHouse::start(release)?;
    let add = |from: &str, count: &str| add(&redis, &[&["add", "--from", from, "--count", count][..], shape].concat());
    // Before: the old service alone.
    let service = OldService::start(&node_bin(), old, &redis, &ch)?;
    add("0", "500")?;
    wait_until("500 rows from the old service", Duration::from_secs(60), || count(&ch, TABLE).0 >= 500)?;
    // Step 2: Sluice beside it, on the same queue.
    let plugins = plugin_dir_with(&[plugins_dir().join("promo-code-analytics.wasm")])?;
    let host = Host::start(&redis, &ch, plugins.path(), &[("SLUICE_BULLMQ_QUEUES", "events")])?;
    host.wait_running(Duration::from_secs(60))?;
    add("500", "2000")?;
    wait_until("2,500 rows", Duration::from_secs(90), || count(&ch, TABLE).0 >= 2500)
        .map_err(|e| anyhow::anyhow!("{e}: {:?}\n{}", count(&ch, TABLE), host.log_text()))?;
    // Step 3: the old service stops (gracefully); Sluice alone.
    service.stop()?;
    add("2500", "500")?;
    wait_until("3,000 rows", Duration::from_secs(60), || count(&ch, TABLE).0 >= 3000)
        .map_err(|e| anyhow::anyhow!("{e}: {:?}\n{}", count(&ch, TABLE), host.log_text()))?;
    std::thread::sleep(Duration::from_millis(500));
    // Step 4, the guides' check: every event once.
    assert_eq!(count(&ch, TABLE), (3000, 3000));
    assert!(host.metric("sluice_events_handled_total", "PromoCodeAppliedEvent") > 0.0, "Sluice took part");
    Ok(())
}

fn from_a_nestjs_bull_consumer(release: Release) -> Result<()> {
    side_by_side_on_a_queue(
        release,
        "examples/bull/consumer.js",
        bull,
        &["--delayed-every", "10", "--prioritized-every", "7"],
    )
}

fn from_a_nestjs_bullmq_event_bus(release: Release) -> Result<()> {
    // The seed's jobs: { event, payload } with an eventId.
    side_by_side_on_a_queue(
        release,
        "examples/bullmq/consumer.js",
        bullmq,
        &["--envelope-every", "1", "--event-id-prefix", "ev-", "--delayed-every", "10"],
    )
}

/// Redis Streams: a trial into shadow tables beside the old consumer group, compared; then the
/// old consumers stop, `sluice takeover` starts the plugin's group where theirs stopped, and the
/// plugin writes the real table — including events only the trial had seen.
fn from_a_python_streams_consumer(release: Release) -> Result<()> {
    let redis = Redis::start()?;
    let ch = ClickHouse::start(release)?;
    let produce = |from: u64, n: u64| {
        python_producer(&redis, &["--promo-count", &n.to_string(), "--from", &from.to_string(), "--layout", "envelope"])
    };
    let service = OldService::start(&producer_python(), "examples/python-streams/consumer.py", &redis, &ch)?;
    produce(0, 1000)?;
    wait_until("1,000 rows from the old service", Duration::from_secs(60), || count(&ch, TABLE).0 >= 1000)?;
    // Step 2: a trial into shadow tables, compared with the old service's.
    let plugins = plugin_dir_with(&[plugins_dir().join("promo-code-analytics.wasm")])?;
    let sidecar = plugins.path().join("promo-code-analytics.toml");
    std::fs::write(&sidecar, "[clickhouse]\ntable_prefix = \"shadow_\"\n")?;
    let mut host = Host::start(&redis, &ch, plugins.path(), &[])?;
    host.wait_running(Duration::from_secs(60))?;
    produce(1000, 1000)?;
    let shadow = "shadow_promo_code_usages_analytics";
    wait_until("2,000 rows in both", Duration::from_secs(60), || {
        count(&ch, TABLE).0 >= 2000 && count(&ch, shadow).0 >= 2000
    })
    .map_err(|e| anyhow::anyhow!("{e}: {:?} {:?}\n{}", count(&ch, TABLE), count(&ch, shadow), host.log_text()))?;
    // In cents: float sums depend on the order they are added in.
    let compare = |t: &str| {
        ch.query(&format!(
            "SELECT count(), sum(toInt64(round(order_amount * 100))), sum(toInt64(round(discount_amount * 100))) FROM analytics.{t}"
        ))
    };
    assert_eq!(compare(TABLE)?, compare(shadow)?, "the trial writes what the old service writes");
    // Step 3: the old service stops; the trial runs on a little (events only it sees).
    service.stop()?;
    produce(2000, 300)?;
    wait_until("2,300 rows in the trial", Duration::from_secs(60), || count(&ch, shadow).0 >= 2300)?;
    host.stop();
    // A stopped host's consumer is idle from its last read: the takeover waits for 5 s of it.
    std::thread::sleep(Duration::from_millis(5500));
    produce(2300, 200)?;
    let args = [
        "takeover",
        "--redis-url",
        &redis.url(),
        "--plugin",
        "promo-code-analytics",
        "--from-group",
        "analytics-consumers",
        "--type",
        "PromoCodeAppliedEvent",
    ];
    let plan = sluice(&[&args[..], &["--dry-run"]].concat(), &[])?;
    assert!(plan.contains("500 entries after it") && plan.contains("dry run: nothing changed"), "{plan}");
    let done = sluice(&[&args[..], &["--yes"]].concat(), &[])?;
    assert!(done.contains("sluice:promo-code-analytics starts after"), "{done}");
    // Step 4: the plugin on the real table.
    std::fs::remove_file(&sidecar)?;
    let host = Host::start(&redis, &ch, plugins.path(), &[])?;
    host.wait_running(Duration::from_secs(60))?;
    produce(2500, 500)?;
    wait_until("3,000 rows", Duration::from_secs(60), || count(&ch, TABLE).0 >= 3000)
        .map_err(|e| anyhow::anyhow!("{e}: {:?}\n{}", count(&ch, TABLE), host.log_text()))?;
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(count(&ch, TABLE), (3000, 3000), "every event once, none lost at the switch");
    Ok(())
}

/// The takeover refuses while the old group still holds unacknowledged entries, and names a
/// group that is not there.
#[test]
fn a_takeover_refuses_what_would_lose_or_double_rows() -> Result<()> {
    let redis = Redis::start()?;
    let mut conn = redis.conn()?;
    let stream = "events:PromoCodeAppliedEvent";
    redis::cmd("XGROUP").arg("CREATE").arg(stream).arg("old").arg("0").arg("MKSTREAM").query::<()>(&mut conn)?;
    redis::cmd("XADD").arg(stream).arg("*").arg("payload").arg("{}").query::<String>(&mut conn)?;
    redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("old")
        .arg("c1")
        .arg("STREAMS")
        .arg(stream)
        .arg(">")
        .query::<redis::Value>(&mut conn)?;
    let run = |group: &str| {
        sluice_output(
            &[
                "takeover",
                "--redis-url",
                &redis.url(),
                "--plugin",
                "p",
                "--from-group",
                group,
                "--type",
                "PromoCodeAppliedEvent",
                "--yes",
            ],
            &[],
        )
    };
    let (code, _, err) = run("old")?;
    assert!(
        code != 0 && err.contains("has 1 entries of events:PromoCodeAppliedEvent delivered and not acknowledged"),
        "{err}"
    );
    let (code, _, err) = run("nobody")?;
    assert!(code != 0 && err.contains("has no consumer group `nobody`; its groups: old"), "{err}");
    Ok(())
}

on_every_release!(from_a_nestjs_bull_consumer, from_a_nestjs_bullmq_event_bus, from_a_python_streams_consumer);
