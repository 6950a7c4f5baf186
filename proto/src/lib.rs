//! Wire types shared by `edge-agent` and `edgectl`.
//!
//! Empty for now: the fleet link fills it (topics, telemetry and command envelopes).
#![deny(missing_docs)]
