//! Deterministic FAT32 volume writer for the EFI System Partition.
//!
//! This module owns the ESP's on-disk format: it lays a [`FatTree`] of files and directories
//! out as a fresh FAT32 volume and writes it through any `Write + Seek`.
//!
//! It is hand-written rather than built on the `fatfs` crate because fatfs 0.3.6 (the latest
//! release) writes long-file-name entries in front of the `.` and `..` entries of every
//! directory it creates, which `fsck.fat -n` reports as errors; the fix exists only on its
//! unreleased master and git dependencies are not allowed. We only ever write one small, fresh
//! volume (systemd-boot, a few unified kernel images, `loader.conf`), which a focused writer
//! does in a few hundred lines.
//!
//! On-disk choices, with references to Microsoft's FAT specification (fatgen103):
//! - 512-byte sectors and FAT32 only, with the cluster size of the fatgen103 table (512 B up to
//!   260 MiB, 4 KiB up to 8 GiB, 8 KiB up to 16 GiB, 16 KiB up to 32 GiB). Larger volumes, and
//!   ones too small for 65525 clusters, are refused.
//! - 32 reserved sectors (boot sector 0, FSInfo 1, their backups 6 and 7) and two mirrored FATs.
//! - The root directory is at cluster 2 and holds the volume label. Clusters are handed out in
//!   one depth-first walk of the name-sorted tree, so every file and directory is a contiguous
//!   run and the same tree and options always give the same bytes.
//! - A name that already is an uppercase 8.3 name gets a short entry only; any other name gets
//!   VFAT long-name entries followed by a Windows-style `BASIS~N` short alias.
//! - Every entry carries the one timestamp of [`FatOptions::timestamp`].
//! - Every structure a reader interprets is written in full: both FATs to their last sector
//!   and every directory to the end of its last cluster (zeros mark its end), so the volume
//!   does not depend on what the medium held before. That matters when an image is flashed
//!   by writing only its data regions (`cargo xtask flash`) onto a used disk. Unused clusters
//!   and the reserved sectors between the boot sectors are left as holes.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Seek, SeekFrom, Write};
use std::sync::Arc;

use crust_format::utc::UtcTime;

const SECTOR: u64 = 512;
const RESERVED_SECTORS: u64 = 32;
const FAT_COPIES: u64 = 2;
const FSINFO_SECTOR: u64 = 1;
const BACKUP_BOOT_SECTOR: u64 = 6;
const ROOT_CLUSTER: u32 = 2;
/// fatgen103 §3.5: drivers take a volume with fewer clusters for FAT12 or FAT16.
const MIN_CLUSTERS: u64 = 65_525;
const END_OF_CHAIN: u32 = 0x0FFF_FFFF;
const ENTRY_SIZE: usize = 32;
/// fatgen103 §6: a directory may not hold more than 65536 32-byte entries.
const MAX_DIR_ENTRIES: usize = 65_536;
const ATTR_VOLUME_ID: u8 = 0x08;
const ATTR_DIRECTORY: u8 = 0x10;
const ATTR_ARCHIVE: u8 = 0x20;
const ATTR_LONG_NAME: u8 = 0x0F;
const LAST_LONG_ENTRY: u8 = 0x40;
const DOT: [u8; 11] = *b".          ";
const DOT_DOT: [u8; 11] = *b"..         ";
/// Where the 13 UCS-2 units of a long-name entry sit (fatgen103 §7, LDIR_Name1/2/3).
const LONG_NAME_OFFSETS: [usize; 13] = [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30];
/// 1980-01-01T00:00:00Z and 2107-12-31T23:59:58Z, the range a DOS date and time can hold.
const DOS_FIRST: u64 = 315_532_800;
const DOS_LAST: u64 = 4_354_819_198;
/// Boot code at the jump target: the ESP is only ever booted by UEFI, so a BIOS that tries it
/// gets `int 18h` (try the next boot device), then `hlt` in a loop.
const BOOT_STUB: [u8; 5] = [0xCD, 0x18, 0xF4, 0xEB, 0xFD];

/// Largest volume accepted: fatgen103's cluster-size table for FAT32 stops at 32 GiB.
pub const MAX_VOLUME_SIZE: u64 = 32 << 30;
/// Smallest volume accepted (a little over 32 MiB): from this size up, every size gives at
/// least 65525 clusters of 512 bytes.
pub const MIN_VOLUME_SIZE: u64 = min_volume_sectors() * SECTOR;

/// How to label and stamp the volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FatOptions {
    /// Volume serial number, shown by Linux as the `XXXX-XXXX` file-system UUID.
    pub volume_id: u32,
    /// Volume label: at most 11 characters that are valid in a short name, or spaces; stored
    /// uppercase and space-padded in the boot sector and the root directory. Empty for none
    /// (the boot sector then says `NO NAME`, as `mkfs.fat` does).
    pub label: String,
    /// Unix seconds used for every timestamp, clamped into 1980-01-01..=2107-12-31.
    pub timestamp: u64,
    /// LBA of the partition start, recorded in the BPB.
    pub hidden_sectors: u32,
}

/// Files and (possibly empty) directories to put on the volume, by path.
#[derive(Debug, Clone, Default)]
pub struct FatTree {
    root: Dir,
    data_bytes: u64,
}

/// What [`write_volume`] laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FatSummary {
    /// Bytes per cluster.
    pub cluster_size: u32,
    /// Data clusters on the volume.
    pub clusters: u32,
    /// Data clusters holding directories and file contents.
    pub used_clusters: u32,
}

