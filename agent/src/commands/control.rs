//! The command component: carries out accepted commands, on a thread of its own.
//!
//! The link hands it every message received on a command or OTA topic ([`Inbound`]); a
//! ticker adds a [`Input::Tick`] twice a second. Everything that changes the device's
//! models happens here, one step at a time, so no two commands race on the store:
//!
//! ```text
//! command ─> Gate ─> rejected(reason)                      (nothing changes)
//!              └──> accepted ─> effect ─> succeeded | failed(reason)
//! deploy-model: accepted ─> progress(n %) as chunks arrive ─> progress(100)
//!               ─> verify ─> validate (child) ─> install ─> activate ─> health window
//!               ─> succeeded | failed(reason, rolled back)
//! ```
//!
//! Acks go through the link's ack outbox: stored on disk first, published when connected,
//! so none is lost across reconnects or restarts. The thread blocks on file I/O, model
//! loading and the validation child, never the async runtime; `infer` is handed to the
//! runtime because it waits on the model's worker pool.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use edge_proto::codec::Versioned;
use edge_proto::command::{
    hex, Ack, AckState, Command, DeviceStatus, ModelStatus, NpyBytes, Payload, Reply, VerifyingKey,
};
use edge_proto::ota::{decode_chunk, Need};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::{Gate, Rejection, Verdict};
use crate::config::Config;
use crate::engine::isolate::Limits;
use crate::engine::{options_for_bytes, Model};
use crate::link::{Inbound, LinkHandle};
use crate::ota::health::{self, Mark, Record};
use crate::ota::staging::{Accepted, Staging, StagingError};
use crate::ota::validate::validate_in_child;
use crate::serving::{PoolSettings, Registry};
use crate::stats::InferenceStats;
use crate::store::{engine_format, Current, Store};

/// How often chunks received are made durable.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
/// Most chunks one repair request asks for.
const MAX_NEED_CHUNKS: u32 = 512;

/// What the command thread receives.
#[derive(Debug)]
pub enum Input {
    /// A message from the link.
    Inbound(Inbound),
    /// Time passes: stalled transfers, health windows, expiries.
    Tick,
}

/// Metric label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct Outcome {
    /// What happened.
    pub outcome: String,
}

/// Command and OTA counters for `/metrics`.
#[derive(Clone, Debug, Default)]
pub struct CommandStats {
    /// `edge_agent_commands`: by outcome (`accepted`, or `rejected_<reason>`).
    pub commands: Family<Outcome, Counter>,
    /// `edge_agent_deploys`: by result (`succeeded`, `failed`, `rolled_back`, `cancelled`).
    pub deploys: Family<Outcome, Counter>,
    /// `edge_agent_ota_received_bytes`: chunk bytes written to staging.
    pub ota_bytes: Counter,
    /// `edge_agent_ota_dropped_chunks`: by reason.
    pub chunks_dropped: Family<Outcome, Counter>,
}

impl CommandStats {
    fn count(family: &Family<Outcome, Counter>, outcome: &str) {
        family.get_or_create(&Outcome { outcome: outcome.to_string() }).inc();
    }
}

/// Changes the log filter at run time (`set-config log_level`).
pub type LogControl = Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// Settings `set-config` may change, persisted in `{state_dir}/runtime.json`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RuntimeSettings {
    /// Seconds between telemetry samples.
    pub telemetry_interval_secs: u32,
    /// Log filter (`RUST_LOG` syntax).
    pub log_level: String,
}

impl RuntimeSettings {
    /// The file they are kept in.
    pub fn path(state_dir: &std::path::Path) -> PathBuf {
        state_dir.join("runtime.json")
    }

    /// The persisted settings, if any were set.
    pub fn load(state_dir: &std::path::Path) -> Option<RuntimeSettings> {
        let bytes = std::fs::read(RuntimeSettings::path(state_dir)).ok()?;
        match serde_json::from_slice(&bytes) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!("runtime.json: {e}; using the configuration file's settings");
                None
            }
        }
    }
}

/// What the daemon gives the command component.
pub struct ControlDeps {
    /// The configuration as loaded.
    pub config: Config,
    /// The configuration file's bytes, for the status digest.
    pub config_text: Vec<u8>,
    /// The acceptance gate.
    pub gate: Gate,
    /// Trusted keys, to check staged commands again after a restart.
    pub trusted: Vec<VerifyingKey>,
    /// Installed models.
    pub store: Store,
    /// Active models.
    pub registry: Arc<Registry>,
    /// Inference statistics, for the health watch.
    pub stats: Arc<InferenceStats>,
    /// Acks and repair requests go here.
    pub link: LinkHandle,
    /// The daemon's runtime, for `infer`.
    pub runtime: tokio::runtime::Handle,
    /// Telemetry interval.
    pub interval: watch::Sender<Duration>,
    /// Log filter control, when logging supports it.
    pub log: Option<LogControl>,
    /// Current runtime settings.
    pub settings: RuntimeSettings,
    /// Cancelled to stop the agent (`restart`).
    pub cancel: CancellationToken,
    /// Set when a `restart` command stops the agent.
    pub restart: Arc<std::sync::atomic::AtomicBool>,
    /// The agent binary, run as the validation child.
    pub program: PathBuf,
    /// Counters.
    pub metrics: CommandStats,
}

