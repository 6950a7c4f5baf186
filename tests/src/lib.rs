//! Integration-test harness: a real Mosquitto broker over mutual TLS, with every
//! certificate generated at test time.
//!
//! The broker under test is the fleet broker. Its configuration is
//! `deploy/mosquitto/mosquitto.conf` from this repository with only the machine-specific
//! lines rewritten (listener port, certificate paths, persistence and log locations), and
//! it loads `deploy/mosquitto/acl` as is. A change to either file is therefore exercised by
//! every test that starts a [`Broker`].
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! let dir = tempfile::tempdir()?;
//! let pki = edge_it::Pki::generate(dir.path())?;
//! let broker = edge_it::Broker::start(&pki)?;
//! let tls = pki.client_config("dev-1")?;
//! let opts = edge_it::mqtt_options(&edge_it::unique_client_id("dev-1"), broker.port(), tls);
//! let (client, eventloop) = rumqttc::AsyncClient::new(opts, 16);
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! - [`Pki`]: a test CA, the broker's server certificate (SANs `127.0.0.1` and
//!   `localhost`), client certificates for any CN ([`Pki::client`]: device ids such as
//!   `dev-1`, and `operator`), and an impostor "rogue" CA ([`Pki::rogue_client`]) for
//!   unknown-CA refusal. Everything is written as PEM files (keys as PKCS#8).
//! - [`Broker`]: one `mosquitto` process on a free loopback port. [`Broker::stop`] and
//!   [`Broker::restart`] (same port) simulate a broker outage; the process is killed on drop.
//!   [`Broker::start_with_certs`] takes a CA and server certificate made elsewhere.
//! - [`Postgres`]: a PostgreSQL server of its own (`initdb`, `pg_ctl`) on a free loopback
//!   port, for the fleet service's tests; stopped on drop.
//! - [`Prometheus`]: a Prometheus of its own with the remote-write receiver and an
//!   out-of-order window, a query helper over its HTTP API; `stop`/`restart` on one port.
//! - [`client_config`], [`mqtt_options`], [`unique_client_id`]: the client side, built the
//!   same way the agent builds its link (rustls with the ring provider passed explicitly,
//!   never `TlsConfiguration::Simple`, which panics without a process-wide provider).
//!
//! # Blocking
//!
//! [`Broker::start`], [`Broker::stop`] and [`Broker::restart`] block the calling thread for
//! up to [`START_TIMEOUT`] / [`STOP_TIMEOUT`] and measure time with the real clock, so they
//! keep working in tests that use `tokio::time::pause()`. Call them before spawning event
//! loops, or from a `#[tokio::test(flavor = "multi_thread")]` test so that a running
//! client's event loop is not stalled meanwhile.
//!
//! Mosquitto must be installed (`scripts/setup.sh` does it); it is looked up on `PATH` and
//! then as `/usr/sbin/mosquitto`, where Debian puts it.

mod postgres;
mod prometheus;
mod tmpfs;
pub use postgres::Postgres;
pub use prometheus::{Prometheus, SeriesSamples};
pub use tmpfs::Tmpfs;

use std::fmt::Write as _;
use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rumqttc::{MqttOptions, TlsConfiguration, Transport};
use rustls::ClientConfig;

/// How long [`Broker::start`] and [`Broker::restart`] wait for the port to accept TCP.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`Broker::stop`] waits after SIGTERM before it sends SIGKILL.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest MQTT packet the test clients send or accept: the fleet broker's
/// `max_packet_size` (1 MiB of OTA chunk plus 4 KiB of header room).
pub const MAX_PACKET_BYTES: usize = 1024 * 1024 + 4096;

/// The fleet broker configuration and ACL in this repository.
fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("deploy").join("mosquitto")
}

/// `deploy/mosquitto/acl`, the ACL every test broker loads.
pub fn acl_path() -> PathBuf {
    deploy_dir().join("acl")
}

/// `deploy/mosquitto/mosquitto.conf`, the configuration every test broker is derived from.
pub fn fleet_conf_path() -> PathBuf {
    deploy_dir().join("mosquitto.conf")
}

/// A certificate and its private key, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PKCS#8 PEM, mode 0600).
    pub key: PathBuf,
}

/// Test PKI: a CA, the broker's certificate, client certificates on demand, and a rogue CA.
///
/// Keys are ECDSA P-256. The rogue CA has the same subject name as the real one, so a
/// broker that matched issuers by name instead of checking signatures would be caught.
pub struct Pki {
    dir: PathBuf,
    ca: CertifiedIssuer<'static, KeyPair>,
    ca_pem: PathBuf,
    server: CertFiles,
    rogue: CertifiedIssuer<'static, KeyPair>,
    rogue_ca_pem: PathBuf,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki").field("dir", &self.dir).finish_non_exhaustive()
    }
}

