//! edge-agent: an inference agent for fleets of small Linux boxes.
//!
//! # Layout
//!
//! - [`engine`]: the inference core. It loads `.onnx`, `.tflite` and `.nnef.tgz` models
//!   into tract, with the project's own TFLite importer ([`engine::tflite`]) and ONNX
//!   fixes ([`engine::onnx`]), optimises them once (with the engine's own convolution ops,
//!   [`engine::direct_conv`], and SIMD kernels, [`engine::kernels`], where tract is slow)
//!   and runs them through reusable sessions that carry model state.
//! - [`config`]: the TOML configuration, checked in full with errors that name the key.
//! - [`npy`]: `.npy` tensors in and out, for the CLI and tests.
//! - [`outbox`]: the on-disk store-and-forward queue that holds telemetry while the broker is away.
//! - [`daemon`]: `edge-agent run`, which wires the components below and shuts them down in
//!   order on SIGTERM:
//!   - [`telemetry`] samples the box (sysinfo), the agent and [`stats`] on an interval;
//!     the serving workers describe what each model version is given and gives
//!     ([`tensor_stats`]) and how far it has moved from its reference profile ([`drift`]);
//!   - [`link`] carries samples to the broker over mutual-TLS MQTT, through the [`outbox`]
//!     on disk, with the topic layout and messages of `edge-proto`;
//!   - [`http`] serves `/metrics`, `/healthz` and `/readyz`, and the local inference API
//!     of [`serving`];
//!   - [`commands`] checks the signed commands the link receives and routes them on their
//!     own thread: model updates through [`ota`] (transfer, validation, install, trial),
//!     status, configuration, inference, erase and restart, reporting each step in an ack;
//!   - [`models`] is the one place that decides which version of each model serves
//!     (configuration file or [`store`]), and runs trials: a new version is on trial until
//!     its health window ends with the agent alive;
//!   - [`supervisor`] runs the components: a failure or panic starts the orderly shutdown
//!     and an exit code from [`exit`].
//! - [`cli`]: the `edge-agent` commands `main` dispatches to (`run`, `check-config`,
//!   `inspect`, `infer`, `validate`).
//! - [`sdnotify`]: systemd READY/STATUS/WATCHDOG notifications.
//! - [`fsutil`]: durable file writes (atomic replacement; the log the power-cut tests replay).
//! - [`disk`]: free space, real preallocation, and the reserve that keeps bookkeeping
//!   writable on a full file system.
//! - [`memory`]: the allocator tuning that keeps inference buffers on the heap.

pub mod cli;
pub mod clock;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod disk;
pub mod drift;
pub mod engine;
pub mod exit;
pub mod fsutil;
pub mod fuzzing;
pub mod http;
pub mod link;
pub mod memory;
pub mod models;
pub mod npy;
pub mod ota;
pub mod outbox;
pub mod sandbox;
pub mod sdnotify;
pub mod serving;
pub mod stats;
pub mod store;
pub mod supervisor;
pub mod telemetry;
pub mod tensor_stats;