/// A transfer in progress.
struct Transfer {
    staging: Staging,
    last_chunk: Instant,
    last_need: Option<Instant>,
    last_checkpoint: Instant,
    last_progress: u8,
    /// Bandwidth cap: start of the current one-second window and bytes taken in it.
    window: (Instant, u64),
}

/// What a health watch rolls back to.
#[derive(Debug, Clone)]
enum Previous {
    /// A version in the store.
    Store(String),
    /// The model the configuration file names.
    Config,
}

/// What survives a restart of a health watch: enough to finish it (against an empty
/// baseline: the previous version's record was in memory).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct WatchFile {
    command_id: String,
    name: String,
    version: String,
    /// `None`: the configured model.
    previous: Option<String>,
}

/// A version inside its health window.
struct Watch {
    command_id: [u8; 16],
    name: String,
    version: String,
    previous: Previous,
    base: Record,
    mark: Mark,
    deadline: Instant,
}

/// The command component.
pub struct Control {
    deps: ControlDeps,
    transfers: Vec<Transfer>,
    watches: Vec<Watch>,
    started: Instant,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Whether `ours` (`major.minor.patch`) is at least `min`; an empty `min` always is.
pub fn version_at_least(ours: &str, min: &str) -> bool {
    if min.trim().is_empty() {
        return true;
    }
    let parse = |v: &str| -> Vec<u64> { v.trim().split('.').map(|p| p.parse().unwrap_or(0)).collect() };
    let (a, b) = (parse(ours), parse(min));
    for i in 0..a.len().max(b.len()) {
        let (x, y) = (a.get(i).copied().unwrap_or(0), b.get(i).copied().unwrap_or(0));
        if x != y {
            return x > y;
        }
    }
    true
}

/// Free bytes on the file system holding `path`.
fn free_bytes(path: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: `c` is a valid NUL-terminated path and `st` a properly sized out-parameter.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        (libc::statvfs(c.as_ptr(), &mut st) == 0).then(|| st.f_bavail as u64 * st.f_frsize as u64)
    }
}

impl Control {
    /// The component; [`Control::run`] starts it.
    pub fn new(deps: ControlDeps) -> Control {
        Control { deps, transfers: vec![], watches: vec![], started: Instant::now() }
    }

    fn device(&self) -> &str {
        &self.deps.config.device_id
    }

    fn ota_root(&self) -> PathBuf {
        self.deps.config.state_dir.join("ota")
    }

    /// Runs until the input channel closes or the agent stops. Resumes staged transfers
    /// first.
    pub fn run(mut self, mut rx: mpsc::Receiver<Input>) {
        self.resume();
        while let Some(input) = rx.blocking_recv() {
            match input {
                Input::Inbound(Inbound::Command(bytes)) => self.on_command(&bytes),
                Input::Inbound(Inbound::Chunk(bytes)) => self.on_chunk(&bytes),
                Input::Tick => self.on_tick(),
            }
            if self.deps.cancel.is_cancelled() {
                break;
            }
        }
        for t in &mut self.transfers {
            if let Err(e) = t.staging.checkpoint() {
                tracing::warn!("ota: checkpoint at shutdown: {e}");
            }
        }
    }

    fn ack(&self, command_id: [u8; 16], state: AckState, reply: Option<Reply>) {
        let ack =
            Ack { version: Ack::VERSION, command_id, device: self.device().to_string(), state, ts: now_ms(), reply };
        if !self.deps.link.ack_blocking(edge_proto::encode(&ack)) {
            tracing::warn!(command = %hex(&command_id), "link stopped; ack not queued");
        }
    }

    fn fail(&self, command_id: [u8; 16], what: &str, reason: String) {
        tracing::error!(command = %hex(&command_id), "{what} failed: {reason}");
        self.ack(command_id, AckState::Failed(reason), None);
    }

    // ---- commands -------------------------------------------------------------------

    fn on_command(&mut self, bytes: &[u8]) {
        let verdict = match self.deps.gate.check(bytes, now_ms()) {
            Ok(v) => v,
            Err(e) => {
                // Authentic, but the replay window could not record it: refuse to run it,
                // so that it cannot run twice.
                CommandStats::count(&self.deps.metrics.commands, "rejected_window_io");
                let reason = format!("cannot record the command id (replay window): {e}");
                tracing::error!("command refused: {reason}");
                if let Ok(cmd) = edge_proto::command::verify(bytes, &self.deps.trusted) {
                    self.ack(cmd.id, AckState::Rejected(reason), None);
                }
                return;
            }
        };
        let cmd = match verdict {
            Verdict::Accepted(cmd) => *cmd,
            Verdict::Rejected(r) => return self.on_rejected(bytes, r),
        };
        // Deploys are checked against this device before they are accepted: a model it
        // cannot take is refused with nothing changed.
        if let Payload::DeployModel(_) = &cmd.payload {
            if let Err(reason) = self.precheck_deploy(&cmd) {
                CommandStats::count(&self.deps.metrics.commands, "rejected_deploy");
                tracing::warn!(command = %hex(&cmd.id), "deploy refused: {reason}");
                self.ack(cmd.id, AckState::Rejected(reason), None);
                return;
            }
        }
        CommandStats::count(&self.deps.metrics.commands, "accepted");
        tracing::info!(command = %hex(&cmd.id), payload = payload_name(&cmd.payload), "command accepted");
        self.ack(cmd.id, AckState::Accepted, None);
        self.execute(cmd, bytes);
    }

