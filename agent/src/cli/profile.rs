//! Timing and profiling for `edge-agent infer`: `--repeat N` times N runs of a warm
//! session, `--profile N` prints where the plan spends its time, node by node and by
//! operator. `EDGE_PROFILE_ALL` lists every node instead of the slowest 25;
//! `EDGE_PROFILE_INFO` adds each node's details.

use std::time::Instant;

use anyhow::{bail, Result};
use edge_proto::codec::Versioned;
use edge_proto::profile::{Profile, TensorProfile, DEFAULT_BINS};
use tract_core::internal::Tensor;

use crate::engine::Session;

/// Times `n` runs of `session` on `inputs` (the caller has run it once: the warm-up) and
/// prints `runs= median_ms= min_ms= p95_ms=`, then what the serving workers' tensor
/// statistics ([`crate::tensor_stats`]) cost to describe one run: `stats_median_ms=` and
/// `stats_share_pct=` (of the median run; the workers describe a sample of the requests so
/// that this stays within [`crate::tensor_stats::BUDGET`] overall), and the same with a
/// reference profile of 20 bins per tensor, i.e. with drift counted too
/// (`drift_stats_median_ms=`, `drift_stats_share_pct=`).
pub fn repeat(session: &mut Session, inputs: &[Tensor], n: usize) -> Result<()> {
    let mut times = Vec::with_capacity(n);
    let mut stats_times = Vec::with_capacity(n);
    let mut drift_times = Vec::with_capacity(n);
    let stats = crate::tensor_stats::TensorStats::default();
    let drift = crate::tensor_stats::TensorStats::default();
    let mut profiled = false;
    for _ in 0..n {
        let feed = inputs.to_vec();
        let start = Instant::now();
        let outputs = session.run(feed)?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
        stats_times.push(stats.describe("m", "1", (&[], &[]), inputs, &outputs).as_secs_f64() * 1e3);
        if !profiled {
            // The run's own tensors as the reference: every tensor gets its bins.
            let profile = self_profile(inputs, &outputs);
            drift.set_profile("m", "1", Some(std::sync::Arc::new(profile)), crate::drift::DEFAULT_HALF_LIFE);
            profiled = true;
        }
        drift_times.push(drift.describe("m", "1", (&[], &[]), inputs, &outputs).as_secs_f64() * 1e3);
    }
    if times.is_empty() {
        bail!("--repeat needs at least 1");
    }
    times.sort_by(|a, b| a.total_cmp(b));
    stats_times.sort_by(|a, b| a.total_cmp(b));
    let median = times[times.len() / 2];
    let p95 = times[((times.len() as f64 * 0.95).ceil() as usize).clamp(1, times.len()) - 1];
    drift_times.sort_by(|a, b| a.total_cmp(b));
    let stats_median = stats_times[stats_times.len() / 2];
    let drift_median = drift_times[drift_times.len() / 2];
    println!(
        "runs={n} median_ms={median:.4} min_ms={:.4} p95_ms={p95:.4} stats_median_ms={stats_median:.4} \
         stats_share_pct={:.2} drift_stats_median_ms={drift_median:.4} drift_stats_share_pct={:.2}",
        times[0],
        100.0 * stats_median / median.max(1e-9),
        100.0 * drift_median / median.max(1e-9)
    );
    Ok(())
}

/// A profile of `inputs` and `outputs` themselves (labelled by position, as
/// [`crate::tensor_stats::TensorStats::describe`] labels them without specs).
fn self_profile(inputs: &[Tensor], outputs: &[Tensor]) -> Profile {
    let sides = [(false, inputs), (true, outputs)];
    let tensors = sides
        .iter()
        .flat_map(|(output, ts)| {
            ts.iter().enumerate().map(move |(i, t)| (crate::drift::label(*output, &i.to_string()), t))
        })
        .filter_map(|(label, t)| {
            let f = crate::tensor_stats::as_f32(t)?;
            let mut values = f.try_as_plain_ram().ok()?.as_slice::<f32>().ok()?.to_vec();
            TensorProfile::from_values(&label, &mut values, DEFAULT_BINS)
        })
        .collect();
    Profile { version: Profile::VERSION, model_sha256: "0".repeat(64), samples: 1, tensors }
}

/// Profiles `runs` runs and prints the slowest plan nodes, then the time per operator.
pub fn profile(session: &mut Session, inputs: &[Tensor], runs: usize) -> Result<()> {
    let times = session.profile(inputs.to_vec(), runs.max(1))?;
    let total: f64 = times.iter().map(|t| t.total.as_secs_f64()).sum();
    println!("profile over {runs} runs, {:.4} ms per run:", total * 1e3 / runs.max(1) as f64);
    let dw = crate::engine::kernels::depthwise_kernel();
    println!("channels-last depthwise kernel: {}", dw.unwrap_or("tract's generic loop"));
    let shown = if std::env::var_os("EDGE_PROFILE_ALL").is_some() { times.len() } else { 25 };
    for t in times.iter().take(shown) {
        let ms = t.total.as_secs_f64() * 1e3 / runs.max(1) as f64;
        println!("  {ms:9.4} ms {:5.1}%  {} ({})", 100.0 * t.total.as_secs_f64() / total.max(1e-12), t.op, t.node);
        if std::env::var_os("EDGE_PROFILE_INFO").is_some() {
            for line in &t.info {
                println!("                    {line}");
            }
        }
    }
    let mut by_op: Vec<(String, f64, usize)> = vec![];
    for t in &times {
        match by_op.iter_mut().find(|(op, _, _)| *op == t.op) {
            Some(entry) => {
                entry.1 += t.total.as_secs_f64();
                entry.2 += 1;
            }
            None => by_op.push((t.op.clone(), t.total.as_secs_f64(), 1)),
        }
    }
    by_op.sort_by(|a, b| b.1.total_cmp(&a.1));
    println!("by operator ({} plan nodes):", times.len());
    for (op, secs, nodes) in by_op {
        let ms = secs * 1e3 / runs.max(1) as f64;
        println!("  {ms:9.4} ms {:5.1}%  {op} x{nodes}", 100.0 * secs / total.max(1e-12));
    }
    Ok(())
}
