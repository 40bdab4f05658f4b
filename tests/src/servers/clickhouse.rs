//! A private ClickHouse of either release (18.16 from Debian, 26.9 from chdb-core), and the
//! macros that run a test on each.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::*;

/// The ClickHouse releases the end-to-end tests run against: every test that touches
/// ClickHouse runs once on each ([`on_every_release!`]), and its name ends with the release.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Release {
    /// Debian 12's `clickhouse-server` package, 18.16 (2018).
    V18,
    /// ClickHouse 26.9: the PyPI package chdb-core (clickhouse-local) served over HTTP by
    /// scripts/clickhouse/serve-current.py, installed by `scripts/install-deps.sh test`.
    V26,
}

impl Release {
    pub const ALL: [Release; 2] = [Release::V18, Release::V26];

    pub fn name(self) -> &'static str {
        match self {
            Release::V18 => "ClickHouse 18.16",
            Release::V26 => "ClickHouse 26.9",
        }
    }
}

impl Release {
    /// The guarantee (`schema::Guarantee`) a new table gets on a server of this release
    /// started by [`ClickHouse::start`]: 18.16 without ZooKeeper deduplicates nothing, 26.9
    /// deduplicates by insert_deduplication_token.
    pub fn plain_guarantee(self) -> &'static str {
        match self {
            Release::V18 => "at_least_once",
            Release::V26 => "exactly_once_token",
        }
    }
}

impl std::fmt::Display for Release {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What the releases here cannot do, in one place: tests that need it run on the other
/// release only, and say why (`cargo test` lists them as ignored with this reason).
pub const NO_ZOOKEEPER_ON_26: &str = "ClickHouse 26.9 here is chdb-core's clickhouse-local, which has no ZooKeeper client: Replicated tables stay read-only";

/// Declares, for each function `f(release: Release) -> anyhow::Result<()>` named, one test per
/// ClickHouse release: `f::clickhouse_18_16` and `f::clickhouse_26_9`.
#[macro_export]
macro_rules! on_every_release {
    ($($test:ident),+ $(,)?) => {$(
        mod $test {
            #[test]
            fn clickhouse_18_16() -> ::anyhow::Result<()> {
                super::$test($crate::Release::V18)
            }
            #[test]
            fn clickhouse_26_9() -> ::anyhow::Result<()> {
                super::$test($crate::Release::V26)
            }
        }
    )+};
}

/// Like [`on_every_release!`] for tests that need Replicated tables through ZooKeeper, which
/// only 18.16 has here ([`NO_ZOOKEEPER_ON_26`]): the 26.9 test is declared, and ignored.
#[macro_export]
macro_rules! on_releases_with_zookeeper {
    ($($test:ident),+ $(,)?) => {$(
        mod $test {
            #[test]
            fn clickhouse_18_16() -> ::anyhow::Result<()> {
                super::$test($crate::Release::V18)
            }
            #[test]
            #[ignore = "ClickHouse 26.9 here is chdb-core's clickhouse-local, which has no ZooKeeper client: Replicated tables stay read-only (NO_ZOOKEEPER_ON_26)"]
            fn clickhouse_26_9() -> ::anyhow::Result<()> {
                super::$test($crate::Release::V26)
            }
        }
    )+};
}

/// A private ClickHouse server of either release.
pub struct ClickHouse {
    pub release: Release,
    pub http_port: u16,
    pub tcp_port: u16,
    /// Set for servers started with TLS ([`ClickHouse::start_replica_pair`]).
    pub https_port: Option<u16>,
    /// The `default` user's password, if it has one.
    pub password: Option<String>,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

/// A ClickHouse that deduplicates re-sent batches, as the exactly-once tests need: 18.16 with
/// a ZooKeeper (Replicated tables), or 26.9 alone (insert_deduplication_token).
pub struct DedupClickHouse {
    pub ch: ClickHouse,
    pub zookeeper: Option<ZooKeeper>,
}

impl DedupClickHouse {
    /// The guarantee the host gives its new tables here (see `schema::Guarantee`).
    pub fn guarantee(release: Release) -> &'static str {
        match release {
            Release::V18 => "exactly_once_replicated",
            Release::V26 => "exactly_once_token",
        }
    }

