//! Signed releases: `SHA256SUMS` over a build's outputs and an Ed25519 signature over it.
//!
//! `SHA256SUMS` is what `sha256sum` writes and `sha256sum -c` checks: one line per file,
//! `<64 lowercase hex digits><space><space><file name>\n`, sorted by name, names without
//! folders. `SHA256SUMS.sig` is the raw 64-byte Ed25519 signature (RFC 8032) over the exact
//! bytes of `SHA256SUMS`, made with the profile's signing key, as `manifest.sig` is over the
//! manifest (`docs/FORMAT.md` §10). `openssl pkeyutl -verify -rawin` checks it too.
//!
//! Checking a release verifies the signature *before* reading a line of the list, then
//! hashes every file named and compares. Callers that need one file (flashing an image)
//! take the signed list with [`signed_sums`] and hash what they use.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::Context;
use crust_format::Digest;
use crust_format::signature::PublicKey;
use sha2::{Digest as _, Sha256};

use crate::build::outputs;
use crate::formats::{self, Stamp};
use crate::profile::OutputFormat;
use crate::sign::SigningKey;
use crate::{output, report, sparse};

pub use crust_format::sums::{SUMS, SUMS_SIG};

/// Why a release does not check out. Nothing in it can be trusted after any of these.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    /// The folder has no `SHA256SUMS` or no signature.
    #[error(
        "{} is missing: {} is not a signed release (build it with `cargo xtask build`)",
        path.display(),
        dir.display()
    )]
    Unsigned {
        /// The release folder.
        dir: PathBuf,
        /// The missing file.
        path: PathBuf,
    },
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The signature does not verify with the key.
    #[error(
        "{} does not verify with key {fingerprint}: the list was changed, or signed by another key (pass the right one with --key)",
        path.display()
    )]
    BadSignature {
        /// The signature file.
        path: PathBuf,
        /// The key tried.
        fingerprint: String,
    },
    /// A line of `SHA256SUMS` is not `<digest>  <name>`.
    #[error("{}:{line}: {reason}", path.display())]
    Malformed {
        /// The list.
        path: PathBuf,
        /// Line number (from 1).
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// A file the caller needs is not in the list.
    #[error("{name} is not listed in {}: it is not part of this release", path.display())]
    NotListed {
        /// The file name.
        name: String,
        /// The list.
        path: PathBuf,
    },
    /// A listed file is missing.
    #[error("{} is listed in SHA256SUMS but missing", path.display())]
    Missing {
        /// The file.
        path: PathBuf,
    },
    /// A listed file's content differs from its digest.
    #[error(
        "{} does not match SHA256SUMS (expected {expected}, found {actual}): it was changed after signing",
        path.display()
    )]
    Mismatch {
        /// The file.
        path: PathBuf,
        /// Its signed digest.
        expected: Digest,
        /// Its digest now.
        actual: Digest,
    },
}

pub use crust_format::sums::Sums;

/// Parses a `SHA256SUMS` read from `path`, naming it in errors.
pub fn parse_sums(text: &[u8], path: &Path) -> Result<Sums, ReleaseError> {
    Sums::parse(text).map_err(|e| ReleaseError::Malformed {
        path: path.to_path_buf(),
        line: e.line,
        reason: e.reason.to_owned(),
    })
}

