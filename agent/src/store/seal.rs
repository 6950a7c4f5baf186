//! Models at rest: AES-256-GCM under the device key, and the key file itself.
//!
//! A sealed model is `"EASEAL2\0" ‖ nonce ‖ AES-256-GCM(file) ‖ tag`, with a fresh random
//! nonce per install and the model's name and version as associated data
//! (`"edge-agent model\0" ‖ name ‖ "\0" ‖ version`): a sealed file moved under another
//! name or version does not open, even before its hash is checked. Files sealed before
//! that (no magic, no associated data) still open, and are bound once reinstalled. The key
//! is 32 bytes in a file of mode 0600 ([`load_or_create_key`]).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};

use super::{io_err, StoreError};
use crate::fsutil;

/// Reads the 32-byte device key from `path` (raw bytes or 64 hex digits), creating it from
/// the OS random source (mode 0600) when it does not exist.
pub fn load_or_create_key(path: &Path) -> Result<[u8; 32], StoreError> {
    let bad = |reason: String| StoreError::Key { path: path.to_path_buf(), reason };
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let text = text.trim();
            if bytes.len() == 32 {
                Ok(bytes.try_into().expect("32 bytes"))
            } else if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
                let mut key = [0u8; 32];
                for (i, k) in key.iter_mut().enumerate() {
                    *k = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).expect("hex digits");
                }
                Ok(key)
            } else {
                Err(bad(format!("{} bytes; expected 32 raw bytes or 64 hex digits", bytes.len())))
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let mut key = [0u8; 32];
            getrandom::getrandom(&mut key).map_err(|e| bad(format!("OS random source: {e}")))?;
            if let Some(dir) = path.parent() {
                fsutil::create_dir_all(dir).map_err(io_err("create directory", dir))?;
            }
            // Written beside it, synced, then renamed into place and the directory synced:
            // a power cut leaves no key or the whole key, never an empty or torn file that
            // stops the agent from starting, and a key that models were sealed with stays.
            let tmp = fsutil::temporary_for(path);
            let mut f = fsutil::File::create_with_mode(&tmp, 0o600).map_err(io_err("create", &tmp))?;
            f.write_all(&key).and_then(|_| f.sync_all()).map_err(io_err("write", &tmp))?;
            fsutil::rename(&tmp, path).map_err(io_err("rename into place", &tmp))?;
            let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
            fsutil::sync_dir(dir).map_err(io_err("fsync directory", dir))?;
            tracing::info!(path = %path.display(), "generated the device key for models at rest");
            Ok(key)
        }
        Err(e) => Err(io_err("read", path)(e)),
    }
}

/// The AES-256-GCM key of `key`'s bytes.
pub(super) fn sealing_key(key: [u8; 32]) -> Arc<LessSafeKey> {
    Arc::new(LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key).expect("32-byte AES-256 key")))
}

/// First bytes of a model sealed with its name and version as associated data.
const MAGIC: &[u8; 8] = b"EASEAL2\0";

/// The associated data of `name` at `version`.
fn bound(name: &str, version: &str) -> Vec<u8> {
    [b"edge-agent model\0".as_slice(), name.as_bytes(), b"\0", version.as_bytes()].concat()
}

pub(super) fn seal(key: &LessSafeKey, name: &str, version: &str, plain: &[u8]) -> Result<Vec<u8>, StoreError> {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::getrandom(&mut nonce)
        .map_err(|e| StoreError::Key { path: PathBuf::new(), reason: format!("OS random source: {e}") })?;
    let mut body = plain.to_vec();
    let aad = Aad::from(bound(name, version));
    key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), aad, &mut body)
        .map_err(|_| StoreError::Key { path: PathBuf::new(), reason: "encryption failed".into() })?;
    let mut out = Vec::with_capacity(MAGIC.len() + NONCE_LEN + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&nonce);
    out.extend(body);
    Ok(out)
}

/// Opens what [`seal`] made for `name` at `version`, or a file sealed before names were
/// bound.
pub(super) fn open_sealed(key: &LessSafeKey, name: &str, version: &str, mut body: Vec<u8>) -> Result<Vec<u8>, String> {
    let (skip, aad) = match body.starts_with(MAGIC) {
        true => (MAGIC.len(), bound(name, version)),
        false => (0, vec![]),
    };
    if body.len() < skip + NONCE_LEN + AES_256_GCM.tag_len() {
        return Err("too short to be an encrypted model".into());
    }
    let nonce: [u8; NONCE_LEN] = body[skip..skip + NONCE_LEN].try_into().expect("nonce length");
    let plain_len = key
        .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut body[skip + NONCE_LEN..])
        .map_err(|_| {
            format!(
                "does not decrypt with the device key as {name} version {version} (another key, another model's \
                 file, or damaged): deploy the version again"
            )
        })?
        .len();
    body.drain(..skip + NONCE_LEN);
    body.truncate(plain_len);
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_is_created_once_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k/model.key");
        let a = load_or_create_key(&path).unwrap();
        assert_eq!(load_or_create_key(&path).unwrap(), a);
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        fs::write(&path, "zz").unwrap();
        assert!(load_or_create_key(&path).unwrap_err().to_string().contains("64 hex digits"));
    }

    #[test]
    fn a_sealed_model_opens_only_under_its_name_and_version() {
        let key = sealing_key([7; 32]);
        let sealed = seal(&key, "kws", "7", b"model bytes").unwrap();
        assert_eq!(open_sealed(&key, "kws", "7", sealed.clone()).unwrap(), b"model bytes");
        let err = open_sealed(&key, "kws", "8", sealed.clone()).unwrap_err();
        assert!(err.contains("as kws version 8") && err.contains("deploy the version again"), "{err}");
        assert!(open_sealed(&key, "vad", "7", sealed.clone()).is_err());
        assert!(open_sealed(&sealing_key([8; 32]), "kws", "7", sealed).is_err());
    }

    #[test]
    fn a_model_sealed_before_names_were_bound_still_opens() {
        let key = sealing_key([7; 32]);
        let nonce = [3u8; NONCE_LEN];
        let mut body = b"old model".to_vec();
        key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut body).unwrap();
        let legacy = [nonce.as_slice(), &body].concat();
        assert_eq!(open_sealed(&key, "any", "1", legacy).unwrap(), b"old model");
    }
}
