//! The local API's guards against a real `edge-agent run` over real sockets: the bearer
//! token, `/metrics` on its own listener, bodies too large, too slow or claiming too much,
//! connections beyond the limit, and, while all of that happens, the agent's RSS (VmRSS)
//! under a stated bound and its MQTT link up.

mod daemon;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use daemon::{agent_config, free_addr, setup, Agent, Setup};

const TOKEN: &str = "0123456789abcdef0123456789abcdef";
const DEEPA: &str = "openwakeword-js__hello_deepa.onnx";

fn models_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models")
}

/// An agent serving hello_deepa (input f32 [1, 25, 96]) with a token, `/metrics` on a
/// second listener, and `http` added to its `[http]` table.
struct Fixture {
    _s: Setup,
    agent: Agent,
    api: String,
    metrics: String,
}

impl Fixture {
    fn start(device: &str, http: &str) -> Fixture {
        let s = setup();
        let (config, api) = agent_config(&s, device, &s.broker.url(), s.pki.ca_pem(), "");
        let token = s.dir.path().join("api-token");
        std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
        let metrics = free_addr();
        let mut text = std::fs::read_to_string(&config).unwrap();
        text.push_str(&format!(
            "token_file = \"{}\"\nmetrics_listen = \"{metrics}\"\n{http}\n\
             [[models]]\nname = \"deepa\"\npath = \"{}\"\n",
            token.display(),
            models_dir().join(DEEPA).display()
        ));
        std::fs::write(&config, text).unwrap();
        let agent = Agent::start(&config, &api);
        let end = Instant::now() + Duration::from_secs(60);
        while call(&metrics, "GET", "/readyz", &[], b"").0 != 200 {
            assert!(Instant::now() < end, "agent not ready in 60 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        Fixture { _s: s, agent, api, metrics }
    }

    fn pid(&self) -> u32 {
        self.agent.child.id()
    }

    fn metric(&self, name: &str) -> f64 {
        let text = call(&self.metrics, "GET", "/metrics", &[], b"").2;
        let text = String::from_utf8_lossy(&text).to_string();
        text.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    fn refused(&self, reason: &str) -> f64 {
        self.metric(&format!("edge_agent_http_refused_requests_total{{reason=\"{reason}\"}}"))
    }

    /// The link is up and never went down.
    fn assert_link_up(&self) {
        assert_eq!(self.metric("edge_agent_mqtt_connected"), 1.0, "MQTT link down");
        assert_eq!(self.metric("edge_agent_mqtt_reconnects_total"), 0.0, "MQTT link reconnected");
    }
}

/// One request on a fresh connection: status, head (lowercased), body. 0 if the connection
/// was closed without an answer.
fn call(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String, Vec<u8>) {
    let Ok(mut s) = TcpStream::connect(addr) else { return (0, String::new(), vec![]) };
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let _ = s.write_all(head.as_bytes()).and_then(|_| s.write_all(body));
    read_response(&mut s)
}

fn read_response(s: &mut TcpStream) -> (u16, String, Vec<u8>) {
    let mut raw = vec![];
    let _ = s.read_to_end(&mut raw);
    let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else { return (0, String::new(), raw) };
    let head = String::from_utf8_lossy(&raw[..split]).to_lowercase();
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, head, raw[split + 4..].to_vec())
}

fn bearer() -> (&'static str, String) {
    ("Authorization", format!("Bearer {TOKEN}"))
}

/// A valid predict body for hello_deepa.
fn predict_body() -> Vec<u8> {
    let row: Vec<f32> = vec![0.25; 96];
    serde_json::json!({ "inputs": [vec![row; 25]] }).to_string().into_bytes()
}

fn vm_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Samples the agent's VmRSS every 20 ms until dropped; `peak()` is the highest seen.
struct RssWatch {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl RssWatch {
    fn start(pid: u32) -> RssWatch {
        let peak = Arc::new(AtomicU64::new(vm_rss_kib(pid)));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, st) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                p.fetch_max(vm_rss_kib(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        RssWatch { peak, stop }
    }

    fn peak_mib(&self) -> f64 {
        self.peak.load(Ordering::Relaxed) as f64 / 1024.0
    }
}

impl Drop for RssWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[test]
fn a_token_protected_api_refuses_requests_without_the_token() {
    let f = Fixture::start("api-token", "");
    let body = predict_body();
    let json = ("Content-Type", "application/json".to_string());

    // Without a token: 401, a Bearer challenge, and a message saying what to send.
    let (code, head, text) = call(&f.api, "POST", "/v1/models/deepa:predict", &[(json.0, &json.1)], &body);
    assert_eq!(code, 401, "{head}");
    assert!(head.contains("www-authenticate: bearer\r\n") || head.ends_with("www-authenticate: bearer"), "{head}");
    let text = String::from_utf8_lossy(&text);
    assert!(text.contains("Authorization: Bearer") && text.contains("token_file"), "{text}");
    // A wrong token: invalid_token.
    let wrong = ("Authorization", "Bearer 0123456789abcdef0123456789abcdeX".to_string());
    let (code, head, _) = call(&f.api, "GET", "/v1/models", &[(wrong.0, &wrong.1)], b"");
    assert_eq!(code, 401);
    assert!(head.contains("invalid_token"), "{head}");
    for path in ["/v1/models", "/v1/models/deepa", "/v2", "/v2/models/deepa", "/v1/models/deepa/metadata"] {
        assert_eq!(call(&f.api, "GET", path, &[], b"").0, 401, "{path}");
    }
    // With the token, served.
    let (b, token) = bearer();
    let (code, _, out) = call(&f.api, "POST", "/v1/models/deepa:predict", &[(b, &token), (json.0, &json.1)], &body);
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&out));
    assert_eq!(call(&f.api, "GET", "/v2/models/deepa", &[(b, &token)], b"").0, 200);

    // Probes need no token, on both listeners.
    for path in ["/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"] {
        assert_eq!(call(&f.api, "GET", path, &[], b"").0, 200, "{path}");
    }
    // /metrics moved to metrics_listen: open there, absent from the API listener.
    assert_eq!(call(&f.metrics, "GET", "/metrics", &[], b"").0, 200);
    assert_eq!(call(&f.metrics, "GET", "/healthz", &[], b"").0, 200);
    assert_eq!(call(&f.api, "GET", "/metrics", &[(b, &token)], b"").0, 404);
    // The metrics listener serves nothing else.
    assert_eq!(call(&f.metrics, "GET", "/v1/models", &[(b, &token)], b"").0, 404);
    assert!(f.refused("unauthorized") >= 7.0);
    f.assert_link_up();
}

#[test]
fn an_oversized_body_is_refused_before_it_is_read() {
    let f = Fixture::start("api-big", "max_body_bytes = 1048576\nmax_queued_bytes = 2097152");
    let (b, token) = bearer();
    // Headers only: a 1 GiB body is announced and never sent. The answer comes anyway.
    for expect in [false, true] {
        let mut s = TcpStream::connect(&f.api).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let continue_ = if expect { "Expect: 100-continue\r\n" } else { "" };
        write!(
            s,
            "POST /v1/models/deepa:predict HTTP/1.1\r\nHost: x\r\n{b}: {token}\r\nContent-Type: application/json\r\n\
             {continue_}Content-Length: 1073741824\r\n\r\n{{\"inputs\": ["
        )
        .unwrap();
        let (code, head, text) = read_response(&mut s);
        assert_eq!(code, 413, "{head}");
        assert!(String::from_utf8_lossy(&text).contains("max_body_bytes = 1048576"));
        assert!(head.contains("connection: close"), "{head}");
    }
    // Two bodies of the largest size fill the budget; a third request would pass it: 503
    // and Retry-After, before its body is read.
    let held: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut s = TcpStream::connect(&f.api).unwrap();
            write!(
                s,
                "POST /v1/models/deepa:predict HTTP/1.1\r\nHost: x\r\n{b}: {token}\r\nContent-Length: 1048576\r\n\r\n["
            )
            .unwrap();
            s
        })
        .collect();
    let end = Instant::now() + Duration::from_secs(30);
    while f.metric("edge_agent_http_queued_bytes") < 2_097_152.0 {
        assert!(Instant::now() < end, "bodies not charged");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (code, head, text) = call(&f.api, "POST", "/v1/models/deepa:predict", &[(b, &token)], b"{}");
    assert_eq!(code, 503, "{head}");
    assert!(head.contains("retry-after: 1"), "{head}");
    assert!(String::from_utf8_lossy(&text).contains("max_queued_bytes"));
    drop(held);
    // Once they are gone, the budget is free again.
    let end = Instant::now() + Duration::from_secs(30);
    while f.metric("edge_agent_http_queued_bytes") > 0.0 {
        assert!(Instant::now() < end, "budget not given back");
        std::thread::sleep(Duration::from_millis(50));
    }
    let json = ("Content-Type", "application/json".to_string());
    assert_eq!(
        call(&f.api, "POST", "/v1/models/deepa:predict", &[(b, &token), (json.0, &json.1)], &predict_body()).0,
        200
    );
    assert!(f.refused("too_large") >= 2.0 && f.refused("busy") >= 1.0);
    f.assert_link_up();
}

/// Sends `byte` once a second (at most 60 times) until the agent answers or closes the
/// connection; returns what it said (`Some((0, ..))` for a close without an answer), or
/// `None` if it kept listening.
fn trickle(s: &mut TcpStream, byte: u8) -> Option<(u16, String, Vec<u8>)> {
    s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    for _ in 0..60 {
        if s.write_all(&[byte]).is_err() {
            return Some((0, String::new(), vec![]));
        }
        let mut first = [0u8; 1];
        match s.read(&mut first) {
            Ok(0) => return Some((0, String::new(), vec![])),
            Ok(_) => {
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                let (_, head, body) = read_response(s);
                let head = format!("{}{head}", first[0] as char);
                let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
                return Some((code, head, body));
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return Some((0, String::new(), vec![])),
        }
    }
    None
}

#[test]
fn a_slowloris_is_cut_off_by_the_header_and_body_timeouts() {
    let f = Fixture::start("api-slow", "header_timeout_secs = 2\nbody_timeout_secs = 3");
    let (b, token) = bearer();
    // Headers at one byte a second (a header line that never ends): closed, no answer.
    let api = f.api.clone();
    let headers = std::thread::spawn(move || {
        let mut s = TcpStream::connect(&api).unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ").unwrap();
        trickle(&mut s, b'a')
    });
    // A body at one byte a second: 408.
    let api = f.api.clone();
    let body = std::thread::spawn(move || {
        let mut s = TcpStream::connect(&api).unwrap();
        write!(s, "POST /v1/models/deepa:predict HTTP/1.1\r\nHost: x\r\n{b}: {token}\r\nContent-Length: 1000\r\n\r\n")
            .unwrap();
        trickle(&mut s, b'0')
    });
    let headers_closed = headers.join().unwrap().is_some();
    let body_answer = body.join().unwrap();
    assert!(headers_closed, "a client sending its headers at 1 byte/s kept its connection for 60 s");
    let (code, _, text) = body_answer.expect("a client sending its body at 1 byte/s was not cut off in 60 s");
    assert_eq!(code, 408, "{}", String::from_utf8_lossy(&text));
    assert!(String::from_utf8_lossy(&text).contains("body_timeout_secs"));
    assert!(f.refused("header_timeout") >= 1.0 && f.refused("body_timeout") >= 1.0);
    assert_eq!(f.metric("edge_agent_http_queued_bytes"), 0.0);
    f.assert_link_up();
}

#[test]
fn connections_beyond_max_connections_are_answered_503() {
    let f = Fixture::start("api-conns", "max_connections = 8\nheader_timeout_secs = 120");
    let idle: Vec<TcpStream> = (0..8).map(|_| TcpStream::connect(&f.api).unwrap()).collect();
    let end = Instant::now() + Duration::from_secs(30);
    while f.metric("edge_agent_http_connections") < 8.0 {
        assert!(Instant::now() < end, "idle connections not counted");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (code, head, text) = call(&f.api, "GET", "/healthz", &[], b"");
    assert_eq!(code, 503, "{head}");
    assert!(head.contains("retry-after: 1") && head.contains("connection: close"), "{head}");
    assert!(String::from_utf8_lossy(&text).contains("max_connections"));
    // The metrics listener has its own connections: probes and scrapes still get through.
    assert_eq!(call(&f.metrics, "GET", "/healthz", &[], b"").0, 200);
    assert!(f.refused("connections") >= 1.0);
    drop(idle);
    let end = Instant::now() + Duration::from_secs(30);
    while call(&f.api, "GET", "/healthz", &[], b"").0 != 200 {
        assert!(Instant::now() < end, "connections not freed");
        std::thread::sleep(Duration::from_millis(100));
    }
    f.assert_link_up();
}

#[test]
fn bodies_claiming_huge_element_counts_are_refused_cheaply() {
    let f = Fixture::start("api-claims", "");
    let watch = RssWatch::start(f.pid());
    let idle_mib = vm_rss_kib(f.pid()) as f64 / 1024.0;
    let (b, token) = bearer();
    let json = ("Content-Type", "application/json".to_string());
    let auth_json = [(b, token.as_str()), (json.0, json.1.as_str())];

    // OIP: a shape of 10^9 x 25 x 96 beside three elements.
    let claim = serde_json::json!({ "inputs": [{
        "name": "onnx::Flatten_0", "shape": [1_000_000_000u64, 25, 96], "datatype": "FP32", "data": [1, 2, 3]
    }]});
    let (code, _, text) = call(&f.api, "POST", "/v2/models/deepa/infer", &auth_json, claim.to_string().as_bytes());
    assert_eq!(code, 400, "{}", String::from_utf8_lossy(&text));
    // An .npy header claiming 10^9 elements over 12 bytes of data.
    let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000, 25, 96), }";
    let mut npy = b"\x93NUMPY\x01\x00".to_vec();
    npy.extend((header.len() as u16).to_le_bytes());
    npy.extend(header.as_bytes());
    npy.extend([0u8; 12]);
    let ct = ("Content-Type", "application/x-npy");
    let (code, _, text) = call(&f.api, "POST", "/v1/models/deepa:predict", &[(b, &token), ct], &npy);
    assert_eq!(code, 400, "{}", String::from_utf8_lossy(&text));
    assert!(String::from_utf8_lossy(&text).contains("needs"), "{}", String::from_utf8_lossy(&text));
    // Arrays nested 100,000 deep.
    let deep = format!("{{\"inputs\": {}{}}}", "[".repeat(100_000), "]".repeat(100_000));
    let (code, _, text) = call(&f.api, "POST", "/v1/models/deepa:predict", &auth_json, deep.as_bytes());
    assert_eq!(code, 400, "{}", String::from_utf8_lossy(&text));
    // 4 million elements where the model takes 2,400: walked, refused for the shape, not kept.
    let mut many = String::with_capacity(9 << 20);
    many.push_str("{\"inputs\": [[");
    for i in 0..4_000_000 {
        many.push_str(if i == 0 { "0" } else { ",0" });
    }
    many.push_str("]]}");
    let (code, _, text) = call(&f.api, "POST", "/v1/models/deepa:predict", &auth_json, many.as_bytes());
    assert_eq!(code, 400, "{}", String::from_utf8_lossy(&text));
    assert!(String::from_utf8_lossy(&text).contains("found shape [1, 4000000] (rank 2), expected rank 3"));

    // The body (8 MB) is the cost; its 4 million elements (16 MB as f32) were never stored.
    let bound = idle_mib + 32.0;
    eprintln!("idle RSS {idle_mib:.1} MiB, peak {:.1} MiB, bound {bound:.1} MiB", watch.peak_mib());
    assert!(watch.peak_mib() < bound, "peak RSS {:.1} MiB, bound {bound:.1} MiB", watch.peak_mib());
    f.assert_link_up();
}

#[test]
fn concurrent_maximum_size_requests_and_idle_sockets_leave_rss_bounded_and_the_link_up() {
    // 2 MiB bodies, at most 4 MiB of them held at once.
    let f = Fixture::start("api-load", "max_body_bytes = 2097152\nmax_queued_bytes = 4194304\nmax_connections = 64");
    let idle_mib = vm_rss_kib(f.pid()) as f64 / 1024.0;
    let watch = RssWatch::start(f.pid());
    // 300 idle sockets: 64 take every connection slot for a while, the rest are refused.
    let idle: Vec<TcpStream> = (0..300).filter_map(|_| TcpStream::connect(&f.api).ok()).collect();
    // 32 clients, each sending a maximum-size body (walked whole, refused for its shape)
    // until it is answered other than 503.
    let mut body = String::from("{\"inputs\": [[");
    while body.len() < 2_097_152 - 8 {
        body.push_str("0.5,");
    }
    body.push_str("0.5]]}");
    let body = Arc::new(body.into_bytes());
    let addr = f.api.clone();
    let workers: Vec<_> = (0..32)
        .map(|_| {
            let (body, addr) = (body.clone(), addr.clone());
            std::thread::spawn(move || {
                let (b, token) = bearer();
                let end = Instant::now() + Duration::from_secs(120);
                loop {
                    let code = call(
                        &addr,
                        "POST",
                        "/v1/models/deepa:predict",
                        &[(b, &token), ("Content-Type", "application/json")],
                        &body,
                    )
                    .0;
                    if code != 503 && code != 0 || Instant::now() > end {
                        return code;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            })
        })
        .collect();
    let codes: Vec<u16> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    drop(idle);
    assert!(codes.iter().all(|c| *c == 400), "{codes:?}");
    // Bodies held at once: 4 MiB; each is walked without keeping its 500,000 elements.
    let bound = idle_mib + 32.0;
    eprintln!("idle RSS {idle_mib:.1} MiB, peak {:.1} MiB, bound {bound:.1} MiB", watch.peak_mib());
    assert!(watch.peak_mib() < bound, "peak RSS {:.1} MiB, bound {bound:.1} MiB", watch.peak_mib());
    assert!(f.refused("connections") >= 1.0);
    f.assert_link_up();
}
