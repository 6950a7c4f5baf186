//! The `edge-fleet` process the bench drives: configured for the bench's broker, database
//! and Prometheus, started, waited for, read over its HTTP API, killed on drop.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use edge_it::{Broker, Pki, Prometheus};

use crate::bench::Options;

pub struct FleetProcess {
    child: Child,
    pub listen: String,
    log: PathBuf,
}

impl Drop for FleetProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl FleetProcess {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
    pub fn get(&self, path: &str) -> Result<String> {
        let (code, body) = http_get(&self.listen, path)?;
        ensure!(code == 200, "edge-fleet GET {path}: HTTP {code}: {body}");
        Ok(body)
    }
    pub fn metric(&self, name: &str) -> f64 {
        self.get("/metrics")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
                    .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            })
            .unwrap_or(0.0)
    }
    /// Devices online in the inventory: the gauge on /metrics (two COUNTs), not
    /// /v1/devices, whose listing of a thousand devices would load the service under test.
    pub fn online(&self) -> Result<usize> {
        self.get("/metrics")?;
        Ok(self.metric("edge_fleet_devices_online") as usize)
    }
    /// Telemetry messages the inventory has stored.
    pub fn ingested_telemetry(&self) -> u64 {
        self.metric("edge_fleet_messages_ingested_total{kind=\"telemetry\"}") as u64
    }
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

/// A plain HTTP/1.0 GET: status and body.
pub fn http_get(addr: &str, path: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let code = text.split(' ').nth(1).and_then(|c| c.parse().ok()).context("no HTTP status")?;
    Ok((code, text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()))
}

pub fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> Result<bool>) -> Result<()> {
    let end = Instant::now() + timeout;
    while !done()? {
        ensure!(Instant::now() < end, "timed out after {timeout:?} waiting until {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
    Ok(())
}

pub fn free_addr() -> Result<String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.to_string())
}

/// Writes `fleet.toml` in `dir` and starts `edge-fleet run`, its log in `dir`; returns once
/// it answers `/healthz` (at most 60 s).
pub fn start_fleet(
    opts: &Options,
    dir: &Path,
    pki: &Pki,
    broker: &Broker,
    database: &str,
    prometheus: &Prometheus,
) -> Result<FleetProcess> {
    let cert = pki.client("edge-fleet")?;
    let listen = free_addr()?;
    let config = dir.join("fleet.toml");
    std::fs::write(
        &config,
        format!(
            "[mqtt]\nurl = \"{}\"\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n\
             [database]\nurl = \"{database}\"\n[http]\nlisten = \"{listen}\"\n\
             [artifacts]\ndir = \"{}\"\n[prometheus]\nremote_write_url = \"{}\"\n",
            broker.url(),
            pki.ca_pem().display(),
            cert.cert.display(),
            cert.key.display(),
            dir.join("artifacts").display(),
            prometheus.remote_write_url(),
        ),
    )?;
    let log = dir.join("edge-fleet.log");
    let child = Command::new(&opts.fleet_bin)
        .args(["run", "--config"])
        .arg(&config)
        .env("EDGE_FLEET_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .with_context(|| format!("starting {}", opts.fleet_bin.display()))?;
    let fleet = FleetProcess { child, listen, log };
    wait_until("edge-fleet answers /healthz", Duration::from_secs(60), || {
        Ok(http_get(&fleet.listen, "/healthz").is_ok_and(|(c, _)| c == 200))
    })
    .with_context(|| format!("edge-fleet log:\n{}", fleet.log_tail()))?;
    Ok(fleet)
}
