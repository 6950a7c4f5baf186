//! `edgectl`: the operator's CLI for an edge-agent fleet. Parses flags ([`cli`]), calls
//! the `edgectl` library, prints ([`output`], [`progress`]), and maps the result to an exit
//! status ([`exit`]: 0 every device reached the goal, 1 one did not, 2 edgectl could not run
//! the command, 3 the broker could not be reached).

mod cli;
mod exit;
mod fleet_cmds;
mod output;
mod progress;
mod rollout_cmd;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{CommandFactory, Parser};
use edge_proto::codec::Versioned;
use edge_proto::command::{hex, key_id, NpyBytes, OperatorGrant, Payload, Role, Target};
use edge_proto::ota::{ModelFormat, Validation};
use edgectl::command::{parse_command_id, send_command, send_signed, sign_request, CommandRequest, Event};
use edgectl::config::{self, CtlConfig, Overrides};
use edgectl::deploy::{check_chunk_size, deploy, DeployRequest};
use edgectl::keys::Signer;
use edgectl::track::Goal;
use edgectl::{cosign, keys, npy, observe, Link};
use serde_json::json;

use crate::cli::{Cli, Cmd, Command, DeployArgs, FormatArg, ModelArgs, RoleArg, Timing};
use crate::exit::Exit;
use crate::output::Show;
use crate::progress::DeployUi;

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
        Ok(true) => Exit::Ok.into(),
        Ok(false) => Exit::DeviceFailed.into(),
        Err(e) => {
            eprintln!("edgectl: {}", format!("{e:#}").replace('\n', " "));
            Exit::of_error(&e).into()
        }
    }
}

fn run(cli: &Cli) -> Result<Verdict> {
    // What needs no configuration.
    match &cli.command {
        Command::Keygen { out } => {
            let (key, public, id) = keys::keygen(out)?;
            if cli.json {
                output::document(&json!({"key": key, "public": public, "key_id": id.to_string()}));
            } else {
                println!("wrote {} and {} (key id {id})", key.display(), public.display());
            }
            return Ok(true);
        }
        Command::Pki { cmd } => {
            cmd.run(&mut std::io::stdout(), cli.json)?;
            return Ok(true);
        }
        // Generated from the definitions the binary parses with, so they cannot drift from
        // the flags; scripts/build-debs.sh puts them in the .deb.
        Command::Completions { shell } => {
            clap_complete::generate(*shell, &mut Cli::command(), "edgectl", &mut std::io::stdout());
            return Ok(true);
        }
        Command::Man { out } => {
            std::fs::create_dir_all(out).with_context(|| format!("--out {}", out.display()))?;
            clap_mangen::generate_to(Cli::command(), out).with_context(|| format!("--out {}", out.display()))?;
            if cli.json {
                output::document(&json!({ "man_dir": out }));
            } else {
                println!("wrote man pages into {}", out.display());
            }
            return Ok(true);
        }
        _ => {}
    }
    let overrides = Overrides {
        url: cli.url.clone(),
        ca_file: cli.ca_file.clone(),
        cert_file: cli.cert_file.clone(),
        key_file: cli.key_file.clone(),
        signing_key: cli.signing_key.clone(),
        fleet_id: cli.fleet.clone(),
    };
    let path = config::locate(cli.config.as_deref(), |k| std::env::var_os(k), Path::exists)?;
    let config = CtlConfig::load(&path, &overrides)?;
    // The fleet service: HTTP, no broker.
    if let Some(verdict) = fleet_cmds::run(&cli.command, &config, cli.json)? {
        return Ok(verdict);
    }
    if let Command::Cosign { file } = &cli.command {
        let signer = config.signer()?;
        let (cmd, _) = cosign::load(file)?;
        eprintln!("edgectl: cosigning {}", cosign::describe(&cmd));
        let cmd = cosign::cosign_file(file, &signer)?;
        let signers = cmd.signers().count();
        match cli.json {
            true => output::document(&json!({"file": file, "command_id": hex(&cmd.id), "signatures": signers})),
            false => {
                println!("{}: {signers} signatures; send it with: edgectl send {}", file.display(), file.display())
            }
        }
        return Ok(true);
    }
    // Everything that can be refused without the broker is, before connecting.
    let job = Job::new(&cli.command, &config, cli.json)?;
    if let What::Save { req, signer, path } = &job.what {
        let (cmd, _) = sign_request(req, signer, config.mqtt.max_packet_bytes)?;
        cosign::save(path, &cmd)?;
        match job.json {
            true => output::document(&json!({"file": path, "command_id": hex(&cmd.id)})),
            false => println!(
                "wrote {} ({}); next: edgectl cosign {} (each other admin), then edgectl send {}",
                path.display(),
                cosign::describe(&cmd),
                path.display(),
                path.display()
            ),
        }
        return Ok(true);
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let mut link = Link::connect(&config.mqtt).await?;
        let verdict = job.run(&mut link).await;
        link.close().await;
        verdict
    })
}

