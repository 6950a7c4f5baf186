//! Patterns tract 0.23 runs slowly, replaced by one faster op.
//!
//! - **Hard swish written out**: `x * min(max(x + 3, 0), 6) * (1/6)`, which is how ONNX
//!   exporters write MobileNetV3's activation (Add, Clip, Mul, Div). tract runs it as two
//!   passes over the tensor (an add/max/min chain, then a mul/mul chain); its own
//!   `hard_swish` op is one vectorised pass. ch_ppocr_mobile's classifier has 18.
//! - **Constant float padding** ([`ConstantPad`]): tract's `Pad` goes through ndarray slices,
//!   element by element; BlazeFace pads channels with zeros before every widening residual
//!   add (11 pads, a tenth of face_detection_short_range's time). This one fills the output
//!   and copies each innermost row of the input with one `copy_from_slice`.

use tract_core::internal::*;
use tract_core::ops::array::{Pad, PadMode};
use tract_core::ops::binary::TypedBinOp;
use tract_core::ops::math::{Add, Max, Min, Mul};

/// Applies every fusion of this module to a decluttered model; returns how many it made.
pub fn fuse(model: &mut TypedModel) -> TractResult<usize> {
    let mut fused = 0;
    for id in model.eval_order()? {
        if let Some(op) = ConstantPad::from_pad(model, id)? {
            let node = model.node(id);
            let mut patch = TypedModelPatch::new(format!("constant pad {}", node.name));
            let tapped = patch.tap_model(model, node.inputs[0])?;
            let y = patch.wire_node(&node.name, op, &[tapped])?;
            patch.shunt_outside(model, OutletId::new(id, 0), y[0])?;
            patch.apply(model)?;
            fused += 1;
            continue;
        }
        let Some(x) = hard_swish_input(model, id)? else { continue };
        let node = model.node(id);
        let mut patch = TypedModelPatch::new(format!("hard swish {}", node.name));
        let tapped = patch.tap_model(model, x)?;
        let y = patch.wire_node(&node.name, tract_core::ops::nn::hard_swish(), &[tapped])?;
        patch.shunt_outside(model, OutletId::new(id, 0), y[0])?;
        patch.apply(model)?;
        fused += 1;
    }
    Ok(fused)
}

/// Pads a float tensor with a constant: the output filled with the value, then every
/// innermost row of the input copied to its place.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ConstantPad {
    pads: Vec<(usize, usize)>,
    /// The value, as f32 bits.
    value: u32,
}

impl ConstantPad {
    /// The op for a tract `Pad` node with a constant float value, or `None`.
    fn from_pad(model: &TypedModel, id: usize) -> TractResult<Option<ConstantPad>> {
        let node = model.node(id);
        let Some(pad) = node.op_as::<Pad>() else { return Ok(None) };
        let PadMode::Constant(value) = &pad.mode else { return Ok(None) };
        let fact = model.outlet_fact(node.inputs[0])?;
        if fact.datum_type != f32::datum_type()
            || value.datum_type() != f32::datum_type()
            || value.len() != 1
            || fact.rank() == 0
            || pad.pads.len() != fact.rank()
        {
            return Ok(None);
        }
        Ok(Some(ConstantPad { pads: pad.pads.clone(), value: value.cast_to_scalar::<f32>()?.to_bits() }))
    }
}

impl Op for ConstantPad {
    fn name(&self) -> StaticName {
        "ConstantPad".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("pads: {:?}, value: {}", self.pads, f32::from_bits(self.value))])
    }

    op_as_typed_op!();
}

