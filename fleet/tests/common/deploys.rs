//! Agents and `edgectl` as the deployment tests drive them: `edge-agent run` processes that
//! trust the operator key, and the deployment calls through the real `edgectl` binary.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use edge_proto::command::hex;
use edge_proto::deployments::Deployment;
use edge_proto::inventory::Device;

use super::*;

/// A model from `models/`.
pub fn model_path(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models").join(file)
}

/// `edge-agent run` for `device` in `groups`, trusting the operator key, with `ota` added to
/// its `[ota]` table; killed on drop.
pub struct Agent {
    child: Child,
    log: PathBuf,
    /// Its local HTTP API (`/metrics`).
    pub http: String,
}

impl Agent {
    pub fn start(s: &Setup, device: &str, groups: &[&str], ota: &str) -> Agent {
        let files = s.pki.client(device).unwrap();
        let groups: Vec<String> = groups.iter().map(|g| format!("\"{g}\"")).collect();
        let listen = free_addr();
        let config = s.dir.path().join(format!("{device}.toml"));
        std::fs::write(
            &config,
            format!(
                "device_id = \"{device}\"\nstate_dir = \"{state}\"\ngroups = [{groups}]\n\
                 [mqtt]\nurl = \"{url}\"\nca_file = \"{ca}\"\ncert_file = \"{cert}\"\nkey_file = \"{key}\"\n\
                 keep_alive_secs = 5\nreconnect_max_secs = 1\n\
                 [telemetry]\ninterval_secs = 5\n[http]\nlisten = \"{listen}\"\n\
                 [ota]\ntrusted_keys = [\"{pubkey}\"]\nstall_secs = 1\n{window}{ota}\n",
                // A one-second trial unless the test sets its own window.
                window = if ota.contains("health_window_secs") { "" } else { "health_window_secs = 1\n" },
                state = s.dir.path().join(format!("state-{device}")).display(),
                groups = groups.join(", "),
                url = s.broker.url(),
                ca = s.pki.ca_pem().display(),
                cert = files.cert.display(),
                key = files.key.display(),
                pubkey = hex(operator_key().verifying_key().as_bytes()),
            ),
        )
        .unwrap();
        let log = s.dir.path().join(format!("{device}-{}.log", next_number()));
        let child = Command::new(agent_exe())
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Agent { child, log, http: listen }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn edgectl(ctl: &Path, args: &[&str]) -> Output {
    Command::new(edgectl_exe()).arg("--config").arg(ctl).args(args).output().unwrap()
}

/// `edgectl --json deploy ARGS`: the deployment as the service stored it.
pub fn deploy(ctl: &Path, args: &[&str]) -> Deployment {
    let mut all = vec!["--json", "deploy"];
    all.extend_from_slice(args);
    let out = edgectl(ctl, &all);
    assert!(out.status.success(), "edgectl {all:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("edgectl deploy --json: {e}: {}", String::from_utf8_lossy(&out.stdout)))
}

pub fn deployment(fleet: &Fleet, id: &str) -> Deployment {
    let (code, body) = http_get(&fleet.listen, &format!("/v1/deployments/{id}")).expect("the service answers");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

pub fn state_of(d: &Deployment, device: &str) -> Option<String> {
    d.devices.iter().find(|p| p.device == device).map(|p| p.state.clone())
}

/// Waits until `device`'s state in deployment `id` is `want`, failing with both logs.
pub fn until_state(fleet: &Fleet, agent: Option<&Agent>, id: &str, device: &str, want: &str) -> Deployment {
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let d = deployment(fleet, id);
        if state_of(&d, device).as_deref() == Some(want) {
            return d;
        }
        assert!(
            Instant::now() < end,
            "{device} not {want} in {id}: {d:#?}\nedge-fleet log:\n{}\nagent log:\n{}",
            fleet.log(),
            agent.map(Agent::log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

pub fn devices(ctl: &Path) -> Vec<Device> {
    let out = edgectl(ctl, &["--json", "devices"]);
    assert!(out.status.success(), "edgectl devices: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

pub fn active_version(devices: &[Device], device: &str, model: &str) -> Option<String> {
    devices.iter().find(|d| d.device == device)?.models.iter().find(|m| m.name == model)?.active_version.clone()
}

pub fn until_online(fleet: &Fleet, ctl: &Path, device: &str) {
    fleet.until(&format!("{device} is online in the inventory"), || {
        devices(ctl).iter().any(|d| d.device == device && d.online)
    });
}
