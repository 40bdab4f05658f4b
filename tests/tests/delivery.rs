//! Nothing lost: retries, traps, dead letters, crashes, a ClickHouse outage, two hosts,
//! delayed events, reprocessing and replay — on real Redis and ClickHouse processes.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::json;
use sluice_tests::*;

/// Fast retries and recovery, so the tests take seconds.
const FAST: &str = "retry_base_ms = 200\nretry_max_ms = 1000\nvisibility_timeout_ms = 3000\ninsert_linger_ms = 100\n";

fn xadd(conn: &mut redis::Connection, stream: &str, fields: &[(&str, String)]) -> Result<String> {
    let mut c = redis::cmd("XADD");
    c.arg(stream).arg("*");
    for (k, v) in fields {
        c.arg(*k).arg(v);
    }
    Ok(c.query(conn)?)
}

struct Setup {
    redis: Redis,
    ch: ClickHouse,
    _dir: tempfile::TempDir,
    plugins: std::path::PathBuf,
    config: String,
}

fn setup(release: Release, plugins: &[std::path::PathBuf], extra_config: &str) -> Result<Setup> {
    let redis = Redis::start()?;
    let ch = ClickHouse::start(release)?;
    let dir = plugin_dir_with(plugins)?;
    let cfg_dir = tempfile::tempdir()?.keep();
    let config = config_file(&cfg_dir, &format!("{FAST}{extra_config}"))?.display().to_string();
    let plugins = dir.path().to_path_buf();
    Ok(Setup { redis, ch, _dir: dir, plugins, config })
}

impl Setup {
    fn host(&self) -> Result<Host> {
        let h = Host::start(&self.redis, &self.ch, &self.plugins, &[("SLUICE_CONFIG", &self.config)])?;
        h.wait_running(Duration::from_secs(60))?;
        Ok(h)
    }
}

fn transient_failures_are_retried_and_traps_fail_only_their_event(release: Release) -> Result<()> {
    let s = setup(release, &[test_plugin("flaky")], "")?;
    let mut conn = s.redis.conn()?;
    // 1000 events that fail their first attempt, 1000 plain ones with 5 panics and 5
    // permanent failures among them.
    for i in 0..1000 {
        xadd(
            &mut conn,
            "events:flaky.event",
            &[("payload", json!({"n": i, "fail_first": true}).to_string()), ("id", format!("ff-{i}"))],
        )?;
    }
    let mut bad = HashMap::new();
    for i in 0..1000 {
        let (payload, kind) = match i % 200 {
            17 => (json!({"n": i, "panic": true}), Some("retries_exhausted")),
            99 => (json!({"n": i, "permanent": true}), Some("permanent")),
            _ => (json!({"n": i}), None),
        };
        let id = xadd(&mut conn, "events:flaky.event", &[("payload", payload.to_string()), ("id", format!("p-{i}"))])?;
        if let Some(kind) = kind {
            bad.insert(id, kind);
        }
    }
    let host = s.host()?;
    wait_until("1990 rows", Duration::from_secs(60), || {
        s.ch.number("SELECT count() FROM analytics.flaky_rows") == 1990
    })
    .map_err(|e| e.context(host.log_text()))?;
    wait_until("10 dead letters", Duration::from_secs(30), || dead_letters(&mut conn).len() == 10)?;
    wait_until("no pending", Duration::from_secs(30), || {
        total_pending(&mut conn, &["events:flaky.event"]).unwrap_or(-1) == 0
    })?;
    // The retried ones landed on their second attempt, exactly once each.
    assert_eq!(s.ch.number("SELECT countIf(attempt = 2) FROM analytics.flaky_rows WHERE event_id LIKE 'ff-%'"), 1000);
    assert_eq!(s.ch.number("SELECT uniqExact(event_id) FROM analytics.flaky_rows"), 1990);
    // Batch-mates of a trapping event were not retried: all on their first attempt.
    assert_eq!(s.ch.number("SELECT countIf(attempt = 1) FROM analytics.flaky_rows WHERE event_id LIKE 'p-%'"), 990);
    for d in dead_letters(&mut conn) {
        let kind = bad.get(&d["entry_id"]).unwrap_or_else(|| panic!("unexpected dead letter {d:?}"));
        assert_eq!(d["error_kind"], *kind, "{d:?}");
        if *kind == "retries_exhausted" {
            assert_eq!(d["attempts"], "3", "{d:?}");
            assert!(d["error"].contains("trapped") && d["error"].contains("asked to panic on event p-"), "{d:?}");
            assert!(!d["error"].contains("wasm backtrace"), "short error: {d:?}");
        } else {
            assert_eq!(d["attempts"], "1", "{d:?}");
        }
    }
    Ok(())
}

