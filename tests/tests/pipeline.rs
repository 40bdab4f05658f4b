//! End to end: events written with plain XADD (the wire format of docs/contract.md) → `sluice run`
//! with the first-party plugins → rows in a real ClickHouse 18.16, checked exactly.

use std::time::Duration;

use anyhow::Result;
use serde_json::json;
use sluice_tests::{
    ClickHouse, Host, Redis, Release, dead_letters, on_every_release, plugins_dir, total_pending, wait_until,
};

const STREAMS: [&str; 3] = ["events:PromoCodeAppliedEvent", "events:OrderCreatedEvent", "events:order.created"];

/// What the published events must add up to, in cents so that comparisons are exact.
#[derive(Default, Debug, PartialEq)]
struct Expected {
    promo_count: u64,
    promo_order_cents: i64,
    promo_discount_cents: i64,
    orders_count: u64,
    orders_cents: i64,
}

/// Publishes event `i` of a mix of the three seed types with XADD; returns it in `exp`.
fn publish_mixed(conn: &mut redis::Connection, from: u64, to: u64, exp: &mut Expected) -> Result<()> {
    let mut pipe = redis::pipe();
    for i in from..to {
        let cents = 1000 + (i as i64 * 37) % 100_000;
        let amount = cents as f64 / 100.0;
        let day = 1 + i % 28;
        let created = format!("2024-05-{day:02}T10:{:02}:00Z", i % 60);
        match i % 3 {
            0 => {
                let discount = (i as i64 * 13) % 5000;
                exp.promo_count += 1;
                exp.promo_order_cents += cents;
                exp.promo_discount_cents += discount;
                let p = json!({"promoCodeId": format!("pc-{}", i % 7), "promoCode": format!("CODE{}", i % 7), "userId": format!("u{}", i % 101),
                    "orderId": format!("o{i}"), "orderAmount": amount, "discountAmount": discount as f64 / 100.0, "createdAt": created});
                pipe.cmd("XADD")
                    .arg(STREAMS[0])
                    .arg("*")
                    .arg("payload")
                    .arg(p.to_string())
                    .arg("id")
                    .arg(format!("evt-{i}"))
                    .ignore();
            }
            1 => {
                exp.orders_count += 1;
                exp.orders_cents += cents;
                let p = json!({"orderId": format!("o{i}"), "userId": format!("u{}", i % 101), "amount": amount, "createdAt": created});
                pipe.cmd("XADD").arg(STREAMS[1]).arg("*").arg("payload").arg(p.to_string()).ignore();
            }
            _ => {
                exp.orders_count += 1;
                exp.orders_cents += cents;
                // The event-bus shape: customerId/totalAmount, no createdAt (the entry time is used).
                let p = json!({"orderId": format!("o{i}"), "customerId": format!("u{}", i % 101), "shopId": "s1", "totalAmount": amount});
                pipe.cmd("XADD")
                    .arg(STREAMS[2])
                    .arg("*")
                    .arg("payload")
                    .arg(p.to_string())
                    .arg("ts")
                    .arg("1717245000000")
                    .ignore();
            }
        }
    }
    pipe.query::<()>(conn)?;
    Ok(())
}

fn ten_thousand_mixed_events_land_exactly_once(release: Release) -> Result<()> {
    let redis = Redis::start()?;
    let ch = ClickHouse::start(release)?;
    let mut conn = redis.conn()?;
    let mut exp = Expected::default();
    // Half before the host starts (groups are created at the start of the stream)...
    publish_mixed(&mut conn, 0, 5000, &mut exp)?;
    let host = Host::start(&redis, &ch, &plugins_dir(), &[])?;
    host.wait_running(Duration::from_secs(60))?;
    // ...and half while it runs.
    publish_mixed(&mut conn, 5000, 10_000, &mut exp)?;

    let total_orders = exp.orders_count as i64;
    wait_until("every row to land", Duration::from_secs(60), || {
        ch.number("SELECT count() FROM analytics.promo_code_usages_analytics") == exp.promo_count as i64
            && ch.number("SELECT count() FROM analytics.orders_analytics") == total_orders
            && ch.number("SELECT sum(orders_count) + sum(promo_uses) FROM analytics.users_analytics") == 10_000
    })
    .map_err(|e| e.context(host.log_text()))?;
    wait_until("no pending entries", Duration::from_secs(30), || {
        total_pending(&mut conn, &STREAMS).unwrap_or(-1) == 0
    })?;
    // Settle, then check nothing more arrives (no duplicates) and the sums are exact.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(ch.number("SELECT count() FROM analytics.promo_code_usages_analytics"), exp.promo_count as i64);
    assert_eq!(
        ch.number("SELECT toInt64(round(sum(order_amount) * 100)) FROM analytics.promo_code_usages_analytics"),
        exp.promo_order_cents
    );
    assert_eq!(
        ch.number("SELECT toInt64(round(sum(discount_amount) * 100)) FROM analytics.promo_code_usages_analytics"),
        exp.promo_discount_cents
    );
    assert_eq!(ch.number("SELECT count() FROM analytics.orders_analytics"), total_orders);
    assert_eq!(ch.number("SELECT toInt64(round(sum(amount) * 100)) FROM analytics.orders_analytics"), exp.orders_cents);
    assert_eq!(ch.number("SELECT uniqExact(order_id) FROM analytics.orders_analytics"), total_orders);
    assert_eq!(ch.number("SELECT sum(orders_count) FROM analytics.users_analytics"), total_orders);
    assert_eq!(ch.number("SELECT sum(promo_uses) FROM analytics.users_analytics"), exp.promo_count as i64);
    assert_eq!(
        ch.number("SELECT toInt64(round(sum(orders_amount) * 100)) FROM analytics.users_analytics"),
        exp.orders_cents
    );
    assert_eq!(
        ch.number("SELECT toInt64(round(sum(discount_amount) * 100)) FROM analytics.users_analytics"),
        exp.promo_discount_cents
    );
    // The event-bus shape without createdAt took its date from `ts`.
    assert_eq!(
        ch.query(
            "SELECT DISTINCT toString(event_date) FROM analytics.orders_analytics WHERE event_type = 'order.created'"
        )?,
        "2024-06-01"
    );
    // The tables are the declared ones.
    assert_eq!(
        ch.query("SELECT engine FROM system.tables WHERE database = 'analytics' AND name = 'users_analytics'")?,
        "SummingMergeTree"
    );
    assert_eq!(total_pending(&mut conn, &STREAMS)?, 0);
    let dlq: i64 = redis::cmd("XLEN").arg("sluice:dlq").query(&mut conn)?;
    assert_eq!(dlq, 0, "{}", host.log_text());
    Ok(())
}

