//! Deployments through the fleet service (`edgectl deploy` with `[fleet] url`, `edgectl
//! deployments`): edgectl signs, the service stores and delivers.
//!
//! A deployment is planned and signed exactly as a direct deploy ([`crate::deploy::plan`]),
//! with a lifetime long enough for devices that are offline today ([`FLEET_DEFAULT_TTL`]);
//! the artifact is uploaded under its SHA-256, then the signed command is handed over. The
//! signing key never leaves this machine, and a cancel is a signed command too.
//!
//! Watching is polling `GET /v1/deployments/{id}`: anyone can attach, from any machine, at
//! any time; [`changes`] says which devices moved since the last look.

use std::time::Duration;

use edge_proto::command::{hex, Payload, Target};
use edge_proto::deployments::{is_terminal, CancelDeployment, Deployment, DeviceProgress, NewDeployment, TargetKind};

use crate::command::{now_ms, parse_command_id, random_id, signed_command, CommandError};
use crate::deploy::{plan, DeployError, DeployRequest};
use crate::fleet::{self, FleetError};
use crate::keys::Signer;

/// How long a deployment handed to the fleet service stays valid when `--ttl` is not given:
/// devices offline for longer than this need a new deployment.
pub const FLEET_DEFAULT_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// What went wrong with a deployment through the fleet service.
#[derive(Debug, thiserror::Error)]
pub enum FleetDeployError {
    /// The deploy could not be planned (model, flags, sizes).
    #[error(transparent)]
    Plan(#[from] DeployError),
    /// The cancel could not be signed.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// The service refused it or could not be reached.
    #[error(transparent)]
    Fleet(#[from] FleetError),
}

impl FleetDeployError {
    /// Whether the service could not be reached: worth retrying later.
    pub fn is_connection(&self) -> bool {
        matches!(self, FleetDeployError::Fleet(f) if f.is_connection())
    }
}

/// Plans and signs `req`, uploads its artifact and hands the deployment to the service at
/// `url`. Returns the deployment as stored, with the devices it knows of already.
pub async fn hand_over(
    url: &fleet::Service,
    signer: &Signer,
    req: &DeployRequest,
    max_packet_bytes: usize,
) -> Result<Deployment, FleetDeployError> {
    let plan = plan(req, signer, random_id()?, random_id()?, now_ms(), max_packet_bytes)?;
    let sha256 = hex(&edge_proto::ota::sha256(&plan.artifact));
    fleet::upload_artifact(url, &sha256, plan.artifact).await?;
    let new = NewDeployment { command: hex(&plan.command_bytes), artifact_sha256: sha256 };
    Ok(fleet::create_deployment(url, &new).await?)
}

/// Signs a cancel of deployment `id` for its target, valid for `ttl`, and hands it to the
/// service, which relays it to the devices that have the deployment's command.
pub async fn cancel(
    url: &fleet::Service,
    signer: &Signer,
    id: &str,
    ttl: Duration,
    max_packet_bytes: usize,
) -> Result<Deployment, FleetDeployError> {
    let command_id = parse_command_id(id)?;
    let d = fleet::deployment(url, id).await?;
    let target = match d.target_kind {
        TargetKind::Device => Target::Device(d.target.clone()),
        TargetKind::Group => Target::Group(d.target.clone()),
    };
    let (_, bytes) = signed_command(
        random_id()?,
        now_ms(),
        ttl,
        target,
        Payload::Cancel { command_id },
        signer,
        max_packet_bytes,
        "",
    )?;
    Ok(fleet::cancel_deployment(url, id, &CancelDeployment { command: hex(&bytes) }).await?)
}

/// The devices of `now` that are new or changed state, progress or detail since `before`.
pub fn changes<'a>(before: Option<&Deployment>, now: &'a Deployment) -> Vec<&'a DeviceProgress> {
    now.devices
        .iter()
        .filter(|p| {
            let old = before.and_then(|b| b.devices.iter().find(|o| o.device == p.device));
            old.is_none_or(|o| (&o.state, o.progress, &o.detail) != (&p.state, p.progress, &p.detail))
        })
        .collect()
}

/// Whether every device the deployment has met is done (none pending, sent or on its
/// way), and at least one was met.
pub fn settled(d: &Deployment) -> bool {
    !d.devices.is_empty() && d.devices.iter().all(|p| is_terminal(&p.state))
}

/// Whether every device met has succeeded.
pub fn all_succeeded(d: &Deployment) -> bool {
    !d.devices.is_empty() && d.devices.iter().all(|p| p.state == "succeeded")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(name: &str, state: &str, progress: Option<u8>) -> DeviceProgress {
        DeviceProgress {
            device: name.into(),
            state: state.into(),
            progress,
            detail: None,
            attempts: 1,
            updated_at: 0,
            bytes_sent: 0,
        }
    }

    fn deployment(devices: Vec<DeviceProgress>) -> Deployment {
        Deployment {
            id: "00".repeat(16),
            target_kind: TargetKind::Group,
            target: "cams".into(),
            model: "m".into(),
            version: "2".into(),
            state: "active".into(),
            superseded_by: None,
            created_at: 0,
            expires_at: 1,
            artifact_bytes: 10,
            bytes_sent: 0,
            counts: Default::default(),
            devices,
        }
    }

    #[test]
    fn only_devices_that_moved_are_changes() {
        let a = deployment(vec![device("d1", "sent", None), device("d2", "transferring", Some(10))]);
        let b = deployment(vec![
            device("d1", "sent", None),
            device("d2", "transferring", Some(50)),
            device("d3", "pending", None),
        ]);
        let moved: Vec<&str> = changes(Some(&a), &b).iter().map(|p| p.device.as_str()).collect();
        assert_eq!(moved, vec!["d2", "d3"]);
        assert_eq!(changes(None, &b).len(), 3, "everything is new at the first look");
    }

    #[test]
    fn settled_means_every_met_device_is_done() {
        assert!(!settled(&deployment(vec![])), "nobody met yet");
        let d = deployment(vec![device("d1", "succeeded", None), device("d2", "pending", None)]);
        assert!(!settled(&d));
        let d = deployment(vec![device("d1", "succeeded", None), device("d2", "failed", None)]);
        assert!(settled(&d) && !all_succeeded(&d));
        let d = deployment(vec![device("d1", "succeeded", None)]);
        assert!(all_succeeded(&d));
    }
}
