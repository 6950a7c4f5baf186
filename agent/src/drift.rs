//! Drift: how far what a model version is given and gives has moved from its reference
//! profile ([`edge_proto::profile`]), as one number per tensor, the population stability
//! index (PSI), on `/metrics` as `edge_agent_tensor_drift_psi{model,version,tensor}`.
//!
//! The serving workers count each described tensor's elements into the profile's bins
//! ([`Window::add`], called from [`crate::tensor_stats`] on the worker's thread, inside the
//! statistics' 1 % budget). Two choices keep that cheap and the number useful:
//!
//! - **A decaying window.** The counts behind the PSI lose half their weight every
//!   `[drift] half_life_secs` (default 300 s): drift shows within minutes of the inputs
//!   changing, and the index falls back when they recover. Counts since activation would
//!   take longer to move the more a version has served, and would never recover. While no
//!   request comes, the gauge keeps its last value (nothing new to judge).
//! - **A bounded sample per request.** At most [`MAX_BINNED`] elements of a tensor are
//!   binned per request: every `stride`-th element, the stride a prime (so it does not
//!   beat against a channel count or a row length), starting at an offset that moves by
//!   one each request, so that over `stride` requests every element position is counted
//!   once. An element's bin is the count of edges at or below it, taken for eight elements
//!   at a time so that the compiler vectorises the comparisons ([`Bins::of8`]): about 1 ns
//!   an element for 20 bins, where a binary search costs several times that in dependent
//!   loads.

use std::time::{Duration, Instant};

use edge_proto::profile::{psi, Profile, TensorProfile, MAX_EDGES};

use crate::engine::TensorSpec;

/// Most elements of one tensor binned per request.
pub const MAX_BINNED: usize = 1024;
/// Most edges a profile's tensor has ([`MAX_EDGES`]): the counters per bin are this many
/// plus one.
pub const PADDED: usize = MAX_EDGES;

/// Default half-life of the window's counts.
pub const DEFAULT_HALF_LIFE: Duration = Duration::from_secs(300);

/// The label of a model's tensor in profiles and on `/metrics`: `input:NAME`, `output:NAME`.
pub fn label(output: bool, name: &str) -> String {
    format!("{}:{name}", if output { "output" } else { "input" })
}

/// Whether every tensor `profile` describes is one of the model's `inputs` or `outputs`: a
/// profile made with another model (or another signature) is refused, naming the tensor.
pub fn check_fits(profile: &Profile, inputs: &[TensorSpec], outputs: &[TensorSpec]) -> Result<(), String> {
    let ours: Vec<String> =
        inputs.iter().map(|s| label(false, &s.name)).chain(outputs.iter().map(|s| label(true, &s.name))).collect();
    match profile.tensors.iter().find(|t| !ours.contains(&t.tensor)) {
        Some(t) => Err(format!(
            "the profile describes {}, which the model does not have (it has {})",
            t.tensor,
            ours.join(", ")
        )),
        None => Ok(()),
    }
}

/// A profile's bin edges.
#[derive(Debug, Clone)]
pub struct Bins {
    edges: Vec<f32>,
}

impl Bins {
    /// The bins of `edges` (finite, strictly increasing, at most [`PADDED`], as
    /// [`Profile::check`] makes sure; edges past [`PADDED`] are left out).
    pub fn new(edges: &[f32]) -> Bins {
        Bins { edges: edges[..edges.len().min(PADDED)].to_vec() }
    }

    /// Bins, underflow and overflow included.
    pub fn len(&self) -> usize {
        self.edges.len() + 1
    }

    /// Whether there are no bins (never: there is always at least one).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The bin of finite `x`: the number of edges at or below it, as
    /// [`edge_proto::profile::bin_of`] defines it.
    #[inline]
    pub fn of(&self, x: f32) -> usize {
        self.edges.iter().map(|&e| (e <= x) as usize).sum()
    }

