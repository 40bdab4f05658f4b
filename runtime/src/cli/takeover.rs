//! `sluice takeover`: the switch from a Redis Streams consumer service to a plugin, with no gap
//! and no double rows. The service's consumer group says how far it got (`last-delivered-id`,
//! with nothing pending once its consumers stopped gracefully); the plugin's group is set to
//! start right after that. Entries the plugin's group still holds from a trial run into shadow
//! tables (`[clickhouse] table_prefix`) are acknowledged: everything after the position is
//! delivered to the plugin again, into the tables it writes now.
//!
//! The ids the plugin's group claimed (idempotency, `pipeline::dedup`) on those streams are
//! forgotten too: events a trial run saw are new to the plugin's real tables.
//!
//! The plugin must not be running meanwhile (its group is moved under it): a consumer of its
//! group that read in the last 5 s is refused.

use std::collections::HashMap;

use anyhow::{Result, bail};
use redis::{Value, cmd};

use super::TakeoverArgs;
use crate::keys::StreamId;
use crate::redis_conn::RedisConn;

/// A consumer that read this recently is a running host (a running host reads at least every
/// `block_ms`, 1 s by default).
const RUNNING_MS: i64 = 5_000;

/// What is done on one stream.
struct Step {
    stream: String,
    /// The plugin's group starts after this entry.
    after: StreamId,
    /// Entries the old group had not been given yet (`None` with --force over pending ones:
    /// more than that are delivered again).
    following: Option<i64>,
    /// The plugin's group as it is: entries pending in it (acknowledged by the takeover), or
    /// `None` when it does not exist yet.
    ours_pending: Option<i64>,
}

/// `sluice takeover`.
pub async fn takeover(args: TakeoverArgs) -> Result<()> {
    let tool = args.common.resolve()?;
    let mut conn = super::tool_connection(&tool).await?;
    let ours = crate::keys::group_name(&args.plugin);
    if args.from_group == ours {
        bail!("--from-group is the plugin's own group `{ours}`: name the group of the service being replaced");
    }
    let mut steps = Vec::new();
    for t in &args.event_types {
        let stream = crate::keys::event_stream(&tool.stream_prefix, t);
        let groups = groups(&mut conn, &stream).await?;
        let Some(old) = groups.get(&args.from_group) else {
            let mut names: Vec<&String> = groups.keys().collect();
            names.sort();
            bail!(
                "stream {stream} has no consumer group `{}`; its groups: {}",
                args.from_group,
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.iter().map(|n| n.as_str()).collect::<Vec<_>>().join(", ")
                }
            );
        };
        let last = text(old, "last-delivered-id").and_then(|t| StreamId::parse(&t)).unwrap_or(StreamId(0, 0));
        let pending = int(old, "pending").unwrap_or(0);
        let after = if pending > 0 {
            if !args.force {
                bail!(
                    "group `{}` has {pending} entries of {stream} delivered and not acknowledged: stop its consumers gracefully and wait until none is pending (`XINFO GROUPS {stream}`), or take over with --force from the oldest of them (every entry from there to where the group got is then delivered again, acknowledged ones too: their rows may be written twice)",
                    args.from_group
                );
            }
            let oldest: Vec<Value> = cmd("XPENDING").arg(&stream).arg(&args.from_group).query_async(&mut conn).await?;
            let oldest = oldest.get(1).and_then(|v| redis::from_redis_value_ref::<String>(v).ok());
            oldest.and_then(|o| StreamId::parse(&o)).map(before).unwrap_or(last)
        } else {
            last
        };
        let ours_pending = match groups.get(&ours) {
            None => None,
            Some(g) => {
                let consumers: Vec<HashMap<String, Value>> =
                    cmd("XINFO").arg("CONSUMERS").arg(&stream).arg(&ours).query_async(&mut conn).await?;
                if let Some(c) = consumers.iter().find(|c| int(c, "idle").is_some_and(|i| i < RUNNING_MS)) {
                    bail!(
                        "plugin {} is running: its consumer {} read {stream} {} ms ago. Remove its file from the plugins directory (or stop the hosts), wait 5 s, then take over",
                        args.plugin,
                        text(c, "name").unwrap_or_default(),
                        int(c, "idle").unwrap_or(0)
                    );
                }
                Some(int(g, "pending").unwrap_or(0))
            }
        };
        let following = if pending > 0 { None } else { int(old, "lag") };
        steps.push(Step { stream, after, following, ours_pending });
    }
    println!("plan: plugin {} takes over from group `{}`:", args.plugin, args.from_group);
    for s in &steps {
        let following = s.following.map_or("an unknown number of".to_string(), |n| n.to_string());
        let ours = match s.ours_pending {
            None => format!("group {ours} is created there"),
            Some(0) => format!("group {ours} is moved there"),
            Some(n) => format!("group {ours} is moved there and its {n} pending entries acknowledged"),
        };
        let ours = match s.ours_pending {
            None => ours,
            Some(_) => format!("{ours}; the event ids it remembers on this stream are forgotten"),
        };
        println!(
            "  {}: the plugin reads from after {} (where `{}` stopped), {following} entries after it; {ours}",
            s.stream, s.after, args.from_group
        );
    }
    println!("  then: deploy the plugin (without a table_prefix); keep `{}`'s consumers stopped", args.from_group);
    if !super::dead_letters::confirmed(args.confirm, "take over")? {
        return Ok(());
    }
    for s in &steps {
        move_group(&mut conn, &s.stream, &ours, s.after, s.ours_pending.is_some()).await?;
        println!("{}: {ours} starts after {}", s.stream, s.after);
    }
    Ok(())
}

