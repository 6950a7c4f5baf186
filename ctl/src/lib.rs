//! `edgectl` as a library: signed fleet commands, over-the-air model deploys, and watching
//! the fleet, for the `edgectl` binary and for tests that drive a fleet.
//!
//! Library functions print nothing: long operations report through a progress callback
//! ([`Event`]) and return an outcome per device ([`DeviceResult`]); device failures are
//! outcomes, not errors.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use edgectl::{config::{CtlConfig, Overrides}, deploy::{deploy, DeployRequest}, link::Link};
//! use edge_proto::{command::Target, ota::ModelFormat};
//!
//! let config = CtlConfig::load("ctl.toml".as_ref(), &Overrides::default())?;
//! let signer = config.signer()?;
//! let mut link = Link::connect(&config.mqtt).await?;
//! let model = std::fs::read("kws.onnx")?;
//! let mut req = DeployRequest::new(Target::Group("lab".into()), "kws", "7", ModelFormat::Onnx, model);
//! req.wait = true;
//! let outcome = deploy(&mut link, &signer, &req, |event| eprintln!("{event:?}")).await?;
//! assert!(outcome.all_ok());
//! link.close().await;
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! ```text
//! config (ctl.toml, signing key) ─> link (MQTT) ─┬─> command: sign, publish, acks ─> track
//!                                                ├─> deploy: command + chunks ─┬─> track
//!                                                │                             └─> transfer
//!                                                └─> observe: telemetry, status
//! config ([fleet] url) ─> fleet: the fleet service's inventory over HTTP
//! report: results and status as text or JSON (for the binary)
//! ```
//!
//! - [`config`]: `ctl.toml` (the agent's `[mqtt]` table and `signing_key`) and flag
//!   overrides.
//! - [`fleet`]: the fleet service's HTTP API (`edgectl devices`).
//! - [`keys`]: `edgectl keygen`, reading the signing key, and the [`keys::Signer`] (key and
//!   fleet) every command is signed with.
//! - [`link`]: the broker connection; its event loop runs on a task of its own.
//! - [`command`]: [`command::send_command`], and the signing, topic and ack handling
//!   shared with deploys.
//! - [`mod@deploy`]: [`deploy::deploy`]: manifest, first pass, repairs.
//! - [`track`]: per-device state of one command (pure).
//! - [`transfer`]: which chunk goes next, where, and when (pure).
//! - [`observe`]: telemetry and retained status.
//! - [`npy`]: `.npy` headers (dtype and shape).
//! - [`report`]: tables and JSON.
//! - [`tally`]: a group's devices counted per stage (pure), for progress above a handful.
//! - [`pki`]: `edgectl pki`: the fleet CA, the broker's, devices' and operators'
//!   certificates (no broker involved); [`cli_pki`] is its command line.
#![deny(missing_docs)]

pub mod cli_pki;
pub mod command;
pub mod config;
pub mod cosign;
pub mod deploy;
pub mod deployments;
mod files;
pub mod fleet;
pub mod keys;
pub mod link;
pub mod npy;
pub mod observe;
pub mod pki;
pub mod report;
pub mod rollout;
pub mod tally;
pub mod track;
pub mod transfer;

pub use command::{send_command, CommandError, CommandOutcome, CommandRequest, Event};
pub use deploy::{deploy, DeployError, DeployOutcome, DeployRequest};
pub use link::{Link, LinkError};
pub use track::{DeviceResult, Goal, Outcome};
