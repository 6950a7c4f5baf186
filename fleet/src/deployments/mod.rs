//! Desired-state deployments: the service keeps delivering an operator's signed
//! `deploy-model` command to its target (a device, or every member of a group, including
//! members that are offline or join later) until it is superseded, cancelled or expires.
//!
//! ```text
//! edgectl deploy ──PUT artifact, POST command──> api ──> db (deployments, deployment_devices)
//! broker ──status/ack/need──> ingest ──> Deployments::on_* ──> target::step (pure)
//!                                                             └─> sender ──cmd/ota──> broker
//! tick (every TICK) ──> resend unanswered commands, reach online members without a row, expire
//! ```
//!
//! Every device's progress is a row read, stepped by [`target::step`] and written back at the
//! revision it was read at, then acted on: the database, not this process, holds the
//! deployment, so a restarted service (or another replica) takes over where it was.
//!
//! The service never signs anything: it relays the command bytes the operator signed, and
//! the devices verify them as they verify edgectl's. It checks what it stores (a
//! deploy-model command that decodes, has not expired, and whose manifest matches the
//! uploaded artifact chunk by chunk), but it does not hold the operators' public keys: a
//! deployment signed by an unknown key is stored and refused by every device
//! (`rejected: unknown_key`), which `edgectl deployments watch` shows.

pub mod api;
pub mod sender;
pub mod store;
pub mod target;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use edge_proto::command::{Ack, Command, Payload, Target, MAX_COMMAND_BYTES};
use edge_proto::deployments::{from_hex, to_hex, CancelDeployment, Deployment, NewDeployment, TargetKind};
use edge_proto::ota::Need;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;

use crate::artifacts::{ArtifactError, Artifacts};
use crate::db::{now_ms, Db, DbError};
use sender::{Out, Transfer};
use store::{kind_name, Stored};
use target::{Action, Event, Progress};

/// How often unanswered commands are looked at, online members without a row reached and
/// expired deployments ended.
pub const TICK: Duration = Duration::from_secs(5);

/// Attempts at writing a device's step when other writers keep getting there first.
const WRITE_ATTEMPTS: usize = 8;

/// The deployments' counters.
#[derive(Clone, Debug, Default)]
pub struct DeploymentMetrics {
    /// Deployments stored.
    pub created: Counter,
    /// Commands published (deploys and cancels, first sends and resends).
    pub commands_sent: Counter,
    /// Chunks published.
    pub chunks_sent: Counter,
    /// Bytes of chunk data published.
    pub chunk_bytes_sent: Counter,
    /// Chunks that could not be read from the artifact store.
    pub chunk_errors: Counter,
    /// Chunks waiting to be published.
    pub chunks_queued: Gauge,
    /// Devices that reached a final state, succeeded or not.
    pub devices_finished: Counter,
}

impl DeploymentMetrics {
    /// Registers them in `r` (prefix `edge_fleet_deployment`).
    pub fn register(&self, r: &mut Registry) {
        let r = r.sub_registry_with_prefix("deployment");
        r.register("created", "Deployments stored", self.created.clone());
        r.register("commands_sent", "Signed commands published to devices", self.commands_sent.clone());
        r.register("chunks_sent", "Artifact chunks published to devices", self.chunks_sent.clone());
        r.register("chunk_bytes_sent", "Bytes of artifact chunks published to devices", self.chunk_bytes_sent.clone());
        r.register("chunk_errors", "Chunks that could not be read from the artifact store", self.chunk_errors.clone());
        r.register("chunks_queued", "Chunks waiting to be published", self.chunks_queued.clone());
        r.register("devices_finished", "Devices that reached a final state", self.devices_finished.clone());
    }
}

/// Why a deployment was not stored or not cancelled.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The command does not decode, or is not what the request needs.
    #[error("{0}")]
    BadCommand(String),
    /// The signed command has expired already.
    #[error("the command expired at {expires_at} ms (now {now} ms): sign it again with a longer --ttl")]
    Expired {
        /// Its expiry.
        expires_at: u64,
        /// The service's clock.
        now: u64,
    },
    /// The artifact is missing or does not match the manifest.
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
    /// Another deployment has this id with a different command.
    #[error("deployment {0} exists with another command: command ids must be unique")]
    Conflict(String),
    /// No such deployment.
    #[error("no deployment {0}")]
    NotFound(String),
    /// It is not active any more.
    #[error("deployment {id} is {state}, not active: nothing to cancel")]
    NotActive {
        /// The deployment.
        id: String,
        /// Its state.
        state: String,
    },
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

