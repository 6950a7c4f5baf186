//! `edge-agent`: the daemon binary and its model tools.
//!
//! `main` stays thin: parse flags, call the library, turn the result into an exit code and
//! a one-line reason on stderr.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use edge_agent::config::Config;
use edge_agent::engine::{self, LoadOptions, Model, TensorSpec};
use edge_agent::npy;
use tract_core::internal::Tensor;

#[derive(Parser)]
#[command(name = "edge-agent", version, about = "Inference agent for fleets of small Linux boxes")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent daemon.
    Run {
        /// The TOML configuration.
        #[arg(long)]
        config: PathBuf,
        /// Log format on stderr.
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
    },
    /// Validate a configuration file and the models it names; exit 2 with one line if wrong.
    CheckConfig {
        /// The TOML configuration.
        #[arg(long)]
        config: PathBuf,
    },
    /// Print a model's format, signature, operators and whether it is supported.
    Inspect {
        /// Model file (.onnx, .tflite, .nnef.tgz).
        #[arg(long)]
        model: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Fix an input at load: NAME=VALUE.
        #[arg(long = "pin", value_name = "NAME=VALUE")]
        pins: Vec<String>,
    },
    /// Run a model on .npy inputs and write its outputs as .npy files.
    Infer {
        /// Model file (.onnx, .tflite, .nnef.tgz).
        #[arg(long)]
        model: PathBuf,
        /// An input tensor: NAME=FILE.npy, or FILE.npy to go by position.
        #[arg(long = "input", value_name = "[NAME=]FILE.npy")]
        inputs: Vec<String>,
        /// Fix an input at load: NAME=VALUE.
        #[arg(long = "pin", value_name = "NAME=VALUE")]
        pins: Vec<String>,
        /// Carry an ONNX state output into an input from step to step: INPUT=OUTPUT.
        #[arg(long = "state", value_name = "INPUT=OUTPUT")]
        state: Vec<String>,
        /// Inputs have a leading steps axis, fed one step at a time to one session.
        #[arg(long)]
        sequence: bool,
        /// Where output.K.npy files go.
        #[arg(long, value_name = "DIR")]
        output_dir: Option<PathBuf>,
        /// Time N runs after one warm-up and print median_ms, min_ms and p95_ms.
        #[arg(long, value_name = "N")]
        repeat: Option<usize>,
        /// Matmul threads.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Profile N runs and print the slowest plan nodes.
        #[arg(long, value_name = "N")]
        profile: Option<usize>,
    },
    /// Validate a staged OTA transfer (run by the agent itself in a child process under
    /// memory and time limits): load the model, run its validation vector, print a JSON
    /// report.
    #[command(hide = true)]
    Validate {
        /// The staging directory.
        #[arg(long)]
        staging: PathBuf,
    },
}

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

