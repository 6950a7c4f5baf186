//! One device's way through one deployment: a pure state machine, tested without I/O.
//!
//! ```text
//! pending ──(online)──> sent ──Accepted──> transferring(%) ──Progress(100)──> installing
//!    ^                   │ ^                                                    │
//!    └───────────────────┘ └─ resent while online and unanswered, backing off   │
//!                                                    Succeeded / Failed(reason) ┘
//! any non-final state ──> superseded | cancelled | expired
//! ```
//!
//! The device is the authority on what it runs: a status whose active version is the
//! deployed one, with health `ok`, ends the device's part as `succeeded` whatever the acks
//! said so far (an ack lost with a wiped device, a version activated by hand). A command
//! the device answers as a replay is already there: the next acks or statuses tell the
//! rest. `busy` and a full replay window are answered by sending again later.

use edge_proto::command::AckState;

/// First wait before sending an unanswered command again; doubled per attempt.
pub const RESEND_FIRST_MS: i64 = 30_000;
/// Longest wait between two sends of an unanswered command.
pub const RESEND_MAX_MS: i64 = 600_000;

/// Where the device is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Not sent yet: the device was offline (or is not known yet).
    Pending,
    /// Published to the device; no answer yet.
    Sent,
    /// Accepted; receiving chunks, percent done.
    Transferring(u8),
    /// Every chunk in; verifying, validating, installing, inside the health window.
    Installing,
    /// Runs the deployed version.
    Succeeded,
    /// The device ran the deploy and it failed (it keeps its previous version).
    Failed,
    /// The device refused the command; nothing changed there.
    Rejected,
    /// A newer deployment of the model for this device replaced this one.
    Superseded,
    /// The operator cancelled the deployment.
    Cancelled,
    /// The command expired before the device was done.
    Expired,
}

impl State {
    /// The name the API and the database use.
    pub fn name(&self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Sent => "sent",
            State::Transferring(_) => "transferring",
            State::Installing => "installing",
            State::Succeeded => "succeeded",
            State::Failed => "failed",
            State::Rejected => "rejected",
            State::Superseded => "superseded",
            State::Cancelled => "cancelled",
            State::Expired => "expired",
        }
    }

    /// The state named `name` (with `progress` for `transferring`); `None` for an unknown
    /// name.
    pub fn parse(name: &str, progress: Option<u8>) -> Option<State> {
        Some(match name {
            "pending" => State::Pending,
            "sent" => State::Sent,
            "transferring" => State::Transferring(progress.unwrap_or(0)),
            "installing" => State::Installing,
            "succeeded" => State::Succeeded,
            "failed" => State::Failed,
            "rejected" => State::Rejected,
            "superseded" => State::Superseded,
            "cancelled" => State::Cancelled,
            "expired" => State::Expired,
            _ => return None,
        })
    }

    /// Nothing more happens after it.
    pub fn is_final(&self) -> bool {
        edge_proto::deployments::is_terminal(self.name())
    }
}

/// A device's record in a deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// Where it is.
    pub state: State,
    /// The device's reason, or a note.
    pub detail: Option<String>,
    /// Sends of the command so far.
    pub attempts: u32,
    /// Last send, ms since the Unix epoch.
    pub sent_at: Option<i64>,
}

impl Default for Progress {
    fn default() -> Self {
        Progress { state: State::Pending, detail: None, attempts: 0, sent_at: None }
    }
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event<'a> {
    /// A status of the device: whether it is online, and its active version and health
    /// of the deployed model (`None` when it does not have the model).
    Status {
        /// Online now.
        online: bool,
        /// Active version of the model.
        active: Option<&'a str>,
        /// Health of the model (`ok`, `watching`, …).
        health: Option<&'a str>,
    },
    /// The device acknowledged the deployment's command.
    Ack(&'a AckState),
    /// The device asked for missing chunks of this deployment's transfer.
    Need,
    /// A periodic check; `online` is the inventory's view of the device.
    Tick {
        /// Online now.
        online: bool,
    },
    /// A newer deployment replaces this one for the device.
    Supersede,
    /// The operator cancelled the deployment.
    Cancel,
    /// The command expired.
    Expire,
}

/// What to do on the device's behalf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Publish the signed command on the device's `cmd` topic.
    SendCommand,
    /// Publish every chunk to the device's `ota` topic.
    SendAllChunks,
    /// Publish the chunks the device asked for.
    SendNeeded,
    /// Publish the signed cancel command to the device.
    SendCancel,
}

