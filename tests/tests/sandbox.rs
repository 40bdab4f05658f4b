//! The sandbox under hostile plugins: an endless loop, a memory bomb, a panic, ten million
//! rows, a row for an undeclared table, wrong value types and an attempt to read a file and
//! the environment. Each fails alone with a clear error, within its limits, while a
//! well-behaved plugin beside it keeps processing. And what a plugin of another team does by
//! accident: rows nested far deeper than any stack, sleeping in a host call (in a handler and
//! in `describe`), a UDP socket, a log flood, deep recursion, a file that calls itself another
//! plugin, and plugins declaring another plugin's tables — the host stays up and answering, the
//! first-party plugins' tables stay exact and their pace within a small factor.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::json;
use sluice_tests::{
    ClickHouse, Host, Redis, Release, SeedSums, config_file, dead_letters, first_party_plugins, install_plugin,
    on_every_release, plugin_dir_with, plugins_dir, process_usage, sluice, test_plugin, total_pending, user_sums,
    wait_until,
};

fn each_hostile_plugin_call_fails_alone_within_its_limits_while_a_good_plugin_keeps_going(
    release: Release,
) -> Result<()> {
    let redis = Redis::start()?;
    let ch = ClickHouse::start(release)?;
    let dir = plugin_dir_with(&[test_plugin("hostile"), plugins_dir().join("order-analytics.wasm")])?;
    // Tighter limits for the hostile plugin alone, in its sidecar file.
    std::fs::write(dir.path().join("hostile.toml"), "[limits]\ncall_timeout_ms = 1000\nmax_memory_mb = 64\n")?;
    let cfg = tempfile::tempdir()?;
    let config =
        config_file(cfg.path(), "max_attempts = 2\nretry_base_ms = 100\nretry_max_ms = 200\ninsert_linger_ms = 50\n")?;
    let mut conn = redis.conn()?;
    // The hostile events, among 100 harmless ones of the same plugin.
    let hostile = ["loop", "alloc", "panic", "rows", "undeclared", "wrong_types", "escape"];
    let mut pipe = redis::pipe();
    for k in 0..100u64 {
        let action = if k % 14 == 3 { hostile[(k / 14) as usize] } else { "ok" };
        let payload = json!({"k": k, "do": action});
        pipe.cmd("XADD")
            .arg("events:hostile.event")
            .arg("*")
            .arg("payload")
            .arg(payload.to_string())
            .arg("id")
            .arg(action_id(k, action))
            .ignore();
    }
    pipe.query::<()>(&mut conn)?;
    let host = Host::start(&redis, &ch, dir.path(), &[("SLUICE_CONFIG", &config.display().to_string())])?;
    host.wait_running(Duration::from_secs(60))?;

    // The good plugin's events arrive while the hostile ones are being dealt with.
    let started = Instant::now();
    let env = [("SLUICE_REDIS_URL", redis.url())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    sluice(&["publish", "OrderCreatedEvent", "--count", "3000"], &env)?;
    wait_until("3000 order rows", Duration::from_secs(60), || ch.rows("orders_analytics") == 3000)?;
    let good_took = started.elapsed();

    wait_until("the hostile events dead-lettered", Duration::from_secs(90), || {
        dead_letters(&mut conn).len() == hostile.len()
    })
    .map_err(|e| anyhow::anyhow!("{e:#}\n{:?}\n{}", dead_letters(&mut conn), host.log_text()))?;
    assert_eq!(
        ch.rows("hostile_rows"),
        100 - hostile.len() as i64,
        "the harmless events of the hostile plugin land too"
    );
    let by_id: HashMap<String, HashMap<String, String>> =
        dead_letters(&mut conn).into_iter().map(|d| (d["event_id"].clone(), d)).collect();
    let expect = |action: &str, kind: &str, needles: &[&str]| {
        let k = (hostile.iter().position(|h| *h == action).unwrap() * 14 + 3) as u64;
        let d = by_id.get(&action_id(k, action)).unwrap_or_else(|| panic!("{action} was not dead-lettered: {by_id:?}"));
        assert_eq!(d["error_kind"], kind, "{action}: {d:?}");
        for n in needles {
            assert!(d["error"].contains(n), "{action}: `{n}` not in `{}`", d["error"]);
        }
    };
    expect("loop", "retries_exhausted", &["deadline of 1s exceeded (call_timeout)"]);
    expect("alloc", "retries_exhausted", &["memory limit", "64 MiB"]);
    expect("panic", "retries_exhausted", &["hostile: asked to panic on k=31"]);
    expect("rows", "retries_exhausted", &["64 MiB"]);
    expect("undeclared", "retries_exhausted", &["row for table index 7, but the plugin declares 1 tables"]);
    expect(
        "wrong_types",
        "permanent",
        &["table `hostile_rows`, column `k`: expected UInt64, got string \"not a number\""],
    );
    // No file system, environment or arguments inside the sandbox.
    expect("escape", "permanent", &["escape attempt: file: ", "env HOME: environment variable not found", "args: 0"]);
    let escape = &by_id[&action_id(6 * 14 + 3, "escape")]["error"];
    assert!(!escape.contains("root:"), "a plugin read /etc/passwd: {escape}");
    eprintln!("good plugin: 3000 events in {good_took:?} beside the hostile one");
    // The limits were the hostile plugin's own; the good plugin kept the host's defaults.
    let plugins: serde_json::Value = serde_json::from_str(&host.admin("GET", "/api/plugins", &[])?.1)?;
    let limits: HashMap<String, (u64, u64)> = plugins
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let l = &p["limits"];
            (
                p["name"].as_str().unwrap().to_string(),
                (l["call_timeout_ms"].as_u64().unwrap(), l["max_memory_bytes"].as_u64().unwrap() >> 20),
            )
        })
        .collect();
    assert_eq!(limits["hostile"], (1000, 64));
    assert_eq!(limits["order-analytics"], (5000, 128));
    Ok(())
}

