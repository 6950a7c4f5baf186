//! `edge-agent run`: wires the components together and shuts them down in order.
//!
//! ```text
//! telemetry ──> link (MQTT) ──> broker
//!                 └── outbox (disk) while offline
//! http: /v1 inference API ──> serving registry (worker pools per model version)
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
use tokio_util::task::TaskTracker;

use std::collections::HashMap;
use std::path::PathBuf;

use crate::config::{host_port, Config, ModelConfig};
use crate::engine::{self, Model};
use crate::http::{self, Metrics};
use crate::link::{Link, LinkSettings, LinkStats};
use crate::outbox::Outbox;
use crate::sdnotify::{self, Notifier};
use crate::serving::{PoolSettings, Registry};
use crate::stats::InferenceStats;
use crate::telemetry::{Sampler, SeqStore, Telemetry};

/// How long components get to finish after a shutdown request.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(5);

/// Runs a component; an error or a panic is logged and cancels everything.
fn supervise<F>(tracker: &TaskTracker, cancel: &CancellationToken, name: &'static str, fut: F)
where
    F: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let cancel = cancel.clone();
    let handle = tokio::spawn(fut);
    tracker.spawn(async move {
        match handle.await {
            Ok(Ok(())) => tracing::debug!("{name} stopped"),
            Ok(Err(e)) => {
                tracing::error!("{name} failed: {e:#}; shutting down");
                cancel.cancel();
            }
            Err(e) => {
                tracing::error!("{name} crashed: {e}; shutting down");
                cancel.cancel();
            }
        }
    });
}

async fn shutdown_signal(cancel: CancellationToken) {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await
            }
        }
    };
    tokio::select! {
        _ = term => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupt: shutting down"),
        _ = cancel.cancelled() => {}
    }
    cancel.cancel();
}

/// What identifies a configured model version: a change means a new activation.
fn identity(m: &ModelConfig) -> (PathBuf, String) {
    (m.path.clone(), m.version.clone())
}

/// Loads and activates the configured models that are not active in that version yet; one
/// that fails is logged and left as it was (the previous version keeps serving), the rest
/// serve. Models no longer configured stop.
fn apply_models(
    config: &Config,
    registry: &Registry,
    active: &mut HashMap<String, (PathBuf, String)>,
    failures: &prometheus_client::metrics::counter::Counter,
) {
    registry.expect(config.models.iter().map(|m| m.name.clone()).collect());
    for m in &config.models {
        if active.get(&m.name) == Some(&identity(m)) {
            continue;
        }
        let settings = PoolSettings { workers: m.workers, queue: m.queue };
        let result = engine::options_for(m).and_then(|o| Model::load(&m.path, &o)).map_err(|e| e.to_string()).and_then(
            |model| registry.activate(&m.name, &m.version, Arc::new(model), settings).map_err(|e| e.to_string()),
        );
        match result {
            Ok(()) => {
                tracing::info!(model = %m.name, version = %m.version, path = %m.path.display(), "model loaded");
                active.insert(m.name.clone(), identity(m));
            }
            Err(e) => {
                failures.inc();
                tracing::error!(model = %m.name, version = %m.version, path = %m.path.display(), "model not loaded: {e}");
            }
        }
    }
    let configured: Vec<&str> = config.models.iter().map(|m| m.name.as_str()).collect();
    active.retain(|name, _| {
        let keep = configured.contains(&name.as_str());
        if !keep {
            registry.deactivate(name);
        }
        keep
    });
}

/// Re-reads the configuration on SIGHUP and activates changed models. A configuration that
/// no longer checks out is logged and ignored: the agent keeps its last good state.
async fn reload_on_sighup(
    path: PathBuf,
    registry: Arc<Registry>,
    mut active: HashMap<String, (PathBuf, String)>,
    mut failures: prometheus_client::metrics::counter::Counter,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = hup.recv() => {}
        }
        tracing::info!("SIGHUP: reloading models from {}", path.display());
        let config = match Config::load(&path) {
            Ok(c) => c,
            Err(e) => {
                failures.inc();
                tracing::error!("reload refused, keeping the running models: {e}");
                continue;
            }
        };
        let registry = registry.clone();
        let done = tokio::task::spawn_blocking(move || {
            apply_models(&config, &registry, &mut active, &failures);
            (active, failures)
        })
        .await?;
        (active, failures) = done;
    }
}

