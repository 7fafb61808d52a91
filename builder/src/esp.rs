//! The EFI System Partition's contents: systemd-boot as the removable-media loader, its
//! configuration, and one unified kernel image per installed version.
//!
//! `loader.conf` never names a default entry: systemd-boot then boots the newest version
//! whose boot counter is not spent, which is what makes a bad update roll back by itself.
//! The command-line editor is off (the UKI's command line is part of what is verified) and
//! the random seed is not refreshed, so booting never writes the ESP except for the boot
//! counter renames.
//!
//! An image signed for Secure Boot also carries the key set's signed variable updates in
//! `/loader/keys/auto/`, and `loader.conf` says what systemd-boot does with them on a
//! machine in setup mode ([`crate::secureboot::Enroll`]).

use std::sync::Arc;

use crust_format::boot_entry::{BOOT_LOADER, BootEntryName, LOADER_CONF, UKI_DIR};

use crate::fat::{FatError, FatTree};
use crate::secureboot::Enrolment;

/// systemd-boot's configuration.
pub const LOADER_CONF_TEXT: &str = "\
# Written by the Crust builder. No `default`: the newest bootable version wins, and a
# version whose boot counter runs out falls back to the one before it.
timeout 0
editor no
auto-entries no
auto-firmware no
console-mode keep
random-seed-mode off
";

/// Lays out the ESP: systemd-boot, `loader.conf`, and the given UKIs.
pub fn tree(
    systemd_boot: Arc<[u8]>,
    ukis: &[(BootEntryName, Arc<[u8]>)],
) -> Result<FatTree, FatError> {
    tree_with_enrolment(systemd_boot, ukis, None)
}

/// [`tree`], plus the Secure Boot enrolment files and `secure-boot-enroll` in
/// `loader.conf` when the image is signed.
pub fn tree_with_enrolment(
    systemd_boot: Arc<[u8]>,
    ukis: &[(BootEntryName, Arc<[u8]>)],
    enrolment: Option<&Enrolment>,
) -> Result<FatTree, FatError> {
    let mut t = FatTree::new();
    t.add_file(BOOT_LOADER, systemd_boot)?;
    let mut conf = LOADER_CONF_TEXT.to_owned();
    if let Some(e) = enrolment {
        conf.push_str(&format!(
            "secure-boot-enroll {}\n",
            e.mode.loader_conf_value()
        ));
        for (path, data) in e.files() {
            t.add_file(&path, data.to_vec())?;
        }
    }
    t.add_file(LOADER_CONF, conf.into_bytes())?;
    t.add_dir("loader/entries")?;
    t.add_dir(UKI_DIR)?;
    for (name, uki) in ukis {
        t.add_file(&format!("{UKI_DIR}/{name}"), uki.clone())?;
    }
    Ok(t)
}
