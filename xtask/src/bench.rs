//! `cargo xtask bench`: build time, image size and boot time of a profile, measured the
//! same way every time (issue 8), with the goals they are held to.
//!
//! One run builds the profile cold, warm and unchanged ([`build_time`]), measures the
//! image it made ([`size`]), and boots it and the reference floor ([`floor`]) in turns
//! ([`boot`]), reading each console as a timeline ([`timeline`]), and measures what the
//! sealed `/var` costs at boot ([`sealed`]). Every figure is the
//! median of `--iterations` runs ([`stats`]). The results go to the terminal as tables
//! ([`table`]) and to `target/crust/bench/` as JSON ([`report`]) with an SVG boot chart
//! ([`chart`]) of the median boot next to it; `latest.json` and `latest.svg` are the
//! newest. `docs/BENCHMARKS.md` explains every number.

mod boot;
mod build_time;
mod chart;
mod extents;
mod floor;
mod observe;
mod report;
mod sealed;
mod size;
mod stats;
mod table;
mod timeline;

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, Result};
use crust_builder::disk::{self, Sizes};
use crust_builder::fetch::Cache;
use crust_builder::formats::Stamp;
use crust_builder::lock::Lock;
use crust_builder::profile::Profile;
use crust_builder::report as say;
use crust_format::Manifest;

use self::report::{BootMark, BootTimes, LATEST_SVG, Machine, Report, SCHEMA};
use self::stats::{Series, median};
use self::timeline::{Mark, Timeline};
use crate::{host, image};

/// The goal for booting to the demo service, as a multiple of the floor.
pub const BOOT_GOAL_RATIO: f64 = 1.3;
/// The guest port of the demo service (`profiles/qemu.toml`'s web service).
pub const DEMO_PORT: u16 = 80;

/// Options of `cargo xtask bench`.
#[derive(Debug, Clone)]
pub struct Options {
    /// Profile name or path.
    pub profile: String,
    /// Runs of each build kind and boots of each disk.
    pub iterations: usize,
    /// Whether cold builds (downloads included) are measured.
    pub cold: bool,
    /// Whether boots are measured.
    pub boot: bool,
    /// Set by `--quick` (recorded in the report).
    pub quick: bool,
    /// Where results go (default `target/crust/bench`).
    pub out: Option<PathBuf>,
    /// A prebuilt init binary instead of building the workspace's.
    pub init: Option<PathBuf>,
}

/// Runs the benchmark and writes its report; returns the JSON file's path.
pub fn run(opts: &Options) -> Result<PathBuf> {
    host::ensure(&[host::BUILD, host::QEMU])?;
    let started = SystemTime::now();
    let (started_at, stamp) = report::utc(started);
    let dir = opts
        .out
        .clone()
        .unwrap_or_else(|| image::crust_target().join("bench"));
    let work = dir.join("work");
    std::fs::create_dir_all(&work).with_context(|| format!("cannot create {}", work.display()))?;
    let load_before = load_average();

    let built = match &opts.init {
        Some(path) => path.clone(),
        None => image::build_init()?,
    };
    // A copy: a cargo build elsewhere may replace the original while this runs, and every
    // build here must see the same init.
    let init = work.join("init");
    std::fs::copy(&built, &init)
        .with_context(|| format!("cannot copy the init {}", built.display()))?;
    // The observability agent beside it, copied likewise (with its crates when it is the
    // workspace's).
    let observe = match image::observe_binary(&built) {
        agent if agent.is_file() => {
            let copy = image::observe_binary(&init);
            std::fs::copy(&agent, &copy)
                .with_context(|| format!("cannot copy {}", agent.display()))?;
            Some(crust_builder::build::Program {
                path: copy,
                crates: match &opts.init {
                    Some(_) => None,
                    None => image::observe_program(&built)?.crates,
                },
            })
        }
        _ => None,
    };
    let floor_init = if opts.boot {
        Some(floor::build_init()?)
    } else {
        None
    };
    let profile_path = image::profile_path(&opts.profile);
    let profile = Profile::load(&profile_path)?;
    let measured = build_time::measure(
        &build_time::Plan {
            profile: profile_path.clone(),
            init,
            work: work.clone(),
            iterations: opts.iterations,
            cold: opts.cold,
            command: opts.init.is_none(),
            init_crates: match &opts.init {
                Some(_) => None,
                None => Some(image::init_crates()?),
            },
            observe,
        },
        &profile,
    )?;

    say::status("Bench", "image size");
    let manifest = &measured.outcome.manifest;
    let lock = Lock::read(&profile.lock_path())?
        .with_context(|| format!("{} has no lock file", profile.path.display()))?;
    let layout = disk::plan(
        Sizes {
            esp: profile.esp_size.value,
            root: profile.root_size.value,
            verity: profile.verity_size.value,
            state: profile.state_size.value,
        },
        &manifest.verity.root_hash,
        &manifest.build_id,
    );
    let image_size = size::measure(
        &measured.out_dir,
        &layout,
        &measured.outcome.breakdown,
        &Stamp {
            build_id: manifest.build_id,
            epoch: lock.source_date_epoch,
        },
        &work.join("release"),
    )?;

    let boot = match floor_init {
        Some(floor_init) => Some(boots(&BootPlan {
            profile: &profile,
            out_dir: &measured.out_dir,
            manifest,
            floor_init: &floor_init,
            work: &work,
            results: &dir,
            stamp: &stamp,
            iterations: opts.iterations,
        })?),
        None => None,
    };
    let sealed = if opts.boot {
        let kernel = measured.out_dir.join(crust_builder::build::outputs::KERNEL);
        let accel = crust_vm::accel::detect(&kernel, &image::crust_target())?;
        Some(sealed::measure(
            &profile,
            &work.join("init"),
            &work,
            accel,
            opts.iterations,
        )?)
    } else {
        None
    };

    let observe = match &boot {
        Some(b) => {
            say::status("Bench", "the exporter at run time");
            let accel = match b.accelerator.as_str() {
                "kvm" => crust_vm::Accel::Kvm,
                _ => crust_vm::Accel::Tcg,
            };
            Some(observe::measure(
                &measured.out_dir.join(crust_builder::build::outputs::IMAGE),
                &work.join("observe"),
                accel,
                if opts.quick { 20 } else { 100 },
            )?)
        }
        None => None,
    };

    let mut report = Report {
        schema: SCHEMA,
        started_at,
        profile: profile.name.clone(),
        quick: opts.quick,
        iterations: opts.iterations,
        machine: Machine {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu: cpu_model(),
            load_before,
            load_after: load_average(),
        },
        build: measured.times,
        image: image_size,
        boot,
        sealed,
        observe,
        goals: Vec::new(),
    };
    report.goals = report.evaluate_goals();
    let path = report.write(&dir, &stamp)?;
    check_outputs(&path, &dir, report.boot.as_ref())?;
    eprintln!();
    print!("{}", table::render(&report));
    say::status("Wrote", format!("{}", path.display()));
    Ok(path)
}

