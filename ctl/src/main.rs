//! `edgectl`: the operator's CLI for an edge-agent fleet. Parses flags, calls the
//! `edgectl` library, prints, and maps the result to an exit code: 0 when every device
//! succeeded, 1 when one did not (failed, rejected, timed out, no answer), 2 when edgectl
//! itself could not do its job (flags, configuration, key, broker connection).

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use edge_proto::codec::Versioned;
use edge_proto::command::{hex, AckState, NpyBytes, Payload, Reply, Target};
use edge_proto::ota::{ModelFormat, Validation, DEFAULT_CHUNK_BYTES};
use edge_proto::status::State;
use edge_proto::telemetry::Telemetry;
use edgectl::command::{parse_command_id, send_command, CommandOutcome, CommandRequest, Event};
use edgectl::config::{CtlConfig, Overrides};
use edgectl::deploy::{check_chunk_size, deploy, parse_pin, DeployRequest};
use edgectl::track::{state_text, Goal, Outcome};
use edgectl::{keys, npy, observe, report, Link};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

#[derive(Parser)]
#[command(
    name = "edgectl",
    version,
    about = "Operate an edge-agent fleet",
    after_help = "Exit status: 0 every device succeeded; 1 a device failed, rejected, timed out or did not \
                  answer; 2 edgectl could not run the command (flags, configuration, key, broker). \
                  EDGECTL_LOG=debug shows what is ignored on the wire."
)]
struct Cli {
    /// Configuration file: an [mqtt] table as the agent's, and an optional top-level
    /// signing_key.
    #[arg(long, global = true, default_value = "ctl.toml")]
    config: PathBuf,
    /// Broker URL, overriding [mqtt] url.
    #[arg(long, global = true)]
    url: Option<String>,
    /// CA file, overriding [mqtt] ca_file.
    #[arg(long, global = true)]
    ca_file: Option<PathBuf>,
    /// Operator certificate, overriding [mqtt] cert_file.
    #[arg(long, global = true)]
    cert_file: Option<PathBuf>,
    /// Operator TLS key, overriding [mqtt] key_file.
    #[arg(long, global = true)]
    key_file: Option<PathBuf>,
    /// Command-signing key (operator.key from `edgectl keygen`), overriding signing_key.
    #[arg(long, global = true)]
    signing_key: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print telemetry as it arrives.
    Watch {
        /// One device.
        #[arg(long, conflicts_with = "all")]
        device: Option<String>,
        /// Every device (the default).
        #[arg(long)]
        all: bool,
        /// Stop after N messages.
        #[arg(long)]
        count: Option<usize>,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List devices from their retained status.
    Status {
        /// Seconds to wait for retained messages.
        #[arg(long, default_value_t = 2)]
        wait: u64,
        /// JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Make the operator key pair that signs commands: DIR/operator.key (secret, 0600) and
    /// DIR/operator.pub (for the devices' [ota] trusted_keys). Never overwrites.
    Keygen {
        /// Directory to write the two files into.
        #[arg(long)]
        out: PathBuf,
    },
    /// Make the fleet's TLS certificates: a CA, the broker's, devices' and operators'.
    Pki {
        #[command(subcommand)]
        cmd: edgectl::cli_pki::PkiCommand,
    },
    /// Deploy a model over the air: send the signed manifest, then the chunks, then serve
    /// repairs until every device has it (or, with --wait, has installed it).
    Deploy(Box<DeployArgs>),
    /// Go back to the previously active version of a model.
    Rollback {
        #[command(flatten)]
        to: TargetArgs,
        /// Model name.
        #[arg(long)]
        name: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Make an installed version of a model the active one.
    Activate {
        #[command(flatten)]
        to: TargetArgs,
        /// Model name.
        #[arg(long)]
        name: String,
        /// Version to activate.
        #[arg(long)]
        version: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Send a command and wait for every device's final answer.
    Cmd {
        #[command(subcommand)]
        cmd: Cmd,
    },
    /// Run one inference on a device and fetch the outputs.
    Infer {
        /// Device id.
        #[arg(long)]
        device: String,
        /// Model name on the device.
        #[arg(long)]
        model: String,
        /// Input tensors (.npy), in the model's input order.
        #[arg(long = "input", required = true)]
        inputs: Vec<PathBuf>,
        /// Write DIR/output.K.npy per output; without it, print each output's dtype and shape.
        #[arg(long)]
        output_dir: Option<PathBuf>,
        #[command(flatten)]
        timing: Timing,
    },
}

#[derive(Subcommand)]
enum Cmd {
    /// Print a device's agent version, configuration and models.
    GetStatus {
        /// Device id.
        #[arg(long)]
        device: String,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        timing: Timing,
    },
    /// Change runtime settings.
    SetConfig {
        #[command(flatten)]
        to: TargetArgs,
        /// New telemetry interval.
        #[arg(long)]
        telemetry_interval: Option<u32>,
        /// New log filter (e.g. info, edge_agent=debug).
        #[arg(long)]
        log_level: Option<String>,
        #[command(flatten)]
        timing: Timing,
    },
    /// Delete every model and all state on the devices.
    Erase {
        #[command(flatten)]
        to: TargetArgs,
        /// Confirm: erasing cannot be undone.
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        timing: Timing,
    },
    /// Restart the agent.
    Restart {
        #[command(flatten)]
        to: TargetArgs,
        #[command(flatten)]
        timing: Timing,
    },
    /// Unload and delete a model.
    RemoveModel {
        #[command(flatten)]
        to: TargetArgs,
        /// Model name.
        #[arg(long)]
        name: String,
        #[command(flatten)]
        timing: Timing,
    },
    /// Abandon a deploy still transferring or installing (its id as `deploy` printed it).
    Cancel {
        #[command(flatten)]
        to: TargetArgs,
        /// The deploy's command id (32 hex digits).
        #[arg(long)]
        command: String,
        #[command(flatten)]
        timing: Timing,
    },
}

#[derive(Args)]
#[group(required = true, multiple = false)]
struct TargetArgs {
    /// One device, by id.
    #[arg(long)]
    device: Option<String>,
    /// Every device of a group.
    #[arg(long)]
    group: Option<String>,
}

impl TargetArgs {
    fn target(&self) -> Target {
        match (&self.device, &self.group) {
            (Some(d), _) => Target::Device(d.clone()),
            (None, Some(g)) => Target::Group(g.clone()),
            (None, None) => unreachable!("clap requires one of --device and --group"),
        }
    }
}

/// How long a command waits, and how long it is valid.
#[derive(Args)]
struct Timing {
    /// Seconds to wait for the devices' answers.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
    /// Seconds the command stays valid on devices.
    #[arg(long, default_value_t = 300)]
    ttl: u64,
    /// For a group: seconds its devices have to acknowledge (those that do are waited for).
    #[arg(long, default_value_t = 3)]
    accept_wait: u64,
}

#[derive(Args)]
struct WaitArgs {
    /// Wait for the result, not only for the device to accept.
    #[arg(long)]
    wait: bool,
    #[command(flatten)]
    timing: Timing,
}

#[derive(Clone, Copy, ValueEnum)]
enum FormatArg {
    Tflite,
    Onnx,
}

#[derive(Args)]
struct DeployArgs {
    /// The model file (.tflite or .onnx).
    #[arg(long)]
    model: PathBuf,
    /// Name the model is served under.
    #[arg(long)]
    name: String,
    /// Version label.
    #[arg(long)]
    version: String,
    #[command(flatten)]
    to: TargetArgs,
    /// Wait until every device has installed it (or failed), not only received it.
    #[arg(long)]
    wait: bool,
    /// Model format; by default from the file's extension.
    #[arg(long, value_enum)]
    format: Option<FormatArg>,
    /// Validation input (.npy), in the model's input order; devices run it before switching.
    #[arg(long = "validate-input")]
    validate_inputs: Vec<PathBuf>,
    /// Expected validation output (.npy), in the model's output order.
    #[arg(long = "validate-output")]
    validate_outputs: Vec<PathBuf>,
    /// Largest accepted absolute difference per output element.
    #[arg(long, default_value_t = 1e-4)]
    tolerance: f32,
    /// Longest acceptable median latency of a validation run, in ms (0: no budget).
    #[arg(long, default_value_t = 0)]
    latency_budget_ms: u32,
    /// Scalar input fixed at load, NAME=VALUE (repeatable).
    #[arg(long = "pin", value_parser = pin)]
    pins: Vec<(String, f64)>,
    /// Oldest agent version that may install it (X.Y.Z); any by default.
    #[arg(long)]
    min_agent_version: Option<String>,
    /// Chunk size in bytes; a chunk plus 1 KiB must fit [mqtt] max_packet_bytes.
    #[arg(long, default_value_t = DEFAULT_CHUNK_BYTES)]
    chunk_size: u32,
    /// Most bytes per second to publish, chunks and repairs together.
    #[arg(long)]
    rate: Option<u64>,
    /// Seconds devices have to accept: for a group, those that do are its members for this
    /// deploy; a single device that does not answer in time is reported as `no answer`.
    #[arg(long, default_value_t = 3)]
    accept_wait: u64,
    /// Seconds to wait for every device.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// Seconds the command stays valid (devices refuse it, and a resumed transfer, after).
    #[arg(long, default_value_t = 3600)]
    ttl: u64,
}

fn pin(s: &str) -> Result<(String, f64), String> {
    parse_pin(s).map_err(|e| e.to_string())
}

/// A run that went through: whether every device succeeded.
type Verdict = bool;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("EDGECTL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(&cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("edgectl: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::from(2)
        }
    }
}

fn run(cli: &Cli) -> Result<Verdict> {
    if let Command::Keygen { out } = &cli.command {
        let (key, public, id) = keys::keygen(out)?;
        println!("wrote {} and {} (key id {id})", key.display(), public.display());
        return Ok(true);
    }
    if let Command::Pki { cmd } = &cli.command {
        return cmd.run(&mut std::io::stdout()).map(|()| true);
    }
    let overrides = Overrides {
        url: cli.url.clone(),
        ca_file: cli.ca_file.clone(),
        cert_file: cli.cert_file.clone(),
        key_file: cli.key_file.clone(),
        signing_key: cli.signing_key.clone(),
    };
    let config = CtlConfig::load(&cli.config, &overrides)?;
    // Everything that can be refused without the broker is, before connecting.
    let job = Job::new(&cli.command, &config)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let mut link = Link::connect(&config.mqtt).await?;
        let verdict = job.run(&mut link).await;
        link.close().await;
        verdict
    })
}

