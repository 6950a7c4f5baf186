//! [`Outbox::open`]: rebuilds the queue from the segments and the cursor a previous run (or
//! a crash) left, repairing what the [module docs](super) say a crash can leave.

use std::collections::VecDeque;
use std::fs;
use std::io;
use std::path::Path;
use std::time::Duration;

use crate::fsutil;

use super::format::{decode_cursor, parse_segment_name, scan_segment, segment_name, CURSOR_FILE};
use super::{fsync_dir, io_err, Outbox, OutboxError, OutboxStats, Segment};

impl Outbox {
    /// As [`Outbox::open`], rolling segments once they hold `segment_bytes` instead of
    /// [`SEGMENT_BYTES`](super::SEGMENT_BYTES): tests use small segments to see rolls.
    pub fn open_with(dir: &Path, max_bytes: u64, ttl: Duration, segment_bytes: u64) -> Result<Outbox, OutboxError> {
        if max_bytes == 0 {
            return Err(OutboxError::ZeroLimit { dir: dir.to_path_buf() });
        }
        fsutil::create_dir_all(dir).map_err(io_err("create directory", dir))?;
        // A leftover tmp is a cursor write that never got renamed: the old cursor stands.
        let _ = fsutil::remove_file(&fsutil::temporary_for(&dir.join(CURSOR_FILE)));

        let mut ids = Vec::new();
        for entry in fs::read_dir(dir).map_err(io_err("list directory", dir))? {
            let entry = entry.map_err(io_err("list directory", dir))?;
            if let Some(id) = entry.file_name().to_str().and_then(parse_segment_name) {
                ids.push(id);
            }
        }
        ids.sort_unstable();
        let max_seen = ids.last().copied().unwrap_or(0);

        let mut dropped_corrupt = 0;
        let cursor = Outbox::read_cursor(dir, &ids);
        let mut dirty = false;
        let (cursor_seg, cursor_off) = match cursor {
            Some((seg, off)) => {
                // Segments before the cursor were delivered; a crash stopped their deletion.
                for &id in ids.iter().filter(|&&id| id < seg) {
                    let path = dir.join(segment_name(id));
                    if let Err(e) = fsutil::remove_file(&path) {
                        tracing::warn!("outbox: delivered segment {} could not be removed: {e}", path.display());
                    }
                }
                ids.retain(|&id| id >= seg);
                (seg, off)
            }
            None => (0, 0),
        };

        let mut segments = VecDeque::new();
        let mut head = 0;
        let last = ids.last().copied();
        for &id in &ids {
            let path = dir.join(segment_name(id));
            let is_last = Some(id) == last;
            let skip = if id == cursor_seg { cursor_off } else { 0 };
            let scan = match scan_segment(&path, is_last, skip) {
                Ok(scan) => scan,
                Err(e) => {
                    let aside = path.with_extension("log.corrupt");
                    let moved = fsutil::rename(&path, &aside).is_ok();
                    tracing::warn!(
                        "outbox: segment {} is unreadable ({e}); its records are skipped{}",
                        path.display(),
                        if moved { format!(" and the file moved to {}", aside.display()) } else { String::new() }
                    );
                    dropped_corrupt += 1;
                    dirty = true;
                    continue;
                }
            };
            if id == cursor_seg && scan.head != cursor_off && scan.head < scan.end {
                tracing::warn!(
                    "outbox: cursor offset {cursor_off} in {} is not on a record boundary; \
                     resuming at offset {} (a message may be sent twice)",
                    path.display(),
                    scan.head
                );
            }
            if let Some((at, why)) = &scan.bad {
                dropped_corrupt += 1;
                if is_last {
                    // The only place a crash tears a record: cut it so appends continue
                    // on clean framing.
                    tracing::warn!(
                        "outbox: segment {} has a torn or corrupt tail at offset {at} ({why}); \
                         truncating it, earlier records are kept",
                        path.display()
                    );
                    fsutil::File::open_rw(&path)
                        .and_then(|f| {
                            f.set_len(scan.end)?;
                            f.sync_all()
                        })
                        .map_err(io_err("truncate torn tail of segment", &path))?;
                } else {
                    tracing::warn!(
                        "outbox: segment {} is corrupt at offset {at} ({why}); \
                         the records after it in this segment are skipped",
                        path.display()
                    );
                }
            }
            if segments.is_empty() {
                head = scan.head;
            } else {
                debug_assert_eq!(scan.head, 0);
            }
            segments.push_back(Segment { id, end: scan.end, records: scan.records, bytes: scan.bytes });
        }

        // Append to the newest segment, unless it was unreadable (or absent): then start a
        // fresh one numbered after everything seen, so ids stay in order.
        let newest = max_seen.max(cursor_seg);
        if segments.back().is_none_or(|s| s.id < newest) {
            let id = newest + 1;
            Outbox::create_segment(dir, id)?;
            if segments.is_empty() {
                head = 0;
            }
            segments.push_back(Segment { id, end: 0, records: 0, bytes: 0 });
        }
        let active = segments.back().expect("at least one segment");
        let writer = Outbox::open_writer(dir, active.id)?;

        let mut outbox = Outbox {
            dir: dir.to_path_buf(),
            max_bytes,
            ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
            segment_bytes,
            stats: OutboxStats::default(),
            segments,
            head,
            writer,
            writer_broken: false,
            reader: None,
            peeked: None,
            retired: Vec::new(),
            dropped_corrupt,
        };
        outbox.recount();
        outbox.settle_head();
        // The limit may have shrunk since the last run.
        while outbox.stats.queued_bytes > max_bytes {
            if outbox.drop_head_for_room()? {
                dirty = true;
            }
        }
        let (first, _) = outbox.head_position();
        if dirty || cursor.is_none_or(|c| c != (first, outbox.head)) {
            // The queue in memory is right either way; a stale cursor only brings records
            // back after a restart (duplicates, never loss), and a full disk must not keep
            // the agent from starting.
            if let Err(e) = outbox.commit() {
                tracing::warn!("{e}; the outbox starts anyway (messages may be sent twice after a restart)");
            }
        }
        Ok(outbox)
    }

