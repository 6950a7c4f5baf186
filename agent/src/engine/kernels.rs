//! SIMD kernels the agent gives tract where tract 0.23 has none for this machine.
//!
//! tract's depthwise convolution runs channels-last (NHWC, every TFLite model) through a
//! pluggable "channel-inner" kernel, `Func::DepthwiseC`, and falls back to a generic Rust loop
//! when no kernel is declared for the machine. tract 0.23 declares one for wasm only, so on
//! x86_64 and aarch64 every TFLite depthwise layer ran that generic loop: it loads and stores
//! the output vector once per kernel tap and, on x86_64, is vectorised for SSE2 at best. The
//! MediaPipe CNNs spend a quarter to a third of their time there.
//!
//! The kernels here keep a block of output positions in registers across all taps (one FMA per
//! tap and position, the tap's weights loaded once per block of positions) and are registered
//! in tract's routine table through `inventory`, the way tract's own kernels are, so tract's
//! `DepthWise` op picks them up without any change to the graph. The right one is chosen at
//! run time from the CPU's features: AVX-512F, else AVX2 + FMA on x86_64; NEON, which is
//! baseline, on aarch64. armv7 keeps tract's loop.
//!
//! The arithmetic differs from tract's loop only by fused multiply-adds (one rounding per tap
//! instead of two), far inside the engine's 1e-3 tolerance.

