//! The ClickHouse HTTP client, set up for what works on 18.16 and on current releases:
//! the `clickhouse` crate with validation off (the host checks rows itself), a hyper client
//! with TCP_NODELAY (2-4x faster small inserts: without it Nagle holds the request body back), RowBinary inserts of pre-encoded
//! rows, `wait_end_of_query=1` on reads so a server error is reported as itself; HTTPS with a
//! CA of the deployment's own; several endpoints with failover (see [`ChClient`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::server::ServerCaps;

/// A ClickHouse error, classified.
#[derive(Debug, thiserror::Error)]
pub enum ChError {
    /// The server answered with an exception: `Code: N, ...`.
    #[error("ClickHouse error {code}: {message}")]
    Server { code: u32, message: String },
    /// No answer: connection refused, reset, timeout.
    #[error("ClickHouse unreachable: {0}")]
    Network(String),
    #[error("ClickHouse client error: {0}")]
    Other(String),
}

impl ChError {
    fn from_client(e: ::clickhouse::error::Error) -> ChError {
        use ::clickhouse::error::Error as E;
        match e {
            E::Network(e) => ChError::Network(with_tls_hint(error_chain(&*e))),
            E::TimedOut => ChError::Network("timed out".into()),
            E::BadResponse(text) => parse_server_error(&text),
            other => ChError::Other(other.to_string()),
        }
    }

    /// Why no retry of a first request can succeed, if that is the case: the address answers,
    /// but not as ClickHouse's HTTP interface, or TLS cannot work. (Only for connecting: a
    /// server that answered before is retried whatever it says.)
    pub fn never_succeeds(&self, url: &str) -> Option<String> {
        let text = self.to_string();
        let first =
            text.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("").chars().take(200).collect::<String>();
        match self {
            ChError::Other(_) if text.contains("clickhouse-client") || text.contains("native protocol") => {
                Some(format!(
                    "{url} is ClickHouse's native-protocol port, not its HTTP interface: use the HTTP port (8123 by default; 8443 for HTTPS)"
                ))
            }
            // A web page where ClickHouse should answer (not a proxy's plain-text 5xx, not an
            // exception code alone: those are retried).
            ChError::Other(_)
                if text.to_ascii_lowercase().contains("<html") || text.to_ascii_lowercase().contains("<!doctype") =>
            {
                Some(format!(
                    "the server at {url} answered with a web page, not as ClickHouse's HTTP interface (\"{first}\"): is it the HTTP port (8123 by default; 8443 for HTTPS; 9000 is the native protocol)?"
                ))
            }
            ChError::Network(m) if m.contains("invalid peer certificate") || m.contains("UnknownIssuer") => {
                Some(format!("the certificate of {url} is not trusted: {first}"))
            }
            ChError::Network(m)
                if m.contains("InvalidContentType")
                    || m.contains("corrupt message")
                    || m.contains("wrong version number") =>
            {
                Some(format!(
                    "{url} does not speak TLS there: use http://, or the server's HTTPS port (8443 by default)"
                ))
            }
            ChError::Network(m) if m.contains("connection closed before message completed") => Some(format!(
                "the server at {url} closed the connection without an HTTP answer: is it ClickHouse's HTTP port (8123 by default), or a TLS port given as http://?"
            )),
            _ => None,
        }
    }

    /// Whether retrying the same request can succeed.
    pub fn retryable(&self) -> bool {
        self.class() == ErrorClass::Retry
    }

    /// What the error says about an INSERT, for the writer's policy.
    pub fn class(&self) -> ErrorClass {
        match self {
            ChError::Network(_) => ErrorClass::Retry,
            ChError::Other(_) => ErrorClass::Table,
            ChError::Server { code, .. } if is_retryable_code(*code) => ErrorClass::Retry,
            ChError::Server { code, .. } if blames_rows(*code) => ErrorClass::Rows,
            ChError::Server { .. } => ErrorClass::Table,
        }
    }
}

/// An error and its causes, each once: `client error (Connect): tcp connect error: Connection
/// refused (os error 111)` rather than `client error (Connect)`.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let t = c.to_string();
        if !out.contains(&t) {
            out.push_str(": ");
            out.push_str(&t);
        }
        cause = c.source();
    }
    out
}

