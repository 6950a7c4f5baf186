//! The database: one query layer over SQLite and PostgreSQL (sqlx's `Any` driver), the
//! embedded migrations, and the inventory's reads and writes.
//!
//! Every query is written once, in the SQL both engines take: `$1` placeholders, `INSERT …
//! ON CONFLICT … DO UPDATE`, TEXT and BIGINT columns (flags as 0/1: the `Any` driver
//! cannot read SQLite's BOOLEAN back). Nothing here blocks: sqlx runs
//! SQLite on a worker thread of its own and PostgreSQL over tokio sockets.
//!
//! SQLite gets a pool of one connection: it has one writer anyway, and a second connection
//! would only meet `database is locked`.

use std::collections::HashMap;
use std::path::Path;

use edge_proto::command::ModelStatus;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

use crate::config::{backend, Backend};
use crate::inventory::{Change, Device};

/// The migrations, in order: (version, name, SQL). Applied once each, recorded in
/// `fleet_migrations`; never edit one that has shipped, add the next.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "devices", include_str!("../migrations/0001_devices.sql")),
    (2, "deployments", include_str!("../migrations/0002_deployments.sql")),
    (3, "export", include_str!("../migrations/0003_export.sql")),
    (4, "replicas", include_str!("../migrations/0004_replicas.sql")),
    (5, "artifact_copies", include_str!("../migrations/0005_artifact_copies.sql")),
    (6, "bytes_sent", include_str!("../migrations/0006_bytes_sent.sql")),
    (7, "rollouts", include_str!("../migrations/0007_rollouts.sql")),
];

/// The versions of every migration this build carries, in order.
pub fn migration_versions() -> Vec<i64> {
    MIGRATIONS.iter().map(|m| m.0).collect()
}

/// What went wrong with the database.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// Cannot connect, or open the SQLite file.
    #[error("database {url}: cannot connect: {source}; check [database] url and that the server is up")]
    Connect {
        /// The URL, with any password removed.
        url: String,
        /// The driver's error.
        source: sqlx::Error,
    },
    /// The directory of the SQLite file cannot be made.
    #[error("database {url}: cannot create the directory {dir}: {source}")]
    Dir {
        /// The URL.
        url: String,
        /// The directory.
        dir: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A migration failed.
    #[error("database migration {version} ({name}) failed: {source}")]
    Migrate {
        /// Its version.
        version: i64,
        /// Its name.
        name: &'static str,
        /// The driver's error.
        source: sqlx::Error,
    },
    /// A query failed.
    #[error("database: {what}: {source}")]
    Query {
        /// What was being done.
        what: &'static str,
        /// The driver's error.
        source: sqlx::Error,
    },
    /// A stored value does not read back (a JSON list column edited by hand).
    #[error("database: device {device}: column {column} holds {value:?}, not a JSON list of strings")]
    Corrupt {
        /// The device.
        device: String,
        /// The column.
        column: &'static str,
        /// What it holds.
        value: String,
    },
    /// A stored deployment does not read back (a row edited by hand).
    #[error("database: deployment {id}: column {column} does not read back: {problem}")]
    CorruptDeployment {
        /// The deployment.
        id: String,
        /// The column.
        column: &'static str,
        /// What is wrong.
        problem: String,
    },
}

pub(crate) fn query(what: &'static str) -> impl FnOnce(sqlx::Error) -> DbError {
    move |source| DbError::Query { what, source }
}

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..s + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

/// A connection pool and the queries of the inventory.
#[derive(Debug, Clone)]
pub struct Db {
    pub(crate) pool: AnyPool,
    backend: Backend,
}

