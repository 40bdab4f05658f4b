//! A plugin's configuration: the host's defaults, the host config's `[plugins.<stem>]`
//! section, and the sidecar file `<stem>.toml` beside `<stem>.wasm` — settings, secrets,
//! limits, delivery, table prefix, grants, and (host config only) the name the file is bound to.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use std::time::Duration;

use anyhow::{Result, anyhow};

use super::PluginLimits;

/// The sidecar file of a plugin: `<stem>.toml` beside `<stem>.wasm`. Only what the host
/// understands is allowed in it, so a typo is an error rather than a silently ignored line.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Sidecar {
    /// What the plugin reads with `config-get`. Values are strings; numbers and booleans are
    /// accepted and passed on as their text.
    #[serde(default)]
    settings: HashMap<String, toml::Value>,
    /// Settings whose values come from environment variables of the host: setting name →
    /// variable name. Only this plugin can read them; they are never logged or shown.
    #[serde(default)]
    secrets: HashMap<String, String>,
    /// This plugin's limits, overriding the host's defaults.
    #[serde(default)]
    limits: SidecarLimits,
    /// Retries, priority and which of its event types to consume.
    #[serde(default)]
    delivery: Delivery,
    #[serde(default)]
    clickhouse: SidecarClickHouse,
    /// What the sandbox lets this plugin see beyond the WIT interface.
    #[serde(default)]
    grants: Grants,
    /// This file is a canary of the plugin another file runs (see `rollout`).
    rollout: Option<RolloutConfig>,
}

/// A plugin's own delivery settings (the host's apply where unset).
#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Delivery {
    pub max_attempts: Option<u64>,
    pub retry_base_ms: Option<u64>,
    pub retry_max_ms: Option<u64>,
    /// `high`, `default` or `low`, for all its event types.
    pub priority: Option<String>,
    /// Consume only these of the event types the plugin subscribes to.
    pub event_types: Option<Vec<String>>,
    /// Where its events' ids are found (a key, a list, or `"off"`), over the host's.
    pub idempotency_key: Option<toml::Value>,
    /// How long its events' ids are remembered (`"10m"`, `"off"`), over the host's.
    pub idempotency_window: Option<String>,
}

