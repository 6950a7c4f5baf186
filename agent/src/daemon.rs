//! `edge-agent run`: wires the components together and shuts them down in order.
//!
//! ```text
//! telemetry ──> link (MQTT) ──> broker
//!                 ├── outboxes (disk) for telemetry and acks while offline
//!                 └──> commands (own thread) ──> gate, OTA staging, store, registry
//!                          acks ──> link
//! http: /v1 (TF Serving) and /v2 (OIP) APIs ──> serving registry (worker pools per model version)
//!       /metrics, /healthz, /readyz read the shared counters
//! SIGHUP ──> reload: activate changed model versions
//! ```
//!
//! SIGTERM or Ctrl-C cancels one token; every component drains and returns, and the daemon
//! waits for them up to a deadline. A component that fails or panics is logged and starts
//! the same orderly shutdown.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use edge_proto::topics::Topics;
use tokio_util::sync::CancellationToken;

use std::path::PathBuf;
use std::sync::Mutex;

use crate::commands::control::{CommandStats, Control, ControlDeps, Input};
use crate::commands::settings::{LogControl, RuntimeSettings, Settings};
use crate::commands::{Gate, Operators, Policy, ReplayWindow};
use crate::config::{host_port, Config};
use crate::http::{self, Metrics};
use crate::link::{Link, LinkSettings, LinkStats};
use crate::models::Models;
use crate::outbox::Outbox;
use crate::sdnotify::{self, Notifier};
use crate::serving::Registry;
use crate::stats::InferenceStats;
use crate::store::Store;
use crate::supervisor::{supervise, ShutdownSignal, Tracker};
use crate::telemetry::{Sampler, SeqStore, Telemetry};

/// How long components get to finish after a shutdown request.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(5);

/// Binds `[http] listen` (and `metrics_listen`) and reads the API token.
async fn http_endpoint(c: &crate::config::HttpConfig) -> anyhow::Result<http::Endpoint> {
    let bind = |key: &'static str, addr: String| async move {
        tokio::net::TcpListener::bind(&addr).await.with_context(|| format!("[http] {key} {addr}: cannot bind"))
    };
    let api = bind("listen", c.listen.clone()).await?;
    let metrics = match &c.metrics_listen {
        Some(addr) => Some(bind("metrics_listen", addr.clone()).await?),
        None => None,
    };
    // check-config read it too; read again here, as the file may have changed since.
    let token = c
        .token_file
        .as_deref()
        .map(|p| crate::config::read_token_file(p).map(|t| http::auth::Token::new(&t)))
        .transpose()
        .map_err(|m| anyhow::anyhow!("[http] token_file: {m}"))?;
    Ok(http::Endpoint {
        api,
        metrics,
        token,
        connections: http::server::ConnLimits {
            max_connections: c.max_connections,
            header_timeout: Duration::from_secs(c.header_timeout_secs),
        },
        max_body: c.max_body_bytes,
        max_queued: c.max_queued_bytes,
        body_timeout: Duration::from_secs(c.body_timeout_secs),
    })
}

/// Re-reads the configuration on SIGHUP and activates changed models. A configuration that
/// no longer checks out is logged and ignored: the agent keeps its last good state. `hup`
/// is registered by the caller before READY=1: a SIGHUP that came first would otherwise
/// kill the agent (its default action), which systemd counts as a clean exit.
async fn reload_on_sighup(
    mut hup: tokio::signal::unix::Signal,
    path: Option<PathBuf>,
    models: Arc<Mutex<Models>>,
    failures: prometheus_client::metrics::counter::Counter,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = hup.recv() => {}
        }
        let Some(path) = &path else {
            tracing::warn!("SIGHUP: the agent was started without a configuration file; nothing to reload");
            continue;
        };
        tracing::info!("SIGHUP: reloading models from {}", path.display());
        let config = match Config::load(path) {
            Ok(c) => c,
            Err(e) => {
                failures.inc();
                tracing::error!("reload refused, keeping the running models: {e}");
                continue;
            }
        };
        let models = models.clone();
        tokio::task::spawn_blocking(move || models.lock().expect("models lock").reload(config.models)).await?;
    }
}

