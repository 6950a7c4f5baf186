//! Content-defined chunking: where an artifact is cut, decided by its bytes rather than by
//! fixed offsets, so that an edit moves only the boundaries next to it.
//!
//! # The rule (normative: a sender and a device must cut identically)
//!
//! A gear rolling hash in the style of FastCDC (Xia et al., USENIX ATC 2016) with
//! normalized chunking, level 2. With `bits = log2(avg)`:
//!
//! - a chunk is never shorter than `min` (unless the input ends) nor longer than `max`;
//! - hashing starts at byte `min` of the chunk, with `hash = 0`; for each byte `b`,
//!   `hash = (hash << 1) + GEAR[b]` (wrapping, 64-bit);
//! - before byte `avg` of the chunk the chunk ends after a byte where the top `bits + 2`
//!   bits of `hash` are all zero; from `avg` on, where the top `bits - 2` bits are zero
//!   (harder before the average, easier after: lengths cluster around `avg`);
//! - otherwise it ends at `max` or at the end of the input.
//!
//! `GEAR` is 256 values of splitmix64 seeded with 0 ([`gear`]), so the table is fixed by
//! this description rather than by a literal that could be mistyped.
//!
//! The top bits of a gear hash depend on the last 64 bytes only: a change in the input
//! moves at most the boundary of the chunk it is in and of the next one, and chunks further
//! on are cut exactly where they were (shifted with the bytes), which fixed-size chunks are
//! not when bytes are inserted or removed.

use serde::{Deserialize, Serialize};

use crate::ota::MAX_CHUNK_BYTES;

/// Chunk length limits of the content-defined rule. Carried in the manifest so that a
/// device can cut the files it already holds the way the sender cut the new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CdcParams {
    /// Shortest chunk (except the last).
    pub min: u32,
    /// Target average; a power of two.
    pub avg: u32,
    /// Longest chunk; at most [`MAX_CHUNK_BYTES`].
    pub max: u32,
}

impl CdcParams {
    /// The default: 16 KiB / 64 KiB / 240 KiB. The average is small enough that editing a
    /// classifier head of a sub-megabyte model does not resend most of it, the maximum is
    /// the fixed scheme's default chunk (fits the agent's 256 KiB packet limit).
    pub const DEFAULT: CdcParams = CdcParams { min: 16 * 1024, avg: 64 * 1024, max: 240 * 1024 };

    /// Limits whose longest chunk is `max` bytes: the average the largest power of two up
    /// to half of it, the minimum a quarter of the average ([`CdcParams::DEFAULT`] for
    /// 240 KiB). `None` when `max` is too small for the rule (under 512 bytes) or over
    /// [`MAX_CHUNK_BYTES`].
    pub fn for_max(max: u32) -> Option<CdcParams> {
        let avg = 1u32 << (max / 2).max(1).ilog2();
        let params = CdcParams { min: avg / 4, avg, max };
        params.check().ok().map(|_| params)
    }

    /// Whether the limits are usable: `64 <= min < avg < max <= MAX_CHUNK_BYTES`, `avg` a
    /// power of two.
    pub fn check(&self) -> Result<(), String> {
        let CdcParams { min, avg, max } = *self;
        if !(64 <= min && min < avg && avg < max && max as usize <= MAX_CHUNK_BYTES) {
            return Err(format!(
                "chunk limits min {min} / avg {avg} / max {max} must satisfy 64 <= min < avg < max <= {MAX_CHUNK_BYTES}"
            ));
        }
        if !avg.is_power_of_two() || avg < 256 {
            return Err(format!("average chunk size {avg} must be a power of two of at least 256"));
        }
        Ok(())
    }

