//! `sluice run`: connect, load plugins, create their tables, start one pipeline per
//! (plugin, event type), and stop gracefully on SIGTERM/SIGINT.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::sync::watch;

use crate::admin::{AdminState, PipelineEntry, PluginEntry};
use crate::config::Settings;
use crate::plugin::{LoadedPlugin, PluginLimits, SandboxEngine};
use crate::router::Pipeline;
use crate::source::streams::{self, redact_url};
use crate::writer::clickhouse::ChClient;
use crate::writer::evolve::{self, Owner, PrepareError};
use crate::writer::{BatchPolicy, Writer};

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

/// Loads every plugin of the directory. A bad file is reported by path and skipped: it is
/// returned as a `failed` entry, for the admin API.
pub fn load_plugins(
    engine: &SandboxEngine,
    dir: &Path,
    limits: PluginLimits,
) -> Result<(Vec<Arc<LoadedPlugin>>, Vec<PluginEntry>)> {
    let mut plugins: Vec<Arc<LoadedPlugin>> = Vec::new();
    let mut failed = Vec::new();
    for path in plugin_files(dir)? {
        let error = match LoadedPlugin::load(engine, &path, limits) {
            Ok(p) => match plugins.iter().find(|o| o.name() == p.name()) {
                Some(other) => format!("its name `{}` is already used by {}", p.name(), other.path.display()),
                None => {
                    tracing::info!(plugin = p.name(), version = %p.manifest.version, hash = p.short_hash(), path = %path.display(), subscriptions = ?p.manifest.subscriptions, "plugin loaded");
                    plugins.push(Arc::new(p));
                    continue;
                }
            },
            Err(e) => format!("{e:#}"),
        };
        tracing::error!(path = %path.display(), "skipping plugin: {error}");
        metrics::counter!("sluice_plugin_loads_total", "result" => "failed").increment(1);
        failed.push(PluginEntry {
            file: path.display().to_string(),
            status: "failed",
            error: Some(error),
            plugin: None,
        });
    }
    Ok((plugins, failed))
}

