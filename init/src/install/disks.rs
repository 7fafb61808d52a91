//! The machine's disks as the installer sees them, and the choice of the target.
//!
//! Each whole disk (but the medium's) is described by what the kernel says (size,
//! removable, model, serial) and by what its first sectors hold: a partition table, a file
//! system or other signature, unrecognised data, or nothing at all. `disk = "auto"` takes
//! the one non-removable disk that holds nothing; a named disk (path or serial) that holds
//! anything is taken only with `wipe = true`.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::devnode::{self, DevNum, Kind};

use super::InstallConfig;

/// The `disk` value that picks the empty disk.
pub const AUTO: &str = "auto";
const SYS_BLOCK: &str = "/sys/block";
const SYS_CLASS_BLOCK: &str = "/sys/class/block";
/// Never installation targets.
const SKIPPED_PREFIXES: [&str; 9] = ["loop", "ram", "zram", "dm-", "sr", "fd", "md", "nbd", "zd"];
/// Bytes read from a disk's start to recognise what it holds (btrfs's superblock is at
/// 64 KiB; ISO 9660's descriptors at 32 KiB).
pub const PROBE_BYTES: usize = 128 << 10;

/// What a disk holds, as far as its first sectors (and last, for a backup GPT) tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holds {
    /// Only zeros where tables and signatures would be.
    Nothing,
    /// Partitions the kernel found, or a partition table.
    Partitions(String),
    /// A file system or volume signature.
    Signature(&'static str),
    /// Bytes that are not zeros but nothing recognised.
    Unrecognised,
    /// Its first or last bytes could not be read.
    Unreadable,
}

impl Holds {
    /// Words for the console.
    pub fn describe(&self) -> String {
        match self {
            Holds::Nothing => "nothing (all zeros where tables and signatures go)".into(),
            Holds::Partitions(what) => what.clone(),
            Holds::Signature(what) => format!("{what} (found by its signature)"),
            Holds::Unrecognised => "data (not zeros, no known signature)".into(),
            Holds::Unreadable => "nothing readable (I/O error)".into(),
        }
    }
}

/// A whole disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// Kernel name (`vda`, `nvme0n1`).
    pub name: String,
    /// Size in bytes.
    pub bytes: u64,
    /// The kernel's removable flag (USB sticks, card readers).
    pub removable: bool,
    /// Model, if the driver reports one.
    pub model: Option<String>,
    /// Serial number, if the driver reports one.
    pub serial: Option<String>,
    /// What it holds.
    pub holds: Holds,
}

impl Disk {
    /// The device node.
    pub fn node(&self) -> PathBuf {
        Path::new("/dev").join(&self.name)
    }

    /// One console line's worth: node, model, serial, size, removable, content.
    pub fn describe(&self) -> String {
        format!(
            "{}: model {}, serial {}, {}{}, holds {}",
            self.node().display(),
            self.model.as_deref().unwrap_or("-"),
            self.serial.as_deref().unwrap_or("-"),
            show_size(self.bytes),
            if self.removable { ", removable" } else { "" },
            self.holds.describe()
        )
    }
}

fn show_size(bytes: u64) -> String {
    const GIB: u64 = 1 << 30;
    if bytes >= GIB {
        format!("{:.1} GiB", bytes as f64 / GIB as f64)
    } else {
        format!("{} MiB", bytes >> 20)
    }
}

/// The disk a block device belongs to: its parent for a partition, itself otherwise.
pub fn disk_of(name: &str) -> String {
    let sys = Path::new(SYS_CLASS_BLOCK).join(name);
    if !sys.join("partition").exists() {
        return name.to_owned();
    }
    fs::canonicalize(&sys)
        .ok()
        .and_then(|p| Some(p.parent()?.file_name()?.to_string_lossy().into_owned()))
        .unwrap_or_else(|| name.to_owned())
}

/// Every whole disk but those `excluded` (kernel names: the medium, a NoCloud seed), in
/// name order.
pub fn inventory(excluded: &[&str]) -> Vec<Disk> {
    let Ok(entries) = fs::read_dir(SYS_BLOCK) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| {
            !SKIPPED_PREFIXES.iter().any(|p| n.starts_with(p)) && !excluded.contains(&n.as_str())
        })
        .collect();
    names.sort();
    names.iter().filter_map(|n| describe(n)).collect()
}

