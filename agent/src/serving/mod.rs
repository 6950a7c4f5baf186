//! Serving models to local applications: a registry of active model versions, per-model
//! worker threads with bounded queues, and stateful sessions.
//!
//! - Each active version has its own `Pool`: worker threads that each keep a spawned tract
//!   state, fed by a bounded queue. A full queue is an immediate [`ServeError::Busy`]
//!   (HTTP 503 with `Retry-After`): backpressure instead of unbounded memory.
//! - [`Registry::activate`] swaps a model's active version atomically. A request holds an
//!   `Arc` of the version it started on, so in-flight requests finish there while new ones
//!   go to the new version; the old pool drains its queue and stops when the last request
//!   lets go.
//! - Stateful models keep their state in a [`Sessions`] entry that requests name; idle
//!   sessions expire.
//!
//! The HTTP API ([`api`]: TF Serving's routes, and the Open Inference Protocol's in [`v2`]) and
//! the MQTT `infer` command use this same path.

pub mod api;
pub mod json;
pub mod shadow;
pub mod v2;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use edge_proto::profile::Profile;
use tract_core::internal::Tensor;

use crate::engine::{inputs_fit, EngineError, Model, Session, TensorSpec};
use crate::stats::{InferenceStats, Outcome};
use crate::tensor_stats::Side;

/// Why a request was not served.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// No such model.
    #[error("no model named {0:?}")]
    UnknownModel(String),
    /// No such session.
    #[error("no session {0:?} for model {1:?} (expired or never created)")]
    UnknownSession(String, String),
    /// The model's queue is full.
    #[error("model {0:?} is busy: its queue of {1} requests is full")]
    Busy(String, usize),
    /// The request's inputs do not fit the model.
    #[error("{0}")]
    BadInput(String),
    /// Inference itself failed.
    #[error("inference failed: {0}")]
    Failed(String),
    /// The request waited longer than its deadline.
    #[error("model {0:?} did not answer within {1:?}")]
    Timeout(String, Duration),
    /// The requested version is not the active one.
    #[error("model {0:?} version {1:?} is not active (active: {2:?})")]
    InactiveVersion(String, String, String),
    /// Every session slot is taken.
    #[error("{0} sessions are open, the most this agent keeps; close one or wait for one to expire")]
    TooManySessions(usize),
    /// The model is not stateful, so sessions make no sense.
    #[error("model {0:?} keeps no state between calls; sessions are for stateful models")]
    Stateless(String),
}

impl From<EngineError> for ServeError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::BadInput(m) => ServeError::BadInput(m),
            other => ServeError::Failed(other.to_string()),
        }
    }
}

/// Serving settings for one model.
#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    /// Worker threads.
    pub workers: usize,
    /// Requests that may wait beyond the ones running.
    pub queue: usize,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings { workers: 1, queue: 16 }
    }
}

type Reply = tokio::sync::oneshot::Sender<Result<Vec<Tensor>, ServeError>>;

struct Job {
    inputs: Vec<Tensor>,
    session: Option<Arc<Mutex<Session>>>,
    reply: Reply,
}

/// Worker threads for one model version.
struct Pool {
    tx: SyncSender<Job>,
    queue: usize,
    /// Requests waiting in the queue (not yet taken by a worker), for `/metrics`.
    waiting: Arc<AtomicUsize>,
}

