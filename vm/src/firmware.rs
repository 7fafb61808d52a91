//! UEFI firmware: Debian's OVMF build, with a private writable copy of its variable store
//! per machine (systemd-boot and the init read and write EFI variables there).
//!
//! Two builds of the same firmware: the plain one, which has no Secure Boot, and the Secure
//! Boot one ([`OVMF_CODE_SECURE_BOOT`], which also needs SMM: QEMU's q35 machine turns it on
//! by default). Under the Secure Boot build a machine's store decides what it trusts: a
//! pristine store is in setup mode (it runs anything, and systemd-boot may enrol keys into
//! it), and a store made by [`enrolled_store`] holds a PK, KEK and db and has Secure Boot
//! on, so the firmware runs only images signed with the db key.
//!
//! The enrolled store is made by `virt-fw-vars` (PyPI `virt-firmware`, the tool Fedora
//! makes its OVMF stores with): it writes the certificates straight into OVMF's store
//! format, no firmware run needed. (systemd-boot's own enrolment, from the `.auth` files an
//! image carries, is the other way; the tests check both.)

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// OVMF code, read-only (package `ovmf`).
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
/// OVMF code built with Secure Boot (and SMM), same package.
pub const OVMF_CODE_SECURE_BOOT: &str = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd";
/// The pristine variable store that machine copies start from (in setup mode under the
/// Secure Boot build: no keys).
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
        Self::new(OVMF_CODE, vars, Path::new(OVMF_VARS))
    }

    /// The Secure Boot build with `vars` as the store, copied from `template` if it does
    /// not exist: a store from [`enrolled_store`] to enforce Secure Boot with those keys,
    /// or [`OVMF_VARS`] for a machine in setup mode.
    pub fn secure_boot(vars: &Path, template: &Path) -> Result<Self> {
        Self::new(OVMF_CODE_SECURE_BOOT, vars, template)
    }

    fn new(code: &str, vars: &Path, template: &Path) -> Result<Self> {
        for f in [Path::new(code), template] {
            if !f.is_file() {
                bail!(
                    "{} is missing: install the ovmf package (or make the store)",
                    f.display()
                );
            }
        }
        if !vars.exists() {
            if let Some(dir) = vars.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::copy(template, vars).with_context(|| {
                format!(
                    "cannot copy the variable store {} to {}",
                    template.display(),
                    vars.display()
                )
            })?;
        }
        Ok(Self {
            code: code.into(),
            vars: vars.to_path_buf(),
        })
    }
}

/// The certificates a store enrols (PEM or DER files) and the GUID that owns them.
#[derive(Debug, Clone, Copy)]
pub struct Enrolment<'a> {
    /// The signature owner GUID.
    pub owner: &'a str,
    /// The platform key's certificate.
    pub pk: &'a Path,
    /// The key exchange key's certificate.
    pub kek: &'a Path,
    /// The signature database's certificate: what boots must be signed with its key.
    pub db: &'a Path,
}

/// Writes `out`: OVMF's pristine store with `keys` enrolled as PK, KEK and db and Secure
/// Boot turned on (no Microsoft keys: only the user's signatures boot), made by the
/// `virt-fw-vars` program at `virt_fw_vars`.
pub fn enrolled_store(virt_fw_vars: &Path, keys: &Enrolment<'_>, out: &Path) -> Result<()> {
    enrolled_store_with(virt_fw_vars, keys, &[], true, out)
}

/// [`enrolled_store`] with further certificates in db (another key set's, say: the
/// firmware then runs what either db key signed), and Secure Boot on or, with `enforce`
/// false, off as a firmware setup screen turns it off: the keys stay enrolled (no setup
/// mode), the firmware runs anything.
pub fn enrolled_store_with(
    virt_fw_vars: &Path,
    keys: &Enrolment<'_>,
    more_db: &[&Path],
    enforce: bool,
    out: &Path,
) -> Result<()> {
    if !Path::new(OVMF_VARS).is_file() {
        bail!("{OVMF_VARS} is missing: install the ovmf package");
    }
    let mut cmd = Command::new(virt_fw_vars);
    cmd.args(["--input", OVMF_VARS, "--output"])
        .arg(out)
        .args(["--set-pk", keys.owner])
        .arg(keys.pk)
        .args(["--add-kek", keys.owner])
        .arg(keys.kek)
        .args(["--add-db", keys.owner])
        .arg(keys.db);
    for db in more_db {
        cmd.args(["--add-db", keys.owner]).arg(db);
    }
    if enforce {
        cmd.arg("--secure-boot");
    } else {
        // What "Secure Boot: Disabled" in OVMF's setup screen stores.
        cmd.args(["--set-false", "SecureBootEnable"]);
    }
    let result = cmd
        .output()
        .with_context(|| format!("cannot run {}", virt_fw_vars.display()))?;
    if !result.status.success() {
        let _ = std::fs::remove_file(out);
        bail!(
            "{} could not enrol the keys: {}",
            virt_fw_vars.display(),
            String::from_utf8_lossy(&result.stderr).trim()
        );
    }
    Ok(())
}