fn describe(name: &str) -> Option<Disk> {
    let sys = Path::new(SYS_BLOCK).join(name);
    let sectors: u64 = read_text(&sys.join("size"))?.parse().ok()?;
    if sectors == 0 {
        return None;
    }
    let node = Path::new("/dev").join(name);
    let dev = DevNum::from_sysfs(&sys).ok()?;
    devnode::ensure(&node, Kind::Block, dev, Duration::from_millis(500)).ok()?;
    let bytes = sectors * 512;
    let kernel_partitions = fs::read_dir(&sys)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.path().join("partition").exists())
                .count()
        })
        .unwrap_or(0);
    let holds = if kernel_partitions > 0 {
        Holds::Partitions(format!("{kernel_partitions} partitions"))
    } else {
        match read_ends(&node, bytes) {
            Some((head, tail)) => classify(&head, &tail),
            None => Holds::Unreadable,
        }
    };
    Some(Disk {
        name: name.to_owned(),
        bytes,
        removable: read_text(&sys.join("removable")).as_deref() == Some("1"),
        model: read_text(&sys.join("device/model")),
        serial: serial(&sys),
        holds,
    })
}

fn read_text(path: &Path) -> Option<String> {
    let s = fs::read_to_string(path).ok()?;
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_owned())
}

/// The serial number: NVMe and virtio report it as text; SCSI and SATA disks in the unit
/// serial number VPD page (a 4-byte header, then the serial).
fn serial(sys: &Path) -> Option<String> {
    read_text(&sys.join("device/serial"))
        .or_else(|| read_text(&sys.join("serial")))
        .or_else(|| {
            let page = fs::read(sys.join("device/vpd_pg80")).ok()?;
            let text = String::from_utf8_lossy(page.get(4..)?).trim().to_owned();
            (!text.is_empty()).then_some(text)
        })
}

/// The first [`PROBE_BYTES`] of a disk and its last 64 KiB.
fn read_ends(node: &Path, bytes: u64) -> Option<(Vec<u8>, Vec<u8>)> {
    let mut file = File::open(node).ok()?;
    let mut head = Vec::with_capacity(PROBE_BYTES);
    (&mut file)
        .take(PROBE_BYTES as u64)
        .read_to_end(&mut head)
        .ok()?;
    let tail_len = (64 << 10).min(bytes);
    file.seek(SeekFrom::Start(bytes - tail_len)).ok()?;
    let mut tail = Vec::with_capacity(tail_len as usize);
    file.take(tail_len).read_to_end(&mut tail).ok()?;
    Some((head, tail))
}

