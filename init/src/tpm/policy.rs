//! Sealing a secret to the boot chain and unsealing it: PCR 7 as it is when the secret is
//! sealed, and PCR 11 as any policy the image's PCR signing key signed (systemd-measure's
//! scheme, which Talos and systemd-cryptenroll `--tpm2-public-key` use too).
//!
//! The sealed object's `authPolicy` is `PolicyAuthorize(signing key) ; PolicyPCR(7)`
//! ([`crust_format::pcr::sealing_policy`]). To unseal, a policy session runs
//!
//! 1. `PolicyPCR(11)` with PCR 11's current value: the session's digest is now the policy
//!    `pol` a build signed if PCR 11 is what that build's UKI measures;
//! 2. `VerifySignature` of `H(pol)` with the signing key (loaded into the owner hierarchy)
//!    and `PolicyAuthorize(pol, key, ticket)`: the digest becomes the key's authorization;
//! 3. `PolicyPCR(7)` with PCR 7's current value: the digest is the object's `authPolicy`
//!    only if PCR 7 is what it was when the key was sealed;
//!
//! then `Unseal`. A new release's UKI brings its own signature (`.pcrsig`), so updates need
//! no re-sealing; a UKI whose PCR 11 no signature covers, another TPM, or another Secure
//! Boot state (keys, `dbx`, Secure Boot off, a binary verified by another `db` entry) does
//! not unseal.

use std::fmt;

use base64::Engine as _;
use crust_format::pcr::{self, RsaKey};
use serde::Deserialize;
use zeroize::Zeroizing;

use super::{Blob, Handle, Tpm, TpmError};

/// One signed PCR 11 policy (an entry of systemd's `.pcrsig` JSON).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedPolicy {
    /// The approved policy: PolicyPCR over PCR 11 with the predicted value.
    pub policy: [u8; 32],
    /// The signing key's fingerprint ([`RsaKey::fingerprint`], systemd's `pkfp`).
    pub key_fingerprint: [u8; 32],
    /// RSASSA-PKCS1-v1_5 (SHA-256) signature of `policy`.
    pub signature: Vec<u8>,
}

#[derive(Deserialize)]
struct Json {
    #[serde(default)]
    sha256: Vec<JsonEntry>,
}

#[derive(Deserialize)]
struct JsonEntry {
    pcrs: Vec<u32>,
    pkfp: String,
    pol: String,
    sig: String,
}

/// Reads systemd's `tpm2-pcr-signature.json`: the SHA-256 bank's PCR 11 entries.
pub fn parse_signatures(json: &[u8]) -> Result<Vec<SignedPolicy>, String> {
    let parsed: Json =
        serde_json::from_slice(json).map_err(|e| format!("the PCR signature is not JSON ({e})"))?;
    let mut out = Vec::new();
    for e in parsed.sha256 {
        if e.pcrs != [pcr::KERNEL_IMAGE] {
            continue;
        }
        let hex32 = |s: &str, what: &str| -> Result<[u8; 32], String> {
            let mut b = [0u8; 32];
            hex::decode_to_slice(s, &mut b).map_err(|_| format!("{what} is not 64 hex digits"))?;
            Ok(b)
        };
        out.push(SignedPolicy {
            policy: hex32(&e.pol, "pol")?,
            key_fingerprint: hex32(&e.pkfp, "pkfp")?,
            signature: base64::engine::general_purpose::STANDARD
                .decode(&e.sig)
                .map_err(|_| "sig is not base64".to_string())?,
        });
    }
    Ok(out)
}

/// Why a sealed secret did not unseal. The state code names each to the operator.
#[derive(Debug)]
pub enum UnsealError {
    /// The TPM has no SHA-256 PCR bank.
    NoSha256Bank,
    /// No signed policy of the UKI is for the key the secret was sealed to.
    SignedByAnotherKey,
    /// No signed policy matches PCR 11: the running UKI is not one the key signed for.
    KernelImageUnsigned {
        /// PCR 11 now.
        pcr11: [u8; 32],
    },
    /// The TPM did not accept the signature (a corrupted `.pcrsig`).
    SignatureRefused(TpmError),
    /// This TPM cannot load the blob: the TPM was cleared or the disk moved to another
    /// machine.
    ForeignTpm(TpmError),
    /// PCR 7 is not what it was when the secret was sealed: Secure Boot turned off, its
    /// keys or `dbx` changed, or a boot binary verified by another `db` entry.
    SecureBootChanged(TpmError),
    /// Any other TPM failure.
    Tpm(TpmError),
}

impl fmt::Display for UnsealError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnsealError::NoSha256Bank => f.write_str("the TPM has no SHA-256 PCR bank"),
            UnsealError::SignedByAnotherKey => f.write_str(
                "this UKI's PCR 11 policy is signed by another key than the one /var was sealed to",
            ),
            UnsealError::KernelImageUnsigned { pcr11 } => write!(
                f,
                "PCR 11 ({}) matches no policy this UKI's key signed: the UKI was changed or \
                 another stub measured it",
                hex::encode(&pcr11[..8])
            ),
            UnsealError::SignatureRefused(e) => {
                write!(f, "the TPM refuses the UKI's PCR 11 signature ({e})")
            }
            UnsealError::ForeignTpm(e) => write!(
                f,
                "this TPM did not seal /var's key: the TPM was cleared or the disk is in \
                 another machine ({e})"
            ),
            UnsealError::SecureBootChanged(e) => write!(
                f,
                "PCR 7 differs from when /var's key was sealed: Secure Boot is off, its keys or \
                 dbx changed, or a boot binary was signed by another db key ({e})"
            ),
            UnsealError::Tpm(e) => write!(f, "{e}"),
        }
    }
}

