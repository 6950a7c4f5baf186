//! Over-the-air model transfer: the manifest a `deploy-model` command carries, the chunks
//! that follow it and the repair requests a device sends for what it is missing.
//!
//! # The artifact
//!
//! What is transferred is one byte string, the *artifact*: the model file followed by the
//! postcard encoding of its [`Validation`] vector (absent when `validation_size` is 0). It
//! is cut into chunks, either of `chunk_size` bytes each (the last may be shorter), or where
//! its content says ([`crate::cdc`], [`ContentChunks`]: the manifest then carries the rule's
//! limits and every chunk's length). The signed manifest carries the SHA-256 of every chunk,
//! of the model and of the validation vector, so chunks themselves need no signature: a
//! chunk whose hash does not match is dropped.
//!
//! Content-defined chunks make *delta transfers* possible: a device that already holds a
//! chunk (the same hash, in any version it has installed) copies it instead of receiving
//! it, and says what it still needs right after accepting ([`Need`]).
//!
//! # Flow
//!
//! 1. The operator publishes the signed command (device or group command topic).
//! 2. It publishes every chunk once, on the device's `ota` topic or the group's: a
//!    fleet-wide push costs one copy on the broker, not one per device.
//! 3. A device writes chunks straight into a staging file and records them in a bitmap
//!    that survives restarts. When nothing has arrived for a while and chunks are still
//!    missing, it publishes a [`Need`] on its `need` topic with the missing ranges; the
//!    operator answers on the device's own `ota` topic.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::cdc::CdcParams;
use crate::codec::Versioned;
use crate::command::NpyBytes;
use crate::profile::Profile;

/// Largest chunk payload. Brokers must accept packets a little larger (the fleet
/// Mosquitto configuration allows 1 MiB + 4 KiB).
pub const MAX_CHUNK_BYTES: usize = 1024 * 1024;

/// Default chunk size: fits the agent's default 256 KiB packet limit with room for the
/// topic and the chunk header.
pub const DEFAULT_CHUNK_BYTES: u32 = 240 * 1024;

/// Largest validation vector, checked before decoding it.
pub const MAX_VALIDATION_BYTES: u64 = 16 * 1024 * 1024;

/// Model file format, which decides how the device loads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ModelFormat {
    /// TensorFlow Lite flatbuffer.
    Tflite,
    /// ONNX protobuf.
    Onnx,
}

impl ModelFormat {
    /// The file extension the device stores it under.
    pub fn extension(self) -> &'static str {
        match self {
            ModelFormat::Tflite => "tflite",
            ModelFormat::Onnx => "onnx",
        }
    }

    /// The format a file name's extension names.
    pub fn from_file_name(name: &str) -> Option<ModelFormat> {
        let lower = name.to_ascii_lowercase();
        if lower.ends_with(".tflite") {
            Some(ModelFormat::Tflite)
        } else if lower.ends_with(".onnx") {
            Some(ModelFormat::Onnx)
        } else {
            None
        }
    }
}

/// What to install, carried inside the signed `deploy-model` command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Identifies the transfer: chunks and repair requests name it.
    pub transfer_id: [u8; 16],
    /// Model name it is served under.
    pub name: String,
    /// Version label.
    pub version: String,
    /// File format.
    pub format: ModelFormat,
    /// Size of the model file in bytes.
    pub size: u64,
    /// SHA-256 of the model file.
    pub sha256: [u8; 32],
    /// Size of the encoded [`Validation`] that follows the model in the artifact; 0 for none.
    pub validation_size: u64,
    /// SHA-256 of the encoded validation vector (zero when there is none).
    pub validation_sha256: [u8; 32],
    /// Chunk size in bytes; every chunk but the last has exactly this size. With
    /// [`Manifest::content`], the longest a chunk may be (the rule's `max`).
    pub chunk_size: u32,
    /// SHA-256 of each chunk of the artifact, in order.
    pub chunk_hashes: Vec<[u8; 32]>,
    /// Scalar inputs fixed at load, as `[[models]] pins` in the agent's configuration.
    pub pins: Vec<(String, f64)>,
    /// Longest acceptable median latency of one validation run, in ms; 0 for no budget.
    pub latency_budget_ms: u32,
    /// Oldest agent version that may install it (`major.minor.patch`); empty for any.
    pub min_agent_version: String,
    /// Content-defined chunks: their rule and lengths. `None` for fixed-size chunks. Not part
    /// of this struct's own encoding (a fixed-size manifest encodes exactly as it did before
    /// delta transfers): `Payload::DeployModelContent` carries it beside the manifest, in a
    /// version 2 command.
    #[serde(skip)]
    pub content: Option<ContentChunks>,
    /// The reference profile of the model's tensors, for drift ([`crate::profile`]). Not
    /// part of this struct's own encoding either: `Payload::DeployModelProfiled` carries it
    /// beside the manifest, in a version 5 command.
    #[serde(skip)]
    pub profile: Option<Profile>,
}

