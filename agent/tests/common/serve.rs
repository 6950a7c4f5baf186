//! The inference API on a free loopback port, and a minimal HTTP/1.1 client that shows
//! exactly what goes over the wire (headers included), for the serving tests.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use edge_agent::engine::{LoadOptions, Model};
use edge_agent::serving::{api, PoolSettings, Registry};
use edge_agent::stats::InferenceStats;
use serde_json::{json, Value};
use tract_core::internal::*;

use super::models_dir;

/// An API server on a free port, on its own runtime.
pub struct Server {
    pub addr: String,
    pub registry: Arc<Registry>,
    /// The counters behind `/metrics`, as the registry updates them.
    pub stats: Arc<InferenceStats>,
    _runtime: tokio::runtime::Runtime,
}

pub fn load(file: &str, options: LoadOptions) -> Arc<Model> {
    Arc::new(Model::load(&models_dir().join(file), &options).unwrap())
}

pub fn server(models: &[(&str, &str, Arc<Model>, PoolSettings)], max_body: usize) -> Server {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let stats = Arc::new(InferenceStats::default());
    let registry = Arc::new(Registry::new(stats.clone(), Duration::from_secs(20), Duration::from_secs(60)));
    for (name, version, model, settings) in models {
        registry.activate(name, version, model.clone(), *settings).unwrap();
    }
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let app = api::router(registry.clone(), max_body);
    runtime.spawn(async move { axum::serve(listener, app).await });
    Server { addr, registry, stats, _runtime: runtime }
}

/// Status, head (lowercased) and body of a response.
pub type Reply = (u16, String, Vec<u8>);

/// One request with exactly the given headers (plus Host, Content-Length and Connection).
pub fn request_with(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\nConnection: close\r\n\r\n", body.len()));
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = vec![];
    s.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("HTTP response head");
    let head = String::from_utf8_lossy(&raw[..split]).to_lowercase();
    let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (code, head, raw[split + 4..].to_vec())
}

/// One request with a Content-Type.
pub fn request(addr: &str, method: &str, path: &str, content_type: &str, body: &[u8]) -> Reply {
    request_with(addr, method, path, &[("Content-Type", content_type)], body)
}

pub fn post_json(addr: &str, path: &str, body: &Value) -> (u16, Value) {
    let (code, _, body) = request(addr, "POST", path, "application/json", body.to_string().as_bytes());
    (code, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

pub fn get_json(addr: &str, path: &str) -> (u16, Value) {
    let (code, _, body) = request_with(addr, "GET", path, &[], b"");
    (code, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// A response header's value (the head is lowercased).
pub fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':')).map(str::trim)
}

/// A tensor as nested JSON arrays.
pub fn to_json(t: &Tensor) -> Value {
    let v = t.cast_to::<f64>().unwrap();
    let v = v.to_plain_array_view::<f64>().unwrap();
    fn rec(a: &tract_ndarray::ArrayViewD<f64>, dt: DatumType) -> Value {
        if a.ndim() == 0 {
            let x = *a.first().unwrap();
            return if dt.is_float() { json!(x) } else { json!(x as i64) };
        }
        Value::Array(a.outer_iter().map(|sub| rec(&sub, dt)).collect())
    }
    rec(&v, t.datum_type())
}

/// Nested JSON arrays read back into a tensor shaped and typed like `like`.
pub fn from_json(v: &Value, like: &Tensor) -> Tensor {
    fn flat(v: &Value, out: &mut Vec<f64>) {
        match v {
            Value::Array(items) => items.iter().for_each(|i| flat(i, out)),
            x => out.push(x.as_f64().unwrap()),
        }
    }
    let mut values = vec![];
    flat(v, &mut values);
    let t = Tensor::from_shape(like.shape(), &values).unwrap();
    t.cast_to_dt(like.datum_type()).unwrap().into_owned()
}

/// The OpenMetrics text of the request counters and latencies, as `/metrics` exports them.
pub fn exposition(stats: &InferenceStats) -> String {
    let mut r = prometheus_client::registry::Registry::default();
    r.register("requests", "", stats.requests.clone());
    r.register("duration", "", stats.duration.clone());
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &r).unwrap();
    out
}
