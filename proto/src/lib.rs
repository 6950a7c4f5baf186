//! Wire types shared by `edge-agent` and `edgectl`: the topic layout and the messages.
//!
//! # Layout
//!
//! - [`topics`]: every topic, built in one place under `{prefix}/{device}/…`.
//! - [`telemetry`]: the periodic sample of the box, its models and its link.
//! - [`status`]: the retained online/offline status.
//! - [`command`]: signed fleet commands (envelope, signing, verification) and their acks.
//! - [`inventory`]: the fleet service's device list, as its HTTP API returns it.
//! - [`deployments`]: the fleet service's deployments, as its HTTP API takes and returns them.
//! - [`ota`]: the model transfer: manifest, chunks, repair requests.
//! - [`profile`]: reference profiles of a model's tensors (bins, fractions, summary) and
//!   the drift index a device computes against them.
//! - [`cdc`]: content-defined chunk boundaries, so that a new version's unchanged bytes
//!   cut into the same chunks as the old one's.
//! - [`codec`]: postcard encoding with an explicit schema version, and a size bound
//!   checked before decoding.
//!
//! postcard has no schema evolution: every message starts with a version, enums grow only
//! at the end, and a receiver refuses versions it does not know.
#![deny(missing_docs)]

pub mod cdc;
pub mod codec;
pub mod command;
pub mod deployments;
pub mod inventory;
pub mod ota;
pub mod profile;
pub mod rollouts;
pub mod status;
pub mod telemetry;
pub mod topics;

pub use codec::{decode, decode_bounded, encode, ProtoError, MAX_MESSAGE_BYTES};