/// Why a tree could not be built or written.
#[derive(Debug, thiserror::Error)]
pub enum FatError {
    /// The volume size, in bytes, is outside [`MIN_VOLUME_SIZE`]..=[`MAX_VOLUME_SIZE`].
    #[error(
        "volume size {0} bytes is outside the FAT32 range {MIN_VOLUME_SIZE}..={MAX_VOLUME_SIZE}"
    )]
    VolumeSize(u64),
    /// The tree does not fit in the volume's data clusters.
    #[error("content needs {needed} bytes of clusters but the volume has {available}")]
    TooLarge {
        /// Bytes of whole clusters that the directories and files need.
        needed: u64,
        /// Bytes of data clusters on the volume.
        available: u64,
    },
    /// A path component cannot be a FAT name.
    #[error("invalid name in {path:?}: {reason}")]
    InvalidName {
        /// The path as given.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The path clashes with an entry already in the tree.
    #[error("path conflict at {path:?}: {reason}")]
    Conflict {
        /// The path as given.
        path: String,
        /// What it clashes with.
        reason: &'static str,
    },
    /// A file at the given path is 4 GiB or larger, more than a directory entry can record.
    #[error("file {0:?} is too large for FAT32, which stops at 4 GiB - 1")]
    FileTooLarge(String),
    /// The directory at the given path needs more than 65536 entries, counting long names.
    #[error("directory {0:?} has more entries than FAT allows")]
    DirectoryFull(String),
    /// The volume label cannot be stored.
    #[error("invalid volume label {label:?}: {reason}")]
    InvalidLabel {
        /// The label as given.
        label: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Writing the volume failed.
    #[error("writing the FAT volume failed")]
    Io(#[from] io::Error),
}

#[derive(Debug, Clone, Default)]
struct Dir {
    entries: BTreeMap<String, Node>,
    /// Uppercased names, because FAT lookups ignore case.
    folded: BTreeSet<String>,
}

#[derive(Debug, Clone)]
enum Node {
    File(Arc<[u8]>),
    Dir(Dir),
}

impl FatTree {
    /// An empty tree: just the root directory.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a file at `path` (components separated by `/`, parents created as needed).
    pub fn add_file(&mut self, path: &str, data: impl Into<Arc<[u8]>>) -> Result<(), FatError> {
        let data = data.into();
        if u32::try_from(data.len()).is_err() {
            return Err(FatError::FileTooLarge(path.to_owned()));
        }
        let names = split_path(path)?;
        let Some((name, parents)) = names.split_last() else {
            return Err(invalid_name(path, "empty path"));
        };
        let dir = walk(&mut self.root, parents, path)?;
        if dir.claim(name, path)? {
            return Err(conflict(path, "the path already exists"));
        }
        self.data_bytes += data.len() as u64;
        dir.entries.insert((*name).to_owned(), Node::File(data));
        Ok(())
    }

    /// Adds a directory at `path` and its parents; adding an existing directory is a no-op.
    pub fn add_dir(&mut self, path: &str) -> Result<(), FatError> {
        walk(&mut self.root, &split_path(path)?, path).map(|_| ())
    }

    /// Total bytes of file contents, without directories or cluster slack.
    pub fn data_bytes(&self) -> u64 {
        self.data_bytes
    }
}

impl Dir {
    /// Registers `name` and tells whether it was already there. A new name differing only in
    /// case from an existing one is a conflict, since FAT lookups ignore case.
    fn claim(&mut self, name: &str, path: &str) -> Result<bool, FatError> {
        if self.entries.contains_key(name) {
            Ok(true)
        } else if self.folded.insert(name.to_uppercase()) {
            Ok(false)
        } else {
            Err(conflict(path, "differs only in case from an entry"))
        }
    }

    fn subdir(&mut self, name: &str, path: &str) -> Result<&mut Dir, FatError> {
        self.claim(name, path)?;
        let node = self.entries.entry(name.to_owned());
        match node.or_insert_with(|| Node::Dir(Dir::default())) {
            Node::Dir(dir) => Ok(dir),
            Node::File(_) => Err(conflict(path, "a file is in the way of a directory")),
        }
    }
}

fn walk<'d>(mut dir: &'d mut Dir, names: &[&str], path: &str) -> Result<&'d mut Dir, FatError> {
    for name in names {
        dir = dir.subdir(name, path)?;
    }
    Ok(dir)
}

fn split_path(path: &str) -> Result<Vec<&str>, FatError> {
    let relative = path.strip_prefix('/').unwrap_or(path);
    relative
        .split('/')
        .map(|name| check_name(name, path))
        .collect()
}

fn check_name<'n>(name: &'n str, path: &str) -> Result<&'n str, FatError> {
    let reason = if name.is_empty() {
        "empty path component"
    } else if name == "." || name == ".." {
        "'.' and '..' are not names"
    } else if name.chars().any(|c| c < ' ' || "\"*:<>?\\|".contains(c)) {
        "contains a character FAT forbids (control, \" * : < > ? \\ |)"
    } else if name.ends_with(['.', ' ']) {
        "ends with a dot or space, which Windows strips"
    } else if name.encode_utf16().count() > 255 {
        "longer than 255 UTF-16 code units"
    } else {
        return Ok(name);
    };
    Err(invalid_name(path, reason))
}

fn invalid_name(path: &str, reason: &'static str) -> FatError {
    let path = path.to_owned();
    FatError::InvalidName { path, reason }
}

fn conflict(path: &str, reason: &'static str) -> FatError {
    let path = path.to_owned();
    FatError::Conflict { path, reason }
}

