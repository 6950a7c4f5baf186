//! The operator's command-signing key pair: `edgectl keygen` writes it, every command that
//! changes a device is signed with it.
//!
//! `operator.key` holds the 32-byte ed25519 seed as 64 hex digits (mode 0600);
//! `operator.pub` holds the public key as hex, the form `[ota] trusted_keys` takes on
//! devices.

use std::path::{Path, PathBuf};

use edge_proto::command::{generate_signing_key, hex, key_id, sign, Command, SigningKey, VerifyingKey};

/// Who signs commands, and for which fleet (`fleet_id` in ctl.toml, `--fleet`): every
/// command edgectl signs goes through [`Signer::sign`], so none leaves without its fleet.
#[derive(Clone)]
pub struct Signer {
    /// The operator's key.
    pub key: SigningKey,
    /// The fleet the commands are for; empty for the unnamed fleet.
    pub fleet: String,
    /// Sign in the envelope that carries cosignatures (version 3), for a command other
    /// keys will cosign ([`crate::cosign`]).
    pub cosignable: bool,
}

impl Signer {
    /// `key` signing for the unnamed fleet.
    pub fn new(key: SigningKey) -> Signer {
        Signer { key, fleet: String::new(), cosignable: false }
    }

    /// `cmd` for this signer's fleet, signed.
    pub fn sign(&self, cmd: Command) -> Command {
        let mut cmd = cmd.for_fleet(&self.fleet);
        if self.cosignable {
            cmd.version = cmd.version.max(3);
        }
        sign(cmd, &self.key)
    }
}

/// Private key file name.
pub const KEY_FILE: &str = "operator.key";
/// Public key file name.
pub const PUB_FILE: &str = "operator.pub";

/// What went wrong making or reading a key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// `keygen` found a key file already there.
    #[error("{} exists; refusing to overwrite a key (move it away first)", .0.display())]
    Exists(PathBuf),
    /// Creating, writing or reading a key file failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done ("creating", "writing", "reading signing key").
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The OS random source failed.
    #[error("reading the OS random source: {0}")]
    Random(std::io::Error),
    /// The signing key file does not hold 64 hex digits.
    #[error(
        "signing key {}: {problem}; expected the 64 hex digits of an ed25519 seed, as `edgectl keygen` writes \
         them to operator.key (did you pass operator.pub?)",
        path.display()
    )]
    Format {
        /// The key file.
        path: PathBuf,
        /// What is wrong with its contents.
        problem: String,
    },
}

/// Writes a new key pair into `dir` (created if missing), refusing to overwrite either
/// file. Returns the paths written and the key id (hex).
pub fn keygen(dir: &Path) -> Result<(PathBuf, PathBuf, String), KeyError> {
    let (key_path, pub_path) = (dir.join(KEY_FILE), dir.join(PUB_FILE));
    for p in [&key_path, &pub_path] {
        if p.symlink_metadata().is_ok() {
            return Err(KeyError::Exists(p.clone()));
        }
    }
    std::fs::create_dir_all(dir).map_err(|source| KeyError::Io { what: "creating", path: dir.into(), source })?;
    let key = generate_signing_key().map_err(KeyError::Random)?;
    let public = key.verifying_key();
    // create_new: a file that appeared since the check above is still not overwritten.
    write_new(&key_path, 0o600, &format!("{}\n", hex(key.as_bytes())))?;
    if let Err(e) = write_new(&pub_path, 0o644, &format!("{}\n", hex(public.as_bytes()))) {
        // Leave no private key without its public half.
        let _ = std::fs::remove_file(&key_path);
        return Err(e);
    }
    Ok((key_path, pub_path, hex(&key_id(&public))))
}

fn write_new(path: &Path, mode: u32, text: &str) -> Result<(), KeyError> {
    crate::files::write_new(path, mode, text).map_err(|(what, source)| match source.kind() {
        std::io::ErrorKind::AlreadyExists => KeyError::Exists(path.into()),
        _ => KeyError::Io { what, path: path.into(), source },
    })
}

/// Reads the signing key `edgectl keygen` wrote: 64 hex digits, surrounding whitespace
/// allowed.
pub fn load_signing_key(path: &Path) -> Result<SigningKey, KeyError> {
    // The public half is 64 hex digits too: it would load, sign, and be refused by every
    // device as an unknown key.
    if path.extension().is_some_and(|e| e == "pub") {
        return Err(KeyError::Format { path: path.into(), problem: "this is the public key".into() });
    }
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io {
        what: "reading signing key",
        path: path.into(),
        source,
    })?;
    parse_seed(text.trim())
        .map(|seed| SigningKey::from_bytes(&seed))
        .map_err(|problem| KeyError::Format { path: path.into(), problem })
}

/// Reads a public key file (`operator.pub`: 64 hex digits), for `add-operator` and
/// `revoke-key`.
pub fn load_public_key(path: &Path) -> Result<VerifyingKey, KeyError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io {
        what: "reading public key",
        path: path.into(),
        source,
    })?;
    let bad =
        |problem: String| KeyError::Format { path: path.into(), problem: format!("{problem} (expected a .pub file)") };
    let bytes = parse_seed(text.trim()).map_err(bad)?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| bad("not an ed25519 public key".into()))
}

fn parse_seed(text: &str) -> Result<[u8; 32], String> {
    if text.is_empty() {
        return Err("the file is empty".into());
    }
    if text.len() != 64 {
        return Err(format!("{} characters", text.len()));
    }
    let mut seed = [0u8; 32];
    for (i, byte) in seed.iter_mut().enumerate() {
        let pair = text.get(2 * i..2 * i + 2).ok_or("not ASCII hex")?;
        *byte = u8::from_str_radix(pair, 16).map_err(|_| format!("{pair:?} at offset {} is not hex", 2 * i))?;
    }
    Ok(seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keygen_output_loads_back_as_the_same_key() {
        let dir = tempfile::tempdir().unwrap();
        let (key_path, pub_path, id) = keygen(dir.path()).unwrap();
        let key = load_signing_key(&key_path).unwrap();
        assert_eq!(std::fs::read_to_string(pub_path).unwrap().trim(), hex(key.verifying_key().as_bytes()));
        assert_eq!(id, hex(&key_id(&key.verifying_key())));
    }

    #[test]
    fn a_missing_key_file_names_the_path() {
        let err = load_signing_key(Path::new("/nonexistent/operator.key")).unwrap_err();
        assert!(matches!(err, KeyError::Io { .. }));
        assert!(err.to_string().contains("/nonexistent/operator.key"), "{err}");
    }

    #[test]
    fn malformed_key_files_say_what_was_expected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        for (text, problem) in [
            ("", "empty"),
            ("abcd\n", "4 characters"),
            (&"zz".repeat(32), "\"zz\" at offset 0 is not hex"),
            (&format!("a{}b", "é".repeat(31)), "not ASCII hex"),
        ] {
            std::fs::write(&path, text).unwrap();
            let err = load_signing_key(&path).unwrap_err().to_string();
            assert!(err.contains(problem) && err.contains("64 hex digits"), "{text:?}: {err}");
        }
    }

    #[test]
    fn the_public_half_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let (_, pub_path, _) = keygen(dir.path()).unwrap();
        let err = load_signing_key(&pub_path).unwrap_err().to_string();
        assert!(err.contains("this is the public key") && err.contains("operator.key"), "{err}");
    }

    #[test]
    fn surrounding_whitespace_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        std::fs::write(&path, format!("  {}\n\n", "0f".repeat(32))).unwrap();
        assert_eq!(load_signing_key(&path).unwrap().to_bytes(), [0x0f; 32]);
    }
}