fn poison_one_percent_is_dead_lettered_exactly_and_the_rest_lands(release: Release) -> Result<()> {
    let s =
        setup(release, &[plugins_dir().join("promo-code-analytics.wasm"), plugins_dir().join("user-stats.wasm")], "")?;
    let mut conn = s.redis.conn()?;
    let mut poison = HashSet::new();
    let mut pipe = redis::pipe();
    let mut ids_in_order = Vec::new();
    for i in 0..10_000u32 {
        let payload = if i % 100 == 42 {
            if i % 200 == 42 {
                "{\"promoCode\": broken".to_string()
            } else {
                json!({"promoCode": "X", "userId": "u"}).to_string()
            }
        } else {
            json!({"promoCodeId": "p", "promoCode": format!("C{}", i % 10), "userId": format!("u{}", i % 77), "orderId": format!("o{i}"),
                "orderAmount": 100, "discountAmount": 5, "createdAt": "2024-06-01T10:00:00Z"})
            .to_string()
        };
        let id = format!("1717200000000-{i}");
        if i % 100 == 42 {
            poison.insert(id.clone());
        }
        ids_in_order.push(id.clone());
        pipe.cmd("XADD").arg("events:PromoCodeAppliedEvent").arg(&id).arg("payload").arg(payload).ignore();
    }
    pipe.query::<()>(&mut conn)?;
    let started = Instant::now();
    let host = s.host()?;
    wait_until("9900 rows", Duration::from_secs(60), || {
        s.ch.number("SELECT count() FROM analytics.promo_code_usages_analytics") == 9900
    })
    .map_err(|e| e.context(host.log_text()))?;
    let took = started.elapsed();
    wait_until("200 dead letters", Duration::from_secs(30), || dead_letters(&mut conn).len() == 200)?;
    wait_until("no pending", Duration::from_secs(30), || {
        total_pending(&mut conn, &["events:PromoCodeAppliedEvent"]).unwrap_or(-1) == 0
    })?;
    let dlq = dead_letters(&mut conn);
    for plugin in ["promo-code-analytics", "user-stats"] {
        let ids: HashSet<String> =
            dlq.iter().filter(|d| d["plugin"] == plugin).map(|d| d["entry_id"].clone()).collect();
        assert_eq!(ids, poison, "{plugin}: exactly the malformed events, once each");
    }
    assert!(dlq.iter().all(|d| d["error_kind"] == "permanent" && d["attempts"] == "1" && !d["error"].is_empty()));
    assert_eq!(s.ch.number("SELECT sum(promo_uses) FROM analytics.users_analytics"), 9900);
    assert_eq!(s.ch.number("SELECT uniqExact(order_id) FROM analytics.promo_code_usages_analytics"), 9900);
    // Not a benchmark, just a note in the output: the poison did not slow the rest down much.
    eprintln!("poison test: 9,900 good events landed {took:?} after the host started");
    Ok(())
}

