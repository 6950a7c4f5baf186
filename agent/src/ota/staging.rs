//! One transfer in progress: the staging file its chunks go straight into, and the bitmap
//! of the chunks received, both surviving restarts.
//!
//! ```text
//! {state_dir}/ota/{command id}/command    the signed deploy command, as received
//! {state_dir}/ota/{command id}/artifact   model ‖ validation vector, allocated in full
//! {state_dir}/ota/{command id}/bitmap     one bit per chunk received
//! ```
//!
//! A bit set in the bitmap on disk always means the chunk's bytes are on disk: a
//! [`Staging::checkpoint`] syncs the artifact's data before it replaces the bitmap. Chunks
//! received after the last checkpoint are simply asked for again after a crash. RAM holds
//! one chunk at a time.
//!
//! The artifact's blocks are allocated when the transfer starts ([`disk::allocate`]), not
//! left sparse: on a disk that fills up meanwhile, a transfer fails at its start with a
//! clear [`StagingError::NoSpace`], not at 90 % after minutes of radio time. [`space_check`]
//! is the deploy's precheck: room for this transfer and for the installed copies of every
//! transfer already running.

use std::fs;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use edge_proto::command::{hex, Command, Payload};
use edge_proto::ota::{missing_ranges, sha256, Chunk, Manifest, Validation, MAX_VALIDATION_BYTES};

use crate::disk;
use crate::fsutil::{self, write_atomic, File};

/// What went wrong with a staged transfer.
#[derive(Debug, thiserror::Error)]
pub enum StagingError {
    /// A file operation failed (a full disk shows up here).
    #[error("staging: cannot {action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// On what.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A chunk index beyond the manifest's chunk count.
    #[error("chunk {index} is out of range (the transfer has {count} chunks)")]
    OutOfRange {
        /// The index received.
        index: u32,
        /// Chunks in the transfer.
        count: u32,
    },
    /// A chunk whose bytes do not hash to the manifest's value.
    #[error("chunk {0} does not match its sha256 in the manifest; dropped")]
    BadHash(u32),
    /// The assembled model does not hash to the manifest's value.
    #[error("model sha256 is {found}, the manifest says {expected}")]
    ModelHash {
        /// Hash of what arrived.
        found: String,
        /// Hash the manifest gives.
        expected: String,
    },
    /// The validation vector does not hash or decode.
    #[error("validation vector: {0}")]
    Validation(String),
    /// The file system has no room for the transfer.
    #[error(
        "not enough disk to stage the transfer in {}: it needs {need} bytes, {free} are free; \
         remove an old model (edgectl remove-model) or free space, then deploy again",
        dir.display()
    )]
    NoSpace {
        /// Where the transfer was to be staged.
        dir: PathBuf,
        /// Bytes needed.
        need: u64,
        /// Bytes free.
        free: u64,
    },
    /// The staging directory does not hold a deploy command.
    #[error("staging {0}: not a deploy-model command")]
    NotADeploy(PathBuf),
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StagingError + 'a {
    move |source| StagingError::Io { action, path: path.to_path_buf(), source }
}

/// What [`Staging::accept`] did with a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// Written; `bytes` new bytes.
    Stored {
        /// Length of the chunk.
        bytes: usize,
    },
    /// Already had it.
    Duplicate,
}

/// A transfer in progress.
#[derive(Debug)]
pub struct Staging {
    dir: PathBuf,
    /// The accepted deploy command.
    pub command: Command,
    /// Its manifest.
    pub manifest: Manifest,
    bitmap: Vec<u8>,
    received: u32,
    file: File,
    dirty: bool,
}

fn manifest_of(command: &Command, dir: &Path) -> Result<Manifest, StagingError> {
    command.payload.manifest().cloned().ok_or_else(|| StagingError::NotADeploy(dir.to_path_buf()))
}

impl Staging {
    /// The staging directory of `command` under `root`.
    pub fn dir_for(root: &Path, command: &Command) -> PathBuf {
        root.join(hex(&command.id))
    }

