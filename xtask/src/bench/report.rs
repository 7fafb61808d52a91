//! The benchmark's results as data: what is measured, the goals they are held to, and the
//! JSON files under `target/crust/bench/` (one per run, named by its UTC start time, and
//! `latest.json`).
//!
//! Times are in seconds and sizes in bytes, unless a field's name says otherwise. A figure
//! that was not measured (no cold build with `--quick`, no boot without services) is
//! `null`, never zero.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use crust_format::utc::UtcTime;
use serde::{Deserialize, Serialize};

use super::stats::Series;

/// The version of this JSON layout; it changes when a field changes meaning.
pub const SCHEMA: u32 = 1;
/// The file every run also writes, holding the newest results.
pub const LATEST_JSON: &str = "latest.json";
/// The boot chart of the newest run.
pub const LATEST_SVG: &str = "latest.svg";

/// Everything one `cargo xtask bench` measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// [`SCHEMA`].
    pub schema: u32,
    /// When the run started, UTC, RFC 3339.
    pub started_at: String,
    /// The profile built and booted.
    pub profile: String,
    /// `--quick`: one iteration, no cold build.
    pub quick: bool,
    /// How many times each build and boot was repeated.
    pub iterations: usize,
    /// The machine and how busy it was.
    pub machine: Machine,
    /// Build times.
    pub build: BuildTimes,
    /// Image size.
    pub image: ImageSize,
    /// Boot times; `null` with `--no-boot`.
    pub boot: Option<BootTimes>,
    /// What the sealed `/var` costs at boot; `null` with `--no-boot` (and in reports made
    /// before it was measured).
    #[serde(default)]
    pub sealed: Option<super::sealed::SealedTimes>,
    /// What the observability agent costs at run time; `null` with `--no-boot` (and in
    /// reports from before it).
    #[serde(default)]
    pub observe: Option<ObserveCost>,
    /// The goals of issue 8 and where each stands.
    pub goals: Vec<Goal>,
}

/// The machine the figures come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// Online CPUs.
    pub cpus: usize,
    /// The CPU model (`/proc/cpuinfo`).
    pub cpu: String,
    /// One-minute load average when the run started: other work competing for the CPUs.
    pub load_before: f64,
    /// One-minute load average when the run ended.
    pub load_after: f64,
}

/// Build times of the default image (the builder's work; the init is compiled beforehand).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BuildTimes {
    /// Empty package cache and output folder: everything downloaded and built.
    pub cold: Option<Series>,
    /// The download part of the cold builds (the builder's `fetch` step: package lists
    /// and packages).
    pub cold_download: Option<Series>,
    /// Packages cached, output folder empty: everything else built again.
    pub warm: Option<Series>,
    /// Median time of each builder step over the warm builds, in pipeline order.
    pub warm_steps: Vec<Step>,
    /// Nothing changed since the last build: the builder's check and return.
    pub unchanged: Option<Series>,
    /// The same, as a user runs it: `cargo xtask build` as a whole (cargo checking xtask
    /// and the init, then the builder).
    pub unchanged_command: Option<Series>,
}

/// One builder step's median duration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// The step (`fetch`, `rootfs`, `disk`, …; `builder/src/build.rs`).
    pub name: String,
    /// Median seconds.
    pub median: f64,
}

/// The image's size and what it is made of.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageSize {
    /// Bytes `image.raw` occupies on disk (it is sparse).
    pub allocated: u64,
    /// Its length (the disk size it represents).
    pub apparent: u64,
    /// Bytes of the compressed release ([`Self::compressed_format`]).
    pub compressed: u64,
    /// The compressed format (`raw.zst`, `builder/src/formats.rs`).
    pub compressed_format: String,
    /// Seconds it took to make it.
    pub compress_seconds: f64,
    /// The allocated bytes by component; `stored` adds up to [`Self::allocated`].
    pub components: Vec<Component>,
}

