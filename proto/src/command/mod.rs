//! Signed fleet commands and their acknowledgements.
//!
//! An operator builds a [`Command`], signs it with an ed25519 key ([`sign`]) and publishes
//! the postcard bytes; a device checks them with [`verify`] against its trusted keys, then
//! (in the agent) for expiry, target and replay. The device reports progress with [`Ack`]s.
//!
//! # What is signed
//!
//! [`signing_bytes`]: a fixed context string followed by the postcard encoding of the whole
//! envelope with `signature` zeroed. Everything else, `key_id` included, is covered. The
//! signer and the verifier both call this one function, so they cannot disagree on the
//! layout. The verifier re-encodes the *decoded* envelope rather than slicing the received
//! bytes: what is verified is exactly what is then acted on.
//!
//! # Several signatures
//!
//! A version 3 command may carry [`Cosignature`]s: other keys' signatures over the same
//! [`signing_bytes`] (which leave every signature out), so that keys can sign in any order
//! on different machines ([`cosign`]). A device configured with a quorum counts them for
//! the commands that need it ([`Payload::needs_quorum`]).
//!
//! # Fleets
//!
//! A version 3 command names the fleet it is for ([`Command::fleet`]), inside the signed
//! bytes, so that one operator key used in two fleets (staging and production) cannot have
//! a command for one replayed into the other. Versions 1 and 2 belong to the unnamed fleet
//! (the empty string).

mod rights;
mod wire;

pub use rights::{OperatorGrant, Role};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::codec::{Versioned, MAX_MESSAGE_BYTES};
use crate::ota::Manifest;

pub use ed25519_dalek::{SigningKey, VerifyingKey};

/// Prefix of the signed bytes, so that a command signature can never be mistaken for a
/// signature over some other message made with the same key.
const SIGNING_CONTEXT: &[u8] = b"edge-agent command v1\0";

/// Largest command accepted, checked before decoding. The same bound as every other
/// message: a model itself is never carried in a command, only its manifest.
pub const MAX_COMMAND_BYTES: usize = MAX_MESSAGE_BYTES;

/// A signed command to one device or to a group of devices. Its serde is by version
/// (`wire.rs`): build it with [`Command::new`] and sign it with [`sign`], which choose it.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    /// Schema version, [`Command::VERSION`]. First, so that it can be read alone.
    pub version: u16,
    /// Unique id (UUID or ULID bytes); the device's replay window remembers it. Second in
    /// every version of the envelope, so that a device can name the command it refuses
    /// even when it cannot decode the rest (an unknown version, an oversized command).
    pub id: [u8; 16],
    /// When the operator issued it, ms since the Unix epoch.
    pub issued_at: u64,
    /// After this instant (ms since the Unix epoch) the command is refused.
    pub expires_at: u64,
    /// Who must execute it.
    pub target: Target,
    /// What to do.
    pub payload: Payload,
    /// The fleet it is for; empty for the unnamed fleet. Since version 3.
    pub fleet: String,
    /// Signatures of other keys over the same [`signing_bytes`]. Since version 3.
    pub cosignatures: Vec<Cosignature>,
    /// [`key_id`] of the signing key: the first 8 bytes of SHA-256 of the public key.
    pub key_id: [u8; 8],
    /// ed25519 signature over [`signing_bytes`].
    pub signature: [u8; 64],
}

/// A further key's signature over a command's [`signing_bytes`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cosignature {
    /// [`key_id`] of the key.
    pub key_id: [u8; 8],
    /// ed25519 signature over [`signing_bytes`].
    #[serde(with = "wire::sig_bytes")]
    pub signature: [u8; 64],
}

impl Versioned for Command {
    /// Version 2 carries [`Payload::DeployModelContent`]; version 3 adds the fleet id and
    /// cosignatures, and carries the key changes; version 4 (the same envelope as 3) carries
    /// shadow deploys; version 5 (the same envelope) carries [`Payload::DeployModelProfiled`]
    /// and shadow deploys of a profiled deploy. A command goes in the oldest version that can
    /// carry it ([`Command::required_version`]), so that older agents keep reading what they
    /// can act on.
    const VERSION: u16 = 5;
    const OLDEST: u16 = 1;
    fn version(&self) -> u16 {
        self.version
    }
}