/// Retries `f` until it succeeds, logging why it did not; returns the error of a fatal
/// failure (bad configuration) at once.
async fn wait_for<T, F, Fut>(what: &str, mut f: F) -> T
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
    tracing::info!(consumer = %consumer, redis = %redact_url(&settings.redis_url), clickhouse = %settings.clickhouse_url, database = %settings.clickhouse_database, plugins_dir = %settings.plugins_dir.display(), "starting sluice");

    let metrics = crate::admin::install_metrics()?;
    let admin_listener = match settings.admin_addr.as_str() {
        "off" | "" => None,
        addr => Some(crate::admin::bind(addr).await?),
    };
    let engine = SandboxEngine::new()?;
    let limits = PluginLimits {
        call_timeout: settings.call_timeout,
        max_memory_bytes: settings.max_memory_mb << 20,
        ..PluginLimits::default()
    };
    let (plugins, mut plugin_entries) = load_plugins(&engine, &settings.plugins_dir, limits)?;
    if plugins.is_empty() {
        tracing::warn!(dir = %settings.plugins_dir.display(), "no plugin loaded: nothing to consume");
    }

    let ch = ChClient::new(
        &settings.clickhouse_url,
        &settings.clickhouse_database,
        settings.clickhouse_user.as_deref(),
        settings.clickhouse_password.as_deref(),
    )?;
    let version = wait_for("ClickHouse", || async { Ok(ch.ping().await?) }).await;
    tracing::info!(version = %version, "connected to ClickHouse");
    ch.create_database().await.with_context(|| format!("cannot create database {}", settings.clickhouse_database))?;

    let redis_url = settings.redis_url.clone();
    let block = settings.block;
    let control = wait_for("Redis", || streams::connect(&redis_url, block)).await;
    tracing::info!("connected to Redis");

    let writer = Writer::new(
        ch,
        BatchPolicy { max_rows: settings.insert_max_rows, linger: settings.insert_linger, ..BatchPolicy::default() },
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let gate = crate::priority::PriorityGate::new(cores, settings.concurrency);
    let mut tasks = tokio::task::JoinSet::new();
    let mut pipelines = Vec::new();
    for plugin in &plugins {
        let owner = Owner { plugin: plugin.name(), version: &plugin.manifest.version, hash: &plugin.hash };
        let prepared = wait_for("ClickHouse", || async {
            match evolve::prepare_plugin(writer.client(), &plugin.tables, owner).await {
                Err(PrepareError::ClickHouse(e)) if e.retryable() => Err(anyhow::Error::from(e)),
                other => Ok(other),
            }
        })
        .await;
        if let Err(e) = prepared {
            let why = match e {
                PrepareError::Refused(why) => format!("its tables are incompatible with the live ones: {why}"),
                PrepareError::ClickHouse(e) => format!("cannot prepare its tables: {e}"),
            };
            tracing::error!(plugin = plugin.name(), version = %plugin.manifest.version, hash = plugin.short_hash(), path = %plugin.path.display(), "plugin not started: {why}");
            crate::admin::recent_error(plugin.name(), "", "plugin_refused", &why);
            metrics::counter!("sluice_plugin_loads_total", "result" => "refused").increment(1);
            plugin_entries.push(PluginEntry {
                file: plugin.path.display().to_string(),
                status: "refused",
                error: Some(why),
                plugin: Some(plugin.clone()),
            });
            continue;
        }
        metrics::counter!("sluice_plugin_loads_total", "result" => "ok").increment(1);
        plugin_entries.push(PluginEntry {
            file: plugin.path.display().to_string(),
            status: "running",
            error: None,
            plugin: Some(plugin.clone()),
        });
        let tables: Vec<_> = plugin.tables.iter().map(|t| writer.table(t)).collect();
        for event_type in &plugin.manifest.subscriptions {
            let read_conn = streams::connect(&settings.redis_url, settings.block).await?;
            let p = Pipeline::new(
                gate.clone(),
                plugin.clone(),
                settings.clone(),
                read_conn,
                control.clone(),
                event_type,
                &consumer,
                tables.clone(),
            );
            pipelines.push(PipelineEntry {
                plugin: plugin.name().to_string(),
                event_type: event_type.clone(),
                stream: p.reader.stream().to_string(),
                group: p.reader.group.clone(),
            });
            let rx = stop_rx.clone();
            tasks.spawn(async move {
                let stream = p.reader.stream().clone();
                if let Err(e) = p.run(rx, grace).await {
                    tracing::error!(stream = %stream, "pipeline stopped: {e:#}");
                }
            });
        }
    }
    // Delayed events are delivered by every host; the move is atomic, so each goes out once.
    let mover = tokio::spawn(crate::source::delayed::run_mover(control.clone()));
    let admin = admin_listener.map(|listener| {
        plugin_entries.sort_by(|a, b| a.file.cmp(&b.file));
        let state = Arc::new(AdminState {
            started: std::time::Instant::now(),
            redis: control.clone(),
            clickhouse: writer.client().clone(),
            stream_prefix: settings.stream_prefix.clone(),
            token: settings.admin_token.as_ref().map(|t| t.0.clone()),
            plugins: plugin_entries,
            pipelines,
            metrics,
        });
        tokio::spawn(async move {
            if let Err(e) = crate::admin::serve(listener, state).await {
                tracing::error!("admin API stopped: {e:#}");
            }
        })
    });
    tracing::info!(pipelines = tasks.len(), "sluice is running");

    wait_for_signal().await;
    tracing::info!(grace = ?grace, "stopping: no new reads, finishing in-flight events (a second signal exits at once)");
    let _ = stop_tx.send(true);
    tokio::select! {
        _ = async { while tasks.join_next().await.is_some() {} } => {}
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
