//! The deployments' rows: `deployments` and `deployment_devices`
//! (`migrations/0002_deployments.sql`), in the SQL both engines take.

use edge_proto::command::Command;
use edge_proto::deployments::{from_hex, to_hex, DeviceProgress, TargetKind};
use edge_proto::ota::Manifest;
use sqlx::any::AnyRow;
use sqlx::Row;

use super::target::{Progress, State};
use crate::db::{now_ms, query, Db, DbError};

/// A stored deployment.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    /// Command id, hex.
    pub id: String,
    /// Device or group.
    pub target_kind: TargetKind,
    /// Device id or group name.
    pub target: String,
    /// Model name.
    pub model: String,
    /// Version label.
    pub version: String,
    /// Transfer id, hex.
    pub transfer_id: String,
    /// Artifact SHA-256, hex.
    pub artifact_sha256: String,
    /// Artifact size.
    pub artifact_bytes: u64,
    /// The signed command's bytes.
    pub command: Vec<u8>,
    /// The signed cancel command's bytes, once cancelled.
    pub cancel_command: Option<Vec<u8>>,
    /// `active`, `completed`, `superseded`, `cancelled`, `expired`.
    pub state: String,
    /// The deployment that replaced it.
    pub superseded_by: Option<String>,
    /// ms since the Unix epoch.
    pub created_at: i64,
    /// ms since the Unix epoch.
    pub expires_at: i64,
    /// The members of a group that may be sent it (a rollout's waves so far); `None` for
    /// every member, now and later.
    pub admitted: Option<Vec<String>>,
}

impl Stored {
    /// The manifest inside the stored command.
    pub fn manifest(&self) -> Result<Manifest, DbError> {
        let corrupt = |problem: String| DbError::CorruptDeployment { id: self.id.clone(), column: "command", problem };
        let cmd = edge_proto::decode::<Command>(&self.command).map_err(|e| corrupt(e.to_string()))?;
        cmd.payload.manifest().cloned().ok_or_else(|| corrupt("not a deploy-model command".into()))
    }

    /// Whether the deployment is for `device`, a member of `groups`.
    pub fn targets(&self, device: &str, groups: &[String]) -> bool {
        match self.target_kind {
            TargetKind::Device => self.target == device,
            TargetKind::Group => groups.contains(&self.target) && self.admits(device),
        }
    }

    /// Whether `device` may be sent it ([`Stored::admitted`]).
    pub fn admits(&self, device: &str) -> bool {
        self.admitted.as_ref().is_none_or(|a| a.iter().any(|d| d == device))
    }
}

const COLUMNS: &str = "id, target_kind, target, model, version, transfer_id, artifact_sha256, artifact_bytes, \
                       command, cancel_command, state, superseded_by, created_at, expires_at, admitted";

fn stored(row: &AnyRow) -> Result<Stored, DbError> {
    let read = |what| query(what);
    let id: String = row.try_get(0).map_err(read("read a deployment"))?;
    let hex_column = |column: &'static str, text: String| {
        from_hex(&text).ok_or_else(|| DbError::CorruptDeployment { id: id.clone(), column, problem: "not hex".into() })
    };
    let kind: String = row.try_get(1).map_err(read("read a deployment"))?;
    let target_kind = match kind.as_str() {
        "device" => TargetKind::Device,
        "group" => TargetKind::Group,
        other => {
            return Err(DbError::CorruptDeployment {
                id: id.clone(),
                column: "target_kind",
                problem: format!("{other:?} is neither device nor group"),
            })
        }
    };
    let cancel: Option<String> = row.try_get(9).map_err(read("read a deployment"))?;
    let admitted: Option<String> = row.try_get(14).map_err(read("read a deployment"))?;
    let admitted = admitted
        .map(|a| serde_json::from_str::<Vec<String>>(&a))
        .transpose()
        .map_err(|e| DbError::CorruptDeployment { id: id.clone(), column: "admitted", problem: e.to_string() })?;
    Ok(Stored {
        target_kind,
        target: row.try_get(2).map_err(read("read a deployment"))?,
        model: row.try_get(3).map_err(read("read a deployment"))?,
        version: row.try_get(4).map_err(read("read a deployment"))?,
        transfer_id: row.try_get(5).map_err(read("read a deployment"))?,
        artifact_sha256: row.try_get(6).map_err(read("read a deployment"))?,
        artifact_bytes: row.try_get::<i64, _>(7).map_err(read("read a deployment"))?.max(0) as u64,
        command: hex_column("command", row.try_get(8).map_err(read("read a deployment"))?)?,
        cancel_command: cancel.map(|c| hex_column("cancel_command", c)).transpose()?,
        state: row.try_get(10).map_err(read("read a deployment"))?,
        superseded_by: row.try_get(11).map_err(read("read a deployment"))?,
        created_at: row.try_get(12).map_err(read("read a deployment"))?,
        expires_at: row.try_get(13).map_err(read("read a deployment"))?,
        admitted,
        id,
    })
}