/// Publishes `n` orders (`OrderCreatedEvent`) with ids `<tag>-<i>`, 1 in 500 malformed;
/// returns the ids of the malformed ones.
fn publish_orders(conn: &mut redis::Connection, tag: &str, range: std::ops::Range<u32>) -> Result<HashSet<String>> {
    let mut bad = HashSet::new();
    let mut pipe = redis::pipe();
    for i in range {
        let ty = ["OrderCreatedEvent", "order.created", "PromoCodeAppliedEvent"][(i % 3) as usize];
        let payload = if i % 500 == 7 {
            bad.insert(format!("{tag}-{i}"));
            "not json".to_string()
        } else if ty == "PromoCodeAppliedEvent" {
            json!({"promoCodeId": "p", "promoCode": "C", "userId": format!("u{}", i % 50), "orderId": format!("{tag}-{i}"),
                "orderAmount": 10, "discountAmount": 1, "createdAt": "2024-06-01T10:00:00Z"})
            .to_string()
        } else {
            json!({"orderId": format!("{tag}-{i}"), "userId": format!("u{}", i % 50), "amount": 10, "createdAt": "2024-06-01T10:00:00Z"}).to_string()
        };
        pipe.cmd("XADD")
            .arg(format!("events:{ty}"))
            .arg("*")
            .arg("payload")
            .arg(payload)
            .arg("id")
            .arg(format!("{tag}-{i}"))
            .ignore();
    }
    pipe.query::<()>(conn)?;
    Ok(bad)
}

const ALL_STREAMS: [&str; 3] = ["events:OrderCreatedEvent", "events:order.created", "events:PromoCodeAppliedEvent"];

/// Every published id is in ClickHouse or dead-lettered, for each plugin; nothing pending.
fn assert_nothing_lost(
    s: &Setup,
    conn: &mut redis::Connection,
    total: u32,
    bad: &HashSet<String>,
    host_log: &dyn Fn() -> String,
) -> Result<()> {
    let promo = (0..total).filter(|i| i % 3 == 2).count() as i64;
    let bad_promo =
        bad.iter().filter(|id| id.rsplit('-').next().unwrap().parse::<u32>().unwrap() % 3 == 2).count() as i64;
    let orders = total as i64 - promo;
    let bad_orders = bad.len() as i64 - bad_promo;
    wait_until("every event accounted for", Duration::from_secs(180), || {
        s.ch.number("SELECT uniqExact(order_id) FROM analytics.orders_analytics") == orders - bad_orders
            && s.ch.number("SELECT uniqExact(order_id) FROM analytics.promo_code_usages_analytics") == promo - bad_promo
            && total_pending(conn, &ALL_STREAMS).unwrap_or(-1) == 0
    })
    .map_err(|e| e.context(host_log()))?;
    let dlq = dead_letters(conn);
    for (plugin, expect) in
        [("order-analytics", bad_orders), ("promo-code-analytics", bad_promo), ("user-stats", bad.len() as i64)]
    {
        let ids: HashSet<String> =
            dlq.iter().filter(|d| d["plugin"] == plugin).map(|d| d["event_id"].clone()).collect();
        assert_eq!(ids.len() as i64, expect, "{plugin} dead letters");
        assert!(
            ids.is_subset(bad),
            "{plugin}: only malformed events are dead-lettered: {:?}",
            ids.difference(bad).collect::<Vec<_>>()
        );
    }
    // user-stats saw every good event at least once (its table sums; at-least-once may add more).
    let users = s.ch.number("SELECT sum(orders_count) + sum(promo_uses) FROM analytics.users_analytics");
    assert!(users >= total as i64 - bad.len() as i64, "users_analytics has {users} events");
    Ok(())
}

