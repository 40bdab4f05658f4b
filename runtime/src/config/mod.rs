//! Host settings, resolved once, here. Precedence: command-line flags, then environment
//! variables (`SLUICE_*`; clap merges these two, see `flags`), then the TOML file named by
//! `--config` / `SLUICE_CONFIG` (`file`), then the one table of defaults (`defaults`).
//! `docs/configuration.md` lists every setting.

pub mod defaults;
mod file;
mod flags;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};

pub use self::file::FileSettings;
pub use self::flags::{CommonArgs, RunArgs};
use crate::policy::{DeliveryPolicy, Priority, Retention, RetentionPolicy};
use crate::redis_conn::RedisOptions;
use crate::secret::Secret;
use crate::source::bullmq::BullQueue;
use crate::writer::BatchPolicy;
use crate::writer::clickhouse::ChOptions;

/// The resolved settings of `sluice run`.
#[derive(Debug, Clone)]
pub struct Settings {
    pub redis: RedisOptions,
    pub clickhouse: ChOptions,
    pub plugins_dir: PathBuf,
    /// Compiled plugins, by file hash; None: no cache. `explicit`: set by the user (an error
    /// to be unable to use it) rather than the default (a warning).
    pub cache_dir: Option<(PathBuf, bool)>,
    /// `off` disables the admin server.
    pub admin_addr: String,
    pub admin_token: Option<Secret>,
    pub stream_prefix: String,
    /// How every pipeline delivers (plugins' `[delivery]` sections and priorities over it).
    pub delivery: DeliveryPolicy,
    /// How the writer batches rows into INSERTs.
    pub insert: BatchPolicy,
    /// Record batches and create deduplicating tables where the server allows (`auto`), or
    /// never (`off`). See `writer::dedup`.
    pub exactly_once: bool,
    pub call_timeout: Duration,
    pub max_memory_mb: usize,
    /// Priority of each event type (others: `default`).
    pub priorities: HashMap<String, Priority>,
    /// Plugin calls at once, per priority (high, default, low).
    pub concurrency: [usize; 3],
    /// `[plugins.<stem>]` sections of the config file.
    pub plugin_sections: HashMap<String, toml::Table>,
    /// `[tables.<name>] shared_with`: tables shared beyond their owner.
    pub table_shares: crate::writer::evolve::Shares,
    /// BullMQ queues consumed beside the streams (none: no BullMQ source).
    pub bullmq: Vec<BullQueue>,
    /// What the streams, the dead letters and BullMQ's finished sets keep.
    pub retention: RetentionPolicy,
    /// How often retention is applied and unread streams looked for (see `upkeep`).
    pub housekeeping_interval: Duration,
    /// Where the addresses came from, for messages that say what to change.
    pub origins: Origins,
}

/// Where a setting's value came from: `--clickhouse-url`, `SLUICE_CLICKHOUSE_URL`,
/// `clickhouse_url in sluice.toml`, or the default.
#[derive(Debug, Clone, Default)]
pub struct Origins {
    pub redis_url: String,
    pub clickhouse_url: String,
}

/// Where the value of one setting came from (flags and environment are merged by clap: an
/// equal environment variable means it came from there).
fn origin(
    flag: &str,
    env: &str,
    given: Option<&String>,
    file_key: &str,
    in_file: bool,
    file: Option<&PathBuf>,
) -> String {
    match (given, file) {
        (Some(v), _) if std::env::var(env).ok().as_ref() == Some(v) => env.to_string(),
        (Some(_), _) => flag.to_string(),
        (None, Some(f)) if in_file => format!("{file_key} in {}", f.display()),
        _ => format!("the default; set {flag} or {env}"),
    }
}

/// What the tools (`publish`, `dlq`, `replay`) need: how to reach Redis, and where the events are.
#[derive(Debug, Clone)]
pub struct ToolSettings {
    pub redis: RedisOptions,
    pub stream_prefix: String,
    /// Where the Redis URL came from.
    pub redis_origin: String,
}

/// A password given directly, or in a file; both is an error.
fn secret(name: &str, direct: Option<String>, file: Option<PathBuf>) -> Result<Option<Secret>> {
    match (direct.filter(|p| !p.is_empty()), file) {
        (Some(_), Some(_)) => bail!("{name} and {name}_FILE are both set: give one"),
        (Some(p), None) => Ok(Some(Secret(p))),
        (None, Some(f)) => crate::tls::read_secret(&format!("{name}_FILE"), &f).map(Some),
        (None, None) => Ok(None),
    }
}

