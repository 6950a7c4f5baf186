//! Store-and-forward outbox for telemetry: a bounded, on-disk FIFO of byte payloads that
//! the link fills while the broker is unreachable and drains, in order, once it is back.
//!
//! # On disk
//!
//! One directory holds append-only segment files `seg-000001.log`, `seg-000002.log`, ...
//! and a `cursor` file. Each record in a segment is framed as
//!
//! ```text
//! [len u32 LE][crc32 u32 LE][enqueued_at_ms u64 LE][payload: len bytes]
//! ```
//!
//! where the CRC (crc32fast, IEEE) covers the `len` bytes, the timestamp bytes and the
//! payload, so a zero-filled or half-written tail never passes as a record. A segment is
//! rolled once it holds [`SEGMENT_BYTES`] (about 1 MiB). The `cursor` file (24 bytes:
//! magic `OBX1`, segment number u64, offset u64, crc32 of the first 20 bytes) points at the
//! next undelivered record. It is replaced atomically: write `cursor.tmp`, fsync it, rename
//! over `cursor`, fsync the directory. Segments wholly before the cursor are deleted.
//!
//! # Durability (fsync policy)
//!
//! [`Outbox::push`] writes the whole record with one `write` and `fdatasync`s the segment
//! before it returns; a new segment's directory entry is fsynced when the segment is
//! created. Telemetry is at most a few messages a second, so one fsync per message is
//! cheap, and it buys a simple promise: **a payload for which `push` returned `Ok` survives
//! `kill -9` and power loss**. What a power cut can lose is only the record being pushed
//! at that moment (its `push` never returned `Ok`); it shows up as a torn tail, which the
//! next [`Outbox::open`] detects by length and CRC and truncates away, keeping every
//! earlier record.
//!
//! Every write, sync, rename and removal goes through [`crate::fsutil`], so the power-cut
//! tests replay them (`agent/tests/power_cut_outbox.rs`).
//!
//! Delivery is at-least-once: the cursor is persisted on every [`Outbox::ack`], so after a
//! crash between the broker's acknowledgement and the cursor rename, one message is sent
//! twice. A corrupt cursor file replays from the oldest intact record (duplicates, never
//! loss), with a warning.
//!
//! # Bounds
//!
//! `max_bytes` bounds the queued *payload* bytes; pushing past it drops the oldest records
//! ([`OutboxStats::dropped_full`]). On-disk usage is that plus 16 bytes of framing per
//! record plus the delivered part of the oldest segment (under one segment). Records older
//! than the TTL are dropped when [`Outbox::peek`] reaches them
//! ([`OutboxStats::dropped_expired`]). Drop counters count since `open`.
//!
//! RAM is O(number of segments): no payload is kept in memory beyond the one `peek`
//! returns. [`Outbox::open`] reads the framing headers of the queued records (one
//! sequential pass, at most `max_bytes` plus a segment) and verifies CRCs only in the last
//! segment, the only one a crash can tear (earlier segments were fsynced before the roll);
//! other records have their CRC checked when `peek` reads them.
//!
//! # Damage
//!
//! Nothing on disk can brick the agent: a corrupt cursor, an unreadable segment or a record
//! that fails its CRC is logged with `tracing::warn!` (naming the file and what the outbox
//! does instead), counted in [`Outbox::dropped_corrupt`], and skipped. Framing cannot be
//! recovered past a bad record, so a bad record in the middle of a segment drops the rest
//! of that segment; an unreadable segment is renamed to `*.corrupt` for inspection.
//!
//! # Layout
//!
//! - this file: the queue API ([`Outbox::push`], [`Outbox::peek`], [`Outbox::ack`],
//!   [`Outbox::clear`]) and the head's bookkeeping;
//! - `format`: the bytes on disk (record framing, the cursor, segment names) and the scan
//!   of one segment's framing;
//! - `recovery`: [`Outbox::open`], which rebuilds the queue from what a crash left.

