//! The agent's configuration file (TOML), checked in full before anything starts.
//!
//! Every error names what is wrong and where: the key (with its table), the file, and the
//! line when the TOML itself is at fault. Relative paths are relative to the config file.
//! Deploy-time values can be overridden from the environment:
//! `EDGE_AGENT_DEVICE_ID` and `EDGE_AGENT_MQTT_URL`. Without `--config`, the commands read
//! `EDGE_AGENT_CONFIG`, then `/etc/edge-agent/edge-agent.toml` (where the .deb's unit looks).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use edge_mqtt::valid_segment;

mod drift;
mod http;
pub use self::drift::DriftConfig;
pub use self::http::{read_token_file, HttpConfig};
/// The `[mqtt]` table and its URL helper live in edge-mqtt, shared with edgectl.
pub use edge_mqtt::{host_port, MqttConfig};

/// Environment variable that overrides `device_id`.
pub const ENV_DEVICE_ID: &str = "EDGE_AGENT_DEVICE_ID";
/// Environment variable that overrides `[mqtt] url`.
pub const ENV_MQTT_URL: &str = "EDGE_AGENT_MQTT_URL";
/// Environment variable naming the configuration file when `--config` is not given.
pub const CONFIG_ENV: &str = "EDGE_AGENT_CONFIG";
/// The configuration file when neither `--config` nor [`CONFIG_ENV`] names one.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/edge-agent/edge-agent.toml";

/// What is wrong with a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("config {path}: {source}")]
    Read {
        /// The config file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML does not parse, or a key is unknown, missing or of the wrong type.
    #[error("config {path}: {message}")]
    Syntax {
        /// The config file.
        path: String,
        /// The parser's one-line account, with the line number.
        message: String,
    },
    /// A value is present and well-typed but not acceptable.
    #[error("config {path}: {key}: {message}")]
    Value {
        /// The config file.
        path: String,
        /// The key, as `[table] key`.
        key: String,
        /// What is wrong with it.
        message: String,
    },
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This device's id: the MQTT client id and the topic segment.
    pub device_id: String,
    /// Where the agent keeps its state (outbox, models, sequence numbers).
    pub state_dir: PathBuf,
    /// The broker link.
    pub mqtt: MqttConfig,
    /// Telemetry.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// The local HTTP endpoint.
    #[serde(default)]
    pub http: HttpConfig,
    /// Models loaded at start.
    #[serde(default)]
    pub models: Vec<ModelConfig>,
    /// Groups this device belongs to: it accepts commands and OTA transfers sent to them.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Fleet commands and over-the-air model updates.
    #[serde(default)]
    pub ota: OtaConfig,
    /// Drift of model versions deployed with a reference profile.
    #[serde(default)]
    pub drift: DriftConfig,
}

/// `[ota]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtaConfig {
    /// Admin keys: operators' ed25519 public keys (hex or base64) whose signed commands
    /// are all accepted. With `operators` empty too, every command is refused.
    #[serde(default)]
    pub trusted_keys: Vec<String>,
    /// Operator keys with a role, and optionally a scope and a lifetime limit
    /// (`[[ota.operators]]`; [`crate::commands::operators`]).
    #[serde(default)]
    pub operators: Vec<OperatorConfig>,
    /// This device's fleet: a command signed for another fleet is refused. Empty (the
    /// default) for the unnamed fleet, whose commands name none.
    #[serde(default)]
    pub fleet_id: String,
    /// Admin signatures that `erase` and key changes need.
    #[serde(default = "default_quorum")]
    pub quorum: usize,
    /// Longest lifetime (`expires_at - issued_at`) of a command, in seconds.
    #[serde(default = "default_max_command_lifetime_secs")]
    pub max_command_lifetime_secs: u64,
    /// Longest lifetime of a deployment (`deploy-model`) and of its `cancel`, in seconds:
    /// the fleet service holds these for devices that are offline.
    #[serde(default = "default_max_deployment_lifetime_secs")]
    pub max_deployment_lifetime_secs: u64,
    /// Largest model a deploy may bring, in bytes.
    #[serde(default = "default_max_model_bytes")]
    pub max_model_bytes: u64,
    /// Most OTA bytes per second this device takes in (repairs it asks for are paced to
    /// it, and chunks beyond it wait); 0 for no cap.
    #[serde(default)]
    pub max_bytes_per_sec: u64,
    /// Installed versions kept per model (the active and the previous one always are).
    #[serde(default = "default_keep_versions")]
    pub keep_versions: usize,
    /// Seconds a new version is watched after activation before the deploy succeeds.
    #[serde(default = "default_health_window_secs")]
    pub health_window_secs: u64,
    /// Requests needed in the health window before it can judge a regression.
    #[serde(default = "default_health_min_requests")]
    pub health_min_requests: u64,
    /// A new version whose error rate exceeds the previous one's by more than this
    /// (a fraction, 0-1) is rolled back.
    #[serde(default = "default_health_max_error_increase")]
    pub health_max_error_increase: f64,
    /// A new version whose p95 latency exceeds the previous one's by this factor is
    /// rolled back.
    #[serde(default = "default_health_max_latency_ratio")]
    pub health_max_latency_ratio: f64,
    /// Seconds without a chunk before the device asks again for what it is missing.
    #[serde(default = "default_stall_secs")]
    pub stall_secs: u64,
    /// Seconds the agent must have run before a `restart` command is carried out: at most
    /// one restart per this long.
    #[serde(default = "default_restart_min_uptime_secs")]
    pub restart_min_uptime_secs: u64,
    /// Address-space limit of the process that validates a new model, in bytes. Default:
    /// half of the board's memory (`MemTotal`), at least 256 MiB
    /// ([`OtaConfig::validation_memory`]).
    #[serde(default)]
    pub validation_memory_bytes: Option<u64>,
    /// Deadline of that process, in seconds.
    #[serde(default = "default_validation_timeout_secs")]
    pub validation_timeout_secs: u64,
    /// Encrypt installed models with AES-256-GCM under `key_file`.
    #[serde(default)]
    pub encrypt_models: bool,
    /// The 32-byte device key for `encrypt_models` (raw, or 64 hex digits). Generated
    /// (mode 0600) when missing; relative to the config file. Default: `state_dir/model.key`.
    pub key_file: Option<PathBuf>,
}

