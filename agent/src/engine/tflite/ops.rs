//! One translator per TFLite operator, onto tract-core ops.
//!
//! Values flow as tract outlets. Quantised tensors flow as real f32 (see [`super::qops`]);
//! after each operator whose output is quantised, [`Graph::translate`] snaps the result
//! onto the output's grid, except for pure data movement that keeps the parameters.

use tract_core::internal::*;
use tract_core::ops::array::{Gather, Pad, PadMode, Slice, StridedSlice, TypedConcat};
use tract_core::ops::cast::cast;
use tract_core::ops::change_axes::{perm_to_ops, wire_with_rank_broadcast};
use tract_core::ops::cnn::{Conv, Deconv, KernelFormat, MaxPool, PaddingSpec, PoolSpec, SumPool};
use tract_core::ops::einsum::EinSum;
use tract_core::ops::logic::IfThenElse;
use tract_core::ops::math;
use tract_core::ops::nn::{self as nn, CoordTransformer, DataFormat, Interpolator, Nearest, Reduce, Reducer, Resize};
use tract_tflite::tflite::{self as tfl, ActivationFunctionType, BuiltinOperator as B, MirrorPadMode, Padding};

use super::channel::{ChannelOp, PerChannel};
use super::pool::GlobalAveragePool;
use super::qops::FakeQuant;
use super::{Graph, OpCode};

/// Element-wise binary operators.
#[derive(Debug, Clone, Copy)]
enum Arith {
    Add,
    Sub,
    Mul,
    Div,
    Max,
    Min,
    Pow,
}

impl Arith {
    fn tract(self) -> tract_core::ops::binary::TypedBinOp {
        match self {
            Arith::Add => math::add(),
            Arith::Sub => math::sub(),
            Arith::Mul => math::mul(),
            Arith::Div => math::div(),
            Arith::Max => math::max(),
            Arith::Min => math::min(),
            Arith::Pow => math::pow(),
        }
    }

    /// The per-channel form; `swapped` when the full tensor is the right-hand operand.
    fn channel(self, swapped: bool) -> Option<ChannelOp> {
        Some(match (self, swapped) {
            (Arith::Add, _) => ChannelOp::Add,
            (Arith::Mul, _) => ChannelOp::Mul,
            (Arith::Max, _) => ChannelOp::Max,
            (Arith::Min, _) => ChannelOp::Min,
            (Arith::Sub, false) => ChannelOp::Sub,
            (Arith::Sub, true) => ChannelOp::SubFrom,
            (Arith::Div, false) => ChannelOp::Div,
            (Arith::Div, true) => ChannelOp::DivInto,
            (Arith::Pow, _) => return None,
        })
    }
}

/// An operator being translated.
pub(crate) struct Node<'o> {
    pub code: OpCode,
    pub flat: tfl::Operator<'o>,
    pub inputs: Vec<i32>,
    pub outputs: Vec<i32>,
    pub label: String,
}

macro_rules! options {
    ($node: expr, $accessor: ident) => {
        $node
            .flat
            .$accessor()
            .with_context(|| format!("missing or mistyped options ({:?})", $node.flat.builtin_options_type()))?
    };
}

fn normalize_axis(axis: i64, rank: usize) -> TractResult<usize> {
    let r = rank as i64;
    ensure!(axis >= -r && axis < r, "axis {axis} out of range for rank {rank}");
    Ok(if axis < 0 { (axis + r) as usize } else { axis as usize })
}

fn ints(t: &Tensor) -> TractResult<Vec<i64>> {
    Ok(t.cast_to::<i64>()?.try_as_plain_ram()?.as_slice::<i64>()?.to_vec())
}

fn padding(p: Padding) -> TractResult<PaddingSpec> {
    Ok(match p {
        Padding::SAME => PaddingSpec::SameUpper,
        Padding::VALID => PaddingSpec::Valid,
        other => bail!("unsupported padding {other:?}"),
    })
}

/// Operators that only move data: with the same quantisation on both sides they need no
/// requantisation.
fn moves_data_only(code: &OpCode) -> bool {
    matches!(
        code,
        OpCode::Builtin(
            B::RESHAPE
                | B::SQUEEZE
                | B::EXPAND_DIMS
                | B::TRANSPOSE
                | B::STRIDED_SLICE
                | B::SLICE
                | B::SPLIT
                | B::SPLIT_V
                | B::CONCATENATION
                | B::GATHER
                | B::DEPTH_TO_SPACE
                | B::SPACE_TO_DEPTH
                | B::PAD
                | B::PADV2
                | B::MAX_POOL_2D
        )
    )
}

impl Graph<'_, '_> {
    fn input(&mut self, n: &Node, k: usize) -> TractResult<OutletId> {
        match n.inputs.get(k) {
            Some(ix) if *ix >= 0 => self.value(*ix),
            _ => bail!("input {k} is missing"),
        }
    }

    fn opt_input(&mut self, n: &Node, k: usize) -> TractResult<Option<OutletId>> {
        match n.inputs.get(k) {
            Some(ix) if *ix >= 0 => Ok(Some(self.value(*ix)?)),
            _ => Ok(None),
        }
    }

    fn input_shape(&mut self, n: &Node, k: usize, what: &str) -> TractResult<Vec<usize>> {
        let o = self.input(n, k)?;
        Ok(self.fact(o)?.shape.as_concrete().context(what.to_string())?.to_vec())
    }

    fn fact(&self, o: OutletId) -> TractResult<TypedFact> {
        Ok(self.target.outlet_fact(o)?.clone())
    }

    fn input_konst(&mut self, n: &Node, k: usize, what: &str) -> TractResult<Arc<Tensor>> {
        let ix = *n.inputs.get(k).filter(|ix| **ix >= 0).with_context(|| format!("{what} is missing"))?;
        self.konst(ix, what)
    }

    fn scalar(&mut self, base: &str, v: f32) -> TractResult<OutletId> {
        let name = self.name(base);
        self.target.add_const(name, tensor0(v))
    }

    fn binary(
        &mut self,
        base: &str,
        op: tract_core::ops::binary::TypedBinOp,
        a: OutletId,
        b: OutletId,
    ) -> TractResult<OutletId> {
        let name = self.name(base);
        Ok(wire_with_rank_broadcast(name, self.target, op, &[a, b])?[0])
    }

