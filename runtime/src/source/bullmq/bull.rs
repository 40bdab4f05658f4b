//! Classic Bull queues (`bull` 3/4, what `@nestjs/bull` uses). Bull and BullMQ share the key
//! layout — the `wait` and `active` lists, the `delayed`, `completed` and `failed` sets, the job
//! hashes `<prefix>:<queue>:<id>` with the same field names — so BullMQ's scripts run bull's
//! jobs. What bull's own worker does beyond that, and bull's producers and tools (Bull Board,
//! `queue.getJobCounts()`, NestJS's `@OnGlobalQueue…` listeners) rely on, is done here:
//!
//! | bull's habit | BullMQ's | here |
//! |---|---|---|
//! | a new or promoted job is announced by `PUBLISH <q>:waiting@<token>`, a delayed one by `PUBLISH <q>:delayed` | a member of the `<q>:marker` set, which BullMQ's worker blocks on | [`wake_on_signals`] turns each burst of bull's messages into one marker |
//! | a prioritized waiting job is also in `<q>:priority` (where bull finds the place of the next one in `wait`), removed when taken | `<q>:prioritized` | [`taken`] removes it |
//! | `attemptsMade` counts failed attempts | `atm` counts finished ones | [`failed_attempt`] keeps `attemptsMade` |
//! | exponential backoff `round((2^n − 1) · delay)`: 2 s, 6 s, 14 s | `delay · 2^(n−1)`: 2 s, 4 s, 8 s | [`backoff_ms`] |
//! | `PUBLISH <q>:completed` / `<q>:failed` `{jobId, val}` (global events) | the `<q>:events` stream | [`publish_finished`] |
//! | repeatable jobs: the worker adds the next run (bull's cron parsing and job ids) | job schedulers | refused: [`refuse_repeatable`] at start, a clear failure at run |

use std::time::Duration;

use anyhow::{Result, bail};
use bullmq::Job;
use futures::StreamExt;

use super::config::{BullQueue, Library};
use crate::redis_conn::RedisConn;

/// Whether `job` was written by classic Bull: said by the queue's `library`, or else by the job
/// itself — bull stores the job's `timestamp` among its options; BullMQ does only for the runs
/// its job schedulers add, which carry a `repeatJobKey`.
pub(super) fn is_bull(library: Library, job: &Job) -> bool {
    match library {
        Library::Bull => true,
        Library::Bullmq => false,
        Library::Auto => {
            job.opts().timestamp.is_some() && job.opts().repeat_job_key.is_none() && job.repeat_job_key().is_none()
        }
    }
}

/// Why a repeatable bull job is not run.
pub(super) const REPEAT_REFUSED: &str = "a repeatable bull job (opts.repeat): Sluice does not schedule bull's repetitions (bull's own worker adds each next run, with bull's cron parsing and job ids), so it would run once and never again; schedule the runs in the producer (a plain job per tick) and remove the repeatable job (queue.removeRepeatable)";

/// Refuses a bull queue that holds repeatable jobs (the `<q>:repeat` set bull keeps them in):
/// they would run once and stop repeating. A BullMQ queue (its `meta` names the library) keeps
/// its job schedulers in a set of the same name and is not refused here.
pub async fn refuse_repeatable(conn: &mut RedisConn, queue: &BullQueue) -> Result<()> {
    if queue.library == Library::Bullmq {
        return Ok(());
    }
    let base = queue.key();
    let (repeat, version): (u64, Option<String>) = redis::pipe()
        .cmd("ZCARD")
        .arg(format!("{base}:repeat"))
        .cmd("HGET")
        .arg(format!("{base}:meta"))
        .arg("version")
        .query_async(conn)
        .await?;
    let bullmq = version.is_some_and(|v| v.starts_with("bullmq"));
    if repeat > 0 && (queue.library == Library::Bull || !bullmq) {
        bail!(
            "queue {base} holds {repeat} repeatable bull job(s) (the {base}:repeat set): {REPEAT_REFUSED}; or, if BullMQ writes this queue, set `library = \"bullmq\"` for it in [bullmq]"
        );
    }
    Ok(())
}

