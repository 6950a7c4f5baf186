//! The MQTT link to the fleet: rumqttc over mutual TLS, with store-and-forward.
//!
//! Three parts, none of which waits on another:
//! - the **event loop** task polls rumqttc, never blocks, and sleeps with exponential backoff
//!   and jitter after a connection error (rumqttc itself would reconnect at once);
//! - the **spool** thread (`spool`) owns two [`Outbox`]es, one *lane* each: command acks
//!   and telemetry, and does every disk write and read for them, off the async runtime;
//! - the **link** task routes between them. Every message is written to its outbox first
//!   (so a `kill -9` loses neither a sample nor an ack) and published from the head, one at
//!   a time per lane, acks first, when connected; the head is removed only when the
//!   broker's PUBACK arrives (`lane`). Order is kept, and a message whose ack was lost is
//!   sent again (at least once: receivers deduplicate by sequence number or command id).
//!
//! A message the outbox cannot store (a full disk) is still published directly when
//! connected, once, without a copy on disk (counted in [`LinkStats::sent_unstored`]), and
//! otherwise dropped ([`LinkStats::dropped_unstored`]); [`LinkStats::disk_full`] says the
//! outbox's file system is out of space.
//!
//! On every connect the link subscribes (QoS 1) to the device's command and OTA topics and
//! to those of its groups, and routes what arrives to the command component through
//! bounded queues ([`inbound`]): a command that finds its queue full is answered
//! `rejected(busy …)` at once; a chunk waits for room a short while ([`chunk_patience`]),
//! then is dropped. Repair requests for missing OTA chunks are published directly (QoS 0):
//! they are repeated until answered, so there is nothing to keep.
//!
//! On every connect the link publishes a retained `online` [`Status`] (groups, and each
//! model's active and installed versions and health, from [`LinkSettings::models`]), and
//! again whenever the models change; the broker publishes
//! the retained `offline` last will when the device vanishes, and the agent publishes it
//! itself on an orderly shutdown. The session is persistent (clean session off, client id =
//! device id); rumqttc's own retransmission queue is dropped after an error because the
//! outbox head is re-sent anyway.

pub mod backoff;
mod handle;
pub mod inbound;
mod lane;
mod spool;

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_proto::codec::Versioned;
use edge_proto::status::{State, Status};
use rumqttc::{
    AsyncClient, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS, TlsConfiguration, Transport,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;
use crate::outbox::Outbox;
use backoff::Backoff;
use handle::Request;
pub use handle::{LinkHandle, LinkSettings, LinkStats};
use inbound::Offer;
pub use inbound::{Inbound, InboundRx, InboundTx};
use lane::{LaneState, Then};
use spool::{SpoolEvent, SpoolHandle};

/// The link component.
pub struct Link {
    settings: LinkSettings,
    rx: mpsc::Receiver<Request>,
    /// The ack and telemetry outboxes, until `run` hands them to the spool thread.
    outboxes: Option<(Outbox, Outbox)>,
    inbound: Option<InboundTx>,
    /// Topic filters subscribed to on every connect, and whether each carries commands
    /// (else OTA chunks). Exact topics: none has a wildcard.
    subscriptions: Vec<(String, bool)>,
    stats: Arc<LinkStats>,
    started: Instant,
}

/// What a publish request issued by the link task was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Issued {
    Status,
    Need,
    Lane(LaneId),
    /// A message the outbox could not store, published without tracking.
    Unstored,
}

/// One of the two outboxes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LaneId {
    Acks,
    Telemetry,
}

impl LaneId {
    const ALL: [LaneId; 2] = [LaneId::Acks, LaneId::Telemetry];

    /// What the lane carries, for the log.
    fn what(self) -> &'static str {
        match self {
            LaneId::Acks => "command ack",
            LaneId::Telemetry => "telemetry sample",
        }
    }
}

/// Both lanes' heads, and their topics.
struct Lanes {
    acks: LaneState,
    telemetry: LaneState,
    acks_topic: String,
    telemetry_topic: String,
}

impl Lanes {
    fn get(&mut self, id: LaneId) -> &mut LaneState {
        match id {
            LaneId::Acks => &mut self.acks,
            LaneId::Telemetry => &mut self.telemetry,
        }
    }

