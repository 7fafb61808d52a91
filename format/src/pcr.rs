//! TPM 2.0 PCRs and policies as Crust uses them: which PCR holds what, the value PCR 11 has
//! after systemd's stub measured a UKI, and the policy digests a sealed `/var` key is bound
//! to. Pure arithmetic (SHA-256 over the TPM's marshalled structures), shared by the builder,
//! which predicts PCR 11 and signs its policy, and the init, which seals and unseals.
//!
//! The formulas are the TPM 2.0 specification's (part 3, `TPM2_PolicyPCR` and
//! `TPM2_PolicyAuthorize`, "PolicyUpdate"); the tests check them against tpm2-tools' trial
//! sessions on swtpm (`init/src/tpm`), and the PCR 11 prediction against
//! `systemd-measure calculate` (`builder/src/measure.rs`).

use sha2::{Digest as _, Sha256};

/// PCR 7: the firmware's Secure Boot state and keys (`SecureBoot`, `PK`, `KEK`, `db`, `dbx`)
/// and the `db` entry that verified each boot binary.
pub const SECURE_BOOT: u32 = 7;
/// PCR 11: what systemd's stub measured of the UKI it runs (its sections).
pub const KERNEL_IMAGE: u32 = 11;
/// PCR 12: what the init extends before acting on it: the manifest's root hash, the
/// user-data it accepted and where that came from (systemd's "kernel-config" PCR, where its
/// stub also measures command line overrides and credentials).
pub const CRUST: u32 = 12;

/// `TPM_ALG_SHA1`.
pub const ALG_SHA1: u16 = 0x0004;
/// `TPM_ALG_SHA256`: the bank and name algorithm of every Crust policy.
pub const ALG_SHA256: u16 = 0x000b;
/// `TPM_ALG_SHA384`.
pub const ALG_SHA384: u16 = 0x000c;
/// `TPM_ALG_SHA512`.
pub const ALG_SHA512: u16 = 0x000d;

/// `TPM_CC_PolicyAuthorize`.
pub const CC_POLICY_AUTHORIZE: u32 = 0x0000_016a;
/// `TPM_CC_PolicyPCR`.
pub const CC_POLICY_PCR: u32 = 0x0000_017f;

/// The sections systemd-stub 252 measures into PCR 11, in the order it measures them
/// (`unified_sections[]` in `src/fundamental/tpm-pcr.c`, without `.pcrsig`, whose content
/// is the signature of the result). `.uname` is not among them in 252.
pub const STUB_SECTIONS: [&str; 7] = [
    ".linux", ".osrel", ".cmdline", ".initrd", ".splash", ".dtb", ".pcrpkey",
];

/// The event the init extends into PCR 11 once `/var` is open (or could not be): the
/// signed policy no longer matches, so nothing that runs later in this boot can unseal
/// the key again (systemd-pcrphase's "leave-initrd" idea).
pub const STATE_DONE_EVENT: &str = "crust:state-done";

fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// A PCR's new value after `TPM2_PCR_Extend` with `digest` (SHA-256 bank).
pub fn extend(pcr: &[u8; 32], digest: &[u8; 32]) -> [u8; 32] {
    sha256(&[pcr, digest])
}

/// PCR 11 after systemd-stub 252 measured a UKI whose sections (name, content) are given
/// in any order; sections it does not measure are ignored. For each measured section the
/// stub extends the SHA-256 of its name with the terminating NUL, then the SHA-256 of its
/// content (the section's `VirtualSize` bytes), into a PCR that starts at zero.
pub fn predict_kernel_image(sections: &[(&str, &[u8])]) -> [u8; 32] {
    let mut pcr = [0u8; 32];
    for name in STUB_SECTIONS {
        if let Some((_, data)) = sections.iter().find(|(n, _)| *n == name) {
            let mut with_nul = name.as_bytes().to_vec();
            with_nul.push(0);
            pcr = extend(&pcr, &sha256(&[&with_nul]));
            pcr = extend(&pcr, &sha256(&[data]));
        }
    }
    pcr
}

/// A marshalled `TPML_PCR_SELECTION` with one bank and the given PCRs (three bytes of
/// select bitmap: PCRs 0-23).
pub fn selection(bank: u16, pcrs: &[u32]) -> Vec<u8> {
    let mut bitmap = [0u8; 3];
    for &p in pcrs {
        if p < 24 {
            bitmap[(p / 8) as usize] |= 1 << (p % 8);
        }
    }
    let mut out = Vec::with_capacity(10);
    out.extend_from_slice(&1u32.to_be_bytes());
    out.extend_from_slice(&bank.to_be_bytes());
    out.push(3);
    out.extend_from_slice(&bitmap);
    out
}

