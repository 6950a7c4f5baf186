//! Direct convolution for channels-last inputs with very few channels: the first layer of an
//! image model (RGB in, 3 channels) or of an audio model (1 channel).
//!
//! tract lowers every regular convolution to a matrix product over an im2col of the input. With
//! 1-4 input channels that product has a tiny inner dimension (27 for a 3x3 RGB kernel) and a
//! huge one (every output pixel), and tract 0.23 handles it badly: the input is first copied
//! into a padded buffer, the lazy im2col gathers it element by element, and the kernel it picks
//! pads 8 output channels to a 32-row tile. In the MediaPipe models that first layer alone took
//! a fifth to a half of the whole inference.
//!
//! [`DirectConv`] computes it as written: for each output pixel, for each kernel tap inside
//! the image, one input value times a vector of output-channel weights. Padding is taps
//! skipped, not zeros copied. The output channels are kept in registers in groups of up to 32;
//! the loops are written so that the compiler vectorises them, compiled twice on x86_64 (AVX2 +
//! FMA, chosen at run time, and baseline) and once elsewhere (NEON is baseline on aarch64).
//!
//! [`replace_small_input_convs`] swaps it in for every eligible `Conv` of a decluttered model.

use tract_core::internal::*;
use tract_core::ops::cnn::{Conv, KernelFormat, PaddingSpec, PoolSpec};
use tract_core::ops::nn::DataFormat;

/// The most input channels a convolution may have to be computed directly.
pub const MAX_INPUT_CHANNELS: usize = 4;

/// Most output channels per register group: four 8-lane vectors.
const MAX_LANES: usize = 32;

/// A regular (one group) float convolution over an NHWC input with at most
/// [`MAX_INPUT_CHANNELS`] channels, 2 spatial axes, constant weights and bias.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DirectConv {
    pool_spec: PoolSpec,
    /// Output channels per group: the output channels rounded up to a multiple of 8, at most
    /// [`MAX_LANES`].
    lanes: usize,
    /// Weights per output-channel group: `[group][ky][kx][ci][lanes]`, the lanes past the last
    /// output channel zero.
    packed: Arc<Tensor>,
    /// Bias padded to a whole number of groups.
    bias: Arc<Tensor>,
}

impl DirectConv {
    /// Builds the op from a `Conv`'s spec and its constant kernel and bias, or `None` when the
    /// convolution is not one this op computes.
    pub fn from_conv(
        conv: &Conv,
        input: &TypedFact,
        kernel: &Tensor,
        bias: &Tensor,
    ) -> TractResult<Option<DirectConv>> {
        let spec = &conv.pool_spec;
        if conv.q_params.is_some()
            || conv.group != 1
            || spec.data_format != DataFormat::NHWC
            || spec.kernel_shape.len() != 2
            || spec.input_channels > MAX_INPUT_CHANNELS
            || input.datum_type != f32::datum_type()
            || kernel.datum_type() != f32::datum_type()
            || input.shape.as_concrete().is_none()
            || matches!(spec.padding, PaddingSpec::ExplicitOnnxPool(..))
        {
            return Ok(None);
        }
        let (kh, kw) = (spec.kernel_shape[0], spec.kernel_shape[1]);
        let (ci, co) = (spec.input_channels, spec.output_channels);
        let k = kernel.to_plain_array_view::<f32>()?;
        let at = |o: usize, i: usize, y: usize, x: usize| -> f32 {
            match conv.kernel_fmt {
                KernelFormat::OIHW => k[[o, i, y, x]],
                KernelFormat::OHWI => k[[o, y, x, i]],
                KernelFormat::HWIO => k[[y, x, i, o]],
            }
        };
        let expected: TVec<usize> = match conv.kernel_fmt {
            KernelFormat::OIHW => tvec![co, ci, kh, kw],
            KernelFormat::OHWI => tvec![co, kh, kw, ci],
            KernelFormat::HWIO => tvec![kh, kw, ci, co],
        };
        if k.shape() != &*expected {
            return Ok(None);
        }
        let lanes = co.next_multiple_of(8).min(MAX_LANES);
        let groups = co.div_ceil(lanes);
        let mut packed = vec![0f32; groups * kh * kw * ci * lanes];
        for o in 0..co {
            let (g, lane) = (o / lanes, o % lanes);
            for y in 0..kh {
                for x in 0..kw {
                    for i in 0..ci {
                        packed[(((g * kh + y) * kw + x) * ci + i) * lanes + lane] = at(o, i, y, x);
                    }
                }
            }
        }
        let bias_values: Vec<f32> = match bias.len() {
            0 => vec![0.0; co],
            1 => vec![bias.cast_to_scalar::<f32>()?; co],
            n if n == co => bias.cast_to::<f32>()?.try_as_plain_ram()?.as_slice::<f32>()?.to_vec(),
            _ => return Ok(None),
        };
        let mut padded_bias = vec![0f32; groups * lanes];
        padded_bias[..co].copy_from_slice(&bias_values);
        Ok(Some(DirectConv {
            pool_spec: spec.clone(),
            lanes,
            packed: tensor1(&packed).into_arc_tensor(),
            bias: tensor1(&padded_bias).into_arc_tensor(),
        }))
    }
}

