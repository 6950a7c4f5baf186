//! Installed model versions on disk, and which one is active.
//!
//! ```text
//! {state_dir}/models/{name}/current            JSON: active, previous, installed (oldest first)
//! {state_dir}/models/{name}/{version}/manifest  postcard Manifest
//! {state_dir}/models/{name}/{version}/model     the file, or nonce ‖ AES-256-GCM(file) ‖ tag
//! {state_dir}/models/{name}/{version}/profile   postcard Profile, when deployed with one
//! ```
//!
//! Every change is crash-safe:
//! - a version is written into `{version}.tmp/`, each file fsynced, then the directory is
//!   renamed to `{version}` and the parent fsynced: a version directory is either complete
//!   or absent (a leftover `.tmp` is deleted on the next install);
//! - `current` is replaced with [`write_atomic`]: it names the old or the new active
//!   version, never neither.
//!
//! The model's SHA-256 from its manifest is checked every time it is read back, so a file
//! damaged on the flash is refused instead of loaded.
//!
//! On a full file system: an install that runs out of space removes its `.tmp` directory
//! at once and fails with [`StoreError::NoSpace`]; removing needs no new block (files are
//! overwritten in place, `current` is replaced through the reserve of [`crate::disk`]),
//! and the space it frees makes that reserve whole again.
//!
//! # Layout
//!
//! - this file: the layout, versions, `current`, install, activate, prune;
//! - [`seal`]: AES-256-GCM at rest and the device key file;
//! - [`wipe`]: overwrite-then-delete of model files.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use edge_proto::ota::{sha256, valid_label, Manifest};
use edge_proto::profile::Profile;
use ring::aead::LessSafeKey;
use serde::{Deserialize, Serialize};

use crate::disk;
use crate::fsutil::{self, write_atomic};

pub mod seal;
pub mod wipe;

pub use seal::load_or_create_key;
use seal::{open_sealed, seal, sealing_key};
pub use wipe::{wipe_dir, wipe_file};

/// What went wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file operation failed.
    #[error("model store: cannot {action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// On what.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A file is not what the store wrote.
    #[error("model store: {path}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// No such version on disk.
    #[error("model {name:?} version {version:?} is not installed (installed: {installed})")]
    NotInstalled {
        /// Model name.
        name: String,
        /// Version asked for.
        version: String,
        /// What is installed, comma-separated.
        installed: String,
    },
    /// The file system has no room for a version being installed.
    #[error(
        "model store: not enough disk to install {name} {version}: it needs {need} bytes, {free} are free; \
         remove an old model (edgectl remove-model) or free space, then deploy again"
    )]
    NoSpace {
        /// Model name.
        name: String,
        /// Version being installed.
        version: String,
        /// Bytes the version takes.
        need: u64,
        /// Bytes free (after the partial copy was removed).
        free: u64,
    },
    /// A name or version that is not a plain label.
    #[error("{0:?} is not a plain label (letters, digits, '.', '-', '_')")]
    BadLabel(String),
    /// The device key file is unusable.
    #[error("model key {path}: {reason}")]
    Key {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

pub(super) fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io { action, path: path.to_path_buf(), source }
}

/// A model's `current` file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Current {
    /// The version that serves.
    pub active: Option<String>,
    /// The version active before it: what `rollback` returns to.
    pub previous: Option<String>,
    /// Installed versions, oldest first.
    pub installed: Vec<String>,
}

/// The model store. Clones share the key.
#[derive(Clone)]
pub struct Store {
    root: PathBuf,
    key: Option<std::sync::Arc<LessSafeKey>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("root", &self.root).field("encrypted", &self.key.is_some()).finish()
    }
}

