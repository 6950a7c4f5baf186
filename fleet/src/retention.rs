//! How long artifacts are kept: the rule (pure, [`unused`]) and the hourly pass that
//! deletes what it returns, as files in `[artifacts] dir` and as the database's copies
//! (replicas).
//!
//! An artifact is kept while an active deployment uses it, and for `[artifacts] keep_days`
//! after the last deployment using it ended (a device that was offline can still be sent a
//! new deployment of that version by re-deploying it, which uploads it again); one that no
//! deployment uses (an upload whose deployment was never stored) is kept for `keep_days`
//! after it was stored. `keep_days = 0` keeps everything.

use std::collections::HashMap;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::artifacts::Artifacts;
use crate::db::{now_ms, Db};

/// How often the pass runs.
pub const EVERY: Duration = Duration::from_secs(3600);

/// One deployment's use of an artifact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Use {
    /// The artifact.
    pub sha256: String,
    /// Whether the deployment is active.
    pub active: bool,
    /// When it last changed (ended, for one that is not active), ms.
    pub updated_at: i64,
}

/// Which of `stored` (artifact, stored at, ms) may be deleted at `now`, given `uses`.
pub fn unused(stored: &[(String, i64)], uses: &[Use], now: i64, keep_ms: i64) -> Vec<String> {
    let mut last: HashMap<&str, (bool, i64)> = HashMap::new();
    for u in uses {
        let e = last.entry(u.sha256.as_str()).or_insert((false, i64::MIN));
        e.0 |= u.active;
        e.1 = e.1.max(u.updated_at);
    }
    stored
        .iter()
        .filter(|(sha, stored_at)| match last.get(sha.as_str()) {
            Some((true, _)) => false,
            Some((false, ended)) => ended.saturating_add(keep_ms) <= now,
            None => stored_at.saturating_add(keep_ms) <= now,
        })
        .map(|(sha, _)| sha.clone())
        .collect()
}

/// One pass: deletes what [`unused`] returns. How many artifacts were deleted.
pub async fn sweep(db: &Db, artifacts: &Artifacts, keep: Duration) -> Result<usize, String> {
    let stored = artifacts.stored().await.map_err(|e| e.to_string())?;
    let uses = db.artifact_uses().await.map_err(|e| e.to_string())?;
    let gone = unused(&stored, &uses, now_ms(), keep.as_millis().min(i64::MAX as u128) as i64);
    for sha in &gone {
        artifacts.delete(sha).await.map_err(|e| e.to_string())?;
        tracing::info!(artifact = %sha, "artifact deleted: no deployment has used it for [artifacts] keep_days");
    }
    Ok(gone.len())
}

/// Runs [`sweep`] every [`EVERY`] until `cancel`; `keep` zero: never.
pub async fn run(db: Db, artifacts: Artifacts, keep: Duration, cancel: CancellationToken) {
    if keep.is_zero() {
        return;
    }
    let mut interval = tokio::time::interval(EVERY);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = interval.tick() => {}
        }
        if let Err(e) = sweep(&db, &artifacts, keep).await {
            tracing::warn!("artifact retention pass failed, next in {EVERY:?}: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000;

    fn used(sha: &str, active: bool, updated_at: i64) -> Use {
        Use { sha256: sha.into(), active, updated_at }
    }

    #[test]
    fn an_artifact_in_use_or_used_lately_is_kept() {
        let stored = vec![("a".to_string(), 0), ("b".to_string(), 0), ("c".to_string(), 0), ("d".to_string(), 0)];
        let uses = [
            used("a", true, 0),         // active, however old
            used("b", false, 40 * DAY), // ended 20 days ago
            used("c", false, 10 * DAY), // ended 50 days ago
            used("c", false, 20 * DAY), // ... and again 40 days ago
            used("b", false, 1),        // an older use does not shorten the newer one
        ];
        assert_eq!(unused(&stored, &uses, 60 * DAY, 30 * DAY), ["c", "d"]);
    }

    #[test]
    fn an_upload_no_deployment_used_is_kept_for_the_same_time() {
        let stored = vec![("new".to_string(), 50 * DAY), ("old".to_string(), 10 * DAY)];
        assert_eq!(unused(&stored, &[], 60 * DAY, 30 * DAY), ["old"]);
    }

    #[tokio::test]
    async fn a_sweep_deletes_old_unused_files_and_their_copies_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&format!("sqlite://{}", dir.path().join("fleet.db").display())).await.unwrap();
        let copies = crate::artifact_copies::Copies::new(db.clone());
        let store = Artifacts::open(&dir.path().join("artifacts"), 1 << 20, Some(copies.clone())).await.unwrap();
        let mut shas = vec![];
        for body in [&b"old model"[..], b"new model"] {
            let sha = edge_proto::deployments::to_hex(&edge_proto::ota::sha256(body));
            store.put(&sha, axum::body::Body::from(body.to_vec())).await.unwrap();
            shas.push(sha);
        }
        // The first was uploaded 40 days ago (as its file says; the copy's row too).
        let old = std::fs::File::options().write(true).open(dir.path().join("artifacts").join(&shas[0])).unwrap();
        old.set_modified(std::time::SystemTime::now() - Duration::from_secs(40 * 86_400)).unwrap();
        sqlx::query("UPDATE artifacts SET created_at = $1 WHERE sha256 = $2")
            .bind(now_ms() - 40 * DAY)
            .bind(&shas[0])
            .execute(db.pool())
            .await
            .unwrap();
        assert_eq!(sweep(&db, &store, Duration::from_secs(30 * 86_400)).await.unwrap(), 1);
        assert_eq!(store.size(&shas[0]).await.unwrap(), None, "file and copy gone");
        assert_eq!(copies.size(&shas[0]).await.unwrap(), None);
        assert_eq!(store.size(&shas[1]).await.unwrap(), Some(9));
        assert_eq!(sweep(&db, &store, Duration::from_secs(30 * 86_400)).await.unwrap(), 0);
    }
}
