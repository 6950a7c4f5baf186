//! Desired-state deployments end to end, with real parts: a real Mosquitto (the shipped
//! configuration and ACL, mutual TLS), `edge-fleet` as a real process on SQLite and on a
//! real PostgreSQL, the real `edgectl` binary handing signed deployments over, and real
//! `edge-agent` processes receiving, validating and installing a real model.

mod common;

use std::time::Duration;

use common::*;
use edge_it::Postgres;
use edge_proto::deployments::Deployment;

/// A model from `models/`: small enough to move in a few chunks.
const MODEL: &str = "mediapipe__hand_recrop.tflite";
/// A larger one (250 kB), for a transfer that takes a while under a rate cap.
const LARGE_MODEL: &str = "mediapipe__selfie_segmentation.tflite";

/// The story: a group deploy while one member has never connected; edgectl exits;
/// the member starts later and reaches the desired version with no edgectl running.
fn late_member_story(s: &Setup, database: &str) {
    let listen = free_addr();
    let fleet = Fleet::start(&fleet_toml(s, database, &listen), &listen);
    let ctl = ctl_toml(s, Some(&format!("http://{listen}")));
    let early = Agent::start(s, "cam-1", &["cams"], "");
    until_online(&fleet, &ctl, "cam-1");

    let model = model_path(MODEL);
    let d = deploy(&ctl, &["--group", "cams", "--model", model.to_str().unwrap(), "--name", "hand", "--version", "2"]);
    assert_eq!((d.model.as_str(), d.version.as_str(), d.state.as_str()), ("hand", "2", "active"));
    assert!(
        d.expires_at - d.created_at > 24 * 3600 * 1000,
        "a deployment through the service lives for days by default: {d:?}"
    );
    until_state(&fleet, Some(&early), &d.id, "cam-1", "succeeded");

    // edgectl has exited; a member that never connected before comes up.
    let late = Agent::start(s, "cam-2", &["cams"], "");
    let done = until_state(&fleet, Some(&late), &d.id, "cam-2", "succeeded");
    assert_eq!(done.counts.get("succeeded"), Some(&2), "{done:#?}");
    fleet.until("both members report hand 2 active", || {
        let all = devices(&ctl);
        active_version(&all, "cam-1", "hand").as_deref() == Some("2")
            && active_version(&all, "cam-2", "hand").as_deref() == Some("2")
    });

    // Re-attachable from anywhere: watch ends at once with every device done, and exits 0.
    let out = edgectl(&ctl, &["deployments", "watch", &d.id]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("cam-2") && text.contains("2 succeeded"), "{text}");
    let out = edgectl(&ctl, &["--json", "deployments"]);
    let all: Vec<Deployment> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(all.iter().any(|x| x.id == d.id && x.counts.get("succeeded") == Some(&2)), "{all:#?}");
    drop((early, late));
}

#[test]
fn a_member_that_connects_after_edgectl_left_gets_the_group_deployment_on_sqlite() {
    let s = setup();
    let db = format!("sqlite://{}", s.dir.path().join("fleet.db").display());
    late_member_story(&s, &db);
}

#[test]
fn a_member_that_connects_after_edgectl_left_gets_the_group_deployment_on_postgres() {
    let s = setup();
    let pg = Postgres::start().unwrap();
    late_member_story(&s, &pg.url());
}