/// A TLS failure says what to check.
fn with_tls_hint(m: String) -> String {
    if m.contains("UnknownIssuer") || m.contains("invalid peer certificate") {
        format!("{m} (is SLUICE_CLICKHOUSE_CA_FILE the CA that signed the server's certificate?)")
    } else if m.contains("InvalidCertificate") || m.contains("NotValidForName") {
        format!("{m} (the server's certificate does not name the host of SLUICE_CLICKHOUSE_URL)")
    } else {
        m
    }
}

/// How the writer treats a failed INSERT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The server or the network: the same block will succeed later; retry it.
    Retry,
    /// Some rows of the block: split the block to find them, so the others land.
    Rows,
    /// The table itself (schema, permissions, authentication): every block fails alike.
    Table,
}

/// Codes by which the server refuses data rather than the table: values it cannot parse or
/// convert, and expressions of the table (DEFAULT, MATERIALIZED) that throw on some rows.
pub fn blames_rows(code: u32) -> bool {
    matches!(
        code,
        6 // CANNOT_PARSE_TEXT
        | 26 // CANNOT_PARSE_QUOTED_STRING
        | 27 // CANNOT_PARSE_INPUT_ASSERTION_FAILED
        | 32 // ATTEMPT_TO_READ_AFTER_EOF
        | 33 // CANNOT_READ_ALL_DATA
        | 38 // CANNOT_PARSE_DATE
        | 41 // CANNOT_PARSE_DATETIME
        | 53 // TYPE_MISMATCH
        | 69 // ARGUMENT_OUT_OF_BOUND
        | 70 // CANNOT_CONVERT_TYPE
        | 72 // CANNOT_PARSE_NUMBER
        | 117 // INCORRECT_DATA
        | 131 // TOO_LARGE_STRING_SIZE
        | 190 // SIZES_OF_ARRAYS_DOESNT_MATCH
        | 349 // CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN
        | 395 // FUNCTION_THROW_IF_VALUE_IS_NON_ZERO
        | 691 // UNKNOWN_ELEMENT_OF_ENUM
    )
}

/// Server error codes worth retrying: timeouts, overload, too many parts, memory, network
/// between replicas, ZooKeeper hiccups. Everything else (syntax, unknown table or column,
/// type mismatch, authentication) will fail again the same way.
pub fn is_retryable_code(code: u32) -> bool {
    matches!(
        code,
        159 // TIMEOUT_EXCEEDED
        | 160 // TOO_SLOW
        | 164 // READONLY
        | 202 // TOO_MANY_SIMULTANEOUS_QUERIES
        | 203 // NO_FREE_CONNECTION
        | 209 // SOCKET_TIMEOUT
        | 210 // NETWORK_ERROR
        | 225 // NO_ZOOKEEPER: "ZooKeeper session has been expired" (a Replicated table's
              // ZooKeeper away or reconnecting)
        | 241 // MEMORY_LIMIT_EXCEEDED
        | 242 // TABLE_IS_READ_ONLY
        | 252 // TOO_MANY_PARTS
        | 285 // TOO_FEW_LIVE_REPLICAS (insert_quorum while a replica is down)
        | 286 // UNSATISFIED_QUORUM_FOR_PREVIOUS_WRITE
        | 289 // REPLICA_IS_NOT_IN_QUORUM
        | 319 // UNKNOWN_STATUS_OF_INSERT
        | 425 // SYSTEM_ERROR
        | 999 // KEEPER_EXCEPTION
    )
}

/// Parses `Code: N, e.displayText() = DB::Exception: ...` (18.16) or
/// `Code: N. DB::Exception: ...` (current releases).
pub fn parse_server_error(text: &str) -> ChError {
    let t = text.trim();
    let at = t.find("Code: ");
    if let Some(at) = at {
        let digits: String = t[at + 6..].chars().take_while(|c| c.is_ascii_digit()).collect();
        if let Ok(code) = digits.parse() {
            let message = t[at..].lines().next().unwrap_or(t).chars().take(2000).collect();
            return ChError::Server { code, message };
        }
    }
    // No ClickHouse exception: a load balancer or proxy in front answered that no server
    // could (502/503/504): another endpoint, or a later try, may succeed.
    let head: String = t.chars().take(300).collect();
    if ["502 Bad Gateway", "503 Service", "504 Gateway", "Bad Gateway", "Service Unavailable", "Gateway Time"]
        .iter()
        .any(|p| head.contains(p))
    {
        return ChError::Network(format!(
            "a proxy in front of ClickHouse answered: {}",
            head.lines().next().unwrap_or("")
        ));
    }
    ChError::Other(t.chars().take(2000).collect())
}