/// A command line turned into what to do, with every file read and every flag checked.
enum Job {
    Watch { device: Option<String>, count: Option<usize>, json: bool },
    Status { wait: Duration, json: bool },
    Deploy { req: Box<DeployRequest>, key: Box<edge_proto::command::SigningKey> },
    Command { req: Box<CommandRequest>, key: Box<edge_proto::command::SigningKey>, show: Show },
}

/// What to print of a command's outcome.
enum Show {
    Lines,
    Status { json: bool },
    Outputs { dir: Option<PathBuf> },
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn request(target: Target, payload: Payload, timing: &Timing, goal: Goal) -> CommandRequest {
    let mut req = CommandRequest::new(target, payload);
    req.goal = goal;
    req.timeout = secs(timing.timeout);
    req.ttl = secs(timing.ttl);
    if matches!(req.target, Target::Group(_)) {
        req.accept_wait = secs(timing.accept_wait);
    }
    req
}

impl Job {
    fn new(command: &Command, config: &CtlConfig) -> Result<Job> {
        let key = || config.signing_key().map(Box::new);
        let (target, payload, timing, goal, show) = match command {
            Command::Keygen { .. } | Command::Pki { .. } => {
                unreachable!("handled before loading the configuration")
            }
            Command::Watch { device, all: _, count, json } => {
                return Ok(Job::Watch { device: device.clone(), count: *count, json: *json })
            }
            Command::Status { wait, json } => return Ok(Job::Status { wait: secs(*wait), json: *json }),
            Command::Deploy(args) => {
                let req = deploy_request(args)?;
                check_chunk_size(req.chunk_size, config.mqtt.max_packet_bytes)?;
                return Ok(Job::Deploy { req: Box::new(req), key: key()? });
            }
            Command::Rollback { to, name, wait } => {
                let goal = if wait.wait { Goal::Terminal } else { Goal::Accepted };
                (to.target(), Payload::Rollback { name: name.clone() }, &wait.timing, goal, Show::Lines)
            }
            Command::Activate { to, name, version, wait } => {
                let goal = if wait.wait { Goal::Terminal } else { Goal::Accepted };
                let payload = Payload::Activate { name: name.clone(), version: version.clone() };
                (to.target(), payload, &wait.timing, goal, Show::Lines)
            }
            Command::Infer { device, model, inputs, output_dir, timing } => {
                let inputs = inputs.iter().map(|p| read_npy(p)).collect::<Result<Vec<_>>>()?;
                let payload = Payload::Infer { model: model.clone(), inputs };
                (
                    Target::Device(device.clone()),
                    payload,
                    timing,
                    Goal::Terminal,
                    Show::Outputs { dir: output_dir.clone() },
                )
            }
            Command::Cmd { cmd } => match cmd {
                Cmd::GetStatus { device, json, timing } => (
                    Target::Device(device.clone()),
                    Payload::GetStatus,
                    timing,
                    Goal::Terminal,
                    Show::Status { json: *json },
                ),
                Cmd::SetConfig { to, telemetry_interval, log_level, timing } => {
                    if telemetry_interval.is_none() && log_level.is_none() {
                        bail!("set-config: nothing to set; pass --telemetry-interval SECS and/or --log-level FILTER");
                    }
                    if *telemetry_interval == Some(0) {
                        bail!("set-config: --telemetry-interval must be at least 1 second");
                    }
                    let payload = Payload::SetConfig {
                        telemetry_interval_secs: *telemetry_interval,
                        log_level: log_level.clone(),
                    };
                    (to.target(), payload, timing, Goal::Terminal, Show::Lines)
                }
                Cmd::Erase { to, yes, timing } => {
                    if !yes {
                        bail!(
                            "erase deletes every model and all state on the device(s) and cannot be undone: add --yes"
                        );
                    }
                    (to.target(), Payload::Erase, timing, Goal::Terminal, Show::Lines)
                }
                Cmd::Restart { to, timing } => (to.target(), Payload::Restart, timing, Goal::Terminal, Show::Lines),
                Cmd::RemoveModel { to, name, timing } => {
                    (to.target(), Payload::RemoveModel { name: name.clone() }, timing, Goal::Terminal, Show::Lines)
                }
                Cmd::Cancel { to, command, timing } => {
                    let command_id = parse_command_id(command)?;
                    (to.target(), Payload::Cancel { command_id }, timing, Goal::Terminal, Show::Lines)
                }
            },
        };
        Ok(Job::Command { req: Box::new(request(target, payload, timing, goal)), key: key()?, show })
    }

