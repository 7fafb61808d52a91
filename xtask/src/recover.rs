//! `cargo xtask recover`: the volume key of a host's encrypted `/var` from the recovery
//! copy on its disk, with the owner's private recovery key (docs/SECURE-BOOT.md#recovery).
//!
//! For a host whose TPM was cleared or whose disk moved: the key is written to a file only
//! its owner can read (never to the terminal), and the command that opens the data with
//! Debian's cryptsetup is printed.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{Context, Result, bail};
use crust_builder::report;
use crust_format::sealed::{CIPHER, DATA_OFFSET, KEY_BYTES, SECTOR_SIZE};

/// Recovers the volume key of `disk` with `owner_key` into `out` (made with mode 0600; an
/// existing file is refused).
pub fn run(disk: &Path, owner_key: &Path, out: &Path) -> Result<()> {
    if out.exists() {
        bail!("{} exists already; name a new file", out.display());
    }
    let key = crust_builder::sealed::recover(disk, owner_key)?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .with_context(|| format!("cannot create {}", out.display()))?;
    file.write_all(&key)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", out.display()))?;
    let offset = crust_builder::sealed::state_offset(disk)?;
    report::status(
        "Recovered",
        format!(
            "the {KEY_BYTES}-byte volume key of {}'s state partition into {} (mode 0600: \
             shred it when done)",
            disk.display(),
            out.display()
        ),
    );
    eprintln!(
        "Open the data (as root, on the disk's state partition{}):\n    cryptsetup open --type \
         plain --cipher {CIPHER} --key-size {} --sector-size {SECTOR_SIZE} --offset {} \
         --key-file {} <state partition> crust-var\n    mount -o ro /dev/mapper/crust-var /mnt",
        if offset == 0 {
            String::new()
        } else {
            format!(", which starts {offset} bytes into {}", disk.display())
        },
        KEY_BYTES * 8,
        DATA_OFFSET / 512,
        out.display()
    );
    Ok(())
}
