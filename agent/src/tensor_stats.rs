//! What each model version sees and says: running statistics of every input and output
//! tensor, and for outputs that are scores, which class wins and with what score. The first
//! slice of model-aware rollouts (issue 13): the figures a rollout gate or a drift alert
//! reads, on `/metrics` (telemetry comes next).
//!
//! The serving workers describe a request on their own thread ([`TensorStats::admit`],
//! [`TensorStats::describe_side`] for its inputs before the run and its outputs before the
//! answer, [`TensorStats::account`]), so the cost is theirs, not the runtime's, and it is
//! measured: `edge_agent_tensor_stats_seconds_total` beside
//! `edge_agent_inference_duration_seconds`.
//!
//! Per model, version and tensor (`input:NAME`, `output:NAME`), cumulative since the version
//! was activated:
//!
//! - `edge_agent_tensor_values_total`, `_nan_total`, `_inf_total`: elements seen, and how many
//!   were NaN or infinite (those are left out of the figures below);
//! - `edge_agent_tensor_mean`, `_std`, `_min`, `_max`: of the finite elements.
//!
//! For an output holding one row of scores (every value in [0, 1], at least two of them):
//! `edge_agent_model_top_class_total{class}` (the arg-max; classes past [`MAX_CLASSES`] count
//! as `other`) and the histogram `edge_agent_model_top_score`.
//!
//! For a version deployed with a reference profile ([`TensorStats::set_profile`]):
//! `edge_agent_tensor_drift_psi`, the drift of each profiled tensor ([`crate::drift`]).

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edge_proto::profile::Profile;
use edge_proto::telemetry::{TensorSummary, MAX_TENSORS};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tract_core::internal::{DatumType, Tensor};

use crate::drift::Window;
use crate::engine::TensorSpec;

/// Classes counted one by one; higher ones count as `other`.
pub const MAX_CLASSES: usize = 1000;

/// Running figures of a tensor's elements.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Elements seen.
    pub count: u64,
    /// NaN elements.
    pub nan: u64,
    /// Infinite elements.
    pub inf: u64,
    /// Sum of the finite elements.
    pub sum: f64,
    /// Sum of their squares.
    pub sum_sq: f64,
    /// Smallest finite element (+inf before any).
    pub min: f64,
    /// Largest finite element (-inf before any).
    pub max: f64,
}

impl Default for Summary {
    fn default() -> Self {
        Summary { count: 0, nan: 0, inf: 0, sum: 0.0, sum_sq: 0.0, min: f64::INFINITY, max: f64::NEG_INFINITY }
    }
}

impl Summary {
    /// Adds `values`.
    pub fn add(&mut self, values: &[f32]) {
        self.count += values.len() as u64;
        for block in values.chunks(BLOCK) {
            // The fast path: eight lanes the compiler vectorizes, summed in f32 over one
            // block. A NaN or an infinity (or a square that overflows) leaves a non-finite
            // lane; that block is then done again one element at a time.
            match lanes(block) {
                Some((sum, sq, lo, hi)) => {
                    self.sum += sum;
                    self.sum_sq += sq;
                    self.min = self.min.min(lo);
                    self.max = self.max.max(hi);
                }
                None => self.add_slowly(block),
            }
        }
    }

    fn add_slowly(&mut self, block: &[f32]) {
        for &v in block {
            if v.is_finite() {
                self.sum += v as f64;
                self.sum_sq += (v as f64) * (v as f64);
                self.min = self.min.min(v as f64);
                self.max = self.max.max(v as f64);
            } else if v.is_nan() {
                self.nan += 1;
            } else {
                self.inf += 1;
            }
        }
    }

    /// Finite elements seen.
    pub fn finite(&self) -> u64 {
        self.count - self.nan - self.inf
    }

    /// Mean of the finite elements (0 without any).
    pub fn mean(&self) -> f64 {
        match self.finite() {
            0 => 0.0,
            n => self.sum / n as f64,
        }
    }

