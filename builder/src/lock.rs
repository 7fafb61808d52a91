//! Lock files: the exact Debian packages (version and SHA-256) a profile builds from.
//!
//! `profiles/<name>.lock` is TOML written by [`Lock::write`] and read by [`Lock::read`]. It
//! records the inputs it was resolved from (suite, mirrors, requested packages), so a build
//! can tell when the profile moved on and the lock must be refreshed, and the
//! `source-date-epoch` that stamps every file of the image unless `SOURCE_DATE_EPOCH` is set:
//! an image is as old as the package set it was built from, and two builds from one lock are
//! bit-identical without anyone exporting a variable.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

use anyhow::{Context, Result};
use crust_format::Digest;
use serde::{Deserialize, Serialize};

use crate::profile::{KernelSource, Profile};
use crate::service::ImageSource;

/// The lock file format version.
pub const LOCK_VERSION: u32 = 1;

/// Why a package is in the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Unpacked into the root file system.
    Root,
    /// Provides the kernel and its modules.
    Kernel,
    /// Provides systemd-boot and the UKI stub.
    Boot,
    /// Part of a service's image (the entry's `service` names it).
    Service,
}

/// One pinned Debian package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedPackage {
    /// Package name.
    pub name: String,
    /// Exact Debian version.
    pub version: String,
    /// Debian architecture (`amd64` or `all`).
    pub architecture: String,
    /// What the package is for.
    pub role: Role,
    /// SHA-256 of the `.deb`, as the archive's signed index lists it.
    pub sha256: String,
    /// Size of the `.deb` in bytes.
    pub size: u64,
    /// Path in the archive (`pool/…`), for people reading the lock.
    pub filename: String,
    /// The service whose image the package is part of (role `service`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

/// One pinned registry image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedImage {
    /// The service it is for.
    pub service: String,
    /// The reference as the profile writes it.
    pub reference: String,
    /// The manifest digest it resolved to (`sha256:…`).
    pub digest: String,
}

impl LockedPackage {
    /// The pinned digest.
    pub fn digest(&self) -> Result<Digest> {
        self.sha256
            .parse()
            .with_context(|| format!("lock entry {}: sha256", self.name))
    }

    /// `name=version`, the form apt takes.
    pub fn apt_spec(&self) -> String {
        format!("{}={}", self.name, self.version)
    }
}

impl fmt::Display for LockedPackage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.name, self.version)
    }
}

/// What a lock was resolved from; a profile whose inputs differ needs a new lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Inputs {
    /// Debian suite.
    pub suite: String,
    /// Main archive mirror.
    pub mirror: String,
    /// Security archive mirror (empty when not used).
    pub security_mirror: String,
    /// Archive components.
    pub components: Vec<String>,
    /// The kernel package asked for (empty for a local kernel).
    pub kernel: String,
    /// The boot package asked for.
    pub boot: String,
    /// Root packages asked for, sorted.
    pub packages: Vec<String>,
    /// Debian packages of each service image, by service.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub services: BTreeMap<String, Vec<String>>,
    /// Registry image of each service, by service.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub images: BTreeMap<String, String>,
}

impl Inputs {
    /// The inputs a profile asks for.
    pub fn of(profile: &Profile) -> Self {
        let packages: BTreeSet<String> = profile.packages.iter().map(|p| p.value.clone()).collect();
        Inputs {
            suite: profile.suite.value.clone(),
            mirror: profile.mirror.value.clone(),
            security_mirror: profile
                .security_mirror
                .as_ref()
                .map(|m| m.value.clone())
                .unwrap_or_default(),
            components: profile.components.iter().map(|c| c.value.clone()).collect(),
            kernel: match &profile.kernel.value {
                KernelSource::Package(p) => p.clone(),
                KernelSource::Local { .. } => String::new(),
            },
            boot: profile.boot_package.value.clone(),
            packages: packages.into_iter().collect(),
            services: profile
                .services
                .iter()
                .filter_map(|s| match s.image()? {
                    ImageSource::Debian(pkgs) => Some((s.name.clone(), pkgs.clone())),
                    _ => None,
                })
                .collect(),
            images: profile
                .services
                .iter()
                .filter_map(|s| match s.image()? {
                    ImageSource::Registry(r) => Some((s.name.clone(), r.clone())),
                    _ => None,
                })
                .collect(),
        }
    }