impl Command {
    /// An unsigned command of the oldest version that carries `payload`; [`sign`] fills
    /// `key_id` and `signature`.
    pub fn new(id: [u8; 16], issued_at: u64, expires_at: u64, target: Target, payload: Payload) -> Command {
        Command {
            version: payload.command_version(),
            id,
            issued_at,
            expires_at,
            target,
            payload,
            fleet: String::new(),
            cosignatures: vec![],
            key_id: [0; 8],
            signature: [0; 64],
        }
    }

    /// The same command for `fleet` (version 3 when it is not empty).
    pub fn for_fleet(mut self, fleet: &str) -> Command {
        self.fleet = fleet.into();
        self.version = self.version.max(self.required_version());
        self
    }

    /// The oldest envelope version that carries this command: its payload's, or 3 with a
    /// fleet id or cosignatures.
    pub fn required_version(&self) -> u16 {
        let envelope = if self.fleet.is_empty() && self.cosignatures.is_empty() { 1 } else { 3 };
        self.payload.command_version().max(envelope)
    }

    /// Key ids of every signature: the signer's first, then the cosigners'.
    pub fn signers(&self) -> impl Iterator<Item = [u8; 8]> + '_ {
        std::iter::once(self.key_id).chain(self.cosignatures.iter().map(|c| c.key_id))
    }
}

/// Who a command is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Target {
    /// One device, by id (its certificate CN).
    Device(String),
    /// Every device in a group.
    Group(String),
}

/// A tensor as the bytes of a `.npy` file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NpyBytes(pub Vec<u8>);

/// What a command asks for. Variants only ever grow at the end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Payload {
    /// Receive the artifact the manifest describes over the `ota` topics, verify, validate
    /// and install it, then watch its health.
    DeployModel(Manifest),
    /// Make an installed version the active one.
    Activate {
        /// Model name.
        name: String,
        /// Version to activate.
        version: String,
    },
    /// Go back to the previously active version.
    Rollback {
        /// Model name.
        name: String,
    },
    /// Unload and delete a model.
    RemoveModel {
        /// Model name.
        name: String,
    },
    /// Publish a fresh status.
    GetStatus,
    /// Change runtime settings; `None` leaves a setting as it is.
    SetConfig {
        /// New telemetry interval.
        telemetry_interval_secs: Option<u32>,
        /// New log filter.
        log_level: Option<String>,
    },
    /// Run one inference and report the outputs.
    Infer {
        /// Model name.
        model: String,
        /// Input tensors, in the model's input order.
        inputs: Vec<NpyBytes>,
    },
    /// Delete models and state.
    Erase,
    /// Restart the agent.
    Restart,
    /// Abandon a `deploy-model` still transferring or installing: its staging files are
    /// deleted and it ends `failed("cancelled …")`. The running model is untouched.
    Cancel {
        /// [`Command::id`] of the deploy command.
        command_id: [u8; 16],
    },
    /// [`Payload::DeployModel`] for an artifact cut by its content ([`Manifest::content`]
    /// set): the device copies the chunks it already holds and asks only for the others.
    /// Carried by version 2 commands only, so that an agent that predates it refuses it as
    /// an unknown command version, not as garbage. Build it with [`Payload::deploy`].
    #[serde(with = "wire::content_manifest")]
    DeployModelContent(Manifest),
    /// Trust another operator key from now on, with a role and scope (key rotation: add
    /// the new key, then revoke the old one). Needs an admin key. Version 3.
    AddOperator(OperatorGrant),
    /// Stop trusting a key, from the configuration or added: its commands are refused
    /// from then on, and nothing it signed that is not yet done is resumed. Needs an admin
    /// key. Version 3.
    RevokeKey {
        /// [`key_id`] of the key.
        key_id: [u8; 8],
    },
    /// Receive, verify, validate and install a version as [`Payload::DeployModel`] (or
    /// `DeployModelContent`, the `deploy` inside) does, then run it as a **shadow** of the
    /// active version instead of activating it: it gets a copy of `sample_pct` % of the
    /// model's requests on a spare worker, its outputs are compared with the active
    /// version's and never returned. `activate` promotes it, `end-shadow` discards it.
    /// Version 4 (5 when the deploy inside is [`Payload::DeployModelProfiled`]).
    Shadow {
        /// The deploy: [`Payload::DeployModel`], [`Payload::DeployModelContent`] or
        /// [`Payload::DeployModelProfiled`].
        deploy: Box<Payload>,
        /// Share of requests copied to the shadow, 1-100.
        sample_pct: u8,
    },
    /// Stop the shadow of a model (the version stays installed). Version 4.
    EndShadow {
        /// Model name.
        name: String,
    },
    /// [`Payload::DeployModel`] or [`Payload::DeployModelContent`] with a reference profile
    /// ([`Manifest::profile`] set), for drift. Carried by version 5 commands only, so that
    /// an agent that predates profiles refuses it as an unknown command version rather
    /// than installing the model without its profile. Build it with [`Payload::deploy`].
    #[serde(with = "wire::profiled_manifest")]
    DeployModelProfiled(Manifest),
}