/// A count setting: a number, or `off` (no limit).
fn count_or_off(name: &str, text: Option<String>, default: Option<u64>) -> Result<Option<u64>> {
    match text.as_deref().map(str::trim) {
        None => Ok(default),
        Some("off") => Ok(None),
        Some(t) => {
            t.parse::<u64>().map(Some).map_err(|_| anyhow::anyhow!("{name}: expected a number or `off`, got `{t}`"))
        }
    }
}

/// A duration setting (`30s`, `12h`, `7d`), or `off` (no limit).
fn duration_or_off(name: &str, text: Option<String>, default: Option<&str>) -> Result<Option<Duration>> {
    match text.as_deref().or(default).map(str::trim) {
        None | Some("off") => Ok(None),
        Some(t) => crate::source::delayed::parse_duration(t).map(Some).with_context(|| name.to_string()),
    }
}

/// A TOML value that may be a number or a string, as text.
fn toml_text(v: Option<toml::Value>) -> Option<String> {
    v.map(|v| match v {
        toml::Value::String(s) => s,
        other => other.to_string(),
    })
}

/// A comma-separated list, trimmed, without empty items.
fn list(text: &str) -> Vec<String> {
    text.split(',').map(|u| u.trim().to_string()).filter(|u| !u.is_empty()).collect()
}

impl CommonArgs {
    fn file(&self) -> Result<FileSettings> {
        match &self.config {
            Some(p) => FileSettings::load(p),
            None => Ok(FileSettings::default()),
        }
    }

