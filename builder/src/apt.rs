//! Debian's own apt, run in an isolated configuration, for everything package-related.
//!
//! Crust never re-implements apt: resolving a dependency closure, reading the archive's
//! signed index and downloading `.deb` files are apt's job. The builder gives apt a private
//! configuration under the cache (`APT_CONFIG` pointing at our own `apt.conf`): its own
//! `sources.list` built from the profile, its own lists, an empty dpkg status (so the closure
//! is computed as for an empty system, not against this machine's installed packages), and
//! none of the host's `apt.conf.d`. The archive signatures are checked against Debian's
//! keyring as usual.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context, Result, bail};

use crate::profile::Profile;

/// Debian's archive keyring (package `debian-archive-keyring`).
pub const DEBIAN_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// An exact package: name, version, architecture.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PackageId {
    /// Package name.
    pub name: String,
    /// Exact version.
    pub version: String,
    /// Architecture.
    pub architecture: String,
}

/// One stanza of `apt-cache show`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    fields: BTreeMap<String, String>,
}

impl Record {
    /// A field's value (continuation lines joined with `\n`).
    pub fn get(&self, field: &str) -> Option<&str> {
        self.fields.get(field).map(String::as_str)
    }

    /// A required field.
    pub fn require(&self, field: &str) -> Result<&str> {
        self.get(field).with_context(|| {
            format!(
                "apt record of {} has no {field} field",
                self.get("Package").unwrap_or("?")
            )
        })
    }
}

/// Errors callers act on.
#[derive(Debug, thiserror::Error)]
pub enum AptError {
    /// The archive has no such package (or no installable version of it).
    #[error("Debian {suite} has no installable package {name:?}")]
    UnknownPackage {
        /// The suite searched.
        suite: String,
        /// The package.
        name: String,
    },
    /// A pinned version is no longer in the archive.
    #[error(
        "{name} {version} is no longer in the Debian archive; refresh the lock file with `cargo xtask lock`"
    )]
    VersionGone {
        /// The package.
        name: String,
        /// The version.
        version: String,
    },
}

/// apt, configured for one profile's archive.
#[derive(Debug, Clone)]
pub struct Apt {
    root: PathBuf,
    suite: String,
}

impl Apt {
    /// Prepares the isolated configuration for `profile` under `cache_root` (one directory per
    /// distinct set of sources, so profiles on the same archive share their lists).
    pub fn new(cache_root: &Path, profile: &Profile) -> Result<Self> {
        if !Path::new(DEBIAN_KEYRING).is_file() {
            bail!(
                "{DEBIAN_KEYRING} is missing; install it with `apt-get install debian-archive-keyring`"
            );
        }
        let components: Vec<&str> = profile
            .components
            .iter()
            .map(|c| c.value.as_str())
            .collect();
        let components = components.join(" ");
        let suite = &profile.suite.value;
        let mut sources = format!(
            "deb [signed-by={DEBIAN_KEYRING}] {} {suite} {components}\n\
             deb [signed-by={DEBIAN_KEYRING}] {} {suite}-updates {components}\n",
            profile.mirror.value, profile.mirror.value
        );
        if let Some(security) = &profile.security_mirror {
            sources.push_str(&format!(
                "deb [signed-by={DEBIAN_KEYRING}] {} {suite}-security {components}\n",
                security.value
            ));
        }
        let key = crust_format::Digest::of(sources.as_bytes()).short(16);
        let root = cache_root.join("apt").join(format!("{suite}-{key}"));
        for dir in [
            "etc/apt.conf.d",
            "etc/preferences.d",
            "etc/sources.list.d",
            "state/lists/partial",
            "cache/archives/partial",
            "log",
        ] {
            std::fs::create_dir_all(root.join(dir))
                .with_context(|| format!("cannot create {}", root.join(dir).display()))?;
        }
        write_if_changed(&root.join("etc/sources.list"), &sources)?;
        write_if_changed(&root.join("state/status"), "")?;
        write_if_changed(&root.join("apt.conf"), &apt_conf(&root))?;
        Ok(Self {
            root,
            suite: suite.clone(),
        })
    }

    /// True once `update` has fetched the package lists.
    pub fn has_lists(&self) -> bool {
        std::fs::read_dir(self.root.join("state/lists"))
            .map(|d| {
                d.flatten()
                    .any(|e| e.file_name().to_string_lossy().contains("_Packages"))
            })
            .unwrap_or(false)
    }

