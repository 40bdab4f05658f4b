//! The exactly-once batch records of jobs (see `ledger`: per-event fields keyed by the queue and
//! job id): deleted once BullMQ shows the job completed or removed, by the host that completed
//! it, or by a periodic sweep for those a dead host left.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;

use super::Routes;
use super::jobs::Records;
use crate::redis_conn::RedisConn;

/// Deletes, every `every`, the batch records of finished jobs that no host deleted: a host that
/// died between a job's completion and the deletion of its records leaves them behind.
pub(super) async fn sweep_records(
    routes: Routes,
    stream: Arc<str>,
    mut ledger: RedisConn,
    key_base: String,
    every: Duration,
) {
    loop {
        tokio::time::sleep(every).await;
        for plugin in routes.plugins() {
            let group = crate::keys::group_name(&plugin);
            if let Err(e) = sweep_group(&mut ledger, &group, &stream, &key_base).await {
                tracing::warn!(queue = %stream, group, error = format!("{e:#}"), "cannot sweep the batch records of finished jobs");
            }
        }
    }
}

async fn sweep_group(ledger: &mut RedisConn, group: &str, stream: &str, key_base: &str) -> Result<()> {
    let key = crate::ledger::written_key(group, stream, ledger.is_cluster());
    let mut cursor = 0u64;
    let mut swept = 0usize;
    loop {
        let (next, fields): (u64, Vec<String>) =
            redis::cmd("HSCAN").arg(&key).arg(cursor).arg("COUNT").arg(1000).query_async(ledger).await?;
        // HSCAN answers field, value, field, value...
        let fields: Vec<&String> = fields.iter().step_by(2).collect();
        if !fields.is_empty() {
            let ids = fields.iter().map(|f| f.split('\t').next().unwrap_or_default());
            let over = completed_or_removed(ledger, key_base, ids).await?;
            let done: Vec<&&String> = fields.iter().zip(over).filter(|(_, o)| *o).map(|(f, _)| f).collect();
            if !done.is_empty() {
                redis::cmd("HDEL").arg(&key).arg(&done).query_async::<()>(ledger).await?;
                swept += done.len();
            }
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    if swept > 0 {
        tracing::info!(queue = %stream, group, records = swept, "deleted batch records left by finished jobs (a host died before deleting them)");
    }
    Ok(())
}

/// For each job id: whether BullMQ shows it completed (in the completed set) or removed
/// (`removeOnComplete` / `removeOnFail` / by hand) — no run of it is to come.
async fn completed_or_removed<'a>(
    ledger: &mut RedisConn,
    key_base: &str,
    ids: impl Iterator<Item = &'a str>,
) -> Result<Vec<bool>> {
    let mut p = redis::pipe();
    for id in ids {
        p.cmd("ZSCORE").arg(format!("{key_base}:completed")).arg(id);
        p.cmd("EXISTS").arg(format!("{key_base}:{id}"));
    }
    let state: Vec<Option<f64>> = p.query_async(ledger).await?;
    Ok(state.chunks(2).map(|s| s[0].is_some() || s[1] != Some(1.0)).collect())
}

/// Deletes the batch records of jobs BullMQ shows completed (in the completed set, or removed):
/// a completion that did not go through (this host's lock was lost to another host now running
/// the job) leaves them for that host.
pub(super) async fn forget_finished(
    ledger: &mut RedisConn,
    stream: &str,
    key_base: &str,
    jobs: &[(String, Vec<Records>)],
) -> Result<()> {
    let over = completed_or_removed(ledger, key_base, jobs.iter().map(|(id, _)| id.as_str())).await?;
    let mut p = redis::pipe();
    let cluster = ledger.is_cluster();
    for ((id, records), over) in jobs.iter().zip(over) {
        if over {
            for r in records {
                crate::ledger::forget(&mut p, &r.group, stream, &[id.as_str()], &r.tables, cluster);
            }
        }
    }
    p.query_async::<()>(ledger).await?;
    Ok(())
}
