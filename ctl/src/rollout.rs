//! Staged rollouts through the fleet service (`edgectl rollout`): edgectl signs the group
//! deployment and, beside it, a cancel of it (the service relays that cancel when a wave
//! fails: it cannot sign one), uploads the artifact and hands both over with the waves and
//! gates ([`edge_proto::rollouts`]). The service runs the rollout; edgectl follows it by
//! polling `GET /v1/rollouts/{id}`, from any machine, at any time ([`news`]).
//!
//! Gates come from flags or a policy file (TOML), flags winning:
//!
//! ```toml
//! waves = "1,10%,50%,100%"
//! max_p95_ratio = 1.3
//! max_error_rate = 0.01
//! min_requests = 200
//! min_agreement = 0.98     # in shadow (--shadow PCT)
//! wave_timeout_secs = 1800
//! approve_each = false
//! ```

use std::path::Path;
use std::time::Duration;

use edge_proto::command::{hex, Payload, Target};
use edge_proto::rollouts::{parse_waves, Decision, Gates, NewRollout, Rollout, WaveSize};
use serde::Deserialize;

use crate::command::{now_ms, random_id, signed_command};
use crate::deploy::{plan, DeployError, DeployRequest};
use crate::deployments::FleetDeployError;
use crate::fleet;
use crate::keys::Signer;

/// How long a wave may take by default to run the version on its devices and see enough
/// requests.
pub const DEFAULT_WAVE_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// A policy file's settings; every one optional.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Waves, as `--waves`.
    pub waves: Option<String>,
    /// `--max-p95-ratio`.
    pub max_p95_ratio: Option<f64>,
    /// `--max-error-rate`.
    pub max_error_rate: Option<f64>,
    /// `--min-requests`.
    pub min_requests: Option<u64>,
    /// `--min-agreement` (in shadow).
    pub min_agreement: Option<f64>,
    /// `--wave-timeout`, seconds.
    pub wave_timeout_secs: Option<u64>,
    /// `--approve-each`.
    pub approve_each: Option<bool>,
}

impl Policy {
    /// Reads a policy file.
    pub fn load(path: &Path) -> Result<Policy, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("--policy {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("--policy {}: {e}", path.display()))
    }

    /// These settings, each overridden by the one of `flags` that is set.
    pub fn or(self, flags: Policy) -> Policy {
        Policy {
            waves: flags.waves.or(self.waves),
            max_p95_ratio: flags.max_p95_ratio.or(self.max_p95_ratio),
            max_error_rate: flags.max_error_rate.or(self.max_error_rate),
            min_requests: flags.min_requests.or(self.min_requests),
            min_agreement: flags.min_agreement.or(self.min_agreement),
            wave_timeout_secs: flags.wave_timeout_secs.or(self.wave_timeout_secs),
            approve_each: flags.approve_each.or(self.approve_each),
        }
    }

    /// The waves, gates, approval and wave timeout these settings give, with the defaults
    /// of [`Gates::default`], waves `1,10%,50%,100%` and [`DEFAULT_WAVE_TIMEOUT`] for what
    /// is left out.
    pub fn resolve(&self) -> Result<(Vec<WaveSize>, Gates, bool, Duration), String> {
        let waves = parse_waves(self.waves.as_deref().unwrap_or("1,10%,50%,100%"))?;
        let d = Gates::default();
        let gates = Gates {
            max_p95_ratio: self.max_p95_ratio.or(d.max_p95_ratio),
            max_error_rate: self.max_error_rate.or(d.max_error_rate),
            min_requests: self.min_requests.unwrap_or(d.min_requests),
            min_agreement: self.min_agreement,
        };
        if gates.min_agreement.is_some_and(|r| !(0.0..=1.0).contains(&r)) {
            return Err("min_agreement is a share between 0 and 1 (e.g. 0.98)".into());
        }
        if gates.max_p95_ratio.is_some_and(|r| r.is_nan() || r <= 0.0) {
            return Err("max_p95_ratio must be over 0 (e.g. 1.3: at most 30 % slower)".into());
        }
        if gates.max_error_rate.is_some_and(|r| !(0.0..=1.0).contains(&r)) {
            return Err("max_error_rate is a share between 0 and 1 (e.g. 0.01 for 1 %)".into());
        }
        let timeout = self.wave_timeout_secs.map_or(DEFAULT_WAVE_TIMEOUT, Duration::from_secs);
        if timeout.is_zero() {
            return Err("the wave timeout must be over 0 seconds".into());
        }
        Ok((waves, gates, self.approve_each.unwrap_or(false), timeout))
    }
}

/// The longest a device takes a pre-signed promotion or end of shadow for (they are not
/// deployments: agents cap them at `[ota] max_command_lifetime_secs`, 24 h by default). A
/// shadow rollout must be through within it.
pub const SHADOW_COMMAND_TTL: Duration = Duration::from_secs(24 * 3600);

