//! The root file system image: a [`Tree`] written as squashfs (zstd) with `backhand`.
//!
//! Every inode gets the build's timestamp, entries are pushed in the tree's sorted order,
//! and the image is padded to 4 KiB, which is what dm-verity's data blocks need. The data
//! blocks are compressed on all cores before backhand writes them (`parallel`); the
//! image is the same either way.

mod parallel;

use std::io::Cursor;

use anyhow::{Context, Result};
use backhand::compression::{CompressionOptions, Compressor, Zstd};
use backhand::kind::Kind;
use backhand::{FilesystemCompressor, FilesystemWriter, NodeHeader};

use crate::tree::{Node, Tree};

/// squashfs block size: the kernel's default and backhand's.
const BLOCK_SIZE: u32 = 128 * 1024;

/// Encodes a device number the way squashfs stores it (Linux `new_encode_dev`).
fn encode_dev(major: u32, minor: u32) -> u32 {
    (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12)
}

/// Writes `tree` as a squashfs image with every inode stamped `mtime`.
pub fn squashfs(tree: &Tree, mtime: u64, zstd_level: i32) -> Result<Vec<u8>> {
    let mtime =
        u32::try_from(mtime).context("SOURCE_DATE_EPOCH does not fit squashfs's 32-bit time")?;
    let mut fs = FilesystemWriter::default();
    fs.set_time(mtime);
    fs.set_block_size(BLOCK_SIZE);
    fs.set_root_mode(0o755);
    fs.set_root_uid(0);
    fs.set_root_gid(0);
    let compressor = FilesystemCompressor::new(
        Compressor::Zstd,
        Some(CompressionOptions::Zstd(Zstd {
            compression_level: zstd_level.unsigned_abs(),
        })),
    )
    .context("invalid squashfs compression settings")?;
    fs.set_compressor(compressor);
    // Compressed ahead on all cores; `MEMO` hands backhand the results (dropped at the end).
    let _ahead = parallel::Precompressed::new(tree, compressor, BLOCK_SIZE)
        .context("cannot compress the root file system")?;
    fs.set_kind(Kind::new_v4(&parallel::MEMO));
    for (path, entry) in tree.iter() {
        let header = NodeHeader::new(entry.mode as u16, entry.uid, entry.gid, mtime);
        let pushed = match &entry.node {
            Node::Dir => fs.push_dir(path, header),
            Node::File(data) => fs.push_file(Cursor::new(data.clone()), path, header),
            Node::Symlink(target) => fs.push_symlink(target, path, header),
            Node::CharDevice { major, minor } => {
                fs.push_char_device(encode_dev(*major, *minor), path, header)
            }
            Node::BlockDevice { major, minor } => {
                fs.push_block_device(encode_dev(*major, *minor), path, header)
            }
            Node::Fifo => fs.push_fifo(path, header),
        };
        pushed.with_context(|| format!("squashfs: cannot add /{path}"))?;
    }
    let mut out = Cursor::new(Vec::new());
    fs.write(&mut out)
        .context("cannot write the squashfs image")?;
    Ok(out.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::Entry;
    use backhand::compression::CompressionAction;
    use std::process::Command;

    fn sample() -> Tree {
        let mut t = Tree::new();
        t.insert("usr/bin/hello", Entry::file(&b"#!/bin/true\n"[..], 0o755))
            .unwrap();
        t.insert("usr/lib/big", Entry::file(vec![7u8; 300_000], 0o644))
            .unwrap();
        t.insert("bin", Entry::symlink("usr/bin")).unwrap();
        t.insert("tmp", Entry::dir(0o1777)).unwrap();
        t.insert(
            "usr/bin/su",
            Entry {
                uid: 0,
                gid: 0,
                ..Entry::file(&b"x"[..], 0o4755)
            },
        )
        .unwrap();
        t.insert(
            "home/user/f",
            Entry {
                uid: 1000,
                gid: 1000,
                ..Entry::file(&b"y"[..], 0o600)
            },
        )
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
        t
    }

    fn tool(name: &str) -> &str {
        assert!(
            Command::new("sh")
                .args(["-c", &format!("command -v {name}")])
                .output()
                .unwrap()
                .status
                .success(),
            "{name} is missing: install squashfs-tools (cargo xtask test does)"
        );
        name
    }

    #[test]
    fn unsquashfs_lists_what_was_written() {
        let img = squashfs(&sample(), 1_700_000_000, 15).unwrap();
        assert_eq!(img.len() % 4096, 0, "padded for dm-verity");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("root.sqfs");
        std::fs::write(&path, &img).unwrap();
        let out = Command::new(tool("unsquashfs"))
            .args(["-lln", "-d", ""])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let listing = String::from_utf8_lossy(&out.stdout);
        // Columns: mode, owner, size (or major,minor), date, time, path [-> target].
        let row = |path: &str| -> Vec<String> {
            listing
                .lines()
                .map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
                .find(|cols| cols.iter().any(|c| c == path))
                .unwrap_or_else(|| panic!("{path} missing from\n{listing}"))
        };
        assert_eq!(
            row("/usr/bin/hello")[..5],
            ["-rwxr-xr-x", "0/0", "12", "2023-11-14", "22:13"]
        );
        assert_eq!(row("/usr/bin/su")[0], "-rwsr-xr-x");
        assert_eq!(row("/bin")[5..], ["/bin", "->", "usr/bin"]);
        assert_eq!(row("/tmp")[0], "drwxrwxrwt");
        assert_eq!(row("/home/user/f")[..3], ["-rw-------", "1000/1000", "1"]);
        assert_eq!(row("/dev/console")[..4], ["crw-------", "0/0", "5,", "1"]);
        let out = Command::new("unsquashfs")
            .args(["-s"])
            .arg(&path)
            .output()
            .unwrap();
        let sb = String::from_utf8_lossy(&out.stdout);
        assert!(sb.contains("Compression zstd"), "{sb}");
        // Extract and compare content.
        let x = dir.path().join("x");
        let ok = Command::new("unsquashfs")
            .arg("-no-xattrs")
            .arg("-d")
            .arg(&x)
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            ok.status.success(),
            "{}",
            String::from_utf8_lossy(&ok.stderr)
        );
        assert_eq!(
            std::fs::read(x.join("usr/lib/big")).unwrap(),
            vec![7u8; 300_000]
        );
    }

    /// `squashfs` without the parallel compression: backhand alone.
    fn sequential(tree: &Tree, mtime: u32, level: u32) -> Vec<u8> {
        let mut fs = FilesystemWriter::default();
        fs.set_time(mtime);
        fs.set_block_size(BLOCK_SIZE);
        fs.set_root_mode(0o755);
        fs.set_root_uid(0);
        fs.set_root_gid(0);
        fs.set_compressor(
            FilesystemCompressor::new(
                Compressor::Zstd,
                Some(CompressionOptions::Zstd(Zstd {
                    compression_level: level,
                })),
            )
            .unwrap(),
        );
        for (path, entry) in tree.iter() {
            let header = NodeHeader::new(entry.mode as u16, entry.uid, entry.gid, mtime);
            match &entry.node {
                Node::Dir => fs.push_dir(path, header),
                Node::File(data) => fs.push_file(Cursor::new(data.clone()), path, header),
                Node::Symlink(target) => fs.push_symlink(target, path, header),
                Node::CharDevice { major, minor } => {
                    fs.push_char_device(encode_dev(*major, *minor), path, header)
                }
                Node::BlockDevice { major, minor } => {
                    fs.push_block_device(encode_dev(*major, *minor), path, header)
                }
                Node::Fifo => fs.push_fifo(path, header),
            }
            .unwrap();
        }
        let mut out = Cursor::new(Vec::new());
        fs.write(&mut out).unwrap();
        out.into_inner()
    }

    #[test]
    fn parallel_compression_changes_no_byte() {
        // Files of every kind of layout: fragments that fill up and spill over, files of
        // exactly one block, several blocks with a short tail, a hole, duplicates, and
        // names whose byte order differs from their path order (`a-b` and `a/b`).
        let mut t = sample();
        let noise = |seed: u64, len: usize| -> Vec<u8> {
            let mut x = seed | 1;
            (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x % 7) as u8
                })
                .collect()
        };
        let block = BLOCK_SIZE as usize;
        for (i, len) in [100, 70_000, 70_000, 1, block, 3 * block + 5, 50_000]
            .into_iter()
            .enumerate()
        {
            t.insert(
                &format!("data/f{i}"),
                Entry::file(noise(i as u64, len), 0o644),
            )
            .unwrap();
        }
        let mut holey = noise(9, 2 * block);
        holey.extend(vec![0; block]);
        t.insert("data/holey", Entry::file(holey, 0o644)).unwrap();
        t.insert("data/copy", Entry::file(noise(5, 3 * block + 5), 0o644))
            .unwrap();
        t.insert("a-b", Entry::file(noise(11, 90_000), 0o644))
            .unwrap();
        t.insert("a/b", Entry::file(noise(12, 90_000), 0o644))
            .unwrap();
        let image = squashfs(&t, 7, 15).unwrap();
        assert_eq!(image, sequential(&t, 7, 15));
        // The plan foresaw the writer: every block compressed ahead is in the image.
        let ahead = parallel::planned_blocks(&t, block);
        assert!(ahead.len() > 10, "{}", ahead.len());
        let fc = FilesystemCompressor::new(
            Compressor::Zstd,
            Some(CompressionOptions::Zstd(Zstd {
                compression_level: 15,
            })),
        )
        .unwrap();
        for planned in &ahead {
            let mut compressed = backhand::compression::DefaultCompressor
                .compress(planned, fc, BLOCK_SIZE)
                .unwrap();
            if compressed.len() > planned.len() {
                // Stored as it is when compression does not help.
                compressed = planned.clone();
            }
            assert!(
                image.windows(compressed.len()).any(|w| w == compressed),
                "a planned block of {} bytes is not in the image",
                planned.len()
            );
        }
    }

    #[test]
    fn same_tree_gives_same_bytes() {
        assert_eq!(
            squashfs(&sample(), 5, 3).unwrap(),
            squashfs(&sample(), 5, 3).unwrap()
        );
        assert_ne!(
            squashfs(&sample(), 5, 3).unwrap(),
            squashfs(&sample(), 6, 3).unwrap()
        );
    }
}
