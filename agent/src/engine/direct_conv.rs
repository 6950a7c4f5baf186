//! The engine's own convolution operators, for the shapes tract 0.23 runs slowly.
//!
//! tract lowers every regular convolution to a matrix product over an im2col of the input.
//! Some shapes fit that badly:
//!
//! - **First layers** (1-4 input channels: an RGB image, a spectrogram). The product has a
//!   tiny inner dimension (27 for a 3x3 RGB kernel) and a huge one (every output pixel); tract
//!   first copies the input into a padded buffer, gathers it element by element (lazy im2col)
//!   and pads 8 output channels to a 32-row tile. In the MediaPipe models that first layer
//!   alone took a fifth to a half of the whole inference.
//! - **Small pointwise layers, narrow layers, one-step streaming layers**: packing the
//!   activations, tile padding and per-node set-up cost more than the arithmetic.
//!
//! [`DirectConv`] computes those as written: for each output pixel, for each kernel tap inside
//! the image, one input value times a vector of output-channel weights. Padding is taps
//! skipped, not zeros copied. The output channels are kept in registers in groups of 8 to 32,
//! several pixels at a time; the loops are written so that the compiler vectorises them,
//! compiled twice on x86_64 (AVX2 + FMA, chosen at run time, and baseline) and once elsewhere
//! (NEON is baseline on aarch64).
//!
//! [`NhwcDepthwise`] runs channels-last depthwise layers (every TFLite depthwise layer) with
//! the SIMD kernels of [`super::kernels`]: the whole interior of an output row in one kernel
//! call, the border pixels one at a time with the taps that fall in the padding left out.
//!
//! [`optimize`] is the engine's optimisation pipeline; [`replace_convs`] swaps the two ops in
//! for every eligible `Conv` of a model, with what follows them fused in.
//!
//! # Layout
//!
//! - `conv`: [`DirectConv`]: which convolutions it takes, its packed weights, its `eval`;
//! - `loops`: the pixel loops `DirectConv` runs, compiled per target feature;
//! - `depthwise`: [`NhwcDepthwise`]: its precomputed taps and the row/border dispatch onto
//!   the SIMD kernels;
//! - `replace`: the graph pass that swaps both ops in and fuses what follows them, and
//!   the optimisation pipeline around it.
//!
//! This file holds what both ops share: reading a `Conv`'s kernel and bias, the shape
//! planning done at load, and which kernel taps fall inside the image.

mod conv;
mod depthwise;
mod loops;
mod replace;

pub use conv::{DirectConv, MAX_INPUT_CHANNELS, MAX_KERNEL_VALUES, MAX_NARROW_OUTPUT_CHANNELS, MAX_TINY_MACS};
pub use depthwise::NhwcDepthwise;
pub use replace::{optimize, replace_convs};

use tract_core::internal::*;
use tract_core::ops::cnn::{Conv, KernelFormat, PoolSpec};

/// The constant kernel of `conv` as `[output channel, ky, kx, input channel of its group]`,
/// whatever its format; `None` when its shape is not the one the spec declares.
fn kernel_ohwi(conv: &Conv, kernel: &Tensor) -> TractResult<Option<tract_ndarray::ArrayD<f32>>> {
    let spec = &conv.pool_spec;
    let (co, gi) = (spec.output_channels, spec.input_channels / conv.group);
    let (kh, kw) = (spec.kernel_shape[0], spec.kernel_shape[1]);
    let (expected, to_ohwi): ([usize; 4], [usize; 4]) = match conv.kernel_fmt {
        KernelFormat::OIHW => ([co, gi, kh, kw], [0, 2, 3, 1]),
        KernelFormat::OHWI => ([co, kh, kw, gi], [0, 1, 2, 3]),
        KernelFormat::HWIO => ([kh, kw, gi, co], [3, 0, 1, 2]),
    };
    let k = kernel.to_plain_array_view::<f32>()?;
    if k.shape() != expected {
        return Ok(None);
    }
    Ok(Some(k.permuted_axes(&to_ohwi[..]).to_owned()))
}

/// A convolution's bias as one value per output channel: none (zeros), one shared value, or
/// one per channel; `None` for any other shape.
fn bias_per_channel(bias: &Tensor, channels: usize) -> TractResult<Option<Vec<f32>>> {
    Ok(match bias.len() {
        0 => Some(vec![0.0; channels]),
        1 => Some(vec![bias.cast_to_scalar::<f32>()?; channels]),
        n if n == channels => Some(bias.cast_to::<f32>()?.try_as_plain_ram()?.as_slice::<f32>()?.to_vec()),
        _ => None,
    })
}

/// What an op derives from its input shape: the padding before each spatial axis, the
/// output's height and width, and its full shape. Computed at load for the input shape the
/// model declares, so that a call with that shape (every call, in practice) recomputes none
/// of it: on a one-step streaming model the shape arithmetic was 5 % of the time.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Planned {
    input: TVec<usize>,
    output: TVec<usize>,
    pad: [usize; 2],
    out_hw: [usize; 2],
}

impl Planned {
    fn new(spec: &PoolSpec, input: &[usize]) -> TractResult<Planned> {
        let (_, ih, iw, _) = nhwc(input)?;
        let padding = spec.computed_padding(&[ih, iw]);
        Ok(Planned {
            input: input.into(),
            output: spec.output_shape(input)?.shape,
            pad: [padding[0].pad_before, padding[1].pad_before],
            out_hw: [padding[0].convoluted, padding[1].convoluted],
        })
    }

