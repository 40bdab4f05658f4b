//! `sluice plugin inspect`.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};

use super::offline::load_one;
use crate::plugin::{LoadedPlugin, wit};
use crate::writer::clickhouse::{ChClient, ChOptions};

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
            password: l.password.clone().map(crate::secret::Secret),
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
                Plan::Alter(changes) => ("alter", changes.iter().map(|c| c.ddl(database, &schema.name)).collect()),
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

/// The manifest of a loaded plugin as JSON.
fn manifest_json(p: &LoadedPlugin, database: &str) -> serde_json::Value {
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
