//! The rustls client configuration for mutual TLS, built from PEM files.
//!
//! The crypto provider is passed explicitly (ring): rumqttc's `TlsConfiguration::Simple`
//! panics when no process-wide provider is installed, so the agent always hands rumqttc its
//! own `ClientConfig` through `TlsConfiguration::Rustls`.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

/// What is wrong with the TLS material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A file holds no usable PEM item of the kind expected.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: String,
        /// What was expected or wrong.
        what: String,
    },
    /// rustls refused the combination.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.display().to_string(), source })
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(path)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut bytes.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem { path: path.display().to_string(), what: format!("bad PEM: {e}") })?;
    if certs.is_empty() {
        return Err(TlsError::Pem { path: path.display().to_string(), what: "no CERTIFICATE in PEM".into() });
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(path)?;
    rustls_pemfile::private_key(&mut bytes.as_slice())
        .map_err(|e| TlsError::Pem { path: path.display().to_string(), what: format!("bad PEM: {e}") })?
        .ok_or_else(|| TlsError::Pem {
            path: path.display().to_string(),
            what: "no PKCS#8, SEC1 or PKCS#1 private key in PEM".into(),
        })
}

/// A client configuration that trusts `ca_file` and authenticates with `cert_file`/`key_file`.
pub fn client_config(ca_file: &Path, cert_file: &Path, key_file: &Path) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certs(ca_file)? {
        roots.add(cert).map_err(|e| TlsError::Pem { path: ca_file.display().to_string(), what: format!("{e}") })?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs(cert_file)?, key(key_file)?)?;
    Ok(Arc::new(config))
}
