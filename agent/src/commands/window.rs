//! The replay window: ids of accepted commands, kept on disk until they expire, and the
//! time floor that keeps expiry honest when the clock goes back.
//!
//! # Time
//!
//! An id is forgotten once its command has expired, and from then on the expiry check
//! alone refuses a replay. That holds only while the clock does not go back: a board
//! without a battery-backed clock, or one whose time is restored from disk at boot, can
//! find itself hours in the past, when a forgotten command looks unexpired again. So the
//! window keeps a **floor**: the latest `issued_at` of any accepted command, a time an
//! operator signed and the device accepted (hence not ahead of the device's clock by more
//! than the allowed skew). The gate judges expiry against the later of the clock and the
//! floor, and ids are forgotten only once the floor, not the clock, has passed their
//! expiry. A clock that jumps ahead and back can then neither forget an id early nor
//! revive an expired command; a clock far ahead by mistake cannot push the floor (only
//! signed times do), so it cannot make later commands look expired either.
//!
//! # On disk
//!
//! Recording a command must work on a full file system: it is how `remove-model` and
//! `erase`, the commands that free space, get accepted. So the file never grows and is
//! never replaced: it is written in full once (real blocks, no holes), then overwritten
//! in place.
//!
//! ```text
//! commands.window   slot 0 ‖ slot 1, each SLOT_HEADER + capacity × 24 bytes
//! slot              magic "EAWINDW3" ‖ generation u64 ‖ floor u64 ‖ count u32 ‖ crc32 u32
//!                   ‖ entries
//! entry             command id [u8; 16] ‖ expires_at u64 (ms since the Unix epoch)
//! ```
//!
//! Integers are little-endian; the CRC (IEEE) covers generation, floor, count and the
//! `count` entries. A record writes the slot that does *not* hold the newest generation, with the
//! next generation, and syncs it; opening reads both and takes the valid one with the
//! higher generation. A write torn by a crash fails its CRC, and the other slot (the
//! window as it was before that command) is read instead: the same guarantee as replacing
//! the file, without needing a block.
//!
//! A file in the first layout (postcard, replaced whole) or the second (`EAWINDW2`, the same
//! without the floor) is read, with a floor of 0, and rewritten in this one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::fsutil::{write_atomic, File};

/// Name of the window file in `state_dir`.
pub const WINDOW_FILE: &str = "commands.window";

/// Most ids kept. Only commands that passed signature checks get in, so only an operator
/// can fill it; when it is full of unexpired ids, new commands are refused rather than an
/// id forgotten early (which would let that command be replayed).
pub const MAX_ENTRIES: usize = 4096;

/// First bytes of each slot.
const MAGIC: &[u8; 8] = b"EAWINDW3";

/// First bytes of each slot in the second layout, which had no floor.
const MAGIC_V2: &[u8; 8] = b"EAWINDW2";

/// Bytes before a slot's entries.
const SLOT_HEADER: usize = 32;

/// Bytes before a slot's entries in the second layout.
const SLOT_HEADER_V2: usize = 24;

/// Bytes of one entry.
const ENTRY: usize = 24;

/// Bytes of one slot holding up to `capacity` entries.
fn slot_len(capacity: usize) -> usize {
    SLOT_HEADER + capacity * ENTRY
}

/// The first layout, read to migrate.
#[derive(Deserialize)]
struct V1 {
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
    /// Latest `issued_at` of an accepted command (module docs, "Time").
    floor: u64,
    /// The file in the current layout, once it exists with room for `capacity` ids.
    file: Option<File>,
    /// Generation of the newest slot on disk, and which slot holds it.
    generation: u64,
    newest: usize,
}

/// Encodes one slot: header and entries, sorted so that the same window always makes the
/// same bytes.
fn encode_slot(generation: u64, floor: u64, entries: &HashMap<[u8; 16], u64>) -> Vec<u8> {
    let mut sorted: Vec<([u8; 16], u64)> = entries.iter().map(|(k, v)| (*k, *v)).collect();
    sorted.sort();
    let mut body = Vec::with_capacity(20 + sorted.len() * ENTRY);
    body.extend_from_slice(&generation.to_le_bytes());
    body.extend_from_slice(&floor.to_le_bytes());
    body.extend_from_slice(&(sorted.len() as u32).to_le_bytes());
    for (id, exp) in &sorted {
        body.extend_from_slice(id);
        body.extend_from_slice(&exp.to_le_bytes());
    }
    let crc = crc32fast::hash(&body);
    let mut out = Vec::with_capacity(SLOT_HEADER + sorted.len() * ENTRY);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&body[..20]);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&body[20..]);
    out
}