impl Payload {
    /// The deploy payload for `manifest`: [`Payload::DeployModelProfiled`] when it carries a
    /// profile, else [`Payload::DeployModelContent`] when it is cut by content, else
    /// [`Payload::DeployModel`].
    pub fn deploy(manifest: Manifest) -> Payload {
        match (&manifest.profile, &manifest.content) {
            (Some(_), _) => Payload::DeployModelProfiled(manifest),
            (None, Some(_)) => Payload::DeployModelContent(manifest),
            (None, None) => Payload::DeployModel(manifest),
        }
    }

    /// The manifest of a deploy payload (a shadow deploy's too).
    pub fn manifest(&self) -> Option<&Manifest> {
        match self {
            Payload::DeployModel(m) | Payload::DeployModelContent(m) | Payload::DeployModelProfiled(m) => Some(m),
            Payload::Shadow { deploy, .. } => deploy.manifest(),
            _ => None,
        }
    }

    /// The share of requests a shadow deploy copies; `None` for every other payload.
    pub fn shadow_pct(&self) -> Option<u8> {
        match self {
            Payload::Shadow { sample_pct, .. } => Some(*sample_pct),
            _ => None,
        }
    }

    /// A shadow deploy of `manifest` on `sample_pct` % of the requests.
    pub fn shadow(manifest: Manifest, sample_pct: u8) -> Payload {
        Payload::Shadow { deploy: Box::new(Payload::deploy(manifest)), sample_pct }
    }

    /// The oldest command envelope version that may carry this payload.
    pub fn command_version(&self) -> u16 {
        match self {
            Payload::DeployModelContent(_) => 2,
            Payload::AddOperator(_) | Payload::RevokeKey { .. } => 3,
            Payload::DeployModelProfiled(_) => 5,
            Payload::Shadow { deploy, .. } => deploy.command_version().max(4),
            Payload::EndShadow { .. } => 4,
            _ => 1,
        }
    }
}

/// What a command returns besides its state: `get-status` and `infer` answer with data.
/// Variants only ever grow at the end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Reply {
    /// The answer to `get-status`.
    Status(DeviceStatus),
    /// The answer to `infer`: output tensors as `.npy` bytes, in the model's output order.
    Outputs(Vec<NpyBytes>),
}

/// A device's models and configuration, as `get-status` reports them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceStatus {
    /// Agent version.
    pub agent_version: String,
    /// Every model the device knows, by name.
    pub models: Vec<ModelStatus>,
    /// SHA-256 of the effective configuration (file plus runtime settings), hex.
    pub config_digest: String,
    /// Telemetry interval in seconds.
    pub telemetry_interval_secs: u32,
    /// Log filter.
    pub log_level: String,
}

/// One model in a [`DeviceStatus`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelStatus {
    /// Model name.
    pub name: String,
    /// Version serving requests, if any.
    pub active_version: Option<String>,
    /// Versions on disk, oldest first.
    pub installed_versions: Vec<String>,
    /// `ok`, `watching` (inside a health window) or `failed: …`.
    pub health: String,
}

/// A device's report on one command, published on its ack topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ack {
    /// Schema version, [`Ack::VERSION`].
    pub version: u16,
    /// [`Command::id`] of the command acknowledged.
    pub command_id: [u8; 16],
    /// Device id.
    pub device: String,
    /// Where the command is.
    pub state: AckState,
    /// When, ms since the Unix epoch.
    pub ts: u64,
    /// Data the command returns (`get-status`, `infer`), with `Succeeded`.
    pub reply: Option<Reply>,
}