    /// Starts a transfer: allocates the artifact's blocks in full and records the signed
    /// command bytes. Reopens it instead when it already exists. Fails with
    /// [`StagingError::NoSpace`] when the file system has no room, leaving nothing behind.
    pub fn create(root: &Path, command_bytes: &[u8], command: Command) -> Result<Staging, StagingError> {
        let dir = Staging::dir_for(root, &command);
        if dir.join("command").is_file() {
            return Staging::open(&dir, command);
        }
        let manifest = manifest_of(&command, &dir)?;
        let tmp = root.join(format!("{}.tmp", hex(&command.id)));
        let _ = fsutil::remove_dir_all(&tmp);
        fsutil::create_dir_all(&tmp).map_err(io_err("create directory", &tmp))?;
        if let Err(e) = Staging::fill_in(&tmp, command_bytes, &manifest) {
            // A half-made directory must not keep the space it took.
            let _ = fsutil::remove_dir_all(&tmp);
            return Err(match e {
                StagingError::Io { source, .. } if disk::is_no_space(&source) => StagingError::NoSpace {
                    dir: root.to_path_buf(),
                    need: manifest.artifact_size(),
                    free: disk::space(root).map(|s| s.free).unwrap_or(0),
                },
                e => e,
            });
        }
        fsutil::rename(&tmp, &dir).map_err(io_err("rename", &tmp))?;
        fsutil::sync_dir(root).map_err(io_err("fsync directory", root))?;
        Staging::open(&dir, command)
    }

    fn fill_in(tmp: &Path, command_bytes: &[u8], manifest: &Manifest) -> Result<(), StagingError> {
        let artifact = tmp.join("artifact");
        let file = File::create(&artifact).map_err(io_err("create", &artifact))?;
        file.allocate(manifest.artifact_size()).map_err(io_err("allocate", &artifact))?;
        // The allocation is made durable before the staging is: after a power cut the
        // transfer resumes into a file that still holds its blocks, so it cannot run out
        // of space at 90 %.
        file.sync_all().map_err(io_err("sync", &artifact))?;
        write_atomic(&tmp.join("command"), command_bytes).map_err(io_err("write", tmp))
    }

