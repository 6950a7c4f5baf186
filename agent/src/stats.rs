//! Inference statistics per model: counters and recent latencies.
//!
//! The serving paths record every request here; telemetry reads percentiles from it and
//! `/metrics` exports it: requests and latency by model and outcome (one histogram for every
//! outcome, so a slow timeout shows as well as a fast answer), requests running, and which
//! version of each model is active (`model_info`).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use edge_proto::telemetry::{ModelLatency, ModelStats, VersionStats, LATENCY_BUCKETS};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

/// How many recent latencies each model keeps for percentiles.
const WINDOW: usize = 1024;

/// How many versions of a model keep their figures (the active one and those before it):
/// enough for a rollout's old and new and a rollback or two.
pub const VERSIONS_KEPT: usize = 4;

/// Label set of the per-model metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct ModelLabel {
    /// Model name.
    pub model: String,
}

/// Label set of the per-request metrics: the model and how the request ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct RequestLabel {
    /// Model name.
    pub model: String,
    /// [`Outcome::label`].
    pub outcome: &'static str,
}

/// Label set of `edge_agent_model_info`: the active version of a model.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct ModelInfoLabel {
    /// Model name.
    pub model: String,
    /// Active version label.
    pub version: String,
    /// File format (`onnx`, `tflite`, `nnef`).
    pub format: &'static str,
}

fn latency_histogram() -> Histogram {
    // The bounds telemetry carries too, so that the fleet's histograms and this one read alike.
    Histogram::new(LATENCY_BUCKETS.iter().copied())
}

/// Per-model inference statistics.
#[derive(Debug)]
pub struct InferenceStats {
    recent: Mutex<BTreeMap<String, Window>>,
    /// `edge_agent_inference_duration_seconds`: every request, by model and outcome.
    pub duration: Family<RequestLabel, Histogram, fn() -> Histogram>,
    /// `edge_agent_inference_requests_total`: by model and outcome.
    pub requests: Family<RequestLabel, Counter>,
    /// `edge_agent_inference_in_flight`
    pub in_flight: Family<ModelLabel, Gauge>,
    /// `edge_agent_model_info`: 1 for the active version of each model.
    pub model_info: Family<ModelInfoLabel, Gauge>,
    /// The `model_info` label set of each active model, to retire it when that changes.
    active: Mutex<HashMap<String, ModelInfoLabel>>,
    /// What each version's tensors hold ([`crate::tensor_stats`]).
    pub tensors: crate::tensor_stats::TensorStats,
    /// The shadows' counters ([`crate::serving::shadow`]).
    pub shadow: crate::serving::shadow::ShadowMetrics,
}

#[derive(Debug, Default)]
struct Window {
    latencies: VecDeque<f32>,
    requests: u64,
    errors: u64,
    failures: u64,
    timed: u64,
    /// Requests ended, by latency bucket ([`LATENCY_BUCKETS`], not cumulative; the last
    /// slot is over the top bound), and the sum of their latencies, since the start.
    buckets: [u64; LATENCY_BUCKETS.len() + 1],
    latency_sum_secs: f64,
    /// The same per version, oldest activation first; `current` indexes the active one.
    versions: Vec<VersionWindow>,
    current: Option<usize>,
}

/// What one version did, as [`VersionStats`] reports it.
#[derive(Debug, Default)]
struct VersionWindow {
    version: String,
    requests: u64,
    failures: u64,
    timed: u64,
    /// Not cumulative, as [`Window::buckets`].
    buckets: [u64; LATENCY_BUCKETS.len() + 1],
    sum_secs: f64,
    shadow: bool,
    compared: u64,
    agreed: u64,
    max_abs_diff: f64,
}