impl Db {
    /// Connects to `url` (creating the SQLite file and its directory if need be) and runs
    /// the migrations not yet applied.
    pub async fn open(url: &str) -> Result<Db, DbError> {
        sqlx::any::install_default_drivers();
        let mut options = AnyPoolOptions::new();
        let mut connect_url = url.to_string();
        if backend(url) == Some(Backend::Sqlite) {
            let path = url.trim_start_matches("sqlite://");
            let path = path.split('?').next().unwrap_or(path);
            if let Some(dir) = Path::new(path).parent().filter(|d| !d.as_os_str().is_empty()) {
                tokio::fs::create_dir_all(dir).await.map_err(|source| DbError::Dir {
                    url: url.into(),
                    dir: dir.display().to_string(),
                    source,
                })?;
            }
            if !url.contains('?') {
                connect_url.push_str("?mode=rwc");
            }
            options = options.max_connections(1);
        }
        let pool =
            options.connect(&connect_url).await.map_err(|source| DbError::Connect { url: redact(url), source })?;
        if backend(url) == Some(Backend::Sqlite) {
            // Off by default in SQLite: the cascades from devices need it.
            sqlx::query("PRAGMA foreign_keys = ON").execute(&pool).await.map_err(query("enable foreign keys"))?;
        }
        let db = Db { pool, backend: backend(url).unwrap_or(Backend::Sqlite) };
        db.migrate().await?;
        Ok(db)
    }

    /// Applies the migrations not yet recorded, each in a transaction with its record.
    /// Returns how many were applied (0 when the schema is current).
    pub async fn migrate(&self) -> Result<usize, DbError> {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS fleet_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL, \
             applied_at BIGINT NOT NULL)",
        )
        .execute(&self.pool)
        .await
        .map_err(query("create fleet_migrations"))?;
        let mut applied = 0;
        for &(version, name, sql) in MIGRATIONS {
            let failed = |source| DbError::Migrate { version, name, source };
            let mut tx = self.pool.begin().await.map_err(failed)?;
            // Replicas starting together: the second waits here for the first's migration.
            self.lock(&mut tx, "fleet_migrations").await.map_err(failed)?;
            let done = sqlx::query("SELECT version FROM fleet_migrations WHERE version = $1")
                .bind(version)
                .fetch_optional(&mut *tx)
                .await
                .map_err(failed)?;
            if done.is_some() {
                continue;
            }
            sqlx::raw_sql(sql).execute(&mut *tx).await.map_err(failed)?;
            sqlx::query("INSERT INTO fleet_migrations (version, name, applied_at) VALUES ($1, $2, $3)")
                .bind(version)
                .bind(name)
                .bind(now_ms())
                .execute(&mut *tx)
                .await
                .map_err(failed)?;
            tx.commit().await.map_err(failed)?;
            tracing::info!(version, name, "database migration applied");
            applied += 1;
        }
        Ok(applied)
    }

    /// The versions recorded in `fleet_migrations`, in order.
    pub async fn applied_migrations(&self) -> Result<Vec<i64>, DbError> {
        let rows = sqlx::query("SELECT version FROM fleet_migrations ORDER BY version")
            .fetch_all(&self.pool)
            .await
            .map_err(query("list migrations"))?;
        rows.iter().map(|r| r.try_get::<i64, _>(0).map_err(query("read migrations"))).collect()
    }

    /// One device, if known.
    pub async fn device(&self, device: &str) -> Result<Option<Device>, DbError> {
        let mut conn = self.pool.acquire().await.map_err(query("acquire a connection"))?;
        read_device(&mut conn, device).await
    }

    /// Reads `device`, hands its record to `change` and stores the result, in one
    /// transaction.
    pub async fn update(&self, device: &str, change: impl FnOnce(Option<Device>) -> Change) -> Result<(), DbError> {
        let mut tx = self.pool.begin().await.map_err(query("begin"))?;
        self.lock(&mut tx, &format!("device/{device}")).await.map_err(query("lock a device"))?;
        let known = read_device(&mut tx, device).await?;
        match change(known.clone()) {
            Change::Forget => {
                for sql in [
                    "DELETE FROM device_models WHERE device = $1",
                    "DELETE FROM device_groups WHERE device = $1",
                    "DELETE FROM devices WHERE device = $1",
                ] {
                    sqlx::query(sql).bind(device).execute(&mut *tx).await.map_err(query("forget a device"))?;
                }
            }
            Change::Put(d) => write_device(&mut tx, known.as_ref(), &d).await?,
            Change::Keep => {}
        }
        tx.commit().await.map_err(query("commit"))
    }

    /// Every device, or the members of `group`, by id: three queries, whatever the number
    /// of devices (one per table).
    pub async fn devices(&self, group: Option<&str>) -> Result<Vec<Device>, DbError> {
        let mut conn = self.pool.acquire().await.map_err(query("acquire a connection"))?;
        let only = if group.is_some() {
            " WHERE device IN (SELECT device FROM device_groups WHERE group_name = $1)"
        } else {
            ""
        };
        let rows =
            bind_group(sqlx::query(&format!("SELECT {DEVICE_COLUMNS} FROM devices{only} ORDER BY device")), group)
                .fetch_all(&mut *conn)
                .await
                .map_err(query("list devices"))?;
        let mut out = rows.iter().map(device_of).collect::<Result<Vec<_>, _>>()?;
        let index: HashMap<String, usize> = out.iter().enumerate().map(|(i, d)| (d.device.clone(), i)).collect();
        let groups = bind_group(
            sqlx::query(&format!("SELECT device, group_name FROM device_groups{only} ORDER BY device, group_name")),
            group,
        )
        .fetch_all(&mut *conn)
        .await
        .map_err(query("list the devices' groups"))?;
        for r in &groups {
            let device: String = r.try_get(0).map_err(query("read groups"))?;
            if let Some(&i) = index.get(&device) {
                out[i].groups.push(r.try_get(1).map_err(query("read groups"))?);
            }
        }
        let models = bind_group(
            sqlx::query(&format!(
                "SELECT device, name, active_version, installed_versions, health FROM device_models{only} \
                 ORDER BY device, name"
            )),
            group,
        )
        .fetch_all(&mut *conn)
        .await
        .map_err(query("list the devices' models"))?;
        for r in &models {
            let device: String = r.try_get(0).map_err(query("read a model"))?;
            if let Some(&i) = index.get(&device) {
                let m = model_of(&device, r, 1)?;
                out[i].models.push(m);
            }
        }
        Ok(out)
    }

    /// How many devices are known, and how many of them are online.
    pub async fn counts(&self) -> Result<(i64, i64), DbError> {
        // Two COUNTs: both engines return them as BIGINT (a SUM would be NUMERIC in
        // PostgreSQL, which the Any driver does not map).
        let mut counts = [0i64; 2];
        for (n, sql) in
            ["SELECT COUNT(*) FROM devices", "SELECT COUNT(*) FROM devices WHERE online = 1"].iter().enumerate()
        {
            let row = sqlx::query(sql).fetch_one(&self.pool).await.map_err(query("count devices"))?;
            counts[n] = row.try_get(0).map_err(query("count devices"))?;
        }
        Ok((counts[0], counts[1]))
    }

    /// Holds `key` until the transaction of `conn` ends: replicas of the service writing
    /// the same record wait for each other instead of overwriting each other's change, also
    /// when the record does not exist yet (a row lock would not cover that). PostgreSQL
    /// takes a transaction-level advisory lock on the key's hash; SQLite needs none, since
    /// it lets one writer at a time in anyway.
    pub(crate) async fn lock(&self, conn: &mut sqlx::AnyConnection, key: &str) -> Result<(), sqlx::Error> {
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))::TEXT").bind(key).fetch_one(&mut *conn).await?;
        }
        Ok(())
    }

    /// The pool, for the queries of other modules (the telemetry export's progress).
    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// The columns of a device's own row, as [`device_of`] reads them.
