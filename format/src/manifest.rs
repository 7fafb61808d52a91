//! The image manifest: what one version of Crust is, in a small signed text file.
//!
//! The manifest is UTF-8 text, one `key=value` pair per line, every line ending in `\n`,
//! keys in the order [`Manifest::to_text`] writes them. It is signed as bytes (see
//! [`crate::signature`]); the parser is strict (no unknown, missing or repeated keys, no
//! unsupported verity parameters) because a reader that guesses is a reader that can be
//! fooled. A new key means a new `format` number.

use std::fmt;

use crate::Digest;
use crate::layout::LAYOUT_VERSION;
use crate::verity::{self, VerityParams};
use crate::version::{check_name, check_version};

/// The manifest format this crate reads and writes.
pub const FORMAT_VERSION: u32 = 1;

/// The root file system type of an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filesystem {
    /// squashfs 4.0 (zstd).
    Squashfs,
    /// EROFS.
    Erofs,
}

impl Filesystem {
    /// The kernel's name for the file system, as passed to mount(2).
    pub fn as_str(self) -> &'static str {
        match self {
            Filesystem::Squashfs => "squashfs",
            Filesystem::Erofs => "erofs",
        }
    }
}

/// One version of a Crust image, as signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// Partition layout version the image needs.
    pub layout: u32,
    /// Image name (also the UKI file name prefix).
    pub name: String,
    /// Image version.
    pub version: String,
    /// Digest of every build input (profile, lock, init, key, epoch).
    pub build_id: Digest,
    /// The root file system type.
    pub filesystem: Filesystem,
    /// The root image's verity tree.
    pub verity: VerityParams,
    /// The kernel release (`uname -r`).
    pub kernel_release: String,
    /// SHA-256 of the kernel image in the UKI.
    pub kernel_sha256: Digest,
}

