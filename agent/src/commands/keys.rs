//! Operators' ed25519 public keys as configuration files write them (`[ota] trusted_keys`,
//! `[[ota.operators]] key`).

use edge_proto::command::VerifyingKey;

/// A `trusted_keys` entry that is not a usable public key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("[ota] trusted_keys[{index}] {entry:?}: {reason}")]
pub struct TrustedKeyError {
    /// Position in the list.
    pub index: usize,
    /// The entry as written.
    pub entry: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Parses `[ota] trusted_keys`: each entry is the 32-byte ed25519 public key as 64 hex
/// digits (what `edgectl keygen` writes to `operator.pub`) or as base64 (standard or
/// URL-safe alphabet, padding optional). Surrounding whitespace is ignored.
pub fn parse_trusted_keys(entries: &[String]) -> Result<Vec<VerifyingKey>, TrustedKeyError> {
    entries
        .iter()
        .enumerate()
        .map(|(index, entry)| {
            parse_key(entry).map_err(|reason| TrustedKeyError { index, entry: entry.clone(), reason })
        })
        .collect()
}

/// Parses one public key written as [`parse_trusted_keys`] reads them; the error says what
/// is wrong with it.
pub fn parse_key(entry: &str) -> Result<VerifyingKey, String> {
    let text = entry.trim();
    let bytes = decode_hex(text)
        .or_else(|| decode_base64(text))
        .ok_or("expected 64 hex digits or base64 of a 32-byte ed25519 public key")?;
    let bytes: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
        format!("decodes to {} bytes; an ed25519 public key is 32 (the .pub file, not the .key)", b.len())
    })?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| "not a valid ed25519 public key (not a curve point)".to_string())
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok()).collect()
}

fn decode_base64(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    // A lone trailing character (6 bits) cannot be the end of any byte string, and the
    // leftover bits must be zero, or two texts would decode to the same key.
    (bits < 6 && acc == 0).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use edge_proto::command::{hex, SigningKey};

    fn public(seed: u8) -> VerifyingKey {
        SigningKey::from_bytes(&[seed; 32]).verifying_key()
    }

    fn base64(bytes: &[u8]) -> String {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk.iter().enumerate().fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
            for i in 0..=chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        while !out.len().is_multiple_of(4) {
            out.push('=');
        }
        out
    }

    #[test]
    fn hex_and_base64_entries_parse() {
        let (a, b) = (public(1), public(2));
        let entries =
            vec![hex(a.as_bytes()), format!("  {}\n", base64(b.as_bytes())), hex(b.as_bytes()).to_uppercase()];
        assert_eq!(parse_trusted_keys(&entries).unwrap(), vec![a, b, b]);
        let unpadded = base64(a.as_bytes()).trim_end_matches('=').replace('+', "-").replace('/', "_");
        assert_eq!(parse_trusted_keys(&[unpadded]).unwrap(), vec![a]);
    }

    #[test]
    fn errors_name_the_bad_entry() {
        let good = hex(public(1).as_bytes());
        let err = parse_trusted_keys(&[good.clone(), "nope!".into()]).unwrap_err();
        assert_eq!(err.index, 1);
        assert!(err.to_string().starts_with("[ota] trusted_keys[1] \"nope!\""), "{err}");
        let err = parse_trusted_keys(&[good[..62].into()]).unwrap_err();
        assert!(err.reason.contains("31 bytes"), "{err}");
    }

    #[test]
    fn refuses_bytes_that_are_not_a_curve_point() {
        // y = 2 has no x on the curve; VerifyingKey::from_bytes refuses it.
        let mut bytes = [0u8; 32];
        bytes[0] = 2;
        let err = parse_trusted_keys(&[hex(&bytes)]).unwrap_err();
        assert!(err.reason.contains("curve point"), "{err}");
    }
}