/// A command line turned into what to do, with every file read and every flag checked.
struct Job {
    what: What,
    /// `--json`.
    json: bool,
}

enum What {
    Watch {
        device: Option<String>,
        count: Option<usize>,
    },
    Status {
        wait: Duration,
    },
    Deploy {
        req: Box<DeployRequest>,
        key: Box<Signer>,
    },
    Command {
        req: Box<CommandRequest>,
        key: Box<Signer>,
        show: Show,
    },
    /// `--save FILE`: sign for cosigning and write, send nothing.
    Save {
        req: Box<CommandRequest>,
        signer: Box<Signer>,
        path: PathBuf,
    },
    /// `send FILE`: a command signed before.
    Send {
        cmd: Box<edge_proto::command::Command>,
        bytes: Vec<u8>,
        req: Box<CommandRequest>,
    },
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
    fn new(command: &Command, config: &CtlConfig, json: bool) -> Result<Job> {
        Ok(Job { what: What::new(command, config)?, json })
    }

    async fn run(self, link: &mut Link) -> Result<Verdict> {
        let json = self.json;
        match self.what {
            What::Watch { device, count } => {
                output::watch_header(json);
                observe::watch(link, device.as_deref(), count, |sample| match sample {
                    Ok(t) => output::watch_sample(&t, json),
                    Err((topic, e)) => eprintln!("edgectl: skipping message on {topic}: {e}"),
                })
                .await?;
                Ok(true)
            }
            What::Status { wait } => {
                let (devices, skipped) = observe::statuses(link, wait).await?;
                for (topic, e) in skipped {
                    eprintln!("edgectl: skipping status on {topic}: {e}");
                }
                output::statuses(devices.values(), json)?;
                Ok(true)
            }
            What::Deploy { req, key } => {
                let mut ui = DeployUi::new(&req.target, json);
                let outcome = deploy(link, &key, &req, |e| ui.on_event(e)).await?;
                ui.finish();
                output::deploy(&outcome, &req.target, req.accept_wait, json);
                Ok(outcome.all_ok())
            }
            What::Save { .. } => unreachable!("saved before connecting"),
            What::Command { .. } | What::Send { .. } => {
                let progress = |e: &Event| match e {
                    Event::Disconnected(why) => eprintln!("edgectl: broker connection lost ({why}); reconnecting"),
                    Event::Reconnected => eprintln!("edgectl: reconnected to the broker"),
                    _ => {}
                };
                let (outcome, req, show) = match self.what {
                    What::Command { req, key, show } => (send_command(link, &key, &req, progress).await?, req, show),
                    What::Send { cmd, bytes, req } => {
                        (send_signed(link, &cmd, bytes, &req, progress).await?, req, Show::Lines)
                    }
                    _ => unreachable!("matched above"),
                };
                if outcome.results.is_empty() {
                    if let Target::Group(g) = &req.target {
                        eprintln!("edgectl: no device of group {g} answered within {:?}", req.accept_wait);
                    }
                }
                output::command(&outcome, &show, json)?;
                Ok(outcome.all_ok())
            }
        }
    }
}