impl Default for OtaConfig {
    fn default() -> Self {
        OtaConfig {
            trusted_keys: vec![],
            operators: vec![],
            fleet_id: String::new(),
            quorum: default_quorum(),
            max_command_lifetime_secs: default_max_command_lifetime_secs(),
            max_deployment_lifetime_secs: default_max_deployment_lifetime_secs(),
            max_model_bytes: default_max_model_bytes(),
            max_bytes_per_sec: 0,
            keep_versions: default_keep_versions(),
            health_window_secs: default_health_window_secs(),
            health_min_requests: default_health_min_requests(),
            health_max_error_increase: default_health_max_error_increase(),
            health_max_latency_ratio: default_health_max_latency_ratio(),
            stall_secs: default_stall_secs(),
            restart_min_uptime_secs: default_restart_min_uptime_secs(),
            validation_memory_bytes: None,
            validation_timeout_secs: default_validation_timeout_secs(),
            encrypt_models: false,
            key_file: None,
        }
    }
}

impl OtaConfig {
    /// The validation child's address-space limit: `validation_memory_bytes`, or half of
    /// `MemTotal` (at least 256 MiB), so that a hostile model cannot take more than half
    /// of a small board.
    pub fn validation_memory(&self) -> u64 {
        self.validation_memory_bytes.unwrap_or_else(|| {
            let total = crate::engine::isolate::board_memory_bytes().unwrap_or(2 << 30);
            (total / 2).max(256 << 20)
        })
    }
}

/// One `[[ota.operators]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorConfig {
    /// The ed25519 public key, as in `trusted_keys`.
    pub key: String,
    /// `observe`, `deploy` or `admin` (roles nest: the highest listed counts).
    pub roles: Vec<String>,
    /// Device ids and groups this key's commands may target; empty for every device.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Longest lifetime of a command this key signs, in seconds.
    pub max_ttl_secs: Option<u64>,
}

/// `[telemetry]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Seconds between samples.
    #[serde(default = "default_interval_secs")]
    pub interval_secs: u64,
    /// Outbox size limit in bytes while offline.
    #[serde(default = "default_outbox_bytes")]
    pub outbox_max_bytes: u64,
    /// How long a queued sample stays worth sending, in seconds.
    #[serde(default = "default_outbox_ttl_secs")]
    pub outbox_ttl_secs: u64,
    /// `postcard` (default) or `json` (docs/telemetry.schema.json), for consumers that
    /// cannot read postcard.
    #[serde(default)]
    pub encoding: edge_proto::telemetry::Encoding,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            interval_secs: default_interval_secs(),
            outbox_max_bytes: default_outbox_bytes(),
            outbox_ttl_secs: default_outbox_ttl_secs(),
            encoding: Default::default(),
        }
    }
}

