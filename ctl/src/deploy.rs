//! `deploy`: a model to a device or a group, over the air.
//!
//! 1. Subscribe to the target's acks and repair requests; publish the signed
//!    `DeployModel(manifest)` command (`DeployModelContent`, version 2, for a delta
//!    transfer: the artifact cut by content).
//! 2. Acceptance: a single device until it answers (or `accept_wait` passes: `no
//!    answer`); a group for `accept_wait`, the devices that answer being its members.
//! 3. The first pass: every chunk once (a delta transfer: every chunk that a device said
//!    it lacks right after accepting), on the device's `ota` topic or the group's,
//!    paced to `rate`, waiting whenever rumqttc's request channel is full (so at most a
//!    few chunks are in memory besides the artifact).
//! 4. Repairs for as long as the deploy runs: a [`Need`] from a device sends what it
//!    lists to that device's own `ota` topic ([`Schedule`]).
//! 5. Done when every device has reached `Progress(100)` or a final state (without
//!    `wait`), or a final state (with `wait`), or at the timeout.
//!
//! [`plan`] does everything before the network (manifest, artifact, signed command, size
//! checks) and is tested on its own, as are the [`Tracker`] and the [`Schedule`] that the
//! loop in [`deploy`] drives.

use std::time::Duration;

use edge_proto::cdc::CdcParams;
use edge_proto::codec::Versioned;
use edge_proto::command::{Command, Payload, Target};
use edge_proto::ota::{
    prepare_cut, valid_label, Chunk, Cut, Manifest, ModelFormat, Need, Validation, DEFAULT_CHUNK_BYTES, MAX_CHUNK_BYTES,
};
use edge_proto::profile::Profile;
use edge_proto::topics::fleet;
use tokio::time::Instant;

use crate::command::{
    check_target, command_topic, device_filter, now_ms, random_id, route, signed_command, take_ack, CommandError,
    Event, HEADER_ROOM,
};
use crate::keys::Signer;
use crate::link::{Link, LinkError, LinkEvent, Message};
use crate::track::{DeviceResult, Goal, Tracker};
use crate::transfer::{Dest, Pacer, Schedule};

/// Default wait for the devices to finish.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// Default validity of a deploy command: devices refuse it (and a resumed transfer) after.
pub const DEFAULT_TTL: Duration = Duration::from_secs(60 * 60);

/// What can go wrong preparing or running a deploy. Device failures are in the
/// [`DeployOutcome`], not here.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// Building, signing or sending the command failed.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// A rollout's target, waves or gates are wrong: the message says how.
    #[error("{0}")]
    Rollout(String),
    /// The chunk size does not fit.
    #[error("--chunk-size {chunk_size}: {problem}")]
    ChunkSize {
        /// The chunk size asked for.
        chunk_size: u32,
        /// Why it does not fit, and what would.
        problem: String,
    },
    /// The model name or version is not a plain label.
    #[error("{what} {value:?} is not a plain label: 1 to 64 of letters, digits, '.', '-', '_', not starting with '.'")]
    Label {
        /// "model name" or "version".
        what: &'static str,
        /// What was given.
        value: String,
    },
    /// The model file is empty.
    #[error("the model is empty")]
    EmptyModel,
    /// The manifest is inconsistent (a validation vector too large, say).
    #[error("manifest: {0}")]
    Manifest(String),
    /// A minimum agent version that is not `X.Y.Z`.
    #[error("--min-agent-version {0:?}: expected MAJOR.MINOR.PATCH, e.g. 0.2.0")]
    AgentVersion(String),
    /// A `--pin` that is not `NAME=NUMBER`.
    #[error("--pin {0:?}: expected NAME=NUMBER, e.g. --pin sr=16000")]
    Pin(String),
}

impl DeployError {
    /// The broker connection error underneath, if that is what this is.
    pub fn link(&self) -> Option<&LinkError> {
        match self {
            DeployError::Command(e) => e.link(),
            _ => None,
        }
    }
}

