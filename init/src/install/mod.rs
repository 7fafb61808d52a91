//! The installer: what stage 1 runs instead of mounting a root when the kernel command line
//! holds `crust.install` (the installer UKI on the ISO, docs/METAL.md).
//!
//! It finds its medium by label ([`medium`]), checks the medium's list against the image's
//! key (the key in this initramfs, the one that verifies manifests), reads `[install]`
//! from the medium's user-data (covered by that list) or, when the medium has none, from
//! a NoCloud seed beside it (only that table: it chooses a disk, nothing more), picks the
//! target disk ([`disks`]), writes the image as a stream checked against the list
//! ([`write`]), moves the backup GPT to the disk's end, copies the medium's user-data with
//! its signed list onto the new ESP for the installed host ([`handover`]), makes the
//! firmware boot the new disk next ([`boot_entry`]), and reboots.
//!
//! Nothing is written until the list's signature, the compressed image's digest and the
//! disk choice have all checked out. A refusal prints one `crust-install: refused:` line
//! (and one line per disk when the disk was the question) and powers the machine off:
//! rebooting would only boot the installer again.

pub mod boot_entry;
pub mod disks;
pub mod handover;
pub mod medium;
pub mod write;

use std::convert::Infallible;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::cmdline::Options;
use crate::config::nocloud;
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
    let chosen = choose_config(&release, &medium.disk)?;
    let config = chosen.config;
    console::note(
        WHO,
        &format!(
            "target: disk = {:?}, wipe = {} ({})",
            config.disk, config.wipe, chosen.from
        ),
    );
    // The image's digest is checked whole before the disk is even chosen.
    release.check_image()?;
    console::note(WHO, "image.raw.zst matches the signed list");

    // One line per disk either way: what each holds is what decided.
    let mut excluded = vec![medium.disk.as_str()];
    excluded.extend(chosen.seed_disk.as_deref());
    let found = disks::inventory(&excluded);
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
    if let Some(node) = handover::copy(target, &esp, &release)? {
        console::note(
            WHO,
            &format!(
                "the medium's user-data and its signed list copied to {}:/{} for the installed \
                 host",
                node.display(),
                crust_format::install::ESP_DIR
            ),
        );
    }
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

/// The `[install]` in effect and where it came from.
struct Chosen {
    config: InstallConfig,
    /// For the console: which source decided.
    from: String,
    /// The NoCloud seed's disk (a kernel name), never a target.
    seed_disk: Option<String>,
}

/// `[install]` from the medium's signed user-data; when the medium has none, from a
/// NoCloud seed that is not the medium (unsigned, so only `[install]` is read: it chooses
/// a disk, and the image written is the signed one whatever it says); else the defaults.
fn choose_config(release: &medium::Release, medium_disk: &str) -> Result<Chosen> {
    if let Some(text) = &release.user_data {
        return Ok(Chosen {
            config: parse_config(text).map_err(|e| Error::new("install-config", e))?,
            from: "from the medium's signed user-data".into(),
            seed_disk: None,
        });
    }
    let Some(seed) = nocloud::find(medium_disk) else {
        return Ok(Chosen {
            config: InstallConfig::default(),
            from: "the default: no user-data on the medium, no NoCloud seed".into(),
            seed_disk: None,
        });
    };
    let device = seed.device.display().to_string();
    let seed_disk = seed
        .device
        .file_name()
        .map(|n| disks::disk_of(&n.to_string_lossy()));
    let bad = |why: String| {
        Error::new(
            "install-config",
            format!("the NoCloud seed {device}: {why}"),
        )
        .advice("fix the seed's user-data or detach the seed; nothing was written")
    };
    let text = match nocloud::read_user_data(&seed).map_err(bad)? {
        Some(data) => crate::config::source::to_text(data.user_data).map_err(bad)?,
        None => String::new(),
    };
    Ok(Chosen {
        config: parse_config(&text).map_err(bad)?,
        from: format!("from the NoCloud seed {device}, its [install] table only"),
        seed_disk,
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
