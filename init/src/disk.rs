//! Finding the boot disk, and on it the root and verity partitions of the signed image.
//!
//! A slot is identified by content: the root and verity partitions carry the two halves of
//! the signed root hash as their unique GUIDs. The boot disk is the one whose ESP has the
//! partition UUID systemd-boot reports (`LoaderDevicePartUUID`), so a second disk holding a
//! copy of the same image (a USB stick being flashed, say) is never mistaken for it.
//! Disks and partitions appear asynchronously while drivers probe, so the search polls
//! sysfs until a deadline.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crust_format::layout::{Role, Slot, type_guid};
use crust_format::verity::{Superblock, VerityParams};
use gpt::disk::LogicalBlockSize;
use gpt::partition::Partition;
use uuid::Uuid;

use crate::devnode::{self, DevNum, Kind};
use crate::error::{Context, Error, Result};

/// Where the kernel lists block devices.
pub const SYS_BLOCK: &str = "/sys/block";
/// How often to look again for disks and partitions.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Whole-disk names that never hold the boot disk (and that may be slow to read:
/// optical drives without a medium, floppies).
const SKIPPED_PREFIXES: [&str; 6] = ["loop", "ram", "dm-", "zram", "sr", "fd"];

/// The partitions to look for, derived from the verified manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wanted {
    /// Partition UUID of the ESP the boot loader came from, if it said.
    pub esp: Option<Uuid>,
    /// Unique GUID of the root partition.
    pub root: Uuid,
    /// Unique GUID of the verity partition.
    pub verity: Uuid,
}

/// The slot's partitions in one GPT, by entry number (1-based, as the kernel numbers them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotEntries {
    /// The slot, from the root partition's label.
    pub slot: Slot,
    /// Entry number of the root partition.
    pub root: u32,
    /// Entry number of the verity partition.
    pub verity: u32,
}

/// Decides whether a partition table is the boot disk's.
///
/// `Ok(None)`: not this disk. `Err`: the table holds the slot's partitions but breaks the
/// layout (wrong types, labels that do not name one slot) — booting from it would be a guess.
pub fn match_table(
    table: &BTreeMap<u32, Partition>,
    wanted: &Wanted,
) -> std::result::Result<Option<SlotEntries>, String> {
    let find = |guid: Uuid| {
        table
            .iter()
            .find(|(_, p)| p.is_used() && p.part_guid == guid)
    };
    if let Some(esp) = wanted.esp
        && find(esp).is_none()
    {
        return Ok(None);
    }
    let (Some((&root_nr, root)), Some((&verity_nr, verity))) =
        (find(wanted.root), find(wanted.verity))
    else {
        return Ok(None);
    };
    if root.part_type_guid.guid != type_guid::ROOT_X86_64 {
        return Err(format!(
            "partition {root_nr} has the root UUID {} but type {}, not the x86-64 root type",
            wanted.root, root.part_type_guid.guid
        ));
    }
    if verity.part_type_guid.guid != type_guid::ROOT_VERITY_X86_64 {
        return Err(format!(
            "partition {verity_nr} has the verity UUID {} but type {}, not the x86-64 root verity type",
            wanted.verity, verity.part_type_guid.guid
        ));
    }
    let slot = match Role::from_label(&root.name) {
        Some(Role::Root(slot)) => slot,
        _ => {
            return Err(format!(
                "root partition {root_nr} is labelled {:?}, not root-a or root-b",
                root.name
            ));
        }
    };
    if Role::from_label(&verity.name) != Some(Role::Verity(slot)) {
        return Err(format!(
            "root partition {root_nr} is {:?} but its verity partition {verity_nr} is {:?}",
            root.name, verity.name
        ));
    }
    Ok(Some(SlotEntries {
        slot,
        root: root_nr,
        verity: verity_nr,
    }))
}

/// Reads the GPT of a disk (or image file) read-only.
pub fn read_table(
    path: &Path,
    block_size: LogicalBlockSize,
) -> std::io::Result<BTreeMap<u32, Partition>> {
    let file = File::open(path)?;
    let disk = gpt::GptConfig::new()
        .writable(false)
        .logical_block_size(block_size)
        .open_from_device(file)
        .map_err(std::io::Error::other)?;
    Ok(disk.partitions().clone())
}

/// A partition as the kernel shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockDev {
    /// Kernel name, such as `vda2` or `nvme0n1p2`.
    pub name: String,
    /// Device number.
    pub dev: DevNum,
    /// Size in 512-byte sectors.
    pub sectors: u64,
}

impl BlockDev {
    /// The device node.
    pub fn node(&self) -> PathBuf {
        Path::new("/dev").join(&self.name)
    }
}

