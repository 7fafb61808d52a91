//! The sealed state: `/var` encrypted with dm-crypt under a key only the owner's boot chain
//! can unseal from the TPM (docs/FORMAT.md §3a, docs/SECURE-BOOT.md).
//!
//! The state partition of an image whose profile asks for encryption starts with a header
//! (two copies, [`crust_format::sealed`]) saying `fresh`. The first boot
//!
//! 1. checks that it can seal safely: a TPM 2.0 with a SHA-256 bank, Secure Boot on (PCR 7
//!    then says whose keys the firmware enforces), and a signed PCR 11 policy in this UKI
//!    that matches PCR 11 now (else the next boot could not unseal);
//! 2. makes a 512-bit volume key from the kernel's generator, waiting until it is seeded —
//!    the one place the boot waits for it, once per disk, as a key must be secret — XORed
//!    with the TPM's generator;
//! 3. seals it ([`crate::tpm::policy::seal`]), unseals it again to prove the next boot can,
//!    encrypts it to the owner's recovery key if the profile names one, and writes the
//!    header (`sealed`);
//! 4. opens dm-crypt (AES-XTS-plain64, 4096-byte sectors) over the rest of the partition,
//!    and the caller makes the file system, after which the header says `ready`.
//!
//! Later boots unseal the key with the UKI's signed policy and open dm-crypt. Either way
//! PCR 11 is then extended with [`crust_format::pcr::STATE_DONE_EVENT`], so nothing that
//! runs later in the boot can unseal the key again.
//!
//! When the key cannot be had (no TPM, another TPM, Secure Boot off, a UKI the key was not
//! sealed to), nothing on the partition is written: the caller follows the image's
//! `without-tpm` policy (refuse, or a tmpfs `/var`). A partition without a header is a plain
//! ext4 from an image without encryption, used as it is.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crust_format::initrd;
use crust_format::pcr::{self, RsaKey};
use crust_format::sealed::{
    self, CIPHER, DATA_OFFSET, Encryption, Header, HeaderState, KEY_BYTES, RecoveryBlob,
    SECTOR_SIZE, SLOT_SIZE, SLOTS, SealedKey, StatePolicy, WithoutTpm,
};
use zeroize::Zeroizing;

use crate::devnode::{self, DevNum, Kind};
use crate::dm::{self, Target};
use crate::error::{Error, Result};
use crate::tpm::policy::{self, SignedPolicy, UnsealError};
use crate::tpm::{Blob, Tpm, measure};

/// The device-mapper name of the open state partition.
pub const DM_NAME: &str = "crust-var";
/// Its device-mapper UUID prefix.
const DM_UUID_PREFIX: &str = "CRUST-CRYPT-";
/// EFI's global variable vendor GUID (`SecureBoot`, `SetupMode`).
const EFI_GLOBAL: &str = "8be4df61-93ca-11d2-aa0d-00e098032b8c";
/// `getrandom(2)` flags: none, so it blocks until the kernel's generator is seeded.
const GRND_BLOCK: nix::libc::c_uint = 0;

/// The image's state policy; an image without the file has no encryption.
pub fn policy() -> StatePolicy {
    let path = Path::new("/").join(sealed::POLICY_PATH);
    match std::fs::read_to_string(&path) {
        Ok(text) => StatePolicy::parse(&text).unwrap_or_else(|e| {
            crate::console::warning(&format!(
                "{}: {e}; treating /var as unencrypted",
                path.display()
            ));
            none()
        }),
        Err(_) => none(),
    }
}

fn none() -> StatePolicy {
    StatePolicy {
        encryption: Encryption::None,
        without_tpm: WithoutTpm::Tmpfs,
        pcr_key: None,
        recovery_key: None,
    }
}

/// What the state partition turned out to hold.
#[derive(Debug)]
pub enum Opened {
    /// No Crust header: a plain ext4, mounted as it is.
    Plain,
    /// The dm-crypt device over the partition's encrypted data.
    Crypt(Box<Crypt>),
}