    fn on_rejected(&mut self, bytes: &[u8], r: Rejection) {
        CommandStats::count(&self.deps.metrics.commands, &format!("rejected_{}", r.label()));
        if let Rejection::WrongTarget(_) = r {
            // For another device or group: not ours to answer.
            tracing::debug!("command for someone else ignored: {r}");
            return;
        }
        tracing::warn!(reason = r.label(), "command rejected: {r}");
        // The id of a command that failed authentication is the sender's claim, but
        // echoing it lets an operator see why their command did nothing. Every version of
        // the envelope starts with the version and the id, so even an oversized command or
        // one of an unknown version has an id to answer to.
        if let Ok(((_, id), _)) = postcard::take_from_bytes::<(u16, [u8; 16])>(bytes) {
            self.ack(id, AckState::Rejected(r.to_string()), None);
        }
    }

    fn execute(&mut self, cmd: Command, bytes: &[u8]) {
        let id = cmd.id;
        let result: Result<Option<Reply>, String> = match &cmd.payload {
            Payload::DeployModel(_) => return self.start_deploy(cmd, bytes),
            Payload::Infer { model, inputs } => return self.infer(id, model.clone(), inputs.clone()),
            Payload::Restart => return self.restart(id),
            Payload::Activate { name, version } => self.activate(name, version),
            Payload::Rollback { name } => self.rollback(name),
            Payload::RemoveModel { name } => self.remove_model(name),
            Payload::GetStatus => Ok(Some(Reply::Status(self.status()))),
            Payload::SetConfig { telemetry_interval_secs, log_level } => {
                self.set_config(*telemetry_interval_secs, log_level.clone())
            }
            Payload::Erase => self.erase(),
            Payload::Cancel { command_id } => self.cancel(*command_id),
        };
        match result {
            Ok(reply) => {
                tracing::info!(command = %hex(&id), payload = payload_name(&cmd.payload), "command succeeded");
                self.ack(id, AckState::Succeeded, reply);
            }
            Err(reason) => self.fail(id, payload_name(&cmd.payload), reason),
        }
    }

    fn config_model(&self, name: &str) -> Option<&crate::config::ModelConfig> {
        self.deps.config.models.iter().find(|m| m.name == name)
    }

    fn pool_settings(&self, name: &str) -> PoolSettings {
        self.config_model(name).map(|m| PoolSettings { workers: m.workers, queue: m.queue }).unwrap_or_default()
    }

    /// Loads `version` of `name` from the store and makes it the one that serves, in
    /// memory and on disk. Returns the store's `current` from before.
    fn switch_to(&self, name: &str, version: &str) -> Result<Current, String> {
        let store = &self.deps.store;
        let before = store.current(name).map_err(|e| e.to_string())?;
        let (manifest, bytes) = store.read(name, version).map_err(|e| e.to_string())?;
        let format = engine_format(manifest.format);
        let model = options_for_bytes(format, &bytes, &manifest.pins)
            .and_then(|o| Model::load_bytes(format, &bytes, &o))
            .map_err(|e| format!("{name} {version} does not load: {e}"))?;
        drop(bytes);
        let old = self.deps.registry.get(name).ok();
        self.deps
            .registry
            .activate(name, version, Arc::new(model), self.pool_settings(name))
            .map_err(|e| e.to_string())?;
        if let Err(e) = store.set_active(name, version) {
            // Memory and disk must agree on what serves: put the old version back.
            if let Some(old) = old {
                let _ = self.deps.registry.activate(name, &old.version, old.model.clone(), self.pool_settings(name));
            }
            return Err(format!("cannot record the activation: {e}"));
        }
        Ok(before)
    }