#[test]
fn an_offline_device_gets_only_the_newest_deployment_and_a_cancelled_one_never_arrives() {
    let s = setup();
    let listen = free_addr();
    let db = format!("sqlite://{}", s.dir.path().join("fleet.db").display());
    let fleet = Fleet::start(&fleet_toml(&s, &db, &listen), &listen);
    let ctl = ctl_toml(&s, Some(&format!("http://{listen}")));
    let model = model_path(MODEL);
    let m = model.to_str().unwrap();

    // Two deployments of one model to a device that is not there: the second supersedes.
    let v1 = deploy(&ctl, &["--device", "gw-1", "--model", m, "--name", "hand", "--version", "1"]);
    assert_eq!(state_of(&v1, "gw-1").as_deref(), Some("pending"), "{v1:#?}");
    let v2 = deploy(&ctl, &["--device", "gw-1", "--model", m, "--name", "hand", "--version", "2"]);
    let old = deployment(&fleet, &v1.id);
    assert_eq!((old.state.as_str(), old.superseded_by.as_deref()), ("superseded", Some(v2.id.as_str())));
    assert_eq!(state_of(&old, "gw-1").as_deref(), Some("superseded"));

    // A group deployment cancelled before its member connects.
    let other = deploy(&ctl, &["--group", "lab", "--model", m, "--name", "palm", "--version", "9"]);
    let out = edgectl(&ctl, &["--json", "deployments", "cancel", &other.id]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cancelled: Deployment = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(cancelled.state, "cancelled");
    let again = edgectl(&ctl, &["deployments", "cancel", &other.id]);
    assert_eq!(again.status.code(), Some(2), "cancelling twice is refused");
    assert!(String::from_utf8_lossy(&again.stderr).contains("not active"));

    let agent = Agent::start(&s, "gw-1", &["lab"], "");
    let done = until_state(&fleet, Some(&agent), &v2.id, "gw-1", "succeeded");
    assert_eq!(done.state, "completed", "a device deployment completes with its device");
    let all = devices(&ctl);
    let gw = all.iter().find(|d| d.device == "gw-1").unwrap();
    let hand = gw.models.iter().find(|m| m.name == "hand").unwrap();
    assert_eq!(hand.installed_versions, ["2"], "version 1 was never sent: {gw:?}");
    // Two ticks after the device is online the cancelled deployment has still not come.
    std::thread::sleep(2 * edge_fleet::deployments::TICK);
    let all = devices(&ctl);
    assert!(active_version(&all, "gw-1", "palm").is_none(), "{all:#?}");
    assert!(deployment(&fleet, &other.id).devices.is_empty());
}

#[test]
fn a_deployment_survives_the_service_killed_mid_transfer() {
    let s = setup();
    let listen = free_addr();
    let db = format!("sqlite://{}", s.dir.path().join("fleet.db").display());
    let config = fleet_toml(&s, &db, &listen);
    // The service publishes at most 40 kB/s: the 250 kB model in 16 kB chunks takes about
    // 6 s, so that it is killed with chunks still unsent (the broker would otherwise hold
    // them all for the device).
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("[deployments]\nmax_bytes_per_sec = 40000\n");
    std::fs::write(&config, text).unwrap();
    let fleet = Fleet::start(&config, &listen);
    let ctl = ctl_toml(&s, Some(&format!("http://{listen}")));
    let agent = Agent::start(&s, "edge-9", &["yard"], "");
    until_online(&fleet, &ctl, "edge-9");
    let model = model_path(LARGE_MODEL);
    let args = ["--group", "yard", "--model", model.to_str().unwrap(), "--name", "seg", "--version", "6"];
    let d = deploy(&ctl, &[&args[..], &["--chunk-size", "16384"]].concat());
    until_state(&fleet, Some(&agent), &d.id, "edge-9", "transferring");
    std::thread::sleep(Duration::from_secs(1));
    let log = fleet.kill();
    assert!(log.contains("deployment step"), "{log}");
    // Down for a while: the device stalls and asks for the rest into the void.
    std::thread::sleep(Duration::from_secs(3));
    let before = deployment_rows_of(&db, &d.id);
    assert!(before.contains("Transferring("), "killed mid-transfer: {before}");
    let fleet = Fleet::start(&config, &listen);
    let done = until_state(&fleet, Some(&agent), &d.id, "edge-9", "succeeded");
    assert_eq!(done.counts.get("succeeded"), Some(&1));
    let metrics = http_get(&fleet.listen, "/metrics").unwrap().1;
    assert!(
        metrics.lines().any(|l| l.starts_with("edge_fleet_deployment_chunks_sent_total ") && !l.ends_with(" 0")),
        "the restarted service served the rest of the chunks:\n{metrics}"
    );
}

/// The device rows of a deployment as the database holds them (read with the service's
/// query layer while no service runs).
fn deployment_rows_of(db: &str, id: &str) -> String {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let db = edge_fleet::db::Db::open(db).await.unwrap();
        let rows = db.deployment_devices(id).await.unwrap();
        db.close().await;
        format!("{rows:?}")
    })
}

#[test]
fn two_replicas_share_the_work_and_a_deployment_survives_the_one_driving_it_killed() {
    let s = setup();
    let pg = Postgres::start().unwrap();
    let base = fleet_toml(&s, &pg.url(), &free_addr());
    // A cap, so that the transfer is still going when its replica is killed (as in
    // a_deployment_survives_the_service_killed_mid_transfer).
    let mut text = std::fs::read_to_string(&base).unwrap();
    text.push_str("[deployments]\nmax_bytes_per_sec = 40000\n");
    std::fs::write(&base, text).unwrap();
    let (la, lb) = (free_addr(), free_addr());
    let a = Fleet::start(&replica_toml(&base, "a", &la), &la);
    let b = Fleet::start(&replica_toml(&base, "b", &lb), &lb);
    // The artifact is uploaded to replica a.
    let ctl = ctl_toml(&s, Some(&format!("http://{la}")));
    let agents: Vec<Agent> = ["edge-1", "edge-2"].iter().map(|d| Agent::start(&s, d, &["yard"], "")).collect();
    for d in ["edge-1", "edge-2"] {
        until_online(&a, &ctl, d);
        // Both replicas read every status: each has the whole inventory.
        b.knows(d);
    }

    let model = model_path(LARGE_MODEL);
    let args = ["--group", "yard", "--model", model.to_str().unwrap(), "--name", "seg", "--version", "6"];
    let d = deploy(&ctl, &[&args[..], &["--chunk-size", "16384"]].concat());
    for device in ["edge-1", "edge-2"] {
        until_state(&a, None, &d.id, device, "transferring");
    }
    // The acks went to one replica or the other (shared subscriptions); kill one that is
    // publishing chunks.
    let sent = "edge_fleet_deployment_chunks_sent_total";
    a.until("a replica publishes chunks", || a.metric(sent) + b.metric(sent) > 0.0);
    let a_drives = a.metric(sent) > 0.0;
    let (driver, survivor) = if a_drives { (a, b) } else { (b, a) };
    let before = survivor.metric(sent);
    let driver_log = driver.kill();
    assert!(driver_log.contains("deployment step"), "{driver_log}");

    for (device, agent) in ["edge-1", "edge-2"].iter().zip(&agents) {
        until_state(&survivor, Some(agent), &d.id, device, "succeeded");
    }
    assert!(survivor.metric(sent) > before, "the survivor served the chunks the killed one had not sent");
    // Replica b published chunks of an artifact uploaded to a, from its own directory: it
    // fetched the database's copy.
    let b_log = if a_drives { survivor.log() } else { driver_log };
    assert!(b_log.contains("artifact fetched from the database's copy"), "{b_log}");
    let ctl = ctl_toml(&s, Some(&format!("http://{}", survivor.listen)));
    let all = devices(&ctl);
    for device in ["edge-1", "edge-2"] {
        assert_eq!(active_version(&all, device, "seg").as_deref(), Some("6"), "{all:#?}");
    }
}
