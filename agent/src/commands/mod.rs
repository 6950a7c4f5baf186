//! Fleet commands: the gate that decides whether a received command is accepted (here,
//! without any I/O besides the replay window's file), and the component that carries out
//! what it accepts ([`control`]).
//!
//! # Acceptance order
//!
//! [`Gate::check`] runs, stopping at the first failure:
//!
//! 1. size, before any decoding ([`edge_proto::command::MAX_COMMAND_BYTES`]);
//! 2. version;
//! 3. decoding;
//! 4. signing key among the trusted keys (by key id);
//! 5. signature;
//! 6. expiry: refused when `expires_at < now`;
//! 7. issue time: refused when `issued_at > now + ` [`CLOCK_SKEW_MS`];
//! 8. target: this device, or a group it is in;
//! 9. replay: refused when the id is in the [`ReplayWindow`].
//!
//! Authentication comes first so that nothing about an unsigned message (its target, its
//! id) is believed. A refused command changes nothing: the window is written only when a
//! command is accepted.

pub mod control;
mod erase;
mod keys;
pub mod settings;
mod status;
mod window;

pub use keys::{parse_trusted_keys, TrustedKeyError};

pub use window::{ReplayWindow, WindowError, MAX_ENTRIES, WINDOW_FILE};

use edge_proto::command::{verify, Command, CommandError, Target, VerifyingKey};

/// How far in the future `issued_at` may be: the operator's and the device's clocks may
/// disagree by this much. Devices without a battery-backed clock must have synced time
/// (NTP) before commands are accepted; before that, `now` is far behind and every command
/// is refused as not yet valid, which is the safe direction.
pub const CLOCK_SKEW_MS: u64 = 5 * 60 * 1000;

/// Why a command was refused. Each has a [`Rejection::label`] for metrics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// Over the size bound; not decoded.
    #[error("oversized: {0}")]
    Oversized(CommandError),
    /// A schema version this build does not know.
    #[error("{0}")]
    UnknownVersion(CommandError),
    /// Does not decode.
    #[error("{0}")]
    Malformed(CommandError),
    /// Signed by a key that is not trusted.
    #[error("{0}")]
    UnknownKey(CommandError),
    /// The signature does not verify.
    #[error("{0}")]
    BadSignature(CommandError),
    /// `expires_at` is before now.
    #[error("expired at {expires_at} ms, now is {now} ms")]
    Expired {
        /// The command's expiry.
        expires_at: u64,
        /// The device's clock.
        now: u64,
    },
    /// `issued_at` is further in the future than the allowed clock skew.
    #[error(
        "not yet valid: issued at {issued_at} ms, now is {now} ms (allowed skew {CLOCK_SKEW_MS} ms); check the clocks"
    )]
    NotYetValid {
        /// The command's issue time.
        issued_at: u64,
        /// The device's clock.
        now: u64,
    },
    /// For another device, or a group this device is not in.
    #[error("wrong target {0:?}")]
    WrongTarget(Target),
    /// This id was accepted before and has not expired.
    #[error("replayed command id {}", edge_proto::command::hex(.0))]
    Replayed([u8; 16]),
    /// The replay window holds [`MAX_ENTRIES`] unexpired ids.
    #[error("replay window full ({0} unexpired ids); retry once older commands expire")]
    WindowFull(usize),
}

impl Rejection {
    /// A short fixed name, for a metric label and the log.
    pub fn label(&self) -> &'static str {
        match self {
            Rejection::Oversized(_) => "oversized",
            Rejection::UnknownVersion(_) => "unknown_version",
            Rejection::Malformed(_) => "malformed",
            Rejection::UnknownKey(_) => "unknown_key",
            Rejection::BadSignature(_) => "bad_signature",
            Rejection::Expired { .. } => "expired",
            Rejection::NotYetValid { .. } => "not_yet_valid",
            Rejection::WrongTarget(_) => "wrong_target",
            Rejection::Replayed(_) => "replayed",
            Rejection::WindowFull(_) => "window_full",
        }
    }
}

impl From<CommandError> for Rejection {
    fn from(e: CommandError) -> Rejection {
        match e {
            CommandError::TooLarge(_) => Rejection::Oversized(e),
            CommandError::UnknownVersion { .. } => Rejection::UnknownVersion(e),
            CommandError::Malformed(_) => Rejection::Malformed(e),
            CommandError::UnknownKey(_) => Rejection::UnknownKey(e),
            CommandError::BadSignature(_) => Rejection::BadSignature(e),
        }
    }
}

/// What the gate decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Passed every check; its id is now in the replay window.
    Accepted(Box<Command>),
    /// Refused; nothing changed.
    Rejected(Rejection),
}

