//! `edgectl pki`: a fleet CA, the broker's certificate, and device and operator
//! certificates that both Mosquitto and the agent's TLS (rustls) accept.
//!
//! Why a tool of our own: Mosquitto's TLS guide signs with `openssl x509 -req` and no
//! extensions, which makes X.509 v1 certificates; Mosquitto takes them, rustls refuses
//! them. Everything here is X.509 v3 with the extensions spelled out:
//!
//! | file | basicConstraints | keyUsage | extendedKeyUsage | names |
//! |---|---|---|---|---|
//! | `ca.pem` | CA:true | keyCertSign, cRLSign | — | CN `edge fleet CA` |
//! | `broker.pem` | CA:false | digitalSignature | serverAuth | SANs from `--broker-host` |
//! | `<device id>.pem` | CA:false | digitalSignature | clientAuth | CN = device id |
//! | `operator.pem` | CA:false | digitalSignature | clientAuth | CN `operator` |
//!
//! The broker takes a client certificate's CN as the MQTT user name
//! (`use_identity_as_username` in `deploy/mosquitto/mosquitto.conf`), and the shipped ACL
//! confines user `X` to `edge/X/#` and grants `edge/#` to user `operator`. So a device's CN
//! is exactly its `device_id` (validated by the agent's own rule,
//! [`edge_mqtt::config::valid_segment`]), and the operator's CN is `operator`.
//!
//! Keys are ECDSA P-256 in PKCS#8 PEM, written with mode 0600; certificates 0644. Nothing is
//! ever overwritten. Certificates start one hour in the past, for devices whose clock is a
//! little behind.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use edge_mqtt::config::valid_segment;
use edge_proto::topics::reserved_device_id;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer, X509Certificate};

/// The CA certificate `init` writes (devices and the broker trust it).
pub const CA_CERT_FILE: &str = "ca.pem";
/// The CA's private key: keep it off devices and brokers.
pub const CA_KEY_FILE: &str = "ca.key";
/// The broker's certificate.
pub const BROKER_CERT_FILE: &str = "broker.pem";
/// The broker's private key.
pub const BROKER_KEY_FILE: &str = "broker.key";
/// The CN the shipped ACL grants fleet-wide rights to (`user operator`).
pub const OPERATOR_CN: &str = "operator";
/// Broker names when no `--broker-host` is given: a broker on the same machine.
pub const DEFAULT_BROKER_HOSTS: [&str; 2] = ["localhost", "127.0.0.1"];
/// Default validity of the CA and the broker certificate, in days (10 years).
pub const DEFAULT_CA_DAYS: u32 = 3650;
/// Default validity of device and operator certificates, in days (about 27 months).
pub const DEFAULT_LEAF_DAYS: u32 = 825;
/// Longest validity accepted, in days (100 years).
pub const MAX_DAYS: u32 = 36_500;

const CA_CN: &str = "edge fleet CA";
const ORGANIZATION: &str = "edge-agent fleet";
/// How far back a certificate's validity starts: a device that boots with its clock a
/// little behind (no RTC, time sync not done yet) still accepts a fresh broker certificate.
const BACKDATE: Duration = Duration::hours(1);