    /// Reopens a staged transfer whose command has been checked again by the caller.
    pub fn open(dir: &Path, command: Command) -> Result<Staging, StagingError> {
        let manifest = manifest_of(&command, dir)?;
        let artifact = dir.join("artifact");
        let file = File::open_rw(&artifact).map_err(io_err("open", &artifact))?;
        let count = manifest.chunk_count();
        let mut bitmap = match fs::read(dir.join("bitmap")) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => vec![],
            Err(e) => return Err(io_err("read", &dir.join("bitmap"))(e)),
        };
        bitmap.resize(count.div_ceil(8) as usize, 0);
        let received = (0..count).filter(|&i| bitmap[(i / 8) as usize] & (1 << (i % 8)) != 0).count() as u32;
        Ok(Staging { dir: dir.to_path_buf(), command, manifest, bitmap, received, file, dirty: false })
    }

    /// Staged transfers under `root`: each directory with its raw command bytes.
    /// Leftover `.tmp` directories of interrupted creations are removed.
    pub fn list(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        let Ok(entries) = fs::read_dir(root) else { return vec![] };
        let mut out = vec![];
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "tmp") {
                let _ = fsutil::remove_dir_all(&path);
                continue;
            }
            if let Ok(bytes) = fs::read(path.join("command")) {
                out.push((path, bytes));
            }
        }
        out.sort();
        out
    }

    fn has(&self, index: u32) -> bool {
        self.bitmap[(index / 8) as usize] & (1 << (index % 8)) != 0
    }

    /// Checks a chunk against the manifest and writes it in place.
    pub fn accept(&mut self, chunk: &Chunk) -> Result<Accepted, StagingError> {
        let count = self.manifest.chunk_count();
        if chunk.index >= count {
            return Err(StagingError::OutOfRange { index: chunk.index, count });
        }
        if self.has(chunk.index) {
            return Ok(Accepted::Duplicate);
        }
        let range = self.manifest.chunk_range(chunk.index);
        if chunk.data.len() as u64 != range.end - range.start
            || sha256(&chunk.data) != self.manifest.chunk_hashes[chunk.index as usize]
        {
            return Err(StagingError::BadHash(chunk.index));
        }
        self.store(chunk.index, range.start, &chunk.data)?;
        Ok(Accepted::Stored { bytes: chunk.data.len() })
    }

    /// Writes a checked chunk in place and records it.
    fn store(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<(), StagingError> {
        let artifact = self.dir.join("artifact");
        self.file.write_all_at(data, offset).map_err(io_err("write", &artifact))?;
        self.bitmap[(index / 8) as usize] |= 1 << (index % 8);
        self.received += 1;
        self.dirty = true;
        Ok(())
    }

    /// Copies into the staging file the missing chunks that `held` (a file the device
    /// already has: an installed version of a model) contains, found by cutting it with the
    /// manifest's content rule and matching SHA-256 and length. Returns the chunks and bytes
    /// copied. Does nothing for a manifest cut in fixed-size chunks.
    pub fn fill_from(&mut self, held: &[u8]) -> Result<(u32, u64), StagingError> {
        let Some(content) = self.manifest.content.clone() else { return Ok((0, 0)) };
        let mut wanted: std::collections::HashMap<[u8; 32], Vec<u32>> = Default::default();
        for i in 0..self.manifest.chunk_count() {
            if !self.has(i) {
                wanted.entry(self.manifest.chunk_hashes[i as usize]).or_default().push(i);
            }
        }
        let ranges = self.manifest.chunk_ranges();
        let (mut chunks, mut bytes) = (0, 0);
        for (_, data) in content.params.chunks(held) {
            let len = data.len() as u32;
            let Some(indices) = wanted.remove(&sha256(data)) else { continue };
            for i in indices {
                let r = &ranges[i as usize];
                if r.end - r.start == len as u64 {
                    self.store(i, r.start, data)?;
                    chunks += 1;
                    bytes += len as u64;
                }
            }
        }
        Ok((chunks, bytes))
    }

    /// Makes the chunks received so far durable: syncs the artifact, then replaces the
    /// bitmap.
    pub fn checkpoint(&mut self) -> Result<(), StagingError> {
        if !self.dirty {
            return Ok(());
        }
        let artifact = self.dir.join("artifact");
        self.file.sync_data().map_err(io_err("fsync", &artifact))?;
        let bitmap = self.dir.join("bitmap");
        write_atomic(&bitmap, &self.bitmap).map_err(io_err("write", &bitmap))?;
        self.dirty = false;
        Ok(())
    }

    /// Chunks received.
    pub fn received(&self) -> u32 {
        self.received
    }

    /// Whether every chunk is in.
    pub fn is_complete(&self) -> bool {
        self.received == self.manifest.chunk_count()
    }

    /// Percentage of chunks received, 0-100.
    pub fn percent(&self) -> u8 {
        let count = self.manifest.chunk_count().max(1) as u64;
        (self.received as u64 * 100 / count) as u8
    }

    /// The missing chunks as ranges, at most `max_chunks` of them in all.
    pub fn missing(&self, max_chunks: u32) -> Vec<(u32, u32)> {
        missing_ranges(self.manifest.chunk_count(), max_chunks, |i| self.has(i))
    }

    /// The staging directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The assembled artifact file.
    pub fn artifact_path(&self) -> PathBuf {
        self.dir.join("artifact")
    }

    /// The model bytes, checked against the manifest's SHA-256.
    pub fn read_model(&self) -> Result<Vec<u8>, StagingError> {
        let mut model = vec![0u8; self.manifest.size as usize];
        let artifact = self.artifact_path();
        self.file.std().read_exact_at(&mut model, 0).map_err(io_err("read", &artifact))?;
        let found = sha256(&model);
        if found != self.manifest.sha256 {
            return Err(StagingError::ModelHash { found: hex(&found), expected: hex(&self.manifest.sha256) });
        }
        Ok(model)
    }

    /// The validation vector, checked against its SHA-256 and decoded; `None` when the
    /// manifest has none.
    pub fn read_validation(&self) -> Result<Option<Validation>, StagingError> {
        read_validation_at(self.file.std(), &self.artifact_path(), &self.manifest)
    }

    /// Deletes the staging directory.
    pub fn remove(self) {
        let dir = self.dir.clone();
        drop(self);
        if let Err(e) = fsutil::remove_dir_all(&dir) {
            tracing::warn!("staging {}: cannot remove: {e}", dir.display());
        }
        // Space came back: the reserve for bookkeeping may be made whole again.
        disk::refresh(&dir);
    }
}

/// Slack for what a deploy writes besides the model: directory entries, `current`, the
/// store's and the staging's small files, rounding to blocks.
const DEPLOY_SLACK: u64 = 64 * 1024;