/// Decides which received commands this device accepts.
#[derive(Debug)]
pub struct Gate {
    device: String,
    groups: Vec<String>,
    trusted: Vec<VerifyingKey>,
    window: ReplayWindow,
}

impl Gate {
    /// A gate for `device`, a member of `groups`, trusting `trusted` keys.
    pub fn new(device: String, groups: Vec<String>, trusted: Vec<VerifyingKey>, window: ReplayWindow) -> Gate {
        Gate { device, groups, trusted, window }
    }

    /// The replay window.
    pub fn window(&self) -> &ReplayWindow {
        &self.window
    }

    /// Checks `bytes` received at `now_ms` (ms since the Unix epoch), in the order of the
    /// module docs. An accepted command's id is recorded in the window (and written to disk)
    /// before this returns; `Err` means that write failed, and the command must not run
    /// (the window is unchanged, so the operator can resend it).
    pub fn check(&mut self, bytes: &[u8], now_ms: u64) -> Result<Verdict, WindowError> {
        let cmd = match self.admissible(bytes, now_ms) {
            Ok(cmd) => cmd,
            Err(r) => return Ok(Verdict::Rejected(r)),
        };
        match self.window.record(cmd.id, cmd.expires_at, now_ms) {
            Ok(()) => Ok(Verdict::Accepted(Box::new(cmd))),
            Err(WindowError::Full(n)) => Ok(Verdict::Rejected(Rejection::WindowFull(n))),
            Err(e) => Err(e),
        }
    }

    /// Every check, without changing anything.
    fn admissible(&self, bytes: &[u8], now: u64) -> Result<Command, Rejection> {
        let cmd = verify(bytes, &self.trusted)?;
        if cmd.expires_at < now {
            return Err(Rejection::Expired { expires_at: cmd.expires_at, now });
        }
        if cmd.issued_at > now.saturating_add(CLOCK_SKEW_MS) {
            return Err(Rejection::NotYetValid { issued_at: cmd.issued_at, now });
        }
        let ours = match &cmd.target {
            Target::Device(d) => *d == self.device,
            Target::Group(g) => self.groups.contains(g),
        };
        if !ours {
            return Err(Rejection::WrongTarget(cmd.target));
        }
        if self.window.contains(&cmd.id) {
            return Err(Rejection::Replayed(cmd.id));
        }
        Ok(cmd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edge_proto::command::{sign, Payload, SigningKey, MAX_COMMAND_BYTES};
    use edge_proto::encode;

    const NOW: u64 = 1_700_000_000_000;

    fn operator() -> SigningKey {
        SigningKey::from_bytes(&[1; 32])
    }

    fn gate(dir: &std::path::Path) -> Gate {
        Gate::new(
            "dev-1".into(),
            vec!["lab".into()],
            vec![operator().verifying_key()],
            ReplayWindow::open_in(dir).unwrap(),
        )
    }

    fn cmd(id: u8) -> Command {
        Command::new([id; 16], NOW - 1_000, NOW + 60_000, Target::Device("dev-1".into()), Payload::GetStatus)
    }

    fn signed(c: Command) -> Vec<u8> {
        encode(&sign(c, &operator()))
    }

    /// Checks that `bytes` is rejected with `label`, and that nothing changed on disk.
    fn assert_rejected(bytes: &[u8], label: &str) {
        let dir = tempfile::tempdir().unwrap();
        let mut g = gate(dir.path());
        match g.check(bytes, NOW).unwrap() {
            Verdict::Rejected(r) => assert_eq!(r.label(), label, "{r}"),
            Verdict::Accepted(c) => panic!("accepted {c:?}, expected {label}"),
        }
        assert!(g.window().is_empty());
        assert!(ReplayWindow::open_in(dir.path()).unwrap().is_empty(), "a rejection wrote the window");
    }

    #[test]
    fn accepts_a_valid_command_and_records_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut g = gate(dir.path());
        let c = sign(cmd(1), &operator());
        assert_eq!(g.check(&encode(&c), NOW).unwrap(), Verdict::Accepted(Box::new(c)));
        assert!(g.window().contains(&[1; 16]));
    }

    #[test]
    fn accepts_a_command_for_a_group_it_is_in() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = signed(Command { target: Target::Group("lab".into()), ..cmd(1) });
        assert!(matches!(gate(dir.path()).check(&bytes, NOW).unwrap(), Verdict::Accepted(_)));
    }

    #[test]
    fn rejects_oversized() {
        // Valid version prefix, so only the size check can refuse it as oversized.
        let mut bytes = signed(cmd(1));
        bytes.resize(MAX_COMMAND_BYTES + 1, 0);
        assert_rejected(&bytes, "oversized");
    }

