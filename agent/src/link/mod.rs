//! The MQTT link to the fleet: rumqttc over mutual TLS, with store-and-forward.
//!
//! Two tasks:
//! - the **event loop** task polls rumqttc, never blocks, and sleeps with exponential backoff
//!   and jitter after a connection error (rumqttc itself would reconnect at once);
//! - the **link** task owns two [`Outbox`]es, one *lane* each: command acks (first) and
//!   telemetry. Every message is written to its outbox first (so a `kill -9` loses neither a
//!   sample nor an ack) and published from the head, one at a time per lane, when
//!   connected; the head is removed only when the broker's PUBACK arrives. Order is kept,
//!   and a message whose ack was lost is sent again (at least once: receivers deduplicate
//!   by sequence number or command id).
//!
//! On every connect the link subscribes (QoS 1) to the device's command and OTA topics and
//! to those of its groups, and routes what arrives to the command component
//! ([`Inbound`]). Repair requests for missing OTA chunks are published directly (QoS 0):
//! they are repeated until answered, so there is nothing to keep.
//!
//! On every connect the link publishes a retained `online` [`Status`]; the broker publishes
//! the retained `offline` last will when the device vanishes, and the agent publishes it
//! itself on an orderly shutdown. The session is persistent (clean session off, client id =
//! device id); rumqttc's own retransmission queue is dropped after an error because the
//! outbox head is re-sent anyway.

