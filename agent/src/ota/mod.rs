//! Over-the-air model updates: receive, verify, validate, install, activate, watch.
//!
//! The pieces, in the order a deploy goes through them (the command component drives
//! them, one step at a time, from its own thread):
//!
//! 1. [`staging`]: chunks go straight into a preallocated staging file, checked against
//!    the per-chunk hashes of the signed manifest; a bitmap of what arrived survives
//!    restarts, and the missing ranges are asked for again.
//! 2. Verification: the model's SHA-256 and the validation vector's.
//! 3. [`validate`]: a child process under memory and time limits loads the model, runs the
//!    validation vector, compares the outputs and checks the latency budget.
//! 4. [`crate::store`]: the version is written (encrypted if configured) and fsynced, then
//!    made active by an atomic rename; the last N versions are kept.
//! 5. Hot swap in [`crate::serving::Registry`]: in-flight requests finish on the old
//!    version.
//! 6. [`health`]: the new version is compared with the old one for a window; a regression
//!    rolls back.
//!
//! Power loss at any step leaves either the old version active (and the staging directory
//! to resume from) or the new one; on start the agent resumes staged transfers and always
//! serves what `current` names.

pub mod deploy;
pub mod health;
pub mod staging;
pub mod transfer;
pub mod validate;
pub mod watch;
