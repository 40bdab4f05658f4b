//! Sizing figures for a clustered deployment (docs/deployment.md): Sluice on a Redis Cluster of
//! three primaries and three replicas and on two ClickHouse replicas with ZooKeeper, everything
//! over TLS with passwords — the setup of `tests/tests/deployment.rs` — with one host, then
//! two. For each: N events over the three seed types (published with `sluice publish`) are
//! pre-loaded, the hosts started, and we measure events/s from the first read to the last row
//! visible, the hosts' CPU seconds per million events and their peak RSS.
//!
//! usage: cluster-bench [--events N]   (default 150,000 per run)

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use sluice_tests::*;

const TYPES: [&str; 3] = ["OrderCreatedEvent", "order.created", "PromoCodeAppliedEvent"];

struct Run {
    hosts: usize,
    events: u64,
    per_sec: f64,
    cpu_per_million: f64,
    peak_rss_mib: f64,
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let n: u64 = match args.iter().position(|a| a == "--events") {
        Some(i) => args.get(i + 1).context("--events N")?.parse()?,
        None => 150_000,
    };
    let per_type = n / 3;
    eprintln!("cluster-bench: starting a TLS Redis Cluster (3+3), ZooKeeper and two ClickHouse replicas");
    let certs = Certs::make()?;
    let zk = ZooKeeper::start()?;
    let (ch1, ch2) = ClickHouse::start_replica_pair(&zk, &certs, "bench-secret")?;
    let cluster = RedisCluster::start(&certs, "bench-secret")?;
    let plugins = plugin_dir_with(&first_party_plugins())?;
    let mut env: Vec<(String, String)> = cluster.env();
    env.extend([
        ("SLUICE_CLICKHOUSE_URL".into(), format!("{},{}", ch1.https_url(), ch2.https_url())),
        ("SLUICE_CLICKHOUSE_CA_FILE".into(), certs.path("ca.crt").display().to_string()),
        ("SLUICE_CLICKHOUSE_USER".into(), "default".into()),
        ("SLUICE_CLICKHOUSE_PASSWORD".into(), "bench-secret".into()),
        ("SLUICE_CLICKHOUSE_CLUSTER".into(), "sluice".into()),
        ("SLUICE_LOG".into(), "warn".into()),
    ]);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let rows = |ch: &ClickHouse| {
        ch.number("SELECT count() FROM analytics.orders_analytics")
            + ch.number("SELECT count() FROM analytics.promo_code_usages_analytics")
    };
    let mut runs = Vec::new();
    let mut done_before = 0i64;
    for hosts in [1usize, 2] {
        eprintln!("cluster-bench: {hosts} host(s): pre-loading {} events", per_type * 3);
        for t in TYPES {
            let out = std::process::Command::new("timeout")
                .arg("600")
                .arg(sluice_bin())
                .args(["publish", t, "--count", &per_type.to_string()])
                .envs(env.iter().copied())
                .output()?;
            if !out.status.success() {
                bail!("sluice publish {t}: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
        let target = done_before + (per_type * 3) as i64;
        let start = Instant::now();
        let mut running: Vec<Host> =
            (0..hosts).map(|_| Host::start_env(plugins.path(), &env)).collect::<Result<_>>()?;
        // From the first row written (start-up — compiling, ON CLUSTER DDL — is not the rate).
        wait_until("the first rows", Duration::from_secs(180), || rows(&ch1) > done_before)?;
        let t_first = Instant::now();
        let before = rows(&ch1);
        wait_until("every row", Duration::from_secs(600), || rows(&ch1) >= target)
            .with_context(|| running[0].log_text())?;
        let secs = t_first.elapsed().as_secs_f64();
        let per_sec = (target - before) as f64 / secs;
        let (mut cpu, mut rss) = (0.0, 0.0f64);
        for h in &running {
            let (c, r) = process_usage(h.child.id())?;
            cpu += c;
            rss = rss.max(r);
        }
        eprintln!(
            "cluster-bench: {hosts} host(s): {} events in {secs:.2} s ({:.1} s since start)",
            target - before,
            start.elapsed().as_secs_f64()
        );
        runs.push(Run {
            hosts,
            events: per_type * 3,
            per_sec,
            cpu_per_million: cpu / ((per_type * 3) as f64 / 1e6),
            peak_rss_mib: rss,
        });
        for h in &mut running {
            h.stop();
        }
        done_before = target;
    }
    println!("| hosts | events | events/s | host CPU s per 1M events (all hosts) | peak RSS per host |");
    println!("| --- | --- | --- | --- | --- |");
    for r in &runs {
        println!(
            "| {} | {} | {:.0} | {:.1} | {:.0} MiB |",
            r.hosts, r.events, r.per_sec, r.cpu_per_million, r.peak_rss_mib
        );
    }
    println!("(every event feeds two plugins — its analytics plugin and user-stats — all exactly-once)");
    Ok(())
}
