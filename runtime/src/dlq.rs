//! Dead letters and replay: what operators do with events that failed, or with history.
//!
//! Policy: re-fed events go to the plugin's replay stream (`sluice:replay:<plugin>:<type>`),
//! never back to `events:<type>`, so that only the plugin concerned sees them again. They keep
//! their event id and time (the `id` and `ts` fields are filled in from the original entry if
//! the producer had not set them), so deduplication and event dates are unchanged.

use std::collections::BTreeMap;

use crate::redis_conn::RedisConn;
use anyhow::{Context, Result, bail};
use redis::{Value, cmd};

use crate::dead_letter::{self as record, DeadLetterEntry, DeadLetterKind, parse_entries};
use crate::keys::{DLQ_STREAM, replay_stream};
use crate::source::entry_id_millis;

/// Which dead letters to list: each field that is set must match.
#[derive(Debug, Default, Clone, Copy)]
pub struct Filter<'a> {
    pub plugin: Option<&'a str>,
    pub event_type: Option<&'a str>,
    pub kind: Option<DeadLetterKind>,
}

impl Filter<'_> {
    pub fn plugin(plugin: Option<&str>) -> Filter<'_> {
        Filter { plugin, ..Filter::default() }
    }

    fn matches(&self, e: &DeadLetterEntry) -> bool {
        let is = |want: Option<&str>, field: &str| want.is_none() || e.get(field).as_deref() == want;
        is(self.plugin, record::PLUGIN)
            && is(self.event_type, record::EVENT_TYPE)
            && (self.kind.is_none() || e.kind() == self.kind)
    }
}

/// Dead letters, oldest first, that match `filter`.
pub async fn list(conn: &mut RedisConn, filter: Filter<'_>, limit: usize) -> Result<Vec<DeadLetterEntry>> {
    let mut out = Vec::new();
    let mut start = "-".to_string();
    loop {
        let v: Value =
            cmd("XRANGE").arg(DLQ_STREAM).arg(&start).arg("+").arg("COUNT").arg(1000).query_async(conn).await?;
        let page = parse_entries(v)?;
        let n = page.len();
        let last = page.last().map(|e| e.id.clone());
        out.extend(page.into_iter().filter(|e| filter.matches(e)));
        if out.len() >= limit || n < 1000 {
            break;
        }
        start = format!("({}", last.unwrap());
    }
    out.truncate(limit);
    Ok(out)
}

/// Removes the dead letter `dlq_id` and adds its event to the replay stream, atomically;
/// false if that dead letter is gone (e.g. reprocessed by someone else meanwhile).
const REPROCESS: &str = r#"
if #redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1]) == 0 then return false end
local args = {KEYS[2], '*'}
for i = 2, #ARGV do args[#args + 1] = ARGV[i] end
local id = redis.call('XADD', unpack(args))
redis.call('XDEL', KEYS[1], ARGV[1])
return id
"#;

/// Fields for re-feeding an original entry: its own, plus `id` and `ts` if it had none.
fn refeed_fields(mut fields: Vec<(String, Vec<u8>)>, stream: &str, entry_id: &str) -> Vec<(String, Vec<u8>)> {
    let has = |fields: &[(String, Vec<u8>)], k: &str| fields.iter().any(|(f, _)| f == k);
    if !has(&fields, "id") {
        fields.push(("id".into(), format!("{stream}/{entry_id}").into_bytes()));
    }
    if !has(&fields, "ts")
        && let Some(ms) = entry_id_millis(entry_id)
    {
        fields.push(("ts".into(), ms.to_string().into_bytes()));
    }
    fields
}

/// Sends a dead letter back to its plugin. Returns the replay stream and new entry id.
pub async fn reprocess(conn: &mut RedisConn, entry: &DeadLetterEntry) -> Result<Option<(String, String)>> {
    let (Some(plugin), Some(event_type), Some(stream), Some(entry_id)) = (
        entry.get(record::PLUGIN),
        entry.get(record::EVENT_TYPE),
        entry.get(record::STREAM),
        entry.get(record::ENTRY_ID),
    ) else {
        bail!("dead letter {} lacks plugin, event_type, stream or entry_id: not written by sluice?", entry.id);
    };
    // An entry that failed on the replay stream keeps the id/ts it was given there.
    let fields = refeed_fields(entry.original_fields(), &stream, &entry_id);
    let target = replay_stream(&plugin, &event_type);
    if conn.is_cluster() {
        // The dead-letter and replay streams live in different slots: no script can touch
        // both. Copy, then delete (a failure in between leaves the dead letter to retry).
        if get(conn, &entry.id).await?.is_none() {
            return Ok(None);
        }
        let mut c = cmd("XADD");
        c.arg(&target).arg("*");
        for (k, v) in &fields {
            c.arg(k).arg(v.as_slice());
        }
        let id: String = c.query_async(conn).await.with_context(|| format!("cannot reprocess {}", entry.id))?;
        let _: () = cmd("XDEL").arg(DLQ_STREAM).arg(&entry.id).query_async(conn).await?;
        return Ok(Some((target, id)));
    }
    let script = redis::Script::new(REPROCESS);
    let mut inv = script.prepare_invoke();
    inv.key(DLQ_STREAM).key(&target).arg(&entry.id);
    for (k, v) in &fields {
        inv.arg(k).arg(v.as_slice());
    }
    let id: Option<String> = inv.invoke_async(conn).await.with_context(|| format!("cannot reprocess {}", entry.id))?;
    Ok(id.map(|id| (target, id)))
}

