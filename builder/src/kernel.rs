//! The kernel: its image, its release, and the closure of the modules a profile wants.
//!
//! A kernel comes from a Debian package or from a local image plus module tree. Debian's
//! packages do not ship `modules.dep` (dpkg's postinst runs `depmod`), so for a package the
//! builder writes one itself, as `depmod` would, from the `depends=` records modpost leaves
//! in every module's `.modinfo` section. Unpacked kernels are cached by the package's
//! SHA-256, so a warm build reads only the handful of modules it needs. From there both
//! sources go the same way: [`Kernel::module_closure`] reads `modules.dep` and
//! `modules.builtin` and orders the wanted modules and their dependencies for loading.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use object::{Object, ObjectSection};

use crate::deb::{self, Kind};
use crate::fetch::{Cache, Deb};
use crate::profile::{Located, ProfileError};

/// Modules the init itself needs on every machine, whatever the profile says: the root
/// file system, dm-verity, the EFI variables that name the boot disk, the `/etc` overlay,
/// the state file system, the power button, and the file systems of NoCloud seeds (FAT
/// with the kernel's default code page and I/O character set, ISO 9660), and loop devices
/// for a network boot's images.
pub const INIT_MODULES: &[&str] = &[
    "squashfs",
    "dm_verity",
    "efivarfs",
    "overlay",
    "ext4",
    "button",
    "evdev",
    "vfat",
    "nls_cp437",
    "nls_ascii",
    "isofs",
    // Network boot: the fetched root and verity images become block devices.
    "loop",
];

/// An unpacked kernel.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// `uname -r`, e.g. `6.1.0-56-cloud-amd64`.
    pub release: String,
    /// The bzImage.
    pub image: PathBuf,
    /// `…/lib/modules/<release>`, holding `modules.dep` and `modules.builtin`.
    pub modules_dir: PathBuf,
}

/// One module to load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    /// Module name (`virtio_blk`).
    pub name: String,
    /// Path relative to the module directory (`kernel/drivers/block/virtio_blk.ko`).
    pub path: String,
}

/// The modules to load, dependencies first, and the wanted names that are built in.
#[derive(Debug, Clone, Default)]
pub struct ModuleSet {
    /// In load order.
    pub modules: Vec<Module>,
    /// Wanted names the kernel has built in (nothing to load).
    pub builtin: Vec<String>,
}

/// `dm-verity` and `dm_verity` are the same module.
pub fn module_name(s: &str) -> String {
    s.replace('-', "_")
}

fn name_of_path(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    module_name(file.split(".ko").next().unwrap_or(file))
}

impl Kernel {
    /// Unpacks a kernel package into the cache (once per package digest) and returns it.
    pub fn from_package(cache: &Cache, deb: &Deb) -> Result<Self> {
        let dir = cache.root().join("kernels").join(&deb.package.sha256);
        if !dir.join(".complete").is_file() {
            let scratch = cache.scratch()?;
            unpack_package(&deb.path, scratch.path())
                .with_context(|| format!("cannot unpack kernel package {}", deb.package))?;
            std::fs::File::create(scratch.path().join(".complete"))?;
            if dir.exists() {
                std::fs::remove_dir_all(&dir)?;
            }
            std::fs::create_dir_all(dir.parent().unwrap_or(Path::new(".")))?;
            std::fs::rename(scratch.keep(), &dir)
                .with_context(|| format!("cannot move the unpacked kernel to {}", dir.display()))?;
        }
        let release = std::fs::read_to_string(dir.join("release"))?
            .trim()
            .to_owned();
        Ok(Self {
            image: dir.join("vmlinuz"),
            modules_dir: dir.join("lib/modules").join(&release),
            release,
        })
    }

    /// A kernel from this machine's files; the module tree needs `depmod`'s `modules.dep`.
    pub fn from_local(image: &Path, modules_dir: &Path) -> Result<Self> {
        if !modules_dir.join("modules.dep").is_file() {
            bail!(
                "{} has no modules.dep; run `depmod -b <root> <release>` for that tree first",
                modules_dir.display()
            );
        }
        let release = modules_dir
            .file_name()
            .and_then(|n| n.to_str())
            .context("the module directory must be named after the kernel release")?
            .to_owned();
        Ok(Self {
            release,
            image: image.to_path_buf(),
            modules_dir: modules_dir.to_path_buf(),
        })
    }

