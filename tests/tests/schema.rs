//! Host-managed schemas on real ClickHouse releases: bad rows failing only their events;
//! tables created, extended with new columns, and incompatible versions refused while the old
//! version keeps writing; tables Sluice did not create checked but never altered. (Types written
//! and read back: `types.rs`.)
//!
//! All use the test-only `echo` plugin (plugins/testing/echo): its tables come from its
//! sidecar settings and each event carries the raw values of its rows.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Result;
use serde_json::{Value, json};
use sluice_tests::echo::{CONFIG, manifest, publish, start_host};
use sluice_tests::{
    ClickHouse, Redis, Release, config_file, dead_letters, install_plugin, on_every_release, sluice, test_plugin,
    wait_until,
};

fn bad_rows_fail_only_their_events_and_name_the_column(release: Release) -> Result<()> {
    let redis = Redis::start()?;
    let ch = ClickHouse::start(release)?;
    let dir = tempfile::tempdir()?;
    let cols = json!([
        ["k", "UInt32"],
        ["n", "UInt8"],
        ["s", "String"],
        ["d", "Date"],
        ["e", "Enum8('on' = 1, 'off' = 2)"],
        ["fs", "FixedString(2)"],
        ["ns", "Nullable(String)"]
    ]);
    let tables = json!([{"name": "checked", "columns": cols, "order_by": ["k"]}]);
    install_plugin(dir.path(), &test_plugin("echo"), "checked", &[("manifest", &manifest("checked", "1", tables))])?;
    let config = config_file(dir.path(), CONFIG)?;

    // (values, the expected error) — each bad row sits among good ones in the same batch.
    let bad: Vec<(Value, &str)> = vec![
        (
            json!([1, "seven", "s", "2024-01-01", "on", "ab", null]),
            "table `checked`, column `n`: expected UInt8, got string \"seven\"",
        ),
        (
            json!([1, 300, "s", "2024-01-01", "on", "ab", null]),
            "table `checked`, column `n`: uint 300 is out of range for UInt8 (0..=255)",
        ),
        (
            json!([1, -1, "s", "2024-01-01", "on", "ab", null]),
            "table `checked`, column `n`: int -1 is out of range for UInt8 (0..=255)",
        ),
        (
            json!([1, 1, "s", "2024-01-01", "on", "ab"]),
            "table `checked`: the row has 6 values, the table has 7 columns",
        ),
        (
            json!([1, 1, "s", "2024-01-01", "on", "ab", null, "extra"]),
            "table `checked`: the row has 8 values, the table has 7 columns",
        ),
        (json!([1, 1, null, "2024-01-01", "on", "ab", null]), "table `checked`, column `s`: expected String, got null"),
        (
            json!([1, 1, "s", "2150-01-01", "on", "ab", null]),
            "table `checked`, column `d`: string \"2150-01-01\" is outside Date's range 1970-01-01..2149-06-06",
        ),
        (
            json!([1, 1, "s", "2024-01-01", "maybe", "ab", null]),
            "table `checked`, column `e`: string \"maybe\" is not a value of Enum8('on' = 1, 'off' = 2)",
        ),
        (
            json!([1, 1, "s", "2024-01-01", "on", "abc", null]),
            "table `checked`, column `fs`: string \"abc\" is longer than FixedString(2)",
        ),
        (json!([1, 1, "s", "2024-01-01", "on", "ab", 5]), "table `checked`, column `ns`: expected String, got uint 5"),
    ];
    let mut payloads = Vec::new();
    let mut expected_errors = HashMap::new();
    let mut good = 0u32;
    for i in 0..300u32 {
        if i % 30 == 7 && (i / 30) < bad.len() as u32 {
            let (values, error) = &bad[(i / 30) as usize];
            expected_errors.insert(format!("checked.event-{}", payloads.len()), *error);
            payloads.push(json!({"rows": [{"table": "checked", "values": values}]}));
        } else {
            good += 1;
            payloads.push(json!({"rows": [{"table": "checked", "values": [i, i % 256, format!("s{i}"), 19000 + i, "off", "zz", null]}]}));
        }
    }
    let mut conn = redis.conn()?;
    publish(&mut conn, "checked.event", &payloads)?;
    let _host = start_host(&redis, &ch, dir.path(), &config)?;
    wait_until("the good rows and the dead letters", Duration::from_secs(60), || {
        ch.rows("checked") == good as i64 && dead_letters(&mut conn).len() == bad.len()
    })?;
    let dlq = dead_letters(&mut conn);
    for d in &dlq {
        let want = expected_errors.get(&d["event_id"]).unwrap_or_else(|| panic!("unexpected dead letter {d:?}"));
        assert_eq!(&d["error"], want);
        assert_eq!(d["error_kind"], "permanent");
        assert_eq!(d["attempts"], "1", "a bad row is not retried: {d:?}");
    }
    // The good rows are all there, with their values.
    let sum: u64 = (0..300u32).filter(|i| !(i % 30 == 7 && i / 30 < bad.len() as u32)).map(u64::from).sum();
    assert_eq!(ch.query("SELECT sum(k) FROM analytics.checked")?, sum.to_string());
    Ok(())
}