/// What went wrong making a CA or a certificate.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A file to be written is already there.
    #[error("{} exists; refusing to overwrite it (move it away, or pass another --out)", .0.display())]
    Exists(PathBuf),
    /// Creating, writing or reading a file failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A `--broker-host` that is neither a DNS name nor an IP address.
    #[error(
        "--broker-host {0:?}: not a DNS name (letters, digits, `-` and `.`) or an IP address; pass the name \
         or address devices put in [mqtt] url"
    )]
    BadHost(String),
    /// A device id the agent would refuse.
    #[error(
        "--device {0:?}: a device id is 1-128 characters of A-Z a-z 0-9 - _ . (the agent's device_id rule: it is \
         an MQTT topic level and a file name)"
    )]
    BadDeviceId(String),
    /// A device id the shipped ACL gives more than a device's rights.
    #[error("--device {id:?}: {why}; pick another device id")]
    ReservedDeviceId {
        /// The id.
        id: String,
        /// What the broker would let it do.
        why: &'static str,
    },
    /// An operator name that cannot be an MQTT user name in the ACL.
    #[error("--operator {0:?}: an operator name is 1-128 characters of A-Z a-z 0-9 - _ . (it is the MQTT user name)")]
    BadOperator(String),
    /// `--days` out of range.
    #[error("--days {0}: must be between 1 and {MAX_DAYS}")]
    BadDays(u32),
    /// The `--ca` directory does not hold a usable CA.
    #[error("--ca {}: {problem}; pass the directory `edgectl pki init --out` wrote", path.display())]
    BadCa {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// The certificate asked for would be valid after its CA.
    #[error(
        "--days {days}: the certificate would outlive its CA {}, which expires in {left} days; pass --days {left} \
         or fewer, or make a new CA with `edgectl pki init`", ca.display()
    )]
    OutlivesCa {
        /// The CA certificate.
        ca: PathBuf,
        /// Days asked for.
        days: u32,
        /// Days the CA has left.
        left: i64,
    },
    /// rcgen could not generate a key or sign a certificate.
    #[error("{what}: {source}")]
    Generate {
        /// What was being made.
        what: String,
        /// rcgen's error.
        source: rcgen::Error,
    },
}

/// One certificate and key written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PKCS#8 PEM, mode 0600).
    pub key: PathBuf,
    /// The subject's common name.
    pub common_name: String,
    /// End of validity.
    pub not_after: OffsetDateTime,
}

/// What `init` wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fleet {
    /// `ca.pem` and `ca.key`.
    pub ca: Written,
    /// `broker.pem` and `broker.key`.
    pub broker: Written,
}

/// Whose certificate `issue` makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// A device: CN = the device id, files `<id>.pem` and `<id>.key`.
    Device(String),
    /// Operator tooling (edgectl): CN = the name, files `<name>.pem` and `<name>.key`. The
    /// shipped ACL grants the fleet to [`OPERATOR_CN`] only.
    Operator(String),
}

impl Subject {
    /// The certificate's CN, checked: the agent's device id rule for devices (and not a
    /// name the ACL gives more rights to), a valid MQTT user name for operators.
    pub fn common_name(&self) -> Result<&str, PkiError> {
        match self {
            Subject::Device(id) if !valid_segment(id) => Err(PkiError::BadDeviceId(id.clone())),
            Subject::Device(id) if reserved_device_id(id).is_some() => {
                Err(PkiError::ReservedDeviceId { id: id.clone(), why: reserved_device_id(id).unwrap_or_default() })
            }
            Subject::Device(id) => Ok(id),
            Subject::Operator(name) if !valid_segment(name) => Err(PkiError::BadOperator(name.clone())),
            Subject::Operator(name) => Ok(name),
        }
    }
}

