//! The image's size: allocated bytes, the compressed release, and what the allocated bytes
//! are made of.
//!
//! Every component is measured, not estimated. The image file's extents ([`extents`]) are
//! split by partition, written and allocated-but-unwritten apart. The ESP's share is split with the builder's own figures (kernel,
//! initramfs, UKI). The root partition's share is split by reading the squashfs itself:
//! each file's data blocks carry their compressed length in its inode, and the blocks
//! that pack the tails of small files (fragments) are shared among those files by the
//! bytes each put in. Files are grouped by what they are for: the init, crun and the
//! libraries it loads (followed through `DT_NEEDED`), e2fsck and its libraries, the
//! libraries both load, each service's bundle, and the rest. What no file owns (inodes,
//! directories, tables, padding) is the squashfs metadata.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use backhand::{FilesystemReader, InnerNode, SquashfsFileReader};
use crust_builder::build::Breakdown;
use crust_builder::disk::Layout;
use crust_builder::formats::{self, Stamp};
use crust_builder::profile::OutputFormat;
use crust_format::layout::{Role, Slot};

use super::extents;
use super::report::{Component, ImageSize};

/// Where the services' bundles live in the root (`docs/FORMAT.md` §3b).
const SERVICES_DIR: &str = "usr/lib/crust/services/";
/// Where a dynamic executable's libraries are looked for, in order.
const LIBRARY_DIRS: &[&str] = &["usr/lib/x86_64-linux-gnu", "usr/lib64", "usr/lib"];
/// squashfs's "no fragment" index.
const NO_FRAGMENT: usize = u32::MAX as usize;

/// One file of the root: its length and the compressed bytes it occupies.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    /// Bytes of content.
    pub uncompressed: u64,
    /// Bytes of the squashfs it owns (its data blocks, its share of a fragment block).
    pub stored: f64,
}

/// The root file system's files and symbolic links, by path (no leading `/`).
#[derive(Debug, Default)]
pub struct RootListing {
    /// Regular files.
    pub files: BTreeMap<String, Usage>,
    /// Symbolic links and their targets.
    pub links: BTreeMap<String, String>,
    /// The libraries (sonames) each dynamic executable or library asks for.
    pub needs: BTreeMap<String, Vec<String>>,
}

/// Measures the image in `out_dir` (built with `breakdown`), making the compressed release
/// in `work`.
pub fn measure(
    out_dir: &Path,
    layout: &Layout,
    breakdown: &Breakdown,
    // Unused since the compressed release is made directly (`formats::raw_zst`); kept for
    // callers that measure with a build's stamp.
    _stamp: &Stamp,
    work: &Path,
) -> Result<ImageSize> {
    let image = out_dir.join(crust_builder::build::outputs::IMAGE);
    let meta =
        std::fs::metadata(&image).with_context(|| format!("cannot open {}", image.display()))?;
    let allocated = {
        use std::os::unix::fs::MetadataExt;
        meta.blocks() * 512
    };
    let extents = extents::of(&image)?;
    let in_partition = |role: Role| {
        let p = layout.get(role);
        extents::within(&extents, &(p.offset..p.offset + p.size))
    };

    std::fs::create_dir_all(work)?;
    let started = Instant::now();
    let compressed_path = work.join(OutputFormat::RawZst.file_name());
    formats::raw_zst(&image, &compressed_path).context("cannot make the compressed release")?;
    let compress_seconds = started.elapsed().as_secs_f64();
    let compressed = std::fs::metadata(&compressed_path)?.len();

    let root = layout.get(Role::Root(Slot::A));
    let listing = read_root(&image, root.offset)?;
    let services = service_names(&listing);
    let mut components = esp_components(breakdown, in_partition(Role::Esp).0);
    components.extend(root_components(
        &listing,
        &services,
        in_partition(Role::Root(Slot::A)).0,
    ));
    for (role, name) in [
        (Role::Verity(Slot::A), "dm-verity hash tree"),
        (Role::Root(Slot::B), "slot B root (empty until an update)"),
        (
            Role::Verity(Slot::B),
            "slot B verity (empty until an update)",
        ),
        (Role::State, "state ext4: metadata"),
    ] {
        let (written, _) = in_partition(role);
        if written > 0 || matches!(role, Role::Verity(Slot::A) | Role::State) {
            components.push(Component {
                name: name.into(),
                place: role.label().into(),
                stored: written,
                uncompressed: None,
            });
        }
    }
    for role in Role::ALL {
        let (_, unwritten) = in_partition(role);
        if unwritten > 0 {
            components.push(Component {
                name: match role {
                    Role::State => "state ext4: journal, allocated unwritten (reads as zeros)",
                    _ => "allocated unwritten (reads as zeros)",
                }
                .into(),
                place: role.label().into(),
                stored: unwritten,
                uncompressed: None,
            });
        }
    }
    let placed: u64 = components.iter().map(|c| c.stored).sum();
    components.push(Component {
        name: "partition tables, file system overhead".into(),
        place: "disk".into(),
        stored: allocated.saturating_sub(placed),
        uncompressed: None,
    });
    Ok(ImageSize {
        allocated,
        apparent: meta.len(),
        compressed,
        compressed_format: OutputFormat::RawZst.name().into(),
        compress_seconds,
        components,
    })
}

