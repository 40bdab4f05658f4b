//! A private `redis-server`.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::*;

/// A private Redis server.
pub struct Redis {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Writes an append-only file (a restart keeps the data); without it a restart is empty.
    persistent: bool,
}

impl Redis {
    pub fn start() -> Result<Redis> {
        let dir = tempfile::tempdir()?;
        let mut r = Redis { port: free_port(), dir, child: None, persistent: true };
        r.restart()?;
        Ok(r)
    }

    /// A Redis without persistence, like many cache-style deployments: after a crash and
    /// restart it is empty.
    pub fn start_ephemeral() -> Result<Redis> {
        let dir = tempfile::tempdir()?;
        let mut r = Redis { port: free_port(), dir, child: None, persistent: false };
        r.restart()?;
        Ok(r)
    }

    /// SIGKILL: no shutdown save, clients see the connection drop.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
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
                if self.persistent { "yes" } else { "no" },
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
