//! Authenticode signatures on PE images (systemd-boot, the UKIs) with the db key.
//!
//! The signature is made by `osslsigncode` (Debian's package): a PKCS#7 SignedData over the
//! image's Authenticode SHA-256 digest, in a certificate table appended to the image, the PE
//! checksum recomputed. Signing must not make builds depend on the clock. A PKCS#7 signer
//! adds the signing time as a signed attribute, and RSA PKCS#1 v1.5 signatures are otherwise
//! deterministic, so the only varying input is that time: `osslsigncode -time` sets it, and
//! a build passes its `SOURCE_DATE_EPOCH`. (`sbsign` 0.9.4, the other Debian signer, always
//! writes the wall clock there: two runs on the same input give different bytes.) The
//! firmware ignores the signing time; it checks the digest and the chain to `db`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use object::pe::{IMAGE_DIRECTORY_ENTRY_SECURITY, ImageDosHeader, ImageNtHeaders64};
use object::read::pe::ImageNtHeaders;

/// Signs PE images with a db key and certificate, at a fixed signing time.
#[derive(Debug, Clone)]
pub struct Signer {
    key: PathBuf,
    certificate: PathBuf,
    signing_time: u64,
}

impl Signer {
    /// A signer with the private key and certificate files; `signing_time` (seconds since
    /// 1970) goes into every signature. [`super::KeySet::signer`] checks the key's mode.
    pub fn new(key: &Path, certificate: &Path, signing_time: u64) -> Self {
        Self {
            key: key.to_path_buf(),
            certificate: certificate.to_path_buf(),
            signing_time,
        }
    }

    /// The certificate whose key signs (what `sbverify --cert` checks against).
    pub fn certificate(&self) -> &Path {
        &self.certificate
    }

