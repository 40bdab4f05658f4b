//! `sluice run`: connect, deploy the plugins directory (see `deploy`: one pipeline per plugin,
//! event type and source, hot reload), serve the admin API, and stop gracefully on
//! SIGTERM/SIGINT. [`run`] reads as its steps; each step is a function below.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin::AdminState;
use crate::backoff::NeverSucceeds;
use crate::config::Settings;
use crate::deploy::{DeploySettings, Deployer, Wiring};
use crate::pipeline::gate::PriorityGate;
use crate::plugin::{PluginDefaults, PluginLimits, SandboxEngine};
use crate::redis_conn::RedisConn;
use crate::secret::redact_url;
use crate::source::bullmq::QueueConsumer;
use crate::status::SharedRegistry;
use crate::writer::clickhouse::ChClient;
use crate::writer::dedup::ServerDedup;
use crate::writer::{LedgerConn, Writer};

/// How long the BullMQ workers get to close at a stop.
const BULLMQ_CLOSE: Duration = Duration::from_secs(3);

/// Runs the host until a signal.
pub async fn run(settings: Settings) -> Result<()> {
    let started = std::time::Instant::now();
    let settings = Arc::new(settings);
    let consumer: Arc<str> = Arc::from(consumer_name().as_str());
    crate::trace::set_host(&consumer, &settings.bullmq);
    tracing::info!(consumer = %consumer, redis = %settings.redis.display(), clickhouse = ?settings.clickhouse.urls.iter().map(|u| redact_url(u)).collect::<Vec<_>>(), database = %settings.clickhouse.database, plugins_dir = %settings.plugins_dir.display(), "starting sluice");
    let metrics = crate::admin::install_metrics()?;
    let admin_listener = bind_admin(&settings).await?;
    let ch = ChClient::new(&settings.clickhouse)?;
    // The admin API answers from the first second — while the host waits for Redis and
    // ClickHouse and loads the plugins, /ready says what it waits for — so an orchestrator's
    // liveness probe does not restart it exactly while its dependencies come up.
    let registry: SharedRegistry = Default::default();
    registry.write().unwrap().starting = true;
    let redis_slot = Arc::new(std::sync::OnceLock::new());
    let admin = admin_listener.map(|listener| {
        serve_admin(
            listener,
            AdminState {
                started,
                redis: redis_slot.clone(),
                clickhouse: ch.clone(),
                stream_prefix: settings.stream_prefix.clone(),
                token: settings.admin_token.as_ref().map(|t| t.0.clone()),
                registry: registry.clone(),
                metrics,
                bullmq: settings.bullmq.iter().map(|q| q.key()).collect(),
                history: Default::default(),
            },
        )
    });
    let engine = sandbox_engine(&settings)?;
    let server = connect_clickhouse(&settings, &ch).await?;
    let control = connect_redis(&settings).await?;
    let _ = redis_slot.set(control.clone());
    let writer = start_writer(&settings, ch, &server, &consumer).await?;
    let mut deployer = Deployer::new(Wiring {
        settings: DeploySettings {
            plugins_dir: settings.plugins_dir.clone(),
            stream_prefix: settings.stream_prefix.clone(),
            redis: settings.redis.clone(),
            bullmq_queues: settings.bullmq.iter().map(|q| q.key()).collect(),
            delivery: settings.delivery.clone(),
            priorities: settings.priorities.clone(),
            table_shares: settings.table_shares.clone(),
        },
        consumer: consumer.clone(),
        gate: PriorityGate::new(cores(), settings.concurrency),
        writer,
        server: Arc::new(server),
        control: control.clone(),
        engine,
        defaults: plugin_defaults(&settings),
        registry,
    });
    deployer.deploy_all().await?;
    if deployer.pipeline_count() == 0 {
        tracing::warn!(dir = %settings.plugins_dir.display(), "no plugin running: nothing to consume until a plugin file is added{}", source_folder_hint(&settings.plugins_dir));
    }
    // BullMQ queues start once the plugins run, so that the first jobs find their routes.
    let consumers = start_bullmq(&settings, &deployer, &control).await?;
    // Delayed events are delivered by every host; the move is atomic, so each goes out once.
    let mover = tokio::spawn(crate::source::delayed::run_mover(control.clone()));
    let upkeep = tokio::spawn(
        crate::upkeep::Upkeep {
            conn: control.clone(),
            stream_prefix: settings.stream_prefix.clone(),
            retention: settings.retention.clone(),
            bullmq: settings.bullmq.iter().map(|q| q.key()).collect(),
            registry: deployer.registry.clone(),
        }
        .run(settings.housekeeping_interval),
    );
    // This host's liveness key, by which consumers are counted live (`admin::live`).
    let beat = tokio::spawn(crate::admin::live::run(control.clone(), consumer.clone(), deployer.registry.clone()));
    deployer.registry.write().unwrap().starting = false;
    tracing::info!(pipelines = deployer.pipeline_count(), "sluice is running");

    let deployer = reload_until_signal(deployer).await;
    stop(deployer, consumers).await;
    beat.abort();
    crate::admin::live::forget(&mut control.clone(), &consumer).await;
    mover.abort();
    upkeep.abort();
    if let Some(a) = admin {
        a.abort();
    }
    tracing::info!("stopped");
    Ok(())
}