/// Runs `$op` (an expression using the endpoint `$ep`) on the current endpoint, then on the
/// others in turn while it fails in a way another replica may not.
macro_rules! on_endpoints {
    ($self:ident, $ep:ident => $op:expr) => {{
        let n = $self.endpoints.len();
        let start = $self.start();
        let mut k = 0;
        loop {
            let i = (start + k) % n;
            let $ep = &$self.endpoints[i];
            match $op {
                Ok(v) => {
                    $self.moved(start, i);
                    break Ok(v);
                }
                Err(e) if k + 1 < n && e.retryable() => {
                    tracing::debug!(endpoint = %$ep.url, error = %e, "ClickHouse endpoint failed; trying the next");
                    k += 1;
                }
                Err(e) => break Err(e),
            }
        }
    }};
}

/// Where and how to reach ClickHouse (`SLUICE_CLICKHOUSE_*`).
#[derive(Clone, Default)]
pub struct ChOptions {
    /// One or more endpoints (replicas, or load balancers in front of them), tried in order.
    pub urls: Vec<String>,
    pub database: String,
    pub user: Option<String>,
    pub password: Option<crate::secret::Secret>,
    /// PEM file of the CA that signed the servers' certificates (`https://` endpoints);
    /// without it, the system's roots.
    pub ca_file: Option<std::path::PathBuf>,
    /// The cluster (`<remote_servers>`) on which the host's DDL runs `ON CLUSTER`.
    pub cluster: Option<String>,
    /// Compress INSERT bodies with ClickHouse's LZ4 block compression (`decompress=1`).
    pub lz4: bool,
}

/// Without secrets: URLs with `***` for a password (the password is a `Secret`).
impl std::fmt::Debug for ChOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let urls: Vec<String> = self.urls.iter().map(|u| crate::secret::redact_url(u)).collect();
        f.debug_struct("ChOptions")
            .field("urls", &urls)
            .field("database", &self.database)
            .field("user", &self.user)
            .field("password", &self.password)
            .field("ca_file", &self.ca_file)
            .field("cluster", &self.cluster)
            .finish()
    }
}

impl ChOptions {
    /// Options for a single endpoint and no credentials (tools and tests).
    pub fn single(url: &str, database: &str) -> ChOptions {
        ChOptions { urls: vec![url.to_string()], database: database.to_string(), ..ChOptions::default() }
    }
}

/// One endpoint: a client for the database and one without it (for `CREATE DATABASE`).
struct Endpoint {
    /// For messages (any password replaced by `***`).
    url: String,
    client: ::clickhouse::Client,
    server: ::clickhouse::Client,
}

/// A ClickHouse connection for one database, over one or several endpoints. Every request
/// goes to the current endpoint; one that fails in a way another replica may not (network,
/// overload, ZooKeeper away, read-only replica) is tried on the next endpoint, which becomes
/// the current one. Inserts may move too: exactly-once tables are Replicated, whose block
/// deduplication is shared by the replicas through ZooKeeper, so a block that did land on
/// the first endpoint is dropped by the second.
#[derive(Clone)]
pub struct ChClient {
    endpoints: Arc<[Endpoint]>,
    current: Arc<AtomicUsize>,
    database: String,
    cluster: Option<String>,
    /// What the server offers, asked on first need (see `server`).
    caps: Arc<tokio::sync::OnceCell<ServerCaps>>,
}

