//! The graph side: [`replace_convs`] swaps [`DirectConv`] and [`NhwcDepthwise`] in for every
//! eligible `Conv` and fuses into them what follows (a per-channel bias add, a ReLU or ReLU6
//! clamp, a requantisation); [`optimize`] places that pass in tract's optimisation pipeline.

use tract_core::internal::*;
use tract_core::ops::cnn::Conv;

use super::{DirectConv, NhwcDepthwise};
use crate::engine::fuse::{self, single_use};
use crate::engine::tflite::qops::FakeQuant;

/// tract's `into_optimized`, with [`replace_convs`] run before declutter, which turns
/// pointwise convolutions into einsums, and after it, which folds explicit pads and batch
/// norms into the others and makes the depthwise kernels constant.
pub fn optimize(mut model: TypedModel) -> TractResult<TypedModel> {
    // Weights computed from constants (densified, dequantised) become constants first.
    model.prop_consts()?;
    replace_convs(&mut model, true)?;
    let mut model = model.into_decluttered()?;
    fuse::fuse(&mut model)?;
    replace_convs(&mut model, false)?;
    model.into_optimized()
}

/// One of the engine's convolution ops, while [`replace_convs`] fuses what follows it.
enum Replacement {
    Depthwise(NhwcDepthwise),
    Direct(DirectConv),
}

impl Replacement {
    /// Adds `values` (one per output channel) to the op's bias.
    fn add_bias(&mut self, values: &[f32]) -> TractResult<()> {
        let bias = match self {
            Replacement::Depthwise(op) => &mut op.bias,
            Replacement::Direct(op) => &mut op.bias,
        };
        *bias = add_to(bias, values)?;
        Ok(())
    }

    /// Requantises the op's output last.
    fn set_requant(&mut self, requant: FakeQuant) {
        match self {
            Replacement::Depthwise(op) => op.requant = Some(requant),
            Replacement::Direct(op) => op.requant = Some(requant),
        }
    }

    fn into_op(self) -> Box<dyn TypedOp> {
        match self {
            Replacement::Depthwise(op) => Box::new(op),
            Replacement::Direct(op) => Box::new(op),
        }
    }
}

/// `bias` with `values` added to its first `values.len()` elements.
fn add_to(bias: &Tensor, values: &[f32]) -> TractResult<Arc<Tensor>> {
    let mut bias = bias.clone();
    {
        let mut view = bias.try_as_plain_ram_mut()?;
        let slice = view.as_slice_mut::<f32>()?;
        ensure!(values.len() <= slice.len());
        for (b, v) in slice.iter_mut().zip(values) {
            *b += v;
        }
    }
    Ok(bias.into_arc_tensor())
}

/// The only reader of `outlet`, when it is the only one and not a model output.
fn sole_reader(model: &TypedModel, outlet: OutletId) -> TractResult<Option<(&TypedNode, usize)>> {
    if !single_use(model, outlet)? {
        return Ok(None);
    }
    let succ = model.outlet_successors(outlet)[0];
    let next = model.node(succ.node);
    if next.inputs.len() != 2 || model.outlet_fact(OutletId::new(next.id, 0))?.shape != model.outlet_fact(outlet)?.shape
    {
        return Ok(None);
    }
    Ok(Some((next, succ.slot)))
}

/// When the only reader of `outlet` is a float `add` of a constant that varies along the
/// channel (last) axis at most, that node and the value per channel.
fn bias_after(model: &TypedModel, outlet: OutletId, channels: usize) -> TractResult<Option<(usize, Vec<f32>)>> {
    let Some((next, slot)) = sole_reader(model, outlet)? else { return Ok(None) };
    let Some(bin) = next.op_as::<tract_core::ops::binary::TypedBinOp>() else { return Ok(None) };
    if !bin.0.is::<tract_core::ops::math::Add>() {
        return Ok(None);
    }
    let Some(value) = model.outlet_fact(next.inputs[1 - slot])?.konst.clone() else { return Ok(None) };
    if value.datum_type() != f32::datum_type() {
        return Ok(None);
    }
    let shape = value.shape();
    let per_channel = shape.last() == Some(&channels) && shape.iter().rev().skip(1).all(|d| *d == 1);
    let view = value.try_as_plain_ram()?;
    let values = view.as_slice::<f32>()?;
    if value.len() == 1 {
        Ok(Some((next.id, vec![values[0]; channels])))
    } else if per_channel {
        Ok(Some((next.id, values.to_vec())))
    } else {
        Ok(None)
    }
}