/// Bytes a file of `len` bytes takes on disk, in 4 KiB blocks.
fn blocks(len: u64) -> u64 {
    len.div_ceil(4096) * 4096
}

/// Bytes a deploy of `manifest` still has to write once its transfer starts, besides the
/// staging file: its installed copy (encrypted: a nonce and a tag more), the store's copy
/// of the manifest (a hash per chunk, as the command) and slack.
fn install_bytes(manifest: &Manifest) -> u64 {
    let chunks = manifest.chunk_count() as u64;
    blocks(manifest.size + 28) + blocks(32 * chunks) + DEPLOY_SLACK
}

/// The deploy precheck for disk space: whether the state directory's file system has room
/// for `manifest`'s transfer (its staging file, its command and bitmap) and its installed
/// copy, with the installed copies of the transfers already staged under `ota_root` counted
/// too (their staging files are allocated already, their installed copies are not). A
/// staged transfer of the same model is not counted: the new deploy supersedes it.
///
/// The error says what is needed, what is free and what to do. When the free space cannot
/// be read the check passes: staging then fails cleanly at its start if there is no room.
pub fn space_check(state_dir: &Path, ota_root: &Path, manifest: &Manifest) -> Result<(), String> {
    let Ok(space) = disk::space(state_dir) else { return Ok(()) };
    let chunks = manifest.chunk_count() as u64;
    let staging = blocks(manifest.artifact_size()) + blocks(32 * chunks) + blocks(chunks.div_ceil(8));
    let install = install_bytes(manifest);
    let (mut pending, mut running) = (0u64, 0usize);
    for (dir, bytes) in Staging::list(ota_root) {
        // The bytes were verified when the transfer started; here they only give sizes.
        let payload = postcard::take_from_bytes::<Command>(&bytes).map(|(c, _)| c.payload).ok();
        match payload.as_ref().and_then(Payload::manifest) {
            Some(m) if m.name == manifest.name => continue,
            Some(m) => pending += install_bytes(m),
            None => pending += fs::metadata(dir.join("artifact")).map(|m| blocks(m.len())).unwrap_or(0),
        }
        running += 1;
    }
    let need = staging + install + pending;
    if space.free >= need {
        return Ok(());
    }
    let running = match running {
        0 => String::new(),
        n => format!(", {pending} for the installed copies of {n} transfer(s) in progress"),
    };
    Err(format!(
        "not enough disk in {}: this deploy needs {need} bytes ({staging} to stage it, {install} to install it{running}), \
         {} are free; remove an old model (edgectl remove-model) or free space, then deploy again",
        state_dir.display(),
        space.free
    ))
}

