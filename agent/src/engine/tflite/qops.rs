//! Quantisation ops for the TFLite importer.
//!
//! Quantised TFLite graphs run here in "real" f32: every int8/uint8/int16 activation is
//! carried as the real number it stands for, `scale * (q - zero_point)`, and each op whose
//! output is quantised is followed by [`FakeQuant`], which snaps the value onto the output
//! grid (round half away from zero, clamp to the integer range). Integer products summed
//! in f32 are exact up to 2^24, so results match the integer kernels to within an LSB
//! while running on tract's fast f32 paths. At the graph edges, [`Dequantize`] turns the
//! caller's integers into reals and [`Quantize`] turns reals back into integers.

use tract_core::internal::*;

/// One tensor's per-tensor affine quantisation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QParams {
    /// Real value of one step.
    pub scale: f32,
    /// Integer that stands for real zero.
    pub zero_point: i64,
    /// Integer type on the wire.
    pub dt: DatumType,
}

impl QParams {
    fn range(&self) -> (f32, f32) {
        match self.dt {
            DatumType::I8 => (i8::MIN as f32, i8::MAX as f32),
            DatumType::U8 => (0.0, u8::MAX as f32),
            DatumType::I16 => (i16::MIN as f32, i16::MAX as f32),
            DatumType::I32 => (i32::MIN as f32, i32::MAX as f32),
            _ => (f32::MIN, f32::MAX),
        }
    }

    /// Integer level for a real value.
    pub fn quantize(&self, x: f32) -> f32 {
        let (lo, hi) = self.range();
        (round_half_away(x / self.scale) + self.zero_point as f32).clamp(lo, hi)
    }

    /// Real value for an integer level.
    pub fn dequantize(&self, q: f32) -> f32 {
        self.scale * (q - self.zero_point as f32)
    }
}

/// `f32::round` (half away from zero) without a libm call: baseline x86_64 has no rounding
/// instruction, and requantisation runs on every element of every quantised activation.
/// Exact for |v| < 2^23; beyond that f32 holds no fraction, and `as` saturates.
#[inline]
fn round_half_away(v: f32) -> f32 {
    if v.abs() >= 8_388_608.0 {
        return v;
    }
    // The fraction `v - trunc(v)` is exact below 2^23, so comparing it with one half decides
    // ties exactly (adding 0.5 first would round 0.49999997 up).
    let t = v.trunc_fast();
    let frac = v - t;
    if frac.abs() >= 0.5 {
        t + 1f32.copysign(v)
    } else {
        t
    }
}

trait TruncFast {
    fn trunc_fast(self) -> f32;
}

impl TruncFast for f32 {
    #[inline]
    fn trunc_fast(self) -> f32 {
        // cvttss2si: truncation towards zero, exact for |v| < 2^23 (checked by the caller).
        (self as i32) as f32
    }
}

impl Eq for QParams {}

impl std::hash::Hash for QParams {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.scale.to_bits().hash(state);
        self.zero_point.hash(state);
        self.dt.hash(state);
    }
}

macro_rules! simple_op {
    ($name: ident, $label: expr) => {
        impl Op for $name {
            fn name(&self) -> StaticName {
                $label.into()
            }
            fn info(&self) -> TractResult<Vec<String>> {
                Ok(vec![format!("{:?}", self.0)])
            }
            op_as_typed_op!();
        }
    };
}

/// Snaps real f32 values onto a quantisation grid, staying in f32.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FakeQuant(pub QParams);
simple_op!(FakeQuant, "TfliteFakeQuant");

impl FakeQuant {
    /// Snaps every value onto the grid, in place. The engine's own convolutions call it on
    /// their output when they absorb the `FakeQuant` that follows them.
    ///
    /// Same values as `dequantize(quantize(x))`, written without branches so that it
    /// vectorises: the clamp to the integer range is done around zero (`round(x / scale)`
    /// against `lo - zero_point ..= hi - zero_point`, exact for integers), and the value is
    /// bounded to 2^22 before the truncating conversion, which the clamp makes harmless.
    pub fn apply(&self, values: &mut [f32]) {
        let q = self.0;
        let (lo, hi) = q.range();
        let zp = q.zero_point as f32;
        let (lo, hi) = (lo - zp, hi - zp);
        for x in values {
            let v = (*x / q.scale).clamp(-4_194_304.0, 4_194_304.0);
            let t = (v as i32) as f32;
            let r = if (v - t).abs() >= 0.5 { t + 1f32.copysign(v) } else { t };
            *x = q.scale * r.clamp(lo, hi);
        }
    }
}

