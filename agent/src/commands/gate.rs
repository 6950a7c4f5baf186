//! The gate: which received commands this device accepts. Pure apart from the replay
//! window's and the key changes' files; the clock is an argument.
//!
//! # Acceptance order
//!
//! [`Gate::check`] runs, stopping at the first failure:
//!
//! 1. size, before any decoding ([`edge_proto::command::MAX_COMMAND_BYTES`]);
//! 2. version;
//! 3. decoding;
//! 4. every signing key known (by key id), no key twice;
//! 5. every signature;
//! 6. fleet: the command's fleet id is this device's (`[ota] fleet_id`);
//! 7. no signing key revoked;
//! 8. expiry: refused when `expires_at` is before the later of the clock and the window's
//!    floor (the latest accepted `issued_at`: see [`super::window`], "Time");
//! 9. issue time: refused when `issued_at` is further ahead of that than [`CLOCK_SKEW_MS`];
//! 10. lifetime: `expires_at - issued_at` within the device's limit for its kind
//!     (`[ota] max_command_lifetime_secs`, or `max_deployment_lifetime_secs` for
//!     deployments and their cancels);
//! 11. target: this device, or a group it is in (anything else is not this device's to
//!     answer);
//! 12. rights: the signing key's role covers the command, its scope covers the target, the
//!     command's lifetime is within the key's `max_ttl_secs`, and with `[ota] quorum = N`,
//!     erase and key changes carry N signatures of admin keys whose scope covers it;
//! 13. replay: refused when the id is in the [`ReplayWindow`].
//!
//! Authentication comes first so that nothing about an unsigned message (its target, its
//! id) is believed. A refused command changes nothing: the window is written only when a
//! command is accepted.

use edge_proto::command::{hex, verify, Command, CommandError, Role, Target};

use super::operators::{Change, Operators};
use super::window::{ReplayWindow, WindowError};

/// How far in the future `issued_at` may be: the operator's and the device's clocks may
/// disagree by this much. Devices without a battery-backed clock must have synced time
/// (NTP) before commands are accepted; before that, `now` is far behind and every command
/// is refused as not yet valid, which is the safe direction.
pub const CLOCK_SKEW_MS: u64 = 5 * 60 * 1000;

/// What this device's configuration says about commands, besides its keys.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// This device's id.
    pub device: String,
    /// The groups it is in.
    pub groups: Vec<String>,
    /// Its fleet id; empty for the unnamed fleet.
    pub fleet: String,
    /// Admin signatures erase and key changes need.
    pub quorum: usize,
    /// Longest lifetime of a command, ms.
    pub max_command_lifetime_ms: u64,
    /// Longest lifetime of a deployment (and of its cancel), ms.
    pub max_deployment_lifetime_ms: u64,
}

