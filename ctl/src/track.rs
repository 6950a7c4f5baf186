//! Which devices answered a command, where each one is, and when the operation is over:
//! pure state, fed with acks and the current instant, tested without a network.
//!
//! A command to one device waits for that device. A command to a group does not know the
//! group's members in advance (devices decide their groups themselves): the devices that
//! acknowledge the command id during the acceptance window are the members. One that
//! answers later still joins, as long as the operation is running: it got the command
//! (from its persistent session, say), so it is doing the work and should be reported.

use std::collections::BTreeMap;
use std::time::Duration;

use edge_proto::command::{Ack, AckState, Reply, Target};
use tokio::time::Instant;

/// When a device is finished with, as far as this operation is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Goal {
    /// Once it has answered at all (`activate`/`rollback` without `--wait`).
    Accepted,
    /// Once every chunk is in and verified, `Progress(100)`, or it ended (`deploy` without
    /// `--wait`).
    Received,
    /// Once it succeeded, failed or rejected.
    Terminal,
}

/// How one device ended, as reported to the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Done.
    Succeeded,
    /// Ran and failed; the agent's reason.
    Failed(String),
    /// Refused the command; the agent's reason.
    Rejected(String),
    /// Accepted, and the operation was not asked to wait for more ([`Goal::Accepted`]).
    Accepted,
    /// Has the whole artifact and is installing it ([`Goal::Received`]).
    Transferred,
    /// Answered, but did not reach the goal in time; its last state.
    TimedOut(AckState),
    /// Never answered.
    NoAnswer,
}

impl Outcome {
    /// Whether this counts as success for the operation.
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Succeeded | Outcome::Accepted | Outcome::Transferred)
    }

    /// One word or two, for tables: `succeeded`, `failed`, `rejected`, `accepted`,
    /// `transferred`, `timed out`, `no answer`.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed(_) => "failed",
            Outcome::Rejected(_) => "rejected",
            Outcome::Accepted => "accepted",
            Outcome::Transferred => "transferred",
            Outcome::TimedOut(_) => "timed out",
            Outcome::NoAnswer => "no answer",
        }
    }

    /// Why, when there is more to say than the label.
    pub fn reason(&self) -> Option<String> {
        match self {
            Outcome::Failed(r) | Outcome::Rejected(r) => Some(r.clone()),
            Outcome::TimedOut(last) => Some(format!("last state: {}", state_text(last))),
            Outcome::Transferred => Some("installing; `--wait` waits for the result".into()),
            _ => None,
        }
    }
}

/// An ack state in words: `accepted`, `42 %`, `succeeded`, `failed: …`, `rejected: …`.
pub fn state_text(state: &AckState) -> String {
    match state {
        AckState::Accepted => "accepted".into(),
        AckState::Progress(p) => format!("{p} %"),
        AckState::Succeeded => "succeeded".into(),
        AckState::Failed(r) => format!("failed: {r}"),
        AckState::Rejected(r) => format!("rejected: {r}"),
    }
}

/// Whether a device is done with the command.
pub fn is_terminal(state: &AckState) -> bool {
    matches!(state, AckState::Succeeded | AckState::Failed(_) | AckState::Rejected(_))
}

/// The result for one device.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceResult {
    /// Device id.
    pub device: String,
    /// How it ended.
    pub outcome: Outcome,
    /// From the command's publication to the outcome (to the end of the wait for devices
    /// that timed out or never answered).
    pub elapsed: Duration,
    /// The data a succeeded `get-status` or `infer` returned.
    pub reply: Option<Reply>,
}

/// A device's state change, for progress reporting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Device id.
    pub device: String,
    /// Its new state.
    pub state: AckState,
    /// Whether this is the device's first ack of the command.
    pub joined: bool,
}

#[derive(Debug, Clone)]
struct Track {
    state: AckState,
    /// Has reported `Progress(100)`: sticky, a later lower progress (a resumed install
    /// step) does not take it back.
    received: bool,
    /// When it reached the goal, if it has.
    done_at: Option<Instant>,
    reply: Option<Reply>,
}

/// Stands for "no deadline": far enough, and small enough to add to an `Instant`.
const FOREVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Per-device progress of one command.
#[derive(Debug, Clone)]
pub struct Tracker {
    command_id: [u8; 16],
    target: Target,
    goal: Goal,
    start: Instant,
    accept_deadline: Instant,
    deadline: Instant,
    devices: BTreeMap<String, Track>,
}