fn chaos_sigkill_three_times_and_a_clickhouse_outage_lose_nothing(release: Release) -> Result<()> {
    let mut s = setup(release, &first_party_plugins(), "")?;
    let mut conn = s.redis.conn()?;
    let total = 50_000u32;
    let mut bad = HashSet::new();
    let mut host = s.host()?;
    let mut logs = String::new();
    let mut published = 0;
    let next_chunk = |conn: &mut redis::Connection, bad: &mut HashSet<String>, published: &mut u32| -> Result<()> {
        let to = (*published + 4500).min(total);
        bad.extend(publish_orders(conn, "chaos", *published..to)?);
        *published = to;
        Ok(())
    };
    // Deterministic "random" moments, so that a failure can be reproduced.
    while published < total {
        let step = published as u64 / 4500;
        next_chunk(&mut conn, &mut bad, &mut published)?;
        if step == 3 {
            // ClickHouse goes away for 20 s; the host is killed while its rows wait, so a new
            // host must recover them from the dead one's pending entries.
            s.ch.stop();
            next_chunk(&mut conn, &mut bad, &mut published)?;
            std::thread::sleep(Duration::from_secs(2));
            signal(&host.child, 9);
            let _ = host.child.wait();
            logs.push_str(&host.log_text());
            // The new host waits for ClickHouse (it creates the tables first), then recovers.
            host = Host::start(&s.redis, &s.ch, &s.plugins, &[("SLUICE_CONFIG", &s.config)])?;
            std::thread::sleep(Duration::from_secs(18));
            s.ch.restart()?;
            host.wait_running(Duration::from_secs(60))?;
        }
        std::thread::sleep(Duration::from_millis(40 + step * 37 % 120));
        if [1, 7].contains(&step) {
            signal(&host.child, 9); // SIGKILL: no chance to finish anything
            let _ = host.child.wait();
            logs.push_str(&host.log_text());
            host = s.host()?;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(published, total);
    let log = |h: &Host| format!("{logs}\n--- last host ---\n{}", h.log_text());
    assert_nothing_lost(&s, &mut conn, total, &bad, &|| log(&host))?;
    let text = log(&host);
    assert!(
        text.contains("claimed pending entries for retry or recovery"),
        "a restarted host recovered the dead one's entries"
    );
    assert!(text.contains("insert failed; retrying"), "the outage was noticed and retried");
    Ok(())
}

fn two_hosts_share_the_work_without_loss(release: Release) -> Result<()> {
    let s = setup(
        release,
        &[
            plugins_dir().join("order-analytics.wasm"),
            plugins_dir().join("promo-code-analytics.wasm"),
            plugins_dir().join("user-stats.wasm"),
        ],
        "batch_size = 100\n",
    )?;
    let mut conn = s.redis.conn()?;
    let a = s.host()?;
    let b = s.host()?;
    let mut bad = HashSet::new();
    for chunk in 0..6 {
        bad.extend(publish_orders(&mut conn, "two", chunk * 5000..(chunk + 1) * 5000)?);
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_nothing_lost(&s, &mut conn, 30_000, &bad, &|| format!("{}\n---\n{}", a.log_text(), b.log_text()))?;
    // No crash here, so no duplicates either.
    assert_eq!(
        s.ch.number("SELECT count() FROM analytics.orders_analytics"),
        s.ch.number("SELECT uniqExact(order_id) FROM analytics.orders_analytics")
    );
    // Both consumers read entries.
    let consumers: Vec<Vec<redis::Value>> = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg("events:OrderCreatedEvent")
        .arg("sluice:order-analytics")
        .query(&mut conn)?;
    assert_eq!(consumers.len(), 2, "two consumers in the group");
    Ok(())
}

fn delayed_events_are_delivered_once_when_due_and_dead_letters_can_be_reprocessed_and_history_replayed(
    release: Release,
) -> Result<()> {
    let s = setup(
        release,
        &[test_plugin("flaky"), plugins_dir().join("order-analytics.wasm"), plugins_dir().join("user-stats.wasm")],
        "",
    )?;
    let mut conn = s.redis.conn()?;
    let env = [("SLUICE_REDIS_URL", s.redis.url())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let _a = s.host()?;
    let _b = s.host()?;

    // Delayed: not there before it is due, there once after, with two hosts moving it.
    let out = sluice(&["publish", "flaky.event", r#"{"n": 1}"#, "--id", "delayed-1", "--delay", "2s"], &env)?;
    assert!(out.contains("delayed until"), "{out}");
    // Another producer's way: ZADD with the documented member format.
    let due: i64 = {
        let (s, us): (i64, i64) = redis::cmd("TIME").query(&mut conn)?;
        s * 1000 + us / 1000 + 2000
    };
    let member =
        json!({"stream": "events:flaky.event", "fields": {"payload": "{\"n\": 2}", "id": "delayed-2"}}).to_string();
    let _: i64 = redis::cmd("ZADD").arg("sluice:delayed").arg(due).arg(member).query(&mut conn)?;
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(s.ch.number("SELECT count() FROM analytics.flaky_rows WHERE event_id LIKE 'delayed-%'"), 0);
    wait_until("delayed rows", Duration::from_secs(20), || {
        s.ch.number("SELECT count() FROM analytics.flaky_rows WHERE event_id LIKE 'delayed-%'") == 2
    })?;
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(s.ch.number("SELECT count() FROM analytics.flaky_rows WHERE event_id LIKE 'delayed-%'"), 2, "once each");
    let xlen: i64 = redis::cmd("XLEN").arg("events:flaky.event").query(&mut conn)?;
    assert_eq!(xlen, 2);

    // Members that cannot be delivered — not the documented JSON, no fields, a stream key that
    // holds something else — are dead-lettered with the reason and hold up none due after them;
    // field values that are not strings arrive as JSON text.
    let _: () = redis::cmd("SET").arg("events:not-a-stream").arg("x").query(&mut conn)?;
    let due: i64 = {
        let (s, us): (i64, i64) = redis::cmd("TIME").query(&mut conn)?;
        s * 1000 + us / 1000 + 500
    };
    let bad = [
        "not json".to_string(),
        json!({"stream": "events:flaky.event", "fields": {}}).to_string(),
        json!({"stream": "events:not-a-stream", "fields": {"payload": "{}"}}).to_string(),
    ];
    for m in &bad {
        let _: i64 = redis::cmd("ZADD").arg("sluice:delayed").arg(due).arg(m).query(&mut conn)?;
    }
    let good = json!({"stream": "events:flaky.event",
        "fields": {"payload": "{\"n\": 5}", "id": "delayed-3", "tenant": 7, "source": {"app": "shop"}}});
    let _: i64 = redis::cmd("ZADD").arg("sluice:delayed").arg(due + 1).arg(good.to_string()).query(&mut conn)?;
    wait_until("the delayed event due after the bad ones", Duration::from_secs(20), || {
        s.ch.number("SELECT count() FROM analytics.flaky_rows WHERE event_id = 'delayed-3'") == 1
    })?;
    let letters = dead_letters(&mut conn);
    assert_eq!(letters.len(), 3, "{letters:?}");
    let letter =
        |m: &str| letters.iter().find(|l| l["field:member"] == m).unwrap_or_else(|| panic!("{m}: {letters:?}"));
    for m in &bad {
        let l = letter(m);
        assert_eq!((l["stream"].as_str(), l["error_kind"].as_str()), ("sluice:delayed", "invalid_event"), "{l:?}");
    }
    assert!(letter(&bad[0])["error"].contains("is not {\"stream\""), "{letters:?}");
    assert!(letter(&bad[1])["error"].starts_with("events:flaky.event refused the delayed event"), "{letters:?}");
    assert!(letter(&bad[2])["error"].starts_with("events:not-a-stream refused the delayed event"), "{letters:?}");
    let last: Vec<(String, Vec<(String, String)>)> =
        redis::cmd("XREVRANGE").arg("events:flaky.event").arg("+").arg("-").arg("COUNT").arg(1).query(&mut conn)?;
    let fields: HashMap<String, String> = last[0].1.iter().cloned().collect();
    assert_eq!((fields["tenant"].as_str(), fields["source"].as_str()), ("7", r#"{"app":"shop"}"#), "{fields:?}");
    let _: () = redis::cmd("DEL").arg("sluice:dlq").query(&mut conn)?;

    // Reprocess: an event that kept failing until a moment passed is dead-lettered, then
    // reprocessed after that moment and lands, once.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as u64;
    xadd(
        &mut conn,
        "events:flaky.event",
        &[("payload", json!({"n": 3, "fail_until_ms": now + 4000}).to_string()), ("id", "late-1".into())],
    )?;
    wait_until("a dead letter", Duration::from_secs(20), || dead_letters(&mut conn).len() == 1)?;
    let listed = sluice(&["dlq", "list", "--json"], &env)?;
    let entry: serde_json::Value = serde_json::from_str(listed.lines().next().unwrap())?;
    assert_eq!(entry["plugin"], "flaky");
    assert_eq!(entry["error_kind"], "retries_exhausted");
    let table = sluice(&["dlq", "list", "--plugin", "flaky"], &env)?;
    assert!(table.contains("retries_exhausted") && table.contains("flaky"), "{table}");
    let now_ms = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    std::thread::sleep(Duration::from_millis((now + 4100).saturating_sub(now_ms())));
    let dry = sluice(&["dlq", "reprocess", entry["dlq_id"].as_str().unwrap(), "--dry-run"], &env)?;
    assert!(dry.contains("plan: reprocess 1 dead letters") && dry.contains("dry run: nothing changed"), "{dry}");
    assert_eq!(dead_letters(&mut conn).len(), 1, "a dry run changes nothing");
    let out = sluice(&["dlq", "reprocess", entry["dlq_id"].as_str().unwrap()], &env)?;
    assert!(out.contains("sluice:replay:flaky:flaky.event"), "{out}");
    wait_until("the reprocessed row", Duration::from_secs(20), || {
        s.ch.number("SELECT count() FROM analytics.flaky_rows WHERE event_id = 'late-1'") == 1
    })?;
    assert_eq!(dead_letters(&mut conn).len(), 0);

    // Replay: history re-fed to one plugin only.
    for i in 0..100 {
        xadd(
            &mut conn,
            "events:OrderCreatedEvent",
            &[(
                "payload",
                json!({"orderId": format!("r{i}"), "userId": "u", "amount": 1, "createdAt": "2024-06-01T00:00:00Z"})
                    .to_string(),
            )],
        )?;
    }
    wait_until("100 orders", Duration::from_secs(20), || {
        s.ch.number("SELECT count() FROM analytics.orders_analytics") == 100
    })?;
    // The plan first; nothing happens without --yes (no terminal here), or with --dry-run.
    let replay = ["replay", "--plugin", "order-analytics", "--from", "-"];
    let (code, plan, err) = sluice_output(&replay, &env)?;
    assert_ne!(code, 0);
    assert!(plan.contains("plan: replay 100 events to plugin order-analytics"), "{plan}");
    assert!(plan.contains("written a second time"), "{plan}");
    assert!(err.contains("refusing to replay 100 events to order-analytics without --yes"), "{err}");
    let (code, dry, _) = sluice_output(&[&replay[..], &["--dry-run"]].concat(), &env)?;
    assert!(code == 0 && dry.contains("dry run: nothing changed"), "{dry}");
    let queued: i64 = redis::cmd("XLEN").arg("sluice:replay:order-analytics:OrderCreatedEvent").query(&mut conn)?;
    assert_eq!(queued, 0, "nothing queued by a refused or dry run");
    let backwards = ["replay", "--plugin", "order-analytics", "--from", "2030-01-01", "--to", "2020-01-01T00:00:00Z"];
    let (code, _, err) = sluice_output(&backwards, &env)?;
    assert!(code != 0 && err.contains("--from 2030-01-01 comes after --to 2020-01-01T00:00:00Z"), "{err}");
    let (code, _, err) = sluice_output(&["replay", "--plugin", "order-analytic", "--from", "-"], &env)?;
    assert!(code != 0 && err.contains("unknown plugin `order-analytic`") && err.contains("order-analytics"), "{err}");
    let out = sluice(&[&replay[..], &["--yes", "--wait"]].concat(), &env)?;
    assert!(out.contains("queued 100 events to plugin order-analytics"), "{out}");
    assert!(out.contains("processed: the plugin has handled every replayed event"), "{out}");
    wait_until("replayed orders", Duration::from_secs(20), || {
        s.ch.number("SELECT count() FROM analytics.orders_analytics") == 200
    })?;
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        s.ch.number("SELECT sum(orders_count) FROM analytics.users_analytics"),
        100,
        "other plugins are not re-fed"
    );
    // The replayed events kept their identity (id and time).
    assert_eq!(s.ch.number("SELECT uniqExact(order_id) FROM analytics.orders_analytics"), 100);
    // Purge.
    let _ = xadd(&mut conn, "events:flaky.event", &[("payload", json!({"n": 4, "permanent": true}).to_string())])?;
    wait_until("a dead letter", Duration::from_secs(20), || dead_letters(&mut conn).len() == 1)?;
    // Filters that name nothing known say what is known; a bad id is named as such; connection
    // flags work after the subcommand; the listing says how many it shows of how many.
    let (code, _, err) = sluice_output(&["dlq", "list", "--plugin", "flakey"], &env)?;
    assert!(code != 0 && err.contains("unknown plugin `flakey`") && err.contains("known plugins: flaky"), "{err}");
    let (code, _, err) = sluice_output(&["dlq", "list", "--type", "nope"], &env)?;
    assert!(code != 0 && err.contains("unknown event type `nope`") && err.contains("flaky.event"), "{err}");
    let (code, _, err) = sluice_output(&["dlq", "reprocess", "not-an-id"], &env)?;
    assert!(code != 0 && err.contains("`not-an-id` is not a dead-letter id"), "{err}");
    let url = s.redis.url();
    let (code, table, err) = sluice_output(&["dlq", "list", "--limit", "0", "--redis-url", &url], &[])?;
    assert!(code == 0 && err.contains("0 of 1 dead letters shown"), "{table}{err}");
    // Purge: the plan, then nothing without --yes.
    let (code, plan, err) = sluice_output(&["dlq", "purge"], &env)?;
    assert!(code != 0 && plan.contains("plan: purge 1 dead letters") && plan.contains("flaky 1"), "{plan}{err}");
    assert_eq!(dead_letters(&mut conn).len(), 1);
    let (code, _, _) = sluice_output(&["dlq", "purge", "--kind", "invalid_event", "--yes"], &env)?;
    assert_eq!((code, dead_letters(&mut conn).len()), (0, 1), "the filter matched nothing");
    assert!(sluice(&["dlq", "purge", "--plugin", "flaky", "--yes"], &env)?.contains("purged 1 dead letters"));
    Ok(())
}

fn a_redis_outage_is_survived_and_sigterm_finishes_in_flight_work(release: Release) -> Result<()> {
    let mut s = setup(release, &first_party_plugins(), "")?;
    let mut host = s.host()?;
    let mut bad = HashSet::new();
    {
        let mut conn = s.redis.conn()?;
        bad.extend(publish_orders(&mut conn, "out", 0..10_000)?);
    }
    // Redis goes away for 3 s (its AOF keeps the data) and comes back on the same port.
    s.redis.stop();
    std::thread::sleep(Duration::from_secs(3));
    s.redis.restart()?;
    let mut conn = s.redis.conn()?;
    bad.extend(publish_orders(&mut conn, "out", 10_000..20_000)?);
    // SIGTERM while the second half is in flight: the host finishes, acknowledges and exits.
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    signal(&host.child, 15);
    let status = loop {
        if let Some(st) = host.child.try_wait()? {
            break st;
        }
        assert!(t.elapsed() < Duration::from_secs(35), "the host did not exit within its grace period");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "clean exit: {status:?}\n{}", host.log_text());
    let log = host.log_text();
    assert!(log.contains("cannot read from Redis"), "the outage was logged clearly:\n{log}");
    assert!(log.contains("stopping: no new reads") && log.contains("stopped"), "{log}");
    // Whatever it had not read yet is there for the next host, which finishes the job.
    let next = s.host()?;
    assert_nothing_lost(&s, &mut conn, 20_000, &bad, &|| format!("{log}\n---\n{}", next.log_text()))?;
    Ok(())
}

on_every_release!(
    transient_failures_are_retried_and_traps_fail_only_their_event,
    poison_one_percent_is_dead_lettered_exactly_and_the_rest_lands,
    chaos_sigkill_three_times_and_a_clickhouse_outage_lose_nothing,
    two_hosts_share_the_work_without_loss,
    delayed_events_are_delivered_once_when_due_and_dead_letters_can_be_reprocessed_and_history_replayed,
    a_redis_outage_is_survived_and_sigterm_finishes_in_flight_work,
);
