//! Staged rollouts end to end, with real parts: a real Mosquitto (shipped configuration and
//! ACL, mutual TLS), `edge-fleet` as a process, real `edge-agent` processes serving live
//! requests on their local API, and the real `edgectl rollout` in the foreground.
//!
//! The devices' own health checks are set loose (a latency ratio of 1000), so what halts a
//! rollout here is the fleet service's gate, comparing the new version with the old one on
//! the same devices from their telemetry.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use common::*;
use edge_proto::rollouts::{Rollout, RolloutState, VersionReport};

/// Version 1, and the good version 3: the same small model (`input_1`, 1x256x256x3).
const FAST: &str = "mediapipe__hand_recrop.tflite";
/// The slow version 2: a model with the same input, several times the work per request
/// (about 5x in a debug build, 10x in release).
const SLOW: &str = "mediapipe__selfie_segmentation.tflite";
const INPUT: &str = "mediapipe__hand_recrop.input.npy";

/// Loose device health (the fleet judges), and a trial long enough for it to judge.
const OTA: &str = "health_window_secs = 600\nhealth_max_latency_ratio = 1000.0\nhealth_max_error_increase = 1.0\n";

/// Requests to `model` on each agent, one after the other with a pause, until dropped.
struct Traffic {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<u64>>,
}

impl Traffic {
    fn start(agents: &[&Agent], model: &str) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let body = std::fs::read(model_path(INPUT)).unwrap();
        let threads = agents
            .iter()
            .map(|a| {
                let (stop, body, addr, path) =
                    (stop.clone(), body.clone(), a.http.clone(), format!("/v1/models/{model}:predict"));
                std::thread::spawn(move || {
                    let mut answered = 0;
                    while !stop.load(Ordering::Relaxed) {
                        if post_npy(&addr, &path, &body) == Some(200) {
                            answered += 1;
                        }
                        std::thread::sleep(Duration::from_millis(150));
                    }
                    answered
                })
            })
            .collect();
        Traffic { stop, threads }
    }

    /// Stops and returns the answered requests per agent.
    fn stop(self) -> Vec<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads.into_iter().map(|t| t.join().unwrap()).collect()
    }
}

/// `POST path` with an `.npy` body; the status.
fn post_npy(addr: &str, path: &str, body: &[u8]) -> Option<u16> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    write!(
        s,
        "POST {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/x-npy\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .ok()?;
    s.write_all(body).ok()?;
    let mut text = Vec::new();
    s.read_to_end(&mut text).ok()?;
    String::from_utf8_lossy(&text).split(' ').nth(1)?.parse().ok()
}

/// The newest rollout, once there is one.
fn newest_rollout(fleet: &Fleet) -> Option<Rollout> {
    let (code, body) = http_get(&fleet.listen, "/v1/rollouts")?;
    assert_eq!(code, 200, "{body}");
    let all: Vec<Rollout> = serde_json::from_str(&body).unwrap();
    all.into_iter().next()
}

/// `edgectl rollout ARGS` in the foreground, on a thread.
fn rollout(ctl: &Path, args: &[&str]) -> JoinHandle<Output> {
    let mut all = vec!["rollout".to_string()];
    all.extend(args.iter().map(|a| a.to_string()));
    let ctl = ctl.to_path_buf();
    std::thread::spawn(move || {
        let args: Vec<&str> = all.iter().map(String::as_str).collect();
        edgectl(&ctl, &args)
    })
}

