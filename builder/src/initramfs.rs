//! The initramfs: the init, the kernel modules stage 1 loads, and the signed manifest with
//! the key that verifies it, as a zstd-compressed newc cpio archive.
//!
//! Its layout is the stage-1 contract in [`crust_format::initrd`]. The module load order is
//! computed here, at build time, so the init does no dependency resolution at boot.

use std::io::Write;

use anyhow::{Context, Result};
use cpio::newc::{Builder, ModeFileType, trailer};
use crust_format::initrd;

use crate::kernel::{Kernel, ModuleSet};
use crate::tree::{Entry, Node, Tree};

/// zstd level for the initramfs. Measured on the default profile's archive (5.2 MB: init
/// and modules): level 12 takes 0.16 s, level 19 1.3 s (a third of a warm build) to make it
/// about 0.14 MB smaller, which the firmware reads in some 4 ms (it reads the UKI at about
/// 34 MB/s under TCG) and the kernel decompresses no faster. Above 12 the time doubles for
/// a few kilobytes (`docs/BENCHMARKS.md`).
const ZSTD_LEVEL: i32 = 12;

/// What goes into an initramfs.
#[derive(Debug)]
pub struct Contents<'a> {
    /// The init binary (static).
    pub init: &'a [u8],
    /// The manifest text.
    pub manifest: &'a [u8],
    /// Its detached signature.
    pub signature: &'a [u8; 64],
    /// The raw public key that must have made it.
    pub public_key: &'a [u8; 32],
    /// The kernel the modules belong to.
    pub kernel: &'a Kernel,
    /// The modules to load, in order.
    pub modules: &'a ModuleSet,
    /// os-release text, stored as `/etc/initrd-release` (the stage-1 marker).
    pub os_release: &'a str,
}

/// Lays out the initramfs tree.
pub fn tree(c: &Contents<'_>) -> Result<Tree> {
    let mut t = Tree::new();
    for dir in ["dev", "proc", "sys", "run", "sysroot", "tmp"] {
        t.insert(dir, Entry::dir(0o755))?;
    }
    // The kernel opens /dev/console for the init before devtmpfs is mounted.
    t.insert(
        "dev/console",
        Entry {
            node: Node::CharDevice { major: 5, minor: 1 },
            mode: 0o600,
            uid: 0,
            gid: 0,
        },
    )?;
    t.insert(initrd::INIT, Entry::file(c.init.to_vec(), 0o755))?;
    t.insert(
        initrd::STAGE1_MARKER,
        Entry::file(c.os_release.as_bytes().to_vec(), 0o644),
    )?;
    t.insert(initrd::MANIFEST, Entry::file(c.manifest.to_vec(), 0o644))?;
    t.insert(
        initrd::MANIFEST_SIGNATURE,
        Entry::file(c.signature.to_vec(), 0o644),
    )?;
    t.insert(
        initrd::PUBLIC_KEY,
        Entry::file(c.public_key.to_vec(), 0o644),
    )?;
    let mut order = String::new();
    for module in &c.modules.modules {
        let path = format!("lib/modules/{}/{}", c.kernel.release, module.path);
        t.insert(&path, Entry::file(c.kernel.read_module(module)?, 0o644))?;
        order.push_str(&path);
        order.push('\n');
    }
    t.insert(initrd::MODULES, Entry::file(order.into_bytes(), 0o644))?;
    Ok(t)
}

/// Writes `tree` as a newc cpio archive, every entry stamped `mtime`.
pub fn cpio(tree: &Tree, mtime: u64) -> Result<Vec<u8>> {
    let mtime =
        u32::try_from(mtime).context("SOURCE_DATE_EPOCH does not fit cpio's 32-bit time")?;
    let mut out = Vec::new();
    for (ino, (path, entry)) in tree.iter().enumerate() {
        let (kind, data, nlink, rdev): (ModeFileType, &[u8], u32, (u32, u32)) = match &entry.node {
            Node::Dir => (ModeFileType::Directory, &[], 2, (0, 0)),
            Node::File(d) => (ModeFileType::Regular, d, 1, (0, 0)),
            Node::Symlink(target) => (ModeFileType::Symlink, target.as_bytes(), 1, (0, 0)),
            Node::CharDevice { major, minor } => (ModeFileType::Char, &[], 1, (*major, *minor)),
            Node::BlockDevice { major, minor } => (ModeFileType::Block, &[], 1, (*major, *minor)),
            Node::Fifo => (ModeFileType::Fifo, &[], 1, (0, 0)),
        };
        let size =
            u32::try_from(data.len()).with_context(|| format!("{path} is too large for cpio"))?;
        let mut writer = Builder::new(path)
            .ino(ino as u32 + 1)
            .mode(entry.mode)
            .set_mode_file_type(kind)
            .uid(entry.uid)
            .gid(entry.gid)
            .nlink(nlink)
            .mtime(mtime)
            .rdev_major(rdev.0)
            .rdev_minor(rdev.1)
            .write(&mut out, size);
        writer.write_all(data)?;
        writer.finish()?;
    }
    trailer(&mut out)?;
    Ok(out)
}

/// Builds the compressed initramfs.
pub fn build(c: &Contents<'_>, mtime: u64) -> Result<Vec<u8>> {
    let archive = cpio(&tree(c)?, mtime)?;
    zstd::bulk::compress(&archive, ZSTD_LEVEL).context("cannot compress the initramfs")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    #[test]
    fn gnu_cpio_lists_the_archive() {
        let mut t = Tree::new();
        t.insert("init", Entry::file(&b"\x7fELF"[..], 0o755))
            .unwrap();
        t.insert(
            "dev/console",
            Entry {
                node: Node::CharDevice { major: 5, minor: 1 },
                mode: 0o600,
                uid: 0,
                gid: 0,
            },
        )
        .unwrap();
        t.insert("crust/manifest", Entry::file(&b"format=1\n"[..], 0o644))
            .unwrap();
        t.insert("lib/x", Entry::symlink("../init")).unwrap();
        let archive = cpio(&t, 1_700_000_000).unwrap();
        let mut child = Command::new("cpio")
            .args(["-itv", "--quiet"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cpio is missing: install the cpio package (cargo xtask test does)");
        child.stdin.take().unwrap().write_all(&archive).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let listing = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<Vec<&str>> = listing
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        let find = |name: &str| {
            lines
                .iter()
                .find(|l| l.contains(&name))
                .unwrap_or_else(|| panic!("{name} not in\n{listing}"))
        };
        assert_eq!(find("init")[0], "-rwxr-xr-x");
        assert_eq!(find("dev/console")[0], "crw-------");
        assert_eq!(find("crust/manifest")[4], "9");
        assert_eq!(find("lib/x")[0], "lrwxrwxrwx");
        assert_eq!(find("lib/x").last(), Some(&"../init"));
        assert_eq!(cpio(&t, 1_700_000_000).unwrap(), archive, "deterministic");
    }
}