/// One part of the image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Component {
    /// What it is.
    pub name: String,
    /// Where it lives: `esp`, `root`, `verity`, `state`, `disk`; a part of another
    /// component (`initramfs`) when it is inside it.
    pub place: String,
    /// Bytes it occupies in the image, as stored (compressed where its place compresses).
    /// Zero for parts of a component whose stored size is given once for the whole (the
    /// init and modules inside the zstd initramfs).
    pub stored: u64,
    /// Bytes before compression, where that differs.
    pub uncompressed: Option<u64>,
}

/// The exporter at run time, in one boot with `[metrics]` on (`bench/observe.rs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObserveCost {
    /// The accelerator QEMU used (`tcg` or `kvm`): the CPU figure is the guest's.
    pub accelerator: String,
    /// Scrapes measured.
    pub scrapes: usize,
    /// The exporter's CPU time per scrape (user and system, its own `process_` metric),
    /// milliseconds.
    pub cpu_per_scrape_ms: f64,
    /// Median time of a scrape seen from this machine (through the port forward), ms.
    pub scrape_ms: f64,
    /// The exporter's resident memory after the scrapes, bytes.
    pub exporter_resident_bytes: u64,
    /// The size of one scrape's text, bytes.
    pub scrape_bytes: u64,
}

/// Boot times.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BootTimes {
    /// The accelerator QEMU used (`tcg` or `kvm`).
    pub accelerator: String,
    /// Boots of the image measured (and as many of the floor).
    pub boots: usize,
    /// The reference floor: seconds from power-on to the floor init's line (the same
    /// kernel, firmware and boot loader; an init that only powers off).
    pub floor: Series,
    /// The floor's kernel start, seconds since power-on.
    pub floor_kernel_start: Option<Series>,
    /// The image's boot figures in boot order (medians).
    pub marks: Vec<BootMark>,
    /// The boot chart's file name (next to the JSON).
    pub chart: String,
}

/// One boot figure: medians over the boots, and the ratio to the floor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BootMark {
    /// What happened (a phase name, `kernel start`, `demo answering`, …).
    pub name: String,
    /// Guest clock: seconds since kernel start (median), for events the guest stamps.
    pub kernel: Option<f64>,
    /// Seconds since power-on (median).
    pub since_power_on: Option<f64>,
    /// `since_power_on` divided by the floor's median.
    pub ratio: Option<f64>,
    /// `since_power_on` of each boot.
    pub runs: Vec<f64>,
}

/// A goal and where the measurement stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Goal {
    /// What is held to it.
    pub name: String,
    /// The most it may be.
    pub limit: f64,
    /// The unit of `limit` and `value` (`s`, `MiB`, `x floor`).
    pub unit: String,
    /// The measured value, if measured.
    pub value: Option<f64>,
    /// Whether `value <= limit`.
    pub met: Option<bool>,
}

const MIB: f64 = (1u64 << 20) as f64;

impl Report {
    /// The goals of issue 8 against this report's figures.
    pub fn evaluate_goals(&self) -> Vec<Goal> {
        let answering = self.boot.as_ref().and_then(|b| {
            b.marks
                .iter()
                .find(|m| m.name == super::timeline::ANSWERING)
                .and_then(|m| m.ratio)
        });
        let image = (self.image.allocated > 0).then_some(&self.image);
        [
            (
                "warm build",
                10.0,
                "s",
                self.build.warm.as_ref().map(|s| s.median),
            ),
            (
                "unchanged rebuild",
                1.0,
                "s",
                self.build.unchanged.as_ref().map(|s| s.median),
            ),
            (
                "image allocated",
                64.0,
                "MiB",
                image.map(|i| i.allocated as f64 / MIB),
            ),
            (
                "image compressed",
                40.0,
                "MiB",
                image
                    .filter(|i| i.compressed > 0)
                    .map(|i| i.compressed as f64 / MIB),
            ),
            ("boot to demo answering", 1.3, "x floor", answering),
        ]
        .into_iter()
        .map(|(name, limit, unit, value)| Goal {
            name: name.to_owned(),
            limit,
            unit: unit.to_owned(),
            value,
            met: value.map(|v| v <= limit),
        })
        .collect()
    }

