//! Tensor descriptions and constant data from a TFLite flatbuffer.
//!
//! Every size is checked against the bytes actually present before anything is allocated:
//! a header that declares a tensor of several GB with a few bytes behind it is an error,
//! not an allocation.

use tract_core::internal::*;
use tract_tflite::tflite::{self as tfl, DimensionType, TensorType};

use super::qops::QParams;
use crate::engine::EngineError;

fn invalid(msg: impl Into<String>) -> EngineError {
    EngineError::Invalid(msg.into())
}

/// Quantisation of a tensor: per tensor (one scale) or per axis.
#[derive(Debug, Clone)]
pub struct Quant {
    pub scales: Vec<f32>,
    pub zero_points: Vec<i64>,
    pub axis: usize,
}

/// What the importer needs to know about one tensor of a subgraph.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// Element type in the file.
    pub dt: DatumType,
    /// Static shape (`shape`), with 1 where the signature is dynamic.
    pub shape: Vec<usize>,
    /// Shape signature: `None` for a dynamic dimension.
    pub signature: Vec<Option<usize>>,
    pub quant: Option<Quant>,
}

impl TensorInfo {
    /// Whether values of this tensor are integers standing for reals. The importer carries
    /// those as real f32.
    pub fn is_quantized(&self) -> bool {
        self.quant.is_some() && matches!(self.dt, DatumType::I8 | DatumType::U8 | DatumType::I16 | DatumType::I32)
    }

    /// Per-tensor parameters, for activations.
    pub fn qparams(&self) -> Option<QParams> {
        let q = self.quant.as_ref().filter(|_| self.is_quantized())?;
        Some(QParams { scale: q.scales[0], zero_point: q.zero_points[0], dt: self.dt })
    }

    /// The element type the graph carries for this tensor.
    pub fn graph_dt(&self) -> DatumType {
        if self.is_quantized() {
            DatumType::F32
        } else {
            self.dt
        }
    }
}

pub fn datum_type(t: TensorType) -> Result<DatumType, EngineError> {
    Ok(match t {
        TensorType::FLOAT32 => DatumType::F32,
        TensorType::FLOAT16 => DatumType::F16,
        TensorType::FLOAT64 => DatumType::F64,
        TensorType::INT8 => DatumType::I8,
        TensorType::UINT8 => DatumType::U8,
        TensorType::INT16 => DatumType::I16,
        TensorType::UINT16 => DatumType::U16,
        TensorType::INT32 => DatumType::I32,
        TensorType::UINT32 => DatumType::U32,
        TensorType::INT64 => DatumType::I64,
        TensorType::UINT64 => DatumType::U64,
        TensorType::BOOL => DatumType::Bool,
        // Resource handles never become graph values; the importer tracks them itself.
        TensorType::RESOURCE => DatumType::Blob,
        other => return Err(invalid(format!("unsupported tensor type {other:?}"))),
    })
}

pub fn tensor_info(sg: &tfl::SubGraph, ix: i32) -> Result<TensorInfo, EngineError> {
    let tensors = sg.tensors().ok_or_else(|| invalid("subgraph has no tensor table"))?;
    if ix < 0 || ix as usize >= tensors.len() {
        return Err(invalid(format!("tensor index {ix} out of range ({} tensors)", tensors.len())));
    }
    let t = tensors.get(ix as usize);
    let name = t.name().unwrap_or("").to_string();
    let dt = datum_type(t.type_()).map_err(|e| invalid(format!("tensor {name:?}: {e}")))?;
    let dims = |v: Option<flatbuffers::Vector<i32>>| -> Vec<i32> { v.map(|v| v.iter().collect()).unwrap_or_default() };
    let raw_shape = dims(t.shape());
    if raw_shape.iter().any(|d| *d < -1) {
        return Err(invalid(format!("tensor {name:?}: bad shape {raw_shape:?}")));
    }
    let raw_sig = dims(t.shape_signature());
    let signature: Vec<Option<usize>> = if raw_sig.len() == raw_shape.len() {
        raw_sig.iter().map(|d| (*d >= 0).then_some(*d as usize)).collect()
    } else {
        raw_shape.iter().map(|d| (*d >= 0).then_some(*d as usize)).collect()
    };
    let shape = raw_shape.iter().map(|d| (*d).max(1) as usize).collect();
    let quant = t.quantization().and_then(|q| {
        let scales: Vec<f32> = q.scale()?.iter().collect();
        let zero_points: Vec<i64> = q.zero_point().map(|z| z.iter().collect()).unwrap_or_default();
        if scales.is_empty() {
            return None;
        }
        let zero_points = if zero_points.len() == scales.len() { zero_points } else { vec![0; scales.len()] };
        Some(Quant { scales, zero_points, axis: q.quantized_dimension().max(0) as usize })
    });
    Ok(TensorInfo { name, dt, shape, signature, quant })
}

