//! `sluice publish`: events into Redis Streams in the wire format — one, delayed, or many
//! generated ones (with the rate).

use std::time::Instant;

use anyhow::{Context, Result, bail};

use super::PublishArgs;

/// Says so on stderr when no consumer group reads the event's stream: a typo in the event
/// type would otherwise publish into a stream nobody reads, silently.
async fn warn_if_unread(conn: &mut crate::redis_conn::RedisConn, prefix: &str, event_type: &str) {
    let stream = crate::keys::event_stream(prefix, event_type);
    let groups: redis::RedisResult<Vec<redis::Value>> =
        redis::cmd("XINFO").arg("GROUPS").arg(&stream).query_async(conn).await;
    if matches!(&groups, Ok(g) if !g.is_empty()) {
        return;
    }
    let read: Vec<String> = crate::dlq::Known::find(conn, prefix, &[])
        .await
        .map(|k| k.event_types.into_iter().collect())
        .unwrap_or_default();
    let known = if read.is_empty() { "none yet".to_string() } else { read.join(", ") };
    eprintln!(
        "warning: no plugin reads `{event_type}` (no consumer group on {stream}): the event is kept in the stream, but nothing handles it until a plugin subscribes to that type. Types read: {known}"
    );
}

/// `sluice publish`.
pub async fn publish(args: PublishArgs) -> Result<()> {
    let tool = args.common.resolve()?;
    let stream = crate::keys::event_stream(&tool.stream_prefix, &args.event_type);
    let mut conn = super::tool_connection(&tool).await?;
    warn_if_unread(&mut conn, &tool.stream_prefix, &args.event_type).await;
    match (args.count, &args.payload) {
        (None, Some(payload)) => {
            serde_json::from_str::<serde_json::Value>(payload).context("the payload is not valid JSON")?;
            let id = args.id.clone().unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
            if let Some(delay) = args.delay {
                let due = crate::source::delayed::publish_delayed(
                    &mut conn,
                    &stream,
                    &[("payload", payload), ("id", &id)],
                    delay,
                )
                .await?;
                println!(
                    "{stream} delayed until {} id={id}",
                    chrono::DateTime::from_timestamp_millis(due).map(|t| t.to_rfc3339()).unwrap_or_default()
                );
                return Ok(());
            }
            let entry: String = redis::cmd("XADD")
                .arg(&stream)
                .arg("*")
                .arg("payload")
                .arg(payload)
                .arg("id")
                .arg(&id)
                .query_async(&mut conn)
                .await
                .with_context(|| format!("cannot XADD to {stream}"))?;
            println!("{stream} {entry} id={id}");
        }
        (Some(_), None) if args.delay.is_some() => {
            bail!("--delay publishes one event; it cannot be combined with --count")
        }
        (Some(count), None) => {
            let started = Instant::now();
            let mut sent = 0u64;
            while sent < count {
                let n = (count - sent).min(1000);
                let mut p = redis::pipe();
                for i in sent..sent + n {
                    let payload = crate::sample::payload(&args.event_type, i)?;
                    p.cmd("XADD")
                        .arg(&stream)
                        .arg("*")
                        .arg("payload")
                        .arg(payload.to_string())
                        .arg("id")
                        .arg(uuid::Uuid::new_v4().to_string())
                        .ignore();
                }
                let _: () = p.query_async(&mut conn).await.with_context(|| format!("cannot XADD to {stream}"))?;
                sent += n;
            }
            let secs = started.elapsed().as_secs_f64();
            println!(
                "published {count} {} events to {stream} in {secs:.2} s ({:.0} events/s)",
                args.event_type,
                count as f64 / secs.max(1e-9)
            );
        }
        (Some(_), Some(_)) => bail!("give either a payload or --count, not both"),
        (None, None) => bail!("give a payload (JSON text) or --count N"),
    }
    Ok(())
}