/// How long to wait after the `attempts`-th send before sending again.
pub fn resend_delay_ms(attempts: u32) -> i64 {
    let doublings = attempts.saturating_sub(1).min(16);
    (RESEND_FIRST_MS << doublings).min(RESEND_MAX_MS)
}

/// The record after `event` at `now` (ms since the Unix epoch) for a deployment of
/// `version`, and what to do.
pub fn step(p: &Progress, version: &str, event: &Event, now: i64) -> (Progress, Vec<Action>) {
    let mut next = p.clone();
    let mut actions = vec![];
    let send = |next: &mut Progress, actions: &mut Vec<Action>| {
        next.state = State::Sent;
        next.attempts += 1;
        next.sent_at = Some(now);
        actions.push(Action::SendCommand);
    };
    match event {
        // A late verdict of the device still counts after the command expired: it finished
        // (or failed) a transfer it had started in time.
        Event::Ack(AckState::Succeeded) if !p.state.is_final() || p.state == State::Expired => {
            next.state = State::Succeeded;
            next.detail = None;
        }
        Event::Ack(AckState::Failed(reason)) if !p.state.is_final() || p.state == State::Expired => {
            next.state = State::Failed;
            next.detail = Some(reason.clone());
        }
        _ if p.state.is_final() => {}
        Event::Status { active: Some(a), health: Some("ok"), .. } if *a == version => {
            next.state = State::Succeeded;
            next.detail = Some("the device reports this version active".into());
        }
        Event::Status { online: true, .. } => match p.state {
            State::Pending => send(&mut next, &mut actions),
            // Back online without having answered: a device that never connected before had
            // no session on the broker to queue the command in.
            State::Sent if p.sent_at.is_none_or(|t| now - t >= RESEND_FIRST_MS / 3) => send(&mut next, &mut actions),
            _ => {}
        },
        Event::Status { .. } => {}
        Event::Tick { online: true } => match p.state {
            State::Pending => send(&mut next, &mut actions),
            State::Sent if p.sent_at.is_none_or(|t| now - t >= resend_delay_ms(p.attempts)) => {
                send(&mut next, &mut actions)
            }
            _ => {}
        },
        Event::Tick { online: false } => {}
        Event::Ack(AckState::Accepted) => {
            next.state = State::Transferring(0);
            next.detail = None;
            actions.push(Action::SendAllChunks);
        }
        Event::Ack(AckState::Progress(pct)) => {
            next.state = if *pct >= 100 { State::Installing } else { State::Transferring(*pct) };
            next.detail = None;
        }
        Event::Ack(AckState::Rejected(reason)) => {
            if reason.starts_with("replayed") {
                // It has the command already; what it does with it comes next.
                next.detail = Some("the device already has this command".into());
            } else if reason.starts_with("busy") || reason.starts_with("replay window full") {
                // Transient: stays `sent`, and the tick sends it again after the back-off.
                next.detail = Some(reason.clone());
            } else {
                next.state = State::Rejected;
                next.detail = Some(reason.clone());
            }
        }
        Event::Ack(_) => {}
        Event::Need => {
            if matches!(p.state, State::Pending | State::Sent) {
                next.state = State::Transferring(0);
            }
            if matches!(next.state, State::Transferring(_)) {
                actions.push(Action::SendNeeded);
            }
        }
        Event::Supersede => next.state = State::Superseded,
        Event::Cancel => {
            if matches!(p.state, State::Sent | State::Transferring(_) | State::Installing) {
                actions.push(Action::SendCancel);
            }
            next.state = State::Cancelled;
        }
        Event::Expire => next.state = State::Expired,
    }
    (next, actions)
}

