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

/// A private ClickHouse server.
pub struct ClickHouse {
    pub http_port: u16,
    pub tcp_port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl ClickHouse {
    pub fn start() -> Result<ClickHouse> {
        Self::start_with(None)
    }

    /// A server that keeps Replicated tables in `zk`, as replica `replica` (the `{replica}`
    /// macro; `{shard}` is `01`).
    pub fn start_replicated(zk: &ZooKeeper, replica: &str) -> Result<ClickHouse> {
        Self::start_with(Some(format!(
            "<yandex>\n  <zookeeper><node><host>127.0.0.1</host><port>{}</port></node><session_timeout_ms>10000</session_timeout_ms></zookeeper>\n  <macros><shard>01</shard><replica>{replica}</replica></macros>\n</yandex>\n",
            zk.port
        )))
    }

    fn start_with(extra_config: Option<String>) -> Result<ClickHouse> {
        let dir = tempfile::tempdir()?;
        let (http_port, tcp_port) = (free_port(), free_port());
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
        std::fs::copy(tpl.join("users.xml"), dir.path().join("users.xml"))?;
        let mut ch = ClickHouse { http_port, tcp_port, dir, child: None };
        ch.restart()?;
        Ok(ch)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    pub fn restart(&mut self) -> Result<()> {
        let log = std::fs::File::create(self.dir.path().join("log/stdout.log"))?;
        let child = Command::new("clickhouse-server")
            .arg(format!("--config-file={}", self.dir.path().join("config.xml").display()))
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .context("cannot start clickhouse-server (run scripts/install-deps.sh)")?;
        self.child = Some(child);
        let port = self.http_port;
        wait_until("clickhouse-server to answer", Duration::from_secs(60), || {
            http_post(port, "/", b"SELECT 1").map(|r| r.trim() == "1").unwrap_or(false)
        })
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            stop_child(&mut c);
        }
    }

    /// Runs a query; returns its TabSeparated output, trimmed.
    pub fn query(&self, sql: &str) -> Result<String> {
        Ok(http_post(self.http_port, "/", sql.as_bytes())?.trim().to_string())
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
        let log = tempfile::Builder::new().prefix("sluice-host-").suffix(".log").tempfile()?.keep()?.1;
        let out = std::fs::File::create(&log)?;
        let mut cmd = Command::new(sluice_bin());
        let admin_port = free_port();
        cmd.arg("run")
            .env("SLUICE_REDIS_URL", redis.url())
            .env("SLUICE_CLICKHOUSE_URL", ch.url())
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
pub fn dead_letters(conn: &mut redis::Connection) -> Vec<std::collections::HashMap<String, String>> {
    let v: redis::Value =
        redis::cmd("XRANGE").arg("sluice:dlq").arg("-").arg("+").query(conn).unwrap_or(redis::Value::Nil);
    let entries: Vec<(String, Vec<(String, String)>)> = redis::from_redis_value(v).unwrap_or_default();
    entries.into_iter().map(|(_, f)| f.into_iter().collect()).collect()
}

/// Total pending entries of every consumer group on `streams`.
pub fn total_pending(conn: &mut redis::Connection, streams: &[&str]) -> Result<i64> {
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