    /// When `small` holds one value per channel of `big` (shape `[1,..,1,C]` against
    /// `[..,C]`), `small` flattened to `[C]`.
    fn channel_operand(&mut self, base: &str, big: OutletId, small: OutletId) -> TractResult<Option<OutletId>> {
        let (fb, fs) = (self.fact(big)?, self.fact(small)?);
        if fb.datum_type != f32::datum_type() || fs.datum_type != f32::datum_type() || fb.rank() < 2 || fs.rank() == 0 {
            return Ok(None);
        }
        let Some(c) = fb.shape.last().and_then(|d| d.to_usize().ok()) else { return Ok(None) };
        let dims: Vec<Option<usize>> = fs.shape.iter().map(|d| d.to_usize().ok()).collect();
        let (last, lead) = dims.split_last().expect("rank checked");
        let per_channel = fs.rank() <= fb.rank()
            && *last == Some(c)
            && lead.iter().all(|d| *d == Some(1))
            && fb.shape.iter().rev().skip(1).any(|d| *d != 1.to_dim());
        if !per_channel {
            return Ok(None);
        }
        if fs.rank() == 1 {
            return Ok(Some(small));
        }
        Ok(Some(self.reshape(&format!("{base}.channels"), small, &[c.to_dim()])?))
    }

    /// An element-wise binary op. A per-channel operand computed at run time (a
    /// squeeze-and-excitation scale) goes through [`PerChannel`]; constants stay with tract,
    /// which folds them into the convolution before.
    fn arith(&mut self, base: &str, op: Arith, a: OutletId, b: OutletId) -> TractResult<OutletId> {
        let (ka, kb) = (self.fact(a)?.konst.is_some(), self.fact(b)?.konst.is_some());
        if let (false, false, Some(forward), Some(swapped)) = (ka, kb, op.channel(false), op.channel(true)) {
            if let Some(v) = self.channel_operand(base, a, b)? {
                return Ok(self.wire(base, PerChannel(forward), &[a, v])?[0]);
            }
            if let Some(v) = self.channel_operand(base, b, a)? {
                return Ok(self.wire(base, PerChannel(swapped), &[b, v])?[0]);
            }
        }
        self.binary(base, op.tract(), a, b)
    }

    fn clamp(&mut self, base: &str, x: OutletId, lo: Option<f32>, hi: Option<f32>) -> TractResult<OutletId> {
        let mut x = x;
        if let Some(lo) = lo {
            let c = self.scalar(&format!("{base}.lo"), lo)?;
            x = self.binary(&format!("{base}.max"), math::max(), x, c)?;
        }
        if let Some(hi) = hi {
            let c = self.scalar(&format!("{base}.hi"), hi)?;
            x = self.binary(&format!("{base}.min"), math::min(), x, c)?;
        }
        Ok(x)
    }

    fn activation(&mut self, base: &str, x: OutletId, act: ActivationFunctionType) -> TractResult<OutletId> {
        match act {
            ActivationFunctionType::NONE => Ok(x),
            ActivationFunctionType::RELU => self.clamp(base, x, Some(0.0), None),
            ActivationFunctionType::RELU6 => self.clamp(base, x, Some(0.0), Some(6.0)),
            ActivationFunctionType::RELU_N1_TO_1 => self.clamp(base, x, Some(-1.0), Some(1.0)),
            ActivationFunctionType::TANH => Ok(self.wire(&format!("{base}.tanh"), math::tanh(), &[x])?[0]),
            other => bail!("unsupported fused activation {other:?}"),
        }
    }

    fn reshape(&mut self, base: &str, x: OutletId, to: &[TDim]) -> TractResult<OutletId> {
        let from = self.fact(x)?.shape.to_tvec();
        if from.as_slice() == to {
            return Ok(x);
        }
        Ok(self.wire(base, AxisOp::Reshape(0, from, to.into()), &[x])?[0])
    }

    /// Target shape of a reshape, resolving one `-1` against the input volume.
    fn reshape_dims(&self, x: OutletId, spec: &[i64]) -> TractResult<TVec<TDim>> {
        let volume: TDim = self.fact(x)?.shape.iter().product();
        let known: i64 = spec.iter().filter(|d| **d >= 0).product();
        ensure!(spec.iter().filter(|d| **d < 0).count() <= 1, "more than one -1 in shape {spec:?}");
        spec.iter()
            .map(|d| {
                if *d < 0 {
                    ensure!(known > 0, "cannot infer a dimension next to a zero in {spec:?}");
                    Ok(volume.clone() / known as u64)
                } else {
                    Ok(d.to_dim())
                }
            })
            .collect()
    }

    /// Translates one operator and records its outputs.
    pub(crate) fn translate(&mut self, n: &Node) -> TractResult<()> {
        let outs = self.translate_op(n)?;
        // Resource handles are tracked by the importer, not carried as graph values.
        let mut valued = vec![];
        for t in n.outputs.iter().filter(|t| **t >= 0) {
            let info = self.info(*t)?;
            if info.dt != DatumType::Blob {
                valued.push((*t, info));
            }
        }
        ensure!(outs.len() >= valued.len(), "translator produced {} outputs for {}", outs.len(), valued.len());
        for (k, ((t, info), o)) in valued.into_iter().zip(outs).enumerate() {
            let t = &t;
            let mut o = o;
            if let Some(q) = info.qparams() {
                // A variable holds values already on its grid (assigned from quantised
                // tensors, or initialised from integers), so reading it needs no snapping.
                let keeps = n.code == OpCode::Builtin(B::READ_VARIABLE)
                    || moves_data_only(&n.code)
                        && n.inputs
                            .first()
                            .filter(|i| **i >= 0)
                            .map(|i| self.info(*i).ok().and_then(|i| i.qparams()) == Some(q))
                            .unwrap_or(false);
                if !keeps {
                    o = self.wire(&format!("{}.requant{k}", n.label), FakeQuant(q), &[o])?[0];
                }
            }
            self.values.insert(*t, o);
        }
        Ok(())
    }

