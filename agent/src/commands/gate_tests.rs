//! The gate under simulated time: every step of the acceptance order, roles, scopes,
//! quorum, fleets and a clock that goes back.

use super::*;
use crate::commands::operators::Operator;
use crate::commands::window::WINDOW_FILE;
use edge_proto::command::{cosign, key_id, sign, OperatorGrant, Payload, SigningKey, MAX_COMMAND_BYTES};
use edge_proto::encode;

const NOW: u64 = 1_700_000_000_000;
const HOUR: u64 = 3_600_000;

fn operator() -> SigningKey {
    SigningKey::from_bytes(&[1; 32])
}

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn policy() -> Policy {
    Policy {
        device: "dev-1".into(),
        groups: vec!["lab".into()],
        fleet: String::new(),
        quorum: 1,
        max_command_lifetime_ms: 24 * HOUR,
        max_deployment_lifetime_ms: 7 * 24 * HOUR,
    }
}

fn gate_with(dir: &std::path::Path, policy: Policy, operators: Vec<Operator>) -> Gate {
    let operators = Operators::load(operators, dir).unwrap();
    Gate::new(policy, operators, ReplayWindow::open_in(dir).unwrap())
}

fn gate(dir: &std::path::Path) -> Gate {
    gate_with(dir, policy(), vec![Operator::admin(operator().verifying_key())])
}

fn cmd(id: u8) -> Command {
    Command::new([id; 16], NOW - 1_000, NOW + 60_000, Target::Device("dev-1".into()), Payload::GetStatus)
}

fn signed(c: Command) -> Vec<u8> {
    encode(&sign(c, &operator()))
}

fn accepted(v: &Verdict) -> bool {
    matches!(v, Verdict::Accepted(_))
}

/// The label of a rejection, or "accepted".
fn outcome(g: &mut Gate, bytes: &[u8], now: u64) -> String {
    match g.check(bytes, now).unwrap() {
        Verdict::Accepted(_) => "accepted".into(),
        Verdict::Rejected { rejection, .. } => rejection.label().into(),
    }
}

/// Checks that `bytes` is rejected with `label`, and that nothing changed on disk.
fn assert_rejected(bytes: &[u8], label: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut g = gate(dir.path());
    match g.check(bytes, NOW).unwrap() {
        Verdict::Rejected { rejection, .. } => assert_eq!(rejection.label(), label, "{rejection}"),
        Verdict::Accepted(c) => panic!("accepted {c:?}, expected {label}"),
    }
    assert!(g.window().is_empty());
    assert!(ReplayWindow::open_in(dir.path()).unwrap().is_empty(), "a rejection wrote the window");
}

#[test]
fn accepts_a_valid_command_and_records_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = gate(dir.path());
    let c = sign(cmd(1), &operator());
    assert_eq!(g.check(&encode(&c), NOW).unwrap(), Verdict::Accepted(Box::new(c)));
    assert!(g.window().contains(&[1; 16]));
}

#[test]
fn accepts_a_command_for_a_group_it_is_in() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = signed(Command { target: Target::Group("lab".into()), ..cmd(1) });
    assert!(accepted(&gate(dir.path()).check(&bytes, NOW).unwrap()));
}

#[test]
fn rejects_oversized() {
    // Valid version prefix, so only the size check can refuse it as oversized.
    let mut bytes = signed(cmd(1));
    bytes.resize(MAX_COMMAND_BYTES + 1, 0);
    assert_rejected(&bytes, "oversized");
}

#[test]
fn rejects_unknown_version() {
    assert_rejected(&signed(Command { version: 9, ..cmd(1) }), "unknown_version");
}

#[test]
fn rejects_malformed() {
    let bytes = signed(cmd(1));
    assert_rejected(&bytes[..bytes.len() / 2], "malformed");
}

#[test]
fn rejects_unknown_key() {
    assert_rejected(&encode(&sign(cmd(1), &key(2))), "unknown_key");
}

#[test]
fn rejects_bad_signature() {
    let mut c = sign(cmd(1), &operator());
    c.payload = Payload::Erase;
    assert_rejected(&encode(&c), "bad_signature");
}

#[test]
fn rejects_expired() {
    assert_rejected(&signed(Command { expires_at: NOW - 1, ..cmd(1) }), "expired");
}

#[test]
fn expiry_instant_itself_is_still_valid() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = signed(Command { expires_at: NOW, ..cmd(1) });
    assert!(accepted(&gate(dir.path()).check(&bytes, NOW).unwrap()));
}