const DEVICE_COLUMNS: &str = "device, online, last_seen, agent_version, cert_not_after";

/// `q` with `group` bound as `$1`, if there is one.
fn bind_group<'q>(
    q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    group: Option<&'q str>,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    match group {
        Some(g) => q.bind(g),
        None => q,
    }
}

/// A device from a row of [`DEVICE_COLUMNS`], without its groups and models.
fn device_of(row: &AnyRow) -> Result<Device, DbError> {
    let read = || query("read a device");
    Ok(Device {
        device: row.try_get(0).map_err(read())?,
        online: row.try_get::<i64, _>(1).map_err(read())? != 0,
        last_seen: row.try_get(2).map_err(read())?,
        agent_version: row.try_get(3).map_err(read())?,
        cert_not_after: row.try_get(4).map_err(read())?,
        ..Device::default()
    })
}

async fn read_device(conn: &mut sqlx::AnyConnection, device: &str) -> Result<Option<Device>, DbError> {
    let Some(row) = sqlx::query(&format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE device = $1"))
        .bind(device)
        .fetch_optional(&mut *conn)
        .await
        .map_err(query("read a device"))?
    else {
        return Ok(None);
    };
    let mut d = device_of(&row)?;
    let groups = sqlx::query("SELECT group_name FROM device_groups WHERE device = $1 ORDER BY group_name")
        .bind(device)
        .fetch_all(&mut *conn)
        .await
        .map_err(query("read a device's groups"))?;
    d.groups =
        groups.iter().map(|r| r.try_get::<String, _>(0)).collect::<Result<_, _>>().map_err(query("read groups"))?;
    let models = sqlx::query(
        "SELECT name, active_version, installed_versions, health FROM device_models WHERE device = $1 ORDER BY name",
    )
    .bind(device)
    .fetch_all(&mut *conn)
    .await
    .map_err(query("read a device's models"))?;
    d.models = models.iter().map(|r| model_of(device, r, 0)).collect::<Result<_, _>>()?;
    Ok(Some(d))
}

/// A model from the columns name, active_version, installed_versions, health of `r`,
/// starting at column `at`.
fn model_of(device: &str, r: &AnyRow, at: usize) -> Result<ModelStatus, DbError> {
    let installed: String = r.try_get(at + 2).map_err(query("read a model"))?;
    Ok(ModelStatus {
        name: r.try_get(at).map_err(query("read a model"))?,
        active_version: r.try_get(at + 1).map_err(query("read a model"))?,
        installed_versions: serde_json::from_str(&installed).map_err(|_| DbError::Corrupt {
            device: device.into(),
            column: "device_models.installed_versions",
            value: installed.clone(),
        })?,
        health: r.try_get(at + 3).map_err(query("read a model"))?,
    })
}

/// Writes `d` over `known` (what was read in the same transaction): the device's row, and
/// its groups and models only when one of them changed. A telemetry sample changes only the row;
/// rewriting the groups and models too made it 11 statements where 7 do, and at 1000
/// devices at 1 Hz the inventory fell behind (bench/fleet.sh, bench/RESULTS.md).
async fn write_device(conn: &mut sqlx::AnyConnection, known: Option<&Device>, d: &Device) -> Result<(), DbError> {
    sqlx::query(
        "INSERT INTO devices (device, online, last_seen, agent_version, cert_not_after, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (device) DO UPDATE SET online = excluded.online, \
         last_seen = excluded.last_seen, agent_version = excluded.agent_version, \
         cert_not_after = excluded.cert_not_after, updated_at = excluded.updated_at",
    )
    .bind(&d.device)
    .bind(i64::from(d.online))
    .bind(d.last_seen)
    .bind(d.agent_version.as_deref())
    .bind(d.cert_not_after)
    .bind(now_ms())
    .execute(&mut *conn)
    .await
    .map_err(query("write a device"))?;
    // Groups and models are replaced as a whole: a status lists all of them.
    if known.is_some_and(|k| k.groups == d.groups && k.models == d.models) {
        return Ok(());
    }
    sqlx::query("DELETE FROM device_groups WHERE device = $1")
        .bind(&d.device)
        .execute(&mut *conn)
        .await
        .map_err(query("write a device's groups"))?;
    for g in &d.groups {
        sqlx::query("INSERT INTO device_groups (device, group_name) VALUES ($1, $2)")
            .bind(&d.device)
            .bind(g)
            .execute(&mut *conn)
            .await
            .map_err(query("write a device's groups"))?;
    }
    sqlx::query("DELETE FROM device_models WHERE device = $1")
        .bind(&d.device)
        .execute(&mut *conn)
        .await
        .map_err(query("write a device's models"))?;
    for m in &d.models {
        sqlx::query(
            "INSERT INTO device_models (device, name, active_version, installed_versions, health) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&d.device)
        .bind(&m.name)
        .bind(m.active_version.as_deref())
        .bind(serde_json::to_string(&m.installed_versions).expect("strings serialize"))
        .bind(&m.health)
        .execute(&mut *conn)
        .await
        .map_err(query("write a device's models"))?;
    }
    Ok(())
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_left_out_of_messages() {
        assert_eq!(redact("postgres://fleet:s3cret@db:5432/fleet"), "postgres://fleet:***@db:5432/fleet");
        assert_eq!(redact("sqlite:///var/lib/x.db"), "sqlite:///var/lib/x.db");
    }
}
