//! Idempotency by the producer's event id: the same event published twice — a producer's retry
//! after a timeout — gives one set of rows, on Redis Streams and BullMQ, across hosts and
//! restarts, within the window and not beyond it.

use std::time::Duration;

use anyhow::Result;
use serde_json::json;
use sluice_tests::*;

fn rows(ch: &ClickHouse) -> i64 {
    ch.number("SELECT count() FROM analytics.promo_code_usages_analytics")
}

fn distinct_orders(ch: &ClickHouse) -> i64 {
    ch.number("SELECT uniqExact(order_id) FROM analytics.promo_code_usages_analytics")
}

/// XADDs PromoCodeAppliedEvent number `i` for each of `numbers`, identified as `id` says:
/// `Some(("field", x))` a stream field `id` = x<i>, `Some(("payload", x))` `eventId` = x<i> in
/// the payload, `None` no id at all.
fn publish(redis: &Redis, numbers: std::ops::Range<u64>, id: Option<(&str, &str)>) -> Result<()> {
    let mut conn = redis.conn()?;
    let mut pipe = redis::pipe();
    for i in numbers {
        let mut payload = json!({
            "promoCodeId": format!("promo-{}", i % 50), "promoCode": "SUMMER", "userId": "user-1",
            "orderId": format!("order-{i}"), "orderAmount": 10.5, "discountAmount": 0.5,
            "createdAt": "2024-06-01T10:00:00Z",
        });
        let c = pipe.cmd("XADD").arg("events:PromoCodeAppliedEvent").arg("*");
        match id {
            Some(("field", x)) => {
                c.arg("id").arg(format!("{x}{i}"));
            }
            Some((_, x)) => payload["eventId"] = json!(format!("{x}{i}")),
            None => {}
        }
        c.arg("payload").arg(payload.to_string()).ignore();
    }
    pipe.query::<()>(&mut conn)?;
    Ok(())
}

fn promo_plugin() -> Result<tempfile::TempDir> {
    plugin_dir_with(&[plugins_dir().join("promo-code-analytics.wasm")])
}

/// Streams: ids in the stream field `id` and in the payload's `eventId`, each event published
/// twice (the copies in one batch and in later ones), on two hosts at once, then a third time
/// after both restarted: one row per event. Events without an id are never dropped.
fn the_same_event_published_twice_lands_once_across_hosts_and_restarts(release: Release) -> Result<()> {
    let redis = Redis::start()?;
    let ch = ClickHouse::start(release)?;
    let plugins = promo_plugin()?;
    let start = || -> Result<Host> {
        let h = Host::start(&redis, &ch, plugins.path(), &[])?;
        h.wait_running(Duration::from_secs(60))?;
        Ok(h)
    };
    let (mut a, mut b) = (start()?, start()?);
    publish(&redis, 0..500, Some(("field", "f-")))?;
    publish(&redis, 500..1000, Some(("payload", "p-")))?;
    publish(&redis, 0..500, Some(("field", "f-")))?;
    publish(&redis, 500..1000, Some(("payload", "p-")))?;
    // No id: both copies land.
    publish(&redis, 1000..1010, None)?;
    publish(&redis, 1000..1010, None)?;
    let dropped = |hosts: &[&Host]| -> f64 {
        hosts.iter().map(|h| h.metric("sluice_duplicates_dropped_total", "PromoCodeAppliedEvent")).sum()
    };
    wait_until("1,020 rows and 1,000 copies dropped", Duration::from_secs(60), || {
        rows(&ch) >= 1020 && dropped(&[&a, &b]) >= 1000.0
    })
    .map_err(|e| anyhow::anyhow!("{e}: rows {}, dropped {}\n{}", rows(&ch), dropped(&[&a, &b]), a.log_text()))?;
    a.stop();
    b.stop();
    let mut c = start()?;
    publish(&redis, 0..500, Some(("field", "f-")))?;
    publish(&redis, 500..1000, Some(("payload", "p-")))?;
    wait_until("the third copies dropped", Duration::from_secs(60), || dropped(&[&c]) >= 1000.0)
        .map_err(|e| anyhow::anyhow!("{e}: dropped {}\n{}", dropped(&[&c]), c.log_text()))?;
    // The stream is drained: nothing pending, nothing left to land.
    let pending = || -> i64 {
        let mut conn = redis.conn().unwrap();
        let summary: (i64, redis::Value, redis::Value, redis::Value) = redis::cmd("XPENDING")
            .arg("events:PromoCodeAppliedEvent")
            .arg("sluice:promo-code-analytics")
            .query(&mut conn)
            .unwrap();
        summary.0
    };
    wait_until("every entry acknowledged", Duration::from_secs(30), || pending() == 0)?;
    c.stop();
    assert_eq!((rows(&ch), distinct_orders(&ch)), (1020, 1010));
    Ok(())
}

