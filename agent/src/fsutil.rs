//! Durable file writes.

use std::io::Write;
use std::path::Path;

use crate::disk;

/// The temporary file [`write_atomic`] writes beside `path`: a crash can leave it behind,
/// and whoever owns the directory may remove it.
pub fn temporary_for(path: &Path) -> std::path::PathBuf {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    path.with_file_name(format!("{name}.tmp"))
}

/// Replaces `path` with `data` atomically: write a temporary file beside it, fsync it,
/// rename it over `path`, fsync the directory. After a crash the file holds either the old
/// or the new contents, never a mix.
///
/// On a full file system the write draws on the space reserved for bookkeeping
/// ([`disk::release_for`]) and is tried again, so the agent's small state files stay
/// writable; a temporary file that could not be written is removed, not left taking space.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    loop {
        match write_once(path, data) {
            Err(e) if disk::is_no_space(&e) => {
                let _ = std::fs::remove_file(temporary_for(path));
                if !disk::release_for(path) {
                    return Err(e);
                }
            }
            Err(e) => {
                let _ = std::fs::remove_file(temporary_for(path));
                return Err(e);
            }
            Ok(()) => return Ok(()),
        }
    }
}

fn write_once(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = temporary_for(path);
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::tests::SmallFs;

    #[test]
    fn replaces_contents_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_full_file_system_draws_on_the_reserve() {
        // Failed with "No space left on device" before the reserve: telemetry.seq, `current`.
        let Some(fs) = SmallFs::mount(1024 * 1024) else { return };
        let state = disk::open_reserve(fs.path());
        let p = fs.path().join("current");
        write_atomic(&p, b"old").unwrap();
        fs.fill("filler");
        write_atomic(&p, &[7; 6000]).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), [7; 6000]);
        assert!(state.reserve_draws() >= 1 && state.full());
        assert!(!temporary_for(&p).exists());
    }

    #[test]
    fn without_a_reserve_a_full_file_system_fails_cleanly() {
        let Some(fs) = SmallFs::mount(64 * 1024) else { return };
        let p = fs.path().join("current");
        write_atomic(&p, b"old").unwrap();
        fs.fill("filler");
        let err = write_atomic(&p, &[7; 6000]).unwrap_err();
        assert!(disk::is_no_space(&err), "{err}");
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        assert!(!temporary_for(&p).exists(), "the temporary file is removed");
    }
}