/// Creates the group at `after`, or moves it there and acknowledges what it holds.
async fn move_group(conn: &mut RedisConn, stream: &str, group: &str, after: StreamId, exists: bool) -> Result<()> {
    // Ids claimed by a trial run (its group may be gone since): the events after `after` are
    // new to the plugin's tables.
    let seen = crate::keys::seen(group, stream, 0);
    let pattern = format!("{}*", crate::keys::glob_escape(seen.strip_suffix('0').unwrap_or(&seen)));
    for key in conn.scan_keys(&pattern, "set").await? {
        cmd("DEL").arg(&key).query_async::<()>(conn).await?;
    }
    if !exists {
        cmd("XGROUP").arg("CREATE").arg(stream).arg(group).arg(after.to_string()).query_async::<()>(conn).await?;
        return Ok(());
    }
    cmd("XGROUP").arg("SETID").arg(stream).arg(group).arg(after.to_string()).query_async::<()>(conn).await?;
    loop {
        let page: Vec<Vec<Value>> =
            cmd("XPENDING").arg(stream).arg(group).arg("-").arg("+").arg(1000).query_async(conn).await?;
        let ids: Vec<String> =
            page.iter().filter_map(|e| e.first().and_then(|v| redis::from_redis_value_ref(v).ok())).collect();
        if ids.is_empty() {
            return Ok(());
        }
        cmd("XACK").arg(stream).arg(group).arg(&ids).query_async::<()>(conn).await?;
    }
}

/// The consumer groups of `stream` by name, as `XINFO GROUPS` describes them.
async fn groups(conn: &mut RedisConn, stream: &str) -> Result<HashMap<String, HashMap<String, Value>>> {
    let r: redis::RedisResult<Vec<HashMap<String, Value>>> =
        cmd("XINFO").arg("GROUPS").arg(stream).query_async(conn).await;
    let groups = match r {
        Ok(g) => g,
        Err(e) if e.to_string().contains("no such key") => {
            bail!("there is no stream {stream} (check the event type and the stream prefix)")
        }
        Err(e) => return Err(e.into()),
    };
    Ok(groups.into_iter().filter_map(|g| Some((text(&g, "name")?, g))).collect())
}

fn text(m: &HashMap<String, Value>, k: &str) -> Option<String> {
    m.get(k).and_then(|v| redis::from_redis_value_ref(v).ok())
}

fn int(m: &HashMap<String, Value>, k: &str) -> Option<i64> {
    m.get(k).and_then(|v| redis::from_redis_value_ref(v).ok())
}

/// The id right before `id`.
fn before(id: StreamId) -> StreamId {
    match id {
        StreamId(0, 0) => id,
        StreamId(ms, 0) => StreamId(ms - 1, u64::MAX),
        StreamId(ms, seq) => StreamId(ms, seq - 1),
    }
}
