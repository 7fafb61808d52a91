//! What a disk holds, judged from its first and last MiB: the rule that decides whether the
//! host may format it.
//!
//! A disk is [`Content::Empty`] only when every byte of both samples is zero: a new cloud
//! volume, an instance store, an unwritten virtual disk. Anything else is not empty:
//! [`Content::Found`] names what is there when a signature is known (partition tables,
//! file systems, RAID members, LUKS, LVM, ZFS, bcache, swap), and [`Content::Data`] gives
//! the offset of the first non-zero byte when none is. The rule is deliberately stricter
//! than "no known signature in the first 64 KiB": a disk whose owner wrote something this
//! code does not know is never formatted, wherever in the two samples it lies.
//!
//! Signatures are checked in an order that keeps containers before contents: an md member
//! with its superblock at the end (metadata 0.90 and 1.0) has the array's file system at
//! its start, and a hybrid ISO image carries a partition table too. Offsets follow the
//! formats' own definitions (the kernel's `md_p.h`, e2fsprogs, xfsprogs, util-linux's
//! libblkid); the tests check the results against images made by the real tools and
//! against `blkid -p`.

use std::fmt;

/// Bytes read from each end of a device.
pub const SAMPLE: usize = 1 << 20;

/// The two ends of a device.
#[derive(Debug, Clone, Copy)]
pub struct Sample<'a> {
    /// The first `min(size, SAMPLE)` bytes.
    pub head: &'a [u8],
    /// The last `min(size, SAMPLE)` bytes.
    pub tail: &'a [u8],
    /// The device's size in bytes.
    pub size: u64,
}

