//! What a rollout does with a verdict on its wave: pure, over the stored row, with the time
//! given. [`super::Rollouts`] reads, calls [`after`], then acts and writes in the order the
//! [`Transition`] says.
//!
//! ```text
//! Wait ──────────────────────────────────────> the wave's figures kept (nothing sent)
//! Pass, more waves, no approval needed ──────> next wave:    write, then admit it
//! Pass, more waves, --approve-each ──────────> awaiting approval (write)
//! Pass, last wave ───────────────────────────> completed:    admit every member, then write
//! Fail ──────────────────────────────────────> halted:       relay the cancel, then write
//! ```
//!
//! In shadow, a passed wave's devices are first sent the promotion (the signed `activate`),
//! and a completed rollout is not opened to later members (they would get the shadow, not
//! the promotion); a failed wave's devices are sent the signed `end-shadow` before the
//! cancel. Relaying a command twice is harmless: a device runs a command id once.
//!
//! Acting before writing (completing, halting) means a crash in between is found again at
//! the next tick: a completion is judged again and completes; a halt finds its deployment
//! cancelled and halts. Admitting after writing means a crash in between leaves the
//! admission to the next tick, which redoes it from the row.

use edge_proto::rollouts::{Decision, RolloutState};

use super::judge::{Judgement, Verdict};
use super::store::{Look, Row};

/// What to send, and when, around writing the row.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Let these members (every member, with `None`) be sent the deployment.
    Admit(Option<Vec<String>>),
    /// Relay the operator's signed cancel to the deployment's devices.
    Cancel,
    /// Relay the signed promotion (`activate`) to these devices.
    Promote(Vec<String>),
    /// Relay the signed `end-shadow` to these devices.
    EndShadow(Vec<String>),
}

/// The row to write, with what to do before and after writing it.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// The row as it should be stored.
    pub row: Row,
    /// Done before the write, in order; the write is skipped when one fails.
    pub before: Vec<Action>,
    /// Done after a successful write.
    pub after: Vec<Action>,
}

/// `r` after `judgement` on its current wave at `now`; `committed`: the wave's devices whose
/// trial has ended (a cancel no longer rolls them back).
pub fn after(r: &Row, judgement: Judgement, committed: &[String], now: i64) -> Transition {
    let mut row = r.clone();
    row.look = Look { figures: Some(judgement.figures), devices: judgement.devices, note: String::new() };
    let decide = |row: &mut Row, verdict: &str, reason: String| {
        row.decisions.push(Decision { at: now, wave: row.wave, verdict: verdict.into(), reason })
    };
    match judgement.verdict {
        Verdict::Wait(note) => {
            row.look.note = note;
            Transition { row, before: vec![], after: vec![] }
        }
        Verdict::Pass(reason) => {
            decide(&mut row, "passed", reason);
            let wave = row.wave_devices(row.wave).to_vec();
            let mut before = match row.spec.shadow {
                true if !wave.is_empty() => vec![Action::Promote(wave)],
                _ => vec![],
            };
            if row.wave + 1 >= row.spec.waves.len() {
                row.state = RolloutState::Completed;
                decide(&mut row, "completed", "every wave passed".into());
                if !row.spec.shadow {
                    before.push(Action::Admit(None));
                }
                return Transition { row, before, after: vec![] };
            }
            if row.spec.approve_each {
                row.state = RolloutState::AwaitingApproval;
                return Transition { row, before, after: vec![] };
            }
            let after = next_wave(&mut row, now);
            Transition { row, before, after: vec![after] }
        }
        Verdict::Fail(reason) => {
            let sent = if row.spec.shadow { "the end of the shadow" } else { "the cancel (rolled back on trial)" };
            let mut reason = format!("{reason}; the wave's devices were sent {sent}");
            if !committed.is_empty() {
                reason.push_str(&format!(
                    "; {} had already ended their trial and keep {}: roll them back with `edgectl cmd rollback`",
                    committed.join(", "),
                    row.version
                ));
            }
            decide(&mut row, "failed", reason);
            row.state = RolloutState::Halted;
            let mut before = vec![];
            if row.spec.shadow {
                before.push(Action::EndShadow(row.wave_devices(row.wave).to_vec()));
            }
            before.push(Action::Cancel);
            Transition { row, before, after: vec![] }
        }
    }
}

/// `r` approved by the operator at `now`: the next wave, admitted after the write.
pub fn approved(r: &Row, now: i64) -> Transition {
    let mut row = r.clone();
    row.decisions.push(Decision {
        at: now,
        wave: row.wave,
        verdict: "approved".into(),
        reason: "by the operator".into(),
    });
    let after = next_wave(&mut row, now);
    Transition { row, before: vec![], after: vec![after] }
}

/// `r` halted because its deployment ended some other way (cancelled by an operator,
/// superseded by another deployment, expired).
pub fn deployment_ended(r: &Row, state: &str, now: i64) -> Transition {
    let mut row = r.clone();
    row.state = RolloutState::Halted;
    row.decisions.push(Decision {
        at: now,
        wave: row.wave,
        verdict: "failed".into(),
        reason: format!("its deployment is {state}"),
    });
    Transition { row, before: vec![], after: vec![] }
}