/// The channels-last depthwise kernel tract will run on this machine, by name, or `None` when
/// tract keeps its generic loop. Calling it also keeps this module, and with it the
/// registrations below, in the linked binary.
pub fn depthwise_kernel() -> Option<&'static str> {
    let routine = tract_linalg::routines::best_for(
        tract_linalg::Func::DepthwiseC,
        tract_core::prelude::DatumType::F32,
        &tract_linalg::isa::native(),
    )?;
    Some(routine.name())
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;
    use tract_linalg::isa::{Arch, Isa, IsaReq};
    use tract_linalg::routines::{Routine, RoutineFactory};
    use tract_linalg::Func;

    inventory::submit! {
        Routine {
            func: Func::DepthwiseC,
            arch: Some(Arch::X86_64),
            isa: IsaReq { needs: &[Isa::X86_64Avx512f] },
            boost: 0,
            round_trip: false,
            factory: RoutineFactory::DepthwiseCF32 {
                name: "edge_avx512f_depthwise_c_f32",
                run: depthwise_c_avx512,
            },
        }
    }

    inventory::submit! {
        Routine {
            func: Func::DepthwiseC,
            arch: Some(Arch::X86_64),
            isa: IsaReq { needs: &[Isa::X86_64Avx2, Isa::X86_64Fma] },
            boost: 0,
            round_trip: false,
            factory: RoutineFactory::DepthwiseCF32 {
                name: "edge_avx2_fma_depthwise_c_f32",
                run: depthwise_c_avx2,
            },
        }
    }

    /// tract's `DepthwiseCF32` contract (see `tract_linalg::routines::DepthwiseCF32`).
    ///
    /// # Safety
    /// The pointers and strides must satisfy that contract, and the CPU must have AVX-512F;
    /// tract only calls it on such a machine, because of the registration above.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn depthwise_c_avx512(
        input: *const f32,
        output: *mut f32,
        kernel: *const f32,
        tap_indices: &[usize],
        offsets: &[isize],
        bias: *const f32,
        channels: usize,
        k_stride: usize,
        len: usize,
        in_stride: isize,
        out_stride: isize,
    ) {
        unsafe {
            avx512(input, output, kernel, tap_indices, offsets, bias, channels, k_stride, len, in_stride, out_stride)
        }
    }

    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn avx512(
        input: *const f32,
        output: *mut f32,
        kernel: *const f32,
        tap_indices: &[usize],
        offsets: &[isize],
        bias: *const f32,
        channels: usize,
        k_stride: usize,
        len: usize,
        in_stride: isize,
        out_stride: isize,
    ) {
        unsafe {
            let mut c = 0;
            while c < channels {
                let rem = channels - c;
                // Lanes past the last channel are neither read nor written.
                let m: __mmask16 = if rem >= 16 { 0xffff } else { (1u16 << rem) - 1 };
                let b = _mm512_maskz_loadu_ps(m, bias.add(c));
                let input = input.add(c);
                let output = output.add(c);
                let kernel = kernel.add(c);
                let mut i = 0usize;
                while i + 4 <= len {
                    let x = input.offset(i as isize * in_stride);
                    let (mut a0, mut a1, mut a2, mut a3) = (b, b, b, b);
                    for (&t, &off) in tap_indices.iter().zip(offsets) {
                        let k = _mm512_maskz_loadu_ps(m, kernel.add(t * k_stride));
                        let p = x.offset(off);
                        a0 = _mm512_fmadd_ps(k, _mm512_maskz_loadu_ps(m, p), a0);
                        a1 = _mm512_fmadd_ps(k, _mm512_maskz_loadu_ps(m, p.offset(in_stride)), a1);
                        a2 = _mm512_fmadd_ps(k, _mm512_maskz_loadu_ps(m, p.offset(2 * in_stride)), a2);
                        a3 = _mm512_fmadd_ps(k, _mm512_maskz_loadu_ps(m, p.offset(3 * in_stride)), a3);
                    }
                    let o = output.offset(i as isize * out_stride);
                    _mm512_mask_storeu_ps(o, m, a0);
                    _mm512_mask_storeu_ps(o.offset(out_stride), m, a1);
                    _mm512_mask_storeu_ps(o.offset(2 * out_stride), m, a2);
                    _mm512_mask_storeu_ps(o.offset(3 * out_stride), m, a3);
                    i += 4;
                }
                while i < len {
                    let x = input.offset(i as isize * in_stride);
                    let mut a = b;
                    for (&t, &off) in tap_indices.iter().zip(offsets) {
                        let k = _mm512_maskz_loadu_ps(m, kernel.add(t * k_stride));
                        a = _mm512_fmadd_ps(k, _mm512_maskz_loadu_ps(m, x.offset(off)), a);
                    }
                    _mm512_mask_storeu_ps(output.offset(i as isize * out_stride), m, a);
                    i += 1;
                }
                c += 16;
            }
        }
    }

    /// tract's `DepthwiseCF32` contract (see `tract_linalg::routines::DepthwiseCF32`).
    ///
    /// # Safety
    /// The pointers and strides must satisfy that contract, and the CPU must have AVX2 and FMA;
    /// tract only calls it on such a machine, because of the registration above.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn depthwise_c_avx2(
        input: *const f32,
        output: *mut f32,
        kernel: *const f32,
        tap_indices: &[usize],
        offsets: &[isize],
        bias: *const f32,
        channels: usize,
        k_stride: usize,
        len: usize,
        in_stride: isize,
        out_stride: isize,
    ) {
        unsafe {
            avx2(input, output, kernel, tap_indices, offsets, bias, channels, k_stride, len, in_stride, out_stride)
        }
    }

    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn avx2(
        input: *const f32,
        output: *mut f32,
        kernel: *const f32,
        tap_indices: &[usize],
        offsets: &[isize],
        bias: *const f32,
        channels: usize,
        k_stride: usize,
        len: usize,
        in_stride: isize,
        out_stride: isize,
    ) {
        unsafe {
            let mut c = 0;
            while c < channels {
                let rem = channels - c;
                // maskload/maskstore leave the lanes past the last channel untouched (no fault).
                let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
                let m = _mm256_cmpgt_epi32(_mm256_set1_epi32(rem.min(8) as i32), lanes);
                let b = _mm256_maskload_ps(bias.add(c), m);
                let input = input.add(c);
                let output = output.add(c);
                let kernel = kernel.add(c);
                let mut i = 0usize;
                while i + 4 <= len {
                    let x = input.offset(i as isize * in_stride);
                    let (mut a0, mut a1, mut a2, mut a3) = (b, b, b, b);
                    for (&t, &off) in tap_indices.iter().zip(offsets) {
                        let k = _mm256_maskload_ps(kernel.add(t * k_stride), m);
                        let p = x.offset(off);
                        a0 = _mm256_fmadd_ps(k, _mm256_maskload_ps(p, m), a0);
                        a1 = _mm256_fmadd_ps(k, _mm256_maskload_ps(p.offset(in_stride), m), a1);
                        a2 = _mm256_fmadd_ps(k, _mm256_maskload_ps(p.offset(2 * in_stride), m), a2);
                        a3 = _mm256_fmadd_ps(k, _mm256_maskload_ps(p.offset(3 * in_stride), m), a3);
                    }
                    let o = output.offset(i as isize * out_stride);
                    _mm256_maskstore_ps(o, m, a0);
                    _mm256_maskstore_ps(o.offset(out_stride), m, a1);
                    _mm256_maskstore_ps(o.offset(2 * out_stride), m, a2);
                    _mm256_maskstore_ps(o.offset(3 * out_stride), m, a3);
                    i += 4;
                }
                while i < len {
                    let x = input.offset(i as isize * in_stride);
                    let mut a = b;
                    for (&t, &off) in tap_indices.iter().zip(offsets) {
                        let k = _mm256_maskload_ps(kernel.add(t * k_stride), m);
                        a = _mm256_fmadd_ps(k, _mm256_maskload_ps(x.offset(off), m), a);
                    }
                    _mm256_maskstore_ps(output.offset(i as isize * out_stride), m, a);
                    i += 1;
                }
                c += 8;
            }
        }
    }
}