impl Store {
    /// The store under `root` (created if missing); models are encrypted at rest when `key`
    /// is given. Leftovers of interrupted installs are removed.
    pub fn open(root: &Path, key: Option<[u8; 32]>) -> Result<Store, StoreError> {
        fsutil::create_dir_all(root).map_err(io_err("create directory", root))?;
        let key = key.map(sealing_key);
        let store = Store { root: root.to_path_buf(), key };
        // Every model directory, not only those with a `current` file: the first install
        // of a model writes `current` after its version directory is renamed into place.
        let dirs = fs::read_dir(root).map_err(io_err("list", root))?.flatten().filter(|e| e.path().is_dir());
        for model in dirs {
            let dir = model.path();
            for entry in fs::read_dir(&dir).map_err(io_err("list", &dir))?.flatten() {
                let file = entry.file_name().to_string_lossy().to_string();
                if file.ends_with(".tmp") {
                    let _ = fsutil::remove_dir_all(&entry.path()).or_else(|_| fsutil::remove_file(&entry.path()));
                }
            }
        }
        Ok(store)
    }

    /// Whether models are encrypted at rest.
    pub fn encrypted(&self) -> bool {
        self.key.is_some()
    }

    fn model_dir(&self, name: &str) -> Result<PathBuf, StoreError> {
        if !valid_label(name) {
            return Err(StoreError::BadLabel(name.into()));
        }
        Ok(self.root.join(name))
    }

    fn version_dir(&self, name: &str, version: &str) -> Result<PathBuf, StoreError> {
        if !valid_label(version) {
            return Err(StoreError::BadLabel(version.into()));
        }
        Ok(self.model_dir(name)?.join(version))
    }