const CA_NAME: &str = "edge-it test CA";

impl Pki {
    /// Generates the CA, the broker certificate and the rogue CA, and writes them into
    /// `dir` (`ca.pem`, `broker.pem`, `broker.key`, `rogue-ca.pem`).
    pub fn generate(dir: &Path) -> Result<Pki> {
        fs::create_dir_all(dir).with_context(|| format!("pki: creating {}", dir.display()))?;
        let ca = new_ca()?;
        let rogue = new_ca()?;
        let ca_pem = dir.join("ca.pem");
        write_file(&ca_pem, ca.pem().as_bytes(), false)?;
        let rogue_ca_pem = dir.join("rogue-ca.pem");
        write_file(&rogue_ca_pem, rogue.pem().as_bytes(), false)?;

        let mut params = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .context("pki: broker certificate SANs")?;
        params.distinguished_name = dn("localhost");
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let server = issue(dir, "broker", params, &ca)?;

        Ok(Pki { dir: dir.to_path_buf(), ca, ca_pem, server, rogue, rogue_ca_pem })
    }

    /// Issues a client certificate with common name `cn`, signed by the test CA, and
    /// writes it as `client-<cn>.pem` / `client-<cn>.key`. The broker uses the CN as the
    /// MQTT user name, so `cn` is what the ACL sees (`dev-1`, `operator`, ...).
    pub fn client(&self, cn: &str) -> Result<CertFiles> {
        issue(&self.dir, &format!("client-{}", file_stem(cn)), client_params(cn), &self.ca)
    }

    /// Issues a client certificate with common name `cn` from the rogue CA, which the
    /// broker does not trust (`rogue-<cn>.pem` / `rogue-<cn>.key`).
    pub fn rogue_client(&self, cn: &str) -> Result<CertFiles> {
        issue(&self.dir, &format!("rogue-{}", file_stem(cn)), client_params(cn), &self.rogue)
    }

    /// [`Pki::client`] followed by [`client_config`] trusting the test CA.
    pub fn client_config(&self, cn: &str) -> Result<ClientConfig> {
        let files = self.client(cn)?;
        client_config(&self.ca_pem, &files.cert, &files.key)
    }

    /// The directory holding the PEM files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The test CA certificate (clients trust it; the broker requires client certs from it).
    pub fn ca_pem(&self) -> &Path {
        &self.ca_pem
    }

    /// The broker's certificate and key.
    pub fn server(&self) -> &CertFiles {
        &self.server
    }

    /// The rogue CA certificate (for a client that trusts the wrong CA).
    pub fn rogue_ca_pem(&self) -> &Path {
        &self.rogue_ca_pem
    }
}

fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "edge-agent tests");
    dn.push(DnType::CommonName, cn);
    dn
}

fn new_ca() -> Result<CertifiedIssuer<'static, KeyPair>> {
    let mut params = CertificateParams::new(Vec::<String>::new()).context("pki: CA parameters")?;
    params.distinguished_name = dn(CA_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let key = KeyPair::generate().context("pki: generating the CA key")?;
    CertifiedIssuer::self_signed(params, key).context("pki: self-signing the CA")
}

fn client_params(cn: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(cn);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    params
}

fn issue(
    dir: &Path,
    stem: &str,
    params: CertificateParams,
    ca: &CertifiedIssuer<'static, KeyPair>,
) -> Result<CertFiles> {
    let key = KeyPair::generate().with_context(|| format!("pki: generating the key for {stem}"))?;
    let cert = params.signed_by(&key, ca).with_context(|| format!("pki: signing the certificate for {stem}"))?;
    let files = CertFiles { cert: dir.join(format!("{stem}.pem")), key: dir.join(format!("{stem}.key")) };
    write_file(&files.cert, cert.pem().as_bytes(), false)?;
    // serialize_pem() is PKCS#8 ("BEGIN PRIVATE KEY").
    write_file(&files.key, key.serialize_pem().as_bytes(), true)?;
    Ok(files)
}

/// A CN as a file name: anything outside `[A-Za-z0-9._-]` becomes `_`.
fn file_stem(cn: &str) -> String {
    cn.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).collect()
}

fn write_file(path: &Path, contents: &[u8], private: bool) -> Result<()> {
    let mut opts = OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    if private {
        opts.mode(0o600);
    }
    let mut f = opts.open(path).with_context(|| format!("writing {}", path.display()))?;
    f.write_all(contents).with_context(|| format!("writing {}", path.display()))
}

