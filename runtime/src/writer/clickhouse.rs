//! The ClickHouse HTTP client, set up for what works on 18.16 and on current releases:
//! the `clickhouse` crate with validation off (the host checks rows itself), a hyper client
//! with TCP_NODELAY (2-4x faster inserts, see DESIGN.md), RowBinary inserts of pre-encoded
//! rows, `wait_end_of_query=1` on reads so a server error is reported as itself.

use std::time::Duration;

use bytes::Bytes;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

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
            E::Network(e) => ChError::Network(e.to_string()),
            E::TimedOut => ChError::Network("timed out".into()),
            E::BadResponse(text) => parse_server_error(&text),
            other => ChError::Other(other.to_string()),
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
    ChError::Other(t.chars().take(2000).collect())
}

/// A ClickHouse connection for one database.
#[derive(Clone)]
pub struct ChClient {
    client: ::clickhouse::Client,
    /// Without a database, for `CREATE DATABASE`.
    server: ::clickhouse::Client,
    database: String,
    url: String,
}

impl ChClient {
    pub fn new(url: &str, database: &str, user: Option<&str>, password: Option<&str>) -> anyhow::Result<ChClient> {
        super::schema::check_identifier("database name", database).map_err(|e| anyhow::anyhow!(e))?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_keepalive(Some(Duration::from_secs(60)));
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let http =
            HyperClient::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(2)).build(connector);
        let mut server = ::clickhouse::Client::with_http_client(http)
            .with_url(url)
            .with_validation(false)
            .with_compression(::clickhouse::Compression::None);
        if let Some(u) = user {
            server = server.with_user(u);
        }
        if let Some(p) = password {
            server = server.with_password(p);
        }
        let client = server.clone().with_database(database);
        Ok(ChClient { client, server, database: database.to_string(), url: url.to_string() })
    }

    pub fn database(&self) -> &str {
        &self.database
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Runs a statement that returns nothing; `low_cardinality` adds the setting 18.16 needs
    /// to create LowCardinality columns (current releases ignore it).
    pub async fn execute(&self, sql: &str, low_cardinality: bool) -> Result<(), ChError> {
        let mut q = self.client.query(sql).with_setting("wait_end_of_query", "1");
        if low_cardinality {
            q = q.with_setting("allow_experimental_low_cardinality_type", "1");
        }
        q.execute().await.map_err(ChError::from_client)
    }

    /// Runs a query and returns its rows as JSON objects (JSONEachRow).
    pub async fn query_json(&self, sql: &str) -> Result<Vec<serde_json::Value>, ChError> {
        let mut cursor = self
            .client
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

    /// Checks the server answers; returns its version.
    pub async fn ping(&self) -> Result<String, ChError> {
        let mut cursor =
            self.server.query("SELECT version()").fetch_bytes("TabSeparated").map_err(ChError::from_client)?;
        let bytes = cursor.collect().await.map_err(ChError::from_client)?;
        Ok(String::from_utf8_lossy(&bytes).trim().to_string())
    }

    pub async fn create_database(&self) -> Result<(), ChError> {
        self.server
            .query(&format!("CREATE DATABASE IF NOT EXISTS {}", self.database))
            .with_setting("wait_end_of_query", "1")
            .execute()
            .await
            .map_err(ChError::from_client)
    }

    /// Inserts pre-encoded RowBinary rows with one INSERT.
    /// `token`: the block's `insert_deduplication_token` (servers that have it, see `dedup`);
    /// `dedup`: an exactly-once table's INSERT, which must not skip deduplication.
    pub async fn insert_rowbinary(
        &self,
        sql: &str,
        data: Bytes,
        low_cardinality: bool,
        token: Option<&str>,
        dedup: bool,
    ) -> Result<(), ChError> {
        let mut insert = self.client.insert_formatted_with(sql.to_string());
        if low_cardinality {
            insert = insert.with_setting("allow_experimental_low_cardinality_type", "1");
        }
        if let Some(t) = token {
            insert = insert.with_setting("insert_deduplication_token", t);
        }
        if dedup {
            // A user profile may have turned deduplication off.
            insert = insert.with_setting("insert_deduplicate", "1");
        }
        insert.send(data).await.map_err(ChError::from_client)?;
        insert.end().await.map_err(ChError::from_client)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let auth = "Code: 516. DB::Exception: default: Authentication failed. (AUTHENTICATION_FAILED)";
        assert_eq!(parse_server_error(auth).class(), ErrorClass::Table);
    }
}