    /// Standard deviation of the finite elements (0 without any).
    pub fn std(&self) -> f64 {
        match self.finite() {
            0 => 0.0,
            n => (self.sum_sq / n as f64 - self.mean().powi(2)).max(0.0).sqrt(),
        }
    }
}

/// Elements summed in f32 before they are folded into the f64 totals.
const BLOCK: usize = 1024;

/// Sum, sum of squares, min and max of a block of finite values; `None` when any lane is
/// not finite (a NaN or an infinity in the block, or an overflow).
fn lanes(block: &[f32]) -> Option<(f64, f64, f64, f64)> {
    const L: usize = 8;
    let (mut s, mut q, mut lo, mut hi) = ([0f32; L], [0f32; L], [f32::INFINITY; L], [f32::NEG_INFINITY; L]);
    let mut chunks = block.chunks_exact(L);
    for c in &mut chunks {
        for i in 0..L {
            s[i] += c[i];
            q[i] += c[i] * c[i];
            lo[i] = if c[i] < lo[i] { c[i] } else { lo[i] };
            hi[i] = if c[i] > hi[i] { c[i] } else { hi[i] };
        }
    }
    for (i, &v) in chunks.remainder().iter().enumerate() {
        s[i] += v;
        q[i] += v * v;
        lo[i] = lo[i].min(v);
        hi[i] = hi[i].max(v);
    }
    let (sum, sq): (f32, f32) = (s.iter().sum(), q.iter().sum());
    if !sum.is_finite() || !sq.is_finite() {
        return None;
    }
    let lo = lo.iter().copied().fold(f32::INFINITY, f32::min);
    let hi = hi.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    Some((sum as f64, sq as f64, lo as f64, hi as f64))
}

/// The elements of `t` as `f32`, if it is numeric (quantized types are dequantized).
pub(crate) fn as_f32(t: &Tensor) -> Option<std::borrow::Cow<'_, Tensor>> {
    let dt = t.datum_type();
    if dt == DatumType::F32 {
        return Some(std::borrow::Cow::Borrowed(t));
    }
    if !(dt.is_number() || dt.is_quantized()) {
        return None;
    }
    t.cast_to::<f32>().ok()
}

/// The arg-max and top score of `t`, when it holds one row of scores: at least two values,
/// every one in [0, 1], and no more than one row (leading dimensions all 1).
pub fn top(values: &[f32], shape: &[usize]) -> Option<(usize, f32)> {
    let row = *shape.last()?;
    if values.len() < 2 || row != values.len() || !values.iter().all(|v| (0.0..=1.0).contains(v)) {
        return None;
    }
    values.iter().copied().enumerate().fold(None, |best, (i, v)| match best {
        Some((_, b)) if b >= v => best,
        _ => Some((i, v)),
    })
}

/// `model`, `version` and `tensor` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct TensorLabel {
    /// Model name.
    pub model: String,
    /// Version label.
    pub version: String,
    /// `input:NAME` or `output:NAME`.
    pub tensor: String,
}

/// `model`, `version` and `class` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct ClassLabel {
    /// Model name.
    pub model: String,
    /// Version label.
    pub version: String,
    /// The arg-max index, or `other`.
    pub class: String,
}

/// `model` and `version` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct VersionLabel {
    /// Model name.
    pub model: String,
    /// Version label.
    pub version: String,
}

/// `model`, `version` and `result` (`described` or `skipped`) labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct RequestLabel {
    /// Model name.
    pub model: String,
    /// Version label.
    pub version: String,
    /// Whether the request was described or skipped for the budget.
    pub result: &'static str,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// Most of a version's inference time its statistics may take; requests beyond are skipped
/// (a sample, taken without looking at the data, so the figures stay unbiased).
pub const BUDGET: f64 = 0.01;

fn score_histogram() -> Histogram {
    Histogram::new([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99])
}

/// Which side of a request a tensor is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// An input.
    Input = 0,
    /// An output (the arg-max and top score are looked for here).
    Output = 1,
}

