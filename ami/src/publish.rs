//! The three steps of publishing: upload the snapshot, register the AMI, wait for it.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use aws_config::{BehaviorVersion, Region};
use aws_sdk_ec2::client::Waiters;
use aws_sdk_ec2::operation::register_image::builders::RegisterImageFluentBuilder;
use aws_sdk_ec2::types::{
    ArchitectureValues, BlockDeviceMapping, BootModeValues, EbsBlockDevice, ImdsSupportValues,
    VolumeType,
};
use coldsnap::{SnapshotUploader, SnapshotWaiter, UploadZeroBlocks, WaitParams};
use indicatif::{ProgressBar, ProgressStyle};

/// The root device name of the AMI (what the instance's firmware sees first).
pub const ROOT_DEVICE: &str = "/dev/xvda";

/// What to publish, and where.
#[derive(Debug, Clone)]
pub struct Request {
    /// The raw disk image.
    pub image: PathBuf,
    /// The AMI name.
    pub name: String,
    /// The AWS region.
    pub region: String,
    /// An endpoint for every AWS call instead of the regional ones.
    pub endpoint_url: Option<String>,
    /// The AMI and snapshot description.
    pub description: Option<String>,
    /// Parallel block uploads.
    pub workers: usize,
    /// Longest wait for the snapshot, then for the AMI.
    pub timeout: Duration,
    /// The AMI's UEFI variable store (`UefiData`: base64 of AWS's format), holding the
    /// Secure Boot keys its instances enforce; `None` leaves the store empty.
    pub uefi_data: Option<String>,
}

/// What was made.
#[derive(Debug, Clone)]
pub struct Published {
    /// The EBS snapshot holding the image.
    pub snapshot_id: String,
    /// The AMI.
    pub image_id: String,
}

/// Uploads the image, registers the AMI and waits until it is available.
pub async fn publish(req: &Request) -> Result<Published> {
    check_name(&req.name)?;
    let len = check_image(req)?;
    check_uefi_data(req.uefi_data.as_deref())?;
    let description = req.description.clone().unwrap_or_else(|| {
        format!(
            "Crust image {} ({})",
            req.name,
            req.image
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        )
    });

    let mut loader =
        aws_config::defaults(BehaviorVersion::latest()).region(Region::new(req.region.clone()));
    if let Some(url) = &req.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    let config = loader.load().await;
    let ebs = aws_sdk_ebs::Client::new(&config);
    let ec2 = aws_sdk_ec2::Client::new(&config);

    eprintln!(
        "crust-ami: uploading {} ({len} bytes) to an EBS snapshot in {}",
        req.image.display(),
        req.region
    );
    let bar = ProgressBar::new(0).with_message("Uploading");
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:>12} [{bar:40.green/dim}] {pos}/{len} blocks {per_sec} {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let snapshot_id = SnapshotUploader::new(ebs)
        .upload_from_file(
            &req.image,
            None,
            Some(&description),
            None,
            Some(bar.clone()),
            Some(UploadZeroBlocks::Omit),
            None,
            None,
            Some(req.workers),
        )
        .await
        .with_context(|| format!("cannot upload {} as a snapshot", req.image.display()))?;
    bar.finish_and_clear();
    eprintln!("crust-ami: snapshot {snapshot_id} uploaded; waiting for it to complete");

    // Two answers in a row, as EC2's reads are eventually consistent; at most 255 polls.
    let interval = Duration::from_secs(5);
    let attempts =
        u8::try_from((req.timeout.as_secs() / interval.as_secs()).clamp(2, 255)).unwrap_or(u8::MAX);
    SnapshotWaiter::new(ec2.clone())
        .wait(
            &snapshot_id,
            WaitParams::new(
                Some("completed".to_owned()),
                Some(2),
                Some(attempts),
                Some(interval),
            ),
        )
        .await
        .with_context(|| format!("snapshot {snapshot_id} did not complete"))?;

    let registered = registration(ec2.register_image(), &req.name, &description, &snapshot_id)
        .set_uefi_data(req.uefi_data.clone())
        .send()
        .await
        .with_context(|| format!("cannot register an AMI from snapshot {snapshot_id}"))?;
    let image_id = registered
        .image_id
        .context("RegisterImage returned no image id")?;
    eprintln!("crust-ami: registered {image_id}; waiting until it is available");

    ec2.wait_until_image_available()
        .image_ids(&image_id)
        .wait(req.timeout)
        .await
        .with_context(|| format!("{image_id} did not become available"))?;
    Ok(Published {
        snapshot_id,
        image_id,
    })
}