/// One `[[models]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Name the model is served under.
    pub name: String,
    /// Model file.
    pub path: PathBuf,
    /// Matmul threads per run.
    #[serde(default = "default_threads")]
    pub threads: usize,
    /// Inputs fixed at load: `{ sr = 16000 }`.
    #[serde(default)]
    pub pins: BTreeMap<String, f64>,
    /// Concrete input shapes: `{ input = [1, 576] }`.
    #[serde(default)]
    pub shapes: BTreeMap<String, Vec<usize>>,
    /// ONNX state bindings, input to output: `{ state = "stateN" }`.
    #[serde(default)]
    pub state: BTreeMap<String, String>,
    /// Version label; changing it (or `path`) and sending SIGHUP activates the new file.
    #[serde(default = "default_version")]
    pub version: String,
    /// Worker threads serving this model.
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// Requests that may wait for a worker; beyond that, HTTP 503.
    #[serde(default = "default_queue")]
    pub queue: usize,
}

fn default_quorum() -> usize {
    1
}
fn default_max_command_lifetime_secs() -> u64 {
    24 * 3600
}
fn default_max_deployment_lifetime_secs() -> u64 {
    7 * 24 * 3600
}
fn default_max_model_bytes() -> u64 {
    256 * 1024 * 1024
}
fn default_keep_versions() -> usize {
    3
}
fn default_restart_min_uptime_secs() -> u64 {
    60
}
fn default_health_window_secs() -> u64 {
    60
}
fn default_health_min_requests() -> u64 {
    20
}
fn default_health_max_error_increase() -> f64 {
    0.1
}
fn default_health_max_latency_ratio() -> f64 {
    2.0
}
fn default_stall_secs() -> u64 {
    5
}
fn default_validation_timeout_secs() -> u64 {
    120
}
fn default_interval_secs() -> u64 {
    10
}
fn default_outbox_bytes() -> u64 {
    16 * 1024 * 1024
}
fn default_outbox_ttl_secs() -> u64 {
    7 * 24 * 3600
}
fn default_threads() -> usize {
    1
}
fn default_version() -> String {
    "1".into()
}
fn default_workers() -> usize {
    1
}
fn default_queue() -> usize {
    16
}

