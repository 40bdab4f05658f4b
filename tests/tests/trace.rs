//! `sluice trace` and `GET /api/trace/{id}` tell an event's whole story: one retried then
//! landed (its first attempt failed with the plugin's error, its second acknowledged with its
//! row, counted in ClickHouse on 18.16's Replicated table by the entry column), one
//! dead-lettered (kind, error, the dead letter's id); by entry id and by event id; what Redis and
//! ClickHouse still tell once the host is gone; an unknown id and a malformed one; a BullMQ job
//! by its id; two hosts' attempts at one event merged.

use std::time::Duration;

use anyhow::Result;
use serde_json::{Value, json};
use sluice_tests::*;

/// Fast retries, so the retried event lands in a second or so.
const FAST: &str = "retry_base_ms = 200\nretry_max_ms = 1000\nvisibility_timeout_ms = 3000\ninsert_linger_ms = 100\n";

const STREAM: &str = "events:flaky.event";

fn xadd(conn: &mut redis::Connection, payload: Value, id: &str) -> Result<String> {
    Ok(redis::cmd("XADD").arg(STREAM).arg("*").arg("payload").arg(payload.to_string()).arg("id").arg(id).query(conn)?)
}

fn api(host: &Host, id: &str) -> Result<(u16, Value)> {
    let (status, body) = host.admin("GET", &format!("/api/trace/{id}"), &[])?;
    let v = serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    Ok((status, v))
}

fn has(lines: &str, needle: &str) {
    assert!(lines.contains(needle), "`{needle}` is not in:\n{lines}");
}

