//! `fleet.toml`: the broker, the database and the HTTP API of the fleet service.
//!
//! ```toml
//! client_id = "edge-fleet"          # optional; the MQTT client id of the persistent session:
//!                                   # one per replica (edge-fleet-1, edge-fleet-2, ...)
//! share_group = "edge-fleet"        # optional, for replicas: those with the same share group
//!                                   # split the telemetry, acks and repair requests between them
//!
//! [mqtt]                            # the same keys as ctl.toml's; its own certificate
//! url = "mqtts://broker:8883"
//! ca_file = "ca.pem"
//! cert_file = "edge-fleet.pem"
//! key_file = "edge-fleet-key.pem"
//!
//! [database]
//! url = "sqlite:///var/lib/edge-fleet/fleet.db"   # the default; or postgres://user:pw@host/db
//!
//! [http]
//! listen = "127.0.0.1:9200"         # the default
//! token_file = "api-token"          # optional: /v1/* then need `Authorization: Bearer <token>`
//!
//! [artifacts]                       # models of deployments, chunks served from here
//! dir = "/var/lib/edge-fleet/artifacts"   # the default; shared by replicas
//! max_bytes = 1073741824            # largest upload, the default (1 GiB)
//! keep_days = 30                    # kept this long after its last deployment ended; 0: forever
//!
//! [deployments]
//! max_bytes_per_sec = 0             # cap on chunk data published, all devices together; 0: none
//!
//! [prometheus]                      # optional: telemetry to Prometheus (src/export.rs)
//! remote_write_url = "http://prometheus:9090/api/v1/write"
//! ```
//!
//! Relative TLS, token and artifact paths are taken from the directory of `fleet.toml`. Every error names the
//! file, the key and what would be accepted.

use std::path::{Path, PathBuf};

use edge_mqtt::MqttConfig;
use serde::Deserialize;

/// The database when `[database] url` is not set.
pub const DEFAULT_DATABASE_URL: &str = "sqlite:///var/lib/edge-fleet/fleet.db";
/// The HTTP API's address when `[http] listen` is not set.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9200";
/// The artifact store when `[artifacts] dir` is not set.
pub const DEFAULT_ARTIFACTS_DIR: &str = "/var/lib/edge-fleet/artifacts";
/// The largest artifact when `[artifacts] max_bytes` is not set: above the protocol's
/// bound for one deploy (about 1900 chunks of at most 1 MiB).
pub const DEFAULT_MAX_ARTIFACT_BYTES: u64 = 1 << 30;
/// The MQTT client id when `client_id` is not set.
pub const DEFAULT_CLIENT_ID: &str = "edge-fleet";

/// What is wrong with a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("config {}: {source}", path.display())]
    Read {
        /// The config file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML does not parse, or a key is unknown, missing or of the wrong type.
    #[error("config {}: {message}", path.display())]
    Syntax {
        /// The config file.
        path: PathBuf,
        /// The parser's one-line account, with the line number.
        message: String,
    },
    /// A value is present and well-typed but not acceptable.
    #[error("config {}: {key}: {message}", path.display())]
    Value {
        /// The config file.
        path: PathBuf,
        /// The key, as `[table] key`.
        key: String,
        /// What is wrong with it, and what would be accepted.
        message: String,
    },
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// MQTT client id: stable, so that the broker keeps the session (and queues what
    /// arrives) while the service is down.
    #[serde(default = "default_client_id")]
    pub client_id: String,
    /// Replicas: the group of the shared subscriptions (`$share/{share_group}/...`), the
    /// same in every replica of one fleet service, each with its own `client_id`
    /// (docs/fleet.md, "Replicas"). Unset: one instance, plain subscriptions.
    #[serde(default)]
    pub share_group: Option<String>,
    /// The broker, as edgectl's `[mqtt]`.
    pub mqtt: MqttConfig,
    /// `[database]`
    #[serde(default)]
    pub database: DatabaseConfig,
    /// `[http]`
    #[serde(default)]
    pub http: HttpConfig,
    /// `[artifacts]`
    #[serde(default)]
    pub artifacts: ArtifactsConfig,
    /// `[deployments]`
    #[serde(default)]
    pub deployments: DeploymentsConfig,
    /// `[prometheus]`
    #[serde(default)]
    pub prometheus: PrometheusConfig,
}

