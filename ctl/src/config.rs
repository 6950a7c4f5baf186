//! `ctl.toml`: the agent's `[mqtt]` table, plus the operator's signing key.
//!
//! ```toml
//! signing_key = "operator.key"   # optional; relative to this file's directory
//! fleet_id = "prod"              # optional: the devices' [ota] fleet_id
//!
//! [mqtt]
//! url = "mqtts://broker:8883"
//! ca_file = "ca.pem"
//! cert_file = "operator.pem"
//! key_file = "operator-key.pem"
//!
//! [fleet]                        # optional: the fleet service (edge-fleet): devices, deployments
//! url = "http://fleet.example:9200"
//! token_file = "fleet-token"     # optional: the token of edge-fleet's [http] token_file
//! ```
//!
//! Relative paths are taken from the directory of `ctl.toml`; command-line flags
//! ([`Overrides`]) replace the file's values.
//!
//! Without `--config` (or `EDGECTL_CONFIG`), edgectl reads the first of [`search_path`]
//! that exists: `./ctl.toml`, `$XDG_CONFIG_HOME/edgectl/ctl.toml` (by default
//! `~/.config/edgectl/ctl.toml`), `/etc/edgectl/ctl.toml`.

use std::path::{Path, PathBuf};

use edge_mqtt::MqttConfig;
use edge_proto::command::SigningKey;
use serde::Deserialize;

use crate::keys::{load_signing_key, KeyError, Signer};

/// What went wrong loading the configuration or the key it names.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("config {}: {source}", path.display())]
    Read {
        /// The configuration file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown or missing keys.
    #[error("config {}: {message}", path.display())]
    Parse {
        /// The configuration file.
        path: PathBuf,
        /// What the parser says, with the position.
        message: String,
    },
    /// No `--config` and none of the default places holds a configuration.
    #[error(
        "no configuration: none of {} exists; pass --config FILE or set EDGECTL_CONFIG",
        .0.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    NotFound(Vec<PathBuf>),
    /// A command needs a signing key and none is configured.
    #[error(
        "no signing key: pass --signing-key FILE or add `signing_key = \"operator.key\"` at the top of {} \
         (make a key pair with `edgectl keygen --out DIR`)",
        .0.display()
    )]
    NoSigningKey(PathBuf),
    /// A command needs the fleet service and `[fleet] url` is not set.
    #[error(
        "no fleet service configured: add\n[fleet]\nurl = \"http://HOST:9200\"\nto {} (the address of edge-fleet's \
         [http] listen)",
        .0.display()
    )]
    NoFleet(PathBuf),
    /// `[fleet] token_file` cannot be read.
    #[error("[fleet] token_file {}: {reason}; it holds the token of edge-fleet's [http] token_file", path.display())]
    TokenFile {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The signing key file cannot be read or is malformed.
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// `ctl.toml` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CtlFile {
    /// Operator signing key (`edgectl keygen`'s operator.key).
    #[serde(default)]
    signing_key: Option<PathBuf>,
    /// The fleet commands are signed for: the devices' `[ota] fleet_id`.
    #[serde(default)]
    fleet_id: String,
    mqtt: MqttConfig,
    #[serde(default)]
    fleet: Option<FleetConfig>,
}

/// `[fleet]`: where the fleet service's HTTP API is.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    /// `http://host:port` of edge-fleet's `[http] listen`.
    pub url: String,
    /// A file holding the service's API token (its `[http] token_file`), if it needs one.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

/// Command-line values that replace the file's.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `[mqtt] url`.
    pub url: Option<String>,
    /// `[mqtt] ca_file`.
    pub ca_file: Option<PathBuf>,
    /// `[mqtt] cert_file`.
    pub cert_file: Option<PathBuf>,
    /// `[mqtt] key_file`.
    pub key_file: Option<PathBuf>,
    /// `signing_key`.
    pub signing_key: Option<PathBuf>,
    /// `fleet_id`.
    pub fleet_id: Option<String>,
}

/// The loaded configuration, paths resolved and overrides applied.
#[derive(Debug, Clone)]
pub struct CtlConfig {
    /// Where it was read from.
    pub path: PathBuf,
    /// The broker connection, as the agent's `[mqtt]`.
    pub mqtt: MqttConfig,
    /// The signing key file, if one is configured.
    pub signing_key: Option<PathBuf>,
    /// The fleet commands are signed for; empty for the unnamed fleet.
    pub fleet_id: String,
    /// The fleet service, if one is configured.
    pub fleet: Option<FleetConfig>,
}