    /// [`Self::of`] for eight finite values at once, without branches on the data.
    #[inline]
    pub fn of8(&self, xs: &[f32; 8]) -> [u32; 8] {
        let mut bins = [0u32; 8];
        for &e in &self.edges {
            for (b, &x) in bins.iter_mut().zip(xs) {
                *b += (e <= x) as u32;
            }
        }
        bins
    }
}

/// The smallest prime at or above `n` (n >= 2).
fn prime_at_least(n: usize) -> usize {
    let is_prime = |k: usize| k >= 2 && (2..).take_while(|d| d * d <= k).all(|d| !k.is_multiple_of(d));
    (n.max(2)..).find(|&k| is_prime(k)).expect("primes never run out")
}

/// One tensor's reference and the decaying counts of what was served.
#[derive(Debug, Clone)]
pub struct Window {
    bins: Bins,
    reference: Vec<f32>,
    counts: Vec<f64>,
    half_life: Duration,
    last: Option<Instant>,
    /// Elements per request and the stride for that many, as last worked out.
    stride: (usize, usize),
    offset: usize,
}

impl Window {
    /// An empty window against `profile`, its counts halving every `half_life`.
    pub fn new(profile: &TensorProfile, half_life: Duration) -> Window {
        Window {
            bins: Bins::new(&profile.edges),
            reference: profile.fractions.clone(),
            counts: vec![0.0; profile.fractions.len()],
            half_life,
            last: None,
            stride: (0, 1),
            offset: 0,
        }
    }

    /// Counts one request's `values` at `now`, after decaying what was counted before.
    pub fn add(&mut self, values: &[f32], now: Instant) {
        if let Some(last) = self.last {
            let elapsed = now.saturating_duration_since(last).as_secs_f64();
            let factor = 0.5f64.powf(elapsed / self.half_life.as_secs_f64().max(1e-9));
            self.counts.iter_mut().for_each(|c| *c *= factor);
        }
        self.last = Some(now);
        let n = values.len();
        if self.stride.0 != n {
            let stride = if n <= MAX_BINNED { 1 } else { prime_at_least(n.div_ceil(MAX_BINNED)) };
            self.stride = (n, stride);
        }
        let stride = self.stride.1;
        self.offset = (self.offset + 1) % stride;
        // Two sets of counters, so that runs of equal bins do not wait on each other.
        let mut local = [[0u32; PADDED + 1]; 2];
        let mut batch = [0f32; 8];
        let mut n = 0;
        for &v in values.iter().skip(self.offset).step_by(stride) {
            // Non-finite values are left out, as they are from the profile.
            if v.is_finite() {
                batch[n] = v;
                n += 1;
                if n == 8 {
                    let bins = self.bins.of8(&batch);
                    for (i, b) in bins.iter().enumerate() {
                        local[i & 1][*b as usize] += 1;
                    }
                    n = 0;
                }
            }
        }
        for &v in &batch[..n] {
            local[0][self.bins.of(v)] += 1;
        }
        for (b, c) in self.counts.iter_mut().enumerate() {
            *c += (local[0][b] + local[1][b]) as f64;
        }
    }

    /// The PSI of the window against the reference; `None` before anything was counted.
    pub fn psi(&self) -> Option<f64> {
        psi(&self.reference, &self.counts)
    }