    /// Downloads the archive's package lists (`apt-get update`).
    pub fn update(&self) -> Result<()> {
        let out = self.run("apt-get", &["-q", "update"])?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() || stderr.contains("W: Failed to fetch") || stderr.contains("E: ")
        {
            bail!(
                "apt-get update failed for Debian {} (is the mirror reachable?):\n{}",
                self.suite,
                stderr.trim()
            );
        }
        Ok(())
    }

    /// The dependency closure of `packages` on an empty system, without recommends.
    pub fn resolve(&self, packages: &[String]) -> Result<Vec<PackageId>> {
        if packages.is_empty() {
            return Ok(Vec::new());
        }
        let mut args = vec!["-q", "-s", "--no-install-recommends", "install"];
        args.extend(packages.iter().map(String::as_str));
        let out = self.run("apt-get", &args)?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            if let Some(name) = unknown_package(&stderr) {
                return Err(AptError::UnknownPackage {
                    suite: self.suite.clone(),
                    name,
                }
                .into());
            }
            bail!(
                "apt cannot resolve {}:\n{}",
                packages.join(" "),
                stderr.trim()
            );
        }
        parse_simulation(&stdout)
    }

    /// The records of exact packages, or of the candidate version of names given bare.
    pub fn show(&self, specs: &[String]) -> Result<Vec<Record>> {
        let mut args = vec!["show", "--no-all-versions"];
        args.extend(specs.iter().map(String::as_str));
        let out = self.run("apt-cache", &args)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() || stderr.contains("E: ") {
            if let Some(name) = unknown_package(&stderr) {
                return Err(AptError::UnknownPackage {
                    suite: self.suite.clone(),
                    name,
                }
                .into());
            }
            bail!(
                "apt-cache show {} failed:\n{}",
                specs.join(" "),
                stderr.trim()
            );
        }
        Ok(parse_records(&String::from_utf8_lossy(&out.stdout)))
    }

    /// Starts `apt-get download` of exact packages into `dir`; the caller waits on it (and
    /// shows progress meanwhile). [`Apt::download_result`] interprets its output.
    pub fn spawn_download(&self, specs: &[String], dir: &Path) -> Result<std::process::Child> {
        let mut cmd = self.command("apt-get");
        cmd.args(["-q", "download"]).args(specs).current_dir(dir);
        // stdout only carries "Get:" lines; stderr carries the errors we interpret.
        cmd.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        cmd.spawn()
            .context("cannot run apt-get (is this a Debian system?)")
    }

    /// Turns a finished download's output into an error naming what went wrong.
    pub fn download_result(&self, out: &Output) -> Result<()> {
        if out.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        // "E: Version '1.0' for 'foo' was not found" or "Can't find a source to download
        // version '1.0' of 'foo:amd64'"
        if let Some((version, name)) = gone_version(&stderr) {
            return Err(AptError::VersionGone { name, version }.into());
        }
        bail!("apt-get download failed:\n{}", stderr.trim())
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("APT_CONFIG", self.root.join("apt.conf"))
            .env("LC_ALL", "C.UTF-8")
            .env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<Output> {
        self.command(program)
            .args(args)
            .output()
            .with_context(|| format!("cannot run {program} (is this a Debian system with apt?)"))
    }
}

fn apt_conf(root: &Path) -> String {
    let r = root.display();
    format!(
        "// Crust's private apt configuration; the host's apt.conf.d is not read.\n\
         Dir::Etc \"{r}/etc/\";\n\
         Dir::Etc::SourceList \"{r}/etc/sources.list\";\n\
         Dir::Etc::SourceParts \"{r}/etc/sources.list.d/\";\n\
         Dir::Etc::Parts \"{r}/etc/apt.conf.d/\";\n\
         Dir::Etc::Preferences \"{r}/etc/preferences\";\n\
         Dir::Etc::PreferencesParts \"{r}/etc/preferences.d/\";\n\
         Dir::State \"{r}/state/\";\n\
         Dir::State::status \"{r}/state/status\";\n\
         Dir::Cache \"{r}/cache/\";\n\
         Dir::Log \"{r}/log/\";\n\
         APT::Architecture \"amd64\";\n\
         APT::Architectures {{ \"amd64\"; }};\n\
         APT::Install-Recommends \"false\";\n\
         APT::Sandbox::User \"root\";\n\
         Debug::NoLocking \"true\";\n\
         Acquire::Languages \"none\";\n\
         Acquire::Retries \"3\";\n"
    )
}