/// How an artifact cut by content is cut: the rule's limits, which a device needs to cut the
/// files it holds the same way, and the length of every chunk, so that a chunk's byte range
/// is a lookup rather than a re-run of the rule. Encoded as the limits and the lengths; where
/// each chunk ends is worked out once, when it is made or decoded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "ContentWire", into = "ContentWire")]
pub struct ContentChunks {
    /// The rule's limits.
    pub params: CdcParams,
    lengths: Vec<u32>,
    /// Where each chunk ends in the artifact: running sums of `lengths`.
    ends: Vec<u64>,
}

/// [`ContentChunks`] as encoded.
#[derive(Serialize, Deserialize)]
struct ContentWire {
    params: CdcParams,
    lengths: Vec<u32>,
}

impl From<ContentWire> for ContentChunks {
    fn from(w: ContentWire) -> ContentChunks {
        ContentChunks::new(w.params, w.lengths)
    }
}

impl From<ContentChunks> for ContentWire {
    fn from(c: ContentChunks) -> ContentWire {
        ContentWire { params: c.params, lengths: c.lengths }
    }
}

impl ContentChunks {
    /// Chunks of `lengths` bytes, in order, cut by `params`.
    pub fn new(params: CdcParams, lengths: Vec<u32>) -> ContentChunks {
        let ends = lengths
            .iter()
            .scan(0u64, |end, &l| {
                *end += l as u64;
                Some(*end)
            })
            .collect();
        ContentChunks { params, lengths, ends }
    }

    /// Length of each chunk, in order.
    pub fn lengths(&self) -> &[u32] {
        &self.lengths
    }

    /// The byte range of chunk `index`; empty at the artifact's end past the last chunk.
    fn range(&self, index: usize) -> std::ops::Range<u64> {
        let total = self.ends.last().copied().unwrap_or(0);
        // Where chunk `i` starts: where the one before it ends.
        let start_of = |i: usize| i.checked_sub(1).map_or(0, |before| self.ends.get(before).copied().unwrap_or(total));
        start_of(index)..start_of(index + 1)
    }
}

impl Manifest {
    /// Bytes in the artifact: model plus validation vector.
    pub fn artifact_size(&self) -> u64 {
        self.size + self.validation_size
    }

    /// Number of chunks.
    pub fn chunk_count(&self) -> u32 {
        self.chunk_hashes.len() as u32
    }

    /// The byte range of chunk `index` within the artifact.
    pub fn chunk_range(&self, index: u32) -> std::ops::Range<u64> {
        if let Some(c) = &self.content {
            return c.range(index as usize);
        }
        let start = index as u64 * self.chunk_size as u64;
        start..(start + self.chunk_size as u64).min(self.artifact_size())
    }

    /// The byte ranges of every chunk, in order.
    pub fn chunk_ranges(&self) -> Vec<std::ops::Range<u64>> {
        (0..self.chunk_count()).map(|i| self.chunk_range(i)).collect()
    }