/// Plans and signs `req` (a group deployment, or with `req.shadow` a shadow deploy with its
/// promotion and end of shadow) and its cancel, uploads the artifact and starts the rollout
/// on the service.
pub async fn start(
    svc: &fleet::Service,
    signer: &Signer,
    req: &DeployRequest,
    policy: &Policy,
    max_packet_bytes: usize,
) -> Result<Rollout, FleetDeployError> {
    if !matches!(req.target, Target::Group(_)) {
        return Err(DeployError::Rollout("a rollout goes to a group: give --group".into()).into());
    }
    let (waves, gates, approve_each, timeout) = policy.resolve().map_err(DeployError::Rollout)?;
    let now = now_ms();
    let plan = plan(req, signer, random_id()?, random_id()?, now, max_packet_bytes)?;
    let (_, abort) = signed_command(
        random_id()?,
        now,
        req.ttl,
        req.target.clone(),
        Payload::Cancel { command_id: plan.command.id },
        signer,
        max_packet_bytes,
        "",
    )?;
    let (mut promote_command, mut end_shadow_command) = (None, None);
    if req.shadow.is_some() {
        if gates.min_agreement.is_none() {
            return Err(DeployError::Rollout("a shadow rollout needs --min-agreement (e.g. 0.98)".into()).into());
        }
        let sign = |payload| {
            let ttl = req.ttl.min(SHADOW_COMMAND_TTL);
            signed_command(random_id()?, now, ttl, req.target.clone(), payload, signer, max_packet_bytes, "")
                .map(|(_, bytes)| hex(&bytes))
        };
        promote_command = Some(sign(Payload::Activate { name: req.name.clone(), version: req.version.clone() })?);
        end_shadow_command = Some(sign(Payload::EndShadow { name: req.name.clone() })?);
    }
    let sha256 = hex(&edge_proto::ota::sha256(&plan.artifact));
    fleet::upload_artifact(svc, &sha256, plan.artifact).await?;
    let new = NewRollout {
        promote_command,
        end_shadow_command,
        command: hex(&plan.command_bytes),
        artifact_sha256: sha256,
        abort_command: hex(&abort),
        waves,
        gates,
        approve_each,
        wave_timeout_secs: timeout.as_secs(),
    };
    Ok(fleet::create_rollout(svc, &new).await?)
}

/// The decisions of `now` not shown after `before`: those taken since, and a changed
/// `waiting` note (the service shows the current wait last).
pub fn news<'a>(before: Option<&Rollout>, now: &'a Rollout) -> Vec<&'a Decision> {
    let taken = |r: &Rollout| r.decisions.iter().filter(|d| d.verdict != "waiting").count();
    let seen = before.map_or(0, taken);
    let old_wait = before.and_then(|b| b.decisions.iter().find(|d| d.verdict == "waiting"));
    now.decisions
        .iter()
        .filter(|d| d.verdict != "waiting")
        .skip(seen)
        .chain(now.decisions.iter().filter(|d| d.verdict == "waiting" && old_wait.is_none_or(|o| o.reason != d.reason)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use edge_proto::rollouts::RolloutState;

    #[test]
    fn flags_win_over_the_policy_file_and_defaults_fill_the_rest() {
        let file: Policy = toml::from_str("max_p95_ratio = 1.3\nmin_requests = 200\nwaves = \"1,100%\"").unwrap();
        let flags = Policy { min_requests: Some(50), ..Default::default() };
        let (waves, gates, approve, timeout) = file.or(flags).resolve().unwrap();
        assert_eq!(waves, [WaveSize::Devices(1), WaveSize::Percent(100.0)]);
        assert_eq!(
            gates,
            Gates { max_p95_ratio: Some(1.3), max_error_rate: Some(0.01), min_requests: 50, min_agreement: None }
        );
        assert_eq!((approve, timeout), (false, DEFAULT_WAVE_TIMEOUT));
        assert!(toml::from_str::<Policy>("max_p95 = 2").unwrap_err().to_string().contains("unknown field"));
        let bad = Policy { max_error_rate: Some(5.0), ..Default::default() };
        assert!(bad.resolve().unwrap_err().contains("between 0 and 1"));
    }

    fn decision(verdict: &str, reason: &str) -> Decision {
        Decision { at: 0, wave: 0, verdict: verdict.into(), reason: reason.into() }
    }

    #[test]
    fn news_are_new_decisions_and_a_changed_wait() {
        let mut r = Rollout {
            id: "r".into(),
            group: "g".into(),
            model: "m".into(),
            version: "2".into(),
            state: RolloutState::Running,
            wave: 0,
            waves: vec![],
            gates: Gates::default(),
            decisions: vec![decision("waiting", "3 of the 100 requests")],
            created_at: 0,
        };
        assert_eq!(news(None, &r).len(), 1);
        let before = r.clone();
        assert!(news(Some(&before), &r).is_empty(), "the same wait is not news");
        r.decisions = vec![decision("passed", "fine"), decision("waiting", "1 of 2 devices")];
        let n: Vec<&str> = news(Some(&before), &r).iter().map(|d| d.verdict.as_str()).collect();
        assert_eq!(n, ["passed", "waiting"]);
    }
}
