//! The disk to write, and every reason not to write it.
//!
//! A target is a whole block device (not a partition), writable, that
//! - holds no mounted file system, directly or under device mapper, RAID or a loop device
//!   (`/proc/self/mountinfo`, each mount's device followed through `/sys/dev/block/*/slaves`
//!   down to disks), above all not the running system's `/`;
//! - has no other device built on it (`holders` of the disk and its partitions);
//! - is not used for swap (`/proc/swaps`);
//! - can be opened with `O_EXCL`, which the kernel refuses while anything has claimed it.
//!
//! The exclusive open is held until the flash ends, so nothing can mount the disk between
//! the checks and the writes. With `allow_file`, a regular file stands in for a disk (tests,
//! preparing a disk image); it must not be the image, nor back a loop device.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crust_builder::backup_gpt::{self, Moved};
use nix::libc;

use crate::FlashError;

/// What the target is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A whole-disk block device, `major:minor`.
    BlockDevice {
        /// Major device number.
        major: u64,
        /// Minor device number.
        minor: u64,
    },
    /// A regular file standing in for a disk.
    File,
}

/// An opened, checked target.
#[derive(Debug)]
pub struct Target {
    /// The path as given.
    pub path: PathBuf,
    /// Block device or file.
    pub kind: Kind,
    /// Its size in bytes.
    pub size: u64,
    /// For people: model and size, or "image file".
    pub description: String,
    /// Opened read-write (exclusively for a block device, and with `O_DIRECT` when `direct`).
    pub(crate) file: File,
    /// Writes bypass the page cache (block devices): they must be aligned to
    /// `logical_block_size`.
    pub(crate) direct: bool,
    /// The device's logical block size (512 for files).
    pub(crate) logical_block_size: u64,
}

