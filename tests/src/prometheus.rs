//! A real Prometheus for the tests: Debian's `prometheus` binary (scripts/setup.sh installs
//! the package for `promtool`) on a free loopback port, its TSDB and configuration in a
//! temporary directory, with the remote-write receiver on and an out-of-order window, so
//! that samples written late at their original times are accepted as in production.
//!
//! It scrapes nothing: the tests write into it through remote write and read it back over
//! the HTTP API ([`Prometheus::query`], [`Prometheus::samples`]). [`Prometheus::stop`] and
//! [`Prometheus::restart`] (same port, same data) simulate an outage; killed on drop.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// How long [`Prometheus::start`] waits for `/-/ready`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The out-of-order window the test server accepts samples in.
pub const OUT_OF_ORDER_WINDOW: &str = "1h";

/// One series read back: its labels and its raw samples (milliseconds, value), oldest first.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesSamples {
    /// Label names and values, `__name__` included.
    pub labels: BTreeMap<String, String>,
    /// (timestamp in milliseconds, value)
    pub samples: Vec<(i64, f64)>,
}

/// A running Prometheus.
#[derive(Debug)]
pub struct Prometheus {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl Prometheus {
    /// Writes the configuration, starts Prometheus on a free port and waits until it is
    /// ready, retrying on a new port a few times if the chosen one is taken meanwhile.
    pub fn start() -> Result<Prometheus> {
        let dir = tempfile::Builder::new().prefix("edge-it-prometheus-").tempdir().context("prometheus: temp dir")?;
        std::fs::write(
            dir.path().join("prometheus.yml"),
            format!(
                "# Written by edge-it: no scraping, remote write in, late samples accepted.\n\
                 global:\n  scrape_interval: 1m\nstorage:\n  tsdb:\n    out_of_order_time_window: {OUT_OF_ORDER_WINDOW}\n"
            ),
        )
        .context("prometheus: writing prometheus.yml")?;
        let mut p = Prometheus { dir, port: 0, child: None };
        let mut last = None;
        for _ in 0..5 {
            p.port = crate::free_port()?;
            match p.spawn() {
                Ok(()) => return Ok(p),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("prometheus: did not start")))
    }

    /// `http://127.0.0.1:PORT/api/v1/write`, for `[prometheus] remote_write_url`.
    pub fn remote_write_url(&self) -> String {
        format!("http://127.0.0.1:{}/api/v1/write", self.port)
    }

    /// The loopback port (kept across [`Prometheus::restart`]).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Prometheus's log so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Stops it (SIGTERM, then SIGKILL after 10 s), waiting until it has exited.
    pub fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else { return Ok(()) };
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let end = Instant::now() + Duration::from_secs(10);
        while child.try_wait().context("prometheus: waiting for exit")?.is_none() {
            if Instant::now() > end {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Starts it again on the same port with the same data.
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.spawn()
    }

    /// An instant query: the `data` object of the answer (`resultType`, `result`).
    pub fn query(&self, expr: &str) -> Result<serde_json::Value> {
        self.api(&format!("/api/v1/query?query={}", percent_encode(expr)))
    }

    /// Every raw sample of the series `selector` matches within the last `window` (a
    /// PromQL duration such as `2h`), read through a range-vector query.
    pub fn samples(&self, selector: &str, window: &str) -> Result<Vec<SeriesSamples>> {
        let data = self.query(&format!("{selector}[{window}]"))?;
        let result = data["result"].as_array().context("prometheus: no result array")?;
        result
            .iter()
            .map(|s| {
                let labels = s["metric"]
                    .as_object()
                    .context("prometheus: series without labels")?
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect();
                let samples = s["values"]
                    .as_array()
                    .context("prometheus: series without values")?
                    .iter()
                    .map(|pair| {
                        let t = pair[0].as_f64().context("prometheus: sample time")?;
                        let v: f64 = pair[1].as_str().context("prometheus: sample value")?.parse()?;
                        Ok(((t * 1000.0).round() as i64, v))
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok(SeriesSamples { labels, samples })
            })
            .collect()
    }

    /// GETs an API path and returns its `data`, failing on an error answer.
    fn api(&self, path: &str) -> Result<serde_json::Value> {
        let (code, body) = self.get(path)?;
        let v: serde_json::Value =
            serde_json::from_str(&body).with_context(|| format!("prometheus: {path}: HTTP {code}: {body}"))?;
        if v["status"] != "success" {
            bail!("prometheus: {path}: HTTP {code}: {body}");
        }
        Ok(v["data"].clone())
    }

    /// A plain HTTP/1.0 GET: status and body.
    fn get(&self, path: &str) -> Result<(u16, String)> {
        let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).context("prometheus: connect")?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{}\r\n\r\n", self.port)?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        let code = text.split(' ').nth(1).and_then(|c| c.parse().ok()).context("prometheus: no HTTP status")?;
        Ok((code, text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()))
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("prometheus.log")
    }

    fn spawn(&mut self) -> Result<()> {
        let bin = ["/usr/bin/prometheus", "/usr/local/bin/prometheus"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .context(
                "prometheus: no /usr/bin/prometheus; run scripts/setup.sh (it installs Debian's prometheus package)",
            )?;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path())?;
        let child = Command::new(bin)
            .current_dir(self.dir.path())
            .arg("--config.file=prometheus.yml")
            .arg("--storage.tsdb.path=data")
            .arg(format!("--web.listen-address=127.0.0.1:{}", self.port))
            .arg("--web.enable-remote-write-receiver")
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("prometheus: spawn")?;
        self.child = Some(child);
        let end = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok((200, _)) = self.get("/-/ready") {
                return Ok(());
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                self.child = None;
                bail!("prometheus exited ({status}) before it was ready:\n{}", self.log());
            }
            if Instant::now() > end {
                bail!("prometheus: not ready within {READY_TIMEOUT:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Percent-encodes everything but unreserved characters, for a query string.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
