//! Connections to Redis, one type for the rest of the host whatever the deployment: a single
//! server (a `ConnectionManager`, which reconnects) or a Redis Cluster (a `ClusterConnection`,
//! which follows MOVED/ASK redirections and a shard's failover to its replica); plain or TLS
//! (`rediss://`, with the deployment's CA and client certificates); a password in the URL or
//! from a setting or file.
//!
//! Cluster mode is detected, not configured: the first seed that answers says
//! `cluster_enabled:1` in `INFO cluster`. On a cluster every key Sluice writes together lives
//! in one slot (hash tags, see [`slot_tag`]); a pipeline of independent commands whose keys
//! lie in several slots is split here, one sub-pipeline per slot.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::Slot;
use redis::{Cmd, IntoConnectionInfo, Pipeline, RedisFuture, Value};

use crate::secret::Secret;

/// Where and how to reach Redis (`SLUICE_REDIS_*`).
#[derive(Clone, Default)]
pub struct RedisOptions {
    /// One URL, or several seeds of a cluster (comma-separated in the setting).
    pub urls: Vec<String>,
    /// Used when a URL carries none.
    pub password: Option<Secret>,
    /// PEM file of the CA that signed the servers' certificates (`rediss://`); without it,
    /// the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM), for servers that require them (`tls-auth-clients`).
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

/// Without secrets: URLs with `***` for a password (the password is a `Secret`).
impl std::fmt::Debug for RedisOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisOptions")
            .field("urls", &self.display())
            .field("password", &self.password)
            .field("ca_file", &self.ca_file)
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .finish()
    }
}

impl RedisOptions {
    /// Options for one URL and nothing else (tools and tests).
    pub fn url(url: &str) -> RedisOptions {
        RedisOptions { urls: vec![url.to_string()], ..RedisOptions::default() }
    }

    /// The URLs without passwords, for messages.
    pub fn display(&self) -> String {
        self.urls.iter().map(|u| crate::secret::redact_url(u)).collect::<Vec<_>>().join(",")
    }

