//! A simulated file system that loses what a power cut loses.
//!
//! The agent's durable writes are logged by `edge_agent::fsutil::record`; [`Crash`] replays
//! that log from a snapshot of the directory taken when recording began, and for any cut
//! point `k` (after the first `k` operations) materialises what survives into a fresh
//! directory, under one of three [`Mode`]s:
//!
//! - [`Mode::Posix`]: only what was made durable survives. A file's data and length after
//!   its `fsync`/`fdatasync`; a directory's entries (creations, renames, removals) after
//!   the directory's `fsync`, each directory on its own.
//! - [`Mode::Journal`]: every directory change survives in order (a journalling file
//!   system commits them), file data still only after its sync: the "empty file after a
//!   crash" of delayed allocation.
//! - [`Mode::Torn`]: as `Journal`, and each file's unsynced writes survive too, except
//!   the last, which is cut in half.
//!
//! Files and directories are inodes, so a renamed directory keeps its entries.

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsString;
use std::path::{Component, Path};

use edge_agent::fsutil::record::Op;

/// What survives a cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Only what was synced.
    Posix,
    /// Directory changes in order; file data only once synced.
    Journal,
    /// As `Journal`, with unsynced writes surviving, the last one torn.
    Torn,
}

pub const MODES: [Mode; 3] = [Mode::Posix, Mode::Journal, Mode::Torn];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Node {
    File(usize),
    Dir(usize),
}

#[derive(Debug, Clone)]
enum Change {
    Write(u64, Vec<u8>),
    SetLen(u64),
}

#[derive(Debug, Clone, Default)]
struct Inode {
    durable: Vec<u8>,
    pending: Vec<Change>,
}

fn apply(data: &mut Vec<u8>, change: &Change) {
    match change {
        Change::Write(at, bytes) => {
            let end = *at as usize + bytes.len();
            if data.len() < end {
                data.resize(end, 0);
            }
            data[*at as usize..end].copy_from_slice(bytes);
        }
        Change::SetLen(len) => data.resize(*len as usize, 0),
    }
}

/// The replayed file system.
#[derive(Debug, Clone)]
pub struct Crash {
    files: Vec<Inode>,
    /// Entries of each directory as the process sees them, and as they are durable.
    dirs: Vec<BTreeMap<OsString, Node>>,
    durable_dirs: Vec<BTreeMap<OsString, Node>>,
}

/// One materialised state: relative path to contents (`None`: a directory).
pub type Tree = BTreeMap<std::path::PathBuf, Option<Vec<u8>>>;

impl Crash {
    /// The model of `root` as it is now (all of it durable).
    pub fn snapshot(root: &Path) -> Crash {
        let mut fs = Crash { files: vec![], dirs: vec![BTreeMap::new()], durable_dirs: vec![BTreeMap::new()] };
        fs.load(root, 0);
        fs.durable_dirs = fs.dirs.clone();
        fs
    }

