//! `cargo xtask fuzz`: coverage-guided fuzzing of the parsers of untrusted bytes
//! (docs/ROBUSTNESS.md).
//!
//! The targets are cargo-fuzz's (libFuzzer) in `fuzz/`, a workspace of its own that needs
//! a nightly toolchain: on first use the command installs it through rustup and
//! `cargo-fuzz` from crates.io, saying so. Each target runs for its time against a working
//! copy of its committed corpus (`fuzz/corpus/<target>/`) under `target/fuzz/`; then what
//! it found is merged back into the committed corpus, minimised (libFuzzer's
//! `-set_cover_merge=1` over edges: a small set of inputs that still reaches every edge
//! reached; the real inputs the corpus was seeded with, `seed-*`, always stay). Per target the command prints the executions, the coverage
//! (libFuzzer's `cov:` edges and `ft:` features, at the start and at the end) and the
//! crashes with their artifact files, which go to `fuzz/artifacts/<target>/`.
//!
//! Nothing here is needed by `cargo test`: `tests/tests/fuzz_corpus.rs` replays the
//! committed corpus on the stable toolchain.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::image;

/// Options of `cargo xtask fuzz`.
#[derive(Debug, Clone)]
pub struct Options {
    /// One target, or all of them.
    pub target: Option<String>,
    /// Seconds per target.
    pub seconds: u64,
    /// libFuzzer processes per target (more than one: fork mode, going on after crashes).
    pub jobs: u32,
}

/// The toolchain the targets build with (libFuzzer's instrumentation needs nightly).
const TOOLCHAIN: &str = "nightly";
/// Largest corpus file kept (the committed corpus stays small).
const MAX_INPUT: u64 = 64 << 10;
/// Longest a single input may run before libFuzzer counts it as a hang.
const TIMEOUT_SECS: u32 = 10;

fn fuzz_dir() -> PathBuf {
    image::workspace().join("fuzz")
}

/// The targets: each `fuzz/fuzz_targets/<name>.rs`, with the first line of its doc
/// comment.
pub fn targets() -> Result<Vec<(String, String)>> {
    let dir = fuzz_dir().join("fuzz_targets");
    let mut found = Vec::new();
    for entry in
        std::fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))?
    {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .context("a target file name is not UTF-8")?
            .to_owned();
        let text = std::fs::read_to_string(&path)?;
        let about = text
            .lines()
            .find_map(|l| l.strip_prefix("//! "))
            .unwrap_or("")
            .to_owned();
        found.push((name, about));
    }
    found.sort();
    Ok(found)
}

/// `--list`: every target with its one line.
pub fn list() -> Result<()> {
    let targets = targets()?;
    let width = targets.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
    for (name, about) in targets {
        println!("{name:width$}  {about}");
    }
    Ok(())
}

/// What one target's run came to.
#[derive(Debug, Default)]
struct Outcome {
    name: String,
    executions: u64,
    start_cov: Option<(u64, u64)>,
    end_cov: Option<(u64, u64)>,
    corpus_before: usize,
    corpus_after: usize,
    crashes: Vec<PathBuf>,
    log: PathBuf,
}