/// Writes `tree` as a FAT32 volume of `size` bytes at offset 0 of `out`; whatever `out` held
/// in the clusters left free stays there and does not matter. Nothing is written when the
/// size or the tree is refused, and nothing is ever written at or past `size`.
pub fn write_volume<W: Write + Seek>(
    out: &mut W,
    size: u64,
    opts: &FatOptions,
    tree: &FatTree,
) -> Result<FatSummary, FatError> {
    let label = volume_label(&opts.label)?;
    let geometry = Some(size)
        .filter(|size| (MIN_VOLUME_SIZE..=MAX_VOLUME_SIZE).contains(size))
        .and_then(|size| Geometry::new(size / SECTOR))
        .ok_or(FatError::VolumeSize(size))?;
    let cluster_size = geometry.cluster_size();
    let root_header = usize::from(label.is_some());
    let needed = clusters_needed(&tree.root, "/", root_header, cluster_size)?;
    let available = u64::from(geometry.clusters);
    if needed > available {
        let (needed, available) = (needed * cluster_size, available * cluster_size);
        return Err(FatError::TooLarge { needed, available });
    }

    let stamp = DosTime::from_unix(opts.timestamp);
    let mut layout = Layout {
        cluster_size,
        stamp,
        label,
        next: ROOT_CLUSTER,
        runs: vec![],
        pieces: vec![],
    };
    layout.place_dir(&tree.root, None);
    let used = layout.next - ROOT_CLUSTER;
    let free = geometry.clusters - used;
    let next_free = if free == 0 { u32::MAX } else { layout.next };

    let boot = boot_sector(&geometry, opts, label.unwrap_or(*b"NO NAME    "));
    let fs_info = fs_info_sector(free, next_free);
    for base in [0, BACKUP_BOOT_SECTOR] {
        write_at(out, base * SECTOR, &boot)?;
        write_at(out, (base + FSINFO_SECTOR) * SECTOR, &fs_info)?;
    }
    let mut fat = fat_bytes(&layout.runs);
    // The whole table, free entries included (see the module documentation).
    fat.resize((u64::from(geometry.fat_sectors) * SECTOR) as usize, 0);
    for copy in 0..FAT_COPIES {
        let sector = RESERVED_SECTORS + copy * u64::from(geometry.fat_sectors);
        write_at(out, sector * SECTOR, &fat)?;
    }
    layout.pieces.sort_by_key(|(cluster, _)| *cluster);
    for (cluster, bytes) in &layout.pieces {
        write_at(out, geometry.cluster_offset(*cluster), bytes)?;
    }
    let cluster_size = geometry.sectors_per_cluster * SECTOR as u32;
    Ok(FatSummary {
        cluster_size,
        clusters: geometry.clusters,
        used_clusters: used,
    })
}

fn write_at<W: Write + Seek>(out: &mut W, offset: u64, bytes: &[u8]) -> io::Result<()> {
    out.seek(SeekFrom::Start(offset))?;
    out.write_all(bytes)
}

#[derive(Debug, Clone, Copy)]
struct Geometry {
    total_sectors: u32,
    sectors_per_cluster: u32,
    fat_sectors: u32,
    clusters: u32,
}

impl Geometry {
    /// The layout of a volume of `total_sectors`, if FAT32 can use that many.
    const fn new(total_sectors: u64) -> Option<Self> {
        // fatgen103 §3.5, DskTableFAT32 (in 512-byte sectors).
        let sectors_per_cluster = match total_sectors {
            0..=532_480 => 1,
            532_481..=16_777_216 => 8,
            16_777_217..=33_554_432 => 16,
            33_554_433..=67_108_864 => 32,
            _ => return None,
        };
        // fatgen103 §3.5: FATSz = (DskSize - ResvdSecCnt) / ((256 * SecPerClus + NumFATs) / 2),
        // rounded up. It may spare a sector or two but never leaves a cluster without an entry.
        let fat_sectors = total_sectors
            .saturating_sub(RESERVED_SECTORS)
            .div_ceil(128 * sectors_per_cluster + 1);
        let data_sectors =
            total_sectors.saturating_sub(RESERVED_SECTORS + FAT_COPIES * fat_sectors);
        let clusters = data_sectors / sectors_per_cluster;
        if clusters < MIN_CLUSTERS {
            return None;
        }
        Some(Self {
            total_sectors: total_sectors as u32,
            sectors_per_cluster: sectors_per_cluster as u32,
            fat_sectors: fat_sectors as u32,
            clusters: clusters as u32,
        })
    }

    fn cluster_size(&self) -> u64 {
        u64::from(self.sectors_per_cluster) * SECTOR
    }

    fn cluster_offset(&self, cluster: u32) -> u64 {
        let data_start = RESERVED_SECTORS + FAT_COPIES * u64::from(self.fat_sectors);
        data_start * SECTOR + u64::from(cluster - ROOT_CLUSTER) * self.cluster_size()
    }
}

/// The cluster count dips by one each time the FATs grow by a sector, so the smallest size
/// that works for all larger sizes is the first one with a cluster to spare.
const fn min_volume_sectors() -> u64 {
    let mut sectors = MIN_CLUSTERS;
    loop {
        if let Some(geometry) = Geometry::new(sectors)
            && geometry.clusters as u64 > MIN_CLUSTERS
        {
            return sectors;
        }
        sectors += 1;
    }
}

/// The label as stored, or `None` for an unlabelled volume.
fn volume_label(label: &str) -> Result<Option<[u8; 11]>, FatError> {
    let upper = label.to_ascii_uppercase();
    let reason = if label.is_empty() {
        return Ok(None);
    } else if !upper.bytes().all(|b| b == b' ' || is_short_char(b)) {
        "only characters valid in a short name and spaces are allowed"
    } else if upper.len() > 11 {
        "longer than 11 characters"
    } else if upper.starts_with(' ') {
        "starts with a space"
    } else {
        let mut stored = [b' '; 11];
        stored[..upper.len()].copy_from_slice(upper.as_bytes());
        return Ok(Some(stored));
    };
    let label = label.to_owned();
    Err(FatError::InvalidLabel { label, reason })
}