/// One tensor's running figures and its series, resolved once (a metric handle shares its
/// value with the family it came from).
#[derive(Debug)]
struct TensorSeries {
    label: TensorLabel,
    summary: Summary,
    values: Counter,
    nan: Counter,
    inf: Counter,
    mean: FloatGauge,
    std: FloatGauge,
    min: FloatGauge,
    max: FloatGauge,
    /// With a profile for this tensor: the window and its PSI gauge.
    drift: Option<(Window, FloatGauge)>,
}

/// One version's budget, tensors and per-version series.
#[derive(Debug, Default)]
struct VersionState {
    /// Seconds of inference, and of statistics.
    inference: f64,
    stats: f64,
    /// By side (0 inputs, 1 outputs) and position.
    tensors: [Vec<Option<TensorSeries>>; 2],
    classes: HashMap<usize, Counter>,
    /// The version's reference profile and the half-life of its drift window.
    profile: Option<(Arc<Profile>, Duration)>,
}

/// The statistics of every served model version, and their `/metrics` families.
#[derive(Debug)]
pub struct TensorStats {
    /// By model, then version: looked up with borrowed names, so that a request allocates
    /// nothing once its version has been seen.
    versions: Mutex<HashMap<String, HashMap<String, VersionState>>>,
    requests: Family<RequestLabel, Counter>,
    values: Family<TensorLabel, Counter>,
    nan: Family<TensorLabel, Counter>,
    inf: Family<TensorLabel, Counter>,
    mean: Family<TensorLabel, FloatGauge>,
    std: Family<TensorLabel, FloatGauge>,
    min: Family<TensorLabel, FloatGauge>,
    max: Family<TensorLabel, FloatGauge>,
    top_class: Family<ClassLabel, Counter>,
    top_score: Family<VersionLabel, Histogram, fn() -> Histogram>,
    seconds: Family<VersionLabel, Counter<f64, AtomicU64>>,
    psi: Family<TensorLabel, FloatGauge>,
}

impl Default for TensorStats {
    fn default() -> Self {
        TensorStats {
            versions: Mutex::default(),
            requests: Family::default(),
            values: Family::default(),
            nan: Family::default(),
            inf: Family::default(),
            mean: Family::default(),
            std: Family::default(),
            min: Family::default(),
            max: Family::default(),
            top_class: Family::default(),
            top_score: Family::new_with_constructor(score_histogram as fn() -> Histogram),
            seconds: Family::default(),
            psi: Family::default(),
        }
    }
}

/// `model`'s `version` in `versions`, made on first sight.
fn state<'a>(
    versions: &'a mut HashMap<String, HashMap<String, VersionState>>,
    model: &str,
    version: &str,
) -> &'a mut VersionState {
    if !versions.get(model).is_some_and(|v| v.contains_key(version)) {
        versions.entry(model.into()).or_default().insert(version.into(), VersionState::default());
    }
    versions.get_mut(model).and_then(|v| v.get_mut(version)).expect("inserted above")
}

impl TensorStats {
    fn version_label(model: &str, version: &str) -> VersionLabel {
        VersionLabel { model: model.into(), version: version.into() }
    }

    /// Whether the next request of `model` `version` is to be described: while its
    /// statistics have taken at most [`BUDGET`] of its inference time (the first request
    /// always is). A request not described is counted as skipped by [`Self::account`].
    pub fn admit(&self, model: &str, version: &str) -> bool {
        let mut versions = self.versions.lock().expect("tensor stats lock");
        let v = state(&mut versions, model, version);
        v.stats <= BUDGET * v.inference
    }

