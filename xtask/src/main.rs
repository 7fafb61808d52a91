//! Crust's front door for developers and operators (the cargo-xtask convention): build an
//! image, boot it, pin its packages, make keys, check, flash and publish releases, run the
//! tests. `cargo xtask --help` lists the commands; each installs what it needs from Debian
//! first.

// Doc comments on the command line types are clap's help text, where `<name>` means a
// placeholder, not an HTML tag.
#![allow(rustdoc::invalid_html_tags)]

mod ami;
mod bench;
mod flash;
mod fleet;
mod fuzz;
mod host;
mod image;
mod keys;
mod publish;
mod qemu;
mod recover;
mod sbom;
mod test;
mod user_data;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use crust_builder::report;
use crust_format::repo::ReleaseState;

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
    /// Host configuration (docs/CONFIGURATION.md) on a NoCloud seed disk (label CIDATA).
    #[arg(long, value_name = "FILE")]
    user_data: Option<std::path::PathBuf>,
    /// Serve FILE as user-data from an EC2 IMDSv2 emulator at 169.254.169.254 (the
    /// machine then claims to be EC2, on the user network 169.254.169.0/24).
    #[arg(long, value_name = "FILE")]
    imds: Option<std::path::PathBuf>,
    /// Boot with OVMF's Secure Boot firmware, the profile's PK, KEK and db enrolled: only
    /// what its db key signed runs (the profile needs [secure-boot]; docs/SECURE-BOOT.md).
    #[arg(long)]
    secure_boot: bool,
}

