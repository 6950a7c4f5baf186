//! Telemetry sequence numbers that only increase, across restarts too, and that never stop
//! the agent: not on a full disk, not on a damaged file.
//!
//! Blocks of [`SEQ_BLOCK`] numbers are reserved on disk before any of them is handed out,
//! so a restart skips ahead instead of reusing.
//!
//! # On disk
//!
//! `telemetry.seq` is a fixed-size file ([`FILE_BYTES`]) written once, when it is created,
//! and from then on overwritten in place: on a file system that is full it needs no new
//! block, so reserving keeps working. It holds two slots, in separate sectors:
//!
//! ```text
//! offset 0 and 512: [magic "SEQ2"][reserved u64 LE][crc32 of the 12 bytes before, u32 LE]
//! ```
//!
//! Reservations alternate between the slots, each `fdatasync`ed; a torn write damages only
//! the slot being written, and the other still holds the previous reservation, which every
//! number handed out so far is below. The highest valid slot wins.
//!
//! A file in the earlier text format (`"1234\n"`) is read and rewritten in place. A file
//! with no valid slot, or one that cannot be created (a full disk on first start), makes
//! the store start after the current time in milliseconds, which is above any count a
//! device reaches; without a file it keeps trying to create one at each block, and says so
//! in the log.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// How many sequence numbers are reserved on disk at a time.
pub const SEQ_BLOCK: u64 = 64;
/// Size of the sequence file.
pub const FILE_BYTES: usize = 1024;
const SLOT_STRIDE: usize = 512;
const SLOT_BYTES: usize = 16;
const MAGIC: &[u8; 4] = b"SEQ2";

fn encode_slot(reserved: u64) -> [u8; SLOT_BYTES] {
    let mut b = [0u8; SLOT_BYTES];
    b[0..4].copy_from_slice(MAGIC);
    b[4..12].copy_from_slice(&reserved.to_le_bytes());
    let crc = crc32fast::hash(&b[0..12]);
    b[12..16].copy_from_slice(&crc.to_le_bytes());
    b
}

fn decode_slot(b: &[u8]) -> Option<u64> {
    let b = b.get(..SLOT_BYTES)?;
    if &b[0..4] != MAGIC || u32::from_le_bytes(b[12..16].try_into().ok()?) != crc32fast::hash(&b[0..12]) {
        return None;
    }
    Some(u64::from_le_bytes(b[4..12].try_into().ok()?))
}

/// Whether `path` is a sequence file in this format (else: absent or the text format).
fn slot_file(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.len() == FILE_BYTES as u64)
}

/// What a sequence file says: the reservation to start from and the slot that holds it.
fn parse(bytes: &[u8]) -> Option<(u64, usize)> {
    if bytes.len() == FILE_BYTES {
        return (0..2).filter_map(|i| decode_slot(&bytes[i * SLOT_STRIDE..]).map(|v| (v, i))).max();
    }
    // The earlier format: the reservation as text.
    let text = std::str::from_utf8(bytes).ok()?;
    text.trim().parse::<u64>().ok().map(|v| (v, 1))
}

fn now_ms() -> u64 {
    // Milliseconds since the epoch are above any count a device could reach.
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(1 << 40)
}

/// Sequence numbers that survive restarts without reuse.
#[derive(Debug)]
pub struct SeqStore {
    path: PathBuf,
    /// `None` while the file cannot be written (numbers then come from memory alone).
    file: Option<File>,
    /// The slot the last reservation went to; the next goes to the other.
    slot: usize,
    next: u64,
    reserved: u64,
    /// A reservation failed and was logged; the next failure is not.
    failing: bool,
}

