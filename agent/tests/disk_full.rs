//! The agent on a full disk, end to end: its state directory on a small tmpfs filled to the
//! last byte, a real `edge-agent run` process, a real Mosquitto over mutual TLS, and
//! edgectl's library as the operator. Only the public operator path is used (MQTT
//! commands, the HTTP API), never the agent's internals.
//!
//! The tests mount a tmpfs (they run as root); where mounting is refused they print why and
//! pass without checking anything.

mod daemon;
mod operator;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use daemon::{setup, Agent, Setup};
use edge_proto::command::{AckState, Payload};
use edgectl::command::Event;
use edgectl::deploy::{deploy, DeployOutcome, DeployRequest};
use edgectl::link::Link;
use edgectl::track::Outcome;
use operator::{models_dir, operator_mqtt, ota_config, predict, request, signer, FULL, RECROP, SHORT};

fn state_dir(s: &Setup) -> PathBuf {
    s.dir.path().join("state-dev-1")
}

/// A config for `dev-1` that trusts the operator and serves `hand` (the hand-recrop model)
/// from outside the state directory.
fn config(s: &Setup) -> (PathBuf, String) {
    let model = models_dir().join(format!("{RECROP}.tflite"));
    ota_config(s, "dev-1", &[], "", &format!("[[models]]\nname = \"hand\"\npath = \"{}\"\n", model.display()))
}

/// Waits until the agent is ready (connected, configured models loaded), or panics with
/// its log.
async fn ready(agent: Agent) -> Agent {
    let end = Instant::now() + Duration::from_secs(30);
    while daemon::http_get(&agent.http, "/readyz").0 != 200 {
        if Instant::now() > end {
            panic!("agent not ready in 30 s; its log:\n{}", agent.stop());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    agent
}

async fn command(link: &mut Link, payload: Payload) -> edgectl::track::DeviceResult {
    let mut results = operator::command(link, operator::device("dev-1"), payload).await;
    assert_eq!(results.len(), 1, "{results:?}");
    results.remove(0)
}

async fn status(link: &mut Link) -> edge_proto::command::DeviceStatus {
    operator::status(link, "dev-1").await
}

fn request_for(name: &str, version: &str, prefix: &str) -> DeployRequest {
    request(operator::device("dev-1"), name, version, &format!("{prefix}.tflite"), None)
}

/// Deploys and waits; `on_progress` runs at the device's first progress ack (the transfer
/// has started: its staging file exists).
async fn deploy_with(link: &mut Link, req: &DeployRequest, mut on_progress: impl FnMut()) -> Outcome {
    let mut started = false;
    let out: DeployOutcome = deploy(link, &signer(), req, |e| {
        if let Event::Ack(c) = e {
            if matches!(c.state, AckState::Progress(_)) && !started {
                started = true;
                on_progress();
            }
        }
    })
    .await
    .expect("deploy sent");
    assert_eq!(out.results.len(), 1, "{out:?}");
    out.results[0].outcome.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_serves_and_answers_with_its_disk_full_to_the_last_byte() {
    // Exited at once with "telemetry.seq: No space left on device" before the reserve.
    let s = setup();
    let Some(fs) = edge_it::Tmpfs::mount_on(&state_dir(&s), 4 * 1024 * 1024) else { return };
    let (config, http) = config(&s);
    // The agent has run on this device before (that is when its reserve was made) ...
    ready(Agent::start(&config, &http)).await.stop();
    // ... then something else filled the disk.
    fs.fill("filler");
    assert_eq!(fs.free(), 0);

    let mut agent = ready(Agent::start(&config, &http)).await;
    assert_eq!(predict(&agent, "hand", RECROP), 200);
    let mut link = Link::connect(&operator_mqtt(&s)).await.unwrap();
    let st = status(&mut link).await;
    assert!(st.models.iter().any(|m| m.name == "hand"), "{st:?}");
    // Commands keep being recorded (the replay window) while the disk stays full.
    for _ in 0..3 {
        status(&mut link).await;
    }
    assert_eq!(predict(&agent, "hand", RECROP), 200);
    // The condition is where an operator's alerting looks.
    let end = std::time::Instant::now() + Duration::from_secs(30);
    while !agent.metrics().contains("edge_agent_disk_full 1") {
        assert!(std::time::Instant::now() < end, "/metrics never showed the full disk:\n{}", agent.metrics());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Erase (which frees space) works on a full disk, and the configured model serves on.
    let erased = command(&mut link, Payload::Erase).await;
    assert_eq!(erased.outcome, Outcome::Succeeded, "{erased:?}");
    assert_eq!(predict(&agent, "hand", RECROP), 200);
    assert!(matches!(agent.child.try_wait(), Ok(None)), "the agent exited");
    let log = agent.stop();
    assert!(log.contains("reserved for bookkeeping"), "the full disk is not logged:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_that_runs_out_of_space_fails_cleanly_and_succeeds_after_remove_model() {
    let s = setup();
    let Some(fs) = edge_it::Tmpfs::mount_on(&state_dir(&s), 4 * 1024 * 1024) else { return };
    let (config, http) = config(&s);
    let agent = ready(Agent::start(&config, &http)).await;
    let mut link = Link::connect(&operator_mqtt(&s)).await.unwrap();
    // An old model, to be removed later for room.
    let old = deploy_with(&mut link, &request_for("old", "1", FULL), || {}).await;
    assert_eq!(old, Outcome::Succeeded);

    // The transfer starts with room for it; then something else fills the disk.
    let out = deploy_with(&mut link, &request_for("face", "1", SHORT), || fs.fill("filler")).await;
    let Outcome::Failed(reason) = &out else { panic!("the deploy did not fail: {out:?}\n{}", agent.stop()) };
    assert!(reason.contains("not enough disk") && reason.contains("remove-model"), "{reason}");
    // Nothing changed for what serves.
    assert_eq!(predict(&agent, "hand", RECROP), 200);
    assert_eq!(predict(&agent, "old", FULL), 200);
    let st = status(&mut link).await;
    assert!(!st.models.iter().any(|m| m.name == "face" && m.active_version.is_some()), "{st:?}");

    // Removing a model on the full disk works, and frees room for the same deploy.
    let removed = command(&mut link, Payload::RemoveModel { name: "old".into() }).await;
    assert_eq!(removed.outcome, Outcome::Succeeded, "{removed:?}");
    assert!(!status(&mut link).await.models.iter().any(|m| m.name == "old"));
    let again = deploy_with(&mut link, &request_for("face", "2", SHORT), || {}).await;
    assert_eq!(again, Outcome::Succeeded, "{}", agent.stop());
    assert_eq!(predict(&agent, "face", SHORT), 200);
    assert_eq!(predict(&agent, "hand", RECROP), 200);
    drop(agent);
}
