//! Sending a signed command and collecting the devices' acks.
//!
//! [`send_command`] subscribes to the acks, publishes the signed command (QoS 1, not
//! retained) on the device's or the group's command topic, and feeds the acks of that
//! command id to a [`Tracker`] until the operation is over. Deploys, which also move an
//! artifact, are in [`mod@crate::deploy`]; both share the pieces here.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use edge_proto::command::{Ack, Command, Payload, Target, MAX_COMMAND_BYTES};
use edge_proto::topics::{fleet, valid_level};
use tokio::time::Instant;

use crate::keys::Signer;
use crate::link::{Link, LinkError, LinkEvent, Message};
use crate::track::{Change, DeviceResult, Goal, Tracker};

/// Default `expires_at - issued_at` for commands other than deploys.
pub const DEFAULT_TTL: Duration = Duration::from_secs(5 * 60);
/// Default wait for the acks.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default time a group's devices have to acknowledge a command; those that do are the
/// group's members for it.
pub const DEFAULT_ACCEPT_WAIT: Duration = Duration::from_secs(3);
/// Room left in a packet for the topic and the MQTT header.
pub const HEADER_ROOM: usize = 1024;

/// What can go wrong sending a command.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The broker connection failed.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// A device id or group name that is not one topic level.
    #[error("{kind} {name:?} is not a valid topic level: it must be non-empty, without '/', '+', '#'")]
    BadTarget {
        /// "device id" or "group name".
        kind: &'static str,
        /// What was given.
        name: String,
    },
    /// The command is larger than devices accept.
    #[error("the command is {bytes} bytes, over the {MAX_COMMAND_BYTES}-byte limit devices accept{hint}")]
    TooLarge {
        /// Its size.
        bytes: usize,
        /// What to do about it.
        hint: &'static str,
    },
    /// The command does not fit the configured packet size.
    #[error(
        "the command is {bytes} bytes and does not fit [mqtt] max_packet_bytes = {max} with {HEADER_ROOM} bytes \
         of headers: raise max_packet_bytes"
    )]
    OverPacket {
        /// Its size.
        bytes: usize,
        /// `[mqtt] max_packet_bytes`.
        max: usize,
    },
    /// A command id that is not 32 hex digits.
    #[error("command id {0:?} is not 32 hex digits (as `edgectl deploy` prints it)")]
    BadCommandId(String),
    /// The OS random source failed (command ids).
    #[error("reading the OS random source for a command id: {0}")]
    Random(std::io::Error),
}

impl CommandError {
    /// The broker connection error underneath, if that is what this is.
    pub fn link(&self) -> Option<&LinkError> {
        match self {
            CommandError::Link(e) => Some(e),
            _ => None,
        }
    }
}

/// A command to send, and how long to wait for its acks.
#[derive(Debug, Clone)]
pub struct CommandRequest {
    /// Who executes it.
    pub target: Target,
    /// What it does.
    pub payload: Payload,
    /// When a device is finished with ([`Goal::Terminal`] unless told otherwise).
    pub goal: Goal,
    /// Validity: the command expires this long after it is issued.
    pub ttl: Duration,
    /// Longest wait for the acks.
    pub timeout: Duration,
    /// For a group, how long devices have to acknowledge (those that do are its members);
    /// for a device, how long it has to answer before it is reported as `no answer`.
    pub accept_wait: Duration,
}

impl CommandRequest {
    /// `payload` for `target`, waiting for final acks with the defaults: [`DEFAULT_TTL`],
    /// [`DEFAULT_TIMEOUT`], and [`DEFAULT_ACCEPT_WAIT`] for a group (a single device has
    /// the whole timeout to answer).
    pub fn new(target: Target, payload: Payload) -> CommandRequest {
        let accept_wait = match target {
            Target::Device(_) => Duration::MAX,
            Target::Group(_) => DEFAULT_ACCEPT_WAIT,
        };
        CommandRequest {
            target,
            payload,
            goal: Goal::Terminal,
            ttl: DEFAULT_TTL,
            timeout: DEFAULT_TIMEOUT,
            accept_wait,
        }
    }
}

/// What happened to a command.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandOutcome {
    /// Its id (print with [`edge_proto::command::hex`]).
    pub command_id: [u8; 16],
    /// One result per device that answered; for a single device, always exactly one
    /// (possibly `no answer`). Empty when no device of a group answered.
    pub results: Vec<DeviceResult>,
    /// Messages on the ack topics that did not decode (logged at debug).
    pub undecodable: u32,
}

