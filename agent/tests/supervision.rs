//! How `edge-agent run` ends, as systemd sees it: the exit code and the sd_notify messages
//! of the real binary. A failed component must exit non-zero (70), after the same orderly
//! shutdown as SIGTERM, so that `Restart=on-failure` starts it again; a SIGTERM exits 0.
//!
//! No component fails on anything reachable from outside the process, so the failure is
//! injected (`EDGE_AGENT_FAULT`, documented in `edge_agent::supervisor`).

use std::io::Read;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use edge_it::Pki;

/// A config for a device whose broker is not there (the link keeps retrying, which is not
/// a failure), with its HTTP endpoint on a free port.
fn config(dir: &Path) -> PathBuf {
    let pki = Pki::generate(&dir.join("pki")).unwrap();
    let files = pki.client("dev-sup").unwrap();
    let free = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let text = format!(
        "device_id = \"dev-sup\"\nstate_dir = \"{state}\"\n\
         [mqtt]\nurl = \"mqtts://{broker}\"\nca_file = \"{ca}\"\ncert_file = \"{cert}\"\nkey_file = \"{key}\"\n\
         reconnect_max_secs = 2\n[telemetry]\ninterval_secs = 1\n[http]\nlisten = \"{http}\"\n",
        state = dir.join("state").display(),
        broker = free(),
        ca = pki.ca_pem().display(),
        cert = files.cert.display(),
        key = files.key.display(),
        http = free(),
    );
    let path = dir.join("edge-agent.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `edge-agent run` with `NOTIFY_SOCKET` bound in `dir`, and `env`.
fn start(dir: &Path, config: &Path, env: &[(&str, &str)]) -> (Child, UnixDatagram) {
    static STARTS: AtomicUsize = AtomicUsize::new(0);
    let socket_path = dir.join(format!("notify-{}.sock", STARTS.fetch_add(1, Ordering::Relaxed)));
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_edge-agent"))
        .args(["run", "--config", config.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .env_remove("EDGE_AGENT_FAULT")
        .env("NOTIFY_SOCKET", &socket_path)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start edge-agent");
    (child, socket)
}

/// The sd_notify messages until `last` (or until none arrives for 30 s).
fn messages_until(socket: &UnixDatagram, last: &str) -> Vec<String> {
    let mut seen = vec![];
    let mut buf = [0u8; 256];
    while let Ok(n) = socket.recv(&mut buf) {
        seen.push(String::from_utf8_lossy(&buf[..n]).to_string());
        if seen.last().map(String::as_str) == Some(last) {
            break;
        }
    }
    seen
}

/// Waits for the agent to exit on its own (killing it after 60 s, so that a hang fails the
/// test instead of blocking it) and returns its status and log.
fn exit_of(mut child: Child) -> (ExitStatus, String) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut log = String::new();
    child.stderr.take().unwrap().read_to_string(&mut log).unwrap();
    (status, log)
}

#[test]
fn a_failed_or_panicked_component_exits_70_after_an_orderly_shutdown() {
    // Before: supervise cancelled everything and run() returned Ok(Shutdown), so the agent
    // exited 0 and Restart=on-failure never restarted it.
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    for (fault, component, reason) in [
        ("telemetry:error", "telemetry", "injected fault (EDGE_AGENT_FAULT=telemetry:error)"),
        ("http:panic", "http", "panicked: injected fault (EDGE_AGENT_FAULT=http:panic)"),
    ] {
        let (child, socket) = start(dir.path(), &config, &[("EDGE_AGENT_FAULT", fault)]);
        let seen = messages_until(&socket, "STOPPING=1");
        let (status, log) = exit_of(child);
        assert_eq!(status.code(), Some(70), "{fault}: {log}");
        // The shutdown was the orderly one: started, then the sd_notify component drained.
        assert!(seen.iter().any(|m| m == "READY=1"), "{fault}: {seen:?}");
        assert_eq!(seen.last().map(String::as_str), Some("STOPPING=1"), "{fault}: {seen:?}");
        assert!(log.contains("edge-agent stopped"), "{fault}: {log}");
        let last = log.trim_end().lines().last().unwrap_or_default();
        assert!(last.starts_with(&format!("edge-agent: component {component} failed: {reason};")), "{fault}: {last}");
    }
}

#[test]
fn sigterm_exits_0_and_models_load_under_an_extended_start_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let (child, socket) = start(dir.path(), &config, &[]);
    let started = messages_until(&socket, "READY=1");
    // EXTEND_TIMEOUT_USEC comes before READY=1: systemd's start timeout covers model loading.
    let extend = started.iter().position(|m| m.starts_with("EXTEND_TIMEOUT_USEC="));
    let ready = started.iter().position(|m| m == "READY=1");
    assert!(matches!((extend, ready), (Some(e), Some(r)) if e < r), "{started:?}");
    let usec: u64 = started[extend.unwrap()]["EXTEND_TIMEOUT_USEC=".len()..].parse().unwrap();
    assert!(usec >= 90_000_000, "no shorter than systemd's default start timeout: {usec}");
    // SAFETY: signalling our own child by pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let stopping = messages_until(&socket, "STOPPING=1");
    let (status, log) = exit_of(child);
    assert_eq!(status.code(), Some(0), "{log}");
    assert_eq!(stopping.last().map(String::as_str), Some("STOPPING=1"), "{stopping:?}");
}

#[test]
fn run_with_an_invalid_configuration_exits_2_which_systemd_does_not_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let text = std::fs::read_to_string(&config).unwrap().replace("interval_secs = 1", "intervall_secs = 1");
    std::fs::write(&config, text).unwrap();
    let (child, _socket) = start(dir.path(), &config, &[]);
    let (status, log) = exit_of(child);
    assert_eq!(status.code(), Some(2), "{log}");
    assert_eq!(log.trim_end().lines().count(), 1, "one line: {log}");
    assert!(log.contains("intervall_secs"), "{log}");
}
