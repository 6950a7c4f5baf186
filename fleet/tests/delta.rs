//! Delta transfers end to end, with real parts: a real Mosquitto, `edge-fleet` on SQLite,
//! the real `edgectl` and a real `edge-agent` that installs a real ONNX model, then newer
//! versions of it that share all but their last bytes. The device copies the chunks it
//! already holds from the version it has installed and is sent only the rest, through the
//! fleet service and through a direct `edgectl deploy`.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use edge_proto::deployments::Deployment;

/// 316 kB: in chunks of at most 16 kB (8 kB on average), about 40 of them.
const MODEL: &str = "openwakeword-js__hello_deepa.onnx";

/// `model` with `note` appended as the ONNX `ModelProto.doc_string` (field 6): the same
/// network, a file that differs from the original only at its end, as a version whose last
/// initializers were retrained would (a later field wins when a protobuf field repeats).
fn with_doc_string(dir: &Path, model: &Path, note: &str) -> PathBuf {
    let mut bytes = std::fs::read(model).unwrap();
    bytes.push(6 << 3 | 2);
    let mut len = note.len();
    loop {
        let low = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            bytes.push(low);
            break;
        }
        bytes.push(low | 0x80);
    }
    bytes.extend_from_slice(note.as_bytes());
    let path = dir.join(format!("model-{}.onnx", next_number()));
    std::fs::write(&path, bytes).unwrap();
    path
}

/// The deployment once the sender's byte count has caught up with its devices.
fn settled_bytes(fleet: &Fleet, id: &str) -> Deployment {
    let mut last = 0;
    let mut d = deployment(fleet, id);
    // The sender adds its counts about once a second: wait until two looks agree.
    for _ in 0..20 {
        std::thread::sleep(std::time::Duration::from_millis(1500));
        d = deployment(fleet, id);
        if d.bytes_sent > 0 && d.bytes_sent == last {
            break;
        }
        last = d.bytes_sent;
    }
    d
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse::<f64>().ok()))
        .unwrap_or_else(|| panic!("{name} not in:\n{text}")) as u64
}

#[test]
fn a_new_version_sends_only_the_chunks_the_device_does_not_hold() {
    let s = setup();
    let listen = free_addr();
    let db = format!("sqlite://{}", s.dir.path().join("fleet.db").display());
    let fleet = Fleet::start(&fleet_toml(&s, &db, &listen), &listen);
    let ctl = ctl_toml(&s, Some(&format!("http://{listen}")));
    let agent = Agent::start(&s, "mic-1", &["mics"], "");
    until_online(&fleet, &ctl, "mic-1");
    let base = model_path(MODEL);
    let model = |m: &Path| m.to_str().unwrap().to_string();
    let deploy_version = |file: &Path, version: &str, extra: &[&str]| {
        let m = model(file);
        let args = ["--group", "mics", "--model", &m, "--name", "wake", "--version", version, "--chunk-size", "16384"];
        deploy(&ctl, &[&args[..], extra].concat())
    };

    // The first version: nothing to copy from, every chunk is sent.
    let v1 = deploy_version(&base, "1", &[]);
    until_state(&fleet, Some(&agent), &v1.id, "mic-1", "succeeded");
    let first = settled_bytes(&fleet, &v1.id);
    assert!(first.bytes_sent >= first.artifact_bytes, "a full copy for the first version: {first:#?}");

    // The second shares all but its end: only the chunks at the end travel.
    let file2 = with_doc_string(s.dir.path(), &base, &"retrained head, version 2. ".repeat(200));
    let v2 = deploy_version(&file2, "2", &[]);
    until_state(&fleet, Some(&agent), &v2.id, "mic-1", "succeeded");
    let second = settled_bytes(&fleet, &v2.id);
    assert!(
        second.bytes_sent > 0 && second.bytes_sent * 5 < second.artifact_bytes,
        "{} of {} bytes sent for a version that differs in its last 5 kB: {second:#?}",
        second.bytes_sent,
        second.artifact_bytes
    );
    let device = second.devices.iter().find(|p| p.device == "mic-1").unwrap();
    assert_eq!(device.bytes_sent, second.bytes_sent);
    let log = agent.log();
    assert!(log.contains("delta: chunks copied from installed versions"), "{log}");
    let metrics = http_get(&agent.http, "/metrics").unwrap().1;
    let held = metric(&metrics, "edge_agent_ota_held_bytes_total ");
    assert!(held * 10 > second.artifact_bytes * 7, "copied {held} of {} bytes", second.artifact_bytes);
    fleet.until("the inventory shows wake 2 active", || {
        active_version(&devices(&ctl), "mic-1", "wake").as_deref() == Some("2")
    });
    let shown = edgectl(&ctl, &["deployments", "show", &v2.id]);
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(text.contains(&format!("sent: {} chunk bytes to 1 device(s)", second.bytes_sent)), "{text}");

    // The same through a direct deploy (edgectl serves the transfer itself): what it
    // publishes is what the device lacks, against a fixed-chunk deploy of the same file.
    let file3 = with_doc_string(s.dir.path(), &base, &"retrained head, version 3. ".repeat(200));
    let direct = |file: &Path, version: &str, chunking: &str| -> serde_json::Value {
        let m = model(file);
        let out = edgectl(
            &ctl,
            &[
                "--json",
                "deploy",
                "--direct",
                "--device",
                "mic-1",
                "--model",
                &m,
                "--name",
                "wake",
                "--version",
                version,
                "--chunk-size",
                "16384",
                "--chunking",
                chunking,
                "--wait",
            ],
        );
        assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stderr), agent.log());
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let delta = direct(&file3, "3", "content");
    let fixed = direct(&file3, "4", "fixed");
    let published = |v: &serde_json::Value| v["transfer"]["bytes_published"].as_u64().unwrap();
    let artifact = delta["transfer"]["artifact_bytes"].as_u64().unwrap();
    assert!(published(&delta) * 5 < artifact, "delta: {delta:#}");
    assert!(published(&fixed) >= artifact, "fixed chunks send everything: {fixed:#}");
    assert_eq!(delta["ok"], true, "{delta:#}");
    drop(agent);
}
