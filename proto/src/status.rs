//! The retained status message: `online` on every connect, `offline` as the last will.

use serde::{Deserialize, Serialize};

use crate::codec::Versioned;

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
    /// Names of the loaded models.
    pub models: Vec<String>,
    /// Seconds since the agent started (0 in the last will).
    pub uptime_secs: u64,
    /// When this status was made, milliseconds since the Unix epoch.
    pub ts: u64,
}

impl Versioned for Status {
    const VERSION: u16 = 1;
    fn version(&self) -> u16 {
        self.version
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode, encode};

    #[test]
    fn round_trips() {
        let s = Status {
            version: Status::VERSION,
            device: "dev-1".into(),
            state: State::Online,
            agent_version: "0.1.0".into(),
            models: vec!["wake".into()],
            uptime_secs: 3,
            ts: 1,
        };
        assert_eq!(decode::<Status>(&encode(&s)).unwrap(), s);
    }
}
