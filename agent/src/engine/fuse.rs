//! Element-wise patterns tract 0.23 leaves as chains, fused into one op.
//!
//! - **Hard swish written out**: `x * min(max(x + 3, 0), 6) * (1/6)`, which is how ONNX
//!   exporters write MobileNetV3's activation (Add, Clip, Mul, Div). tract runs it as two
//!   passes over the tensor (an add/max/min chain, then a mul/mul chain); its own
//!   `hard_swish` op is one vectorised pass. ch_ppocr_mobile's classifier has 18.

use tract_core::internal::*;
use tract_core::ops::binary::TypedBinOp;
use tract_core::ops::math::{Add, Max, Min, Mul};

/// Applies every fusion of this module to a decluttered model; returns how many it made.
pub fn fuse(model: &mut TypedModel) -> TractResult<usize> {
    let mut fused = 0;
    for id in model.eval_order()? {
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
fn single_use(model: &TypedModel, outlet: OutletId) -> TractResult<bool> {
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

    #[test]
    fn a_pattern_whose_intermediate_is_read_elsewhere_is_left_alone() -> TractResult<()> {
        let mut model = written_out(true)?.into_decluttered()?;
        assert_eq!(fuse(&mut model)?, 0);
        Ok(())
    }
}