/// Reads one dead letter.
pub async fn get(conn: &mut RedisConn, id: &str) -> Result<Option<DeadLetterEntry>> {
    let v: Value = cmd("XRANGE").arg(DLQ_STREAM).arg(id).arg(id).query_async(conn).await?;
    Ok(parse_entries(v)?.into_iter().next())
}

/// Deletes dead letters: all of them, or those of one plugin. Returns how many.
pub async fn purge(conn: &mut RedisConn, plugin: Option<&str>) -> Result<usize> {
    match plugin {
        None => {
            let n: usize = cmd("XLEN").arg(DLQ_STREAM).query_async(conn).await?;
            let _: () = cmd("DEL").arg(DLQ_STREAM).query_async(conn).await?;
            Ok(n)
        }
        Some(_) => {
            let entries = list(conn, Filter::plugin(plugin), usize::MAX).await?;
            for chunk in entries.chunks(1000) {
                let mut c = cmd("XDEL");
                c.arg(DLQ_STREAM);
                for e in chunk {
                    c.arg(&e.id);
                }
                let _: usize = c.query_async(conn).await?;
            }
            Ok(entries.len())
        }
    }
}

/// A stream position from the command line: an entry id (`1717245000123-0` or `1717245000123`)
/// or an RFC 3339 time, which becomes the millisecond part of an id.
pub fn position(arg: &str) -> Result<String> {
    if arg == "-" || arg == "+" {
        return Ok(arg.to_string());
    }
    let id_like =
        arg.split('-').count() <= 2 && arg.split('-').all(|p| !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit()));
    if id_like {
        return Ok(arg.to_string());
    }
    let t = chrono::DateTime::parse_from_rfc3339(arg)
        .with_context(|| format!("`{arg}` is neither a stream entry id (1717245000123-0) nor an RFC 3339 time"))?;
    Ok(t.timestamp_millis().max(0).to_string())
}

/// The event types whose streams have the plugin's consumer group (what it subscribes to).
pub async fn subscribed_types(conn: &mut RedisConn, prefix: &str, plugin: &str) -> Result<Vec<String>> {
    let group = crate::keys::group_name(plugin);
    let mut types = BTreeMap::new();
    for key in conn.scan_keys(&format!("{}*", glob_escape(prefix)), "stream").await? {
        let groups: Value = cmd("XINFO").arg("GROUPS").arg(&key).query_async(conn).await?;
        let groups: Vec<BTreeMap<String, Value>> = redis::from_redis_value(groups).unwrap_or_default();
        if groups.iter().any(|g| {
            g.get("name").and_then(|n| redis::from_redis_value::<String>(n.clone()).ok()).as_deref() == Some(&group)
        }) {
            types.insert(key[prefix.len()..].to_string(), ());
        }
    }
    Ok(types.into_keys().collect())
}

fn glob_escape(s: &str) -> String {
    s.chars().flat_map(|c| if "*?[]\\".contains(c) { vec!['\\', c] } else { vec![c] }).collect()
}

/// Copies the entries of `stream` between `from` and `to` (inclusive) to the plugin's replay
/// stream for `event_type`; `progress` is called with the running count. Returns the count.
pub async fn replay(
    conn: &mut RedisConn,
    stream: &str,
    plugin: &str,
    event_type: &str,
    from: &str,
    to: &str,
    mut progress: impl FnMut(u64),
) -> Result<u64> {
    let target = replay_stream(plugin, event_type);
    let mut start = from.to_string();
    let mut copied = 0u64;
    loop {
        let v: Value = cmd("XRANGE").arg(stream).arg(&start).arg(to).arg("COUNT").arg(1000).query_async(conn).await?;
        let page = parse_entries(v)?;
        if page.is_empty() {
            break;
        }
        let mut p = redis::pipe();
        for e in &page {
            let c = p.cmd("XADD").arg(&target).arg("*");
            for (k, v) in refeed_fields(e.fields.clone(), stream, &e.id) {
                c.arg(k).arg(v);
            }
            p.ignore();
        }
        let _: () = p.query_async(conn).await.with_context(|| format!("cannot write to {target}"))?;
        copied += page.len() as u64;
        progress(copied);
        if page.len() < 1000 {
            break;
        }
        start = format!("({}", page.last().unwrap().id);
    }
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions() {
        assert_eq!(position("1717245000123-0").unwrap(), "1717245000123-0");
        assert_eq!(position("1717245000123").unwrap(), "1717245000123");
        assert_eq!(position("2024-06-01T12:30:00.123Z").unwrap(), "1717245000123");
        assert!(position("yesterday").is_err());
    }

    #[test]
    fn refeed_keeps_identity() {
        let f = refeed_fields(vec![("payload".into(), b"{}".to_vec())], "events:x", "1717245000123-0");
        assert_eq!(f[1], ("id".to_string(), b"events:x/1717245000123-0".to_vec()));
        assert_eq!(f[2], ("ts".to_string(), b"1717245000123".to_vec()));
        let f = refeed_fields(vec![("id".into(), b"u".to_vec()), ("ts".into(), b"5".to_vec())], "s", "1-0");
        assert_eq!(f.len(), 2);
    }
}