/// An open dm-crypt state partition.
#[derive(Debug)]
pub struct Crypt {
    /// The device node of the decrypted view (`/dev/dm-N`).
    pub node: PathBuf,
    /// Its size in bytes (the partition less the header area).
    pub size: u64,
    /// The file system must be made first (a first boot, or one cut short before).
    pub format: bool,
    /// What happened, for the state line.
    pub detail: String,
    partition: PathBuf,
    header: Header,
    slot: usize,
}

/// The key could not be had; nothing was written. The caller applies the policy.
#[derive(Debug)]
pub struct KeyUnavailable(pub String);

/// Why the state partition is not open.
#[derive(Debug)]
pub enum OpenError {
    /// Its key could not be had (nothing was written): the image's policy decides.
    NoKey(String),
    /// The partition or device-mapper failed (the caller falls back to a tmpfs).
    Broken(String),
}

impl From<KeyUnavailable> for OpenError {
    fn from(e: KeyUnavailable) -> Self {
        OpenError::NoKey(e.0)
    }
}

/// Opens the state partition at `partition` (device `dev`, `sectors` long).
pub fn open(
    partition: &Path,
    dev: DevNum,
    sectors: u64,
    policy: &StatePolicy,
) -> std::result::Result<Opened, OpenError> {
    let (header, slot) = match read_header(partition) {
        Ok(Some(found)) => found,
        Ok(None) => return Ok(Opened::Plain),
        Err(e) => return Err(OpenError::Broken(e)),
    };
    let mut tpm = match Tpm::open() {
        Ok(Some(tpm)) => tpm,
        Ok(None) => return Err(OpenError::NoKey("this machine has no TPM 2.0".into())),
        Err(e) => return Err(OpenError::NoKey(format!("cannot open the TPM: {e}"))),
    };
    let opened = unlock(&mut tpm, partition, dev, sectors, policy, header, slot);
    // Whatever happened, nothing later in this boot may unseal the key.
    if let Err(e) = measure::extend(&mut tpm, pcr::KERNEL_IMAGE, pcr::STATE_DONE_EVENT) {
        crate::console::warning(&format!("cannot close PCR 11 after /var: {e}"));
    }
    opened.map(|c| Opened::Crypt(Box::new(c)))
}

fn unlock(
    tpm: &mut Tpm,
    partition: &Path,
    dev: DevNum,
    sectors: u64,
    policy: &StatePolicy,
    header: Header,
    slot: usize,
) -> std::result::Result<Crypt, OpenError> {
    let key = policy.pcr_key.as_ref().ok_or_else(|| {
        KeyUnavailable(
            "the state partition is encrypted but this image names no PCR signing key".into(),
        )
    })?;
    let signatures = signatures()?;
    let started = Instant::now();
    let (volume_key, header, slot, detail) = match (&header.state, &header.sealed) {
        (HeaderState::Fresh, _) => {
            let (volume_key, new, detail) = first_boot(tpm, key, &signatures, policy)?;
            let slot = write_header(partition, &new, slot)
                .map_err(|e| OpenError::Broken(format!("cannot write the state header: {e}")))?;
            (volume_key, new, slot, detail)
        }
        (_, Some(sealed)) => {
            let blob = Blob {
                public: sealed.public.clone(),
                private: sealed.private.clone(),
            };
            let volume_key = unseal(tpm, &blob, key, &signatures, sealed)?;
            let detail = format!(
                "key unsealed in {} ms (PCR 7, PCR 11 signed by {})",
                started.elapsed().as_millis(),
                hex::encode(&key.fingerprint()[..6])
            );
            (volume_key, header, slot, detail)
        }
        (_, None) => {
            return Err(OpenError::Broken(
                "the state header holds no sealed key".into(),
            ));
        }
    };
    let opening = Instant::now();
    let data_sectors = sectors.saturating_sub(DATA_OFFSET / 512);
    let node = open_crypt(partition, dev, data_sectors, &volume_key)
        .map_err(|e| OpenError::Broken(format!("cannot open dm-crypt: {e}")))?;
    Ok(Crypt {
        node,
        size: data_sectors * 512,
        format: header.state != HeaderState::Ready,
        detail: format!(
            "{detail}; dm-crypt {CIPHER} opened in {} ms",
            opening.elapsed().as_millis()
        ),
        partition: partition.to_path_buf(),
        header,
        slot,
    })
}