impl ChClient {
    pub fn new(o: &ChOptions) -> anyhow::Result<ChClient> {
        crate::schema::check_identifier("database name", &o.database).map_err(|e| anyhow::anyhow!(e))?;
        if let Some(c) = &o.cluster {
            crate::schema::check_identifier("ClickHouse cluster name", c).map_err(|e| anyhow::anyhow!(e))?;
        }
        if o.urls.is_empty() {
            anyhow::bail!("no ClickHouse URL given (SLUICE_CLICKHOUSE_URL)");
        }
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_keepalive(Some(Duration::from_secs(60)));
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        connector.enforce_http(false);
        let tls = tls_config(o.ca_file.as_deref())?;
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        let http = HyperClient::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(2)).build(https);
        let mut endpoints = Vec::new();
        for url in &o.urls {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                anyhow::bail!(
                    "SLUICE_CLICKHOUSE_URL: `{}` is not an http:// or https:// URL",
                    crate::secret::redact_url(url)
                );
            }
            let compression = if o.lz4 { ::clickhouse::Compression::Lz4 } else { ::clickhouse::Compression::None };
            let mut server = ::clickhouse::Client::with_http_client(http.clone())
                .with_url(url)
                .with_validation(false)
                .with_compression(compression);
            if let Some(u) = &o.user {
                server = server.with_user(u);
            }
            if let Some(p) = &o.password {
                server = server.with_password(&p.0);
            }
            let client = server.clone().with_database(&o.database);
            // Only for messages: without a password, should the URL carry one.
            endpoints.push(Endpoint { url: crate::secret::redact_url(url), client, server });
        }
        Ok(ChClient {
            endpoints: endpoints.into(),
            current: Arc::new(AtomicUsize::new(0)),
            database: o.database.clone(),
            cluster: o.cluster.clone(),
            caps: Default::default(),
        })
    }

    /// What the server offers (version, types, settings): asked once, on first need.
    pub async fn caps(&self) -> Result<&ServerCaps, ChError> {
        self.caps
            .get_or_try_init(|| async {
                let version = self.ping().await?;
                let names = |rows: Vec<serde_json::Value>, key: &str| -> Vec<String> {
                    rows.iter().filter_map(|r| r.get(key).and_then(|v| v.as_str()).map(str::to_string)).collect()
                };
                let types = on_endpoints!(self, ep => json_rows(&ep.server, "SELECT name FROM system.data_type_families").await)?;
                let settings = on_endpoints!(self, ep => json_rows(&ep.server, &ServerCaps::settings_query()).await)?;
                Ok(ServerCaps::new(version, names(types, "name"), names(settings, "name")))
            })
            .await
    }

    pub fn database(&self) -> &str {
        &self.database
    }

    /// ` ON CLUSTER <name>` for DDL when a cluster is configured, else "".
    pub fn on_cluster(&self) -> String {
        self.cluster.as_ref().map(|c| format!(" ON CLUSTER {c}")).unwrap_or_default()
    }

    pub fn cluster(&self) -> Option<&str> {
        self.cluster.as_deref()
    }

    /// Where a request starts, and the endpoint that answered after others failed.
    fn start(&self) -> usize {
        self.current.load(Ordering::Relaxed) % self.endpoints.len()
    }

    fn moved(&self, from: usize, to: usize) {
        if from != to && self.current.compare_exchange(from, to, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            tracing::warn!(from = %self.endpoints[from].url, to = %self.endpoints[to].url, "ClickHouse endpoint failed; moved to the next one");
        }
    }
    /// Runs a statement of the host's that returns nothing (DDL, registry rows), with the
    /// settings its declarations may need where the server has them (see `server`).
    pub async fn execute(&self, sql: &str) -> Result<(), ChError> {
        let settings = self.caps().await?.ddl_settings();
        on_endpoints!(self, ep => {
            let mut q = ep.client.query(sql).with_setting("wait_end_of_query", "1");
            for (k, v) in &settings {
                q = q.with_setting(*k, *v);
            }
            q.execute().await.map_err(ChError::from_client)
        })
    }

    /// Runs a `CREATE TABLE ...` or `ALTER TABLE ...` of the host: `ON CLUSTER` when a
    /// cluster is configured (see [`with_on_cluster`]).
    /// Without a cluster but with several endpoints, each endpoint runs it (they are
    /// replicas of each other and each needs the table); every one must answer.
    pub async fn execute_ddl(&self, sql: &str) -> Result<(), ChError> {
        if let Some(c) = &self.cluster {
            return self.execute(&with_on_cluster(sql, c)).await.map_err(|e| match e {
                // The other servers run the task with their own profile's settings (18.16).
                ChError::Server { code: 44, message } if message.contains("allow_experimental_low_cardinality_type") => {
                    ChError::Server {
                        code: 44,
                        message: format!(
                            "{message} — ON CLUSTER DDL runs on the other servers with their own settings: add <allow_experimental_low_cardinality_type>1</allow_experimental_low_cardinality_type> to the default profile in users.xml of every server (ClickHouse before 19.x)"
                        ),
                    }
                }
                other => other,
            });
        }
        if self.endpoints.len() == 1 {
            return self.execute(sql).await;
        }
        let settings = self.caps().await?.ddl_settings();
        for ep in self.endpoints.iter() {
            let mut q = ep.client.query(sql).with_setting("wait_end_of_query", "1");
            for (k, v) in &settings {
                q = q.with_setting(*k, *v);
            }
            q.execute().await.map_err(|e| match ChError::from_client(e) {
                ChError::Server { code, message } => {
                    ChError::Server { code, message: format!("{}: {message}", ep.url) }
                }
                ChError::Network(m) => ChError::Network(format!(
                    "{} (tables are created on every endpoint when SLUICE_CLICKHOUSE_CLUSTER is not set): {m}",
                    ep.url
                )),
                ChError::Other(m) => ChError::Other(format!("{}: {m}", ep.url)),
            })?;
        }
        Ok(())
    }

    /// The endpoints' URLs without passwords, for messages.
    pub fn display(&self) -> String {
        self.endpoints.iter().map(|e| e.url.as_str()).collect::<Vec<_>>().join(",")
    }

    /// How many endpoints there are.
    pub fn endpoint_count(&self) -> usize {
        self.endpoints.len()
    }

    /// Runs a query and returns its rows as JSON objects (JSONEachRow).
    pub async fn query_json(&self, sql: &str) -> Result<Vec<serde_json::Value>, ChError> {
        on_endpoints!(self, ep => json_rows(&ep.client, sql).await)
    }

    /// Runs `SELECT count() AS n ...` and returns `n` (a UInt64 comes back as a JSON string
    /// on current releases, as a number on 18.16); 0 when there is no row.
    pub async fn query_count(&self, sql: &str) -> Result<u64, ChError> {
        Ok(self
            .query_json(sql)
            .await?
            .first()
            .and_then(|r| r.get("n"))
            .and_then(|n| n.as_u64().or_else(|| n.as_str().and_then(|s| s.parse().ok())))
            .unwrap_or(0))
    }

    /// Checks a server answers; returns its version.
    pub async fn ping(&self) -> Result<String, ChError> {
        on_endpoints!(self, ep => version(&ep.server).await)
    }

    /// Creates the database: `ON CLUSTER`, or on every endpoint (see [`Self::execute_ddl`]).
    pub async fn create_database(&self) -> Result<(), ChError> {
        let sql = format!("CREATE DATABASE IF NOT EXISTS {}{}", self.database, self.on_cluster());
        // An ON CLUSTER task waits for every server: not at each start, only when needed.
        let exists = format!(
            "SELECT count() AS n FROM system.databases WHERE name = {}",
            crate::schema::sql_string(&self.database)
        );
        if self.cluster.is_some() {
            // Without the database in the request: it may not exist yet.
            let rows = on_endpoints!(self, ep => json_rows(&ep.server, &exists).await)?;
            let n = rows.first().and_then(|r| r.get("n")).map(|n| n.to_string().trim_matches('"').to_string());
            if n.as_deref().is_some_and(|n| n != "0") {
                return Ok(());
            }
        }
        if self.cluster.is_some() || self.endpoints.len() == 1 {
            return on_endpoints!(self, ep => {
                ep.server.query(&sql).with_setting("wait_end_of_query", "1").execute().await.map_err(ChError::from_client)
            });
        }
        for ep in self.endpoints.iter() {
            ep.server.query(&sql).with_setting("wait_end_of_query", "1").execute().await.map_err(|e| {
                match ChError::from_client(e) {
                    ChError::Network(m) => ChError::Network(format!("{}: {m}", ep.url)),
                    other => other,
                }
            })?;
        }
        Ok(())
    }

    /// Inserts pre-encoded RowBinary rows with one INSERT (one block).
    /// `token`: the block's `insert_deduplication_token` (servers that have it, see `dedup`);
    /// `dedup`: an exactly-once table's INSERT, which must not skip deduplication.
    pub async fn insert_rowbinary(
        &self,
        sql: &str,
        data: Bytes,
        token: Option<&str>,
        dedup: bool,
    ) -> Result<(), ChError> {
        let settings = self.caps().await?.insert_settings(dedup);
        on_endpoints!(self, ep => {
            let mut insert = ep.client.insert_formatted_with(sql.to_string());
            for (k, v) in &settings {
                insert = insert.with_setting(*k, *v);
            }
            if let Some(t) = token {
                insert = insert.with_setting("insert_deduplication_token", t);
            }
            match insert.send(data.clone()).await {
                Ok(()) => insert.end().await.map_err(ChError::from_client),
                Err(e) => Err(ChError::from_client(e)),
            }
        })
    }
}