/// Runs the target named (or every target) for `seconds` each, then prints the figures.
pub fn run(opts: &Options) -> Result<()> {
    let all = targets()?;
    let chosen: Vec<String> = match &opts.target {
        Some(t) if all.iter().any(|(n, _)| n == t) => vec![t.clone()],
        Some(t) => bail!(
            "no fuzz target {t:?}; `cargo xtask fuzz --list` names them ({})",
            all.iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        None => all.into_iter().map(|(n, _)| n).collect(),
    };
    ensure_tools()?;
    let mut outcomes = Vec::new();
    for name in &chosen {
        eprintln!(
            "crust: fuzzing {name} for {} s ({} job{})",
            opts.seconds,
            opts.jobs,
            if opts.jobs == 1 { "" } else { "s" }
        );
        let outcome = fuzz_one(name, opts)?;
        print_outcome(&outcome);
        outcomes.push(outcome);
    }
    if outcomes.len() > 1 {
        println!();
        println!(
            "{:<14} {:>12} {:>16} {:>16} {:>8}  crashes",
            "target", "executions", "cov (start)", "ft (start)", "corpus"
        );
        for o in &outcomes {
            let pair = |end: Option<(u64, u64)>, start: Option<(u64, u64)>, i: usize| {
                let get = |p: Option<(u64, u64)>| p.map(|p| if i == 0 { p.0 } else { p.1 });
                format!(
                    "{} ({})",
                    get(end).map_or("-".into(), |v| v.to_string()),
                    get(start).map_or("-".into(), |v| v.to_string())
                )
            };
            println!(
                "{:<14} {:>12} {:>16} {:>16} {:>8}  {}",
                o.name,
                o.executions,
                pair(o.end_cov, o.start_cov, 0),
                pair(o.end_cov, o.start_cov, 1),
                o.corpus_after,
                o.crashes.len()
            );
        }
    }
    let crashed: usize = outcomes.iter().map(|o| o.crashes.len()).sum();
    if crashed > 0 {
        bail!(
            "{crashed} crash{} found: reproduce one with `cargo +nightly fuzz run TARGET FILE` \
             in fuzz/, fix it, and keep the input in fuzz/regressions/TARGET/",
            if crashed == 1 { "" } else { "es" }
        );
    }
    Ok(())
}

/// Installs the nightly toolchain and cargo-fuzz when they are missing.
fn ensure_tools() -> Result<()> {
    let has_nightly = Command::new("rustup")
        .args(["run", TOOLCHAIN, "rustc", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_nightly {
        eprintln!(
            "crust: installing the {TOOLCHAIN} Rust toolchain with rustup (libFuzzer's \
             instrumentation needs it; the rest of Crust builds on stable)"
        );
        let ok = Command::new("rustup")
            .args(["toolchain", "install", TOOLCHAIN, "--profile", "minimal"])
            .status()
            .context("cannot run rustup")?
            .success();
        if !ok {
            bail!("rustup could not install the {TOOLCHAIN} toolchain");
        }
    }
    if !cargo_fuzz()
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        eprintln!("crust: installing cargo-fuzz from crates.io (cargo install cargo-fuzz, once)");
        let ok = Command::new("cargo")
            .args(["install", "cargo-fuzz", "--locked"])
            .status()
            .context("cannot run cargo install")?
            .success();
        if !ok {
            bail!("cargo install cargo-fuzz failed");
        }
    }
    Ok(())
}

/// `cargo +nightly fuzz`, run from the workspace (cargo-fuzz finds `fuzz/` there).
fn cargo_fuzz() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.arg(format!("+{TOOLCHAIN}"))
        .arg("fuzz")
        .current_dir(image::workspace())
        // The nightly toolchain, not the stable one that runs xtask.
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO");
    cmd
}

/// cargo-fuzz's build options, the same for every step so that nothing is built twice:
/// optimised, with debug assertions and overflow checks (an overflow is a bug even where
/// the `init` profile would wrap), without a sanitizer (the code is Rust; AddressSanitizer
/// would halve the executions and find nothing the bounds checks do not).
const BUILD_ARGS: [&str; 4] = ["--release", "--debug-assertions", "--sanitizer", "none"];

fn fuzz_one(name: &str, opts: &Options) -> Result<Outcome> {
    let committed = fuzz_dir().join("corpus").join(name);
    std::fs::create_dir_all(&committed)?;
    let scratch = image::workspace().join("target").join("fuzz");
    let work = scratch.join("work").join(name);
    let merged = scratch.join("merged").join(name);
    let logs = scratch.join("logs");
    for dir in [&work, &merged] {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir)?;
    }
    std::fs::create_dir_all(&logs)?;
    let before = copy_files(&committed, &work, |_| true)?;
    let status = cargo_fuzz()
        .arg("build")
        .args(BUILD_ARGS)
        .arg(name)
        .status()
        .context("cannot run cargo fuzz build")?;
    if !status.success() {
        bail!("building the fuzz target {name} failed");
    }

    // The run: new inputs go into `work`; artifacts into fuzz/artifacts/<name>/.
    let log = logs.join(format!("{name}.log"));
    let artifacts = fuzz_dir().join("artifacts").join(name);
    let known: Vec<PathBuf> = list_files(&artifacts);
    let mut args = vec![
        format!("-max_total_time={}", opts.seconds),
        format!("-timeout={TIMEOUT_SECS}"),
        "-print_final_stats=1".to_owned(),
    ];
    if opts.jobs > 1 {
        args.push(format!("-fork={}", opts.jobs));
        args.push("-ignore_crashes=1".to_owned());
        args.push("-ignore_timeouts=1".to_owned());
        args.push("-ignore_ooms=1".to_owned());
    }
    let log_file = std::fs::File::create(&log)?;
    let _ = cargo_fuzz()
        .arg("run")
        .args(BUILD_ARGS)
        .arg(name)
        .arg(&work)
        .arg("--")
        .args(&args)
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .status()
        .context("cannot run cargo fuzz run")?;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let mut outcome = read_log(&text);
    outcome.name = name.to_owned();
    outcome.log = log;
    outcome.corpus_before = before;
    outcome.crashes = list_files(&artifacts)
        .into_iter()
        .filter(|p| !known.contains(p))
        .collect();

    // Minimise into the committed corpus: the seeds, then whatever adds coverage.
    copy_files(&committed, &merged, |n| n.starts_with("seed-"))?;
    let merge_log = std::fs::File::create(logs.join(format!("{name}.merge.log")))?;
    let status = cargo_fuzz()
        .arg("run")
        .args(BUILD_ARGS)
        .arg(name)
        .arg(&merged)
        .arg(&work)
        .arg("--")
        .arg("-set_cover_merge=1")
        // Edges, not hit counts: a corpus that keeps every edge reached, and small.
        .arg("-use_counters=0")
        .arg(format!("-timeout={TIMEOUT_SECS}"))
        .stdout(merge_log.try_clone()?)
        .stderr(merge_log)
        .status()
        .context("cannot run the corpus merge")?;
    if status.success() {
        for entry in std::fs::read_dir(&committed)? {
            let entry = entry?;
            if !entry.file_name().to_string_lossy().starts_with("seed-") {
                std::fs::remove_file(entry.path())?;
            }
        }
        copy_files(&merged, &committed, |n| !n.starts_with("seed-"))?;
    } else {
        eprintln!(
            "crust: the corpus merge of {name} failed (see {}); fuzz/corpus/{name} is unchanged",
            logs.join(format!("{name}.merge.log")).display()
        );
    }
    outcome.corpus_after = list_files(&committed).len();
    Ok(outcome)
}

