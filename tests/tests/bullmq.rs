//! The BullMQ source against the real `bullmq` package: jobs written by the Node.js producer
//! (`examples/bullmq/producer.js`, the seed's job options) become rows, and BullMQ's own view
//! (`queue.getJobCounts()`, the failed set) tells the truth afterwards.

use std::time::Duration;

use anyhow::Result;
use serde_json::Value;
use sluice_tests::*;

/// The jobs still to do or being done, by BullMQ's count.
fn unfinished(counts: &Value) -> i64 {
    ["waiting", "wait", "active", "delayed", "prioritized", "paused", "waiting-children"]
        .iter()
        .map(|k| counts[k].as_i64().unwrap_or(0))
        .sum()
}

fn counts(redis: &Redis) -> Value {
    bullmq(redis, &["counts"]).unwrap_or(Value::Null)
}

fn ten_thousand_jobs_with_delayed_and_prioritized_ones_become_exact_rows(release: Release) -> Result<()> {
    let redis = Redis::start()?;
    let ch = ClickHouse::start(release)?;
    let plugins = plugin_dir_with(&[plugins_dir().join("promo-code-analytics.wasm")])?;
    // Half the jobs wait in the queue before the host starts, half arrive while it runs. Every
    // 10th is delayed, every 7th prioritized, every 2nd wrapped as the NestJS adapter writes it.
    let shape = ["--delayed-every", "10", "--prioritized-every", "7", "--envelope-every", "2"];
    let first = bullmq(&redis, &[&["add", "--count", "5000"][..], &shape].concat())?;
    let mut host = Host::start(&redis, &ch, plugins.path(), &[("SLUICE_BULLMQ_QUEUES", "events")])?;
    host.wait_running(Duration::from_secs(60))?;
    let second = bullmq(&redis, &[&["add", "--from", "5000", "--count", "5000"][..], &shape].concat())?;
    let sum = |k: &str| first[k].as_i64().unwrap() + second[k].as_i64().unwrap();
    assert_eq!((sum("jobs"), sum("delayed"), sum("prioritized"), sum("envelopes")), (10_000, 1_000, 1_429, 5_000));

    let done = wait_until("10,000 rows", Duration::from_secs(180), || {
        promo_sums(&ch).map(|(n, ..)| n >= 10_000).unwrap_or(false)
    });
    done.map_err(|e| {
        anyhow::anyhow!("{e}; rows: {:?}; counts: {}\n{}", promo_sums(&ch).ok(), counts(&redis), host.log_text())
    })?;
    let (rows, orders, order_cents, discount_cents) = promo_sums(&ch)?;
    assert_eq!(
        (rows, orders, order_cents, discount_cents),
        (10_000, 10_000, sum("order_cents"), sum("discount_cents")),
        "rows must match what the producer added, exactly"
    );
    // BullMQ's view: everything completed, the last 100 kept (removeOnComplete: 100).
    wait_until("BullMQ to show every job finished", Duration::from_secs(30), || unfinished(&counts(&redis)) == 0)?;
    let c = counts(&redis);
    assert_eq!((c["completed"].as_i64(), c["failed"].as_i64()), (Some(100), Some(0)), "counts: {c}");
    host.stop();
    let log = host.log_text();
    assert!(!log.contains("ERROR"), "no errors expected:\n{log}");
    Ok(())
}

