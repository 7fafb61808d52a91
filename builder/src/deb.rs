//! Debian packages: reading a `.deb` (an `ar` archive holding `data.tar.{xz,zst}`) and
//! unpacking it into a [`Tree`] the way Crust's root wants it.
//!
//! Unpacking is data-only: no maintainer scripts run and no dpkg database is written (the
//! root is read-only and has no package manager). Two things dpkg-on-Debian-12 would do are
//! done here instead: the merged-`/usr` layout (`/bin`, `/sbin`, `/lib*` are symlinks into
//! `/usr`, and files packaged under them land in `/usr`), and dropping what a host without
//! people logged in never reads (documentation but each package's copyright file, manual
//! pages, info pages, translations, bug-report and lintian data).

use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::tree::{Entry, Node, Tree};

/// The kind of a packaged path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link.
    Symlink,
    /// Hard link to an earlier path of the same archive.
    HardLink,
    /// Character device.
    CharDevice,
    /// Block device.
    BlockDevice,
    /// Named pipe.
    Fifo,
}

/// Metadata of one path in a package's data archive.
#[derive(Debug, Clone)]
pub struct Meta {
    /// What it is.
    pub kind: Kind,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Target of a symlink or hard link (hard links: a path in the archive).
    pub link: Option<String>,
    /// Device numbers.
    pub device: (u32, u32),
}

/// Calls `visit` for every path of the package's data archive, in archive order, with a
/// reader over the file's bytes (empty for non-files). Paths are normalised (`usr/bin/x`).
pub fn walk_data(
    deb: &Path,
    mut visit: impl FnMut(&str, &Meta, &mut dyn Read) -> Result<()>,
) -> Result<()> {
    let mut file =
        std::fs::File::open(deb).with_context(|| format!("cannot open {}", deb.display()))?;
    check_plain_ar(&mut file)
        .with_context(|| format!("{} is not a Debian package", deb.display()))?;
    let mut archive = ar::Archive::new(std::io::BufReader::new(file));
    while let Some(member) = archive.next_entry() {
        let member =
            member.with_context(|| format!("{} is not a Debian package", deb.display()))?;
        let name = String::from_utf8_lossy(member.header().identifier()).into_owned();
        let decoder: Box<dyn Read + '_> = match name.as_str() {
            "data.tar.xz" => Box::new(liblzma::read::XzDecoder::new(member)),
            "data.tar.zst" => Box::new(zstd::stream::read::Decoder::new(member)?),
            "data.tar" => Box::new(member),
            n if n.starts_with("data.tar") => {
                bail!(
                    "{}: {n} uses a compression Crust does not read (xz and zstd are supported)",
                    deb.display()
                )
            }
            _ => continue,
        };
        walk_tar(decoder, &mut visit)
            .with_context(|| format!("{}: bad data archive", deb.display()))?;
        return Ok(());
    }
    bail!("{} has no data archive", deb.display())
}

/// Checks that `file` is an `ar` archive of plain members, as deb(5) has them, and rewinds
/// it. The `ar` crate's GNU and BSD long-name extensions (members named `/…`, `//` or
/// `#1/…`) index a name table, or allocate, by numbers read from the file, and panic on an
/// index past the table (found by `cargo xtask fuzz deb`) or ask for gigabytes; a Debian
/// package never uses them.
fn check_plain_ar(file: &mut std::fs::File) -> Result<()> {
    use std::io::{Seek, SeekFrom};
    let mut magic = [0u8; 8];
    file.read_exact(&mut magic)
        .context("it is too short to be an ar archive")?;
    if &magic != b"!<arch>\n" {
        bail!("it is not an ar archive");
    }
    let len = file.metadata()?.len();
    let mut at = 8u64;
    while at.saturating_add(60) <= len {
        let mut header = [0u8; 60];
        file.seek(SeekFrom::Start(at))?;
        file.read_exact(&mut header)?;
        let name = &header[..16];
        if name.starts_with(b"/") || name.starts_with(b"#1/") {
            bail!(
                "member {:?} uses an ar name extension, which Debian packages never do",
                String::from_utf8_lossy(name).trim_end()
            );
        }
        // A size that does not read is the ar reader's to report.
        let Some(size) = std::str::from_utf8(&header[48..58])
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
        else {
            break;
        };
        at = at
            .saturating_add(60)
            .saturating_add(size)
            .saturating_add(size % 2);
    }
    file.seek(SeekFrom::Start(0))?;
    Ok(())
}