impl CommandOutcome {
    /// Whether at least one device answered and every one succeeded.
    pub fn all_ok(&self) -> bool {
        !self.results.is_empty() && self.results.iter().all(|r| r.outcome.is_ok())
    }
}

/// What a running operation reports, in order, to its progress callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The signed command is published. For a deploy, also the transfer id and the size
    /// of the artifact.
    Published {
        /// Command id.
        command_id: [u8; 16],
        /// Deploys: the transfer id.
        transfer_id: Option<[u8; 16]>,
        /// Deploys: chunks in the artifact.
        chunks: u32,
        /// Deploys: bytes in the artifact.
        bytes: u64,
    },
    /// A device acknowledged (first time: `joined`), or its state changed.
    Ack(Change),
    /// Deploys: acceptance is over, the first pass over the chunks starts for `devices`.
    TransferStarted {
        /// Devices receiving.
        devices: usize,
    },
    /// Deploys: `sent` of `total` chunks of the first pass published.
    Sent {
        /// Published so far.
        sent: u32,
        /// In the artifact.
        total: u32,
    },
    /// Deploys: a device asked for missing chunks; `queued` of them are being sent to it
    /// (the others are already queued or not sent yet by the first pass).
    Repair {
        /// Device id.
        device: String,
        /// Chunks newly queued for it.
        queued: u32,
    },
    /// The broker connection was lost; edgectl reconnects.
    Disconnected(String),
    /// Connected again. Acks sent meanwhile are lost; devices ask again for missing chunks.
    Reconnected,
}

/// 16 random bytes from the OS.
pub fn random_id() -> Result<[u8; 16], CommandError> {
    let mut id = [0u8; 16];
    getrandom::getrandom(&mut id).map_err(|e| CommandError::Random(e.into()))?;
    Ok(id)
}

/// Parses a command id as [`edge_proto::command::hex`] prints it: 32 hex digits.
pub fn parse_command_id(s: &str) -> Result<[u8; 16], CommandError> {
    let s = s.trim();
    let bad = || CommandError::BadCommandId(s.to_string());
    if s.len() != 32 || !s.is_ascii() {
        return Err(bad());
    }
    let mut id = [0u8; 16];
    for (i, b) in id.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(id)
}

/// Now, in ms since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Checks that `target` names a single topic level.
pub fn check_target(target: &Target) -> Result<(), CommandError> {
    let (kind, name) = match target {
        Target::Device(d) => ("device id", d),
        Target::Group(g) => ("group name", g),
    };
    if valid_level(name) && !(kind == "device id" && name == "group") {
        Ok(())
    } else {
        Err(CommandError::BadTarget { kind, name: name.clone() })
    }
}

/// The topic commands for `target` are published on.
pub fn command_topic(prefix: &str, target: &Target) -> Result<String, CommandError> {
    check_target(target)?;
    Ok(match target {
        Target::Device(d) => fleet::command(prefix, d),
        Target::Group(g) => fleet::group_command(prefix, g).expect("checked above"),
    })
}

/// The filters that receive `kind` messages (`ack`, `need`) from `target`'s devices: one
/// device's topic, or every device's for a group.
pub(crate) fn device_filter(prefix: &str, target: &Target, kind: &str) -> String {
    let device = match target {
        Target::Device(d) => Some(d.as_str()),
        Target::Group(_) => None,
    };
    match kind {
        "need" => fleet::need(prefix, device),
        _ => fleet::acks(prefix, device),
    }
}

/// The device and the last level of `{prefix}/{device}/{kind}`, if `topic` has that shape.
pub fn route<'a>(prefix: &str, topic: &'a str) -> Option<(&'a str, &'a str)> {
    let mut parts = topic.split('/');
    let (p, device, kind) = (parts.next()?, parts.next()?, parts.next()?);
    (p == prefix && parts.next().is_none() && device != "group").then_some((device, kind))
}

/// Builds, signs and encodes a command issued at `now_ms`, checking its size against what
/// devices accept and what the connection carries.
pub fn signed_command(
    id: [u8; 16],
    now_ms: u64,
    ttl: Duration,
    target: Target,
    payload: Payload,
    signer: &Signer,
    max_packet_bytes: usize,
    too_large_hint: &'static str,
) -> Result<(Command, Vec<u8>), CommandError> {
    check_target(&target)?;
    let expires = now_ms.saturating_add(ttl.as_millis().min(u64::MAX as u128) as u64);
    let cmd = signer.sign(Command::new(id, now_ms, expires, target, payload));
    let bytes = edge_proto::encode(&cmd);
    if bytes.len() > MAX_COMMAND_BYTES {
        return Err(CommandError::TooLarge { bytes: bytes.len(), hint: too_large_hint });
    }
    if bytes.len() + HEADER_ROOM > max_packet_bytes {
        return Err(CommandError::OverPacket { bytes: bytes.len(), max: max_packet_bytes });
    }
    Ok((cmd, bytes))
}