/// The ESP: the UKI's parts from the builder's figures, the rest of the partition's data
/// (systemd-boot, `loader.conf`, the FAT) by difference.
fn esp_components(b: &Breakdown, esp_bytes: u64) -> Vec<Component> {
    let part = |name: &str, place: &str, stored: u64, uncompressed: Option<u64>| Component {
        name: name.into(),
        place: place.into(),
        stored,
        uncompressed,
    };
    vec![
        part("kernel (bzImage)", "esp", b.kernel, None),
        part("initramfs (zstd cpio)", "esp", b.initramfs, None),
        part("init", "initramfs", 0, Some(b.init)),
        part("kernel modules", "initramfs", 0, Some(b.modules)),
        part(
            "UKI stub, os-release, command line",
            "esp",
            b.uki.saturating_sub(b.kernel + b.initramfs),
            None,
        ),
        part(
            "systemd-boot, loader.conf, FAT",
            "esp",
            esp_bytes.saturating_sub(b.uki),
            None,
        ),
    ]
}

/// Reads the file list of the squashfs at `offset` in `image`, with each file's share.
pub fn read_root(image: &Path, offset: u64) -> Result<RootListing> {
    let file = File::open(image)?;
    let fs = FilesystemReader::from_reader_with_offset(BufReader::new(file), offset)
        .context("cannot read the root squashfs")?;
    let fragments = fs.fragments.clone().unwrap_or_default();
    let block = u64::from(fs.block_size);
    let mut listing = RootListing::default();
    let mut seen_blocks = BTreeSet::new();
    // Fragment index -> (compressed size, tails by path).
    let mut tails: BTreeMap<usize, Vec<(String, u64)>> = BTreeMap::new();
    let mut seen_tails = BTreeSet::new();
    let mut programs: Vec<(String, SquashfsFileReader)> = Vec::new();
    for node in fs.files() {
        let path = node
            .fullpath
            .to_string_lossy()
            .trim_start_matches('/')
            .to_owned();
        match &node.inner {
            InnerNode::File(f) => {
                let len = f.file_len() as u64;
                let blocks = f.block_sizes();
                // Identical files share their blocks: count them once.
                let stored = if blocks.is_empty() || seen_blocks.insert(f.blocks_start()) {
                    blocks.iter().map(|b| u64::from(b.size())).sum::<u64>()
                } else {
                    0
                };
                if f.frag_index() != NO_FRAGMENT
                    && seen_tails.insert((f.frag_index(), f.block_offset()))
                {
                    let tail = len.saturating_sub(blocks.len() as u64 * block);
                    tails
                        .entry(f.frag_index())
                        .or_default()
                        .push((path.clone(), tail));
                }
                if ["usr/bin/", "usr/sbin/", "usr/lib"]
                    .iter()
                    .any(|dir| path.starts_with(dir))
                {
                    programs.push((path.clone(), f.clone()));
                }
                listing.files.insert(
                    path,
                    Usage {
                        uncompressed: len,
                        stored: stored as f64,
                    },
                );
            }
            InnerNode::Symlink(s) => {
                listing
                    .links
                    .insert(path, s.link.to_string_lossy().into_owned());
            }
            _ => {}
        }
    }
    for (index, files) in tails {
        let size = fragments
            .get(index)
            .map_or(0.0, |f| f64::from(f.size.size()));
        let total: u64 = files.iter().map(|(_, t)| t).sum();
        for (path, tail) in files {
            if let Some(u) = listing.files.get_mut(&path)
                && total > 0
            {
                u.stored += size * tail as f64 / total as f64;
            }
        }
    }
    for (path, f) in programs {
        let mut data = Vec::new();
        fs.file(&f)
            .reader()
            .read_to_end(&mut data)
            .with_context(|| format!("cannot read /{path} from the root squashfs"))?;
        let needs = elf_needs(&data);
        if !needs.is_empty() {
            listing.needs.insert(path, needs);
        }
    }
    Ok(listing)
}