impl From<TpmError> for UnsealError {
    fn from(e: TpmError) -> Self {
        UnsealError::Tpm(e)
    }
}

/// The signed policy that matches PCR 11 now, if any, among those by `key`.
pub fn matching_policy<'a>(
    signatures: &'a [SignedPolicy],
    key: &RsaKey,
    pcr11: &[u8; 32],
) -> Result<&'a SignedPolicy, UnsealError> {
    let ours: Vec<&SignedPolicy> = signatures
        .iter()
        .filter(|s| s.key_fingerprint == key.fingerprint())
        .collect();
    if ours.is_empty() {
        return Err(UnsealError::SignedByAnotherKey);
    }
    let want = pcr::kernel_image_policy(pcr11);
    ours.into_iter()
        .find(|s| s.policy == want)
        .ok_or(UnsealError::KernelImageUnsigned { pcr11: *pcr11 })
}

/// Runs `f` with a handle, flushing it after.
fn flushing<T>(
    tpm: &mut Tpm,
    handle: Handle,
    f: impl FnOnce(&mut Tpm) -> Result<T, UnsealError>,
) -> Result<T, UnsealError> {
    let result = f(tpm);
    tpm.flush(handle);
    result
}

/// Seals `secret` to PCR 7's current value and any PCR 11 policy `key` signs. Returns the
/// blob and the PCR 7 value it is bound to.
pub fn seal(tpm: &mut Tpm, secret: &[u8], key: &RsaKey) -> Result<(Blob, [u8; 32]), UnsealError> {
    let pcr7 = tpm
        .pcr_read(pcr::SECURE_BOOT)?
        .ok_or(UnsealError::NoSha256Bank)?;
    let policy = pcr::sealing_policy(&key.tpm_name(), &pcr7);
    let srk = tpm.storage_key()?;
    let blob = flushing(tpm, srk.handle, |tpm| {
        Ok(tpm.seal(srk.handle, secret, &policy)?)
    })?;
    Ok((blob, pcr7))
}

/// Unseals `blob` with the signed policy that matches PCR 11 now.
pub fn unseal(
    tpm: &mut Tpm,
    blob: &Blob,
    key: &RsaKey,
    signatures: &[SignedPolicy],
) -> Result<Zeroizing<Vec<u8>>, UnsealError> {
    let pcr11 = tpm
        .pcr_read(pcr::KERNEL_IMAGE)?
        .ok_or(UnsealError::NoSha256Bank)?;
    let signed = matching_policy(signatures, key, &pcr11)?;
    let srk = tpm.storage_key()?;
    let item = flushing(tpm, srk.handle, |tpm| {
        tpm.load(srk.handle, blob).map_err(|e| match e.code() {
            Some(c) if c.is_foreign_blob() => UnsealError::ForeignTpm(e),
            _ => UnsealError::Tpm(e),
        })
    })?;
    flushing(tpm, item.handle, |tpm| {
        let public = tpm.load_public(&key.tpm_public())?;
        let ticket = flushing(tpm, public.handle, |tpm| {
            tpm.verify_signature(
                public.handle,
                &pcr::authorization_digest(&signed.policy),
                &signed.signature,
            )
            .map_err(UnsealError::SignatureRefused)
        })?;
        let session = tpm.policy_session(false)?;
        let steps = (|| {
            tpm.policy_pcr(session, &[pcr::KERNEL_IMAGE])?;
            tpm.policy_authorize(session, &signed.policy, &public.name, &ticket)?;
            tpm.policy_pcr(session, &[pcr::SECURE_BOOT])
        })();
        if let Err(e) = steps {
            tpm.flush(session);
            return Err(e.into());
        }
        // Unseal ends the session (continueSession is off) whether it succeeds or not.
        tpm.unseal(item.handle, session)
            .map_err(|e| match e.code() {
                Some(c) if c.is_policy_failure() => UnsealError::SecureBootChanged(e),
                _ => UnsealError::Tpm(e),
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemd_signature_json_is_read() {
        let json = br#"{"sha256":[{"pcrs":[11],"pkfp":"0101010101010101010101010101010101010101010101010101010101010101","pol":"0202020202020202020202020202020202020202020202020202020202020202","sig":"AAEC"}],"sha1":[]}"#;
        let s = parse_signatures(json).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].key_fingerprint, [1; 32]);
        assert_eq!(s[0].policy, [2; 32]);
        assert_eq!(s[0].signature, [0, 1, 2]);
        assert!(parse_signatures(b"{").is_err());
        assert!(
            parse_signatures(br#"{"sha256":[{"pcrs":[11],"pkfp":"00","pol":"","sig":""}]}"#)
                .is_err()
        );
        // Entries for other PCR sets are not ours.
        let other = br#"{"sha256":[{"pcrs":[11,12],"pkfp":"","pol":"","sig":""}]}"#;
        assert!(parse_signatures(other).unwrap().is_empty());
    }
}
