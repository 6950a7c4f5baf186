//! Element-wise operators: arithmetic (with TFLite's fused activations), unary math and
//! activations, PRELU, and the value conversions (CAST, QUANTIZE, DEQUANTIZE). A binary op
//! whose operand holds one value per channel and is computed at run time (a
//! squeeze-and-excitation scale) goes through the one-pass [`PerChannel`] op.

use tract_core::internal::*;
use tract_core::ops::cast::cast;
use tract_core::ops::math;
use tract_core::ops::nn;
use tract_tflite::tflite::ActivationFunctionType;

use super::super::channel::{ChannelOp, PerChannel};
use super::super::Graph;
use super::Node;

/// Element-wise binary operators.
#[derive(Debug, Clone, Copy)]
pub(super) enum Arith {
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

impl Graph<'_, '_> {
    /// A binary arithmetic operator, then its fused activation.
    pub(super) fn arith_op(&mut self, n: &Node, op: Arith, act: ActivationFunctionType) -> TractResult<TVec<OutletId>> {
        let l = n.label.as_str();
        let (a, b) = (self.input(n, 0)?, self.input(n, 1)?);
        let y = self.arith(l, op, a, b)?;
        Ok(tvec!(self.activation(l, y, act)?))
    }

    /// A unary operator that maps onto one tract op.
    pub(super) fn unary(&mut self, n: &Node, op: Box<dyn TypedOp>) -> TractResult<TVec<OutletId>> {
        let x = self.input(n, 0)?;
        self.wire(&n.label, op, &[x])
    }

    /// (a - b)^2.
    pub(super) fn squared_difference(&mut self, n: &Node) -> TractResult<TVec<OutletId>> {
        let l = n.label.as_str();
        let d = self.arith_op(n, Arith::Sub, ActivationFunctionType::NONE)?;
        self.wire(&format!("{l}.square"), math::square(), &d)
    }

    pub(super) fn leaky_relu(&mut self, n: &Node) -> TractResult<TVec<OutletId>> {
        let alpha = options!(n, builtin_options_as_leaky_relu_options).alpha();
        self.unary(n, Box::new(nn::leaky_relu(alpha)))
    }

    /// RELU, RELU6 and RELU_N1_TO_1: a clamp to `lo..=hi`.
    pub(super) fn relu(&mut self, n: &Node, lo: Option<f32>, hi: Option<f32>) -> TractResult<TVec<OutletId>> {
        let x = self.input(n, 0)?;
        Ok(tvec!(self.clamp(&n.label, x, lo, hi)?))
    }

    pub(super) fn prelu(&mut self, n: &Node) -> TractResult<TVec<OutletId>> {
        let l = n.label.as_str();
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

    pub(super) fn cast_op(&mut self, n: &Node) -> TractResult<TVec<OutletId>> {
        let dt = self.info(n.outputs[0])?.graph_dt();
        self.unary(n, Box::new(cast(dt)))
    }

    /// QUANTIZE and DENSIFY: the input, as is.
    pub(super) fn already_real(&mut self, n: &Node) -> TractResult<TVec<OutletId>> {
        // Values are already real; the requantisation after the op does QUANTIZE's
        // work, and DENSIFY's constant input was densified when read.
        Ok(tvec!(self.input(n, 0)?))
    }

    pub(super) fn dequantize(&mut self, n: &Node) -> TractResult<TVec<OutletId>> {
        let l = n.label.as_str();
        let x = self.input(n, 0)?;
        if self.fact(x)?.datum_type == f32::datum_type() {
            Ok(tvec!(x))
        } else {
            self.wire(l, cast(f32::datum_type()), &[x])
        }
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

    pub(super) fn activation(&mut self, base: &str, x: OutletId, act: ActivationFunctionType) -> TractResult<OutletId> {
        match act {
            ActivationFunctionType::NONE => Ok(x),
            ActivationFunctionType::RELU => self.clamp(base, x, Some(0.0), None),
            ActivationFunctionType::RELU6 => self.clamp(base, x, Some(0.0), Some(6.0)),
            ActivationFunctionType::RELU_N1_TO_1 => self.clamp(base, x, Some(-1.0), Some(1.0)),
            ActivationFunctionType::TANH => Ok(self.wire(&format!("{base}.tanh"), math::tanh(), &[x])?[0]),
            other => bail!("unsupported fused activation {other:?}"),
        }
    }
}
