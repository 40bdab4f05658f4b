//! The `sluice` command line: `run`, `publish`, `plugin inspect`, `plugin run`.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};

use crate::config::{FileSettings, Settings};
use crate::plugin::{LoadedPlugin, SandboxEngine, wit};
use crate::redis_conn::{RedisConn, RedisOptions};
use crate::writer::clickhouse::{ChClient, ChOptions};

#[derive(Parser, Debug)]
#[command(name = "sluice", version, about = "Redis events -> sandboxed WebAssembly handlers -> ClickHouse rows", long_about = None)]
pub struct Cli {
    /// Log format: `text` for terminals, `json` for containers.
    #[arg(long, global = true, env = "SLUICE_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the host: consume events from Redis, call the plugins, write rows to ClickHouse.
    Run(RunArgs),
    /// Publish events to Redis Streams in the wire format (one, or --count generated ones).
    Publish(PublishArgs),
    /// Inspect and run plugins without Redis or ClickHouse (inspect can compare with a live ClickHouse).
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// List, reprocess or purge dead letters (the `sluice:dlq` stream).
    Dlq(DlqArgs),
    /// Re-feed a stream's history to one plugin (through its replay stream).
    Replay(ReplayArgs),
    /// Ask a running host whether it is alive (/health) or ready (/ready); exit 0 if so, 1 if
    /// not. For container health checks (the image has no curl).
    Health(HealthArgs),
}

#[derive(Args, Debug)]
pub struct HealthArgs {
    /// The host's admin address; 0.0.0.0 means this machine [default: 127.0.0.1:9464]
    #[arg(long, env = "SLUICE_ADMIN_ADDR")]
    pub admin_addr: Option<String>,
    /// Check readiness (Redis, ClickHouse, plugins) instead of liveness.
    #[arg(long)]
    pub ready: bool,
}

#[derive(Args, Debug)]
pub struct DlqArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(subcommand)]
    pub command: DlqCommand,
}

#[derive(Subcommand, Debug)]
pub enum DlqCommand {
    /// List dead letters, oldest first.
    List {
        /// Only this plugin's dead letters.
        #[arg(long)]
        plugin: Option<String>,
        /// Only dead letters of this event type.
        #[arg(long = "type")]
        event_type: Option<String>,
        /// Only this error kind: invalid_event, permanent, retries_exhausted, insert_failed.
        #[arg(long)]
        kind: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Send dead letters back to their plugin (and remove them from the dead-letter stream).
    Reprocess {
        /// The dead letter's id in sluice:dlq (see `dlq list`).
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        /// All dead letters (of --plugin, if given).
        #[arg(long)]
        all: bool,
        /// With --all: only this plugin's dead letters.
        #[arg(long, requires = "all")]
        plugin: Option<String>,
    },
    /// Delete dead letters: all, or one plugin's.
    Purge {
        /// Only this plugin's dead letters.
        #[arg(long)]
        plugin: Option<String>,
    },
}

#[derive(Args, Debug)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// The plugin to re-feed.
    #[arg(long)]
    pub plugin: String,
    /// Start: a stream entry id (1717245000123-0) or an RFC 3339 time; `-` for the beginning.
    #[arg(long)]
    pub from: String,
    /// End (inclusive): an entry id or an RFC 3339 time [default: the end]
    #[arg(long, default_value = "+")]
    pub to: String,
    /// Event types to replay [default: every stream that has the plugin's consumer group]
    #[arg(long = "type")]
    pub event_types: Vec<String>,
}

