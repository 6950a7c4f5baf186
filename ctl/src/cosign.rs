//! Commands that need more than one signature (devices with `[ota] quorum = N` ask N admin
//! keys for `erase` and key changes).
//!
//! ```text
//! admin A:  edgectl cmd erase --device d1 --yes --save erase.cmd   signs, writes the file
//! admin B:  edgectl cosign erase.cmd                               reads what it is, adds B's
//! anyone:   edgectl send erase.cmd                                 publishes it, waits
//! ```
//!
//! The file holds the command exactly as it goes on the wire. Every step decodes it and
//! checks it again, and `cosign` shows what is being signed before it signs: a cosigner
//! approves the command in the file, not what someone says it is. Signatures are
//! independent (each covers the command without the others), so the order of the
//! cosigners does not matter.

use std::path::{Path, PathBuf};

use edge_proto::command::{cosign, hex, Command, Target};

use crate::keys::Signer;

/// What can go wrong with a command file.
#[derive(Debug, thiserror::Error)]
pub enum CosignError {
    /// Reading or writing it failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// It does not hold a command.
    #[error("{}: not a signed command ({reason}); it must be a file written by edgectl cmd --save", path.display())]
    Decode {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The cosigner signs for another fleet.
    #[error(
        "{}: the command is for fleet {command:?} but you sign for fleet {signer:?} (fleet_id, --fleet); \
         cosign it with the configuration of its fleet",
        path.display()
    )]
    Fleet {
        /// The file.
        path: PathBuf,
        /// The command's fleet.
        command: String,
        /// The cosigner's.
        signer: String,
    },
    /// The command cannot take this signature.
    #[error("{}: {error}", path.display())]
    Refused {
        /// Why.
        error: edge_proto::command::CommandError,
        /// The file.
        path: PathBuf,
    },
}

/// Reads a command file: the command and its bytes.
pub fn load(path: &Path) -> Result<(Command, Vec<u8>), CosignError> {
    let bytes = std::fs::read(path).map_err(|source| CosignError::Io { path: path.into(), source })?;
    let cmd = edge_proto::decode::<Command>(&bytes)
        .map_err(|e| CosignError::Decode { path: path.into(), reason: e.to_string() })?;
    Ok((cmd, bytes))
}

/// Writes `cmd` to `path`, replacing it as a whole (a file next to it, renamed).
pub fn save(path: &Path, cmd: &Command) -> Result<(), CosignError> {
    let io = |source| CosignError::Io { path: path.into(), source };
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, edge_proto::encode(cmd)).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Adds `signer`'s signature to the command in `path` and writes it back. Returns the
/// command as now signed.
pub fn cosign_file(path: &Path, signer: &Signer) -> Result<Command, CosignError> {
    let (cmd, _) = load(path)?;
    if cmd.fleet != signer.fleet {
        return Err(CosignError::Fleet { path: path.into(), command: cmd.fleet, signer: signer.fleet.clone() });
    }
    let cmd = cosign(cmd, &signer.key).map_err(|error| CosignError::Refused { error, path: path.into() })?;
    save(path, &cmd)?;
    Ok(cmd)
}

/// One line saying what a command is: name, target, fleet, id, expiry and signers.
pub fn describe(cmd: &Command) -> String {
    let target = match &cmd.target {
        Target::Device(d) => format!("device {d}"),
        Target::Group(g) => format!("group {g}"),
    };
    let fleet = match cmd.fleet.as_str() {
        "" => String::new(),
        f => format!(" in fleet {f}"),
    };
    let signers: Vec<String> = cmd.signers().map(|id| hex(&id)).collect();
    format!(
        "{} for {target}{fleet}, id {}, expires at {} ms since the epoch, signed by {}",
        cmd.payload.name(),
        hex(&cmd.id),
        cmd.expires_at,
        signers.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use edge_proto::command::{key_id, verify, Payload, SigningKey};

    fn signer(seed: u8, fleet: &str) -> Signer {
        Signer { key: SigningKey::from_bytes(&[seed; 32]), fleet: fleet.into(), cosignable: true }
    }

    #[test]
    fn a_saved_command_is_cosigned_in_place_and_verifies_with_both_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("erase.cmd");
        let (a, b) = (signer(1, "prod"), signer(2, "prod"));
        let cmd = a.sign(Command::new([3; 16], 0, 10, Target::Device("d1".into()), Payload::Erase));
        assert_eq!(cmd.version, 3, "saved for cosigning");
        save(&path, &cmd).unwrap();
        let cosigned = cosign_file(&path, &b).unwrap();
        let (read, bytes) = load(&path).unwrap();
        assert_eq!(read, cosigned);
        let trusted = [a.key.verifying_key(), b.key.verifying_key()];
        let got = verify(&bytes, &trusted).unwrap();
        assert_eq!(got.signers().collect::<Vec<_>>(), [key_id(&trusted[0]), key_id(&trusted[1])]);
        let line = describe(&got);
        assert!(
            line.starts_with("erase for device d1 in fleet prod") && line.contains(&hex(&key_id(&trusted[1]))),
            "{line}"
        );
    }

    #[test]
    fn cosigning_refuses_another_fleet_and_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.cmd");
        let cmd = signer(1, "prod").sign(Command::new([3; 16], 0, 10, Target::Device("d".into()), Payload::Erase));
        save(&path, &cmd).unwrap();
        let err = cosign_file(&path, &signer(2, "staging")).unwrap_err().to_string();
        assert!(err.contains("fleet \"prod\"") && err.contains("\"staging\""), "{err}");
        std::fs::write(&path, b"nope").unwrap();
        assert!(cosign_file(&path, &signer(2, "prod")).unwrap_err().to_string().contains("--save"));
    }
}