impl Versioned for Ack {
    const VERSION: u16 = 1;
    fn version(&self) -> u16 {
        self.version
    }
}

/// Lifecycle of a command on a device. Variants only ever grow at the end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AckState {
    /// Passed the acceptance checks; about to run.
    Accepted,
    /// Running, percent done.
    Progress(u8),
    /// Done.
    Succeeded,
    /// Ran and failed, with the reason.
    Failed(String),
    /// Refused by the acceptance checks, with the reason; nothing was done.
    Rejected(String),
}

/// Why [`verify`] refused a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// Larger than [`MAX_COMMAND_BYTES`]; not decoded.
    #[error("command of {0} bytes is over the {MAX_COMMAND_BYTES}-byte limit")]
    TooLarge(usize),
    /// A schema version this build does not know.
    #[error("unknown command version {found} (this build reads versions up to {expected}): upgrade the agent")]
    UnknownVersion {
        /// Version in the message.
        found: u16,
        /// Version this build reads.
        expected: u16,
    },
    /// The bytes do not decode as a command.
    #[error("malformed command: {0}")]
    Malformed(String),
    /// Signed with a key that is not among the trusted keys.
    #[error("command signed by unknown key {}: add its public key to [ota] trusted_keys to trust it", hex(.0))]
    UnknownKey([u8; 8]),
    /// The signature does not match the command and the key.
    #[error("bad signature for key {}: the command was altered or signed with another key", hex(.0))]
    BadSignature([u8; 8]),
}

/// Short identifier of a public key: the first 8 bytes of SHA-256 of its 32 bytes.
pub fn key_id(key: &VerifyingKey) -> [u8; 8] {
    let digest = Sha256::digest(key.as_bytes());
    let mut id = [0; 8];
    id.copy_from_slice(&digest[..8]);
    id
}

/// The bytes a signature covers: a context string, then the postcard encoding of `cmd`
/// with its signature zeroed and no cosignatures. Shared by [`sign`], [`cosign`] and
/// [`verify`].
pub fn signing_bytes(cmd: &Command) -> Vec<u8> {
    let unsigned = Command { signature: [0; 64], cosignatures: vec![], ..cmd.clone() };
    let mut out = SIGNING_CONTEXT.to_vec();
    out.extend(crate::codec::encode(&unsigned));
    out
}

/// Signs `cmd` with `key`: sets its `key_id` and `signature`. Publish
/// `edge_proto::encode(&signed)`.
pub fn sign(mut cmd: Command, key: &SigningKey) -> Command {
    use ed25519_dalek::Signer;
    cmd.version = cmd.version.max(cmd.required_version());
    cmd.key_id = key_id(&key.verifying_key());
    cmd.signature = key.sign(&signing_bytes(&cmd)).to_bytes();
    cmd
}

/// Adds `key`'s signature to a signed command (replacing an earlier one by the same key).
/// The command becomes version 3, which changes the bytes the first signature covers:
/// cosign only what was signed as version 3 ([`sign`] of a command with a fleet, or
/// [`Command::for_fleet`]), or sign again. Returns the command unchanged with an error
/// when the version would have to change.
pub fn cosign(mut cmd: Command, key: &SigningKey) -> Result<Command, CommandError> {
    use ed25519_dalek::Signer;
    if cmd.version < 3 {
        return Err(CommandError::Malformed(format!(
            "a version {} command carries no cosignatures: sign it as version 3 (edgectl cmd --save does)",
            cmd.version
        )));
    }
    let id = key_id(&key.verifying_key());
    if id == cmd.key_id {
        return Err(CommandError::Malformed(format!("key {} already signed this command", hex(&id))));
    }
    let signature = key.sign(&signing_bytes(&cmd)).to_bytes();
    cmd.cosignatures.retain(|c| c.key_id != id);
    cmd.cosignatures.push(Cosignature { key_id: id, signature });
    Ok(cmd)
}