/// The constant behind a tensor, if its buffer holds data. Sparse tensors are densified;
/// quantised ones are returned as stored (integers).
pub fn constant(model: &tfl::Model, sg: &tfl::SubGraph, ix: i32) -> Result<Option<Tensor>, EngineError> {
    let info = tensor_info(sg, ix)?;
    let t = sg.tensors().expect("checked by tensor_info").get(ix as usize);
    let buffers = model.buffers().ok_or_else(|| invalid("model has no buffer table"))?;
    let bix = t.buffer() as usize;
    if bix == 0 {
        return Ok(None);
    }
    if bix >= buffers.len() {
        return Err(invalid(format!("tensor {:?}: buffer {bix} out of range", info.name)));
    }
    let Some(data) = buffers.get(bix).data() else { return Ok(None) };
    let data = data.bytes();
    if data.is_empty() {
        return Ok(None);
    }
    if info.dt == DatumType::Blob {
        return Err(invalid(format!("tensor {:?}: constant of unsupported type", info.name)));
    }
    if let Some(sparsity) = t.sparsity() {
        return densify(&info, &sparsity, data).map(Some);
    }
    raw_tensor(&info.name, info.dt, &info.shape, data).map(Some)
}

fn checked_bytes(name: &str, dt: DatumType, shape: &[usize]) -> Result<usize, EngineError> {
    shape
        .iter()
        .try_fold(dt.size_of(), |acc, d| acc.checked_mul(*d))
        .ok_or_else(|| invalid(format!("tensor {name:?}: shape {shape:?} overflows")))
}

fn raw_tensor(name: &str, dt: DatumType, shape: &[usize], data: &[u8]) -> Result<Tensor, EngineError> {
    let need = checked_bytes(name, dt, shape)?;
    if need != data.len() {
        return Err(invalid(format!(
            "tensor {name:?}: shape {shape:?} of {dt:?} needs {need} bytes, buffer holds {}",
            data.len()
        )));
    }
    if dt == DatumType::Bool {
        let v: Vec<bool> = data.iter().map(|b| *b != 0).collect();
        return tract_ndarray::ArrayD::from_shape_vec(shape, v)
            .map(|a| a.into_tensor())
            .map_err(|e| invalid(format!("tensor {name:?}: {e}")));
    }
    // SAFETY: the byte length matches the shape and element size, and `dt` is plain data.
    unsafe { Tensor::from_raw_dt(dt, shape, data) }.map_err(|e| invalid(format!("tensor {name:?}: {e}")))
}

/// Converts integer weights to real f32 with their (per-tensor or per-axis) parameters.
pub fn dequantize_constant(info: &TensorInfo, t: &Tensor) -> Result<Tensor, EngineError> {
    let q = info.quant.as_ref().ok_or_else(|| invalid(format!("tensor {:?} is not quantised", info.name)))?;
    let mut out = t.cast_to::<f32>().map_err(|e| invalid(format!("{e}")))?.into_owned();
    let shape = out.shape().to_vec();
    let per_axis = q.scales.len() > 1;
    if per_axis && (q.axis >= shape.len() || shape[q.axis] != q.scales.len()) {
        return Err(invalid(format!(
            "tensor {:?}: {} scales for axis {} of shape {shape:?}",
            info.name,
            q.scales.len(),
            q.axis
        )));
    }
    let inner: usize = shape.iter().skip(q.axis + 1).product();
    let axis_len = if per_axis { shape[q.axis] } else { 1 };
    {
        let mut view = out.try_as_plain_ram_mut().map_err(|e| invalid(format!("{e}")))?;
        for (i, x) in view.as_slice_mut::<f32>().map_err(|e| invalid(format!("{e}")))?.iter_mut().enumerate() {
            let c = if per_axis { (i / inner.max(1)) % axis_len } else { 0 };
            *x = q.scales[c] * (*x - q.zero_points[c] as f32);
        }
    }
    Ok(out)
}