impl Tracker {
    /// Tracks command `command_id` sent to `target` at `start`. Devices have `accept_wait`
    /// to answer (a group's members are those that do); the whole operation ends at
    /// `start + timeout` at the latest.
    pub fn new(
        command_id: [u8; 16],
        target: Target,
        goal: Goal,
        start: Instant,
        accept_wait: Duration,
        timeout: Duration,
    ) -> Tracker {
        // Checked: `Duration::MAX` means "as long as the operation lasts".
        let far = |d: Duration| start.checked_add(d).unwrap_or(start + FOREVER);
        let deadline = far(timeout);
        Tracker {
            command_id,
            target,
            goal,
            start,
            accept_deadline: far(accept_wait).min(deadline),
            deadline,
            devices: BTreeMap::new(),
        }
    }

    /// Takes an ack received on `from`'s ack topic. Returns the change it makes, or `None`
    /// when it is for another command, from a device that is not the target, claims to be
    /// from another device than its topic's (the broker's ACL vouches for the topic, not
    /// for the payload), or changes nothing (a duplicate, anything after a final state).
    pub fn on_ack(&mut self, from: &str, ack: Ack, now: Instant) -> Option<Change> {
        if ack.command_id != self.command_id || ack.device != from {
            return None;
        }
        if let Target::Device(d) = &self.target {
            if d != from {
                return None;
            }
        }
        let goal = self.goal;
        let joined = !self.devices.contains_key(from);
        let track = self.devices.entry(from.to_string()).or_insert(Track {
            state: AckState::Accepted,
            received: false,
            done_at: None,
            reply: None,
        });
        if !joined {
            let stale = is_terminal(&track.state)
                || track.state == ack.state
                // A redelivered Accepted after progress.
                || (ack.state == AckState::Accepted && track.state != AckState::Accepted);
            if stale {
                return None;
            }
        }
        track.received |= matches!(ack.state, AckState::Progress(p) if p >= 100);
        track.state = ack.state.clone();
        if matches!(ack.state, AckState::Succeeded) {
            track.reply = ack.reply;
        }
        if track.done_at.is_none() && reached(goal, track) {
            track.done_at = Some(now);
        }
        // A terminal state after the goal (Succeeded after Progress(100)) is the real end.
        if is_terminal(&track.state) {
            track.done_at = Some(track.done_at.map_or(now, |t| t.max(now)));
        }
        Some(Change { device: from.to_string(), state: ack.state, joined })
    }

    /// Whether devices may still join before the work starts: until the acceptance
    /// window closes, or, for one device, until it answers.
    pub fn accepting(&self, now: Instant) -> bool {
        if now >= self.accept_deadline {
            return false;
        }
        match &self.target {
            Target::Device(d) => !self.devices.contains_key(d),
            Target::Group(_) => true,
        }
    }

    /// Whether the operation is over: the deadline passed, or acceptance is closed and
    /// every device that answered reached the goal (or none answered).
    pub fn done(&self, now: Instant) -> bool {
        now >= self.deadline || (!self.accepting(now) && self.devices.values().all(|t| reached(self.goal, t)))
    }

    /// When [`Tracker::accepting`] or [`Tracker::done`] may next change without an ack.
    pub fn next_deadline(&self, now: Instant) -> Instant {
        if self.accepting(now) {
            self.accept_deadline
        } else {
            self.deadline
        }
    }

    /// When the operation ends at the latest.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Devices that answered and still need the artifact: not terminal, not at 100 %.
    pub fn receiving(&self) -> impl Iterator<Item = &str> {
        self.devices.iter().filter(|(_, t)| !t.received && !is_terminal(&t.state)).map(|(d, _)| d.as_str())
    }

    /// Whether `device` answered and still needs chunks.
    pub fn wants_chunks(&self, device: &str) -> bool {
        self.devices.get(device).is_some_and(|t| !t.received && !is_terminal(&t.state))
    }

    /// Whether `device` has acked at all.
    pub fn knows(&self, device: &str) -> bool {
        self.devices.contains_key(device)
    }

    /// Number of devices that answered.
    pub fn members(&self) -> usize {
        self.devices.len()
    }

