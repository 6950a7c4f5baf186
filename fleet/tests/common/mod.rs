//! What the fleet tests share: a broker with the test PKI, `edge-fleet` as a real process,
//! the workspace's other binaries (`edgectl`, `edge-agent`) built on demand, and a plain
//! HTTP client.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use edge_it::{Broker, Pki};

mod deploys;
#[allow(unused_imports)]
pub use deploys::*;

/// How long a condition may take to become true.
pub const PATIENCE: Duration = Duration::from_secs(30);

pub struct Setup {
    pub dir: tempfile::TempDir,
    pub pki: Pki,
    pub broker: Broker,
}

pub fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(&dir.path().join("pki")).unwrap();
    let broker = Broker::start(&pki).unwrap();
    Setup { dir, pki, broker }
}

/// A free loopback address for the HTTP API.
pub fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// `fleet.toml` for `database` and `listen`, with the `edge-fleet` certificate.
pub fn fleet_toml(s: &Setup, database: &str, listen: &str) -> PathBuf {
    let cert = s.pki.client("edge-fleet").unwrap();
    let path = s.dir.path().join("fleet.toml");
    std::fs::write(
        &path,
        format!(
            "[mqtt]\nurl = \"{}\"\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\nreconnect_max_secs = 1\n\
             [database]\nurl = \"{database}\"\n[http]\nlisten = \"{listen}\"\n\
             [artifacts]\ndir = \"{artifacts}\"\n",
            s.broker.url(),
            s.pki.ca_pem().display(),
            cert.cert.display(),
            cert.key.display(),
            artifacts = s.dir.path().join("artifacts").display(),
        ),
    )
    .unwrap();
    path
}

/// `edge-fleet run` as a process; killed (SIGKILL) on drop.
pub struct Fleet {
    pub child: Child,
    pub listen: String,
    pub log: PathBuf,
}

impl Fleet {
    pub fn start(config: &Path, listen: &str) -> Fleet {
        let log = config.with_file_name(format!("edge-fleet-{}.log", next_number()));
        let child = Command::new(env!("CARGO_BIN_EXE_edge-fleet"))
            .args(["run", "--config"])
            .arg(config)
            .env("EDGE_FLEET_LOG", "info,edge_fleet=debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let fleet = Fleet { child, listen: listen.into(), log };
        fleet.until("/healthz answers 200", || http_get(&fleet.listen, "/healthz").is_some_and(|(c, _)| c == 200));
        fleet
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `done`, failing with the service's log after [`PATIENCE`].
    pub fn until(&self, what: &str, mut done: impl FnMut() -> bool) {
        let end = Instant::now() + PATIENCE;
        while !done() {
            assert!(Instant::now() < end, "timed out waiting until {what}; edge-fleet log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A counter or gauge of the service's `/metrics`, 0 when absent.
    pub fn metric(&self, name: &str) -> f64 {
        let (_, text) = http_get(&self.listen, "/metrics").expect("edge-fleet answers /metrics");
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0.0)
    }

    /// Waits until the inventory lists `device`.
    pub fn knows(&self, device: &str) {
        self.until(&format!("the inventory lists {device}"), || {
            http_get(&self.listen, "/v1/devices").is_some_and(|(_, b)| b.contains(&format!("\"{device}\"")))
        });
    }

    /// SIGKILL: no chance to ack or disconnect.
    pub fn kill(mut self) -> String {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.log()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A distinct number per call, for log file names.
pub fn next_number() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// A plain HTTP/1.0 GET: status and body, `None` when nothing answers.
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let code = text.split(' ').nth(1)?.parse().ok()?;
    Some((code, text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()))
}

/// The `edgectl` binary of this build, built first if need be.
pub fn edgectl_exe() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| workspace_bin("edgectl", "edgectl")).clone()
}

/// The `edge-sim` binary of this build, built first if need be.
pub fn sim_exe() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| workspace_bin("edge-sim", "edge-sim")).clone()
}

/// The `edge-agent` binary of this build, built first if need be.
pub fn agent_exe() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| workspace_bin("edge-agent", "edge-agent")).clone()
}

/// Builds `bin` of `package` in this test's profile and returns its path: it belongs to
/// another package, so cargo does not hand its path to this test.
fn workspace_bin(package: &str, bin: &str) -> PathBuf {
    // target/<profile>/deps/<test>-<hash> -> target/<profile>
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
    let profile = profile_dir.file_name().unwrap().to_str().unwrap().to_string();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build.args(["build", "-p", package, "--bin", bin]);
    if profile != "debug" {
        build.args(["--profile", if profile == "release" { "release" } else { &profile }]);
    }
    let status = build.current_dir(env!("CARGO_MANIFEST_DIR")).status().unwrap();
    assert!(status.success(), "building {bin} failed");
    profile_dir.join(bin)
}

/// The operator's command-signing key in the tests.
pub fn operator_key() -> edge_proto::command::SigningKey {
    edge_proto::command::SigningKey::from_bytes(&[42; 32])
}

/// `ctl.toml` with the operator's certificate and signing key, and `[fleet] url` if given.
pub fn ctl_toml(s: &Setup, fleet_url: Option<&str>) -> PathBuf {
    let op = s.pki.client("operator").unwrap();
    let path = s.dir.path().join(if fleet_url.is_some() { "ctl.toml" } else { "ctl-nofleet.toml" });
    let key = s.dir.path().join("operator.key");
    std::fs::write(&key, edge_proto::command::hex(&operator_key().to_bytes())).unwrap();
    let mut text = format!(
        "signing_key = \"{}\"\n[mqtt]\nurl = \"{}\"\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        key.display(),
        s.broker.url(),
        s.pki.ca_pem().display(),
        op.cert.display(),
        op.key.display()
    );
    if let Some(url) = fleet_url {
        text.push_str(&format!("[fleet]\nurl = \"{url}\"\n"));
    }
    std::fs::write(&path, text).unwrap();
    path
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// `fleet.toml` for replica `name` of one service: the shared `base` with the share group, its
/// own client id, HTTP address and artifact directory (replicas share no files), in a file of
/// its own.
pub fn replica_toml(base: &Path, name: &str, listen: &str) -> PathBuf {
    let text = std::fs::read_to_string(base).unwrap();
    let (before, after) = text.split_once("[http]\nlisten = ").unwrap();
    let rest = after.split_once('\n').unwrap().1;
    let artifacts = base.with_file_name(format!("artifacts-{name}"));
    let (rest_before, rest_after) = rest.split_once("[artifacts]\ndir = ").unwrap();
    let rest_after = rest_after.split_once('\n').unwrap().1;
    let path = base.with_file_name(format!("fleet-{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "client_id = \"edge-fleet-{name}\"\nshare_group = \"edge-fleet\"\n{before}[http]\nlisten = \"{listen}\"\n\
             {rest_before}[artifacts]\ndir = \"{}\"\n{rest_after}",
            artifacts.display()
        ),
    )
    .unwrap();
    path
}