/// Reads back what was written: the JSON must parse as a report, the chart must be
/// well-formed. (`--quick` in `cargo xtask test` relies on this.)
fn check_outputs(json: &Path, dir: &Path, boot: Option<&BootTimes>) -> Result<()> {
    Report::read(json)?;
    if let Some(b) = boot {
        for name in [b.chart.as_str(), LATEST_SVG] {
            let path = dir.join(name);
            let svg = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            chart::check_well_formed(&svg)
                .map_err(|e| anyhow::anyhow!("{} is not well-formed: {e}", path.display()))?;
        }
    }
    Ok(())
}

/// What the boot measurements need.
struct BootPlan<'a> {
    profile: &'a Profile,
    out_dir: &'a Path,
    manifest: &'a Manifest,
    floor_init: &'a Path,
    work: &'a Path,
    results: &'a Path,
    stamp: &'a str,
    iterations: usize,
}

/// Boots the image and the floor `iterations` times each, in turns (so that a change in
/// the machine's load hits both alike), and writes the chart of the median boot.
fn boots(plan: &BootPlan<'_>) -> Result<BootTimes> {
    let kernel = plan.out_dir.join(crust_builder::build::outputs::KERNEL);
    let accel = crust_vm::accel::detect(&kernel, &image::crust_target())?;
    let floor_dir = plan.work.join("floor");
    std::fs::create_dir_all(&floor_dir)?;
    let floor_disk = floor_dir.join("floor.raw");
    say::status("Bench", "reference floor disk");
    floor::write_disk(
        &floor::Parts {
            profile: plan.profile,
            cache: &Cache::new(Cache::default_root()),
            kernel: &kernel,
            kernel_release: &plan.manifest.kernel_release,
            init: plan.floor_init,
        },
        &floor_disk,
    )?;
    let services: Vec<String> = plan
        .profile
        .services
        .iter()
        .map(|s| s.name.clone())
        .collect();
    let demo_port = (!services.is_empty()).then_some(DEMO_PORT);
    let image = plan.out_dir.join(crust_builder::build::outputs::IMAGE);
    let n = plan.iterations;
    let mut image_boots: Vec<(Timeline, Option<f64>)> = Vec::new();
    let mut floor_boots: Vec<Timeline> = Vec::new();
    for i in 0..n {
        say::status(
            "Bench",
            format!("boot {}/{n} of the image ({accel})", i + 1),
        );
        let capture = boot::run(&boot::Boot {
            disk: &image,
            work: &plan.work.join("boot"),
            accel,
            demo_port,
            until: boot::Until::Up,
            secure_boot: None,
            tpm: None,
            keep_disk: false,
        })?;
        image_boots.push((Timeline::read(&capture.lines, &services), capture.answered));
        say::status(
            "Bench",
            format!("boot {}/{n} of the reference floor", i + 1),
        );
        let capture = boot::run(&boot::Boot {
            disk: &floor_disk,
            work: &floor_dir,
            accel,
            demo_port: None,
            until: boot::Until::Exit,
            secure_boot: None,
            tpm: None,
            keep_disk: false,
        })?;
        floor_boots.push(Timeline::read(&capture.lines, &[]));
    }
    let floor_runs: Vec<f64> = floor_boots
        .iter()
        .filter_map(|t| {
            t.phase(crust_format::phase::Phase::Init)
                .and_then(|at| t.on_host(at))
        })
        .collect();
    let floor = Series::of(floor_runs)
        .context("the reference floor never printed its init line (see work/floor/console.log)")?;
    let floor_kernel_start =
        Series::of(floor_boots.iter().filter_map(|t| t.kernel_start).collect());
    let marks = combine(
        &image_boots
            .iter()
            .map(|(t, answered)| t.marks(*answered))
            .collect::<Vec<_>>(),
        floor.median,
    );

    // The chart shows the boot whose end (the demo's answer, else its last phase) is the
    // median one.
    let end = |(t, answered): &(Timeline, Option<f64>)| {
        answered
            .or_else(|| t.phases.last().and_then(|(_, at)| t.on_host(*at)))
            .unwrap_or(0.0)
    };
    let ends: Vec<f64> = image_boots.iter().map(end).collect();
    let middle = median(&ends).unwrap_or(0.0);
    let chosen = image_boots
        .iter()
        .min_by(|a, b| (end(a) - middle).abs().total_cmp(&(end(b) - middle).abs()))
        .context("no boot was measured")?;
    let svg = chart::render(&chart::Chart {
        title: format!(
            "Crust boot: profile {}, {} {}, {accel} (boot nearest the median of {n}; floor {:.2} s)",
            plan.profile.name, plan.manifest.name, plan.manifest.version, floor.median
        ),
        timeline: &chosen.0,
        answered: chosen.1,
        floor: Some(floor.median),
        goal_ratio: BOOT_GOAL_RATIO,
    });
    let chart_name = format!("{}.svg", plan.stamp);
    for name in [chart_name.as_str(), LATEST_SVG] {
        crust_builder::output::write_atomic(&plan.results.join(name), svg.as_bytes())?;
    }
    Ok(BootTimes {
        accelerator: accel.as_str().into(),
        boots: n,
        floor,
        floor_kernel_start,
        marks,
        chart: chart_name,
    })
}

