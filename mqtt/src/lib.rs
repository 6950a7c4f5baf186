//! The broker settings and the TLS set-up that edge-agent and edgectl share, so that the
//! operator's CLI connects exactly as devices do without linking the agent (and tract).
//!
//! No tokio, no rumqttc: the settings are plain serde types with their checks, and the TLS
//! set-up returns a rustls [`rustls::ClientConfig`] that each side hands to rumqttc as
//! `TlsConfiguration::Rustls`.
//!
//! # Layout
//!
//! - [`config`]: the `[mqtt]` table ([`MqttConfig`]) with its defaults, the checks the agent
//!   runs at start ([`MqttConfig::check`]), relative paths ([`MqttConfig::resolve_paths`]),
//!   and [`host_port`] for the URL.
//! - [`tls`]: [`client_config`], the mutual-TLS client configuration from the CA,
//!   certificate and key PEM files that `[mqtt]` names, with the ring provider passed
//!   explicitly; [`TlsError`] names the file at fault and what to do about it.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mqtt: edge_mqtt::MqttConfig = toml::from_str(
//!     r#"
//!     url = "mqtts://broker.example:8883"
//!     ca_file = "/etc/edge-agent/ca.pem"
//!     cert_file = "/etc/edge-agent/device.pem"
//!     key_file = "/etc/edge-agent/device.key"
//!     "#,
//! )?;
//! mqtt.check()?;
//! let (host, port) = edge_mqtt::host_port(&mqtt.url).expect("checked");
//! let tls = edge_mqtt::client_config(&mqtt.ca_file, &mqtt.cert_file, &mqtt.key_file)?;
//! # let _ = (host, port, tls);
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

pub mod cert;
pub mod config;
pub mod tls;

pub use config::{host_port, valid_segment, MqttConfig, SettingError};
pub use tls::{client_config, TlsError};
