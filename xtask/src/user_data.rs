//! `cargo xtask sign-user-data`: signs host configuration for images whose profile says
//! `[config] signed = true` (docs/CONFIGURATION.md, "Signed user-data").
//!
//! The signature is Ed25519 over the user-data's exact bytes behind a fixed context
//! ([`crust_format::user_data::CONTEXT`]); it goes into `FILE.sig` (the detached form a
//! NoCloud seed carries as `user-data.sig`), or with `--inline OUT` into a copy of the
//! user-data that ends in the signature line (the form for EC2 IMDS and `crust.config=`).
//! The text is checked first: a signature over a document the host would refuse anyway
//! only hides the mistake until boot.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use crust_builder::output::write_atomic;
use crust_builder::report;
use crust_builder::sign::SigningKey;
use crust_format::user_data;

/// Signs `file` with `key`; writes `FILE.sig`, or the inline form into `inline`.
pub fn sign(key: &Path, file: &Path, inline: Option<&Path>) -> Result<PathBuf> {
    let key = SigningKey::load(key)?;
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    check(&bytes).with_context(|| format!("{} is not user-data Crust reads", file.display()))?;
    let signature = key.sign(&user_data::signed_message(&bytes));
    let out = match inline {
        Some(out) => {
            write_atomic(out, &user_data::inline(&bytes, &signature))?;
            out.to_path_buf()
        }
        None => {
            let mut out = file.as_os_str().to_owned();
            out.push(".sig");
            let out = PathBuf::from(out);
            write_atomic(&out, &signature)?;
            out
        }
    };
    report::status(
        "Signed",
        format!(
            "{} with {} ({}): {}",
            file.display(),
            key.path.display(),
            key.public_key().fingerprint(),
            out.display()
        ),
    );
    Ok(out)
}

/// UTF-8 TOML with `version = 1`, not already signed inline.
fn check(bytes: &[u8]) -> Result<()> {
    if user_data::split_inline(bytes).is_ok_and(|s| s.is_some()) {
        bail!("it already ends in a signature line");
    }
    let text = std::str::from_utf8(bytes).context("it is not UTF-8 text")?;
    let table: toml::Table =
        toml::from_str(text).map_err(|e| anyhow::anyhow!("it is not TOML: {}", e.message()))?;
    match table.get("version").and_then(toml::Value::as_integer) {
        Some(1) => Ok(()),
        _ => bail!("it lacks `version = 1` (docs/CONFIGURATION.md)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crust_format::user_data::{Permission, Policy, Source};

    #[test]
    fn detached_and_inline_signatures_verify_with_the_image_policy() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::development(dir.path()).unwrap();
        let file = dir.path().join("user-data");
        std::fs::write(&file, "version = 1\nhostname = \"signed\"\n").unwrap();
        let policy = Policy {
            sources: vec![Source::NoCloud],
            signed: true,
            keys: vec![key.public_key()],
            allow: vec![Permission::Services],
        };
        let sig = sign(&key.path, &file, None).unwrap();
        assert_eq!(sig, dir.path().join("user-data.sig"));
        let bytes = std::fs::read(&file).unwrap();
        policy
            .verify(&bytes, &std::fs::read(&sig).unwrap())
            .unwrap();
        let inline = dir.path().join("inline");
        sign(&key.path, &file, Some(&inline)).unwrap();
        let signed = std::fs::read(&inline).unwrap();
        let (body, found) = user_data::split_inline(&signed).unwrap().unwrap();
        assert_eq!(body, bytes);
        policy.verify(body, &found).unwrap();
        // Signing the signed copy again is refused, as is text the host would refuse.
        assert!(sign(&key.path, &inline, None).is_err());
        std::fs::write(&file, "#cloud-config\nhostname: x\n").unwrap();
        assert!(sign(&key.path, &file, None).is_err());
    }
}
