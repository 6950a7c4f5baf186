//! Telemetry to Prometheus: a persistent MQTT session of its own reads every device's
//! telemetry and writes it through remote write ([`crate::remote_write`]), each sample at
//! its own time, once ([`crate::progress`]), labelled from the inventory
//! ([`crate::series`]).
//!
//! # Delivery
//!
//! The session is `{client_id}-metrics`, QoS 1, clean session off, manual acks, subscribed
//! to `{prefix}/+/telemetry`, or with replicas `$share/{share_group}-metrics/…` (they split
//! it; [`crate::progress`] keeps the deduplication right when one device's samples are
//! split); the inventory's session is another one, so a Prometheus that is down or slow
//! never holds up the inventory (or deployments). A message is acked to
//! the broker only once the write holding it was answered:
//!
//! - 2xx: the marks ([`crate::progress`]) are stored, then the messages are acked;
//! - no answer or 5xx: the same request is sent again with backoff ([`BACKOFF`]) until it
//!   is accepted; meanwhile nothing is acked, the broker stops sending once its in-flight
//!   window is full, and holds the rest in the session's queue (backpressure, not loss;
//!   Mosquitto's `max_queued_messages` bounds that queue: size it for the outage to ride
//!   out);
//! - 4xx (or Prometheus 2.4x's `500 too old sample`, see [`remote_write::classify`]): the
//!   receiver refuses the request as it is (a sample older than it accepts, a duplicate
//!   with another value). Prometheus refuses a whole request for one such sample,
//!   so a refused batch is split in halves and each sent again, down to single messages;
//!   a single message refused is logged with the receiver's reason and what to do, counted
//!   (`edge_fleet_export_messages_total{result="rejected"}`) and acked: sending it again
//!   would be refused again.
//!
//! # Batching
//!
//! Messages are gathered into one request until it holds [`MAX_SAMPLES`] samples, the
//! first has waited [`MAX_WAIT`], or none has come for [`IDLE`]. The last bound matters:
//! the broker sends a session at most `max_inflight_messages` unacked messages (20 by
//! default in Mosquitto), so a batch waiting for more would wait for nothing.
//!
//! Two tasks, as in [`crate::ingest`]: the poll task only moves messages to the writer over
//! a bounded channel, so rumqttc's poll never waits for Prometheus.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use edge_mqtt::MqttConfig;
use edge_proto::topics::fleet;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use rumqttc::Publish;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::db::Db;
use crate::ingest::IngestError;
use crate::progress::{is_new, record, Mark, Progress};
use crate::remote_write::{self, Client, Endpoint, Outcome, Series};
use crate::series;
use crate::session::{self, Acks, Consumer, Filters};

/// Most samples in one write request.
pub const MAX_SAMPLES: usize = 2000;
/// Longest a message waits for others to share its request.
pub const MAX_WAIT: Duration = Duration::from_millis(200);
/// A batch is sent when no message came for this long.
pub const IDLE: Duration = Duration::from_millis(25);
/// Delays between attempts at a write that got no answer or a 5xx: doubling, then the last.
pub const BACKOFF: [Duration; 5] = [
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
];
/// Messages between the poll task and the writer: more than a broker sends unacked.
const QUEUE: usize = 1024;

/// The `result` label of `edge_fleet_export_messages_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// `written`, `duplicate`, `rejected` or `undecodable`.
    pub result: &'static str,
}

/// The export's counters, cheap to clone (they share their values).
#[derive(Clone, Debug, Default)]
pub struct ExportMetrics {
    /// `edge_fleet_export_messages_total{result}`: telemetry messages by what became of
    /// them: `written` to Prometheus, skipped as a `duplicate`, `rejected` by Prometheus
    /// (4xx), `undecodable`.
    pub messages: Family<ResultLabel, Counter>,
    /// `edge_fleet_export_samples_written_total`: samples Prometheus accepted.
    pub samples: Counter,
    /// `edge_fleet_export_write_failures_total`: writes that got no answer or a 5xx (each
    /// attempt counts; they are sent again).
    pub failures: Counter,
    /// `edge_fleet_export_db_errors_total`: progress or label reads and writes that failed.
    pub db_errors: Counter,
}

impl ExportMetrics {
    fn count(&self, result: &'static str, n: u64) {
        self.messages.get_or_create(&ResultLabel { result }).inc_by(n);
    }

    /// Adds the export's metrics to `r` (prefixed `edge_fleet_` there).
    pub fn register(&self, r: &mut Registry) {
        r.register("export_messages", "Telemetry messages exported, by result", self.messages.clone());
        r.register("export_samples_written", "Samples Prometheus accepted through remote write", self.samples.clone());
        r.register(
            "export_write_failures",
            "Remote writes that got no answer or a 5xx, each attempt (they are retried)",
            self.failures.clone(),
        );
        r.register(
            "export_db_errors",
            "Failed reads and writes of the export's progress and labels",
            self.db_errors.clone(),
        );
    }
}