/// The deployments: creation, the API's views, and the reactions to what devices say.
#[derive(Debug, Clone)]
pub struct Deployments {
    db: Db,
    artifacts: Artifacts,
    out: mpsc::UnboundedSender<Out>,
    metrics: DeploymentMetrics,
}

fn decode_command(hex: &str) -> Result<(Vec<u8>, Command), DeployError> {
    let bytes = from_hex(hex).ok_or_else(|| DeployError::BadCommand("command: not hex".into()))?;
    if bytes.len() > MAX_COMMAND_BYTES {
        return Err(DeployError::BadCommand(format!(
            "command of {} bytes is over the {MAX_COMMAND_BYTES}-byte limit",
            bytes.len()
        )));
    }
    let cmd: Command =
        edge_proto::decode(&bytes).map_err(|e| DeployError::BadCommand(format!("command does not decode: {e}")))?;
    let now = now_ms() as u64;
    if cmd.expires_at < now {
        return Err(DeployError::Expired { expires_at: cmd.expires_at, now });
    }
    Ok((bytes, cmd))
}

impl Deployments {
    /// The deployments over `db`, serving chunks from `artifacts` and publishing through
    /// `out` (see [`sender::run`]).
    pub fn new(db: Db, artifacts: Artifacts, out: mpsc::UnboundedSender<Out>, metrics: DeploymentMetrics) -> Self {
        Deployments { db, artifacts, out, metrics }
    }

    /// The artifact store.
    pub fn artifacts(&self) -> &Artifacts {
        &self.artifacts
    }

    /// Stores a deployment with a `pending` row for each member known now and returns;
    /// a task of its own then reaches them (online ones are sent the command at once).
    /// The same request again returns the stored deployment.
    pub async fn create(&self, new: &NewDeployment) -> Result<Deployment, DeployError> {
        self.create_admitting(new, None).await
    }

    /// [`Deployments::create`] for a group deployment that only the `admitted` members may be
    /// sent for now ([`Deployments::admit`] lets more in): a rollout's first wave.
    pub async fn create_admitting(
        &self,
        new: &NewDeployment,
        admitted: Option<Vec<String>>,
    ) -> Result<Deployment, DeployError> {
        let (bytes, cmd) = decode_command(&new.command)?;
        let Some(manifest) = cmd.payload.manifest() else {
            return Err(DeployError::BadCommand("the command is not a deploy-model command".into()));
        };
        manifest.check_consistent().map_err(|e| DeployError::BadCommand(format!("manifest: {e}")))?;
        let (target_kind, target) = match &cmd.target {
            Target::Device(d) => (TargetKind::Device, d.clone()),
            Target::Group(g) => (TargetKind::Group, g.clone()),
        };
        if !edge_proto::topics::valid_level(&target) {
            return Err(DeployError::BadCommand(format!("target {target:?} is not a valid device or group name")));
        }
        self.artifacts.check(&new.artifact_sha256, manifest).await?;
        let now = now_ms();
        let d = Stored {
            id: to_hex(&cmd.id),
            target_kind,
            target,
            model: manifest.name.clone(),
            version: manifest.version.clone(),
            transfer_id: to_hex(&manifest.transfer_id),
            artifact_sha256: new.artifact_sha256.clone(),
            artifact_bytes: manifest.artifact_size(),
            command: bytes,
            cancel_command: None,
            state: "active".into(),
            superseded_by: None,
            created_at: now,
            expires_at: cmd.expires_at.min(i64::MAX as u64) as i64,
            admitted,
        };
        if !self.db.insert_deployment(&d).await? {
            let existing = self.db.deployment(&d.id).await?.ok_or_else(|| DeployError::NotFound(d.id.clone()))?;
            if existing.command != d.command {
                return Err(DeployError::Conflict(d.id));
            }
            return Ok(self.view(&existing).await?);
        }
        self.metrics.created.inc();
        tracing::info!(deployment = %d.id, target = %d.target, model = %d.model, version = %d.version, "deployment stored");
        for old in self.db.supersede(&d).await? {
            if let Some(old) = self.db.deployment(&old).await? {
                tracing::info!(deployment = %old.id, by = %d.id, "deployment superseded");
                for row in self.db.deployment_devices(&old.id).await? {
                    self.advance(&old, &row.device, &Event::Supersede, &[]).await?;
                }
            }
        }
        let members: Vec<String> = match d.target_kind {
            TargetKind::Group => {
                self.db.devices(Some(&d.target)).await?.into_iter().map(|m| m.device).filter(|m| d.admits(m)).collect()
            }
            TargetKind::Device => vec![d.target.clone()],
        };
        // Every member known now gets its row, `pending`, before the answer: the deployment
        // as returned lists them all. Reaching them (a step each) is not done inside the
        // request, which at a thousand members would outlast edgectl's HTTP timeout: a task
        // of its own drives them now, and the tick is the safety net if it dies with the
        // service (it sends a pending row's command to an online member).
        for device in &members {
            self.db.put_progress(&d.id, device, &Progress::default(), None).await?;
        }
        let view = self.view(&d).await?;
        let this = self.clone();
        tokio::spawn(async move { this.reach(&d, &members).await });
        Ok(view)
    }

