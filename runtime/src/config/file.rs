//! The config file (`--config` / `SLUICE_CONFIG`): TOML, the same names as the flags in
//! snake_case, every key optional; unknown keys are an error naming them.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Deserialize;

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
    pub shutdown_grace_s: Option<u64>,
    /// How often retention is applied and streams nobody reads are looked for.
    pub housekeeping_interval_ms: Option<u64>,
    /// Where an event's id is found: a key or a list of them (`"id"`, `"field:<name>"`,
    /// `"payload:eventId"`, `"job-id"`), or `"off"`.
    pub idempotency_key: Option<toml::Value>,
    /// How long an event's id is remembered (`"10m"`), or `"off"`.
    pub idempotency_window: Option<String>,
    /// Event streams' retention: a number of entries or `"off"`.
    pub retention_max_len: Option<toml::Value>,
    /// Event streams' retention: a duration (`"7d"`) or `"off"`.
    pub retention_max_age: Option<String>,
    /// `[retention.<event type>]`: one stream's retention over the two above.
    pub retention: Option<std::collections::HashMap<String, RetentionSection>>,
    pub dlq_max_len: Option<toml::Value>,
    pub dlq_max_age: Option<String>,
    /// BullMQ jobs kept in the completed / failed set where the producer set no `removeOn*`.
    pub bullmq_keep_completed: Option<toml::Value>,
    pub bullmq_keep_failed: Option<toml::Value>,
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

/// `[retention.<event type>]` of the host config.
#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RetentionSection {
    pub max_len: Option<toml::Value>,
    pub max_age: Option<String>,
}

impl FileSettings {
    pub fn load(path: &Path) -> Result<FileSettings> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read config file {}", path.display()))?;
        toml::from_str(&text).map_err(|e| crate::suggest::toml_error(&format!("config file {}", path.display()), &e))
    }
}
