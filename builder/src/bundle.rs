//! Update bundles: the new version's root image, verity tree and UKI, and the release's SBOM,
//! zstd-compressed, behind a header signed with the image's key ([`crust_format::bundle`] has
//! the file format).
//!
//! Every build writes `update.bundle` beside `image.raw`, from the same bytes it puts in the
//! image, so the bundle of a build installs exactly the image that build made; its `sbom`
//! part is the build's `sbom.spdx.json`, byte for byte ([`read_sbom`] takes it out).

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result, bail};
use crust_format::Digest;
use crust_format::bundle::{self, Header, Part, PartKind};

use crate::sign::SigningKey;

/// zstd level of the parts: the root is already compressed and the kernel too, so a middle
/// level gets nearly all there is at a fraction of the time of 19.
const ZSTD_LEVEL: i32 = 9;

/// What a bundle is made of.
#[derive(Debug)]
pub struct Contents<'a> {
    /// Partition layout version.
    pub layout: u32,
    /// Image name.
    pub name: &'a str,
    /// Version.
    pub version: &'a str,
    /// Root hash of the root image.
    pub root_hash: Digest,
    /// The root image.
    pub root: &'a [u8],
    /// The verity partition content.
    pub verity: &'a [u8],
    /// The UKI.
    pub uki: &'a [u8],
    /// The release's SPDX document (`sbom.spdx.json`).
    pub sbom: &'a [u8],
}

/// A written bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// SHA-256 of the whole file (what a repository index names it by).
    pub sha256: Digest,
    /// Its size.
    pub size: u64,
    /// Its header.
    pub header: Header,
}

/// Writes the bundle of `c`, signed with `key`, to `path` (atomically).
pub fn write(path: &Path, c: &Contents<'_>, key: &SigningKey) -> Result<Written> {
    let mut parts = Vec::new();
    let mut data = Vec::new();
    for (kind, raw) in [
        (PartKind::Root, c.root),
        (PartKind::Verity, c.verity),
        (PartKind::Uki, c.uki),
        (PartKind::Sbom, c.sbom),
    ] {
        let packed = zstd::bulk::compress(raw, ZSTD_LEVEL)
            .with_context(|| format!("cannot compress the bundle's {} part", kind.as_str()))?;
        parts.push(Part {
            kind,
            size: packed.len() as u64,
            sha256: Digest::of(&packed),
            raw_size: raw.len() as u64,
            raw_sha256: Digest::of(raw),
        });
        data.push(packed);
    }
    let header = Header {
        layout: c.layout,
        name: c.name.to_owned(),
        version: c.version.to_owned(),
        root_hash: c.root_hash,
        parts,
    };
    let text = header.to_text();
    let mut file = Vec::with_capacity(data.iter().map(Vec::len).sum::<usize>() + text.len() + 76);
    file.write_all(bundle::MAGIC)?;
    file.write_all(&(text.len() as u32).to_le_bytes())?;
    file.write_all(text.as_bytes())?;
    file.write_all(&key.sign(text.as_bytes()))?;
    for d in &data {
        file.write_all(d)?;
    }
    crate::output::write_atomic(path, &file)?;
    Ok(Written {
        sha256: Digest::of(&file),
        size: file.len() as u64,
        header,
    })
}

/// Reads and checks a bundle file's header against `key` (the whole file is read: it also
/// checks every part's digest). Returns the header and the file's digest.
pub fn verify(path: &Path, key: &crust_format::signature::PublicKey) -> Result<(Header, Digest)> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let prefix: &[u8; 12] = bytes
        .get(..12)
        .and_then(|p| p.try_into().ok())
        .context("the bundle is truncated")?;
    let len = bundle::header_len(prefix).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        as usize;
    let text = bytes.get(12..12 + len).context("the bundle is truncated")?;
    let signature = bytes
        .get(12 + len..12 + len + 64)
        .context("the bundle is truncated")?;
    key.verify(text, signature)
        .map_err(|e| anyhow::anyhow!("{}: header signature: {e}", path.display()))?;
    let header = Header::parse(std::str::from_utf8(text)?)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    if header.file_size(len as u64) != bytes.len() as u64 {
        bail!(
            "{}: the file size does not match its header",
            path.display()
        );
    }
    for part in &header.parts {
        let at = header.part_offset(len as u64, part.kind) as usize;
        if Digest::of(&bytes[at..at + part.size as usize]) != part.sha256 {
            bail!(
                "{}: the {} part does not match its digest",
                path.display(),
                part.kind.as_str()
            );
        }
    }
    Ok((header, Digest::of(&bytes)))
}

