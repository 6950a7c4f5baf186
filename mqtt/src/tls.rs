//! The rustls client configuration for mutual TLS, built from the PEM files `[mqtt]` names.
//!
//! The crypto provider is passed explicitly (ring): rumqttc's `TlsConfiguration::Simple`
//! panics when no process-wide provider is installed, so both the agent and edgectl hand
//! rumqttc this `ClientConfig` through `TlsConfiguration::Rustls`.
//!
//! PEM is read with `rustls-pki-types` (rustls-pemfile is unmaintained). Everything that
//! can be checked before the first handshake is: the CA certificates parse as trust
//! anchors, the key is one ring can sign with, and it belongs to the certificate. Each
//! failure names the `[mqtt]` key, the file, and what the file should hold instead.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::{PemObject, SectionKind};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// What is wrong with the TLS material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("{key} {}: cannot read it: {source}; check the path and that this user may read the file", path.display())]
    Read {
        /// The `[mqtt]` key that names the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file does not hold what its key asks for.
    #[error("{key} {}: {what}", path.display())]
    Content {
        /// The `[mqtt]` key that names the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong, and what the file should hold.
        what: String,
    },
    /// The private key is not the one the certificate was issued for.
    #[error(
        "[mqtt] key_file {} is not the key of the certificate in [mqtt] cert_file {}: give the key the \
         certificate was issued for, or the certificate issued for this key",
        key.display(),
        cert.display()
    )]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// rustls refused the combination for another reason.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

const CA: &str = "[mqtt] ca_file";
const CERT: &str = "[mqtt] cert_file";
const KEY: &str = "[mqtt] key_file";

/// A client configuration that trusts the CA certificates in `ca_file` and authenticates
/// with the certificate chain in `cert_file` and the private key in `key_file`.
pub fn client_config(ca_file: &Path, cert_file: &Path, key_file: &Path) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for cert in certs(CA, ca_file)? {
        roots
            .add(cert)
            .map_err(|e| content(CA, ca_file, format!("a certificate is not a usable CA certificate: {e}")))?;
    }
    let chain = certs(CERT, cert_file)?;
    let key = signing_key(key_file, &provider)?;
    let certified = CertifiedKey::new(chain, key);
    match certified.keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err(TlsError::KeyMismatch { cert: cert_file.into(), key: key_file.into() })
        }
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(e) => return Err(content(CERT, cert_file, format!("the first certificate does not parse: {e}"))),
    }
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_cert_resolver(Arc::new(SingleCertAndKey::from(certified)));
    Ok(Arc::new(config))
}

fn content(key: &'static str, path: &Path, what: String) -> TlsError {
    TlsError::Content { key, path: path.into(), what }
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { key, path: path.into(), source })
}

/// The PEM sections of `bytes`, by label, for saying what a file holds instead.
fn sections(key: &'static str, path: &Path, bytes: &[u8]) -> Result<Vec<SectionKind>, TlsError> {
    <(SectionKind, Vec<u8>)>::pem_slice_iter(bytes)
        .map(|s| s.map(|(kind, _)| kind))
        .collect::<Result<_, _>>()
        .map_err(|e| content(key, path, bad_pem(&e)))
}

/// pki-types shows the marker lines of its PEM errors as byte arrays; the operator reads text.
fn bad_pem(e: &rustls_pki_types::pem::Error) -> String {
    use rustls_pki_types::pem::Error;
    let why = match e {
        // `end_marker` is the section's label.
        Error::MissingSectionEnd { end_marker } => {
            format!("no -----END {}----- line: is the file cut short?", String::from_utf8_lossy(end_marker))
        }
        Error::IllegalSectionStart { line } => format!("bad section start {:?}", String::from_utf8_lossy(line)),
        other => other.to_string(),
    };
    format!("not valid PEM ({why}); it must be a PEM file")
}

