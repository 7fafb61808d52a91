//! The disk image: layout v1's GPT and the partitions' contents, in a sparse file.
//!
//! [`plan`] places the six partitions of [`crust_format::layout`] on 1 MiB boundaries and
//! gives every GUID a deterministic value: the root and verity partitions of slot A carry
//! the halves of the root hash (so the signed manifest alone identifies them), everything
//! else is derived from the build's seed. [`write()`] creates the sparse file, the protective
//! MBR and both GPT headers (with the `gpt` crate), then lets the caller fill partitions
//! through bounded [`Window`]s; regions nobody writes stay holes.

use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;

use anyhow::{Context, Result, bail};
use crust_format::Digest;
use crust_format::layout::{self, ALIGNMENT, Role, SECTOR_SIZE, Slot};
use uuid::Uuid;

/// One partition's place on the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// What it is for.
    pub role: Role,
    /// Byte offset of its first sector.
    pub offset: u64,
    /// Size in bytes.
    pub size: u64,
    /// Its unique partition GUID.
    pub uuid: Uuid,
}

/// Where everything goes on the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The disk GUID.
    pub disk_guid: Uuid,
    /// Total image size in bytes.
    pub size: u64,
    /// The partitions in table order.
    pub partitions: Vec<Partition>,
}

impl Layout {
    /// The partition with `role`.
    pub fn get(&self, role: Role) -> &Partition {
        // `plan` always creates all six roles.
        self.partitions
            .iter()
            .find(|p| p.role == role)
            .unwrap_or(&self.partitions[0])
    }
}

/// Partition sizes in bytes (whole MiB).
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    /// ESP.
    pub esp: u64,
    /// Each root partition.
    pub root: u64,
    /// Each verity partition.
    pub verity: u64,
    /// The state partition as shipped (it grows on first boot).
    pub state: u64,
}

/// A GUID derived from the build seed and a purpose, with RFC 4122 version-4 bits.
pub fn derived_uuid(seed: &Digest, purpose: &str) -> Uuid {
    let d = Digest::of_parts([
        b"crust uuid v1".as_slice(),
        seed.as_bytes(),
        purpose.as_bytes(),
    ]);
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&d.0[..16]);
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

/// Places the partitions of layout v1.
pub fn plan(sizes: Sizes, root_hash: &Digest, seed: &Digest) -> Layout {
    let mut offset = ALIGNMENT; // room for the protective MBR and the primary GPT
    let mut partitions = Vec::new();
    for role in Role::ALL {
        let size = match role {
            Role::Esp => sizes.esp,
            Role::Root(_) => sizes.root,
            Role::Verity(_) => sizes.verity,
            Role::State => sizes.state,
        };
        let uuid = match role {
            Role::Root(Slot::A) => layout::root_partition_uuid(root_hash),
            Role::Verity(Slot::A) => layout::verity_partition_uuid(root_hash),
            other => derived_uuid(seed, other.label()),
        };
        partitions.push(Partition {
            role,
            offset,
            size,
            uuid,
        });
        offset += size;
    }
    Layout {
        disk_guid: derived_uuid(seed, "disk"),
        size: offset + ALIGNMENT, // room for the backup GPT, keeping the size MiB-aligned
        partitions,
    }
}

/// A bounded, offset view of one partition of the image, for writers that want
/// `Write + Seek` (the FAT writer). Writing past its end is an error.
#[derive(Debug)]
pub struct Window<'a> {
    file: &'a File,
    start: u64,
    len: u64,
    pos: u64,
}

impl Write for Window<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.pos + buf.len() as u64 > self.len {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "write beyond the partition end",
            ));
        }
        self.file.write_all_at(buf, self.start + self.pos)?;
        self.pos += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for Window<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
        };
        self.pos = pos.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the partition start",
            )
        })?;
        Ok(self.pos)
    }
}

