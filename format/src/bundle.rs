//! Update bundles: one file carrying everything a new version needs (root image, verity
//! tree, UKI) and its software bill of materials, signed.
//!
//! ```text
//! "CRUSTUP1"                  8 bytes
//! header length H             u32 little-endian
//! header                      H bytes of text (below)
//! signature                   64 bytes: Ed25519 over the header bytes
//! parts                       the parts' zstd-compressed bytes, back to back, in header order
//! ```
//!
//! The header is `key=value` lines: `format`, `layout`, `name`, `version`, `root-hash`,
//! then one `part=<kind> <size> <sha256> <raw-size> <raw-sha256>` line per part: the
//! compressed size and digest as stored, and the size and digest of the decompressed
//! content. Format 2 (written since the SBOM) has the kinds `root`, `verity`, `uki`, `sbom`
//! in that order; format 1 (read for older bundles) the first three. A reader checks the
//! signature with the running image's key before believing a byte of it, and every digest
//! before a part counts as written. `sbom` (the release's SPDX document) is for people and
//! tools reading the bundle: a host checks its digest with the rest and never writes it.

use crate::Digest;
use crate::version::{check_name, check_version};

/// The file's first eight bytes.
pub const MAGIC: &[u8; 8] = b"CRUSTUP1";
/// The bundle format this crate writes (it also reads [`FORMAT_WITHOUT_SBOM`]).
pub const FORMAT_VERSION: u32 = 2;
/// The first bundle format: root, verity and UKI, no SBOM part.
pub const FORMAT_WITHOUT_SBOM: u32 = 1;
/// Largest header accepted (it is a few hundred bytes).
pub const MAX_HEADER: u32 = 16 << 10;

/// What a part is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartKind {
    /// The root file system image (written to the root partition).
    Root,
    /// The verity partition content (superblock and hash tree).
    Verity,
    /// The unified kernel image (written to the ESP).
    Uki,
    /// The release's SPDX SBOM (`sbom.spdx.json`): checked, never written to the host.
    Sbom,
}

impl PartKind {
    /// Every kind, in bundle order (format 2).
    pub const ALL: [PartKind; 4] = [
        PartKind::Root,
        PartKind::Verity,
        PartKind::Uki,
        PartKind::Sbom,
    ];

    /// The kinds a bundle of `format` holds, in order (`None` for a format this crate does
    /// not read).
    pub fn of_format(format: u32) -> Option<&'static [PartKind]> {
        match format {
            FORMAT_WITHOUT_SBOM => Some(&Self::ALL[..3]),
            FORMAT_VERSION => Some(&Self::ALL),
            _ => None,
        }
    }

    /// The name in the header.
    pub fn as_str(self) -> &'static str {
        match self {
            PartKind::Root => "root",
            PartKind::Verity => "verity",
            PartKind::Uki => "uki",
            PartKind::Sbom => "sbom",
        }
    }
}

/// One part as the header describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    /// What it is.
    pub kind: PartKind,
    /// Compressed size in the bundle.
    pub size: u64,
    /// Digest of the compressed bytes.
    pub sha256: Digest,
    /// Size once decompressed.
    pub raw_size: u64,
    /// Digest once decompressed.
    pub raw_sha256: Digest,
}

/// A bundle's header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Partition layout the bundle needs.
    pub layout: u32,
    /// Image name.
    pub name: String,
    /// Version.
    pub version: String,
    /// The new version's root hash (the slot's partition UUIDs derive from it).
    pub root_hash: Digest,
    /// The parts, in [`PartKind::ALL`] order: all four, or (format 1) the first three.
    pub parts: Vec<Part>,
}

/// A header that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bundle header: {0}")]
pub struct HeaderError(pub String);

impl Header {
    /// The bundle format of this header: 2 with an SBOM part, 1 without.
    pub fn format(&self) -> u32 {
        if self.part(PartKind::Sbom).is_some() {
            FORMAT_VERSION
        } else {
            FORMAT_WITHOUT_SBOM
        }
    }