/// Clusters the tree needs, checking each directory against the entry limit on the way, so
/// that a refused tree is refused before anything is written.
fn clusters_needed(
    dir: &Dir,
    path: &str,
    header: usize,
    cluster_size: u64,
) -> Result<u64, FatError> {
    let entries = dir_entries(dir, header);
    if entries > MAX_DIR_ENTRIES {
        return Err(FatError::DirectoryFull(path.to_owned()));
    }
    let mut clusters = ((entries * ENTRY_SIZE) as u64)
        .div_ceil(cluster_size)
        .max(1);
    for (name, node) in &dir.entries {
        clusters += match node {
            Node::File(data) => (data.len() as u64).div_ceil(cluster_size),
            Node::Dir(sub) => {
                let sub_path = format!("{}/{name}", path.trim_end_matches('/'));
                clusters_needed(sub, &sub_path, 2, cluster_size)?
            }
        };
    }
    Ok(clusters)
}

/// 32-byte entries of a directory: `header` (label, or `.` and `..`), then for each child its
/// long-name entries, if it needs any, and its short entry.
fn dir_entries(dir: &Dir, header: usize) -> usize {
    let long = |name: &str| match exact_short_name(name) {
        Some(_) => 0,
        None => name.encode_utf16().count().div_ceil(13),
    };
    header + dir.entries.keys().map(|name| 1 + long(name)).sum::<usize>()
}

/// Hands out clusters and collects what goes in them.
struct Layout<'t> {
    cluster_size: u64,
    stamp: DosTime,
    label: Option<[u8; 11]>,
    next: u32,
    /// `(first cluster, length)` of each chain, in allocation (and so cluster) order.
    runs: Vec<(u32, u32)>,
    /// Bytes to write from the start of a cluster: directories built here, file data borrowed.
    pieces: Vec<(u32, Cow<'t, [u8]>)>,
}

impl<'t> Layout<'t> {
    /// A run of clusters for `bytes`; `clusters_needed` has checked that they exist.
    fn allocate(&mut self, bytes: u64) -> u32 {
        let count = bytes.div_ceil(self.cluster_size).max(1) as u32;
        let first = self.next;
        self.next += count;
        self.runs.push((first, count));
        first
    }

    /// Lays out `dir` and, depth first, everything below it; returns its first cluster.
    /// `parent` is the cluster `..` points to (0 for the root, fatgen103 §6); `None` for the root.
    fn place_dir(&mut self, dir: &'t Dir, parent: Option<u32>) -> u32 {
        let header = if parent.is_some() {
            2
        } else {
            usize::from(self.label.is_some())
        };
        let entries = dir_entries(dir, header);
        let dir_bytes = (entries * ENTRY_SIZE) as u64;
        let first = self.allocate(dir_bytes);
        let stamp = self.stamp;
        let mut buf = Vec::with_capacity(entries * ENTRY_SIZE);
        match (parent, self.label) {
            (Some(parent), _) => {
                buf.extend(short_entry(&DOT, ATTR_DIRECTORY, first, 0, stamp));
                buf.extend(short_entry(&DOT_DOT, ATTR_DIRECTORY, parent, 0, stamp));
            }
            (None, Some(label)) => buf.extend(short_entry(&label, ATTR_VOLUME_ID, 0, 0, stamp)),
            (None, None) => {}
        }
        let parent_of_children = if parent.is_some() { first } else { 0 };
        for ((name, node), (short, long)) in dir.entries.iter().zip(short_names(dir)) {
            let (attr, cluster, size) = match node {
                Node::File(data) if data.is_empty() => (ATTR_ARCHIVE, 0, 0),
                Node::File(data) => {
                    let cluster = self.allocate(data.len() as u64);
                    self.pieces.push((cluster, Cow::Borrowed(&data[..])));
                    // add_file refused anything longer than u32::MAX.
                    (ATTR_ARCHIVE, cluster, data.len() as u32)
                }
                Node::Dir(sub) => (
                    ATTR_DIRECTORY,
                    self.place_dir(sub, Some(parent_of_children)),
                    0,
                ),
            };
            if long {
                push_long_name(&mut buf, name, &short);
            }
            buf.extend(short_entry(&short, attr, cluster, size, stamp));
        }
        // Zeros to the end of the directory's clusters: the first zero entry ends it.
        let clusters = dir_bytes.div_ceil(self.cluster_size).max(1);
        buf.resize((clusters * self.cluster_size) as usize, 0);
        self.pieces.push((first, Cow::Owned(buf)));
        first
    }
}

fn is_short_char(b: u8) -> bool {
    b.is_ascii_uppercase() || b.is_ascii_digit() || b"!#$%&'()-@^_`{}~".contains(&b)
}

fn pack_short(base: &[u8], ext: &[u8]) -> [u8; 11] {
    let mut name = [b' '; 11];
    for (slot, &b) in name[..8].iter_mut().zip(base) {
        *slot = b;
    }
    for (slot, &b) in name[8..].iter_mut().zip(ext) {
        *slot = b;
    }
    name
}

/// `name` as a short entry when it already is a valid uppercase 8.3 name.
fn exact_short_name(name: &str) -> Option<[u8; 11]> {
    let (base, ext) = match name.split_once('.') {
        Some((_, "")) => return None,
        Some(parts) => parts,
        None => (name, ""),
    };
    let fits = |part: &str, max| part.len() <= max && part.bytes().all(is_short_char);
    let valid = !base.is_empty() && fits(base, 8) && fits(ext, 3);
    valid.then(|| pack_short(base.as_bytes(), ext.as_bytes()))
}

/// Short names for a directory's entries, in entry order and unique within it, each with
/// whether the entry needs long-name entries. Names that are 8.3 names once uppercased keep
/// that as their short name (fatgen103 §7 uses the basis name without a tail when it is the
/// whole name); they are reserved first so that no generated alias can take one.
fn short_names(dir: &Dir) -> Vec<([u8; 11], bool)> {
    let upper = |name: &str| exact_short_name(&name.to_ascii_uppercase());
    let fitted: Vec<_> = dir.entries.keys().map(|name| upper(name)).collect();
    let mut taken: BTreeSet<[u8; 11]> = fitted.iter().flatten().copied().collect();
    let names = dir.entries.keys().zip(fitted);
    names
        .map(|(name, fitted)| {
            let short = fitted.unwrap_or_else(|| alias(name, &mut taken));
            (short, exact_short_name(name).is_none())
        })
        .collect()
}

