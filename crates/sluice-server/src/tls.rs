//! `[tls]`: one certificate and key (PEM files) for the HTTP listener and the Postgres wire
//! port. Both are read and checked against each other at start; a node with a bad pair does not
//! start. The key file should be readable by its owner only: a key that the group or others may
//! read is used, with a warning.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

/// The `[tls]` section of the config file.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain, PEM: the server's certificate first, then any intermediates.
    pub cert: PathBuf,
    /// The private key of the certificate, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// The loaded certificate: rustls server configurations for each listener.
#[derive(Clone)]
pub(crate) struct Tls {
    /// For HTTPS (ALPN `http/1.1`).
    pub(crate) http: tokio_rustls::TlsAcceptor,
    /// For the Postgres wire port (ALPN `postgresql`, as direct TLS connections ask for).
    pub(crate) pg: tokio_rustls::TlsAcceptor,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls")
    }
}

impl TlsConfig {
    /// Reads the certificate chain and the key and checks that they belong together.
    pub(crate) fn load(&self) -> Result<Tls, String> {
        let chain = read(&self.cert, "tls.cert")?;
        let certs = CertificateDer::pem_slice_iter(&chain)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("tls.cert {}: not a PEM certificate: {e}", show(&self.cert)))?;
        if certs.is_empty() {
            return Err(format!(
                "tls.cert {}: no certificate in the file",
                show(&self.cert)
            ));
        }
        let key_pem = read(&self.key, "tls.key")?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| format!("tls.key {}: not a PEM private key: {e}", show(&self.key)))?;
        warn_if_readable_by_others(&self.key);
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("tls: {e}"))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| {
                format!(
                    "tls: certificate {} and key {} do not make a usable pair: {e}",
                    show(&self.cert),
                    show(&self.key)
                )
            })?;
        let with_alpn = |alpn: &[u8]| {
            let mut c = config.clone();
            c.alpn_protocols = vec![alpn.to_vec()];
            tokio_rustls::TlsAcceptor::from(Arc::new(c))
        };
        Ok(Tls {
            http: with_alpn(b"http/1.1"),
            pg: with_alpn(b"postgresql"),
        })
    }
}

fn show(path: &Path) -> std::path::Display<'_> {
    path.display()
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    if path.as_os_str().is_empty() {
        return Err(format!("{what} must name a PEM file"));
    }
    std::fs::read(path).map_err(|e| format!("{what}: cannot read {}: {e}", show(path)))
}

fn warn_if_readable_by_others(path: &Path) {
    if let Some(mode) = open_mode(path) {
        tracing::warn!(
            path = %show(path),
            mode = format!("{mode:o}"),
            "the TLS key file can be read by its group or others; chmod 600 it"
        );
    }
}

/// The file's permission bits when its group or others have any access to it.
#[cfg(unix)]
fn open_mode(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then_some(mode)
}

#[cfg(not(unix))]
fn open_mode(_path: &Path) -> Option<u32> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_files_are_clear_errors_and_open_key_modes_are_seen() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        let cfg = TlsConfig {
            cert: cert.clone(),
            key: key.clone(),
        };
        let e = cfg.load().unwrap_err();
        assert!(e.starts_with("tls.cert: cannot read"), "{e}");
        std::fs::write(&cert, "not pem at all\n").unwrap();
        let e = cfg.load().unwrap_err();
        assert!(e.contains("no certificate in the file"), "{e}");
        std::fs::write(
            &cert,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let e = cfg.load().unwrap_err();
        assert!(e.starts_with("tls.key: cannot read"), "{e}");
        std::fs::write(&key, "nothing\n").unwrap();
        let e = cfg.load().unwrap_err();
        assert!(e.contains("not a PEM private key"), "{e}");
        // The key's mode: warned about when the group or others may read it.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(open_mode(&key), Some(0o644));
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert_eq!(open_mode(&key), Some(0o640));
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(open_mode(&key), None);
        let empty = TlsConfig::default();
        assert_eq!(empty.load().unwrap_err(), "tls.cert must name a PEM file");
    }
}
