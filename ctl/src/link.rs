//! The broker connection: one rumqttc client, its event loop on a task of its own, and
//! the publishes it receives delivered in order through [`Link::next_event`].
//!
//! rumqttc's event loop must never wait on its consumer (nothing blocks inside `poll`):
//! the operation driving a command may itself be waiting for room in rumqttc's request
//! channel, which only a polling event loop frees. So the poll task hands what it receives
//! to an unbounded channel. What flows there is acks and repair requests from devices,
//! a few messages per device and second, so it stays small; the outgoing direction, where
//! the artifact goes, is the bounded one (request channel capacity and in-flight limit).

use std::collections::VecDeque;
use std::time::Duration;

use edge_mqtt::{host_port, MqttConfig};
use rumqttc::{AsyncClient, ConnectionError, MqttOptions, Outgoing, Packet, QoS, SubscribeReasonCode, Transport};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Requests rumqttc buffers before `publish` waits: with [`INFLIGHT`], bounds how many
/// chunks are in memory at once (`(8 + 16) x chunk size`: 6 MiB with 240 KiB chunks).
const REQUEST_CAPACITY: usize = 8;
/// QoS 1 publishes sent and not yet acknowledged by the broker.
const INFLIGHT: u16 = 16;
/// How long [`Link::subscribe`] waits for the broker's SUBACK.
const SUBACK_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between reconnection attempts after the connection is lost.
const RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// What can go wrong on the broker connection.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// `[mqtt] url` has no `host:port`.
    #[error("[mqtt] url {0:?} has no host:port (expected mqtts://host:port)")]
    BadUrl(String),
    /// Plaintext MQTT without `allow_insecure`.
    #[error("[mqtt] url {0:?}: plaintext MQTT needs allow_insecure = true in [mqtt]")]
    Insecure(String),
    /// The CA, certificate or key cannot be loaded (the error names the `[mqtt]` key and file).
    #[error(transparent)]
    Tls(#[from] edge_mqtt::TlsError),
    /// The first connection failed.
    #[error("connecting to {url}: {reason}")]
    Connect {
        /// The broker URL.
        url: String,
        /// Why.
        reason: String,
        /// Whether trying again later may work: the network or the broker was down, not
        /// the certificates or the ACL.
        transient: bool,
    },
    /// The broker refused a subscription (its ACL does not let this certificate read it).
    #[error("the broker refused the subscription to {0}: check that the operator certificate's ACL grants read on it")]
    SubscribeRefused(String),
    /// No SUBACK in time.
    #[error("no answer from the broker to the subscription to {0} within {SUBACK_TIMEOUT:?}")]
    SubscribeTimeout(String),
    /// The client is gone (the event loop task ended).
    #[error("the broker connection is closed")]
    Closed,
}

impl LinkError {
    /// Whether the broker could not be reached or the connection broke: worth retrying
    /// later, unlike a configuration or ACL problem.
    pub fn is_connection(&self) -> bool {
        matches!(self, LinkError::Connect { transient: true, .. } | LinkError::SubscribeTimeout(_) | LinkError::Closed)
    }
}

/// A message received on a subscribed topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Topic it was published on.
    pub topic: String,
    /// Its payload.
    pub payload: Vec<u8>,
}

/// What [`Link::next_event`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// A publish on a subscribed topic.
    Message(Message),
    /// The connection was lost; the link reconnects by itself. Messages sent to edgectl
    /// meanwhile are lost (clean session).
    Disconnected(String),
    /// Connected again; the subscriptions have been renewed.
    Reconnected,
}

/// What the poll task hands over.
#[derive(Debug)]
enum Raw {
    Event(LinkEvent),
    SubAck(Vec<SubscribeReasonCode>),
}

/// A connection to the broker.
pub struct Link {
    client: AsyncClient,
    rx: mpsc::UnboundedReceiver<Raw>,
    /// Events read while waiting for a SUBACK, handed out first.
    buffered: VecDeque<LinkEvent>,
    subscriptions: Vec<String>,
    prefix: String,
    max_packet_bytes: usize,
    poller: JoinHandle<()>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link").field("prefix", &self.prefix).field("subscriptions", &self.subscriptions).finish()
    }
}

