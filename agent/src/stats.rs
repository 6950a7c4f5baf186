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
    failures: u64,
    timed: u64,
}

/// How a request ended, as the health of a model version sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Answered.
    Ok,
    /// Refused because the client got the request wrong (a 4xx the previous version would
    /// have refused too): not the model's fault.
    ClientError,
    /// The model failed: an inference error, or a request the previous version accepted and
    /// this one refuses (a 5xx, or a changed signature breaking its callers).
    ModelError,
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

    /// A request ends after `elapsed`, with `outcome`. A timed-out request's latency is its
    /// deadline: a hung version's p95 shows it.
    pub fn end(&self, model: &str, elapsed: Duration, outcome: Outcome) {
        let label = ModelLabel { model: model.to_string() };
        self.in_flight.get_or_create(&label).dec();
        self.requests.get_or_create(&label).inc();
        let timed = matches!(outcome, Outcome::Ok | Outcome::Timeout);
        if outcome == Outcome::Ok {
            self.duration.get_or_create(&label).observe(elapsed.as_secs_f64());
        } else {
            self.errors.get_or_create(&label).inc();
        }
        let mut recent = self.recent.lock().expect("stats lock");
        let w = recent.entry(model.to_string()).or_default();
        w.requests += 1;
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

    #[test]
    fn registered_models_report_zeros() {
        let s = InferenceStats::default();
        s.register("idle");
        let m = &s.snapshot()[0];
        assert_eq!((m.name.as_str(), m.requests, m.p99_ms), ("idle", 0, 0.0));
    }
}