/// The bundle at `path` with its header signed by `key` instead (key rotation: an image
/// built with a new key, published with the key the fleet still trusts).
pub fn resign(path: &Path, key: &SigningKey) -> Result<Vec<u8>> {
    let mut bytes =
        std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let prefix: &[u8; 12] = bytes
        .get(..12)
        .and_then(|p| p.try_into().ok())
        .context("the bundle is truncated")?;
    let len = bundle::header_len(prefix).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        as usize;
    let signature = key.sign(&bytes[12..12 + len]);
    bytes[12 + len..12 + len + 64].copy_from_slice(&signature);
    Ok(bytes)
}

/// The SPDX document in the bundle at `path`, decompressed, its stored and decompressed
/// digests checked against the header (the signature is not: that needs the image's key, see
/// [`verify`]).
pub fn read_sbom(path: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let prefix: &[u8; 12] = bytes
        .get(..12)
        .and_then(|p| p.try_into().ok())
        .with_context(|| format!("{} is truncated", path.display()))?;
    let len = bundle::header_len(prefix).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        as usize;
    let text = bytes
        .get(12..12 + len)
        .with_context(|| format!("{} is truncated", path.display()))?;
    let header = Header::parse(std::str::from_utf8(text)?)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let Some(part) = header.part(PartKind::Sbom) else {
        bail!(
            "{} is a format {} bundle, made before bundles carried an SBOM: it has none",
            path.display(),
            header.format()
        );
    };
    let at = header.part_offset(len as u64, PartKind::Sbom) as usize;
    let stored = bytes
        .get(at..at + part.size as usize)
        .with_context(|| format!("{} is truncated", path.display()))?;
    if Digest::of(stored) != part.sha256 {
        bail!(
            "{}: the sbom part does not match its digest",
            path.display()
        );
    }
    let raw = zstd::bulk::decompress(stored, part.raw_size as usize)
        .with_context(|| format!("{}: the sbom part is not zstd", path.display()))?;
    if raw.len() as u64 != part.raw_size || Digest::of(&raw) != part.raw_sha256 {
        bail!(
            "{}: the sbom part decompresses to other bytes than its digest",
            path.display()
        );
    }
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundles_verify_and_tampering_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::development(dir.path()).unwrap();
        let path = dir.path().join("update.bundle");
        let root = vec![1u8; 8192];
        let written = write(
            &path,
            &Contents {
                layout: 1,
                name: "crust",
                version: "0.2.0",
                root_hash: Digest::of(b"r"),
                root: &root,
                verity: &[2u8; 4096],
                uki: b"MZ...",
                sbom: b"{}",
            },
            &key,
        )
        .unwrap();
        let (header, sha) = verify(&path, &key.public_key()).unwrap();
        assert_eq!(header, written.header);
        assert_eq!(sha, written.sha256);
        assert_eq!(
            header.part(PartKind::Root).unwrap().raw_sha256,
            Digest::of(&root)
        );

        // An independent reader: zstd decompresses the root part back to the bytes.
        let bytes = std::fs::read(&path).unwrap();
        let len = header.to_text().len() as u64;
        let at = header.part_offset(len, PartKind::Root) as usize;
        let part = &bytes[at..at + header.parts[0].size as usize];
        std::fs::write(dir.path().join("root.zst"), part).unwrap();
        let out = std::process::Command::new("zstd")
            .args(["-d", "-c"])
            .arg(dir.path().join("root.zst"))
            .output()
            .unwrap();
        assert_eq!(out.stdout, root);
        assert_eq!(read_sbom(&path).unwrap(), b"{}");

        let mut tampered = bytes.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        std::fs::write(&path, &tampered).unwrap();
        assert!(
            verify(&path, &key.public_key())
                .unwrap_err()
                .to_string()
                .contains("sbom part")
        );
        assert!(read_sbom(&path).unwrap_err().to_string().contains("digest"));
        let other = SigningKey::development(&dir.path().join("other")).unwrap();
        std::fs::write(&path, &bytes).unwrap();
        assert!(
            verify(&path, &other.public_key())
                .unwrap_err()
                .to_string()
                .contains("signature")
        );
    }
}
