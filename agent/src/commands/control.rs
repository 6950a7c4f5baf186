//! The command component: takes what the link receives, checks commands at the [`Gate`],
//! and routes each accepted one to the home of its job, on a thread of its own.
//!
//! ```text
//! command ─> Gate ─> rejected(reason)                           (nothing changes)
//!              └──> accepted ─> route ─> succeeded | failed(reason)
//!   deploy-model, cancel ─> ota::deploy   (transfer, validation, install, trial)
//!   activate, rollback, remove-model ─> models
//!   get-status ─> status    set-config ─> settings    erase ─> erase
//!   infer ─> the runtime (waits on the model's workers)    restart ─> stop, exit 75
//! chunk ─> ota::deploy         tick (twice a second) ─> ota::deploy
//! ```
//!
//! Acks go through the link's ack outbox: stored on disk first, published when connected,
//! so none is lost across reconnects or restarts. The thread blocks on file I/O and model
//! loading, never the async runtime; validation runs on a thread of its own and reports
//! back here ([`Input::Validated`]).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edge_proto::codec::Versioned;
use edge_proto::command::{hex, Ack, AckState, Command, ModelStatus, NpyBytes, Payload, Reply};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::operators::Change;
use super::settings::Settings;
use super::{audit, Gate, Rejection, Unrecorded, Verdict};
use crate::clock::now_ms;
use crate::config::Config;
use crate::link::{Inbound, LinkHandle};
use crate::models::{Models, Resumed};
use crate::ota::deploy::{DeployDeps, Deploys, Validated};
use crate::serving::Registry;
use crate::stats::InferenceStats;

/// What the command thread receives.
#[derive(Debug)]
pub enum Input {
    /// A message from the link.
    Inbound(Inbound),
    /// Time passes: stalled transfers, health windows, expiries.
    Tick,
    /// A validation thread finished.
    Validated(Box<Validated>),
}

/// Metric label: what happened. Always a literal, so the label's values are a fixed set.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct Outcome {
    /// What happened.
    pub outcome: &'static str,
}

/// Metric label: why something was dropped. Always a literal.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct Reason {
    /// Why.
    pub reason: &'static str,
}

/// Label set of `edge_agent_commands_total`. Each label is one dimension with a fixed set of
/// values: `command` a payload name (or `unknown` when the command did not authenticate),
/// `outcome` `accepted` or `rejected`, `reason` a [`Rejection::label`], `window_io`,
/// `deploy_precheck`, or `none` for an accepted command.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct CommandLabel {
    /// Payload name (`deploy-model`, `activate`, ...) or `unknown`.
    pub command: &'static str,
    /// `accepted` or `rejected`.
    pub outcome: &'static str,
    /// Why it was rejected; `none` when accepted.
    pub reason: &'static str,
}

/// Command and OTA counters for `/metrics`.
#[derive(Clone, Debug, Default)]
pub struct CommandStats {
    /// `edge_agent_commands`: by command, outcome and reason ([`CommandLabel`]).
    pub commands: Family<CommandLabel, Counter>,
    /// `edge_agent_deploys`: by result (`succeeded`, `failed`, `rolled_back`, `cancelled`).
    pub deploys: Family<Outcome, Counter>,
    /// `edge_agent_ota_received_bytes`: chunk bytes written to staging.
    pub ota_bytes: Counter,
    /// `edge_agent_ota_held_bytes`: chunk bytes of delta transfers copied from installed
    /// versions instead of received.
    pub ota_bytes_held: Counter,
    /// `edge_agent_ota_chunks`: chunks that matched a transfer, by outcome (`stored`, or
    /// `duplicate`: already stored, a retransmission).
    pub chunks: Family<Outcome, Counter>,
    /// `edge_agent_ota_dropped_chunks`: by reason.
    pub chunks_dropped: Family<Reason, Counter>,
    /// `edge_agent_ota_missing_chunks_requested`: chunks asked for again by stalled transfers.
    pub chunks_requested: Counter,
    /// `edge_agent_trials_started`: versions put on trial against the one they replace.
    pub trials_started: Counter,
    /// `edge_agent_trials_ended`: by outcome (`passed`, `rolled_back`, `cancelled`,
    /// `superseded` by another command about the model, `erased`).
    pub trials_ended: Family<Outcome, Counter>,
}

