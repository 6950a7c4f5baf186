//! The `[mqtt]` table: the broker URL, the TLS files, the topic prefix and the link's limits.
//!
//! The agent's `edge-agent.toml` and edgectl's `ctl.toml` both hold it, with the same keys
//! and defaults. Relative paths are the caller's to resolve ([`MqttConfig::resolve_paths`]),
//! against the directory of the file that names them.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// `[mqtt]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// `mqtts://host:port` (or `mqtt://` with `allow_insecure`).
    pub url: String,
    /// CA certificate(s) that sign the broker's certificate, PEM.
    pub ca_file: PathBuf,
    /// This device's certificate, PEM.
    pub cert_file: PathBuf,
    /// This device's private key, PKCS#8, SEC1 or PKCS#1 PEM.
    pub key_file: PathBuf,
    /// First topic segment.
    #[serde(default = "default_topic_prefix")]
    pub topic_prefix: String,
    /// Accept `mqtt://` (plaintext). Logged as a warning.
    #[serde(default)]
    pub allow_insecure: bool,
    /// Largest MQTT packet, both ways, in bytes.
    #[serde(default = "default_max_packet_bytes")]
    pub max_packet_bytes: usize,
    /// Network timeout in seconds.
    #[serde(default = "default_network_timeout_secs")]
    pub network_timeout_secs: u64,
    /// MQTT keep-alive in seconds.
    #[serde(default = "default_keep_alive_secs")]
    pub keep_alive_secs: u64,
    /// Longest wait between reconnection attempts, in seconds (delays start at 0.5 s and
    /// double, with jitter).
    #[serde(default = "default_reconnect_max_secs")]
    pub reconnect_max_secs: u64,
}

fn default_topic_prefix() -> String {
    "edge".into()
}
fn default_max_packet_bytes() -> usize {
    256 * 1024
}
fn default_network_timeout_secs() -> u64 {
    30
}
fn default_keep_alive_secs() -> u64 {
    30
}
fn default_reconnect_max_secs() -> u64 {
    60
}

/// A `[mqtt]` value that is well-typed but not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct SettingError {
    /// The key, as `[mqtt] key`.
    pub key: &'static str,
    /// What is wrong with it, and what would be accepted.
    pub message: String,
}