fn a_failing_job_ends_in_the_failed_set_with_its_error_after_its_attempts(release: Release) -> Result<()> {
    let redis = Redis::start()?;
    let ch = ClickHouse::start(release)?;
    let plugins = plugin_dir_with(&[test_plugin("flaky")])?;
    // The producer sets removeOnComplete: 100; the host's retention keeps fewer here (4).
    let config = config_file(plugins.path(), "bullmq_keep_completed = 4\nhousekeeping_interval_ms = 300\n")?;
    let env = [("SLUICE_BULLMQ_QUEUES", "events"), ("SLUICE_CONFIG", config.to_str().unwrap())];
    let host = Host::start(&redis, &ch, plugins.path(), &env)?;
    host.wait_running(Duration::from_secs(60))?;
    let add = |data: &str, count: &str| {
        bullmq(&redis, &["add", "--type", "flaky.event", "--data", data, "--count", count, "--backoff-ms", "300"])
    };
    add(r#"{"n":1}"#, "5")?;
    // Fails every attempt, transiently: retried with backoff, failed after the third attempt.
    add(r#"{"n":2,"fail_until_ms":99999999999999}"#, "1")?;
    // Fails permanently: no retry (BullMQ's UnrecoverableError), failed at once.
    add(r#"{"n":3,"permanent":true}"#, "1")?;
    // Succeeds on its second attempt.
    add(r#"{"n":4,"fail_first":true}"#, "1")?;
    // No plugin subscribes to this type: not failed, it waits (delayed) for one.
    bullmq(&redis, &["add", "--type", "nobody.listens", "--data", "{}", "--count", "1"])?;
    wait_until("two failed jobs and six completed, the oldest two trimmed", Duration::from_secs(60), || {
        let c = counts(&redis);
        c["failed"] == 2 && c["completed"] == 4 && host.metric("sluice_bullmq_jobs_trimmed_total", "completed") == 2.0
    })
    .map_err(|e| anyhow::anyhow!("{e}; counts: {}\n{}", counts(&redis), host.log_text()))?;
    let failed = bullmq(&redis, &["failed"])?;
    let failed = failed.as_array().unwrap();
    let by_n =
        |needle: &str| failed.iter().find(|j| j["failedReason"].as_str().unwrap_or("").contains(needle)).cloned();
    let transient = by_n("failing until").unwrap_or_else(|| panic!("failed set: {failed:?}"));
    assert_eq!(transient["attemptsMade"], 3, "{transient}");
    assert!(transient["failedReason"].as_str().unwrap().starts_with("flaky: flaky: failing until"), "{transient}");
    let permanent = by_n("permanently bad").unwrap_or_else(|| panic!("failed set: {failed:?}"));
    assert_eq!(permanent["attemptsMade"], 1, "{permanent}");
    assert_eq!(
        permanent["failedReason"],
        format!("flaky: permanent: flaky: event {} is permanently bad", permanent["id"].as_str().unwrap())
    );
    // Rows: the five good jobs and the one that succeeded on its second attempt (attempt 2).
    assert_eq!(
        ch.query("SELECT n, attempt, count() FROM analytics.flaky_rows GROUP BY n, attempt ORDER BY n")?,
        "1\t1\t5\n4\t2\t1"
    );
    let c = counts(&redis);
    assert_eq!((unfinished(&c), c["failed"].as_i64()), (1, Some(2)), "only the unrouted job is left: {c}");
    // The trimmed jobs went with their hashes: 4 completed + 2 failed + 1 waiting are left.
    let keys: Vec<String> = redis::cmd("KEYS").arg("bull:events:*").query(&mut redis.conn()?)?;
    let jobs = keys.iter().filter(|k| k["bull:events:".len()..].bytes().all(|b| b.is_ascii_digit())).count();
    assert_eq!(jobs, 7, "{keys:?}");
    host.wait_for_log("no running plugin subscribes to this event type", Duration::from_secs(5))?;
    Ok(())
}

/// Hosts that die holding locked jobs — one right after its rows landed and before its jobs were
/// completed (the failpoint), one SIGKILLed mid-run — lose no job: the other host's stalled
/// check moves their jobs back once the locks expire, and the batch records keep rows that had
/// landed from landing twice (Replicated tables, private ZooKeeper).
fn hosts_killed_mid_run_lose_no_job_and_duplicate_no_row(release: Release) -> Result<()> {
    let redis = Redis::start()?;
    let DedupClickHouse { ch, zookeeper: _zk } = DedupClickHouse::start(release)?;
    let plugins = plugin_dir_with(&[plugins_dir().join("promo-code-analytics.wasm")])?;
    let dir = tempfile::tempdir()?;
    // Locks of 3 s (renewed every 1.5 s) so that a dead host's jobs are recovered in seconds.
    let config =
        config_file(dir.path(), "[bullmq]\nqueues = [\"events\"]\nlock_duration_ms = 3000\nconcurrency = 500\n")?;
    let config = config.to_str().unwrap();
    let added = bullmq(&redis, &["add", "--count", "20000", "--delayed-every", "50", "--prioritized-every", "9"])?;
    let env = [("SLUICE_CONFIG", config), ("SLUICE_INSERT_LINGER_MS", "300")];
    let survivor = Host::start(&redis, &ch, plugins.path(), &env)?;
    let crashing = [env.as_slice(), &[("SLUICE_FAILPOINT_EXIT_AFTER_INSERT", "2")]].concat();
    let mut crashed = Host::start(&redis, &ch, plugins.path(), &crashing)?;
    wait_until("the failpoint host to exit after its second insert", Duration::from_secs(60), || {
        matches!(crashed.child.try_wait(), Ok(Some(_)))
    })?;
    assert_eq!(crashed.child.wait()?.code(), Some(86), "{}", crashed.log_text());
    let mut killed = Host::start(&redis, &ch, plugins.path(), &env)?;
    let before = promo_sums(&ch)?.0;
    wait_until("more rows", Duration::from_secs(60), || {
        promo_sums(&ch).map(|(n, ..)| n >= before + 3000).unwrap_or(false)
    })?;
    signal(&killed.child, 9);
    let _ = killed.child.wait();
    let active_at_kill = counts(&redis)["active"].as_i64().unwrap_or(0);
    wait_until("every job finished", Duration::from_secs(180), || {
        let c = counts(&redis);
        unfinished(&c) == 0 && c["completed"].as_i64().is_some()
    })
    .map_err(|e| {
        anyhow::anyhow!("{e}; counts: {}; rows {:?}\n{}", counts(&redis), promo_sums(&ch).ok(), survivor.log_text())
    })?;
    let (rows, orders, order_cents, discount_cents) = promo_sums(&ch)?;
    assert_eq!(
        (rows, orders, order_cents, discount_cents),
        (20_000, 20_000, added["order_cents"].as_i64().unwrap(), added["discount_cents"].as_i64().unwrap()),
        "{active_at_kill} jobs were active when the host was killed\n{}",
        survivor.log_text()
    );
    let c = counts(&redis);
    assert_eq!((c["completed"].as_i64(), c["failed"].as_i64()), (Some(100), Some(0)), "counts: {c}");
    let log = survivor.log_text();
    assert!(log.contains("jobs started before"), "the survivor recovered the dead hosts' jobs:\n{log}");
    assert!(log.contains("already have rows in this table"), "rows the failpoint host inserted were found:\n{log}");
    // Every job finished: no batch record is left behind — including one a host that died right
    // after a completion could leave (made up here: a job long gone), which the sweeper deletes.
    let mut conn = redis.conn()?;
    redis::cmd("HSET")
        .arg("sluice:written:sluice:promo-code-analytics:bull:events")
        .arg("999999\tpromo_code_usages_analytics")
        .arg("00000000-0000-0000-0000-000000000000")
        .query::<()>(&mut conn)?;
    let mut left = Vec::new();
    let cleaned = wait_until("the batch records of finished jobs to be deleted", Duration::from_secs(30), || {
        left = ["sluice:batch:*", "sluice:written:*"]
            .iter()
            .flat_map(|p| redis::cmd("KEYS").arg(*p).query::<Vec<String>>(&mut conn).unwrap_or_default())
            .collect();
        left.is_empty()
    });
    cleaned.map_err(|e| anyhow::anyhow!("{e}: {left:?}"))?;
    survivor.wait_for_log("deleted batch records left by finished jobs", Duration::from_secs(5))?;
    Ok(())
}

/// Jobs wait for a ClickHouse that is down for several lock durations: their locks are renewed
/// all along, so no job is taken for stalled, run twice or failed, and they complete once it is
/// back.
fn locks_stay_alive_while_clickhouse_is_down(release: Release) -> Result<()> {
    let redis = Redis::start()?;
    let mut ch = ClickHouse::start(release)?;
    let plugins = plugin_dir_with(&[plugins_dir().join("promo-code-analytics.wasm")])?;
    let dir = tempfile::tempdir()?;
    let config = config_file(dir.path(), "[bullmq]\nqueues = [\"events\"]\nlock_duration_ms = 2000\n")?;
    let env = [("SLUICE_CONFIG", config.to_str().unwrap())];
    let host = Host::start(&redis, &ch, plugins.path(), &env)?;
    host.wait_running(Duration::from_secs(60))?;
    ch.stop();
    let added = bullmq(&redis, &["add", "--count", "3000"])?;
    wait_until("jobs held while ClickHouse is down", Duration::from_secs(30), || {
        counts(&redis)["active"].as_i64().unwrap_or(0) > 0
            && host.metric("sluice_insert_errors_total", r#"class="retry""#) > 0.0
    })?;
    // Four lock durations with no commit possible.
    std::thread::sleep(Duration::from_secs(8));
    let c = counts(&redis);
    assert!(c["active"].as_i64().unwrap_or(0) > 0 && c["failed"] == 0 && c["completed"] == 0, "counts: {c}");
    ch.restart()?;
    wait_until("every job finished", Duration::from_secs(120), || unfinished(&counts(&redis)) == 0)
        .map_err(|e| anyhow::anyhow!("{e}; counts: {}\n{}", counts(&redis), host.log_text()))?;
    let (rows, orders, order_cents, _) = promo_sums(&ch)?;
    assert_eq!((rows, orders, order_cents), (3000, 3000, added["order_cents"].as_i64().unwrap()));
    let c = counts(&redis);
    assert_eq!((c["completed"].as_i64(), c["failed"].as_i64()), (Some(100), Some(0)), "counts: {c}");
    let log = host.log_text();
    assert!(!log.contains("jobs started before"), "no job may have been run twice:\n{log}");
    Ok(())
}

/// SIGTERM while the host holds jobs it cannot commit (ClickHouse down): it stops within its
/// grace period without failing any job — those whose rows never reached its writer are handed
/// back, those whose rows did are left to stall (it might have inserted them) — and the next host
/// does them all.
fn a_stopping_host_fails_no_job_and_the_next_host_does_them_all(release: Release) -> Result<()> {
    let redis = Redis::start()?;
    let mut ch = ClickHouse::start(release)?;
    let plugins = plugin_dir_with(&[plugins_dir().join("promo-code-analytics.wasm")])?;
    let dir = tempfile::tempdir()?;
    let config = config_file(dir.path(), "[bullmq]\nqueues = [\"events\"]\nlock_duration_ms = 2000\n")?;
    let env = [("SLUICE_CONFIG", config.to_str().unwrap()), ("SLUICE_SHUTDOWN_GRACE_S", "2")];
    let mut host = Host::start(&redis, &ch, plugins.path(), &env)?;
    host.wait_running(Duration::from_secs(60))?;
    ch.stop();
    let added = bullmq(&redis, &["add", "--count", "2000"])?;
    wait_until("jobs held", Duration::from_secs(30), || counts(&redis)["active"].as_i64().unwrap_or(0) > 0)?;
    let held = counts(&redis)["active"].as_i64().unwrap_or(0);
    let stopped = std::time::Instant::now();
    signal(&host.child, 15);
    wait_until("the host to exit", Duration::from_secs(30), || matches!(host.child.try_wait(), Ok(Some(_))))
        .map_err(|e| anyhow::anyhow!("{e}\n{}", host.log_text()))?;
    let took = stopped.elapsed();
    let c = counts(&redis);
    assert_eq!(
        (c["failed"].as_i64(), c["completed"].as_i64()),
        (Some(0), Some(0)),
        "{held} held; counts: {c}\n{}",
        host.log_text()
    );
    assert!(took < Duration::from_secs(20), "stopping took {took:?}");
    let log = host.log_text();
    assert!(log.contains("BullMQ queue consumer stopped"), "{log}");
    ch.restart()?;
    let next = Host::start(&redis, &ch, plugins.path(), &env)?;
    wait_until("every job finished", Duration::from_secs(120), || unfinished(&counts(&redis)) == 0)
        .map_err(|e| anyhow::anyhow!("{e}; counts: {}\n{}", counts(&redis), next.log_text()))?;
    let (rows, orders, order_cents, _) = promo_sums(&ch)?;
    assert_eq!((rows, orders, order_cents), (2000, 2000, added["order_cents"].as_i64().unwrap()));
    assert_eq!(counts(&redis)["failed"].as_i64(), Some(0));
    Ok(())
}

/// Versions of the plugin replaced while jobs flow: every job completed once, its rows in both
/// tables from one version.
fn plugin_versions_replaced_while_jobs_flow_lose_nothing_and_each_job_sees_one_version(release: Release) -> Result<()> {
    let redis = Redis::start()?;
    let ch = ClickHouse::start(release)?;
    let dir = tempfile::tempdir()?;
    let manifest = r#"{"name": "hot", "version": "1", "subscriptions": ["hot.event"], "tables": [
        {"name": "hot_a", "columns": [["k", "UInt64"], ["ver", "String"]], "order_by": ["k"]},
        {"name": "hot_b", "columns": [["k", "UInt64"], ["ver", "String"]], "order_by": ["k"]}]}"#;
    let install = |version: &str| {
        install_plugin(dir.path(), &test_plugin("echo"), "hot", &[("manifest", manifest), ("version", version)])
    };
    install("v0")?;
    let host = Host::start(&redis, &ch, dir.path(), &[("SLUICE_BULLMQ_QUEUES", "events")])?;
    host.wait_running(Duration::from_secs(60))?;
    let data = r#"{"rows": [{"table": "hot_a", "values": [__I__, {"setting": "version"}]}, {"table": "hot_b", "values": [__I__, {"setting": "version"}]}]}"#;
    let producer = {
        let url = redis.url();
        std::thread::spawn(move || {
            let redis = RedisAt(url);
            for part in 0..6 {
                let from = (part * 5000).to_string();
                redis.add(&["add", "--type", "hot.event", "--data", data, "--from", &from, "--count", "5000"])?;
                std::thread::sleep(Duration::from_millis(300));
            }
            anyhow::Ok(())
        })
    };
    for v in 1..=3 {
        std::thread::sleep(Duration::from_millis(1000));
        install(&format!("v{v}"))?;
    }
    producer.join().unwrap()?;
    wait_until("30,000 jobs done", Duration::from_secs(120), || {
        ch.number("SELECT count() FROM analytics.hot_b") >= 30_000 && unfinished(&counts(&redis)) == 0
    })
    .map_err(|e| anyhow::anyhow!("{e}; counts {}\n{}", counts(&redis), host.log_text()))?;
    for t in ["hot_a", "hot_b"] {
        assert_eq!(ch.query(&format!("SELECT count(), uniqExact(k) FROM analytics.{t}"))?, "30000\t30000");
    }
    let mixed = ch.number(
        "SELECT count() FROM analytics.hot_a AS a ANY INNER JOIN (SELECT k, ver AS ver_b FROM analytics.hot_b) AS b USING k WHERE ver != ver_b",
    );
    assert_eq!(mixed, 0, "jobs whose rows come from two versions");
    let c = counts(&redis);
    assert_eq!((c["completed"].as_i64(), c["failed"].as_i64()), (Some(100), Some(0)), "counts: {c}");
    let log = host.log_text();
    assert_eq!(log.matches("plugin reloaded").count(), 3, "{log}");
    let versions = ch.query("SELECT groupUniqArray(ver) FROM analytics.hot_a")?;
    assert!(versions.matches('v').count() >= 2, "few versions handled jobs: {versions}");
    Ok(())
}

/// The producer against a Redis known by URL (for threads).
struct RedisAt(String);

impl RedisAt {
    fn add(&self, args: &[&str]) -> Result<Value> {
        bullmq_at(&self.0, args)
    }
}

on_every_release!(
    ten_thousand_jobs_with_delayed_and_prioritized_ones_become_exact_rows,
    a_failing_job_ends_in_the_failed_set_with_its_error_after_its_attempts,
    hosts_killed_mid_run_lose_no_job_and_duplicate_no_row,
    locks_stay_alive_while_clickhouse_is_down,
    a_stopping_host_fails_no_job_and_the_next_host_does_them_all,
    plugin_versions_replaced_while_jobs_flow_lose_nothing_and_each_job_sees_one_version,
);