#[cfg(target_arch = "aarch64")]
mod neon {
    use std::arch::aarch64::*;
    use tract_linalg::isa::{Arch, IsaReq};
    use tract_linalg::routines::{Routine, RoutineFactory};
    use tract_linalg::Func;

    inventory::submit! {
        Routine {
            func: Func::DepthwiseC,
            arch: Some(Arch::Aarch64),
            isa: IsaReq { needs: &[] },
            boost: 0,
            round_trip: false,
            factory: RoutineFactory::DepthwiseCF32 {
                name: "edge_neon_depthwise_c_f32",
                run: depthwise_c_neon,
            },
        }
    }

    /// tract's `DepthwiseCF32` contract (see `tract_linalg::routines::DepthwiseCF32`). NEON is
    /// baseline on aarch64. Four channels per vector; the channels past the last multiple of
    /// four take a scalar loop.
    ///
    /// # Safety
    /// The pointers and strides must satisfy that contract.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn depthwise_c_neon(
        input: *const f32,
        output: *mut f32,
        kernel: *const f32,
        tap_indices: &[usize],
        offsets: &[isize],
        bias: *const f32,
        channels: usize,
        k_stride: usize,
        len: usize,
        in_stride: isize,
        out_stride: isize,
    ) {
        unsafe {
            let vec_channels = channels / 4 * 4;
            let mut c = 0;
            while c < vec_channels {
                let b = vld1q_f32(bias.add(c));
                let input = input.add(c);
                let output = output.add(c);
                let kernel = kernel.add(c);
                let mut i = 0usize;
                while i + 4 <= len {
                    let x = input.offset(i as isize * in_stride);
                    let (mut a0, mut a1, mut a2, mut a3) = (b, b, b, b);
                    for (&t, &off) in tap_indices.iter().zip(offsets) {
                        let k = vld1q_f32(kernel.add(t * k_stride));
                        let p = x.offset(off);
                        a0 = vfmaq_f32(a0, k, vld1q_f32(p));
                        a1 = vfmaq_f32(a1, k, vld1q_f32(p.offset(in_stride)));
                        a2 = vfmaq_f32(a2, k, vld1q_f32(p.offset(2 * in_stride)));
                        a3 = vfmaq_f32(a3, k, vld1q_f32(p.offset(3 * in_stride)));
                    }
                    let o = output.offset(i as isize * out_stride);
                    vst1q_f32(o, a0);
                    vst1q_f32(o.offset(out_stride), a1);
                    vst1q_f32(o.offset(2 * out_stride), a2);
                    vst1q_f32(o.offset(3 * out_stride), a3);
                    i += 4;
                }
                while i < len {
                    let x = input.offset(i as isize * in_stride);
                    let mut a = b;
                    for (&t, &off) in tap_indices.iter().zip(offsets) {
                        a = vfmaq_f32(a, vld1q_f32(kernel.add(t * k_stride)), vld1q_f32(x.offset(off)));
                    }
                    vst1q_f32(output.offset(i as isize * out_stride), a);
                    i += 1;
                }
                c += 4;
            }
            for c in vec_channels..channels {
                for i in 0..len {
                    let x = input.offset(i as isize * in_stride).add(c);
                    let mut a = *bias.add(c);
                    for (&t, &off) in tap_indices.iter().zip(offsets) {
                        a = (*kernel.add(t * k_stride + c)).mul_add(*x.offset(off), a);
                    }
                    *output.offset(i as isize * out_stride).add(c) = a;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_core::internal::*;
    use tract_core::ops::cnn::{Conv, KernelFormat, PaddingSpec, PoolSpec};
    use tract_core::ops::nn::DataFormat;

    /// The kernel tract picks, called directly on a strided layout, against a scalar reference:
    /// every channel count from 1 to 40 (full vectors and tails) and position counts that are
    /// and are not multiples of four.
    #[test]
    fn every_kernel_this_cpu_runs_matches_a_scalar_reference() {
        let native = tract_linalg::isa::native();
        let kernels: Vec<_> = tract_linalg::routines::declared()
            .filter(|r| r.func == tract_linalg::Func::DepthwiseC && r.runnable_on(&native))
            .filter_map(|r| match r.factory {
                tract_linalg::routines::RoutineFactory::DepthwiseCF32 { name, run } => Some((name, run)),
                _ => None,
            })
            .collect();
        if cfg!(any(target_arch = "x86_64", target_arch = "aarch64")) && depthwise_kernel().is_some() {
            assert!(
                kernels.iter().any(|(name, _)| name.starts_with("edge_")),
                "{:?}",
                kernels.iter().map(|k| k.0).collect::<Vec<_>>()
            );
        }
        for (name, run) in kernels {
            check_against_reference(name, run);
        }
    }

    fn check_against_reference(name: &str, run: tract_linalg::routines::DepthwiseCF32) {
        let mut seed = 17u32;
        let mut rnd = move || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        };
        for channels in 1..=40usize {
            for len in [1usize, 3, 4, 7, 9] {
                // A row-major [rows, channels + 3] buffer: the padding makes the position
                // stride differ from the channel count, as it does inside an image.
                let row = channels + 3;
                let taps: Vec<usize> = vec![0, 2, 4, 5];
                let offsets: Vec<isize> = vec![0, row as isize, 2 * row as isize + 1, 3 * row as isize];
                let k_stride = channels + 1;
                let kernel: Vec<f32> = (0..6 * k_stride).map(|_| rnd()).collect();
                let bias: Vec<f32> = (0..channels).map(|_| rnd()).collect();
                let in_stride = 2 * row as isize;
                let rows = 2 * len + 4;
                let input: Vec<f32> = (0..rows * row + 2).map(|_| rnd()).collect();
                let out_stride = row as isize;
                let sentinel = 1e9f32;
                let mut output = vec![sentinel; len * row];
                unsafe {
                    run(
                        input.as_ptr(),
                        output.as_mut_ptr(),
                        kernel.as_ptr(),
                        &taps,
                        &offsets,
                        bias.as_ptr(),
                        channels,
                        k_stride,
                        len,
                        in_stride,
                        out_stride,
                    )
                };
                for i in 0..len {
                    for c in 0..row {
                        let got = output[i * row + c];
                        if c >= channels {
                            assert_eq!(got, sentinel, "{name} wrote past the channels (c={c}, channels={channels})");
                            continue;
                        }
                        let mut want = bias[c];
                        for (&t, &off) in taps.iter().zip(&offsets) {
                            want += kernel[t * k_stride + c] * input[(i as isize * in_stride + off) as usize + c];
                        }
                        assert!(
                            (got - want).abs() <= 1e-5,
                            "{name}: channels={channels} len={len} i={i} c={c}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    /// A whole NHWC depthwise convolution through tract (SAME padding, stride 2, 21 channels so
    /// that blocks end in a tail) against a plain loop.
    #[test]
    fn tract_depthwise_nhwc_matches_a_plain_convolution() -> TractResult<()> {
        let (h, w, ch, kh, kw) = (11usize, 13usize, 21usize, 3usize, 3usize);
        let mut seed = 5u32;
        let mut rnd = move || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        };
        let input: Vec<f32> = (0..h * w * ch).map(|_| rnd()).collect();
        // [kh, kw, ch]: one filter per channel.
        let weights: Vec<f32> = (0..kh * kw * ch).map(|_| rnd()).collect();
        let bias: Vec<f32> = (0..ch).map(|_| rnd()).collect();

        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([1, h, w, ch]))?;
        // OIHW, one input channel per group, as the TFLite importer wires it.
        let mut oihw = vec![0f32; weights.len()];
        for c in 0..ch {
            for t in 0..kh * kw {
                oihw[c * kh * kw + t] = weights[t * ch + c];
            }
        }
        let k = model.add_const("k", tensor1(&oihw).into_shape(&[ch, 1, kh, kw])?)?;
        let b = model.add_const("b", tensor1(&bias))?;
        let pool_spec =
            PoolSpec::new(DataFormat::NHWC, tvec![kh, kw], PaddingSpec::SameUpper, None, Some(tvec![2, 2]), ch, ch);
        let conv = Conv { pool_spec, kernel_fmt: KernelFormat::OIHW, group: ch, q_params: None };
        let y = model.wire_node("dw", conv, &[x, k, b])?;
        model.select_output_outlets(&y)?;
        let plan = model.into_optimized()?.into_runnable()?;
        let names: Vec<String> = plan.model().nodes().iter().map(|n| n.op().name().to_string()).collect();
        assert!(names.iter().any(|n| n == "DepthWiseConv"), "plan has no depthwise op: {names:?}");
        let out = plan.run(tvec!(tensor1(&input).into_shape(&[1, h, w, ch])?.into_tvalue()))?;
        let out = out[0].to_plain_array_view::<f32>()?;

        let (oh, ow) = (h.div_ceil(2), w.div_ceil(2));
        assert_eq!(out.shape(), &[1, oh, ow, ch]);
        // SAME: total padding max((out-1)*stride + k - in, 0), the extra on the bottom/right.
        let pad_top = ((oh - 1) * 2 + kh).saturating_sub(h) / 2;
        let pad_left = ((ow - 1) * 2 + kw).saturating_sub(w) / 2;
        for oy in 0..oh {
            for ox in 0..ow {
                for c in 0..ch {
                    let mut want = bias[c];
                    for ky in 0..kh {
                        for kx in 0..kw {
                            let iy = (oy * 2 + ky) as isize - pad_top as isize;
                            let ix = (ox * 2 + kx) as isize - pad_left as isize;
                            if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                continue;
                            }
                            want += weights[(ky * kw + kx) * ch + c] * input[(iy as usize * w + ix as usize) * ch + c];
                        }
                    }
                    let got = out[[0, oy, ox, c]];
                    assert!((got - want).abs() < 1e-5, "({oy},{ox},{c}): {got} vs {want}");
                }
            }
        }
        Ok(())
    }

    #[test]
    #[cfg(target_arch = "aarch64")]
    fn aarch64_gets_the_neon_kernel() {
        assert_eq!(depthwise_kernel(), Some("edge_neon_depthwise_c_f32"));
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn x86_64_gets_the_widest_kernel_its_cpu_runs() {
        let want = if std::arch::is_x86_feature_detected!("avx512f") {
            Some("edge_avx512f_depthwise_c_f32")
        } else if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            Some("edge_avx2_fma_depthwise_c_f32")
        } else {
            None
        };
        assert_eq!(depthwise_kernel(), want);
    }
}