    fn translate_op(&mut self, n: &Node) -> TractResult<TVec<OutletId>> {
        let label = n.label.clone();
        let l = label.as_str();
        let code = match &n.code {
            OpCode::Builtin(b) => *b,
            OpCode::Custom(c) if c == "Convolution2DTransposeBias" => return self.conv_transpose_bias(n),
            OpCode::Custom(c) => bail!("unsupported custom operator {c}"),
        };
        let unary = |g: &mut Self, op: Box<dyn TypedOp>| -> TractResult<TVec<OutletId>> {
            let x = g.input(n, 0)?;
            g.wire(l, op, &[x])
        };
        let binary = |g: &mut Self, op: Arith, act: ActivationFunctionType| -> TractResult<TVec<OutletId>> {
            let (a, b) = (g.input(n, 0)?, g.input(n, 1)?);
            let y = g.arith(l, op, a, b)?;
            Ok(tvec!(g.activation(l, y, act)?))
        };
        match code {
            B::ADD => binary(self, Arith::Add, options!(n, builtin_options_as_add_options).fused_activation_function()),
            B::SUB => binary(self, Arith::Sub, options!(n, builtin_options_as_sub_options).fused_activation_function()),
            B::MUL => binary(self, Arith::Mul, options!(n, builtin_options_as_mul_options).fused_activation_function()),
            B::DIV => binary(self, Arith::Div, options!(n, builtin_options_as_div_options).fused_activation_function()),
            B::MAXIMUM => binary(self, Arith::Max, ActivationFunctionType::NONE),
            B::MINIMUM => binary(self, Arith::Min, ActivationFunctionType::NONE),
            B::POW => binary(self, Arith::Pow, ActivationFunctionType::NONE),
            B::SQUARED_DIFFERENCE => {
                let d = binary(self, Arith::Sub, ActivationFunctionType::NONE)?;
                self.wire(&format!("{l}.square"), math::square(), &d)
            }
            B::ABS => unary(self, Box::new(math::abs())),
            B::CEIL => unary(self, Box::new(math::ceil())),
            B::COS => unary(self, Box::new(math::cos())),
            B::EXP => unary(self, Box::new(math::exp())),
            B::FLOOR => unary(self, Box::new(math::floor())),
            B::LOG => unary(self, Box::new(math::ln())),
            B::NEG => unary(self, Box::new(math::neg())),
            B::RSQRT => unary(self, Box::new(math::rsqrt())),
            B::SIN => unary(self, Box::new(math::sin())),
            B::SQRT => unary(self, Box::new(math::sqrt())),
            B::SQUARE => unary(self, Box::new(math::square())),
            B::TANH => unary(self, Box::new(math::tanh())),
            B::LOGISTIC => unary(self, Box::new(nn::sigmoid())),
            B::HARD_SWISH => unary(self, Box::new(nn::hard_swish())),
            B::LEAKY_RELU => {
                let alpha = options!(n, builtin_options_as_leaky_relu_options).alpha();
                unary(self, Box::new(nn::leaky_relu(alpha)))
            }
            B::RELU => {
                let x = self.input(n, 0)?;
                Ok(tvec!(self.clamp(l, x, Some(0.0), None)?))
            }
            B::RELU6 => {
                let x = self.input(n, 0)?;
                Ok(tvec!(self.clamp(l, x, Some(0.0), Some(6.0))?))
            }
            B::RELU_N1_TO_1 => {
                let x = self.input(n, 0)?;
                Ok(tvec!(self.clamp(l, x, Some(-1.0), Some(1.0))?))
            }
            B::PRELU => {
                // prelu(x) = max(x, 0) + alpha * min(x, 0), in one pass when alpha is per channel.
                let (x, alpha) = (self.input(n, 0)?, self.input(n, 1)?);
                if let Some(v) = self.channel_operand(l, x, alpha)? {
                    return self.wire(l, PerChannel(ChannelOp::PRelu), &[x, v]);
                }
                let pos = self.clamp(&format!("{l}.pos"), x, Some(0.0), None)?;
                let neg = self.clamp(&format!("{l}.neg"), x, None, Some(0.0))?;
                let scaled = self.binary(&format!("{l}.scaled"), math::mul(), alpha, neg)?;
                Ok(tvec!(self.binary(l, math::add(), pos, scaled)?))
            }
            B::CAST => {
                let dt = self.info(n.outputs[0])?.graph_dt();
                unary(self, Box::new(cast(dt)))
            }
            B::QUANTIZE | B::DENSIFY => {
                // Values are already real; the requantisation after the op does QUANTIZE's
                // work, and DENSIFY's constant input was densified when read.
                Ok(tvec!(self.input(n, 0)?))
            }
            B::DEQUANTIZE => {
                let x = self.input(n, 0)?;
                if self.fact(x)?.datum_type == f32::datum_type() {
                    Ok(tvec!(x))
                } else {
                    self.wire(l, cast(f32::datum_type()), &[x])
                }
            }
            B::CONV_2D => self.conv(n),
            B::DEPTHWISE_CONV_2D => self.depthwise_conv(n),
            B::TRANSPOSE_CONV => self.transpose_conv(n),
            B::MAX_POOL_2D | B::AVERAGE_POOL_2D => self.pool(n, code == B::MAX_POOL_2D),
            B::FULLY_CONNECTED => self.fully_connected(n),
            B::BATCH_MATMUL => self.batch_matmul(n),
            B::RESHAPE => {
                let x = self.input(n, 0)?;
                let spec: Vec<i64> = match n.inputs.get(1).filter(|i| **i >= 0) {
                    Some(_) => ints(&*self.input_konst(n, 1, "new shape")?)?,
                    None => match n.flat.builtin_options_as_reshape_options().and_then(|o| o.new_shape()) {
                        Some(s) => s.iter().map(|d| d as i64).collect(),
                        None => self
                            .info(n.outputs[0])?
                            .signature
                            .iter()
                            .map(|d| d.map(|d| d as i64).unwrap_or(-1))
                            .collect(),
                    },
                };
                let dims = self.reshape_dims(x, &spec)?;
                Ok(tvec!(self.reshape(l, x, &dims)?))
            }
            B::SQUEEZE => {
                let x = self.input(n, 0)?;
                let fact = self.fact(x)?;
                let rank = fact.rank();
                let dims: Vec<i64> = n
                    .flat
                    .builtin_options_as_squeeze_options()
                    .and_then(|o| o.squeeze_dims())
                    .map(|v| v.iter().map(|d| d as i64).collect())
                    .unwrap_or_default();
                let mut axes: Vec<usize> = if dims.is_empty() {
                    (0..rank).filter(|a| fact.shape[*a] == 1.to_dim()).collect()
                } else {
                    dims.iter().map(|d| normalize_axis(*d, rank)).collect::<TractResult<_>>()?
                };
                axes.sort();
                axes.dedup();
                let mut x = x;
                for a in axes.iter().rev() {
                    x = self.wire(&format!("{l}.rm{a}"), AxisOp::Rm(*a), &[x])?[0];
                }
                Ok(tvec!(x))
            }
            B::EXPAND_DIMS => {
                let x = self.input(n, 0)?;
                let rank = self.fact(x)?.rank();
                let axis = ints(&*self.input_konst(n, 1, "axis")?)?;
                ensure!(axis.len() == 1, "EXPAND_DIMS takes one axis");
                let axis = normalize_axis(axis[0], rank + 1)?;
                self.wire(l, AxisOp::Add(axis), &[x])
            }
            B::TRANSPOSE => {
                let x = self.input(n, 0)?;
                let rank = self.fact(x)?.rank();
                let perm = ints(&*self.input_konst(n, 1, "permutation")?)?;
                let perm: Vec<usize> = perm.iter().map(|p| normalize_axis(*p, rank)).collect::<TractResult<_>>()?;
                let mut sorted = perm.clone();
                sorted.sort();
                ensure!(sorted == (0..rank).collect::<Vec<_>>(), "bad permutation {perm:?}");
                let mut x = x;
                for (i, op) in perm_to_ops(&perm).into_iter().enumerate() {
                    x = self.wire(&format!("{l}.{i}"), op, &[x])?[0];
                }
                Ok(tvec!(x))
            }
            B::CONCATENATION => {
                let opts = options!(n, builtin_options_as_concatenation_options);
                let inputs = (0..n.inputs.len()).map(|k| self.input(n, k)).collect::<TractResult<Vec<_>>>()?;
                let rank = self.fact(inputs[0])?.rank();
                let axis = normalize_axis(opts.axis() as i64, rank)?;
                let y = self.wire(l, TypedConcat { axis }, &inputs)?[0];
                Ok(tvec!(self.activation(l, y, opts.fused_activation_function())?))
            }
            B::PAD | B::PADV2 | B::MIRROR_PAD => {
                let x = self.input(n, 0)?;
                let fact = self.fact(x)?;
                let pads = ints(&*self.input_konst(n, 1, "paddings")?)?;
                ensure!(pads.len() == 2 * fact.rank() && pads.iter().all(|p| *p >= 0), "bad paddings {pads:?}");
                let pads: Vec<(usize, usize)> = pads.chunks(2).map(|c| (c[0] as usize, c[1] as usize)).collect();
                let mode = if code == B::MIRROR_PAD {
                    match options!(n, builtin_options_as_mirror_pad_options).mode() {
                        MirrorPadMode::REFLECT => PadMode::Reflect,
                        other => bail!("unsupported mirror pad mode {other:?}"),
                    }
                } else if code == B::PADV2 && n.inputs.get(2).is_some_and(|i| *i >= 0) {
                    let v = self.input_konst(n, 2, "pad value")?;
                    PadMode::Constant(v.cast_to_dt(fact.datum_type)?.into_owned().into_arc_tensor())
                } else {
                    PadMode::Constant(Tensor::zero_scalar_dt(fact.datum_type)?.into_arc_tensor())
                };
                self.wire(l, Pad { pads, mode }, &[x])
            }
            B::STRIDED_SLICE => {
                let opts = options!(n, builtin_options_as_strided_slice_options);
                ensure!(
                    opts.ellipsis_mask() == 0 && opts.new_axis_mask() == 0,
                    "ellipsis and new-axis masks are not supported"
                );
                let inputs = (0..4).map(|k| self.input(n, k)).collect::<TractResult<Vec<_>>>()?;
                let op = StridedSlice {
                    optional_axes_input: None,
                    optional_steps_input: Some(3),
                    begin_mask: opts.begin_mask() as i64,
                    end_mask: opts.end_mask() as i64,
                    shrink_axis_mask: opts.shrink_axis_mask() as i64,
                };
                self.wire(l, op, &inputs)
            }
            B::SLICE => {
                let x = self.input(n, 0)?;
                let fact = self.fact(x)?;
                let begin = ints(&*self.input_konst(n, 1, "begin")?)?;
                let size = ints(&*self.input_konst(n, 2, "size")?)?;
                ensure!(begin.len() == fact.rank() && size.len() == fact.rank(), "SLICE begin/size rank mismatch");
                let mut x = x;
                for axis in 0..fact.rank() {
                    let start = begin[axis].to_dim();
                    let end =
                        if size[axis] < 0 { fact.shape[axis].clone() } else { (begin[axis] + size[axis]).to_dim() };
                    if start == 0.to_dim() && end == fact.shape[axis] {
                        continue;
                    }
                    x = self.wire(&format!("{l}.{axis}"), Slice::new(axis, start, end), &[x])?[0];
                }
                Ok(tvec!(x))
            }
            B::SPLIT => {
                let x = self.input(n, 1)?;
                let rank = self.fact(x)?.rank();
                let axis = normalize_axis(ints(&*self.input_konst(n, 0, "axis")?)?[0], rank)?;
                let count = options!(n, builtin_options_as_split_options).num_splits().max(1) as usize;
                let dim = self.fact(x)?.shape[axis].to_usize().context("SPLIT needs a known dimension")?;
                ensure!(dim % count == 0, "cannot split {dim} in {count}");
                self.split(l, x, axis, &vec![dim / count; count])
            }
            B::SPLIT_V => {
                let x = self.input(n, 0)?;
                let fact = self.fact(x)?;
                let axis = normalize_axis(ints(&*self.input_konst(n, 2, "axis")?)?[0], fact.rank())?;
                let dim = fact.shape[axis].to_usize().context("SPLIT_V needs a known dimension")? as i64;
                let mut sizes = ints(&*self.input_konst(n, 1, "size_splits")?)?;
                let known: i64 = sizes.iter().filter(|s| **s >= 0).sum();
                if let Some(s) = sizes.iter_mut().find(|s| **s < 0) {
                    *s = dim - known;
                }
                ensure!(
                    sizes.iter().sum::<i64>() == dim && sizes.iter().all(|s| *s >= 0),
                    "split sizes {sizes:?} do not add up to {dim}"
                );
                let sizes: Vec<usize> = sizes.iter().map(|s| *s as usize).collect();
                self.split(l, x, axis, &sizes)
            }
            B::GATHER => {
                let opts = options!(n, builtin_options_as_gather_options);
                ensure!(opts.batch_dims() == 0, "GATHER with batch_dims is not supported");
                let x = self.input(n, 0)?;
                let idx = self.input(n, 1)?;
                let axis = normalize_axis(opts.axis() as i64, self.fact(x)?.rank())?;
                let idx = self.wire(&format!("{l}.indices"), cast(i64::datum_type()), &[idx])?[0];
                self.wire(l, Gather::new(axis), &[x, idx])
            }
            B::ARG_MAX | B::ARG_MIN => {
                let x = self.input(n, 0)?;
                let rank = self.fact(x)?.rank();
                let axis = normalize_axis(ints(&*self.input_konst(n, 1, "axis")?)?[0], rank)?;
                let reducer = if code == B::ARG_MAX { Reducer::ArgMax(false) } else { Reducer::ArgMin(false) };
                let y = self.wire(l, Reduce { axes: tvec!(axis), reducer }, &[x])?[0];
                let y = self.wire(&format!("{l}.rm"), AxisOp::Rm(axis), &[y])?[0];
                let dt = self.info(n.outputs[0])?.graph_dt();
                self.wire(&format!("{l}.cast"), cast(dt), &[y])
            }
            B::MEAN | B::SUM | B::REDUCE_MAX | B::REDUCE_MIN | B::REDUCE_PROD => self.reduce(n, code),
            B::SOFTMAX => {
                let beta = options!(n, builtin_options_as_softmax_options).beta();
                let mut x = self.input(n, 0)?;
                if beta != 1.0 {
                    let b = self.scalar(&format!("{l}.beta"), beta)?;
                    x = self.binary(&format!("{l}.scaled"), math::mul(), x, b)?;
                }
                let rank = self.fact(x)?.rank();
                let op = nn::Softmax { axes: tvec!(rank - 1), quant_output_dt: None, kind: Default::default() };
                self.wire(l, op, &[x])
            }
            B::RESIZE_BILINEAR => {
                let o = options!(n, builtin_options_as_resize_bilinear_options);
                let ct = if o.align_corners() {
                    CoordTransformer::AlignCorners
                } else if o.half_pixel_centers() {
                    CoordTransformer::HalfPixel
                } else {
                    CoordTransformer::Asymmetric
                };
                self.resize(n, ct, Interpolator::Linear, Nearest::Floor)
            }
            B::RESIZE_NEAREST_NEIGHBOR => {
                let o = options!(n, builtin_options_as_resize_nearest_neighbor_options);
                let (ct, nearest) = if o.align_corners() {
                    (CoordTransformer::AlignCorners, Nearest::RoundPreferCeil)
                } else if o.half_pixel_centers() {
                    (CoordTransformer::TfHalfPixelForNn, Nearest::Floor)
                } else {
                    (CoordTransformer::Asymmetric, Nearest::Floor)
                };
                self.resize(n, ct, Interpolator::Nearest, nearest)
            }
            B::DEPTH_TO_SPACE => {
                let b = options!(n, builtin_options_as_depth_to_space_options).block_size().max(1) as usize;
                self.depth_to_space(n, b)
            }
            B::SPACE_TO_DEPTH => {
                let b = options!(n, builtin_options_as_space_to_depth_options).block_size().max(1) as usize;
                self.space_to_depth(n, b)
            }
            B::VAR_HANDLE => {
                let o = options!(n, builtin_options_as_var_handle_options);
                let key = format!("{}/{}", o.container().unwrap_or(""), o.shared_name().unwrap_or(""));
                self.vars.slot(&key);
                self.handles.insert(n.outputs[0], key);
                Ok(tvec!())
            }
            B::READ_VARIABLE => {
                let key = self.handle(n)?;
                let info = self.info(n.outputs[0])?;
                let existing = {
                    let slot = self.vars.slot(&key);
                    slot.current.or(slot.source)
                };
                let o = match existing {
                    Some(o) => o,
                    None => {
                        let name = self.name(&format!("state.{key}"));
                        let fact = info.graph_dt().fact(info.shape.clone());
                        let o = self.target.add_source(name, fact)?;
                        self.vars.slot(&key).source = Some(o);
                        o
                    }
                };
                Ok(tvec!(o))
            }
            B::ASSIGN_VARIABLE => {
                let key = self.handle(n)?;
                let mut v = self.input(n, 1)?;
                let source = self.vars.slot(&key).source;
                if let Some(src) = source {
                    let want = self.fact(src)?;
                    let got = self.fact(v)?;
                    ensure!(
                        want.shape == got.shape,
                        "variable {key:?} assigned shape {:?}, holds {:?}",
                        got.shape,
                        want.shape
                    );
                    if want.datum_type != got.datum_type {
                        v = self.wire(&format!("{l}.cast"), cast(want.datum_type), &[v])?[0];
                    }
                }
                self.vars.slot(&key).current = Some(v);
                Ok(tvec!())
            }
            B::CALL_ONCE => Ok(tvec!()), // run once at load, see `run_init`
            B::IF => self.if_op(n),
            other => bail!("no translator for {other:?}"),
        }
    }

