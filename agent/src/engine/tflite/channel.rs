//! Per-channel element-wise ops on NHWC tensors, in one pass.
//!
//! tract's generic broadcasting binary ops walk a `[1,1,1,C]` operand across `[N,H,W,C]`
//! several times slower than a flat loop, and TFLite models are full of exactly that shape:
//! PRELU's alpha, and the squeeze-and-excitation scales that MUL applies to every pixel.
//! Constant per-channel operands are left to tract, which folds them into the convolution
//! before them; these ops serve the ones it cannot fold.

use tract_core::internal::*;

/// What to do with each element `x` and its channel's value `v`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChannelOp {
    /// `x + v`
    Add,
    /// `x - v`
    Sub,
    /// `v - x`
    SubFrom,
    /// `x * v`
    Mul,
    /// `x / v`
    Div,
    /// `v / x`
    DivInto,
    /// `max(x, v)`
    Max,
    /// `min(x, v)`
    Min,
    /// `x` if positive, else `v * x`
    PRelu,
}

/// Applies `f` to every element and its channel's value; generic so that each op gets its
/// own vectorised loop.
#[inline]
fn per_channel(data: &mut [f32], v: &[f32], f: impl Fn(f32, f32) -> f32) {
    for pixel in data.chunks_exact_mut(v.len()) {
        for (x, v) in pixel.iter_mut().zip(v) {
            *x = f(*x, *v);
        }
    }
}

/// `x op v` where `x` is `[.., C]` f32 and `v` holds `C` values (any shape of that volume).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PerChannel(pub ChannelOp);

impl Op for PerChannel {
    fn name(&self) -> StaticName {
        "PerChannel".into()
    }
    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("{:?}", self.0)])
    }
    op_as_typed_op!();
}

impl EvalOp for PerChannel {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (x, v) = args_2!(inputs);
        let mut x = x.into_tensor();
        let v = v.try_as_plain_ram()?;
        let v = v.as_slice::<f32>()?;
        let c = *x.shape().last().context("per-channel op on a scalar")?;
        ensure!(v.len() == c, "{} channel values for {c} channels", v.len());
        if c > 0 {
            let mut view = x.try_as_plain_ram_mut()?;
            let data = view.as_slice_mut::<f32>()?;
            match self.0 {
                ChannelOp::Add => per_channel(data, v, |x, v| x + v),
                ChannelOp::Sub => per_channel(data, v, |x, v| x - v),
                ChannelOp::SubFrom => per_channel(data, v, |x, v| v - x),
                ChannelOp::Mul => per_channel(data, v, |x, v| x * v),
                ChannelOp::Div => per_channel(data, v, |x, v| x / v),
                ChannelOp::DivInto => per_channel(data, v, |x, v| v / x),
                ChannelOp::Max => per_channel(data, v, f32::max),
                ChannelOp::Min => per_channel(data, v, f32::min),
                ChannelOp::PRelu => per_channel(data, v, |x, v| x.max(0.0) + v * x.min(0.0)),
            }
        }
        Ok(tvec!(x.into_tvalue()))
    }
}

impl TypedOp for PerChannel {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs[0].datum_type == f32::datum_type() && inputs[1].datum_type == f32::datum_type());
        let c = inputs[0].shape.last().context("per-channel op on a scalar")?;
        ensure!(inputs[1].shape.volume() == *c, "channel values {:?} for {c} channels", inputs[1].shape);
        Ok(tvec!(f32::fact(inputs[0].shape.clone())))
    }
    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(op: ChannelOp, x: Tensor, v: Tensor) -> Tensor {
        let out = PerChannel(op).eval_out_of_plan(tvec!(x.into_tvalue(), v.into_tvalue())).unwrap().unwrap();
        out[0].clone().into_tensor()
    }

    #[test]
    fn applies_each_channel_value_to_every_pixel() {
        let x = tensor3(&[[[1.0f32, -2.0], [-3.0, 4.0]]]);
        let v = tensor1(&[10.0f32, 0.5]);
        assert_eq!(run(ChannelOp::Mul, x.clone(), v.clone()), tensor3(&[[[10.0f32, -1.0], [-30.0, 2.0]]]));
        assert_eq!(run(ChannelOp::SubFrom, x.clone(), v.clone()), tensor3(&[[[9.0f32, 2.5], [13.0, -3.5]]]));
        assert_eq!(run(ChannelOp::PRelu, x, v), tensor3(&[[[1.0f32, -1.0], [-30.0, 4.0]]]));
    }
}
