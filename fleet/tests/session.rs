//! A persistent session under a flood, with a real Mosquitto: every message is handed to
//! the consumer once and every ack reaches the broker while messages keep coming. Acks sent
//! through rumqttc's request queue fell behind a steady flow until the queue was full, and
//! the session then stopped for good (bench/fleet.sh, 1,000 devices); the broker here
//! sends without an in-flight limit, so nothing but the acks themselves paces it.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_fleet::session::{self, Consumer, Filters};
use edge_it::{Broker, Pki};
use edge_mqtt::MqttConfig;
use rumqttc::{AsyncClient, MqttOptions, QoS, Transport};
use tokio_util::sync::CancellationToken;

const MESSAGES: u32 = 20_000;

fn mqtt(pki: &Pki, broker: &Broker) -> MqttConfig {
    let cert = pki.client("edge-fleet").unwrap();
    toml::from_str(&format!(
        "url = \"{}\"\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\nreconnect_max_secs = 1\n",
        broker.url(),
        pki.ca_pem().display(),
        cert.cert.display(),
        cert.key.display()
    ))
    .unwrap()
}

/// A device publishing `MESSAGES` QoS 1 messages, numbered, as fast as its session allows.
async fn flood(pki: &Pki, broker: &Broker) {
    let cert = pki.client("dev-1").unwrap();
    let mut opts = MqttOptions::new("dev-1", "127.0.0.1", broker.port());
    let tls = edge_mqtt::client_config(pki.ca_pem(), &cert.cert, &cert.key).unwrap();
    opts.set_transport(Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(tls)));
    let (client, mut eventloop) = AsyncClient::new(opts, 1000);
    let poll = tokio::spawn(async move {
        let mut acked = 0;
        while acked < MESSAGES {
            match eventloop.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => acked += 1,
                Ok(_) => {}
                Err(e) => panic!("publisher: {e}"),
            }
        }
    });
    for i in 0..MESSAGES {
        client.publish("edge/dev-1/telemetry", QoS::AtLeastOnce, false, i.to_le_bytes().to_vec()).await.unwrap();
    }
    tokio::time::timeout(Duration::from_secs(120), poll).await.expect("the broker acked every publish").unwrap();
}

/// A consumer session on `edge/+/telemetry` until `cancel`, acking everything it is handed
/// and counting it in `handed`; returns the numbers it was handed.
async fn consume(mqtt: MqttConfig, client_id: &str, handed: Arc<AtomicU32>, cancel: CancellationToken) -> HashSet<u32> {
    let (client, mut eventloop) = session::connect(&mqtt, client_id.into(), session::REQUESTS, true).unwrap();
    let (mut consumer, mut rx, acks) = Consumer::new(64);
    let filters = Filters::split(vec![], &["edge/+/telemetry".into()], None);
    let handler = tokio::spawn({
        let cancel = cancel.clone();
        async move {
            let mut seen = HashSet::new();
            loop {
                let p = tokio::select! {
                    _ = cancel.cancelled() => break,
                    p = rx.recv() => match p { Some(p) => p, None => break },
                };
                handed.fetch_add(1, Ordering::SeqCst);
                seen.insert(u32::from_le_bytes(p.payload[..4].try_into().unwrap()));
                acks.ack(&p);
            }
            seen
        }
    });
    session::pump(&mqtt, "test", &client, &mut eventloop, &filters, Some(&mut consumer), &cancel).await;
    let out = handler.await.unwrap();
    session::leave(&mqtt, "test", &client, &mut eventloop, Some(&mut consumer)).await;
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_is_handed_over_once_and_acked_while_it_lasts() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(&dir.path().join("pki")).unwrap();
    let broker = Broker::start_tuned(&pki, "max_inflight_messages 0\nmax_queued_messages 0\n").unwrap();
    let mqtt = mqtt(&pki, &broker);

    // Subscribe first (a persistent session), then flood.
    let cancel = CancellationToken::new();
    let handed = Arc::new(AtomicU32::new(0));
    let consumer = tokio::spawn(consume(mqtt.clone(), "edge-fleet-inventory", handed.clone(), cancel.clone()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    flood(&pki, &broker).await;

    // A deadline only so that a stuck session fails rather than hangs.
    let deadline = Instant::now() + Duration::from_secs(120);
    while handed.load(Ordering::SeqCst) < MESSAGES && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A second more for a duplicate, had any ack been lost.
    tokio::time::sleep(Duration::from_secs(1)).await;
    cancel.cancel();
    let seen = consumer.await.unwrap();
    assert_eq!(seen.len() as u32, MESSAGES, "{} of {MESSAGES} messages handed over", seen.len());
    let handed = handed.load(Ordering::SeqCst);
    assert_eq!(handed, MESSAGES, "{handed} messages handed over for {MESSAGES}: some came twice");

    // The same session again: the broker holds nothing unacked for it.
    let again = CancellationToken::new();
    let redelivered = Arc::new(AtomicU32::new(0));
    let second = tokio::spawn(consume(mqtt.clone(), "edge-fleet-inventory", redelivered.clone(), again.clone()));
    tokio::time::sleep(Duration::from_secs(3)).await;
    again.cancel();
    second.await.unwrap();
    let redelivered = redelivered.load(Ordering::SeqCst);
    assert_eq!(redelivered, 0, "the broker sent {redelivered} messages again: their acks never reached it");
}
