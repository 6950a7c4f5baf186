//! postcard encoding with a leading schema version and a size bound.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Largest message accepted, checked before decoding.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// What can go wrong decoding a message.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    /// The payload is larger than the receiver accepts.
    #[error("message of {0} bytes is over the size limit")]
    TooLarge(usize),
    /// The message carries a schema version this build does not know.
    #[error("unknown message version {found} (this build reads version {expected})")]
    UnknownVersion {
        /// Version in the message.
        found: u16,
        /// Version this build reads.
        expected: u16,
    },
    /// The bytes do not decode.
    #[error("malformed message: {0}")]
    Malformed(String),
}

/// A message type with a schema version.
pub trait Versioned {
    /// Current schema version: the newest this build reads and writes.
    const VERSION: u16;
    /// Oldest schema version this build still reads.
    const OLDEST: u16 = Self::VERSION;
    /// The version this value carries.
    fn version(&self) -> u16;
}

/// Encodes a message.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    postcard::to_stdvec(msg).expect("wire types always serialize")
}

/// Decodes a message, checking its size first and its version after.
pub fn decode<T: DeserializeOwned + Versioned>(bytes: &[u8]) -> Result<T, ProtoError> {
    decode_bounded(bytes, MAX_MESSAGE_BYTES)
}

/// [`decode`] with another size bound, for the few messages allowed to be larger (OTA
/// chunks, validation vectors).
pub fn decode_bounded<T: DeserializeOwned + Versioned>(bytes: &[u8], max: usize) -> Result<T, ProtoError> {
    if bytes.len() > max {
        return Err(ProtoError::TooLarge(bytes.len()));
    }
    // The version is the first field of every message: read it alone first, so that a
    // newer message is reported as such rather than as garbage.
    let (found, _) = postcard::take_from_bytes::<u16>(bytes).map_err(|e| ProtoError::Malformed(e.to_string()))?;
    if !(T::OLDEST..=T::VERSION).contains(&found) {
        return Err(ProtoError::UnknownVersion { found, expected: T::VERSION });
    }
    let (msg, rest) = postcard::take_from_bytes::<T>(bytes).map_err(|e| ProtoError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(ProtoError::Malformed(format!("{} trailing bytes", rest.len())));
    }
    Ok(msg)
}