    /// Adds a request's inference time `ran` and, if it was described, the time `took` by
    /// [`Self::describe_side`], to the version's budget, and counts it.
    pub fn account(&self, model: &str, version: &str, ran: Duration, took: Option<Duration>) {
        {
            let mut versions = self.versions.lock().expect("tensor stats lock");
            let v = state(&mut versions, model, version);
            v.inference += ran.as_secs_f64();
            v.stats += took.map_or(0.0, |t| t.as_secs_f64());
        }
        if let Some(took) = took {
            self.seconds.get_or_create(&Self::version_label(model, version)).inc_by(took.as_secs_f64());
        }
        let result = if took.is_some() { "described" } else { "skipped" };
        self.requests.get_or_create(&RequestLabel { model: model.into(), version: version.into(), result }).inc();
    }

    /// One request of `model` `version` that ran for `ran`, at once: described if
    /// [`Self::admit`] lets it, then [`Self::account`]ed. (The serving workers call the
    /// three apart, so that inputs are described before the run consumes them and outputs
    /// before the answer takes them, without copying either.)
    pub fn observe(
        &self,
        model: &str,
        version: &str,
        specs: (&[TensorSpec], &[TensorSpec]),
        inputs: &[Tensor],
        outputs: &[Tensor],
        ran: Duration,
    ) {
        let took = self.admit(model, version).then(|| self.describe(model, version, specs, inputs, outputs));
        self.account(model, version, ran, took);
    }

    /// Records one request's `inputs` and `outputs` (named by the specs) for `model`
    /// `version`, whatever the budget; how long that took.
    pub fn describe(
        &self,
        model: &str,
        version: &str,
        specs: (&[TensorSpec], &[TensorSpec]),
        inputs: &[Tensor],
        outputs: &[Tensor],
    ) -> Duration {
        self.describe_side(model, version, Side::Input, specs.0, inputs)
            + self.describe_side(model, version, Side::Output, specs.1, outputs)
    }

    /// Records the `tensors` of one side of a request (named by `specs`); how long that took.
    pub fn describe_side(
        &self,
        model: &str,
        version: &str,
        side: Side,
        specs: &[TensorSpec],
        tensors: &[Tensor],
    ) -> Duration {
        let started = Instant::now();
        let mut versions = self.versions.lock().expect("tensor stats lock");
        let v = state(&mut versions, model, version);
        let mut top_score = None;
        let side = side as usize;
        let profile = v.profile.clone();
        for (i, t) in tensors.iter().enumerate() {
            let Some(owned) = as_f32(t) else { continue };
            let Ok(view) = owned.try_as_plain_ram() else { continue };
            let Ok(values) = view.as_slice::<f32>() else { continue };
            let slots = &mut v.tensors[side];
            if slots.len() <= i {
                slots.resize_with(i + 1, || None);
            }
            let series = slots[i].get_or_insert_with(|| {
                let name = specs.get(i).map_or_else(|| i.to_string(), |s| s.name.clone());
                let label = TensorLabel {
                    model: model.into(),
                    version: version.into(),
                    tensor: crate::drift::label(side == 1, &name),
                };
                TensorSeries {
                    summary: Summary::default(),
                    values: self.values.get_or_create(&label).clone(),
                    nan: self.nan.get_or_create(&label).clone(),
                    inf: self.inf.get_or_create(&label).clone(),
                    mean: self.mean.get_or_create(&label).clone(),
                    std: self.std.get_or_create(&label).clone(),
                    min: self.min.get_or_create(&label).clone(),
                    max: self.max.get_or_create(&label).clone(),
                    drift: self.drift_of(profile.as_ref(), &label),
                    label,
                }
            });
            let s = &mut series.summary;
            let before = *s;
            s.add(values);
            series.values.inc_by(s.count - before.count);
            series.nan.inc_by(s.nan - before.nan);
            series.inf.inc_by(s.inf - before.inf);
            series.mean.set(s.mean());
            series.std.set(s.std());
            if s.finite() > 0 {
                series.min.set(s.min);
                series.max.set(s.max);
            }
            if let Some((window, psi)) = &mut series.drift {
                window.add(values, started);
                psi.set(window.psi().unwrap_or(0.0));
            }
            if side == 1 {
                if let Some((class, score)) = top(values, t.shape()) {
                    let counter = v.classes.entry(class.min(MAX_CLASSES)).or_insert_with(|| {
                        let class = if class < MAX_CLASSES { class.to_string() } else { "other".into() };
                        let label = ClassLabel { model: model.into(), version: version.into(), class };
                        self.top_class.get_or_create(&label).clone()
                    });
                    counter.inc();
                    top_score = Some(score);
                }
            }
        }
        drop(versions);
        if let Some(score) = top_score {
            self.top_score.get_or_create(&Self::version_label(model, version)).observe(score as f64);
        }
        started.elapsed()
    }