pub mod backoff;
pub mod tls;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use edge_proto::status::{State, Status};
use edge_proto::topics::Topics;
use rumqttc::{
    AsyncClient, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS, TlsConfiguration, Transport,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::outbox::Outbox;
use backoff::Backoff;

/// Link counters, shared with telemetry and `/metrics`.
#[derive(Debug, Default)]
pub struct LinkStats {
    /// Whether the broker connection is up.
    pub connected: AtomicBool,
    /// Successful connections after the first.
    pub reconnects: AtomicU64,
    /// Telemetry payload bytes acknowledged by the broker.
    pub bytes_sent: AtomicU64,
    /// Messages acknowledged by the broker.
    pub messages_sent: AtomicU64,
    /// Messages waiting in the outbox.
    pub queued: AtomicU64,
    /// Messages dropped because the outbox was full.
    pub dropped_full: AtomicU64,
    /// Messages dropped because they outlived the TTL.
    pub dropped_expired: AtomicU64,
    /// Messages that could not be written to the outbox (disk full, I/O error).
    pub outbox_errors: AtomicU64,
}

impl LinkStats {
    /// All drops.
    pub fn dropped(&self) -> u64 {
        self.dropped_full.load(Ordering::Relaxed) + self.dropped_expired.load(Ordering::Relaxed)
    }
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct LinkSettings {
    /// Topic builder for this device.
    pub topics: Topics,
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// TLS configuration; `None` only for `mqtt://` with `allow_insecure`.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Largest packet, both ways.
    pub max_packet_bytes: usize,
    /// Network timeout.
    pub network_timeout: Duration,
    /// Keep-alive.
    pub keep_alive: Duration,
    /// Names of the loaded models, for the status message.
    pub models: Vec<String>,
    /// First reconnect delay, doubled up to `backoff_max`.
    pub backoff_base: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// Groups whose command and OTA topics the device subscribes to.
    pub groups: Vec<String>,
}

/// What other components ask of the link.
#[derive(Debug)]
enum Request {
    Telemetry(Vec<u8>),
    Ack(Vec<u8>),
    Need(Vec<u8>),
    EraseTelemetry(tokio::sync::oneshot::Sender<Result<(), String>>),
}

/// Sends telemetry, acks and repair requests to the link.
#[derive(Debug, Clone)]
pub struct LinkHandle {
    tx: mpsc::Sender<Request>,
}

impl LinkHandle {
    /// Queues one encoded telemetry message. Waits if the link task is behind (bounded).
    pub async fn send(&self, payload: Vec<u8>) -> bool {
        self.tx.send(Request::Telemetry(payload)).await.is_ok()
    }

    /// Queues one encoded ack: stored on disk, then published when connected.
    pub async fn ack(&self, payload: Vec<u8>) -> bool {
        self.tx.send(Request::Ack(payload)).await.is_ok()
    }

    /// Queues one encoded ack, from a thread outside the runtime: stored on disk, then
    /// published when connected.
    pub fn ack_blocking(&self, payload: Vec<u8>) -> bool {
        self.tx.blocking_send(Request::Ack(payload)).is_ok()
    }

    /// Publishes a repair request if connected (dropped otherwise: it is repeated), from a
    /// thread outside the runtime.
    pub fn need_blocking(&self, payload: Vec<u8>) -> bool {
        self.tx.blocking_send(Request::Need(payload)).is_ok()
    }

    /// Deletes every queued telemetry message (the `erase` command), from a thread
    /// outside the runtime.
    pub fn erase_telemetry_blocking(&self) -> Result<(), String> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.tx.blocking_send(Request::EraseTelemetry(tx)).map_err(|_| "link stopped".to_string())?;
        rx.blocking_recv().map_err(|_| "link stopped".to_string())?
    }
}

/// A message the link received for another component.
#[derive(Debug)]
pub enum Inbound {
    /// On a command topic (the device's or a group's): a signed command.
    Command(Vec<u8>),
    /// On an OTA topic: a chunk.
    Chunk(Vec<u8>),
}

/// One outbox and the topic its messages go to.
struct Lane {
    outbox: Outbox,
    topic: String,
    in_flight: Option<InFlight>,
}

/// The link component.
pub struct Link {
    settings: LinkSettings,
    rx: mpsc::Receiver<Request>,
    telemetry: Lane,
    acks: Lane,
    inbound: Option<mpsc::Sender<Inbound>>,
    /// Topic filters subscribed to on every connect, and whether each carries commands
    /// (else OTA chunks). Exact topics: none has a wildcard.
    subscriptions: Vec<(String, bool)>,
    stats: Arc<LinkStats>,
    started: Instant,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// What a publish request issued by the link task was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Issued {
    Status,
    Need,
    Lane(LaneId, usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LaneId {
    Acks,
    Telemetry,
}

/// The outbox head on its way to the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InFlight {
    Requested(usize),
    Sent { pkid: u16, len: usize },
}

impl Link {
    /// A link and the handle that feeds it. `acks` is the outbox of command acks;
    /// commands and chunks received go to `inbound` (none: not subscribed).
    pub fn new(
        settings: LinkSettings,
        outbox: Outbox,
        acks: Outbox,
        inbound: Option<mpsc::Sender<Inbound>>,
        stats: Arc<LinkStats>,
    ) -> (Link, LinkHandle) {
        let (tx, rx) = mpsc::channel(64);
        let telemetry = Lane { outbox, topic: settings.topics.telemetry(), in_flight: None };
        let acks = Lane { outbox: acks, topic: settings.topics.acks(), in_flight: None };
        let subscriptions = subscriptions(&settings);
        let link = Link { settings, rx, telemetry, acks, inbound, subscriptions, stats, started: Instant::now() };
        (link, LinkHandle { tx })
    }

    fn lane(&mut self, id: LaneId) -> &mut Lane {
        match id {
            LaneId::Acks => &mut self.acks,
            LaneId::Telemetry => &mut self.telemetry,
        }
    }

    /// Routes a received publish to the command component; waits if it is behind.
    async fn route(&self, topic: &str, payload: Vec<u8>) {
        let Some(inbound) = &self.inbound else { return };
        let Some(&(_, is_command)) = self.subscriptions.iter().find(|(t, _)| t == topic) else {
            tracing::debug!(topic, "message on a topic the agent does not handle; ignored");
            return;
        };
        // Wait while the command thread is busy (backpressure keeps chunks coming at the
        // rate they are written), but not forever: this task also publishes acks and
        // telemetry, and a validation can take minutes. A chunk dropped here is asked for
        // again; a command dropped here is logged (its sender sees no ack).
        let (msg, patience) = if is_command {
            (Inbound::Command(payload), Duration::from_secs(30))
        } else {
            (Inbound::Chunk(payload), Duration::from_secs(2))
        };
        if tokio::time::timeout(patience, inbound.send(msg)).await.is_err() {
            tracing::warn!(topic, "the command thread is busy; message dropped");
        }
    }

    fn status(&self, state: State) -> Vec<u8> {
        edge_proto::encode(&Status {
            version: 1,
            device: self.settings.topics.device().to_string(),
            state,
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            models: self.settings.models.clone(),
            uptime_secs: if state == State::Online { self.started.elapsed().as_secs() } else { 0 },
            ts: now_ms(),
        })
    }

    fn options(&self) -> MqttOptions {
        let s = &self.settings;
        let mut opts = MqttOptions::new(s.topics.device(), &s.host, s.port);
        opts.set_clean_session(false);
        opts.set_keep_alive(s.keep_alive);
        opts.set_max_packet_size(s.max_packet_bytes, s.max_packet_bytes);
        opts.set_last_will(LastWill::new(s.topics.status(), self.status(State::Offline), QoS::AtLeastOnce, true));
        if let Some(tls) = &s.tls {
            opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls.clone())));
        }
        opts
    }

    fn refresh_stats(&self) {
        let s = self.telemetry.outbox.stats();
        self.stats.queued.store(s.queued, Ordering::Relaxed);
        self.stats.dropped_full.store(s.dropped_full, Ordering::Relaxed);
        self.stats.dropped_expired.store(s.dropped_expired, Ordering::Relaxed);
    }

    /// Runs until `cancel`, then publishes `offline` and disconnects (bounded by a deadline).
    pub async fn run(mut self, cancel: CancellationToken) -> anyhow::Result<()> {
        let (client, mut eventloop) = AsyncClient::new(self.options(), 16);
        let mut net = eventloop.network_options();
        net.set_connection_timeout(self.settings.network_timeout.as_secs().max(1));
        eventloop.set_network_options(net);
        let stop_events = CancellationToken::new();
        // Small: an event can carry an OTA chunk (up to 1 MiB), and RAM must stay bounded
        // to a few chunks however fast the broker sends them.
        let (events_tx, mut events) = mpsc::channel(4);
        let poller = tokio::spawn(poll_events(
            eventloop,
            events_tx,
            Backoff::new(self.settings.backoff_base, self.settings.backoff_max),
            stop_events.clone(),
        ));
        let status_topic = self.settings.topics.status();
        let need_topic = self.settings.topics.need();
        let mut issued: VecDeque<Issued> = VecDeque::new();
        let mut ever_connected = false;
        self.refresh_stats();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                Some(request) = self.rx.recv() => match request {
                    Request::Telemetry(payload) => {
                        if let Err(e) = self.telemetry.outbox.push(now_ms(), &payload) {
                            self.stats.outbox_errors.fetch_add(1, Ordering::Relaxed);
                            tracing::error!("outbox: telemetry sample not stored: {e}");
                        }
                    }
                    Request::Ack(payload) => {
                        if let Err(e) = self.acks.outbox.push(now_ms(), &payload) {
                            self.stats.outbox_errors.fetch_add(1, Ordering::Relaxed);
                            tracing::error!("outbox: command ack not stored: {e}");
                        }
                    }
                    Request::Need(payload) => {
                        if self.stats.connected.load(Ordering::Relaxed)
                            && client.try_publish(&need_topic, QoS::AtMostOnce, false, payload).is_ok()
                        {
                            issued.push_back(Issued::Need);
                        }
                    }
                    Request::EraseTelemetry(reply) => {
                        let _ = reply.send(self.telemetry.outbox.clear().map_err(|e| e.to_string()));
                    }
                },
                Some(event) = events.recv() => match event {
                    LinkEvent::Connected => {
                        if ever_connected {
                            self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                        }
                        ever_connected = true;
                        self.stats.connected.store(true, Ordering::Relaxed);
                        tracing::info!(host = %self.settings.host, port = self.settings.port, "connected to broker");
                        issued.clear();
                        self.telemetry.in_flight = None;
                        self.acks.in_flight = None;
                        if self.inbound.is_some() {
                            let filters = self
                                .subscriptions
                                .iter()
                                .map(|(t, _)| rumqttc::SubscribeFilter::new(t.clone(), QoS::AtLeastOnce));
                            if let Err(e) = client.try_subscribe_many(filters) {
                                tracing::error!("cannot subscribe to the command topics: {e}");
                            }
                        }
                        if client.try_publish(&status_topic, QoS::AtLeastOnce, true, self.status(State::Online)).is_ok() {
                            issued.push_back(Issued::Status);
                        }
                    }
                    LinkEvent::Disconnected(reason) => {
                        if self.stats.connected.swap(false, Ordering::Relaxed) {
                            tracing::warn!("broker connection lost: {reason}");
                        } else {
                            tracing::warn!("cannot connect to broker: {reason}");
                        }
                        issued.clear();
                        self.telemetry.in_flight = None;
                        self.acks.in_flight = None;
                    }
                    LinkEvent::Published(pkid) => {
                        if let Some(Issued::Lane(id, len)) = issued.pop_front() {
                            self.lane(id).in_flight = Some(InFlight::Sent { pkid, len });
                        }
                    }
                    LinkEvent::Acked(pkid) => {
                        for id in [LaneId::Acks, LaneId::Telemetry] {
                            let lane = self.lane(id);
                            if let Some(InFlight::Sent { pkid: p, len }) = lane.in_flight {
                                if p == pkid {
                                    lane.in_flight = None;
                                    match lane.outbox.ack() {
                                        Ok(()) if id == LaneId::Telemetry => {
                                            self.stats.bytes_sent.fetch_add(len as u64, Ordering::Relaxed);
                                            self.stats.messages_sent.fetch_add(1, Ordering::Relaxed);
                                        }
                                        Ok(()) => {}
                                        Err(e) => tracing::error!("outbox: cannot mark a delivered message: {e}"),
                                    }
                                }
                            }
                        }
                    }
                    LinkEvent::Message(topic, payload) => self.route(&topic, payload).await,
                },
            }
            if self.stats.connected.load(Ordering::Relaxed) {
                for id in [LaneId::Acks, LaneId::Telemetry] {
                    let lane = self.lane(id);
                    if lane.in_flight.is_some() {
                        continue;
                    }
                    match lane.outbox.peek(now_ms()) {
                        Ok(Some(payload)) => {
                            let len = payload.len();
                            if client.try_publish(&lane.topic, QoS::AtLeastOnce, false, payload).is_ok() {
                                lane.in_flight = Some(InFlight::Requested(len));
                                issued.push_back(Issued::Lane(id, len));
                            }
                        }
                        Ok(None) => {}
                        Err(e) => tracing::error!("outbox: cannot read the next message: {e}"),
                    }
                }
            }
            self.refresh_stats();
        }
        // Orderly shutdown: say goodbye while the connection is up, within a deadline.
        if self.stats.connected.load(Ordering::Relaxed) {
            let _ = client.try_publish(&status_topic, QoS::AtLeastOnce, true, self.status(State::Offline));
            let _ = client.try_disconnect();
            let deadline = tokio::time::sleep(Duration::from_secs(2));
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    _ = &mut deadline => break,
                    event = events.recv() => match event {
                        Some(LinkEvent::Disconnected(_)) | None => break,
                        _ => {}
                    }
                }
            }
        }
        stop_events.cancel();
        let _ = poller.await;
        self.stats.connected.store(false, Ordering::Relaxed);
        Ok(())
    }
}