/// The RegisterImage call for a Crust disk: UEFI (systemd-boot), x86_64 HVM, ENA, IMDSv2
/// only, and the snapshot as a gp3 root volume deleted with the instance.
pub fn registration(
    call: RegisterImageFluentBuilder,
    name: &str,
    description: &str,
    snapshot_id: &str,
) -> RegisterImageFluentBuilder {
    call.name(name)
        .description(description)
        .architecture(ArchitectureValues::X8664)
        .boot_mode(BootModeValues::Uefi)
        .ena_support(true)
        .imds_support(ImdsSupportValues::V20)
        .virtualization_type("hvm")
        .root_device_name(ROOT_DEVICE)
        .block_device_mappings(
            BlockDeviceMapping::builder()
                .device_name(ROOT_DEVICE)
                .ebs(
                    EbsBlockDevice::builder()
                        .snapshot_id(snapshot_id)
                        .volume_type(VolumeType::Gp3)
                        .delete_on_termination(true)
                        .build(),
                )
                .build(),
        )
}

/// Refuses a UEFI variable store EC2 would refuse, before anything is uploaded: base64
/// text of at most 64000 characters.
fn check_uefi_data(data: Option<&str>) -> Result<()> {
    let Some(data) = data else { return Ok(()) };
    let base64 = |c: char| c.is_ascii_alphanumeric() || "+/=".contains(c);
    if data.is_empty() || data.len() > 64_000 || !data.chars().all(base64) {
        bail!(
            "--uefi-data: {} characters{}; EC2 takes base64 text of 1 to 64000 characters \
             (make it with `uefivars -o aws`)",
            data.len(),
            if data.chars().all(base64) {
                ""
            } else {
                ", not all base64"
            }
        );
    }
    Ok(())
}

/// Refuses a name EC2 would refuse, before anything is uploaded.
fn check_name(name: &str) -> Result<()> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "()[] ./-'@_".contains(c);
    if !(3..=128).contains(&name.len()) || !name.chars().all(allowed) {
        bail!(
            "--name {name:?}: an AMI name is 3 to 128 characters of letters, digits and ( ) [ ] space . / - ' @ _"
        );
    }
    Ok(())
}

/// The image's length, after refusing what cannot be a disk.
fn check_image(req: &Request) -> Result<u64> {
    let meta = std::fs::metadata(&req.image)
        .with_context(|| format!("cannot read {}", req.image.display()))?;
    if !meta.is_file() {
        bail!(
            "{} is not a file; pass the raw image (image.raw) of a build",
            req.image.display()
        );
    }
    if meta.len() == 0 || meta.len() % 512 != 0 {
        bail!(
            "{} is {} bytes, not a whole number of 512-byte sectors: not a raw disk image",
            req.image.display(),
            meta.len()
        );
    }
    if req.workers == 0 {
        bail!("--workers must be at least 1");
    }
    Ok(meta.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_ec2_refuses_are_refused() {
        assert!(check_name("crust-1.0.0 (qemu)").is_ok());
        assert!(check_name("ab").is_err());
        assert!(check_name("crust:1").is_err());
        assert!(check_name(&"a".repeat(129)).is_err());
    }

    #[test]
    fn uefi_data_must_be_base64_that_ec2_takes() {
        assert!(check_uefi_data(None).is_ok());
        assert!(check_uefi_data(Some("QU1aTlVFRkk=")).is_ok());
        assert!(check_uefi_data(Some("")).is_err());
        assert!(check_uefi_data(Some("not base64!")).is_err());
        assert!(check_uefi_data(Some(&"A".repeat(64_001))).is_err());
    }
}
