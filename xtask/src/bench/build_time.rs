//! Build times: cold, warm and unchanged builds of the profile, each repeated.
//!
//! - **cold**: a new, empty package cache (`CRUST_CACHE_DIR` pointed at a temporary
//!   folder) and an empty output folder: apt's package lists and every package are
//!   downloaded, the kernel unpacked, everything built. The builder's `fetch` step is the
//!   download part and is reported on its own.
//! - **warm**: the package cache as a previous build left it (packages and what is
//!   derived from a package alone: apt's lists, the unpacked kernel), an empty output
//!   folder: everything made from the profile is made again.
//! - **unchanged**: the output folder of the last warm build, nothing changed: the builder
//!   checks its inputs and returns. Also timed as a user runs it, `cargo xtask build`, which
//!   adds cargo's own up-to-date checks of xtask and the init.
//!
//! The init is compiled once before any of this; its compile time is cargo's, not the
//! builder's. Builds go to `target/crust/bench/work/`, never to the folders other commands
//! and the tests use.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use crust_builder::apt::Apt;
use crust_builder::build::{BuildOutcome, BuildRequest};
use crust_builder::fetch::{self, Cache};
use crust_builder::kernel::Kernel;
use crust_builder::lock::{Lock, Role as PackageRole};
use crust_builder::profile::{KernelSource, Profile};
use crust_builder::report;

use super::report::{BuildTimes, Step};
use super::stats::{Series, median};
use crate::image;

/// What to build and how often.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The profile file.
    pub profile: PathBuf,
    /// The init binary.
    pub init: PathBuf,
    /// The benchmark's scratch folder.
    pub work: PathBuf,
    /// Runs of each kind.
    pub iterations: usize,
    /// Whether to run cold builds.
    pub cold: bool,
    /// Whether `cargo xtask build` builds the same init (not so with `--init`), so that
    /// timing it as a whole measures an unchanged build.
    pub command: bool,
    /// The init's crates for the SBOM (`None` for an init from elsewhere).
    pub init_crates: Option<Vec<crust_builder::sbom::Crate>>,
    /// The observability agent to put into the root.
    pub observe: Option<crust_builder::build::Program>,
}

/// The build times and the last warm build (whose image the rest of the benchmark uses).
#[derive(Debug)]
pub struct Measured {
    /// The figures.
    pub times: BuildTimes,
    /// The last warm build.
    pub outcome: BuildOutcome,
    /// Its output folder.
    pub out_dir: PathBuf,
}

fn request(plan: &Plan, out_dir: &Path, cache: Cache) -> Result<BuildRequest> {
    let source_date_epoch = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => Some(
            v.trim()
                .parse()
                .with_context(|| format!("SOURCE_DATE_EPOCH={v:?} is not a number"))?,
        ),
        Err(_) => None,
    };
    Ok(BuildRequest {
        profile: plan.profile.clone(),
        init: plan.init.clone(),
        out_dir: out_dir.to_path_buf(),
        dev_key_dir: image::crust_target().join("keys"),
        cache,
        locked: true,
        source_date_epoch,
        init_crates: plan.init_crates.clone(),
        observe: plan.observe.clone(),
        extras: Default::default(),
    })
}

/// One timed build.
fn timed(req: &BuildRequest) -> Result<(f64, BuildOutcome)> {
    let started = Instant::now();
    let outcome = crust_builder::build::build(req)?;
    Ok((started.elapsed().as_secs_f64(), outcome))
}

fn step(outcome: &BuildOutcome, name: &str) -> f64 {
    outcome
        .steps
        .iter()
        .filter(|(n, _)| *n == name)
        .map(|(_, d)| d.as_secs_f64())
        .sum()
}

fn clean(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove {}", dir.display()))
        }
        _ => Ok(()),
    }
}

/// Fills the user's package cache for the profile (downloads only what is missing) and
/// unpacks its kernel, so that warm builds find what a previous build would have left.
pub fn prime(profile: &Profile, cache: &Cache) -> Result<()> {
    let lock = Lock::read(&profile.lock_path())?
        .with_context(|| format!("{} has no lock file", profile.path.display()))?;
    let apt = Apt::new(cache.root(), profile)?;
    let debs = fetch::fetch(cache, &apt, &lock)?;
    if let KernelSource::Package(_) = profile.kernel.value
        && let Some(deb) = debs.iter().find(|d| d.package.role == PackageRole::Kernel)
    {
        Kernel::from_package(cache, deb)?;
    }
    Ok(())
}