    /// A one-line description of how `self` differs from `other`, for messages.
    pub fn describe_change(&self, other: &Inputs) -> String {
        let mut changes = Vec::new();
        let old: BTreeSet<_> = other.packages.iter().collect();
        let new: BTreeSet<_> = self.packages.iter().collect();
        let added: Vec<_> = new.difference(&old).map(|s| s.as_str()).collect();
        let removed: Vec<_> = old.difference(&new).map(|s| s.as_str()).collect();
        if !added.is_empty() {
            changes.push(format!("packages added: {}", added.join(", ")));
        }
        if !removed.is_empty() {
            changes.push(format!("packages removed: {}", removed.join(", ")));
        }
        for (what, a, b) in [
            ("suite", &self.suite, &other.suite),
            ("mirror", &self.mirror, &other.mirror),
            (
                "security mirror",
                &self.security_mirror,
                &other.security_mirror,
            ),
            ("kernel", &self.kernel, &other.kernel),
            ("boot package", &self.boot, &other.boot),
        ] {
            if a != b {
                changes.push(format!("{what} {b:?} -> {a:?}"));
            }
        }
        if self.components != other.components {
            changes.push("components changed".into());
        }
        if self.services != other.services {
            changes.push("service packages changed".into());
        }
        if self.images != other.images {
            changes.push("service images changed".into());
        }
        changes.join("; ")
    }
}

/// A lock file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Lock {
    /// Format version ([`LOCK_VERSION`]).
    pub version: u32,
    /// Default timestamp of every file in the image (seconds since 1970).
    pub source_date_epoch: u64,
    /// What the lock was resolved from.
    pub inputs: Inputs,
    /// The packages, sorted by role then name.
    #[serde(rename = "package")]
    pub packages: Vec<LockedPackage>,
    /// Registry images, by service.
    #[serde(default, rename = "image", skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<LockedImage>,
}

impl Lock {
    /// Reads a lock file; `Ok(None)` if there is none.
    pub fn read(path: &Path) -> Result<Option<Lock>> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        Self::from_text(path, &text).map(Some)
    }

    /// Parses and checks the lock file `path` holds as `text` (`path` names it in errors).
    pub fn from_text(path: &Path, text: &str) -> Result<Lock> {
        let lock: Lock = toml::from_str(text).with_context(|| {
            format!(
                "{} is not a valid lock file; delete it and run `cargo xtask lock`",
                path.display()
            )
        })?;
        if lock.version != LOCK_VERSION {
            anyhow::bail!(
                "{}: lock format {} is not supported (expected {LOCK_VERSION}); run `cargo xtask lock`",
                path.display(),
                lock.version
            );
        }
        for p in &lock.packages {
            p.digest().with_context(|| path.display().to_string())?;
        }
        Ok(lock)
    }

    /// Writes the lock file atomically (a reader never sees half a file).
    pub fn write(&self, path: &Path) -> Result<()> {
        let body = toml::to_string(self).context("cannot serialise the lock")?;
        let text = format!(
            "# Pinned inputs of {}: written by `cargo xtask lock`, read by every build.\n\
             # Do not edit by hand; commit it with the profile.\n\n{body}",
            path.file_name()
                .map(|n| n.to_string_lossy().replace(".lock", ".toml"))
                .unwrap_or_default()
        );
        crate::output::write_atomic(path, text.as_bytes())
    }

    /// The packages with one role.
    pub fn with_role(&self, role: Role) -> impl Iterator<Item = &LockedPackage> {
        self.packages.iter().filter(move |p| p.role == role)
    }

    /// The single package of a role that has exactly one (kernel, boot).
    pub fn single(&self, role: Role) -> Result<&LockedPackage> {
        let mut it = self.with_role(role);
        match (it.next(), it.next()) {
            (Some(p), None) => Ok(p),
            _ => anyhow::bail!(
                "the lock file must hold exactly one {role:?} package; run `cargo xtask lock`"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Lock {
        Lock {
            version: LOCK_VERSION,
            source_date_epoch: 1_764_000_000,
            inputs: Inputs {
                suite: "bookworm".into(),
                mirror: "http://deb.debian.org/debian".into(),
                security_mirror: String::new(),
                components: vec!["main".into()],
                kernel: "linux-image-cloud-amd64".into(),
                boot: "systemd-boot-efi".into(),
                packages: vec!["crun".into()],
                services: BTreeMap::new(),
                images: BTreeMap::new(),
            },
            packages: vec![LockedPackage {
                name: "crun".into(),
                version: "1.8.1-1+deb12u1".into(),
                architecture: "amd64".into(),
                role: Role::Root,
                sha256: Digest::of(b"x").to_hex(),
                size: 1,
                filename: "pool/main/c/crun/crun_1.8.1-1+deb12u1_amd64.deb".into(),
                service: None,
            }],
            images: Vec::new(),
        }
    }

    #[test]
    fn round_trips_through_toml() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qemu.lock");
        sample().write(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# Pinned inputs of qemu.toml"));
        assert!(text.contains("[[package]]"));
        assert_eq!(Lock::read(&path).unwrap(), Some(sample()));
        assert_eq!(Lock::read(&dir.path().join("none.lock")).unwrap(), None);
    }

    #[test]
    fn describes_what_changed() {
        let old = sample().inputs;
        let mut new = old.clone();
        new.packages = vec!["busybox-static".into()];
        new.kernel = "linux-image-amd64".into();
        let d = new.describe_change(&old);
        assert!(d.contains("packages added: busybox-static"), "{d}");
        assert!(d.contains("packages removed: crun"), "{d}");
        assert!(d.contains("kernel"), "{d}");
    }
}