/// Decodes an ack received on `msg` and hands it to `tracker`. Returns the change, and
/// whether the message was undecodable (logged at debug: another agent version, or noise).
pub(crate) fn take_ack(prefix: &str, msg: &Message, tracker: &mut Tracker) -> (Option<Change>, bool) {
    let Some((device, "ack")) = route(prefix, &msg.topic) else { return (None, false) };
    match edge_proto::decode::<Ack>(&msg.payload) {
        Ok(ack) => (tracker.on_ack(device, ack, Instant::now()), false),
        Err(e) => {
            tracing::debug!(topic = %msg.topic, error = %e, "ignoring an ack that does not decode");
            (None, true)
        }
    }
}

/// Signs `req` with `signer`, publishes it and waits for the acks (see [`CommandRequest`]).
/// Reports progress through `progress`. Device failures are in the outcome, not errors:
/// an error means the command could not be sent or the connection was lost for good.
pub async fn send_command(
    link: &mut Link,
    signer: &Signer,
    req: &CommandRequest,
    progress: impl FnMut(&Event),
) -> Result<CommandOutcome, CommandError> {
    let (cmd, bytes) = sign_request(req, signer, link.max_packet_bytes())?;
    send_signed(link, &cmd, bytes, req, progress).await
}

/// `req` as a command issued now with a fresh id, signed by `signer` and encoded, its size
/// checked against `max_packet_bytes` (for [`send_command`], and for `--save`).
pub fn sign_request(
    req: &CommandRequest,
    signer: &Signer,
    max_packet_bytes: usize,
) -> Result<(Command, Vec<u8>), CommandError> {
    signed_command(
        random_id()?,
        now_ms(),
        req.ttl,
        req.target.clone(),
        req.payload.clone(),
        signer,
        max_packet_bytes,
        " (infer inputs travel inside the command: use smaller inputs, or the device's local HTTP API)",
    )
}

/// Publishes a command already signed (`bytes` are `cmd` encoded; `edgectl send`) to
/// `req.target` and waits for the acks as [`send_command`] does.
pub async fn send_signed(
    link: &mut Link,
    cmd: &Command,
    bytes: Vec<u8>,
    req: &CommandRequest,
    mut progress: impl FnMut(&Event),
) -> Result<CommandOutcome, CommandError> {
    let topic = command_topic(link.prefix(), &req.target)?;
    if bytes.len() + HEADER_ROOM > link.max_packet_bytes() {
        return Err(CommandError::OverPacket { bytes: bytes.len(), max: link.max_packet_bytes() });
    }
    let prefix = link.prefix().to_string();
    link.subscribe(&[device_filter(&prefix, &req.target, "ack")]).await?;
    let start = Instant::now();
    link.publish(&topic, bytes).await?;
    progress(&Event::Published { command_id: cmd.id, transfer_id: None, chunks: 0, bytes: 0 });
    let mut tracker = Tracker::new(cmd.id, req.target.clone(), req.goal, start, req.accept_wait, req.timeout);
    let mut undecodable = 0;
    loop {
        let now = Instant::now();
        if tracker.done(now) {
            break;
        }
        tokio::select! {
            event = link.next_event() => match event.ok_or(LinkError::Closed)? {
                LinkEvent::Message(msg) => {
                    let (change, bad) = take_ack(&prefix, &msg, &mut tracker);
                    undecodable += u32::from(bad);
                    if let Some(change) = change {
                        progress(&Event::Ack(change));
                    }
                }
                LinkEvent::Disconnected(why) => progress(&Event::Disconnected(why)),
                LinkEvent::Reconnected => progress(&Event::Reconnected),
            },
            _ = tokio::time::sleep_until(tracker.next_deadline(now)) => {}
        }
    }
    Ok(CommandOutcome { command_id: cmd.id, results: tracker.finish(Instant::now()), undecodable })
}