impl Delivery {
    /// This plugin's idempotency over the host's (`host`: the host's, `None` when off there).
    pub fn idempotency(
        &self,
        host: Option<&crate::policy::Idempotency>,
    ) -> Result<Option<crate::policy::Idempotency>, String> {
        if self.idempotency_key.is_none() && self.idempotency_window.is_none() {
            return Ok(host.cloned());
        }
        let keys = match &self.idempotency_key {
            Some(toml::Value::String(s)) => s.clone(),
            Some(toml::Value::Array(a)) => a
                .iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or("delivery.idempotency_key: expected a key or a list of keys (strings)")?
                .join(","),
            Some(_) => return Err("delivery.idempotency_key: expected a key or a list of keys (strings)".into()),
            None => match host {
                Some(h) => h.keys.iter().map(|k| k.to_string()).collect::<Vec<_>>().join(","),
                None => crate::config::defaults::IDEMPOTENCY_KEY.to_string(),
            },
        };
        let window = match self.idempotency_window.as_deref().map(str::trim) {
            Some("off") => None,
            Some(w) => Some(
                crate::source::delayed::parse_duration(w).map_err(|e| format!("delivery.idempotency_window: {e:#}"))?,
            ),
            None => Some(host.map(|h| h.window).unwrap_or_else(|| {
                crate::source::delayed::parse_duration(crate::config::defaults::IDEMPOTENCY_WINDOW).expect("valid")
            })),
        };
        crate::policy::Idempotency::parse(&keys, window).map_err(|e| format!("delivery.idempotency_key: {e}"))
    }
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SidecarClickHouse {
    /// Prepended to every table name the plugin declares (e.g. `staging_`).
    table_prefix: Option<String>,
}

/// Capabilities granted to one plugin. Nothing is granted by default.
#[derive(Debug, Default, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grants {
    /// Host directories the plugin may read, at the same path inside the sandbox.
    #[serde(default)]
    pub read_dirs: Vec<PathBuf>,
    /// Host environment variables passed to the plugin (those that are set).
    #[serde(default)]
    pub env: Vec<String>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SidecarLimits {
    call_timeout_ms: Option<u64>,
    max_memory_mb: Option<usize>,
    max_rows_per_event: Option<u32>,
    max_bytes_per_event: Option<usize>,
}

/// What a plugin's sidecar file gives it.
#[derive(Debug, Default)]
pub struct PluginConfig {
    /// The name the host config binds this file to (`[plugins.<stem>] name`), if not its stem.
    pub name: Option<String>,
    pub settings: HashMap<String, String>,
    /// The host's defaults with the sidecar's `[limits]` applied.
    pub limits: PluginLimits,
    pub delivery: Delivery,
    pub table_prefix: Option<String>,
    pub grants: Grants,
    pub rollout: Option<RolloutSettings>,
}

/// What the host gives every plugin before its sidecar file: its default limits, and the
/// `[plugins.<stem>]` sections of the host's config file (same keys as a sidecar file).
#[derive(Debug, Default, Clone)]
pub struct PluginDefaults {
    pub limits: PluginLimits,
    pub sections: HashMap<String, toml::Table>,
}

/// Reads the plugin's configuration: the host config's `[plugins.<stem>]` section, then the
/// sidecar file `<stem>.toml` over it (key by key): settings, secrets (from the environment),
/// limits over the host's defaults, delivery, table prefix and grants. Every error names where
/// the bad key is.
pub fn read_sidecar(wasm: &Path, defaults: &PluginDefaults) -> Result<PluginConfig> {
    let path = wasm.with_extension("toml");
    let stem = wasm.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let mut merged = defaults.sections.get(&stem).cloned().unwrap_or_default();
    // Which plugin a file is, is the operator's to say, in the host config alone (see
    // `identity`): not in the sidecar, which travels with the file.
    let name = match merged.remove("name") {
        None => None,
        Some(toml::Value::String(n)) => Some(n),
        Some(other) => {
            return Err(anyhow!(
                "[plugins.{stem}] name of the host config must be a string, got a {}",
                other.type_str()
            ));
        }
    };
    let mut sources = Vec::new();
    if !merged.is_empty() {
        sources.push(format!("[plugins.{stem}] of the host config"));
    }
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let file: toml::Table = toml::from_str(&text)
                .map_err(|e| crate::suggest::toml_error(&format!("plugin settings file {}", path.display()), &e))?;
            if file.contains_key("name") {
                return Err(anyhow!(
                    "{}: `name` cannot be set in a plugin's own settings file: which plugin a file is, the host config says ([plugins.{stem}] name = \"...\")",
                    path.display()
                ));
            }
            for (k, v) in file {
                match (merged.get_mut(&k), v) {
                    (Some(toml::Value::Table(base)), toml::Value::Table(over)) => base.extend(over),
                    (_, v) => {
                        merged.insert(k, v);
                    }
                }
            }
            sources.push(path.display().to_string());
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(anyhow!("cannot read plugin settings {}: {e}", path.display())),
    }
    if sources.is_empty() {
        return Ok(PluginConfig { name, limits: defaults.limits, ..Default::default() });
    }
    let from = sources.join(" and ");
    let bad = |what: String| anyhow!("invalid plugin settings ({from}): {what}");
    let sidecar: Sidecar =
        serde::Deserialize::deserialize(toml::Value::Table(merged)).map_err(|e: toml::de::Error| bad(e.to_string()))?;
    let defaults = defaults.limits;
    let mut settings = HashMap::new();
    for (k, v) in sidecar.settings {
        let v = match v {
            toml::Value::String(s) => s,
            toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Boolean(_) => v.to_string(),
            other => {
                return Err(bad(format!("setting `{k}` is a {}; use a string, number or boolean", other.type_str())));
            }
        };
        settings.insert(k, v);
    }
    for (k, var) in sidecar.secrets {
        let value =
            std::env::var(&var).map_err(|_| bad(format!("secret `{k}`: the environment variable {var} is not set")))?;
        settings.insert(k, value);
    }
    let l = sidecar.limits;
    let mut limits = defaults;
    if let Some(ms) = l.call_timeout_ms {
        if !(1..=600_000).contains(&ms) {
            return Err(bad(format!("limits.call_timeout_ms must be between 1 and 600000, got {ms}")));
        }
        limits.call_timeout = Duration::from_millis(ms);
    }
    if let Some(mb) = l.max_memory_mb {
        if !(1..=4096).contains(&mb) {
            return Err(bad(format!("limits.max_memory_mb must be between 1 and 4096, got {mb}")));
        }
        limits.max_memory_bytes = mb << 20;
    }
    if let Some(n) = l.max_rows_per_event {
        if n == 0 {
            return Err(bad("limits.max_rows_per_event must be at least 1".into()));
        }
        limits.output.max_rows_per_event = n;
    }
    if let Some(n) = l.max_bytes_per_event {
        if n == 0 {
            return Err(bad("limits.max_bytes_per_event must be at least 1".into()));
        }
        limits.output.max_bytes_per_event = n;
    }
    let d = &sidecar.delivery;
    if d.max_attempts == Some(0) {
        return Err(bad("delivery.max_attempts must be at least 1".into()));
    }
    if let Some(p) = &d.priority {
        p.parse::<crate::policy::Priority>().map_err(|e| bad(format!("delivery.priority: {e}")))?;
    }
    if d.retry_base_ms == Some(0) || d.retry_max_ms == Some(0) {
        return Err(bad("delivery.retry_base_ms and retry_max_ms must be at least 1".into()));
    }
    d.idempotency(None).map_err(bad)?;
    let table_prefix = sidecar.clickhouse.table_prefix;
    if let Some(p) = &table_prefix {
        crate::schema::check_identifier("clickhouse.table_prefix", p).map_err(bad)?;
    }
    for dir in &sidecar.grants.read_dirs {
        if !dir.is_absolute() || !dir.is_dir() {
            return Err(bad(format!("grants.read_dirs: {} is not an absolute path to a directory", dir.display())));
        }
    }
    let rollout = sidecar.rollout.as_ref().map(|r| r.settings()).transpose().map_err(bad)?;
    Ok(PluginConfig {
        name,
        settings,
        limits,
        delivery: sidecar.delivery,
        table_prefix,
        grants: sidecar.grants,
        rollout,
    })
}

