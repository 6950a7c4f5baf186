//! A shadow: a version that runs beside the active one on a sample of its live requests,
//! to see how it would do before it answers anyone (`shadow` command, docs/rollouts.md).
//!
//! - A sampled request is answered by the active version as usual; afterwards a copy of its
//!   inputs and of the active version's outputs goes to the shadow's one worker thread,
//!   which runs the shadow version, compares the outputs ([`compare`]) and records the pair
//!   ([`InferenceStats::shadow_ran`]: the shadow's latency, failures and agreement).
//! - The shadow never delays an answer: the copy is handed over after the answer exists,
//!   with a queue of one; when the worker is still busy, the copy is dropped (counted).
//!   The worker runs at a lower CPU priority (nice 10), so on a busy board the active
//!   version's workers go first.
//! - Stateful requests (sessions) are not copied: a shadow has no session of its own.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tract_core::internal::Tensor;

use super::ServeError;
use crate::engine::Model;
use crate::stats::{Comparison, InferenceStats};

/// Label set of the shadow counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct ShadowLabel {
    /// Model name.
    pub model: String,
    /// The shadow's version.
    pub version: String,
    /// `agreed`, `differed`, `failed` or `dropped`.
    pub result: &'static str,
}

/// Label set of the shadow's latency.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct ShadowVersion {
    /// Model name.
    pub model: String,
    /// The shadow's version.
    pub version: String,
}

fn latency_histogram() -> Histogram {
    Histogram::new(edge_proto::telemetry::LATENCY_BUCKETS.iter().copied())
}

/// The shadows' `/metrics` families.
#[derive(Debug)]
pub struct ShadowMetrics {
    /// `edge_agent_shadow_requests_total{model,version,result}`.
    pub requests: Family<ShadowLabel, Counter>,
    /// `edge_agent_shadow_duration_seconds{model,version}`: the shadow's run time.
    pub duration: Family<ShadowVersion, Histogram, fn() -> Histogram>,
}

impl Default for ShadowMetrics {
    fn default() -> Self {
        ShadowMetrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
        }
    }
}

impl ShadowMetrics {
    /// Registers them in `r`.
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "edge_agent_shadow_requests",
            "Requests copied to a shadow version, by result (agreed, differed, failed, dropped while busy)",
            self.requests.clone(),
        );
        r.register(
            "edge_agent_shadow_duration_seconds",
            "Run time of a shadow version on a copied request",
            self.duration.clone(),
        );
    }

    fn count(&self, model: &str, version: &str, result: &'static str) {
        self.requests.get_or_create(&ShadowLabel { model: model.into(), version: version.into(), result }).inc();
    }
}

struct Job {
    inputs: Vec<Tensor>,
    reference: Vec<Tensor>,
}

/// A running shadow of one model.
pub struct Shadow {
    /// Model name.
    pub name: String,
    /// The shadow's version.
    pub version: String,
    /// Share of requests copied, 1-100.
    pub sample_pct: u8,
    seen: AtomicU64,
    tx: SyncSender<Job>,
    stats: Arc<InferenceStats>,
}

impl std::fmt::Debug for Shadow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shadow").field("name", &self.name).field("version", &self.version).finish()
    }
}

impl Shadow {
    /// Starts `version` of `name` as a shadow on `sample_pct` % of the requests; the worker
    /// stops when the last handle is dropped.
    pub fn start(
        name: &str,
        version: &str,
        model: Arc<Model>,
        sample_pct: u8,
        stats: Arc<InferenceStats>,
    ) -> Result<Arc<Shadow>, ServeError> {
        let (tx, rx) = sync_channel::<Job>(1);
        let mut session = model.session()?;
        let (n, v, st) = (name.to_string(), version.to_string(), stats.clone());
        std::thread::Builder::new()
            .name(format!("shadow-{name}"))
            .spawn(move || {
                lower_priority();
                while let Ok(job) = rx.recv() {
                    session.reset();
                    let started = Instant::now();
                    let result = session.run(job.inputs);
                    let took = started.elapsed();
                    let compared = result.ok().map(|outputs| compare(&job.reference, &outputs));
                    record(&st, &n, &v, took, compared);
                }
            })
            .map_err(|e| ServeError::Failed(format!("cannot start the shadow's thread: {e}")))?;
        stats.shadow_started(name, version);
        Ok(Arc::new(Shadow {
            name: name.into(),
            version: version.into(),
            sample_pct: sample_pct.clamp(1, 100),
            seen: AtomicU64::new(0),
            tx,
            stats,
        }))
    }

    /// Whether the next request is copied: exactly `sample_pct` of every 100, spread out.
    pub fn sampled(&self) -> bool {
        let n = self.seen.fetch_add(1, Ordering::Relaxed);
        let pct = u64::from(self.sample_pct);
        n * pct / 100 != (n + 1) * pct / 100
    }