/// `CREATE TABLE IF NOT EXISTS db.t (...)` → `CREATE TABLE IF NOT EXISTS db.t ON CLUSTER c (...)`,
/// likewise `ALTER TABLE db.t ...`: every server of the cluster runs it (servers that are down
/// run it when they are back: the task waits in ZooKeeper).
pub fn with_on_cluster(sql: &str, cluster: &str) -> String {
    for head in ["CREATE TABLE IF NOT EXISTS ", "ALTER TABLE "] {
        if let Some(rest) = sql.strip_prefix(head) {
            let end = rest.find(|c: char| c.is_whitespace() || c == '(').unwrap_or(rest.len());
            return format!("{head}{} ON CLUSTER {cluster}{}", &rest[..end], &rest[end..]);
        }
    }
    sql.to_string()
}

async fn version(server: &::clickhouse::Client) -> Result<String, ChError> {
    let mut cursor = server.query("SELECT version()").fetch_bytes("TabSeparated").map_err(ChError::from_client)?;
    let bytes = cursor.collect().await.map_err(ChError::from_client)?;
    Ok(String::from_utf8_lossy(&bytes).trim().to_string())
}

async fn json_rows(client: &::clickhouse::Client, sql: &str) -> Result<Vec<serde_json::Value>, ChError> {
    let mut cursor = client
        .query(sql)
        .with_setting("wait_end_of_query", "1")
        .fetch_bytes("JSONEachRow")
        .map_err(ChError::from_client)?;
    let bytes = cursor.collect().await.map_err(ChError::from_client)?;
    bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).map_err(|e| ChError::Other(format!("unreadable JSONEachRow row: {e}"))))
        .collect()
}