fn action_id(k: u64, action: &str) -> String {
    format!("{action}-{k}")
}

fn secrets_reach_only_their_plugin_and_never_the_log_or_the_api(release: Release) -> Result<()> {
    let redis = Redis::start()?;
    let ch = ClickHouse::start(release)?;
    let dir = tempfile::tempdir()?;
    let manifest = json!({"name": "keyed", "version": "1", "subscriptions": ["keyed.event"],
        "tables": [{"name": "keyed_rows", "columns": [["k", "UInt64"], ["key", "String"]], "order_by": ["k"]}]});
    std::fs::copy(test_plugin("echo"), dir.path().join("keyed.wasm"))?;
    std::fs::write(
        dir.path().join("keyed.toml"),
        format!("[settings]\nmanifest = '''{manifest}'''\n[secrets]\napi_key = \"KEYED_API_KEY\"\n"),
    )?;
    let secret = "s3cr3t-9f8e7d";
    let host = Host::start(&redis, &ch, dir.path(), &[("KEYED_API_KEY", secret)])?;
    host.wait_running(Duration::from_secs(60))?;
    let mut conn = redis.conn()?;
    let payload = json!({"rows": [{"table": "keyed_rows", "values": [1, {"setting": "api_key"}]}]});
    redis::cmd("XADD")
        .arg("events:keyed.event")
        .arg("*")
        .arg("payload")
        .arg(payload.to_string())
        .query::<String>(&mut conn)?;
    wait_until("the row", Duration::from_secs(30), || ch.rows("keyed_rows") == 1)?;
    assert_eq!(ch.query("SELECT key FROM analytics.keyed_rows")?, secret, "the plugin read its secret");
    for path in ["/api/plugins", "/ready", "/metrics"] {
        assert!(!host.admin("GET", path, &[])?.1.contains(secret), "{path} shows the secret");
    }
    assert!(!host.log_text().contains(secret), "the log shows the secret");

    // A secret whose variable is missing is one clear error, naming both.
    let dir2 = tempfile::tempdir()?;
    std::fs::copy(test_plugin("echo"), dir2.path().join("keyed.wasm"))?;
    std::fs::write(dir2.path().join("keyed.toml"), "[secrets]\napi_key = \"NOT_SET_ANYWHERE\"\n")?;
    let err = sluice(&["plugin", "inspect", &dir2.path().join("keyed.wasm").display().to_string()], &[]).unwrap_err();
    assert!(
        err.to_string().contains("secret `api_key`: the environment variable NOT_SET_ANYWHERE is not set"),
        "{err}"
    );
    Ok(())
}