    fn handle(&self, n: &Node) -> TractResult<String> {
        let ix = *n.inputs.first().context("missing resource input")?;
        self.handles.get(&ix).cloned().context("resource does not come from a VAR_HANDLE of this subgraph")
    }

    fn split(&mut self, l: &str, x: OutletId, axis: usize, sizes: &[usize]) -> TractResult<TVec<OutletId>> {
        let mut start = 0;
        let mut outs = tvec!();
        for (i, s) in sizes.iter().enumerate() {
            outs.push(self.wire(&format!("{l}.{i}"), Slice::new(axis, start, start + s), &[x])?[0]);
            start += s;
        }
        Ok(outs)
    }

    fn reduce(&mut self, n: &Node, code: B) -> TractResult<TVec<OutletId>> {
        let l = n.label.as_str();
        let x = self.input(n, 0)?;
        let fact = self.fact(x)?;
        let keep = options!(n, builtin_options_as_reducer_options).keep_dims();
        let mut axes: Vec<usize> = ints(&*self.input_konst(n, 1, "axes")?)?
            .iter()
            .map(|a| normalize_axis(*a, fact.rank()))
            .collect::<TractResult<_>>()?;
        axes.sort();
        axes.dedup();
        let reducer = match code {
            B::MEAN | B::SUM => Reducer::Sum,
            B::REDUCE_MAX => Reducer::Max,
            B::REDUCE_MIN => Reducer::Min,
            _ => Reducer::Prod,
        };
        let mut y = self.wire(l, Reduce { axes: axes.iter().copied().collect(), reducer }, &[x])?[0];
        if code == B::MEAN {
            let count: TDim = axes.iter().map(|a| fact.shape[*a].clone()).product();
            let count = count.to_usize().context("MEAN over a dimension unknown at load")?;
            let k = self.scalar(&format!("{l}.inv_count"), 1.0 / count as f32)?;
            y = self.binary(&format!("{l}.mean"), math::mul(), y, k)?;
        }
        if !keep {
            for a in axes.iter().rev() {
                y = self.wire(&format!("{l}.rm{a}"), AxisOp::Rm(*a), &[y])?[0];
            }
        }
        Ok(tvec!(y))
    }