    /// The result per device, at `now`. A device that did not reach the goal timed out;
    /// a target device that never answered is `NoAnswer`. A group none of whose devices
    /// answered gives no results.
    pub fn finish(&self, now: Instant) -> Vec<DeviceResult> {
        let mut out: Vec<DeviceResult> = self
            .devices
            .iter()
            .map(|(device, t)| {
                let outcome = match (&t.state, reached(self.goal, t)) {
                    (AckState::Succeeded, _) => Outcome::Succeeded,
                    (AckState::Failed(r), _) => Outcome::Failed(r.clone()),
                    (AckState::Rejected(r), _) => Outcome::Rejected(r.clone()),
                    (_, true) if self.goal == Goal::Received => Outcome::Transferred,
                    (_, true) => Outcome::Accepted,
                    (state, false) => Outcome::TimedOut(state.clone()),
                };
                let elapsed = t.done_at.unwrap_or(now).saturating_duration_since(self.start);
                DeviceResult { device: device.clone(), outcome, elapsed, reply: t.reply.clone() }
            })
            .collect();
        if let Target::Device(d) = &self.target {
            if out.is_empty() {
                out.push(DeviceResult {
                    device: d.clone(),
                    outcome: Outcome::NoAnswer,
                    elapsed: now.saturating_duration_since(self.start),
                    reply: None,
                });
            }
        }
        out
    }
}