/// Reads and checks the validation vector that follows the model in an artifact file.
pub fn read_validation_at(
    file: &fs::File,
    path: &Path,
    manifest: &Manifest,
) -> Result<Option<Validation>, StagingError> {
    if manifest.validation_size == 0 {
        return Ok(None);
    }
    if manifest.validation_size > MAX_VALIDATION_BYTES {
        return Err(StagingError::Validation(format!("{} bytes is over the limit", manifest.validation_size)));
    }
    let mut bytes = vec![0u8; manifest.validation_size as usize];
    file.read_exact_at(&mut bytes, manifest.size).map_err(io_err("read", path))?;
    if sha256(&bytes) != manifest.validation_sha256 {
        return Err(StagingError::Validation("does not match its sha256 in the manifest".into()));
    }
    edge_proto::decode_bounded::<Validation>(&bytes, MAX_VALIDATION_BYTES as usize)
        .map(Some)
        .map_err(|e| StagingError::Validation(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use edge_proto::command::{Command, Target};
    use edge_proto::ota::{prepare, ModelFormat};

    fn deploy(model: &[u8], chunk: u32) -> (Command, Vec<u8>) {
        deploy_as("kws", [9; 16], model, chunk)
    }

    fn deploy_as(name: &str, id: [u8; 16], model: &[u8], chunk: u32) -> (Command, Vec<u8>) {
        let validation = Validation { version: 1, inputs: vec![], expected: vec![], tolerance: 0.0 };
        let (m, artifact) = prepare([2; 16], name, "2", ModelFormat::Tflite, model, Some(&validation), chunk);
        (Command::new(id, 0, u64::MAX, Target::Device("d".into()), Payload::DeployModel(m)), artifact)
    }

    fn manifest(cmd: &Command) -> Manifest {
        manifest_of(cmd, Path::new("")).unwrap()
    }

    #[test]
    fn the_artifact_is_allocated_not_sparse() {
        // A sparse artifact let a transfer fail at 90 % on a disk that filled meanwhile.
        let root = tempfile::tempdir().unwrap();
        let (cmd, _) = deploy(&[3; 300_000], 4096);
        let s = Staging::create(root.path(), b"cmd", cmd).unwrap();
        use std::os::unix::fs::MetadataExt;
        let meta = fs::metadata(s.artifact_path()).unwrap();
        assert_eq!(meta.len(), s.manifest.artifact_size());
        assert!(meta.blocks() * 512 >= meta.len(), "{} blocks for {} bytes", meta.blocks(), meta.len());
    }

    #[test]
    fn no_room_at_the_start_is_a_clean_error_that_leaves_nothing() {
        let Some(fs) = edge_it::Tmpfs::mount(256 * 1024) else { return };
        let (cmd, _) = deploy(&[3; 400_000], 4096);
        let err = Staging::create(fs.path(), b"cmd", cmd).unwrap_err();
        let StagingError::NoSpace { need, free, .. } = &err else { panic!("{err:?}") };
        assert!(*need > 400_000 && *free <= 256 * 1024, "{err}");
        let text = err.to_string();
        assert!(text.contains("remove-model") && text.contains(&need.to_string()), "{text}");
        assert_eq!(fs::read_dir(fs.path()).unwrap().count(), 0, "leftovers after a failed start");
        assert_eq!(crate::disk::space(fs.path()).unwrap().free, 256 * 1024);
    }

    #[test]
    fn space_check_counts_the_installed_copies_of_transfers_in_progress() {
        let Some(fs) = edge_it::Tmpfs::mount(1536 * 1024) else { return };
        let state = fs.path();
        let root = state.join("ota");
        fs::create_dir(&root).unwrap();
        let (b, _) = deploy_as("b", [2; 16], &[2; 400_000], 16 * 1024);
        space_check(state, &root, &manifest(&b)).unwrap();
        // A transfer of another model starts: its staging file takes its space now, its
        // installed copy will later. Together there is no room for b.
        let (a, _) = deploy_as("a", [1; 16], &[1; 400_000], 16 * 1024);
        let _a = Staging::create(&root, &edge_proto::encode(&a), a).unwrap();
        let free = crate::disk::space(state).unwrap().free;
        assert!(free > 400_000 * 2, "b alone would fit ({free} free)");
        let err = space_check(state, &root, &manifest(&b)).unwrap_err();
        assert!(err.contains("1 transfer(s) in progress") && err.contains("remove-model"), "{err}");
        // A deploy of the same model supersedes the staged one: not counted.
        let (a2, _) = deploy_as("a", [3; 16], &[4; 400_000], 16 * 1024);
        space_check(state, &root, &manifest(&a2)).unwrap();
    }

    fn chunk(artifact: &[u8], size: usize, index: u32) -> Chunk {
        let start = index as usize * size;
        let data = artifact[start..(start + size).min(artifact.len())].to_vec();
        Chunk { version: 1, transfer_id: [2; 16], index, data }
    }

    #[test]
    fn chunks_in_any_order_assemble_the_artifact() {
        let root = tempfile::tempdir().unwrap();
        let model: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let (cmd, artifact) = deploy(&model, 100);
        let mut s = Staging::create(root.path(), b"cmd", cmd).unwrap();
        let count = s.manifest.chunk_count();
        for i in (0..count).rev() {
            assert!(matches!(s.accept(&chunk(&artifact, 100, i)).unwrap(), Accepted::Stored { .. }));
        }
        assert_eq!(s.accept(&chunk(&artifact, 100, 0)).unwrap(), Accepted::Duplicate);
        assert!(s.is_complete() && s.percent() == 100 && s.missing(10).is_empty());
        assert_eq!(s.read_model().unwrap(), model);
        assert!(s.read_validation().unwrap().is_some());
    }

    #[test]
    fn a_corrupted_or_misplaced_chunk_is_dropped() {
        let root = tempfile::tempdir().unwrap();
        let (cmd, artifact) = deploy(&[5; 500], 100);
        let mut s = Staging::create(root.path(), b"cmd", cmd).unwrap();
        let mut bad = chunk(&artifact, 100, 1);
        bad.data[3] ^= 1;
        assert!(matches!(s.accept(&bad), Err(StagingError::BadHash(1))));
        let mut wrong_place = chunk(&artifact, 100, 0);
        wrong_place.index = 99;
        assert!(matches!(s.accept(&wrong_place), Err(StagingError::OutOfRange { index: 99, .. })));
        assert_eq!(s.received(), 0);
    }

    #[test]
    fn a_content_deploy_copies_the_chunks_an_installed_version_holds_and_needs_the_rest() {
        use edge_proto::cdc::CdcParams;
        use edge_proto::ota::{prepare_cut, Cut};
        let noise = |n: usize, seed: u32| -> Vec<u8> {
            (0..n as u32).map(|i| ((i ^ seed).wrapping_mul(2_654_435_761) >> 13) as u8).collect()
        };
        let old = noise(200_000, 0);
        // The new version: the same body with its last 10 KB retrained.
        let mut new = old.clone();
        new[190_000..].copy_from_slice(&noise(10_000, 7));
        let params = CdcParams { min: 1024, avg: 4096, max: 16 * 1024 };
        let (m, artifact) = prepare_cut([2; 16], "kws", "3", ModelFormat::Tflite, &new, None, Cut::Content(params));
        let cmd = Command::new([5; 16], 0, u64::MAX, Target::Device("d".into()), Payload::deploy(m));
        let root = tempfile::tempdir().unwrap();
        let mut s = Staging::create(root.path(), b"cmd", cmd).unwrap();
        let count = s.manifest.chunk_count();
        // A file that shares nothing gives nothing.
        assert_eq!(s.fill_from(&noise(50_000, 99)).unwrap(), (0, 0));
        let (chunks, bytes) = s.fill_from(&old).unwrap();
        assert!(chunks > count / 2 && chunks < count, "{chunks} of {count}");
        assert!(bytes > 150_000 && bytes < 190_000, "{bytes}");
        assert_eq!(s.received(), chunks);
        // What is left: only chunks at the end, which arrive as usual.
        let missing = s.missing(u32::MAX);
        assert_eq!(missing.last().unwrap().1, count);
        for (start, end) in missing {
            for index in start..end {
                let r = s.manifest.chunk_range(index);
                let data = artifact[r.start as usize..r.end as usize].to_vec();
                s.accept(&Chunk { version: 1, transfer_id: [2; 16], index, data }).unwrap();
            }
        }
        assert!(s.is_complete());
        assert_eq!(s.read_model().unwrap(), new);
    }

    #[test]
    fn the_bitmap_survives_a_restart_only_after_a_checkpoint() {
        let root = tempfile::tempdir().unwrap();
        let (cmd, artifact) = deploy(&[1; 1000], 100);
        let mut s = Staging::create(root.path(), b"signed bytes", cmd.clone()).unwrap();
        s.accept(&chunk(&artifact, 100, 0)).unwrap();
        s.accept(&chunk(&artifact, 100, 2)).unwrap();
        s.checkpoint().unwrap();
        s.accept(&chunk(&artifact, 100, 3)).unwrap();
        let dir = s.dir().to_path_buf();
        drop(s); // a crash: chunk 3 was never checkpointed
        let listed = Staging::list(root.path());
        assert_eq!(listed, vec![(dir.clone(), b"signed bytes".to_vec())]);
        let s = Staging::open(&dir, cmd).unwrap();
        assert_eq!(s.received(), 2);
        let count = s.manifest.chunk_count();
        assert_eq!(s.missing(100), vec![(1, 2), (3, count)]);
        assert_eq!(s.missing(3), vec![(1, 2), (3, 5)]);
    }

    #[test]
    fn a_wrong_model_hash_is_reported_with_both_hashes() {
        let root = tempfile::tempdir().unwrap();
        let (mut cmd, artifact) = deploy(&[1; 300], 100);
        if let Payload::DeployModel(m) = &mut cmd.payload {
            m.sha256 = [0; 32];
        }
        let mut s = Staging::create(root.path(), b"c", cmd).unwrap();
        for i in 0..s.manifest.chunk_count() {
            s.accept(&chunk(&artifact, 100, i)).unwrap();
        }
        let err = s.read_model().unwrap_err().to_string();
        assert!(err.contains(&"00".repeat(32)), "{err}");
    }
}