/// Copies the files of `from` whose names `keep` accepts into `to` (none larger than
/// [`MAX_INPUT`]); returns how many.
fn copy_files(from: &Path, to: &Path, keep: impl Fn(&str) -> bool) -> Result<usize> {
    let mut n = 0;
    for path in list_files(from) {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !keep(&name) || std::fs::metadata(&path)?.len() > MAX_INPUT {
            continue;
        }
        std::fs::copy(&path, to.join(&name))
            .with_context(|| format!("cannot copy {}", path.display()))?;
        n += 1;
    }
    Ok(n)
}

fn list_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// The figures in libFuzzer's output: the coverage when the corpus was loaded (`INITED`),
/// the last coverage and execution count it printed.
fn read_log(text: &str) -> Outcome {
    let mut o = Outcome::default();
    let number = |line: &str, key: &str| -> Option<u64> {
        let at = line.find(key)? + key.len();
        line[at..]
            .trim_start()
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    for line in text.lines() {
        let cov = number(line, "cov:").zip(number(line, "ft:"));
        if line.contains("INITED") && o.start_cov.is_none() {
            o.start_cov = cov;
        }
        if cov.is_some() {
            o.end_cov = cov;
        }
        if let Some(runs) = line.strip_prefix('#').and_then(|l| number(l, "")) {
            o.executions = o.executions.max(runs);
        }
        if let Some(runs) = number(line, "stat::number_of_executed_units:") {
            o.executions = o.executions.max(runs);
        }
        if let Some(runs) = line.strip_prefix("Done ").and_then(|l| number(l, "")) {
            o.executions = o.executions.max(runs);
        }
    }
    o
}

fn print_outcome(o: &Outcome) {
    let cov =
        |c: Option<(u64, u64)>| c.map_or("-".to_owned(), |(cov, ft)| format!("cov {cov}, ft {ft}"));
    println!(
        "{}: {} executions; coverage {} (corpus loaded: {}); corpus {} -> {} files; {}",
        o.name,
        o.executions,
        cov(o.end_cov),
        cov(o.start_cov),
        o.corpus_before,
        o.corpus_after,
        if o.crashes.is_empty() {
            "no crashes".to_owned()
        } else {
            format!(
                "{} crash{}: {}",
                o.crashes.len(),
                if o.crashes.len() == 1 { "" } else { "es" },
                o.crashes
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    );
    println!("  log: {}", o.log.display());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libfuzzer_figures_are_read() {
        let text = "INFO: Seed: 1\n\
            #2\tINITED cov: 120 ft: 300 corp: 10/1Kb exec/s: 0 rss: 40Mb\n\
            #1024\tpulse  cov: 130 ft: 340 corp: 12/1Kb lim: 4096 exec/s: 512 rss: 41Mb\n\
            #98765\tDONE   cov: 150 ft: 400 corp: 20/2Kb lim: 4096 exec/s: 3292 rss: 44Mb\n\
            Done 98765 runs in 30 second(s)\n\
            stat::number_of_executed_units: 98765\n";
        let o = read_log(text);
        assert_eq!(o.start_cov, Some((120, 300)));
        assert_eq!(o.end_cov, Some((150, 400)));
        assert_eq!(o.executions, 98765);
        // Fork mode's lines.
        let o = read_log(
            "#500000: cov: 900 ft: 2000 corp: 50 exec/s: 8000 oom/timeout/crash: 0/0/0 time: 60s job: 4 dft_time: 0\n",
        );
        assert_eq!((o.end_cov, o.executions), (Some((900, 2000)), 500_000));
    }

    #[test]
    fn every_target_is_listed_with_its_line() {
        let targets = targets().unwrap();
        assert!(targets.len() >= 14, "{targets:?}");
        for (name, about) in &targets {
            assert!(
                !about.is_empty(),
                "fuzz/fuzz_targets/{name}.rs has no //! line"
            );
        }
    }
}