/// Writes the image into `file` (new and empty): sizes it, writes the partition table, then
/// calls `fill` once per partition with a window onto it.
pub fn write(
    file: &mut File,
    layout: &Layout,
    mut fill: impl FnMut(&Partition, &mut Window<'_>) -> Result<()>,
) -> Result<()> {
    // The GPT code sizes its headers from the device length: set it first.
    file.set_len(layout.size)?;
    let sectors = layout.size / SECTOR_SIZE;
    gpt::mbr::ProtectiveMBR::with_lb_size(u32::try_from(sectors - 1).unwrap_or(u32::MAX))
        .overwrite_lba0(file)
        .context("cannot write the protective MBR")?;
    let mut disk = gpt::GptConfig::new()
        .writable(true)
        .change_partition_count(true)
        .logical_block_size(gpt::disk::LogicalBlockSize::Lb512)
        .create_from_device(file, Some(layout.disk_guid))
        .context("cannot create the GPT")?;
    let mut table = std::collections::BTreeMap::new();
    for p in &layout.partitions {
        table.insert(
            p.role.number(),
            gpt::partition::Partition {
                part_type_guid: gpt::partition_types::Type::from(p.role.type_guid()),
                part_guid: p.uuid,
                first_lba: p.offset / SECTOR_SIZE,
                last_lba: (p.offset + p.size) / SECTOR_SIZE - 1,
                flags: p.role.attributes(),
                name: p.role.label().to_owned(),
            },
        );
    }
    disk.update_partitions(table)
        .context("cannot lay out the GPT")?;
    let file = disk.write().context("cannot write the GPT")?;
    for p in &layout.partitions {
        let mut window = Window {
            file,
            start: p.offset,
            len: p.size,
            pos: 0,
        };
        fill(p, &mut window)
            .with_context(|| format!("cannot write partition {}", p.role.label()))?;
    }
    file.sync_all()?;
    Ok(())
}

/// Checks that `len` bytes of content fit partition `role` of `size` bytes, naming the
/// profile field to raise otherwise.
pub fn check_fits(role: Role, len: u64, size: u64, field: &str) -> Result<()> {
    if len > size {
        bail!(
            "the {} content is {} but partition {} is {}: raise {field} in the profile",
            match role {
                Role::Esp => "ESP",
                Role::Root(_) => "root file system",
                Role::Verity(_) => "verity hash tree",
                Role::State => "state",
            },
            crate::profile::show_size(len),
            role.label(),
            crate::profile::show_size(size)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    const MIB: u64 = 1 << 20;

    fn rw(path: &std::path::Path) -> File {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .unwrap()
    }

    fn sample_layout() -> Layout {
        let sizes = Sizes {
            esp: 64 * MIB,
            root: 32 * MIB,
            verity: 2 * MIB,
            state: 16 * MIB,
        };
        plan(sizes, &Digest::of(b"root"), &Digest::of(b"seed"))
    }

    #[test]
    fn sgdisk_finds_a_clean_table_with_layout_v1() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.raw");
        let layout = sample_layout();
        write(&mut rw(&path), &layout, |p, w| {
            if p.role == Role::Root(Slot::A) {
                w.write_all(b"hello")?;
            }
            Ok(())
        })
        .unwrap();
        let out = Command::new("sgdisk")
            .arg("-v")
            .arg(&path)
            .output()
            .expect("sgdisk is missing: install gdisk");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("No problems found"),
            "{text}"
        );
        let out = Command::new("sfdisk")
            .arg("-J")
            .arg(&path)
            .output()
            .expect("sfdisk (fdisk) is missing");
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let table = &json["partitiontable"];
        assert_eq!(
            table["id"].as_str().unwrap().to_lowercase(),
            layout.disk_guid.to_string()
        );
        let found = table["partitions"].as_array().unwrap();
        assert_eq!(found.len(), 6);
        for (p, f) in layout.partitions.iter().zip(found) {
            assert_eq!(f["name"], p.role.label());
            assert_eq!(
                f["type"].as_str().unwrap().to_lowercase(),
                p.role.type_guid().to_string()
            );
            assert_eq!(
                f["uuid"].as_str().unwrap().to_lowercase(),
                p.uuid.to_string()
            );
            assert_eq!(f["start"].as_u64().unwrap() * 512, p.offset);
            assert_eq!(f["size"].as_u64().unwrap() * 512, p.size);
            assert_eq!(p.offset % MIB, 0);
        }
        assert_eq!(found[1]["attrs"], "GUID:60");
        let root = layout.get(Role::Root(Slot::A));
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(
            &bytes[root.offset as usize..root.offset as usize + 5],
            b"hello"
        );
        // Sparse: far less is allocated than the image's length.
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(&path).unwrap();
        assert!(
            meta.blocks() * 512 < 4 * MIB,
            "{} bytes allocated",
            meta.blocks() * 512
        );
    }

    #[test]
    fn root_and_verity_uuids_are_the_root_hash_halves() {
        let layout = sample_layout();
        let hash = Digest::of(b"root");
        assert_eq!(
            layout.get(Role::Root(Slot::A)).uuid,
            layout::root_partition_uuid(&hash)
        );
        assert_eq!(
            layout.get(Role::Verity(Slot::A)).uuid,
            layout::verity_partition_uuid(&hash)
        );
        assert_eq!(sample_layout(), layout, "deterministic");
    }

    #[test]
    fn windows_refuse_writes_past_the_partition() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.raw");
        let err = write(&mut rw(&path), &sample_layout(), |p, w| {
            if p.role == Role::Verity(Slot::B) {
                w.seek(SeekFrom::Start(2 * MIB - 2))?;
                w.write_all(b"abc")?;
            }
            Ok(())
        })
        .unwrap_err();
        assert!(format!("{err:#}").contains("verity-b"), "{err:#}");
    }
}
