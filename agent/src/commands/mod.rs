//! Fleet commands: the gate that decides whether a received command is accepted
//! ([`gate`]: signatures, fleet, expiry, target, the signing key's rights, replay), who may
//! sign what ([`operators`]), and the component that carries out what it accepts
//! ([`control`]).

mod audit;
pub mod control;
mod erase;
pub mod gate;
mod keys;
pub mod operators;
pub mod settings;
mod status;
mod window;

pub use gate::{Gate, Policy, Rejection, Unrecorded, Verdict, CLOCK_SKEW_MS};
pub use keys::{parse_key, parse_trusted_keys, TrustedKeyError};
pub use operators::{Operator, Operators};
pub use window::{ReplayWindow, WindowError, MAX_ENTRIES, WINDOW_FILE};