    /// Drives the members of a new deployment as a status of theirs would: online ones are
    /// sent the command, those already at the version are done.
    async fn reach(&self, d: &Stored, members: &[String]) {
        for device in members {
            if let Err(e) = self.drive(device, None).await {
                tracing::warn!(deployment = %d.id, device, "reaching a member failed, the tick retries: {e}");
            }
        }
    }

    /// Lets `admitted` members (all, with `None`) be sent deployment `id` from now on, and
    /// reaches those that are new to it. Returns their number.
    pub async fn admit(&self, id: &str, admitted: Option<&[String]>) -> Result<usize, DeployError> {
        let before = self.db.deployment(id).await?.ok_or_else(|| DeployError::NotFound(id.into()))?;
        self.db.set_admitted(id, admitted).await?;
        let d = self.db.deployment(id).await?.ok_or_else(|| DeployError::NotFound(id.into()))?;
        let members = self.db.devices(Some(&d.target)).await?;
        let new: Vec<String> =
            members.into_iter().map(|m| m.device).filter(|m| d.admits(m) && !before.admits(m)).collect();
        for device in &new {
            self.db.put_progress(&d.id, device, &Progress::default(), None).await?;
        }
        let count = new.len();
        let this = self.clone();
        tokio::spawn(async move { this.reach(&d, &new).await });
        Ok(count)
    }

    /// Publishes signed command `bytes` to `device` (a rollout's promotion or end of shadow).
    pub fn relay(&self, device: &str, bytes: Vec<u8>) {
        // The sender only stops with the service.
        let _ = self.out.send(Out::Command { device: device.into(), bytes: Arc::new(bytes) });
        self.metrics.commands_sent.inc();
    }

    /// Cancels an active deployment: devices that have its command are sent the signed
    /// cancel; the others will not be sent anything.
    pub async fn cancel(&self, id: &str, cancel: &CancelDeployment) -> Result<Deployment, DeployError> {
        let d = self.db.deployment(id).await?.ok_or_else(|| DeployError::NotFound(id.into()))?;
        let (bytes, cmd) = decode_command(&cancel.command)?;
        match cmd.payload {
            Payload::Cancel { command_id } if to_hex(&command_id) == d.id => {}
            _ => return Err(DeployError::BadCommand(format!("the command is not a cancel of deployment {id}"))),
        }
        let same_target = match (&cmd.target, &d.target_kind) {
            (Target::Device(t), TargetKind::Device) | (Target::Group(t), TargetKind::Group) => *t == d.target,
            _ => false,
        };
        if !same_target {
            return Err(DeployError::BadCommand(format!(
                "the cancel is for {:?}, the deployment for {} {}",
                cmd.target,
                kind_name(&d.target_kind),
                d.target
            )));
        }
        if !self.db.end_deployment(id, "cancelled", Some(&bytes)).await? {
            return Err(DeployError::NotActive { id: id.into(), state: d.state });
        }
        tracing::info!(deployment = id, "deployment cancelled");
        let d = self.db.deployment(id).await?.ok_or_else(|| DeployError::NotFound(id.into()))?;
        for row in self.db.deployment_devices(id).await? {
            self.advance(&d, &row.device, &Event::Cancel, &[]).await?;
        }
        Ok(self.view(&d).await?)
    }