impl Crypt {
    /// Records that the file system is made: the header says `ready` from now on.
    pub fn formatted(&mut self) -> Result<()> {
        let mut next = self.header.clone();
        next.state = HeaderState::Ready;
        self.slot = write_header(&self.partition, &next, self.slot)
            .map_err(|e| Error::new("state", format!("cannot write the state header: {e}")))?;
        self.header = next;
        Ok(())
    }
}

/// The UKI's signed PCR 11 policies, as stage 1 kept them.
fn signatures() -> std::result::Result<Vec<SignedPolicy>, KeyUnavailable> {
    let json = std::fs::read(initrd::RUN_PCR_SIGNATURE).map_err(|e| {
        KeyUnavailable(format!(
            "this UKI carries no signed PCR 11 policy ({}: {e})",
            initrd::RUN_PCR_SIGNATURE
        ))
    })?;
    policy::parse_signatures(&json).map_err(KeyUnavailable)
}

/// A refusal from the TPM, with PCR 7's change named when that is why.
fn unseal(
    tpm: &mut Tpm,
    blob: &Blob,
    key: &RsaKey,
    signatures: &[SignedPolicy],
    sealed: &SealedKey,
) -> std::result::Result<Zeroizing<Vec<u8>>, KeyUnavailable> {
    if sealed.pcr_key != key.fingerprint() {
        return Err(KeyUnavailable(format!(
            "/var's key was sealed to PCR signing key {} but this image's is {}",
            hex::encode(&sealed.pcr_key[..6]),
            hex::encode(&key.fingerprint()[..6])
        )));
    }
    let key_bytes = policy::unseal(tpm, blob, key, signatures).map_err(|e| {
        let mut why = e.to_string();
        if matches!(e, UnsealError::SecureBootChanged(_))
            && let Ok(Some(now)) = tpm.pcr_read(pcr::SECURE_BOOT)
        {
            why.push_str(&format!(
                "; PCR 7 is {} now, {} when sealed",
                hex::encode(&now[..8]),
                hex::encode(&sealed.secure_boot_pcr[..8])
            ));
        }
        KeyUnavailable(why)
    })?;
    if key_bytes.len() != KEY_BYTES {
        return Err(KeyUnavailable(format!(
            "the TPM unsealed {} bytes, not a {KEY_BYTES}-byte key",
            key_bytes.len()
        )));
    }
    Ok(key_bytes)
}

