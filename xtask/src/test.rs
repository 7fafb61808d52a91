//! `cargo xtask test`: everything CI checks, in the order that fails fastest.
//!
//! Host packages first (the tests check formats with independent tools), then formatting
//! and clippy, then the default image is built once from the committed lock (`--locked`:
//! CI must not re-resolve packages), and finally `cargo test` over the workspace with the
//! end-to-end tests included, pointed at that one image so they share it.

use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{host, image};

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

/// Runs the whole suite; `lint` adds rustfmt and clippy.
pub fn run_all(lint: bool) -> Result<()> {
    host::ensure(&[host::BUILD, host::QEMU, host::TEST])?;
    if lint {
        run(
            "cargo fmt --check",
            cargo().args(["fmt", "--all", "--", "--check"]),
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
    let outcome = image::build("qemu", None, true)?;
    let init = image::build_init()?;
    let out_dir = outcome
        .image
        .parent()
        .context("image has no folder")?
        .to_path_buf();
    run(
        "cargo test (unit, format and end-to-end tests)",
        cargo()
            .args(["test", "--workspace", "--locked", "--", "--include-ignored"])
            .env(IMAGE_DIR_VAR, &out_dir)
            .env(INIT_VAR, &init),
    )
}
