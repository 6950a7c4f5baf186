//! The rollouts' rows: `rollouts` and `device_versions` (`migrations/0007_rollouts.sql`), in
//! the SQL both engines take.

use edge_proto::deployments::{from_hex, to_hex};
use edge_proto::rollouts::{Decision, Figures, Gates, RolloutState, WaveSize};
use edge_proto::telemetry::VersionStats;
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::Row as _;

use crate::db::{now_ms, query, Db, DbError};

/// What the operator asked for, kept as JSON in `spec`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Spec {
    /// Cumulative wave sizes.
    pub waves: Vec<WaveSize>,
    /// The gates.
    pub gates: Gates,
    /// Wait for approval after each passed wave.
    pub approve_each: bool,
    /// How long a wave may take.
    pub wave_timeout_secs: u64,
    /// Each wave runs the version in shadow first, promoted when it passes.
    #[serde(default)]
    pub shadow: bool,
    /// In shadow: the signed `activate` for the group (hex), relayed to a passed wave.
    #[serde(default)]
    pub promote_command: Option<String>,
    /// In shadow: the signed `end-shadow` for the group (hex), relayed to a failed wave.
    #[serde(default)]
    pub end_shadow_command: Option<String>,
}

/// The current wave's figures at the last look, kept as JSON in `figures`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Look {
    /// Pooled.
    pub figures: Option<Figures>,
    /// Per device.
    pub devices: Vec<(String, Figures)>,
    /// What the judge said (a wait's reason).
    pub note: String,
}

/// A stored rollout.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The deployment's id.
    pub id: String,
    /// The group.
    pub group: String,
    /// Model name.
    pub model: String,
    /// Version label.
    pub version: String,
    /// What was asked for.
    pub spec: Spec,
    /// The signed cancel, bytes.
    pub abort_command: Vec<u8>,
    /// Members in the order waves take them.
    pub members: Vec<String>,
    /// Current wave, 0-based.
    pub wave: usize,
    /// When it started, ms.
    pub wave_started_at: i64,
    /// Where it is.
    pub state: RolloutState,
    /// The current wave at the last look.
    pub look: Look,
    /// Every decision.
    pub decisions: Vec<Decision>,
    /// ms since the Unix epoch.
    pub created_at: i64,
    /// Revision.
    pub rev: i64,
}

impl Row {
    /// How many members have been admitted once wave `wave` is in.
    pub fn admitted_count(&self, wave: usize) -> usize {
        self.spec.waves.get(wave).map_or(self.members.len(), |w| w.count(self.members.len()))
    }

    /// The members wave `wave` adds.
    pub fn wave_devices(&self, wave: usize) -> &[String] {
        let start = if wave == 0 { 0 } else { self.admitted_count(wave - 1) };
        let end = self.admitted_count(wave).max(start);
        &self.members[start..end]
    }
}

const COLUMNS: &str = "id, group_name, model, version, spec, abort_command, members, wave, wave_started_at, state, \
                       figures, decisions, created_at, rev";

fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("rollout columns serialize")
}

fn json_column<T: serde::de::DeserializeOwned>(
    r: &AnyRow,
    at: usize,
    column: &'static str,
    id: &str,
) -> Result<T, DbError> {
    let text: String = r.try_get(at).map_err(query("read a rollout"))?;
    serde_json::from_str(&text).map_err(|e| DbError::CorruptDeployment {
        id: id.into(),
        column,
        problem: e.to_string(),
    })
}

fn row(r: &AnyRow) -> Result<Row, DbError> {
    let read = || query("read a rollout");
    let id: String = r.try_get(0).map_err(read())?;
    let corrupt =
        |column: &'static str, problem: String| DbError::CorruptDeployment { id: id.clone(), column, problem };
    let state: String = r.try_get(9).map_err(read())?;
    let state = match state.as_str() {
        "running" => RolloutState::Running,
        "awaiting_approval" => RolloutState::AwaitingApproval,
        "completed" => RolloutState::Completed,
        "halted" => RolloutState::Halted,
        other => return Err(corrupt("state", format!("unknown state {other:?}"))),
    };
    let abort: String = r.try_get(5).map_err(read())?;
    Ok(Row {
        group: r.try_get(1).map_err(read())?,
        model: r.try_get(2).map_err(read())?,
        version: r.try_get(3).map_err(read())?,
        spec: json_column(r, 4, "spec", &id)?,
        abort_command: from_hex(&abort).ok_or_else(|| corrupt("abort_command", "not hex".into()))?,
        members: json_column(r, 6, "members", &id)?,
        wave: r.try_get::<i64, _>(7).map_err(read())?.max(0) as usize,
        wave_started_at: r.try_get(8).map_err(read())?,
        state,
        look: json_column(r, 10, "figures", &id)?,
        decisions: json_column(r, 11, "decisions", &id)?,
        created_at: r.try_get(12).map_err(read())?,
        rev: r.try_get(13).map_err(read())?,
        id,
    })
}

