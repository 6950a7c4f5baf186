//! The retained status message: `online` on every connect (and again when the device's
//! models change), `offline` as the last will.
//!
//! Version 2 appended `groups` and `model_states` (per model: active and installed
//! versions, health: what `get-status` answers) to version 1, whose `models` held only the
//! names of the models loaded at start. [`decode`] reads both; a version 1 status decodes
//! with no groups and no per-model states. `models` is still filled (the names), so that
//! tools reading only names keep working on either version.

use serde::{Deserialize, Serialize};

use crate::codec::{ProtoError, Versioned};
use crate::command::ModelStatus;

/// Whether the device is connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum State {
    /// Connected; published by the agent on every connect.
    Online,
    /// Gone; published by the broker as the agent's last will, or by the agent on shutdown.
    Offline,
}

/// The retained status of one device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// Schema version, [`Status::VERSION`].
    pub version: u16,
    /// Device id.
    pub device: String,
    /// Online or offline.
    pub state: State,
    /// Agent version.
    pub agent_version: String,
    /// Names of the models.
    pub models: Vec<String>,
    /// Seconds since the agent started (0 in the last will).
    pub uptime_secs: u64,
    /// When this status was made, milliseconds since the Unix epoch.
    pub ts: u64,
    /// The groups the device is a member of (its `groups` setting). Since version 2.
    pub groups: Vec<String>,
    /// Every model the device knows: active and installed versions, health, as
    /// `get-status` reports them. Since version 2; empty in a version 1 status.
    pub model_states: Vec<ModelStatus>,
}

impl Versioned for Status {
    const VERSION: u16 = 2;
    fn version(&self) -> u16 {
        self.version
    }
}

/// Version 1: version 2 without its last two fields. Read, never written.
#[derive(Deserialize)]
struct StatusV1 {
    version: u16,
    device: String,
    state: State,
    agent_version: String,
    models: Vec<String>,
    uptime_secs: u64,
    ts: u64,
}

impl Versioned for StatusV1 {
    const VERSION: u16 = 1;
    fn version(&self) -> u16 {
        self.version
    }
}

impl From<StatusV1> for Status {
    fn from(v: StatusV1) -> Status {
        Status {
            version: v.version,
            device: v.device,
            state: v.state,
            agent_version: v.agent_version,
            models: v.models,
            uptime_secs: v.uptime_secs,
            ts: v.ts,
            groups: Vec::new(),
            model_states: Vec::new(),
        }
    }
}

/// Decodes a status of any version this build reads (1 and 2).
pub fn decode(bytes: &[u8]) -> Result<Status, ProtoError> {
    match crate::codec::decode::<Status>(bytes) {
        Err(ProtoError::UnknownVersion { found: 1, .. }) => crate::codec::decode::<StatusV1>(bytes).map(Status::from),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::encode;

    fn sample() -> Status {
        Status {
            version: Status::VERSION,
            device: "dev-1".into(),
            state: State::Online,
            agent_version: "0.1.0".into(),
            models: vec!["wake".into()],
            uptime_secs: 3,
            ts: 1,
            groups: vec!["cams".into()],
            model_states: vec![ModelStatus {
                name: "wake".into(),
                active_version: Some("2".into()),
                installed_versions: vec!["1".into(), "2".into()],
                health: "ok".into(),
            }],
        }
    }

    #[test]
    fn round_trips() {
        let s = sample();
        assert_eq!(decode(&encode(&s)).unwrap(), s);
        assert_eq!(crate::codec::decode::<Status>(&encode(&s)).unwrap(), s);
    }

    #[test]
    fn a_version_1_status_still_decodes_without_groups_or_model_states() {
        // Version 1 is version 2 without the last two fields: two empty sequences, one 0
        // byte each, cut off the encoding.
        let mut s = sample();
        s.version = 1;
        s.groups.clear();
        s.model_states.clear();
        let mut bytes = encode(&s);
        assert_eq!(bytes.pop(), Some(0), "an empty model_states is one 0 byte");
        assert_eq!(bytes.pop(), Some(0), "empty groups is one 0 byte");
        assert_eq!(decode(&bytes).unwrap(), s);
        assert!(matches!(crate::codec::decode::<Status>(&bytes), Err(ProtoError::UnknownVersion { found: 1, .. })));
    }

    #[test]
    fn unknown_versions_and_truncated_statuses_are_refused() {
        let mut s = sample();
        s.version = 3;
        assert!(matches!(decode(&encode(&s)), Err(ProtoError::UnknownVersion { found: 3, .. })));
        let bytes = encode(&sample());
        assert!(matches!(decode(&bytes[..bytes.len() - 3]), Err(ProtoError::Malformed(_))));
    }
}