    /// Names of the models with a store entry, sorted.
    pub fn names(&self) -> Result<Vec<String>, StoreError> {
        let mut out = vec![];
        for entry in fs::read_dir(&self.root).map_err(io_err("list", &self.root))?.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if entry.path().join("current").is_file() && valid_label(&name) {
                out.push(name);
            }
        }
        out.sort();
        Ok(out)
    }

    /// The `current` file of `name`; the default (nothing active) when there is none.
    pub fn current(&self, name: &str) -> Result<Current, StoreError> {
        let path = self.model_dir(name)?.join("current");
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| StoreError::Corrupt { path: path.clone(), reason: e.to_string() }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Current::default()),
            Err(e) => Err(io_err("read", &path)(e)),
        }
    }

    fn write_current(&self, name: &str, current: &Current) -> Result<(), StoreError> {
        let dir = self.model_dir(name)?;
        fsutil::create_dir_all(&dir).map_err(io_err("create directory", &dir))?;
        let path = dir.join("current");
        let json = serde_json::to_vec_pretty(current).expect("current serializes");
        write_atomic(&path, &json).map_err(io_err("write", &path))
    }

    /// Whether `version` of `name` is on disk.
    pub fn has(&self, name: &str, version: &str) -> bool {
        self.version_dir(name, version).map(|d| d.join("manifest").is_file()).unwrap_or(false)
    }

    /// Installs `model` (the file's bytes, already checked against `manifest.sha256`) as
    /// `manifest.version` of `manifest.name`, without activating it. Installing a version
    /// that is already there with the same hash does nothing; with another hash, it fails.
    pub fn install(&self, manifest: &Manifest, model: &[u8]) -> Result<(), StoreError> {
        let final_dir = self.version_dir(&manifest.name, &manifest.version)?;
        if self.has(&manifest.name, &manifest.version) {
            let (existing, _) = self.read_manifest(&manifest.name, &manifest.version)?;
            if existing.sha256 == manifest.sha256 {
                self.note_installed(&manifest.name, &manifest.version)?;
                return Ok(());
            }
            return Err(StoreError::Corrupt {
                path: final_dir,
                reason: format!(
                    "version {:?} is already installed with other contents; deploy under a new version",
                    manifest.version
                ),
            });
        }
        let parent = self.model_dir(&manifest.name)?;
        let tmp = parent.join(format!("{}.tmp", manifest.version));
        let _ = fsutil::remove_dir_all(&tmp);
        let body = match &self.key {
            Some(key) => seal(key, &manifest.name, &manifest.version, model)?,
            None => model.to_vec(),
        };
        let manifest_bytes = edge_proto::encode(manifest);
        let written = fsutil::create_dir_all(&tmp).map_err(io_err("create directory", &tmp)).and_then(|_| {
            write_synced(&tmp.join("model"), &body)?;
            write_synced(&tmp.join("manifest"), &manifest_bytes)?;
            if let Some(p) = &manifest.profile {
                write_synced(&tmp.join("profile"), &edge_proto::encode(p))?;
            }
            fsync_dir(&tmp)
        });
        if let Err(e) = written {
            // Nothing half-written stays behind taking the space.
            let _ = fsutil::remove_dir_all(&tmp);
            return Err(match e {
                StoreError::Io { source, .. } if disk::is_no_space(&source) => StoreError::NoSpace {
                    name: manifest.name.clone(),
                    version: manifest.version.clone(),
                    need: (body.len() + manifest_bytes.len()) as u64,
                    free: disk::space(&self.root).map(|s| s.free).unwrap_or(0),
                },
                e => e,
            });
        }
        fsutil::rename(&tmp, &final_dir).map_err(io_err("rename", &tmp))?;
        fsync_dir(&parent)?;
        self.note_installed(&manifest.name, &manifest.version)
    }

    fn note_installed(&self, name: &str, version: &str) -> Result<(), StoreError> {
        let mut current = self.current(name)?;
        if !current.installed.iter().any(|v| v == version) {
            current.installed.push(version.to_string());
            self.write_current(name, &current)?;
        }
        Ok(())
    }

    fn read_manifest(&self, name: &str, version: &str) -> Result<(Manifest, PathBuf), StoreError> {
        let dir = self.version_dir(name, version)?;
        let path = dir.join("manifest");
        let bytes = fs::read(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => StoreError::NotInstalled {
                name: name.into(),
                version: version.into(),
                installed: self.current(name).map(|c| c.installed.join(", ")).unwrap_or_default(),
            },
            _ => io_err("read", &path)(e),
        })?;
        let manifest: Manifest = postcard::from_bytes(&bytes)
            .map_err(|e| StoreError::Corrupt { path: path.clone(), reason: format!("manifest: {e}") })?;
        Ok((manifest, dir))
    }

    /// The reference profile installed with `version` of `name`, if it came with one.
    pub fn profile(&self, name: &str, version: &str) -> Result<Option<Profile>, StoreError> {
        let path = self.version_dir(name, version)?.join("profile");
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("read", &path)(e)),
        };
        let corrupt = |reason: String| StoreError::Corrupt { path: path.clone(), reason };
        let profile: Profile = edge_proto::decode(&bytes).map_err(|e| corrupt(format!("profile: {e}")))?;
        profile.check().map_err(|e| corrupt(format!("profile: {e}")))?;
        Ok(Some(profile))
    }

    /// Replaces the profile of installed `version` of `name` (a deploy of a version already
    /// installed brings its own, or none).
    pub fn set_profile(&self, name: &str, version: &str, profile: Option<&Profile>) -> Result<(), StoreError> {
        if !self.has(name, version) {
            let installed = self.current(name)?.installed.join(", ");
            return Err(StoreError::NotInstalled { name: name.into(), version: version.into(), installed });
        }
        let path = self.version_dir(name, version)?.join("profile");
        match profile {
            Some(p) => write_atomic(&path, &edge_proto::encode(p)).map_err(io_err("write", &path)),
            None => match fsutil::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("remove", &path)(e)),
                _ => Ok(()),
            },
        }
    }

    /// The manifest and the model bytes of an installed version, decrypted and checked
    /// against the manifest's SHA-256.
    pub fn read(&self, name: &str, version: &str) -> Result<(Manifest, Vec<u8>), StoreError> {
        let (manifest, dir) = self.read_manifest(name, version)?;
        let path = dir.join("model");
        let body = fs::read(&path).map_err(io_err("read", &path))?;
        let model = match &self.key {
            Some(key) => open_sealed(key, name, version, body)
                .map_err(|reason| StoreError::Corrupt { path: path.clone(), reason })?,
            None => body,
        };
        if sha256(&model) != manifest.sha256 {
            return Err(StoreError::Corrupt {
                path,
                reason: "contents do not match the manifest's sha256 (damaged on disk?)".into(),
            });
        }
        Ok((manifest, model))
    }

    /// Makes `version` the active one; the one active before becomes `previous`.
    pub fn set_active(&self, name: &str, version: &str) -> Result<Current, StoreError> {
        if !self.has(name, version) {
            let installed = self.current(name)?.installed.join(", ");
            return Err(StoreError::NotInstalled { name: name.into(), version: version.into(), installed });
        }
        let mut current = self.current(name)?;
        if current.active.as_deref() != Some(version) {
            current.previous = current.active.take();
            current.active = Some(version.to_string());
        }
        if !current.installed.iter().any(|v| v == version) {
            current.installed.push(version.to_string());
        }
        self.write_current(name, &current)?;
        Ok(current)
    }

    /// Restores `current` as it was (after a failed activation).
    pub fn restore(&self, name: &str, current: &Current) -> Result<(), StoreError> {
        self.write_current(name, current)
    }

    /// Deletes the oldest versions beyond `keep`, never the active or the previous one.
    /// Returns the versions removed.
    pub fn prune(&self, name: &str, keep: usize) -> Result<Vec<String>, StoreError> {
        let mut current = self.current(name)?;
        let mut removed = vec![];
        while current.installed.len() > keep.max(1) {
            let Some(pos) = current
                .installed
                .iter()
                .position(|v| Some(v) != current.active.as_ref() && Some(v) != current.previous.as_ref())
            else {
                break;
            };
            let version = current.installed.remove(pos);
            self.write_current(name, &current)?;
            let dir = self.version_dir(name, &version)?;
            wipe_dir(&dir)?;
            removed.push(version);
        }
        if !removed.is_empty() {
            disk::refresh(&self.root);
        }
        Ok(removed)
    }

    /// Deletes a version that is neither active nor previous.
    pub fn remove_version(&self, name: &str, version: &str) -> Result<(), StoreError> {
        let mut current = self.current(name)?;
        current.installed.retain(|v| v != version);
        self.write_current(name, &current)?;
        let wiped = wipe_dir(&self.version_dir(name, version)?);
        disk::refresh(&self.root);
        wiped
    }

    /// Deletes every version of `name`, overwriting the files first. Works on a full file
    /// system: nothing here needs a new block.
    pub fn remove(&self, name: &str) -> Result<(), StoreError> {
        let dir = self.model_dir(name)?;
        // `current` first: a crash midway leaves versions nobody points at, not a pointer
        // to a deleted version.
        let _ = fsutil::remove_file(&dir.join("current"));
        let wiped = wipe_dir(&dir);
        // Space came back: the reserve for bookkeeping may be made whole again.
        disk::refresh(&self.root);
        wiped
    }

    /// Deletes every model, overwriting the files first.
    pub fn wipe(&self) -> Result<(), StoreError> {
        for name in self.names()? {
            self.remove(&name)?;
        }
        wipe_dir(&self.root)?;
        fsutil::create_dir_all(&self.root).map_err(io_err("create directory", &self.root))
    }
}

