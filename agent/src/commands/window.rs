//! The replay window: ids of accepted commands, kept on disk until they expire.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::fsutil::write_atomic;

/// Name of the window file in `state_dir`.
pub const WINDOW_FILE: &str = "commands.window";

/// Most ids kept. Only commands that passed signature checks get in, so only an operator
/// can fill it; when it is full of unexpired ids, new commands are refused rather than an
/// id forgotten early (which would let that command be replayed).
pub const MAX_ENTRIES: usize = 4096;

/// Layout version of the file.
const FILE_VERSION: u16 = 1;

#[derive(Serialize, Deserialize)]
struct OnDisk {
    version: u16,
    entries: Vec<([u8; 16], u64)>,
}

/// Why the window could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum WindowError {
    /// Reading or writing the file failed.
    #[error("replay window {}: {source}", path.display())]
    Io {
        /// The window file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The file does not decode.
    #[error(
        "replay window {}: corrupt ({reason}); remove it to start with an empty window \
         (commands seen before may then be accepted again until they expire)",
        path.display()
    )]
    Corrupt {
        /// The window file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Every slot holds an unexpired id.
    #[error("replay window full ({0} unexpired command ids); retry once older commands expire")]
    Full(usize),
}

/// Ids of accepted commands with their expiry (ms since the Unix epoch), persisted in one
/// file. An id is forgotten once its command has expired: from then on the expiry check
/// refuses a replay on its own.
#[derive(Debug)]
pub struct ReplayWindow {
    path: PathBuf,
    capacity: usize,
    entries: HashMap<[u8; 16], u64>,
}

impl ReplayWindow {
    /// Opens the window file in `state_dir` ([`WINDOW_FILE`]).
    pub fn open_in(state_dir: &Path) -> Result<ReplayWindow, WindowError> {
        ReplayWindow::open(&state_dir.join(WINDOW_FILE), MAX_ENTRIES)
    }

    /// Opens the window at `path`, holding at most `capacity` ids. A missing file is an
    /// empty window; a corrupt one is an error, not silently emptied.
    pub fn open(path: &Path, capacity: usize) -> Result<ReplayWindow, WindowError> {
        let entries = match std::fs::read(path) {
            Ok(bytes) => {
                let disk: OnDisk = postcard::from_bytes(&bytes)
                    .map_err(|e| WindowError::Corrupt { path: path.into(), reason: e.to_string() })?;
                if disk.version != FILE_VERSION {
                    return Err(WindowError::Corrupt {
                        path: path.into(),
                        reason: format!("unknown layout version {}", disk.version),
                    });
                }
                disk.entries.into_iter().collect()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashMap::new(),
            Err(source) => return Err(WindowError::Io { path: path.into(), source }),
        };
        Ok(ReplayWindow { path: path.into(), capacity, entries })
    }

    /// Whether `id` was accepted and has not been forgotten.
    pub fn contains(&self, id: &[u8; 16]) -> bool {
        self.entries.contains_key(id)
    }

    /// Number of ids held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no id is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Records an accepted command: drops the ids expired at `now_ms`, adds `id`, writes the
    /// file. On any error nothing changes, in memory or on disk.
    pub fn record(&mut self, id: [u8; 16], expires_at: u64, now_ms: u64) -> Result<(), WindowError> {
        let mut next: HashMap<[u8; 16], u64> =
            self.entries.iter().filter(|(_, &exp)| exp >= now_ms).map(|(k, v)| (*k, *v)).collect();
        if next.len() >= self.capacity && !next.contains_key(&id) {
            return Err(WindowError::Full(next.len()));
        }
        next.insert(id, expires_at);
        // Sorted, so that the same window always makes the same file.
        let mut entries: Vec<([u8; 16], u64)> = next.iter().map(|(k, v)| (*k, *v)).collect();
        entries.sort();
        let bytes = postcard::to_stdvec(&OnDisk { version: FILE_VERSION, entries }).expect("window serializes");
        write_atomic(&self.path, &bytes).map_err(|source| WindowError::Io { path: self.path.clone(), source })?;
        self.entries = next;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn persists_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = ReplayWindow::open_in(dir.path()).unwrap();
        assert!(w.is_empty());
        w.record([1; 16], 100, 10).unwrap();
        let w = ReplayWindow::open_in(dir.path()).unwrap();
        assert!(w.contains(&[1; 16]));
        assert!(!w.contains(&[2; 16]));
    }

    #[test]
    fn prunes_expired_ids_when_recording() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = ReplayWindow::open_in(dir.path()).unwrap();
        w.record([1; 16], 100, 10).unwrap();
        w.record([2; 16], 500, 10).unwrap();
        // At 101 the first has expired (expires_at < now) and goes; the second stays.
        w.record([3; 16], 900, 101).unwrap();
        assert!(!w.contains(&[1; 16]) && w.contains(&[2; 16]) && w.contains(&[3; 16]));
        let w = ReplayWindow::open_in(dir.path()).unwrap();
        assert_eq!(w.len(), 2);
    }

    #[test]
    fn full_window_refuses_instead_of_forgetting_and_frees_slots_on_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w");
        let mut w = ReplayWindow::open(&path, 2).unwrap();
        w.record([1; 16], 100, 0).unwrap();
        w.record([2; 16], 200, 0).unwrap();
        assert!(matches!(w.record([3; 16], 300, 50), Err(WindowError::Full(2))));
        assert!(w.contains(&[1; 16]) && w.contains(&[2; 16]) && !w.contains(&[3; 16]));
        assert_eq!(ReplayWindow::open(&path, 2).unwrap().len(), 2);
        // Once the first expires its slot is free.
        w.record([3; 16], 300, 150).unwrap();
        assert!(!w.contains(&[1; 16]) && w.contains(&[3; 16]));
        assert_eq!(w.len(), 2);
    }

    #[test]
    fn corrupt_file_is_an_error_that_names_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(WINDOW_FILE), b"\x05garbage").unwrap();
        let err = ReplayWindow::open_in(dir.path()).unwrap_err();
        assert!(err.to_string().contains(WINDOW_FILE), "{err}");
    }

    #[test]
    fn failed_write_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-dir").join("w");
        let mut w = ReplayWindow::open(&path, 8).unwrap();
        assert!(matches!(w.record([1; 16], 100, 0), Err(WindowError::Io { .. })));
        assert!(!w.contains(&[1; 16]));
    }
}
