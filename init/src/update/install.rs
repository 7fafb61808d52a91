//! Writing a verified bundle into the other slot, in the order that keeps every moment of
//! the update safe to lose power in:
//!
//! 1. remove the UKI of the version the other slot held (from then on nothing boots that
//!    slot, so its partitions may hold anything);
//! 2. write the root and verity partitions, checking every byte against the signed digests,
//!    and sync;
//! 3. give the partitions the UUIDs derived from the new root hash (the new UKI finds them
//!    by these);
//! 4. write the new UKI with boot counters (`+3`) last, under a temporary name renamed into
//!    place.
//!
//! Until step 4 completes the old slot is the only bootable one; after it, systemd-boot
//! tries the new version three times before falling back. The running slot is never
//! written: the target is always the other slot, checked against the devices under `/`.
//!
//! Step 1 takes away the fallback, so everything that could refuse the bundle is known
//! before it: [`fits`] measures every part against its partition and the ESP's room, and
//! the check runs it before [`install`].
//!
//! Only the `root`, `verity` and `uki` parts are written. A format 2 bundle's `sbom` part
//! (the release's SBOM) has its digest checked with every other part before anything is
//! written (`check` checks each part the signed header lists) and is then left in the
//! download: the new root carries the same content at `/usr/share/crust/sbom.spdx.json`.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crust_format::Digest;
use crust_format::boot_entry::{BootEntryName, DEFAULT_TRIES};
use crust_format::bundle::{Header, PartKind};
use crust_format::layout::{self, Role, Slot};
use gpt::disk::LogicalBlockSize;
use sha2::Digest as _;

use super::bundle::Verified;
use super::check::Cancel;
use super::esp::Esp;
use crate::disk;
use crate::error::{Context, Error, Result};

/// A partition of the boot disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionRef {
    /// GPT entry number.
    pub number: u32,
    /// Device node.
    pub node: PathBuf,
    /// Size in bytes.
    pub size: u64,
}

/// The partitions an install touches.
#[derive(Debug, Clone)]
pub struct Target {
    /// The boot disk's node.
    pub disk: PathBuf,
    /// The slot written.
    pub slot: Slot,
    /// Its root partition.
    pub root: PartitionRef,
    /// Its verity partition.
    pub verity: PartitionRef,
    /// The ESP.
    pub esp: PartitionRef,
}

/// Finds the partitions of `slot` and the ESP on `disk` (a kernel name such as `vda`).
pub fn find(disk: &str, slot: Slot) -> Result<Target> {
    let disk_node = Path::new("/dev").join(disk);
    let table = disk::read_table(&disk_node, LogicalBlockSize::Lb512).context("update", || {
        format!("cannot read the GPT of {}", disk_node.display())
    })?;
    let kernel = disk::partitions(disk);
    let find = |role: Role| -> Result<PartitionRef> {
        let (&number, part) = table
            .iter()
            .find(|(_, p)| p.part_type_guid.guid == role.type_guid() && p.name == role.label())
            .ok_or_else(|| {
                Error::new(
                    "update",
                    format!("{disk} has no {} partition", role.label()),
                )
            })?;
        let dev = kernel.get(&number).ok_or_else(|| {
            Error::new(
                "update",
                format!("the kernel shows no partition {number} on {disk}"),
            )
        })?;
        Ok(PartitionRef {
            number,
            node: dev.node(),
            size: (part.last_lba - part.first_lba + 1) * 512,
        })
    };
    Ok(Target {
        disk: disk_node.clone(),
        slot,
        root: find(Role::Root(slot))?,
        verity: find(Role::Verity(slot))?,
        esp: find(Role::Esp)?,
    })
}

/// Reads `len` bytes of `file` from `offset`, zstd-decoding them.
fn part_reader(file: &File, offset: u64, len: u64) -> Result<impl Read + '_> {
    let mut f = file;
    f.seek(SeekFrom::Start(offset))
        .context("update", || "cannot seek in the bundle".into())?;
    ruzstd::decoding::StreamingDecoder::new(f.take(len))
        .map_err(|e| Error::new("update", format!("the bundle part is not zstd: {e}")))
}

/// Hashes what passes through.
struct Hashing<R> {
    inner: R,
    hasher: sha2::Sha256,
    bytes: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

impl<R> Hashing<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: sha2::Sha256::new(),
            bytes: 0,
        }
    }

    fn digest(&self) -> (u64, Digest) {
        (self.bytes, Digest(self.hasher.clone().finalize().into()))
    }
}

/// Whether the bundle's parts fit the target: root and verity their partitions, the UKI
/// the ESP's free space plus what the install removes from it (every UKI `keep` does not
/// keep). `Ok(Err(why))` is a refusal of the bundle; `Err` a failure to look.
pub fn fits(
    header: &Header,
    target: &Target,
    keep: &dyn Fn(&BootEntryName) -> bool,
) -> Result<std::result::Result<(), String>> {
    for (kind, dest) in [
        (PartKind::Root, &target.root),
        (PartKind::Verity, &target.verity),
    ] {
        let Some(part) = header.part(kind) else {
            return Ok(Err(format!("it has no {} part", kind.as_str())));
        };
        if part.raw_size > dest.size {
            return Ok(Err(format!(
                "its {} part is {} bytes but partition {} ({}) holds {}; this update needs a \
                 disk layout with larger partitions",
                kind.as_str(),
                part.raw_size,
                dest.number,
                dest.node.display(),
                dest.size
            )));
        }
    }
    let Some(uki) = header.part(PartKind::Uki) else {
        return Ok(Err("it has no UKI".into()));
    };
    let esp = Esp::mount(&target.esp.node)?;
    let room = esp.room(keep)?;
    if uki.raw_size > room {
        return Ok(Err(format!(
            "its UKI is {} bytes but the ESP has room for {room} (after removing the other \
             slot's)",
            uki.raw_size
        )));
    }
    Ok(Ok(()))
}