fn evolving_tables(columns: Value, order_by: Value) -> Value {
    json!([{"name": "evolving", "columns": columns, "order_by": order_by, "partition_by": "toYYYYMM(d)",
            "engine": {"replacing": "ver"}}])
}

fn new_columns_are_added_and_incompatible_versions_are_refused_while_the_old_one_writes(
    release: Release,
) -> Result<()> {
    let redis = Redis::start()?;
    let ch = ClickHouse::start(release)?;
    let mut conn = redis.conn()?;
    let base =
        json!([["d", "Date"], ["k", "UInt64"], ["s", "String"], ["ver", "UInt32"], ["kind", "Enum8('web' = 1)"]]);
    let v1 = manifest("evolve", "1", evolving_tables(base.clone(), json!(["d", "k"])));
    // v2 adds two columns and a value to the Enum.
    let mut added = base.as_array().unwrap().clone();
    added[4] = json!(["kind", "Enum8('web' = 1, 'app' = 2)"]);
    added.push(json!(["country", "LowCardinality(String)"]));
    added.push(json!(["score", "Nullable(Float64)"]));
    let v2 = manifest("evolve", "2", evolving_tables(Value::Array(added.clone()), json!(["d", "k"])));
    // v3 changes a type, drops `s` and changes the order key: each is named in the refusal.
    let mut changed = added.clone();
    changed.retain(|c| c[0] != "s");
    changed[1] = json!(["k", "String"]);
    let v3 = manifest("evolve", "3", evolving_tables(Value::Array(changed), json!(["k"])));

    let row = |i: u64, extra: bool| {
        let mut values = vec![
            json!("2024-06-01"),
            json!(i),
            json!(format!("s{i}")),
            json!(1),
            json!(if extra { "app" } else { "web" }),
        ];
        if extra {
            values.push(json!("NL"));
            values.push(json!(i as f64 / 2.0));
        }
        json!({"rows": [{"table": "evolving", "values": values}]})
    };

    // v1 creates the table.
    let d1 = tempfile::tempdir()?;
    install_plugin(d1.path(), &test_plugin("echo"), "evolve", &[("manifest", &v1)])?;
    let config = config_file(d1.path(), CONFIG)?;
    let mut h1 = start_host(&redis, &ch, d1.path(), &config)?;
    assert!(h1.log_text().contains("table created"), "{}", h1.log_text());
    publish(&mut conn, "evolve.event", &(0..50).map(|i| row(i, false)).collect::<Vec<_>>())?;
    wait_until("50 rows from v1", Duration::from_secs(60), || ch.rows("evolving") == 50)?;
    h1.stop();

    // inspect says what v2 would do, without doing it.
    let d2 = tempfile::tempdir()?;
    install_plugin(d2.path(), &test_plugin("echo"), "evolve", &[("manifest", &v2)])?;
    let inspect = sluice(
        &["plugin", "inspect", &d2.path().join("evolve.wasm").display().to_string(), "--clickhouse-url", &ch.url()],
        &[],
    )?;
    let inspected: Value = serde_json::from_str(&inspect)?;
    assert_eq!(inspected["tables"][0]["live"]["status"], "alter", "{inspect}");
    assert_eq!(inspected["tables"][0]["live"]["guarantee"], release.plain_guarantee(), "{inspect}");
    assert_eq!(
        inspected["tables"][0]["live"]["changes"],
        json!([
            "ALTER TABLE analytics.evolving MODIFY COLUMN kind Enum8('web' = 1, 'app' = 2)",
            "ALTER TABLE analytics.evolving ADD COLUMN country LowCardinality(String)",
            "ALTER TABLE analytics.evolving ADD COLUMN score Nullable(Float64)"
        ])
    );
    assert!(!ch.query("DESCRIBE TABLE analytics.evolving")?.contains("country"), "inspect must not alter");

    // v2 makes its changes; old rows read the new columns' defaults.
    let config2 = config_file(d2.path(), CONFIG)?;
    let h2 = start_host(&redis, &ch, d2.path(), &config2)?;
    for change in
        ["column `kind` extended to Enum8('web' = 1, 'app' = 2)", "column `country` LowCardinality(String) added"]
    {
        assert!(h2.log_text().contains(change), "{change}: {}", h2.log_text());
    }
    publish(&mut conn, "evolve.event", &(50..100).map(|i| row(i, true)).collect::<Vec<_>>())?;
    wait_until("100 rows", Duration::from_secs(60), || ch.rows("evolving") == 100)?;
    assert_eq!(
        ch.query("SELECT countIf(country = 'NL'), countIf(isNull(score)), sum(score), countIf(kind = 'app') FROM analytics.evolving")?,
        "50\t50\t1862.5\t50"
    );

    // v3 is refused by a second host while v2 keeps writing; nothing about the table changes.
    let describe_before = ch.query("DESCRIBE TABLE analytics.evolving")?;
    let d3 = tempfile::tempdir()?;
    install_plugin(d3.path(), &test_plugin("echo"), "evolve", &[("manifest", &v3)])?;
    let config3 = config_file(d3.path(), CONFIG)?;
    let h3 = start_host(&redis, &ch, d3.path(), &config3)?;
    let log3 = h3.log_text();
    assert!(
        log3.contains("plugin not started: its tables are incompatible with the live ones: table analytics.evolving:"),
        "{log3}"
    );
    for reason in [
        "column `k` is UInt64 in the live table but the plugin declares String: changing a column's type is refused",
        "column `s` (String) is in the live table but the plugin no longer declares it: removing a column is refused",
        "the order key is `d, k` in the live table but the plugin declares `k`: changing the order key is refused",
    ] {
        assert!(log3.contains(reason), "missing `{reason}` in:\n{log3}");
    }
    publish(&mut conn, "evolve.event", &(100..150).map(|i| row(i, true)).collect::<Vec<_>>())?;
    wait_until("150 rows, all by v2", Duration::from_secs(60), || ch.rows("evolving") == 150)?;
    assert_eq!(ch.query("DESCRIBE TABLE analytics.evolving")?, describe_before);
    assert!(dead_letters(&mut conn).is_empty());
    // inspect agrees, and exits with 1.
    let v3_file = d3.path().join("evolve.wasm").display().to_string();
    let err = sluice(&["plugin", "inspect", &v3_file, "--clickhouse-url", &ch.url()], &[]).unwrap_err().to_string();
    assert!(
        err.contains("table analytics.evolving: refused") && err.contains("changing a column's type is refused"),
        "{err}"
    );

    // The registry keeps who changed what.
    let history =
        ch.query("SELECT plugin, plugin_version, change FROM analytics.sluice_tables ORDER BY changed_at, change")?;
    assert_eq!(history.lines().filter(|l| l.starts_with("evolve\t1\tcreate")).count(), 1, "{history}");
    assert_eq!(history.lines().filter(|l| l.starts_with("evolve\t2\tadd column")).count(), 2, "{history}");
    assert_eq!(history.lines().filter(|l| l.starts_with("evolve\t2\textend enum")).count(), 1, "{history}");
    drop(h2);
    drop(h3);
    Ok(())
}

