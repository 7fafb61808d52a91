//! Sparse files: where an image holds data, and copying only that.
//!
//! A Crust image is a few tens of MiB of data in a file of a few GiB; the rest are holes
//! that read as zeros. The file system knows where the data is (`lseek` with `SEEK_DATA`
//! and `SEEK_HOLE`), so copies, conversions and flashing read and write only the data
//! regions, as `cp --sparse` and bmaptool do. A file system without hole tracking reports
//! the whole file as one data region, which is slower but still correct.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::ops::Range;

use nix::errno::Errno;
use nix::unistd::{Whence, lseek};

/// The data regions of `file`, in order, as byte ranges; together with the holes between
/// them they cover the file's length. The file's position is left unspecified.
pub fn data_regions(file: &File) -> io::Result<Vec<Range<u64>>> {
    let len = file.metadata()?.len();
    let mut regions: Vec<Range<u64>> = Vec::new();
    let mut pos = 0u64;
    while pos < len {
        let start = match lseek(file, to_off(pos)?, Whence::SeekData) {
            Ok(start) => from_off(start),
            // No data at or after `pos`: the rest is a hole.
            Err(Errno::ENXIO) => break,
            Err(e) => return Err(e.into()),
        };
        let end = from_off(lseek(file, to_off(start)?, Whence::SeekHole)?).min(len);
        match regions.last_mut() {
            Some(last) if last.end == start => last.end = end,
            _ => regions.push(start..end),
        }
        pos = end;
    }
    Ok(regions)
}

/// Bytes of data in `regions`.
pub fn data_len(regions: &[Range<u64>]) -> u64 {
    regions.iter().map(|r| r.end - r.start).sum()
}

/// Copies `src` to `dst` (a new, empty file) leaving holes where `src` has them, and gives
/// `dst` the length of `src`. Returns the bytes of data copied.
pub fn copy(src: &File, dst: &mut File) -> io::Result<u64> {
    let len = src.metadata()?.len();
    let regions = data_regions(src)?;
    let mut reader = src;
    for region in &regions {
        reader.seek(SeekFrom::Start(region.start))?;
        dst.seek(SeekFrom::Start(region.start))?;
        // `io::copy` between files uses copy_file_range: no trip through user space.
        let copied = io::copy(&mut io::Read::take(reader, region.end - region.start), dst)?;
        if copied != region.end - region.start {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the source file shrank while it was copied",
            ));
        }
    }
    dst.set_len(len)?;
    Ok(data_len(&regions))
}

fn to_off(pos: u64) -> io::Result<i64> {
    i64::try_from(pos).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))
}

fn from_off(off: i64) -> u64 {
    // lseek never returns a negative offset on success.
    u64::try_from(off).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    const MIB: u64 = 1 << 20;

    /// A 16 MiB file with data at 1 MiB and 8..9 MiB, holes elsewhere.
    fn sparse_file(dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("sparse");
        let mut f = File::create(&path).unwrap();
        f.set_len(16 * MIB).unwrap();
        f.seek(SeekFrom::Start(MIB)).unwrap();
        f.write_all(&[0xa5; 4096]).unwrap();
        f.seek(SeekFrom::Start(8 * MIB)).unwrap();
        f.write_all(&vec![0x5a; MIB as usize]).unwrap();
        f.sync_all().unwrap();
        path
    }

    #[test]
    fn regions_cover_the_data_and_copies_keep_the_holes() {
        let dir = tempfile::tempdir().unwrap();
        let path = sparse_file(dir.path());
        let src = File::open(&path).unwrap();
        let regions = data_regions(&src).unwrap();
        // ext4 and tmpfs track holes per block; the data must be inside the regions found.
        assert!(
            regions
                .iter()
                .any(|r| r.start <= MIB && r.end >= MIB + 4096)
        );
        assert!(
            regions
                .iter()
                .any(|r| r.start <= 8 * MIB && r.end >= 9 * MIB)
        );
        assert!(data_len(&regions) < 4 * MIB, "{regions:?}");

        let copy_path = dir.path().join("copy");
        let mut dst = File::create(&copy_path).unwrap();
        copy(&src, &mut dst).unwrap();
        drop(dst);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        File::open(&path).unwrap().read_to_end(&mut a).unwrap();
        File::open(&copy_path).unwrap().read_to_end(&mut b).unwrap();
        assert!(a == b, "the copy differs from its source");
        // Independent check of sparseness: the blocks the file system allocated.
        use std::os::unix::fs::MetadataExt;
        let allocated = std::fs::metadata(&copy_path).unwrap().blocks() * 512;
        assert!(allocated < 4 * MIB, "copy allocates {allocated} bytes");
    }

    #[test]
    fn an_all_hole_file_has_no_regions() {
        let dir = tempfile::tempdir().unwrap();
        let f = File::create(dir.path().join("empty")).unwrap();
        f.set_len(8 * MIB).unwrap();
        assert_eq!(data_regions(&f).unwrap(), Vec::<Range<u64>>::new());
    }
}
