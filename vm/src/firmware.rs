//! UEFI firmware: Debian's OVMF build, with a private writable copy of its variable store
//! per machine (systemd-boot and the init read and write EFI variables there).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// OVMF code, read-only (package `ovmf`).
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
/// The pristine variable store that machine copies start from.
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// A machine's firmware files.
#[derive(Debug, Clone)]
pub struct Firmware {
    /// The code image.
    pub code: PathBuf,
    /// The machine's own variable store.
    pub vars: PathBuf,
}

impl Firmware {
    /// Uses `vars` as the variable store, copying a fresh one there if it does not exist.
    pub fn with_vars(vars: &Path) -> Result<Self> {
        for f in [OVMF_CODE, OVMF_VARS] {
            if !Path::new(f).is_file() {
                bail!("{f} is missing: install the ovmf package");
            }
        }
        if !vars.exists() {
            if let Some(dir) = vars.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::copy(OVMF_VARS, vars).with_context(|| {
                format!("cannot copy the OVMF variable store to {}", vars.display())
            })?;
        }
        Ok(Self {
            code: OVMF_CODE.into(),
            vars: vars.to_path_buf(),
        })
    }
}
