//! `cargo xtask test`: everything CI checks, in the order that fails fastest.
//!
//! Host packages first (the tests check formats with independent tools), then formatting
//! and clippy, then the default image is built once from the committed lock (`--locked`:
//! CI must not re-resolve packages) in every output format, and finally `cargo test` over
//! the workspace with the end-to-end tests included, pointed at that one image so they
//! share it, a few test binaries at a time ([`binaries`]: QEMU under TCG keeps one core busy
//! per machine, so two files booting at once on two cores take little longer than one). The AMI test also needs the AMI publisher (its own workspace, `ami/`: the AWS
//! SDK, about 4 minutes to build here) and moto, the AWS API emulator, from PyPI in a
//! virtual environment; `--no-ami` leaves all three out and says so. The Secure Boot tests
//! need the UEFI variable store tools (`virt-fw-vars`, `uefivars`), also from PyPI, and the
//! SBOM tests the SPDX and CycloneDX validators (`spdx-tools`, `ntia-conformance-checker`,
//! `cyclonedx-python-lib`), pinned in a virtual environment of their own. Last,
//! the benchmark runs once with `--quick` into `target/crust/test-bench`, a check that it
//! works (`docs/BENCHMARKS.md`).

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};
use crust_builder::profile::OutputFormat;

use crate::{ami, host, image};

mod binaries;

/// Environment variable naming the output folder of the image the end-to-end tests boot.
pub const IMAGE_DIR_VAR: &str = "CRUST_TEST_IMAGE_DIR";
/// Environment variable naming the init binary the image was built with.
pub const INIT_VAR: &str = "CRUST_TEST_INIT";

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(image::workspace());
    cmd
}

fn run(what: &str, cmd: &mut Command) -> Result<()> {
    eprintln!("crust: {what}");
    let status = cmd.status().with_context(|| format!("cannot run {what}"))?;
    if !status.success() {
        bail!("{what} failed");
    }
    Ok(())
}

/// Runs the whole suite; `lint` adds rustfmt and clippy, `with_ami` the AMI test (and the
/// AWS SDK build it needs); `jobs` test binaries run at once ([`binaries`]).
pub fn run_all(lint: bool, with_ami: bool, jobs: usize) -> Result<()> {
    host::ensure(&[host::BUILD, host::QEMU, host::TEST])?;
    if lint {
        run(
            "cargo fmt --check",
            cargo().args(["fmt", "--all", "--", "--check"]),
        )?;
        run(
            "cargo fmt --check (ami)",
            cargo()
                .args(["fmt", "--manifest-path"])
                .arg(ami::manifest())
                .args(["--", "--check"]),
        )?;
        run(
            "cargo clippy",
            cargo().args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--locked",
                "--",
                "-D",
                "warnings",
            ]),
        )?;
    }
    let ami_env = if with_ami {
        if lint {
            run(
                "cargo clippy (ami)",
                ami::cargo("clippy").args(["--all-targets", "--", "-D", "warnings"]),
            )?;
        }
        run("cargo test (ami)", &mut ami::cargo("test"))?;
        Some((ami::build()?, moto()?))
    } else {
        eprintln!(
            "crust: NOT running the AMI test (--no-ami): it builds the AWS SDK (about 4 minutes \
             and 7 GB of memory on two cores)"
        );
        None
    };
    // Every output format, so the tests check each and the release that lists them.
    let outcome = image::build_with("qemu", None, true, &OutputFormat::ALL)?;
    let init = image::build_init()?;
    let uefi = host::uefi_tools()?;
    let sbom_python = sbom_tools()?;
    let out_dir = outcome
        .image
        .parent()
        .context("image has no folder")?
        .to_path_buf();
    let mut env = vec![
        (IMAGE_DIR_VAR.to_owned(), out_dir),
        (INIT_VAR.to_owned(), init),
        (VIRT_FW_VARS_VAR.to_owned(), uefi.virt_fw_vars),
        (UEFIVARS_VAR.to_owned(), uefi.uefivars),
        (SBOM_PYTHON_VAR.to_owned(), sbom_python),
    ];
    let mut args = vec!["--include-ignored".to_owned()];
    match ami_env {
        Some((publisher, moto)) => {
            env.push((AMI_VAR.to_owned(), publisher));
            env.push((MOTO_VAR.to_owned(), moto));
        }
        None => args.extend(["--skip".to_owned(), AMI_TEST.to_owned()]),
    }
    let mut build = cargo();
    build.args(["test", "--workspace", "--locked", "--no-run"]);
    let tests = binaries::build(build)?;
    let started = std::time::Instant::now();
    let logs = image::crust_target().join("test-logs");
    let outcomes = binaries::run(tests, jobs, &args, &env, &logs)?;
    binaries::report(outcomes, started.elapsed())?;
    run(
        "cargo test --doc (documentation examples)",
        cargo().args(["test", "--workspace", "--locked", "--doc"]),
    )?;
    // The benchmark once, quickly, in a folder of its own: a check that it runs and writes a
    // report and chart that read back (its numbers are not judged here; 40 s on a quiet
    // machine).
    eprintln!("crust: cargo xtask bench --quick (a check that the benchmark works)");
    crate::bench::run(&crate::bench::Options {
        profile: "qemu".into(),
        iterations: 1,
        cold: false,
        boot: true,
        quick: true,
        out: Some(image::crust_target().join("test-bench")),
        init: None,
    })?;
    Ok(())
}

