//! One simulated device's side of a model transfer, as a pure state machine tested without
//! I/O under simulated time.
//!
//! It does what the agent's transfer does (agent/src/ota/transfer.rs and deploy.rs) except
//! writing to disk: each chunk's SHA-256 is checked against the signed manifest, a progress
//! percent is reported at every tenth, missing chunks are asked for with a [`Need`] after a
//! stall (repeated at that pace, at most [`MAX_NEED_CHUNKS`] per request), and once every
//! chunk is in, the model's and the validation vector's SHA-256 are checked.
//!
//! Memory stays small for a thousand devices: the artifact is never held. Chunks are
//! hashed into the model and validation digests as they come, in order; a chunk that
//! arrives ahead of a gap is held (at most [`MAX_HELD`] of them) until the gap is filled,
//! and beyond that dropped and asked for again later.
//!
//! ```text
//! new(manifest) ─> on_chunk(now, chunk) ─> Dropped | Duplicate | Taken(progress?) | Complete(verdict)
//!                  on_tick(now) ─> Some(missing ranges) after a stall
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use edge_proto::ota::{missing_ranges, Chunk, Manifest};
use sha2::{Digest, Sha256};

/// Most chunks held ahead of a gap (240 KiB each by default).
pub const MAX_HELD: usize = 4;
/// Most chunks one repair request asks for (the agent's bound).
pub const MAX_NEED_CHUNKS: u32 = 512;

/// What a chunk did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Taken {
    /// Not taken: another transfer, an index out of range, a hash that does not match, or
    /// no room to hold it ahead of a gap (it will be asked for again).
    Dropped(&'static str),
    /// Had it already.
    Duplicate,
    /// Taken; `Some(p)` when a progress ack is due (below 100).
    Taken(Option<u8>),
    /// The last chunk: `Ok` when the model and validation hashes match the manifest.
    Complete(Result<(), String>),
}

/// A transfer being received.
#[derive(Debug)]
pub struct Receiver {
    manifest: Manifest,
    have: Vec<bool>,
    received: u32,
    /// Chunks before this index are hashed into the digests.
    hashed: u32,
    held: BTreeMap<u32, Vec<u8>>,
    model: Sha256,
    validation: Sha256,
    reported: u8,
    stall: Duration,
    last_chunk: Duration,
    last_need: Option<Duration>,
    bytes: u64,
}

