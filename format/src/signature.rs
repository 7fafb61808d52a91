//! Ed25519 public keys and detached signatures as stored on disk.
//!
//! Inside the initramfs a public key is the raw 32-byte Ed25519 key and a signature the raw
//! 64-byte Ed25519 signature (RFC 8032) over the exact bytes of the signed file. Key files
//! people handle (`crust.pub`, `crust.key`) are PEM and belong to the builder.

use ed25519_dalek::{Signature, VerifyingKey};

/// Length of a raw Ed25519 public key.
pub const PUBLIC_KEY_LEN: usize = 32;
/// Length of a raw Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;

/// Why a signature check failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The key file does not hold exactly 32 bytes.
    #[error("public key is {0} bytes, expected {PUBLIC_KEY_LEN}")]
    KeyLength(usize),
    /// The 32 bytes are not a valid Ed25519 point.
    #[error("public key is not a valid Ed25519 key")]
    InvalidKey,
    /// The signature file does not hold exactly 64 bytes.
    #[error("signature is {0} bytes, expected {SIGNATURE_LEN}")]
    SignatureLength(usize),
    /// The signature does not match the data and key.
    #[error("signature does not match (data changed, or signed by another key)")]
    Mismatch,
}

/// An Ed25519 public key that verifies manifests and update metadata.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// Reads a raw 32-byte key.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SignatureError> {
        let raw: &[u8; PUBLIC_KEY_LEN] = bytes
            .try_into()
            .map_err(|_| SignatureError::KeyLength(bytes.len()))?;
        VerifyingKey::from_bytes(raw)
            .map(Self)
            .map_err(|_| SignatureError::InvalidKey)
    }

    /// Wraps a key from `ed25519-dalek`.
    pub fn from_verifying_key(key: VerifyingKey) -> Self {
        Self(key)
    }

    /// The raw 32 bytes, as stored in the initramfs.
    pub fn to_bytes(&self) -> [u8; PUBLIC_KEY_LEN] {
        self.0.to_bytes()
    }

    /// A short fingerprint for messages: the first 16 hex digits of the key's SHA-256.
    pub fn fingerprint(&self) -> String {
        crate::Digest::of(&self.to_bytes()).short(16)
    }

    /// Checks a detached signature over `data` (strict RFC 8032 verification: no malleable
    /// or small-order signatures are accepted).
    pub fn verify(&self, data: &[u8], signature: &[u8]) -> Result<(), SignatureError> {
        let raw: &[u8; SIGNATURE_LEN] = signature
            .try_into()
            .map_err(|_| SignatureError::SignatureLength(signature.len()))?;
        self.0
            .verify_strict(data, &Signature::from_bytes(raw))
            .map_err(|_| SignatureError::Mismatch)
    }
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.fingerprint())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn accepts_a_good_signature_and_refuses_changes() {
        let sk = key(7);
        let pk = PublicKey::from_bytes(sk.verifying_key().as_bytes()).unwrap();
        let sig = sk.sign(b"manifest").to_bytes();
        assert_eq!(pk.verify(b"manifest", &sig), Ok(()));
        assert_eq!(pk.verify(b"manifesT", &sig), Err(SignatureError::Mismatch));
        let other = PublicKey::from_verifying_key(key(8).verifying_key());
        assert_eq!(
            other.verify(b"manifest", &sig),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            pk.verify(b"manifest", &sig[..63]),
            Err(SignatureError::SignatureLength(63))
        );
    }

    #[test]
    fn refuses_keys_of_the_wrong_length() {
        assert_eq!(
            PublicKey::from_bytes(&[0; 31]),
            Err(SignatureError::KeyLength(31))
        );
    }
}