    /// The wanted modules plus [`INIT_MODULES`] and all their dependencies, in load order
    /// (each module after everything it depends on; otherwise in the order asked).
    pub fn module_closure(&self, wanted: &[Located<String>]) -> Result<ModuleSet> {
        let dep_path = self.modules_dir.join("modules.dep");
        let dep_text = std::fs::read_to_string(&dep_path)
            .with_context(|| format!("cannot read {}", dep_path.display()))?;
        let deps = parse_modules_dep(&dep_text);
        let by_name: BTreeMap<String, &str> =
            deps.keys().map(|p| (name_of_path(p), p.as_str())).collect();
        let builtin: BTreeSet<String> =
            std::fs::read_to_string(self.modules_dir.join("modules.builtin"))
                .unwrap_or_default()
                .lines()
                .map(name_of_path)
                .collect();

        let mut set = ModuleSet::default();
        let mut placed = BTreeSet::new();
        let init = INIT_MODULES.iter().map(|m| (m.to_string(), None));
        let asked = wanted.iter().map(|m| (m.value.clone(), Some(m)));
        for (raw, located) in init.chain(asked) {
            let name = module_name(&raw);
            let Some(path) = by_name.get(&name) else {
                if builtin.contains(&name) {
                    if !set.builtin.contains(&name) {
                        set.builtin.push(name);
                    }
                    continue;
                }
                let message = format!(
                    "{raw:?} is neither a module nor built into kernel {}{}",
                    self.release,
                    suggest(&name, by_name.keys())
                );
                return Err(match located {
                    Some(l) => ProfileError::Invalid {
                        at: l.at.clone(),
                        field: "kernel.modules".into(),
                        message,
                    }
                    .into(),
                    None => anyhow::anyhow!(message),
                });
            };
            visit(path, &deps, &mut placed, &mut set.modules, 0)?;
        }
        Ok(set)
    }

    /// Reads a module file (path relative to the module directory).
    pub fn read_module(&self, module: &Module) -> Result<Vec<u8>> {
        let path = self.modules_dir.join(&module.path);
        std::fs::read(&path).with_context(|| format!("cannot read module {}", path.display()))
    }
}

fn visit(
    path: &str,
    deps: &BTreeMap<String, Vec<String>>,
    placed: &mut BTreeSet<String>,
    out: &mut Vec<Module>,
    depth: usize,
) -> Result<()> {
    if placed.contains(path) {
        return Ok(());
    }
    if depth > 64 {
        bail!("modules.dep has a dependency cycle through {path}");
    }
    for dep in deps.get(path).map(Vec::as_slice).unwrap_or_default() {
        if !deps.contains_key(dep) {
            bail!("modules.dep: {path} depends on {dep}, which is not listed");
        }
        visit(dep, deps, placed, out, depth + 1)?;
    }
    placed.insert(path.to_owned());
    out.push(Module {
        name: name_of_path(path),
        path: path.to_owned(),
    });
    Ok(())
}

fn suggest<'a>(name: &str, known: impl Iterator<Item = &'a String>) -> String {
    let close: Vec<&str> = known
        .filter(|k| k.contains(name) || name.contains(k.as_str()))
        .map(String::as_str)
        .take(4)
        .collect();
    if close.is_empty() {
        String::new()
    } else {
        format!(" (similar: {})", close.join(", "))
    }
}

/// Parses `modules.dep`: `path: dep dep …` per line.
fn parse_modules_dep(text: &str) -> BTreeMap<String, Vec<String>> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(m, deps)| {
            (
                m.trim().to_owned(),
                deps.split_whitespace().map(str::to_owned).collect(),
            )
        })
        .collect()
}

/// Extracts the kernel image and module tree of a Debian kernel package into `dir` and
/// writes `modules.dep` and `release`.
fn unpack_package(deb_path: &Path, dir: &Path) -> Result<()> {
    let mut release = None;
    let mut found_image = false;
    deb::walk_data(deb_path, |path, meta, data| {
        if meta.kind != Kind::File {
            return Ok(());
        }
        if let Some(rel) = path.strip_prefix("boot/vmlinuz-") {
            release = Some(rel.to_owned());
            found_image = true;
            return copy_to(data, &dir.join("vmlinuz"));
        }
        let Some(rest) = path.strip_prefix("lib/modules/") else {
            return Ok(());
        };
        let keep = rest.ends_with(".ko")
            || rest.ends_with("/modules.builtin")
            || rest.ends_with("/modules.order");
        if keep {
            copy_to(data, &dir.join("lib/modules").join(rest))?;
        } else if rest.ends_with(".ko.xz") || rest.ends_with(".ko.zst") {
            bail!("compressed modules are not supported yet ({rest})");
        }
        Ok(())
    })?;
    let Some(release) = release.filter(|_| found_image) else {
        bail!(
            "{} holds no boot/vmlinuz-*: not a kernel image package",
            deb_path.display()
        );
    };
    let modules_dir = dir.join("lib/modules").join(&release);
    write_modules_dep(&modules_dir)?;
    std::fs::write(dir.join("release"), format!("{release}\n"))?;
    Ok(())
}

fn copy_to(data: &mut dyn Read, dest: &Path) -> Result<()> {
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut out = std::fs::File::create(dest)?;
    std::io::copy(data, &mut out)?;
    out.flush()?;
    Ok(())
}

