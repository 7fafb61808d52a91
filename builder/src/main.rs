//! `crust-builder`: the image builder's command line, for use outside the cargo workspace.
//! Inside it, `cargo xtask build` drives the same library (and builds the init first).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use crust_builder::build::{BuildRequest, build_with, lock};
use crust_builder::fetch::Cache;
use crust_builder::profile::OutputFormat;
use crust_builder::{report, sign};

/// Builds Crust disk images from TOML profiles.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Builds the image a profile describes.
    Build {
        /// The profile file (e.g. profiles/qemu.toml).
        #[arg(long)]
        profile: PathBuf,
        /// The static init binary to install as PID 1.
        #[arg(long)]
        init: PathBuf,
        /// Output folder.
        #[arg(long, default_value = "crust-out")]
        out: PathBuf,
        /// Fail instead of updating an out-of-date lock file.
        #[arg(long)]
        locked: bool,
        /// Package cache folder (default: $CRUST_CACHE_DIR or ~/.cache/crust).
        #[arg(long)]
        cache: Option<PathBuf>,
        /// Also make this output format (raw, raw.zst, qcow2, vmdk, vhd, gce); repeatable.
        #[arg(long = "format", value_delimiter = ',')]
        formats: Vec<OutputFormat>,
        /// The Cargo.toml of the workspace the init was built from: the SBOM then lists the
        /// crates compiled into it (package crust-init, target --init-target). Without it
        /// the SBOM lists the init alone and says so.
        #[arg(long, value_name = "CARGO_TOML")]
        init_cargo: Option<PathBuf>,
        /// The target the init was built for.
        #[arg(long, default_value = "x86_64-unknown-linux-musl")]
        init_target: String,
        /// The static observability agent (crust-observe, built for the init's target) to
        /// install at /usr/libexec/crust/observe; its crates go into the SBOM with
        /// --init-cargo. Without it the image's [metrics] and [logs] do nothing.
        #[arg(long, value_name = "BINARY")]
        observe: Option<PathBuf>,
    },
    /// Re-resolves a profile's packages against the archive and rewrites its lock file.
    Lock {
        /// The profile file.
        #[arg(long)]
        profile: PathBuf,
        /// Package cache folder.
        #[arg(long)]
        cache: Option<PathBuf>,
    },
    /// Makes an Ed25519 signing key pair (`NAME.key`, mode 0600, and `NAME.pub`).
    Keygen {
        /// Folder for the key files.
        #[arg(long, default_value = "keys")]
        dir: PathBuf,
        /// Base name of the key files.
        #[arg(long, default_value = "crust")]
        name: String,
    },
}

fn source_date_epoch() -> Result<Option<u64>> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => Ok(Some(v.trim().parse().map_err(|_| {
            anyhow::anyhow!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds")
        })?)),
        Err(_) => Ok(None),
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Build {
            profile,
            init,
            out,
            locked,
            cache,
            formats,
            init_cargo,
            init_target,
            observe,
        } => {
            let init_crates = match &init_cargo {
                Some(manifest) => Some(crust_builder::sbom::cargo::init_crates(
                    manifest,
                    "crust-init",
                    &init_target,
                )?),
                None => None,
            };
            let observe = match observe {
                Some(path) => Some(crust_builder::build::Program {
                    path,
                    crates: match &init_cargo {
                        Some(manifest) => Some(crust_builder::sbom::cargo::init_crates(
                            manifest,
                            "crust-observe",
                            &init_target,
                        )?),
                        None => None,
                    },
                }),
                None => None,
            };
            let outcome = build_with(
                &BuildRequest {
                    profile,
                    init,
                    dev_key_dir: out.join("keys"),
                    out_dir: out,
                    cache: Cache::new(cache.unwrap_or_else(Cache::default_root)),
                    locked,
                    source_date_epoch: source_date_epoch()?,
                    init_crates,
                    observe,
                    extras: Default::default(),
                },
                &formats,
            )?;
            report::status(
                if outcome.fresh { "Fresh" } else { "Finished" },
                format!("{} -> {}", outcome.manifest, outcome.image.display()),
            );
        }
        Command::Lock { profile, cache } => {
            let lock = lock(
                &profile,
                &Cache::new(cache.unwrap_or_else(Cache::default_root)),
            )?;
            report::status("Locked", format!("{} packages", lock.packages.len()));
        }
        Command::Keygen { dir, name } => {
            let (private, public) = sign::generate(&dir, &name)?;
            report::status(
                "Created",
                format!("{} and {}", private.display(), public.display()),
            );
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