impl Window {
    /// The index of `version`'s figures, made if need be. Past [`VERSIONS_KEPT`], the
    /// oldest version that is neither active nor a shadow goes.
    fn version_at(&mut self, version: &str) -> usize {
        if let Some(at) = self.versions.iter().position(|v| v.version == version) {
            return at;
        }
        if self.versions.len() >= VERSIONS_KEPT {
            let current = self.current;
            if let Some(gone) = (0..self.versions.len()).find(|&i| Some(i) != current && !self.versions[i].shadow) {
                self.versions.remove(gone);
                self.current = current.map(|c| if c > gone { c - 1 } else { c });
            }
        }
        self.versions.push(VersionWindow { version: version.to_string(), ..Default::default() });
        self.versions.len() - 1
    }
}

/// How a shadow's outputs compared with the active version's for one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Comparison {
    /// Whether they agree (see [`VersionStats::agreed`]).
    pub agreed: bool,
    /// The largest absolute difference of an element (infinite when shapes differ).
    pub max_abs_diff: f64,
}

/// Cumulative counts of a histogram kept per bucket, without its overflow slot.
fn cumulative(buckets: &[u64]) -> Vec<u64> {
    buckets[..LATENCY_BUCKETS.len()]
        .iter()
        .scan(0, |total, n| {
            *total += n;
            Some(*total)
        })
        .collect()
}

/// How a request ended, as the health of a model version sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Answered.
    Ok,
    /// Refused because the client got the request wrong (a 4xx the previous version would
    /// have refused too): not the model's fault.
    ClientError,
    /// The model failed: an inference error (a 5xx).
    ModelError,
    /// A request the previous version accepted and this one, on trial, refuses: the caller
    /// sees a 400, but a changed signature breaking its callers is the model's failure.
    Regression,
    /// No answer within the deadline: a hung or overloaded worker.
    Timeout,
    /// The model's queue was full (503).
    Busy,
}

impl Outcome {
    /// Whether this outcome counts against the model version.
    pub fn is_failure(self) -> bool {
        !matches!(self, Outcome::Ok | Outcome::ClientError)
    }

    /// The `outcome` label: what the caller saw, one dimension (HTTP 200, 400, 500, 504, 503).
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::ClientError | Outcome::Regression => "bad_request",
            Outcome::ModelError => "error",
            Outcome::Timeout => "timeout",
            Outcome::Busy => "unavailable",
        }
    }

    /// Every outcome, for labels that report zeros before the first request.
    pub const ALL: [Outcome; 6] =
        [Outcome::Ok, Outcome::ClientError, Outcome::ModelError, Outcome::Regression, Outcome::Timeout, Outcome::Busy];
}

/// A model's counters and recent latencies, as the OTA health watch reads them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counts {
    /// Requests ended, whatever their outcome.
    pub requests: u64,
    /// Of which not answered (any outcome but [`Outcome::Ok`]).
    pub errors: u64,
    /// Of which the model's fault ([`Outcome::is_failure`]).
    pub failures: u64,
    /// Requests that left a latency (answered or timed out), ever.
    pub timed: u64,
    /// Recent latencies (ms, oldest first) of answered and timed-out requests.
    pub latencies: Vec<f32>,
}

impl Default for InferenceStats {
    fn default() -> Self {
        InferenceStats {
            recent: Mutex::new(BTreeMap::new()),
            duration: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            requests: Family::default(),
            in_flight: Family::default(),
            model_info: Family::default(),
            active: Mutex::new(HashMap::new()),
            tensors: Default::default(),
            shadow: Default::default(),
        }
    }
}

/// The `p` quantile (0-1) of sorted values, nearest rank; 0 when empty.
pub fn percentile(sorted: &[f32], p: f32) -> f32 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p * sorted.len() as f32).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

impl InferenceStats {
    /// Makes a model known, so it reports zeros before its first request: a counter for
    /// every outcome (rates and ratios exist from the start), the latency of answers.
    pub fn register(&self, model: &str) {
        self.recent.lock().expect("stats lock").entry(model.to_string()).or_default();
        for outcome in Outcome::ALL {
            let _ = self.requests.get_or_create(&RequestLabel { model: model.to_string(), outcome: outcome.label() });
        }
        let _ = self.in_flight.get_or_create(&ModelLabel { model: model.to_string() });
        let _ = self.duration.get_or_create(&RequestLabel { model: model.to_string(), outcome: Outcome::Ok.label() });
    }