/// Starts the export when `[prometheus] remote_write_url` is set: its task logs any error
/// and cancels the service, as every component does.
pub fn spawn(
    config: &crate::Config,
    db: Db,
    metrics: ExportMetrics,
    cancel: CancellationToken,
) -> Option<tokio::task::JoinHandle<()>> {
    let url = config.prometheus.remote_write_url.clone()?;
    let mqtt = config.mqtt.clone();
    let client_id = format!("{}-metrics", config.client_id);
    // A group of its own: in the inventory's group, the export's sessions would split the
    // telemetry with the inventory's instead of each getting all of it.
    let group = config.share_group.as_ref().map(|g| format!("{g}-metrics"));
    let filters = Filters::split(vec![], &[fleet::telemetry(&mqtt.topic_prefix, None)], group.as_deref());
    Some(tokio::spawn(async move {
        let endpoint = match Endpoint::parse(&url) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!("{e}");
                cancel.cancel();
                return;
            }
        };
        if let Err(e) = run(mqtt, client_id, filters, endpoint, db, metrics, cancel.clone()).await {
            tracing::error!("telemetry export stopped: {e}");
            cancel.cancel();
        }
    }))
}

/// Connects as `client_id`, subscribes to `filters` and exports until `cancel`. Connection
/// errors are logged and retried with backoff; only a configuration problem returns.
pub async fn run(
    mqtt: MqttConfig,
    client_id: String,
    filters: Filters,
    endpoint: Endpoint,
    db: Db,
    metrics: ExportMetrics,
    cancel: CancellationToken,
) -> Result<(), IngestError> {
    let (client, mut eventloop) = crate::session::connect(&mqtt, client_id.clone(), session::REQUESTS, true)?;
    let (mut consumer, rx, acks) = Consumer::new(QUEUE);
    let stop_writer = cancel.child_token();
    tracing::info!(url = %endpoint.url, client_id, "telemetry export to Prometheus started");
    let writer = Writer {
        acks,
        prefix: mqtt.topic_prefix.clone(),
        progress: Progress::new(db),
        remote: Client::new(endpoint),
        metrics,
        cancel: stop_writer.clone(),
    };
    let writer = tokio::spawn(writer.run(rx));
    session::pump(&mqtt, "telemetry export", &client, &mut eventloop, &filters, Some(&mut consumer), &cancel).await;
    stop_writer.cancel();
    let _ = writer.await;
    session::leave(&mqtt, "telemetry export", &client, &mut eventloop, Some(&mut consumer)).await;
    Ok(())
}

/// One message of a batch: what to ack, and what to write for it.
struct Entry {
    publish: Publish,
    /// Its series; empty when there is nothing to write (a duplicate, undecodable).
    series: Vec<Series>,
    /// The device and the sample's `(seq, ts)`, recorded once written.
    sample: Option<(String, u64, u64)>,
}

