//! Reference in, reference out: every shipped model with a reference runs through the
//! engine and matches what its native runtime produced.

mod common;

use std::sync::Arc;

use common::*;
use edge_agent::engine::{LoadOptions, Model};
use tract_core::internal::*;

/// Loads `file_prefix` with concrete shapes from its reference inputs, runs one step and
/// compares every output.
fn check(file_prefix: &str, pinned: &[&str]) {
    let e = entry(file_prefix);
    let path = models_dir().join(e["file"].as_str().unwrap());
    let inputs = references(&e, "ref_inputs");
    let outputs = references(&e, "ref_outputs");
    assert!(!inputs.is_empty() && !outputs.is_empty(), "{file_prefix}: no reference");
    let (pins, open): (Vec<_>, Vec<_>) = inputs.into_iter().partition(|(n, _)| pinned.contains(&n.as_str()));
    let options = LoadOptions {
        shapes: open.iter().map(|(n, t)| (n.clone(), t.shape().to_vec())).collect(),
        pins,
        ..Default::default()
    };
    let model = Arc::new(Model::load(&path, &options).unwrap_or_else(|e| panic!("{file_prefix}: {e}")));
    let feed: Vec<Tensor> = model
        .inputs()
        .iter()
        .map(|spec| {
            open.iter()
                .find(|(n, _)| *n == spec.name)
                .unwrap_or_else(|| panic!("{file_prefix}: no reference for input {:?}", spec.name))
                .1
                .clone()
        })
        .collect();
    let got = model.session().unwrap().run(feed).unwrap_or_else(|e| panic!("{file_prefix}: {e}"));
    assert_eq!(got.len(), outputs.len(), "{file_prefix}: output count");
    for (k, (name, want)) in outputs.iter().enumerate() {
        assert_close(&format!("{file_prefix} output {k} ({name})"), &got[k], want, 2.0);
    }
}

#[test]
fn silero_vad_matches_reference() {
    check("silero-vad__silero_vad_16k_op15", &["sr"]);
}

#[test]
fn hello_deepa_matches_reference() {
    check("openwakeword-js__hello_deepa", &[]);
}

#[test]
fn ppocr_cls_matches_reference() {
    check("rapidocr-onnxruntime__ch_ppocr_mobile_v2.0_cls_infer", &[]);
}

#[test]
fn ppocr_v6_det_matches_reference() {
    check("rapidocr__PP-OCRv6_det_small", &[]);
}

#[test]
fn face_detection_short_range_matches_reference() {
    check("mediapipe__face_detection_short_range", &[]);
}

#[test]
fn face_detection_full_range_sparse_matches_reference() {
    check("mediapipe__face_detection_full_range_sparse", &[]);
}

#[test]
fn hand_recrop_matches_reference() {
    check("mediapipe__hand_recrop", &[]);
}

#[test]
fn selfie_segmentation_matches_reference() {
    check("mediapipe__selfie_segmentation", &[]);
}

#[test]
fn okay_nabu_single_step_matches_reference() {
    check("pymicro-wakeword__okay_nabu", &[]);
}

#[test]
fn melspectrogram_matches_reference() {
    check("pyopen-wakeword__melspectrogram", &[]);
}

#[test]
fn embedding_model_matches_reference() {
    check("pyopen-wakeword__embedding_model", &[]);
}