/// The `DT_NEEDED` entries of an ELF file; none for anything else.
pub fn elf_needs(data: &[u8]) -> Vec<String> {
    use object::read::elf::{ElfFile64, FileHeader as _};
    let Ok(elf) = ElfFile64::<object::Endianness>::parse(data) else {
        return Vec::new();
    };
    let endian = elf.endian();
    let Ok(sections) = elf.elf_header().sections(endian, data) else {
        return Vec::new();
    };
    let Ok(table) = sections.dynamic_table(endian, data) else {
        return Vec::new();
    };
    table
        .iter()
        .filter(|d| d.tag == object::elf::DT_NEEDED)
        .filter_map(|d| table.string(d).ok())
        .map(|name| String::from_utf8_lossy(name).into_owned())
        .collect()
}

/// Services with a bundle in the root.
fn service_names(listing: &RootListing) -> Vec<String> {
    let mut names: Vec<String> = listing
        .files
        .keys()
        .chain(listing.links.keys())
        .filter_map(|p| p.strip_prefix(SERVICES_DIR))
        .filter_map(|rest| rest.split_once('/').map(|(name, _)| name.to_owned()))
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The root partition's data split into groups of files (see the module documentation).
fn root_components(listing: &RootListing, services: &[String], root_bytes: u64) -> Vec<Component> {
    let crun = listing.closure("usr/bin/crun");
    let e2fsck = listing.closure("usr/sbin/e2fsck");
    let group = |path: &str| -> String {
        if path == "usr/sbin/init" {
            return "init".into();
        }
        if path == crust_format::observe::AGENT_PATH {
            return "observability agent".into();
        }
        if let Some(rest) = path.strip_prefix(SERVICES_DIR) {
            let name = rest.split('/').next().unwrap_or(rest);
            if services.iter().any(|s| s == name) {
                return format!("service {name}");
            }
        }
        match (crun.contains(path), e2fsck.contains(path)) {
            (true, true) => "libraries crun and e2fsck share (libc, ...)".into(),
            (true, false) => "crun and its libraries".into(),
            (false, true) => "e2fsck and its libraries".into(),
            (false, false) => "rest of the root (other files of the packages)".into(),
        }
    };
    let mut groups: BTreeMap<String, Usage> = BTreeMap::new();
    for (path, usage) in &listing.files {
        let g = groups.entry(group(path)).or_default();
        g.uncompressed += usage.uncompressed;
        g.stored += usage.stored;
    }
    let mut order: Vec<String> = vec![
        "init".into(),
        "observability agent".into(),
        "crun and its libraries".into(),
        "e2fsck and its libraries".into(),
        "libraries crun and e2fsck share (libc, ...)".into(),
    ];
    order.extend(services.iter().map(|s| format!("service {s}")));
    order.push("rest of the root (other files of the packages)".into());
    let mut out = Vec::new();
    let mut owned = 0u64;
    for name in order {
        if let Some(u) = groups.get(&name) {
            let stored = u.stored.round() as u64;
            owned += stored;
            out.push(Component {
                name,
                place: "root".into(),
                stored,
                uncompressed: Some(u.uncompressed),
            });
        }
    }
    out.push(Component {
        name: "squashfs metadata (inodes, directories, tables), padding".into(),
        place: "root".into(),
        stored: root_bytes.saturating_sub(owned),
        uncompressed: None,
    });
    out
}

impl RootListing {
    /// `path` with symbolic links followed (relative targets from the link's folder).
    pub fn resolve(&self, path: &str) -> Option<String> {
        let mut path = path.to_owned();
        for _ in 0..16 {
            if self.files.contains_key(&path) {
                return Some(path);
            }
            // A link anywhere on the path (`lib` -> `usr/lib`) counts too.
            let (link, rest) = self.link_prefix(&path)?;
            let target = &self.links[&link];
            let base = match target.strip_prefix('/') {
                Some(absolute) => absolute.to_owned(),
                None => {
                    let dir = link.rsplit_once('/').map_or("", |(d, _)| d);
                    normalize(&format!("{dir}/{target}"))
                }
            };
            path = if rest.is_empty() {
                base
            } else {
                format!("{base}/{rest}")
            };
        }
        None
    }

    /// The longest leading part of `path` that is a symbolic link, and what follows it.
    fn link_prefix(&self, path: &str) -> Option<(String, String)> {
        let mut prefix = String::new();
        for (i, part) in path.split('/').enumerate() {
            if i > 0 {
                prefix.push('/');
            }
            prefix.push_str(part);
            if self.links.contains_key(&prefix) {
                let rest = path[prefix.len()..].trim_start_matches('/').to_owned();
                return Some((prefix, rest));
            }
        }
        None
    }

    /// `start` and every file it loads, transitively, with the links that lead to them.
    pub fn closure(&self, start: &str) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let mut todo = vec![start.to_owned()];
        while let Some(path) = todo.pop() {
            let Some(real) = self.resolve(&path) else {
                continue;
            };
            if !out.insert(real.clone()) {
                continue;
            }
            for lib in self.needs.get(&real).into_iter().flatten() {
                for dir in LIBRARY_DIRS {
                    let candidate = format!("{dir}/{lib}");
                    if self.resolve(&candidate).is_some() {
                        // The link by the library's soname is part of what it costs.
                        if self.links.contains_key(&candidate) {
                            out.insert(candidate.clone());
                        }
                        todo.push(candidate);
                        break;
                    }
                }
            }
        }
        out
    }
}

