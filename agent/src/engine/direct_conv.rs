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

use tract_core::internal::*;
use tract_core::ops::cnn::{Conv, KernelFormat, PaddingSpec, PoolSpec};
use tract_core::ops::nn::DataFormat;

use super::fuse::single_use;
use super::tflite::qops::FakeQuant;

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
    requant: Option<FakeQuant>,
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

/// Whether this build and CPU run [`DirectConv`] as vector code: x86_64 with AVX2 and FMA,
/// or aarch64 (NEON is baseline).
fn vectorised() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        cfg!(target_arch = "aarch64")
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
    fn clamp_to(&mut self, low: f32, high: f32) {
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
    low: f32,
    high: f32,
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

/// A depthwise convolution (one input channel per group, multiplier 1) over an NHWC float
/// input with constant weights and bias, run by [`super::kernels::depthwise`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NhwcDepthwise {
    pool_spec: PoolSpec,
    planned: Planned,
    /// The input's height and width at load, and for that size every tap's index and input
    /// offset from the window's first pixel: computed once, not per call.
    input_hw: [usize; 2],
    all_taps: Vec<usize>,
    all_offsets: Vec<isize>,
    /// The requantisation of an int8 TFLite model that followed the convolution, applied last.
    requant: Option<FakeQuant>,
    /// `[ky][kx][c]`: one tap's weights contiguous over the channels, as the kernel reads them.
    weights: Arc<Tensor>,
    bias: Arc<Tensor>,
}

impl NhwcDepthwise {
    /// Builds the op from a `Conv`'s spec and its constant kernel and bias, or `None` when the
    /// convolution is not one this op computes or this CPU has no kernel for it.
    pub fn from_conv(
        conv: &Conv,
        input: &TypedFact,
        kernel: &Tensor,
        bias: &Tensor,
    ) -> TractResult<Option<NhwcDepthwise>> {
        let spec = &conv.pool_spec;
        let c = spec.input_channels;
        if super::kernels::depthwise().is_none()
            || conv.q_params.is_some()
            || conv.group != c
            || spec.output_channels != c
            || !matches!(spec.data_format, DataFormat::NHWC | DataFormat::HWC)
            || spec.kernel_shape.len() != 2
            || input.datum_type != f32::datum_type()
            || kernel.datum_type() != f32::datum_type()
            || matches!(spec.padding, PaddingSpec::ExplicitOnnxPool(..))
        {
            return Ok(None);
        }
        let Some(input_shape) = input.shape.as_concrete() else { return Ok(None) };
        let (kh, kw) = (spec.kernel_shape[0], spec.kernel_shape[1]);
        let Some(k) = kernel_ohwi(conv, kernel)? else { return Ok(None) };
        let mut weights = vec![0f32; kh * kw * c];
        for ch in 0..c {
            for y in 0..kh {
                for x in 0..kw {
                    weights[(y * kw + x) * c + ch] = k[[ch, y, x, 0]];
                }
            }
        }
        let Some(bias) = bias_per_channel(bias, c)? else { return Ok(None) };
        let shape = spec.data_format.shape(input_shape.to_vec())?;
        let (ih, iw) = (shape.hw_dims()[0], shape.hw_dims()[1]);
        let (all_taps, all_offsets) = window(spec, iw, c);
        Ok(Some(NhwcDepthwise {
            pool_spec: spec.clone(),
            planned: Planned::new(spec, input_shape)?,
            input_hw: [ih, iw],
            all_taps,
            all_offsets,
            requant: None,
            weights: tensor1(&weights).into_arc_tensor(),
            bias: tensor1(&bias).into_arc_tensor(),
        }))
    }
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

/// Every tap of a depthwise window, with its input offset from the window's first pixel, for
/// an input `iw` pixels wide with `c` channels.
fn window(spec: &PoolSpec, iw: usize, c: usize) -> (Vec<usize>, Vec<isize>) {
    let (kh, kw) = (spec.kernel_shape[0], spec.kernel_shape[1]);
    let (dy, dx) = (spec.dilation(0), spec.dilation(1));
    let taps = (0..kh * kw).collect();
    let offsets = (0..kh * kw).map(|t| (((t / kw) * dy * iw + (t % kw) * dx) * c) as isize).collect();
    (taps, offsets)
}

impl Op for NhwcDepthwise {
    fn name(&self) -> StaticName {
        "NhwcDepthwise".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let mut info = self.pool_spec.info();
        info.push(format!("kernel: {}", super::kernels::depthwise_kernel().unwrap_or("none")));
        Ok(info)
    }

