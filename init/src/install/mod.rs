//! The installer: what stage 1 runs instead of mounting a root when the kernel command line
//! holds `crust.install` (the installer UKI on the ISO, docs/METAL.md).
//!
//! It finds its medium by label ([`medium`]), checks the medium's list against the image's
//! key (the key in this initramfs, the one that verifies manifests), reads `[install]`
//! from the medium's user-data (covered by that list), picks the target disk ([`disks`]),
//! writes the image as a stream checked against the list ([`write`]), moves the backup GPT
//! to the disk's end, makes the firmware boot the new disk next ([`boot_entry`]), and
//! reboots.
//!
//! Nothing is written until the list's signature, the compressed image's digest and the
//! disk choice have all checked out. A refusal prints one `crust-install: refused:` line
//! (and one line per disk when the disk was the question) and powers the machine off:
//! rebooting would only boot the installer again.

pub mod boot_entry;
pub mod disks;
pub mod medium;
pub mod write;

use std::convert::Infallible;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::cmdline::Options;
use crate::console;
use crate::error::{Error, Result};
use crate::manifest::Verified;
use crate::shutdown::{self, Action};

/// Who the installer's console lines are from.
pub const WHO: &str = "crust-install";

/// `[install]` of the installer's user-data (docs/METAL.md).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstallConfig {
    /// `"auto"` (the one empty, non-removable disk), a device path or a serial number.
    #[serde(default = "auto")]
    pub disk: String,
    /// Overwrite a named disk that holds data.
    #[serde(default)]
    pub wipe: bool,
}

fn auto() -> String {
    disks::AUTO.to_owned()
}

impl Default for InstallConfig {
    fn default() -> Self {
        Self {
            disk: auto(),
            wipe: false,
        }
    }
}

/// The part of a user-data document the installer reads; every other table is the
/// installed host's business and left alone here.
#[derive(Debug, Deserialize)]
struct Document {
    #[serde(default)]
    install: Option<InstallConfig>,
}

/// Reads `[install]` from user-data text; defaults when it has none.
pub fn parse_config(text: &str) -> std::result::Result<InstallConfig, String> {
    let doc: Document = toml::from_str(text).map_err(|e| format!("user-data: {e}"))?;
    Ok(doc.install.unwrap_or_default())
}

/// Runs the installer; never returns (reboots when installed, powers off when refused).
pub fn run(verified: &Verified, options: &Options) -> Result<Infallible> {
    let started = Instant::now();
    console::note(
        WHO,
        &format!(
            "installing {} {} (root {}), signed by key {}",
            verified.manifest.name,
            verified.manifest.version,
            verified.manifest.verity.root_hash.short(12),
            verified.key_fingerprint
        ),
    );
    match install(options) {
        Ok(done) => {
            console::note(
                WHO,
                &format!(
                    "installed on {} in {} s; rebooting into it",
                    done.disk,
                    started.elapsed().as_secs()
                ),
            );
            shutdown::halt(Action::Reboot)
        }
        Err(e) => {
            console::note(
                WHO,
                &format!(
                    "refused: {e}; powering off in {} s",
                    REFUSAL_PAUSE.as_secs()
                ),
            );
            std::thread::sleep(REFUSAL_PAUSE);
            shutdown::halt(Action::PowerOff)
        }
    }
}

/// How long a refusal stays on the screen before the power goes off.
const REFUSAL_PAUSE: Duration = Duration::from_secs(5);

struct Installed {
    disk: String,
}

fn install(options: &Options) -> Result<Installed> {
    let key = std::fs::read(std::path::Path::new("/").join(crust_format::initrd::PUBLIC_KEY))
        .map_err(|e| Error::new("install-key", format!("cannot read the image's key: {e}")))?;
    // Started by the firmware's network boot (UEFI PXE or HTTP boot): the release comes
    // from the boot server; otherwise from the medium it booted from.
    let medium = if boot_entry::booted_from_network() {
        console::note(WHO, "started by a network boot: fetching the release");
        medium::fetch_from_network()?
    } else {
        let medium = medium::find(options.disk_timeout)?;
        console::note(
            WHO,
            &format!(
                "medium {} ({}) mounted read-only",
                medium.device.display(),
                crust_format::install::LABEL
            ),
        );
        medium
    };
    let release = medium.verify(&key)?;
    console::note(
        WHO,
        &format!(
            "{} checked: signature by the image's key, {} files listed",
            crust_format::sums::SUMS,
            release.sums.iter().count()
        ),
    );
    let config = match &release.user_data {
        Some(text) => parse_config(text).map_err(|e| Error::new("install-config", e))?,
        None => InstallConfig::default(),
    };
    console::note(
        WHO,
        &format!(
            "target: disk = {:?}, wipe = {} ({})",
            config.disk,
            config.wipe,
            if release.user_data.is_some() {
                "from the medium's signed user-data"
            } else {
                "the default: no user-data on the medium"
            }
        ),
    );
    // The image's digest is checked whole before the disk is even chosen.
    release.check_image()?;
    console::note(WHO, "image.raw.zst matches the signed list");

    // One line per disk either way: what each holds is what decided.
    let found = disks::inventory(&medium.disk);
    let target = disks::choose(&found, &config).map_err(|refusal| {
        for d in &found {
            console::note(WHO, &format!("refusing: {}", d.describe()));
        }
        Error::new("install-disk", format!("{refusal}; nothing was written"))
    })?;
    for d in found.iter().filter(|d| d.name != target.name) {
        console::note(WHO, &format!("leaving alone: {}", d.describe()));
    }
    console::note(WHO, &format!("writing onto {}", target.describe()));

    let written = write::write_image(&release, target)?;
    console::note(
        WHO,
        &format!(
            "wrote {} MiB of data ({} MiB image) in {} s, read back and compared",
            written.data_bytes >> 20,
            written.image_bytes >> 20,
            written.seconds
        ),
    );
    let esp = write::finish_disk(target)?;
    console::note(
        WHO,
        &format!("backup GPT at the disk's end; ESP {}", esp.partuuid),
    );
    match boot_entry::boot_next(&esp) {
        Ok(number) => console::note(
            WHO,
            &format!("EFI Boot{number:04X} \"Crust\" added, first in BootOrder and BootNext"),
        ),
        Err(e) => console::warning(&format!(
            "install: cannot add an EFI boot entry ({e}); the firmware's own search must find \
             the disk"
        )),
    }
    medium.release();
    Ok(Installed {
        disk: target.node().display().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_table_defaults_to_auto() {
        assert_eq!(parse_config("").unwrap(), InstallConfig::default());
        assert_eq!(
            parse_config("version = 1\n[network]\nx = 1\n").unwrap(),
            InstallConfig::default()
        );
        let c = parse_config("[install]\ndisk = \"/dev/vdb\"\nwipe = true\n").unwrap();
        assert_eq!(c.disk, "/dev/vdb");
        assert!(c.wipe);
    }

    #[test]
    fn unknown_install_fields_are_refused() {
        let e = parse_config("[install]\ndsik = \"auto\"\n").unwrap_err();
        assert!(e.contains("dsik"), "{e}");
        let e = parse_config("[install]\nwipe = \"yes\"\n").unwrap_err();
        assert!(e.contains("wipe"), "{e}");
    }
}
