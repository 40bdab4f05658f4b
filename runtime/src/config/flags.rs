//! The settings as flags and environment variables (clap merges the two; flags win).

use std::path::PathBuf;

use clap::Args;

/// Connection settings shared by the commands that talk to Redis and ClickHouse.
#[derive(Args, Debug, Clone)]
pub struct CommonArgs {
    /// TOML file with settings (same names as below, in snake_case); flags and environment win.
    #[arg(long, global = true, env = "SLUICE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Redis URL: redis://, rediss:// (TLS) or unix://; for a Redis Cluster, one or more
    /// seed nodes, comma-separated (cluster mode is detected) [default: redis://127.0.0.1:6379]
    #[arg(long, global = true, env = "SLUICE_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Redis password, when the URL carries none (prefer the environment or a file: flags
    /// show up in `ps`)
    #[arg(long, global = true, env = "SLUICE_REDIS_PASSWORD", hide_env_values = true)]
    pub redis_password: Option<String>,
    /// File holding the Redis password (a mounted secret)
    #[arg(long, global = true, env = "SLUICE_REDIS_PASSWORD_FILE")]
    pub redis_password_file: Option<PathBuf>,
    /// PEM file of the CA that signed the Redis servers' certificates (rediss://)
    /// [default: the system's roots]
    #[arg(long, global = true, env = "SLUICE_REDIS_CA_FILE")]
    pub redis_ca_file: Option<PathBuf>,
    /// PEM client certificate for Redis servers that require one (with --redis-key-file)
    #[arg(long, global = true, env = "SLUICE_REDIS_CERT_FILE")]
    pub redis_cert_file: Option<PathBuf>,
    /// PEM private key of --redis-cert-file
    #[arg(long, global = true, env = "SLUICE_REDIS_KEY_FILE")]
    pub redis_key_file: Option<PathBuf>,
    /// Prefix of event streams: type T is read from `<prefix>T` [default: events:]
    #[arg(long, global = true, env = "SLUICE_STREAM_PREFIX")]
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
    /// Where an event's id is found, to drop the same event published twice: comma-separated,
    /// the first an event has wins — `id` (a stream's `id` field or envelope id),
    /// `field:<stream field>`, `payload:<path>`, `job-id` (BullMQ) — or `off` [default:
    /// id,payload:eventId]
    #[arg(long, env = "SLUICE_IDEMPOTENCY_KEY")]
    pub idempotency_key: Option<String>,
    /// How long an event's id is remembered (`10m`, `1h`), or `off` [default: 10m]
    #[arg(long, env = "SLUICE_IDEMPOTENCY_WINDOW")]
    pub idempotency_window: Option<String>,
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
    /// Entries an event stream keeps once every consumer group has acknowledged them, or `off`
    /// [default: off]
    #[arg(long, env = "SLUICE_RETENTION_MAX_LEN")]
    pub retention_max_len: Option<String>,
    /// How long an event stream keeps entries every consumer group has acknowledged (`12h`,
    /// `7d`), or `off`; what `sluice replay` can re-feed [default: 7d]
    #[arg(long, env = "SLUICE_RETENTION_MAX_AGE")]
    pub retention_max_age: Option<String>,
    /// Dead letters kept (the oldest go first), or `off` [default: 100000]
    #[arg(long, env = "SLUICE_DLQ_MAX_LEN")]
    pub dlq_max_len: Option<String>,
    /// Seconds to finish in-flight events after SIGTERM/SIGINT [default: 30]
    #[arg(long, env = "SLUICE_SHUTDOWN_GRACE_S")]
    pub shutdown_grace_s: Option<u64>,
}
