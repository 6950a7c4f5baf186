//! The HTTP API: `GET /v1/devices[?group=G]`, `GET /healthz`, `GET /metrics`, and the
//! bearer token that guards `/v1/` when `[http] token_file` is set ([`Token`]).

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::db::Db;
use crate::metrics::Metrics;

#[derive(Clone)]
struct Api {
    db: Db,
    metrics: Metrics,
}

/// `?group=G`
#[derive(Debug, Deserialize)]
struct DevicesQuery {
    group: Option<String>,
}

/// The routes.
pub fn router(db: Db, metrics: Metrics) -> Router {
    Router::new()
        .route("/v1/devices", get(devices))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .with_state(Api { db, metrics })
}

/// The API's bearer token, read from `[http] token_file`.
#[derive(Clone)]
pub struct Token(std::sync::Arc<[u8]>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(…)")
    }
}

/// Shortest token accepted: 16 bytes, e.g. 32 hex digits.
pub const MIN_TOKEN_LEN: usize = 16;

impl Token {
    /// The token in `path` (surrounding white space ignored).
    pub fn load(path: &std::path::Path) -> Result<Token, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let token = text.trim();
        if token.len() < MIN_TOKEN_LEN || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "{}: the token must be at least {MIN_TOKEN_LEN} characters without spaces; \
                 make one with: openssl rand -hex 32 > {}",
                path.display(),
                path.display()
            ));
        }
        Ok(Token(token.as_bytes().into()))
    }

    /// Whether `header` is `Bearer <this token>`, compared in time independent of where
    /// they differ.
    fn admits(&self, header: Option<&[u8]>) -> bool {
        let Some(given) = header.and_then(|h| h.strip_prefix(b"Bearer ")) else { return false };
        given.len() == self.0.len() && given.iter().zip(self.0.iter()).fold(0u8, |d, (a, b)| d | (a ^ b)) == 0
    }
}

/// Refuses `/v1/` requests without the token (401); `/healthz` and `/metrics` stay open for
/// probes and Prometheus (they show counts, not devices).
pub async fn require_token(
    State(token): State<Token>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let guarded = request.uri().path().starts_with("/v1/");
    if guarded && !token.admits(request.headers().get(header::AUTHORIZATION).map(|v| v.as_bytes())) {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            Json(serde_json::json!({
                "error": "this fleet service needs its API token: set [fleet] token_file in ctl.toml to a file \
                          holding the token of its [http] token_file"
            })),
        )
            .into_response();
    }
    next.run(request).await
}

/// Serves `router` on `listener` until `cancel`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router).with_graceful_shutdown(async move { cancel.cancelled().await }).await
}

fn db_failed(api: &Api, e: crate::db::DbError) -> Response {
    api.metrics.db_errors.inc();
    tracing::error!("{e}");
    (StatusCode::SERVICE_UNAVAILABLE, Json(serde_json::json!({ "error": e.to_string() }))).into_response()
}

async fn devices(State(api): State<Api>, Query(q): Query<DevicesQuery>) -> Response {
    match api.db.devices(q.group.as_deref()).await {
        Ok(devices) => Json(devices).into_response(),
        Err(e) => db_failed(&api, e),
    }
}

/// Healthy when the database answers.
async fn healthz(State(api): State<Api>) -> Response {
    match api.db.counts().await {
        Ok(_) => (StatusCode::OK, "ok\n").into_response(),
        Err(e) => db_failed(&api, e),
    }
}

async fn metrics_text(State(api): State<Api>) -> Response {
    match api.db.counts().await {
        Ok((known, online)) => {
            api.metrics.devices_known.set(known);
            api.metrics.devices_online.set(online);
        }
        // The counters are still worth serving; the gauges keep their last values.
        Err(e) => {
            api.metrics.db_errors.inc();
            tracing::warn!("device gauges not refreshed: {e}");
        }
    }
    let mut body = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut body, &api.metrics.registry()) {
        return (StatusCode::INTERNAL_SERVER_ERROR, format!("encoding the metrics: {e}\n")).into_response();
    }
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_bearer_token_is_admitted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "0123456789abcdef0123\n").unwrap();
        let t = Token::load(&path).unwrap();
        assert!(t.admits(Some(b"Bearer 0123456789abcdef0123")));
        for bad in [&b"Bearer 0123456789abcdef012"[..], b"Bearer 0123456789abcdef01234", b"0123456789abcdef0123", b""] {
            assert!(!t.admits(Some(bad)), "{:?}", String::from_utf8_lossy(bad));
        }
        assert!(!t.admits(None));
        std::fs::write(&path, "short").unwrap();
        assert!(Token::load(&path).unwrap_err().contains("openssl rand -hex 32"));
    }
}