/// Indices of a sparse dimension, whatever integer width the file uses.
fn index_vector(dm: &tfl::DimensionMetadata, segments: bool) -> Result<Vec<usize>, EngineError> {
    let v: Option<Vec<usize>> = if segments {
        dm.array_segments_as_int_32_vector()
            .and_then(|v| v.values())
            .map(|v| v.iter().map(|x| x.max(0) as usize).collect())
            .or_else(|| {
                dm.array_segments_as_uint_16_vector()
                    .and_then(|v| v.values())
                    .map(|v| v.iter().map(|x| x as usize).collect())
            })
            .or_else(|| {
                dm.array_segments_as_uint_8_vector()
                    .and_then(|v| v.values())
                    .map(|v| v.iter().map(|x| x as usize).collect())
            })
    } else {
        dm.array_indices_as_int_32_vector()
            .and_then(|v| v.values())
            .map(|v| v.iter().map(|x| x.max(0) as usize).collect())
            .or_else(|| {
                dm.array_indices_as_uint_16_vector()
                    .and_then(|v| v.values())
                    .map(|v| v.iter().map(|x| x as usize).collect())
            })
            .or_else(|| {
                dm.array_indices_as_uint_8_vector()
                    .and_then(|v| v.values())
                    .map(|v| v.iter().map(|x| x as usize).collect())
            })
    };
    v.ok_or_else(|| invalid("sparse dimension without index vector"))
}

enum Level {
    Dense(usize),
    Sparse { segments: Vec<usize>, indices: Vec<usize> },
}