#[derive(Subcommand, Debug)]
pub enum PluginCommand {
    /// Print a plugin's manifest (name, version, hash, subscriptions, tables and their DDL) as
    /// JSON. With --clickhouse-url, also compare each table with the live one and say what
    /// starting this version would do: create it, add columns, nothing, or refuse (and why);
    /// exits with 1 if it would be refused.
    Inspect {
        /// The plugin's .wasm file.
        file: PathBuf,
        /// Compare the tables with this ClickHouse server's (read-only: nothing is changed).
        /// Only this flag turns the comparison on; the database and credentials below come from
        /// the host's environment as for `sluice run`, and are unused without it.
        #[arg(long)]
        clickhouse_url: Option<String>,
        /// The database the host writes to.
        #[arg(long, env = "SLUICE_CLICKHOUSE_DATABASE", default_value = "analytics")]
        clickhouse_database: String,
        #[arg(long, env = "SLUICE_CLICKHOUSE_USER")]
        clickhouse_user: Option<String>,
        #[arg(long, env = "SLUICE_CLICKHOUSE_PASSWORD", hide_env_values = true)]
        clickhouse_password: Option<String>,
    },
    /// Create a ready-to-build plugin project: manifest, one handler, one fixture, one test.
    New {
        /// The plugin's name (lower-case letters, digits, `-`); also the directory created.
        name: String,
        /// The language of the project: rust (cargo, wasm32-wasip2), python (componentize-py)
        /// or js (componentize-js, Node.js 20+).
        #[arg(long, default_value = "rust", value_parser = ["rust", "python", "js"])]
        lang: String,
        /// Where to create it.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Run fixture files against a plugin (events in, expected rows or errors out) and print a
    /// readable difference for each that does not match; exit 1 if any fails.
    Test {
        /// The plugin's .wasm file.
        file: PathBuf,
        /// A fixture file, or a directory of them (*.json).
        #[arg(long)]
        fixtures: PathBuf,
    },
    /// Run a plugin's handler on events from a file and print the rows as JSON lines.
    Run {
        /// The plugin's .wasm file.
        file: PathBuf,
        /// A JSON file with one event, an array of events, or one event per line. An event is
        /// {"type": "...", "payload": {...}, "id"?: "...", "ts"?: ms}; with --type, each object
        /// is a payload.
        #[arg(long)]
        event: PathBuf,
        /// Treat every object in the file as the payload of an event of this type.
        #[arg(long = "type")]
        event_type: Option<String>,
    },
}

/// Connection settings shared by the commands that talk to Redis and ClickHouse.
#[derive(Args, Debug, Clone)]
pub struct CommonArgs {
    /// TOML file with settings (same names as below, in snake_case); flags and environment win.
    #[arg(long, env = "SLUICE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Redis URL: redis://, rediss:// (TLS) or unix://; for a Redis Cluster, one or more
    /// seed nodes, comma-separated (cluster mode is detected) [default: redis://127.0.0.1:6379]
    #[arg(long, env = "SLUICE_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Redis password, when the URL carries none (prefer the environment or a file: flags
    /// show up in `ps`)
    #[arg(long, env = "SLUICE_REDIS_PASSWORD", hide_env_values = true)]
    pub redis_password: Option<String>,
    /// File holding the Redis password (a mounted secret)
    #[arg(long, env = "SLUICE_REDIS_PASSWORD_FILE")]
    pub redis_password_file: Option<PathBuf>,
    /// PEM file of the CA that signed the Redis servers' certificates (rediss://)
    /// [default: the system's roots]
    #[arg(long, env = "SLUICE_REDIS_CA_FILE")]
    pub redis_ca_file: Option<PathBuf>,
    /// PEM client certificate for Redis servers that require one (with --redis-key-file)
    #[arg(long, env = "SLUICE_REDIS_CERT_FILE")]
    pub redis_cert_file: Option<PathBuf>,
    /// PEM private key of --redis-cert-file
    #[arg(long, env = "SLUICE_REDIS_KEY_FILE")]
    pub redis_key_file: Option<PathBuf>,
    /// Prefix of event streams: type T is read from `<prefix>T` [default: events:]
    #[arg(long, env = "SLUICE_STREAM_PREFIX")]
    pub stream_prefix: Option<String>,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// ClickHouse HTTP(S) URL; several comma-separated endpoints (replicas) are used in
    /// turn, moving on when one fails [default: http://127.0.0.1:8123]
    #[arg(long, env = "SLUICE_CLICKHOUSE_URL", hide_env_values = true)]
    pub clickhouse_url: Option<String>,
    /// ClickHouse database for the plugins' tables, created if missing [default: analytics]
    #[arg(long, env = "SLUICE_CLICKHOUSE_DATABASE")]
    pub clickhouse_database: Option<String>,
    /// ClickHouse user [default: the server's default user]
    #[arg(long, env = "SLUICE_CLICKHOUSE_USER")]
    pub clickhouse_user: Option<String>,
    /// ClickHouse password (prefer the environment variable: flags show up in `ps`)
    #[arg(long, env = "SLUICE_CLICKHOUSE_PASSWORD", hide_env_values = true)]
    pub clickhouse_password: Option<String>,
    /// File holding the ClickHouse password (a mounted secret)
    #[arg(long, env = "SLUICE_CLICKHOUSE_PASSWORD_FILE")]
    pub clickhouse_password_file: Option<PathBuf>,
    /// PEM file of the CA that signed the ClickHouse servers' certificates (https://)
    /// [default: the system's roots]
    #[arg(long, env = "SLUICE_CLICKHOUSE_CA_FILE")]
    pub clickhouse_ca_file: Option<PathBuf>,
    /// ClickHouse cluster (from the servers' <remote_servers>) on which tables are created:
    /// DDL runs ON CLUSTER, Replicated engines use the {shard}/{replica} macros [default: none]
    #[arg(long, env = "SLUICE_CLICKHOUSE_CLUSTER")]
    pub clickhouse_cluster: Option<String>,
    /// Compression of INSERT bodies: `lz4` (ClickHouse's own block compression) or `none`
    /// [default: none]
    #[arg(long, env = "SLUICE_CLICKHOUSE_COMPRESSION", value_parser = ["none", "lz4"])]
    pub clickhouse_compression: Option<String>,
    /// Directory of plugin .wasm files [default: ./plugins]
    #[arg(long, env = "SLUICE_PLUGINS_DIR")]
    pub plugins_dir: Option<PathBuf>,
    /// Directory for compiled plugins (by file hash), so restarts skip compiling; `off` for
    /// none [default: $XDG_CACHE_HOME/sluice, ~/.cache/sluice, or /tmp/sluice-cache-<uid>]
    #[arg(long, env = "SLUICE_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Admin HTTP address: dashboard, /health, /ready, /metrics, JSON API; `off` for none
    /// [default: 127.0.0.1:9464]
    #[arg(long, env = "SLUICE_ADMIN_ADDR")]
    pub admin_addr: Option<String>,
    /// Bearer token for admin calls that change anything (reprocess, purge, replay); without
    /// one they are refused
    #[arg(long, env = "SLUICE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Events per read and per plugin call [default: 500]
    #[arg(long, env = "SLUICE_BATCH_SIZE")]
    pub batch_size: Option<usize>,
    /// Rows per ClickHouse INSERT, at most [default: 200000]
    #[arg(long, env = "SLUICE_INSERT_MAX_ROWS")]
    pub insert_max_rows: Option<usize>,
    /// Milliseconds a table's rows wait for more before they are inserted [default: 100]
    #[arg(long, env = "SLUICE_INSERT_LINGER_MS")]
    pub insert_linger_ms: Option<u64>,
    /// Exactly-once writes where ClickHouse can deduplicate (Replicated tables with ZooKeeper,
    /// or insert_deduplication_token), at-least-once elsewhere: `auto`; or at-least-once
    /// everywhere, without batch records in Redis: `off` [default: auto]
    #[arg(long, env = "SLUICE_EXACTLY_ONCE", value_parser = ["auto", "off"])]
    pub exactly_once: Option<String>,
    /// Deliveries of an event before it is dead-lettered [default: 3]
    #[arg(long, env = "SLUICE_MAX_ATTEMPTS")]
    pub max_attempts: Option<u64>,
    /// Milliseconds an entry pending on another (dead) consumer waits before it is claimed [default: 60000]
    #[arg(long, env = "SLUICE_VISIBILITY_TIMEOUT_MS")]
    pub visibility_timeout_ms: Option<u64>,
    /// Wall-clock limit of one plugin call, in milliseconds [default: 5000]
    #[arg(long, env = "SLUICE_CALL_TIMEOUT_MS")]
    pub call_timeout_ms: Option<u64>,
    /// Priority of an event type, TYPE=high|default|low; repeat, or comma-separate in the
    /// environment (e.g. `order.created=high,analytics.track=low`)
    #[arg(long = "priority", env = "SLUICE_PRIORITIES", value_delimiter = ',')]
    pub priorities: Vec<String>,
    /// BullMQ queues to consume beside the streams, comma-separated (e.g. `events,payments`);
    /// each job's name is its event type [default: none]
    #[arg(long, env = "SLUICE_BULLMQ_QUEUES")]
    pub bullmq_queues: Option<String>,
    /// BullMQ key prefix of those queues [default: bull]
    #[arg(long, env = "SLUICE_BULLMQ_PREFIX")]
    pub bullmq_prefix: Option<String>,
    /// Jobs per BullMQ queue held at once (each locked until its rows are committed)
    /// [default: 1000]
    #[arg(long, env = "SLUICE_BULLMQ_CONCURRENCY")]
    pub bullmq_concurrency: Option<usize>,
    /// Seconds to finish in-flight events after SIGTERM/SIGINT [default: 30]
    #[arg(long, env = "SLUICE_SHUTDOWN_GRACE_S", default_value_t = 30)]
    pub shutdown_grace_s: u64,
}

#[derive(Args, Debug)]
pub struct PublishArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// The event type, e.g. `PromoCodeAppliedEvent` or `order.created`.
    pub event_type: String,
    /// The payload, JSON text. Omit with --count.
    pub payload: Option<String>,
    /// Publish this many generated events of a seed type (PromoCodeAppliedEvent,
    /// OrderCreatedEvent, order.created) and print the rate.
    #[arg(long)]
    pub count: Option<u64>,
    /// Event id (the idempotency key) of a single event.
    #[arg(long)]
    pub id: Option<String>,
    /// Hold the event until this much time has passed (30s, 5m, 1h, 250ms); see
    /// "Delayed events" in the README for the Redis format other producers can use.
    #[arg(long, value_parser = crate::source::delayed::parse_duration)]
    pub delay: Option<Duration>,
}

