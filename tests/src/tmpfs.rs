//! A small real file system for the tests that fill it: a tmpfs mounted on a directory,
//! unmounted on drop. Mounting needs root (CI runs as root); where it is refused, the
//! reason is printed and the test that asked gets `None` and checks nothing.

use std::io::Write;
use std::path::{Path, PathBuf};

/// A mounted tmpfs.
pub struct Tmpfs {
    dir: PathBuf,
    /// The temporary directory it is mounted on, when [`Tmpfs::mount`] made one.
    _temp: Option<tempfile::TempDir>,
}

impl Tmpfs {
    /// A tmpfs of `bytes` on a fresh temporary directory.
    pub fn mount(bytes: u64) -> Option<Tmpfs> {
        let temp = tempfile::tempdir().expect("temporary directory");
        let dir = temp.path().to_path_buf();
        Tmpfs::mount_at(&dir, bytes, Some(temp))
    }

    /// A tmpfs of `bytes` on `dir` (created if missing).
    pub fn mount_on(dir: &Path, bytes: u64) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).expect("mount point");
        Tmpfs::mount_at(dir, bytes, None)
    }

    fn mount_at(dir: &Path, bytes: u64, temp: Option<tempfile::TempDir>) -> Option<Tmpfs> {
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs { dir: dir.to_path_buf(), _temp: temp }),
            Ok(o) => {
                eprintln!("skipped: cannot mount a tmpfs: {}", String::from_utf8_lossy(&o.stderr).trim());
                None
            }
            Err(e) => {
                eprintln!("skipped: cannot run mount: {e}");
                None
            }
        }
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Fills the file system to the last byte with the file `name`.
    pub fn fill(&self, name: &str) {
        let mut f = std::fs::File::create(self.dir.join(name)).expect("filler file");
        for chunk in [64 * 1024, 4096, 1] {
            let block = vec![0xa5u8; chunk];
            while f.write_all(&block).and_then(|()| f.sync_all()).is_ok() {}
        }
        assert_eq!(self.free(), 0, "the file system is not full");
    }

    /// Bytes free for an unprivileged user.
    pub fn free(&self) -> u64 {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(self.dir.as_os_str().as_bytes()).expect("path without NUL");
        // SAFETY: `c` is a valid NUL-terminated path and `st` a properly sized out-parameter.
        unsafe {
            let mut st: libc::statvfs = std::mem::zeroed();
            assert_eq!(libc::statvfs(c.as_ptr(), &mut st), 0, "statvfs {}", self.dir.display());
            st.f_bavail as u64 * st.f_frsize as u64
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.dir).status();
    }
}
