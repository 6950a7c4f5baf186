//! Overwrite-then-delete: how the store removes model files.

use std::fs;
use std::io;
use std::path::Path;

use super::{io_err, StoreError};
use crate::fsutil;

/// Overwrites a file with zeros and syncs it before unlinking it. On flash with wear
/// levelling the old blocks may survive in the controller; with `encrypt_models`, erasing
/// the key is what makes them unreadable.
pub fn wipe_file(path: &Path) -> Result<(), StoreError> {
    let len = match fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("stat", path)(e)),
    };
    {
        let mut f = fsutil::File::open_rw(path).map_err(io_err("open", path))?;
        let zeros = vec![0u8; 64 * 1024];
        let mut left = len;
        while left > 0 {
            let n = left.min(zeros.len() as u64) as usize;
            f.write_all(&zeros[..n]).map_err(io_err("overwrite", path))?;
            left -= n as u64;
        }
        f.sync_all().map_err(io_err("fsync", path))?;
    }
    fsutil::remove_file(path).map_err(io_err("remove", path))
}

/// [`wipe_file`] on every file under `dir`, then removes it.
pub fn wipe_dir(dir: &Path) -> Result<(), StoreError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("list", dir)(e)),
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            wipe_dir(&path)?;
        } else {
            wipe_file(&path)?;
        }
    }
    fsutil::remove_dir(dir).map_err(io_err("remove directory", dir))
}