/// "holds no PEM section" or "holds only X, Y".
fn found(kinds: &[SectionKind], bytes: &[u8]) -> String {
    if kinds.is_empty() {
        if contains(bytes, b"-----BEGIN ENCRYPTED PRIVATE KEY-----") {
            return "holds an encrypted private key".into();
        }
        return "holds no PEM section (DER, or an empty file?)".into();
    }
    let mut labels: Vec<&str> = kinds.iter().map(label).collect();
    labels.dedup();
    format!("holds only {}", labels.join(", "))
}

/// A section's PEM label, as the operator sees it in the file.
fn label(kind: &SectionKind) -> &'static str {
    match kind {
        SectionKind::Certificate => "CERTIFICATE",
        SectionKind::PublicKey => "PUBLIC KEY",
        SectionKind::RsaPrivateKey => "RSA PRIVATE KEY",
        SectionKind::PrivateKey => "PRIVATE KEY",
        SectionKind::EcPrivateKey => "EC PRIVATE KEY",
        SectionKind::Crl => "X509 CRL",
        SectionKind::Csr => "CERTIFICATE REQUEST",
        // EchConfigList, and whatever later versions add.
        _ => "a section that is neither a certificate nor a key",
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(key, path)?;
    let kinds = sections(key, path, &bytes)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| content(key, path, bad_pem(&e)))?;
    if certs.is_empty() {
        return Err(content(
            key,
            path,
            format!("{}; it must hold PEM certificates (-----BEGIN CERTIFICATE-----)", found(&kinds, &bytes)),
        ));
    }
    Ok(certs)
}

