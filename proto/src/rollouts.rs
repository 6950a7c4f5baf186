//! Staged rollouts as the fleet service's HTTP API takes and returns them, shared by
//! `edge-fleet` and `edgectl rollout`.
//!
//! A rollout is a group deployment ([`crate::deployments`]) that the service hands to the
//! group's members wave by wave. Each wave's devices run the new version on trial; the
//! service compares it with the version it replaced on the same devices (requests, the
//! model's failures, p95 latency, from telemetry version 4) against the rollout's gates. A
//! wave that passes admits the next (or waits for an operator's approval); a wave that fails
//! halts the rollout: the service relays the operator's signed cancel, which rolls the
//! wave's devices back, and later waves never receive the model.
//!
//! - `POST /v1/rollouts`: a [`NewRollout`] (the artifact uploaded before); answers the
//!   [`Rollout`];
//! - `GET /v1/rollouts`: every [`Rollout`], newest first;
//! - `GET /v1/rollouts/{id}`: one;
//! - `POST /v1/rollouts/{id}/approve`: lets a rollout waiting for approval go on;
//! - `GET /v1/models/{name}/versions[?since_secs=N]`: a [`VersionReport`], every version of a
//!   model pooled over the devices that ran it (A/B across the fleet).

use serde::{Deserialize, Serialize};

/// What `edgectl rollout` hands to the fleet service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewRollout {
    /// The signed `deploy-model` command for the group, postcard, hex.
    pub command: String,
    /// SHA-256 (hex) of its artifact, uploaded with `PUT /v1/artifacts/{sha256}`.
    pub artifact_sha256: String,
    /// A signed `cancel` of that command for the same group, hex: what the service relays
    /// to the wave's devices when a gate fails (the service cannot sign one itself).
    pub abort_command: String,
    /// Cumulative wave sizes, in order; the last is normally `100%`.
    pub waves: Vec<WaveSize>,
    /// What each wave must show.
    pub gates: Gates,
    /// Wait for `POST /v1/rollouts/{id}/approve` after each wave that passes.
    pub approve_each: bool,
    /// How long a wave may take to have its devices running the version and enough requests
    /// to judge; past it, the wave fails.
    pub wave_timeout_secs: u64,
    /// With a shadow deploy as `command`: a signed `activate` of its version for the group,
    /// which the service relays to a wave's devices when the wave passes (promotion).
    #[serde(default)]
    pub promote_command: Option<String>,
    /// With a shadow deploy: a signed `end-shadow` of the model for the group, relayed to a
    /// wave's devices when the wave fails.
    #[serde(default)]
    pub end_shadow_command: Option<String>,
}

/// How many of the group's members have the version once a wave is admitted (cumulative).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum WaveSize {
    /// So many devices.
    Devices(u32),
    /// This percentage of the members (rounded up), 0 < p <= 100.
    Percent(f64),
}

impl WaveSize {
    /// The number of members out of `members` that have the version once this wave is in:
    /// at least one, at most all.
    pub fn count(self, members: usize) -> usize {
        let n = match self {
            WaveSize::Devices(n) => n as usize,
            WaveSize::Percent(p) => (p / 100.0 * members as f64).ceil() as usize,
        };
        n.clamp(1, members.max(1)).min(members)
    }
}

impl std::str::FromStr for WaveSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Some(p) = s.strip_suffix('%') {
            match p.trim().parse::<f64>() {
                Ok(p) if p > 0.0 && p <= 100.0 => Ok(WaveSize::Percent(p)),
                _ => Err(format!("wave {s:?}: a percentage must be over 0 and at most 100")),
            }
        } else {
            match s.parse::<u32>() {
                Ok(n) if n > 0 => Ok(WaveSize::Devices(n)),
                _ => Err(format!("wave {s:?}: give a number of devices (1 or more) or a percentage such as 10%")),
            }
        }
    }
}

impl TryFrom<String> for WaveSize {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<WaveSize> for String {
    fn from(w: WaveSize) -> String {
        w.to_string()
    }
}

impl std::fmt::Display for WaveSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WaveSize::Devices(n) => write!(f, "{n}"),
            WaveSize::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// Parses `1,10%,50%,100%`. Sizes are cumulative: a wave no larger than the one before
/// adds nobody.
pub fn parse_waves(text: &str) -> Result<Vec<WaveSize>, String> {
    let waves: Vec<WaveSize> = text.split(',').map(str::parse).collect::<Result<_, _>>()?;
    if waves.is_empty() {
        return Err("no wave given".into());
    }
    Ok(waves)
}

/// What a wave must show, pooled over its devices, new version against the one it replaced
/// on the same devices. A gate left out is not checked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gates {
    /// Largest p95 latency of the new version over the old one's.
    pub max_p95_ratio: Option<f64>,
    /// Largest share of the new version's requests that are the model's failures.
    pub max_error_rate: Option<f64>,
    /// Requests the new version must have served across the wave before it is judged.
    pub min_requests: u64,
    /// In shadow: the smallest share of compared requests whose outputs agreed with the
    /// active version's.
    #[serde(default)]
    pub min_agreement: Option<f64>,
}

impl Default for Gates {
    fn default() -> Self {
        Gates { max_p95_ratio: Some(1.5), max_error_rate: Some(0.01), min_requests: 100, min_agreement: None }
    }
}

