//! The workspace's test binaries, built once and run a few at a time.
//!
//! `cargo test` runs one test binary after another. Most of this suite's time is QEMU under
//! TCG, and a TCG machine keeps one host core busy (`tcg,thread=single`, see `crust-vm`), so
//! two test files that each boot one machine at a time take little longer together than
//! one alone on a two-core host. The binaries are built with `cargo test --no-run`, then a
//! small pool runs them in a fixed order: the files that boot several machines at once
//! first, alone, then the slowest files, so that the last to finish is a short one. Each
//! binary's output goes to a log file of its own under `target/crust/test-logs`; a finished
//! binary prints one line, a failed one its failures too, and the run ends with every
//! binary's time.
//!
//! Written here rather than taken from cargo-nextest: nextest would be one more tool to
//! install on a fresh machine (minutes of compiling), and what this suite needs from it is
//! a pool of processes and an order.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

/// Integration test files that boot several machines at once: each runs with the host to
/// itself.
const WHOLE_HOST: &[&str] = &["fleet"];

/// Integration test files by how long they took on a two-core TCG host, slowest first;
/// they start before every other binary (an order, not a promise: a file missing here
/// only starts later).
const SLOWEST: &[&str] = &[
    "update",
    "installer",
    "sealed",
    "netboot",
    "secure_boot",
    "pressure",
    "observability",
    "repository",
    "network",
    "tamper",
    "volumes",
    "containerd",
    "formats",
    "confinement",
    "reproducible",
];

/// One test binary cargo built.
#[derive(Debug, Clone)]
pub struct Binary {
    /// What it is called in the output: the test file's name, or the crate's with
    /// `(unit)` for a library's or binary's own tests.
    pub name: String,
    /// The executable.
    pub path: PathBuf,
    /// Its package's folder, where cargo would have run it.
    pub package_dir: PathBuf,
    /// Whether it boots several machines at once (see [`WHOLE_HOST`]).
    pub whole_host: bool,
}

/// What `cargo --message-format=json` says of one compiled target (the part read here).
#[derive(Debug, Deserialize)]
struct Artifact {
    reason: String,
    #[serde(default)]
    manifest_path: Option<PathBuf>,
    #[serde(default)]
    target: Option<Target>,
    #[serde(default)]
    executable: Option<PathBuf>,
    #[serde(default)]
    profile: Option<Profile>,
}

