//! The link against a real Mosquitto over mutual TLS, built in the test: its consumers can
//! be made to stall (it never waits on them), and its outboxes put on a full file system
//! (it publishes what it cannot store).

mod daemon;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use daemon::{operator, setup, Setup};
use edge_agent::link::{inbound, Link, LinkHandle, LinkSettings, LinkStats};
use edge_agent::outbox::Outbox;
use edge_proto::command::{sign, Ack, AckState, Command, Payload, SigningKey, Target};
use edge_proto::topics::Topics;
use rumqttc::{Event, EventLoop, Packet, QoS};
use tokio_util::sync::CancellationToken;

const KEEP_ALIVE: Duration = Duration::from_secs(1);

fn settings(s: &Setup, device: &str) -> LinkSettings {
    let files = s.pki.client(device).unwrap();
    let tls = edge_it::client_config(s.pki.ca_pem(), &files.cert, &files.key).unwrap();
    LinkSettings {
        topics: Topics::new("edge", device).unwrap(),
        host: "127.0.0.1".into(),
        port: s.broker.port(),
        tls: Some(Arc::new(tls)),
        max_packet_bytes: 1 << 20,
        network_timeout: Duration::from_secs(5),
        keep_alive: KEEP_ALIVE,
        models: tokio::sync::watch::channel(vec![]).1,
        backoff_base: Duration::from_millis(100),
        backoff_max: Duration::from_secs(1),
        groups: vec![],
    }
}

fn outboxes(dir: &std::path::Path) -> (Outbox, Outbox) {
    let ttl = Duration::from_secs(3600);
    (Outbox::open(&dir.join("outbox"), 1 << 20, ttl).unwrap(), Outbox::open(&dir.join("acks"), 1 << 20, ttl).unwrap())
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < end, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn command(id: u8) -> Vec<u8> {
    let now = edgectl::command::now_ms();
    let cmd = Command::new([id; 16], now, now + 60_000, Target::Device("dev-busy".into()), Payload::GetStatus);
    edge_proto::encode(&sign(cmd, &SigningKey::from_bytes(&[42; 32])))
}

/// What the operator saw on the device's topics.
#[derive(Default)]
struct Seen {
    acks: Vec<Ack>,
    samples: Vec<String>,
}

/// Polls the operator's connection for `period`, keeping what arrives.
async fn watch(ev: &mut EventLoop, period: Duration, seen: &mut Seen) {
    let end = Instant::now() + period;
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        let Ok(event) = tokio::time::timeout(left, ev.poll()).await else { break };
        if let Ok(Event::Incoming(Packet::Publish(p))) = event {
            if p.topic.ends_with("/ack") {
                seen.acks.push(edge_proto::decode(&p.payload).unwrap());
            } else if p.topic.ends_with("/telemetry") {
                seen.samples.push(String::from_utf8_lossy(&p.payload).into_owned());
            }
        }
    }
}

/// Sends a numbered telemetry payload every 100 ms until `stop`.
fn telemetry_source(link: LinkHandle, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        for n in 0.. {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
            if !link.send(format!("sample {n}").into_bytes()).await {
                return;
            }
        }
    })
}

