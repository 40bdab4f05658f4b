//! `sluice run`: connect, deploy the plugins directory (see `deploy`: one pipeline per plugin
//! and event type, hot reload), serve the admin API, and stop gracefully on SIGTERM/SIGINT.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::sync::watch;

use crate::admin::AdminState;
use crate::config::Settings;
use crate::deploy::Deployer;
use crate::plugin::{PluginDefaults, PluginLimits, SandboxEngine};

use crate::source::streams::redact_url;
use crate::writer::clickhouse::ChClient;
use crate::writer::dedup::ServerDedup;
use crate::writer::{BatchPolicy, LedgerConn, Writer};

/// A consumer name unique to this process: `<host>-<pid>-<random>`, so that a restarted
/// host never mistakes a dead instance's pending entries for its own.
pub fn consumer_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "host".into());
    let host = if host.is_empty() { "host".to_string() } else { host };
    format!("{host}-{}-{}", std::process::id(), &uuid::Uuid::new_v4().simple().to_string()[..8])
}

/// The `*.wasm` files of a directory, sorted. Files whose name starts with `.` (editors'
/// and copy tools' temporaries) are skipped.
pub fn plugin_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let entries = std::fs::read_dir(dir).with_context(|| format!("cannot read plugins directory {}", dir.display()))?;
    for entry in entries {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if path.extension().and_then(|e| e.to_str()) == Some("wasm") && !name.starts_with('.') && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Retries `f` until it succeeds, logging why it did not; returns the error of a fatal
/// failure (bad configuration) at once.
pub(crate) async fn wait_for<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut delay = Duration::from_millis(200);
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) => {
                tracing::warn!("{what} is not available yet ({e:#}); retrying in {delay:?}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Runs the host until a signal.
pub async fn run(settings: Settings, grace: Duration) -> Result<()> {
    settings.validate()?;
    let settings = Arc::new(settings);
    let consumer = consumer_name();
    tracing::info!(consumer = %consumer, redis = %settings.redis.display(), clickhouse = ?settings.clickhouse.urls.iter().map(|u| redact_url(u)).collect::<Vec<_>>(), database = %settings.clickhouse.database, plugins_dir = %settings.plugins_dir.display(), "starting sluice");

    let metrics = crate::admin::install_metrics()?;
    let admin_listener = match settings.admin_addr.as_str() {
        "off" | "" => None,
        addr => Some(crate::admin::bind(addr).await?),
    };
    let mut engine = SandboxEngine::new()?;
    match &settings.cache_dir {
        None => {}
        Some((dir, explicit)) => match engine.clone().with_cache(dir) {
            Ok(e) => engine = e,
            Err(e) if *explicit => return Err(e.context("SLUICE_CACHE_DIR (`off` disables the cache)")),
            Err(e) => {
                tracing::warn!(error = format!("{e:#}"), "no compiled-code cache: every start compiles the plugins")
            }
        },
    }
    let defaults = PluginDefaults {
        limits: PluginLimits {
            call_timeout: settings.call_timeout,
            max_memory_bytes: settings.max_memory_mb << 20,
            ..PluginLimits::default()
        },
        sections: settings.plugin_sections.clone(),
    };
    let ch = ChClient::new(&settings.clickhouse)?;
    let version = wait_for("ClickHouse", || async { Ok(ch.ping().await?) }).await;
    tracing::info!(version = %version, "connected to ClickHouse");
    ch.create_database()
        .await
        .with_context(|| format!("cannot create database {}{}", settings.clickhouse.database, ch.on_cluster()))?;

    let redis = settings.redis.clone();
    let block = settings.block;
    let control = wait_for("Redis", || crate::redis_conn::connect(&redis, block)).await;
    tracing::info!(cluster = control.is_cluster(), "connected to Redis");
    if control.is_cluster() && !settings.bullmq.is_empty() {
        bail!(
            "the BullMQ source does not run on a Redis Cluster yet (SLUICE_BULLMQ_QUEUES is set and SLUICE_REDIS_URL is a cluster)"
        );
    }

    let server = wait_for("ClickHouse", || async { Ok(ServerDedup::detect(&ch, !settings.exactly_once).await?) }).await;
    // A connection of its own for batch records: a block of megabytes must not hold up the
    // acknowledgements and heartbeats on the shared one.
    let ledger = match settings.exactly_once {
        true => Some(LedgerConn {
            conn: wait_for("Redis", || crate::redis_conn::connect(&redis, block)).await,
            owner: Arc::from(consumer.as_str()),
        }),
        false => None,
    };
    if let Some(l) = &ledger {
        // An evicted batch record would read as committed. (CONFIG may be disabled: then say nothing.)
        let policy: redis::RedisResult<Vec<String>> =
            redis::cmd("CONFIG").arg("GET").arg("maxmemory-policy").query_async(&mut l.conn.clone()).await;
        if let Some(p) = policy.ok().and_then(|v| v.get(1).cloned()).filter(|p| p.starts_with("allkeys")) {
            tracing::warn!(maxmemory_policy = %p, "Redis may evict any key under memory pressure, including exactly-once batch records (sluice:batch:*), whose rows would then be lost after a crash: use noeviction or a volatile-* policy");
        }
    }
    if (ch.cluster().is_some() || ch.endpoint_count() > 1) && server.zookeeper && !server.replica_macro {
        bail!(
            "several ClickHouse servers (SLUICE_CLICKHOUSE_CLUSTER or several SLUICE_CLICKHOUSE_URL endpoints) but the server defines no {{replica}} macro: their Replicated tables need a replica name each — <macros><replica>…</replica></macros> (and <shard> with several shards) on every server"
        );
    }
    if ch.endpoint_count() > 1 && !server.zookeeper && !server.disabled {
        tracing::warn!(
            "several ClickHouse endpoints but no ZooKeeper: tables are not Replicated, so a batch retried on another endpoint is not recognised there — exactly-once holds per server only (configure <zookeeper> for Replicated tables)"
        );
    }
    tracing::info!("{}", server.describe());
    let writer = Writer::new(
        ch,
        BatchPolicy { max_rows: settings.insert_max_rows, linger: settings.insert_linger, ..BatchPolicy::default() },
        ledger,
    );
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let gate = crate::priority::PriorityGate::new(cores, settings.concurrency);
    let mut deployer = Deployer::new(
        settings.clone(),
        consumer,
        gate,
        writer.clone(),
        Arc::new(server),
        control.clone(),
        grace,
        engine,
        defaults,
    );
    // The admin API answers while the plugins load: a slow or stuck one cannot hold it up.
    let admin = admin_listener.map(|listener| {
        let state = Arc::new(AdminState {
            started: std::time::Instant::now(),
            redis: control.clone(),
            clickhouse: writer.client().clone(),
            stream_prefix: settings.stream_prefix.clone(),
            token: settings.admin_token.as_ref().map(|t| t.0.clone()),
            registry: deployer.registry.clone(),
            metrics,
        });
        tokio::spawn(async move {
            if let Err(e) = crate::admin::serve(listener, state).await {
                tracing::error!("admin API stopped: {e:#}");
            }
        })
    });
    deployer.deploy_all().await?;
    if deployer.pipeline_count() == 0 {
        tracing::warn!(dir = %settings.plugins_dir.display(), "no plugin running: nothing to consume until a plugin file is added");
    }
    // BullMQ queues: started once the plugins run, so that the first jobs find their routes.
    let mut consumers = Vec::new();
    let bull_url = settings.redis.url_with_password();
    for queue in &settings.bullmq {
        let (routes, ledger) = (deployer.routes.clone(), control.clone());
        let consumer = wait_for("Redis (BullMQ)", || {
            crate::source::bullmq::QueueConsumer::start(queue.clone(), &bull_url, routes.clone(), ledger.clone())
        })
        .await;
        consumers.push(consumer);
    }
    // Delayed events are delivered by every host; the move is atomic, so each goes out once.
    let mover = tokio::spawn(crate::source::delayed::run_mover(control.clone()));
    tracing::info!(pipelines = deployer.pipeline_count(), "sluice is running");

    // Hot reload until a signal; then stop every plugin, letting in-flight work finish.
    let (stop_watch, stop_rx) = watch::channel(false);
    let watching = async {
        deployer.watch(stop_rx).await;
        deployer
    };
    let ((), mut deployer) = tokio::join!(
        async {
            wait_for_signal().await;
            let _ = stop_watch.send(true);
        },
        watching
    );
    tracing::info!(grace = ?grace, "stopping: no new reads, finishing in-flight events (a second signal exits at once)");
    // BullMQ: fetch no more jobs; the pipelines finish the batches they hold (their jobs
    // complete); then jobs whose rows never reached a writer go back to the queue, unharmed,
    // and those whose rows did but are not committed are left to stall (recovered by another
    // host once their lock expires: this one may still have inserted them).
    let stopping = async {
        for c in &consumers {
            c.pause();
        }
        deployer.stop_all().await;
        futures::future::join_all(consumers.into_iter().map(|c| c.stop(Duration::from_secs(3)))).await;
    };
    tokio::select! {
        _ = stopping => {}
        _ = wait_for_signal() => {
            tracing::warn!("second signal: exiting now; unfinished events stay pending and will be recovered");
            std::process::exit(130);
        }
    }
    mover.abort();
    if let Some(a) = admin {
        a.abort();
    }
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
