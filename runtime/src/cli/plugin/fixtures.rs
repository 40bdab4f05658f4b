//! `sluice plugin test`: runs a plugin on fixture files — events in, expected rows or errors
//! out — with no Redis or ClickHouse, and prints a readable difference when they disagree.
//!
//! A fixture is a JSON file a reviewer can read:
//! ```json
//! {
//!   "description": "a promo code use becomes one row",
//!   "events": [{"type": "PromoCodeAppliedEvent", "id": "e1", "ts": 1717245000000, "payload": {...}}],
//!   "expect": [
//!     {"event": 0, "table": "promo_code_usages_analytics", "row": {"promo_code": "SPRING", ...}},
//!     {"event": 1, "error": "permanent", "message_contains": "missing field `promoCodeId`"}
//!   ]
//! }
//! ```
//! `expect` lists, in order, what each event produced: its failure, or its rows table by table
//! (as ClickHouse will store them: dates as text, 64-bit integers as strings, like ClickHouse's
//! JSON). Every row must match exactly; a failure matches its kind and, if given, a substring.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::offline::outcomes;

/// The fixture files: `path` itself, or the `*.json` files of a directory, sorted.
fn fixture_files(path: &Path) -> Result<Vec<PathBuf>> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .with_context(|| format!("cannot read the fixtures directory {}", path.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("json"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("no *.json fixture in {}", path.display());
    }
    Ok(files)
}

/// Why an expected item and the actual one differ; None if they match.
fn difference(expected: &Value, actual: &Value) -> Option<Vec<String>> {
    let (e_event, a_event) = (&expected["event"], &actual["event"]);
    if let Some(kind) = expected.get("error") {
        let mut why = Vec::new();
        if a_event != e_event || actual.get("error") != Some(kind) {
            return Some(vec![format!("expected {expected}"), format!("got      {actual}")]);
        }
        if let Some(needle) = expected.get("message_contains").and_then(Value::as_str) {
            let message = actual["message"].as_str().unwrap_or_default();
            if !message.contains(needle) {
                why.push(format!("message does not contain {needle:?}: {message:?}"));
            }
        }
        return if why.is_empty() { None } else { Some(why) };
    }
    if actual.get("error").is_some() || a_event != e_event || actual["table"] != expected["table"] {
        return Some(vec![format!("expected {expected}"), format!("got      {actual}")]);
    }
    let (e_row, a_row) = (expected["row"].as_object(), actual["row"].as_object());
    let (Some(e_row), Some(a_row)) = (e_row, a_row) else {
        return Some(vec![format!("expected a \"row\" object in {expected}")]);
    };
    let mut why = Vec::new();
    for (k, ev) in e_row {
        match a_row.get(k) {
            None => why.push(format!("{k}: expected {ev}, but the table has no such column")),
            Some(av) if av != ev => why.push(format!("{k}: expected {ev}, got {av}")),
            _ => {}
        }
    }
    for (k, av) in a_row {
        if !e_row.contains_key(k) {
            why.push(format!("{k}: got {av}, not in the expected row"));
        }
    }
    if why.is_empty() { None } else { Some(why) }
}

/// Runs every fixture; prints `ok`/`FAIL` per file with the differences. Ok(true) if all pass.
pub async fn run(plugin_file: &Path, fixtures: &Path) -> Result<bool> {
    let plugin = Arc::new(super::offline::load_one(plugin_file).await?);
    let (mut passed, mut failed) = (0, 0);
    for file in fixture_files(fixtures)? {
        let label = file.display().to_string();
        let text = std::fs::read_to_string(&file).with_context(|| format!("cannot read {label}"))?;
        let fixture: Value = serde_json::from_str(&text).with_context(|| format!("{label} is not JSON"))?;
        let events = fixture["events"].as_array().with_context(|| format!("{label}: no \"events\" array"))?;
        let expect = fixture["expect"].as_array().with_context(|| format!("{label}: no \"expect\" array"))?;
        let events = super::offline::events_from_values(events.clone(), &label, None)?;
        let actual = outcomes(&plugin, &events).await?;
        let mut problems = Vec::new();
        for i in 0..expect.len().max(actual.len()) {
            match (expect.get(i), actual.get(i)) {
                (Some(e), Some(a)) => {
                    if let Some(why) = difference(e, a) {
                        problems.push(format!("item {i} (event {}):", e["event"]));
                        problems.extend(why.into_iter().map(|w| format!("    {w}")));
                    }
                }
                (Some(e), None) => problems.push(format!("item {i}: missing: {e}")),
                (None, Some(a)) => problems.push(format!("item {i}: unexpected: {a}")),
                (None, None) => {}
            }
        }
        let about = fixture["description"].as_str().map(|d| format!(" — {d}")).unwrap_or_default();
        if problems.is_empty() {
            passed += 1;
            println!("ok   {label}{about} ({} events, {} outcomes)", events.len(), actual.len());
        } else {
            failed += 1;
            println!("FAIL {label}{about}");
            for p in problems {
                println!("  {p}");
            }
        }
    }
    println!("{} fixtures: {passed} passed, {failed} failed ({})", passed + failed, plugin.name());
    Ok(failed == 0)
}