impl EvalOp for ConstantPad {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let shape = input.shape();
        ensure!(shape.len() == self.pads.len(), "input of rank {}, {} pads", shape.len(), self.pads.len());
        let out_shape: TVec<usize> = shape.iter().zip(&self.pads).map(|(d, (b, a))| d + b + a).collect();
        let mut output = Tensor::zero::<f32>(&out_shape)?;
        {
            let x = input.to_plain_array_view::<f32>()?;
            let x = x.as_slice().context("ConstantPad input must be contiguous")?;
            let mut view = output.try_as_plain_ram_mut()?;
            let out = view.as_slice_mut::<f32>()?;
            let value = f32::from_bits(self.value);
            if value != 0.0 {
                out.fill(value);
            }
            let rank = shape.len();
            let row = shape[rank - 1];
            // Output strides, in elements.
            let mut strides = vec![1usize; rank];
            for ax in (0..rank - 1).rev() {
                strides[ax] = strides[ax + 1] * out_shape[ax + 1];
            }
            let rows = x.len().checked_div(row).unwrap_or(0);
            let mut index = vec![0usize; rank - 1];
            for r in 0..rows {
                let mut at = self.pads[rank - 1].0;
                for (ax, i) in index.iter().enumerate() {
                    at += (i + self.pads[ax].0) * strides[ax];
                }
                out[at..at + row].copy_from_slice(&x[r * row..(r + 1) * row]);
                // Next input row: the innermost outer index moves first.
                for ax in (0..rank - 1).rev() {
                    index[ax] += 1;
                    if index[ax] < shape[ax] {
                        break;
                    }
                    index[ax] = 0;
                }
            }
        }
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for ConstantPad {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let shape: TVec<TDim> = inputs[0].shape.iter().zip(&self.pads).map(|(d, (b, a))| d.clone() + *b + *a).collect();
        Ok(tvec!(f32::fact(shape)))
    }

    as_op!();
}

/// The binary op of `node` if it is `Op`, with its two inputs.
fn binary<Op: tract_core::ops::binary::BinMiniOp>(model: &TypedModel, node: usize) -> Option<[OutletId; 2]> {
    let node = model.node(node);
    let bin = node.op_as::<TypedBinOp>()?;
    if !bin.0.is::<Op>() || node.inputs.len() != 2 {
        return None;
    }
    Some([node.inputs[0], node.inputs[1]])
}

/// The uniform float value of `outlet`, if it is a constant that is one value everywhere.
fn uniform(model: &TypedModel, outlet: OutletId) -> Option<f32> {
    let fact = model.outlet_fact(outlet).ok()?;
    let value = fact.uniform.as_ref()?;
    if value.datum_type() != f32::datum_type() {
        return None;
    }
    value.cast_to_scalar::<f32>().ok()
}

/// Of a binary op's inputs, the one that is not the constant `value`, if the other is.
fn other_than(model: &TypedModel, inputs: [OutletId; 2], value: f32) -> Option<OutletId> {
    let close = |o: OutletId| uniform(model, o).is_some_and(|v| (v - value).abs() <= value.abs() * 1e-6);
    match (close(inputs[0]), close(inputs[1])) {
        (false, true) => Some(inputs[0]),
        (true, false) => Some(inputs[1]),
        _ => None,
    }
}

/// Whether `outlet` is read by exactly one node and is not a model output, so that the node
/// producing it can go once that reader is replaced.
pub(crate) fn single_use(model: &TypedModel, outlet: OutletId) -> TractResult<bool> {
    Ok(model.outlet_successors(outlet).len() == 1 && !model.output_outlets()?.contains(&outlet))
}