/// SHA-256 of a file, read in 4 MiB pieces; a progress bar for large files. The holes of a
/// sparse file are not read: they are zeros, hashed from memory, which spares the kernel
/// from filling and copying the gigabytes of zeros of an image (a third of the time).
pub fn hash_file(path: &Path) -> Result<Digest, ReleaseError> {
    const PIECE: usize = 4 << 20;
    let read_err = |source| ReleaseError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => ReleaseError::Missing {
            path: path.to_path_buf(),
        },
        _ => read_err(source),
    })?;
    let len = file.metadata().map_err(read_err)?.len();
    let bar = (len >= 256 << 20).then(|| {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        report::bytes_bar(len, &format!("Hashing {name}"))
    });
    let regions = sparse::data_regions(&file).map_err(read_err)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; PIECE];
    let zeros = vec![0u8; PIECE];
    let mut pos = 0u64;
    // Each data region, and before it the hole since the last; then the hole to the end.
    for region in regions.into_iter().chain(std::iter::once(len..len)) {
        while pos < region.start {
            let n = (region.start - pos).min(PIECE as u64) as usize;
            hasher.update(&zeros[..n]);
            pos += n as u64;
            if let Some(bar) = &bar {
                bar.inc(n as u64);
            }
        }
        file.seek(SeekFrom::Start(pos)).map_err(read_err)?;
        while pos < region.end {
            let want = (region.end - pos).min(PIECE as u64) as usize;
            let n = file.read(&mut buf[..want]).map_err(read_err)?;
            if n == 0 {
                return Err(read_err(std::io::ErrorKind::UnexpectedEof.into()));
            }
            hasher.update(&buf[..n]);
            pos += n as u64;
            if let Some(bar) = &bar {
                bar.inc(n as u64);
            }
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    Ok(Digest(hasher.finalize().into()))
}

/// Reads `SHA256SUMS` of `dir` after checking its signature with `key`.
pub fn signed_sums(dir: &Path, key: &PublicKey) -> Result<Sums, ReleaseError> {
    let read = |name: &str| -> Result<Vec<u8>, ReleaseError> {
        let path = dir.join(name);
        std::fs::read(&path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => ReleaseError::Unsigned {
                dir: dir.to_path_buf(),
                path: path.clone(),
            },
            _ => ReleaseError::Read { path, source },
        })
    };
    let text = read(SUMS)?;
    let signature = read(SUMS_SIG)?;
    key.verify(&text, &signature)
        .map_err(|_| ReleaseError::BadSignature {
            path: dir.join(SUMS_SIG),
            fingerprint: key.fingerprint(),
        })?;
    parse_sums(&text, &dir.join(SUMS))
}

/// Checks the signature of the release in `dir` and the digest of every file it lists.
pub fn verify(dir: &Path, key: &PublicKey) -> Result<Sums, ReleaseError> {
    let sums = signed_sums(dir, key)?;
    for (name, expected) in sums.iter() {
        let path = dir.join(name);
        let actual = hash_file(&path)?;
        if actual != *expected {
            return Err(ReleaseError::Mismatch {
                path,
                expected: *expected,
                actual,
            });
        }
    }
    Ok(sums)
}

/// Checks one listed file of the release in `dir`: the signature, then its digest.
pub fn verify_file(dir: &Path, name: &str, key: &PublicKey) -> Result<Digest, ReleaseError> {
    let sums = signed_sums(dir, key)?;
    let expected = *sums.get(name).ok_or_else(|| ReleaseError::NotListed {
        name: name.to_owned(),
        path: dir.join(SUMS),
    })?;
    let path = dir.join(name);
    let actual = hash_file(&path)?;
    if actual != expected {
        return Err(ReleaseError::Mismatch {
            path,
            expected,
            actual,
        });
    }
    Ok(actual)
}

/// Reads the public key to check releases with from a PEM file: an SPKI public key
/// (`crust.pub`), or a PKCS#8 private key (`crust.key`) whose public half is taken.
pub fn read_public_key(path: &Path) -> anyhow::Result<PublicKey> {
    use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey};
    let pem = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read key {}", path.display()))?;
    if let Ok(key) = ed25519_dalek::VerifyingKey::from_public_key_pem(&pem) {
        return Ok(PublicKey::from_verifying_key(key));
    }
    if let Ok(key) = ed25519_dalek::SigningKey::from_pkcs8_pem(&pem) {
        return Ok(PublicKey::from_verifying_key(key.verifying_key()));
    }
    anyhow::bail!(
        "{} is not an Ed25519 key in PEM (a `cargo xtask keygen` .pub or .key file)",
        path.display()
    )
}

/// Writes `SHA256SUMS` (atomically) and then its signature for `sums` in `dir`.
pub fn write(dir: &Path, sums: &Sums, key: &SigningKey) -> anyhow::Result<()> {
    let text = sums.to_text();
    // The old signature goes first: a crash in between leaves an unsigned list, never a
    // list with the signature of another.
    remove(&dir.join(SUMS_SIG))?;
    output::write_atomic(&dir.join(SUMS), text.as_bytes())?;
    output::write_atomic(&dir.join(SUMS_SIG), &key.sign(text.as_bytes()))?;
    Ok(())
}

