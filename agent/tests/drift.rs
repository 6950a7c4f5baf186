//! Reference profiles and drift, end to end: `edge-agent profile` makes a profile from
//! sample inputs close to a shipped model's reference input, edgectl's library signs it into
//! a deploy over a real Mosquitto, and a real `edge-agent run` serving local HTTP requests
//! reports `edge_agent_tensor_drift_psi` on `/metrics`: low for inputs like the samples,
//! past the alert threshold (deploy/prometheus: 0.2) for inputs from another distribution,
//! and still there after a restart.

mod daemon;
mod operator;

use std::collections::BTreeMap;
use std::path::Path;

use daemon::{http_post, setup, Agent};
use edge_proto::profile::Profile;
use edgectl::link::Link;
use edgectl::track::Outcome;
use operator::*;
use tract_core::internal::Tensor;

const SELFIE: &str = "mediapipe__selfie_segmentation";
/// `EdgeAgentTensorDrift`'s threshold in deploy/prometheus/edge-agent.rules.yml.
const ALERT: f64 = 0.2;

/// `reference` with uniform noise of ±`amplitude` on every element.
fn noisy(reference: &Tensor, amplitude: f32, seed: u64) -> Tensor {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut t = reference.clone();
    for v in t.try_as_plain_ram_mut().unwrap().as_slice_mut::<f32>().unwrap() {
        *v += amplitude * (2.0 * rng.f32() - 1.0);
    }
    t
}

/// Noise of the reference's shape, uniform in [lo, hi): another distribution.
fn other(reference: &Tensor, lo: f32, hi: f32, seed: u64) -> Tensor {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut t = reference.clone();
    for v in t.try_as_plain_ram_mut().unwrap().as_slice_mut::<f32>().unwrap() {
        *v = lo + (hi - lo) * rng.f32();
    }
    t
}

fn predict(agent: &Agent, t: &Tensor) {
    let body = edge_agent::npy::to_bytes(t).unwrap();
    let (code, answer) = http_post(&agent.http, "/v1/models/selfie:predict", "application/x-npy", &body);
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&answer));
}

/// `edge_agent_tensor_drift_psi` of selfie 1, by tensor.
fn psi(agent: &Agent) -> BTreeMap<String, f64> {
    let prefix = r#"edge_agent_tensor_drift_psi{model="selfie",version="1",tensor=""#;
    agent
        .metrics()
        .lines()
        .filter_map(|l| l.strip_prefix(prefix))
        .filter_map(|l| l.split_once("\"} "))
        .map(|(tensor, v)| (tensor.to_string(), v.parse().unwrap()))
        .collect()
}

fn make_profile(dir: &Path, reference: &Tensor) -> Profile {
    let samples = dir.join("samples");
    std::fs::create_dir_all(&samples).unwrap();
    for i in 0..8 {
        edge_agent::npy::write(&samples.join(format!("{i}.npy")), &noisy(reference, 0.05, i)).unwrap();
    }
    let out = dir.join("selfie.profile.json");
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_edge-agent"))
        .args(["profile", "--model"])
        .arg(models_dir().join(format!("{SELFIE}.tflite")))
        .arg("--inputs")
        .arg(&samples)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(run.status.success(), "edge-agent profile: {}", String::from_utf8_lossy(&run.stderr));
    serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_stays_low_on_inputs_like_the_profile_s_and_passes_the_alert_threshold_on_others() {
    let s = setup();
    let reference = edge_agent::npy::read(&models_dir().join(format!("{SELFIE}.input.npy"))).unwrap();
    let profile = make_profile(s.dir.path(), &reference);
    assert_eq!(profile.samples, 8);
    let labels: Vec<&str> = profile.tensors.iter().map(|t| t.tensor.as_str()).collect();
    assert!(labels.len() == 2 && labels[0].starts_with("input:") && labels[1].starts_with("output:"), "{labels:?}");

    // A short half-life, so that the window follows the test's requests; what is asserted
    // holds for any timing (each phase only adds evidence for its own conclusion).
    let (config, http) = ota_config(&s, "dev-1", &[], "", "[drift]\nhalf_life_secs = 5");
    let agent = Agent::start(&config, &http);
    ready(&agent).await;
    let mut link = Link::connect(&operator_mqtt(&s)).await.unwrap();
    let mut req =
        request(device("dev-1"), "selfie", "1", &format!("{SELFIE}.tflite"), Some(validation(SELFIE, "output")));
    req.profile = Some(profile.clone());
    let deployed = run_deploy(&mut link, &req).await;
    assert_eq!(only(&deployed), &Outcome::Succeeded, "{deployed:?}");

    for i in 0..12 {
        predict(&agent, &noisy(&reference, 0.05, 100 + i));
    }
    let calm = psi(&agent);
    assert_eq!(calm.keys().map(|k| k.as_str()).collect::<Vec<_>>(), labels, "{}", agent.metrics());
    assert!(calm.values().all(|&p| p < 0.1), "in-distribution inputs drift: {calm:?}");

    for i in 0..12 {
        predict(&agent, &other(&reference, 1.5, 3.5, 200 + i));
    }
    let drifted = psi(&agent);
    assert!(drifted[labels[0]] > ALERT, "inputs from another distribution: {drifted:?} (before: {calm:?})");

    // The profile is kept with the installed version: after a restart the drift of the same
    // inputs is measured again.
    let log = agent.stop();
    let agent = Agent::start(&config, &http);
    ready(&agent).await;
    assert!(psi(&agent).is_empty(), "nothing counted yet after the restart");
    for i in 0..4 {
        predict(&agent, &other(&reference, 1.5, 3.5, 300 + i));
    }
    let again = psi(&agent);
    assert!(again.get(labels[0]).is_some_and(|&p| p > ALERT), "after a restart: {again:?}\n{log}");
    link.close().await;
}
