//! The short form of `bash bench/fleet.sh` (`--short`), run by CI on this build's binaries:
//! 50 simulated devices against a real Mosquitto, `edge-fleet` on a real PostgreSQL and a
//! real Prometheus, 20 s of telemetry at 1 Hz with no sample missing, then a group
//! deployment of a 5 MB model that reaches all 50, 10 of them connecting 10 s late. Its
//! figures are not asserted (a debug build on a shared machine); its verdict is. The full
//! run (1,000 devices) is in bench/RESULTS.md.

mod common;

use std::process::Command;

use common::*;

#[test]
fn fifty_simulated_devices_lose_no_sample_and_all_converge() {
    let keep = tempfile::tempdir().unwrap();
    let out = Command::new(sim_exe())
        .args(["bench", "--devices", "50", "--duration", "20", "--late", "10", "--late-after", "10"])
        .args(["--deploy-timeout", "300"])
        .arg("--fleet-bin")
        .arg(env!("CARGO_BIN_EXE_edge-fleet"))
        .arg("--edgectl-bin")
        .arg(edgectl_exe())
        .arg("--keep")
        .arg(keep.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let log = std::fs::read_to_string(keep.path().join("edge-fleet.log")).unwrap_or_default();
    let tail: String = log.lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
    assert!(
        out.status.success() && stdout.contains("edge-sim bench: PASS"),
        "edge-sim bench failed ({}):\n{stdout}\n{}\nedge-fleet log, last lines:\n{tail}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}