#[cfg(test)]
mod tests {
    use super::*;
    use edge_proto::command::{verify, SigningKey};

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[4; 32])
    }

    fn signer() -> Signer {
        Signer::new(key())
    }

    #[test]
    fn signed_commands_verify_and_expire_after_the_ttl() {
        let (cmd, bytes) = signed_command(
            [1; 16],
            1_000,
            Duration::from_secs(300),
            Target::Group("lab".into()),
            Payload::Restart,
            &signer(),
            256 * 1024,
            "",
        )
        .unwrap();
        assert_eq!(verify(&bytes, &[key().verifying_key()]).unwrap(), cmd);
        assert_eq!((cmd.issued_at, cmd.expires_at), (1_000, 301_000));
        assert_eq!((cmd.version, cmd.fleet.as_str()), (1, ""), "the unnamed fleet keeps the oldest envelope");
    }

    #[test]
    fn a_signer_with_a_fleet_binds_it_into_the_command() {
        let signer = Signer { fleet: "prod".into(), ..signer() };
        let (cmd, bytes) =
            signed_command([1; 16], 0, DEFAULT_TTL, Target::Device("d".into()), Payload::Restart, &signer, 1 << 20, "")
                .unwrap();
        assert_eq!((cmd.version, cmd.fleet.as_str()), (3, "prod"));
        assert_eq!(verify(&bytes, &[key().verifying_key()]).unwrap().fleet, "prod");
    }

    #[test]
    fn oversized_commands_are_refused_with_the_hint() {
        let payload =
            Payload::Infer { model: "m".into(), inputs: vec![edge_proto::command::NpyBytes(vec![0; 70_000])] };
        let err =
            signed_command([1; 16], 0, DEFAULT_TTL, Target::Device("d".into()), payload, &signer(), 1 << 20, " (X)")
                .unwrap_err();
        assert!(matches!(err, CommandError::TooLarge { .. }));
        assert!(err.to_string().ends_with("devices accept (X)"), "{err}");

        let err =
            signed_command([1; 16], 0, DEFAULT_TTL, Target::Device("d".into()), Payload::Erase, &signer(), 1100, "")
                .unwrap_err();
        assert!(err.to_string().contains("max_packet_bytes = 1100"), "{err}");
    }

    #[test]
    fn targets_must_be_one_topic_level_and_not_the_group_subtree() {
        for t in [Target::Device("a/b".into()), Target::Group("+".into()), Target::Device("group".into())] {
            assert!(command_topic("edge", &t).is_err(), "{t:?}");
        }
        assert_eq!(command_topic("edge", &Target::Group("lab".into())).unwrap(), "edge/group/lab/cmd");
        assert_eq!(command_topic("edge", &Target::Device("d1".into())).unwrap(), "edge/d1/cmd");
        let err = command_topic("edge", &Target::Group("a/b".into())).unwrap_err().to_string();
        assert!(err.contains("group name \"a/b\""), "{err}");
    }

    #[test]
    fn command_ids_parse_back_from_hex() {
        let id = [0xab, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 0xff];
        assert_eq!(parse_command_id(&edge_proto::command::hex(&id)).unwrap(), id);
        for bad in ["", "abc", &"zz".repeat(16), &"0".repeat(34)] {
            assert!(parse_command_id(bad).unwrap_err().to_string().contains("32 hex digits"), "{bad}");
        }
    }

    #[test]
    fn route_takes_device_topics_only() {
        assert_eq!(route("edge", "edge/d1/ack"), Some(("d1", "ack")));
        assert_eq!(route("edge", "edge/d1/need"), Some(("d1", "need")));
        assert_eq!(route("edge", "other/d1/ack"), None);
        assert_eq!(route("edge", "edge/group/ack"), None);
        assert_eq!(route("edge", "edge/d1/ack/x"), None);
    }

    #[test]
    fn filters_narrow_to_the_target_device() {
        assert_eq!(device_filter("edge", &Target::Device("d1".into()), "ack"), "edge/d1/ack");
        assert_eq!(device_filter("edge", &Target::Group("g".into()), "need"), "edge/+/need");
    }

    #[test]
    fn undecodable_acks_are_counted_not_fatal() {
        let mut t = Tracker::new(
            [1; 16],
            Target::Device("d".into()),
            Goal::Terminal,
            Instant::now(),
            Duration::from_secs(1),
            Duration::from_secs(1),
        );
        let msg = Message { topic: "edge/d/ack".into(), payload: vec![0xff, 0xff, 0xff] };
        assert_eq!(take_ack("edge", &msg, &mut t), (None, true));
        let other = Message { topic: "edge/d/telemetry".into(), payload: vec![] };
        assert_eq!(take_ack("edge", &other, &mut t), (None, false));
    }
}