/// Expands a sparse constant (TFLite's `SparsityParameters`: a traversal order over the
/// dense dimensions followed by block dimensions, each level dense or CSR) into a dense
/// tensor of the declared shape.
pub fn densify(info: &TensorInfo, sp: &tfl::SparsityParameters, data: &[u8]) -> Result<Tensor, EngineError> {
    let name = &info.name;
    let bad = |m: &str| invalid(format!("sparse tensor {name:?}: {m}"));
    let rank = info.shape.len();
    let order: Vec<usize> =
        sp.traversal_order().map(|v| v.iter().map(|x| x.max(0) as usize).collect()).unwrap_or_default();
    let block_map: Vec<usize> =
        sp.block_map().map(|v| v.iter().map(|x| x.max(0) as usize).collect()).unwrap_or_default();
    let metas = sp.dim_metadata().ok_or_else(|| bad("no dimension metadata"))?;
    if order.len() != metas.len() || order.len() != rank + block_map.len() {
        return Err(bad("traversal order, block map and metadata disagree"));
    }
    if order.iter().any(|o| *o >= order.len()) || block_map.iter().any(|b| *b >= rank) {
        return Err(bad("traversal order or block map out of range"));
    }
    let levels = metas
        .iter()
        .map(|dm| {
            Ok(if dm.format() == DimensionType::DENSE {
                Level::Dense(dm.dense_size().max(0) as usize)
            } else {
                Level::Sparse { segments: index_vector(&dm, true)?, indices: index_vector(&dm, false)? }
            })
        })
        .collect::<Result<Vec<_>, EngineError>>()?;
    // Block sizes: the dense size of each block level.
    let mut block_size = vec![1usize; block_map.len()];
    for (level, o) in order.iter().enumerate() {
        if *o >= rank {
            match &levels[level] {
                Level::Dense(n) => block_size[*o - rank] = *n,
                Level::Sparse { .. } => return Err(bad("sparse block dimension")),
            }
        }
    }
    let esize = info.dt.size_of();
    let total = checked_bytes(name, info.dt, &info.shape)?;
    if !data.len().is_multiple_of(esize) {
        return Err(bad("data length is not a whole number of elements"));
    }
    let mut dense = vec![0u8; total];
    let strides: Vec<usize> = (0..rank).map(|d| info.shape[d + 1..].iter().product()).collect();
    let mut src = 0usize;
    let mut idx = vec![0usize; order.len()];

    struct Walk<'a> {
        levels: &'a [Level],
        order: &'a [usize],
        block_map: &'a [usize],
        block_size: &'a [usize],
        shape: &'a [usize],
        strides: &'a [usize],
        rank: usize,
        esize: usize,
        data: &'a [u8],
    }

    fn walk(
        w: &Walk,
        level: usize,
        prev: usize,
        idx: &mut [usize],
        src: &mut usize,
        dense: &mut [u8],
    ) -> Result<(), EngineError> {
        if level == w.levels.len() {
            let mut orig = vec![0usize; w.rank];
            for (i, o) in w.order.iter().enumerate().take(w.rank) {
                orig[*o] = idx[i];
            }
            for (i, o) in w.order.iter().enumerate().skip(w.rank) {
                let b = *o - w.rank;
                let d = w.block_map[b];
                orig[d] = orig[d] * w.block_size[b] + idx[i];
            }
            if orig.iter().zip(w.shape).any(|(i, n)| i >= n) {
                return Err(invalid("sparse index outside the dense shape"));
            }
            let flat: usize = orig.iter().zip(w.strides).map(|(i, s)| i * s).sum();
            let from = *src * w.esize;
            let chunk =
                w.data.get(from..from + w.esize).ok_or_else(|| invalid("sparse data shorter than its indices"))?;
            dense[flat * w.esize..(flat + 1) * w.esize].copy_from_slice(chunk);
            *src += 1;
            return Ok(());
        }
        match &w.levels[level] {
            Level::Dense(n) => {
                for i in 0..*n {
                    idx[level] = i;
                    walk(w, level + 1, prev * n + i, idx, src, dense)?;
                }
            }
            Level::Sparse { segments, indices } => {
                if prev + 1 < segments.len() {
                    let (a, b) = (segments[prev], segments[prev + 1]);
                    if a > b || b > indices.len() {
                        return Err(invalid("sparse segments out of range"));
                    }
                    for (i, ix) in indices.iter().enumerate().take(b).skip(a) {
                        idx[level] = *ix;
                        walk(w, level + 1, i, idx, src, dense)?;
                    }
                }
            }
        }
        Ok(())
    }

    let w = Walk {
        levels: &levels,
        order: &order,
        block_map: &block_map,
        block_size: &block_size,
        shape: &info.shape,
        strides: &strides,
        rank,
        esize,
        data,
    };
    walk(&w, 0, 0, &mut idx, &mut src, &mut dense)?;
    raw_tensor(name, info.dt, &info.shape, &dense)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(shape: &[usize]) -> TensorInfo {
        TensorInfo {
            name: "w".into(),
            dt: DatumType::F32,
            shape: shape.to_vec(),
            signature: shape.iter().map(|d| Some(*d)).collect(),
            quant: None,
        }
    }

    #[test]
    fn dequantizes_per_axis() {
        let mut i = info(&[2, 2]);
        i.dt = DatumType::I8;
        i.quant = Some(Quant { scales: vec![0.5, 2.0], zero_points: vec![0, 1], axis: 0 });
        let t = dequantize_constant(&i, &tensor2(&[[2i8, 4], [1, 3]])).unwrap();
        assert_eq!(t, tensor2(&[[1.0f32, 2.0], [0.0, 4.0]]));
    }

    #[test]
    fn raw_tensor_refuses_a_declared_size_larger_than_the_buffer() {
        // 2^28 floats (1 GiB) declared, 4 bytes present: an error, and nothing allocated. The
        // size fits a 32-bit usize, so armv7 reaches the same check (2^31 floats overflowed
        // there and failed earlier, with another message).
        let err = raw_tensor("big", DatumType::F32, &[1 << 14, 1 << 14], &[0u8; 4]).unwrap_err();
        assert!(err.to_string().contains("buffer holds 4"), "{err}");
    }
}