    /// Whether the sizes, chunk size and hash count agree with each other: what a device
    /// checks before creating anything on disk.
    pub fn check_consistent(&self) -> Result<(), String> {
        if self.chunk_size == 0 || self.chunk_size as usize > MAX_CHUNK_BYTES {
            return Err(format!("chunk size {} is outside 1..={MAX_CHUNK_BYTES}", self.chunk_size));
        }
        if self.size == 0 {
            return Err("model size is 0".into());
        }
        if self.validation_size > MAX_VALIDATION_BYTES {
            return Err(format!(
                "validation vector of {} bytes is over the {MAX_VALIDATION_BYTES}-byte limit",
                self.validation_size
            ));
        }
        if let Some(c) = &self.content {
            c.params.check()?;
            if self.chunk_size != c.params.max {
                return Err(format!("chunk size {} is not the content rule's max {}", self.chunk_size, c.params.max));
            }
            if c.lengths.len() != self.chunk_hashes.len() {
                return Err(format!("{} chunk lengths for {} chunk hashes", c.lengths.len(), self.chunk_hashes.len()));
            }
            if c.lengths.iter().any(|&l| l == 0 || l > c.params.max) {
                return Err(format!("a chunk length is 0 or over the rule's max {}", c.params.max));
            }
            let total: u64 = c.lengths.iter().map(|&l| l as u64).sum();
            if total != self.artifact_size() {
                return Err(format!("chunk lengths sum to {total} bytes, the artifact has {}", self.artifact_size()));
            }
        } else if self.artifact_size().div_ceil(self.chunk_size as u64) != self.chunk_hashes.len() as u64 {
            let expected = self.artifact_size().div_ceil(self.chunk_size as u64);
            return Err(format!(
                "{} chunk hashes for {} bytes in chunks of {} (expected {expected})",
                self.chunk_hashes.len(),
                self.artifact_size(),
                self.chunk_size
            ));
        }
        if let Some(p) = &self.profile {
            p.check().map_err(|e| format!("profile: {e}"))?;
            if p.model_sha256 != crate::command::hex(&self.sha256) {
                return Err(format!(
                    "profile: made with model {}, this is model {}: make the profile with this model file",
                    p.model_sha256,
                    crate::command::hex(&self.sha256)
                ));
            }
        }
        if !crate::topics::valid_level(&self.name) || !valid_label(&self.version) {
            return Err(format!(
                "model name {:?} or version {:?} is not a plain label (letters, digits, '.', '-', '_')",
                self.name, self.version
            ));
        }
        Ok(())
    }
}

/// Whether `s` is a plain label that is safe as a file name: 1 to 64 of `[A-Za-z0-9._-]`,
/// not starting with a dot.
pub fn valid_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && !s.starts_with('.')
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
}

/// The golden input a device runs before switching to a new model, and what it must give.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Validation {
    /// Schema version, [`Validation::VERSION`].
    pub version: u16,
    /// Input tensors, in the model's input order.
    pub inputs: Vec<NpyBytes>,
    /// Expected outputs, in the model's output order.
    pub expected: Vec<NpyBytes>,
    /// Largest accepted absolute difference per element.
    pub tolerance: f32,
}

impl Versioned for Validation {
    const VERSION: u16 = 1;
    fn version(&self) -> u16 {
        self.version
    }
}

/// One piece of an artifact, published on a device's or a group's `ota` topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    /// Schema version, [`Chunk::VERSION`].
    pub version: u16,
    /// [`Manifest::transfer_id`].
    pub transfer_id: [u8; 16],
    /// Position, from 0.
    pub index: u32,
    /// The bytes.
    pub data: Vec<u8>,
}

impl Versioned for Chunk {
    const VERSION: u16 = 1;
    fn version(&self) -> u16 {
        self.version
    }
}

/// A device's request for the chunks it is missing, on its `need` topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Need {
    /// Schema version, [`Need::VERSION`].
    pub version: u16,
    /// Device id.
    pub device: String,
    /// [`Manifest::transfer_id`].
    pub transfer_id: [u8; 16],
    /// Missing chunk indices as half-open ranges `[start, end)`, in order.
    pub missing: Vec<(u32, u32)>,
}

impl Versioned for Need {
    const VERSION: u16 = 1;
    fn version(&self) -> u16 {
        self.version
    }
}

/// Decodes a [`Chunk`]: bounded by [`MAX_CHUNK_BYTES`] plus its header, not by the
/// general message bound.
pub fn decode_chunk(bytes: &[u8]) -> Result<Chunk, crate::ProtoError> {
    crate::codec::decode_bounded(bytes, MAX_CHUNK_BYTES + 64)
}

/// Splits `artifact` into chunks of `chunk_size` and hashes each.
pub fn chunk_hashes(artifact: &[u8], chunk_size: u32) -> Vec<[u8; 32]> {
    artifact.chunks(chunk_size as usize).map(|c| Sha256::digest(c).into()).collect()
}

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// How an artifact is to be cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// In chunks of this many bytes.
    Fixed(u32),
    /// Where the content says, under these limits: what delta transfers need.
    Content(CdcParams),
}

