//! Stage 1, in the initramfs: from the kernel's hand-off to the switch into the verified
//! root. Each step prints its phase line when it is done; any failure returns an error
//! that `main` reports before rebooting.

use std::convert::Infallible;
use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crust_format::initrd;
use crust_format::initrd::boot_keys as keys;
use crust_format::layout::{root_partition_uuid, verity_partition_uuid};
use crust_format::phase::Phase;
use crust_format::verity::{self, OnCorruption};
use nix::mount::{MsFlags, mount};
use uuid::Uuid;

use crate::bootinfo::{BootInfo, set_phase};
use crate::devnode::{self, Kind};
use crate::disk::{self, BootDisk, Wanted};
use crate::dm::{self, Target};
use crate::error::{Advise, Context, Result};
use crate::manifest::{self, Verified};
use crate::mounts::{self, Mount};
use crate::{cmdline, console, efivar, modules, switch_root};

/// Runs stage 1; returns only on failure.
pub fn run() -> Result<Infallible> {
    let mut boot = BootInfo::default();
    let root = Path::new("/");

    // init: the kernel's file systems, then the command line (which needs /proc).
    for m in mounts::api_filesystems() {
        mounts::mount_once(&m)?;
    }
    let options = cmdline::Options::read();
    crate::set_reboot_delay(options.reboot_delay);
    let release = crate::kernel_release();
    let at = console::phase(
        Phase::Init,
        &format!("crust-init {}, kernel {release}", crate::VERSION),
    );
    set_phase(&mut boot, Phase::Init.as_str(), at);
    for warning in &options.warnings {
        console::warning(warning);
    }

    // modules
    let start = Instant::now();
    let loaded = modules::load_list(root, initrd::MODULES)?;
    let mut detail = format!(
        "{} loaded in {} ms",
        loaded.loaded,
        start.elapsed().as_millis()
    );
    if loaded.present > 0 {
        detail.push_str(&format!(", {} already present", loaded.present));
    }
    if !loaded.no_device.is_empty() {
        detail.push_str(&format!(", no device for {}", loaded.no_device.join(" ")));
    }
    set_phase(
        &mut boot,
        Phase::Modules.as_str(),
        console::phase(Phase::Modules, &detail),
    );

    // The NICs' drivers are loaded: start their links now, so they are carrying traffic
    // by the time stage 2 asks DHCP for an address.
    crate::net::Network::bring_up_early();

    // manifest: nothing in it is used before its signature is checked.
    let verified = manifest::load_from_initramfs(root)?;
    let m = &verified.manifest;
    let at = console::phase(
        Phase::Manifest,
        &format!(
            "{} {}, root {}, signed by key {}",
            m.name,
            m.version,
            m.verity.root_hash.short(12),
            verified.key_fingerprint
        ),
    );
    set_phase(&mut boot, Phase::Manifest.as_str(), at);
    if m.kernel_release != release {
        console::warning(&format!(
            "the manifest names kernel {} but {release} is running",
            m.kernel_release
        ));
    }
    // Measured boot: the root hash this boot trusts goes into PCR 12 before it selects a
    // partition. The UKI's signed PCR 11 policies are kept for stage 2, which unseals /var.
    crate::tpm::measure::event(
        crust_format::pcr::CRUST,
        &format!("root-hash={}", m.verity.root_hash),
    );
    keep_pcr_signature();

    // The installer UKI writes this image onto a disk instead of booting it.
    if options.install {
        return crate::install::run(&verified, &options);
    }
    // disk: the boot disk's slot, or (network boot) the slot's images fetched into memory.
    let (found, esp) = if options.netboot {
        (
            crate::netboot::fetch(m, options.netboot_url.as_deref())?,
            None,
        )
    } else {
        let esp = boot_loader_facts(&mut boot);
        let wanted = Wanted {
            esp,
            root: root_partition_uuid(&m.verity.root_hash),
            verity: verity_partition_uuid(&m.verity.root_hash),
        };
        (disk::find(&wanted, options.disk_timeout)?, esp)
    };
    disk::check_slot(&found, &m.verity)?;
    let detail = if options.netboot {
        format!(
            "network boot: root-a={} verity-a={} (images fetched into memory, checked by \
             dm-verity against the signed root hash)",
            found.root.name, found.verity.name
        )
    } else {
        disk_detail(&found, esp)
    };
    let at = console::phase(Phase::Disk, &detail);
    set_phase(&mut boot, Phase::Disk.as_str(), at);
    boot.set(keys::SLOT, found.slot.as_str());
    boot.set(keys::DISK, found.disk.as_str());
    boot.set(keys::ROOT_DEVICE, found.root.node().display().to_string());
    boot.set(
        keys::VERITY_DEVICE,
        found.verity.node().display().to_string(),
    );
    if let Some(esp) = esp {
        boot.set(keys::ESP_PARTUUID, esp.to_string());
    }

    // verity
    let dm_node = setup_verity(&verified, &found)?;
    let dm_name = dm_node.trim_start_matches("/dev/").to_owned();
    let at = console::phase(
        Phase::Verity,
        &format!(
            "root {} on {}, hashes on {} -> {dm_name}",
            m.verity.root_hash.short(12),
            found.root.name,
            found.verity.name
        ),
    );
    set_phase(&mut boot, Phase::Verity.as_str(), at);
    boot.set(keys::DM_DEVICE, dm_node.as_str());
    boot.set(keys::ROOT_HASH, m.verity.root_hash.to_hex());
    // From here on a failed step may be a corrupted root: what `main` needs to set this
    // version aside before it reboots (update::corruption) is in /run already.
    record_facts(&verified, &boot)?;

    // root
    let tmp = mount_root(&dm_node, m.filesystem.as_str())?;
    mount_etc_overlay()?;
    let at = console::now();
    set_phase(&mut boot, Phase::Root.as_str(), at);
    hand_over(&verified, &boot)?;
    console::phase_at(
        at,
        Phase::Root,
        &format!(
            "{} on {} from {dm_name}, read-only{}, overlay on /etc",
            m.filesystem.as_str(),
            initrd::SYSROOT,
            if tmp { ", tmpfs on /tmp" } else { "" }
        ),
    );

    switch_root::run(Path::new(initrd::SYSROOT), boot)
}