    /// The first URL with the password in it (for clients that take only a URL).
    pub fn url_with_password(&self) -> String {
        let url = self.urls.first().cloned().unwrap_or_default();
        match (&self.password, url.split_once("://")) {
            (Some(p), Some((scheme, rest))) if !rest.split('/').next().unwrap_or("").contains('@') => {
                let enc: String = p
                    .0
                    .bytes()
                    .map(|b| match b {
                        b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
                        _ => format!("%{b:02X}"),
                    })
                    .collect();
                format!("{scheme}://:{enc}@{rest}")
            }
            _ => url,
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.urls.is_empty() {
            bail!("SLUICE_REDIS_URL is empty");
        }
        for u in &self.urls {
            if !(u.starts_with("redis://") || u.starts_with("rediss://") || u.starts_with("unix://")) {
                bail!(
                    "SLUICE_REDIS_URL must be redis://, rediss:// or unix:// URLs (comma-separated for a cluster's seeds), got `{}`",
                    crate::secret::redact_url(u)
                );
            }
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            bail!("SLUICE_REDIS_CERT_FILE and SLUICE_REDIS_KEY_FILE go together: give both or neither");
        }
        let tls = self.urls.iter().any(|u| u.starts_with("rediss://"));
        if !tls && (self.ca_file.is_some() || self.cert_file.is_some()) {
            bail!("SLUICE_REDIS_CA_FILE / SLUICE_REDIS_CERT_FILE are set but SLUICE_REDIS_URL is not rediss://");
        }
        Ok(())
    }

    fn certificates(&self) -> Result<redis::TlsCertificates> {
        let client_tls = match (&self.cert_file, &self.key_file) {
            (Some(c), Some(k)) => Some(redis::ClientTlsConfig {
                client_cert: crate::tls::read_pem("SLUICE_REDIS_CERT_FILE", c)?,
                client_key: crate::tls::read_pem("SLUICE_REDIS_KEY_FILE", k)?,
            }),
            _ => None,
        };
        let root_cert = match &self.ca_file {
            Some(p) => Some(crate::tls::read_pem("SLUICE_REDIS_CA_FILE", p)?),
            None => None,
        };
        Ok(redis::TlsCertificates { client_tls, root_cert })
    }

    /// A client of the first server named (TLS as configured): for what a multiplexed connection
    /// cannot carry, such as a pub/sub subscription.
    pub fn first_client(&self) -> Result<redis::Client> {
        let info = self.infos()?.remove(0);
        Ok(match self.urls.iter().any(|u| u.starts_with("rediss://")) {
            true => redis::Client::build_with_tls(info, self.certificates()?)?,
            false => redis::Client::open(info)?,
        })
    }

    fn infos(&self) -> Result<Vec<redis::ConnectionInfo>> {
        self.urls
            .iter()
            .map(|u| {
                let info = u
                    .as_str()
                    .into_connection_info()
                    .with_context(|| format!("invalid Redis URL `{}`", crate::secret::redact_url(u)))?;
                Ok(match (&self.password, info.redis_settings().password()) {
                    (Some(p), None) => {
                        let settings = info.redis_settings().clone().set_password(&p.0);
                        info.set_redis_settings(settings)
                    }
                    _ => info,
                })
            })
            .collect()
    }
}

/// A connection to Redis: one server or a cluster. Cheap to clone (multiplexed).
#[derive(Clone)]
pub enum RedisConn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl RedisConn {
    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisConn::Cluster(_))
    }

    /// Every key matching `pattern` of type `kind` (SCAN): on a cluster, on every primary.
    pub async fn scan_keys(&mut self, pattern: &str, kind: &str) -> Result<Vec<String>> {
        use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
        let scan = |cursor: u64| {
            let mut c = redis::cmd("SCAN");
            c.arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(1000).arg("TYPE").arg(kind);
            c
        };
        let mut keys = Vec::new();
        match self {
            RedisConn::Single(c) => {
                let mut cursor = 0u64;
                loop {
                    let (next, page): (u64, Vec<String>) = scan(cursor).query_async(c).await.context("SCAN")?;
                    keys.extend(page);
                    cursor = next;
                    if cursor == 0 {
                        break;
                    }
                }
            }
            RedisConn::Cluster(c) => {
                // CLUSTER SLOTS: [[start, end, [host, port, id], replicas...], ...]
                let slots: Vec<Vec<Value>> =
                    redis::cmd("CLUSTER").arg("SLOTS").query_async(c).await.context("CLUSTER SLOTS")?;
                let mut primaries: Vec<(String, u16)> = Vec::new();
                for range in slots {
                    if let Some(Value::Array(node)) = range.get(2) {
                        let host: String = redis::from_redis_value(node[0].clone())?;
                        let port: u16 = redis::from_redis_value(node[1].clone())?;
                        if !primaries.contains(&(host.clone(), port)) {
                            primaries.push((host, port));
                        }
                    }
                }
                for (host, port) in primaries {
                    let mut cursor = 0u64;
                    loop {
                        let route =
                            RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host: host.clone(), port });
                        let v = c
                            .route_command(scan(cursor), route)
                            .await
                            .with_context(|| format!("SCAN on {host}:{port}"))?;
                        let (next, page): (u64, Vec<String>) = redis::from_redis_value(v)?;
                        keys.extend(page);
                        cursor = next;
                        if cursor == 0 {
                            break;
                        }
                    }
                }
            }
        }
        Ok(keys)
    }

    /// On a cluster: waits (up to `timeout`) until a replica of each primary holding one of
    /// `keys` has every write this connection sent it — so that those writes survive the
    /// primary's failover (replication is asynchronous: a primary killed right after a write
    /// may take it along). Returns false if some shard had no replica answer in time. On one
    /// server: nothing to wait for.
    pub async fn wait_replicated(&mut self, keys: &[&str], timeout: Duration) -> Result<bool> {
        use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
        let RedisConn::Cluster(c) = self else { return Ok(true) };
        let mut slots: Vec<Slot> = Vec::new();
        let mut all = true;
        for key in keys {
            let slot = Slot::for_key(key);
            if slots.contains(&slot) {
                continue;
            }
            slots.push(slot);
            let mut wait = redis::cmd("WAIT");
            wait.arg(1).arg(timeout.as_millis() as u64);
            let route =
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::with_key(key, SlotAddr::Master)));
            let acked = c.route_command(wait, route).await.with_context(|| format!("WAIT for the replica of {key}"))?;
            all &= matches!(acked, Value::Int(n) if n >= 1);
        }
        Ok(all)
    }
}