/// Decodes part `kind` of the bundle into `dest`, checking size and digest.
fn write_part(
    bundle: &File,
    header: &Header,
    header_len: u64,
    kind: PartKind,
    dest: &PartitionRef,
) -> Result<u64> {
    let part = header.part(kind).ok_or_else(|| {
        Error::new(
            "update",
            format!("the bundle has no {} part", kind.as_str()),
        )
    })?;
    if part.raw_size > dest.size {
        return Err(Error::new(
            "update",
            format!(
                "the {} part is {} bytes but {} holds {}",
                kind.as_str(),
                part.raw_size,
                dest.node.display(),
                dest.size
            ),
        ));
    }
    let reader = part_reader(bundle, header.part_offset(header_len, kind), part.size)?;
    let mut reader = Hashing::new(reader.take(part.raw_size + 1));
    let mut out = OpenOptions::new()
        .write(true)
        .open(&dest.node)
        .context("update", || format!("cannot open {}", dest.node.display()))?;
    io::copy(&mut reader, &mut out)
        .context("update", || format!("cannot write {}", dest.node.display()))?;
    out.sync_all()
        .context("update", || format!("cannot sync {}", dest.node.display()))?;
    let (bytes, digest) = reader.digest();
    if bytes != part.raw_size || digest != part.raw_sha256 {
        return Err(Error::new(
            "update",
            format!(
                "the {} part decoded to other bytes than its signed digest",
                kind.as_str()
            ),
        ));
    }
    Ok(bytes)
}

/// Sets the unique GUIDs of the target's root and verity partitions from `root_hash`.
fn set_uuids(target: &Target, root_hash: &Digest) -> Result<()> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&target.disk)
        .context("update", || {
            format!("cannot open {}", target.disk.display())
        })?;
    let mut gpt = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(LogicalBlockSize::Lb512)
        .open_from_device(&mut file)
        .context("update", || {
            format!("cannot read the GPT of {}", target.disk.display())
        })?;
    let mut table = gpt.partitions().clone();
    for (number, uuid) in [
        (target.root.number, layout::root_partition_uuid(root_hash)),
        (
            target.verity.number,
            layout::verity_partition_uuid(root_hash),
        ),
    ] {
        let part = table
            .get_mut(&number)
            .ok_or_else(|| Error::new("update", format!("partition {number} vanished")))?;
        part.part_guid = uuid;
    }
    gpt.update_partitions(table)
        .context("update", || "cannot update the GPT".into())?;
    gpt.write().context("update", || {
        format!("cannot write the GPT of {}", target.disk.display())
    })?;
    file.sync_all()
        .context("update", || "cannot sync the GPT".into())
}

/// What an install did.
#[derive(Debug, Clone)]
pub struct Installed {
    /// The new UKI's name (with boot counters).
    pub entry: BootEntryName,
    /// UKIs removed from the ESP.
    pub removed: Vec<String>,
    /// Bytes written to the slot's partitions and the ESP.
    pub written: u64,
}

/// Installs the verified bundle at `path` into `target`. `keep` is the UKI of the running
/// version (never removed); `running_devices` are the nodes under `/`, never written. The
/// caller has checked that it [`fits`].
pub fn install(
    path: &Path,
    verified: &Verified,
    target: &Target,
    keep: &dyn Fn(&BootEntryName) -> bool,
    running_devices: &[PathBuf],
    cancel: &Cancel,
) -> Result<Installed> {
    let (header, header_len) = (&verified.header, verified.header_len);
    for part in [&target.root, &target.verity] {
        if running_devices.contains(&part.node) {
            return Err(Error::new(
                "update",
                format!(
                    "{} is in use by the running system; refusing to write it",
                    part.node.display()
                ),
            ));
        }
    }
    let bundle =
        File::open(path).context("update", || format!("cannot open {}", path.display()))?;
    let esp = Esp::mount(&target.esp.node)?;
    let mut removed = Vec::new();
    for entry in esp.entries() {
        if !keep(&entry) {
            esp.remove(&entry)?;
            removed.push(entry.file_name());
        }
    }
    cancel.check()?;
    let mut written = write_part(&bundle, header, header_len, PartKind::Root, &target.root)?;
    cancel.check()?;
    written += write_part(
        &bundle,
        header,
        header_len,
        PartKind::Verity,
        &target.verity,
    )?;
    set_uuids(target, &header.root_hash)?;
    // The last point to stop: once the UKI is in place the slot is bootable.
    cancel.check()?;
    let entry = BootEntryName::new(&header.name, &header.version, Some(DEFAULT_TRIES));
    let uki = header
        .part(PartKind::Uki)
        .ok_or_else(|| Error::new("update", "the bundle has no UKI"))?;
    let reader = part_reader(
        &bundle,
        header.part_offset(header_len, PartKind::Uki),
        uki.size,
    )?;
    let mut reader = Hashing::new(reader.take(uki.raw_size + 1));
    written += esp.install(&entry, &mut reader, |r| {
        let (bytes, digest) = r.digest();
        if bytes != uki.raw_size || digest != uki.raw_sha256 {
            return Err(Error::new(
                "update",
                "the UKI part decoded to other bytes than its signed digest",
            ));
        }
        Ok(())
    })?;
    Ok(Installed {
        entry,
        removed,
        written,
    })
}
