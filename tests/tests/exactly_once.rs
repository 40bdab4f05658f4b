//! Exactly once: rows of every event land once — in Replicated tables on ClickHouse 18.16 (a
//! private ZooKeeper), by insert_deduplication_token on plain MergeTree on 26.9 — however often
//! hosts are SIGKILLed, with several hosts sharing the work, a ClickHouse restart, and a plugin
//! replaced between a crash and its recovery.

use std::time::{Duration, Instant};

use anyhow::Result;
use sluice_tests::*;

/// Fast retries and recovery, so the tests take seconds.
const FAST: &str = "retry_base_ms = 200\nretry_max_ms = 1000\nvisibility_timeout_ms = 3000\ninsert_linger_ms = 100\n";

const STREAMS: [&str; 3] = ["events:OrderCreatedEvent", "events:order.created", "events:PromoCodeAppliedEvent"];

/// What `publish` wrote, as the tables must sum it.
type Expected = SeedSums;

/// Events `range` of the seed mix (see [`SeedSums::event`]).
fn publish(conn: &mut redis::Connection, range: std::ops::Range<u32>, e: &mut Expected) -> Result<()> {
    let mut pipe = redis::pipe();
    for i in range {
        let (stream, payload) = e.event(i);
        pipe.cmd("XADD").arg(stream).arg("*").arg("payload").arg(payload).ignore();
    }
    pipe.query::<()>(conn)?;
    Ok(())
}

/// Keys the batch ledger left behind (there should be none once everything is acknowledged).
fn ledger_keys(conn: &mut redis::Connection) -> Vec<String> {
    let mut keys: Vec<String> = redis::cmd("KEYS").arg("sluice:batch:*").query(conn).unwrap_or_default();
    let written: Vec<String> = redis::cmd("KEYS").arg("sluice:written:*").query(conn).unwrap_or_default();
    keys.extend(written);
    keys
}

struct Cluster {
    /// 18.16's ZooKeeper (Replicated tables), or none on 26.9 (deduplication tokens).
    zk: Option<ZooKeeper>,
    ch: ClickHouse,
    redis: Redis,
    plugins: tempfile::TempDir,
    config: String,
}

impl Cluster {
    fn start(release: Release, plugins: &[std::path::PathBuf], extra_config: &str) -> Result<Cluster> {
        let DedupClickHouse { ch, zookeeper: zk } = DedupClickHouse::start(release)?;
        let redis = Redis::start()?;
        let plugins = plugin_dir_with(plugins)?;
        let cfg_dir = tempfile::tempdir()?.keep();
        let config = config_file(&cfg_dir, &format!("{FAST}{extra_config}"))?.display().to_string();
        Ok(Cluster { zk, ch, redis, plugins, config })
    }

    /// Inserts fail from now on, and batches stay recorded but uncommitted: ZooKeeper goes
    /// away (18.16, a Replicated table cannot take inserts) or ClickHouse does (26.9).
    fn break_inserts(&mut self) {
        match &mut self.zk {
            Some(zk) => zk.stop(),
            None => self.ch.stop(),
        }
    }

    /// Inserts work again.
    fn heal(&mut self) -> Result<()> {
        match &mut self.zk {
            Some(zk) => zk.restart(),
            None => self.ch.restart(),
        }
    }

    fn host(&self) -> Result<Host> {
        let log = std::env::var("SLUICE_TEST_LOG").unwrap_or_else(|_| "info".into());
        Host::start(
            &self.redis,
            &self.ch,
            self.plugins.path(),
            &[("SLUICE_CONFIG", &self.config), ("SLUICE_LOG", &log)],
        )
    }
}

