//! edge-agent: an inference agent for fleets of small Linux boxes.
//!
//! # Layout
//!
//! - [`engine`]: the inference core. It loads `.onnx`, `.tflite` and `.nnef.tgz` models
//!   into tract, with the project's own TFLite importer ([`engine::tflite`]) and ONNX
//!   fixes ([`engine::onnx`]), optimises them once and runs them through reusable
//!   sessions that carry model state.
//! - [`config`]: the TOML configuration, checked in full with errors that name the key.
//! - [`npy`]: `.npy` tensors in and out, for the CLI and tests.
//! - [`outbox`]: the on-disk store-and-forward queue that holds telemetry while the broker is away.
//!
//! The fleet link, telemetry, OTA and the local API build on the engine; they arrive with
//! their own modules.

pub mod config;
pub mod engine;
pub mod npy;
pub mod outbox;