/// A password given directly, or in a file; both is an error.
fn secret(name: &str, direct: Option<String>, file: Option<PathBuf>) -> Result<Option<crate::config::Secret>> {
    match (direct.filter(|p| !p.is_empty()), file) {
        (Some(_), Some(_)) => bail!("{name} and {name}_FILE are both set: give one"),
        (Some(p), None) => Ok(Some(crate::config::Secret(p))),
        (None, Some(f)) => crate::tls::read_secret(&format!("{name}_FILE"), &f).map(Some),
        (None, None) => Ok(None),
    }
}

impl CommonArgs {
    /// How to reach Redis: flags and environment, then the file, then the default.
    pub fn redis_options(&self, f: &FileSettings) -> Result<RedisOptions> {
        let urls = self.redis_url.clone().or(f.redis_url.clone()).unwrap_or_else(|| "redis://127.0.0.1:6379".into());
        let o = RedisOptions {
            urls: urls.split(',').map(|u| u.trim().to_string()).filter(|u| !u.is_empty()).collect(),
            password: secret(
                "SLUICE_REDIS_PASSWORD",
                self.redis_password.clone(),
                self.redis_password_file.clone().or(f.redis_password_file.clone()),
            )?,
            ca_file: self.redis_ca_file.clone().or(f.redis_ca_file.clone()),
            cert_file: self.redis_cert_file.clone().or(f.redis_cert_file.clone()),
            key_file: self.redis_key_file.clone().or(f.redis_key_file.clone()),
        };
        o.validate()?;
        Ok(o)
    }
}

