//! What the benchmark commands share: a real `edge-agent run` process behind the bench's
//! broker, and the operator's MQTT settings to deploy to it.

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use edge_it::{Broker, Pki};
use edge_mqtt::MqttConfig;
use edge_proto::command::{hex, SigningKey};

/// Largest MQTT packet of the bench's sessions: a 1 MiB chunk and its envelope.
pub const MAX_PACKET: usize = 1_100_000;

/// The operator's connection settings (certificate CN `operator`).
pub fn operator_mqtt(pki: &Pki, broker: &Broker) -> Result<MqttConfig> {
    let files = pki.client("operator")?;
    Ok(MqttConfig {
        url: broker.url(),
        ca_file: pki.ca_pem().to_path_buf(),
        cert_file: files.cert,
        key_file: files.key,
        topic_prefix: "edge".into(),
        allow_insecure: false,
        max_packet_bytes: MAX_PACKET,
        network_timeout_secs: 10,
        keep_alive_secs: 10,
        reconnect_max_secs: 1,
    })
}

/// `edge-agent run` as `device`, with its own certificate and state under `work`, trusting
/// `key`, a one-second health window and a two-second stall; killed on drop.
pub struct AgentProcess {
    child: Child,
    /// Its process id, to sample its memory.
    pub pid: u32,
    /// Its local API, `127.0.0.1:PORT`.
    pub http: String,
}

impl AgentProcess {
    /// Starts it and waits until `/readyz` answers 200 (at most 30 s).
    pub async fn start(
        exe: &Path,
        work: &Path,
        pki: &Pki,
        broker: &Broker,
        device: &str,
        key: &SigningKey,
    ) -> Result<AgentProcess> {
        let files = pki.client(device)?;
        let http = {
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            l.local_addr()?.to_string()
        };
        let config = work.join(format!("{device}.toml"));
        std::fs::write(
            &config,
            format!(
                "device_id = \"{device}\"\nstate_dir = \"{state}\"\n\
                 [mqtt]\nurl = \"{url}\"\nca_file = \"{ca}\"\ncert_file = \"{cert}\"\nkey_file = \"{key}\"\nmax_packet_bytes = {MAX_PACKET}\n\
                 [telemetry]\ninterval_secs = 60\n[http]\nlisten = \"{http}\"\n\
                 [ota]\ntrusted_keys = [\"{pubkey}\"]\nhealth_window_secs = 1\nstall_secs = 2\n",
                state = work.join(format!("state-{device}")).display(),
                url = broker.url(),
                ca = pki.ca_pem().display(),
                cert = files.cert.display(),
                key = files.key.display(),
                pubkey = hex(key.verifying_key().as_bytes()),
            ),
        )?;
        let child = std::process::Command::new(exe)
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn")
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        let agent = AgentProcess { pid: child.id(), child, http };
        let end = Instant::now() + Duration::from_secs(30);
        while !agent.ready() {
            if Instant::now() > end {
                bail!("agent {device} not ready in 30 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Let it subscribe before anything is published to it.
        tokio::time::sleep(Duration::from_millis(500)).await;
        Ok(agent)
    }

    fn ready(&self) -> bool {
        std::net::TcpStream::connect(&self.http)
            .and_then(|mut s| {
                use std::io::{Read, Write};
                write!(s, "GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
                let mut b = String::new();
                s.read_to_string(&mut b)?;
                Ok(b.starts_with("HTTP/1.1 200"))
            })
            .unwrap_or(false)
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
