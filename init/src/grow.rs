//! Growing the state partition when the disk is larger than the image (a cloud volume of
//! 20 GiB, a flashed 1 TB disk): the GPT rewritten with the partition's new end and its
//! backup copy moved to the disk's last sectors, the kernel told the partition's new size,
//! and the ext4 on it grown online.
//!
//! The state partition is the last one, so growing is only moving its end; nothing else on
//! the disk moves. Every step is idempotent: a boot interrupted half-way finishes the job
//! on the next boot.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::Path;

use gpt::disk::LogicalBlockSize;

use crate::error::{Context, Error, Result};

const SECTOR: u64 = 512;
/// Partitions end on 1 MiB boundaries (layout v1).
const ALIGNMENT_SECTORS: u64 = (1 << 20) / SECTOR;
/// A GPT at the disk end: 32 sectors of entries (128 × 128 bytes) and the header.
const BACKUP_GPT_SECTORS: u64 = 33;

/// A partition's size before and after growing, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Growth {
    /// Size before.
    pub old_bytes: u64,
    /// Size after.
    pub new_bytes: u64,
}

/// The last sector a partition may end on for a disk of `total_sectors`: before the backup
/// GPT, rounded down to the alignment.
pub fn aligned_end(total_sectors: u64) -> u64 {
    let last_usable = total_sectors.saturating_sub(BACKUP_GPT_SECTORS + 1);
    ((last_usable + 1) / ALIGNMENT_SECTORS) * ALIGNMENT_SECTORS - 1
}

/// Grows partition `number` of the disk at `disk_node` to the end of the disk, moving the
/// backup GPT to the last sectors. Returns the growth, or `None` if there was nothing to do.
pub fn grow_partition(disk_node: &Path, number: u32) -> Result<Option<Growth>> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(disk_node)
        .context("state", || format!("cannot open {}", disk_node.display()))?;
    let total_sectors = file
        .seek(SeekFrom::End(0))
        .context("state", || format!("cannot size {}", disk_node.display()))?
        / SECTOR;
    file.rewind().context("state", || "cannot seek".into())?;
    let mut disk = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(LogicalBlockSize::Lb512)
        .open_from_device(&mut file)
        .context("state", || {
            format!("cannot read the GPT of {}", disk_node.display())
        })?;
    let old_backup = disk
        .primary_header()
        .map(|h| h.backup_lba)
        .context("state", || "no primary GPT header".into())?;
    let mut table = disk.partitions().clone();
    let part = table
        .get_mut(&number)
        .ok_or_else(|| Error::new("state", format!("partition {number} is not in the GPT")))?;
    let new_last = aligned_end(total_sectors);
    let old_bytes = (part.last_lba - part.first_lba + 1) * SECTOR;
    if new_last <= part.last_lba && old_backup == total_sectors - 1 {
        return Ok(None);
    }
    part.last_lba = part.last_lba.max(new_last);
    let (first_lba, last_lba) = (part.first_lba, part.last_lba);
    // The headers are rebuilt from the device size: the backup goes to the last sector.
    disk.update_partitions(table)
        .context("state", || "cannot update the GPT".into())?;
    disk.write().context("state", || {
        format!("cannot write the GPT of {}", disk_node.display())
    })?;
    // The protective MBR records the disk size too.
    gpt::mbr::ProtectiveMBR::with_lb_size(u32::try_from(total_sectors - 1).unwrap_or(u32::MAX))
        .overwrite_lba0(&mut file)
        .context("state", || "cannot write the protective MBR".into())?;
    if old_backup < total_sectors - 1 {
        // A stale backup header in the middle of the grown partition would confuse tools
        // that look for one; the partition's own data there is still free space.
        file.seek(SeekFrom::Start(old_backup * SECTOR))
            .and_then(|_| file.write_all(&[0u8; SECTOR as usize]))
            .context("state", || "cannot clear the old backup GPT header".into())?;
    }
    file.sync_all()
        .context("state", || format!("cannot flush {}", disk_node.display()))?;
    // An image file (in tests) has no kernel partitions to update.
    let is_block_device = file
        .metadata()
        .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_block_device(&m.file_type()));
    if is_block_device {
        tell_kernel(
            &file,
            number,
            first_lba * SECTOR,
            (last_lba - first_lba + 1) * SECTOR,
        )?;
    }
    Ok(Some(Growth {
        old_bytes,
        new_bytes: (last_lba - first_lba + 1) * SECTOR,
    }))
}

/// `struct blkpg_partition` of `<linux/blkpg.h>`.
#[repr(C)]
struct BlkpgPartition {
    start: i64,
    length: i64,
    pno: i32,
    devname: [u8; 64],
    volname: [u8; 64],
}

