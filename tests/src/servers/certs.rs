//! Certificates for TLS tests, made with openssl.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

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