/// Whether `s` is 1-128 characters of `A-Z a-z 0-9 - _ .`: one MQTT topic level, no
/// wildcards, and safe as a file name. Device ids, group names and the topic prefix follow it.
pub fn valid_segment(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// `host:port` of an `mqtt(s)://host:port` URL.
pub fn host_port(url: &str) -> Option<(String, u16)> {
    let rest = url.split_once("://")?.1.trim_end_matches('/');
    let (host, port) = rest.rsplit_once(':')?;
    let port = port.parse().ok()?;
    (!host.is_empty()).then(|| (host.to_string(), port))
}

impl MqttConfig {
    /// Makes the relative `ca_file`, `cert_file` and `key_file` relative to `base` (the
    /// directory of the file that names them).
    pub fn resolve_paths(&mut self, base: &Path) {
        for p in [&mut self.ca_file, &mut self.cert_file, &mut self.key_file] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }

    /// Checks the values serde cannot: the topic prefix, the URL's scheme and `host:port`,
    /// that the TLS files exist, and the limits. The first problem found is returned.
    pub fn check(&self) -> Result<(), SettingError> {
        let bad = |key: &'static str, message: String| Err(SettingError { key, message });
        if !valid_segment(&self.topic_prefix) {
            return bad(
                "[mqtt] topic_prefix",
                format!("{:?} must be one topic level of A-Z a-z 0-9 - _ .", self.topic_prefix),
            );
        }
        let url = &self.url;
        match url.split_once("://").map(|(scheme, _)| scheme) {
            Some("mqtts") => {}
            Some("mqtt") if self.allow_insecure => {}
            Some("mqtt") => {
                return bad(
                    "[mqtt] url",
                    format!("{url:?} is plaintext; use mqtts://, or set allow_insecure = true to accept it"),
                )
            }
            _ => return bad("[mqtt] url", format!("{url:?} is not an mqtts:// URL")),
        }
        if host_port(url).is_none() {
            return bad("[mqtt] url", format!("{url:?} has no host:port"));
        }
        for (key, file) in [
            ("[mqtt] ca_file", &self.ca_file),
            ("[mqtt] cert_file", &self.cert_file),
            ("[mqtt] key_file", &self.key_file),
        ] {
            if !file.is_file() {
                return bad(key, format!("{:?}: no such file", file.display().to_string()));
            }
        }
        if self.max_packet_bytes < 1024 {
            return bad("[mqtt] max_packet_bytes", format!("{} is below 1024", self.max_packet_bytes));
        }
        if self.network_timeout_secs == 0 {
            return bad("[mqtt] network_timeout_secs", "must be at least 1".into());
        }
        if self.reconnect_max_secs == 0 {
            return bad("[mqtt] reconnect_max_secs", "must be at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "url = \"mqtts://broker.example:8883\"\nca_file = \"ca.pem\"\ncert_file = \"dev.pem\"\n\
                           key_file = \"dev.key\"\n";

    /// `MINIMAL` with its three files created in a temporary directory, paths resolved.
    fn with_files(text: &str) -> (tempfile::TempDir, MqttConfig) {
        let dir = tempfile::tempdir().unwrap();
        for f in ["ca.pem", "dev.pem", "dev.key"] {
            std::fs::write(dir.path().join(f), "x").unwrap();
        }
        let mut c: MqttConfig = toml::from_str(text).unwrap();
        c.resolve_paths(dir.path());
        (dir, c)
    }

    #[test]
    fn defaults_fill_every_optional_key() {
        let c: MqttConfig = toml::from_str(MINIMAL).unwrap();
        assert_eq!(c.topic_prefix, "edge");
        assert!(!c.allow_insecure);
        assert_eq!(c.max_packet_bytes, 256 * 1024);
        assert_eq!((c.network_timeout_secs, c.keep_alive_secs, c.reconnect_max_secs), (30, 30, 60));
    }

    #[test]
    fn unknown_and_missing_keys_are_refused_by_name() {
        let err = toml::from_str::<MqttConfig>(&format!("{MINIMAL}keepalive = 5\n")).unwrap_err().to_string();
        assert!(err.contains("keepalive"), "{err}");
        let err = toml::from_str::<MqttConfig>(&MINIMAL.replace("key_file", "# key_file")).unwrap_err().to_string();
        assert!(err.contains("key_file"), "{err}");
    }

    #[test]
    fn relative_paths_are_resolved_and_absolute_ones_kept() {
        let mut c: MqttConfig = toml::from_str(&MINIMAL.replace("\"dev.pem\"", "\"/abs/dev.pem\"")).unwrap();
        c.resolve_paths(Path::new("/etc/edge-agent"));
        assert_eq!(c.ca_file, Path::new("/etc/edge-agent/ca.pem"));
        assert_eq!(c.cert_file, Path::new("/abs/dev.pem"));
        assert_eq!(c.key_file, Path::new("/etc/edge-agent/dev.key"));
    }

    #[test]
    fn a_complete_table_passes_the_checks() {
        let (_dir, c) = with_files(MINIMAL);
        assert_eq!(c.check(), Ok(()));
    }

    #[test]
    fn plaintext_needs_allow_insecure() {
        let (_dir, c) = with_files(&MINIMAL.replace("mqtts://", "mqtt://"));
        let err = c.check().unwrap_err();
        assert_eq!(err.key, "[mqtt] url");
        assert!(err.message.contains("allow_insecure"), "{err}");
        let (_dir, c) = with_files(&format!("{}allow_insecure = true\n", MINIMAL.replace("mqtts://", "mqtt://")));
        assert_eq!(c.check(), Ok(()));
    }

    #[test]
    fn a_url_without_scheme_or_port_is_refused() {
        for url in ["broker.example:8883", "https://broker.example:8883", "mqtts://broker.example", "mqtts://:8883"] {
            let (_dir, c) = with_files(&MINIMAL.replace("mqtts://broker.example:8883", url));
            assert_eq!(c.check().unwrap_err().key, "[mqtt] url", "{url}");
        }
    }

    #[test]
    fn a_missing_tls_file_is_named() {
        let (dir, c) = with_files(MINIMAL);
        std::fs::remove_file(dir.path().join("dev.key")).unwrap();
        let err = c.check().unwrap_err();
        assert_eq!(err.key, "[mqtt] key_file");
        assert!(err.to_string().contains("dev.key") && err.to_string().contains("no such file"), "{err}");
    }

    #[test]
    fn limits_and_prefix_are_checked() {
        for (extra, key) in [
            ("max_packet_bytes = 1023", "[mqtt] max_packet_bytes"),
            ("network_timeout_secs = 0", "[mqtt] network_timeout_secs"),
            ("reconnect_max_secs = 0", "[mqtt] reconnect_max_secs"),
            ("topic_prefix = \"a/b\"", "[mqtt] topic_prefix"),
            ("topic_prefix = \"\"", "[mqtt] topic_prefix"),
        ] {
            let (_dir, c) = with_files(&format!("{MINIMAL}{extra}\n"));
            assert_eq!(c.check().unwrap_err().key, key, "{extra}");
        }
    }

    #[test]
    fn host_port_takes_the_last_colon_and_a_trailing_slash() {
        assert_eq!(host_port("mqtts://b.example:8883/"), Some(("b.example".into(), 8883)));
        assert_eq!(host_port("mqtts://[::1]:8883"), Some(("[::1]".into(), 8883)));
        assert_eq!(host_port("mqtts://b.example:port"), None);
        assert_eq!(host_port("b.example:8883"), None);
    }

    #[test]
    fn segments_are_one_safe_topic_level() {
        assert!(valid_segment("dev-1_a.b"));
        for bad in ["", "a/b", "a+", "#", "a b", &"x".repeat(129)] {
            assert!(!valid_segment(bad), "{bad:?}");
        }
    }
}