impl CommandStats {
    /// Counts one `outcome` in `family`.
    pub fn count(family: &Family<Outcome, Counter>, outcome: &'static str) {
        family.get_or_create(&Outcome { outcome }).inc();
    }

    /// A `command` passed the gate.
    pub fn accepted(&self, command: &'static str) {
        self.commands.get_or_create(&CommandLabel { command, outcome: "accepted", reason: "none" }).inc();
    }

    /// A `command` was refused for `reason`.
    pub fn rejected(&self, command: &'static str, reason: &'static str) {
        self.commands.get_or_create(&CommandLabel { command, outcome: "rejected", reason }).inc();
    }
}

/// Sends this device's acks and repair requests through the link, from a thread outside
/// the runtime.
#[derive(Debug, Clone)]
pub struct Acks {
    /// The link.
    pub link: LinkHandle,
    /// This device's id.
    pub device: String,
}

impl Acks {
    /// Acks `state` for `command_id`.
    pub fn send(&self, command_id: [u8; 16], state: AckState) {
        self.reply(command_id, state, None);
    }

    /// Acks `state` with a reply.
    pub fn reply(&self, command_id: [u8; 16], state: AckState, reply: Option<Reply>) {
        let ack = Ack { version: Ack::VERSION, command_id, device: self.device.clone(), state, ts: now_ms(), reply };
        if !self.link.ack_blocking(edge_proto::encode(&ack)) {
            tracing::warn!(command = %hex(&command_id), "link stopped; ack not queued");
        }
    }

    /// Logs and acks a failure of `what`.
    pub fn fail(&self, command_id: [u8; 16], what: &str, reason: String) {
        tracing::error!(command = %hex(&command_id), "{what} failed: {reason}");
        self.send(command_id, AckState::Failed(reason));
    }

    /// Publishes a repair request (QoS 0; repeated until answered).
    pub fn need(&self, payload: Vec<u8>) {
        self.link.need_blocking(payload);
    }
}

/// What the daemon gives the command component.
pub struct ControlDeps {
    /// The configuration as loaded.
    pub config: Config,
    /// The configuration file's bytes, for the status digest.
    pub config_text: Vec<u8>,
    /// The acceptance gate, with the operator keys.
    pub gate: Gate,
    /// The models, shared with the SIGHUP reload.
    pub models: Arc<Mutex<Models>>,
    /// What the start-up found of interrupted trials.
    pub resumed: Vec<Resumed>,
    /// Active models, for `infer`.
    pub registry: Arc<Registry>,
    /// Inference statistics, for the health windows.
    pub stats: Arc<InferenceStats>,
    /// Acks and repair requests go here.
    pub link: LinkHandle,
    /// The daemon's runtime, for `infer` and `restart`.
    pub runtime: tokio::runtime::Handle,
    /// Run-time settings.
    pub settings: Settings,
    /// Cancelled to stop the agent (`restart`).
    pub cancel: CancellationToken,
    /// Set when a `restart` command stops the agent.
    pub restart: Arc<std::sync::atomic::AtomicBool>,
    /// The agent binary, run as the validation child.
    pub program: PathBuf,
    /// Counters.
    pub metrics: CommandStats,
    /// This component's own input, for the validation thread's reports (weak: the input
    /// closes when the link's side stops, and the thread ends).
    pub input: mpsc::WeakSender<Input>,
    /// Where the models' states go for the link's retained status (see
    /// [`Control::publish_model_states`]).
    pub model_states: watch::Sender<Vec<ModelStatus>>,
}