impl Op for DirectConv {
    fn name(&self) -> StaticName {
        "DirectConv".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(self.pool_spec.info())
    }

    op_as_typed_op!();
}

/// What one call of the pixel loop needs, shared by every output pixel of a run.
struct Geometry {
    ih: usize,
    iw: usize,
    ci: usize,
    co: usize,
    kh: usize,
    kw: usize,
    stride: [usize; 2],
    dilation: [usize; 2],
    pad: [usize; 2],
    oh: usize,
    ow: usize,
    lanes: usize,
}

impl EvalOp for DirectConv {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let shape = input.shape();
        ensure!(shape.len() == 4, "DirectConv expects NHWC input, got {shape:?}");
        let (n, ih, iw, ci) = (shape[0], shape[1], shape[2], shape[3]);
        ensure!(ci == self.pool_spec.input_channels, "{ci} input channels, expected {}", self.pool_spec.input_channels);
        let padding = self.pool_spec.computed_padding(&[ih, iw]);
        let geo = Geometry {
            ih,
            iw,
            ci,
            co: self.pool_spec.output_channels,
            kh: self.pool_spec.kernel_shape[0],
            kw: self.pool_spec.kernel_shape[1],
            stride: [self.pool_spec.stride(0), self.pool_spec.stride(1)],
            dilation: [self.pool_spec.dilation(0), self.pool_spec.dilation(1)],
            pad: [padding[0].pad_before, padding[1].pad_before],
            oh: padding[0].convoluted,
            ow: padding[1].convoluted,
            lanes: self.lanes,
        };
        // SAFETY: f32 has no invalid bit patterns, and `run` writes every output value (every
        // pixel, every channel of every group).
        let mut output = unsafe { Tensor::uninitialized::<f32>(&[n, geo.oh, geo.ow, geo.co])? };
        {
            let x = input.to_plain_array_view::<f32>()?;
            let x = x.as_slice().context("DirectConv input must be contiguous")?;
            let mut out_view = output.try_as_plain_ram_mut()?;
            let out = out_view.as_slice_mut::<f32>()?;
            let packed_view = self.packed.try_as_plain_ram()?;
            let packed = packed_view.as_slice::<f32>()?;
            let bias_view = self.bias.try_as_plain_ram()?;
            let bias = bias_view.as_slice::<f32>()?;
            let (in_image, out_image) = (ih * iw * ci, geo.oh * geo.ow * geo.co);
            for b in 0..n {
                run(&geo, &x[b * in_image..][..in_image], packed, bias, &mut out[b * out_image..][..out_image]);
            }
        }
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for DirectConv {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        self.pool_spec.output_facts(inputs)
    }

    as_op!();
}

