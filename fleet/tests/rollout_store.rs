//! The rollouts' storage on both engines the service runs on: SQLite and a real PostgreSQL
//! (started by the harness). The end-to-end rollout test runs on SQLite; this one checks that
//! every statement of `rollouts/store.rs`, the deployments' `admitted` column and the
//! version figures read back the same on PostgreSQL.

use edge_fleet::db::{now_ms, Db};
use edge_fleet::deployments::store::Stored;
use edge_fleet::rollouts::store::{Look, Row, Spec};
use edge_fleet::versions::report;
use edge_it::Postgres;
use edge_proto::deployments::TargetKind;
use edge_proto::rollouts::{Decision, Gates, RolloutState, WaveSize};
use edge_proto::telemetry::{VersionStats, LATENCY_BUCKETS};

fn deployment(id: &str, admitted: Option<Vec<String>>) -> Stored {
    Stored {
        id: id.into(),
        target_kind: TargetKind::Group,
        target: "cams".into(),
        model: "hand".into(),
        version: "2".into(),
        transfer_id: "00".into(),
        artifact_sha256: "11".into(),
        artifact_bytes: 10,
        command: vec![1, 2, 3],
        cancel_command: None,
        state: "active".into(),
        superseded_by: None,
        created_at: now_ms(),
        expires_at: now_ms() + 60_000,
        admitted,
    }
}

fn rollout(id: &str) -> Row {
    Row {
        id: id.into(),
        group: "cams".into(),
        model: "hand".into(),
        version: "2".into(),
        spec: Spec {
            waves: vec![WaveSize::Devices(1), WaveSize::Percent(100.0)],
            gates: Gates { max_p95_ratio: Some(1.3), max_error_rate: None, min_requests: 50 },
            approve_each: true,
            wave_timeout_secs: 600,
        },
        abort_command: vec![9, 8, 7],
        members: vec!["b".into(), "a".into()],
        wave: 0,
        wave_started_at: 5,
        state: RolloutState::Running,
        look: Look::default(),
        decisions: vec![],
        created_at: 5,
        rev: 0,
    }
}

fn figures(version: &str, requests: u64) -> VersionStats {
    VersionStats {
        name: "hand".into(),
        version: version.into(),
        active: true,
        requests,
        failures: 1,
        buckets: vec![requests; LATENCY_BUCKETS.len()],
        timed: requests,
        sum_secs: 0.5,
        shadow: false,
        compared: 0,
        agreed: 0,
        max_abs_diff: 0.0,
    }
}

async fn story(url: &str) {
    let db = Db::open(url).await.unwrap();
    db.migrate().await.unwrap();

    // A deployment admitting one member, then every member.
    assert!(db.insert_deployment(&deployment("d1", Some(vec!["b".into()]))).await.unwrap());
    let d = db.deployment("d1").await.unwrap().unwrap();
    assert_eq!(d.admitted.as_deref(), Some(&["b".to_string()][..]));
    assert!(d.admits("b") && !d.admits("a"));
    db.set_admitted("d1", Some(&["b".into(), "a".into()])).await.unwrap();
    assert!(db.deployment("d1").await.unwrap().unwrap().admits("a"));
    db.set_admitted("d1", None).await.unwrap();
    assert_eq!(db.deployment("d1").await.unwrap().unwrap().admitted, None);

    // A rollout reads back as written; a write from a stale revision is refused.
    let r = rollout("d1");
    assert!(db.insert_rollout(&r).await.unwrap());
    assert!(!db.insert_rollout(&r).await.unwrap(), "the same id twice");
    assert_eq!(db.rollout("d1").await.unwrap().unwrap(), r);
    let mut moved = r.clone();
    moved.wave = 1;
    moved.state = RolloutState::AwaitingApproval;
    moved.decisions.push(Decision { at: 7, wave: 0, verdict: "passed".into(), reason: "fine".into() });
    assert!(db.update_rollout(&moved).await.unwrap());
    assert!(!db.update_rollout(&moved).await.unwrap(), "revision 0 is stale now");
    let read = db.rollout("d1").await.unwrap().unwrap();
    assert_eq!(read, Row { rev: 1, ..moved.clone() });
    assert_eq!(db.rollouts(true).await.unwrap().len(), 1);
    let mut done = read.clone();
    done.state = RolloutState::Completed;
    assert!(db.update_rollout(&done).await.unwrap());
    assert!(db.rollouts(true).await.unwrap().is_empty(), "a completed rollout is finished");
    assert_eq!(db.rollouts(false).await.unwrap().len(), 1);

    // Version figures: the latest sample wins, per device, model and version.
    db.put_versions("a", &[figures("1", 10), figures("2", 3)]).await.unwrap();
    db.put_versions("a", &[figures("2", 8)]).await.unwrap();
    db.put_versions("b", &[figures("1", 20)]).await.unwrap();
    let a: Vec<(String, u64)> =
        db.versions("a", "hand").await.unwrap().into_iter().map(|v| (v.version, v.requests)).collect();
    assert_eq!(a, [("1".to_string(), 10), ("2".to_string(), 8)]);
    let rows = db.model_versions("hand", now_ms() - 60_000).await.unwrap();
    let r = report("hand", 60, &rows);
    let pooled: Vec<(&str, u64, u64)> =
        r.versions.iter().map(|v| (v.version.as_str(), v.devices, v.requests)).collect();
    assert_eq!(pooled, [("1", 2, 30), ("2", 1, 8)]);
    assert!(db.model_versions("hand", now_ms() + 60_000).await.unwrap().is_empty(), "older than the window");
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollouts_are_stored_alike_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    story(&format!("sqlite://{}", dir.path().join("fleet.db").display())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollouts_are_stored_alike_on_postgres() {
    let pg = Postgres::start().unwrap();
    story(&pg.url()).await;
}
