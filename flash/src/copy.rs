//! Writing the image's data regions onto the target, and reading them back.
//!
//! Only data regions are written (holes are skipped, as bmaptool does), in pieces of at
//! most 4 MiB that start on 4 MiB boundaries ([`crate::verify::chunks`]). A reader thread
//! fills the next buffer while the current one is written, so the disk is kept busy. On a
//! block device the writes bypass the page cache (`O_DIRECT`, from page-aligned buffers),
//! so the progress bar shows what the device takes, not what the cache absorbed. After a
//! final `fsync`, every piece is read back from the device and hashed with its place; the
//! digest must equal the one computed from the verified image.

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::mpsc::sync_channel;
use std::time::{Duration, Instant};

use crust_builder::report;
use nix::fcntl::{PosixFadviseAdvice, posix_fadvise};

use crate::verify::{CHUNK, ChunkHasher, VerifiedImage};
use crate::{FlashError, Target};

/// Buffers in flight between the reader thread and the writer.
const BUFFERS: usize = 3;

/// A heap buffer whose usable part starts at an `align`-byte boundary, as `O_DIRECT` needs.
struct AlignedBuf {
    raw: Vec<u8>,
    start: usize,
}

impl AlignedBuf {
    fn new(len: usize, align: usize) -> Self {
        let raw = vec![0u8; len + align];
        let addr = raw.as_ptr() as usize;
        let start = (align - addr % align) % align;
        Self { raw, start }
    }

    fn slice(&mut self, len: usize) -> &mut [u8] {
        &mut self.raw[self.start..self.start + len]
    }
}

fn len_of(chunk: &Range<u64>) -> usize {
    // Chunks are at most CHUNK (4 MiB) long.
    (chunk.end - chunk.start) as usize
}

/// Writes every chunk of `image` to `target` and syncs; returns the time it took.
pub fn write(image: &VerifiedImage, target: &mut Target) -> Result<Duration, FlashError> {
    let started = Instant::now();
    let src = File::open(&image.path).map_err(|source| FlashError::Io {
        what: "cannot read",
        path: image.path.clone(),
        source,
    })?;
    if target.direct
        && !image
            .chunks
            .iter()
            .all(|c| aligned(c, target.logical_block_size))
    {
        // Pieces the device cannot take directly: go through the page cache instead.
        use nix::fcntl::{FcntlArg, OFlag, fcntl};
        let flags = fcntl(&target.file, FcntlArg::F_GETFL).map(OFlag::from_bits_truncate);
        if let Ok(flags) = flags {
            let _ = fcntl(&target.file, FcntlArg::F_SETFL(flags - OFlag::O_DIRECT));
        }
        target.direct = false;
    }
    let align = target.logical_block_size.max(4096) as usize;
    let bar = report::bytes_bar(image.data_len(), "Writing");
    let (full_tx, full_rx) = sync_channel::<(Range<u64>, AlignedBuf)>(BUFFERS);
    let (free_tx, free_rx) = sync_channel::<AlignedBuf>(BUFFERS);
    for _ in 0..BUFFERS {
        let _ = free_tx.send(AlignedBuf::new(CHUNK as usize, align));
    }
    let (read, written) = std::thread::scope(|scope| {
        let reader = scope.spawn(move || -> std::io::Result<crust_format::Digest> {
            let mut hasher = ChunkHasher::default();
            for chunk in &image.chunks {
                let Ok(mut buf) = free_rx.recv() else { break };
                let piece = buf.slice(len_of(chunk));
                src.read_exact_at(piece, chunk.start)?;
                hasher.update(chunk.start, piece);
                if full_tx.send((chunk.clone(), buf)).is_err() {
                    break;
                }
            }
            Ok(hasher.finish())
        });
        let mut written = Ok(());
        for (chunk, mut buf) in full_rx {
            let len = len_of(&chunk);
            if let Err(e) = target.file.write_all_at(buf.slice(len), chunk.start) {
                written = Err(e);
                break;
            }
            bar.inc(len as u64);
            let _ = free_tx.send(buf);
        }
        // Unblocks the reader if the writer stopped early.
        drop(free_tx);
        let read = reader
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the reader thread panicked")));
        (read, written)
    });
    let read = read.map_err(|source| FlashError::Io {
        what: "cannot read",
        path: image.path.clone(),
        source,
    })?;
    written.map_err(|source| FlashError::Io {
        what: "cannot write",
        path: target.path.clone(),
        source,
    })?;
    bar.set_message("Syncing");
    target.file.sync_all().map_err(|source| FlashError::Io {
        what: "cannot flush",
        path: target.path.clone(),
        source,
    })?;
    bar.finish_and_clear();
    if read != image.data_digest {
        return Err(FlashError::ImageChanged {
            path: image.path.clone(),
        });
    }
    Ok(started.elapsed())
}

fn aligned(chunk: &Range<u64>, block: u64) -> bool {
    chunk.start.is_multiple_of(block) && chunk.end.is_multiple_of(block)
}

/// Reads every chunk back from `target` and compares its digest with the image's.
pub fn read_back(image: &VerifiedImage, target: &Target) -> Result<Duration, FlashError> {
    let started = Instant::now();
    if !target.direct {
        // Written through the page cache: drop it, so reads come from the disk.
        let _ = posix_fadvise(&target.file, 0, 0, PosixFadviseAdvice::POSIX_FADV_DONTNEED);
    }
    let bar = report::bytes_bar(image.data_len(), "Reading back");
    let mut buf = AlignedBuf::new(CHUNK as usize, target.logical_block_size.max(4096) as usize);
    let mut hasher = ChunkHasher::default();
    for chunk in &image.chunks {
        let piece = buf.slice(len_of(chunk));
        target
            .file
            .read_exact_at(piece, chunk.start)
            .map_err(|source| FlashError::Io {
                what: "cannot read back",
                path: target.path.clone(),
                source,
            })?;
        hasher.update(chunk.start, piece);
        bar.inc(piece.len() as u64);
    }
    bar.finish_and_clear();
    if hasher.finish() != image.data_digest {
        return Err(FlashError::ReadBackMismatch {
            path: target.path.clone(),
        });
    }
    Ok(started.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_buffers_are_aligned() {
        for align in [512, 4096] {
            let mut b = AlignedBuf::new(8192, align);
            assert_eq!(b.slice(8192).as_ptr() as usize % align, 0);
        }
    }
}
