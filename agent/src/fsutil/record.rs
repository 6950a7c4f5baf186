//! The log of durable file operations, for the power-cut tests.
//!
//! Every file operation that writes the agent's durable state goes through [`super`]
//! ([`super::File`], [`super::rename`], [`super::sync_dir`], ...), which does the real
//! operation and, while a [`Recording`] is active on the calling thread, also logs it
//! here. A test replays the log up to a cut with the durability rules of POSIX (file data
//! is durable after its fsync, a directory entry after its directory's fsync) to see what
//! a power cut at that point leaves on disk (`agent/tests/power_cut/`).
//!
//! Off, which is always the case outside those tests, it costs a thread-local read and a
//! branch per operation. Thread-local so that tests running in parallel each see only
//! their own operations.

use std::cell::RefCell;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

/// One durable file operation. Paths are relative to the recording's root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// A file created, or truncated to nothing if it existed.
    Create(PathBuf),
    /// Bytes written at an offset.
    Write {
        /// The file.
        path: PathBuf,
        /// Where.
        offset: u64,
        /// What.
        data: Vec<u8>,
    },
    /// The file's length set (truncated, or extended with zeros; an allocation).
    SetLen {
        /// The file.
        path: PathBuf,
        /// Its new length.
        len: u64,
    },
    /// `fsync`/`fdatasync` of a file: its data and length are durable.
    Sync(PathBuf),
    /// `fsync` of a directory: its entries are durable.
    SyncDir(PathBuf),
    /// A rename, within one directory or across.
    Rename {
        /// Old name.
        from: PathBuf,
        /// New name (replaced if it exists).
        to: PathBuf,
    },
    /// A file unlinked.
    Remove(PathBuf),
    /// A directory made.
    CreateDir(PathBuf),
    /// An empty directory removed.
    RemoveDir(PathBuf),
    /// A point the test named ([`mark`]): no file operation.
    Mark(String),
}

struct Log {
    root: PathBuf,
    ops: Vec<Op>,
}

thread_local! {
    static LOG: RefCell<Option<Log>> = const { RefCell::new(None) };
}

/// An active recording on this thread; it stops when dropped.
pub struct Recording {
    /// Not `Send`: the log belongs to the thread that started it.
    _thread: PhantomData<*const ()>,
}

/// Starts logging, on this thread, the operations on paths under `root` (others are not
/// logged). Replaces a recording already active.
pub fn start(root: &Path) -> Recording {
    LOG.with(|l| *l.borrow_mut() = Some(Log { root: root.to_path_buf(), ops: vec![] }));
    Recording { _thread: PhantomData }
}

impl Recording {
    /// The operations logged so far.
    pub fn ops(&self) -> Vec<Op> {
        LOG.with(|l| l.borrow().as_ref().map(|l| l.ops.clone()).unwrap_or_default())
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        LOG.with(|l| *l.borrow_mut() = None);
    }
}

/// Logs a named point between operations (a test's "the command was accepted").
pub fn mark(label: &str) {
    LOG.with(|l| {
        if let Some(log) = l.borrow_mut().as_mut() {
            log.ops.push(Op::Mark(label.into()));
        }
    })
}

/// Whether a recording is active on this thread.
pub(super) fn active() -> bool {
    LOG.with(|l| l.borrow().is_some())
}

/// Logs the operation `op` makes of `root`-relative paths, when a recording is active and
/// every path it names is under its root.
pub(super) fn log(op: impl FnOnce(&dyn Fn(&Path) -> Option<PathBuf>) -> Option<Op>) {
    LOG.with(|l| {
        if let Some(log) = l.borrow_mut().as_mut() {
            let root = log.root.clone();
            let rel = move |p: &Path| p.strip_prefix(&root).ok().map(Path::to_path_buf);
            if let Some(op) = op(&rel) {
                log.ops.push(op);
            }
        }
    })
}