/// Run from the repository's root, the default `./plugins` is the plugins' *source* folder:
/// say where the built ones are.
fn source_folder_hint(dir: &std::path::Path) -> String {
    let has_wasm = |d: &std::path::Path| crate::deploy::plugin_files(d).is_ok_and(|f| !f.is_empty());
    let built = std::path::Path::new("target/plugins");
    if dir.join("Cargo.toml").is_file() && !has_wasm(dir) && has_wasm(built) {
        format!(
            " ({} holds plugin sources (Cargo.toml), not built plugins; the built ones are in target/plugins: --plugins-dir target/plugins or SLUICE_PLUGINS_DIR=target/plugins)",
            dir.display()
        )
    } else {
        String::new()
    }
}

/// A consumer name unique to this process: `<host>-<pid>-<random>`, so that a restarted
/// host never mistakes a dead instance's pending entries for its own.
fn consumer_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
    let host = if host.is_empty() { "host".to_string() } else { host };
    format!("{host}-{}-{}", std::process::id(), &uuid::Uuid::new_v4().simple().to_string()[..8])
}

fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)
}

/// The admin address, bound before anything else so that a taken port fails the start at once.
async fn bind_admin(settings: &Settings) -> Result<Option<TcpListener>> {
    match settings.admin_addr.as_str() {
        "off" | "" => Ok(None),
        addr => Ok(Some(crate::admin::bind(addr).await?)),
    }
}

fn serve_admin(listener: TcpListener, state: AdminState) -> JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(e) = crate::admin::serve(listener, Arc::new(state)).await {
            tracing::error!("admin API stopped: {e:#}");
        }
    })
}

/// The wasmtime engine, with the compiled-code cache if one can be used.
fn sandbox_engine(settings: &Settings) -> Result<SandboxEngine> {
    let engine = SandboxEngine::new()?;
    match &settings.cache_dir {
        None => Ok(engine),
        Some((dir, explicit)) => match engine.clone().with_cache(dir) {
            Ok(e) => Ok(e),
            Err(e) if *explicit => Err(e.context("SLUICE_CACHE_DIR (`off` disables the cache)")),
            Err(e) => {
                tracing::warn!(error = format!("{e:#}"), "no compiled-code cache: every start compiles the plugins");
                Ok(engine)
            }
        },
    }
}

fn plugin_defaults(settings: &Settings) -> PluginDefaults {
    PluginDefaults {
        limits: PluginLimits {
            call_timeout: settings.call_timeout,
            max_memory_bytes: settings.max_memory_mb << 20,
            ..PluginLimits::default()
        },
        sections: settings.plugin_sections.clone(),
    }
}

/// ClickHouse, waited for: its database created, what it offers for deduplication detected,
/// and a configuration that cannot work refused.
async fn connect_clickhouse(settings: &Settings, ch: &ChClient) -> Result<ServerDedup> {
    // Messages say where the address came from: what to change.
    let what = format!("ClickHouse at {} ({})", ch.display(), settings.origins.clickhouse_url);
    let version = crate::backoff::until_ok(&what, || async {
        ch.ping().await.map_err(|e| match e.never_succeeds(&ch.display()) {
            Some(why) => anyhow::Error::new(NeverSucceeds(why)),
            None => anyhow::Error::new(e),
        })
    })
    .await?;
    tracing::info!(version = %version, "connected to ClickHouse");
    ch.create_database()
        .await
        .with_context(|| format!("cannot create database {}{}", settings.clickhouse.database, ch.on_cluster()))?;
    let server =
        crate::backoff::until_ok(&what, || async { Ok(ServerDedup::detect(ch, !settings.exactly_once).await?) })
            .await?;
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
    Ok(server)
}