/// The boot disk and the slot's partitions on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootDisk {
    /// Kernel name of the disk.
    pub disk: String,
    /// The slot the root partition's label names.
    pub slot: Slot,
    /// The root partition.
    pub root: BlockDev,
    /// The verity partition.
    pub verity: BlockDev,
}

/// What one look at a disk found.
enum Probe {
    /// No readable GPT (yet): look again next round.
    Unreadable(String),
    /// A GPT without the slot's partitions: not the boot disk.
    NotHere,
    /// The slot's partitions are in the GPT.
    Found(SlotEntries),
    /// The slot's partitions are in the GPT, but the table breaks the layout.
    Broken(String),
}

/// Polls the disks until one holds the slot's partitions and the kernel shows them.
pub fn find(wanted: &Wanted, timeout: Duration) -> Result<BootDisk> {
    let deadline = Instant::now() + timeout;
    // Disks whose GPT we have read and that are not the boot disk: the table does not
    // change while we wait, so they are not read again.
    let mut ruled_out = BTreeSet::new();
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    loop {
        for disk in whole_disks() {
            if ruled_out.contains(&disk) {
                continue;
            }
            match probe(&disk, wanted) {
                Probe::Unreadable(why) => {
                    seen.insert(disk, why);
                }
                Probe::Broken(why) => {
                    return Err(Error::new("disk", format!("{disk}: {why}"))
                        .advice("the partition table was changed by hand; reinstall the image"));
                }
                Probe::NotHere => {
                    seen.insert(disk.clone(), "no matching partitions".into());
                    ruled_out.insert(disk);
                }
                Probe::Found(entries) => {
                    let parts = partitions(&disk);
                    match (parts.get(&entries.root), parts.get(&entries.verity)) {
                        (Some(root), Some(verity)) => {
                            let found = BootDisk {
                                disk,
                                slot: entries.slot,
                                root: root.clone(),
                                verity: verity.clone(),
                            };
                            wait_for_nodes(&found)?;
                            return Ok(found);
                        }
                        _ => {
                            seen.insert(disk, "partitions not yet visible".into());
                        }
                    }
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(not_found(wanted, timeout, &seen));
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

fn not_found(wanted: &Wanted, timeout: Duration, seen: &BTreeMap<String, String>) -> Error {
    let esp = match wanted.esp {
        Some(esp) => format!(" next to ESP {esp}"),
        None => String::new(),
    };
    let seen = if seen.is_empty() {
        "no disks at all".to_owned()
    } else {
        seen.iter()
            .map(|(disk, what)| format!("{disk}: {what}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    Error::new(
        "disk",
        format!(
            "boot disk not found: no disk holds root partition {} and verity partition {}{esp} \
             within {} s (seen: {seen})",
            wanted.root,
            wanted.verity,
            timeout.as_secs()
        ),
    )
    .advice(
        "write the whole image to the disk, and check that the disk's driver is in the \
         image's module list (crust.disk_timeout=SECS waits longer)",
    )
}

fn probe(disk: &str, wanted: &Wanted) -> Probe {
    let sys = Path::new(SYS_BLOCK).join(disk);
    let block_size = match read_u64(&sys.join("queue/logical_block_size")) {
        Some(512) => LogicalBlockSize::Lb512,
        Some(4096) => LogicalBlockSize::Lb4096,
        Some(other) => return Probe::Unreadable(format!("{other}-byte blocks")),
        None => return Probe::Unreadable("no logical block size".into()),
    };
    if read_u64(&sys.join("size")) == Some(0) {
        return Probe::Unreadable("empty".into());
    }
    let node = Path::new("/dev").join(disk);
    let table = match read_table(&node, block_size) {
        Ok(table) => table,
        Err(e) => return Probe::Unreadable(format!("no GPT ({e})")),
    };
    match match_table(&table, wanted) {
        Ok(Some(entries)) => Probe::Found(entries),
        Ok(None) => Probe::NotHere,
        Err(why) => Probe::Broken(why),
    }
}

/// Whole disks in `/sys/block`, sorted by name, without the kinds that never boot Crust.
fn whole_disks() -> Vec<String> {
    let Ok(entries) = fs::read_dir(SYS_BLOCK) else {
        return Vec::new();
    };
    let mut disks: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| !SKIPPED_PREFIXES.iter().any(|p| name.starts_with(p)))
        .collect();
    disks.sort();
    disks
}

/// The partitions of `disk` the kernel has added, by partition number.
pub fn partitions(disk: &str) -> BTreeMap<u32, BlockDev> {
    let sys = Path::new(SYS_BLOCK).join(disk);
    let Ok(entries) = fs::read_dir(&sys) else {
        return BTreeMap::new();
    };
    entries
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let dir = entry.path();
            let number = u32::try_from(read_u64(&dir.join("partition"))?).ok()?;
            Some((
                number,
                BlockDev {
                    name: entry.file_name().into_string().ok()?,
                    dev: DevNum::from_sysfs(&dir).ok()?,
                    sectors: read_u64(&dir.join("size"))?,
                },
            ))
        })
        .collect()
}

fn wait_for_nodes(found: &BootDisk) -> Result<()> {
    for part in [&found.root, &found.verity] {
        devnode::ensure(&part.node(), Kind::Block, part.dev, Duration::from_secs(1))
            .context("disk", || {
                format!("cannot create {}", part.node().display())
            })?;
    }
    Ok(())
}

fn read_u64(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Checks that the partitions can hold what the manifest describes, and that the verity
/// superblock was written for this image (catches a slot half-written by an update).
pub fn check_slot(found: &BootDisk, params: &VerityParams) -> Result<()> {
    let need = |part: &BlockDev, bytes: u64, what: &str| {
        if part.sectors * 512 < bytes {
            Err(Error::new(
                "disk",
                format!(
                    "{} holds {} bytes but the {what} needs {bytes}",
                    part.name,
                    part.sectors * 512
                ),
            )
            .advice("the slot was not written whole; reinstall the image or the update"))
        } else {
            Ok(())
        }
    };
    need(&found.root, params.data_size(), "root image")?;
    need(&found.verity, params.hash_size, "hash tree")?;

    let mut block = [0u8; 512];
    File::open(found.verity.node())
        .and_then(|mut f| f.read_exact(&mut block))
        .context("verity-superblock", || {
            format!("cannot read {}", found.verity.node().display())
        })?;
    compare_superblock(&block, params).map_err(|why| {
        Error::new(
            "verity-superblock",
            format!(
                "the verity superblock on {} does not match the manifest: {why}",
                found.verity.name
            ),
        )
        .advice("the slot holds another image's hash tree; reinstall the image or the update")
    })
}

/// Compares an on-disk superblock with the manifest's verity parameters.
pub fn compare_superblock(block: &[u8], params: &VerityParams) -> std::result::Result<(), String> {
    let sb = Superblock::parse(block).map_err(|e| e.to_string())?;
    if sb.salt != params.salt {
        return Err(format!(
            "salt {} instead of {}",
            sb.salt.short(12),
            params.salt.short(12)
        ));
    }
    if sb.data_blocks != params.data_blocks {
        return Err(format!(
            "{} data blocks instead of {}",
            sb.data_blocks, params.data_blocks
        ));
    }
    if sb.uuid != params.uuid {
        return Err("another tree UUID".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crust_format::Digest;
    use crust_format::layout::{root_partition_uuid, verity_partition_uuid};
    use std::process::Command;

    const ESP: Uuid = uuid::uuid!("11111111-2222-3333-4444-555555555555");

    fn root_hash() -> Digest {
        Digest::of(b"root image")
    }

    fn wanted(esp: Option<Uuid>) -> Wanted {
        Wanted {
            esp,
            root: root_partition_uuid(&root_hash()),
            verity: verity_partition_uuid(&root_hash()),
        }
    }

    fn part(role: Role, guid: Uuid, first: u64) -> Partition {
        Partition {
            part_type_guid: gpt::partition_types::Type::from(role.type_guid()),
            part_guid: guid,
            first_lba: first,
            last_lba: first + 2047,
            flags: role.attributes(),
            name: role.label().to_owned(),
        }
    }

    /// esp, root-a, verity-a, root-b, verity-b with slot `slot` holding the image.
    fn table(slot: Slot) -> BTreeMap<u32, Partition> {
        let w = wanted(None);
        let other = |n: u128| Uuid::from_u128(n);
        let (ra, va, rb, vb) = match slot {
            Slot::A => (w.root, w.verity, other(4), other(5)),
            Slot::B => (other(2), other(3), w.root, w.verity),
        };
        BTreeMap::from([
            (1, part(Role::Esp, ESP, 2048)),
            (2, part(Role::Root(Slot::A), ra, 4096)),
            (3, part(Role::Verity(Slot::A), va, 6144)),
            (4, part(Role::Root(Slot::B), rb, 8192)),
            (5, part(Role::Verity(Slot::B), vb, 10240)),
        ])
    }

    #[test]
    fn finds_the_slot_by_partition_uuids() {
        let a = match_table(&table(Slot::A), &wanted(Some(ESP))).unwrap();
        assert_eq!(
            a,
            Some(SlotEntries {
                slot: Slot::A,
                root: 2,
                verity: 3
            })
        );
        let b = match_table(&table(Slot::B), &wanted(None)).unwrap();
        assert_eq!(
            b,
            Some(SlotEntries {
                slot: Slot::B,
                root: 4,
                verity: 5
            })
        );
    }

    #[test]
    fn another_esp_means_another_disk() {
        let other_esp = Some(Uuid::from_u128(99));
        assert_eq!(match_table(&table(Slot::A), &wanted(other_esp)), Ok(None));
        let mut t = table(Slot::A);
        t.remove(&3);
        assert_eq!(match_table(&t, &wanted(Some(ESP))), Ok(None));
    }

    #[test]
    fn refuses_broken_layouts() {
        let mut t = table(Slot::A);
        t.get_mut(&2).unwrap().part_type_guid = gpt::partition_types::LINUX_FS;
        assert!(match_table(&t, &wanted(None)).unwrap_err().contains("type"));
        let mut t = table(Slot::A);
        t.get_mut(&3).unwrap().name = "verity-b".into();
        assert!(match_table(&t, &wanted(None)).is_err());
        let mut t = table(Slot::A);
        t.get_mut(&2).unwrap().name = "data".into();
        assert!(match_table(&t, &wanted(None)).is_err());
    }

    /// Writes a disk image with sgdisk (an independent GPT writer) and reads it back.
    #[test]
    fn reads_a_gpt_written_by_sgdisk() {
        if Command::new("sgdisk").arg("--version").output().is_err() {
            eprintln!("sgdisk (gdisk) is not installed; skipping");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.img");
        File::create(&img).unwrap().set_len(16 << 20).unwrap();
        let w = wanted(Some(ESP));
        let spec = [
            (1, Role::Esp, ESP),
            (2, Role::Root(Slot::A), Uuid::from_u128(2)),
            (3, Role::Verity(Slot::A), Uuid::from_u128(3)),
            (4, Role::Root(Slot::B), w.root),
            (5, Role::Verity(Slot::B), w.verity),
        ];
        let mut cmd = Command::new("sgdisk");
        cmd.arg("-o");
        for (n, role, guid) in spec {
            cmd.arg(format!("-n{n}:0:+2M"))
                .arg(format!("-t{n}:{}", role.type_guid()))
                .arg(format!("-u{n}:{guid}"))
                .arg(format!("-c{n}:{}", role.label()));
        }
        let out = cmd.arg(&img).output().unwrap();
        assert!(out.status.success(), "{out:?}");

        let table = read_table(&img, LogicalBlockSize::Lb512).unwrap();
        assert_eq!(table.len(), 5);
        assert_eq!(
            match_table(&table, &w).unwrap(),
            Some(SlotEntries {
                slot: Slot::B,
                root: 4,
                verity: 5
            })
        );
        // Flashed onto a larger disk, the backup header is no longer at the end; the
        // primary one still describes the slot.
        File::options()
            .write(true)
            .open(&img)
            .unwrap()
            .set_len(32 << 20)
            .unwrap();
        let table = read_table(&img, LogicalBlockSize::Lb512).unwrap();
        assert!(match_table(&table, &w).unwrap().is_some());
        // Without a GPT there is nothing to read.
        let blank = dir.path().join("blank.img");
        File::create(&blank).unwrap().set_len(1 << 20).unwrap();
        assert!(read_table(&blank, LogicalBlockSize::Lb512).is_err());
    }

    fn params() -> VerityParams {
        VerityParams {
            root_hash: root_hash(),
            salt: Digest::of(b"salt"),
            data_blocks: 1000,
            hash_size: 3 * 4096,
            uuid: [5; 16],
        }
    }

    #[test]
    fn the_superblock_must_be_this_image_s() {
        let p = params();
        assert_eq!(compare_superblock(&p.superblock(), &p), Ok(()));
        let other = VerityParams {
            salt: Digest::of(b"pepper"),
            ..p
        };
        assert!(
            compare_superblock(&other.superblock(), &p)
                .unwrap_err()
                .contains("salt")
        );
        let other = VerityParams {
            data_blocks: 999,
            ..p
        };
        assert!(
            compare_superblock(&other.superblock(), &p)
                .unwrap_err()
                .contains("data blocks")
        );
        assert!(compare_superblock(&[0; 512], &p).is_err());
    }

    #[test]
    fn a_short_partition_is_refused() {
        let found = BootDisk {
            disk: "vda".into(),
            slot: Slot::A,
            root: BlockDev {
                name: "vda2".into(),
                dev: DevNum {
                    major: 254,
                    minor: 2,
                },
                sectors: 8,
            },
            verity: BlockDev {
                name: "vda3".into(),
                dev: DevNum {
                    major: 254,
                    minor: 3,
                },
                sectors: 1 << 20,
            },
        };
        let err = check_slot(&found, &params()).unwrap_err();
        assert_eq!(err.check, "disk");
        assert!(err.message.contains("vda2 holds 4096 bytes"), "{err}");
    }
}