/// Keeps BullMQ's worker of a bull queue awake to bull's announcements: bull's producers never
/// touch BullMQ's marker, so without this an idle worker would find a new job only when its
/// blocking wait (5 s) times out. One pub/sub connection per queue, idle while the queue is;
/// a burst of announcements (a bulk add) becomes one marker. A lost connection is made again
/// (meanwhile the worker still looks every 5 s).
pub(super) async fn wake_on_signals(client: redis::Client, mut conn: RedisConn, base: String) {
    let marker = format!("{base}:marker");
    let mut said = false;
    loop {
        let subscribed = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.psubscribe(format!("{base}:waiting@*")).await?;
            pubsub.subscribe(format!("{base}:delayed")).await?;
            anyhow::Ok(pubsub)
        };
        let mut pubsub = match tokio::time::timeout(Duration::from_secs(10), subscribed).await {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => {
                if !said {
                    tracing::warn!(queue = %base, error = %e, "cannot listen to bull's job announcements: new jobs are found within 5 s instead of at once (trying again)");
                    said = true;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(_) => continue,
        };
        said = false;
        let mut messages = pubsub.on_message();
        while let Some(first) = messages.next().await {
            // Whatever else already came is the same news.
            let mut delayed_until: Option<u64> = None;
            let mut waiting = false;
            let mut note = |m: &redis::Msg| match m.get_channel_name().ends_with(":delayed") {
                true => {
                    let at = m.get_payload::<String>().ok().and_then(|t| t.parse::<f64>().ok()).unwrap_or(0.0) as u64;
                    delayed_until = Some(delayed_until.map_or(at, |d| d.min(at)));
                }
                false => waiting = true,
            };
            note(&first);
            while let Some(Some(m)) = futures::FutureExt::now_or_never(messages.next()) {
                note(&m);
            }
            // BullMQ's marker: member "0" (score 0) for a waiting job, "1" scored with the time
            // the next delayed job is due.
            let mut p = redis::pipe();
            if waiting {
                p.cmd("ZADD").arg(&marker).arg(0).arg("0").ignore();
            }
            if let Some(at) = delayed_until {
                p.cmd("ZADD").arg(&marker).arg(at).arg("1").ignore();
            }
            if let Err(e) = p.query_async::<()>(&mut conn).await {
                tracing::debug!(queue = %base, error = %e, "cannot wake the queue's worker");
            }
        }
        tracing::debug!(queue = %base, "the pub/sub connection for bull's announcements closed: listening again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A bull job was taken: out of bull's `priority` set (bull's `moveToActive` does it; without it
/// the set grows for ever and bull's `addJobWithPriority` places later prioritized jobs wrongly),
/// and announced as bull announces it (`global:active`).
pub(super) async fn taken(conn: &mut RedisConn, base: &str, job: &Job) -> Result<()> {
    let mut p = redis::pipe();
    if job.priority() > 0 {
        p.cmd("ZREM").arg(format!("{base}:priority")).arg(job.id()).ignore();
    }
    p.cmd("PUBLISH").arg(format!("{base}:active@sluice")).arg(job.id()).ignore();
    p.query_async::<()>(conn).await?;
    Ok(())
}

/// The delay before a bull job's next attempt when bull's and BullMQ's differ: bull's
/// exponential backoff after the n-th failed attempt is `round((2^n − 1) · delay)`. `None` when
/// the job has no exponential backoff (fixed delays and none at all are the same in both).
pub(super) fn backoff_ms(job: &Job) -> Option<u64> {
    match job.opts().backoff {
        Some(bullmq::types::BackoffStrategy::Exponential(delay)) if delay > 0 => {
            let n = job.attempts_made().saturating_add(1).min(52);
            Some(((1u64 << n) - 1).saturating_mul(delay))
        }
        _ => None,
    }
}

/// Records a failed attempt of a bull job as bull does: `attemptsMade` (what bull and Bull Board
/// read) and `failedReason`. With `counted`, BullMQ's own count `atm` goes up too (a retry this
/// host moved to the delayed set itself, past BullMQ's script that would have counted it). A job
/// already gone (removed meanwhile) is not written back.
pub(super) async fn failed_attempt(
    conn: &mut RedisConn,
    base: &str,
    job: &Job,
    reason: &str,
    counted: bool,
) -> Result<()> {
    const SCRIPT: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'attemptsMade', ARGV[1], 'failedReason', ARGV[2])
  if ARGV[3] == '1' then redis.call('HINCRBY', KEYS[1], 'atm', 1) end
end
return 0"#;
    redis::Script::new(SCRIPT)
        .key(format!("{base}:{}", job.id()))
        .arg(job.attempts_made() + 1)
        .arg(reason)
        .arg(if counted { "1" } else { "0" })
        .invoke_async::<()>(conn)
        .await?;
    Ok(())
}

/// What bull announces when a job is finished: its global `completed` or `failed` event.
#[derive(Debug, Clone)]
pub(super) enum Finished {
    Completed,
    /// Failed for good, with the reason.
    Failed(String),
}

/// Announces finished bull jobs as bull's `moveToFinished` does: `PUBLISH <q>:completed` /
/// `<q>:failed` with `{"jobId", "val"}`, what bull's `global:completed` / `global:failed`
/// listeners hear.
pub(super) async fn publish_finished(conn: &mut RedisConn, base: &str, jobs: &[(String, Finished)]) -> Result<()> {
    let mut p = redis::pipe();
    for (id, f) in jobs {
        let (channel, val) = match f {
            Finished::Completed => ("completed", serde_json::Value::Null),
            Finished::Failed(reason) => ("failed", serde_json::Value::String(reason.clone())),
        };
        let message = serde_json::json!({ "jobId": id, "val": val }).to_string();
        p.cmd("PUBLISH").arg(format!("{base}:{channel}")).arg(message).ignore();
    }
    p.query_async::<()>(conn).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(opts: &str, atm: &str) -> Job {
        let f = [("name", "e"), ("data", "{}"), ("opts", opts), ("timestamp", "1"), ("atm", atm)];
        Job::from_redis_hash("1", &f.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()).unwrap()
    }

    #[test]
    fn bull_jobs_are_told_by_their_options() {
        let bull = job(r#"{"attempts":3,"timestamp":1796075461433}"#, "0");
        let bullmq = job(r#"{"attempts":3}"#, "0");
        assert!(is_bull(Library::Auto, &bull) && !is_bull(Library::Auto, &bullmq));
        // A run a BullMQ job scheduler added has a timestamp too, and its scheduler's key.
        let scheduled =
            job(r#"{"timestamp":1796075461433,"repeat":{"every":1000},"repeatJobKey":"k","prevMillis":1}"#, "0");
        assert!(!is_bull(Library::Auto, &scheduled));
        assert!(is_bull(Library::Bull, &bullmq) && !is_bull(Library::Bullmq, &bull));
    }

    #[test]
    fn bulls_exponential_backoff() {
        let exp = r#"{"backoff":{"type":"exponential","delay":2000}}"#;
        let delays: Vec<_> = ["0", "1", "2"].iter().map(|atm| backoff_ms(&job(exp, atm))).collect();
        assert_eq!(delays, [Some(2000), Some(6000), Some(14000)]);
        assert_eq!(backoff_ms(&job(r#"{"backoff":{"type":"fixed","delay":2000}}"#, "1")), None);
        assert_eq!(backoff_ms(&job(r#"{"attempts":3}"#, "1")), None);
    }
}