    fn topic(&self, id: LaneId) -> &str {
        match id {
            LaneId::Acks => &self.acks_topic,
            LaneId::Telemetry => &self.telemetry_topic,
        }
    }
}

/// Carries out what a lane transition asks of the spool.
fn follow(spool: &SpoolHandle, id: LaneId, then: Then) -> Result<(), spool::SpoolStopped> {
    match then {
        Then::Nothing => Ok(()),
        Then::AskHead => spool.ask_head(id),
        Then::Delivered { .. } => spool.delivered(id),
    }
}

impl Link {
    /// A link and the handle that feeds it. `outbox` holds telemetry, `acks` command acks;
    /// commands and chunks received go to `inbound` (none: not subscribed), made by
    /// [`inbound::queue`].
    pub fn new(
        settings: LinkSettings,
        outbox: Outbox,
        acks: Outbox,
        inbound: Option<InboundTx>,
        stats: Arc<LinkStats>,
    ) -> (Link, LinkHandle) {
        let (tx, rx) = mpsc::channel(64);
        let subscriptions = subscriptions(&settings);
        let link = Link {
            settings,
            rx,
            outboxes: Some((acks, outbox)),
            inbound,
            subscriptions,
            stats,
            started: Instant::now(),
        };
        (link, LinkHandle { tx })
    }

    /// Routes a received publish to the command component, without waiting: a command
    /// that finds its queue full is answered `rejected(busy …)` through the ack outbox; a
    /// chunk that finds its queue full is handed back, for the caller to hold a short while
    /// (see [`inbound`]).
    fn route(
        &self,
        topic: &str,
        payload: Vec<u8>,
        spool: &mut SpoolHandle,
    ) -> Result<Option<Vec<u8>>, spool::SpoolStopped> {
        let Some(inbound) = &self.inbound else { return Ok(None) };
        let Some(&(_, is_command)) = self.subscriptions.iter().find(|(t, _)| t == topic) else {
            tracing::debug!(topic, "message on a topic the agent does not handle; ignored");
            return Ok(None);
        };
        let message = if is_command { Inbound::Command(payload) } else { Inbound::Chunk(payload) };
        match inbound.offer(message) {
            Offer::Queued => {}
            Offer::Busy { queued, message: Inbound::Command(bytes) } => {
                self.stats.commands_busy.fetch_add(1, Ordering::Relaxed);
                match inbound::busy_ack(self.settings.topics.device(), &bytes, queued, now_ms()) {
                    Some(ack) => {
                        tracing::warn!(topic, queued, "command queue full; command refused as busy");
                        spool.push(LaneId::Acks, ack)?;
                    }
                    None => tracing::warn!(topic, queued, "command queue full; unreadable command dropped"),
                }
            }
            Offer::Busy { message: Inbound::Chunk(bytes), .. } => return Ok(Some(bytes)),
            Offer::Closed => tracing::warn!(topic, "the command component has stopped; message dropped"),
        }
        Ok(None)
    }

