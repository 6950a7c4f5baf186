//! Judging a newly activated version against the one it replaced.
//!
//! When a deploy activates a version, the previous version's record (its error rate and
//! its p95 latency over the recent window) is the baseline. For `health_window_secs`, the
//! new version's requests are compared with it; a clear regression rolls back at once,
//! without waiting for the window to end. Too little traffic to judge is not a regression:
//! the deploy succeeds and says so.

use serde::{Deserialize, Serialize};

use crate::config::OtaConfig;
use crate::stats::{percentile, InferenceStats};

/// A version's record: requests, failures (the model's fault: errors, timeouts, a full
/// queue; not the callers' bad requests) and recent latencies (ms). Persisted with a trial,
/// so a window a restart interrupts is still judged against the version before it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Requests ended.
    pub requests: u64,
    /// Of which the model's failures.
    pub errors: u64,
    /// Recent latencies of answered and timed-out requests, ms.
    pub latencies: Vec<f32>,
}

impl Record {
    fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }

    fn p95(&self) -> f32 {
        let mut sorted = self.latencies.clone();
        sorted.sort_by(f32::total_cmp);
        percentile(&sorted, 0.95)
    }
}

/// What the watch concluded.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// No regression, with a one-line summary.
    Healthy(String),
    /// Roll back, with the reason.
    Regressed(String),
    /// Not enough traffic yet.
    Undecided,
}

/// Counters of a model at the moment a version was activated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mark {
    requests: u64,
    failures: u64,
    /// Requests that left a latency (answered or timed out).
    timed: u64,
}

/// Takes the baseline (everything recorded for `model` so far) and the mark the new
/// version's record starts from.
pub fn baseline(stats: &InferenceStats, model: &str) -> (Record, Mark) {
    let c = stats.counts(model);
    let mark = Mark { requests: c.requests, failures: c.failures, timed: c.timed };
    (Record { requests: c.requests, errors: c.failures, latencies: c.latencies }, mark)
}

/// The new version's record since `mark`.
pub fn since(stats: &InferenceStats, model: &str, mark: &Mark) -> Record {
    let c = stats.counts(model);
    let new_timed = c.timed.saturating_sub(mark.timed) as usize;
    let skip = c.latencies.len().saturating_sub(new_timed);
    Record {
        requests: c.requests.saturating_sub(mark.requests),
        errors: c.failures.saturating_sub(mark.failures),
        latencies: c.latencies[skip..].to_vec(),
    }
}

/// Compares the new version's record with the baseline.
pub fn judge(base: &Record, new: &Record, cfg: &OtaConfig) -> Verdict {
    if new.requests < cfg.health_min_requests {
        return Verdict::Undecided;
    }
    let (before, after) = (base.error_rate(), new.error_rate());
    if after > before + cfg.health_max_error_increase {
        return Verdict::Regressed(format!(
            "error rate {:.0}% over {} requests, against {:.0}% before",
            after * 100.0,
            new.requests,
            before * 100.0
        ));
    }
    let enough = cfg.health_min_requests as usize;
    if base.latencies.len() >= enough && new.latencies.len() >= enough {
        let (p_before, p_after) = (base.p95(), new.p95());
        if p_before > 0.0 && f64::from(p_after) > cfg.health_max_latency_ratio * f64::from(p_before) {
            return Verdict::Regressed(format!(
                "p95 latency {p_after:.2} ms, against {p_before:.2} ms before (limit {}x)",
                cfg.health_max_latency_ratio
            ));
        }
    }
    Verdict::Healthy(format!("{} requests, error rate {:.0}%", new.requests, after * 100.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Outcome;
    use std::time::Duration;

    fn cfg() -> OtaConfig {
        OtaConfig { health_min_requests: 10, ..OtaConfig::default() }
    }

    fn record(requests: u64, errors: u64, ms: f32) -> Record {
        Record { requests, errors, latencies: vec![ms; (requests - errors) as usize] }
    }

    #[test]
    fn errors_beyond_the_allowed_increase_regress() {
        let v = judge(&record(100, 0, 1.0), &record(20, 10, 1.0), &cfg());
        assert!(matches!(&v, Verdict::Regressed(r) if r.contains("error rate 50%")), "{v:?}");
        assert!(matches!(judge(&record(100, 0, 1.0), &record(20, 1, 1.0), &cfg()), Verdict::Healthy(_)));
    }

    #[test]
    fn slower_beyond_the_ratio_regresses() {
        let v = judge(&record(100, 0, 1.0), &record(20, 0, 3.0), &cfg());
        assert!(matches!(&v, Verdict::Regressed(r) if r.contains("p95")), "{v:?}");
        assert!(matches!(judge(&record(100, 0, 1.0), &record(20, 0, 1.5), &cfg()), Verdict::Healthy(_)));
    }

    #[test]
    fn too_little_traffic_is_undecided() {
        assert_eq!(judge(&record(100, 0, 1.0), &record(5, 5, 1.0), &cfg()), Verdict::Undecided);
    }

    #[test]
    fn the_new_record_counts_only_what_came_after_the_mark() {
        let stats = InferenceStats::default();
        for _ in 0..5 {
            stats.end("m", Duration::from_millis(1), Outcome::Ok);
        }
        let (base, mark) = baseline(&stats, "m");
        assert_eq!((base.requests, base.latencies.len()), (5, 5));
        stats.end("m", Duration::from_millis(9), Outcome::Ok);
        stats.end("m", Duration::from_millis(9), Outcome::ModelError);
        stats.end("m", Duration::from_millis(8), Outcome::ClientError);
        stats.end("m", Duration::from_millis(30), Outcome::Timeout);
        let new = since(&stats, "m", &mark);
        assert_eq!((new.requests, new.errors), (4, 2), "the client's error is not the model's");
        assert_eq!(new.latencies, vec![9.0, 30.0]);
    }
}
