//! The reference floor: the image's own kernel, firmware and boot loader, with nothing
//! after them but an init that powers off (`floor/`, `crust-floor`).
//!
//! The floor disk has the image's partition layout, so the firmware reads the same GPT,
//! and an ESP made by the builder's own code with the image's systemd-boot, `loader.conf`
//! and one UKI: the image's stub, kernel and command line around an uncompressed initramfs
//! holding the floor init and `/dev/console`. The other partitions stay empty. Whatever
//! the image's boot takes beyond this floor is what Crust itself costs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use crust_builder::apt::Apt;
use crust_builder::disk::{self, Sizes};
use crust_builder::fat::{self, FatOptions};
use crust_builder::fetch::{self, Cache};
use crust_builder::lock::{Lock, Role as PackageRole};
use crust_builder::profile::Profile;
use crust_builder::tree::{Entry, Node, Tree};
use crust_builder::{esp, initramfs, uki};
use crust_format::Digest;
use crust_format::boot_entry::BootEntryName;
use crust_format::layout::Role;

use crate::host::{self, InitTarget};
use crate::image;

/// The floor's image name in its UKI's os-release and file name.
const NAME: &str = "crust-floor";

/// Builds the floor init (a static executable, like the init) and returns its path.
pub fn build_init() -> Result<PathBuf> {
    let target = host::init_target();
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(image::workspace())
        .args([
            "build",
            "--quiet",
            "--package",
            "crust-floor",
            "--profile",
            "init",
            "--target",
        ])
        .arg(target.triple());
    if target == InitTarget::GlibcStatic {
        cmd.env("RUSTFLAGS", "-C target-feature=+crt-static");
    }
    if !cmd.status().context("cannot run cargo")?.success() {
        bail!("building the floor init failed");
    }
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| image::workspace().join("target"));
    Ok(target_dir
        .join(target.triple())
        .join("init")
        .join("floor-init"))
}

/// The floor's initramfs: the init and the console node, as an uncompressed newc cpio.
pub fn initramfs(init: &[u8], epoch: u64) -> Result<Vec<u8>> {
    let mut t = Tree::new();
    t.insert("dev", Entry::dir(0o755))?;
    t.insert(
        "dev/console",
        Entry {
            node: Node::CharDevice { major: 5, minor: 1 },
            mode: 0o600,
            uid: 0,
            gid: 0,
        },
    )?;
    t.insert("init", Entry::file(init.to_vec(), 0o755))?;
    initramfs::cpio(&t, epoch)
}

/// What the floor disk is made from.
#[derive(Debug)]
pub struct Parts<'a> {
    /// The profile (partition sizes, command line, boot package).
    pub profile: &'a Profile,
    /// The package cache holding the boot package.
    pub cache: &'a Cache,
    /// The image's kernel (`vmlinuz` of its output folder).
    pub kernel: &'a Path,
    /// Its release (`uname -r`).
    pub kernel_release: &'a str,
    /// The floor init.
    pub init: &'a Path,
}

/// Writes the floor disk to `path`.
pub fn write_disk(parts: &Parts<'_>, path: &Path) -> Result<()> {
    let profile = parts.profile;
    let lock = Lock::read(&profile.lock_path())?
        .with_context(|| format!("{} has no lock file", profile.path.display()))?;
    let apt = Apt::new(parts.cache.root(), profile)?;
    let debs = fetch::fetch(parts.cache, &apt, &lock)?;
    let boot = debs
        .iter()
        .find(|d| d.package.role == PackageRole::Boot)
        .context("the lock file has no boot package")?;
    let (stub, systemd_boot) = crust_builder::build::boot_files(boot)?;
    let init = std::fs::read(parts.init)
        .with_context(|| format!("cannot read {}", parts.init.display()))?;
    let linux = std::fs::read(parts.kernel)
        .with_context(|| format!("cannot read {}", parts.kernel.display()))?;
    let epoch = lock.source_date_epoch;
    let initrd = initramfs(&init, epoch)?;
    let os_release =
        format!("NAME=\"Crust reference floor\"\nID=crust\nIMAGE_ID={NAME}\nIMAGE_VERSION=0\n");
    let uki = uki::assemble(
        &stub,
        &uki::Parts {
            os_release: &os_release,
            cmdline: &profile.kernel_cmdline(),
            uname: parts.kernel_release,
            initrd: &initrd,
            linux: &linux,
            pcrpkey: None,
            pcrsig: None,
        },
    )?;
    let entry = BootEntryName::new(NAME, "0", None);
    let esp_tree = esp::tree(systemd_boot.into(), &[(entry, Arc::from(uki.as_slice()))])?;
    let seed = Digest::of(b"crust bench floor");
    let layout = disk::plan(
        Sizes {
            esp: profile.esp_size.value,
            root: profile.root_size.value,
            verity: profile.verity_size.value,
            state: profile.state_size.value,
        },
        &seed,
        &seed,
    );
    let options = FatOptions {
        volume_id: u32::from_le_bytes([seed.0[0], seed.0[1], seed.0[2], seed.0[3]]),
        label: "CRUST-ESP".into(),
        timestamp: epoch,
        hidden_sectors: u32::try_from(layout.get(Role::Esp).offset / 512)?,
    };
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    disk::write(&mut file, &layout, |part, window| match part.role {
        Role::Esp => fat::write_volume(window, part.size, &options, &esp_tree)
            .map(|_| ())
            .map_err(Into::into),
        _ => Ok(()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::process::Stdio;

    #[test]
    fn the_floor_initramfs_holds_the_init_and_the_console() {
        let archive = initramfs(b"\x7fELF floor", 1_700_000_000).unwrap();
        let mut child = Command::new("cpio")
            .args(["-itv", "--quiet"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("cpio (cargo xtask test installs it)");
        child.stdin.take().unwrap().write_all(&archive).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        let listing = String::from_utf8_lossy(&out.stdout);
        let names: Vec<&str> = listing
            .lines()
            .filter_map(|l| l.split_whitespace().last())
            .collect();
        assert_eq!(names, ["dev", "dev/console", "init"], "{listing}");
        assert!(listing.contains("crw-------"), "{listing}");
    }
}