    /// One deployment with every device's progress.
    pub async fn get(&self, id: &str) -> Result<Option<Deployment>, DbError> {
        match self.db.deployment(id).await? {
            Some(d) => Ok(Some(self.view(&d).await?)),
            None => Ok(None),
        }
    }

    /// Every deployment, newest first, with counts but without the devices.
    pub async fn list(&self) -> Result<Vec<Deployment>, DbError> {
        let mut out = vec![];
        for d in self.db.deployments(None).await? {
            let mut v = self.view(&d).await?;
            v.devices.clear();
            out.push(v);
        }
        Ok(out)
    }

    async fn view(&self, d: &Stored) -> Result<Deployment, DbError> {
        let devices: Vec<_> = self.db.deployment_devices(&d.id).await?.iter().map(|r| r.to_api()).collect();
        let mut counts = BTreeMap::new();
        for p in &devices {
            *counts.entry(p.state.clone()).or_insert(0) += 1;
        }
        Ok(Deployment {
            id: d.id.clone(),
            target_kind: d.target_kind.clone(),
            target: d.target.clone(),
            model: d.model.clone(),
            version: d.version.clone(),
            state: d.state.clone(),
            superseded_by: d.superseded_by.clone(),
            created_at: d.created_at,
            expires_at: d.expires_at,
            artifact_bytes: d.artifact_bytes,
            bytes_sent: devices.iter().map(|p| p.bytes_sent).sum(),
            counts,
            devices,
        })
    }

    /// A device's status was stored: it may be online now, or report a version active.
    pub async fn on_status(&self, device: &str) -> Result<(), DbError> {
        self.drive(device, None).await
    }

    /// A device acknowledged a command; those of deployments move them on.
    pub async fn on_ack(&self, device: &str, ack: &Ack) -> Result<(), DbError> {
        let Some(d) = self.db.deployment(&to_hex(&ack.command_id)).await? else { return Ok(()) };
        self.advance(&d, device, &Event::Ack(&ack.state), &[]).await
    }

    /// A device asked for chunks; those of an active deployment's transfer are sent.
    pub async fn on_need(&self, device: &str, need: &Need) -> Result<(), DbError> {
        let Some(d) = self.db.deployment_of_transfer(&to_hex(&need.transfer_id)).await? else { return Ok(()) };
        if d.state != "active" && d.state != "completed" {
            return Ok(());
        }
        self.advance(&d, device, &Event::Need, &need.missing).await
    }

    /// The periodic pass: ends expired deployments, resends unanswered commands after
    /// their back-off, and reaches online members that have no row yet.
    pub async fn tick(&self) -> Result<(), DbError> {
        let now = now_ms();
        for d in self.db.deployments(Some("active")).await? {
            if d.expires_at < now {
                if self.db.end_deployment(&d.id, "expired", None).await? {
                    tracing::warn!(deployment = %d.id, "deployment expired: devices not reached need a new deployment");
                }
                for row in self.db.deployment_devices(&d.id).await? {
                    self.advance(&d, &row.device, &Event::Expire, &[]).await?;
                }
                continue;
            }
            for device in self.db.waiting_devices(&d).await? {
                self.drive(&device, Some(now)).await?;
            }
        }
        Ok(())
    }

