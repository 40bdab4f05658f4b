//! The ledger as events delivered again and acknowledged use it: which batch holds an event's
//! rows (`written_in`), an event leaving the chunk fields that list it (`leave_chunks`), an
//! event's own fields deleted with it (`forget`), and the chunk fields dead hosts left
//! (`collect_garbage`).

use anyhow::{Context, Result};

use super::{parse_chunk_value, written_field, written_key};
use crate::redis_conn::RedisConn;

/// Where the ledger says an event's rows for a table are.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    pub batch: String,
    /// The chunk field that lists the event; None for a field of its own.
    pub chunk_field: Option<String>,
}

/// For each of `entries` (of one group and stream): the batch holding its rows for `table`,
/// if any. `chunks`: also look in the chunk fields (streams; BullMQ jobs have none).
pub async fn written_in(
    conn: &mut RedisConn,
    group: &str,
    stream: &str,
    entries: &[&str],
    table: &str,
    chunks: bool,
) -> Result<Vec<Option<Found>>> {
    if entries.is_empty() {
        return Ok(Vec::new());
    }
    let key = written_key(group, stream, conn.is_cluster());
    let what = || format!("cannot read batch fields of {stream} from Redis");
    let mut c = redis::cmd("HMGET");
    c.arg(&key);
    for e in entries {
        c.arg(written_field(e, table));
    }
    let own: Vec<Option<String>> = c.query_async(conn).await.with_context(what)?;
    let mut found: Vec<Option<Found>> =
        own.into_iter().map(|b| b.map(|batch| Found { batch, chunk_field: None })).collect();
    if chunks {
        // Only the chunks still unacknowledged are there: a few per pipeline in flight.
        let all: std::collections::HashMap<String, String> =
            redis::cmd("HGETALL").arg(&key).query_async(conn).await.with_context(what)?;
        let suffix = format!("\t{table}");
        let mut by_entry: std::collections::HashMap<&str, (&str, &str)> = std::collections::HashMap::new();
        for (field, value) in &all {
            if field.starts_with('@')
                && field.ends_with(&suffix)
                && let Some((batch, _, events)) = parse_chunk_value(value)
            {
                for e in events {
                    by_entry.insert(e, (batch, field));
                }
            }
        }
        for (slot, e) in found.iter_mut().zip(entries) {
            if slot.is_none() {
                *slot = by_entry.get(e).map(|(b, f)| Found { batch: b.to_string(), chunk_field: Some(f.to_string()) });
            }
        }
    }
    Ok(found)
}

/// Removes `entries` from the chunk field `field` (deleted once empty), atomically: hosts that
/// recovered different events of one dead host's chunk each take theirs out.
const LEAVE_CHUNK: &str = r#"
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v then return 0 end
local _, stop = string.find(v, '\t[^\t]*\t')
if not stop then return 0 end
local drop = {}
for i = 2, #ARGV do drop[ARGV[i]] = true end
local kept = {}
for id in string.gmatch(string.sub(v, stop + 1), '[^,]+') do
  if not drop[id] then kept[#kept + 1] = id end
end
if #kept == 0 then redis.call('HDEL', KEYS[1], ARGV[1])
else redis.call('HSET', KEYS[1], ARGV[1], string.sub(v, 1, stop) .. table.concat(kept, ',')) end
return #kept
"#;

/// Adds to `pipe` the removal of acknowledged (or dead-lettered) `entries` of `stream` from the
/// chunk fields that list them (`SourceEvent::chunk_refs`).
pub fn leave_chunks<'a>(
    pipe: &mut redis::Pipeline,
    group: &str,
    stream: &str,
    entries: impl IntoIterator<Item = (&'a str, &'a [String])>,
    cluster: bool,
) {
    let mut by_field: Vec<(&str, Vec<&str>)> = Vec::new();
    for (id, fields) in entries {
        for f in fields {
            match by_field.iter_mut().find(|(x, _)| *x == f) {
                Some((_, ids)) => ids.push(id),
                None => by_field.push((f, vec![id])),
            }
        }
    }
    for (field, ids) in by_field {
        pipe.cmd("EVAL").arg(LEAVE_CHUNK).arg(1).arg(written_key(group, stream, cluster)).arg(field).arg(ids).ignore();
    }
}

/// Deletes the chunk fields of `group` on `stream` written more than `older_than` ago none of
/// whose events is still pending in the group: those a host left when it died before
/// acknowledging them, after other hosts handled their events. Returns how many went.
pub async fn collect_garbage(
    conn: &mut RedisConn,
    group: &str,
    stream: &str,
    older_than: std::time::Duration,
) -> Result<usize> {
    let key = written_key(group, stream, conn.is_cluster());
    let all: std::collections::HashMap<String, String> =
        redis::cmd("HGETALL").arg(&key).query_async(conn).await.context("cannot read batch fields")?;
    let before = chrono::Utc::now().timestamp_millis() - older_than.as_millis() as i64;
    let id_key = |e: &str| -> (u64, u64) {
        let (ms, seq) = e.split_once('-').unwrap_or((e, "0"));
        (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
    };
    let mut gone = 0;
    for (field, value) in &all {
        let Some((_, at, events)) = field.starts_with('@').then(|| parse_chunk_value(value)).flatten() else {
            continue;
        };
        if at > before {
            continue;
        }
        let events: Vec<&str> = events.collect();
        let (Some(min), Some(max)) = (events.iter().min_by_key(|e| id_key(e)), events.iter().max_by_key(|e| id_key(e)))
        else {
            continue;
        };
        // Anything pending between its first and last event keeps it (conservative: another
        // event's pending entry may sit in that range; the field goes on a later pass).
        let pending: Vec<redis::Value> = redis::cmd("XPENDING")
            .arg(stream)
            .arg(group)
            .arg(*min)
            .arg(*max)
            .arg(1)
            .query_async(conn)
            .await
            .context("XPENDING failed")?;
        if pending.is_empty() {
            redis::cmd("HDEL").arg(&key).arg(field).query_async::<()>(conn).await.context("HDEL failed")?;
            gone += 1;
        }
    }
    Ok(gone)
}

/// Adds to `pipe` the deletion of the fields of `entries` (acknowledged or dead-lettered) for
/// every table in `tables`.
pub fn forget(
    pipe: &mut redis::Pipeline,
    group: &str,
    stream: &str,
    entries: &[&str],
    tables: &[String],
    cluster: bool,
) {
    if entries.is_empty() || tables.is_empty() {
        return;
    }
    let c = pipe.cmd("HDEL").arg(written_key(group, stream, cluster));
    for e in entries {
        for t in tables {
            c.arg(written_field(e, t));
        }
    }
    c.ignore();
}