    /// Length of the first chunk of `data` (0 only for empty input). Assumes [`check`]ed
    /// limits.
    ///
    /// [`check`]: CdcParams::check
    pub fn cut(&self, data: &[u8]) -> usize {
        let (min, avg, max) = (self.min as usize, self.avg as usize, self.max as usize);
        if data.len() <= min {
            return data.len();
        }
        let end = data.len().min(max);
        let bits = self.avg.trailing_zeros();
        let shift_small = 64 - (bits + 2);
        let shift_large = 64 - (bits - 2);
        let table = gear();
        let mut hash = 0u64;
        let mut i = min;
        while i < end.min(avg) {
            hash = (hash << 1).wrapping_add(table[data[i] as usize]);
            i += 1;
            if hash >> shift_small == 0 {
                return i;
            }
        }
        while i < end {
            hash = (hash << 1).wrapping_add(table[data[i] as usize]);
            i += 1;
            if hash >> shift_large == 0 {
                return i;
            }
        }
        end
    }

    /// Lengths of all the chunks of `data`, in order; they sum to `data.len()`.
    pub fn lengths(&self, data: &[u8]) -> Vec<u32> {
        let mut out = vec![];
        let mut rest = data;
        while !rest.is_empty() {
            let n = self.cut(rest);
            out.push(n as u32);
            rest = &rest[n..];
        }
        out
    }
}

/// Where a device already holds a chunk: in which of its files, at which byte range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    /// Index of the file, as given to [`HeldIndex::add`].
    pub file: usize,
    /// Offset of the chunk in it.
    pub offset: u64,
    /// Chunk length.
    pub len: u32,
}

/// The chunks of the files a device holds (its installed versions), cut with one set of
/// limits and found by SHA-256: what a new version's chunks can be copied from instead of
/// being sent. Pure: the caller reads the files (off the async runtime).
#[derive(Debug, Default)]
pub struct HeldIndex {
    chunks: std::collections::HashMap<[u8; 32], Held>,
}

impl HeldIndex {
    /// Cuts `data`, the content of file number `file`, with `params` and records its chunks.
    /// A hash already recorded keeps its first place.
    pub fn add(&mut self, file: usize, data: &[u8], params: &CdcParams) {
        let mut offset = 0usize;
        for len in params.lengths(data) {
            let hash = crate::ota::sha256(&data[offset..offset + len as usize]);
            self.chunks.entry(hash).or_insert(Held { file, offset: offset as u64, len });
            offset += len as usize;
        }
    }

    /// Where the chunk with this hash and length is held, if anywhere.
    pub fn find(&self, hash: &[u8; 32], len: u32) -> Option<Held> {
        self.chunks.get(hash).copied().filter(|h| h.len == len)
    }

    /// Number of distinct chunks recorded.
    pub fn len(&self) -> usize {
        self.chunks.len()
    }

    /// Whether nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }
}

