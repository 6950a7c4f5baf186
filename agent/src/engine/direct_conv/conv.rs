//! [`DirectConv`]: which regular convolutions it takes (the thresholds below, each with the
//! measurement behind it), its weights packed per group of output channels, and its `eval`,
//! which hands each image to the pixel loops of [`super::loops`].

use tract_core::internal::*;
use tract_core::ops::cnn::{Conv, PaddingSpec, PoolSpec};
use tract_core::ops::nn::DataFormat;

use super::loops::{run, vectorised, Geometry};
use super::{bias_per_channel, kernel_ohwi, nhwc, Planned};
use crate::engine::tflite::qops::FakeQuant;

/// The most input channels a convolution may have to be computed directly.
pub const MAX_INPUT_CHANNELS: usize = 4;

/// Output channels per group of a pointwise (1x1) convolution: two 8-lane vectors, six pixels
/// at a time where FMA is compiled in, the 6x16 register tile of XNNPACK's AVX2 kernels.
/// Pointwise convolutions with up to [`MAX_KERNEL_VALUES`] input channels are computed
/// directly: tract's matmul has to pack the activations first (10-15 % of a MediaPipe model's
/// time) and picks 40x2 tiles for the smallest ones (20-30 GFLOP/s). Measured with
/// `infer --profile`: face_detection_full_range -6 %, selfie_segmentation -8 %, the others
/// unchanged.
const POINTWISE_LANES: usize = 16;

/// The most kernel values per output channel (taps times input channels) a convolution may
/// have to be computed directly: past a 5x5 RGB kernel, tract's matrix product wins (a
/// melspectrogram's 512-tap 1-D convolution took twice as long directly).
pub const MAX_KERNEL_VALUES: usize = 80;

/// The most output channels a convolution may have to be computed directly whatever its
/// input: tract's matmul tiles are 16 to 64 rows of output channels, so 8 of them waste half
/// or more of every tile.
pub const MAX_NARROW_OUTPUT_CHANNELS: usize = 16;

/// The most multiply-adds a convolution may take to be computed directly whatever its shape.
/// Streaming audio models (okay_nabu) run convolutions over one time step: a few thousand
/// multiply-adds, where tract's packing and matmul set-up, two plan nodes, cost more than the
/// arithmetic.
pub const MAX_TINY_MACS: usize = 32 * 1024;

/// Most output channels per register group: four 8-lane vectors.
const MAX_LANES: usize = 32;

/// A regular (one group) float convolution over an NHWC or HWC input, 2 spatial axes,
/// constant weights and bias, of one of the shapes [`DirectConv::from_conv`] takes; with
/// optionally the clamp of a following ReLU or ReLU6 and a following requantisation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DirectConv {
    pool_spec: PoolSpec,
    planned: Planned,
    /// Lower and upper bound applied to every output, as f32 bits (a fused ReLU is `0, +inf`).
    clamp: [u32; 2],
    /// The requantisation of an int8 TFLite model that followed the convolution, applied last.
    pub(super) requant: Option<FakeQuant>,
    /// Output channels per group: the output channels rounded up to a multiple of 8, at most
    /// [`MAX_LANES`].
    lanes: usize,
    /// Weights per output-channel group: `[group][ky][kx][ci][lanes]`, the lanes past the last
    /// output channel zero.
    packed: Arc<Tensor>,
    /// Bias padded to a whole number of groups.
    pub(super) bias: Arc<Tensor>,
}