    #[test]
    fn rejects_unknown_version() {
        assert_rejected(&signed(Command { version: 9, ..cmd(1) }), "unknown_version");
    }

    #[test]
    fn rejects_malformed() {
        let bytes = signed(cmd(1));
        assert_rejected(&bytes[..bytes.len() / 2], "malformed");
    }

    #[test]
    fn rejects_unknown_key() {
        assert_rejected(&encode(&sign(cmd(1), &SigningKey::from_bytes(&[2; 32]))), "unknown_key");
    }

    #[test]
    fn rejects_bad_signature() {
        let mut c = sign(cmd(1), &operator());
        c.payload = Payload::Erase;
        assert_rejected(&encode(&c), "bad_signature");
    }

    #[test]
    fn rejects_expired() {
        assert_rejected(&signed(Command { expires_at: NOW - 1, ..cmd(1) }), "expired");
    }

    #[test]
    fn expiry_instant_itself_is_still_valid() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = signed(Command { expires_at: NOW, ..cmd(1) });
        assert!(matches!(gate(dir.path()).check(&bytes, NOW).unwrap(), Verdict::Accepted(_)));
    }

    #[test]
    fn rejects_not_yet_valid_beyond_the_skew_and_allows_within_it() {
        let far = Command { issued_at: NOW + CLOCK_SKEW_MS + 1, expires_at: NOW + 2 * CLOCK_SKEW_MS, ..cmd(1) };
        assert_rejected(&signed(far), "not_yet_valid");
        let dir = tempfile::tempdir().unwrap();
        let near = Command { issued_at: NOW + CLOCK_SKEW_MS, expires_at: NOW + 2 * CLOCK_SKEW_MS, ..cmd(1) };
        assert!(matches!(gate(dir.path()).check(&signed(near), NOW).unwrap(), Verdict::Accepted(_)));
    }

    #[test]
    fn rejects_another_device() {
        assert_rejected(&signed(Command { target: Target::Device("dev-2".into()), ..cmd(1) }), "wrong_target");
    }

    #[test]
    fn rejects_a_group_it_is_not_in() {
        assert_rejected(&signed(Command { target: Target::Group("prod".into()), ..cmd(1) }), "wrong_target");
    }

    #[test]
    fn rejects_replay_in_the_same_gate() {
        let dir = tempfile::tempdir().unwrap();
        let mut g = gate(dir.path());
        let bytes = signed(cmd(1));
        assert!(matches!(g.check(&bytes, NOW).unwrap(), Verdict::Accepted(_)));
        let file = std::fs::read(dir.path().join(WINDOW_FILE)).unwrap();
        match g.check(&bytes, NOW + 1).unwrap() {
            Verdict::Rejected(r) => assert_eq!(r.label(), "replayed"),
            v => panic!("{v:?}"),
        }
        assert_eq!(std::fs::read(dir.path().join(WINDOW_FILE)).unwrap(), file, "a rejection rewrote the window");
    }

    #[test]
    fn rejects_replay_after_restart() {
        // The window is on disk: a command replayed after the agent restarts is refused.
        let dir = tempfile::tempdir().unwrap();
        let bytes = signed(cmd(1));
        assert!(matches!(gate(dir.path()).check(&bytes, NOW).unwrap(), Verdict::Accepted(_)));
        let mut reopened = gate(dir.path());
        assert_eq!(reopened.check(&bytes, NOW + 1).unwrap(), Verdict::Rejected(Rejection::Replayed([1; 16])));
        assert!(matches!(reopened.check(&signed(cmd(2)), NOW + 1).unwrap(), Verdict::Accepted(_)));
    }

    #[test]
    fn a_full_window_rejects_and_keeps_every_id() {
        let dir = tempfile::tempdir().unwrap();
        let window = ReplayWindow::open(&dir.path().join("w"), 1).unwrap();
        let mut g = Gate::new("dev-1".into(), vec![], vec![operator().verifying_key()], window);
        assert!(matches!(g.check(&signed(cmd(1)), NOW).unwrap(), Verdict::Accepted(_)));
        assert_eq!(g.check(&signed(cmd(2)), NOW).unwrap(), Verdict::Rejected(Rejection::WindowFull(1)));
        assert!(g.window().contains(&[1; 16]) && !g.window().contains(&[2; 16]));
    }

    #[test]
    fn rejection_messages_say_what_failed() {
        let r = Rejection::from(CommandError::UnknownKey([0xab; 8]));
        assert!(r.to_string().contains("abababababababab") && r.to_string().contains("trusted_keys"), "{r}");
    }
}