    /// `self` when `input` is the shape it was planned for, else a new plan for it.
    fn for_input<'a>(
        &'a self,
        spec: &PoolSpec,
        input: &[usize],
        other: &'a mut Option<Planned>,
    ) -> TractResult<&'a Planned> {
        if *self.input == *input {
            return Ok(self);
        }
        Ok(other.insert(Planned::new(spec, input)?))
    }
}

/// `(batch, height, width, channels)` of an NHWC input, or of an HWC one as a batch of 1.
fn nhwc(shape: &[usize]) -> TractResult<(usize, usize, usize, usize)> {
    match *shape {
        [n, h, w, c] => Ok((n, h, w, c)),
        [h, w, c] => Ok((1, h, w, c)),
        _ => bail!("expected an NHWC or HWC input, got {shape:?}"),
    }
}

/// The kernel taps `k` for which `start + k * dilation` falls inside `0..size`.
#[inline(always)]
fn tap_range(start: isize, dilation: usize, kernel: usize, size: usize) -> std::ops::Range<usize> {
    let d = dilation as isize;
    let first = if start < 0 { ((-start) + d - 1) / d } else { 0 };
    let last = ((size as isize - start + d - 1) / d).clamp(0, kernel as isize);
    (first as usize).min(kernel)..(last as usize).max(first as usize).min(kernel)
}

/// The output positions along one axis whose kernel taps all fall inside the input (`size`
/// long): `first..end`, empty when there are none. Both ops run these pixels without bounds
/// tests and the others, near the border, tap by tap.
fn interior_columns(
    out: usize,
    stride: usize,
    pad: usize,
    dilation: usize,
    kernel: usize,
    size: usize,
) -> std::ops::Range<usize> {
    let inside = |o: usize| tap_range((o * stride) as isize - pad as isize, dilation, kernel, size) == (0..kernel);
    let first = (0..out).find(|&o| inside(o)).unwrap_or(out);
    let end = (first..out).find(|&o| !inside(o)).unwrap_or(out);
    first..end
}

/// Helpers for the tests of this module and its submodules.
#[cfg(test)]
mod testing {
    use tract_core::ops::cnn::PaddingSpec;
    use tract_core::ops::nn::DataFormat;

    use super::*;

    pub(super) fn rnd(seed: &mut u32) -> f32 {
        *seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        (*seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
    }

    /// One convolution, built as tract's `Conv` and run by tract, then with the direct op in
    /// its place: same outputs, and the direct op is really in the plan.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn check(
        hw: [usize; 2],
        fmt: KernelFormat,
        group: usize,
        ci: usize,
        co: usize,
        kernel: [usize; 2],
        stride: [usize; 2],
        dilation: [usize; 2],
        padding: PaddingSpec,
    ) -> TractResult<()> {
        let (n, h, w) = (2, hw[0], hw[1]);
        let mut seed = (ci * 31 + co) as u32;
        let gi = ci / group;
        let kshape: TVec<usize> = match fmt {
            KernelFormat::OIHW => tvec![co, gi, kernel[0], kernel[1]],
            KernelFormat::OHWI => tvec![co, kernel[0], kernel[1], gi],
            KernelFormat::HWIO => tvec![kernel[0], kernel[1], gi, co],
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
            group,
            q_params: None,
        };
        let y = model.wire_node("conv", conv, &[x, k, b])?;
        model.select_output_outlets(&y)?;
        let input =
            tensor1(&(0..n * h * w * ci).map(|_| rnd(&mut seed)).collect::<Vec<_>>()).into_shape(&[n, h, w, ci])?;

        let want = model.clone().into_optimized()?.into_runnable()?.run(tvec!(input.clone().into_tvalue()))?;
        let plan = optimize(model)?.into_runnable()?;
        let ours =
            plan.model().nodes().iter().filter(|n| n.op_is::<DirectConv>() || n.op_is::<NhwcDepthwise>()).count();
        assert_eq!(ours, 1, "{fmt:?} group={group} ci={ci} co={co} {padding:?}");
        let got = plan.run(tvec!(input.into_tvalue()))?;
        got[0].close_enough(&want[0], Approximation::Approximate).with_context(|| {
            format!("{fmt:?} group={group} ci={ci} co={co} k={kernel:?} s={stride:?} d={dilation:?} {padding:?}")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_range_keeps_the_taps_inside_the_image() {
        assert_eq!(tap_range(-1, 1, 3, 10), 1..3);
        assert_eq!(tap_range(0, 1, 3, 10), 0..3);
        assert_eq!(tap_range(8, 1, 3, 10), 0..2);
        assert_eq!(tap_range(-2, 2, 3, 10), 1..3);
        assert_eq!(tap_range(7, 2, 3, 10), 0..2);
        assert_eq!(tap_range(-5, 1, 3, 2), 3..3);
    }

    #[test]
    fn interior_columns_are_those_with_every_tap_inside() {
        // 3 taps, padding 1 each side, 5 wide: the first and last outputs reach the padding.
        assert_eq!(interior_columns(5, 1, 1, 1, 3, 5), 1..4);
        // Stride 2, dilation 2 (taps 0, 2, 4 from the start), 9 wide, padding 2: outputs 1 to 3.
        assert_eq!(interior_columns(5, 2, 2, 2, 3, 9), 1..4);
        // A kernel wider than the input: no interior at all.
        assert_eq!(interior_columns(3, 1, 2, 1, 5, 3), 3..3);
    }
}