fn next_wave(row: &mut Row, now: i64) -> Action {
    row.wave += 1;
    row.wave_started_at = now;
    row.state = RolloutState::Running;
    row.look = Look::default();
    Action::Admit(Some(row.members[..row.admitted_count(row.wave)].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use edge_proto::rollouts::{Figures, Gates, WaveSize};

    use crate::rollouts::store::Spec;

    fn row(approve_each: bool) -> Row {
        Row {
            id: "r".into(),
            group: "cams".into(),
            model: "m".into(),
            version: "2".into(),
            spec: Spec {
                waves: vec![WaveSize::Devices(1), WaveSize::Percent(50.0), WaveSize::Percent(100.0)],
                gates: Gates::default(),
                approve_each,
                wave_timeout_secs: 60,
                shadow: false,
                promote_command: None,
                end_shadow_command: None,
            },
            abort_command: vec![],
            members: ["a", "b", "c", "d"].map(String::from).to_vec(),
            wave: 0,
            wave_started_at: 0,
            state: RolloutState::Running,
            look: Look::default(),
            decisions: vec![],
            created_at: 0,
            rev: 3,
        }
    }

    fn judged(verdict: Verdict) -> Judgement {
        Judgement { figures: Figures { requests: 9, ..Default::default() }, devices: vec![], verdict }
    }

    #[test]
    fn a_passed_wave_admits_the_next_after_the_write() {
        let t = after(&row(false), judged(Verdict::Pass("fine".into())), &[], 1_000);
        assert_eq!((t.row.wave, t.row.wave_started_at, t.row.state), (1, 1_000, RolloutState::Running));
        assert_eq!(t.before, []);
        assert_eq!(t.after, [Action::Admit(Some(vec!["a".into(), "b".into()]))]);
        assert_eq!(t.row.decisions[0].verdict, "passed");
        assert_eq!(t.row.look, Look::default(), "the next wave starts without figures");
    }

    #[test]
    fn with_approval_a_passed_wave_waits_and_approval_admits_the_next() {
        let t = after(&row(true), judged(Verdict::Pass("fine".into())), &[], 1_000);
        assert_eq!((t.row.wave, t.row.state), (0, RolloutState::AwaitingApproval));
        assert!(t.before.is_empty() && t.after.is_empty());
        let a = approved(&t.row, 2_000);
        assert_eq!((a.row.wave, a.row.state, a.row.wave_started_at), (1, RolloutState::Running, 2_000));
        assert_eq!(a.after, [Action::Admit(Some(vec!["a".into(), "b".into()]))]);
        assert_eq!(a.row.decisions.last().unwrap().verdict, "approved");
    }

    #[test]
    fn the_last_wave_passed_opens_the_deployment_to_every_member_before_the_write() {
        let mut r = row(false);
        r.wave = 2;
        let t = after(&r, judged(Verdict::Pass("fine".into())), &[], 1_000);
        assert_eq!(t.row.state, RolloutState::Completed);
        assert_eq!((t.before, t.after), (vec![Action::Admit(None)], vec![]));
        let verdicts: Vec<&str> = t.row.decisions.iter().map(|d| d.verdict.as_str()).collect();
        assert_eq!(verdicts, ["passed", "completed"]);
    }

    #[test]
    fn a_failed_wave_relays_the_cancel_before_the_write_and_names_committed_devices() {
        let t = after(&row(false), judged(Verdict::Fail("p95 over the gate".into())), &["a".into()], 1_000);
        assert_eq!((t.row.state, t.row.wave), (RolloutState::Halted, 0));
        assert_eq!((t.before, t.after), (vec![Action::Cancel], vec![]));
        let reason = &t.row.decisions[0].reason;
        assert!(reason.starts_with("p95 over the gate; the wave's devices were sent the cancel"), "{reason}");
        assert!(reason.contains("a had already ended their trial and keep 2"), "{reason}");
    }

    #[test]
    fn a_wait_keeps_the_figures_and_the_reason_and_sends_nothing() {
        let t = after(&row(false), judged(Verdict::Wait("3 of the 100 requests".into())), &[], 1_000);
        assert_eq!((t.row.wave, t.row.state), (0, RolloutState::Running));
        assert!(t.before.is_empty() && t.after.is_empty());
        assert_eq!(t.row.look.note, "3 of the 100 requests");
        assert_eq!(t.row.look.figures.as_ref().map(|f| f.requests), Some(9));
        assert!(t.row.decisions.is_empty());
    }

    #[test]
    fn in_shadow_a_passed_wave_is_promoted_first_and_a_failed_one_ends_its_shadow() {
        let mut r = row(false);
        r.spec.shadow = true;
        let t = after(&r, judged(Verdict::Pass("agreed".into())), &[], 1_000);
        assert_eq!(t.before, [Action::Promote(vec!["a".into()])]);
        assert_eq!(t.after, [Action::Admit(Some(vec!["a".into(), "b".into()]))]);
        let t = after(&r, judged(Verdict::Fail("outputs differ".into())), &[], 1_000);
        assert_eq!(t.before, [Action::EndShadow(vec!["a".into()]), Action::Cancel]);
        assert!(t.row.decisions[0].reason.contains("sent the end of the shadow"));
        // The last wave: promoted, and later members are not sent the shadow.
        r.wave = 2;
        let t = after(&r, judged(Verdict::Pass("agreed".into())), &[], 1_000);
        assert_eq!(
            (t.row.state, t.before),
            (RolloutState::Completed, vec![Action::Promote(vec!["c".into(), "d".into()])])
        );
    }

    #[test]
    fn a_deployment_ended_elsewhere_halts_the_rollout_saying_so() {
        let t = deployment_ended(&row(false), "superseded", 1_000);
        assert_eq!(t.row.state, RolloutState::Halted);
        assert_eq!(t.row.decisions[0].reason, "its deployment is superseded");
    }
}