fn grants_open_exactly_what_the_sidecar_names_and_delivery_settings_apply_per_plugin(release: Release) -> Result<()> {
    let redis = Redis::start()?;
    let ch = ClickHouse::start(release)?;
    let dir = tempfile::tempdir()?;
    // The hostile plugin may read /etc and see HOME, and nothing else: the directory is granted
    // in the host's config, the variable in the plugin's sidecar (merged key by key).
    std::fs::copy(test_plugin("hostile"), dir.path().join("hostile.wasm"))?;
    std::fs::write(dir.path().join("hostile.toml"), "[grants]\nenv = [\"HOME\"]\n")?;
    let host_config = config_file(
        dir.path(),
        "[plugins.hostile.grants]\nread_dirs = [\"/etc\"]\n[plugins.hostile.limits]\ncall_timeout_ms = 3000\n",
    )?;
    // The echo plugin subscribes to two types but is told to consume one, into prefixed tables.
    let manifest = json!({"name": "picky", "version": "1", "subscriptions": ["picky.a", "picky.b"],
        "tables": [{"name": "picky_rows", "columns": [["k", "UInt64"]], "order_by": ["k"]}]});
    std::fs::copy(test_plugin("echo"), dir.path().join("picky.wasm"))?;
    std::fs::write(
        dir.path().join("picky.toml"),
        format!(
            "[settings]\nmanifest = '''{manifest}'''\n[delivery]\nevent_types = [\"picky.a\"]\nmax_attempts = 1\npriority = \"high\"\n[clickhouse]\ntable_prefix = \"staging_\"\n"
        ),
    )?;
    let host = Host::start(
        &redis,
        &ch,
        dir.path(),
        &[("HOME", "/granted-home"), ("SLUICE_CONFIG", &host_config.display().to_string())],
    )?;
    host.wait_running(Duration::from_secs(60))?;
    let mut conn = redis.conn()?;
    let xadd = |conn: &mut redis::Connection, stream: &str, payload: serde_json::Value| -> Result<String> {
        Ok(redis::cmd("XADD").arg(stream).arg("*").arg("payload").arg(payload.to_string()).query(conn)?)
    };
    xadd(&mut conn, "events:hostile.event", json!({"k": 1, "do": "escape"}))?;
    for k in 0..5 {
        xadd(&mut conn, "events:picky.a", json!({"rows": [{"table": "picky_rows", "values": [k]}]}))?;
        xadd(&mut conn, "events:picky.b", json!({"rows": [{"table": "picky_rows", "values": [100 + k]}]}))?;
    }
    wait_until("the escape report and the picky rows", Duration::from_secs(30), || {
        dead_letters(&mut conn).len() == 1 && ch.rows("staging_picky_rows") == 5
    })?;
    let passwd_len = std::fs::metadata("/etc/passwd")?.len();
    let report = &dead_letters(&mut conn)[0]["error"];
    assert_eq!(report, &format!("escape attempt: file: {passwd_len}; env HOME: /granted-home; args: 0"));
    assert_eq!(ch.query("SELECT max(k) FROM analytics.staging_picky_rows")?, "4", "only picky.a was consumed");
    let groups: Vec<redis::Value> = redis::cmd("XINFO").arg("GROUPS").arg("events:picky.b").query(&mut conn)?;
    assert!(groups.is_empty(), "picky.b must not be consumed at all");
    assert!(host.log_text().contains("priority=high"), "{}", host.log_text());
    let plugins: serde_json::Value = serde_json::from_str(&host.admin("GET", "/api/plugins", &[])?.1)?;
    let hostile = plugins.as_array().unwrap().iter().find(|p| p["name"] == "hostile").unwrap();
    assert_eq!(hostile["limits"]["call_timeout_ms"], 3000, "from [plugins.hostile.limits] of the host config");

    // A grant of something that is not a directory is refused, naming the file and the key.
    let bad = tempfile::tempdir()?;
    std::fs::copy(test_plugin("hostile"), bad.path().join("hostile.wasm"))?;
    std::fs::write(bad.path().join("hostile.toml"), "[grants]\nread_dirs = [\"relative/dir\"]\n")?;
    let err = sluice(&["plugin", "inspect", &bad.path().join("hostile.wasm").display().to_string()], &[]).unwrap_err();
    assert!(err.to_string().contains("grants.read_dirs: relative/dir is not an absolute path to a directory"), "{err}");
    Ok(())
}

