//! Fuzz targets: every parser of bytes that reach the agent from outside or from disk, as
//! one function each taking arbitrary bytes. A target passes when it returns; a panic, an
//! abort or a hang is a finding.
//!
//! Two drivers call them: `fuzz/` (cargo-fuzz, coverage-guided libFuzzer, for long runs by
//! hand: `bash fuzz/run.sh TARGET SECONDS`) and `agent/tests/fuzz_short.rs` (a fixed number
//! of deterministic mutations of the seed corpus in `fuzz/corpus/`, on the stable toolchain,
//! in every test run). A finding becomes a regression test named after it, beside the code
//! it broke.
//!
//! | target | what it parses |
//! |---|---|
//! | `command` | a signed command: size, version, envelope, signatures ([`edge_proto::command::verify`]) |
//! | `chunk` | an OTA chunk ([`edge_proto::ota::decode_chunk`]) |
//! | `need` | a repair request, and the status and telemetry messages beside it |
//! | `npy` | a `.npy` tensor (local API, `infer` inputs, validation vectors) |
//! | `window` | the replay window file |
//! | `outbox` | an outbox segment file, opened and drained |
//! | `operators` | the key changes file |
//! | `json` | a TF Serving JSON request body, against a two-input signature |
//! | `profile` | a stored reference profile, checked, then used for drift |
//! | `tflite`, `onnx` | a model, imported and planned |

use std::time::Duration;

use edge_proto::command::{verify, SigningKey, VerifyingKey};

/// A fuzz target: returns, or has found something.
pub type Target = fn(&[u8]);

/// The targets by name, for the drivers.
pub const TARGETS: [(&str, Target); 12] = [
    ("command", command),
    ("chunk", chunk),
    ("need", need),
    ("npy", npy),
    ("window", window),
    ("outbox", outbox),
    ("operators", operators),
    ("tflite", tflite),
    ("onnx", onnx),
    ("manifest", manifest),
    ("json", json),
    ("profile", profile),
];

/// The key the `command` corpus is signed with: a fuzzed command that keeps a valid
/// signature reaches the checks after it.
pub fn corpus_key() -> SigningKey {
    SigningKey::from_bytes(&[0x5e; 32])
}

fn trusted() -> [VerifyingKey; 1] {
    [corpus_key().verifying_key()]
}

/// A received command. What verifies must encode and verify again to the same command.
pub fn command(data: &[u8]) {
    if let Ok(cmd) = verify(data, &trusted()) {
        let again = verify(&edge_proto::encode(&cmd), &trusted()).expect("a verified command re-encodes and verifies");
        assert_eq!(again, cmd);
    }
}

/// An OTA chunk.
pub fn chunk(data: &[u8]) {
    if let Ok(c) = edge_proto::ota::decode_chunk(data) {
        assert_eq!(edge_proto::ota::decode_chunk(&edge_proto::encode(&c)).expect("round trip"), c);
    }
}

/// A repair request, a status and a telemetry sample (the fleet side reads them all).
pub fn need(data: &[u8]) {
    let _ = edge_proto::decode::<edge_proto::ota::Need>(data);
    let _ = edge_proto::status::decode(data);
    let _ = edge_proto::telemetry::decode(data);
}

/// A manifest inside a content deploy: decoded, then its chunk ranges walked.
pub fn manifest(data: &[u8]) {
    if let Ok(m) = postcard::from_bytes::<edge_proto::ota::Manifest>(data) {
        let _ = m.check_consistent();
    }
}

/// A stored reference profile (`models/NAME/VERSION/profile`): what decodes and passes
/// its check must re-encode to itself and serve as a drift reference.
pub fn profile(data: &[u8]) {
    let Ok(p) = edge_proto::decode::<edge_proto::profile::Profile>(data) else { return };
    if p.check().is_err() {
        return;
    }
    assert_eq!(edge_proto::decode::<edge_proto::profile::Profile>(&edge_proto::encode(&p)).expect("round trip"), p);
    let now = std::time::Instant::now();
    for t in &p.tensors {
        let mut w = crate::drift::Window::new(t, Duration::from_secs(1));
        w.add(&[t.min as f32, t.max as f32, f32::NAN, 0.0, -1e30, 1e30], now);
        assert!(w.psi().is_some_and(f64::is_finite), "{t:?}");
    }
}

/// A `.npy` tensor; what parses must write back and parse to the same tensor.
pub fn npy(data: &[u8]) {
    if let Ok(t) = crate::npy::from_bytes(data) {
        if let Ok(bytes) = crate::npy::to_bytes(&t) {
            assert_eq!(crate::npy::from_bytes(&bytes).expect("a written .npy parses"), t);
        }
    }
}

/// A fresh empty directory under the system's temporary directory, removed on drop.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn scratch() -> Scratch {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("edge-agent-fuzz-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temporary directory");
    Scratch(dir)
}

/// The replay window file.
pub fn window(data: &[u8]) {
    let dir = scratch();
    let path = dir.path().join(crate::commands::WINDOW_FILE);
    std::fs::write(&path, data).expect("write");
    if let Ok(mut w) = crate::commands::ReplayWindow::open(&path, 64) {
        let _ = w.record([1; 16], u64::MAX, 0);
    }
}

/// An outbox segment (the first 24 bytes are its cursor file), opened and drained.
pub fn outbox(data: &[u8]) {
    let dir = scratch();
    let (cursor, segment) = data.split_at(data.len().min(24));
    std::fs::write(dir.path().join("cursor"), cursor).expect("write");
    std::fs::write(dir.path().join("seg-000001.log"), segment).expect("write");
    if let Ok(mut o) = crate::outbox::Outbox::open(dir.path(), 1 << 20, Duration::from_secs(3600)) {
        for _ in 0..64 {
            match o.peek(0) {
                Ok(Some(_)) => {
                    if o.ack().is_err() {
                        break;
                    }
                }
                _ => break,
            }
        }
    }
}

/// The key changes file.
pub fn operators(data: &[u8]) {
    let dir = scratch();
    std::fs::write(dir.path().join(crate::commands::operators::OPERATORS_FILE), data).expect("write");
    if let Ok(ops) = crate::commands::Operators::load(vec![], dir.path()) {
        let _ = ops.describe();
    }
}

fn import(format: crate::engine::Format, data: &[u8]) {
    let _ = crate::engine::Model::load_bytes(format, data, &crate::engine::LoadOptions::default());
}

/// A TFLite model.
pub fn tflite(data: &[u8]) {
    import(crate::engine::Format::Tflite, data)
}

/// An ONNX model.
pub fn onnx(data: &[u8]) {
    import(crate::engine::Format::Onnx, data)
}

/// A TF Serving JSON request body (`/v1/models/M:predict`), for a model taking a float
/// tensor with a free dimension and a fixed-size integer one.
pub fn json(data: &[u8]) {
    use crate::serving::json::{parse_request, InputSpec};
    use tract_core::prelude::DatumType;
    let specs = [
        InputSpec { name: "x", dtype: DatumType::F32, shape: &[Some(1), None, Some(3)] },
        InputSpec { name: "y", dtype: DatumType::I64, shape: &[Some(2)] },
    ];
    let _ = parse_request(data, &specs);
}
