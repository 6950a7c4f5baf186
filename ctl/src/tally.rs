//! Where a group's devices are in one command or deploy, as counts per state: what edgectl
//! draws instead of one bar per device once a group has more than a handful of members
//! ([`AGGREGATE_ABOVE`]). Pure: fed with ack changes, asked for a line and the failures.

use std::collections::BTreeMap;

use edge_proto::command::AckState;

use crate::track::Change;

/// Above this many devices, progress is shown as counts, not per device.
pub const AGGREGATE_ABOVE: usize = 8;

/// The stage a device is in, in the order a deploy goes through them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// Accepted, nothing received yet.
    Accepted,
    /// Receiving chunks.
    Receiving,
    /// Has every chunk: verifying, validating, installing.
    Installing,
    /// Done.
    Succeeded,
    /// Ran and failed.
    Failed,
    /// Refused the command.
    Rejected,
}

impl Stage {
    fn of(state: &AckState) -> Stage {
        match state {
            AckState::Accepted => Stage::Accepted,
            AckState::Progress(p) if *p >= 100 => Stage::Installing,
            AckState::Progress(_) => Stage::Receiving,
            AckState::Succeeded => Stage::Succeeded,
            AckState::Failed(_) => Stage::Failed,
            AckState::Rejected(_) => Stage::Rejected,
        }
    }

    /// The word used in the counts line.
    pub fn word(self) -> &'static str {
        match self {
            Stage::Accepted => "accepted",
            Stage::Receiving => "receiving",
            Stage::Installing => "installing",
            Stage::Succeeded => "succeeded",
            Stage::Failed => "failed",
            Stage::Rejected => "rejected",
        }
    }
}

/// Devices by stage, and the reasons of those that failed or refused.
#[derive(Debug, Default)]
pub struct Tally {
    stages: BTreeMap<String, Stage>,
    failures: BTreeMap<String, String>,
}

impl Tally {
    /// Records a device's new state. Returns the failure line (`device: failed: why`) when
    /// this change is the device's failure or refusal, so it can be printed once, as it
    /// happens.
    pub fn record(&mut self, change: &Change) -> Option<String> {
        let stage = Stage::of(&change.state);
        let before = self.stages.insert(change.device.clone(), stage);
        match &change.state {
            AckState::Failed(why) | AckState::Rejected(why) if before != Some(stage) => {
                self.failures.insert(change.device.clone(), why.clone());
                Some(format!("{}: {} {why}", change.device, stage.word()))
            }
            _ => None,
        }
    }

    /// How many devices have answered.
    pub fn devices(&self) -> usize {
        self.stages.len()
    }

    /// How many devices are in `stage`.
    pub fn count(&self, stage: Stage) -> usize {
        self.stages.values().filter(|s| **s == stage).count()
    }

    /// `12 devices: 3 receiving, 5 installing, 3 succeeded, 1 failed`: non-empty stages only,
    /// in the order a deploy goes.
    pub fn line(&self) -> String {
        let mut counts: BTreeMap<Stage, usize> = BTreeMap::new();
        for s in self.stages.values() {
            *counts.entry(*s).or_default() += 1;
        }
        let parts: Vec<String> = counts.iter().map(|(s, n)| format!("{n} {}", s.word())).collect();
        let n = self.stages.len();
        let plural = if n == 1 { "" } else { "s" };
        if parts.is_empty() {
            format!("{n} device{plural}")
        } else {
            format!("{n} device{plural}: {}", parts.join(", "))
        }
    }

    /// Devices that failed or refused, with the agent's reason, by device id.
    pub fn failures(&self) -> &BTreeMap<String, String> {
        &self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(device: &str, state: AckState) -> Change {
        Change { device: device.into(), state, joined: false }
    }

    #[test]
    fn counts_each_device_once_in_its_latest_stage() {
        let mut t = Tally::default();
        for d in ["a", "b", "c", "d"] {
            t.record(&change(d, AckState::Accepted));
        }
        t.record(&change("a", AckState::Progress(40)));
        t.record(&change("b", AckState::Progress(100)));
        t.record(&change("c", AckState::Progress(10)));
        t.record(&change("c", AckState::Succeeded));
        assert_eq!(t.devices(), 4);
        assert_eq!(t.count(Stage::Receiving), 1);
        assert_eq!(t.line(), "4 devices: 1 accepted, 1 receiving, 1 installing, 1 succeeded");
    }

    #[test]
    fn a_failure_is_reported_once_with_its_reason_and_listed() {
        let mut t = Tally::default();
        t.record(&change("pi-2", AckState::Progress(100)));
        let line = t.record(&change("pi-2", AckState::Failed("validation: max diff 0.3".into())));
        assert_eq!(line.as_deref(), Some("pi-2: failed validation: max diff 0.3"));
        // The same state acked again (a retransmitted ack) is not a second failure line.
        assert_eq!(t.record(&change("pi-2", AckState::Failed("validation: max diff 0.3".into()))), None);
        let refused = t.record(&change("pi-3", AckState::Rejected("busy; retry later".into())));
        assert_eq!(refused.as_deref(), Some("pi-3: rejected busy; retry later"));
        assert_eq!(t.failures().len(), 2);
        assert_eq!(t.failures()["pi-2"], "validation: max diff 0.3");
        assert_eq!(t.line(), "2 devices: 1 failed, 1 rejected");
    }

    #[test]
    fn an_empty_tally_says_no_device_answered_yet() {
        assert_eq!(Tally::default().line(), "0 devices");
    }
}
