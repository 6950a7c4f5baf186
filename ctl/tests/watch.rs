//! `edgectl watch` and `edgectl status` against a real broker and a running agent.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use edge_it::{Broker, Pki};

fn write_ctl_config(dir: &Path, pki: &Pki, broker: &Broker) -> PathBuf {
    let op = pki.client("operator").unwrap();
    let path = dir.join("ctl.toml");
    std::fs::write(
        &path,
        format!(
            "[mqtt]\nurl = \"{}\"\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            broker.url(),
            pki.ca_pem().display(),
            op.cert.display(),
            op.key.display()
        ),
    )
    .unwrap();
    path
}

fn agent_config(dir: &Path, pki: &Pki, broker: &Broker, device: &str) -> edge_agent::config::Config {
    let files = pki.client(device).unwrap();
    let http = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let text = format!(
        "device_id = \"{device}\"\nstate_dir = \"{}\"\n[mqtt]\nurl = \"{}\"\nca_file = \"{}\"\n\
         cert_file = \"{}\"\nkey_file = \"{}\"\n[telemetry]\ninterval_secs = 1\n[http]\nlisten = \"{http}\"\n",
        dir.join("state").display(),
        broker.url(),
        pki.ca_pem().display(),
        files.cert.display(),
        files.key.display()
    );
    edge_agent::config::Config::parse(&text, &dir.join("agent.toml"), |_| None).unwrap()
}

#[test]
fn watch_json_prints_the_fields_scripts_rely_on_and_status_lists_the_device() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(&dir.path().join("pki")).unwrap();
    let broker = Broker::start(&pki).unwrap();
    let config = agent_config(dir.path(), &pki, &broker, "dev-7");
    // The agent runs in this process, on its own runtime thread.
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    runtime.spawn(edge_agent::daemon::run(config, None, None));
    let ctl = write_ctl_config(dir.path(), &pki, &broker);

    let out = Command::new(env!("CARGO_BIN_EXE_edgectl"))
        .args(["--config", ctl.to_str().unwrap(), "watch", "--device", "dev-7", "--count", "2", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(lines.len(), 2);
    for v in &lines {
        assert_eq!(v["device"], "dev-7");
        assert!(v["seq"].is_u64() && v["ts"].is_u64());
        assert!(v["cpu"]["total_pct"].is_number());
        assert!(v["mem"]["used_bytes"].as_u64().unwrap() > 0);
        assert!(v["agent"]["rss_bytes"].as_u64().unwrap() > 0);
    }
    assert_eq!(lines[1]["seq"].as_u64().unwrap(), lines[0]["seq"].as_u64().unwrap() + 1);

    let out = Command::new(env!("CARGO_BIN_EXE_edgectl"))
        .args(["--config", ctl.to_str().unwrap(), "status", "--wait", "2"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let table = String::from_utf8_lossy(&out.stdout);
    let row = table.lines().find(|l| l.starts_with("dev-7")).unwrap_or_else(|| panic!("dev-7 not listed:\n{table}"));
    assert!(row.contains("online") && row.contains(env!("CARGO_PKG_VERSION")), "{row}");
    runtime.shutdown_timeout(Duration::from_secs(1));
}

#[test]
fn watch_refuses_a_missing_config_with_one_line() {
    let out = Command::new(env!("CARGO_BIN_EXE_edgectl"))
        .args(["--config", "/nonexistent/ctl.toml", "watch"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("/nonexistent/ctl.toml"), "{err}");
}