/// Builds the manifest and the artifact for `model` with an optional validation vector,
/// in fixed-size chunks. The caller sets `pins`, `latency_budget_ms` and
/// `min_agent_version` afterwards if needed.
pub fn prepare(
    transfer_id: [u8; 16],
    name: &str,
    version: &str,
    format: ModelFormat,
    model: &[u8],
    validation: Option<&Validation>,
    chunk_size: u32,
) -> (Manifest, Vec<u8>) {
    prepare_cut(transfer_id, name, version, format, model, validation, Cut::Fixed(chunk_size))
}

/// [`prepare`], cut as `cut` says.
pub fn prepare_cut(
    transfer_id: [u8; 16],
    name: &str,
    version: &str,
    format: ModelFormat,
    model: &[u8],
    validation: Option<&Validation>,
    cut: Cut,
) -> (Manifest, Vec<u8>) {
    let encoded = validation.map(crate::codec::encode).unwrap_or_default();
    let mut artifact = Vec::with_capacity(model.len() + encoded.len());
    artifact.extend_from_slice(model);
    artifact.extend_from_slice(&encoded);
    let (chunk_size, chunk_hashes, content) = match cut {
        Cut::Fixed(size) => (size, chunk_hashes(&artifact, size), None),
        Cut::Content(params) => {
            let (lengths, hashes) = params.chunks(&artifact).map(|(_, c)| (c.len() as u32, sha256(c))).unzip();
            (params.max, hashes, Some(ContentChunks::new(params, lengths)))
        }
    };
    let manifest = Manifest {
        transfer_id,
        name: name.into(),
        version: version.into(),
        format,
        size: model.len() as u64,
        sha256: sha256(model),
        validation_size: encoded.len() as u64,
        validation_sha256: if encoded.is_empty() { [0; 32] } else { sha256(&encoded) },
        chunk_size,
        chunk_hashes,
        pins: vec![],
        latency_budget_ms: 0,
        min_agent_version: String::new(),
        content,
        profile: None,
    };
    (manifest, artifact)
}