mod format;
mod recovery;

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::fsutil;
pub use format::SEGMENT_BYTES;
use format::{encode_cursor, encode_record, record_crc, segment_name, Header, CURSOR_FILE, HEADER_BYTES, MAX_PAYLOAD};

/// What went wrong in the outbox.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// A file operation failed.
    #[error("outbox: {action} {}: {source}", path.display())]
    Io {
        /// What the outbox was doing, e.g. "fsync segment".
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The payload can never fit, even in an empty outbox.
    #[error(
        "outbox {}: payload of {len} bytes is larger than the outbox limit of {limit} bytes; \
         it was not queued (raise the outbox size or send smaller messages)",
        dir.display()
    )]
    TooLarge {
        /// The outbox directory.
        dir: PathBuf,
        /// The payload's size.
        len: u64,
        /// The limit it exceeds (`max_bytes`, or the frame's u32 length).
        limit: u64,
    },
    /// `max_bytes` is zero: nothing could ever be queued.
    #[error("outbox {}: max_bytes is 0; it must be at least the size of one message", dir.display())]
    ZeroLimit {
        /// The outbox directory.
        dir: PathBuf,
    },
}

impl OutboxError {
    /// The file system is out of space (or quota): the error goes away once space is
    /// freed, and meanwhile nothing new can be stored.
    pub fn is_disk_full(&self) -> bool {
        match self {
            OutboxError::Io { source, .. } => {
                matches!(source.kind(), io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded)
            }
            _ => false,
        }
    }
}

/// Counters for metrics. `queued` and `queued_bytes` include records that have expired but
/// that `peek` has not reached yet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxStats {
    /// Records waiting for delivery.
    pub queued: u64,
    /// Their payload bytes (never above `max_bytes`).
    pub queued_bytes: u64,
    /// Records dropped, oldest first, to make room for newer ones.
    pub dropped_full: u64,
    /// Records dropped because they outlived the TTL.
    pub dropped_expired: u64,
}

/// One segment file, as far as the queue is concerned.
#[derive(Debug)]
struct Segment {
    id: u64,
    /// End of the last good record; nothing past it is read. For the active (last) segment
    /// this is also the file's length.
    end: u64,
    /// Undelivered records in this segment (for the head segment: from the head on).
    records: u64,
    /// Their payload bytes.
    bytes: u64,
}

/// Where the record `peek` returned sits, and its sizes, so `ack` needs no I/O.
#[derive(Debug, Clone, Copy)]
struct Peeked {
    seg: u64,
    offset: u64,
    size: u64,
    payload: u64,
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> OutboxError + 'a {
    move |source| OutboxError::Io { action, path: path.to_path_buf(), source }
}

fn fsync_dir(dir: &Path) -> Result<(), OutboxError> {
    fsutil::sync_dir(dir).map_err(io_err("fsync directory", dir))
}

/// A bounded, crash-safe FIFO of payloads in a directory. See the module docs.
#[derive(Debug)]
pub struct Outbox {
    dir: PathBuf,
    max_bytes: u64,
    ttl_ms: u64,
    segment_bytes: u64,
    /// Oldest first; never empty after `open`. The last one is appended to.
    segments: VecDeque<Segment>,
    /// Offset of the next undelivered record in `segments[0]`.
    head: u64,
    /// Append handle on the last segment.
    writer: fsutil::File,
    /// A failed write may have left bytes past `end`: the next push starts a new segment.
    writer_broken: bool,
    /// Read handle on some segment, kept while the head stays in it.
    reader: Option<(u64, File)>,
    /// The record the last `peek` returned, until it is acked.
    peeked: Option<Peeked>,
    /// Segments the head has left, to delete once the cursor is past them.
    retired: Vec<u64>,
    stats: OutboxStats,
    dropped_corrupt: u64,
}

impl Outbox {
    /// Opens (creating if needed) the outbox in `dir`, holding at most `max_bytes` of
    /// payload, each for at most `ttl`. Repairs a torn tail left by a crash.
    pub fn open(dir: &Path, max_bytes: u64, ttl: Duration) -> Result<Outbox, OutboxError> {
        Outbox::open_with(dir, max_bytes, ttl, SEGMENT_BYTES)
    }