/// A Mosquitto process serving the fleet configuration on a free loopback port.
///
/// Killed (SIGKILL) on drop; use [`Broker::stop`] for an orderly SIGTERM shutdown.
#[derive(Debug)]
pub struct Broker {
    exe: PathBuf,
    dir: tempfile::TempDir,
    ca_pem: PathBuf,
    server: CertFiles,
    port: u16,
    child: Option<Child>,
    /// Holds the port while the broker is stopped, so that a broker started meanwhile by
    /// another test cannot take it (and answer for this one).
    guard: Option<PortGuard>,
    /// Lines appended for a load run ([`Broker::start_tuned`]); its log stays at the
    /// fleet file's levels instead of debug.
    tuning: Option<String>,
}

/// A listener that refuses every connection on a port by accepting and closing it at once.
#[derive(Debug)]
struct PortGuard {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PortGuard {
    fn hold(port: u16) -> Result<PortGuard> {
        // The broker's socket was just closed; std sets SO_REUSEADDR, so this only waits out
        // the kernel finishing the close.
        let deadline = Instant::now() + Duration::from_secs(2);
        let listener = loop {
            match TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
                Ok(l) => break l,
                Err(e) if Instant::now() >= deadline => return Err(e).context("broker: holding the port while down"),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        listener.set_nonblocking(true)?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => drop(conn),
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Ok(PortGuard { stop, thread: Some(thread) })
    }
}

impl Drop for PortGuard {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Broker {
    /// Writes a configuration for a free port into a fresh temporary directory, starts
    /// `mosquitto -c` on it and waits until the port accepts TCP connections.
    ///
    /// The free port is found by binding `127.0.0.1:0` and closing the socket again, so
    /// another process may take it in between; if mosquitto exits before it listens, start
    /// retries on a new port a few times.
    pub fn start(pki: &Pki) -> Result<Broker> {
        Broker::start_with_certs(pki.ca_pem(), pki.server())
    }

    /// [`Broker::start`] with a CA and a server certificate made elsewhere (by
    /// `edgectl pki init`, say) instead of a [`Pki`]'s. The server certificate must name
    /// `127.0.0.1`, which the test clients connect to.
    pub fn start_with_certs(ca_pem: &Path, server: &CertFiles) -> Result<Broker> {
        Broker::start_inner(ca_pem, server, None)
    }

    /// [`Broker::start`] for a load run (bench/fleet.sh): `tuning` (configuration lines,
    /// such as `max_queued_messages 100000`) is appended after the fleet file, whose global
    /// settings it overrides, and the log keeps the fleet file's levels: the debug log the
    /// tests use writes a line per message, which at a thousand devices is the bottleneck.
    pub fn start_tuned(pki: &Pki, tuning: &str) -> Result<Broker> {
        Broker::start_inner(pki.ca_pem(), pki.server(), Some(tuning.to_string()))
    }

    fn start_inner(ca_pem: &Path, server: &CertFiles, tuning: Option<String>) -> Result<Broker> {
        let exe = find_mosquitto()?;
        let dir = tempfile::Builder::new().prefix("edge-it-broker-").tempdir().context("broker: temp dir")?;
        let mut broker = Broker {
            exe,
            dir,
            ca_pem: ca_pem.to_path_buf(),
            server: server.clone(),
            port: 0,
            child: None,
            guard: None,
            tuning,
        };
        let mut last = None;
        for _ in 0..5 {
            broker.port = free_port()?;
            match broker.spawn_and_wait() {
                Ok(()) => return Ok(broker),
                // Exited early: most likely the port was taken. Anything else (a config
                // error) fails the same way on the next port and ends up reported below.
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow!("broker: did not start")))
    }

    /// The loopback port the broker listens on (kept across [`Broker::restart`]).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `mqtts://127.0.0.1:PORT`, the form the agent's `[mqtt] url` takes.
    pub fn url(&self) -> String {
        format!("mqtts://127.0.0.1:{}", self.port)
    }

    /// The generated `mosquitto.conf`.
    pub fn conf_path(&self) -> PathBuf {
        self.dir.path().join("mosquitto.conf")
    }

    /// The process id while it runs (to read its CPU time and memory in /proc).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Whether the process is alive.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGTERM, then waits for the process to exit (SIGKILL after [`STOP_TIMEOUT`]).
    /// Mosquitto saves its persistence file on the way out. Does nothing if stopped. While
    /// stopped, the port stays reserved and refuses connections.
    pub fn stop(&mut self) -> Result<()> {
        self.stop_process()?;
        if self.guard.is_none() {
            self.guard = Some(PortGuard::hold(self.port)?);
        }
        Ok(())
    }

