//! `edge-agent profile`: a model's reference profile ([`edge_proto::profile`]) from sample
//! inputs, made by running the model on each of them. The JSON it prints (or writes with
//! `--out`) is what `edgectl deploy --profile FILE` signs into the deploy, and what the
//! device's drift is measured against.
//!
//! # The sample directory
//!
//! One request per entry of `--inputs DIR`, in name order:
//!
//! - `DIR/*.npy`: one file per request, for a model with one (open) input;
//! - `DIR/*/`: one directory per request, for any model, holding one `.npy` per input
//!   named after it (`NAME.npy`) or its position (`0.npy`, `1.npy`, …).
//!
//! The shapes of the first request are the ones the model is loaded with; every request
//! must have them (as the serving workers require). Each request runs from the model's
//! initial state.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use edge_proto::codec::Versioned;
use edge_proto::profile::{Profile, TensorProfile, DEFAULT_BINS, MAX_EDGES};
use tract_core::internal::Tensor;

use crate::drift::label;
use crate::engine::{self, LoadOptions, Model, TensorSpec};
use crate::exit::Failure;
use crate::npy;

/// The flags of `edge-agent profile`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Model file (.onnx, .tflite).
    #[arg(long)]
    pub model: PathBuf,
    /// Sample requests: DIR/*.npy (one input) or DIR/*/NAME.npy (any number of inputs).
    #[arg(long, value_name = "DIR")]
    pub inputs: PathBuf,
    /// Write the profile here instead of printing it.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Quantile bins between each tensor's minimum and maximum (underflow and overflow
    /// come on top).
    #[arg(long, default_value_t = DEFAULT_BINS)]
    pub bins: usize,
    /// Fix an input at load: NAME=VALUE (as the device's [[models]] pins or the deploy's).
    #[arg(long = "pin", value_name = "NAME=VALUE")]
    pub pins: Vec<String>,
}

/// Runs the model on every sample request and prints or writes the profile.
pub fn run(args: Args) -> Result<(), Failure> {
    Ok(profile(&args)?)
}

fn profile(args: &Args) -> Result<()> {
    if !(1..MAX_EDGES).contains(&args.bins) {
        bail!("--bins {}: between 1 and {}", args.bins, MAX_EDGES - 1);
    }
    let bytes = std::fs::read(&args.model).with_context(|| format!("--model {}", args.model.display()))?;
    let declared = engine::declared_inputs(&args.model)?;
    let pins = super::parse_pins(&args.pins, &declared)?;
    let open: Vec<&TensorSpec> = declared.iter().filter(|d| !pins.iter().any(|(n, _)| *n == d.name)).collect();
    let requests = read_requests(&args.inputs, &open)?;
    let first = &requests[0].1;
    let shapes = open.iter().zip(first).map(|(d, t)| (d.name.clone(), t.shape().to_vec())).collect();
    let model = std::sync::Arc::new(Model::load(&args.model, &LoadOptions { pins, shapes, ..LoadOptions::default() })?);
    let mut session = model.session()?;
    let (inputs, outputs) = (model.inputs(), model.outputs());
    let mut values: Vec<Vec<f32>> = vec![vec![]; inputs.len() + outputs.len()];
    for (path, request) in &requests {
        if request.iter().zip(first).any(|(t, f)| t.shape() != f.shape()) {
            bail!("{}: shapes differ from the first request's (every request needs the same)", path.display());
        }
        session.reset();
        let out = session.run(request.clone()).with_context(|| format!("{}", path.display()))?;
        for (slot, t) in values.iter_mut().zip(request.iter().chain(&out)) {
            let Some(f) = crate::tensor_stats::as_f32(t) else { continue };
            slot.extend_from_slice(f.try_as_plain_ram()?.as_slice::<f32>()?);
        }
    }
    let labels = inputs.iter().map(|s| label(false, &s.name)).chain(outputs.iter().map(|s| label(true, &s.name)));
    let mut tensors = vec![];
    for (name, mut v) in labels.zip(values) {
        match TensorProfile::from_values(&name, &mut v, args.bins) {
            Some(t) => {
                eprintln!(
                    "{name}: {} bins, {} values, mean {:.6} std {:.6} min {:.6} max {:.6}",
                    t.fractions.len(),
                    t.count,
                    t.mean,
                    t.std,
                    t.min,
                    t.max
                );
                tensors.push(t);
            }
            None => eprintln!("{name}: no finite numeric values; not profiled"),
        }
    }
    let profile = Profile {
        version: Profile::VERSION,
        model_sha256: edge_proto::command::hex(&edge_proto::ota::sha256(&bytes)),
        samples: requests.len() as u32,
        tensors,
    };
    profile.check().map_err(|e| anyhow::anyhow!("the profile made is unusable: {e}"))?;
    let json = serde_json::to_string_pretty(&profile)? + "\n";
    match &args.out {
        Some(path) => {
            std::fs::write(path, json).with_context(|| format!("--out {}", path.display()))?;
            eprintln!("wrote {} ({} requests, {} tensors)", path.display(), requests.len(), profile.tensors.len());
        }
        None => print!("{json}"),
    }
    Ok(())
}

