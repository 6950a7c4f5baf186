//! Disk space: how much is free, real preallocation, and the reserve that keeps the
//! agent's own bookkeeping writable on a full file system.
//!
//! ```text
//! {state_dir}/disk.reserve   RESERVE_BYTES of allocated blocks, nothing else
//! ```
//!
//! The agent's bookkeeping (`current`, `runtime.json`, trial markers, `telemetry.seq`,
//! outbox cursors) is a handful of small files replaced with
//! [`write_atomic`](crate::fsutil::write_atomic). Each replacement needs a block or two
//! for a moment, and on a file system that something else filled to the last byte even
//! that fails: the agent could neither start nor record the commands that would free
//! space. So [`open_reserve`] allocates a reserve file at start while there is room, and
//! when a bookkeeping write fails with ENOSPC, `write_atomic` asks [`release_for`] to give
//! back a [`RELEASE_STEP`] of it and tries again. The reserve is given back a step at a
//! time, not at once, so that whatever fills the disk cannot take all of it with the first
//! write. [`refresh`] (after a model is removed, and on every status) makes it whole again
//! once there is room.
//!
//! [`DiskState`] is what an operator sees: whether the file system is full, how much of
//! the reserve is left, how often it was drawn on and how many writes failed for lack of
//! space.
//!
//! Space is allocated for real ([`allocate`]): a sparse file (`set_len`) takes no blocks,
//! so a transfer into one fails at 90 % on a full disk instead of at its start.

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Name of the reserve file in `state_dir`.
pub const RESERVE_FILE: &str = "disk.reserve";

/// Size of the reserve: room for the bookkeeping of a few hundred commands and telemetry
/// blocks on a full disk (each replacement takes one block, 4 KiB on most file systems).
pub const RESERVE_BYTES: u64 = 256 * 1024;

/// How much of the reserve one failed write gives back.
pub const RELEASE_STEP: u64 = 32 * 1024;

/// Below this much free space (beyond the reserve) the file system counts as full.
pub const FULL_BELOW: u64 = 64 * 1024;

/// Free and total bytes of a file system, as an unprivileged process may use them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    /// Bytes available to unprivileged users (`f_bavail`).
    pub free: u64,
    /// Size of the file system.
    pub total: u64,
}

/// One `statvfs` of the file system holding `path`.
pub fn space(path: &Path) -> io::Result<Space> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"))?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a properly sized out-parameter.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let frsize = st.f_frsize as u64;
    Ok(Space { free: st.f_bavail as u64 * frsize, total: st.f_blocks as u64 * frsize })
}

