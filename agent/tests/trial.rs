//! Trials and mark-good, end to end: a version that kills the agent is replaced by the one
//! before it, and commands are answered while a model is being validated. Real
//! `edge-agent run` processes, a real Mosquitto, edgectl's library as the operator.

mod daemon;
mod onnx_build;
mod operator;

use std::time::{Duration, Instant};

use daemon::{http_get, setup, Agent};
use edge_proto::command::{NpyBytes, Payload, Reply};
use edge_proto::ota::{ModelFormat, Validation};
use edgectl::deploy::DeployRequest;
use edgectl::link::Link;
use edgectl::track::Outcome;
use operator::*;

/// Waits until the local API serves `name` in `version`.
async fn serving(agent: &Agent, name: &str, version: &str) {
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, body) = http_get(&agent.http, &format!("/v1/models/{name}"));
        if body.contains(&format!("\"version\":\"{version}\"")) {
            return;
        }
        assert!(Instant::now() < end, "{name} {version} never served: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The version the local API answers with the first time it answers for `name` at all.
async fn first_version_served(agent: &Agent, name: &str) -> String {
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, body) = http_get(&agent.http, &format!("/v1/models/{name}"));
        if code == 200 {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            return v["version"].as_str().unwrap_or_default().to_string();
        }
        assert!(Instant::now() < end, "{name} never served");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_twice_during_a_trial_restores_the_previous_version_before_serving() {
    // Version 2 "kills" the agent twice inside its health window, as an OOM kill would: it
    // used to come back serving version 2, and a crash loop took the box out of the fleet.
    let s = setup();
    let (mut agent, mut link, config) = dev1(&s, "health_window_secs = 600").await;
    let http = agent.http.clone();
    let v1 = deploy_model(&mut link, device("dev-1"), "hand", "1", RECROP, None).await;
    assert_eq!(only(&v1), &Outcome::Succeeded, "{v1:?}");
    let v2 = deploy_in_background(&s, "dev-1", "hand", "2", RECROP);
    serving(&agent, "hand", "2").await;
    agent.kill9();
    // First death: the trial resumes, version 2 serves again.
    let mut agent = Agent::start(&config, &http);
    serving(&agent, "hand", "2").await;
    agent.kill9();
    // Second death: version 1 is back before anything serves.
    let agent = Agent::start(&config, &http);
    assert_eq!(first_version_served(&agent, "hand").await, "1");
    let out = v2.await.unwrap();
    assert_eq!(
        only(&out),
        &Outcome::Failed("agent died twice during the trial of hand 2; restored version 1".into()),
        "{out:?}"
    );
    let now = active(&status(&mut link, "dev-1").await, "hand");
    // The restore at start is counted as the trial's rollback, and version 1 is the one
    // model_info reports.
    let metrics = agent.metrics();
    for series in [
        r#"edge_agent_trials_ended_total{outcome="rolled_back"} 1"#,
        r#"edge_agent_deploys_total{outcome="rolled_back"} 1"#,
        r#"edge_agent_model_info{model="hand",version="1",format="tflite"} 1"#,
    ] {
        assert!(metrics.contains(series), "no {series} in:\n{metrics}");
    }
    let log = agent.stop();
    assert_eq!(now.as_deref(), Some("1"), "{log}");
    assert!(log.contains("agent died twice during the trial of hand 2"), "{log}");
    link.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orderly_restart_during_a_trial_is_not_a_death() {
    let s = setup();
    let (agent, mut link, config) = dev1(&s, "health_window_secs = 4").await;
    let http = agent.http.clone();
    let v1 = deploy_model(&mut link, device("dev-1"), "hand", "1", RECROP, None).await;
    assert_eq!(only(&v1), &Outcome::Succeeded, "{v1:?}");
    let v2 = deploy_in_background(&s, "dev-1", "hand", "2", RECROP);
    serving(&agent, "hand", "2").await;
    agent.stop();
    let agent = Agent::start(&config, &http);
    serving(&agent, "hand", "2").await;
    agent.stop();
    let agent = Agent::start(&config, &http);
    // Two stops in order: still on trial, and its window ends well.
    let out = v2.await.unwrap();
    assert_eq!(only(&out), &Outcome::Succeeded, "{out:?}");
    assert_eq!(first_version_served(&agent, "hand").await, "2");
    let metrics = agent.metrics();
    assert!(metrics.contains(r#"edge_agent_trials_ended_total{outcome="passed"} 1"#), "{metrics}");
    assert!(!metrics.contains(r#"outcome="rolled_back""#), "{metrics}");
    link.close().await;
}

/// An ONNX model that takes minutes to run: its 1024x1024 input is multiplied by a
/// constant 1024x1024 matrix `layers` times.
fn slow_onnx(layers: usize) -> Vec<u8> {
    const N: i64 = 1024;
    let mut nodes = vec![onnx_build::constant_of_shape("shape", "w", 1.0 / N as f32)];
    for i in 0..layers {
        let input = if i == 0 { "x".to_string() } else { format!("h{i}") };
        nodes.push(onnx_build::node("MatMul", &[&input, "w"], &format!("h{}", i + 1)));
    }
    onnx_build::model(tract_onnx::pb::GraphProto {
        node: nodes,
        initializer: vec![onnx_build::int64s("shape", &[N, N])],
        input: vec![onnx_build::value_info("x", &[N, N])],
        output: vec![onnx_build::value_info(&format!("h{layers}"), &[N, N])],
        ..Default::default()
    })
}

/// An ONNX model `y = x + sum(zeros(n))`: loading it folds an `n`-float constant, which
/// takes seconds for a large `n` (and as much memory as a model that big).
fn heavy_onnx(n: i64) -> Vec<u8> {
    use tract_onnx::pb;
    let mut sum = onnx_build::node("ReduceSum", &["big"], "s");
    sum.attribute = vec![pb::AttributeProto {
        name: "keepdims".into(),
        r#type: pb::attribute_proto::AttributeType::Int as i32,
        i: 1,
        ..Default::default()
    }];
    onnx_build::model(pb::GraphProto {
        node: vec![onnx_build::constant_of_shape("shape", "big", 0.0), sum, onnx_build::node("Add", &["x", "s"], "y")],
        initializer: vec![onnx_build::int64s("shape", &[n])],
        input: vec![onnx_build::value_info("x", &[1])],
        output: vec![onnx_build::value_info("y", &[1])],
        ..Default::default()
    })
}

/// The trial marker of `name`, if any.
fn trial_marker(config: &std::path::Path, name: &str) -> Option<serde_json::Value> {
    let path = config.parent().unwrap().join(format!("state-dev-1/trials/{name}.json"));
    std::fs::read(path).ok().and_then(|b| serde_json::from_slice(&b).ok())
}

/// Waits for the trial marker of `name` to record `deaths`.
async fn marker_with_deaths(config: &std::path::Path, name: &str, deaths: u64) {
    let end = Instant::now() + Duration::from_secs(120);
    while trial_marker(config, name).and_then(|t| t["deaths"].as_u64()) != Some(deaths) {
        assert!(Instant::now() < end, "no trial marker of {name} with {deaths} deaths");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_that_kills_the_agent_while_it_loads_is_replaced_by_the_previous_after_restart() {
    // Loading version 2 takes seconds (and a gigabyte): the agent is killed while it loads,
    // as an OOM kill or an abort at load would, at the deploy and again at the next start.
    let s = setup();
    let (mut agent, mut link, config) = dev1(
        &s,
        "health_window_secs = 600
validation_memory_bytes = 8589934592",
    )
    .await;
    let http = agent.http.clone();
    let deploy = |version: &'static str, n: i64| {
        let mqtt = operator_mqtt(&s);
        async move {
            let mut link = Link::connect(&mqtt).await.unwrap();
            let mut req = DeployRequest::new(device("dev-1"), "heavy", version, ModelFormat::Onnx, heavy_onnx(n));
            req.wait = true;
            req.timeout = Duration::from_secs(180);
            let out = edgectl::deploy::deploy(&mut link, &signer(), &req, |_| {}).await.expect("deploy sent");
            link.close().await;
            out
        }
    };
    let v1 = deploy("1", 16).await;
    assert_eq!(only(&v1), &Outcome::Succeeded, "{v1:?}");
    let v2 = tokio::spawn(deploy("2", 400_000_000));
    // The marker is written before version 2 loads: kill the agent as soon as it is there.
    marker_with_deaths(&config, "heavy", 0).await;
    agent.kill9();
    let mut agent = Agent::start(&config, &http);
    // The first death is counted before version 2 loads again: kill it there too.
    marker_with_deaths(&config, "heavy", 1).await;
    agent.kill9();
    let agent = Agent::start(&config, &http);
    assert_eq!(first_version_served(&agent, "heavy").await, "1");
    let out = v2.await.unwrap();
    assert_eq!(
        only(&out),
        &Outcome::Failed("agent died twice during the trial of heavy 2; restored version 1".into()),
        "{out:?}"
    );
    assert!(trial_marker(&config, "heavy").is_none(), "the trial is over");
    assert_eq!(active(&status(&mut link, "dev-1").await, "heavy").as_deref(), Some("1"));
    link.close().await;
}

fn npy_f32(shape: &[usize], values: &[f32]) -> Vec<u8> {
    let t = tract_core::prelude::Tensor::from_shape(shape, values).unwrap();
    edge_agent::npy::to_bytes(&t).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_are_answered_during_a_long_validation_and_the_link_stays_up() {
    // Validation used to run on the command thread: a command sent during it waited, and
    // past 30 s was dropped after the broker had its PUBACK.
    let s = setup();
    let (agent, mut link, config) = dev1(&s, "validation_timeout_secs = 60").await;
    let mqtt = operator_mqtt(&s);
    let deploy = tokio::spawn(async move {
        let mut link = Link::connect(&mqtt).await.unwrap();
        let mut req = DeployRequest::new(device("dev-1"), "slow", "1", ModelFormat::Onnx, slow_onnx(400));
        req.validation = Some(Validation {
            version: 1,
            inputs: vec![NpyBytes(npy_f32(&[1024, 1024], &vec![1.0; 1024 * 1024]))],
            expected: vec![NpyBytes(npy_f32(&[1], &[0.0]))],
            tolerance: 1.0,
        });
        req.wait = true;
        req.timeout = Duration::from_secs(120);
        let out = edgectl::deploy::deploy(&mut link, &signer(), &req, |_| {}).await.expect("deploy sent");
        link.close().await;
        (out, Instant::now())
    });
    // Wait for the transfer to end: validation has begun.
    let end = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_dir(config.parent().unwrap().join("state-dev-1/ota"))
        .map(|d| d.flatten().any(|_| true))
        .unwrap_or(false)
    {
        assert!(Instant::now() < end, "the transfer never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut answered = vec![];
    for _ in 0..3 {
        let results = command(&mut link, device("dev-1"), Payload::GetStatus).await;
        assert!(matches!(results[0].reply, Some(Reply::Status(_))), "{results:?}");
        answered.push(Instant::now());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (out, finished) = deploy.await.unwrap();
    assert!(answered.iter().all(|t| *t < finished), "get-status answered only after the validation ended: {out:?}");
    assert!(matches!(only(&out), Outcome::Failed(r) if r.contains("validation")), "{out:?}");
    let metrics = agent.metrics();
    assert!(metrics.contains("edge_agent_mqtt_reconnects_total 0"), "the link dropped:\n{metrics}");
    link.close().await;
}