    /// Appends `payload`, stamped `now_ms`. Durable (fsynced) when this returns `Ok`.
    /// Drops the oldest records if needed to stay within `max_bytes`.
    pub fn push(&mut self, now_ms: u64, payload: &[u8]) -> Result<(), OutboxError> {
        let len = payload.len() as u64;
        let limit = self.max_bytes.min(MAX_PAYLOAD);
        if len > limit {
            return Err(OutboxError::TooLarge { dir: self.dir.clone(), len, limit });
        }
        let mut dropped = false;
        while self.stats.queued > 0 && self.stats.queued_bytes + len > self.max_bytes {
            dropped |= self.drop_head_for_room()?;
        }

        let active = self.segments.back().expect("at least one segment");
        if self.writer_broken || active.end >= self.segment_bytes {
            self.roll()?;
        }
        let record = encode_record(now_ms, payload);
        let active = self.segments.back_mut().expect("at least one segment");
        let path = self.dir.join(segment_name(active.id));
        let written = self.writer.write_all(&record).and_then(|()| self.writer.sync_data());
        if let Err(source) = written {
            // Whatever part of the record reached the file must not become framing for the
            // next record: cut it off, or if that fails too, continue in a new segment. (Not
            // a new segment every time: on a full disk each failed push would leave one.)
            self.writer_broken = self.writer.set_len(active.end).is_err();
            return Err(OutboxError::Io { action: "append to segment", path, source });
        }
        active.end += record.len() as u64;
        active.records += 1;
        active.bytes += len;
        self.stats.queued += 1;
        self.stats.queued_bytes += len;
        if dropped {
            self.commit()?;
        }
        Ok(())
    }

    /// The oldest unexpired payload, left in place. Expired records met on the way are
    /// dropped and counted; so are records that fail their checksum.
    pub fn peek(&mut self, now_ms: u64) -> Result<Option<Vec<u8>>, OutboxError> {
        let mut moved = false;
        self.peeked = None;
        let found = loop {
            let Some((header, payload)) = self.read_head(true, &mut moved)? else {
                break None;
            };
            // A clock that went backwards makes the age 0, not huge: keep the record.
            if now_ms.saturating_sub(header.enqueued_at_ms) > self.ttl_ms {
                self.advance(header.size(), u64::from(header.len));
                self.stats.dropped_expired += 1;
                moved = true;
                continue;
            }
            let (seg, offset) = self.head_position();
            self.peeked = Some(Peeked { seg, offset, size: header.size(), payload: u64::from(header.len) });
            break Some(payload);
        };
        if moved {
            self.commit()?;
        }
        Ok(found)
    }

    /// Removes the record the last [`peek`](Outbox::peek) returned and persists the cursor.
    /// Does nothing if there is no such record: never peeked, already acked, or dropped by a
    /// `push` (full outbox) in between. That way an ack can never remove a message that was
    /// not sent.
    pub fn ack(&mut self) -> Result<(), OutboxError> {
        let Some(peeked) = self.peeked.take() else {
            tracing::debug!("outbox: ack without an outstanding peek; nothing removed");
            return Ok(());
        };
        // The head only moves forward and segment numbers only grow, so the same position
        // is the same record.
        if self.stats.queued == 0 || self.head_position() != (peeked.seg, peeked.offset) {
            tracing::debug!("outbox: the peeked record was dropped before its ack");
            return Ok(());
        }
        self.advance(peeked.size, peeked.payload);
        self.commit()
    }

