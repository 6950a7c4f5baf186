//! Reference profiles: what a model's inputs and outputs looked like on sample data, so that
//! a device can tell when what it serves has moved away from it (drift).
//!
//! A [`Profile`] holds, per tensor (`input:NAME` or `output:NAME`, as the agent's tensor
//! statistics label them), fixed histogram bin edges, the fraction of the sample's elements
//! in each bin, and the sample's mean, standard deviation, minimum and maximum.
//! `edge-agent profile` makes one from sample inputs by running the model; `edgectl deploy
//! --profile FILE` carries it inside the signed deploy command
//! ([`Payload::DeployModelProfiled`](crate::command::Payload::DeployModelProfiled), command
//! version 5); the device counts the elements it serves into the same bins and exports the
//! population stability index ([`psi`]) per tensor.
//!
//! # Bins
//!
//! `edges` are finite and strictly increasing, `e[0] < … < e[m-1]`; an element `x` falls in
//! bin [`bin_of`]`(edges, x)` = the number of edges `<= x`, so there are `m + 1` bins: bin 0
//! is `x < e[0]`, bin `i` is `e[i-1] <= x < e[i]`, bin `m` is `x >= e[m-1]`. A profile built
//! here ([`TensorProfile::from_values`]) puts `e[0]` at the sample's minimum and `e[m-1]`
//! just above its maximum, with quantiles of the sample between: the first and last bins
//! are the *underflow* and *overflow* (values outside everything the sample held), and each
//! bin between holds about the same share of the sample. Repeated quantiles (a tensor with
//! many equal values) are merged, so a tensor may have fewer bins than asked for.
//!
//! The same file is the operator's JSON (`edge-agent profile --out FILE`) and, encoded with
//! postcard, part of the signed command and of the device's store.

use serde::{Deserialize, Serialize};

use crate::codec::Versioned;

/// Most tensors a profile describes.
pub const MAX_TENSORS: usize = 64;
/// Most bin edges per tensor (so at most 65 bins, underflow and overflow included).
pub const MAX_EDGES: usize = 64;
/// Longest tensor label.
pub const MAX_NAME: usize = 256;
/// Bins between the minimum and the maximum when nothing else is asked for.
pub const DEFAULT_BINS: usize = 20;
/// Smallest fraction [`psi`] takes for a bin: an empty bin on either side would make the
/// index infinite (`ln 0`).
pub const EPSILON: f64 = 1e-4;

/// A model's reference profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// Schema version, [`Profile::VERSION`].
    pub version: u16,
    /// SHA-256 of the model file the profile was made with, lower-case hex: a device refuses
    /// a profile that comes with another model.
    pub model_sha256: String,
    /// Sample requests the profile was made from.
    pub samples: u32,
    /// One entry per input and output tensor, inputs first.
    pub tensors: Vec<TensorProfile>,
}

impl Versioned for Profile {
    const VERSION: u16 = 1;
    fn version(&self) -> u16 {
        self.version
    }
}

/// One tensor of a [`Profile`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorProfile {
    /// `input:NAME` or `output:NAME`.
    pub tensor: String,
    /// Bin edges, finite and strictly increasing (see the module documentation).
    pub edges: Vec<f32>,
    /// Fraction of the sample's finite elements in each bin: `edges.len() + 1` values that
    /// sum to 1.
    pub fractions: Vec<f32>,
    /// Finite elements in the sample.
    pub count: u64,
    /// Their mean.
    pub mean: f64,
    /// Their standard deviation.
    pub std: f64,
    /// Their minimum.
    pub min: f64,
    /// Their maximum.
    pub max: f64,
}

/// The bin `x` falls in: the number of `edges` at or below it (0 for NaN; callers leave
/// non-finite values out).
#[inline]
pub fn bin_of(edges: &[f32], x: f32) -> usize {
    edges.partition_point(|e| *e <= x)
}