/// Why a manifest could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// A line is not `key=value`.
    #[error("line {line}: expected key=value")]
    Syntax {
        /// 1-based line number.
        line: usize,
    },
    /// The text is not valid UTF-8 or does not end with a newline.
    #[error("not UTF-8 text ending with a newline")]
    Encoding,
    /// A key this format does not have.
    #[error("line {line}: unknown key {key:?}")]
    UnknownKey {
        /// 1-based line number.
        line: usize,
        /// The key.
        key: String,
    },
    /// A key given twice.
    #[error("line {line}: key {key:?} given twice")]
    Duplicate {
        /// 1-based line number.
        line: usize,
        /// The key.
        key: String,
    },
    /// A required key is absent.
    #[error("missing key {0:?}")]
    Missing(&'static str),
    /// A value is malformed or not supported.
    #[error("key {key:?}: {reason}")]
    Value {
        /// The key.
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// Every key of format 1, in canonical order.
const KEYS: [&str; 15] = [
    "format",
    "layout",
    "name",
    "version",
    "build-id",
    "root-filesystem",
    "root-hash",
    "root-salt",
    "root-data-blocks",
    "verity-hash-algorithm",
    "verity-block-size",
    "verity-size",
    "verity-uuid",
    "kernel-release",
    "kernel-sha256",
];

impl Manifest {
    /// The canonical text, the bytes that get signed.
    pub fn to_text(&self) -> String {
        let v = &self.verity;
        format!(
            "format={FORMAT_VERSION}\n\
             layout={layout}\n\
             name={name}\n\
             version={version}\n\
             build-id={build}\n\
             root-filesystem={fs}\n\
             root-hash={root}\n\
             root-salt={salt}\n\
             root-data-blocks={blocks}\n\
             verity-hash-algorithm={alg}\n\
             verity-block-size={bs}\n\
             verity-size={hsize}\n\
             verity-uuid={uuid}\n\
             kernel-release={krel}\n\
             kernel-sha256={ksha}\n",
            layout = self.layout,
            name = self.name,
            version = self.version,
            build = self.build_id,
            fs = self.filesystem.as_str(),
            root = v.root_hash,
            salt = v.salt,
            blocks = v.data_blocks,
            alg = verity::HASH_ALGORITHM,
            bs = verity::BLOCK_SIZE,
            hsize = v.hash_size,
            uuid = hex::encode(v.uuid),
            krel = self.kernel_release,
            ksha = self.kernel_sha256,
        )
    }

    /// Parses manifest text (strictly: see the module documentation).
    pub fn parse(bytes: &[u8]) -> Result<Self, ManifestError> {
        let text = std::str::from_utf8(bytes).map_err(|_| ManifestError::Encoding)?;
        if !text.ends_with('\n') {
            return Err(ManifestError::Encoding);
        }
        let mut values: [Option<&str>; KEYS.len()] = [None; KEYS.len()];
        for (i, line) in text.lines().enumerate() {
            let line_no = i + 1;
            let (key, value) = line
                .split_once('=')
                .ok_or(ManifestError::Syntax { line: line_no })?;
            let slot =
                KEYS.iter()
                    .position(|k| *k == key)
                    .ok_or_else(|| ManifestError::UnknownKey {
                        line: line_no,
                        key: key.to_owned(),
                    })?;
            if values[slot].replace(value).is_some() {
                return Err(ManifestError::Duplicate {
                    line: line_no,
                    key: key.to_owned(),
                });
            }
        }
        let get = |key: &'static str| -> Result<&str, ManifestError> {
            KEYS.iter()
                .position(|k| *k == key)
                .and_then(|slot| values[slot])
                .ok_or(ManifestError::Missing(key))
        };
        let bad = |key: &'static str, reason: String| ManifestError::Value { key, reason };
        let number = |key: &'static str| -> Result<u64, ManifestError> {
            let s = get(key)?;
            if s.is_empty()
                || !s.bytes().all(|b| b.is_ascii_digit())
                || (s.len() > 1 && s.starts_with('0'))
            {
                return Err(bad(key, format!("{s:?} is not a decimal number")));
            }
            s.parse()
                .map_err(|_| bad(key, format!("{s:?} is out of range")))
        };
        let digest = |key: &'static str| -> Result<Digest, ManifestError> {
            get(key)?
                .parse()
                .map_err(|e: crate::digest::DigestParseError| bad(key, e.to_string()))
        };
        let exact = |key: &'static str, want: &str| -> Result<(), ManifestError> {
            let found = get(key)?;
            if found == want {
                Ok(())
            } else {
                Err(bad(
                    key,
                    format!("{found:?} is not supported (only {want:?})"),
                ))
            }
        };

        let format = number("format")?;
        if format != u64::from(FORMAT_VERSION) {
            return Err(bad(
                "format",
                format!("version {format} is not supported (only {FORMAT_VERSION})"),
            ));
        }
        let layout = number("layout")?;
        if layout != u64::from(LAYOUT_VERSION) {
            return Err(bad(
                "layout",
                format!("layout {layout} is not supported (only {LAYOUT_VERSION})"),
            ));
        }
        let name = get("name")?;
        check_name(name).map_err(|e| bad("name", e.to_string()))?;
        let version = get("version")?;
        check_version(version).map_err(|e| bad("version", e.to_string()))?;
        let filesystem = match get("root-filesystem")? {
            "squashfs" => Filesystem::Squashfs,
            "erofs" => Filesystem::Erofs,
            other => {
                return Err(bad(
                    "root-filesystem",
                    format!("{other:?} is not squashfs or erofs"),
                ));
            }
        };
        exact("verity-hash-algorithm", verity::HASH_ALGORITHM)?;
        exact("verity-block-size", &verity::BLOCK_SIZE.to_string())?;
        let data_blocks = number("root-data-blocks")?;
        if data_blocks == 0 {
            return Err(bad("root-data-blocks", "must not be 0".into()));
        }
        // The root and its tree must have sizes in bytes (stage 1 gives device-mapper the
        // root's size; a count whose bytes overflow would wrap there).
        let block = u64::from(verity::BLOCK_SIZE);
        let min_hash_size = data_blocks
            .checked_mul(block)
            .and_then(|_| (verity::hash_blocks(data_blocks) + 1).checked_mul(block))
            .ok_or_else(|| {
                bad(
                    "root-data-blocks",
                    format!("{data_blocks} blocks is too many"),
                )
            })?;
        let hash_size = number("verity-size")?;
        if hash_size != min_hash_size {
            return Err(bad(
                "verity-size",
                format!(
                    "{hash_size} does not match a tree over {data_blocks} blocks ({min_hash_size})"
                ),
            ));
        }
        let mut uuid = [0u8; 16];
        hex::decode_to_slice(get("verity-uuid")?, &mut uuid)
            .map_err(|_| bad("verity-uuid", "expected 32 hex digits".into()))?;
        let kernel_release = get("kernel-release")?;
        if kernel_release.is_empty() || kernel_release.contains(['/', ' ']) {
            return Err(bad(
                "kernel-release",
                format!("{kernel_release:?} is not a kernel release"),
            ));
        }
        Ok(Manifest {
            layout: layout as u32,
            name: name.to_owned(),
            version: version.to_owned(),
            build_id: digest("build-id")?,
            filesystem,
            verity: VerityParams {
                root_hash: digest("root-hash")?,
                salt: digest("root-salt")?,
                data_blocks,
                hash_size,
                uuid,
            },
            kernel_release: kernel_release.to_owned(),
            kernel_sha256: digest("kernel-sha256")?,
        })
    }
}

