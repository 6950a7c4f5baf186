//! Inference statistics per model: counters and recent latencies.
//!
//! The serving paths record every request here; telemetry reads percentiles from it and
//! `/metrics` exports it as a Prometheus histogram.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use edge_proto::telemetry::ModelStats;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

/// How many recent latencies each model keeps for percentiles.
const WINDOW: usize = 1024;

/// Label set of the per-model metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct ModelLabel {
    /// Model name.
    pub model: String,
}

fn latency_histogram() -> Histogram {
    // 50 µs to ~3 s, doubling: wake words at the low end, vision models at the top.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(50e-6, 2.0, 17))
}

/// Per-model inference statistics.
#[derive(Debug)]
pub struct InferenceStats {
    recent: Mutex<BTreeMap<String, Window>>,
    /// `edge_agent_inference_duration_seconds`
    pub duration: Family<ModelLabel, Histogram, fn() -> Histogram>,
    /// `edge_agent_inference_requests_total`
    pub requests: Family<ModelLabel, Counter>,
    /// `edge_agent_inference_errors_total`
    pub errors: Family<ModelLabel, Counter>,
    /// `edge_agent_inference_in_flight`
    pub in_flight: Family<ModelLabel, Gauge>,
}

#[derive(Debug, Default)]
struct Window {
    latencies: VecDeque<f32>,
    requests: u64,
    errors: u64,
}

impl Default for InferenceStats {
    fn default() -> Self {
        InferenceStats {
            recent: Mutex::new(BTreeMap::new()),
            duration: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            requests: Family::default(),
            errors: Family::default(),
            in_flight: Family::default(),
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
    /// Makes a model known, so it reports zeros before its first request.
    pub fn register(&self, model: &str) {
        self.recent.lock().expect("stats lock").entry(model.to_string()).or_default();
        let label = ModelLabel { model: model.to_string() };
        let _ = self.requests.get_or_create(&label);
        let _ = self.errors.get_or_create(&label);
        let _ = self.in_flight.get_or_create(&label);
        let _ = self.duration.get_or_create(&label);
    }

    /// A request starts.
    pub fn begin(&self, model: &str) {
        self.in_flight.get_or_create(&ModelLabel { model: model.to_string() }).inc();
    }

    /// A request ends, successfully or not, after `elapsed`.
    pub fn end(&self, model: &str, elapsed: Duration, ok: bool) {
        let label = ModelLabel { model: model.to_string() };
        self.in_flight.get_or_create(&label).dec();
        self.requests.get_or_create(&label).inc();
        if ok {
            self.duration.get_or_create(&label).observe(elapsed.as_secs_f64());
        } else {
            self.errors.get_or_create(&label).inc();
        }
        let mut recent = self.recent.lock().expect("stats lock");
        let w = recent.entry(model.to_string()).or_default();
        w.requests += 1;
        if ok {
            if w.latencies.len() == WINDOW {
                w.latencies.pop_front();
            }
            w.latencies.push_back(elapsed.as_secs_f32() * 1e3);
        } else {
            w.errors += 1;
        }
    }

    /// Requests, errors and the recent successful latencies (ms, oldest first) of `model`:
    /// what the OTA health watch compares before and after an activation.
    pub fn raw(&self, model: &str) -> (u64, u64, Vec<f32>) {
        let recent = self.recent.lock().expect("stats lock");
        match recent.get(model) {
            Some(w) => (w.requests, w.errors, w.latencies.iter().copied().collect()),
            None => (0, 0, vec![]),
        }
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
    fn percentiles_counters_and_in_flight() {
        let s = InferenceStats::default();
        s.register("wake");
        for ms in 1..=100 {
            s.begin("wake");
            s.end("wake", Duration::from_millis(ms), true);
        }
        s.begin("wake");
        s.end("wake", Duration::from_millis(5), false);
        s.begin("wake");
        let m = &s.snapshot()[0];
        assert_eq!((m.requests, m.errors, m.in_flight), (101, 1, 1));
        assert_eq!((m.p50_ms.round(), m.p95_ms.round(), m.p99_ms.round()), (50.0, 95.0, 99.0));
    }

    #[test]
    fn registered_models_report_zeros() {
        let s = InferenceStats::default();
        s.register("idle");
        let m = &s.snapshot()[0];
        assert_eq!((m.name.as_str(), m.requests, m.p99_ms), ("idle", 0, 0.0));
    }
}