    fn conv_inputs(
        &mut self,
        n: &Node,
        out_channels: usize,
        kernel_ix: usize,
        bias_ix: usize,
    ) -> TractResult<(OutletId, OutletId)> {
        let k = self.input(n, kernel_ix)?;
        let k = if self.fact(k)?.datum_type != f32::datum_type() {
            self.wire(&format!("{}.kernel_f32", n.label), cast(f32::datum_type()), &[k])?[0]
        } else {
            k
        };
        let bias = match self.opt_input(n, bias_ix)? {
            Some(b) if self.fact(b)?.datum_type == f32::datum_type() => b,
            Some(b) => self.wire(&format!("{}.bias_f32", n.label), cast(f32::datum_type()), &[b])?[0],
            None => {
                let name = self.name(&format!("{}.bias", n.label));
                self.target.add_const(name, Tensor::zero::<f32>(&[out_channels])?)?
            }
        };
        Ok((k, bias))
    }

    fn conv(&mut self, n: &Node) -> TractResult<TVec<OutletId>> {
        let l = n.label.as_str();
        let o = options!(n, builtin_options_as_conv_2_doptions);
        let x = self.input(n, 0)?;
        let kshape = self.input_shape(n, 1, "kernel shape must be known")?;
        ensure!(kshape.len() == 4, "CONV_2D kernel must be OHWI, got {kshape:?}");
        let ci = self.fact(x)?.shape[3].to_usize().context("input channels must be known")?;
        ensure!(kshape[3] > 0 && ci % kshape[3] == 0, "input channels {ci} vs kernel {kshape:?}");
        let (k, bias) = self.conv_inputs(n, kshape[0], 1, 2)?;
        let conv = Conv {
            pool_spec: PoolSpec {
                data_format: DataFormat::NHWC,
                kernel_shape: tvec!(kshape[1], kshape[2]),
                padding: padding(o.padding())?,
                dilations: Some(tvec!(o.dilation_h_factor().max(1) as usize, o.dilation_w_factor().max(1) as usize)),
                strides: Some(tvec!(o.stride_h().max(1) as usize, o.stride_w().max(1) as usize)),
                input_channels: ci,
                output_channels: kshape[0],
            },
            kernel_fmt: KernelFormat::OHWI,
            group: ci / kshape[3],
            q_params: None,
        };
        let y = self.wire(l, conv, &[x, k, bias])?[0];
        Ok(tvec!(self.activation(l, y, o.fused_activation_function())?))
    }

