//! `cargo xtask ami`: checks the image's release, builds the AMI publisher (`ami/`) on
//! first use, and runs it.
//!
//! An image signed for Secure Boot is registered with a UEFI variable store holding the
//! key set's PK, KEK and db (`UefiData`, made by AWS's `uefivars`), so its instances start
//! with Secure Boot enforced: the keys of `--secure-boot DIR`, or of the profile whose
//! output folder holds the image.
//!
//! The publisher links the AWS SDK (through `coldsnap`), whose EC2 crate is one of the
//! largest crates there are: about 9 minutes and 8 GB of memory in release mode on two
//! cores, and rustc's peak memory even in the dev profile is 7 GB. It is therefore its own
//! cargo workspace, outside this one, built in the dev profile with unoptimised
//! dependencies (under 4 minutes; the work is network-bound) into `target/ami/`, and only
//! when an AMI is published or its test runs. `cargo build`, `cargo clippy --workspace` and
//! `cargo xtask build` never compile it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use crust_builder::release;
use crust_builder::report;
use crust_builder::secureboot::{self, KeySet};

use crate::{host, image, keys};

/// The publisher's manifest.
pub fn manifest() -> PathBuf {
    image::workspace().join("ami").join("Cargo.toml")
}

/// Its target folder.
pub fn target_dir() -> PathBuf {
    image::crust_target()
        .parent()
        .map(|t| t.join("ami"))
        .unwrap_or_else(|| image::workspace().join("target").join("ami"))
}

/// A cargo command on the publisher's workspace.
pub fn cargo(subcommand: &str) -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.arg(subcommand)
        .arg("--manifest-path")
        .arg(manifest())
        .arg("--target-dir")
        .arg(target_dir())
        .arg("--locked");
    cmd
}

/// Builds the publisher (a no-op when it is up to date) and returns its path.
pub fn build() -> Result<PathBuf> {
    let binary = target_dir().join("debug").join("crust-ami");
    if !binary.exists() {
        report::status(
            "Building",
            "the AMI publisher (first time: the AWS SDK, a few minutes)",
        );
    }
    let started = Instant::now();
    let status = cargo("build")
        .arg("--quiet")
        .status()
        .context("cannot run cargo")?;
    if !status.success() {
        bail!(
            "building the AMI publisher ({}) failed",
            manifest().display()
        );
    }
    if started.elapsed().as_secs() > 10 {
        report::status(
            "Built",
            format!(
                "the AMI publisher in {:.0} s",
                started.elapsed().as_secs_f64()
            ),
        );
    }
    Ok(binary)
}

/// What the command line asked for.
#[derive(Debug)]
pub struct Options<'a> {
    /// The raw image.
    pub image: &'a Path,
    /// The AMI name.
    pub name: &'a str,
    /// The region.
    pub region: &'a str,
    /// Another endpoint for every AWS call.
    pub endpoint_url: Option<&'a str>,
    /// The description.
    pub description: Option<&'a str>,
    /// The key the release must be signed with.
    pub key: Option<&'a Path>,
    /// The Secure Boot key folder to enrol (default: the image's profile's).
    pub secure_boot: Option<&'a Path>,
}

/// The Secure Boot keys to register the AMI with: `explicit`, else those of the profile
/// whose output folder is `dir`, if it has `[secure-boot]`.
fn secure_boot_keys(dir: &Path, explicit: Option<&Path>) -> Result<Option<KeySet>> {
    if let Some(keys) = explicit {
        return KeySet::open(keys).map(Some);
    }
    let Some((_, profile)) = image::profile_of_output(dir)? else {
        return Ok(None);
    };
    crust_builder::build::secure_boot_keys(&profile, &image::crust_target().join("keys"))
        .map(|keys| keys.map(|(keys, _)| keys))
}

/// Verifies the image against its signed release, then publishes it.
pub fn run(opts: &Options<'_>) -> Result<()> {
    let dir = match opts.image.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = opts
        .image
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .context("the image path names no file")?;
    let key = keys::verification_key(dir, opts.key)?;
    release::verify_file(dir, &name, &key).with_context(|| {
        format!(
            "{} is not a verified release; nothing was uploaded",
            opts.image.display()
        )
    })?;
    report::status(
        "Verified",
        format!("{} against the signed SHA256SUMS", opts.image.display()),
    );
    let uefi_data = match secure_boot_keys(dir, opts.secure_boot)? {
        Some(keys) => {
            let tools = host::uefi_tools()?;
            let data = secureboot::aws::uefi_data(&tools.uefivars, &keys)?;
            report::status(
                "Secure Boot",
                format!(
                    "registering with the PK, KEK and db of {} enrolled",
                    keys.dir().display()
                ),
            );
            let file = tempfile::NamedTempFile::new().context("cannot make a temporary file")?;
            std::fs::write(file.path(), data)
                .with_context(|| format!("cannot write {}", file.path().display()))?;
            Some(file)
        }
        None => None,
    };
    let binary = build()?;
    let mut cmd = Command::new(&binary);
    if let Some(file) = &uefi_data {
        cmd.arg("--uefi-data").arg(file.path());
    }
    cmd.arg("--image")
        .arg(opts.image)
        .arg("--name")
        .arg(opts.name)
        .arg("--region")
        .arg(opts.region);
    if let Some(url) = opts.endpoint_url {
        cmd.arg("--endpoint-url").arg(url);
    }
    if let Some(d) = opts.description {
        cmd.arg("--description").arg(d);
    }
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {}", binary.display()))?;
    if !status.success() {
        bail!("publishing the AMI failed");
    }
    Ok(())
}
