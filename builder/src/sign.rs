//! Signing keys: Ed25519 key files, the development key, and detached signatures.
//!
//! Private keys are PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`) and public keys SPKI PEM, the
//! forms `openssl pkey` reads, so keys can be inspected and kept in ordinary key stores. A
//! private key file must be readable by its owner only (mode 0600); a looser one is refused
//! rather than used. Without a configured key a build uses a development key kept under the
//! output folder, and says so every time: an image signed with it is for testing only.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use crust_format::signature::PublicKey;
use ed25519_dalek::Signer as _;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey, KeypairBytes};

/// Where a signing key came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// Named by the profile (made by `cargo xtask keygen`).
    Configured,
    /// The build's own development key.
    Development,
}

/// An Ed25519 private key ready to sign.
pub struct SigningKey {
    key: ed25519_dalek::SigningKey,
    /// The key file.
    pub path: PathBuf,
    /// Configured or development.
    pub kind: KeyKind,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("path", &self.path)
            .field("kind", &self.kind)
            .field("public", &self.public_key())
            .finish()
    }
}

impl SigningKey {
    /// Reads a private key file, refusing one that others can read.
    pub fn load(path: &Path) -> Result<Self> {
        Self::load_as(path, KeyKind::Configured)
    }

    fn load_as(path: &Path, kind: KeyKind) -> Result<Self> {
        let meta = std::fs::metadata(path)
            .with_context(|| format!("cannot read signing key {}", path.display()))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            bail!(
                "signing key {} has mode {mode:04o}: others can read it. \
                 Restrict it with `chmod 600 {}` (and consider whether it leaked)",
                path.display(),
                path.display()
            );
        }
        let pem = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read signing key {}", path.display()))?;
        let key = ed25519_dalek::SigningKey::from_pkcs8_pem(&pem).map_err(|e| {
            anyhow::anyhow!(
                "{} is not an Ed25519 private key in PKCS#8 PEM ({e}); make one with `cargo xtask keygen`",
                path.display()
            )
        })?;
        Ok(Self {
            key,
            path: path.to_path_buf(),
            kind,
        })
    }

    /// The development key in `dir` (`development.key`), made on first use.
    pub fn development(dir: &Path) -> Result<Self> {
        let path = dir.join("development.key");
        if !path.exists() {
            generate(dir, "development")?;
        }
        Self::load_as(&path, KeyKind::Development)
    }

    /// Signs `data` (a detached, raw 64-byte Ed25519 signature).
    pub fn sign(&self, data: &[u8]) -> [u8; 64] {
        self.key.sign(data).to_bytes()
    }

    /// The public half.
    pub fn public_key(&self) -> PublicKey {
        PublicKey::from_verifying_key(self.key.verifying_key())
    }
}

/// Makes a new key pair `<dir>/<name>.key` (mode 0600) and `<dir>/<name>.pub`; refuses to
/// overwrite an existing key.
pub fn generate(dir: &Path, name: &str) -> Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let private = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pub"));
    if private.exists() {
        bail!(
            "{} exists already; move it away first (a key is never overwritten)",
            private.display()
        );
    }
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no randomness from the OS: {e}"))?;
    let key = ed25519_dalek::SigningKey::from_bytes(&seed);
    seed.fill(0);
    // RFC 8410's plain form (no embedded public key), as `openssl genpkey` writes it; the
    // OpenSSL 3.0 of Debian 12 refuses the v2 form with the public key inside.
    let keypair = KeypairBytes {
        secret_key: key.to_bytes(),
        public_key: None,
    };
    let pem = keypair
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| anyhow::anyhow!("cannot encode the key: {e}"))?;
    let pub_pem = key
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| anyhow::anyhow!("cannot encode the public key: {e}"))?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&private)
        .with_context(|| format!("cannot create {}", private.display()))?;
    file.write_all(pem.as_bytes())
        .and_then(|_| file.sync_all())
        .with_context(|| format!("cannot write {}", private.display()))?;
    std::fs::write(&public, pub_pem)
        .with_context(|| format!("cannot write {}", public.display()))?;
    Ok((private, public))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn generated_keys_sign_and_openssl_reads_them() {
        let dir = tempfile::tempdir().unwrap();
        let (private, public) = generate(dir.path(), "crust").unwrap();
        let mode = std::fs::metadata(&private).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let key = SigningKey::load(&private).unwrap();
        let sig = key.sign(b"manifest");
        assert_eq!(key.public_key().verify(b"manifest", &sig), Ok(()));
        // An independent reader of the formats: openssl derives the same public key.
        let out = Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&private)
            .output()
            .expect("openssl is part of Debian's base system");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.stdout, std::fs::read(&public).unwrap());
        assert!(generate(dir.path(), "crust").is_err(), "never overwrites");
    }

    #[test]
    fn loose_permissions_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (private, _) = generate(dir.path(), "k").unwrap();
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = SigningKey::load(&private).unwrap_err().to_string();
        assert!(
            err.contains("mode 0644") && err.contains("chmod 600"),
            "{err}"
        );
    }

    #[test]
    fn development_key_is_made_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let a = SigningKey::development(dir.path()).unwrap();
        let b = SigningKey::development(dir.path()).unwrap();
        assert_eq!(a.public_key(), b.public_key());
        assert_eq!(a.kind, KeyKind::Development);
    }
}