/// fatgen103 §7 basis-name and numeric-tail generation for a name that is no 8.3 name:
/// uppercase, drop spaces and leading dots, keep up to 8 characters before the first dot and
/// 3 after the last, with `_` for what a short name cannot hold; then the first free `~N`.
fn alias(name: &str, taken: &mut BTreeSet<[u8; 11]>) -> [u8; 11] {
    let squeezed = name.to_ascii_uppercase().replace(' ', "");
    let trimmed = squeezed.trim_start_matches('.');
    let (head, ext) = trimmed.rsplit_once('.').unwrap_or((trimmed, ""));
    // check_name leaves a character other than a dot or space at the end, so never empty.
    let (primary, ext) = (oem_part(head, 8), oem_part(ext, 3));
    // Terminates: a directory holds at most 65536 entries, so some `~N` below 65538 is free.
    let mut n = 1u32;
    loop {
        let tail = format!("~{n}");
        let keep = primary.len().min(8usize.saturating_sub(tail.len()));
        let candidate = pack_short(&[&primary[..keep], tail.as_bytes()].concat(), &ext);
        if taken.insert(candidate) {
            return candidate;
        }
        n += 1;
    }
}

/// Up to `max` characters of `part` before any dot, as short-name bytes or `_`.
fn oem_part(part: &str, max: usize) -> Vec<u8> {
    let oem = |c| match u8::try_from(c) {
        Ok(b) if is_short_char(b) => b,
        _ => b'_',
    };
    part.chars()
        .take_while(|&c| c != '.')
        .take(max)
        .map(oem)
        .collect()
}

/// fatgen103 §7: every long-name entry carries this sum of the short name it belongs to, so a
/// driver can tell whether the short entry that follows still matches.
fn long_name_checksum(short: &[u8; 11]) -> u8 {
    short
        .iter()
        .fold(0u8, |sum, &b| sum.rotate_right(1).wrapping_add(b))
}

/// Long-name entries for `name`, last part first, as they precede the short entry on disk.
fn push_long_name(buf: &mut Vec<u8>, name: &str, short: &[u8; 11]) {
    let mut units: Vec<u16> = name.encode_utf16().collect();
    let parts = units.len().div_ceil(13);
    // A name that does not fill its last entry ends with a NUL, then 0xFFFF padding.
    if !units.len().is_multiple_of(13) {
        units.push(0);
    }
    units.resize(parts * 13, 0xFFFF);
    for (index, chunk) in units.chunks(13).enumerate().rev() {
        let mut entry = [0u8; ENTRY_SIZE];
        // At most 20 parts (255 units), so the ordinal stays below the 0x40 flag.
        entry[0] = (index + 1) as u8;
        if index + 1 == parts {
            entry[0] |= LAST_LONG_ENTRY;
        }
        entry[11] = ATTR_LONG_NAME;
        entry[13] = long_name_checksum(short);
        for (unit, offset) in chunk.iter().zip(LONG_NAME_OFFSETS) {
            put(&mut entry, offset, &unit.to_le_bytes());
        }
        buf.extend_from_slice(&entry);
    }
}

fn short_entry(name: &[u8; 11], attr: u8, cluster: u32, size: u32, at: DosTime) -> [u8; 32] {
    let mut entry = [0u8; ENTRY_SIZE];
    put(&mut entry, 0, name);
    entry[11] = attr;
    // Creation time and date, access date, modification time and date.
    for (offset, value) in [
        (14, at.time),
        (16, at.date),
        (18, at.date),
        (22, at.time),
        (24, at.date),
    ] {
        put(&mut entry, offset, &value.to_le_bytes());
    }
    put(&mut entry, 20, &((cluster >> 16) as u16).to_le_bytes());
    put(&mut entry, 26, &(cluster as u16).to_le_bytes());
    put(&mut entry, 28, &size.to_le_bytes());
    entry
}

fn put(buf: &mut [u8], offset: usize, bytes: &[u8]) {
    buf[offset..offset + bytes.len()].copy_from_slice(bytes);
}

/// A DOS date and time (fatgen103 §6): 2-second resolution, years 1980..=2107, no zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DosTime {
    date: u16,
    time: u16,
}

impl DosTime {
    fn from_unix(seconds: u64) -> Self {
        let seconds = seconds.clamp(DOS_FIRST, DOS_LAST);
        // In range of i64: clamped to 2107 above.
        let t = UtcTime::from_unix(seconds as i64);
        let date = ((t.year as u32 - 1980) << 9) | (t.month << 5) | t.day;
        let time = (t.hour << 11) | (t.minute << 5) | (t.second / 2);
        Self {
            date: date as u16,
            time: time as u16,
        }
    }
}

