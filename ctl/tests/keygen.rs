//! `edgectl keygen`: the files, their modes, and that devices accept the public key.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use edge_agent::commands::parse_trusted_keys;
use edge_proto::command::{sign, Command as FleetCommand, Payload, SigningKey, Target};

fn keygen(out: &std::path::Path) -> std::process::Output {
    // No ctl.toml anywhere: keygen must not need one.
    Command::new(env!("CARGO_BIN_EXE_edgectl"))
        .args(["--config", "/nonexistent/ctl.toml", "keygen", "--out", out.to_str().unwrap()])
        .output()
        .unwrap()
}

#[test]
fn keygen_writes_a_private_key_only_its_owner_reads_and_a_public_key_devices_trust() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("keys");
    let run = keygen(&out);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));

    let key_meta = std::fs::metadata(out.join("operator.key")).unwrap();
    assert_eq!(key_meta.permissions().mode() & 0o777, 0o600);

    let public = std::fs::read_to_string(out.join("operator.pub")).unwrap();
    let trusted = parse_trusted_keys(&[public.trim().to_string()]).unwrap();

    // The secret file holds the seed of that very public key, and it signs commands the
    // public key verifies.
    let seed_hex = std::fs::read_to_string(out.join("operator.key")).unwrap();
    let seed: Vec<u8> =
        (0..64).step_by(2).map(|i| u8::from_str_radix(&seed_hex.trim()[i..i + 2], 16).unwrap()).collect();
    let key = SigningKey::from_bytes(&seed.try_into().unwrap());
    assert_eq!(key.verifying_key(), trusted[0]);
    let cmd = sign(FleetCommand::new([1; 16], 0, 1, Target::Device("d".into()), Payload::GetStatus), &key);
    edge_proto::command::verify(&edge_proto::encode(&cmd), &trusted).unwrap();
}

#[test]
fn keygen_refuses_to_overwrite_an_existing_key() {
    let dir = tempfile::tempdir().unwrap();
    assert!(keygen(dir.path()).status.success());
    let before = std::fs::read(dir.path().join("operator.key")).unwrap();
    let run = keygen(dir.path());
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("refusing to overwrite"), "{run:?}");
    assert_eq!(std::fs::read(dir.path().join("operator.key")).unwrap(), before);

    // Only the public half present: still refused, and no private key is written.
    let other = tempfile::tempdir().unwrap();
    std::fs::write(other.path().join("operator.pub"), "x").unwrap();
    assert!(!keygen(other.path()).status.success());
    assert!(!other.path().join("operator.key").exists());
}