    /// `version` of `model` (in `format`) is now the active one: the only `model_info` of
    /// `model`. The serving registry calls this wherever the active version changes.
    pub fn activated(&self, model: &str, version: &str, format: &'static str) {
        let label = ModelInfoLabel { model: model.to_string(), version: version.to_string(), format };
        let mut active = self.active.lock().expect("stats lock");
        if let Some(old) = active.insert(model.to_string(), label.clone()) {
            self.model_info.remove(&old);
        }
        self.model_info.get_or_create(&label).set(1);
        drop(active);
        let mut recent = self.recent.lock().expect("stats lock");
        let w = recent.entry(model.to_string()).or_default();
        let at = w.version_at(version);
        w.versions[at].shadow = false;
        w.current = Some(at);
    }

    /// `version` of `model` runs as a shadow of the active version from now on (the only
    /// shadow of `model`).
    pub fn shadow_started(&self, model: &str, version: &str) {
        let mut recent = self.recent.lock().expect("stats lock");
        let w = recent.entry(model.to_string()).or_default();
        let at = w.version_at(version);
        for (i, v) in w.versions.iter_mut().enumerate() {
            v.shadow = i == at;
        }
    }

    /// `model` has no shadow any more.
    pub fn shadow_ended(&self, model: &str) {
        if let Some(w) = self.recent.lock().expect("stats lock").get_mut(model) {
            w.versions.iter_mut().for_each(|v| v.shadow = false);
        }
    }

    /// The shadow `version` of `model` ran a copied request in `elapsed`: `compared` is how
    /// its outputs compared with the active version's, `None` when it failed.
    pub fn shadow_ran(&self, model: &str, version: &str, elapsed: Duration, compared: Option<Comparison>) {
        let mut recent = self.recent.lock().expect("stats lock");
        let Some(v) = recent.get_mut(model).and_then(|w| w.versions.iter_mut().find(|v| v.version == version)) else {
            return;
        };
        v.requests += 1;
        match compared {
            None => v.failures += 1,
            Some(c) => {
                let secs = elapsed.as_secs_f64();
                v.timed += 1;
                v.buckets[LATENCY_BUCKETS.partition_point(|&le| le < secs)] += 1;
                v.sum_secs += secs;
                v.compared += 1;
                v.agreed += u64::from(c.agreed);
                v.max_abs_diff = v.max_abs_diff.max(c.max_abs_diff);
            }
        }
    }

    /// `model` no longer serves: its `model_info` goes.
    pub fn deactivated(&self, model: &str) {
        if let Some(old) = self.active.lock().expect("stats lock").remove(model) {
            self.model_info.remove(&old);
        }
        if let Some(w) = self.recent.lock().expect("stats lock").get_mut(model) {
            w.current = None;
        }
    }

    /// A request refused before it reached the model (a body that does not parse or does not
    /// fit the signature, an unsupported content type): counted for `/metrics` with its
    /// latency, but not in the health window, which judges the model.
    pub fn refused(&self, model: &str, elapsed: Duration) {
        let label = RequestLabel { model: model.to_string(), outcome: Outcome::ClientError.label() };
        self.requests.get_or_create(&label).inc();
        self.duration.get_or_create(&label).observe(elapsed.as_secs_f64());
    }

    /// A request starts.
    pub fn begin(&self, model: &str) {
        self.in_flight.get_or_create(&ModelLabel { model: model.to_string() }).inc();
    }

