//! edgectl's commands and deploys against a real broker, with scripted devices: MQTT
//! clients with device certificates that verify the signed commands and answer as the
//! protocol says. The round trip with the real agent is tested in `agent/tests`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use edge_it::{Broker, Pki};
use edge_proto::codec::Versioned;
use edge_proto::command::{
    verify, Ack, AckState, DeviceStatus, ModelStatus, Payload, Reply, SigningKey, Target, VerifyingKey,
};
use edge_proto::ota::{decode_chunk, missing_ranges, sha256, Manifest, ModelFormat, Need};
use edge_proto::topics::Topics;
use edgectl::config::{CtlConfig, Overrides};
use edgectl::{deploy, DeployRequest, Link, Outcome};
use rumqttc::{AsyncClient, Event, Packet, QoS};
use tokio::sync::mpsc;

struct Fleet {
    dir: tempfile::TempDir,
    pki: Pki,
    broker: Broker,
    key: SigningKey,
    ctl_toml: PathBuf,
}

impl Fleet {
    fn start() -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::generate(&dir.path().join("pki")).unwrap();
        let broker = Broker::start(&pki).unwrap();
        let (key_path, _, _) = edgectl::keys::keygen(&dir.path().join("keys")).unwrap();
        let key = edgectl::keys::load_signing_key(&key_path).unwrap();
        let op = pki.client("operator").unwrap();
        let ctl_toml = dir.path().join("ctl.toml");
        std::fs::write(
            &ctl_toml,
            format!(
                "signing_key = \"keys/operator.key\"\n[mqtt]\nurl = \"{}\"\nca_file = \"{}\"\ncert_file = \"{}\"\n\
                 key_file = \"{}\"\n",
                broker.url(),
                pki.ca_pem().display(),
                op.cert.display(),
                op.key.display()
            ),
        )
        .unwrap();
        Fleet { dir, pki, broker, key, ctl_toml }
    }

    fn config(&self) -> CtlConfig {
        CtlConfig::load(&self.ctl_toml, &Overrides::default()).unwrap()
    }

    fn edgectl(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_edgectl")).arg("--config").arg(&self.ctl_toml).args(args).output().unwrap()
    }

    /// Starts a scripted device and returns once it is subscribed.
    async fn device(&self, id: &str, groups: &[&str], script: Script) -> tokio::task::JoinHandle<Vec<AckState>> {
        let tls = self.pki.client_config(id).unwrap();
        let opts = edge_it::mqtt_options(&edge_it::unique_client_id(id), self.broker.port(), tls);
        let (client, mut eventloop) = AsyncClient::new(opts, 64);
        let topics = Topics::new("edge", id).unwrap();
        let mut filters = vec![topics.commands(), topics.ota()];
        for g in groups {
            filters.push(topics.group_commands(g).unwrap());
            filters.push(topics.group_ota(g).unwrap());
        }
        for f in &filters {
            client.subscribe(f, QoS::AtLeastOnce).await.unwrap();
        }
        let mut subacks = 0;
        while subacks < filters.len() {
            if let Event::Incoming(Packet::SubAck(_)) = eventloop.poll().await.unwrap() {
                subacks += 1;
            }
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let resubscribe = client.clone();
        tokio::spawn(async move {
            // Like the agent: reconnect after a broker outage and subscribe again (clean session).
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if tx.send(p).is_err() {
                            return;
                        }
                    }
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        for f in &filters {
                            resubscribe.try_subscribe(f, QoS::AtLeastOnce).unwrap();
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
        let device = Device { id: id.into(), topics, client, trusted: self.key.verifying_key(), script };
        tokio::spawn(device.run(rx))
    }
}

/// What a scripted device does.
#[derive(Clone)]
struct Script {
    /// Chunk indices it loses the first time they arrive.
    lose: Vec<u32>,
    /// How the install ends.
    end: AckState,
}

impl Script {
    fn succeed() -> Script {
        Script { lose: vec![], end: AckState::Succeeded }
    }
}

struct Device {
    id: String,
    topics: Topics,
    client: AsyncClient,
    trusted: VerifyingKey,
    script: Script,
}

impl Device {
    async fn ack(&self, command_id: [u8; 16], state: AckState, reply: Option<Reply>) {
        let ack = Ack { version: Ack::VERSION, command_id, device: self.id.clone(), state, ts: 0, reply };
        self.client.publish(self.topics.acks(), QoS::AtLeastOnce, false, edge_proto::encode(&ack)).await.unwrap();
    }

    /// Answers commands until the channel closes; returns the states it acked.
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<rumqttc::Publish>) -> Vec<AckState> {
        let mut sent = vec![];
        let mut deploy: Option<([u8; 16], Manifest)> = None;
        let mut chunks: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
        loop {
            let p = match tokio::time::timeout(Duration::from_millis(400), rx.recv()).await {
                Ok(Some(p)) => Some(p),
                Ok(None) => return sent,
                Err(_) => None,
            };
            let Some(p) = p else {
                // Stalled with chunks missing: ask for them, as the agent does.
                if let Some((_, m)) = &deploy {
                    if !chunks.is_empty() && chunks.len() < m.chunk_count() as usize {
                        let need = Need {
                            version: Need::VERSION,
                            device: self.id.clone(),
                            transfer_id: m.transfer_id,
                            missing: missing_ranges(m.chunk_count(), u32::MAX, |i| chunks.contains_key(&i)),
                        };
                        let payload = edge_proto::encode(&need);
                        self.client.publish(self.topics.need(), QoS::AtLeastOnce, false, payload).await.unwrap();
                    }
                }
                continue;
            };
            if p.topic.ends_with("/cmd") {
                let cmd = verify(&p.payload, &[self.trusted]).expect("edgectl signs with the trusted key");
                match (&cmd.target, cmd.payload) {
                    (Target::Device(d), _) if *d != self.id => continue,
                    (_, Payload::DeployModel(m)) => {
                        self.ack(cmd.id, AckState::Accepted, None).await;
                        deploy = Some((cmd.id, m));
                    }
                    (_, Payload::GetStatus) => {
                        self.ack(cmd.id, AckState::Accepted, None).await;
                        self.ack(cmd.id, AckState::Succeeded, Some(Reply::Status(status()))).await;
                        sent.push(AckState::Succeeded);
                    }
                    (_, _) => {
                        self.ack(cmd.id, AckState::Accepted, None).await;
                        self.ack(cmd.id, self.script.end.clone(), None).await;
                        sent.push(self.script.end.clone());
                    }
                }
            } else if p.topic.ends_with("/ota") {
                let Some((command_id, m)) = &deploy else { continue };
                let (command_id, m) = (*command_id, m.clone());
                let chunk = decode_chunk(&p.payload).unwrap();
                assert_eq!(chunk.transfer_id, m.transfer_id);
                if let Some(i) = self.script.lose.iter().position(|&l| l == chunk.index) {
                    self.script.lose.remove(i);
                    continue;
                }
                assert_eq!(sha256(&chunk.data), m.chunk_hashes[chunk.index as usize], "chunk {}", chunk.index);
                let before = chunks.len();
                chunks.insert(chunk.index, chunk.data);
                if chunks.len() == before {
                    continue;
                }
                if chunks.len() == m.chunk_count() as usize {
                    let artifact: Vec<u8> = chunks.values().flatten().copied().collect();
                    assert_eq!(sha256(&artifact[..m.size as usize]), m.sha256);
                    self.ack(command_id, AckState::Progress(100), None).await;
                    self.ack(command_id, self.script.end.clone(), None).await;
                    sent.push(AckState::Progress(100));
                    sent.push(self.script.end.clone());
                    deploy = None;
                    chunks.clear();
                } else if chunks.len() == 1 {
                    self.ack(command_id, AckState::Progress(1), None).await;
                }
            }
        }
    }
}

fn status() -> DeviceStatus {
    DeviceStatus {
        agent_version: "9.9.9".into(),
        models: vec![ModelStatus {
            name: "kws".into(),
            active_version: Some("7".into()),
            installed_versions: vec!["6".into(), "7".into()],
            health: "ok".into(),
        }],
        config_digest: "c0ffee".into(),
        telemetry_interval_secs: 15,
        log_level: "info".into(),
    }
}

fn model(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

#[test]
fn get_status_to_a_device_that_does_not_answer_reports_no_answer_and_fails() {
    let fleet = Fleet::start();
    let started = std::time::Instant::now();
    let out = fleet.edgectl(&["cmd", "get-status", "--device", "nobody", "--timeout", "2"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("nobody") && stderr.contains("no answer"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(15), "the timeout bounds the wait");
}

#[test]
fn a_command_without_a_signing_key_is_refused_before_connecting() {
    let fleet = Fleet::start();
    let bare = fleet.dir.path().join("bare.toml");
    let text = std::fs::read_to_string(&fleet.ctl_toml).unwrap();
    std::fs::write(&bare, text.lines().skip(1).collect::<Vec<_>>().join("\n")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_edgectl"))
        .args(["--config", bare.to_str().unwrap(), "cmd", "restart", "--device", "d"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no signing key") && stderr.contains("--signing-key"), "{stderr}");
}

#[test]
fn get_status_json_has_the_devices_answer() {
    let fleet = Fleet::start();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    runtime.block_on(fleet.device("dev-1", &[], Script::succeed()));
    let out = fleet.edgectl(&["cmd", "get-status", "--device", "dev-1", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["ok"], true);
    assert_eq!(doc["command_id"].as_str().unwrap().len(), 32);
    assert_eq!(doc["results"][0]["device"], "dev-1");
    assert_eq!(doc["results"][0]["result"], "succeeded");
    let v = &doc["results"][0]["status"];
    assert_eq!(v["device"], "dev-1");
    assert_eq!(v["agent_version"], "9.9.9");
    assert_eq!(v["config_digest"], "c0ffee");
    assert_eq!(v["telemetry_interval_secs"], 15);
    assert_eq!(v["log_level"], "info");
    assert_eq!(v["models"][0]["name"], "kws");
    assert_eq!(v["models"][0]["installed_versions"], serde_json::json!(["6", "7"]));

    // One line per device without --json.
    let out = fleet.edgectl(&["cmd", "restart", "--device", "dev-1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("dev-1") && stdout.contains("succeeded"), "{stdout}");
    runtime.shutdown_timeout(Duration::from_secs(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_deploy_sends_each_chunk_once_repairs_a_loss_and_reports_each_device() {
    let fleet = Fleet::start();
    let ok = fleet.device("dev-1", &["lab"], Script::succeed()).await;
    let lossy = fleet
        .device(
            "dev-2",
            &["lab"],
            Script {
                lose: vec![1, 4],
                end: AckState::Failed("latency 80 ms over the 40 ms budget; rolled back to 6".into()),
            },
        )
        .await;
    let config = fleet.config();
    let key = config.signing_key().unwrap();
    let mut link = Link::connect(&config.mqtt).await.unwrap();
    let mut req = DeployRequest::new(Target::Group("lab".into()), "kws", "7", ModelFormat::Onnx, model(10_000));
    req.chunk_size = 1000;
    req.accept_wait = Duration::from_secs(1);
    req.timeout = Duration::from_secs(30);
    req.wait = true;
    let mut events = vec![];
    let outcome =
        deploy(&mut link, &edgectl::keys::Signer::new(key.clone()), &req, |e| events.push(e.clone())).await.unwrap();
    link.close().await;

    let by_device: BTreeMap<&str, &Outcome> = outcome.results.iter().map(|r| (r.device.as_str(), &r.outcome)).collect();
    assert_eq!(by_device["dev-1"], &Outcome::Succeeded, "{outcome:#?}");
    assert!(matches!(by_device["dev-2"], Outcome::Failed(r) if r.contains("rolled back")), "{outcome:#?}");
    assert!(!outcome.all_ok());
    let s = &outcome.stats;
    assert_eq!((s.chunks, s.first_pass_chunks), (10, 10), "one copy for the group: {s:?}");
    assert!(s.repair_requests >= 1 && s.repaired_chunks >= 2, "{s:?}");
    assert!(events.iter().any(|e| matches!(e, edgectl::Event::Repair { device, queued: 2 } if device == "dev-2")));
    assert!(matches!(events[0], edgectl::Event::Published { chunks: 10, .. }));
    drop((ok, lossy));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_device_deploy_without_wait_returns_at_progress_100() {
    let fleet = Fleet::start();
    let _dev = fleet.device("dev-1", &[], Script::succeed()).await;
    let config = fleet.config();
    let mut link = Link::connect(&config.mqtt).await.unwrap();
    let mut req = DeployRequest::new(Target::Device("dev-1".into()), "kws", "8", ModelFormat::Tflite, model(2500));
    req.chunk_size = 1000;
    req.rate = Some(20_000);
    let outcome = deploy(&mut link, &config.signer().unwrap(), &req, |_| {}).await.unwrap();
    // The device acks Progress(100) and Succeeded back to back: either is a good end.
    let r = &outcome.results[0];
    assert!(matches!(r.outcome, Outcome::Transferred | Outcome::Succeeded), "{outcome:#?}");
    assert!(outcome.all_ok());
    assert_eq!(outcome.stats.first_pass_chunks, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_rides_out_a_broker_restart() {
    let mut fleet = Fleet::start();
    let _dev = fleet.device("dev-1", &[], Script::succeed()).await;
    let config = fleet.config();
    let key = config.signing_key().unwrap();
    let mut req = DeployRequest::new(Target::Device("dev-1".into()), "kws", "9", ModelFormat::Onnx, model(40_000));
    req.chunk_size = 1000;
    // About 2 s of transfer, so that the restart lands in the middle of it.
    req.rate = Some(20_000);
    req.wait = true;
    req.timeout = Duration::from_secs(60);
    let deploying = tokio::spawn(async move {
        let mut link = Link::connect(&config.mqtt).await.unwrap();
        let mut events = vec![];
        let outcome = deploy(&mut link, &edgectl::keys::Signer::new(key.clone()), &req, |e| events.push(e.clone()))
            .await
            .unwrap();
        (outcome, events)
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    tokio::task::block_in_place(|| fleet.broker.restart().unwrap());
    let (outcome, events) = deploying.await.unwrap();
    assert_eq!(outcome.results[0].outcome, Outcome::Succeeded, "{outcome:#?}\n{events:#?}");
    assert!(events.iter().any(|e| matches!(e, edgectl::Event::Disconnected(_))), "{events:#?}");
    assert!(events.iter().any(|e| matches!(e, edgectl::Event::Reconnected)), "{events:#?}");
    assert_eq!(outcome.stats.first_pass_chunks, 40, "{:?}", outcome.stats);
}

#[test]
fn deploy_refuses_a_chunk_size_over_the_packet_size_with_what_fits() {
    let fleet = Fleet::start();
    let model_path: &Path = &fleet.dir.path().join("m.onnx");
    std::fs::write(model_path, model(100)).unwrap();
    let out = fleet.edgectl(&[
        "deploy",
        "--model",
        model_path.to_str().unwrap(),
        "--name",
        "kws",
        "--version",
        "1",
        "--device",
        "dev-1",
        "--chunk-size",
        "300000",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--chunk-size 300000") && stderr.contains("max_packet_bytes = 262144"), "{stderr}");
}

/// Above a handful of devices a deploy shows counts per stage and each failure as it
/// happens, not one line per device per step; with --json, stdout is one document.
#[test]
fn a_deploy_to_many_devices_shows_counts_and_failures_and_json_results() {
    let fleet = Fleet::start();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let broken = Script { lose: vec![], end: AckState::Failed("validation: max diff 0.31 > 1e-4".into()) };
    for i in 0..10 {
        let script = if i == 7 { broken.clone() } else { Script::succeed() };
        runtime.block_on(fleet.device(&format!("cam-{i:02}"), &["cams"], script));
    }
    let model_path = fleet.dir.path().join("m.onnx");
    std::fs::write(&model_path, model(40_000)).unwrap();
    let deploy = |extra: &[&str], version: &str| {
        let mut args = vec!["deploy", "--model", model_path.to_str().unwrap(), "--name", "kws", "--group", "cams"];
        args.extend(["--version", version, "--wait", "--accept-wait", "3", "--timeout", "60"]);
        args.extend(extra);
        fleet.edgectl(&args)
    };

    let out = deploy(&[], "7");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("cam-07: failed validation: max diff 0.31 > 1e-4"), "{stdout}");
    assert!(stdout.contains("10 devices: 9 succeeded, 1 failed"), "{stdout}");
    // Once the group is past the handful, no per-device progress lines: a device shows in
    // the failures (if it failed) and in the final table, not at every step.
    assert!(!stdout.contains("progress"), "{stdout}");

    let out = deploy(&["--json"], "8");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cam-07: failed"), "progress goes to stderr with --json: {stderr}");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is one JSON document");
    assert_eq!(doc["ok"], false);
    let results = doc["results"].as_array().unwrap();
    assert_eq!(results.len(), 10);
    let failed: Vec<_> = results.iter().filter(|r| r["result"] == "failed").collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["device"], "cam-07");
    assert_eq!(failed[0]["reason"], "validation: max diff 0.31 > 1e-4");
    assert!(doc["transfer"]["chunks"].as_u64().unwrap() >= 1);
    runtime.shutdown_timeout(Duration::from_secs(1));
}
