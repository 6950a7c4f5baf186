//! `.npy` tensors in and out, straight to and from tract `Tensor`s.
//!
//! The format is small (a magic, a Python-dict header, raw little-endian data), and reading
//! it here lets one code path cover every dtype the agent accepts, f16 and bool included,
//! without an intermediate `ndarray` copy. Only C-order, little-endian (or byte-sized)
//! arrays are accepted, which is what NumPy writes by default.

use std::io::{Read, Write};
use std::path::Path;

use tract_core::internal::*;

/// What can go wrong reading or writing a `.npy` file.
#[derive(Debug, thiserror::Error)]
pub enum NpyError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The bytes are not a `.npy` array this reader handles.
    #[error("{0}")]
    Format(String),
}

fn format_err(msg: impl Into<String>) -> NpyError {
    NpyError::Format(msg.into())
}

const MAGIC: &[u8] = b"\x93NUMPY";

/// Largest header accepted: NumPy's own headers are well under this.
const MAX_HEADER: usize = 64 * 1024;

fn dtype_for_descr(descr: &str) -> Result<DatumType, NpyError> {
    Ok(match descr {
        "<f2" => DatumType::F16,
        "<f4" => DatumType::F32,
        "<f8" => DatumType::F64,
        "|i1" | "<i1" => DatumType::I8,
        "|u1" | "<u1" => DatumType::U8,
        "<i2" => DatumType::I16,
        "<u2" => DatumType::U16,
        "<i4" => DatumType::I32,
        "<u4" => DatumType::U32,
        "<i8" => DatumType::I64,
        "<u8" => DatumType::U64,
        "|b1" => DatumType::Bool,
        other => {
            return Err(format_err(format!(
                "unsupported npy dtype {other:?} (expected little-endian f2/f4/f8, i1/u1/i2/u2/i4/u4/i8/u8 or b1)"
            )))
        }
    })
}

fn descr_for_dtype(dt: DatumType) -> Result<&'static str, NpyError> {
    Ok(match dt.unquantized() {
        DatumType::F16 => "<f2",
        DatumType::F32 => "<f4",
        DatumType::F64 => "<f8",
        DatumType::I8 => "|i1",
        DatumType::U8 => "|u1",
        DatumType::I16 => "<i2",
        DatumType::U16 => "<u2",
        DatumType::I32 => "<i4",
        DatumType::U32 => "<u4",
        DatumType::I64 => "<i8",
        DatumType::U64 => "<u8",
        DatumType::Bool => "|b1",
        other => return Err(format_err(format!("cannot write a {other:?} tensor as npy"))),
    })
}

/// Pulls the value of `'key':` out of the header dict, as raw text.
fn header_field<'h>(header: &'h str, key: &str) -> Result<&'h str, NpyError> {
    let pat = format!("'{key}':");
    let start =
        header.find(&pat).ok_or_else(|| format_err(format!("npy header has no {key:?}: {header}")))? + pat.len();
    let rest = header[start..].trim_start();
    let end = if rest.starts_with('(') {
        rest.find(')').map(|e| e + 1)
    } else if let Some(quoted) = rest.strip_prefix('\'') {
        quoted.find('\'').map(|e| e + 2)
    } else {
        rest.find([',', '}'])
    }
    .ok_or_else(|| format_err(format!("npy header field {key:?} is not terminated")))?;
    Ok(rest[..end].trim())
}

/// Decodes a `.npy` image held in memory.
pub fn from_bytes(bytes: &[u8]) -> Result<Tensor, NpyError> {
    let (tensor, used) = read_prefix(bytes)?;
    if used != bytes.len() {
        return Err(format_err(format!("{} bytes after the npy data", bytes.len() - used)));
    }
    Ok(tensor)
}

/// Decodes the `.npy` image at the start of `bytes`, and says how many bytes it took:
/// several images can follow each other in one buffer.
pub fn read_prefix(bytes: &[u8]) -> Result<(Tensor, usize), NpyError> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(format_err("not an npy file (bad magic)"));
    }
    let major = bytes[6];
    let (header_len, offset) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err(format_err("truncated npy header"));
            }
            (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12)
        }
        v => return Err(format_err(format!("unsupported npy version {v}"))),
    };
    if header_len > MAX_HEADER || offset + header_len > bytes.len() {
        return Err(format_err("truncated or oversized npy header"));
    }
    let header =
        std::str::from_utf8(&bytes[offset..offset + header_len]).map_err(|_| format_err("npy header is not text"))?;
    let descr = header_field(header, "descr")?.trim_matches('\'');
    let dt = dtype_for_descr(descr)?;
    if header_field(header, "fortran_order")? != "False" {
        return Err(format_err("Fortran-ordered npy arrays are not supported"));
    }
    let shape_txt = header_field(header, "shape")?;
    let shape = shape_txt
        .trim_matches(|c| c == '(' || c == ')')
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|_| format_err(format!("bad npy shape {shape_txt}"))))
        .collect::<Result<Vec<usize>, _>>()?;
    let data = &bytes[offset + header_len..];
    let expected = shape
        .iter()
        .try_fold(dt.size_of(), |acc, d| acc.checked_mul(*d))
        .ok_or_else(|| format_err(format!("npy shape {shape:?} overflows")))?;
    if data.len() < expected {
        return Err(format_err(format!(
            "npy data is {} bytes, shape {shape:?} of {dt:?} needs {expected}",
            data.len()
        )));
    }
    let tensor = from_le_bytes(dt, &shape, &data[..expected]).map_err(|m| format_err(format!("npy data: {m}")))?;
    Ok((tensor, offset + header_len + expected))
}