on_every_release!(
    each_hostile_plugin_call_fails_alone_within_its_limits_while_a_good_plugin_keeps_going,
    secrets_reach_only_their_plugin_and_never_the_log_or_the_api,
    grants_open_exactly_what_the_sidecar_names_and_delivery_settings_apply_per_plugin,
    a_plugin_cannot_hurt_the_host_or_its_neighbours,
);

/// Publishes seed events `range` (see [`SeedSums::event`]) in one pipeline.
fn publish_seed(conn: &mut redis::Connection, range: std::ops::Range<u32>, sums: &mut SeedSums) -> Result<()> {
    let mut pipe = redis::pipe();
    for i in range {
        let (stream, payload) = sums.event(i);
        pipe.cmd("XADD").arg(stream).arg("*").arg("payload").arg(payload).arg("id").arg(format!("seed-{i}")).ignore();
    }
    pipe.query::<()>(conn)?;
    Ok(())
}

fn a_plugin_cannot_hurt_the_host_or_its_neighbours(release: Release) -> Result<()> {
    let redis = Redis::start()?;
    let ch = ClickHouse::start(release)?;
    let dir = plugin_dir_with(&first_party_plugins())?;
    let d = dir.path();
    // The hostile plugin, with a deadline of its own; a copy whose `describe` sleeps.
    std::fs::copy(test_plugin("hostile"), d.join("hostile.wasm"))?;
    std::fs::write(d.join("hostile.toml"), "[limits]\ncall_timeout_ms = 2000\nmax_memory_mb = 64\n")?;
    std::fs::copy(test_plugin("hostile"), d.join("sleepy.wasm"))?;
    std::fs::write(
        d.join("sleepy.toml"),
        "[settings]\nname = \"sleepy\"\ndescribe_sleep_ms = 600000\n[limits]\ncall_timeout_ms = 2000\n",
    )?;
    // A file that calls itself promo-code-analytics, sorting before the real one.
    let impostor = json!({"name": "promo-code-analytics", "version": "9", "subscriptions": ["PromoCodeAppliedEvent"],
        "tables": [{"name": "impostor_rows", "columns": [["k", "UInt64"]], "order_by": ["k"]}]})
    .to_string();
    install_plugin(d, &test_plugin("echo"), "a-impostor", &[("manifest", &impostor)])?;
    // Plugins declaring first-party tables: the same columns, and one more.
    let promo_cols = json!([
        ["event_date", "Date"],
        ["created_at", "DateTime"],
        ["promo_code", "String"],
        ["promo_code_id", "String"],
        ["user_id", "String"],
        ["order_id", "String"],
        ["order_amount", "Float64"],
        ["discount_amount", "Float64"]
    ]);
    let hijack_same = json!({"name": "hijack-same", "version": "1", "subscriptions": ["hijack.event"],
        "tables": [{"name": "promo_code_usages_analytics", "columns": promo_cols, "partition_by": "toYYYYMM(event_date)",
                    "order_by": ["event_date", "promo_code"]}]})
    .to_string();
    // Deployed once the first-party plugins run (their tables exist, and are theirs).
    let later = tempfile::tempdir()?;
    install_plugin(later.path(), &test_plugin("echo"), "hijack-same", &[("manifest", &hijack_same)])?;
    let users_cols = json!([
        ["event_date", "Date"],
        ["user_id", "String"],
        ["orders_count", "UInt64"],
        ["orders_amount", "Float64"],
        ["promo_uses", "UInt64"],
        ["discount_amount", "Float64"],
        ["hijack", "String"]
    ]);
    let hijack_alter = json!({"name": "hijack-alter", "version": "1", "subscriptions": ["hijack.event"],
        "tables": [{"name": "users_analytics", "columns": users_cols, "engine": {"summing": []},
                    "partition_by": "toYYYYMM(event_date)", "order_by": ["event_date", "user_id"]}]})
    .to_string();
    install_plugin(later.path(), &test_plugin("echo"), "hijack-alter", &[("manifest", &hijack_alter)])?;
    let cfg = tempfile::tempdir()?;
    let config = config_file(
        cfg.path(),
        "max_attempts = 2\nretry_base_ms = 100\nretry_max_ms = 300\ninsert_linger_ms = 50\nvisibility_timeout_ms = 3000\n",
    )?;

    // The first-party plugins first, alone: their tables exist and belong to them.
    let mut conn = redis.conn()?;
    let mut sums = SeedSums::default();
    let started = Instant::now();
    let host = Host::start(&redis, &ch, d, &[("SLUICE_CONFIG", &config.display().to_string())])?;
    // The admin API answers while `sleepy` sleeps in `describe`.
    wait_until("/health while the plugins load", Duration::from_secs(5), || {
        host.admin("GET", "/health", &[]).is_ok_and(|(s, _)| s == 200)
    })?;
    assert!(started.elapsed() < Duration::from_secs(3), "/health took {:?}", started.elapsed());
    host.wait_running(Duration::from_secs(60))?;
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "one stuck describe held the start up: {:?}",
        started.elapsed()
    );
    for name in ["hijack-same", "hijack-alter"] {
        for ext in ["toml", "wasm"] {
            std::fs::copy(later.path().join(format!("{name}.{ext}")), d.join(format!("{name}.{ext}")))?;
        }
    }
    wait_until("the hijackers refused", Duration::from_secs(30), || {
        host.log_text().lines().filter(|l| l.contains("hijack-") && l.contains("not started")).count() == 2
    })
    .map_err(|e| e.context(host.log_text()))?;
    let log = host.log_text();
    for (file, why) in [
        (
            "sleepy.wasm",
            "describe() failed: deadline of 2s exceeded (call_timeout) while the plugin waited in a host call",
        ),
        ("a-impostor.wasm", "the plugin calls itself `promo-code-analytics` but its file is `a-impostor.wasm`"),
        (
            "hijack-same.wasm",
            "table analytics.promo_code_usages_analytics: it belongs to the plugin `promo-code-analytics`",
        ),
        ("hijack-alter.wasm", "table analytics.users_analytics: it belongs to the plugin `user-stats`"),
    ] {
        let line = log.lines().find(|l| l.contains(file) && l.contains("not started")).unwrap_or_default();
        assert!(line.contains(why), "{file}: `{why}` not in `{line}`\n{log}");
    }
    assert!(!ch.query("DESCRIBE TABLE analytics.users_analytics")?.contains("hijack"), "users_analytics was altered");
    assert!(log.contains("plugin=\"promo-code-analytics\" version=0.1.0"), "the real plugin runs: {log}");

    // Their pace alone.
    let n = 20_000u32;
    let t0 = Instant::now();
    publish_seed(&mut conn, 0..n, &mut sums)?;
    wait_until("the seed events alone", Duration::from_secs(120), || {
        SeedSums::in_tables(&ch).is_ok_and(|t| t == sums)
    })?;
    let alone = t0.elapsed();

    // Then the hostile events, and as many seed events again while they are dealt with.
    let hostile = ["deep", "sleep", "udp", "recurse", "loop", "alloc", "panic"];
    let mut pipe = redis::pipe();
    for (k, action) in hostile.iter().enumerate() {
        for copy in 0..3 {
            let k = (k * 10 + copy) as u64;
            pipe.cmd("XADD")
                .arg("events:hostile.event")
                .arg("*")
                .arg("payload")
                .arg(json!({"k": k, "do": action}).to_string())
                .arg("id")
                .arg(action_id(k, action))
                .ignore();
        }
    }
    for k in 1000..1100u64 {
        let action = if k < 1003 { "log_flood" } else { "ok" };
        pipe.cmd("XADD")
            .arg("events:hostile.event")
            .arg("*")
            .arg("payload")
            .arg(json!({"k": k, "do": action}).to_string())
            .ignore();
    }
    pipe.query::<()>(&mut conn)?;
    std::thread::sleep(Duration::from_millis(300));
    let t1 = Instant::now();
    publish_seed(&mut conn, n..2 * n, &mut sums)?;
    wait_until("the seed events beside the hostile ones", Duration::from_secs(240), || {
        SeedSums::in_tables(&ch).is_ok_and(|t| t == sums)
    })
    .map_err(|e| e.context(format!("{:?}", SeedSums::in_tables(&ch))))?;
    let beside = t1.elapsed();
    eprintln!("first-party plugins: {n} seed events in {alone:?} alone, {beside:?} beside the hostile plugin");
    // A neighbour's slow calls cost a share of the CPU, never its turn (it was 46x): a loose
    // bound here, the measured factor is in the log above.
    assert!(
        beside < alone * 8 + Duration::from_secs(10),
        "the first-party plugins slowed from {alone:?} to {beside:?} beside the hostile plugin"
    );

    // Every hostile event ends with a classified error, within its limits; none stays pending.
    let expected = hostile.len() * 3;
    wait_until("every hostile event dead-lettered", Duration::from_secs(180), || {
        dead_letters(&mut conn).iter().filter(|d| d["plugin"] == "hostile").count() == expected
            && total_pending(&mut conn, &["events:hostile.event"]).unwrap_or(-1) == 0
    })
    .map_err(|e| e.context(format!("{:#?}", dead_letters(&mut conn))))?;
    let by_id: HashMap<String, HashMap<String, String>> =
        dead_letters(&mut conn).into_iter().map(|d| (d["event_id"].clone(), d)).collect();
    for (k, action) in hostile.iter().enumerate() {
        let d = &by_id[&action_id((k * 10) as u64, action)];
        let (kind, needle) = match *action {
            "deep" => ("permanent", "column `s`: expected String, got array of 1"),
            "sleep" => {
                ("retries_exhausted", "deadline of 2s exceeded (call_timeout) while the plugin waited in a host call")
            }
            "udp" => ("permanent", "udp: Err("),
            "recurse" => ("retries_exhausted", "stack overflow"),
            "loop" => ("retries_exhausted", "deadline of 2s exceeded (call_timeout)"),
            "alloc" => ("retries_exhausted", "memory limit of 64 MiB exceeded"),
            _ => ("retries_exhausted", "hostile: asked to panic"),
        };
        assert_eq!(d["error_kind"], kind, "{action}: {d:?}");
        assert!(d["error"].contains(needle), "{action}: `{needle}` not in `{}`", d["error"]);
    }
    assert_eq!(ch.rows("hostile_rows"), 100, "the harmless events of the hostile plugin land (log floods too)");
    // The first-party tables are exact (counts and sums, no FINAL), nothing written into them
    // by others; the host is up, its memory bounded, its log bounded.
    assert_eq!(SeedSums::in_tables(&ch)?, sums);
    assert_eq!(user_sums(&ch), sums.user_sums_text());
    assert_eq!(ch.number("SELECT count() FROM analytics.promo_code_usages_analytics WHERE order_id NOT LIKE 'o-%'"), 0);
    assert_eq!(host.admin("GET", "/health", &[])?.0, 200);
    let (_, peak_rss) = process_usage(host.child.id())?;
    eprintln!("host peak RSS: {peak_rss:.0} MiB");
    assert!(peak_rss < 256.0, "host peak RSS {peak_rss:.0} MiB");
    let log_bytes = std::fs::metadata(&host.log)?.len();
    assert!(log_bytes < 8 << 20, "the plugin's log flood reached the host log: {log_bytes} bytes");
    assert!(host.log_text().contains("the plugin logs more than 100 lines a second"), "dropped lines are said");
    Ok(())
}