/// When the only reader of `outlet` is a TFLite `FakeQuant`, that node and the op.
fn requant_after(model: &TypedModel, outlet: OutletId) -> TractResult<Option<(usize, FakeQuant)>> {
    if !single_use(model, outlet)? {
        return Ok(None);
    }
    let next = model.node(model.outlet_successors(outlet)[0].node);
    Ok(next.op_as::<FakeQuant>().map(|q| (next.id, q.clone())))
}

/// When the only reader of `outlet` is a float `max` or `min` against one constant value (a
/// ReLU or ReLU6 after the convolution), that node and the bounds it applies.
fn clamp_after(model: &TypedModel, outlet: OutletId) -> TractResult<Option<(usize, f32, f32)>> {
    let Some((next, slot)) = sole_reader(model, outlet)? else { return Ok(None) };
    let Some(bin) = next.op_as::<tract_core::ops::binary::TypedBinOp>() else { return Ok(None) };
    let other = next.inputs[1 - slot];
    let Some(value) = model.outlet_fact(other)?.uniform.clone() else { return Ok(None) };
    if value.datum_type() != f32::datum_type() {
        return Ok(None);
    }
    let value = value.cast_to_scalar::<f32>()?;
    if bin.0.is::<tract_core::ops::math::Max>() {
        Ok(Some((next.id, value, f32::INFINITY)))
    } else if bin.0.is::<tract_core::ops::math::Min>() {
        Ok(Some((next.id, f32::NEG_INFINITY, value)))
    } else {
        Ok(None)
    }
}

/// Replaces every `Conv` of a model that [`DirectConv`] or [`NhwcDepthwise`] computes, only
/// the pointwise ones if `pointwise_only`; returns how many.
///
/// Before declutter only pointwise convolutions are replaced: declutter would turn them into
/// einsums, but it folds a preceding `Pad` into the others, which is better done first.
pub fn replace_convs(model: &mut TypedModel, pointwise_only: bool) -> TractResult<usize> {
    let mut replaced = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some(conv) = node.op_as::<Conv>() else { continue };
        if pointwise_only && conv.pool_spec.kernel_shape.iter().any(|k| *k != 1) {
            continue;
        }
        if node.inputs.len() != 2 && node.inputs.len() != 3 {
            continue;
        }
        let input = model.outlet_fact(node.inputs[0])?.clone();
        let Some(kernel) = model.outlet_fact(node.inputs[1])?.konst.clone() else { continue };
        // Declutter takes the bias out of a convolution into an `add` after it: see below.
        let bias = match node.inputs.get(2) {
            Some(b) => match model.outlet_fact(*b)?.konst.clone() {
                Some(b) => b,
                None => continue,
            },
            None => Tensor::zero::<f32>(&[0])?.into_arc_tensor(),
        };
        let co = conv.pool_spec.output_channels;
        let mut op = if let Some(op) = NhwcDepthwise::from_conv(conv, &input, &kernel, &bias)? {
            Replacement::Depthwise(op)
        } else if let Some(op) = DirectConv::from_conv(conv, &input, &kernel, &bias)? {
            Replacement::Direct(op)
        } else {
            continue;
        };
        // Absorb what tract would have fused into its own kernels: a constant per-channel
        // `add` (the bias), then for `DirectConv` the max/min-by-constant chain of a ReLU or
        // ReLU6, then a requantisation. Each would otherwise be one more pass over the output.
        let mut last = OutletId::new(id, 0);
        while let Some((next, values)) = bias_after(model, last, co)? {
            op.add_bias(&values)?;
            last = OutletId::new(next, 0);
        }
        if let Replacement::Direct(direct) = &mut op {
            while let Some((next, low, high)) = clamp_after(model, last)? {
                direct.clamp_to(low, high);
                last = OutletId::new(next, 0);
            }
        }
        if let Some((next, requant)) = requant_after(model, last)? {
            op.set_requant(requant);
            last = OutletId::new(next, 0);
        }
        let mut patch = TypedModelPatch::new(format!("direct conv {}", node.name));
        let x = patch.tap_model(model, node.inputs[0])?;
        let y = patch.wire_node(&node.name, op.into_op(), &[x])?;
        patch.shunt_outside(model, last, y[0])?;
        patch.apply(model)?;
        replaced += 1;
    }
    Ok(replaced)
}

