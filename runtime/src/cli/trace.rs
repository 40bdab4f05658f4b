//! `sluice trace <id>`: an event's whole story. Each running host remembers only the attempts it
//! made itself (`trace`), so the command asks every host's admin API given (`--admin`, by default
//! the settings' admin address) and merges their answers; when none answers, it still tells what
//! Redis and ClickHouse hold (`story`) and says that the hosts' history was not reachable.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::TraceArgs;
use crate::story::{Stores, Trace};
use crate::writer::clickhouse::ChClient;

/// How long a host's admin API has to answer (it reads Redis and ClickHouse too).
const TIMEOUT: Duration = Duration::from_secs(15);

/// Prints the story (or the JSON); Ok(false) when nothing knows the id.
pub async fn trace(args: TraceArgs) -> Result<bool> {
    let id = args.id.trim().to_string();
    crate::story::classify(&id)?;
    let settings = args.host.resolve()?;
    let admins: Vec<String> = match args.admin.is_empty() {
        false => args.admin.clone(),
        true if settings.admin_addr == "off" => Vec::new(),
        true => vec![settings.admin_addr.clone()],
    };
    let mut answers = Vec::new();
    let mut unreachable = Vec::new();
    for a in &admins {
        match ask(a, &id).await {
            Ok(Some(t)) => answers.push(t),
            // It answered: it knows nothing of the id.
            Ok(None) => answers.push(Trace { query: id.clone(), matches: Vec::new() }),
            Err(e) => unreachable.push(format!("{e:#}")),
        }
    }
    let (answered, asked) = (answers.len(), admins.len());
    let mut found = if answered > 0 {
        crate::story::merge(&id, answers)
    } else {
        // No host to ask: what Redis and ClickHouse hold, from here.
        let mut conn = super::tool_connection(&crate::config::ToolSettings {
            redis: settings.redis.clone(),
            stream_prefix: settings.stream_prefix.clone(),
            redis_origin: settings.origins.redis_url.clone(),
        })
        .await?;
        let ch = ChClient::new(&settings.clickhouse)?;
        let stores = Stores {
            redis: &mut conn,
            clickhouse: Some(&ch),
            stream_prefix: &settings.stream_prefix,
            queues: &settings.bullmq,
        };
        crate::story::trace(&id, stores).await?
    };
    let why = match (asked, unreachable.is_empty()) {
        (0, _) => Some("no admin address to ask (--admin)".to_string()),
        (_, false) => Some(unreachable.join("; ")),
        _ => None,
    };
    if let Some(why) = &why {
        let note = match answered {
            0 => format!(
                "the hosts' history was not reachable ({why}): attempts unknown, what Redis and ClickHouse hold only"
            ),
            _ => format!("some hosts' history was not reachable ({why}): their attempts are missing"),
        };
        for m in &mut found.matches {
            m.notes.push(note.clone());
            crate::story::tell(m);
        }
        if answered == 0 || !args.json {
            eprintln!("warning: {note}");
        }
    }
    if found.matches.is_empty() {
        eprintln!("{}", crate::story::not_found(&id, &settings.bullmq));
        return Ok(false);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&found)?);
        return Ok(true);
    }
    for (i, m) in found.matches.iter().enumerate() {
        if i > 0 {
            println!();
        }
        let what = m.plugin.as_deref().unwrap_or("(plugin unknown)");
        println!("{what} / {}: {}", m.event_type.as_deref().unwrap_or("?"), m.state.replace('_', " "));
        for line in &m.story {
            println!("  {line}");
        }
    }
    Ok(true)
}

/// Asks one host's admin API; None when it does not know the id (404).
async fn ask(admin: &str, id: &str) -> Result<Option<Trace>> {
    let base = admin.trim_end_matches('/');
    // A host listening on every interface is asked on this machine's loopback.
    let base = base.replace("0.0.0.0", "127.0.0.1").replace("[::]", "[::1]");
    let base = if base.contains("://") { base } else { format!("http://{base}") };
    let url = format!("{base}/api/trace/{}", encode(id));
    let uri: hyper::Uri = url.parse().with_context(|| format!("`{admin}` is not an admin address (host:port)"))?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
    let exchange = async {
        let resp = client.get(uri).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, body))
    };
    let (status, body) = tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| anyhow::anyhow!("no answer from {admin} within {TIMEOUT:?}"))?
        .with_context(|| format!("cannot reach the admin API at {admin}"))?;
    let message = || {
        serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned())
    };
    match status {
        hyper::StatusCode::OK => Ok(Some(
            serde_json::from_slice(&body).with_context(|| format!("{admin} answered something else than a trace"))?,
        )),
        hyper::StatusCode::NOT_FOUND if body.starts_with(b"{\"error\":\"no event") => Ok(None),
        hyper::StatusCode::NOT_FOUND => bail!("{admin} has no trace endpoint (an older sluice?): {}", message()),
        s => bail!("{admin} answered {s}: {}", message()),
    }
}

/// `id` as a URL path segment (ids are printable text without spaces; a few characters still
/// mean something in a path).
fn encode(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b':' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_are_encoded_for_the_path() {
        assert_eq!(super::encode("1717245000123-0"), "1717245000123-0");
        assert_eq!(super::encode("a/b?c#d%"), "a%2Fb%3Fc%23d%25");
    }
}
