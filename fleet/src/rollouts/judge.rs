//! Judging a wave: pure, no database, no clock (the caller says how long the wave has run).
//!
//! A wave's devices run the new version on trial. Each device's telemetry (version 4)
//! carries cumulative figures per version; the new version's are compared with those of
//! the version it replaced **on the same devices**, pooled over the wave:
//!
//! ```text
//! no device in the wave ───────────────────────────────────────────────> Pass
//! a device failed, was rejected, cancelled or superseded ──────────────> Fail
//! some device not running the version yet ──── before the timeout ─────> Wait
//!                                          └── past it ────────────────> Fail
//! fewer requests than min_requests ─────────── before the timeout ─────> Wait
//!                                          └── past it ────────────────> Fail
//! error rate over max_error_rate, or p95 ratio over max_p95_ratio ─────> Fail
//! otherwise ───────────────────────────────────────────────────────────> Pass
//! ```
//!
//! Too little traffic fails the wave rather than passing it: a rollout exists to see the
//! version work before it goes further, and a wave that saw nothing has not.
//!
//! In shadow (a shadow deploy), a device runs the version once its deploy succeeded and it
//! reports the version as its shadow; the new version's requests are the copies it ran,
//! and one more gate applies: the share of compared outputs that agreed with the active
//! version's (`min_agreement`).

use edge_proto::rollouts::{Figures, Gates};
use edge_proto::telemetry::{VersionStats, LATENCY_BUCKETS};

/// A device of the wave, as the database knows it.
#[derive(Debug, Clone, Copy)]
pub struct Member<'a> {
    /// Device id.
    pub device: &'a str,
    /// Its deployment row: state name and detail; `None` before it has one.
    pub progress: Option<(&'a str, Option<&'a str>)>,
    /// The version it reports active for the model.
    pub active: Option<&'a str>,
    /// Its per-version figures for the model, from its last telemetry.
    pub versions: &'a [VersionStats],
}

/// What the wave shows and what to do.
#[derive(Debug, Clone, PartialEq)]
pub struct Judgement {
    /// Pooled over the wave.
    pub figures: Figures,
    /// Per device.
    pub devices: Vec<(String, Figures)>,
    /// The verdict.
    pub verdict: Verdict,
}

/// The verdict on a wave.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Not yet: why.
    Wait(String),
    /// The wave passed: its figures in words.
    Pass(String),
    /// The wave failed: why, with the figures.
    Fail(String),
}

/// Device states after which the device will not run the version from this deployment.
const FAILED: [&str; 5] = ["failed", "rejected", "cancelled", "superseded", "expired"];

/// What the wave runs: the version on trial, or in shadow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Activated on trial.
    Trial,
    /// Beside the active version, on copies of its requests.
    Shadow,
}

