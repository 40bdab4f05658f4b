//! The `sluice` binary under test: plugin files and directories, one-shot commands, and
//! `sluice run` as a process ([`Host`]).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::*;

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

/// The binary built with the `failpoints` feature (`make test` builds it):
/// `$SLUICE_TEST_FAILPOINT_BIN`, else target/release/sluice-failpoints.
pub fn failpoint_bin() -> PathBuf {
    if let Ok(p) = std::env::var("SLUICE_TEST_FAILPOINT_BIN") {
        return PathBuf::from(p);
    }
    let p = repo_root().join("target/release/sluice-failpoints");
    assert!(p.exists(), "no {}: run `make build-failpoints` (or set SLUICE_TEST_FAILPOINT_BIN)", p.display());
    p
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

/// Runs the `sluice` binary to completion, with no input; returns (exit code, stdout, stderr).
pub fn sluice_output(args: &[&str], env: &[(&str, &str)]) -> Result<(i32, String, String)> {
    let out = Command::new(sluice_bin()).args(args).envs(env.iter().copied()).stdin(Stdio::null()).output()?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
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
        // A fault to inject needs the binary that has the hooks.
        let failpoint = extra_env.iter().any(|(k, _)| k.starts_with("SLUICE_FAILPOINT_"));
        let mut cmd = Command::new(if failpoint { failpoint_bin() } else { sluice_bin() });
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

    /// Waits until the host runs: its admin API answers `/ready` and no longer says it is
    /// starting (every plugin file was loaded, or refused; the BullMQ consumers run). Fails at
    /// once if the process exits.
    pub fn wait_running(&self, timeout: Duration) -> Result<()> {
        let mut exited = None;
        let running = wait_until("the host to finish starting (/ready without `starting`)", timeout, || {
            if let Some(state) = process_state(self.child.id()).filter(|s| *s == 'Z' || *s == 'X') {
                exited = Some(state);
                return true;
            }
            match http(self.admin_port, "GET", "/ready", &[], b"") {
                Ok((200 | 503, _, body)) => {
                    serde_json::from_str::<serde_json::Value>(&body).is_ok_and(|v| v.get("starting").is_none())
                }
                _ => false,
            }
        });
        match (running, exited) {
            (_, Some(_)) => bail!("the host exited while starting:\n{}", self.log_text()),
            (Err(e), None) => Err(e.context(format!("host log:\n{}", self.log_text()))),
            (Ok(()), None) => Ok(()),
        }
    }

    /// Waits until `/metrics` has the line `line` (e.g. `sluice_plugin_reloads_total{result="ok"} 2`).
    pub fn wait_metric(&self, line: &str, timeout: Duration) -> Result<()> {
        let has = || self.admin("GET", "/metrics", &[]).is_ok_and(|(_, m)| m.lines().any(|l| l == line));
        wait_until(&format!("metric `{line}`"), timeout, has).with_context(|| {
            let metrics = self.admin("GET", "/metrics", &[]).map(|m| m.1).unwrap_or_default();
            let sluice: Vec<&str> = metrics.lines().filter(|l| l.starts_with("sluice_plugin")).collect();
            format!("plugin metrics:\n{}\nhost log:\n{}", sluice.join("\n"), self.log_text())
        })
    }

    /// The sum of a metric's series whose labels contain `labels` (e.g. `class="retry"`); 0 if
    /// the admin API does not answer or has none.
    pub fn metric(&self, name: &str, labels: &str) -> f64 {
        let Ok((_, text)) = self.admin("GET", "/metrics", &[]) else { return 0.0 };
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
            .filter(|l| l.split_once('}').is_none_or(|(series, _)| series.contains(labels)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
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