/// `device` or `group`, as the `target_kind` column holds it.
pub(crate) fn kind_name(kind: &TargetKind) -> &'static str {
    match kind {
        TargetKind::Device => "device",
        TargetKind::Group => "group",
    }
}

/// A device's row: its progress and the revision it was read at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRow {
    /// Device id.
    pub device: String,
    /// Its progress.
    pub progress: Progress,
    /// Revision.
    pub rev: i64,
    /// Last change.
    pub updated_at: i64,
    /// Chunk bytes published to the device.
    pub bytes_sent: u64,
}

fn device_row(row: &AnyRow) -> Result<DeviceRow, DbError> {
    let read = || query("read a deployment's device");
    let device: String = row.try_get(0).map_err(read())?;
    let state: String = row.try_get(1).map_err(read())?;
    let progress: Option<i64> = row.try_get(2).map_err(read())?;
    let state =
        State::parse(&state, progress.map(|p| p.clamp(0, 100) as u8)).ok_or_else(|| DbError::CorruptDeployment {
            id: device.clone(),
            column: "deployment_devices.state",
            problem: format!("unknown state {state:?}"),
        })?;
    Ok(DeviceRow {
        progress: Progress {
            state,
            detail: row.try_get(3).map_err(read())?,
            attempts: row.try_get::<i64, _>(4).map_err(read())?.max(0) as u32,
            sent_at: row.try_get(5).map_err(read())?,
        },
        rev: row.try_get(6).map_err(read())?,
        updated_at: row.try_get(7).map_err(read())?,
        bytes_sent: row.try_get::<i64, _>(8).map_err(read())?.max(0) as u64,
        device,
    })
}

impl DeviceRow {
    /// As the API shows it.
    pub fn to_api(&self) -> DeviceProgress {
        DeviceProgress {
            device: self.device.clone(),
            state: self.progress.state.name().into(),
            progress: match self.progress.state {
                State::Transferring(p) => Some(p),
                _ => None,
            },
            detail: self.progress.detail.clone(),
            attempts: self.progress.attempts,
            updated_at: self.updated_at,
            bytes_sent: self.bytes_sent,
        }
    }
}