/// Connects to Redis for a command-line tool.
async fn tool_connection(common: &CommonArgs, f: &FileSettings) -> Result<RedisConn> {
    crate::redis_conn::connect(&common.redis_options(f)?, Duration::from_secs(1)).await
}

fn file_settings(common: &CommonArgs) -> Result<FileSettings> {
    match &common.config {
        Some(p) => FileSettings::load(p),
        None => Ok(FileSettings::default()),
    }
}

impl RunArgs {
    pub fn settings(&self) -> Result<Settings> {
        let f = file_settings(&self.common)?;
        let ms = Duration::from_millis;
        Ok(Settings {
            redis: self.common.redis_options(&f)?,
            clickhouse: ChOptions {
                urls: self
                    .clickhouse_url
                    .clone()
                    .or(f.clickhouse_url.clone())
                    .unwrap_or_else(|| "http://127.0.0.1:8123".into())
                    .split(',')
                    .map(|u| u.trim().to_string())
                    .filter(|u| !u.is_empty())
                    .collect(),
                database: self
                    .clickhouse_database
                    .clone()
                    .or(f.clickhouse_database.clone())
                    .unwrap_or_else(|| "analytics".into()),
                user: self.clickhouse_user.clone().or(f.clickhouse_user.clone()),
                password: secret(
                    "SLUICE_CLICKHOUSE_PASSWORD",
                    self.clickhouse_password.clone().or(f.clickhouse_password.clone()),
                    self.clickhouse_password_file.clone().or(f.clickhouse_password_file.clone()),
                )?,
                ca_file: self.clickhouse_ca_file.clone().or(f.clickhouse_ca_file.clone()),
                cluster: self.clickhouse_cluster.clone().or(f.clickhouse_cluster.clone()).filter(|c| !c.is_empty()),
                lz4: match self.clickhouse_compression.clone().or(f.clickhouse_compression.clone()).as_deref() {
                    None | Some("none") => false,
                    Some("lz4") => true,
                    Some(other) => bail!("clickhouse_compression must be `none` or `lz4`, got `{other}`"),
                },
            },
            plugins_dir: self.plugins_dir.clone().or(f.plugins_dir).unwrap_or_else(|| PathBuf::from("./plugins")),
            admin_addr: self.admin_addr.clone().or(f.admin_addr).unwrap_or_else(|| "127.0.0.1:9464".into()),
            cache_dir: match self.cache_dir.clone().or(f.cache_dir) {
                Some(p) if p.as_os_str() == "off" => None,
                Some(p) => Some((p, true)),
                None => Some((crate::config::default_cache_dir(), false)),
            },
            admin_token: self.admin_token.clone().filter(|t| !t.is_empty()).map(crate::config::Secret),
            stream_prefix: self.common.stream_prefix.clone().or(f.stream_prefix).unwrap_or_else(|| "events:".into()),
            batch_size: self.batch_size.or(f.batch_size).unwrap_or(500),
            block: ms(f.block_ms.unwrap_or(1000)),
            max_inflight_events: f
                .max_inflight_events
                .unwrap_or(50_000)
                .max(self.batch_size.or(f.batch_size).unwrap_or(500)),
            insert_max_rows: self.insert_max_rows.or(f.insert_max_rows).unwrap_or(200_000),
            insert_linger: ms(self.insert_linger_ms.or(f.insert_linger_ms).unwrap_or(100)),
            exactly_once: match self.exactly_once.clone().or(f.exactly_once).as_deref() {
                None | Some("auto") => true,
                Some("off") => false,
                Some(other) => anyhow::bail!("exactly_once = {other:?}: expected \"auto\" or \"off\""),
            },
            max_attempts: self.max_attempts.or(f.max_attempts).unwrap_or(3),
            retry_base: ms(f.retry_base_ms.unwrap_or(1000)),
            retry_max: ms(f.retry_max_ms.unwrap_or(60_000)),
            visibility_timeout: ms(self.visibility_timeout_ms.or(f.visibility_timeout_ms).unwrap_or(60_000)),
            call_timeout: ms(self.call_timeout_ms.or(f.call_timeout_ms).unwrap_or(5000)),
            max_memory_mb: f.max_memory_mb.unwrap_or(128),
            priorities: {
                let mut m = std::collections::HashMap::new();
                for (t, p) in f.priorities.unwrap_or_default() {
                    m.insert(t.clone(), p.parse().map_err(|e| anyhow::anyhow!("priorities.{t}: {e}"))?);
                }
                for item in &self.priorities {
                    let (t, p) = item
                        .split_once('=')
                        .with_context(|| format!("--priority `{item}`: expected TYPE=high|default|low"))?;
                    m.insert(t.to_string(), p.parse().map_err(|e| anyhow::anyhow!("--priority {item}: {e}"))?);
                }
                m
            },
            plugin_sections: f.plugins.clone().unwrap_or_default(),
            table_shares: f.tables.clone().unwrap_or_default().into_iter().map(|(t, s)| (t, s.shared_with)).collect(),
            bullmq: crate::source::bullmq::resolve_queues(
                self.bullmq_queues.as_deref(),
                self.bullmq_prefix.as_deref(),
                self.bullmq_concurrency,
                f.bullmq.as_ref(),
            )?,
            concurrency: {
                let c = f.concurrency.unwrap_or_default();
                if let Some(k) = c.keys().find(|k| !["high", "default", "low"].contains(&k.as_str())) {
                    bail!("concurrency.{k}: unknown priority (use high, default or low)");
                }
                [
                    c.get("high").copied().unwrap_or(4),
                    c.get("default").copied().unwrap_or(2),
                    c.get("low").copied().unwrap_or(1),
                ]
            },
        })
    }
}

