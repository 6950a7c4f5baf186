//! The artifact store: one file per artifact (model plus validation vector) in `[artifacts]
//! dir`, named by its SHA-256, from which chunks are served on demand.
//!
//! An upload is written to a temporary file in the same directory, hashed as it arrives,
//! synced, and renamed to its hash only when the hash matches the name it was uploaded
//! under: a file named by a hash always holds those bytes, and an interrupted upload
//! leaves no artifact. Uploading the same artifact again is a no-op. Replicas keep a
//! copy of each artifact in the database ([`crate::artifact_copies`]): a replica without
//! the file fetches it from there before reading a chunk.

use std::path::{Path, PathBuf};

use axum::body::Body;
use edge_proto::deployments::to_hex;
use edge_proto::ota::Manifest;
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use crate::artifact_copies::{Copies, CopyError};

/// What went wrong with an artifact.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// The name is not 64 lower-case hex digits.
    #[error("artifact name {0:?} is not a SHA-256 in lower-case hex (64 digits)")]
    BadName(String),
    /// The upload is larger than `[artifacts] max_bytes`.
    #[error("artifact over the {max} bytes of [artifacts] max_bytes; raise it in fleet.toml if this model is meant")]
    TooLarge {
        /// The limit.
        max: u64,
    },
    /// The bytes uploaded do not hash to the name.
    #[error("artifact uploaded as {expected} hashes to {got}: the upload was cut or altered; upload it again")]
    HashMismatch {
        /// The name.
        expected: String,
        /// The hash of what arrived.
        got: String,
    },
    /// The upload broke off.
    #[error("artifact upload broke off: {0}")]
    Upload(String),
    /// No such artifact.
    #[error("no artifact {0}: upload it first (PUT /v1/artifacts/{0})")]
    Missing(String),
    /// The artifact is not what the manifest describes.
    #[error("artifact {sha256} does not match the deployment's manifest: {problem}")]
    Mismatch {
        /// The artifact.
        sha256: String,
        /// What differs.
        problem: String,
    },
    /// The database's copy could not be written or read (replicas).
    #[error("artifact {sha256}: {source}")]
    Copy {
        /// The artifact.
        sha256: String,
        /// What failed.
        source: CopyError,
    },
    /// A file operation failed.
    #[error("artifact store {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// The store.
#[derive(Debug, Clone)]
pub struct Artifacts {
    dir: PathBuf,
    max_bytes: u64,
    copies: Option<Copies>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ArtifactError + '_ {
    move |source| ArtifactError::Io { path: path.to_path_buf(), source }
}