/// Ranges `[start, end)` of the indices for which `have(i)` is false, among `0..count`, in
/// order and covering at most `max_chunks` indices in all (at least one): what a [`Need`]
/// asks for.
pub fn missing_ranges(count: u32, max_chunks: u32, have: impl Fn(u32) -> bool) -> Vec<(u32, u32)> {
    let mut left = max_chunks.max(1);
    let mut out = vec![];
    let mut i = 0;
    while i < count && left > 0 {
        if have(i) {
            i += 1;
            continue;
        }
        let start = i;
        while i < count && !have(i) && i - start < left {
            i += 1;
        }
        left -= i - start;
        out.push((start, i));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode, encode};

    fn validation() -> Validation {
        Validation {
            version: Validation::VERSION,
            inputs: vec![NpyBytes(vec![1; 10])],
            expected: vec![NpyBytes(vec![2; 5])],
            tolerance: 1e-4,
        }
    }

    #[test]
    fn prepare_lays_out_model_then_validation_and_hashes_every_chunk() {
        let model = vec![7u8; 1000];
        let (m, artifact) = prepare([1; 16], "kws", "2", ModelFormat::Onnx, &model, Some(&validation()), 300);
        assert_eq!(&artifact[..1000], &model[..]);
        assert_eq!(decode::<Validation>(&artifact[1000..]).unwrap(), validation());
        assert_eq!(m.artifact_size(), artifact.len() as u64);
        assert_eq!(m.chunk_count() as usize, artifact.len().div_ceil(300));
        m.check_consistent().unwrap();
        for i in 0..m.chunk_count() {
            let r = m.chunk_range(i);
            assert_eq!(sha256(&artifact[r.start as usize..r.end as usize]), m.chunk_hashes[i as usize]);
        }
    }

    #[test]
    fn inconsistent_manifests_are_refused() {
        let (m, _) = prepare([1; 16], "kws", "2", ModelFormat::Tflite, &[1; 100], None, 30);
        let mut short = m.clone();
        short.chunk_hashes.pop();
        assert!(short.check_consistent().unwrap_err().contains("chunk hashes"));
        let mut huge = m.clone();
        huge.chunk_size = MAX_CHUNK_BYTES as u32 + 1;
        assert!(huge.check_consistent().is_err());
        let mut escape = m.clone();
        escape.version = "../../etc".into();
        assert!(escape.check_consistent().unwrap_err().contains("plain label"));
        let mut name = m;
        name.name = "a/b".into();
        assert!(name.check_consistent().is_err());
    }

    fn noise(n: usize) -> Vec<u8> {
        (0..n as u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect()
    }

    #[test]
    fn a_content_cut_carries_lengths_whose_ranges_hash_to_the_chunk_hashes() {
        let params = CdcParams { min: 256, avg: 1024, max: 4096 };
        let model = noise(50_000);
        let (m, artifact) =
            prepare_cut([1; 16], "kws", "2", ModelFormat::Onnx, &model, Some(&validation()), Cut::Content(params));
        m.check_consistent().unwrap();
        assert_eq!(m.chunk_size, params.max);
        assert!(m.chunk_count() > 10, "{}", m.chunk_count());
        let ranges = m.chunk_ranges();
        assert_eq!(ranges.last().unwrap().end, artifact.len() as u64);
        for (i, r) in ranges.iter().enumerate() {
            assert_eq!(m.chunk_range(i as u32), *r);
            assert_eq!(sha256(&artifact[r.start as usize..r.end as usize]), m.chunk_hashes[i]);
        }
        let mut short = m.clone();
        let c = m.content.as_ref().unwrap();
        let mut lengths = c.lengths().to_vec();
        lengths[0] -= 1;
        short.content = Some(ContentChunks::new(c.params, lengths.clone()));
        assert!(short.check_consistent().unwrap_err().contains("sum to"));
        let mut long = m.clone();
        lengths[0] = params.max + 1;
        long.content = Some(ContentChunks::new(params, lengths));
        assert!(long.check_consistent().is_err());
        let mut mismatch = m;
        mismatch.chunk_size = 100;
        assert!(mismatch.check_consistent().unwrap_err().contains("max"));
    }

    #[test]
    fn a_manifest_encodes_without_its_content_chunks() {
        // The version 1 wire: a fixed-size manifest is the same bytes as before delta
        // transfers, and content chunks travel beside the manifest, never inside it.
        let params = CdcParams { min: 256, avg: 1024, max: 4096 };
        let (m, _) = prepare_cut([1; 16], "kws", "2", ModelFormat::Onnx, &noise(9000), None, Cut::Content(params));
        let old_layout = (
            m.transfer_id,
            &m.name,
            &m.version,
            m.format,
            m.size,
            m.sha256,
            m.validation_size,
            m.validation_sha256,
            m.chunk_size,
            &m.chunk_hashes,
            &m.pins,
            m.latency_budget_ms,
            &m.min_agent_version,
        );
        assert_eq!(encode(&m), encode(&old_layout));
    }

    #[test]
    fn missing_ranges_are_half_open_and_ordered() {
        let have = [true, false, false, true, false, true, true, false];
        assert_eq!(missing_ranges(8, 100, |i| have[i as usize]), vec![(1, 3), (4, 5), (7, 8)]);
        assert_eq!(missing_ranges(3, 100, |_| true), vec![]);
        assert_eq!(missing_ranges(3, 100, |_| false), vec![(0, 3)]);
        // The cap counts indices, across ranges, and cuts the last range short.
        assert_eq!(missing_ranges(8, 3, |i| have[i as usize]), vec![(1, 3), (4, 5)]);
        assert_eq!(missing_ranges(8, 2, |i| have[i as usize]), vec![(1, 3)]);
        assert_eq!(missing_ranges(8, 1, |i| have[i as usize]), vec![(1, 2)]);
        assert_eq!(missing_ranges(8, 0, |i| have[i as usize]), vec![(1, 2)]);
    }

    #[test]
    fn a_full_size_chunk_decodes_under_its_own_bound() {
        let chunk = Chunk { version: 1, transfer_id: [3; 16], index: 9, data: vec![5; MAX_CHUNK_BYTES] };
        assert_eq!(decode_chunk(&encode(&chunk)).unwrap(), chunk);
        let too_big = Chunk { data: vec![5; MAX_CHUNK_BYTES + 100], ..chunk };
        assert!(matches!(decode_chunk(&encode(&too_big)), Err(crate::ProtoError::TooLarge(_))));
    }
}
