//! Bare-metal outputs: the installer ISO and the network boot folder (docs/METAL.md,
//! docs/FORMAT.md §15).
//!
//! The ISO is hybrid: an ISO 9660 file system labelled [`install::LABEL`] (with Rock Ridge
//! names) whose El Torito boot catalogue names a FAT image appended as GPT partition 2,
//! holding `EFI/BOOT/BOOTX64.EFI` = the installer UKI. UEFI firmware boots it from a CD,
//! from BMC virtual media, and from a USB stick the file was `dd`'d onto (the GPT makes the
//! FAT image an ESP there). xorriso writes it; the FAT image comes from our own writer
//! ([`crate::fat`]). Under [`install::DIR`] the ISO carries the compressed image and a list
//! signed with the image's key: the installer trusts nothing on the medium the list does
//! not name (the installer UKI itself is the firmware's to check, as any UKI).
//!
//! `SOURCE_DATE_EPOCH` set to the build's epoch makes xorriso's output a function of its
//! input (every time stamp, the volume and GPT identifiers), so two builds give the same
//! bytes.
//!
//! The netboot folder is the netboot UKI (written by the build) plus slot A's root and
//! verity partitions cut out of the image, exactly as long as the signed manifest says.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use crust_format::install;
use crust_format::layout::{Role, Slot};
use crust_format::manifest::Manifest;
use crust_format::sums::Sums;

use crate::build::outputs;
use crate::fat::{self, FatOptions, FatTree};
use crate::formats::Stamp;
use crate::output;
use crate::release::{self, hash_file};
use crate::sign::SigningKey;

/// The FAT image's name in the work folder (not on the ISO's file system).
const EFI_IMAGE: &str = "efiboot.img";
/// Where UEFI firmware looks for a removable medium's boot loader.
const REMOVABLE_BOOT_PATH: &str = "EFI/BOOT/BOOTX64.EFI";
/// Room for the FAT structures besides the UKI.
const FAT_SLACK: u64 = 2 << 20;