    /// `pe` signed: an existing signature is replaced. The same image, key and time give
    /// the same bytes.
    pub fn sign_pe(&self, pe: &[u8]) -> Result<Vec<u8>> {
        let unsigned = without_signature(pe)?;
        let dir = tempfile::tempdir().context("cannot make a temporary folder")?;
        let (input, output) = (dir.path().join("in.efi"), dir.path().join("out.efi"));
        std::fs::write(&input, &unsigned)
            .with_context(|| format!("cannot write {}", input.display()))?;
        let out = Command::new("osslsigncode")
            .args(["sign", "-h", "sha256", "-certs"])
            .arg(&self.certificate)
            .arg("-key")
            .arg(&self.key)
            .args(["-time", &self.signing_time.to_string(), "-in"])
            .arg(&input)
            .arg("-out")
            .arg(&output)
            .output()
            .context("cannot run osslsigncode: install Debian's osslsigncode package")?;
        if !out.status.success() {
            bail!(
                "osslsigncode could not sign with {}: {}{}",
                self.key.display(),
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        std::fs::read(&output).with_context(|| format!("cannot read {}", output.display()))
    }
}

/// `pe` signed by `signer`: [`Signer::sign_pe`], for callers holding a signer (update
/// bundles sign their UKI this way).
pub fn sign_pe(pe: &[u8], signer: &Signer) -> Result<Vec<u8>> {
    signer.sign_pe(pe)
}

/// Offset of the security directory entry in a PE32+ image.
fn security_entry(pe: &[u8]) -> Result<usize> {
    let dos = ImageDosHeader::parse(pe).context("not a PE image (no DOS header)")?;
    let nt_offset = u64::from(dos.nt_headers_offset());
    let mut offset = nt_offset;
    ImageNtHeaders64::parse(pe, &mut offset).context("not a PE32+ image")?;
    // Signature (4), file header (20), then the optional header's data directories at 112.
    Ok(nt_offset as usize + 4 + 20 + 112 + 8 * IMAGE_DIRECTORY_ENTRY_SECURITY)
}

/// `pe` without its certificate table (which, by the PE specification, ends the file).
fn without_signature(pe: &[u8]) -> Result<Vec<u8>> {
    let entry = security_entry(pe)?;
    let field = |at: usize| -> Result<usize> {
        let bytes = pe.get(at..at + 4).context("PE headers are truncated")?;
        Ok(u32::from_le_bytes(bytes.try_into()?) as usize)
    };
    let (offset, size) = (field(entry)?, field(entry + 4)?);
    let mut out = pe.to_vec();
    if offset == 0 && size == 0 {
        return Ok(out);
    }
    if offset.checked_add(size) != Some(pe.len()) {
        bail!(
            "the image's certificate table ({size} bytes at {offset}) does not end the file; \
             refusing to guess what to strip"
        );
    }
    out.truncate(offset);
    out[entry..entry + 8].fill(0);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secureboot::keys::{Role, generate};
    use crate::uki;
    use object::LittleEndian as LE;

    const STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";
    const BOOT: &str = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi";

    fn read(path: &str) -> Vec<u8> {
        std::fs::read(path).unwrap_or_else(|_| {
            panic!("{path} is missing: install systemd-boot-efi (cargo xtask test does)")
        })
    }

    fn sbverify(cert: &Path, image: &[u8], dir: &Path) -> std::process::Output {
        let file = dir.join("check.efi");
        std::fs::write(&file, image).unwrap();
        Command::new("sbverify")
            .arg("--cert")
            .arg(cert)
            .arg(&file)
            .output()
            .expect("sbverify (sbsigntool) is missing: cargo xtask test installs it")
    }

    /// The PE checksum stored in a PE32+ image's optional header, as `object` reads it.
    fn stored_checksum(pe: &[u8]) -> u32 {
        let dos = ImageDosHeader::parse(pe).unwrap();
        let mut offset = u64::from(dos.nt_headers_offset());
        let (nt, _) = ImageNtHeaders64::parse(pe, &mut offset).unwrap();
        nt.optional_header.check_sum.get(LE)
    }

    /// The PE checksum as the Microsoft PE specification defines it: 16-bit one's
    /// complement sum of the file with the checksum field taken as zero, plus its length.
    fn pe_checksum(pe: &[u8], field: usize) -> u32 {
        let mut sum: u64 = 0;
        for (i, pair) in pe.chunks(2).enumerate() {
            if i * 2 == field || i * 2 == field + 2 {
                continue;
            }
            let word = u64::from(pair[0]) | u64::from(*pair.get(1).unwrap_or(&0)) << 8;
            sum += word;
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum = (sum & 0xffff) + (sum >> 16);
        (sum as u32).wrapping_add(pe.len() as u32)
    }

    #[test]
    fn signed_images_verify_with_sbverify_and_signing_is_deterministic() {
        let dir = tempfile::tempdir().unwrap();
        let keys = generate(&dir.path().join("sb"), "Test").unwrap();
        let other = generate(&dir.path().join("other"), "Other").unwrap();
        let signer = keys.signer(1_700_000_000).unwrap();
        let uki = uki::assemble(
            &read(STUB),
            &uki::Parts {
                os_release: "ID=crust\n",
                cmdline: "console=ttyS0",
                uname: "6.1.0-test",
                initrd: &[7; 10_000],
                linux: &[9; 70_001],
                pcrpkey: None,
                pcrsig: None,
            },
        )
        .unwrap();
        for (what, image) in [("systemd-boot", read(BOOT)), ("a UKI", uki)] {
            let signed = signer.sign_pe(&image).unwrap();
            assert_eq!(
                signed,
                signer.sign_pe(&image).unwrap(),
                "{what}: deterministic"
            );
            // Signing again replaces the signature rather than nesting another.
            assert_eq!(
                signer.sign_pe(&signed).unwrap(),
                signed,
                "{what}: re-signed"
            );
            let ok = sbverify(&keys.certificate(Role::Db), &signed, dir.path());
            assert!(
                ok.status.success(),
                "{what}: sbverify: {}",
                String::from_utf8_lossy(&ok.stderr)
            );
            let foreign = sbverify(&other.certificate(Role::Db), &signed, dir.path());
            assert!(
                !foreign.status.success(),
                "{what}: verified with another db"
            );
            assert!(
                !sbverify(&keys.certificate(Role::Db), &image, dir.path())
                    .status
                    .success(),
                "{what}: the unsigned image verified"
            );
            // The checksum field: after the PE signature (4), the file header (20) and
            // 64 bytes of the optional header.
            let field = u32::from_le_bytes(signed[0x3c..0x40].try_into().unwrap()) as usize + 88;
            assert_eq!(
                stored_checksum(&signed),
                pe_checksum(&signed, field),
                "{what}: PE checksum"
            );
            // The signing time is the only varying input: another time, other bytes.
            let later = keys.signer(1_700_000_001).unwrap().sign_pe(&image).unwrap();
            assert_ne!(
                later, signed,
                "{what}: the signing time is not in the signature"
            );
        }
    }

    #[test]
    fn a_signature_that_does_not_end_the_file_is_refused() {
        let mut signed = read(BOOT);
        let entry = security_entry(&signed).unwrap();
        signed[entry..entry + 4].copy_from_slice(&16u32.to_le_bytes());
        signed[entry + 4..entry + 8].copy_from_slice(&16u32.to_le_bytes());
        let err = without_signature(&signed).unwrap_err().to_string();
        assert!(err.contains("does not end the file"), "{err}");
        assert!(without_signature(b"MZ").is_err());
    }
}