/// Where a rollout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    /// A wave is on trial.
    Running,
    /// A wave passed; the next waits for `approve`.
    AwaitingApproval,
    /// Every wave passed: every member (and later ones) gets the version.
    Completed,
    /// A wave failed: its devices were sent the cancel; no other device gets the version.
    Halted,
}

impl RolloutState {
    /// Whether nothing more will happen.
    pub fn is_final(self) -> bool {
        matches!(self, RolloutState::Completed | RolloutState::Halted)
    }

    /// Its name in the API and the database.
    pub fn name(self) -> &'static str {
        match self {
            RolloutState::Running => "running",
            RolloutState::AwaitingApproval => "awaiting_approval",
            RolloutState::Completed => "completed",
            RolloutState::Halted => "halted",
        }
    }
}

/// The figures of one device, or of a wave pooled, new version against old.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    /// Requests the new version served.
    pub requests: u64,
    /// Of which the model's failures.
    pub failures: u64,
    /// p95 latency of the new version, ms (upper bound of its histogram bucket).
    pub p95_ms: Option<f64>,
    /// Requests of the version it replaced on the same devices.
    pub old_requests: u64,
    /// p95 latency of the version it replaced, ms.
    pub old_p95_ms: Option<f64>,
    /// In shadow: requests whose outputs were compared with the active version's.
    #[serde(default)]
    pub compared: u64,
    /// Of which agreed.
    #[serde(default)]
    pub agreed: u64,
}

impl Figures {
    /// Failures over requests; 0 without requests.
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.failures as f64 / self.requests as f64
        }
    }

    /// Agreed over compared, when anything was compared.
    pub fn agreement(&self) -> Option<f64> {
        (self.compared > 0).then(|| self.agreed as f64 / self.compared as f64)
    }

    /// New p95 over old p95, when both are known.
    pub fn p95_ratio(&self) -> Option<f64> {
        match (self.p95_ms, self.old_p95_ms) {
            (Some(new), Some(old)) if old > 0.0 => Some(new / old),
            _ => None,
        }
    }
}

/// One wave as the rollout shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Wave {
    /// Its size as given.
    pub size: WaveSize,
    /// The devices it adds.
    pub devices: Vec<String>,
    /// `pending`, `running`, `passed` or `failed`.
    pub state: String,
    /// Its figures, pooled, at the last look.
    pub figures: Option<Figures>,
    /// Each device's, at the last look.
    pub device_figures: Vec<(String, Figures)>,
}

/// A decision the service took, with its numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// When, ms since the Unix epoch.
    pub at: i64,
    /// The wave (0-based).
    pub wave: usize,
    /// `passed`, `failed`, `approved`, `completed`.
    pub verdict: String,
    /// Why, in words with the figures.
    pub reason: String,
}

/// A rollout and where it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    /// The deployment's id (its command id, hex).
    pub id: String,
    /// The group.
    pub group: String,
    /// Model name.
    pub model: String,
    /// Version label.
    pub version: String,
    /// Where it is.
    pub state: RolloutState,
    /// The wave on trial or last judged (0-based).
    pub wave: usize,
    /// Every wave.
    pub waves: Vec<Wave>,
    /// The gates.
    pub gates: Gates,
    /// Every decision, oldest first.
    pub decisions: Vec<Decision>,
    /// Created, ms since the Unix epoch.
    pub created_at: i64,
}

/// A model's versions side by side, each pooled over the devices that report figures of it
/// (cumulative since each agent started; devices silent for longer than the report's window
/// are left out).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionReport {
    /// Model name.
    pub model: String,
    /// Devices whose figures were updated within this many seconds.
    pub since_secs: u64,
    /// Every version reported, by label.
    pub versions: Vec<VersionSummary>,
}

/// One version pooled over devices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionSummary {
    /// Version label.
    pub version: String,
    /// Devices that report figures of it.
    pub devices: u64,
    /// Of which run it now.
    pub active_on: u64,
    /// Requests it served.
    pub requests: u64,
    /// Of which the model's failures.
    pub failures: u64,
    /// Failures over requests.
    pub error_rate: f64,
    /// Latency quantiles, ms (upper bounds of histogram buckets).
    pub p50_ms: Option<f64>,
    /// 95th percentile.
    pub p95_ms: Option<f64>,
    /// 99th percentile.
    pub p99_ms: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wave_sizes_parse_count_and_say_what_is_wrong() {
        let waves = parse_waves("1, 10%,50%,100%").unwrap();
        assert_eq!(
            waves,
            [WaveSize::Devices(1), WaveSize::Percent(10.0), WaveSize::Percent(50.0), WaveSize::Percent(100.0)]
        );
        let counts: Vec<usize> = waves.iter().map(|w| w.count(25)).collect();
        assert_eq!(counts, [1, 3, 13, 25]);
        assert_eq!(WaveSize::Devices(40).count(25), 25);
        assert_eq!(WaveSize::Percent(1.0).count(3), 1, "at least one device");
        assert!(parse_waves("0").unwrap_err().contains("1 or more"));
        assert!(parse_waves("150%").unwrap_err().contains("at most 100"));
        assert!(parse_waves("ten").is_err());
        let json = serde_json::to_string(&waves).unwrap();
        assert_eq!(json, r#"["1","10%","50%","100%"]"#);
        assert_eq!(serde_json::from_str::<Vec<WaveSize>>(&json).unwrap(), waves);
    }
}