    /// The header text (the signed bytes).
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "format={}\nlayout={}\nname={}\nversion={}\nroot-hash={}\n",
            self.format(),
            self.layout,
            self.name,
            self.version,
            self.root_hash
        );
        for p in &self.parts {
            s.push_str(&format!(
                "part={} {} {} {} {}\n",
                p.kind.as_str(),
                p.size,
                p.sha256,
                p.raw_size,
                p.raw_sha256
            ));
        }
        s
    }

    /// Parses header text (strictly, like the manifest).
    pub fn parse(text: &str) -> Result<Self, HeaderError> {
        let bad = |m: String| HeaderError(m);
        let mut fields = std::collections::BTreeMap::new();
        let mut parts = Vec::new();
        for line in text.lines() {
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| bad(format!("{line:?} is not key=value")))?;
            if key == "part" {
                let f: Vec<&str> = value.split(' ').collect();
                let [kind, size, sha, raw_size, raw_sha] = f.as_slice() else {
                    return Err(bad(format!("part {value:?} needs five fields")));
                };
                let kind = *PartKind::ALL
                    .get(parts.len())
                    .filter(|k| k.as_str() == *kind)
                    .ok_or_else(|| bad(format!("part {kind:?} out of order")))?;
                let num = |s: &str| {
                    s.parse::<u64>()
                        .map_err(|_| bad(format!("{s:?} is not a size")))
                };
                let dig = |s: &str| s.parse::<Digest>().map_err(|e| bad(e.to_string()));
                parts.push(Part {
                    kind,
                    size: num(size)?,
                    sha256: dig(sha)?,
                    raw_size: num(raw_size)?,
                    raw_sha256: dig(raw_sha)?,
                });
            } else if fields.insert(key.to_owned(), value.to_owned()).is_some() {
                return Err(bad(format!("{key} given twice")));
            }
        }
        let mut take = |k: &str| fields.remove(k).ok_or_else(|| bad(format!("no {k}")));
        let format = take("format")?;
        let kinds = format
            .parse()
            .ok()
            .and_then(PartKind::of_format)
            .ok_or_else(|| {
                bad(format!(
                    "format {format} is not supported (only {FORMAT_WITHOUT_SBOM} and {FORMAT_VERSION})"
                ))
            })?;
        let layout = take("layout")?
            .parse()
            .map_err(|_| bad("layout is not a number".into()))?;
        let name = take("name")?;
        check_name(&name).map_err(|e| bad(e.to_string()))?;
        let version = take("version")?;
        check_version(&version).map_err(|e| bad(e.to_string()))?;
        let root_hash = take("root-hash")?
            .parse()
            .map_err(|e: crate::digest::DigestParseError| bad(e.to_string()))?;
        if let Some(extra) = fields.keys().next() {
            return Err(bad(format!("unknown key {extra:?}")));
        }
        if parts.len() != kinds.len() {
            return Err(bad(format!(
                "{} parts, expected {} in format {format}",
                parts.len(),
                kinds.len()
            )));
        }
        // The file's size must be a number: `file_size` and `part_offset` add the parts up.
        let most = 8 + 4 + u64::from(MAX_HEADER) + 64;
        if parts
            .iter()
            .try_fold(most, |total, p| total.checked_add(p.size))
            .is_none()
        {
            return Err(bad("the parts' sizes add up past any file size".into()));
        }
        Ok(Header {
            layout,
            name,
            version,
            root_hash,
            parts,
        })
    }

    /// The part of a kind.
    pub fn part(&self, kind: PartKind) -> Option<&Part> {
        self.parts.iter().find(|p| p.kind == kind)
    }

    /// Byte offset of a part's data from the start of the file, given the header length.
    pub fn part_offset(&self, header_len: u64, kind: PartKind) -> u64 {
        let mut at = 8 + 4 + header_len + 64;
        for p in &self.parts {
            if p.kind == kind {
                break;
            }
            at += p.size;
        }
        at
    }

    /// Size of the whole bundle file.
    pub fn file_size(&self, header_len: u64) -> u64 {
        8 + 4 + header_len + 64 + self.parts.iter().map(|p| p.size).sum::<u64>()
    }
}

