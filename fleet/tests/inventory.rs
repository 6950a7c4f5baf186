//! The inventory end to end, with real parts: a real Mosquitto (the fleet's configuration
//! and ACL, mutual TLS), `edge-fleet` as a real process on SQLite and on a real PostgreSQL
//! started by the harness, the real `edgectl` binary reading it, and scripted devices that
//! publish what the agent publishes (Status v2 with groups and model versions, retained,
//! with the offline last will; Telemetry v2 with the certificate expiry).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use edge_it::Postgres;
use edge_proto::codec::Versioned;
use edge_proto::command::ModelStatus;
use edge_proto::inventory::Device;
use edge_proto::status::{State, Status};
use edge_proto::telemetry::{Encoding, Telemetry};
use edge_proto::topics::Topics;
use rumqttc::{AsyncClient, Event, LastWill, Packet, QoS};

/// `edgectl --config ctl.toml devices ARGS --json`, parsed.
fn edgectl_devices(ctl_toml: &Path, args: &[&str]) -> Vec<Device> {
    let out = Command::new(edgectl_exe())
        .arg("--config")
        .arg(ctl_toml)
        .arg("--json")
        .arg("devices")
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "edgectl devices {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("edgectl devices --json printed no device array ({e}): {}", String::from_utf8_lossy(&out.stdout))
    })
}

fn model(name: &str, active: &str) -> ModelStatus {
    ModelStatus {
        name: name.into(),
        active_version: Some(active.into()),
        installed_versions: vec![active.into()],
        health: "ok".into(),
    }
}

fn status(id: &str, state: State, groups: &[&str], models: &[ModelStatus]) -> Vec<u8> {
    edge_proto::encode(&Status {
        version: Status::VERSION,
        device: id.into(),
        state,
        agent_version: "0.1.0".into(),
        models: models.iter().map(|m| m.name.clone()).collect(),
        uptime_secs: 1,
        ts: now_ms(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        model_states: models.to_vec(),
    })
}

fn telemetry(id: &str, cert_not_after: i64) -> Vec<u8> {
    Telemetry {
        version: Telemetry::VERSION,
        device: id.into(),
        seq: 1,
        ts: now_ms(),
        uptime_secs: 1,
        cpu: Default::default(),
        load: [0.0; 3],
        mem: Default::default(),
        agent: edge_proto::telemetry::Agent { version: "0.1.0".into(), ..Default::default() },
        disk: Default::default(),
        temps: vec![],
        net: Default::default(),
        models: vec![],
        link: Default::default(),
        disk_full: false,
        cert_not_after: Some(cert_not_after),
        latency: vec![],
        versions: vec![],
        tensors: vec![],
    }
    .encode(Encoding::Postcard)
}

/// A scripted device: connected with its own certificate, the offline status as its last
/// will (as the agent sets it), the online status retained.
struct Sim {
    id: String,
    topics: Topics,
    client: AsyncClient,
    poller: tokio::task::JoinHandle<()>,
}

impl Sim {
    async fn connect(s: &Setup, id: &str, groups: &[&str], models: &[ModelStatus]) -> Sim {
        let topics = Topics::new("edge", id).unwrap();
        let tls = s.pki.client_config(id).unwrap();
        let mut opts = edge_it::mqtt_options(&edge_it::unique_client_id(id), s.broker.port(), tls);
        opts.set_last_will(LastWill::new(
            topics.status(),
            status(id, State::Offline, groups, models),
            QoS::AtLeastOnce,
            true,
        ));
        let (client, mut eventloop) = AsyncClient::new(opts, 16);
        loop {
            if let Event::Incoming(Packet::ConnAck(_)) = eventloop.poll().await.unwrap() {
                break;
            }
        }
        let poller = tokio::spawn(async move {
            loop {
                if eventloop.poll().await.is_err() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        });
        let sim = Sim { id: id.into(), topics, client, poller };
        sim.publish(&sim.topics.status(), true, status(id, State::Online, groups, models)).await;
        sim
    }

    async fn publish(&self, topic: &str, retain: bool, payload: Vec<u8>) {
        self.client.publish(topic, QoS::AtLeastOnce, retain, payload).await.unwrap();
    }

    async fn telemetry(&self, cert_not_after: i64) {
        self.publish(&self.topics.telemetry(), false, telemetry(&self.id, cert_not_after)).await;
    }

    /// Drops the connection without a DISCONNECT, as a SIGKILLed agent or a pulled plug
    /// does: the broker publishes the last will.
    fn vanish(self) {
        self.poller.abort();
    }
}

fn find<'a>(devices: &'a [Device], id: &str) -> Option<&'a Device> {
    devices.iter().find(|d| d.device == id)
}