#[cfg(test)]
mod tests {
    use super::*;

    const V: &str = "2";
    const T0: i64 = 1_000_000;

    fn online(active: Option<&'static str>, health: Option<&'static str>) -> Event<'static> {
        Event::Status { online: true, active, health }
    }

    fn at(state: State) -> Progress {
        Progress { state, detail: None, attempts: 1, sent_at: Some(T0) }
    }

    #[test]
    fn a_pending_device_gets_the_command_when_it_comes_online_not_before() {
        let p = Progress::default();
        let (same, actions) = step(&p, V, &Event::Status { online: false, active: None, health: None }, T0);
        assert_eq!((same.state, actions), (State::Pending, vec![]));
        let (p, actions) = step(&p, V, &online(Some("1"), Some("ok")), T0);
        assert_eq!(p.state, State::Sent);
        assert_eq!(actions, vec![Action::SendCommand]);
        assert_eq!((p.attempts, p.sent_at), (1, Some(T0)));
    }

    #[test]
    fn the_whole_way_through_acks_ends_succeeded() {
        let mut p = at(State::Sent);
        let mut all = vec![];
        for ack in [AckState::Accepted, AckState::Progress(40), AckState::Progress(100), AckState::Succeeded] {
            let (next, actions) = step(&p, V, &Event::Ack(&ack), T0);
            all.push(next.state.clone());
            if ack == AckState::Accepted {
                assert_eq!(actions, vec![Action::SendAllChunks]);
            }
            p = next;
        }
        assert_eq!(all, vec![State::Transferring(0), State::Transferring(40), State::Installing, State::Succeeded]);
    }

    #[test]
    fn a_status_with_the_version_active_and_healthy_is_success_whatever_the_acks() {
        for state in [State::Pending, State::Sent, State::Transferring(10), State::Installing] {
            let (p, actions) = step(&at(state.clone()), V, &online(Some(V), Some("ok")), T0);
            assert_eq!(p.state, State::Succeeded, "{state:?}");
            assert!(actions.is_empty());
        }
        // Inside its health window it is not done yet.
        let (p, _) = step(&at(State::Installing), V, &online(Some(V), Some("watching")), T0);
        assert_eq!(p.state, State::Installing);
        // An older version active is not success.
        let (p, _) = step(&at(State::Installing), V, &online(Some("1"), Some("ok")), T0);
        assert_eq!(p.state, State::Installing);
    }

    #[test]
    fn failures_and_refusals_are_final_with_the_devices_reason() {
        let (p, _) = step(&at(State::Installing), V, &Event::Ack(&AckState::Failed("health regression".into())), T0);
        assert_eq!((p.state.clone(), p.detail.as_deref()), (State::Failed, Some("health regression")));
        let (p2, actions) = step(&p, V, &online(None, None), T0 + RESEND_MAX_MS);
        assert_eq!((p2, actions), (p, vec![]), "a failed device is not sent the command again");
        let (p, _) = step(&at(State::Sent), V, &Event::Ack(&AckState::Rejected("expired at 5 ms".into())), T0);
        assert_eq!(p.state, State::Rejected);
    }

    #[test]
    fn a_replay_keeps_waiting_and_busy_is_sent_again_after_the_back_off() {
        let (p, _) = step(&at(State::Sent), V, &Event::Ack(&AckState::Rejected("replayed command id 00".into())), T0);
        assert_eq!(p.state, State::Sent);
        let busy = AckState::Rejected("busy: 8 commands queued; retry later".into());
        let (p, _) = step(&at(State::Sent), V, &Event::Ack(&busy), T0);
        assert_eq!(p.state, State::Sent);
        let early = step(&p, V, &Event::Tick { online: true }, T0 + RESEND_FIRST_MS - 1);
        assert!(early.1.is_empty(), "not before the back-off");
        let (p, actions) = step(&p, V, &Event::Tick { online: true }, T0 + RESEND_FIRST_MS);
        assert_eq!((p.attempts, actions), (2, vec![Action::SendCommand]));
        // Offline: the tick waits for the device.
        let (_, actions) = step(&p, V, &Event::Tick { online: false }, T0 + RESEND_MAX_MS * 2);
        assert!(actions.is_empty());
    }

    #[test]
    fn the_resend_back_off_doubles_up_to_its_cap() {
        assert_eq!(resend_delay_ms(1), RESEND_FIRST_MS);
        assert_eq!(resend_delay_ms(2), 2 * RESEND_FIRST_MS);
        assert_eq!(resend_delay_ms(3), 4 * RESEND_FIRST_MS);
        assert_eq!(resend_delay_ms(40), RESEND_MAX_MS);
    }

    #[test]
    fn a_device_that_reconnects_unanswered_is_sent_the_command_again() {
        let (p, actions) = step(&at(State::Sent), V, &online(None, None), T0 + RESEND_FIRST_MS / 3);
        assert_eq!((p.state, p.attempts, actions), (State::Sent, 2, vec![Action::SendCommand]));
        // A status republished right after the send is not a reason to send twice.
        let (_, actions) = step(&at(State::Sent), V, &online(None, None), T0 + 10);
        assert!(actions.is_empty());
        // Transferring: the device resumes by itself and asks for what it misses.
        let (_, actions) = step(&at(State::Transferring(30)), V, &online(None, None), T0 + RESEND_MAX_MS);
        assert!(actions.is_empty());
    }

    #[test]
    fn a_need_is_served_while_transferring_and_moves_a_silent_device_there() {
        let (p, actions) = step(&at(State::Sent), V, &Event::Need, T0);
        assert_eq!((p.state, actions), (State::Transferring(0), vec![Action::SendNeeded]));
        let (_, actions) = step(&at(State::Installing), V, &Event::Need, T0);
        assert!(actions.is_empty());
        let (_, actions) = step(&at(State::Cancelled), V, &Event::Need, T0);
        assert!(actions.is_empty(), "a cancelled transfer gets no chunks");
    }

    #[test]
    fn cancel_reaches_only_devices_that_have_the_command() {
        let (p, actions) = step(&at(State::Transferring(5)), V, &Event::Cancel, T0);
        assert_eq!((p.state, actions), (State::Cancelled, vec![Action::SendCancel]));
        let (p, actions) = step(&Progress::default(), V, &Event::Cancel, T0);
        assert_eq!((p.state, actions), (State::Cancelled, vec![]));
        let (p, _) = step(&at(State::Succeeded), V, &Event::Cancel, T0);
        assert_eq!(p.state, State::Succeeded, "a finished device stays finished");
    }

    #[test]
    fn expiry_and_supersession_end_unfinished_devices_but_a_late_verdict_still_counts() {
        let (p, _) = step(&at(State::Transferring(90)), V, &Event::Expire, T0);
        assert_eq!(p.state, State::Expired);
        let (p, _) = step(&p, V, &Event::Ack(&AckState::Succeeded), T0);
        assert_eq!(p.state, State::Succeeded);
        let (p, _) = step(&at(State::Sent), V, &Event::Supersede, T0);
        assert_eq!(p.state, State::Superseded);
        let (p, _) = step(&p, V, &Event::Ack(&AckState::Succeeded), T0);
        assert_eq!(p.state, State::Superseded, "the newer deployment decides now");
    }

    #[test]
    fn state_names_read_back() {
        for s in [
            State::Pending,
            State::Sent,
            State::Transferring(7),
            State::Installing,
            State::Succeeded,
            State::Failed,
            State::Rejected,
            State::Superseded,
            State::Cancelled,
            State::Expired,
        ] {
            assert_eq!(State::parse(s.name(), Some(7)), Some(s.clone()));
        }
        assert_eq!(State::parse("lost", None), None);
    }
}