/// Writes `modules.dep` for a module tree from each module's `.modinfo` `depends=` record,
/// listing every module's full transitive dependencies, deepest last, as `depmod` does.
fn write_modules_dep(modules_dir: &Path) -> Result<()> {
    let mut direct: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut walk = vec![modules_dir.to_path_buf()];
    while let Some(dir) = walk.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                walk.push(path);
            } else if path.extension().is_some_and(|e| e == "ko") {
                let rel = path
                    .strip_prefix(modules_dir)?
                    .to_string_lossy()
                    .into_owned();
                let bytes = std::fs::read(&path)?;
                let deps = modinfo_depends(&bytes).with_context(|| format!("module {rel}"))?;
                direct.insert(rel, deps);
            }
        }
    }
    let by_name: BTreeMap<String, String> = direct
        .keys()
        .map(|p| (name_of_path(p), p.clone()))
        .collect();
    let mut text = String::new();
    for (path, deps) in &direct {
        let mut closure: Vec<String> = Vec::new();
        let mut queue: Vec<&String> = deps.iter().collect();
        while let Some(dep) = queue.pop() {
            let Some(dep_path) = by_name.get(&module_name(dep)) else {
                bail!("module {path} depends on {dep}, which the package does not ship");
            };
            if !closure.contains(dep_path) {
                closure.push(dep_path.clone());
                queue.extend(direct.get(dep_path).into_iter().flatten());
            }
        }
        text.push_str(path);
        text.push(':');
        for dep in &closure {
            text.push(' ');
            text.push_str(dep);
        }
        text.push('\n');
    }
    std::fs::write(modules_dir.join("modules.dep"), text)?;
    Ok(())
}

/// The `depends=` list of a module's `.modinfo` section (empty names dropped).
fn modinfo_depends(ko: &[u8]) -> Result<Vec<String>> {
    let file = object::File::parse(ko).context("not an ELF module")?;
    let Some(section) = file.section_by_name(".modinfo") else {
        return Ok(Vec::new());
    };
    let data = section.data().context("unreadable .modinfo")?;
    Ok(data
        .split(|&b| b == 0)
        .filter_map(|field| field.strip_prefix(b"depends="))
        .flat_map(|deps| {
            String::from_utf8_lossy(deps)
                .split(',')
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter(|d| !d.is_empty())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::Origin;
    use std::sync::Arc;

    fn located(s: &str) -> Located<String> {
        Located {
            value: s.into(),
            at: Origin {
                file: Arc::from(Path::new("p.toml")),
                line: 7,
            },
        }
    }

    fn fake_kernel(dir: &Path) -> Kernel {
        let modules = dir.join("6.1.0-test");
        std::fs::create_dir_all(&modules).unwrap();
        std::fs::write(
            modules.join("modules.dep"),
            "kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko\n\
             kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko\n\
             kernel/drivers/virtio/virtio_ring.ko:\n\
             kernel/fs/squashfs/squashfs.ko:\n\
             kernel/drivers/md/dm-verity.ko: kernel/drivers/md/dm-bufio.ko kernel/drivers/md/dm-mod.ko\n\
             kernel/drivers/md/dm-bufio.ko:\n\
             kernel/drivers/md/dm-mod.ko:\n\
             kernel/fs/efivarfs/efivarfs.ko:\n\
             kernel/drivers/acpi/button.ko:\n\
             kernel/drivers/input/evdev.ko:\n\
             kernel/fs/overlayfs/overlay.ko:\n\
             kernel/fs/ext4/ext4.ko: kernel/fs/jbd2/jbd2.ko\n\
             kernel/fs/jbd2/jbd2.ko:\n\
             kernel/fs/fat/fat.ko:\n\
             kernel/fs/fat/vfat.ko: kernel/fs/fat/fat.ko\n\
             kernel/fs/nls/nls_cp437.ko:\n\
             kernel/fs/nls/nls_ascii.ko:\n\
             kernel/fs/isofs/isofs.ko: kernel/drivers/cdrom/cdrom.ko\n\
             kernel/drivers/cdrom/cdrom.ko:\n\
             kernel/drivers/block/loop.ko:\n",
        )
        .unwrap();
        std::fs::write(
            modules.join("modules.builtin"),
            "kernel/drivers/nvme/host/nvme.ko\n",
        )
        .unwrap();
        Kernel::from_local(Path::new("/dev/null"), &modules).unwrap()
    }

    #[test]
    fn closure_orders_dependencies_first() {
        let dir = tempfile::tempdir().unwrap();
        let k = fake_kernel(dir.path());
        let set = k
            .module_closure(&[located("virtio-blk"), located("nvme")])
            .unwrap();
        let names: Vec<_> = set.modules.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "squashfs",
                "dm_bufio",
                "dm_mod",
                "dm_verity",
                "efivarfs",
                "overlay",
                "jbd2",
                "ext4",
                "button",
                "evdev",
                "fat",
                "vfat",
                "nls_cp437",
                "nls_ascii",
                "cdrom",
                "isofs",
                "loop",
                "virtio_ring",
                "virtio",
                "virtio_blk"
            ]
        );
        assert_eq!(set.builtin, ["nvme"]);
    }

    #[test]
    fn unknown_modules_name_the_profile_line() {
        let dir = tempfile::tempdir().unwrap();
        let k = fake_kernel(dir.path());
        assert!(k.module_closure(&[located("virtio")]).is_ok());
        let err = k.module_closure(&[located("virtio_bk")]).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("p.toml:7: kernel.modules"), "{msg}");
        assert!(msg.contains("virtio_bk"), "{msg}");
    }
}