    op_as_typed_op!();
}

impl EvalOp for NhwcDepthwise {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let shape = input.shape();
        let (n, ih, iw, c) = nhwc(shape)?;
        ensure!(c == self.pool_spec.input_channels, "{c} channels, expected {}", self.pool_spec.input_channels);
        let (_, run) = super::kernels::depthwise().context("no depthwise kernel on this CPU")?;
        let mut replanned = None;
        let planned = self.planned.for_input(&self.pool_spec, shape, &mut replanned)?;
        let (kh, kw) = (self.pool_spec.kernel_shape[0], self.pool_spec.kernel_shape[1]);
        let (sy, sx) = (self.pool_spec.stride(0), self.pool_spec.stride(1));
        let (dy, dx) = (self.pool_spec.dilation(0), self.pool_spec.dilation(1));
        let (pad_y, pad_x) = (planned.pad[0] as isize, planned.pad[1] as isize);
        let (oh, ow) = (planned.out_hw[0], planned.out_hw[1]);
        // SAFETY: f32 has no invalid bit patterns, and every output pixel gets one kernel call
        // that writes all its channels (below: the interior run or the border pixel).
        let mut output = unsafe { Tensor::uninitialized::<f32>(&[n, oh, ow, c])? };
        output.set_shape(&planned.output)?;
        {
            let x = input.to_plain_array_view::<f32>()?;
            let x = x.as_slice().context("NhwcDepthwise input must be contiguous")?;
            let mut out_view = output.try_as_plain_ram_mut()?;
            let out = out_view.as_slice_mut::<f32>()?;
            let weights_view = self.weights.try_as_plain_ram()?;
            let weights = weights_view.as_slice::<f32>()?;
            let bias_view = self.bias.try_as_plain_ram()?;
            let bias = bias_view.as_slice::<f32>()?;
            let computed;
            let (all_taps, all_offsets) = if self.input_hw == [ih, iw] {
                (&self.all_taps, &self.all_offsets)
            } else {
                computed = window(&self.pool_spec, iw, c);
                (&computed.0, &computed.1)
            };
            let x_start = |ox: usize| (ox * sx) as isize - pad_x;
            let inside = |ox: usize| tap_range(x_start(ox), dx, kw, iw) == (0..kw);
            let first_x = (0..ow).find(|&ox| inside(ox)).unwrap_or(ow);
            let end_x = (first_x..ow).find(|&ox| !inside(ox)).unwrap_or(ow);
            // Filled for border pixels only: no allocation when there are none.
            let mut taps = Vec::new();
            let mut offsets = Vec::new();
            for b in 0..n {
                let image = &x[b * ih * iw * c..][..ih * iw * c];
                let out = &mut out[b * oh * ow * c..][..oh * ow * c];
                for oy in 0..oh {
                    let y0 = (oy * sy) as isize - pad_y;
                    let ky_range = tap_range(y0, dy, kh, ih);
                    let mut ox = 0;
                    while ox < ow {
                        let o = &mut out[(oy * ow + ox) * c..];
                        if ky_range == (0..kh) && ox == first_x && first_x < end_x {
                            let start = (y0 as usize * iw + x_start(ox) as usize) * c;
                            let len = end_x - first_x;
                            // Bounds of the whole run, checked once for the unchecked kernel.
                            let last_in = start + (len - 1) * sx * c + *all_offsets.last().unwrap() as usize + c;
                            ensure!(last_in <= image.len() && len * c <= o.len());
                            // SAFETY: every read is below `last_in`, every write within `o`.
                            unsafe {
                                run(
                                    image.as_ptr().add(start),
                                    o.as_mut_ptr(),
                                    weights.as_ptr(),
                                    all_taps,
                                    all_offsets,
                                    bias.as_ptr(),
                                    c,
                                    c,
                                    len,
                                    (sx * c) as isize,
                                    c as isize,
                                )
                            };
                            ox = end_x;
                            continue;
                        }
                        // A border pixel: only the taps inside the image, offsets from its
                        // image's first value.
                        let x0 = x_start(ox);
                        taps.clear();
                        offsets.clear();
                        for ky in ky_range.clone() {
                            let iy = (y0 + (ky * dy) as isize) as usize;
                            for kx in tap_range(x0, dx, kw, iw) {
                                let ix = (x0 + (kx * dx) as isize) as usize;
                                taps.push(ky * kw + kx);
                                offsets.push(((iy * iw + ix) * c) as isize);
                            }
                        }
                        ensure!(c <= o.len());
                        // SAFETY: each offset is a pixel inside the image, `c` values long.
                        unsafe {
                            run(
                                image.as_ptr(),
                                o.as_mut_ptr(),
                                weights.as_ptr(),
                                &taps,
                                &offsets,
                                bias.as_ptr(),
                                c,
                                c,
                                1,
                                0,
                                0,
                            )
                        };
                        ox += 1;
                    }
                }
            }
        }
        if let Some(requant) = &self.requant {
            requant.apply(output.try_as_plain_ram_mut()?.as_slice_mut::<f32>()?);
        }
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for NhwcDepthwise {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        self.pool_spec.output_facts(inputs)
    }