    fn stop_process(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else { return Ok(()) };
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        let pid = libc::pid_t::try_from(child.id()).context("broker: pid out of range")?;
        // SAFETY: kill(2) on a pid we spawned and have not reaped yet, so it cannot have
        // been reused by another process.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.kill().ok();
        child.wait()?;
        bail!("broker: mosquitto ignored SIGTERM for {STOP_TIMEOUT:?} and was killed\n{}", self.log())
    }

    /// Stops the broker if it runs, then starts it again on the same port with the same
    /// configuration and persistence directory (retained messages and persistent sessions
    /// survive, as on a real broker restart).
    pub fn restart(&mut self) -> Result<()> {
        self.stop_process()?;
        self.guard = None;
        self.spawn_and_wait()
    }

    /// Everything mosquitto wrote: its stderr (configuration errors land there before the
    /// log file is open) and its log file, across restarts. For assertion messages.
    pub fn log(&self) -> String {
        self.log_handle().read()
    }

    /// A handle that reads [`Broker::log`] without borrowing the broker, for error paths in
    /// code that also stops or restarts it. Valid while the broker is alive.
    pub fn log_handle(&self) -> BrokerLog {
        BrokerLog { dir: self.dir.path().to_path_buf() }
    }

    fn spawn_and_wait(&mut self) -> Result<()> {
        let conf = self.conf_path();
        write_file(&conf, self.render_conf()?.as_bytes(), false)?;
        let stderr = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("stderr.log"))
            .context("broker: stderr.log")?;
        let mut child = Command::new(&self.exe)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("broker: spawning {}", self.exe.display()))?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait()? {
                bail!("broker: mosquitto exited ({status}) before listening on {addr}\n{}", self.log());
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() >= deadline {
                child.kill().ok();
                child.wait().ok();
                bail!("broker: not listening on {addr} after {START_TIMEOUT:?}\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The fleet configuration with the listener's machine-specific lines rewritten in
    /// place (the settings after `listener` apply to that listener, so position matters)
    /// and the global ones (pid file, persistence and log locations) dropped and set anew
    /// at the end.
    fn render_conf(&self) -> Result<String> {
        let fleet_path = fleet_conf_path();
        let fleet =
            fs::read_to_string(&fleet_path).with_context(|| format!("broker: reading {}", fleet_path.display()))?;
        let dir = self.dir.path();
        let acl = acl_path().canonicalize().with_context(|| format!("broker: {}", acl_path().display()))?;
        let in_place = [
            ("listener", format!("{} 127.0.0.1", self.port)),
            ("cafile", self.ca_pem.display().to_string()),
            ("certfile", self.server.cert.display().to_string()),
            ("keyfile", self.server.key.display().to_string()),
            ("acl_file", acl.display().to_string()),
        ];
        let dropped = ["pid_file", "persistence_location", "log_dest"];
        let mut seen = [0usize; 5];
        let mut out = format!("# Generated by edge-it from {} for one test broker.\n", fleet_path.display());
        for line in fleet.lines() {
            let key = line.split_whitespace().next().unwrap_or("");
            if let Some(i) = in_place.iter().position(|(k, _)| *k == key) {
                seen[i] += 1;
                let _ = writeln!(out, "{key} {}", in_place[i].1);
            } else if !dropped.contains(&key) {
                out.push_str(line);
                out.push('\n');
            }
        }
        // Each exactly once, or the test broker would not be the fleet broker (a second
        // listener, or TLS or ACL settings gone missing).
        for ((key, _), n) in in_place.iter().zip(seen) {
            if n != 1 {
                bail!("broker: {} has {n} `{key}` lines; the harness expects exactly one", fleet_path.display());
            }
        }
        out.push_str("\n# Test overrides.\n");
        // If persistence is on, it lives in the temp dir: a restart keeps retained messages
        // and sessions, as in the fleet. The trailing slash is required.
        let _ = writeln!(out, "persistence_location {}/", dir.display());
        let _ = writeln!(out, "log_dest file {}", dir.join("mosquitto.log").display());
        match &self.tuning {
            Some(tuning) => {
                out.push_str("\n# Load-run tuning.\n");
                out.push_str(tuning);
                out.push('\n');
            }
            // Debug level shows ACL decisions ("Denied PUBLISH ...") in `log()`.
            None => out.push_str("log_type all\n"),
        }
        // Started as root, mosquitto drops privileges to the `mosquitto` user, which cannot
        // read our 0600 keys in a 0700 temp dir. Stay root instead.
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            out.push_str("user root\n");
        }
        Ok(out)
    }
}

/// Reads a broker's log; see [`Broker::log_handle`].
#[derive(Debug, Clone)]
pub struct BrokerLog {
    dir: PathBuf,
}

impl BrokerLog {
    /// Same as [`Broker::log`].
    pub fn read(&self) -> String {
        let mut out = String::new();
        for name in ["stderr.log", "mosquitto.log"] {
            if let Ok(s) = fs::read_to_string(self.dir.join(name)) {
                if !s.is_empty() {
                    let _ = writeln!(out, "--- {name} ---\n{s}");
                }
            }
        }
        out
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }
}

fn find_mosquitto() -> Result<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("mosquitto")).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([PathBuf::from("/usr/sbin/mosquitto"), PathBuf::from("/usr/local/sbin/mosquitto")])
        .find(|p| p.is_file())
        .ok_or_else(|| {
            anyhow!("mosquitto not found on PATH or in /usr/sbin: run scripts/setup.sh to install it (Debian package `mosquitto`)")
        })
}

fn free_port() -> Result<u16> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("broker: binding 127.0.0.1:0 for a free port")?;
    Ok(l.local_addr()?.port())
}

/// A rustls client configuration for mutual TLS: trusts the CA certificates in `ca_pem`
/// and presents the chain in `cert_pem` with the key in `key_pem`.
///
/// The agent's own builder (ring provider passed explicitly, no process-wide default), so
/// test clients connect exactly as devices do.
pub fn client_config(ca_pem: &Path, cert_pem: &Path, key_pem: &Path) -> Result<ClientConfig> {
    let config = edge_mqtt::client_config(ca_pem, cert_pem, key_pem)?;
    Ok(Arc::unwrap_or_clone(config))
}

/// MQTT options for a test client of the broker on `127.0.0.1:port` over `tls`.
///
/// Passes the configuration as `TlsConfiguration::Rustls`; the server name checked is
/// `127.0.0.1` (an IP SAN of the broker certificate). Keep-alive is 5 s so a dead broker is
/// noticed quickly, and packets up to [`MAX_PACKET_BYTES`] are allowed both ways. Use
/// [`unique_client_id`] for `client_id`: the broker disconnects an older session when a
/// second client connects with the same id.
pub fn mqtt_options(client_id: &str, port: u16, tls: ClientConfig) -> MqttOptions {
    let mut opts = MqttOptions::new(client_id, "127.0.0.1", port);
    opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(Arc::new(tls))));
    opts.set_keep_alive(Duration::from_secs(5));
    opts.set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES);
    opts
}