    async fn run(self, link: &mut Link) -> Result<Verdict> {
        match self {
            Job::Watch { device, count, json } => watch(link, device.as_deref(), count, json).await,
            Job::Status { wait, json } => status(link, wait, json).await,
            Job::Deploy { req, key } => {
                let mut ui = DeployUi::new(&req.target);
                let outcome = deploy(link, &key, &req, |e| ui.on_event(e)).await?;
                ui.finish();
                print!("{}", report::results_table(&outcome.results));
                if outcome.results.is_empty() {
                    if let Target::Group(g) = &req.target {
                        eprintln!("edgectl: no device of group {g} answered within {:?}", req.accept_wait);
                    }
                }
                let s = &outcome.stats;
                if s.repair_requests > 0 {
                    println!("repairs: {} requests, {} chunks resent", s.repair_requests, s.repaired_chunks);
                }
                if outcome.results.iter().any(|r| matches!(r.outcome, Outcome::TimedOut(_))) {
                    eprintln!(
                        "edgectl: devices still at work can be stopped with `edgectl cmd cancel --command {}`",
                        hex(&outcome.command_id)
                    );
                }
                Ok(outcome.all_ok())
            }
            Job::Command { req, key, show } => {
                let outcome = send_command(link, &key, &req, |e| match e {
                    Event::Disconnected(why) => eprintln!("edgectl: broker connection lost ({why}); reconnecting"),
                    Event::Reconnected => eprintln!("edgectl: reconnected to the broker"),
                    _ => {}
                })
                .await?;
                if outcome.results.is_empty() {
                    if let Target::Group(g) = &req.target {
                        eprintln!("edgectl: no device of group {g} answered within {:?}", req.accept_wait);
                    }
                    return Ok(false);
                }
                show_outcome(&outcome, &show)
            }
        }
    }
}

fn deploy_request(args: &DeployArgs) -> Result<DeployRequest> {
    let format = match args.format {
        Some(FormatArg::Tflite) => ModelFormat::Tflite,
        Some(FormatArg::Onnx) => ModelFormat::Onnx,
        None => ModelFormat::from_file_name(&args.model.to_string_lossy()).with_context(|| {
            format!(
                "--model {}: cannot tell the format from the extension; pass --format tflite|onnx",
                args.model.display()
            )
        })?,
    };
    let model = std::fs::read(&args.model).with_context(|| format!("--model {}", args.model.display()))?;
    let validation = match (args.validate_inputs.is_empty(), args.validate_outputs.is_empty()) {
        (true, true) => None,
        (false, false) => Some(Validation {
            version: Validation::VERSION,
            inputs: args.validate_inputs.iter().map(|p| read_npy(p)).collect::<Result<_>>()?,
            expected: args.validate_outputs.iter().map(|p| read_npy(p)).collect::<Result<_>>()?,
            tolerance: args.tolerance,
        }),
        _ => bail!("--validate-input and --validate-output go together: the device needs both to check the model"),
    };
    let mut req = DeployRequest::new(args.to.target(), &args.name, &args.version, format, model);
    req.validation = validation;
    req.pins = args.pins.clone();
    req.latency_budget_ms = args.latency_budget_ms;
    req.min_agent_version = args.min_agent_version.clone().unwrap_or_default();
    req.chunk_size = args.chunk_size;
    req.rate = args.rate;
    req.accept_wait = secs(args.accept_wait);
    req.timeout = secs(args.timeout);
    req.ttl = secs(args.ttl);
    req.wait = args.wait;
    Ok(req)
}

/// Reads an .npy file, checking its header.
fn read_npy(path: &Path) -> Result<NpyBytes> {
    let bytes = std::fs::read(path).with_context(|| format!("{}", path.display()))?;
    npy::header(&bytes).with_context(|| format!("{}", path.display()))?;
    Ok(NpyBytes(bytes))
}

fn show_outcome(outcome: &CommandOutcome, show: &Show) -> Result<Verdict> {
    match show {
        Show::Lines => {
            for r in &outcome.results {
                println!("{}", report::result_line(r));
            }
        }
        Show::Status { json } => {
            for r in &outcome.results {
                match (&r.reply, r.outcome.is_ok()) {
                    (Some(Reply::Status(s)), true) if *json => println!("{}", report::status_json(&r.device, s)),
                    (Some(Reply::Status(s)), true) => print!("{}", report::status_text(&r.device, s)),
                    (_, true) => bail!("{}: succeeded without a status in its answer", r.device),
                    (_, false) => eprintln!("edgectl: {}", report::result_line(r)),
                }
            }
        }
        Show::Outputs { dir } => {
            for r in &outcome.results {
                match (&r.reply, r.outcome.is_ok()) {
                    (Some(Reply::Outputs(outputs)), true) => write_outputs(outputs, dir.as_deref())?,
                    (_, true) => bail!("{}: succeeded without outputs in its answer", r.device),
                    (_, false) => eprintln!("edgectl: {}", report::result_line(r)),
                }
            }
        }
    }
    Ok(outcome.all_ok())
}

fn write_outputs(outputs: &[NpyBytes], dir: Option<&Path>) -> Result<()> {
    if let Some(dir) = dir {
        std::fs::create_dir_all(dir).with_context(|| format!("--output-dir {}", dir.display()))?;
    }
    for (k, NpyBytes(bytes)) in outputs.iter().enumerate() {
        match dir {
            Some(dir) => {
                let path = dir.join(format!("output.{k}.npy"));
                std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
                println!("{}", path.display());
            }
            None => match npy::header(bytes) {
                Ok(h) => println!("output {k}: {} {}", h.dtype(), h.shape_text()),
                Err(e) => println!("output {k}: {} bytes, {e}", bytes.len()),
            },
        }
    }
    Ok(())
}

/// Progress bars for a deploy, one per device plus one for the first pass, on stdout when
/// it is a terminal; otherwise one line per device state change (the ack lifecycle, for
/// logs), then the final table.
struct DeployUi {
    multi: MultiProgress,
    tty: bool,
    target: String,
    bars: HashMap<String, ProgressBar>,
    chunks: Option<ProgressBar>,
}

impl DeployUi {
    fn new(target: &Target) -> DeployUi {
        let tty = std::io::stdout().is_terminal();
        let draw = if tty { ProgressDrawTarget::stdout() } else { ProgressDrawTarget::hidden() };
        let target = match target {
            Target::Device(d) => format!("device {d}"),
            Target::Group(g) => format!("group {g}"),
        };
        DeployUi {
            multi: MultiProgress::with_draw_target(draw),
            tty,
            target,
            bars: Default::default(),
            chunks: Default::default(),
        }
    }

