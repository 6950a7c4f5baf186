//! Engine behaviour beyond single reference runs: NNEF, ONNX state bindings, threads.

mod common;

use std::io::Write;
use std::sync::Arc;

use common::*;
use edge_agent::engine::{EngineError, LoadOptions, Model};
use tract_core::internal::*;
use tract_onnx::prelude::{Framework, InferenceModelExt};

type Named = Vec<(String, Tensor)>;

fn reference(prefix: &str) -> (Named, Named) {
    let e = entry(prefix);
    (references(&e, "ref_inputs"), references(&e, "ref_outputs"))
}

#[test]
fn nnef_archive_loads_and_matches_the_onnx_reference() {
    // tract writes the ONNX model as an NNEF archive; the agent loads the .nnef.tgz.
    let prefix = "openwakeword-js__hello_deepa";
    let typed = tract_onnx::onnx()
        .model_for_path(models_dir().join(format!("{prefix}.onnx")))
        .unwrap()
        .into_typed()
        .unwrap()
        .into_decluttered()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hello_deepa.nnef.tgz");
    let gz = flate2::write::GzEncoder::new(std::fs::File::create(&path).unwrap(), flate2::Compression::default());
    let mut gz = tract_nnef::nnef().write_to_tar(&typed, gz).unwrap();
    gz.flush().unwrap();
    gz.finish().unwrap();

    let model = Arc::new(Model::load(&path, &LoadOptions::default()).unwrap());
    let (inputs, outputs) = reference(prefix);
    let got = model.session().unwrap().run(vec![inputs[0].1.clone()]).unwrap();
    assert_close("hello_deepa via NNEF", &got[0], &outputs[0].1, 0.0);
}

#[test]
fn onnx_state_binding_carries_state_between_calls() {
    // Silero VAD with `state -> stateN` bound: two calls in one session must equal two
    // stateless calls where the second is fed the first's stateN by hand.
    let prefix = "silero-vad__silero_vad_16k_op15";
    let path = models_dir().join(format!("{prefix}.onnx"));
    let (inputs, _) = reference(prefix);
    let audio = inputs.iter().find(|(n, _)| n == "input").unwrap().1.clone();
    let sr = inputs.iter().find(|(n, _)| n == "sr").unwrap().1.clone();
    let shapes = vec![("input".to_string(), audio.shape().to_vec()), ("state".to_string(), vec![2, 1, 128])];
    let pins = vec![("sr".to_string(), sr)];

    let bound = LoadOptions {
        pins: pins.clone(),
        shapes: shapes.clone(),
        state: vec![("state".into(), "stateN".into())],
        ..Default::default()
    };
    let model = Arc::new(Model::load(&path, &bound).unwrap());
    assert!(model.is_stateful());
    assert_eq!(model.inputs().len(), 1, "state is no longer a public input");
    assert_eq!(model.outputs().len(), 1, "stateN is no longer a public output");
    let mut session = model.session().unwrap();
    let first = session.run(vec![audio.clone()]).unwrap();
    let second = session.run(vec![audio.clone()]).unwrap();

    let free = Arc::new(Model::load(&path, &LoadOptions { pins, shapes, ..Default::default() }).unwrap());
    let mut plain = free.session().unwrap();
    let zeros = Tensor::zero::<f32>(&[2, 1, 128]).unwrap();
    let step1 = plain.run(vec![audio.clone(), zeros]).unwrap();
    let step2 = plain.run(vec![audio.clone(), step1[1].clone()]).unwrap();
    assert_close("first call", &first[0], &step1[0], 0.0);
    assert_close("second call", &second[0], &step2[0], 0.0);
    assert_ne!(step1[1], step2[1], "the state moved");

    session.reset();
    let again = session.run(vec![audio]).unwrap();
    assert_close("after reset", &again[0], &first[0], 0.0);
}

#[test]
fn unknown_state_binding_is_a_clear_error() {
    let path = models_dir().join("silero-vad__silero_vad_16k_op15.onnx");
    let shapes = vec![("input".to_string(), vec![1, 576]), ("state".to_string(), vec![2, 1, 128])];
    let options = LoadOptions { state: vec![("nope".into(), "stateN".into())], shapes, ..Default::default() };
    let err = Model::load(&path, &options).unwrap_err();
    assert!(matches!(err, EngineError::Invalid(ref m) if m.contains("\"nope\"")), "{err}");
}

