//! A volume's file system: made, checked, mounted and grown with Debian's tools from the
//! verified root (e2fsprogs, xfsprogs), run by the helper process.
//!
//! | | ext4 | xfs |
//! |---|---|---|
//! | make (empty disks only) | `mke2fs -t ext4 -q -L <name> -E nodiscard` | `mkfs.xfs -q -K -L <name>` |
//! | check before mounting | `e2fsck -p` (preen; `-n` for a read-only volume): exit 0 clean, 1 and 2 repaired, anything else refuses the volume | `xfs_repair -n` (no changes): exit 0 clean; 2 means a dirty log, which the mount replays (XFS's own recovery); 1 (corruption) refuses the volume |
//! | grow (when the device is 16 MiB or more larger than the file system) | `resize2fs <device>` online | `xfs_growfs <mount point>` |
//!
//! Neither mkfs is given `-F`/`-f`: both open the device exclusively and refuse one that is
//! mounted or held, and mkfs.xfs refuses one with any signature, a second guard behind the
//! helper's rule (mke2fs asks about an existing file system only on a terminal, so for
//! ext4 the helper's probe is the only guard against that). Discards are off
//! (`nodiscard`, `-K`): a new cloud volume reads as zeros already, and discarding terabytes
//! can take minutes.

use std::path::Path;
use std::process::{Command, Stdio};

use crust_format::volume::Filesystem;
use nix::mount::{MsFlags, mount};

/// Grow a file system when its device is at least this much larger.
pub const GROW_THRESHOLD: u64 = 16 << 20;

/// A tool of the root and the package that ships it.
struct Tool {
    path: &'static str,
    package: &'static str,
}

const MKE2FS: Tool = Tool {
    path: "/usr/sbin/mke2fs",
    package: "e2fsprogs",
};
const E2FSCK: Tool = Tool {
    path: "/usr/sbin/e2fsck",
    package: "e2fsprogs",
};
const RESIZE2FS: Tool = Tool {
    path: "/usr/sbin/resize2fs",
    package: "e2fsprogs",
};
const MKFS_XFS: Tool = Tool {
    path: "/usr/sbin/mkfs.xfs",
    package: "xfsprogs",
};
const XFS_REPAIR: Tool = Tool {
    path: "/usr/sbin/xfs_repair",
    package: "xfsprogs",
};
const XFS_GROWFS: Tool = Tool {
    path: "/usr/sbin/xfs_growfs",
    package: "xfsprogs",
};

/// What a tool printed and how it ended.
#[derive(Debug)]
pub struct Ran {
    /// Exit code (`None`: killed by a signal).
    pub code: Option<i32>,
    /// Standard output and error, joined, trimmed, on one line.
    pub output: String,
}

/// Runs `tool` with `args` to its end (the helper is not PID 1: it waits for its own
/// children).
fn run(tool: &Tool, args: &[&std::ffi::OsStr]) -> Result<Ran, String> {
    if !Path::new(tool.path).is_file() {
        return Err(format!(
            "{} is not in this image: add {} to the profile's [root] packages",
            tool.path, tool.package
        ));
    }
    let out = Command::new(tool.path)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", tool.path))?;
    let mut output = String::from_utf8_lossy(&out.stdout).into_owned();
    output.push(' ');
    output.push_str(&String::from_utf8_lossy(&out.stderr));
    Ok(Ran {
        code: out.status.code(),
        output: output.split_whitespace().collect::<Vec<_>>().join(" "),
    })
}

fn os(s: &str) -> &std::ffi::OsStr {
    std::ffi::OsStr::new(s)
}

/// The label a new file system gets: the volume's name, cut to what the format holds.
pub fn label(fs: Filesystem, name: &str) -> &str {
    let max = match fs {
        Filesystem::Ext4 => 16,
        Filesystem::Xfs => 12,
    };
    &name[..name.len().min(max)]
}

/// Makes the file system on `device` (which the caller found empty); returns the command.
pub fn make(fs: Filesystem, device: &Path, name: &str) -> Result<String, String> {
    let label = label(fs, name);
    let (tool, args): (&Tool, Vec<&std::ffi::OsStr>) = match fs {
        Filesystem::Ext4 => (
            &MKE2FS,
            vec![
                os("-t"),
                os("ext4"),
                os("-q"),
                os("-L"),
                os(label),
                os("-E"),
                os("nodiscard"),
                device.as_os_str(),
            ],
        ),
        Filesystem::Xfs => (
            &MKFS_XFS,
            vec![os("-q"), os("-K"), os("-L"), os(label), device.as_os_str()],
        ),
    };
    let ran = run(tool, &args)?;
    let command = format!(
        "{} {}",
        Path::new(tool.path)
            .file_name()
            .map_or("", |n| n.to_str().unwrap_or("")),
        args.iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    match ran.code {
        Some(0) => Ok(command),
        code => Err(format!("{command} failed (exit {code:?}): {}", ran.output)),
    }
}

/// What the check before mounting found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checked {
    /// Nothing wrong.
    Clean,
    /// e2fsck repaired something (its report).
    Repaired(String),
    /// An XFS log to replay: the mount does it.
    DirtyLog,
}

impl Checked {
    /// For the console line.
    pub fn describe(&self) -> String {
        match self {
            Checked::Clean => "checked clean".into(),
            Checked::Repaired(report) => format!("repaired by e2fsck ({report})"),
            Checked::DirtyLog => {
                "its log replayed by the mount (xfs_repair -n saw a dirty log)".into()
            }
        }
    }
}

