//! Just enough of the `.npy` header to check a file before it is sent and to describe an
//! output: dtype and shape. The tensors themselves travel as the files' bytes.

/// What is wrong with an `.npy` image.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NpyError {
    /// Not an `.npy` file.
    #[error("not an .npy file (no \\x93NUMPY magic)")]
    Magic,
    /// A format version this reader does not know.
    #[error(".npy format version {0} is not supported (1, 2 and 3 are)")]
    Version(u8),
    /// The header is cut short or malformed.
    #[error("malformed .npy header: {0}")]
    Header(String),
}

/// The header of an `.npy` image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NpyHeader {
    /// numpy's type string, e.g. `<f4`.
    pub descr: String,
    /// Dimensions (empty for a scalar).
    pub shape: Vec<usize>,
}

impl NpyHeader {
    /// The element type as the agent names it (`f32`, `u8`, `bool`, …), or numpy's type
    /// string when it is none of those.
    pub fn dtype(&self) -> String {
        let name = match self.descr.trim_start_matches(['<', '|', '=']) {
            "f2" => "f16",
            "f4" => "f32",
            "f8" => "f64",
            "i1" => "i8",
            "i2" => "i16",
            "i4" => "i32",
            "i8" => "i64",
            "u1" => "u8",
            "u2" => "u16",
            "u4" => "u32",
            "u8" => "u64",
            "b1" => "bool",
            _ => return self.descr.clone(),
        };
        name.into()
    }

    /// `[1, 3, 224, 224]`.
    pub fn shape_text(&self) -> String {
        format!("{:?}", self.shape)
    }
}

/// Reads the header of the `.npy` image `bytes`.
pub fn header(bytes: &[u8]) -> Result<NpyHeader, NpyError> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(NpyError::Magic);
    }
    let (len, start): (usize, usize) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12),
        2 | 3 => return Err(NpyError::Header("cut short".into())),
        v => return Err(NpyError::Version(v)),
    };
    let text = bytes
        .get(start..start.saturating_add(len))
        .ok_or_else(|| NpyError::Header(format!("{len}-byte header, {} bytes in the file", bytes.len())))?;
    let text = std::str::from_utf8(text).map_err(|_| NpyError::Header("not text".into()))?;
    let descr = value_after(text, "descr")
        .and_then(|v| v.strip_prefix('\''))
        .and_then(|v| v.split_once('\''))
        .map(|(d, _)| d.to_string())
        .ok_or_else(|| NpyError::Header(format!("no 'descr' in {text:?}")))?;
    let shape = value_after(text, "shape")
        .and_then(|v| v.strip_prefix('('))
        .and_then(|v| v.split_once(')'))
        .ok_or_else(|| NpyError::Header(format!("no 'shape' in {text:?}")))?
        .0;
    let shape = shape
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| d.trim_end_matches('L').parse::<usize>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| NpyError::Header(format!("bad shape ({shape})")))?;
    Ok(NpyHeader { descr, shape })
}

/// The text after `'key':` in a header dict, leading spaces skipped.
fn value_after<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let at = text.find(&format!("'{key}'"))?;
    Some(text[at + key.len() + 2..].trim_start().strip_prefix(':')?.trim_start())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(dict: &str) -> Vec<u8> {
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend((dict.len() as u16).to_le_bytes());
        out.extend(dict.as_bytes());
        out
    }

    #[test]
    fn reads_dtype_and_shape_as_numpy_writes_them() {
        let h = header(&npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1, 3, 224), }\n")).unwrap();
        assert_eq!((h.dtype().as_str(), h.shape.as_slice()), ("f32", &[1usize, 3, 224][..]));
        assert_eq!(h.shape_text(), "[1, 3, 224]");
        let h = header(&npy("{'descr': '|b1', 'fortran_order': False, 'shape': (5,), }")).unwrap();
        assert_eq!((h.dtype().as_str(), h.shape.as_slice()), ("bool", &[5usize][..]));
        let h = header(&npy("{'descr': '<c8', 'fortran_order': False, 'shape': (), }")).unwrap();
        assert_eq!((h.dtype().as_str(), h.shape.len()), ("<c8", 0));
    }

    #[test]
    fn version_2_headers_have_a_32_bit_length() {
        let dict = "{'descr': '<i8', 'fortran_order': False, 'shape': (2, 2), }";
        let mut b = b"\x93NUMPY\x02\x00".to_vec();
        b.extend((dict.len() as u32).to_le_bytes());
        b.extend(dict.as_bytes());
        assert_eq!(header(&b).unwrap().dtype(), "i64");
    }

    #[test]
    fn refuses_what_is_not_npy() {
        assert_eq!(header(b"PK\x03\x04 a zip file"), Err(NpyError::Magic));
        assert_eq!(header(b"\x93NUMPY\x09\x00\x00\x00"), Err(NpyError::Version(9)));
        let mut cut = npy("{'descr': '<f4', 'shape': (1,), }");
        cut.truncate(20);
        assert!(matches!(header(&cut), Err(NpyError::Header(_))));
        assert!(matches!(header(&npy("{'shape': (1,), }")), Err(NpyError::Header(_))));
    }
}