impl Policy {
    /// The policy `config` sets.
    pub fn from_config(config: &crate::config::Config) -> Policy {
        let o = &config.ota;
        Policy {
            device: config.device_id.clone(),
            groups: config.groups.clone(),
            fleet: o.fleet_id.clone(),
            quorum: o.quorum,
            max_command_lifetime_ms: o.max_command_lifetime_secs.saturating_mul(1000),
            max_deployment_lifetime_ms: o.max_deployment_lifetime_secs.saturating_mul(1000),
        }
    }
}

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
    /// For another fleet.
    #[error(
        "wrong fleet: the command is for fleet {:?}, this device is in fleet {:?} ([ota] fleet_id); \
         sign it for this device's fleet (edgectl --fleet)",
        .command, .device
    )]
    WrongFleet {
        /// The command's fleet.
        command: String,
        /// This device's.
        device: String,
    },
    /// A signing key was revoked.
    #[error("revoked: key {} was revoked by command {} at {} ms; sign with a key this device trusts",
        hex(.key_id), .change.command, .change.at_ms)]
    Revoked {
        /// The key.
        key_id: [u8; 8],
        /// Its revocation.
        change: Change,
    },
    /// `expires_at` is before now.
    #[error("expired at {expires_at} ms, now is {now} ms")]
    Expired {
        /// The command's expiry.
        expires_at: u64,
        /// The device's time (the later of its clock and the window's floor).
        now: u64,
    },
    /// `issued_at` is further in the future than the allowed clock skew.
    #[error(
        "not yet valid: issued at {issued_at} ms, now is {now} ms (allowed skew {CLOCK_SKEW_MS} ms); check the clocks"
    )]
    NotYetValid {
        /// The command's issue time.
        issued_at: u64,
        /// The device's time.
        now: u64,
    },
    /// Lives longer than this device or the key allows.
    #[error(
        "lifetime of {} s is over the {} s limit ({}); sign it with a shorter lifetime (edgectl --ttl)",
        .lifetime_ms / 1000, .limit_ms / 1000, .limit
    )]
    TooLongLived {
        /// `expires_at - issued_at`.
        lifetime_ms: u64,
        /// The limit it broke.
        limit_ms: u64,
        /// Where that limit comes from.
        limit: String,
    },
    /// For another device, or a group this device is not in.
    #[error("wrong target {0:?}")]
    WrongTarget(Target),
    /// Signed by a key without the right to do it here.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// This id was accepted before and has not expired.
    #[error("replayed command id {}", hex(.0))]
    Replayed([u8; 16]),
    /// The replay window holds [`super::MAX_ENTRIES`] unexpired ids.
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
            Rejection::WrongFleet { .. } => "wrong_fleet",
            Rejection::Revoked { .. } => "revoked",
            Rejection::Expired { .. } => "expired",
            Rejection::NotYetValid { .. } => "not_yet_valid",
            Rejection::TooLongLived { .. } => "too_long_lived",
            Rejection::WrongTarget(_) => "wrong_target",
            Rejection::Unauthorized(_) => "unauthorized",
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
    Rejected {
        /// Why.
        rejection: Rejection,
        /// The command, when it was authenticated before it was refused (to name it in
        /// the log and the metrics); `None` for anything that failed steps 1-5.
        command: Option<Box<Command>>,
    },
}

impl Verdict {
    /// The rejection, if refused.
    pub fn rejection(&self) -> Option<&Rejection> {
        match self {
            Verdict::Accepted(_) => None,
            Verdict::Rejected { rejection, .. } => Some(rejection),
        }
    }
}

/// An authentic, admissible command whose id the window could not record: it must not run
/// (it could then run twice), and the window is unchanged, so the operator can resend it.
#[derive(Debug)]
pub struct Unrecorded {
    /// The command.
    pub command: Box<Command>,
    /// Why the window could not record it.
    pub error: WindowError,
}

/// Decides which received commands this device accepts.
#[derive(Debug)]
pub struct Gate {
    policy: Policy,
    operators: Operators,
    window: ReplayWindow,
}

impl Gate {
    /// A gate applying `policy` with the keys of `operators`.
    pub fn new(policy: Policy, operators: Operators, window: ReplayWindow) -> Gate {
        Gate { policy, operators, window }
    }

    /// The replay window.
    pub fn window(&self) -> &ReplayWindow {
        &self.window
    }

    /// The keys, to change them (`add-operator`, `revoke-key`).
    pub fn operators_mut(&mut self) -> &mut Operators {
        &mut self.operators
    }

    /// The keys.
    pub fn operators(&self) -> &Operators {
        &self.operators
    }

    /// Checks `bytes` received at `now_ms` (the clock, ms since the Unix epoch), in the
    /// order of the module docs. An accepted command's id is recorded in the window (and
    /// written to disk) before this returns.
    pub fn check(&mut self, bytes: &[u8], now_ms: u64) -> Result<Verdict, Unrecorded> {
        let cmd = match verify(bytes, &self.operators.keys()) {
            Ok(cmd) => cmd,
            Err(e) => return Ok(Verdict::Rejected { rejection: e.into(), command: None }),
        };
        if let Err(rejection) = self.admissible(&cmd, now_ms) {
            return Ok(Verdict::Rejected { rejection, command: Some(Box::new(cmd)) });
        }
        match self.window.record(cmd.id, cmd.expires_at, cmd.issued_at) {
            Ok(()) => Ok(Verdict::Accepted(Box::new(cmd))),
            Err(WindowError::Full(n)) => {
                Ok(Verdict::Rejected { rejection: Rejection::WindowFull(n), command: Some(Box::new(cmd)) })
            }
            Err(error) => Err(Unrecorded { command: Box::new(cmd), error }),
        }
    }