    /// A line above the bars (or plainly, without bars).
    fn say(&self, line: &str) {
        if self.tty {
            let _ = self.multi.println(line);
        } else {
            println!("{line}");
        }
    }

    fn on_event(&mut self, event: &Event) {
        let style = |t: &str| ProgressStyle::with_template(t).expect("static template").progress_chars("=> ");
        match event {
            Event::Published { command_id, chunks, bytes, .. } => {
                let plural = if *chunks == 1 { "" } else { "s" };
                self.say(&format!(
                    "deploy command {} to {} ({bytes} bytes in {chunks} chunk{plural})",
                    hex(command_id),
                    self.target
                ));
            }
            Event::TransferStarted { .. } => {
                // Above the devices' bars, which appear as they accept.
                let bar = self.multi.insert(0, ProgressBar::new(0));
                bar.set_style(style("{prefix:<16} [{bar:30}] {pos}/{len} chunks"));
                bar.set_prefix("published");
                self.chunks = Some(bar);
            }
            Event::Sent { sent, total } => {
                if let Some(bar) = &self.chunks {
                    bar.set_length(u64::from(*total));
                    bar.set_position(u64::from(*sent));
                }
            }
            Event::Ack(change) if !self.tty => {
                let what = match &change.state {
                    AckState::Progress(p) if *p >= 100 => "progress 100 % (verified, installing)".to_string(),
                    AckState::Progress(p) => format!("progress {p} %"),
                    state => state_text(state),
                };
                println!("{:<16} {what}", change.device);
            }
            Event::Ack(change) => {
                let bar = self.bars.entry(change.device.clone()).or_insert_with(|| {
                    let bar = self.multi.add(ProgressBar::new(100));
                    bar.set_style(style("{prefix:<16} [{bar:30}] {pos:>3} % {msg}"));
                    bar.set_prefix(change.device.clone());
                    bar
                });
                match &change.state {
                    AckState::Accepted => bar.set_message("accepted"),
                    AckState::Progress(p) => {
                        bar.set_position(u64::from(*p));
                        bar.set_message(if *p >= 100 { "verified, installing" } else { "receiving" });
                    }
                    AckState::Succeeded => bar.finish_with_message("succeeded"),
                    state => bar.abandon_with_message(state_text(state)),
                }
            }
            Event::Repair { device, queued } if *queued > 0 => {
                self.say(&format!("{device}: resending {queued} missing chunks"));
            }
            Event::Repair { .. } => {}
            Event::Disconnected(why) => self.say(&format!("broker connection lost ({why}); reconnecting")),
            Event::Reconnected => self.say("reconnected to the broker"),
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = self.chunks.take() {
            bar.finish();
        }
        for bar in self.bars.values() {
            if !bar.is_finished() {
                bar.abandon();
            }
        }
        let _ = self.multi.clear();
    }
}

fn table_row(t: &Telemetry) -> String {
    format!(
        "{:<16} {:>8} {:>6.1} {:>10} {:>10} {:>7} {:>7}",
        t.device,
        t.seq,
        t.cpu.total_pct,
        t.mem.used_bytes / (1 << 20),
        t.agent.rss_bytes / 1024,
        t.link.queued,
        t.link.dropped
    )
}

async fn watch(link: &mut Link, device: Option<&str>, count: Option<usize>, json: bool) -> Result<Verdict> {
    if !json {
        println!(
            "{:<16} {:>8} {:>6} {:>10} {:>10} {:>7} {:>7}",
            "DEVICE", "SEQ", "CPU%", "MEM MiB", "RSS KiB", "QUEUED", "DROPPED"
        );
    }
    observe::watch(link, device, count, |sample| match sample {
        Ok(t) if json => println!("{}", serde_json::to_string(&t).expect("telemetry serializes")),
        Ok(t) => println!("{}", table_row(&t)),
        Err((topic, e)) => eprintln!("edgectl: skipping message on {topic}: {e}"),
    })
    .await?;
    Ok(true)
}

async fn status(link: &mut Link, wait: Duration, json: bool) -> Result<Verdict> {
    let (devices, skipped) = observe::statuses(link, wait).await?;
    for (topic, e) in skipped {
        eprintln!("edgectl: skipping status on {topic}: {e}");
    }
    if json {
        for s in devices.values() {
            println!("{}", serde_json::to_string(s)?);
        }
        return Ok(true);
    }
    println!("{:<16} {:<8} {:<10} {:>10}  MODELS", "DEVICE", "STATE", "VERSION", "UPTIME s");
    for s in devices.values() {
        let state = match s.state {
            State::Online => "online",
            State::Offline => "offline",
        };
        println!("{:<16} {:<8} {:<10} {:>10}  {}", s.device, state, s.agent_version, s.uptime_secs, s.models.join(","));
    }
    Ok(true)
}
