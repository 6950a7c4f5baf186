//! Staged rollouts: a group deployment handed to the members wave by wave, each wave judged
//! by how the new version does on its devices against the version it replaced there
//! ([`judge`]), halted with the operator's signed cancel when a wave fails.
//!
//! ```text
//! edgectl rollout ──POST /v1/rollouts──> create: deployment admitting wave 0, rollout row
//! telemetry v4 ──> ingest ──> on_telemetry: per-version figures of devices in rollouts
//! tick (every TICK) ──> step each running rollout:
//!     judge(wave) ──> progress::after (pure) ──> act and write:
//!         Wait ──> figures kept for `rollout status`
//!         Pass ──> next wave admitted (or awaiting approval; or completed: all)
//!         Fail ──> the signed cancel relayed, deployment ended: halted
//! ```
//!
//! Like deployments, the state is in the database: a step is written only from the revision
//! it read, so replicas can all tick; the actions after a write (admitting, cancelling) are
//! repeatable, and the next tick redoes an admission a crash cut short.

pub mod api;
pub mod judge;
pub mod progress;
pub mod store;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};

use edge_proto::command::{Command, Payload, Target};
use edge_proto::deployments::{to_hex, CancelDeployment, NewDeployment};
use edge_proto::rollouts::{Decision, NewRollout, Rollout, RolloutState, Wave};
use edge_proto::telemetry::VersionStats;
use sha2::{Digest, Sha256};

use crate::db::{now_ms, Db, DbError};
use crate::deployments::{DeployError, Deployments};
use judge::{judge, Member};
use progress::{Action, Transition};
use store::{Look, Row, Spec};

