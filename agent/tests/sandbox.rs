//! The OTA validation child confines itself before it parses the transfer: a real agent
//! validates a deployed model and says how its child was confined (docs/security.md). What
//! each layer refuses is tested in `edge_agent::sandbox`'s own tests.

mod daemon;
mod operator;

use daemon::setup;
use edgectl::track::Outcome;
use operator::{deploy_model, dev1, device, only, RECROP};

#[tokio::test(flavor = "multi_thread")]
async fn the_validation_child_runs_confined() {
    let s = setup();
    let (agent, mut link, _) = dev1(&s, "").await;
    let out = deploy_model(&mut link, device("dev-1"), "recrop", "2", RECROP, Some("output")).await;
    assert_eq!(only(&out), &Outcome::Succeeded, "{out:?}");
    link.close().await;
    let log = agent.stop();
    let line = log.lines().find(|l| l.contains("validation child")).unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains("network, processes: seccomp"), "{line}");
    // Landlock where the kernel has it (Linux >= 5.13, enabled); said otherwise.
    assert!(
        line.contains("files: landlock (abi") || line.contains("files: NOT confined (landlock unavailable"),
        "{line}"
    );
}
