//! Mounting the API file systems, reading `/proc/self/mountinfo`, and unmounting at shutdown.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::Path;

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags, mount, umount2};

use crate::error::{Context, Result};

/// Where the kernel lists the mounts a process sees.
pub const MOUNTINFO: &str = "/proc/self/mountinfo";

/// One file system to mount.
#[derive(Debug, Clone, Copy)]
pub struct Mount<'a> {
    /// Source (device path, or a name for virtual file systems).
    pub source: &'a str,
    /// Mount point.
    pub target: &'a str,
    /// File system type.
    pub fstype: &'a str,
    /// Mount flags.
    pub flags: MsFlags,
    /// File-system-specific options.
    pub data: Option<&'a str>,
}

/// The kernel's own file systems stage 1 needs, in mount order.
pub fn api_filesystems() -> [Mount<'static>; 4] {
    let hidden = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    [
        Mount {
            source: "proc",
            target: "/proc",
            fstype: "proc",
            flags: hidden,
            data: None,
        },
        Mount {
            source: "sysfs",
            target: "/sys",
            fstype: "sysfs",
            flags: hidden,
            data: None,
        },
        Mount {
            source: "devtmpfs",
            target: "/dev",
            fstype: "devtmpfs",
            flags: MsFlags::MS_NOSUID,
            data: Some("mode=0755"),
        },
        Mount {
            source: "tmpfs",
            target: "/run",
            fstype: "tmpfs",
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            data: Some("mode=0755"),
        },
    ]
}

/// Mounts `m` unless something is mounted there already (the kernel may have mounted
/// devtmpfs itself). Creates the mount point if it is missing. Returns whether it mounted.
pub fn mount_once(m: &Mount<'_>) -> Result<bool> {
    let target = Path::new(m.target);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(target)
        .context("mount", || {
            format!("cannot create mount point {}", m.target)
        })?;
    if is_mount_point(target) {
        return Ok(false);
    }
    mount(Some(m.source), target, Some(m.fstype), m.flags, m.data).context("mount", || {
        format!("cannot mount {} on {}", m.fstype, m.target)
    })?;
    Ok(true)
}

/// Whether `path` is the root of a mounted file system: it sits on another device than its
/// parent. (A bind mount within one file system would not count, and stage 1 makes none.)
pub fn is_mount_point(path: &Path) -> bool {
    match (fs::metadata(path), fs::metadata(path.join(".."))) {
        (Ok(here), Ok(parent)) => here.dev() != parent.dev() || here.ino() == parent.ino(),
        _ => false,
    }
}

/// One line of `/proc/self/mountinfo`, the parts the init uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Mount point, relative to the process's root, unescaped.
    pub mount_point: String,
    /// File system type.
    pub fstype: String,
    /// Mount source (such as `/dev/dm-0`), unescaped.
    pub source: String,
}

/// Parses mountinfo text (see proc(5)); malformed lines are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            // "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue":
            // the optional fields before " - " vary in number.
            let (before, after) = line.split_once(" - ")?;
            let mount_point = before.split(' ').nth(4)?;
            let mut after = after.split(' ');
            let fstype = after.next()?;
            let source = after.next()?;
            Some(MountEntry {
                mount_point: unescape(mount_point),
                fstype: unescape(fstype),
                source: unescape(source),
            })
        })
        .collect()
}

/// Reads and parses the calling process's mountinfo.
pub fn read_mountinfo() -> io::Result<Vec<MountEntry>> {
    Ok(parse_mountinfo(&fs::read_to_string(MOUNTINFO)?))
}

/// The mount that `/` resolves to: the last one listed on `/` (later mounts stack on top).
pub fn root_mount(entries: &[MountEntry]) -> Option<&MountEntry> {
    entries.iter().rev().find(|e| e.mount_point == "/")
}

/// Undoes the kernel's octal escapes (`\040` for a space, `\134` for a backslash).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .map(|d| d.iter().fold(0u32, |n, c| n * 8 + u32::from(c - b'0')))
            .and_then(|n| u8::try_from(n).ok());
        match octal {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What [`unmount_all`] managed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Unmounted {
    /// Unmounted cleanly.
    pub clean: usize,
    /// Busy, detached lazily instead.
    pub detached: usize,
    /// Could not be unmounted at all.
    pub failed: usize,
}

/// Unmounts everything but `/`, newest first, detaching what is busy.
pub fn unmount_all() -> Unmounted {
    let mut result = Unmounted::default();
    let Ok(entries) = read_mountinfo() else {
        return result;
    };
    for entry in entries.iter().rev().filter(|e| e.mount_point != "/") {
        match umount2(entry.mount_point.as_str(), MntFlags::empty()) {
            Ok(()) => result.clean += 1,
            Err(Errno::EBUSY) => match umount2(entry.mount_point.as_str(), MntFlags::MNT_DETACH) {
                Ok(()) => result.detached += 1,
                Err(_) => result.failed += 1,
            },
            // Gone with a parent that was detached, or not unmountable (EINVAL): nothing
            // holds data there.
            Err(Errno::EINVAL | Errno::ENOENT) => {}
            Err(_) => result.failed += 1,
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 254:0 / / ro,relatime - squashfs /dev/dm-0 ro,errors=continue
23 22 0:5 / /dev rw,nosuid master:2 - devtmpfs devtmpfs rw,size=4096k,mode=755
24 22 0:21 / /proc rw,nosuid,nodev,noexec - proc proc rw
25 22 0:20 / /sys rw,nosuid,nodev,noexec shared:7 master:3 - sysfs sysfs rw
26 25 0:25 / /sys/firmware/efi/efivars rw - efivarfs efivarfs rw
27 22 0:22 / /run rw - tmpfs tmpfs rw,mode=755
28 22 0:30 / /mnt/with\\040space rw - ext4 /dev/vdb1 rw
";

    #[test]
    fn parses_fields_around_optional_tags() {
        let e = parse_mountinfo(SAMPLE);
        assert_eq!(e.len(), 7);
        assert_eq!(
            e[0],
            MountEntry {
                mount_point: "/".into(),
                fstype: "squashfs".into(),
                source: "/dev/dm-0".into()
            }
        );
        assert_eq!(e[3].mount_point, "/sys");
        assert_eq!(e[3].fstype, "sysfs");
        assert_eq!(e[6].mount_point, "/mnt/with space");
    }

    #[test]
    fn the_last_mount_on_root_wins() {
        let text = format!("1 1 0:2 / / rw - rootfs rootfs rw\n{SAMPLE}");
        let entries = parse_mountinfo(&text);
        assert_eq!(root_mount(&entries).unwrap().source, "/dev/dm-0");
        assert_eq!(root_mount(&entries[..1]).unwrap().fstype, "rootfs");
    }

    #[test]
    fn skips_malformed_lines_and_keeps_odd_escapes() {
        assert!(parse_mountinfo("garbage\n1 2 3\n").is_empty());
        assert_eq!(unescape("a\\134b\\09x\\"), "a\\b\\09x\\");
    }

    #[test]
    fn root_is_a_mount_point_and_a_plain_directory_is_not() {
        assert!(is_mount_point(Path::new("/")));
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("sub");
        fs::create_dir(&sub).unwrap();
        assert!(!is_mount_point(&sub));
    }
}
