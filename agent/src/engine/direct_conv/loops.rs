//! The pixel loops of [`super::DirectConv`]: output channels in register groups of 8 to 32
//! lanes, several pixels at a time in the image's interior, the taps that fall in the padding
//! skipped at the border. Written so that the compiler vectorises them, and compiled twice on
//! x86_64 (AVX2 + FMA, chosen at run time, and baseline): kept apart from the op because this
//! is the code whose shape is tuned to registers and target features.

use super::{interior_columns, tap_range};

/// Whether this build and CPU run [`super::DirectConv`] as vector code: x86_64 with AVX2 and FMA,
/// or aarch64 (NEON is baseline).
pub(super) fn vectorised() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        cfg!(target_arch = "aarch64")
    }
}

/// What one call of the pixel loop needs, shared by every output pixel of a run.
pub(super) struct Geometry {
    pub(super) ih: usize,
    pub(super) iw: usize,
    pub(super) ci: usize,
    pub(super) co: usize,
    pub(super) kh: usize,
    pub(super) kw: usize,
    pub(super) stride: [usize; 2],
    pub(super) dilation: [usize; 2],
    pub(super) pad: [usize; 2],
    pub(super) oh: usize,
    pub(super) ow: usize,
    pub(super) lanes: usize,
    pub(super) low: f32,
    pub(super) high: f32,
}

/// Runs the pixel loops over one image, as vector code where this CPU has it.
pub(super) fn run(geo: &Geometry, x: &[f32], packed: &[f32], bias: &[f32], out: &mut [f32]) {
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
    let std::ops::Range { start: first_x, end: end_x } =
        interior_columns(geo.ow, geo.stride[1], geo.pad[1], geo.dilation[1], geo.kw, geo.iw);
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
