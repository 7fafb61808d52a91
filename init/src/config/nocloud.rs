//! NoCloud seeds: a disk or partition labelled `CIDATA` (any case), FAT or ISO 9660,
//! holding the file `user-data` — what cloud-init's NoCloud source reads, and what
//! `cloud-localds`, OpenStack-style tooling and `cargo xtask qemu --user-data` make.
//!
//! The label is read from the raw device, without mounting anything: the FAT boot sector's
//! `BS_VolLab` (FAT32 at offset 71, FAT12/16 at 43, each behind the extended boot
//! signature 0x29) or the ISO 9660 primary volume descriptor's volume identifier (sector
//! 16 of 2048 bytes). Only the seed found is mounted, read-only, to read `user-data` (and
//! `user-data.sig`, its signature, when there is one).
//!
//! The boot disk and its partitions are never a seed: whoever can write the ESP (which
//! Secure Boot does not cover) could otherwise relabel it `CIDATA` and run code on every
//! boot. A seed found there is named on the console and left alone.

use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::mount::{MntFlags, MsFlags, mount, umount2};

use crust_format::user_data::SEED_SIGNATURE_FILE;

use super::source::read_bounded;

use crate::devnode::{self, DevNum, Kind};

/// The label NoCloud seeds carry.
pub const LABEL: &str = "cidata";
/// Where block devices are listed.
const SYS_CLASS_BLOCK: &str = "/sys/class/block";
/// Where the seed is mounted while it is read.
const MOUNT_POINT: &str = "/run/crust/nocloud";
/// Bytes to read to see both labels: up to the end of the ISO primary volume descriptor.
pub const PROBE_BYTES: usize = ISO_PVD + 2048;
const ISO_PVD: usize = 16 * 2048;
/// Largest user-data accepted.
pub const MAX_USER_DATA: u64 = 1 << 20;
/// Devices that never hold a seed.
const SKIPPED_PREFIXES: [&str; 5] = ["loop", "ram", "zram", "dm-", "fd"];

/// A file system kind a seed may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsKind {
    /// FAT12/16/32 (mounted as `vfat`).
    Fat,
    /// ISO 9660 (mounted as `iso9660`).
    Iso9660,
}

impl FsKind {
    fn fstype(self) -> &'static str {
        match self {
            FsKind::Fat => "vfat",
            FsKind::Iso9660 => "iso9660",
        }
    }
}

/// A labelled file system found on a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seed {
    /// The device node.
    pub device: PathBuf,
    /// Its file system.
    pub kind: FsKind,
}

/// The file system label at the start of a device, if it is FAT or ISO 9660.
pub fn label(head: &[u8]) -> Option<(FsKind, String)> {
    fat_label(head)
        .map(|l| (FsKind::Fat, l))
        .or_else(|| iso_label(head).map(|l| (FsKind::Iso9660, l)))
}

fn fat_label(head: &[u8]) -> Option<String> {
    if head.len() < 512 || head[510..512] != [0x55, 0xAA] {
        return None;
    }
    let u16_at = |at: usize| u16::from_le_bytes([head[at], head[at + 1]]);
    let bytes_per_sector = u16_at(11);
    if !matches!(bytes_per_sector, 512 | 1024 | 2048 | 4096) || head[13] == 0 {
        return None;
    }
    // FAT32 has no 16-bit FAT size; its extended BPB sits further on.
    let (signature, at) = if u16_at(22) == 0 { (66, 71) } else { (38, 43) };
    if head[signature] != 0x29 {
        return None;
    }
    text(&head[at..at + 11])
}

fn iso_label(head: &[u8]) -> Option<String> {
    let pvd = head.get(ISO_PVD..ISO_PVD + 72)?;
    if pvd[0] != 1 || &pvd[1..6] != b"CD001" {
        return None;
    }
    text(&pvd[40..72])
}

fn text(raw: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(raw).ok()?.trim_end_matches([' ', '\0']);
    (!s.is_empty()).then(|| s.to_owned())
}

/// Looks at every block device but the boot disk (`boot_disk`, a kernel name; empty when
/// unknown) and its partitions for a NoCloud seed; the first in name order wins.
pub fn find(boot_disk: &str) -> Option<Seed> {
    let mut names: Vec<String> = fs::read_dir(SYS_CLASS_BLOCK)
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| !SKIPPED_PREFIXES.iter().any(|p| n.starts_with(p)))
        .collect();
    names.sort();
    names.into_iter().find_map(|name| {
        let on_boot_disk = !boot_disk.is_empty() && disk_of(&name) == boot_disk;
        let sys = Path::new(SYS_CLASS_BLOCK).join(&name);
        let size: u64 = fs::read_to_string(sys.join("size"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        if size == 0 {
            return None;
        }
        let device = Path::new("/dev").join(&name);
        let dev = DevNum::from_sysfs(&sys).ok()?;
        devnode::ensure(&device, Kind::Block, dev, Duration::from_millis(200)).ok()?;
        let (kind, found) = label(&read_head(&device)?)?;
        if !found.eq_ignore_ascii_case(LABEL) {
            return None;
        }
        if on_boot_disk {
            crate::console::warning(&format!(
                "config: ignoring the CIDATA file system on {} (the boot disk is never a \
                 source of user-data)",
                device.display()
            ));
            return None;
        }
        Some(Seed { device, kind })
    })
}

/// The disk a block device belongs to: its parent for a partition, itself otherwise (the
/// kernel shows a partition as a folder inside its disk's).
fn disk_of(name: &str) -> String {
    let sys = Path::new(SYS_CLASS_BLOCK).join(name);
    if !sys.join("partition").exists() {
        return name.to_owned();
    }
    fs::canonicalize(&sys)
        .ok()
        .and_then(|p| Some(p.parent()?.file_name()?.to_string_lossy().into_owned()))
        .unwrap_or_else(|| name.to_owned())
}

fn read_head(device: &Path) -> Option<Vec<u8>> {
    let mut head = Vec::with_capacity(PROBE_BYTES);
    File::open(device)
        .ok()?
        .take(PROBE_BYTES as u64)
        .read_to_end(&mut head)
        .ok()?;
    Some(head)
}

/// What a seed holds: `user-data`, and `user-data.sig` if the seed has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedData {
    /// The user-data bytes.
    pub user_data: Vec<u8>,
    /// The detached signature's bytes.
    pub signature: Option<Vec<u8>>,
}

