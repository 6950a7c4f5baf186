//! Convolutions, pooling and dense layers: CONV_2D, DEPTHWISE_CONV_2D, the transposed
//! convolutions (TRANSPOSE_CONV and MediaPipe's `Convolution2DTransposeBias`), the 2-D pools,
//! FULLY_CONNECTED and BATCH_MATMUL. The kernels are read as OHWI, the TFLite layout; the
//! engine's own convolution ops take over from tract's later, in `direct_conv`.

use tract_core::internal::*;
use tract_core::ops::cast::cast;
use tract_core::ops::cnn::{Conv, Deconv, KernelFormat, MaxPool, PaddingSpec, PoolSpec, SumPool};
use tract_core::ops::einsum::EinSum;
use tract_core::ops::math;
use tract_core::ops::nn::DataFormat;
use tract_tflite::tflite::{self as tfl, Padding};

use super::super::pool::GlobalAveragePool;
use super::super::Graph;
use super::{ints, Node};

fn padding(p: Padding) -> TractResult<PaddingSpec> {
    Ok(match p {
        Padding::SAME => PaddingSpec::SameUpper,
        Padding::VALID => PaddingSpec::Valid,
        other => bail!("unsupported padding {other:?}"),
    })
}

impl Graph<'_, '_> {
    pub(super) fn conv_inputs(
        &mut self,
        n: &Node,
        out_channels: usize,
        kernel_ix: usize,
        bias_ix: usize,
    ) -> TractResult<(OutletId, OutletId)> {
        let k = self.input(n, kernel_ix)?;
        let k = if self.fact(k)?.datum_type != f32::datum_type() {
            self.wire(&format!("{}.kernel_f32", n.label), cast(f32::datum_type()), &[k])?[0]
        } else {
            k
        };
        let bias = match self.opt_input(n, bias_ix)? {
            Some(b) if self.fact(b)?.datum_type == f32::datum_type() => b,
            Some(b) => self.wire(&format!("{}.bias_f32", n.label), cast(f32::datum_type()), &[b])?[0],
            None => {
                let name = self.name(&format!("{}.bias", n.label));
                self.target.add_const(name, Tensor::zero::<f32>(&[out_channels])?)?
            }
        };
        Ok((k, bias))
    }

    pub(super) fn conv(&mut self, n: &Node) -> TractResult<TVec<OutletId>> {
        let l = n.label.as_str();
        let o = options!(n, builtin_options_as_conv_2_doptions);
        let x = self.input(n, 0)?;
        let kshape = self.input_shape(n, 1, "kernel shape must be known")?;
        ensure!(kshape.len() == 4, "CONV_2D kernel must be OHWI, got {kshape:?}");
        let ci = self.fact(x)?.shape[3].to_usize().context("input channels must be known")?;
        ensure!(kshape[3] > 0 && ci % kshape[3] == 0, "input channels {ci} vs kernel {kshape:?}");
        let (k, bias) = self.conv_inputs(n, kshape[0], 1, 2)?;
        let conv = Conv {
            pool_spec: PoolSpec {
                data_format: DataFormat::NHWC,
                kernel_shape: tvec!(kshape[1], kshape[2]),
                padding: padding(o.padding())?,
                dilations: Some(tvec!(o.dilation_h_factor().max(1) as usize, o.dilation_w_factor().max(1) as usize)),
                strides: Some(tvec!(o.stride_h().max(1) as usize, o.stride_w().max(1) as usize)),
                input_channels: ci,
                output_channels: kshape[0],
            },
            kernel_fmt: KernelFormat::OHWI,
            group: ci / kshape[3],
            q_params: None,
        };
        let y = self.wire(l, conv, &[x, k, bias])?[0];
        Ok(tvec!(self.activation(l, y, o.fused_activation_function())?))
    }

