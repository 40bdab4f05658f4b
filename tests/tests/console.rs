//! The console (the admin server's page and the endpoints it reads) on a real host: clicked
//! through in headless Chromium over the DevTools Protocol — the header strip and the charts
//! move while events flow, a dead letter expands to its payload, "Reprocess N selected"
//! reprocesses exactly those N, purge and replay ask first and do nothing when cancelled — and
//! its API: dead letters a page at a time with totals and facets, the replay plan, the tables'
//! insert figures, the history, consumers counted live while a host stops, and BullMQ's counts
//! read from a real queue.

use std::time::Duration;

use anyhow::{Context, Result};
use redis::Commands;
use serde_json::Value;
use sluice_tests::browser::{Browser, Page};
use sluice_tests::*;

const TOKEN: &str = "console-token";
const PROMO: &str = "events:PromoCodeAppliedEvent";

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// A host with the token; housekeeping rare, so that replay streams keep what they were given
/// while the test counts them.
fn start(redis: &Redis, ch: &ClickHouse, plugins: &std::path::Path, extra: &[(&str, &str)]) -> Result<Host> {
    let cfg = tempfile::tempdir()?.keep();
    let config = config_file(&cfg, "insert_linger_ms = 50\nretry_base_ms = 100\nhousekeeping_interval_ms = 600000\n")?
        .display()
        .to_string();
    let mut env = vec![("SLUICE_CONFIG", config.as_str()), ("SLUICE_ADMIN_TOKEN", TOKEN)];
    env.extend_from_slice(extra);
    let h = Host::start(redis, ch, plugins, &env)?;
    h.wait_running(Duration::from_secs(60))?;
    Ok(h)
}

fn publish(redis: &Redis, args: &[&str]) -> Result<String> {
    sluice(&[&["publish"][..], args].concat(), &[("SLUICE_REDIS_URL", redis.url().as_str())])
}

/// Entries that every plugin reading the stream dead-letters at once: a payload that is not
/// JSON, with a marker to find it by.
fn poison(conn: &mut redis::Connection, n: usize) -> Result<()> {
    for i in 0..n {
        let _: String = conn.xadd(PROMO, "*", &[("payload", format!("not json, marker-{i}"))])?;
    }
    Ok(())
}

fn dlq_len(conn: &mut redis::Connection) -> Result<usize> {
    Ok(conn.xlen("sluice:dlq")?)
}

/// Entries in every replay stream.
fn replayed(conn: &mut redis::Connection) -> Result<usize> {
    let keys: Vec<String> = conn.keys("sluice:replay:*")?;
    keys.iter().map(|k| conn.xlen::<_, usize>(k).map_err(Into::into)).sum()
}

