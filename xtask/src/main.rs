//! Crust's front door for developers and operators (the cargo-xtask convention): build an
//! image, boot it, pin its packages, make keys, run the tests. `cargo xtask --help` lists the
//! commands; each installs what it needs from Debian first.

mod host;
mod image;
mod qemu;
mod test;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use crust_builder::report;

/// Build, boot and test Crust images.
#[derive(Parser)]
#[command(name = "cargo xtask", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(clap::Args, Clone)]
struct BootArgs {
    /// Attach the disk as NVMe instead of virtio.
    #[arg(long)]
    nvme: bool,
    /// Start from the pristine image: drop the VM's overlay and EFI variables.
    #[arg(long)]
    reset: bool,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 1024)]
    memory: u32,
    /// Forward a host TCP port to the guest, HOST:GUEST (repeatable).
    #[arg(long = "forward", value_parser = parse_forward)]
    forwards: Vec<(u16, u16)>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the image of a profile into target/crust/<profile>/.
    Build {
        /// Profile name (profiles/<name>.toml) or path.
        #[arg(long, default_value = "qemu")]
        profile: String,
        /// Output folder instead of target/crust/<profile>.
        #[arg(long)]
        out: Option<std::path::PathBuf>,
        /// Fail instead of updating an out-of-date lock file.
        #[arg(long)]
        locked: bool,
    },
    /// Build the image, boot it in QEMU until it is up, then power it off (no terminal needed).
    Run {
        /// Profile name or path.
        #[arg(long, default_value = "qemu")]
        profile: String,
        #[command(flatten)]
        boot: BootArgs,
    },
    /// Boot the built image in QEMU (KVM when it works here, TCG otherwise).
    Qemu {
        /// Profile name or path.
        #[arg(long, default_value = "qemu")]
        profile: String,
        #[command(flatten)]
        boot: BootArgs,
    },
    /// Re-resolve packages against the Debian archive and rewrite the lock file(s).
    Lock {
        /// Profile name or path.
        #[arg(long, default_value = "qemu", conflicts_with = "all")]
        profile: String,
        /// Every profile in profiles/.
        #[arg(long)]
        all: bool,
    },
    /// Make an Ed25519 signing key pair (private key mode 0600).
    Keygen {
        /// Folder for the key files.
        #[arg(long, default_value = "keys")]
        dir: std::path::PathBuf,
        /// Base name: NAME.key and NAME.pub.
        #[arg(long, default_value = "crust")]
        name: String,
    },
    /// Run every test: formats checked by independent tools, and boots in QEMU.
    Test {
        /// Skip rustfmt and clippy.
        #[arg(long)]
        no_lint: bool,
    },
}

fn parse_forward(s: &str) -> Result<(u16, u16), String> {
    let (h, g) = s
        .split_once(':')
        .ok_or("expected HOST:GUEST, e.g. 8080:80")?;
    Ok((
        h.parse().map_err(|_| format!("bad host port {h:?}"))?,
        g.parse().map_err(|_| format!("bad guest port {g:?}"))?,
    ))
}

fn qemu_options(args: &BootArgs) -> qemu::QemuOptions {
    qemu::QemuOptions {
        nvme: args.nvme,
        reset: args.reset,
        memory_mib: args.memory,
        forwards: args.forwards.clone(),
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Cmd::Build {
            profile,
            out,
            locked,
        } => {
            image::build(&profile, out.as_deref(), locked)?;
        }
        Cmd::Run {
            profile,
            boot: args,
        } => {
            let outcome = image::build(&profile, None, false)?;
            let out = outcome.image.parent().unwrap_or(std::path::Path::new("."));
            qemu::demonstrate(out, &qemu_options(&args))?;
        }
        Cmd::Qemu {
            profile,
            boot: args,
        } => {
            let out = image::out_dir(&image::profile_path(&profile));
            qemu::interactive(&out, &qemu_options(&args))?;
        }
        Cmd::Lock { profile, all } => {
            host::ensure(&[host::BUILD])?;
            let cache =
                crust_builder::fetch::Cache::new(crust_builder::fetch::Cache::default_root());
            let profiles: Vec<std::path::PathBuf> = if all {
                let mut v: Vec<_> = std::fs::read_dir(image::workspace().join("profiles"))?
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| {
                        p.extension().is_some_and(|e| e == "toml") && !p.ends_with("base.toml")
                    })
                    .collect();
                v.sort();
                v
            } else {
                vec![image::profile_path(&profile)]
            };
            for p in profiles {
                let lock = crust_builder::build::lock(&p, &cache)?;
                report::status(
                    "Locked",
                    format!("{} ({} packages)", p.display(), lock.packages.len()),
                );
            }
        }
        Cmd::Keygen { dir, name } => {
            let (private, public) = crust_builder::sign::generate(&dir, &name)?;
            report::status(
                "Created",
                format!(
                    "{} (keep it secret) and {}",
                    private.display(),
                    public.display()
                ),
            );
            eprintln!(
                "Set `[signing] key = \"{}\"` in your profile to sign with it.",
                private.display()
            );
        }
        Cmd::Test { no_lint } => test::run_all(!no_lint)?,
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if !matches!(e.downcast_ref::<std::io::Error>(), Some(io) if io.kind() == std::io::ErrorKind::BrokenPipe)
            {
                eprintln!("error: {e:#}");
            }
            ExitCode::FAILURE
        }
    }
}
