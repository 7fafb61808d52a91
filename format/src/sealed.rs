//! The sealed state partition: `/var` encrypted with dm-crypt under a key only the owner's
//! boot chain can unseal from the TPM, and what the root tells the init about it.
//!
//! Two things live here:
//!
//! - [`StatePolicy`], the file at [`POLICY_PATH`] in the verified root (from the profile's
//!   `[state]` table): whether a new state partition is encrypted, what the host does when
//!   the TPM cannot give the key, the public key whose signatures of PCR 11 policies unseal
//!   it, and the owner's recovery key;
//! - [`Header`], the two copies of the partition's header ([`SLOTS`]), before the encrypted
//!   data at [`DATA_OFFSET`]: the sealed key as the TPM returned it, the PCR 7 value it was
//!   sealed with, and the key encrypted to the owner's recovery key.
//!
//! A header slot is UTF-8 `key=value` lines, the last one `checksum=` with the SHA-256 of
//! every byte before it, then NUL bytes to the end of the slot. A reader takes the valid
//! slot with the highest `generation`; a writer writes the other slot, so a power cut
//! leaves the old header or the new one (`docs/FORMAT.md` §3a).

use std::fmt;

use sha2::{Digest as _, Sha256};

use crate::pcr::RsaKey;

/// Where the policy lives in the root (no leading `/`, as in trees).
pub const POLICY_PATH: &str = "usr/lib/crust/state-policy";
/// Bytes of one header slot.
pub const SLOT_SIZE: usize = 4096;
/// Byte offsets of the two header slots in the state partition.
pub const SLOTS: [u64; 2] = [0, SLOT_SIZE as u64];
/// Where the encrypted data (the ext4 inside dm-crypt) starts in the partition.
pub const DATA_OFFSET: u64 = 1 << 20;
/// The dm-crypt cipher: AES in XTS mode with the 512-byte sector number as IV.
pub const CIPHER: &str = "aes-xts-plain64";
/// Bytes of the volume key: two AES-256 keys, as XTS needs.
pub const KEY_BYTES: usize = 64;
/// dm-crypt's encryption unit, in bytes (the IV still counts 512-byte sectors).
pub const SECTOR_SIZE: u32 = 4096;
/// The header format this crate reads and writes.
pub const FORMAT_VERSION: u32 = 1;
/// What the recovery key derivation and encryption are bound to.
pub const RECOVERY_CONTEXT: &[u8] = b"crust recovery v1";
/// Bytes of the recovery ciphertext: the volume key and a 16-byte Poly1305 tag.
pub const RECOVERY_CIPHERTEXT: usize = KEY_BYTES + 16;

/// Whether a fresh state partition is encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encryption {
    /// dm-crypt, its key sealed to the TPM.
    Tpm,
    /// Plain ext4.
    None,
}

impl Encryption {
    /// The name in profiles and in the policy file.
    pub fn as_str(self) -> &'static str {
        match self {
            Encryption::Tpm => "tpm",
            Encryption::None => "none",
        }
    }
}

/// What a host does when the TPM cannot give the key (no TPM, another TPM, Secure Boot off,
/// a boot chain the key was not sealed to).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WithoutTpm {
    /// Stop the boot with one error line (and reboot, so boot counting can fall back).
    Refuse,
    /// Come up with a tmpfs on `/var`, saying so; the state partition is left untouched.
    Tmpfs,
}

impl WithoutTpm {
    /// The name in profiles and in the policy file.
    pub fn as_str(self) -> &'static str {
        match self {
            WithoutTpm::Refuse => "refuse",
            WithoutTpm::Tmpfs => "tmpfs",
        }
    }
}

/// The state policy of an image ([`POLICY_PATH`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatePolicy {
    /// Whether the builder made the state partition for encryption.
    pub encryption: Encryption,
    /// What to do without the key.
    pub without_tpm: WithoutTpm,
    /// The key whose signed PCR 11 policies unseal the key (with `encryption = tpm`).
    pub pcr_key: Option<RsaKey>,
    /// The owner's X25519 public key the volume key is also encrypted to.
    pub recovery_key: Option<[u8; 32]>,
}

