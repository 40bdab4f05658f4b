//! Dead letters and replay: what operators do with events that failed, or with history.
//!
//! Policy: re-fed events go to the plugin's replay stream (`sluice:replay:<plugin>:<type>`),
//! never back to `events:<type>`, so that only the plugin concerned sees them again. They keep
//! their event id and time (the `id` and `ts` fields are filled in from the original entry if
//! the producer had not set them), so deduplication and event dates are unchanged.

use std::collections::{BTreeMap, HashMap};

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
    pub fn matches(&self, e: &DeadLetterEntry) -> bool {
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

/// Deletes the dead letters `entries` (as listed). Returns how many were still there.
pub async fn delete(conn: &mut RedisConn, entries: &[DeadLetterEntry]) -> Result<usize> {
    let mut n = 0;
    for chunk in entries.chunks(1000) {
        let mut c = cmd("XDEL");
        c.arg(DLQ_STREAM);
        for e in chunk {
            c.arg(&e.id);
        }
        n += c.query_async::<usize>(conn).await?;
    }
    Ok(n)
}

/// Whether `id` can be a dead letter's id (a stream entry id: `1717245000123-0`).
pub fn check_id(id: &str) -> Result<()> {
    let ok = id.split_once('-').is_some_and(|(ms, seq)| {
        !ms.is_empty()
            && !seq.is_empty()
            && ms.bytes().all(|c| c.is_ascii_digit())
            && seq.bytes().all(|c| c.is_ascii_digit())
    });
    if !ok {
        bail!("`{id}` is not a dead-letter id: ids look like 1717245000123-0 (see `sluice dlq list`)");
    }
    Ok(())
}

/// The plugins and event types a filter may name: those of the consumer groups on the event
/// streams, and those of the dead letters themselves.
#[derive(Debug, Default)]
pub struct Known {
    pub plugins: std::collections::BTreeSet<String>,
    pub event_types: std::collections::BTreeSet<String>,
}

impl Known {
    pub async fn find(conn: &mut RedisConn, prefix: &str, letters: &[DeadLetterEntry]) -> Result<Known> {
        let mut k = Known::default();
        for (event_type, groups) in groups_by_type(conn, prefix).await? {
            if !groups.is_empty() {
                k.event_types.insert(event_type);
            }
            k.plugins.extend(groups.iter().filter_map(|g| g.strip_prefix("sluice:")).map(str::to_string));
        }
        for e in letters {
            k.plugins.extend(e.get(record::PLUGIN));
            k.event_types.extend(e.get(record::EVENT_TYPE));
        }
        Ok(k)
    }

    /// An error listing the known names when the filter names an unknown plugin or type.
    pub fn check(&self, filter: &Filter<'_>) -> Result<()> {
        let list = |s: &std::collections::BTreeSet<String>| {
            if s.is_empty() { "none".to_string() } else { s.iter().cloned().collect::<Vec<_>>().join(", ") }
        };
        if let Some(p) = filter.plugin.filter(|p| !self.plugins.contains(*p)) {
            bail!(
                "unknown plugin `{p}`: no consumer group sluice:{p} and no dead letter of it; known plugins: {}",
                list(&self.plugins)
            );
        }
        if let Some(t) = filter.event_type.filter(|t| !self.event_types.contains(*t)) {
            bail!(
                "unknown event type `{t}`: no stream of it is read and no dead letter has it; known types: {}",
                list(&self.event_types)
            );
        }
        Ok(())
    }
}

/// A stream position from the command line: an entry id (`1717245000123-0` or `1717245000123`),
/// an RFC 3339 time, a date and time without a zone (UTC) or a date alone (midnight UTC); the
/// times become the millisecond part of an id. `-` and `+`: the first and last entries.
pub fn position(arg: &str) -> Result<String> {
    if arg == "-" || arg == "+" {
        return Ok(arg.to_string());
    }
    let id_like =
        arg.split('-').count() <= 2 && arg.split('-').all(|p| !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit()));
    if id_like {
        return Ok(arg.to_string());
    }
    let millis = if let Ok(t) = chrono::DateTime::parse_from_rfc3339(arg) {
        t.timestamp_millis()
    } else if let Ok(t) = chrono::NaiveDateTime::parse_from_str(arg, "%Y-%m-%dT%H:%M:%S%.f")
        .or_else(|_| chrono::NaiveDateTime::parse_from_str(arg, "%Y-%m-%d %H:%M:%S%.f"))
    {
        t.and_utc().timestamp_millis()
    } else if let Ok(d) = chrono::NaiveDate::parse_from_str(arg, "%Y-%m-%d") {
        d.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc().timestamp_millis()
    } else {
        bail!(
            "`{arg}` is not a position: give a stream entry id (1717245000123-0), an RFC 3339 time (2024-06-01T10:00:00Z), a date and time in UTC (2024-06-01T10:00:00) or a date (2024-06-01, midnight UTC)"
        );
    };
    Ok(millis.max(0).to_string())
}