/// Mounts the seed read-only, reads `user-data` (and its signature), unmounts. `Ok(None)`
/// when the seed has no `user-data` (NoCloud allows that: meta-data only).
pub fn read_user_data(seed: &Seed) -> Result<Option<SeedData>, String> {
    let target = Path::new(MOUNT_POINT);
    fs::create_dir_all(target).map_err(|e| format!("cannot create {MOUNT_POINT}: {e}"))?;
    let flags = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(
        Some(&seed.device),
        target,
        Some(seed.kind.fstype()),
        flags,
        None::<&str>,
    )
    .map_err(|e| {
        format!(
            "cannot mount {} ({}): {}",
            seed.device.display(),
            seed.kind.fstype(),
            e.desc()
        )
    })?;
    let read =
        read_bounded(&target.join("user-data"), "user-data", MAX_USER_DATA).and_then(|user_data| {
            let Some(user_data) = user_data else {
                return Ok(None);
            };
            let signature = read_bounded(
                &target.join(SEED_SIGNATURE_FILE),
                SEED_SIGNATURE_FILE,
                MAX_SIGNATURE,
            )?;
            Ok(Some(SeedData {
                user_data,
                signature,
            }))
        });
    let _ = umount2(target, MntFlags::MNT_DETACH);
    let _ = fs::remove_dir(target);
    read
}

/// The largest `user-data.sig` read (a signature is 64 bytes; more is refused by length).
const MAX_SIGNATURE: u64 = 1024;

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn head_of(image: &Path) -> Vec<u8> {
        read_head(image).unwrap()
    }

    fn run(cmd: &mut Command) {
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (cargo xtask test installs it)"));
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn fat_labels_are_read_as_mkfs_fat_writes_them() {
        let dir = tempfile::tempdir().unwrap();
        for (bits, size_kib) in [("12", 1440), ("16", 16384), ("32", 40960)] {
            let image = dir.path().join(format!("fat{bits}.img"));
            run(Command::new("truncate")
                .arg("-s")
                .arg(format!("{size_kib}K"))
                .arg(&image));
            run(Command::new("mkfs.fat")
                .args(["-F", bits, "-n", "cidata"])
                .arg(&image));
            let (kind, found) = label(&head_of(&image)).expect("a label");
            assert_eq!(kind, FsKind::Fat, "FAT{bits}");
            assert!(found.eq_ignore_ascii_case(LABEL), "FAT{bits}: {found}");
        }
    }

    #[test]
    fn the_xtask_seed_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let seed = dir.path().join("seed.img");
        crust_vm::seed::write(b"version = 1\n", &seed).unwrap();
        let (kind, found) = label(&head_of(&seed)).unwrap();
        assert_eq!(kind, FsKind::Fat);
        assert!(found.eq_ignore_ascii_case(LABEL));
    }

    #[test]
    fn iso_labels_are_read_as_genisoimage_writes_them() {
        let dir = tempfile::tempdir().unwrap();
        let files = dir.path().join("files");
        fs::create_dir(&files).unwrap();
        fs::write(files.join("user-data"), "version = 1\n").unwrap();
        fs::write(files.join("meta-data"), "instance-id: x\n").unwrap();
        let iso = dir.path().join("seed.iso");
        // As cloud-localds makes it.
        run(Command::new("genisoimage")
            .args(["-quiet", "-output"])
            .arg(&iso)
            .args(["-volid", "cidata", "-joliet", "-rock"])
            .arg(&files));
        let (kind, found) = label(&head_of(&iso)).unwrap();
        assert_eq!(kind, FsKind::Iso9660);
        assert!(found.eq_ignore_ascii_case(LABEL), "{found}");
    }

    #[test]
    fn other_data_has_no_label() {
        assert_eq!(label(&[]), None);
        assert_eq!(label(&vec![0u8; PROBE_BYTES]), None);
        // An ext4 image: no FAT boot sector, no ISO descriptor.
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("ext4.img");
        run(Command::new("truncate").args(["-s", "8M"]).arg(&image));
        run(Command::new("mkfs.ext4")
            .args(["-q", "-L", "cidata"])
            .arg(&image));
        assert_eq!(label(&head_of(&image)), None);
        // A FAT boot sector without the extended signature carries no label.
        let mut head = vec![0u8; 512];
        head[510] = 0x55;
        head[511] = 0xAA;
        head[11] = 0;
        head[12] = 2;
        head[13] = 1;
        head[71..82].copy_from_slice(b"CIDATA     ");
        assert_eq!(label(&head), None);
    }
}