impl DirectConv {
    /// Builds the op from a `Conv`'s spec and its constant kernel and bias, or `None` when the
    /// convolution is not one this op computes. It computes first layers (at most
    /// [`MAX_INPUT_CHANNELS`] inputs and [`MAX_KERNEL_VALUES`] kernel values) and tiny ones (at
    /// most [`MAX_TINY_MACS`]) everywhere; where its code is vectorised, also pointwise layers
    /// with at most [`MAX_KERNEL_VALUES`] inputs and layers with at most
    /// [`MAX_NARROW_OUTPUT_CHANNELS`] outputs.
    pub fn from_conv(
        conv: &Conv,
        input: &TypedFact,
        kernel: &Tensor,
        bias: &Tensor,
    ) -> TractResult<Option<DirectConv>> {
        let spec = &conv.pool_spec;
        if conv.q_params.is_some()
            || conv.group != 1
            || !matches!(spec.data_format, DataFormat::NHWC | DataFormat::HWC)
            || spec.kernel_shape.len() != 2
            || input.datum_type != f32::datum_type()
            || kernel.datum_type() != f32::datum_type()
            || matches!(spec.padding, PaddingSpec::ExplicitOnnxPool(..))
        {
            return Ok(None);
        }
        let Some(input_shape) = input.shape.as_concrete() else { return Ok(None) };
        let planned = Planned::new(spec, input_shape)?;
        let kernel_values = spec.kernel_shape.iter().product::<usize>() * spec.input_channels;
        let output_pixels = planned.out_hw[0] * planned.out_hw[1];
        let first_layer = spec.input_channels <= MAX_INPUT_CHANNELS && kernel_values <= MAX_KERNEL_VALUES;
        let tiny = output_pixels * kernel_values * spec.output_channels <= MAX_TINY_MACS;
        // The pointwise and narrow cases were measured against tract's own SIMD matmul, so
        // they need this op's vector code too: without it (armv7, whose target has no NEON
        // by default, or x86_64 without AVX2) tract keeps them.
        let pointwise = spec.kernel_shape.iter().all(|k| *k == 1);
        let small_pointwise = pointwise && kernel_values <= MAX_KERNEL_VALUES;
        let narrow = spec.output_channels <= MAX_NARROW_OUTPUT_CHANNELS;
        if !(first_layer || tiny || (vectorised() && (small_pointwise || narrow))) {
            return Ok(None);
        }
        let (kh, kw) = (spec.kernel_shape[0], spec.kernel_shape[1]);
        let (ci, co) = (spec.input_channels, spec.output_channels);
        let Some(k) = kernel_ohwi(conv, kernel)? else { return Ok(None) };
        let lanes = co.next_multiple_of(8).min(if pointwise { POINTWISE_LANES } else { MAX_LANES });
        let groups = co.div_ceil(lanes);
        let mut packed = vec![0f32; groups * kh * kw * ci * lanes];
        for o in 0..co {
            let (g, lane) = (o / lanes, o % lanes);
            for y in 0..kh {
                for x in 0..kw {
                    for i in 0..ci {
                        packed[(((g * kh + y) * kw + x) * ci + i) * lanes + lane] = k[[o, y, x, i]];
                    }
                }
            }
        }
        let Some(bias_values) = bias_per_channel(bias, co)? else { return Ok(None) };
        let mut padded_bias = vec![0f32; groups * lanes];
        padded_bias[..co].copy_from_slice(&bias_values);
        Ok(Some(DirectConv {
            pool_spec: spec.clone(),
            planned,
            clamp: [f32::NEG_INFINITY.to_bits(), f32::INFINITY.to_bits()],
            requant: None,
            lanes,
            packed: tensor1(&packed).into_arc_tensor(),
            bias: tensor1(&padded_bias).into_arc_tensor(),
        }))
    }
}

impl DirectConv {
    fn low(&self) -> f32 {
        f32::from_bits(self.clamp[0])
    }

    fn high(&self) -> f32 {
        f32::from_bits(self.clamp[1])
    }

    /// Also clamps the outputs to `low..=high`.
    pub(super) fn clamp_to(&mut self, low: f32, high: f32) {
        self.clamp = [self.low().max(low).to_bits(), self.high().min(high).to_bits()];
    }
}