/// A policy or header that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FormatError(pub String);

fn bad(m: impl Into<String>) -> FormatError {
    FormatError(m.into())
}

impl StatePolicy {
    /// The policy's text (what the builder writes).
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "format=1\nencryption={}\nwithout-tpm={}\n",
            self.encryption.as_str(),
            self.without_tpm.as_str()
        );
        if let Some(key) = &self.pcr_key {
            s.push_str(&format!("pcr-key={}\n", hex::encode(key.spki())));
        }
        if let Some(key) = &self.recovery_key {
            s.push_str(&format!("recovery-key={}\n", hex::encode(key)));
        }
        s
    }

    /// Parses the policy; strict, like every file the init trusts.
    pub fn parse(text: &str) -> Result<Self, FormatError> {
        let fields = fields(
            text,
            &[
                "format",
                "encryption",
                "without-tpm",
                "pcr-key",
                "recovery-key",
            ],
        )?;
        if fields.get("format") != Some("1") {
            return Err(bad("state policy: missing or unsupported format"));
        }
        let encryption = match fields.get("encryption") {
            Some("tpm") => Encryption::Tpm,
            Some("none") => Encryption::None,
            other => return Err(bad(format!("state policy: encryption {other:?}"))),
        };
        let without_tpm = match fields.get("without-tpm") {
            Some("refuse") => WithoutTpm::Refuse,
            Some("tmpfs") => WithoutTpm::Tmpfs,
            other => return Err(bad(format!("state policy: without-tpm {other:?}"))),
        };
        let pcr_key = fields
            .get("pcr-key")
            .map(|h| {
                let der = hex::decode(h).map_err(|_| bad("state policy: pcr-key is not hex"))?;
                RsaKey::from_spki(&der).map_err(|e| bad(format!("state policy: {e}")))
            })
            .transpose()?;
        if encryption == Encryption::Tpm && pcr_key.is_none() {
            return Err(bad("state policy: encryption=tpm without a pcr-key"));
        }
        let recovery_key = fields
            .get("recovery-key")
            .map(|h| hex32(h).ok_or_else(|| bad("state policy: recovery-key is not 64 hex digits")))
            .transpose()?;
        Ok(Self {
            encryption,
            without_tpm,
            pcr_key,
            recovery_key,
        })
    }
}

/// Strict `key=value` lines: only `known` keys, each at most once.
struct Fields<'a>(Vec<(&'a str, &'a str)>);

impl<'a> Fields<'a> {
    fn get(&self, key: &str) -> Option<&'a str> {
        self.0.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }
}

fn fields<'a>(text: &'a str, known: &[&str]) -> Result<Fields<'a>, FormatError> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| bad(format!("line {}: expected key=value", n + 1)))?;
        if !known.contains(&key) {
            return Err(bad(format!("line {}: unknown key {key:?}", n + 1)));
        }
        if out.iter().any(|(k, _)| *k == key) {
            return Err(bad(format!("line {}: {key} given twice", n + 1)));
        }
        out.push((key, value));
    }
    Ok(Fields(out))
}

fn hex32(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

/// Where a state partition is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderState {
    /// As the builder made it: no key yet. The first boot makes one, seals it and formats.
    Fresh,
    /// The key is sealed but the file system not yet made (a first boot cut short): the
    /// next boot formats, as there is nothing to keep yet.
    Sealed,
    /// The key is sealed and the file system made: a boot unseals and mounts.
    Ready,
}

impl HeaderState {
    fn as_str(self) -> &'static str {
        match self {
            HeaderState::Fresh => "fresh",
            HeaderState::Sealed => "sealed",
            HeaderState::Ready => "ready",
        }
    }
}

