//! `cargo xtask flash`: the command-line side of [`crust_flash`]: the key, the question,
//! and the report.

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;

use anyhow::{Context, Result, bail};
use crust_builder::profile::show_size;
use crust_builder::report;
use crust_flash::{Request, prepare};

use crate::keys;

/// What the command line asked for.
#[derive(Debug)]
pub struct Options<'a> {
    /// The raw image.
    pub image: &'a Path,
    /// The disk.
    pub device: &'a Path,
    /// The key the release must be signed with (default: see [`keys`]).
    pub key: Option<&'a Path>,
    /// Skip the question.
    pub yes: bool,
    /// Accept a regular file as the disk.
    pub allow_file: bool,
}

/// Checks everything, asks, writes, reads back, and reports.
pub fn run(opts: &Options<'_>) -> Result<()> {
    let dir = match opts.image.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let key = keys::verification_key(dir, opts.key)?;
    let plan = prepare(&Request {
        image: opts.image,
        device: opts.device,
        key: &key,
        allow_file: opts.allow_file,
    })
    .context("nothing was written")?;
    report::status(
        "Verified",
        format!("{} against the signed SHA256SUMS", opts.image.display()),
    );
    report::status("Flash", plan.summary());
    if !opts.yes {
        confirm(opts.device)?;
    }
    let flashed = plan.write()?;
    let seconds = flashed.write_time.as_secs_f64().max(1e-6);
    report::status(
        "Written",
        format!(
            "{} of data in {seconds:.2} s ({}/s), synced",
            show_size(flashed.written),
            show_size((flashed.written as f64 / seconds) as u64)
        ),
    );
    report::status(
        "Read back",
        format!(
            "{} in {:.2} s: identical",
            show_size(flashed.written),
            flashed.verify_time.as_secs_f64()
        ),
    );
    match flashed.backup_gpt {
        Some(moved) => report::status(
            "GPT",
            format!(
                "backup header moved from sector {} to the disk's last sector {}",
                moved.from_lba, moved.to_lba
            ),
        ),
        None => report::status("GPT", "the disk is the image's size: nothing to move"),
    }
    if flashed.partitions_reread {
        report::status("Partitions", "the kernel re-read the partition table");
    }
    report::status(
        "Done",
        format!(
            "{} boots; on first boot /var grows to the end of the disk",
            opts.device.display()
        ),
    );
    Ok(())
}

fn confirm(device: &Path) -> Result<()> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        bail!(
            "no terminal to ask on before overwriting {}; pass --yes to confirm (nothing was written)",
            device.display()
        );
    }
    eprint!("Type yes to overwrite {}: ", device.display());
    std::io::stderr().flush().ok();
    let mut answer = String::new();
    stdin.lock().read_line(&mut answer)?;
    if answer.trim() != "yes" {
        bail!("not confirmed; nothing was written");
    }
    Ok(())
}