/// `sluice publish`.
pub async fn publish(args: PublishArgs) -> Result<()> {
    let f = file_settings(&args.common)?;
    let prefix = args.common.stream_prefix.clone().or(f.stream_prefix.clone()).unwrap_or_else(|| "events:".into());
    let stream = format!("{prefix}{}", args.event_type);
    let mut conn = tool_connection(&args.common, &f).await?;
    match (args.count, &args.payload) {
        (None, Some(payload)) => {
            serde_json::from_str::<serde_json::Value>(payload).context("the payload is not valid JSON")?;
            let id = args.id.clone().unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
            if let Some(delay) = args.delay {
                let due = crate::source::delayed::publish_delayed(
                    &mut conn,
                    &stream,
                    &[("payload", payload), ("id", &id)],
                    delay,
                )
                .await?;
                println!(
                    "{stream} delayed until {} id={id}",
                    chrono::DateTime::from_timestamp_millis(due).map(|t| t.to_rfc3339()).unwrap_or_default()
                );
                return Ok(());
            }
            let entry: String = redis::cmd("XADD")
                .arg(&stream)
                .arg("*")
                .arg("payload")
                .arg(payload)
                .arg("id")
                .arg(&id)
                .query_async(&mut conn)
                .await
                .with_context(|| format!("cannot XADD to {stream}"))?;
            println!("{stream} {entry} id={id}");
        }
        (Some(_), None) if args.delay.is_some() => {
            bail!("--delay publishes one event; it cannot be combined with --count")
        }
        (Some(count), None) => {
            let started = Instant::now();
            let mut sent = 0u64;
            while sent < count {
                let n = (count - sent).min(1000);
                let mut p = redis::pipe();
                for i in sent..sent + n {
                    let payload = crate::sample::payload(&args.event_type, i)?;
                    p.cmd("XADD")
                        .arg(&stream)
                        .arg("*")
                        .arg("payload")
                        .arg(payload.to_string())
                        .arg("id")
                        .arg(uuid::Uuid::new_v4().to_string())
                        .ignore();
                }
                let _: () = p.query_async(&mut conn).await.with_context(|| format!("cannot XADD to {stream}"))?;
                sent += n;
            }
            let secs = started.elapsed().as_secs_f64();
            println!(
                "published {count} {} events to {stream} in {secs:.2} s ({:.0} events/s)",
                args.event_type,
                count as f64 / secs.max(1e-9)
            );
        }
        (Some(_), Some(_)) => bail!("give either a payload or --count, not both"),
        (None, None) => bail!("give a payload (JSON text) or --count N"),
    }
    Ok(())
}