impl Pool {
    fn start(
        name: &str,
        version: &str,
        model: &Arc<Model>,
        settings: PoolSettings,
        stats: &Arc<InferenceStats>,
    ) -> Result<Pool, ServeError> {
        let (tx, rx) = sync_channel::<Job>(settings.queue);
        let rx = Arc::new(Mutex::new(rx));
        let waiting = Arc::new(AtomicUsize::new(0));
        for i in 0..settings.workers.max(1) {
            let mut own = model.session()?;
            let rx = rx.clone();
            let waiting = waiting.clone();
            let name = name.to_string();
            let version = version.to_string();
            let model = model.clone();
            let stats = stats.clone();
            std::thread::Builder::new()
                .name(format!("infer-{name}-{i}"))
                .spawn(move || loop {
                    // The queue closes when the pool is dropped; the worker then ends.
                    let job = match rx.lock().expect("queue lock").recv() {
                        Ok(job) => job,
                        Err(_) => return,
                    };
                    waiting.fetch_sub(1, Ordering::Relaxed);
                    // The statistics (within their time budget) describe the inputs before
                    // the run consumes them and the outputs before the answer takes them:
                    // no copy of either. Requests that fail are not counted (their inputs,
                    // described before the run, stay in the figures).
                    let tensors = &stats.tensors;
                    let describe = tensors.admit(&name, &version);
                    let mut took = describe
                        .then(|| tensors.describe_side(&name, &version, Side::Input, model.inputs(), &job.inputs));
                    let started = std::time::Instant::now();
                    let result = match &job.session {
                        Some(shared) => shared.lock().expect("session lock").run(job.inputs),
                        None => {
                            // A request without a session starts from the initial state.
                            own.reset();
                            own.run(job.inputs)
                        }
                    };
                    let ran = started.elapsed();
                    if let (Some(t), Ok(outputs)) = (took.as_mut(), &result) {
                        *t += tensors.describe_side(&name, &version, Side::Output, model.outputs(), outputs);
                    }
                    let ok = result.is_ok();
                    let _ = job.reply.send(result.map_err(ServeError::from));
                    if ok {
                        tensors.account(&name, &version, ran, took);
                    }
                })
                .map_err(|e| ServeError::Failed(format!("cannot start a worker thread: {e}")))?;
        }
        Ok(Pool { tx, queue: settings.queue, waiting })
    }
}

/// One active model version.
pub struct Served {
    /// Model name.
    pub name: String,
    /// Version label.
    pub version: String,
    /// The loaded model.
    pub model: Arc<Model>,
    pool: Pool,
    activated: Instant,
}

impl std::fmt::Debug for Served {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Served").field("name", &self.name).field("version", &self.version).finish()
    }
}

impl Served {
    /// Public inputs.
    pub fn inputs(&self) -> &[TensorSpec] {
        self.model.inputs()
    }

    /// Public outputs.
    pub fn outputs(&self) -> &[TensorSpec] {
        self.model.outputs()
    }

    /// Requests waiting for a worker now.
    pub fn queued(&self) -> usize {
        self.pool.waiting.load(Ordering::Relaxed)
    }

    /// Most requests that may wait; one more is refused as busy (503).
    pub fn queue_capacity(&self) -> usize {
        self.pool.queue
    }

    /// Seconds since this version became active.
    pub fn active_secs(&self) -> u64 {
        self.activated.elapsed().as_secs()
    }
}

/// Stateful sessions, keyed by id.
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, SessionEntry>>,
}

struct SessionEntry {
    model: String,
    session: Arc<Mutex<Session>>,
    last_used: Instant,
}

/// Active model versions and their sessions.
pub struct Registry {
    models: RwLock<HashMap<String, Arc<Served>>>,
    expected: RwLock<Vec<String>>,
    sessions: Sessions,
    stats: Arc<InferenceStats>,
    /// Input signatures of the versions that models on trial replaced: a request the new
    /// version refuses but the previous one would have taken counts as the model's failure.
    priors: RwLock<HashMap<String, Vec<TensorSpec>>>,
    /// The shadow of each model that has one ([`shadow`]).
    shadows: RwLock<HashMap<String, Arc<shadow::Shadow>>>,
    /// How long a request may wait for its answer.
    pub timeout: Duration,
    /// How long an unused session lives.
    pub session_ttl: Duration,
    /// Most sessions open at once: each holds a model state in memory.
    pub max_sessions: usize,
}

impl Registry {
    /// An empty registry.
    pub fn new(stats: Arc<InferenceStats>, timeout: Duration, session_ttl: Duration) -> Registry {
        Registry {
            models: RwLock::new(HashMap::new()),
            expected: RwLock::new(vec![]),
            sessions: Sessions::default(),
            stats,
            priors: RwLock::new(HashMap::new()),
            shadows: RwLock::new(HashMap::new()),
            timeout,
            session_ttl,
            max_sessions: 64,
        }
    }

    /// Makes `version` of `name` the active one. Requests already running or queued finish
    /// on the version they started on.
    pub fn activate(
        &self,
        name: &str,
        version: &str,
        model: Arc<Model>,
        settings: PoolSettings,
    ) -> Result<(), ServeError> {
        let pool = Pool::start(name, version, &model, settings, &self.stats)?;
        self.stats.register(name);
        self.stats.activated(name, version, model.format().name());
        let served = Arc::new(Served {
            name: name.to_string(),
            version: version.to_string(),
            model,
            pool,
            activated: Instant::now(),
        });
        let old = self.models.write().expect("registry lock").insert(name.to_string(), served);
        // A shadow promoted is no shadow any more.
        if self.shadow(name).is_some_and(|s| s.version == version) {
            self.set_shadow(name, None);
        }
        if let Some(old) = old {
            if old.version != version {
                self.stats.tensors.retire(name, &old.version);
            }
            tracing::info!(model = name, from = %old.version, to = version, "model version activated");
        } else {
            tracing::info!(model = name, version, "model activated");
        }
        Ok(())
    }