/// The command component.
pub struct Control {
    config: Config,
    config_text: Vec<u8>,
    gate: Gate,
    models: Arc<Mutex<Models>>,
    registry: Arc<Registry>,
    acks: Acks,
    runtime: tokio::runtime::Handle,
    settings: Settings,
    cancel: CancellationToken,
    restart: Arc<std::sync::atomic::AtomicBool>,
    metrics: CommandStats,
    deploys: Deploys,
    resumed: Vec<Resumed>,
    started: Instant,
    model_states: watch::Sender<Vec<ModelStatus>>,
}

/// Ticks (half a second each) between refreshes of the models' states for the retained
/// status, when no command or chunk came meanwhile.
const MODEL_STATE_TICKS: u64 = 4;

/// Ticks (half a second each) between checks of the state directory's free space.
const DISK_REFRESH_TICKS: u64 = 20;

/// Whether a `restart` may run `uptime` after the agent started: at most one per
/// `min_uptime`, so a replayed or scripted stream of restarts cannot keep a device down.
pub fn restart_allowed(uptime: Duration, min_uptime: Duration) -> Result<(), String> {
    if uptime >= min_uptime {
        return Ok(());
    }
    Err(format!(
        "the agent started {} s ago; restarts are limited to one per {} s ([ota] restart_min_uptime_secs): retry in {} s",
        uptime.as_secs(),
        min_uptime.as_secs(),
        (min_uptime - uptime).as_secs().max(1)
    ))
}

impl Control {
    /// The component; [`Control::run`] starts it.
    pub fn new(deps: ControlDeps) -> Control {
        let acks = Acks { link: deps.link.clone(), device: deps.config.device_id.clone() };
        let deploys = Deploys::new(DeployDeps {
            config: deps.config.clone(),
            models: deps.models.clone(),
            stats: deps.stats,
            acks: acks.clone(),
            program: deps.program,
            input: deps.input,
            metrics: deps.metrics.clone(),
        });
        Control {
            config: deps.config,
            config_text: deps.config_text,
            gate: deps.gate,
            models: deps.models,
            registry: deps.registry,
            acks,
            runtime: deps.runtime,
            settings: deps.settings,
            cancel: deps.cancel,
            restart: deps.restart,
            metrics: deps.metrics,
            deploys,
            resumed: deps.resumed,
            started: Instant::now(),
            model_states: deps.model_states,
        }
    }

    /// Runs until the input channel closes or the agent stops. Finishes what a restart
    /// interrupted first.
    pub fn run(mut self, mut rx: mpsc::Receiver<Input>) {
        let resumed = std::mem::take(&mut self.resumed);
        // Staged commands are checked again, with the keys not revoked since.
        self.deploys.resume(resumed, &self.gate.operators().trusted_keys());
        let mut ticks = 0u64;
        self.publish_model_states();
        while let Some(input) = rx.blocking_recv() {
            let tick = matches!(input, Input::Tick);
            match input {
                Input::Inbound(Inbound::Command(bytes)) => self.on_command(&bytes),
                Input::Inbound(Inbound::Chunk(bytes)) => self.deploys.on_chunk(&bytes),
                Input::Tick => {
                    self.deploys.on_tick();
                    ticks += 1;
                    if ticks.is_multiple_of(DISK_REFRESH_TICKS) {
                        // Space freed by other means (an operator deleting files): the
                        // reserve is remade and the full-disk state clears.
                        crate::disk::refresh(&self.config.state_dir);
                    }
                }
                Input::Validated(v) => self.deploys.on_validated(*v),
            }
            // After anything that may change the models; on ticks too (a health window
            // ends, a trial is confirmed or rolled back), but only every few.
            if !tick || ticks.is_multiple_of(MODEL_STATE_TICKS) {
                self.publish_model_states();
            }
            if self.cancel.is_cancelled() {
                break;
            }
        }
        self.deploys.stop();
    }

