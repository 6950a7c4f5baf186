//! `api-limits-bench`: the local API's limits under load, against a real `edge-agent run`
//! (a release build) and a real Mosquitto. With the shipped `[http]` defaults plus a token
//! and a metrics listener, it opens IDLE sockets that never send a byte and, at the same
//! time, has REQUESTS clients each send one maximum-size JSON predict (`max_body_bytes` of
//! `0.5,` elements for hello_deepa, which takes 2,400: every body is read and parsed whole,
//! then refused with 400 for its shape), retrying after a 503 as `Retry-After` asks, until
//! every one is answered. It samples the agent's VmRSS every 20 ms and its `/metrics`
//! every 250 ms, and prints the peak RSS next to the bound and whether the MQTT link
//! stayed up throughout. See bench/RESULTS.md, "Local API limits".
//!
//! The bound: idle RSS + 2 x `max_queued_bytes` (bodies held at once, and as much again
//! for allocator slack: a freed body is not always returned to the system at once) +
//! 16 MiB (connection buffers and the blocking pool's threads).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use edge_it::{Broker, Pki};

const TOKEN: &str = "bench-token-0123456789abcdef0123456789";
const MIB: f64 = 1024.0 * 1024.0;

#[derive(Parser)]
#[command(about = "64 concurrent maximum-size requests and 1,000 idle sockets against a release agent")]
struct Args {
    /// The edge-agent binary (a release build).
    #[arg(long)]
    agent: PathBuf,
    /// The models directory (hello_deepa is served).
    #[arg(long, default_value = "models")]
    models: PathBuf,
    /// Concurrent maximum-size requests.
    #[arg(long, default_value_t = 64)]
    requests: usize,
    /// Idle sockets opened at the same time.
    #[arg(long, default_value_t = 1000)]
    idle: usize,
}

fn vm_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// One request on a fresh connection; the status, 0 if the connection closed unanswered.
fn call(addr: &str, path: &str, headers: &str, body: &[u8]) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect(addr) else { return (0, String::new()) };
    let _ = s.set_read_timeout(Some(Duration::from_secs(120)));
    let method = if body.is_empty() { "GET" } else { "POST" };
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{headers}Content-Length: {}\r\n\r\n",
        body.len()
    );
    let _ = s.write_all(head.as_bytes()).and_then(|_| s.write_all(body));
    let mut raw = vec![];
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).to_string();
    let code = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn main() -> Result<()> {
    let args = Args::parse();
    let work = tempfile::tempdir()?;
    let pki = Pki::generate(&work.path().join("pki"))?;
    let broker = Broker::start(&pki)?;
    let files = pki.client("bench-api")?;
    let free = || -> Result<String> { Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.to_string()) };
    let (api, metrics) = (free()?, free()?);
    let token = work.path().join("token");
    std::fs::write(&token, TOKEN)?;
    let model = std::fs::canonicalize(args.models.join("openwakeword-js__hello_deepa.onnx"))
        .context("hello_deepa not found: pass --models")?;
    let defaults = edge_agent::config::HttpConfig::default();
    let config = work.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "device_id = \"bench-api\"\nstate_dir = \"{state}\"\n\
             [mqtt]\nurl = \"{url}\"\nca_file = \"{ca}\"\ncert_file = \"{cert}\"\nkey_file = \"{key}\"\n\
             keep_alive_secs = 5\n\
             [telemetry]\ninterval_secs = 1\n\
             [http]\nlisten = \"{api}\"\nmetrics_listen = \"{metrics}\"\ntoken_file = \"{token}\"\n\
             [[models]]\nname = \"deepa\"\npath = \"{model}\"\n",
            state = work.path().join("state").display(),
            url = broker.url(),
            ca = pki.ca_pem().display(),
            cert = files.cert.display(),
            key = files.key.display(),
            token = token.display(),
            model = model.display(),
        ),
    )?;
    let mut child = std::process::Command::new(&args.agent)
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .spawn()
        .with_context(|| format!("starting {}", args.agent.display()))?;
    let pid = child.id();
    let result = run(&args, pid, &api, &metrics, &defaults);
    let _ = child.kill();
    let _ = child.wait();
    result
}