fn inspect(model: &Path, json: bool, pins: &[String]) -> Result<()> {
    let declared = engine::declared_inputs(model)?;
    let options = LoadOptions { pins: parse_pins(pins, &declared)?, ..Default::default() };
    let report = engine::inspect(model, &options)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
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
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn infer(
    model_path: &Path,
    input_args: &[String],
    pins: &[String],
    state: &[String],
    sequence: bool,
    output_dir: Option<&Path>,
    repeat: Option<usize>,
    threads: usize,
    profile: Option<usize>,
) -> Result<()> {
    let declared = engine::declared_inputs(model_path)?;
    let pins = parse_pins(pins, &declared)?;
    let state = state
        .iter()
        .map(|s| split_pair(s, "--state").map(|(a, b)| (a.to_string(), b.to_string())))
        .collect::<Result<Vec<_>>>()?;
    // Public inputs, in order: declared ones minus pinned and state-bound ones.
    let open: Vec<&TensorSpec> = declared
        .iter()
        .filter(|d| !pins.iter().any(|(n, _)| *n == d.name) && !state.iter().any(|(i, _)| *i == d.name))
        .collect();
    let mut by_name: Vec<Option<Tensor>> = vec![None; open.len()];
    for (pos, arg) in input_args.iter().enumerate() {
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
    let inputs: Vec<Tensor> = by_name
        .into_iter()
        .zip(&open)
        .map(|(t, d)| t.with_context(|| format!("missing --input for {:?}", d.name)))
        .collect::<Result<_>>()?;
    let steps = if sequence {
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
            let shape = if sequence { t.shape()[1..].to_vec() } else { t.shape().to_vec() };
            (d.name.clone(), shape)
        })
        .collect();
    let options = LoadOptions { threads, pins, state, shapes };
    let model = Arc::new(Model::load(model_path, &options)?);
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
    if let Some(n) = repeat {
        if sequence {
            bail!("--repeat times single runs; it does not combine with --sequence");
        }
        let mut times = Vec::with_capacity(n);
        for _ in 0..n {
            let feed = inputs.clone();
            let start = Instant::now();
            session.run(feed)?;
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
        if times.is_empty() {
            bail!("--repeat needs at least 1");
        }
        times.sort_by(|a, b| a.total_cmp(b));
        let median = times[times.len() / 2];
        let p95 = times[((times.len() as f64 * 0.95).ceil() as usize).clamp(1, times.len()) - 1];
        println!("runs={n} median_ms={median:.4} min_ms={:.4} p95_ms={p95:.4}", times[0]);
    }
    if let Some(runs) = profile {
        let times = session.profile(inputs.clone(), runs.max(1))?;
        let total: f64 = times.iter().map(|t| t.total.as_secs_f64()).sum();
        println!("profile over {runs} runs, {:.4} ms per run:", total * 1e3 / runs.max(1) as f64);
        let dw = edge_agent::engine::kernels::depthwise_kernel();
        println!("channels-last depthwise kernel: {}", dw.unwrap_or("tract's generic loop"));
        let shown = if std::env::var_os("EDGE_PROFILE_ALL").is_some() { times.len() } else { 25 };
        for t in times.iter().take(shown) {
            let ms = t.total.as_secs_f64() * 1e3 / runs.max(1) as f64;
            println!("  {ms:9.4} ms {:5.1}%  {} ({})", 100.0 * t.total.as_secs_f64() / total.max(1e-12), t.op, t.node);
            if std::env::var_os("EDGE_PROFILE_INFO").is_some() {
                for line in &t.info {
                    println!("                    {line}");
                }
            }
        }
        let mut by_op: Vec<(String, f64, usize)> = vec![];
        for t in &times {
            match by_op.iter_mut().find(|(op, _, _)| *op == t.op) {
                Some(entry) => {
                    entry.1 += t.total.as_secs_f64();
                    entry.2 += 1;
                }
                None => by_op.push((t.op.clone(), t.total.as_secs_f64(), 1)),
            }
        }
        by_op.sort_by(|a, b| b.1.total_cmp(&a.1));
        println!("by operator ({} plan nodes):", times.len());
        for (op, secs, nodes) in by_op {
            let ms = secs * 1e3 / runs.max(1) as f64;
            println!("  {ms:9.4} ms {:5.1}%  {op} x{nodes}", 100.0 * secs / total.max(1e-12));
        }
    }
    match output_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            for (k, t) in outputs.iter().enumerate() {
                npy::write(&dir.join(format!("output.{k}.npy")), t)?;
            }
        }
        None if repeat.is_none() && profile.is_none() => {
            for (spec, t) in model.outputs().iter().zip(&outputs) {
                println!("{} {:?} {:?}: {}", spec.name, t.datum_type(), t.shape(), preview(t)?);
            }
        }
        None => {}
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

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Under systemd (`JOURNAL_STREAM` set) logs go to journald with structured fields; if the
/// journal socket is missing, or outside systemd, they go to stderr as text or JSON.
/// `RUST_LOG` filters; the default is info. Returns the control that changes the filter at
/// run time (the `set-config` command).
fn init_logging(format: LogFormat) -> edge_agent::commands::settings::LogControl {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{reload, EnvFilter, Layer};
    let initial = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(initial);
    let control: edge_agent::commands::settings::LogControl = std::sync::Arc::new(move |level: &str| {
        let next = EnvFilter::try_new(level).map_err(|e| format!("log level {level:?}: {e}"))?;
        handle.reload(next).map_err(|e| format!("cannot change the log filter: {e}"))
    });
    let mut journald = None;
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        match tracing_journald::layer() {
            Ok(layer) => journald = Some(layer.with_syslog_identifier("edge-agent".into())),
            Err(e) => eprintln!("edge-agent: journald unavailable ({e}); logging to stderr"),
        }
    }
    let stderr = match (&journald, format) {
        (Some(_), _) => None,
        (None, LogFormat::Text) => Some(tracing_subscriber::fmt::layer().with_writer(std::io::stderr).boxed()),
        (None, LogFormat::Json) => Some(tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr).boxed()),
    };
    tracing_subscriber::registry().with(filter).with(journald).with(stderr).init();
    control
}

