//! Deploys, from the accepted command to the end of the trial: the I/O shell around the
//! pure [`super::transfer`] and [`super::watch`] machines.
//!
//! ```text
//! start ─> staging (chunks, checkpoints, repairs) ─> complete ─> validation thread
//!   (hashes, child process under limits) ─> install in the store ─> trial (marker, switch)
//!   ─> health window ─> mark good: succeeded | regression: previous restored, failed
//! ```
//!
//! Validation runs on a thread of its own and reports back through the command
//! component's input ([`Validated`]), so commands are answered while a model is checked for
//! a minute. Everything else runs on the command thread.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edge_proto::codec::Versioned;
use edge_proto::command::{hex, AckState, Command, Payload};
use edge_proto::ota::{decode_chunk, Need};
use tokio::sync::mpsc;

use super::health::{self, Mark};
use super::staging::{Accepted, Staging, StagingError};
use super::transfer::{Action, Pacing, Transfer};
use super::validate::validate_in_child;
use super::watch::{Step, Watch};
use crate::commands::control::{Acks, CommandStats, Input, Reason};
use crate::config::Config;
use crate::engine::isolate::Limits;
use crate::models::{Models, Resumed};
use crate::stats::InferenceStats;

/// A staged transfer that finished validating, back on the command thread.
pub struct Validated {
    staging: Staging,
    /// The model's bytes if the hashes and the validation child passed.
    result: Result<Vec<u8>, String>,
}

impl std::fmt::Debug for Validated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Validated").field("command", &hex(&self.staging.command.id)).finish()
    }
}

/// What the deploys need from the daemon.
pub struct DeployDeps {
    /// The configuration.
    pub config: Config,
    /// The models.
    pub models: Arc<Mutex<Models>>,
    /// Inference statistics, for health windows.
    pub stats: Arc<InferenceStats>,
    /// Acks and repair requests.
    pub acks: Acks,
    /// The agent binary, run as the validation child.
    pub program: PathBuf,
    /// The command component's input, for validation results.
    pub input: mpsc::WeakSender<Input>,
    /// Counters.
    pub metrics: CommandStats,
}

struct Active {
    staging: Staging,
    clock: Transfer,
}

/// Every deploy in progress on this device.
pub struct Deploys {
    deps: DeployDeps,
    transfers: Vec<Active>,
    /// Command ids whose validation thread runs; a cancelled one is dropped when it reports.
    validating: Vec<([u8; 16], bool)>,
    watches: Vec<(Watch, Mark)>,
    origin: Instant,
}

impl Deploys {
    /// No deploy in progress yet; [`Deploys::resume`] picks up what a restart interrupted.
    pub fn new(deps: DeployDeps) -> Deploys {
        Deploys { deps, transfers: vec![], validating: vec![], watches: vec![], origin: Instant::now() }
    }

    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    fn ota_root(&self) -> PathBuf {
        self.deps.config.state_dir.join("ota")
    }