    /// The drift window and gauge of `label` when `profile` describes it.
    fn drift_of(
        &self,
        profile: Option<&(Arc<Profile>, Duration)>,
        label: &TensorLabel,
    ) -> Option<(Window, FloatGauge)> {
        let (profile, half_life) = profile?;
        let reference = profile.get(&label.tensor)?;
        Some((Window::new(reference, *half_life), self.psi.get_or_create(label).clone()))
    }

    /// Gives `version` of `model` its reference `profile` (or none), whose drift windows
    /// halve their counts every `half_life`: call it before the version serves. Windows
    /// already counting start over.
    pub fn set_profile(&self, model: &str, version: &str, profile: Option<Arc<Profile>>, half_life: Duration) {
        let mut versions = self.versions.lock().expect("tensor stats lock");
        let v = state(&mut versions, model, version);
        v.profile = profile.map(|p| (p, half_life));
        let profile = v.profile.clone();
        for series in v.tensors.iter_mut().flatten().flatten() {
            if series.drift.take().is_some() {
                self.psi.remove(&series.label);
            }
            series.drift = self.drift_of(profile.as_ref(), &series.label);
        }
    }

    /// Telemetry's view: every described tensor of every version served, sorted by model,
    /// version and tensor, at most [`MAX_TENSORS`].
    pub fn summaries(&self) -> Vec<TensorSummary> {
        let versions = self.versions.lock().expect("tensor stats lock");
        let mut out: Vec<TensorSummary> = versions
            .values()
            .flat_map(|by_version| by_version.values())
            .flat_map(|state| state.tensors.iter().flatten().flatten())
            .filter(|t| t.summary.count > 0)
            .map(|t| {
                let s = &t.summary;
                let finite = s.finite() > 0;
                TensorSummary {
                    name: t.label.model.clone(),
                    version: t.label.version.clone(),
                    tensor: t.label.tensor.clone(),
                    values: s.count,
                    nan: s.nan,
                    inf: s.inf,
                    mean: if finite { s.mean() } else { 0.0 },
                    std: if finite { s.std() } else { 0.0 },
                    min: if finite { s.min } else { 0.0 },
                    max: if finite { s.max } else { 0.0 },
                    drift_psi: t.drift.as_ref().and_then(|(w, _)| w.psi()),
                }
            })
            .collect();
        out.sort_by(|a, b| (&a.name, &a.version, &a.tensor).cmp(&(&b.name, &b.version, &b.tensor)));
        out.truncate(MAX_TENSORS);
        out
    }

    /// Forgets `version` of `model` (it is no longer served): its series leave `/metrics`.
    pub fn retire(&self, model: &str, version: &str) {
        let gone = self.versions.lock().expect("tensor stats lock").get_mut(model).and_then(|v| v.remove(version));
        let Some(gone) = gone else { return };
        for series in gone.tensors.iter().flatten().flatten() {
            let l = &series.label;
            for f in [&self.values, &self.nan, &self.inf] {
                f.remove(l);
            }
            for f in [&self.mean, &self.std, &self.min, &self.max, &self.psi] {
                f.remove(l);
            }
        }
        for class in gone.classes.keys() {
            let class = if *class < MAX_CLASSES { class.to_string() } else { "other".into() };
            self.top_class.remove(&ClassLabel { model: model.into(), version: version.into(), class });
        }
        let v = Self::version_label(model, version);
        self.top_score.remove(&v);
        self.seconds.remove(&v);
        for result in ["described", "skipped"] {
            self.requests.remove(&RequestLabel { model: model.into(), version: version.into(), result });
        }
    }

