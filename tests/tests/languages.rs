//! Plugins in other languages: the Python (componentize-py) and JavaScript (componentize-js)
//! twins of `promo-code-analytics` run on the same host through the same WIT, and write the
//! same rows as the Rust plugin for the same events — offline (the Rust plugin's fixtures) and
//! end to end (events in Redis → three tables in ClickHouse, compared row by row).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::Result;
use serde_json::{Value, json};
use sluice_tests::{
    ClickHouse, Host, Redis, Release, dead_letters, example_plugin, on_every_release, plugins_dir, repo_root, sluice,
    wait_until,
};

const TWINS: [(&str, &str); 3] =
    [("promo-code-analytics-py", "py_"), ("promo-code-analytics-js", "js_"), ("promo-code-analytics-ts", "ts_")];

#[test]
fn the_python_and_javascript_twins_pass_the_rust_plugins_fixtures() -> Result<()> {
    let fixtures = repo_root().join("plugins/promo-code-analytics/fixtures").display().to_string();
    for (twin, _) in TWINS {
        let wasm = example_plugin(twin).display().to_string();
        let out = sluice(&["plugin", "test", &wasm, "--fixtures", &fixtures], &[])?;
        assert!(out.contains(&format!("1 fixtures: 1 passed, 0 failed ({twin})")), "{out}");
    }
    Ok(())
}

/// Payload number `k`: every field varies, with the edge cases of each (unicode and escapes in
/// strings, integral / fractional / huge / tiny / negative-zero amounts, every timestamp form
/// the SDKs accept: offsets, fractions, no offset, date only, lower-case `t`, a space, second 60).
fn payload(k: u64) -> Value {
    const CODES: [&str; 6] = ["SPRING", "ЛЕТО", "促销2024", "🎉 party", "tab\there \"quoted\" \\ back", ""];
    const TIMES: [&str; 10] = [
        "2024-06-01T10:30:00Z",
        "2024-12-31T23:59:59.999+03:00",
        "2024-02-29T00:00:00.5-05:30",
        "2023-01-01T00:00:00.123456Z",
        "2024-03-10 08:15:00",
        "2024-07-04t12:00:00z",
        "2024-06-30T23:59:60Z",
        "2025-01-15",
        "1970-01-01T00:00:00Z",
        "2105-12-31T23:59:59Z",
    ];
    let amounts = [
        json!(50.5),
        json!(1000),
        json!(0),
        json!(-0.0),
        json!(1e15 + 0.5),
        json!(1e-7),
        json!(12345678901234567890u64),
    ];
    json!({
        "promoCodeId": format!("pc-{}", k % 13),
        "promoCode": CODES[(k % 6) as usize],
        "userId": format!("u-{}", k % 17),
        "orderId": format!("o-{k:04}"),
        "orderAmount": amounts[(k % 7) as usize],
        "discountAmount": (k % 1000) as f64 / 8.0,
        "createdAt": TIMES[(k % 10) as usize],
        "extra": {"ignored": [1, 2, 3]},
    })
}

