//! `sluice dlq list|reprocess|purge` and `sluice replay`: what operators do with events that
//! failed, or with history (the Redis side is `dlq`, shared with the admin API).
//!
//! Nothing here surprises: a filter naming an unknown plugin or type is an error listing the
//! known ones; every command that changes data prints its plan first (how many, of what, over
//! which time, and what it will cause) and acts only with `--yes` or a "y" typed at a
//! terminal; `--dry-run` prints the plan and stops.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::{Confirm, DlqArgs, DlqCommand, DlqFilter, ReplayArgs};
use crate::dead_letter::{self as record, DeadLetterEntry};
use crate::dlq::{Filter, Known};
use crate::redis_conn::RedisConn;

/// `sluice dlq ...`.
pub async fn dlq(args: DlqArgs) -> Result<()> {
    let tool = args.common.resolve()?;
    let mut conn = super::tool_connection(&tool).await?;
    let prefix = tool.stream_prefix;
    match args.command {
        DlqCommand::List { filter, limit, json } => {
            let all = matching(&mut conn, &prefix, &filter).await?;
            let shown = &all[..all.len().min(limit)];
            if json {
                for e in shown {
                    println!("{}", e.to_json());
                }
            } else {
                print_table(shown);
            }
            eprintln!("{} of {} dead letters shown{}", shown.len(), all.len(), describe(&filter));
        }
        DlqCommand::Reprocess { id: Some(id), filter, confirm, .. } => {
            if filter.plugin.is_some() || filter.event_type.is_some() || filter.kind.is_some() {
                bail!("--plugin, --type and --kind choose dead letters for --all; with an id they would be ignored");
            }
            crate::dlq::check_id(&id)?;
            let entry = crate::dlq::get(&mut conn, &id)
                .await?
                .with_context(|| format!("no dead letter {id} in sluice:dlq (see `sluice dlq list`)"))?;
            if confirm.dry_run {
                print_plan("reprocess", std::slice::from_ref(&entry));
                println!("dry run: nothing changed");
                return Ok(());
            }
            match crate::dlq::reprocess(&mut conn, &entry).await? {
                Some((stream, new_id)) => println!("{id} -> {stream} {new_id}"),
                None => bail!("dead letter {id} was removed meanwhile"),
            }
        }
        DlqCommand::Reprocess { id: None, filter, confirm, .. } => {
            let entries = matching(&mut conn, &prefix, &filter).await?;
            if entries.is_empty() {
                println!("no dead letters{}: nothing to reprocess", describe(&filter));
                return Ok(());
            }
            print_plan("reprocess", &entries);
            println!(
                "  each goes back to its plugin alone (its replay stream), is handled again, and its rows are written"
            );
            if !confirmed(confirm, &format!("reprocess {} dead letters", entries.len()))? {
                return Ok(());
            }
            let progress = Progress::new("reprocessed", entries.len() as u64);
            let mut n = 0;
            for e in &entries {
                if crate::dlq::reprocess(&mut conn, e).await?.is_some() {
                    n += 1;
                }
                progress.update(n);
            }
            progress.finish(n);
            println!("reprocessed {n} dead letters (queued: the host handles them at its pace)");
        }
        DlqCommand::Purge { filter, confirm } => {
            let entries = matching(&mut conn, &prefix, &filter).await?;
            if entries.is_empty() {
                println!("no dead letters{}: nothing to purge", describe(&filter));
                return Ok(());
            }
            print_plan("purge", &entries);
            println!("  they are deleted for good: their events will not be handled");
            if !confirmed(confirm, &format!("delete {} dead letters", entries.len()))? {
                return Ok(());
            }
            let n = crate::dlq::delete(&mut conn, &entries).await?;
            println!("purged {n} dead letters");
        }
    }
    Ok(())
}

/// The dead letters matching `filter`, oldest first, after checking that it names things that
/// exist.
async fn matching(conn: &mut RedisConn, prefix: &str, filter: &DlqFilter) -> Result<Vec<DeadLetterEntry>> {
    let all = crate::dlq::list(conn, Filter::default(), usize::MAX).await?;
    let filter =
        Filter { plugin: filter.plugin.as_deref(), event_type: filter.event_type.as_deref(), kind: filter.kind };
    Known::find(conn, prefix, &all).await?.check(&filter)?;
    Ok(all.into_iter().filter(|e| filter.matches(e)).collect())
}