fn reached(goal: Goal, t: &Track) -> bool {
    is_terminal(&t.state)
        || match goal {
            Goal::Accepted => true,
            Goal::Received => t.received,
            Goal::Terminal => false,
        }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edge_proto::codec::Versioned;
    use edge_proto::command::DeviceStatus;

    const ID: [u8; 16] = [9; 16];

    fn ack(device: &str, state: AckState) -> Ack {
        Ack { version: Ack::VERSION, command_id: ID, device: device.into(), state, ts: 0, reply: None }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn group(goal: Goal, t0: Instant) -> Tracker {
        Tracker::new(ID, Target::Group("lab".into()), goal, t0, secs(3), secs(60))
    }

    #[test]
    fn group_members_are_the_devices_that_ack_during_the_window() {
        let t0 = Instant::now();
        let mut t = group(Goal::Terminal, t0);
        assert!(t.on_ack("a", ack("a", AckState::Accepted), t0 + secs(1)).unwrap().joined);
        assert!(t.on_ack("b", ack("b", AckState::Accepted), t0 + secs(2)).unwrap().joined);
        assert!(t.accepting(t0 + secs(2)));
        assert!(!t.done(t0 + secs(2)));
        assert!(!t.accepting(t0 + secs(3)));
        assert_eq!(t.receiving().collect::<Vec<_>>(), ["a", "b"]);
        t.on_ack("a", ack("a", AckState::Succeeded), t0 + secs(4));
        assert!(!t.done(t0 + secs(4)), "b is still running");
        t.on_ack("b", ack("b", AckState::Failed("validation: max diff 0.3".into())), t0 + secs(5));
        assert!(t.done(t0 + secs(5)));
        let r = t.finish(t0 + secs(5));
        assert_eq!(r[0].outcome, Outcome::Succeeded);
        assert_eq!(r[0].elapsed, secs(4));
        assert_eq!(r[1].outcome, Outcome::Failed("validation: max diff 0.3".into()));
    }

    #[test]
    fn a_group_nobody_answers_is_done_when_the_window_closes_with_no_results() {
        let t0 = Instant::now();
        let t = group(Goal::Terminal, t0);
        assert!(!t.done(t0 + secs(2)));
        assert!(t.done(t0 + secs(3)));
        assert!(t.finish(t0 + secs(3)).is_empty());
    }

    #[test]
    fn a_late_group_member_joins_and_is_waited_for() {
        let t0 = Instant::now();
        let mut t = group(Goal::Terminal, t0);
        t.on_ack("a", ack("a", AckState::Accepted), t0 + secs(1));
        assert!(t.on_ack("late", ack("late", AckState::Accepted), t0 + secs(10)).unwrap().joined);
        t.on_ack("a", ack("a", AckState::Succeeded), t0 + secs(11));
        assert!(!t.done(t0 + secs(11)));
        assert_eq!(t.members(), 2);
    }

    #[test]
    fn one_device_ends_acceptance_as_soon_as_it_answers_and_silence_is_no_answer() {
        let t0 = Instant::now();
        let mut t = Tracker::new(ID, Target::Device("d".into()), Goal::Terminal, t0, secs(3), secs(60));
        assert!(t.on_ack("other", ack("other", AckState::Accepted), t0).is_none(), "not the target");
        assert!(t.accepting(t0));
        t.on_ack("d", ack("d", AckState::Accepted), t0 + secs(1));
        assert!(!t.accepting(t0 + secs(1)));

        let silent = Tracker::new(ID, Target::Device("d".into()), Goal::Terminal, t0, secs(3), secs(60));
        assert!(!silent.done(t0 + secs(2)));
        assert!(silent.done(t0 + secs(3)));
        let r = silent.finish(t0 + secs(3));
        assert_eq!((r[0].device.as_str(), &r[0].outcome), ("d", &Outcome::NoAnswer));
        assert_eq!(r[0].elapsed, secs(3));
    }

    #[test]
    fn acks_for_other_commands_or_with_a_forged_device_are_ignored() {
        let t0 = Instant::now();
        let mut t = group(Goal::Terminal, t0);
        let other = Ack { command_id: [1; 16], ..ack("a", AckState::Accepted) };
        assert!(t.on_ack("a", other, t0).is_none());
        assert!(t.on_ack("b", ack("a", AckState::Succeeded), t0).is_none(), "b publishing as a");
        assert_eq!(t.members(), 0);
    }

    #[test]
    fn nothing_after_a_final_state_changes_it_and_duplicates_are_quiet() {
        let t0 = Instant::now();
        let mut t = group(Goal::Terminal, t0);
        t.on_ack("a", ack("a", AckState::Progress(40)), t0);
        assert!(t.on_ack("a", ack("a", AckState::Progress(40)), t0).is_none());
        assert!(t.on_ack("a", ack("a", AckState::Accepted), t0).is_none(), "redelivered Accepted");
        t.on_ack("a", ack("a", AckState::Rejected("expired".into())), t0);
        assert!(t.on_ack("a", ack("a", AckState::Succeeded), t0).is_none());
        assert_eq!(t.finish(t0)[0].outcome, Outcome::Rejected("expired".into()));
    }

    #[test]
    fn without_wait_a_deploy_is_done_at_progress_100_and_reports_transferred() {
        let t0 = Instant::now();
        let mut t = Tracker::new(ID, Target::Device("d".into()), Goal::Received, t0, secs(3), secs(600));
        t.on_ack("d", ack("d", AckState::Accepted), t0);
        t.on_ack("d", ack("d", AckState::Progress(50)), t0 + secs(1));
        assert!(t.wants_chunks("d"));
        assert!(!t.done(t0 + secs(1)));
        t.on_ack("d", ack("d", AckState::Progress(100)), t0 + secs(2));
        assert!(!t.wants_chunks("d"));
        assert!(t.done(t0 + secs(2)));
        let r = t.finish(t0 + secs(2));
        assert_eq!(r[0].outcome, Outcome::Transferred);
        assert!(r[0].outcome.is_ok());
        assert_eq!(r[0].elapsed, secs(2));
    }

    #[test]
    fn with_wait_progress_100_is_not_the_end_and_the_deadline_times_out() {
        let t0 = Instant::now();
        let mut t = Tracker::new(ID, Target::Group("g".into()), Goal::Terminal, t0, secs(3), secs(600));
        t.on_ack("a", ack("a", AckState::Progress(100)), t0 + secs(1));
        t.on_ack("b", ack("b", AckState::Progress(30)), t0 + secs(1));
        assert!(!t.done(t0 + secs(599)));
        assert!(t.done(t0 + secs(600)));
        let r = t.finish(t0 + secs(600));
        assert_eq!(r[0].outcome, Outcome::TimedOut(AckState::Progress(100)));
        assert_eq!(r[1].outcome, Outcome::TimedOut(AckState::Progress(30)));
        assert_eq!(r[1].outcome.reason().unwrap(), "last state: 30 %");
        assert!(!r[1].outcome.is_ok());
        assert_eq!(r[1].elapsed, secs(600));
    }

    #[test]
    fn accepted_goal_is_reached_by_the_first_ack() {
        let t0 = Instant::now();
        let mut t = Tracker::new(ID, Target::Device("d".into()), Goal::Accepted, t0, secs(30), secs(30));
        t.on_ack("d", ack("d", AckState::Accepted), t0 + secs(1));
        assert!(t.done(t0 + secs(1)));
        assert_eq!(t.finish(t0 + secs(1))[0].outcome, Outcome::Accepted);
    }

    #[test]
    fn a_succeeded_reply_is_kept() {
        let t0 = Instant::now();
        let mut t = Tracker::new(ID, Target::Device("d".into()), Goal::Terminal, t0, secs(30), secs(30));
        let status = DeviceStatus {
            agent_version: "0.1.0".into(),
            models: vec![],
            config_digest: "ab".into(),
            telemetry_interval_secs: 10,
            log_level: "info".into(),
        };
        let mut a = ack("d", AckState::Succeeded);
        a.reply = Some(Reply::Status(status.clone()));
        t.on_ack("d", a, t0);
        assert_eq!(t.finish(t0)[0].reply, Some(Reply::Status(status)));
    }
}
