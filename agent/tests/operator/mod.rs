//! The operator side of the OTA tests: an agent configured for over-the-air updates, a
//! connected edgectl link, deploys and commands through edgectl's library.

#![allow(dead_code)]

use super::daemon::{free_addr, http_get, http_post, Agent, Setup};

use std::path::PathBuf;
use std::time::{Duration, Instant};

use edge_agent::config::MqttConfig;
use edge_proto::command::{hex, DeviceStatus, NpyBytes, Payload, Reply, SigningKey, Target};
use edge_proto::ota::{ModelFormat, Validation};
use edgectl::command::{send_command, CommandRequest};
use edgectl::deploy::{deploy, DeployOutcome, DeployRequest};
use edgectl::link::Link;
use edgectl::track::Outcome;

pub fn operator_key() -> SigningKey {
    SigningKey::from_bytes(&[42; 32])
}

/// The operator key as edgectl signs with it (the unnamed fleet).
pub fn signer() -> edgectl::keys::Signer {
    edgectl::keys::Signer::new(operator_key())
}

pub fn models_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models")
}

pub fn model(file: &str) -> Vec<u8> {
    std::fs::read(models_dir().join(file)).unwrap()
}

/// The reference input and output of a shipped model as a validation vector, with a
/// tolerance of 1e-3 of the output's largest magnitude.
pub fn validation(prefix: &str, output: &str) -> Validation {
    let input = std::fs::read(models_dir().join(format!("{prefix}.input.npy"))).unwrap();
    let expected_path = models_dir().join(format!("{prefix}.{output}.npy"));
    let expected = std::fs::read(&expected_path).unwrap();
    let t = edge_agent::npy::read(&expected_path).unwrap();
    let t = t.cast_to::<f32>().unwrap().into_owned();
    let scale = t.try_as_plain_ram().unwrap().as_slice::<f32>().unwrap().iter().fold(0f32, |m, x| m.max(x.abs()));
    Validation {
        version: 1,
        inputs: vec![NpyBytes(input)],
        expected: vec![NpyBytes(expected)],
        tolerance: 1e-3 * scale.max(1.0),
    }
}

pub const RECROP: &str = "mediapipe__hand_recrop";
pub const SHORT: &str = "mediapipe__face_detection_short_range";
pub const FULL: &str = "mediapipe__face_detection_full_range_sparse";
pub const WAKE: &str = "pymicro-wakeword__okay_nabu";

/// Writes a config for `device` that trusts the operator key; `ota` is appended to `[ota]`,
/// `tail` after everything (e.g. `[[models]]`).
pub fn ota_config(s: &Setup, device: &str, groups: &[&str], ota: &str, tail: &str) -> (PathBuf, String) {
    let files = s.pki.client(device).unwrap();
    let http = free_addr();
    let groups: Vec<String> = groups.iter().map(|g| format!("\"{g}\"")).collect();
    let text = format!(
        "device_id = \"{device}\"\nstate_dir = \"{state}\"\ngroups = [{groups}]\n\
         [mqtt]\nurl = \"{url}\"\nca_file = \"{ca}\"\ncert_file = \"{cert}\"\nkey_file = \"{key}\"\n\
         keep_alive_secs = 5\nnetwork_timeout_secs = 5\nreconnect_max_secs = 1\nmax_packet_bytes = 1048576\n\
         [telemetry]\ninterval_secs = 5\n\
         [http]\nlisten = \"{http}\"\n\
         [ota]\ntrusted_keys = [\"{pubkey}\"]\n{ota_keys}\
         {tail}\n",
        state = s.dir.path().join(format!("state-{device}")).display(),
        groups = groups.join(", "),
        url = s.broker.url(),
        ca = s.pki.ca_pem().display(),
        cert = files.cert.display(),
        key = files.key.display(),
        pubkey = hex(operator_key().verifying_key().as_bytes()),
        ota_keys = ota_keys(ota),
    );
    let path = s.dir.path().join(format!("{device}.toml"));
    std::fs::write(&path, text).unwrap();
    (path, http)
}

/// `[ota]` settings for tests: short windows, with `ota`'s lines taking precedence.
pub fn ota_keys(ota: &str) -> String {
    let mut out = String::new();
    for (key, value) in [("health_window_secs", "2"), ("health_min_requests", "10"), ("stall_secs", "1")] {
        if !ota.contains(key) {
            out.push_str(&format!("{key} = {value}\n"));
        }
    }
    out + ota + "\n"
}