impl fmt::Display for HeaderState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The key as the TPM sealed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedKey {
    /// The sealed object's `TPM2B_PUBLIC`, as `TPM2_Create` returned it.
    pub public: Vec<u8>,
    /// Its `TPM2B_PRIVATE`, encrypted by the TPM under its storage root key.
    pub private: Vec<u8>,
    /// The PCR signing key's fingerprint (systemd's `pkfp`, [`crate::pcr::RsaKey::fingerprint`]).
    pub pcr_key: [u8; 32],
    /// PCR 7 (SHA-256) when the key was sealed, for the diagnosis of a refusal.
    pub secure_boot_pcr: [u8; 32],
}

/// The volume key encrypted to the owner's recovery key (X25519, HKDF-SHA256,
/// ChaCha20-Poly1305; `docs/FORMAT.md` §3a).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryBlob {
    /// The owner's X25519 public key it is encrypted to.
    pub owner: [u8; 32],
    /// The ephemeral X25519 public key of the first boot.
    pub ephemeral: [u8; 32],
    /// The encrypted volume key and its tag.
    pub ciphertext: Vec<u8>,
}

/// One header slot's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Higher is newer.
    pub generation: u64,
    /// Where the partition is in its life.
    pub state: HeaderState,
    /// The sealed key (absent while fresh).
    pub sealed: Option<SealedKey>,
    /// The recovery copy of the key (absent without a recovery key).
    pub recovery: Option<RecoveryBlob>,
}

impl Header {
    /// The header the builder writes into both slots.
    pub fn fresh() -> Self {
        Self {
            generation: 0,
            state: HeaderState::Fresh,
            sealed: None,
            recovery: None,
        }
    }

    /// The slot's bytes: the lines, the checksum line, NUL padding to [`SLOT_SIZE`].
    pub fn to_slot(&self) -> Result<Vec<u8>, FormatError> {
        let mut s = format!(
            "format={FORMAT_VERSION}\ngeneration={}\nstate={}\ncipher={CIPHER}\nkey-bytes={KEY_BYTES}\n\
             sector-size={SECTOR_SIZE}\ndata-offset={DATA_OFFSET}\n",
            self.generation, self.state
        );
        if let Some(k) = &self.sealed {
            s.push_str(&format!(
                "tpm-public={}\ntpm-private={}\npcr-key={}\npcr7={}\n",
                hex::encode(&k.public),
                hex::encode(&k.private),
                hex::encode(k.pcr_key),
                hex::encode(k.secure_boot_pcr)
            ));
        }
        if let Some(r) = &self.recovery {
            s.push_str(&format!(
                "recovery-owner={}\nrecovery-ephemeral={}\nrecovery-ciphertext={}\n",
                hex::encode(r.owner),
                hex::encode(r.ephemeral),
                hex::encode(&r.ciphertext)
            ));
        }
        let sum = Sha256::digest(s.as_bytes());
        s.push_str(&format!("checksum={}\n", hex::encode(sum)));
        if s.len() > SLOT_SIZE {
            return Err(bad(format!(
                "a {}-byte header does not fit its slot",
                s.len()
            )));
        }
        let mut out = s.into_bytes();
        out.resize(SLOT_SIZE, 0);
        Ok(out)
    }