/// Makes a fleet CA and the broker's certificate in `out` (created if missing): `ca.pem`,
/// `ca.key`, `broker.pem`, `broker.key`, each valid for `days`. The broker certificate
/// names every host of `broker_hosts` (DNS names or IP addresses) as a SAN and the first as
/// its CN; empty means [`DEFAULT_BROKER_HOSTS`]. Refuses if any of the four files exists.
pub fn init(out: &Path, broker_hosts: &[String], days: u32) -> Result<Fleet, PkiError> {
    check_days(days)?;
    let hosts: Vec<String> = if broker_hosts.is_empty() {
        DEFAULT_BROKER_HOSTS.iter().map(|h| h.to_string()).collect()
    } else {
        broker_hosts.to_vec()
    };
    let sans = hosts.iter().map(|h| san(h)).collect::<Result<Vec<_>, _>>()?;
    let files = [CA_CERT_FILE, CA_KEY_FILE, BROKER_CERT_FILE, BROKER_KEY_FILE].map(|f| out.join(f));
    refuse_existing(&files)?;

    let now = OffsetDateTime::now_utc();
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = dn(CA_CN);
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut ca_params, now, days)?;
    let ca_key = new_key("the CA key")?;
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .map_err(|source| PkiError::Generate { what: "self-signing the CA".into(), source })?;
    let ca_not_after = ca_params.not_after;
    let issuer = Issuer::new(ca_params, ca_key);

    let mut params = CertificateParams::default();
    params.distinguished_name = dn(&hosts[0]);
    params.subject_alt_names = sans;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf(&mut params, now, days)?;
    let broker_key = new_key("the broker key")?;
    let broker_cert = params
        .signed_by(&broker_key, &issuer)
        .map_err(|source| PkiError::Generate { what: "signing the broker certificate".into(), source })?;

    create_dir(out)?;
    write_all(&[
        (&files[0], ca_cert.pem(), 0o644),
        (&files[1], issuer.key().serialize_pem(), 0o600),
        (&files[2], broker_cert.pem(), 0o644),
        (&files[3], broker_key.serialize_pem(), 0o600),
    ])?;
    let [ca_pem, ca_key, broker_pem, broker_key] = files;
    Ok(Fleet {
        ca: Written { cert: ca_pem, key: ca_key, common_name: CA_CN.into(), not_after: ca_not_after },
        broker: Written {
            cert: broker_pem,
            key: broker_key,
            common_name: hosts[0].clone(),
            not_after: params.not_after,
        },
    })
}

/// Issues a client certificate for `subject`, signed by the CA in `ca_dir` (`ca.pem` and
/// `ca.key` as [`init`] wrote them), valid for `days` but not beyond the CA. Writes
/// `<CN>.pem` and `<CN>.key` into `out` (created if missing); refuses if either exists.
pub fn issue(ca_dir: &Path, subject: &Subject, out: &Path, days: u32) -> Result<Written, PkiError> {
    check_days(days)?;
    let cn = subject.common_name()?.to_string();
    let files = [out.join(format!("{cn}.pem")), out.join(format!("{cn}.key"))];
    refuse_existing(&files)?;
    let (issuer, ca_not_after) = load_ca(ca_dir)?;

    let now = OffsetDateTime::now_utc();
    let left = (ca_not_after - now).whole_days();
    if i64::from(days) > left {
        return Err(PkiError::OutlivesCa { ca: ca_dir.join(CA_CERT_FILE), days, left });
    }
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(&cn);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    leaf(&mut params, now, days)?;
    let key = new_key(&format!("the key for {cn}"))?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|source| PkiError::Generate { what: format!("signing the certificate for {cn}"), source })?;

    create_dir(out)?;
    write_all(&[(&files[0], cert.pem(), 0o644), (&files[1], key.serialize_pem(), 0o600)])?;
    let [cert_path, key_path] = files;
    Ok(Written { cert: cert_path, key: key_path, common_name: cn, not_after: params.not_after })
}

