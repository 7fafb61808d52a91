//! Flashing a signed Crust image onto a disk, safely.
//!
//! [`prepare`] does every check and writes nothing: the release signature over
//! `SHA256SUMS` in the image's folder, the image's digest in it (one read of the whole
//! image), and the target ([`target`]): a whole block device (or, when allowed, an image
//! file standing in for one) that nothing has mounted, holds, swaps on or runs from, as
//! large as the image, opened exclusively so nobody mounts it meanwhile. The returned
//! [`Plan`] tells the person what is about to happen; [`Plan::write`] then writes only the
//! image's data regions in large aligned writes ([`copy`]), syncs, reads back what it wrote
//! and compares, and moves the GPT's backup copy to the end of a larger disk, so the first
//! boot finds a valid table and grows the state partition to the disk's end.

pub mod copy;
pub mod target;
pub mod verify;

use std::path::{Path, PathBuf};
use std::time::Duration;

use crust_builder::backup_gpt::{BackupGptError, Moved};
use crust_builder::profile::show_size;
use crust_builder::release::ReleaseError;
use crust_format::signature::PublicKey;

pub use target::Target;
pub use verify::VerifiedImage;

/// Why a flash was refused or failed. Every refusal comes before the first write.
#[derive(Debug, thiserror::Error)]
pub enum FlashError {
    /// The release does not check out (unsigned, bad signature, image changed or unlisted).
    #[error(transparent)]
    Release(#[from] ReleaseError),
    /// The image is not a raw disk image.
    #[error("{}: {reason}", path.display())]
    BadImage {
        /// The image.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The target cannot be opened or examined.
    #[error("cannot open {}: {source}", path.display())]
    Open {
        /// The target.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The target is neither a block device nor an allowed image file.
    #[error("{} is {what}, not a block device{hint}", path.display())]
    NotBlockDevice {
        /// The target.
        path: PathBuf,
        /// What it is instead.
        what: &'static str,
        /// What to do.
        hint: &'static str,
    },
    /// The target is a partition, not a whole disk.
    #[error("{} is a partition of {disk}; flash the whole disk ({disk})", path.display())]
    Partition {
        /// The target.
        path: PathBuf,
        /// The disk it belongs to.
        disk: String,
    },
    /// The target is the image itself.
    #[error("{} is the image itself", path.display())]
    SameAsImage {
        /// The target.
        path: PathBuf,
    },
    /// The target is read-only.
    #[error("{} is read-only", path.display())]
    ReadOnly {
        /// The target.
        path: PathBuf,
    },
    /// The target (or a partition of it) holds the running system's root file system.
    #[error("{} holds the running system (/ is mounted from {source_device}); refusing to overwrite it", path.display())]
    RunningSystem {
        /// The target.
        path: PathBuf,
        /// The device `/` is mounted from.
        source_device: String,
    },
    /// The target (or a partition of it) is mounted.
    #[error("{} is mounted: {source_device} on {mountpoint}; unmount it first", path.display())]
    Mounted {
        /// The target.
        path: PathBuf,
        /// The mounted device.
        source_device: String,
        /// Where.
        mountpoint: String,
    },
    /// The target is used for swap.
    #[error("{} is in use as swap ({swap}); `swapoff {swap}` first", path.display())]
    Swap {
        /// The target.
        path: PathBuf,
        /// The swap device or file.
        swap: String,
    },
    /// Other devices are built on the target (device mapper, RAID, a loop device).
    #[error("{} is in use by {}; stop those first", path.display(), holders.join(", "))]
    Held {
        /// The target.
        path: PathBuf,
        /// The devices using it.
        holders: Vec<String>,
    },
    /// Another program has the device open exclusively.
    #[error("{} is busy: another program has it open exclusively (a mount, a RAID, a partitioner)", path.display())]
    Busy {
        /// The target.
        path: PathBuf,
    },
    /// The target is smaller than the image.
    #[error("{} holds {} but the image needs {}", path.display(), show_size(*size), show_size(*needed))]
    TooSmall {
        /// The target.
        path: PathBuf,
        /// Its size in bytes.
        size: u64,
        /// The image's size in bytes.
        needed: u64,
    },
    /// Reading or writing failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which file or device.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The image's data changed between verification and writing.
    #[error("{} changed while it was written; the device holds unverified data, flash it again", path.display())]
    ImageChanged {
        /// The image.
        path: PathBuf,
    },
    /// What the device returns differs from what was written.
    #[error("{} returned different data than was written to it: the device is faulty, or something else wrote to it", path.display())]
    ReadBackMismatch {
        /// The target.
        path: PathBuf,
    },
    /// The GPT on the target could not be completed.
    #[error("cannot move the backup GPT to the end of {}: {source}", path.display())]
    Gpt {
        /// The target.
        path: PathBuf,
        /// Why.
        source: BackupGptError,
    },
}

/// What to flash where.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The raw image, in a folder holding its signed release (`SHA256SUMS`, `.sig`).
    pub image: &'a Path,
    /// The whole disk to overwrite (or an image file with `allow_file`).
    pub device: &'a Path,
    /// The key the release must be signed with.
    pub key: &'a PublicKey,
    /// Accept a regular file as the target (an image file standing in for a disk).
    pub allow_file: bool,
}

/// A checked flash, ready to write: nothing has been written yet.
#[derive(Debug)]
pub struct Plan {
    image: VerifiedImage,
    target: Target,
}

/// What a flash did.
#[derive(Debug, Clone)]
pub struct Flashed {
    /// Bytes written (the image's data regions).
    pub written: u64,
    /// Time spent writing, the final sync included.
    pub write_time: Duration,
    /// Time spent reading back and comparing.
    pub verify_time: Duration,
    /// Where the backup GPT was moved (`None` when the disk is the image's size).
    pub backup_gpt: Option<Moved>,
    /// Whether the kernel re-read the partition table (block devices only).
    pub partitions_reread: bool,
}

/// Checks everything and opens the target exclusively; writes nothing.
pub fn prepare(req: &Request<'_>) -> Result<Plan, FlashError> {
    let signed = verify::signed_entry(req.image, req.key)?;
    let target = target::open(req.device, req.allow_file, req.image)?;
    if target.size < signed.len {
        return Err(FlashError::TooSmall {
            path: target.path.clone(),
            size: target.size,
            needed: signed.len,
        });
    }
    let image = verify::verify(signed)?;
    Ok(Plan { image, target })
}

impl Plan {
    /// The verified image.
    pub fn image(&self) -> &VerifiedImage {
        &self.image
    }

    /// The target.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// What is about to happen, for the confirmation question.
    pub fn summary(&self) -> String {
        format!(
            "{} ({}, {} of data, SHA-256 {}) onto {}: {} ({}); everything on it will be lost",
            self.image.path.display(),
            show_size(self.image.len),
            show_size(self.image.data_len()),
            self.image.digest.short(16),
            self.target.path.display(),
            self.target.description,
            show_size(self.target.size),
        )
    }

    /// Writes the image's data regions, syncs, reads them back and compares, then moves
    /// the backup GPT to the end of the target.
    pub fn write(self) -> Result<Flashed, FlashError> {
        let Plan { image, mut target } = self;
        let written = copy::write(&image, &mut target)?;
        let verify_time = copy::read_back(&image, &target)?;
        let backup_gpt = target.finish_gpt()?;
        let partitions_reread = target.reread_partitions();
        Ok(Flashed {
            written: image.data_len(),
            write_time: written,
            verify_time,
            backup_gpt,
            partitions_reread,
        })
    }
}
