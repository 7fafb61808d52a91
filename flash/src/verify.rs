//! The image side: its release signature, its digest, and the data regions to write.
//!
//! The whole image is read once and hashed with SHA-256 against the signed `SHA256SUMS`.
//! The same pass hashes the data regions the way [`crate::copy`] will write them (offset,
//! length and bytes of every chunk): if the file changes between this check and the write,
//! the two region digests differ and the flash reports it.

use std::fs::File;
use std::io::{Read, Seek};
use std::ops::Range;
use std::path::{Path, PathBuf};

use crust_builder::release::{self, ReleaseError};
use crust_builder::{report, sparse};
use crust_format::Digest;
use crust_format::signature::PublicKey;
use sha2::{Digest as _, Sha256};

use crate::FlashError;

/// Largest single write (and read): 4 MiB, on 4 MiB boundaries.
pub const CHUNK: u64 = 4 << 20;

/// An image whose release signature checked out, not yet hashed.
#[derive(Debug)]
pub struct SignedEntry {
    path: PathBuf,
    /// The image's length in bytes.
    pub len: u64,
    expected: Digest,
}

/// An image whose bytes match the signed release.
#[derive(Debug, Clone)]
pub struct VerifiedImage {
    /// The image file.
    pub path: PathBuf,
    /// Its length in bytes.
    pub len: u64,
    /// Its SHA-256, as signed.
    pub digest: Digest,
    /// The pieces to write: data regions cut at 4 MiB boundaries, in order.
    pub chunks: Vec<Range<u64>>,
    /// The digest of those pieces (see [`ChunkHasher`]).
    pub data_digest: Digest,
}

impl VerifiedImage {
    /// Bytes of data to write.
    pub fn data_len(&self) -> u64 {
        self.chunks.iter().map(|c| c.end - c.start).sum()
    }
}

/// Hashes written pieces with their places: SHA-256 over `offset ‖ length ‖ bytes` (u64 LE)
/// of each piece in order.
#[derive(Debug, Clone, Default)]
pub struct ChunkHasher(Sha256);

impl ChunkHasher {
    /// Adds the piece at `offset`.
    pub fn update(&mut self, offset: u64, bytes: &[u8]) {
        self.0.update(offset.to_le_bytes());
        self.0.update((bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
    }

    /// The digest.
    pub fn finish(self) -> Digest {
        Digest(self.0.finalize().into())
    }
}

/// Checks the release signature of the image's folder and finds the image in it.
pub fn signed_entry(image: &Path, key: &PublicKey) -> Result<SignedEntry, FlashError> {
    let bad = |reason: &str| FlashError::BadImage {
        path: image.to_path_buf(),
        reason: reason.to_owned(),
    };
    let meta = std::fs::metadata(image).map_err(|source| FlashError::Open {
        path: image.to_path_buf(),
        source,
    })?;
    if !meta.is_file() {
        return Err(bad("not a file; pass the image.raw of a build"));
    }
    let name = image
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| bad("no file name"))?;
    let dir = match image.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let sums = release::signed_sums(dir, key)?;
    let expected = *sums.get(&name).ok_or_else(|| ReleaseError::NotListed {
        name: name.clone(),
        path: dir.join(release::SUMS),
    })?;
    if meta.len() < 2 * 512 || meta.len() % 512 != 0 {
        return Err(bad(
            "its size is not a whole number of 512-byte sectors: not a raw disk image",
        ));
    }
    // A signed file of the release that is not a disk (a compressed or converted format)
    // would make a useless disk: the raw image has a GPT header in its second sector.
    let mut signature = [0u8; 8];
    File::open(image)
        .and_then(|f| std::os::unix::fs::FileExt::read_exact_at(&f, &mut signature, 512))
        .map_err(|source| FlashError::Io {
            what: "cannot read",
            path: image.to_path_buf(),
            source,
        })?;
    if &signature != b"EFI PART" {
        return Err(bad(
            "no GPT header in sector 1: not a raw disk image (flash image.raw, not a converted format)",
        ));
    }
    Ok(SignedEntry {
        path: image.to_path_buf(),
        len: meta.len(),
        expected,
    })
}

/// Reads the whole image once: its SHA-256 must be the signed one.
pub fn verify(entry: SignedEntry) -> Result<VerifiedImage, FlashError> {
    let io = |source| FlashError::Io {
        what: "cannot read",
        path: entry.path.clone(),
        source,
    };
    let mut file = File::open(&entry.path).map_err(io)?;
    let regions = sparse::data_regions(&file).map_err(io)?;
    let chunks = chunks(&regions);
    file.rewind().map_err(io)?;
    let bar = report::bytes_bar(entry.len, "Verifying");
    let mut whole = Sha256::new();
    let mut data = ChunkHasher::default();
    let mut buf = vec![0u8; CHUNK as usize];
    let mut pos = 0u64;
    let mut next_chunk = chunks.iter().peekable();
    while pos < entry.len {
        // Up to the next chunk (a hole, read as the file has it), or the chunk itself.
        let (end, is_chunk) = match next_chunk.peek() {
            Some(c) if c.start == pos => (c.end, true),
            Some(c) => (c.start.min(pos + CHUNK), false),
            None => ((pos + CHUNK).min(entry.len), false),
        };
        let piece = &mut buf[..(end - pos) as usize];
        file.read_exact(piece).map_err(io)?;
        whole.update(&*piece);
        if is_chunk {
            data.update(pos, piece);
            next_chunk.next();
        }
        bar.inc(end - pos);
        pos = end;
    }
    bar.finish_and_clear();
    let digest = Digest(whole.finalize().into());
    if digest != entry.expected {
        return Err(ReleaseError::Mismatch {
            path: entry.path,
            expected: entry.expected,
            actual: digest,
        }
        .into());
    }
    Ok(VerifiedImage {
        path: entry.path,
        len: entry.len,
        digest,
        chunks,
        data_digest: data.finish(),
    })
}

/// Cuts regions at every multiple of [`CHUNK`], so writes are large and aligned.
pub fn chunks(regions: &[Range<u64>]) -> Vec<Range<u64>> {
    let mut out = Vec::new();
    for r in regions {
        let mut start = r.start;
        while start < r.end {
            let end = ((start / CHUNK + 1) * CHUNK).min(r.end);
            out.push(start..end);
            start = end;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_cut_at_4_mib_boundaries() {
        const M: u64 = 1 << 20;
        let got = chunks(&[M..9 * M + 4096, 20 * M..21 * M]);
        assert_eq!(
            got,
            vec![M..4 * M, 4 * M..8 * M, 8 * M..9 * M + 4096, 20 * M..21 * M]
        );
    }
}