impl CtlConfig {
    /// Parses `text` as the contents of `path`, resolving relative paths against the
    /// directory of `path` and applying `overrides` (whose paths are taken as given).
    pub fn parse(text: &str, path: &Path, overrides: &Overrides) -> Result<CtlConfig, ConfigError> {
        let file: CtlFile =
            toml::from_str(text).map_err(|e| ConfigError::Parse { path: path.into(), message: one_line(&e) })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut mqtt = file.mqtt;
        mqtt.resolve_paths(base);
        let mut signing_key = file.signing_key.map(|p| if p.is_relative() { base.join(p) } else { p });
        if let Some(u) = &overrides.url {
            mqtt.url = u.clone();
        }
        for (flag, target) in [
            (&overrides.ca_file, &mut mqtt.ca_file),
            (&overrides.cert_file, &mut mqtt.cert_file),
            (&overrides.key_file, &mut mqtt.key_file),
        ] {
            if let Some(v) = flag {
                *target = v.clone();
            }
        }
        if let Some(k) = &overrides.signing_key {
            signing_key = Some(k.clone());
        }
        let mut fleet = file.fleet;
        if let Some(t) = fleet.as_mut().and_then(|f| f.token_file.as_mut()).filter(|t| t.is_relative()) {
            *t = base.join(&*t);
        }
        let fleet_id = overrides.fleet_id.clone().unwrap_or(file.fleet_id);
        if !fleet_id.is_empty() && !edge_proto::topics::valid_level(&fleet_id) {
            return Err(ConfigError::Parse {
                path: path.into(),
                message: format!("fleet_id {fleet_id:?} must be a name without '/', '+', '#'"),
            });
        }
        Ok(CtlConfig { path: path.into(), mqtt, signing_key, fleet_id, fleet })
    }

    /// Reads and parses `path`; see [`CtlConfig::parse`].
    pub fn load(path: &Path, overrides: &Overrides) -> Result<CtlConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        CtlConfig::parse(&text, path, overrides)
    }

    /// The fleet service's URL.
    pub fn fleet_url(&self) -> Result<&str, ConfigError> {
        self.fleet.as_ref().map(|f| f.url.as_str()).ok_or_else(|| ConfigError::NoFleet(self.path.clone()))
    }

    /// The fleet service: its URL and, with `[fleet] token_file`, the token read from it.
    pub fn fleet_service(&self) -> Result<crate::fleet::Service, ConfigError> {
        let f = self.fleet.as_ref().ok_or_else(|| ConfigError::NoFleet(self.path.clone()))?;
        let token = match &f.token_file {
            None => None,
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| ConfigError::TokenFile { path: path.clone(), reason: e.to_string() })?;
                let token = text.trim().to_string();
                if token.is_empty() {
                    return Err(ConfigError::TokenFile { path: path.clone(), reason: "the file is empty".into() });
                }
                Some(token)
            }
        };
        Ok(crate::fleet::Service { url: f.url.clone(), token })
    }

    /// The configured signing key, signing for the configured fleet.
    pub fn signer(&self) -> Result<Signer, ConfigError> {
        Ok(Signer { key: self.signing_key()?, fleet: self.fleet_id.clone(), cosignable: false })
    }

    /// Loads the configured signing key.
    pub fn signing_key(&self) -> Result<SigningKey, ConfigError> {
        let path = self.signing_key.as_ref().ok_or_else(|| ConfigError::NoSigningKey(self.path.clone()))?;
        Ok(load_signing_key(path)?)
    }
}

/// Where edgectl looks for its configuration when none is named, in order; `env` reads an
/// environment variable (`XDG_CONFIG_HOME`, `HOME`).
pub fn search_path(env: impl Fn(&str) -> Option<std::ffi::OsString>) -> Vec<PathBuf> {
    let mut places = vec![PathBuf::from("ctl.toml")];
    let xdg = env("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| env("HOME").filter(|v| !v.is_empty()).map(|h| PathBuf::from(h).join(".config")));
    if let Some(dir) = xdg {
        places.push(dir.join("edgectl").join("ctl.toml"));
    }
    places.push(PathBuf::from("/etc/edgectl/ctl.toml"));
    places
}

/// The configuration file to read: `explicit` when given, else the first of [`search_path`]
/// for which `exists` holds.
pub fn locate(
    explicit: Option<&Path>,
    env: impl Fn(&str) -> Option<std::ffi::OsString>,
    exists: impl Fn(&Path) -> bool,
) -> Result<PathBuf, ConfigError> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    let places = search_path(env);
    places.iter().find(|p| exists(p)).cloned().ok_or(ConfigError::NotFound(places))
}