/// Checks a received command, in this order: size (before any decoding), version,
/// decoding, then for the signature and each cosignature: a key among `trusted`, no key
/// twice, a valid signature. Roles, fleet, expiry, target and replay are the receiver's to
/// check (they need its configuration, its clock and its state).
pub fn verify(bytes: &[u8], trusted: &[VerifyingKey]) -> Result<Command, CommandError> {
    if bytes.len() > MAX_COMMAND_BYTES {
        return Err(CommandError::TooLarge(bytes.len()));
    }
    let (found, _) = postcard::take_from_bytes::<u16>(bytes).map_err(|e| CommandError::Malformed(e.to_string()))?;
    if !(Command::OLDEST..=Command::VERSION).contains(&found) {
        return Err(CommandError::UnknownVersion { found, expected: Command::VERSION });
    }
    let (cmd, rest) =
        postcard::take_from_bytes::<Command>(bytes).map_err(|e| CommandError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CommandError::Malformed(format!("{} trailing bytes", rest.len())));
    }
    if cmd.version < cmd.payload.command_version() {
        let what = match &cmd.payload {
            Payload::DeployModelContent(_) => "content-chunked deploy",
            Payload::DeployModelProfiled(_) => "profiled deploy",
            p => p.name(),
        };
        return Err(CommandError::Malformed(format!(
            "a {what} payload needs command version {}",
            cmd.payload.command_version()
        )));
    }
    let signed = signing_bytes(&cmd);
    let signatures =
        std::iter::once((cmd.key_id, &cmd.signature)).chain(cmd.cosignatures.iter().map(|c| (c.key_id, &c.signature)));
    let mut seen = Vec::with_capacity(1 + cmd.cosignatures.len());
    for (id, signature) in signatures {
        if seen.contains(&id) {
            return Err(CommandError::Malformed(format!("key {} signed twice", hex(&id))));
        }
        seen.push(id);
        let key = trusted.iter().find(|k| key_id(k) == id).ok_or(CommandError::UnknownKey(id))?;
        // verify_strict: refuses weak keys and non-canonical signatures, so one command
        // has exactly one valid signature per key.
        let signature = ed25519_dalek::Signature::from_bytes(signature);
        key.verify_strict(&signed, &signature).map_err(|_| CommandError::BadSignature(id))?;
    }
    Ok(cmd)
}