/// The medians of each mark over several boots, in the order of the boot with the most
/// marks, each also as a ratio to the floor.
fn combine(boots: &[Vec<Mark>], floor: f64) -> Vec<BootMark> {
    let mut names: Vec<&str> = Vec::new();
    if let Some(longest) = boots.iter().max_by_key(|m| m.len()) {
        names = longest.iter().map(|m| m.name.as_str()).collect();
    }
    names
        .into_iter()
        .map(|name| {
            let of = |f: fn(&Mark) -> Option<f64>| -> Vec<f64> {
                boots
                    .iter()
                    .filter_map(|b| b.iter().find(|m| m.name == name).and_then(f))
                    .collect()
            };
            let runs = of(|m| m.since_power_on);
            let since_power_on = median(&runs);
            BootMark {
                name: name.to_owned(),
                kernel: median(&of(|m| m.kernel)),
                since_power_on,
                ratio: since_power_on.filter(|_| floor > 0.0).map(|s| s / floor),
                runs,
            }
        })
        .collect()
}

/// The one-minute load average, or 0 if unknown.
fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

/// The CPU model name from `/proc/cpuinfo`.
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::timeline::ANSWERING;

    fn mark(name: &str, kernel: Option<f64>, since: Option<f64>) -> Mark {
        Mark {
            name: name.into(),
            kernel,
            since_power_on: since,
        }
    }

    #[test]
    fn boots_combine_into_medians_and_ratios() {
        let boots = vec![
            vec![
                mark("kernel start", Some(0.0), Some(5.0)),
                mark("init", Some(1.0), Some(6.0)),
                mark(ANSWERING, None, Some(9.0)),
            ],
            vec![
                mark("kernel start", Some(0.0), Some(5.4)),
                mark("init", Some(1.2), Some(6.6)),
            ],
            vec![
                mark("kernel start", Some(0.0), Some(5.2)),
                mark("init", Some(1.1), Some(6.3)),
                mark(ANSWERING, None, Some(10.0)),
            ],
        ];
        let marks = combine(&boots, 8.0);
        assert_eq!(marks.len(), 3);
        assert_eq!(marks[1].name, "init");
        assert_eq!(marks[1].kernel, Some(1.1));
        assert_eq!(marks[1].since_power_on, Some(6.3));
        assert_eq!(marks[1].runs, [6.0, 6.6, 6.3]);
        // Only the boots that saw it count.
        assert_eq!(marks[2].since_power_on, Some(9.5));
        assert_eq!(marks[2].ratio, Some(9.5 / 8.0));
        assert_eq!(marks[2].kernel, None);
        assert!(combine(&[], 8.0).is_empty());
    }
}