/// Runs the agent until a shutdown signal. `config_path` is re-read on SIGHUP.
pub async fn run(config: Config, config_path: Option<PathBuf>) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("state_dir {}: cannot create", config.state_dir.display()))?;
    let topics = Topics::new(&config.mqtt.topic_prefix, &config.device_id).context("device_id or topic_prefix")?;
    let (host, port) = host_port(&config.mqtt.url).context("[mqtt] url has no host:port")?;
    let tls = if config.mqtt.url.starts_with("mqtts://") {
        Some(crate::link::tls::client_config(&config.mqtt.ca_file, &config.mqtt.cert_file, &config.mqtt.key_file)?)
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
    let mut active = HashMap::new();
    apply_models(&config, &registry, &mut active, &load_failures);
    let link_stats = Arc::new(LinkStats::default());
    let outbox_dir = config.state_dir.join("outbox");
    let outbox = Outbox::open(
        &outbox_dir,
        config.telemetry.outbox_max_bytes,
        Duration::from_secs(config.telemetry.outbox_ttl_secs),
    )
    .with_context(|| format!("outbox {}", outbox_dir.display()))?;
    let settings = LinkSettings {
        topics,
        host,
        port,
        tls,
        max_packet_bytes: config.mqtt.max_packet_bytes,
        network_timeout: Duration::from_secs(config.mqtt.network_timeout_secs),
        keep_alive: Duration::from_secs(config.mqtt.keep_alive_secs),
        models: registry.list().iter().map(|s| s.name.clone()).collect(),
        backoff_base: Duration::from_millis(500),
        backoff_max: Duration::from_secs(config.mqtt.reconnect_max_secs),
    };
    let (link, link_handle) = Link::new(settings, outbox, link_stats.clone());
    let samples = prometheus_client::metrics::counter::Counter::default();
    let telemetry = Telemetry {
        sampler: Sampler::new(&config.device_id, &config.state_dir).context("system sampler")?,
        seq: SeqStore::open(&config.state_dir.join("telemetry.seq"))?,
        interval: Duration::from_secs(config.telemetry.interval_secs),
        link: link_handle,
        link_stats: link_stats.clone(),
        models: inference.clone(),
        samples: samples.clone(),
    };
    let link_stats_for_status = link_stats.clone();
    let metrics = Arc::new(Metrics::new(link_stats, &inference, samples, registry.clone(), load_failures.clone()));
    let listener = tokio::net::TcpListener::bind(&config.http.listen)
        .await
        .with_context(|| format!("[http] listen {}: cannot bind", config.http.listen))?;
    tracing::info!(device = %config.device_id, broker = %config.mqtt.url, http = %config.http.listen, "edge-agent started");

    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    supervise(&tracker, &cancel, "link", link.run(cancel.clone()));
    supervise(&tracker, &cancel, "telemetry", telemetry.run(cancel.clone()));
    let api = crate::serving::api::router(registry.clone(), config.http.max_body_bytes);
    supervise(&tracker, &cancel, "http", http::serve(listener, metrics, api, cancel.clone()));
    let status_registry = registry.clone();
    if let Some(path) = config_path {
        supervise(&tracker, &cancel, "reload", reload_on_sighup(path, registry, active, load_failures, cancel.clone()));
    }
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
    notifier.notify("READY=1");
    supervise(
        &tracker,
        &cancel,
        "sd_notify",
        sdnotify::supervise(notifier, Notifier::watchdog_interval(), status, cancel.clone()),
    );
    tracker.close();
    shutdown_signal(cancel.clone()).await;
    if tokio::time::timeout(SHUTDOWN_DEADLINE, tracker.wait()).await.is_err() {
        tracing::warn!("components did not stop within {SHUTDOWN_DEADLINE:?}; exiting anyway");
    }
    tracing::info!("edge-agent stopped");
    Ok(())
}
