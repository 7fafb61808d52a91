//! Judging a channel's index before anything in it is believed: the image's key signed it,
//! it is the index of the channel this host follows, it is not older than the newest index
//! this host accepted on that channel, and it has not expired.
//!
//! Each rule closes an attack by whoever sits between the host and the repository, or
//! holds a copy of it: a foreign key (any change at all), another channel's index served as
//! this one's (a beta or downgrade-allowing index for stable hosts), an old index replayed
//! (one that allowed a downgrade, or hid a newer release), a stale index kept forever (a
//! host frozen on an old version). The judging is pure, so each rule is unit-tested here.

use crust_format::Digest;
use crust_format::repo::Index;
use crust_format::signature::PublicKey;

use super::record::Accepted;

/// Why an index was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused(pub String);

/// Judges an index's bytes and signature for a host following `channel` that accepted
/// `accepted` last, at Unix time `now`. Returns the index and what to record as accepted.
pub fn judge(
    text: &[u8],
    signature: &[u8],
    key: &PublicKey,
    channel: &str,
    accepted: Option<Accepted>,
    now: u64,
) -> Result<(Index, Accepted), Refused> {
    key.verify(text, signature).map_err(|e| {
        Refused(format!(
            "the {channel} index is not signed by this image's key ({e}); refused"
        ))
    })?;
    let text_str =
        std::str::from_utf8(text).map_err(|_| Refused("the index is not UTF-8 text".into()))?;
    let index = Index::parse(text_str).map_err(|e| Refused(format!("{e}; refused")))?;
    if index.channel != channel {
        return Err(Refused(format!(
            "the repository served the {} channel's index as {channel}'s; refused (a mirror or \
             the network swapped it)",
            index.channel
        )));
    }
    let this = Accepted {
        issued: index.issued,
        sha256: Digest::of(text),
    };
    if let Some(last) = accepted {
        if index.issued < last.issued {
            return Err(Refused(format!(
                "the {channel} index was issued at {}, before the newest this host accepted ({}); \
                 refused (an old index replayed)",
                index.issued, last.issued
            )));
        }
        if index.issued == last.issued && this.sha256 != last.sha256 {
            return Err(Refused(format!(
                "the {channel} index differs from the one this host accepted with the same \
                 issue time {}; refused",
                index.issued
            )));
        }
    }
    if index.expires <= now {
        return Err(Refused(format!(
            "the {channel} index expired {} s ago; refused (the repository must be republished)",
            now - index.expires
        )));
    }
    Ok((index, this))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crust_format::repo::Release;
    use ed25519_dalek::{Signer, SigningKey};

    const NOW: u64 = 1_900_000_000;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn public() -> PublicKey {
        PublicKey::from_verifying_key(key(1).verifying_key())
    }

    /// An index of `channel` issued at `issued`, valid for a day, signed by `signer`.
    fn signed(channel: &str, issued: u64, signer: u8) -> (Vec<u8>, Vec<u8>) {
        let index = Index {
            channel: channel.into(),
            issued,
            expires: issued + 86_400,
            allow_downgrade: false,
            releases: vec![Release {
                version: "0.2.0".into(),
                sha256: Digest::of(b"bundle"),
                size: 10,
                rollout: Default::default(),
                state: Default::default(),
            }],
        };
        let text = index.to_text().into_bytes();
        let sig = key(signer).sign(&text).to_bytes().to_vec();
        (text, sig)
    }

    #[test]
    fn a_fresh_index_of_the_channel_is_accepted_and_recorded() {
        let (text, sig) = signed("stable", NOW - 10, 1);
        let (index, accepted) = judge(&text, &sig, &public(), "stable", None, NOW).unwrap();
        assert_eq!(index.releases.len(), 1);
        assert_eq!(accepted.issued, NOW - 10);
        assert_eq!(accepted.sha256, Digest::of(&text));
        // The same index again (every interval) is fine.
        judge(&text, &sig, &public(), "stable", Some(accepted), NOW).unwrap();
    }

    #[test]
    fn another_key_or_another_channel_is_refused() {
        let (text, sig) = signed("stable", NOW, 2);
        let e = judge(&text, &sig, &public(), "stable", None, NOW).unwrap_err();
        assert!(e.0.contains("not signed by this image's key"), "{e:?}");
        let (text, sig) = signed("beta", NOW, 1);
        let e = judge(&text, &sig, &public(), "stable", None, NOW).unwrap_err();
        assert!(
            e.0.contains("served the beta channel's index as stable's"),
            "{e:?}"
        );
    }

    #[test]
    fn an_older_index_is_refused_after_a_newer_one() {
        let (new, new_sig) = signed("stable", NOW - 10, 1);
        let (_, accepted) = judge(&new, &new_sig, &public(), "stable", None, NOW).unwrap();
        let (old, old_sig) = signed("stable", NOW - 100, 1);
        let e = judge(&old, &old_sig, &public(), "stable", Some(accepted), NOW).unwrap_err();
        assert!(e.0.contains("an old index replayed"), "{e:?}");
        // Another index claiming the same issue time is refused too.
        let (twin, twin_sig) = {
            let mut i = Index::parse(std::str::from_utf8(&new).unwrap()).unwrap();
            i.allow_downgrade = true;
            let t = i.to_text().into_bytes();
            let s = key(1).sign(&t).to_bytes().to_vec();
            (t, s)
        };
        let e = judge(&twin, &twin_sig, &public(), "stable", Some(accepted), NOW).unwrap_err();
        assert!(e.0.contains("same issue time"), "{e:?}");
    }

    #[test]
    fn an_expired_index_is_refused() {
        let (text, sig) = signed("stable", NOW - 90_000, 1);
        let e = judge(&text, &sig, &public(), "stable", None, NOW).unwrap_err();
        assert!(e.0.contains("expired 3600 s ago"), "{e:?}");
    }
}