/// The `[rollout]` section of a plugin's settings, as written.
#[derive(Debug, Default, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutConfig {
    pub(crate) share: Option<f64>,
    pub(crate) promote_after_events: Option<u64>,
    pub(crate) promote_after: Option<String>,
    pub(crate) min_events: Option<u64>,
    pub(crate) max_failure_increase: Option<f64>,
}

/// A candidate's rollout rules.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RolloutSettings {
    /// The share of events (by hash of their id) the candidate handles, in (0, 1].
    pub share: f64,
    /// Candidate events needed before promotion.
    pub promote_after_events: u64,
    /// And time since the rollout began.
    #[serde(serialize_with = "seconds")]
    pub promote_after: Duration,
    /// Candidate events needed before its failure rate is judged.
    pub min_events: u64,
    /// How much higher than the stable version's its failure rate may be (0.05: five points).
    pub max_failure_increase: f64,
}

fn seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_secs())
}

impl RolloutConfig {
    /// The rules, defaults filled in; the error names the bad key.
    pub fn settings(&self) -> Result<RolloutSettings, String> {
        let share = self.share.unwrap_or(0.1);
        if !(share > 0.0 && share <= 1.0) {
            return Err(format!("rollout.share must be above 0 and at most 1 (a fraction of the events), got {share}"));
        }
        let inc = self.max_failure_increase.unwrap_or(0.05);
        if !(0.0..1.0).contains(&inc) {
            return Err(format!(
                "rollout.max_failure_increase must be at least 0 and below 1 (0.05: five points more than the running version), got {inc}"
            ));
        }
        let promote_after = match &self.promote_after {
            Some(t) => {
                crate::source::delayed::parse_duration(t).map_err(|e| format!("rollout.promote_after: {e:#}"))?
            }
            None => Duration::from_secs(600),
        };
        let min_events = self.min_events.unwrap_or(50);
        if min_events == 0 {
            return Err("rollout.min_events must be at least 1".into());
        }
        let promote_after_events = self.promote_after_events.unwrap_or(1000);
        if promote_after_events < min_events {
            return Err(format!(
                "rollout.promote_after_events ({promote_after_events}) must be at least rollout.min_events ({min_events}): a candidate is judged before it can be promoted"
            ));
        }
        Ok(RolloutSettings { share, promote_after_events, promote_after, min_events, max_failure_increase: inc })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_rules_are_named() {
        let bad = |c: RolloutConfig| c.settings().unwrap_err();
        assert!(bad(RolloutConfig { share: Some(0.0), ..Default::default() }).contains("rollout.share"));
        assert!(bad(RolloutConfig { share: Some(1.5), ..Default::default() }).contains("rollout.share"));
        assert!(
            bad(RolloutConfig { promote_after: Some("soon".into()), ..Default::default() })
                .contains("rollout.promote_after")
        );
        assert!(
            bad(RolloutConfig { max_failure_increase: Some(-0.1), ..Default::default() })
                .contains("max_failure_increase")
        );
        assert!(
            bad(RolloutConfig { promote_after_events: Some(20), ..Default::default() })
                .contains("rollout.min_events (50)")
        );
    }
}