/// `TPM2_PolicyPCR`'s update of a policy digest: `H(old ‖ TPM_CC_PolicyPCR ‖ selection ‖
/// H(values in selection order))`, for SHA-256 PCRs.
pub fn policy_pcr(old: &[u8; 32], pcrs: &[u32], values: &[[u8; 32]]) -> [u8; 32] {
    let concatenated: Vec<u8> = values.iter().flatten().copied().collect();
    let pcr_digest = sha256(&[&concatenated]);
    sha256(&[
        old,
        &CC_POLICY_PCR.to_be_bytes(),
        &selection(ALG_SHA256, pcrs),
        &pcr_digest,
    ])
}

/// `TPM2_PolicyAuthorize`'s digest for a key with TPM name `key_name` and an empty
/// `policyRef`: the policy digest is reset, then `H(0 ‖ TPM_CC_PolicyAuthorize ‖ keyName)`,
/// then `H(that ‖ policyRef)`.
pub fn policy_authorize(key_name: &[u8]) -> [u8; 32] {
    let first = sha256(&[&[0u8; 32], &CC_POLICY_AUTHORIZE.to_be_bytes(), key_name]);
    sha256(&[&first])
}

/// The policy a PCR 11 signature approves: PolicyPCR over PCR 11 (SHA-256) with `value`,
/// from an empty policy. This is systemd-measure's `pol`.
pub fn kernel_image_policy(value: &[u8; 32]) -> [u8; 32] {
    policy_pcr(&[0u8; 32], &[KERNEL_IMAGE], &[*value])
}

/// The sealed `/var` key's `authPolicy`: PolicyAuthorize by the PCR signing key (any PCR 11
/// policy it signed), then PolicyPCR over PCR 7 with its value when the key was sealed.
pub fn sealing_policy(key_name: &[u8], secure_boot_pcr: &[u8; 32]) -> [u8; 32] {
    policy_pcr(
        &policy_authorize(key_name),
        &[SECURE_BOOT],
        &[*secure_boot_pcr],
    )
}

/// What the signing key signs for a PolicyAuthorize: `aHash = H(approvedPolicy ‖
/// policyRef)` with an empty `policyRef`, so `H(approvedPolicy)`; RSASSA-PKCS1-v1_5 with
/// SHA-256 over the approved policy is a signature of exactly this digest.
pub fn authorization_digest(approved: &[u8; 32]) -> [u8; 32] {
    sha256(&[approved])
}

/// An RSA-2048 public key with exponent 65537, as the PCR signing key is, in the forms the
/// TPM and systemd name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RsaKey {
    modulus: [u8; 256],
}

/// DER of `SubjectPublicKeyInfo` for RSA-2048 up to the modulus (rsaEncryption, NULL
/// parameters, a 270-byte BIT STRING holding `RSAPublicKey`).
const SPKI_PREFIX: [u8; 33] = [
    0x30, 0x82, 0x01, 0x22, 0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01,
    0x01, 0x05, 0x00, 0x03, 0x82, 0x01, 0x0f, 0x00, 0x30, 0x82, 0x01, 0x0a, 0x02, 0x82, 0x01, 0x01,
    0x00,
];
/// Where the PKCS#1 `RSAPublicKey` starts in the `SubjectPublicKeyInfo`.
const RSA_PUBLIC_KEY_AT: usize = 24;
/// The public exponent 65537 after the modulus.
const SPKI_SUFFIX: [u8; 5] = [0x02, 0x03, 0x01, 0x00, 0x01];

/// `objectAttributes` of the public key as `TPM2_LoadExternal` gets it:
/// `userWithAuth | decrypt | sign`, what tpm2-tools' `tpm2_loadexternal` uses, so both
/// compute the same name.
const EXTERNAL_ATTRIBUTES: u32 = 0x0006_0040;