/// What a disk's first bytes (`head`) and last bytes (`tail`) say it holds.
pub fn classify(head: &[u8], tail: &[u8]) -> Holds {
    let at = |offset: usize, magic: &[u8]| head.get(offset..offset + magic.len()) == Some(magic);
    if at(512, b"EFI PART") || at(4096, b"EFI PART") {
        return Holds::Partitions("a GPT partition table".into());
    }
    let signatures: [(usize, &[u8], &'static str); 12] = [
        (1080, &[0x53, 0xEF], "ext2/3/4"),
        (0, b"XFSB", "XFS"),
        (65600, b"_BHRfS_M", "btrfs"),
        (0, b"LUKS\xBA\xBE", "LUKS"),
        (512, b"LABELONE", "LVM2"),
        (4086, b"SWAPSPACE2", "Linux swap"),
        (32769, b"CD001", "ISO 9660"),
        (0, b"hsqs", "squashfs"),
        (4096, &[0xFC, 0x4E, 0x2B, 0xA9], "Linux RAID (md)"),
        (3, b"NTFS    ", "NTFS"),
        (82, b"FAT32   ", "FAT32"),
        (54, b"FAT1", "FAT12/16"),
    ];
    for (offset, magic, name) in signatures {
        if at(offset, magic) {
            return Holds::Signature(name);
        }
    }
    if head.len() >= 512 && head[510..512] == [0x55, 0xAA] {
        let used = (0..4).any(|i| head[446 + 16 * i + 4] != 0);
        if used {
            return Holds::Partitions("an MBR partition table".into());
        }
    }
    if tail.len() >= 512 && &tail[tail.len() - 512..tail.len() - 504] == b"EFI PART" {
        return Holds::Partitions("a backup GPT at its end".into());
    }
    if head.iter().chain(tail).any(|&b| b != 0) {
        return Holds::Unrecognised;
    }
    Holds::Nothing
}

/// Picks the target among `disks` as `config` says; the error says why none was taken.
pub fn choose<'d>(disks: &'d [Disk], config: &InstallConfig) -> Result<&'d Disk, String> {
    if config.disk == AUTO {
        let empty: Vec<&Disk> = disks
            .iter()
            .filter(|d| !d.removable && d.holds == Holds::Nothing)
            .collect();
        return match empty.as_slice() {
            [one] => Ok(one),
            [] => Err(format!(
                "disk = \"auto\" takes the one non-removable disk that holds nothing, and none \
                 of the {} disks is one; name the disk in [install] disk (and set wipe = true \
                 to overwrite data)",
                disks.len()
            )),
            several => Err(format!(
                "disk = \"auto\" takes the one non-removable disk that holds nothing, and {} \
                 are ({}); name one in [install] disk",
                several.len(),
                several
                    .iter()
                    .map(|d| d.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        };
    }
    let wanted = config.disk.as_str();
    let found = disks.iter().find(|d| names(d, wanted)).ok_or_else(|| {
        format!(
            "[install] disk = {wanted:?} names none of the disks (a whole disk's path, \
             /dev/disk/by-id/ name or serial number)"
        )
    })?;
    if found.holds != Holds::Nothing && !config.wipe {
        return Err(format!(
            "[install] disk = {wanted:?} is {} and holds {}; set wipe = true to overwrite it",
            found.node().display(),
            found.holds.describe()
        ));
    }
    Ok(found)
}

/// Whether `wanted` names `disk`: `/dev/NAME`, a serial number, or a `/dev/disk/by-id/`
/// name (there is no udev here to resolve it; by-id names end in `_SERIAL` or `-SERIAL`).
fn names(disk: &Disk, wanted: &str) -> bool {
    if let Some(id) = wanted.strip_prefix("/dev/disk/by-id/") {
        return disk.serial.as_deref().is_some_and(|s| {
            id.strip_suffix(s)
                .is_some_and(|rest| rest.ends_with('_') || rest.ends_with('-'))
        });
    }
    if let Some(name) = wanted.strip_prefix("/dev/") {
        return disk.name == name;
    }
    disk.serial.as_deref() == Some(wanted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn disk(name: &str, holds: Holds, removable: bool, serial: Option<&str>) -> Disk {
        Disk {
            name: name.into(),
            bytes: 8 << 30,
            removable,
            model: Some("QEMU HARDDISK".into()),
            serial: serial.map(Into::into),
            holds,
        }
    }

    fn config(disk: &str, wipe: bool) -> InstallConfig {
        InstallConfig {
            disk: disk.into(),
            wipe,
        }
    }

    #[test]
    fn auto_takes_the_one_empty_fixed_disk() {
        let disks = [
            disk("sda", Holds::Nothing, true, None),
            disk("vda", Holds::Signature("ext2/3/4"), false, None),
            disk("vdb", Holds::Nothing, false, None),
        ];
        assert_eq!(choose(&disks, &config(AUTO, false)).unwrap().name, "vdb");
        // Two empty disks: refused, both named.
        let two = [disks[2].clone(), disk("vdc", Holds::Nothing, false, None)];
        let e = choose(&two, &config(AUTO, true)).unwrap_err();
        assert!(e.contains("vdb, vdc"), "{e}");
        // None: refused.
        assert!(choose(&disks[..2], &config(AUTO, false)).is_err());
    }

    #[test]
    fn a_named_disk_with_data_needs_wipe() {
        let disks = [disk(
            "nvme0n1",
            Holds::Partitions("a GPT partition table".into()),
            false,
            Some("S4EWNX0R"),
        )];
        for name in [
            "/dev/nvme0n1",
            "S4EWNX0R",
            "/dev/disk/by-id/nvme-Samsung_SSD_980_S4EWNX0R",
        ] {
            let e = choose(&disks, &config(name, false)).unwrap_err();
            assert!(e.contains("wipe = true"), "{name}: {e}");
            assert_eq!(choose(&disks, &config(name, true)).unwrap().name, "nvme0n1");
        }
        assert!(choose(&disks, &config("/dev/nvme0n1p1", true)).is_err());
        assert!(choose(&disks, &config("/dev/disk/by-id/nvme-X_4EWNX0R", true)).is_err());
    }

    fn head_of(path: &Path) -> (Vec<u8>, Vec<u8>) {
        let len = fs::metadata(path).unwrap().len();
        read_ends(path, len).unwrap()
    }

    #[test]
    fn what_mkfs_and_sgdisk_write_is_recognised() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.img");
        let fresh = || {
            let _ = fs::remove_file(&image);
            File::create(&image).unwrap().set_len(64 << 20).unwrap();
        };
        fresh();
        let (h, t) = head_of(&image);
        assert_eq!(classify(&h, &t), Holds::Nothing);
        let cases: [(&str, &[&str], Holds); 4] = [
            ("mkfs.ext4", &["-q", "-F"], Holds::Signature("ext2/3/4")),
            ("mkfs.fat", &["-F", "32"], Holds::Signature("FAT32")),
            ("mkswap", &[], Holds::Signature("Linux swap")),
            (
                "sgdisk",
                &["-o"],
                Holds::Partitions("a GPT partition table".into()),
            ),
        ];
        for (tool, args, want) in cases {
            fresh();
            let out = Command::new(tool).args(args).arg(&image).output().unwrap();
            assert!(out.status.success(), "{tool}: {out:?}");
            let (h, t) = head_of(&image);
            assert_eq!(classify(&h, &t), want, "{tool}");
        }
        // One stray byte makes a disk hold something.
        fresh();
        let mut h = vec![0u8; PROBE_BYTES];
        h[70000] = 1;
        assert_eq!(classify(&h, &[0; 512]), Holds::Unrecognised);
    }
}