/// Checks that `from` (as given) does not come after `to`.
pub fn check_range(from: &str, to: &str, from_arg: &str, to_arg: &str) -> Result<()> {
    use crate::keys::StreamId;
    if let (Some(f), Some(t)) = (StreamId::parse(from), StreamId::parse(to))
        && f > t
    {
        bail!("--from {from_arg} comes after --to {to_arg}: nothing lies between them");
    }
    Ok(())
}

/// The entries of `stream` between `from` and `to` (inclusive): how many, and the first and
/// last ids (for a plan).
pub async fn count_range(
    conn: &mut RedisConn,
    stream: &str,
    from: &str,
    to: &str,
) -> Result<(u64, Option<String>, Option<String>)> {
    let (mut n, mut first, mut last) = (0u64, None, None);
    let mut start = from.to_string();
    loop {
        let v: Vec<(String, Value)> =
            cmd("XRANGE").arg(stream).arg(&start).arg(to).arg("COUNT").arg(10_000).query_async(conn).await?;
        let got = v.len();
        if got == 0 {
            break;
        }
        if first.is_none() {
            first = Some(v[0].0.clone());
        }
        let id = v[got - 1].0.clone();
        start = format!("({id}");
        last = Some(id);
        n += got as u64;
        if got < 10_000 {
            break;
        }
    }
    Ok((n, first, last))
}

/// The event streams under `prefix` (not the host's own `sluice:` keys, which a short prefix
/// could match), by event type, with the names of the consumer groups that read each.
pub async fn groups_by_type(conn: &mut RedisConn, prefix: &str) -> Result<BTreeMap<String, Vec<String>>> {
    let mut out = BTreeMap::new();
    for key in conn.scan_keys(&format!("{}*", crate::keys::glob_escape(prefix)), "stream").await? {
        if key.starts_with("sluice:") {
            continue;
        }
        let groups: Value = cmd("XINFO").arg("GROUPS").arg(&key).query_async(conn).await?;
        let groups: Vec<BTreeMap<String, Value>> = redis::from_redis_value(groups).unwrap_or_default();
        let names = groups
            .iter()
            .filter_map(|g| g.get("name").and_then(|n| redis::from_redis_value::<String>(n.clone()).ok()))
            .collect();
        out.insert(key[prefix.len()..].to_string(), names);
    }
    Ok(out)
}

/// What `XINFO GROUPS` says of one consumer group of `stream` (`pending`, `lag`,
/// `last-delivered-id`, `consumers`...); `None` if the stream or the group is not there.
pub async fn group_info(conn: &mut RedisConn, stream: &str, group: &str) -> Option<HashMap<String, Value>> {
    let groups: Vec<HashMap<String, Value>> = cmd("XINFO").arg("GROUPS").arg(stream).query_async(conn).await.ok()?;
    groups.into_iter().find(|g| {
        g.get("name").and_then(|v| redis::from_redis_value::<String>(v.clone()).ok()).as_deref() == Some(group)
    })
}

/// The event types whose streams have the plugin's consumer group (what it subscribes to).
pub async fn subscribed_types(conn: &mut RedisConn, prefix: &str, plugin: &str) -> Result<Vec<String>> {
    let group = crate::keys::group_name(plugin);
    let by_type = groups_by_type(conn, prefix).await?;
    Ok(by_type.into_iter().filter(|(_, groups)| groups.contains(&group)).map(|(t, _)| t).collect())
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
        // A date alone is midnight UTC; a time without a zone is UTC.
        assert_eq!(position("2024-06-01").unwrap(), "1717200000000");
        assert_eq!(position("2024-06-01T12:30:00.123").unwrap(), "1717245000123");
        assert!(
            check_range("1717245000124", "1717245000123-9", "a", "b")
                .unwrap_err()
                .to_string()
                .contains("--from a comes after --to b")
        );
        assert!(check_range("1717245000123-1", "1717245000123-1", "a", "b").is_ok());
        assert!(check_range("-", "1", "-", "1").is_ok());
        assert!(check_id("1717245000123-0").is_ok());
        assert!(check_id("1717245000123").is_err() && check_id("x-1").is_err() && check_id("").is_err());
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