/// Boot sector and BPB, fatgen103 §3.1 to §3.3.
fn boot_sector(geometry: &Geometry, opts: &FatOptions, label: [u8; 11]) -> [u8; 512] {
    let mut sector = [0u8; 512];
    put(&mut sector, 0, &[0xEB, 0x58, 0x90]); // jmp short to offset 0x5A, past the BPB
    put(&mut sector, 3, b"MSWIN4.1"); // the OEM name fatgen103 recommends for compatibility
    put(&mut sector, 11, &(SECTOR as u16).to_le_bytes());
    sector[13] = geometry.sectors_per_cluster as u8;
    put(&mut sector, 14, &(RESERVED_SECTORS as u16).to_le_bytes());
    sector[16] = FAT_COPIES as u8;
    sector[21] = 0xF8; // fixed media
    put(&mut sector, 24, &63u16.to_le_bytes()); // sectors per track and heads: the usual
    put(&mut sector, 26, &255u16.to_le_bytes()); // LBA-translated values
    put(&mut sector, 28, &opts.hidden_sectors.to_le_bytes());
    put(&mut sector, 32, &geometry.total_sectors.to_le_bytes());
    put(&mut sector, 36, &geometry.fat_sectors.to_le_bytes());
    put(&mut sector, 44, &ROOT_CLUSTER.to_le_bytes());
    put(&mut sector, 48, &(FSINFO_SECTOR as u16).to_le_bytes());
    put(&mut sector, 50, &(BACKUP_BOOT_SECTOR as u16).to_le_bytes());
    sector[64] = 0x80; // drive number: first hard disk
    sector[66] = 0x29; // extended boot signature: serial number, label and type follow
    put(&mut sector, 67, &opts.volume_id.to_le_bytes());
    put(&mut sector, 71, &label);
    put(&mut sector, 82, b"FAT32   ");
    put(&mut sector, 0x5A, &BOOT_STUB);
    put(&mut sector, 510, &[0x55, 0xAA]);
    sector
}

/// FSInfo sector, fatgen103 §5: signatures, free cluster count and where to look for one.
fn fs_info_sector(free: u32, next_free: u32) -> [u8; 512] {
    let mut sector = [0u8; 512];
    put(&mut sector, 0, &0x4161_5252u32.to_le_bytes());
    put(&mut sector, 484, &0x6141_7272u32.to_le_bytes());
    put(&mut sector, 488, &free.to_le_bytes());
    put(&mut sector, 492, &next_free.to_le_bytes());
    put(&mut sector, 508, &0xAA55_0000u32.to_le_bytes());
    sector
}