    fn models(&self) -> std::sync::MutexGuard<'_, Models> {
        self.deps.models.lock().expect("models lock")
    }

    fn count(&self, outcome: &'static str) {
        CommandStats::count(&self.deps.metrics.deploys, outcome);
    }

    /// A trial ended with `outcome` (`edge_agent_trials_ended_total`).
    fn trial_ended(&self, outcome: &'static str) {
        CommandStats::count(&self.deps.metrics.trials_ended, outcome);
    }

    fn fail(&self, id: [u8; 16], reason: String) {
        self.count("failed");
        self.deps.acks.fail(id, "deploy", reason);
    }

    fn pacing(&self, command: &Command) -> Pacing {
        let ota = &self.deps.config.ota;
        let chunk_size = command.payload.manifest().map_or(1, |m| m.chunk_size);
        Pacing {
            stall: Duration::from_secs(ota.stall_secs),
            max_bytes_per_sec: ota.max_bytes_per_sec,
            chunk_size,
            expires_at_ms: command.expires_at,
        }
    }

    /// Whether a deploy of this model (any version) is on trial.
    pub fn watching(&self, name: &str) -> bool {
        self.watches.iter().any(|(w, _)| w.name == name)
    }

    // ---- start -----------------------------------------------------------------------

    /// Checks a deploy against this device before it is accepted: a model it cannot take
    /// is refused with nothing changed.
    pub fn precheck(&self, cmd: &Command) -> Result<(), String> {
        if let Payload::Shadow { deploy, sample_pct } = &cmd.payload {
            if !matches!(**deploy, Payload::DeployModel(_) | Payload::DeployModelContent(_)) {
                return Err(format!("a shadow carries a deploy-model, not {}", deploy.name()));
            }
            if !(1..=100).contains(sample_pct) {
                return Err(format!("a shadow's sample is 1 to 100 % of the requests, not {sample_pct}"));
            }
        }
        let Some(m) = cmd.payload.manifest() else { return Ok(()) };
        m.check_consistent().map_err(|e| format!("manifest: {e}"))?;
        let ota = &self.deps.config.ota;
        if m.size > ota.max_model_bytes {
            return Err(format!("model of {} bytes is over [ota] max_model_bytes ({})", m.size, ota.max_model_bytes));
        }
        let ours = env!("CARGO_PKG_VERSION");
        if !version_at_least(ours, &m.min_agent_version) {
            return Err(format!("needs agent {} or newer; this agent is {ours}", m.min_agent_version));
        }
        // Room for the staging file and the installed copy, beside transfers in progress.
        super::staging::space_check(&self.deps.config.state_dir, &self.ota_root(), m)?;
        Ok(())
    }

    /// Starts an accepted deploy (`bytes`: the signed command, kept with the staging).
    pub fn start(&mut self, cmd: Command, bytes: &[u8]) {
        let Some(m) = cmd.payload.manifest() else { return };
        let (id, name, version) = (cmd.id, m.name.clone(), m.version.clone());
        // A newer deploy of the same model replaces one still running.
        self.cancel_transfers(&name, &format!("superseded by command {}", hex(&id)));
        let installed = {
            let models = self.models();
            let store = models.store();
            store.has(&name, &version).then(|| store.read(&name, &version).map(|(i, _)| i.sha256 == m.sha256))
        };
        match installed {
            Some(Ok(true)) => {
                tracing::info!(model = %name, version = %version, "already installed");
                // The deploy's profile (or none) replaces the one installed with the version.
                if let Err(e) = self.models().replace_profile(&name, &version, m.profile.as_ref()) {
                    return self.fail(id, e);
                }
                self.deps.acks.send(id, AckState::Progress(100));
                return self.installed(id, &name, &version, cmd.payload.shadow_pct());
            }
            Some(_) => {
                return self
                    .fail(id, format!("{name} {version} is installed with other contents; deploy under a new version"))
            }
            None => {}
        }
        let pacing = self.pacing(&cmd);
        let mut staging = match Staging::create(&self.ota_root(), bytes, cmd.clone()) {
            Ok(s) => s,
            Err(e) => return self.fail(id, e.to_string()),
        };
        let delta = m.content.is_some();
        if delta {
            if let Err(e) = self.fill_from_installed(&mut staging) {
                return self.abort(staging, e.to_string());
            }
        }
        tracing::info!(
            model = %name, version = %version, bytes = m.artifact_size(), chunks = m.chunk_count(),
            held = staging.received(), "transfer started"
        );
        self.deps.acks.send(id, AckState::Progress(staging.percent().min(99)));
        let mut clock = Transfer::new(pacing, self.now(), staging.percent(), false);
        if staging.is_complete() {
            // Everything was already here, in versions installed before.
            self.deps.acks.send(id, AckState::Progress(100));
            return self.validate(staging);
        }
        // A content deploy's sender waits to be told what to send: right away, not after a
        // stall. (A fixed-size one sends everything once it sees `accepted`.)
        let ask = delta.then(|| clock.ask_now(self.now()));
        self.transfers.push(Active { staging, clock });
        if let Some(ask) = ask {
            let pos = self.transfers.len() - 1;
            self.carry_out(pos, vec![ask]);
        }
    }

    /// Copies into `staging` the chunks that the installed versions of every model already
    /// hold (a delta transfer), and makes them durable. Runs on the command thread: reading
    /// and hashing a few installed models takes well under a second on a small board
    /// (SHA-256 and the chunking rule run at hundreds of MB/s), and nothing else of this
    /// transfer can happen before it is done.
    fn fill_from_installed(&self, staging: &mut Staging) -> Result<(), StagingError> {
        let started = Instant::now();
        let store = self.models().store().clone();
        let mut held = vec![];
        for name in store.names().unwrap_or_default() {
            for version in store.current(&name).map(|c| c.installed).unwrap_or_default() {
                held.push((name.clone(), version));
            }
        }
        // The same model's versions first: the likeliest to share chunks.
        let model = staging.manifest.name.clone();
        held.sort_by_key(|(name, _)| *name != model);
        let (mut chunks, mut bytes) = (0, 0);
        for (name, version) in held {
            if staging.is_complete() {
                break;
            }
            match store.read(&name, &version) {
                Ok((_, data)) => {
                    let (c, b) = staging.fill_from(&data)?;
                    chunks += c;
                    bytes += b;
                }
                Err(e) => tracing::warn!(model = %name, version = %version, "delta: installed version not read: {e}"),
            }
        }
        staging.checkpoint()?;
        self.deps.metrics.ota_bytes_held.inc_by(bytes);
        tracing::info!(
            command = %hex(&staging.command.id), chunks, bytes, of = staging.manifest.artifact_size(),
            took_ms = started.elapsed().as_millis() as u64, "delta: chunks copied from installed versions"
        );
        Ok(())
    }

    fn abort(&self, staging: Staging, reason: String) {
        self.fail(staging.command.id, reason);
        staging.remove();
    }

    // ---- transfer --------------------------------------------------------------------

    /// A chunk from the link.
    pub fn on_chunk(&mut self, bytes: &[u8]) {
        let dropped = |reason: &'static str| self.deps.metrics.chunks_dropped.get_or_create(&Reason { reason }).inc();
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
        let now = self.now();
        if let Some(wait) = self.transfers[pos].clock.admit(now, chunk.data.len()) {
            // Over the cap: wait before taking more. The link's queue fills meanwhile, and
            // what it drops is asked for again.
            std::thread::sleep(wait);
        }
        let now = self.now();
        let t = &mut self.transfers[pos];
        let fresh = match t.staging.accept(&chunk) {
            Ok(Accepted::Stored { bytes }) => {
                self.deps.metrics.ota_bytes.inc_by(bytes as u64);
                CommandStats::count(&self.deps.metrics.chunks, "stored");
                true
            }
            Ok(Accepted::Duplicate) => {
                CommandStats::count(&self.deps.metrics.chunks, "duplicate");
                false
            }
            Err(e @ (StagingError::BadHash(_) | StagingError::OutOfRange { .. })) => {
                tracing::warn!(command = %hex(&t.staging.command.id), "ota: {e}");
                dropped(if matches!(e, StagingError::BadHash(_)) { "bad_hash" } else { "out_of_range" });
                return;
            }
            Err(e) => return self.abort_transfer(pos, e.to_string()),
        };
        let actions = t.clock.on_chunk(now, fresh, t.staging.percent(), t.staging.is_complete());
        self.carry_out(pos, actions);
    }

    /// Carries out a transfer's actions; returns whether the transfer is still there.
    fn carry_out(&mut self, pos: usize, actions: Vec<Action>) -> bool {
        for action in actions {
            let t = &mut self.transfers[pos];
            let id = t.staging.command.id;
            match action {
                Action::Checkpoint => {
                    if let Err(e) = t.staging.checkpoint() {
                        self.abort_transfer(pos, e.to_string());
                        return false;
                    }
                }
                Action::Progress(p) => self.deps.acks.send(id, AckState::Progress(p)),
                Action::AskMissing(max) => {
                    let need = Need {
                        version: Need::VERSION,
                        device: self.deps.config.device_id.clone(),
                        transfer_id: t.staging.manifest.transfer_id,
                        missing: t.staging.missing(max),
                    };
                    self.deps.metrics.chunks_requested.inc_by(need.missing.len() as u64);
                    tracing::info!(
                        command = %hex(&id), received = t.staging.received(),
                        of = t.staging.manifest.chunk_count(), "transfer stalled; asking for missing chunks"
                    );
                    self.deps.acks.need(edge_proto::encode(&need));
                }
                Action::Complete => {
                    if let Err(e) = t.staging.checkpoint() {
                        self.abort_transfer(pos, e.to_string());
                        return false;
                    }
                    let t = self.transfers.remove(pos);
                    self.deps.acks.send(id, AckState::Progress(100));
                    self.validate(t.staging);
                    return false;
                }
                Action::Expire => {
                    let t = self.transfers.remove(pos);
                    let reason = format!(
                        "transfer incomplete ({} of {} chunks) when the command expired; staged data deleted",
                        t.staging.received(),
                        t.staging.manifest.chunk_count()
                    );
                    self.fail(id, reason);
                    t.staging.remove();
                    return false;
                }
            }
        }
        true
    }

    fn abort_transfer(&mut self, pos: usize, reason: String) {
        let t = self.transfers.remove(pos);
        self.fail(t.staging.command.id, reason);
        t.staging.remove();
    }

    fn cancel_transfers(&mut self, name: &str, reason: &str) {
        let (gone, kept): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.transfers).into_iter().partition(|t| t.staging.manifest.name == name);
        self.transfers = kept;
        for t in gone {
            self.count("cancelled");
            self.deps.acks.send(t.staging.command.id, AckState::Failed(reason.to_string()));
            t.staging.remove();
        }
    }

    // ---- validation and install ------------------------------------------------------

    /// Checks the hashes and runs the validation child on a thread of its own.
    fn validate(&mut self, staging: Staging) {
        let id = staging.command.id;
        let ota = &self.deps.config.ota;
        let limits =
            Limits { memory_bytes: ota.validation_memory(), timeout: Duration::from_secs(ota.validation_timeout_secs) };
        let program = self.deps.program.clone();
        let settings = crate::models::load::Settings::of(&self.deps.config.models, &staging.manifest.name);
        let Some(input) = self.deps.input.upgrade() else {
            return tracing::warn!(command = %hex(&id), "stopping; the staged transfer is validated at the next start");
        };
        self.validating.push((id, false));
        let spawned = std::thread::Builder::new().name("validate".into()).spawn(move || {
            let result = check(&staging, &program, limits, &settings);
            let _ = input.blocking_send(Input::Validated(Box::new(Validated { staging, result })));
        });
        if let Err(e) = spawned {
            self.validating.retain(|(v, _)| *v != id);
            self.fail(id, format!("cannot start the validation thread: {e}"));
        }
    }

    /// The validation thread's report: install and start the trial, or fail.
    pub fn on_validated(&mut self, v: Validated) {
        let Validated { staging, result } = v;
        let id = staging.command.id;
        let Some(pos) = self.validating.iter().position(|(v, _)| *v == id) else { return staging.remove() };
        let (_, cancelled) = self.validating.remove(pos);
        if cancelled {
            return staging.remove();
        }
        let model = match result {
            Ok(m) => m,
            Err(reason) => {
                self.fail(id, reason);
                return staging.remove();
            }
        };
        let m = staging.manifest.clone();
        let installed = self.models().store().install(&m, &model);
        drop(model);
        if let Err(e) = installed {
            self.fail(id, e.to_string());
            return staging.remove();
        }
        // The staging goes once the trial is recorded: a power cut before that finds it
        // complete at the next start and installs it again (the same hash: nothing to do).
        self.installed(id, &m.name, &m.version, staging.command.payload.shadow_pct());
        staging.remove();
    }

    /// An installed version goes on trial, or, for a shadow deploy, runs as a shadow of the
    /// active version on `shadow_pct` % of the requests (the deploy succeeds once it runs).
    fn installed(&mut self, id: [u8; 16], name: &str, version: &str, shadow_pct: Option<u8>) {
        let Some(pct) = shadow_pct else { return self.activate_new(id, name, version) };
        match self.models().start_shadow(name, version, pct) {
            Ok(()) => self.succeed(id, name, version, &format!("running as a shadow on {pct} % of the requests")),
            Err(e) => self.fail(id, format!("installed, but not started as a shadow: {e}")),
        }
    }

    /// Puts a freshly installed version on trial and watches its health against the one
    /// it replaces.
    fn activate_new(&mut self, id: [u8; 16], name: &str, version: &str) {
        self.end_watches(name);
        let (base, mark) = health::baseline(&self.deps.stats, name);
        let started = self.models().begin_trial(id, name, version, base.clone());
        let trial = match started {
            Ok(Some(t)) => t,
            Ok(None) => return self.succeed(id, name, version, "already active"),
            Err(e) => return self.fail(id, e),
        };
        if trial.previous == crate::models::trial::Previous::Nothing {
            // Loaded without killing the agent, and nothing to compare its health with.
            if let Err(e) = self.models().mark_good(name) {
                tracing::warn!(model = name, "{e}");
            }
            return self.succeed(id, name, version, "first version, nothing to compare with");
        }
        let window = Duration::from_secs(self.deps.config.ota.health_window_secs);
        tracing::info!(model = name, version, previous = %trial.previous, "on trial for {window:?}");
        self.deps.metrics.trials_started.inc();
        self.watches.push((Watch::new(id, name, version, base, self.now(), window), mark));
    }

    fn succeed(&self, id: [u8; 16], name: &str, version: &str, note: &str) {
        self.count("succeeded");
        tracing::info!(command = %hex(&id), model = name, version, "deploy succeeded ({note})");
        self.deps.acks.send(id, AckState::Succeeded);
    }

    /// Another command about `name` (activate, rollback, remove) ends its health window:
    /// the deploy itself went through.
    pub fn end_watches(&mut self, name: &str) {
        let (ended, kept): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.watches).into_iter().partition(|(w, _)| w.name == name);
        self.watches = kept;
        for (w, _) in ended {
            self.models().abandon_trial(name);
            self.trial_ended("superseded");
            self.succeed(w.command_id, &w.name, &w.version, "health window ended early by another command");
        }
    }

    // ---- time ------------------------------------------------------------------------

    /// Time passes: stalled and expired transfers, health windows.
    pub fn on_tick(&mut self) {
        let (now, wall) = (self.now(), crate::clock::now_ms());
        let mut i = 0;
        while i < self.transfers.len() {
            let actions = self.transfers[i].clock.on_tick(now, wall);
            if self.carry_out(i, actions) {
                i += 1;
            }
        }
        let policy = self.deps.config.ota.clone();
        let mut i = 0;
        while i < self.watches.len() {
            let (w, mark) = &self.watches[i];
            let record = health::since(&self.deps.stats, &w.name, mark);
            match w.step(now, &record, &policy) {
                Step::Wait => i += 1,
                Step::MarkGood(summary) => {
                    let (w, _) = self.watches.remove(i);
                    self.trial_ended("passed");
                    match self.models().mark_good(&w.name) {
                        Ok(()) => self.succeed(w.command_id, &w.name, &w.version, &summary),
                        Err(e) => self.fail(w.command_id, e),
                    }
                }
                Step::RollBack(why) => {
                    let (w, _) = self.watches.remove(i);
                    self.count("rolled_back");
                    self.trial_ended("rolled_back");
                    let reason = match self.models().fail_trial(&w.name) {
                        Ok(back) => format!("{why}; rolled back to {back}"),
                        Err(e) => format!("{why}; rollback failed: {e}"),
                    };
                    tracing::error!(command = %hex(&w.command_id), "{reason}");
                    self.deps.acks.send(w.command_id, AckState::Failed(reason));
                }
            }
        }
    }

    // ---- operator commands -----------------------------------------------------------

    /// `cancel`: a transfer stops, a validation's result is dropped, a trial rolls back.
    pub fn cancel(&mut self, command_id: [u8; 16]) -> Result<(), String> {
        if let Some(pos) = self.transfers.iter().position(|t| t.staging.command.id == command_id) {
            let t = self.transfers.remove(pos);
            t.staging.remove();
            self.count("cancelled");
            self.deps.acks.send(command_id, AckState::Failed("cancelled by the operator".into()));
            return Ok(());
        }
        if let Some(v) = self.validating.iter_mut().find(|(v, _)| *v == command_id) {
            v.1 = true;
            self.count("cancelled");
            self.deps.acks.send(command_id, AckState::Failed("cancelled by the operator during validation".into()));
            return Ok(());
        }
        if let Some(pos) = self.watches.iter().position(|(w, _)| w.command_id == command_id) {
            let (w, _) = self.watches.remove(pos);
            let back = self.models().fail_trial(&w.name)?;
            self.count("cancelled");
            self.trial_ended("cancelled");
            self.deps
                .acks
                .send(command_id, AckState::Failed(format!("cancelled by the operator; rolled back to {back}")));
            return Ok(());
        }
        Err(format!("no deploy {} is in progress", hex(&command_id)))
    }

    /// `revoke-key`: transfers of commands `key_id` signed stop (failed), so that nothing a
    /// revoked key asked for is installed from then on. A version already validating or on
    /// trial goes on to its verdict: it was checked while the key was trusted.
    pub fn cancel_signed_by(&mut self, key_id: &[u8; 8]) {
        let (gone, kept) = std::mem::take(&mut self.transfers)
            .into_iter()
            .partition(|t| t.staging.command.signers().any(|s| s == *key_id));
        self.transfers = kept;
        for t in gone {
            self.count("cancelled");
            let reason = format!("cancelled: key {} that signed it was revoked", hex(key_id));
            self.deps.acks.send(t.staging.command.id, AckState::Failed(reason));
            t.staging.remove();
        }
    }

    /// `erase`: every deploy in progress ends (failed: erased).
    pub fn erase(&mut self) {
        for t in std::mem::take(&mut self.transfers) {
            self.deps.acks.send(t.staging.command.id, AckState::Failed("erased".into()));
            t.staging.remove();
        }
        for v in &mut self.validating {
            v.1 = true;
        }
        for _ in std::mem::take(&mut self.watches) {
            self.trial_ended("erased");
        }
    }

    /// `remove-model`: its transfers stop and its health window ends.
    pub fn forget_model(&mut self, name: &str) {
        self.cancel_transfers(name, "the model was removed");
        self.end_watches(name);
    }

    // ---- start and stop --------------------------------------------------------------

    /// After a restart: trials the start-up settled, then staged transfers (their commands
    /// checked again against `trusted`; complete ones validated, the rest wait for chunks).
    pub fn resume(&mut self, resumed: Vec<Resumed>, trusted: &[edge_proto::command::VerifyingKey]) {
        // A staging removed after its trial began may survive a cut there: its deploy is
        // already decided, so it must not be installed and tried again.
        let decided: Vec<[u8; 16]> = resumed
            .iter()
            .filter_map(|r| match r {
                Resumed::Restored { command_id, .. } => Some(*command_id),
                Resumed::Trial(t) => t.command_id(),
            })
            .collect();
        for r in resumed {
            match r {
                Resumed::Restored { command_id, reason } => {
                    self.count("rolled_back");
                    self.trial_ended("rolled_back");
                    self.deps.acks.send(command_id, AckState::Failed(reason));
                }
                Resumed::Trial(t) => {
                    let Some(id) = t.command_id() else { continue };
                    self.models().resume_trial(&t);
                    let (_, mark) = health::baseline(&self.deps.stats, &t.name);
                    let window = Duration::from_secs(self.deps.config.ota.health_window_secs);
                    self.watches.push((Watch::new(id, &t.name, &t.version, t.base, self.now(), window), mark));
                }
            }
        }
        for (dir, bytes) in Staging::list(&self.ota_root()) {
            let staging = edge_proto::command::verify(&bytes, trusted)
                .map_err(|e| e.to_string())
                .and_then(|cmd| Staging::open(&dir, cmd).map_err(|e| e.to_string()));
            let staging = match staging {
                Ok(s) if decided.contains(&s.command.id) => {
                    s.remove();
                    continue;
                }
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
                self.deps.acks.send(staging.command.id, AckState::Progress(100));
                self.validate(staging);
                continue;
            }
            let clock = Transfer::new(self.pacing(&staging.command), self.now(), staging.percent(), true);
            self.transfers.push(Active { staging, clock });
        }
    }

    /// An orderly stop: transfers checkpointed, trials marked as stopped in order.
    pub fn stop(&mut self) {
        for t in &mut self.transfers {
            if let Err(e) = t.staging.checkpoint() {
                tracing::warn!("ota: checkpoint at shutdown: {e}");
            }
        }
        self.models().stop_in_order();
    }
}

/// The validation thread's work: the staged model's and validation vector's hashes, then
/// the child process.
fn check(
    staging: &Staging,
    program: &std::path::Path,
    limits: Limits,
    settings: &crate::models::load::Settings,
) -> Result<Vec<u8>, String> {
    let model = staging.read_model().map_err(|e| e.to_string())?;
    staging.read_validation().map_err(|e| e.to_string())?;
    crate::ota::validate::write_settings(staging.dir(), settings)?;
    let report = validate_in_child(program, staging.dir(), limits);
    match report.sandbox.as_deref() {
        Some(s) if s.contains("NOT") => tracing::warn!("validation child: {s}; see docs/security.md"),
        Some(s) => tracing::info!("validation child confined: {s}"),
        None => {}
    }
    if !report.passed {
        return Err(format!("validation failed: {}", report.reason.unwrap_or_else(|| "no reason given".into())));
    }
    let m = &staging.manifest;
    tracing::info!(
        model = %m.name, version = %m.version, max_abs_diff = ?report.max_abs_diff, median_ms = ?report.median_ms,
        "validation passed"
    );
    Ok(model)
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
