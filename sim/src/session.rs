//! The I/O shell of one simulated device: its own MQTT session over mutual TLS, carrying
//! what [`Device`] decides.
//!
//! As the agent: client id = device id (its certificate's CN), a persistent session (clean
//! session off), a retained offline status as last will, the online status published
//! retained on every connect, subscriptions (QoS 1) to its own `cmd` and `ota` topics and
//! those of its groups, telemetry QoS 1, acks QoS 1, repair requests QoS 0.
//!
//! A device is switched on and off from outside ([`Switch`]): off drops the connection
//! without a DISCONNECT, so the broker publishes the last will, as for a box that loses
//! power; on connects again into the same broker session.
//!
//! Nothing waits inside the poll loop: publishes go through `try_publish` into the
//! client's request queue, which the same loop drains (an awaited publish there would
//! wait on itself). A publish refused for a full queue is counted, never silently lost.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use edge_proto::command::Ack;
use edge_proto::status::State;
use edge_proto::telemetry::Encoding;
use edge_proto::topics::Topics;
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::device::{Device, Out};
use crate::receiver::Taken;

/// Largest packet either way: a 1 MiB chunk plus header room (the fleet broker's limit).
const MAX_PACKET_BYTES: usize = 1024 * 1024 + 4096;
/// Requests queued between the device and its event loop.
const REQUEST_QUEUE: usize = 256;

/// Where and how the devices connect.
#[derive(Debug, Clone)]
pub struct Link {
    /// Broker host (an address the broker certificate names).
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// Topic prefix.
    pub prefix: String,
    /// Keep-alive.
    pub keep_alive: Duration,
    /// Telemetry interval.
    pub interval: Duration,
}

/// What one device did, read by the bench while it runs.
#[derive(Debug, Default)]
pub struct Stats {
    /// Telemetry samples handed to the MQTT client.
    pub telemetry_sent: AtomicU64,
    /// Connections made (ConnAck received).
    pub connects: AtomicU64,
    /// Publishes refused because the client's queue was full.
    pub publish_refused: AtomicU64,
    /// Wall-clock ms at which the last deploy was installed, 0 before.
    pub installed_ms: AtomicU64,
    /// Deploys that failed on the device.
    pub deploys_failed: AtomicU64,
    /// Repair requests sent.
    pub needs: AtomicU64,
    /// Chunk bytes taken (new chunks only).
    pub chunk_bytes: AtomicU64,
    /// Chunks received again.
    pub duplicate_chunks: AtomicU64,
    /// Chunks dropped (bad hash, another transfer, no room ahead of a gap).
    pub dropped_chunks: AtomicU64,
    /// Connection errors seen by the event loop.
    pub errors: AtomicU64,
}