/// The gear table: splitmix64 from seed 0, 256 outputs.
pub fn gear() -> &'static [u64; 256] {
    static TABLE: std::sync::OnceLock<[u64; 256]> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let mut state = 0u64;
        std::array::from_fn(|_| {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(n: usize, seed: u64) -> Vec<u8> {
        let mut rng = fastrand::Rng::with_seed(seed);
        (0..n).map(|_| rng.u8(..)).collect()
    }

    fn small() -> CdcParams {
        CdcParams { min: 1024, avg: 4096, max: 16 * 1024 }
    }

    /// (offset, length) of each chunk.
    fn spans(lengths: &[u32]) -> Vec<(usize, u32)> {
        let mut at = 0;
        lengths
            .iter()
            .map(|&l| {
                let s = (at, l);
                at += l as usize;
                s
            })
            .collect()
    }

    #[test]
    fn limits_for_a_chunk_size_scale_the_default() {
        assert_eq!(CdcParams::for_max(240 * 1024), Some(CdcParams::DEFAULT));
        assert_eq!(CdcParams::for_max(1000), Some(CdcParams { min: 64, avg: 256, max: 1000 }));
        assert_eq!(CdcParams::for_max(300), None);
        assert_eq!(CdcParams::for_max(MAX_CHUNK_BYTES as u32 + 1), None);
    }

    #[test]
    fn the_gear_table_is_the_documented_one() {
        // First splitmix64 output for seed 0: a published test vector.
        assert_eq!(gear()[0], 0xe220_a839_7b1d_cdaf);
        assert_eq!(gear().iter().collect::<std::collections::HashSet<_>>().len(), 256);
    }

    #[test]
    fn chunks_respect_the_limits_and_cover_the_input() {
        let p = small();
        p.check().unwrap();
        let data = noise(400_000, 1);
        let lengths = p.lengths(&data);
        assert_eq!(lengths.iter().map(|&l| l as usize).sum::<usize>(), data.len());
        let (last, body) = lengths.split_last().unwrap();
        assert!(body.iter().all(|&l| l >= p.min && l <= p.max), "{lengths:?}");
        assert!(*last <= p.max);
        let mean = data.len() / lengths.len();
        assert!(mean > 2048 && mean < 8192, "mean chunk {mean} far from the 4096 average");
        // Input with no structure at all (zeros) is cut at the maximum.
        assert!(p.lengths(&[0u8; 50_000]).iter().take(3).all(|&l| l == p.max));
        assert_eq!(p.lengths(&[]), Vec::<u32>::new());
        assert_eq!(p.lengths(&[1; 10]), vec![10]);
    }

    #[test]
    fn an_edit_changes_only_the_chunks_around_it() {
        let p = small();
        let a = noise(300_000, 2);
        let hashes = |d: &[u8]| -> std::collections::HashSet<[u8; 32]> {
            spans(&p.lengths(d)).iter().map(|&(o, l)| crate::ota::sha256(&d[o..o + l as usize])).collect()
        };
        let ha = hashes(&a);
        // Overwrite 100 bytes in the middle: the chunk holding them, and at most the next
        // (its boundary may move), are new.
        let mut b = a.clone();
        b[150_000..150_100].copy_from_slice(&noise(100, 3));
        let changed = hashes(&b).difference(&ha).count();
        assert!((1..=2).contains(&changed), "{changed} chunks changed");
        // Insert 1000 bytes: later chunks are the same bytes at shifted offsets.
        let mut c = a.clone();
        c.splice(100_000..100_000, noise(1000, 4));
        let hc = hashes(&c);
        let new = hc.difference(&ha).count();
        assert!((1..=3).contains(&new), "{new} of {} chunks are new after an insertion", hc.len());
    }

    #[test]
    fn bad_limits_are_refused_with_what_holds() {
        assert!(CdcParams::DEFAULT.check().is_ok());
        let e = CdcParams { min: 1024, avg: 3000, max: 8192 }.check().unwrap_err();
        assert!(e.contains("power of two"), "{e}");
        let e = CdcParams { min: 1024, avg: 4096, max: MAX_CHUNK_BYTES as u32 + 1 }.check().unwrap_err();
        assert!(e.contains("max"), "{e}");
        assert!(CdcParams { min: 4096, avg: 4096, max: 8192 }.check().is_err());
    }

    #[test]
    fn held_chunks_are_found_by_hash_and_give_back_the_same_bytes() {
        let p = small();
        let v1 = noise(200_000, 5);
        let other = noise(50_000, 6);
        // v2: v1 with its last 20 000 bytes changed, as a retrained last layer would be.
        let mut v2 = v1.clone();
        v2[180_000..].copy_from_slice(&noise(20_000, 7));
        let mut index = HeldIndex::default();
        index.add(0, &other, &p);
        index.add(1, &v1, &p);
        let files = [&other, &v1];
        let (mut reused, mut missing) = (0usize, 0usize);
        for (offset, len) in spans(&p.lengths(&v2)) {
            let chunk = &v2[offset..offset + len as usize];
            match index.find(&crate::ota::sha256(chunk), len) {
                Some(h) => {
                    let start = h.offset as usize;
                    assert_eq!(&files[h.file][start..start + h.len as usize], chunk);
                    reused += len as usize;
                }
                None => missing += len as usize,
            }
        }
        assert_eq!(reused + missing, v2.len());
        assert!(missing >= 20_000 && missing <= 20_000 + 2 * p.max as usize, "{missing} bytes missing");
        assert!(index.find(&[0; 32], 10).is_none());
    }
}