fn write_synced(path: &Path, data: &[u8]) -> Result<(), StoreError> {
    let mut f = fsutil::File::create(path).map_err(io_err("create", path))?;
    f.write_all(data).and_then(|_| f.sync_all()).map_err(io_err("write", path))
}

fn fsync_dir(dir: &Path) -> Result<(), StoreError> {
    fsutil::sync_dir(dir).map_err(io_err("fsync directory", dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use edge_proto::codec::Versioned;
    use edge_proto::ota::{prepare, ModelFormat};

    fn manifest(version: &str, model: &[u8]) -> Manifest {
        prepare([1; 16], "kws", version, ModelFormat::Tflite, model, None, 64).0
    }

    #[test]
    fn a_profile_is_kept_with_its_version_and_replaced_by_a_later_deploy() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Some([7; 32])).unwrap();
        let mut m = manifest("1", b"one");
        let mut values: Vec<f32> = (0..50).map(|i| i as f32).collect();
        let profile = Profile {
            version: Profile::VERSION,
            model_sha256: edge_proto::command::hex(&m.sha256),
            samples: 1,
            tensors: vec![edge_proto::profile::TensorProfile::from_values("input:x", &mut values, 5).unwrap()],
        };
        m.profile = Some(profile.clone());
        store.install(&m, b"one").unwrap();
        store.install(&manifest("2", b"two"), b"two").unwrap();
        let reopened = Store::open(dir.path(), Some([7; 32])).unwrap();
        assert_eq!(reopened.profile("kws", "1").unwrap(), Some(profile.clone()));
        assert_eq!(reopened.profile("kws", "2").unwrap(), None);
        reopened.set_profile("kws", "2", Some(&profile)).unwrap();
        reopened.set_profile("kws", "1", None).unwrap();
        reopened.set_profile("kws", "1", None).unwrap();
        assert_eq!(
            (reopened.profile("kws", "1").unwrap(), reopened.profile("kws", "2").unwrap()),
            (None, Some(profile))
        );
        assert!(matches!(reopened.set_profile("kws", "3", None), Err(StoreError::NotInstalled { .. })));
        std::fs::write(dir.path().join("kws/2/profile"), b"\x01garbage").unwrap();
        assert!(matches!(reopened.profile("kws", "2"), Err(StoreError::Corrupt { .. })));
    }

    #[test]
    fn install_activate_and_roll_forward_keep_previous() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), None).unwrap();
        store.install(&manifest("1", b"one"), b"one").unwrap();
        store.install(&manifest("2", b"two"), b"two").unwrap();
        store.set_active("kws", "1").unwrap();
        let c = store.set_active("kws", "2").unwrap();
        assert_eq!((c.active.as_deref(), c.previous.as_deref()), (Some("2"), Some("1")));
        assert_eq!(c.installed, ["1", "2"]);
        assert_eq!(store.read("kws", "2").unwrap().1, b"two");
        assert_eq!(store.names().unwrap(), ["kws"]);
        // Reopened: the same state.
        assert_eq!(Store::open(dir.path(), None).unwrap().current("kws").unwrap(), c);
    }

    #[test]
    fn activating_a_version_not_installed_names_what_is() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), None).unwrap();
        store.install(&manifest("1", b"one"), b"one").unwrap();
        let err = store.set_active("kws", "9").unwrap_err().to_string();
        assert!(err.contains("\"9\"") && err.contains("installed: 1"), "{err}");
    }

    #[test]
    fn reinstalling_other_contents_under_the_same_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), None).unwrap();
        store.install(&manifest("1", b"one"), b"one").unwrap();
        store.install(&manifest("1", b"one"), b"one").unwrap();
        let err = store.install(&manifest("1", b"uno"), b"uno").unwrap_err().to_string();
        assert!(err.contains("new version"), "{err}");
        assert_eq!(store.read("kws", "1").unwrap().1, b"one");
    }

    #[test]
    fn prune_keeps_active_and_previous() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), None).unwrap();
        for v in ["1", "2", "3", "4"] {
            store.install(&manifest(v, v.as_bytes()), v.as_bytes()).unwrap();
            store.set_active("kws", v).unwrap();
        }
        // Roll back to 3 (active 3, previous 4), then prune to 2.
        store.set_active("kws", "3").unwrap();
        assert_eq!(store.prune("kws", 2).unwrap(), ["1", "2"]);
        assert!(!store.has("kws", "1") && store.has("kws", "3") && store.has("kws", "4"));
        assert_eq!(store.current("kws").unwrap().installed, ["3", "4"]);
    }

    #[test]
    fn a_damaged_file_is_refused_on_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), None).unwrap();
        store.install(&manifest("1", b"one"), b"one").unwrap();
        fs::write(dir.path().join("kws/1/model"), b"onf").unwrap();
        assert!(store.read("kws", "1").unwrap_err().to_string().contains("sha256"));
    }

    #[test]
    fn encrypted_models_are_not_stored_in_clear_and_need_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let model = b"a model file that must not be readable at rest".to_vec();
        let store = Store::open(dir.path(), Some([7; 32])).unwrap();
        store.install(&manifest("1", &model), &model).unwrap();
        let on_disk = fs::read(dir.path().join("kws/1/model")).unwrap();
        assert!(!on_disk.windows(8).any(|w| w == &model[..8]), "plaintext on disk");
        assert_eq!(store.read("kws", "1").unwrap().1, model);
        let other = Store::open(dir.path(), Some([8; 32])).unwrap();
        assert!(other.read("kws", "1").unwrap_err().to_string().contains("device key"));
    }

    #[test]
    fn leftover_temporary_versions_are_removed_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), None).unwrap();
        store.install(&manifest("1", b"one"), b"one").unwrap();
        fs::create_dir_all(dir.path().join("kws/2.tmp")).unwrap();
        fs::write(dir.path().join("kws/2.tmp/model"), b"half").unwrap();
        Store::open(dir.path(), None).unwrap();
        assert!(!dir.path().join("kws/2.tmp").exists());
        assert!(!Store::open(dir.path(), None).unwrap().has("kws", "2"));
    }

    #[test]
    fn an_interrupted_first_install_is_cleaned_up_too() {
        // Crashed before its version directory was renamed: no `current` file yet.
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("new/1.tmp")).unwrap();
        Store::open(dir.path(), None).unwrap();
        assert!(!dir.path().join("new/1.tmp").exists());
    }

    #[test]
    fn on_a_full_disk_remove_frees_space_and_install_fails_cleanly_until_then() {
        let Some(fs) = edge_it::Tmpfs::mount(2 * 1024 * 1024) else { return };
        let reserve = crate::disk::open_reserve(fs.path());
        let store = Store::open(&fs.path().join("models"), None).unwrap();
        let big = |name: &str, version: &str, model: &[u8]| {
            prepare([1; 16], name, version, ModelFormat::Tflite, model, None, 64 * 1024).0
        };
        let old = vec![1u8; 600_000];
        store.install(&big("kws", "1", &old), &old).unwrap();
        store.set_active("kws", "1").unwrap();
        let other = big("old", "1", &old);
        store.install(&other, &old).unwrap();
        fs.fill("filler");
        let filler = fs::metadata(fs.path().join("filler")).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(fs.path().join("filler"))
            .unwrap()
            .set_len(filler - 300_000)
            .unwrap();

        // Room for neither: the partial copy goes, the message says what to do.
        let new = vec![2u8; 500_000];
        let err = store.install(&big("kws", "2", &new), &new).unwrap_err();
        assert!(matches!(err, StoreError::NoSpace { need: 500_000.., .. }), "{err:?}");
        assert!(err.to_string().contains("remove-model"), "{err}");
        assert!(!fs.path().join("models/kws/2.tmp").exists() && !store.has("kws", "2"));
        assert_eq!(store.current("kws").unwrap().installed, ["1"]);

        // With the disk full to the last byte, remove still works and makes the reserve whole.
        fs.fill("filler2");
        store.remove("old").unwrap();
        assert_eq!(store.names().unwrap(), ["kws"]);
        assert_eq!(reserve.reserve_bytes(), crate::disk::RESERVE_BYTES);
        store.install(&big("kws", "2", &new), &new).unwrap();
        store.set_active("kws", "2").unwrap();
        assert_eq!(store.read("kws", "2").unwrap().1, new);
    }

    #[test]
    fn wipe_removes_everything() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("models"), None).unwrap();
        store.install(&manifest("1", b"one"), b"one").unwrap();
        store.wipe().unwrap();
        assert!(store.names().unwrap().is_empty());
        assert_eq!(fs::read_dir(dir.path().join("models")).unwrap().count(), 0);
    }
}
