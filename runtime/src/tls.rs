//! TLS material and secrets read from files: the CA that signed a deployment's servers, client
//! certificates, passwords mounted as files (Kubernetes and compose secrets).

use std::path::Path;

use anyhow::{Context, Result, bail};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// The roots to trust: every certificate of the PEM file `ca_file`, or the system's.
pub fn root_store(ca_file: Option<&Path>) -> Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .with_context(|| format!("cannot read CA file {}", path.display()))?
                .collect::<Result<_, _>>()
                .with_context(|| format!("CA file {} is not PEM certificates", path.display()))?;
            if certs.is_empty() {
                bail!("CA file {} holds no certificate", path.display());
            }
            for c in certs {
                roots.add(c).with_context(|| format!("CA file {}: unusable certificate", path.display()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for c in found.certs {
                let _ = roots.add(c);
            }
        }
    }
    Ok(roots)
}

/// The bytes of a PEM file named by a setting, with the setting's name in the error.
pub fn read_pem(setting: &str, path: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).with_context(|| format!("{setting}: cannot read {}", path.display()))?;
    if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        bail!("{setting}: {} is not a PEM file", path.display());
    }
    Ok(bytes)
}

/// A secret from a file (`*_FILE` settings): its text without the trailing newline.
pub fn read_secret(setting: &str, path: &Path) -> Result<crate::secret::Secret> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{setting}: cannot read {}", path.display()))?;
    let s = text.strip_suffix('\n').unwrap_or(&text);
    let s = s.strip_suffix('\r').unwrap_or(s);
    if s.is_empty() {
        bail!("{setting}: {} is empty", path.display());
    }
    Ok(crate::secret::Secret(s.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_and_pem_files() {
        let dir = std::env::temp_dir().join(format!("sluice-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("pw");
        std::fs::write(&p, "s3cret\n").unwrap();
        assert_eq!(read_secret("X_FILE", &p).unwrap().0, "s3cret");
        std::fs::write(&p, "").unwrap();
        assert!(format!("{:#}", read_secret("X_FILE", &p).unwrap_err()).contains("X_FILE"));
        std::fs::write(&p, "not pem").unwrap();
        assert!(format!("{:#}", read_pem("SLUICE_REDIS_CA_FILE", &p).unwrap_err()).contains("not a PEM file"));
        assert!(format!("{:#}", root_store(Some(&dir.join("missing"))).unwrap_err()).contains("cannot read CA file"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
