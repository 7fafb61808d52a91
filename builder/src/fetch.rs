//! The package cache and the lock resolution that fills it.
//!
//! `.deb` files live in `<cache>/debs/<sha256>.deb`, named by the digest the lock pins, and
//! are checked against it whenever a build reads them; a file that does not match is
//! discarded and fetched again. Downloads go through apt ([`crate::apt`]) into a scratch
//! folder and move into the cache only once verified, so an interrupted download never
//! leaves a file that looks complete. A warm cache needs no network.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use crust_format::Digest;

use crate::apt::{Apt, PackageId, Record};
use crate::lock::{Inputs, LOCK_VERSION, Lock, LockedImage, LockedPackage, Role};
use crate::profile::{KernelSource, Profile};
use crate::report;
use crate::service::ImageSource;

/// The on-disk cache shared by all builds of this user.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

/// A locally available, verified `.deb`.
#[derive(Debug, Clone)]
pub struct Deb {
    /// What the lock says about it.
    pub package: LockedPackage,
    /// The verified file.
    pub path: PathBuf,
}

impl Cache {
    /// The cache at `root` (created on first use).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// `$CRUST_CACHE_DIR`, else `$XDG_CACHE_HOME/crust`, else `~/.cache/crust`.
    pub fn default_root() -> PathBuf {
        if let Some(dir) = std::env::var_os("CRUST_CACHE_DIR") {
            return dir.into();
        }
        if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
            return PathBuf::from(dir).join("crust");
        }
        let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
        PathBuf::from(home).join(".cache/crust")
    }

    /// The cache folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the package with this SHA-256 is kept.
    pub fn deb_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("debs").join(format!("{digest}.deb"))
    }

    /// A fresh scratch folder inside the cache (same file system, so moves are renames).
    pub fn scratch(&self) -> Result<tempfile::TempDir> {
        let dir = self.root.join("tmp");
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        tempfile::tempdir_in(&dir).context("cannot create a scratch folder in the cache")
    }
}

/// Resolves a profile's packages against the archive and returns a new lock.
///
/// `source_date_epoch` is recorded in the lock (callers pass the old lock's value when the
/// package set did not change, or the current time).
pub fn resolve(apt: &Apt, profile: &Profile, source_date_epoch: u64) -> Result<Lock> {
    let bar = report::spinner(format!(
        "updating the Debian {} package lists",
        profile.suite.value
    ));
    apt.update()?;
    bar.set_message("resolving packages");

    let mut wanted: Vec<(Role, Option<String>, PackageId)> = Vec::new();
    let root_names: Vec<String> = profile.packages.iter().map(|p| p.value.clone()).collect();
    for id in apt.resolve(&root_names)? {
        wanted.push((Role::Root, None, id));
    }
    if let KernelSource::Package(name) = &profile.kernel.value {
        wanted.push((Role::Kernel, None, kernel_image_package(apt, name)?));
    }
    let boot = apt.show(std::slice::from_ref(&profile.boot_package.value))?;
    let boot = id_of(first(&boot, &profile.boot_package.value)?)?;
    wanted.push((Role::Boot, None, boot));
    let mut images = Vec::new();
    for service in &profile.services {
        let Some(image) = service.image() else {
            continue;
        };
        match image {
            ImageSource::Debian(pkgs) => {
                for id in apt.resolve(pkgs)? {
                    wanted.push((Role::Service, Some(service.name.clone()), id));
                }
            }
            ImageSource::Registry(reference) => images.push(LockedImage {
                service: service.name.clone(),
                reference: reference.clone(),
                digest: crate::oci::resolve_digest(reference)?,
            }),
            ImageSource::OciLayout { .. } => {}
        }
    }

    let mut specs: Vec<String> = wanted
        .iter()
        .map(|(_, _, id)| format!("{}={}", id.name, id.version))
        .collect();
    specs.sort();
    specs.dedup();
    let records = apt.show(&specs)?;
    let mut packages = Vec::new();
    for (role, service, id) in wanted {
        let record = records
            .iter()
            .find(|r| r.get("Package") == Some(&id.name) && r.get("Version") == Some(&id.version))
            .with_context(|| format!("apt-cache has no record of {} {}", id.name, id.version))?;
        let sha256 = record.require("SHA256")?.to_owned();
        sha256
            .parse::<Digest>()
            .with_context(|| format!("apt record of {}: SHA256", id.name))?;
        packages.push(LockedPackage {
            name: id.name,
            version: id.version,
            architecture: id.architecture,
            role,
            sha256,
            size: record.require("Size")?.parse().with_context(|| {
                format!(
                    "apt record of {}: Size",
                    record.get("Package").unwrap_or("?")
                )
            })?,
            filename: record.require("Filename")?.to_owned(),
            service: service.clone(),
        });
    }
    packages.sort_by(|a, b| (a.role, &a.service, &a.name).cmp(&(b.role, &b.service, &b.name)));
    bar.finish_and_clear();
    Ok(Lock {
        version: LOCK_VERSION,
        source_date_epoch,
        inputs: Inputs::of(profile),
        packages,
        images,
    })
}