fn three_hosts_five_sigkills_and_a_clickhouse_restart_write_every_event_exactly_once(release: Release) -> Result<()> {
    let mut c = Cluster::start(release, &first_party_plugins(), "")?;
    let mut hosts: Vec<Host> = (0..3).map(|_| c.host()).collect::<Result<_>>()?;
    for h in &hosts {
        h.wait_running(Duration::from_secs(90))?;
    }
    let first = hosts[0].log_text();
    let guarantee = DedupClickHouse::guarantee(release);
    for table in ["orders_analytics", "promo_code_usages_analytics", "users_analytics"] {
        assert!(
            first.lines().any(|l| l.contains(table) && l.contains(guarantee)),
            "the start-up log states the guarantee of {table}:\n{first}"
        );
    }
    let plugins = hosts[0].admin("GET", "/api/plugins", &[])?.1;
    assert_eq!(
        plugins.matches(&format!("\"{guarantee}\"")).count(),
        3,
        "the admin API shows the guarantee of each table: {plugins}"
    );
    let total = 100_000u32;
    let mut logs = String::new();
    // A deterministic "random" schedule, so that a failure can be replayed. A publisher adds
    // 2,500 events every 0.4 s (~20 s in all, so that every fault meets work in flight) while, every 0.5-0.9 s, one host is SIGKILLed and a new one
    // started. The second kill happens while ClickHouse is down (the host's batches are
    // recorded, not committed), the fourth while Redis is down.
    let mut seed = 0x5eed_u64;
    let mut next_random = move |n: u64| {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (seed >> 33) % n
    };
    let started = Instant::now();
    // Held by the publisher per chunk, and by the chaos while Redis is down, so that no chunk
    // is half-published.
    let redis_up = std::sync::Arc::new(std::sync::Mutex::new(()));
    let publisher = {
        let (redis_up, url) = (redis_up.clone(), c.redis.url());
        std::thread::spawn(move || -> Result<Expected> {
            let client = redis::Client::open(url)?;
            let mut expected = Expected::default();
            for chunk in 0..total / 2500 {
                {
                    let _up = redis_up.lock().unwrap();
                    // A connection per chunk: Redis restarts in between.
                    let mut conn = client.get_connection_with_timeout(Duration::from_secs(5))?;
                    publish(&mut conn, chunk * 2500..(chunk + 1) * 2500, &mut expected)?;
                }
                std::thread::sleep(Duration::from_millis(400));
            }
            Ok(expected)
        })
    };
    let mut kills = 0;
    while kills < 5 {
        std::thread::sleep(Duration::from_millis(500 + next_random(400)));
        let mut victim = next_random(3) as usize;
        let kill = |h: &mut Host, logs: &mut String, why: &str| {
            signal(&h.child, 9);
            let _ = h.child.wait();
            logs.push_str(&format!("\n--- a host, killed after {:?} {why} ---\n", started.elapsed()));
            logs.push_str(&h.log_text());
        };
        // The first host whose log, past what it held before, shows `needle` (else `victim`).
        let marks: Vec<usize> = hosts.iter().map(|h| h.log_text().len()).collect();
        let first_showing = |hosts: &[Host], needle: &[&str], victim: usize| {
            let mut found = victim;
            let _ = wait_until(&format!("a host to log {needle:?}"), Duration::from_secs(15), || {
                match hosts.iter().zip(&marks).position(|(h, &m)| {
                    let text = h.log_text();
                    needle.iter().any(|n| text.get(m..).unwrap_or("").contains(n))
                }) {
                    Some(i) => {
                        found = i;
                        true
                    }
                    None => false,
                }
            });
            found
        };
        match kills {
            1 => {
                // ClickHouse away: kill a host whose batches are recorded and failing.
                let t = Instant::now();
                c.ch.stop();
                println!("clickhouse-server stopped in {:?}", t.elapsed());
                victim = first_showing(&hosts, &["insert failed; retrying"], victim);
                kill(&mut hosts[victim], &mut logs, "while ClickHouse was down");
                c.ch.restart()?;
            }
            3 => {
                // Redis away: kill a host with a batch it cannot record, close or acknowledge.
                let _down = redis_up.lock().unwrap();
                c.redis.stop();
                let needles = ["cannot close a committed batch", "cannot acknowledge yet", "cannot record a batch"];
                victim = first_showing(&hosts, &needles, victim);
                kill(&mut hosts[victim], &mut logs, "while Redis was down");
                c.redis.restart()?;
            }
            _ => kill(&mut hosts[victim], &mut logs, ""),
        }
        hosts[victim] = c.host()?;
        kills += 1;
    }
    let expected = publisher.join().expect("publisher thread")?;
    let mut conn = c.redis.conn()?;
    let all_logs = |hosts: &[Host]| {
        let mut text = logs.clone();
        for (i, h) in hosts.iter().enumerate() {
            text.push_str(&format!("\n--- host {i} (running) ---\n{}", h.log_text()));
        }
        text
    };
    let done = wait_until("every event written and acknowledged", Duration::from_secs(240), || {
        SeedSums::in_tables(&c.ch).is_ok_and(|a| a.orders >= expected.orders && a.promos >= expected.promos)
            && total_pending(&mut conn, &STREAMS).unwrap_or(-1) == 0
    });
    let text = all_logs(&hosts);
    if let Err(e) = done {
        panic!("{e}; tables {:?}, expected {expected:?}\n{text}", SeedSums::in_tables(&c.ch));
    }
    // Let anything in flight settle, then compare exactly.
    std::thread::sleep(Duration::from_secs(2));
    let got = SeedSums::in_tables(&c.ch)?;
    let recoveries = text.matches("recovering a recorded batch").count();
    let claims = text.matches("claimed pending entries").count();
    if std::env::var("SLUICE_TEST_DUMP").is_ok() {
        std::fs::write("/tmp/eo-logs.txt", &text)?;
    }
    let skipped = text.matches("already have rows in this table").count();
    println!(
        "exactly-once: {total} events, 5 SIGKILLs, 1 ClickHouse restart, {:?}; claims of pending entries: {claims}, recovered batches: {recoveries}, re-deliveries that found their rows written: {skipped}",
        started.elapsed()
    );
    assert_eq!(got, expected, "orders and promo tables: a plain count() and sum() equal what was published");
    assert_eq!(user_sums(&c.ch), expected.user_sums_text(), "users_analytics sums");
    assert_eq!(total_pending(&mut conn, &STREAMS)?, 0, "no group has pending entries");
    assert!(dead_letters(&mut conn).is_empty(), "nothing dead-lettered");
    assert_eq!(ledger_keys(&mut conn), Vec::<String>::new(), "the batch ledger is empty once all is acknowledged");
    Ok(())
}