    as_op!();
}

fn run(geo: &Geometry, x: &[f32], packed: &[f32], bias: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if vectorised() {
        // SAFETY: on x86_64, `vectorised` means AVX2 and FMA, what the function is compiled for.
        unsafe { run_avx2_fma(geo, x, packed, bias, out) };
        return;
    }
    run_baseline(geo, x, packed, bias, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn run_avx2_fma(geo: &Geometry, x: &[f32], packed: &[f32], bias: &[f32], out: &mut [f32]) {
    run_generic::<true>(geo, x, packed, bias, out)
}

fn run_baseline(geo: &Geometry, x: &[f32], packed: &[f32], bias: &[f32], out: &mut [f32]) {
    // aarch64 always has fused multiply-add; elsewhere `mul_add` would be a libm call.
    run_generic::<{ cfg!(target_arch = "aarch64") }>(geo, x, packed, bias, out)
}

/// The whole image, dispatched on the group width so that each instance keeps its
/// accumulators in registers: several output pixels at once where the group is narrow.
#[inline(always)]
fn run_generic<const FMA: bool>(geo: &Geometry, x: &[f32], packed: &[f32], bias: &[f32], out: &mut [f32]) {
    match geo.lanes {
        8 => run_lanes::<8, 4, FMA>(geo, x, packed, bias, out),
        16 => run_lanes::<16, 6, FMA>(geo, x, packed, bias, out),
        24 => run_lanes::<24, 2, FMA>(geo, x, packed, bias, out),
        _ => run_lanes::<32, 2, FMA>(geo, x, packed, bias, out),
    }
}

/// Every output pixel, every group of `L` output channels. Output rows and columns whose
/// taps all fall inside the image go `P` pixels at a time through [`interior`]; the border
/// pixels through [`border`], which skips the taps that fall in the padding.
#[inline(always)]
fn run_lanes<const L: usize, const P: usize, const FMA: bool>(
    geo: &Geometry,
    x: &[f32],
    packed: &[f32],
    bias: &[f32],
    out: &mut [f32],
) {
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
                    let acc = interior::<L, P, FMA>(&x[start..], geo.stride[1] * geo.ci, &offsets, weights, bias);
                    for (p, acc) in acc.iter().enumerate() {
                        store(&mut out[((oy * geo.ow + ox + p) * geo.co + g * L)..][..lanes], acc, geo.low, geo.high);
                    }
                    ox += P;
                } else {
                    let acc = border::<L, FMA>(geo, x, oy, ox, weights, bias);
                    store(&mut out[((oy * geo.ow + ox) * geo.co + g * L)..][..lanes], &acc, geo.low, geo.high);
                    ox += 1;
                }
            }
        }
    }
}

