//! Who may do what, end to end: a real agent, a real Mosquitto over mutual TLS, commands
//! signed by edgectl's library with keys of different roles, scopes and fleets; key
//! changes by command; a quorum met by a saved and cosigned command; and an agent whose
//! clock (libfaketime) jumps ahead and back.

mod daemon;
mod operator;

use std::path::PathBuf;
use std::time::Duration;

use daemon::{setup, Agent, Setup};
use edge_proto::command::{hex, key_id, Command, OperatorGrant, Payload, Role, SigningKey, Target};
use edgectl::command::{now_ms, send_command, send_signed, signed_command, CommandRequest};
use edgectl::cosign;
use edgectl::keys::Signer;
use edgectl::link::Link;
use edgectl::track::{DeviceResult, Outcome};
use operator::{device, operator_key, operator_mqtt, ota_config, ready};

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn id_of(k: &SigningKey) -> String {
    hex(&key_id(&k.verifying_key()))
}

fn public(k: &SigningKey) -> String {
    hex(k.verifying_key().as_bytes())
}

fn signer(k: &SigningKey, fleet: &str) -> Signer {
    Signer { key: k.clone(), fleet: fleet.into(), cosignable: false }
}

/// Sends `payload` to `dev-1` signed by `by`; the device's one result.
async fn send(link: &mut Link, by: &Signer, payload: Payload) -> DeviceResult {
    let mut req = CommandRequest::new(device("dev-1"), payload);
    req.timeout = Duration::from_secs(20);
    let mut results = send_command(link, by, &req, |_| {}).await.expect("command sent").results;
    assert_eq!(results.len(), 1, "{results:?}");
    results.remove(0)
}