/// A new signing key from the operating system's random source.
pub fn generate_signing_key() -> std::io::Result<SigningKey> {
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed).map_err(std::io::Error::from)?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Lower-case hex of `bytes`, as key ids and keys are shown to operators.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::encode;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn command() -> Command {
        Command::new(
            [7; 16],
            1_000,
            2_000,
            Target::Device("dev-1".into()),
            Payload::Activate { name: "kws".into(), version: "7".into() },
        )
    }

    #[test]
    fn sign_verify_round_trip() {
        let k = key(1);
        let signed = sign(command(), &k);
        assert_eq!(signed.key_id, key_id(&k.verifying_key()));
        let got = verify(&encode(&signed), &[key(2).verifying_key(), k.verifying_key()]).unwrap();
        assert_eq!(got, signed);
    }

    #[test]
    fn every_payload_round_trips() {
        let k = key(1);
        let payloads = [
            Payload::DeployModel(
                crate::ota::prepare([1; 16], "m", "1", crate::ota::ModelFormat::Onnx, &[1; 300], None, 100).0,
            ),
            Payload::Activate { name: "m".into(), version: "1".into() },
            Payload::Rollback { name: "m".into() },
            Payload::RemoveModel { name: "m".into() },
            Payload::GetStatus,
            Payload::SetConfig { telemetry_interval_secs: Some(5), log_level: None },
            Payload::Infer { model: "m".into(), inputs: vec![NpyBytes(vec![1, 2, 3])] },
            Payload::Erase,
            Payload::Restart,
            Payload::Cancel { command_id: [3; 16] },
            Payload::deploy(content_manifest()),
            Payload::deploy(profiled_manifest(false)),
        ];
        for p in payloads {
            let cmd =
                Command { version: p.command_version(), payload: p, target: Target::Group("g".into()), ..command() };
            let cmd = sign(cmd, &k);
            assert_eq!(verify(&encode(&cmd), &[k.verifying_key()]).unwrap(), cmd);
        }
    }

    fn content_manifest() -> Manifest {
        let params = crate::cdc::CdcParams { min: 64, avg: 256, max: 1024 };
        let model: Vec<u8> = (0..5000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let m = crate::ota::prepare_cut(
            [1; 16],
            "m",
            "2",
            crate::ota::ModelFormat::Onnx,
            &model,
            None,
            crate::ota::Cut::Content(params),
        )
        .0;
        assert!(m.content.is_some());
        m
    }

    #[test]
    fn a_content_deploy_goes_in_version_2_and_a_fixed_one_stays_in_version_1() {
        let k = key(1);
        let content = Command::new([7; 16], 1, 2, Target::Device("d".into()), Payload::deploy(content_manifest()));
        assert_eq!(content.version, 2);
        let fixed = Payload::deploy(
            crate::ota::prepare([1; 16], "m", "1", crate::ota::ModelFormat::Onnx, &[1; 300], None, 100).0,
        );
        assert!(matches!(fixed, Payload::DeployModel(_)));
        assert_eq!(Command::new([7; 16], 1, 2, Target::Device("d".into()), fixed).version, 1);
        assert_eq!(command().version, 1, "other payloads stay readable by older agents");
        // Version 1 cannot carry the new payload, even signed.
        let mut downgraded = sign(content, &k);
        downgraded.version = 1;
        let err = verify(&encode(&downgraded), &[k.verifying_key()]).unwrap_err();
        assert!(matches!(&err, CommandError::Malformed(m) if m.contains("version 2")), "{err}");
    }

    #[test]
    fn an_older_agent_refuses_a_content_deploy_as_an_unknown_version() {
        // What a build that reads version 1 only does: read the version alone, first.
        let k = key(1);
        let cmd =
            sign(Command::new([7; 16], 1, 2, Target::Device("d".into()), Payload::deploy(content_manifest())), &k);
        let (found, _) = postcard::take_from_bytes::<u16>(&encode(&cmd)).unwrap();
        assert_eq!(found, 2);
    }

    fn profiled_manifest(content: bool) -> Manifest {
        let mut m = match content {
            true => content_manifest(),
            false => crate::ota::prepare([1; 16], "m", "1", crate::ota::ModelFormat::Onnx, &[1; 300], None, 100).0,
        };
        let mut values: Vec<f32> = (0..100).map(|i| i as f32).collect();
        m.profile = Some(crate::profile::Profile {
            version: crate::profile::Profile::VERSION,
            model_sha256: hex(&m.sha256),
            samples: 1,
            tensors: vec![crate::profile::TensorProfile::from_values("input:x", &mut values, 10).unwrap()],
        });
        m.check_consistent().unwrap();
        m
    }

    #[test]
    fn a_profiled_deploy_goes_in_version_5_and_keeps_its_profile_and_content_chunks() {
        let k = key(1);
        for content in [false, true] {
            let m = profiled_manifest(content);
            let cmd = Command::new([7; 16], 1, 2, Target::Device("d".into()), Payload::deploy(m.clone()));
            assert_eq!(cmd.version, 5);
            let cmd = sign(cmd, &k);
            let bytes = encode(&cmd);
            // What an agent that reads versions up to 4 looks at first: an unknown version
            // (5), which it refuses as such ("upgrade the agent") instead of misreading it.
            assert_eq!(postcard::take_from_bytes::<u16>(&bytes).unwrap().0, 5);
            let got = verify(&bytes, &[k.verifying_key()]).unwrap();
            assert_eq!(got.payload.manifest(), Some(&m));
            assert_eq!(got.payload.manifest().unwrap().content.is_some(), content);
            assert_eq!(got.payload.name(), "deploy-model");
            assert!(got.payload.is_deployment());
        }
        // A shadow deploy of it too; version 4 cannot carry either, even signed.
        let shadow = Payload::shadow(profiled_manifest(false), 10);
        assert_eq!(Command::new([7; 16], 1, 2, Target::Device("d".into()), shadow).version, 5);
        let mut downgraded = sign(
            Command::new([7; 16], 1, 2, Target::Device("d".into()), Payload::deploy(profiled_manifest(false))),
            &k,
        );
        downgraded.version = 4;
        let downgraded = sign(downgraded, &k);
        assert_eq!(downgraded.version, 5, "sign raises the version to what the payload needs");
        let mut forced = downgraded.clone();
        forced.version = 4;
        let err = verify(&encode(&forced), &[k.verifying_key()]).unwrap_err();
        assert!(matches!(&err, CommandError::Malformed(m) if m.contains("profiled deploy")), "{err}");
    }

    #[test]
    fn a_profile_made_with_another_model_is_refused_with_the_manifest() {
        let mut m = profiled_manifest(false);
        m.profile.as_mut().unwrap().model_sha256 = "00".repeat(32);
        assert!(m.check_consistent().unwrap_err().contains("made with model"));
        let mut m = profiled_manifest(false);
        m.profile.as_mut().unwrap().tensors[0].fractions[0] = 2.0;
        assert!(m.check_consistent().unwrap_err().starts_with("profile:"));
    }

    #[test]
    fn payload_variant_indices_are_stable() {
        // Reordering the enum would make old operators' commands mean something else.
        assert_eq!(encode(&Payload::GetStatus), [4]);
        assert_eq!(encode(&Payload::Erase), [7]);
        assert_eq!(encode(&Payload::Restart), [8]);
        assert_eq!(encode(&AckState::Succeeded), [2]);
    }

    #[test]
    fn tampered_payload_is_rejected() {
        let k = key(1);
        let mut cmd = sign(command(), &k);
        cmd.payload = Payload::Activate { name: "kws".into(), version: "8".into() };
        assert_eq!(verify(&encode(&cmd), &[k.verifying_key()]), Err(CommandError::BadSignature(cmd.key_id)));
    }

    #[test]
    fn tampered_expiry_is_rejected() {
        let k = key(1);
        let mut cmd = sign(command(), &k);
        cmd.expires_at += 1;
        assert!(matches!(verify(&encode(&cmd), &[k.verifying_key()]), Err(CommandError::BadSignature(_))));
    }

    #[test]
    fn signature_by_another_key_with_a_forged_key_id_is_rejected() {
        let trusted = key(1);
        let mut cmd = sign(command(), &key(2));
        cmd.key_id = key_id(&trusted.verifying_key());
        assert!(matches!(verify(&encode(&cmd), &[trusted.verifying_key()]), Err(CommandError::BadSignature(_))));
    }

    #[test]
    fn unknown_key_is_rejected() {
        let cmd = sign(command(), &key(2));
        let err = verify(&encode(&cmd), &[key(1).verifying_key()]).unwrap_err();
        assert_eq!(err, CommandError::UnknownKey(cmd.key_id));
        assert!(err.to_string().contains(&hex(&cmd.key_id)), "{err}");
    }

    #[test]
    fn oversized_is_rejected_before_decoding() {
        // Garbage of the wrong version: only the size check can report TooLarge.
        let bytes = vec![0xff; MAX_COMMAND_BYTES + 1];
        assert_eq!(verify(&bytes, &[]), Err(CommandError::TooLarge(MAX_COMMAND_BYTES + 1)));
    }

    #[test]
    fn unknown_version_is_reported_as_such() {
        let k = key(1);
        let future = Command::VERSION + 1;
        let cmd = sign(Command { version: future, ..command() }, &k);
        let mut bytes = encode(&cmd);
        // A future version may have any layout after the version: append garbage.
        bytes.extend([0xff; 8]);
        assert_eq!(
            verify(&bytes, &[k.verifying_key()]),
            Err(CommandError::UnknownVersion { found: future, expected: Command::VERSION })
        );
    }

    #[test]
    fn malformed_and_trailing_bytes_are_rejected() {
        let k = key(1);
        let bytes = encode(&sign(command(), &k));
        assert!(matches!(verify(&bytes[..bytes.len() - 1], &[k.verifying_key()]), Err(CommandError::Malformed(_))));
        let mut long = bytes.clone();
        long.push(0);
        assert!(matches!(verify(&long, &[k.verifying_key()]), Err(CommandError::Malformed(_))));
        assert!(matches!(verify(&[], &[k.verifying_key()]), Err(CommandError::Malformed(_))));
    }

    #[test]
    fn signature_is_the_last_64_bytes_on_the_wire() {
        // Documented layout; other implementations may rely on it.
        let cmd = sign(command(), &key(1));
        let bytes = encode(&cmd);
        assert_eq!(&bytes[bytes.len() - 64..], &cmd.signature);
    }

    /// The envelope as versions 1 and 2 were written, before `wire.rs`.
    #[derive(Serialize)]
    struct OldEnvelope {
        version: u16,
        id: [u8; 16],
        issued_at: u64,
        expires_at: u64,
        target: Target,
        payload: Payload,
        key_id: [u8; 8],
        signature: wire::Sig,
    }

    #[test]
    fn a_command_without_fleet_or_cosignatures_keeps_the_old_layout() {
        let cmd = sign(command(), &key(1));
        assert_eq!(cmd.version, 1);
        let old = OldEnvelope {
            version: cmd.version,
            id: cmd.id,
            issued_at: cmd.issued_at,
            expires_at: cmd.expires_at,
            target: cmd.target.clone(),
            payload: cmd.payload.clone(),
            key_id: cmd.key_id,
            signature: wire::Sig(cmd.signature),
        };
        assert_eq!(encode(&cmd), encode(&old), "agents before version 3 read it");
    }

    #[test]
    fn fleet_and_cosignatures_make_version_3_and_are_signed() {
        let (a, b, c) = (key(1), key(2), key(3));
        let trusted = [a.verifying_key(), b.verifying_key()];
        let cmd = sign(command().for_fleet("prod"), &a);
        assert_eq!(cmd.version, 3);
        let cmd = cosign(cmd, &b).unwrap();
        let bytes = encode(&cmd);
        assert_eq!(&bytes[bytes.len() - 64..], &cmd.signature, "the signature stays last");
        let got = verify(&bytes, &trusted).unwrap();
        assert_eq!(got, cmd);
        assert_eq!(got.signers().collect::<Vec<_>>(), [key_id(&a.verifying_key()), key_id(&b.verifying_key())]);

        // The fleet is covered: moving the command to another fleet breaks the signature.
        let moved = Command { fleet: "staging".into(), ..cmd.clone() };
        assert_eq!(verify(&encode(&moved), &trusted), Err(CommandError::BadSignature(cmd.key_id)));
        // A cosignature by an unknown key, a forged one, the same key twice.
        let unknown = cosign(cmd.clone(), &c).unwrap();
        assert_eq!(verify(&encode(&unknown), &trusted), Err(CommandError::UnknownKey(key_id(&c.verifying_key()))));
        let mut forged = cmd.clone();
        forged.cosignatures[0].signature[0] ^= 1;
        assert_eq!(verify(&encode(&forged), &trusted), Err(CommandError::BadSignature(key_id(&b.verifying_key()))));
        let mut twice = cmd.clone();
        twice.cosignatures.push(twice.cosignatures[0].clone());
        assert!(matches!(verify(&encode(&twice), &trusted), Err(CommandError::Malformed(m)) if m.contains("twice")));
        // Cosigning again by the same key replaces its signature; the signer cannot cosign.
        assert_eq!(cosign(cmd.clone(), &b).unwrap().cosignatures.len(), 1);
        assert!(cosign(cmd.clone(), &a).is_err());
    }

    #[test]
    fn a_version_1_command_cannot_be_cosigned() {
        let err = cosign(sign(command(), &key(1)), &key(2)).unwrap_err();
        assert!(err.to_string().contains("version 3"), "{err}");
    }

    #[test]
    fn key_changes_go_in_version_3() {
        let grant =
            OperatorGrant { key: [9; 32], role: Role::Deploy, groups: vec!["cameras".into()], max_ttl_secs: None };
        for p in [Payload::AddOperator(grant), Payload::RevokeKey { key_id: [4; 8] }] {
            let cmd = Command::new([7; 16], 1, 2, Target::Device("d".into()), p);
            assert_eq!(cmd.version, 3);
            let cmd = sign(cmd, &key(1));
            assert_eq!(verify(&encode(&cmd), &[key(1).verifying_key()]).unwrap(), cmd);
        }
    }

    #[test]
    fn ack_round_trips_through_the_codec() {
        let ack = Ack {
            version: Ack::VERSION,
            command_id: [1; 16],
            device: "d".into(),
            state: AckState::Progress(40),
            ts: 5,
            reply: Some(Reply::Outputs(vec![NpyBytes(vec![1, 2])])),
        };
        assert_eq!(crate::decode::<Ack>(&encode(&ack)).unwrap(), ack);
    }
}