/// The population stability index of `observed` element counts per bin against the
/// `reference` fractions: `sum((o - r) * ln(o / r))` over the bins, each fraction at least
/// [`EPSILON`]. `None` when nothing was observed or the bin counts differ. 0 means the same
/// distribution; 0.1 is commonly read as a moderate shift, 0.25 as a major one.
pub fn psi(reference: &[f32], observed: &[f64]) -> Option<f64> {
    let total: f64 = observed.iter().sum();
    if total <= 0.0 || reference.len() != observed.len() {
        return None;
    }
    let index = reference
        .iter()
        .zip(observed)
        .map(|(&r, &o)| {
            let r = (r as f64).max(EPSILON);
            let o = (o / total).max(EPSILON);
            (o - r) * (o / r).ln()
        })
        .sum();
    Some(index)
}

impl TensorProfile {
    /// The profile of tensor `tensor` from the sample `values` (reordered in place):
    /// `bins` quantile bins between the minimum and the maximum of the finite values, plus
    /// underflow and overflow. `None` when no value is finite.
    pub fn from_values(tensor: &str, values: &mut Vec<f32>, bins: usize) -> Option<TensorProfile> {
        values.retain(|v| v.is_finite());
        if values.is_empty() {
            return None;
        }
        values.sort_unstable_by(f32::total_cmp);
        let n = values.len();
        let (min, max) = (values[0], values[n - 1]);
        let bins = bins.clamp(1, MAX_EDGES - 1);
        let mut edges = Vec::with_capacity(bins + 1);
        edges.push(min);
        edges.extend((1..bins).map(|j| values[j * n / bins]));
        // Just above the maximum, so that the maximum itself is in the last bin before
        // overflow. Left out at f32::MAX, where there is nothing above.
        let top = max.next_up();
        if top.is_finite() {
            edges.push(top);
        }
        edges.dedup();
        let mut counts = vec![0u64; edges.len() + 1];
        for &v in values.iter() {
            counts[bin_of(&edges, v)] += 1;
        }
        let fractions = counts.iter().map(|&c| (c as f64 / n as f64) as f32).collect();
        let mean = values.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
        let var = values.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n as f64;
        Some(TensorProfile {
            tensor: tensor.into(),
            edges,
            fractions,
            count: n as u64,
            mean,
            std: var.sqrt(),
            min: min as f64,
            max: max as f64,
        })
    }

    fn check(&self) -> Result<(), String> {
        let t = &self.tensor;
        if t.is_empty() || t.len() > MAX_NAME {
            return Err(format!("a tensor label of {} bytes (1 to {MAX_NAME})", t.len()));
        }
        if self.edges.is_empty() || self.edges.len() > MAX_EDGES {
            return Err(format!("{t}: {} bin edges (1 to {MAX_EDGES})", self.edges.len()));
        }
        if self.edges.iter().any(|e| !e.is_finite()) || self.edges.windows(2).any(|w| w[0] >= w[1]) {
            return Err(format!("{t}: bin edges must be finite and strictly increasing"));
        }
        if self.fractions.len() != self.edges.len() + 1 {
            return Err(format!(
                "{t}: {} fractions for {} edges (one more than edges)",
                self.fractions.len(),
                self.edges.len()
            ));
        }
        if self.fractions.iter().any(|f| !(0.0..=1.0).contains(f)) {
            return Err(format!("{t}: a bin fraction outside [0, 1]"));
        }
        let sum: f64 = self.fractions.iter().map(|&f| f as f64).sum();
        if (sum - 1.0).abs() > 1e-3 {
            return Err(format!("{t}: bin fractions sum to {sum}, not 1"));
        }
        if ![self.mean, self.std, self.min, self.max].iter().all(|v| v.is_finite()) || self.min > self.max {
            return Err(format!("{t}: mean, std, min and max must be finite, min <= max"));
        }
        Ok(())
    }
}