impl<'a> Sample<'a> {
    /// `len` bytes at absolute `offset`, if one of the samples holds them whole.
    pub fn at(&self, offset: u64, len: usize) -> Option<&'a [u8]> {
        let end = offset.checked_add(len as u64)?;
        if end <= self.head.len() as u64 {
            return self.head.get(offset as usize..end as usize);
        }
        let tail_start = self.size.checked_sub(self.tail.len() as u64)?;
        if offset >= tail_start && end <= self.size {
            let from = (offset - tail_start) as usize;
            return self.tail.get(from..from + len);
        }
        None
    }

    fn u16_le(&self, offset: u64) -> Option<u16> {
        self.at(offset, 2).map(|b| u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32_le(&self, offset: u64) -> Option<u32> {
        self.at(offset, 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u32_be(&self, offset: u64) -> Option<u32> {
        self.at(offset, 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64_be(&self, offset: u64) -> Option<u64> {
        self.at(offset, 8).map(|b| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            u64::from_be_bytes(a)
        })
    }

    fn u64_raw(&self, offset: u64) -> Option<[u8; 8]> {
        self.at(offset, 8).map(|b| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            a
        })
    }

    fn has(&self, offset: u64, magic: &[u8]) -> bool {
        self.at(offset, magic.len()) == Some(magic)
    }
}

/// A known signature, and what it says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// A GUID partition table (`backup_only`: the primary header is gone, the backup at the
    /// end is still there).
    Gpt {
        /// Only the backup header was found.
        backup_only: bool,
    },
    /// An MBR (DOS) partition table.
    Mbr,
    /// ext2, ext3 or ext4.
    Ext {
        /// `ext2`, `ext3` or `ext4`, from its feature flags.
        version: &'static str,
        /// Its label.
        label: Option<String>,
        /// Its UUID.
        uuid: String,
        /// Its size in bytes (blocks × block size).
        bytes: u64,
    },
    /// XFS.
    Xfs {
        /// Its label.
        label: Option<String>,
        /// Its UUID.
        uuid: String,
        /// Its data section's size in bytes.
        bytes: u64,
    },
    /// btrfs.
    Btrfs {
        /// Its label.
        label: Option<String>,
    },
    /// FAT12, FAT16 or FAT32.
    Vfat {
        /// The label in its boot sector.
        label: Option<String>,
    },
    /// exFAT.
    Exfat,
    /// NTFS.
    Ntfs,
    /// An ISO 9660 image.
    Iso9660 {
        /// Its volume identifier.
        label: Option<String>,
    },
    /// Linux swap.
    Swap {
        /// Its label.
        label: Option<String>,
    },
    /// squashfs.
    Squashfs,
    /// EROFS.
    Erofs,
    /// F2FS.
    F2fs,
    /// A ZFS pool member.
    Zfs,
    /// A bcache device.
    Bcache,
    /// An LVM2 physical volume.
    Lvm,
    /// A LUKS encrypted volume.
    Luks {
        /// 1 or 2.
        version: u16,
        /// Its label (LUKS2).
        label: Option<String>,
    },
    /// A Linux md RAID member.
    Md {
        /// Metadata version: `0.90`, `1.0`, `1.1` or `1.2`.
        version: &'static str,
        /// The array's name (version 1), such as `crust:db`.
        name: Option<String>,
        /// The array's UUID, as hex.
        uuid: String,
        /// The RAID level (0, 1, 5, …; -1 linear).
        level: i32,
        /// Members of the array.
        raid_disks: u32,
    },
}

impl Found {
    /// The short name of the format (`blkid`'s `TYPE` where it has one).
    pub fn kind(&self) -> &'static str {
        match self {
            Found::Gpt { .. } => "gpt",
            Found::Mbr => "dos",
            Found::Ext { version, .. } => version,
            Found::Xfs { .. } => "xfs",
            Found::Btrfs { .. } => "btrfs",
            Found::Vfat { .. } => "vfat",
            Found::Exfat => "exfat",
            Found::Ntfs => "ntfs",
            Found::Iso9660 { .. } => "iso9660",
            Found::Swap { .. } => "swap",
            Found::Squashfs => "squashfs",
            Found::Erofs => "erofs",
            Found::F2fs => "f2fs",
            Found::Zfs => "zfs_member",
            Found::Bcache => "bcache",
            Found::Lvm => "LVM2_member",
            Found::Luks { .. } => "crypto_LUKS",
            Found::Md { .. } => "linux_raid_member",
        }
    }

    /// The label, for formats that carry one.
    pub fn label(&self) -> Option<&str> {
        match self {
            Found::Ext { label, .. }
            | Found::Xfs { label, .. }
            | Found::Btrfs { label }
            | Found::Vfat { label }
            | Found::Iso9660 { label }
            | Found::Swap { label }
            | Found::Luks { label, .. } => label.as_deref(),
            _ => None,
        }
    }

    /// Whether it is a partition table (the disk's partitions hold the data).
    pub fn is_partition_table(&self) -> bool {
        matches!(self, Found::Gpt { .. } | Found::Mbr)
    }
}

impl fmt::Display for Found {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let labelled = |f: &mut fmt::Formatter<'_>, what: &str, label: &Option<String>| {
            write!(f, "{what}")?;
            if let Some(l) = label {
                write!(f, " labelled {l:?}")?;
            }
            Ok(())
        };
        match self {
            Found::Gpt { backup_only: false } => f.write_str("a GPT partition table"),
            Found::Gpt { backup_only: true } => {
                f.write_str("a GPT partition table (its backup header at the end)")
            }
            Found::Mbr => f.write_str("an MBR partition table"),
            Found::Ext { version, label, .. } => {
                labelled(f, &format!("an {version} file system"), label)
            }
            Found::Xfs { label, .. } => labelled(f, "an xfs file system", label),
            Found::Btrfs { label } => labelled(f, "a btrfs file system", label),
            Found::Vfat { label } => labelled(f, "a FAT file system", label),
            Found::Exfat => f.write_str("an exFAT file system"),
            Found::Ntfs => f.write_str("an NTFS file system"),
            Found::Iso9660 { label } => labelled(f, "an ISO 9660 image", label),
            Found::Swap { label } => labelled(f, "swap space", label),
            Found::Squashfs => f.write_str("a squashfs image"),
            Found::Erofs => f.write_str("an EROFS image"),
            Found::F2fs => f.write_str("an F2FS file system"),
            Found::Zfs => f.write_str("a ZFS pool member"),
            Found::Bcache => f.write_str("a bcache device"),
            Found::Lvm => f.write_str("an LVM2 physical volume"),
            Found::Luks { version, label } => {
                labelled(f, &format!("a LUKS{version} encrypted volume"), label)
            }
            Found::Md {
                version,
                name,
                level,
                raid_disks,
                ..
            } => {
                write!(
                    f,
                    "an md RAID member (metadata {version}, level {level}, {raid_disks} disks"
                )?;
                if let Some(n) = name {
                    write!(f, ", array {n}")?;
                }
                f.write_str(")")
            }
        }
    }
}