    fn depthwise_conv(&mut self, n: &Node) -> TractResult<TVec<OutletId>> {
        let l = n.label.as_str();
        let o = options!(n, builtin_options_as_depthwise_conv_2_doptions);
        let x = self.input(n, 0)?;
        let kshape = self.input_shape(n, 1, "kernel shape must be known")?;
        ensure!(kshape.len() == 4 && kshape[0] == 1, "DEPTHWISE_CONV_2D kernel must be [1,H,W,C*M], got {kshape:?}");
        let ci = self.fact(x)?.shape[3].to_usize().context("input channels must be known")?;
        let co = kshape[3];
        ensure!(ci > 0 && co % ci == 0, "depthwise: {co} output channels for {ci} inputs");
        let (k, bias) = self.conv_inputs(n, co, 1, 2)?;
        // [1,H,W,C*M] -> [C*M,1,H,W]: OIHW with one input channel per group.
        let k = self.wire(&format!("{l}.kernel_oihw"), AxisOp::Move(3, 0), &[k])?[0];
        let conv = Conv {
            pool_spec: PoolSpec {
                data_format: DataFormat::NHWC,
                kernel_shape: tvec!(kshape[1], kshape[2]),
                padding: padding(o.padding())?,
                dilations: Some(tvec!(o.dilation_h_factor().max(1) as usize, o.dilation_w_factor().max(1) as usize)),
                strides: Some(tvec!(o.stride_h().max(1) as usize, o.stride_w().max(1) as usize)),
                input_channels: ci,
                output_channels: co,
            },
            kernel_fmt: KernelFormat::OIHW,
            group: ci,
            q_params: None,
        };
        let y = self.wire(l, conv, &[x, k, bias])?[0];
        Ok(tvec!(self.activation(l, y, o.fused_activation_function())?))
    }

    /// Transposed convolution with an OHWI kernel, padded so that the output has the size the
    /// file declares (TFLite pads the way a forward convolution from output to input would).
    #[allow(clippy::too_many_arguments)]
    fn deconv(
        &mut self,
        n: &Node,
        x: OutletId,
        kernel_ix: usize,
        bias_ix: usize,
        same: bool,
        strides: [usize; 2],
        out_hw: Option<[usize; 2]>,
    ) -> TractResult<OutletId> {
        let l = n.label.as_str();
        let kshape = self.input_shape(n, kernel_ix, "kernel shape must be known")?;
        ensure!(kshape.len() == 4, "transposed convolution kernel must be OHWI, got {kshape:?}");
        let xf = self.fact(x)?;
        let ci = xf.shape[3].to_usize().context("input channels must be known")?;
        ensure!(ci == kshape[3], "kernel {kshape:?} for {ci} input channels");
        let (k, bias) = self.conv_inputs(n, kshape[0], kernel_ix, bias_ix)?;
        let mut before = tvec!();
        let mut after = tvec!();
        let mut adjustments = tvec!();
        for a in 0..2 {
            let input = xf.shape[1 + a].to_usize().context("spatial input size must be known")?;
            let kernel = kshape[1 + a];
            let full = (input - 1) * strides[a] + kernel;
            let out = match out_hw {
                Some(hw) => hw[a],
                None if same => input * strides[a],
                None => full,
            };
            if full >= out {
                let total = full - out;
                before.push(total / 2);
                after.push(total - total / 2);
                adjustments.push(0);
            } else {
                before.push(0);
                after.push(0);
                adjustments.push(out - full);
            }
        }
        let op = Deconv {
            pool_spec: PoolSpec {
                data_format: DataFormat::NHWC,
                kernel_shape: tvec!(kshape[1], kshape[2]),
                padding: PaddingSpec::Explicit(before, after),
                dilations: None,
                strides: Some(strides.iter().copied().collect()),
                input_channels: ci,
                output_channels: kshape[0],
            },
            kernel_format: KernelFormat::OHWI,
            adjustments,
            group: 1,
        };
        Ok(self.wire(l, op, &[x, k, bias])?[0])
    }

