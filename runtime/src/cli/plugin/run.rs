//! `sluice plugin run`, and reading event files for it and for fixtures.

use std::io::Write;
use std::path::Path;

use anyhow::Result;

use super::offline::{load_one, outcomes, read_events};

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
    for mut o in outcomes(&p, &events).await? {
        if o.get("error").is_some() {
            all_ok = false;
            let i = o["event"].as_u64().unwrap_or(0) as usize;
            o["id"] = serde_json::json!(events[i].id);
        }
        writeln!(out, "{o}")?;
    }
    Ok(all_ok)
}