/// A key that is not an RSA-2048 key with exponent 65537.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the PCR signing key is not an RSA-2048 public key with exponent 65537 ({0})")]
pub struct KeyError(pub &'static str);

impl RsaKey {
    /// From its DER `SubjectPublicKeyInfo` (what `openssl pkey -pubout -outform DER` writes).
    pub fn from_spki(der: &[u8]) -> Result<Self, KeyError> {
        let rest = der
            .strip_prefix(&SPKI_PREFIX[..])
            .ok_or(KeyError("unexpected DER prefix"))?;
        let modulus = rest
            .strip_suffix(&SPKI_SUFFIX[..])
            .ok_or(KeyError("unexpected exponent"))?;
        let modulus: [u8; 256] = modulus
            .try_into()
            .map_err(|_| KeyError("modulus is not 256 bytes"))?;
        if modulus[0] & 0x80 == 0 {
            return Err(KeyError("modulus is shorter than 2048 bits"));
        }
        Ok(Self { modulus })
    }

    /// The big-endian modulus.
    pub fn modulus(&self) -> &[u8; 256] {
        &self.modulus
    }

    /// Its DER `SubjectPublicKeyInfo`.
    pub fn spki(&self) -> Vec<u8> {
        [&SPKI_PREFIX[..], &self.modulus, &SPKI_SUFFIX].concat()
    }

    /// SHA-256 of the key's PKCS#1 `RSAPublicKey` DER (the `SubjectPublicKeyInfo`'s bit
    /// string): systemd's `pkfp` (OpenSSL's `i2d_PublicKey`), the key's fingerprint.
    pub fn fingerprint(&self) -> [u8; 32] {
        let spki = self.spki();
        sha256(&[&spki[RSA_PUBLIC_KEY_AT..]])
    }

    /// The marshalled `TPMT_PUBLIC` the init loads with `TPM2_LoadExternal`: RSA, name
    /// algorithm SHA-256, `userWithAuth | decrypt | sign`, no policy, no symmetric
    /// algorithm or scheme, 2048 bits, exponent 65537, the modulus.
    pub fn tpm_public(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(280);
        out.extend_from_slice(&0x0001u16.to_be_bytes()); // TPM_ALG_RSA
        out.extend_from_slice(&ALG_SHA256.to_be_bytes());
        out.extend_from_slice(&EXTERNAL_ATTRIBUTES.to_be_bytes());
        out.extend_from_slice(&0u16.to_be_bytes()); // authPolicy: empty
        out.extend_from_slice(&0x0010u16.to_be_bytes()); // symmetric: TPM_ALG_NULL
        out.extend_from_slice(&0x0010u16.to_be_bytes()); // scheme: TPM_ALG_NULL
        out.extend_from_slice(&2048u16.to_be_bytes());
        out.extend_from_slice(&65537u32.to_be_bytes());
        out.extend_from_slice(&256u16.to_be_bytes());
        out.extend_from_slice(&self.modulus);
        out
    }

    /// The key's TPM name: the name algorithm (SHA-256) then SHA-256 of [`Self::tpm_public`].
    pub fn tpm_name(&self) -> Vec<u8> {
        let mut name = ALG_SHA256.to_be_bytes().to_vec();
        name.extend_from_slice(&sha256(&[&self.tpm_public()]));
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selections_marshal_as_the_tpm_wants() {
        assert_eq!(
            selection(ALG_SHA256, &[7]),
            [0, 0, 0, 1, 0, 0x0b, 3, 0x80, 0, 0]
        );
        assert_eq!(
            selection(ALG_SHA256, &[11, 12]),
            [0, 0, 0, 1, 0, 0x0b, 3, 0, 0x18, 0]
        );
    }

    #[test]
    fn the_prediction_follows_the_stub_order_and_skips_unmeasured_sections() {
        let a = predict_kernel_image(&[(".linux", b"L"), (".osrel", b"O"), (".uname", b"U")]);
        let b = predict_kernel_image(&[(".osrel", b"O"), (".linux", b"L")]);
        assert_eq!(
            a, b,
            ".uname is not measured; order of the list does not matter"
        );
        let name = |n: &str| sha256(&[n.as_bytes(), b"\0"]);
        let mut pcr = [0u8; 32];
        for (n, d) in [(".linux", b"L"), (".osrel", b"O")] {
            pcr = extend(&pcr, &name(n));
            pcr = extend(&pcr, &sha256(&[d]));
        }
        assert_eq!(a, pcr);
        assert_ne!(
            predict_kernel_image(&[(".linux", b"L"), (".pcrsig", b"S")]),
            predict_kernel_image(&[(".linux", b"L"), (".pcrpkey", b"S")]),
            ".pcrsig is not measured, .pcrpkey is"
        );
    }

    #[test]
    fn rsa_keys_round_trip_their_spki() {
        let mut modulus = [0x5au8; 256];
        modulus[0] = 0xc1;
        let der = [&SPKI_PREFIX[..], &modulus, &SPKI_SUFFIX].concat();
        let key = RsaKey::from_spki(&der).unwrap();
        assert_eq!(key.spki(), der);
        assert_eq!(
            key.tpm_public().len(),
            2 + 2 + 4 + 2 + 2 + 2 + 2 + 4 + 2 + 256
        );
        assert_eq!(&key.tpm_name()[..2], &[0, 0x0b]);
        assert!(RsaKey::from_spki(&der[1..]).is_err());
        modulus[0] = 0x41;
        let short = [&SPKI_PREFIX[..], &modulus, &SPKI_SUFFIX].concat();
        assert!(RsaKey::from_spki(&short).is_err());
    }
}