fn python_and_javascript_twins_write_the_same_rows_as_the_rust_plugin(release: Release) -> Result<()> {
    let redis = Redis::start()?;
    let ch = ClickHouse::start(release)?;
    let dir = tempfile::tempdir()?;
    std::fs::copy(plugins_dir().join("promo-code-analytics.wasm"), dir.path().join("promo-code-analytics.wasm"))?;
    for (twin, prefix) in TWINS {
        // Each twin declares the Rust plugin's table; a prefix keeps the three tables apart.
        std::fs::copy(example_plugin(twin), dir.path().join(format!("{twin}.wasm")))?;
        std::fs::write(
            dir.path().join(format!("{twin}.toml")),
            format!("[clickhouse]\ntable_prefix = \"{prefix}\"\n"),
        )?;
    }
    let mut conn = redis.conn()?;
    const GOOD: u64 = 700;
    let bad: BTreeMap<&str, &str> = [
        ("bad-missing", r#"{"promoCode": "X"}"#),
        ("bad-json", r#"{"promoCodeId": "pc-1", "#),
        ("bad-array", "[1, 2]"),
        ("bad-amount-text", r#"{"promoCodeId":"p","promoCode":"c","userId":"u","orderId":"o","orderAmount":"12","discountAmount":1,"createdAt":"2024-06-01"}"#),
        ("bad-amount-huge", r#"{"promoCodeId":"p","promoCode":"c","userId":"u","orderId":"o","orderAmount":1e400,"discountAmount":1,"createdAt":"2024-06-01"}"#),
        ("bad-code-null", r#"{"promoCodeId":"p","promoCode":null,"userId":"u","orderId":"o","orderAmount":1,"discountAmount":1,"createdAt":"2024-06-01"}"#),
        ("bad-time-word", r#"{"promoCodeId":"p","promoCode":"c","userId":"u","orderId":"o","orderAmount":1,"discountAmount":1,"createdAt":"yesterday"}"#),
        ("bad-time-month", r#"{"promoCodeId":"p","promoCode":"c","userId":"u","orderId":"o","orderAmount":1,"discountAmount":1,"createdAt":"2024-13-01T00:00:00Z"}"#),
    ]
    .into_iter()
    .collect();
    let mut pipe = redis::pipe();
    for k in 0..GOOD {
        pipe.cmd("XADD").arg("events:PromoCodeAppliedEvent").arg("*");
        pipe.arg("id").arg(format!("e-{k}")).arg("payload").arg(payload(k).to_string()).ignore();
        if k % 100 == 50 {
            let (id, body) = bad.iter().nth((k / 100) as usize % bad.len()).unwrap();
            pipe.cmd("XADD").arg("events:PromoCodeAppliedEvent").arg("*").arg("id").arg(*id).arg("payload").arg(*body);
            pipe.ignore();
        }
    }
    for (id, body) in bad.iter().skip(7) {
        pipe.cmd("XADD").arg("events:PromoCodeAppliedEvent").arg("*").arg("id").arg(*id).arg("payload").arg(*body);
        pipe.ignore();
    }
    pipe.query::<()>(&mut conn)?;

    // Python and JavaScript components take seconds each to compile on first load.
    let host = Host::start(&redis, &ch, dir.path(), &[])?;
    host.wait_running(Duration::from_secs(120))?;
    let tables = [
        "promo_code_usages_analytics",
        "py_promo_code_usages_analytics",
        "js_promo_code_usages_analytics",
        "ts_promo_code_usages_analytics",
    ];
    wait_until("every plugin's rows and dead letters", Duration::from_secs(120), || {
        tables.iter().all(|t| ch.rows(t) == GOOD as i64) && dead_letters(&mut conn).len() == 4 * bad.len()
    })
    .map_err(|e| {
        let counts: Vec<i64> = tables.iter().map(|t| ch.rows(t)).collect();
        anyhow::anyhow!("{e:#}: rows {counts:?}, dead letters {}\n{}", dead_letters(&mut conn).len(), host.log_text())
    })?;

    // Row by row, column by column, floats by their bytes.
    let dump = |table: &str| {
        ch.query(&format!(
            "SELECT *, hex(reinterpretAsString(order_amount)), hex(reinterpretAsString(discount_amount)) \
             FROM analytics.{table} ORDER BY order_id FORMAT TabSeparated"
        ))
    };
    let rust = dump(tables[0])?;
    assert_eq!(rust.lines().count(), GOOD as usize);
    assert!(rust.contains("促销2024") && rust.contains("2024-12-31\t2024-12-31 20:59:59"), "{rust}");
    for t in &tables[1..] {
        let twin = dump(t)?;
        if twin != rust {
            let diff: Vec<_> = rust.lines().zip(twin.lines()).filter(|(a, b)| a != b).take(5).collect();
            panic!("{t} differs from the Rust plugin's rows; first differences (rust, twin): {diff:#?}");
        }
    }

    // The same events failed, permanently, in each plugin.
    let mut failed: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for d in dead_letters(&mut conn) {
        assert_eq!(d["error_kind"], "permanent", "{d:?}");
        failed.entry(d["plugin"].clone()).or_default().insert(d["event_id"].clone());
    }
    let expected: BTreeSet<String> = bad.keys().map(|k| k.to_string()).collect();
    assert_eq!(failed.len(), 4, "{failed:?}");
    for (plugin, ids) in &failed {
        assert_eq!(ids, &expected, "dead letters of {plugin}");
    }
    Ok(())
}

on_every_release!(python_and_javascript_twins_write_the_same_rows_as_the_rust_plugin,);