/// Whether `e` says the file system (or the user's quota) is full.
pub fn is_no_space(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

/// Allocates blocks for the first `len` bytes of `file` (extending it to `len` if
/// shorter), so that writing there later cannot fail for lack of space. Where the file
/// system cannot preallocate, zeros are written instead: the blocks are real either way.
pub fn allocate(file: &File, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    if len == 0 {
        return Ok(());
    }
    let off_len = libc::off_t::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    // SAFETY: a valid open descriptor; posix_fallocate returns the error instead of
    // setting errno.
    match unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, off_len) } {
        0 => Ok(()),
        libc::EOPNOTSUPP | libc::EINVAL => write_zeros(file, len),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

fn write_zeros(file: &File, len: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let zeros = vec![0u8; 64 * 1024];
    let mut at = file.metadata()?.len();
    while at < len {
        let n = (len - at).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

/// What an operator should see of the state directory's file system. Shared by the
/// reserve and whoever exports it (`/metrics`, telemetry, `get-status`).
#[derive(Debug, Default)]
pub struct DiskState {
    full: AtomicBool,
    reserve_bytes: AtomicU64,
    reserve_draws: AtomicU64,
    no_space_errors: AtomicU64,
}

impl DiskState {
    /// Whether the file system is full: less than [`FULL_BELOW`] free, or the reserve not
    /// whole, or a write failed for lack of space since the last [`refresh`].
    pub fn full(&self) -> bool {
        self.full.load(Ordering::Relaxed)
    }

    /// Bytes the reserve holds now (0: absent).
    pub fn reserve_bytes(&self) -> u64 {
        self.reserve_bytes.load(Ordering::Relaxed)
    }

    /// Times a write drew on the reserve.
    pub fn reserve_draws(&self) -> u64 {
        self.reserve_draws.load(Ordering::Relaxed)
    }

    /// Writes that failed for lack of space (after the reserve, where there was one).
    pub fn no_space_errors(&self) -> u64 {
        self.no_space_errors.load(Ordering::Relaxed)
    }
}

/// The reserve file of one state directory.
#[derive(Debug)]
struct Reserve {
    path: PathBuf,
    /// The file system it is on (`st_dev`): writes there may draw on it.
    dev: u64,
    state: Arc<DiskState>,
    /// Serialises resizing the file.
    lock: Mutex<()>,
}

/// Every reserve opened by this process. A global because `write_atomic` is called from
/// every layer with nothing but a path; it finds the reserve by file system.
static RESERVES: Mutex<Vec<Arc<Reserve>>> = Mutex::new(Vec::new());

fn device_of(path: &Path) -> Option<u64> {
    // The file may not exist yet: its directory is on the same file system.
    match std::fs::metadata(path) {
        Ok(m) => Some(m.dev()),
        Err(_) => std::fs::metadata(path.parent()?).ok().map(|m| m.dev()),
    }
}

fn reserves_on(dev: u64) -> Vec<Arc<Reserve>> {
    RESERVES.lock().unwrap_or_else(|e| e.into_inner()).iter().filter(|r| r.dev == dev).cloned().collect()
}

/// Opens the reserve in `state_dir` (which must exist), makes it whole when there is
/// room, and registers it so that [`write_atomic`](crate::fsutil::write_atomic) on that
/// file system can draw on it. Never fails: without room the reserve stays short or
/// absent, which is logged and shows in the returned state. Opening the same directory
/// again returns the same state.
pub fn open_reserve(state_dir: &Path) -> Arc<DiskState> {
    let path = state_dir.join(RESERVE_FILE);
    let existing = RESERVES.lock().unwrap_or_else(|e| e.into_inner()).iter().find(|r| r.path == path).cloned();
    let reserve = match existing {
        Some(r) => r,
        None => {
            let dev = device_of(state_dir).unwrap_or(u64::MAX);
            let r = Arc::new(Reserve { path, dev, state: Arc::default(), lock: Mutex::new(()) });
            RESERVES.lock().unwrap_or_else(|e| e.into_inner()).push(r.clone());
            r
        }
    };
    top_up(&reserve);
    if reserve.state.reserve_bytes() < RESERVE_BYTES {
        tracing::warn!(
            path = %reserve.path.display(),
            bytes = reserve.state.reserve_bytes(),
            "disk: the space reserved for bookkeeping is short of {RESERVE_BYTES} bytes (file system full); \
             free space (edgectl remove-model an old model) and it is made whole again"
        );
    }
    reserve.state.clone()
}

/// Grows the reserve file to [`RESERVE_BYTES`] if the file system has the room, and
/// updates the state (the `full` flag included).
fn top_up(reserve: &Reserve) {
    let _guard = reserve.lock.lock().unwrap_or_else(|e| e.into_inner());
    let file = match crate::fsutil::File::open_or_create(&reserve.path) {
        Ok(f) => f,
        Err(e) => {
            tracing::debug!("disk: cannot open {}: {e}", reserve.path.display());
            reserve.state.full.store(true, Ordering::Relaxed);
            return;
        }
    };
    let have = file.std().metadata().map(|m| m.len()).unwrap_or(0);
    let free = space(&reserve.path).map(|s| s.free).unwrap_or(0);
    let mut len = have;
    // Only with room to spare: making the reserve whole must not itself fill the disk.
    if have < RESERVE_BYTES && free >= (RESERVE_BYTES - have) + FULL_BELOW {
        match file.allocate(RESERVE_BYTES) {
            Ok(()) => {
                let _ = file.sync_all();
                len = RESERVE_BYTES;
                if have > 0 {
                    tracing::info!(path = %reserve.path.display(), "disk: space for bookkeeping reserved again");
                }
            }
            // A failed allocation may keep part of what it took: give that back.
            Err(e) => {
                tracing::debug!("disk: cannot make {} whole: {e}", reserve.path.display());
                let _ = file.set_len(have);
            }
        }
    }
    reserve.state.reserve_bytes.store(len, Ordering::Relaxed);
    let free = space(&reserve.path).map(|s| s.free).unwrap_or(0);
    reserve.state.full.store(len < RESERVE_BYTES || free < FULL_BELOW, Ordering::Relaxed);
}

/// Gives back one [`RELEASE_STEP`] of the reserve on the file system holding `path`, after
/// a write there failed for lack of space. Returns whether anything was given back (the
/// caller then tries again); when not, the failure is counted.
pub fn release_for(path: &Path) -> bool {
    let Some(dev) = device_of(path) else { return false };
    let reserves = reserves_on(dev);
    for reserve in &reserves {
        reserve.state.full.store(true, Ordering::Relaxed);
        let _guard = reserve.lock.lock().unwrap_or_else(|e| e.into_inner());
        let Ok(file) = crate::fsutil::File::open_rw(&reserve.path) else { continue };
        let have = file.std().metadata().map(|m| m.len()).unwrap_or(0);
        if have == 0 {
            continue;
        }
        let left = have.saturating_sub(RELEASE_STEP);
        if file.set_len(left).is_ok() {
            reserve.state.reserve_bytes.store(left, Ordering::Relaxed);
            reserve.state.reserve_draws.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                path = %path.display(),
                reserve_left = left,
                "disk: file system full; drew on the space reserved for bookkeeping. \
                 Free space (edgectl remove-model an old model)"
            );
            return true;
        }
    }
    note_no_space(path);
    false
}

/// Counts a write on the file system holding `path` that failed for lack of space and
/// marks it full (where a reserve is registered for it).
pub fn note_no_space(path: &Path) {
    let Some(dev) = device_of(path) else { return };
    for reserve in reserves_on(dev) {
        reserve.state.full.store(true, Ordering::Relaxed);
        reserve.state.no_space_errors.fetch_add(1, Ordering::Relaxed);
    }
}

/// Makes the reserve on the file system holding `path` whole again if there is room now,
/// and updates its state. Cheap (a `statvfs` and an `fstat`) when nothing is to be done;
/// call it after freeing space and whenever the state is reported.
pub fn refresh(path: &Path) {
    let Some(dev) = device_of(path) else { return };
    for reserve in reserves_on(dev) {
        top_up(&reserve);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocate_takes_real_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let f = File::create(dir.path().join("a")).unwrap();
        allocate(&f, 1 << 20).unwrap();
        let m = f.metadata().unwrap();
        assert_eq!(m.len(), 1 << 20);
        // st_blocks counts 512-byte units actually allocated; a sparse file has none.
        assert!(m.blocks() * 512 >= 1 << 20, "{} blocks", m.blocks());
    }

    #[test]
    fn allocate_on_a_full_file_system_fails_with_enospc() {
        let Some(fs) = edge_it::Tmpfs::mount(256 * 1024) else { return };
        let f = File::create(fs.path().join("big")).unwrap();
        let err = allocate(&f, 1 << 20).unwrap_err();
        assert!(is_no_space(&err), "{err}");
    }

    #[test]
    fn space_reports_the_file_system_size() {
        let Some(fs) = edge_it::Tmpfs::mount(512 * 1024) else { return };
        let s = space(fs.path()).unwrap();
        assert_eq!(s.total, 512 * 1024);
        assert_eq!(s.free, 512 * 1024);
    }

    #[test]
    fn the_reserve_is_drawn_on_step_by_step_and_made_whole_when_space_returns() {
        let Some(fs) = edge_it::Tmpfs::mount(1024 * 1024) else { return };
        let state = open_reserve(fs.path());
        assert_eq!(state.reserve_bytes(), RESERVE_BYTES);
        assert!(!state.full());
        fs.fill("filler");
        refresh(fs.path());
        assert!(state.full(), "less than FULL_BELOW free is full");
        assert!(release_for(&fs.path().join("x")));
        assert_eq!(state.reserve_bytes(), RESERVE_BYTES - RELEASE_STEP);
        assert_eq!(state.reserve_draws(), 1);
        // Still no room to make it whole.
        refresh(fs.path());
        assert_eq!(state.reserve_bytes(), RESERVE_BYTES - RELEASE_STEP);
        std::fs::remove_file(fs.path().join("filler")).unwrap();
        refresh(fs.path());
        assert_eq!(state.reserve_bytes(), RESERVE_BYTES);
        assert!(!state.full());
        assert_eq!(std::fs::metadata(fs.path().join(RESERVE_FILE)).unwrap().len(), RESERVE_BYTES);
    }

    #[test]
    fn without_room_the_reserve_is_absent_and_reported() {
        let Some(fs) = edge_it::Tmpfs::mount(128 * 1024) else { return };
        let state = open_reserve(fs.path());
        assert_eq!(state.reserve_bytes(), 0);
        assert!(state.full());
        assert!(!release_for(&fs.path().join("x")));
        assert_eq!(state.no_space_errors(), 1);
    }
}