impl SeqStore {
    /// Opens (or creates) the store; the first number handed out is above any handed out
    /// before. Never fails: see the module docs for what it does instead.
    pub fn open(path: &Path) -> SeqStore {
        let start = match std::fs::read(path) {
            Ok(bytes) => match parse(&bytes) {
                Some((reserved, slot)) => Some((reserved, slot)),
                None => {
                    tracing::warn!(
                        "{}: unreadable sequence file; numbering continues after the current time",
                        path.display()
                    );
                    None
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some((0, 1)),
            Err(e) => {
                tracing::warn!("{}: {e}; numbering continues after the current time", path.display());
                None
            }
        };
        let mut store =
            SeqStore { path: path.to_path_buf(), file: None, slot: 1, next: 0, reserved: 0, failing: false };
        let written = match start {
            // The file is in this format: reserve in the other slot, as at any block.
            Some((reserved, slot)) if slot_file(path) => {
                store.next = reserved;
                store.slot = slot;
                OpenOptions::new().write(true).open(path).and_then(|f| {
                    store.file = Some(f);
                    store.reserve()
                })
            }
            Some((reserved, _)) => {
                store.next = reserved;
                store.create(reserved)
            }
            None => {
                store.next = now_ms();
                store.create(store.next)
            }
        };
        if let Err(e) = written {
            store.file = None;
            store.degrade();
            tracing::warn!(
                "{}: cannot write the sequence file ({e}); numbering continues after the current time \
                 until it can be written (free space in the state directory)",
                path.display()
            );
        }
        store
    }

    /// Numbers handed out without a reservation on disk would repeat after a restart that
    /// reads the old one: the current time is above them.
    fn degrade(&mut self) {
        self.next = self.next.max(now_ms());
        self.reserved = self.next;
        self.failing = true;
    }

    /// Writes the whole file, in place, with both slots at `from + SEQ_BLOCK`.
    fn create(&mut self, from: u64) -> std::io::Result<()> {
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&self.path)?;
        let reserved = from + SEQ_BLOCK;
        let mut image = vec![0u8; FILE_BYTES];
        for i in 0..2 {
            image[i * SLOT_STRIDE..i * SLOT_STRIDE + SLOT_BYTES].copy_from_slice(&encode_slot(reserved));
        }
        file.write_all_at(&image, 0)?;
        file.set_len(FILE_BYTES as u64)?;
        file.sync_all()?;
        self.file = Some(file);
        self.slot = 0;
        self.reserved = reserved;
        Ok(())
    }

    fn reserve(&mut self) -> std::io::Result<()> {
        let reserved = self.next + SEQ_BLOCK;
        let Some(file) = &self.file else { return self.create(self.next) };
        let slot = 1 - self.slot;
        file.write_all_at(&encode_slot(reserved), (slot * SLOT_STRIDE) as u64)?;
        file.sync_data()?;
        self.slot = slot;
        self.reserved = reserved;
        Ok(())
    }

    /// The next sequence number.
    pub fn take(&mut self) -> u64 {
        if self.next >= self.reserved {
            match self.reserve() {
                Ok(()) if self.failing => {
                    self.failing = false;
                    tracing::info!("{}: sequence file written again", self.path.display());
                }
                Ok(()) => {}
                Err(e) => {
                    if !self.failing {
                        tracing::warn!(
                            "{}: cannot reserve sequence numbers ({e}); numbering goes on from memory",
                            self.path.display()
                        );
                    }
                    self.degrade();
                    // Retried at the next block.
                    self.reserved = self.next + SEQ_BLOCK;
                }
            }
        }
        let n = self.next;
        self.next += 1;
        n
    }

    /// Whether the last reservation reached the disk.
    pub fn persisted(&self) -> bool {
        !self.failing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_numbers_never_repeat_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("telemetry.seq");
        let mut seen = vec![];
        for _ in 0..3 {
            let mut s = SeqStore::open(&path);
            for _ in 0..100 {
                seen.push(s.take());
            }
            assert!(s.persisted());
        }
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "strictly increasing");
        assert_eq!(&seen[..100], &(0..100).collect::<Vec<_>>()[..], "consecutive within a run");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), FILE_BYTES as u64);
    }

    #[test]
    fn a_corrupt_sequence_file_skips_ahead_instead_of_failing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("telemetry.seq");
        std::fs::write(&path, "garbage").unwrap();
        let mut s = SeqStore::open(&path);
        assert!(s.take() > 1_000_000);
    }

    #[test]
    fn the_text_format_is_read_and_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("telemetry.seq");
        std::fs::write(&path, "128\n").unwrap();
        assert_eq!(SeqStore::open(&path).take(), 128);
        assert_eq!(SeqStore::open(&path).take(), 128 + SEQ_BLOCK);
    }

    #[test]
    fn a_torn_slot_falls_back_to_the_other() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("telemetry.seq");
        let mut s = SeqStore::open(&path);
        let handed: Vec<u64> = (0..SEQ_BLOCK + 1).map(|_| s.take()).collect();
        drop(s);
        // The newest reservation is torn: the slot it went to is damaged.
        let mut bytes = std::fs::read(&path).unwrap();
        let (_, newest) = parse(&bytes).unwrap();
        bytes[newest * SLOT_STRIDE + 5] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let first = SeqStore::open(&path).take();
        // The older slot's reservation is still above everything handed out before the
        // newer one was written.
        assert!(first >= SEQ_BLOCK && first > handed[SEQ_BLOCK as usize - 1], "{first}");
    }

    #[test]
    fn a_full_file_system_neither_stops_nor_rewinds_the_numbering() {
        let Some(fs) = edge_it::Tmpfs::mount(64 * 1024) else { return };
        let path = fs.path().join("telemetry.seq");
        let mut before = SeqStore::open(&path);
        let last = (0..10).map(|_| before.take()).last().unwrap();
        drop(before);
        fs.fill("filler");
        // The file exists: reservations overwrite it in place, and persist.
        let mut s = SeqStore::open(&path);
        let numbers: Vec<u64> = (0..3 * SEQ_BLOCK).map(|_| s.take()).collect();
        assert!(s.persisted(), "a reservation failed on the full file system");
        assert!(numbers[0] > last && numbers.windows(2).all(|w| w[0] < w[1]));
        drop(s);
        assert!(SeqStore::open(&path).take() > *numbers.last().unwrap());
        // No file yet and no room for one: numbering starts anyway, after the current time.
        let mut fresh = SeqStore::open(&fs.path().join("new.seq"));
        assert!(!fresh.persisted());
        assert!(fresh.take() > 1_600_000_000_000);
    }
}