/// One slot as read.
struct Slot {
    generation: u64,
    floor: u64,
    entries: HashMap<[u8; 16], u64>,
    /// In the current layout (not the second).
    current: bool,
}

/// Decodes one slot of the current or the second layout, or `None` when it is not a whole,
/// checksummed slot (never written, or torn).
fn decode_slot(slot: &[u8]) -> Option<Slot> {
    let (current, header) = match slot.get(..8)? {
        m if m == MAGIC => (true, SLOT_HEADER),
        m if m == MAGIC_V2 => (false, SLOT_HEADER_V2),
        _ => return None,
    };
    let fields = slot.get(8..header - 4)?;
    let generation = u64::from_le_bytes(fields[..8].try_into().ok()?);
    let floor = if current { u64::from_le_bytes(fields[8..16].try_into().ok()?) } else { 0 };
    let count = u32::from_le_bytes(fields[fields.len() - 4..].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(slot.get(header - 4..header)?.try_into().ok()?);
    let entries = slot.get(header..header + count.checked_mul(ENTRY)?)?;
    let mut h = crc32fast::Hasher::new();
    h.update(fields);
    h.update(entries);
    if h.finalize() != crc {
        return None;
    }
    let entries = entries
        .chunks_exact(ENTRY)
        .map(|e| (e[..16].try_into().expect("16 bytes"), u64::from_le_bytes(e[16..].try_into().expect("8 bytes"))))
        .collect();
    Some(Slot { generation, floor, entries, current })
}

impl ReplayWindow {
    /// Opens the window file in `state_dir` ([`WINDOW_FILE`]).
    pub fn open_in(state_dir: &Path) -> Result<ReplayWindow, WindowError> {
        ReplayWindow::open(&state_dir.join(WINDOW_FILE), MAX_ENTRIES)
    }

    /// Opens the window at `path`, holding at most `capacity` ids. A missing file is an
    /// empty window; a corrupt one is an error, not silently emptied. The file is made
    /// (written in full) now if it is missing, in the first layout or too small; when that
    /// fails (a full disk) it is logged and tried again at the first record.
    pub fn open(path: &Path, capacity: usize) -> Result<ReplayWindow, WindowError> {
        let corrupt = |reason: String| WindowError::Corrupt { path: path.into(), reason };
        let mut window = ReplayWindow {
            path: path.into(),
            capacity,
            entries: HashMap::new(),
            floor: 0,
            file: None,
            generation: 0,
            newest: 0,
        };
        let bytes = match std::fs::read(path) {
            Ok(bytes) => Some(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => return Err(WindowError::Io { path: path.into(), source }),
        };
        let mut current = false;
        if let Some(bytes) = bytes {
            let slotted = bytes.starts_with(MAGIC) || bytes.starts_with(MAGIC_V2);
            if slotted || bytes.len() >= 2 * SLOT_HEADER_V2 {
                let half = bytes.len() / 2;
                let (a, b) = bytes.split_at(half);
                let best = [decode_slot(a), decode_slot(b)]
                    .into_iter()
                    .enumerate()
                    .filter_map(|(i, s)| s.map(|s| (i, s)))
                    .max_by_key(|(i, s)| (s.generation, *i));
                if let Some((newest, slot)) = best {
                    (window.generation, window.newest) = (slot.generation, newest);
                    (window.entries, window.floor) = (slot.entries, slot.floor);
                    current = slot.current && half == slot_len(capacity);
                } else if slotted {
                    return Err(corrupt("neither slot is whole".into()));
                }
            }
            if window.generation == 0 {
                let v1: V1 = postcard::from_bytes(&bytes).map_err(|e| corrupt(e.to_string()))?;
                if v1.version != 1 {
                    return Err(corrupt(format!("unknown layout version {}", v1.version)));
                }
                window.entries = v1.entries.into_iter().collect();
            }
        }
        if current {
            let file = File::open_rw(path).map_err(|source| WindowError::Io { path: path.into(), source })?;
            window.file = Some(file);
        } else if window.entries.len() <= capacity {
            if let Err(e) = window.make_file() {
                tracing::warn!("{e}; trying again at the next command");
            }
        }
        Ok(window)
    }

    /// Writes the whole file (both slots, the newest holding the window as it is) and
    /// keeps it open. Goes through [`write_atomic`], which draws on the space reserved for
    /// bookkeeping on a full disk.
    fn make_file(&mut self) -> Result<(), WindowError> {
        let len = slot_len(self.capacity);
        let mut bytes = vec![0u8; 2 * len];
        let generation = self.generation + 1;
        let slot = encode_slot(generation, self.floor, &self.entries);
        bytes[..slot.len()].copy_from_slice(&slot);
        let io = |source| WindowError::Io { path: self.path.clone(), source };
        write_atomic(&self.path, &bytes).map_err(io)?;
        let file = File::open_rw(&self.path).map_err(io)?;
        (self.file, self.generation, self.newest) = (Some(file), generation, 0);
        Ok(())
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

    /// The latest `issued_at` of an accepted command: no command that expired before it
    /// may run, whatever the clock says (module docs, "Time").
    pub fn floor(&self) -> u64 {
        self.floor
    }

    /// Records an accepted command issued at `issued_at`: raises the floor to it, drops
    /// the ids expired before the floor, adds `id`, writes the older slot in place and
    /// syncs it. On any error nothing changes in memory, and the newest slot on disk is
    /// untouched.
    pub fn record(&mut self, id: [u8; 16], expires_at: u64, issued_at: u64) -> Result<(), WindowError> {
        let floor = self.floor.max(issued_at);
        let mut next: HashMap<[u8; 16], u64> =
            self.entries.iter().filter(|(_, &exp)| exp >= floor).map(|(k, v)| (*k, *v)).collect();
        if next.len() >= self.capacity && !next.contains_key(&id) {
            return Err(WindowError::Full(next.len()));
        }
        next.insert(id, expires_at);
        if self.file.is_none() {
            // Only where the file could not be made at open: a full disk then.
            let before = (std::mem::replace(&mut self.entries, next), std::mem::replace(&mut self.floor, floor));
            if let Err(e) = self.make_file() {
                (self.entries, self.floor) = before;
                return Err(e);
            }
            return Ok(());
        }
        let file = self.file.as_ref().expect("file checked above");
        let generation = self.generation + 1;
        let slot = 1 - self.newest;
        let bytes = encode_slot(generation, floor, &next);
        let offset = (slot * slot_len(self.capacity)) as u64;
        file.write_all_at(&bytes, offset)
            .and_then(|_| file.sync_data())
            .map_err(|source| WindowError::Io { path: self.path.clone(), source })?;
        (self.entries, self.floor, self.generation, self.newest) = (next, floor, generation, slot);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Serialize;

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
    fn the_file_has_its_full_size_from_the_start() {
        let dir = tempfile::tempdir().unwrap();
        ReplayWindow::open_in(dir.path()).unwrap();
        let meta = std::fs::metadata(dir.path().join(WINDOW_FILE)).unwrap();
        assert_eq!(meta.len(), 2 * slot_len(MAX_ENTRIES) as u64);
        use std::os::unix::fs::MetadataExt;
        assert!(meta.blocks() * 512 >= meta.len(), "written in full, not sparse");
    }

    #[test]
    fn records_on_a_full_file_system() {
        // Failed with "No space left on device": remove-model was refused on a full disk.
        let Some(fs) = edge_it::Tmpfs::mount(1024 * 1024) else { return };
        let mut w = ReplayWindow::open_in(fs.path()).unwrap();
        w.record([1; 16], 1000, 0).unwrap();
        fs.fill("filler");
        // No reserve on this file system: recording must not need a single new block.
        for i in 2..200u8 {
            w.record([i; 16], 1000 + i as u64, 0).unwrap();
        }
        let w = ReplayWindow::open_in(fs.path()).unwrap();
        assert_eq!(w.len(), 199);
        assert!(w.contains(&[1; 16]) && w.contains(&[199; 16]));
    }

    #[test]
    fn a_torn_write_keeps_the_window_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w");
        let mut w = ReplayWindow::open(&path, 8).unwrap();
        w.record([1; 16], 100, 0).unwrap();
        w.record([2; 16], 100, 0).unwrap();
        let newest = w.newest;
        drop(w);
        // A crash in the middle of the last record: its slot's tail is garbage.
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let offset = (newest * slot_len(8) + SLOT_HEADER + ENTRY) as u64;
        f.write_all_at(&[0xff; 10], offset).unwrap();
        let mut w = ReplayWindow::open(&path, 8).unwrap();
        assert!(w.contains(&[1; 16]) && !w.contains(&[2; 16]));
        // And recording goes on from there, into the torn slot.
        w.record([3; 16], 100, 0).unwrap();
        let w = ReplayWindow::open(&path, 8).unwrap();
        assert!(w.contains(&[1; 16]) && w.contains(&[3; 16]) && !w.contains(&[2; 16]));
    }

    #[test]
    fn a_file_in_the_first_layout_is_read_and_rewritten() {
        #[derive(Serialize)]
        struct V1Out {
            version: u16,
            entries: Vec<([u8; 16], u64)>,
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(WINDOW_FILE);
        let old = V1Out { version: 1, entries: vec![([1; 16], 100), ([2; 16], 200), ([3; 16], 300)] };
        std::fs::write(&path, postcard::to_stdvec(&old).unwrap()).unwrap();
        let w = ReplayWindow::open_in(dir.path()).unwrap();
        assert_eq!(w.len(), 3);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 2 * slot_len(MAX_ENTRIES) as u64);
        let w = ReplayWindow::open_in(dir.path()).unwrap();
        assert!(w.contains(&[1; 16]) && w.contains(&[2; 16]) && w.contains(&[3; 16]));
    }

    #[test]
    fn the_floor_persists_and_forgets_ids_only_once_it_passes_their_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = ReplayWindow::open_in(dir.path()).unwrap();
        w.record([1; 16], 100, 50).unwrap();
        assert_eq!(w.floor(), 50);
        // A command issued earlier than the floor does not lower it.
        w.record([2; 16], 500, 40).unwrap();
        assert_eq!(w.floor(), 50);
        assert!(w.contains(&[1; 16]), "the floor (50) has not passed its expiry (100)");
        w.record([3; 16], 900, 101).unwrap();
        assert!(!w.contains(&[1; 16]) && w.contains(&[2; 16]));
        let w = ReplayWindow::open_in(dir.path()).unwrap();
        assert_eq!(w.floor(), 101);
    }

    #[test]
    fn a_file_in_the_second_layout_is_read_with_a_floor_of_zero_and_rewritten() {
        // The second layout: the current one without the floor, 24-byte headers.
        let capacity = 4;
        let mut entries = HashMap::new();
        entries.insert([7u8; 16], 1234u64);
        let mut body = Vec::new();
        body.extend_from_slice(&5u64.to_le_bytes());
        body.extend_from_slice(&1u32.to_le_bytes());
        body.extend_from_slice(&[7; 16]);
        body.extend_from_slice(&1234u64.to_le_bytes());
        let crc = crc32fast::hash(&body);
        let mut slot = MAGIC_V2.to_vec();
        slot.extend_from_slice(&body[..12]);
        slot.extend_from_slice(&crc.to_le_bytes());
        slot.extend_from_slice(&body[12..]);
        let len = SLOT_HEADER_V2 + capacity * ENTRY;
        let mut bytes = vec![0u8; 2 * len];
        bytes[..slot.len()].copy_from_slice(&slot);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w");
        std::fs::write(&path, &bytes).unwrap();
        let w = ReplayWindow::open(&path, capacity).unwrap();
        assert_eq!((w.entries.clone(), w.floor()), (entries, 0));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 2 * slot_len(capacity) as u64, "rewritten");
        assert!(ReplayWindow::open(&path, capacity).unwrap().contains(&[7; 16]));
    }

    #[test]
    fn fuzz_window_a_slot_cut_inside_its_header_is_torn_not_a_panic() {
        // Found by the `window` fuzz target: a file whose halves start with the magic but
        // end before the checksum panicked on a slice out of range.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w");
        let mut half = MAGIC.to_vec();
        half.resize(SLOT_HEADER - 1, 0);
        std::fs::write(&path, [half.clone(), half].concat()).unwrap();
        let err = ReplayWindow::open(&path, 4).unwrap_err();
        assert!(matches!(err, WindowError::Corrupt { .. }), "{err}");
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
