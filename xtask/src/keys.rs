//! Which public key a release is checked against, and `cargo xtask verify`.
//!
//! `--key FILE` names it (a `.pub`, or a `.key` whose public half is used). Without it, a
//! folder `target/crust/<name>` is checked against the key of `profiles/<name>.toml`
//! (the `.pub` beside its `signing.key`), and anything else against the development key,
//! with a warning: that key signs every developer's test builds.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use crust_builder::release;
use crust_builder::report;
use crust_builder::sign::SigningKey;
use crust_format::signature::PublicKey;

use crate::image;

/// The key to check the release in `dir` with.
pub fn verification_key(dir: &Path, key: Option<&Path>) -> Result<PublicKey> {
    if let Some(path) = key {
        let key = release::read_public_key(path)?;
        report::status("Key", format!("{} ({})", path.display(), key.fingerprint()));
        return Ok(key);
    }
    if let Some((profile, signing)) = profile_key(dir)? {
        let public = signing.with_extension("pub");
        let key = if public.is_file() {
            release::read_public_key(&public)?
        } else {
            SigningKey::load(&signing)?.public_key()
        };
        report::status(
            "Key",
            format!(
                "{} of profile {} ({})",
                signing.display(),
                profile.display(),
                key.fingerprint()
            ),
        );
        return Ok(key);
    }
    let dev = image::crust_target().join("keys").join("development.key");
    if !dev.is_file() {
        bail!(
            "no key to check {} with: pass --key FILE (the .pub of the key that signed it); \
             there is no development key at {}",
            dir.display(),
            dev.display()
        );
    }
    let key = SigningKey::load(&dev)?.public_key();
    report::warn(format!(
        "checking against the DEVELOPMENT key {} ({}): it signs every test build made in \
         this checkout, so a valid signature proves little. Pass --key FILE for a release",
        dev.display(),
        key.fingerprint()
    ));
    Ok(key)
}

/// The profile whose output folder `dir` is, and its configured signing key.
fn profile_key(dir: &Path) -> Result<Option<(PathBuf, PathBuf)>> {
    let Some((profile_path, profile)) = image::profile_of_output(dir)? else {
        return Ok(None);
    };
    Ok(profile.signing_key.map(|k| (profile_path, k.value)))
}

/// `cargo xtask verify DIR`: the signature, then every listed file's digest.
pub fn verify(dir: &Path, key: Option<&Path>) -> Result<()> {
    let public = verification_key(dir, key)?;
    let sums = release::verify(dir, &public)
        .with_context(|| format!("{} does not verify", dir.display()))?;
    for (name, digest) in sums.iter() {
        report::status("Verified", format!("{name} ({})", digest.short(16)));
    }
    report::status(
        "Release",
        format!(
            "{}: {} files match the signed {} (key {})",
            dir.display(),
            sums.len(),
            release::SUMS,
            public.fingerprint()
        ),
    );
    Ok(())
}
