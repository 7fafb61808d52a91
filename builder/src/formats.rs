//! Output formats: the built `image.raw` converted for hypervisors and clouds.
//!
//! | format | file | made by | why |
//! |---|---|---|---|
//! | `raw` | `image.raw` | the build | the source of every other format; `flash` and `ami` use it |
//! | `raw.zst` | `image.raw.zst` | zstd (library, level 19) | compact download; `zstd -d` restores a sparse file |
//! | `qcow2` | `image.qcow2` | `qemu-img convert` | QEMU's own format: qemu-img is its reference writer |
//! | `vmdk` | `image.vmdk` | `qemu-img convert`, streamOptimized | what VMware and AWS VM Import take |
//! | `vhd` | `image.vhd` | `qemu-img convert`, fixed, `force_size` | what Azure takes: raw + a 512-byte footer, size a whole MiB |
//! | `gce` | `image.tar.gz` | GNU tar (oldgnu, sparse) + `gzip -n` | GCE's import: `disk.raw`, a whole GiB, in a gzipped tar |
//! | `iso` | `installer.iso` (+ `image.raw.zst`, `installer.efi`) | xorriso ([`crate::installer`]) | bare metal: CD, BMC virtual media, USB stick |
//! | `netboot` | `netboot.efi`, `root.img`, `verity.img` | the build; the slot's partitions | PXE and UEFI HTTP boot, diskless hosts |
//!
//! qemu-img is the standard converter (Azure's and AWS's documentation name it) and it
//! reads only the image's data, so conversions take a second or two. Two of its writers
//! put chance into the file, which this module replaces with values derived from the build
//! so that every output is a pure function of the image and its [`Stamp`]:
//! - VMDK: the descriptor's content id (`CID=`, `g_random_int()` in QEMU) becomes the first
//!   four bytes of the build id; the descriptor also names the file, so the conversion
//!   writes under the final name in a private folder.
//! - VHD: the footer's time stamp (the clock) becomes `SOURCE_DATE_EPOCH` and its unique id
//!   (random) a UUID derived from the build id; the footer checksum is recomputed.
//!
//! Every output is written under a temporary name in the output folder and renamed into
//! place when complete.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use crust_format::Digest;

use crust_format::install;

use crate::build::Extras;
use crate::profile::OutputFormat;
use crate::sign::SigningKey;
use crate::{backup_gpt, installer, output, sparse};

/// What makes a build's outputs differ from another build's of the same image bytes:
/// chance in file formats is replaced by values derived from these.
#[derive(Debug, Clone, Copy)]
pub struct Stamp {
    /// The build id.
    pub build_id: Digest,
    /// `SOURCE_DATE_EPOCH` of the build, for time stamps.
    pub epoch: u64,
}

impl OutputFormat {
    /// Every format, in the order builds make them.
    pub const ALL: [OutputFormat; 8] = [
        OutputFormat::Raw,
        OutputFormat::RawZst,
        OutputFormat::Qcow2,
        OutputFormat::Vmdk,
        OutputFormat::Vhd,
        OutputFormat::Gce,
        OutputFormat::Iso,
        OutputFormat::Netboot,
    ];

    /// The UKI the build makes for this format besides the image's: the command line
    /// option and the file.
    pub fn boot_variant(self) -> Option<(&'static str, &'static str)> {
        match self {
            OutputFormat::Iso => Some((install::INSTALL_OPTION, install::INSTALLER_UKI)),
            OutputFormat::Netboot => Some((install::NETBOOT_OPTION, install::NETBOOT_UKI)),
            _ => None,
        }
    }