/// Makes the installer ISO `dest` from the raw `image` and `out_dir`'s `image.raw.zst` and
/// `installer.efi`; `user_data`, when given, goes onto the ISO under the signed list.
pub fn iso(
    image: &Path,
    out_dir: &Path,
    dest: &Path,
    key: &SigningKey,
    stamp: &Stamp,
    user_data: Option<&Path>,
) -> Result<()> {
    let uki_path = out_dir.join(install::INSTALLER_UKI);
    let uki =
        std::fs::read(&uki_path).with_context(|| format!("cannot read {}", uki_path.display()))?;
    let work = tempfile::Builder::new()
        .prefix(".installer.iso.")
        .tempdir_in(out_dir)
        .with_context(|| format!("cannot create a temporary folder in {}", out_dir.display()))?;
    let root = work.path().join("root");
    let dir = root.join(install::DIR);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;

    // The medium's release: the image (linked, not copied), user-data, the signed list.
    let mut sums = Sums::default();
    // The release's signed digest of the image when it has one (hashing 3 GiB takes
    // seconds), else the image's own.
    let listed = (image == out_dir.join(outputs::IMAGE))
        .then(|| release::signed_sums(out_dir, &key.public_key()).ok())
        .flatten()
        .and_then(|old| old.get(outputs::IMAGE).copied());
    let raw_digest = match listed {
        Some(d) => d,
        None => hash_file(image)?,
    };
    sums.insert(install::RAW_IMAGE, raw_digest);
    let zst = out_dir.join(install::IMAGE);
    output::link_or_copy(&zst, &dir.join(install::IMAGE))?;
    sums.insert(install::IMAGE, hash_file(&zst)?);
    if let Some(user_data) = user_data {
        let text = std::fs::read(user_data).with_context(|| {
            format!(
                "cannot read the installer's user-data {}",
                user_data.display()
            )
        })?;
        std::str::from_utf8(&text).with_context(|| {
            format!(
                "the installer's user-data {} is not UTF-8 text",
                user_data.display()
            )
        })?;
        output::write_atomic(&dir.join(install::USER_DATA), &text)?;
        sums.insert(install::USER_DATA, crust_format::Digest::of(&text));
    }
    release::write(&dir, &sums, key)?;

    // The El Torito image: a FAT volume holding the installer UKI where firmware looks.
    let mut tree = FatTree::new();
    tree.add_file(REMOVABLE_BOOT_PATH, uki)?;
    let size = (tree.data_bytes() + FAT_SLACK)
        .max(fat::MIN_VOLUME_SIZE)
        .div_ceil(1 << 20)
        * (1 << 20);
    let efi_path = work.path().join(EFI_IMAGE);
    let mut efi =
        File::create(&efi_path).with_context(|| format!("cannot create {}", efi_path.display()))?;
    efi.set_len(size)?;
    let options = FatOptions {
        volume_id: u32::from_le_bytes(stamp.build_id.0[4..8].try_into()?),
        label: "CRUST-EFI".into(),
        timestamp: stamp.epoch,
        hidden_sectors: 0,
    };
    fat::write_volume(&mut efi, size, &options, &tree)
        .with_context(|| format!("cannot write the FAT image {}", efi_path.display()))?;
    efi.sync_all()?;
    drop(efi);

    let tmp = work.path().join("installer.iso");
    let out = Command::new("xorriso")
        .env("SOURCE_DATE_EPOCH", stamp.epoch.to_string())
        .args(["-as", "mkisofs", "-quiet", "-o"])
        .arg(&tmp)
        // Rock Ridge (owners root, modes readable), names as they are, files over 4 GiB.
        .args(["-r", "-iso-level", "3", "-V", install::LABEL])
        .arg("--set_all_file_dates")
        .arg(format!("={}", stamp.epoch))
        // The hybrid layout Debian's installer images use: the ISO as GPT partition 1
        // (16 blocks in), the FAT image appended as an ESP, El Torito pointing at it.
        .args(["-partition_offset", "16", "-append_partition", "2", "0xef"])
        .arg(&efi_path)
        .args([
            "-appended_part_as_gpt",
            "-e",
            "--interval:appended_partition_2:all::",
            "-no-emul-boot",
        ])
        .arg(&root)
        .output()
        .context("cannot run xorriso (install xorriso)")?;
    if !out.status.success() {
        bail!(
            "xorriso could not make {}: {}",
            dest.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let file = File::open(&tmp).with_context(|| format!("cannot read {}", tmp.display()))?;
    output::make_public(&file)
        .and_then(|_| file.sync_all())
        .with_context(|| format!("cannot write {}", dest.display()))?;
    std::fs::rename(&tmp, dest)
        .with_context(|| format!("cannot move the ISO to {}", dest.display()))?;
    Ok(())
}

/// Writes slot A's root and verity partitions of `image` into `out_dir` as
/// [`install::NETBOOT_ROOT`] and [`install::NETBOOT_VERITY`], as long as the manifest
/// beside the image says (the netboot UKI is already there: the build wrote it).
pub fn netboot(image: &Path, out_dir: &Path) -> Result<()> {
    let manifest_path = out_dir.join(outputs::MANIFEST);
    let text = std::fs::read(&manifest_path)
        .with_context(|| format!("cannot read {}", manifest_path.display()))?;
    let manifest = Manifest::parse(&text)
        .with_context(|| format!("cannot parse {}", manifest_path.display()))?;
    let uki = out_dir.join(install::NETBOOT_UKI);
    if !uki.is_file() {
        bail!("{} is missing: the build makes it", uki.display());
    }
    let mut disk = File::open(image).with_context(|| format!("cannot read {}", image.display()))?;
    let table = gpt::GptConfig::new()
        .writable(false)
        .logical_block_size(gpt::disk::LogicalBlockSize::Lb512)
        .open_from_device(&mut disk)
        .with_context(|| format!("cannot read the GPT of {}", image.display()))?
        .partitions()
        .clone();
    let offset_of = |role: Role| -> Result<(u64, u64)> {
        let part = table
            .values()
            .find(|p| p.name == role.label())
            .with_context(|| format!("{} has no partition {}", image.display(), role.label()))?;
        Ok((
            part.first_lba * 512,
            part.bytes_len(gpt::disk::LogicalBlockSize::Lb512)?,
        ))
    };
    let pieces = [
        (
            Role::Root(Slot::A),
            install::NETBOOT_ROOT,
            manifest.verity.data_size(),
        ),
        (
            Role::Verity(Slot::A),
            install::NETBOOT_VERITY,
            manifest.verity.hash_size,
        ),
    ];
    for (role, name, len) in pieces {
        let (offset, size) = offset_of(role)?;
        if len > size {
            bail!(
                "the manifest says {len} bytes for {}, but the partition holds {size}",
                role.label()
            );
        }
        let dest = out_dir.join(name);
        let mut tmp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .tempfile_in(out_dir)
            .with_context(|| format!("cannot create a temporary file in {}", out_dir.display()))?;
        disk.seek(SeekFrom::Start(offset))?;
        let copied = std::io::copy(&mut (&mut disk).take(len), tmp.as_file_mut())
            .with_context(|| format!("cannot copy {} into {}", role.label(), dest.display()))?;
        if copied != len {
            bail!("{} ends inside {}", image.display(), role.label());
        }
        tmp.as_file_mut().flush()?;
        output::make_public(tmp.as_file())
            .and_then(|_| tmp.as_file().sync_all())
            .with_context(|| format!("cannot write {}", dest.display()))?;
        tmp.persist(&dest)
            .with_context(|| format!("cannot move the output to {}", dest.display()))?;
    }
    Ok(())
}