    /// The decayed element count behind [`Self::psi`].
    pub fn weight(&self) -> f64 {
        self.counts.iter().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edge_proto::profile::bin_of;

    fn values(n: usize, lo: f32, hi: f32, seed: u64) -> Vec<f32> {
        let mut rng = fastrand::Rng::with_seed(seed);
        (0..n).map(|_| lo + (hi - lo) * rng.f32()).collect()
    }

    fn reference() -> TensorProfile {
        TensorProfile::from_values("input:x", &mut values(50_000, 0.0, 1.0, 1), 20).unwrap()
    }

    #[test]
    fn the_counted_bins_agree_with_the_profile_s_definition() {
        let p = reference();
        let bins = Bins::new(&p.edges);
        assert_eq!(bins.len(), p.fractions.len());
        let mut probes = values(10_000, -0.5, 1.5, 2);
        probes.extend(p.edges.iter().copied());
        probes.extend(p.edges.iter().map(|e| e.next_down()));
        probes.extend([f32::MIN, f32::MAX, 0.0, -0.0]);
        for x in &probes {
            assert_eq!(bins.of(*x), bin_of(&p.edges, *x), "{x}");
        }
        for xs in probes.chunks_exact(8) {
            let xs: &[f32; 8] = xs.try_into().unwrap();
            assert_eq!(bins.of8(xs), xs.map(|x| bin_of(&p.edges, x) as u32), "{xs:?}");
        }
        let full: Vec<f32> = (0..PADDED).map(|i| i as f32).collect();
        let bins = Bins::new(&full);
        assert_eq!((bins.of(-1.0), bins.of(63.0), bins.of(1e9)), (0, 64, 64));
    }

    #[test]
    fn in_distribution_stays_low_and_a_shift_rises_then_recovers_as_counts_decay() {
        let p = reference();
        let mut w = Window::new(&p, Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(w.psi(), None, "nothing counted yet");
        for i in 0..20 {
            w.add(&values(2_000, 0.0, 1.0, 10 + i), t0 + Duration::from_secs(i));
        }
        let calm = w.psi().unwrap();
        assert!(calm < 0.05, "{calm}");
        // Shifted and scaled: a minute of it.
        for i in 0..60 {
            w.add(&values(2_000, 0.5, 2.5, 100 + i), t0 + Duration::from_secs(20 + i));
        }
        let drifted = w.psi().unwrap();
        assert!(drifted > 0.25, "{drifted}");
        // Ten minutes of in-distribution inputs later, ten half-lives: back near zero.
        for i in 0..600 {
            w.add(&values(200, 0.0, 1.0, 1000 + i), t0 + Duration::from_secs(80 + i));
        }
        let recovered = w.psi().unwrap();
        assert!(recovered < 0.05, "{recovered}");
    }

    #[test]
    fn a_large_tensor_is_sampled_and_every_position_is_reached_over_stride_requests() {
        let p = reference();
        let mut w = Window::new(&p, Duration::from_secs(3600));
        let t = Instant::now();
        // Positions 0..n carry their own bin: the sample covers them all over `stride` calls.
        let n = MAX_BINNED * 10 + 3;
        let ramp: Vec<f32> = (0..n).map(|i| i as f32 / n as f32).collect();
        w.add(&ramp, t);
        let stride = w.stride.1;
        assert!(stride >= 11 && (2..stride).all(|d| !stride.is_multiple_of(d)), "a prime stride: {stride}");
        assert!(w.weight() <= MAX_BINNED as f64 + 1.0, "{}", w.weight());
        for _ in 1..stride {
            w.add(&ramp, t);
        }
        assert_eq!(w.weight(), n as f64, "every element once over {stride} requests");
        // The whole ramp is uniform on [0, 1): what the reference is.
        assert!(w.psi().unwrap() < 0.01, "{}", w.psi().unwrap());
        // An RGB-like layout (the same value every third element) is not aliased by the stride.
        let rgb: Vec<f32> = (0..n).map(|i| [0.1, 0.5, 0.9][i % 3]).collect();
        let mut w = Window::new(&p, Duration::from_secs(3600));
        w.add(&rgb, t);
        let (lo, mid, hi) = (bin_of(&p.edges, 0.1), bin_of(&p.edges, 0.5), bin_of(&p.edges, 0.9));
        let share = |b: usize| w.counts[b] / w.weight();
        for b in [lo, mid, hi] {
            assert!((share(b) - 1.0 / 3.0).abs() < 0.01, "{}", share(b));
        }
    }

    #[test]
    fn non_finite_values_are_left_out() {
        let mut w = Window::new(&reference(), Duration::from_secs(60));
        w.add(&[f32::NAN, f32::INFINITY, 0.5], Instant::now());
        assert_eq!(w.weight(), 1.0);
    }
}