    /// Gives `version` of `name` its reference profile (or none) for drift, with the
    /// half-life of its drift windows ([`crate::tensor_stats::TensorStats::set_profile`]):
    /// before it is activated, so that its first requests count.
    pub fn set_profile(&self, name: &str, version: &str, profile: Option<Arc<Profile>>, half_life: Duration) {
        self.stats.tensors.set_profile(name, version, profile, half_life);
    }

    /// While a new version of `name` is on trial: the input signature of the version it
    /// replaced (`None` when the trial ends), to tell a caller's mistake from a regression.
    pub fn set_prior_inputs(&self, name: &str, prior: Option<Vec<TensorSpec>>) {
        let mut priors = self.priors.write().expect("registry lock");
        match prior {
            Some(specs) => priors.insert(name.to_string(), specs),
            None => priors.remove(name),
        };
    }

    /// Runs `shadow` beside `name`'s active version (replacing any other), or, with `None`,
    /// stops `name`'s shadow. Its worker ends with the last request it holds.
    pub fn set_shadow(&self, name: &str, shadow: Option<Arc<shadow::Shadow>>) {
        let mut shadows = self.shadows.write().expect("registry lock");
        let old = match shadow {
            Some(s) => {
                tracing::info!(model = name, version = %s.version, sample_pct = s.sample_pct, "shadow started");
                shadows.insert(name.to_string(), s)
            }
            None => {
                let old = shadows.remove(name);
                if old.is_some() {
                    self.stats.shadow_ended(name);
                }
                old
            }
        };
        if let Some(old) = old {
            tracing::info!(model = name, version = %old.version, "shadow stopped");
        }
    }

    /// The statistics requests are recorded in.
    pub fn stats(&self) -> Arc<InferenceStats> {
        self.stats.clone()
    }

    /// `name`'s shadow, if it has one.
    pub fn shadow(&self, name: &str) -> Option<Arc<shadow::Shadow>> {
        self.shadows.read().expect("registry lock").get(name).cloned()
    }

    /// The models the configuration asks for; readiness waits for all of them.
    pub fn expect(&self, names: Vec<String>) {
        *self.expected.write().expect("registry lock") = names;
    }

    /// Configured models that are not active.
    pub fn missing(&self) -> Vec<String> {
        let active = self.models.read().expect("registry lock");
        self.expected.read().expect("registry lock").iter().filter(|n| !active.contains_key(*n)).cloned().collect()
    }

    /// Stops serving `name`; requests already running finish.
    pub fn deactivate(&self, name: &str) -> bool {
        let removed = self.models.write().expect("registry lock").remove(name);
        if let Some(old) = &removed {
            self.stats.tensors.retire(name, &old.version);
        }
        let removed = removed.is_some();
        if removed {
            self.set_shadow(name, None);
            self.stats.deactivated(name);
            tracing::info!(model = name, "model deactivated");
        }
        removed
    }

    /// The active version of `name`.
    pub fn get(&self, name: &str) -> Result<Arc<Served>, ServeError> {
        self.models
            .read()
            .expect("registry lock")
            .get(name)
            .cloned()
            .ok_or_else(|| ServeError::UnknownModel(name.into()))
    }