/// Reads `ca.pem` and `ca.key` from `dir`: the certificate must be a CA, still valid, and
/// the key its own.
fn load_ca(dir: &Path) -> Result<(Issuer<'static, KeyPair>, OffsetDateTime), PkiError> {
    let (cert_path, key_path) = (dir.join(CA_CERT_FILE), dir.join(CA_KEY_FILE));
    let read = |path: &Path| {
        std::fs::read_to_string(path)
            .map_err(|e| PkiError::BadCa { path: path.to_path_buf(), problem: format!("cannot read it: {e}") })
    };
    let (cert_pem, key_pem) = (read(&cert_path)?, read(&key_path)?);
    let bad = |path: &Path, problem: String| PkiError::BadCa { path: path.to_path_buf(), problem };
    let der = match x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()) {
        Ok((_, pem)) if pem.label == "CERTIFICATE" => pem.contents,
        _ => return Err(bad(&cert_path, "no PEM certificate in it".into())),
    };
    let (_, cert) =
        X509Certificate::from_der(&der).map_err(|e| bad(&cert_path, format!("does not parse as X.509: {e}")))?;
    if !cert.is_ca() {
        return Err(bad(&cert_path, "not a CA certificate (basicConstraints CA:true missing)".into()));
    }
    let not_after = cert.validity().not_after.to_datetime();
    if not_after <= OffsetDateTime::now_utc() {
        return Err(bad(&cert_path, format!("expired {not_after}; make a new CA with `edgectl pki init`")));
    }
    let key = KeyPair::from_pem(&key_pem).map_err(|e| bad(&key_path, format!("not a PEM private key: {e}")))?;
    if key.subject_public_key_info() != cert.public_key().raw {
        return Err(bad(&key_path, format!("not the key of {}", cert_path.display())));
    }
    let issuer = Issuer::from_ca_cert_der(&der.clone().into(), key)
        .map_err(|e| bad(&cert_path, format!("unusable as issuer: {e}")))?;
    Ok((issuer, not_after))
}

fn check_days(days: u32) -> Result<(), PkiError> {
    if (1..=MAX_DAYS).contains(&days) {
        Ok(())
    } else {
        Err(PkiError::BadDays(days))
    }
}

fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, ORGANIZATION);
    dn.push(DnType::CommonName, cn);
    dn
}

/// Validity from [`BACKDATE`] before `now` to `days` after it, and a random serial.
fn validity(params: &mut CertificateParams, now: OffsetDateTime, days: u32) -> Result<(), PkiError> {
    params.not_before = now - BACKDATE;
    params.not_after = now + Duration::days(i64::from(days));
    let mut serial = [0u8; 16];
    getrandom::getrandom(&mut serial).map_err(|e| PkiError::Io {
        what: "reading the OS random source for a serial number",
        path: PathBuf::new(),
        source: e.into(),
    })?;
    // Positive and 16 bytes long (RFC 5280: at most 20 octets, non-negative).
    serial[0] = (serial[0] & 0x7f) | 0x01;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    Ok(())
}

/// The parts every end-entity certificate shares: not a CA, signatures only (ECDSA keys do
/// no key encipherment), the CA's key identifier.
fn leaf(params: &mut CertificateParams, now: OffsetDateTime, days: u32) -> Result<(), PkiError> {
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    validity(params, now, days)
}

fn new_key(what: &str) -> Result<KeyPair, PkiError> {
    KeyPair::generate().map_err(|source| PkiError::Generate { what: format!("generating {what}"), source })
}

/// A `--broker-host` as a SAN: an IP address, or a DNS name of labels of letters, digits
/// and inner hyphens (a leading `*.` allowed).
fn san(host: &str) -> Result<SanType, PkiError> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let name = host.strip_prefix("*.").unwrap_or(host);
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if host.len() > 253 || !name.split('.').all(label_ok) {
        return Err(PkiError::BadHost(host.into()));
    }
    let ia5 = host.to_string().try_into().map_err(|_| PkiError::BadHost(host.into()))?;
    Ok(SanType::DnsName(ia5))
}

fn refuse_existing(files: &[PathBuf]) -> Result<(), PkiError> {
    match files.iter().find(|p| p.symlink_metadata().is_ok()) {
        Some(p) => Err(PkiError::Exists(p.clone())),
        None => Ok(()),
    }
}

fn create_dir(dir: &Path) -> Result<(), PkiError> {
    std::fs::create_dir_all(dir).map_err(|source| PkiError::Io { what: "creating", path: dir.into(), source })
}

/// Writes every file, or none: on a failure the ones already written are removed.
fn write_all(files: &[(&PathBuf, String, u32)]) -> Result<(), PkiError> {
    for (i, (path, text, mode)) in files.iter().enumerate() {
        if let Err(e) = write_new(path, *mode, text) {
            for (done, _, _) in &files[..i] {
                let _ = std::fs::remove_file(done);
            }
            return Err(e);
        }
    }
    Ok(())
}

