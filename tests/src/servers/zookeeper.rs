//! A private ZooKeeper, for ClickHouse's Replicated tables.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::*;

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