/// `[prometheus]`: where telemetry goes. Without `remote_write_url` nothing is exported.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrometheusConfig {
    /// `http://host:port/api/v1/write` of Prometheus (started with
    /// `--web.enable-remote-write-receiver`) or anything that takes remote write 1.0.
    pub remote_write_url: Option<String>,
}

/// `[deployments]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentsConfig {
    /// Most bytes of chunk data per second the service publishes, over every device
    /// together (a cellular uplink or a shared broker); 0 for no cap.
    #[serde(default)]
    pub max_bytes_per_sec: u64,
}

/// `[artifacts]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactsConfig {
    /// Where uploaded artifacts are kept, one file per SHA-256.
    #[serde(default = "default_artifacts_dir")]
    pub dir: PathBuf,
    /// Largest upload accepted.
    #[serde(default = "default_max_artifact_bytes")]
    pub max_bytes: u64,
    /// Days an artifact is kept after the last deployment using it ended (or after its
    /// upload, if none used it); 0 keeps everything (src/retention.rs).
    #[serde(default = "default_keep_days")]
    pub keep_days: u64,
}

impl Default for ArtifactsConfig {
    fn default() -> Self {
        ArtifactsConfig {
            dir: default_artifacts_dir(),
            max_bytes: default_max_artifact_bytes(),
            keep_days: default_keep_days(),
        }
    }
}

/// `[artifacts] keep_days` when not set.
pub const DEFAULT_KEEP_DAYS: u64 = 30;

fn default_keep_days() -> u64 {
    DEFAULT_KEEP_DAYS
}

fn default_artifacts_dir() -> PathBuf {
    DEFAULT_ARTIFACTS_DIR.into()
}
fn default_max_artifact_bytes() -> u64 {
    DEFAULT_MAX_ARTIFACT_BYTES
}

/// `[database]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite:///path/fleet.db` or `postgres://…`.
    #[serde(default = "default_database_url")]
    pub url: String,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig { url: default_database_url() }
    }
}

/// `[http]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address of the JSON API and `/metrics`.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// A file holding the API's bearer token: every `/v1/` request must carry it
    /// (`/healthz` and `/metrics` stay open). Unset: no authentication.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig { listen: default_listen(), token_file: None }
    }
}

fn default_client_id() -> String {
    DEFAULT_CLIENT_ID.into()
}
fn default_database_url() -> String {
    DEFAULT_DATABASE_URL.into()
}
fn default_listen() -> String {
    DEFAULT_LISTEN.into()
}

/// Which database a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `sqlite://`
    Sqlite,
    /// `postgres://` or `postgresql://`
    Postgres,
}

/// The backend of a `[database] url`, `None` for any other scheme.
pub fn backend(url: &str) -> Option<Backend> {
    match url.split_once("://")?.0 {
        "sqlite" => Some(Backend::Sqlite),
        "postgres" | "postgresql" => Some(Backend::Postgres),
        _ => None,
    }
}

