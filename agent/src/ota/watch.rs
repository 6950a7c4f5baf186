//! The health window of a version on trial, as a pure state machine.
//!
//! A deploy activates its version on trial; for `health_window_secs` its record is
//! compared with the baseline of the version it replaced ([`super::health::judge`]). The
//! shell ([`super::deploy`]) reads the records from the inference statistics and acts on
//! what [`Watch::step`] returns; here there is no clock, no file and no model, only the
//! decision, so it is tested under simulated time:
//!
//! ```text
//! step(now, record) ─> regression ─────────────────────> RollBack(reason)   (at once)
//!                  └─> window not over ───────────────> Wait
//!                  └─> window over: healthy or too little traffic ─> MarkGood(summary)
//! ```
//!
//! Too little traffic is not a regression: a device nobody calls keeps the version it was
//! given, and the ack says how little was seen. Deaths of the agent during the window are
//! counted by the trial marker ([`crate::models::trial`]), not here.

use std::time::Duration;

use super::health::{judge, Record, Verdict};
use crate::config::OtaConfig;

/// A version inside its health window.
#[derive(Debug, Clone, PartialEq)]
pub struct Watch {
    /// The deploy that activated it.
    pub command_id: [u8; 16],
    /// Model name.
    pub name: String,
    /// The version on trial.
    pub version: String,
    /// The replaced version's record.
    pub base: Record,
    /// When the window ends, on the shell's monotonic clock.
    pub ends_at: Duration,
}

/// What the shell must do after a step.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Keep watching.
    Wait,
    /// The window ended without a regression: mark the version good, with a summary.
    MarkGood(String),
    /// A regression: restore the previous version, with the reason for the ack.
    RollBack(String),
}

impl Watch {
    /// A window of `length` starting at `now`.
    pub fn new(
        command_id: [u8; 16],
        name: &str,
        version: &str,
        base: Record,
        now: Duration,
        length: Duration,
    ) -> Watch {
        Watch { command_id, name: name.into(), version: version.into(), base, ends_at: now + length }
    }

    /// Judges `record` (the version's requests since its activation) at `now`.
    pub fn step(&self, now: Duration, record: &Record, policy: &OtaConfig) -> Step {
        let over = now >= self.ends_at;
        match judge(&self.base, record, policy) {
            Verdict::Regressed(why) => {
                Step::RollBack(format!("health regression of {} {}: {why}", self.name, self.version))
            }
            Verdict::Healthy(summary) if over => Step::MarkGood(summary),
            Verdict::Undecided if over => Step::MarkGood(format!(
                "too little traffic to judge its health ({} requests, {} needed); kept",
                record.requests, policy.health_min_requests
            )),
            _ => Step::Wait,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> OtaConfig {
        OtaConfig { health_min_requests: 10, ..OtaConfig::default() }
    }

    fn record(requests: u64, errors: u64, ms: f32) -> Record {
        Record { requests, errors, latencies: vec![ms; (requests - errors) as usize] }
    }

    fn watch() -> Watch {
        Watch::new([7; 16], "wake", "2", record(100, 0, 1.0), Duration::from_secs(100), Duration::from_secs(60))
    }

    const SECS: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn a_healthy_version_waits_for_the_end_of_its_window_then_is_marked_good() {
        let w = watch();
        assert_eq!(w.step(SECS(101), &record(50, 0, 1.0), &policy()), Step::Wait);
        assert_eq!(w.step(SECS(159), &record(50, 0, 1.0), &policy()), Step::Wait);
        assert!(
            matches!(w.step(SECS(160), &record(50, 0, 1.0), &policy()), Step::MarkGood(s) if s.contains("50 requests"))
        );
    }

    #[test]
    fn a_regression_rolls_back_at_once_without_waiting_for_the_window() {
        let w = watch();
        let step = w.step(SECS(101), &record(20, 10, 1.0), &policy());
        assert!(matches!(&step, Step::RollBack(r) if r.contains("wake 2") && r.contains("error rate 50%")), "{step:?}");
        let slow = w.step(SECS(102), &record(20, 0, 9.0), &policy());
        assert!(matches!(&slow, Step::RollBack(r) if r.contains("p95")), "{slow:?}");
    }

    #[test]
    fn too_little_traffic_keeps_the_version_and_says_so() {
        let w = watch();
        assert_eq!(w.step(SECS(120), &record(3, 3, 1.0), &policy()), Step::Wait, "undecided inside the window");
        let end = w.step(SECS(161), &record(3, 3, 1.0), &policy());
        assert!(
            matches!(&end, Step::MarkGood(s) if s.contains("too little traffic") && s.contains("3 requests")),
            "{end:?}"
        );
    }

    #[test]
    fn timeouts_count_against_the_version() {
        // A hung version: every request times out at the 5 s deadline.
        let w = watch();
        let hung = Record { requests: 20, errors: 20, latencies: vec![5000.0; 20] };
        assert!(matches!(w.step(SECS(101), &hung, &policy()), Step::RollBack(_)));
    }
}
