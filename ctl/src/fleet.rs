//! The fleet service's HTTP API, as edgectl reads it: `edgectl devices`.
//!
//! Plain HTTP/1.1 over one tokio TCP connection with hyper's client connection (hyper and
//! hyper-util are already in the tree through axum; no second HTTP stack). The fleet
//! service listens on loopback or a private network by default; `https://` is not
//! supported yet and is refused with a message saying so.

use std::time::Duration;

use edge_proto::inventory::Device;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;

/// How long a request may take, connection included.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// What went wrong asking the fleet service.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// `[fleet] url` is not `http://host:port[/path]`.
    #[error("[fleet] url {0:?}: expected http://host:port (https is not supported yet)")]
    BadUrl(String),
    /// No connection, or it broke, or no answer in time.
    #[error("fleet service {url}: {reason}; check that edge-fleet runs and [fleet] url")]
    Unreachable {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The service answered with an error status.
    #[error("fleet service {url}: HTTP {status}: {body}")]
    Status {
        /// The URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The body (the service's error message).
        body: String,
    },
    /// The answer is not the JSON expected.
    #[error("fleet service {url}: unexpected answer: {reason}")]
    Body {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
}

impl FleetError {
    /// Whether the service could not be reached: worth retrying later.
    pub fn is_connection(&self) -> bool {
        matches!(self, FleetError::Unreachable { .. })
    }
}

/// `host:port` and path prefix of an `http://host:port[/prefix]` URL.
pub fn split_url(url: &str) -> Option<(String, String)> {
    let rest = url.strip_prefix("http://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    let (host, port) = authority.rsplit_once(':')?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return None;
    }
    Some((authority.to_string(), path.to_string()))
}

/// The path and query of `GET /v1/devices` for `group`.
pub fn devices_path(prefix: &str, group: Option<&str>) -> String {
    match group {
        Some(g) => format!("{prefix}/v1/devices?group={}", percent_encode(g)),
        None => format!("{prefix}/v1/devices"),
    }
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The devices the fleet service knows, or the members of `group`.
pub async fn devices(url: &str, group: Option<&str>) -> Result<Vec<Device>, FleetError> {
    let (authority, prefix) = split_url(url).ok_or_else(|| FleetError::BadUrl(url.into()))?;
    let path = devices_path(&prefix, group);
    let body = tokio::time::timeout(TIMEOUT, get(url, &authority, &path))
        .await
        .map_err(|_| FleetError::Unreachable { url: url.into(), reason: format!("no answer within {TIMEOUT:?}") })??;
    serde_json::from_slice(&body).map_err(|e| FleetError::Body { url: url.into(), reason: e.to_string() })
}

async fn get(url: &str, authority: &str, path: &str) -> Result<Bytes, FleetError> {
    let unreachable = |reason: String| FleetError::Unreachable { url: url.into(), reason };
    let stream = tokio::net::TcpStream::connect(authority).await.map_err(|e| unreachable(e.to_string()))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let conn = tokio::spawn(conn);
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())
        .map_err(|e| FleetError::BadUrl(format!("{url}: {e}")))?;
    let response = sender.send_request(request).await.map_err(|e| unreachable(e.to_string()))?;
    let status = response.status();
    let body = response.into_body().collect().await.map_err(|e| unreachable(e.to_string()))?.to_bytes();
    conn.abort();
    if !status.is_success() {
        return Err(FleetError::Status {
            url: url.into(),
            status: status.as_u16(),
            body: String::from_utf8_lossy(&body).trim().to_string(),
        });
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_authority_and_prefix() {
        assert_eq!(split_url("http://fleet:9200"), Some(("fleet:9200".into(), String::new())));
        assert_eq!(split_url("http://127.0.0.1:9200/api/"), Some(("127.0.0.1:9200".into(), "/api".into())));
        for bad in ["https://fleet:9200", "fleet:9200", "http://fleet", "http://:9200", "http://fleet:x"] {
            assert_eq!(split_url(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_group_is_percent_encoded_in_the_query() {
        assert_eq!(devices_path("", None), "/v1/devices");
        assert_eq!(devices_path("/api", Some("cams")), "/api/v1/devices?group=cams");
        assert_eq!(devices_path("", Some("a b&c")), "/v1/devices?group=a%20b%26c");
    }
}
