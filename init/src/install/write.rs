//! Writing the image onto the target: the medium's `image.raw.zst` decompressed as a
//! stream (in pure Rust, ruzstd), only the pieces that are not all zeros written, the
//! decompressed image's digest compared with the signed list, every written piece read
//! back past the page cache and compared; then the backup GPT moved to the disk's end.
//!
//! As with `cargo xtask flash`, the disk's old content in the image's zero regions does
//! not matter: every structure a reader interprets is data in the image.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::time::Instant;

use crust_format::Digest;
use crust_format::install;
use gpt::disk::LogicalBlockSize;
use nix::fcntl::{PosixFadviseAdvice, posix_fadvise};
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

use super::WHO;
use super::disks::Disk;
use super::medium::Release;
use crate::console;
use crate::error::{Context, Error, Result};

/// The size of the pieces written (and skipped when all zeros).
const PIECE: usize = 4 << 20;
const SECTOR: u64 = 512;

/// What was written.
#[derive(Debug, Clone, Copy)]
pub struct Written {
    /// The image's size.
    pub image_bytes: u64,
    /// Bytes actually written (the non-zero pieces).
    pub data_bytes: u64,
    /// Seconds spent writing and reading back.
    pub seconds: u64,
}

/// The installed disk's ESP, as the firmware's boot entry names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Esp {
    /// GPT partition number.
    pub number: u32,
    /// First sector.
    pub first_lba: u64,
    /// Length in sectors.
    pub sectors: u64,
    /// The partition's unique GUID.
    pub partuuid: Uuid,
}

/// The decompressed size a zstd frame header records (the builder always records it).
pub fn frame_content_size(head: &[u8]) -> Option<u64> {
    if head.get(..4)? != [0x28, 0xB5, 0x2F, 0xFD] {
        return None;
    }
    let descriptor = *head.get(4)?;
    let fcs_flag = descriptor >> 6;
    let single_segment = descriptor & 0x20 != 0;
    let dict_len = [0usize, 1, 2, 4][usize::from(descriptor & 3)];
    let at = 5 + usize::from(!single_segment) + dict_len;
    let field = |n: usize| -> Option<u64> {
        let bytes = head.get(at..at + n)?;
        Some(
            bytes
                .iter()
                .rev()
                .fold(0u64, |acc, &b| (acc << 8) | u64::from(b)),
        )
    };
    match (fcs_flag, single_segment) {
        (0, false) => None,
        (0, true) => field(1),
        (1, _) => field(2).map(|v| v + 256),
        (2, _) => field(4),
        _ => field(8),
    }
}

/// Writes the release's image onto `target`.
pub fn write_image(release: &Release, target: &Disk) -> Result<Written> {
    let started = Instant::now();
    let node = target.node();
    let mut source = File::open(&release.image).context("install-write", || {
        format!("cannot open {}", release.image.display())
    })?;
    let mut head = [0u8; 18];
    source.read_exact(&mut head).context("install-write", || {
        format!("cannot read {}", release.image.display())
    })?;
    source.rewind().ok();
    let image_bytes = frame_content_size(&head).ok_or_else(|| {
        Error::new(
            "install-write",
            format!(
                "{} is not a zstd frame that records its size",
                release.image.display()
            ),
        )
    })?;
    if image_bytes > target.bytes {
        return Err(Error::new(
            "install-disk",
            format!(
                "{} holds {} bytes; the image needs {image_bytes}; nothing was written",
                node.display(),
                target.bytes
            ),
        ));
    }
    // O_EXCL on a block device: refused while anything has it open exclusively (a
    // mounted file system, a device-mapper or md holder).
    let disk = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::libc::O_EXCL)
        .open(&node)
        .context("install-disk", || {
            format!("cannot open {} exclusively for writing", node.display())
        })?;

    let mut decoder =
        ruzstd::decoding::StreamingDecoder::new(std::io::BufReader::with_capacity(1 << 20, source))
            .map_err(|e| {
                Error::new("install-write", format!("{}: {e}", release.image.display()))
            })?;
    let mut raw = Sha256::new();
    let mut buf = vec![0u8; PIECE];
    let mut pieces: Vec<(u64, usize, [u8; 32])> = Vec::new();
    let mut offset = 0u64;
    let mut data_bytes = 0u64;
    let mut next_report = 10;
    loop {
        let n = fill(&mut decoder, &mut buf).context("install-write", || {
            format!("cannot decompress {}", release.image.display())
        })?;
        if n == 0 {
            break;
        }
        if offset + n as u64 > image_bytes {
            return Err(Error::new(
                "install-write",
                format!(
                    "{} decompresses to more than its header says",
                    release.image.display()
                ),
            ));
        }
        let piece = &buf[..n];
        raw.update(piece);
        if piece.iter().any(|&b| b != 0) {
            disk.write_all_at(piece, offset)
                .context("install-write", || {
                    format!("cannot write {} at byte {offset}", node.display())
                })?;
            pieces.push((offset, n, Sha256::digest(piece).into()));
            data_bytes += n as u64;
        }
        offset += n as u64;
        let percent = offset * 100 / image_bytes.max(1);
        if percent >= next_report {
            console::note(
                WHO,
                &format!(
                    "written {percent}% ({} of {} MiB, {} MiB of data)",
                    offset >> 20,
                    image_bytes >> 20,
                    data_bytes >> 20
                ),
            );
            next_report = percent / 10 * 10 + 10;
        }
    }
    if offset != image_bytes {
        return Err(Error::new(
            "install-write",
            format!(
                "{} decompressed to {offset} bytes, its header says {image_bytes}",
                release.image.display()
            ),
        ));
    }
    let found = Digest(raw.finalize().into());
    let want = release.digest(install::RAW_IMAGE);
    if found != want {
        return Err(Error::new(
            "install-write",
            format!(
                "the decompressed image does not match the signed list (expected {}, found {}); \
                 {} holds a partial image and will not boot",
                want.to_hex(),
                found.to_hex(),
                node.display()
            ),
        ));
    }
    disk.sync_all().context("install-write", || {
        format!("cannot flush {}", node.display())
    })?;

    // Read back from the disk, not from the page cache.
    let _ = posix_fadvise(&disk, 0, 0, PosixFadviseAdvice::POSIX_FADV_DONTNEED);
    for (at, len, digest) in &pieces {
        let back = &mut buf[..*len];
        disk.read_exact_at(back, *at)
            .context("install-verify", || {
                format!("cannot read {} back at byte {at}", node.display())
            })?;
        let got: [u8; 32] = Sha256::digest(&*back).into();
        if &got != digest {
            return Err(Error::new(
                "install-verify",
                format!(
                    "{} at bytes {at}..{} reads back different from what was written: the disk \
                     is failing",
                    node.display(),
                    at + *len as u64
                ),
            ));
        }
    }
    Ok(Written {
        image_bytes,
        data_bytes,
        seconds: started.elapsed().as_secs(),
    })
}

