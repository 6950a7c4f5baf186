//! Prometheus remote write 1.0, the sending side: a `WriteRequest` protobuf encoded by hand
//! (four small messages, below), snappy block compression, one HTTP/1.1 POST.
//!
//! ```text
//! WriteRequest { repeated TimeSeries timeseries = 1; }
//! TimeSeries   { repeated Label labels = 1; repeated Sample samples = 2; }
//! Label        { string name = 1; string value = 2; }
//! Sample       { double value = 1; int64 timestamp = 2; }   // milliseconds since the epoch
//! ```
//!
//! Hand-written rather than generated: the four messages above are the whole schema, and a
//! code generator (prost-build, protoc) would add a build step for forty lines. Labels are
//! sent sorted by name, `__name__` among them, as the specification requires.
//!
//! `http://` only: the receiver is expected on the same host or network as the service (a
//! TLS-terminating proxy in front of it otherwise). The client keeps one HTTP/1.1
//! connection open across requests (hyper's client connection, already in the tree through
//! axum) and opens a new one after any error.

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;

/// How long one write may take, from connecting to the end of the answer.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// A remote-write URL that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("[prometheus] remote_write_url {url:?}: {reason}")]
pub struct BadUrl {
    /// The URL.
    pub url: String,
    /// What is wrong, and what would be accepted.
    pub reason: String,
}

/// Where to write: `http://host:port/path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The URL as configured.
    pub url: String,
    /// `host:port`
    pub authority: String,
    /// `/api/v1/write`
    pub path: String,
}

impl Endpoint {
    /// Parses `http://host:port/path` (the port is required, the path defaults to `/`).
    pub fn parse(url: &str) -> Result<Endpoint, BadUrl> {
        let bad = |reason: &str| BadUrl { url: url.into(), reason: reason.into() };
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            bad("only http:// URLs are supported, such as http://prometheus:9090/api/v1/write (put a TLS proxy in front for https)")
        })?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = authority.rsplit_once(':').ok_or_else(|| bad("the port is missing: write host:port"))?;
        if host.is_empty() || port.parse::<u16>().is_err() {
            return Err(bad("expected http://host:port/path, such as http://prometheus:9090/api/v1/write"));
        }
        Ok(Endpoint { url: url.into(), authority: authority.into(), path: path.into() })
    }
}

/// One sample: a value at a time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// The value.
    pub value: f64,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
}

/// One time series: its labels (with `__name__`) and samples, oldest first.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Label names and values, `__name__` included; sorted when encoded.
    pub labels: Vec<(String, String)>,
    /// Samples in time order.
    pub samples: Vec<Sample>,
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Field `field` of wire type 2 (length-delimited): key, length, bytes.
fn delimited(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    varint(out, field << 3 | 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// The `WriteRequest` protobuf of `series`.
pub fn encode(series: &[Series]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut ts = Vec::new();
    let mut msg = Vec::new();
    for s in series {
        ts.clear();
        let mut labels: Vec<&(String, String)> = s.labels.iter().collect();
        labels.sort();
        for (name, value) in labels {
            msg.clear();
            delimited(&mut msg, 1, name.as_bytes());
            delimited(&mut msg, 2, value.as_bytes());
            delimited(&mut ts, 1, &msg);
        }
        for sample in &s.samples {
            msg.clear();
            varint(&mut msg, 1 << 3 | 1); // double: 8 bytes little-endian
            msg.extend_from_slice(&sample.value.to_le_bytes());
            varint(&mut msg, 2 << 3); // int64: varint of the two's complement
            varint(&mut msg, sample.timestamp_ms as u64);
            delimited(&mut ts, 2, &msg);
        }
        delimited(&mut out, 1, &ts);
    }
    out
}

/// The request body: [`encode`]d, then snappy block-compressed (not the framed format).
pub fn body(series: &[Series]) -> Vec<u8> {
    snap::raw::Encoder::new().compress_vec(&encode(series)).expect("snappy compresses any input under 4 GiB")
}

/// How a write ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx: every sample is stored.
    Accepted,
    /// 4xx, or a 5xx whose reason is a refusal for good ([`classify`]): the receiver
    /// refuses the request as it is (a sample out of bounds or out of order, a bad label);
    /// sending it again would not help.
    Rejected {
        /// The HTTP status.
        status: u16,
        /// The receiver's reason (the response body, trimmed).
        reason: String,
    },
    /// No answer, or 5xx: worth sending again later.
    Failed(String),
}

/// An HTTP client for one endpoint, keeping its connection between writes.
pub struct Client {
    endpoint: Endpoint,
    sender: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>>,
}

impl Client {
    /// A client for `endpoint`; connects on the first write.
    pub fn new(endpoint: Endpoint) -> Client {
        Client { endpoint, sender: None }
    }

    /// The endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// POSTs `body` (see [`body`]) within [`TIMEOUT`].
    pub async fn write(&mut self, body: Vec<u8>) -> Outcome {
        let outcome = match tokio::time::timeout(TIMEOUT, self.post(body)).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(reason)) => Outcome::Failed(reason),
            Err(_) => Outcome::Failed(format!("no answer within {TIMEOUT:?}")),
        };
        if outcome != Outcome::Accepted {
            // Whatever went wrong, start the next write on a fresh connection.
            self.sender = None;
        }
        outcome
    }

    async fn post(&mut self, body: Vec<u8>) -> Result<Outcome, String> {
        let sender = match self.sender.as_mut() {
            Some(s) if !s.is_closed() => s,
            _ => {
                let stream = tokio::net::TcpStream::connect(&self.endpoint.authority)
                    .await
                    .map_err(|e| format!("cannot connect: {e}"))?;
                let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .map_err(|e| format!("HTTP handshake: {e}"))?;
                // The connection task ends when the sender is dropped or the peer closes.
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                self.sender.insert(sender)
            }
        };
        sender.ready().await.map_err(|e| format!("connection lost: {e}"))?;
        let request = hyper::Request::post(&self.endpoint.path)
            .header(hyper::header::HOST, &self.endpoint.authority)
            .header(hyper::header::CONTENT_ENCODING, "snappy")
            .header(hyper::header::CONTENT_TYPE, "application/x-protobuf")
            .header(hyper::header::USER_AGENT, concat!("edge-fleet/", env!("CARGO_PKG_VERSION")))
            .header("X-Prometheus-Remote-Write-Version", "0.1.0")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("building the request: {e}"))?;
        let response = sender.send_request(request).await.map_err(|e| format!("sending: {e}"))?;
        let status = response.status();
        let text = response.into_body().collect().await.map_err(|e| format!("reading the answer: {e}"))?.to_bytes();
        let reason = String::from_utf8_lossy(&text).trim().to_string();
        Ok(classify(status.as_u16(), reason))
    }
}

