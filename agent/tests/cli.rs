//! The `inspect` and `infer` commands, as scripts call them.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;
use edge_agent::npy;

fn edge_agent(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_edge-agent")).args(args).output().expect("run edge-agent")
}

fn model(name: &str) -> String {
    models_dir().join(name).display().to_string()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

#[test]
fn infer_writes_outputs_matching_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    let out = edge_agent(&[
        "infer",
        "--model",
        &model("openwakeword-js__hello_deepa.onnx"),
        "--input",
        &model("openwakeword-js__hello_deepa.input.npy"),
        "--output-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let got = npy::read(&dir.path().join("output.0.npy")).unwrap();
    let want = npy::read(&models_dir().join("openwakeword-js__hello_deepa.output.npy")).unwrap();
    assert_close("hello_deepa via CLI", &got, &want, 0.0);
}

#[test]
fn infer_matches_inputs_by_name_and_pins_silero_sample_rate() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = "silero-vad__silero_vad_16k_op15";
    // Named inputs, given out of order, with `sr` pinned at load.
    let out = edge_agent(&[
        "infer",
        "--model",
        &model(&format!("{prefix}.onnx")),
        "--input",
        &format!("state={}", model(&format!("{prefix}.input.1.npy"))),
        "--input",
        &format!("input={}", model(&format!("{prefix}.input.0.npy"))),
        "--pin",
        "sr=16000",
        "--output-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    for k in 0..2 {
        let got = npy::read(&dir.path().join(format!("output.{k}.npy"))).unwrap();
        let want = npy::read(&models_dir().join(format!("{prefix}.output.{k}.npy"))).unwrap();
        assert_close(&format!("silero output {k}"), &got, &want, 0.0);
    }
}

/// Runs the okay_nabu wake-word sequence through `infer --sequence`.
fn okay_nabu_sequence() -> tract_core::internal::Tensor {
    let dir = tempfile::tempdir().unwrap();
    let out = edge_agent(&[
        "infer",
        "--model",
        &model("pymicro-wakeword__okay_nabu.tflite"),
        "--input",
        &model("pymicro-wakeword__okay_nabu.seq_input.npy"),
        "--sequence",
        "--output-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    npy::read(&dir.path().join("output.0.npy")).unwrap()
}

#[test]
fn okay_nabu_sequence_detects_at_the_reference_steps() {
    let got = okay_nabu_sequence();
    let want = npy::read(&models_dir().join("pymicro-wakeword__okay_nabu.seq_output.npy")).unwrap();
    assert_eq!(got.shape(), want.shape());
    let detections = |t: &tract_core::internal::Tensor| -> Vec<usize> {
        let v = t.try_as_plain_ram().unwrap().as_slice::<u8>().unwrap().to_vec();
        v.iter().enumerate().filter(|(_, x)| **x >= 128).map(|(i, _)| i).collect()
    };
    let (g, w) = (detections(&got), detections(&want));
    assert!(!w.is_empty(), "the reference sequence holds a wake word");
    assert_eq!(g, w, "detection steps");
}

#[test]
fn a_fresh_session_starts_from_the_initial_state() {
    // Two sequence runs of the same input give the same outputs: nothing leaks between
    // sessions, and the state does move within one (the outputs vary step to step).
    let (a, b) = (okay_nabu_sequence(), okay_nabu_sequence());
    assert_eq!(a, b);
    let v = a.try_as_plain_ram().unwrap().as_slice::<u8>().unwrap().to_vec();
    assert!(v.iter().any(|x| *x != v[0]), "state never changed the output");
}

#[test]
fn repeat_prints_timing_figures() {
    let out = edge_agent(&[
        "infer",
        "--model",
        &model("openwakeword-js__hello_deepa.onnx"),
        "--input",
        &model("openwakeword-js__hello_deepa.input.npy"),
        "--repeat",
        "5",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let median: f64 = text
        .split_whitespace()
        .find_map(|w| w.strip_prefix("median_ms="))
        .expect("median_ms= in output")
        .parse()
        .unwrap();
    assert!(median > 0.0);
    assert!(text.contains("min_ms=") && text.contains("p95_ms="), "{text}");
}

#[test]
fn face_landmark_with_attention_is_refused_naming_its_three_custom_ops() {
    let path = model("mediapipe__face_landmark_with_attention.tflite");
    let out = edge_agent(&["inspect", "--model", &path, "--json"]);
    // The full report, then exit 3: a script can gate a model on `inspect`.
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("not supported by this agent"), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["supported"], false);
    let missing: Vec<&str> = report["missing_ops"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(
        missing,
        ["CUSTOM:Landmarks2TransformMatrix", "CUSTOM:TransformLandmarks", "CUSTOM:TransformTensorBilinear"]
    );
    // PRELU and DEQUANTIZE are implemented, so only the custom ops are named.
    assert!(report["ops"].as_array().unwrap().iter().any(|op| op[0] == "PRELU"));

    let input = models_dir().join("mediapipe__face_detection_full_range_sparse.input.npy");
    let out = edge_agent(&["infer", "--model", &path, "--input", input.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert_eq!(err.trim_end().lines().count(), 1, "one-line reason: {err}");
    for op in missing {
        assert!(err.contains(op), "{op} not named in: {err}");
    }
}

#[test]
fn inspect_prints_signature_with_symbolic_dims_and_support() {
    let out = edge_agent(&["inspect", "--model", &model("pyopen-wakeword__melspectrogram.tflite")]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("format: Tflite"), "{text}");
    assert!(text.contains("serving_default_input:0 F32 [batch,d0_1]"), "{text}");
    assert!(text.contains("BATCH_MATMUL x1"), "{text}");
    assert!(text.contains("supported: yes"), "{text}");
}

#[test]
fn failures_exit_non_zero_with_one_line() {
    let missing = edge_agent(&["infer", "--model", "/nonexistent/model.onnx"]);
    let wrong_input = edge_agent(&[
        "infer",
        "--model",
        &model("openwakeword-js__hello_deepa.onnx"),
        "--input",
        &model("pymicro-wakeword__okay_nabu.input.npy"),
    ]);
    let unknown_name = edge_agent(&[
        "infer",
        "--model",
        &model("openwakeword-js__hello_deepa.onnx"),
        "--input",
        &format!("nope={}", model("openwakeword-js__hello_deepa.input.npy")),
    ]);
    for (what, out) in [("missing file", missing), ("wrong input", wrong_input), ("unknown name", unknown_name)] {
        assert!(!out.status.success(), "{what}");
        let err = stderr(&out);
        assert_eq!(err.trim_end().lines().count(), 1, "{what}: {err}");
        assert!(err.starts_with("edge-agent: "), "{what}: {err}");
    }
    assert!(Path::new(&model("openwakeword-js__hello_deepa.onnx")).exists());
}

/// A certificate for `cn`, self-signed, valid until 2100, in `path`.
fn device_cert(path: &std::path::Path, cn: &str) {
    let mut params = rcgen::CertificateParams::new(vec![]).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, cn);
    params.not_after = rcgen::date_time_ymd(2100, 1, 1);
    let cert = params.self_signed(&rcgen::KeyPair::generate().unwrap()).unwrap();
    std::fs::write(path, cert.pem()).unwrap();
}

/// A config for `dev-1` in a temporary directory, with its device certificate (CN dev-1)
/// and placeholder CA and key files beside it.
fn config_with(models: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    for f in ["ca.pem", "device.key"] {
        std::fs::write(dir.path().join(f), "placeholder").unwrap();
    }
    device_cert(&dir.path().join("device.pem"), "dev-1");
    let text = format!(
        "device_id = \"dev-1\"\nstate_dir = \"state\"\n[mqtt]\nurl = \"mqtts://127.0.0.1:8883\"\n\
         ca_file = \"ca.pem\"\ncert_file = \"device.pem\"\nkey_file = \"device.key\"\n{models}"
    );
    let path = dir.path().join("edge-agent.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

#[test]
fn check_config_loads_every_model_with_its_pins_and_shapes() {
    let models = format!(
        "[[models]]\nname = \"wake\"\npath = \"{}\"\n[[models]]\nname = \"vad\"\npath = \"{}\"\n\
         pins = {{ sr = 16000 }}\nshapes = {{ input = [1, 576] }}\nstate = {{ state = \"stateN\" }}\n",
        model("pymicro-wakeword__okay_nabu.tflite"),
        model("silero-vad__silero_vad_16k_op15.onnx"),
    );
    let (_dir, path) = config_with(&models);
    let out = edge_agent(&["check-config", "--config", path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("2 models"));
}

#[test]
fn completions_and_man_pages_name_every_command() {
    let out = edge_agent(&["completions", "bash"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let script = String::from_utf8_lossy(&out.stdout);
    for word in ["check-config", "inspect", "infer", "--log-format"] {
        assert!(script.contains(word), "bash completion lacks {word}");
    }
    let dir = tempfile::tempdir().unwrap();
    let out = edge_agent(&["man", "--out", dir.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    for page in ["edge-agent.1", "edge-agent-run.1", "edge-agent-check-config.1", "edge-agent-infer.1"] {
        assert!(dir.path().join(page).exists(), "{page} missing");
    }
    // The internal `validate` child command is hidden, and so has no page.
    assert!(!dir.path().join("edge-agent-validate.1").exists());
}

#[test]
fn without_config_the_commands_read_edge_agent_config_then_etc() {
    let (_dir, path) = config_with("");
    let out = Command::new(env!("CARGO_BIN_EXE_edge-agent"))
        .arg("check-config")
        .env("EDGE_AGENT_CONFIG", &path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("dev-1"));
    if Path::new(edge_agent::config::DEFAULT_CONFIG_PATH).exists() {
        eprintln!("SKIPPED the default-path half: {} exists here", edge_agent::config::DEFAULT_CONFIG_PATH);
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_edge-agent"))
        .arg("check-config")
        .env_remove("EDGE_AGENT_CONFIG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("/etc/edge-agent/edge-agent.toml"), "{}", stderr(&out));
}

#[test]
fn check_config_exits_2_with_one_line_naming_the_problem() {
    let cases = [
        ("[telemetry]\nintervall = 3\n".to_string(), "intervall"),
        ("[[models]]\nname = \"m\"\npath = \"missing.tflite\"\n".to_string(), "missing.tflite"),
        (
            format!(
                "[[models]]\nname = \"face\"\npath = \"{}\"\n",
                model("mediapipe__face_landmark_with_attention.tflite")
            ),
            "CUSTOM:TransformTensorBilinear",
        ),
    ];
    for (models, needle) in cases {
        let (_dir, path) = config_with(&models);
        let out = edge_agent(&["check-config", "--config", path.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{needle}: {}", stderr(&out));
        let err = stderr(&out);
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(err.contains(needle), "{needle} not in {err}");
    }
}

#[test]
fn check_config_refuses_a_certificate_the_broker_would_silently_drop_or_rustls_refuse() {
    // A CN other than device_id: the broker's ACL drops every publish while acknowledging it.
    let (dir, path) = config_with("");
    device_cert(&dir.path().join("device.pem"), "dev-2");
    let out = edge_agent(&["check-config", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("CN is \"dev-2\"") && err.contains("set device_id = \"dev-2\""), "{err}");
    // X.509 v1, as `openssl x509 -req` makes it without extensions (Mosquitto's TLS guide).
    let v1 = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../mqtt/tests/fixtures/dev-7-v1.pem");
    std::fs::copy(v1, dir.path().join("device.pem")).unwrap();
    let out = edge_agent(&["check-config", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("X.509 v1") && err.contains("issue it again as v3"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}

#[test]
fn check_config_says_when_the_service_user_cannot_read_the_tls_key() {
    use std::os::unix::fs::PermissionsExt;
    let (dir, path) = config_with("");
    let key = dir.path().join("device.key");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        // Not root: a key this user cannot read is an error.
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o000)).unwrap();
        let out = edge_agent(&["check-config", "--config", path.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains("key_file") && err.contains("cannot read it") && err.contains("chmod 0640"), "{err}");
        return;
    }
    // Root reads anything; what matters is the service user, which may not exist here.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = edge_agent(&["check-config", "--config", path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    let user_exists = Command::new("getent").args(["passwd", "edge-agent"]).output().unwrap().status.success();
    if user_exists {
        let line = format!("warning: [mqtt] key_file {}: the service user edge-agent cannot read it", key.display());
        assert!(err.contains(&line) && err.contains("chown edge-agent:"), "{err}");
    } else {
        assert!(err.contains("note: no `edge-agent` user on this machine"), "{err}");
    }
}
