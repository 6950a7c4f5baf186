//! Durable file writes: the one path by which the agent's durable state reaches the disk.
//!
//! The store, the staging of transfers, the replay window, trial markers, the device key,
//! the outboxes and the disk reserve write through [`File`] and the functions here, not `std::fs`
//! directly. Each does the real operation and, in the power-cut tests, also logs it
//! ([`record`]) so that a test can replay what a power cut at any point leaves on disk.
//!
//! # Layout
//!
//! - this file: [`File`], the directory operations, [`write_atomic`];
//! - [`record`]: the per-thread log of operations the power-cut tests replay.

use std::io::{self, Seek, Write};
use std::path::{Path, PathBuf};

use crate::disk;

pub mod record;

use record::Op;

/// A file of durable state, opened for writing. Its writes, length changes and syncs go
/// through here so that the power-cut tests see them; [`File::std`] reads.
#[derive(Debug)]
pub struct File {
    file: std::fs::File,
    path: PathBuf,
    /// Opened with `O_APPEND`: every write lands at the file's end, wherever the position.
    append: bool,
}

impl File {
    /// Creates `path` for writing, truncating it if it exists (`File::create`).
    pub fn create(path: &Path) -> io::Result<File> {
        let file = std::fs::File::create(path)?;
        record::log(|rel| Some(Op::Create(rel(path)?)));
        Ok(File { file, path: path.to_path_buf(), append: false })
    }

    /// Creates `path` for writing with permission bits `mode`, truncating it if it exists.
    pub fn create_with_mode(path: &Path, mode: u32) -> io::Result<File> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(path)?;
        record::log(|rel| Some(Op::Create(rel(path)?)));
        Ok(File { file, path: path.to_path_buf(), append: false })
    }

    /// Opens the existing `path` for reading and writing.
    pub fn open_rw(path: &Path) -> io::Result<File> {
        let file = std::fs::OpenOptions::new().read(true).write(true).open(path)?;
        Ok(File { file, path: path.to_path_buf(), append: false })
    }

    /// Opens `path` for reading and writing, creating it empty if it does not exist.
    pub fn open_or_create(path: &Path) -> io::Result<File> {
        let existed = record::active() && path.exists();
        let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
        if !existed {
            record::log(|rel| Some(Op::Create(rel(path)?)));
        }
        Ok(File { file, path: path.to_path_buf(), append: false })
    }

    /// Opens the existing `path` for appending (`O_APPEND`): each write goes to its end.
    pub fn open_append(path: &Path) -> io::Result<File> {
        let file = std::fs::OpenOptions::new().append(true).open(path)?;
        Ok(File { file, path: path.to_path_buf(), append: true })
    }

    /// The file, to read it.
    pub fn std(&self) -> &std::fs::File {
        &self.file
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes all of `data` at the current position (at the end, for [`File::open_append`]).
    pub fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        let offset = match record::active() {
            false => 0,
            // The position of an `O_APPEND` file is not where its next write lands (it is 0
            // until the first write): the end is.
            true if self.append => self.file.metadata()?.len(),
            true => self.file.stream_position()?,
        };
        self.file.write_all(data)?;
        record::log(|rel| Some(Op::Write { path: rel(&self.path)?, offset, data: data.to_vec() }));
        Ok(())
    }

    /// Writes all of `data` at `offset`.
    pub fn write_all_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.file.write_all_at(data, offset)?;
        record::log(|rel| Some(Op::Write { path: rel(&self.path)?, offset, data: data.to_vec() }));
        Ok(())
    }

    /// Sets its length (`ftruncate`).
    pub fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)?;
        record::log(|rel| Some(Op::SetLen { path: rel(&self.path)?, len }));
        Ok(())
    }

    /// Allocates real blocks for its first `len` bytes ([`disk::allocate`]).
    pub fn allocate(&self, len: u64) -> io::Result<()> {
        disk::allocate(&self.file, len)?;
        if record::active() {
            let len = self.file.metadata()?.len();
            record::log(|rel| Some(Op::SetLen { path: rel(&self.path)?, len }));
        }
        Ok(())
    }

    /// `fsync`: data, length and metadata durable.
    pub fn sync_all(&self) -> io::Result<()> {
        self.file.sync_all()?;
        record::log(|rel| Some(Op::Sync(rel(&self.path)?)));
        Ok(())
    }

    /// `fdatasync`: data and length durable.
    pub fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()?;
        record::log(|rel| Some(Op::Sync(rel(&self.path)?)));
        Ok(())
    }
}

/// Makes the entries of `dir` (creations, renames, removals) durable: `fsync` of the
/// directory.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()?;
    record::log(|rel| Some(Op::SyncDir(rel(dir)?)));
    Ok(())
}

/// Renames `from` to `to`, replacing `to`.
pub fn rename(from: &Path, to: &Path) -> io::Result<()> {
    std::fs::rename(from, to)?;
    record::log(|rel| Some(Op::Rename { from: rel(from)?, to: rel(to)? }));
    Ok(())
}

/// Unlinks the file `path`.
pub fn remove_file(path: &Path) -> io::Result<()> {
    std::fs::remove_file(path)?;
    record::log(|rel| Some(Op::Remove(rel(path)?)));
    Ok(())
}

