//! The `edge-agent` commands, one module each; `main` parses the command line into their
//! `Args` and calls their `run`, which returns a [`Failure`](crate::exit::Failure) with its
//! exit code.
//!
//! # Layout
//!
//! - [`run`]: `edge-agent run`, the daemon ([`crate::daemon`]) with its logging;
//! - [`check_config`]: validates a configuration and loads the models it names;
//! - [`inspect`]: a model's format, signature, operators and support;
//! - [`infer`]: runs a model on `.npy` inputs, with [`profile`] for `--repeat` timings and
//!   `--profile` reports;
//! - [`reference`]: `edge-agent profile`, a model's reference profile from sample inputs
//!   (for drift; `edgectl deploy --profile` carries it);
//! - [`validate`]: the OTA model check the agent runs in a child process.

pub mod check_config;
pub mod infer;
pub mod inspect;
pub mod profile;
pub mod reference;
pub mod run;
pub mod validate;

use std::path::Path;

use anyhow::{bail, Context, Result};
use tract_core::internal::Tensor;

use crate::engine::{self, TensorSpec};
use crate::npy;

/// `NAME=VALUE` split at the first `=`; `what` names the flag in the error.
fn split_pair<'a>(s: &'a str, what: &str) -> Result<(&'a str, &'a str)> {
    s.split_once('=').with_context(|| format!("{what} {s:?}: expected NAME=VALUE"))
}

/// Pins become scalars of the input's declared type, or the contents of a .npy file.
fn parse_pins(pins: &[String], declared: &[TensorSpec]) -> Result<Vec<(String, Tensor)>> {
    pins.iter()
        .map(|p| {
            let (name, value) = split_pair(p, "--pin")?;
            if !declared.iter().any(|s| s.name == name) {
                bail!("--pin {name}: no such input (inputs: {})", names(declared));
            }
            let tensor = if value.ends_with(".npy") {
                npy::read(Path::new(value))?
            } else {
                let v: f64 = value.parse().with_context(|| format!("--pin {name}: {value:?} is not a number"))?;
                engine::scalar_pin(declared, name, v)?
            };
            Ok((name.to_string(), tensor))
        })
        .collect()
}

fn names(specs: &[TensorSpec]) -> String {
    specs.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
}