impl From<LinkError> for DeployError {
    fn from(e: LinkError) -> Self {
        DeployError::Command(e.into())
    }
}

/// A deploy: what to install where, and how.
#[derive(Debug, Clone)]
pub struct DeployRequest {
    /// A device or a group.
    pub target: Target,
    /// Model name it is served under.
    pub name: String,
    /// Version label.
    pub version: String,
    /// File format.
    pub format: ModelFormat,
    /// The model file.
    pub model: Vec<u8>,
    /// Golden inputs and outputs the device checks before switching.
    pub validation: Option<Validation>,
    /// The model's reference profile, for drift (`edge-agent profile`): a version 5 command,
    /// which agents older than profiles refuse.
    pub profile: Option<Profile>,
    /// Scalar inputs fixed at load.
    pub pins: Vec<(String, f64)>,
    /// Longest acceptable median latency of a validation run, ms; 0 for none.
    pub latency_budget_ms: u32,
    /// Oldest agent version that may install it; empty for any.
    pub min_agent_version: String,
    /// Chunk size in bytes; with `delta`, the longest chunk.
    pub chunk_size: u32,
    /// Cut the artifact by content ([`CdcParams::for_max`] of `chunk_size`), so that a
    /// device that holds an earlier version receives only the chunks that changed (a
    /// version 2 command: agents older than delta transfers refuse it). `false`: fixed
    /// chunks of `chunk_size`, which every agent takes.
    pub delta: bool,
    /// Most bytes per second to publish (first pass and repairs together); `None` for
    /// as fast as the broker takes them.
    pub rate: Option<u64>,
    /// How long devices have to accept (see [`crate::command::CommandRequest::accept_wait`]).
    pub accept_wait: Duration,
    /// Longest wait for the devices.
    pub timeout: Duration,
    /// Validity of the command.
    pub ttl: Duration,
    /// Wait for the install's result (`Succeeded`/`Failed`), not only for the transfer.
    pub wait: bool,
    /// Install as a shadow on this percentage of the requests instead of activating
    /// ([`Payload::Shadow`], command version 4).
    pub shadow: Option<u8>,
}

impl DeployRequest {
    /// A deploy of `model` with the defaults: no validation, pins or budget,
    /// [`DEFAULT_CHUNK_BYTES`], no rate limit, 3 s to accept, [`DEFAULT_TIMEOUT`],
    /// [`DEFAULT_TTL`], not waiting for the install.
    pub fn new(target: Target, name: &str, version: &str, format: ModelFormat, model: Vec<u8>) -> DeployRequest {
        DeployRequest {
            target,
            name: name.into(),
            version: version.into(),
            format,
            model,
            validation: None,
            profile: None,
            pins: vec![],
            latency_budget_ms: 0,
            min_agent_version: String::new(),
            chunk_size: DEFAULT_CHUNK_BYTES,
            // The library's callers choose; the CLI's `--chunking` defaults to content.
            delta: false,
            rate: None,
            accept_wait: crate::command::DEFAULT_ACCEPT_WAIT,
            timeout: DEFAULT_TIMEOUT,
            ttl: DEFAULT_TTL,
            wait: false,
            shadow: None,
        }
    }
}

/// Counters of one transfer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TransferStats {
    /// Chunks in the artifact.
    pub chunks: u32,
    /// Bytes in the artifact (model plus validation vector).
    pub artifact_bytes: u64,
    /// Chunks of the first pass published.
    pub first_pass_chunks: u32,
    /// Repair requests served.
    pub repair_requests: u32,
    /// Chunks published as repairs.
    pub repaired_chunks: u32,
    /// Bytes published as chunk messages, headers included.
    pub bytes_published: u64,
    /// Acks and repair requests that did not decode, or named another device than their
    /// topic's.
    pub ignored_messages: u32,
}

/// What happened to a deploy.
#[derive(Debug, Clone, PartialEq)]
pub struct DeployOutcome {
    /// The command id (for `edgectl cmd cancel`).
    pub command_id: [u8; 16],
    /// The transfer id.
    pub transfer_id: [u8; 16],
    /// One per device; for a single device always exactly one. Empty when no device of a
    /// group answered.
    pub results: Vec<DeviceResult>,
    /// Transfer counters.
    pub stats: TransferStats,
}