    fn declared_hw(&self, n: &Node) -> TractResult<Option<[usize; 2]>> {
        let info = self.info(n.outputs[0])?;
        Ok(match info.signature.as_slice() {
            [_, Some(h), Some(w), _] => Some([*h, *w]),
            _ => None,
        })
    }

    fn transpose_conv(&mut self, n: &Node) -> TractResult<TVec<OutletId>> {
        let o = options!(n, builtin_options_as_transpose_conv_options);
        let x = self.input(n, 2)?;
        let shape = ints(&*self.input_konst(n, 0, "output shape")?)?;
        ensure!(shape.len() == 4, "TRANSPOSE_CONV output shape must be NHWC");
        let out_hw = Some([shape[1] as usize, shape[2] as usize]);
        let strides = [o.stride_h().max(1) as usize, o.stride_w().max(1) as usize];
        let y = self.deconv(n, x, 1, 3, o.padding() == Padding::SAME, strides, out_hw)?;
        let l = n.label.clone();
        Ok(tvec!(self.activation(&l, y, o.fused_activation_function())?))
    }

    /// MediaPipe's `Convolution2DTransposeBias`: input, OHWI weights, bias; its options are
    /// a raw `TfLiteTransposeConvParams` (padding, stride_width, stride_height as i32).
    fn conv_transpose_bias(&mut self, n: &Node) -> TractResult<TVec<OutletId>> {
        let raw: Vec<u8> = n.flat.custom_options().map(|v| v.bytes().to_vec()).unwrap_or_default();
        ensure!(raw.len() >= 12, "Convolution2DTransposeBias options are {} bytes, expected 12", raw.len());
        let word = |i: usize| i32::from_le_bytes([raw[4 * i], raw[4 * i + 1], raw[4 * i + 2], raw[4 * i + 3]]);
        let (pad, stride_w, stride_h) = (word(0), word(1), word(2));
        ensure!(pad == 1 || pad == 2, "Convolution2DTransposeBias padding {pad} (1 = same, 2 = valid)");
        ensure!(stride_w > 0 && stride_h > 0, "Convolution2DTransposeBias strides {stride_h}x{stride_w}");
        let x = self.input(n, 0)?;
        let out_hw = self.declared_hw(n)?;
        let y = self.deconv(n, x, 1, 2, pad == 1, [stride_h as usize, stride_w as usize], out_hw)?;
        Ok(tvec!(y))
    }

    fn pool(&mut self, n: &Node, max: bool) -> TractResult<TVec<OutletId>> {
        let l = n.label.as_str();
        let o = options!(n, builtin_options_as_pool_2_doptions);
        let x = self.input(n, 0)?;
        let c = self.fact(x)?.shape[3].to_usize().context("channels must be known")?;
        let pool_spec = PoolSpec {
            data_format: DataFormat::NHWC,
            kernel_shape: tvec!(o.filter_height().max(1) as usize, o.filter_width().max(1) as usize),
            padding: padding(o.padding())?,
            dilations: None,
            strides: Some(tvec!(o.stride_h().max(1) as usize, o.stride_w().max(1) as usize)),
            input_channels: c,
            output_channels: c,
        };
        let (kh, kw) = (pool_spec.kernel_shape[0], pool_spec.kernel_shape[1]);
        let shape = self.fact(x)?.shape;
        let global = shape[1] == kh.to_dim() && shape[2] == kw.to_dim() && pool_spec.padding == PaddingSpec::Valid;
        let y = if max {
            self.wire(l, MaxPool { pool_spec, with_index_outputs: None }, &[x])?[0]
        } else if global {
            self.wire(l, GlobalAveragePool, &[x])?[0]
        } else {
            self.wire(l, SumPool { pool_spec, normalize: true, count_include_pad: false }, &[x])?[0]
        };
        Ok(tvec!(self.activation(l, y, o.fused_activation_function())?))
    }

    fn fully_connected(&mut self, n: &Node) -> TractResult<TVec<OutletId>> {
        let l = n.label.as_str();
        let o = options!(n, builtin_options_as_fully_connected_options);
        ensure!(
            o.weights_format() == tfl::FullyConnectedOptionsWeightsFormat::DEFAULT,
            "shuffled weights are not supported"
        );
        let x = self.input(n, 0)?;
        let (w, bias) = {
            let wshape = self.input_shape(n, 1, "weights shape must be known")?;
            ensure!(wshape.len() == 2, "FULLY_CONNECTED weights must be [out, in], got {wshape:?}");
            let (w, b) = self.conv_inputs(n, wshape[0], 1, 2)?;
            (w, (b, wshape[0], wshape[1]))
        };
        let (bias, out_features, in_features) = bias;
        let xf = self.fact(x)?;
        let lead: TVec<TDim> = xf.shape.iter().take(xf.rank().saturating_sub(1)).cloned().collect();
        let flat = if xf.rank() == 2 && xf.shape[1] == in_features.to_dim() {
            x
        } else {
            let volume: TDim = xf.shape.iter().product();
            self.reshape(&format!("{l}.flatten"), x, &[volume / in_features as u64, in_features.to_dim()])?
        };
        let y = self.wire(l, EinSum::new("BI,OI->BO".parse()?, f32::datum_type()), &[flat, w])?[0];
        let b = self.wire(&format!("{l}.bias_row"), AxisOp::Add(0), &[bias])?[0];
        let mut y = self.binary(&format!("{l}.bias"), math::add(), y, b)?;
        if o.keep_num_dims() {
            let mut shape = lead.clone();
            shape.push(out_features.to_dim());
            y = self.reshape(&format!("{l}.unflatten"), y, &shape)?;
        }
        Ok(tvec!(self.activation(l, y, o.fused_activation_function())?))
    }

