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
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, PubAck, Publish, QoS, SubscribeFilter, Transport};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::ingest::IngestError;

/// Requests queued towards an event loop: subscriptions, and the deployments' publishes. Acks
/// do not go this way ([`Acks`]).
pub const REQUESTS: usize = 64;

/// What a persistent session's consumer acks a message with, once it has handled it: the
/// session's [`pump`] writes the PUBACK to the broker itself, at once.
///
/// Not `AsyncClient::ack`: rumqttc's event loop takes one request from its queue per wake-up
/// while it reads up to ten packets per wake-up, and hands out what it read before it looks
/// at the queue again. Under a steady flow of messages (1,000 devices, with a deployment
/// under way) acks fell behind by thousands a minute until the queue was full; the consumer
/// then waited on the queue, the pump on the consumer, and the session stopped for good
/// (bench/fleet.sh with 200 late devices; rumqtt issue 1025).
#[derive(Debug, Clone)]
pub struct Acks {
    tx: mpsc::UnboundedSender<u16>,
}

impl Acks {
    /// Acks `p` (a no-op for QoS 0). Never waits. Once the session is gone the ack is
    /// dropped, and the broker sends the message again to the next session.
    pub fn ack(&self, p: &Publish) {
        if p.qos != QoS::AtMostOnce {
            let _ = self.tx.send(p.pkid);
        }
    }
}

/// The consumer of a persistent session, as its [`pump`] sees it: where each message goes,
/// and the acks that come back ([`Acks`]).
#[derive(Debug)]
pub struct Consumer {
    messages: mpsc::Sender<Publish>,
    acks: mpsc::UnboundedReceiver<u16>,
    unacked: Unacked,
}

impl Consumer {
    /// A consumer with room for `queue` messages, the end it reads them from, and its
    /// handle to ack them with.
    pub fn new(queue: usize) -> (Consumer, mpsc::Receiver<Publish>, Acks) {
        let (messages, rx) = mpsc::channel(queue);
        let (tx, acks) = mpsc::unbounded_channel();
        (Consumer { messages, acks, unacked: Unacked::default() }, rx, Acks { tx })
    }

    /// Writes the acks waiting, `first` and up to 999 more, with one flush.
    async fn write_acks(&mut self, first: u16, mqtt: &MqttConfig, what: &str, eventloop: &mut EventLoop) {
        let mut batch = vec![first];
        while batch.len() < 1000 {
            match self.acks.try_recv() {
                Ok(pkid) => batch.push(pkid),
                Err(_) => break,
            }
        }
        write_acks(mqtt, what, eventloop, &mut self.unacked, &batch).await;
    }
}

/// Messages handed to the consumer on this connection and not acked yet, by packet id: an
/// ack is written only for one of them. After a reconnect the broker sends the unacked ones
/// again (same ids), and the consumer handles and acks them again; an ack made for the old
/// connection must not go out on the new one (the id may be another message by then).
#[derive(Debug, Default)]
struct Unacked(std::collections::HashSet<u16>);

impl Unacked {
    fn handed(&mut self, p: &Publish) {
        if p.qos != QoS::AtMostOnce {
            self.0.insert(p.pkid);
        }
    }

    /// Whether an ack for `pkid` is to be written, and then no other for it.
    fn take(&mut self, pkid: u16) -> bool {
        self.0.remove(&pkid)
    }

    fn reconnected(&mut self) {
        self.0.clear();
    }
}

/// Writes the PUBACKs of `pkids` (those [`Unacked`] lets out) on the event loop's connection
/// and flushes. Without a connection they are dropped: the broker sends the messages again.
/// A write that fails or takes past the network timeout drops the connection, which the
/// next poll makes again.
async fn write_acks(mqtt: &MqttConfig, what: &str, eventloop: &mut EventLoop, unacked: &mut Unacked, pkids: &[u16]) {
    let Some(network) = eventloop.network.as_mut() else { return };
    let timeout = Duration::from_secs(mqtt.network_timeout_secs.max(1));
    let written = tokio::time::timeout(timeout, async {
        for &pkid in pkids.iter().filter(|&&pkid| unacked.take(pkid)) {
            network.write(Packet::PubAck(PubAck::new(pkid))).await?;
        }
        network.flush().await
    })
    .await;
    let error = match written {
        Ok(Ok(())) => return,
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("no progress in {timeout:?}"),
    };
    tracing::warn!(broker = %mqtt.url, "{what}: writing acks to the broker: {error}; reconnecting");
    eventloop.clean();
}

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

/// Polls `eventloop` until `cancel` or until the consumer's queue is closed: subscribes
/// `filters` at each CONNACK, hands each PUBLISH to the consumer (waiting while its queue is
/// full, so that rumqttc stops reading and the broker holds the rest; a session without a
/// consumer subscribes to nothing), writes the consumer's acks as they come, also while it
/// waits ([`Acks`]), and after a connection error waits before the next attempt, from 500 ms
/// doubling to `[mqtt] reconnect_max_secs`. `what` names the session in the log. Nothing
/// slow happens here: the consumer does the work.
pub async fn pump(
    mqtt: &MqttConfig,
    what: &str,
    client: &AsyncClient,
    eventloop: &mut EventLoop,
    filters: &Filters,
    mut consumer: Option<&mut Consumer>,
    cancel: &CancellationToken,
) {
    let max_delay = Duration::from_secs(mqtt.reconnect_max_secs.max(1));
    let mut delay = Duration::from_millis(500);
    loop {
        // rumqttc's poll is cancelled when an ack comes first: what it has read stays in its
        // buffers and is handed out by the next poll.
        let event = tokio::select! {
            _ = cancel.cancelled() => return,
            Some(first) = async { consumer.as_mut()?.acks.recv().await } => {
                if let Some(c) = consumer.as_mut() {
                    c.write_acks(first, mqtt, what, eventloop).await;
                }
                continue;
            }
            event = eventloop.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                delay = Duration::from_millis(500);
                if let Some(c) = consumer.as_mut() {
                    c.unacked.reconnected();
                }
                tracing::info!(broker = %mqtt.url, session_present = ack.session_present, "{what} connected to the broker");
                filters.subscribe(client, ack.session_present);
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let Some(c) = consumer.as_mut() else { continue };
                // Waits for room in the consumer's queue, writing its acks meanwhile: it may
                // be waiting for them to make room.
                let messages = c.messages.clone();
                let room = loop {
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        room = messages.reserve() => break room,
                        Some(first) = c.acks.recv() => c.write_acks(first, mqtt, what, eventloop).await,
                    }
                };
                let Ok(room) = room else { return };
                c.unacked.handed(&p);
                room.send(p);
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

/// Writes the acks the consumer made since the pump stopped, then disconnects without a
/// will: the session stays on the broker, which queues what arrives until the next start.
/// At most 2 s.
pub async fn leave(
    mqtt: &MqttConfig,
    what: &str,
    client: &AsyncClient,
    eventloop: &mut EventLoop,
    consumer: Option<&mut Consumer>,
) {
    if let Some(c) = consumer {
        while let Ok(first) = c.acks.try_recv() {
            c.write_acks(first, mqtt, what, eventloop).await;
        }
    }
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