fn a_table_sluice_did_not_create_is_checked_but_never_altered(release: Release) -> Result<()> {
    let redis = Redis::start()?;
    let ch = ClickHouse::start(release)?;
    ch.query("CREATE DATABASE analytics")?;
    ch.query(
        "CREATE TABLE analytics.handmade (k UInt64, s String, note String DEFAULT 'by hand') \
         ENGINE = MergeTree() ORDER BY k",
    )?;
    let table = |cols: Value| json!([{"name": "handmade", "columns": cols, "order_by": ["k"]}]);
    let dir = tempfile::tempdir()?;
    // Declares a subset of the columns: accepted, the rest get their defaults.
    install_plugin(
        dir.path(),
        &test_plugin("echo"),
        "fits",
        &[("manifest", &manifest("fits", "1", table(json!([["k", "UInt64"], ["s", "String"]]))))],
    )?;
    // Declares a column the table lacks: refused, since Sluice never alters a foreign table.
    install_plugin(
        dir.path(),
        &test_plugin("echo"),
        "wants-more",
        &[(
            "manifest",
            &manifest("wants-more", "1", table(json!([["k", "UInt64"], ["s", "String"], ["extra", "UInt8"]]))),
        )],
    )?;
    let config = config_file(dir.path(), CONFIG)?;
    let mut conn = redis.conn()?;
    publish(&mut conn, "fits.event", &[json!({"rows": [{"table": "handmade", "values": [1, "a"]}]})])?;
    let host = start_host(&redis, &ch, dir.path(), &config)?;
    wait_until("the row", Duration::from_secs(60), || ch.rows("handmade") == 1)?;
    assert_eq!(ch.query("SELECT k, s, note FROM analytics.handmade")?, "1\ta\tby hand");
    let log = host.log_text();
    assert!(
        log.contains(
            "the live table needs column `extra` UInt8 added; it was not created by Sluice, so Sluice does not alter it"
        ),
        "{log}"
    );
    assert!(!ch.query("DESCRIBE TABLE analytics.handmade")?.contains("extra"));
    // The first plugin that declared it owns it now (adopted, never altered); the other is
    // refused for that too.
    assert_eq!(
        ch.query("SELECT plugin, change, ddl FROM analytics.sluice_tables WHERE table_name = 'handmade'")?,
        "fits\tadopt"
    );
    assert!(log.contains("it belongs to the plugin `fits`, which declared it first and adopted it"), "{log}");
    Ok(())
}