fn write_new(path: &Path, mode: u32, text: &str) -> Result<(), PkiError> {
    crate::files::write_new(path, mode, text).map_err(|(what, source)| match source.kind() {
        std::io::ErrorKind::AlreadyExists => PkiError::Exists(path.into()),
        _ => PkiError::Io { what, path: path.into(), source },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use x509_parser::extensions::GeneralName;
    use x509_parser::x509::X509Version;

    /// Runs `check` on the certificate in `path`, parsed by x509-parser.
    fn parsed<T>(path: &Path, check: impl FnOnce(&X509Certificate) -> T) -> T {
        let text = std::fs::read(path).unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(&text).unwrap();
        let (_, cert) = X509Certificate::from_der(&pem.contents).unwrap();
        check(&cert)
    }

    fn cn(cert: &X509Certificate) -> String {
        cert.subject().iter_common_name().next().unwrap().as_str().unwrap().to_string()
    }

    /// Version 3, the CA flag as given (basicConstraints present and critical either way),
    /// signed by the CA in `ca`, valid from an hour ago for `days`.
    fn check_common(path: &Path, ca: &Path, is_ca: bool, days: i64) {
        let ca_key = parsed(ca, |c| c.public_key().raw.to_vec());
        parsed(path, |cert| {
            assert_eq!(cert.version(), X509Version::V3, "{}", path.display());
            let bc = cert.basic_constraints().unwrap().expect("basicConstraints");
            assert!(bc.critical && bc.value.ca == is_ca, "{}: {bc:?}", path.display());
            let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(&ca_key).unwrap();
            cert.verify_signature(Some(&spki)).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let v = cert.validity();
            let now = OffsetDateTime::now_utc();
            let (from, to) = (v.not_before.to_datetime(), v.not_after.to_datetime());
            assert!(from <= now - Duration::minutes(59) && from >= now - Duration::minutes(61), "{from}");
            assert!((to - now - Duration::days(days)).abs() < Duration::minutes(1), "{to}");
        });
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn init_writes_a_v3_ca_and_a_broker_certificate_naming_every_host() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = ["broker.example".to_string(), "10.0.0.5".to_string(), "::1".to_string()];
        let fleet = init(dir.path(), &hosts, 30).unwrap();
        let ca = &fleet.ca.cert;
        assert_eq!(ca, &dir.path().join("ca.pem"));
        check_common(ca, ca, true, 30);
        parsed(ca, |c| {
            let ku = c.key_usage().unwrap().expect("keyUsage").value;
            assert!(ku.key_cert_sign() && ku.crl_sign() && !ku.digital_signature(), "{ku:?}");
            assert_eq!(cn(c), "edge fleet CA");
        });

        let broker = &fleet.broker.cert;
        check_common(broker, ca, false, 30);
        parsed(broker, |c| {
            assert_eq!(cn(c), "broker.example");
            let ku = c.key_usage().unwrap().expect("keyUsage").value;
            assert!(ku.digital_signature() && !ku.key_cert_sign(), "{ku:?}");
            let eku = c.extended_key_usage().unwrap().expect("extendedKeyUsage").value;
            assert!(eku.server_auth && !eku.client_auth, "{eku:?}");
            let sans = &c.subject_alternative_name().unwrap().expect("SANs").value.general_names;
            assert_eq!(
                sans,
                &vec![
                    GeneralName::DNSName("broker.example"),
                    GeneralName::IPAddress(&[10, 0, 0, 5]),
                    GeneralName::IPAddress(&std::net::Ipv6Addr::LOCALHOST.octets()),
                ]
            );
        });
        assert_eq!((mode(&fleet.ca.key), mode(&fleet.broker.key)), (0o600, 0o600));
        assert_eq!((mode(ca), mode(broker)), (0o644, 0o644));
        assert!(std::fs::read_to_string(&fleet.ca.key).unwrap().starts_with("-----BEGIN PRIVATE KEY-----"));
    }

    #[test]
    fn init_without_hosts_names_localhost_and_127_0_0_1() {
        let dir = tempfile::tempdir().unwrap();
        let fleet = init(dir.path(), &[], DEFAULT_CA_DAYS).unwrap();
        check_common(&fleet.broker.cert, &fleet.ca.cert, false, i64::from(DEFAULT_CA_DAYS));
        parsed(&fleet.broker.cert, |c| {
            let sans = &c.subject_alternative_name().unwrap().unwrap().value.general_names;
            assert_eq!(sans, &vec![GeneralName::DNSName("localhost"), GeneralName::IPAddress(&[127, 0, 0, 1])]);
        });
    }

    #[test]
    fn a_device_certificate_has_the_device_id_as_cn_and_is_for_clients_only() {
        let dir = tempfile::tempdir().unwrap();
        let fleet = init(&dir.path().join("ca"), &[], 100).unwrap();
        let out = dir.path().join("devices");
        let dev = issue(&dir.path().join("ca"), &Subject::Device("pi-kitchen_01.a".into()), &out, 90).unwrap();
        assert_eq!(
            (dev.cert.clone(), dev.key.clone()),
            (out.join("pi-kitchen_01.a.pem"), out.join("pi-kitchen_01.a.key"))
        );
        check_common(&dev.cert, &fleet.ca.cert, false, 90);
        parsed(&dev.cert, |c| {
            assert_eq!(cn(c), "pi-kitchen_01.a");
            let ku = c.key_usage().unwrap().expect("keyUsage").value;
            assert!(ku.digital_signature() && !ku.key_cert_sign() && !ku.key_encipherment(), "{ku:?}");
            let eku = c.extended_key_usage().unwrap().expect("extendedKeyUsage").value;
            assert!(eku.client_auth && !eku.server_auth, "{eku:?}");
            assert!(c.subject_alternative_name().unwrap().is_none());
        });
        assert_eq!(mode(&dev.key), 0o600);
        // What the agent does with the pair at start: rustls takes both.
        edge_mqtt::client_config(&fleet.ca.cert, &dev.cert, &dev.key).unwrap();
        // And what check-config reads from it.
        let info =
            edge_mqtt::cert::check_device(&dev.cert, "pi-kitchen_01.a", OffsetDateTime::now_utc().unix_timestamp())
                .unwrap();
        assert_eq!(info.version, 3);
    }

    #[test]
    fn the_operator_certificate_has_the_cn_the_acl_grants_the_fleet_to() {
        let dir = tempfile::tempdir().unwrap();
        let fleet = init(dir.path(), &[], 100).unwrap();
        let op = issue(dir.path(), &Subject::Operator(OPERATOR_CN.into()), &dir.path().join("op"), 30).unwrap();
        assert!(op.cert.ends_with("op/operator.pem") && op.key.ends_with("op/operator.key"), "{op:?}");
        check_common(&op.cert, &fleet.ca.cert, false, 30);
        parsed(&op.cert, |c| assert_eq!(cn(c), "operator"));
        let acl = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/mosquitto/acl")).unwrap();
        assert!(acl.lines().any(|l| l == format!("user {OPERATOR_CN}")), "the shipped ACL no longer names it");
    }

    #[test]
    fn nothing_is_overwritten_and_the_error_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path(), &[], 10).unwrap();
        let ca_before = std::fs::read(dir.path().join("ca.key")).unwrap();
        let err = init(dir.path(), &[], 10).unwrap_err();
        assert!(matches!(&err, PkiError::Exists(p) if p.ends_with("ca.pem")), "{err}");
        assert!(err.to_string().contains("refusing to overwrite"), "{err}");
        assert_eq!(std::fs::read(dir.path().join("ca.key")).unwrap(), ca_before);

        let dev = Subject::Device("dev-1".into());
        issue(dir.path(), &dev, dir.path(), 5).unwrap();
        std::fs::remove_file(dir.path().join("dev-1.pem")).unwrap();
        let key_before = std::fs::read(dir.path().join("dev-1.key")).unwrap();
        let err = issue(dir.path(), &dev, dir.path(), 5).unwrap_err();
        assert!(matches!(&err, PkiError::Exists(p) if p.ends_with("dev-1.key")), "{err}");
        assert_eq!(std::fs::read(dir.path().join("dev-1.key")).unwrap(), key_before);
        assert!(!dir.path().join("dev-1.pem").exists());
    }

    #[test]
    fn device_ids_follow_the_agents_rule_and_privileged_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path(), &[], 10).unwrap();
        let long = "d".repeat(129);
        for bad in ["", "dev/1", "dev+1", "dev#", "dev 1", "dév", long.as_str()] {
            let err = issue(dir.path(), &Subject::Device(bad.into()), dir.path(), 5).unwrap_err();
            assert!(matches!(err, PkiError::BadDeviceId(_)), "{bad:?}: {err}");
            assert!(err.to_string().contains("A-Z a-z 0-9 - _ ."), "{err}");
        }
        for reserved in ["operator", "group", "edge-fleet"] {
            let err = issue(dir.path(), &Subject::Device(reserved.into()), dir.path(), 5).unwrap_err();
            assert!(matches!(err, PkiError::ReservedDeviceId { .. }), "{reserved}: {err}");
        }
        let err = issue(dir.path(), &Subject::Operator("ops+all".into()), dir.path(), 5).unwrap_err();
        assert!(matches!(err, PkiError::BadOperator(_)), "{err}");
        // Nothing was written for any of them.
        let mut names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        assert_eq!(names, ["broker.key", "broker.pem", "ca.key", "ca.pem"]);
    }

    #[test]
    fn a_certificate_may_not_outlive_its_ca() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path(), &[], 10).unwrap();
        let dev = Subject::Device("dev-1".into());
        let err = issue(dir.path(), &dev, dir.path(), 11).unwrap_err();
        assert!(matches!(err, PkiError::OutlivesCa { left: 9, .. }), "{err}");
        assert!(err.to_string().contains("pass --days 9 or fewer"), "{err}");
        issue(dir.path(), &dev, dir.path(), 9).unwrap();
    }

    #[test]
    fn a_ca_directory_with_the_wrong_key_or_no_ca_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        init(&a, &[], 10).unwrap();
        init(&b, &[], 10).unwrap();
        let dev = Subject::Device("dev-1".into());
        let out = dir.path().join("out");

        std::fs::copy(b.join("ca.key"), a.join("ca.key")).unwrap();
        let err = issue(&a, &dev, &out, 5).unwrap_err();
        assert!(err.to_string().contains("not the key of"), "{err}");

        // The broker's pair where the CA's should be: a certificate, but not a CA.
        std::fs::copy(b.join("broker.pem"), b.join("ca.pem")).unwrap();
        std::fs::copy(b.join("broker.key"), b.join("ca.key")).unwrap();
        let err = issue(&b, &dev, &out, 5).unwrap_err();
        assert!(err.to_string().contains("not a CA certificate"), "{err}");

        let err = issue(&dir.path().join("none"), &dev, &out, 5).unwrap_err();
        assert!(matches!(&err, PkiError::BadCa { path, .. } if path.ends_with("none/ca.pem")), "{err}");
        assert!(err.to_string().contains("edgectl pki init --out"), "{err}");
        assert!(!out.exists());
    }

    #[test]
    fn hosts_and_days_are_checked_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["broker example", "-broker.example", "broker..example", "broker_1.example", ""] {
            let err = init(dir.path(), &[bad.to_string()], 10).unwrap_err();
            assert!(matches!(err, PkiError::BadHost(_)), "{bad:?}: {err}");
        }
        for days in [0, MAX_DAYS + 1] {
            assert!(matches!(init(dir.path(), &[], days), Err(PkiError::BadDays(_))));
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