#[test]
fn rejects_not_yet_valid_beyond_the_skew_and_allows_within_it() {
    let far = Command { issued_at: NOW + CLOCK_SKEW_MS + 1, expires_at: NOW + 2 * CLOCK_SKEW_MS, ..cmd(1) };
    assert_rejected(&signed(far), "not_yet_valid");
    let dir = tempfile::tempdir().unwrap();
    let near = Command { issued_at: NOW + CLOCK_SKEW_MS, expires_at: NOW + 2 * CLOCK_SKEW_MS, ..cmd(1) };
    assert!(accepted(&gate(dir.path()).check(&signed(near), NOW).unwrap()));
}

#[test]
fn rejects_another_device() {
    assert_rejected(&signed(Command { target: Target::Device("dev-2".into()), ..cmd(1) }), "wrong_target");
}

#[test]
fn rejects_a_group_it_is_not_in() {
    assert_rejected(&signed(Command { target: Target::Group("prod".into()), ..cmd(1) }), "wrong_target");
}

#[test]
fn rejects_replay_in_the_same_gate() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = gate(dir.path());
    let bytes = signed(cmd(1));
    assert!(accepted(&g.check(&bytes, NOW).unwrap()));
    let file = std::fs::read(dir.path().join(WINDOW_FILE)).unwrap();
    assert_eq!(outcome(&mut g, &bytes, NOW + 1), "replayed");
    assert_eq!(std::fs::read(dir.path().join(WINDOW_FILE)).unwrap(), file, "a rejection rewrote the window");
}

#[test]
fn rejects_replay_after_restart() {
    // The window is on disk: a command replayed after the agent restarts is refused.
    let dir = tempfile::tempdir().unwrap();
    let bytes = signed(cmd(1));
    assert!(accepted(&gate(dir.path()).check(&bytes, NOW).unwrap()));
    let mut reopened = gate(dir.path());
    let v = reopened.check(&bytes, NOW + 1).unwrap();
    assert_eq!(v.rejection(), Some(&Rejection::Replayed([1; 16])));
    assert!(accepted(&reopened.check(&signed(cmd(2)), NOW + 1).unwrap()));
}

#[test]
fn a_full_window_rejects_and_keeps_every_id() {
    let dir = tempfile::tempdir().unwrap();
    let window = ReplayWindow::open(&dir.path().join("w"), 1).unwrap();
    let operators = Operators::load(vec![Operator::admin(operator().verifying_key())], dir.path()).unwrap();
    let mut g = Gate::new(policy(), operators, window);
    assert!(accepted(&g.check(&signed(cmd(1)), NOW).unwrap()));
    assert_eq!(g.check(&signed(cmd(2)), NOW).unwrap().rejection(), Some(&Rejection::WindowFull(1)));
    assert!(g.window().contains(&[1; 16]) && !g.window().contains(&[2; 16]));
}

#[test]
fn rejection_messages_say_what_failed() {
    let r = Rejection::from(CommandError::UnknownKey([0xab; 8]));
    assert!(r.to_string().contains("abababababababab") && r.to_string().contains("trusted_keys"), "{r}");
}

#[test]
fn an_expired_command_stays_refused_when_the_clock_goes_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = gate(dir.path());
    let old = signed(cmd(1)); // expires at NOW + 60 s
    assert!(accepted(&g.check(&old, NOW).unwrap()));
    // Two hours later another command is accepted: the first is forgotten.
    let later = Command { issued_at: NOW + 2 * HOUR, expires_at: NOW + 2 * HOUR + 60_000, ..cmd(2) };
    assert!(accepted(&g.check(&signed(later), NOW + 2 * HOUR).unwrap()));
    assert!(!g.window().contains(&[1; 16]));
    // The clock goes back to before the first command expired, here and after a restart.
    assert_eq!(outcome(&mut g, &old, NOW + 1_000), "expired");
    let mut restarted = gate(dir.path());
    let v = restarted.check(&old, NOW + 1_000).unwrap();
    assert!(matches!(v.rejection(), Some(Rejection::Expired { now, .. }) if *now == NOW + 2 * HOUR), "{v:?}");
    // A new command issued at the true time is still accepted by the late clock.
    let fresh = Command { issued_at: NOW + 2 * HOUR + 1, expires_at: NOW + 3 * HOUR, ..cmd(3) };
    assert!(accepted(&restarted.check(&signed(fresh), NOW).unwrap()));
}