/// Switches a device on and off, and telemetry for all.
#[derive(Debug, Clone)]
pub struct Switch {
    /// Whether the device is connected.
    pub online: watch::Receiver<bool>,
    /// Whether devices sample telemetry (paused between the bench's phases).
    pub telemetry: watch::Receiver<bool>,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Runs a device until its `online` switch's sender is dropped.
pub async fn run(
    mut device: Device,
    tls: Arc<rustls::ClientConfig>,
    link: Arc<Link>,
    mut switch: Switch,
    stats: Arc<Stats>,
) {
    let topics = Topics::new(&link.prefix, device.id()).expect("device ids are checked by the bench");
    let start = Instant::now();
    loop {
        while !*switch.online.borrow_and_update() {
            if switch.online.changed().await.is_err() {
                return;
            }
        }
        if !connected(&mut device, &tls, &link, &topics, &mut switch, &stats, start).await {
            return;
        }
    }
}

/// One connection, until the device is switched off (`true`) or for good (`false`).
async fn connected(
    device: &mut Device,
    tls: &Arc<rustls::ClientConfig>,
    link: &Link,
    topics: &Topics,
    switch: &mut Switch,
    stats: &Stats,
    start: Instant,
) -> bool {
    let mut opts = MqttOptions::new(device.id(), link.host.clone(), link.port);
    opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls.clone())));
    opts.set_keep_alive(link.keep_alive);
    opts.set_clean_session(false);
    opts.set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES);
    let will = edge_proto::encode(&device.status(State::Offline, now_ms()));
    opts.set_last_will(LastWill::new(topics.status(), will, QoS::AtLeastOnce, true));
    let (client, mut eventloop) = AsyncClient::new(opts, REQUEST_QUEUE);
    let publish = |topic: String, qos: QoS, retain: bool, payload: Vec<u8>| {
        if client.try_publish(topic, qos, retain, payload).is_err() {
            stats.publish_refused.fetch_add(1, Ordering::Relaxed);
        }
    };
    // Devices sample at their own phase within the interval, as a fleet switched on over
    // time does: not all in the same millisecond.
    let phase = Duration::from_millis(fastrand::u64(0..link.interval.as_millis().max(1) as u64));
    let mut telemetry = tokio::time::interval_at(Instant::now() + phase, link.interval);
    telemetry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ota = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            event = eventloop.poll() => match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    stats.connects.fetch_add(1, Ordering::Relaxed);
                    let mut filters = vec![topics.commands(), topics.ota()];
                    for g in &device.status(State::Online, 0).groups {
                        filters.extend(topics.group_commands(g));
                        filters.extend(topics.group_ota(g));
                    }
                    for f in filters {
                        if client.try_subscribe(f, QoS::AtLeastOnce).is_err() {
                            stats.publish_refused.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    publish(topics.status(), QoS::AtLeastOnce, true, edge_proto::encode(&device.status(State::Online, now_ms())));
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let now = start.elapsed();
                    let out = if p.topic.ends_with("/ota") {
                        let (out, taken) = device.on_chunk(&p.payload, now);
                        match taken {
                            Some(Taken::Taken(_) | Taken::Complete(_)) => {
                                stats.chunk_bytes.fetch_add(p.payload.len() as u64, Ordering::Relaxed);
                            }
                            Some(Taken::Duplicate) => { stats.duplicate_chunks.fetch_add(1, Ordering::Relaxed); }
                            Some(Taken::Dropped(_)) => { stats.dropped_chunks.fetch_add(1, Ordering::Relaxed); }
                            None => {}
                        }
                        out
                    } else {
                        device.on_command(&p.payload, now, now_ms())
                    };
                    carry(device, out, topics, &publish, stats);
                }
                Ok(_) => {}
                Err(_) => {
                    // rumqttc reconnects at the next poll, resending what was not acked.
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(500 + fastrand::u64(0..1000))) => {}
                        changed = switch.online.changed() => if changed.is_err() || !*switch.online.borrow() { return changed.is_ok() },
                    }
                }
            },
            _ = telemetry.tick() => {
                if *switch.telemetry.borrow() {
                    let sample = device.telemetry(now_ms());
                    publish(topics.telemetry(), QoS::AtLeastOnce, false, sample.encode(Encoding::Postcard));
                    stats.telemetry_sent.fetch_add(1, Ordering::Relaxed);
                }
            }
            _ = ota.tick(), if device.transferring() => {
                let out = device.on_tick(start.elapsed(), now_ms());
                carry(device, out, topics, &publish, stats);
            }
            changed = switch.online.changed() => {
                if changed.is_err() {
                    return false;
                }
                if !*switch.online.borrow() {
                    // Dropping the event loop closes the socket without a DISCONNECT: the
                    // broker publishes the last will.
                    return true;
                }
            }
        }
    }
}

fn carry(
    device: &Device,
    out: Vec<Out>,
    topics: &Topics,
    publish: &impl Fn(String, QoS, bool, Vec<u8>),
    stats: &Stats,
) {
    for o in out {
        match o {
            Out::Ack { command_id, state, reply } => {
                let ack = Ack { version: 1, command_id, device: device.id().into(), state, ts: now_ms(), reply };
                publish(topics.acks(), QoS::AtLeastOnce, false, edge_proto::encode(&ack));
            }
            Out::Status => publish(
                topics.status(),
                QoS::AtLeastOnce,
                true,
                edge_proto::encode(&device.status(State::Online, now_ms())),
            ),
            Out::Need(need) => {
                stats.needs.fetch_add(1, Ordering::Relaxed);
                publish(topics.need(), QoS::AtMostOnce, false, edge_proto::encode(&need));
            }
            Out::Finished(Ok(())) => stats.installed_ms.store(now_ms(), Ordering::Relaxed),
            Out::Finished(Err(_)) => {
                stats.deploys_failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