/// Environment variable naming `virt-fw-vars` (OVMF variable stores with keys enrolled).
pub const VIRT_FW_VARS_VAR: &str = "CRUST_TEST_VIRT_FW_VARS";
/// Environment variable naming AWS's `uefivars` (an AMI's UEFI variable store).
pub const UEFIVARS_VAR: &str = "CRUST_TEST_UEFIVARS";
/// Environment variable naming the AMI publisher binary for the AMI test.
pub const AMI_VAR: &str = "CRUST_TEST_AMI";
/// Environment variable naming the Python that has moto (the AWS API emulator).
pub const MOTO_VAR: &str = "CRUST_TEST_MOTO_PYTHON";
/// The AMI test's name, for `--skip`.
const AMI_TEST: &str = "ami_publish_against_moto";
/// The moto release the AMI test runs against (PyPI).
const MOTO: &str = "moto[server]==5.2.5";
/// Environment variable naming the Python whose environment has the SBOM validators
/// (`pyspdxtools`, `ntia-checker` and `cyclonedx-python-lib` beside it).
pub const SBOM_PYTHON_VAR: &str = "CRUST_TEST_SBOM_PYTHON";
/// The SBOM validators (PyPI), pinned: SPDX 2.3 (`pyspdxtools -i`), the NTIA minimum
/// elements (`ntia-checker`) and CycloneDX 1.5 (`cyclonedx-python-lib`'s JSON validator).
const SBOM_TOOLS: &[&str] = &[
    "spdx-tools==0.8.5",
    "ntia-conformance-checker==6.0.0",
    "cyclonedx-python-lib[json-validation]==11.12.0",
];

/// A Python with moto, in a virtual environment under `target/ami/moto` (made once).
fn moto() -> Result<PathBuf> {
    venv(
        &ami::target_dir().join("moto"),
        "crust-moto-requirement",
        &[MOTO],
    )
}

/// A Python with the SBOM validators, in a virtual environment under
/// `target/crust/sbom-tools` (made once).
pub fn sbom_tools() -> Result<PathBuf> {
    venv(
        &image::crust_target().join("sbom-tools"),
        "crust-requirements",
        SBOM_TOOLS,
    )
}

/// A virtual environment in `venv` with the pinned `requirements` from PyPI; its Python.
/// The stamp file `stamp` records what was installed, so a changed pin installs again.
fn venv(venv: &std::path::Path, stamp: &str, requirements: &[&str]) -> Result<PathBuf> {
    let python = venv.join("bin").join("python3");
    let stamp = venv.join(stamp);
    let wanted = requirements.join("\n");
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) {
        return Ok(python);
    }
    eprintln!(
        "crust: installing {} from PyPI into {}",
        requirements.join(", "),
        venv.display()
    );
    let made = |python: &str| {
        Command::new(python)
            .args(["-m", "venv", "--clear"])
            .arg(venv)
            .status()
            .is_ok_and(|s| s.success())
    };
    if !made("python3") {
        // Debian's Python needs its venv module from a separate package.
        host::ensure(&[host::PYTHON_VENV])?;
        if !made("/usr/bin/python3") {
            bail!(
                "cannot make a Python virtual environment in {}",
                venv.display()
            );
        }
    }
    run(
        &format!("pip install {}", requirements.join(" ")),
        Command::new(venv.join("bin").join("pip"))
            .args(["install", "--quiet"])
            .args(requirements),
    )?;
    std::fs::write(&stamp, wanted).with_context(|| format!("cannot write {}", stamp.display()))?;
    Ok(python)
}

/// Test binaries run at once by default: one per core (a TCG machine keeps one busy), at
/// most four (each machine takes 1 GiB or more of memory, and a test file may build images).
pub fn default_jobs() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
}