/// What a device holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// Every sampled byte is zero.
    Empty,
    /// A known signature.
    Found(Found),
    /// Bytes of no known format; the offset of the first non-zero one.
    Data {
        /// Absolute offset of the first non-zero byte.
        offset: u64,
    },
}

impl fmt::Display for Content {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Content::Empty => f.write_str("nothing (empty)"),
            Content::Found(found) => found.fmt(f),
            Content::Data { offset } => write!(
                f,
                "data of no known format (a non-zero byte at offset {offset})"
            ),
        }
    }
}

/// What `sample` holds.
pub fn probe(sample: &Sample<'_>) -> Content {
    let checks: [fn(&Sample<'_>) -> Option<Found>; 20] = [
        md_start,
        md_end,
        luks,
        lvm,
        gpt_primary,
        bcache,
        xfs,
        ext,
        btrfs,
        iso9660,
        swap,
        ntfs,
        exfat,
        vfat,
        squashfs,
        erofs,
        f2fs,
        zfs,
        gpt_backup,
        mbr,
    ];
    if let Some(found) = checks.iter().find_map(|check| check(sample)) {
        return Content::Found(found);
    }
    if let Some(i) = sample.head.iter().position(|b| *b != 0) {
        return Content::Data { offset: i as u64 };
    }
    if let Some(i) = sample.tail.iter().position(|b| *b != 0) {
        return Content::Data {
            offset: sample.size - sample.tail.len() as u64 + i as u64,
        };
    }
    Content::Empty
}

/// Text of a fixed-size field: up to the first NUL, trailing spaces dropped; `None` when
/// empty or not UTF-8.
fn text(bytes: &[u8]) -> Option<String> {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    let s = std::str::from_utf8(&bytes[..end]).ok()?.trim_end();
    (!s.is_empty()).then(|| s.to_owned())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The canonical 8-4-4-4-12 form of 16 bytes.
fn uuid(bytes: &[u8]) -> String {
    let h = hex(bytes);
    if h.len() != 32 {
        return h;
    }
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

const MD_MAGIC: u32 = 0xa92b_4efc;

/// md metadata 1.x: the superblock's fields at `at`, `minor` naming where it sits.
fn md1(s: &Sample<'_>, at: u64, version: &'static str) -> Option<Found> {
    if s.u32_le(at)? != MD_MAGIC || s.u32_le(at + 4)? != 1 {
        return None;
    }
    Some(Found::Md {
        version,
        name: s.at(at + 32, 32).and_then(text),
        uuid: uuid(s.at(at + 16, 16)?),
        level: s.u32_le(at + 72)? as i32,
        raid_disks: s.u32_le(at + 92)?,
    })
}

/// md metadata 1.1 (at the start) and 1.2 (4 KiB in).
fn md_start(s: &Sample<'_>) -> Option<Found> {
    md1(s, 0, "1.1").or_else(|| md1(s, 4096, "1.2"))
}

/// md metadata 1.0 (8 to 12 KiB before the end, 4 KiB aligned) and 0.90 (the last 64 KiB
/// aligned block but one).
fn md_end(s: &Sample<'_>) -> Option<Found> {
    let sectors = s.size / 512;
    if sectors >= 16 {
        let at = ((sectors - 16) & !7) * 512;
        if let Some(found) = md1(s, at, "1.0") {
            return Some(found);
        }
    }
    if sectors >= 256 {
        let at = ((sectors & !127) - 128) * 512;
        if s.u32_le(at)? == MD_MAGIC && s.u32_le(at + 4)? == 0 {
            // 0.90: the UUID is four words at 5, 13, 14, 15 (of 32-bit words).
            let word = |i: u64| s.at(at + i * 4, 4).map(<[u8]>::to_vec);
            let uuid_bytes: Vec<u8> = [5, 13, 14, 15]
                .iter()
                .filter_map(|i| word(*i))
                .flatten()
                .collect();
            return Some(Found::Md {
                version: "0.90",
                name: None,
                uuid: hex(&uuid_bytes),
                level: s.u32_le(at + 7 * 4)? as i32,
                raid_disks: s.u32_le(at + 9 * 4)?,
            });
        }
    }
    None
}

/// LUKS1 and LUKS2: `LUKS\xba\xbe`, a big-endian version.
fn luks(s: &Sample<'_>) -> Option<Found> {
    if !s.has(0, b"LUKS\xba\xbe") {
        return None;
    }
    let version = s.at(6, 2).map(|b| u16::from_be_bytes([b[0], b[1]]))?;
    Some(Found::Luks {
        version,
        label: if version == 2 {
            s.at(24, 48).and_then(text)
        } else {
            None
        },
    })
}

/// LVM2: `LABELONE` in one of the first four sectors, `LVM2 001` 24 bytes on.
fn lvm(s: &Sample<'_>) -> Option<Found> {
    (0..4u64)
        .any(|i| s.has(i * 512, b"LABELONE") && s.has(i * 512 + 24, b"LVM2 001"))
        .then_some(Found::Lvm)
}

/// A GPT header in the second logical block (512 or 4096 bytes).
fn gpt_primary(s: &Sample<'_>) -> Option<Found> {
    [512u64, 4096]
        .iter()
        .any(|at| s.has(*at, b"EFI PART"))
        .then_some(Found::Gpt { backup_only: false })
}

/// A GPT backup header in the last logical block.
fn gpt_backup(s: &Sample<'_>) -> Option<Found> {
    [512u64, 4096]
        .iter()
        .filter_map(|block| s.size.checked_sub(*block))
        .any(|at| s.has(at, b"EFI PART"))
        .then_some(Found::Gpt { backup_only: true })
}

/// An MBR with at least one partition entry (a protective MBR is GPT's, found before).
fn mbr(s: &Sample<'_>) -> Option<Found> {
    if !s.has(510, &[0x55, 0xaa]) {
        return None;
    }
    let used = (0..4u64).any(|i| s.at(446 + i * 16 + 4, 1).is_some_and(|t| t[0] != 0));
    used.then_some(Found::Mbr)
}

/// bcache: its magic 24 bytes into the superblock at 4 KiB.
fn bcache(s: &Sample<'_>) -> Option<Found> {
    const MAGIC: [u8; 16] = [
        0xc6, 0x85, 0x73, 0xf6, 0x4e, 0x1a, 0x45, 0xca, 0x82, 0x65, 0xf5, 0x7f, 0x48, 0xba, 0x6d,
        0x81,
    ];
    s.has(4096 + 24, &MAGIC).then_some(Found::Bcache)
}

/// XFS: `XFSB`, then big-endian block size and data blocks; UUID at 32, label at 108.
fn xfs(s: &Sample<'_>) -> Option<Found> {
    if !s.has(0, b"XFSB") {
        return None;
    }
    let block_size = u64::from(s.u32_be(4)?);
    let blocks = s.u64_be(8)?;
    Some(Found::Xfs {
        label: s.at(108, 12).and_then(text),
        uuid: uuid(s.at(32, 16)?),
        bytes: blocks.saturating_mul(block_size),
    })
}

/// ext2/3/4: the superblock at 1 KiB, magic `0xEF53` at its offset 56.
fn ext(s: &Sample<'_>) -> Option<Found> {
    const SB: u64 = 1024;
    if s.u16_le(SB + 56)? != 0xef53 {
        return None;
    }
    let log_block = s.u32_le(SB + 24)?;
    if log_block > 6 {
        return None;
    }
    let compat = s.u32_le(SB + 92)?;
    let incompat = s.u32_le(SB + 96)?;
    let ro_compat = s.u32_le(SB + 100)?;
    // Features only ext4 has: extents, 64bit, flex_bg, …; huge_file, dir_nlink, extra_isize,
    // metadata_csum among the read-only ones.
    let ext4 = incompat & (0x40 | 0x80 | 0x200 | 0x400 | 0x1000 | 0x8000) != 0
        || ro_compat & (0x8 | 0x20 | 0x40 | 0x400) != 0;
    let version = if ext4 {
        "ext4"
    } else if compat & 0x4 != 0 {
        "ext3"
    } else {
        "ext2"
    };
    let lo = u64::from(s.u32_le(SB + 4)?);
    let hi = if incompat & 0x80 != 0 {
        u64::from(s.u32_le(SB + 0x150)?)
    } else {
        0
    };
    let blocks = lo | (hi << 32);
    Some(Found::Ext {
        version,
        label: s.at(SB + 120, 16).and_then(text),
        uuid: uuid(s.at(SB + 104, 16)?),
        bytes: blocks.saturating_mul(1024 << log_block),
    })
}

/// btrfs: `_BHRfS_M` in the superblock at 64 KiB.
fn btrfs(s: &Sample<'_>) -> Option<Found> {
    const SB: u64 = 0x10000;
    s.has(SB + 0x40, b"_BHRfS_M").then(|| Found::Btrfs {
        label: s.at(SB + 0x12b, 256).and_then(text),
    })
}

/// ISO 9660: `CD001` in the volume descriptor at 32 KiB; the volume id at 40 into it.
fn iso9660(s: &Sample<'_>) -> Option<Found> {
    s.has(0x8001, b"CD001").then(|| Found::Iso9660 {
        label: s.at(0x8028, 32).and_then(text),
    })
}

/// Swap: `SWAPSPACE2` (or the old `SWAP-SPACE`) at the end of the first page, for the page
/// sizes Linux uses; the label at 1052.
fn swap(s: &Sample<'_>) -> Option<Found> {
    [4096u64, 8192, 16384, 65536]
        .iter()
        .any(|page| s.has(page - 10, b"SWAPSPACE2") || s.has(page - 10, b"SWAP-SPACE"))
        .then(|| Found::Swap {
            label: s.at(1052, 16).and_then(text),
        })
}

fn ntfs(s: &Sample<'_>) -> Option<Found> {
    s.has(3, b"NTFS    ").then_some(Found::Ntfs)
}

fn exfat(s: &Sample<'_>) -> Option<Found> {
    s.has(3, b"EXFAT   ").then_some(Found::Exfat)
}

/// FAT: a jump, a plausible BIOS parameter block and the boot signature, or the type
/// string FAT12/16/32 writers put in the extended block.
fn vfat(s: &Sample<'_>) -> Option<Found> {
    let boot = s.at(0, 512)?;
    let jump = (boot[0] == 0xeb && boot[2] == 0x90) || boot[0] == 0xe9;
    let bytes_per_sector = u16::from_le_bytes([boot[11], boot[12]]);
    let per_cluster = boot[13];
    let reserved = u16::from_le_bytes([boot[14], boot[15]]);
    let fats = boot[16];
    let bpb = [512, 1024, 2048, 4096].contains(&bytes_per_sector)
        && per_cluster.is_power_of_two()
        && reserved >= 1
        && (1..=2).contains(&fats)
        && boot[510..512] == [0x55, 0xaa];
    let fat32 = &boot[82..87] == b"FAT32";
    let typed = fat32 || &boot[54..59] == b"FAT12" || &boot[54..59] == b"FAT16";
    if !(jump && (bpb || typed)) {
        return None;
    }
    // The extended boot signature (0x29) says the serial and label fields are there.
    let (sig, label_at) = if fat32 { (66, 71) } else { (38, 43) };
    let label = (boot[sig] == 0x29)
        .then(|| text(&boot[label_at..label_at + 11]))
        .flatten()
        .filter(|l| l != "NO NAME");
    Some(Found::Vfat { label })
}

fn squashfs(s: &Sample<'_>) -> Option<Found> {
    s.has(0, b"hsqs").then_some(Found::Squashfs)
}

fn erofs(s: &Sample<'_>) -> Option<Found> {
    (s.u32_le(1024)? == 0xe0f5_e1e2).then_some(Found::Erofs)
}

fn f2fs(s: &Sample<'_>) -> Option<Found> {
    (s.u32_le(1024)? == 0xf2f5_2010).then_some(Found::F2fs)
}

/// ZFS: the uberblock magic (either byte order) in the uberblock rings of the two labels at
/// the start (128 KiB into each 256 KiB label) or the two at the end.
fn zfs(s: &Sample<'_>) -> Option<Found> {
    const MAGIC: u64 = 0x00ba_b10c;
    let labels_end = s.size & !(256 * 1024 - 1);
    let starts = [0u64, 256 * 1024].into_iter().chain(
        [512 * 1024u64, 256 * 1024]
            .into_iter()
            .filter_map(|back| labels_end.checked_sub(back)),
    );
    for label in starts {
        for slot in 0..128u64 {
            let at = label + 128 * 1024 + slot * 1024;
            if let Some(raw) = s.u64_raw(at)
                && (u64::from_le_bytes(raw) == MAGIC || u64::from_be_bytes(raw) == MAGIC)
            {
                return Some(Found::Zfs);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    //! Images made by the real tools, each also read by `blkid -p` as an independent
    //! judge of the format and label.

    use super::*;
    use std::path::Path;
    use std::process::Command;

    const MIB: u64 = 1 << 20;

    /// A sparse file of `size` bytes.
    fn image(dir: &Path, name: &str, size: u64) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::File::create(&path)
            .and_then(|f| f.set_len(size))
            .unwrap();
        path
    }

    fn run(program: &str, args: &[&str], file: &Path) {
        let out = Command::new(program)
            .args(args)
            .arg(file)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program} ({e}): cargo xtask test installs it"));
        assert!(
            out.status.success(),
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn probe_file(file: &Path) -> Content {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = std::fs::File::open(file).unwrap();
        let size = f.metadata().unwrap().len();
        let n = SAMPLE.min(size as usize);
        let mut head = vec![0u8; n];
        f.read_exact(&mut head).unwrap();
        let mut tail = vec![0u8; n];
        f.seek(SeekFrom::Start(size - n as u64)).unwrap();
        f.read_exact(&mut tail).unwrap();
        probe(&Sample {
            head: &head,
            tail: &tail,
            size,
        })
    }

    /// `blkid -p`'s TYPE (or PTTYPE) and LABEL.
    fn blkid(file: &Path) -> (String, Option<String>) {
        let out = Command::new("blkid")
            .args(["-p", "-o", "export"])
            .arg(file)
            .output()
            .expect("blkid (util-linux)");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let field = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k)?.strip_prefix('='))
                .map(str::to_owned)
        };
        (
            field("TYPE")
                .or_else(|| field("PTTYPE"))
                .unwrap_or_default(),
            field("LABEL"),
        )
    }

    /// Probes `file`, checks the format and label against blkid's, returns the finding.
    fn found(file: &Path) -> Found {
        let content = probe_file(file);
        let Content::Found(found) = content else {
            panic!("{}: {content}", file.display());
        };
        let (kind, label) = blkid(file);
        assert_eq!(found.kind(), kind, "{}", file.display());
        assert_eq!(
            found.label().map(str::to_owned),
            label,
            "{}",
            file.display()
        );
        found
    }

    #[test]
    fn real_file_systems_are_named_as_blkid_names_them() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();

        let f = image(d, "ext4", 64 * MIB);
        run("mkfs.ext4", &["-q", "-F", "-L", "pgdata"], &f);
        match found(&f) {
            Found::Ext { version, bytes, .. } => {
                assert_eq!(version, "ext4");
                assert_eq!(bytes, 64 * MIB);
            }
            other => panic!("{other:?}"),
        }
        let f = image(d, "ext2", 16 * MIB);
        run("mke2fs", &["-q", "-F", "-t", "ext2"], &f);
        assert!(matches!(
            found(&f),
            Found::Ext {
                version: "ext2",
                ..
            }
        ));
        let f = image(d, "ext3", 16 * MIB);
        run("mke2fs", &["-q", "-F", "-t", "ext3"], &f);
        assert!(matches!(
            found(&f),
            Found::Ext {
                version: "ext3",
                ..
            }
        ));

        // mkfs.xfs wants at least 300 MiB; the file is sparse.
        let f = image(d, "xfs", 320 * MIB);
        run("mkfs.xfs", &["-q", "-L", "scratch"], &f);
        match found(&f) {
            Found::Xfs { bytes, .. } => assert_eq!(bytes, 320 * MIB),
            other => panic!("{other:?}"),
        }

        let f = image(d, "vfat", 64 * MIB);
        run("mkfs.vfat", &["-n", "SEED"], &f);
        assert!(matches!(found(&f), Found::Vfat { .. }));
        let f = image(d, "fat32", 64 * MIB);
        run("mkfs.vfat", &["-F", "32", "-n", "BIG"], &f);
        assert!(matches!(found(&f), Found::Vfat { .. }));

        let f = image(d, "swap", 16 * MIB);
        run("mkswap", &["-L", "swp"], &f);
        assert!(matches!(found(&f), Found::Swap { .. }));

        let f = image(d, "luks", 32 * MIB);
        let key = d.join("key");
        std::fs::write(&key, "not a secret").unwrap();
        run(
            "cryptsetup",
            &[
                "luksFormat",
                "--batch-mode",
                "--type",
                "luks2",
                "--pbkdf",
                "pbkdf2",
                "--pbkdf-force-iterations",
                "1000",
                "--label",
                "vault",
                "--key-file",
                key.to_str().unwrap(),
            ],
            &f,
        );
        assert!(matches!(found(&f), Found::Luks { version: 2, .. }));

        let tree = d.join("tree");
        std::fs::create_dir(&tree).unwrap();
        std::fs::write(tree.join("user-data"), "version = 1\n").unwrap();
        let iso = d.join("iso");
        let out = Command::new("genisoimage")
            .args(["-quiet", "-V", "cidata", "-r", "-J", "-o"])
            .arg(&iso)
            .arg(&tree)
            .output()
            .expect("genisoimage");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(matches!(found(&iso), Found::Iso9660 { .. }));
    }

    #[test]
    fn partition_tables_are_found_even_half_erased() {
        let dir = tempfile::tempdir().unwrap();
        let f = image(dir.path(), "gpt", 64 * MIB);
        run("sgdisk", &["-o", "-n", "1:0:0"], &f);
        assert_eq!(found(&f), Found::Gpt { backup_only: false });
        // The first MiB wiped, as a careless `dd` would: the backup header at the end
        // still says the disk is partitioned.
        let data = std::fs::OpenOptions::new().write(true).open(&f).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&data, &vec![0u8; MIB as usize], 0).unwrap();
        assert_eq!(
            probe_file(&f),
            Content::Found(Found::Gpt { backup_only: true })
        );

        let f = image(dir.path(), "mbr", 64 * MIB);
        let mut sfdisk = Command::new("sfdisk")
            .args(["-q"])
            .arg(&f)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("sfdisk");
        use std::io::Write;
        sfdisk
            .stdin
            .take()
            .unwrap()
            .write_all(b"label: dos\n,,83\n")
            .unwrap();
        assert!(sfdisk.wait().unwrap().success());
        assert_eq!(found(&f), Found::Mbr);
    }

    #[test]
    fn any_byte_in_either_mib_is_data_and_only_zeros_are_empty() {
        let dir = tempfile::tempdir().unwrap();
        let f = image(dir.path(), "empty", 64 * MIB);
        assert_eq!(probe_file(&f), Content::Empty);
        let file = std::fs::OpenOptions::new().write(true).open(&f).unwrap();
        use std::os::unix::fs::FileExt;
        // One byte near the end: beyond any signature's place, still not empty.
        file.write_all_at(&[1], 64 * MIB - 3).unwrap();
        assert_eq!(
            probe_file(&f),
            Content::Data {
                offset: 64 * MIB - 3
            }
        );
        file.write_all_at(&[0x42; 16], 900 * 1024).unwrap();
        assert_eq!(probe_file(&f), Content::Data { offset: 900 * 1024 });
        // A disk smaller than a MiB: head and tail overlap.
        let small = image(dir.path(), "small", 4096);
        assert_eq!(probe_file(&small), Content::Empty);
    }

    /// md members need the kernel's md driver to be made; where this machine has it
    /// (`/proc/mdstat`), a RAID 0 of two loop devices is made and probed. The end-to-end
    /// test (`tests/tests/volumes.rs`) checks members mdadm made in the guest either way.
    #[test]
    fn md_members_carry_their_array_name() {
        if !Path::new("/proc/mdstat").exists() {
            eprintln!(
                "this kernel has no md driver (/proc/mdstat): md members are checked by the end-to-end test"
            );
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut loops = Vec::new();
        for i in 0..2 {
            let f = image(dir.path(), &format!("m{i}"), 32 * MIB);
            let out = Command::new("losetup")
                .args(["-f", "--show"])
                .arg(&f)
                .output()
                .unwrap();
            if !out.status.success() {
                eprintln!(
                    "no loop devices here: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                return;
            }
            loops.push((f, String::from_utf8_lossy(&out.stdout).trim().to_owned()));
        }
        let md = "/dev/md/crust-probe-test";
        let mut create = Command::new("mdadm");
        create.args([
            "--create",
            md,
            "--run",
            "--level=0",
            "--raid-devices=2",
            "--metadata=1.2",
            "--name=crust:probe",
        ]);
        for (_, dev) in &loops {
            create.arg(dev);
        }
        let made = create.output().unwrap();
        let _ = Command::new("mdadm").args(["--stop", md]).output();
        for (_, dev) in &loops {
            let _ = Command::new("losetup").args(["-d", dev]).output();
        }
        assert!(
            made.status.success(),
            "{}",
            String::from_utf8_lossy(&made.stderr)
        );
        match found(&loops[0].0) {
            Found::Md {
                version,
                name,
                level,
                raid_disks,
                ..
            } => {
                assert_eq!((version, level, raid_disks), ("1.2", 0, 2));
                assert_eq!(name.as_deref(), Some("crust:probe"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn samples_serve_both_ends() {
        let head = [1u8; 8];
        let tail = [2u8; 8];
        let s = Sample {
            head: &head,
            tail: &tail,
            size: 100,
        };
        assert_eq!(s.at(0, 8), Some(&head[..]));
        assert_eq!(s.at(92, 8), Some(&tail[..]));
        assert_eq!(s.at(50, 4), None);
        assert_eq!(s.at(96, 8), None);
        assert_eq!(s.at(u64::MAX, 2), None);
    }
}