/// toml's messages span several lines (a source excerpt); operators get one.
fn one_line(e: &toml::de::Error) -> String {
    let msg = e.message().trim().to_string();
    match e.span() {
        Some(span) => format!("{msg} (at byte {})", span.start),
        None => msg,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MQTT: &str =
        "[mqtt]\nurl = \"mqtts://b:8883\"\nca_file = \"ca.pem\"\ncert_file = \"/abs/op.pem\"\nkey_file = \"op.key\"\n";

    #[test]
    fn relative_paths_are_taken_from_the_config_directory() {
        let text = format!("signing_key = \"keys/operator.key\"\n{MQTT}");
        let c = CtlConfig::parse(&text, Path::new("/etc/edgectl/ctl.toml"), &Overrides::default()).unwrap();
        assert_eq!(c.mqtt.ca_file, Path::new("/etc/edgectl/ca.pem"));
        assert_eq!(c.mqtt.cert_file, Path::new("/abs/op.pem"));
        assert_eq!(c.signing_key.as_deref(), Some(Path::new("/etc/edgectl/keys/operator.key")));
    }

    #[test]
    fn flags_override_the_file() {
        let text = format!("signing_key = \"operator.key\"\n{MQTT}");
        let o = Overrides {
            url: Some("mqtts://other:1".into()),
            key_file: Some("here.key".into()),
            signing_key: Some("mine.key".into()),
            ..Overrides::default()
        };
        let c = CtlConfig::parse(&text, Path::new("/etc/ctl.toml"), &o).unwrap();
        assert_eq!(c.mqtt.url, "mqtts://other:1");
        assert_eq!(c.mqtt.key_file, Path::new("here.key"));
        assert_eq!(c.signing_key.as_deref(), Some(Path::new("mine.key")));
        assert_eq!(c.fleet_id, "");
    }

    #[test]
    fn the_fleet_id_comes_from_the_file_or_the_flag() {
        let text = format!("fleet_id = \"prod\"\n{MQTT}");
        let c = CtlConfig::parse(&text, Path::new("/etc/ctl.toml"), &Overrides::default()).unwrap();
        assert_eq!(c.fleet_id, "prod");
        let o = Overrides { fleet_id: Some("staging".into()), ..Overrides::default() };
        assert_eq!(CtlConfig::parse(&text, Path::new("/etc/ctl.toml"), &o).unwrap().fleet_id, "staging");
        let bad = format!("fleet_id = \"a/b\"\n{MQTT}");
        assert!(CtlConfig::parse(&bad, Path::new("/etc/ctl.toml"), &Overrides::default()).is_err());
    }

    #[test]
    fn no_signing_key_tells_how_to_configure_one() {
        let c = CtlConfig::parse(MQTT, Path::new("/etc/ctl.toml"), &Overrides::default()).unwrap();
        let err = c.signing_key().unwrap_err().to_string();
        assert!(err.contains("--signing-key") && err.contains("/etc/ctl.toml") && err.contains("keygen"), "{err}");
    }

    #[test]
    fn the_fleet_table_is_optional_and_its_absence_says_how_to_add_it() {
        let c = CtlConfig::parse(MQTT, Path::new("/etc/ctl.toml"), &Overrides::default()).unwrap();
        let err = c.fleet_url().unwrap_err().to_string();
        assert!(err.contains("[fleet]") && err.contains("url = ") && err.contains("/etc/ctl.toml"), "{err}");
        let text = format!("{MQTT}[fleet]\nurl = \"http://fleet:9200\"\n");
        let c = CtlConfig::parse(&text, Path::new("/etc/ctl.toml"), &Overrides::default()).unwrap();
        assert_eq!(c.fleet_url().unwrap(), "http://fleet:9200");
    }

    #[test]
    fn a_configured_key_that_is_missing_names_the_file() {
        let text = format!("signing_key = \"operator.key\"\n{MQTT}");
        let c = CtlConfig::parse(&text, Path::new("/nonexistent/ctl.toml"), &Overrides::default()).unwrap();
        let err = c.signing_key().unwrap_err().to_string();
        assert!(err.contains("/nonexistent/operator.key"), "{err}");
    }

    #[test]
    fn without_config_the_first_existing_default_place_is_read() {
        let env = |k: &str| match k {
            "HOME" => Some("/home/op".into()),
            _ => None,
        };
        assert_eq!(
            search_path(env),
            [Path::new("ctl.toml"), Path::new("/home/op/.config/edgectl/ctl.toml"), Path::new("/etc/edgectl/ctl.toml")]
        );
        let only_etc = |p: &Path| p.starts_with("/etc");
        assert_eq!(locate(None, env, only_etc).unwrap(), Path::new("/etc/edgectl/ctl.toml"));
        let home_too = |p: &Path| p.starts_with("/etc") || p.starts_with("/home");
        assert_eq!(locate(None, env, home_too).unwrap(), Path::new("/home/op/.config/edgectl/ctl.toml"));
        let xdg = |k: &str| (k == "XDG_CONFIG_HOME").then(|| "/x".into());
        assert_eq!(locate(None, xdg, |p| p.starts_with("/x")).unwrap(), Path::new("/x/edgectl/ctl.toml"));
        // An explicit file (--config or EDGECTL_CONFIG) is taken as is, even if missing:
        // reading it then names it.
        assert_eq!(locate(Some(Path::new("mine.toml")), env, |_| false).unwrap(), Path::new("mine.toml"));
    }

    #[test]
    fn no_configuration_anywhere_lists_the_places_and_what_to_do() {
        let err = locate(None, |_| None, |_| false).unwrap_err().to_string();
        assert!(err.contains("ctl.toml, /etc/edgectl/ctl.toml"), "{err}");
        assert!(err.contains("--config") && err.contains("EDGECTL_CONFIG"), "{err}");
    }

    #[test]
    fn unknown_keys_are_refused_on_one_line() {
        let err = CtlConfig::parse(&format!("signing_kee = \"x\"\n{MQTT}"), Path::new("c.toml"), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("config c.toml: ") && err.contains("signing_kee"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }
}
