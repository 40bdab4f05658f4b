//! A private Redis Cluster over TLS.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::*;

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
