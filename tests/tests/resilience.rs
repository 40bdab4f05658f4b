//! Never silently stuck: Redis losing its data under load (a restart without persistence, a
//! FLUSHALL), a pipeline that cannot read, dependencies down at start, streams trimmed to their
//! retention without losing what a group still needs, and events nobody reads made visible.

use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::{Value, json};
use sluice_tests::*;

const FAST: &str = "retry_base_ms = 200\nretry_max_ms = 1000\nvisibility_timeout_ms = 3000\ninsert_linger_ms = 100\nblock_ms = 200\nhousekeeping_interval_ms = 300\n";

fn publish(conn: &mut redis::Connection, from: u32, count: u32) -> Result<()> {
    let mut p = redis::pipe();
    for n in from..from + count {
        p.cmd("XADD")
            .arg("events:flaky.event")
            .arg("*")
            .arg("payload")
            .arg(json!({ "n": n }).to_string())
            .arg("id")
            .arg(format!("ev-{n}"))
            .ignore();
    }
    p.query::<()>(conn)?;
    Ok(())
}

/// Distinct events of `[from, to)` in the table.
fn landed(ch: &ClickHouse, from: u32, to: u32) -> i64 {
    ch.number(&format!("SELECT uniqExact(n) FROM analytics.flaky_rows WHERE n >= {from} AND n < {to}"))
}

fn ready(host: &Host) -> (u16, Value) {
    match host.admin("GET", "/ready", &[]) {
        Ok((status, body)) => (status, serde_json::from_str(&body).unwrap_or(Value::Null)),
        Err(_) => (0, Value::Null),
    }
}

fn start_host(redis: &Redis, ch: &ClickHouse, plugins: &std::path::Path, config: &str) -> Result<Host> {
    let cfg = config_file(plugins.parent().unwrap_or(plugins), config)?;
    let h = Host::start(redis, ch, plugins, &[("SLUICE_CONFIG", &cfg.display().to_string())])?;
    h.wait_running(Duration::from_secs(60))?;
    Ok(h)
}

/// Redis without persistence is SIGKILLed under load and comes back empty; later someone runs
/// FLUSHALL. Each time the pipelines create their groups again and go on by themselves:
/// everything published afterwards lands. A pipeline whose stream is replaced by a key of another
/// type cannot read: `/ready` is false and names it, until the key is gone.
#[test]
fn pipelines_recover_by_themselves_when_redis_loses_its_data() -> Result<()> {
    let mut redis = Redis::start_ephemeral()?;
    let ch = ClickHouse::start(Release::V18)?;
    let root = tempfile::tempdir()?;
    let plugins = root.path().join("plugins");
    std::fs::create_dir(&plugins)?;
    std::fs::copy(test_plugin("flaky"), plugins.join("flaky.wasm"))?;
    let host = start_host(&redis, &ch, &plugins, FAST)?;

    // Under load: 20,000 events, and Redis killed while they are being handled.
    let mut conn = redis.conn()?;
    publish(&mut conn, 0, 20_000)?;
    wait_until("the first rows", Duration::from_secs(60), || landed(&ch, 0, 20_000) > 0)?;
    redis.kill();
    wait_until("/ready to say Redis is down", Duration::from_secs(10), || ready(&host).0 == 503)?;
    assert_eq!(host.admin("GET", "/health", &[])?.0, 200, "alive while Redis is down");
    std::thread::sleep(Duration::from_secs(3));
    redis.restart()?;
    let mut conn = redis.conn()?;
    let len: i64 = redis::cmd("XLEN").arg("events:flaky.event").query(&mut conn)?;
    assert_eq!(len, 0, "the restarted Redis is empty");

    // Published after the loss: every one lands, with no help.
    publish(&mut conn, 100_000, 1000)?;
    wait_until("the 1000 events published after the restart", Duration::from_secs(60), || {
        landed(&ch, 100_000, 101_000) == 1000
    })
    .map_err(|e| e.context(host.log_text()))?;
    wait_until("ready again", Duration::from_secs(20), || ready(&host).0 == 200)
        .map_err(|e| e.context(format!("{:?}", ready(&host))))?;
    assert!(host.metric("sluice_consumer_groups_recreated_total", "events:flaky.event") >= 1.0);
    assert!(host.log_text().contains("did Redis lose its data"), "the loss is said once, in words");

    // FLUSHALL while running.
    redis::cmd("FLUSHALL").query::<()>(&mut conn)?;
    publish(&mut conn, 200_000, 500)?;
    wait_until("the 500 events published after FLUSHALL", Duration::from_secs(60), || {
        landed(&ch, 200_000, 200_500) == 500
    })
    .map_err(|e| e.context(host.log_text()))?;

    // A pipeline that cannot read at all: not ready, named, with the error.
    redis::cmd("FLUSHALL").query::<()>(&mut conn)?;
    redis::cmd("SET").arg("events:flaky.event").arg("not a stream").query::<()>(&mut conn)?;
    wait_until("/ready to name the stalled pipeline", Duration::from_secs(20), || {
        let (status, body) = ready(&host);
        status == 503
            && body["stalled"].to_string().contains("flaky")
            && body["stalled"].to_string().contains("WRONGTYPE")
    })
    .map_err(|e| e.context(format!("{:?}", ready(&host))))?;
    assert_eq!(host.metric("sluice_pipelines_stalled", ""), 1.0);
    redis::cmd("DEL").arg("events:flaky.event").query::<()>(&mut conn)?;
    // Ready again with no traffic at all: an idle stream read fine is not stalled.
    wait_until("ready again, idle", Duration::from_secs(20), || ready(&host).0 == 200)
        .map_err(|e| e.context(format!("{:?}", ready(&host))))?;
    publish(&mut conn, 300_000, 10)?;
    wait_until("the events published once the key is gone", Duration::from_secs(60), || {
        landed(&ch, 300_000, 300_010) == 10
    })?;
    Ok(())
}