/// Topic filters to subscribe to, and whether each carries commands (else OTA chunks).
fn subscriptions(settings: &LinkSettings) -> Vec<(String, bool)> {
    let t = &settings.topics;
    let mut subs = vec![(t.commands(), true), (t.ota(), false)];
    for g in &settings.groups {
        if let (Some(cmd), Some(ota)) = (t.group_commands(g), t.group_ota(g)) {
            subs.push((cmd, true));
            subs.push((ota, false));
        }
    }
    subs
}

/// What the event loop task reports to the link task.
#[derive(Debug)]
enum LinkEvent {
    Connected,
    Disconnected(String),
    Published(u16),
    Acked(u16),
    Message(String, Vec<u8>),
}

/// Polls rumqttc, and backs off after errors. Never blocks inside `poll`.
async fn poll_events(
    mut eventloop: EventLoop,
    tx: mpsc::Sender<LinkEvent>,
    mut backoff: Backoff,
    stop: CancellationToken,
) {
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => return,
            event = eventloop.poll() => event,
        };
        let report = match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff.reset();
                Some(LinkEvent::Connected)
            }
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => Some(LinkEvent::Published(pkid)),
            Ok(Event::Incoming(Packet::PubAck(ack))) => Some(LinkEvent::Acked(ack.pkid)),
            Ok(Event::Incoming(Packet::Publish(p))) => Some(LinkEvent::Message(p.topic, p.payload.to_vec())),
            Ok(Event::Outgoing(Outgoing::Disconnect)) => Some(LinkEvent::Disconnected("disconnect sent".into())),
            Ok(_) => None,
            Err(e) => {
                // The outbox head is re-sent by the link task; rumqttc's own copies would
                // arrive as unexpected duplicates.
                eventloop.pending.clear();
                if tx.send(LinkEvent::Disconnected(e.to_string())).await.is_err() {
                    return;
                }
                let delay = backoff.next_delay(fastrand::f64());
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                None
            }
        };
        if let Some(report) = report {
            if tx.send(report).await.is_err() {
                return;
            }
        }
    }
}