/// When `id` is the last node of `x * min(max(x + 3, 0), 6) * (1/6)`, on f32, with every
/// intermediate used only inside the pattern: `x`.
fn hard_swish_input(model: &TypedModel, id: usize) -> TractResult<Option<OutletId>> {
    if model.outlet_fact(OutletId::new(id, 0))?.datum_type != f32::datum_type() {
        return Ok(None);
    }
    let Some(scaled) = binary::<Mul>(model, id) else { return Ok(None) };
    let Some(product) = other_than(model, scaled, 1.0 / 6.0) else { return Ok(None) };
    let Some(factors) = binary::<Mul>(model, product.node) else { return Ok(None) };
    for (gate, x) in [(factors[1], factors[0]), (factors[0], factors[1])] {
        let Some(min) = binary::<Min>(model, gate.node) else { continue };
        let Some(max_out) = other_than(model, min, 6.0) else { continue };
        let Some(max) = binary::<Max>(model, max_out.node) else { continue };
        let Some(add_out) = other_than(model, max, 0.0) else { continue };
        let Some(add) = binary::<Add>(model, add_out.node) else { continue };
        if other_than(model, add, 3.0) != Some(x) {
            continue;
        }
        let shapes_match = model.outlet_fact(x)?.shape == model.outlet_fact(OutletId::new(id, 0))?.shape;
        let private =
            [product, gate, max_out, add_out].iter().map(|o| single_use(model, *o)).collect::<TractResult<Vec<_>>>()?;
        if shapes_match && private.iter().all(|p| *p) {
            return Ok(Some(x));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_core::ops::change_axes::wire_with_rank_broadcast;
    use tract_core::ops::math;

    /// `x * clip(x + 3, 0, 6) / 6` as an ONNX exporter writes it, then optionally something
    /// else reading the inner `x + 3`.
    fn written_out(leak: bool) -> TractResult<TypedModel> {
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([1, 4, 5, 6]))?;
        let c = |model: &mut TypedModel, name: &str, v: f32| model.add_const(name, tensor0(v));
        let three = c(&mut model, "three", 3.0)?;
        let zero = c(&mut model, "zero", 0.0)?;
        let six = c(&mut model, "six", 6.0)?;
        let sixth = c(&mut model, "sixth", 1.0 / 6.0)?;
        let a = wire_with_rank_broadcast("add", &mut model, math::add(), &[x, three])?[0];
        let b = wire_with_rank_broadcast("max", &mut model, math::max(), &[a, zero])?[0];
        let m = wire_with_rank_broadcast("min", &mut model, math::min(), &[b, six])?[0];
        let p = model.wire_node("mul", math::mul(), &[x, m])?[0];
        let y = wire_with_rank_broadcast("div", &mut model, math::mul(), &[p, sixth])?[0];
        let mut outputs = vec![y];
        if leak {
            outputs.push(a);
        }
        model.select_output_outlets(&outputs)?;
        Ok(model)
    }

    #[test]
    fn a_written_out_hard_swish_becomes_one_op_with_the_same_values() -> TractResult<()> {
        let model = written_out(false)?.into_decluttered()?;
        let input: Tensor =
            tensor1(&(0..120).map(|i| (i as f32 - 60.0) / 7.0).collect::<Vec<_>>()).into_shape(&[1, 4, 5, 6])?;
        let want = model.clone().into_runnable()?.run(tvec!(input.clone().into_tvalue()))?;
        let mut fused = model;
        assert_eq!(fuse(&mut fused)?, 1);
        let fused = fused.into_decluttered()?;
        let ops: Vec<String> = fused.nodes().iter().map(|n| n.op().name().to_string()).collect();
        assert_eq!(ops, ["Source", "HardSwish"], "{fused}");
        let got = fused.into_runnable()?.run(tvec!(input.into_tvalue()))?;
        got[0].close_enough(&want[0], Approximation::Approximate)
    }

    /// Zero and non-zero values, pads on the channel axis only (BlazeFace), on spatial axes,
    /// and on every axis: the same values as tract's `Pad`.
    #[test]
    fn constant_pad_matches_tract() -> TractResult<()> {
        let cases: [(Vec<(usize, usize)>, f32); 4] = [
            (vec![(0, 0), (0, 0), (0, 0), (0, 8)], 0.0),
            (vec![(0, 0), (1, 2), (2, 1), (0, 0)], 0.0),
            (vec![(1, 0), (0, 1), (1, 1), (2, 3)], -1.5),
            (vec![(0, 0), (0, 0), (0, 0), (0, 0)], 0.0),
        ];
        for (pads, value) in cases {
            let mut model = TypedModel::default();
            let x = model.add_source("x", f32::fact([2, 3, 4, 5]))?;
            let y = model.wire_node(
                "pad",
                Pad { pads: pads.clone(), mode: PadMode::Constant(tensor0(value).into_arc_tensor()) },
                &[x],
            )?;
            model.select_output_outlets(&y)?;
            let input = tensor1(&(0..120).map(|i| i as f32).collect::<Vec<_>>()).into_shape(&[2, 3, 4, 5])?;
            let want = model.clone().into_runnable()?.run(tvec!(input.clone().into_tvalue()))?;
            let mut fused = model;
            assert_eq!(fuse(&mut fused)?, 1, "{pads:?}");
            assert!(fused.nodes().iter().any(|n| n.op_is::<ConstantPad>()));
            let got = fused.into_runnable()?.run(tvec!(input.into_tvalue()))?;
            assert_eq!(got[0].clone().into_tensor(), want[0].clone().into_tensor(), "{pads:?} {value}");
        }
        Ok(())
    }

    #[test]
    fn a_pattern_whose_intermediate_is_read_elsewhere_is_left_alone() -> TractResult<()> {
        let mut model = written_out(true)?.into_decluttered()?;
        assert_eq!(fuse(&mut model)?, 0);
        Ok(())
    }
}