/// Runs the plan.
pub fn measure(plan: &Plan, profile: &Profile) -> Result<Measured> {
    let mut times = BuildTimes::default();
    let n = plan.iterations;
    if plan.cold {
        let out = plan.work.join("cold");
        let (mut total, mut download) = (Vec::new(), Vec::new());
        for i in 0..n {
            report::status("Bench", format!("cold build {}/{n}", i + 1));
            clean(&out)?;
            let cache_dir = tempfile::Builder::new()
                .prefix("cold-cache.")
                .tempdir_in(&plan.work)
                .context("cannot make an empty package cache")?;
            let (secs, outcome) = timed(&request(plan, &out, Cache::new(cache_dir.path()))?)?;
            total.push(secs);
            download.push(step(&outcome, "fetch"));
        }
        clean(&out)?;
        times.cold = Series::of(total);
        times.cold_download = Series::of(download);
    }

    let cache = Cache::new(Cache::default_root());
    prime(profile, &cache)?;
    let out = plan.work.join("warm");
    let mut warm = Vec::new();
    let mut steps: Vec<(&'static str, Vec<f64>)> = Vec::new();
    let mut last = None;
    for i in 0..n {
        report::status("Bench", format!("warm build {}/{n}", i + 1));
        clean(&out)?;
        let (secs, outcome) = timed(&request(plan, &out, cache.clone())?)?;
        warm.push(secs);
        for (name, d) in &outcome.steps {
            match steps.iter_mut().find(|(s, _)| s == name) {
                Some((_, v)) => v.push(d.as_secs_f64()),
                None => steps.push((name, vec![d.as_secs_f64()])),
            }
        }
        last = Some(outcome);
    }
    let outcome = last.context("no warm build ran (iterations = 0)")?;
    times.warm = Series::of(warm);
    times.warm_steps = steps
        .into_iter()
        .filter_map(|(name, v)| {
            Some(Step {
                name: name.to_owned(),
                median: median(&v)?,
            })
        })
        .collect();

    let mut unchanged = Vec::new();
    for i in 0..n {
        report::status("Bench", format!("unchanged build {}/{n}", i + 1));
        let (secs, again) = timed(&request(plan, &out, cache.clone())?)?;
        if !again.fresh {
            bail!("the unchanged build rebuilt the image: its freshness check failed");
        }
        unchanged.push(secs);
    }
    times.unchanged = Series::of(unchanged);
    if plan.command {
        times.unchanged_command = command_times(plan)?;
    }
    Ok(Measured {
        times,
        outcome,
        out_dir: out,
    })
}

/// Times `cargo xtask build` as a user runs it, into a folder of its own that a first,
/// untimed run fills. A run that rebuilds instead of finding the image unchanged (someone
/// changed the workspace meanwhile: cargo then rebuilds xtask or the init) is left out with
/// a warning; `None` if every run was.
fn command_times(plan: &Plan) -> Result<Option<Series>> {
    let out = plan.work.join("command");
    let n = plan.iterations;
    report::status("Bench", "cargo xtask build, to time it unchanged");
    xtask_build(&plan.profile, &out)?;
    let mut runs = Vec::new();
    for i in 0..n {
        report::status(
            "Bench",
            format!("cargo xtask build, unchanged {}/{n}", i + 1),
        );
        match xtask_build(&plan.profile, &out)? {
            (secs, true) => runs.push(secs),
            (_, false) => report::warn(
                "cargo xtask build rebuilt the image: the workspace changed during the \
                 benchmark; that run is left out",
            ),
        }
    }
    clean(&out)?;
    Ok(Series::of(runs))
}

/// Runs `cargo xtask build` of `profile` into `out`; returns its time and whether it found
/// the image unchanged.
fn xtask_build(profile: &Path, out: &Path) -> Result<(f64, bool)> {
    let started = Instant::now();
    let output = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(image::workspace())
        .args(["xtask", "build", "--locked", "--profile"])
        .arg(profile)
        .arg("--out")
        .arg(out)
        .stdin(Stdio::null())
        .output()
        .context("cannot run cargo xtask build")?;
    let secs = started.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        bail!("cargo xtask build failed: {}", stderr.trim());
    }
    // `image::summarize` says "Fresh" for an unchanged build.
    Ok((secs, stderr.contains("Fresh")))
}
