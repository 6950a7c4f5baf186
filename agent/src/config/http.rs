//! `[http]`: the local endpoint's addresses, its bearer token, and the limits that keep a
//! client (or many) from growing the agent's memory: body size, bytes held by requests in
//! progress, connections, and how long a client may take to send its headers and body.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Shortest bearer token accepted: 16 bytes, e.g. 32 hex digits (edge-fleet's rule too).
pub const MIN_TOKEN_LEN: usize = 16;

/// `[http]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address of the inference API (and of `/metrics`, `/healthz`, `/readyz` unless
    /// `metrics_listen` is set).
    #[serde(default = "default_listen")]
    pub listen: String,
    /// A file holding the API's bearer token. When set, every route of `listen` except the
    /// health probes (`/healthz`, `/readyz`, `/v2/health/live`, `/v2/health/ready`) needs
    /// `Authorization: Bearer <token>`.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// A second address for `/metrics`, `/healthz` and `/readyz` only, without the token
    /// (for Prometheus and probes). When set, `/metrics` is served there and not on `listen`.
    #[serde(default)]
    pub metrics_listen: Option<String>,
    /// Largest request body, in bytes.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Bytes that the bodies of all requests in progress may hold together; a request that
    /// would go beyond gets 503 with `Retry-After` before its body is read.
    #[serde(default = "default_max_queued_bytes")]
    pub max_queued_bytes: usize,
    /// Connections open at once on `listen`; one more is answered 503 and closed.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// How long a client may take to send a request's headers, and how long a connection
    /// may sit idle between requests, in seconds.
    #[serde(default = "default_header_timeout_secs")]
    pub header_timeout_secs: u64,
    /// How long a client may take to send a request's whole body, in seconds (408 after).
    #[serde(default = "default_body_timeout_secs")]
    pub body_timeout_secs: u64,
    /// How long a predict may wait for its answer, in seconds.
    #[serde(default = "default_request_timeout_secs")]
    pub request_timeout_secs: u64,
    /// How long an unused session lives, in seconds.
    #[serde(default = "default_session_ttl_secs")]
    pub session_ttl_secs: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: default_listen(),
            token_file: None,
            metrics_listen: None,
            max_body_bytes: default_max_body_bytes(),
            max_queued_bytes: default_max_queued_bytes(),
            max_connections: default_max_connections(),
            header_timeout_secs: default_header_timeout_secs(),
            body_timeout_secs: default_body_timeout_secs(),
            request_timeout_secs: default_request_timeout_secs(),
            session_ttl_secs: default_session_ttl_secs(),
        }
    }
}

fn default_listen() -> String {
    "127.0.0.1:9898".into()
}
fn default_max_body_bytes() -> usize {
    16 * 1024 * 1024
}
fn default_max_queued_bytes() -> usize {
    32 * 1024 * 1024
}
fn default_max_connections() -> usize {
    128
}
fn default_header_timeout_secs() -> u64 {
    10
}
fn default_body_timeout_secs() -> u64 {
    60
}
fn default_request_timeout_secs() -> u64 {
    10
}
fn default_session_ttl_secs() -> u64 {
    300
}

impl HttpConfig {
    /// Checks every value; the error is the key and what is wrong with it.
    pub(super) fn check(&self) -> Result<(), (&'static str, String)> {
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(("[http] listen", format!("{:?} is not an address:port", self.listen)));
        }
        if let Some(m) = &self.metrics_listen {
            if m.parse::<std::net::SocketAddr>().is_err() {
                return Err(("[http] metrics_listen", format!("{m:?} is not an address:port")));
            }
            if *m == self.listen {
                return Err(("[http] metrics_listen", format!("{m:?} is [http] listen too; give it another port")));
            }
        }
        for (key, value) in [
            ("[http] max_body_bytes", self.max_body_bytes as u64),
            ("[http] max_connections", self.max_connections as u64),
            ("[http] header_timeout_secs", self.header_timeout_secs),
            ("[http] body_timeout_secs", self.body_timeout_secs),
        ] {
            if value == 0 {
                return Err((key, "must be at least 1".into()));
            }
        }
        if self.max_queued_bytes < self.max_body_bytes {
            return Err((
                "[http] max_queued_bytes",
                format!(
                    "{} is less than [http] max_body_bytes ({}): a request of the largest size could never be \
                     taken; raise it or lower max_body_bytes",
                    self.max_queued_bytes, self.max_body_bytes
                ),
            ));
        }
        if let Some(path) = &self.token_file {
            // Read again at start; checked here so that a bad file is a configuration error
            // (exit 2, which systemd does not restart), not a failure later.
            read_token_file(path).map_err(|m| ("[http] token_file", m))?;
        }
        Ok(())
    }
}

/// The bearer token in `path` (surrounding white space ignored): at least
/// [`MIN_TOKEN_LEN`] characters, no spaces or control characters.
pub fn read_token_file(path: &Path) -> Result<String, String> {
    let fix = format!("make one with: openssl rand -hex 32 > {}", path.display());
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}; {fix}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!("{}: the file is empty; {fix}", path.display()));
    }
    if token.len() < MIN_TOKEN_LEN || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{}: the token must be at least {MIN_TOKEN_LEN} characters without spaces; {fix}",
            path.display()
        ));
    }
    Ok(token.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<(), (&'static str, String)> {
        toml::from_str::<HttpConfig>(text).unwrap().check()
    }

    #[test]
    fn token_file_missing_empty_or_short_is_a_configuration_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let text = format!("token_file = {:?}", path.display().to_string());
        let (key, msg) = check(&text).unwrap_err();
        assert_eq!(key, "[http] token_file");
        assert!(msg.contains("No such file") && msg.contains("openssl rand -hex 32"), "{msg}");
        std::fs::write(&path, "\n").unwrap();
        assert!(check(&text).unwrap_err().1.contains("empty"));
        std::fs::write(&path, "short").unwrap();
        assert!(check(&text).unwrap_err().1.contains("at least 16"));
        std::fs::write(&path, "0123456789abcdef0123\n").unwrap();
        check(&text).unwrap();
        assert_eq!(read_token_file(&path).unwrap(), "0123456789abcdef0123");
    }

    #[test]
    fn limits_are_checked() {
        assert_eq!(check("max_connections = 0").unwrap_err().0, "[http] max_connections");
        assert_eq!(check("body_timeout_secs = 0").unwrap_err().0, "[http] body_timeout_secs");
        let (key, msg) = check("max_body_bytes = 100\nmax_queued_bytes = 99").unwrap_err();
        assert_eq!(key, "[http] max_queued_bytes");
        assert!(msg.contains("max_body_bytes (100)"), "{msg}");
        assert_eq!(check("metrics_listen = \"127.0.0.1:9898\"").unwrap_err().0, "[http] metrics_listen");
        assert_eq!(check("metrics_listen = \"nowhere\"").unwrap_err().0, "[http] metrics_listen");
        check("metrics_listen = \"0.0.0.0:9899\"").unwrap();
    }
}