/// Whether `name` is a SHA-256 in lower-case hex.
pub fn valid_name(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl Artifacts {
    /// The store in `dir` (made if missing), refusing uploads over `max_bytes`; with
    /// `copies` (replicas), every upload is copied there and missing files fetched from it.
    pub async fn open(dir: &Path, max_bytes: u64, copies: Option<Copies>) -> Result<Artifacts, ArtifactError> {
        tokio::fs::create_dir_all(dir).await.map_err(io(dir))?;
        Ok(Artifacts { dir: dir.to_path_buf(), max_bytes, copies })
    }

    fn copy_error(sha256: &str) -> impl FnOnce(CopyError) -> ArtifactError + '_ {
        move |source| ArtifactError::Copy { sha256: sha256.into(), source }
    }

    /// The artifact's file, fetched from the database's copy first if this replica does
    /// not have it.
    async fn local(&self, sha256: &str) -> Result<PathBuf, ArtifactError> {
        let path = self.path(sha256)?;
        match tokio::fs::metadata(&path).await {
            Ok(_) => return Ok(path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&path)(e)),
        }
        let Some(copies) = &self.copies else { return Err(ArtifactError::Missing(sha256.into())) };
        let tmp = self.dir.join(format!(".fetch-{}", to_hex(&rand_suffix())));
        match copies.fetch(sha256, &tmp).await {
            Ok(true) => {}
            Ok(false) => return Err(ArtifactError::Missing(sha256.into())),
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(Self::copy_error(sha256)(e));
            }
        }
        tokio::fs::rename(&tmp, &path).await.map_err(io(&path))?;
        tracing::info!(artifact = sha256, "artifact fetched from the database's copy");
        Ok(path)
    }

    fn path(&self, sha256: &str) -> Result<PathBuf, ArtifactError> {
        if !valid_name(sha256) {
            return Err(ArtifactError::BadName(sha256.into()));
        }
        Ok(self.dir.join(sha256))
    }

    /// The size of an artifact, `None` when it is not stored (as a file here, or in the
    /// database's copies).
    pub async fn size(&self, sha256: &str) -> Result<Option<u64>, ArtifactError> {
        let path = self.path(sha256)?;
        match tokio::fs::metadata(&path).await {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match &self.copies {
                Some(c) => c.size(sha256).await.map_err(|e| Self::copy_error(sha256)(e.into())),
                None => Ok(None),
            },
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// Stores `body` as the artifact `sha256`; its size.
    pub async fn put(&self, sha256: &str, body: Body) -> Result<u64, ArtifactError> {
        let path = self.path(sha256)?;
        if let Some(size) = self.size(sha256).await? {
            // Same name, same bytes: nothing to do (the body is dropped unread), but for
            // the copy an earlier upload may have failed to make.
            // (Only a file of this replica's can lack its copy: one without the file here was
            // found in the copies, and fetching it just to store it again would be waste.)
            if let Some(copies) = &self.copies {
                if tokio::fs::try_exists(&path).await.map_err(io(&path))? {
                    copies.store(sha256, &path).await.map_err(Self::copy_error(sha256))?;
                }
            }
            return Ok(size);
        }
        let tmp = self.dir.join(format!(".upload-{}", to_hex(&rand_suffix())));
        let written = self.receive(&tmp, sha256, body).await;
        let size = match written {
            Ok(size) => size,
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(e);
            }
        };
        tokio::fs::rename(&tmp, &path).await.map_err(io(&path))?;
        let dir = tokio::fs::File::open(&self.dir).await.map_err(io(&self.dir))?;
        dir.sync_all().await.map_err(io(&self.dir))?;
        tracing::info!(artifact = sha256, bytes = size, "artifact stored");
        if let Some(copies) = &self.copies {
            // Failing here fails the upload: edgectl uploads again, and the copy is made
            // then (above).
            copies.store(sha256, &path).await.map_err(Self::copy_error(sha256))?;
        }
        Ok(size)
    }

    async fn receive(&self, tmp: &Path, sha256: &str, mut body: Body) -> Result<u64, ArtifactError> {
        let mut file = tokio::fs::File::create(tmp).await.map_err(io(tmp))?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| ArtifactError::Upload(e.to_string()))?;
            let Ok(data) = frame.into_data() else { continue };
            size += data.len() as u64;
            if size > self.max_bytes {
                return Err(ArtifactError::TooLarge { max: self.max_bytes });
            }
            hasher.update(&data);
            file.write_all(&data).await.map_err(io(tmp))?;
        }
        let got = to_hex(&hasher.finalize());
        if got != sha256 {
            return Err(ArtifactError::HashMismatch { expected: sha256.into(), got });
        }
        file.sync_all().await.map_err(io(tmp))?;
        Ok(size)
    }

    /// Checks that the artifact is the one `manifest` describes: its size and every
    /// chunk's hash. Hashing runs on a blocking thread.
    pub async fn check(&self, sha256: &str, manifest: &Manifest) -> Result<(), ArtifactError> {
        let path = self.local(sha256).await?;
        let Some(size) = self.size(sha256).await? else {
            return Err(ArtifactError::Missing(sha256.into()));
        };
        let mismatch = |problem: String| ArtifactError::Mismatch { sha256: sha256.into(), problem };
        if size != manifest.artifact_size() {
            return Err(mismatch(format!("{size} bytes, the manifest says {}", manifest.artifact_size())));
        }
        let manifest = manifest.clone();
        let checked = tokio::task::spawn_blocking(move || -> Result<Option<u32>, std::io::Error> {
            use std::io::Read;
            let mut file = std::fs::File::open(&path)?;
            let mut buf = vec![0u8; manifest.chunk_size as usize];
            for (index, (want, r)) in manifest.chunk_hashes.iter().zip(manifest.chunk_ranges()).enumerate() {
                let len = (r.end - r.start) as usize;
                file.read_exact(&mut buf[..len])?;
                if edge_proto::ota::sha256(&buf[..len]) != *want {
                    return Ok(Some(index as u32));
                }
            }
            Ok(None)
        })
        .await
        .map_err(|e| mismatch(format!("checking task failed: {e}")))?;
        match checked {
            Ok(None) => Ok(()),
            Ok(Some(index)) => Err(mismatch(format!("chunk {index} does not hash to the manifest's"))),
            Err(source) => Err(ArtifactError::Io { path: self.dir.join(sha256), source }),
        }
    }

    /// The bytes of chunk `index` of the artifact that `manifest` describes.
    pub async fn chunk(&self, sha256: &str, manifest: &Manifest, index: u32) -> Result<Vec<u8>, ArtifactError> {
        let path = self.local(sha256).await?;
        let r = manifest.chunk_range(index);
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(ArtifactError::Missing(sha256.into())),
            Err(e) => return Err(io(&path)(e)),
        };
        file.seek(std::io::SeekFrom::Start(r.start)).await.map_err(io(&path))?;
        let mut data = vec![0u8; (r.end - r.start) as usize];
        file.read_exact(&mut data).await.map_err(io(&path))?;
        Ok(data)
    }
}