/// `struct blkpg_ioctl_arg` of `<linux/blkpg.h>`.
#[repr(C)]
struct BlkpgIoctlArg {
    op: i32,
    flags: i32,
    datalen: i32,
    data: *mut BlkpgPartition,
}

const BLKPG_RESIZE_PARTITION: i32 = 3;
nix::ioctl_write_ptr_bad!(blkpg, nix::request_code_none!(0x12, 105), BlkpgIoctlArg);
nix::ioctl_write_ptr!(ext4_resize_fs, b'f', 16, u64);

/// Tells the kernel partition `number` of the open disk now spans `start..start+length`.
fn tell_kernel(disk: &File, number: u32, start: u64, length: u64) -> Result<()> {
    let mut part = BlkpgPartition {
        start: start as i64,
        length: length as i64,
        pno: number as i32,
        devname: [0; 64],
        volname: [0; 64],
    };
    let arg = BlkpgIoctlArg {
        op: BLKPG_RESIZE_PARTITION,
        flags: 0,
        datalen: std::mem::size_of::<BlkpgPartition>() as i32,
        data: &mut part,
    };
    // SAFETY: `arg` and the partition it points to are valid, correctly laid out
    // (`repr(C)` mirrors <linux/blkpg.h>) and live across the call; the fd is open.
    unsafe { blkpg(disk.as_raw_fd(), &arg) }
        .map(drop)
        .context("state", || {
            format!("the kernel refused the new size of partition {number}")
        })
}

/// Grows the ext4 mounted at `mount_point` to `bytes`, online.
pub fn grow_ext4(mount_point: &Path, bytes: u64) -> Result<u64> {
    let stat = nix::sys::statvfs::statvfs(mount_point)
        .context("state", || format!("cannot stat {}", mount_point.display()))?;
    let block_size = stat.fragment_size().max(1);
    let blocks = bytes / block_size;
    let dir = File::open(mount_point)
        .context("state", || format!("cannot open {}", mount_point.display()))?;
    // SAFETY: the ioctl reads one u64 from a valid reference; the fd is an open directory
    // on the ext4 file system being resized.
    unsafe { ext4_resize_fs(dir.as_raw_fd(), &blocks) }.context("state", || {
        format!("cannot grow the file system on {}", mount_point.display())
    })?;
    Ok(blocks * block_size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_structs_match_blkpg_h() {
        assert_eq!(std::mem::size_of::<BlkpgPartition>(), 152);
        assert_eq!(std::mem::offset_of!(BlkpgPartition, pno), 16);
        assert_eq!(std::mem::offset_of!(BlkpgPartition, devname), 20);
        assert_eq!(std::mem::size_of::<BlkpgIoctlArg>(), 24);
        assert_eq!(nix::request_code_none!(0x12, 105), 0x1269);
        assert_eq!(nix::request_code_write!(b'f', 16, 8), 0x4008_6610);
    }

    #[test]
    fn the_end_leaves_room_for_the_backup_gpt_and_stays_aligned() {
        // A 4 GiB disk: the last MiB cannot be used whole because the backup GPT is there.
        let total = 4u64 << 21;
        let end = aligned_end(total);
        assert_eq!((end + 1) % ALIGNMENT_SECTORS, 0);
        assert!(end < total - BACKUP_GPT_SECTORS);
        assert_eq!(end, total - ALIGNMENT_SECTORS - 1);
    }

    #[test]
    fn grows_the_last_partition_of_an_enlarged_image() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        let sgdisk = |args: &[&str]| {
            let out = std::process::Command::new("sgdisk")
                .args(args)
                .arg(&img)
                .output()
                .expect("sgdisk (gdisk) is missing");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        sgdisk(&["-n", "1:2048:+8M", "-n", "2:0:+16M", "-c", "2:state"]);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&img)
            .unwrap()
            .set_len(200 << 20)
            .unwrap();
        let growth = grow_partition(&img, 2).unwrap().expect("it grows");
        assert_eq!(growth.old_bytes, 16 << 20);
        assert_eq!(
            growth.new_bytes,
            (aligned_end(200 << 11) - (9 << 11) + 1) * 512
        );
        assert_eq!(
            grow_partition(&img, 2).unwrap(),
            None,
            "a second run has nothing to do"
        );
        let verify = sgdisk(&["-v"]);
        assert!(verify.contains("No problems found"), "{verify}");
        let info = sgdisk(&["-i", "2"]);
        let expected_last = aligned_end(200 << 11);
        assert!(
            info.contains(&format!("Last sector: {expected_last} ")),
            "{info}"
        );
    }
}