fn the_console_moves_while_events_flow_and_its_actions_do_what_they_say_after_asking(release: Release) -> Result<()> {
    let redis = Redis::start()?;
    let ch = ClickHouse::start(release)?;
    let dir =
        plugin_dir_with(&[plugins_dir().join("promo-code-analytics.wasm"), plugins_dir().join("user-stats.wasm")])?;
    let host = start(&redis, &ch, dir.path(), &[])?;
    let mut conn = redis.conn()?;
    publish(&redis, &["PromoCodeAppliedEvent", "--count", "200"])?;

    let mut browser = Browser::launch()?;
    let mut page = browser.open(&format!("http://127.0.0.1:{}/", host.admin_port))?;
    page.wait_for("the console's first refresh", Duration::from_secs(30), "document.body.dataset.loaded === 'true'")?;
    // The history's first point comes one sampling interval (5 s) after the start.
    page.wait_for(
        "the header's first points",
        Duration::from_secs(30),
        "document.querySelector('#h-events polyline').getAttribute('points') !== ''",
    )?;
    let header_before = points(&mut page, "#h-events")?;
    let lag_chart = "tr[data-stream='events:PromoCodeAppliedEvent'][data-group='sluice:user-stats'] td.chart";
    let lag_before = points(&mut page, lag_chart)?;
    let plugin_chart = "tr[data-plugin='user-stats'] td.chart";
    let plugin_before = points(&mut page, plugin_chart)?;
    // Events flow for a while: the header's events/s, a plugin's rate and a stream's lag chart
    // all get new points with new values.
    for _ in 0..4 {
        publish(&redis, &["PromoCodeAppliedEvent", "--count", "3000"])?;
        std::thread::sleep(Duration::from_secs(2));
    }
    page.wait_for(
        "events/s above zero in the header",
        Duration::from_secs(30),
        "Number(document.querySelector('#h-events .value').textContent.replace(/,/g, '')) > 0",
    )?;
    let header_after = points(&mut page, "#h-events")?;
    assert_ne!(header_before, header_after, "the header's events/s sparkline did not move");
    let values = page.eval("document.querySelector('#h-events svg').dataset.values")?;
    assert!(values.as_str().unwrap().split(',').any(|v| v.parse::<f64>().unwrap_or(0.0) > 0.0), "{values}");
    assert_ne!(plugin_before, points(&mut page, plugin_chart)?, "the plugin's handled/s chart did not move");
    assert_ne!(lag_before, points(&mut page, lag_chart)?, "the stream's lag chart did not move");
    // The tables section: rows, latency quantiles, the last insert.
    let row = "tr[data-table='promo_code_usages_analytics']";
    page.wait_for(
        "12,200 rows in the tables section",
        Duration::from_secs(60),
        &format!("(document.querySelector(\"{row}\") || {{}}).textContent?.includes('12,200')"),
    )?;
    let table = page.text(row)?;
    assert!(table.contains(" ms") && table.contains("ago"), "{table}");

    // Six dead letters: three poison entries, each dead-lettered by both plugins.
    poison(&mut conn, 3)?;
    page.wait_for(
        "six dead letters on the page",
        Duration::from_secs(30),
        "/ of 6$/.test(document.querySelector('#dlq-count').textContent)",
    )?;
    assert_eq!(page.text("#dlq-count")?, "1–6 of 6");
    // A row expands to its payload and every field.
    page.click("#dlq tbody tr[data-dlq] button.expand")?;
    let payload = page.wait_for(
        "the payload",
        Duration::from_secs(10),
        "(document.querySelector('#dlq tr[data-detail] pre.payload') || {}).textContent",
    )?;
    assert!(payload.as_str().unwrap().starts_with("not json, marker-"), "{payload}");
    let fields = page.text("#dlq tr[data-detail] table.fields")?;
    for f in ["dlq_id", "plugin", "error_kind", "attempts", "entry_id", "field:payload"] {
        assert!(fields.contains(f), "{f} missing from the expanded row: {fields}");
    }

    // Select two of six: the button says 2, and exactly those two go back to their streams.
    page.set("#token", TOKEN)?;
    let ids: Vec<String> = serde_json::from_value(
        page.eval("[...document.querySelectorAll('#dlq input.sel')].slice(0, 2).map((b) => b.dataset.id)")?,
    )?;
    for id in &ids {
        page.click(&format!("#dlq input.sel[data-id='{id}']"))?;
    }
    assert_eq!(page.text("#dlq-reprocess-selected")?, "Reprocess 2 selected");
    let all_ids: Vec<String> = redis::cmd("XRANGE")
        .arg("sluice:dlq")
        .arg("-")
        .arg("+")
        .query::<Vec<(String, redis::Value)>>(&mut conn)?
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(all_ids.len(), 6);
    assert_eq!(replayed(&mut conn)?, 0);
    page.click("#dlq-reprocess-selected")?;
    page.wait_for(
        "the reprocess to be done",
        Duration::from_secs(20),
        "document.querySelector('#dlq-status').textContent === 'reprocessed 2'",
    )?;
    assert_eq!(replayed(&mut conn)?, 2, "exactly the two selected went back to their plugins' replay streams");
    for id in &all_ids {
        let there: Vec<(String, redis::Value)> =
            redis::cmd("XRANGE").arg("sluice:dlq").arg(id).arg(id).query(&mut conn)?;
        assert_eq!(there.is_empty(), ids.contains(id), "dead letter {id}: selected {ids:?}");
    }
    // (They fail again, so they come back as two new dead letters.)
    wait_until("the two reprocessed ones to fail again", Duration::from_secs(30), || {
        dlq_len(&mut conn).is_ok_and(|n| n == 6)
    })?;
    page.wait_for(
        "the page to show them",
        Duration::from_secs(10),
        "document.querySelector('#dlq-count').textContent === '1–6 of 6'",
    )?;

    // Purge asks first; cancelling purges nothing.
    page.click("#dlq-purge")?;
    page.wait_for(
        "the confirmation",
        Duration::from_secs(5),
        "document.querySelector('#confirm').classList.contains('open')",
    )?;
    assert!(page.text("#confirm-text")?.starts_with("Purge 6 dead letters?"), "{}", page.text("#confirm-text")?);
    assert_eq!(page.text("#confirm-ok")?, "Purge 6");
    page.click("#confirm-cancel")?;
    page.wait_for(
        "the cancel",
        Duration::from_secs(5),
        "document.querySelector('#dlq-status').textContent === 'cancelled: nothing purged'",
    )?;
    assert_eq!(dlq_len(&mut conn)?, 6, "a cancelled purge purged something");
    // A filter narrows what is purged, and the button says how many.
    page.eval(
        "const s = document.querySelector('#dlq-plugin'); s.value = 'user-stats'; s.dispatchEvent(new Event('change'))",
    )?;
    page.wait_for(
        "the filtered page",
        Duration::from_secs(10),
        "document.querySelector('#dlq-purge').textContent === 'Purge 3 matching…'",
    )?;
    assert!(page.text("#dlq-count")?.starts_with("1–3 of 3 matching (6 in all)"), "{}", page.text("#dlq-count")?);
    page.click("#dlq-purge")?;
    page.wait_for(
        "the confirmation",
        Duration::from_secs(5),
        "document.querySelector('#confirm').classList.contains('open')",
    )?;
    assert!(page.text("#confirm-text")?.contains("(plugin user-stats)"), "{}", page.text("#confirm-text")?);
    page.click("#confirm-ok")?;
    page.wait_for(
        "the purge",
        Duration::from_secs(10),
        "document.querySelector('#dlq-status').textContent === 'purged 3'",
    )?;
    assert_eq!(dlq_len(&mut conn)?, 3);
    let left: Vec<(String, std::collections::HashMap<String, String>)> =
        redis::cmd("XRANGE").arg("sluice:dlq").arg("-").arg("+").query(&mut conn)?;
    assert!(left.iter().all(|(_, f)| f["plugin"] == "promo-code-analytics"), "{left:?}");
    // Reprocessing all that match asks first too, and says how many.
    page.set("#dlq-plugin", "")?;
    page.wait_for(
        "the unfiltered page",
        Duration::from_secs(10),
        "document.querySelector('#dlq-reprocess-matching').textContent === 'Reprocess all 3 dead letters'",
    )?;
    let before = replayed(&mut conn)?;
    page.click("#dlq-reprocess-matching")?;
    page.wait_for(
        "the confirmation",
        Duration::from_secs(5),
        "document.querySelector('#confirm').classList.contains('open')",
    )?;
    assert_eq!(page.text("#confirm-ok")?, "Reprocess 3");
    page.click("#confirm-ok")?;
    page.wait_for(
        "the reprocess",
        Duration::from_secs(10),
        "document.querySelector('#dlq-status').textContent === 'reprocessed 3'",
    )?;
    assert_eq!(replayed(&mut conn)? - before, 3);

    // Replay shows the plan first; cancelled, nothing is queued; confirmed, exactly the plan.
    let length: usize = conn.xlen(PROMO)?;
    let before = replayed(&mut conn)?;
    page.set("#replay-plugin", "promo-code-analytics")?;
    page.set("#replay-from", "-")?;
    page.set("#replay-types", "PromoCodeAppliedEvent")?;
    page.click("#replay-plan")?;
    page.wait_for(
        "the plan",
        Duration::from_secs(10),
        "document.querySelector('#confirm').classList.contains('open')",
    )?;
    assert_eq!(page.text("#confirm-text")?, format!("Replay {length} events to promo-code-analytics?"));
    let plan = page.text("#replay-plan-table tr[data-type='PromoCodeAppliedEvent']")?;
    assert!(
        plan.contains("sluice:replay:promo-code-analytics:PromoCodeAppliedEvent") && plan.contains(&length.to_string()),
        "{plan}"
    );
    page.click("#confirm-cancel")?;
    page.wait_for(
        "the cancel",
        Duration::from_secs(5),
        "document.querySelector('#replay-status').textContent === 'cancelled: nothing queued'",
    )?;
    assert_eq!(replayed(&mut conn)?, before, "a cancelled replay queued something");
    page.click("#replay-plan")?;
    page.wait_for(
        "the plan",
        Duration::from_secs(10),
        "document.querySelector('#confirm').classList.contains('open')",
    )?;
    page.click("#confirm-ok")?;
    page.wait_for(
        "the replay",
        Duration::from_secs(30),
        "document.querySelector('#replay-status').textContent.startsWith('queued')",
    )?;
    assert_eq!(page.text("#replay-status")?, format!("queued {length} events for promo-code-analytics"));
    let promo_replay: usize = conn.xlen("sluice:replay:promo-code-analytics:PromoCodeAppliedEvent")?;
    assert_eq!(replayed(&mut conn)? - before, length);
    assert!(promo_replay >= length);

    // The sections of endpoints a host may not have are shown exactly when it has them.
    for (section, path) in [("#rollouts-section", "/api/rollouts"), ("#trace-section", "/api/trace/0-0")] {
        let (status, body) = host.admin("GET", path, &[])?;
        let absent = status == 404 && body.contains("no such endpoint");
        let hidden = page.eval(&format!("document.querySelector('{section}').classList.contains('hidden')"))?;
        assert_eq!(hidden, absent, "{section}: {path} answered {status} {body}");
    }
    // The rollouts and trace views drawn from the shapes their endpoints answer (the page's
    // own functions, called with sample answers: here the host may not have the endpoints).
    let rollouts = page.eval(
        r#"(() => {
            const t = (s) => new Date(Date.now() - s * 1000).toISOString();
            renderRollouts([{plugin: "promo-code-analytics", mode: "canary",
              stable: {file: "promo.wasm", version: "0.1.0", hash: "aaaaaaaaaaaa"},
              candidate: {file: "promo-next.wasm", version: "0.2.0", hash: "bbbbbbbbbbbb"},
              share: 0.2, state: "rolled_back", reason: "candidate failed 50% of its events, stable 0%",
              started_at: t(120), decided_at: t(60),
              counts: {stable: {events: 400, failed: 0}, candidate: {events: 20, failed: 10, sent_back: 10}},
              promote_after_events: 500, promote_after_s: 600}]);
            const text = document.querySelector('#rollouts tbody').textContent;
            const shown = !document.querySelector('#rollouts-section').classList.contains('hidden');
            return shown && text;
        })()"#,
    )?;
    let rollouts = rollouts.as_str().context("the rollouts section stayed hidden")?;
    for part in
        ["rolled back", "0.00 % · 50.00 % (10 sent back)", "20 / 500 events", "60 / 600 s", "20 %", "0.2.0 bbbbbbbb"]
    {
        assert!(rollouts.contains(part), "{part} missing from the rollout: {rollouts}");
    }
    let story = page.eval(
        r#"(() => {
            renderTrace({query: "1-0", matches: [{plugin: "user-stats", event_type: "PromoCodeAppliedEvent", source: "stream",
              stream: "events:PromoCodeAppliedEvent", entry_id: "1-0", event_id: "e-1", job_id: null, published_at: "2026-01-01T00:00:00Z",
              state: "dead_lettered",
              attempts: [{at: "2026-01-01T00:00:01Z", host: "h-1", attempt: 1, version: "0.1.0", hash: "cccccccccccc", outcome: "dead_lettered",
                error: "missing field `userId`", kind: "permanent", rows: {users_analytics: 0}}],
              rows: [{table: "users_analytics", count: 0, from: "clickhouse"}], dead_letter: {dlq_id: "2-0"}, pending: null,
              story: ["published at 00:00:00", "dead-lettered by h-1: missing field `userId`"]}]});
            return document.querySelector('#trace-result').textContent;
        })()"#,
    )?;
    let story = story.as_str().unwrap_or_default();
    for part in [
        "user-stats · PromoCodeAppliedEvent",
        "dead lettered",
        "dead-lettered by h-1",
        "h-1",
        "missing field `userId`",
        "users_analytics 0 (clickhouse)",
    ] {
        assert!(story.contains(part), "{part} missing from the trace: {story}");
    }
    // No problem of the page's own on the way.
    assert_eq!(page.eval("document.querySelector('#banner').style.display")?, "none", "{}", page.text("#banner")?);
    Ok(())
}

