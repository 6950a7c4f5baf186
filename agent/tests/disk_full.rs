//! The agent on a full disk, end to end: its state directory on a small tmpfs filled to the
//! last byte, a real `edge-agent run` process, a real Mosquitto over mutual TLS, and
//! edgectl's library as the operator. Only the public operator path is used (MQTT
//! commands, the HTTP API), never the agent's internals.
//!
//! The tests mount a tmpfs (they run as root); where mounting is refused they print why and
//! pass without checking anything.

mod daemon;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use daemon::{free_addr, http_get, http_post, setup, Agent, Setup};
use edge_agent::config::MqttConfig;
use edge_proto::command::{hex, AckState, DeviceStatus, Payload, Reply, SigningKey, Target};
use edge_proto::ota::ModelFormat;
use edgectl::command::{send_command, CommandRequest, Event};
use edgectl::deploy::{deploy, DeployOutcome, DeployRequest};
use edgectl::link::Link;
use edgectl::track::Outcome;

const RECROP: &str = "mediapipe__hand_recrop";
const SHORT: &str = "mediapipe__face_detection_short_range";
const FULL: &str = "mediapipe__face_detection_full_range_sparse";

fn operator_key() -> SigningKey {
    SigningKey::from_bytes(&[42; 32])
}

fn models_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models")
}

/// A tmpfs of `bytes` mounted on `dir` (created), unmounted on drop.
struct SmallFs(PathBuf);

