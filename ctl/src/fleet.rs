//! The fleet service's HTTP API, as edgectl uses it: `edgectl devices`, and the
//! deployments (`edgectl deploy` with `[fleet] url`, `edgectl deployments`).
//!
//! Plain HTTP/1.1 over one tokio TCP connection with hyper's client connection (hyper and
//! hyper-util are already in the tree through axum; no second HTTP stack). The fleet
//! service listens on loopback or a private network by default; `https://` is not
//! supported yet and is refused with a message saying so.

use std::time::Duration;

use edge_proto::deployments::{CancelDeployment, Deployment, NewDeployment};
use edge_proto::inventory::Device;
use edge_proto::rollouts::{NewRollout, Rollout, VersionReport};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde::de::DeserializeOwned;

/// Where the fleet service is (`[fleet] url`) and its API token (`[fleet] token_file`), if
/// it needs one.
#[derive(Clone)]
pub struct Service {
    /// `http://host:port[/prefix]`.
    pub url: String,
    /// Sent as `Authorization: Bearer …` with every request.
    pub token: Option<String>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service").field("url", &self.url).field("token", &self.token.as_ref().map(|_| "…")).finish()
    }
}

impl Service {
    /// A service without a token.
    pub fn open(url: &str) -> Service {
        Service { url: url.into(), token: None }
    }
}

/// How long a request may take, connection included (uploads get more: [`upload_timeout`]).
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Slowest upload rate allowed for before an artifact upload is given up.
const MIN_UPLOAD_BYTES_PER_SEC: u64 = 256 * 1024;

/// How long an upload of `bytes` may take.
pub fn upload_timeout(bytes: u64) -> Duration {
    TIMEOUT + Duration::from_secs(bytes / MIN_UPLOAD_BYTES_PER_SEC)
}

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
pub async fn devices(svc: &Service, group: Option<&str>) -> Result<Vec<Device>, FleetError> {
    let url = svc.url.as_str();
    let (authority, prefix) = split_url(url).ok_or_else(|| FleetError::BadUrl(url.into()))?;
    json(url, call(svc, &authority, "GET", &devices_path(&prefix, group), None, TIMEOUT).await?)
}

/// Stores an artifact (model plus validation vector) under its SHA-256 (hex).
pub async fn upload_artifact(svc: &Service, sha256: &str, artifact: Vec<u8>) -> Result<(), FleetError> {
    let url = svc.url.as_str();
    let (authority, prefix) = split_url(url).ok_or_else(|| FleetError::BadUrl(url.into()))?;
    let timeout = upload_timeout(artifact.len() as u64);
    let body = Some(("application/octet-stream", Bytes::from(artifact)));
    call(svc, &authority, "PUT", &format!("{prefix}/v1/artifacts/{sha256}"), body, timeout).await?;
    Ok(())
}

/// Hands a signed deployment to the service.
pub async fn create_deployment(svc: &Service, new: &NewDeployment) -> Result<Deployment, FleetError> {
    post_json(svc, "/v1/deployments", new).await
}

/// Every deployment, newest first, without the devices.
pub async fn deployments(svc: &Service) -> Result<Vec<Deployment>, FleetError> {
    get_json(svc, "/v1/deployments").await
}

/// One deployment, with every device's progress.
pub async fn deployment(svc: &Service, id: &str) -> Result<Deployment, FleetError> {
    get_json(svc, &format!("/v1/deployments/{}", percent_encode(id))).await
}

/// A model's versions pooled over the devices that ran them; `since_secs` bounds how old a
/// device's figures may be.
pub async fn model_versions(svc: &Service, model: &str, since_secs: Option<u64>) -> Result<VersionReport, FleetError> {
    let query = since_secs.map(|s| format!("?since_secs={s}")).unwrap_or_default();
    get_json(svc, &format!("/v1/models/{}/versions{query}", percent_encode(model))).await
}

/// Starts a rollout.
pub async fn create_rollout(svc: &Service, new: &NewRollout) -> Result<Rollout, FleetError> {
    post_json(svc, "/v1/rollouts", new).await
}