#[derive(Subcommand)]
enum FleetCmd {
    /// The hosts: how many run each version, which are mid-update, which rolled back.
    Status {
        /// An etcd member, http://host:2379.
        #[arg(long)]
        etcd: String,
        /// Only this group.
        #[arg(long)]
        group: Option<String>,
        /// Print the hosts' status documents as JSON.
        #[arg(long)]
        json: bool,
    },
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
        /// Also make this output format, besides the profile's: raw, raw.zst, qcow2, vmdk,
        /// vhd, gce, iso, netboot (repeatable, or comma-separated).
        #[arg(long = "format", value_delimiter = ',')]
        formats: Vec<crust_builder::profile::OutputFormat>,
        /// User-data for the installer ISO (`--format iso`): put on the ISO under its signed
        /// list; its `[install]` table chooses the disk (docs/METAL.md).
        #[arg(long, value_name = "FILE")]
        user_data: Option<std::path::PathBuf>,
        /// The folder (http:// or https:// URL) a network-booted host fetches root.img and
        /// verity.img from: `crust.netboot.url=` on the netboot UKI's signed command line
        /// (`--format netboot`; docs/METAL.md). Without it: the DHCP boot file's folder
        /// when that is a URL (UEFI HTTP boot), else TFTP from the DHCP server.
        #[arg(long, value_name = "URL")]
        netboot_url: Option<String>,
    },
    /// Read releases' software bills of materials (sbom.spdx.json; docs/FORMAT.md §13).
    Sbom {
        #[command(subcommand)]
        command: SbomCmd,
    },
    /// Check a release folder: the signature over SHA256SUMS, then every file's digest.
    Verify {
        /// The folder (e.g. target/crust/qemu).
        dir: std::path::PathBuf,
        /// The public key (.pub; default: the profile's key, else the development key).
        #[arg(long)]
        key: Option<std::path::PathBuf>,
    },
    /// Write a signed image onto a disk: checks, data regions only, read-back, GPT at the end.
    Flash {
        /// The raw image (its folder must hold SHA256SUMS and SHA256SUMS.sig).
        #[arg(long)]
        image: std::path::PathBuf,
        /// The whole disk to overwrite, e.g. /dev/sdb.
        #[arg(long)]
        device: std::path::PathBuf,
        /// Do not ask before writing.
        #[arg(long)]
        yes: bool,
        /// Accept a regular file as the disk (an image file standing in for one).
        #[arg(long)]
        allow_file: bool,
        /// The public key the release must be signed with (default as for `verify`).
        #[arg(long)]
        key: Option<std::path::PathBuf>,
    },
    /// Publish a raw image as an AWS AMI (EBS direct-API snapshot, then RegisterImage).
    Ami {
        /// The raw image (its folder must hold SHA256SUMS and SHA256SUMS.sig).
        #[arg(long)]
        image: std::path::PathBuf,
        /// The AMI name.
        #[arg(long)]
        name: String,
        /// The AWS region.
        #[arg(long)]
        region: String,
        /// Send every AWS call to this endpoint (a local emulator such as moto).
        #[arg(long)]
        endpoint_url: Option<String>,
        /// The AMI description.
        #[arg(long)]
        description: Option<String>,
        /// The public key the release must be signed with (default as for `verify`).
        #[arg(long)]
        key: Option<std::path::PathBuf>,
        /// Register the AMI with this Secure Boot key folder's PK, KEK and db in its UEFI
        /// variables, so instances enforce Secure Boot (default: the keys of the profile
        /// whose output folder holds the image, if it has [secure-boot]).
        #[arg(long, value_name = "DIR")]
        secure_boot: Option<std::path::PathBuf>,
    },
    /// Build the image, boot it in QEMU until it is up, then power it off (no terminal needed).
    Run {
        /// Profile name or path [default: qemu, or qemu-secure-boot with --secure-boot].
        #[arg(long)]
        profile: Option<String>,
        #[command(flatten)]
        boot: BootArgs,
    },
    /// Boot the built image in QEMU (KVM when it works here, TCG otherwise).
    Qemu {
        /// Profile name or path [default: qemu, or qemu-secure-boot with --secure-boot].
        #[arg(long)]
        profile: Option<String>,
        /// Boot the installer ISO (`cargo xtask build --format iso`) as a CD-ROM, with
        /// empty disks to install onto.
        #[arg(long)]
        iso: bool,
        /// How many empty disks the installer sees (with --iso).
        #[arg(long, default_value_t = 1, requires = "iso")]
        disks: usize,
        /// Boot the netboot UKI (`cargo xtask build --format netboot`) on a diskless machine
        /// by UEFI PXE from QEMU's TFTP server (live mode, docs/METAL.md).
        #[arg(long, conflicts_with = "iso")]
        netboot: bool,
        /// With --netboot: start the installer UKI instead, which fetches the release from
        /// the same TFTP server and installs it onto an empty disk.
        #[arg(long, requires = "netboot")]
        install: bool,
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
    /// Add the profile's update bundle to an update repository (static files for any HTTP
    /// server), or pause, resume or pull a release already published.
    Publish {
        /// Profile name or path (its last build's update.bundle is published).
        #[arg(long, default_value = "qemu")]
        profile: String,
        /// The repository folder (created if missing).
        #[arg(long)]
        repo: std::path::PathBuf,
        /// The channel whose index lists the release.
        #[arg(long, default_value = "stable")]
        channel: String,
        /// Days until the channel index expires (hosts refuse an expired index).
        #[arg(long, default_value_t = 30)]
        valid_days: u64,
        /// Let hosts move to a lower version than they run.
        #[arg(long)]
        allow_downgrade: bool,
        /// How long the release takes to reach every host (0, 90s, 10m, 24h, 7d): each host
        /// starts at its own stable place in that time.
        #[arg(long, default_value = "0", value_parser = publish::parse_duration)]
        rollout: u64,
        /// Stop the release: no further host starts it (hosts on it stay).
        #[arg(long, value_name = "VERSION", group = "change")]
        pause: Option<String>,
        /// Let a paused release go on.
        #[arg(long, value_name = "VERSION", group = "change")]
        resume: Option<String>,
        /// Withdraw the release: hosts that do not run it never install it.
        #[arg(long, value_name = "VERSION", group = "change")]
        pull: Option<String>,
        /// Sign with this key instead of the profile's (key rotation: publish an image that
        /// carries a new key with the key the hosts still trust).
        #[arg(long, value_name = "KEY")]
        key: Option<std::path::PathBuf>,
    },
    /// What the fleet's hosts report in etcd (user-data `[fleet]`).
    Fleet {
        #[command(subcommand)]
        command: FleetCmd,
    },
    /// Sign user-data for images whose profile has `[config] signed = true`: writes
    /// FILE.sig (a NoCloud seed's `user-data.sig`), or with --inline OUT the user-data
    /// followed by its signature line (EC2 IMDS, crust.config=).
    SignUserData {
        /// The private key (a key the image trusts: `[config] keys`, else its signing key).
        #[arg(long)]
        key: std::path::PathBuf,
        /// The user-data file.
        file: std::path::PathBuf,
        /// Write the inline form to OUT instead of FILE.sig.
        #[arg(long, value_name = "OUT")]
        inline: Option<std::path::PathBuf>,
    },
    /// Make an Ed25519 signing key pair (private key mode 0600); with --secure-boot a
    /// Secure Boot key set (PK, KEK, db and the PCR signing key) in DIR/secure-boot, or the
    /// keys an existing set lacks; with --recovery an owner's X25519 recovery key pair.
    Keygen {
        /// Folder for the key files.
        #[arg(long, default_value = "keys")]
        dir: std::path::PathBuf,
        /// Base name: NAME.key and NAME.pub (with --secure-boot: the certificates' name;
        /// with --recovery: NAME-recovery.key and NAME-recovery.pub).
        #[arg(long, default_value = "crust")]
        name: String,
        /// Make the Secure Boot key set instead (docs/SECURE-BOOT.md).
        #[arg(long, conflicts_with = "recovery")]
        secure_boot: bool,
        /// Make an owner's recovery key pair for `[state] recovery-key` instead.
        #[arg(long)]
        recovery: bool,
    },
    /// Recover the volume key of an encrypted /var from its disk (an image, a disk or the
    /// state partition) with the owner's recovery key, into a file only you can read.
    Recover {
        /// The disk, image file or state partition.
        disk: std::path::PathBuf,
        /// The owner's private recovery key (NAME-recovery.key).
        #[arg(long)]
        key: std::path::PathBuf,
        /// Where to write the 64-byte key (must not exist).
        #[arg(long, default_value = "volume.key")]
        out: std::path::PathBuf,
    },
    /// Measure build time, image size and boot time against the reference floor
    /// (docs/BENCHMARKS.md); results in target/crust/bench/.
    Bench {
        /// Profile name or path.
        #[arg(long, default_value = "qemu")]
        profile: String,
        /// Runs of each build kind and boots of the image and the floor (medians reported).
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
        iterations: u32,
        /// One iteration and no cold build: a quick check that everything works.
        #[arg(long)]
        quick: bool,
        /// Skip the cold builds (they download every package again).
        #[arg(long)]
        no_cold: bool,
        /// Skip the boots (and the boot chart).
        #[arg(long)]
        no_boot: bool,
        /// Folder for the results instead of target/crust/bench.
        #[arg(long)]
        out: Option<std::path::PathBuf>,
        /// Use this static init binary instead of building the workspace's.
        #[arg(long, value_name = "FILE")]
        init: Option<std::path::PathBuf>,
    },
    /// Fuzz the parsers of untrusted bytes (cargo-fuzz on nightly, installed on first
    /// use): each target for a while, new inputs minimised into fuzz/corpus/<target>/;
    /// prints executions, coverage and crashes (docs/ROBUSTNESS.md).
    Fuzz {
        /// The target to run (default: every target in turn).
        target: Option<String>,
        /// Seconds per target.
        #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
        seconds: u64,
        /// List the targets with what each feeds, and do nothing else.
        #[arg(long)]
        list: bool,
        /// libFuzzer processes per target (above 1, fork mode: the run goes on after a
        /// crash and collects them all).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        jobs: u32,
    },
    /// Run every test: formats checked by independent tools, and boots in QEMU.
    Test {
        /// Skip rustfmt and clippy.
        #[arg(long)]
        no_lint: bool,
        /// Skip the AMI test (it builds the AWS SDK: a few minutes, 7 GB of memory).
        #[arg(long)]
        no_ami: bool,
        /// How many test binaries run at once (each boots at most one QEMU machine at a
        /// time, which keeps one core busy under TCG); default: the host's cores, at most 4.
        #[arg(long)]
        jobs: Option<usize>,
    },
    /// QEMU runs this per guest connection to the IMDS emulator (`--imds`), the
    /// connection on standard input and output.
    #[command(hide = true)]
    ImdsConnection {
        /// The emulator's state folder.
        dir: std::path::PathBuf,
    },
}

