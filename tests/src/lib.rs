//! The test harness: private `redis-server` and `clickhouse-server` processes on free local
//! ports with their own data directories (never 6379/8123), and the `sluice` binary run as a
//! real process. Everything is stopped when its handle drops; every wait has a timeout.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Polls `f` until it returns true or `timeout` passes.
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("timed out after {timeout:?} waiting for {what}")
}

/// SIGTERM, up to 10 s to exit, then SIGKILL; the child is reaped.
pub fn stop_child(child: &mut Child) {
    // Already reaped: its pid may belong to another process by now (pid_max can be 32768),
    // such as another test's redis-server.
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    unsafe { libc_kill(child.id() as i32, 15) };
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

/// A process's CPU time so far (user + system, seconds) and its peak RSS (VmHWM, MiB), from
/// /proc.
pub fn process_usage(pid: u32) -> Result<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = &stat[stat.rfind(')').context("/proc/<pid>/stat")? + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat (utime, stime), counted here from the state field (the 3rd),
    // in USER_HZ ticks (100 on Linux x86-64).
    let ticks: f64 = f[11].parse::<f64>()? + f[12].parse::<f64>()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let hwm_kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    Ok((ticks / 100.0, hwm_kb / 1024.0))
}

/// Sends a signal to a process.
pub fn signal(child: &Child, sig: i32) {
    unsafe { libc_kill(child.id() as i32, sig) };
}

/// A private Redis server.
pub struct Redis {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Redis {
    pub fn start() -> Result<Redis> {
        let dir = tempfile::tempdir()?;
        let mut r = Redis { port: free_port(), dir, child: None };
        r.restart()?;
        Ok(r)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again, on the same port and data directory).
    pub fn restart(&mut self) -> Result<()> {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start redis-server (run scripts/install-deps.sh)")?;
        self.child = Some(child);
        let url = self.url();
        wait_until("redis-server to answer", Duration::from_secs(20), || {
            redis::Client::open(url.as_str())
                .and_then(|c| c.get_connection())
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
                .is_ok()
        })
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            stop_child(&mut c);
        }
    }

    pub fn conn(&self) -> Result<redis::Connection> {
        Ok(redis::Client::open(self.url())?.get_connection_with_timeout(Duration::from_secs(5))?)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A private single-node ZooKeeper (Debian's `zookeeper` package), for ClickHouse's
/// Replicated tables.
pub struct ZooKeeper {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl ZooKeeper {
    pub fn start() -> Result<ZooKeeper> {
        let dir = tempfile::tempdir()?;
        let port = free_port();
        std::fs::create_dir_all(dir.path().join("data"))?;
        std::fs::write(
            dir.path().join("zoo.cfg"),
            format!(
                "tickTime=500\ndataDir={}\nclientPort={port}\nclientPortAddress=127.0.0.1\nadmin.enableServer=false\nmaxSessionTimeout=30000\n",
                dir.path().join("data").display()
            ),
        )?;
        let mut zk = ZooKeeper { port, dir, child: None };
        zk.restart()?;
        Ok(zk)
    }

    pub fn restart(&mut self) -> Result<()> {
        let log = std::fs::File::create(self.dir.path().join("zookeeper.log"))?;
        let child = Command::new("java")
            .args([
                "-Xmx256m",
                "-XX:+UseSerialGC",
                "-cp",
                "/usr/share/java/zookeeper.jar:/usr/share/java/slf4j-simple.jar",
            ])
            .arg("org.apache.zookeeper.server.quorum.QuorumPeerMain")
            .arg(self.dir.path().join("zoo.cfg"))
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .context("cannot start ZooKeeper (run scripts/install-deps.sh test)")?;
        self.child = Some(child);
        let port = self.port;
        // `srvr` is on the default four-letter-word whitelist and answers only when serving.
        wait_until("ZooKeeper to answer", Duration::from_secs(60), || {
            let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return false };
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut out = String::new();
            s.write_all(b"srvr").is_ok() && s.read_to_string(&mut out).is_ok() && out.contains("Mode:")
        })
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            stop_child(&mut c);
        }
    }
}

impl Drop for ZooKeeper {
    fn drop(&mut self) {
        self.stop();
    }
}

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
    /// The guarantee (`writer::dedup::Guarantee`) a new table gets on a server of this release
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
    /// The guarantee the host gives its new tables here (see `writer::dedup::Guarantee`).
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

/// A minimal HTTP/1.1 POST to 127.0.0.1:`port`; errors on a non-200 answer.
pub fn http_post(port: u16, path: &str, body: &[u8]) -> Result<String> {
    let (status, head, body) = http(port, "POST", path, &[], body)?;
    if status != 200 {
        bail!("HTTP {}: {}", head.lines().next().unwrap_or(""), body.trim());
    }
    Ok(body)
}

/// A minimal HTTP/1.1 request to 127.0.0.1:`port`; returns (status, head, body).
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(u16, String, String)> {
    let mut s = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let text = String::from_utf8_lossy(&resp).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(body) } else { body.to_string() };
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((status, head.to_string(), body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// The `sluice` binary under test: `$SLUICE_TEST_BIN`, else target/release, else target/debug.
pub fn sluice_bin() -> PathBuf {
    if let Ok(p) = std::env::var("SLUICE_TEST_BIN") {
        return PathBuf::from(p);
    }
    let root = repo_root();
    for p in ["target/release/sluice", "target/debug/sluice"] {
        if root.join(p).exists() {
            return root.join(p);
        }
    }
    panic!("no sluice binary: run `make build` (or set SLUICE_TEST_BIN)")
}

/// The first-party plugins: `$SLUICE_TEST_PLUGINS`, else target/plugins.
pub fn plugins_dir() -> PathBuf {
    let dir =
        std::env::var("SLUICE_TEST_PLUGINS").map(PathBuf::from).unwrap_or_else(|_| repo_root().join("target/plugins"));
    assert!(dir.join("promo-code-analytics.wasm").exists(), "no plugins in {}: run `make plugins`", dir.display());
    dir
}

/// The three first-party plugin files.
pub fn first_party_plugins() -> Vec<PathBuf> {
    ["order-analytics", "promo-code-analytics", "user-stats"]
        .iter()
        .map(|p| plugins_dir().join(format!("{p}.wasm")))
        .collect()
}

/// The Python and JavaScript example plugins (`make examples`): `$SLUICE_TEST_EXAMPLES`, else
/// target/examples/<name>.wasm.
pub fn example_plugin(name: &str) -> PathBuf {
    let dir = std::env::var("SLUICE_TEST_EXAMPLES")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_root().join("target/examples"));
    let p = dir.join(format!("{name}.wasm"));
    assert!(p.exists(), "no example plugin {}: run `make examples`", p.display());
    p
}

/// A test-only plugin built from plugins/testing/ (target/test-plugins/<name>.wasm).
pub fn test_plugin(name: &str) -> PathBuf {
    let p = repo_root().join("target/test-plugins").join(format!("{name}.wasm"));
    assert!(p.exists(), "no test plugin {}: run `make plugins`", p.display());
    p
}

/// Copies `plugin` into `dir` as `<stem>.wasm` with a sidecar `<stem>.toml` holding the
/// given settings (TOML literal strings, so any JSON fits).
pub fn install_plugin(dir: &Path, plugin: &Path, stem: &str, settings: &[(&str, &str)]) -> Result<()> {
    std::fs::copy(plugin, dir.join(format!("{stem}.wasm")))?;
    let mut toml = String::from("[settings]\n");
    for (k, v) in settings {
        toml.push_str(&format!("{k} = '''{v}'''\n"));
    }
    std::fs::write(dir.join(format!("{stem}.toml")), toml)?;
    Ok(())
}

/// A directory holding copies of the given plugin files.
pub fn plugin_dir_with(files: &[PathBuf]) -> Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    for f in files {
        std::fs::copy(f, dir.path().join(f.file_name().unwrap()))?;
    }
    Ok(dir)
}

/// Writes a host config file (TOML) and returns its path, kept alive with the dir.
pub fn config_file(dir: &Path, toml: &str) -> Result<PathBuf> {
    let p = dir.join("sluice.toml");
    std::fs::write(&p, toml)?;
    Ok(p)
}

/// Runs the `sluice` binary with arguments to completion; returns stdout, fails on non-zero.
pub fn sluice(args: &[&str], env: &[(&str, &str)]) -> Result<String> {
    let mut cmd = Command::new(sluice_bin());
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output()?;
    if !out.status.success() {
        bail!(
            "sluice {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A running `sluice run` process; its log is kept in a file and printed on failure.
pub struct Host {
    pub child: Child,
    pub log: PathBuf,
    /// The admin API's port (127.0.0.1).
    pub admin_port: u16,
}

impl Host {
    /// Starts `sluice run` against `redis` and `ch` with extra environment variables.
    pub fn start(redis: &Redis, ch: &ClickHouse, plugins: &Path, extra_env: &[(&str, &str)]) -> Result<Host> {
        let mut env = vec![("SLUICE_REDIS_URL", redis.url()), ("SLUICE_CLICKHOUSE_URL", ch.url())];
        env.extend(extra_env.iter().map(|(k, v)| (*k, v.to_string())));
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Self::start_env(plugins, &env)
    }

    /// Starts `sluice run` with `env` saying where Redis and ClickHouse are.
    pub fn start_env(plugins: &Path, env: &[(&str, &str)]) -> Result<Host> {
        let extra_env = env;
        let log = tempfile::Builder::new().prefix("sluice-host-").suffix(".log").tempfile()?.keep()?.1;
        let out = std::fs::File::create(&log)?;
        let mut cmd = Command::new(sluice_bin());
        let admin_port = free_port();
        cmd.arg("run")
            .env("SLUICE_PLUGINS_DIR", plugins)
            .env("SLUICE_ADMIN_ADDR", format!("127.0.0.1:{admin_port}"))
            .env("SLUICE_LOG", "info")
            .stdout(Stdio::from(out.try_clone()?))
            .stderr(Stdio::from(out));
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().context("cannot start sluice")?;
        Ok(Host { child, log, admin_port })
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> Result<()> {
        wait_until(&format!("host log line `{needle}`"), timeout, || self.log_text().contains(needle))
            .with_context(|| format!("host log:\n{}", self.log_text()))
    }

    pub fn stop(&mut self) {
        stop_child(&mut self.child);
    }

    /// A request to the admin API; returns (status, body).
    pub fn admin(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Result<(u16, String)> {
        let (status, _, body) = http(self.admin_port, method, path, headers, b"")?;
        Ok((status, body))
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        stop_child(&mut self.child);
    }
}

/// Every entry of the dead-letter stream `sluice:dlq`, oldest first, as field maps.
pub fn dead_letters(conn: &mut impl redis::ConnectionLike) -> Vec<std::collections::HashMap<String, String>> {
    let v: redis::Value =
        redis::cmd("XRANGE").arg("sluice:dlq").arg("-").arg("+").query(conn).unwrap_or(redis::Value::Nil);
    let entries: Vec<(String, Vec<(String, String)>)> = redis::from_redis_value(v).unwrap_or_default();
    entries.into_iter().map(|(_, f)| f.into_iter().collect()).collect()
}

/// Total pending entries of every consumer group on `streams`.
pub fn total_pending(conn: &mut impl redis::ConnectionLike, streams: &[&str]) -> Result<i64> {
    let mut total = 0;
    for s in streams {
        let groups: Vec<redis::Value> = redis::cmd("XINFO").arg("GROUPS").arg(s).query(conn).unwrap_or_default();
        for g in groups {
            let fields: Vec<redis::Value> = redis::from_redis_value(g)?;
            let mut it = fields.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                if redis::from_redis_value::<String>(k)? == "pending" {
                    total += redis::from_redis_value::<i64>(v)?;
                }
            }
        }
    }
    Ok(total)
}

/// Runs the example BullMQ producer (`examples/bullmq/producer.js`, with the real `bullmq`
/// package from npm) against `redis`; returns the JSON line it prints.
pub fn bullmq(redis: &Redis, args: &[&str]) -> Result<serde_json::Value> {
    bullmq_at(&redis.url(), args)
}

/// [`bullmq`] against a Redis URL.
pub fn bullmq_at(redis_url: &str, args: &[&str]) -> Result<serde_json::Value> {
    let root = repo_root();
    assert!(
        root.join("examples/bullmq/node_modules/bullmq").exists(),
        "no bullmq in examples/bullmq/node_modules: run `make examples` (scripts/plugin-toolchains.sh)"
    );
    // Node.js 20 that scripts/plugin-toolchains.sh fetched when the system's is older.
    let own = root.join("target/tools/node/bin/node");
    let node = if own.exists() { own } else { PathBuf::from("node") };
    // A bound on every wait: a producer whose Redis is gone would retry for ever.
    let mut cmd = Command::new("timeout");
    cmd.arg("120")
        .arg(node)
        .arg(root.join("examples/bullmq/producer.js"))
        .args(&args[..1])
        .arg("--redis-url")
        .arg(redis_url);
    cmd.args(&args[1..]);
    let out = cmd.output().context("cannot run node")?;
    if !out.status.success() {
        bail!(
            "producer.js {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    serde_json::from_str(line).with_context(|| format!("producer.js printed `{text}`"))
}

/// A CA and, signed by it, a server certificate for 127.0.0.1/localhost and a client
/// certificate (RSA 2048, two days), made with `openssl` for TLS tests.
pub struct Certs {
    dir: tempfile::TempDir,
}

impl Certs {
    pub fn make() -> Result<Certs> {
        let dir = tempfile::tempdir()?;
        let run = |args: &[&str]| -> Result<()> {
            let out =
                Command::new("openssl").args(args).current_dir(dir.path()).output().context("cannot run openssl")?;
            if !out.status.success() {
                bail!("openssl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            Ok(())
        };
        run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=Sluice test CA",
        ])?;
        std::fs::write(
            dir.path().join("ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n",
        )?;
        for name in ["server", "client"] {
            let (key, csr, crt) = (format!("{name}.key"), format!("{name}.csr"), format!("{name}.crt"));
            run(&[
                "req",
                "-new",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &format!("/CN={name}"),
            ])?;
            run(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &crt,
                "-days",
                "2",
                "-extfile",
                "ext",
            ])?;
        }
        Ok(Certs { dir })
    }

    /// `redis-server` arguments for TLS only on `port` (127.0.0.1) with the server certificate,
    /// clients required to show one this CA signed.
    pub fn redis_server_args(&self, port: u16) -> Vec<std::ffi::OsString> {
        let mut args: Vec<std::ffi::OsString> =
            ["--port", "0", "--tls-port", &port.to_string(), "--bind", "127.0.0.1"].iter().map(Into::into).collect();
        for (flag, file) in
            [("--tls-cert-file", "server.crt"), ("--tls-key-file", "server.key"), ("--tls-ca-cert-file", "ca.crt")]
        {
            args.push(flag.into());
            args.push(self.path(file).into());
        }
        args.extend(["--tls-auth-clients", "yes"].map(Into::into));
        args
    }

    /// `ca.crt`, `server.crt`, `server.key`, `client.crt` or `client.key`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// A Redis Cluster of three primaries and three replicas on local ports, over TLS only (also
/// between the nodes), with a password and client certificates required.
pub struct RedisCluster {
    pub ports: Vec<u16>,
    pub password: String,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    dirs: Vec<tempfile::TempDir>,
    children: Vec<Option<Child>>,
}

/// A port whose cluster-bus port (+10000) is free too.
fn free_cluster_port() -> u16 {
    loop {
        let p = free_port();
        if p < 55_000 && TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok() {
            return p;
        }
    }
}

impl RedisCluster {
    pub fn start(certs: &Certs, password: &str) -> Result<RedisCluster> {
        let mut c = RedisCluster {
            ports: (0..6).map(|_| free_cluster_port()).collect(),
            password: password.to_string(),
            ca: certs.path("ca.crt"),
            cert: certs.path("client.crt"),
            key: certs.path("client.key"),
            dirs: Vec::new(),
            children: Vec::new(),
        };
        for i in 0..6 {
            c.dirs.push(tempfile::tempdir()?);
            c.children.push(None);
            c.start_node(i, certs)?;
        }
        let nodes: Vec<String> = c.ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let mut args = vec!["--cluster", "create"];
        args.extend(nodes.iter().map(String::as_str));
        args.extend(["--cluster-replicas", "1", "--cluster-yes"]);
        let out = c.cli(c.ports[0], &args)?;
        if !out.contains("All 16384 slots covered") {
            bail!("redis-cli --cluster create: {out}");
        }
        c.wait_healthy(Duration::from_secs(120))?;
        Ok(c)
    }

    fn start_node(&mut self, i: usize, certs: &Certs) -> Result<()> {
        let dir = self.dirs[i].path().to_path_buf();
        let child = Command::new("redis-server")
            .args(certs.redis_server_args(self.ports[i]))
            .args(["--tls-cluster", "yes", "--tls-replication", "yes"])
            .args(["--requirepass", &self.password, "--masterauth", &self.password])
            .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"])
            .arg("--cluster-config-file")
            .arg(dir.join("nodes.conf"))
            .args(["--save", "", "--appendonly", "yes", "--appendfsync", "everysec"])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start redis-server (run scripts/install-deps.sh)")?;
        self.children[i] = Some(child);
        let port = self.ports[i];
        wait_until("a cluster node to answer", Duration::from_secs(20), || {
            self.cli(port, &["PING"]).map(|o| o.trim() == "PONG").unwrap_or(false)
        })
    }

    /// Runs `redis-cli` against the node on `port` (TLS, password); returns its output.
    pub fn cli(&self, port: u16, args: &[&str]) -> Result<String> {
        let out = Command::new("timeout")
            .args(["60", "redis-cli", "--tls", "--no-auth-warning", "-h", "127.0.0.1", "-p", &port.to_string()])
            .arg("--cacert")
            .arg(&self.ca)
            .arg("--cert")
            .arg(&self.cert)
            .arg("--key")
            .arg(&self.key)
            .args(["-a", &self.password])
            .args(args)
            .output()
            .context("cannot run redis-cli")?;
        Ok(format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    }

    /// Waits until every running node says `cluster_state:ok` and there are three primaries
    /// serving every slot.
    pub fn wait_healthy(&self, timeout: Duration) -> Result<()> {
        wait_until("the Redis Cluster to be healthy", timeout, || {
            let running = self.running();
            running.iter().all(|p| self.cli(*p, &["CLUSTER", "INFO"]).is_ok_and(|o| o.contains("cluster_state:ok")))
                && self.cli(running[0], &["--cluster", "check", &format!("127.0.0.1:{}", running[0])]).is_ok_and(|o| {
                    o.contains("All nodes agree about slots configuration") && o.contains("All 16384 slots covered")
                })
                // Every node knows every other (no handshake left) and replicas are in sync:
                // failure detection needs the nodes to have met.
                && running.iter().all(|p| {
                    self.cli(*p, &["CLUSTER", "NODES"]).is_ok_and(|o| {
                        o.lines().filter(|l| l.contains("connected") && !l.contains("handshake")).count() >= running.len()
                    }) && self.cli(*p, &["INFO", "replication"]).is_ok_and(|o| {
                        o.contains("role:master") || o.contains("master_link_status:up")
                    })
                })
        })
        .with_context(|| {
            let at = self.running()[0];
            format!(
                "CLUSTER NODES:\n{}\n--cluster check:\n{}",
                self.cli(at, &["CLUSTER", "NODES"]).unwrap_or_default(),
                self.cli(at, &["--cluster", "check", &format!("127.0.0.1:{at}")]).unwrap_or_default()
            )
        })
    }

    /// Waits until a primary other than `old` serves `key` (a replica took over).
    pub fn wait_failover(&self, key: &str, old: u16, timeout: Duration) -> Result<()> {
        wait_until(&format!("a new primary for {key}"), timeout, || self.primary_of(key).is_ok_and(|p| p != old))
    }

    fn running(&self) -> Vec<u16> {
        self.ports.iter().zip(&self.children).filter(|(_, c)| c.is_some()).map(|(p, _)| *p).collect()
    }

    /// The port of the primary that serves `key` now.
    pub fn primary_of(&self, key: &str) -> Result<u16> {
        let at = self.running()[0];
        let slot: u16 = self.cli(at, &["CLUSTER", "KEYSLOT", key])?.trim().parse()?;
        let nodes = self.cli(at, &["CLUSTER", "NODES"])?;
        for line in nodes.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 9 || !f[2].contains("master") || f[2].contains("fail") {
                continue;
            }
            for range in &f[8..] {
                let (a, b) = range.split_once('-').unwrap_or((range, range));
                if let (Ok(a), Ok(b)) = (a.parse::<u16>(), b.parse::<u16>())
                    && (a..=b).contains(&slot)
                {
                    let port = f[1].split(['@', ':']).nth(1).context("CLUSTER NODES address")?;
                    return Ok(port.parse()?);
                }
            }
        }
        bail!("no primary serves slot {slot} of {key}:\n{nodes}")
    }

    /// SIGKILLs the node on `port`.
    pub fn kill(&mut self, port: u16) {
        let i = self.ports.iter().position(|p| *p == port).expect("a node of this cluster");
        if let Some(mut c) = self.children[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `SLUICE_REDIS_*` for a host of this cluster.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            (
                "SLUICE_REDIS_URL".into(),
                self.ports[..3].iter().map(|p| format!("rediss://127.0.0.1:{p}")).collect::<Vec<_>>().join(","),
            ),
            ("SLUICE_REDIS_PASSWORD".into(), self.password.clone()),
            ("SLUICE_REDIS_CA_FILE".into(), self.ca.display().to_string()),
            ("SLUICE_REDIS_CERT_FILE".into(), self.cert.display().to_string()),
            ("SLUICE_REDIS_KEY_FILE".into(), self.key.display().to_string()),
        ]
    }

    /// A connection of the test's own (the `redis` crate's cluster client, TLS).
    pub fn conn(&self) -> Result<redis::cluster::ClusterConnection> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let seeds: Vec<String> = self.running().iter().map(|p| format!("rediss://127.0.0.1:{p}")).collect();
        let certs = redis::TlsCertificates {
            client_tls: Some(redis::ClientTlsConfig {
                client_cert: std::fs::read(&self.cert)?,
                client_key: std::fs::read(&self.key)?,
            }),
            root_cert: Some(std::fs::read(&self.ca)?),
        };
        Ok(redis::cluster::ClusterClientBuilder::new(seeds)
            .password(self.password.clone())
            .certs(certs)
            .connection_timeout(Duration::from_secs(5))
            .response_timeout(Duration::from_secs(30))
            .build()?
            .get_connection()?)
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for c in self.children.iter_mut().flatten() {
            stop_child(c);
        }
    }
}

/// What events of the three seed types (`OrderCreatedEvent`, `order.created`,
/// `PromoCodeAppliedEvent`) add up to in the first-party plugins' tables. Amounts are
/// multiples of 0.25 (exact in binary), so float sums are exact in any order.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct SeedSums {
    pub orders: i64,
    pub order_amount: f64,
    pub promos: i64,
    pub promo_order_amount: f64,
    pub discount: f64,
}

impl SeedSums {
    /// Event `i` of the seed mix (types in turn): its stream and payload, counted in `self`.
    pub fn event(&mut self, i: u32) -> (String, String) {
        let ty = ["OrderCreatedEvent", "order.created", "PromoCodeAppliedEvent"][(i % 3) as usize];
        let amount = (i % 400) as f64 * 0.25 + 1.0;
        let payload = if ty == "PromoCodeAppliedEvent" {
            let discount = (i % 40) as f64 * 0.25;
            self.promos += 1;
            self.promo_order_amount += amount;
            self.discount += discount;
            serde_json::json!({"promoCodeId": format!("p{}", i % 7), "promoCode": format!("CODE{}", i % 7), "userId": format!("u{}", i % 300),
                "orderId": format!("o-{i}"), "orderAmount": amount, "discountAmount": discount, "createdAt": "2024-06-01T10:00:00Z"})
        } else {
            self.orders += 1;
            self.order_amount += amount;
            serde_json::json!({"orderId": format!("o-{i}"), "userId": format!("u{}", i % 300), "amount": amount, "createdAt": "2024-06-01T10:00:00Z"})
        };
        (format!("events:{ty}"), payload.to_string())
    }

    /// The tables as a plain query sees them: no FINAL, no GROUP BY event.
    pub fn in_tables(ch: &ClickHouse) -> Result<SeedSums> {
        let orders = ch.query("SELECT count(), sum(amount) FROM analytics.orders_analytics")?;
        let promos = ch.query(
            "SELECT count(), sum(order_amount), sum(discount_amount) FROM analytics.promo_code_usages_analytics",
        )?;
        let o: Vec<&str> = orders.split('\t').collect();
        let p: Vec<&str> = promos.split('\t').collect();
        Ok(SeedSums {
            orders: o[0].parse()?,
            order_amount: o[1].parse()?,
            promos: p[0].parse()?,
            promo_order_amount: p[1].parse()?,
            discount: p[2].parse()?,
        })
    }

    /// `users_analytics`' sums these events must give, as [`user_sums`] prints them.
    pub fn user_sums_text(&self) -> String {
        format!("{}\t{}\t{}\t{}", self.orders, self.order_amount, self.promos, self.discount)
    }
}

/// `users_analytics`' sums (a SummingMergeTree: its row count shrinks as parts merge, its
/// sums do not); empty if it cannot be read.
pub fn user_sums(ch: &ClickHouse) -> String {
    ch.query(
        "SELECT sum(orders_count), sum(orders_amount), sum(promo_uses), sum(discount_amount) FROM analytics.users_analytics",
    )
    .unwrap_or_default()
}