    fn redis_options(&self, f: &FileSettings) -> Result<RedisOptions> {
        let urls = self.redis_url.clone().or(f.redis_url.clone()).unwrap_or_else(|| defaults::REDIS_URL.into());
        let o = RedisOptions {
            urls: list(&urls),
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

    fn redis_origin(&self, f: &FileSettings) -> String {
        let (given, file) = (self.redis_url.as_ref(), self.config.as_ref());
        origin("--redis-url", "SLUICE_REDIS_URL", given, "redis_url", f.redis_url.is_some(), file)
    }

    fn stream_prefix(&self, f: &FileSettings) -> String {
        self.stream_prefix.clone().or(f.stream_prefix.clone()).unwrap_or_else(|| defaults::STREAM_PREFIX.into())
    }

    /// The tools' settings.
    pub fn resolve(&self) -> Result<ToolSettings> {
        let f = self.file()?;
        Ok(ToolSettings {
            redis: self.redis_options(&f)?,
            stream_prefix: self.stream_prefix(&f),
            redis_origin: self.redis_origin(&f),
        })
    }
}

impl RunArgs {
    /// The host's settings: flags and environment, then the file, then the defaults; checked.
    pub fn resolve(&self) -> Result<Settings> {
        let f = self.common.file()?;
        let ms = Duration::from_millis;
        let batch_size = self.batch_size.or(f.batch_size).unwrap_or(defaults::BATCH_SIZE);
        let settings = Settings {
            redis: self.common.redis_options(&f)?,
            clickhouse: ChOptions {
                urls: list(
                    &self
                        .clickhouse_url
                        .clone()
                        .or(f.clickhouse_url.clone())
                        .unwrap_or_else(|| defaults::CLICKHOUSE_URL.into()),
                ),
                database: self
                    .clickhouse_database
                    .clone()
                    .or(f.clickhouse_database.clone())
                    .unwrap_or_else(|| defaults::CLICKHOUSE_DATABASE.into()),
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
            plugins_dir: self
                .plugins_dir
                .clone()
                .or(f.plugins_dir.clone())
                .unwrap_or_else(|| defaults::PLUGINS_DIR.into()),
            admin_addr: self.admin_addr.clone().or(f.admin_addr.clone()).unwrap_or_else(|| defaults::ADMIN_ADDR.into()),
            cache_dir: match self.cache_dir.clone().or(f.cache_dir.clone()) {
                Some(p) if p.as_os_str() == "off" => None,
                Some(p) => Some((p, true)),
                None => Some((defaults::cache_dir(), false)),
            },
            admin_token: self.admin_token.clone().filter(|t| !t.is_empty()).map(Secret),
            stream_prefix: self.common.stream_prefix(&f),
            delivery: DeliveryPolicy {
                batch_size,
                block: ms(f.block_ms.unwrap_or(defaults::BLOCK_MS)),
                max_inflight_events: f.max_inflight_events.unwrap_or(defaults::MAX_INFLIGHT_EVENTS).max(batch_size),
                max_attempts: self.max_attempts.or(f.max_attempts).unwrap_or(defaults::MAX_ATTEMPTS),
                retry_base: ms(f.retry_base_ms.unwrap_or(defaults::RETRY_BASE_MS)),
                retry_max: ms(f.retry_max_ms.unwrap_or(defaults::RETRY_MAX_MS)),
                visibility_timeout: ms(self
                    .visibility_timeout_ms
                    .or(f.visibility_timeout_ms)
                    .unwrap_or(defaults::VISIBILITY_TIMEOUT_MS)),
                stop_grace: Duration::from_secs(
                    self.shutdown_grace_s.or(f.shutdown_grace_s).unwrap_or(defaults::SHUTDOWN_GRACE_S),
                ),
                priority: Priority::Default,
                idempotency: self.idempotency(&f)?,
            },
            insert: BatchPolicy {
                max_rows: self.insert_max_rows.or(f.insert_max_rows).unwrap_or(defaults::INSERT_MAX_ROWS),
                linger: ms(self.insert_linger_ms.or(f.insert_linger_ms).unwrap_or(defaults::INSERT_LINGER_MS)),
                max_bytes: defaults::INSERT_MAX_BYTES,
            },
            exactly_once: match self.exactly_once.clone().or(f.exactly_once.clone()).as_deref() {
                None | Some("auto") => true,
                Some("off") => false,
                Some(other) => bail!("exactly_once = {other:?}: expected \"auto\" or \"off\""),
            },
            call_timeout: ms(self.call_timeout_ms.or(f.call_timeout_ms).unwrap_or(defaults::CALL_TIMEOUT_MS)),
            max_memory_mb: f.max_memory_mb.unwrap_or(defaults::MAX_MEMORY_MB),
            priorities: {
                let mut m = HashMap::new();
                for (t, p) in f.priorities.clone().unwrap_or_default() {
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
            retention: self.retention(&f)?,
            origins: Origins {
                redis_url: self.common.redis_origin(&f),
                clickhouse_url: origin(
                    "--clickhouse-url",
                    "SLUICE_CLICKHOUSE_URL",
                    self.clickhouse_url.as_ref(),
                    "clickhouse_url",
                    f.clickhouse_url.is_some(),
                    self.common.config.as_ref(),
                ),
            },
            housekeeping_interval: ms(f
                .housekeeping_interval_ms
                .unwrap_or(defaults::HOUSEKEEPING_INTERVAL_MS)
                .max(100)),
            concurrency: {
                let c = f.concurrency.clone().unwrap_or_default();
                if let Some(k) = c.keys().find(|k| !["high", "default", "low"].contains(&k.as_str())) {
                    bail!("concurrency.{k}: unknown priority (use high, default or low)");
                }
                let [high, default, low] = defaults::CONCURRENCY;
                [
                    c.get("high").copied().unwrap_or(high),
                    c.get("default").copied().unwrap_or(default),
                    c.get("low").copied().unwrap_or(low),
                ]
            },
        };
        settings.validate()?;
        Ok(settings)
    }
}

impl RunArgs {
    fn idempotency(&self, f: &FileSettings) -> Result<Option<crate::policy::Idempotency>> {
        let keys = match (&self.idempotency_key, &f.idempotency_key) {
            (Some(k), _) => k.clone(),
            (None, Some(toml::Value::Array(a))) => {
                let keys: Option<Vec<&str>> = a.iter().map(|v| v.as_str()).collect();
                keys.context("idempotency_key: expected a key or a list of keys (strings)")?.join(",")
            }
            (None, Some(v)) => toml_text(Some(v.clone())).unwrap_or_default(),
            (None, None) => defaults::IDEMPOTENCY_KEY.to_string(),
        };
        let window = duration_or_off(
            "idempotency_window",
            self.idempotency_window.clone().or(f.idempotency_window.clone()),
            Some(defaults::IDEMPOTENCY_WINDOW),
        )?;
        crate::policy::Idempotency::parse(&keys, window).map_err(|e| anyhow::anyhow!("idempotency_key: {e}"))
    }

    fn retention(&self, f: &FileSettings) -> Result<RetentionPolicy> {
        let streams = Retention {
            max_len: count_or_off(
                "retention_max_len",
                self.retention_max_len.clone().or(toml_text(f.retention_max_len.clone())),
                None,
            )?,
            max_age: duration_or_off(
                "retention_max_age",
                self.retention_max_age.clone().or(f.retention_max_age.clone()),
                Some(defaults::RETENTION_MAX_AGE),
            )?,
        };
        let mut per_type = HashMap::new();
        for (t, s) in f.retention.clone().unwrap_or_default() {
            let name = |k: &str| format!("retention.{t}.{k}");
            let r = Retention {
                max_len: match toml_text(s.max_len) {
                    None => streams.max_len,
                    text => count_or_off(&name("max_len"), text, None)?,
                },
                max_age: match s.max_age {
                    None => streams.max_age,
                    text => duration_or_off(&name("max_age"), text, None)?,
                },
            };
            per_type.insert(t, r);
        }
        Ok(RetentionPolicy {
            streams,
            per_type,
            dead_letters: Retention {
                max_len: count_or_off(
                    "dlq_max_len",
                    self.dlq_max_len.clone().or(toml_text(f.dlq_max_len.clone())),
                    Some(defaults::DLQ_MAX_LEN),
                )?,
                max_age: duration_or_off("dlq_max_age", f.dlq_max_age.clone(), None)?,
            },
            bullmq_keep_completed: count_or_off(
                "bullmq_keep_completed",
                toml_text(f.bullmq_keep_completed.clone()),
                Some(defaults::BULLMQ_KEEP_COMPLETED),
            )?,
            bullmq_keep_failed: count_or_off(
                "bullmq_keep_failed",
                toml_text(f.bullmq_keep_failed.clone()),
                Some(defaults::BULLMQ_KEEP_FAILED),
            )?,
        })
    }
}

impl Settings {
    pub fn validate(&self) -> Result<()> {
        let d = &self.delivery;
        if d.batch_size == 0 || d.batch_size > 100_000 {
            bail!("batch_size must be between 1 and 100000, got {}", d.batch_size);
        }
        if self.insert.max_rows == 0 || self.insert.max_rows > 1_048_576 {
            bail!("insert_max_rows must be between 1 and 1048576 (one ClickHouse block), got {}", self.insert.max_rows);
        }
        if d.max_inflight_events < d.batch_size {
            bail!("max_inflight_events ({}) must be at least batch_size ({})", d.max_inflight_events, d.batch_size);
        }
        if d.max_attempts == 0 {
            bail!("max_attempts must be at least 1");
        }
        if d.visibility_timeout < Duration::from_secs(1) {
            bail!("visibility_timeout_ms must be at least 1000");
        }
        self.redis.validate()?;
        if self.clickhouse.urls.is_empty() {
            bail!("SLUICE_CLICKHOUSE_URL is empty");
        }
        if let Some(u) = self.clickhouse.urls.iter().find(|u| !(u.starts_with("http://") || u.starts_with("https://")))
        {
            bail!(
                "SLUICE_CLICKHOUSE_URL must be http:// or https:// URLs (comma-separated for several endpoints), got `{}`",
                crate::secret::redact_url(u)
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
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    /// `sluice run`'s flags alone.
    #[derive(Parser)]
    struct Run {
        #[command(flatten)]
        args: RunArgs,
    }

    /// The variables the tests below would read through clap: set in the test's environment,
    /// they would make the defaults untestable, so those tests say so and stop.
    fn environment_is_clean() -> bool {
        let set: Vec<String> = std::env::vars()
            .map(|(k, _)| k)
            .filter(|k| k.starts_with("SLUICE_") && !k.starts_with("SLUICE_TEST") && k != "SLUICE_LOG")
            .collect();
        if !set.is_empty() {
            eprintln!("skipped: SLUICE_* variables are set in this environment: {set:?}");
        }
        set.is_empty()
    }

    fn resolve(args: &[&str]) -> Result<Settings> {
        Run::try_parse_from(["run"].iter().chain(args)).map_err(|e| anyhow::anyhow!("{e}"))?.args.resolve()
    }

    fn file(toml: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("sluice-config-test-{}.toml", uuid::Uuid::new_v4()));
        std::fs::write(&p, toml).unwrap();
        p
    }

    #[test]
    fn nothing_given_means_the_defaults_table() {
        if !environment_is_clean() {
            return;
        }
        let s = resolve(&[]).unwrap();
        assert_eq!(s.redis.urls, [defaults::REDIS_URL]);
        assert_eq!(s.clickhouse.urls, [defaults::CLICKHOUSE_URL]);
        assert_eq!(s.clickhouse.database, defaults::CLICKHOUSE_DATABASE);
        assert_eq!(s.plugins_dir, PathBuf::from(defaults::PLUGINS_DIR));
        assert_eq!(s.admin_addr, defaults::ADMIN_ADDR);
        assert_eq!(s.stream_prefix, defaults::STREAM_PREFIX);
        let d = &s.delivery;
        assert_eq!(d.batch_size, defaults::BATCH_SIZE);
        assert_eq!(d.block, Duration::from_millis(defaults::BLOCK_MS));
        assert_eq!(d.max_inflight_events, defaults::MAX_INFLIGHT_EVENTS);
        assert_eq!(d.max_attempts, defaults::MAX_ATTEMPTS);
        assert_eq!(d.retry_base, Duration::from_millis(defaults::RETRY_BASE_MS));
        assert_eq!(d.retry_max, Duration::from_millis(defaults::RETRY_MAX_MS));
        assert_eq!(d.visibility_timeout, Duration::from_millis(defaults::VISIBILITY_TIMEOUT_MS));
        assert_eq!(d.stop_grace, Duration::from_secs(defaults::SHUTDOWN_GRACE_S));
        assert_eq!(s.insert.max_rows, defaults::INSERT_MAX_ROWS);
        assert_eq!(s.insert.linger, Duration::from_millis(defaults::INSERT_LINGER_MS));
        assert_eq!(s.call_timeout, Duration::from_millis(defaults::CALL_TIMEOUT_MS));
        assert_eq!(s.max_memory_mb, defaults::MAX_MEMORY_MB);
        assert_eq!(s.concurrency, defaults::CONCURRENCY);
        assert!(s.exactly_once && s.bullmq.is_empty() && s.admin_token.is_none());
        let i = d.idempotency.as_ref().expect("on by default");
        assert_eq!(i.keys.iter().map(|k| k.to_string()).collect::<Vec<_>>().join(","), defaults::IDEMPOTENCY_KEY);
        assert_eq!(i.window, Duration::from_secs(600));
    }

    #[test]
    fn the_sample_config_file_says_the_defaults() {
        if !environment_is_clean() {
            return;
        }
        let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/sluice.toml");
        let s = resolve(&["--config", sample]).unwrap();
        let d = resolve(&[]).unwrap();
        assert_eq!((&s.delivery, &s.retention), (&d.delivery, &d.retention));
        assert_eq!((s.insert.max_rows, s.insert.linger), (d.insert.max_rows, d.insert.linger));
    }

    #[test]
    fn idempotency_settings() {
        if !environment_is_clean() {
            return;
        }
        let f = file("idempotency_key = [\"payload:meta.id\", \"job-id\"]\nidempotency_window = \"1h\"\n");
        let s = resolve(&["--config", f.to_str().unwrap()]).unwrap();
        let i = s.delivery.idempotency.unwrap();
        assert_eq!((i.keys.len(), i.window), (2, Duration::from_secs(3600)));
        assert!(resolve(&["--idempotency-key", "off"]).unwrap().delivery.idempotency.is_none());
        let e = resolve(&["--idempotency-key", "eventId"]).unwrap_err().to_string();
        assert!(e.contains("unknown idempotency key `eventId`"), "{e}");
    }

    #[test]
    fn flags_win_over_the_file_which_wins_over_the_defaults() {
        if !environment_is_clean() {
            return;
        }
        let f = file(
            r#"batch_size = 100
               insert_linger_ms = 250
               retry_base_ms = 2000
               shutdown_grace_s = 5
               exactly_once = "off"
               [priorities]
               "order.created" = "high"
               [concurrency]
               low = 3
               [tables.orders]
               shared_with = ["billing"]"#,
        );
        let s = resolve(&["--config", f.to_str().unwrap(), "--batch-size", "200", "--priority", "a=low"]).unwrap();
        std::fs::remove_file(&f).unwrap();
        assert_eq!(s.delivery.batch_size, 200, "the flag");
        assert_eq!(s.insert.linger, Duration::from_millis(250), "the file");
        assert_eq!(s.delivery.retry_base, Duration::from_millis(2000));
        assert_eq!(s.delivery.stop_grace, Duration::from_secs(5));
        assert!(!s.exactly_once);
        assert_eq!(s.priorities["order.created"], Priority::High);
        assert_eq!(s.priorities["a"], Priority::Low);
        assert_eq!(s.concurrency, [4, 2, 3]);
        assert_eq!(s.table_shares["orders"], ["billing"]);
        // max_inflight_events is at least one batch.
        let s = resolve(&["--batch-size", "60000"]).unwrap();
        assert_eq!(s.delivery.max_inflight_events, 60_000);
    }

    #[test]
    fn a_bad_value_is_one_error_naming_it() {
        if !environment_is_clean() {
            return;
        }
        let error = |args: &[&str]| format!("{:#}", resolve(args).unwrap_err());
        assert!(error(&["--batch-size", "0"]).contains("batch_size must be between 1 and 100000, got 0"));
        assert!(error(&["--priority", "x=urgent"]).contains("--priority x=urgent: unknown priority `urgent`"));
        assert!(error(&["--priority", "x"]).contains("expected TYPE=high|default|low"));
        assert!(error(&["--clickhouse-url", "tcp://h:9000"]).contains("must be http:// or https://"));
        assert!(error(&["--max-attempts", "0"]).contains("max_attempts must be at least 1"));
        let f = file("batch_sise = 10");
        let e = error(&["--config", f.to_str().unwrap()]);
        std::fs::remove_file(&f).unwrap();
        assert!(
            e.contains("invalid config file") && e.contains("unknown key `batch_sise` — did you mean `batch_size`?"),
            "{e}"
        );
        let f = file("[concurrency]\nurgent = 1");
        let e = error(&["--config", f.to_str().unwrap()]);
        std::fs::remove_file(&f).unwrap();
        assert!(e.contains("concurrency.urgent: unknown priority"), "{e}");
    }

    #[test]
    fn the_plugin_limits_offline_commands_use_are_the_hosts_defaults() {
        let limits = crate::plugin::PluginLimits::default();
        assert_eq!(limits.call_timeout, Duration::from_millis(defaults::CALL_TIMEOUT_MS));
        assert_eq!(limits.max_memory_bytes, defaults::MAX_MEMORY_MB << 20);
    }

    #[test]
    fn the_help_says_the_defaults_the_table_has() {
        let help = Run::command().render_long_help().to_string();
        let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
        for (flag, default) in [
            ("--redis-url", defaults::REDIS_URL.to_string()),
            ("--clickhouse-url", defaults::CLICKHOUSE_URL.to_string()),
            ("--clickhouse-database", defaults::CLICKHOUSE_DATABASE.to_string()),
            ("--stream-prefix", defaults::STREAM_PREFIX.to_string()),
            ("--plugins-dir", defaults::PLUGINS_DIR.to_string()),
            ("--admin-addr", defaults::ADMIN_ADDR.to_string()),
            ("--batch-size", defaults::BATCH_SIZE.to_string()),
            ("--insert-max-rows", defaults::INSERT_MAX_ROWS.to_string()),
            ("--insert-linger-ms", defaults::INSERT_LINGER_MS.to_string()),
            ("--max-attempts", defaults::MAX_ATTEMPTS.to_string()),
            ("--visibility-timeout-ms", defaults::VISIBILITY_TIMEOUT_MS.to_string()),
            ("--call-timeout-ms", defaults::CALL_TIMEOUT_MS.to_string()),
            ("--shutdown-grace-s", defaults::SHUTDOWN_GRACE_S.to_string()),
        ] {
            // The flag's paragraph: from the flag to the next flag.
            let at = help.find(&format!("{flag} ")).unwrap_or_else(|| panic!("{flag} not in the help"));
            let end = help[at + flag.len()..].find(" --").map(|e| at + flag.len() + e).unwrap_or(help.len());
            let text = &help[at..end];
            assert!(text.contains(&format!("[default: {default}]")), "{flag} should say [default: {default}]: {text}");
        }
    }
}