/// Copies the UKI's `.pcrsig` (which systemd's stub put into the initramfs) to `/run`, where
/// stage 2 finds it; an image without one has nothing to copy.
fn keep_pcr_signature() {
    let from = Path::new("/").join(initrd::STUB_PCR_SIGNATURE);
    if !from.is_file() {
        return;
    }
    let copied = fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(initrd::RUN_DIR)
        .and_then(|()| fs::copy(&from, initrd::RUN_PCR_SIGNATURE));
    if let Err(e) = copied {
        console::warning(&format!(
            "cannot keep {}: {e}; /var's key will not unseal",
            from.display()
        ));
    }
}

/// Mounts efivarfs and reads what systemd-boot reports; returns the ESP's partition UUID.
/// Without it (direct kernel boot, another boot loader) any disk with the slot will do.
fn boot_loader_facts(boot: &mut BootInfo) -> Option<Uuid> {
    if !efivar::booted_with_efi() {
        return None;
    }
    if let Err(e) = efivar::mount_efivarfs() {
        console::warning(&format!(
            "{e}; cannot ask the boot loader which disk it booted from (is efivarfs in the module list?)"
        ));
        return None;
    }
    if let Ok(Some(entry)) = efivar::read_loader_string(efivar::LOADER_ENTRY_SELECTED) {
        boot.set(keys::UKI, entry);
    }
    match efivar::loader_device_part_uuid() {
        Ok(esp) => esp,
        Err(e) => {
            console::warning(&format!(
                "ignoring {}: {e}",
                efivar::LOADER_DEVICE_PART_UUID
            ));
            None
        }
    }
}

fn disk_detail(found: &BootDisk, esp: Option<Uuid>) -> String {
    let slot = found.slot.as_str();
    let from = match esp {
        Some(esp) => format!("ESP {esp}"),
        None => "boot loader did not name its ESP: first disk with the slot".into(),
    };
    format!(
        "{}: root-{slot}={} verity-{slot}={} (slot {slot}, {from})",
        found.disk, found.root.name, found.verity.name
    )
}