/// Makes, seals and checks the key of a fresh partition; returns it, the new header and a
/// description.
fn first_boot(
    tpm: &mut Tpm,
    key: &RsaKey,
    signatures: &[SignedPolicy],
    policy: &StatePolicy,
) -> std::result::Result<(Zeroizing<Vec<u8>>, Header, String), KeyUnavailable> {
    let unavailable = |why: String| KeyUnavailable(format!("cannot seal a new key: {why}"));
    if !secure_boot_enforced() {
        return Err(unavailable(
            "Secure Boot is off (or the firmware is in setup mode), so PCR 7 would bind the key \
             to a boot chain anyone can run code in"
                .into(),
        ));
    }
    let pcr11 = tpm
        .pcr_read(pcr::KERNEL_IMAGE)
        .map_err(|e| unavailable(e.to_string()))?
        .ok_or_else(|| unavailable("the TPM has no SHA-256 PCR bank".into()))?;
    policy::matching_policy(signatures, key, &pcr11)
        .map_err(|e| unavailable(format!("{e}; the next boot could not unseal it")))?;

    let waited = Instant::now();
    let mut volume_key = Zeroizing::new(vec![0u8; KEY_BYTES]);
    getrandom_blocking(&mut volume_key)
        .map_err(|e| unavailable(format!("no randomness from the kernel: {e}")))?;
    let waited = waited.elapsed();
    let tpm_random = tpm
        .random(KEY_BYTES)
        .map_err(|e| unavailable(format!("no randomness from the TPM: {e}")))?;
    for (k, t) in volume_key.iter_mut().zip(tpm_random.iter()) {
        *k ^= t;
    }

    let sealing = Instant::now();
    let (blob, pcr7) =
        policy::seal(tpm, &volume_key, key).map_err(|e| unavailable(e.to_string()))?;
    let check = policy::unseal(tpm, &blob, key, signatures)
        .map_err(|e| unavailable(format!("the key just sealed does not unseal: {e}")))?;
    if *check != *volume_key {
        return Err(unavailable(
            "the key just sealed unseals to other bytes".into(),
        ));
    }
    let sealed_in = sealing.elapsed();
    let recovery = policy
        .recovery_key
        .map(|owner| encrypt_for_recovery(&owner, &volume_key))
        .transpose()
        .map_err(|e| unavailable(format!("cannot encrypt the recovery copy: {e}")))?;
    let header = Header {
        generation: 1,
        state: HeaderState::Sealed,
        sealed: Some(SealedKey {
            public: blob.public,
            private: blob.private,
            pcr_key: key.fingerprint(),
            secure_boot_pcr: pcr7,
        }),
        recovery,
    };
    let detail = format!(
        "new key (the kernel's generator was ready after {} ms) sealed in {} ms to PCR 7 and \
         PCR 11 signed by {}{}",
        waited.as_millis(),
        sealed_in.as_millis(),
        hex::encode(&key.fingerprint()[..6]),
        match &policy.recovery_key {
            Some(owner) => format!(", recovery copy for key {}", hex::encode(&owner[..6])),
            None => ", NO recovery copy (the profile names no state.recovery-key)".into(),
        }
    );
    Ok((volume_key, header, detail))
}

/// `getrandom(2)` in blocking mode: it returns once the kernel's generator is seeded.
fn getrandom_blocking(buf: &mut [u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: the pointer and length describe `rest`, a live, writable slice; the kernel
        // writes at most that many bytes and returns how many.
        let n = unsafe { nix::libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), GRND_BLOCK) };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        done += n as usize;
    }
    Ok(())
}

/// Whether the firmware enforces Secure Boot: `SecureBoot` is 1 and `SetupMode` is 0.
fn secure_boot_enforced() -> bool {
    let read = |name: &str| {
        std::fs::read(Path::new(crate::efivar::EFIVARS).join(format!("{name}-{EFI_GLOBAL}")))
            .ok()
            .and_then(|b| b.get(4).copied())
    };
    read("SecureBoot") == Some(1) && read("SetupMode") == Some(0)
}