    fn models(&self) -> std::sync::MutexGuard<'_, Models> {
        self.models.lock().expect("models lock")
    }

    fn on_command(&mut self, bytes: &[u8]) {
        let verdict = match self.gate.check(bytes, now_ms()) {
            Ok(v) => v,
            Err(Unrecorded { command, error }) => {
                // Authentic, but the replay window could not record it: refuse to run it,
                // so that it cannot run twice.
                let reason = format!("cannot record the command id (replay window): {error}");
                audit::rejected(Some(&command), bytes, "window_io", &reason);
                self.metrics.rejected(command.payload.name(), "window_io");
                return self.acks.send(command.id, AckState::Rejected(reason));
            }
        };
        let cmd = match verdict {
            Verdict::Accepted(cmd) => *cmd,
            Verdict::Rejected { rejection, command } => return self.on_rejected(bytes, rejection, command.as_deref()),
        };
        if let Err(reason) = self.deploys.precheck(&cmd) {
            self.metrics.rejected(cmd.payload.name(), "deploy_precheck");
            audit::rejected(Some(&cmd), bytes, "deploy_precheck", &reason);
            return self.acks.send(cmd.id, AckState::Rejected(reason));
        }
        self.metrics.accepted(cmd.payload.name());
        audit::accepted(&cmd);
        self.acks.send(cmd.id, AckState::Accepted);
        self.execute(cmd, bytes);
    }

    fn on_rejected(&mut self, bytes: &[u8], r: Rejection, cmd: Option<&Command>) {
        self.metrics.rejected(cmd.map_or("unknown", |c| c.payload.name()), r.label());
        if let Rejection::WrongTarget(_) = r {
            // For another device or group: not ours to answer.
            tracing::debug!("command for someone else ignored: {r}");
            return;
        }
        audit::rejected(cmd, bytes, r.label(), &r.to_string());
        // The id of a command that failed authentication is the sender's claim, but
        // echoing it lets an operator see why their command did nothing. Every version of
        // the envelope starts with the version and the id, so even an oversized command or
        // one of an unknown version has an id to answer to.
        if let Ok(((_, id), _)) = postcard::take_from_bytes::<(u16, [u8; 16])>(bytes) {
            self.acks.send(id, AckState::Rejected(r.to_string()));
        }
    }

    fn execute(&mut self, cmd: Command, bytes: &[u8]) {
        let id = cmd.id;
        let result: Result<Option<Reply>, String> = match &cmd.payload {
            Payload::DeployModel(_)
            | Payload::DeployModelContent(_)
            | Payload::DeployModelProfiled(_)
            | Payload::Shadow { .. } => return self.deploys.start(cmd, bytes),
            Payload::EndShadow { name } => self.models().end_shadow(name).map(|_| None),
            Payload::Infer { model, inputs } => return self.infer(id, model.clone(), inputs.clone()),
            Payload::Restart => return self.restart(id),
            Payload::Activate { name, version } => {
                self.deploys.end_watches(name);
                self.models().activate(name, version).map(|_| None)
            }
            Payload::Rollback { name } => {
                self.deploys.end_watches(name);
                self.models().rollback(name).map(|_| None)
            }
            Payload::RemoveModel { name } => {
                self.deploys.forget_model(name);
                self.models().remove(name).map(|_| None)
            }
            Payload::GetStatus => Ok(Some(Reply::Status(self.status()))),
            Payload::SetConfig { telemetry_interval_secs, log_level } => {
                self.settings.set(*telemetry_interval_secs, log_level.clone()).map(|_| None)
            }
            Payload::Erase => {
                self.deploys.erase();
                let mut models = self.models.lock().expect("models lock");
                super::erase::erase(&self.config, &mut models, &self.acks.link).map(|_| None)
            }
            Payload::Cancel { command_id } => self.deploys.cancel(*command_id).map(|_| None),
            Payload::AddOperator(grant) => {
                let change = Change { command: hex(&id), at_ms: now_ms() };
                self.gate.operators_mut().add(grant, change).map(|_| None)
            }
            Payload::RevokeKey { key_id } => {
                let change = Change { command: hex(&id), at_ms: now_ms() };
                let revoked = self.gate.operators_mut().revoke(key_id, change);
                if revoked.is_ok() {
                    // Transfers the revoked key started end now: nothing it signed runs
                    // any further.
                    self.deploys.cancel_signed_by(key_id);
                }
                revoked.map(|_| None)
            }
        };
        match result {
            Ok(reply) => {
                tracing::info!(command = %hex(&id), payload = cmd.payload.name(), "command succeeded");
                self.acks.reply(id, AckState::Succeeded, reply);
            }
            Err(reason) => self.acks.fail(id, cmd.payload.name(), reason),
        }
    }

    /// Hands the models' states (the `get-status` view: one home for that decision) to the
    /// link, which republishes the retained status when they differ from the last ones.
    fn publish_model_states(&self) {
        let states = self.status().models;
        self.model_states.send_if_modified(|current| {
            let changed = *current != states;
            if changed {
                *current = states;
            }
            changed
        });
    }

    /// The device's models and settings.
    pub fn status(&self) -> edge_proto::command::DeviceStatus {
        let models = self.models();
        super::status::status(&models, &self.registry, &self.config_text, &self.settings.current, |n| {
            self.deploys.watching(n)
        })
    }

    fn infer(&self, id: [u8; 16], model: String, inputs: Vec<NpyBytes>) {
        let tensors = match inputs.iter().map(|b| crate::npy::from_bytes(&b.0)).collect::<Result<Vec<_>, _>>() {
            Ok(t) => t,
            Err(e) => return self.acks.fail(id, "infer", format!("input: {e}")),
        };
        let registry = self.registry.clone();
        let link = self.acks.link.clone();
        let device = self.config.device_id.clone();
        self.runtime.spawn(async move {
            let result = registry.predict(&model, tensors, None).await.map_err(|e| e.to_string()).and_then(|out| {
                out.iter()
                    .map(|t| crate::npy::to_bytes(t).map(NpyBytes).map_err(|e| e.to_string()))
                    .collect::<Result<Vec<_>, _>>()
            });
            let mut ack = Ack {
                version: Ack::VERSION,
                command_id: id,
                device,
                state: AckState::Succeeded,
                ts: now_ms(),
                reply: None,
            };
            match result {
                Ok(outputs) => ack.reply = Some(Reply::Outputs(outputs)),
                Err(e) => ack.state = AckState::Failed(e),
            }
            let mut bytes = edge_proto::encode(&ack);
            if bytes.len() > edge_proto::MAX_MESSAGE_BYTES {
                ack.state = AckState::Failed(format!(
                    "outputs take {} bytes, over the {}-byte ack limit; use the local HTTP API for this model",
                    bytes.len(),
                    edge_proto::MAX_MESSAGE_BYTES
                ));
                ack.reply = None;
                bytes = edge_proto::encode(&ack);
            }
            link.ack(bytes).await;
        });
    }

    fn restart(&self, id: [u8; 16]) {
        let min = Duration::from_secs(self.config.ota.restart_min_uptime_secs);
        if let Err(reason) = restart_allowed(self.started.elapsed(), min) {
            return self.acks.fail(id, "restart", reason);
        }
        tracing::warn!(command = %hex(&id), "restart requested");
        self.acks.send(id, AckState::Succeeded);
        self.restart.store(true, std::sync::atomic::Ordering::SeqCst);
        let cancel = self.cancel.clone();
        // A moment for the ack to reach the broker; it is on disk and goes out after the
        // restart otherwise.
        self.runtime.spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            cancel.cancel();
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_are_limited_to_one_per_minimum_uptime() {
        let min = Duration::from_secs(60);
        let refused = restart_allowed(Duration::from_secs(20), min).unwrap_err();
        assert!(refused.contains("started 20 s ago") && refused.contains("retry in 40 s"), "{refused}");
        assert!(restart_allowed(Duration::from_secs(60), min).is_ok());
        assert!(restart_allowed(Duration::ZERO, Duration::ZERO).is_ok());
    }
}