struct Writer {
    acks: Acks,
    prefix: String,
    progress: Progress,
    remote: Client,
    metrics: ExportMetrics,
    cancel: CancellationToken,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<Publish>) {
        loop {
            let first = tokio::select! {
                _ = self.cancel.cancelled() => return,
                p = rx.recv() => match p {
                    Some(p) => p,
                    None => return,
                },
            };
            // Marks of this batch over the stored ones: a redelivery inside one batch is a
            // duplicate too.
            let mut pending: HashMap<String, Mark> = HashMap::new();
            let mut batch = vec![self.entry(first, &mut pending).await];
            let mut samples = batch[0].series.len();
            let deadline = Instant::now() + MAX_WAIT;
            while samples < MAX_SAMPLES {
                let wait = deadline.saturating_duration_since(Instant::now()).min(IDLE);
                match tokio::time::timeout(wait, rx.recv()).await {
                    Ok(Some(p)) => {
                        let e = self.entry(p, &mut pending).await;
                        samples += e.series.len();
                        batch.push(e);
                    }
                    Ok(None) | Err(_) => break,
                }
            }
            if !self.deliver(&batch).await {
                // Cancelled before Prometheus took it: nothing acked, the broker sends it again.
                return;
            }
            let mut written: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
            for (device, seq, ts) in batch.iter().filter_map(|e| e.sample.as_ref()) {
                written.entry(device.clone()).or_default().push((*seq, *ts));
            }
            if let Err(e) = self.progress.save(&written).await {
                // The samples are in Prometheus: ack anyway. A redelivery writes them again,
                // which Prometheus takes as a no-op.
                self.metrics.db_errors.inc();
                tracing::error!("telemetry export: cannot store the progress of {} devices: {e}", written.len());
            }
            for e in &batch {
                self.acks.ack(&e.publish);
            }
        }
    }

    /// Decodes `p`, decides whether it is new, and makes its series.
    async fn entry(&mut self, p: Publish, pending: &mut HashMap<String, Mark>) -> Entry {
        let skip = |publish| Entry { publish, series: Vec::new(), sample: None };
        let device = crate::inventory::route(&self.prefix, &p.topic).map(|(_, d)| d);
        let t = match edge_proto::telemetry::decode(&p.payload) {
            Ok(t) if device == Some(t.device.as_str()) => t,
            Ok(t) => {
                self.metrics.count("undecodable", 1);
                tracing::warn!(topic = %p.topic, device = %t.device, "telemetry export: skipped a sample naming another device than its topic");
                return skip(p);
            }
            Err(e) => {
                self.metrics.count("undecodable", 1);
                tracing::warn!(topic = %p.topic, bytes = p.payload.len(), "telemetry export: skipped: {e}");
                return skip(p);
            }
        };
        let last = match pending.get(&t.device) {
            Some(m) => Some(*m),
            None => self.progress.mark(&t.device).await.unwrap_or_else(|e| {
                // Without the mark, write: a duplicate sample is a no-op in Prometheus.
                self.metrics.db_errors.inc();
                tracing::warn!(device = %t.device, "telemetry export: {e}; writing without deduplication");
                None
            }),
        };
        if !is_new(last, t.seq, t.ts) {
            self.metrics.count("duplicate", 1);
            tracing::debug!(device = %t.device, seq = t.seq, "telemetry export: duplicate skipped");
            return skip(p);
        }
        let labels = self.progress.labels(&t.device).await.unwrap_or_else(|e| {
            self.metrics.db_errors.inc();
            tracing::warn!(device = %t.device, "telemetry export: {e}; writing without group and version labels");
            Default::default()
        });
        pending.insert(t.device.clone(), record(last, t.seq, t.ts));
        Entry { series: series::of(&t, &labels), sample: Some((t.device, t.seq, t.ts)), publish: p }
    }

    /// Writes the batch; a refused part is split down to single messages. `false` when
    /// cancelled before every part was answered.
    async fn deliver(&mut self, batch: &[Entry]) -> bool {
        // Ranges of `batch` still to send, the next one last.
        let mut parts: Vec<std::ops::Range<usize>> = Vec::new();
        parts.push(0..batch.len());
        let mut backoff = BACKOFF.iter();
        while let Some(part) = parts.pop() {
            let entries = &batch[part.clone()];
            let written = entries.iter().filter(|e| !e.series.is_empty()).count() as u64;
            let series = series::merge(entries.iter().flat_map(|e| e.series.iter().cloned()));
            if series.is_empty() {
                continue;
            }
            let samples: usize = series.iter().map(|s| s.samples.len()).sum();
            let body = remote_write::body(&series);
            loop {
                match self.remote.write(body.clone()).await {
                    Outcome::Accepted => {
                        self.metrics.samples.inc_by(samples as u64);
                        self.metrics.count("written", written);
                        backoff = BACKOFF.iter();
                        break;
                    }
                    Outcome::Rejected { status, reason } if part.len() > 1 => {
                        tracing::debug!(
                            status,
                            "telemetry export: {} messages refused together ({reason}); splitting",
                            part.len()
                        );
                        let mid = part.start + part.len() / 2;
                        // Popped last first: the earlier half is sent first.
                        parts.push(mid..part.end);
                        parts.push(part.start..mid);
                        break;
                    }
                    Outcome::Rejected { status, reason } => {
                        let e = &entries[0];
                        self.metrics.count("rejected", 1);
                        tracing::error!(
                            topic = %e.publish.topic,
                            seq = e.sample.as_ref().map(|s| s.1),
                            ts = e.sample.as_ref().map(|s| s.2),
                            "Prometheus refused this sample (HTTP {status}: {reason}); it is dropped. If it says out \
                             of bounds or too old, the sample is older than Prometheus accepts: raise \
                             storage.tsdb.out_of_order_time_window in its configuration (or check the device's clock)"
                        );
                        break;
                    }
                    Outcome::Failed(reason) => {
                        self.metrics.failures.inc();
                        let delay = *backoff.next().unwrap_or(&BACKOFF[BACKOFF.len() - 1]);
                        tracing::warn!(
                            url = %self.remote.endpoint().url,
                            "telemetry export: remote write failed: {reason}; {samples} samples held, retrying in {delay:?}"
                        );
                        tokio::select! {
                            _ = self.cancel.cancelled() => return false,
                            _ = tokio::time::sleep(delay) => {}
                        }
                    }
                }
            }
        }
        true
    }
}