    /// Every file of the format in the output folder (the first is [`Self::file_name`]).
    pub fn file_names(self) -> &'static [&'static str] {
        match self {
            OutputFormat::Iso => &["installer.iso", "image.raw.zst", install::INSTALLER_UKI],
            OutputFormat::Netboot => &[
                install::NETBOOT_UKI,
                install::NETBOOT_ROOT,
                install::NETBOOT_VERITY,
            ],
            OutputFormat::Raw => &["image.raw"],
            OutputFormat::RawZst => &["image.raw.zst"],
            OutputFormat::Qcow2 => &["image.qcow2"],
            OutputFormat::Vmdk => &["image.vmdk"],
            OutputFormat::Vhd => &["image.vhd"],
            OutputFormat::Gce => &["image.tar.gz"],
        }
    }

    /// The name used in profiles and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            OutputFormat::Raw => "raw",
            OutputFormat::RawZst => "raw.zst",
            OutputFormat::Qcow2 => "qcow2",
            OutputFormat::Vmdk => "vmdk",
            OutputFormat::Vhd => "vhd",
            OutputFormat::Gce => "gce",
            OutputFormat::Iso => "iso",
            OutputFormat::Netboot => "netboot",
        }
    }

    /// The (main) file it is written to in the output folder.
    pub fn file_name(self) -> &'static str {
        self.file_names()[0]
    }
}

impl std::fmt::Display for OutputFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for OutputFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        OutputFormat::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = OutputFormat::ALL.iter().map(|f| f.name()).collect();
                format!("unknown format {s:?}; one of {}", names.join(", "))
            })
    }
}

/// Makes `format` from the raw image `image` in `out_dir`; returns the file written.
/// `raw` is the image itself and needs nothing.
pub fn make(
    image: &Path,
    out_dir: &Path,
    format: OutputFormat,
    stamp: &Stamp,
    key: &SigningKey,
    extras: &Extras,
) -> Result<PathBuf> {
    let dest = out_dir.join(format.file_name());
    match format {
        OutputFormat::Iso => {
            let zst = out_dir.join(OutputFormat::RawZst.file_name());
            if !zst.is_file() {
                raw_zst(image, &zst)?;
            }
            installer::iso(
                image,
                out_dir,
                &dest,
                key,
                stamp,
                extras.installer_user_data.as_deref(),
            )?;
        }
        OutputFormat::Netboot => installer::netboot(image, out_dir)?,
        OutputFormat::Raw => return Ok(image.to_path_buf()),
        OutputFormat::RawZst => raw_zst(image, &dest)?,
        OutputFormat::Qcow2 => qemu_img(image, &dest, "qcow2", &["compat=1.1"], |_| Ok(()))?,
        OutputFormat::Vmdk => qemu_img(
            image,
            &dest,
            "vmdk",
            &["subformat=streamOptimized"],
            |file| set_vmdk_cid(file, vmdk_cid(stamp)),
        )?,
        OutputFormat::Vhd => {
            // Azure takes only disks of a whole number of MiB; layout v1 disks are (every
            // partition is whole MiB, plus 1 MiB at each end), so this never pads.
            let len = std::fs::metadata(image)?.len();
            if len % (1 << 20) != 0 {
                bail!(
                    "{} is {len} bytes, not a whole number of MiB, as a VHD for Azure must be",
                    image.display()
                );
            }
            qemu_img(
                image,
                &dest,
                "vpc",
                &["subformat=fixed", "force_size=on"],
                |file| set_vhd_footer(file, stamp),
            )?
        }
        OutputFormat::Gce => gce(image, &dest, stamp)?,
    }
    Ok(dest)
}

/// A temporary output in `dest`'s folder, removed unless persisted.
fn temporary(dest: &Path) -> Result<tempfile::NamedTempFile> {
    let dir = dest.parent().unwrap_or(Path::new("."));
    let name = dest.file_name().unwrap_or_default().to_string_lossy();
    tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))
}

fn persist(tmp: tempfile::NamedTempFile, dest: &Path) -> Result<()> {
    output::make_public(tmp.as_file())
        .and_then(|_| tmp.as_file().sync_all())
        .with_context(|| format!("cannot write {}", dest.display()))?;
    tmp.persist(dest)
        .with_context(|| format!("cannot move the output to {}", dest.display()))?;
    Ok(())
}

/// zstd level 19 over the whole image, holes included (they compress to almost nothing);
/// the frame records the content size, so `zstd -l` shows it.
pub fn raw_zst(image: &Path, dest: &Path) -> Result<()> {
    let mut src = File::open(image).with_context(|| format!("cannot read {}", image.display()))?;
    let len = src.metadata()?.len();
    let tmp = temporary(dest)?;
    let mut encoder = zstd::stream::Encoder::new(tmp.as_file(), 19)?;
    encoder.set_pledged_src_size(Some(len))?;
    encoder.include_contentsize(true)?;
    encoder.include_checksum(true)?;
    std::io::copy(&mut src, &mut encoder)
        .and_then(|_| encoder.finish())
        .with_context(|| {
            format!(
                "cannot compress {} into {}",
                image.display(),
                dest.display()
            )
        })?;
    persist(tmp, dest)
}