#[derive(Debug, Deserialize)]
struct Target {
    name: String,
    kind: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct Profile {
    test: bool,
}

/// Builds the test binaries with `cargo` (already given `test --no-run` and its options)
/// and returns them in the order they should run.
pub fn build(mut cargo: Command) -> Result<Vec<Binary>> {
    eprintln!("crust: cargo test --no-run (building the test binaries)");
    let output = cargo
        .arg("--message-format=json-render-diagnostics")
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run cargo test --no-run")?;
    if !output.status.success() {
        bail!("building the test binaries failed");
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let mut binaries = parse(&text)?;
    order(&mut binaries);
    Ok(binaries)
}

/// The test executables in cargo's JSON messages.
fn parse(messages: &str) -> Result<Vec<Binary>> {
    let mut binaries = Vec::new();
    for line in messages.lines().filter(|l| l.starts_with('{')) {
        let artifact: Artifact = serde_json::from_str(line)
            .with_context(|| format!("cannot read cargo's message {line:.200}"))?;
        let (Some(target), Some(path), Some(manifest)) =
            (artifact.target, artifact.executable, artifact.manifest_path)
        else {
            continue;
        };
        if artifact.reason != "compiler-artifact" || !artifact.profile.is_some_and(|p| p.test) {
            continue;
        }
        let name = if target.kind.iter().any(|k| k == "test") {
            target.name.clone()
        } else {
            format!("{} (unit)", target.name)
        };
        binaries.push(Binary {
            whole_host: WHOLE_HOST.contains(&name.as_str()),
            name,
            path,
            package_dir: manifest
                .parent()
                .context("a manifest path without a folder")?
                .to_path_buf(),
        });
    }
    Ok(binaries)
}

/// Whole-host files first, then [`SLOWEST`] in its order, then the rest as cargo built
/// them.
fn order(binaries: &mut [Binary]) {
    binaries.sort_by_key(|b| {
        let rank = SLOWEST
            .iter()
            .position(|s| *s == b.name)
            .unwrap_or(SLOWEST.len());
        (!b.whole_host, rank)
    });
}

/// How one binary ended.
#[derive(Debug)]
pub struct Outcome {
    /// The binary's name.
    pub name: String,
    /// Whether every test in it passed.
    pub passed: bool,
    /// Its `test result:` line, if it got that far.
    pub summary: Option<String>,
    /// How long it ran.
    pub took: Duration,
}

/// A binary being run.
struct Running {
    binary: Binary,
    child: Child,
    log: PathBuf,
    started: Instant,
}

/// Runs `binaries` (in their order) `jobs` at a time, each with `args` after its name and
/// `env` set, logs in `logs`; every binary runs even when one fails. A whole-host binary
/// waits for the others to finish, and nothing starts beside it.
pub fn run(
    binaries: Vec<Binary>,
    jobs: usize,
    args: &[String],
    env: &[(String, PathBuf)],
    logs: &Path,
) -> Result<Vec<Outcome>> {
    std::fs::create_dir_all(logs).with_context(|| format!("cannot create {}", logs.display()))?;
    eprintln!(
        "crust: running {} test binaries, {jobs} at a time; their output is in {}",
        binaries.len(),
        logs.display()
    );
    let jobs = jobs.max(1);
    let mut queue: VecDeque<Binary> = binaries.into();
    let mut running: Vec<Running> = Vec::new();
    let mut outcomes = Vec::new();
    while !queue.is_empty() || !running.is_empty() {
        // Start the next one while it fits: strictly in order, so a whole-host binary is
        // not passed over by smaller ones again and again.
        while let Some(next) = queue.front() {
            let alone = running.iter().any(|r| r.binary.whole_host);
            let fits = if next.whole_host {
                running.is_empty()
            } else {
                !alone && running.len() < jobs
            };
            if !fits {
                break;
            }
            let binary = queue.pop_front().expect("the front exists");
            running.push(start(binary, args, env, logs)?);
        }
        std::thread::sleep(Duration::from_millis(200));
        let mut i = 0;
        while i < running.len() {
            match running[i].child.try_wait() {
                Ok(Some(status)) => {
                    let done = running.swap_remove(i);
                    outcomes.push(finish(done, status.success()));
                }
                Ok(None) => i += 1,
                Err(e) => bail!("cannot wait for {}: {e}", running[i].binary.name),
            }
        }
    }
    Ok(outcomes)
}

fn start(
    binary: Binary,
    args: &[String],
    env: &[(String, PathBuf)],
    logs: &Path,
) -> Result<Running> {
    let log = logs.join(format!("{}.log", binary.name.replace(" (unit)", "-unit")));
    let out = File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
    let err = out.try_clone()?;
    let mut cmd = Command::new(&binary.path);
    cmd.args(args)
        .current_dir(&binary.package_dir)
        .env("CARGO_MANIFEST_DIR", &binary.package_dir)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    for (key, value) in env {
        cmd.env(key, value);
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot run {}", binary.path.display()))?;
    Ok(Running {
        binary,
        child,
        log,
        started: Instant::now(),
    })
}

/// Prints one line for a finished binary, and its failures when it failed.
fn finish(done: Running, passed: bool) -> Outcome {
    let took = done.started.elapsed();
    let lines: Vec<String> = File::open(&done.log)
        .map(|f| BufReader::new(f).lines().map_while(Result::ok).collect())
        .unwrap_or_default();
    let summary = lines
        .iter()
        .rev()
        .find(|l| l.starts_with("test result:"))
        .cloned();
    eprintln!(
        "crust: {:>6} {} in {} ({})",
        if passed { "ok" } else { "FAILED" },
        done.binary.name,
        minutes(took),
        summary.as_deref().unwrap_or("no test result line")
    );
    if !passed {
        // The harness's failures section holds each failed test's output and panic; a
        // binary that died without one shows its last lines instead.
        let from = lines
            .iter()
            .position(|l| l == "failures:")
            .unwrap_or(lines.len().saturating_sub(150));
        eprintln!("---- {} ({}) ----", done.binary.name, done.log.display());
        for line in &lines[from..] {
            eprintln!("{line}");
        }
        eprintln!("---- end of {} ----", done.binary.name);
    }
    Outcome {
        name: done.binary.name,
        passed,
        summary,
        took,
    }
}

/// Prints every binary's time, slowest first, and fails naming the binaries that failed.
pub fn report(mut outcomes: Vec<Outcome>, wall: Duration) -> Result<()> {
    outcomes.sort_by_key(|o| std::cmp::Reverse(o.took));
    let total: Duration = outcomes.iter().map(|o| o.took).sum();
    eprintln!(
        "crust: test binaries took {} together, {} from first start to last end:",
        minutes(total),
        minutes(wall)
    );
    for o in outcomes.iter().filter(|o| o.took >= Duration::from_secs(5)) {
        let counts = o
            .summary
            .as_deref()
            .and_then(|s| s.split("; finished").next())
            .unwrap_or("no test result line");
        eprintln!("crust:   {:>7}  {} ({counts})", minutes(o.took), o.name);
    }
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|o| !o.passed)
        .map(|o| o.name.as_str())
        .collect();
    if !failed.is_empty() {
        bail!("tests failed in: {}", failed.join(", "));
    }
    Ok(())
}

/// `8m05s`, `42s`.
fn minutes(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MESSAGES: &str = r#"{"reason":"compiler-artifact","package_id":"path+file:///w/tests#crust-tests@0.1.0","manifest_path":"/w/tests/Cargo.toml","target":{"kind":["test"],"crate_types":["bin"],"name":"boot","src_path":"/w/tests/tests/boot.rs"},"profile":{"opt_level":"0","test":true},"features":[],"filenames":["/w/target/debug/deps/boot-1"],"executable":"/w/target/debug/deps/boot-1","fresh":true}
{"reason":"compiler-artifact","manifest_path":"/w/tests/Cargo.toml","target":{"kind":["test"],"name":"fleet"},"profile":{"test":true},"executable":"/w/target/debug/deps/fleet-2"}
{"reason":"compiler-artifact","manifest_path":"/w/tests/Cargo.toml","target":{"kind":["test"],"name":"update"},"profile":{"test":true},"executable":"/w/target/debug/deps/update-3"}
{"reason":"compiler-artifact","manifest_path":"/w/init/Cargo.toml","target":{"kind":["lib"],"name":"crust_init"},"profile":{"test":true},"executable":"/w/target/debug/deps/crust_init-4"}
{"reason":"compiler-artifact","manifest_path":"/w/init/Cargo.toml","target":{"kind":["lib"],"name":"crust_init"},"profile":{"test":false},"executable":null}
{"reason":"build-script-executed","package_id":"x"}
{"reason":"build-finished","success":true}"#;

    #[test]
    fn test_executables_are_found_and_named() {
        let found = parse(MESSAGES).unwrap();
        let names: Vec<&str> = found.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["boot", "fleet", "update", "crust_init (unit)"]);
        assert_eq!(found[3].package_dir, Path::new("/w/init"));
        assert_eq!(found[0].path, Path::new("/w/target/debug/deps/boot-1"));
    }

    #[test]
    fn whole_host_files_run_first_then_the_slowest() {
        let mut found = parse(MESSAGES).unwrap();
        order(&mut found);
        let names: Vec<&str> = found.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["fleet", "update", "boot", "crust_init (unit)"]);
        assert!(found[0].whole_host && !found[1].whole_host);
    }

    #[test]
    fn a_failed_binary_does_not_stop_the_others_and_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let script = |name: &str, body: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
            let mode = std::os::unix::fs::PermissionsExt::from_mode(0o755);
            std::fs::set_permissions(&path, mode).unwrap();
            Binary {
                name: name.into(),
                path,
                package_dir: dir.path().into(),
                whole_host: false,
            }
        };
        let binaries = vec![
            script("bad", "echo failures:; echo '    it_broke'; exit 101"),
            script("good", "echo \"test result: ok. $1 $CRUST_X\"; exit 0"),
        ];
        let env = [("CRUST_X".to_owned(), PathBuf::from("x"))];
        let outcomes = run(binaries, 2, &["arg".into()], &env, &dir.path().join("logs")).unwrap();
        let good = outcomes.iter().find(|o| o.name == "good").unwrap();
        assert!(good.passed);
        assert_eq!(good.summary.as_deref(), Some("test result: ok. arg x"));
        let err = report(outcomes, Duration::ZERO).unwrap_err().to_string();
        assert_eq!(err, "tests failed in: bad");
    }
}