impl Config {
    /// Parses `text` as the contents of `path`, resolves relative TLS paths against its
    /// directory, and checks every value.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text)
            .map_err(|e| ConfigError::Syntax { path: path.into(), message: e.to_string().replace('\n', " ") })?;
        let dir = path.parent().unwrap_or(Path::new("."));
        config.mqtt.resolve_paths(dir);
        if config.artifacts.dir.is_relative() {
            config.artifacts.dir = dir.join(&config.artifacts.dir);
        }
        if let Some(t) = config.http.token_file.as_mut().filter(|t| t.is_relative()) {
            *t = dir.join(&*t);
        }
        config.check(path)?;
        Ok(config)
    }

    /// Reads, parses and checks `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        Config::parse(&text, path)
    }

    fn check(&self, path: &Path) -> Result<(), ConfigError> {
        let bad = |key: &str, message: String| Err(ConfigError::Value { path: path.into(), key: key.into(), message });
        if let Err(e) = self.mqtt.check() {
            return bad(e.key, e.message);
        }
        if !edge_mqtt::valid_segment(&self.client_id) {
            return bad("client_id", format!("{:?} must be 1-128 characters of A-Z a-z 0-9 - _ .", self.client_id));
        }
        if let Some(g) = self.share_group.as_ref().filter(|g| !edge_mqtt::valid_segment(g)) {
            return bad("share_group", format!("{g:?} must be 1-128 characters of A-Z a-z 0-9 - _ ."));
        }
        let url = &self.database.url;
        match backend(url) {
            None => {
                return bad(
                    "[database] url",
                    format!("{url:?} is neither sqlite:///path/fleet.db nor postgres://user@host/database"),
                )
            }
            Some(Backend::Sqlite) if url.trim_start_matches("sqlite://").is_empty() => {
                return bad("[database] url", format!("{url:?} names no file: write sqlite:///path/fleet.db"))
            }
            _ => {}
        }
        if let Some(url) = &self.prometheus.remote_write_url {
            if let Err(e) = crate::remote_write::Endpoint::parse(url) {
                return bad("[prometheus] remote_write_url", e.reason);
            }
        }
        if let Some(path) = &self.http.token_file {
            // Read again at start; checked here so that a bad file is a configuration error
            // (exit 2, which systemd does not restart), not a failure.
            if let Err(message) = crate::http::Token::load(path) {
                return bad("[http] token_file", message);
            }
        }
        if self.http.listen.parse::<std::net::SocketAddr>().is_err() {
            return bad(
                "[http] listen",
                format!("{:?} is not an address:port such as 127.0.0.1:9200", self.http.listen),
            );
        }
        if self.artifacts.max_bytes == 0 {
            return bad("[artifacts] max_bytes", "must be at least 1 (bytes)".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A complete file in a temporary directory with its TLS files, and its path.
    fn write(extra: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        for f in ["ca.pem", "fleet.pem", "fleet.key"] {
            std::fs::write(dir.path().join(f), "x").unwrap();
        }
        let path = dir.path().join("fleet.toml");
        let text = format!(
            "{extra}\n[mqtt]\nurl = \"mqtts://b:8883\"\nca_file = \"ca.pem\"\ncert_file = \"fleet.pem\"\n\
             key_file = \"fleet.key\"\n"
        );
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn defaults_fill_the_database_http_and_client_id() {
        let (dir, path) = write("");
        let c = Config::load(&path).unwrap();
        assert_eq!(c.database.url, DEFAULT_DATABASE_URL);
        assert_eq!(c.http.listen, DEFAULT_LISTEN);
        assert_eq!(c.client_id, DEFAULT_CLIENT_ID);
        assert_eq!(c.share_group, None);
        assert_eq!(c.mqtt.ca_file, dir.path().join("ca.pem"));
    }

    #[test]
    fn bad_values_are_refused_with_their_key() {
        for (extra, key) in [
            ("[database]\nurl = \"mysql://x/y\"", "[database] url"),
            ("[database]\nurl = \"sqlite://\"", "[database] url"),
            ("[http]\nlisten = \"localhost\"", "[http] listen"),
            ("client_id = \"a/b\"", "client_id"),
            ("share_group = \"a+\"", "share_group"),
            ("[prometheus]\nremote_write_url = \"https://p:9090/api/v1/write\"", "[prometheus] remote_write_url"),
            ("[prometheus]\nremote_write_url = \"http://p/api/v1/write\"", "[prometheus] remote_write_url"),
        ] {
            // Tables must come before [mqtt] in the file for top-level keys, so put the
            // extra first.
            let (_dir, path) = write(extra);
            match Config::load(&path) {
                Err(ConfigError::Value { key: k, .. }) => assert_eq!(k, key, "{extra}"),
                other => panic!("{extra}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_missing_tls_file_and_an_unknown_key_are_named() {
        let (dir, path) = write("");
        std::fs::remove_file(dir.path().join("fleet.key")).unwrap();
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(err.contains("[mqtt] key_file") && err.contains("no such file"), "{err}");
        let (_dir, path) = write("[prometheus]\nremote_url = \"http://p:9090/api/v1/write\"");
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(err.contains("remote_url"), "{err}");
    }

    #[test]
    fn prometheus_remote_write_is_optional() {
        let (_dir, path) = write("");
        assert_eq!(Config::load(&path).unwrap().prometheus.remote_write_url, None);
        let (_dir, path) = write("[prometheus]\nremote_write_url = \"http://prom:9090/api/v1/write\"");
        let url = Config::load(&path).unwrap().prometheus.remote_write_url;
        assert_eq!(url.as_deref(), Some("http://prom:9090/api/v1/write"));
    }

    #[test]
    fn backends_are_told_by_scheme() {
        assert_eq!(backend("sqlite:///x.db"), Some(Backend::Sqlite));
        assert_eq!(backend("postgres://u@h/d"), Some(Backend::Postgres));
        assert_eq!(backend("postgresql://u@h/d"), Some(Backend::Postgres));
        assert_eq!(backend("x.db"), None);
    }
}
