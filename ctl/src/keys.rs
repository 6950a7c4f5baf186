//! `edgectl keygen`: the operator's command-signing key pair.
//!
//! `operator.key` holds the 32-byte ed25519 seed as hex (mode 0600); `operator.pub` holds
//! the public key as hex, the form `[ota] trusted_keys` takes on devices.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use edge_proto::command::{generate_signing_key, hex, key_id};

/// Private key file name.
pub const KEY_FILE: &str = "operator.key";
/// Public key file name.
pub const PUB_FILE: &str = "operator.pub";

/// Writes a new key pair into `dir` (created if missing), refusing to overwrite either
/// file. Returns the paths written and the key id.
pub fn keygen(dir: &Path) -> Result<(PathBuf, PathBuf, String)> {
    let (key_path, pub_path) = (dir.join(KEY_FILE), dir.join(PUB_FILE));
    for p in [&key_path, &pub_path] {
        if p.symlink_metadata().is_ok() {
            bail!("{} exists; refusing to overwrite a key (move it away first)", p.display());
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let key = generate_signing_key().context("reading the OS random source")?;
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

fn write_new(path: &Path, mode: u32, text: &str) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(text.as_bytes()).and_then(|()| f.sync_all()).with_context(|| format!("writing {}", path.display()))
}