/// A failover to a replica that had not synced: the address the host uses now leads to an
/// empty Redis (a TCP proxy switched from one server to another, dropping the connections, as
/// a virtual IP or DNS name does). The host goes on by itself with the new server.
#[test]
fn a_failover_to_an_empty_replica_is_recovered_by_itself() -> Result<()> {
    let primary = Redis::start_ephemeral()?;
    let replica = Redis::start_ephemeral()?;
    let proxy = Proxy::start(primary.port)?;
    let ch = ClickHouse::start(Release::V18)?;
    let dir = plugin_dir_with(&[test_plugin("flaky")])?;
    let cfg = config_file(dir.path(), FAST)?;
    let host = Host::start(
        &primary,
        &ch,
        dir.path(),
        &[("SLUICE_CONFIG", &cfg.display().to_string()), ("SLUICE_REDIS_URL", &proxy.url())],
    )?;
    host.wait_running(Duration::from_secs(60))?;
    publish(&mut primary.conn()?, 0, 2000)?;
    wait_until("2000 rows through the primary", Duration::from_secs(60), || landed(&ch, 0, 2000) == 2000)?;
    proxy.switch_to(replica.port);
    publish(&mut replica.conn()?, 10_000, 500)?;
    wait_until("the events published to the new server", Duration::from_secs(60), || {
        landed(&ch, 10_000, 10_500) == 500
    })
    .map_err(|e| e.context(host.log_text()))?;
    wait_until("ready", Duration::from_secs(20), || ready(&host).0 == 200)?;
    Ok(())
}

/// With Redis and ClickHouse both down, the admin API answers at once: `/health` within a
/// second, `/ready` 503 saying what the host waits for; once they are up the host starts.
#[test]
fn the_admin_api_answers_from_the_first_second_while_dependencies_are_down() -> Result<()> {
    let mut redis = Redis::start()?;
    let mut ch = ClickHouse::start(Release::V18)?;
    redis.stop();
    ch.stop();
    let dir = plugin_dir_with(&[test_plugin("flaky")])?;
    let host = Host::start(&redis, &ch, dir.path(), &[])?;
    let started = Instant::now();
    wait_until("the admin API", Duration::from_secs(10), || host.admin("GET", "/health", &[]).is_ok())?;
    assert!(started.elapsed() < Duration::from_secs(5), "served at once, not after the dependencies");
    let asked = Instant::now();
    let (status, body) = host.admin("GET", "/health", &[])?;
    assert_eq!(status, 200, "{body}");
    assert!(asked.elapsed() < Duration::from_secs(1));
    wait_until("/ready to say what it waits for", Duration::from_secs(10), || {
        let (status, body) = ready(&host);
        status == 503
            && body["starting"].as_str().is_some_and(|s| {
                s.contains("waiting for ClickHouse at")
                    && s.contains("(SLUICE_CLICKHOUSE_URL)")
                    && s.contains("attempt")
            })
    })
    .map_err(|e| e.context(format!("{:?}", ready(&host))))?;
    let addr = format!("127.0.0.1:{}", host.admin_port);
    sluice(&["health", "--admin-addr", &addr], &[])?;
    let not_ready = sluice(&["health", "--ready", "--admin-addr", &addr], &[]).unwrap_err().to_string();
    assert!(not_ready.contains("waiting for"), "{not_ready}");
    // The dashboard's API says why it cannot answer yet.
    ch.restart()?;
    wait_until("/ready to wait for Redis now", Duration::from_secs(30), || {
        ready(&host).1["starting"].as_str().is_some_and(|s| s.contains("waiting for Redis at"))
    })
    .map_err(|e| e.context(format!("{:?}", ready(&host))))?;
    let (status, body) = host.admin("GET", "/api/streams", &[])?;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("waiting for Redis"), "{body}");
    redis.restart()?;
    host.wait_running(Duration::from_secs(60))?;
    let (status, body) = host.admin("GET", "/health", &[])?;
    let uptime = serde_json::from_str::<Value>(&body)?["uptime_s"].as_u64().unwrap_or(0);
    assert!(
        status == 200 && uptime as f64 + 1.0 >= started.elapsed().as_secs_f64() - 2.0,
        "uptime from process start: {body}"
    );
    Ok(())
}