/// The used part of the FAT. Entry 0 repeats the media byte; entry 1 is end-of-chain with the
/// clean-shutdown and no-error bits set (fatgen103 §4). Each run is one chain.
fn fat_bytes(runs: &[(u32, u32)]) -> Vec<u8> {
    let mut fat = vec![0x0FFF_FFF8, END_OF_CHAIN];
    for &(first, count) in runs {
        fat.extend(first + 1..first + count);
        fat.push(END_OF_CHAIN);
    }
    fat.iter().flat_map(|entry| entry.to_le_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;
    use std::process::Command;

    const MIB: u64 = 1 << 20;

    /// Deterministic xorshift bytes, so that misplaced clusters cannot go unnoticed.
    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        };
        (0..len).map(|_| next()).collect()
    }

    /// The files of a realistic ESP; `tree_of` adds the empty directory `loader/keys`.
    fn esp_files() -> Vec<(String, Vec<u8>)> {
        let files = [
            ("EFI/BOOT/BOOTX64.EFI", noise(100 << 10, 1)),
            ("EFI/Linux/crust_0.1.0.efi", noise(20 << 20, 2)),
            ("EFI/Linux/crust_0.2.0+3.efi", noise((3 << 20) + 123, 3)),
            (
                "loader/loader.conf",
                b"timeout 3\ndefault crust_*\n".to_vec(),
            ),
            ("loader/random-seed", Vec::new()),
        ];
        files.map(|(path, data)| (path.to_owned(), data)).into()
    }

    fn tree_of(files: &[(String, Vec<u8>)]) -> FatTree {
        let mut tree = FatTree::new();
        tree.add_dir("loader/keys").unwrap();
        for (path, data) in files {
            tree.add_file(path, data.clone()).unwrap();
        }
        tree
    }

    fn options() -> FatOptions {
        FatOptions {
            volume_id: 0x1234_ABCD,
            label: "crust-esp".into(),
            timestamp: 1_700_000_000,
            hidden_sectors: 2048,
        }
    }

    /// Writes `tree` into a fresh sparse temporary file of `size` bytes.
    fn image(size: u64, opts: &FatOptions, tree: &FatTree) -> (tempfile::TempPath, FatSummary) {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.as_file().set_len(size).unwrap();
        let summary = write_volume(file.as_file_mut(), size, opts, tree).unwrap();
        (file.into_temp_path(), summary)
    }

    /// A volume written over junk (a used disk, flashed data regions only) is as clean as
    /// one written over zeros: nothing a reader interprets is left to the medium.
    #[test]
    fn a_volume_written_over_junk_is_clean() {
        let size = 64 * MIB;
        let tree = tree_of(&esp_files());
        let (zeros, summary) = image(size, &options(), &tree);
        let mut file = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(file.as_file_mut(), &vec![0xa5; size as usize]).unwrap();
        write_volume(file.as_file_mut(), size, &options(), &tree).unwrap();
        let junk = file.into_temp_path();
        assert_fsck_clean(junk.to_str().unwrap(), &summary);
        assert_fsck_clean(zeros.to_str().unwrap(), &summary);
    }

    /// Writes into memory, checking that nothing lands past `size`.
    fn in_memory(size: u64, opts: &FatOptions, tree: &FatTree) -> Result<Vec<u8>, FatError> {
        let mut out = Cursor::new(Vec::new());
        write_volume(&mut out, size, opts, tree)?;
        assert!(
            out.get_ref().len() as u64 <= size,
            "wrote past the end of the volume"
        );
        Ok(out.into_inner())
    }

    /// Runs a file-system tool, which must succeed without writing to stderr, and returns its
    /// stdout. A missing tool fails the test with the Debian package to install.
    fn run(tool: &str, package: &str, args: &[&str]) -> String {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let dirs = std::env::split_paths(&path).chain(["/usr/sbin".into(), "/sbin".into()]);
        let found = dirs
            .map(|dir| dir.join(tool))
            .find(|candidate| candidate.is_file());
        let found = found
            .unwrap_or_else(|| panic!("{tool} is missing: install the Debian package {package}"));
        let output = Command::new(found).args(args).output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success() && stderr.is_empty(),
            "{tool} {args:?}: {}\n{stdout}{stderr}",
            output.status
        );
        stdout
    }

    /// On a clean volume `fsck.fat -n` prints only its banner and a summary that matches ours,
    /// and `-v` adds nothing that reads like a complaint.
    fn assert_fsck_clean(img: &str, summary: &FatSummary) {
        let quiet = run("fsck.fat", "dosfstools", &["-n", img]);
        let counts = format!("{}/{} clusters", summary.used_clusters, summary.clusters);
        let lines: Vec<&str> = quiet.lines().collect();
        assert!(
            lines.len() == 2 && lines[1].ends_with(&counts),
            "fsck.fat complained:\n{quiet}"
        );
        let verbose = run("fsck.fat", "dosfstools", &["-n", "-v", img]).to_lowercase();
        let complaints = [
            "wrong", "differ", "invalid", "bad", "dirty", "contains", "fix", "?",
        ];
        for word in complaints.into_iter().chain(["error", "warn", "not "]) {
            assert!(
                !verbose.contains(word),
                "fsck.fat -v says {word:?}:\n{verbose}"
            );
        }
    }

    /// mtools reads every file back byte for byte.
    fn assert_mtools_reads(img: &str, files: &[(String, Vec<u8>)]) {
        let dir = tempfile::tempdir().unwrap();
        for (index, (path, data)) in files.iter().enumerate() {
            let copy = dir.path().join(index.to_string());
            let source = format!("::/{path}");
            run(
                "mcopy",
                "mtools",
                &["-n", "-i", img, &source, copy.to_str().unwrap()],
            );
            assert!(
                std::fs::read(&copy).unwrap() == *data,
                "{path} reads back differently"
            );
        }
    }

    #[test]
    fn esp_images_of_every_cluster_size_pass_fsck_and_read_back() {
        let files = esp_files();
        let tree = tree_of(&files);
        // Sizes for every cluster size of the table, and the smallest volume accepted.
        for (size, cluster_size) in [
            (MIN_VOLUME_SIZE, 512),
            (40 * MIB, 512),
            (64 * MIB, 512),
            (512 * MIB, 4096),
            (1024 * MIB, 4096),
            (9 << 30, 8192),
            (17 << 30, 16384),
        ] {
            let (img, summary) = image(size, &options(), &tree);
            assert_eq!(summary.cluster_size, cluster_size);
            assert_fsck_clean(img.to_str().unwrap(), &summary);
            assert_mtools_reads(img.to_str().unwrap(), &files);
        }
    }

    #[test]
    fn mdir_blkid_and_fatlabel_see_names_case_and_label() {
        let (img, _) = image(64 * MIB, &options(), &tree_of(&esp_files()));
        let img = img.to_str().unwrap();
        let listing = run("mdir", "mtools", &["-/", "-a", "-i", img, "::"]);
        for expected in [
            "Volume in drive : is CRUST-ESP",
            "Volume Serial Number is 1234-ABCD",
            "BOOTX64  EFI    102400 2023-11-14  22:13 \n",
            "LINUX        <DIR>     2023-11-14  22:13  Linux\n",
            "CRUST_~1 EFI  20971520 2023-11-14  22:13  crust_0.1.0.efi\n",
            "CRUST_~2 EFI   3145851 2023-11-14  22:13  crust_0.2.0+3.efi\n",
            "LOADER~1 CON        26 2023-11-14  22:13  loader.conf\n",
            "RANDOM~1             0 2023-11-14  22:13  random-seed\n",
            "Directory for ::/loader/keys\n\n.            <DIR>",
        ] {
            assert!(
                listing.contains(expected),
                "mdir lacks {expected:?}:\n{listing}"
            );
        }
        let probe = run("blkid", "util-linux", &["-p", "-o", "export", img]);
        for expected in [
            "TYPE=vfat",
            "VERSION=FAT32",
            "LABEL=CRUST-ESP",
            "UUID=1234-ABCD",
        ] {
            assert!(
                probe.lines().any(|line| line == expected),
                "blkid lacks {expected}:\n{probe}"
            );
        }
        assert!(!probe.contains("SEC_TYPE"), "{probe}");
        assert_eq!(run("fatlabel", "dosfstools", &[img]), "CRUST-ESP\n");
    }

    #[test]
    fn forty_files_fill_a_directory_of_many_clusters_on_an_unlabelled_volume() {
        // 2 + 40 * 3 entries of 32 bytes: eight 512-byte clusters.
        let name = |i| format!("many/Entry number {i}.data");
        let files: Vec<_> = (0..40)
            .map(|i| (name(i), noise(i * 97, i as u64)))
            .collect();
        let unlabelled = FatOptions {
            label: String::new(),
            ..options()
        };
        let (img, summary) = image(40 * MIB, &unlabelled, &tree_of(&files));
        let img = img.to_str().unwrap();
        assert_eq!(summary.cluster_size, 512);
        assert_fsck_clean(img, &summary);
        assert_mtools_reads(img, &files);
        let listing = run("mdir", "mtools", &["-i", img, "::/many"]);
        assert!(
            listing.contains("ENTRYN~9 DAT") && listing.contains("ENTRY~40 DAT"),
            "{listing}"
        );
    }

    #[test]
    fn a_full_volume_is_clean_and_one_byte_more_is_refused_unwritten() {
        let clusters = u64::from(image(40 * MIB, &options(), &FatTree::new()).1.clusters);
        let mut tree = FatTree::new();
        // One cluster for the root (label, then two long-name entries and a short entry).
        tree.add_file("fill.bin", noise(((clusters - 1) * 512) as usize, 9))
            .unwrap();
        let (img, summary) = image(40 * MIB, &options(), &tree);
        assert_eq!(summary.used_clusters, summary.clusters);
        assert_fsck_clean(img.to_str().unwrap(), &summary);
        assert_eq!(
            in_memory(40 * MIB, &options(), &tree).unwrap().len() as u64,
            40 * MIB
        );

        tree.add_file("one more byte", vec![1]).unwrap();
        let mut out = Cursor::new(Vec::new());
        let error = write_volume(&mut out, 40 * MIB, &options(), &tree).unwrap_err();
        let FatError::TooLarge { needed, available } = error else {
            panic!("{error}")
        };
        assert_eq!((needed, available), ((clusters + 1) * 512, clusters * 512));
        assert!(
            out.into_inner().is_empty(),
            "a refused volume must not be written"
        );
    }

    #[test]
    fn output_is_deterministic_and_follows_timestamp_and_volume_id() {
        let tree = tree_of(&esp_files());
        let first = in_memory(40 * MIB, &options(), &tree).unwrap();
        assert!(first == in_memory(40 * MIB, &options(), &tree.clone()).unwrap());
        let later = FatOptions {
            timestamp: 1_800_000_000,
            ..options()
        };
        assert!(first != in_memory(40 * MIB, &later, &tree).unwrap());
        let other_id = FatOptions {
            volume_id: 7,
            ..options()
        };
        assert!(first != in_memory(40 * MIB, &other_id, &tree).unwrap());
    }

    #[test]
    fn volume_sizes_outside_fat32_are_refused() {
        for size in [
            0,
            20 * MIB,
            MIN_VOLUME_SIZE - 512,
            MAX_VOLUME_SIZE + 512,
            64 << 30,
        ] {
            let error = in_memory(size, &options(), &FatTree::new()).unwrap_err();
            assert!(matches!(error, FatError::VolumeSize(_)), "{size}: {error}");
        }
        // From the minimum up, every size has enough clusters.
        for sectors in MIN_VOLUME_SIZE / 512..MIN_VOLUME_SIZE / 512 + 1000 {
            assert!(Geometry::new(sectors).is_some(), "{sectors} sectors");
        }
        for (size, cluster_size) in [
            (260 * MIB, 512),
            (8 << 30, 4096),
            (16 << 30, 8192),
            (32 << 30, 16384),
        ] {
            let geometry = Geometry::new(size / 512).unwrap();
            assert_eq!(geometry.cluster_size(), cluster_size);
            assert!(u64::from(geometry.fat_sectors) * 128 >= u64::from(geometry.clusters) + 2);
        }
    }

    #[test]
    fn bad_names_conflicts_and_labels_are_refused() {
        let mut tree = FatTree::new();
        let long = "x".repeat(300);
        for path in [
            "", "/", "a//b", "a/", "a/../b", "./a", "con:x", "a\\b", "why?", "tab\tx", "dot.",
            &long,
        ] {
            let error = tree.add_file(path, vec![1]).unwrap_err();
            assert!(
                matches!(error, FatError::InvalidName { .. }),
                "{path:?}: {error}"
            );
        }
        tree.add_file("/EFI/a", vec![1]).unwrap();
        for path in ["EFI/a", "efi/x", "EFI/A", "EFI/a/b"] {
            let error = tree.add_file(path, vec![1]).unwrap_err();
            assert!(
                matches!(error, FatError::Conflict { .. }),
                "{path:?}: {error}"
            );
        }
        assert!(matches!(
            tree.add_dir("EFI/a"),
            Err(FatError::Conflict { .. })
        ));
        tree.add_dir("EFI").unwrap();
        assert_eq!(tree.data_bytes(), 1);
        for label in ["twelve chars", "bad/label", "é", " lead"] {
            let opts = FatOptions {
                label: label.into(),
                ..options()
            };
            let error = in_memory(40 * MIB, &opts, &tree).unwrap_err();
            assert!(
                matches!(error, FatError::InvalidLabel { .. }),
                "{label:?}: {error}"
            );
        }
    }

    #[test]
    fn short_names_checksums_and_dates_follow_fatgen103() {
        let mut tree = FatTree::new();
        let names = [
            "BOOTX64.EFI",
            "Linux",
            "LINUX~1",
            "loader.conf",
            ".hidden",
            "a b.c",
        ];
        for name in names
            .into_iter()
            .chain(["crust_0.1.0+3.efi", "crust_~1.efi"])
        {
            tree.add_dir(name).unwrap();
        }
        let names = tree.root.entries.keys().map(String::as_str);
        let shorts: BTreeMap<&str, ([u8; 11], bool)> = names.zip(short_names(&tree.root)).collect();
        assert_eq!(shorts[".hidden"], (*b"HIDDEN~1   ", true));
        assert_eq!(shorts["BOOTX64.EFI"], (*b"BOOTX64 EFI", false));
        assert_eq!(shorts["LINUX~1"], (*b"LINUX~1    ", false));
        assert_eq!(shorts["Linux"], (*b"LINUX      ", true));
        assert_eq!(shorts["a b.c"], (*b"AB~1    C  ", true));
        assert_eq!(shorts["crust_0.1.0+3.efi"], (*b"CRUST_~2EFI", true));
        assert_eq!(shorts["crust_~1.efi"], (*b"CRUST_~1EFI", true));
        assert_eq!(shorts["loader.conf"], (*b"LOADER~1CON", true));
        // The value dosfstools' and Linux's lfn_checksum give for "README  TXT".
        assert_eq!(long_name_checksum(b"README  TXT"), 0x73);
        let dos = |date: u16, time: u16| DosTime { date, time };
        let expected = dos((43 << 9) | (11 << 5) | 14, (22 << 11) | (13 << 5) | 10);
        assert_eq!(DosTime::from_unix(1_700_000_000), expected); // 2023-11-14 22:13:20
        assert_eq!(DosTime::from_unix(0), dos((1 << 5) | 1, 0));
        let last = dos((127 << 9) | (12 << 5) | 31, (23 << 11) | (59 << 5) | 29);
        assert_eq!(
            (DosTime::from_unix(u64::MAX), DosTime::from_unix(DOS_LAST)),
            (last, last)
        );
    }
}
