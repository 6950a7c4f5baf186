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

/// A signed command to one device or to a group of devices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// [`key_id`] of the signing key: the first 8 bytes of SHA-256 of the public key.
    pub key_id: [u8; 8],
    /// ed25519 signature over [`signing_bytes`].
    #[serde(with = "sig_bytes")]
    pub signature: [u8; 64],
}

impl Versioned for Command {
    /// Version 2 carries [`Payload::DeployModelContent`]; every other payload still goes
    /// in version 1, which agents older than delta transfers read.
    const VERSION: u16 = 2;
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
            key_id: [0; 8],
            signature: [0; 64],
        }
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
    #[serde(with = "content_manifest")]
    DeployModelContent(Manifest),
}

impl Payload {
    /// The deploy payload for `manifest`: [`Payload::DeployModelContent`] when it is cut by
    /// content, [`Payload::DeployModel`] otherwise.
    pub fn deploy(manifest: Manifest) -> Payload {
        match manifest.content {
            Some(_) => Payload::DeployModelContent(manifest),
            None => Payload::DeployModel(manifest),
        }
    }

    /// The manifest of a deploy payload.
    pub fn manifest(&self) -> Option<&Manifest> {
        match self {
            Payload::DeployModel(m) | Payload::DeployModelContent(m) => Some(m),
            _ => None,
        }
    }

    /// The oldest command envelope version that may carry this payload.
    pub fn command_version(&self) -> u16 {
        match self {
            Payload::DeployModelContent(_) => 2,
            _ => 1,
        }
    }
}

/// serde for [`Payload::DeployModelContent`]: the manifest as a fixed-size one encodes, then
/// its [`ContentChunks`](crate::ota::ContentChunks).
mod content_manifest {
    use serde::{de::Deserializer, ser::Error, Deserialize, Serialize, Serializer};

    use crate::ota::{ContentChunks, Manifest};

    pub fn serialize<S: Serializer>(m: &Manifest, s: S) -> Result<S::Ok, S::Error> {
        let content = m.content.as_ref().ok_or_else(|| S::Error::custom("a content deploy without content chunks"))?;
        (m, content).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Manifest, D::Error> {
        let (mut m, content) = <(Manifest, ContentChunks)>::deserialize(d)?;
        m.content = Some(content);
        Ok(m)
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
/// with its signature zeroed. Shared by [`sign`] and [`verify`].
pub fn signing_bytes(cmd: &Command) -> Vec<u8> {
    let unsigned = Command { signature: [0; 64], ..cmd.clone() };
    let mut out = SIGNING_CONTEXT.to_vec();
    out.extend(crate::codec::encode(&unsigned));
    out
}

/// Signs `cmd` with `key`: sets its `key_id` and `signature`. Publish
/// `edge_proto::encode(&signed)`.
pub fn sign(mut cmd: Command, key: &SigningKey) -> Command {
    use ed25519_dalek::Signer;
    cmd.key_id = key_id(&key.verifying_key());
    cmd.signature = key.sign(&signing_bytes(&cmd)).to_bytes();
    cmd
}

/// Checks a received command, in this order: size (before any decoding), version,
/// decoding, signing key among `trusted`, signature. Expiry, target and replay are the
/// receiver's to check (they need its clock and its state).
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
        return Err(CommandError::Malformed(format!(
            "a {} payload needs command version {}",
            if cmd.payload.manifest().is_some() { "content-chunked deploy" } else { "newer" },
            cmd.payload.command_version()
        )));
    }
    let key = trusted.iter().find(|k| key_id(k) == cmd.key_id).ok_or(CommandError::UnknownKey(cmd.key_id))?;
    let signature = ed25519_dalek::Signature::from_bytes(&cmd.signature);
    // verify_strict: refuses weak keys and non-canonical signatures, so one command has
    // exactly one valid signature per key.
    key.verify_strict(&signing_bytes(&cmd), &signature).map_err(|_| CommandError::BadSignature(cmd.key_id))?;
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

/// serde for `[u8; 64]`: serde's derives stop at arrays of 32. Written as a tuple of 64
/// bytes, which postcard encodes as the 64 raw bytes.
mod sig_bytes {
    use serde::de::{Error, SeqAccess, Visitor};
    use serde::ser::SerializeTuple;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8; 64], s: S) -> Result<S::Ok, S::Error> {
        let mut t = s.serialize_tuple(64)?;
        for b in bytes {
            t.serialize_element(b)?;
        }
        t.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 64], D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = [u8; 64];
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("64 bytes")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<[u8; 64], A::Error> {
                let mut out = [0u8; 64];
                for (i, b) in out.iter_mut().enumerate() {
                    *b = seq.next_element()?.ok_or_else(|| A::Error::invalid_length(i, &self))?;
                }
                Ok(out)
            }
        }
        d.deserialize_tuple(64, V)
    }
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
        let downgraded = sign(Command { version: 1, ..content }, &k);
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
        let cmd = sign(Command { version: 3, ..command() }, &k);
        let mut bytes = encode(&cmd);
        // A future version may have any layout after the version: append garbage.
        bytes.extend([0xff; 8]);
        assert_eq!(verify(&bytes, &[k.verifying_key()]), Err(CommandError::UnknownVersion { found: 3, expected: 2 }));
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