#[test]
fn threads_give_the_same_result() {
    let prefix = "rapidocr-onnxruntime__ch_ppocr_mobile_v2.0_cls_infer";
    let path = models_dir().join(format!("{prefix}.onnx"));
    let (inputs, outputs) = reference(prefix);
    let shapes = vec![(inputs[0].0.clone(), inputs[0].1.shape().to_vec())];
    let model = Arc::new(Model::load(&path, &LoadOptions { threads: 2, shapes, ..Default::default() }).unwrap());
    let got = model.session().unwrap().run(vec![inputs[0].1.clone()]).unwrap();
    assert_close("2 threads", &got[0], &outputs[0].1, 0.0);
}

#[test]
fn wrong_input_shape_or_type_is_refused_before_running() {
    let path = models_dir().join("openwakeword-js__hello_deepa.onnx");
    let model = Arc::new(Model::load(&path, &LoadOptions::default()).unwrap());
    let mut session = model.session().unwrap();
    let err = session.run(vec![Tensor::zero::<f32>(&[1, 24, 96]).unwrap()]).unwrap_err().to_string();
    assert!(err.contains("expected shape [1,25,96]"), "{err}");
    let err = session.run(vec![Tensor::zero::<i8>(&[1, 25, 96]).unwrap()]).unwrap_err().to_string();
    assert!(err.contains("expected F32"), "{err}");
    let err = session.run(vec![]).unwrap_err().to_string();
    assert!(err.contains("expected 1 inputs"), "{err}");
}

#[test]
fn silero_without_input_shapes_says_which_if_nodes_need_them() {
    // Its If conditions compare tensor lengths: with a symbolic input length they cannot be
    // decided at load, and the error says how to fix that.
    let path = models_dir().join("silero-vad__silero_vad_16k_op15.onnx");
    let err = Model::load(&path, &LoadOptions::default()).unwrap_err().to_string();
    assert!(err.contains("If nodes undecided at load") && err.contains("input shapes"), "{err}");
}

#[test]
fn checking_in_a_child_reports_support_and_survives_what_kills_the_child() {
    use edge_agent::engine::isolate::{check_in_child, Limits};
    use std::time::Duration;
    let program = std::path::Path::new(env!("CARGO_BIN_EXE_edge-agent"));

    let good = check_in_child(program, &models_dir().join("mediapipe__hand_recrop.tflite"), Limits::default()).unwrap();
    assert!(good.supported);
    assert_eq!(good.inputs[0].shape, ["1", "256", "256", "3"]);

    let refused = check_in_child(
        program,
        &models_dir().join("mediapipe__face_landmark_with_attention.tflite"),
        Limits::default(),
    )
    .unwrap();
    assert!(!refused.supported);
    assert_eq!(refused.missing_ops.len(), 3);

    // 8 MiB of address space cannot even map the loader: the child dies, the caller gets an
    // error and carries on.
    let starved = Limits { memory_bytes: 8 << 20, timeout: Duration::from_secs(30) };
    let err = check_in_child(program, &models_dir().join("rapidocr__PP-OCRv6_det_small.onnx"), starved).unwrap_err();
    assert!(matches!(err, EngineError::Invalid(_)), "{err}");

    // A deadline too short for the load kills the child.
    let hurried = Limits { memory_bytes: 1 << 30, timeout: Duration::from_millis(1) };
    let err = check_in_child(program, &models_dir().join("rapidocr__PP-OCRv6_det_small.onnx"), hurried).unwrap_err();
    assert!(err.to_string().contains("did not finish"), "{err}");
}

#[test]
fn checking_in_a_child_works_under_qemu_user_emulation() {
    // An arm image tested on an x86 machine runs its children under qemu-user, which writes
    // the /proc/self/maps it emulates to a temporary file: the child's file-size limit must
    // leave room for it (a limit of 0 killed the child with SIGXFSZ before main).
    // scripts/setup.sh installs qemu-user.
    use edge_agent::engine::isolate::{run_child, Limits};
    let qemu = format!("qemu-{}", std::env::consts::ARCH);
    let agent = std::ffi::OsStr::new(env!("CARGO_BIN_EXE_edge-agent"));
    let model = models_dir().join("mediapipe__hand_recrop.tflite");
    let args = [agent, "inspect".as_ref(), "--model".as_ref(), model.as_os_str(), "--json".as_ref()];
    let out = run_child(std::path::Path::new(&qemu), &args, Limits::default(), "recrop")
        .unwrap_or_else(|e| panic!("{qemu} (scripts/setup.sh installs qemu-user): {e}"));
    let report: edge_agent::engine::Inspection = serde_json::from_str(&out).unwrap();
    assert!(report.supported, "{out}");
}