    /// Serves the configuration file's model for `name` again.
    fn switch_to_config(&self, name: &str) -> Result<(), String> {
        let m = self.config_model(name).ok_or_else(|| format!("{name} is not in the configuration file"))?;
        let model = crate::engine::options_for(m)
            .and_then(|o| Model::load(&m.path, &o))
            .map_err(|e| format!("{name} from the configuration file does not load: {e}"))?;
        self.deps
            .registry
            .activate(name, &m.version, Arc::new(model), self.pool_settings(name))
            .map_err(|e| e.to_string())?;
        let mut current = self.deps.store.current(name).map_err(|e| e.to_string())?;
        if let Some(active) = current.active.take() {
            current.previous = Some(active);
            self.deps.store.restore(name, &current).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    fn activate(&mut self, name: &str, version: &str) -> Result<Option<Reply>, String> {
        self.end_watches(name);
        self.switch_to(name, version)?;
        Ok(None)
    }

    fn rollback(&mut self, name: &str) -> Result<Option<Reply>, String> {
        self.end_watches(name);
        let current = self.deps.store.current(name).map_err(|e| e.to_string())?;
        match (current.previous, current.active) {
            (Some(prev), _) if self.deps.store.has(name, &prev) => {
                self.switch_to(name, &prev)?;
            }
            (_, Some(_)) if self.config_model(name).is_some() => self.switch_to_config(name)?,
            _ => return Err(format!("no previous version of {name:?} to roll back to")),
        }
        Ok(None)
    }

    fn remove_model(&mut self, name: &str) -> Result<Option<Reply>, String> {
        self.cancel_transfers(name, "the model was removed");
        self.end_watches(name);
        let in_store = self.deps.store.names().map_err(|e| e.to_string())?.iter().any(|n| n == name);
        if self.config_model(name).is_some() {
            if !in_store {
                return Err(format!("{name:?} comes from the configuration file; remove its [[models]] entry there"));
            }
            self.deps.store.remove(name).map_err(|e| e.to_string())?;
            self.switch_to_config(name)?;
            return Ok(None);
        }
        if !in_store && self.deps.registry.get(name).is_err() {
            return Err(format!("no model named {name:?}"));
        }
        self.deps.registry.deactivate(name);
        self.deps.store.remove(name).map_err(|e| e.to_string())?;
        Ok(None)
    }

    /// The device's models and settings.
    pub fn status(&self) -> DeviceStatus {
        let mut names: Vec<String> = self.deps.store.names().unwrap_or_default();
        names.extend(self.deps.registry.list().iter().map(|s| s.name.clone()));
        names.extend(self.deps.config.models.iter().map(|m| m.name.clone()));
        names.sort();
        names.dedup();
        let models = names
            .into_iter()
            .map(|name| {
                let active = self.deps.registry.get(&name).ok().map(|s| s.version.clone());
                let installed = self.deps.store.current(&name).map(|c| c.installed).unwrap_or_default();
                let health = if self.watches.iter().any(|w| w.name == name) {
                    "watching".to_string()
                } else if active.is_none() {
                    "not loaded".to_string()
                } else {
                    "ok".to_string()
                };
                ModelStatus { name, active_version: active, installed_versions: installed, health }
            })
            .collect();
        let mut digest_input = self.deps.config_text.clone();
        digest_input.extend(serde_json::to_vec(&self.deps.settings).unwrap_or_default());
        DeviceStatus {
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            models,
            config_digest: hex(&edge_proto::ota::sha256(&digest_input)),
            telemetry_interval_secs: self.deps.settings.telemetry_interval_secs,
            log_level: self.deps.settings.log_level.clone(),
        }
    }

    fn set_config(&mut self, interval: Option<u32>, log_level: Option<String>) -> Result<Option<Reply>, String> {
        let mut next = self.deps.settings.clone();
        if let Some(secs) = interval {
            if !(1..=86_400).contains(&secs) {
                return Err(format!("telemetry interval {secs} s is outside 1..=86400"));
            }
            next.telemetry_interval_secs = secs;
        }
        if let Some(level) = &log_level {
            tracing_subscriber::EnvFilter::try_new(level).map_err(|e| format!("log level {level:?}: {e}"))?;
            match &self.deps.log {
                Some(set) => set(level)?,
                None => return Err("this agent's logging cannot change its filter at run time".into()),
            }
            next.log_level = level.clone();
        }
        let path = RuntimeSettings::path(&self.deps.config.state_dir);
        let json = serde_json::to_vec_pretty(&next).expect("settings serialize");
        crate::fsutil::write_atomic(&path, &json).map_err(|e| format!("cannot save {}: {e}", path.display()))?;
        let _ = self.deps.interval.send(Duration::from_secs(next.telemetry_interval_secs.into()));
        tracing::info!(interval = next.telemetry_interval_secs, log = %next.log_level, "settings changed");
        self.deps.settings = next;
        Ok(None)
    }

    fn infer(&self, id: [u8; 16], model: String, inputs: Vec<NpyBytes>) {
        let tensors = match inputs.iter().map(|b| crate::npy::from_bytes(&b.0)).collect::<Result<Vec<_>, _>>() {
            Ok(t) => t,
            Err(e) => return self.fail(id, "infer", format!("input: {e}")),
        };
        let registry = self.deps.registry.clone();
        let link = self.deps.link.clone();
        let device = self.device().to_string();
        self.deps.runtime.spawn(async move {
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
        tracing::warn!(command = %hex(&id), "restart requested");
        self.ack(id, AckState::Succeeded, None);
        self.deps.restart.store(true, std::sync::atomic::Ordering::SeqCst);
        let cancel = self.deps.cancel.clone();
        // A moment for the ack to reach the broker; it is on disk and goes out after the
        // restart otherwise.
        self.deps.runtime.spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            cancel.cancel();
        });
    }

    fn erase(&mut self) -> Result<Option<Reply>, String> {
        tracing::warn!("erase: wiping installed models, staged transfers, the model key and queued telemetry");
        for t in std::mem::take(&mut self.transfers) {
            self.ack(t.staging.command.id, AckState::Failed("erased".into()), None);
            t.staging.remove();
        }
        self.watches.clear();
        for name in self.deps.store.names().map_err(|e| e.to_string())? {
            if self.config_model(&name).is_some() {
                let _ = self.switch_to_config(&name);
            } else {
                self.deps.registry.deactivate(&name);
            }
        }
        self.deps.store.wipe().map_err(|e| e.to_string())?;
        crate::store::wipe_dir(&self.ota_root()).map_err(|e| e.to_string())?;
        if self.deps.config.ota.key_file.is_none() {
            // The key the agent generated; a key file the operator provisioned is theirs.
            let key = self.deps.config.model_key_file();
            crate::store::wipe_file(&key).map_err(|e| e.to_string())?;
            if self.deps.store.encrypted() {
                let fresh = crate::store::load_or_create_key(&key).map_err(|e| e.to_string())?;
                self.deps.store =
                    Store::open(&self.deps.config.state_dir.join("models"), Some(fresh)).map_err(|e| e.to_string())?;
            }
        }
        self.deps.link.erase_telemetry_blocking().map_err(|e| format!("queued telemetry: {e}"))?;
        tracing::warn!("erase done");
        Ok(None)
    }

    fn cancel(&mut self, command_id: [u8; 16]) -> Result<Option<Reply>, String> {
        if let Some(pos) = self.transfers.iter().position(|t| t.staging.command.id == command_id) {
            let t = self.transfers.remove(pos);
            t.staging.remove();
            CommandStats::count(&self.deps.metrics.deploys, "cancelled");
            self.ack(command_id, AckState::Failed("cancelled by the operator".into()), None);
            return Ok(None);
        }
        if let Some(pos) = self.watches.iter().position(|w| w.command_id == command_id) {
            let w = self.watches.remove(pos);
            self.forget(&w);
            let back = self.roll_back_watch(&w)?;
            CommandStats::count(&self.deps.metrics.deploys, "cancelled");
            self.ack(command_id, AckState::Failed(format!("cancelled by the operator; rolled back to {back}")), None);
            return Ok(None);
        }
        Err(format!("no deploy {} is in progress", hex(&command_id)))
    }

    // ---- deploys --------------------------------------------------------------------

    fn precheck_deploy(&self, cmd: &Command) -> Result<(), String> {
        let Payload::DeployModel(m) = &cmd.payload else { return Ok(()) };
        m.check_consistent().map_err(|e| format!("manifest: {e}"))?;
        let ota = &self.deps.config.ota;
        if m.size > ota.max_model_bytes {
            return Err(format!("model of {} bytes is over [ota] max_model_bytes ({})", m.size, ota.max_model_bytes));
        }
        let ours = env!("CARGO_PKG_VERSION");
        if !version_at_least(ours, &m.min_agent_version) {
            return Err(format!("needs agent {} or newer; this agent is {ours}", m.min_agent_version));
        }
        // Room for the staging file and the installed copy.
        let need = m.artifact_size() + m.size;
        if let Some(free) = free_bytes(&self.deps.config.state_dir) {
            if free < need {
                return Err(format!("not enough disk: needs {need} bytes in the state directory, {free} free"));
            }
        }
        Ok(())
    }

    fn start_deploy(&mut self, cmd: Command, bytes: &[u8]) {
        let Payload::DeployModel(m) = &cmd.payload else { return };
        let (id, name, version) = (cmd.id, m.name.clone(), m.version.clone());
        // A newer deploy of the same model replaces one still running.
        self.cancel_transfers(&name, &format!("superseded by command {}", hex(&id)));
        if self.deps.store.has(&name, &version) {
            match self.deps.store.read(&name, &version) {
                Ok((installed, _)) if installed.sha256 == m.sha256 => {
                    tracing::info!(model = %name, version = %version, "already installed; activating");
                    self.ack(id, AckState::Progress(100), None);
                    return self.activate_new(id, &name, &version);
                }
                _ => {
                    return self.fail(
                        id,
                        "deploy",
                        format!("{name} {version} is installed with other contents; deploy under a new version"),
                    )
                }
            }
        }
        let staging = match Staging::create(&self.ota_root(), bytes, cmd.clone()) {
            Ok(s) => s,
            Err(e) => return self.fail(id, "deploy", e.to_string()),
        };
        tracing::info!(
            model = %name, version = %version, bytes = m.artifact_size(), chunks = m.chunk_count(),
            "transfer started"
        );
        self.ack(id, AckState::Progress(0), None);
        let now = Instant::now();
        self.transfers.push(Transfer {
            staging,
            last_chunk: now,
            last_need: None,
            last_checkpoint: now,
            last_progress: 0,
            window: (now, 0),
        });
    }

    fn cancel_transfers(&mut self, name: &str, reason: &str) {
        let (gone, kept): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.transfers).into_iter().partition(|t| t.staging.manifest.name == name);
        self.transfers = kept;
        for t in gone {
            CommandStats::count(&self.deps.metrics.deploys, "cancelled");
            self.ack(t.staging.command.id, AckState::Failed(reason.to_string()), None);
            t.staging.remove();
        }
    }

    fn on_chunk(&mut self, bytes: &[u8]) {
        let dropped = |why: &str| CommandStats::count(&self.deps.metrics.chunks_dropped, why);
        let chunk = match decode_chunk(bytes) {
            Ok(c) => c,
            Err(e) => {
                dropped("malformed");
                tracing::debug!("ota: undecodable chunk dropped: {e}");
                return;
            }
        };
        let Some(pos) = self.transfers.iter().position(|t| t.staging.manifest.transfer_id == chunk.transfer_id) else {
            dropped("unknown_transfer");
            return;
        };
        let cap = self.deps.config.ota.max_bytes_per_sec;
        let t = &mut self.transfers[pos];
        if cap > 0 {
            // Over the cap: wait before taking more. The link's channel fills meanwhile,
            // and TCP pushes back on the broker.
            let (start, taken) = t.window;
            if start.elapsed() >= Duration::from_secs(1) {
                t.window = (Instant::now(), 0);
            } else if taken >= cap {
                std::thread::sleep(Duration::from_secs(1).saturating_sub(start.elapsed()));
                t.window = (Instant::now(), 0);
            }
            t.window.1 += chunk.data.len() as u64;
        }
        match t.staging.accept(&chunk) {
            Ok(Accepted::Stored { bytes }) => {
                t.last_chunk = Instant::now();
                self.deps.metrics.ota_bytes.inc_by(bytes as u64);
            }
            Ok(Accepted::Duplicate) => {
                t.last_chunk = Instant::now();
                return;
            }
            Err(e @ (StagingError::BadHash(_) | StagingError::OutOfRange { .. })) => {
                tracing::warn!(command = %hex(&t.staging.command.id), "ota: {e}");
                dropped(if matches!(e, StagingError::BadHash(_)) { "bad_hash" } else { "out_of_range" });
                return;
            }
            Err(e) => {
                let t = self.transfers.remove(pos);
                CommandStats::count(&self.deps.metrics.deploys, "failed");
                self.fail(t.staging.command.id, "transfer", e.to_string());
                t.staging.remove();
                return;
            }
        }
        let t = &mut self.transfers[pos];
        let complete = t.staging.is_complete();
        if complete || t.last_checkpoint.elapsed() >= CHECKPOINT_EVERY {
            t.last_checkpoint = Instant::now();
            if let Err(e) = t.staging.checkpoint() {
                let t = self.transfers.remove(pos);
                CommandStats::count(&self.deps.metrics.deploys, "failed");
                self.fail(t.staging.command.id, "transfer", e.to_string());
                t.staging.remove();
                return;
            }
        }
        let percent = t.staging.percent();
        if !complete && percent >= t.last_progress.saturating_add(10) {
            t.last_progress = percent - percent % 10;
            let id = t.staging.command.id;
            self.ack(id, AckState::Progress(percent.min(99)), None);
        }
        if complete {
            let t = self.transfers.remove(pos);
            self.ack(t.staging.command.id, AckState::Progress(100), None);
            self.install(t.staging);
        }
    }

    /// Verify, validate, install, activate and start watching a complete transfer.
    fn install(&mut self, staging: Staging) {
        let id = staging.command.id;
        let m = staging.manifest.clone();
        let fail = |this: &mut Control, staging: Staging, reason: String| {
            CommandStats::count(&this.deps.metrics.deploys, "failed");
            this.fail(id, "deploy", reason);
            staging.remove();
        };
        let model = match staging.read_model() {
            Ok(b) => b,
            Err(e) => return fail(self, staging, e.to_string()),
        };
        if let Err(e) = staging.read_validation() {
            return fail(self, staging, e.to_string());
        }
        let ota = &self.deps.config.ota;
        let limits = Limits {
            memory_bytes: ota.validation_memory_bytes,
            timeout: Duration::from_secs(ota.validation_timeout_secs),
        };
        let report = validate_in_child(&self.deps.program, staging.dir(), limits);
        if !report.passed {
            let reason = report.reason.unwrap_or_else(|| "no reason given".into());
            return fail(self, staging, format!("validation failed: {reason}"));
        }
        tracing::info!(
            model = %m.name, version = %m.version, max_abs_diff = ?report.max_abs_diff, median_ms = ?report.median_ms,
            "validation passed"
        );
        if let Err(e) = self.deps.store.install(&m, &model) {
            return fail(self, staging, e.to_string());
        }
        drop(model);
        staging.remove();
        self.activate_new(id, &m.name, &m.version);
    }

    /// Activates a freshly installed version and watches its health against the one it
    /// replaces.
    fn activate_new(&mut self, id: [u8; 16], name: &str, version: &str) {
        self.end_watches(name);
        let was_config = self.deps.registry.get(name).is_ok()
            && self.deps.store.current(name).map(|c| c.active.is_none()).unwrap_or(false);
        let (base, mark) = health::baseline(&self.deps.stats, name);
        let before = match self.switch_to(name, version) {
            Ok(b) => b,
            Err(e) => {
                CommandStats::count(&self.deps.metrics.deploys, "failed");
                return self.fail(id, "deploy", e);
            }
        };
        match self.deps.store.prune(name, self.deps.config.ota.keep_versions) {
            Ok(removed) if !removed.is_empty() => tracing::info!(model = name, ?removed, "old versions removed"),
            Ok(_) => {}
            Err(e) => tracing::warn!(model = name, "cannot remove old versions: {e}"),
        }
        let previous = match before.active {
            Some(v) if v != version => Previous::Store(v),
            Some(_) => return self.succeed_deploy(id, name, version, "already active"),
            None if was_config => Previous::Config,
            None => return self.succeed_deploy(id, name, version, "first version, nothing to compare with"),
        };
        let window = Duration::from_secs(self.deps.config.ota.health_window_secs);
        tracing::info!(model = name, version, ?previous, "watching the new version for {window:?}");
        let watch = Watch {
            command_id: id,
            name: name.to_string(),
            version: version.to_string(),
            previous,
            base,
            mark,
            deadline: Instant::now() + window,
        };
        self.remember(&watch);
        self.watches.push(watch);
    }

    fn watch_file(&self, id: &[u8; 16]) -> PathBuf {
        self.ota_root().join(format!("watch-{}.json", hex(id)))
    }

    /// Records a health watch on disk, so that a restart inside the window finishes it.
    fn remember(&self, w: &Watch) {
        let file = WatchFile {
            command_id: hex(&w.command_id),
            name: w.name.clone(),
            version: w.version.clone(),
            previous: match &w.previous {
                Previous::Store(v) => Some(v.clone()),
                Previous::Config => None,
            },
        };
        let path = self.watch_file(&w.command_id);
        let written = std::fs::create_dir_all(self.ota_root())
            .and_then(|_| crate::fsutil::write_atomic(&path, &serde_json::to_vec(&file).expect("serializes")));
        if let Err(e) = written {
            tracing::warn!("{}: {e}; a restart inside the health window will not finish it", path.display());
        }
    }

    fn forget(&self, w: &Watch) {
        let _ = std::fs::remove_file(self.watch_file(&w.command_id));
    }

    /// Health watches a restart interrupted: finished against an empty baseline (the
    /// previous version's record was in memory), if their version is still active.
    fn resume_watches(&mut self) {
        let Ok(entries) = std::fs::read_dir(self.ota_root()) else { return };
        let window = Duration::from_secs(self.deps.config.ota.health_window_secs);
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().to_string();
            if !(name.starts_with("watch-") && name.ends_with(".json")) {
                continue;
            }
            let file: Option<WatchFile> = std::fs::read(&path).ok().and_then(|b| serde_json::from_slice(&b).ok());
            let _ = std::fs::remove_file(&path);
            let Some(file) = file else { continue };
            let id = (0..16)
                .map(|i| u8::from_str_radix(file.command_id.get(2 * i..2 * i + 2)?, 16).ok())
                .collect::<Option<Vec<u8>>>();
            let Some(Ok(command_id)) = id.map(<[u8; 16]>::try_from) else { continue };
            let active = self.deps.store.current(&file.name).ok().and_then(|c| c.active);
            if active.as_deref() != Some(file.version.as_str()) {
                continue;
            }
            tracing::info!(model = %file.name, version = %file.version, "resuming the health window a restart interrupted");
            let (_, mark) = health::baseline(&self.deps.stats, &file.name);
            let watch = Watch {
                command_id,
                name: file.name,
                version: file.version,
                previous: file.previous.map(Previous::Store).unwrap_or(Previous::Config),
                base: Record::default(),
                mark,
                deadline: Instant::now() + window,
            };
            self.remember(&watch);
            self.watches.push(watch);
        }
    }

