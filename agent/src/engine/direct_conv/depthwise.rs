//! [`NhwcDepthwise`]: channels-last depthwise layers on the SIMD kernels of
//! [`crate::engine::kernels`]. Each tap's input offset is computed at load; at run time the
//! interior of an output row is one kernel call and each border pixel one call with only the
//! taps inside the image.

use tract_core::internal::*;
use tract_core::ops::cnn::{Conv, PaddingSpec, PoolSpec};
use tract_core::ops::nn::DataFormat;

use super::{bias_per_channel, interior_columns, kernel_ohwi, nhwc, tap_range, Planned};
use crate::engine::kernels;
use crate::engine::tflite::qops::FakeQuant;

/// A depthwise convolution (one input channel per group, multiplier 1) over an NHWC float
/// input with constant weights and bias, run by [`kernels::depthwise`].
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
    pub(super) requant: Option<FakeQuant>,
    /// `[ky][kx][c]`: one tap's weights contiguous over the channels, as the kernel reads them.
    weights: Arc<Tensor>,
    pub(super) bias: Arc<Tensor>,
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
        if kernels::depthwise().is_none()
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
        info.push(format!("kernel: {}", kernels::depthwise_kernel().unwrap_or("none")));
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
        let (_, run) = kernels::depthwise().context("no depthwise kernel on this CPU")?;
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
            let std::ops::Range { start: first_x, end: end_x } = interior_columns(ow, sx, planned.pad[1], dx, kw, iw);
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

#[cfg(test)]
mod tests {
    use tract_core::ops::cnn::KernelFormat;

    use super::super::testing::check;
    use super::*;

    #[test]
    fn depthwise_matches_tract_across_paddings_strides_and_channel_counts() -> TractResult<()> {
        if kernels::depthwise().is_none() {
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
}
