//! The UEFI variable store an AMI is registered with (`RegisterImage`'s `UefiData`), so an
//! instance starts with the key set's PK, KEK and db enrolled and Secure Boot enforced.
//!
//! The format is AWS's own (a header, a CRC32C and a zlib stream against a preset
//! dictionary, base64-encoded); AWS documents making it with its `uefivars` tool
//! (awslabs/python-uefivars, PyPI `uefivars`) from the three signature lists, which is what
//! this does. `cargo xtask ami` installs the tool in a virtual environment.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::keys::{KeySet, Role};

/// Longest `UefiData` EC2 accepts, in characters of base64.
pub const MAX_UEFI_DATA: usize = 64_000;

/// The base64 text of the variable store holding `keys`' PK, KEK and db, made by the
/// `uefivars` program at `uefivars`.
pub fn uefi_data(uefivars: &Path, keys: &KeySet) -> Result<String> {
    let dir = tempfile::tempdir().context("cannot make a temporary folder")?;
    let store = dir.path().join("uefi-data");
    let out = Command::new(uefivars)
        .args(["-i", "none", "-o", "aws", "-O"])
        .arg(&store)
        .arg("-P")
        .arg(keys.signature_list(Role::Pk))
        .arg("-K")
        .arg(keys.signature_list(Role::Kek))
        .arg("-b")
        .arg(keys.signature_list(Role::Db))
        .output()
        .with_context(|| format!("cannot run {}", uefivars.display()))?;
    if !out.status.success() {
        bail!(
            "{} could not make the AWS variable store: {}",
            uefivars.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = std::fs::read_to_string(&store)
        .with_context(|| format!("cannot read {}", store.display()))?;
    let text = text.trim().to_owned();
    if text.is_empty() || text.len() > MAX_UEFI_DATA {
        bail!(
            "the AWS variable store is {} characters; EC2 takes 1 to {MAX_UEFI_DATA}",
            text.len()
        );
    }
    Ok(text)
}