/// Collapses `.` and `..` in a relative path.
fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    parts.join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing() -> RootListing {
        let mut l = RootListing::default();
        let file = |n: u64| Usage {
            uncompressed: n,
            stored: n as f64 / 2.0,
        };
        for (path, len) in [
            ("usr/bin/crun", 400),
            ("usr/sbin/e2fsck", 300),
            ("usr/sbin/init", 900),
            ("usr/lib/x86_64-linux-gnu/libseccomp.so.2.5.4", 100),
            ("usr/lib/x86_64-linux-gnu/libc.so.6", 2000),
            ("usr/lib/x86_64-linux-gnu/libext2fs.so.2.4", 500),
            ("usr/lib/crust/services/web/rootfs/bin/busybox", 1000),
            ("usr/share/doc/x", 10),
        ] {
            l.files.insert(path.into(), file(len));
        }
        for (link, target) in [
            ("lib", "usr/lib"),
            (
                "usr/lib/x86_64-linux-gnu/libseccomp.so.2",
                "libseccomp.so.2.5.4",
            ),
            (
                "usr/lib/x86_64-linux-gnu/libext2fs.so.2",
                "libext2fs.so.2.4",
            ),
            ("usr/sbin/fsck.ext4", "e2fsck"),
            ("etc/alternatives/x", "/usr/share/doc/x"),
        ] {
            l.links.insert(link.into(), target.into());
        }
        for (path, needs) in [
            ("usr/bin/crun", vec!["libseccomp.so.2", "libc.so.6"]),
            ("usr/sbin/e2fsck", vec!["libext2fs.so.2", "libc.so.6"]),
            (
                "usr/lib/x86_64-linux-gnu/libext2fs.so.2.4",
                vec!["libc.so.6"],
            ),
        ] {
            l.needs
                .insert(path.into(), needs.into_iter().map(String::from).collect());
        }
        l
    }

    #[test]
    fn links_resolve_relative_absolute_and_through_folders() {
        let l = listing();
        assert_eq!(
            l.resolve("usr/lib/x86_64-linux-gnu/libseccomp.so.2")
                .as_deref(),
            Some("usr/lib/x86_64-linux-gnu/libseccomp.so.2.5.4")
        );
        assert_eq!(
            l.resolve("lib/x86_64-linux-gnu/libc.so.6").as_deref(),
            Some("usr/lib/x86_64-linux-gnu/libc.so.6")
        );
        assert_eq!(
            l.resolve("etc/alternatives/x").as_deref(),
            Some("usr/share/doc/x")
        );
        assert_eq!(l.resolve("usr/bin/missing"), None);
        assert_eq!(normalize("usr/lib/../bin/./x"), "usr/bin/x");
    }

    #[test]
    fn closures_follow_needed_libraries() {
        let l = listing();
        let crun = l.closure("usr/bin/crun");
        assert!(crun.contains("usr/lib/x86_64-linux-gnu/libseccomp.so.2.5.4"));
        assert!(crun.contains("usr/lib/x86_64-linux-gnu/libseccomp.so.2"));
        assert!(crun.contains("usr/lib/x86_64-linux-gnu/libc.so.6"));
        assert!(!crun.contains("usr/lib/x86_64-linux-gnu/libext2fs.so.2.4"));
        let e2fsck = l.closure("usr/sbin/e2fsck");
        assert!(e2fsck.contains("usr/lib/x86_64-linux-gnu/libext2fs.so.2.4"));
        assert!(l.closure("usr/bin/none").is_empty());
    }

    #[test]
    fn root_groups_add_up_to_the_partition() {
        let l = listing();
        let services = service_names(&l);
        assert_eq!(services, ["web"]);
        let parts = root_components(&l, &services, 10_000);
        let get = |name: &str| parts.iter().find(|c| c.name == name).unwrap().clone();
        assert_eq!(get("init").uncompressed, Some(900));
        assert_eq!(get("crun and its libraries").uncompressed, Some(500));
        assert_eq!(get("e2fsck and its libraries").uncompressed, Some(800));
        assert_eq!(
            get("libraries crun and e2fsck share (libc, ...)").uncompressed,
            Some(2000)
        );
        assert_eq!(get("service web").stored, 500);
        let total: u64 = parts.iter().map(|c| c.stored).sum();
        assert_eq!(total, 10_000, "{parts:?}");
    }

    #[test]
    fn esp_parts_add_up_to_the_partition() {
        let b = Breakdown {
            kernel: 100,
            initramfs: 20,
            uki: 130,
            init: 7,
            modules: 50,
            ..Breakdown::default()
        };
        let esp = esp_components(&b, 200);
        let stored: u64 = esp.iter().map(|c| c.stored).sum();
        assert_eq!(stored, 200);
        assert_eq!(esp[4].stored, 10, "stub and small sections");
    }

    #[test]
    fn dynamic_executables_name_their_libraries() {
        // This test binary is a dynamic glibc executable.
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let needs = elf_needs(&me);
        assert!(needs.iter().any(|n| n.starts_with("libc.so")), "{needs:?}");
        assert!(elf_needs(b"#!/bin/sh\n").is_empty());
    }
}
