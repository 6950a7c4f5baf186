//! Simulated devices against a real Mosquitto with the fleet ACL (deploy/mosquitto/acl, as
//! is), watched and driven by an operator client: what the fleet service relies on.

use std::sync::Arc;
use std::time::Duration;

use edge_it::{mqtt_options, unique_client_id, Broker, Pki};
use edge_proto::codec::Versioned;
use edge_proto::command::{sign, Ack, AckState, Command, Payload, SigningKey, Target};
use edge_proto::ota::{prepare, Chunk, ModelFormat, Need};
use edge_proto::status::{State, Status};
use edge_sim::device::{Device, Profile};
use edge_sim::session::{self, now_ms, Link, Stats, Switch};
use rumqttc::{AsyncClient, Event, EventLoop, Packet, QoS};
use tokio::sync::watch;

const PATIENCE: Duration = Duration::from_secs(30);

enum Msg {
    Status(Status),
    Telemetry(edge_proto::telemetry::Telemetry),
    Ack(Ack),
    Need(Need),
}

async fn next(eventloop: &mut EventLoop) -> Msg {
    loop {
        let event = tokio::time::timeout(PATIENCE, eventloop.poll()).await.expect("a message in time").expect("link");
        let Event::Incoming(Packet::Publish(p)) = event else { continue };
        if p.payload.is_empty() {
            continue;
        }
        return match p.topic.rsplit('/').next() {
            Some("status") => Msg::Status(edge_proto::status::decode(&p.payload).unwrap()),
            Some("telemetry") => Msg::Telemetry(edge_proto::telemetry::decode(&p.payload).unwrap()),
            Some("ack") => Msg::Ack(edge_proto::decode(&p.payload).unwrap()),
            Some("need") => Msg::Need(edge_proto::decode(&p.payload).unwrap()),
            _ => continue,
        };
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn simulated_devices_report_take_a_deploy_with_a_repair_and_leave_a_last_will() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path()).unwrap();
    let broker = Broker::start(&pki).unwrap();
    let key = SigningKey::from_bytes(&[5; 32]);
    let profile = Arc::new(Profile {
        groups: vec!["bench".into()],
        trusted: vec![key.verifying_key()],
        agent_version: "0.1.0".into(),
        stall: Duration::from_secs(1),
    });
    let link = Arc::new(Link {
        host: "127.0.0.1".into(),
        port: broker.port(),
        prefix: "edge".into(),
        keep_alive: Duration::from_secs(5),
        interval: Duration::from_millis(200),
    });

    let op = AsyncClient::new(
        mqtt_options(&unique_client_id("operator"), broker.port(), pki.client_config("operator").unwrap()),
        64,
    );
    let (operator, mut events) = op;
    for t in ["edge/+/telemetry", "edge/+/ack", "edge/+/need", "edge/+/status"] {
        operator.subscribe(t, QoS::AtLeastOnce).await.unwrap();
    }
    // Telemetry starts once the operator sees both statuses: the broker handles the
    // subscriptions in order, so the status one (last) being active means all are.
    let (telemetry_tx, telemetry_rx) = watch::channel(false);
    let mut switches = vec![];
    for id in ["sim-a", "sim-b"] {
        let files = pki.client(id).unwrap();
        let tls = edge_mqtt::client_config(pki.ca_pem(), &files.cert, &files.key).unwrap();
        let (tx, rx) = watch::channel(true);
        let device = Device::new(id, profile.clone(), now_ms());
        tokio::spawn(session::run(
            device,
            tls,
            link.clone(),
            Switch { online: rx, telemetry: telemetry_rx.clone() },
            Arc::new(Stats::default()),
        ));
        switches.push(tx);
    }

    // Both come online with their groups and model; sim-a's telemetry counts from 0.
    let mut online = std::collections::BTreeSet::new();
    let mut seqs = vec![];
    while online.len() < 2 || seqs.len() < 3 {
        match next(&mut events).await {
            Msg::Status(s) if s.state == State::Online => {
                assert_eq!(s.groups, vec!["bench".to_string()]);
                assert_eq!(s.model_states[0].active_version.as_deref(), Some("1"));
                online.insert(s.device);
                if online.len() == 2 {
                    telemetry_tx.send_replace(true);
                }
            }
            Msg::Telemetry(t) if t.device == "sim-a" => {
                assert_eq!(t.version, edge_proto::telemetry::Telemetry::VERSION, "the current telemetry version");
                assert_eq!(t.latency.len(), 1);
                seqs.push(t.seq);
            }
            _ => {}
        }
    }
    assert_eq!(seqs, vec![0, 1, 2]);
    telemetry_tx.send_replace(false);

    // A group deploy sent to sim-a's own topic, as edge-fleet sends it; chunk 1 is held back
    // until the device asks for it.
    let model: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
    let (manifest, artifact) = prepare([8; 16], "det", "2", ModelFormat::Onnx, &model, None, 240 * 1024);
    assert_eq!(manifest.chunk_count(), 3);
    let now = now_ms();
    let cmd = sign(
        Command::new([1; 16], now, now + 60_000, Target::Group("bench".into()), Payload::DeployModel(manifest.clone())),
        &key,
    );
    operator.publish("edge/sim-a/cmd", QoS::AtLeastOnce, false, edge_proto::encode(&cmd)).await.unwrap();
    let chunk = |i: u32| {
        let r = manifest.chunk_range(i);
        edge_proto::encode(&Chunk {
            version: 1,
            transfer_id: manifest.transfer_id,
            index: i,
            data: artifact[r.start as usize..r.end as usize].to_vec(),
        })
    };
    let mut acks = vec![];
    let mut sent_rest = false;
    let mut active = false;
    while !(active && acks.last() == Some(&AckState::Succeeded)) {
        match next(&mut events).await {
            Msg::Ack(a) if a.device == "sim-a" => {
                assert_eq!(a.command_id, [1; 16]);
                if a.state == AckState::Accepted {
                    for i in [0, 2] {
                        operator.publish("edge/sim-a/ota", QoS::AtLeastOnce, false, chunk(i)).await.unwrap();
                    }
                }
                acks.push(a.state);
            }
            Msg::Need(n) => {
                assert_eq!((n.device.as_str(), n.missing.clone()), ("sim-a", vec![(1, 2)]));
                if !sent_rest {
                    operator.publish("edge/sim-a/ota", QoS::AtLeastOnce, false, chunk(1)).await.unwrap();
                    sent_rest = true;
                }
            }
            Msg::Status(s) if s.device == "sim-a" && s.state == State::Online => {
                let det = s.model_states.iter().find(|m| m.name == "det");
                if let Some(det) = det {
                    assert_eq!((det.active_version.as_deref(), det.health.as_str()), (Some("2"), "ok"));
                    assert!(!acks.contains(&AckState::Succeeded), "the status comes before the final ack");
                    active = true;
                }
            }
            _ => {}
        }
    }
    assert!(sent_rest, "the device asked for the chunk held back");
    assert_eq!(acks.first(), Some(&AckState::Accepted));
    assert_eq!(&acks[acks.len() - 2..], &[AckState::Progress(100), AckState::Succeeded]);

    // Switched off without a DISCONNECT: the broker publishes sim-b's last will.
    switches[1].send_replace(false);
    loop {
        if let Msg::Status(s) = next(&mut events).await {
            if s.device == "sim-b" && s.state == State::Offline {
                break;
            }
        }
    }
}
