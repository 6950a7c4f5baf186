//! The local HTTP endpoint: `/metrics` (Prometheus), `/healthz` and `/readyz`, and the
//! inference API's routes ([`crate::serving::api`]) behind the endpoint's guards.
//!
//! # Layout
//!
//! - [`server`]: the accept loop: a connection limit and hyper's header read timeout;
//! - [`auth`]: the bearer token of `[http] token_file`, checked before anything else;
//! - [`limits`]: the body size, the byte budget of requests in progress and the body read
//!   timeout, checked before a handler runs; the endpoint's counters.
//!
//! A request to the API listener passes connection limit → header timeout → token →
//! body limits → route. With `[http] metrics_listen`, `/metrics`, `/healthz` and `/readyz`
//! are also served on that second address without a token, and `/metrics` leaves the API
//! listener: Prometheus then needs no API token, and the API's address can stay private
//! while the metrics one is reachable by the scraper.

pub mod auth;
pub mod limits;
pub mod server;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::link::LinkStats;
use crate::stats::{InferenceStats, ModelLabel};

/// Label for outbox drops.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct Reason {
    reason: String,
}

/// Label for inbound messages the command queues had no room for.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct Kind {
    kind: String,
}

/// The label set of `edge_agent_build_info`: version, `git_sha` when the build set
/// `EDGE_AGENT_GIT_SHA`, and the target (architecture and OS: a plain `cargo build` has no
/// target triple to read, and these two are what tells an armv7 box from an aarch64 one).
fn build_labels() -> Vec<(&'static str, String)> {
    let mut labels = vec![("version", env!("CARGO_PKG_VERSION").to_string())];
    if let Some(sha) = option_env!("EDGE_AGENT_GIT_SHA").filter(|s| !s.is_empty()) {
        labels.push(("git_sha", sha.to_string()));
    }
    labels.push(("target", format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS)));
    labels
}

/// Everything `/metrics` exports.
pub struct Metrics {
    registry: Registry,
    link: Arc<LinkStats>,
    connected: Gauge,
    reconnects: Counter,
    queued: Gauge,
    dropped: Family<Reason, Counter>,
    bytes_sent: Counter,
    messages_sent: Counter,
    outbox_errors: Counter,
    sent_unstored: Counter,
    disk_full: Gauge,
    disk: Arc<crate::disk::DiskState>,
    state_disk_full: Gauge,
    reserve_bytes: Gauge,
    reserve_draws: Counter,
    no_space_errors: Counter,
    busy: Family<Kind, Counter>,
    models_loaded: Gauge,
    models: Arc<crate::serving::Registry>,
    queue_depth: Family<ModelLabel, Gauge>,
    queue_capacity: Family<ModelLabel, Gauge>,
    http: Arc<limits::HttpStats>,
}

/// Moves a counter up to a total kept elsewhere (counters only grow).
fn sync_counter(c: &Counter, total: u64) {
    let now = c.get();
    if total > now {
        c.inc_by(total - now);
    }
}