impl Link {
    /// Connects as the agent does (mutual TLS with `[mqtt]`'s files, the same packet size
    /// limit) and waits for the broker to accept the connection. A failure here is
    /// returned; later disconnections are retried (see [`LinkEvent::Disconnected`]).
    pub async fn connect(mqtt: &MqttConfig) -> Result<Link, LinkError> {
        let (host, port) = host_port(&mqtt.url).ok_or_else(|| LinkError::BadUrl(mqtt.url.clone()))?;
        let id = format!("edgectl-{}-{:08x}", std::process::id(), fastrand::u32(..));
        let mut opts = MqttOptions::new(id, host, port);
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_max_packet_size(mqtt.max_packet_bytes, mqtt.max_packet_bytes);
        opts.set_inflight(INFLIGHT);
        if mqtt.url.starts_with("mqtts://") {
            let tls = edge_mqtt::client_config(&mqtt.ca_file, &mqtt.cert_file, &mqtt.key_file)?;
            opts.set_transport(Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(tls)));
        } else if !mqtt.allow_insecure {
            return Err(LinkError::Insecure(mqtt.url.clone()));
        }
        let (client, mut eventloop) = AsyncClient::new(opts, REQUEST_CAPACITY);
        eventloop.network_options.set_connection_timeout(mqtt.network_timeout_secs.max(1));
        loop {
            match eventloop.poll().await {
                Ok(rumqttc::Event::Incoming(Packet::ConnAck(_))) => break,
                Ok(_) => continue,
                Err(e) => {
                    let transient = matches!(e, ConnectionError::Io(_) | ConnectionError::NetworkTimeout);
                    return Err(LinkError::Connect { url: mqtt.url.clone(), reason: describe(&e), transient });
                }
            }
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let poller = tokio::spawn(poll(eventloop, tx));
        Ok(Link {
            client,
            rx,
            buffered: VecDeque::new(),
            subscriptions: vec![],
            prefix: mqtt.topic_prefix.clone(),
            max_packet_bytes: mqtt.max_packet_bytes,
            poller,
        })
    }

    /// `[mqtt] topic_prefix`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `[mqtt] max_packet_bytes`: the largest packet sent or received.
    pub fn max_packet_bytes(&self) -> usize {
        self.max_packet_bytes
    }

    /// Subscribes to `filters` at QoS 1 and waits for the broker to confirm, so that
    /// anything published after this returns is received. Renewed after a reconnection.
    pub async fn subscribe(&mut self, filters: &[String]) -> Result<(), LinkError> {
        let new: Vec<String> = filters.iter().filter(|f| !self.subscriptions.contains(f)).cloned().collect();
        if new.is_empty() {
            return Ok(());
        }
        let many = new.iter().map(|f| rumqttc::SubscribeFilter::new(f.clone(), QoS::AtLeastOnce));
        self.client.subscribe_many(many).await.map_err(|_| LinkError::Closed)?;
        let deadline = tokio::time::Instant::now() + SUBACK_TIMEOUT;
        loop {
            let raw = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .map_err(|_| LinkError::SubscribeTimeout(new.join(", ")))?
                .ok_or(LinkError::Closed)?;
            match raw {
                Raw::SubAck(codes) => {
                    if let Some(i) = codes.iter().position(|c| matches!(c, SubscribeReasonCode::Failure)) {
                        return Err(LinkError::SubscribeRefused(new.get(i).cloned().unwrap_or_default()));
                    }
                    self.subscriptions.extend(new);
                    return Ok(());
                }
                raw => {
                    if let Some(e) = self.take(raw) {
                        self.buffered.push_back(e);
                    }
                }
            }
        }
    }

    /// Publishes `payload` on `topic` at QoS 1, not retained. Waits while rumqttc's
    /// request channel is full, which is what paces a transfer to the broker's speed.
    pub async fn publish(&self, topic: &str, payload: Vec<u8>) -> Result<(), LinkError> {
        self.client.publish(topic, QoS::AtLeastOnce, false, payload).await.map_err(|_| LinkError::Closed)
    }

