//! Where a sparse image's blocks are, as the file system allocated them: written data, and
//! space allocated but never written ("unwritten" extents, which read as zeros).
//!
//! `mke2fs` zeroes the state partition's journal with `fallocate(ZERO_RANGE)`, which on an
//! ext4 host leaves 16 MiB allocated but unwritten. Such extents count in the file's
//! allocated size, yet `SEEK_DATA` reports them as data or as a hole depending on the page
//! cache, so the benchmark asks the file system directly (FIEMAP, through `filefrag` of
//! e2fsprogs, which the builder needs anyway). Where that is not possible (another file
//! system, no `filefrag`), the data regions of `SEEK_DATA` stand in, all taken as written.

use std::ops::Range;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// One extent of a file, in bytes of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extent {
    /// The bytes of the file it holds.
    pub range: Range<u64>,
    /// Allocated but never written: it reads as zeros.
    pub unwritten: bool,
}

/// The unit `filefrag` is asked to count in.
const UNIT: u64 = 4096;

/// The extents of `path`.
pub fn of(path: &Path) -> Result<Vec<Extent>> {
    match filefrag(path) {
        Ok(extents) => Ok(extents),
        Err(_) => {
            let file = std::fs::File::open(path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            Ok(crust_builder::sparse::data_regions(&file)?
                .into_iter()
                .map(|range| Extent {
                    range,
                    unwritten: false,
                })
                .collect())
        }
    }
}

fn filefrag(path: &Path) -> Result<Vec<Extent>> {
    let out = Command::new("filefrag")
        .args(["-v", &format!("-b{UNIT}")])
        .arg(path)
        .output()
        .context("cannot run filefrag (e2fsprogs)")?;
    if !out.status.success() {
        bail!("filefrag failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    parse(&String::from_utf8_lossy(&out.stdout))
}

/// Reads `filefrag -v` output counted in units of [`UNIT`] bytes.
pub fn parse(text: &str) -> Result<Vec<Extent>> {
    let mut extents = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(':').map(str::trim).collect();
        // `N: first.. last: physical: length: [expected]: flags`
        if fields.len() < 5 || fields[0].parse::<u64>().is_err() {
            continue;
        }
        let (first, last) = fields[1]
            .split_once("..")
            .with_context(|| format!("unexpected filefrag line {line:?}"))?;
        let first: u64 = first.trim().parse()?;
        let last: u64 = last.trim().parse()?;
        let flags = fields.last().copied().unwrap_or("");
        extents.push(Extent {
            range: first * UNIT..(last + 1) * UNIT,
            unwritten: flags.split(',').any(|f| f.trim() == "unwritten"),
        });
    }
    Ok(extents)
}

/// Bytes of `extents` inside `window`: written, and unwritten.
pub fn within(extents: &[Extent], window: &Range<u64>) -> (u64, u64) {
    let mut sums = (0, 0);
    for e in extents {
        let bytes = e
            .range
            .end
            .min(window.end)
            .saturating_sub(e.range.start.max(window.start));
        if e.unwritten {
            sums.1 += bytes;
        } else {
            sums.0 += bytes;
        }
    }
    sums
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
Filesystem type is: ef53
File size of image.raw is 3089104896 (754176 blocks of 4096 bytes)
 ext:     logical_offset:        physical_offset: length:   expected: flags:
   0:        0..       4:   14907392..  14907396:      5:            
   1:      256..     256:   14907648..  14907648:      1:            
   3:     2048..    4446:   14913536..  14915934:   2399:   14909440:
  12:   721186..  725280:   14925825..  14929919:   4095:             unwritten
  14:   754171..  754175:   14924283..  14924287:      5:             last,eof
image.raw: 11 extents found
";

    #[test]
    fn filefrag_output_reads_as_extents() {
        let e = parse(SAMPLE).unwrap();
        assert_eq!(e.len(), 5);
        assert_eq!(e[0].range, 0..5 * 4096);
        assert_eq!(e[2].range, 2048 * 4096..4447 * 4096);
        assert!(e[3].unwritten);
        assert!(!e[4].unwritten);
        assert_eq!(e[4].range.end, 754_176 * 4096);
    }

    #[test]
    fn windows_split_written_and_unwritten() {
        let e = parse(SAMPLE).unwrap();
        assert_eq!(within(&e, &(0..4096)), (4096, 0));
        assert_eq!(
            within(&e, &(721_000 * 4096..726_000 * 4096)),
            (0, 4095 * 4096)
        );
        let all = within(&e, &(0..u64::MAX));
        assert_eq!(all.0, (5 + 1 + 2399 + 5) * 4096);
    }

    #[test]
    fn a_real_file_has_its_written_extent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![1u8; 10_000]).unwrap();
        let extents = of(&path).unwrap();
        let (written, unwritten) = within(&extents, &(0..u64::MAX));
        assert!(written >= 10_000, "{extents:?}");
        assert_eq!(unwritten, 0);
    }
}
