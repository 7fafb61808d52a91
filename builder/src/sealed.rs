//! The sealed state partition from the build's side (docs/FORMAT.md §3a): the header a
//! fresh image carries, the owner's recovery key, and opening the recovery copy of a
//! host's volume key with it (`cargo xtask recover`).
//!
//! The host makes its key on its first boot and encrypts a copy to the owner's X25519 key
//! (`[state] recovery-key`): an ephemeral key agreement, HKDF-SHA256 (salt: the ephemeral
//! then the owner's public key, info `crust recovery v1`) and ChaCha20-Poly1305 (zero nonce,
//! the same info as associated data). The owner opens it with the private key, which never
//! leaves their machine: X25519 by curve25519-dalek, HKDF and the AEAD by ring (the init
//! encrypts with ring; the tests check one against the other and X25519 against openssl).
//! The volume key then opens the partition's data with any dm-crypt tool:
//! `cryptsetup open --type plain --cipher aes-xts-plain64 --key-size 512 --sector-size
//! 4096 --offset 2048 --key-file KEY DEVICE NAME`.

use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use crust_format::sealed::{self, Header, KEY_BYTES, RecoveryBlob, SLOTS};
use curve25519_dalek::montgomery::MontgomeryPoint;
use zeroize::Zeroizing;

/// DER of an X25519 `SubjectPublicKeyInfo` before the key (RFC 8410).
const X25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x03, 0x21, 0x00,
];
/// DER of an X25519 PKCS#8 private key before the key (RFC 8410).
const X25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x04, 0x22, 0x04, 0x20,
];

/// Writes the header of a fresh encrypted state partition into both slots at `offset` of
/// the image file: the first boot makes the key. Both slots are written (as data, not
/// holes), so a disk flashed over an older Crust disk keeps no old header.
pub fn write_fresh(image: &Path, offset: u64) -> Result<()> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(image)
        .with_context(|| format!("cannot open {}", image.display()))?;
    let slot = Header::fresh()
        .to_slot()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    for at in SLOTS {
        file.write_all_at(&slot, offset + at)
            .with_context(|| format!("cannot write the state header into {}", image.display()))?;
    }
    Ok(())
}

/// Reads the newest valid header of a state partition that starts at `offset` of `file` (a
/// disk image, or the partition itself with offset 0).
pub fn read_header(file: &Path, offset: u64) -> Result<Header> {
    let f = std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    let mut slots = vec![0u8; 2 * sealed::SLOT_SIZE];
    f.read_exact_at(&mut slots, offset)
        .with_context(|| format!("cannot read {}", file.display()))?;
    let (a, b) = slots.split_at(sealed::SLOT_SIZE);
    Header::newest([a, b])
        .map(|(h, _)| h)
        .with_context(|| format!("{} holds no Crust state header at {offset}", file.display()))
}

/// Where the state partition starts in `disk`: the partition named `state` of a GPT disk
/// (an image file or a block device), or 0 for something without a GPT (the partition
/// itself).
pub fn state_offset(disk: &Path) -> Result<u64> {
    let config = gpt::GptConfig::new()
        .writable(false)
        .logical_block_size(gpt::disk::LogicalBlockSize::Lb512);
    let Ok(table) = config.open(disk) else {
        return Ok(0);
    };
    table
        .partitions()
        .values()
        .find(|p| p.name == crust_format::layout::Role::State.label())
        .map(|p| p.first_lba * 512)
        .with_context(|| format!("{} has a GPT but no state partition", disk.display()))
}

/// The volume key of the state partition on `disk` (an image, a disk or the partition),
/// from its recovery copy and the owner's private key file.
pub fn recover(disk: &Path, private_key: &Path) -> Result<Zeroizing<Vec<u8>>> {
    let offset = state_offset(disk)?;
    let header = read_header(disk, offset)?;
    let blob = header.recovery.as_ref().with_context(|| {
        format!(
            "the state partition of {} has no recovery copy (its image named no \
             state.recovery-key)",
            disk.display()
        )
    })?;
    open_recovery(blob, private_key)
}

/// An owner's recovery key pair on disk.
#[derive(Debug, Clone)]
pub struct RecoveryKeyFiles {
    /// The private key (PKCS#8 PEM, mode 0600): keep it offline.
    pub private: PathBuf,
    /// The public key (SPKI PEM): name it in profiles (`[state] recovery-key`).
    pub public: PathBuf,
}