    /// The next event, waiting for one; `None` once the connection is closed for good.
    /// Cancel-safe (usable in `select!`). On [`LinkEvent::Reconnected`] the subscriptions
    /// have been sent again.
    pub async fn next_event(&mut self) -> Option<LinkEvent> {
        if let Some(e) = self.buffered.pop_front() {
            return Some(e);
        }
        loop {
            let raw = self.rx.recv().await?;
            if let Some(e) = self.take(raw) {
                return Some(e);
            }
        }
    }

    /// The next event if one is already there.
    pub fn try_next_event(&mut self) -> Option<LinkEvent> {
        if let Some(e) = self.buffered.pop_front() {
            return Some(e);
        }
        while let Ok(raw) = self.rx.try_recv() {
            if let Some(e) = self.take(raw) {
                return Some(e);
            }
        }
        None
    }

    fn take(&mut self, raw: Raw) -> Option<LinkEvent> {
        match raw {
            // A SUBACK nobody waits for: the renewal after a reconnection.
            Raw::SubAck(_) => None,
            Raw::Event(LinkEvent::Reconnected) => {
                // Clean session: the broker forgot the subscriptions. Renewed from a task of
                // its own, so that this stays cancel-safe.
                if !self.subscriptions.is_empty() {
                    let client = self.client.clone();
                    let filters: Vec<_> = self
                        .subscriptions
                        .iter()
                        .map(|f| rumqttc::SubscribeFilter::new(f.clone(), QoS::AtLeastOnce))
                        .collect();
                    tokio::spawn(async move { client.subscribe_many(filters).await });
                }
                Some(LinkEvent::Reconnected)
            }
            Raw::Event(e) => Some(e),
        }
    }

    /// Disconnects cleanly, giving the event loop a moment to send what is queued.
    pub async fn close(mut self) {
        if self.client.disconnect().await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(2), &mut self.poller).await;
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.poller.abort();
    }
}

/// The poll task: forwards publishes and SUBACKs, reports disconnections, and keeps
/// polling (which makes rumqttc reconnect) until the link is dropped or closed.
async fn poll(mut eventloop: rumqttc::EventLoop, tx: mpsc::UnboundedSender<Raw>) {
    let mut connected = true;
    loop {
        let raw = match eventloop.poll().await {
            Ok(rumqttc::Event::Incoming(Packet::Publish(p))) => {
                Some(Raw::Event(LinkEvent::Message(Message { topic: p.topic, payload: p.payload.to_vec() })))
            }
            Ok(rumqttc::Event::Incoming(Packet::SubAck(s))) => Some(Raw::SubAck(s.return_codes)),
            Ok(rumqttc::Event::Incoming(Packet::ConnAck(_))) => {
                (!std::mem::replace(&mut connected, true)).then_some(Raw::Event(LinkEvent::Reconnected))
            }
            Ok(rumqttc::Event::Outgoing(Outgoing::Disconnect)) => return,
            Ok(_) => None,
            Err(e) => {
                let raw =
                    std::mem::replace(&mut connected, false).then(|| Raw::Event(LinkEvent::Disconnected(describe(&e))));
                if let Some(raw) = raw {
                    if tx.send(raw).is_err() {
                        return;
                    }
                }
                tokio::time::sleep(RECONNECT_DELAY).await;
                None
            }
        };
        if let Some(raw) = raw {
            if tx.send(raw).is_err() {
                return;
            }
        }
    }
}

/// rumqttc's errors name the layer but often not the cause; TLS and refusals deserve a hint.
fn describe(e: &ConnectionError) -> String {
    match e {
        ConnectionError::ConnectionRefused(code) => {
            format!("the broker refused the connection ({code:?}): check the operator certificate and the broker ACL")
        }
        ConnectionError::Tls(t) => format!("TLS: {t} (check [mqtt] ca_file, cert_file and key_file)"),
        ConnectionError::Io(io) => format!("{io}"),
        ConnectionError::NetworkTimeout => "no answer from the broker (network timeout)".into(),
        other => other.to_string(),
    }
}