fn run(geo: &Geometry, x: &[f32], packed: &[f32], bias: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features the function is compiled for.
        unsafe { run_avx2_fma(geo, x, packed, bias, out) };
        return;
    }
    run_baseline(geo, x, packed, bias, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn run_avx2_fma(geo: &Geometry, x: &[f32], packed: &[f32], bias: &[f32], out: &mut [f32]) {
    run_generic(geo, x, packed, bias, out)
}

fn run_baseline(geo: &Geometry, x: &[f32], packed: &[f32], bias: &[f32], out: &mut [f32]) {
    run_generic(geo, x, packed, bias, out)
}

/// The whole image, dispatched on the group width so that each instance keeps its
/// accumulators in registers: several output pixels at once where the group is narrow.
#[inline(always)]
fn run_generic(geo: &Geometry, x: &[f32], packed: &[f32], bias: &[f32], out: &mut [f32]) {
    match geo.lanes {
        8 => run_lanes::<8, 4>(geo, x, packed, bias, out),
        16 => run_lanes::<16, 4>(geo, x, packed, bias, out),
        24 => run_lanes::<24, 2>(geo, x, packed, bias, out),
        _ => run_lanes::<32, 2>(geo, x, packed, bias, out),
    }
}

/// Every output pixel, every group of `L` output channels. Output rows and columns whose
/// taps all fall inside the image go `P` pixels at a time through [`interior`]; the border
/// pixels through [`border`], which skips the taps that fall in the padding.
#[inline(always)]
fn run_lanes<const L: usize, const P: usize>(geo: &Geometry, x: &[f32], packed: &[f32], bias: &[f32], out: &mut [f32]) {
    let taps = geo.kh * geo.kw * geo.ci;
    let groups = geo.co.div_ceil(L);
    // Input offsets of every tap from a pixel's top-left input value.
    let mut offsets = Vec::with_capacity(taps);
    for ky in 0..geo.kh {
        for kx in 0..geo.kw {
            for c in 0..geo.ci {
                offsets.push((ky * geo.dilation[0] * geo.iw + kx * geo.dilation[1]) * geo.ci + c);
            }
        }
    }
    // Output columns whose taps are all inside the image.
    let x_inside = |ox: usize| {
        let x0 = (ox * geo.stride[1]) as isize - geo.pad[1] as isize;
        tap_range(x0, geo.dilation[1], geo.kw, geo.iw) == (0..geo.kw)
    };
    let first_x = (0..geo.ow).find(|&ox| x_inside(ox)).unwrap_or(geo.ow);
    let end_x = (first_x..geo.ow).find(|&ox| !x_inside(ox)).unwrap_or(geo.ow);
    for oy in 0..geo.oh {
        let y0 = (oy * geo.stride[0]) as isize - geo.pad[0] as isize;
        let row_inside = tap_range(y0, geo.dilation[0], geo.kh, geo.ih) == (0..geo.kh);
        for g in 0..groups {
            let weights = &packed[g * taps * L..][..taps * L];
            let bias = &bias[g * L..][..L];
            let lanes = (geo.co - g * L).min(L);
            let mut ox = 0;
            while ox < geo.ow {
                if row_inside && ox >= first_x && ox + P <= end_x {
                    let x0 = ox * geo.stride[1] - geo.pad[1];
                    let start = (y0 as usize * geo.iw + x0) * geo.ci;
                    let acc = interior::<L, P>(&x[start..], geo.stride[1] * geo.ci, &offsets, weights, bias);
                    for (p, acc) in acc.iter().enumerate() {
                        out[((oy * geo.ow + ox + p) * geo.co + g * L)..][..lanes].copy_from_slice(&acc[..lanes]);
                    }
                    ox += P;
                } else {
                    let acc = border::<L>(geo, x, oy, ox, weights, bias);
                    out[((oy * geo.ow + ox) * geo.co + g * L)..][..lanes].copy_from_slice(&acc[..lanes]);
                    ox += 1;
                }
            }
        }
    }
}

/// `P` output pixels, `step` input values apart, with all their taps inside the image.
#[inline(always)]
fn interior<const L: usize, const P: usize>(
    x: &[f32],
    step: usize,
    offsets: &[usize],
    weights: &[f32],
    bias: &[f32],
) -> [[f32; L]; P] {
    let mut acc = [[0f32; L]; P];
    for a in acc.iter_mut() {
        a.copy_from_slice(bias);
    }
    // One bounds check for the farthest value read, so that the loop below has none.
    let last = (P - 1) * step + offsets.last().copied().unwrap_or(0);
    assert!(last < x.len() && weights.len() >= offsets.len() * L);
    for (t, &off) in offsets.iter().enumerate() {
        let w: &[f32; L] = weights[t * L..][..L].try_into().unwrap();
        for (p, a) in acc.iter_mut().enumerate() {
            // SAFETY: off + p * step <= last < x.len(), checked above.
            let v = unsafe { *x.get_unchecked(off + p * step) };
            for l in 0..L {
                a[l] += w[l] * v;
            }
        }
    }
    acc
}

/// One output pixel near the border: the taps that fall in the padding are skipped.
#[inline(always)]
fn border<const L: usize>(geo: &Geometry, x: &[f32], oy: usize, ox: usize, weights: &[f32], bias: &[f32]) -> [f32; L] {
    let mut acc = [0f32; L];
    acc.copy_from_slice(bias);
    let y0 = (oy * geo.stride[0]) as isize - geo.pad[0] as isize;
    let x0 = (ox * geo.stride[1]) as isize - geo.pad[1] as isize;
    for ky in tap_range(y0, geo.dilation[0], geo.kh, geo.ih) {
        let iy = (y0 + (ky * geo.dilation[0]) as isize) as usize;
        for kx in tap_range(x0, geo.dilation[1], geo.kw, geo.iw) {
            let ix = (x0 + (kx * geo.dilation[1]) as isize) as usize;
            let pixel = &x[(iy * geo.iw + ix) * geo.ci..][..geo.ci];
            let tap_weights = &weights[(ky * geo.kw + kx) * geo.ci * L..][..geo.ci * L];
            for (value, w) in pixel.iter().zip(tap_weights.chunks_exact(L)) {
                for l in 0..L {
                    acc[l] += w[l] * value;
                }
            }
        }
    }
    acc
}

/// The kernel taps `k` for which `start + k * dilation` falls inside `0..size`.
#[inline(always)]
fn tap_range(start: isize, dilation: usize, kernel: usize, size: usize) -> std::ops::Range<usize> {
    let d = dilation as isize;
    let first = if start < 0 { ((-start) + d - 1) / d } else { 0 };
    let last = ((size as isize - start + d - 1) / d).clamp(0, kernel as isize);
    (first as usize).min(kernel)..(last as usize).max(first as usize).min(kernel)
}

/// Replaces every `Conv` of a decluttered model that [`DirectConv`] computes; returns how many.
pub fn replace_small_input_convs(model: &mut TypedModel) -> TractResult<usize> {
    let mut replaced = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some(conv) = node.op_as::<Conv>() else { continue };
        if node.inputs.len() != 3 {
            continue;
        }
        let input = model.outlet_fact(node.inputs[0])?.clone();
        let (Some(kernel), Some(bias)) =
            (model.outlet_fact(node.inputs[1])?.konst.clone(), model.outlet_fact(node.inputs[2])?.konst.clone())
        else {
            continue;
        };
        let Some(op) = DirectConv::from_conv(conv, &input, &kernel, &bias)? else { continue };
        let mut patch = TypedModelPatch::new(format!("direct conv {}", node.name));
        let x = patch.tap_model(model, node.inputs[0])?;
        let y = patch.wire_node(&node.name, op, &[x])?;
        patch.shunt_outside(model, OutletId::new(id, 0), y[0])?;
        patch.apply(model)?;
        replaced += 1;
    }
    Ok(replaced)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rnd(seed: &mut u32) -> f32 {
        *seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        (*seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
    }

    #[test]
    fn tap_range_keeps_the_taps_inside_the_image() {
        assert_eq!(tap_range(-1, 1, 3, 10), 1..3);
        assert_eq!(tap_range(0, 1, 3, 10), 0..3);
        assert_eq!(tap_range(8, 1, 3, 10), 0..2);
        assert_eq!(tap_range(-2, 2, 3, 10), 1..3);
        assert_eq!(tap_range(7, 2, 3, 10), 0..2);
        assert_eq!(tap_range(-5, 1, 3, 2), 3..3);
    }

    /// One convolution, built as tract's `Conv` and run by tract, then with the direct op in
    /// its place: same outputs, and the direct op is really in the plan.
    fn check(
        fmt: KernelFormat,
        ci: usize,
        co: usize,
        kernel: [usize; 2],
        stride: [usize; 2],
        dilation: [usize; 2],
        padding: PaddingSpec,
    ) -> TractResult<()> {
        let (n, h, w) = (2, 13, 11);
        let mut seed = (ci * 31 + co) as u32;
        let kshape: TVec<usize> = match fmt {
            KernelFormat::OIHW => tvec![co, ci, kernel[0], kernel[1]],
            KernelFormat::OHWI => tvec![co, kernel[0], kernel[1], ci],
            KernelFormat::HWIO => tvec![kernel[0], kernel[1], ci, co],
        };
        let weights: Vec<f32> = (0..kshape.iter().product()).map(|_| rnd(&mut seed)).collect();
        let bias: Vec<f32> = (0..co).map(|_| rnd(&mut seed)).collect();
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([n, h, w, ci]))?;
        let k = model.add_const("k", tensor1(&weights).into_shape(&kshape)?)?;
        let b = model.add_const("b", tensor1(&bias))?;
        let conv = Conv {
            pool_spec: PoolSpec {
                data_format: DataFormat::NHWC,
                kernel_shape: kernel.iter().copied().collect(),
                padding: padding.clone(),
                dilations: Some(dilation.iter().copied().collect()),
                strides: Some(stride.iter().copied().collect()),
                input_channels: ci,
                output_channels: co,
            },
            kernel_fmt: fmt,
            group: 1,
            q_params: None,
        };
        let y = model.wire_node("conv", conv, &[x, k, b])?;
        model.select_output_outlets(&y)?;
        let input =
            tensor1(&(0..n * h * w * ci).map(|_| rnd(&mut seed)).collect::<Vec<_>>()).into_shape(&[n, h, w, ci])?;

        let want = model.clone().into_optimized()?.into_runnable()?.run(tvec!(input.clone().into_tvalue()))?;
        let mut direct = model.into_decluttered()?;
        assert_eq!(replace_small_input_convs(&mut direct)?, 1, "{fmt:?} ci={ci} co={co} {padding:?}");
        let plan = direct.into_optimized()?.into_runnable()?;
        assert!(plan.model().nodes().iter().any(|n| n.op_is::<DirectConv>()));
        let got = plan.run(tvec!(input.into_tvalue()))?;
        got[0]
            .close_enough(&want[0], Approximation::Approximate)
            .with_context(|| format!("{fmt:?} ci={ci} co={co} k={kernel:?} s={stride:?} d={dilation:?} {padding:?}"))
    }

    #[test]
    fn matches_tract_across_layouts_paddings_strides_and_channel_counts() -> TractResult<()> {
        for (ci, co) in [(1, 8), (3, 24), (3, 32), (3, 40), (4, 7)] {
            check(KernelFormat::OHWI, ci, co, [3, 3], [2, 2], [1, 1], PaddingSpec::SameUpper)?;
        }
        check(KernelFormat::OHWI, 3, 16, [3, 3], [1, 1], [1, 1], PaddingSpec::Valid)?;
        check(KernelFormat::OIHW, 3, 16, [5, 5], [2, 2], [1, 1], PaddingSpec::Explicit(tvec![1, 2], tvec![2, 1]))?;
        check(KernelFormat::HWIO, 2, 12, [3, 2], [1, 2], [2, 1], PaddingSpec::SameLower)?;
        check(KernelFormat::OHWI, 1, 64, [3, 3], [1, 1], [2, 2], PaddingSpec::SameUpper)?;
        Ok(())
    }

    #[test]
    fn convolutions_it_does_not_compute_are_left_to_tract() -> TractResult<()> {
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([1, 8, 8, 8]))?;
        let k = model.add_const("k", Tensor::zero::<f32>(&[4, 3, 3, 8])?)?;
        let b = model.add_const("b", Tensor::zero::<f32>(&[4])?)?;
        let conv = Conv {
            pool_spec: PoolSpec {
                data_format: DataFormat::NHWC,
                kernel_shape: tvec![3, 3],
                padding: PaddingSpec::Valid,
                dilations: None,
                strides: None,
                input_channels: 8,
                output_channels: 4,
            },
            kernel_fmt: KernelFormat::OHWI,
            group: 1,
            q_params: None,
        };
        let y = model.wire_node("conv", conv, &[x, k, b])?;
        model.select_output_outlets(&y)?;
        assert_eq!(replace_small_input_convs(&mut model)?, 0, "8 input channels go to tract's matmul");
        Ok(())
    }
}