impl Profile {
    /// Whether the profile is one a device can use: a known version, bounded sizes, unique
    /// labels, edges and fractions as the module documentation says.
    pub fn check(&self) -> Result<(), String> {
        if self.version != Profile::VERSION {
            return Err(format!("profile version {} (this build reads {})", self.version, Profile::VERSION));
        }
        if self.model_sha256.len() != 64 || !self.model_sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("model_sha256 is not 64 hex digits".into());
        }
        if self.tensors.len() > MAX_TENSORS {
            return Err(format!("{} tensors (at most {MAX_TENSORS})", self.tensors.len()));
        }
        for (i, t) in self.tensors.iter().enumerate() {
            t.check()?;
            if self.tensors[..i].iter().any(|o| o.tensor == t.tensor) {
                return Err(format!("{} is described twice", t.tensor));
            }
        }
        Ok(())
    }

    /// The entry for `tensor` (`input:NAME` or `output:NAME`).
    pub fn get(&self, tensor: &str) -> Option<&TensorProfile> {
        self.tensors.iter().find(|t| t.tensor == tensor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values spread over [lo, hi).
    fn spread(n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|i| lo + (hi - lo) * (((i as u64 * 2_654_435_761) % 10_007) as f32 / 10_007.0)).collect()
    }

    fn profile(tensors: Vec<TensorProfile>) -> Profile {
        Profile { version: Profile::VERSION, model_sha256: "ab".repeat(32), samples: 1, tensors }
    }

    #[test]
    fn bins_count_edges_at_or_below_a_value() {
        let edges = [0.0, 1.0, 2.0];
        assert_eq!(bin_of(&edges, -0.5), 0, "underflow");
        assert_eq!(bin_of(&edges, 0.0), 1, "an edge opens its bin");
        assert_eq!(bin_of(&edges, 0.99), 1);
        assert_eq!(bin_of(&edges, 1.0), 2);
        assert_eq!(bin_of(&edges, 2.0), 3, "overflow");
        assert_eq!(bin_of(&edges, 7.0), 3);
    }

    #[test]
    fn quantile_bins_hold_equal_shares_with_empty_underflow_and_overflow() {
        let mut values = spread(10_000, -3.0, 5.0);
        values.push(f32::NAN);
        let p = TensorProfile::from_values("input:x", &mut values, 10).unwrap();
        assert_eq!(p.count, 10_000, "NaN left out");
        assert_eq!(p.edges.len(), 11);
        assert_eq!(p.fractions.len(), 12);
        assert_eq!((p.fractions[0], p.fractions[11]), (0.0, 0.0), "nothing under the minimum or over the maximum");
        for f in &p.fractions[1..11] {
            assert!((f - 0.1).abs() < 0.01, "{:?}", p.fractions);
        }
        assert_eq!(p.edges[0] as f64, p.min);
        assert!(p.edges[10] as f64 > p.max);
        assert!((p.mean - 1.0).abs() < 0.05 && (p.std - 8.0 / 12f64.sqrt()).abs() < 0.05, "{} {}", p.mean, p.std);
        profile(vec![p]).check().unwrap();
    }

    #[test]
    fn repeated_values_merge_their_bins() {
        // Mostly zeros (a ReLU output): the quantiles repeat, and so would the edges.
        let mut values: Vec<f32> = (0..1000).map(|i| if i % 10 == 0 { i as f32 } else { 0.0 }).collect();
        let p = TensorProfile::from_values("output:y", &mut values, 20).unwrap();
        // 901 zeros, then 10, 20, …, 990: every quantile below the 95th is 0.
        assert_eq!(p.edges, [0.0, 500.0, 990f32.next_up()]);
        assert_eq!(p.fractions, [0.0, 0.95, 0.05, 0.0], "the zeros share one bin");
        let mut constant = vec![3.0; 50];
        let c = TensorProfile::from_values("output:c", &mut constant, 20).unwrap();
        assert_eq!(c.edges, [3.0, 3.0f32.next_up()]);
        assert_eq!(c.fractions, [0.0, 1.0, 0.0]);
        assert!(TensorProfile::from_values("output:n", &mut vec![f32::NAN, f32::INFINITY], 20).is_none());
    }

    #[test]
    fn psi_is_zero_for_the_same_distribution_and_grows_with_a_shift() {
        let mut sample = spread(20_000, 0.0, 1.0);
        let p = TensorProfile::from_values("input:x", &mut sample, 10).unwrap();
        let count = |values: &[f32]| {
            let mut c = vec![0f64; p.fractions.len()];
            for &v in values {
                c[bin_of(&p.edges, v)] += 1.0;
            }
            c
        };
        let same = psi(&p.fractions, &count(&spread(5_000, 0.0, 1.0))).unwrap();
        assert!(same < 0.01, "{same}");
        // 1 % of the values past the sample's maximum, in the overflow bin.
        let slight = psi(&p.fractions, &count(&spread(5_000, 0.01, 1.01))).unwrap();
        let shifted = psi(&p.fractions, &count(&spread(5_000, 0.5, 1.5))).unwrap();
        let outside = psi(&p.fractions, &count(&spread(5_000, 3.0, 4.0))).unwrap();
        assert!(same < slight && slight < 0.1, "{slight}");
        assert!(shifted > 0.25 && shifted < outside, "{shifted} {outside}");
        // Everything in the (empty) overflow bin: finite thanks to the epsilon.
        assert!(outside.is_finite() && outside > 5.0, "{outside}");
        assert_eq!(psi(&p.fractions, &vec![0.0; p.fractions.len()]), None, "nothing observed");
        assert_eq!(psi(&p.fractions, &[1.0]), None, "other bins");
    }

    #[test]
    fn check_refuses_what_a_device_cannot_use() {
        let good = TensorProfile::from_values("input:x", &mut spread(100, 0.0, 1.0), 4).unwrap();
        profile(vec![good.clone()]).check().unwrap();
        let bad = |f: &dyn Fn(&mut TensorProfile), what: &str| {
            let mut t = good.clone();
            f(&mut t);
            let err = profile(vec![t]).check().unwrap_err();
            assert!(err.contains(what), "{err} (expected {what:?})");
        };
        bad(&|t| t.edges.swap(0, 1), "increasing");
        bad(&|t| t.edges[2] = f32::NAN, "finite");
        bad(&|t| t.fractions.pop().map(|_| ()).unwrap_or(()), "fractions for");
        bad(&|t| t.fractions[1] += 0.5, "sum to");
        bad(&|t| t.fractions[1] = -0.1, "outside");
        bad(&|t| t.tensor.clear(), "label");
        bad(&|t| t.min = f64::INFINITY, "finite");
        bad(&|t| t.edges = vec![0.0; MAX_EDGES + 1], "bin edges");
        assert!(profile(vec![good.clone(), good.clone()]).check().unwrap_err().contains("twice"));
        assert!(profile(vec![good.clone(); MAX_TENSORS + 1]).check().is_err());
        let mut p = profile(vec![good.clone()]);
        p.model_sha256 = "xyz".into();
        assert!(p.check().unwrap_err().contains("hex"));
        p = profile(vec![good]);
        p.version = 2;
        assert!(p.check().unwrap_err().contains("version 2"));
    }

    #[test]
    fn a_profile_reads_back_from_json_and_postcard() {
        let p = profile(vec![TensorProfile::from_values("input:x", &mut spread(300, -1.0, 1.0), 20).unwrap()]);
        let json: Profile = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        let (a, b) = (&json.tensors[0], &p.tensors[0]);
        assert_eq!((&a.edges, &a.fractions, a.count), (&b.edges, &b.fractions, b.count), "f32 read back exactly");
        assert!((a.max - b.max).abs() < 1e-12 && (a.std - b.std).abs() < 1e-12);
        assert_eq!(crate::decode::<Profile>(&crate::encode(&p)).unwrap(), p);
    }
}