/// Addresses that can never work — ClickHouse's URL pointing at a Redis server, Redis's at an
/// HTTP server — stop the host after a few tries, naming the address, where it came from and
/// what to check, instead of retrying forever.
#[test]
fn addresses_that_can_never_work_stop_the_host_with_what_to_check() -> Result<()> {
    let redis = Redis::start()?;
    let ch = ClickHouse::start(Release::V18)?;
    let dir = tempfile::tempdir()?;
    let run = |clickhouse: &str, redis: &str| -> Result<(i32, String)> {
        let out = std::process::Command::new("timeout")
            .arg("90")
            .arg(sluice_bin())
            .args(["run", "--admin-addr", "off"])
            .env("SLUICE_PLUGINS_DIR", dir.path())
            .env("SLUICE_CLICKHOUSE_URL", clickhouse)
            .env("SLUICE_REDIS_URL", redis)
            .env_remove("SLUICE_CONFIG")
            .output()?;
        Ok((out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned()))
    };
    let started = Instant::now();
    let redis_as_ch = format!("http://127.0.0.1:{}", redis.port);
    let (code, log) = run(&redis_as_ch, &redis.url())?;
    assert_eq!(code, 2, "{log}");
    assert!(started.elapsed() < Duration::from_secs(60), "gave up after a few tries");
    let last = log.lines().last().unwrap_or_default();
    let expected = format!("error: ClickHouse at {redis_as_ch} (SLUICE_CLICKHOUSE_URL): giving up after ");
    assert!(last.starts_with(&expected), "{log}");
    assert!(last.contains("HTTP port (8123 by default"), "{log}");
    // An HTTP server where Redis should be.
    let port = free_port();
    let mut web = std::process::Command::new("python3")
        .args(["-m", "http.server", &port.to_string(), "--bind", "127.0.0.1"])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    wait_until("the HTTP server", Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    })?;
    let result = run(&ch.url(), &format!("redis://127.0.0.1:{port}"));
    let _ = web.kill();
    let _ = web.wait();
    let (code, log) = result?;
    assert_eq!(code, 2, "{log}");
    let last = log.lines().last().unwrap_or_default();
    assert!(last.contains("(SLUICE_REDIS_URL): giving up after "), "{log}");
    assert!(last.contains("not in the Redis protocol"), "{log}");
    Ok(())
}