/// The requests in `dir`, each with its tensors in the order of `open`.
fn read_requests(dir: &Path, open: &[&TensorSpec]) -> Result<Vec<(PathBuf, Vec<Tensor>)>> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("--inputs {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .with_context(|| format!("--inputs {}", dir.display()))?;
    entries.retain(|p| p.is_dir() || p.extension().is_some_and(|e| e == "npy"));
    entries.sort();
    if entries.is_empty() {
        bail!("--inputs {}: no .npy files or request directories", dir.display());
    }
    entries
        .into_iter()
        .map(|p| {
            let tensors = if p.is_dir() {
                request_dir(&p, open)?
            } else if open.len() == 1 {
                vec![npy::read(&p).with_context(|| format!("{}", p.display()))?]
            } else {
                bail!(
                    "{}: the model takes {} inputs ({}); give each request a directory of NAME.npy files",
                    p.display(),
                    open.len(),
                    open.iter().map(|d| d.name.as_str()).collect::<Vec<_>>().join(", ")
                )
            };
            Ok((p, tensors))
        })
        .collect()
}

/// One request's directory: `NAME.npy` or `K.npy` per input.
fn request_dir(dir: &Path, open: &[&TensorSpec]) -> Result<Vec<Tensor>> {
    open.iter()
        .enumerate()
        .map(|(k, d)| {
            let by_name = dir.join(format!("{}.npy", d.name));
            let path = if by_name.is_file() { by_name } else { dir.join(format!("{k}.npy")) };
            npy::read(&path)
                .with_context(|| format!("{}: input {:?} (as {}.npy or {k}.npy)", dir.display(), d.name, d.name))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str) -> TensorSpec {
        let mut s = engine::declared_inputs(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../models/openwakeword-js__hello_deepa.onnx"
        )))
        .unwrap()
        .remove(0);
        s.name = name.into();
        s
    }

    #[test]
    fn requests_are_files_for_one_input_and_directories_by_name_or_position_for_several() {
        let dir = tempfile::tempdir().unwrap();
        let t = Tensor::from_shape(&[2], &[1.0f32, 2.0]).unwrap();
        npy::write(&dir.path().join("b.npy"), &t).unwrap();
        npy::write(&dir.path().join("a.npy"), &t).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        let (x, y) = (spec("x"), spec("y"));
        let got = read_requests(dir.path(), &[&x]).unwrap();
        assert_eq!(
            got.iter().map(|(p, _)| p.file_name().unwrap().to_str().unwrap()).collect::<Vec<_>>(),
            ["a.npy", "b.npy"]
        );
        let err = read_requests(dir.path(), &[&x, &y]).unwrap_err().to_string();
        assert!(err.contains("takes 2 inputs (x, y)"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        let r = dir.path().join("r1");
        std::fs::create_dir(&r).unwrap();
        npy::write(&r.join("y.npy"), &Tensor::from_shape(&[1], &[9.0f32]).unwrap()).unwrap();
        npy::write(&r.join("0.npy"), &t).unwrap();
        let got = read_requests(dir.path(), &[&x, &y]).unwrap();
        assert_eq!(got[0].1[0].shape(), [2], "x by position");
        assert_eq!(got[0].1[1].shape(), [1], "y by name");
        std::fs::remove_file(r.join("0.npy")).unwrap();
        let err = format!("{:#}", read_requests(dir.path(), &[&x, &y]).unwrap_err());
        assert!(err.contains("input \"x\""), "{err}");
    }
}
