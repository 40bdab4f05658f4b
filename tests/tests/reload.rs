//! Hot reload on a running host: versions replaced while events flow (nothing lost, nothing
//! twice, each event handled by exactly one version), a copy in progress never loaded, broken
//! and incompatible versions leaving the old one running, files added and removed.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::{Value, json};
use sluice_tests::{ClickHouse, Host, Redis, Release, config_file, on_every_release, test_plugin, wait_until};

fn manifest(name: &str, tables: &[&str], ver_type: &str) -> String {
    let tables: Vec<Value> = tables
        .iter()
        .map(|t| json!({"name": t, "columns": [["k", "UInt64"], ["ver", ver_type]], "order_by": ["k"]}))
        .collect();
    json!({"name": name, "version": "1", "subscriptions": [format!("{name}.event")], "tables": tables}).to_string()
}

/// The echo plugin with a custom section naming `version` appended, so that every version is a
/// different file (another SHA-256) — as a rebuilt plugin would be.
fn plugin_bytes(version: &str) -> Vec<u8> {
    let mut wasm = std::fs::read(test_plugin("echo")).unwrap();
    let name = b"sluice-test-version";
    let payload = version.as_bytes();
    wasm.push(0); // custom section
    wasm.push((1 + name.len() + payload.len()) as u8);
    wasm.push(name.len() as u8);
    wasm.extend_from_slice(name);
    wasm.extend_from_slice(payload);
    wasm
}

fn sidecar(manifest: &str, version: &str) -> String {
    format!("[settings]\nmanifest = '''{manifest}'''\nversion = \"{version}\"\n")
}

