//! Moving a GPT's backup copy to the end of a disk larger than the image it was written
//! from: a flashed device, or an image padded to a cloud's size rule.
//!
//! A GPT keeps a backup header in the disk's last sector and a backup partition array just
//! before it. An image written onto a larger disk has them in the middle, where firmware
//! and tools that look for them at the end do not find them ("GPT: alternate header not at
//! the end of the disk"). The partitions stay exactly where they are: only the headers
//! (their backup location and last usable sector), the backup array, and the protective
//! MBR's size change, and the stale backup header is cleared. The init does the same on
//! first boot when it grows the state partition (`init/src/grow.rs`).

use std::io::{Read, Seek, SeekFrom, Write};

use gpt::disk::LogicalBlockSize;

/// The sector size of Crust disks (layout v1).
const SECTOR: u64 = 512;

/// Why the backup GPT could not be moved.
#[derive(Debug, thiserror::Error)]
pub enum BackupGptError {
    /// Reading or writing the disk failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The disk holds no valid GPT.
    #[error("no valid GPT: {0}")]
    NoGpt(String),
    /// The gpt crate refused to rewrite the table.
    #[error("cannot rewrite the GPT: {0}")]
    Rewrite(String),
    /// The disk is smaller than the area the partitions use.
    #[error("the disk ends at sector {disk_sectors} but a partition ends at sector {last_lba}")]
    TooSmall {
        /// Sectors of the disk.
        disk_sectors: u64,
        /// The last sector a partition uses.
        last_lba: u64,
    },
}

/// Where the backup header was and is now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Moved {
    /// Its sector before.
    pub from_lba: u64,
    /// Its sector now: the disk's last.
    pub to_lba: u64,
}

/// Moves the backup GPT of `disk` to the disk's end (its length is where `seek(End)` lands:
/// a file's size or a block device's). Returns `None` when it is there already.
pub fn move_to_end<D>(disk: &mut D) -> Result<Option<Moved>, BackupGptError>
where
    D: Read + Write + Seek + std::fmt::Debug,
{
    let disk_sectors = disk.seek(SeekFrom::End(0))? / SECTOR;
    disk.rewind()?;
    let mut gpt = gpt::GptConfig::new()
        .writable(true)
        // The gpt crate looks for the backup in the disk's last sector, where it is not
        // yet: the primary header must be valid (checked below), the backup may not be.
        .only_valid_headers(false)
        .logical_block_size(LogicalBlockSize::Lb512)
        .open_from_device(&mut *disk)
        .map_err(|e| BackupGptError::NoGpt(e.to_string()))?;
    let from_lba = gpt
        .primary_header()
        .map_err(|e| BackupGptError::NoGpt(e.to_string()))?
        .backup_lba;
    let to_lba = disk_sectors.saturating_sub(1);
    if from_lba == to_lba {
        return Ok(None);
    }
    let table = gpt.partitions().clone();
    let last_lba = table.values().map(|p| p.last_lba).max().unwrap_or(0);
    if last_lba >= to_lba {
        return Err(BackupGptError::TooSmall {
            disk_sectors,
            last_lba,
        });
    }
    // Rebuilding the headers from the same table puts the backup at the device's end.
    gpt.update_partitions(table)
        .map_err(|e| BackupGptError::Rewrite(e.to_string()))?;
    gpt.write()
        .map_err(|e| BackupGptError::Rewrite(e.to_string()))?;
    gpt::mbr::ProtectiveMBR::with_lb_size(u32::try_from(to_lba).unwrap_or(u32::MAX))
        .overwrite_lba0(&mut *disk)
        .map_err(|e| BackupGptError::Rewrite(e.to_string()))?;
    if from_lba < to_lba {
        // A stale backup header inside the disk would mislead tools that scan for one.
        disk.seek(SeekFrom::Start(from_lba * SECTOR))?;
        disk.write_all(&[0u8; SECTOR as usize])?;
    }
    disk.flush()?;
    Ok(Some(Moved { from_lba, to_lba }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    const MIB: u64 = 1 << 20;

    /// A 64 MiB GPT disk image with two partitions, made by sgdisk (an independent writer).
    fn disk(dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("disk.img");
        std::fs::File::create(&path)
            .unwrap()
            .set_len(64 * MIB)
            .unwrap();
        let out = Command::new("sgdisk")
            .args([
                "-n", "1:1M:+8M", "-n", "2:0:+16M", "-c", "1:esp", "-c", "2:state",
            ])
            .arg(&path)
            .output()
            .expect("sgdisk (gdisk)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        path
    }

    fn sgdisk_verify(path: &std::path::Path) -> String {
        let out = Command::new("sgdisk").arg("-v").arg(path).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn the_backup_moves_to_the_end_and_partitions_stay() {
        let dir = tempfile::tempdir().unwrap();
        let path = disk(dir.path());
        let before = Command::new("sfdisk")
            .arg("-d")
            .arg(&path)
            .output()
            .unwrap();
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        assert_eq!(move_to_end(&mut file).unwrap(), None, "already at the end");
        file.set_len(100 * MIB).unwrap();
        let moved = move_to_end(&mut file).unwrap().unwrap();
        assert_eq!(moved.from_lba, 64 * MIB / 512 - 1);
        assert_eq!(moved.to_lba, 100 * MIB / 512 - 1);
        drop(file);
        let verify = sgdisk_verify(&path);
        assert!(verify.contains("No problems found"), "{verify}");
        let after = Command::new("sfdisk")
            .arg("-d")
            .arg(&path)
            .output()
            .unwrap();
        let parts = |o: &[u8]| -> Vec<String> {
            String::from_utf8_lossy(o)
                .lines()
                .filter(|l| l.contains("start="))
                .map(str::to_owned)
                .collect()
        };
        assert_eq!(parts(&before.stdout), parts(&after.stdout));
        assert!(String::from_utf8_lossy(&after.stdout).contains("last-lba: 204766"));
    }

    #[test]
    fn a_disk_without_gpt_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blank");
        std::fs::File::create(&path).unwrap().set_len(MIB).unwrap();
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        assert!(matches!(
            move_to_end(&mut file),
            Err(BackupGptError::NoGpt(_))
        ));
    }
}
