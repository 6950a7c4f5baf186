//! The fleet service's deployments as its HTTP API takes and returns them, shared by
//! `edge-fleet`, which serves them, and `edgectl`, which creates and watches them.
//!
//! A deployment is a signed `deploy-model` command that the fleet service keeps delivering
//! to its target (a device, or every member of a group, including members that join later)
//! until it is superseded, cancelled or expires. The service relays the command as the
//! operator signed it: it cannot make or change one.
//!
//! - `PUT /v1/artifacts/{sha256}`: the artifact (model plus validation vector), raw bytes;
//! - `POST /v1/deployments`: a [`NewDeployment`]; answers the [`Deployment`];
//! - `GET /v1/deployments`: every [`Deployment`], newest first, without `devices`;
//! - `GET /v1/deployments/{id}`: one, with `devices`;
//! - `POST /v1/deployments/{id}/cancel`: a [`CancelDeployment`]; answers the [`Deployment`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What `edgectl deploy` hands to the fleet service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewDeployment {
    /// The signed `Command` (payload `DeployModel`), postcard, as hex.
    pub command: String,
    /// SHA-256 (hex) of the artifact, uploaded before with `PUT /v1/artifacts/{sha256}`.
    pub artifact_sha256: String,
}

/// What `edgectl deployments cancel` hands to the fleet service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelDeployment {
    /// A signed `Command` with payload `Cancel { command_id }` naming the deployment, for the
    /// same target, as hex. The service relays it to the devices that are still transferring
    /// or inside their health window.
    pub command: String,
}

/// Where a deployment goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetKind {
    /// One device.
    Device,
    /// Every member of a group, now and later.
    Group,
}

/// A deployment and its progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    /// The command id, hex: the deployment's id.
    pub id: String,
    /// Device or group.
    pub target_kind: TargetKind,
    /// The device id or the group name.
    pub target: String,
    /// Model name.
    pub model: String,
    /// Version label.
    pub version: String,
    /// `active`, `completed` (a single device is done), `superseded`, `cancelled` or
    /// `expired`.
    pub state: String,
    /// The deployment that replaced this one, when superseded.
    pub superseded_by: Option<String>,
    /// When the service stored it, ms since the Unix epoch.
    pub created_at: i64,
    /// When the signed command expires, ms since the Unix epoch: devices not reached by
    /// then need a new deployment.
    pub expires_at: i64,
    /// Artifact size in bytes.
    pub artifact_bytes: u64,
    /// Chunk bytes published to its devices, all together: with delta transfers, devices
    /// that hold an earlier version receive only what changed.
    #[serde(default)]
    pub bytes_sent: u64,
    /// How many devices are in each state (see [`DeviceProgress::state`]).
    pub counts: BTreeMap<String, u32>,
    /// One per device the deployment has met, by device id (only `GET
    /// /v1/deployments/{id}` fills it).
    #[serde(default)]
    pub devices: Vec<DeviceProgress>,
}

/// One device's progress in a deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceProgress {
    /// Device id.
    pub device: String,
    /// `pending` (not sent yet: offline), `sent`, `transferring`, `installing`,
    /// `succeeded`, `failed`, `rejected`, `cancelled`, `superseded` or `expired`.
    pub state: String,
    /// Percent of the transfer while `transferring`.
    pub progress: Option<u8>,
    /// The device's reason for `failed` and `rejected`, or a note.
    pub detail: Option<String>,
    /// How many times the command was sent.
    pub attempts: u32,
    /// Last change, ms since the Unix epoch.
    pub updated_at: i64,
    /// Chunk bytes published to the device (repairs included).
    #[serde(default)]
    pub bytes_sent: u64,
}

/// The device states after which nothing more happens.
pub const TERMINAL_STATES: &[&str] = &["succeeded", "failed", "rejected", "cancelled", "superseded", "expired"];

/// Whether `state` is one of [`TERMINAL_STATES`].
pub fn is_terminal(state: &str) -> bool {
    TERMINAL_STATES.contains(&state)
}

/// Lower-case hex of `bytes`.
pub fn to_hex(bytes: &[u8]) -> String {
    crate::command::hex(bytes)
}

/// Bytes of a hex string; `None` when it is not an even number of hex digits.
pub fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_refuses_odd_or_foreign_digits() {
        let bytes = vec![0u8, 1, 0xab, 0xff];
        assert_eq!(from_hex(&to_hex(&bytes)), Some(bytes));
        assert_eq!(from_hex("abc"), None);
        assert_eq!(from_hex("zz"), None);
        assert_eq!(from_hex(""), Some(vec![]));
    }

    #[test]
    fn a_deployment_reads_back_from_its_json() {
        let d = Deployment {
            id: "00".repeat(16),
            target_kind: TargetKind::Group,
            target: "cams".into(),
            model: "det".into(),
            version: "2".into(),
            state: "active".into(),
            superseded_by: None,
            created_at: 1,
            expires_at: 2,
            artifact_bytes: 3,
            bytes_sent: 2,
            counts: [("pending".to_string(), 1)].into(),
            devices: vec![DeviceProgress {
                device: "d1".into(),
                state: "sent".into(),
                progress: None,
                detail: None,
                attempts: 1,
                updated_at: 5,
                bytes_sent: 2,
            }],
        };
        let text = serde_json::to_string(&d).unwrap();
        assert!(text.contains("\"target_kind\":\"group\""), "{text}");
        assert_eq!(serde_json::from_str::<Deployment>(&text).unwrap(), d);
    }
}
