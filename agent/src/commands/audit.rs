//! The audit trail: one log line (target `audit`) for every command the gate judged, with
//! its id, name, target and the key ids that signed it, and the reason when refused. A
//! command refused before its signature was checked is logged with what it *claims*
//! (`claimed_key`), since nothing in it can be believed. Commands for another device or
//! group are not this device's to audit.

use edge_proto::command::{hex, Command, Target};

fn target(t: &Target) -> String {
    match t {
        Target::Device(d) => format!("device:{d}"),
        Target::Group(g) => format!("group:{g}"),
    }
}

fn signers(cmd: &Command) -> String {
    cmd.signers().map(|id| hex(&id)).collect::<Vec<_>>().join(",")
}

/// An accepted command.
pub fn accepted(cmd: &Command) {
    tracing::info!(
        target: "audit",
        outcome = "accepted",
        command = cmd.payload.name(),
        id = %hex(&cmd.id),
        key = %signers(cmd),
        target = %target(&cmd.target),
        fleet = %cmd.fleet,
        "command accepted"
    );
}

/// A refused command: `cmd` when it was authenticated, else what `bytes` claim.
pub fn rejected(cmd: Option<&Command>, bytes: &[u8], reason: &str, message: &str) {
    match cmd {
        Some(cmd) => tracing::warn!(
            target: "audit",
            outcome = "rejected",
            reason,
            command = cmd.payload.name(),
            id = %hex(&cmd.id),
            key = %signers(cmd),
            target = %target(&cmd.target),
            fleet = %cmd.fleet,
            "command rejected: {message}"
        ),
        None => {
            let small = bytes.len() <= edge_proto::command::MAX_COMMAND_BYTES;
            let claimed = small.then(|| postcard::from_bytes::<Command>(bytes).ok()).flatten();
            tracing::warn!(
                target: "audit",
                outcome = "rejected",
                reason,
                command = claimed.as_ref().map_or("unknown", |c| c.payload.name()),
                claimed_key = %claimed.as_ref().map_or("unknown".into(), signers),
                "command rejected: {message}"
            )
        }
    }
}