/// Calls `visit` for every entry of a tar stream, in order, with normalised paths (the
/// archive's own `./` entry is skipped). Shared by Debian packages and OCI image layers.
pub fn walk_tar(
    stream: impl Read,
    mut visit: impl FnMut(&str, &Meta, &mut dyn Read) -> Result<()>,
) -> Result<()> {
    let mut tar = tar::Archive::new(stream);
    for entry in tar.entries()? {
        let mut entry = entry?;
        let header = entry.header();
        let kind = match header.entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => Kind::File,
            tar::EntryType::Directory => Kind::Dir,
            tar::EntryType::Symlink => Kind::Symlink,
            tar::EntryType::Link => Kind::HardLink,
            tar::EntryType::Char => Kind::CharDevice,
            tar::EntryType::Block => Kind::BlockDevice,
            tar::EntryType::Fifo => Kind::Fifo,
            // PAX and GNU extension headers are consumed by the tar crate; anything else
            // (sockets, contiguous oddities) has no place in an image.
            other => bail!("unsupported tar entry type {other:?}"),
        };
        let raw_path = entry.path()?.to_string_lossy().into_owned();
        let Ok(path) = crate::tree::normalize(&raw_path) else {
            continue; // "./" itself
        };
        let meta = Meta {
            kind,
            mode: header.mode()? & 0o7777,
            uid: header.uid()? as u32,
            gid: header.gid()? as u32,
            link: entry.link_name()?.map(|l| l.to_string_lossy().into_owned()),
            // Only device entries carry numbers; other headers may leave the fields blank.
            device: if matches!(kind, Kind::CharDevice | Kind::BlockDevice) {
                (
                    header.device_major()?.unwrap_or(0),
                    header.device_minor()?.unwrap_or(0),
                )
            } else {
                (0, 0)
            },
        };
        visit(&path, &meta, &mut entry).with_context(|| path.clone())?;
    }
    Ok(())
}

/// The tree node for a packaged path (hard links become copies of their target, which must
/// already be in `tree`; `None` if the target was left out).
pub fn node_for(
    tree: &Tree,
    meta: &Meta,
    data: &mut dyn Read,
    map: impl Fn(&str) -> String,
) -> Result<Option<Node>> {
    Ok(Some(match meta.kind {
        Kind::Dir => Node::Dir,
        Kind::File => {
            let mut buf = Vec::new();
            data.read_to_end(&mut buf)?;
            Node::File(buf.into())
        }
        Kind::Symlink => Node::Symlink(meta.link.clone().unwrap_or_default()),
        Kind::HardLink => {
            // The image formats have no hard links to offer (backhand writes none), so a
            // hard link becomes a copy; the file systems deduplicate the data.
            let target = map(&crate::tree::normalize(meta.link.as_deref().unwrap_or(""))?);
            match tree.get(&target).map(|e| &e.node) {
                Some(Node::File(d)) => Node::File(d.clone()),
                _ => return Ok(None),
            }
        }
        Kind::CharDevice => Node::CharDevice {
            major: meta.device.0,
            minor: meta.device.1,
        },
        Kind::BlockDevice => Node::BlockDevice {
            major: meta.device.0,
            minor: meta.device.1,
        },
        Kind::Fifo => Node::Fifo,
    }))
}

/// Path prefixes never unpacked into the root.
const EXCLUDED: &[&str] = &[
    "usr/share/doc/",
    "usr/share/doc-base/",
    "usr/share/man/",
    "usr/share/info/",
    "usr/share/locale/",
    "usr/share/lintian/",
    "usr/share/bug/",
    "usr/share/bash-completion/",
    "usr/share/zsh/",
    "usr/share/fish/",
];

/// Top-level directories that merged-`/usr` folds into `/usr`.
const MERGED: &[&str] = &["bin", "sbin", "lib", "lib32", "lib64", "libx32"];

/// What to leave out when unpacking: the built-in list plus the profile's prefixes.
#[derive(Debug, Clone, Default)]
pub struct Excludes {
    extra: Vec<String>,
}