/// The TLS setup for `https://` endpoints: the roots of `ca_file`, or the system's.
fn tls_config(ca_file: Option<&std::path::Path>) -> anyhow::Result<rustls::ClientConfig> {
    use anyhow::Context;
    let roots = crate::tls::root_store(ca_file).context("ClickHouse TLS (SLUICE_CLICKHOUSE_CA_FILE)")?;
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .context("ClickHouse TLS setup")?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ddl_on_cluster() {
        assert_eq!(
            with_on_cluster("CREATE TABLE IF NOT EXISTS a.t (\n x UInt8\n) ENGINE = M", "c"),
            "CREATE TABLE IF NOT EXISTS a.t ON CLUSTER c (\n x UInt8\n) ENGINE = M"
        );
        assert_eq!(
            with_on_cluster("ALTER TABLE a.t ADD COLUMN y UInt8", "c"),
            "ALTER TABLE a.t ON CLUSTER c ADD COLUMN y UInt8"
        );
        assert_eq!(with_on_cluster("SELECT 1", "c"), "SELECT 1");
    }

    #[test]
    fn classifies_server_errors() {
        let old =
            "Code: 60, e.displayText() = DB::Exception: Table analytics.x doesn't exist., e.what() = DB::Exception";
        match parse_server_error(old) {
            ChError::Server { code: 60, message } => assert!(message.contains("doesn't exist")),
            other => panic!("{other:?}"),
        }
        let new = "Code: 252. DB::Exception: Too many parts (300). (TOO_MANY_PARTS) (version 24.3.1)";
        let e = parse_server_error(new);
        assert!(matches!(e, ChError::Server { code: 252, .. }));
        assert!(e.retryable());
        assert!(!parse_server_error(old).retryable());
        assert!(ChError::Network("refused".into()).retryable());
        assert_eq!(parse_server_error(old).class(), ErrorClass::Table);
        let throw = "Code: 395, e.displayText() = DB::Exception: Value passed to 'throwIf' function is non zero";
        assert_eq!(parse_server_error(throw).class(), ErrorClass::Rows);
        assert!(parse_server_error("502 Bad Gateway").retryable());
        assert!(parse_server_error("<html><head><title>503 Service Temporarily Unavailable</title>").retryable());
        assert!(!parse_server_error("something else").retryable());
        let auth = "Code: 516. DB::Exception: default: Authentication failed. (AUTHENTICATION_FAILED)";
        assert_eq!(parse_server_error(auth).class(), ErrorClass::Table);
    }
}