impl DeployOutcome {
    /// Whether at least one device answered and every one succeeded (or, without
    /// `wait`, has the whole artifact).
    pub fn all_ok(&self) -> bool {
        !self.results.is_empty() && self.results.iter().all(|r| r.outcome.is_ok())
    }
}

/// Checks `chunk_size` against the protocol's limit and the configured packet size.
pub fn check_chunk_size(chunk_size: u32, max_packet_bytes: usize) -> Result<(), DeployError> {
    let problem = if chunk_size == 0 {
        "must be at least 1".to_string()
    } else if chunk_size as usize > MAX_CHUNK_BYTES {
        format!("over the protocol's {MAX_CHUNK_BYTES}-byte chunk limit")
    } else if chunk_size as usize + HEADER_ROOM > max_packet_bytes {
        format!(
            "a chunk plus {HEADER_ROOM} bytes of headers does not fit [mqtt] max_packet_bytes = {max_packet_bytes}: \
             use --chunk-size {} or less, or raise max_packet_bytes (here, on the broker and on the devices)",
            max_packet_bytes.saturating_sub(HEADER_ROOM)
        )
    } else {
        return Ok(());
    };
    Err(DeployError::ChunkSize { chunk_size, problem })
}

/// Parses `NAME=NUMBER`.
pub fn parse_pin(s: &str) -> Result<(String, f64), DeployError> {
    let (name, value) = s.split_once('=').ok_or_else(|| DeployError::Pin(s.into()))?;
    let value: f64 = value.trim().parse().map_err(|_| DeployError::Pin(s.into()))?;
    let name = name.trim();
    if name.is_empty() || !value.is_finite() {
        return Err(DeployError::Pin(s.into()));
    }
    Ok((name.to_string(), value))
}

/// Everything a deploy publishes, built before connecting.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The signed command.
    pub command: Command,
    /// Its encoding.
    pub command_bytes: Vec<u8>,
    /// The manifest it carries.
    pub manifest: Manifest,
    /// Model plus validation vector, cut into chunks by the manifest.
    pub artifact: Vec<u8>,
}

impl Plan {
    /// The message for chunk `index`.
    pub fn chunk_message(&self, index: u32) -> Vec<u8> {
        let r = self.manifest.chunk_range(index);
        edge_proto::encode(&Chunk {
            version: Chunk::VERSION,
            transfer_id: self.manifest.transfer_id,
            index,
            data: self.artifact[r.start as usize..r.end as usize].to_vec(),
        })
    }
}

/// Builds the manifest, the artifact and the signed command for `req`, issued at `now_ms`
/// with the ids given, and checks every size against the protocol and `max_packet_bytes`.
pub fn plan(
    req: &DeployRequest,
    signer: &Signer,
    command_id: [u8; 16],
    transfer_id: [u8; 16],
    now_ms: u64,
    max_packet_bytes: usize,
) -> Result<Plan, DeployError> {
    check_target(&req.target)?;
    if !edge_proto::topics::valid_level(&req.name) || !valid_label(&req.name) {
        return Err(DeployError::Label { what: "model name", value: req.name.clone() });
    }
    if !valid_label(&req.version) {
        return Err(DeployError::Label { what: "version", value: req.version.clone() });
    }
    if req.model.is_empty() {
        return Err(DeployError::EmptyModel);
    }
    let parts: Vec<&str> = req.min_agent_version.split('.').collect();
    if !req.min_agent_version.is_empty()
        && (parts.len() != 3 || parts.iter().any(|p| p.is_empty() || p.parse::<u32>().is_err()))
    {
        return Err(DeployError::AgentVersion(req.min_agent_version.clone()));
    }
    check_chunk_size(req.chunk_size, max_packet_bytes)?;
    let cut = match req.delta {
        false => Cut::Fixed(req.chunk_size),
        true => Cut::Content(CdcParams::for_max(req.chunk_size).ok_or(DeployError::ChunkSize {
            chunk_size: req.chunk_size,
            problem: "is too small for content-defined chunks (512 bytes at least): use a larger one, or --chunking fixed"
                .into(),
        })?),
    };
    let (mut manifest, artifact) =
        prepare_cut(transfer_id, &req.name, &req.version, req.format, &req.model, req.validation.as_ref(), cut);
    manifest.pins = req.pins.clone();
    manifest.latency_budget_ms = req.latency_budget_ms;
    manifest.min_agent_version = req.min_agent_version.clone();
    manifest.profile = req.profile.clone();
    manifest.check_consistent().map_err(DeployError::Manifest)?;
    let (command, command_bytes) = signed_command(
        command_id,
        now_ms,
        req.ttl,
        req.target.clone(),
        match req.shadow {
            Some(pct) => Payload::shadow(manifest.clone(), pct),
            None => Payload::deploy(manifest.clone()),
        },
        signer,
        max_packet_bytes,
        // 32 bytes of manifest per chunk: fewer, larger chunks.
        " (the manifest lists every chunk's hash: use a larger --chunk-size; a profile takes \
         about 200 bytes per tensor: fewer --bins)",
    )?;
    Ok(Plan { command, command_bytes, manifest, artifact })
}

