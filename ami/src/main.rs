//! `crust-ami`: publishes a Crust raw disk image as an Amazon Machine Image.
//!
//! The image is uploaded as an EBS snapshot through the EBS direct APIs (StartSnapshot,
//! PutSnapshotBlock, CompleteSnapshot) by the `coldsnap` crate: blocks go up in parallel,
//! blocks of zeros are skipped (a Crust image is mostly holes), and a progress bar shows the
//! blocks sent. Once EC2 reports the snapshot completed, the AMI is registered from it
//! ([`publish::registration`]: UEFI boot, ENA, x86_64, IMDSv2 required, a gp3 root volume),
//! and the command waits until the AMI is available and prints its id on stdout. With
//! `--uefi-data` the AMI carries a UEFI variable store (the user's Secure Boot keys), so its
//! instances boot with Secure Boot enforced.
//!
//! Credentials and region settings come from the standard AWS chain (environment, shared
//! config and credentials files, SSO, IMDS); `--endpoint-url` points every call at another
//! endpoint, such as a local AWS API emulator in tests.
//!
//! This crate is not part of the Crust workspace: the AWS SDK takes long to compile, so
//! only `cargo xtask ami` (and `cargo xtask test`) build it, on first use. Use it through
//! `cargo xtask ami`, which checks the image's release signature before anything is sent.

mod publish;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

/// Uploads a raw disk image as an EBS snapshot and registers it as an AMI.
#[derive(Parser, Debug)]
#[command(name = "crust-ami", version, about)]
struct Cli {
    /// The raw disk image (`image.raw` of a build).
    #[arg(long)]
    image: PathBuf,
    /// The AMI name (unique in the account and region; 3-128 characters).
    #[arg(long)]
    name: String,
    /// The AWS region, e.g. eu-west-1.
    #[arg(long, env = "AWS_REGION")]
    region: String,
    /// Send every AWS call to this endpoint instead (a local emulator such as moto).
    #[arg(long)]
    endpoint_url: Option<String>,
    /// The AMI and snapshot description.
    #[arg(long)]
    description: Option<String>,
    /// Parallel block uploads.
    #[arg(long, default_value_t = 64)]
    workers: usize,
    /// Longest wait for the snapshot and then the AMI, in seconds.
    #[arg(long, default_value_t = 3600)]
    timeout: u64,
    /// Register the AMI with the UEFI variable store in FILE (base64, as AWS's
    /// `uefivars -o aws` writes it), e.g. Secure Boot keys.
    #[arg(long, value_name = "FILE")]
    uefi_data: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let uefi_data = match &cli.uefi_data {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => Some(text.trim().to_owned()),
            Err(e) => {
                eprintln!("error: cannot read --uefi-data {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    let request = publish::Request {
        image: cli.image,
        name: cli.name,
        region: cli.region,
        endpoint_url: cli.endpoint_url,
        description: cli.description,
        workers: cli.workers,
        timeout: Duration::from_secs(cli.timeout),
        uefi_data,
    };
    match runtime.block_on(publish::publish(&request)) {
        Ok(published) => {
            eprintln!(
                "crust-ami: {} is available (snapshot {})",
                published.image_id, published.snapshot_id
            );
            println!("{}", published.image_id);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