impl fmt::Display for Manifest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} (root {}, kernel {})",
            self.name,
            self.version,
            self.verity.root_hash.short(12),
            self.kernel_release
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            layout: 1,
            name: "crust".into(),
            version: "0.1.0".into(),
            build_id: Digest::of(b"build"),
            filesystem: Filesystem::Squashfs,
            verity: VerityParams {
                root_hash: Digest::of(b"root"),
                salt: Digest::of(b"salt"),
                data_blocks: 1000,
                hash_size: (verity::hash_blocks(1000) + 1) * 4096,
                uuid: [3; 16],
            },
            kernel_release: "6.1.0-56-cloud-amd64".into(),
            kernel_sha256: Digest::of(b"kernel"),
        }
    }

    #[test]
    fn a_block_count_whose_bytes_overflow_is_refused() {
        // Found by reading the manifest fuzz target's path: the tree size overflowed (a
        // panic with overflow checks, a wrapped size without).
        for blocks in [u64::MAX, u64::MAX / 4096 + 1, 1 << 60] {
            let text = sample().to_text().replace(
                "root-data-blocks=1000\n",
                &format!("root-data-blocks={blocks}\n"),
            );
            let e = Manifest::parse(text.as_bytes()).unwrap_err();
            assert!(e.to_string().contains("too many"), "{blocks}: {e}");
        }
        let most = u64::MAX / 4096;
        let mut m = sample();
        m.verity.data_blocks = most;
        m.verity.hash_size = (verity::hash_blocks(most) + 1) * 4096;
        assert_eq!(Manifest::parse(m.to_text().as_bytes()), Ok(m));
    }

    #[test]
    fn text_round_trips() {
        let m = sample();
        assert_eq!(Manifest::parse(m.to_text().as_bytes()), Ok(m));
    }

    #[test]
    fn refuses_unknown_duplicate_and_missing_keys() {
        let text = sample().to_text();
        let extra = format!("{text}colour=blue\n");
        assert!(matches!(
            Manifest::parse(extra.as_bytes()),
            Err(ManifestError::UnknownKey { line: 16, .. })
        ));
        let dup = format!("{text}name=other\n");
        assert!(matches!(
            Manifest::parse(dup.as_bytes()),
            Err(ManifestError::Duplicate { .. })
        ));
        let missing: String = text
            .lines()
            .filter(|l| !l.starts_with("root-salt="))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(
            Manifest::parse(missing.as_bytes()),
            Err(ManifestError::Missing("root-salt"))
        );
    }

    #[test]
    fn refuses_unsupported_parameters() {
        let text = sample()
            .to_text()
            .replace("verity-block-size=4096", "verity-block-size=512");
        assert!(matches!(
            Manifest::parse(text.as_bytes()),
            Err(ManifestError::Value {
                key: "verity-block-size",
                ..
            })
        ));
        let text = sample()
            .to_text()
            .replace("root-data-blocks=1000", "root-data-blocks=01000");
        assert!(Manifest::parse(text.as_bytes()).is_err());
        let text = sample().to_text().replace("format=1", "format=2");
        assert!(Manifest::parse(text.as_bytes()).is_err());
        assert!(Manifest::parse(sample().to_text().trim_end().as_bytes()).is_err());
    }
}
