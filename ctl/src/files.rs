//! Writing the files edgectl makes (keys, certificates): created with their mode, synced,
//! and never written over.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Creates `path` with `mode`, writes `text` and syncs it; a file already there is left
/// alone and reported as `ErrorKind::AlreadyExists` (even one that appeared after the
/// caller checked). The error names the step that failed: "creating" or "writing".
pub(crate) fn write_new(path: &Path, mode: u32, text: &str) -> Result<(), (&'static str, std::io::Error)> {
    let mut f = OpenOptions::new().write(true).create_new(true).mode(mode).open(path).map_err(|e| ("creating", e))?;
    f.write_all(text.as_bytes()).and_then(|()| f.sync_all()).map_err(|e| ("writing", e))
}