/// The reason of a rejection, or a panic naming what happened instead.
fn rejected(r: &DeviceResult) -> &str {
    match &r.outcome {
        Outcome::Rejected(reason) => reason,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

fn succeeded(r: &DeviceResult) {
    assert!(matches!(r.outcome, Outcome::Succeeded), "{:?}", r.outcome);
}

/// `dev-1` in group `lab` of fleet `prod`, with `ota` appended to its `[ota]` table.
async fn agent(s: &Setup, ota: &str, env: &[(&str, &str)]) -> (Agent, PathBuf) {
    let (config, http) = ota_config(s, "dev-1", &["lab"], &format!("fleet_id = \"prod\"\n{ota}"), "");
    let agent = Agent::start_with(&config, &http, env);
    ready(&agent).await;
    (agent, config)
}

fn operators(entries: &[(&SigningKey, &str, &str)]) -> String {
    entries
        .iter()
        .map(|(k, role, groups)| {
            format!("[[ota.operators]]\nkey = \"{}\"\nroles = [\"{role}\"]\ngroups = [{groups}]\n", public(k))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn roles_scopes_fleets_and_key_changes() {
    let s = setup();
    let (observer, cameras, second) = (key(2), key(3), key(4));
    let ota = operators(&[(&observer, "observe", ""), (&cameras, "deploy", "\"cameras\""), (&second, "admin", "")]);
    let (agent, config) = agent(&s, &ota, &[]).await;
    let mut link = Link::connect(&operator_mqtt(&s)).await.unwrap();
    let admin = signer(&operator_key(), "prod");

    // An observe key reads, and may not erase: the ack names the key, its role and the
    // right it lacks.
    succeeded(&send(&mut link, &signer(&observer, "prod"), Payload::GetStatus).await);
    let r = send(&mut link, &signer(&observer, "prod"), Payload::Erase).await;
    assert_eq!(
        rejected(&r),
        format!("unauthorized: key {} (observe) may not erase (needs role admin)", id_of(&observer))
    );

    // A deploy key scoped to the cameras group, for a device outside it.
    let r = send(&mut link, &signer(&cameras, "prod"), Payload::Rollback { name: "m".into() }).await;
    let reason = rejected(&r);
    assert!(reason.contains("(deploy, for cameras) may not target device dev-1"), "{reason}");

    // Another fleet's command, and one of the unnamed fleet.
    let r = send(&mut link, &signer(&operator_key(), "staging"), Payload::GetStatus).await;
    assert!(rejected(&r).starts_with("wrong fleet: the command is for fleet \"staging\""), "{r:?}");
    let r = send(&mut link, &signer(&operator_key(), ""), Payload::GetStatus).await;
    assert!(rejected(&r).contains("this device is in fleet \"prod\""), "{r:?}");

    // Revocation by an admin command: the revoked key is refused from then on, also
    // after a restart with the key still in the configuration.
    succeeded(&send(&mut link, &signer(&second, "prod"), Payload::GetStatus).await);
    let revoke = Payload::RevokeKey { key_id: key_id(&second.verifying_key()) };
    succeeded(&send(&mut link, &admin, revoke).await);
    let r = send(&mut link, &signer(&second, "prod"), Payload::GetStatus).await;
    assert!(rejected(&r).starts_with(&format!("revoked: key {} was revoked by command", id_of(&second))), "{r:?}");

    // Rotation: a key added by command works with the role it was given.
    let fresh = key(5);
    let grant = OperatorGrant {
        key: *fresh.verifying_key().as_bytes(),
        role: Role::Deploy,
        groups: vec![],
        max_ttl_secs: None,
    };
    succeeded(&send(&mut link, &admin, Payload::AddOperator(grant)).await);
    succeeded(&send(&mut link, &signer(&fresh, "prod"), Payload::GetStatus).await);
    let r = send(&mut link, &signer(&fresh, "prod"), Payload::Restart).await;
    assert!(rejected(&r).contains("(deploy) may not restart"), "{r:?}");

    let metrics = agent.metrics();
    let unauthorized = r#"edge_agent_commands_total{command="erase",outcome="rejected",reason="unauthorized"} 1"#;
    assert!(metrics.contains(unauthorized), "{metrics}");
    assert!(metrics.contains(r#"reason="wrong_fleet"} 2"#), "{metrics}");
    let log = agent.stop();
    // The audit trail names the key of every command judged.
    let audit: Vec<&str> = log.lines().filter(|l| l.contains("audit")).collect();
    assert!(
        audit.iter().any(|l| l.contains("command rejected") && l.contains(&id_of(&observer)) && l.contains("erase")),
        "{log}"
    );
    assert!(audit.iter().any(|l| l.contains("command accepted") && l.contains("revoke-key")), "{log}");

    let http = daemon::free_addr();
    let text = std::fs::read_to_string(&config).unwrap();
    let old_http = text.lines().find(|l| l.starts_with("listen")).unwrap().to_string();
    std::fs::write(&config, text.replace(&old_http, &format!("listen = \"{http}\""))).unwrap();
    let agent = Agent::start(&config, &http);
    ready(&agent).await;
    let r = send(&mut link, &signer(&second, "prod"), Payload::GetStatus).await;
    assert!(rejected(&r).starts_with("revoked:"), "{r:?}");
    succeeded(&send(&mut link, &signer(&fresh, "prod"), Payload::GetStatus).await);
    link.close().await;
    drop(agent);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_quorum_erase_goes_through_once_cosigned() {
    let s = setup();
    let second = key(4);
    let ota = format!("quorum = 2\n{}", operators(&[(&second, "admin", "")]));
    let (_agent, _) = agent(&s, &ota, &[]).await;
    let mut link = Link::connect(&operator_mqtt(&s)).await.unwrap();

    // One admin alone is refused.
    let r = send(&mut link, &signer(&operator_key(), "prod"), Payload::Erase).await;
    let reason = rejected(&r);
    assert!(reason.contains("erase needs 2 admin signatures") && reason.contains("edgectl cosign"), "{reason}");

    // Saved for cosigning by the first, cosigned by the second, sent by anyone.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("erase.cmd");
    let first = Signer { cosignable: true, ..signer(&operator_key(), "prod") };
    let (cmd, _) = signed_command(
        [77; 16],
        now_ms(),
        Duration::from_secs(300),
        device("dev-1"),
        Payload::Erase,
        &first,
        1 << 20,
        "",
    )
    .unwrap();
    cosign::save(&file, &cmd).unwrap();
    cosign::cosign_file(&file, &signer(&second, "prod")).unwrap();
    let (cmd, bytes) = cosign::load(&file).unwrap();
    assert_eq!(cmd.signers().count(), 2);
    let mut req = CommandRequest::new(cmd.target.clone(), cmd.payload.clone());
    req.timeout = Duration::from_secs(30);
    let outcome = send_signed(&mut link, &cmd, bytes, &req, |_| {}).await.unwrap();
    assert_eq!(outcome.results.len(), 1);
    succeeded(&outcome.results[0]);
    link.close().await;
}

/// libfaketime for this machine's architecture, if installed (scripts/setup.sh installs it).
fn libfaketime() -> Option<PathBuf> {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "x86_64-linux-gnu",
        "aarch64" => "aarch64-linux-gnu",
        "arm" => "arm-linux-gnueabihf",
        _ => return None,
    };
    let path = PathBuf::from(format!("/usr/lib/{arch}/faketime/libfaketimeMT.so.1"));
    path.exists().then_some(path)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_command_stays_refused_when_the_clock_goes_back() {
    let Some(lib) = libfaketime() else {
        // Under qemu-user the test binary is a foreign architecture without its libfaketime;
        // on the build machine scripts/setup.sh installs it, and its absence fails the test.
        assert!(std::env::var_os("QEMU_LD_PREFIX").is_some(), "libfaketime is not installed: run scripts/setup.sh");
        eprintln!("skipped: no libfaketime for {}", std::env::consts::ARCH);
        return;
    };
    let s = setup();
    let clock = s.dir.path().join("faketime");
    std::fs::write(&clock, "+0\n").unwrap();
    let env = [
        ("LD_PRELOAD", lib.to_str().unwrap()),
        ("FAKETIME_TIMESTAMP_FILE", clock.to_str().unwrap()),
        ("FAKETIME_NO_CACHE", "1"),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
    ];
    let (_agent, _) = agent(&s, "", &env).await;
    let mut link = Link::connect(&operator_mqtt(&s)).await.unwrap();
    let admin = signer(&operator_key(), "prod");
    let hour = 3_600_000;

    // A command valid for a minute, accepted now.
    let now = now_ms();
    let sign = |id: u8, issued: u64, expires: u64| {
        let cmd = admin.sign(Command::new([id; 16], issued, expires, device("dev-1"), Payload::GetStatus));
        (cmd.clone(), edge_proto::encode(&cmd))
    };
    let (first, first_bytes) = sign(1, now, now + 60_000);
    let req = |c: &Command| {
        let mut r = CommandRequest::new(Target::Device("dev-1".into()), c.payload.clone());
        r.timeout = Duration::from_secs(20);
        r
    };
    let outcome = send_signed(&mut link, &first, first_bytes.clone(), &req(&first), |_| {}).await.unwrap();
    succeeded(&outcome.results[0]);

    // The device's clock jumps two hours ahead; a command issued then is accepted, and
    // the first one, long expired, leaves the replay window.
    std::fs::write(&clock, "+2h\n").unwrap();
    let (second, second_bytes) = sign(2, now + 2 * hour, now + 2 * hour + 60_000);
    let outcome = send_signed(&mut link, &second, second_bytes, &req(&second), |_| {}).await.unwrap();
    succeeded(&outcome.results[0]);

    // The clock goes back to the true time, when the first command looks unexpired: it
    // is refused as expired, judged against the latest time the device has accepted.
    std::fs::write(&clock, "+0\n").unwrap();
    let outcome = send_signed(&mut link, &first, first_bytes, &req(&first), |_| {}).await.unwrap();
    match &outcome.results[0].outcome {
        Outcome::Rejected(reason) => assert!(reason.starts_with("expired at"), "{reason}"),
        other => panic!("a command replayed after the clock went back was not refused: {other:?}"),
    }
    // In this simulation true time is two hours on (the operator signed the second command
    // then); a fresh command signed now goes through, though the device's clock is behind.
    let (third, third_bytes) = sign(3, now + 2 * hour + 1_000, now + 2 * hour + 120_000);
    let outcome = send_signed(&mut link, &third, third_bytes, &req(&third), |_| {}).await.unwrap();
    succeeded(&outcome.results[0]);
    link.close().await;
}