/// Judges a wave running `version` after `waited_ms` of its `timeout_ms`.
pub fn judge(
    gates: &Gates,
    version: &str,
    mode: Mode,
    members: &[Member<'_>],
    waited_ms: i64,
    timeout_ms: i64,
) -> Judgement {
    let devices: Vec<(String, Figures)> = members.iter().map(|m| (m.device.to_string(), figures(version, m))).collect();
    let pooled = pool(version, members);
    let verdict = verdict(gates, version, mode, members, &pooled, waited_ms >= timeout_ms);
    Judgement { figures: pooled.figures, devices, verdict }
}

/// Whether `m` runs `version` as `mode` says.
fn running(m: &Member<'_>, version: &str, mode: Mode) -> bool {
    match mode {
        Mode::Trial => m.active == Some(version),
        Mode::Shadow => {
            m.progress.is_some_and(|(state, _)| state == "succeeded")
                && m.versions.iter().any(|v| v.version == version && v.shadow)
        }
    }
}

fn verdict(
    gates: &Gates,
    version: &str,
    mode: Mode,
    members: &[Member<'_>],
    pooled: &Pooled,
    timed_out: bool,
) -> Verdict {
    if members.is_empty() {
        // A wave no larger than the one before (e.g. 50% then 50%).
        return Verdict::Pass("the wave adds no device".into());
    }
    for m in members {
        if let Some((state, detail)) = m.progress {
            if FAILED.contains(&state) {
                return Verdict::Fail(format!(
                    "{}: {state}{}",
                    m.device,
                    detail.map(|d| format!(": {d}")).unwrap_or_default()
                ));
            }
        }
    }
    let waiting: Vec<&str> = members.iter().filter(|m| !running(m, version, mode)).map(|m| m.device).collect();
    if !waiting.is_empty() {
        let how = if mode == Mode::Shadow { " in shadow" } else { "" };
        let what = format!(
            "{} of {} devices not running {version}{how} yet ({})",
            waiting.len(),
            members.len(),
            list(&waiting)
        );
        return if timed_out { Verdict::Fail(format!("timed out: {what}")) } else { Verdict::Wait(what) };
    }
    let f = &pooled.figures;
    if f.requests < gates.min_requests {
        let what = format!("{} of the {} requests needed to judge", f.requests, gates.min_requests);
        return if timed_out {
            Verdict::Fail(format!("timed out with too little traffic: {what}"))
        } else {
            Verdict::Wait(what)
        };
    }
    let rate = f.error_rate();
    if let (Mode::Shadow, Some(min)) = (mode, gates.min_agreement) {
        let agreement = f.agreement().unwrap_or(0.0);
        if agreement < min {
            return Verdict::Fail(format!(
                "outputs agreed with the active version's on {:.1} % of {} compared requests, under the gate's {:.1} %",
                agreement * 100.0,
                f.compared,
                min * 100.0
            ));
        }
    }
    if let Some(max) = gates.max_error_rate {
        if rate > max {
            return Verdict::Fail(format!(
                "error rate {:.2} % ({} of {} requests) over the gate's {:.2} %",
                rate * 100.0,
                f.failures,
                f.requests,
                max * 100.0
            ));
        }
    }
    if let Some(max) = gates.max_p95_ratio {
        if let Some(ratio) = f.p95_ratio() {
            if ratio > max {
                return Verdict::Fail(format!(
                    "p95 {} against {} before: {ratio:.2} x, over the gate's {max} x",
                    ms(f.p95_ms),
                    ms(f.old_p95_ms)
                ));
            }
        }
    }
    let ratio = match f.p95_ratio() {
        Some(r) => format!("{r:.2} x"),
        None => "not compared (no figures of the version before)".into(),
    };
    let agreement = match f.agreement() {
        Some(a) => format!(", outputs agreed on {:.1} %", a * 100.0),
        None => String::new(),
    };
    Verdict::Pass(format!(
        "{} requests, error rate {:.2} %, p95 {} against {} before ({ratio}){agreement}",
        f.requests,
        rate * 100.0,
        ms(f.p95_ms),
        ms(f.old_p95_ms)
    ))
}

fn ms(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.1} ms"),
        Some(_) => format!("over {} ms", LATENCY_BUCKETS[LATENCY_BUCKETS.len() - 1] * 1e3),
        None => "unknown".into(),
    }
}

fn list(devices: &[&str]) -> String {
    let mut s = devices.iter().take(5).copied().collect::<Vec<_>>().join(", ");
    if devices.len() > 5 {
        s.push_str(&format!(", and {} more", devices.len() - 5));
    }
    s
}

/// The version a device ran before `version`: of its other versions, the one with the most
/// timed requests (a device keeps the figures of its last few versions).
fn old<'a>(version: &str, m: &Member<'a>) -> Option<&'a VersionStats> {
    m.versions.iter().filter(|v| v.version != version).max_by_key(|v| v.timed)
}

fn new<'a>(version: &str, m: &Member<'a>) -> Option<&'a VersionStats> {
    m.versions.iter().find(|v| v.version == version)
}

fn p95_ms(v: &VersionStats) -> Option<f64> {
    v.latency_quantile(0.95).map(|s| s * 1e3)
}

