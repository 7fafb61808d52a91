//! Building: the static init first (with cargo), then the image (with the builder library).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use crust_builder::build::{BuildOutcome, BuildRequest};
use crust_builder::fetch::Cache;
use crust_builder::profile::{OutputFormat, Profile, show_size};
use crust_builder::release;
use crust_builder::report;
use crust_builder::sign::KeyKind;

use crate::host::{self, InitTarget};

/// The workspace root (xtask lives one level below it).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."))
        .to_path_buf()
}

/// `target/crust`: outputs, the development key, VM state.
pub fn crust_target() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"))
        .join("crust")
}

/// The profile file for a name (`qemu`) or a path.
pub fn profile_path(profile: &str) -> PathBuf {
    if profile.ends_with(".toml") || profile.contains('/') {
        PathBuf::from(profile)
    } else {
        workspace().join("profiles").join(format!("{profile}.toml"))
    }
}

/// The output folder of a profile.
pub fn out_dir(profile: &Path) -> PathBuf {
    let name = profile
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    crust_target().join(name)
}

/// The profile whose output folder `dir` is (`target/crust/<name>` of a profile in
/// `profiles/`): its path and contents; `None` for any other folder.
pub fn profile_of_output(dir: &Path) -> Result<Option<(PathBuf, Profile)>> {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let Some(name) = dir.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return Ok(None);
    };
    let profile_path = profile_path(&name);
    let is_output_folder = out_dir(&profile_path)
        .canonicalize()
        .is_ok_and(|out| out == dir);
    if !is_output_folder || !profile_path.is_file() {
        return Ok(None);
    }
    let profile = Profile::load(&profile_path)?;
    Ok(Some((profile_path, profile)))
}

/// Builds the init as a static executable and returns its path; the observability agent
/// (`crust-observe`) is built beside it by the same cargo run ([`observe_binary`]).
pub fn build_init() -> Result<PathBuf> {
    let target = host::init_target();
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace())
        .args([
            "build",
            "--quiet",
            "--package",
            "crust-init",
            "--package",
            "crust-observe",
            "--profile",
            "init",
            "--target",
        ])
        .arg(target.triple());
    match target {
        InitTarget::GlibcStatic => {
            cmd.env("RUSTFLAGS", "-C target-feature=+crt-static");
        }
        // ring (the agent's TLS primitives) has C and assembly, compiled for musl by
        // Debian's musl-gcc (host::BUILD installs musl-tools).
        InitTarget::Musl => {
            cmd.env("CC_x86_64_unknown_linux_musl", "musl-gcc");
        }
    }
    let status = cmd.status().context("cannot run cargo")?;
    if !status.success() {
        bail!("building the init failed");
    }
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"));
    Ok(target_dir.join(target.triple()).join("init").join("init"))
}

/// The observability agent [`build_init`] builds beside the init at `init`.
pub fn observe_binary(init: &Path) -> PathBuf {
    init.with_file_name("crust-observe")
}

/// The observability agent beside the init at `init`, with its crates for the SBOM.
pub fn observe_program(init: &Path) -> Result<crust_builder::build::Program> {
    Ok(crust_builder::build::Program {
        path: observe_binary(init),
        crates: Some(crates_of("crust-observe")?),
    })
}

/// The crates compiled into the init [`build_init`] builds, as cargo resolves them for its
/// target (the SBOM lists them). Asking cargo takes a quarter of a second, so the answer is
/// kept in `target/crust/init-crates/`, by the digest of what decides it: the target,
/// `Cargo.lock` and every `Cargo.toml` of the workspace.
pub fn init_crates() -> Result<Vec<crust_builder::sbom::Crate>> {
    crates_of("crust-init")
}

/// The crates of the workspace's `package`, as [`init_crates`] finds them.
fn crates_of(package: &str) -> Result<Vec<crust_builder::sbom::Crate>> {
    let target = host::init_target().triple();
    let ws = workspace();
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("cannot read {}", p.display()));
    let mut parts = vec![
        target.as_bytes().to_vec(),
        package.as_bytes().to_vec(),
        read(&ws.join("Cargo.lock"))?,
        read(&ws.join("Cargo.toml"))?,
    ];
    let mut members: Vec<PathBuf> = std::fs::read_dir(&ws)
        .with_context(|| format!("cannot list {}", ws.display()))?
        .flatten()
        .map(|e| e.path().join("Cargo.toml"))
        .filter(|p| p.is_file())
        .collect();
    members.sort();
    for m in &members {
        parts.push(m.to_string_lossy().into_owned().into_bytes());
        parts.push(read(m)?);
    }
    let key = crust_format::Digest::of_parts(parts.iter().map(Vec::as_slice));
    let kept = crust_target()
        .join("init-crates")
        .join(format!("{}.json", key.short(16)));
    if let Some(crates) = std::fs::read(&kept)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
    {
        return Ok(crates);
    }
    let crates = crust_builder::sbom::cargo::init_crates(&ws.join("Cargo.toml"), package, target)?;
    if let Some(dir) = kept.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    crust_builder::output::write_atomic(&kept, &serde_json::to_vec(&crates)?)?;
    Ok(crates)
}