    pub(super) fn create_segment(dir: &Path, id: u64) -> Result<(), OutboxError> {
        let path = dir.join(segment_name(id));
        fsutil::File::create(&path).and_then(|f| f.sync_all()).map_err(io_err("create segment", &path))?;
        // Without this, records fsynced into the new file can vanish with its directory
        // entry on power loss.
        fsync_dir(dir)
    }

    pub(super) fn open_writer(dir: &Path, id: u64) -> Result<fsutil::File, OutboxError> {
        let path = dir.join(segment_name(id));
        fsutil::File::open_append(&path).map_err(io_err("open segment for append", &path))
    }

    /// Reads the cursor; `None` if there is none or it is unusable (with a warning).
    fn read_cursor(dir: &Path, ids: &[u64]) -> Option<(u64, u64)> {
        let path = dir.join(CURSOR_FILE);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(
                    "outbox: cursor file {} is unreadable ({e}); replaying from the oldest intact record \
                     (messages may be sent twice)",
                    path.display()
                );
                return None;
            }
        };
        match decode_cursor(&bytes) {
            Ok((seg, off)) if ids.last().is_none_or(|&newest| seg <= newest) => Some((seg, off)),
            Ok((seg, _)) => {
                tracing::warn!(
                    "outbox: cursor file {} points at segment {seg}, newer than any on disk; \
                     replaying from the oldest intact record (messages may be sent twice)",
                    path.display()
                );
                None
            }
            Err(why) => {
                tracing::warn!(
                    "outbox: cursor file {} is corrupt ({why}); replaying from the oldest intact record \
                     (messages may be sent twice)",
                    path.display()
                );
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::format::{encode_cursor, encode_record, CURSOR_BYTES, HEADER_BYTES};
    use super::super::test_support::*;
    use super::*;
    use std::fs::OpenOptions;
    use std::io::Write;

    #[test]
    fn survives_reopen_without_acks() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let mut ob = Outbox::open_with(tmp.path(), 1 << 20, TTL, 100).unwrap();
            for i in 0..10 {
                ob.push(5, &msg(i)).unwrap();
            }
            // Dropped without any shutdown step, as with kill -9.
        }
        let mut ob = Outbox::open_with(tmp.path(), 1 << 20, TTL, 100).unwrap();
        assert_eq!(ob.stats().queued, 10);
        assert_eq!(ob.stats().queued_bytes, (0..10).map(|i| msg(i).len() as u64).sum::<u64>());
        assert_eq!(drain(&mut ob, 10), (0..10).map(msg).collect::<Vec<_>>());
    }

    #[test]
    fn survives_reopen_with_acks_and_keeps_appending() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let mut ob = Outbox::open_with(tmp.path(), 1 << 20, TTL, 100).unwrap();
            for i in 0..10 {
                ob.push(5, &msg(i)).unwrap();
            }
            for i in 0..4 {
                assert_eq!(ob.peek(10).unwrap(), Some(msg(i)));
                ob.ack().unwrap();
            }
            // Peeked but not acked: must come back after the restart.
            assert_eq!(ob.peek(10).unwrap(), Some(msg(4)));
        }
        {
            let mut ob = Outbox::open_with(tmp.path(), 1 << 20, TTL, 100).unwrap();
            assert_eq!(ob.stats().queued, 6);
            ob.push(20, &msg(10)).unwrap();
        }
        let mut ob = Outbox::open_with(tmp.path(), 1 << 20, TTL, 100).unwrap();
        assert_eq!(drain(&mut ob, 30), (4..11).map(msg).collect::<Vec<_>>());
    }

    #[test]
    fn torn_tail_loses_only_the_torn_record() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let mut ob = Outbox::open(tmp.path(), 1 << 20, TTL).unwrap();
            for i in 0..3 {
                ob.push(5, &msg(i)).unwrap();
            }
        }
        // A crash in the middle of the third write.
        let seg = last_segment(tmp.path());
        let len = fs::metadata(&seg).unwrap().len();
        OpenOptions::new().write(true).open(&seg).unwrap().set_len(len - 5).unwrap();

        let mut ob = Outbox::open(tmp.path(), 1 << 20, TTL).unwrap();
        assert_eq!(ob.stats().queued, 2);
        assert_eq!(ob.dropped_corrupt(), 1);
        // Appends continue on clean framing after the cut.
        ob.push(6, &msg(9)).unwrap();
        drop(ob);
        let mut ob = Outbox::open(tmp.path(), 1 << 20, TTL).unwrap();
        assert_eq!(ob.dropped_corrupt(), 0);
        assert_eq!(drain(&mut ob, 10), vec![msg(0), msg(1), msg(9)]);
    }

    #[test]
    fn garbage_or_zeros_after_the_last_record_are_cut_off() {
        // A header-shaped record with a bad checksum, short garbage, and the zero-filled
        // blocks some filesystems leave after a power cut.
        let mut fake = encode_record(7, b"payload");
        fake[20] ^= 0xff;
        for tail in [fake, vec![0xAB; 7], vec![0; 4096], vec![0xff; 64]] {
            let tmp = tempfile::tempdir().unwrap();
            {
                let mut ob = Outbox::open(tmp.path(), 1 << 20, TTL).unwrap();
                ob.push(1, &msg(0)).unwrap();
                ob.push(2, &msg(1)).unwrap();
            }
            let seg = last_segment(tmp.path());
            OpenOptions::new().append(true).open(&seg).unwrap().write_all(&tail).unwrap();
            let mut ob = Outbox::open(tmp.path(), 1 << 20, TTL).unwrap();
            assert_eq!(ob.stats().queued, 2);
            ob.push(3, &msg(2)).unwrap();
            assert_eq!(drain(&mut ob, 10), vec![msg(0), msg(1), msg(2)]);
        }
    }

    #[test]
    fn segment_of_pure_garbage_does_not_panic() {
        let tmp = tempfile::tempdir().unwrap();
        let mut rng = fastrand::Rng::with_seed(7);
        let junk: Vec<u8> = (0..5000).map(|_| rng.u8(..)).collect();
        fs::write(tmp.path().join(segment_name(1)), &junk).unwrap();
        fs::write(tmp.path().join(segment_name(2)), &junk[..100]).unwrap();
        fs::write(tmp.path().join(CURSOR_FILE), &junk[..24]).unwrap();
        let mut ob = Outbox::open(tmp.path(), 1 << 20, TTL).unwrap();
        assert!(ob.is_empty());
        ob.push(1, b"after").unwrap();
        assert_eq!(drain(&mut ob, 2), vec![b"after".to_vec()]);
    }

    #[test]
    fn corrupt_cursor_replays_from_the_oldest_record() {
        for bad in [&b""[..], &b"garbage"[..], &[0u8; CURSOR_BYTES][..]] {
            let tmp = tempfile::tempdir().unwrap();
            {
                let mut ob = Outbox::open(tmp.path(), 1 << 20, TTL).unwrap();
                for i in 0..3 {
                    ob.push(1, &msg(i)).unwrap();
                }
                ob.peek(2).unwrap();
                ob.ack().unwrap();
            }
            fs::write(tmp.path().join(CURSOR_FILE), bad).unwrap();
            let mut ob = Outbox::open(tmp.path(), 1 << 20, TTL).unwrap();
            // Duplicates rather than loss: the acked record is sent again.
            assert_eq!(drain(&mut ob, 3), vec![msg(0), msg(1), msg(2)]);
        }
    }

    #[test]
    fn cursor_pointing_past_every_segment_falls_back() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let mut ob = Outbox::open(tmp.path(), 1 << 20, TTL).unwrap();
            ob.push(1, &msg(0)).unwrap();
        }
        fs::write(tmp.path().join(CURSOR_FILE), encode_cursor(99, 0)).unwrap();
        let mut ob = Outbox::open(tmp.path(), 1 << 20, TTL).unwrap();
        assert_eq!(drain(&mut ob, 3), vec![msg(0)]);
    }

    #[test]
    fn smaller_limit_on_reopen_drops_oldest() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let mut ob = Outbox::open(tmp.path(), 1000, TTL).unwrap();
            for i in 0..10u8 {
                ob.push(1, &[i; 10]).unwrap();
            }
        }
        let mut ob = Outbox::open(tmp.path(), 30, TTL).unwrap();
        assert_eq!(ob.stats().dropped_full, 7);
        assert_eq!(ob.stats().queued_bytes, 30);
        assert_eq!(ob.peek(2).unwrap(), Some(vec![7; 10]));
    }

    #[test]
    fn checksum_failure_mid_queue_skips_that_segment_only() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let mut ob = Outbox::open_with(tmp.path(), 1 << 20, TTL, 100).unwrap();
            for i in 0..12 {
                ob.push(1, &msg(i)).unwrap();
            }
        }
        // Bit rot in the first record of the first segment (not checked at open).
        let ids = segment_files(tmp.path());
        let first = tmp.path().join(segment_name(ids[0]));
        let mut bytes = fs::read(&first).unwrap();
        bytes[HEADER_BYTES as usize + 3] ^= 0x01;
        fs::write(&first, &bytes).unwrap();

        let mut ob = Outbox::open_with(tmp.path(), 1 << 20, TTL, 100).unwrap();
        let per_segment = ob.segments[0].records;
        let got = drain(&mut ob, 2);
        assert_eq!(got, (per_segment as u32..12).map(msg).collect::<Vec<_>>());
        assert_eq!(ob.dropped_corrupt(), per_segment);
    }

    #[test]
    fn unreadable_segment_is_moved_aside() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let mut ob = Outbox::open(tmp.path(), 1 << 20, TTL).unwrap();
            ob.push(1, &msg(0)).unwrap();
        }
        // A directory where a segment file should be: opening it for reading fails.
        fs::create_dir(tmp.path().join(segment_name(2))).unwrap();
        let mut ob = Outbox::open(tmp.path(), 1 << 20, TTL).unwrap();
        assert!(tmp.path().join("seg-000002.log.corrupt").exists());
        ob.push(2, &msg(1)).unwrap();
        assert_eq!(drain(&mut ob, 3), vec![msg(0), msg(1)]);
        assert_eq!(segment_files(tmp.path()), vec![3]);
    }
}
