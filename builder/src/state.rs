//! The state partition's file system: an empty ext4, later mounted on `/var`.
//!
//! No maintained Rust crate writes ext4, and `mke2fs` (e2fsprogs, part of every Debian
//! system) is its reference implementation, so the builder runs it. It writes straight into
//! the image file at the partition's offset (`-E offset=`), needs no root privileges and
//! no loop device, and is deterministic: the file system UUID and directory hash seed are
//! fixed by the caller, and `E2FSPROGS_FAKE_TIME` replaces the clock with the build's
//! `SOURCE_DATE_EPOCH`. The init grows the file system with its partition on first boot.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use crust_format::layout::STATE_LABEL;
use uuid::Uuid;

/// Makes an ext4 file system of `size` bytes at byte `offset` of the image file `image`.
pub fn format(image: &Path, offset: u64, size: u64, uuid: Uuid, epoch: u64) -> Result<()> {
    let extended =
        format!("offset={offset},hash_seed={uuid},root_owner=0:0,nodiscard,lazy_itable_init=1");
    let out = Command::new("mke2fs")
        .args([
            "-q",
            "-F",
            "-t",
            "ext4",
            "-T",
            "default",
            "-b",
            "4096",
            "-L",
            STATE_LABEL,
            "-m",
            "1",
        ])
        .arg("-U")
        .arg(uuid.to_string())
        .arg("-E")
        .arg(&extended)
        .arg(image)
        .arg(format!("{}k", size / 1024))
        .env("E2FSPROGS_FAKE_TIME", epoch.to_string())
        .env("MKE2FS_CONFIG", "/etc/mke2fs.conf")
        .output()
        .context("cannot run mke2fs (install e2fsprogs)")?;
    if !out.status.success() {
        bail!(
            "mke2fs failed on the state partition: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, SeekFrom, Write};

    const MIB: u64 = 1 << 20;

    fn make(dir: &Path, name: &str, epoch: u64) -> std::path::PathBuf {
        let path = dir.join(name);
        let mut f = std::fs::File::create(&path).unwrap();
        f.set_len(70 * MIB).unwrap();
        // A marker just before the partition must survive: mke2fs writes only its region.
        f.seek(SeekFrom::Start(MIB - 4)).unwrap();
        f.write_all(b"keep").unwrap();
        let uuid = Uuid::parse_str("6b0e4a8e-1f0c-4d7a-9c61-2b9f6e5d4c3b").unwrap();
        format(&path, MIB, 64 * MIB, uuid, epoch).unwrap();
        path
    }

    #[test]
    fn e2fsck_finds_a_clean_file_system_at_the_offset() {
        let dir = tempfile::tempdir().unwrap();
        let img = make(dir.path(), "a.img", 1_700_000_000);
        let mut bytes = Vec::new();
        std::fs::File::open(&img)
            .unwrap()
            .read_to_end(&mut bytes)
            .unwrap();
        assert_eq!(&bytes[(MIB - 4) as usize..MIB as usize], b"keep");
        let part = dir.path().join("part");
        std::fs::write(&part, &bytes[MIB as usize..(65 * MIB) as usize]).unwrap();
        let fsck = Command::new("e2fsck")
            .arg("-fn")
            .arg(&part)
            .output()
            .expect("e2fsck (e2fsprogs)");
        assert!(
            fsck.status.success(),
            "{}",
            String::from_utf8_lossy(&fsck.stdout)
        );
        let dump = Command::new("dumpe2fs")
            .arg("-h")
            .arg(&part)
            .output()
            .unwrap();
        let dump = String::from_utf8_lossy(&dump.stdout);
        assert!(dump.contains("crust-state"), "{dump}");
        assert!(
            dump.contains("6b0e4a8e-1f0c-4d7a-9c61-2b9f6e5d4c3b"),
            "{dump}"
        );
        assert!(dump.contains("Block count:              16384"), "{dump}");
    }

    #[test]
    fn same_inputs_give_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let a = std::fs::read(make(dir.path(), "a.img", 1_700_000_000)).unwrap();
        let b = std::fs::read(make(dir.path(), "b.img", 1_700_000_000)).unwrap();
        let c = std::fs::read(make(dir.path(), "c.img", 1_700_000_001)).unwrap();
        assert!(a == b, "mke2fs output differs between identical runs");
        assert!(a != c, "the epoch does not reach the file system");
    }
}