impl SmallFs {
    fn mount(dir: &Path, bytes: u64) -> Option<SmallFs> {
        std::fs::create_dir_all(dir).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(SmallFs(dir.to_path_buf())),
            Ok(o) => {
                eprintln!("skipped: cannot mount a tmpfs: {}", String::from_utf8_lossy(&o.stderr).trim());
                None
            }
            Err(e) => {
                eprintln!("skipped: cannot run mount: {e}");
                None
            }
        }
    }

    /// Fills the file system to the last byte with the file `name`.
    fn fill(&self, name: &str) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.0.join(name)).unwrap();
        let block = vec![0xa5u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        while f.write_all(&[0]).is_ok() {}
        let err = f.write_all(&[0]).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    }

    fn free(&self) -> u64 {
        let out = std::process::Command::new("df").args(["-B1", "--output=avail"]).arg(&self.0).output().unwrap();
        String::from_utf8_lossy(&out.stdout).lines().nth(1).unwrap().trim().parse().unwrap()
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

fn state_dir(s: &Setup) -> PathBuf {
    s.dir.path().join("state-dev-1")
}

/// A config for `dev-1` that trusts the operator and serves `hand` (the hand-recrop model)
/// from outside the state directory.
fn config(s: &Setup) -> (PathBuf, String) {
    let files = s.pki.client("dev-1").unwrap();
    let http = free_addr();
    let text = format!(
        "device_id = \"dev-1\"\nstate_dir = \"{state}\"\n\
         [mqtt]\nurl = \"{url}\"\nca_file = \"{ca}\"\ncert_file = \"{cert}\"\nkey_file = \"{key}\"\n\
         keep_alive_secs = 5\nnetwork_timeout_secs = 5\nreconnect_max_secs = 1\nmax_packet_bytes = 1048576\n\
         [telemetry]\ninterval_secs = 1\n\
         [http]\nlisten = \"{http}\"\n\
         [ota]\ntrusted_keys = [\"{pubkey}\"]\nhealth_window_secs = 2\nhealth_min_requests = 10\nstall_secs = 1\n\
         [[models]]\nname = \"hand\"\npath = \"{model}\"\n",
        state = state_dir(s).display(),
        url = s.broker.url(),
        ca = s.pki.ca_pem().display(),
        cert = files.cert.display(),
        key = files.key.display(),
        pubkey = hex(operator_key().verifying_key().as_bytes()),
        model = models_dir().join(format!("{RECROP}.tflite")).display(),
    );
    let path = s.dir.path().join("dev-1.toml");
    std::fs::write(&path, text).unwrap();
    (path, http)
}

fn operator_mqtt(s: &Setup) -> MqttConfig {
    let files = s.pki.client("operator").unwrap();
    MqttConfig {
        url: s.broker.url(),
        ca_file: s.pki.ca_pem().to_path_buf(),
        cert_file: files.cert,
        key_file: files.key,
        topic_prefix: "edge".into(),
        allow_insecure: false,
        max_packet_bytes: 1 << 20,
        network_timeout_secs: 5,
        keep_alive_secs: 5,
        reconnect_max_secs: 1,
    }
}

/// Waits until the agent is ready (connected, configured models loaded), or panics with
/// its log.
async fn ready(agent: Agent) -> Agent {
    let end = Instant::now() + Duration::from_secs(30);
    while http_get(&agent.http, "/readyz").0 != 200 {
        if Instant::now() > end {
            panic!("agent not ready in 30 s; its log:\n{}", agent.stop());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    agent
}

/// POSTs the model's reference input over the local API; the status code.
fn predict(agent: &Agent, name: &str, prefix: &str) -> u16 {
    let input = std::fs::read(models_dir().join(format!("{prefix}.input.npy"))).unwrap();
    http_post(&agent.http, &format!("/v1/models/{name}:predict"), "application/x-npy", &input).0
}

async fn command(link: &mut Link, payload: Payload) -> edgectl::track::DeviceResult {
    let mut req = CommandRequest::new(Target::Device("dev-1".into()), payload);
    req.timeout = Duration::from_secs(30);
    let mut results = send_command(link, &operator_key(), &req, |_| {}).await.expect("command sent").results;
    assert_eq!(results.len(), 1, "{results:?}");
    results.remove(0)
}

async fn status(link: &mut Link) -> DeviceStatus {
    let result = command(link, Payload::GetStatus).await;
    match result.reply {
        Some(Reply::Status(s)) => s,
        other => panic!("get-status answered {:?} with {other:?}", result.outcome),
    }
}

fn request(name: &str, version: &str, prefix: &str) -> DeployRequest {
    let file = format!("{prefix}.tflite");
    let model = std::fs::read(models_dir().join(&file)).unwrap();
    let format = ModelFormat::from_file_name(&file).unwrap();
    let mut req = DeployRequest::new(Target::Device("dev-1".into()), name, version, format, model);
    req.wait = true;
    req.timeout = Duration::from_secs(90);
    req
}

/// Deploys and waits; `on_progress` runs at the device's first progress ack (the transfer
/// has started: its staging file exists).
async fn deploy_with(link: &mut Link, req: &DeployRequest, mut on_progress: impl FnMut()) -> Outcome {
    let mut started = false;
    let out: DeployOutcome = deploy(link, &operator_key(), req, |e| {
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
    let Some(fs) = SmallFs::mount(&state_dir(&s), 4 * 1024 * 1024) else { return };
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
    let Some(fs) = SmallFs::mount(&state_dir(&s), 4 * 1024 * 1024) else { return };
    let (config, http) = config(&s);
    let agent = ready(Agent::start(&config, &http)).await;
    let mut link = Link::connect(&operator_mqtt(&s)).await.unwrap();
    // An old model, to be removed later for room.
    let old = deploy_with(&mut link, &request("old", "1", FULL), || {}).await;
    assert_eq!(old, Outcome::Succeeded);

    // The transfer starts with room for it; then something else fills the disk.
    let out = deploy_with(&mut link, &request("face", "1", SHORT), || fs.fill("filler")).await;
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
    let again = deploy_with(&mut link, &request("face", "2", SHORT), || {}).await;
    assert_eq!(again, Outcome::Succeeded, "{}", agent.stop());
    assert_eq!(predict(&agent, "face", SHORT), 200);
    assert_eq!(predict(&agent, "hand", RECROP), 200);
    drop(agent);
}
