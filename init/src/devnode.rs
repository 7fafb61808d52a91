//! Device numbers and device nodes.
//!
//! devtmpfs creates a node for every device the kernel adds, but sysfs can show a device a
//! moment before its node exists; there is no udev to wait for. Callers wait briefly for
//! the node and create it themselves if it does not come.

use std::fmt;
use std::fs;
use std::io;
use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, Instant};

use nix::sys::stat::{Mode, SFlag, makedev, mknod};

/// A device number, as sysfs prints it (`major:minor`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DevNum {
    /// Major number.
    pub major: u32,
    /// Minor number.
    pub minor: u32,
}

impl DevNum {
    /// Reads the `dev` attribute of a sysfs device directory.
    pub fn from_sysfs(dir: &Path) -> io::Result<Self> {
        fs::read_to_string(dir.join("dev"))?
            .parse()
            .map_err(|()| io::Error::other(format!("{}/dev is not major:minor", dir.display())))
    }

    /// Decodes the kernel's `huge_encode_dev` layout, which device-mapper replies use
    /// (12 bits of major, 20 of minor, the minor's low byte at the bottom).
    pub fn from_huge(dev: u64) -> Self {
        Self {
            major: ((dev >> 8) & 0xfff) as u32,
            minor: ((dev & 0xff) | ((dev >> 12) & 0xfff00)) as u32,
        }
    }
}

impl fmt::Display for DevNum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

impl FromStr for DevNum {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        let (major, minor) = s.trim().split_once(':').ok_or(())?;
        Ok(Self {
            major: major.parse().map_err(|_| ())?,
            minor: minor.parse().map_err(|_| ())?,
        })
    }
}

/// Whether a node is a block or a character device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Block device (disks, partitions, dm).
    Block,
    /// Character device (input, misc).
    Char,
}

/// Waits up to `wait` for devtmpfs to create `path`, then creates the node itself.
///
/// Returns whether the node had to be created here.
pub fn ensure(path: &Path, kind: Kind, dev: DevNum, wait: Duration) -> io::Result<bool> {
    let deadline = Instant::now() + wait;
    while !path.exists() {
        if Instant::now() >= deadline {
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent)?;
            }
            let sflag = match kind {
                Kind::Block => SFlag::S_IFBLK,
                Kind::Char => SFlag::S_IFCHR,
            };
            let devt = makedev(u64::from(dev.major), u64::from(dev.minor));
            return match mknod(path, sflag, Mode::from_bits_truncate(0o600), devt) {
                // devtmpfs won the race after all.
                Err(nix::errno::Errno::EEXIST) => Ok(false),
                Err(e) => Err(e.into()),
                Ok(()) => Ok(true),
            };
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sysfs_dev() {
        assert_eq!(
            "254:3\n".parse(),
            Ok(DevNum {
                major: 254,
                minor: 3
            })
        );
        assert!("254".parse::<DevNum>().is_err());
        assert!("a:b".parse::<DevNum>().is_err());
        assert_eq!(
            DevNum {
                major: 8,
                minor: 17
            }
            .to_string(),
            "8:17"
        );
    }

    #[test]
    fn decodes_huge_encoded_numbers() {
        // huge_encode_dev(MKDEV(254, 0)) and MKDEV(259, 300): minor's high bits go above the major.
        assert_eq!(
            DevNum::from_huge(0xfe00),
            DevNum {
                major: 254,
                minor: 0
            }
        );
        let encoded = (300 & 0xff) | (259 << 8) | ((300 & !0xff) << 12);
        assert_eq!(
            DevNum::from_huge(encoded),
            DevNum {
                major: 259,
                minor: 300
            }
        );
    }

    #[test]
    fn an_existing_node_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node");
        fs::write(&path, b"").unwrap();
        let dev = DevNum { major: 1, minor: 3 };
        assert!(!ensure(&path, Kind::Char, dev, Duration::ZERO).unwrap());
    }
}
