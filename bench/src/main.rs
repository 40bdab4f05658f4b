//! `make bench`: Sluice side by side with the pipeline's limit and the seed designs, each on its
//! own private Redis and ClickHouse, in one run, and a table of the figures.
//!
//! For each contender: N PromoCodeAppliedEvent events (the seed's payload, `sluice publish`'s
//! generator) are pre-loaded, the consumer is started, and we measure
//! - events/s from its first read to the last row visible in ClickHouse (count() polled);
//! - its CPU seconds per million events and its peak RSS (from /proc, the consumer process only);
//! - then, events published live at half that rate for a while: publish → visible latency,
//!   p50 and p99 (event k is visible when count() first reaches it; one stream, read in order).
//!
//! Every contender runs on each ClickHouse release asked for (both by default: 18.16 from
//! Debian, 26.9 from chdb-core; one table each). Exactly-once is Replicated tables with a
//! private ZooKeeper on 18.16, deduplication tokens on 26.9.
//!
//! usage: sluice-bench [--quick] [--events N] [--clickhouse 18,26]
//!                     [--only limit,sluice,sluice-no-idem,sluice-eo,sluice-bullmq,python,bullmq-batched,bullmq-per-job,sluice-py,sluice-js,sluice-ts]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use sluice_tests::{ClickHouse, Redis, Release, process_usage, repo_root, sluice_bin, stop_child};

const STREAM: &str = "events:PromoCodeAppliedEvent";
const DDL: &str = "CREATE TABLE analytics.promo_code_usages_analytics (event_date Date, created_at DateTime, \
    promo_code String, promo_code_id String, user_id String, order_id String, order_amount Float64, \
    discount_amount Float64) ENGINE = MergeTree PARTITION BY toYYYYMM(event_date) ORDER BY (event_date, promo_code)";

#[derive(Clone, Copy, PartialEq, Debug)]
enum Kind {
    Limit,
    Sluice,
    SluiceNoIdempotency,
    SluiceExactlyOnce,
    SluiceBullmq,
    Python,
    BullBatched,
    BullPerJob,
    SluicePython,
    SluiceJs,
    SluiceTs,
}

impl Kind {
    fn key(self) -> &'static str {
        match self {
            Kind::Limit => "limit",
            Kind::Sluice => "sluice",
            Kind::SluiceNoIdempotency => "sluice-no-idem",
            Kind::SluiceExactlyOnce => "sluice-eo",
            Kind::SluiceBullmq => "sluice-bullmq",
            Kind::Python => "python",
            Kind::BullBatched => "bullmq-batched",
            Kind::BullPerJob => "bullmq-per-job",
            Kind::SluicePython => "sluice-py",
            Kind::SluiceJs => "sluice-js",
            Kind::SluiceTs => "sluice-ts",
        }
    }
    fn label(self) -> &'static str {
        match self {
            Kind::Limit => "limit: Rust reader/writer, no plugin",
            Kind::Sluice => "Sluice + promo-code-analytics (wasm)",
            Kind::SluiceNoIdempotency => "Sluice, idempotency by event id off",
            Kind::SluiceExactlyOnce => "Sluice, exactly-once",
            Kind::SluiceBullmq => "Sluice, BullMQ source (same jobs)",
            Kind::Python => "seed: Python Streams, 1,000/insert",
            Kind::BullBatched => "seed: BullMQ worker, 1,000/insert",
            Kind::BullPerJob => "seed: BullMQ worker, 1 row/insert",
            Kind::SluicePython => "Sluice + the Python twin (wasm)",
            Kind::SluiceJs => "Sluice + the JavaScript twin (wasm)",
            Kind::SluiceTs => "Sluice + the TypeScript twin (wasm)",
        }
    }
    fn bullmq(self) -> bool {
        matches!(self, Kind::BullBatched | Kind::BullPerJob | Kind::SluiceBullmq)
    }
    /// Events for this contender: the slow seed variants get fewer, so the run stays short
    /// (a rate needs thousands of events, not a million).
    fn events(self, n: u64) -> u64 {
        match self {
            Kind::BullPerJob => n.min(5_000),
            Kind::BullBatched | Kind::SluiceBullmq => n.min(100_000),
            Kind::SluicePython | Kind::SluiceJs | Kind::SluiceTs => n.min(200_000),
            _ => n,
        }
    }
}

