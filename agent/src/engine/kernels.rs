//! SIMD kernels for what tract 0.23 runs slowly on x86_64 and aarch64.
//!
//! **Channels-last depthwise convolution** (every TFLite depthwise layer). tract runs NHWC
//! depthwise layers through a pluggable "channel-inner" kernel and, on x86_64 and aarch64, has
//! none: its generic loop loads and stores the output vector once per kernel tap and is
//! vectorised for SSE2 at best on x86_64. The MediaPipe CNNs spent a quarter to a third of
//! their time there. The kernels here keep a block of output positions in registers across
//! all taps (one FMA per tap and position, the tap's weights loaded once per block). The right
//! one is chosen at run time from the CPU's features: AVX-512F, else AVX2 + FMA on x86_64;
//! NEON, which is baseline, on aarch64. [`super::direct_conv::NhwcDepthwise`] calls them.
//!
//! They are deliberately *not* registered in tract's kernel table (`Func::DepthwiseC`), which
//! tract would pick up by itself: with such a kernel present, tract's declutter also moves the
//! depthwise layers of NCHW (ONNX) models to channels-last, which strands their batch-norm
//! multiplies and squeeze-excite gates as unfused broadcasts (ch_ppocr_mobile_v2.0_cls went
//! from 1.7 to 2.4 ms that way).
//!
//! The arithmetic differs from a plain loop only by fused multiply-adds (one rounding per tap
//! instead of two), far inside the engine's 1e-3 tolerance.

/// One channels-last depthwise run, in tract's `DepthwiseCF32` terms: `len` output positions
/// of `channels` contiguous channels each. Point `i`, channel `c`, is `bias[c]` plus every
/// `kernel[tap_indices[t] * k_stride + c] * input[i * in_stride + offsets[t] + c]`.
///
/// # Safety
/// Every value that formula reads must be readable, and `channels` values writable from
/// `output.offset(i * out_stride)` for every `i` below `len`.
pub type DepthwiseFn = tract_linalg::routines::DepthwiseCF32;

/// The depthwise kernel for this CPU, with its name, or `None` where there is none (armv7,
/// x86_64 without AVX2 + FMA): tract's own op then runs those layers.
pub fn depthwise() -> Option<(&'static str, DepthwiseFn)> {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return Some(("edge_avx512f_depthwise_c_f32", x86::depthwise_c_avx512));
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            return Some(("edge_avx2_fma_depthwise_c_f32", x86::depthwise_c_avx2));
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        return Some(("edge_neon_depthwise_c_f32", neon::depthwise_c_neon));
    }
    #[allow(unreachable_code)]
    None
}

/// The name of [`depthwise`]'s kernel, for diagnostics.
pub fn depthwise_kernel() -> Option<&'static str> {
    depthwise().map(|(name, _)| name)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// [`super::DepthwiseFn`]'s contract.
    ///
    /// # Safety
    /// The pointers and strides must satisfy that contract, and the CPU must have AVX-512F
    /// ([`super::depthwise`] hands it out only then).
    #[target_feature(enable = "avx512f")]
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

    /// [`super::DepthwiseFn`]'s contract.
    ///
    /// # Safety
    /// The pointers and strides must satisfy that contract, and the CPU must have AVX2 and FMA
    /// ([`super::depthwise`] hands it out only then).
    #[target_feature(enable = "avx2,fma")]
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

    /// [`super::DepthwiseFn`]'s contract. NEON is
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

    /// Every kernel this CPU runs, called directly on a strided layout, against a scalar
    /// reference: every channel count from 1 to 40 (full vectors and tails) and position counts
    /// that are and are not multiples of four.
    #[test]
    fn every_kernel_this_cpu_runs_matches_a_scalar_reference() {
        let mut kernels: Vec<(&str, DepthwiseFn)> = vec![];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                kernels.push(("avx512f", x86::depthwise_c_avx512));
            }
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                kernels.push(("avx2+fma", x86::depthwise_c_avx2));
            }
        }
        #[cfg(target_arch = "aarch64")]
        kernels.push(("neon", neon::depthwise_c_neon));
        for (name, run) in kernels {
            check_against_reference(name, run);
        }
    }

    fn check_against_reference(name: &str, run: DepthwiseFn) {
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