/// Deploys `req` (see the module documentation), reporting progress through `progress`.
/// Device failures, rejections and timeouts are in the outcome; an error means the deploy
/// could not be prepared or sent, or the connection closed for good.
pub async fn deploy(
    link: &mut Link,
    signer: &Signer,
    req: &DeployRequest,
    progress: impl FnMut(&Event),
) -> Result<DeployOutcome, DeployError> {
    let plan = plan(req, signer, random_id()?, random_id()?, now_ms(), link.max_packet_bytes())?;
    run(link, req, &plan, progress).await
}

/// Publishes `plan` and drives the transfer until the devices are done.
async fn run(
    link: &mut Link,
    req: &DeployRequest,
    plan: &Plan,
    mut progress: impl FnMut(&Event),
) -> Result<DeployOutcome, DeployError> {
    let prefix = link.prefix().to_string();
    let target_ota = match &req.target {
        Target::Device(d) => fleet::ota(&prefix, d),
        Target::Group(g) => fleet::group_ota(&prefix, g).expect("checked by plan"),
    };
    link.subscribe(&[device_filter(&prefix, &req.target, "ack"), device_filter(&prefix, &req.target, "need")]).await?;
    let start = Instant::now();
    link.publish(&command_topic(&prefix, &req.target)?, plan.command_bytes.clone()).await?;
    let manifest = &plan.manifest;
    let stats = TransferStats {
        chunks: manifest.chunk_count(),
        artifact_bytes: manifest.artifact_size(),
        ..TransferStats::default()
    };
    progress(&Event::Published {
        command_id: plan.command.id,
        transfer_id: Some(manifest.transfer_id),
        chunks: stats.chunks,
        bytes: stats.artifact_bytes,
    });

    let goal = if req.wait { Goal::Terminal } else { Goal::Received };
    let mut state = State {
        prefix: &prefix,
        target: &req.target,
        transfer_id: manifest.transfer_id,
        tracker: Tracker::new(plan.command.id, req.target.clone(), goal, start, req.accept_wait, req.timeout),
        schedule: match manifest.content {
            Some(_) => Schedule::delta(stats.chunks),
            None => Schedule::new(stats.chunks),
        },
        stats,
    };
    let mut pacer = Pacer::new(req.rate, start);
    let mut transferring = false;
    loop {
        while let Some(event) = link.try_next_event() {
            state.on_event(event, &mut progress);
        }
        let now = Instant::now();
        if state.tracker.done(now) {
            break;
        }
        if !transferring && !state.tracker.accepting(now) && state.tracker.receiving().next().is_some() {
            transferring = true;
            state.schedule.start();
            progress(&Event::TransferStarted { devices: state.tracker.receiving().count() });
        }
        // Repairs are queued only for devices that still want chunks; the first pass goes
        // on while one of the devices that answered does.
        let receiving = state.tracker.receiving().next().is_some();
        let wanted = transferring && (state.schedule.queued_repairs() > 0 || (receiving && state.schedule.has_work()));
        if wanted && pacer.ready_at() <= now {
            let send = state.schedule.next_send().expect("has_work");
            let message = plan.chunk_message(send.index);
            let (topic, repair) = match &send.dest {
                Dest::Target => (target_ota.clone(), false),
                Dest::Device(d) => (fleet::ota(&prefix, d), true),
            };
            let len = message.len();
            // Bounded by the deadline: a publish waits for room while the broker is away.
            match tokio::time::timeout_at(state.tracker.deadline(), link.publish(&topic, message)).await {
                Ok(sent) => sent?,
                Err(_) => continue,
            }
            pacer.sent(len, Instant::now());
            state.stats.bytes_published += len as u64;
            if repair {
                state.stats.repaired_chunks += 1;
            } else {
                state.stats.first_pass_chunks += 1;
                progress(&Event::Sent {
                    sent: state.schedule.first_pass_sent(),
                    total: state.schedule.first_pass_len(),
                });
            }
            continue;
        }
        let mut wake = state.tracker.next_deadline(now);
        if wanted {
            wake = wake.min(pacer.ready_at());
        }
        tokio::select! {
            event = link.next_event() => state.on_event(event.ok_or(LinkError::Closed)?, &mut progress),
            _ = tokio::time::sleep_until(wake) => {}
        }
    }
    Ok(DeployOutcome {
        command_id: plan.command.id,
        transfer_id: manifest.transfer_id,
        results: state.tracker.finish(Instant::now()),
        stats: state.stats,
    })
}