fn run(args: &Args, pid: u32, api: &str, metrics: &str, http: &edge_agent::config::HttpConfig) -> Result<()> {
    let end = Instant::now() + Duration::from_secs(60);
    while call(metrics, "/readyz", "", b"").0 != 200 {
        if Instant::now() > end {
            bail!("agent not ready in 60 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(3));
    let idle_rss = vm_rss(pid);
    let bound = idle_rss as f64 + 2.0 * http.max_queued_bytes as f64 + 16.0 * MIB;

    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(idle_rss));
    let sampler = {
        let (stop, peak) = (stop.clone(), peak.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(vm_rss(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    // The link as /metrics shows it: (scrapes, scrapes with the link down).
    let link = Arc::new(Mutex::new((0u32, 0u32)));
    let watcher = {
        let (stop, link, metrics) = (stop.clone(), link.clone(), metrics.to_string());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let (code, text) = call(&metrics, "/metrics", "", b"");
                let mut l = link.lock().unwrap();
                l.0 += 1;
                if code != 200 || metric(&text, "edge_agent_mqtt_connected") != 1.0 {
                    l.1 += 1;
                }
                drop(l);
                std::thread::sleep(Duration::from_millis(250));
            }
        })
    };

    let started = Instant::now();
    let idle: Vec<TcpStream> = (0..args.idle).filter_map(|_| TcpStream::connect(api).ok()).collect();
    let opened = idle.len();
    let mut body = String::with_capacity(http.max_body_bytes);
    body.push_str("{\"inputs\": [[");
    while body.len() + 4 + 6 <= http.max_body_bytes {
        body.push_str("0.5,");
    }
    body.push_str("0.5]]}");
    let body = Arc::new(body.into_bytes());
    let headers = format!("Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n");
    let clients: Vec<_> = (0..args.requests)
        .map(|_| {
            let (body, api, headers) = (body.clone(), api.to_string(), headers.clone());
            std::thread::spawn(move || {
                let end = Instant::now() + Duration::from_secs(600);
                let mut tries = 0u32;
                loop {
                    tries += 1;
                    let code = call(&api, "/v1/models/deepa:predict", &headers, &body).0;
                    if (code != 503 && code != 0) || Instant::now() > end {
                        return (code, tries);
                    }
                    std::thread::sleep(Duration::from_secs(1));
                }
            })
        })
        .collect();
    let answers: Vec<(u16, u32)> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let took = started.elapsed();
    let (_, text) = call(metrics, "/metrics", "", b"");
    drop(idle);
    stop.store(true, Ordering::Relaxed);
    let _ = (sampler.join(), watcher.join());

    let peak = peak.load(Ordering::Relaxed) as f64;
    let (scrapes, down) = *link.lock().unwrap();
    let mut codes = std::collections::BTreeMap::new();
    for (code, _) in &answers {
        *codes.entry(*code).or_insert(0) += 1;
    }
    let tries: u32 = answers.iter().map(|(_, t)| t).sum();
    let refused = |r: &str| metric(&text, &format!("edge_agent_http_refused_requests_total{{reason=\"{r}\"}}"));
    let reconnects = metric(&text, "edge_agent_mqtt_reconnects_total");
    let link_up = down == 0 && reconnects == 0.0 && metric(&text, "edge_agent_mqtt_connected") == 1.0;
    println!("| what | value |");
    println!("|---|---|");
    println!(
        "| [http] limits | max_body_bytes {}, max_queued_bytes {}, max_connections {}, header_timeout_secs {} |",
        http.max_body_bytes, http.max_queued_bytes, http.max_connections, http.header_timeout_secs
    );
    println!("| idle sockets opened | {opened} of {} |", args.idle);
    println!(
        "| maximum-size requests | {} x {:.1} MiB, answers {codes:?}, {tries} tries in all |",
        args.requests,
        body.len() as f64 / MIB
    );
    println!(
        "| refused (agent's count) | connections {}, busy (byte budget) {}, header_timeout {} |",
        refused("connections"),
        refused("busy"),
        refused("header_timeout")
    );
    println!("| agent RSS idle | {:.1} MiB |", idle_rss as f64 / MIB);
    println!("| agent RSS peak | {:.1} MiB |", peak / MIB);
    println!(
        "| bound (idle + 2 x max_queued_bytes + 16 MiB) | {:.1} MiB: {} |",
        bound / MIB,
        if peak < bound { "under" } else { "OVER" }
    );
    println!(
        "| MQTT link | {} ({scrapes} scrapes, {down} with the link down, {reconnects} reconnects) |",
        if link_up { "up throughout" } else { "WENT DOWN" }
    );
    println!("| wall time (informational) | {:.1} s |", took.as_secs_f64());
    if peak >= bound || !link_up || codes.keys().any(|c| *c != 400) {
        bail!("the limits did not hold");
    }
    Ok(())
}