fn rows_clickhouse_refuses_fail_only_their_events_not_the_shared_block(release: Release) -> Result<()> {
    let redis = Redis::start()?;
    let ch = ClickHouse::start(release)?;
    ch.query("CREATE DATABASE analytics")?;
    // A check the host cannot see: the table itself throws on some rows.
    ch.query(
        "CREATE TABLE analytics.guarded (k UInt64, s String, guard UInt8 DEFAULT throwIf(s = 'boom')) \
         ENGINE = MergeTree() ORDER BY k",
    )?;
    let table = json!([{"name": "guarded", "columns": [["k", "UInt64"], ["s", "String"]], "order_by": ["k"]}]);
    let dir = tempfile::tempdir()?;
    for name in ["calm", "mixed"] {
        install_plugin(dir.path(), &test_plugin("echo"), name, &[("manifest", &manifest(name, "1", table.clone()))])?;
    }
    // A long linger, so that both plugins' rows share one INSERT block; the table belongs to
    // the first plugin that declared it, and is shared with the other.
    let config = config_file(
        dir.path(),
        &format!(
            "{}[tables.guarded]\nshared_with = [\"mixed\"]\n",
            CONFIG.replace("insert_linger_ms = 50", "insert_linger_ms = 1000")
        ),
    )?;
    let mut conn = redis.conn()?;
    let calm: Vec<Value> = (0..200).map(|i| json!({"rows": [{"table": "guarded", "values": [i, "fine"]}]})).collect();
    // 100 events of one plugin, in one batch: three of them have rows the table refuses.
    let boom = [13usize, 50, 99];
    let mixed: Vec<Value> = (0..100)
        .map(|i| {
            let s = if boom.contains(&i) { "boom" } else { "fine" };
            json!({"rows": [{"table": "guarded", "values": [1000 + i, s]}]})
        })
        .collect();
    publish(&mut conn, "calm.event", &calm)?;
    publish(&mut conn, "mixed.event", &mixed)?;
    let host = start_host(&redis, &ch, dir.path(), &config)?;
    wait_until("297 rows, and the three boom events dead-lettered", Duration::from_secs(90), || {
        ch.rows("guarded") == 297 && dead_letters(&mut conn).len() == 3
    })
    .map_err(|e| anyhow::anyhow!("{e:#}\n{}", host.log_text()))?;
    assert!(
        host.log_text().contains("ClickHouse refused rows of a block; inserting its halves apart"),
        "{}",
        host.log_text()
    );
    let mut dead: Vec<String> = dead_letters(&mut conn)
        .into_iter()
        .map(|d| {
            assert_eq!(d["plugin"], "mixed");
            assert_eq!(d["error_kind"], "insert_failed");
            assert_eq!(d["attempts"], "2", "retried once, then dead-lettered: {d:?}");
            assert!(d["error"].contains("ClickHouse error 395"), "{d:?}");
            d["event_id"].clone()
        })
        .collect();
    dead.sort();
    assert_eq!(dead, vec!["mixed.event-13", "mixed.event-50", "mixed.event-99"]);
    assert_eq!(ch.query("SELECT count(), uniqExact(k) FROM analytics.guarded WHERE s = 'fine'")?, "297\t297");
    Ok(())
}

on_every_release!(
    bad_rows_fail_only_their_events_and_name_the_column,
    new_columns_are_added_and_incompatible_versions_are_refused_while_the_old_one_writes,
    a_table_sluice_did_not_create_is_checked_but_never_altered,
    rows_clickhouse_refuses_fail_only_their_events_not_the_shared_block,
);