    fn load(&mut self, dir: &Path, ino: usize) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let node = if entry.file_type().unwrap().is_dir() {
                self.dirs.push(BTreeMap::new());
                let d = self.dirs.len() - 1;
                self.load(&entry.path(), d);
                Node::Dir(d)
            } else {
                let data = std::fs::read(entry.path()).unwrap();
                self.files.push(Inode { durable: data, pending: vec![] });
                Node::File(self.files.len() - 1)
            };
            self.dirs[ino].insert(entry.file_name(), node);
        }
    }

    fn parent_of<'a>(&self, path: &'a Path) -> (usize, &'a std::ffi::OsStr) {
        let mut dir = 0;
        let parent = path.parent().unwrap_or(Path::new(""));
        for c in parent.components() {
            let Component::Normal(name) = c else { panic!("{}: not a plain relative path", path.display()) };
            match self.dirs[dir].get(name) {
                Some(Node::Dir(d)) => dir = *d,
                other => panic!("{}: {name:?} is {other:?}, not a directory", path.display()),
            }
        }
        (dir, path.file_name().unwrap_or_else(|| panic!("{}: no file name", path.display())))
    }

    fn lookup(&self, path: &Path) -> Node {
        if path.as_os_str().is_empty() {
            return Node::Dir(0);
        }
        let (dir, name) = self.parent_of(path);
        *self.dirs[dir].get(name).unwrap_or_else(|| panic!("{}: no such entry in the model", path.display()))
    }

    fn file(&mut self, path: &Path) -> &mut Inode {
        match self.lookup(path) {
            Node::File(i) => &mut self.files[i],
            Node::Dir(_) => panic!("{}: a directory, written as a file", path.display()),
        }
    }

    /// Applies one logged operation.
    pub fn apply(&mut self, op: &Op) {
        match op {
            Op::Create(p) => {
                let (dir, name) = self.parent_of(p);
                match self.dirs[dir].get(name) {
                    Some(Node::File(i)) => self.files[*i].pending.push(Change::SetLen(0)),
                    _ => {
                        self.files.push(Inode::default());
                        self.dirs[dir].insert(name.into(), Node::File(self.files.len() - 1));
                    }
                }
            }
            Op::Write { path, offset, data } => self.file(path).pending.push(Change::Write(*offset, data.clone())),
            Op::SetLen { path, len } => self.file(path).pending.push(Change::SetLen(*len)),
            Op::Sync(p) => {
                let f = self.file(p);
                for c in std::mem::take(&mut f.pending) {
                    apply(&mut f.durable, &c);
                }
            }
            Op::SyncDir(p) => {
                let Node::Dir(d) = self.lookup(p) else { panic!("{}: fsync of a file as a directory", p.display()) };
                self.durable_dirs[d] = self.dirs[d].clone();
            }
            Op::Rename { from, to } => {
                let (fd, fname) = self.parent_of(from);
                let node = self.dirs[fd].remove(fname).expect("renamed entry exists");
                let (td, tname) = self.parent_of(to);
                self.dirs[td].insert(tname.into(), node);
            }
            Op::Remove(p) | Op::RemoveDir(p) => {
                let (dir, name) = self.parent_of(p);
                self.dirs[dir].remove(name);
            }
            Op::CreateDir(p) => {
                let (dir, name) = self.parent_of(p);
                self.dirs.push(BTreeMap::new());
                self.durable_dirs.push(BTreeMap::new());
                let d = self.dirs.len() - 1;
                self.dirs[dir].insert(name.into(), Node::Dir(d));
            }
            Op::Mark(_) => {}
        }
    }

    /// What a power cut now leaves, under `mode`.
    pub fn survivors(&self, mode: Mode) -> Tree {
        let mut out = Tree::new();
        self.collect(mode, 0, Path::new(""), &mut out);
        out
    }

    fn collect(&self, mode: Mode, dir: usize, at: &Path, out: &mut Tree) {
        let entries = if mode == Mode::Posix { &self.durable_dirs[dir] } else { &self.dirs[dir] };
        for (name, node) in entries {
            let path = at.join(name);
            match node {
                Node::Dir(d) => {
                    out.insert(path.clone(), None);
                    self.collect(mode, *d, &path, out);
                }
                Node::File(i) => {
                    let f = &self.files[*i];
                    let mut data = f.durable.clone();
                    if mode == Mode::Torn {
                        let last = f.pending.iter().rposition(|c| matches!(c, Change::Write(..)));
                        for (n, c) in f.pending.iter().enumerate() {
                            match c {
                                Change::Write(at, bytes) if Some(n) == last => {
                                    apply(&mut data, &Change::Write(*at, bytes[..bytes.len() / 2].to_vec()))
                                }
                                c => apply(&mut data, c),
                            }
                        }
                    }
                    out.insert(path, Some(data));
                }
            }
        }
    }
}

/// Writes `tree` under `dir`.
pub fn materialise(tree: &Tree, dir: &Path) {
    for (path, data) in tree {
        match data {
            None => std::fs::create_dir_all(dir.join(path)).unwrap(),
            Some(bytes) => std::fs::write(dir.join(path), bytes).unwrap(),
        }
    }
}

/// One cut: where, under which mode, and the marks logged before it.
#[derive(Debug, Clone)]
pub struct Cut {
    /// Operations applied before the cut.
    pub k: usize,
    pub mode: Mode,
    pub marks: Vec<String>,
    /// The last operation applied, for the report.
    pub last: Option<Op>,
}

impl Cut {
    /// Whether the test's mark `label` was logged before the cut.
    pub fn passed(&self, label: &str) -> bool {
        self.marks.iter().any(|m| m == label)
    }
}

/// Cuts the power after every operation of `ops` (and before the first), under every mode,
/// starting from `snapshot`; calls `check` on each distinct surviving state, materialised
/// in a fresh directory. Returns the failures, each with its cut.
pub fn every_cut(
    snapshot: &Crash,
    ops: &[Op],
    mut check: impl FnMut(&Path, &Cut) -> Result<(), String>,
) -> (usize, Vec<String>) {
    let mut fs = snapshot.clone();
    let mut seen = HashSet::new();
    let mut marks = vec![];
    let mut failures = vec![];
    for k in 0..=ops.len() {
        if k > 0 {
            fs.apply(&ops[k - 1]);
            if let Op::Mark(m) = &ops[k - 1] {
                marks.push(m.clone());
            }
        }
        for mode in MODES {
            let tree = fs.survivors(mode);
            // The same state after the same marks needs checking once.
            if !seen.insert((tree.clone(), marks.clone())) {
                continue;
            }
            let dir = tempfile::tempdir().unwrap();
            materialise(&tree, dir.path());
            let cut = Cut { k, mode, marks: marks.clone(), last: k.checked_sub(1).map(|i| ops[i].clone()) };
            if let Err(e) = check(dir.path(), &cut) {
                failures.push(format!("cut after op {} ({:?}) in {:?}: {e}", cut.k, cut.last, cut.mode));
            }
        }
    }
    (seen.len(), failures)
}
