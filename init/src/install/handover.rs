//! Handing the medium's signed user-data to the installed host: once the image is on the
//! disk, the medium's `user-data`, its `SHA256SUMS` and `SHA256SUMS.sig` are copied
//! byte for byte into [`ESP_DIR`] on the new ESP, where the host's `install` source reads
//! them on every boot ([`crate::config::installer`]) and accepts the user-data only under
//! that list's signature by the image's key.
//!
//! The kernel read the disk's partition table when it was empty, so it is told to read
//! it again (`BLKRRPART`) before the ESP can be mounted (vfat, like the update agent does).

use std::fs::{self, File};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crust_format::install::{ESP_DIR, USER_DATA};
use crust_format::sums::{SUMS, SUMS_SIG};
use nix::mount::{MntFlags, MsFlags, mount, umount2};

use super::disks::Disk;
use super::medium::Release;
use super::write::Esp;
use crate::devnode::{self, Kind};
use crate::error::{Context, Error, Result};

/// Where the new ESP is mounted while the files are written.
const MOUNT_POINT: &str = "/run/crust/install-esp";
/// How long the kernel may take to show the partitions after `BLKRRPART`.
const PARTITIONS_TIMEOUT: Duration = Duration::from_secs(10);

// BLKRRPART: `_IO(0x12, 95)`, re-read the partition table.
nix::ioctl_none!(blkrrpart, 0x12, 95);

/// Copies the release's user-data and its signed list onto `target`'s ESP; returns the
/// ESP's node, or `None` when the release has no user-data (nothing is written then).
pub fn copy(target: &Disk, esp: &Esp, release: &Release) -> Result<Option<PathBuf>> {
    let Some(user_data) = &release.user_data else {
        return Ok(None);
    };
    let node = esp_node(target, esp)?;
    let failed = |what: String| {
        Error::new(
            "install-user-data",
            format!(
                "{what}; {} holds the image but not the medium's user-data",
                target.node().display()
            ),
        )
    };
    fs::create_dir_all(MOUNT_POINT)
        .map_err(|e| failed(format!("cannot create {MOUNT_POINT}: {e}")))?;
    mount(
        Some(&node),
        MOUNT_POINT,
        Some("vfat"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("flush,umask=0077"),
    )
    .map_err(|e| {
        failed(format!(
            "cannot mount the new ESP {} (vfat): {}",
            node.display(),
            e.desc()
        ))
    })?;
    let dir = Path::new(MOUNT_POINT).join(ESP_DIR);
    let written = (|| -> std::io::Result<()> {
        fs::create_dir_all(&dir)?;
        for (name, bytes) in [
            (USER_DATA, user_data.as_bytes()),
            (SUMS, &release.list[..]),
            (SUMS_SIG, &release.signature[..]),
        ] {
            let mut file = File::create(dir.join(name))?;
            file.write_all(bytes)?;
            file.sync_all()?;
        }
        File::open(&dir)?.sync_all()
    })();
    let unmounted = umount2(MOUNT_POINT, MntFlags::empty());
    written.map_err(|e| failed(format!("cannot write {}:/{ESP_DIR}: {e}", node.display())))?;
    unmounted.map_err(|e| {
        failed(format!(
            "cannot unmount the new ESP {}: {}",
            node.display(),
            e.desc()
        ))
    })?;
    Ok(Some(node))
}

/// Has the kernel read `target`'s new partition table and returns the ESP's node.
fn esp_node(target: &Disk, esp: &Esp) -> Result<PathBuf> {
    let disk = target.node();
    let file = File::open(&disk).context("install-user-data", || {
        format!("cannot open {}", disk.display())
    })?;
    // SAFETY: BLKRRPART takes no argument; the descriptor is open for the whole call.
    unsafe { blkrrpart(file.as_raw_fd()) }.map_err(|e| {
        Error::new(
            "install-user-data",
            format!(
                "the kernel cannot read the new partition table of {}: {}",
                disk.display(),
                e.desc()
            ),
        )
    })?;
    drop(file);
    let deadline = Instant::now() + PARTITIONS_TIMEOUT;
    loop {
        if let Some(part) = crate::disk::partitions(&target.name).remove(&esp.number) {
            devnode::ensure(&part.node(), Kind::Block, part.dev, Duration::from_secs(1))
                .context("install-user-data", || {
                    format!("cannot create {}", part.node().display())
                })?;
            return Ok(part.node());
        }
        if Instant::now() >= deadline {
            return Err(Error::new(
                "install-user-data",
                format!(
                    "the kernel shows no partition {} on {} {} s after reading its table",
                    esp.number,
                    disk.display(),
                    PARTITIONS_TIMEOUT.as_secs()
                ),
            ));
        }
        std::thread::sleep(crate::disk::POLL_INTERVAL);
    }
}