impl Op for DirectConv {
    fn name(&self) -> StaticName {
        "DirectConv".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let mut info = self.pool_spec.info();
        info.push(format!("clamp: {}..={}, {} output channels per group", self.low(), self.high(), self.lanes));
        Ok(info)
    }

    op_as_typed_op!();
}

impl EvalOp for DirectConv {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let shape = input.shape();
        let (n, ih, iw, ci) = nhwc(shape)?;
        ensure!(ci == self.pool_spec.input_channels, "{ci} input channels, expected {}", self.pool_spec.input_channels);
        let mut replanned = None;
        let planned = self.planned.for_input(&self.pool_spec, shape, &mut replanned)?;
        let geo = Geometry {
            ih,
            iw,
            ci,
            co: self.pool_spec.output_channels,
            kh: self.pool_spec.kernel_shape[0],
            kw: self.pool_spec.kernel_shape[1],
            stride: [self.pool_spec.stride(0), self.pool_spec.stride(1)],
            dilation: [self.pool_spec.dilation(0), self.pool_spec.dilation(1)],
            pad: planned.pad,
            oh: planned.out_hw[0],
            ow: planned.out_hw[1],
            lanes: self.lanes,
            low: self.low(),
            high: self.high(),
        };
        // SAFETY: f32 has no invalid bit patterns, and `run` writes every output value (every
        // pixel, every channel of every group).
        let mut output = unsafe { Tensor::uninitialized::<f32>(&[n, geo.oh, geo.ow, geo.co])? };
        output.set_shape(&planned.output)?;
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
        if let Some(requant) = &self.requant {
            requant.apply(output.try_as_plain_ram_mut()?.as_slice_mut::<f32>()?);
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

#[cfg(test)]
mod tests {
    use tract_core::ops::cnn::KernelFormat;

    use super::super::testing::check;
    use super::*;

    #[test]
    fn matches_tract_across_layouts_paddings_strides_and_channel_counts() -> TractResult<()> {
        for (ci, co) in [(1, 8), (3, 24), (3, 32), (3, 40), (4, 7)] {
            check([13, 11], KernelFormat::OHWI, 1, ci, co, [3, 3], [2, 2], [1, 1], PaddingSpec::SameUpper)?;
        }
        check([13, 11], KernelFormat::OHWI, 1, 3, 16, [3, 3], [1, 1], [1, 1], PaddingSpec::Valid)?;
        check(
            [13, 11],
            KernelFormat::OIHW,
            1,
            3,
            16,
            [5, 5],
            [2, 2],
            [1, 1],
            PaddingSpec::Explicit(tvec![1, 2], tvec![2, 1]),
        )?;
        check([13, 11], KernelFormat::HWIO, 1, 2, 12, [3, 2], [1, 2], [2, 1], PaddingSpec::SameLower)?;
        check([13, 11], KernelFormat::OHWI, 1, 1, 64, [3, 3], [1, 1], [2, 2], PaddingSpec::SameUpper)?;
        // One time step of a streaming model: tiny whatever its channel counts.
        check([1, 1], KernelFormat::OHWI, 1, 64, 64, [1, 1], [1, 1], [1, 1], PaddingSpec::Valid)?;
        check([5, 1], KernelFormat::OHWI, 1, 40, 64, [5, 1], [1, 1], [1, 1], PaddingSpec::Valid)?;
        if vectorised() {
            // Pointwise, up to 80 input channels (16-lane groups, the last one partial).
            check([13, 11], KernelFormat::OHWI, 1, 64, 40, [1, 1], [1, 1], [1, 1], PaddingSpec::Valid)?;
            check([13, 11], KernelFormat::OHWI, 1, 16, 24, [1, 1], [1, 1], [1, 1], PaddingSpec::Valid)?;
            // Any input, when there are at most 16 outputs.
            check([13, 11], KernelFormat::OHWI, 1, 32, 8, [3, 3], [2, 2], [1, 1], PaddingSpec::SameUpper)?;
        }
        Ok(())
    }
}