/// Why a rollout was not created or approved.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    /// The request is wrong: the message says how.
    #[error("{0}")]
    Bad(String),
    /// No such rollout.
    #[error("no rollout {0}")]
    NotFound(String),
    /// It is not waiting for approval.
    #[error("rollout {id} is {state}, not awaiting approval")]
    NotAwaiting {
        /// The rollout.
        id: String,
        /// Its state.
        state: &'static str,
    },
    /// The deployment underneath refused.
    #[error(transparent)]
    Deploy(#[from] DeployError),
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

/// The rollouts.
#[derive(Debug, Clone)]
pub struct Rollouts {
    db: Db,
    deployments: Deployments,
    /// Devices admitted to unfinished rollouts: their per-version figures are kept from
    /// every sample.
    watched: Arc<RwLock<HashSet<String>>>,
    /// When each other device's figures were last kept (ms), by this process.
    kept_at: Arc<Mutex<HashMap<String, i64>>>,
}

/// How often the per-version figures of a device outside rollouts are kept (for
/// [`crate::versions`]): a write per device and minute at most, whatever the telemetry rate.
pub const KEEP_EVERY_MS: i64 = 60_000;

/// The order waves take a group's members in: by a hash of the rollout and the device, so
/// that every rollout starts on other devices and the order does not follow naming.
fn order(id: &str, mut members: Vec<String>) -> Vec<String> {
    let key = |d: &String| Sha256::digest(format!("{id}/{d}").as_bytes());
    members.sort_by_cached_key(key);
    members
}

impl Rollouts {
    /// The rollouts over `db`, creating and cancelling through `deployments`.
    pub fn new(db: Db, deployments: Deployments) -> Self {
        Rollouts { db, deployments, watched: Arc::default(), kept_at: Arc::default() }
    }

    /// Checks and stores a rollout, creating its deployment for the first wave.
    pub async fn create(&self, new: &NewRollout) -> Result<Rollout, RolloutError> {
        let bad = |m: String| RolloutError::Bad(m);
        if new.waves.is_empty() {
            return Err(bad("a rollout needs at least one wave (e.g. 1,10%,50%,100%)".into()));
        }
        if new.wave_timeout_secs == 0 {
            return Err(bad("wave_timeout_secs must be over 0".into()));
        }
        let cmd = decode(&new.command, "command")?;
        let Target::Group(group) = &cmd.target else {
            return Err(bad("a rollout's command must target a group (--group)".into()));
        };
        let Some(manifest) = cmd.payload.manifest() else {
            return Err(bad("a rollout's command must be a deploy-model command".into()));
        };
        let abort = decode(&new.abort_command, "abort_command")?;
        match (&abort.payload, &abort.target) {
            (Payload::Cancel { command_id }, Target::Group(g)) if *command_id == cmd.id && g == group => {}
            _ => {
                return Err(bad(format!(
                    "abort_command must be a signed cancel of command {} for group {group}",
                    to_hex(&cmd.id)
                )))
            }
        }
        let shadow = cmd.payload.shadow_pct().is_some();
        if shadow {
            let promote = decode(new.promote_command.as_deref().unwrap_or(""), "promote_command")?;
            match (&promote.payload, &promote.target) {
                (Payload::Activate { name, version }, Target::Group(g))
                    if *name == manifest.name && *version == manifest.version && g == group => {}
                _ => {
                    return Err(bad(format!(
                        "a shadow rollout's promote_command must be a signed activate of {} {} for group {group}",
                        manifest.name, manifest.version
                    )))
                }
            }
            let end = decode(new.end_shadow_command.as_deref().unwrap_or(""), "end_shadow_command")?;
            match (&end.payload, &end.target) {
                (Payload::EndShadow { name }, Target::Group(g)) if *name == manifest.name && g == group => {}
                _ => {
                    return Err(bad(format!(
                        "a shadow rollout's end_shadow_command must be a signed end-shadow of {} for group {group}",
                        manifest.name
                    )))
                }
            }
        }
        let id = to_hex(&cmd.id);
        if let Some(existing) = self.db.rollout(&id).await? {
            return Ok(self.view(&existing));
        }
        let members: Vec<String> = self.db.devices(Some(group)).await?.into_iter().map(|d| d.device).collect();
        if members.is_empty() {
            return Err(bad(format!("group {group} has no members the fleet service knows of")));
        }
        let now = now_ms();
        let mut row = Row {
            id: id.clone(),
            group: group.clone(),
            model: manifest.name.clone(),
            version: manifest.version.clone(),
            spec: Spec {
                waves: new.waves.clone(),
                gates: new.gates.clone(),
                approve_each: new.approve_each,
                wave_timeout_secs: new.wave_timeout_secs,
                shadow,
                promote_command: new.promote_command.clone().filter(|_| shadow),
                end_shadow_command: new.end_shadow_command.clone().filter(|_| shadow),
            },
            abort_command: edge_proto::deployments::from_hex(&new.abort_command).unwrap_or_default(),
            members: order(&id, members),
            wave: 0,
            wave_started_at: now,
            state: RolloutState::Running,
            look: Look::default(),
            decisions: vec![],
            created_at: now,
            rev: 0,
        };
        let first = row.members[..row.admitted_count(0)].to_vec();
        let deployment = NewDeployment { command: new.command.clone(), artifact_sha256: new.artifact_sha256.clone() };
        self.watch(&first);
        self.deployments.create_admitting(&deployment, Some(first.clone())).await?;
        if !self.db.insert_rollout(&row).await? {
            row = self.db.rollout(&id).await?.ok_or_else(|| RolloutError::NotFound(id.clone()))?;
        }
        tracing::info!(rollout = %id, group, model = %row.model, version = %row.version, first = ?first, "rollout started");
        Ok(self.view(&row))
    }

    /// One rollout.
    pub async fn get(&self, id: &str) -> Result<Option<Rollout>, DbError> {
        Ok(self.db.rollout(id).await?.map(|r| self.view(&r)))
    }

    /// Every rollout, newest first.
    pub async fn list(&self) -> Result<Vec<Rollout>, DbError> {
        Ok(self.db.rollouts(false).await?.iter().map(|r| self.view(r)).collect())
    }

    /// Lets a rollout waiting for approval go on to its next wave.
    pub async fn approve(&self, id: &str) -> Result<Rollout, RolloutError> {
        loop {
            let r = self.db.rollout(id).await?.ok_or_else(|| RolloutError::NotFound(id.into()))?;
            if r.state != RolloutState::AwaitingApproval {
                return Err(RolloutError::NotAwaiting { id: id.into(), state: r.state.name() });
            }
            let t = progress::approved(&r, now_ms());
            if let Some(row) = self.apply(t).await? {
                return Ok(self.view(&row));
            }
        }
    }

    /// A device's telemetry carried per-version figures: kept from every sample of a device
    /// in a rollout, otherwise once per [`KEEP_EVERY_MS`].
    pub async fn on_telemetry(&self, device: &str, versions: &[VersionStats]) -> Result<(), DbError> {
        if versions.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        if !self.watched.read().expect("watched lock").contains(device) {
            let mut kept = self.kept_at.lock().expect("kept lock");
            if kept.get(device).is_some_and(|&at| now - at < KEEP_EVERY_MS) {
                return Ok(());
            }
            kept.insert(device.to_string(), now);
        }
        self.db.put_versions(device, versions).await
    }

    fn watch(&self, devices: &[String]) {
        self.watched.write().expect("watched lock").extend(devices.iter().cloned());
    }

    /// The periodic pass: judges every running rollout's wave and acts on the verdict.
    pub async fn tick(&self) -> Result<(), RolloutError> {
        let unfinished = self.db.rollouts(true).await?;
        let mut watched = HashSet::new();
        for r in &unfinished {
            watched.extend(r.members[..r.admitted_count(r.wave)].iter().cloned());
        }
        *self.watched.write().expect("watched lock") = watched;
        for r in unfinished {
            let id = r.id.clone();
            if let Err(e) = self.step(r).await {
                tracing::warn!(rollout = %id, "rollout step failed, next tick retries: {e}");
            }
        }
        Ok(())
    }

    async fn step(&self, r: Row) -> Result<(), RolloutError> {
        let Some(d) = self.db.deployment(&r.id).await? else { return Ok(()) };
        let now = now_ms();
        if d.state != "active" {
            self.apply(progress::deployment_ended(&r, &d.state, now)).await?;
            return Ok(());
        }
        // Redo an admission a crash cut short (repeatable).
        let expected = &r.members[..r.admitted_count(r.wave)];
        if d.admitted.as_deref() != Some(expected) {
            self.admit(&r.id, Some(expected.to_vec()), r.wave).await?;
        }
        if r.state != RolloutState::Running {
            return Ok(());
        }
        let devices = r.wave_devices(r.wave).to_vec();
        let progress: BTreeMap<String, _> = self
            .db
            .deployment_devices(&r.id)
            .await?
            .into_iter()
            .map(|row| (row.device.clone(), row.progress))
            .collect();
        let mut known = Vec::with_capacity(devices.len());
        for device in &devices {
            let active = self
                .db
                .device(device)
                .await?
                .and_then(|k| k.models.into_iter().find(|m| m.name == r.model).and_then(|m| m.active_version));
            known.push((active, self.db.versions(device, &r.model).await?));
        }
        let members: Vec<Member<'_>> = devices
            .iter()
            .zip(&known)
            .map(|(device, (active, versions))| Member {
                device,
                progress: progress.get(device).map(|p| (p.state.name(), p.detail.as_deref())),
                active: active.as_deref(),
                versions,
            })
            .collect();
        let timeout_ms = (r.spec.wave_timeout_secs as i64).saturating_mul(1000);
        let mode = if r.spec.shadow { judge::Mode::Shadow } else { judge::Mode::Trial };
        let judgement = judge(&r.spec.gates, &r.version, mode, &members, now - r.wave_started_at, timeout_ms);
        // On trial, `succeeded` means the trial ended (a cancel no longer rolls it back); in
        // shadow it only means the shadow runs.
        let committed: Vec<String> = devices
            .iter()
            .filter(|d| !r.spec.shadow && progress.get(*d).is_some_and(|p| p.state.name() == "succeeded"))
            .cloned()
            .collect();
        self.apply(progress::after(&r, judgement, &committed, now)).await?;
        Ok(())
    }

    /// Acts and writes as `t` says; the row as written, or `None` when another writer got
    /// there first (nothing after the write is done then).
    async fn apply(&self, t: Transition) -> Result<Option<Row>, RolloutError> {
        for action in &t.before {
            self.act(&t.row, action).await?;
        }
        if !self.db.update_rollout(&t.row).await? {
            return Ok(None);
        }
        let row = Row { rev: t.row.rev + 1, ..t.row };
        // A wait carries its note; every other transition ends in a decision, logged once.
        if row.look.note.is_empty() {
            if let Some(d) = row.decisions.last() {
                tracing::info!(rollout = %row.id, wave = d.wave + 1, state = row.state.name(), "{}: {}", d.verdict, d.reason);
            }
        }
        for action in &t.after {
            self.act(&row, action).await?;
        }
        Ok(Some(row))
    }

    async fn act(&self, r: &Row, action: &Action) -> Result<(), RolloutError> {
        match action {
            Action::Admit(admitted) => self.admit(&r.id, admitted.clone(), r.wave).await,
            Action::Cancel => {
                let cancel = CancelDeployment { command: to_hex(&r.abort_command) };
                match self.deployments.cancel(&r.id, &cancel).await {
                    Ok(_) | Err(DeployError::NotActive { .. }) => Ok(()),
                    Err(e) => Err(e.into()),
                }
            }
            Action::Promote(devices) | Action::EndShadow(devices) => {
                let (command, what) = match action {
                    Action::Promote(_) => (&r.spec.promote_command, "promote"),
                    _ => (&r.spec.end_shadow_command, "end-shadow"),
                };
                let bytes = command
                    .as_deref()
                    .and_then(edge_proto::deployments::from_hex)
                    .ok_or_else(|| RolloutError::Bad(format!("rollout {} in shadow has no {what} command", r.id)))?;
                for device in devices {
                    self.deployments.relay(device, bytes.clone());
                }
                tracing::info!(rollout = %r.id, devices = ?devices, "{what} relayed");
                Ok(())
            }
        }
    }

    /// Lets `admitted` members (all, with `None`) of rollout `id` be sent its deployment.
    async fn admit(&self, id: &str, admitted: Option<Vec<String>>, wave: usize) -> Result<(), RolloutError> {
        if let Some(a) = &admitted {
            self.watch(a);
        }
        let reached = self.deployments.admit(id, admitted.as_deref()).await?;
        if reached > 0 {
            tracing::info!(rollout = %id, wave = wave + 1, devices = reached, "wave admitted");
        }
        Ok(())
    }

    fn view(&self, r: &Row) -> Rollout {
        let waves = (0..r.spec.waves.len())
            .map(|w| {
                let state = match (w.cmp(&r.wave), r.state) {
                    (std::cmp::Ordering::Less, _) => "passed",
                    (std::cmp::Ordering::Greater, _) => "pending",
                    (_, RolloutState::Running) => "running",
                    (_, RolloutState::Halted) => "failed",
                    _ => "passed",
                };
                let current = w == r.wave;
                Wave {
                    size: r.spec.waves[w],
                    devices: r.wave_devices(w).to_vec(),
                    state: state.into(),
                    figures: if current { r.look.figures.clone() } else { None },
                    device_figures: if current { r.look.devices.clone() } else { vec![] },
                }
            })
            .collect();
        let mut decisions = r.decisions.clone();
        if r.state == RolloutState::Running && !r.look.note.is_empty() {
            decisions.push(Decision {
                at: now_ms(),
                wave: r.wave,
                verdict: "waiting".into(),
                reason: r.look.note.clone(),
            });
        }
        Rollout {
            id: r.id.clone(),
            group: r.group.clone(),
            model: r.model.clone(),
            version: r.version.clone(),
            state: r.state,
            wave: r.wave,
            waves,
            gates: r.spec.gates.clone(),
            decisions,
            created_at: r.created_at,
        }
    }
}

fn decode(hex: &str, what: &str) -> Result<Command, RolloutError> {
    let bytes = edge_proto::deployments::from_hex(hex).ok_or_else(|| RolloutError::Bad(format!("{what}: not hex")))?;
    edge_proto::decode::<Command>(&bytes).map_err(|e| RolloutError::Bad(format!("{what} does not decode: {e}")))
}

/// Runs [`Rollouts::tick`] every [`crate::deployments::TICK`] until `cancel`.
pub async fn ticker(rollouts: Rollouts, cancel: tokio_util::sync::CancellationToken) {
    let mut interval = tokio::time::interval(crate::deployments::TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = interval.tick() => {}
        }
        if let Err(e) = rollouts.tick().await {
            tracing::warn!("rollout pass failed, next in {:?}: {e}", crate::deployments::TICK);
        }
    }
}
