//! Classic Bull queues against the real `bull` package (4.x, what `@nestjs/bull` uses): jobs
//! written by the Node.js producer (`examples/bull/producer.js`, the seed's job options) become
//! rows, and bull's own view — `queue.getJobCounts()`, its `priority` set, `attemptsMade` as Bull
//! Board reads it, its global events, its backoff — tells the truth afterwards.

use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::Value;
use sluice_tests::*;

fn counts(redis: &Redis) -> Value {
    bull(redis, &["counts"]).unwrap_or(Value::Null)
}

/// The jobs still to do or being done, by bull's count.
fn unfinished(c: &Value) -> i64 {
    ["waiting", "active", "delayed", "paused"].iter().map(|k| c[k].as_i64().unwrap_or(0)).sum()
}

fn two_thousand_bull_jobs_land_exactly_and_bull_sees_them_finished(release: Release) -> Result<()> {
    let redis = Redis::start()?;
    let ch = ClickHouse::start(release)?;
    let plugins = plugin_dir_with(&[plugins_dir().join("promo-code-analytics.wasm"), test_plugin("flaky")])?;
    // Every 10th job delayed, every 7th prioritized, every 2nd wrapped as the NestJS adapter
    // writes it. The first thousand wait before the host starts; the library is told per job.
    let shape = ["--delayed-every", "10", "--prioritized-every", "7", "--envelope-every", "2"];
    let first = bull(&redis, &[&["add", "--count", "1000"][..], &shape].concat())?;
    let host = Host::start(&redis, &ch, plugins.path(), &[("SLUICE_BULLMQ_QUEUES", "events")])?;
    host.wait_running(Duration::from_secs(60))?;
    wait_until("the first 1,000 rows", Duration::from_secs(60), || {
        promo_sums(&ch).map(|(n, ..)| n >= 1000).unwrap_or(false) && unfinished(&counts(&redis)) == 0
    })
    .map_err(|e| anyhow::anyhow!("{e}; counts: {}\n{}", counts(&redis), host.log_text()))?;
    // The next thousand while it runs, listening to bull's global events as NestJS's
    // @OnGlobalQueueCompleted does: one `completed` per job.
    let second = bull(&redis, &[&["add", "--from", "1000", "--count", "1000", "--await-global"][..], &shape].concat())?;
    assert_eq!(second["global"], serde_json::json!({"completed": 1000, "failed": 0}), "{second}");
    let sum = |k: &str| first[k].as_i64().unwrap() + second[k].as_i64().unwrap();
    assert_eq!((sum("jobs"), sum("delayed"), sum("prioritized"), sum("envelopes")), (2000, 200, 286, 1000));

    // Retried jobs, with bull's exponential backoff round((2^n - 1) * delay): one succeeds on
    // its second attempt; one fails all three, after 1 s and 3 s of backoff (BullMQ's formula
    // would wait 1 s and 2 s).
    let flaky = |data: &str, backoff: &str| {
        bull(&redis, &["add", "--type", "flaky.event", "--data", data, "--backoff-ms", backoff, "--await-global"])
    };
    let retried = flaky(r#"{"n":4,"fail_first":true}"#, "300")?;
    assert_eq!(retried["global"], serde_json::json!({"completed": 1, "failed": 0}), "{retried}");
    let started = Instant::now();
    let failing = flaky(r#"{"n":2,"fail_until_ms":99999999999999}"#, "1000")?;
    let took = started.elapsed();
    assert_eq!(failing["global"], serde_json::json!({"completed": 0, "failed": 1}), "{failing}");
    assert!(
        took >= Duration::from_millis(4000) && took < Duration::from_millis(7000),
        "three attempts with bull's backoff take 1 s + 3 s and a little: took {took:?}"
    );

    let (rows, orders, order_cents, discount_cents) = promo_sums(&ch)?;
    assert_eq!(
        (rows, orders, order_cents, discount_cents),
        (2000, 2000, sum("order_cents"), sum("discount_cents")),
        "rows must match what the producer added, exactly"
    );
    assert_eq!(
        ch.query("SELECT n, attempt, count() FROM analytics.flaky_rows GROUP BY n, attempt ORDER BY n")?,
        "4\t2\t1"
    );
    // bull's view: nothing left to do, the last 100 completed kept (removeOnComplete: 100), the
    // failing job failed, and bull's priority set empty.
    let c = counts(&redis);
    assert_eq!(unfinished(&c), 0, "counts: {c}");
    assert_eq!(
        (c["completed"].as_i64(), c["failed"].as_i64(), c["priority"].as_i64()),
        (Some(100), Some(1), Some(0)),
        "counts: {c}"
    );
    // Attempts as Bull Board reads them (bull's `attemptsMade`: failed attempts).
    let failed = bull(&redis, &["failed"])?;
    assert_eq!(failed[0]["attemptsMade"], 3, "{failed}");
    assert!(failed[0]["failedReason"].as_str().unwrap_or("").contains("failing until"), "{failed}");
    let completed = bull(&redis, &["jobs", "--state", "completed"])?;
    let twice = completed.as_array().unwrap().iter().find(|j| j["name"] == "flaky.event").cloned();
    assert_eq!(twice.map(|j| j["attemptsMade"].clone()), Some(Value::from(1)), "{completed}");
    Ok(())
}

/// bull's producers announce a new job on a pub/sub channel, not by BullMQ's marker: an idle
/// host must hear it, not find the job when its blocking wait times out (5 s).
#[test]
fn an_idle_bull_queue_wakes_for_new_and_delayed_jobs() -> Result<()> {
    let redis = Redis::start()?;
    let ch = ClickHouse::start(Release::V18)?;
    let plugins = plugin_dir_with(&[plugins_dir().join("promo-code-analytics.wasm")])?;
    let host = Host::start(&redis, &ch, plugins.path(), &[("SLUICE_BULLMQ_QUEUES", "events")])?;
    host.wait_running(Duration::from_secs(60))?;
    let ch_url = ch.url();
    let latency = |extra: &[&str]| {
        bull(&redis, &[&["latency", "--clickhouse-url", &ch_url, "--idle-ms", "600"][..], extra].concat())
    };
    // From `queue.add` to the committed row: the 100 ms insert linger, the insert, and the
    // producer's 5 ms polling of ClickHouse. A missed announcement costs up to 5 s.
    let new = latency(&["--count", "20"])?;
    let delayed = latency(&["--count", "5", "--delay-ms", "700"])?;
    eprintln!("add to row, idle queue: {new}; past the delay, delayed jobs: {delayed}");
    assert!(new["p99_ms"].as_i64().unwrap() < 1000, "{new}\n{}", host.log_text());
    assert!(delayed["max_ms"].as_i64().unwrap() < 1000, "{delayed}\n{}", host.log_text());
    Ok(())
}

/// bull's repeatable jobs are scheduled by bull's own worker: the host refuses the queue, saying
/// why, rather than running them once.
#[test]
fn a_queue_with_repeatable_bull_jobs_is_refused_at_start() -> Result<()> {
    let redis = Redis::start()?;
    let ch = ClickHouse::start(Release::V26)?;
    let plugins = plugin_dir_with(&[plugins_dir().join("promo-code-analytics.wasm")])?;
    bull(&redis, &["repeat", "--every-ms", "600000"])?;
    let mut host = Host::start(&redis, &ch, plugins.path(), &[("SLUICE_BULLMQ_QUEUES", "events")])?;
    wait_until("the host to exit", Duration::from_secs(60), || matches!(host.child.try_wait(), Ok(Some(_))))?;
    let status = host.child.wait()?;
    let log = host.log_text();
    assert!(!status.success(), "{log}");
    assert!(
        log.contains("queue bull:events holds 1 repeatable bull job(s)") && log.contains("queue.removeRepeatable"),
        "{log}"
    );
    Ok(())
}

on_every_release!(two_thousand_bull_jobs_land_exactly_and_bull_sees_them_finished);
