//! The signed manifest: stage 1 checks its signature against the key in the initramfs
//! before it reads a single field, and hands the verified bytes to stage 2.

use std::path::Path;

use crust_format::Manifest;
use crust_format::initrd;
use crust_format::signature::{PublicKey, SignatureError};

use crate::error::{Advise, Context, Error, Result};

/// A manifest whose signature checked out.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The parsed manifest.
    pub manifest: Manifest,
    /// The exact signed bytes (handed on to stage 2 and the update agent).
    pub bytes: Vec<u8>,
    /// Fingerprint of the key that signed it.
    pub key_fingerprint: String,
}

/// Reads the manifest, its signature and the public key from the initramfs at `root` and
/// verifies them.
pub fn load_from_initramfs(root: &Path) -> Result<Verified> {
    let read = |name: &str| {
        std::fs::read(root.join(name))
            .context("initramfs", || format!("cannot read {name}"))
            .advise("the initramfs is incomplete; rebuild the image")
    };
    let bytes = read(initrd::MANIFEST)?;
    let signature = read(initrd::MANIFEST_SIGNATURE)?;
    let key = read(initrd::PUBLIC_KEY)?;
    verify(bytes, &signature, &key)
}

/// Verifies `signature` over `bytes` with `key`, and only then parses the manifest.
pub fn verify(bytes: Vec<u8>, signature: &[u8], key: &[u8]) -> Result<Verified> {
    let key = PublicKey::from_bytes(key)
        .context("manifest-key", || {
            format!(
                "the key {} in the initramfs is unusable",
                initrd::PUBLIC_KEY
            )
        })
        .advise("rebuild the image with a valid signing key")?;
    let fingerprint = key.fingerprint();
    key.verify(&bytes, signature).map_err(|e| {
        let message = match e {
            SignatureError::Mismatch => format!(
                "manifest signature does not match the key in the initramfs (key {fingerprint})"
            ),
            other => format!("manifest signature is unusable: {other}"),
        };
        Error::new("manifest-signature", message).advice(
            "the manifest was altered or signed with another key; rebuild or re-sign the image",
        )
    })?;
    let manifest = Manifest::parse(&bytes)
        .context("manifest", || "the signed manifest cannot be read".into())
        .advise("the image was made by an incompatible builder; rebuild it with this crust")?;
    Ok(Verified {
        manifest,
        bytes,
        key_fingerprint: fingerprint,
    })
}

/// Reads back the manifest stage 1 verified and left in `/run` (a tmpfs only PID 1 has
/// written to so far, so the signature need not be checked again).
pub fn load_from_run() -> Result<Manifest> {
    let bytes = std::fs::read(initrd::RUN_MANIFEST)
        .context("stage2", || format!("cannot read {}", initrd::RUN_MANIFEST))
        .advise("stage 2 must be started by stage 1 in the initramfs; boot the UKI")?;
    Manifest::parse(&bytes).context("stage2", || {
        format!("{} cannot be read", initrd::RUN_MANIFEST)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crust_format::Digest;
    use crust_format::manifest::Filesystem;
    use crust_format::verity::{self, VerityParams};
    use ed25519_dalek::{Signer, SigningKey};

    fn sample() -> Vec<u8> {
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
        .to_text()
        .into_bytes()
    }

    #[test]
    fn accepts_a_good_signature() {
        let sk = SigningKey::from_bytes(&[7; 32]);
        let bytes = sample();
        let sig = sk.sign(&bytes).to_bytes();
        let v = verify(bytes.clone(), &sig, sk.verifying_key().as_bytes()).unwrap();
        assert_eq!(v.manifest.name, "crust");
        assert_eq!(v.bytes, bytes);
        assert_eq!(v.key_fingerprint.len(), 16);
    }

    #[test]
    fn refuses_another_key_and_altered_bytes() {
        let sk = SigningKey::from_bytes(&[7; 32]);
        let other = SigningKey::from_bytes(&[8; 32]);
        let bytes = sample();
        let sig = sk.sign(&bytes).to_bytes();
        let err = verify(bytes.clone(), &sig, other.verifying_key().as_bytes()).unwrap_err();
        assert_eq!(err.check, "manifest-signature");
        assert!(
            err.message
                .contains("does not match the key in the initramfs")
        );
        let mut altered = bytes;
        altered[0] ^= 1;
        let err = verify(altered, &sig, sk.verifying_key().as_bytes()).unwrap_err();
        assert_eq!(err.check, "manifest-signature");
    }

    #[test]
    fn checks_the_signature_before_parsing() {
        // Garbage that is not a manifest, with a bad signature: the signature is what fails.
        let sk = SigningKey::from_bytes(&[7; 32]);
        let err = verify(b"junk".to_vec(), &[0; 64], sk.verifying_key().as_bytes()).unwrap_err();
        assert_eq!(err.check, "manifest-signature");
        // Signed garbage passes the signature and then fails to parse.
        let sig = sk.sign(b"junk").to_bytes();
        let err = verify(b"junk".to_vec(), &sig, sk.verifying_key().as_bytes()).unwrap_err();
        assert_eq!(err.check, "manifest");
    }

    #[test]
    fn refuses_a_short_key_or_signature() {
        let err = verify(sample(), &[0; 64], &[1; 31]).unwrap_err();
        assert_eq!(err.check, "manifest-key");
        let sk = SigningKey::from_bytes(&[7; 32]);
        let err = verify(sample(), &[0; 63], sk.verifying_key().as_bytes()).unwrap_err();
        assert_eq!(err.check, "manifest-signature");
    }

    #[test]
    fn reads_the_three_files_from_the_initramfs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("crust")).unwrap();
        let sk = SigningKey::from_bytes(&[9; 32]);
        let bytes = sample();
        std::fs::write(dir.path().join(initrd::MANIFEST), &bytes).unwrap();
        let err = load_from_initramfs(dir.path()).unwrap_err();
        assert_eq!(err.check, "initramfs");
        assert!(err.message.contains(initrd::MANIFEST_SIGNATURE));
        std::fs::write(
            dir.path().join(initrd::MANIFEST_SIGNATURE),
            sk.sign(&bytes).to_bytes(),
        )
        .unwrap();
        std::fs::write(
            dir.path().join(initrd::PUBLIC_KEY),
            sk.verifying_key().as_bytes(),
        )
        .unwrap();
        assert!(load_from_initramfs(dir.path()).is_ok());
    }
}