/// Polls `edgectl devices --json` until `done` holds of the list.
fn until_devices(fleet: &Fleet, ctl: &Path, what: &str, done: impl Fn(&[Device]) -> bool) -> Vec<Device> {
    let end = Instant::now() + PATIENCE;
    loop {
        let devices = edgectl_devices(ctl, &[]);
        if done(&devices) {
            return devices;
        }
        assert!(Instant::now() < end, "timed out waiting until {what}: {devices:#?}\nedge-fleet log:\n{}", fleet.log());
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))?.rsplit(' ').next()?.parse().ok()
}

/// The whole inventory story on one database.
async fn inventory_story(s: &Setup, database: &str) {
    let listen = free_addr();
    let config = fleet_toml(s, database, &listen);
    let ctl = ctl_toml(s, Some(&format!("http://{listen}")));
    let fleet = Fleet::start(&config, &listen);
    let expiry = 1_900_000_000;

    let dev1 = Sim::connect(s, "dev-1", &["cams"], &[model("wake", "3")]).await;
    let dev2 = Sim::connect(s, "dev-2", &["lab"], &[model("wake", "5"), model("asr", "1")]).await;
    dev1.telemetry(expiry).await;
    let devices = until_devices(&fleet, &ctl, "both devices are online with dev-1's certificate expiry", |d| {
        find(d, "dev-1").is_some_and(|x| x.online && x.cert_not_after == Some(expiry))
            && find(d, "dev-2").is_some_and(|x| x.online)
    });
    let (one, two) = (find(&devices, "dev-1").unwrap(), find(&devices, "dev-2").unwrap());
    assert_eq!((one.groups.as_slice(), two.groups.as_slice()), (&["cams".to_string()][..], &["lab".to_string()][..]));
    assert_eq!(one.models, [model("wake", "3")]);
    assert_eq!(two.models, [model("asr", "1"), model("wake", "5")]);
    assert_eq!(one.agent_version.as_deref(), Some("0.1.0"));
    assert!(one.last_seen.is_some_and(|t| t > 1_600_000_000_000), "{one:?}");

    // --group filters.
    let cams = edgectl_devices(&ctl, &["--group", "cams"]);
    assert_eq!(cams.iter().map(|d| d.device.as_str()).collect::<Vec<_>>(), ["dev-1"]);
    assert!(edgectl_devices(&ctl, &["--group", "nobody"]).is_empty());

    // A device that vanishes is offline once the broker publishes its will.
    dev2.vanish();
    until_devices(&fleet, &ctl, "dev-2 is offline", |d| find(d, "dev-2").is_some_and(|x| !x.online));

    // The service is killed; meanwhile dev-1 reports a renewed certificate (telemetry: not
    // retained, so only the persistent session can deliver it) and a new device arrives.
    let log = fleet.kill();
    assert!(log.contains("session_present=false"), "first start makes the session: {log}");
    let renewed = expiry + 86_400 * 90;
    dev1.telemetry(renewed).await;
    let dev3 = Sim::connect(s, "dev-3", &["cams"], &[model("wake", "4")]).await;
    // Both publishes are acknowledged by the broker (QoS 1) before the service restarts.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let fleet = Fleet::start(&config, &listen);
    let devices = until_devices(&fleet, &ctl, "the renewed expiry and dev-3 arrive after the restart", |d| {
        find(d, "dev-1").is_some_and(|x| x.cert_not_after == Some(renewed)) && find(d, "dev-3").is_some()
    });
    assert!(fleet.log().contains("session_present=true"), "{}", fleet.log());
    // What was stored before the restart is still there.
    assert!(find(&devices, "dev-2").is_some_and(|x| !x.online && x.models.len() == 2), "{devices:#?}");
    let cams = edgectl_devices(&ctl, &["--group", "cams"]);
    assert_eq!(cams.iter().map(|d| d.device.as_str()).collect::<Vec<_>>(), ["dev-1", "dev-3"]);

    // Garbage is counted and skipped, never fatal.
    dev1.publish(&dev1.topics.telemetry(), false, b"\x02not postcard".to_vec()).await;
    dev1.telemetry(renewed + 1).await;
    until_devices(&fleet, &ctl, "the sample after the garbage is stored", |d| {
        find(d, "dev-1").is_some_and(|x| x.cert_not_after == Some(renewed + 1))
    });
    let (code, metrics) = http_get(&fleet.listen, "/metrics").unwrap();
    assert_eq!(code, 200);
    assert_eq!(metric(&metrics, "edge_fleet_messages_undecodable_total{kind=\"telemetry\"}"), Some(1.0), "{metrics}");
    assert_eq!(metric(&metrics, "edge_fleet_devices_known"), Some(3.0), "{metrics}");
    assert_eq!(metric(&metrics, "edge_fleet_devices_online"), Some(2.0), "{metrics}");
    assert!(metric(&metrics, "edge_fleet_messages_ingested_total{kind=\"status\"}").is_some_and(|n| n >= 1.0));
    assert!(fleet.log().contains("edge/dev-1/telemetry"), "the skipped message's topic is logged");

    // The API answers the same array edgectl printed.
    let (code, body) = http_get(&fleet.listen, "/v1/devices?group=cams").unwrap();
    assert_eq!(code, 200);
    let api: Vec<Device> = serde_json::from_str(&body).unwrap();
    assert_eq!(api.len(), 2);
    drop(fleet);
    dev1.vanish();
    dev3.vanish();

    // Migrations run again are a no-op (the service already ran them at both starts).
    let db = edge_fleet::db::Db::open(database).await.unwrap();
    assert_eq!(db.migrate().await.unwrap(), 0);
    assert_eq!(db.applied_migrations().await.unwrap(), edge_fleet::db::migration_versions());
    assert_eq!(db.devices(None).await.unwrap().len(), 3);
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inventory_on_sqlite() {
    let s = setup();
    let url = format!("sqlite://{}", s.dir.path().join("db").join("fleet.db").display());
    inventory_story(&s, &url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inventory_on_postgres() {
    let s = setup();
    let pg = Postgres::start().unwrap();
    inventory_story(&s, &pg.url()).await;
}

/// Without `[fleet] url`, `edgectl devices` says how to configure it and exits 2.
#[test]
fn edgectl_devices_without_a_fleet_url_says_how_to_add_one() {
    let s = setup();
    let ctl = ctl_toml(&s, None);
    let out = Command::new(edgectl_exe()).arg("--config").arg(&ctl).arg("devices").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("[fleet]") && err.contains("url = "), "{err}");
}

/// An unreachable fleet service is exit status 3, like an unreachable broker.
#[test]
fn edgectl_devices_with_the_fleet_service_down_exits_3() {
    let s = setup();
    let ctl = ctl_toml(&s, Some(&format!("http://{}", free_addr())));
    let out = Command::new(edgectl_exe()).arg("--config").arg(&ctl).arg("devices").output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
}

/// With `[http] token_file`, the API answers `/v1/` only with the token: edgectl without it
/// is told what to set (exit 2); with it, it works. `/healthz` and `/metrics` stay open.
#[test]
fn a_token_protected_api_refuses_requests_without_its_token() {
    let s = setup();
    let listen = free_addr();
    let db = format!("sqlite://{}", s.dir.path().join("fleet.db").display());
    let config = fleet_toml(&s, &db, &listen);
    let token = "7f3c9a1b5d2e8f4061a7c3e9b2d5f8a1";
    std::fs::write(s.dir.path().join("api-token"), format!("{token}\n")).unwrap();
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("[http]\n", "[http]\ntoken_file = \"api-token\"\n")).unwrap();
    let fleet = Fleet::start(&config, &listen);
    assert_eq!(http_get(&listen, "/v1/devices").unwrap().0, 401);
    assert_eq!(http_get(&listen, "/v1/deployments").unwrap().0, 401);
    assert_eq!(http_get(&listen, "/metrics").unwrap().0, 200);

    let ctl = ctl_toml(&s, Some(&format!("http://{listen}")));
    let out = Command::new(edgectl_exe()).arg("--config").arg(&ctl).args(["--json", "devices"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("401") && err.contains("token_file"), "{err}");

    // A wrong token is refused as no token is.
    std::fs::write(s.dir.path().join("ctl-token"), "7f3c9a1b5d2e8f4061a7c3e9b2d5f8a2\n").unwrap();
    let text = std::fs::read_to_string(&ctl).unwrap();
    std::fs::write(&ctl, format!("{text}token_file = \"ctl-token\"\n")).unwrap();
    let out = Command::new(edgectl_exe()).arg("--config").arg(&ctl).args(["--json", "devices"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));

    std::fs::write(s.dir.path().join("ctl-token"), format!("{token}\n")).unwrap();
    let out = Command::new(edgectl_exe()).arg("--config").arg(&ctl).args(["--json", "devices"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");
    drop(fleet);

    // A token file that cannot be used is a configuration error: exit 2, saying how to make one.
    std::fs::write(s.dir.path().join("api-token"), "short\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_edge-fleet")).args(["run", "--config"]).arg(&config).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("[http] token_file") && err.contains("openssl rand -hex 32"), "{err}");
}
