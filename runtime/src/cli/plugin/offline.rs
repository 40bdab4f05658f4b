//! Running a plugin with no Redis or ClickHouse, shared by `plugin run`, `plugin test` and
//! `plugin inspect`: loading it on its own, reading event files, and what each event produced.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use serde_json::{Value, json};

use crate::plugin::{LoadedPlugin, Sandbox, SandboxEngine, wit};

/// Loads a plugin file on its own (no host config), for the commands that run plugins offline.
pub(super) async fn load_one(path: &Path) -> Result<LoadedPlugin> {
    // The host's compiled-code cache, best effort: a Python or JavaScript component takes
    // seconds to compile, and the edit → build → test loop runs this again and again.
    let mut engine = SandboxEngine::new()?;
    let dir = std::env::var_os("SLUICE_CACHE_DIR").map(PathBuf::from);
    if dir.as_ref().is_none_or(|d| d.as_os_str() != "off") {
        let dir = dir.unwrap_or_else(crate::config::defaults::cache_dir);
        if let Ok(cached) = engine.clone().with_cache(&dir) {
            engine = cached;
        }
    }
    LoadedPlugin::load(&engine, path, &crate::plugin::PluginDefaults::default()).await
}

/// What each event produced, in order: failures first, then rows table by table.
pub(super) async fn outcomes(plugin: &Arc<LoadedPlugin>, events: &[wit::Event]) -> Result<Vec<Value>> {
    let mut sandbox = Sandbox::new(plugin.clone());
    let mut out = Vec::new();
    for (i, e) in events.iter().enumerate() {
        // One event per call, so that each event's output is its own.
        let outcome = sandbox.run(std::slice::from_ref(e), &[]).await;
        for f in &outcome.failures {
            let kind = if f.permanent { "permanent" } else { "transient" };
            out.push(json!({"event": i, "error": kind, "message": f.message}));
        }
        for (t, rows) in outcome.tables.iter().enumerate() {
            let schema = &plugin.tables[t];
            for row in crate::plugin::rows::rowbinary_to_json(&rows.data, schema).map_err(anyhow::Error::msg)? {
                out.push(json!({"event": i, "table": schema.name, "row": row}));
            }
        }
    }
    Ok(out)
}

/// Reads events for `plugin run` / fixtures: one object, an array, or JSON lines.
pub(super) fn read_events(path: &Path, event_type: Option<&str>) -> Result<Vec<wit::Event>> {
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
pub(super) fn events_from_values(
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