/// Connects with timeouts that suit blocking reads of `block`.
pub async fn connect(o: &RedisOptions, block: Duration) -> Result<RedisConn> {
    o.validate()?;
    let infos = o.infos()?;
    let tls = o.urls.iter().any(|u| u.starts_with("rediss://"));
    let response_timeout = block + Duration::from_secs(10);
    let mut last = None;
    for (info, url) in infos.iter().zip(&o.urls) {
        let client = if tls {
            redis::Client::build_with_tls(info.clone(), o.certificates()?)
        } else {
            redis::Client::open(info.clone())
        }
        .with_context(|| format!("invalid Redis URL `{}`", crate::secret::redact_url(url)))?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(response_timeout))
            .set_connection_timeout(Some(Duration::from_secs(3)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(2));
        let mut single = match client.get_connection_manager_with_config(config).await {
            Ok(c) => c,
            Err(e) => {
                // What to check, and whether no retry can change the answer (then the wait
                // gives up after a while, saying so).
                let (hint, never) = match e.to_string() {
                    m if m.contains("Parse error")
                        || m.contains("Incompatible type")
                        || m.contains("invalid response") =>
                    {
                        (
                            " (it answered, but not in the Redis protocol: is it Redis's port (6379 by default), or a TLS port given as redis://?)",
                            true,
                        )
                    }
                    m if m.contains("invalid peer certificate") => (
                        " (is SLUICE_REDIS_CA_FILE the CA that signed the server's certificate, for this host name?)",
                        true,
                    ),
                    m if m.contains("CertificateRequired") => (
                        " (the server requires a client certificate: SLUICE_REDIS_CERT_FILE and SLUICE_REDIS_KEY_FILE)",
                        true,
                    ),
                    m if m.contains("AuthenticationFailed") || m.contains("NOAUTH") || m.contains("WRONGPASS") => {
                        (" (check SLUICE_REDIS_PASSWORD / SLUICE_REDIS_PASSWORD_FILE)", true)
                    }
                    // No answer at all: a slow Redis, or not Redis (a TLS port given as redis://,
                    // an HTTP server waiting for its request). Retried, with the question.
                    m if m.contains("timed out") => (
                        " (no answer in the Redis protocol within 3 s: is it Redis's port? a TLS server needs rediss://)",
                        false,
                    ),
                    _ => ("", false),
                };
                let message = format!("cannot connect to Redis at {}{hint}", crate::secret::redact_url(url));
                let error = anyhow::Error::new(e).context(message.clone());
                last = Some(if never { error.context(crate::backoff::NeverSucceeds(message)) } else { error });
                continue;
            }
        };
        let info_text: String = redis::cmd("INFO")
            .arg("cluster")
            .query_async(&mut single)
            .await
            .with_context(|| format!("Redis at {} does not answer INFO", crate::secret::redact_url(url)))?;
        if !info_text.lines().any(|l| l.trim() == "cluster_enabled:1") {
            return Ok(RedisConn::Single(single));
        }
        let mut builder = redis::cluster::ClusterClientBuilder::new(infos.clone())
            .connection_timeout(Duration::from_secs(3))
            .response_timeout(response_timeout)
            .retries(8)
            .max_retry_wait(1000);
        if tls {
            builder = builder.certs(o.certificates()?);
        }
        let cluster = builder
            .build()
            .context("invalid Redis Cluster seeds")?
            .get_async_connection()
            .await
            .with_context(|| format!("cannot connect to the Redis Cluster at {}", o.display()))?;
        return Ok(RedisConn::Cluster(cluster));
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no Redis URL")))
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Single(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            // A transaction must stay whole: its keys share a slot by construction.
            RedisConn::Cluster(c) => {
                if pipeline.is_transaction() {
                    c.req_packed_commands(pipeline, offset, count)
                } else {
                    Box::pin(split_by_slot(c, pipeline))
                }
            }
        }
    }

    fn get_db(&self) -> i64 {
        0
    }
}

/// Runs a (non-transactional) pipeline on a cluster one slot at a time, and answers in the
/// pipeline's order. Every command Sluice pipelines names its key first.
async fn split_by_slot(c: &mut ClusterConnection, pipeline: &Pipeline) -> redis::RedisResult<Vec<Value>> {
    let mut groups: HashMap<Option<Slot>, (Pipeline, Vec<usize>)> = HashMap::new();
    let mut order: Vec<Option<Slot>> = Vec::new();
    for (i, cmd) in pipeline.cmd_iter().enumerate() {
        let slot = match cmd.args_iter().nth(1) {
            Some(redis::Arg::Simple(key)) => Some(Slot::for_key(key)),
            _ => None,
        };
        let g = groups.entry(slot).or_insert_with(|| {
            order.push(slot);
            (Pipeline::new(), Vec::new())
        });
        g.0.add_command(cmd.clone());
        g.1.push(i);
    }
    if groups.len() <= 1 {
        return c.req_packed_commands(pipeline, 0, pipeline.len()).await;
    }
    let mut out = vec![Value::Nil; pipeline.len()];
    for slot in order {
        let (p, idx) = &groups[&slot];
        let values = c.req_packed_commands(p, 0, p.len()).await?;
        for (i, v) in idx.iter().zip(values) {
            out[*i] = v;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::same_slot_as;

    #[test]
    fn hash_tags() {
        assert_eq!(same_slot_as("events:x"), "{events:x}");
        assert_eq!(same_slot_as("events:{x}"), "events:{x}");
        for stream in ["events:order.created", "{orders}:created", "x{y}z{w}"] {
            let other = format!("sluice:written:sluice:p:{}", same_slot_as(stream));
            assert_eq!(Slot::for_key(&other), Slot::for_key(stream), "{stream}");
        }
    }

    #[test]
    fn options_are_checked() {
        let mut o = RedisOptions::url("redis://h:1");
        o.ca_file = Some("/x".into());
        assert!(o.validate().unwrap_err().to_string().contains("not rediss://"));
        let mut o = RedisOptions::url("rediss://h:1");
        o.cert_file = Some("/x".into());
        assert!(o.validate().unwrap_err().to_string().contains("go together"));
        assert!(RedisOptions::url("http://h").validate().is_err());
    }
}