    /// A chunk held for room in the chunk queue did not get it in time.
    fn drop_chunk(&self) {
        self.stats.chunks_busy.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            queued = inbound::CHUNK_QUEUE,
            "chunk queue full; OTA chunk dropped (the device asks for it again)"
        );
    }

    /// Publishes a message the outbox could not store, if connected; drops it otherwise.
    fn publish_unstored(&self, client: &AsyncClient, lanes: &Lanes, id: LaneId, payload: Vec<u8>) -> bool {
        let connected = self.stats.connected.load(Ordering::Relaxed);
        if connected && client.try_publish(lanes.topic(id), QoS::AtLeastOnce, false, payload).is_ok() {
            self.stats.sent_unstored.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("{} published without a copy on disk (the outbox could not store it)", id.what());
            return true;
        }
        self.stats.dropped_unstored.fetch_add(1, Ordering::Relaxed);
        tracing::warn!("{} dropped: the outbox could not store it and the broker is not reachable", id.what());
        false
    }

    fn status(&self, state: State) -> Vec<u8> {
        let model_states = self.settings.models.borrow().clone();
        edge_proto::encode(&Status {
            version: Status::VERSION,
            device: self.settings.topics.device().to_string(),
            state,
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            models: model_states.iter().map(|m| m.name.clone()).collect(),
            uptime_secs: if state == State::Online { self.started.elapsed().as_secs() } else { 0 },
            ts: now_ms(),
            groups: self.settings.groups.clone(),
            model_states,
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

    /// Runs until `cancel`, then publishes `offline` and disconnects (bounded by a deadline).
    pub async fn run(mut self, cancel: CancellationToken) -> anyhow::Result<()> {
        let (acks, telemetry) = self.outboxes.take().expect("a link runs once");
        let (mut spool, mut stored, spool_thread) = spool::start(acks, telemetry, self.stats.clone())
            .map_err(|e| anyhow::anyhow!("cannot start the outbox thread: {e}"))?;
        let (client, mut eventloop) = AsyncClient::new(self.options(), 16);
        let mut net = eventloop.network_options();
        net.set_connection_timeout(self.settings.network_timeout.as_secs().max(1));
        eventloop.set_network_options(net);
        let stop_events = CancellationToken::new();
        // Also when this returns early with an error.
        let _stop_events = stop_events.clone().drop_guard();
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
        let mut lanes = Lanes {
            acks: LaneState::Asking,
            telemetry: LaneState::Asking,
            acks_topic: self.settings.topics.acks(),
            telemetry_topic: self.settings.topics.telemetry(),
        };
        for id in LaneId::ALL {
            spool.ask_head(id)?;
        }
        let mut issued: VecDeque<Issued> = VecDeque::new();
        let mut ever_connected = false;
        // A chunk waiting for room in the chunk queue, and until when.
        let mut parked: Option<(Vec<u8>, tokio::time::Instant)> = None;
        let patience = chunk_patience(self.settings.keep_alive);
        let chunk_room = self.inbound.clone();
        // The models as last published in the retained status (on connect).
        let mut models = self.settings.models.clone();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                // Taken only while the spool keeps up: producers wait (bounded), the link does not.
                Some(request) = self.rx.recv(), if spool.has_room() => match request {
                    Request::Telemetry(payload) => spool.push(LaneId::Telemetry, payload)?,
                    Request::Ack(payload) => spool.push(LaneId::Acks, payload)?,
                    Request::Need(payload) => {
                        if self.stats.connected.load(Ordering::Relaxed)
                            && client.try_publish(&need_topic, QoS::AtMostOnce, false, payload).is_ok()
                        {
                            issued.push_back(Issued::Need);
                        }
                    }
                    Request::EraseOutboxes(reply) => spool.erase(reply)?,
                },
                Some(event) = stored.recv() => match event {
                    SpoolEvent::Head(id, head) => lanes.get(id).on_head(head),
                    SpoolEvent::Stored(id) => {
                        spool.answered();
                        follow(&spool, id, lanes.get(id).on_stored())?;
                    }
                    SpoolEvent::Unstored(id, payload) => {
                        spool.answered();
                        if self.publish_unstored(&client, &lanes, id, payload) {
                            issued.push_back(Issued::Unstored);
                        }
                    }
                    SpoolEvent::Erased => {
                        follow(&spool, LaneId::Telemetry, lanes.telemetry.on_erased())?;
                        follow(&spool, LaneId::Acks, lanes.acks.on_erased())?;
                    }
                },
                // A deploy, activation, rollback or removal changed the models: the retained
                // status says so at once (the last will keeps the one set at connect time).
                Ok(()) = models.changed() => {
                    models.mark_unchanged();
                    if self.stats.connected.load(Ordering::Relaxed)
                        && client.try_publish(&status_topic, QoS::AtLeastOnce, true, self.status(State::Online)).is_ok()
                    {
                        issued.push_back(Issued::Status);
                    }
                }
                room = room_for_chunk(chunk_room.as_ref()), if parked.is_some() => {
                    let (chunk, _) = parked.take().expect("guarded");
                    match room {
                        Some(permit) => permit.send(chunk),
                        None => tracing::warn!("the command component has stopped; OTA chunk dropped"),
                    }
                }
                _ = tokio::time::sleep_until(parked.as_ref().map_or_else(tokio::time::Instant::now, |p| p.1)),
                    if parked.is_some() =>
                {
                    parked = None;
                    self.drop_chunk();
                }
                // Not while a chunk waits: the next event may be another chunk.
                Some(event) = events.recv(), if parked.is_none() => match event {
                    LinkEvent::Connected => {
                        if ever_connected {
                            self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                        }
                        ever_connected = true;
                        self.stats.connected.store(true, Ordering::Relaxed);
                        tracing::info!(host = %self.settings.host, port = self.settings.port, "connected to broker");
                        issued.clear();
                        for id in LaneId::ALL {
                            follow(&spool, id, lanes.get(id).on_connected())?;
                        }
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
                        for id in LaneId::ALL {
                            lanes.get(id).on_disconnected();
                        }
                    }
                    LinkEvent::Published(pkid) => {
                        if let Some(Issued::Lane(id)) = issued.pop_front() {
                            lanes.get(id).on_published(pkid);
                        }
                    }
                    LinkEvent::Acked(pkid) => {
                        for id in LaneId::ALL {
                            let then = lanes.get(id).on_puback(pkid);
                            if let (Then::Delivered { len }, LaneId::Telemetry) = (then, id) {
                                self.stats.bytes_sent.fetch_add(len as u64, Ordering::Relaxed);
                                self.stats.messages_sent.fetch_add(1, Ordering::Relaxed);
                            }
                            follow(&spool, id, then)?;
                        }
                    }
                    LinkEvent::Message(topic, payload) => {
                        if let Some(chunk) = self.route(&topic, payload, &mut spool)? {
                            parked = Some((chunk, tokio::time::Instant::now() + patience));
                        }
                    }
                },
            }
            if self.stats.connected.load(Ordering::Relaxed) {
                for id in LaneId::ALL {
                    let Some(payload) = lanes.get(id).take_ready() else { continue };
                    if client.try_publish(lanes.topic(id), QoS::AtLeastOnce, false, payload.clone()).is_ok() {
                        issued.push_back(Issued::Lane(id));
                    } else {
                        lanes.get(id).unpublished(payload);
                    }
                }
            }
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
        // The spool finishes the pushes it was given: each is durable once it has answered.
        drop(spool);
        let joined = tokio::task::spawn_blocking(move || spool_thread.join());
        match tokio::time::timeout(Duration::from_secs(2), joined).await {
            Ok(Ok(Ok(()))) => {}
            Ok(_) => tracing::error!("the outbox thread panicked"),
            Err(_) => tracing::warn!("the outbox thread is still writing; not waiting for it"),
        }
        drop(stored);
        Ok(())
    }
}

/// How long a chunk waits for room in the chunk queue before it is dropped.
///
/// While a chunk waits, the link takes no further events from the event loop task, which
/// then stops polling rumqttc once its small channel is full: the broker's sending slows
/// down to the rate chunks are written (the transfer is paced, not repaired). But rumqttc
/// must be polled well within the keep-alive, or the broker drops the device: so a chunk
/// waits a quarter of the keep-alive at most (and no more than 2 s), after which it is
/// dropped and the event loop moves on.
pub fn chunk_patience(keep_alive: Duration) -> Duration {
    (keep_alive / 4).clamp(Duration::from_millis(100), Duration::from_secs(2))
}

/// Room for one chunk in the chunk queue; `None` once the command component is gone (or
/// there is no queue, which never has a chunk waiting).
async fn room_for_chunk(inbound: Option<&InboundTx>) -> Option<mpsc::Permit<'_, Vec<u8>>> {
    match inbound {
        Some(inbound) => inbound.chunk_room().await,
        None => std::future::pending().await,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_waits_well_within_the_keep_alive() {
        assert_eq!(chunk_patience(Duration::from_secs(1)), Duration::from_millis(250));
        assert_eq!(chunk_patience(Duration::from_secs(30)), Duration::from_secs(2));
        assert_eq!(chunk_patience(Duration::ZERO), Duration::from_millis(100));
    }
}