    /// Parses one slot; `Err` for anything but a whole, valid header.
    pub fn parse_slot(slot: &[u8]) -> Result<Self, FormatError> {
        let end = slot.iter().position(|&b| b == 0).unwrap_or(slot.len());
        let text = std::str::from_utf8(&slot[..end]).map_err(|_| bad("not UTF-8"))?;
        let body_end = text
            .trim_end_matches('\n')
            .rfind('\n')
            .map(|i| i + 1)
            .ok_or_else(|| bad("no checksum line"))?;
        let (body, last) = text.split_at(body_end);
        let sum = last
            .strip_prefix("checksum=")
            .and_then(|h| hex32(h.trim_end_matches('\n')))
            .ok_or_else(|| bad("no checksum line"))?;
        if <[u8; 32]>::from(Sha256::digest(body.as_bytes())) != sum {
            return Err(bad("checksum mismatch"));
        }
        let f = fields(
            body,
            &[
                "format",
                "generation",
                "state",
                "cipher",
                "key-bytes",
                "sector-size",
                "data-offset",
                "tpm-public",
                "tpm-private",
                "pcr-key",
                "pcr7",
                "recovery-owner",
                "recovery-ephemeral",
                "recovery-ciphertext",
            ],
        )?;
        let expect = |key: &str, value: String| -> Result<(), FormatError> {
            match f.get(key) {
                Some(v) if v == value => Ok(()),
                other => Err(bad(format!("{key} {other:?}, this init knows {value}"))),
            }
        };
        expect("format", FORMAT_VERSION.to_string())?;
        expect("cipher", CIPHER.into())?;
        expect("key-bytes", KEY_BYTES.to_string())?;
        expect("sector-size", SECTOR_SIZE.to_string())?;
        expect("data-offset", DATA_OFFSET.to_string())?;
        let generation = f
            .get("generation")
            .and_then(|g| g.parse().ok())
            .ok_or_else(|| bad("no generation"))?;
        let state = match f.get("state") {
            Some("fresh") => HeaderState::Fresh,
            Some("sealed") => HeaderState::Sealed,
            Some("ready") => HeaderState::Ready,
            other => return Err(bad(format!("state {other:?}"))),
        };
        let bytes = |key: &str| -> Result<Option<Vec<u8>>, FormatError> {
            f.get(key)
                .map(|h| hex::decode(h).map_err(|_| bad(format!("{key} is not hex"))))
                .transpose()
        };
        let digest = |key: &str| -> Result<Option<[u8; 32]>, FormatError> {
            f.get(key)
                .map(|h| hex32(h).ok_or_else(|| bad(format!("{key} is not 64 hex digits"))))
                .transpose()
        };
        let sealed = match (
            bytes("tpm-public")?,
            bytes("tpm-private")?,
            digest("pcr-key")?,
            digest("pcr7")?,
        ) {
            (Some(public), Some(private), Some(pcr_key), Some(secure_boot_pcr)) => {
                Some(SealedKey {
                    public,
                    private,
                    pcr_key,
                    secure_boot_pcr,
                })
            }
            (None, None, None, None) => None,
            _ => return Err(bad("an incomplete sealed key")),
        };
        if (state == HeaderState::Fresh) != sealed.is_none() {
            return Err(bad(format!(
                "state {state} does not fit the sealed key's presence"
            )));
        }
        let recovery = match (
            digest("recovery-owner")?,
            digest("recovery-ephemeral")?,
            bytes("recovery-ciphertext")?,
        ) {
            (Some(owner), Some(ephemeral), Some(ciphertext))
                if ciphertext.len() == RECOVERY_CIPHERTEXT =>
            {
                Some(RecoveryBlob {
                    owner,
                    ephemeral,
                    ciphertext,
                })
            }
            (None, None, None) => None,
            _ => return Err(bad("an incomplete recovery blob")),
        };
        Ok(Self {
            generation,
            state,
            sealed,
            recovery,
        })
    }