/// A tensor from its elements' raw little-endian bytes in C order, as `.npy` files and the
/// Open Inference Protocol's binary tensors carry them. `data` must hold exactly the
/// elements of `shape`; bool elements must be bytes 0 or 1. The error says what is wrong.
pub fn from_le_bytes(dt: DatumType, shape: &[usize], data: &[u8]) -> Result<Tensor, String> {
    if !matches!(
        dt,
        DatumType::Bool
            | DatumType::U8
            | DatumType::I8
            | DatumType::U16
            | DatumType::I16
            | DatumType::U32
            | DatumType::I32
            | DatumType::U64
            | DatumType::I64
            | DatumType::F16
            | DatumType::F32
            | DatumType::F64
    ) {
        return Err(format!("{dt:?} elements cannot be read from raw bytes"));
    }
    let want = shape.iter().try_fold(dt.size_of(), |acc, d| acc.checked_mul(*d));
    if want != Some(data.len()) {
        let want = want.map_or_else(|| "more than memory holds".to_string(), |w| w.to_string());
        return Err(format!("{} bytes, but a {shape:?} tensor of {dt:?} takes {want}", data.len()));
    }
    // A bool other than 0 or 1 is undefined behaviour in Rust: refuse it before casting.
    if dt == DatumType::Bool && data.iter().any(|b| *b > 1) {
        return Err("bool elements hold bytes other than 0 and 1".to_string());
    }
    // Every target this agent ships for (x86_64, aarch64, armv7) is little-endian, so the
    // bytes are the elements' in-memory representation.
    // SAFETY: the length matches the shape and element size, and every dtype accepted above
    // is plain old data whose every bit pattern is valid (bool bytes checked).
    unsafe { Tensor::from_raw_dt(dt, shape, data) }.map_err(|e| e.to_string())
}

/// Reads a `.npy` file.
pub fn read(path: &Path) -> Result<Tensor, NpyError> {
    let mut bytes = vec![];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|source| NpyError::Io { path: path.display().to_string(), source })?;
    from_bytes(&bytes).map_err(|e| match e {
        NpyError::Format(m) => NpyError::Format(format!("{}: {m}", path.display())),
        e => e,
    })
}

/// Encodes a tensor as a version 1.0 `.npy` image.
pub fn to_bytes(tensor: &Tensor) -> Result<Vec<u8>, NpyError> {
    let descr = descr_for_dtype(tensor.datum_type())?;
    let shape = match tensor.rank() {
        0 => "()".to_string(),
        1 => format!("({},)", tensor.shape()[0]),
        _ => format!("({})", tensor.shape().iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    // The whole preamble is padded to a multiple of 64 bytes, ending with a newline.
    let unpadded = MAGIC.len() + 4 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let data = tensor.try_as_plain_ram().map_err(|e| format_err(format!("tensor not in plain memory: {e}")))?;
    let raw = data.as_bytes();
    let mut out = Vec::with_capacity(MAGIC.len() + 4 + header.len() + raw.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(raw);
    Ok(out)
}

/// Writes a tensor to a `.npy` file.
pub fn write(path: &Path, tensor: &Tensor) -> Result<(), NpyError> {
    let bytes = to_bytes(tensor)?;
    std::fs::File::create(path)
        .and_then(|mut f| f.write_all(&bytes))
        .map_err(|source| NpyError::Io { path: path.display().to_string(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_supported_dtype() {
        let tensors = vec![
            tensor1(&[f16::from_f32(1.5), f16::from_f32(-2.0)]),
            tensor2(&[[1.0f32, 2.0], [3.0, 4.0]]),
            tensor1(&[1.0f64]),
            tensor1(&[-3i8, 4]),
            tensor1(&[200u8]),
            tensor1(&[-300i16]),
            tensor1(&[1i32 << 20]),
            tensor1(&[-(1i64 << 40)]),
            tensor1(&[true, false]),
            tensor0(16000i64),
        ];
        for t in tensors {
            let back = from_bytes(&to_bytes(&t).unwrap()).unwrap();
            assert_eq!(back, t, "{t:?}");
        }
    }

    #[test]
    fn refuses_truncated_data() {
        let mut bytes = to_bytes(&tensor1(&[1.0f32, 2.0, 3.0])).unwrap();
        bytes.truncate(bytes.len() - 2);
        let err = from_bytes(&bytes).unwrap_err().to_string();
        assert!(err.contains("needs 12"), "{err}");
    }

    #[test]
    fn reads_images_that_follow_each_other() {
        let (a, b) = (tensor1(&[1.0f32, 2.0]), tensor2(&[[3i8, 4], [5, 6]]));
        let mut buf = to_bytes(&a).unwrap();
        buf.extend(to_bytes(&b).unwrap());
        let (first, used) = read_prefix(&buf).unwrap();
        let (second, rest) = read_prefix(&buf[used..]).unwrap();
        assert_eq!((first, second), (a, b));
        assert_eq!(used + rest, buf.len());
        assert!(from_bytes(&buf).is_err(), "trailing bytes are refused by from_bytes");
    }

    #[test]
    fn refuses_garbage() {
        assert!(from_bytes(b"").is_err());
        assert!(from_bytes(b"\x93NUMPY\x01\x00\xff\xff").is_err());
        assert!(from_bytes(&[0u8; 100]).is_err());
    }
}