impl What {
    fn new(command: &Command, config: &CtlConfig) -> Result<What> {
        let key = || config.signer().map(Box::new);
        let (target, payload, timing, goal, show) = match command {
            Command::Keygen { .. }
            | Command::Pki { .. }
            | Command::Completions { .. }
            | Command::Man { .. }
            | Command::Devices { .. }
            | Command::Compare { .. }
            | Command::Cosign { .. }
            | Command::Deployments { .. }
            | Command::Rollout(_) => {
                unreachable!("handled before connecting to the broker")
            }
            Command::Watch { device, all: _, count } => {
                return Ok(What::Watch { device: device.clone(), count: *count })
            }
            Command::Status { wait } => return Ok(What::Status { wait: secs(*wait) }),
            Command::Send { file, timeout, accept_wait } => {
                let (cmd, bytes) = cosign::load(file)?;
                eprintln!("edgectl: sending {}", cosign::describe(&cmd));
                let mut req = CommandRequest::new(cmd.target.clone(), cmd.payload.clone());
                req.timeout = secs(*timeout);
                if matches!(req.target, Target::Group(_)) {
                    req.accept_wait = secs(*accept_wait);
                }
                return Ok(What::Send { cmd: Box::new(cmd), bytes, req: Box::new(req) });
            }
            Command::Deploy(args) => {
                let req = deploy_request(args)?;
                check_chunk_size(req.chunk_size, config.mqtt.max_packet_bytes)?;
                return Ok(What::Deploy { req: Box::new(req), key: key()? });
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
                Cmd::GetStatus { device, timing } => {
                    (Target::Device(device.clone()), Payload::GetStatus, timing, Goal::Terminal, Show::Status)
                }
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
                Cmd::EndShadow { to, name, timing } => {
                    (to.target(), Payload::EndShadow { name: name.clone() }, timing, Goal::Terminal, Show::Lines)
                }
                Cmd::Cancel { to, command, timing } => {
                    let command_id = parse_command_id(command)?;
                    (to.target(), Payload::Cancel { command_id }, timing, Goal::Terminal, Show::Lines)
                }
                Cmd::AddOperator { to, key, role, scope, max_ttl, timing } => {
                    let public = keys::load_public_key(key)?;
                    let role = match role {
                        RoleArg::Observe => Role::Observe,
                        RoleArg::Deploy => Role::Deploy,
                        RoleArg::Admin => Role::Admin,
                    };
                    if let Some(bad) = scope.iter().find(|g| !edge_proto::topics::valid_level(g)) {
                        bail!("--scope {bad:?}: not a device id or group name");
                    }
                    let grant =
                        OperatorGrant { key: *public.as_bytes(), role, groups: scope.clone(), max_ttl_secs: *max_ttl };
                    (to.target(), Payload::AddOperator(grant), timing, Goal::Terminal, Show::Lines)
                }
                Cmd::RevokeKey { to, which, timing } => {
                    let id = match (&which.key, &which.key_id) {
                        (Some(path), _) => key_id(&keys::load_public_key(path)?),
                        (None, Some(text)) => parse_key_id(text)?,
                        (None, None) => unreachable!("clap requires one of --key and --key-id"),
                    };
                    (to.target(), Payload::RevokeKey { key_id: id }, timing, Goal::Terminal, Show::Lines)
                }
            },
        };
        let req = Box::new(request(target, payload, timing, goal));
        if let Some(path) = &timing.save {
            let mut signer = key()?;
            signer.cosignable = true;
            return Ok(What::Save { req, signer, path: path.clone() });
        }
        Ok(What::Command { req, key: key()?, show })
    }
}

fn deploy_request(args: &DeployArgs) -> Result<DeployRequest> {
    let mut req = model_request(&args.what, args.to.target())?;
    req.rate = args.rate;
    req.accept_wait = secs(args.accept_wait);
    req.timeout = secs(args.timeout);
    req.wait = args.wait;
    Ok(req)
}

/// A deploy of what `args` describes to `target`, with the defaults for how it is sent.
fn model_request(args: &ModelArgs, target: Target) -> Result<DeployRequest> {
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
    let mut req = DeployRequest::new(target, &args.name, &args.version, format, model);
    req.validation = validation;
    req.profile = args.profile.as_deref().map(read_profile).transpose()?;
    req.pins = args.pins.clone();
    req.latency_budget_ms = args.latency_budget_ms;
    req.min_agent_version = args.min_agent_version.clone().unwrap_or_default();
    req.chunk_size = args.chunk_size;
    req.delta = args.chunking == cli::Chunking::Content;
    req.ttl = args.ttl.map_or(edgectl::deploy::DEFAULT_TTL, secs);
    req.shadow = args.shadow;
    Ok(req)
}

/// A key id as 16 hex digits.
fn parse_key_id(text: &str) -> Result<[u8; 8]> {
    let t = text.trim();
    let mut id = [0u8; 8];
    if t.len() != 16 || !t.is_ascii() {
        bail!("--key-id {text:?}: expected 16 hex digits");
    }
    for (i, b) in id.iter_mut().enumerate() {
        *b = u8::from_str_radix(&t[2 * i..2 * i + 2], 16).with_context(|| format!("--key-id {text:?}: not hex"))?;
    }
    Ok(id)
}

/// Reads a reference profile (`edge-agent profile --out FILE`), checking it as a device
/// would (its model is checked against the deploy's when the manifest is built).
fn read_profile(path: &Path) -> Result<edge_proto::profile::Profile> {
    let text = std::fs::read_to_string(path).with_context(|| format!("--profile {}", path.display()))?;
    let profile: edge_proto::profile::Profile = serde_json::from_str(&text)
        .with_context(|| format!("--profile {}: not a profile from edge-agent profile", path.display()))?;
    profile.check().map_err(|e| anyhow::anyhow!("--profile {}: {e}", path.display()))?;
    Ok(profile)
}

/// Reads an .npy file, checking its header.
fn read_npy(path: &Path) -> Result<NpyBytes> {
    let bytes = std::fs::read(path).with_context(|| format!("{}", path.display()))?;
    npy::header(&bytes).with_context(|| format!("{}", path.display()))?;
    Ok(NpyBytes(bytes))
}