struct Figures {
    kind: Kind,
    events: u64,
    per_sec: f64,
    cpu_per_million: f64,
    peak_rss_mib: f64,
    live_rate: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn now_ms() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64() * 1000.0
}

/// Whether process `pid` has exited (a zombie counts: it is our child, not yet reaped).
fn has_exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('Z')).unwrap_or(true),
        Err(_) => true,
    }
}

fn wait_for(what: &str, timeout: Duration, every: Duration, mut f: impl FnMut() -> Result<bool>) -> Result<Instant> {
    let deadline = Instant::now() + timeout;
    loop {
        if f()? {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(every);
    }
}

fn cache_dir() -> PathBuf {
    repo_root().join("target/bench-cache")
}

fn node_dir() -> PathBuf {
    repo_root().join("bench/seed-baseline/node")
}

fn node_bin() -> PathBuf {
    let own = repo_root().join("target/tools/node/bin/node");
    if own.exists() { own } else { PathBuf::from("node") }
}

fn run_quiet(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Pre-loads events `0..n` the way each design's producers write them.
fn preload(kind: Kind, redis: &Redis, n: u64) -> Result<()> {
    if kind.bullmq() {
        run_quiet(Command::new(node_bin()).arg(node_dir().join("producer.js")).args([
            "--redis-port",
            &redis.port.to_string(),
            "--from",
            "0",
            "--count",
            &n.to_string(),
        ]))?;
    } else {
        run_quiet(
            Command::new(sluice_bin())
                .args(["publish", "PromoCodeAppliedEvent", "--count", &n.to_string()])
                .env("SLUICE_REDIS_URL", redis.url()),
        )?;
    }
    Ok(())
}

fn start(kind: Kind, redis: &Redis, ch: &ClickHouse, work: &Path, log: &Path) -> Result<Child> {
    let out = std::fs::File::create(log)?;
    let mut cmd = match kind {
        Kind::Limit => {
            let mut c = Command::new(sluice_bin().with_file_name("limit-pipeline"));
            c.args([redis.url(), ch.url()]);
            c
        }
        Kind::Sluice
        | Kind::SluiceNoIdempotency
        | Kind::SluiceExactlyOnce
        | Kind::SluiceBullmq
        | Kind::SluicePython
        | Kind::SluiceJs
        | Kind::SluiceTs => {
            let plugins = work.join("plugins");
            std::fs::create_dir_all(&plugins)?;
            // The twins declare the Rust plugin's table: the same rows, the same table.
            let file = match kind {
                Kind::SluicePython => sluice_tests::example_plugin("promo-code-analytics-py"),
                Kind::SluiceJs => sluice_tests::example_plugin("promo-code-analytics-js"),
                Kind::SluiceTs => sluice_tests::example_plugin("promo-code-analytics-ts"),
                _ => sluice_tests::plugins_dir().join("promo-code-analytics.wasm"),
            };
            // Under its own name: a plugin's file is named after the plugin (`plugin::identity`).
            std::fs::copy(&file, plugins.join(file.file_name().context("a plugin file name")?))?;
            // Compile into the cache first: the figures are of a host at work, not of one
            // compiling an 18 MB component (which alone takes seconds and ~400 MiB at peak).
            run_quiet(
                Command::new(sluice_bin()).arg("plugin").arg("inspect").arg(&file).env("SLUICE_CACHE_DIR", cache_dir()),
            )?;
            let mut c = Command::new(sluice_bin());
            c.arg("run")
                .env("SLUICE_REDIS_URL", redis.url())
                .env("SLUICE_CLICKHOUSE_URL", ch.url())
                .env("SLUICE_PLUGINS_DIR", &plugins)
                .env("SLUICE_ADMIN_ADDR", "off")
                .env("SLUICE_CACHE_DIR", cache_dir())
                .env("SLUICE_LOG", "warn");
            if kind == Kind::SluiceBullmq {
                c.env("SLUICE_BULLMQ_QUEUES", "events");
            }
            // Every contender but `sluice-eo` is at-least-once, whatever the server offers (26.9
            // would make its tables exactly-once by default).
            if kind != Kind::SluiceExactlyOnce {
                c.env("SLUICE_EXACTLY_ONCE", "off");
            }
            // Every event carries an `id`: the others drop repeats by it (the default).
            if kind == Kind::SluiceNoIdempotency {
                c.env("SLUICE_IDEMPOTENCY_KEY", "off");
            }
            c
        }
        Kind::Python => {
            let mut c = Command::new(repo_root().join("target/tools/bench-python/bin/python"));
            c.arg(repo_root().join("bench/seed-baseline/python/consumer.py")).args([
                "--redis-port",
                &redis.port.to_string(),
                "--clickhouse-port",
                &ch.tcp_port.to_string(),
            ]);
            c
        }
        Kind::BullBatched | Kind::BullPerJob => {
            let mut c = Command::new(node_bin());
            c.arg(node_dir().join("worker.js")).args([
                "--redis-port",
                &redis.port.to_string(),
                "--clickhouse-url",
                &ch.url(),
                "--batch",
                if kind == Kind::BullBatched { "1000" } else { "1" },
            ]);
            c
        }
    };
    cmd.stdout(Stdio::from(out.try_clone()?)).stderr(Stdio::from(out));
    cmd.spawn().with_context(|| format!("cannot start {}", kind.key()))
}

/// Whether the consumer has read anything yet.
fn first_read(kind: Kind, conn: &mut redis::Connection, n: u64) -> Result<bool> {
    if kind.bullmq() {
        let waiting: u64 = redis::cmd("LLEN").arg("bull:events:wait").query(conn)?;
        return Ok(waiting < n);
    }
    let groups: Vec<std::collections::HashMap<String, redis::Value>> =
        redis::cmd("XINFO").arg("GROUPS").arg(STREAM).query(conn).unwrap_or_default();
    Ok(groups.iter().any(|g| match g.get("last-delivered-id") {
        Some(redis::Value::BulkString(b)) => b.as_slice() != b"0-0",
        Some(redis::Value::SimpleString(s)) => s != "0-0",
        _ => false,
    }))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn run_one(kind: Kind, release: Release, n: u64, live_secs: f64) -> Result<Figures> {
    let redis = Redis::start()?;
    // Exactly-once on 18.16 needs Replicated tables: a private ZooKeeper for that contender
    // (26.9 deduplicates by token on its own).
    let (ch, _zk) = match kind {
        Kind::SluiceExactlyOnce => {
            let d = sluice_tests::DedupClickHouse::start(release)?;
            (d.ch, d.zookeeper)
        }
        _ => (ClickHouse::start(release)?, None),
    };
    let work = tempfile::tempdir()?;
    if !matches!(
        kind,
        Kind::Sluice
            | Kind::SluiceNoIdempotency
            | Kind::SluiceExactlyOnce
            | Kind::SluiceBullmq
            | Kind::SluicePython
            | Kind::SluiceJs
            | Kind::SluiceTs
    ) {
        ch.query("CREATE DATABASE IF NOT EXISTS analytics")?;
        ch.query(DDL)?;
    }
    let mut conn = redis.conn()?;
    eprintln!("  {}: pre-loading {n} events", kind.key());
    preload(kind, &redis, n)?;
    let log = work.path().join("consumer.log");
    let mut child = start(kind, &redis, &ch, work.path(), &log)?;
    let pid = child.id();
    // Every wait below gives up at once if the consumer died, instead of waiting out its timeout.
    let exited = move || -> Result<()> {
        if has_exited(pid) {
            bail!("the consumer exited");
        }
        Ok(())
    };
    let result = (|| -> Result<Figures> {
        let count = |ch: &ClickHouse| ch.number("SELECT count() FROM analytics.promo_code_usages_analytics");
        let t_first = wait_for("the first read", Duration::from_secs(120), Duration::from_millis(2), || {
            exited()?;
            first_read(kind, &mut conn, n)
        })?;
        let slowest = Duration::from_secs((120 + n / 100).min(1800));
        let t_done = wait_for("every row", slowest, Duration::from_millis(20), || {
            exited()?;
            Ok(count(&ch) >= n as i64)
        })?;
        let per_sec = n as f64 / (t_done - t_first).as_secs_f64();
        let (cpu, _) = process_usage(pid)?;
        eprintln!("  {}: {n} events in {:.2} s", kind.key(), (t_done - t_first).as_secs_f64());

        // Live: half the measured rate, for `live_secs`.
        let rate = (per_sec / 2.0).max(10.0);
        let m = ((rate * live_secs) as u64).max(20);
        let start_ms = if kind.bullmq() {
            let mut producer = Command::new(node_bin())
                .arg(node_dir().join("producer.js"))
                .args(["--redis-port", &redis.port.to_string(), "--from", &n.to_string(), "--count", &m.to_string()])
                .args(["--rate", &format!("{rate:.3}")])
                .stdout(Stdio::piped())
                .spawn()?;
            let mut line = String::new();
            BufReader::new(producer.stdout.take().unwrap()).read_line(&mut line)?;
            std::thread::spawn(move || producer.wait());
            line.trim().strip_prefix("start ").context("producer's start line")?.parse::<f64>()?
        } else {
            let url = redis.url();
            let start_ms = now_ms();
            std::thread::spawn(move || publish_at_rate(&url, n, m, rate, start_ms));
            start_ms
        };
        let mut visible: Vec<f64> = Vec::with_capacity(m as usize);
        wait_for(
            "every live row",
            Duration::from_secs_f64(live_secs * 3.0 + 120.0),
            Duration::from_millis(10),
            || {
                exited()?;
                let c = count(&ch);
                let t = now_ms();
                while c > (n as i64) + visible.len() as i64 && (visible.len() as u64) < m {
                    visible.push(t);
                }
                Ok(visible.len() as u64 >= m)
            },
        )?;
        let mut lat: Vec<f64> =
            visible.iter().enumerate().map(|(k, &t)| (t - (start_ms + k as f64 * 1000.0 / rate)).max(0.0)).collect();
        lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let (_, rss) = process_usage(pid)?;
        Ok(Figures {
            kind,
            events: n,
            per_sec,
            cpu_per_million: cpu / n as f64 * 1e6,
            peak_rss_mib: rss,
            live_rate: rate,
            p50_ms: percentile(&lat, 0.5),
            p99_ms: percentile(&lat, 0.99),
        })
    })();
    stop_child(&mut child);
    result.with_context(|| format!("{}: log:\n{}", kind.key(), std::fs::read_to_string(&log).unwrap_or_default()))
}

/// XADDs events `from..from + m` at `rate` per second on a fixed schedule from `start_ms`.
fn publish_at_rate(url: &str, from: u64, m: u64, rate: f64, start_ms: f64) -> Result<()> {
    let mut conn = redis::Client::open(url)?.get_connection()?;
    let mut sent = 0u64;
    while sent < m {
        let due = (((now_ms() - start_ms) * rate / 1000.0) as u64 + 1).min(m);
        if due > sent {
            let mut pipe = redis::pipe();
            for k in sent..due {
                let i = from + k;
                let payload = sluice::sample::payload("PromoCodeAppliedEvent", i)?.to_string();
                pipe.cmd("XADD").arg(STREAM).arg("*").arg("payload").arg(payload).arg("id").arg(format!("live-{i}"));
                pipe.ignore();
            }
            pipe.query::<()>(&mut conn)?;
            sent = due;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let (mut quick, mut events, mut only): (bool, Option<u64>, Option<Vec<String>>) = (false, None, None);
    let mut releases = Release::ALL.to_vec();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--clickhouse" => {
                releases = args
                    .next()
                    .context("--clickhouse 18,26")?
                    .split(',')
                    .map(|r| match r.trim() {
                        "18" | "18.16" => Ok(Release::V18),
                        "26" | "26.9" => Ok(Release::V26),
                        other => bail!("--clickhouse: unknown release `{other}` (18 or 26)"),
                    })
                    .collect::<Result<_>>()?
            }
            "--events" => events = Some(args.next().context("--events N")?.parse()?),
            "--only" => only = Some(args.next().context("--only a,b")?.split(',').map(String::from).collect()),
            "-h" | "--help" => {
                println!(
                    "usage: sluice-bench [--quick] [--events N] [--clickhouse 18,26] [--only limit,sluice,sluice-no-idem,sluice-eo,sluice-bullmq,python,bullmq-batched,bullmq-per-job,sluice-py,sluice-js,sluice-ts]"
                );
                return Ok(());
            }
            other => bail!("unknown argument `{other}` (try --help)"),
        }
    }
    let n = events.unwrap_or(if quick { 100_000 } else { 1_000_000 });
    let live_secs = if quick { 5.0 } else { 10.0 };
    let kinds: Vec<Kind> = [
        Kind::Limit,
        Kind::Sluice,
        Kind::SluiceNoIdempotency,
        Kind::SluiceExactlyOnce,
        Kind::SluiceBullmq,
        Kind::Python,
        Kind::BullBatched,
        Kind::BullPerJob,
        Kind::SluicePython,
        Kind::SluiceJs,
        Kind::SluiceTs,
    ]
    .into_iter()
    .filter(|k| only.as_ref().is_none_or(|o| o.iter().any(|x| x == k.key())))
    .collect();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!(
        "sluice bench: {n} PromoCodeAppliedEvent events per contender (fewer for the BullMQ seeds and the Python/JS plugins), {cores} cores"
    );
    let mut failed = false;
    for release in releases {
        eprintln!("== {release}");
        let mut all = Vec::new();
        for kind in &kinds {
            eprintln!("{}", kind.label());
            match run_one(*kind, release, kind.events(n), live_secs) {
                Ok(f) => all.push(f),
                Err(e) => {
                    failed = true;
                    eprintln!("{}: FAILED: {e:#}", kind.key())
                }
            }
        }
        print_table(release, &all);
    }
    if failed {
        bail!("some contenders failed (see above)");
    }
    Ok(())
}

/// One release's figures, and Sluice against the others.
fn print_table(release: Release, all: &[Figures]) {
    println!();
    println!("{release}");
    println!(
        "{:<38} {:>9} {:>10} {:>8} {:>11} {:>9} {:>9} {:>8} {:>8}",
        "contender", "events", "events/s", "% limit", "CPU s/1M", "peak RSS", "live ev/s", "p50 ms", "p99 ms"
    );
    let limit = all.iter().find(|f| f.kind == Kind::Limit).map(|f| f.per_sec);
    for f in all {
        let pct = limit.map(|l| format!("{:.0}%", f.per_sec / l * 100.0)).unwrap_or_else(|| "-".into());
        println!(
            "{:<38} {:>9} {:>10.0} {:>8} {:>11.1} {:>6.0} MiB {:>9.0} {:>8.0} {:>8.0}",
            f.kind.label(),
            f.events,
            f.per_sec,
            pct,
            f.cpu_per_million,
            f.peak_rss_mib,
            f.live_rate,
            f.p50_ms,
            f.p99_ms
        );
    }
    if let Some(s) = all.iter().find(|f| f.kind == Kind::Sluice) {
        println!();
        let ours = |k: Kind| {
            matches!(
                k,
                Kind::Sluice
                    | Kind::SluiceNoIdempotency
                    | Kind::SluiceExactlyOnce
                    | Kind::SluicePython
                    | Kind::SluiceJs
                    | Kind::SluiceTs
            )
        };
        for f in all.iter().filter(|f| !ours(f.kind)) {
            println!("Sluice / {:<38} {:>8.2}x", f.kind.label(), s.per_sec / f.per_sec);
        }
        if let Some(eo) = all.iter().find(|f| f.kind == Kind::SluiceExactlyOnce) {
            println!("exactly-once costs {:.0}% of the throughput", (1.0 - eo.per_sec / s.per_sec) * 100.0);
        }
        if let Some(off) = all.iter().find(|f| f.kind == Kind::SluiceNoIdempotency) {
            println!(
                "idempotency by event id costs {:.0}% of the throughput, {:.2} µs of CPU per event",
                (1.0 - s.per_sec / off.per_sec) * 100.0,
                s.cpu_per_million - off.cpu_per_million
            );
        }
    }
}