    /// Deletes every queued record, overwriting the files first (the `erase` command), and
    /// starts empty. Drop counters are kept.
    pub fn clear(&mut self) -> Result<(), OutboxError> {
        let dir = self.dir.clone();
        let entries = fs::read_dir(&dir).map_err(io_err("list", &dir))?;
        for entry in entries.flatten() {
            crate::store::wipe_file(&entry.path()).map_err(|e| OutboxError::Io {
                action: "wipe",
                path: entry.path(),
                source: io::Error::other(e.to_string()),
            })?;
        }
        let stats = self.stats;
        *self = Outbox::open_with(&dir, self.max_bytes, Duration::from_millis(self.ttl_ms), self.segment_bytes)?;
        self.stats.dropped_full = stats.dropped_full;
        self.stats.dropped_expired = stats.dropped_expired;
        Ok(())
    }

    /// Current counters.
    pub fn stats(&self) -> OutboxStats {
        self.stats
    }

    /// No record is queued (expired ones not yet reached by `peek` count as queued).
    pub fn is_empty(&self) -> bool {
        self.stats.queued == 0
    }

    /// Records and torn tails discarded since `open` because they failed their length or
    /// checksum check, or their segment could not be read.
    pub fn dropped_corrupt(&self) -> u64 {
        self.dropped_corrupt
    }

    fn head_position(&self) -> (u64, u64) {
        (self.segments[0].id, self.head)
    }

    fn recount(&mut self) {
        self.stats.queued = self.segments.iter().map(|s| s.records).sum();
        self.stats.queued_bytes = self.segments.iter().map(|s| s.bytes).sum();
    }

    /// Moves past consumed segments so `segments[0]` holds the head record, if any.
    fn settle_head(&mut self) {
        while self.segments.len() > 1 && (self.head >= self.segments[0].end || self.segments[0].records == 0) {
            let seg = self.segments.pop_front().expect("len > 1");
            self.retired.push(seg.id);
            self.head = 0;
        }
    }

    /// Steps the head past one record of `size` bytes carrying `payload` bytes.
    fn advance(&mut self, size: u64, payload: u64) {
        // Saturating: the counts come from the scan at open, and a file changed behind our
        // back must cost records, not a panic.
        let seg = &mut self.segments[0];
        self.head += size;
        seg.records = seg.records.saturating_sub(1);
        seg.bytes = seg.bytes.saturating_sub(payload);
        self.stats.queued = self.stats.queued.saturating_sub(1);
        self.stats.queued_bytes = self.stats.queued_bytes.saturating_sub(payload);
        self.settle_head();
    }

    /// Drops the oldest record to make room. Returns whether the head moved.
    fn drop_head_for_room(&mut self) -> Result<bool, OutboxError> {
        let mut moved = false;
        match self.read_head(false, &mut moved)? {
            Some((header, _)) => {
                self.advance(header.size(), u64::from(header.len));
                self.stats.dropped_full += 1;
                Ok(true)
            }
            None => Ok(moved),
        }
    }

    /// Reads the head record's header (and payload, checked, if `with_payload`). Records
    /// that cannot be read end their segment: it is skipped with a warning, counted, and
    /// `moved` is set. `None` when the queue is empty.
    fn read_head(&mut self, with_payload: bool, moved: &mut bool) -> Result<Option<(Header, Vec<u8>)>, OutboxError> {
        loop {
            self.settle_head();
            // After settling, an empty head segment means an empty queue.
            if self.stats.queued == 0 || self.segments[0].records == 0 {
                return Ok(None);
            }
            let (id, off) = self.head_position();
            let end = self.segments[0].end;
            let path = self.dir.join(segment_name(id));
            match self.read_record_at(id, off, end, with_payload) {
                Ok(rec) => return Ok(Some(rec)),
                Err(why) => {
                    tracing::warn!(
                        "outbox: segment {} is unreadable at offset {off} ({why}); \
                         skipping its remaining {} records",
                        path.display(),
                        self.segments[0].records
                    );
                    self.skip_head_segment()?;
                    *moved = true;
                }
            }
        }
    }