    /// Steps 6-13 for an authenticated command, without changing anything.
    fn admissible(&self, cmd: &Command, clock: u64) -> Result<(), Rejection> {
        let p = &self.policy;
        if cmd.fleet != p.fleet {
            return Err(Rejection::WrongFleet { command: cmd.fleet.clone(), device: p.fleet.clone() });
        }
        for id in cmd.signers() {
            if let Some(change) = self.operators.revoked(&id) {
                return Err(Rejection::Revoked { key_id: id, change: change.clone() });
            }
        }
        let now = clock.max(self.window.floor());
        if cmd.expires_at < now {
            return Err(Rejection::Expired { expires_at: cmd.expires_at, now });
        }
        if cmd.issued_at > now.saturating_add(CLOCK_SKEW_MS) {
            return Err(Rejection::NotYetValid { issued_at: cmd.issued_at, now });
        }
        let lifetime_ms = cmd.expires_at.saturating_sub(cmd.issued_at);
        let (limit_ms, limit) = match cmd.payload.is_deployment() {
            true => (p.max_deployment_lifetime_ms, "[ota] max_deployment_lifetime_secs"),
            false => (p.max_command_lifetime_ms, "[ota] max_command_lifetime_secs"),
        };
        if lifetime_ms > limit_ms {
            return Err(Rejection::TooLongLived { lifetime_ms, limit_ms, limit: limit.into() });
        }
        let ours = match &cmd.target {
            Target::Device(d) => *d == p.device,
            Target::Group(g) => p.groups.contains(g),
        };
        if !ours {
            return Err(Rejection::WrongTarget(cmd.target.clone()));
        }
        self.authorized(cmd, lifetime_ms)?;
        if self.window.contains(&cmd.id) {
            return Err(Rejection::Replayed(cmd.id));
        }
        Ok(())
    }

    /// Step 12: the signing key's rights.
    fn authorized(&self, cmd: &Command, lifetime_ms: u64) -> Result<(), Rejection> {
        let p = &self.policy;
        let op = self.operators.get(&cmd.key_id).expect("verify found the key");
        let name = cmd.payload.name();
        let key = hex(&cmd.key_id);
        let needed = cmd.payload.required_role();
        if !op.role.covers(needed) {
            return Err(Rejection::Unauthorized(format!(
                "key {key} ({}) may not {name} (needs role {needed})",
                op.role
            )));
        }
        if !op.may_target(&cmd.target, &p.device, &p.groups) {
            let target = match &cmd.target {
                Target::Device(d) => format!("device {d}"),
                Target::Group(g) => format!("group {g}"),
            };
            return Err(Rejection::Unauthorized(format!(
                "key {key} ({}, for {}) may not target {target}",
                op.role,
                op.scope.join(", ")
            )));
        }
        if let Some(ttl) = op.max_ttl_secs {
            let limit_ms = ttl.saturating_mul(1000);
            if lifetime_ms > limit_ms {
                let limit = format!("max_ttl_secs of key {key}");
                return Err(Rejection::TooLongLived { lifetime_ms, limit_ms, limit });
            }
        }
        if p.quorum > 1 && cmd.payload.needs_quorum() {
            let admins: Vec<String> = cmd
                .signers()
                .filter(|id| {
                    self.operators
                        .get(id)
                        .is_some_and(|o| o.role == Role::Admin && o.may_target(&cmd.target, &p.device, &p.groups))
                })
                .map(|id| hex(&id))
                .collect();
            if admins.len() < p.quorum {
                return Err(Rejection::Unauthorized(format!(
                    "{name} needs {} admin signatures on this device ([ota] quorum), this command has {} ({}); \
                     have another admin cosign it (edgectl cosign)",
                    p.quorum,
                    admins.len(),
                    admins.join(", ")
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "gate_tests.rs"]
mod tests;