/// The volume key encrypted to the owner's X25519 key: an ephemeral key agreement,
/// HKDF-SHA256 over the shared secret (salt: both public keys), ChaCha20-Poly1305.
pub fn encrypt_for_recovery(
    owner: &[u8; 32],
    volume_key: &[u8],
) -> std::result::Result<RecoveryBlob, String> {
    use ring::{aead, agreement, hkdf, rand};
    let rng = rand::SystemRandom::new();
    let ephemeral = agreement::EphemeralPrivateKey::generate(&agreement::X25519, &rng)
        .map_err(|_| "no ephemeral key".to_string())?;
    let ephemeral_public: [u8; 32] = ephemeral
        .compute_public_key()
        .map_err(|_| "no ephemeral public key".to_string())?
        .as_ref()
        .try_into()
        .map_err(|_| "an X25519 public key is 32 bytes".to_string())?;
    let peer = agreement::UnparsedPublicKey::new(&agreement::X25519, owner);
    let mut salt = ephemeral_public.to_vec();
    salt.extend_from_slice(owner);
    let mut okm = Zeroizing::new([0u8; 32]);
    agreement::agree_ephemeral(ephemeral, &peer, |shared| {
        hkdf::Salt::new(hkdf::HKDF_SHA256, &salt)
            .extract(shared)
            .expand(&[sealed::RECOVERY_CONTEXT], hkdf::HKDF_SHA256)
            .and_then(|prk| prk.fill(&mut okm[..]))
    })
    .map_err(|_| "the owner's recovery key is not a valid X25519 key".to_string())?
    .map_err(|_| "HKDF failed".to_string())?;
    let sealing = aead::LessSafeKey::new(
        aead::UnboundKey::new(&aead::CHACHA20_POLY1305, &okm[..])
            .map_err(|_| "bad AEAD key".to_string())?,
    );
    let mut ciphertext = Vec::with_capacity(volume_key.len() + 16);
    ciphertext.extend_from_slice(volume_key);
    // Each derived key encrypts once (a fresh ephemeral key every time): a zero nonce is
    // safe.
    sealing
        .seal_in_place_append_tag(
            aead::Nonce::assume_unique_for_key([0; 12]),
            aead::Aad::from(sealed::RECOVERY_CONTEXT),
            &mut ciphertext,
        )
        .map_err(|_| "AEAD failed".to_string())?;
    Ok(RecoveryBlob {
        owner: *owner,
        ephemeral: ephemeral_public,
        ciphertext,
    })
}

/// Reads both header slots; `Ok(None)` without a Crust header (a plain ext4 or nothing).
fn read_header(partition: &Path) -> std::result::Result<Option<(Header, usize)>, String> {
    let mut file =
        File::open(partition).map_err(|e| format!("cannot open {}: {e}", partition.display()))?;
    let mut slots = vec![0u8; 2 * SLOT_SIZE];
    file.read_exact(&mut slots)
        .map_err(|e| format!("cannot read {}: {e}", partition.display()))?;
    let (a, b) = slots.split_at(SLOT_SIZE);
    Ok(Header::newest([a, b]))
}

/// Writes `header` into the slot other than `current`, synced; returns that slot. A power
/// cut leaves the old header or the new one.
fn write_header(partition: &Path, header: &Header, current: usize) -> std::io::Result<usize> {
    let mut next = header.clone();
    let slot = 1 - current.min(1);
    next.generation = header.generation.max(1);
    let bytes = next.to_slot().map_err(std::io::Error::other)?;
    let file = OpenOptions::new().write(true).open(partition)?;
    file.write_all_at(&bytes, SLOTS[slot])?;
    file.sync_all()?;
    Ok(slot)
}

/// The dm-crypt table parameters for the data of `device` from [`DATA_OFFSET`] on, with the
/// key in hex (wiped when dropped).
pub fn crypt_params(key: &[u8], device: DevNum) -> Zeroizing<String> {
    let mut hex_key = Zeroizing::new(String::with_capacity(2 * key.len()));
    for b in key {
        hex_key.push_str(&format!("{b:02x}"));
    }
    let mut params = Zeroizing::new(String::with_capacity(256));
    params.push_str(&format!(
        "{CIPHER} {} 0 {device} {} 1 sector_size:{SECTOR_SIZE}",
        hex_key.as_str(),
        DATA_OFFSET / 512
    ));
    params
}