/// Every rollout, newest first.
pub async fn rollouts(svc: &Service) -> Result<Vec<Rollout>, FleetError> {
    get_json(svc, "/v1/rollouts").await
}

/// One rollout.
pub async fn rollout(svc: &Service, id: &str) -> Result<Rollout, FleetError> {
    get_json(svc, &format!("/v1/rollouts/{}", percent_encode(id))).await
}

/// Lets a rollout waiting for approval go on.
pub async fn approve_rollout(svc: &Service, id: &str) -> Result<Rollout, FleetError> {
    post_json(svc, &format!("/v1/rollouts/{}/approve", percent_encode(id)), &serde_json::json!({})).await
}

async fn get_json<T: DeserializeOwned>(svc: &Service, path: &str) -> Result<T, FleetError> {
    let url = svc.url.as_str();
    let (authority, prefix) = split_url(url).ok_or_else(|| FleetError::BadUrl(url.into()))?;
    json(url, call(svc, &authority, "GET", &format!("{prefix}{path}"), None, TIMEOUT).await?)
}

/// Cancels a deployment with a signed cancel command.
pub async fn cancel_deployment(svc: &Service, id: &str, cancel: &CancelDeployment) -> Result<Deployment, FleetError> {
    post_json(svc, &format!("/v1/deployments/{}/cancel", percent_encode(id)), cancel).await
}

async fn post_json<T: DeserializeOwned>(
    svc: &Service,
    path: &str,
    body: &impl serde::Serialize,
) -> Result<T, FleetError> {
    let url = svc.url.as_str();
    let (authority, prefix) = split_url(url).ok_or_else(|| FleetError::BadUrl(url.into()))?;
    let body = Bytes::from(serde_json::to_vec(body).expect("the request types serialize"));
    json(
        url,
        call(svc, &authority, "POST", &format!("{prefix}{path}"), Some(("application/json", body)), TIMEOUT).await?,
    )
}

fn json<T: DeserializeOwned>(url: &str, body: Bytes) -> Result<T, FleetError> {
    serde_json::from_slice(&body).map_err(|e| FleetError::Body { url: url.into(), reason: e.to_string() })
}

/// One request within `timeout`: the body of a 2xx answer, or the error.
async fn call(
    svc: &Service,
    authority: &str,
    method: &str,
    path: &str,
    body: Option<(&str, Bytes)>,
    timeout: Duration,
) -> Result<Bytes, FleetError> {
    tokio::time::timeout(timeout, send(svc, authority, method, path, body)).await.map_err(|_| {
        FleetError::Unreachable { url: svc.url.clone(), reason: format!("no answer within {timeout:?}") }
    })?
}

async fn send(
    svc: &Service,
    authority: &str,
    method: &str,
    path: &str,
    body: Option<(&str, Bytes)>,
) -> Result<Bytes, FleetError> {
    let url = svc.url.as_str();
    let unreachable = |reason: String| FleetError::Unreachable { url: url.into(), reason };
    let stream = tokio::net::TcpStream::connect(authority).await.map_err(|e| unreachable(e.to_string()))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let conn = tokio::spawn(conn);
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::ACCEPT, "application/json");
    if let Some(token) = &svc.token {
        request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let body = match body {
        Some((content_type, bytes)) => {
            request = request.header(hyper::header::CONTENT_TYPE, content_type);
            bytes
        }
        None => Bytes::new(),
    };
    let request = request.body(Full::new(body)).map_err(|e| FleetError::BadUrl(format!("{url}: {e}")))?;
    let response = sender.send_request(request).await.map_err(|e| unreachable(e.to_string()))?;
    let status = response.status();
    let body = response.into_body().collect().await.map_err(|e| unreachable(e.to_string()))?.to_bytes();
    conn.abort();
    if !status.is_success() {
        // The service answers {"error": "..."}: show the message, not the JSON.
        let text = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_string());
        return Err(FleetError::Status { url: url.into(), status: status.as_u16(), body: text });
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