/// Appends a custom section to a component: a new file hash (a new version to the host) with
/// the same code.
fn new_version_of(wasm: &std::path::Path, dst: &std::path::Path, tag: &str) -> Result<()> {
    let mut bytes = std::fs::read(wasm)?;
    let name = b"sluice-test-version";
    let payload = tag.as_bytes();
    let size = 1 + name.len() + payload.len();
    assert!(size < 128 && name.len() < 128, "one-byte LEB128 sizes");
    bytes.extend_from_slice(&[0, size as u8, name.len() as u8]);
    bytes.extend_from_slice(name);
    bytes.extend_from_slice(payload);
    std::fs::write(dst, bytes)?;
    Ok(())
}

fn batches_recorded_before_a_crash_are_recovered_by_a_new_plugin_version(release: Release) -> Result<()> {
    let promo = plugins_dir().join("promo-code-analytics.wasm");
    let mut c = Cluster::start(release, std::slice::from_ref(&promo), "")?;
    let mut conn = c.redis.conn()?;
    let mut host = c.host()?;
    host.wait_running(Duration::from_secs(90))?;
    let mut expected = Expected::default();
    // Publish promo events only (every third index).
    let publish_promos = |conn: &mut redis::Connection, from: u32, n: u32, e: &mut Expected| -> Result<()> {
        let mut local = Expected::default();
        publish(conn, from..from + 3 * n, &mut local)?;
        // The order events went to streams no plugin here reads; count only the promos.
        e.promos += local.promos;
        e.promo_order_amount += local.promo_order_amount;
        e.discount += local.discount;
        Ok(())
    };
    publish_promos(&mut conn, 0, 1000, &mut expected)?;
    wait_until("the first events to land", Duration::from_secs(60), || {
        c.ch.number("SELECT count() FROM analytics.promo_code_usages_analytics") == 1000
    })?;
    // ZooKeeper goes away: the Replicated table cannot take inserts, so the next batches are
    // recorded in Redis but not committed. Then the host dies.
    c.break_inserts();
    publish_promos(&mut conn, 3000, 2000, &mut expected)?;
    wait_until("batches recorded in Redis", Duration::from_secs(30), || {
        let keys: Vec<String> = redis::cmd("KEYS").arg("sluice:batch:*").query(&mut conn).unwrap_or_default();
        !keys.is_empty()
            && total_pending(&mut conn, &STREAMS[2..]).unwrap_or(0) == 2000
            && host.metric("sluice_insert_errors_total", r#"class="retry""#) > 0.0
    })
    .map_err(|e| e.context(host.log_text()))?;
    signal(&host.child, 9);
    let _ = host.child.wait();
    let dead_log = host.log_text();
    // A new version replaces the plugin while its batches wait; ZooKeeper comes back.
    let file = c.plugins.path().join("promo-code-analytics.wasm");
    new_version_of(&promo, &file, "v2")?;
    c.heal()?;
    let mut host = c.host()?;
    host.wait_running(Duration::from_secs(90))?;
    publish_promos(&mut conn, 9000, 1000, &mut expected)?;
    wait_until("every event acknowledged", Duration::from_secs(120), || {
        total_pending(&mut conn, &STREAMS[2..]).unwrap_or(-1) == 0
            && c.ch.number("SELECT count() FROM analytics.promo_code_usages_analytics") >= expected.promos
    })
    .map_err(|e| e.context(format!("{dead_log}\n--- new host ---\n{}", host.log_text())))?;
    let got = c
        .ch
        .query("SELECT count(), sum(order_amount), sum(discount_amount) FROM analytics.promo_code_usages_analytics")?;
    let text = host.log_text();
    assert!(text.contains("recovering a recorded batch"), "the new host re-sent the dead host's batches:\n{text}");
    assert_eq!(
        got,
        format!("{}\t{}\t{}", expected.promos, expected.promo_order_amount, expected.discount),
        "every event's rows once: the recovered batches' rows (made by the old version) and none twice"
    );
    assert_eq!(ledger_keys(&mut conn), Vec::<String>::new());
    host.stop();
    c.ch.stop();
    Ok(())
}

fn a_host_dying_after_its_batch_landed_and_before_acknowledging_it_writes_no_duplicate(release: Release) -> Result<()> {
    let c = Cluster::start(release, &[plugins_dir().join("promo-code-analytics.wasm")], "")?;
    let mut conn = c.redis.conn()?;
    let mut expected = Expected::default();
    // Promo events only: every third index of `publish`.
    let mut local = Expected::default();
    publish(&mut conn, 0..9000, &mut local)?;
    expected.promos = local.promos;
    let mut dying = Host::start(
        &c.redis,
        &c.ch,
        c.plugins.path(),
        &[("SLUICE_CONFIG", &c.config), ("SLUICE_FAILPOINT_EXIT_AFTER_INSERT", "1")],
    )?;
    let status = wait_child(&mut dying.child, Duration::from_secs(90))?;
    assert_eq!(status.code(), Some(86), "the failpoint ended the host:\n{}", dying.log_text());
    let landed = c.ch.number("SELECT count() FROM analytics.promo_code_usages_analytics");
    let pending = total_pending(&mut conn, &STREAMS[2..])?;
    assert!(landed > 0 && pending > 0, "rows landed ({landed}) whose events are still pending ({pending})");
    let host = c.host()?;
    wait_until("every event acknowledged", Duration::from_secs(60), || {
        total_pending(&mut conn, &STREAMS[2..]).unwrap_or(-1) == 0
    })
    .map_err(|e| e.context(host.log_text()))?;
    let text = host.log_text();
    assert_eq!(
        c.ch.number("SELECT count() FROM analytics.promo_code_usages_analytics"),
        expected.promos,
        "the batch that landed before the crash was sent again and dropped by ClickHouse; nothing else doubled"
    );
    assert!(text.contains("recovering a recorded batch"), "{text}");
    assert!(text.contains("already have rows in this table"), "{text}");
    assert_eq!(ledger_keys(&mut conn), Vec::<String>::new());
    Ok(())
}

/// Waits for a child to exit on its own.
fn wait_child(child: &mut std::process::Child, timeout: Duration) -> Result<std::process::ExitStatus> {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait()? {
            return Ok(s);
        }
        if start.elapsed() > timeout {
            anyhow::bail!("the process did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn a_new_version_that_no_longer_writes_a_table_still_re_sends_the_old_versions_batches_of_it(
    release: Release,
) -> Result<()> {
    let promo = plugins_dir().join("promo-code-analytics.wasm");
    let mut c = Cluster::start(release, std::slice::from_ref(&promo), "")?;
    let mut conn = c.redis.conn()?;
    let table = "analytics.promo_code_usages_analytics";
    let mut host = c.host()?;
    host.wait_running(Duration::from_secs(90))?;
    let mut e = Expected::default();
    publish(&mut conn, 0..3000, &mut e)?;
    wait_until("the first events to land", Duration::from_secs(60), || {
        c.ch.number(&format!("SELECT count() FROM {table}")) == 1000
    })?;
    // Batches recorded, not committed (ZooKeeper away), then the host dies.
    c.break_inserts();
    publish(&mut conn, 3000..9000, &mut e)?;
    wait_until("batches recorded in Redis", Duration::from_secs(30), || {
        total_pending(&mut conn, &STREAMS[2..]).unwrap_or(0) == 2000
            && host.metric("sluice_insert_errors_total", r#"class="retry""#) > 0.0
    })
    .map_err(|e| e.context(host.log_text()))?;
    signal(&host.child, 9);
    let _ = host.child.wait();
    // The events in the open records: their rows must land in the old table, once.
    let keys: Vec<String> = redis::cmd("KEYS").arg("sluice:batch:*").query(&mut conn)?;
    let mut recorded = 0usize;
    for k in &keys {
        let parts: String = redis::cmd("HGET").arg(k).arg("parts").query(&mut conn)?;
        recorded += parts.lines().count();
    }
    assert!(recorded > 0, "open batch records at the crash");
    // The next version writes another table (`table_prefix`), not this one.
    std::fs::write(c.plugins.path().join("promo-code-analytics.toml"), "[clickhouse]\ntable_prefix = \"v2_\"\n")?;
    c.heal()?;
    let host = c.host()?;
    host.wait_running(Duration::from_secs(90))?;
    wait_until("every event acknowledged", Duration::from_secs(120), || {
        total_pending(&mut conn, &STREAMS[2..]).unwrap_or(-1) == 0
            && c.ch.number("SELECT count() FROM analytics.v2_promo_code_usages_analytics") == 2000
    })
    .map_err(|e| e.context(host.log_text()))?;
    assert_eq!(
        c.ch.query(&format!("SELECT count(), uniqExact(order_id) FROM {table}"))?,
        format!("{}\t{}", 1000 + recorded, 1000 + recorded),
        "the old version's recorded rows landed in its table, once:\n{}",
        host.log_text()
    );
    assert_eq!(ledger_keys(&mut conn), Vec::<String>::new(), "records closed and their fields deleted");
    Ok(())
}

on_every_release!(
    three_hosts_five_sigkills_and_a_clickhouse_restart_write_every_event_exactly_once,
    batches_recorded_before_a_crash_are_recovered_by_a_new_plugin_version,
    a_host_dying_after_its_batch_landed_and_before_acknowledging_it_writes_no_duplicate,
    a_new_version_that_no_longer_writes_a_table_still_re_sends_the_old_versions_batches_of_it,
);
