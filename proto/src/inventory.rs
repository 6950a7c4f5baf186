//! The fleet service's device inventory as its HTTP API returns it (`GET /v1/devices`),
//! shared by `edge-fleet`, which serves it, and `edgectl devices`, which reads it.
//!
//! JSON, one array of [`Device`]: `{device, online, groups, last_seen, agent_version,
//! cert_not_after, models: [{name, active_version, installed_versions, health}]}`.

use serde::{Deserialize, Serialize};

use crate::command::ModelStatus;

/// What the inventory knows of one device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// Device id (its certificate's CN, its topic level).
    pub device: String,
    /// Whether its last retained status says `online`.
    pub online: bool,
    /// Its groups, sorted.
    pub groups: Vec<String>,
    /// Newest timestamp the device put in a message, milliseconds since the Unix epoch.
    pub last_seen: Option<i64>,
    /// Agent version.
    pub agent_version: Option<String>,
    /// End of validity of its MQTT certificate, seconds since the Unix epoch.
    pub cert_not_after: Option<i64>,
    /// Its models, by name.
    pub models: Vec<ModelStatus>,
}