    /// Writes the report as `<stamp>.json` and `latest.json` in `dir`; returns the first.
    pub fn write(&self, dir: &Path, stamp: &str) -> Result<PathBuf> {
        let json = serde_json::to_string_pretty(self).context("cannot encode the report")?;
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let path = dir.join(format!("{stamp}.json"));
        for p in [&path, &dir.join(LATEST_JSON)] {
            crust_builder::output::write_atomic(p, format!("{json}\n").as_bytes())?;
        }
        Ok(path)
    }

    /// Reads a report file, checking that it has this layout.
    pub fn read(path: &Path) -> Result<Self> {
        let text =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let report: Report = serde_json::from_slice(&text)
            .with_context(|| format!("{} is not a bench report", path.display()))?;
        anyhow::ensure!(
            report.schema == SCHEMA,
            "{} has layout {} (this xtask reads {SCHEMA})",
            path.display(),
            report.schema
        );
        Ok(report)
    }
}

/// `time` as UTC: RFC 3339 (`2026-11-28T22:50:07Z`) and a file-name form
/// (`20261128T225007Z`).
pub fn utc(time: SystemTime) -> (String, String) {
    let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let t = UtcTime::from_unix(i64::try_from(secs).unwrap_or(i64::MAX));
    (t.to_string(), t.compact())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A report with every section filled, for the renderers' tests.
    pub(crate) fn sample() -> Report {
        let series = |v: &[f64]| Series::of(v.to_vec()).unwrap();
        let mut report = Report {
            schema: SCHEMA,
            started_at: "2026-11-28T22:50:07Z".into(),
            profile: "qemu".into(),
            quick: false,
            iterations: 3,
            machine: Machine {
                cpus: 2,
                cpu: "AMD EPYC".into(),
                load_before: 0.4,
                load_after: 1.1,
            },
            build: BuildTimes {
                cold: Some(series(&[40.0, 42.0, 41.0])),
                cold_download: Some(series(&[20.0, 22.0, 21.0])),
                warm: Some(series(&[8.0, 9.5, 8.5])),
                warm_steps: vec![
                    Step {
                        name: "rootfs".into(),
                        median: 3.25,
                    },
                    Step {
                        name: "release".into(),
                        median: 0.5,
                    },
                ],
                unchanged: Some(series(&[0.05, 0.04, 0.06])),
                unchanged_command: Some(series(&[0.6, 0.7, 0.65])),
            },
            image: ImageSize {
                allocated: 42 << 20,
                apparent: 3 << 30,
                compressed: 21 << 20,
                compressed_format: "raw.zst".into(),
                compress_seconds: 4.0,
                components: vec![
                    Component {
                        name: "kernel".into(),
                        place: "esp".into(),
                        stored: 13 << 20,
                        uncompressed: None,
                    },
                    Component {
                        name: "modules (28)".into(),
                        place: "initramfs".into(),
                        stored: 0,
                        uncompressed: Some(4 << 20),
                    },
                    Component {
                        name: "crun & <libs>".into(),
                        place: "root".into(),
                        stored: 29 << 20,
                        uncompressed: Some(60 << 20),
                    },
                ],
            },
            boot: Some(BootTimes {
                accelerator: "tcg".into(),
                boots: 3,
                floor: series(&[8.0, 8.2, 7.9]),
                floor_kernel_start: Some(series(&[6.8, 6.9, 6.7])),
                marks: vec![
                    BootMark {
                        name: "kernel start".into(),
                        kernel: Some(0.0),
                        since_power_on: Some(6.9),
                        ratio: Some(0.86),
                        runs: vec![6.9, 7.0, 6.8],
                    },
                    BootMark {
                        name: "demo answering".into(),
                        kernel: None,
                        since_power_on: Some(10.0),
                        ratio: Some(1.25),
                        runs: vec![10.0, 10.2, 9.9],
                    },
                ],
                chart: "20261128T225007Z.svg".into(),
            }),
            sealed: Some(crate::bench::sealed::SealedTimes {
                accelerator: "tcg".into(),
                boots: 3,
                plain: series(&[0.30, 0.32, 0.31]),
                first: series(&[1.60, 1.70, 1.65]),
                later: series(&[0.45, 0.47, 0.46]),
                first_cost: 1.34,
                later_cost: 0.15,
                random_wait_ms: Some(series(&[1000.0, 1100.0, 1050.0])),
                seal_ms: Some(series(&[41.0, 45.0, 43.0])),
                mkfs_ms: Some(series(&[200.0, 220.0, 210.0])),
                unseal_ms: Some(series(&[30.0, 34.0, 32.0])),
                dm_crypt_ms: Some(series(&[15.0, 17.0, 16.0])),
            }),
            observe: Some(ObserveCost {
                accelerator: "tcg".into(),
                scrapes: 20,
                cpu_per_scrape_ms: 30.5,
                scrape_ms: 80.0,
                exporter_resident_bytes: 1 << 20,
                scrape_bytes: 12_000,
            }),
            goals: Vec::new(),
        };
        report.goals = report.evaluate_goals();
        report
    }

    #[test]
    fn goals_follow_the_figures() {
        let r = sample();
        let goal = |name: &str| r.goals.iter().find(|g| g.name == name).unwrap().clone();
        assert_eq!(goal("warm build").value, Some(8.5));
        assert_eq!(goal("warm build").met, Some(true));
        assert_eq!(goal("image allocated").value, Some(42.0));
        assert_eq!(goal("boot to demo answering").value, Some(1.25));
        let mut slow = r.clone();
        slow.build.warm = Series::of(vec![12.0]);
        slow.boot = None;
        let goals = slow.evaluate_goals();
        assert_eq!(goals[0].met, Some(false));
        assert_eq!(goals[4].value, None);
        assert_eq!(goals[4].met, None);
    }

    #[test]
    fn reports_survive_a_trip_through_their_files() {
        let dir = tempfile::tempdir().unwrap();
        let r = sample();
        let path = r.write(dir.path(), "20261128T225007Z").unwrap();
        assert_eq!(path.file_name().unwrap(), "20261128T225007Z.json");
        assert_eq!(Report::read(&path).unwrap(), r);
        assert_eq!(Report::read(&dir.path().join(LATEST_JSON)).unwrap(), r);
        // Plain JSON that any tool reads, with nulls for what was not measured.
        let mut quick = r.clone();
        quick.build.cold = None;
        quick.write(dir.path(), "quick").unwrap();
        let value: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("quick.json")).unwrap()).unwrap();
        assert!(value["build"]["cold"].is_null());
        assert_eq!(value["build"]["warm"]["median"], 8.5);
        assert_eq!(value["sealed"]["later_cost"], 0.15);
        // A report from before the sealed /var was measured still reads.
        let mut older = value.clone();
        older.as_object_mut().unwrap().remove("sealed");
        std::fs::write(dir.path().join("older.json"), older.to_string()).unwrap();
        assert_eq!(
            Report::read(&dir.path().join("older.json")).unwrap().sealed,
            None
        );
        let mut other = value.clone();
        other["schema"] = serde_json::json!(99);
        std::fs::write(dir.path().join("x.json"), other.to_string()).unwrap();
        assert!(Report::read(&dir.path().join("x.json")).is_err());
    }

    #[test]
    fn utc_times_in_both_forms() {
        let t = UNIX_EPOCH + std::time::Duration::from_secs(1_795_902_102);
        let (iso, file) = utc(t);
        assert_eq!(iso, "2026-11-28T21:41:42Z");
        assert_eq!(file, "20261128T214142Z");
        assert_eq!(utc(UNIX_EPOCH).0, "1970-01-01T00:00:00Z");
        let leap = UNIX_EPOCH + std::time::Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(utc(leap).0, "2000-02-29T00:00:00Z");
    }
}