fn source_date_epoch() -> Result<Option<u64>> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => Ok(Some(v.trim().parse().with_context(|| {
            format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds")
        })?)),
        Err(_) => Ok(None),
    }
}

/// Builds the init and the image of `profile` into `out` (default: `target/crust/<name>`).
pub fn build(profile: &str, out: Option<&Path>, locked: bool) -> Result<BuildOutcome> {
    build_with(profile, out, locked, &[])
}

/// [`build`], making `formats` besides the profile's output formats.
pub fn build_with(
    profile: &str,
    out: Option<&Path>,
    locked: bool,
    formats: &[OutputFormat],
) -> Result<BuildOutcome> {
    build_extras(profile, out, locked, formats, Default::default())
}

/// [`build_with`], with what some formats take besides the image (the installer's
/// user-data).
pub fn build_extras(
    profile: &str,
    out: Option<&Path>,
    locked: bool,
    formats: &[OutputFormat],
    extras: crust_builder::build::Extras,
) -> Result<BuildOutcome> {
    host::ensure(&[host::BUILD])?;
    let started = Instant::now();
    let init = build_init()?;
    let observe = observe_program(&init)?;
    let profile = profile_path(profile);
    let out_dir = out
        .map(Path::to_path_buf)
        .unwrap_or_else(|| out_dir(&profile));
    let outcome = crust_builder::build::build_with(
        &BuildRequest {
            profile,
            init,
            out_dir,
            dev_key_dir: crust_target().join("keys"),
            cache: Cache::new(Cache::default_root()),
            locked,
            source_date_epoch: source_date_epoch()?,
            init_crates: Some(init_crates()?),
            observe: Some(observe),
            extras,
        },
        formats,
    )?;
    summarize(&outcome, started);
    summarize_release(&outcome);
    summarize_sbom(&outcome);
    Ok(outcome)
}

/// One line on what the SBOM lists: Debian packages by place, crates, OCI images.
fn summarize_sbom(outcome: &BuildOutcome) {
    let Some(dir) = outcome.image.parent() else {
        return;
    };
    let doc = match crust_builder::sbom::read::load(dir) {
        Ok(doc) => doc,
        Err(e) => {
            report::warn(format!("cannot read the SBOM back: {e:#}"));
            return;
        }
    };
    let mut debs = std::collections::BTreeMap::<&str, usize>::new();
    let (mut crates, mut agent, mut images) = (0, 0, 0);
    for e in &doc.entries {
        let places: Vec<&str> = e.place.split(',').collect();
        match e.kind.as_str() {
            "deb" => *debs.entry(&e.place).or_default() += 1,
            "cargo" if places.contains(&"init") => crates += 1,
            "cargo" if places.contains(&"observe") => agent += 1,
            "oci" => images += 1,
            _ => {}
        }
    }
    let places: Vec<String> = debs.iter().map(|(p, n)| format!("{p} {n}")).collect();
    report::status(
        "SBOM",
        format!(
            "{}: {} Debian packages ({}), the init and its {crates} crates, the observability \
             agent and {agent} more, {images} OCI images",
            crust_builder::build::outputs::SBOM_SPDX,
            debs.values().sum::<usize>(),
            places.join(", "),
        ),
    );
}

fn summarize_release(outcome: &BuildOutcome) {
    let names: Vec<String> = outcome
        .release
        .iter()
        .filter_map(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .collect();
    report::status(
        "Signed",
        format!("{} over {}", release::SUMS, names.join(", ")),
    );
}

fn summarize(outcome: &BuildOutcome, started: Instant) {
    let shown = outcome
        .image
        .strip_prefix(workspace())
        .unwrap_or(&outcome.image)
        .display()
        .to_string();
    if outcome.fresh {
        report::status("Fresh", format!("{} (unchanged) {shown}", outcome.manifest));
        return;
    }
    let b = &outcome.breakdown;
    let image_len = std::fs::metadata(&outcome.image)
        .map(|m| m.len())
        .unwrap_or(0);
    report::status(
        "Finished",
        format!(
            "{} in {:.1}s",
            outcome.manifest,
            started.elapsed().as_secs_f64()
        ),
    );
    report::status(
        "Image",
        format!(
            "{shown}: {} ({} allocated)",
            show_size(image_len),
            show_size(b.allocated)
        ),
    );
    report::status(
        "Parts",
        format!(
            "UKI {} = kernel {} + initramfs {} (init {}, modules {}); root {}; verity {}",
            show_size(b.uki),
            show_size(b.kernel),
            show_size(b.initramfs),
            show_size(b.init),
            show_size(b.modules),
            show_size(b.root),
            show_size(b.verity)
        ),
    );
    if outcome.key == KeyKind::Development {
        report::warn("signed with the development key: for testing only");
    }
}