#[derive(Subcommand)]
enum SbomCmd {
    /// Packages added, removed and changed between two releases (release folders such as
    /// target/crust/qemu, update bundles, or .spdx.json files). Signatures are not checked
    /// here: `cargo xtask verify` checks a release.
    Diff {
        /// The older release.
        old: std::path::PathBuf,
        /// The newer release.
        new: std::path::PathBuf,
    },
    /// Whether a release holds a package, and at what version and where (exit status 1
    /// if it does not). A Debian source package's name finds the packages built from it.
    Query {
        /// The release folder, update bundle or .spdx.json file.
        dir: std::path::PathBuf,
        /// The package name.
        package: String,
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

/// The profile of `run` and `qemu`: the one named, else `qemu-secure-boot` for a Secure
/// Boot machine and `qemu` otherwise.
fn boot_profile(profile: Option<String>, args: &BootArgs) -> String {
    profile.unwrap_or_else(|| {
        if args.secure_boot {
            "qemu-secure-boot".to_owned()
        } else {
            "qemu".to_owned()
        }
    })
}

fn qemu_options(args: &BootArgs, profile: &str) -> Result<qemu::QemuOptions> {
    Ok(qemu::QemuOptions {
        nvme: args.nvme,
        reset: args.reset,
        memory_mib: args.memory,
        forwards: args.forwards.clone(),
        user_data: args.user_data.clone(),
        imds: args.imds.clone(),
        secure_boot: if args.secure_boot {
            Some(qemu::secure_boot_keys(&image::profile_path(profile))?)
        } else {
            None
        },
    })
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Cmd::Build {
            profile,
            out,
            locked,
            formats,
            user_data,
            netboot_url,
        } => {
            let extras = crust_builder::build::Extras {
                installer_user_data: user_data,
                netboot_url,
            };
            image::build_extras(&profile, out.as_deref(), locked, &formats, extras)?;
        }
        Cmd::Sbom {
            command: SbomCmd::Diff { old, new },
        } => sbom::diff(&old, &new)?,
        Cmd::Sbom {
            command: SbomCmd::Query { dir, package },
        } => sbom::query(&dir, &package)?,
        Cmd::Verify { dir, key } => keys::verify(&dir, key.as_deref())?,
        Cmd::Recover { disk, key, out } => recover::run(&disk, &key, &out)?,
        Cmd::Flash {
            image,
            device,
            yes,
            allow_file,
            key,
        } => flash::run(&flash::Options {
            image: &image,
            device: &device,
            key: key.as_deref(),
            yes,
            allow_file,
        })?,
        Cmd::Ami {
            image,
            name,
            region,
            endpoint_url,
            description,
            key,
            secure_boot,
        } => ami::run(&ami::Options {
            image: &image,
            name: &name,
            region: &region,
            endpoint_url: endpoint_url.as_deref(),
            description: description.as_deref(),
            key: key.as_deref(),
            secure_boot: secure_boot.as_deref(),
        })?,
        Cmd::Run {
            profile,
            boot: args,
        } => {
            // Everything the build and the boot need, in one install.
            host::ensure(&[host::BUILD, host::QEMU])?;
            let profile = boot_profile(profile, &args);
            let outcome = image::build(&profile, None, false)?;
            let out = outcome.image.parent().unwrap_or(std::path::Path::new("."));
            let mut opts = qemu_options(&args, &profile)?;
            if opts.forwards.is_empty() {
                // Show the demo web service: a free host port to the guest's port 80.
                let port = std::net::TcpListener::bind("127.0.0.1:0")?
                    .local_addr()?
                    .port();
                opts.forwards.push((port, 80));
            }
            qemu::demonstrate(out, &opts)?;
        }
        Cmd::Qemu {
            profile,
            iso,
            disks,
            netboot,
            install,
            boot: args,
        } => {
            let profile = boot_profile(profile, &args);
            let out = image::out_dir(&image::profile_path(&profile));
            if netboot {
                qemu::interactive_netboot(&out, &qemu_options(&args, &profile)?, install)?;
            } else if iso {
                qemu::interactive_iso(&out, &qemu_options(&args, &profile)?, disks)?;
            } else {
                qemu::interactive(&out, &qemu_options(&args, &profile)?)?;
            }
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
        Cmd::Publish {
            profile,
            repo,
            channel,
            valid_days,
            allow_downgrade,
            rollout,
            pause,
            resume,
            pull,
            key,
        } => {
            let change = pause
                .map(|v| (v, ReleaseState::Paused))
                .or(resume.map(|v| (v, ReleaseState::Active)))
                .or(pull.map(|v| (v, ReleaseState::Pulled)));
            publish::run(&publish::Options {
                profile,
                repo,
                channel,
                valid_days,
                allow_downgrade,
                rollout,
                change,
                key,
            })?;
        }
        Cmd::Keygen {
            dir,
            recovery: true,
            name,
            ..
        } => {
            host::ensure(&[host::BUILD])?;
            let keys =
                crust_builder::sealed::generate_recovery_key(&dir, &format!("{name}-recovery"))?;
            report::status(
                "Created",
                format!(
                    "{} (keep it offline: it opens every /var encrypted to it) and {}",
                    keys.private.display(),
                    keys.public.display()
                ),
            );
            eprintln!(
                "Set `[state] recovery-key = \"{}\"` in your profile: hosts then keep a copy of \
                 their /var key encrypted to it (docs/SECURE-BOOT.md#recovery).",
                keys.public.display()
            );
        }
        Cmd::Keygen {
            dir,
            name,
            secure_boot: true,
            ..
        } if dir
            .join("secure-boot")
            .join(crust_builder::secureboot::keys::OWNER_FILE)
            .is_file() =>
        {
            host::ensure(&[host::BUILD])?;
            let keys = crust_builder::secureboot::KeySet::open(&dir.join("secure-boot"))?;
            let _ = name;
            if keys.add_pcr_key()? {
                report::status(
                    "Added",
                    format!(
                        "{} and {} to the existing set (nothing else changed)",
                        keys.pcr_key().display(),
                        keys.pcr_public().display()
                    ),
                );
            } else {
                report::status(
                    "Complete",
                    format!(
                        "{} lacks nothing; keys are never overwritten",
                        keys.dir().display()
                    ),
                );
            }
        }
        Cmd::Keygen {
            dir,
            name,
            secure_boot: true,
            ..
        } => {
            host::ensure(&[host::BUILD])?;
            let keys = crust_builder::secureboot::generate(&dir.join("secure-boot"), &name)?;
            let shown = keys
                .dir()
                .canonicalize()
                .unwrap_or_else(|_| keys.dir().to_path_buf());
            report::status(
                "Created",
                format!(
                    "{}: PK, KEK, db and the PCR signing key tpm2-pcr (.key: keep secret; .crt, \
                     .esl, .auth, .pub: public)",
                    shown.display()
                ),
            );
            eprintln!(
                "Set `[secure-boot] keys = \"{}\"` in your profile to sign with them. Builds \
                 need only db.key: keep PK.key and KEK.key offline (docs/SECURE-BOOT.md).",
                shown.display()
            );
        }
        Cmd::Keygen { dir, name, .. } => {
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
        Cmd::Fleet {
            command: FleetCmd::Status { etcd, group, json },
        } => fleet::status(&etcd, group.as_deref(), json)?,
        Cmd::SignUserData { key, file, inline } => {
            user_data::sign(&key, &file, inline.as_deref())?;
        }
        Cmd::Bench {
            profile,
            iterations,
            quick,
            no_cold,
            no_boot,
            out,
            init,
        } => {
            bench::run(&bench::Options {
                profile,
                iterations: if quick { 1 } else { iterations as usize },
                cold: !quick && !no_cold,
                boot: !no_boot,
                quick,
                out,
                init,
            })?;
        }
        Cmd::Fuzz {
            target,
            seconds,
            list,
            jobs,
        } => {
            if list {
                fuzz::list()?;
            } else {
                fuzz::run(&fuzz::Options {
                    target,
                    seconds,
                    jobs,
                })?;
            }
        }
        Cmd::Test {
            no_lint,
            no_ami,
            jobs,
        } => test::run_all(!no_lint, !no_ami, jobs.unwrap_or_else(test::default_jobs))?,
        Cmd::ImdsConnection { dir } => crust_vm::imds::Emulator::open(&dir)
            .serve(std::io::stdin().lock(), std::io::stdout().lock())?,
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