    /// A request ends after `elapsed`, with `outcome`. A timed-out request's latency is its
    /// deadline: a hung version's p95 shows it.
    pub fn end(&self, model: &str, elapsed: Duration, outcome: Outcome) {
        self.in_flight.get_or_create(&ModelLabel { model: model.to_string() }).dec();
        let label = RequestLabel { model: model.to_string(), outcome: outcome.label() };
        self.requests.get_or_create(&label).inc();
        self.duration.get_or_create(&label).observe(elapsed.as_secs_f64());
        let timed = matches!(outcome, Outcome::Ok | Outcome::Timeout);
        let mut recent = self.recent.lock().expect("stats lock");
        let w = recent.entry(model.to_string()).or_default();
        w.requests += 1;
        let secs = elapsed.as_secs_f64();
        let bucket = LATENCY_BUCKETS.partition_point(|&le| le < secs);
        w.buckets[bucket] += 1;
        w.latency_sum_secs += secs;
        // A request that began before an activation and ends after it counts for the new
        // version, as in the health window.
        if let Some(v) = w.current.and_then(|at| w.versions.get_mut(at)) {
            v.requests += 1;
            v.failures += u64::from(outcome.is_failure());
            if timed {
                v.timed += 1;
                v.buckets[bucket] += 1;
                v.sum_secs += secs;
            }
        }
        if outcome != Outcome::Ok {
            w.errors += 1;
        }
        if outcome.is_failure() {
            w.failures += 1;
        }
        if timed {
            w.timed += 1;
            if w.latencies.len() == WINDOW {
                w.latencies.pop_front();
            }
            w.latencies.push_back(elapsed.as_secs_f32() * 1e3);
        }
    }

    /// The counters and recent latencies of `model`: what the OTA health watch compares
    /// before and after an activation.
    pub fn counts(&self, model: &str) -> Counts {
        let recent = self.recent.lock().expect("stats lock");
        match recent.get(model) {
            Some(w) => Counts {
                requests: w.requests,
                errors: w.errors,
                failures: w.failures,
                timed: w.timed,
                latencies: w.latencies.iter().copied().collect(),
            },
            None => Counts::default(),
        }
    }

    /// Telemetry's latency histograms: every request ended since the start, whatever its
    /// outcome (as `edge_agent_inference_duration_seconds` summed over outcomes, less the
    /// requests refused before they reached the model), cumulative per bucket.
    pub fn latencies(&self) -> Vec<ModelLatency> {
        let recent = self.recent.lock().expect("stats lock");
        recent
            .iter()
            .map(|(name, w)| ModelLatency {
                name: name.clone(),
                buckets: cumulative(&w.buckets),
                count: w.requests,
                sum_secs: w.latency_sum_secs,
            })
            .collect()
    }

    /// Telemetry's per-version figures: every version kept of every model, since the start.
    pub fn versions(&self) -> Vec<VersionStats> {
        let recent = self.recent.lock().expect("stats lock");
        recent
            .iter()
            .flat_map(|(name, w)| {
                w.versions.iter().enumerate().map(move |(at, v)| VersionStats {
                    name: name.clone(),
                    version: v.version.clone(),
                    active: w.current == Some(at),
                    requests: v.requests,
                    failures: v.failures,
                    buckets: cumulative(&v.buckets),
                    timed: v.timed,
                    sum_secs: v.sum_secs,
                    shadow: v.shadow,
                    compared: v.compared,
                    agreed: v.agreed,
                    // Infinite (shapes differed) does not survive JSON: the largest finite.
                    max_abs_diff: if v.max_abs_diff.is_finite() { v.max_abs_diff } else { f64::MAX },
                })
            })
            .collect()
    }