#[test]
fn a_clock_far_ahead_cannot_make_later_commands_expired() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = gate(dir.path());
    // Checked while the clock is a year ahead: refused, and the floor does not move.
    let year = 365 * 24 * HOUR;
    assert_eq!(outcome(&mut g, &signed(cmd(1)), NOW + year), "expired");
    assert_eq!(g.window().floor(), 0);
    assert!(accepted(&g.check(&signed(cmd(1)), NOW).unwrap()));
}

#[test]
fn lifetimes_are_limited_by_kind_and_by_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = gate(dir.path());
    let day = Command { expires_at: NOW - 1_000 + 24 * HOUR, ..cmd(1) };
    assert!(accepted(&g.check(&signed(day), NOW).unwrap()), "24 h is the default limit itself");
    let longer = Command { expires_at: NOW + 24 * HOUR, ..cmd(2) };
    let v = g.check(&signed(longer), NOW).unwrap();
    let msg = v.rejection().unwrap().to_string();
    assert!(msg.contains("max_command_lifetime_secs") && msg.contains("--ttl"), "{msg}");
    // A cancel, like a deployment, may live a week.
    let cancel =
        Command { payload: Payload::Cancel { command_id: [9; 16] }, expires_at: NOW + 6 * 24 * HOUR, ..cmd(3) };
    assert!(accepted(&g.check(&signed(cancel), NOW).unwrap()));

    let dir = tempfile::tempdir().unwrap();
    let short = Operator { max_ttl_secs: Some(600), ..Operator::admin(operator().verifying_key()) };
    let mut g = gate_with(dir.path(), policy(), vec![short]);
    let v = g.check(&signed(Command { expires_at: NOW + HOUR, ..cmd(4) }), NOW).unwrap();
    let msg = v.rejection().unwrap().to_string();
    assert!(msg.contains("over the 600 s limit") && msg.contains("max_ttl_secs of key"), "{msg}");
}

#[test]
fn an_observe_key_may_read_but_not_erase() {
    let dir = tempfile::tempdir().unwrap();
    let observer = Operator { role: Role::Observe, ..Operator::admin(key(2).verifying_key()) };
    let mut g = gate_with(dir.path(), policy(), vec![Operator::admin(operator().verifying_key()), observer]);
    assert!(accepted(&g.check(&encode(&sign(cmd(1), &key(2))), NOW).unwrap()));
    let erase = sign(Command { payload: Payload::Erase, ..cmd(2) }, &key(2));
    let v = g.check(&encode(&erase), NOW).unwrap();
    let msg = v.rejection().unwrap().to_string();
    let id = hex(&key_id(&key(2).verifying_key()));
    assert_eq!(msg, format!("unauthorized: key {id} (observe) may not erase (needs role admin)"));
    assert!(!g.window().contains(&[2; 16]), "a refused command is not recorded");
}

#[test]
fn a_scoped_deploy_key_reaches_its_group_only() {
    let dir = tempfile::tempdir().unwrap();
    let cams =
        Operator { role: Role::Deploy, scope: vec!["cameras".into()], ..Operator::admin(key(2).verifying_key()) };
    let rollback = |id, target| Command { payload: Payload::Rollback { name: "m".into() }, target, ..cmd(id) };
    // dev-1 is in "lab" only.
    let mut g = gate_with(dir.path(), policy(), vec![cams.clone()]);
    let v = g.check(&encode(&sign(rollback(1, Target::Device("dev-1".into())), &key(2))), NOW).unwrap();
    let msg = v.rejection().unwrap().to_string();
    assert!(msg.contains("(deploy, for cameras) may not target device dev-1"), "{msg}");
    assert_eq!(outcome(&mut g, &encode(&sign(rollback(2, Target::Group("lab".into())), &key(2))), NOW), "unauthorized");
    // A camera accepts it, by device and by group.
    let dir = tempfile::tempdir().unwrap();
    let camera = Policy { groups: vec!["cameras".into()], ..policy() };
    let mut g = gate_with(dir.path(), camera, vec![cams]);
    assert!(accepted(&g.check(&encode(&sign(rollback(3, Target::Device("dev-1".into())), &key(2))), NOW).unwrap()));
    assert!(accepted(&g.check(&encode(&sign(rollback(4, Target::Group("cameras".into())), &key(2))), NOW).unwrap()));
    let erase = Command { payload: Payload::Erase, ..cmd(5) };
    assert_eq!(outcome(&mut g, &encode(&sign(erase, &key(2))), NOW), "unauthorized", "in scope, not in role");
}