/// `a * b + c`: one fused instruction where the caller is compiled for FMA (Rust never fuses
/// a separate multiply and add by itself), two otherwise.
#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// Writes the real output channels of one pixel, clamped.
#[inline(always)]
fn store<const L: usize>(out: &mut [f32], acc: &[f32; L], low: f32, high: f32) {
    for (o, a) in out.iter_mut().zip(acc) {
        *o = a.max(low).min(high);
    }
}

/// `P` output pixels, `step` input values apart, with all their taps inside the image.
#[inline(always)]
fn interior<const L: usize, const P: usize, const FMA: bool>(
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
                a[l] = madd::<FMA>(w[l], v, a[l]);
            }
        }
    }
    acc
}

/// One output pixel near the border: the taps that fall in the padding are skipped.
#[inline(always)]
fn border<const L: usize, const FMA: bool>(
    geo: &Geometry,
    x: &[f32],
    oy: usize,
    ox: usize,
    weights: &[f32],
    bias: &[f32],
) -> [f32; L] {
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
                    acc[l] = madd::<FMA>(w[l], *value, acc[l]);
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

/// tract's `into_optimized`, with [`replace_convs`] run before declutter, which turns
/// pointwise convolutions into einsums, and after it, which folds explicit pads and batch
/// norms into the others and makes the depthwise kernels constant.
pub fn optimize(mut model: TypedModel) -> TractResult<TypedModel> {
    // Weights computed from constants (densified, dequantised) become constants first.
    model.prop_consts()?;
    replace_convs(&mut model, true)?;
    let mut model = model.into_decluttered()?;
    super::fuse::fuse(&mut model)?;
    replace_convs(&mut model, false)?;
    model.into_optimized()
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
    #[allow(clippy::too_many_arguments)]
    fn check(
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

    #[test]
    fn depthwise_matches_tract_across_paddings_strides_and_channel_counts() -> TractResult<()> {
        if super::super::kernels::depthwise().is_none() {
            eprintln!("no depthwise kernel on this CPU: tract keeps these layers");
            return Ok(());
        }
        // 21 and 40 channels end in a partial vector; 7x7 and 5x5 kernels make border zones
        // wider than the 13x11 image's interior in places.
        for ch in [1, 8, 16, 21, 40] {
            check([13, 11], KernelFormat::OIHW, ch, ch, ch, [3, 3], [2, 2], [1, 1], PaddingSpec::SameUpper)?;
            check([13, 11], KernelFormat::OIHW, ch, ch, ch, [3, 3], [1, 1], [1, 1], PaddingSpec::Valid)?;
        }
        check(
            [13, 11],
            KernelFormat::OIHW,
            24,
            24,
            24,
            [5, 5],
            [1, 2],
            [1, 1],
            PaddingSpec::Explicit(tvec![2, 1], tvec![2, 3]),
        )?;
        check([13, 11], KernelFormat::OIHW, 32, 32, 32, [7, 7], [1, 1], [2, 1], PaddingSpec::SameLower)?;
        check([13, 11], KernelFormat::OIHW, 17, 17, 17, [17, 1], [1, 1], [1, 1], PaddingSpec::Valid)?;
        Ok(())
    }

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