/// Opens `path` for flashing after every check; `image` is the image to be written.
pub fn open(path: &Path, allow_file: bool, image: &Path) -> Result<Target, FlashError> {
    let open_err = |source| FlashError::Open {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(open_err)?;
    let file_type = meta.file_type();
    if file_type.is_block_device() {
        open_block_device(path, meta.rdev())
    } else if file_type.is_file() {
        if !allow_file {
            return Err(FlashError::NotBlockDevice {
                path: path.to_path_buf(),
                what: "a regular file",
                hint: "; pass --allow-file to write an image file standing in for a disk",
            });
        }
        open_file(path, &meta, image)
    } else {
        Err(FlashError::NotBlockDevice {
            path: path.to_path_buf(),
            what: if file_type.is_dir() {
                "a folder"
            } else if file_type.is_char_device() {
                "a character device"
            } else {
                "a special file"
            },
            hint: "",
        })
    }
}

fn open_file(path: &Path, meta: &std::fs::Metadata, image: &Path) -> Result<Target, FlashError> {
    let image_meta = std::fs::metadata(image).map_err(|source| FlashError::Open {
        path: image.to_path_buf(),
        source,
    })?;
    if image_meta.dev() == meta.dev() && image_meta.ino() == meta.ino() {
        return Err(FlashError::SameAsImage {
            path: path.to_path_buf(),
        });
    }
    let loops = loops_backed_by(path);
    if !loops.is_empty() {
        return Err(FlashError::Held {
            path: path.to_path_buf(),
            holders: loops,
        });
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|source| FlashError::Open {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(Target {
        path: path.to_path_buf(),
        kind: Kind::File,
        size: meta.len(),
        description: "an image file standing in for a disk".into(),
        file,
        direct: false,
        logical_block_size: 512,
    })
}

fn open_block_device(path: &Path, rdev: u64) -> Result<Target, FlashError> {
    let (major, minor) = (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev));
    let devt = format!("{major}:{minor}");
    let sysfs = PathBuf::from("/sys/dev/block").join(&devt);
    if sysfs.join("partition").exists() {
        let disk = sysfs
            .canonicalize()
            .ok()
            .and_then(|p| p.parent().and_then(|d| d.file_name()).map(|n| n.to_owned()))
            .map(|n| format!("/dev/{}", n.to_string_lossy()))
            .unwrap_or_else(|| "its disk".into());
        return Err(FlashError::Partition {
            path: path.to_path_buf(),
            disk,
        });
    }
    if read_trimmed(&sysfs.join("ro")).as_deref() == Some("1") {
        return Err(FlashError::ReadOnly {
            path: path.to_path_buf(),
        });
    }
    check_mounts(path, &devt)?;
    check_swaps(path, &devt)?;
    let holders = holders(&sysfs);
    if !holders.is_empty() {
        return Err(FlashError::Held {
            path: path.to_path_buf(),
            holders,
        });
    }

    let logical_block_size = read_trimmed(&sysfs.join("queue/logical_block_size"))
        .and_then(|s| s.parse().ok())
        .unwrap_or(512);
    let exclusive = |direct: bool| {
        let mut flags = libc::O_EXCL;
        if direct {
            flags |= libc::O_DIRECT;
        }
        OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(flags)
            .open(path)
    };
    let (mut file, direct) = match exclusive(true) {
        Ok(f) => (f, true),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => (
            exclusive(false).map_err(|source| busy_or(path, source))?,
            false,
        ),
        Err(source) => return Err(busy_or(path, source)),
    };
    let size = file
        .seek(SeekFrom::End(0))
        .map_err(|source| FlashError::Open {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(Target {
        path: path.to_path_buf(),
        kind: Kind::BlockDevice { major, minor },
        size,
        description: describe(&sysfs, &devt),
        file,
        direct,
        logical_block_size,
    })
}

fn busy_or(path: &Path, source: std::io::Error) -> FlashError {
    if source.raw_os_error() == Some(libc::EBUSY) {
        FlashError::Busy {
            path: path.to_path_buf(),
        }
    } else {
        FlashError::Open {
            path: path.to_path_buf(),
            source,
        }
    }
}

impl Target {
    /// Moves the backup GPT to the end of a target larger than the image, then syncs.
    pub(crate) fn finish_gpt(&mut self) -> Result<Option<Moved>, FlashError> {
        let gpt_err = |source| FlashError::Gpt {
            path: self.path.clone(),
            source,
        };
        // The gpt crate reads and writes single sectors from unaligned buffers, which
        // O_DIRECT refuses: a second, ordinary descriptor (the exclusive one stays open).
        let mut disk = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.path)
            .map_err(|source| FlashError::Io {
                what: "cannot open",
                path: self.path.clone(),
                source,
            })?;
        let moved = backup_gpt::move_to_end(&mut disk).map_err(gpt_err)?;
        disk.sync_all().map_err(|source| FlashError::Io {
            what: "cannot flush",
            path: self.path.clone(),
            source,
        })?;
        Ok(moved)
    }

    /// Asks the kernel to read the new partition table (block devices); true if it did.
    pub(crate) fn reread_partitions(&self) -> bool {
        nix::ioctl_none!(blkrrpart, 0x12, 95);
        if self.kind == Kind::File {
            return false;
        }
        use std::os::fd::AsRawFd;
        // SAFETY: BLKRRPART takes no argument; the descriptor is an open block device.
        unsafe { blkrrpart(self.file.as_raw_fd()) }.is_ok()
    }
}

fn read_trimmed(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
}

/// `major:minor` of the whole disks a device lives on: itself for a disk, its disk for a
/// partition, and for device mapper, RAID and loop devices the disks below their slaves.
fn disks_under(devt: &str, out: &mut BTreeSet<String>, depth: usize) {
    let sysfs = PathBuf::from("/sys/dev/block").join(devt);
    if depth > 16 || !sysfs.exists() {
        return;
    }
    let slaves: Vec<String> = std::fs::read_dir(sysfs.join("slaves"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| read_trimmed(&e.path().join("dev")))
        .collect();
    if !slaves.is_empty() {
        for slave in slaves {
            disks_under(&slave, out, depth + 1);
        }
    } else if sysfs.join("partition").exists() {
        if let Some(disk) = sysfs
            .canonicalize()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("dev")))
            .and_then(|p| read_trimmed(&p))
        {
            out.insert(disk);
        }
    } else {
        out.insert(devt.to_owned());
    }
}

fn lives_on(devt_of_device: &str, disk: &str) -> bool {
    let mut disks = BTreeSet::new();
    disks_under(devt_of_device, &mut disks, 0);
    disks.contains(disk)
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let digits = std::str::from_utf8(&bytes[i + 1..i + 4]).ok();
            if let Some(v) = digits.and_then(|d| u8::from_str_radix(d, 8).ok()) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One line of `/proc/self/mountinfo`: device, mount point, source.
fn parse_mountinfo_line(line: &str) -> Option<(String, String, String)> {
    let mut fields = line.split(' ');
    let devt = fields.nth(2)?.to_owned();
    let mountpoint = unescape(fields.nth(1)?);
    let (_, after) = line.split_once(" - ")?;
    let source = unescape(after.split(' ').nth(1)?);
    Some((devt, mountpoint, source))
}

fn check_mounts(path: &Path, disk: &str) -> Result<(), FlashError> {
    let text =
        std::fs::read_to_string("/proc/self/mountinfo").map_err(|source| FlashError::Io {
            what: "cannot read",
            path: "/proc/self/mountinfo".into(),
            source,
        })?;
    let mounts: Vec<_> = text.lines().filter_map(parse_mountinfo_line).collect();
    // The running system first: it is the worst thing to overwrite, and the clearest message.
    let on_disk = |devt: &str| lives_on(devt, disk);
    if let Some((_, _, source)) = mounts.iter().find(|(d, m, _)| m == "/" && on_disk(d)) {
        return Err(FlashError::RunningSystem {
            path: path.to_path_buf(),
            source_device: source.clone(),
        });
    }
    if let Some((_, mountpoint, source)) = mounts.iter().find(|(d, _, _)| on_disk(d)) {
        return Err(FlashError::Mounted {
            path: path.to_path_buf(),
            source_device: source.clone(),
            mountpoint: mountpoint.clone(),
        });
    }
    Ok(())
}

fn check_swaps(path: &Path, disk: &str) -> Result<(), FlashError> {
    let Ok(text) = std::fs::read_to_string("/proc/swaps") else {
        return Ok(());
    };
    for line in text.lines().skip(1) {
        let Some(swap) = line.split_whitespace().next().map(unescape) else {
            continue;
        };
        let Ok(meta) = std::fs::metadata(&swap) else {
            continue;
        };
        let devt = if meta.file_type().is_block_device() {
            let rdev = meta.rdev();
            format!(
                "{}:{}",
                nix::sys::stat::major(rdev),
                nix::sys::stat::minor(rdev)
            )
        } else {
            // A swap file: the device of the file system holding it.
            format!(
                "{}:{}",
                nix::sys::stat::major(meta.dev()),
                nix::sys::stat::minor(meta.dev())
            )
        };
        if lives_on(&devt, disk) {
            return Err(FlashError::Swap {
                path: path.to_path_buf(),
                swap,
            });
        }
    }
    Ok(())
}

/// Devices built on the disk or any of its partitions.
fn holders(sysfs: &Path) -> Vec<String> {
    let mut dirs = vec![sysfs.to_path_buf()];
    dirs.extend(
        std::fs::read_dir(sysfs)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.join("partition").exists()),
    );
    let mut names: Vec<String> = dirs
        .iter()
        .flat_map(|d| std::fs::read_dir(d.join("holders")).into_iter().flatten())
        .flatten()
        .map(|e| format!("/dev/{}", e.file_name().to_string_lossy()))
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Loop devices whose backing file is `path`.
fn loops_backed_by(path: &Path) -> Vec<String> {
    let Ok(canonical) = path.canonicalize() else {
        return Vec::new();
    };
    std::fs::read_dir("/sys/block")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            read_trimmed(&e.path().join("loop/backing_file"))
                .is_some_and(|b| Path::new(&b) == canonical)
        })
        .map(|e| format!("/dev/{}", e.file_name().to_string_lossy()))
        .collect()
}

/// Model and vendor from sysfs, or what backs a loop device.
fn describe(sysfs: &Path, devt: &str) -> String {
    if let Some(backing) = read_trimmed(&sysfs.join("loop/backing_file")) {
        return format!("loop device {devt} backed by {backing}");
    }
    let vendor = read_trimmed(&sysfs.join("device/vendor")).unwrap_or_default();
    let model = read_trimmed(&sysfs.join("device/model")).unwrap_or_default();
    let name = format!("{vendor} {model}").trim().to_owned();
    if name.is_empty() {
        format!("block device {devt}")
    } else {
        format!("{name} ({devt})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_give_device_mountpoint_and_source() {
        let line = "36 35 98:0 /mnt1 /mnt/my\\040disk rw,noatime master:1 - ext3 /dev/root rw,errors=continue";
        assert_eq!(
            parse_mountinfo_line(line),
            Some(("98:0".into(), "/mnt/my disk".into(), "/dev/root".into()))
        );
    }

    #[test]
    fn the_running_system_is_found_under_its_root() {
        // `/` lives on some disk of this machine (or on no block device in a container).
        let root_devt = {
            let m = std::fs::metadata("/").unwrap();
            format!(
                "{}:{}",
                nix::sys::stat::major(m.dev()),
                nix::sys::stat::minor(m.dev())
            )
        };
        let mut disks = BTreeSet::new();
        disks_under(&root_devt, &mut disks, 0);
        for disk in &disks {
            assert!(matches!(
                check_mounts(Path::new("/dev/x"), disk),
                Err(FlashError::RunningSystem { .. })
            ));
        }
    }
}