pub fn operator_mqtt(s: &Setup) -> MqttConfig {
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

/// Waits until the agent is connected (and its configured models loaded), then a moment
/// for its subscriptions to be in place.
pub async fn ready(agent: &Agent) {
    let end = Instant::now() + Duration::from_secs(30);
    while http_get(&agent.http, "/readyz").0 != 200 {
        assert!(Instant::now() < end, "agent not ready in 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// `dev-1` running with `ota` in its `[ota]` table, ready, and an operator connected: the
/// agent, the link and the config (to restart the agent with).
pub async fn dev1(s: &Setup, ota: &str) -> (Agent, Link, PathBuf) {
    let (config, http) = ota_config(s, "dev-1", &[], ota, "");
    let agent = Agent::start(&config, &http);
    ready(&agent).await;
    let link = Link::connect(&operator_mqtt(s)).await.unwrap();
    (agent, link, config)
}

/// Deploys `prefix`'s model file under `name` and `version` with `--wait`, validated with
/// its reference `output` if given.
pub async fn deploy_model(
    link: &mut Link,
    target: Target,
    name: &str,
    version: &str,
    prefix: &str,
    output: Option<&str>,
) -> DeployOutcome {
    let req = request(target, name, version, &format!("{prefix}.tflite"), output.map(|o| validation(prefix, o)));
    run_deploy(link, &req).await
}

pub fn device(d: &str) -> Target {
    Target::Device(d.into())
}

pub fn request(target: Target, name: &str, version: &str, file: &str, validation: Option<Validation>) -> DeployRequest {
    let format = ModelFormat::from_file_name(file).unwrap();
    let mut req = DeployRequest::new(target, name, version, format, model(file));
    req.validation = validation;
    req.wait = true;
    req.timeout = Duration::from_secs(90);
    req
}

pub async fn run_deploy(link: &mut Link, req: &DeployRequest) -> DeployOutcome {
    deploy(link, &signer(), req, |_| {}).await.expect("deploy sent")
}

/// The single device's outcome of a deploy.
pub fn only(outcome: &DeployOutcome) -> &Outcome {
    assert_eq!(outcome.results.len(), 1, "{outcome:?}");
    &outcome.results[0].outcome
}

pub async fn command(link: &mut Link, target: Target, payload: Payload) -> Vec<edgectl::track::DeviceResult> {
    let mut req = CommandRequest::new(target, payload);
    req.timeout = Duration::from_secs(30);
    send_command(link, &signer(), &req, |_| {}).await.expect("command sent").results
}

pub async fn status(link: &mut Link, d: &str) -> DeviceStatus {
    let results = command(link, device(d), Payload::GetStatus).await;
    match &results[0].reply {
        Some(Reply::Status(s)) => s.clone(),
        other => panic!("get-status answered {:?} with {other:?}", results[0].outcome),
    }
}

pub fn active(status: &DeviceStatus, name: &str) -> Option<String> {
    status.models.iter().find(|m| m.name == name).and_then(|m| m.active_version.clone())
}

/// POSTs the model's reference input over the local API; the status code.
pub fn predict(agent: &Agent, name: &str, prefix: &str) -> u16 {
    let input = std::fs::read(models_dir().join(format!("{prefix}.input.npy"))).unwrap();
    http_post(&agent.http, &format!("/v1/models/{name}:predict"), "application/x-npy", &input).0
}

/// Deploys `prefix`'s model to `d` as [`deploy_model`] does, from a link of its own on a
/// task: the test goes on (kills the agent, restarts it) while the deploy waits for its end.
pub fn deploy_in_background(
    s: &Setup,
    d: &str,
    name: &str,
    version: &str,
    prefix: &str,
) -> tokio::task::JoinHandle<DeployOutcome> {
    let mqtt = operator_mqtt(s);
    let (d, name, version, prefix) = (d.to_string(), name.to_string(), version.to_string(), prefix.to_string());
    tokio::spawn(async move {
        let mut link = Link::connect(&mqtt).await.unwrap();
        let out = deploy_model(&mut link, device(&d), &name, &version, &prefix, None).await;
        link.close().await;
        out
    })
}