fn figures(version: &str, m: &Member<'_>) -> Figures {
    let (new, old) = (new(version, m), old(version, m));
    Figures {
        requests: new.map_or(0, |v| v.requests),
        failures: new.map_or(0, |v| v.failures),
        p95_ms: new.and_then(p95_ms),
        old_requests: old.map_or(0, |v| v.requests),
        old_p95_ms: old.and_then(p95_ms),
        compared: new.map_or(0, |v| v.compared),
        agreed: new.map_or(0, |v| v.agreed),
    }
}

struct Pooled {
    figures: Figures,
}

fn pool(version: &str, members: &[Member<'_>]) -> Pooled {
    let (mut new_sum, mut old_sum) = (VersionStats::default(), VersionStats::default());
    for m in members {
        if let Some(v) = new(version, m) {
            new_sum.merge(v);
        }
        if let Some(v) = old(version, m) {
            old_sum.merge(v);
        }
    }
    let f = Figures {
        requests: new_sum.requests,
        failures: new_sum.failures,
        p95_ms: p95_ms(&new_sum),
        old_requests: old_sum.requests,
        old_p95_ms: p95_ms(&old_sum),
        compared: new_sum.compared,
        agreed: new_sum.agreed,
    };
    Pooled { figures: f }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Figures of `requests` requests all at `secs`, `failures` of them failed.
    fn stats(version: &str, requests: u64, failures: u64, secs: f64) -> VersionStats {
        let first = LATENCY_BUCKETS.partition_point(|&le| le < secs);
        VersionStats {
            name: "m".into(),
            version: version.into(),
            active: false,
            requests,
            failures,
            buckets: (0..LATENCY_BUCKETS.len()).map(|i| if i >= first { requests } else { 0 }).collect(),
            timed: requests,
            sum_secs: secs * requests as f64,
            shadow: false,
            compared: 0,
            agreed: 0,
            max_abs_diff: 0.0,
        }
    }

    fn member<'a>(device: &'a str, state: &'a str, active: &'a str, versions: &'a [VersionStats]) -> Member<'a> {
        Member { device, progress: Some((state, None)), active: Some(active), versions }
    }

    fn gates() -> Gates {
        Gates { max_p95_ratio: Some(1.5), max_error_rate: Some(0.05), min_requests: 100, min_agreement: Some(0.98) }
    }

    /// `stats` as a shadow that compared `compared` requests, `agreed` of them agreeing.
    fn shadowed(mut v: VersionStats, compared: u64, agreed: u64) -> VersionStats {
        v.shadow = true;
        v.compared = compared;
        v.agreed = agreed;
        v
    }

    #[test]
    fn in_shadow_outputs_that_disagree_fail_the_wave_and_agreeing_ones_pass() {
        let differ = [stats("1", 500, 0, 0.010), shadowed(stats("2", 200, 0, 0.010), 200, 150)];
        let j = judge(&gates(), "2", Mode::Shadow, &[member("a", "succeeded", "1", &differ)], 1_000, 60_000);
        match &j.verdict {
            Verdict::Fail(r) => assert!(r.contains("agreed with the active version's on 75.0 % of 200"), "{r}"),
            v => panic!("{v:?}"),
        }
        let agree = [stats("1", 500, 0, 0.010), shadowed(stats("2", 200, 0, 0.010), 200, 199)];
        let j = judge(&gates(), "2", Mode::Shadow, &[member("a", "succeeded", "1", &agree)], 1_000, 60_000);
        assert!(matches!(&j.verdict, Verdict::Pass(r) if r.contains("agreed on 99.5 %")), "{:?}", j.verdict);
        // Not yet a shadow (still installing, or figures without the shadow flag): wait.
        let j = judge(&gates(), "2", Mode::Shadow, &[member("a", "installing", "1", &agree)], 1_000, 60_000);
        assert!(matches!(&j.verdict, Verdict::Wait(w) if w.contains("not running 2 in shadow yet")), "{:?}", j.verdict);
    }

    #[test]
    fn a_wave_as_fast_and_as_reliable_as_before_passes() {
        let a = [stats("1", 500, 0, 0.010), stats("2", 80, 0, 0.011)];
        let b = [stats("1", 300, 0, 0.010), stats("2", 60, 1, 0.009)];
        let members = [member("a", "installing", "2", &a), member("b", "installing", "2", &b)];
        let j = judge(&gates(), "2", Mode::Trial, &members, 1_000, 60_000);
        assert!(matches!(&j.verdict, Verdict::Pass(r) if r.contains("140 requests")), "{:?}", j.verdict);
        assert_eq!((j.figures.requests, j.figures.failures, j.figures.old_requests), (140, 1, 800));
        // Every request in (6.4, 12.8] ms: p95 interpolated at 6.4 + 0.95 * 6.4.
        for p95 in [j.figures.p95_ms, j.figures.old_p95_ms] {
            assert!((p95.unwrap() - 12.48).abs() < 1e-9, "{:?}", j.figures);
        }
        assert_eq!(j.devices.len(), 2);
    }

    #[test]
    fn a_version_ten_times_slower_fails_on_the_p95_ratio() {
        let a = [stats("1", 500, 0, 0.010), stats("2", 200, 0, 0.100)];
        let j = judge(&gates(), "2", Mode::Trial, &[member("a", "installing", "2", &a)], 1_000, 60_000);
        match &j.verdict {
            Verdict::Fail(r) => assert!(r.contains("p95 99.8 ms against 12.5 ms before: 8.00 x"), "{r}"),
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn failures_over_the_gate_fail_the_wave() {
        let a = [stats("1", 500, 0, 0.010), stats("2", 200, 20, 0.010)];
        let j = judge(&gates(), "2", Mode::Trial, &[member("a", "installing", "2", &a)], 1_000, 60_000);
        assert!(
            matches!(&j.verdict, Verdict::Fail(r) if r.contains("error rate 10.00 % (20 of 200")),
            "{:?}",
            j.verdict
        );
    }

    #[test]
    fn a_device_that_failed_or_was_rejected_fails_the_wave_at_once() {
        let a = [stats("1", 500, 0, 0.010)];
        let m = Member {
            device: "a",
            progress: Some(("failed", Some("validation failed: outputs differ"))),
            active: Some("1"),
            versions: &a,
        };
        let j = judge(&gates(), "2", Mode::Trial, &[m], 0, 60_000);
        assert_eq!(j.verdict, Verdict::Fail("a: failed: validation failed: outputs differ".into()));
    }

    #[test]
    fn too_little_traffic_or_devices_not_there_yet_wait_then_fail_at_the_timeout() {
        let a = [stats("1", 500, 0, 0.010), stats("2", 20, 0, 0.010)];
        let ok = [member("a", "installing", "2", &a)];
        assert!(
            matches!(judge(&gates(), "2", Mode::Trial, &ok, 1_000, 60_000).verdict, Verdict::Wait(w) if w.contains("20 of the 100"))
        );
        assert!(
            matches!(judge(&gates(), "2", Mode::Trial, &ok, 60_000, 60_000).verdict, Verdict::Fail(w) if w.contains("too little traffic"))
        );
        let b = [stats("1", 500, 0, 0.010)];
        let late = [member("a", "installing", "2", &a), member("b", "transferring", "1", &b)];
        assert!(
            matches!(judge(&gates(), "2", Mode::Trial, &late, 1_000, 60_000).verdict, Verdict::Wait(w) if w.contains("1 of 2 devices not running 2 yet (b)"))
        );
        assert!(
            matches!(judge(&gates(), "2", Mode::Trial, &late, 61_000, 60_000).verdict, Verdict::Fail(w) if w.starts_with("timed out"))
        );
    }

    #[test]
    fn a_wave_that_adds_no_device_passes_saying_so() {
        let j = judge(&gates(), "2", Mode::Trial, &[], 0, 60_000);
        assert_eq!(j.verdict, Verdict::Pass("the wave adds no device".into()));
    }

    #[test]
    fn without_figures_of_the_old_version_the_ratio_is_not_judged_and_said_so() {
        let a = [stats("2", 200, 0, 0.010)];
        let j = judge(&gates(), "2", Mode::Trial, &[member("a", "installing", "2", &a)], 1_000, 60_000);
        assert!(matches!(&j.verdict, Verdict::Pass(r) if r.contains("not compared")), "{:?}", j.verdict);
    }
}