    pub(super) fn depthwise_conv(&mut self, n: &Node) -> TractResult<TVec<OutletId>> {
        let l = n.label.as_str();
        let o = options!(n, builtin_options_as_depthwise_conv_2_doptions);
        let x = self.input(n, 0)?;
        let kshape = self.input_shape(n, 1, "kernel shape must be known")?;
        ensure!(kshape.len() == 4 && kshape[0] == 1, "DEPTHWISE_CONV_2D kernel must be [1,H,W,C*M], got {kshape:?}");
        let ci = self.fact(x)?.shape[3].to_usize().context("input channels must be known")?;
        let co = kshape[3];
        ensure!(ci > 0 && co % ci == 0, "depthwise: {co} output channels for {ci} inputs");
        let (k, bias) = self.conv_inputs(n, co, 1, 2)?;
        // [1,H,W,C*M] -> [C*M,1,H,W]: OIHW with one input channel per group.
        let k = self.wire(&format!("{l}.kernel_oihw"), AxisOp::Move(3, 0), &[k])?[0];
        let conv = Conv {
            pool_spec: PoolSpec {
                data_format: DataFormat::NHWC,
                kernel_shape: tvec!(kshape[1], kshape[2]),
                padding: padding(o.padding())?,
                dilations: Some(tvec!(o.dilation_h_factor().max(1) as usize, o.dilation_w_factor().max(1) as usize)),
                strides: Some(tvec!(o.stride_h().max(1) as usize, o.stride_w().max(1) as usize)),
                input_channels: ci,
                output_channels: co,
            },
            kernel_fmt: KernelFormat::OIHW,
            group: ci,
            q_params: None,
        };
        let y = self.wire(l, conv, &[x, k, bias])?[0];
        Ok(tvec!(self.activation(l, y, o.fused_activation_function())?))
    }