/// A failure and its exit code: 2 for a bad configuration, 1 for anything else.
type Failure = (u8, String);

fn run_daemon(config_path: &Path, format: LogFormat) -> Result<(), Failure> {
    let config = Config::load(config_path).map_err(|e| (EXIT_BAD_CONFIG, e.to_string()))?;
    let log = init_logging(format);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| (1, format!("cannot start the runtime: {e}")))?;
    let stopped = runtime
        .block_on(edge_agent::daemon::run(config, Some(config_path.to_path_buf()), Some(log)))
        .map_err(|e| (1, format!("{e:#}")))?;
    match stopped {
        edge_agent::daemon::Stopped::Shutdown => Ok(()),
        edge_agent::daemon::Stopped::Restart => {
            Err((EXIT_RESTART, "stopped by a restart command; the service manager starts it again".into()))
        }
    }
}

/// Exit code after a `restart` command: EX_TEMPFAIL, which `Restart=on-failure` restarts.
const EXIT_RESTART: u8 = 75;

/// Exit code for an invalid configuration.
const EXIT_BAD_CONFIG: u8 = 2;

fn check_config(path: &Path) -> Result<(), Failure> {
    let config = Config::load(path).map_err(|e| (EXIT_BAD_CONFIG, e.to_string()))?;
    for (i, m) in config.models.iter().enumerate() {
        let what = format!("config {}: [[models]] #{} ({:?})", path.display(), i + 1, m.name);
        let options =
            edge_agent::models::load::options_for(m).map_err(|e| (EXIT_BAD_CONFIG, format!("{what}: {e}")))?;
        Model::load(&m.path, &options).map_err(|e| (EXIT_BAD_CONFIG, format!("{what}: {e}")))?;
    }
    println!("config {}: ok (device {}, {} models)", path.display(), config.device_id, config.models.len());
    Ok(())
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::CheckConfig { .. } | Command::Run { .. } => unreachable!("handled in main"),
        Command::Inspect { model, json, pins } => inspect(&model, json, &pins),
        Command::Infer { model, inputs, pins, state, sequence, output_dir, repeat, threads, profile } => {
            infer(&model, &inputs, &pins, &state, sequence, output_dir.as_deref(), repeat, threads, profile)
        }
        Command::Validate { staging } => {
            let report = edge_agent::ota::validate::validate_staging(&staging);
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    edge_agent::memory::tune_allocator();
    let cli = Cli::parse();
    let config_outcome = match &cli.command {
        Command::CheckConfig { config } => Some(check_config(config)),
        Command::Run { config, log_format } => Some(run_daemon(config, *log_format)),
        _ => None,
    };
    if let Some(outcome) = config_outcome {
        return match outcome {
            Ok(()) => ExitCode::SUCCESS,
            Err((code, line)) => {
                eprintln!("edge-agent: {}", line.replace('\n', " "));
                ExitCode::from(code)
            }
        };
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("edge-agent: {msg}");
            ExitCode::FAILURE
        }
    }
}