impl Artifacts {
    /// Every artifact stored, here as a file or in the database's copies, with the time it
    /// was stored (ms; the file's modification time).
    pub async fn stored(&self) -> Result<Vec<(String, i64)>, ArtifactError> {
        let mut out = std::collections::BTreeMap::new();
        let mut dir = tokio::fs::read_dir(&self.dir).await.map_err(io(&self.dir))?;
        while let Some(entry) = dir.next_entry().await.map_err(io(&self.dir))? {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !valid_name(&name) {
                continue;
            }
            let modified = entry.metadata().await.and_then(|m| m.modified()).map_err(io(&entry.path()))?;
            let ms = modified.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
            out.insert(name, ms);
        }
        if let Some(copies) = &self.copies {
            let listed = copies.list().await.map_err(|e| Self::copy_error("(all)")(e.into()))?;
            for (sha, at) in listed {
                out.entry(sha).or_insert(at);
            }
        }
        Ok(out.into_iter().collect())
    }

    /// Deletes the artifact's file and the database's copy.
    pub async fn delete(&self, sha256: &str) -> Result<(), ArtifactError> {
        let path = self.path(sha256)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&path)(e)),
        }
        if let Some(copies) = &self.copies {
            copies.delete(sha256).await.map_err(|e| Self::copy_error(sha256)(e.into()))?;
        }
        Ok(())
    }
}

fn rand_suffix() -> [u8; 8] {
    let mut b = [0u8; 8];
    // A collision only makes two concurrent uploads of different artifacts share a
    // temporary name; fall back to the time.
    if getrandom::getrandom(&mut b).is_err() {
        b = (crate::db::now_ms() as u64).to_le_bytes();
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use edge_proto::ota::{prepare, ModelFormat};

    #[tokio::test]
    async fn an_upload_is_stored_under_its_hash_and_checked_against_the_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let store = Artifacts::open(dir.path(), 1 << 20, None).await.unwrap();
        let model: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        let (manifest, artifact) = prepare([1; 16], "m", "1", ModelFormat::Onnx, &model, None, 4096);
        let sha = to_hex(&edge_proto::ota::sha256(&artifact));
        assert_eq!(store.size(&sha).await.unwrap(), None);
        assert_eq!(store.put(&sha, Body::from(artifact.clone())).await.unwrap(), artifact.len() as u64);
        store.check(&sha, &manifest).await.unwrap();
        for i in 0..manifest.chunk_count() {
            let r = manifest.chunk_range(i);
            assert_eq!(store.chunk(&sha, &manifest, i).await.unwrap(), artifact[r.start as usize..r.end as usize]);
        }
        // The same upload again is a no-op.
        assert_eq!(store.put(&sha, Body::from(artifact.clone())).await.unwrap(), artifact.len() as u64);
        // Another manifest (another chunking) does not match.
        let (other, _) = prepare([1; 16], "m", "1", ModelFormat::Onnx, &model[..9000], None, 4096);
        assert!(matches!(store.check(&sha, &other).await, Err(ArtifactError::Mismatch { .. })));
    }

    #[tokio::test]
    async fn altered_oversized_and_badly_named_uploads_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Artifacts::open(dir.path(), 100, None).await.unwrap();
        let sha = to_hex(&edge_proto::ota::sha256(b"hello"));
        let err = store.put(&sha, Body::from(&b"hellO"[..])).await.unwrap_err();
        assert!(matches!(err, ArtifactError::HashMismatch { .. }), "{err}");
        let err = store.put(&sha, Body::from(vec![0u8; 101])).await.unwrap_err();
        assert!(matches!(err, ArtifactError::TooLarge { max: 100 }), "{err}");
        let err = store.put("../etc/passwd", Body::from(&b"x"[..])).await.unwrap_err();
        assert!(matches!(err, ArtifactError::BadName(_)), "{err}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "no file left behind");
    }
}