/// ` of plugin p, type t, kind k` for messages.
fn describe(f: &DlqFilter) -> String {
    let mut parts = Vec::new();
    if let Some(p) = &f.plugin {
        parts.push(format!("plugin {p}"));
    }
    if let Some(t) = &f.event_type {
        parts.push(format!("type {t}"));
    }
    if let Some(k) = f.kind {
        parts.push(format!("kind {k}"));
    }
    if parts.is_empty() { String::new() } else { format!(" ({})", parts.join(", ")) }
}

/// What a change to dead letters would touch: how many, of which plugins, types and kinds, and
/// when they failed.
fn print_plan(action: &str, entries: &[DeadLetterEntry]) {
    let count_by = |field: &str| {
        let mut m: BTreeMap<String, usize> = BTreeMap::new();
        for e in entries {
            *m.entry(e.get(field).unwrap_or_else(|| "?".into())).or_default() += 1;
        }
        m.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", ")
    };
    let when = |e: Option<&DeadLetterEntry>| {
        e.and_then(|e| crate::source::entry_id_millis(&e.id))
            .and_then(chrono::DateTime::from_timestamp_millis)
            .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
            .unwrap_or_else(|| "?".into())
    };
    println!("plan: {action} {} dead letters", entries.len());
    println!("  plugins: {}", count_by(record::PLUGIN));
    println!("  types:   {}", count_by(record::EVENT_TYPE));
    println!("  kinds:   {}", count_by(record::ERROR_KIND));
    println!("  failed:  {} .. {}", when(entries.first()), when(entries.last()));
}

/// Whether to go ahead: `--dry-run` never, `--yes` always, otherwise the answer typed at a
/// terminal; without a terminal it is an error saying what to add.
pub(super) fn confirmed(c: Confirm, what: &str) -> Result<bool> {
    if c.dry_run {
        println!("dry run: nothing changed");
        return Ok(false);
    }
    if c.yes {
        return Ok(true);
    }
    if !std::io::stdin().is_terminal() {
        bail!("refusing to {what} without --yes (the plan is above; --dry-run shows it without asking)");
    }
    print!("{what}? [y/N] ");
    std::io::stdout().flush()?;
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    let yes = matches!(answer.trim(), "y" | "Y" | "yes");
    if !yes {
        println!("nothing changed");
    }
    Ok(yes)
}

/// `sluice replay`.
pub async fn replay(args: ReplayArgs) -> Result<()> {
    let tool = args.common.resolve()?;
    let (mut conn, prefix) = (super::tool_connection(&tool).await?, tool.stream_prefix);
    let (from, to) = (crate::dlq::position(&args.from)?, crate::dlq::position(&args.to)?);
    crate::dlq::check_range(&from, &to, &args.from, &args.to)?;
    let subscribed = crate::dlq::subscribed_types(&mut conn, &prefix, &args.plugin).await?;
    if subscribed.is_empty() {
        let known = Known::find(&mut conn, &prefix, &[]).await?;
        let plugins = known.plugins.iter().cloned().collect::<Vec<_>>().join(", ");
        bail!(
            "unknown plugin `{}`: no stream under `{prefix}` has the consumer group sluice:{}; known plugins: {}",
            args.plugin,
            args.plugin,
            if plugins.is_empty() { "none" } else { &plugins }
        );
    }
    let types = if args.event_types.is_empty() {
        subscribed
    } else {
        if let Some(t) = args.event_types.iter().find(|t| !subscribed.contains(t)) {
            bail!("plugin {} does not read `{t}`; it reads: {}", args.plugin, subscribed.join(", "));
        }
        args.event_types.clone()
    };
    // The plan: per type, how many entries and over which time.
    let mut plan = Vec::new();
    for t in &types {
        let stream = crate::keys::event_stream(&prefix, t);
        let (n, first, last) = crate::dlq::count_range(&mut conn, &stream, &from, &to).await?;
        plan.push((t.clone(), stream, n, first, last));
    }
    let total: u64 = plan.iter().map(|p| p.2).sum();
    println!("plan: replay {total} events to plugin {}", args.plugin);
    for (_, stream, n, first, last) in &plan {
        let at = |id: &Option<String>| {
            id.as_deref()
                .and_then(crate::source::entry_id_millis)
                .and_then(chrono::DateTime::from_timestamp_millis)
                .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
                .unwrap_or_else(|| "–".into())
        };
        println!("  {stream}: {n} events, {} .. {}", at(first), at(last));
    }
    println!(
        "  these rows will be written a second time: replayed events get new entry ids, so no table of {} drops them as duplicates",
        args.plugin
    );
    if total == 0 {
        println!("nothing to replay in that range");
        return Ok(());
    }
    if !confirmed(args.confirm, &format!("replay {total} events to {}", args.plugin))? {
        return Ok(());
    }
    let progress = Progress::new(&format!("queued for {}", args.plugin), total);
    let mut queued = 0;
    for (t, stream, ..) in &plan {
        let base = queued;
        queued +=
            crate::dlq::replay(&mut conn, stream, &args.plugin, t, &from, &to, |n| progress.update(base + n)).await?;
    }
    progress.finish(queued);
    println!(
        "queued {queued} events to plugin {} ({}); the host processes them at its pace{}",
        args.plugin,
        types.join(", "),
        if args.wait { "" } else { " (--wait follows it)" }
    );
    if args.wait {
        let streams: Vec<String> = types.iter().map(|t| crate::keys::replay_stream(&args.plugin, t)).collect();
        wait_processed(&mut conn, &streams, &crate::keys::group_name(&args.plugin), queued).await?;
    }
    Ok(())
}