    /// Hands a copy over; dropped (and counted) when the shadow is still busy.
    pub fn offer(&self, inputs: Vec<Tensor>, reference: Vec<Tensor>) {
        match self.tx.try_send(Job { inputs, reference }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.stats.shadow.count(&self.name, &self.version, "dropped");
            }
        }
    }
}

fn record(stats: &InferenceStats, name: &str, version: &str, took: Duration, compared: Option<Comparison>) {
    let result = match compared {
        Some(c) if c.agreed => "agreed",
        Some(_) => "differed",
        None => "failed",
    };
    stats.shadow.count(name, version, result);
    if compared.is_some() {
        let label = ShadowVersion { model: name.into(), version: version.into() };
        stats.shadow.duration.get_or_create(&label).observe(took.as_secs_f64());
    }
    stats.shadow_ran(name, version, took, compared);
}

/// Lowers the calling thread's CPU priority (nice 10): the shadow yields to the active
/// version's workers. Best effort: a refusal leaves it at the agent's priority.
fn lower_priority() {
    // SAFETY: gettid and setpriority on the calling thread, constant arguments.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 10);
    }
}

/// How a shadow's outputs compare with the active version's: they agree when every output
/// has the active one's shape and, for an output of scores (one row in [0, 1]), the same
/// arg-max, for any other, every element within 0.1 % of the reference's largest magnitude
/// (and at least 0.001).
pub fn compare(reference: &[Tensor], shadow: &[Tensor]) -> Comparison {
    let differ = Comparison { agreed: false, max_abs_diff: f64::INFINITY };
    if reference.len() != shadow.len() {
        return differ;
    }
    let mut out = Comparison { agreed: true, max_abs_diff: 0.0 };
    for (r, s) in reference.iter().zip(shadow) {
        if r.shape() != s.shape() {
            return differ;
        }
        let (Ok(r32), Ok(s32)) = (r.cast_to::<f32>(), s.cast_to::<f32>()) else { return differ };
        let (Ok(rv), Ok(sv)) = (r32.try_as_plain_ram(), s32.try_as_plain_ram()) else { return differ };
        let (Ok(a), Ok(b)) = (rv.as_slice::<f32>(), sv.as_slice::<f32>()) else { return differ };
        let diff = a.iter().zip(b).map(|(x, y)| f64::from((x - y).abs())).fold(0.0, f64::max);
        out.max_abs_diff = out.max_abs_diff.max(diff);
        let agreed = match (crate::tensor_stats::top(a, r.shape()), crate::tensor_stats::top(b, s.shape())) {
            (Some((ra, _)), Some((sa, _))) => ra == sa,
            _ => {
                let scale: f64 = a.iter().map(|x| f64::from(x.abs())).fold(0.0, f64::max);
                diff <= (1e-3 * scale).max(1e-3)
            }
        };
        out.agreed &= agreed;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(values: &[f32], shape: &[usize]) -> Tensor {
        Tensor::from_shape(shape, values).unwrap()
    }

    #[test]
    fn outputs_agree_within_tolerance_or_on_the_arg_max_of_scores() {
        let same = compare(&[t(&[100.0, 200.0], &[1, 2])], &[t(&[100.05, 199.9], &[1, 2])]);
        assert!(same.agreed && (same.max_abs_diff - 0.1).abs() < 1e-3, "{same:?}");
        let moved = compare(&[t(&[100.0, 200.0], &[1, 2])], &[t(&[105.0, 200.0], &[1, 2])]);
        assert!(!moved.agreed && moved.max_abs_diff == 5.0, "{moved:?}");
        // Scores: a different arg-max disagrees, the same one agrees however far the scores.
        let scores = [t(&[0.1, 0.7, 0.2], &[1, 3])];
        assert!(compare(&scores, &[t(&[0.3, 0.4, 0.3], &[1, 3])]).agreed);
        assert!(!compare(&scores, &[t(&[0.5, 0.4, 0.1], &[1, 3])]).agreed);
        // Shapes or counts that differ never agree.
        let shaped = compare(&[t(&[1.0, 2.0], &[1, 2])], &[t(&[1.0, 2.0], &[2, 1])]);
        assert_eq!((shaped.agreed, shaped.max_abs_diff), (false, f64::INFINITY));
        assert!(!compare(&[t(&[1.0], &[1])], &[]).agreed);
    }

    #[test]
    fn exactly_the_share_asked_for_is_sampled() {
        let (tx, _rx) = sync_channel(1);
        let shadow = |pct| Shadow {
            name: "m".into(),
            version: "2".into(),
            sample_pct: pct,
            seen: AtomicU64::new(0),
            tx: tx.clone(),
            stats: Arc::default(),
        };
        for pct in [1u8, 10, 33, 100] {
            let s = shadow(pct);
            let taken = (0..1000).filter(|_| s.sampled()).count();
            assert_eq!(taken, pct as usize * 10, "{pct} %");
        }
    }
}