/// Creates the dm-crypt device; returns its node.
fn open_crypt(
    partition: &Path,
    dev: DevNum,
    data_sectors: u64,
    key: &[u8],
) -> std::result::Result<PathBuf, String> {
    if data_sectors == 0 || !data_sectors.is_multiple_of(u64::from(SECTOR_SIZE / 512)) {
        return Err(format!(
            "{} has {data_sectors} data sectors, not a whole number of {SECTOR_SIZE}-byte blocks",
            partition.display()
        ));
    }
    let params = crypt_params(key, dev);
    let target = Target {
        start: 0,
        length: data_sectors,
        kind: "crypt",
        params: &params,
    };
    let uuid = format!("{DM_UUID_PREFIX}{}", dev);
    let created = dm::create_writable_device(DM_NAME, &uuid.replace(':', "-"), &target)
        .map_err(|e| e.to_string())?;
    let node = PathBuf::from(format!("/dev/dm-{}", created.minor));
    devnode::ensure(&node, Kind::Block, created, Duration::from_secs(1))
        .map_err(|e| format!("cannot create {}: {e}", node.display()))?;
    Ok(node)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn the_crypt_table_names_cipher_key_device_and_offset() {
        let key: Vec<u8> = (0..64u8).collect();
        let params = crypt_params(
            &key,
            DevNum {
                major: 254,
                minor: 6,
            },
        );
        assert_eq!(
            params.as_str(),
            format!(
                "aes-xts-plain64 {} 0 254:6 2048 1 sector_size:4096",
                hex::encode(&key)
            )
        );
    }

    #[test]
    fn headers_are_written_to_the_other_slot_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let part = dir.path().join("state");
        let mut f = File::create(&part).unwrap();
        f.write_all(&Header::fresh().to_slot().unwrap()).unwrap();
        f.write_all(&Header::fresh().to_slot().unwrap()).unwrap();
        f.set_len(1 << 20).unwrap();
        let (h, slot) = read_header(&part).unwrap().unwrap();
        assert_eq!((h.state, slot), (HeaderState::Fresh, 0));
        let mut sealed = Header::fresh();
        sealed.generation = 1;
        sealed.state = HeaderState::Sealed;
        sealed.sealed = Some(SealedKey {
            public: vec![1],
            private: vec![2],
            pcr_key: [3; 32],
            secure_boot_pcr: [4; 32],
        });
        assert_eq!(write_header(&part, &sealed, 0).unwrap(), 1);
        let (h, slot) = read_header(&part).unwrap().unwrap();
        assert_eq!((h.state, slot), (HeaderState::Sealed, 1));
        let mut ready = h.clone();
        ready.generation = 2;
        ready.state = HeaderState::Ready;
        assert_eq!(write_header(&part, &ready, slot).unwrap(), 0);
        assert_eq!(read_header(&part).unwrap().unwrap(), (ready, 0));
        // A torn write of the newest slot leaves the one before.
        let f = OpenOptions::new().write(true).open(&part).unwrap();
        f.write_all_at(&[0xff; 100], 0).unwrap();
        assert_eq!(
            read_header(&part).unwrap().unwrap().0.state,
            HeaderState::Sealed
        );
        // A plain ext4 (or anything else) has no header.
        let plain = dir.path().join("plain");
        std::fs::write(&plain, vec![0u8; 3 * SLOT_SIZE]).unwrap();
        assert_eq!(read_header(&plain).unwrap(), None);
    }

    #[test]
    fn the_recovery_copy_opens_with_the_owner_key_only() {
        // The owner's key as `cargo xtask keygen --recovery` makes it; opened by the
        // builder's code, which `cargo xtask recover` runs.
        let dir = tempfile::tempdir().unwrap();
        let keys = crust_builder::sealed::generate_recovery_key(dir.path(), "owner").unwrap();
        let owner = crust_builder::sealed::read_recovery_public(&keys.public).unwrap();
        let volume_key: Vec<u8> = (100..164u8).collect();
        let blob = encrypt_for_recovery(&owner, &volume_key).unwrap();
        assert_eq!(blob.ciphertext.len(), sealed::RECOVERY_CIPHERTEXT);
        let opened = crust_builder::sealed::open_recovery(&blob, &keys.private).unwrap();
        assert_eq!(&opened[..], &volume_key[..]);
        let mut tampered = blob.clone();
        tampered.ciphertext[3] ^= 1;
        assert!(crust_builder::sealed::open_recovery(&tampered, &keys.private).is_err());
        let other = crust_builder::sealed::generate_recovery_key(dir.path(), "other").unwrap();
        assert!(crust_builder::sealed::open_recovery(&blob, &other.private).is_err());
    }
}