fn write_if_changed(path: &Path, text: &str) -> Result<()> {
    if std::fs::read_to_string(path).ok().as_deref() == Some(text) {
        return Ok(());
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// Parses `apt-get -s install` output: `Inst name (version release [arch]) …` lines.
fn parse_simulation(stdout: &str) -> Result<Vec<PackageId>> {
    let mut ids = Vec::new();
    for line in stdout.lines() {
        let Some(rest) = line.strip_prefix("Inst ") else {
            continue;
        };
        let parse = || -> Option<PackageId> {
            let (name, rest) = rest.split_once(' ')?;
            let rest = rest.strip_prefix('(')?;
            let (version, rest) = rest.split_once(' ')?;
            let arch = rest.split_once('[')?.1.split_once(']')?.0;
            Some(PackageId {
                name: name.to_owned(),
                version: version.to_owned(),
                architecture: arch.to_owned(),
            })
        };
        ids.push(parse().with_context(|| format!("unexpected apt-get output: {line}"))?);
    }
    ids.sort();
    Ok(ids)
}

/// Parses deb822 stanzas (`Field: value`, continuation lines start with a space).
fn parse_records(text: &str) -> Vec<Record> {
    let mut records = Vec::new();
    let mut current = Record::default();
    let mut last: Option<String> = None;
    for line in text.lines() {
        if line.trim().is_empty() {
            if !current.fields.is_empty() {
                records.push(std::mem::take(&mut current));
            }
            last = None;
        } else if line.starts_with([' ', '\t']) {
            if let Some(field) = last.as_ref().and_then(|f| current.fields.get_mut(f)) {
                field.push('\n');
                field.push_str(line.trim());
            }
        } else if let Some((k, v)) = line.split_once(':') {
            current.fields.insert(k.to_owned(), v.trim().to_owned());
            last = Some(k.to_owned());
        }
    }
    if !current.fields.is_empty() {
        records.push(current);
    }
    records
}

fn unknown_package(stderr: &str) -> Option<String> {
    for line in stderr.lines() {
        for marker in ["Unable to locate package ", "No packages found"] {
            if let Some(rest) = line.split_once(marker).map(|(_, r)| r) {
                return Some(rest.trim().trim_matches('\'').to_owned());
            }
        }
        if let Some(rest) = line.strip_prefix("E: Package '") {
            return rest.split_once('\'').map(|(n, _)| n.to_owned());
        }
    }
    None
}

fn gone_version(stderr: &str) -> Option<(String, String)> {
    let line = stderr
        .lines()
        .find(|l| l.contains("was not found") || l.contains("Can't find a source to download"))?;
    // Both messages quote the version first, then the package: take the quoted words that
    // follow "ersion '" (the apostrophe in "Can't" comes before it).
    let start = line.find("ersion '")? + "ersion ".len();
    let quoted: Vec<&str> = line[start..].split('\'').skip(1).step_by(2).collect();
    match quoted.as_slice() {
        [version, name, ..] => Some((
            (*version).to_owned(),
            name.split(':').next().unwrap_or(name).to_owned(),
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_simulated_installs() {
        let out = "NOTE: This is only a simulation!\n\
                   Inst libgcc-s1 (12.2.0-14+deb12u1 Debian:12.15/oldstable [amd64]) []\n\
                   Inst crun (1.8.1-1+deb12u1 Debian:12.15/oldstable [amd64])\n\
                   Conf crun (1.8.1-1+deb12u1 Debian:12.15/oldstable [amd64])\n";
        let ids = parse_simulation(out).unwrap();
        assert_eq!(ids.len(), 2);
        assert_eq!(ids[0].name, "crun");
        assert_eq!(ids[1].version, "12.2.0-14+deb12u1");
        assert_eq!(ids[1].architecture, "amd64");
    }

    #[test]
    fn parses_deb822_records() {
        let text =
            "Package: a\nVersion: 1\nDescription: x\n more\n\nPackage: b\nDepends: c (= 2)\n";
        let r = parse_records(text);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].get("Description"), Some("x\nmore"));
        assert_eq!(r[1].get("Depends"), Some("c (= 2)"));
    }

    #[test]
    fn recognises_apt_errors() {
        assert_eq!(
            unknown_package("E: Unable to locate package nosuchpkg\n").as_deref(),
            Some("nosuchpkg")
        );
        assert_eq!(
            gone_version("E: Version '1.0' for 'foo' was not found\n"),
            Some(("1.0".into(), "foo".into()))
        );
        assert_eq!(
            gone_version("E: Can't find a source to download version '2.1' of 'bar:amd64'\n"),
            Some(("2.1".into(), "bar".into()))
        );
    }
}