/// Reads the fixed prefix (magic and header length) of a bundle.
pub fn header_len(prefix: &[u8; 12]) -> Result<u32, HeaderError> {
    if &prefix[..8] != MAGIC {
        return Err(HeaderError("not a Crust update bundle (bad magic)".into()));
    }
    let len = u32::from_le_bytes([prefix[8], prefix[9], prefix[10], prefix[11]]);
    if len == 0 || len > MAX_HEADER {
        return Err(HeaderError(format!("header length {len} is out of range")));
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Header {
        Header {
            layout: 1,
            name: "crust".into(),
            version: "0.2.0".into(),
            root_hash: Digest::of(b"root"),
            parts: PartKind::ALL
                .iter()
                .enumerate()
                .map(|(i, &kind)| Part {
                    kind,
                    size: 100 + i as u64,
                    sha256: Digest::of(&[i as u8]),
                    raw_size: 200 + i as u64,
                    raw_sha256: Digest::of(&[i as u8, 1]),
                })
                .collect(),
        }
    }

    #[test]
    fn headers_round_trip_and_locate_parts() {
        let h = sample();
        let text = h.to_text();
        assert_eq!(Header::parse(&text), Ok(h.clone()));
        let n = text.len() as u64;
        assert_eq!(h.part_offset(n, PartKind::Root), 12 + n + 64);
        assert_eq!(h.part_offset(n, PartKind::Uki), 12 + n + 64 + 100 + 101);
        assert_eq!(
            h.part_offset(n, PartKind::Sbom),
            12 + n + 64 + 100 + 101 + 102
        );
        assert_eq!(h.file_size(n), 12 + n + 64 + 406);
    }

    #[test]
    fn format_1_bundles_without_sbom_still_read() {
        let mut h = sample();
        h.parts.pop();
        let text = h.to_text();
        assert!(text.starts_with("format=1\n"), "{text}");
        assert_eq!(Header::parse(&text), Ok(h.clone()));
        assert!(sample().to_text().starts_with("format=2\n"));
        // The part count must match the format.
        let short = text.replace("format=1", "format=2");
        assert!(Header::parse(&short).unwrap_err().0.contains("3 parts"));
        let mut long = sample().to_text();
        long = long.replace("format=2", "format=1");
        assert!(Header::parse(&long).is_err());
    }

    #[test]
    fn part_sizes_that_overflow_the_file_size_are_refused() {
        // Found by reading the bundle fuzz target's path: file_size() overflowed (a panic
        // with overflow checks; a wrapped size, which a file could match, without).
        let mut h = sample();
        h.parts[0].size = u64::MAX - 100;
        h.parts[2].size = 200;
        let e = Header::parse(&h.to_text()).unwrap_err();
        assert!(e.0.contains("add up past"), "{e}");
        let mut h = sample();
        let others: u64 = h.parts.iter().map(|p| p.size).sum::<u64>() - h.parts[1].size;
        h.parts[1].size = u64::MAX - (8 + 4 + u64::from(MAX_HEADER) + 64) - others;
        let parsed = Header::parse(&h.to_text()).unwrap();
        assert_eq!(parsed.file_size(u64::from(MAX_HEADER)), u64::MAX);
    }

    #[test]
    fn bad_headers_are_refused() {
        let text = sample().to_text();
        assert!(Header::parse(&text.replace("part=root", "part=uki")).is_err());
        assert!(Header::parse(&text.replace("part=sbom", "part=uki")).is_err());
        assert!(Header::parse(&format!("{text}colour=red\n")).is_err());
        assert!(Header::parse(&text.replace("format=2", "format=3")).is_err());
        let mut prefix = [0u8; 12];
        prefix[..8].copy_from_slice(MAGIC);
        prefix[8..].copy_from_slice(&200u32.to_le_bytes());
        assert_eq!(header_len(&prefix), Ok(200));
        prefix[0] = b'X';
        assert!(header_len(&prefix).is_err());
    }
}
