//! What a request may cost before a handler sees it: its body's size (`[http]
//! max_body_bytes`, 413), the bytes all requests in progress hold together (`[http]
//! max_queued_bytes`, 503 with `Retry-After`), and how long its body may take to arrive
//! (`[http] body_timeout_secs`, 408).
//!
//! The order matters for memory: a declared `Content-Length` is checked against both limits
//! before a byte of the body is read (a client that sent `Expect: 100-continue` is refused
//! before it sends anything); a chunked body is charged frame by frame as it arrives. The
//! bytes stay charged until the handler has answered, so the parsed tensors and the answer,
//! which live no longer than that, are covered by the same budget (see docs/security.md
//! for the bound this gives).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

/// Label of `edge_agent_http_refused_requests`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct Reason {
    reason: &'static str,
}

/// The counters and gauges of the local HTTP endpoint.
#[derive(Debug, Default)]
pub struct HttpStats {
    /// Requests and connections refused, by reason: `unauthorized`, `too_large`,
    /// `busy` (byte budget), `body_timeout`, `header_timeout`, `connections`.
    pub refused: Family<Reason, Counter>,
    /// Connections open now (both listeners).
    pub connections: Gauge,
    /// Bytes of request bodies held by requests in progress.
    pub queued_bytes: Gauge,
}

impl HttpStats {
    /// Counts one refusal.
    pub fn refused(&self, reason: &'static str) {
        self.refused.get_or_create(&Reason { reason }).inc();
    }
}

/// Bytes of request bodies in progress, bounded by `max`.
#[derive(Debug)]
pub struct Budget {
    used: AtomicUsize,
    max: usize,
    stats: Arc<HttpStats>,
}

impl Budget {
    /// A budget of `max` bytes, reported in `stats.queued_bytes`.
    pub fn new(max: usize, stats: Arc<HttpStats>) -> Arc<Budget> {
        Arc::new(Budget { used: AtomicUsize::new(0), max, stats })
    }

    /// Takes `n` bytes, or `None` if they do not fit beside what is held.
    pub fn take(self: &Arc<Self>, n: usize) -> Option<Held> {
        let mut held = Held { budget: self.clone(), bytes: 0 };
        held.grow(n).then_some(held)
    }

    fn try_add(&self, n: usize) -> bool {
        let ok = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|total| *total <= self.max)
            })
            .is_ok();
        if ok {
            self.stats.queued_bytes.inc_by(n as i64);
        }
        ok
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

/// Bytes taken from a [`Budget`], given back on drop.
#[derive(Debug)]
pub struct Held {
    budget: Arc<Budget>,
    bytes: usize,
}

impl Held {
    /// Takes `n` more bytes; false (and nothing taken) if they do not fit.
    pub fn grow(&mut self, n: usize) -> bool {
        let ok = self.budget.try_add(n);
        if ok {
            self.bytes += n;
        }
        ok
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
        self.budget.stats.queued_bytes.dec_by(self.bytes as i64);
    }
}

/// The limits a request body is read under.
#[derive(Clone, Debug)]
pub struct BodyLimits {
    /// Largest body.
    pub max_body: usize,
    /// How long the whole body may take to arrive.
    pub timeout: Duration,
    /// What all bodies in progress may hold together.
    pub budget: Arc<Budget>,
    /// Where refusals are counted.
    pub stats: Arc<HttpStats>,
}

/// Why a body was not read.
enum Refusal {
    TooLarge,
    Busy,
    Timeout,
    Broken(String),
}

impl BodyLimits {
    fn refuse(&self, why: Refusal) -> Response {
        let (status, reason, message) = match why {
            Refusal::TooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("the request body is larger than this agent takes ([http] max_body_bytes = {})", self.max_body),
            ),
            Refusal::Busy => (
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                format!(
                    "requests in progress already hold {} of the {} bytes this agent gives them ([http] \
                     max_queued_bytes); retry shortly",
                    self.budget.used(),
                    self.budget.max
                ),
            ),
            Refusal::Timeout => (
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!(
                    "the request body did not arrive within {} s ([http] body_timeout_secs)",
                    self.timeout.as_secs()
                ),
            ),
            Refusal::Broken(e) => (StatusCode::BAD_REQUEST, "broken_body", format!("reading the request body: {e}")),
        };
        self.stats.refused(reason);
        tracing::debug!(reason, "HTTP request refused: {message}");
        let mut r = (status, axum::Json(serde_json::json!({ "error": message }))).into_response();
        // The body was not read (or not all of it): the connection cannot carry another
        // request, and closing it is what frees the client's unread bytes.
        r.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        if status == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r
    }

    /// Reads `body` whole under the limits, charging `held` as it goes.
    async fn read(&self, mut body: Body, declared: Option<usize>, held: &mut Held) -> Result<Bytes, Refusal> {
        // The declared length is already charged and within max_body.
        let mut buf = Vec::with_capacity(declared.unwrap_or(0));
        while let Some(frame) = std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await {
            let frame = frame.map_err(|e| Refusal::Broken(e.to_string()))?;
            let Ok(data) = frame.into_data() else { continue };
            let len = buf.len() + data.len();
            if len > self.max_body || declared.is_some_and(|d| len > d) {
                return Err(Refusal::TooLarge);
            }
            if declared.is_none() && !held.grow(data.len()) {
                return Err(Refusal::Busy);
            }
            buf.extend_from_slice(&data);
        }
        Ok(Bytes::from(buf))
    }
}

/// Middleware: reads the request body under [`BodyLimits`] before the handler runs, and
/// keeps its bytes charged to the budget until the handler has answered.
pub async fn limit_body(State(limits): State<BodyLimits>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    if body.is_end_stream() {
        return next.run(Request::from_parts(parts, body)).await;
    }
    // hyper has already refused a Content-Length that is not a number.
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .map(|n| usize::try_from(n).unwrap_or(usize::MAX));
    if declared.is_some_and(|n| n > limits.max_body) {
        return limits.refuse(Refusal::TooLarge);
    }
    let Some(mut held) = limits.budget.take(declared.unwrap_or(0)) else {
        return limits.refuse(Refusal::Busy);
    };
    let bytes = match tokio::time::timeout(limits.timeout, limits.read(body, declared, &mut held)).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(why)) => return limits.refuse(why),
        Err(_) => return limits.refuse(Refusal::Timeout),
    };
    let response = next.run(Request::from_parts(parts, Body::from(bytes))).await;
    drop(held);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_refuses_what_does_not_fit_and_frees_on_drop() {
        let stats = Arc::new(HttpStats::default());
        let budget = Budget::new(100, stats.clone());
        let a = budget.take(60).unwrap();
        assert!(budget.take(41).is_none());
        let mut b = budget.take(40).unwrap();
        assert!(!b.grow(1));
        assert_eq!((budget.used(), stats.queued_bytes.get()), (100, 100));
        drop(a);
        assert!(b.grow(60));
        drop(b);
        assert_eq!((budget.used(), stats.queued_bytes.get()), (0, 0));
        assert!(budget.take(usize::MAX).is_none());
    }
}