#[cfg(test)]
mod tests {
    use tract_core::ops::cnn::{KernelFormat, PaddingSpec, PoolSpec};
    use tract_core::ops::nn::DataFormat;

    use super::super::testing::rnd;
    use super::*;

    /// conv -> max(0) -> min(6): the clamp ends up inside the direct op, no max or min node
    /// is left, and the outputs match tract's.
    #[test]
    fn a_following_relu6_is_fused() -> TractResult<()> {
        let mut seed = 9;
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([1, 6, 5, 3]))?;
        let k = model.add_const(
            "k",
            tensor1(&(0..8 * 27).map(|_| 8.0 * rnd(&mut seed)).collect::<Vec<_>>()).into_shape(&[8, 3, 3, 3])?,
        )?;
        let b = model.add_const("b", tensor1(&[0.5f32; 8]))?;
        let conv = Conv {
            pool_spec: PoolSpec {
                data_format: DataFormat::NHWC,
                kernel_shape: tvec![3, 3],
                padding: PaddingSpec::SameUpper,
                dilations: None,
                strides: None,
                input_channels: 3,
                output_channels: 8,
            },
            kernel_fmt: KernelFormat::OHWI,
            group: 1,
            q_params: None,
        };
        let y = model.wire_node("conv", conv, &[x, k, b])?[0];
        let zero = model.add_const("zero", tensor0(0f32))?;
        let six = model.add_const("six", tensor0(6f32))?;
        let y = tract_core::ops::change_axes::wire_with_rank_broadcast(
            "relu.max",
            &mut model,
            tract_core::ops::math::max(),
            &[y, zero],
        )?;
        let y = tract_core::ops::change_axes::wire_with_rank_broadcast(
            "relu.min",
            &mut model,
            tract_core::ops::math::min(),
            &[y[0], six],
        )?;
        model.select_output_outlets(&y)?;
        let input = tensor1(&(0..90).map(|_| rnd(&mut seed)).collect::<Vec<_>>()).into_shape(&[1, 6, 5, 3])?;
        let want = model.clone().into_optimized()?.into_runnable()?.run(tvec!(input.clone().into_tvalue()))?;
        let optimized = optimize(model)?;
        assert_eq!(optimized.nodes().len(), 2, "source and the direct conv only: {optimized}");
        let got = optimized.into_runnable()?.run(tvec!(input.into_tvalue()))?;
        let values = got[0].to_plain_array_view::<f32>()?;
        assert!(
            values.iter().any(|v| *v == 0.0) && values.iter().any(|v| *v == 6.0),
            "the test should clamp both ways"
        );
        got[0].close_enough(&want[0], Approximation::Approximate)
    }

    #[test]
    fn convolutions_it_does_not_compute_are_left_to_tract() -> TractResult<()> {
        // (input shape, kernel [h, w], input channels, output channels, why)
        type Case = ([usize; 4], [usize; 2], usize, usize, &'static str);
        let cases: [Case; 3] = [
            ([1, 32, 32, 8], [3, 3], 8, 24, "8 inputs to 24 outputs through a 3x3 kernel over 30x30"),
            ([1, 1, 1280, 1], [1, 512], 1, 24, "a 512-tap kernel (melspectrogram)"),
            ([1, 32, 32, 96], [1, 1], 96, 24, "a pointwise conv with 96 inputs"),
        ];
        for (shape, kernel, ci, co, why) in cases {
            let mut model = TypedModel::default();
            let x = model.add_source("x", f32::fact(shape))?;
            let k = model.add_const("k", Tensor::zero::<f32>(&[co, kernel[0], kernel[1], ci])?)?;
            let b = model.add_const("b", Tensor::zero::<f32>(&[co])?)?;
            let conv = Conv {
                pool_spec: PoolSpec {
                    data_format: DataFormat::NHWC,
                    kernel_shape: kernel.iter().copied().collect(),
                    padding: PaddingSpec::Valid,
                    dilations: None,
                    strides: None,
                    input_channels: ci,
                    output_channels: co,
                },
                kernel_fmt: KernelFormat::OHWI,
                group: 1,
                q_params: None,
            };
            let y = model.wire_node("conv", conv, &[x, k, b])?;
            model.select_output_outlets(&y)?;
            assert_eq!(replace_convs(&mut model, false)?, 0, "{why} goes to tract's matmul");
        }
        Ok(())
    }
}
