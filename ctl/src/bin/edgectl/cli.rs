//! The command line: every subcommand and flag, as clap reads them. Global flags take their
//! default from the environment (`EDGECTL_CONFIG`, `EDGECTL_URL`, ...), then from `ctl.toml`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use edge_proto::command::Target;
use edge_proto::ota::DEFAULT_CHUNK_BYTES;
use edgectl::deploy::parse_pin;

#[derive(Parser)]
#[command(
    name = "edgectl",
    version,
    about = "Operate an edge-agent fleet",
    after_help = crate::exit::HELP
)]
pub struct Cli {
    /// Configuration file: an [mqtt] table as the agent's, and an optional top-level
    /// signing_key. Default: the first of ./ctl.toml, ~/.config/edgectl/ctl.toml
    /// ($XDG_CONFIG_HOME), /etc/edgectl/ctl.toml.
    #[arg(long, global = true, env = "EDGECTL_CONFIG")]
    pub config: Option<PathBuf>,
    /// Broker URL, overriding [mqtt] url.
    #[arg(long, global = true, env = "EDGECTL_URL")]
    pub url: Option<String>,
    /// CA file, overriding [mqtt] ca_file.
    #[arg(long, global = true, env = "EDGECTL_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Operator certificate, overriding [mqtt] cert_file.
    #[arg(long, global = true, env = "EDGECTL_CERT_FILE")]
    pub cert_file: Option<PathBuf>,
    /// Operator TLS key, overriding [mqtt] key_file.
    #[arg(long, global = true, env = "EDGECTL_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// Command-signing key (operator.key from `edgectl keygen`), overriding signing_key.
    #[arg(long, global = true, env = "EDGECTL_SIGNING_KEY")]
    pub signing_key: Option<PathBuf>,
    /// The fleet commands are signed for (the devices' [ota] fleet_id), overriding fleet_id.
    #[arg(long, global = true, env = "EDGECTL_FLEET")]
    pub fleet: Option<String>,
    /// Machine-readable output on stdout: one JSON document (for `watch`, one object per
    /// line); messages stay on stderr.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Print telemetry as it arrives.
    Watch {
        /// One device.
        #[arg(long, conflicts_with = "all")]
        device: Option<String>,
        /// Every device (the default without --device).
        #[arg(long)]
        all: bool,
        /// Stop after N messages.
        #[arg(long)]
        count: Option<usize>,
    },
    /// List devices from their retained status.
    Status {
        /// Seconds to wait for retained messages.
        #[arg(long, default_value_t = 2)]
        wait: u64,
    },
    /// List the devices the fleet service (edge-fleet) knows: online state, groups, agent
    /// version, last seen, certificate expiry and each model's active version. Needs
    /// `[fleet] url` in ctl.toml; with --json, the service's array as is.
    Devices {
        /// Only the members of this group.
        #[arg(long)]
        group: Option<String>,
    },
    /// Compare a model's versions across the fleet (A/B): each version's requests, error rate
    /// and latency percentiles, pooled over the devices that ran it, side by side. Needs
    /// `[fleet] url` in ctl.toml.
    Compare {
        /// Model name.
        model: String,
        /// Leave out devices whose figures are older than this many seconds (default a day).
        #[arg(long)]
        since: Option<u64>,
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
    /// Deploy a model over the air. With `[fleet] url` in ctl.toml: sign it and hand it to
    /// the fleet service, which delivers it to the target's devices, including those offline
    /// now and members that join the group later, until superseded, cancelled or expired;
    /// exits once stored (--wait: once every device met is done). Without `[fleet] url` (or
    /// with --direct): send the signed manifest, then the chunks, then serve repairs until
    /// every device that answered has it (or, with --wait, has installed it).
    Deploy(Box<DeployArgs>),
    /// Roll a model out to a group in waves through the fleet service (`[fleet] url`):
    /// each wave's devices run the new version on trial and the service compares it with
    /// the version it replaced on the same devices (p95 latency, error rate) against the
    /// gates; a wave that passes admits the next, one that fails halts the rollout and rolls
    /// its devices back, and later waves never get the model. Follows it until it completes
    /// (exit 0) or halts (exit 1); interrupting edgectl leaves it running (`rollout watch
    /// ID`). Subcommands: list, status, watch, approve.
    #[command(args_conflicts_with_subcommands = true)]
    Rollout(Box<RolloutArgs>),
    /// The fleet service's deployments: list them, show or watch one device by device
    /// (from any machine, at any time), or cancel one. Needs `[fleet] url` in ctl.toml.
    Deployments {
        #[command(subcommand)]
        cmd: Option<DeploymentsCmd>,
    },
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
    /// Add your signature to a command saved with `--save` (for devices with [ota] quorum):
    /// prints what the command is, then signs it in place. Send it with `edgectl send`.
    Cosign {
        /// The command file.
        file: PathBuf,
    },
    /// Publish a command saved with `--save` (and cosigned) and wait for the devices' answers.
    Send {
        /// The command file.
        file: PathBuf,
        /// Seconds to wait for the devices' answers.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
        /// For a group: seconds its devices have to acknowledge.
        #[arg(long, default_value_t = 3)]
        accept_wait: u64,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) on stdout,
    /// e.g. `edgectl completions bash > /etc/bash_completion.d/edgectl`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write man pages (edgectl.1 and one per subcommand) into a directory.
    #[command(hide = true)]
    Man {
        /// Directory to write the pages into.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Stop a model's shadow (a version deployed with --shadow); the version stays
    /// installed. `edgectl activate` promotes a shadow instead.
    EndShadow {
        #[command(flatten)]
        to: TargetArgs,
        /// Model name.
        #[arg(long)]
        name: String,
        #[command(flatten)]
        timing: Timing,
    },
    /// Print a device's agent version, configuration and models.
    GetStatus {
        /// Device id.
        #[arg(long)]
        device: String,
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
    /// Trust another operator key on the devices, with a role and optionally a scope (key
    /// rotation: add the new key, then revoke the old one). Needs an admin key.
    AddOperator {
        #[command(flatten)]
        to: TargetArgs,
        /// The new key's public half (operator.pub from `edgectl keygen`).
        #[arg(long)]
        key: PathBuf,
        /// What it may sign.
        #[arg(long, value_enum)]
        role: RoleArg,
        /// A device id or group its commands may target (repeat for more; none: every device).
        #[arg(long = "scope")]
        scope: Vec<String>,
        /// Longest lifetime, in seconds, of a command it signs.
        #[arg(long)]
        max_ttl: Option<u64>,
        #[command(flatten)]
        timing: Timing,
    },
    /// Stop trusting a key on the devices (configured or added); its commands are refused from
    /// then on and its transfers in progress end. Needs an admin key.
    RevokeKey {
        #[command(flatten)]
        to: TargetArgs,
        #[command(flatten)]
        which: KeyArgs,
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
pub struct TargetArgs {
    /// One device, by id.
    #[arg(long)]
    pub device: Option<String>,
    /// Every device of a group.
    #[arg(long)]
    pub group: Option<String>,
}

impl TargetArgs {
    pub fn target(&self) -> Target {
        match (&self.device, &self.group) {
            (Some(d), _) => Target::Device(d.clone()),
            (None, Some(g)) => Target::Group(g.clone()),
            (None, None) => unreachable!("clap requires one of --device and --group"),
        }
    }
}

/// Which key.
#[derive(Args)]
#[group(required = true, multiple = false)]
pub struct KeyArgs {
    /// The key's public half (operator.pub).
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// The key id (16 hex digits, as acks and the devices' log name it).
    #[arg(long)]
    pub key_id: Option<String>,
}

/// An operator key's role.
#[derive(Clone, Copy, ValueEnum)]
pub enum RoleArg {
    /// get-status, infer.
    Observe,
    /// + deploy, activate, rollback, remove-model, cancel.
    Deploy,
    /// Everything.
    Admin,
}

/// How long a command waits, and how long it is valid.
#[derive(Args)]
pub struct Timing {
    /// Seconds to wait for the devices' answers.
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
    /// Seconds the command stays valid on devices.
    #[arg(long, default_value_t = 300)]
    pub ttl: u64,
    /// For a group: seconds its devices have to acknowledge (those that do are waited for).
    #[arg(long, default_value_t = 3)]
    pub accept_wait: u64,
    /// Sign the command so that other admins can cosign it, write it to FILE and send
    /// nothing: for devices with [ota] quorum. Then `edgectl cosign FILE`, `edgectl send FILE`.
    #[arg(long)]
    pub save: Option<PathBuf>,
}

#[derive(Args)]
pub struct WaitArgs {
    /// Wait for the result, not only for the device to accept.
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub timing: Timing,
}

/// How `deploy` cuts a model into chunks.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Chunking {
    /// By content: delta transfers.
    Content,
    /// In fixed-size chunks.
    Fixed,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum FormatArg {
    Tflite,
    Onnx,
}

/// What a deploy installs: shared by `deploy` and `rollout`.
#[derive(Args)]
pub struct ModelArgs {
    /// The model file (.tflite or .onnx).
    #[arg(long)]
    pub model: PathBuf,
    /// Name the model is served under.
    #[arg(long)]
    pub name: String,
    /// Version label.
    #[arg(long)]
    pub version: String,
    /// Model format; by default from the file's extension.
    #[arg(long, value_enum)]
    pub format: Option<FormatArg>,
    /// Validation input (.npy), in the model's input order; devices run it before switching.
    #[arg(long = "validate-input")]
    pub validate_inputs: Vec<PathBuf>,
    /// Expected validation output (.npy), in the model's output order.
    #[arg(long = "validate-output")]
    pub validate_outputs: Vec<PathBuf>,
    /// Largest accepted absolute difference per output element.
    #[arg(long, default_value_t = 1e-4)]
    pub tolerance: f32,
    /// The model's reference profile (JSON from `edge-agent profile --model F --inputs DIR
    /// --out FILE`), signed into the deploy: devices report each tensor's drift against it
    /// (edge_agent_tensor_drift_psi). Needs agents that read command version 5.
    #[arg(long, value_name = "FILE")]
    pub profile: Option<PathBuf>,
    /// Longest acceptable median latency of a validation run, in ms (0: no budget).
    #[arg(long, default_value_t = 0)]
    pub latency_budget_ms: u32,
    /// Scalar input fixed at load, NAME=VALUE (repeatable).
    #[arg(long = "pin", value_parser = pin)]
    pub pins: Vec<(String, f64)>,
    /// Oldest agent version that may install it (X.Y.Z); any by default.
    #[arg(long)]
    pub min_agent_version: Option<String>,
    /// Chunk size in bytes (with `--chunking content`, the longest chunk); a chunk plus
    /// 1 KiB must fit [mqtt] max_packet_bytes.
    #[arg(long, default_value_t = DEFAULT_CHUNK_BYTES)]
    pub chunk_size: u32,
    /// How the model is cut: `content` (delta transfers: a device that holds an earlier
    /// version receives only the chunks that changed; needs agents that read command
    /// version 2) or `fixed` (every chunk is sent; any agent).
    #[arg(long, value_enum, default_value_t = Chunking::Content)]
    pub chunking: Chunking,
    /// Seconds the command stays valid (devices refuse it, and a resumed transfer, after).
    /// Default: 3600 for a direct deploy; 604800 (7 days) through the fleet service, for
    /// devices that are offline now.
    #[arg(long)]
    pub ttl: Option<u64>,
    /// Install it as a shadow of the active version instead of activating it: it runs on a
    /// copy of this percentage (1-100) of the requests and its outputs are compared, never
    /// returned (agents of command version 4). For a rollout: each wave runs it in shadow
    /// first and is promoted if it passes (--min-agreement).
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=100))]
    pub shadow: Option<u8>,
}

#[derive(Args)]
pub struct DeployArgs {
    #[command(flatten)]
    pub what: ModelArgs,
    #[command(flatten)]
    pub to: TargetArgs,
    /// Wait until every device has installed it (or failed), not only received it.
    #[arg(long)]
    pub wait: bool,
    /// Most bytes per second to publish, chunks and repairs together.
    #[arg(long)]
    pub rate: Option<u64>,
    /// Seconds devices have to accept: for a group, those that do are its members for this
    /// deploy; a single device that does not answer in time is reported as `no answer`.
    #[arg(long, default_value_t = 3)]
    pub accept_wait: u64,
    /// Seconds to wait for every device.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// Deploy straight over the broker even when `[fleet] url` is set: only the devices
    /// online now get it, and edgectl serves the transfer itself.
    #[arg(long)]
    pub direct: bool,
}

#[derive(Args)]
pub struct RolloutArgs {
    #[command(subcommand)]
    pub cmd: Option<RolloutCmd>,
    // Two optional groups side by side: clap 4.6 leaves an optional group `None` when the
    // group nests another flattened one.
    #[command(flatten)]
    pub what: Option<ModelArgs>,
    #[command(flatten)]
    pub start: Option<RolloutStart>,
}

/// A new rollout: what to install, where, in which waves, judged by which gates.
#[derive(Args)]
pub struct RolloutStart {
    /// The group to roll out to.
    #[arg(long)]
    pub group: String,
    /// Cumulative wave sizes: a number of devices or a percentage of the members
    /// (default 1,10%,50%,100%).
    #[arg(long)]
    pub waves: Option<String>,
    /// Largest p95 latency of the new version over the old one's on the same devices
    /// (default 1.5).
    #[arg(long)]
    pub max_p95_ratio: Option<f64>,
    /// Largest share of the new version's requests that fail (default 0.01).
    #[arg(long)]
    pub max_error_rate: Option<f64>,
    /// Requests the new version must serve across a wave before it is judged (default 100).
    #[arg(long)]
    pub min_requests: Option<u64>,
    /// With --shadow: the smallest share of compared requests whose outputs agreed with the
    /// active version's (e.g. 0.98); a wave that passes is promoted.
    #[arg(long)]
    pub min_agreement: Option<f64>,
    /// Seconds a wave may take to run the version and see enough requests (default 1800);
    /// past it the wave fails.
    #[arg(long)]
    pub wave_timeout: Option<u64>,
    /// Wait for `edgectl rollout approve ID` after each wave that passes.
    #[arg(long)]
    pub approve_each: bool,
    /// A TOML file of the settings above (waves, max_p95_ratio, max_error_rate,
    /// min_requests, min_agreement, wave_timeout_secs, approve_each); flags win over it.
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Start it and exit without following it (`edgectl rollout watch ID` follows it).
    #[arg(long)]
    pub detach: bool,
}

#[derive(Subcommand)]
pub enum RolloutCmd {
    /// Every rollout, newest first.
    List,
    /// One rollout: its waves, gates, figures and every decision with its numbers.
    Status {
        /// Rollout id (the deployment id `rollout` printed).
        id: String,
    },
    /// Follow a rollout until it completes (exit 0) or halts (exit 1).
    Watch {
        /// Rollout id.
        id: String,
    },
    /// Let a rollout waiting for approval go on to its next wave.
    Approve {
        /// Rollout id.
        id: String,
    },
}

#[derive(Subcommand)]
pub enum DeploymentsCmd {
    /// Every deployment, newest first, with its device counts (the default).
    List,
    /// One deployment, device by device.
    Show {
        /// Deployment id (the command id `deploy` printed).
        id: String,
    },
    /// Print each device's progress as it changes, until every device met is done.
    Watch {
        /// Deployment id.
        id: String,
        /// Give up after this many seconds (exit 1); default: wait as long as it takes.
        #[arg(long)]
        timeout: Option<u64>,
    },
    /// Cancel a deployment: devices still transferring or inside their health window are
    /// sent a signed cancel (they go back to their previous version); the others are not
    /// sent anything more.
    Cancel {
        /// Deployment id.
        id: String,
        /// Seconds the signed cancel stays valid.
        #[arg(long, default_value_t = 7 * 24 * 3600)]
        ttl: u64,
    },
}

pub fn pin(s: &str) -> Result<(String, f64), String> {
    parse_pin(s).map_err(|e| e.to_string())
}