    pub fn start(release: Release) -> Result<DedupClickHouse> {
        Ok(match release {
            Release::V18 => {
                let zk = ZooKeeper::start()?;
                DedupClickHouse { ch: ClickHouse::start_replicated(&zk, "r1")?, zookeeper: Some(zk) }
            }
            Release::V26 => DedupClickHouse { ch: ClickHouse::start(release)?, zookeeper: None },
        })
    }
}

impl ClickHouse {
    /// A server of `release` on free ports, with its own data directory.
    pub fn start(release: Release) -> Result<ClickHouse> {
        match release {
            Release::V18 => Self::start_on((free_port(), free_port()), None, None, None),
            Release::V26 => {
                let mut ch = ClickHouse {
                    release,
                    http_port: free_port(),
                    tcp_port: free_port(),
                    https_port: None,
                    password: None,
                    dir: tempfile::tempdir()?,
                    child: None,
                };
                ch.restart()?;
                Ok(ch)
            }
        }
    }

    /// A server (18.16) that keeps Replicated tables in `zk`, as replica `replica` (the
    /// `{replica}` macro; `{shard}` is `01`).
    pub fn start_replicated(zk: &ZooKeeper, replica: &str) -> Result<ClickHouse> {
        Self::start_on(
            (free_port(), free_port()),
            Some(format!(
                "<yandex>\n  <zookeeper><node><host>127.0.0.1</host><port>{}</port></node><session_timeout_ms>10000</session_timeout_ms></zookeeper>\n  <macros><shard>01</shard><replica>{replica}</replica></macros>\n</yandex>\n",
                zk.port
            )),
            None,
            None,
        )
    }

    /// Two servers (18.16) replicating each other through `zk` (replicas `r1` and `r2` of shard `01`
    /// of the cluster `sluice`, with distributed DDL), HTTPS on `https_port` with the
    /// certificate of `certs`, and `password` for the `default` user (plain HTTP stays open
    /// for the harness's own queries, with the password).
    pub fn start_replica_pair(zk: &ZooKeeper, certs: &Certs, password: &str) -> Result<(ClickHouse, ClickHouse)> {
        let ports: Vec<(u16, u16, u16, u16)> =
            (0..2).map(|_| (free_port(), free_port(), free_port(), free_port())).collect();
        let replicas: String = ports
            .iter()
            .map(|p| {
                format!(
                    "<replica><host>127.0.0.1</host><port>{}</port><user>default</user><password>{password}</password></replica>",
                    p.1
                )
            })
            .collect();
        let mut pair = Vec::new();
        for (i, (http, tcp, https, interserver)) in ports.iter().enumerate() {
            let extra = format!(
                "<yandex>
  <zookeeper><node><host>127.0.0.1</host><port>{zk}</port></node><session_timeout_ms>10000</session_timeout_ms></zookeeper>
  <macros><shard>01</shard><replica>r{n}</replica></macros>
  <remote_servers><sluice><shard><internal_replication>true</internal_replication>{replicas}</shard></sluice></remote_servers>
  <distributed_ddl><path>/clickhouse/task_queue/ddl</path></distributed_ddl>
  <interserver_http_host>127.0.0.1</interserver_http_host>
  <interserver_http_port>{interserver}</interserver_http_port>
  <https_port>{https}</https_port>
  <openSSL><server>
    <certificateFile>{cert}</certificateFile><privateKeyFile>{key}</privateKeyFile>
    <verificationMode>none</verificationMode><loadDefaultCAFile>false</loadDefaultCAFile>
    <cacheSessions>true</cacheSessions><disableProtocols>sslv2,sslv3</disableProtocols><preferServerCiphers>true</preferServerCiphers>
  </server></openSSL>
</yandex>
",
                zk = zk.port,
                n = i + 1,
                cert = certs.path("server.crt").display(),
                key = certs.path("server.key").display(),
            );
            pair.push(Self::start_on((*http, *tcp), Some(extra), Some(*https), Some(password))?);
        }
        let second = pair.pop().unwrap();
        Ok((pair.pop().unwrap(), second))
    }

    /// An 18.16 server.
    fn start_on(
        (http_port, tcp_port): (u16, u16),
        extra_config: Option<String>,
        https_port: Option<u16>,
        password: Option<&str>,
    ) -> Result<ClickHouse> {
        let dir = tempfile::tempdir()?;
        let tpl = repo_root().join("scripts/clickhouse");
        let config = std::fs::read_to_string(tpl.join("config.xml"))?
            .replace("@DIR@", &dir.path().display().to_string())
            .replace("@HTTP_PORT@", &http_port.to_string())
            .replace("@TCP_PORT@", &tcp_port.to_string());
        for sub in ["log", "data", "tmp", "user_files", "format_schemas"] {
            std::fs::create_dir_all(dir.path().join(sub))?;
        }
        std::fs::write(dir.path().join("config.xml"), config)?;
        if let Some(extra) = extra_config {
            std::fs::create_dir_all(dir.path().join("config.d"))?;
            std::fs::write(dir.path().join("config.d/replication.xml"), extra)?;
        }
        let users = std::fs::read_to_string(tpl.join("users.xml"))?;
        // A cluster's servers also need LowCardinality allowed in their profile (18.16): they
        // run ON CLUSTER DDL with their own settings, not the query's.
        let users = match password {
            Some(p) => users.replace("<password></password>", &format!("<password>{p}</password>")).replace(
                "<load_balancing>random</load_balancing>",
                "<load_balancing>random</load_balancing>\n            <allow_experimental_low_cardinality_type>1</allow_experimental_low_cardinality_type>",
            ),
            None => users,
        };
        std::fs::write(dir.path().join("users.xml"), users)?;
        let mut ch = ClickHouse {
            release: Release::V18,
            http_port,
            tcp_port,
            https_port,
            password: password.map(str::to_string),
            dir,
            child: None,
        };
        ch.restart()?;
        Ok(ch)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// The HTTPS endpoint of a server started with TLS.
    pub fn https_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.https_port.expect("a server started with TLS"))
    }