/// A connection for a tool, and the stream prefix.
async fn redis_of(common: &CommonArgs) -> Result<(RedisConn, String)> {
    let f = file_settings(common)?;
    let prefix = common.stream_prefix.clone().or(f.stream_prefix.clone()).unwrap_or_else(|| "events:".into());
    Ok((tool_connection(common, &f).await?, prefix))
}

/// `sluice dlq ...`.
pub async fn dlq(args: DlqArgs) -> Result<()> {
    let (mut conn, _) = redis_of(&args.common).await?;
    match args.command {
        DlqCommand::List { plugin, event_type, kind, limit, json } => {
            let filter = crate::dlq::Filter {
                plugin: plugin.as_deref(),
                event_type: event_type.as_deref(),
                kind: kind.as_deref(),
            };
            let entries = crate::dlq::list(&mut conn, filter, limit).await?;
            if json {
                for e in &entries {
                    println!("{}", e.to_json());
                }
            } else {
                crate::dlq::print_table(&entries);
            }
        }
        DlqCommand::Reprocess { id: Some(id), .. } => {
            let entry =
                crate::dlq::get(&mut conn, &id).await?.with_context(|| format!("no dead letter {id} in sluice:dlq"))?;
            match crate::dlq::reprocess(&mut conn, &entry).await? {
                Some((stream, new_id)) => println!("{id} -> {stream} {new_id}"),
                None => bail!("dead letter {id} was removed meanwhile"),
            }
        }
        DlqCommand::Reprocess { id: None, plugin, .. } => {
            let entries =
                crate::dlq::list(&mut conn, crate::dlq::Filter::plugin(plugin.as_deref()), usize::MAX).await?;
            let progress = crate::dlq::Progress::new("reprocessed");
            let mut n = 0;
            for e in &entries {
                if crate::dlq::reprocess(&mut conn, e).await?.is_some() {
                    n += 1;
                }
                if n % 1000 == 0 {
                    progress.update(n);
                }
            }
            progress.finish(n);
            println!("reprocessed {n} dead letters");
        }
        DlqCommand::Purge { plugin } => {
            let n = crate::dlq::purge(&mut conn, plugin.as_deref()).await?;
            println!("purged {n} dead letters");
        }
    }
    Ok(())
}

/// `sluice replay`.
pub async fn replay(args: ReplayArgs) -> Result<()> {
    let (mut conn, prefix) = redis_of(&args.common).await?;
    let (from, to) = (crate::dlq::position(&args.from)?, crate::dlq::position(&args.to)?);
    let types = if args.event_types.is_empty() {
        crate::dlq::subscribed_types(&mut conn, &prefix, &args.plugin).await?
    } else {
        args.event_types.clone()
    };
    if types.is_empty() {
        bail!(
            "no stream under `{prefix}` has the consumer group sluice:{}; is the plugin name right? (or pass --type)",
            args.plugin
        );
    }
    let mut total = 0;
    for t in &types {
        let stream = format!("{prefix}{t}");
        let progress = crate::dlq::Progress::new(&format!("replaying {stream} to {}", args.plugin));
        let n = crate::dlq::replay(&mut conn, &stream, &args.plugin, t, &from, &to, |n| progress.update(n)).await?;
        progress.finish(n);
        total += n;
    }
    println!("replayed {total} events to plugin {} ({})", args.plugin, types.join(", "));
    Ok(())
}