impl Metrics {
    /// Registers the agent's metrics. `cert_not_after` is the device certificate's expiry
    /// (Unix seconds), as the daemon read it once at start.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        link: Arc<LinkStats>,
        models: &InferenceStats,
        samples: Counter,
        serving: Arc<crate::serving::Registry>,
        load_failures: Counter,
        commands: &crate::commands::control::CommandStats,
        disk: Arc<crate::disk::DiskState>,
        cert_not_after: Option<i64>,
    ) -> Metrics {
        let mut registry = Registry::default();
        let build_info = Family::<Vec<(&'static str, String)>, Gauge>::default();
        build_info.get_or_create(&build_labels()).set(1);
        registry.register("edge_agent_build_info", "1, labelled with this agent's version and target", build_info);
        if let Some(not_after) = cert_not_after {
            let expiry: Gauge = Gauge::default();
            expiry.set(not_after);
            registry.register(
                "edge_agent_certificate_expiry_timestamp_seconds",
                "When the device certificate ([mqtt] cert_file) expires, Unix seconds; renew it before then",
                expiry,
            );
        }
        registry.register(
            "edge_agent_inference_duration_seconds",
            "Time from a request's arrival to its answer, by model and outcome (every outcome)",
            models.duration.clone(),
        );
        registry.register(
            "edge_agent_inference_requests",
            "Inference requests ended, by model and outcome (ok, bad_request, error, timeout, unavailable)",
            models.requests.clone(),
        );
        registry.register("edge_agent_inference_in_flight", "Inference requests running", models.in_flight.clone());
        models.shadow.register(&mut registry);
        registry.register(
            "edge_agent_model_info",
            "1 for the active version of each model, labelled with its version and format",
            models.model_info.clone(),
        );
        models.tensors.register(&mut registry);
        let m = Metrics {
            registry,
            link,
            connected: Gauge::default(),
            reconnects: Counter::default(),
            queued: Gauge::default(),
            dropped: Family::default(),
            bytes_sent: Counter::default(),
            messages_sent: Counter::default(),
            outbox_errors: Counter::default(),
            sent_unstored: Counter::default(),
            disk_full: Gauge::default(),
            disk,
            state_disk_full: Gauge::default(),
            reserve_bytes: Gauge::default(),
            reserve_draws: Counter::default(),
            no_space_errors: Counter::default(),
            busy: Family::default(),
            models_loaded: Gauge::default(),
            models: serving,
            queue_depth: Family::default(),
            queue_capacity: Family::default(),
            http: Arc::default(),
        };
        let mut m = m;
        let r = &mut m.registry;
        r.register("edge_agent_mqtt_connected", "1 when the broker connection is up", m.connected.clone());
        r.register("edge_agent_mqtt_reconnects", "Reconnections to the broker", m.reconnects.clone());
        r.register("edge_agent_mqtt_sent_bytes", "Telemetry bytes acknowledged by the broker", m.bytes_sent.clone());
        r.register(
            "edge_agent_mqtt_sent_messages",
            "Telemetry messages acknowledged by the broker",
            m.messages_sent.clone(),
        );
        r.register("edge_agent_outbox_queued_messages", "Telemetry messages waiting in the outbox", m.queued.clone());
        r.register(
            "edge_agent_outbox_dropped_messages",
            "Telemetry messages dropped from the outbox (full, expired), and messages it could not store (unstored)",
            m.dropped.clone(),
        );
        r.register("edge_agent_outbox_errors", "Messages the outbox could not store", m.outbox_errors.clone());
        r.register(
            "edge_agent_outbox_unstored_sent_messages",
            "Messages the outbox could not store, published directly without a copy on disk",
            m.sent_unstored.clone(),
        );
        r.register(
            "edge_agent_outbox_disk_full",
            "1 when the outbox's last write failed for lack of space",
            m.disk_full.clone(),
        );
        r.register(
            "edge_agent_disk_full",
            "1 when the state directory's file system is full (little free, the reserve drawn on, or a write \
             refused for lack of space); free space with remove-model",
            m.state_disk_full.clone(),
        );
        r.register(
            "edge_agent_disk_reserve_bytes",
            "Bytes held in reserve for the agent's bookkeeping on a full disk",
            m.reserve_bytes.clone(),
        );
        r.register("edge_agent_disk_reserve_draws", "Writes that drew on the reserve", m.reserve_draws.clone());
        r.register(
            "edge_agent_disk_no_space_errors",
            "Writes that failed for lack of space in the state directory",
            m.no_space_errors.clone(),
        );
        r.register(
            "edge_agent_inbound_busy_messages",
            "Commands refused as busy and OTA chunks dropped because their queue was full, by kind",
            m.busy.clone(),
        );
        r.register("edge_agent_telemetry_samples", "Telemetry samples taken", samples);
        r.register("edge_agent_models_loaded", "Models loaded and serving", m.models_loaded.clone());
        r.register(
            "edge_agent_inference_queue_depth",
            "Requests waiting for a worker of the model's active version",
            m.queue_depth.clone(),
        );
        r.register(
            "edge_agent_inference_queue_capacity",
            "Requests that may wait for a model's workers; one more is refused with 503",
            m.queue_capacity.clone(),
        );
        r.register(
            "edge_agent_http_refused_requests",
            "HTTP requests and connections refused before a handler ran, by reason (unauthorized, too_large, \
             busy, body_timeout, header_timeout, connections, broken_body)",
            m.http.refused.clone(),
        );
        r.register("edge_agent_http_connections", "HTTP connections open", m.http.connections.clone());
        r.register(
            "edge_agent_http_queued_bytes",
            "Bytes of request bodies held by HTTP requests in progress ([http] max_queued_bytes bounds them)",
            m.http.queued_bytes.clone(),
        );
        r.register("edge_agent_model_load_failures", "Model files that failed to load", load_failures);
        r.register(
            "edge_agent_commands",
            "Fleet commands received, by command, outcome (accepted, rejected) and reason (none when accepted)",
            commands.commands.clone(),
        );
        r.register("edge_agent_deploys", "Model deploys finished, by outcome", commands.deploys.clone());
        r.register("edge_agent_ota_received_bytes", "OTA chunk bytes written to staging", commands.ota_bytes.clone());
        r.register(
            "edge_agent_ota_held_bytes",
            "OTA chunk bytes of delta transfers copied from installed versions instead of received",
            commands.ota_bytes_held.clone(),
        );
        r.register(
            "edge_agent_ota_chunks",
            "OTA chunks of a transfer in progress, by outcome (stored, duplicate)",
            commands.chunks.clone(),
        );
        r.register("edge_agent_ota_dropped_chunks", "OTA chunks dropped, by reason", commands.chunks_dropped.clone());
        r.register(
            "edge_agent_ota_missing_chunks_requested",
            "OTA chunks asked for again by stalled transfers",
            commands.chunks_requested.clone(),
        );
        r.register("edge_agent_trials_started", "Deployed versions put on trial", commands.trials_started.clone());
        r.register(
            "edge_agent_trials_ended",
            "Trials ended, by outcome (passed, rolled_back, cancelled, superseded, erased)",
            commands.trials_ended.clone(),
        );
        m
    }

    /// The Prometheus text exposition, with link figures read now.
    pub fn render(&self) -> String {
        let l = &self.link;
        self.connected.set(l.connected.load(Ordering::Relaxed) as i64);
        sync_counter(&self.reconnects, l.reconnects.load(Ordering::Relaxed));
        sync_counter(&self.bytes_sent, l.bytes_sent.load(Ordering::Relaxed));
        sync_counter(&self.messages_sent, l.messages_sent.load(Ordering::Relaxed));
        sync_counter(&self.outbox_errors, l.outbox_errors.load(Ordering::Relaxed));
        sync_counter(&self.sent_unstored, l.sent_unstored.load(Ordering::Relaxed));
        self.disk_full.set(l.disk_full.load(Ordering::Relaxed) as i64);
        self.queued.set(l.queued.load(Ordering::Relaxed) as i64);
        self.state_disk_full.set(self.disk.full() as i64);
        self.reserve_bytes.set(self.disk.reserve_bytes() as i64);
        sync_counter(&self.reserve_draws, self.disk.reserve_draws());
        sync_counter(&self.no_space_errors, self.disk.no_space_errors());
        let served = self.models.list();
        self.models_loaded.set(served.len() as i64);
        // Rebuilt on every scrape: a removed model's queue leaves with it.
        self.queue_depth.clear();
        self.queue_capacity.clear();
        for s in &served {
            let label = ModelLabel { model: s.name.clone() };
            self.queue_depth.get_or_create(&label).set(s.queued() as i64);
            self.queue_capacity.get_or_create(&label).set(s.queue_capacity() as i64);
        }
        for (reason, total) in
            [("full", &l.dropped_full), ("expired", &l.dropped_expired), ("unstored", &l.dropped_unstored)]
        {
            sync_counter(&self.dropped.get_or_create(&Reason { reason: reason.into() }), total.load(Ordering::Relaxed));
        }
        for (kind, total) in [("command", &l.commands_busy), ("chunk", &l.chunks_busy)] {
            sync_counter(&self.busy.get_or_create(&Kind { kind: kind.into() }), total.load(Ordering::Relaxed));
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        openmetrics_to_prometheus_text(&out)
    }

    /// The HTTP endpoint's counters.
    pub fn http_stats(&self) -> Arc<limits::HttpStats> {
        self.http.clone()
    }

    /// Ready: connected to the broker, and every configured model active.
    fn ready(&self) -> Result<(), String> {
        if !self.link.connected.load(Ordering::Relaxed) {
            return Err("not connected to the broker".into());
        }
        let missing = self.models.missing();
        if !missing.is_empty() {
            return Err(format!("models not loaded: {}", missing.join(", ")));
        }
        Ok(())
    }
}

/// prometheus-client writes OpenMetrics, where a counter's HELP and TYPE name the family
/// (`x`) and its samples `x_total`. The Prometheus text format (what `promtool check
/// metrics` and older scrapers read) names them all `x_total` and has no `# EOF`.
fn openmetrics_to_prometheus_text(om: &str) -> String {
    let counters: std::collections::HashSet<&str> =
        om.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.strip_suffix(" counter")).collect();
    let mut out = String::with_capacity(om.len());
    for line in om.lines() {
        if line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters.contains(name).then(|| format!("{prefix}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

async fn metrics(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], m.render())
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    match m.ready() {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")),
    }
}

/// The endpoint's settings, from `[http]`.
#[derive(Debug)]
pub struct Endpoint {
    /// `[http] listen`: the API, and the probes; `/metrics` too without `metrics`.
    pub api: tokio::net::TcpListener,
    /// `[http] metrics_listen`: `/metrics` and the probes, without a token.
    pub metrics: Option<tokio::net::TcpListener>,
    /// `[http] token_file`, read.
    pub token: Option<auth::Token>,
    /// `[http] max_connections` and `header_timeout_secs`.
    pub connections: server::ConnLimits,
    /// `[http] max_body_bytes`, `max_queued_bytes` and `body_timeout_secs`.
    pub max_body: usize,
    /// See `max_body`.
    pub max_queued: usize,
    /// See `max_body`.
    pub body_timeout: std::time::Duration,
}

/// Connections the metrics listener serves at once: Prometheus and the probes need few.
const METRICS_CONNECTIONS: usize = 16;

/// Serves the metrics and health routes plus `api` (the inference API) until `cancel`.
pub async fn serve(
    endpoint: Endpoint,
    state: Arc<Metrics>,
    api: Router,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let stats = state.http_stats();
    let probes = Router::new().route("/healthz", get(healthz)).route("/readyz", get(readyz));
    let with_metrics = probes.clone().route("/metrics", get(metrics));
    let limits = limits::BodyLimits {
        max_body: endpoint.max_body,
        timeout: endpoint.body_timeout,
        budget: limits::Budget::new(endpoint.max_queued, stats.clone()),
        stats: stats.clone(),
    };
    let main = if endpoint.metrics.is_some() { probes } else { with_metrics.clone() };
    let mut app = main
        .with_state(state.clone())
        .merge(api)
        .layer(axum::middleware::from_fn_with_state(limits, limits::limit_body));
    // Outermost: a request without the token is refused before its body is read.
    if let Some(token) = endpoint.token {
        app = app.layer(axum::middleware::from_fn_with_state((token, stats.clone()), auth::require_token));
    }
    let api_server = server::run(endpoint.api, app, endpoint.connections.clone(), stats.clone(), cancel.clone());
    match endpoint.metrics {
        None => api_server.await?,
        Some(listener) => {
            let limits = server::ConnLimits {
                max_connections: METRICS_CONNECTIONS,
                header_timeout: endpoint.connections.header_timeout,
            };
            let metrics_server = server::run(listener, with_metrics.with_state(state), limits, stats, cancel);
            tokio::try_join!(api_server, metrics_server)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_named_with_total_and_eof_is_dropped() {
        let om = "# HELP a_requests Requests.\n# TYPE a_requests counter\na_requests_total 3\n\
                  # HELP a_up Up.\n# TYPE a_up gauge\na_up 1\n# EOF\n";
        assert_eq!(
            openmetrics_to_prometheus_text(om),
            "# HELP a_requests_total Requests.\n# TYPE a_requests_total counter\na_requests_total 3\n\
             # HELP a_up Up.\n# TYPE a_up gauge\na_up 1\n"
        );
    }
}