impl Db {
    /// Stores a new rollout; `false` if one with its id exists.
    pub async fn insert_rollout(&self, r: &Row) -> Result<bool, DbError> {
        let done = sqlx::query(&format!(
            "INSERT INTO rollouts ({COLUMNS}, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, \
             $13, 0, $13) ON CONFLICT (id) DO NOTHING"
        ))
        .bind(&r.id)
        .bind(&r.group)
        .bind(&r.model)
        .bind(&r.version)
        .bind(json(&r.spec))
        .bind(to_hex(&r.abort_command))
        .bind(json(&r.members))
        .bind(r.wave as i64)
        .bind(r.wave_started_at)
        .bind(r.state.name())
        .bind(json(&r.look))
        .bind(json(&r.decisions))
        .bind(r.created_at)
        .execute(self.pool())
        .await
        .map_err(query("store a rollout"))?;
        Ok(done.rows_affected() == 1)
    }

    /// One rollout.
    pub async fn rollout(&self, id: &str) -> Result<Option<Row>, DbError> {
        let r = sqlx::query(&format!("SELECT {COLUMNS} FROM rollouts WHERE id = $1"))
            .bind(id)
            .fetch_optional(self.pool())
            .await
            .map_err(query("read a rollout"))?;
        r.as_ref().map(row).transpose()
    }

    /// Every rollout, newest first; with `unfinished`, only those not completed or halted.
    pub async fn rollouts(&self, unfinished: bool) -> Result<Vec<Row>, DbError> {
        let filter = if unfinished { "WHERE state IN ('running', 'awaiting_approval')" } else { "" };
        let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM rollouts {filter} ORDER BY created_at DESC, id"))
            .fetch_all(self.pool())
            .await
            .map_err(query("list rollouts"))?;
        rows.iter().map(row).collect()
    }

    /// Writes `r`'s wave, state, figures and decisions if the row is still at `r.rev`;
    /// `false` when another writer got there first.
    pub async fn update_rollout(&self, r: &Row) -> Result<bool, DbError> {
        let done = sqlx::query(
            "UPDATE rollouts SET wave = $1, wave_started_at = $2, state = $3, figures = $4, decisions = $5, \
             updated_at = $6, rev = rev + 1 WHERE id = $7 AND rev = $8",
        )
        .bind(r.wave as i64)
        .bind(r.wave_started_at)
        .bind(r.state.name())
        .bind(json(&r.look))
        .bind(json(&r.decisions))
        .bind(now_ms())
        .bind(&r.id)
        .bind(r.rev)
        .execute(self.pool())
        .await
        .map_err(query("update a rollout"))?;
        Ok(done.rows_affected() == 1)
    }

    /// Keeps `device`'s latest per-version figures.
    pub async fn put_versions(&self, device: &str, versions: &[VersionStats]) -> Result<(), DbError> {
        let now = now_ms();
        for v in versions {
            sqlx::query(
                "INSERT INTO device_versions (device, model, version, stats, updated_at) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (device, model, version) DO UPDATE SET stats = $4, updated_at = $5",
            )
            .bind(device)
            .bind(&v.name)
            .bind(&v.version)
            .bind(json(v))
            .bind(now)
            .execute(self.pool())
            .await
            .map_err(query("store a device's version figures"))?;
        }
        Ok(())
    }

    /// `device`'s latest per-version figures of `model`.
    pub async fn versions(&self, device: &str, model: &str) -> Result<Vec<VersionStats>, DbError> {
        let rows = sqlx::query("SELECT stats FROM device_versions WHERE device = $1 AND model = $2 ORDER BY version")
            .bind(device)
            .bind(model)
            .fetch_all(self.pool())
            .await
            .map_err(query("read a device's version figures"))?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let text: String = r.try_get(0).map_err(query("read a device's version figures"))?;
            // A row this build cannot read is skipped, not fatal: the next telemetry rewrites it.
            if let Ok(v) = serde_json::from_str(&text) {
                out.push(v);
            }
        }
        Ok(out)
    }
}