    /// The newest valid header of the two slots, and the index of its slot; `None` when
    /// neither slot holds one.
    pub fn newest(slots: [&[u8]; 2]) -> Option<(Self, usize)> {
        let parsed = slots.map(|s| Self::parse_slot(s).ok());
        match parsed {
            [Some(a), Some(b)] if b.generation > a.generation => Some((b, 1)),
            [Some(a), _] => Some((a, 0)),
            [None, Some(b)] => Some((b, 1)),
            [None, None] => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed() -> Header {
        Header {
            generation: 3,
            state: HeaderState::Ready,
            sealed: Some(SealedKey {
                public: vec![1, 2, 3],
                private: vec![4; 150],
                pcr_key: [7; 32],
                secure_boot_pcr: [9; 32],
            }),
            recovery: Some(RecoveryBlob {
                owner: [1; 32],
                ephemeral: [2; 32],
                ciphertext: vec![3; RECOVERY_CIPHERTEXT],
            }),
        }
    }

    #[test]
    fn headers_round_trip_through_a_slot() {
        for h in [Header::fresh(), sealed()] {
            let slot = h.to_slot().unwrap();
            assert_eq!(slot.len(), SLOT_SIZE);
            assert_eq!(Header::parse_slot(&slot).unwrap(), h);
        }
        let fresh = Header::fresh().to_slot().unwrap();
        assert!(fresh.starts_with(b"format=1\ngeneration=0\nstate=fresh\n"));
    }

    #[test]
    fn damaged_slots_are_refused_and_the_newest_valid_one_wins() {
        let mut slot = sealed().to_slot().unwrap();
        slot[30] ^= 1;
        assert!(Header::parse_slot(&slot).is_err());
        assert!(Header::parse_slot(&[0u8; SLOT_SIZE]).is_err());
        assert!(Header::parse_slot(&[0x5a; SLOT_SIZE]).is_err());
        let old = Header::fresh().to_slot().unwrap();
        let new = sealed().to_slot().unwrap();
        assert_eq!(Header::newest([&old, &new]).unwrap().1, 1);
        assert_eq!(Header::newest([&new, &old]).unwrap().1, 0);
        assert_eq!(Header::newest([&slot, &old]).unwrap().1, 1);
        assert!(Header::newest([&slot, &[0u8; SLOT_SIZE]]).is_none());
    }

    #[test]
    fn a_fresh_header_with_a_key_or_a_ready_one_without_is_refused() {
        let mut h = sealed();
        h.state = HeaderState::Fresh;
        assert!(Header::parse_slot(&h.to_slot().unwrap()).is_err());
        let mut h = Header::fresh();
        h.state = HeaderState::Ready;
        assert!(Header::parse_slot(&h.to_slot().unwrap()).is_err());
    }

    #[test]
    fn policies_round_trip_and_are_strict() {
        let mut modulus = [0x33u8; 256];
        modulus[0] = 0xd0;
        let der = [
            &[
                0x30, 0x82, 0x01, 0x22, 0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d,
                0x01, 0x01, 0x01, 0x05, 0x00, 0x03, 0x82, 0x01, 0x0f, 0x00, 0x30, 0x82, 0x01, 0x0a,
                0x02, 0x82, 0x01, 0x01, 0x00,
            ][..],
            &modulus,
            &[0x02, 0x03, 0x01, 0x00, 0x01],
        ]
        .concat();
        let policy = StatePolicy {
            encryption: Encryption::Tpm,
            without_tpm: WithoutTpm::Refuse,
            pcr_key: Some(RsaKey::from_spki(&der).unwrap()),
            recovery_key: Some([4; 32]),
        };
        assert_eq!(StatePolicy::parse(&policy.to_text()).unwrap(), policy);
        let none = StatePolicy {
            encryption: Encryption::None,
            without_tpm: WithoutTpm::Tmpfs,
            pcr_key: None,
            recovery_key: None,
        };
        assert_eq!(
            none.to_text(),
            "format=1\nencryption=none\nwithout-tpm=tmpfs\n"
        );
        assert_eq!(StatePolicy::parse(&none.to_text()).unwrap(), none);
        for bad in [
            "format=1\nencryption=tpm\nwithout-tpm=refuse\n",
            "format=1\nencryption=none\nwithout-tpm=maybe\n",
            "format=2\nencryption=none\nwithout-tpm=tmpfs\n",
            "format=1\nencryption=none\nwithout-tpm=tmpfs\nextra=1\n",
            "format=1\nencryption=none\nencryption=none\nwithout-tpm=tmpfs\n",
        ] {
            assert!(StatePolicy::parse(bad).is_err(), "{bad}");
        }
    }
}
