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

    /// The chunks of `data`, in order, each with its offset: they tile `data`.
    pub fn chunks<'a>(&self, data: &'a [u8]) -> impl Iterator<Item = (usize, &'a [u8])> + 'a {
        let params = *self;
        let mut offset = 0;
        std::iter::from_fn(move || {
            let rest = &data[offset..];
            if rest.is_empty() {
                return None;
            }
            let n = params.cut(rest);
            offset += n;
            Some((offset - n, &rest[..n]))
        })
    }

    /// Lengths of all the chunks of `data`, in order; they sum to `data.len()`.
    pub fn lengths(&self, data: &[u8]) -> Vec<u32> {
        self.chunks(data).map(|(_, c)| c.len() as u32).collect()
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
            p.chunks(d).map(|(_, c)| crate::ota::sha256(c)).collect()
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
    fn chunks_tile_the_input_at_their_offsets() {
        let p = small();
        let data = noise(100_000, 5);
        let mut next = 0;
        for ((offset, chunk), len) in p.chunks(&data).zip(p.lengths(&data)) {
            assert_eq!(offset, next);
            assert_eq!(chunk.len(), len as usize);
            assert_eq!(chunk, &data[offset..offset + chunk.len()]);
            next += chunk.len();
        }
        assert_eq!(next, data.len());
        assert_eq!(p.chunks(&[]).count(), 0);
    }
}
