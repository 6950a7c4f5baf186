//! Shared helpers for the model tests: the shipped models, their manifest and the
//! numerical contract.

#![allow(dead_code)]

pub mod serve;

use std::path::PathBuf;

use edge_agent::npy;
use serde_json::Value;
use tract_core::internal::*;

/// `models/` at the top of the repository.
pub fn models_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("models")
}

/// The manifest entries, one per model file.
pub fn manifest() -> Vec<Value> {
    let text = std::fs::read_to_string(models_dir().join("MANIFEST.json")).expect("models/MANIFEST.json");
    serde_json::from_str::<Vec<Value>>(&text).expect("manifest is a JSON list")
}

pub fn entry(file_prefix: &str) -> Value {
    manifest()
        .into_iter()
        .find(|e| e["file"].as_str().unwrap().starts_with(file_prefix))
        .unwrap_or_else(|| panic!("no manifest entry for {file_prefix}"))
}

/// Reference inputs and outputs of a manifest entry, as `(tensor name, tensor)`.
pub fn references(e: &Value, key: &str) -> Vec<(String, Tensor)> {
    e[key]
        .as_array()
        .unwrap_or(&vec![])
        .iter()
        .map(|pair| {
            let file = pair[0].as_str().unwrap();
            let name = pair[1].as_str().unwrap().to_string();
            (name, npy::read(&models_dir().join(file)).unwrap())
        })
        .collect()
}

/// Checks one output against its reference: float within 1e-3 of the reference's largest
/// magnitude, integers within `lsb` steps.
pub fn assert_close(what: &str, got: &Tensor, want: &Tensor, lsb: f64) {
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    assert_eq!(got.datum_type().unquantized(), want.datum_type().unquantized(), "{what}: dtype");
    let g = got.cast_to::<f64>().unwrap();
    let w = want.cast_to::<f64>().unwrap();
    let g = g.try_as_plain_ram().unwrap();
    let w = w.try_as_plain_ram().unwrap();
    let (g, w) = (g.as_slice::<f64>().unwrap(), w.as_slice::<f64>().unwrap());
    let max_diff = g.iter().zip(w).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    if want.datum_type().is_float() {
        let scale = w.iter().map(|x| x.abs()).fold(0.0, f64::max).max(1e-12);
        assert!(
            max_diff <= 1e-3 * scale,
            "{what}: max diff {max_diff:e} over {:e} (1e-3 of max |ref| {scale:e})",
            1e-3 * scale
        );
    } else {
        assert!(max_diff <= lsb, "{what}: {max_diff} LSB off, over {lsb}");
    }
}
