//! Delayed events: held in the sorted set `sluice:delayed` until due, then moved to their
//! stream exactly once, whichever and however many hosts run.
//!
//! Format, for producers in any language:
//!   ZADD sluice:delayed <due time, ms since the epoch> '{"stream":"events:<type>","fields":{"payload":"<json text>","id":"<uuid>"}}'
//! `fields` are the stream entry's fields (the wire format). Give each event an `id`: two
//! byte-identical members would be one member of the set.
//!
//! Policy: every host runs a mover that, every 250 ms, runs one Lua script taking up to 500
//! due members and, in the same atomic step, XADDs each to its stream and removes it from the
//! set. Due-ness is judged by Redis's clock (TIME), so hosts' clocks do not matter; a member
//! that is not valid JSON is moved to `sluice:dlq` instead of blocking the set. On a Redis
//! Cluster the move is two steps under a lock (see [`move_due_on_cluster`]).

use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::dead_letter;
use crate::keys::DLQ_STREAM;
use crate::redis_conn::RedisConn;

/// Why a member is not delivered.
const NOT_JSON: &str = r#"delayed event is not {"stream": ..., "fields": {...}} JSON"#;

/// The sorted set of delayed events.
pub use crate::keys::DELAYED as DELAYED_KEY;

/// KEYS: the delayed set, the dead-letter stream. ARGV: the limit, the name of the record's
/// error field, then the dead-letter record's fields (`dead_letter::undeliverable_member`) as
/// name, value, ... with the member's own field name last (its value, the member, is appended).
const MOVE_DUE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local function dead_letter(m, why)
  local record = {KEYS[2], '*'}
  for i = 3, #ARGV do
    if why and ARGV[i - 1] == ARGV[2] and (i - 3) % 2 == 1 then
      record[#record + 1] = why
    else
      record[#record + 1] = ARGV[i]
    end
  end
  record[#record + 1] = m
  redis.call('XADD', unpack(record))
end
local moved = 0
for _, m in ipairs(due) do
  local ok, ev = pcall(cjson.decode, m)
  if ok and type(ev) == 'table' and type(ev.stream) == 'string' and type(ev.fields) == 'table' then
    local args = {ev.stream, '*'}
    for k, v in pairs(ev.fields) do
      args[#args + 1] = k
      if type(v) == 'string' then args[#args + 1] = v else args[#args + 1] = cjson.encode(v) end
    end
    -- A member its stream refuses (no fields, a key of another type) is dead-lettered with the
    -- reason instead of holding up every member due after it.
    local added = redis.pcall('XADD', unpack(args))
    if type(added) == 'table' and added.err then
      dead_letter(m, ev.stream .. ' refused the delayed event: ' .. added.err)
    end
  else
    dead_letter(m, nil)
  end
  redis.call('ZREM', KEYS[1], m)
  moved = moved + 1
end
return moved
"#;

use crate::keys::DELAYED_MOVER_LOCK as MOVER_LOCK;

/// Releases [`MOVER_LOCK`] if this host still holds it.
const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

/// Moves due events once; returns how many.
pub async fn move_due(conn: &mut RedisConn, limit: usize) -> Result<u64> {
    if conn.is_cluster() {
        return move_due_on_cluster(conn, limit).await;
    }
    let script = redis::Script::new(MOVE_DUE);
    let mut call = script.key(DELAYED_KEY);
    call.key(DLQ_STREAM).arg(limit).arg(dead_letter::ERROR);
    // Every field of the record but the member's value, which the script appends.
    let record = dead_letter::undeliverable_member(DELAYED_KEY, NOT_JSON, b"");
    for (i, (k, v)) in record.iter().enumerate() {
        call.arg(*k);
        if i + 1 < record.len() {
            call.arg(*v);
        }
    }
    let n: u64 = call.invoke_async(conn).await.context("cannot move due delayed events")?;
    Ok(n)
}

/// On a Redis Cluster a script cannot write streams in other slots than `sluice:delayed`'s.
/// One host at a time (a lock with a 30 s deadline) reads the due members, adds them to their
/// streams one by one, then removes them from the set: a host dying between the two steps
/// (or stalling past the lock's deadline) leaves them to be added again by the next mover —
/// at-least-once here, where one server's script is exactly-once. A member its stream refuses
/// goes to the dead letters.
async fn move_due_on_cluster(conn: &mut RedisConn, limit: usize) -> Result<u64> {
    let owner = uuid::Uuid::new_v4().to_string();
    let locked: Option<String> =
        redis::cmd("SET").arg(MOVER_LOCK).arg(&owner).arg("NX").arg("PX").arg(30_000).query_async(conn).await?;
    if locked.is_none() {
        return Ok(0);
    }
    let moved = move_locked(conn, limit).await;
    let _: i64 = redis::Script::new(RELEASE).key(MOVER_LOCK).arg(&owner).invoke_async(conn).await.unwrap_or(0);
    moved
}

async fn move_locked(conn: &mut RedisConn, limit: usize) -> Result<u64> {
    let now: (i64, i64) = redis::cmd("TIME").query_async(conn).await?;
    let now_ms = now.0 * 1000 + now.1 / 1000;
    let due: Vec<Vec<u8>> = redis::cmd("ZRANGEBYSCORE")
        .arg(DELAYED_KEY)
        .arg("-inf")
        .arg(now_ms)
        .arg("LIMIT")
        .arg(0)
        .arg(limit)
        .query_async(conn)
        .await
        .context("cannot read due delayed events")?;
    if due.is_empty() {
        return Ok(0);
    }
    // One XADD at a time: a member the stream refuses (no fields, a key of another type) goes
    // to the dead letters with the reason instead of holding up, and re-adding, the others.
    for m in &due {
        let parsed: Option<(String, serde_json::Map<String, serde_json::Value>)> =
            serde_json::from_slice::<serde_json::Value>(m).ok().and_then(|v| {
                let stream = v.get("stream")?.as_str()?.to_string();
                let fields = v.get("fields")?.as_object()?.clone();
                Some((stream, fields))
            });
        let refused = match parsed {
            Some((stream, fields)) if !fields.is_empty() => {
                let mut c = redis::cmd("XADD");
                c.arg(&stream).arg("*");
                for (k, v) in fields {
                    match v {
                        serde_json::Value::String(s) => c.arg(k).arg(s),
                        other => c.arg(k).arg(other.to_string()),
                    };
                }
                match c.query_async::<String>(conn).await {
                    Ok(_) => None,
                    // Redis refused this member; anything else (connection) is retried whole.
                    Err(e)
                        if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError)
                            || e.code().is_some_and(|c| c == "WRONGTYPE" || c == "ERR") =>
                    {
                        Some(format!("{stream} refused the delayed event: {e}"))
                    }
                    Err(e) => return Err(e).context("cannot add a due delayed event to its stream"),
                }
            }
            _ => Some(format!("{NOT_JSON} with at least one field")),
        };
        if let Some(error) = refused {
            let mut c = redis::cmd("XADD");
            c.arg(DLQ_STREAM).arg("*");
            for (k, v) in dead_letter::undeliverable_member(DELAYED_KEY, &error, m) {
                c.arg(k).arg(v);
            }
            let _: String = c.query_async(conn).await.context("cannot dead-letter a delayed event")?;
        }
    }
    let _: () = redis::cmd("ZREM").arg(DELAYED_KEY).arg(&due).query_async(conn).await?;
    Ok(due.len() as u64)
}

/// Runs the mover until the process ends.
pub async fn run_mover(mut conn: RedisConn) {
    let mut failing = false;
    loop {
        match move_due(&mut conn, 500).await {
            Ok(n) => {
                failing = false;
                if n > 0 {
                    tracing::debug!(count = n, "delivered due delayed events");
                }
                if n == 500 {
                    continue; // more are due: no pause
                }
            }
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = format!("{e:#}"), "cannot deliver delayed events yet; retrying");
            }
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Holds an event until `delay` has passed.
pub async fn publish_delayed(
    conn: &mut RedisConn,
    stream: &str,
    fields: &[(&str, &str)],
    delay: Duration,
) -> Result<i64> {
    let now: (i64, i64) = redis::cmd("TIME").query_async(conn).await?;
    let due = now.0 * 1000 + now.1 / 1000 + delay.as_millis() as i64;
    let fields: serde_json::Map<String, serde_json::Value> =
        fields.iter().map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string()))).collect();
    let member = serde_json::json!({"stream": stream, "fields": fields}).to_string();
    let _: () = redis::cmd("ZADD").arg(DELAYED_KEY).arg(due).arg(member).query_async(conn).await?;
    Ok(due)
}

/// Parses `30s`, `5m`, `1h`, `250ms` or a plain number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().with_context(|| format!("`{text}` is not a duration like 30s, 5m, 1h or 250ms"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        _ => bail!("`{text}`: unknown unit `{unit}` (use ms, s, m, h or d)"),
    };
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1.5m").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("3w").is_err());
    }
}