/// The deploy's state besides the link and the pacing.
struct State<'a> {
    prefix: &'a str,
    target: &'a Target,
    transfer_id: [u8; 16],
    tracker: Tracker,
    schedule: Schedule,
    stats: TransferStats,
}

impl State<'_> {
    fn on_event(&mut self, event: LinkEvent, progress: &mut impl FnMut(&Event)) {
        match event {
            LinkEvent::Message(msg) => self.on_message(&msg, progress),
            LinkEvent::Disconnected(why) => progress(&Event::Disconnected(why)),
            LinkEvent::Reconnected => progress(&Event::Reconnected),
        }
    }

    fn on_message(&mut self, msg: &Message, progress: &mut impl FnMut(&Event)) {
        match route(self.prefix, &msg.topic) {
            Some((_, "ack")) => {
                let (change, bad) = take_ack(self.prefix, msg, &mut self.tracker);
                self.stats.ignored_messages += u32::from(bad);
                if let Some(change) = change {
                    if !self.tracker.wants_chunks(&change.device) {
                        self.schedule.forget(&change.device);
                    }
                    progress(&Event::Ack(change));
                }
            }
            Some((device, "need")) => match edge_proto::decode::<Need>(&msg.payload) {
                Ok(need) => {
                    if let Some(queued) = self.on_need(device, &need) {
                        progress(&Event::Repair { device: device.to_string(), queued });
                    }
                }
                Err(e) => {
                    self.stats.ignored_messages += 1;
                    tracing::debug!(topic = %msg.topic, error = %e, "ignoring a repair request that does not decode");
                }
            },
            _ => {}
        }
    }

    /// Queues the repairs `need` (received on `from`'s topic) asks for; `None` if it is
    /// not for this transfer or not to be served.
    fn on_need(&mut self, from: &str, need: &Need) -> Option<u32> {
        if need.transfer_id != self.transfer_id {
            return None;
        }
        if need.device != from {
            self.stats.ignored_messages += 1;
            tracing::debug!(from, claimed = %need.device, "ignoring a repair request naming another device");
            return None;
        }
        if let Target::Device(d) = self.target {
            if d != from {
                return None;
            }
        }
        // A device that has everything, or ended, needs nothing more. One whose ack has not
        // been seen (lost while edgectl reconnected) is served: it can only know the
        // transfer id from the signed command.
        if self.tracker.knows(from) && !self.tracker.wants_chunks(from) {
            return None;
        }
        self.stats.repair_requests += 1;
        Some(self.schedule.on_need(from, &need.missing))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edge_proto::command::{verify, Ack, AckState, NpyBytes, SigningKey};
    use edge_proto::ota::decode_chunk;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[5; 32])
    }

    fn signer() -> Signer {
        Signer::new(key())
    }

    fn request(target: Target) -> DeployRequest {
        let mut r = DeployRequest::new(target, "kws", "7", ModelFormat::Onnx, (0..=255u8).cycle().take(1000).collect());
        r.chunk_size = 300;
        r.delta = false;
        r
    }

    #[test]
    fn a_delta_plan_cuts_by_content_in_a_version_2_command() {
        let mut req = request(Target::Device("d".into()));
        req.model = (0..20_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        req.chunk_size = 1000;
        req.delta = true;
        let p = plan(&req, &signer(), [1; 16], [2; 16], 0, 256 * 1024).unwrap();
        let cmd = verify(&p.command_bytes, &[key().verifying_key()]).unwrap();
        assert_eq!(cmd.version, 2);
        let Payload::DeployModelContent(m) = cmd.payload else { panic!("{:?}", cmd.payload) };
        let content = m.content.as_ref().unwrap();
        assert_eq!(content.params, edge_proto::cdc::CdcParams::for_max(1000).unwrap());
        let joined: Vec<u8> =
            (0..m.chunk_count()).flat_map(|i| decode_chunk(&p.chunk_message(i)).unwrap().data).collect();
        assert_eq!(joined, p.artifact);
        req.chunk_size = 300;
        let err = plan(&req, &signer(), [1; 16], [2; 16], 0, 256 * 1024).unwrap_err().to_string();
        assert!(err.contains("--chunking fixed"), "{err}");
    }

    #[test]
    fn a_profiled_plan_is_a_version_5_command_and_a_profile_of_another_model_is_refused() {
        use edge_proto::codec::Versioned;
        let mut req = request(Target::Device("d".into()));
        let mut values: Vec<f32> = (0..100).map(|i| i as f32).collect();
        let mut profile = Profile {
            version: Profile::VERSION,
            model_sha256: edge_proto::command::hex(&edge_proto::ota::sha256(&req.model)),
            samples: 1,
            tensors: vec![edge_proto::profile::TensorProfile::from_values("input:x", &mut values, 20).unwrap()],
        };
        req.profile = Some(profile.clone());
        let p = plan(&req, &signer(), [1; 16], [2; 16], 0, 256 * 1024).unwrap();
        let cmd = verify(&p.command_bytes, &[key().verifying_key()]).unwrap();
        assert_eq!(cmd.version, 5);
        let Payload::DeployModelProfiled(m) = cmd.payload else { panic!("{:?}", cmd.payload) };
        assert_eq!(m.profile.as_ref(), Some(&profile));
        profile.model_sha256 = "0".repeat(64);
        req.profile = Some(profile);
        let err = plan(&req, &signer(), [1; 16], [2; 16], 0, 256 * 1024).unwrap_err().to_string();
        assert!(err.contains("make the profile with this model file"), "{err}");
    }

    #[test]
    fn plan_signs_a_manifest_with_the_options_and_chunks_reassemble_the_artifact() {
        let mut req = request(Target::Group("lab".into()));
        req.pins = vec![("sr".into(), 16000.0)];
        req.latency_budget_ms = 40;
        req.min_agent_version = "0.2.0".into();
        req.validation = Some(Validation {
            version: Validation::VERSION,
            inputs: vec![NpyBytes(vec![1; 20])],
            expected: vec![NpyBytes(vec![2; 8])],
            tolerance: 1e-4,
        });
        let p = plan(&req, &signer(), [1; 16], [2; 16], 5_000, 256 * 1024).unwrap();
        let cmd = verify(&p.command_bytes, &[key().verifying_key()]).unwrap();
        assert_eq!(cmd.id, [1; 16]);
        assert_eq!(cmd.expires_at, 5_000 + 3_600_000);
        let Payload::DeployModel(m) = cmd.payload else { panic!("{:?}", cmd.payload) };
        assert_eq!(
            (m.pins.clone(), m.latency_budget_ms, m.min_agent_version.as_str()),
            (req.pins.clone(), 40, "0.2.0")
        );
        assert_eq!(m.transfer_id, [2; 16]);
        assert!(m.validation_size > 0);
        let mut joined = vec![];
        for i in 0..m.chunk_count() {
            let c = decode_chunk(&p.chunk_message(i)).unwrap();
            assert_eq!((c.index, c.transfer_id), (i, [2; 16]));
            assert_eq!(edge_proto::ota::sha256(&c.data), m.chunk_hashes[i as usize]);
            joined.extend(c.data);
        }
        assert_eq!(joined, p.artifact);
        assert_eq!(&joined[..1000], &req.model[..]);
    }

    #[test]
    fn a_chunk_size_that_does_not_fit_the_packet_size_is_refused_with_what_fits() {
        let err = check_chunk_size(256 * 1024, 256 * 1024).unwrap_err().to_string();
        assert!(err.contains("--chunk-size 262144") && err.contains("use --chunk-size 261120 or less"), "{err}");
        assert!(check_chunk_size(255 * 1024, 256 * 1024).is_ok());
        assert!(check_chunk_size(0, 256 * 1024).is_err());
        assert!(check_chunk_size(MAX_CHUNK_BYTES as u32 + 1, 4 << 20).unwrap_err().to_string().contains("chunk limit"));
        let mut req = request(Target::Device("d".into()));
        req.chunk_size = 2000;
        assert!(matches!(plan(&req, &signer(), [1; 16], [2; 16], 0, 2048), Err(DeployError::ChunkSize { .. })));
    }

    #[test]
    fn a_manifest_too_large_for_a_command_asks_for_larger_chunks() {
        let mut req = request(Target::Device("d".into()));
        req.model = vec![1; 4000 * 16];
        req.chunk_size = 16;
        let err = plan(&req, &signer(), [1; 16], [2; 16], 0, 1 << 20).unwrap_err().to_string();
        assert!(err.contains("use a larger --chunk-size"), "{err}");
    }

    #[test]
    fn names_versions_and_empty_models_are_checked_before_anything_is_sent() {
        let mut req = request(Target::Device("d".into()));
        req.version = "../x".into();
        assert!(plan(&req, &signer(), [1; 16], [2; 16], 0, 1 << 20).unwrap_err().to_string().contains("version"));
        let mut req = request(Target::Device("d".into()));
        req.name = "a/b".into();
        assert!(plan(&req, &signer(), [1; 16], [2; 16], 0, 1 << 20).unwrap_err().to_string().contains("model name"));
        let mut req = request(Target::Device("d".into()));
        req.min_agent_version = "1.2".into();
        assert!(matches!(plan(&req, &signer(), [1; 16], [2; 16], 0, 1 << 20), Err(DeployError::AgentVersion(_))));
        let mut req = request(Target::Device("d".into()));
        req.model.clear();
        assert!(matches!(plan(&req, &signer(), [1; 16], [2; 16], 0, 1 << 20), Err(DeployError::EmptyModel)));
    }

    #[test]
    fn pins_parse_as_name_equals_number() {
        assert_eq!(parse_pin("sr=16000").unwrap(), ("sr".into(), 16000.0));
        assert_eq!(parse_pin(" batch = 1 ").unwrap(), ("batch".into(), 1.0));
        for bad in ["sr", "=1", "sr=x", "sr=inf", "sr="] {
            let err = parse_pin(bad).unwrap_err().to_string();
            assert!(err.contains("NAME=NUMBER"), "{bad}: {err}");
        }
    }

    fn state<'a>(target: &'a Target, goal: Goal) -> State<'a> {
        State {
            prefix: "edge",
            target,
            transfer_id: [2; 16],
            tracker: Tracker::new(
                [1; 16],
                target.clone(),
                goal,
                Instant::now(),
                Duration::ZERO,
                Duration::from_secs(60),
            ),
            schedule: Schedule::new(8),
            stats: TransferStats::default(),
        }
    }

    fn need(device: &str, missing: Vec<(u32, u32)>) -> Need {
        Need { version: Need::VERSION, device: device.into(), transfer_id: [2; 16], missing }
    }

    fn ack(device: &str, state: AckState) -> Message {
        let a = Ack { version: Ack::VERSION, command_id: [1; 16], device: device.into(), state, ts: 0, reply: None };
        Message { topic: format!("edge/{device}/ack"), payload: edge_proto::encode(&a) }
    }

    #[test]
    fn repairs_are_served_only_for_this_transfer_and_the_device_on_the_topic() {
        let target = Target::Group("lab".into());
        let mut s = state(&target, Goal::Received);
        while s.schedule.next_send().is_some() {}
        s.on_message(&ack("d1", AckState::Accepted), &mut |_| {});
        assert_eq!(s.on_need("d1", &need("d1", vec![(2, 4)])), Some(2));
        assert_eq!(s.on_need("d1", &Need { transfer_id: [9; 16], ..need("d1", vec![(0, 1)]) }), None);
        assert_eq!(s.on_need("d2", &need("d1", vec![(0, 1)])), None, "d2 asking on behalf of d1");
        assert_eq!(s.stats.ignored_messages, 1);
        // Not seen yet (its ack was lost), but it knows the transfer id: served.
        assert_eq!(s.on_need("d3", &need("d3", vec![(0, 1)])), Some(1));
        let sends: Vec<_> = std::iter::from_fn(|| s.schedule.next_send()).map(|x| (x.dest, x.index)).collect();
        assert_eq!(
            sends,
            [(Dest::Device("d1".into()), 2), (Dest::Device("d1".into()), 3), (Dest::Device("d3".into()), 0)]
        );
    }

    #[test]
    fn a_single_device_deploy_serves_only_that_device() {
        let target = Target::Device("d1".into());
        let mut s = state(&target, Goal::Received);
        while s.schedule.next_send().is_some() {}
        assert_eq!(s.on_need("d2", &need("d2", vec![(0, 1)])), None);
        assert_eq!(s.on_need("d1", &need("d1", vec![(0, 1)])), Some(1));
    }

    #[test]
    fn a_device_with_everything_gets_no_more_repairs() {
        let target = Target::Group("lab".into());
        let mut s = state(&target, Goal::Terminal);
        while s.schedule.next_send().is_some() {}
        let mut events = vec![];
        s.on_message(&ack("d1", AckState::Progress(50)), &mut |e| events.push(e.clone()));
        s.on_need("d1", &need("d1", vec![(0, 4)]));
        assert_eq!(s.schedule.queued_repairs(), 4);
        s.on_message(&ack("d1", AckState::Progress(100)), &mut |e| events.push(e.clone()));
        assert_eq!(s.schedule.queued_repairs(), 0, "pending repairs dropped");
        assert_eq!(s.on_need("d1", &need("d1", vec![(0, 4)])), None);
        assert_eq!(events.len(), 2);
    }

    #[test]
    fn need_messages_are_routed_and_undecodable_ones_counted() {
        let target = Target::Group("lab".into());
        let mut s = state(&target, Goal::Received);
        while s.schedule.next_send().is_some() {}
        let mut events = vec![];
        let msg = Message { topic: "edge/d1/need".into(), payload: edge_proto::encode(&need("d1", vec![(5, 8)])) };
        s.on_message(&msg, &mut |e| events.push(e.clone()));
        assert_eq!(events, [Event::Repair { device: "d1".into(), queued: 3 }]);
        s.on_message(&Message { topic: "edge/d1/need".into(), payload: vec![1, 2] }, &mut |_| {});
        assert_eq!(s.stats.ignored_messages, 1);
    }
}
