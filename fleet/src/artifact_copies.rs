//! The database's copy of the artifacts, for replicas: the replica that receives an upload
//! is not necessarily the one that serves a device's chunks, and replicas need not share a
//! file system. With `share_group` set, [`crate::artifacts::Artifacts`] writes every
//! upload here as well (table `artifact_blocks`, 1 MiB blocks, and its row in `artifacts`,
//! in one transaction), and a replica that does not have an artifact as a file fetches it
//! from here into its own directory, checking its SHA-256, before it reads a chunk.
//!
//! The files stay the working copy (chunks are read from them); the database is what the
//! replicas share. Without `share_group`, nothing is written here.

use std::path::Path;

use sha2::{Digest, Sha256};
use sqlx::Row;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::db::{now_ms, query, Db, DbError};

/// Bytes per stored block.
pub const BLOCK: usize = 1 << 20;

/// What went wrong copying an artifact to or from the database.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The local file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The blocks in the database do not hash to the artifact's name.
    #[error("the database's copy of artifact {sha256} is damaged (it hashes to {got}): upload it again")]
    Damaged {
        /// The artifact.
        sha256: String,
        /// What the blocks hash to.
        got: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CopyError + '_ {
    move |source| CopyError::Io { path: path.to_path_buf(), source }
}

/// The copies, in `db`.
#[derive(Debug, Clone)]
pub struct Copies {
    db: Db,
}

impl Copies {
    /// The copies in `db`.
    pub fn new(db: Db) -> Copies {
        Copies { db }
    }

    /// The size of the stored copy of `sha256`, `None` without one.
    pub async fn size(&self, sha256: &str) -> Result<Option<u64>, DbError> {
        let row = sqlx::query("SELECT size FROM artifacts WHERE sha256 = $1")
            .bind(sha256)
            .fetch_optional(self.db.pool())
            .await
            .map_err(query("read an artifact"))?;
        row.map(|r| r.try_get::<i64, _>(0).map(|s| s as u64)).transpose().map_err(query("read an artifact"))
    }

    /// Stores the file at `path` as the copy of `sha256` (already checked against its
    /// name), unless there is one.
    pub async fn store(&self, sha256: &str, path: &Path) -> Result<(), CopyError> {
        if self.size(sha256).await?.is_some() {
            return Ok(());
        }
        let mut file = tokio::fs::File::open(path).await.map_err(io(path))?;
        let mut tx = self.db.pool().begin().await.map_err(query("begin"))?;
        let mut size = 0u64;
        let mut buf = vec![0u8; BLOCK];
        for block in 0i64.. {
            let n = read_full(&mut file, &mut buf).await.map_err(io(path))?;
            if n == 0 {
                break;
            }
            sqlx::query(
                "INSERT INTO artifact_blocks (sha256, block, data) VALUES ($1, $2, $3) \
                 ON CONFLICT (sha256, block) DO NOTHING",
            )
            .bind(sha256)
            .bind(block)
            .bind(&buf[..n])
            .execute(&mut *tx)
            .await
            .map_err(query("store an artifact block"))?;
            size += n as u64;
        }
        sqlx::query(
            "INSERT INTO artifacts (sha256, size, created_at) VALUES ($1, $2, $3) ON CONFLICT (sha256) DO NOTHING",
        )
        .bind(sha256)
        .bind(size as i64)
        .bind(now_ms())
        .execute(&mut *tx)
        .await
        .map_err(query("store an artifact"))?;
        tx.commit().await.map_err(query("commit an artifact"))?;
        tracing::info!(artifact = sha256, bytes = size, "artifact copied to the database for the other replicas");
        Ok(())
    }

    /// Writes the stored copy of `sha256` to `tmp` (synced), checking its hash. `false`
    /// when there is no copy.
    pub async fn fetch(&self, sha256: &str, tmp: &Path) -> Result<bool, CopyError> {
        if self.size(sha256).await?.is_none() {
            return Ok(false);
        }
        let mut file = tokio::fs::File::create(tmp).await.map_err(io(tmp))?;
        let mut hasher = Sha256::new();
        for block in 0i64.. {
            let row = sqlx::query("SELECT data FROM artifact_blocks WHERE sha256 = $1 AND block = $2")
                .bind(sha256)
                .bind(block)
                .fetch_optional(self.db.pool())
                .await
                .map_err(query("read an artifact block"))?;
            let Some(row) = row else { break };
            let data: Vec<u8> = row.try_get(0).map_err(query("read an artifact block"))?;
            hasher.update(&data);
            file.write_all(&data).await.map_err(io(tmp))?;
        }
        let got = edge_proto::deployments::to_hex(&hasher.finalize());
        if got != sha256 {
            return Err(CopyError::Damaged { sha256: sha256.into(), got });
        }
        file.sync_all().await.map_err(io(tmp))?;
        Ok(true)
    }
}

impl Copies {
    /// Every stored copy with the time it was stored, ms.
    pub async fn list(&self) -> Result<Vec<(String, i64)>, DbError> {
        let rows = sqlx::query("SELECT sha256, created_at FROM artifacts")
            .fetch_all(self.db.pool())
            .await
            .map_err(query("list artifacts"))?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(query("list artifacts"))
    }

    /// Deletes the copy of `sha256`, if any.
    pub async fn delete(&self, sha256: &str) -> Result<(), DbError> {
        let mut tx = self.db.pool().begin().await.map_err(query("begin"))?;
        for sql in ["DELETE FROM artifacts WHERE sha256 = $1", "DELETE FROM artifact_blocks WHERE sha256 = $1"] {
            sqlx::query(sql).bind(sha256).execute(&mut *tx).await.map_err(query("delete an artifact"))?;
        }
        tx.commit().await.map_err(query("commit"))
    }
}

/// Reads until `buf` is full or the file ends; how many bytes.
async fn read_full(file: &mut tokio::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let r = file.read(&mut buf[n..]).await?;
        if r == 0 {
            break;
        }
        n += r;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_artifact_of_several_blocks_comes_back_as_it_went_in() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&format!("sqlite://{}", dir.path().join("fleet.db").display())).await.unwrap();
        let copies = Copies::new(db);
        let bytes: Vec<u8> = (0..(2 * BLOCK + 12345) as u32).map(|i| (i % 251) as u8).collect();
        let sha = edge_proto::deployments::to_hex(&edge_proto::ota::sha256(&bytes));
        let src = dir.path().join("src");
        std::fs::write(&src, &bytes).unwrap();
        assert_eq!(copies.size(&sha).await.unwrap(), None);
        assert!(!copies.fetch(&sha, &dir.path().join("none")).await.unwrap(), "no copy yet");
        copies.store(&sha, &src).await.unwrap();
        copies.store(&sha, &src).await.unwrap();
        assert_eq!(copies.size(&sha).await.unwrap(), Some(bytes.len() as u64));
        let back = dir.path().join("back");
        assert!(copies.fetch(&sha, &back).await.unwrap());
        assert_eq!(std::fs::read(&back).unwrap(), bytes);
    }
}