/// Reads until `buf` is full or the stream ends; returns the bytes read.
fn fill(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match reader.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Moves the backup GPT to the disk's last sectors (the image's table ends where the image
/// does) and returns the ESP (partition 1).
pub fn finish_disk(target: &Disk) -> Result<Esp> {
    let node = target.node();
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&node)
        .context("install-gpt", || format!("cannot open {}", node.display()))?;
    let disk_sectors = file
        .seek(SeekFrom::End(0))
        .context("install-gpt", || format!("cannot size {}", node.display()))?
        / SECTOR;
    file.rewind().ok();
    let mut gpt = gpt::GptConfig::new()
        .writable(true)
        // The backup is where the image ended, not in the disk's last sector yet.
        .only_valid_headers(false)
        .logical_block_size(LogicalBlockSize::Lb512)
        .open_from_device(&mut file)
        .context("install-gpt", || {
            format!("cannot read the GPT just written to {}", node.display())
        })?;
    let from_lba = gpt
        .primary_header()
        .context("install-gpt", || {
            format!("{} has no primary GPT", node.display())
        })?
        .backup_lba;
    let to_lba = disk_sectors.saturating_sub(1);
    let table = gpt.partitions().clone();
    let esp = table.get(&1).ok_or_else(|| {
        Error::new(
            "install-gpt",
            format!("{} has no partition 1 (the ESP)", node.display()),
        )
    })?;
    let esp = Esp {
        number: 1,
        first_lba: esp.first_lba,
        sectors: esp.last_lba + 1 - esp.first_lba,
        partuuid: esp.part_guid,
    };
    if from_lba != to_lba {
        gpt.update_partitions(table)
            .context("install-gpt", || "cannot rebuild the GPT".into())?;
        gpt.write().context("install-gpt", || {
            format!("cannot write the GPT of {}", node.display())
        })?;
        gpt::mbr::ProtectiveMBR::with_lb_size(u32::try_from(to_lba).unwrap_or(u32::MAX))
            .overwrite_lba0(&mut file)
            .context("install-gpt", || {
                format!("cannot write the protective MBR of {}", node.display())
            })?;
        if from_lba < to_lba {
            // The stale backup header inside the disk would mislead tools that scan.
            file.write_all_at(&[0u8; SECTOR as usize], from_lba * SECTOR)
                .context("install-gpt", || {
                    "cannot clear the old backup header".into()
                })?;
        }
    }
    file.flush().ok();
    file.sync_all()
        .context("install-gpt", || format!("cannot flush {}", node.display()))?;
    Ok(esp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn the_frame_size_is_read_as_zstd_records_it() {
        let dir = tempfile::tempdir().unwrap();
        for len in [0usize, 100, 300, 70_000, 5 << 20] {
            let src = dir.path().join("data");
            std::fs::write(&src, vec![7u8; len]).unwrap();
            let out = Command::new("zstd")
                .args(["-q", "-f", "-o"])
                .arg(dir.path().join("data.zst"))
                .arg(&src)
                .status()
                .unwrap();
            assert!(out.success());
            let head = std::fs::read(dir.path().join("data.zst")).unwrap();
            assert_eq!(frame_content_size(&head), Some(len as u64), "{len}");
        }
        assert_eq!(frame_content_size(b"not zstd at all"), None);
    }
}