fn malformed_events_are_dead_lettered_with_stream_entry_and_reason(release: Release) -> Result<()> {
    let redis = Redis::start()?;
    let ch = ClickHouse::start(release)?;
    let mut conn = redis.conn()?;
    let good = json!({"promoCodeId": "p", "promoCode": "C", "userId": "u", "orderId": "o", "orderAmount": 10.5, "discountAmount": 1.0, "createdAt": "2024-06-01T00:00:00Z"});
    for _ in 0..100 {
        let _: String =
            redis::cmd("XADD").arg(STREAMS[0]).arg("*").arg("payload").arg(good.to_string()).query(&mut conn)?;
    }
    let not_json: String =
        redis::cmd("XADD").arg(STREAMS[0]).arg("*").arg("payload").arg("{not json").query(&mut conn)?;
    let missing: String =
        redis::cmd("XADD").arg(STREAMS[0]).arg("*").arg("payload").arg(r#"{"promoCode":"C"}"#).query(&mut conn)?;
    let no_payload: String = redis::cmd("XADD").arg(STREAMS[0]).arg("*").arg("body").arg("{}").query(&mut conn)?;
    let bad_date: String = redis::cmd("XADD")
        .arg(STREAMS[0])
        .arg("*")
        .arg("payload")
        .arg(good.to_string().replace("2024-06-01T00:00:00Z", "yesterday"))
        .query(&mut conn)?;

    let host = Host::start(&redis, &ch, &plugins_dir(), &[])?;
    wait_until("good rows to land", Duration::from_secs(60), || {
        ch.number("SELECT count() FROM analytics.promo_code_usages_analytics") == 100
    })
    .map_err(|e| e.context(host.log_text()))?;
    // Two plugins read PromoCodeAppliedEvent: each dead-letters each of the 4 bad events once.
    wait_until("8 dead letters", Duration::from_secs(30), || dead_letters(&mut conn).len() == 8)?;
    wait_until("no pending entries", Duration::from_secs(30), || {
        total_pending(&mut conn, &STREAMS).unwrap_or(-1) == 0
    })?;
    let dlq = dead_letters(&mut conn);
    for d in &dlq {
        assert_eq!(d["stream"], STREAMS[0]);
        for k in ["entry_id", "event_id", "plugin", "plugin_version", "attempts", "error_kind", "error", "failed_at"] {
            assert!(d.contains_key(k), "dead letter lacks {k}: {d:?}");
        }
        assert_eq!(d["plugin_version"].len(), 64, "the version is the file's SHA-256");
    }
    let find = |id: &str, plugin: &str| {
        dlq.iter()
            .find(|d| d["entry_id"] == id && d["plugin"] == plugin)
            .unwrap_or_else(|| panic!("no dead letter for {id} / {plugin}: {dlq:?}"))
    };
    for plugin in ["promo-code-analytics", "user-stats"] {
        let d = find(&not_json, plugin);
        assert_eq!(d["error_kind"], "permanent");
        assert!(d["error"].contains("invalid PromoCodeAppliedEvent payload"), "{d:?}");
        assert_eq!(d["field:payload"], "{not json");
        assert!(find(&missing, plugin)["error"].contains("missing field"), "{dlq:?}");
        let d = find(&no_payload, plugin);
        assert_eq!(d["error_kind"], "invalid_event");
        assert!(d["error"].contains("no `payload` field"), "{d:?}");
        assert_eq!(d["field:body"], "{}");
        assert!(find(&bad_date, plugin)["error"].contains("invalid timestamp `yesterday`"), "{dlq:?}");
    }
    // Every failure was logged with its stream and entry id.
    let log = host.log_text();
    assert!(log.contains(&not_json) && log.contains("dead-lettered"), "{log}");
    // Nothing else was lost or duplicated.
    assert_eq!(ch.number("SELECT count() FROM analytics.promo_code_usages_analytics"), 100);
    assert_eq!(ch.number("SELECT sum(promo_uses) FROM analytics.users_analytics"), 100);
    Ok(())
}

fn a_broken_plugin_file_is_reported_by_path_and_skipped(release: Release) -> Result<()> {
    let redis = Redis::start()?;
    let ch = ClickHouse::start(release)?;
    let dir = tempfile::tempdir()?;
    std::fs::copy(plugins_dir().join("order-analytics.wasm"), dir.path().join("order-analytics.wasm"))?;
    std::fs::write(dir.path().join("garbage.wasm"), b"this is not wasm")?;
    // A valid core module, but not a component of the sluice:plugin world.
    std::fs::write(dir.path().join("core-module.wasm"), [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00])?;
    // A component of a contract version this host does not implement.
    std::fs::copy(sluice_tests::test_plugin("future-wit"), dir.path().join("future-wit.wasm"))?;
    let mut conn = redis.conn()?;
    let p = json!({"orderId": "o1", "userId": "u1", "amount": 5.25, "createdAt": "2024-06-01T00:00:00Z"});
    let _: String = redis::cmd("XADD").arg(STREAMS[1]).arg("*").arg("payload").arg(p.to_string()).query(&mut conn)?;
    let host = Host::start(&redis, &ch, dir.path(), &[])?;
    wait_until("the good plugin's row", Duration::from_secs(60), || {
        ch.number("SELECT count() FROM analytics.orders_analytics") == 1
    })
    .map_err(|e| e.context(host.log_text()))?;
    let log = host.log_text();
    assert!(
        log.contains(&format!(
            "{} is not a valid WebAssembly component: it does not start with \\0asm as WebAssembly does",
            dir.path().join("garbage.wasm").display()
        )),
        "{log}"
    );
    assert!(log.contains(&format!("{} is not a valid WebAssembly component: it is a core WebAssembly module — build the plugin for wasm32-wasip2", dir.path().join("core-module.wasm").display())), "{log}");
    assert!(
        log.contains(&format!(
            "{} does not export the sluice:plugin handler, neither @0.1.0 nor @0.2.0 (it exports: sluice:plugin/handler@0.9.0;",
            dir.path().join("future-wit.wasm").display()
        )),
        "{log}"
    );
    assert!(log.contains("build it against a contract this host speaks, package sluice:plugin@0.1.0 (wit/sluice.wit, the Rust SDK) or @0.2.0"), "{log}");
    Ok(())
}

/// The Python services' layouts, written by the real redis-py (the example producer): the
/// envelope in `data` or `event`, the envelope's keys as fields, `data` holding the payload
/// alone, and Sluice's own `payload` — each lands once, with its event id.
#[test]
fn the_python_services_layouts_land() -> Result<()> {
    let redis = Redis::start()?;
    let ch = ClickHouse::start(Release::V18)?;
    let dir = sluice_tests::plugin_dir_with(&[sluice_tests::test_plugin("flaky")])?;
    let host = Host::start(&redis, &ch, dir.path(), &[])?;
    host.wait_running(Duration::from_secs(60))?;
    let layouts = ["envelope", "event", "flat", "data-only", "payload"];
    for (n, layout) in layouts.iter().enumerate() {
        let payload = json!({ "n": n }).to_string();
        let id = format!("py-{layout}");
        let args = ["--type", "flaky.event", "--layout", layout, "--payload", &payload, "--id", &id];
        sluice_tests::python_producer(&redis, &args)?;
    }
    wait_until("a row per layout", Duration::from_secs(30), || {
        ch.number("SELECT count() FROM analytics.flaky_rows") == layouts.len() as i64
    })
    .map_err(|e| {
        e.context(format!("dead letters: {:?}\n{}", dead_letters(&mut redis.conn().unwrap()), host.log_text()))
    })?;
    let rows = ch.query("SELECT event_id, n FROM analytics.flaky_rows ORDER BY n")?;
    let expected: Vec<String> = layouts.iter().enumerate().map(|(n, l)| format!("py-{l}\t{n}")).collect();
    assert_eq!(rows, expected.join("\n"));
    assert!(dead_letters(&mut redis.conn()?).is_empty());
    Ok(())
}

on_every_release!(
    ten_thousand_mixed_events_land_exactly_once,
    malformed_events_are_dead_lettered_with_stream_entry_and_reason,
    a_broken_plugin_file_is_reported_by_path_and_skipped,
);