fn remove(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// Removes the release files and every converted format from `dir`: they belong to the
/// image about to be replaced.
pub fn clear(dir: &Path) -> anyhow::Result<()> {
    remove(&dir.join(SUMS_SIG))?;
    remove(&dir.join(SUMS))?;
    remove(&dir.join(outputs::SBOM_SPDX))?;
    remove(&dir.join(outputs::SBOM_CYCLONEDX))?;
    for format in OutputFormat::ALL {
        if format != OutputFormat::Raw {
            for name in format.file_names() {
                if *name != outputs::IMAGE {
                    remove(&dir.join(name))?;
                }
            }
        }
    }
    Ok(())
}

/// Makes the formats in `wanted` that `out_dir` lacks and signs the release: `SHA256SUMS`
/// over the image, the manifest and its signature, and every format made for this image.
/// A release that already lists all of them is left as it is; digests of files already
/// listed (and signed) are kept, so only new files are hashed.
pub fn publish(
    out_dir: &Path,
    wanted: &[OutputFormat],
    key: &SigningKey,
    stamp: &Stamp,
    extras: &crate::build::Extras,
) -> anyhow::Result<Vec<PathBuf>> {
    let image = out_dir.join(outputs::IMAGE);
    let mut names: Vec<&str> = vec![
        outputs::IMAGE,
        outputs::MANIFEST,
        outputs::SIGNATURE,
        outputs::SBOM_SPDX,
        outputs::SBOM_CYCLONEDX,
    ];
    names.extend(wanted.iter().flat_map(|f| f.file_names()));
    let old = signed_sums(out_dir, &key.public_key()).unwrap_or_default();
    // Formats made earlier for this same image stay in the release.
    for format in OutputFormat::ALL {
        let made = format.file_names();
        if made
            .iter()
            .all(|n| old.get(n).is_some() && out_dir.join(n).is_file())
        {
            names.extend(made);
        }
    }
    names.sort_unstable();
    names.dedup();
    let complete = names
        .iter()
        .all(|n| old.get(n).is_some() && out_dir.join(n).is_file());
    let files = names.iter().map(|n| out_dir.join(n)).collect();
    // The ISO carries the installer's user-data, which is no input of the image: an ISO
    // asked for is made again (xorriso takes seconds), so it never holds stale user-data.
    let iso_wanted = wanted.contains(&OutputFormat::Iso);
    if complete && old.len() == names.len() && !iso_wanted {
        return Ok(files);
    }

    let mut sums = Sums::default();
    let mut remade: Vec<&str> = Vec::new();
    for format in wanted {
        let listed = format
            .file_names()
            .iter()
            .all(|n| old.get(n).is_some() && out_dir.join(n).is_file());
        if *format == OutputFormat::Raw || (listed && *format != OutputFormat::Iso) {
            continue;
        }
        remade.push(format.file_name());
        let spinner = report::spinner(format!("Converting to {format}"));
        let made = formats::make(&image, out_dir, *format, stamp, key, extras);
        spinner.finish_and_clear();
        let made = made.with_context(|| format!("cannot make the {format} output"))?;
        let len = std::fs::metadata(&made).map(|m| m.len()).unwrap_or(0);
        report::status(
            "Converted",
            format!("{} ({})", made.display(), crate::profile::show_size(len)),
        );
    }
    for name in &names {
        let digest = match old.get(name).filter(|_| !remade.contains(name)) {
            Some(digest) => *digest,
            None => hash_file(&out_dir.join(name))?,
        };
        sums.insert(name, digest);
    }
    write(out_dir, &sums, key)?;
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn release(dir: &Path) -> SigningKey {
        std::fs::write(dir.join("image.raw"), b"disk bytes").unwrap();
        std::fs::write(dir.join("manifest"), b"format=1\n").unwrap();
        let key = SigningKey::development(&dir.join("keys")).unwrap();
        let mut sums = Sums::default();
        for name in ["image.raw", "manifest"] {
            sums.insert(name, hash_file(&dir.join(name)).unwrap());
        }
        write(dir, &sums, &key).unwrap();
        key
    }

    #[test]
    fn sha256sum_and_openssl_check_what_we_write() {
        let dir = tempfile::tempdir().unwrap();
        let key = release(dir.path());
        let out = Command::new("sha256sum")
            .args(["--check", "--strict", SUMS])
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        // The signature, checked by OpenSSL with the public key in SPKI PEM.
        let public = dir.path().join("keys/development.pub");
        let out = Command::new("openssl")
            .args(["pkeyutl", "-verify", "-pubin", "-rawin", "-inkey"])
            .arg(&public)
            .arg("-in")
            .arg(dir.path().join(SUMS))
            .arg("-sigfile")
            .arg(dir.path().join(SUMS_SIG))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let sums = verify(dir.path(), &key.public_key()).unwrap();
        assert_eq!(sums.len(), 2);
        // Both key files name the same public key.
        assert_eq!(read_public_key(&public).unwrap(), key.public_key());
        assert_eq!(read_public_key(&key.path).unwrap(), key.public_key());
        assert!(read_public_key(&dir.path().join(SUMS)).is_err());
    }

    #[test]
    fn a_changed_file_list_or_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let key = release(dir.path());
        let public = key.public_key();

        std::fs::write(dir.path().join("image.raw"), b"disk bytez").unwrap();
        assert!(matches!(
            verify(dir.path(), &public),
            Err(ReleaseError::Mismatch { .. })
        ));
        assert!(matches!(
            verify_file(dir.path(), "image.raw", &public),
            Err(ReleaseError::Mismatch { .. })
        ));
        assert!(verify_file(dir.path(), "manifest", &public).is_ok());
        assert!(matches!(
            verify_file(dir.path(), "vmlinuz", &public),
            Err(ReleaseError::NotListed { .. })
        ));

        let mut text = std::fs::read(dir.path().join(SUMS)).unwrap();
        text[0] ^= 1;
        std::fs::write(dir.path().join(SUMS), &text).unwrap();
        assert!(matches!(
            signed_sums(dir.path(), &public),
            Err(ReleaseError::BadSignature { .. })
        ));

        let other = SigningKey::development(&dir.path().join("other")).unwrap();
        let fresh = tempfile::tempdir().unwrap();
        release(fresh.path());
        assert!(matches!(
            signed_sums(fresh.path(), &other.public_key()),
            Err(ReleaseError::BadSignature { .. })
        ));
        std::fs::remove_file(fresh.path().join(SUMS_SIG)).unwrap();
        assert!(matches!(
            signed_sums(fresh.path(), &public),
            Err(ReleaseError::Unsigned { .. })
        ));
    }

    #[test]
    fn sparse_files_hash_as_sha256sum_reads_them() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.raw");
        let mut f = File::create(&path).unwrap();
        // Holes at the start, between pieces of data (one across a 4 MiB piece boundary)
        // and at the end.
        f.set_len(21 << 20).unwrap();
        for (at, data) in [
            (1 << 20, &b"gpt"[..]),
            ((4 << 20) - 2, b"across"),
            (9 << 20, b"x"),
        ] {
            f.seek(SeekFrom::Start(at)).unwrap();
            f.write_all(data).unwrap();
        }
        drop(f);
        let out = Command::new("sha256sum").arg(&path).output().unwrap();
        let expected = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned();
        assert_eq!(hash_file(&path).unwrap().to_hex(), expected);
        // A file with no holes, and an empty one.
        std::fs::write(&path, b"plain").unwrap();
        assert_eq!(hash_file(&path).unwrap(), Digest::of(b"plain"));
        std::fs::write(&path, b"").unwrap();
        assert_eq!(hash_file(&path).unwrap(), Digest::of(b""));
    }

    #[test]
    fn malformed_lists_are_refused_with_their_line() {
        let p = Path::new("SHA256SUMS");
        let d = "a".repeat(64);
        assert!(parse_sums(format!("{d}  image.raw\n").as_bytes(), p).is_ok());
        for (bad, line) in [
            (format!("{d} image.raw\n"), 1),
            (format!("{d}  image.raw"), 1),
            (format!("{d}  a\n{d}  ../etc/passwd\n"), 2),
            (format!("{d}  a\n{d}  a\n"), 2),
            (format!("{}  a\n", "A".repeat(64)), 1),
            (format!("{d}  *a\n"), 1),
        ] {
            match parse_sums(bad.as_bytes(), p) {
                Err(ReleaseError::Malformed { line: l, .. }) => assert_eq!(l, line, "{bad:?}"),
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
    }
}