impl Db {
    /// Every deployment's use of its artifact, for [`crate::retention`].
    pub async fn artifact_uses(&self) -> Result<Vec<crate::retention::Use>, DbError> {
        let rows = sqlx::query("SELECT artifact_sha256, state, updated_at FROM deployments")
            .fetch_all(&self.pool)
            .await
            .map_err(query("list the deployments' artifacts"))?;
        rows.iter()
            .map(|r| {
                let state: String = r.try_get(1)?;
                Ok(crate::retention::Use {
                    sha256: r.try_get(0)?,
                    active: state == "active",
                    updated_at: r.try_get(2)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(query("list the deployments' artifacts"))
    }

    /// Stores a new deployment; `false` when one with its id exists already.
    pub async fn insert_deployment(&self, d: &Stored) -> Result<bool, DbError> {
        let done = sqlx::query(
            "INSERT INTO deployments (id, target_kind, target, model, version, transfer_id, artifact_sha256, \
             artifact_bytes, command, cancel_command, state, superseded_by, created_at, expires_at, updated_at, \
             admitted) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, NULL, $10, NULL, $11, $12, $11, $13) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(&d.id)
        .bind(kind_name(&d.target_kind))
        .bind(&d.target)
        .bind(&d.model)
        .bind(&d.version)
        .bind(&d.transfer_id)
        .bind(&d.artifact_sha256)
        .bind(d.artifact_bytes as i64)
        .bind(to_hex(&d.command))
        .bind(&d.state)
        .bind(d.created_at)
        .bind(d.expires_at)
        .bind(d.admitted.as_ref().map(|a| serde_json::to_string(a).expect("a list of strings serializes")))
        .execute(&self.pool)
        .await
        .map_err(query("store a deployment"))?;
        Ok(done.rows_affected() == 1)
    }

    /// Lets more members (or, with `None`, every member) be sent deployment `id`.
    pub async fn set_admitted(&self, id: &str, admitted: Option<&[String]>) -> Result<(), DbError> {
        sqlx::query("UPDATE deployments SET admitted = $1, updated_at = $2 WHERE id = $3")
            .bind(admitted.map(|a| serde_json::to_string(a).expect("a list of strings serializes")))
            .bind(now_ms())
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(query("admit devices to a deployment"))?;
        Ok(())
    }

    /// One deployment.
    pub async fn deployment(&self, id: &str) -> Result<Option<Stored>, DbError> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM deployments WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(query("read a deployment"))?;
        row.as_ref().map(stored).transpose()
    }

    /// The deployment of a transfer.
    pub async fn deployment_of_transfer(&self, transfer_id: &str) -> Result<Option<Stored>, DbError> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM deployments WHERE transfer_id = $1"))
            .bind(transfer_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(query("read a deployment"))?;
        row.as_ref().map(stored).transpose()
    }

    /// Every deployment, newest first, or those in `state`.
    pub async fn deployments(&self, state: Option<&str>) -> Result<Vec<Stored>, DbError> {
        let rows = match state {
            Some(s) => {
                sqlx::query(&format!("SELECT {COLUMNS} FROM deployments WHERE state = $1 ORDER BY created_at DESC, id"))
                    .bind(s)
                    .fetch_all(&self.pool)
                    .await
            }
            None => {
                sqlx::query(&format!("SELECT {COLUMNS} FROM deployments ORDER BY created_at DESC, id"))
                    .fetch_all(&self.pool)
                    .await
            }
        }
        .map_err(query("list deployments"))?;
        rows.iter().map(stored).collect()
    }

    /// Marks the other active deployments of the same model and target superseded by
    /// `by`; returns their ids.
    pub async fn supersede(&self, by: &Stored) -> Result<Vec<String>, DbError> {
        let rows = sqlx::query(
            "SELECT id FROM deployments WHERE state = 'active' AND model = $1 AND target_kind = $2 AND target = $3 \
             AND id <> $4",
        )
        .bind(&by.model)
        .bind(kind_name(&by.target_kind))
        .bind(&by.target)
        .bind(&by.id)
        .fetch_all(&self.pool)
        .await
        .map_err(query("find superseded deployments"))?;
        let ids: Vec<String> = rows
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()
            .map_err(query("find superseded deployments"))?;
        for id in &ids {
            sqlx::query(
                "UPDATE deployments SET state = 'superseded', superseded_by = $1, updated_at = $2 WHERE id = $3 \
                 AND state = 'active'",
            )
            .bind(&by.id)
            .bind(now_ms())
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(query("supersede a deployment"))?;
        }
        Ok(ids)
    }

    /// Moves an active deployment to `state` (with the cancel command for `cancelled`);
    /// `false` when it was not active.
    pub async fn end_deployment(&self, id: &str, state: &str, cancel_command: Option<&[u8]>) -> Result<bool, DbError> {
        let done = sqlx::query(
            "UPDATE deployments SET state = $1, cancel_command = $2, updated_at = $3 WHERE id = $4 AND state = 'active'",
        )
        .bind(state)
        .bind(cancel_command.map(to_hex))
        .bind(now_ms())
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(query("end a deployment"))?;
        Ok(done.rows_affected() == 1)
    }

    /// The device's row in a deployment.
    pub async fn device_progress(&self, deployment: &str, device: &str) -> Result<Option<DeviceRow>, DbError> {
        let row = sqlx::query(
            "SELECT device, state, progress, detail, attempts, sent_at, rev, updated_at, bytes_sent FROM deployment_devices \
             WHERE deployment = $1 AND device = $2",
        )
        .bind(deployment)
        .bind(device)
        .fetch_optional(&self.pool)
        .await
        .map_err(query("read a deployment's device"))?;
        row.as_ref().map(device_row).transpose()
    }

    /// Every device's row in a deployment, by device id.
    pub async fn deployment_devices(&self, deployment: &str) -> Result<Vec<DeviceRow>, DbError> {
        let rows = sqlx::query(
            "SELECT device, state, progress, detail, attempts, sent_at, rev, updated_at, bytes_sent FROM deployment_devices \
             WHERE deployment = $1 ORDER BY device",
        )
        .bind(deployment)
        .fetch_all(&self.pool)
        .await
        .map_err(query("list a deployment's devices"))?;
        rows.iter().map(device_row).collect()
    }

    /// Writes a device's progress if its row is still at revision `rev` (`None`: if it has
    /// no row yet). `false` when another writer got there first: read again and retry.
    pub async fn put_progress(
        &self,
        deployment: &str,
        device: &str,
        p: &Progress,
        rev: Option<i64>,
    ) -> Result<bool, DbError> {
        let progress = match p.state {
            State::Transferring(pct) => Some(i64::from(pct)),
            _ => None,
        };
        let done = match rev {
            None => sqlx::query(
                "INSERT INTO deployment_devices (deployment, device, state, progress, detail, attempts, sent_at, \
                 updated_at, rev) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 1) ON CONFLICT (deployment, device) DO NOTHING",
            ),
            Some(_) => sqlx::query(
                "UPDATE deployment_devices SET state = $3, progress = $4, detail = $5, attempts = $6, sent_at = $7, \
                 updated_at = $8, rev = rev + 1 WHERE deployment = $1 AND device = $2 AND rev = $9",
            ),
        }
        .bind(deployment)
        .bind(device)
        .bind(p.state.name())
        .bind(progress)
        .bind(p.detail.as_deref())
        .bind(i64::from(p.attempts))
        .bind(p.sent_at)
        .bind(now_ms());
        let done = match rev {
            Some(r) => done.bind(r),
            None => done,
        }
        .execute(&self.pool)
        .await
        .map_err(query("write a deployment's device"))?;
        Ok(done.rows_affected() == 1)
    }

    /// Adds `bytes` to what was published to `device` in `deployment`.
    pub async fn add_bytes_sent(&self, deployment: &str, device: &str, bytes: u64) -> Result<(), DbError> {
        sqlx::query("UPDATE deployment_devices SET bytes_sent = bytes_sent + $1 WHERE deployment = $2 AND device = $3")
            .bind(bytes as i64)
            .bind(deployment)
            .bind(device)
            .execute(&self.pool)
            .await
            .map_err(query("count bytes sent"))?;
        Ok(())
    }

    /// The online devices a tick may move on in `d`: those whose row waits (`pending`,
    /// `sent`), and, for a group, online members that have no row yet.
    pub async fn waiting_devices(&self, d: &Stored) -> Result<Vec<String>, DbError> {
        let mut rows = sqlx::query(
            "SELECT dd.device FROM deployment_devices dd JOIN devices v ON v.device = dd.device \
             WHERE dd.deployment = $1 AND dd.state IN ('pending', 'sent') AND v.online = 1",
        )
        .bind(&d.id)
        .fetch_all(&self.pool)
        .await
        .map_err(query("find waiting devices"))?;
        if d.target_kind == TargetKind::Group {
            rows.extend(
                sqlx::query(
                    "SELECT g.device FROM device_groups g JOIN devices v ON v.device = g.device \
                     WHERE g.group_name = $1 AND v.online = 1 AND NOT EXISTS \
                     (SELECT 1 FROM deployment_devices dd WHERE dd.deployment = $2 AND dd.device = g.device)",
                )
                .bind(&d.target)
                .bind(&d.id)
                .fetch_all(&self.pool)
                .await
                .map_err(query("find new members"))?,
            );
        }
        let devices: Vec<String> =
            rows.iter().map(|r| r.try_get(0)).collect::<Result<_, _>>().map_err(query("find waiting devices"))?;
        Ok(devices.into_iter().filter(|device| d.admits(device)).collect())
    }
}