impl Config {
    /// Reads, parses, applies environment overrides and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: shown.clone(), source })?;
        Config::parse(&text, path, |k| std::env::var(k).ok())
    }

    /// Parses and validates config text; `env` supplies overrides (tests pass their own).
    pub fn parse(text: &str, path: &Path, env: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let shown = path.display().to_string();
        let mut config: Config = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            let message = e.message().replace('\n', " ");
            ConfigError::Syntax {
                path: shown.clone(),
                message: match line {
                    Some(l) => format!("line {l}: {message}"),
                    None => message,
                },
            }
        })?;
        if let Some(id) = env(ENV_DEVICE_ID) {
            config.device_id = id;
        }
        if let Some(url) = env(ENV_MQTT_URL) {
            config.mqtt.url = url;
        }
        let base = path.parent().unwrap_or(Path::new("."));
        config.resolve(base);
        config.validate(&shown)?;
        Ok(config)
    }

    fn resolve(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.state_dir);
        self.mqtt.resolve_paths(base);
        for m in &mut self.models {
            fix(&mut m.path);
        }
        if let Some(k) = &mut self.ota.key_file {
            fix(k);
        }
        if let Some(t) = &mut self.http.token_file {
            fix(t);
        }
    }

    /// The device key file for `[ota] encrypt_models`.
    pub fn model_key_file(&self) -> PathBuf {
        self.ota.key_file.clone().unwrap_or_else(|| self.state_dir.join("model.key"))
    }

    fn validate(&self, path: &str) -> Result<(), ConfigError> {
        let bad = |key: &str, message: String| ConfigError::Value { path: path.into(), key: key.into(), message };
        if !valid_segment(&self.device_id) {
            return Err(bad(
                "device_id",
                format!("{:?} must be 1-128 characters of A-Z a-z 0-9 - _ .", self.device_id),
            ));
        }
        if let Some(why) = edge_proto::topics::reserved_device_id(&self.device_id) {
            return Err(bad(
                "device_id",
                format!("{:?} is reserved: {why}; give the device another id (and certificate)", self.device_id),
            ));
        }
        if let Err(e) = self.mqtt.check() {
            return Err(bad(e.key, e.message));
        }
        if self.telemetry.interval_secs == 0 {
            return Err(bad("[telemetry] interval_secs", "must be at least 1".into()));
        }
        if let Err((key, message)) = self.http.check().and_then(|_| self.drift.check()) {
            return Err(bad(key, message));
        }
        for (i, g) in self.groups.iter().enumerate() {
            if !valid_segment(g) {
                return Err(bad(
                    &format!("groups[{i}]"),
                    format!("{g:?} must be 1-128 characters of A-Z a-z 0-9 - _ ."),
                ));
            }
        }
        if let Err(e) = crate::commands::operators::configured(&self.ota) {
            return Err(bad(&e.field, e.reason));
        }
        if !self.ota.fleet_id.is_empty() && !valid_segment(&self.ota.fleet_id) {
            return Err(bad("[ota] fleet_id", "must be 1-128 characters of A-Z a-z 0-9 - _ .".into()));
        }
        let o = &self.ota;
        for (key, value) in [
            ("[ota] max_model_bytes", o.max_model_bytes),
            ("[ota] keep_versions", o.keep_versions as u64),
            ("[ota] stall_secs", o.stall_secs),
            ("[ota] validation_timeout_secs", o.validation_timeout_secs),
            ("[ota] quorum", o.quorum as u64),
            ("[ota] max_command_lifetime_secs", o.max_command_lifetime_secs),
            ("[ota] max_deployment_lifetime_secs", o.max_deployment_lifetime_secs),
        ] {
            if value == 0 {
                return Err(bad(key, "must be at least 1".into()));
            }
        }
        if o.validation_memory_bytes.is_some_and(|b| b < 64 * 1024 * 1024) {
            return Err(bad("[ota] validation_memory_bytes", "must be at least 64 MiB (67108864)".into()));
        }
        if !(0.0..=1.0).contains(&o.health_max_error_increase) {
            return Err(bad("[ota] health_max_error_increase", "must be a fraction between 0 and 1".into()));
        }
        if o.health_max_latency_ratio < 1.0 {
            return Err(bad("[ota] health_max_latency_ratio", "must be at least 1.0".into()));
        }
        let mut names = std::collections::HashSet::new();
        for (i, m) in self.models.iter().enumerate() {
            let key = format!("[[models]] #{} ({:?})", i + 1, m.name);
            if !valid_segment(&m.name) {
                return Err(bad(&format!("{key} name"), "must be 1-128 characters of A-Z a-z 0-9 - _ .".into()));
            }
            if !names.insert(&m.name) {
                return Err(bad(&format!("{key} name"), "used twice".into()));
            }
            if !m.path.is_file() {
                return Err(bad(&format!("{key} path"), format!("{:?}: no such file", m.path.display().to_string())));
            }
            for (field, value) in [("threads", m.threads), ("workers", m.workers), ("queue", m.queue)] {
                if value == 0 {
                    return Err(bad(&format!("{key} {field}"), "must be at least 1".into()));
                }
            }
            if !valid_segment(&m.version) {
                return Err(bad(&format!("{key} version"), "must be 1-128 characters of A-Z a-z 0-9 - _ .".into()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(tempfile::TempDir);

    fn setup() -> Dir {
        let dir = tempfile::tempdir().unwrap();
        for f in ["ca.pem", "dev.pem", "dev.key", "m.onnx"] {
            std::fs::write(dir.path().join(f), "x").unwrap();
        }
        Dir(dir)
    }

    const GOOD: &str = r#"
device_id = "dev-1"
state_dir = "state"
[mqtt]
url = "mqtts://broker.example:8883"
ca_file = "ca.pem"
cert_file = "dev.pem"
key_file = "dev.key"
[telemetry]
interval_secs = 1
[http]
listen = "127.0.0.1:9898"
[[models]]
name = "wake"
path = "m.onnx"
pins = { sr = 16000 }
"#;

    fn parse(dir: &Dir, text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, &dir.0.path().join("agent.toml"), |_| None)
    }

    #[test]
    fn accepts_the_documented_keys_and_resolves_paths() {
        let d = setup();
        let c = parse(&d, GOOD).unwrap();
        assert_eq!(c.mqtt.topic_prefix, "edge");
        assert_eq!(c.telemetry.interval_secs, 1);
        assert_eq!(c.models[0].pins["sr"], 16000.0);
        assert_eq!(c.mqtt.ca_file, d.0.path().join("ca.pem"));
        assert_eq!(c.telemetry.encoding, edge_proto::telemetry::Encoding::Postcard);
        let json = parse(&d, &GOOD.replace("interval_secs = 1", "interval_secs = 1\nencoding = \"json\"")).unwrap();
        assert_eq!(json.telemetry.encoding, edge_proto::telemetry::Encoding::Json);
        let err = parse(&d, &GOOD.replace("interval_secs = 1", "interval_secs = 1\nencoding = \"xml\"")).unwrap_err();
        assert!(
            err.to_string().contains("line 11") && err.to_string().contains("expected `postcard` or `json`"),
            "{err}"
        );
    }

    #[test]
    fn the_shipped_example_is_valid_once_its_files_exist() {
        let d = setup();
        let example = include_str!("../../deploy/edge-agent.example.toml");
        let text = example
            .replace("/etc/edge-agent/ca.pem", "ca.pem")
            .replace("/etc/edge-agent/device.pem", "dev.pem")
            .replace("/etc/edge-agent/device.key", "dev.key")
            .replace("/usr/share/edge-agent/models/pymicro-wakeword__okay_nabu.tflite", "m.onnx");
        parse(&d, &text).unwrap();
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let d = setup();
        let err =
            parse(&d, &GOOD.replace("interval_secs = 1", "interval_secs = 1\nintervall = 2")).unwrap_err().to_string();
        assert!(err.contains("intervall") && err.contains("line 11"), "{err}");
    }

    #[test]
    fn wrong_type_and_missing_key_are_named() {
        let d = setup();
        let err = parse(&d, &GOOD.replace("interval_secs = 1", "interval_secs = \"fast\"")).unwrap_err().to_string();
        assert!(err.contains("interval_secs") || err.contains("invalid type"), "{err}");
        let err = parse(&d, &GOOD.replace("device_id = \"dev-1\"\n", "")).unwrap_err().to_string();
        assert!(err.contains("device_id"), "{err}");
    }

    #[test]
    fn missing_file_is_named() {
        let d = setup();
        let err = parse(&d, &GOOD.replace("ca.pem", "nope.pem")).unwrap_err().to_string();
        assert!(err.contains("[mqtt] ca_file") && err.contains("nope.pem"), "{err}");
        let err = parse(&d, &GOOD.replace("m.onnx", "gone.onnx")).unwrap_err().to_string();
        assert!(err.contains("[[models]] #1") && err.contains("gone.onnx"), "{err}");
    }

    #[test]
    fn ota_keys_and_groups_are_checked() {
        let d = setup();
        let key = "ab".repeat(31);
        let c = parse(&d, &format!("groups = [\"lab\"]\n{GOOD}\n[ota]\ntrusted_keys = [\"{key}\"]\n"));
        let err = c.map(|_| ()).unwrap_err().to_string();
        // 31 bytes: not a public key; refused with its position.
        assert!(err.contains("[ota] trusted_keys") && err.contains("[0]"), "{err}");
        let err = parse(&d, &format!("groups = [\"a/b\"]\n{GOOD}")).unwrap_err().to_string();
        assert!(err.contains("groups[0]"), "{err}");
        let c = parse(&d, &format!("groups = [\"lab\"]\n{GOOD}\n[ota]\nhealth_window_secs = 5\n")).unwrap();
        assert_eq!((c.groups, c.ota.health_window_secs, c.ota.keep_versions), (vec!["lab".to_string()], 5, 3));
    }

    #[test]
    fn plaintext_mqtt_needs_allow_insecure() {
        let d = setup();
        let plain = GOOD.replace("mqtts://", "mqtt://");
        let err = parse(&d, &plain).unwrap_err().to_string();
        assert!(err.contains("[mqtt] url") && err.contains("allow_insecure"), "{err}");
        let allowed = plain.replace("key_file = \"dev.key\"", "key_file = \"dev.key\"\nallow_insecure = true");
        assert!(parse(&d, &allowed).is_ok());
    }

    #[test]
    fn reserved_device_ids_are_refused_saying_why() {
        let d = setup();
        for id in ["group", "operator", "edge-fleet"] {
            let err = parse(&d, &GOOD.replace("device_id = \"dev-1\"", &format!("device_id = \"{id}\"")))
                .unwrap_err()
                .to_string();
            assert!(err.contains("device_id") && err.contains("is reserved") && err.contains("another id"), "{err}");
        }
    }

    #[test]
    fn environment_overrides_device_id_and_url() {
        let d = setup();
        let env = |k: &str| match k {
            ENV_DEVICE_ID => Some("dev-42".to_string()),
            ENV_MQTT_URL => Some("mqtts://other:1883".to_string()),
            _ => None,
        };
        let c = Config::parse(GOOD, &d.0.path().join("agent.toml"), env).unwrap();
        assert_eq!(c.device_id, "dev-42");
        assert_eq!(host_port(&c.mqtt.url), Some(("other".into(), 1883)));
        let bad = |k: &str| (k == ENV_DEVICE_ID).then(|| "a/b".to_string());
        let err = Config::parse(GOOD, &d.0.path().join("agent.toml"), bad).unwrap_err().to_string();
        assert!(err.contains("device_id"), "{err}");
    }
}