/// Events of a replay stream the plugin's group has not finished: its pending entries, plus
/// those not read yet (`lag`; when Redis cannot say, at least one if the group has not read up
/// to the last entry). `None`: not known now (no group yet, an error) — not done.
async fn left_in(conn: &mut RedisConn, stream: &str, group: &str) -> Option<u64> {
    let g = crate::dlq::group_info(conn, stream, group).await?;
    let num = |k: &str| g.get(k).and_then(|v| redis::from_redis_value::<u64>(v.clone()).ok());
    let text = |k: &str| g.get(k).and_then(|v| redis::from_redis_value::<String>(v.clone()).ok());
    let unread = match num("lag") {
        Some(lag) => lag,
        None => {
            let info: std::collections::HashMap<String, redis::Value> =
                redis::cmd("XINFO").arg("STREAM").arg(stream).query_async(conn).await.ok()?;
            let last = info.get("last-generated-id").and_then(|v| redis::from_redis_value::<String>(v.clone()).ok());
            let id = |t: &str| crate::keys::StreamId::parse(t);
            match (text("last-delivered-id"), last) {
                (Some(d), Some(l)) if id(&d) < id(&l) => 1,
                _ => 0,
            }
        }
    };
    Some(num("pending")? + unread)
}

/// Follows the plugin's group on the replay streams until nothing is left to read or pending.
async fn wait_processed(conn: &mut RedisConn, streams: &[String], group: &str, queued: u64) -> Result<()> {
    let progress = Progress::new("processed", queued);
    let mut idle_since = Instant::now();
    let mut last_left = u64::MAX;
    loop {
        let mut left = 0u64;
        let mut known = true;
        for s in streams {
            match left_in(conn, s, group).await {
                Some(n) => left += n,
                None => known = false,
            }
        }
        if !known {
            left = left.max(1);
        }
        progress.update(queued.saturating_sub(left));
        if left == 0 {
            progress.finish(queued);
            println!("processed: the plugin has handled every replayed event");
            return Ok(());
        }
        if left != last_left {
            last_left = left;
            idle_since = Instant::now();
        } else if idle_since.elapsed() > Duration::from_secs(120) {
            eprintln!();
            bail!("no progress for 2 minutes with {left} events left: is a host running the plugin? (see /ready)");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
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

/// A progress line on stderr: count of total, percentage, rate and time left.
struct Progress {
    started: Instant,
    label: String,
    total: u64,
}

impl Progress {
    fn new(label: &str, total: u64) -> Self {
        Progress { started: Instant::now(), label: label.to_string(), total }
    }

    fn update(&self, n: u64) {
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let rate = n as f64 / secs;
        let pct = if self.total == 0 { 100.0 } else { n as f64 * 100.0 / self.total as f64 };
        let eta = if rate > 0.0 && n < self.total {
            format!(
                ", {} left",
                crate::backoff::humantime(Duration::from_secs(((self.total - n) as f64 / rate).ceil() as u64))
            )
        } else {
            String::new()
        };
        eprint!("\r{}: {n} of {} ({pct:.0}%, {rate:.0}/s{eta})   ", self.label, self.total);
    }

    fn finish(&self, n: u64) {
        self.update(n);
        eprintln!();
    }
}