/// What the receiver refuses for good whatever its status says: Prometheus up to 2.4x
/// answers `500 too old sample` for a sample older than its out-of-order window (later
/// versions answer 400), and sending it again would loop forever.
const PERMANENT: [&str; 4] =
    ["too old sample", "out of bounds", "out of order sample", "duplicate sample for timestamp"];

/// The outcome of an answer with `status` and body `reason`.
pub fn classify(status: u16, reason: String) -> Outcome {
    match status {
        200..=299 => Outcome::Accepted,
        400..=499 => Outcome::Rejected { status, reason },
        _ if PERMANENT.iter().any(|p| reason.contains(p)) => Outcome::Rejected { status, reason },
        _ => Outcome::Failed(format!("HTTP {status}: {reason}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_http_with_a_port() {
        let e = Endpoint::parse("http://prom:9090/api/v1/write").unwrap();
        assert_eq!((e.authority.as_str(), e.path.as_str()), ("prom:9090", "/api/v1/write"));
        assert_eq!(Endpoint::parse("http://127.0.0.1:9090").unwrap().path, "/");
        for bad in ["https://prom:9090/api/v1/write", "prom:9090", "http://prom/api", "http://:9090/", "http://p:x/"] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
        let err = Endpoint::parse("https://p:1/").unwrap_err().to_string();
        assert!(err.contains("remote_write_url") && err.contains("http://"), "{err}");
    }

    #[test]
    fn a_write_request_encodes_as_the_protobuf_schema_says() {
        let series = [Series {
            // Out of order on purpose: encoded sorted, __name__ first.
            labels: vec![("device".into(), "d".into()), ("__name__".into(), "m".into())],
            samples: vec![Sample { value: 1.5, timestamp_ms: 300 }],
        }];
        let label = |n: &[u8], v: &[u8]| {
            let mut l = vec![0x0a, n.len() as u8];
            l.extend_from_slice(n);
            l.extend_from_slice(&[0x12, v.len() as u8]);
            l.extend_from_slice(v);
            l
        };
        let mut ts = Vec::new();
        for l in [label(b"__name__", b"m"), label(b"device", b"d")] {
            ts.extend_from_slice(&[0x0a, l.len() as u8]);
            ts.extend(l);
        }
        // Sample: field 1 double (key 0x09) 1.5, field 2 varint (key 0x10) 300 = ac 02.
        let mut sample = vec![0x09];
        sample.extend_from_slice(&1.5f64.to_le_bytes());
        sample.extend_from_slice(&[0x10, 0xac, 0x02]);
        ts.extend_from_slice(&[0x12, sample.len() as u8]);
        ts.extend(sample);
        let mut want = vec![0x0a, ts.len() as u8];
        want.extend(ts);
        assert_eq!(encode(&series), want);
    }

    #[test]
    fn negative_timestamps_and_long_fields_use_full_varints() {
        let mut out = Vec::new();
        varint(&mut out, -1i64 as u64);
        assert_eq!(out.len(), 10, "a negative int64 takes ten bytes");
        let long = Series { labels: vec![("__name__".into(), "x".repeat(200))], samples: vec![] };
        let bytes = encode(&[long]);
        // Key and 2-byte length of the series, then of its label, then the label: name
        // (key, length, 8 bytes) and value (key, 2-byte length, 200 bytes).
        assert_eq!(&bytes[..1], &[0x0a]);
        assert_eq!(bytes.len(), 1 + 2 + 1 + 2 + (2 + 8 + 1 + 2 + 200));
    }

    #[test]
    fn answers_are_accepted_refused_for_good_or_worth_retrying() {
        assert_eq!(classify(204, String::new()), Outcome::Accepted);
        assert!(matches!(classify(400, "out of bounds".into()), Outcome::Rejected { status: 400, .. }));
        // Prometheus 2.42 says 500 for a sample older than its out-of-order window.
        assert!(matches!(classify(500, "too old sample".into()), Outcome::Rejected { status: 500, .. }));
        assert_eq!(classify(503, "TSDB not ready".into()), Outcome::Failed("HTTP 503: TSDB not ready".into()));
    }

    #[test]
    fn the_body_is_snappy_block_format() {
        let series = [Series { labels: vec![("__name__".into(), "m".into())], samples: vec![] }];
        let raw = snap::raw::Decoder::new().decompress_vec(&body(&series)).unwrap();
        assert_eq!(raw, encode(&series));
    }
}