    fn batch_matmul(&mut self, n: &Node) -> TractResult<TVec<OutletId>> {
        let l = n.label.as_str();
        let o = options!(n, builtin_options_as_batch_mat_mul_options);
        let mut a = self.input(n, 0)?;
        let mut b = self.input(n, 1)?;
        let (fa, fb) = (self.fact(a)?, self.fact(b)?);
        ensure!(fa.rank() >= 2 && fb.rank() >= 2, "BATCH_MATMUL needs rank 2 or more");
        let batch = fa.rank().max(fb.rank()) - 2;
        // Batch letters, aligned on the right; an axis of 1 facing a larger one is dropped so
        // that it broadcasts.
        let letters: Vec<char> = ('a'..='h').take(batch).collect();
        ensure!(batch <= letters.len(), "too many batch axes");
        let mut spec = |x: &mut OutletId, f: &TypedFact, other: &TypedFact, name: &str| -> TractResult<String> {
            let own = f.rank() - 2;
            let other_batch = other.rank() - 2;
            let mut s = String::new();
            let mut removed = 0;
            for i in 0..own {
                let letter = letters[batch - own + i];
                let mine = &f.shape[i];
                let theirs = (i + other_batch).checked_sub(own).map(|j| &other.shape[j]);
                if *mine == 1.to_dim() && theirs.is_some_and(|t| *t != 1.to_dim()) {
                    *x = self.wire(&format!("{l}.{name}.rm{i}"), AxisOp::Rm(i - removed), &[*x])?[0];
                    removed += 1;
                } else {
                    s.push(letter);
                }
            }
            Ok(s)
        };
        let sa = spec(&mut a, &fa, &fb, "a")?;
        let sb = spec(&mut b, &fb, &fa, "b")?;
        let out: String = letters.iter().collect();
        let ea = if o.adj_x() { "km" } else { "mk" };
        let eb = if o.adj_y() { "nk" } else { "kn" };
        let expr = format!("{sa}{ea},{sb}{eb}->{out}mn");
        self.wire(l, EinSum::new(expr.parse()?, f32::datum_type()), &[a, b])
    }

    fn resize(
        &mut self,
        n: &Node,
        ct: CoordTransformer,
        interpolator: Interpolator,
        nearest: Nearest,
    ) -> TractResult<TVec<OutletId>> {
        let l = n.label.as_str();
        let x = self.input(n, 0)?;
        let fact = self.fact(x)?;
        ensure!(fact.rank() == 4, "resize expects NHWC");
        let size = ints(&*self.input_konst(n, 1, "size")?)?;
        ensure!(size.len() == 2 && size.iter().all(|s| *s > 0), "bad resize size {size:?}");
        let full = tensor1(&[fact.shape[0].clone(), size[0].to_dim(), size[1].to_dim(), fact.shape[3].clone()]);
        let name = self.name(&format!("{l}.sizes"));
        let sizes = self.target.add_const(name, full)?;
        let op = Resize {
            coord_transformer: ct,
            interpolator,
            nearest,
            optional_scales_input: None,
            optional_sizes_input: Some(1),
        };
        self.wire(l, op, &[x, sizes])
    }

    fn depth_to_space(&mut self, n: &Node, b: usize) -> TractResult<TVec<OutletId>> {
        let l = n.label.as_str();
        let x = self.input(n, 0)?;
        let f = self.fact(x)?;
        ensure!(f.rank() == 4, "DEPTH_TO_SPACE expects NHWC");
        let c = f.shape[3].to_usize().context("channels must be known")?;
        ensure!(c % (b * b) == 0, "{c} channels do not split in blocks of {b}x{b}");
        let (h, w) = (f.shape[1].clone(), f.shape[2].clone());
        // [N,H,W,(by,bx,c)] -> [N,H,W,by,bx,c] -> [N,H,by,W,bx,c] -> [N,H*b,W*b,c]
        let y = self.wire(
            &format!("{l}.split"),
            AxisOp::Reshape(3, tvec!(c.to_dim()), tvec!(b.to_dim(), b.to_dim(), (c / (b * b)).to_dim())),
            &[x],
        )?[0];
        let y = self.wire(&format!("{l}.move"), AxisOp::Move(3, 2), &[y])?[0];
        let y =
            self.wire(&format!("{l}.merge_h"), AxisOp::Reshape(1, tvec!(h.clone(), b.to_dim()), tvec!(h * b)), &[y])?
                [0];
        self.wire(l, AxisOp::Reshape(2, tvec!(w.clone(), b.to_dim()), tvec!(w * b)), &[y])
    }

    fn space_to_depth(&mut self, n: &Node, b: usize) -> TractResult<TVec<OutletId>> {
        let l = n.label.as_str();
        let x = self.input(n, 0)?;
        let f = self.fact(x)?;
        ensure!(f.rank() == 4, "SPACE_TO_DEPTH expects NHWC");
        let h = f.shape[1].to_usize().context("height must be known")?;
        let w = f.shape[2].to_usize().context("width must be known")?;
        let c = f.shape[3].clone();
        ensure!(h % b == 0 && w % b == 0, "{h}x{w} does not split in blocks of {b}");
        // [N,H,W,C] -> [N,H/b,by,W/b,bx,C] -> [N,H/b,W/b,by,bx,C] -> [N,H/b,W/b,b*b*C]
        let y = self.wire(
            &format!("{l}.split_h"),
            AxisOp::Reshape(1, tvec!(h.to_dim()), tvec!((h / b).to_dim(), b.to_dim())),
            &[x],
        )?[0];
        let y = self.wire(
            &format!("{l}.split_w"),
            AxisOp::Reshape(3, tvec!(w.to_dim()), tvec!((w / b).to_dim(), b.to_dim())),
            &[y],
        )?[0];
        let y = self.wire(&format!("{l}.move"), AxisOp::Move(2, 3), &[y])?[0];
        self.wire(l, AxisOp::Reshape(3, tvec!(b.to_dim(), b.to_dim(), c.clone()), tvec!(c * (b * b))), &[y])
    }

    fn if_op(&mut self, n: &Node) -> TractResult<TVec<OutletId>> {
        let l = n.label.as_str();
        let o = options!(n, builtin_options_as_if_options);
        let (then_ix, else_ix) = (o.then_subgraph_index().max(0) as usize, o.else_subgraph_index().max(0) as usize);
        let cond = self.input(n, 0)?;
        let args = (1..n.inputs.len()).map(|k| self.input(n, k)).collect::<TractResult<Vec<_>>>()?;
        if let Some(k) = self.fact(cond)?.konst.clone() {
            let taken = if k.cast_to_scalar::<bool>()? { then_ix } else { else_ix };
            return self.inline(taken, &args);
        }
        let facts = args.iter().map(|a| self.fact(*a)).collect::<TractResult<Vec<_>>>()?;
        let then_body = self.standalone(then_ix, &facts)?;
        let else_body = self.standalone(else_ix, &facts)?;
        let cond = self.wire(&format!("{l}.cond"), cast(bool::datum_type()), &[cond])?[0];
        let mapping: Vec<usize> = (1..=args.len()).collect();
        let op = IfThenElse { then_body, then_input_mapping: mapping.clone(), else_body, else_input_mapping: mapping };
        let mut inputs = vec![cond];
        inputs.extend(args);
        self.wire(l, op, &inputs)
    }
}
