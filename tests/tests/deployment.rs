//! Past one machine: Sluice on a Redis Cluster (three primaries, three replicas) and on two
//! ClickHouse 18.16 servers replicating each other through a private ZooKeeper, everything
//! over TLS with passwords (certificates made here with openssl) — with a Redis primary
//! killed and a ClickHouse replica stopped while events flow.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use sluice_tests::*;

const FAST: &str = "retry_base_ms = 200\nretry_max_ms = 1000\nvisibility_timeout_ms = 3000\ninsert_linger_ms = 100\n";

const STREAMS: [&str; 3] = ["events:OrderCreatedEvent", "events:order.created", "events:PromoCodeAppliedEvent"];

/// What was published, as the tables must sum it.
type Expected = SeedSums;

/// Events `range` of the seed mix (see [`SeedSums::event`]), through the cluster (each stream
/// where its slot lives). Entry ids are
/// explicit (`base + i`), so that a batch can be sent again after a failover: entries that
/// made it are refused as not newer than the stream's last.
fn publish(cluster: &RedisCluster, base: u64, range: std::ops::Range<u32>, e: &mut Expected) -> Result<()> {
    let entries: Vec<(String, String, String)> = range
        .map(|i| {
            let (stream, payload) = e.event(i);
            (stream, format!("{}-0", base + i as u64), payload)
        })
        .collect();
    let mut last = None;
    for _ in 0..60 {
        let sent = cluster.conn().and_then(|mut conn| {
            let mut pipe = redis::cluster::cluster_pipe();
            for (stream, id, payload) in &entries {
                pipe.cmd("XADD").arg(stream).arg(id).arg("payload").arg(payload).ignore();
            }
            if last.is_none() {
                return Ok(pipe.query::<()>(&mut conn)?);
            }
            // Again after a failure: one by one, skipping what made it the first time.
            for (stream, id, payload) in &entries {
                let r: redis::RedisResult<String> =
                    redis::cmd("XADD").arg(stream).arg(id).arg("payload").arg(payload).query(&mut conn);
                match r {
                    Ok(_) => {}
                    Err(err) if err.to_string().contains("equal or smaller") => {}
                    Err(err) => return Err(err.into()),
                }
            }
            Ok(())
        });
        match sent {
            Ok(()) => return Ok(()),
            Err(err) => {
                eprintln!(
                    "publish: {err} NODES {}",
                    cluster.cli(cluster.ports[5], &["CLUSTER", "NODES"]).unwrap_or_default().replace('\n', " | ")
                );
                last = Some(err)
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Err(last.unwrap())
}

/// Batch-ledger keys left on any primary (none once everything is acknowledged).
fn ledger_keys(cluster: &RedisCluster) -> Vec<String> {
    let mut keys = Vec::new();
    for port in cluster.ports.clone() {
        for pattern in ["sluice:batch:*", "sluice:written:*"] {
            if let Ok(out) = cluster.cli(port, &["KEYS", pattern]) {
                keys.extend(out.lines().filter(|l| l.starts_with("sluice:")).map(|l| format!("{port}: {l}")));
            }
        }
    }
    keys.sort();
    keys.dedup_by(|a, b| a.split_once(' ').map(|x| x.1) == b.split_once(' ').map(|x| x.1));
    keys
}

fn fifty_thousand_events_exactly_once_through_a_tls_redis_cluster_losing_a_primary_and_clickhouse_replicas_losing_one(
    _release: Release,
) -> Result<()> {
    let certs = Certs::make()?;
    let zk = ZooKeeper::start()?;
    let (mut ch1, ch2) = ClickHouse::start_replica_pair(&zk, &certs, "ch-secret")?;
    let mut cluster = RedisCluster::start(&certs, "redis-secret")?;
    let plugins = plugin_dir_with(&first_party_plugins())?;
    let dir = tempfile::tempdir()?;
    let config = config_file(dir.path(), FAST)?.display().to_string();
    // The ClickHouse password from a file, as a mounted secret would be.
    let password_file = dir.path().join("clickhouse-password");
    std::fs::write(&password_file, "ch-secret\n")?;
    let mut env: Vec<(String, String)> = cluster.env();
    env.extend([
        ("SLUICE_CLICKHOUSE_URL".into(), format!("{},{}", ch1.https_url(), ch2.https_url())),
        ("SLUICE_CLICKHOUSE_CA_FILE".into(), certs.path("ca.crt").display().to_string()),
        ("SLUICE_CLICKHOUSE_USER".into(), "default".into()),
        ("SLUICE_CLICKHOUSE_PASSWORD_FILE".into(), password_file.display().to_string()),
        ("SLUICE_CLICKHOUSE_CLUSTER".into(), "sluice".into()),
        ("SLUICE_CONFIG".into(), config),
    ]);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut hosts = Vec::new();
    for _ in 0..2 {
        let h = Host::start_env(plugins.path(), &env)?;
        h.wait_running(Duration::from_secs(120))?;
        hosts.push(h);
    }
    assert!(hosts[0].log_text().contains("cluster=true"), "{}", hosts[0].log_text());
    // Tables were created ON CLUSTER: both replicas have them, Replicated.
    for ch in [&ch1, &ch2] {
        let replicated =
            "SELECT name FROM system.tables WHERE database = 'analytics' AND engine LIKE 'Replicated%' ORDER BY name";
        wait_until("the tables on both replicas", Duration::from_secs(30), || {
            // The three tables of the plugins and Sluice's registry `sluice_tables`.
            ch.query(replicated).is_ok_and(|t| t.lines().count() == 4)
        })
        .map_err(|e| anyhow::anyhow!("{e}: {:?}\n{}", ch.query(replicated), hosts[0].log_text()))?;
    }

    let mut expected = Expected::default();
    // A delayed event: held in `sluice:delayed` and moved to its stream by one host's mover
    // (two steps under a lock on a cluster).
    let delayed = sluice(
        &[
            "publish",
            "order.created",
            r#"{"orderId":"delayed-1","userId":"u1","amount":0.5,"createdAt":"2024-06-01T10:00:00Z"}"#,
            "--delay",
            "2s",
        ],
        &env,
    )?;
    assert!(delayed.contains("delayed until"), "{delayed}");
    expected.orders += 1;
    expected.order_amount += 0.5;
    let base = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as u64;
    let (batches, per_batch) = (20u32, 2_500u32);
    let victim = cluster.primary_of("events:order.created")?;
    for b in 0..batches {
        publish(&cluster, base, b * per_batch..(b + 1) * per_batch, &mut expected)
            .with_context(|| format!("publishing batch {b}"))?;
        std::thread::sleep(Duration::from_millis(300));
        if b == 6 {
            // A primary dies while the hosts read, write and acknowledge: its replica takes
            // over (2 s node timeout), the hosts follow the slot to it.
            cluster.kill(victim);
            cluster.wait_failover("events:order.created", victim, Duration::from_secs(60))?;
        }
        if b == 12 {
            // The replica the hosts insert into goes away: they move to the other one.
            ch1.stop();
        }
    }
    assert_ne!(cluster.primary_of("events:order.created")?, victim, "the slot moved to the replica");

    let mut conn = cluster.conn().context("a connection after the failover")?;
    // Everything read and acknowledged, with r1 still down.
    let all_read = |conn: &mut redis::cluster::ClusterConnection| {
        total_pending(conn, &STREAMS).is_ok_and(|n| n == 0)
            && STREAMS.iter().all(|s| {
                let at = cluster.primary_of(s).unwrap_or(0);
                cluster.cli(at, &["XINFO", "GROUPS", s]).is_ok_and(|o| {
                    // Every group's `lag` (entries not yet delivered) is 0.
                    let lines: Vec<&str> = o.lines().map(str::trim).collect();
                    let lags: Vec<&str> = lines.windows(2).filter(|w| w[0] == "lag").map(|w| w[1]).collect();
                    !lags.is_empty() && lags.iter().all(|l| *l == "0")
                })
            })
    };
    wait_until("every event read and acknowledged", Duration::from_secs(120), || all_read(&mut conn))?;
    // Rows that r1 took just before it stopped reach r2 only when r1 is back (ClickHouse
    // replication is asynchronous; see the deployment guide for insert_quorum).
    ch1.restart()?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let users = expected.user_sums_text();
    while Instant::now() < deadline
        && ![&ch1, &ch2].iter().all(|ch| SeedSums::in_tables(ch).is_ok_and(|a| a == expected) && user_sums(ch) == users)
    {
        std::thread::sleep(Duration::from_millis(500));
    }
    let log = hosts.iter().map(|h| h.log_text()).collect::<Vec<_>>().join("\n--- next host ---\n");
    let log: String = log.lines().filter(|l| !l.contains("redis::cluster_handling")).collect::<Vec<_>>().join("\n");
    for stream in STREAMS {
        let at = cluster.primary_of(stream)?;
        eprintln!(
            "{stream}: XLEN {} GROUPS {}",
            cluster.cli(at, &["XLEN", stream])?.trim(),
            cluster.cli(at, &["XINFO", "GROUPS", stream])?.replace('\n', " ")
        );
    }
    for (name, ch) in [("r1", &ch1), ("r2", &ch2)] {
        assert_eq!(SeedSums::in_tables(ch)?, expected, "ClickHouse {name} after 50,000 events; hosts' log:\n{log}");
        assert_eq!(user_sums(ch), users, "users_analytics on {name}");
    }
    assert_eq!(total_pending(&mut conn, &STREAMS)?, 0, "nothing pending");
    assert!(dead_letters(&mut conn).is_empty(), "no dead letters: {:?}", dead_letters(&mut conn));
    // The tools work on the cluster too: `dlq list` reads sluice:dlq where it lives.
    let list = sluice(&["dlq", "list"], &env)?;
    assert!(!list.contains("error"), "{list}");
    assert!(log.contains("ClickHouse endpoint failed; moved to the next one"), "{log}");
    assert!(!log.contains("ch-secret") && !log.contains("redis-secret"), "a secret reached the log:\n{log}");
    // Every batch closed and acknowledged (a last acknowledgement may still be on its way).
    wait_until("no batch record left", Duration::from_secs(30), || ledger_keys(&cluster).is_empty())
        .map_err(|e| anyhow::anyhow!("{e}: {:?}", ledger_keys(&cluster)))?;
    Ok(())
}

/// Wrong TLS material or credentials stop a command with one message naming the setting to
/// check, and the passwords never appear in it.
#[test]
fn wrong_tls_material_or_passwords_say_which_setting_to_check() -> Result<()> {
    let certs = Certs::make()?;
    let other = Certs::make()?; // a CA that signed nothing of this server's
    let dir = tempfile::tempdir()?;
    let port = free_port();
    let mut server = std::process::Command::new("redis-server")
        .args(certs.redis_server_args(port))
        .args(["--save", "", "--requirepass", "right-secret"])
        .arg("--dir")
        .arg(dir.path())
        .stdout(std::process::Stdio::null())
        .spawn()?;
    let url = format!("rediss://127.0.0.1:{port}");
    let ca = certs.path("ca.crt").display().to_string();
    let (cert, key) = (certs.path("client.crt").display().to_string(), certs.path("client.key").display().to_string());
    let wrong_ca = other.path("ca.crt").display().to_string();
    let publish = |env: &[(&str, &str)]| -> String {
        let out = std::process::Command::new("timeout")
            .arg("30")
            .arg(sluice_bin())
            .args(["publish", "order.created", r#"{"orderId":"1","userId":"u","amount":1}"#])
            .env_clear()
            .envs(env.iter().copied())
            .output()
            .unwrap();
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    };
    let good = [
        ("SLUICE_REDIS_URL", url.as_str()),
        ("SLUICE_REDIS_PASSWORD", "right-secret"),
        ("SLUICE_REDIS_CA_FILE", ca.as_str()),
        ("SLUICE_REDIS_CERT_FILE", cert.as_str()),
        ("SLUICE_REDIS_KEY_FILE", key.as_str()),
    ];
    wait_until("the TLS redis-server", Duration::from_secs(20), || publish(&good).contains("events:order.created"))?;
    let with = |k: &str, v: &str| -> Vec<(String, String)> {
        good.iter().map(|(a, b)| (a.to_string(), if *a == k { v.to_string() } else { b.to_string() })).collect()
    };
    let run = |env: Vec<(String, String)>| {
        let env: Vec<(&str, &str)> =
            env.iter().filter(|(_, v)| !v.is_empty()).map(|(a, b)| (a.as_str(), b.as_str())).collect();
        publish(&env)
    };
    let out = run(with("SLUICE_REDIS_CA_FILE", &wrong_ca));
    assert!(out.contains("invalid peer certificate") && out.contains("SLUICE_REDIS_CA_FILE"), "{out}");
    let out =
        run(with("SLUICE_REDIS_CERT_FILE", "").into_iter().filter(|(k, _)| k != "SLUICE_REDIS_KEY_FILE").collect());
    assert!(out.contains("SLUICE_REDIS_CERT_FILE"), "{out}");
    let out = run(with("SLUICE_REDIS_PASSWORD", "wrong-secret"));
    assert!(out.contains("SLUICE_REDIS_PASSWORD") && !out.contains("wrong-secret"), "{out}");
    let out = run(with("SLUICE_REDIS_URL", &format!("rediss://:wrong-secret@127.0.0.1:{port}")));
    assert!(!out.contains("wrong-secret") && out.contains("***"), "the password in the URL is masked: {out}");
    let out = run(with("SLUICE_REDIS_URL", &format!("redis://127.0.0.1:{port}")));
    assert!(out.contains("not rediss://"), "{out}");
    stop_child(&mut server);
    Ok(())
}

on_releases_with_zookeeper!(
    fifty_thousand_events_exactly_once_through_a_tls_redis_cluster_losing_a_primary_and_clickhouse_replicas_losing_one,
);
