//! The MQTT link to the fleet: rumqttc over mutual TLS, with store-and-forward.
//!
//! Two tasks:
//! - the **event loop** task polls rumqttc, never blocks, and sleeps with exponential backoff
//!   and jitter after a connection error (rumqttc itself would reconnect at once);
//! - the **link** task owns the [`Outbox`]. Every telemetry message is written to the outbox
//!   first (so a `kill -9` loses nothing that was sampled) and published from its head, one
//!   at a time, when connected; the head is removed only when the broker's PUBACK arrives.
//!   Order is kept, and a message whose ack was lost is sent again (at least once: receivers
//!   deduplicate by sequence number).
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
}

/// Sends telemetry to the link.
#[derive(Debug, Clone)]
pub struct LinkHandle {
    tx: mpsc::Sender<Vec<u8>>,
}

impl LinkHandle {
    /// Queues one encoded telemetry message. Waits if the link task is behind (bounded).
    pub async fn send(&self, payload: Vec<u8>) -> bool {
        self.tx.send(payload).await.is_ok()
    }
}

/// The link component.
pub struct Link {
    settings: LinkSettings,
    rx: mpsc::Receiver<Vec<u8>>,
    outbox: Outbox,
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
    Outbox(usize),
}

/// The outbox head on its way to the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InFlight {
    Requested(usize),
    Sent { pkid: u16, len: usize },
}

impl Link {
    /// A link and the handle that feeds it.
    pub fn new(settings: LinkSettings, outbox: Outbox, stats: Arc<LinkStats>) -> (Link, LinkHandle) {
        let (tx, rx) = mpsc::channel(64);
        (Link { settings, rx, outbox, stats, started: Instant::now() }, LinkHandle { tx })
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
        let s = self.outbox.stats();
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
        let (events_tx, mut events) = mpsc::channel(64);
        let poller = tokio::spawn(poll_events(
            eventloop,
            events_tx,
            Backoff::new(self.settings.backoff_base, self.settings.backoff_max),
            stop_events.clone(),
        ));
        let telemetry_topic = self.settings.topics.telemetry();
        let status_topic = self.settings.topics.status();
        let mut issued: VecDeque<Issued> = VecDeque::new();
        let mut in_flight: Option<InFlight> = None;
        let mut ever_connected = false;
        self.refresh_stats();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                Some(payload) = self.rx.recv() => {
                    if let Err(e) = self.outbox.push(now_ms(), &payload) {
                        self.stats.outbox_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::error!("outbox: telemetry sample not stored: {e}");
                    }
                }
                Some(event) = events.recv() => match event {
                    LinkEvent::Connected => {
                        if ever_connected {
                            self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                        }
                        ever_connected = true;
                        self.stats.connected.store(true, Ordering::Relaxed);
                        tracing::info!(host = %self.settings.host, port = self.settings.port, "connected to broker");
                        issued.clear();
                        in_flight = None;
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
                        in_flight = None;
                    }
                    LinkEvent::Published(pkid) => {
                        if let Some(Issued::Outbox(len)) = issued.pop_front() {
                            in_flight = Some(InFlight::Sent { pkid, len });
                        }
                    }
                    LinkEvent::Acked(pkid) => {
                        if let Some(InFlight::Sent { pkid: p, len }) = in_flight {
                            if p == pkid {
                                in_flight = None;
                                match self.outbox.ack() {
                                    Ok(()) => {
                                        self.stats.bytes_sent.fetch_add(len as u64, Ordering::Relaxed);
                                        self.stats.messages_sent.fetch_add(1, Ordering::Relaxed);
                                    }
                                    Err(e) => tracing::error!("outbox: cannot mark a delivered message: {e}"),
                                }
                            }
                        }
                    }
                },
            }
            if self.stats.connected.load(Ordering::Relaxed) && in_flight.is_none() {
                match self.outbox.peek(now_ms()) {
                    Ok(Some(payload)) => {
                        let len = payload.len();
                        if client.try_publish(&telemetry_topic, QoS::AtLeastOnce, false, payload).is_ok() {
                            issued.push_back(Issued::Outbox(len));
                            in_flight = Some(InFlight::Requested(len));
                        }
                    }
                    Ok(None) => {}
                    Err(e) => tracing::error!("outbox: cannot read the next message: {e}"),
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

/// What the event loop task reports to the link task.
#[derive(Debug)]
enum LinkEvent {
    Connected,
    Disconnected(String),
    Published(u16),
    Acked(u16),
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