/// The key in `path`, loaded by `provider` so that a key it cannot sign with is refused
/// here, with the file named, rather than at the first handshake.
fn signing_key(path: &Path, provider: &CryptoProvider) -> Result<Arc<dyn rustls::sign::SigningKey>, TlsError> {
    let bytes = read(KEY, path)?;
    let kinds = sections(KEY, path, &bytes)?;
    let der = match PrivateKeyDer::from_pem_slice(&bytes) {
        Ok(der) => der,
        Err(rustls_pki_types::pem::Error::NoItemsFound) => {
            let mut what = found(&kinds, &bytes);
            what.push_str(
                "; it must hold the private key as PEM (-----BEGIN PRIVATE KEY-----, EC PRIVATE KEY or RSA \
                 PRIVATE KEY), unencrypted",
            );
            return Err(content(KEY, path, what));
        }
        Err(e) => return Err(content(KEY, path, bad_pem(&e))),
    };
    provider.key_provider.load_private_key(der).map_err(|e| {
        content(
            KEY,
            path,
            format!("not a usable private key ({e}); it must be an ECDSA P-256/P-384, Ed25519 or RSA key"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Files {
        dir: tempfile::TempDir,
        ca: PathBuf,
        cert: PathBuf,
        key: PathBuf,
    }

    impl Files {
        fn write(&self, name: &str, text: &str) -> PathBuf {
            let p = self.dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        }
    }

    /// A self-signed CA and a self-signed client certificate with its PKCS#8 key, as PEM files.
    fn good() -> Files {
        let dir = tempfile::tempdir().unwrap();
        let ca = rcgen::generate_simple_self_signed(vec!["ca.example".to_string()]).unwrap();
        let dev = rcgen::generate_simple_self_signed(vec!["dev-1".to_string()]).unwrap();
        let write = |name: &str, text: String| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let ca = write("ca.pem", ca.cert.pem());
        let cert = write("dev.pem", dev.cert.pem());
        let key = write("dev.key", dev.signing_key.serialize_pem());
        Files { dir, ca, cert, key }
    }

    fn err(ca: &Path, cert: &Path, key: &Path) -> String {
        client_config(ca, cert, key).unwrap_err().to_string()
    }

    #[test]
    fn good_pem_files_make_a_client_config_with_a_client_certificate() {
        let f = good();
        let config = client_config(&f.ca, &f.cert, &f.key).unwrap();
        assert!(config.client_auth_cert_resolver.has_certs());
    }

    #[test]
    fn several_ca_certificates_in_one_file_are_all_trusted() {
        let f = good();
        let other = rcgen::generate_simple_self_signed(vec!["other-ca.example".to_string()]).unwrap();
        let both = format!("{}{}", std::fs::read_to_string(&f.ca).unwrap(), other.cert.pem());
        let ca = f.write("both.pem", &both);
        client_config(&ca, &f.cert, &f.key).unwrap();
    }

    #[test]
    fn a_missing_file_is_named_with_its_key() {
        let f = good();
        let gone = f.dir.path().join("gone.pem");
        let e = err(&gone, &f.cert, &f.key);
        assert!(e.starts_with("[mqtt] ca_file ") && e.contains("gone.pem") && e.contains("cannot read"), "{e}");
        let e = err(&f.ca, &f.cert, &gone);
        assert!(e.starts_with("[mqtt] key_file ") && e.contains("gone.pem"), "{e}");
    }

    #[test]
    fn a_certificate_file_that_holds_a_key_says_so() {
        let f = good();
        let e = err(&f.ca, &f.key, &f.key);
        assert!(e.starts_with("[mqtt] cert_file ") && e.contains("dev.key"), "{e}");
        assert!(e.contains("holds only PRIVATE KEY") && e.contains("BEGIN CERTIFICATE"), "{e}");
    }

    #[test]
    fn a_file_with_no_pem_at_all_is_refused() {
        let f = good();
        let empty = f.write("empty.pem", "");
        let e = err(&empty, &f.cert, &f.key);
        assert!(e.starts_with("[mqtt] ca_file ") && e.contains("no PEM section"), "{e}");
    }

    #[test]
    fn broken_pem_is_refused_naming_the_file() {
        let f = good();
        let torn = f.write("torn.pem", "-----BEGIN CERTIFICATE-----\nMIIB\n");
        let e = err(&torn, &f.cert, &f.key);
        assert!(e.starts_with("[mqtt] ca_file ") && e.contains("torn.pem") && e.contains("not valid PEM"), "{e}");
        assert!(e.contains("no -----END CERTIFICATE----- line"), "{e}");
    }

    #[test]
    fn a_ca_file_whose_certificate_does_not_parse_is_refused() {
        let f = good();
        let junk = f.write("junk.pem", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");
        let e = err(&junk, &f.cert, &f.key);
        assert!(e.starts_with("[mqtt] ca_file ") && e.contains("not a usable CA certificate"), "{e}");
    }

    #[test]
    fn a_client_certificate_that_does_not_parse_is_refused() {
        let f = good();
        let junk = f.write("junk.pem", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");
        let e = err(&f.ca, &junk, &f.key);
        assert!(e.starts_with("[mqtt] cert_file ") && e.contains("does not parse"), "{e}");
    }

    #[test]
    fn a_key_file_that_holds_a_certificate_says_so() {
        let f = good();
        let e = err(&f.ca, &f.cert, &f.cert);
        assert!(e.starts_with("[mqtt] key_file ") && e.contains("holds only CERTIFICATE"), "{e}");
        assert!(e.contains("BEGIN PRIVATE KEY"), "{e}");
    }

    #[test]
    fn a_key_that_is_not_a_key_is_refused_before_any_handshake() {
        let f = good();
        let junk = f.write("junk.key", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n");
        let e = err(&f.ca, &f.cert, &junk);
        assert!(
            e.starts_with("[mqtt] key_file ") && e.contains("junk.key") && e.contains("not a usable private key"),
            "{e}"
        );
    }

    #[test]
    fn an_encrypted_key_is_named_as_such() {
        let f = good();
        let enc =
            f.write("enc.key", "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n");
        let e = err(&f.ca, &f.cert, &enc);
        assert!(e.starts_with("[mqtt] key_file ") && e.contains("encrypted") && e.contains("unencrypted"), "{e}");
    }

    #[test]
    fn a_key_of_another_certificate_is_refused_naming_both_files() {
        let f = good();
        let other = rcgen::generate_simple_self_signed(vec!["dev-2".to_string()]).unwrap();
        let key = f.write("other.key", &other.signing_key.serialize_pem());
        let e = err(&f.ca, &f.cert, &key);
        assert!(e.contains("other.key") && e.contains("dev.pem") && e.contains("is not the key"), "{e}");
    }
}