/// Writes a file the way deployment tools do: to a dot-file beside it, then renamed over it.
fn replace_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_file_name(format!(".{}.tmp", path.file_name().unwrap().to_string_lossy()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn start(redis: &Redis, ch: &ClickHouse, dir: &Path) -> Result<Host> {
    let cfg = tempfile::tempdir()?.keep();
    let config = config_file(&cfg, "insert_linger_ms = 100\nretry_base_ms = 200\nbatch_size = 500\n")?;
    let h = Host::start(redis, ch, dir, &[("SLUICE_CONFIG", &config.display().to_string())])?;
    h.wait_running(Duration::from_secs(60))?;
    Ok(h)
}

fn ten_replacements_while_50000_events_flow_lose_nothing_and_each_event_sees_one_version(
    release: Release,
) -> Result<()> {
    let redis = Redis::start()?;
    let ch = ClickHouse::start(release)?;
    let dir = tempfile::tempdir()?;
    let m = manifest("hot", &["hot_a", "hot_b"], "String");
    let wasm = dir.path().join("hot.wasm");
    std::fs::write(dir.path().join("hot.toml"), sidecar(&m, "v0"))?;
    std::fs::write(&wasm, plugin_bytes("v0"))?;
    let host = start(&redis, &ch, dir.path())?;

    // 50,000 events at a steady pace (~4,000/s), each writing one row to each of two tables
    // with the version of the plugin that handled it.
    let publisher = {
        let url = redis.url();
        std::thread::spawn(move || -> Result<()> {
            let mut conn = redis::Client::open(url)?.get_connection()?;
            for chunk in 0..50 {
                let mut pipe = redis::pipe();
                for i in chunk * 1000..(chunk + 1) * 1000 {
                    let v = json!({"setting": "version"});
                    let payload =
                        json!({"rows": [{"table": "hot_a", "values": [i, v]}, {"table": "hot_b", "values": [i, v]}]});
                    pipe.cmd("XADD").arg("events:hot.event").arg("*").arg("payload").arg(payload.to_string()).ignore();
                }
                pipe.query::<()>(&mut conn)?;
                std::thread::sleep(Duration::from_millis(250));
            }
            Ok(())
        })
    };
    // Meanwhile, ten new versions, one every 1.2 s; the fifth is copied slowly, in two halves.
    for n in 1..=10 {
        std::thread::sleep(Duration::from_millis(1200));
        let version = format!("v{n}");
        replace_atomically(&dir.path().join("hot.toml"), sidecar(&m, &version).as_bytes())?;
        let bytes = plugin_bytes(&version);
        if n == 5 {
            let mut f = std::fs::File::create(&wasm)?;
            f.write_all(&bytes[..bytes.len() / 2])?;
            f.flush()?;
            std::thread::sleep(Duration::from_millis(200));
            f.write_all(&bytes[bytes.len() / 2..])?;
        } else {
            replace_atomically(&wasm, &bytes)?;
        }
    }
    publisher.join().unwrap()?;
    wait_until("50,000 rows in each table", Duration::from_secs(120), || {
        ch.number("SELECT count() FROM analytics.hot_a") == 50_000
            && ch.number("SELECT count() FROM analytics.hot_b") == 50_000
    })
    .map_err(|e| anyhow::anyhow!("{e:#}\n{}", host.log_text()))?;
    std::thread::sleep(Duration::from_millis(500));

    // Nothing twice...
    for t in ["hot_a", "hot_b"] {
        assert_eq!(ch.query(&format!("SELECT count(), uniqExact(k) FROM analytics.{t}"))?, "50000\t50000");
    }
    // ...each event's rows from one version...
    let mixed = ch.number(
        "SELECT count() FROM analytics.hot_a AS a ANY INNER JOIN (SELECT k, ver AS ver_b FROM analytics.hot_b) AS b USING k WHERE ver != ver_b",
    );
    assert_eq!(mixed, 0, "events whose rows come from two versions");
    // ...and the versions really changed under load, the half-copied file included.
    let log = host.log_text();
    // For the record (docs/plugins.md, "Hot reload"): file changed → new version serving, and until the
    // old one had drained.
    for line in log.lines().filter(|l| l.contains("plugin reloaded")) {
        let fields: Vec<&str> = line.split_whitespace().filter(|w| w.contains("_ms=")).collect();
        eprintln!("reload: {}", fields.join(" "));
    }
    assert_eq!(log.matches("plugin reloaded").count(), 10, "{log}");
    assert!(!log.contains("new version not started"), "a version failed to load:\n{log}");
    let versions = ch.query("SELECT groupUniqArray(ver) FROM analytics.hot_a")?;
    assert!(versions.matches('v').count() >= 5, "few versions handled events: {versions}");
    assert!(ch.query("SELECT max(ver = 'v10') FROM analytics.hot_a")? == "1" || versions.contains("v9"), "{versions}");
    let (_, metrics) = host.admin("GET", "/metrics", &[])?;
    assert!(metrics.contains("sluice_plugin_reloads_total{result=\"ok\"} 10"), "{metrics}");
    Ok(())
}

fn broken_and_incompatible_versions_leave_the_old_one_running_and_files_come_and_go(release: Release) -> Result<()> {
    let redis = Redis::start()?;
    let ch = ClickHouse::start(release)?;
    let dir = tempfile::tempdir()?;
    let keep = manifest("keep", &["keep_rows"], "String");
    std::fs::write(dir.path().join("keep.toml"), sidecar(&keep, "v1"))?;
    std::fs::write(dir.path().join("keep.wasm"), plugin_bytes("v1"))?;
    let host = start(&redis, &ch, dir.path())?;
    let mut conn = redis.conn()?;
    let mut next = 0u64;
    let mut publish = |conn: &mut redis::Connection, t: &str, n: u64| -> Result<()> {
        for _ in 0..n {
            let payload = json!({"rows": [{"table": format!("{t}_rows"), "values": [next, {"setting": "version"}]}]});
            redis::cmd("XADD")
                .arg(format!("events:{t}.event"))
                .arg("*")
                .arg("payload")
                .arg(payload.to_string())
                .query::<String>(conn)?;
            next += 1;
        }
        Ok(())
    };
    publish(&mut conn, "keep", 100)?;
    wait_until("100 rows", Duration::from_secs(30), || ch.number("SELECT count() FROM analytics.keep_rows") == 100)?;

    // A broken file: the old version keeps serving, and says why.
    std::fs::write(dir.path().join("keep.wasm"), b"\0asm but not really")?;
    host.wait_metric(r#"sluice_plugin_reloads_total{result="failed"} 1"#, Duration::from_secs(20))?;
    publish(&mut conn, "keep", 100)?;
    wait_until("200 rows, by v1", Duration::from_secs(30), || {
        ch.number("SELECT count() FROM analytics.keep_rows") == 200
    })?;
    assert_eq!(ch.query("SELECT groupUniqArray(ver) FROM analytics.keep_rows")?, "['v1']");
    let plugins: Value = serde_json::from_str(&host.admin("GET", "/api/plugins", &[])?.1)?;
    let entry = &plugins[0];
    assert_eq!((entry["name"].as_str(), entry["status"].as_str()), (Some("keep"), Some("running")), "{plugins}");
    assert!(entry["error"].as_str().unwrap().contains("is not a valid WebAssembly component"), "{plugins}");
    let (_, metrics) = host.admin("GET", "/metrics", &[])?;
    assert!(metrics.contains("sluice_plugin_reloads_total{result=\"failed\"} 1"), "{metrics}");

    // An incompatible version (a column changes type): refused, the old one still serves.
    let changed = manifest("keep", &["keep_rows"], "UInt64");
    std::fs::write(dir.path().join("keep.toml"), sidecar(&changed, "v2"))?;
    std::fs::write(dir.path().join("keep.wasm"), plugin_bytes("v2"))?;
    host.wait_metric(r#"sluice_plugin_reloads_total{result="refused"} 1"#, Duration::from_secs(20))?;
    let plugins: Value = serde_json::from_str(&host.admin("GET", "/api/plugins", &[])?.1)?;
    let error = plugins[0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("column `ver` is String in the live table but the plugin declares UInt64"), "{plugins}");
    publish(&mut conn, "keep", 100)?;
    wait_until("300 rows, by v1", Duration::from_secs(30), || {
        ch.number("SELECT count() FROM analytics.keep_rows") == 300
    })?;
    assert_eq!(ch.query("SELECT groupUniqArray(ver) FROM analytics.keep_rows")?, "['v1']");

    // A good version after all that is taken.
    std::fs::write(dir.path().join("keep.toml"), sidecar(&keep, "v3"))?;
    std::fs::write(dir.path().join("keep.wasm"), plugin_bytes("v3"))?;
    host.wait_metric(r#"sluice_plugin_reloads_total{result="ok"} 1"#, Duration::from_secs(20))?;
    publish(&mut conn, "keep", 100)?;
    wait_until("400 rows", Duration::from_secs(30), || ch.number("SELECT count() FROM analytics.keep_rows") == 400)?;
    assert_eq!(ch.query("SELECT ver, count() FROM analytics.keep_rows GROUP BY ver ORDER BY ver")?, "v1\t300\nv3\t100");

    // A new file is loaded; removing it stops its plugin but keeps its group and backlog.
    let extra = manifest("extra", &["extra_rows"], "String");
    std::fs::write(dir.path().join("extra.toml"), sidecar(&extra, "e1"))?;
    std::fs::write(dir.path().join("extra.wasm"), plugin_bytes("e1"))?;
    host.wait_metric(r#"sluice_plugin_reloads_total{result="ok"} 2"#, Duration::from_secs(20))?;
    publish(&mut conn, "extra", 10)?;
    wait_until("10 extra rows", Duration::from_secs(30), || {
        ch.number("SELECT count() FROM analytics.extra_rows") == 10
    })?;
    std::fs::remove_file(dir.path().join("extra.wasm"))?;
    host.wait_metric(r#"sluice_plugin_reloads_total{result="removed"} 1"#, Duration::from_secs(20))?;
    let started = Instant::now();
    publish(&mut conn, "extra", 10)?;
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(ch.number("SELECT count() FROM analytics.extra_rows"), 10, "a removed plugin kept consuming");
    let groups: Vec<redis::Value> = redis::cmd("XINFO").arg("GROUPS").arg("events:extra.event").query(&mut conn)?;
    assert_eq!(groups.len(), 1, "the consumer group stays");
    let streams: Value = serde_json::from_str(&host.admin("GET", "/api/streams", &[])?.1)?;
    assert!(streams.as_array().unwrap().iter().all(|s| s["plugin"] != "extra"), "{streams}");
    assert!(started.elapsed() < Duration::from_secs(10));
    Ok(())
}

fn a_restart_loads_compiled_code_from_the_cache(release: Release) -> Result<()> {
    let redis = Redis::start()?;
    let ch = ClickHouse::start(release)?;
    let dir = sluice_tests::plugin_dir_with(&sluice_tests::first_party_plugins())?;
    let cache = tempfile::tempdir()?;
    let cache_env = cache.path().display().to_string();
    let compile_ms = |log: &str, cached: bool| -> Vec<u64> {
        log.lines()
            .filter(|l| l.contains("plugin loaded") && l.contains(&format!("compiled_from_cache={cached}")))
            .filter_map(|l| {
                l.split_whitespace().find_map(|w| w.strip_prefix("compile_ms=")).and_then(|v| v.parse().ok())
            })
            .collect()
    };
    let mut first = Host::start(&redis, &ch, dir.path(), &[("SLUICE_CACHE_DIR", &cache_env)])?;
    first.wait_running(Duration::from_secs(60))?;
    first.stop();
    let cold = compile_ms(&first.log_text(), false);
    assert_eq!(cold.len(), 3, "{}", first.log_text());
    assert_eq!(std::fs::read_dir(cache.path())?.count(), 3, "one artifact per plugin file");
    let second = Host::start(&redis, &ch, dir.path(), &[("SLUICE_CACHE_DIR", &cache_env)])?;
    second.wait_running(Duration::from_secs(60))?;
    let warm = compile_ms(&second.log_text(), true);
    assert_eq!(warm.len(), 3, "{}", second.log_text());
    eprintln!("compile ms per plugin: cold {cold:?}, from the cache {warm:?}");
    // A cache that cannot be used is one clear error when it was asked for.
    let bad = Host::start(&redis, &ch, dir.path(), &[("SLUICE_CACHE_DIR", "/proc/no-such-dir")])?;
    wait_until("the host to refuse the cache", Duration::from_secs(20), || {
        bad.log_text().contains("SLUICE_CACHE_DIR")
    })?;
    assert!(bad.log_text().contains("cannot create the compiled-code cache /proc/no-such-dir"), "{}", bad.log_text());
    Ok(())
}

fn an_idle_host_watching_its_plugins_does_not_spin(release: Release) -> Result<()> {
    // The rescan opens the directory, and inotify reports opens: a watcher that woke on every
    // event rescanned in a loop, a third of a core with nothing to do.
    let redis = Redis::start()?;
    let ch = ClickHouse::start(release)?;
    let dir = tempfile::tempdir()?;
    std::fs::copy(sluice_tests::plugins_dir().join("order-analytics.wasm"), dir.path().join("order-analytics.wasm"))?;
    let host = Host::start(&redis, &ch, dir.path(), &[])?;
    host.wait_running(Duration::from_secs(60))?;
    std::thread::sleep(Duration::from_secs(1));
    let before = sluice_tests::process_usage(host.child.id())?.0;
    std::thread::sleep(Duration::from_secs(5));
    let used = sluice_tests::process_usage(host.child.id())?.0 - before;
    // Idle work is a few Redis reads per second per pipeline: far below 10% of a core.
    assert!(used < 0.5, "an idle host used {used:.2} CPU seconds in 5 s");
    Ok(())
}

on_every_release!(
    ten_replacements_while_50000_events_flow_lose_nothing_and_each_event_sees_one_version,
    broken_and_incompatible_versions_leave_the_old_one_running_and_files_come_and_go,
    a_restart_loads_compiled_code_from_the_cache,
    an_idle_host_watching_its_plugins_does_not_spin,
);
