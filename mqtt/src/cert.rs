//! What `check-config` reads from a device certificate before the first connection: its
//! X.509 version (rustls refuses v1, which `openssl x509 -req` makes without extensions,
//! as Mosquitto's own TLS guide does), its CN (the shipped ACL confines a device to
//! `edge/<CN>/#`, so a `device_id` that differs has every publish dropped while the broker
//! still acknowledges it: telemetry lost silently), and its expiry.

use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, X509Certificate};

/// How long before expiry a certificate is worth a warning.
pub const EXPIRY_WARNING_SECS: i64 = 30 * 24 * 3600;

/// A device certificate's facts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// X.509 version: 1, 2 or 3.
    pub version: u32,
    /// The subject's common name, if it has one.
    pub common_name: Option<String>,
    /// End of validity, seconds since the Unix epoch.
    pub not_after: i64,
}

/// Why a device certificate is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CertError {
    /// The file does not hold a certificate that parses.
    #[error("[mqtt] cert_file {}: {reason}", path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// An X.509 v1 certificate.
    #[error(
        "[mqtt] cert_file {}: an X.509 v1 certificate, which the agent's TLS (rustls) refuses although \
         Mosquitto accepts it (`openssl x509 -req` makes v1 without extensions); issue it again as v3, \
         e.g. `openssl x509 -req ... -extfile <(printf 'basicConstraints=CA:FALSE\\nkeyUsage=digitalSignature\\n\
         extendedKeyUsage=clientAuth')`", path.display()
    )]
    Version1 {
        /// The file.
        path: PathBuf,
    },
    /// The CN is not the device id.
    #[error(
        "[mqtt] cert_file {}: its CN is {cn:?} but device_id is {device:?}; the broker's ACL confines a device \
         to edge/<CN>/#, so every publish would be dropped: set device_id = {cn:?} or issue a certificate \
         for {device:?}", path.display()
    )]
    WrongCn {
        /// The file.
        path: PathBuf,
        /// The certificate's CN (empty: none).
        cn: String,
        /// The configured device id.
        device: String,
    },
    /// Expired.
    #[error("[mqtt] cert_file {}: expired {days} days ago; issue a new certificate for this device", path.display())]
    Expired {
        /// The file.
        path: PathBuf,
        /// Days since expiry.
        days: i64,
    },
}

/// Reads the first certificate of a PEM file.
pub fn read(path: &Path) -> Result<CertInfo, CertError> {
    let bad = |reason: String| CertError::Unreadable { path: path.to_path_buf(), reason };
    let der = CertificateDer::from_pem_file(path).map_err(|e| bad(format!("no PEM certificate: {e}")))?;
    let (_, cert) = X509Certificate::from_der(der.as_ref()).map_err(|e| bad(format!("does not parse: {e}")))?;
    let common_name = cert.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()).map(str::to_string);
    Ok(CertInfo { version: cert.version().0 + 1, common_name, not_after: cert.validity().not_after.timestamp() })
}

/// Checks the device certificate at `path` against `device_id` at `now` (Unix seconds).
/// `Ok` carries the certificate's facts; a certificate expiring within
/// [`EXPIRY_WARNING_SECS`] is the caller's to warn about.
pub fn check_device(path: &Path, device_id: &str, now: i64) -> Result<CertInfo, CertError> {
    let info = read(path)?;
    if info.version < 3 {
        return Err(CertError::Version1 { path: path.to_path_buf() });
    }
    if info.common_name.as_deref() != Some(device_id) {
        return Err(CertError::WrongCn {
            path: path.to_path_buf(),
            cn: info.common_name.clone().unwrap_or_default(),
            device: device_id.to_string(),
        });
    }
    if info.not_after < now {
        return Err(CertError::Expired { path: path.to_path_buf(), days: (now - info.not_after) / 86_400 });
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
    }

    fn v3(dir: &Path, cn: &str, not_after: (i32, u8, u8)) -> PathBuf {
        let mut params = rcgen::CertificateParams::new(vec![]).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let path = dir.join(format!("{cn}.pem"));
        std::fs::write(&path, cert.pem()).unwrap();
        path
    }

    const NOW: i64 = 1_800_000_000; // 2027-01-15

    #[test]
    fn a_v3_certificate_for_this_device_passes() {
        let dir = tempfile::tempdir().unwrap();
        let info = check_device(&v3(dir.path(), "dev-1", (2030, 1, 1)), "dev-1", NOW).unwrap();
        assert_eq!((info.version, info.common_name.as_deref()), (3, Some("dev-1")));
    }

    #[test]
    fn a_v1_certificate_as_openssl_x509_req_makes_it_is_refused_with_the_fix() {
        // Made with `openssl x509 -req` and no -extfile, as Mosquitto's TLS guide shows.
        let err = check_device(&fixture("dev-7-v1.pem"), "dev-7", NOW).unwrap_err();
        assert!(matches!(err, CertError::Version1 { .. }), "{err}");
        assert!(err.to_string().contains("issue it again as v3") && err.to_string().contains("-extfile"), "{err}");
    }

    #[test]
    fn a_cn_that_is_not_the_device_id_is_refused_saying_both() {
        let dir = tempfile::tempdir().unwrap();
        let err = check_device(&v3(dir.path(), "dev-2", (2030, 1, 1)), "dev-1", NOW).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("\"dev-2\"") && text.contains("\"dev-1\"") && text.contains("dropped"), "{text}");
    }

    #[test]
    fn an_expired_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = check_device(&v3(dir.path(), "dev-1", (2026, 1, 1)), "dev-1", NOW).unwrap_err();
        assert!(matches!(err, CertError::Expired { days, .. } if days > 300), "{err}");
    }

    #[test]
    fn a_file_without_a_certificate_is_unreadable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.pem");
        std::fs::write(&path, "not pem").unwrap();
        assert!(matches!(read(&path), Err(CertError::Unreadable { .. })));
    }
}
