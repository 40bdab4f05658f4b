//! Every default of the host's settings, in one table. The `--help` texts say the same (a unit
//! test in `config` holds them to it), and so do `docs/configuration.md` and
//! `examples/sluice.toml`.

use std::path::PathBuf;

pub const REDIS_URL: &str = "redis://127.0.0.1:6379";
pub const CLICKHOUSE_URL: &str = "http://127.0.0.1:8123";
pub const CLICKHOUSE_DATABASE: &str = "analytics";
pub const PLUGINS_DIR: &str = "./plugins";
pub const ADMIN_ADDR: &str = "127.0.0.1:9464";
pub const STREAM_PREFIX: &str = crate::keys::DEFAULT_STREAM_PREFIX;
pub const BATCH_SIZE: usize = 500;
pub const BLOCK_MS: u64 = 1000;
pub const MAX_INFLIGHT_EVENTS: usize = 50_000;
pub const INSERT_MAX_ROWS: usize = 200_000;
pub const INSERT_LINGER_MS: u64 = 100;
/// Bytes of RowBinary per INSERT at most (not a setting: a bound on the writer's memory).
pub const INSERT_MAX_BYTES: usize = 64 << 20;
pub const MAX_ATTEMPTS: u64 = 3;
pub const IDEMPOTENCY_KEY: &str = "id,payload:eventId";
pub const IDEMPOTENCY_WINDOW: &str = "10m";
pub const RETRY_BASE_MS: u64 = 1000;
pub const RETRY_MAX_MS: u64 = 60_000;
pub const VISIBILITY_TIMEOUT_MS: u64 = 60_000;
pub const CALL_TIMEOUT_MS: u64 = 5000;
pub const MAX_MEMORY_MB: usize = 128;
/// Plugin calls at once per priority: high, default, low.
pub const CONCURRENCY: [usize; 3] = [4, 2, 1];
pub const SHUTDOWN_GRACE_S: u64 = 30;
/// Acknowledged entries of an event stream are kept this long (what `replay` can re-feed).
pub const RETENTION_MAX_AGE: &str = "7d";
pub const DLQ_MAX_LEN: u64 = 100_000;
pub const HOUSEKEEPING_INTERVAL_MS: u64 = 30_000;
pub const BULLMQ_KEEP_COMPLETED: u64 = 10_000;
pub const BULLMQ_KEEP_FAILED: u64 = 10_000;

/// Where compiled plugins are cached when no directory is configured: `$XDG_CACHE_HOME/sluice`,
/// `~/.cache/sluice`, or `/tmp/sluice-cache-<uid>` for users without a home.
pub fn cache_dir() -> PathBuf {
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