/// Makes an X25519 key pair `NAME.key` and `NAME.pub` in `dir` with openssl; refuses to
/// overwrite either.
pub fn generate_recovery_key(dir: &Path, name: &str) -> Result<RecoveryKeyFiles> {
    let files = RecoveryKeyFiles {
        private: dir.join(format!("{name}.key")),
        public: dir.join(format!("{name}.pub")),
    };
    for f in [&files.private, &files.public] {
        if f.exists() {
            bail!(
                "{} exists already (keys are never overwritten)",
                f.display()
            );
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let pem = run_openssl(&["genpkey", "-algorithm", "X25519"], None)?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&files.private)
        .with_context(|| format!("cannot create {}", files.private.display()))?;
    file.write_all(&pem)?;
    file.sync_all()?;
    let public = run_openssl(&["pkey", "-pubout", "-in"], Some(&files.private))?;
    std::fs::write(&files.public, public)
        .with_context(|| format!("cannot write {}", files.public.display()))?;
    Ok(files)
}

fn run_openssl(args: &[&str], file: Option<&Path>) -> Result<Vec<u8>> {
    let mut cmd = Command::new("openssl");
    cmd.args(args);
    if let Some(f) = file {
        cmd.arg(f);
    }
    let out = cmd
        .output()
        .context("cannot run openssl: install Debian's openssl package")?;
    if !out.status.success() {
        bail!(
            "openssl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

/// The DER inside a PEM file's `label` block.
fn pem_der(text: &str, label: &str) -> Option<Vec<u8>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let body = text.split(&begin).nth(1)?.split(&end).next()?;
    let b64: String = body.chars().filter(|c| !c.is_whitespace()).collect();
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

/// The 32-byte X25519 public key of a PEM `PUBLIC KEY` file.
pub fn read_recovery_public(path: &Path) -> Result<[u8; 32]> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    pem_der(&text, "PUBLIC KEY")
        .and_then(|der| {
            der.strip_prefix(&X25519_SPKI_PREFIX[..])
                .map(<[u8]>::to_vec)
        })
        .and_then(|key| <[u8; 32]>::try_from(key).ok())
        .with_context(|| {
            format!(
                "{} is not an X25519 public key in PEM (make one with `cargo xtask keygen \
                 --recovery`)",
                path.display()
            )
        })
}

fn read_recovery_private(path: &Path) -> Result<Zeroizing<[u8; 32]>> {
    let text = Zeroizing::new(
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?,
    );
    let der = Zeroizing::new(
        pem_der(&text, "PRIVATE KEY")
            .with_context(|| format!("{} is not a PEM private key", path.display()))?,
    );
    let key = der
        .strip_prefix(&X25519_PKCS8_PREFIX[..])
        .filter(|k| k.len() == 32)
        .with_context(|| format!("{} is not an X25519 private key", path.display()))?;
    let mut out = Zeroizing::new([0u8; 32]);
    out.copy_from_slice(key);
    Ok(out)
}

/// The volume key from a recovery blob, with the owner's private key file.
pub fn open_recovery(blob: &RecoveryBlob, private_key: &Path) -> Result<Zeroizing<Vec<u8>>> {
    use ring::{aead, hkdf};
    let secret = read_recovery_private(private_key)?;
    let public = MontgomeryPoint::mul_base_clamped(*secret).to_bytes();
    if public != blob.owner {
        bail!(
            "{} is not the key this disk's recovery copy is for (it is for public key {})",
            private_key.display(),
            hex::encode(blob.owner)
        );
    }
    let shared = Zeroizing::new(
        MontgomeryPoint(blob.ephemeral)
            .mul_clamped(*secret)
            .to_bytes(),
    );
    let mut salt = blob.ephemeral.to_vec();
    salt.extend_from_slice(&blob.owner);
    let mut okm = Zeroizing::new([0u8; 32]);
    hkdf::Salt::new(hkdf::HKDF_SHA256, &salt)
        .extract(&shared[..])
        .expand(&[sealed::RECOVERY_CONTEXT], hkdf::HKDF_SHA256)
        .and_then(|prk| prk.fill(&mut okm[..]))
        .map_err(|_| anyhow::anyhow!("HKDF failed"))?;
    let key = aead::LessSafeKey::new(
        aead::UnboundKey::new(&aead::CHACHA20_POLY1305, &okm[..])
            .map_err(|_| anyhow::anyhow!("bad AEAD key"))?,
    );
    let mut data = Zeroizing::new(blob.ciphertext.clone());
    let plain = key
        .open_in_place(
            aead::Nonce::assume_unique_for_key([0; 12]),
            aead::Aad::from(sealed::RECOVERY_CONTEXT),
            &mut data,
        )
        .map_err(|_| {
            anyhow::anyhow!("the recovery copy does not decrypt (damaged or for another key)")
        })?;
    if plain.len() != KEY_BYTES {
        bail!(
            "the recovery copy holds {} bytes, not a volume key",
            plain.len()
        );
    }
    Ok(Zeroizing::new(plain.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_made_once_and_x25519_agrees_with_openssl() {
        let dir = tempfile::tempdir().unwrap();
        let owner = generate_recovery_key(dir.path(), "owner").unwrap();
        assert!(generate_recovery_key(dir.path(), "owner").is_err());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&owner.private)
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        let public = read_recovery_public(&owner.public).unwrap();
        let secret = read_recovery_private(&owner.private).unwrap();
        assert_eq!(
            MontgomeryPoint::mul_base_clamped(*secret).to_bytes(),
            public
        );
        // A shared secret with another key pair, computed by openssl and by us.
        let peer = generate_recovery_key(dir.path(), "peer").unwrap();
        let ours = MontgomeryPoint(read_recovery_public(&peer.public).unwrap())
            .mul_clamped(*secret)
            .to_bytes();
        let theirs = run_openssl(
            &[
                "pkeyutl",
                "-derive",
                "-inkey",
                &owner.private.display().to_string(),
                "-peerkey",
            ],
            Some(&peer.public),
        )
        .unwrap();
        assert_eq!(theirs, ours);
        assert!(read_recovery_public(&owner.private).is_err());
    }

    #[test]
    fn the_fresh_header_goes_into_both_slots() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("image");
        std::fs::File::create(&image)
            .unwrap()
            .set_len(3 << 20)
            .unwrap();
        write_fresh(&image, 1 << 20).unwrap();
        let header = read_header(&image, 1 << 20).unwrap();
        assert_eq!(header, Header::fresh());
        let bytes = std::fs::read(&image).unwrap();
        let at = |o: usize| &bytes[(1 << 20) + o..(1 << 20) + o + 16];
        assert_eq!(at(0), at(sealed::SLOT_SIZE));
        assert!(bytes[..1 << 20].iter().all(|&b| b == 0));
        assert!(read_header(&image, 0).is_err());
    }
}