#[test]
fn a_quorum_needs_that_many_admin_signatures_for_erase_and_key_changes() {
    let dir = tempfile::tempdir().unwrap();
    let deployer = Operator { role: Role::Deploy, ..Operator::admin(key(3).verifying_key()) };
    let ops = vec![Operator::admin(key(1).verifying_key()), Operator::admin(key(2).verifying_key()), deployer];
    let mut g = gate_with(dir.path(), Policy { quorum: 2, ..policy() }, ops);
    // Version 3: the envelope that carries cosignatures.
    let one = sign(Command { version: 3, payload: Payload::Erase, ..cmd(1) }, &key(1));
    let v = g.check(&encode(&one), NOW).unwrap();
    let msg = v.rejection().unwrap().to_string();
    assert!(msg.contains("erase needs 2 admin signatures") && msg.contains("has 1") && msg.contains("cosign"), "{msg}");
    // A deploy key's cosignature does not count; a second admin's does.
    let by_deployer = cosign(one.clone(), &key(3)).unwrap();
    assert_eq!(outcome(&mut g, &encode(&by_deployer), NOW), "unauthorized");
    let two = cosign(one, &key(2)).unwrap();
    assert!(accepted(&g.check(&encode(&two), NOW).unwrap()));
    // Other admin commands need one signature.
    assert!(accepted(&g.check(&encode(&sign(Command { payload: Payload::Restart, ..cmd(2) }, &key(1))), NOW).unwrap()));
}

#[test]
fn a_revoked_key_is_refused_even_while_configured() {
    let dir = tempfile::tempdir().unwrap();
    let ops = vec![Operator::admin(key(1).verifying_key()), Operator::admin(key(2).verifying_key())];
    let mut g = gate_with(dir.path(), policy(), ops.clone());
    let change = Change { command: "ab".into(), at_ms: NOW };
    g.operators_mut().revoke(&key_id(&key(2).verifying_key()), change).unwrap();
    let v = g.check(&encode(&sign(cmd(1), &key(2))), NOW).unwrap();
    let msg = v.rejection().unwrap().to_string();
    assert!(msg.starts_with("revoked: key") && msg.contains("by command ab"), "{msg}");
    // After a restart too.
    let mut g = gate_with(dir.path(), policy(), ops);
    assert_eq!(outcome(&mut g, &encode(&sign(cmd(2), &key(2))), NOW), "revoked");
    assert!(accepted(&g.check(&encode(&sign(cmd(3), &key(1))), NOW).unwrap()));
}

#[test]
fn a_key_added_by_command_is_trusted_with_its_rights() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = gate(dir.path());
    let grant = OperatorGrant {
        key: *key(5).verifying_key().as_bytes(),
        role: Role::Observe,
        groups: vec![],
        max_ttl_secs: None,
    };
    g.operators_mut().add(&grant, Change { command: "cd".into(), at_ms: NOW }).unwrap();
    assert!(accepted(&g.check(&encode(&sign(cmd(1), &key(5))), NOW).unwrap()));
    let restart = Command { payload: Payload::Restart, ..cmd(2) };
    assert_eq!(outcome(&mut g, &encode(&sign(restart, &key(5))), NOW), "unauthorized");
}

#[test]
fn a_command_for_another_fleet_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = gate_with(
        dir.path(),
        Policy { fleet: "prod".into(), ..policy() },
        vec![Operator::admin(operator().verifying_key())],
    );
    let v = g.check(&signed(cmd(1).for_fleet("staging")), NOW).unwrap();
    let msg = v.rejection().unwrap().to_string();
    assert!(msg.contains("\"staging\"") && msg.contains("\"prod\"") && msg.contains("--fleet"), "{msg}");
    assert_eq!(outcome(&mut g, &signed(cmd(2)), NOW), "wrong_fleet", "a command of the unnamed fleet");
    assert!(accepted(&g.check(&signed(cmd(3).for_fleet("prod")), NOW).unwrap()));
    // And a device of the unnamed fleet refuses a named one.
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(outcome(&mut gate(dir.path()), &signed(cmd(4).for_fleet("prod")), NOW), "wrong_fleet");
}

#[test]
fn authenticated_rejections_carry_the_command() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = gate(dir.path());
    let c = sign(Command { expires_at: NOW - 1, ..cmd(1) }, &operator());
    match g.check(&encode(&c), NOW).unwrap() {
        Verdict::Rejected { command: Some(got), .. } => assert_eq!(*got, c),
        v => panic!("{v:?}"),
    }
    match g.check(&encode(&sign(cmd(2), &key(9))), NOW).unwrap() {
        Verdict::Rejected { command: None, .. } => {}
        v => panic!("a forgery must not be believed: {v:?}"),
    }
}
