//! Copy-on-write overlays: a machine writes into a qcow2 file on top of a raw image, so one
//! built image serves many boots and stays as built.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Creates `overlay` (qcow2) recording writes on top of the raw image `base`.
pub fn create(base: &Path, overlay: &Path) -> Result<()> {
    let base = base
        .canonicalize()
        .with_context(|| format!("cannot find {}", base.display()))?;
    let _ = std::fs::remove_file(overlay);
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&base)
        .arg(overlay)
        .output()
        .context("cannot run qemu-img (install qemu-utils)")?;
    if !out.status.success() {
        bail!(
            "qemu-img could not create {}: {}",
            overlay.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