/// Retention: a stream is trimmed to its `max_len`, but never past what a consumer group has
/// not acknowledged or not read; the dead letters to `dlq_max_len`. Events of a type nobody
/// reads show up in the log, the metrics, the API, and `publish` warns.
#[test]
fn streams_are_trimmed_to_their_retention_but_never_past_what_a_group_needs() -> Result<()> {
    let redis = Redis::start()?;
    let ch = ClickHouse::start(Release::V18)?;
    let root = tempfile::tempdir()?;
    let plugins = root.path().join("plugins");
    std::fs::create_dir(&plugins)?;
    std::fs::copy(test_plugin("flaky"), plugins.join("flaky.wasm"))?;
    let mut conn = redis.conn()?;
    // Another application's group on the same stream, which reads nothing yet.
    redis::cmd("XGROUP")
        .arg("CREATE")
        .arg("events:flaky.event")
        .arg("audit")
        .arg("0")
        .arg("MKSTREAM")
        .query::<()>(&mut conn)?;
    let config = format!("{FAST}retention_max_len = 100\ndlq_max_len = 5\nmax_attempts = 1\n");
    let host = start_host(&redis, &ch, &plugins, &config)?;
    publish(&mut conn, 0, 1000)?;
    wait_until("1000 rows", Duration::from_secs(60), || landed(&ch, 0, 1000) == 1000)?;
    let xlen = |conn: &mut redis::Connection, s: &str| redis::cmd("XLEN").arg(s).query::<i64>(conn).unwrap_or(-1);

    // The audit group has read nothing: nothing is trimmed, and the API says who holds it.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(xlen(&mut conn, "events:flaky.event"), 1000);
    let streams: Value = serde_json::from_str(&host.admin("GET", "/api/streams", &[])?.1)?;
    let held = streams.to_string();
    assert!(held.contains("consumer group audit has not finished"), "{held}");

    // The audit group reads 600 and acknowledges the first 500: the first 500 may go.
    let read: Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("audit")
        .arg("a1")
        .arg("COUNT")
        .arg(600)
        .arg("STREAMS")
        .arg("events:flaky.event")
        .arg(">")
        .query::<redis::Value>(&mut conn)
        .map(|v| redis_json(&v))?;
    let ids: Vec<String> = read[0][1].as_array().unwrap().iter().map(|e| e[0].as_str().unwrap().to_string()).collect();
    assert_eq!(ids.len(), 600);
    redis::cmd("XACK").arg("events:flaky.event").arg("audit").arg(&ids[..500]).query::<()>(&mut conn)?;
    wait_until("trimmed to what audit still needs", Duration::from_secs(20), || {
        xlen(&mut conn, "events:flaky.event") == 500
    })?;
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(xlen(&mut conn, "events:flaky.event"), 500, "never past the oldest pending entry");
    let first: Vec<redis::Value> =
        redis::cmd("XRANGE").arg("events:flaky.event").arg("-").arg("+").arg("COUNT").arg(1).query(&mut conn)?;
    assert!(redis_json(&first[0])[0] == ids[500], "the oldest kept is the oldest unacknowledged");

    // Everything acknowledged: down to the retention, and more events keep it bounded.
    redis::cmd("XACK").arg("events:flaky.event").arg("audit").arg(&ids[500..]).query::<()>(&mut conn)?;
    redis::cmd("XGROUP").arg("DESTROY").arg("events:flaky.event").arg("audit").query::<()>(&mut conn)?;
    publish(&mut conn, 1000, 3000)?;
    wait_until("4000 rows", Duration::from_secs(60), || landed(&ch, 0, 4000) == 4000)?;
    wait_until("the stream at its retention", Duration::from_secs(20), || {
        xlen(&mut conn, "events:flaky.event") == 100
    })?;
    assert!(host.metric("sluice_stream_trimmed_total", "events:flaky.event") >= 3900.0);

    // Dead letters: the newest 5 are kept.
    for n in 0..12 {
        redis::cmd("XADD")
            .arg("events:flaky.event")
            .arg("*")
            .arg("payload")
            .arg(json!({"n": 5000 + n, "permanent": true}).to_string())
            .query::<String>(&mut conn)?;
    }
    wait_until("12 dead letters counted", Duration::from_secs(30), || {
        host.metric("sluice_events_dead_lettered_total", "") >= 12.0
    })?;
    wait_until("the dead letters at their retention", Duration::from_secs(20), || xlen(&mut conn, "sluice:dlq") == 5)?;

    // A typo in a producer's event type: visible, not silent.
    let env = [("SLUICE_REDIS_URL", redis.url())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = std::process::Command::new(sluice_bin())
        .args(["publish", "OrderPlaced", r#"{"orderId": "o-1"}"#])
        .envs(env.iter().copied())
        .output()?;
    assert!(out.status.success());
    let warning = String::from_utf8_lossy(&out.stderr);
    assert!(warning.contains("no plugin reads `OrderPlaced`") && warning.contains("flaky.event"), "{warning}");
    wait_until("the unread stream in the API", Duration::from_secs(20), || {
        host.admin("GET", "/api/streams", &[]).is_ok_and(|(_, b)| {
            serde_json::from_str::<Value>(&b).is_ok_and(|v| {
                v.as_array()
                    .unwrap()
                    .iter()
                    .any(|s| s["stream"] == "events:OrderPlaced" && s["subscribed"] == false && s["length"] == 1)
            })
        })
    })?;
    host.wait_metric("sluice_unsubscribed_stream_length{stream=\"events:OrderPlaced\"} 1", Duration::from_secs(10))?;
    assert!(host.log_text().contains("no plugin subscribes to event type `OrderPlaced`"), "{}", host.log_text());
    Ok(())
}

/// A Redis reply as JSON (bulk strings as text), for reading entries in tests.
fn redis_json(v: &redis::Value) -> Value {
    match v {
        redis::Value::Array(items) => Value::Array(items.iter().map(redis_json).collect()),
        redis::Value::BulkString(b) => Value::String(String::from_utf8_lossy(b).into_owned()),
        redis::Value::SimpleString(s) => Value::String(s.clone()),
        redis::Value::Int(i) => json!(i),
        redis::Value::Nil => Value::Null,
        other => Value::String(format!("{other:?}")),
    }
}
