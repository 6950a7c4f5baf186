//! `edge-agent inspect`: a model's format, signature, operators and whether the engine
//! supports it, as text or JSON.

use std::path::PathBuf;

use anyhow::Result;

use crate::engine::{self, LoadOptions, TensorSpec};
use crate::exit::Failure;

/// The flags of `edge-agent inspect`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Model file (.onnx, .tflite, .nnef.tgz).
    #[arg(long)]
    pub model: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Fix an input at load: NAME=VALUE.
    #[arg(long = "pin", value_name = "NAME=VALUE")]
    pub pins: Vec<String>,
}

/// Prints the report. An unsupported model is reported in full, then exits 3, so that a
/// script can gate a model on `edge-agent inspect`.
pub fn run(args: Args) -> Result<(), Failure> {
    if inspect(&args)? {
        return Ok(());
    }
    Err(Failure::new(
        crate::exit::Code::Unsupported,
        format!("{}: not supported by this agent (see the report above)", args.model.display()),
    ))
}

/// Prints the report; whether the model is supported.
fn inspect(args: &Args) -> Result<bool> {
    let declared = engine::declared_inputs(&args.model)?;
    let options = LoadOptions { pins: super::parse_pins(&args.pins, &declared)?, ..Default::default() };
    let report = engine::inspect(&args.model, &options)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(report.supported);
    }
    println!("format: {:?}", report.format);
    let show = |label: &str, specs: &[TensorSpec]| {
        println!("{label}:");
        for s in specs {
            println!("  {} {} [{}]", s.name, s.dtype, s.shape.join(","));
        }
    };
    show("inputs", &report.inputs);
    show("outputs", &report.outputs);
    println!("ops:");
    for (op, n) in &report.ops {
        println!("  {op} x{n}");
    }
    if report.supported {
        println!("supported: yes");
    } else {
        println!("supported: no");
        if !report.missing_ops.is_empty() {
            println!("missing ops: {}", report.missing_ops.join(", "));
        }
        if let Some(e) = &report.error {
            println!("error: {e}");
        }
    }
    Ok(report.supported)
}