/// The `points` of the sparkline in `sel` ('' without one).
fn points(page: &mut Page<'_>, sel: &str) -> Result<String> {
    let sel = serde_json::to_string(&format!("{sel} polyline"))?;
    let v = page.eval(&format!(
        "(() => {{ const p = document.querySelector({sel}); return p ? p.getAttribute('points') : ''; }})()"
    ))?;
    Ok(v.as_str().unwrap_or_default().to_string())
}

fn the_console_api_pages_dead_letters_plans_replays_and_counts_live_consumers(release: Release) -> Result<()> {
    let redis = Redis::start()?;
    let ch = ClickHouse::start(release)?;
    let dir =
        plugin_dir_with(&[plugins_dir().join("promo-code-analytics.wasm"), plugins_dir().join("user-stats.wasm")])?;
    let host = start(&redis, &ch, dir.path(), &[])?;
    let mut conn = redis.conn()?;
    publish(&redis, &["PromoCodeAppliedEvent", "--count", "500"])?;
    poison(&mut conn, 4)?;
    wait_until("eight dead letters", Duration::from_secs(30), || dlq_len(&mut conn).is_ok_and(|n| n == 8))?;
    let get = |path: &str| -> Result<(u16, Value)> {
        let (s, b) = host.admin("GET", path, &[])?;
        Ok((s, json(&b)))
    };
    let post = |path: &str, body: &str, token: bool| -> Result<(u16, Value)> {
        let bearer = format!("Bearer {TOKEN}");
        let headers: Vec<(&str, &str)> = if token { vec![("Authorization", &bearer)] } else { vec![] };
        let (s, _, b) = http(host.admin_port, "POST", path, &headers, body.as_bytes())?;
        Ok((s, json(&b)))
    };

    // Dead letters a page at a time: the total matching, the facets of all.
    let (s, p) = get("/api/dlq/page?limit=3")?;
    assert_eq!(
        (s, p["total"].as_u64(), p["all"].as_u64(), p["entries"].as_array().map(Vec::len)),
        (200, Some(8), Some(8), Some(3)),
        "{p}"
    );
    assert_eq!(p["facets"]["plugin"], serde_json::json!({"promo-code-analytics": 4, "user-stats": 4}));
    let kinds = &p["facets"]["kind"];
    assert_eq!(kinds.as_object().map(|k| k.values().filter_map(Value::as_u64).sum::<u64>()), Some(8), "{kinds}");
    // A payload that is not JSON: one kind for all of them.
    let kind = p["entries"][0]["error_kind"].as_str().unwrap().to_string();
    assert_eq!(kinds[&kind], 8, "{kinds}");
    let newest = p["entries"][0]["dlq_id"].as_str().unwrap().to_string();
    let (_, oldest_first) = get("/api/dlq/page?limit=100&order=oldest")?;
    assert_eq!(oldest_first["entries"][7]["dlq_id"], newest.as_str(), "newest first by default");
    let (_, filtered) =
        get(&format!("/api/dlq/page?plugin=user-stats&kind={kind}&event_type=PromoCodeAppliedEvent&limit=2&offset=2"))?;
    assert_eq!(
        (filtered["total"].as_u64(), filtered["entries"].as_array().map(Vec::len)),
        (Some(4), Some(2)),
        "{filtered}"
    );
    assert!(filtered["entries"].as_array().unwrap().iter().all(|e| e["plugin"] == "user-stats"));
    assert_eq!(get("/api/dlq/page?kind=lost")?.0, 400);
    assert_eq!(get("/api/dlq/page?order=sideways")?.0, 400);
    assert_eq!(
        json(&host.admin("GET", "/api/dlq?limit=2", &[])?.1).as_array().map(Vec::len),
        Some(2),
        "/api/dlq keeps its shape"
    );

    // Reprocessing a selection: the token, a clear refusal of bad bodies, exactly the ids.
    let ids: Vec<String> =
        filtered["entries"].as_array().unwrap().iter().map(|e| e["dlq_id"].as_str().unwrap().to_string()).collect();
    let body = serde_json::json!({"ids": ids}).to_string();
    assert_eq!(post("/api/dlq/reprocess-selected", &body, false)?.0, 401);
    let (s, e) = post("/api/dlq/reprocess-selected", "{\"ids\": []}", true)?;
    assert!(s == 400 && e["error"].as_str().unwrap().contains("no dead letter selected"), "{e}");
    let (s, e) = post("/api/dlq/reprocess-selected", "{\"ids\": [\"nope\"]}", true)?;
    assert!(s == 400 && e["error"].as_str().unwrap().contains("is not a dead-letter id"), "{e}");
    let (s, r) = post("/api/dlq/reprocess-selected", &body, true)?;
    assert_eq!((s, r["reprocessed"].as_u64()), (200, Some(2)), "{r}");
    assert_eq!(replayed(&mut conn)?, 2);
    let (_, again) = post("/api/dlq/reprocess-selected", &body, true)?;
    assert_eq!(
        (again["reprocessed"].as_u64(), again["missing"].as_array().map(Vec::len)),
        (Some(0), Some(2)),
        "{again}"
    );

    // The replay plan: what would be queued, and nothing queued.
    let before = replayed(&mut conn)?;
    let (s, plan) = post("/api/replay/plan", r#"{"plugin": "user-stats", "from": "-"}"#, false)?;
    assert_eq!(s, 200, "{plan}");
    let length: u64 = conn.xlen(PROMO)?;
    assert_eq!(plan["total"].as_u64(), Some(length), "{plan}");
    let t = plan["types"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["event_type"] == "PromoCodeAppliedEvent")
        .context("no promo type")?;
    assert_eq!(
        (t["stream"].as_str(), t["target"].as_str()),
        (Some(PROMO), Some("sluice:replay:user-stats:PromoCodeAppliedEvent"))
    );
    assert_eq!(replayed(&mut conn)?, before, "a plan queues nothing");
    let (s, e) = post("/api/replay/plan", r#"{"plugin": "user-stats", "from": "tomorrow"}"#, false)?;
    assert!(s == 400 && e["error"].as_str().unwrap().contains("is not a position"), "{e}");
    assert_eq!(post("/api/replay/plan", r#"{"plugin": "nobody", "from": "-"}"#, false)?.0, 404);

    // Per table: rows, inserts, the latency quantiles, the last insert.
    wait_until("500 promo rows", Duration::from_secs(60), || {
        ch.query("SELECT count() FROM analytics.promo_code_usages_analytics").is_ok_and(|c| c == "500")
    })?;
    let (_, tables) = get("/api/tables")?;
    let promo = tables
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "promo_code_usages_analytics")
        .context("no promo table")?;
    assert_eq!(promo["rows"].as_u64(), Some(500), "{promo}");
    assert!(
        promo["inserts"].as_u64() >= Some(1)
            && promo["insert_p50_s"].as_f64() > Some(0.0)
            && promo["insert_p99_s"].as_f64() >= promo["insert_p50_s"].as_f64(),
        "{promo}"
    );
    assert!(promo["last_insert"].as_str().is_some_and(|t| t.starts_with("20")), "{promo}");

    // The history: points every 5 s, the header's series, per plugin, table and stream.
    wait_until("two points of history", Duration::from_secs(30), || {
        get("/api/history").is_ok_and(|(_, h)| h["at"].as_array().is_some_and(|a| a.len() >= 2))
    })?;
    let (_, h) = get("/api/history")?;
    assert_eq!((h["interval_s"].as_u64(), h["keep"].as_u64()), (Some(5), Some(180)));
    let n = h["at"].as_array().unwrap().len();
    for series in ["events_per_s", "lag", "dead_letters", "insert_errors"] {
        assert_eq!(h["header"][series].as_array().map(Vec::len), Some(n), "{series}: {h}");
    }
    let lag = &h["streams"]["events:PromoCodeAppliedEvent|sluice:user-stats"]["lag"];
    assert!(lag.as_array().is_some_and(|l| l.iter().all(Value::is_i64)), "{h}");
    assert!(h["header"]["lag"].as_array().is_some_and(|l| l.iter().all(Value::is_i64)), "{h}");
    assert!(h["totals"]["user-stats"]["dead_lettered"].as_f64() >= Some(0.0), "{h}");

    // Consumers counted live: a second host reads the streams too (its consumer registered in
    // the groups: it reads events while the first is held still), then crashes. Its consumer
    // stays in the groups but is no longer counted once its liveness key expires (15 s).
    let consumers = |host: &Host| -> Option<(u64, u64, Value)> {
        let (_, b) = host.admin("GET", "/api/streams", &[]).ok()?;
        let s = json(&b);
        let row = s.as_array()?.iter().find(|r| r["stream"] == PROMO && r["group"] == "sluice:user-stats")?.clone();
        Some((row["consumers"].as_u64()?, row["consumers_registered"].as_u64()?, row["consumers_gone"].clone()))
    };
    let registered = |conn: &mut redis::Connection| -> usize {
        redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(PROMO)
            .arg("sluice:user-stats")
            .query::<Vec<redis::Value>>(conn)
            .map(|v| v.len())
            .unwrap_or(0)
    };
    let second = start(&redis, &ch, dir.path(), &[])?;
    const SIGSTOP: i32 = 19;
    const SIGCONT: i32 = 18;
    const SIGKILL: i32 = 9;
    signal(&host.child, SIGSTOP);
    publish(&redis, &["PromoCodeAppliedEvent", "--count", "20"])?;
    let read = wait_until("the second host to read", Duration::from_secs(10), || registered(&mut conn) == 2);
    signal(&host.child, SIGCONT);
    read?;
    wait_until("two live consumers", Duration::from_secs(20), || {
        consumers(&host).is_some_and(|c| (c.0, c.1) == (2, 2))
    })
    .with_context(|| format!("{:?}", consumers(&host)))?;
    signal(&second.child, SIGKILL);
    wait_until("the crashed host not counted", Duration::from_secs(40), || {
        consumers(&host).is_some_and(|c| (c.0, c.1) == (1, 2) && c.2.as_array().is_some_and(|g| g.len() == 1))
    })
    .with_context(|| format!("{:?}", consumers(&host)))?;
    drop(second);
    let metrics = host.admin("GET", "/metrics", &[])?.1;
    assert!(
        metrics.lines().any(|l| l.starts_with("sluice_consumer_group_live_consumers{")
            && l.contains("sluice:user-stats")
            && l.ends_with(" 1")),
        "{metrics}"
    );
    // No BullMQ queue here: an empty list.
    assert_eq!(get("/api/queues")?, (200, serde_json::json!([])));
    Ok(())
}

fn bullmq_queue_counts_match_bullmqs_own(release: Release) -> Result<()> {
    let redis = Redis::start()?;
    let ch = ClickHouse::start(release)?;
    let dir = plugin_dir_with(&[plugins_dir().join("promo-code-analytics.wasm")])?;
    let host = start(&redis, &ch, dir.path(), &[("SLUICE_BULLMQ_QUEUES", "events")])?;
    let queues = || -> Result<Value> { Ok(json(&host.admin("GET", "/api/queues", &[])?.1)[0].clone()) };
    // Paused, the queue keeps what is added: waiting, delayed and prioritized jobs stay put.
    bullmq(&redis, &["pause"])?;
    let added = bullmq(&redis, &["add", "--count", "40", "--delayed-every", "4", "--prioritized-every", "5"])?;
    assert_eq!((added["delayed"].as_u64(), added["prioritized"].as_u64()), (Some(10), Some(8)), "{added}");
    // Read both views until they agree (delayed jobs become due meanwhile).
    let agree = |q: &Value, c: &Value| {
        let n = |k: &str| c[k].as_u64().unwrap_or(0);
        q["waiting"].as_u64() == Some(n("waiting") + n("paused"))
            && q["active"].as_u64() == Some(n("active"))
            && q["delayed"].as_u64() == Some(n("delayed"))
            && q["prioritized"].as_u64() == Some(n("prioritized"))
            && q["failed"].as_u64() == Some(n("failed"))
            && q["completed"].as_u64() == Some(n("completed"))
    };
    let mut seen = (Value::Null, Value::Null);
    wait_until("/api/queues to agree with BullMQ's getJobCounts()", Duration::from_secs(30), || {
        seen = (queues().unwrap_or(Value::Null), bullmq(&redis, &["counts"]).unwrap_or(Value::Null));
        agree(&seen.0, &seen.1)
    })
    .with_context(|| format!("{seen:?}"))?;
    let q = &seen.0;
    assert_eq!((q["key"].as_str(), q["paused"].as_bool()), (Some("bull:events"), Some(true)), "{q}");
    let total: u64 = ["waiting", "active", "delayed", "prioritized"].iter().map(|k| q[*k].as_u64().unwrap()).sum();
    assert_eq!(total, 40, "{q}");
    assert!(q["prioritized"].as_u64() > Some(0) || q["delayed"].as_u64() > Some(0), "{q}");
    // Resumed, the host takes them all.
    bullmq(&redis, &["resume"])?;
    wait_until("every job completed", Duration::from_secs(60), || {
        queues().is_ok_and(|q| {
            q["completed"] == 40 && q["waiting"] == 0 && q["active"] == 0 && q["delayed"] == 0 && q["prioritized"] == 0
        })
    })
    .with_context(|| format!("{:?} / {:?}", queues().ok(), bullmq(&redis, &["counts"]).ok()))?;
    assert_eq!(queues()?["paused"], false);
    Ok(())
}

on_every_release!(
    the_console_moves_while_events_flow_and_its_actions_do_what_they_say_after_asking,
    the_console_api_pages_dead_letters_plans_replays_and_counts_live_consumers,
    bullmq_queue_counts_match_bullmqs_own,
);