/// `<prefix>-<pid>-<n>`: unique within this test process and across concurrent ones.
/// `prefix` must not contain `+` or `#` (the broker's pattern ACL then denies everything).
pub fn unique_client_id(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("{prefix}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conf_rewrites_machine_lines_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::generate(dir.path()).unwrap();
        let broker = Broker {
            exe: PathBuf::from("/nonexistent"),
            dir: tempfile::tempdir().unwrap(),
            ca_pem: pki.ca_pem().to_path_buf(),
            server: pki.server().clone(),
            port: 4242,
            child: None,
            guard: None,
            tuning: None,
        };
        let conf = broker.render_conf().unwrap();
        assert!(conf.contains("\nlistener 4242 127.0.0.1\n"), "{conf}");
        assert!(conf.contains(&format!("\ncafile {}\n", pki.ca_pem().display())), "{conf}");
        assert!(conf.contains("\nrequire_certificate true\n"), "{conf}");
        assert!(conf.contains("\nuse_identity_as_username true\n"), "{conf}");
        assert!(conf.contains("\nallow_anonymous false\n"), "{conf}");
        let settings: Vec<&str> = conf.lines().filter(|l| !l.starts_with('#')).collect();
        for line in &settings {
            assert!(!line.contains("/etc/") && !line.contains("/var/") && !line.contains("/run/"), "{line}");
        }
        assert!(settings.iter().any(|l| l.starts_with("acl_file ") && l.ends_with("/deploy/mosquitto/acl")));
    }

    #[test]
    fn key_files_are_pkcs8_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::generate(dir.path()).unwrap();
        let files = pki.client("dev/1").unwrap();
        assert!(files.cert.ends_with("client-dev_1.pem"));
        let key = fs::read_to_string(&files.key).unwrap();
        assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"), "{key}");
        assert_eq!(fs::metadata(&files.key).unwrap().permissions().mode() & 0o777, 0o600);
        client_config(pki.ca_pem(), &files.cert, &files.key).unwrap();
    }
}
