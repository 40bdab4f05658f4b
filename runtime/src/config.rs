//! Host settings. Precedence: command-line flags, then environment variables (`SLUICE_*`),
//! then the TOML file named by `--config` / `SLUICE_CONFIG`, then the defaults below.
//! (Flags and environment are merged by clap; this module adds the file and the defaults.)

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use crate::priority::Priority;

/// Settings as they may appear in the TOML file; every field optional.
#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct FileSettings {
    pub redis_url: Option<String>,
    pub redis_password_file: Option<PathBuf>,
    pub redis_ca_file: Option<PathBuf>,
    pub redis_cert_file: Option<PathBuf>,
    pub redis_key_file: Option<PathBuf>,
    pub clickhouse_url: Option<String>,
    pub clickhouse_database: Option<String>,
    pub clickhouse_user: Option<String>,
    pub clickhouse_password: Option<String>,
    pub clickhouse_password_file: Option<PathBuf>,
    pub clickhouse_ca_file: Option<PathBuf>,
    pub clickhouse_cluster: Option<String>,
    /// `none` | `lz4`.
    pub clickhouse_compression: Option<String>,
    pub plugins_dir: Option<PathBuf>,
    pub cache_dir: Option<PathBuf>,
    pub admin_addr: Option<String>,
    pub stream_prefix: Option<String>,
    pub batch_size: Option<usize>,
    pub block_ms: Option<u64>,
    pub max_inflight_events: Option<usize>,
    pub insert_max_rows: Option<usize>,
    pub insert_linger_ms: Option<u64>,
    /// `auto` | `off`.
    pub exactly_once: Option<String>,
    pub max_attempts: Option<u64>,
    pub retry_base_ms: Option<u64>,
    pub retry_max_ms: Option<u64>,
    pub visibility_timeout_ms: Option<u64>,
    pub call_timeout_ms: Option<u64>,
    pub max_memory_mb: Option<usize>,
    pub log_format: Option<String>,
    /// Event type → `high` | `default` | `low`.
    pub priorities: Option<std::collections::HashMap<String, String>>,
    /// Plugin calls at once per priority: `{ high = 4, default = 2, low = 1 }`.
    pub concurrency: Option<std::collections::HashMap<String, usize>>,
    /// `[plugins.<file stem>]`: what a plugin's sidecar file may say, set from the host's
    /// config (the sidecar file wins key by key).
    pub plugins: Option<std::collections::HashMap<String, toml::Table>>,
    /// `[bullmq]`: BullMQ queues to consume beside the streams.
    pub bullmq: Option<crate::source::bullmq::BullSection>,
    /// `[tables.<name>]`: what the operator says about a table (see `writer::evolve`).
    pub tables: Option<std::collections::HashMap<String, TableSection>>,
}

/// `[tables.<name>]` of the host config.
#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct TableSection {
    /// Plugins besides its owner that may declare, write and evolve the table.
    #[serde(default)]
    pub shared_with: Vec<String>,
}

impl FileSettings {
    pub fn load(path: &Path) -> Result<FileSettings> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
    }
}

/// Where compiled plugins are cached when no directory is configured.
pub fn default_cache_dir() -> PathBuf {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(x) = env("XDG_CACHE_HOME") {
        return x.join("sluice");
    }
    if let Some(home) = env("HOME").filter(|h| h.is_dir() && h.as_os_str() != "/nonexistent") {
        return home.join(".cache/sluice");
    }
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { getuid() };
    std::env::temp_dir().join(format!("sluice-cache-{uid}"))
}

unsafe extern "C" {
    fn getuid() -> u32;
}