/// Refreshes `old` for a profile whose inputs changed only in its services' images, without
/// asking apt: a service whose Debian package list another service of `old` already had
/// reuses those pinned packages, and registry images not pinned yet are looked up with
/// skopeo. `None` when the change needs apt (other packages, a new package list).
///
/// This keeps variants of a profile (a test's extra services, the admin container) on the
/// packages their base was locked with, offline.
pub fn refresh_images(old: &Lock, profile: &Profile) -> Result<Option<Lock>> {
    let inputs = Inputs::of(profile);
    let strip = |i: &Inputs| Inputs {
        services: Default::default(),
        images: Default::default(),
        ..i.clone()
    };
    if strip(&inputs) != strip(&old.inputs) {
        return Ok(None);
    }
    let mut packages: Vec<LockedPackage> = old
        .packages
        .iter()
        .filter(|p| p.role != Role::Service)
        .cloned()
        .collect();
    for (service, wanted) in &inputs.services {
        // The same service's own entry first, then any other with the same list.
        let donor = std::iter::once(service)
            .chain(old.inputs.services.keys())
            .find(|name| old.inputs.services.get(*name) == Some(wanted));
        let Some(donor) = donor else {
            return Ok(None);
        };
        packages.extend(
            old.packages
                .iter()
                .filter(|p| p.role == Role::Service && p.service.as_ref() == Some(donor))
                .map(|p| LockedPackage {
                    service: Some(service.clone()),
                    ..p.clone()
                }),
        );
    }
    packages.sort_by(|a, b| (a.role, &a.service, &a.name).cmp(&(b.role, &b.service, &b.name)));
    let mut images = Vec::new();
    for (service, reference) in &inputs.images {
        let known = old
            .images
            .iter()
            .find(|i| &i.service == service && &i.reference == reference);
        images.push(match known {
            Some(i) => i.clone(),
            None => LockedImage {
                service: service.clone(),
                reference: reference.clone(),
                digest: crate::oci::resolve_digest(reference)?,
            },
        });
    }
    Ok(Some(Lock {
        version: LOCK_VERSION,
        source_date_epoch: old.source_date_epoch,
        inputs,
        packages,
        images,
    }))
}

/// Follows a kernel metapackage (`linux-image-cloud-amd64`) to the image package it pins.
fn kernel_image_package(apt: &Apt, name: &str) -> Result<PackageId> {
    let mut name = name.to_owned();
    for _ in 0..4 {
        let records = apt.show(std::slice::from_ref(&name))?;
        let record = first(&records, &name)?;
        let pinned = record.get("Depends").and_then(|deps| {
            deps.split(',')
                .filter_map(|d| d.split('|').next())
                .map(str::trim)
                .find_map(|d| {
                    let (dep, constraint) = d.split_once(" (= ")?;
                    dep.starts_with("linux-image-")
                        .then(|| (dep.to_owned(), constraint.trim_end_matches(')').to_owned()))
                })
        });
        match pinned {
            Some((dep, _)) => name = dep,
            None => return id_of(record),
        }
    }
    bail!("kernel package {name}: metapackages nest too deeply")
}

fn first<'a>(records: &'a [Record], name: &str) -> Result<&'a Record> {
    records
        .first()
        .with_context(|| format!("apt-cache knows no package {name:?}"))
}

fn id_of(record: &Record) -> Result<PackageId> {
    Ok(PackageId {
        name: record.require("Package")?.to_owned(),
        version: record.require("Version")?.to_owned(),
        architecture: record.require("Architecture")?.to_owned(),
    })
}