/// `qemu-img convert` into a private folder under the final file name, then `patch`, then
/// into place.
fn qemu_img(
    image: &Path,
    dest: &Path,
    format: &str,
    options: &[&str],
    patch: impl FnOnce(&mut File) -> Result<()>,
) -> Result<()> {
    let dir = dest.parent().unwrap_or(Path::new("."));
    let name = dest.file_name().unwrap_or_default();
    let work = tempfile::Builder::new()
        .prefix(&format!(".{}.", name.to_string_lossy()))
        .tempdir_in(dir)
        .with_context(|| format!("cannot create a temporary folder in {}", dir.display()))?;
    let out_path = work.path().join(name);
    let out = Command::new("qemu-img")
        .args([
            "convert",
            "-q",
            "-f",
            "raw",
            "-O",
            format,
            "-o",
            &options.join(","),
        ])
        .arg(image)
        .arg(&out_path)
        .output()
        .context("cannot run qemu-img (install qemu-utils)")?;
    if !out.status.success() {
        bail!(
            "qemu-img could not convert {} to {format}: {}",
            image.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&out_path)
        .with_context(|| format!("cannot open {}", out_path.display()))?;
    patch(&mut file).with_context(|| format!("cannot finish {}", dest.display()))?;
    output::make_public(&file)
        .and_then(|_| file.sync_all())
        .with_context(|| format!("cannot write {}", dest.display()))?;
    std::fs::rename(&out_path, dest)
        .with_context(|| format!("cannot move the output to {}", dest.display()))?;
    Ok(())
}

/// The VMDK content id of a build: eight hex digits from the build id.
fn vmdk_cid(stamp: &Stamp) -> String {
    hex::encode(&stamp.build_id.0[..4])
}

/// Rewrites `CID=xxxxxxxx` in the embedded descriptor (same length, so nothing moves).
fn set_vmdk_cid(file: &mut File, cid: String) -> Result<()> {
    // The sparse extent header gives the descriptor's place in sectors (VMDK 1.1 §2).
    let mut header = [0u8; 512];
    file.rewind()?;
    file.read_exact(&mut header)?;
    if &header[..4] != b"KDMV" {
        bail!("qemu-img wrote no VMDK sparse extent header");
    }
    let sector = u64::from_le_bytes(header[28..36].try_into()?);
    let sectors = u64::from_le_bytes(header[36..44].try_into()?);
    let mut descriptor = vec![0u8; usize::try_from(sectors * 512)?];
    file.seek(SeekFrom::Start(sector * 512))?;
    file.read_exact(&mut descriptor)?;
    // QEMU prints the id with `%x`, so it has one to eight digits; ours has eight. The
    // descriptor's sectors are zero-padded well beyond its text, so the text may grow by
    // the few bytes that takes.
    let start = find(&descriptor, b"\nCID=")
        .map(|i| i + 5)
        .context("the VMDK descriptor has no CID line")?;
    let end = descriptor[start..]
        .iter()
        .position(|&b| b == b'\n')
        .map(|n| start + n)
        .filter(|&e| {
            e > start && e - start <= 8 && descriptor[start..e].iter().all(u8::is_ascii_hexdigit)
        })
        .context("the VMDK descriptor's CID line is not hex digits")?;
    let text_end = descriptor
        .iter()
        .rposition(|&b| b != 0)
        .map_or(0, |i| i + 1);
    let mut rewritten = Vec::with_capacity(descriptor.len());
    rewritten.extend_from_slice(&descriptor[..start]);
    rewritten.extend_from_slice(cid.as_bytes());
    rewritten.extend_from_slice(&descriptor[end..text_end]);
    if rewritten.len() > descriptor.len() {
        bail!("the VMDK descriptor has no room for an eight-digit CID");
    }
    rewritten.resize(descriptor.len(), 0);
    descriptor = rewritten;
    file.seek(SeekFrom::Start(sector * 512))?;
    file.write_all(&descriptor)?;
    Ok(())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Seconds from the Unix epoch to the VHD epoch, 2000-01-01 00:00:00 UTC.
const VHD_EPOCH: u64 = 946_684_800;

/// Sets the fixed VHD footer's time stamp and unique id from the build, and its checksum.
fn set_vhd_footer(file: &mut File, stamp: &Stamp) -> Result<()> {
    let len = file.seek(SeekFrom::End(0))?;
    let mut footer = [0u8; 512];
    file.seek(SeekFrom::Start(len - 512))?;
    file.read_exact(&mut footer)?;
    if &footer[..8] != b"conectix" || footer[60..64] != 2u32.to_be_bytes() {
        bail!("qemu-img wrote no fixed-disk VHD footer");
    }
    let seconds = u32::try_from(stamp.epoch.saturating_sub(VHD_EPOCH)).unwrap_or(u32::MAX);
    footer[24..28].copy_from_slice(&seconds.to_be_bytes());
    let uuid = crate::disk::derived_uuid(&stamp.build_id, "vhd");
    footer[68..84].copy_from_slice(uuid.as_bytes());
    let checksum = vhd_checksum(&footer);
    footer[64..68].copy_from_slice(&checksum.to_be_bytes());
    file.seek(SeekFrom::Start(len - 512))?;
    file.write_all(&footer)?;
    Ok(())
}

/// The VHD footer checksum: the ones' complement of the sum of its bytes, the checksum
/// field (bytes 64..68) left out.
pub fn vhd_checksum(footer: &[u8; 512]) -> u32 {
    let sum = footer
        .iter()
        .enumerate()
        .filter(|(i, _)| !(64..68).contains(i))
        .fold(0u32, |sum, (_, &b)| sum.wrapping_add(u32::from(b)));
    !sum
}

/// GCE imports a gzipped tar holding one file, `disk.raw`, whose size is a whole number of
/// GiB, in GNU tar's oldgnu format (its sparse entries keep the holes out of the archive).
/// The disk is padded to the next GiB and its backup GPT moved to the new end.
fn gce(image: &Path, dest: &Path, stamp: &Stamp) -> Result<()> {
    const GIB: u64 = 1 << 30;
    let dir = dest.parent().unwrap_or(Path::new("."));
    let work = tempfile::Builder::new()
        .prefix(".image.tar.gz.")
        .tempdir_in(dir)
        .with_context(|| format!("cannot create a temporary folder in {}", dir.display()))?;
    let disk_path = work.path().join("disk.raw");
    let src = File::open(image).with_context(|| format!("cannot read {}", image.display()))?;
    let mut disk = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&disk_path)
        .with_context(|| format!("cannot create {}", disk_path.display()))?;
    sparse::copy(&src, &mut disk)
        .with_context(|| format!("cannot copy {} to {}", image.display(), disk_path.display()))?;
    let len = src.metadata()?.len();
    disk.set_len(len.div_ceil(GIB) * GIB)?;
    backup_gpt::move_to_end(&mut disk)
        .with_context(|| format!("cannot move the backup GPT of {}", disk_path.display()))?;
    disk.sync_all()?;
    drop(disk);

    let tmp = temporary(dest)?;
    let out = Command::new("tar")
        .args([
            "--create",
            "--format=oldgnu",
            "--sparse",
            "--numeric-owner",
            "--owner=0",
            "--group=0",
            "--mode=0644",
            "--use-compress-program=gzip -n",
        ])
        .arg(format!("--mtime=@{}", stamp.epoch))
        .arg("--file=-")
        .arg("--directory")
        .arg(work.path())
        .arg("disk.raw")
        .stdout(Stdio::from(tmp.as_file().try_clone()?))
        .stderr(Stdio::piped())
        .output()
        .context("cannot run tar (GNU tar)")?;
    if !out.status.success() {
        bail!(
            "tar could not archive {}: {}",
            disk_path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    persist(tmp, dest)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rewrites a VMDK's CID to `cid` as QEMU would have printed it (`%x`: no leading zeros).
    fn set_qemu_style_cid(path: &Path, cid: &str) {
        let mut bytes = std::fs::read(path).unwrap();
        let at = find(&bytes, b"\nCID=").unwrap() + 5;
        let end = at + bytes[at..].iter().position(|&b| b == b'\n').unwrap();
        let text_end = bytes.len().min(at + 2048);
        let mut tail = bytes[end..text_end].to_vec();
        let mut new = cid.as_bytes().to_vec();
        new.append(&mut tail);
        new.resize(text_end - at, 0);
        bytes[at..text_end].copy_from_slice(&new);
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn a_short_qemu_content_id_is_replaced_by_eight_digits() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("disk.raw");
        let mut data = vec![0u8; 4 << 20];
        data[1 << 20] = 7;
        std::fs::write(&raw, &data).unwrap();
        let vmdk = dir.path().join("disk.vmdk");
        let ok = Command::new("qemu-img")
            .args([
                "convert",
                "-q",
                "-f",
                "raw",
                "-O",
                "vmdk",
                "-o",
                "subformat=streamOptimized",
            ])
            .arg(&raw)
            .arg(&vmdk)
            .status()
            .expect("qemu-img (qemu-utils) is missing");
        assert!(ok.success());
        // Leading zeros are not printed: a CID of 0x00abc123 reads "abc123".
        set_qemu_style_cid(&vmdk, "abc123");
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&vmdk)
            .unwrap();
        set_vmdk_cid(&mut f, "00abc123".into()).unwrap();
        drop(f);
        let bytes = std::fs::read(&vmdk).unwrap();
        assert!(find(&bytes, b"\nCID=00abc123\n").is_some());
        let check = Command::new("qemu-img")
            .arg("check")
            .arg(&vmdk)
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "{}",
            String::from_utf8_lossy(&check.stdout)
        );
        let back = dir.path().join("back.raw");
        let ok = Command::new("qemu-img")
            .args(["convert", "-q", "-O", "raw"])
            .arg(&vmdk)
            .arg(&back)
            .status()
            .unwrap();
        assert!(ok.success());
        assert_eq!(std::fs::read(back).unwrap(), data);
    }

    #[test]
    fn names_round_trip_and_unknown_ones_are_refused() {
        for f in OutputFormat::ALL {
            assert_eq!(f.name().parse::<OutputFormat>(), Ok(f));
        }
        let err = "vdi".parse::<OutputFormat>().unwrap_err();
        assert!(err.contains("raw.zst") && err.contains("gce"), "{err}");
    }

    #[test]
    fn the_vhd_checksum_matches_qemu_img() {
        // A footer qemu-img 7.2 wrote (`qemu-img convert -O vpc -o subformat=fixed`), with
        // its checksum 0xffffe5a7 as written: the sum leaves the checksum field out.
        let mut footer = [0u8; 512];
        footer[..8].copy_from_slice(b"conectix");
        footer[8..12].copy_from_slice(&[0, 0, 0, 2]);
        footer[12..16].copy_from_slice(&[0, 1, 0, 0]);
        footer[16..24].copy_from_slice(&[0xff; 8]);
        footer[24..28].copy_from_slice(&[0x32, 0x9e, 0x07, 0xcb]);
        footer[28..32].copy_from_slice(b"qem2");
        footer[32..36].copy_from_slice(&[0, 5, 0, 3]);
        footer[36..40].copy_from_slice(b"Wi2k");
        footer[40..48].copy_from_slice(&[0, 0, 0, 0, 0xb8, 0x20, 0, 0]);
        footer[48..56].copy_from_slice(&[0, 0, 0, 0, 0xb8, 0x20, 0, 0]);
        footer[56..60].copy_from_slice(&[0xff, 0xff, 0x10, 0xff]);
        footer[60..64].copy_from_slice(&[0, 0, 0, 2]);
        footer[64..68].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        footer[68..84].copy_from_slice(&[
            0x6e, 0x32, 0x1c, 0x21, 0x95, 0x29, 0x4b, 0xb9, 0xa1, 0xce, 0x54, 0xb7, 0x09, 0x03,
            0x1b, 0x85,
        ]);
        assert_eq!(vhd_checksum(&footer), 0xffff_e5a7);
    }
}
