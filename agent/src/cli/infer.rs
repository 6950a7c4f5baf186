//! `edge-agent infer`: runs a model on `.npy` inputs and writes its outputs as `.npy` files
//! (or prints them), one step at a time with `--sequence`; `--repeat` and `--profile` hand
//! the loaded session to [`super::profile`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use tract_core::internal::Tensor;

use crate::engine::{self, LoadOptions, Model, TensorSpec};
use crate::exit::Failure;
use crate::npy;

/// The flags of `edge-agent infer`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Model file (.onnx, .tflite, .nnef.tgz).
    #[arg(long)]
    pub model: PathBuf,
    /// An input tensor: NAME=FILE.npy, or FILE.npy to go by position.
    #[arg(long = "input", value_name = "[NAME=]FILE.npy")]
    pub inputs: Vec<String>,
    /// Fix an input at load: NAME=VALUE.
    #[arg(long = "pin", value_name = "NAME=VALUE")]
    pub pins: Vec<String>,
    /// Carry an ONNX state output into an input from step to step: INPUT=OUTPUT.
    #[arg(long = "state", value_name = "INPUT=OUTPUT")]
    pub state: Vec<String>,
    /// Inputs have a leading steps axis, fed one step at a time to one session.
    #[arg(long)]
    pub sequence: bool,
    /// Where output.K.npy files go.
    #[arg(long, value_name = "DIR")]
    pub output_dir: Option<PathBuf>,
    /// Time N runs after one warm-up and print median_ms, min_ms and p95_ms.
    #[arg(long, value_name = "N")]
    pub repeat: Option<usize>,
    /// Matmul threads.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Profile N runs and print the slowest plan nodes.
    #[arg(long, value_name = "N")]
    pub profile: Option<usize>,
}

/// Loads the model, runs it once on the inputs, then times or profiles it if asked.
pub fn run(args: Args) -> Result<(), Failure> {
    Ok(infer(&args)?)
}

fn infer(args: &Args) -> Result<()> {
    let declared = engine::declared_inputs(&args.model)?;
    let pins = super::parse_pins(&args.pins, &declared)?;
    let state = args
        .state
        .iter()
        .map(|s| super::split_pair(s, "--state").map(|(a, b)| (a.to_string(), b.to_string())))
        .collect::<Result<Vec<_>>>()?;
    // Public inputs, in order: declared ones minus pinned and state-bound ones.
    let open: Vec<&TensorSpec> = declared
        .iter()
        .filter(|d| !pins.iter().any(|(n, _)| *n == d.name) && !state.iter().any(|(i, _)| *i == d.name))
        .collect();
    let inputs = read_inputs(&args.inputs, &open)?;
    let steps = if args.sequence {
        let steps = inputs.first().map(|t| t.shape().first().copied().unwrap_or(0)).unwrap_or(0);
        if inputs.iter().any(|t| t.rank() == 0 || t.shape()[0] != steps) {
            bail!("--sequence: every input needs the same leading steps axis");
        }
        Some(steps)
    } else {
        None
    };
    let shapes = open
        .iter()
        .zip(&inputs)
        .map(|(d, t)| {
            let shape = if args.sequence { t.shape()[1..].to_vec() } else { t.shape().to_vec() };
            (d.name.clone(), shape)
        })
        .collect();
    let options = LoadOptions { threads: args.threads, pins, state, shapes };
    let model = Arc::new(Model::load(&args.model, &options)?);
    let mut session = model.session()?;
    let outputs = match steps {
        Some(steps) => {
            let mut per_output: Vec<Vec<Tensor>> = vec![vec![]; model.outputs().len()];
            for step in 0..steps {
                let step_inputs = inputs
                    .iter()
                    .map(|t| {
                        let mut s = t.slice(0, step, step + 1)?;
                        s.remove_axis(0)?;
                        Ok(s)
                    })
                    .collect::<Result<Vec<_>>>()?;
                for (k, mut o) in session.run(step_inputs)?.into_iter().enumerate() {
                    // Stacked along a new leading steps axis.
                    o.insert_axis(0)?;
                    per_output[k].push(o);
                }
            }
            per_output.into_iter().map(|ts| Tensor::stack_tensors(0, &ts)).collect::<Result<Vec<_>, _>>()?
        }
        None => session.run(inputs.clone())?,
    };
    if let Some(n) = args.repeat {
        if args.sequence {
            bail!("--repeat times single runs; it does not combine with --sequence");
        }
        super::profile::repeat(&mut session, &inputs, n)?;
    }
    if let Some(runs) = args.profile {
        super::profile::profile(&mut session, &inputs, runs)?;
    }
    match &args.output_dir {
        Some(dir) => write_outputs(dir, &outputs)?,
        None if args.repeat.is_none() && args.profile.is_none() => {
            for (spec, t) in model.outputs().iter().zip(&outputs) {
                println!("{} {:?} {:?}: {}", spec.name, t.datum_type(), t.shape(), preview(t)?);
            }
        }
        None => {}
    }
    Ok(())
}

/// The `--input` tensors in the order of `open`: `NAME=FILE.npy` by name, `FILE.npy` by
/// position; every open input needs one.
fn read_inputs(args: &[String], open: &[&TensorSpec]) -> Result<Vec<Tensor>> {
    let mut by_name: Vec<Option<Tensor>> = vec![None; open.len()];
    for (pos, arg) in args.iter().enumerate() {
        let (slot, file) = match arg.split_once('=') {
            Some((name, file)) if !name.ends_with(".npy") => {
                let slot = open.iter().position(|d| d.name == name).with_context(|| {
                    format!(
                        "--input {name}: no such input (inputs: {})",
                        open.iter().map(|d| d.name.as_str()).collect::<Vec<_>>().join(", ")
                    )
                })?;
                (slot, file)
            }
            _ => (pos, arg.as_str()),
        };
        if slot >= open.len() {
            bail!("--input {arg}: the model takes {} inputs", open.len());
        }
        by_name[slot] = Some(npy::read(Path::new(file))?);
    }
    by_name.into_iter().zip(open).map(|(t, d)| t.with_context(|| format!("missing --input for {:?}", d.name))).collect()
}

fn write_outputs(dir: &Path, outputs: &[Tensor]) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (k, t) in outputs.iter().enumerate() {
        npy::write(&dir.join(format!("output.{k}.npy")), t)?;
    }
    Ok(())
}

/// Small outputs in full; large ones as min/mean/max.
fn preview(t: &Tensor) -> Result<String> {
    let values = t.cast_to::<f64>()?;
    let values = values.try_as_plain_ram()?;
    let v = values.as_slice::<f64>()?;
    if v.len() <= 100 {
        let items: Vec<String> = v
            .iter()
            .map(|x| if t.datum_type().is_integer() { format!("{}", *x as i64) } else { format!("{x}") })
            .collect();
        return Ok(format!("[{}]", items.join(", ")));
    }
    let (min, max) = v.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| (a.min(*x), b.max(*x)));
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    Ok(format!("min={min:.6} mean={mean:.6} max={max:.6}"))
}
