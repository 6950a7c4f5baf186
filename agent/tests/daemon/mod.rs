//! The agent daemon as integration tests run it: a real `edge-agent run` process against a
//! real Mosquitto over mutual TLS (crate `edge-it`), with its HTTP endpoint on a free port.

#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use edge_it::{mqtt_options, unique_client_id, Broker, Pki};
use rumqttc::{AsyncClient, Event, EventLoop, Packet, QoS};

/// A running `edge-agent run`, killed on drop.
pub struct Agent {
    pub child: Child,
    pub http: String,
}

impl Agent {
    pub fn start(config: &Path, http: &str) -> Agent {
        Agent::start_with(config, http, &[])
    }

    pub fn start_with(config: &Path, http: &str, env: &[(&str, &str)]) -> Agent {
        let child = Command::new(env!("CARGO_BIN_EXE_edge-agent"))
            .args(["run", "--config", config.to_str().unwrap()])
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start edge-agent");
        Agent { child, http: http.to_string() }
    }

    pub fn kill9(&mut self) {
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        let _ = self.child.wait();
    }

    pub fn metrics(&self) -> String {
        http_get(&self.http, "/metrics").1
    }

    /// Stops the agent and returns its log.
    pub fn stop(mut self) -> String {
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        let mut log = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut log);
        }
        log
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::Write;
    let Ok(mut s) = std::net::TcpStream::connect(addr) else { return (0, String::new()) };
    let _ = write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let code = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (code, body)
}

/// POSTs `body` with `content_type`; returns the status code and the body.
pub fn http_post(addr: &str, path: &str, content_type: &str, body: &[u8]) -> (u16, Vec<u8>) {
    use std::io::Write;
    let Ok(mut s) = std::net::TcpStream::connect(addr) else { return (0, vec![]) };
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if s.write_all(head.as_bytes()).and_then(|_| s.write_all(body)).is_err() {
        return (0, vec![]);
    }
    let mut raw = vec![];
    let _ = s.read_to_end(&mut raw);
    let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else { return (0, vec![]) };
    let code = String::from_utf8_lossy(&raw[..split]).split_whitespace().nth(1).and_then(|c| c.parse().ok());
    (code.unwrap_or(0), raw[split + 4..].to_vec())
}

/// `promtool check metrics` (Debian's `prometheus` package; scripts/setup.sh installs it).
pub fn promtool_accepts(metrics: &str) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool not found: run scripts/setup.sh");
    child.stdin.take().unwrap().write_all(metrics.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n{metrics}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

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

/// Writes an agent config for `device` and returns its path and HTTP address.
pub fn agent_config(s: &Setup, device: &str, url: &str, ca: &Path, extra: &str) -> (PathBuf, String) {
    let files = s.pki.client(device).unwrap();
    let http = free_addr();
    let text = format!(
        "device_id = \"{device}\"\nstate_dir = \"{state}\"\n\
         [mqtt]\nurl = \"{url}\"\nca_file = \"{ca}\"\ncert_file = \"{cert}\"\nkey_file = \"{key}\"\n\
         keep_alive_secs = 5\nnetwork_timeout_secs = 5\nreconnect_max_secs = 2\n{extra}\n\
         [telemetry]\ninterval_secs = 1\n\
         [http]\nlisten = \"{http}\"\n",
        state = s.dir.path().join(format!("state-{device}")).display(),
        ca = ca.display(),
        cert = files.cert.display(),
        key = files.key.display(),
    );
    let path = s.dir.path().join(format!("{device}.toml"));
    std::fs::write(&path, text).unwrap();
    (path, http)
}

/// An operator subscribed to `filter`.
pub async fn operator(s: &Setup, filter: &str) -> (AsyncClient, EventLoop) {
    operator_session(s, filter, &unique_client_id("op"), true).await
}

/// An operator subscribed to `filter` as `client_id`; with `clean` false the broker keeps
/// its session (subscription and unacknowledged QoS 1 messages) across disconnects and
/// broker restarts, so a reconnect with the same id misses nothing.
pub async fn operator_session(s: &Setup, filter: &str, client_id: &str, clean: bool) -> (AsyncClient, EventLoop) {
    let tls = s.pki.client_config("operator").unwrap();
    let mut opts = mqtt_options(client_id, s.broker.port(), tls);
    opts.set_clean_session(clean);
    let (client, mut ev) = AsyncClient::new(opts, 64);
    loop {
        if let Event::Incoming(Packet::ConnAck(_)) = ev.poll().await.expect("operator connects") {
            break;
        }
    }
    client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    // A clean session is subscribed only once the broker says so: until the event loop is
    // polled the SUBSCRIBE has not even left, and what a test publishes next would reach a
    // broker with no subscriber. (Nothing is lost waiting: a clean session has no queue, and
    // Mosquitto sends SUBACK before any retained message. A resumed session may get its
    // queue before the SUBACK, so it is handed back as it is.)
    if clean {
        loop {
            if let Event::Incoming(Packet::SubAck(_)) = ev.poll().await.expect("operator subscribes") {
                break;
            }
        }
    }
    (client, ev)
}