/// Makes the directory `dir` and its missing parents, durably: the parent of each
/// directory made is fsynced, so that what is written inside is not lost with the
/// directory's own entry at a power cut.
pub fn create_dir_all(dir: &Path) -> io::Result<()> {
    let mut made = vec![];
    let mut at = Some(dir);
    while let Some(d) = at.filter(|d| !d.as_os_str().is_empty() && !d.is_dir()) {
        made.push(d);
        at = d.parent();
    }
    for d in made.into_iter().rev() {
        match std::fs::create_dir(d) {
            Ok(()) => record::log(|rel| Some(Op::CreateDir(rel(d)?))),
            // Made meanwhile by someone else: theirs to sync.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && d.is_dir() => continue,
            Err(e) => return Err(e),
        }
        sync_dir(d.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")))?;
    }
    Ok(())
}

/// Removes the empty directory `dir`.
pub fn remove_dir(dir: &Path) -> io::Result<()> {
    std::fs::remove_dir(dir)?;
    record::log(|rel| Some(Op::RemoveDir(rel(dir)?)));
    Ok(())
}

/// Removes `dir` and everything under it.
pub fn remove_dir_all(dir: &Path) -> io::Result<()> {
    if !record::active() {
        return std::fs::remove_dir_all(dir);
    }
    fn walk(dir: &Path, out: &mut Vec<Op>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                walk(&path, out);
            } else {
                out.push(Op::Remove(path));
            }
        }
        out.push(Op::RemoveDir(dir.to_path_buf()));
    }
    let mut removals = vec![];
    walk(dir, &mut removals);
    std::fs::remove_dir_all(dir)?;
    for op in removals {
        record::log(|rel| match op {
            Op::Remove(p) => Some(Op::Remove(rel(&p)?)),
            Op::RemoveDir(p) => Some(Op::RemoveDir(rel(&p)?)),
            _ => None,
        });
    }
    Ok(())
}

/// The temporary file [`write_atomic`] writes beside `path`: a crash can leave it behind,
/// and whoever owns the directory may remove it.
pub fn temporary_for(path: &Path) -> PathBuf {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    path.with_file_name(format!("{name}.tmp"))
}

/// Replaces `path` with `data` atomically: write a temporary file beside it, fsync it,
/// rename it over `path`, fsync the directory. After a crash the file holds either the old
/// or the new contents, never a mix.
///
/// On a full file system the write draws on the space reserved for bookkeeping
/// ([`disk::release_for`]) and is tried again, so the agent's small state files stay
/// writable; a temporary file that could not be written is removed, not left taking space.
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    loop {
        match write_once(path, data) {
            Err(e) if disk::is_no_space(&e) => {
                let _ = remove_file(&temporary_for(path));
                if !disk::release_for(path) {
                    return Err(e);
                }
            }
            Err(e) => {
                let _ = remove_file(&temporary_for(path));
                return Err(e);
            }
            Ok(()) => return Ok(()),
        }
    }
}

fn write_once(path: &Path, data: &[u8]) -> io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = temporary_for(path);
    {
        let mut f = File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    rename(&tmp, path)?;
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use edge_it::Tmpfs;

    #[test]
    fn replaces_contents_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn an_append_is_recorded_at_the_end_of_the_file() {
        // At the stream position, an O_APPEND file's first write would be logged at offset 0
        // and a write after a truncation past the end: a replayed outbox segment would
        // overwrite its first record, or gain a hole, instead of growing by one.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("seg");
        std::fs::write(&p, b"12345").unwrap();
        let recording = record::start(dir.path());
        let mut f = File::open_append(&p).unwrap();
        f.write_all(b"abc").unwrap();
        f.set_len(6).unwrap();
        f.write_all(b"de").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"12345ade");
        let writes: Vec<(u64, Vec<u8>)> = recording
            .ops()
            .into_iter()
            .filter_map(|op| match op {
                Op::Write { offset, data, .. } => Some((offset, data)),
                _ => None,
            })
            .collect();
        assert_eq!(writes, vec![(5, b"abc".to_vec()), (6, b"de".to_vec())]);
    }

    #[test]
    fn a_full_file_system_draws_on_the_reserve() {
        // Failed with "No space left on device" before the reserve: telemetry.seq, `current`.
        let Some(fs) = Tmpfs::mount(1024 * 1024) else { return };
        let state = disk::open_reserve(fs.path());
        let p = fs.path().join("current");
        write_atomic(&p, b"old").unwrap();
        fs.fill("filler");
        write_atomic(&p, &[7; 6000]).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), [7; 6000]);
        assert!(state.reserve_draws() >= 1 && state.full());
        assert!(!temporary_for(&p).exists());
    }

    #[test]
    fn without_a_reserve_a_full_file_system_fails_cleanly() {
        let Some(fs) = Tmpfs::mount(64 * 1024) else { return };
        let p = fs.path().join("current");
        write_atomic(&p, b"old").unwrap();
        fs.fill("filler");
        let err = write_atomic(&p, &[7; 6000]).unwrap_err();
        assert!(disk::is_no_space(&err), "{err}");
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        assert!(!temporary_for(&p).exists(), "the temporary file is removed");
    }
}