fn retried_and_dead_lettered_events_tell_their_story(release: Release) -> Result<()> {
    let DedupClickHouse { ch, zookeeper: _zk } = DedupClickHouse::start(release)?;
    let redis = Redis::start()?;
    let plugins = plugin_dir_with(&[test_plugin("flaky")])?;
    let cfg_dir = tempfile::tempdir()?;
    let config = config_file(cfg_dir.path(), FAST)?.display().to_string();
    let mut host = Host::start(&redis, &ch, plugins.path(), &[("SLUICE_CONFIG", &config)])?;
    host.wait_running(Duration::from_secs(60))?;
    let mut conn = redis.conn()?;
    let retried = xadd(&mut conn, json!({"n": 7, "fail_first": true}), "evt-retried")?;
    let dead = xadd(&mut conn, json!({"n": 8, "permanent": true}), "evt-dead")?;
    wait_until("the retried event's row and the dead letter", Duration::from_secs(60), || {
        let settled = total_pending(&mut conn, &[STREAM]).is_ok_and(|n| n == 0);
        settled
            && ch.number("SELECT count() FROM analytics.flaky_rows WHERE n = 7") == 1
            && dead_letters(&mut conn).len() == 1
    })
    .map_err(|e| e.context(host.log_text()))?;
    let letters: Vec<(String, Vec<(String, String)>)> =
        redis::cmd("XRANGE").arg("sluice:dlq").arg("-").arg("+").query(&mut conn)?;
    let dlq_id = letters[0].0.clone();
    let env = [("SLUICE_REDIS_URL", redis.url()), ("SLUICE_CLICKHOUSE_URL", ch.url())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let admin = format!("127.0.0.1:{}", host.admin_port);
    let me = format!("-{}-", host.child.id());
    // On 18.16 the table is Replicated (ZooKeeper), with the entry column: its rows are counted
    // in ClickHouse. On 26.9 it deduplicates by token and has none: the host's count is shown.
    let rows_line = match release {
        Release::V18 => "rows in ClickHouse: flaky_rows 1 (counted by the entry column)",
        Release::V26 => "rows written: flaky_rows 1 (as the host recorded them",
    };

    // Retried, then landed: by entry id and by event id, the same story.
    for id in [retried.as_str(), "evt-retried"] {
        let out = sluice(&["trace", id, "--admin", &admin], &env)?;
        has(&out, &format!("entry {retried} of {STREAM}"));
        has(&out, "event id evt-retried");
        has(&out, "plugin flaky reads it");
        let first = out.lines().find(|l| l.contains("attempt 1:")).unwrap_or_else(|| panic!("no attempt 1:\n{out}"));
        has(first, &me);
        has(first, "plugin version 1.0.0");
        has(first, "failed, to be retried:");
        has(first, "first attempt fails");
        let second = out.lines().find(|l| l.contains("attempt 2:")).unwrap_or_else(|| panic!("no attempt 2:\n{out}"));
        has(second, &me);
        has(second, "acknowledged, rows: flaky_rows 1");
        has(&out, rows_line);
        assert_eq!(out.lines().last().map(str::trim), Some("state: acknowledged"), "{out}");
    }
    let (status, v) = api(&host, &retried)?;
    assert_eq!(status, 200, "{v}");
    let m = &v["matches"][0];
    assert_eq!(v["matches"].as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(
        (m["plugin"].as_str(), m["source"].as_str(), m["stream"].as_str()),
        (Some("flaky"), Some("stream"), Some(STREAM)),
        "{v}"
    );
    assert_eq!(m["event_id"], "evt-retried", "{v}");
    assert_eq!(m["state"], "acknowledged", "{v}");
    assert!(m["pending"].is_null() && m["dead_letter"].is_null(), "{v}");
    let attempts = m["attempts"].as_array().unwrap();
    let outcomes: Vec<_> = attempts.iter().map(|a| (a["attempt"].as_u64(), a["outcome"].as_str())).collect();
    assert_eq!(outcomes, [(Some(1), Some("retry")), (Some(2), Some("acknowledged"))], "{v}");
    assert!(attempts[0]["error"].as_str().unwrap().contains("first attempt fails"), "{v}");
    assert!(attempts.iter().all(|a| a["version"] == "1.0.0" && a["host"].as_str().unwrap().contains(&me)), "{v}");
    assert_eq!(attempts[1]["rows"], json!({"flaky_rows": 1}), "{v}");
    let from = if release == Release::V18 { "clickhouse" } else { "host" };
    assert_eq!(m["rows"], json!([{"table": "flaky_rows", "count": 1, "from": from}]), "{v}");

    // Dead-lettered: the kind, the plugin's error and the dead letter's id.
    let out = sluice(&["trace", &dead, "--admin", &admin], &env)?;
    let attempt = out.lines().find(|l| l.contains("attempt 1:")).unwrap_or_else(|| panic!("no attempt 1:\n{out}"));
    has(attempt, "dead-lettered (permanent): ");
    has(attempt, "event evt-dead is permanently bad");
    has(&out, &format!("dead letter {dlq_id} in sluice:dlq: permanent after 1 attempt(s)"));
    assert_eq!(out.lines().last().map(str::trim), Some("state: dead lettered"), "{out}");
    let (status, v) = api(&host, "evt-dead")?;
    assert_eq!(status, 200, "{v}");
    let m = &v["matches"][0];
    assert_eq!(m["state"], "dead_lettered", "{v}");
    assert_eq!(m["entry_id"].as_str(), Some(dead.as_str()), "{v}");
    assert_eq!(m["dead_letter"]["dlq_id"].as_str(), Some(dlq_id.as_str()), "{v}");
    assert_eq!(m["dead_letter"]["error_kind"], "permanent", "{v}");
    assert_eq!(m["attempts"][0]["kind"], "permanent", "{v}");
    let json_out: Value = serde_json::from_str(&sluice(&["trace", &dead, "--admin", &admin, "--json"], &env)?)?;
    assert_eq!(json_out["matches"][0]["dead_letter"]["dlq_id"].as_str(), Some(dlq_id.as_str()), "{json_out}");

    // Unknown and malformed ids: one clear answer each.
    let (code, _, err) = sluice_output(&["trace", "1-0", "--admin", &admin], &env)?;
    assert_eq!(code, 1, "{err}");
    has(&err, "no event 1-0 found");
    let (status, v) = api(&host, "no-such-event")?;
    assert_eq!(status, 404, "{v}");
    has(v["error"].as_str().unwrap(), "no event no-such-event found");
    let (code, _, err) = sluice_output(&["trace", "two words", "--admin", &admin], &env)?;
    assert_eq!(code, 2, "{err}");
    has(&err, "`two words` is not an id sluice can trace");
    let (status, v) = api(&host, "two%20words")?;
    assert_eq!(status, 400, "{v}");
    has(v["error"].as_str().unwrap(), "not an id sluice can trace");

    // The host gone (its history with it): Redis and ClickHouse still tell what they hold.
    host.stop();
    let (code, out, err) = sluice_output(&["trace", &retried, "--admin", &admin], &env)?;
    assert_eq!(code, 0, "{out}{err}");
    has(&out, "the hosts' history was not reachable");
    has(&out, "no attempt is known");
    if release == Release::V18 {
        has(&out, "rows in ClickHouse: flaky_rows 1 (counted by the entry column)");
    }
    assert_eq!(out.lines().last().map(str::trim), Some("state: acknowledged"), "{out}");
    let out = sluice(&["trace", "evt-dead", "--admin", &admin], &env)?;
    has(&out, &format!("dead letter {dlq_id} in sluice:dlq"));
    assert_eq!(out.lines().last().map(str::trim), Some("state: dead lettered"), "{out}");
    Ok(())
}

/// A BullMQ job by its id: retried then completed, and one failed for good, each with BullMQ's
/// own record of it beside the host's attempts.
fn bullmq_jobs_tell_their_story(release: Release) -> Result<()> {
    let redis = Redis::start()?;
    let ch = ClickHouse::start(release)?;
    let plugins = plugin_dir_with(&[test_plugin("flaky")])?;
    let env = [("SLUICE_BULLMQ_QUEUES", "events")];
    let host = Host::start(&redis, &ch, plugins.path(), &env)?;
    host.wait_running(Duration::from_secs(60))?;
    let add = |data: &str| bullmq(&redis, &["add", "--type", "flaky.event", "--data", data, "--backoff-ms", "300"]);
    // Job ids are BullMQ's counter: 1, then 2.
    add(r#"{"n":4,"fail_first":true}"#)?;
    add(r#"{"n":5,"permanent":true}"#)?;
    wait_until("one job completed and one failed", Duration::from_secs(60), || {
        bullmq(&redis, &["counts"]).is_ok_and(|c| c["completed"] == 1 && c["failed"] == 1)
    })
    .map_err(|e| e.context(host.log_text()))?;
    let env = [
        ("SLUICE_REDIS_URL", redis.url()),
        ("SLUICE_CLICKHOUSE_URL", ch.url()),
        ("SLUICE_BULLMQ_QUEUES", "events".into()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let admin = format!("127.0.0.1:{}", host.admin_port);

    let out = sluice(&["trace", "1", "--admin", &admin], &env)?;
    has(&out, "bullmq job 1 of queue bull:events (event type flaky.event), added at ");
    let first = out.lines().find(|l| l.contains("attempt 1:")).unwrap_or_else(|| panic!("no attempt 1:\n{out}"));
    has(first, "failed, to be retried:");
    has(first, "first attempt fails");
    let second = out.lines().find(|l| l.contains("attempt 2:")).unwrap_or_else(|| panic!("no attempt 2:\n{out}"));
    has(second, "acknowledged, rows: flaky_rows 1");
    has(&out, "the job is completed after 2 attempt(s)");
    has(&out, "rows written: flaky_rows 1");
    assert_eq!(out.lines().last().map(str::trim), Some("state: acknowledged"), "{out}");

    let (status, v) = api(&host, "2")?;
    assert_eq!(status, 200, "{v}");
    let m = &v["matches"][0];
    assert_eq!(
        (m["source"].as_str(), m["job_id"].as_str(), m["state"].as_str()),
        (Some("bullmq"), Some("2"), Some("dead_lettered")),
        "{v}"
    );
    assert_eq!(m["job"]["state"], "failed", "{v}");
    assert!(m["job"]["failed_reason"].as_str().unwrap().contains("permanently bad"), "{v}");
    assert_eq!(m["attempts"][0]["outcome"], "dead_lettered", "{v}");
    assert_eq!(m["attempts"][0]["kind"], "permanent", "{v}");
    Ok(())
}

/// Two hosts share the work: each remembers only its own attempts, and `sluice trace` asking
/// both tells every event's two attempts whichever host made them; a host that does not answer
/// is named, and what the others said is still told.
fn several_hosts_answers_are_merged(release: Release) -> Result<()> {
    let redis = Redis::start()?;
    let ch = ClickHouse::start(release)?;
    let plugins = plugin_dir_with(&[test_plugin("flaky")])?;
    let cfg_dir = tempfile::tempdir()?;
    let config = config_file(cfg_dir.path(), &format!("{FAST}batch_size = 4\n"))?.display().to_string();
    let hosts = [
        Host::start(&redis, &ch, plugins.path(), &[("SLUICE_CONFIG", &config)])?,
        Host::start(&redis, &ch, plugins.path(), &[("SLUICE_CONFIG", &config)])?,
    ];
    for h in &hosts {
        h.wait_running(Duration::from_secs(60))?;
    }
    let mut conn = redis.conn()?;
    let entries: Vec<String> = (0..40)
        .map(|i| xadd(&mut conn, json!({"n": i, "fail_first": true}), &format!("evt-{i}")))
        .collect::<Result<_>>()?;
    wait_until("every event's row", Duration::from_secs(60), || {
        total_pending(&mut conn, &[STREAM]).is_ok_and(|n| n == 0) && ch.rows("flaky_rows") == 40
    })
    .map_err(|e| e.context(format!("{}\n{}", hosts[0].log_text(), hosts[1].log_text())))?;
    let env = [("SLUICE_REDIS_URL", redis.url()), ("SLUICE_CLICKHOUSE_URL", ch.url())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let admins: Vec<String> = hosts.iter().map(|h| format!("127.0.0.1:{}", h.admin_port)).collect();
    let mut readers = std::collections::BTreeSet::new();
    // Events whose two attempts were made by different hosts: only the merge tells them whole.
    let mut split = 0;
    for entry in &entries {
        let out = sluice(&["trace", entry, "--admin", &admins[0], "--admin", &admins[1], "--json"], &env)?;
        let v: Value = serde_json::from_str(&out)?;
        let m = &v["matches"][0];
        let attempts: Vec<_> =
            m["attempts"].as_array().unwrap().iter().map(|a| (a["attempt"].as_u64(), a["outcome"].as_str())).collect();
        assert_eq!(attempts, [(Some(1), Some("retry")), (Some(2), Some("acknowledged"))], "{v}");
        assert_eq!(m["state"], "acknowledged", "{v}");
        assert_eq!(m["rows"], json!([{"table": "flaky_rows", "count": 1, "from": "host"}]), "{v}");
        readers.extend(m["attempts"].as_array().unwrap().iter().map(|a| a["host"].as_str().unwrap().to_string()));
        split += (m["attempts"][0]["host"] != m["attempts"][1]["host"]) as usize;
    }
    assert_eq!(readers.len(), 2, "both hosts worked: {readers:?}");
    // A retry goes to whichever host reads it next: about a third of them change hosts here.
    assert!(split > 0, "no event's attempts were split between the hosts: the merge was not exercised");
    // One host asked is not there: the other's answer is told, with a warning naming it.
    let gone = format!("127.0.0.1:{}", free_port());
    let (code, out, err) =
        sluice_output(&["trace", &entries[0], "--admin", &admins[0], "--admin", &admins[1], "--admin", &gone], &env)?;
    assert_eq!(code, 0, "{out}{err}");
    has(&err, &format!("some hosts' history was not reachable (cannot reach the admin API at {gone}"));
    has(&out, "attempt 2:");
    Ok(())
}

on_every_release!(
    retried_and_dead_lettered_events_tell_their_story,
    bullmq_jobs_tell_their_story,
    several_hosts_answers_are_merged
);