/// Checks the file system on `device` before it is mounted; an error refuses the volume.
pub fn check(fs: Filesystem, device: &Path, read_only: bool) -> Result<Checked, String> {
    match fs {
        Filesystem::Ext4 => {
            let mode = if read_only { "-n" } else { "-p" };
            let ran = run(&E2FSCK, &[os(mode), device.as_os_str()])?;
            match ran.code {
                Some(0) => Ok(Checked::Clean),
                Some(1 | 2) if !read_only => Ok(Checked::Repaired(ran.output)),
                code => Err(format!(
                    "e2fsck {mode} {} found errors it could not repair (exit {code:?}): {}; \
                     repair it from a rescue system (e2fsck -f), or name another disk; the \
                     volume was not mounted and nothing was formatted",
                    device.display(),
                    ran.output
                )),
            }
        }
        Filesystem::Xfs => {
            let ran = run(&XFS_REPAIR, &[os("-n"), device.as_os_str()])?;
            match ran.code {
                Some(0) => Ok(Checked::Clean),
                Some(2) => Ok(Checked::DirtyLog),
                code => Err(format!(
                    "xfs_repair -n {} found corruption (exit {code:?}): {}; repair it from a \
                     rescue system (xfs_repair), or name another disk; the volume was not \
                     mounted and nothing was formatted",
                    device.display(),
                    truncate(&ran.output, 400)
                )),
            }
        }
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Splits mount options into flags and the file system's own options (both checked by
/// [`crust_format::volume::check_mount_option`] already). Volumes are always `nosuid`,
/// `nodev` and `noexec`.
pub fn mount_flags(options: &[String]) -> (MsFlags, String) {
    let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let mut data = Vec::new();
    for o in options {
        match o.as_str() {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "noatime" => flags |= MsFlags::MS_NOATIME,
            "nodiratime" => flags |= MsFlags::MS_NODIRATIME,
            "relatime" => flags |= MsFlags::MS_RELATIME,
            "strictatime" => flags |= MsFlags::MS_STRICTATIME,
            "lazytime" => flags |= MsFlags::MS_LAZYTIME,
            "sync" => flags |= MsFlags::MS_SYNCHRONOUS,
            "dirsync" => flags |= MsFlags::MS_DIRSYNC,
            "rw" | "nosuid" | "nodev" | "noexec" => {}
            other => data.push(other),
        }
    }
    (flags, data.join(","))
}

/// Mounts `device` on `target` (made if missing, mode 0755).
pub fn mount_on(
    fs: Filesystem,
    device: &Path,
    target: &Path,
    options: &[String],
) -> Result<(), String> {
    std::fs::create_dir_all(target)
        .map_err(|e| format!("cannot make {}: {e}", target.display()))?;
    let (flags, data) = mount_flags(options);
    let data = (!data.is_empty()).then_some(data.as_str());
    mount(Some(device), target, Some(fs.as_str()), flags, data).map_err(|e| {
        format!(
            "cannot mount {} ({fs}) on {}: {}{}",
            device.display(),
            target.display(),
            e.desc(),
            if e == nix::errno::Errno::EINVAL && data.is_some() {
                " (are the mount options ones this file system takes?)"
            } else {
                ""
            }
        )
    })
}

/// Grows the mounted file system to fill its device.
pub fn grow(fs: Filesystem, device: &Path, target: &Path) -> Result<(), String> {
    let ran = match fs {
        Filesystem::Ext4 => run(&RESIZE2FS, &[device.as_os_str()])?,
        Filesystem::Xfs => run(&XFS_GROWFS, &[target.as_os_str()])?,
    };
    match ran.code {
        Some(0) => Ok(()),
        code => Err(format!(
            "growing {} failed (exit {code:?}): {}",
            device.display(),
            ran.output
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_into_flags_and_data() {
        let (flags, data) = mount_flags(&[
            "noatime".into(),
            "discard".into(),
            "ro".into(),
            "commit=30".into(),
        ]);
        assert!(flags.contains(MsFlags::MS_NOATIME | MsFlags::MS_RDONLY | MsFlags::MS_NOEXEC));
        assert!(flags.contains(MsFlags::MS_NOSUID | MsFlags::MS_NODEV));
        assert_eq!(data, "discard,commit=30");
        assert_eq!(mount_flags(&[]).1, "");
        assert_eq!(label(Filesystem::Xfs, "a-long-volume-name"), "a-long-volum");
        assert_eq!(label(Filesystem::Ext4, "db"), "db");
    }

    /// The real tools on a file: made empty-handed, checked clean.
    #[test]
    fn real_tools_make_and_check_file_systems() {
        let dir = tempfile::tempdir().unwrap();
        for (fs, size) in [
            (Filesystem::Ext4, 64u64 << 20),
            (Filesystem::Xfs, 320 << 20),
        ] {
            let f = dir.path().join(fs.as_str());
            std::fs::File::create(&f)
                .and_then(|file| file.set_len(size))
                .unwrap();
            if !Path::new(match fs {
                Filesystem::Ext4 => MKE2FS.path,
                Filesystem::Xfs => MKFS_XFS.path,
            })
            .is_file()
            {
                panic!("{fs}: its tools are missing here (cargo xtask test installs them)");
            }
            make(fs, &f, "data").unwrap();
            assert_eq!(check(fs, &f, false).unwrap(), Checked::Clean);
            if fs == Filesystem::Xfs {
                // mkfs.xfs refuses a device with a signature unless forced.
                assert!(make(fs, &f, "data").is_err(), "xfs formatted over itself");
            }
        }
    }
}
