//! The daemon against a real Mosquitto over mutual TLS: telemetry, store-and-forward,
//! refusal of insecure or untrusted links.

mod daemon;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use daemon::{agent_config, http_get, http_post, operator, operator_session, promtool_accepts, setup, Agent};
use edge_it::unique_client_id;
use edge_proto::codec::Versioned;
use edge_proto::status::State;
use edge_proto::telemetry::Telemetry;
use rumqttc::{Event, EventLoop, Packet};

/// Collects telemetry until `done` says enough, or the deadline passes.
async fn collect(ev: &mut EventLoop, deadline: Duration, mut done: impl FnMut(&[Telemetry]) -> bool) -> Vec<Telemetry> {
    let mut got = vec![];
    let end = Instant::now() + deadline;
    while !done(&got) {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match tokio::time::timeout(left, ev.poll()).await {
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                if let Ok(t) = edge_proto::telemetry::decode(&p.payload) {
                    got.push(t);
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(200)).await,
            Err(_) => break,
        }
    }
    got
}

fn seqs(t: &[Telemetry]) -> Vec<u64> {
    t.iter().map(|t| t.seq).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_arrives_decodes_and_is_plausible() {
    let s = setup();
    let (config, http) = agent_config(&s, "dev-1", &s.broker.url(), s.pki.ca_pem(), "");
    let model = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/pymicro-wakeword__okay_nabu.tflite");
    let mut text = format!("groups = [\"cams\"]\n{}", std::fs::read_to_string(&config).unwrap());
    text.push_str(&format!("[[models]]\nname = \"wake\"\npath = \"{}\"\n", model.display()));
    std::fs::write(&config, text).unwrap();
    let (_op, mut ev) = operator(&s, "edge/dev-1/#").await;
    let agent = Agent::start(&config, &http);
    let got = collect(&mut ev, Duration::from_secs(20), |g| g.len() >= 3).await;
    assert!(got.len() >= 3, "only {} samples; agent log:\n{}", got.len(), agent.stop());
    let t = &got[2];
    assert_eq!(t.device, "dev-1");
    assert!(seqs(&got).windows(2).all(|w| w[1] == w[0] + 1), "consecutive: {:?}", seqs(&got));
    assert!(t.mem.total_bytes > 0 && t.mem.used_bytes > 0 && t.mem.used_bytes <= t.mem.total_bytes);
    assert!(t.agent.rss_bytes > 1 << 20 && t.agent.rss_bytes < 1 << 30, "rss {}", t.agent.rss_bytes);
    assert!((0.0..=100.0).contains(&t.cpu.total_pct) && !t.cpu.per_core_pct.is_empty());
    assert!(t.disk.total_bytes > 0);
    assert!(t.ts > 1_600_000_000_000);
    assert_eq!(t.models.len(), 1);
    assert_eq!((t.models[0].name.as_str(), t.models[0].requests), ("wake", 0));
    let expiry = edge_mqtt::cert::read(&s.pki.dir().join("client-dev-1.pem")).unwrap().not_after;
    assert_eq!((t.version, t.cert_not_after, t.disk_full), (Telemetry::VERSION, Some(expiry), false));
    let (code, body) = http_get(&http, "/readyz");
    assert_eq!(code, 200, "{body}");
    let metrics = agent.metrics();
    assert!(metrics.contains("edge_agent_mqtt_connected 1"), "{metrics}");
    assert!(metrics.contains("edge_agent_telemetry_samples_total"), "{metrics}");
    assert!(
        metrics.contains("edge_agent_inference_duration_seconds_bucket{le=\"+Inf\",model=\"wake\",outcome=\"ok\"} 0"),
        "{metrics}"
    );
    assert!(metrics.contains("edge_agent_models_loaded 1"), "{metrics}");
    promtool_accepts(&metrics);
    let log = agent.stop();
    assert!(log.contains("connected to broker"), "{log}");

    // After an orderly stop the retained status says offline.
    let (_op2, mut ev2) = operator(&s, "edge/dev-1/status").await;
    let end = Instant::now() + Duration::from_secs(5);
    let mut last = None;
    while Instant::now() < end {
        if let Ok(Ok(Event::Incoming(Packet::Publish(p)))) =
            tokio::time::timeout(Duration::from_secs(1), ev2.poll()).await
        {
            last = edge_proto::status::decode(&p.payload).ok();
            break;
        }
    }
    // Status v2: the groups, and each model with its active version (what get-status says).
    let last = last.expect("a retained status");
    assert_eq!((last.version, last.state), (2, State::Offline));
    assert_eq!(last.groups, ["cams"]);
    assert_eq!(last.model_states.len(), 1, "{last:?}");
    assert_eq!(last.model_states[0].name, "wake");
    assert!(last.model_states[0].active_version.is_some(), "{last:?}");
    assert_eq!(last.model_states[0].health, "ok");
}

/// With `[telemetry] encoding = "json"`, what reaches the broker is one JSON object per
/// sample that validates against docs/telemetry.schema.json, and edgectl's decoder reads it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_telemetry_validates_against_its_published_schema() {
    let s = setup();
    let (config, http) = agent_config(&s, "dev-1", &s.broker.url(), s.pki.ca_pem(), "");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("interval_secs = 1\n", "interval_secs = 1\nencoding = \"json\"\n")).unwrap();
    let schema_path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/telemetry.schema.json");
    let schema: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(schema_path).unwrap()).unwrap();
    let validator = jsonschema::validator_for(&schema).expect("the published schema is a valid JSON Schema");
    let (_op, mut ev) = operator(&s, "edge/dev-1/telemetry").await;
    let agent = Agent::start(&config, &http);
    let mut payloads = vec![];
    let end = Instant::now() + Duration::from_secs(20);
    while payloads.len() < 2 && Instant::now() < end {
        if let Ok(Ok(Event::Incoming(Packet::Publish(p)))) =
            tokio::time::timeout(Duration::from_secs(1), ev.poll()).await
        {
            payloads.push(p.payload.to_vec());
        }
    }
    let log = agent.stop();
    assert_eq!(payloads.len(), 2, "agent log:\n{log}");
    let expiry = edge_mqtt::cert::read(&s.pki.dir().join("client-dev-1.pem")).unwrap().not_after;
    for payload in &payloads {
        let value: serde_json::Value = serde_json::from_slice(payload).expect("a JSON object");
        let errors: Vec<String> =
            validator.iter_errors(&value).map(|e| format!("{} at {}", e, e.instance_path())).collect();
        assert!(errors.is_empty(), "schema violations: {errors:?}\nin {value}");
        assert_eq!(value["device"], "dev-1");
        assert_eq!(value["cert_not_after"], expiry);
        assert_eq!(value["disk_full"], false);
        let t = edge_proto::telemetry::decode(payload).unwrap();
        assert_eq!((t.device.as_str(), t.cert_not_after), ("dev-1", Some(expiry)));
    }
    // The schema is strict enough to catch a sample that lost a field.
    let mut broken: serde_json::Value = serde_json::from_slice(&payloads[0]).unwrap();
    broken["mem"].as_object_mut().unwrap().remove("used_bytes");
    assert!(!validator.is_valid(&broken));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_for_10_s_loses_no_sequence_number_and_keeps_order() {
    let mut s = setup();
    let (config, http) = agent_config(&s, "dev-2", &s.broker.url(), s.pki.ca_pem(), "");
    let agent = Agent::start(&config, &http);
    // A persistent session: a sample the broker accepted just before it stopped, but had
    // not delivered to this subscriber, is delivered after the restart. (With a clean
    // session the test could miss a sample the agent rightly considers sent.)
    let id = unique_client_id("op-outage");
    let (op, mut ev) = operator_session(&s, "edge/dev-2/telemetry", &id, false).await;
    let before = collect(&mut ev, Duration::from_secs(20), |g| !g.is_empty()).await;
    assert!(!before.is_empty(), "no telemetry before the outage");
    s.broker.stop().unwrap();
    drop((op, ev));
    std::thread::sleep(Duration::from_secs(10));
    let queued_during = agent.metrics();
    s.broker.restart().unwrap();
    let first = before[0].seq;
    let (_op, mut ev) = operator_session(&s, "edge/dev-2/telemetry", &id, false).await;
    // The outage queued ~10 samples; wait until the link has caught up past them.
    let after = collect(&mut ev, Duration::from_secs(30), |g| g.iter().any(|t| t.seq >= first + 15)).await;
    let mut all: Vec<u64> = seqs(&before);
    all.extend(seqs(&after));
    // At least once: a sample may arrive twice, but never out of order and never missing.
    let mut dedup = all.clone();
    dedup.dedup();
    assert!(dedup.windows(2).all(|w| w[1] > w[0]), "order kept: {all:?}");
    let set: BTreeSet<u64> = all.iter().copied().collect();
    let last = *set.iter().next_back().unwrap();
    let missing: Vec<u64> = (first..=last).filter(|n| !set.contains(n)).collect();
    assert!(last >= first + 15, "did not catch up: {all:?}\n{}", agent.stop());
    assert!(missing.is_empty(), "missing {missing:?} of {all:?}");
    assert!(queued_during.contains("edge_agent_mqtt_connected 0"), "{queued_during}");
    assert!(agent.metrics().contains("edge_agent_mqtt_reconnects_total 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn samples_queued_offline_survive_kill_9() {
    let mut s = setup();
    let (config, http) = agent_config(&s, "dev-3", &s.broker.url(), s.pki.ca_pem(), "");
    let mut agent = Agent::start(&config, &http);
    let (_op, mut ev) = operator(&s, "edge/dev-3/telemetry").await;
    let before = collect(&mut ev, Duration::from_secs(20), |g| !g.is_empty()).await;
    let last_online = before.last().expect("telemetry before going offline").seq;
    s.broker.stop().unwrap();
    std::thread::sleep(Duration::from_secs(4));
    agent.kill9();
    s.broker.restart().unwrap();
    let (_op, mut ev) = operator(&s, "edge/dev-3/telemetry").await;
    let agent = Agent::start(&config, &http);
    // Samples from after the restart number from a fresh reserved block, well above.
    let got = collect(&mut ev, Duration::from_secs(30), |g| g.iter().any(|t| t.seq > last_online + 40)).await;
    let set: BTreeSet<u64> = seqs(&got).into_iter().collect();
    let queued: Vec<u64> = (last_online + 1..=last_online + 3).collect();
    for n in &queued {
        assert!(set.contains(n), "sample {n} queued before kill -9 never arrived: {:?}\n{}", seqs(&got), agent.stop());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_outbox_drops_the_oldest_and_counts_them() {
    let mut s = setup();
    // Room for about three samples.
    let (config, http) = agent_config(&s, "dev-4", &s.broker.url(), s.pki.ca_pem(), "");
    let text =
        std::fs::read_to_string(&config).unwrap().replace("[telemetry]\n", "[telemetry]\noutbox_max_bytes = 600\n");
    std::fs::write(&config, text).unwrap();
    s.broker.stop().unwrap();
    let agent = Agent::start(&config, &http);
    std::thread::sleep(Duration::from_secs(8));
    let metrics = agent.metrics();
    let dropped: u64 = metrics
        .lines()
        .find(|l| l.starts_with("edge_agent_outbox_dropped_messages_total{reason=\"full\"}"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(dropped >= 2, "expected drops when full:\n{metrics}");
    s.broker.restart().unwrap();
    let (_op, mut ev) = operator(&s, "edge/dev-4/telemetry").await;
    let got = collect(&mut ev, Duration::from_secs(20), |g| g.len() >= 3).await;
    let got = seqs(&got);
    assert!(!got.is_empty());
    // The survivors are the newest: the first delivered sample is not sample 0.
    assert!(got[0] >= dropped, "oldest not dropped: {got:?} after {dropped} drops");
    assert!(got.windows(2).all(|w| w[1] > w[0]), "in order: {got:?}");
}

#[test]
fn plaintext_mqtt_is_refused_by_run_and_check_config() {
    let s = setup();
    let url = format!("mqtt://127.0.0.1:{}", s.broker.port());
    let (config, _) = agent_config(&s, "dev-5", &url, s.pki.ca_pem(), "");
    for cmd in ["run", "check-config"] {
        let out = Command::new(env!("CARGO_BIN_EXE_edge-agent"))
            .args([cmd, "--config", config.to_str().unwrap()])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{cmd}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("[mqtt] url") && err.contains("allow_insecure"), "{cmd}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_signed_by_an_unknown_ca_is_refused() {
    let s = setup();
    // The agent trusts the rogue CA only: the real broker's certificate must not verify.
    let (config, http) = agent_config(&s, "dev-6", &s.broker.url(), s.pki.rogue_ca_pem(), "");
    let (_op, mut ev) = operator(&s, "edge/dev-6/#").await;
    let agent = Agent::start(&config, &http);
    let got = collect(&mut ev, Duration::from_secs(5), |g| !g.is_empty()).await;
    assert!(got.is_empty(), "telemetry crossed an untrusted link");
    let (code, _) = http_get(&http, "/readyz");
    assert_eq!(code, 503);
    let log = agent.stop();
    assert!(log.contains("cannot connect to broker") && log.to_lowercase().contains("certificate"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_systemd_it_notifies_ready_status_and_watchdog() {
    let s = setup();
    let (config, http) = agent_config(&s, "dev-8", &s.broker.url(), s.pki.ca_pem(), "");
    let socket_path = s.dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // WATCHDOG_USEC of 2 s: pings every second. JOURNAL_STREAM without a journal socket here
    // falls back to stderr.
    let agent = Agent::start_with(
        &config,
        &http,
        &[("NOTIFY_SOCKET", socket_path.to_str().unwrap()), ("WATCHDOG_USEC", "2000000"), ("JOURNAL_STREAM", "8:1")],
    );
    let mut seen = vec![];
    let end = Instant::now() + Duration::from_secs(15);
    let mut buf = [0u8; 256];
    while Instant::now() < end {
        let Ok(n) = socket.recv(&mut buf) else { break };
        seen.push(String::from_utf8_lossy(&buf[..n]).to_string());
        let pings = seen.iter().filter(|m| *m == "WATCHDOG=1").count();
        if pings >= 2 && seen.iter().any(|m| m.starts_with("STATUS=broker connected")) {
            break;
        }
    }
    // EXTEND_TIMEOUT_USEC (the models load) and then READY=1 come first.
    assert!(seen.first().is_some_and(|m| m.starts_with("EXTEND_TIMEOUT_USEC=")), "{seen:?}");
    assert_eq!(seen.get(1).map(String::as_str), Some("READY=1"), "{seen:?}");
    assert!(seen.iter().filter(|m| *m == "WATCHDOG=1").count() >= 2, "{seen:?}");
    assert!(seen.iter().any(|m| m.starts_with("STATUS=broker connected")), "{seen:?}");
    let log = agent.stop();
    let mut rest = vec![];
    while let Ok(n) = socket.recv(&mut buf) {
        rest.push(String::from_utf8_lossy(&buf[..n]).to_string());
        if rest.last().map(String::as_str) == Some("STOPPING=1") {
            break;
        }
    }
    assert!(rest.iter().any(|m| m == "STOPPING=1"), "{rest:?}");
    if !Path::new("/run/systemd/journal/socket").exists() {
        assert!(log.contains("journald unavailable") && log.contains("connected to broker"), "{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_fails_to_load_is_reported_and_the_agent_keeps_working() {
    let s = setup();
    let (config, http) = agent_config(&s, "dev-9", &s.broker.url(), s.pki.ca_pem(), "");
    let bad =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/mediapipe__face_landmark_with_attention.tflite");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!("[[models]]\nname = \"face\"\npath = \"{}\"\n", bad.display()));
    std::fs::write(&config, text).unwrap();
    let (_op, mut ev) = operator(&s, "edge/dev-9/telemetry").await;
    let agent = Agent::start(&config, &http);
    let got = collect(&mut ev, Duration::from_secs(20), |g| g.len() >= 2).await;
    assert!(got.len() >= 2, "telemetry stopped: {}", agent.stop());
    let (code, body) = http_get(&http, "/readyz");
    assert_eq!(code, 503);
    assert!(body.contains("models not loaded: face"), "{body}");
    assert!(agent.metrics().contains("edge_agent_model_load_failures_total 1"));
    let log = agent.stop();
    assert!(log.contains("model not loaded") && log.contains("CUSTOM:TransformTensorBilinear"), "{log}");
}

/// `/metrics` after real requests: every outcome counted and timed under one `outcome`
/// label (200, 400 from a body that does not parse, 415, 503 from a full queue), the
/// queue's depth and capacity, which version serves, the build and the certificate's
/// expiry; and `promtool check metrics` still accepts it all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_every_request_outcome_after_real_requests() {
    let s = setup();
    let (config, http) = agent_config(&s, "dev-1", &s.broker.url(), s.pki.ca_pem(), "");
    // A request must outlast the firing of 8 concurrent ones, so that one worker and a
    // queue of one refuse some (as the serving tests provoke a 503): PP-OCRv6 natively
    // (about 50 ms a request). Under qemu (CI's aarch64 run, which sets EDGE_IT_EMULATED)
    // that model takes over two minutes a request, and a segmentation model 250 times
    // smaller takes seconds, which is slow enough.
    let models = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models");
    let (file, input, input_name) = match std::env::var_os("EDGE_IT_EMULATED") {
        Some(_) => ("mediapipe__selfie_segmentation.tflite", "mediapipe__selfie_segmentation.input.npy", "input_1"),
        None => ("rapidocr__PP-OCRv6_det_small.onnx", "rapidocr__PP-OCRv6_det_small.input.npy", "x"),
    };
    let input_path = models.join(input);
    let input = edge_agent::npy::read(&input_path).unwrap();
    let mut text = std::fs::read_to_string(&config).unwrap();
    // Under emulation one request takes seconds: a deadline that leaves the test about
    // counting, not about the emulator's speed. (The config ends in [http].)
    text.push_str("request_timeout_secs = 120\n");
    let shapes = match file.ends_with(".onnx") {
        true => format!("shapes = {{ x = {:?} }}\n", input.shape()),
        false => String::new(),
    };
    text.push_str(&format!(
        "[[models]]\nname = \"det\"\npath = \"{}\"\nversion = \"6s\"\nworkers = 1\nqueue = 1\n{shapes}",
        models.join(file).display(),
    ));
    std::fs::write(&config, text).unwrap();
    let agent = Agent::start(&config, &http);
    let end = Instant::now() + Duration::from_secs(60);
    while http_get(&http, "/readyz").0 != 200 {
        assert!(Instant::now() < end, "never ready; agent log:\n{}", agent.stop());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let body = std::fs::read(&input_path).unwrap();
    let path = "/v1/models/det:predict";
    assert_eq!(http_post(&http, path, "application/x-npy", &body).0, 200);
    assert_eq!(http_post(&http, path, "application/json", b"{not json").0, 400);
    assert_eq!(http_post(&http, path, "text/plain", b"1").0, 415);
    let codes: Vec<u16> = (0..8)
        .map(|_| {
            let (http, body) = (http.clone(), body.clone());
            std::thread::spawn(move || http_post(&http, path, "application/x-npy", &body).0)
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    let ok = 1 + codes.iter().filter(|c| **c == 200).count();
    let busy = codes.iter().filter(|c| **c == 503).count();
    // Under emulation (qemu in CI) a request can outlive its deadline: a 504, counted as a
    // timeout. Whatever the mix, each code a caller saw is counted once, under its outcome.
    let late = codes.iter().filter(|c| **c == 504).count();
    assert_eq!(ok - 1 + busy + late, 8, "only 200, 503 and 504 expected: {codes:?}");
    assert!(busy >= 1, "no 503 under 8 concurrent requests with a queue of 1: {codes:?}");

    // A timed-out request may still hold the worker for a while: wait until nothing runs.
    let idle = |m: &str| {
        m.contains("edge_agent_inference_queue_depth{model=\"det\"} 0\n")
            && m.contains("edge_agent_inference_in_flight{model=\"det\"} 0\n")
    };
    let end = Instant::now() + Duration::from_secs(120);
    let mut metrics = agent.metrics();
    while !idle(&metrics) && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(500)).await;
        metrics = agent.metrics();
    }
    let expiry = edge_mqtt::cert::read(&s.pki.dir().join("client-dev-1.pem")).unwrap().not_after;
    let expected = [
        format!(r#"edge_agent_inference_requests_total{{model="det",outcome="ok"}} {ok}"#),
        r#"edge_agent_inference_requests_total{model="det",outcome="bad_request"} 2"#.to_string(),
        format!(r#"edge_agent_inference_requests_total{{model="det",outcome="unavailable"}} {busy}"#),
        format!(r#"edge_agent_inference_requests_total{{model="det",outcome="timeout"}} {late}"#),
        r#"edge_agent_inference_requests_total{model="det",outcome="error"} 0"#.to_string(),
        // Every outcome has its latency, not only the answers.
        format!(r#"edge_agent_inference_duration_seconds_count{{model="det",outcome="ok"}} {ok}"#),
        r#"edge_agent_inference_duration_seconds_count{model="det",outcome="bad_request"} 2"#.to_string(),
        format!(r#"edge_agent_inference_duration_seconds_count{{model="det",outcome="unavailable"}} {busy}"#),
        // Nothing waits once every request is answered; the counter came back to zero.
        r#"edge_agent_inference_queue_depth{model="det"} 0"#.to_string(),
        r#"edge_agent_inference_queue_capacity{model="det"} 1"#.to_string(),
        r#"edge_agent_inference_in_flight{model="det"} 0"#.to_string(),
        format!(r#"edge_agent_model_info{{model="det",version="6s",format="{}"}} 1"#, file.rsplit('.').next().unwrap()),
        format!(
            r#"edge_agent_build_info{{version="{}",{}target="{}-{}"}} 1"#,
            env!("CARGO_PKG_VERSION"),
            option_env!("EDGE_AGENT_GIT_SHA")
                .filter(|s| !s.is_empty())
                .map(|s| format!(r#"git_sha="{s}","#))
                .unwrap_or_default(),
            std::env::consts::ARCH,
            std::env::consts::OS
        ),
        format!("edge_agent_certificate_expiry_timestamp_seconds {expiry}"),
    ];
    let timed_out = format!(r#"edge_agent_inference_duration_seconds_count{{model="det",outcome="timeout"}} {late}"#);
    for series in expected.iter().chain((late > 0).then_some(&timed_out)) {
        assert!(metrics.contains(&format!("{series}\n")), "no {series} in:\n{metrics}");
    }
    // What the model saw: the requests described (a sample that keeps the statistics within
    // 1% of the inference time; the first always) and every element of their input, none
    // NaN, and the statistics' own cost. Described after the answer: wait for the last.
    let elements: usize = input.shape().iter().product();
    let counter = |m: &str, series: &str| -> Option<usize> {
        m.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    };
    let described = r#"edge_agent_tensor_requests_total{model="det",version="6s",result="described"}"#;
    let skipped = r#"edge_agent_tensor_requests_total{model="det",version="6s",result="skipped"}"#;
    let values = format!(r#"edge_agent_tensor_values_total{{model="det",version="6s",tensor="input:{input_name}"}}"#);
    let end = Instant::now() + Duration::from_secs(120);
    loop {
        let seen = counter(&metrics, described).unwrap_or(0) + counter(&metrics, skipped).unwrap_or(0);
        if seen == ok + late || Instant::now() > end {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        metrics = agent.metrics();
    }
    let n = counter(&metrics, described).unwrap_or(0);
    assert!(n >= 1, "the first request is described:\n{metrics}");
    assert_eq!(n + counter(&metrics, skipped).unwrap_or(0), ok + late, "{metrics}");
    assert_eq!(counter(&metrics, &values), Some(n * elements), "{metrics}");
    for series in [
        format!(r#"edge_agent_tensor_nan_total{{model="det",version="6s",tensor="input:{input_name}"}} 0"#),
        r#"edge_agent_tensor_stats_seconds_total{model="det",version="6s"}"#.to_string(),
        r#"edge_agent_tensor_mean{model="det",version="6s",tensor="output:"#.to_string(),
    ] {
        assert!(metrics.contains(&series), "no {series} in:\n{metrics}");
    }
    promtool_accepts(&metrics);
    agent.stop();
}