// Regression: a command routed to a busy command thread waited up to 30 s inside the
// link's loop; rumqttc went unpolled past its keep-alive, the broker dropped the device,
// and the command, already PUBACKed, was lost without an ack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_command_consumer_gets_busy_rejections_while_the_link_stays_up() {
    let s = setup();
    let dir = tempfile::tempdir().unwrap();
    let (outbox, acks) = outboxes(dir.path());
    // Nobody reads `inbound_rx` until the end: the command component is stalled.
    let (inbound_tx, mut inbound_rx) = inbound::queue(2, 1);
    let stats = Arc::new(LinkStats::default());
    let (link, handle) = Link::new(settings(&s, "dev-busy"), outbox, acks, Some(inbound_tx), stats.clone());
    let cancel = CancellationToken::new();
    let task = tokio::spawn(link.run(cancel.clone()));
    let (op, mut ev) = operator(&s, "edge/dev-busy/#").await;
    until("the link is connected", || stats.connected.load(Ordering::Relaxed)).await;
    // The link's subscriptions follow its connect; the operator's own traffic gives them time.
    let mut seen = Seen::default();
    watch(&mut ev, Duration::from_millis(500), &mut seen).await;
    let stop = CancellationToken::new();
    let source = telemetry_source(handle.clone(), stop.clone());

    let topics = Topics::new("edge", "dev-busy").unwrap();
    for id in 1..=5 {
        op.publish(topics.commands(), QoS::AtLeastOnce, false, command(id)).await.unwrap();
    }
    for index in 0..3u8 {
        op.publish(topics.ota(), QoS::AtLeastOnce, false, vec![index; 100]).await.unwrap();
    }
    // More than two keep-alive periods with the consumer stalled throughout.
    watch(&mut ev, KEEP_ALIVE * 4, &mut seen).await;
    let samples_before = seen.samples.len();
    watch(&mut ev, KEEP_ALIVE, &mut seen).await;
    stop.cancel();
    source.await.unwrap();

    let busy: Vec<[u8; 16]> = seen
        .acks
        .iter()
        .filter(|a| matches!(&a.state, AckState::Rejected(r) if r.starts_with("busy: 2 commands queued")))
        .map(|a| a.command_id)
        .collect();
    assert_eq!(busy, vec![[3; 16], [4; 16], [5; 16]], "acks: {:?}", seen.acks);
    assert!(seen.acks.iter().all(|a| a.device == "dev-busy"));
    assert!(samples_before >= 10, "telemetry stalled: {} samples", samples_before);
    assert!(seen.samples.len() > samples_before, "telemetry stopped during the last keep-alive period");
    assert_eq!(stats.reconnects.load(Ordering::Relaxed), 0, "the link lost its connection");
    assert!(stats.connected.load(Ordering::Relaxed));
    assert_eq!(stats.commands_busy.load(Ordering::Relaxed), 3);
    assert_eq!(stats.chunks_busy.load(Ordering::Relaxed), 2);

    // The first two commands and the first chunk waited, in order, for the consumer.
    let mut queued = vec![];
    for _ in 0..3 {
        queued.push(match inbound_rx.recv().await.unwrap() {
            inbound::Inbound::Command(bytes) => {
                let ((_, id), _) = postcard::take_from_bytes::<(u16, [u8; 16])>(&bytes).unwrap();
                format!("command {}", id[0])
            }
            inbound::Inbound::Chunk(bytes) => format!("chunk {:?}", &bytes[..2]),
        });
    }
    assert_eq!(queued, ["command 1", "command 2", "chunk [0, 0]"]);
    cancel.cancel();
    task.await.unwrap().unwrap();
}

// Regression: on a full disk a sample or an ack that the outbox could not store was
// logged and lost, even with the broker connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_full_disk_what_cannot_be_stored_is_published_directly() {
    let Some(fs) = edge_it::Tmpfs::mount(256 * 1024) else { return };
    let mut s = setup();
    fs.fill("filler");
    // Opening on the full file system works (it cannot even write its cursor).
    let (outbox, acks) = outboxes(fs.path());
    let stats = Arc::new(LinkStats::default());
    let (link, handle) = Link::new(settings(&s, "dev-full"), outbox, acks, None, stats.clone());
    let cancel = CancellationToken::new();
    let task = tokio::spawn(link.run(cancel.clone()));
    let (_op, mut ev) = operator(&s, "edge/dev-full/#").await;
    until("the link is connected", || stats.connected.load(Ordering::Relaxed)).await;
    for n in 0..3 {
        assert!(handle.send(format!("sample {n}").into_bytes()).await);
    }
    let ack = Ack {
        version: 1,
        command_id: [9; 16],
        device: "dev-full".into(),
        state: AckState::Succeeded,
        ts: 1,
        reply: None,
    };
    assert!(handle.ack(edge_proto::encode(&ack)).await);
    let mut seen = Seen::default();
    let end = Instant::now() + Duration::from_secs(20);
    while (seen.samples.len() < 3 || seen.acks.is_empty()) && Instant::now() < end {
        watch(&mut ev, Duration::from_millis(200), &mut seen).await;
    }
    assert_eq!(seen.samples, ["sample 0", "sample 1", "sample 2"]);
    assert_eq!(seen.acks, [ack]);
    assert_eq!(stats.sent_unstored.load(Ordering::Relaxed), 4);
    assert_eq!(stats.outbox_errors.load(Ordering::Relaxed), 4);
    assert!(stats.disk_full.load(Ordering::Relaxed));
    assert_eq!(stats.queued.load(Ordering::Relaxed), 0, "something was stored after all");

    // Offline, such a message cannot go anywhere: it is dropped, and counted.
    s.broker.stop().unwrap();
    until("the link sees the broker gone", || !stats.connected.load(Ordering::Relaxed)).await;
    assert!(handle.send(b"sample 3".to_vec()).await);
    until("the sample is counted as dropped", || stats.dropped_unstored.load(Ordering::Relaxed) == 1).await;
    cancel.cancel();
    task.await.unwrap().unwrap();
}
