//! `edgectl pki` end to end: the real binary makes the CA, the broker's, a device's and the
//! operator's certificates; a real Mosquitto runs the shipped `deploy/mosquitto/mosquitto.conf`
//! and `acl` with them; the agent's own configuration check accepts the device's; and the
//! device's telemetry reaches the operator through the ACL.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use edge_it::{mqtt_options, unique_client_id, Broker, CertFiles};
use rumqttc::{AsyncClient, Event, EventLoop, Incoming, QoS};
use tokio::sync::mpsc;
use tokio::time::timeout;

/// How long one step (a connection, an acknowledgement, a delivery) may take.
const STEP: Duration = Duration::from_secs(10);

fn edgectl(args: &[&str]) -> Output {
    // No ctl.toml anywhere: pki must not need one.
    Command::new(env!("CARGO_BIN_EXE_edgectl"))
        .args(["--config", "/nonexistent/ctl.toml", "pki"])
        .args(args)
        .output()
        .expect("run edgectl")
}

fn ok(out: Output) -> String {
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Everything `edgectl pki` makes for a one-device fleet, under `dir`.
struct Files {
    ca: PathBuf,
    devices: PathBuf,
    operator: PathBuf,
}

fn make_fleet(dir: &Path) -> Files {
    let f = Files { ca: dir.join("ca"), devices: dir.join("devices"), operator: dir.join("operator") };
    let init = ok(edgectl(&["init", "--out", s(&f.ca)]));
    assert!(init.contains("CN edge fleet CA") && init.contains("CN localhost"), "{init}");
    let dev = ok(edgectl(&["issue", "--ca", s(&f.ca), "--device", "dev-1", "--out", s(&f.devices)]));
    assert!(dev.contains("CN dev-1") && dev.contains("device_id = \"dev-1\""), "{dev}");
    let op = ok(edgectl(&["issue", "--ca", s(&f.ca), "--operator", "--out", s(&f.operator), "--json"]));
    let op: serde_json::Value = serde_json::from_str(&op).expect("--json prints one JSON document");
    assert_eq!(op["written"][0]["common_name"], "operator");
    assert_eq!(op["written"][0]["cert"], s(&f.operator.join("operator.pem")));
    assert!(op["written"][0]["not_after"].as_i64().unwrap() > 1_700_000_000);
    f
}

/// An agent configuration for dev-1 with the issued files, as `deploy/edge-agent.example.toml`
/// names them.
fn agent_config(dir: &Path, f: &Files, port: u16) -> PathBuf {
    let text = format!(
        "device_id = \"dev-1\"\nstate_dir = \"{}\"\n[mqtt]\nurl = \"mqtts://127.0.0.1:{port}\"\n\
         ca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        s(&dir.join("state")),
        s(&f.ca.join("ca.pem")),
        s(&f.devices.join("dev-1.pem")),
        s(&f.devices.join("dev-1.key")),
    );
    let path = dir.join("edge-agent.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// edgectl's own configuration for the operator, as README and docs/deploy.md write it.
fn ctl_config(dir: &Path, f: &Files, port: u16) -> PathBuf {
    let text = format!(
        "[mqtt]\nurl = \"mqtts://127.0.0.1:{port}\"\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        s(&f.ca.join("ca.pem")),
        s(&f.operator.join("operator.pem")),
        s(&f.operator.join("operator.key")),
    );
    let path = dir.join("ctl.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Connects (waiting for the CONNACK), then runs the event loop in a task that forwards
/// every packet.
async fn connect(
    client_id: &str,
    port: u16,
    files: (&Path, &Path, &Path),
) -> (AsyncClient, mpsc::UnboundedReceiver<Incoming>) {
    let tls = edge_it::client_config(files.0, files.1, files.2).unwrap();
    let (client, mut eventloop) = AsyncClient::new(mqtt_options(client_id, port, tls), 16);
    async fn connack(eventloop: &mut EventLoop) -> Result<(), rumqttc::ConnectionError> {
        loop {
            if let Event::Incoming(Incoming::ConnAck(_)) = eventloop.poll().await? {
                return Ok(());
            }
        }
    }
    match timeout(STEP, connack(&mut eventloop)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("{client_id}: connecting: {e}"),
        Err(_) => panic!("{client_id}: no CONNACK within {STEP:?}"),
    }
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(event) = eventloop.poll().await {
            if let Event::Incoming(packet) = event {
                if tx.send(packet).is_err() {
                    return;
                }
            }
        }
    });
    (client, rx)
}

/// The next packet `pick` accepts, skipping the others.
async fn next<T>(rx: &mut mpsc::UnboundedReceiver<Incoming>, what: &str, pick: impl Fn(&Incoming) -> Option<T>) -> T {
    let wait = async {
        while let Some(p) = rx.recv().await {
            if let Some(t) = pick(&p) {
                return t;
            }
        }
        panic!("connection closed while waiting for {what}");
    };
    timeout(STEP, wait).await.unwrap_or_else(|_| panic!("no {what} within {STEP:?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn issued_certificates_pass_check_config_and_carry_telemetry_through_the_shipped_acl() {
    let dir = tempfile::tempdir().unwrap();
    let f = make_fleet(dir.path());
    let server = CertFiles { cert: f.ca.join("broker.pem"), key: f.ca.join("broker.key") };
    let broker = Broker::start_with_certs(&f.ca.join("ca.pem"), &server).unwrap();

    // `edge-agent check-config`, as its binary runs it: v3, CN = device_id, not expired.
    let agent_toml = agent_config(dir.path(), &f, broker.port());
    edge_agent::cli::check_config::run(edge_agent::cli::check_config::Args { config: agent_toml.clone() })
        .unwrap_or_else(|e| panic!("check-config refused the issued certificate: {}", e.line()));

    // Both sides connect as their configurations say, with TLS built the agent's way.
    let agent = edge_agent::config::Config::load(&agent_toml).unwrap();
    let ctl =
        edgectl::config::CtlConfig::load(&ctl_config(dir.path(), &f, broker.port()), &Default::default()).unwrap();
    let m = &ctl.mqtt;
    let (operator, mut op_rx) =
        connect(&unique_client_id("operator"), broker.port(), (&m.ca_file, &m.cert_file, &m.key_file)).await;
    operator.subscribe("edge/+/telemetry", QoS::AtLeastOnce).await.unwrap();
    next(&mut op_rx, "SUBACK", |p| matches!(p, Incoming::SubAck(_)).then_some(())).await;
    let a = &agent.mqtt;
    let (device, mut dev_rx) = connect(&agent.device_id, broker.port(), (&a.ca_file, &a.cert_file, &a.key_file)).await;

    // The ACL is in force: dev-1 may not speak for dev-2 (Mosquitto acknowledges the
    // publish and drops it) ...
    device.publish("edge/dev-2/telemetry", QoS::AtLeastOnce, false, b"forged".to_vec()).await.unwrap();
    next(&mut dev_rx, "PUBACK", |p| matches!(p, Incoming::PubAck(_)).then_some(())).await;
    // ... but its own telemetry topic, the agent's, reaches the operator.
    let topic = edge_proto::topics::Topics::new(&a.topic_prefix, &agent.device_id).unwrap().telemetry();
    device.publish(topic.as_str(), QoS::AtLeastOnce, false, b"sample".to_vec()).await.unwrap();
    let got = next(&mut op_rx, "telemetry", |p| match p {
        Incoming::Publish(p) => Some((p.topic.clone(), p.payload.to_vec())),
        _ => None,
    })
    .await;
    assert_eq!(got, ("edge/dev-1/telemetry".to_string(), b"sample".to_vec()), "{}", broker.log());
    assert!(broker.log().contains("Denied PUBLISH from dev-1"), "{}", broker.log());
}

#[test]
fn issue_refuses_what_the_agent_or_the_acl_would_refuse_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let f = make_fleet(dir.path());
    let refused = |args: &[&str], says: &str| {
        let out = edgectl(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    };
    let ca = s(&f.ca);
    refused(&["issue", "--ca", ca, "--device", "dev/1", "--out", s(dir.path())], "A-Z a-z 0-9 - _ .");
    refused(&["issue", "--ca", ca, "--device", "operator", "--out", s(dir.path())], "use --operator");
    refused(&["issue", "--ca", ca, "--device", "dev-1", "--out", s(&f.devices)], "dev-1.pem exists");
    refused(&["init", "--out", ca], "ca.pem exists");
    refused(&["issue", "--ca", s(&f.devices), "--device", "dev-2", "--out", s(dir.path())], "ca.pem");
    // One of --device and --operator, not both (clap's usage error, exit 2 as well).
    refused(&["issue", "--ca", ca, "--device", "a", "--operator", "--out", s(dir.path())], "cannot be used with");
}