impl EvalOp for FakeQuant {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let mut t = args_1!(inputs).into_tensor();
        self.apply(t.try_as_plain_ram_mut()?.as_slice_mut::<f32>()?);
        Ok(tvec!(t.into_tvalue()))
    }
}

impl TypedOp for FakeQuant {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs[0].datum_type == f32::datum_type());
        Ok(tvec!(f32::fact(inputs[0].shape.clone())))
    }
    as_op!();
}

/// Integers in (any integer type), real f32 out.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Dequantize(pub QParams);
simple_op!(Dequantize, "TfliteDequantize");

impl EvalOp for Dequantize {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let mut t = input.cast_to_dt(f32::datum_type().unquantized())?.into_owned();
        {
            let mut view = t.try_as_plain_ram_mut()?;
            for x in view.as_slice_mut::<f32>()? {
                *x = self.0.dequantize(*x);
            }
        }
        Ok(tvec!(t.into_tvalue()))
    }
}

impl TypedOp for Dequantize {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(f32::fact(inputs[0].shape.clone())))
    }
    as_op!();
}

/// Real f32 in, integers of the quantised type out.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Quantize(pub QParams);
simple_op!(Quantize, "TfliteQuantize");

impl EvalOp for Quantize {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let mut t = args_1!(inputs).into_tensor();
        {
            let mut view = t.try_as_plain_ram_mut()?;
            for x in view.as_slice_mut::<f32>()? {
                *x = self.0.quantize(*x);
            }
        }
        Ok(tvec!(t.cast_to_dt(self.0.dt)?.into_owned().into_tvalue()))
    }
}

impl TypedOp for Quantize {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs[0].datum_type == f32::datum_type());
        Ok(tvec!(self.0.dt.fact(inputs[0].shape.clone())))
    }
    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;

    const Q: QParams = QParams { scale: 0.5, zero_point: -3, dt: DatumType::I8 };

    fn run(op: impl TypedOp, t: Tensor) -> Tensor {
        let out = op.eval_out_of_plan(tvec!(t.into_tvalue())).unwrap().unwrap();
        out[0].clone().into_tensor()
    }

    #[test]
    fn quantize_rounds_half_away_from_zero_and_saturates() {
        let t = run(Quantize(Q), tensor1(&[0.25f32, -0.25, 1000.0, -1000.0, 1.0]));
        // 0.25/0.5 = 0.5 -> 1, -0.5 -> -1, then + zero point.
        assert_eq!(t, tensor1(&[-2i8, -4, 127, -128, -1]));
    }

    #[test]
    fn fast_rounding_matches_f32_round() {
        let mut v = -300.0f32;
        while v < 300.0 {
            for x in
                [v, v + 0.5, v - 0.5, f32::from_bits((v + 0.5).to_bits() - 1), f32::from_bits((v + 0.5).to_bits() + 1)]
            {
                assert_eq!(round_half_away(x), x.round(), "{x}");
            }
            v += 0.37;
        }
        for x in [1e9f32, -1e9, 8_388_607.5, -0.49999997, 0.49999997, 0.0, -0.0] {
            assert_eq!(round_half_away(x), x.round(), "{x}");
        }
    }

    /// The branch-free `FakeQuant::apply` against the scalar `dequantize(quantize(x))` it
    /// stands for, on ties, values past the range, and a sweep.
    #[test]
    fn fake_quant_apply_matches_quantize_then_dequantize() {
        for q in [
            Q,
            QParams { scale: 0.021382147, zero_point: -128, dt: DatumType::I8 },
            QParams { scale: 0.00390625, zero_point: 0, dt: DatumType::U8 },
        ] {
            let mut values: Vec<f32> = (-4000..4000).map(|i| i as f32 * q.scale * 0.25).collect();
            values.extend([1e9, -1e9, 0.0, -0.0, q.scale * 0.5, -q.scale * 0.5, q.scale * 2.5]);
            let want: Vec<f32> = values.iter().map(|x| q.dequantize(q.quantize(*x))).collect();
            FakeQuant(q).apply(&mut values);
            assert_eq!(values, want, "{q:?}");
        }
    }

    #[test]
    fn dequantize_applies_scale_and_zero_point() {
        let t = run(Dequantize(Q), tensor1(&[-3i8, -1, 127]));
        assert_eq!(t, tensor1(&[0.0f32, 1.0, 65.0]));
    }

    #[test]
    fn fake_quant_snaps_to_grid_and_clamps() {
        let t = run(FakeQuant(Q), tensor1(&[0.3f32, 0.74, 1000.0]));
        assert_eq!(t, tensor1(&[0.5f32, 0.5, 65.0]));
    }
}