/// Creates the dm-verity device over the slot's partitions; returns its node.
fn setup_verity(verified: &Verified, found: &BootDisk) -> Result<String> {
    let v = &verified.manifest.verity;
    let params = v.table_params(
        &found.root.dev.to_string(),
        &found.verity.dev.to_string(),
        // A corrupted block fails the read; the init then sets this version aside (when
        // the other slot holds one) and reboots (update::corruption).
        OnCorruption::Error,
    );
    let target = Target {
        start: 0,
        length: v.table_sectors(),
        kind: "verity",
        params: &params,
    };
    let uuid = verity::dm_uuid(&v.root_hash);
    let dev = dm::create_device(verity::DM_NAME, &uuid, &target).advise(
        "the kernel log says why; check that dm-verity is in the module list and that the \
         slot was written whole",
    )?;
    let node = format!("/dev/dm-{}", dev.minor);
    devnode::ensure(Path::new(&node), Kind::Block, dev, Duration::from_secs(1))
        .context("verity", || format!("cannot create {node}"))?;
    Ok(node)
}

/// Mounts the verified root read-only at /sysroot, and a tmpfs on its /tmp if it has one.
/// Returns whether /tmp was mounted.
fn mount_root(node: &str, fstype: &str) -> Result<bool> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(initrd::SYSROOT)
        .context("root", || format!("cannot create {}", initrd::SYSROOT))?;
    mount(
        Some(node),
        initrd::SYSROOT,
        Some(fstype),
        MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .context("root", || {
        format!("cannot mount {node} ({fstype}) on {}", initrd::SYSROOT)
    })
    .advise("check that the file system's module is in the module list")?;
    let tmp = Path::new(initrd::SYSROOT).join("tmp");
    if !fs::symlink_metadata(&tmp).is_ok_and(|m| m.is_dir()) {
        return Ok(false);
    }
    mounts::mount_once(&Mount {
        source: "tmpfs",
        target: &tmp.to_string_lossy(),
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        data: Some("mode=1777"),
    })
}

/// Makes the root's `/etc` writable for this boot: an overlay whose upper layer lives on
/// the `/run` tmpfs, so every boot starts from the verified `/etc` again.
fn mount_etc_overlay() -> Result<()> {
    let lower = Path::new(initrd::SYSROOT).join("etc");
    let base = Path::new(initrd::ETC_OVERLAY_DIR);
    let (upper, work) = (base.join("upper"), base.join("work"));
    for dir in [&upper, &work] {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .context("root", || format!("cannot create {}", dir.display()))?;
    }
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    mount(
        Some("overlay"),
        &lower,
        Some("overlay"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(options.as_str()),
    )
    .context("root", || {
        format!("cannot mount the /etc overlay ({options})")
    })
    .advise("check that the overlay module is in the module list")
}

/// Writes the verified manifest and the boot facts so far to /run.
fn record_facts(verified: &Verified, boot: &BootInfo) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(initrd::RUN_DIR)
        .context("root", || format!("cannot create {}", initrd::RUN_DIR))?;
    fs::write(initrd::RUN_MANIFEST, &verified.bytes)
        .context("root", || format!("cannot write {}", initrd::RUN_MANIFEST))?;
    write_boot_info(boot)
}

/// Leaves the verified manifest, its key and the boot facts in /run for stage 2.
fn hand_over(verified: &Verified, boot: &BootInfo) -> Result<()> {
    record_facts(verified, boot)?;
    fs::copy(
        Path::new("/").join(initrd::PUBLIC_KEY),
        initrd::RUN_PUBLIC_KEY,
    )
    .context("root", || {
        format!("cannot write {}", initrd::RUN_PUBLIC_KEY)
    })?;
    Ok(())
}

/// Writes `/run/crust/boot`.
pub fn write_boot_info(boot: &BootInfo) -> Result<()> {
    fs::write(initrd::RUN_BOOT, boot.to_text())
        .context("root", || format!("cannot write {}", initrd::RUN_BOOT))
}
