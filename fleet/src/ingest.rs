//! Inventory ingestion: one persistent MQTT session that reads every device's status,
//! telemetry and acks, and stores what each says (`inventory::apply`) in the database;
//! statuses, acks and repair requests (`need`) then move the deployments on
//! ([`Deployments`]).
//!
//! Delivery: QoS 1, clean session off, a stable client id (`client_id` in fleet.toml), so
//! the broker queues what devices publish while the service is down (up to Mosquitto's
//! `max_queued_messages` per client) and delivers it on reconnect. Acks to the broker are
//! manual and sent only once a message is stored: a message that was being written when
//! the service died is delivered again. The subscriptions are made when the broker has no
//! session for this client id (the first start, or after `persistent_client_expiration`);
//! with a session, the broker already holds them, and its queue arrives in order, without
//! the retained statuses being replayed ahead of older queued ones.
//!
//! Two tasks, so that nothing slow sits inside rumqttc's poll: the poll task hands
//! messages to the store task over a small bounded channel; when the database is slow the
//! poll task waits, rumqttc stops reading, and the broker holds the rest (backpressure,
//! not loss). A message that does not decode is logged with its topic, counted and acked;
//! one the database refuses is retried with backoff ([`RETRIES`]), then counted as dropped.

use std::time::Duration;

use edge_mqtt::MqttConfig;
use edge_proto::topics::fleet;
use rumqttc::Publish;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::db::Db;
use crate::deployments::Deployments;
use crate::inventory::{self, Observation};
use crate::metrics::Metrics;
use crate::rollouts::Rollouts;
use crate::session::{self, Acks, Consumer, Filters};

/// Delays between attempts to store a message the database refused.
pub const RETRIES: [Duration; 5] = [
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
    Duration::from_secs(8),
];

/// Messages between the poll task and the store task.
const QUEUE: usize = 64;

/// What stops ingestion.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// `[mqtt] url` has no host:port.
    #[error("[mqtt] url {0:?} has no host:port (expected mqtts://host:port)")]
    BadUrl(String),
    /// The TLS files cannot be loaded.
    #[error(transparent)]
    Tls(#[from] edge_mqtt::TlsError),
}

/// The topic filters the inventory reads: every device's status in every replica (they
/// are retained, and few), the telemetry, acks and repair requests split between the
/// replicas of `share_group` if there is one ([`crate::session`]).
pub fn filters(prefix: &str, share_group: Option<&str>) -> Filters {
    let split = [fleet::telemetry(prefix, None), fleet::acks(prefix, None), fleet::need(prefix, None)];
    Filters::split(vec![fleet::status(prefix, None)], &split, share_group)
}

/// Connects and ingests until `cancel`. Connection errors are logged and retried with
/// backoff; only a configuration problem returns.
pub async fn run(
    mqtt: MqttConfig,
    client_id: String,
    share_group: Option<String>,
    db: Db,
    deployments: Deployments,
    rollouts: Rollouts,
    metrics: Metrics,
    cancel: CancellationToken,
) -> Result<(), IngestError> {
    let (client, mut eventloop) = crate::session::connect(&mqtt, client_id, session::REQUESTS, true)?;
    let (mut consumer, rx, acks) = Consumer::new(QUEUE);
    let stop_store = cancel.child_token();
    let parts = Parts { db, deployments, rollouts, metrics };
    let store = tokio::spawn(store(rx, acks, mqtt.topic_prefix.clone(), parts, stop_store.clone()));
    let subscriptions = filters(&mqtt.topic_prefix, share_group.as_deref());
    session::pump(&mqtt, "inventory", &client, &mut eventloop, &subscriptions, Some(&mut consumer), &cancel).await;
    stop_store.cancel();
    let _ = store.await;
    session::leave(&mqtt, "inventory", &client, &mut eventloop, Some(&mut consumer)).await;
    Ok(())
}

/// What a message is stored into and moves on.
struct Parts {
    db: Db,
    deployments: Deployments,
    rollouts: Rollouts,
    metrics: Metrics,
}

/// Stores each message, then acks it to the broker.
async fn store(mut rx: mpsc::Receiver<Publish>, acks: Acks, prefix: String, parts: Parts, cancel: CancellationToken) {
    loop {
        // Stops at once when cancelled: what is queued here is not acked yet, so the broker
        // delivers it again on the next start.
        let p = tokio::select! {
            _ = cancel.cancelled() => return,
            p = rx.recv() => match p {
                Some(p) => p,
                None => return,
            },
        };
        if !handle(&p, &prefix, &parts, &cancel).await {
            // Cancelled mid-retry: not acked, so the broker delivers it again.
            return;
        }
        acks.ack(&p);
    }
}

/// How long one step of a message may take before it is named in the log.
const SLOW: Duration = Duration::from_secs(10);

/// Awaits `step`, warning each [`SLOW`] it goes on: every message waits behind the one being
/// handled, so one that holds the inventory up is named, with what it is waiting on.
async fn watched<T>(what: &str, topic: &str, step: impl std::future::Future<Output = T>) -> T {
    tokio::pin!(step);
    let mut waited = Duration::ZERO;
    loop {
        match tokio::time::timeout(SLOW, &mut step).await {
            Ok(out) => return out,
            Err(_) => {
                waited += SLOW;
                tracing::warn!(topic, "a message has been {what} for {waited:?}; the inventory waits behind it");
            }
        }
    }
}

/// Decodes and stores one message, then moves the deployments on. `false` when cancelled
/// before it was stored.
async fn handle(p: &Publish, prefix: &str, parts: &Parts, cancel: &CancellationToken) -> bool {
    let Parts { db, deployments, rollouts, metrics } = parts;
    let (device, kind, obs) = match inventory::observe(prefix, &p.topic, &p.payload) {
        Ok(o) => o,
        Err(e) => {
            let kind = inventory::route(prefix, &p.topic).map_or("other", |(k, _)| k.as_str());
            Metrics::count(&metrics.undecodable, kind);
            tracing::warn!(topic = %p.topic, bytes = p.payload.len(), "message skipped: {e}");
            return true;
        }
    };
    let mut retries = RETRIES.iter();
    loop {
        let update = db.update(&device, |known| inventory::apply(&device, known, &obs));
        let stored = match watched("storing it", &p.topic, update).await {
            Ok(()) => {
                let moved = async {
                    match &obs {
                        Observation::Status(_) => deployments.on_status(&device).await,
                        Observation::Ack(a) => deployments.on_ack(&device, a).await,
                        Observation::Need(n) => deployments.on_need(&device, n).await,
                        Observation::Telemetry { versions, .. } => rollouts.on_telemetry(&device, versions).await,
                        Observation::Cleared => Ok(()),
                    }
                };
                watched("moving the deployments on", &p.topic, moved).await
            }
            Err(e) => Err(e),
        };
        match stored {
            Ok(()) => {
                Metrics::count(&metrics.ingested, kind.as_str());
                if let Observation::Status(s) = &obs {
                    tracing::debug!(device, state = ?s.state, "status stored");
                }
                return true;
            }
            Err(e) => {
                metrics.db_errors.inc();
                let Some(delay) = retries.next() else {
                    metrics.dropped.inc();
                    tracing::error!(topic = %p.topic, "message dropped after {} attempts: {e}", RETRIES.len() + 1);
                    return true;
                };
                tracing::warn!(topic = %p.topic, "cannot store the message, retrying in {delay:?}: {e}");
                tokio::select! {
                    _ = cancel.cancelled() => return false,
                    _ = tokio::time::sleep(*delay) => {}
                }
            }
        }
    }
}