/// Redis, waited for: the host's shared connection.
async fn connect_redis(settings: &Settings) -> Result<RedisConn> {
    let (redis, block) = (&settings.redis, settings.delivery.block);
    let what = format!("Redis at {} ({})", redis.display(), settings.origins.redis_url);
    let control = crate::backoff::until_ok(&what, || crate::redis_conn::connect(redis, block)).await?;
    tracing::info!(cluster = control.is_cluster(), "connected to Redis");
    if control.is_cluster() && !settings.bullmq.is_empty() {
        bail!(
            "the BullMQ source does not run on a Redis Cluster yet (SLUICE_BULLMQ_QUEUES is set and SLUICE_REDIS_URL is a cluster)"
        );
    }
    Ok(control)
}

/// The writer, with the exactly-once ledger's connection when exactly-once is on.
async fn start_writer(settings: &Settings, ch: ChClient, server: &ServerDedup, owner: &Arc<str>) -> Result<Writer> {
    // A connection of its own for batch records: a block of megabytes must not hold up the
    // acknowledgements and heartbeats on the shared one.
    let ledger = match settings.exactly_once && !server.disabled {
        true => {
            let (redis, block) = (&settings.redis, settings.delivery.block);
            let what = format!("Redis at {} ({})", redis.display(), settings.origins.redis_url);
            let conn = crate::backoff::until_ok(&what, || crate::redis_conn::connect(redis, block)).await?;
            warn_if_evicting(&conn).await;
            Some(LedgerConn { conn, owner: owner.clone() })
        }
        false => None,
    };
    Ok(Writer::new(ch, settings.insert, ledger))
}

/// An evicted batch record would read as committed. (CONFIG may be disabled: then say nothing.)
async fn warn_if_evicting(conn: &RedisConn) {
    let policy: redis::RedisResult<Vec<String>> =
        redis::cmd("CONFIG").arg("GET").arg("maxmemory-policy").query_async(&mut conn.clone()).await;
    if let Some(p) = policy.ok().and_then(|v| v.get(1).cloned()).filter(|p| p.starts_with("allkeys")) {
        tracing::warn!(maxmemory_policy = %p, "Redis may evict any key under memory pressure, including exactly-once batch records (sluice:batch:*), whose rows would then be lost after a crash: use noeviction or a volatile-* policy");
    }
}

/// One consumer per configured BullMQ queue, routing jobs to the deployer's pipelines.
async fn start_bullmq(settings: &Settings, deployer: &Deployer, control: &RedisConn) -> Result<Vec<QueueConsumer>> {
    let mut consumers = Vec::new();
    for queue in &settings.bullmq {
        crate::source::bullmq::refuse_repeatable(&mut control.clone(), queue).await?;
    }
    for queue in &settings.bullmq {
        let (routes, ledger) = (deployer.routes.clone(), control.clone());
        let consumer = crate::backoff::until_ok("Redis (BullMQ)", || {
            QueueConsumer::start(queue.clone(), &settings.redis, routes.clone(), ledger.clone())
        })
        .await?;
        consumers.push(consumer);
    }
    Ok(consumers)
}

/// Hot reload until SIGTERM or SIGINT.
async fn reload_until_signal(mut deployer: Deployer) -> Deployer {
    let (stop_watch, stop_rx) = watch::channel(false);
    let watching = async {
        deployer.watch(stop_rx).await;
        deployer
    };
    let ((), deployer) = tokio::join!(
        async {
            wait_for_signal().await;
            let _ = stop_watch.send(true);
        },
        watching
    );
    deployer
}

/// Stops every plugin, letting in-flight work finish; a second signal exits at once.
///
/// BullMQ: fetch no more jobs; the pipelines finish the batches they hold (their jobs
/// complete); then jobs whose rows never reached a writer go back to the queue, unharmed, and
/// those whose rows did but are not committed are left to stall (recovered by another host
/// once their lock expires: this one may still have inserted them).
async fn stop(mut deployer: Deployer, consumers: Vec<QueueConsumer>) {
    tracing::info!("stopping: no new reads, finishing in-flight events (a second signal exits at once)");
    let stopping = async {
        for c in &consumers {
            c.pause();
        }
        deployer.stop_all().await;
        futures::future::join_all(consumers.into_iter().map(|c| c.stop(BULLMQ_CLOSE))).await;
    };
    tokio::select! {
        _ = stopping => {}
        _ = wait_for_signal() => {
            tracing::warn!("second signal: exiting now; unfinished events stay pending and will be recovered");
            std::process::exit(130);
        }
    }
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
