//! Writing results safely: atomic file replacement and the output folder of a build.
//!
//! A build never leaves a half-written image where a finished one is expected: everything is
//! written under a temporary name in the destination folder and renamed into place at the
//! end, and the temporary is removed if the build fails.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

/// Writes `data` to `path` atomically: a reader sees the old file or the new one, never a mix.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
    tmp.write_all(data)
        .and_then(|_| tmp.as_file().sync_all())
        .with_context(|| format!("cannot write {}", path.display()))?;
    tmp.persist(path)
        .with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(())
}
