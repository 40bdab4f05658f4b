//! `sluice dlq list|reprocess|purge` and `sluice replay`: what operators do with events that
//! failed, or with history (the Redis side is `dlq`, shared with the admin API).

use std::time::Instant;

use anyhow::{Context, Result, bail};

use super::{DlqArgs, DlqCommand, ReplayArgs};
use crate::dead_letter::{self as record, DeadLetterEntry};

/// `sluice dlq ...`.
pub async fn dlq(args: DlqArgs) -> Result<()> {
    let tool = args.common.resolve()?;
    let mut conn = super::tool_connection(&tool).await?;
    match args.command {
        DlqCommand::List { plugin, event_type, kind, limit, json } => {
            let filter = crate::dlq::Filter { plugin: plugin.as_deref(), event_type: event_type.as_deref(), kind };
            let entries = crate::dlq::list(&mut conn, filter, limit).await?;
            if json {
                for e in &entries {
                    println!("{}", e.to_json());
                }
            } else {
                print_table(&entries);
            }
        }
        DlqCommand::Reprocess { id: Some(id), .. } => {
            let entry =
                crate::dlq::get(&mut conn, &id).await?.with_context(|| format!("no dead letter {id} in sluice:dlq"))?;
            match crate::dlq::reprocess(&mut conn, &entry).await? {
                Some((stream, new_id)) => println!("{id} -> {stream} {new_id}"),
                None => bail!("dead letter {id} was removed meanwhile"),
            }
        }
        DlqCommand::Reprocess { id: None, plugin, .. } => {
            let entries =
                crate::dlq::list(&mut conn, crate::dlq::Filter::plugin(plugin.as_deref()), usize::MAX).await?;
            let progress = Progress::new("reprocessed");
            let mut n = 0;
            for e in &entries {
                if crate::dlq::reprocess(&mut conn, e).await?.is_some() {
                    n += 1;
                }
                if n % 1000 == 0 {
                    progress.update(n);
                }
            }
            progress.finish(n);
            println!("reprocessed {n} dead letters");
        }
        DlqCommand::Purge { plugin } => {
            let n = crate::dlq::purge(&mut conn, plugin.as_deref()).await?;
            println!("purged {n} dead letters");
        }
    }
    Ok(())
}

/// `sluice replay`.
pub async fn replay(args: ReplayArgs) -> Result<()> {
    let tool = args.common.resolve()?;
    let (mut conn, prefix) = (super::tool_connection(&tool).await?, tool.stream_prefix);
    let (from, to) = (crate::dlq::position(&args.from)?, crate::dlq::position(&args.to)?);
    let types = if args.event_types.is_empty() {
        crate::dlq::subscribed_types(&mut conn, &prefix, &args.plugin).await?
    } else {
        args.event_types.clone()
    };
    if types.is_empty() {
        bail!(
            "no stream under `{prefix}` has the consumer group sluice:{}; is the plugin name right? (or pass --type)",
            args.plugin
        );
    }
    let mut total = 0;
    for t in &types {
        let stream = crate::keys::event_stream(&prefix, t);
        let progress = Progress::new(&format!("replaying {stream} to {}", args.plugin));
        let n = crate::dlq::replay(&mut conn, &stream, &args.plugin, t, &from, &to, |n| progress.update(n)).await?;
        progress.finish(n);
        total += n;
    }
    println!("replayed {total} events to plugin {} ({})", args.plugin, types.join(", "));
    Ok(())
}

/// Prints dead letters as a table.
fn print_table(entries: &[DeadLetterEntry]) {
    println!("{:<20} {:<22} {:<28} {:<20} {:>3} {:<17} ERROR", "DLQ ID", "PLUGIN", "STREAM", "ENTRY ID", "ATT", "KIND");
    for e in entries {
        let g = |k: &str| e.get(k).unwrap_or_default();
        let error: String = g(record::ERROR).chars().take(100).collect();
        println!(
            "{:<20} {:<22} {:<28} {:<20} {:>3} {:<17} {}",
            e.id,
            g(record::PLUGIN),
            g(record::STREAM),
            g(record::ENTRY_ID),
            g(record::ATTEMPTS),
            g(record::ERROR_KIND),
            error
        );
    }
}

/// A simple progress line on stderr for long copies.
struct Progress {
    started: Instant,
    label: String,
}

impl Progress {
    pub fn new(label: &str) -> Self {
        Progress { started: Instant::now(), label: label.to_string() }
    }
    pub fn update(&self, n: u64) {
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        eprint!("\r{}: {n} events ({:.0}/s)   ", self.label, n as f64 / secs);
    }
    pub fn finish(&self, n: u64) {
        self.update(n);
        eprintln!();
    }
}
