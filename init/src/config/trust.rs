//! Whether user-data counts: the image's policy ([`crust_format::user_data`], baked into the
//! verified root from the profile's `[config]` table) says which sources are read and
//! whether user-data needs an Ed25519 signature by a key the image trusts.
//!
//! A signature comes detached (a NoCloud seed's `user-data.sig`) or inline (a last line
//! `# crust-signature: ed25519 …`, for sources that carry one blob). Under `signed`, user-data
//! without a valid signature is refused like any other bad user-data: one console line
//! naming the source and the reason, and the host boots with the image's configuration.
//! What signed (or unsigned but allowed) user-data may then change is checked with the
//! services ([`crate::services::check_user_data`]).

use std::path::Path;

use crust_format::user_data::{self, Policy};

use super::source::Origin;

/// User-data as a source hands it over, before anything is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The bytes (an inline signature line still in them).
    pub bytes: Vec<u8>,
    /// A detached signature, if the source had one.
    pub signature: Option<Vec<u8>>,
}

impl Found {
    /// User-data without a detached signature.
    pub fn bytes(bytes: Vec<u8>) -> Self {
        Self {
            bytes,
            signature: None,
        }
    }
}

/// The image's policy, read from `root`. An image without one (built before policies)
/// gets the default; a policy that cannot be read refuses every source but the image's
/// own default, loudly: it is in the verified root, so only a builder bug breaks it.
pub fn policy(root: &Path) -> Policy {
    let path = root.join(user_data::POLICY_PATH);
    match std::fs::read_to_string(&path) {
        Ok(text) => Policy::parse(&text).unwrap_or_else(|e| {
            crate::console::warning(&format!(
                "config: {}: {e}; reading no user-data, only the image's default",
                path.display()
            ));
            Policy {
                sources: vec![user_data::Source::Image],
                signed: true,
                keys: Vec::new(),
                allow: Vec::new(),
            }
        }),
        Err(_) => Policy::default(),
    }
}

/// The user-data bytes to parse (an inline signature line removed) if the policy accepts
/// what `origin` gave; otherwise why not.
pub fn authenticate(found: Found, origin: &Origin, policy: &Policy) -> Result<Vec<u8>, String> {
    let inline = user_data::split_inline(&found.bytes).map_err(|e| e.to_string());
    let needed = policy.signed && origin.source().is_some_and(|s| s.needs_signature());
    let (data, signature) = match (&found.signature, inline) {
        (Some(detached), _) => (found.bytes.clone(), Some(detached.clone())),
        (None, Ok(Some((data, signature)))) => (data.to_vec(), Some(signature.to_vec())),
        (None, Ok(None)) => (found.bytes.clone(), None),
        (None, Err(why)) if needed => return Err(why),
        (None, Err(_)) => (found.bytes.clone(), None),
    };
    if !needed {
        return Ok(data);
    }
    let advice = format!(
        "this image takes only user-data signed by {} (sign it with `cargo xtask \
         sign-user-data`)",
        describe_keys(policy)
    );
    let Some(signature) = signature else {
        return Err(format!("{}; {advice}", user_data::UnsignedError::Missing));
    };
    match policy.verify(&data, &signature) {
        Ok(_) => Ok(data),
        Err(e) => Err(format!("{e}; {advice}")),
    }
}

fn describe_keys(policy: &Policy) -> String {
    let prints: Vec<String> = policy.keys.iter().map(|k| k.fingerprint()).collect();
    match prints.as_slice() {
        [] => "no key (the image lists none)".into(),
        [one] => format!("key {one}"),
        many => format!("one of the keys {}", many.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crust_format::signature::PublicKey;
    use crust_format::user_data::{Permission, Source, inline, signed_message};
    use ed25519_dalek::{Signer, SigningKey};

    const DATA: &[u8] = b"version = 1\nhostname = \"signed\"\n";

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn policy(signed: bool) -> Policy {
        Policy {
            sources: Source::ALL.to_vec(),
            signed,
            keys: vec![PublicKey::from_verifying_key(key(1).verifying_key())],
            allow: vec![Permission::Services],
        }
    }

    fn seed() -> Origin {
        Origin::NoCloud("/dev/vdb".into())
    }

    #[test]
    fn unsigned_user_data_counts_only_when_the_image_says_so() {
        assert_eq!(
            authenticate(Found::bytes(DATA.to_vec()), &seed(), &policy(false)).unwrap(),
            DATA
        );
        let err = authenticate(Found::bytes(DATA.to_vec()), &seed(), &policy(true)).unwrap_err();
        assert!(
            err.starts_with(
                "it carries no signature; this image takes only user-data signed by key "
            ),
            "{err}"
        );
        // The image's own default is in the verified root: no signature needed.
        assert!(authenticate(Found::bytes(DATA.to_vec()), &Origin::Image, &policy(true)).is_ok());
    }

    #[test]
    fn detached_and_inline_signatures_by_a_listed_key_count() {
        let sig = key(1).sign(&signed_message(DATA)).to_bytes();
        let detached = Found {
            bytes: DATA.to_vec(),
            signature: Some(sig.to_vec()),
        };
        assert_eq!(
            authenticate(detached, &seed(), &policy(true)).unwrap(),
            DATA
        );
        let both = Found::bytes(inline(DATA, &sig));
        assert_eq!(
            authenticate(both.clone(), &Origin::Imds, &policy(true)).unwrap(),
            DATA
        );
        // Unsigned images still strip the line, so the text parses as it was signed.
        assert_eq!(
            authenticate(both, &Origin::Imds, &policy(false)).unwrap(),
            DATA
        );
    }

    #[test]
    fn foreign_or_changed_user_data_is_refused() {
        let foreign = key(2).sign(&signed_message(DATA)).to_bytes();
        let err = authenticate(
            Found::bytes(inline(DATA, &foreign)),
            &Origin::Cmdline,
            &policy(true),
        )
        .unwrap_err();
        assert!(
            err.contains("not valid for any key this image trusts"),
            "{err}"
        );
        let sig = key(1).sign(&signed_message(DATA)).to_bytes();
        let changed = Found {
            bytes: b"version = 1\nhostname = \"evil\"\n".to_vec(),
            signature: Some(sig.to_vec()),
        };
        assert!(authenticate(changed, &seed(), &policy(true)).is_err());
        let short = Found {
            bytes: DATA.to_vec(),
            signature: Some(vec![0; 12]),
        };
        assert!(authenticate(short, &seed(), &policy(true)).is_err());
    }

    #[test]
    fn a_missing_policy_is_the_default_and_a_broken_one_reads_nothing() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(policy_of(dir.path()), Policy::default());
        let path = dir.path().join(user_data::POLICY_PATH);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "format=9\n").unwrap();
        let p = policy_of(dir.path());
        assert_eq!(p.sources, [Source::Image]);
        assert!(p.allow.is_empty());
    }

    fn policy_of(root: &Path) -> Policy {
        super::policy(root)
    }
}
