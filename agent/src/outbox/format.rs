//! The bytes on disk: record framing, the cursor file, segment file names, and the scan of
//! one segment's framing. See the [module docs](super) for the format itself.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;

/// A segment is rolled once it holds this many bytes.
pub const SEGMENT_BYTES: u64 = 1 << 20;

/// `[len u32][crc u32][enqueued_at_ms u64]`.
pub(super) const HEADER_BYTES: u64 = 16;
/// The largest payload a frame can describe.
pub(super) const MAX_PAYLOAD: u64 = u32::MAX as u64;
pub(super) const CURSOR_FILE: &str = "cursor";
const CURSOR_MAGIC: &[u8; 4] = b"OBX1";
pub(super) const CURSOR_BYTES: usize = 24;

/// A record's framing header.
#[derive(Debug, Clone, Copy)]
pub(super) struct Header {
    pub(super) len: u32,
    pub(super) crc: u32,
    pub(super) enqueued_at_ms: u64,
}

impl Header {
    pub(super) fn parse(b: &[u8; HEADER_BYTES as usize]) -> Header {
        Header {
            len: u32::from_le_bytes(b[0..4].try_into().expect("4 bytes")),
            crc: u32::from_le_bytes(b[4..8].try_into().expect("4 bytes")),
            enqueued_at_ms: u64::from_le_bytes(b[8..16].try_into().expect("8 bytes")),
        }
    }

    pub(super) fn size(&self) -> u64 {
        HEADER_BYTES + u64::from(self.len)
    }
}

pub(super) fn record_crc(len: u32, enqueued_at_ms: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&len.to_le_bytes());
    h.update(&enqueued_at_ms.to_le_bytes());
    h.update(payload);
    h.finalize()
}

pub(super) fn encode_record(enqueued_at_ms: u64, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("checked against MAX_PAYLOAD");
    let mut buf = Vec::with_capacity(HEADER_BYTES as usize + payload.len());
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&record_crc(len, enqueued_at_ms, payload).to_le_bytes());
    buf.extend_from_slice(&enqueued_at_ms.to_le_bytes());
    buf.extend_from_slice(payload);
    buf
}

pub(super) fn encode_cursor(seg: u64, offset: u64) -> [u8; CURSOR_BYTES] {
    let mut b = [0u8; CURSOR_BYTES];
    b[0..4].copy_from_slice(CURSOR_MAGIC);
    b[4..12].copy_from_slice(&seg.to_le_bytes());
    b[12..20].copy_from_slice(&offset.to_le_bytes());
    let crc = crc32fast::hash(&b[0..20]);
    b[20..24].copy_from_slice(&crc.to_le_bytes());
    b
}

/// `Ok((segment, offset))`, or why the bytes are not a cursor.
pub(super) fn decode_cursor(b: &[u8]) -> Result<(u64, u64), String> {
    if b.len() != CURSOR_BYTES {
        return Err(format!("{} bytes, expected {CURSOR_BYTES}", b.len()));
    }
    if &b[0..4] != CURSOR_MAGIC {
        return Err("bad magic".into());
    }
    let crc = u32::from_le_bytes(b[20..24].try_into().expect("4 bytes"));
    if crc != crc32fast::hash(&b[0..20]) {
        return Err("checksum mismatch".into());
    }
    let seg = u64::from_le_bytes(b[4..12].try_into().expect("8 bytes"));
    let offset = u64::from_le_bytes(b[12..20].try_into().expect("8 bytes"));
    Ok((seg, offset))
}

pub(super) fn segment_name(id: u64) -> String {
    format!("seg-{id:06}.log")
}

pub(super) fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("seg-")?.strip_suffix(".log")?;
    if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// What a scan of one segment found.
#[derive(Debug, Default)]
pub(super) struct Scan {
    /// End of the last good record.
    pub(super) end: u64,
    /// Offset of the first record not wholly before the cursor (or `end`).
    pub(super) head: u64,
    /// Records and payload bytes from `head` to `end`.
    pub(super) records: u64,
    pub(super) bytes: u64,
    /// Where framing broke, and why; the bytes from there to the file end are unusable.
    pub(super) bad: Option<(u64, String)>,
}

/// Walks the framing of a segment. Reads only headers unless `verify_crc`; records that end
/// at or before `skip_before` are not counted (they were delivered).
pub(super) fn scan_segment(path: &Path, verify_crc: bool, skip_before: u64) -> io::Result<Scan> {
    let file = File::open(path)?;
    let file_len = file.metadata()?.len();
    let mut r = BufReader::with_capacity(64 * 1024, file);
    let mut scan = Scan::default();
    let mut head: Option<u64> = None;
    let mut payload = Vec::new();
    let mut off = 0u64;
    while off < file_len {
        if file_len - off < HEADER_BYTES {
            scan.bad = Some((off, format!("{} stray bytes, shorter than a record header", file_len - off)));
            break;
        }
        let mut hb = [0u8; HEADER_BYTES as usize];
        r.read_exact(&mut hb)?;
        let h = Header::parse(&hb);
        if h.size() > file_len - off {
            scan.bad = Some((off, format!("record length {} runs past the end of the file", h.len)));
            break;
        }
        if verify_crc {
            payload.resize(h.len as usize, 0);
            r.read_exact(&mut payload)?;
            if record_crc(h.len, h.enqueued_at_ms, &payload) != h.crc {
                scan.bad = Some((off, "checksum mismatch".into()));
                break;
            }
        } else {
            r.seek_relative(i64::from(h.len))?;
        }
        if off + h.size() > skip_before {
            head.get_or_insert(off);
            scan.records += 1;
            scan.bytes += u64::from(h.len);
        }
        off += h.size();
    }
    scan.end = off;
    scan.head = head.unwrap_or(off);
    Ok(scan)
}
