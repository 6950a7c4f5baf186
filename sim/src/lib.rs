//! `edge-sim`: many simulated devices in one process, each with its own MQTT session over
//! mutual TLS, speaking the real protocol with the real `edge-proto` types; and the fleet
//! benchmark that runs them against one Mosquitto and one `edge-fleet` (bench/fleet.sh).
//!
//! A simulated device is what the fleet sees of an agent: its retained status (groups,
//! agent version, models with active version and health; a last will), telemetry at a
//! fixed rate (current version, `seq` and `ts`, a model's latency histogram), and the
//! device side of a deployment (signed command checked in the agent's order, acks in the
//! agent's order, chunks checked against the manifest, repair requests after a stall, the
//! new version reported active). It holds no model: chunks are hashed as they arrive.
//!
//! # Layout
//!
//! ```text
//! bench (phases, reports) ──spawns──> session (one MQTT session per device: I/O only)
//!                                        └─> device (pure: gate, acks, status, telemetry)
//!                                               └─> receiver (pure: one transfer's chunks)
//! fleet_process: the edge-fleet process under test; procfs: its CPU time and memory
//! ```
//!
//! - [`device`] and [`receiver`] are state machines without I/O, tested under simulated
//!   time;
//! - [`session`] is the thin shell that carries their output over rumqttc;
//! - [`bench`] starts the real parts (broker, PostgreSQL, Prometheus through the test
//!   harness `edge-it`; the `edge-fleet` and `edgectl` binaries) and measures.

pub mod bench;
pub mod device;
pub mod fleet_process;
pub mod procfs;
pub mod receiver;
pub mod session;