/// A value that must never reach a log: it prints as `***`.
#[derive(Clone)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// The resolved settings of `sluice run`.
#[derive(Debug, Clone)]
pub struct Settings {
    pub redis: crate::redis_conn::RedisOptions,
    pub clickhouse: crate::writer::clickhouse::ChOptions,
    pub plugins_dir: PathBuf,
    /// Compiled plugins, by file hash; None: no cache. `explicit`: set by the user (an error
    /// to be unable to use it) rather than the default (a warning).
    pub cache_dir: Option<(PathBuf, bool)>,
    /// `off` disables the admin server.
    pub admin_addr: String,
    pub admin_token: Option<Secret>,
    pub stream_prefix: String,
    /// Events per XREADGROUP and per plugin call.
    pub batch_size: usize,
    /// How long one XREADGROUP waits for new entries.
    pub block: Duration,
    /// Events read but not yet acknowledged, per pipeline: the backpressure bound.
    pub max_inflight_events: usize,
    pub insert_max_rows: usize,
    pub insert_linger: Duration,
    /// Record batches and create deduplicating tables where the server allows (`auto`), or
    /// never (`off`). See `writer::dedup`.
    pub exactly_once: bool,
    /// Deliveries of an event before it is dead-lettered.
    pub max_attempts: u64,
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// How long an entry pending on another consumer stays untouched before this one claims it.
    pub visibility_timeout: Duration,
    pub call_timeout: Duration,
    pub max_memory_mb: usize,
    /// Priority of each event type (others: `default`).
    pub priorities: std::collections::HashMap<String, Priority>,
    /// Plugin calls at once, per priority (high, default, low).
    pub concurrency: [usize; 3],
    /// `[plugins.<stem>]` sections of the config file.
    pub plugin_sections: std::collections::HashMap<String, toml::Table>,
    /// `[tables.<name>] shared_with`: tables shared beyond their owner.
    pub table_shares: crate::writer::evolve::Shares,
    /// BullMQ queues consumed beside the streams (none: no BullMQ source).
    pub bullmq: Vec<crate::source::bullmq::BullQueue>,
}

impl Settings {
    pub fn validate(&self) -> Result<()> {
        if self.batch_size == 0 || self.batch_size > 100_000 {
            bail!("batch_size must be between 1 and 100000, got {}", self.batch_size);
        }
        if self.insert_max_rows == 0 || self.insert_max_rows > 1_048_576 {
            bail!("insert_max_rows must be between 1 and 1048576 (one ClickHouse block), got {}", self.insert_max_rows);
        }
        if self.max_inflight_events < self.batch_size {
            bail!(
                "max_inflight_events ({}) must be at least batch_size ({})",
                self.max_inflight_events,
                self.batch_size
            );
        }
        if self.max_attempts == 0 {
            bail!("max_attempts must be at least 1");
        }
        self.redis.validate()?;
        if self.clickhouse.urls.is_empty() {
            bail!("SLUICE_CLICKHOUSE_URL is empty");
        }
        if let Some(u) = self.clickhouse.urls.iter().find(|u| !(u.starts_with("http://") || u.starts_with("https://")))
        {
            bail!(
                "SLUICE_CLICKHOUSE_URL must be http:// or https:// URLs (comma-separated for several endpoints), got `{}`",
                crate::source::streams::redact_url(u)
            );
        }
        if !self.bullmq.is_empty() && (self.redis.ca_file.is_some() || self.redis.cert_file.is_some()) {
            bail!(
                "the BullMQ source does not take SLUICE_REDIS_CA_FILE / SLUICE_REDIS_CERT_FILE yet: its client trusts the system's roots only"
            );
        }
        if !self.bullmq.is_empty() && self.redis.urls.len() > 1 {
            bail!("the BullMQ source needs one Redis server: SLUICE_REDIS_URL lists several (a cluster's seeds)");
        }
        if self.concurrency.contains(&0) {
            bail!("concurrency per priority must be at least 1, got {:?}", self.concurrency);
        }
        if self.visibility_timeout < Duration::from_secs(1) {
            bail!("visibility_timeout_ms must be at least 1000");
        }
        Ok(())
    }

    pub fn priority_of(&self, event_type: &str) -> Priority {
        self.priorities.get(event_type).copied().unwrap_or(Priority::Default)
    }

    /// The backoff before attempt `deliveries + 1`: base * 2^(deliveries-1), capped, with
    /// up to 20% jitter so that retries of many events spread out.
    pub fn retry_delay(&self, deliveries: u64) -> Duration {
        let exp = deliveries.saturating_sub(1).min(20) as u32;
        let d = self.retry_base.saturating_mul(1u32 << exp).min(self.retry_max);
        let jitter = rand::random::<f64>() * 0.2;
        d.mul_f64(1.0 + jitter)
    }
}
