//! edgectl's conventions that need no devices: where it finds its configuration, what it
//! exits with when the broker is unreachable, its completions and man pages.

use std::path::Path;
use std::process::{Command, Output};

/// edgectl in `cwd` with a clean environment but `vars`.
fn edgectl(cwd: &Path, vars: &[(&str, &Path)], args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_edgectl"));
    cmd.current_dir(cwd).env_clear().args(args);
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// A configuration for a broker nobody listens on (plaintext, so no certificates are
/// needed to get as far as connecting).
fn unreachable_config(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    std::fs::write(
        path,
        format!(
            "[mqtt]\nurl = \"mqtt://127.0.0.1:{port}\"\nallow_insecure = true\nca_file = \"ca.pem\"\n\
             cert_file = \"op.pem\"\nkey_file = \"op.key\"\n"
        ),
    )
    .unwrap();
}

#[test]
fn the_configuration_is_found_in_the_xdg_directory_and_through_edgectl_config() {
    let home = tempfile::tempdir().unwrap();
    let cwd = tempfile::tempdir().unwrap();
    unreachable_config(&home.path().join(".config/edgectl/ctl.toml"));
    // Found under $HOME/.config: edgectl gets as far as the broker, which is not there.
    let out = edgectl(cwd.path(), &[("HOME", home.path())], &["status", "--wait", "1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("connecting to mqtt://127.0.0.1:"), "{stderr}");
    // ... which is exit status 3, "retry later", not 2.
    assert_eq!(out.status.code(), Some(3), "{stderr}");

    let elsewhere = cwd.path().join("fleets/lab.toml");
    unreachable_config(&elsewhere);
    let out = edgectl(cwd.path(), &[("EDGECTL_CONFIG", &elsewhere)], &["status", "--wait", "1"]);
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));

    // A missing file named by EDGECTL_CONFIG is named in the error, exit 2.
    let missing = cwd.path().join("nope.toml");
    let out = edgectl(cwd.path(), &[("EDGECTL_CONFIG", &missing)], &["status"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("nope.toml"), "{stderr}");
}

#[test]
fn no_configuration_anywhere_exits_2_with_the_places_searched() {
    let home = tempfile::tempdir().unwrap();
    let cwd = tempfile::tempdir().unwrap();
    if Path::new("/etc/edgectl/ctl.toml").exists() {
        eprintln!("SKIPPED: /etc/edgectl/ctl.toml exists on this machine");
        return;
    }
    let out = edgectl(cwd.path(), &[("HOME", home.path())], &["status"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(".config/edgectl/ctl.toml") && stderr.contains("/etc/edgectl/ctl.toml"), "{stderr}");
    assert!(stderr.contains("EDGECTL_CONFIG"), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
}

#[test]
fn completions_and_man_pages_cover_every_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let out = edgectl(dir.path(), &[], &["completions", "bash"]);
    assert!(out.status.success());
    let script = String::from_utf8_lossy(&out.stdout);
    for word in ["edgectl", "deploy", "rollback", "get-status", "--json", "--validate-input"] {
        assert!(script.contains(word), "bash completion lacks {word}");
    }
    let man = dir.path().join("man");
    let out = edgectl(dir.path(), &[], &["man", "--out", man.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for page in ["edgectl.1", "edgectl-deploy.1", "edgectl-cmd.1", "edgectl-cmd-erase.1", "edgectl-watch.1"] {
        let text = std::fs::read_to_string(man.join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.starts_with(".ie") || text.contains(".TH"), "{page} is not a man page");
    }
    let deploy = std::fs::read_to_string(man.join("edgectl-deploy.1")).unwrap();
    assert!(deploy.contains("validate\\-input"), "the deploy page documents its flags");
    // The hidden `man` command itself has no page.
    assert!(!man.join("edgectl-man.1").exists());
}

#[test]
fn a_certificate_the_broker_refuses_exits_2_not_retry_later() {
    let dir = tempfile::tempdir().unwrap();
    let pki = edge_it::Pki::generate(&dir.path().join("pki")).unwrap();
    let broker = edge_it::Broker::start(&pki).unwrap();
    let rogue = pki.rogue_client("operator").unwrap();
    let ctl = dir.path().join("ctl.toml");
    std::fs::write(
        &ctl,
        format!(
            "[mqtt]\nurl = \"{}\"\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            broker.url(),
            pki.ca_pem().display(),
            rogue.cert.display(),
            rogue.key.display()
        ),
    )
    .unwrap();
    let out = edgectl(dir.path(), &[("EDGECTL_CONFIG", &ctl)], &["status", "--wait", "1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("connecting to"), "{stderr}");
}