    /// Transposed convolution with an OHWI kernel, padded so that the output has the size the
    /// file declares (TFLite pads the way a forward convolution from output to input would).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn deconv(
        &mut self,
        n: &Node,
        x: OutletId,
        kernel_ix: usize,
        bias_ix: usize,
        same: bool,
        strides: [usize; 2],
        out_hw: Option<[usize; 2]>,
    ) -> TractResult<OutletId> {
        let l = n.label.as_str();
        let kshape = self.input_shape(n, kernel_ix, "kernel shape must be known")?;
        ensure!(kshape.len() == 4, "transposed convolution kernel must be OHWI, got {kshape:?}");
        let xf = self.fact(x)?;
        let ci = xf.shape[3].to_usize().context("input channels must be known")?;
        ensure!(ci == kshape[3], "kernel {kshape:?} for {ci} input channels");
        let (k, bias) = self.conv_inputs(n, kshape[0], kernel_ix, bias_ix)?;
        let mut before = tvec!();
        let mut after = tvec!();
        let mut adjustments = tvec!();
        for a in 0..2 {
            let input = xf.shape[1 + a].to_usize().context("spatial input size must be known")?;
            let kernel = kshape[1 + a];
            let full = (input - 1) * strides[a] + kernel;
            let out = match out_hw {
                Some(hw) => hw[a],
                None if same => input * strides[a],
                None => full,
            };
            if full >= out {
                let total = full - out;
                before.push(total / 2);
                after.push(total - total / 2);
                adjustments.push(0);
            } else {
                before.push(0);
                after.push(0);
                adjustments.push(out - full);
            }
        }
        let op = Deconv {
            pool_spec: PoolSpec {
                data_format: DataFormat::NHWC,
                kernel_shape: tvec!(kshape[1], kshape[2]),
                padding: PaddingSpec::Explicit(before, after),
                dilations: None,
                strides: Some(strides.iter().copied().collect()),
                input_channels: ci,
                output_channels: kshape[0],
            },
            kernel_format: KernelFormat::OHWI,
            adjustments,
            group: 1,
        };
        Ok(self.wire(l, op, &[x, k, bias])?[0])
    }

    pub(super) fn declared_hw(&self, n: &Node) -> TractResult<Option<[usize; 2]>> {
        let info = self.info(n.outputs[0])?;
        Ok(match info.signature.as_slice() {
            [_, Some(h), Some(w), _] => Some([*h, *w]),
            _ => None,
        })
    }

    pub(super) fn transpose_conv(&mut self, n: &Node) -> TractResult<TVec<OutletId>> {
        let o = options!(n, builtin_options_as_transpose_conv_options);
        let x = self.input(n, 2)?;
        let shape = ints(&*self.input_konst(n, 0, "output shape")?)?;
        ensure!(shape.len() == 4, "TRANSPOSE_CONV output shape must be NHWC");
        let out_hw = Some([shape[1] as usize, shape[2] as usize]);
        let strides = [o.stride_h().max(1) as usize, o.stride_w().max(1) as usize];
        let y = self.deconv(n, x, 1, 3, o.padding() == Padding::SAME, strides, out_hw)?;
        let l = n.label.clone();
        Ok(tvec!(self.activation(&l, y, o.fused_activation_function())?))
    }

    /// MediaPipe's `Convolution2DTransposeBias`: input, OHWI weights, bias; its options are
    /// a raw `TfLiteTransposeConvParams` (padding, stride_width, stride_height as i32).
    pub(super) fn conv_transpose_bias(&mut self, n: &Node) -> TractResult<TVec<OutletId>> {
        let raw: Vec<u8> = n.flat.custom_options().map(|v| v.bytes().to_vec()).unwrap_or_default();
        ensure!(raw.len() >= 12, "Convolution2DTransposeBias options are {} bytes, expected 12", raw.len());
        let word = |i: usize| i32::from_le_bytes([raw[4 * i], raw[4 * i + 1], raw[4 * i + 2], raw[4 * i + 3]]);
        let (pad, stride_w, stride_h) = (word(0), word(1), word(2));
        ensure!(pad == 1 || pad == 2, "Convolution2DTransposeBias padding {pad} (1 = same, 2 = valid)");
        ensure!(stride_w > 0 && stride_h > 0, "Convolution2DTransposeBias strides {stride_h}x{stride_w}");
        let x = self.input(n, 0)?;
        let out_hw = self.declared_hw(n)?;
        let y = self.deconv(n, x, 1, 2, pad == 1, [stride_h as usize, stride_w as usize], out_hw)?;
        Ok(tvec!(y))
    }

    pub(super) fn pool(&mut self, n: &Node, max: bool) -> TractResult<TVec<OutletId>> {
        let l = n.label.as_str();
        let o = options!(n, builtin_options_as_pool_2_doptions);
        let x = self.input(n, 0)?;
        let c = self.fact(x)?.shape[3].to_usize().context("channels must be known")?;
        let pool_spec = PoolSpec {
            data_format: DataFormat::NHWC,
            kernel_shape: tvec!(o.filter_height().max(1) as usize, o.filter_width().max(1) as usize),
            padding: padding(o.padding())?,
            dilations: None,
            strides: Some(tvec!(o.stride_h().max(1) as usize, o.stride_w().max(1) as usize)),
            input_channels: c,
            output_channels: c,
        };
        let (kh, kw) = (pool_spec.kernel_shape[0], pool_spec.kernel_shape[1]);
        let shape = self.fact(x)?.shape;
        let global = shape[1] == kh.to_dim() && shape[2] == kw.to_dim() && pool_spec.padding == PaddingSpec::Valid;
        let y = if max {
            self.wire(l, MaxPool { pool_spec, with_index_outputs: None }, &[x])?[0]
        } else if global {
            self.wire(l, GlobalAveragePool, &[x])?[0]
        } else {
            self.wire(l, SumPool { pool_spec, normalize: true, count_include_pad: false }, &[x])?[0]
        };
        Ok(tvec!(self.activation(l, y, o.fused_activation_function())?))
    }

    pub(super) fn fully_connected(&mut self, n: &Node) -> TractResult<TVec<OutletId>> {
        let l = n.label.as_str();
        let o = options!(n, builtin_options_as_fully_connected_options);
        ensure!(
            o.weights_format() == tfl::FullyConnectedOptionsWeightsFormat::DEFAULT,
            "shuffled weights are not supported"
        );
        let x = self.input(n, 0)?;
        let (w, bias) = {
            let wshape = self.input_shape(n, 1, "weights shape must be known")?;
            ensure!(wshape.len() == 2, "FULLY_CONNECTED weights must be [out, in], got {wshape:?}");
            let (w, b) = self.conv_inputs(n, wshape[0], 1, 2)?;
            (w, (b, wshape[0], wshape[1]))
        };
        let (bias, out_features, in_features) = bias;
        let xf = self.fact(x)?;
        let lead: TVec<TDim> = xf.shape.iter().take(xf.rank().saturating_sub(1)).cloned().collect();
        let flat = if xf.rank() == 2 && xf.shape[1] == in_features.to_dim() {
            x
        } else {
            let volume: TDim = xf.shape.iter().product();
            self.reshape(&format!("{l}.flatten"), x, &[volume / in_features as u64, in_features.to_dim()])?
        };
        let y = self.wire(l, EinSum::new("BI,OI->BO".parse()?, f32::datum_type()), &[flat, w])?[0];
        let b = self.wire(&format!("{l}.bias_row"), AxisOp::Add(0), &[bias])?[0];
        let mut y = self.binary(&format!("{l}.bias"), math::add(), y, b)?;
        if o.keep_num_dims() {
            let mut shape = lead.clone();
            shape.push(out_features.to_dim());
            y = self.reshape(&format!("{l}.unflatten"), y, &shape)?;
        }
        Ok(tvec!(self.activation(l, y, o.fused_activation_function())?))
    }

    pub(super) fn batch_matmul(&mut self, n: &Node) -> TractResult<TVec<OutletId>> {
        let l = n.label.as_str();
        let o = options!(n, builtin_options_as_batch_mat_mul_options);
        let mut a = self.input(n, 0)?;
        let mut b = self.input(n, 1)?;
        let (fa, fb) = (self.fact(a)?, self.fact(b)?);
        ensure!(fa.rank() >= 2 && fb.rank() >= 2, "BATCH_MATMUL needs rank 2 or more");
        let batch = fa.rank().max(fb.rank()) - 2;
        // Batch letters, aligned on the right; an axis of 1 facing a larger one is dropped so
        // that it broadcasts.
        let letters: Vec<char> = ('a'..='h').take(batch).collect();
        ensure!(batch <= letters.len(), "too many batch axes");
        let mut spec = |x: &mut OutletId, f: &TypedFact, other: &TypedFact, name: &str| -> TractResult<String> {
            let own = f.rank() - 2;
            let other_batch = other.rank() - 2;
            let mut s = String::new();
            let mut removed = 0;
            for i in 0..own {
                let letter = letters[batch - own + i];
                let mine = &f.shape[i];
                let theirs = (i + other_batch).checked_sub(own).map(|j| &other.shape[j]);
                if *mine == 1.to_dim() && theirs.is_some_and(|t| *t != 1.to_dim()) {
                    *x = self.wire(&format!("{l}.{name}.rm{i}"), AxisOp::Rm(i - removed), &[*x])?[0];
                    removed += 1;
                } else {
                    s.push(letter);
                }
            }
            Ok(s)
        };
        let sa = spec(&mut a, &fa, &fb, "a")?;
        let sb = spec(&mut b, &fb, &fa, "b")?;
        let out: String = letters.iter().collect();
        let ea = if o.adj_x() { "km" } else { "mk" };
        let eb = if o.adj_y() { "nk" } else { "kn" };
        let expr = format!("{sa}{ea},{sb}{eb}->{out}mn");
        self.wire(l, EinSum::new(expr.parse()?, f32::datum_type()), &[a, b])
    }
}