    /// Moves `device` on in the deployments that apply to it: per model, the newest one
    /// targeting the device or one of its groups; older ones are superseded for it. With
    /// `tick`, a periodic pass; otherwise after a status (or at creation).
    async fn drive(&self, device: &str, tick: Option<i64>) -> Result<(), DbError> {
        let known = self.db.device(device).await?;
        let (online, groups, models) = match &known {
            Some(k) => (k.online, k.groups.clone(), k.models.clone()),
            None => (false, vec![], vec![]),
        };
        let mut mine: Vec<Stored> =
            self.db.deployments(Some("active")).await?.into_iter().filter(|d| d.targets(device, &groups)).collect();
        // Newest first, so that the first of each model is the one that applies.
        mine.sort_by(|a, b| b.created_at.cmp(&a.created_at).then_with(|| b.id.cmp(&a.id)));
        let mut seen = std::collections::BTreeSet::new();
        for d in &mine {
            if !seen.insert(d.model.clone()) {
                if self.db.device_progress(&d.id, device).await?.is_some() {
                    self.advance(d, device, &Event::Supersede, &[]).await?;
                }
                continue;
            }
            let model = models.iter().find(|m| m.name == d.model);
            let event = match tick {
                Some(_) => Event::Tick { online },
                None => Event::Status {
                    online,
                    active: model.and_then(|m| m.active_version.as_deref()),
                    health: model.map(|m| m.health.as_str()),
                },
            };
            self.advance(d, device, &event, &[]).await?;
        }
        Ok(())
    }

    /// Reads the device's row, steps it, writes it at the revision read (again on a lost
    /// race), then acts. `ranges`: what a `Need` asked for.
    async fn advance(&self, d: &Stored, device: &str, event: &Event<'_>, ranges: &[(u32, u32)]) -> Result<(), DbError> {
        for _ in 0..WRITE_ATTEMPTS {
            let row = self.db.device_progress(&d.id, device).await?;
            let (before, rev) = match &row {
                Some(r) => (r.progress.clone(), Some(r.rev)),
                None => (Progress::default(), None),
            };
            let (after, actions) = target::step(&before, &d.version, event, now_ms());
            if row.is_some() && after == before && actions.is_empty() {
                return Ok(());
            }
            if row.is_none() && after == before {
                // Nothing to record for a device that was never met (an offline member is
                // recorded at creation).
                return Ok(());
            }
            if !self.db.put_progress(&d.id, device, &after, rev).await? {
                continue;
            }
            if after.state.name() != before.state.name() {
                tracing::info!(deployment = %d.id, device, from = before.state.name(), to = after.state.name(),
                    detail = after.detail.as_deref().unwrap_or(""), "deployment step");
            }
            self.act(d, device, &actions, ranges)?;
            if after.state.is_final() && !before.state.is_final() {
                self.metrics.devices_finished.inc();
                let _ = self.out.send(Out::Forget { device: device.into(), deployment: d.id.clone() });
                if d.target_kind == TargetKind::Device && d.state == "active" {
                    self.db.end_deployment(&d.id, "completed", None).await?;
                }
            }
            return Ok(());
        }
        tracing::warn!(deployment = %d.id, device, "gave up a step after {WRITE_ATTEMPTS} lost races; the next message retries");
        Ok(())
    }

    fn act(&self, d: &Stored, device: &str, actions: &[Action], ranges: &[(u32, u32)]) -> Result<(), DbError> {
        for action in actions {
            let out = match action {
                Action::SendCommand => Out::Command { device: device.into(), bytes: Arc::new(d.command.clone()) },
                Action::SendCancel => match &d.cancel_command {
                    Some(c) => Out::Command { device: device.into(), bytes: Arc::new(c.clone()) },
                    None => continue,
                },
                Action::SendAllChunks | Action::SendNeeded => {
                    let manifest = d.manifest()?;
                    let ranges = match action {
                        // A delta transfer's device says what it lacks right after
                        // accepting: only that is sent (its `Need` comes next).
                        Action::SendAllChunks if manifest.content.is_some() => continue,
                        Action::SendAllChunks => vec![(0, manifest.chunk_count())],
                        _ => ranges.to_vec(),
                    };
                    let transfer = Arc::new(Transfer {
                        deployment: d.id.clone(),
                        artifact_sha256: d.artifact_sha256.clone(),
                        manifest,
                    });
                    Out::Chunks { device: device.into(), transfer, ranges }
                }
            };
            // The sender only stops with the service.
            let _ = self.out.send(out);
        }
        Ok(())
    }
}

/// Runs [`Deployments::tick`] every [`TICK`] until `cancel`.
pub async fn ticker(deployments: Deployments, cancel: tokio_util::sync::CancellationToken) {
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = interval.tick() => {}
        }
        if let Err(e) = deployments.tick().await {
            tracing::warn!("deployment pass failed, next in {TICK:?}: {e}");
        }
    }
}
