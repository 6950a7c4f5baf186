//! The broker connections of the service, and the one loop that polls them ([`pump`]): the
//! inventory's ([`crate::ingest`]) and the telemetry export's ([`crate::export`]) persistent
//! sessions, and the deployments' publisher ([`crate::deployments::sender`], a clean one).
//!
//! The two persistent ones are QoS 1 sessions with clean session off and manual acks, so that the broker keeps
//! what arrives while the service (or one of its consumers) is down or slow, and a message
//! is acked only once it has been handled.
//!
//! # Replicas
//!
//! With `share_group` set, replicas of the service split the load through shared
//! subscriptions (`$share/{group}/{filter}`, MQTT 3.1.1 in Mosquitto, EMQX and HiveMQ): each
//! message of a shared filter goes to one session of the group. What needs every message in
//! every replica stays a plain subscription: the devices' retained statuses (brokers do not
//! send retained messages to shared subscriptions, so a replica starting fresh would not
//! learn the devices that are offline). Without it (one instance) every filter is plain:
//! Mosquitto 2.0 does not restore a session's shared subscriptions when it restarts, so
//! what devices publish between the broker's restart and the service's reconnect would have
//! no subscriber. [`Filters`] holds the lot.

use std::time::Duration;

use edge_mqtt::{host_port, MqttConfig};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, Publish, QoS, SubscribeFilter, Transport};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::ingest::IngestError;

/// Requests a persistent session's consumer may queue towards its event loop without
/// waiting: one PUBACK per message received and not yet acked, which the broker bounds by
/// its in-flight window and MQTT by its packet ids (65,535), so acking never waits. With
/// less room, a consumer acking (the export acks a batch of up to 2000 at once) waits on the
/// event loop, while [`pump`] waits for room in that consumer's full queue and no longer
/// polls: both stop for good. bench/fleet.sh hit it with 50 devices and a burst of repair
/// requests, the request queue at 16 (flume allocates as it fills, not up front).
pub const ACK_ROOM: usize = 65_536;

/// A client and its event loop as `client_id`, with at most `cap` requests queued towards
/// the event loop: a persistent session with manual acks (`persistent`), or a clean one
/// (the deployments' publisher, which subscribes to nothing).
pub fn connect(
    mqtt: &MqttConfig,
    client_id: String,
    cap: usize,
    persistent: bool,
) -> Result<(AsyncClient, EventLoop), IngestError> {
    let (host, port) = host_port(&mqtt.url).ok_or_else(|| IngestError::BadUrl(mqtt.url.clone()))?;
    let mut opts = MqttOptions::new(client_id, host, port);
    opts.set_clean_session(!persistent);
    opts.set_manual_acks(persistent);
    opts.set_keep_alive(Duration::from_secs(mqtt.keep_alive_secs.max(5)));
    opts.set_max_packet_size(mqtt.max_packet_bytes, mqtt.max_packet_bytes);
    if mqtt.url.starts_with("mqtts://") {
        let tls = edge_mqtt::client_config(&mqtt.ca_file, &mqtt.cert_file, &mqtt.key_file)?;
        opts.set_transport(Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(tls)));
    }
    let (client, mut eventloop) = AsyncClient::new(opts, cap);
    eventloop.network_options.set_connection_timeout(mqtt.network_timeout_secs.max(1));
    Ok((client, eventloop))
}

/// `filter` as a shared subscription of `group`.
pub fn shared(group: &str, filter: &str) -> String {
    format!("$share/{group}/{filter}")
}

/// What a session subscribes to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filters {
    /// Subscribed when the broker has no session: the retained statuses. With a session the
    /// broker holds them already, and subscribing again would replay the retained messages
    /// ahead of older queued ones.
    pub once: Vec<String>,
    /// Subscribed at every connect (nothing retained is sent on them, so nothing is
    /// replayed): a session made by a version without one of them gets it, and so does a
    /// session whose broker lost its shared subscriptions in a restart.
    pub always: Vec<String>,
    /// Dropped from a session that still has them: plain filters of a single instance
    /// turned into a replica, which would otherwise get every message twice over.
    pub retired: Vec<String>,
}

impl Filters {
    /// `always` as plain filters, or, with a share group, shared with the other replicas
    /// (and their plain form retired).
    pub fn split(once: Vec<String>, filters: &[String], share_group: Option<&str>) -> Filters {
        match share_group {
            None => Filters { once, always: filters.to_vec(), retired: vec![] },
            Some(g) => {
                Filters { once, always: filters.iter().map(|f| shared(g, f)).collect(), retired: filters.to_vec() }
            }
        }
    }

    /// Subscribes after a CONNACK.
    pub fn subscribe(&self, client: &AsyncClient, session_present: bool) {
        let mut wanted: Vec<&String> = self.always.iter().collect();
        if !session_present {
            wanted.extend(&self.once);
        }
        let f = wanted.iter().map(|t| SubscribeFilter::new(t.to_string(), QoS::AtLeastOnce));
        if !wanted.is_empty() {
            if let Err(e) = client.try_subscribe_many(f) {
                tracing::error!("cannot subscribe to {wanted:?}: {e}");
            }
        }
        if session_present {
            for t in &self.retired {
                if let Err(e) = client.try_unsubscribe(t.clone()) {
                    tracing::warn!("cannot unsubscribe from {t}: {e}");
                }
            }
        }
    }
}

/// Polls `eventloop` until `cancel` or until `tx` is closed: subscribes `filters` at each
/// CONNACK, hands each PUBLISH to `tx` (waiting while it is full, so that rumqttc stops
/// reading and the broker holds the rest; a session without `tx` subscribes to nothing),
/// and after a connection error waits before the next attempt, from 500 ms doubling to
/// `[mqtt] reconnect_max_secs`. `what` names the session in the log. Nothing slow happens
/// here: the consumer of `tx` does the work.
pub async fn pump(
    mqtt: &MqttConfig,
    what: &str,
    client: &AsyncClient,
    eventloop: &mut EventLoop,
    filters: &Filters,
    tx: Option<&mpsc::Sender<Publish>>,
    cancel: &CancellationToken,
) {
    let max_delay = Duration::from_secs(mqtt.reconnect_max_secs.max(1));
    let mut delay = Duration::from_millis(500);
    loop {
        let event = tokio::select! {
            _ = cancel.cancelled() => return,
            event = eventloop.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                delay = Duration::from_millis(500);
                tracing::info!(broker = %mqtt.url, session_present = ack.session_present, "{what} connected to the broker");
                filters.subscribe(client, ack.session_present);
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if let Some(tx) = tx {
                    if tx.send(p).await.is_err() {
                        return;
                    }
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(broker = %mqtt.url, "{what}: broker connection: {e}; retrying in {delay:?}");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(max_delay);
            }
        }
    }
}

/// Lets the last acks out and disconnects, without a will: the session stays on the
/// broker, which queues what arrives until the next start. At most 2 s.
pub async fn leave(client: &AsyncClient, eventloop: &mut EventLoop) {
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Ok(e) = eventloop.poll().await {
            if matches!(e, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                break;
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_share_the_filters_and_retire_their_plain_form() {
        let plain = Filters::split(vec!["s".into()], &["edge/+/ack".into()], None);
        assert_eq!(plain.always, ["edge/+/ack"]);
        assert!(plain.retired.is_empty());
        let shared = Filters::split(vec!["s".into()], &["edge/+/ack".into()], Some("fleet"));
        assert_eq!(shared.always, ["$share/fleet/edge/+/ack"]);
        assert_eq!(shared.retired, ["edge/+/ack"]);
        assert_eq!(shared.once, ["s"]);
    }
}