/// Loads a plugin file on its own (no host config), for the commands that run plugins offline.
pub(crate) async fn load_one(path: &Path) -> Result<LoadedPlugin> {
    // The host's compiled-code cache, best effort: a Python or JavaScript component takes
    // seconds to compile, and the edit → build → test loop runs this again and again.
    let mut engine = SandboxEngine::new()?;
    let dir = std::env::var_os("SLUICE_CACHE_DIR").map(PathBuf::from);
    if dir.as_ref().is_none_or(|d| d.as_os_str() != "off") {
        let dir = dir.unwrap_or_else(crate::config::default_cache_dir);
        if let Ok(cached) = engine.clone().with_cache(&dir) {
            engine = cached;
        }
    }
    LoadedPlugin::load(&engine, path, &crate::plugin::PluginDefaults::default()).await
}

/// The manifest of a loaded plugin as JSON.
pub fn manifest_json(p: &LoadedPlugin, database: &str) -> serde_json::Value {
    let m = &p.manifest;
    let tables: Vec<serde_json::Value> = m
        .tables
        .iter()
        .zip(&p.tables)
        .map(|(t, s)| {
            let engine = match &t.engine {
                wit::Engine::MergeTree => serde_json::json!({"kind": "MergeTree"}),
                wit::Engine::ReplacingMergeTree(v) => serde_json::json!({"kind": "ReplacingMergeTree", "version": v}),
                wit::Engine::SummingMergeTree(c) => serde_json::json!({"kind": "SummingMergeTree", "columns": c}),
                wit::Engine::AggregatingMergeTree => serde_json::json!({"kind": "AggregatingMergeTree"}),
            };
            serde_json::json!({
                "name": t.name,
                "columns": t.columns.iter().map(|c| serde_json::json!({"name": c.name, "type": c.ty, "comment": c.comment})).collect::<Vec<_>>(),
                "engine": engine,
                "partition_by": t.partition_by,
                "order_by": t.order_by,
                "settings": t.settings.iter().cloned().collect::<HashMap<_, _>>(),
                "ddl": s.create_ddl(database),
            })
        })
        .collect();
    serde_json::json!({
        "name": m.name,
        "version": m.version,
        "hash": p.hash,
        "file": p.path.display().to_string(),
        "subscriptions": m.subscriptions,
        "tables": tables,
        "extensions": m.extensions.iter().cloned().collect::<HashMap<_, _>>(),
    })
}

/// Where `plugin inspect` compares the tables.
pub struct LiveTarget {
    pub url: String,
    pub user: Option<String>,
    pub password: Option<String>,
}

/// `sluice plugin inspect`: the manifest, and with a ClickHouse server what starting this
/// version would do to each table. Ok(false) if it would be refused.
pub async fn inspect(file: &Path, database: &str, live: Option<LiveTarget>) -> Result<bool> {
    use crate::writer::evolve::{self, Plan};
    let p = load_one(file).await?;
    let mut out = manifest_json(&p, database);
    let mut accepted = true;
    if let Some(l) = &live {
        let ch = ChClient::new(&ChOptions {
            urls: l.url.split(',').map(|u| u.trim().to_string()).collect(),
            database: database.to_string(),
            user: l.user.clone(),
            password: l.password.clone().map(crate::config::Secret),
            ..ChOptions::default()
        })?;
        let server = crate::writer::dedup::ServerDedup::detect(&ch, false)
            .await
            .with_context(|| format!("cannot read the server's settings from {}", l.url))?;
        for (schema, json) in p.tables.iter().zip(out["tables"].as_array_mut().into_iter().flatten()) {
            let plan = evolve::plan(&ch, schema, p.name(), &Default::default())
                .await
                .with_context(|| format!("cannot read table {}.{} from {}", database, schema.name, l.url))?;
            let (guarantee, window) = match evolve::live_table(&ch, &schema.name).await? {
                Some(live) => {
                    let g = server.guarantee_of(&live);
                    (g, server.window_of(&live, g))
                }
                None => {
                    json["ddl"] = serde_json::json!(server.create_ddl(schema, database));
                    (server.guarantee_of_new(), server.window_of_new())
                }
            };
            let (status, detail) = match &plan {
                Plan::Create => ("create", vec![]),
                Plan::UpToDate => ("up to date", vec![]),
                Plan::Adopt => ("adopt", vec![]),
                Plan::Alter(changes) => ("alter", changes.iter().map(|c| c.ddl(&database, &schema.name)).collect()),
                Plan::Refused(problems) => ("refused", problems.clone()),
            };
            eprintln!("table {}.{}: {status} ({})", database, schema.name, guarantee.name());
            for d in &detail {
                eprintln!("  {} {d}", if status == "refused" { "-" } else { "+" });
            }
            accepted &= status != "refused";
            json["live"] = serde_json::json!({"status": status, "changes": detail, "guarantee": guarantee.name(), "dedup_window": window});
        }
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(accepted)
}

/// Reads events for `plugin run` / fixtures: one object, an array, or JSON lines.
pub fn read_events(path: &Path, event_type: Option<&str>) -> Result<Vec<wit::Event>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let values: Vec<serde_json::Value> = match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(serde_json::Value::Array(a)) => a,
        Ok(v) => vec![v],
        Err(_) => text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                serde_json::from_str(l).with_context(|| format!("{} line {}: not JSON", path.display(), i + 1))
            })
            .collect::<Result<_>>()?,
    };
    events_from_values(values, &path.display().to_string(), event_type)
}