impl Excludes {
    /// Adds profile prefixes such as `/usr/share/zoneinfo`.
    pub fn new(extra: impl IntoIterator<Item = String>) -> Self {
        Self {
            extra: extra
                .into_iter()
                .filter_map(|p| crate::tree::normalize(&p).ok())
                .collect(),
        }
    }

    /// True if `path` (normalised) is left out.
    pub fn excludes(&self, path: &str) -> bool {
        // Licences travel with the binaries: keep each package's copyright file.
        if path.starts_with("usr/share/doc/") && path.ends_with("/copyright") {
            return false;
        }
        let dir = format!("{path}/");
        EXCLUDED.iter().any(|p| path.starts_with(p) || dir == *p)
            || self
                .extra
                .iter()
                .any(|p| path == p || path.starts_with(&format!("{p}/")))
    }
}

/// Maps a packaged path to its merged-`/usr` place (`lib/x` -> `usr/lib/x`).
pub fn merged_usr(path: &str) -> String {
    let top = path.split('/').next().unwrap_or(path);
    if MERGED.contains(&top) {
        format!("usr/{path}")
    } else {
        path.to_owned()
    }
}

/// Adds the merged-`/usr` symlinks (`bin -> usr/bin`, …) for the folded directories that
/// exist under `usr`.
pub fn add_merged_usr_links(tree: &mut Tree) -> Result<()> {
    for top in MERGED {
        let target = format!("usr/{top}");
        let always = matches!(*top, "bin" | "sbin" | "lib");
        if always || tree.get(&target).is_some() {
            if tree.get(&target).is_none() {
                tree.insert(&target, Entry::dir(0o755))?;
            }
            tree.insert(top, Entry::symlink(target))?;
        }
    }
    Ok(())
}