    /// Telemetry's view: counters and latency percentiles over the recent window.
    pub fn snapshot(&self) -> Vec<ModelStats> {
        let recent = self.recent.lock().expect("stats lock");
        recent
            .iter()
            .map(|(name, w)| {
                let mut sorted: Vec<f32> = w.latencies.iter().copied().collect();
                sorted.sort_by(f32::total_cmp);
                ModelStats {
                    name: name.clone(),
                    requests: w.requests,
                    errors: w.errors,
                    in_flight: self.in_flight.get_or_create(&ModelLabel { model: name.clone() }).get().max(0) as u32,
                    p50_ms: percentile(&sorted, 0.50),
                    p95_ms: percentile(&sorted, 0.95),
                    p99_ms: percentile(&sorted, 0.99),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_histograms_are_cumulative_with_the_telemetry_bounds() {
        let s = InferenceStats::default();
        for ms in [0.04, 0.05, 3.0, 3.0, 10_000.0] {
            s.end("m", Duration::from_secs_f64(ms / 1e3), Outcome::Ok);
        }
        let [h] = s.latencies().try_into().unwrap();
        assert_eq!((h.name.as_str(), h.count), ("m", 5));
        assert_eq!(h.buckets.len(), LATENCY_BUCKETS.len());
        // 0.04 ms and 0.05 ms fall in the first bucket (le is inclusive), 3 ms in le=0.0032.
        assert_eq!(h.buckets[0], 2);
        assert_eq!(h.buckets[5], 2, "le=0.0016");
        assert_eq!(h.buckets[6], 4, "le=0.0032");
        assert_eq!(*h.buckets.last().unwrap(), 4, "the 10 s request is only in +Inf (count)");
        assert!((h.sum_secs - 10.00609).abs() < 1e-6, "{}", h.sum_secs);
    }

    #[test]
    fn percentiles_counters_and_in_flight() {
        let s = InferenceStats::default();
        s.register("wake");
        for ms in 1..=100 {
            s.begin("wake");
            s.end("wake", Duration::from_millis(ms), Outcome::Ok);
        }
        s.begin("wake");
        s.end("wake", Duration::from_millis(5), Outcome::ModelError);
        s.begin("wake");
        let m = &s.snapshot()[0];
        assert_eq!((m.requests, m.errors, m.in_flight), (101, 1, 1));
        assert_eq!((m.p50_ms.round(), m.p95_ms.round(), m.p99_ms.round()), (50.0, 95.0, 99.0));
    }

    #[test]
    fn client_errors_are_errors_but_not_failures_and_timeouts_keep_their_latency() {
        let s = InferenceStats::default();
        for outcome in [Outcome::Ok, Outcome::ClientError, Outcome::ModelError, Outcome::Timeout, Outcome::Busy] {
            s.begin("m");
            s.end("m", Duration::from_millis(7), outcome);
        }
        let c = s.counts("m");
        assert_eq!((c.requests, c.errors, c.failures), (5, 4, 3));
        assert_eq!(c.latencies, vec![7.0, 7.0]);
    }

    /// The OpenMetrics text of the request and `model_info` families.
    fn exposition(s: &InferenceStats) -> String {
        let mut r = prometheus_client::registry::Registry::default();
        r.register("requests", "", s.requests.clone());
        r.register("duration", "", s.duration.clone());
        r.register("model_info", "", s.model_info.clone());
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r).unwrap();
        out
    }

    #[test]
    fn every_outcome_is_counted_and_timed_under_its_own_label() {
        let s = InferenceStats::default();
        s.register("m");
        for outcome in Outcome::ALL {
            s.begin("m");
            s.end("m", Duration::from_millis(3), outcome);
        }
        s.refused("m", Duration::from_millis(1));
        let text = exposition(&s);
        for (outcome, n) in [("ok", 1), ("bad_request", 3), ("error", 1), ("timeout", 1), ("unavailable", 1)] {
            for series in [
                format!("requests_total{{model=\"m\",outcome=\"{outcome}\"}} {n}\n"),
                format!("duration_count{{model=\"m\",outcome=\"{outcome}\"}} {n}\n"),
            ] {
                assert!(text.contains(&series), "no {series} in:\n{text}");
            }
        }
        // A refusal before the model is not the model's request: the health window skips it.
        assert_eq!(s.counts("m").requests, 6);
    }

    #[test]
    fn model_info_follows_the_active_version() {
        let s = InferenceStats::default();
        s.activated("m", "1", "onnx");
        s.activated("m", "2", "tflite");
        let text = exposition(&s);
        assert!(text.contains("model_info{model=\"m\",version=\"2\",format=\"tflite\"} 1\n"), "{text}");
        assert!(!text.contains("version=\"1\""), "the replaced version still has a model_info:\n{text}");
        s.deactivated("m");
        let text = exposition(&s);
        assert!(!text.contains("model_info{"), "a removed model still has a model_info:\n{text}");
    }

    #[test]
    fn each_version_keeps_its_own_figures_across_activations() {
        let s = InferenceStats::default();
        s.activated("m", "1", "onnx");
        for _ in 0..4 {
            s.end("m", Duration::from_millis(1), Outcome::Ok);
        }
        s.activated("m", "2", "onnx");
        s.end("m", Duration::from_millis(100), Outcome::Ok);
        s.end("m", Duration::from_millis(100), Outcome::ModelError);
        s.end("m", Duration::from_millis(100), Outcome::ClientError);
        // A rollback: version 1 goes on from its own figures.
        s.activated("m", "1", "onnx");
        s.end("m", Duration::from_millis(1), Outcome::Timeout);
        let [v1, v2] = s.versions().try_into().unwrap();
        assert_eq!((v1.version.as_str(), v1.active, v1.requests, v1.failures, v1.timed), ("1", true, 5, 1, 5));
        assert_eq!((v2.version.as_str(), v2.active, v2.requests, v2.failures, v2.timed), ("2", false, 3, 1, 1));
        // Interpolated inside (0.8, 1.6] ms and (51.2, 102.4] ms.
        assert!((v1.latency_quantile(0.95).unwrap() - 0.00156).abs() < 1e-9);
        assert!((v2.latency_quantile(0.95).unwrap() - 0.09984).abs() < 1e-9, "{:?}", v2.latency_quantile(0.95));
        // Only the last VERSIONS_KEPT versions stay.
        for v in 3..=6 {
            s.activated("m", &v.to_string(), "onnx");
        }
        let kept: Vec<String> = s.versions().into_iter().map(|v| v.version).collect();
        assert_eq!(kept, ["3", "4", "5", "6"]);
        s.deactivated("m");
        assert!(s.versions().iter().all(|v| !v.active));
    }

    #[test]
    fn a_shadow_keeps_its_own_figures_and_comparisons_beside_the_active_version() {
        let s = InferenceStats::default();
        s.activated("m", "1", "onnx");
        s.shadow_started("m", "2");
        s.end("m", Duration::from_millis(1), Outcome::Ok);
        s.shadow_ran("m", "2", Duration::from_millis(10), Some(Comparison { agreed: true, max_abs_diff: 0.0 }));
        s.shadow_ran("m", "2", Duration::from_millis(10), Some(Comparison { agreed: false, max_abs_diff: 3.5 }));
        s.shadow_ran("m", "2", Duration::from_millis(10), None);
        let [v1, v2] = s.versions().try_into().unwrap();
        assert_eq!((v1.active, v1.shadow, v1.requests, v1.compared), (true, false, 1, 0));
        assert_eq!((v2.active, v2.shadow, v2.requests, v2.failures, v2.timed), (false, true, 3, 1, 2));
        assert_eq!((v2.compared, v2.agreed, v2.max_abs_diff), (2, 1, 3.5));
        assert_eq!(v2.agreement(), Some(0.5));
        // Kept past VERSIONS_KEPT activations while it is the shadow; promoted, it is active.
        for v in 3..=6 {
            s.activated("m", &v.to_string(), "onnx");
        }
        assert!(s.versions().iter().any(|v| v.version == "2" && v.shadow));
        s.activated("m", "2", "onnx");
        let v2 = s.versions().into_iter().find(|v| v.version == "2").unwrap();
        assert!(v2.active && !v2.shadow);
        s.shadow_ended("m");
    }

    #[test]
    fn registered_models_report_zeros() {
        let s = InferenceStats::default();
        s.register("idle");
        let m = &s.snapshot()[0];
        assert_eq!((m.name.as_str(), m.requests, m.p99_ms), ("idle", 0, 0.0));
    }
}