/// Why the agent stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stopped {
    /// A signal (SIGTERM, Ctrl-C).
    Shutdown,
    /// A `restart` command: the service manager should start it again.
    Restart,
    /// A component failed or panicked, and the rest shut down in order: the service
    /// manager should start it again.
    Failed {
        /// The component that failed first (`link`, `telemetry`, `http`, ...).
        component: &'static str,
        /// Its error, or its panic message.
        reason: String,
    },
}

/// Runs the agent until a shutdown signal. `config_path` is re-read on SIGHUP; `log`
/// changes the log filter at run time (`set-config`).
pub async fn run(config: Config, config_path: Option<PathBuf>, log: Option<LogControl>) -> anyhow::Result<Stopped> {
    // First: from here on a SIGHUP (`systemctl reload` during a slow start) is taken, not
    // the default action that would end the process.
    let hup =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).context("cannot listen for SIGHUP")?;
    crate::fsutil::create_dir_all(&config.state_dir)
        .with_context(|| format!("state_dir {}: cannot create", config.state_dir.display()))?;
    // Before anything else writes there: keeps the bookkeeping writable on a full disk.
    let disk = crate::disk::open_reserve(&config.state_dir);
    let config_text = config_path.as_ref().and_then(|p| std::fs::read(p).ok()).unwrap_or_default();
    let settings = RuntimeSettings::load(&config.state_dir).unwrap_or_else(|| RuntimeSettings {
        telemetry_interval_secs: config.telemetry.interval_secs.min(u32::MAX as u64) as u32,
        log_level: std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
    });
    if let Some(set) = &log {
        if let Err(e) = set(&settings.log_level) {
            tracing::warn!("runtime.json log_level {:?}: {e}", settings.log_level);
        }
    }
    let key = if config.ota.encrypt_models {
        Some(crate::store::load_or_create_key(&config.model_key_file())?)
    } else {
        None
    };
    let store = Store::open(&config.state_dir.join("models"), key)?;
    let configured = crate::commands::operators::configured(&config.ota)
        .map_err(|e| anyhow::anyhow!("{}: {}", e.field, e.reason))?;
    let operators = Operators::load(configured, &config.state_dir)?;
    if operators.trusted_keys().is_empty() {
        tracing::warn!(
            "no operator key is trusted ([ota] trusted_keys, [[ota.operators]]): every fleet command will be refused"
        );
    }
    for line in operators.describe() {
        tracing::info!(target: "audit", "trusts {line}");
    }
    let gate = Gate::new(Policy::from_config(&config), operators, ReplayWindow::open_in(&config.state_dir)?);
    let topics = Topics::new(&config.mqtt.topic_prefix, &config.device_id).context("device_id or topic_prefix")?;
    let (host, port) = host_port(&config.mqtt.url).context("[mqtt] url has no host:port")?;
    let tls = if config.mqtt.url.starts_with("mqtts://") {
        Some(edge_mqtt::client_config(&config.mqtt.ca_file, &config.mqtt.cert_file, &config.mqtt.key_file)?)
    } else {
        tracing::warn!(
            "[mqtt] url {} is plaintext (allow_insecure = true): telemetry is readable on the network",
            config.mqtt.url
        );
        None
    };

    let inference = Arc::new(InferenceStats::default());
    let registry = Arc::new(Registry::new(
        inference.clone(),
        Duration::from_secs(config.http.request_timeout_secs),
        Duration::from_secs(config.http.session_ttl_secs),
    ));
    let load_failures = prometheus_client::metrics::counter::Counter::default();
    // Loading and optimising models can outlast TimeoutStartSec on a slow board.
    let stored = store.names().map(|n| n.len()).unwrap_or(0);
    Notifier::from_env().extend_timeout(sdnotify::start_budget(config.models.len() + stored));
    let mut models = Models::new(&config, store, registry.clone(), load_failures.clone());
    // Interrupted trials are settled (a version that killed the agent twice is replaced by
    // the one before it) before anything serves.
    let resumed = models.boot();
    let models = Arc::new(Mutex::new(models));
    let link_stats = Arc::new(LinkStats::default());
    let outbox_dir = config.state_dir.join("outbox");
    let outbox = Outbox::open(
        &outbox_dir,
        config.telemetry.outbox_max_bytes,
        Duration::from_secs(config.telemetry.outbox_ttl_secs),
    )
    .with_context(|| format!("outbox {}", outbox_dir.display()))?;
    let acks_dir = config.state_dir.join("acks");
    let acks = Outbox::open(&acks_dir, 4 * 1024 * 1024, Duration::from_secs(config.telemetry.outbox_ttl_secs))
        .with_context(|| format!("ack outbox {}", acks_dir.display()))?;
    // What the retained status says of the models until the command component, on its
    // first turn, replaces it with the full `get-status` view (installed versions, health).
    let model_states = tokio::sync::watch::channel(
        registry
            .list()
            .iter()
            .map(|s| edge_proto::command::ModelStatus {
                name: s.name.clone(),
                active_version: Some(s.version.clone()),
                installed_versions: Vec::new(),
                health: "ok".into(),
            })
            .collect::<Vec<_>>(),
    );
    let link_settings = LinkSettings {
        topics,
        host,
        port,
        tls,
        max_packet_bytes: config.mqtt.max_packet_bytes,
        network_timeout: Duration::from_secs(config.mqtt.network_timeout_secs),
        keep_alive: Duration::from_secs(config.mqtt.keep_alive_secs),
        models: model_states.1.clone(),
        backoff_base: Duration::from_millis(500),
        backoff_max: Duration::from_secs(config.mqtt.reconnect_max_secs),
        groups: config.groups.clone(),
    };
    // A full command queue refuses commands as busy; a chunk waits briefly for room, then is
    // dropped (link::chunk_patience). Each chunk may be 1 MiB, so only a couple wait.
    let (inbound_tx, mut inbound_rx) =
        crate::link::inbound::queue(crate::link::inbound::COMMAND_QUEUE, crate::link::inbound::CHUNK_QUEUE);
    let (link, link_handle) = Link::new(link_settings, outbox, acks, Some(inbound_tx), link_stats.clone());
    let (interval_tx, interval_rx) =
        tokio::sync::watch::channel(Duration::from_secs(settings.telemetry_interval_secs.into()));
    let samples = prometheus_client::metrics::counter::Counter::default();
    // check-config and the TLS handshake report an unreadable certificate; here it only
    // leaves the expiry out of telemetry.
    let cert_not_after = match edge_mqtt::cert::read(&config.mqtt.cert_file) {
        Ok(c) => Some(c.not_after),
        Err(_) if !config.mqtt.url.starts_with("mqtts://") => None,
        Err(e) => {
            tracing::warn!("certificate expiry not reported in telemetry: {e}");
            None
        }
    };
    let telemetry = Telemetry {
        sampler: Sampler::new(&config.device_id, &config.state_dir, disk.clone(), cert_not_after)
            .context("system sampler")?,
        seq: SeqStore::open(&config.state_dir.join("telemetry.seq")),
        interval: interval_rx,
        link: link_handle.clone(),
        link_stats: link_stats.clone(),
        models: inference.clone(),
        samples: samples.clone(),
        encoding: config.telemetry.encoding,
    };
    let link_stats_for_status = link_stats.clone();
    let command_stats = CommandStats::default();
    let metrics = Arc::new(Metrics::new(
        link_stats,
        &inference,
        samples,
        registry.clone(),
        load_failures.clone(),
        &command_stats,
        disk,
        cert_not_after,
    ));
    let endpoint = http_endpoint(&config.http).await?;
    tracing::info!(
        device = %config.device_id,
        broker = %config.mqtt.url,
        http = %config.http.listen,
        metrics = config.http.metrics_listen.as_deref().unwrap_or("(on http)"),
        token = endpoint.token.is_some(),
        "edge-agent started"
    );

    let cancel = CancellationToken::new();
    let tracker = Tracker::new();
    let restart = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The command component runs on its own thread: file I/O and model loading must not
    // stall the runtime. It gets what the link receives, a tick twice a second, and the
    // reports of its validation threads.
    let (input_tx, input_rx) = tokio::sync::mpsc::channel::<Input>(2);
    let control = Control::new(ControlDeps {
        config: config.clone(),
        config_text,
        gate,
        models: models.clone(),
        resumed,
        registry: registry.clone(),
        stats: inference.clone(),
        link: link_handle,
        runtime: tokio::runtime::Handle::current(),
        settings: Settings { current: settings, state_dir: config.state_dir.clone(), interval: interval_tx, log },
        cancel: cancel.clone(),
        restart: restart.clone(),
        program: std::env::current_exe().context("cannot find the agent's own executable")?,
        metrics: command_stats,
        input: input_tx.downgrade(),
        model_states: model_states.0,
    });
    let control_thread = std::thread::Builder::new()
        .name("commands".into())
        .spawn(move || control.run(input_rx))
        .context("cannot start the command thread")?;
    let forward = input_tx.clone();
    let stop_forward = cancel.clone();
    supervise(&tracker, &cancel, "command input", async move {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = stop_forward.cancelled() => return Ok(()),
                Some(msg) = inbound_rx.recv() => {
                    if forward.send(Input::Inbound(msg)).await.is_err() {
                        anyhow::bail!("the command thread stopped");
                    }
                }
                _ = tick.tick() => {
                    let _ = forward.try_send(Input::Tick);
                }
            }
        }
    });
    drop(input_tx);
    supervise(&tracker, &cancel, "link", link.run(cancel.clone()));
    supervise(&tracker, &cancel, "telemetry", telemetry.run(cancel.clone()));
    let api = crate::serving::api::router(registry.clone(), config.http.max_body_bytes);
    supervise(&tracker, &cancel, "http", http::serve(endpoint, metrics, api, cancel.clone()));
    let status_registry = registry.clone();
    supervise(&tracker, &cancel, "reload", reload_on_sighup(hup, config_path, models, load_failures, cancel.clone()));
    // systemd: READY once everything runs, then STATUS and watchdog pings from this runtime.
    let notifier = Arc::new(Notifier::from_env());
    let link_status = link_stats_for_status.clone();
    let status = move || {
        let link =
            if link_status.connected.load(std::sync::atomic::Ordering::Relaxed) { "connected" } else { "disconnected" };
        format!(
            "broker {link}, {} models, {} samples queued",
            status_registry.list().len(),
            link_status.queued.load(std::sync::atomic::Ordering::Relaxed)
        )
    };
    // Listening before READY=1: a SIGTERM right after it must not kill the process outright.
    let signals = ShutdownSignal::listen();
    notifier.notify("READY=1");
    supervise(
        &tracker,
        &cancel,
        "sd_notify",
        sdnotify::supervise(notifier, Notifier::watchdog_interval(), status, cancel.clone()),
    );
    tracker.close();
    signals.wait(cancel.clone()).await;
    if tokio::time::timeout(SHUTDOWN_DEADLINE, tracker.wait()).await.is_err() {
        tracing::warn!("components did not stop within {SHUTDOWN_DEADLINE:?}; exiting anyway");
    }
    // The command thread ends once its input closes (the forwarding task has stopped);
    // it checkpoints staged transfers on the way out.
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = control_thread.join();
        let _ = done_tx.send(());
    });
    if tokio::time::timeout(SHUTDOWN_DEADLINE, done_rx).await.is_err() {
        tracing::warn!("the command thread did not stop within {SHUTDOWN_DEADLINE:?}; exiting anyway");
    }
    let restart = restart.load(std::sync::atomic::Ordering::SeqCst);
    let stopped = match tracker.failed() {
        Some(failed) => Stopped::Failed { component: failed.component, reason: failed.reason },
        None if restart => Stopped::Restart,
        None => Stopped::Shutdown,
    };
    tracing::info!(?stopped, "edge-agent stopped");
    Ok(stopped)
}
