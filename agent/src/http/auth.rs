//! The local API's bearer token (`[http] token_file`): every route needs
//! `Authorization: Bearer <token>` except the health probes in [`OPEN_PATHS`], which
//! systemd, Kubernetes and load balancers call without credentials and which reveal
//! nothing but "up" and "ready".

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::limits::HttpStats;

/// Routes answered without the token: liveness and readiness only.
pub const OPEN_PATHS: &[&str] = &["/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"];

/// The API's bearer token. Only its SHA-256 is kept: a request's token is hashed too and
/// the digests compared in constant time, so neither the bytes nor the length of the
/// token show in how long a refusal takes.
#[derive(Clone)]
pub struct Token(Arc<[u8; 32]>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(…)")
    }
}

impl Token {
    /// The token as read from `[http] token_file` (see `config::read_token_file`).
    pub fn new(token: &str) -> Token {
        Token(Arc::new(Sha256::digest(token.as_bytes()).into()))
    }

    /// Whether `header` is `Bearer <this token>`.
    pub fn admits(&self, header: Option<&[u8]>) -> bool {
        let Some(given) = header.and_then(bearer) else { return false };
        let given: [u8; 32] = Sha256::digest(given).into();
        given.iter().zip(self.0.iter()).fold(0u8, |d, (a, b)| d | (a ^ b)) == 0
    }
}

/// The credentials of an `Authorization: Bearer ...` header (the scheme is
/// case-insensitive, RFC 9110 section 11.1).
fn bearer(header: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = header.split_at_checked(7)?;
    scheme.eq_ignore_ascii_case(b"bearer ").then(|| rest.trim_ascii())
}

/// Refuses a request without the token with 401, `WWW-Authenticate: Bearer` and a message
/// that says what to send; the health probes pass.
pub async fn require_token(
    State((token, stats)): State<(Token, Arc<HttpStats>)>,
    request: Request,
    next: Next,
) -> Response {
    if OPEN_PATHS.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    let given = request.headers().get(header::AUTHORIZATION).map(|v| v.as_bytes());
    if token.admits(given) {
        return next.run(request).await;
    }
    stats.refused("unauthorized");
    tracing::debug!(path = request.uri().path(), sent = given.is_some(), "HTTP request refused: no valid token");
    // RFC 6750 section 3: a wrong token is `invalid_token`; a missing one gets no error code.
    let challenge = if given.is_some() { "Bearer error=\"invalid_token\"" } else { "Bearer" };
    let message = if given.is_some() {
        "the bearer token is not this agent's: send Authorization: Bearer <the token in its [http] token_file>"
    } else {
        "this agent's API needs its token: send Authorization: Bearer <the token in its [http] token_file>"
    };
    let mut response = (StatusCode::UNAUTHORIZED, axum::Json(serde_json::json!({ "error": message }))).into_response();
    response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_bearer_token_is_admitted() {
        let t = Token::new("0123456789abcdef0123");
        assert!(t.admits(Some(b"Bearer 0123456789abcdef0123")));
        assert!(t.admits(Some(b"bearer 0123456789abcdef0123")));
        for bad in [
            &b"Bearer 0123456789abcdef012"[..],
            b"Bearer 0123456789abcdef01234",
            b"Basic 0123456789abcdef0123",
            b"0123456789abcdef0123",
            b"Bearer ",
            b"",
        ] {
            assert!(!t.admits(Some(bad)), "{:?}", String::from_utf8_lossy(bad));
        }
        assert!(!t.admits(None));
    }
}