    /// Every active model, by name.
    pub fn list(&self) -> Vec<Arc<Served>> {
        let mut v: Vec<_> = self.models.read().expect("registry lock").values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Opens a session on the active version of a stateful model.
    pub fn open_session(&self, name: &str) -> Result<String, ServeError> {
        let served = self.get(name)?;
        if !served.model.is_stateful() {
            return Err(ServeError::Stateless(name.into()));
        }
        let session = served.model.session()?;
        let id = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
        let mut map = self.sessions.map.lock().expect("sessions lock");
        let ttl = self.session_ttl;
        map.retain(|_, e| e.last_used.elapsed() < ttl);
        if map.len() >= self.max_sessions {
            return Err(ServeError::TooManySessions(self.max_sessions));
        }
        map.insert(
            id.clone(),
            SessionEntry { model: name.into(), session: Arc::new(Mutex::new(session)), last_used: Instant::now() },
        );
        Ok(id)
    }

    /// Ends a session.
    pub fn close_session(&self, name: &str, id: &str) -> Result<(), ServeError> {
        let mut map = self.sessions.map.lock().expect("sessions lock");
        match map.get(id) {
            Some(e) if e.model == name => {
                map.remove(id);
                Ok(())
            }
            _ => Err(ServeError::UnknownSession(id.into(), name.into())),
        }
    }

    /// The session `id` of model `name`, if it is alive; using it keeps it alive.
    pub fn session(&self, name: &str, id: &str) -> Result<Arc<Mutex<Session>>, ServeError> {
        let mut map = self.sessions.map.lock().expect("sessions lock");
        let ttl = self.session_ttl;
        match map.get_mut(id) {
            Some(e) if e.model == name && e.last_used.elapsed() < ttl => {
                e.last_used = Instant::now();
                Ok(e.session.clone())
            }
            Some(e) if e.model == name => {
                map.remove(id);
                Err(ServeError::UnknownSession(id.into(), name.into()))
            }
            _ => Err(ServeError::UnknownSession(id.into(), name.into())),
        }
    }

    /// Counts a request to `name` refused before it reached the model (see
    /// [`InferenceStats::refused`]), `elapsed` after it arrived.
    pub fn refused(&self, name: &str, elapsed: Duration) {
        self.stats.refused(name, elapsed);
    }

    /// Runs one request on the active version of `name`, in session `session` if given.
    pub async fn predict(
        &self,
        name: &str,
        inputs: Vec<Tensor>,
        session: Option<&str>,
    ) -> Result<Vec<Tensor>, ServeError> {
        let session = session.map(|id| self.session(name, id)).transpose()?;
        self.predict_on(self.get(name)?, inputs, session).await
    }

    /// Runs one request on `served`, the version the caller already picked (a request
    /// pinned to a version must not move to one activated meanwhile).
    pub async fn predict_on(
        &self,
        served: Arc<Served>,
        inputs: Vec<Tensor>,
        session: Option<Arc<Mutex<Session>>>,
    ) -> Result<Vec<Tensor>, ServeError> {
        let name = served.name.clone();
        // Only while a trial runs: would the replaced version have taken these inputs?
        let prior_fits = self.priors.read().expect("registry lock").get(&name).map(|p| inputs_fit(p, &inputs).is_ok());
        // A sampled stateless request is copied to the shadow once answered.
        let shadow = session.is_none().then(|| self.shadow(&name)).flatten().filter(|s| s.sampled());
        let copy = shadow.as_ref().map(|_| inputs.clone());
        let started = Instant::now();
        self.stats.begin(&name);
        let result = self.submit(served, inputs, session).await;
        if let (Some(shadow), Some(inputs), Ok(outputs)) = (shadow, copy, &result) {
            shadow.offer(inputs, outputs.clone());
        }
        let outcome = match &result {
            Ok(_) => Outcome::Ok,
            Err(ServeError::BadInput(_)) if prior_fits == Some(true) => Outcome::Regression,
            Err(ServeError::BadInput(_)) => Outcome::ClientError,
            Err(ServeError::Busy(..)) => Outcome::Busy,
            Err(ServeError::Timeout(..)) => Outcome::Timeout,
            Err(_) => Outcome::ModelError,
        };
        self.stats.end(&name, started.elapsed(), outcome);
        result
    }

    async fn submit(
        &self,
        served: Arc<Served>,
        inputs: Vec<Tensor>,
        session: Option<Arc<Mutex<Session>>>,
    ) -> Result<Vec<Tensor>, ServeError> {
        let name = served.name.clone();
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job = Job { inputs, session, reply };
        // Counted before the send: the worker that takes the job counts it out.
        served.pool.waiting.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = served.pool.tx.try_send(job) {
            served.pool.waiting.fetch_sub(1, Ordering::Relaxed);
            return Err(match e {
                TrySendError::Full(_) => ServeError::Busy(name, served.pool.queue),
                TrySendError::Disconnected(_) => ServeError::Failed("model workers stopped".into()),
            });
        }
        // `served` stays alive until the answer arrives: the version this request started
        // on keeps running even if another version is activated meanwhile.
        let result = tokio::time::timeout(self.timeout, answer).await;
        drop(served);
        match result {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(ServeError::Failed("worker ended without answering".into())),
            Err(_) => Err(ServeError::Timeout(name, self.timeout)),
        }
    }
}