    /// Adds the families to `r`.
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "edge_agent_tensor_requests",
            "Requests the tensor statistics described, or skipped to stay within 1% of the inference time",
            self.requests.clone(),
        );
        r.register(
            "edge_agent_tensor_values",
            "Tensor elements seen, by model, version and tensor",
            self.values.clone(),
        );
        r.register("edge_agent_tensor_nan", "NaN tensor elements seen", self.nan.clone());
        r.register("edge_agent_tensor_inf", "Infinite tensor elements seen", self.inf.clone());
        r.register(
            "edge_agent_tensor_mean",
            "Mean of the finite elements since the version was activated",
            self.mean.clone(),
        );
        r.register("edge_agent_tensor_std", "Standard deviation of the finite elements", self.std.clone());
        r.register("edge_agent_tensor_min", "Smallest finite element", self.min.clone());
        r.register("edge_agent_tensor_max", "Largest finite element", self.max.clone());
        r.register("edge_agent_model_top_class", "Requests by the arg-max of a score output", self.top_class.clone());
        r.register("edge_agent_model_top_score", "Top score of a score output per request", self.top_score.clone());
        r.register(
            "edge_agent_tensor_drift_psi",
            "Population stability index of a tensor against its reference profile, over a decaying window",
            self.psi.clone(),
        );
        r.register(
            "edge_agent_tensor_stats_seconds",
            "Time the serving workers spent on these statistics (compare with inference_duration_seconds)",
            self.seconds.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_summary_counts_nan_and_inf_apart_and_describes_the_rest() {
        let mut s = Summary::default();
        s.add(&[1.0, 2.0, f32::NAN, 3.0, f32::INFINITY, f32::NEG_INFINITY]);
        s.add(&[4.0]);
        assert_eq!((s.count, s.nan, s.inf, s.finite()), (7, 1, 2, 4));
        assert_eq!((s.min, s.max, s.mean()), (1.0, 4.0, 2.5));
        assert!((s.std() - 1.118_034).abs() < 1e-5, "{}", s.std());
        assert_eq!(Summary::default().mean(), 0.0);
    }

    #[test]
    fn the_fast_path_agrees_with_the_slow_one_and_hands_over_on_nan() {
        let values: Vec<f32> = (0..3000).map(|i| ((i * 37) % 101) as f32 / 7.0 - 5.0).collect();
        let (mut fast, mut slow) = (Summary::default(), Summary::default());
        fast.add(&values);
        slow.add_slowly(&values);
        slow.count = values.len() as u64;
        assert_eq!((fast.min, fast.max, fast.count), (slow.min, slow.max, slow.count));
        assert!((fast.mean() - slow.mean()).abs() < 1e-5 && (fast.std() - slow.std()).abs() < 1e-4);
        let mut with_nan = values.clone();
        with_nan[1500] = f32::NAN;
        with_nan[10] = f32::NEG_INFINITY;
        let mut s = Summary::default();
        s.add(&with_nan);
        assert_eq!((s.nan, s.inf, s.finite()), (1, 1, 2998));
        assert_eq!(s.max, slow.max);
    }

    #[test]
    fn only_one_row_of_values_in_0_1_counts_as_scores() {
        assert_eq!(top(&[0.1, 0.7, 0.2], &[1, 3]), Some((1, 0.7)));
        assert_eq!(top(&[0.5, 0.5], &[2]), Some((0, 0.5)), "ties go to the first");
        assert_eq!(top(&[0.1, 1.7], &[1, 2]), None, "not scores");
        assert_eq!(top(&[0.1, 0.2, 0.3, 0.4], &[2, 2]), None, "two rows");
        assert_eq!(top(&[0.9], &[1]), None, "one value");
    }

    #[test]
    fn a_profiled_version_exports_the_drift_of_its_profiled_tensors_only() {
        use edge_proto::codec::Versioned;
        let stats = TensorStats::default();
        let mut sample: Vec<f32> = (0..1000).map(|i| i as f32 / 1000.0).collect();
        let reference = edge_proto::profile::TensorProfile::from_values("input:0", &mut sample, 10).unwrap();
        let profile =
            Profile { version: Profile::VERSION, model_sha256: "0".repeat(64), samples: 1, tensors: vec![reference] };
        stats.set_profile("m", "1", Some(Arc::new(profile)), Duration::from_secs(60));
        let shifted = Tensor::from_shape(&[4], &[5.0f32, 6.0, 7.0, 8.0]).unwrap();
        stats.describe_side("m", "1", Side::Input, &[], &[shifted.clone(), shifted]);
        let mut r = Registry::default();
        stats.register(&mut r);
        let text = |r: &Registry| {
            let mut text = String::new();
            prometheus_client::encoding::text::encode(&mut text, r).unwrap();
            text
        };
        let psi = |tensor: &str| {
            let prefix = format!(r#"edge_agent_tensor_drift_psi{{model="m",version="1",tensor="{tensor}"}} "#);
            text(&r).lines().find_map(|l| l.strip_prefix(&prefix).map(|v| v.parse::<f64>().unwrap()))
        };
        assert!(psi("input:0").is_some_and(|p| p > 5.0), "everything past the maximum:\n{}", text(&r));
        assert_eq!(psi("input:1"), None, "not in the profile");
        stats.retire("m", "1");
        assert!(!text(&r).contains("edge_agent_tensor_drift_psi{"), "{}", text(&r));
    }

    #[test]
    fn observed_requests_show_on_metrics_and_leave_with_their_version() {
        let stats = TensorStats::default();
        let input = Tensor::from_shape(&[1, 4], &[0.5f32, -1.0, f32::NAN, 2.5]).unwrap();
        let output = Tensor::from_shape(&[1, 3], &[0.1f32, 0.75, 0.15]).unwrap();
        let quantized = Tensor::from_shape(&[2], &[3i8, -3]).unwrap();
        stats.observe(
            "m",
            "2",
            (&[], &[]),
            &[input.clone(), quantized.clone()],
            std::slice::from_ref(&output),
            Duration::from_millis(1),
        );
        // Far beyond 1% of 1 ms spent: the next request of that version is skipped.
        stats.observe("m", "2", (&[], &[]), &[input, quantized], &[output], Duration::from_nanos(1));
        let mut r = Registry::default();
        stats.register(&mut r);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &r).unwrap();
        for line in [
            r#"edge_agent_tensor_values_total{model="m",version="2",tensor="input:0"} 4"#,
            r#"edge_agent_tensor_nan_total{model="m",version="2",tensor="input:0"} 1"#,
            r#"edge_agent_tensor_mean{model="m",version="2",tensor="input:1"} 0.0"#,
            r#"edge_agent_tensor_max{model="m",version="2",tensor="input:0"} 2.5"#,
            r#"edge_agent_model_top_class_total{model="m",version="2",class="1"} 1"#,
            r#"edge_agent_model_top_score_bucket{le="0.8",model="m",version="2"} 1"#,
            r#"edge_agent_tensor_requests_total{model="m",version="2",result="described"} 1"#,
            r#"edge_agent_tensor_requests_total{model="m",version="2",result="skipped"} 1"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in:\n{text}");
        }
        // The same figures for telemetry, sorted by tensor.
        let summaries = stats.summaries();
        let tensors: Vec<&str> = summaries.iter().map(|t| t.tensor.as_str()).collect();
        assert_eq!(tensors, ["input:0", "input:1", "output:0"]);
        let first = &summaries[0];
        assert_eq!((first.values, first.nan, first.max, first.drift_psi), (4, 1, 2.5, None));
        stats.retire("m", "2");
        assert!(stats.summaries().is_empty(), "a retired version leaves telemetry too");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &r).unwrap();
        assert!(!text.contains("version=\"2\""), "{text}");
    }
}