/// Makes every locked package available in the cache, downloading what is missing.
pub fn fetch(cache: &Cache, apt: &Apt, lock: &Lock) -> Result<Vec<Deb>> {
    let mut debs = Vec::new();
    let mut missing = Vec::new();
    for package in &lock.packages {
        let digest = package.digest()?;
        let path = cache.deb_path(&digest);
        if path.is_file() {
            if sha256_file(&path)? == digest {
                debs.push(Deb {
                    package: package.clone(),
                    path,
                });
                continue;
            }
            report::warn(format!(
                "cached {} does not match its lock hash; fetching it again",
                path.display()
            ));
            std::fs::remove_file(&path).ok();
        }
        missing.push(package.clone());
    }
    if missing.is_empty() {
        return Ok(debs);
    }
    if !apt.has_lists() {
        let bar = report::spinner("updating the Debian package lists".to_string());
        apt.update()?;
        bar.finish_and_clear();
    }
    let total: u64 = missing.iter().map(|p| p.size).sum();
    report::status(
        "Downloading",
        format!(
            "{} packages ({})",
            missing.len(),
            crate::profile::show_size(total)
        ),
    );
    let scratch = cache.scratch()?;
    let specs: Vec<String> = missing.iter().map(LockedPackage::apt_spec).collect();
    let mut child = apt.spawn_download(&specs, scratch.path())?;
    let bar = report::bytes_bar(total, "downloading");
    // apt reports progress in its own way; we show bytes arriving in the scratch folder.
    let status = loop {
        if let Some(status) = child.try_wait().context("waiting for apt-get")? {
            break status;
        }
        bar.set_position(dir_size(scratch.path()));
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = std::process::Output {
        status,
        stdout: read_pipe(child.stdout.take()),
        stderr: read_pipe(child.stderr.take()),
    };
    bar.finish_and_clear();
    apt.download_result(&output)?;

    // Match downloads to lock entries by content, not by apt's file naming.
    let mut arrived = Vec::new();
    for entry in std::fs::read_dir(scratch.path())? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "deb") {
            arrived.push((sha256_file(&path)?, path));
        }
    }
    std::fs::create_dir_all(cache.root.join("debs"))?;
    for package in missing {
        let digest = package.digest()?;
        let Some((_, path)) = arrived.iter().find(|(d, _)| *d == digest) else {
            bail!(
                "{} downloaded from the archive does not match the lock's sha256 {}; \
                 the archive changed under the lock: run `cargo xtask lock`",
                package,
                package.sha256
            );
        };
        let dest = cache.deb_path(&digest);
        std::fs::rename(path, &dest)
            .with_context(|| format!("cannot move a download into {}", dest.display()))?;
        debs.push(Deb {
            package,
            path: dest,
        });
    }
    debs.sort_by(|a, b| (a.package.role, &a.package.name).cmp(&(b.package.role, &b.package.name)));
    Ok(debs)
}

fn read_pipe(pipe: Option<impl std::io::Read>) -> Vec<u8> {
    let mut buf = Vec::new();
    if let Some(mut p) = pipe {
        let _ = p.read_to_end(&mut buf);
    }
    buf
}

fn dir_size(dir: &Path) -> u64 {
    fn walk(dir: &Path) -> u64 {
        std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| match e.metadata() {
                        Ok(m) if m.is_dir() => walk(&e.path()),
                        Ok(m) => m.len(),
                        Err(_) => 0,
                    })
                    .sum()
            })
            .unwrap_or(0)
    }
    walk(dir)
}

/// SHA-256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<Digest> {
    use sha2::Digest as _;
    use std::io::Read;
    let mut file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(Digest(hasher.finalize().into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(dir: &Path, services: &[(&str, &str)]) -> Profile {
        let mut text = String::from(
            "[image]\nname = \"crust\"\nversion = \"0.1.0\"\n[kernel]\npackage = \"linux-image-cloud-amd64\"\n[root]\npackages = [\"crun\"]\n",
        );
        for (name, package) in services {
            text.push_str(&format!(
                "[[service]]\nname = \"{name}\"\nimage.debian = [\"{package}\"]\ncommand = [\"/bin/busybox\"]\n"
            ));
        }
        let path = dir.join("p.toml");
        std::fs::write(&path, text).unwrap();
        Profile::load(&path).unwrap()
    }

    fn package(name: &str, role: Role, service: Option<&str>) -> LockedPackage {
        LockedPackage {
            name: name.into(),
            version: "1".into(),
            architecture: "amd64".into(),
            role,
            sha256: Digest::of(name.as_bytes()).to_hex(),
            size: 1,
            filename: format!("pool/{name}.deb"),
            service: service.map(str::to_owned),
        }
    }

    #[test]
    fn service_variants_reuse_pinned_packages_without_apt() {
        let dir = tempfile::tempdir().unwrap();
        let base = profile(dir.path(), &[("web", "busybox-static")]);
        let old = Lock {
            version: LOCK_VERSION,
            source_date_epoch: 7,
            inputs: Inputs::of(&base),
            packages: vec![
                package("crun", Role::Root, None),
                package("busybox-static", Role::Service, Some("web")),
            ],
            images: Vec::new(),
        };
        let variant = profile(
            dir.path(),
            &[("web", "busybox-static"), ("admin", "busybox-static")],
        );
        let lock = refresh_images(&old, &variant)
            .unwrap()
            .expect("no apt needed");
        assert_eq!(lock.inputs, Inputs::of(&variant));
        assert_eq!(lock.source_date_epoch, 7);
        let admin: Vec<_> = lock
            .packages
            .iter()
            .filter(|p| p.service.as_deref() == Some("admin"))
            .collect();
        assert_eq!(admin.len(), 1);
        assert_eq!(admin[0].sha256, old.packages[1].sha256);

        // A package list no service had, or other root packages, need apt.
        let other = profile(dir.path(), &[("web", "bash")]);
        assert!(refresh_images(&old, &other).unwrap().is_none());
        let mut changed_root = Inputs::of(&base);
        changed_root.packages.push("e2fsprogs".into());
        let old_root = Lock {
            inputs: changed_root,
            ..old.clone()
        };
        assert!(refresh_images(&old_root, &variant).unwrap().is_none());
    }
}