    fn read_record_at(&mut self, id: u64, off: u64, end: u64, with_payload: bool) -> Result<(Header, Vec<u8>), String> {
        if self.reader.as_ref().is_none_or(|(rid, _)| *rid != id) {
            let file = File::open(self.dir.join(segment_name(id))).map_err(|e| e.to_string())?;
            self.reader = Some((id, file));
        }
        let (_, file) = self.reader.as_mut().expect("just set");
        let mut hb = [0u8; HEADER_BYTES as usize];
        file.seek(SeekFrom::Start(off)).and_then(|_| file.read_exact(&mut hb)).map_err(|e| e.to_string())?;
        let header = Header::parse(&hb);
        if off + header.size() > end {
            return Err(format!("record length {} runs past the segment's end", header.len));
        }
        let mut payload = Vec::new();
        if with_payload {
            payload.resize(header.len as usize, 0);
            file.read_exact(&mut payload).map_err(|e| e.to_string())?;
            if record_crc(header.len, header.enqueued_at_ms, &payload) != header.crc {
                return Err("checksum mismatch".into());
            }
        }
        Ok((header, payload))
    }

    /// Gives up on the rest of the head segment.
    fn skip_head_segment(&mut self) -> Result<(), OutboxError> {
        if self.segments.len() == 1 {
            // Appends must not land behind damage we skip: move them to a new segment.
            self.roll()?;
        }
        let seg = &mut self.segments[0];
        self.dropped_corrupt += seg.records;
        self.stats.queued = self.stats.queued.saturating_sub(seg.records);
        self.stats.queued_bytes = self.stats.queued_bytes.saturating_sub(seg.bytes);
        seg.records = 0;
        seg.bytes = 0;
        self.head = seg.end;
        self.settle_head();
        Ok(())
    }

    /// Starts a new segment and appends there from now on.
    fn roll(&mut self) -> Result<(), OutboxError> {
        let id = self.segments.back().expect("at least one segment").id + 1;
        Outbox::create_segment(&self.dir, id)?;
        self.writer = Outbox::open_writer(&self.dir, id)?;
        self.writer_broken = false;
        self.segments.push_back(Segment { id, end: 0, records: 0, bytes: 0 });
        self.settle_head();
        Ok(())
    }
    /// Persists the head as the cursor (atomically), then deletes delivered segments.
    fn commit(&mut self) -> Result<(), OutboxError> {
        self.settle_head();
        let (seg, off) = self.head_position();
        let dst = self.dir.join(CURSOR_FILE);
        fsutil::write_atomic(&dst, &encode_cursor(seg, off)).map_err(io_err("replace cursor", &dst))?;
        // Only now that the cursor is past them: a crash before this point leaves them for
        // `open` to delete.
        for id in self.retired.drain(..) {
            let path = self.dir.join(segment_name(id));
            if let Err(e) = fsutil::remove_file(&path) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!("outbox: delivered segment {} could not be removed: {e}", path.display());
                }
            }
        }
        if self.reader.as_ref().is_some_and(|(id, _)| *id < seg) {
            self.reader = None;
        }
        Ok(())
    }
}

/// What the tests of both halves share.
#[cfg(test)]
mod test_support {
    use super::format::parse_segment_name;
    use super::*;

    pub(super) const TTL: Duration = Duration::from_secs(3600);

    pub(super) fn msg(i: u32) -> Vec<u8> {
        format!("telemetry message number {i:04}").into_bytes()
    }

    pub(super) fn segment_files(dir: &Path) -> Vec<u64> {
        let mut ids: Vec<u64> = fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.unwrap().file_name().to_str().and_then(parse_segment_name))
            .collect();
        ids.sort_unstable();
        ids
    }

    pub(super) fn last_segment(dir: &Path) -> PathBuf {
        dir.join(segment_name(*segment_files(dir).last().unwrap()))
    }

    /// Peeks and acks everything, returning the payloads in delivery order.
    pub(super) fn drain(ob: &mut Outbox, now_ms: u64) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(p) = ob.peek(now_ms).unwrap() {
            out.push(p);
            ob.ack().unwrap();
        }
        out
    }
}

#[cfg(test)]
mod tests;