/// Events from JSON objects `{"type", "payload", "id"?, "ts"?, "source"?, "tenant"?}` (or bare
/// payloads of `event_type`); `label` names where they came from in errors.
pub fn events_from_values(
    values: Vec<serde_json::Value>,
    label: &str,
    event_type: Option<&str>,
) -> Result<Vec<wit::Event>> {
    let now = chrono::Utc::now().timestamp_millis();
    values
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let at = || format!("{label} event {}", i + 1);
            if let Some(t) = event_type {
                return Ok(wit::Event {
                    id: format!("event-{}", i + 1),
                    event_type: t.to_string(),
                    timestamp_ms: now,
                    payload: v.to_string(),
                    source: None,
                    tenant: None,
                    attempt: 1,
                });
            }
            let obj = v.as_object().with_context(|| format!("{}: expected an object", at()))?;
            let ty = obj
                .get("type")
                .and_then(|t| t.as_str())
                .with_context(|| format!("{}: missing \"type\" (or pass --type)", at()))?;
            let payload = obj.get("payload").with_context(|| format!("{}: missing \"payload\"", at()))?;
            let payload = match payload {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            Ok(wit::Event {
                id: obj
                    .get("id")
                    .and_then(|x| x.as_str())
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("event-{}", i + 1)),
                event_type: ty.to_string(),
                timestamp_ms: obj.get("ts").and_then(|x| x.as_i64()).unwrap_or(now),
                payload,
                source: obj.get("source").and_then(|x| x.as_str()).map(str::to_string),
                tenant: obj.get("tenant").and_then(|x| x.as_str()).map(str::to_string),
                attempt: 1,
            })
        })
        .collect()
}

/// `sluice plugin run`: prints `{"event": i, "table": t, "row": {...}}` per row and
/// `{"event": i, "error": ..., "permanent": ...}` per failed event. Exits non-zero if any failed.
pub async fn run_plugin(file: &Path, events_file: &Path, event_type: Option<&str>) -> Result<bool> {
    let p = std::sync::Arc::new(load_one(file).await?);
    let events = read_events(events_file, event_type)?;
    for (i, e) in events.iter().enumerate() {
        if !p.manifest.subscriptions.contains(&e.event_type) {
            eprintln!(
                "note: plugin `{}` does not subscribe to `{}`; the host would not route event {} to it",
                p.name(),
                e.event_type,
                i + 1
            );
        }
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut all_ok = true;
    for mut o in crate::fixtures::outcomes(&p, &events).await? {
        if o.get("error").is_some() {
            all_ok = false;
            let i = o["event"].as_u64().unwrap_or(0) as usize;
            o["id"] = serde_json::json!(events[i].id);
        }
        writeln!(out, "{o}")?;
    }
    Ok(all_ok)
}

/// `sluice health`: GET /health or /ready on the admin address; Ok(true) on 200.
pub async fn health(args: HealthArgs) -> Result<bool> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = args.admin_addr.unwrap_or_else(|| "127.0.0.1:9464".into());
    let addr = addr.replace("0.0.0.0", "127.0.0.1").replace("[::]", "[::1]");
    let path = if args.ready { "/ready" } else { "/health" };
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(&addr).await?;
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).await?;
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).await?;
        anyhow::Ok(String::from_utf8_lossy(&resp).into_owned())
    };
    let resp = tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .map_err(|_| anyhow::anyhow!("no answer from {addr} within 5 s"))?
        .with_context(|| format!("cannot reach the admin API at {addr}"))?;
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    println!("{}", body.trim());
    Ok(head.starts_with("HTTP/1.1 200"))
}