/// Unpacks a package's data into `tree` (merged-`/usr`, exclusions applied). Returns the
/// bytes of files added.
pub fn unpack(tree: &mut Tree, deb: &Path, excludes: &Excludes) -> Result<u64> {
    let mut added = 0u64;
    walk_data(deb, |path, meta, data| {
        let path = merged_usr(path);
        if excludes.excludes(&path) {
            return Ok(());
        }
        let Some(node) = node_for(tree, meta, data, merged_usr)? else {
            return Ok(()); // a hard link to an excluded file
        };
        if let Node::File(d) = &node {
            added += d.len() as u64;
        }
        tree.insert(
            &path,
            Entry {
                node,
                mode: meta.mode,
                uid: meta.uid,
                gid: meta.gid,
            },
        )?;
        Ok(())
    })?;
    Ok(added)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;

    /// Builds a real package with dpkg-deb (the reference implementation of the format).
    fn dpkg_deb(dir: &Path, compression: &str) -> std::path::PathBuf {
        let root = dir.join(format!("pkg-{compression}"));
        let write = |path: &str, data: &[u8], mode: u32| {
            let p = root.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, data).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        write(
            "DEBIAN/control",
            b"Package: crust-test\nVersion: 1.0\nArchitecture: amd64\nMaintainer: t <t@t>\nDescription: test\n",
            0o644,
        );
        write("bin/tool", b"#!/bin/true\n", 0o4755);
        write("usr/lib/x86_64-linux-gnu/libt.so.1", b"ELF", 0o644);
        write("usr/share/doc/crust-test/copyright", b"MIT", 0o644);
        write("usr/share/doc/crust-test/changelog.gz", b"log", 0o644);
        write("usr/share/man/man1/tool.1.gz", b"man", 0o644);
        std::os::unix::fs::symlink("libt.so.1", root.join("usr/lib/x86_64-linux-gnu/libt.so"))
            .unwrap();
        std::fs::hard_link(root.join("bin/tool"), root.join("bin/tool-alias")).unwrap();
        let deb = dir.join(format!("t-{compression}.deb"));
        let out = Command::new("dpkg-deb")
            .args(["--root-owner-group", &format!("-Z{compression}"), "--build"])
            .arg(&root)
            .arg(&deb)
            .output()
            .expect("dpkg-deb is missing: install dpkg");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        deb
    }

    #[test]
    fn unpacks_packages_built_by_dpkg_deb() {
        let dir = tempfile::tempdir().unwrap();
        for compression in ["xz", "zstd"] {
            let deb = dpkg_deb(dir.path(), compression);
            let mut t = Tree::new();
            let bytes = unpack(&mut t, &deb, &Excludes::default()).unwrap();
            add_merged_usr_links(&mut t).unwrap();
            let tool = t.get("usr/bin/tool").expect("bin/ folded into usr/bin");
            assert_eq!((tool.mode, tool.uid, tool.gid), (0o4755, 0, 0));
            assert_eq!(tool.data(), Some(&b"#!/bin/true\n"[..]));
            assert_eq!(
                t.get("usr/bin/tool-alias").unwrap().data(),
                tool.data(),
                "hard link copied"
            );
            assert_eq!(
                t.get("usr/lib/x86_64-linux-gnu/libt.so").unwrap().node,
                Node::Symlink("libt.so.1".into())
            );
            assert!(t.get("usr/share/doc/crust-test/copyright").is_some());
            assert!(t.get("usr/share/doc/crust-test/changelog.gz").is_none());
            assert!(t.get("usr/share/man").is_none());
            assert_eq!(t.get("bin").unwrap().node, Node::Symlink("usr/bin".into()));
            assert!(bytes >= 12 + 3 + 3, "{bytes}");
        }
    }

    #[test]
    fn ar_name_extensions_are_refused_not_panicked_on() {
        // Found by `cargo xtask fuzz deb`: a member named `/1000000000000` made the ar
        // crate index its (empty) GNU name table out of range.
        let dir = tempfile::tempdir().unwrap();
        let found = dir.path().join("found.deb");
        std::fs::write(
            &found,
            include_bytes!("../../fuzz/regressions/deb/gnu-name-index-past-the-name-table"),
        )
        .unwrap();
        let e = unpack(&mut Tree::new(), &found, &Excludes::default()).unwrap_err();
        assert!(format!("{e:#}").contains("ar name extension"), "{e:#}");
        // A BSD long name, and a GNU name table asking for 9 GB.
        for name in [&b"#1/20           "[..], b"//              "] {
            let mut bytes = b"!<arch>\n".to_vec();
            bytes.extend_from_slice(name);
            bytes.extend_from_slice(b"0           0     0     100644  9999999999`\n");
            let path = dir.path().join("long.deb");
            std::fs::write(&path, &bytes).unwrap();
            let e = unpack(&mut Tree::new(), &path, &Excludes::default()).unwrap_err();
            assert!(format!("{e:#}").contains("ar name extension"), "{e:#}");
        }
    }

    #[test]
    fn excludes_docs_but_keeps_copyright() {
        let ex = Excludes::new(["/usr/share/zoneinfo".to_string()]);
        assert!(ex.excludes("usr/share/doc/crun/changelog.gz"));
        assert!(ex.excludes("usr/share/doc"));
        assert!(!ex.excludes("usr/share/doc/crun/copyright"));
        assert!(ex.excludes("usr/share/man/man1/crun.1.gz"));
        assert!(ex.excludes("usr/share/zoneinfo/UTC"));
        assert!(!ex.excludes("usr/share/zoneinfo-extra"));
        assert!(!ex.excludes("usr/bin/crun"));
    }

    #[test]
    fn merged_usr_folds_top_level_dirs() {
        assert_eq!(
            merged_usr("lib/x86_64-linux-gnu/libc.so.6"),
            "usr/lib/x86_64-linux-gnu/libc.so.6"
        );
        assert_eq!(merged_usr("lib64"), "usr/lib64");
        assert_eq!(merged_usr("library/x"), "library/x");
        let mut t = Tree::new();
        t.insert(
            "usr/lib64/ld-linux-x86-64.so.2",
            Entry::symlink("../lib/x86_64-linux-gnu/ld.so"),
        )
        .unwrap();
        add_merged_usr_links(&mut t).unwrap();
        assert_eq!(
            t.get("lib64").unwrap().node,
            Node::Symlink("usr/lib64".into())
        );
        assert_eq!(
            t.get("sbin").unwrap().node,
            Node::Symlink("usr/sbin".into())
        );
        assert!(t.get("lib32").is_none());
    }
}