    /// The HTTP path of a query, with the password when there is one.
    fn query_path(&self) -> String {
        match &self.password {
            Some(p) => format!("/?user=default&password={p}"),
            None => "/".into(),
        }
    }

    /// Starts the server (again, on the same ports and data directory).
    pub fn restart(&mut self) -> Result<()> {
        std::fs::create_dir_all(self.dir.path().join("log"))?;
        let log = std::fs::File::create(self.dir.path().join("log/stdout.log"))?;
        let child = match self.release {
            Release::V18 => Command::new("clickhouse-server")
                .arg(format!("--config-file={}", self.dir.path().join("config.xml").display()))
                .stdout(Stdio::from(log.try_clone()?))
                .stderr(Stdio::from(log))
                .spawn()
                .context("cannot start clickhouse-server (run scripts/install-deps.sh)")?,
            Release::V26 => {
                let python = repo_root().join("target/tools/chdb/bin/python");
                if !python.exists() {
                    bail!("no ClickHouse 26.9 in {}: run `scripts/install-deps.sh test`", python.display());
                }
                Command::new(python)
                    .arg(repo_root().join("scripts/clickhouse/serve-current.py"))
                    .arg("--dir")
                    .arg(self.dir.path().join("server"))
                    .args(["--http-port", &self.http_port.to_string(), "--tcp-port", &self.tcp_port.to_string()])
                    .stdout(Stdio::from(log.try_clone()?))
                    .stderr(Stdio::from(log))
                    .spawn()
                    .context("cannot start ClickHouse 26.9 (scripts/clickhouse/serve-current.py)")?
            }
        };
        self.child = Some(child);
        let (port, path) = (self.http_port, self.query_path());
        let release = self.release;
        let log = self.dir.path().join("log/stdout.log");
        wait_until(&format!("{release} to answer"), Duration::from_secs(60), || {
            http_post(port, &path, b"SELECT 1").map(|r| r.trim() == "1").unwrap_or(false)
        })
        .with_context(|| format!("{release} log:\n{}", std::fs::read_to_string(&log).unwrap_or_default()))
    }

    /// SIGKILLs the server (its data stays for [`Self::restart`]).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            stop_child(&mut c);
        }
    }

    /// Runs a query; returns its TabSeparated output, trimmed.
    pub fn query(&self, sql: &str) -> Result<String> {
        Ok(http_post(self.http_port, &self.query_path(), sql.as_bytes())?.trim().to_string())
    }

    /// A query answering one number; -1 if it fails or is not a number (for polling).
    pub fn number(&self, sql: &str) -> i64 {
        self.query(sql).ok().and_then(|s| s.parse().ok()).unwrap_or(-1)
    }

    /// Rows of `analytics.<table>`; -1 if it cannot be read (yet).
    pub fn rows(&self, table: &str) -> i64 {
        self.number(&format!("SELECT count() FROM analytics.{table}"))
    }

    /// Runs a query with `clickhouse-client` over the native protocol (a second, independent
    /// reader of what the host wrote); returns its TabSeparated output.
    pub fn client(&self, sql: &str) -> Result<String> {
        let out = Command::new("timeout")
            .args([
                "60",
                "clickhouse-client",
                "--host",
                "127.0.0.1",
                "--port",
                &self.tcp_port.to_string(),
                "--password",
                self.password.as_deref().unwrap_or(""),
                "--query",
                sql,
            ])
            .output()
            .context("cannot run clickhouse-client")?;
        if !out.status.success() {
            bail!("clickhouse-client failed on `{sql}`: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8(out.stdout)?)
    }
}

impl Drop for ClickHouse {
    fn drop(&mut self) {
        self.stop();
    }
}