fn text(out: &Output) -> String {
    format!("stdout:\n{}\nstderr:\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn a_slow_version_halts_at_the_canary_and_a_good_one_goes_through_every_wave() {
    let s = setup();
    let listen = free_addr();
    let db = format!("sqlite://{}", s.dir.path().join("fleet.db").display());
    let fleet = Fleet::start(&fleet_toml(&s, &db, &listen), &listen);
    let ctl = ctl_toml(&s, Some(&format!("http://{listen}")));
    let names = ["cam-1", "cam-2", "cam-3"];
    let agents: Vec<Agent> = names.iter().map(|d| Agent::start(&s, d, &["cams"], OTA)).collect();
    for d in names {
        until_online(&fleet, &ctl, d);
    }
    let fast = model_path(FAST);
    let slow = model_path(SLOW);
    let (fast, slow) = (fast.to_str().unwrap(), slow.to_str().unwrap());
    // Version 1 everywhere, the plain way (a one-wave deployment).
    let v1 = deploy(&ctl, &["--group", "cams", "--model", fast, "--name", "hand", "--version", "1"]);
    fleet.until("every camera serves hand 1", || {
        let all = devices(&ctl);
        names.iter().all(|d| active_version(&all, d, "hand").as_deref() == Some("1"))
    });
    let _ = v1;
    let refs: Vec<&Agent> = agents.iter().collect();
    let traffic = Traffic::start(&refs, "hand");

    // Version 2 is several times slower on the same inputs: the canary wave halts.
    let gates = ["--waves", "1,50%,100%", "--min-requests", "5", "--wave-timeout", "240"];
    let mut args = vec!["--group", "cams", "--model", slow, "--name", "hand", "--version", "2"];
    args.extend_from_slice(&gates);
    args.extend_from_slice(&["--max-p95-ratio", "2"]);
    let run = rollout(&ctl, &args);
    let started = loop {
        if let Some(r) = newest_rollout(&fleet).filter(|r| r.version == "2") {
            break r;
        }
        if run.is_finished() {
            panic!("edgectl rollout ended before storing it: {}", text(&run.join().unwrap()));
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let canary = started.waves[0].devices.clone();
    assert_eq!(canary.len(), 1, "{started:#?}");
    let canary = canary[0].clone();
    let out = run.join().unwrap();
    assert!(!out.status.success(), "a halted rollout exits non-zero: {}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("wave 1: failed: p95"), "{}", text(&out));
    let halted = newest_rollout(&fleet).unwrap();
    assert_eq!(halted.state, RolloutState::Halted, "{halted:#?}");
    let figures = halted.waves[0].figures.clone().expect("the failed wave's figures");
    assert!(figures.p95_ratio().unwrap() > 2.0 && figures.requests >= 5, "{figures:?}");
    // The canary goes back to version 1 (the signed cancel ended its trial).
    fleet.until("the canary is back on version 1", || {
        active_version(&devices(&ctl), &canary, "hand").as_deref() == Some("1")
    });
    // The other members never received version 2: no row in its deployment, no command in
    // their logs, and still version 1, two fleet ticks later.
    std::thread::sleep(Duration::from_secs(11));
    let d = deployment(&fleet, &halted.id);
    assert_eq!(d.devices.iter().map(|p| p.device.as_str()).collect::<Vec<_>>(), [canary.as_str()], "{d:#?}");
    assert_eq!(d.state, "cancelled");
    let all = devices(&ctl);
    for (name, agent) in names.iter().zip(&agents) {
        assert_eq!(active_version(&all, name, "hand").as_deref(), Some("1"), "{name}");
        if *name != canary {
            assert!(!agent.log().contains(&halted.id), "{name} saw the rollout's command:\n{}", agent.log());
        }
    }
    let status = edgectl(&ctl, &["rollout", "status", &halted.id]);
    let status_text = String::from_utf8_lossy(&status.stdout);
    assert!(
        status_text.contains("halted") && status_text.contains(&canary) && status_text.contains("p95"),
        "{status_text}"
    );

    // Version 3 is as fast as version 1: every wave passes and every member runs it.
    let mut args = vec!["--group", "cams", "--model", fast, "--name", "hand", "--version", "3"];
    args.extend_from_slice(&gates);
    // A looser gate than version 2's: three busy debug agents on two cores can move a p95 by
    // a bucket (histogram buckets double), and this wave is about passing when nothing is
    // wrong.
    args.extend_from_slice(&["--max-p95-ratio", "4"]);
    let out = rollout(&ctl, &args).join().unwrap();
    assert!(out.status.success(), "{}\nedge-fleet log:\n{}", text(&out), fleet.log());
    let stdout = String::from_utf8_lossy(&out.stdout);
    for wave in 1..=3 {
        assert!(stdout.contains(&format!("wave {wave}: passed")), "{}", text(&out));
    }
    let done = newest_rollout(&fleet).unwrap();
    assert_eq!((done.version.as_str(), done.state), ("3", RolloutState::Completed), "{done:#?}");
    fleet.until("every camera serves hand 3", || {
        let all = devices(&ctl);
        names.iter().all(|d| active_version(&all, d, "hand").as_deref() == Some("3"))
    });
    let answered = traffic.stop();
    assert!(answered.iter().all(|&n| n > 0), "{answered:?}");

    // A/B across the fleet: the slow version's latency against the others', side by side.
    let out = edgectl(&ctl, &["--json", "compare", "hand"]);
    assert!(out.status.success(), "{}", text(&out));
    let report: VersionReport = serde_json::from_slice(&out.stdout).unwrap();
    let version = |v: &str| report.versions.iter().find(|x| x.version == v).unwrap_or_else(|| panic!("{report:#?}"));
    let (v1, v2, v3) = (version("1"), version("2"), version("3"));
    assert_eq!((v1.devices, v2.devices, v3.devices, v3.active_on), (3, 1, 3, 3), "{report:#?}");
    assert!(v2.p95_ms.unwrap() > 2.0 * v1.p95_ms.unwrap(), "{report:#?}");
    let table = String::from_utf8_lossy(&edgectl(&ctl, &["compare", "hand"]).stdout).to_string();
    assert!(table.lines().filter(|l| l.starts_with(['1', '2', '3'])).count() == 3, "{table}");

    // In shadow first: version 4 answers differently (weights changed) and is halted in
    // shadow, never activated anywhere; version 5 (version 3's model) agrees and is promoted
    // wave by wave.
    let traffic = Traffic::start(&refs, "hand");
    let changed = s.dir.path().join("changed.tflite");
    std::fs::write(&changed, perturbed(&std::fs::read(model_path(FAST)).unwrap())).unwrap();
    let shadow = ["--shadow", "100", "--min-agreement", "0.98", "--max-p95-ratio", "4"];
    let mut args = vec!["--group", "cams", "--model", changed.to_str().unwrap(), "--name", "hand", "--version", "4"];
    args.extend_from_slice(&gates);
    args.extend_from_slice(&shadow);
    let out = rollout(&ctl, &args).join().unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("wave 1: failed: outputs agreed with the active version's on 0.0 %"), "{}", text(&out));
    let halted = newest_rollout(&fleet).unwrap();
    assert_eq!((halted.version.as_str(), halted.state), ("4", RolloutState::Halted), "{halted:#?}");
    let canary = halted.waves[0].devices[0].clone();
    let agent = &agents[names.iter().position(|n| *n == canary).unwrap()];
    fleet.until("the canary's shadow is stopped", || agent.log().contains("shadow stopped"));
    let log = plain(&agent.log());
    assert!(log.lines().any(|l| l.contains("shadow started") && l.contains("version=4")), "{log}");
    assert!(!log.lines().any(|l| l.contains("model version activated") && l.contains("to=\"4\"")), "{log}");
    let all = devices(&ctl);
    assert!(names.iter().all(|d| active_version(&all, d, "hand").as_deref() == Some("3")), "{all:#?}");

    let mut args = vec!["--group", "cams", "--model", fast, "--name", "hand", "--version", "5"];
    args.extend_from_slice(&gates);
    args.extend_from_slice(&shadow);
    let out = rollout(&ctl, &args).join().unwrap();
    assert!(out.status.success(), "{}\nedge-fleet log:\n{}", text(&out), fleet.log());
    assert!(String::from_utf8_lossy(&out.stdout).contains("outputs agreed on 100.0 %"), "{}", text(&out));
    fleet.until("every camera was promoted to hand 5", || {
        let all = devices(&ctl);
        names.iter().all(|d| active_version(&all, d, "hand").as_deref() == Some("5"))
    });
    traffic.stop();
}

/// `log` without its colours (ANSI escape sequences).
fn plain(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `model` with some of its weights changed: the same graph, other answers.
fn perturbed(model: &[u8]) -> Vec<u8> {
    let mut out = model.to_vec();
    // Inside the constant buffers of hand_recrop (checked: it still loads, outputs move by
    // several units).
    for chunk in out[40_000..44_000].chunks_exact_mut(4) {
        let x = f32::from_le_bytes(chunk.try_into().unwrap());
        chunk.copy_from_slice(&(x * 1.5 + 0.01).to_le_bytes());
    }
    out
}
