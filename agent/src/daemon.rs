//! `edge-agent run`: wires the components together and shuts them down in order.
//!
//! ```text
//! telemetry ──> link (MQTT) ──> broker
//!                 └── outbox (disk) while offline
//! http (/metrics, /healthz, /readyz) reads the shared counters
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

use crate::config::{host_port, Config};
use crate::engine::{self, Model};
use crate::http::{self, Metrics};
use crate::link::{Link, LinkSettings, LinkStats};
use crate::outbox::Outbox;
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

/// Loads the configured models; one that fails is logged and left out, the rest serve.
fn load_models(config: &Config, stats: &InferenceStats) -> Vec<(String, Arc<Model>)> {
    let mut loaded = vec![];
    for m in &config.models {
        let result = engine::options_for(m).and_then(|o| Model::load(&m.path, &o));
        match result {
            Ok(model) => {
                stats.register(&m.name);
                tracing::info!(model = %m.name, path = %m.path.display(), "model loaded");
                loaded.push((m.name.clone(), Arc::new(model)));
            }
            Err(e) => tracing::error!(model = %m.name, path = %m.path.display(), "model not loaded: {e}"),
        }
    }
    loaded
}

/// Runs the agent until a shutdown signal.
pub async fn run(config: Config) -> anyhow::Result<()> {
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
    let models = load_models(&config, &inference);
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
        models: models.iter().map(|(n, _)| n.clone()).collect(),
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
    let metrics = Arc::new(Metrics::new(link_stats, &inference, samples, models.len()));
    let listener = tokio::net::TcpListener::bind(&config.http.listen)
        .await
        .with_context(|| format!("[http] listen {}: cannot bind", config.http.listen))?;
    tracing::info!(device = %config.device_id, broker = %config.mqtt.url, http = %config.http.listen, "edge-agent started");

    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    supervise(&tracker, &cancel, "link", link.run(cancel.clone()));
    supervise(&tracker, &cancel, "telemetry", telemetry.run(cancel.clone()));
    supervise(&tracker, &cancel, "http", http::serve(listener, metrics, cancel.clone()));
    tracker.close();
    shutdown_signal(cancel.clone()).await;
    if tokio::time::timeout(SHUTDOWN_DEADLINE, tracker.wait()).await.is_err() {
        tracing::warn!("components did not stop within {SHUTDOWN_DEADLINE:?}; exiting anyway");
    }
    tracing::info!("edge-agent stopped");
    Ok(())
}