impl Receiver {
    /// A transfer of `manifest` accepted at `now`; missing chunks are asked for after
    /// `stall` without one.
    pub fn new(manifest: Manifest, now: Duration, stall: Duration) -> Receiver {
        let count = manifest.chunk_count() as usize;
        Receiver {
            manifest,
            have: vec![false; count],
            received: 0,
            hashed: 0,
            held: BTreeMap::new(),
            model: Sha256::new(),
            validation: Sha256::new(),
            reported: 0,
            stall,
            last_chunk: now,
            last_need: None,
            bytes: 0,
        }
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Bytes of chunk data taken (duplicates and drops excluded).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Percent of the chunks in.
    pub fn percent(&self) -> u8 {
        let count = self.have.len().max(1) as u64;
        (u64::from(self.received) * 100 / count) as u8
    }

    /// A chunk arrived at `now`.
    pub fn on_chunk(&mut self, now: Duration, chunk: Chunk) -> Taken {
        if chunk.transfer_id != self.manifest.transfer_id {
            return Taken::Dropped("another transfer");
        }
        let index = chunk.index;
        let Some(&had) = self.have.get(index as usize) else { return Taken::Dropped("index out of range") };
        self.last_chunk = now;
        if had {
            return Taken::Duplicate;
        }
        if edge_proto::ota::sha256(&chunk.data) != self.manifest.chunk_hashes[index as usize] {
            return Taken::Dropped("hash mismatch");
        }
        let range = self.manifest.chunk_range(index);
        if chunk.data.len() as u64 != range.end - range.start {
            return Taken::Dropped("wrong length");
        }
        if index != self.hashed {
            if self.held.len() >= MAX_HELD {
                return Taken::Dropped("no room ahead of a gap");
            }
            self.held.insert(index, chunk.data);
        } else {
            self.digest(index, &chunk.data);
            while let Some(data) = self.held.remove(&self.hashed) {
                self.digest(self.hashed, &data);
            }
        }
        self.have[index as usize] = true;
        self.received += 1;
        self.bytes += range.end - range.start;
        if self.received as usize == self.have.len() {
            return Taken::Complete(self.verdict());
        }
        let percent = self.percent();
        if percent >= self.reported.saturating_add(10) {
            self.reported = percent - percent % 10;
            return Taken::Taken(Some(percent.min(99)));
        }
        Taken::Taken(None)
    }

    /// Time passes: the missing ranges to ask for when nothing came for the stall time
    /// (and nothing was asked for that long), at most [`MAX_NEED_CHUNKS`] chunks.
    pub fn on_tick(&mut self, now: Duration) -> Option<Vec<(u32, u32)>> {
        let quiet = |since: Option<Duration>| since.is_none_or(|t| now.saturating_sub(t) >= self.stall);
        if !quiet(Some(self.last_chunk)) || !quiet(self.last_need) || self.received as usize == self.have.len() {
            return None;
        }
        Some(self.ask_now(now))
    }

    /// The missing ranges to ask for now, whatever the silence (a delta transfer's first
    /// request, right after accepting), at most [`MAX_NEED_CHUNKS`] chunks.
    pub fn ask_now(&mut self, now: Duration) -> Vec<(u32, u32)> {
        self.last_need = Some(now);
        let have = &self.have;
        missing_ranges(have.len() as u32, MAX_NEED_CHUNKS, |i| have[i as usize])
    }

    /// Feeds chunk `index` (the next in order) into the model and validation digests.
    fn digest(&mut self, index: u32, data: &[u8]) {
        let start = self.manifest.chunk_range(index).start;
        let split = self.manifest.size.saturating_sub(start).min(data.len() as u64) as usize;
        self.model.update(&data[..split]);
        self.validation.update(&data[split..]);
        self.hashed = index + 1;
    }

    fn verdict(&mut self) -> Result<(), String> {
        let model: [u8; 32] = std::mem::take(&mut self.model).finalize().into();
        if model != self.manifest.sha256 {
            return Err("model sha256 does not match the manifest".into());
        }
        if self.manifest.validation_size > 0 {
            let validation: [u8; 32] = std::mem::take(&mut self.validation).finalize().into();
            if validation != self.manifest.validation_sha256 {
                return Err("validation vector sha256 does not match the manifest".into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edge_proto::codec::Versioned;
    use edge_proto::ota::{prepare, ModelFormat, Validation};

    const STALL: Duration = Duration::from_secs(5);

    fn transfer(chunks: usize) -> (Manifest, Vec<u8>) {
        let model: Vec<u8> = (0..chunks * 100 - 30).map(|i| (i * 7) as u8).collect();
        let validation = Validation { version: Validation::VERSION, inputs: vec![], expected: vec![], tolerance: 0.5 };
        prepare([9; 16], "det", "2", ModelFormat::Onnx, &model, Some(&validation), 100)
    }

    fn chunk(m: &Manifest, artifact: &[u8], index: u32) -> Chunk {
        let r = m.chunk_range(index);
        Chunk {
            version: 1,
            transfer_id: m.transfer_id,
            index,
            data: artifact[r.start as usize..r.end as usize].to_vec(),
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn in_order_chunks_complete_with_both_hashes_checked_and_progress_every_tenth() {
        let (m, artifact) = transfer(20);
        let count = m.chunk_count();
        let mut r = Receiver::new(m.clone(), secs(0), STALL);
        let mut reported = vec![];
        for i in 0..count - 1 {
            match r.on_chunk(secs(1), chunk(&m, &artifact, i)) {
                Taken::Taken(Some(p)) => reported.push(p),
                Taken::Taken(None) => {}
                other => panic!("chunk {i}: {other:?}"),
            }
        }
        assert_eq!(reported, vec![10, 20, 30, 40, 50, 60, 70, 80, 90]);
        assert_eq!(r.on_chunk(secs(1), chunk(&m, &artifact, count - 1)), Taken::Complete(Ok(())));
        assert_eq!(r.bytes(), artifact.len() as u64);
    }

    #[test]
    fn a_chunk_ahead_of_a_gap_is_held_and_hashed_once_the_gap_is_filled() {
        let (m, artifact) = transfer(4);
        assert_eq!(m.chunk_count(), 4);
        let mut r = Receiver::new(m.clone(), secs(0), STALL);
        for i in [3, 1, 2] {
            assert!(matches!(r.on_chunk(secs(1), chunk(&m, &artifact, i)), Taken::Taken(_)), "{i}");
        }
        assert_eq!(r.on_chunk(secs(1), chunk(&m, &artifact, 0)), Taken::Complete(Ok(())));
    }

    #[test]
    fn beyond_the_held_bound_chunks_are_dropped_and_asked_for_after_the_stall() {
        // The failure it guards: a device holding every out-of-order chunk of a 5 MB model
        // (a thousand of them would hold 5 GB).
        let (m, artifact) = transfer(10);
        let mut r = Receiver::new(m.clone(), secs(0), STALL);
        for i in 1..=MAX_HELD as u32 {
            assert!(matches!(r.on_chunk(secs(1), chunk(&m, &artifact, i)), Taken::Taken(_)));
        }
        let next = MAX_HELD as u32 + 1;
        assert_eq!(r.on_chunk(secs(1), chunk(&m, &artifact, next)), Taken::Dropped("no room ahead of a gap"));
        assert_eq!(r.on_tick(secs(5)), None, "not stalled yet");
        assert_eq!(r.on_tick(secs(6)), Some(vec![(0, 1), (next, m.chunk_count())]));
        assert_eq!(r.on_tick(secs(7)), None, "asked one stall ago");
        assert_eq!(r.on_tick(secs(11)), Some(vec![(0, 1), (next, m.chunk_count())]), "repeated every stall");
        for i in std::iter::once(0).chain(next..m.chunk_count() - 1) {
            assert!(matches!(r.on_chunk(secs(12), chunk(&m, &artifact, i)), Taken::Taken(_)), "{i}");
        }
        assert_eq!(r.on_chunk(secs(12), chunk(&m, &artifact, m.chunk_count() - 1)), Taken::Complete(Ok(())));
        assert_eq!(r.on_tick(secs(60)), None, "complete: nothing to ask for");
    }

    #[test]
    fn bad_hashes_other_transfers_and_duplicates_are_not_taken() {
        let (m, artifact) = transfer(3);
        let mut r = Receiver::new(m.clone(), secs(0), STALL);
        let mut bad = chunk(&m, &artifact, 0);
        bad.data[0] ^= 1;
        assert_eq!(r.on_chunk(secs(1), bad), Taken::Dropped("hash mismatch"));
        let mut other = chunk(&m, &artifact, 0);
        other.transfer_id = [1; 16];
        assert_eq!(r.on_chunk(secs(1), other), Taken::Dropped("another transfer"));
        let mut far = chunk(&m, &artifact, 0);
        far.index = 99;
        assert_eq!(r.on_chunk(secs(1), far), Taken::Dropped("index out of range"));
        assert!(matches!(r.on_chunk(secs(1), chunk(&m, &artifact, 0)), Taken::Taken(_)));
        assert_eq!(r.on_chunk(secs(1), chunk(&m, &artifact, 0)), Taken::Duplicate);
    }

    #[test]
    fn a_manifest_whose_model_hash_is_wrong_fails_at_the_end() {
        let (mut m, artifact) = transfer(2);
        m.sha256 = [0; 32];
        let mut r = Receiver::new(m.clone(), secs(0), STALL);
        assert!(matches!(r.on_chunk(secs(1), chunk(&m, &artifact, 0)), Taken::Taken(_)));
        assert_eq!(
            r.on_chunk(secs(1), chunk(&m, &artifact, 1)),
            Taken::Complete(Err("model sha256 does not match the manifest".into()))
        );
    }

    #[test]
    fn a_need_asks_for_at_most_512_chunks() {
        let model = vec![1u8; 600];
        let (m, _) = prepare([9; 16], "det", "2", ModelFormat::Onnx, &model, None, 1);
        let mut r = Receiver::new(m, secs(0), STALL);
        assert_eq!(r.on_tick(secs(5)), Some(vec![(0, MAX_NEED_CHUNKS)]));
    }
}