    fn succeed_deploy(&self, id: [u8; 16], name: &str, version: &str, note: &str) {
        CommandStats::count(&self.deps.metrics.deploys, "succeeded");
        tracing::info!(command = %hex(&id), model = name, version, "deploy succeeded ({note})");
        self.ack(id, AckState::Succeeded, None);
    }

    fn end_watches(&mut self, name: &str) {
        let (ended, kept): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.watches).into_iter().partition(|w| w.name == name);
        self.watches = kept;
        for w in ended {
            self.forget(&w);
            // Superseded by an operator's decision about the same model: the deploy itself
            // went through.
            self.succeed_deploy(w.command_id, &w.name, &w.version, "health window ended early by another command");
        }
    }

    fn roll_back_watch(&self, w: &Watch) -> Result<String, String> {
        match &w.previous {
            Previous::Store(v) => self.switch_to(&w.name, v).map(|_| v.clone()),
            Previous::Config => self.switch_to_config(&w.name).map(|_| "the configured model".to_string()),
        }
    }

    fn on_tick(&mut self) {
        let now = now_ms();
        let stall = Duration::from_secs(self.deps.config.ota.stall_secs);
        let mut expired = vec![];
        for (i, t) in self.transfers.iter_mut().enumerate() {
            if t.staging.command.expires_at < now {
                expired.push(i);
                continue;
            }
            if t.last_checkpoint.elapsed() >= CHECKPOINT_EVERY {
                t.last_checkpoint = Instant::now();
                if let Err(e) = t.staging.checkpoint() {
                    tracing::warn!("ota: checkpoint: {e}");
                }
            }
            let stalled = t.last_chunk.elapsed() >= stall && t.last_need.is_none_or(|n| n.elapsed() >= stall);
            if stalled {
                let max = match self.deps.config.ota.max_bytes_per_sec {
                    0 => MAX_NEED_CHUNKS,
                    cap => ((cap * stall.as_secs().max(1)) / t.staging.manifest.chunk_size as u64).clamp(1, 512) as u32,
                };
                let need = Need {
                    version: Need::VERSION,
                    device: self.deps.config.device_id.clone(),
                    transfer_id: t.staging.manifest.transfer_id,
                    missing: t.staging.missing(max),
                };
                tracing::info!(
                    command = %hex(&t.staging.command.id), received = t.staging.received(),
                    of = t.staging.manifest.chunk_count(), "transfer stalled; asking for missing chunks"
                );
                self.deps.link.need_blocking(edge_proto::encode(&need));
                t.last_need = Some(Instant::now());
            }
        }
        for i in expired.into_iter().rev() {
            let t = self.transfers.remove(i);
            CommandStats::count(&self.deps.metrics.deploys, "failed");
            let reason = format!(
                "transfer incomplete ({} of {} chunks) when the command expired; staged data deleted",
                t.staging.received(),
                t.staging.manifest.chunk_count()
            );
            self.fail(t.staging.command.id, "transfer", reason);
            t.staging.remove();
        }
        let cfg = self.deps.config.ota.clone();
        let mut i = 0;
        while i < self.watches.len() {
            let w = &self.watches[i];
            let record = health::since(&self.deps.stats, &w.name, &w.mark);
            let verdict = health::judge(&w.base, &record, &cfg);
            let over = Instant::now() >= w.deadline;
            match verdict {
                health::Verdict::Regressed(why) => {
                    let w = self.watches.remove(i);
                    self.forget(&w);
                    CommandStats::count(&self.deps.metrics.deploys, "rolled_back");
                    let reason = match self.roll_back_watch(&w) {
                        Ok(back) => {
                            format!("health regression of {} {}: {why}; rolled back to {back}", w.name, w.version)
                        }
                        Err(e) => format!("health regression of {} {}: {why}; rollback failed: {e}", w.name, w.version),
                    };
                    tracing::error!(command = %hex(&w.command_id), "{reason}");
                    self.ack(w.command_id, AckState::Failed(reason), None);
                }
                health::Verdict::Healthy(summary) if over => {
                    let w = self.watches.remove(i);
                    self.forget(&w);
                    self.succeed_deploy(w.command_id, &w.name, &w.version, &summary);
                }
                health::Verdict::Undecided if over => {
                    let w = self.watches.remove(i);
                    self.forget(&w);
                    self.succeed_deploy(w.command_id, &w.name, &w.version, "too little traffic to judge its health");
                }
                _ => i += 1,
            }
        }
    }

    /// Picks up staged transfers after a restart: their commands are checked again
    /// against the trusted keys; complete ones are installed, the rest wait for chunks.
    fn resume(&mut self) {
        self.resume_watches();
        let root = self.ota_root();
        for (dir, bytes) in Staging::list(&root) {
            let cmd = match edge_proto::command::verify(&bytes, &self.deps.trusted) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("staged transfer {} dropped: {e}", dir.display());
                    let _ = std::fs::remove_dir_all(&dir);
                    continue;
                }
            };
            let staging = match Staging::open(&dir, cmd) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("staged transfer {} dropped: {e}", dir.display());
                    let _ = std::fs::remove_dir_all(&dir);
                    continue;
                }
            };
            tracing::info!(
                command = %hex(&staging.command.id), model = %staging.manifest.name,
                received = staging.received(), of = staging.manifest.chunk_count(), "resuming a staged transfer"
            );
            if staging.is_complete() {
                self.ack(staging.command.id, AckState::Progress(100), None);
                self.install(staging);
                continue;
            }
            // Ask for the rest as soon as the first tick comes.
            let long_ago = self.started.checked_sub(Duration::from_secs(3600)).unwrap_or(self.started);
            let last_progress = staging.percent() - staging.percent() % 10;
            self.transfers.push(Transfer {
                staging,
                last_chunk: long_ago,
                last_need: None,
                last_checkpoint: Instant::now(),
                last_progress,
                window: (Instant::now(), 0),
            });
        }
    }
}

fn payload_name(p: &Payload) -> &'static str {
    match p {
        Payload::DeployModel(_) => "deploy-model",
        Payload::Activate { .. } => "activate",
        Payload::Rollback { .. } => "rollback",
        Payload::RemoveModel { .. } => "remove-model",
        Payload::GetStatus => "get-status",
        Payload::SetConfig { .. } => "set-config",
        Payload::Infer { .. } => "infer",
        Payload::Erase => "erase",
        Payload::Restart => "restart",
        Payload::Cancel { .. } => "cancel",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_version_comparison() {
        assert!(version_at_least("0.1.0", ""));
        assert!(version_at_least("0.1.0", "0.1.0"));
        assert!(version_at_least("0.2.0", "0.1.9"));
        assert!(!version_at_least("0.1.0", "0.1.1"));
        assert!(!version_at_least("0.1.0", "1"));
        assert!(version_at_least("1.0", "0.9.9"));
    }
}