/// The window: a copy read after the window (plus its last bucket) runs again; `off` keeps
/// every copy.
#[test]
fn copies_after_the_window_or_with_idempotency_off_land_again() -> Result<()> {
    let redis = Redis::start()?;
    let ch = ClickHouse::start(Release::V18)?;
    let plugins = promo_plugin()?;
    let config = config_file(plugins.path(), "idempotency_window = \"2s\"\n")?;
    let host = Host::start(&redis, &ch, plugins.path(), &[("SLUICE_CONFIG", config.to_str().unwrap())])?;
    host.wait_running(Duration::from_secs(60))?;
    publish(&redis, 0..10, Some(("field", "w-")))?;
    publish(&redis, 0..10, Some(("field", "w-")))?;
    wait_until("10 rows, 10 dropped", Duration::from_secs(30), || {
        rows(&ch) >= 10 && host.metric("sluice_duplicates_dropped_total", "PromoCodeAppliedEvent") >= 10.0
    })?;
    // 2 s window in 1 s buckets: remembered 2 to 3 s.
    std::thread::sleep(Duration::from_millis(3500));
    publish(&redis, 0..10, Some(("field", "w-")))?;
    wait_until("20 rows", Duration::from_secs(30), || rows(&ch) >= 20)?;
    drop(host);

    let (redis, ch) = (Redis::start()?, ClickHouse::start(Release::V18)?);
    let config = config_file(plugins.path(), "idempotency_key = \"off\"\n")?;
    let host = Host::start(&redis, &ch, plugins.path(), &[("SLUICE_CONFIG", config.to_str().unwrap())])?;
    host.wait_running(Duration::from_secs(60))?;
    publish(&redis, 0..10, Some(("field", "o-")))?;
    publish(&redis, 0..10, Some(("field", "o-")))?;
    wait_until("20 rows", Duration::from_secs(30), || rows(&ch) >= 20)?;
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(rows(&ch), 20);
    Ok(())
}

/// BullMQ and classic Bull: jobs carrying the seed's `eventId` (in `{ event, payload }` and in
/// plain data), each event added twice, the second time after a host restart: one row each.
#[test]
fn the_same_event_id_in_two_jobs_lands_once_on_bullmq_and_bull() -> Result<()> {
    let redis = Redis::start()?;
    let ch = ClickHouse::start(Release::V26)?;
    let plugins = promo_plugin()?;
    let env = [("SLUICE_BULLMQ_QUEUES", "events,legacy")];
    let mut host = Host::start(&redis, &ch, plugins.path(), &env)?;
    host.wait_running(Duration::from_secs(60))?;
    let add_bullmq = |from: &str| {
        bullmq(&redis, &["add", "--from", from, "--count", "200", "--envelope-every", "2", "--event-id-prefix", "ev-"])
    };
    let add_bull = |from: &str| {
        bull(&redis, &["add", "--queue", "legacy", "--from", from, "--count", "200", "--event-id-prefix", "legacy-ev-"])
    };
    add_bullmq("0")?;
    add_bullmq("0")?;
    add_bull("0")?;
    wait_until("400 rows", Duration::from_secs(60), || {
        rows(&ch) >= 400 && host.metric("sluice_duplicates_dropped_total", "PromoCodeAppliedEvent") >= 200.0
    })
    .map_err(|e| anyhow::anyhow!("{e}: rows {}\n{}", rows(&ch), host.log_text()))?;
    host.stop();
    let host = Host::start(&redis, &ch, plugins.path(), &env)?;
    host.wait_running(Duration::from_secs(60))?;
    add_bull("0")?;
    add_bullmq("100")?;
    // 200 more copies (bull's 0..200, BullMQ's 100..200) and BullMQ's 100 new events 200..300.
    wait_until("200 copies dropped, 100 new rows", Duration::from_secs(60), || {
        host.metric("sluice_duplicates_dropped_total", "PromoCodeAppliedEvent") >= 300.0 && rows(&ch) >= 500
    })
    .map_err(|e| anyhow::anyhow!("{e}: rows {}\n{}", rows(&ch), host.log_text()))?;
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!((rows(&ch), distinct_orders(&ch)), (500, 500));
    Ok(())
}

on_every_release!(the_same_event_published_twice_lands_once_across_hosts_and_restarts);
