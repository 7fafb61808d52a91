//! Update repositories: static files any HTTP server can serve.
//!
//! ```text
//! channels/<channel>.index       which versions the channel offers (text, below)
//! channels/<channel>.index.sig   raw 64-byte Ed25519 signature over the index bytes
//! bundles/<sha256>.bundle        update bundles, named by the SHA-256 of the whole file
//! ```
//!
//! The index is `key=value` lines: `format=2`, `channel` (a host refuses an index whose
//! signed channel is not the one it follows, so a mirror cannot serve one channel's index
//! as another's), `issued` (Unix seconds, strictly increasing from one publication of a
//! channel to the next: a host remembers the newest it accepted and refuses older ones, so
//! an old index cannot be replayed), `expires` (Unix seconds: a host refuses an index past
//! it, so a stale mirror cannot hold hosts back forever unnoticed), `allow-downgrade` (`0`
//! or `1`), and one `release=<version> <sha256> <size>` line per version. Hosts take the
//! highest version above their own.

use std::cmp::Ordering;

use crate::Digest;
use crate::version::{check_version, compare_versions};

/// The index format this crate reads and writes (format 1 had no `issued`).
pub const FORMAT_VERSION: u32 = 2;

/// Path of a channel's index, relative to the repository root.
pub fn index_path(channel: &str) -> String {
    format!("channels/{channel}.index")
}

/// Path of a channel index's signature.
pub fn signature_path(channel: &str) -> String {
    format!("channels/{channel}.index.sig")
}

/// Path of a bundle.
pub fn bundle_path(sha256: &Digest) -> String {
    format!("bundles/{sha256}.bundle")
}

/// A channel name: lowercase letters, digits and `-`, at most 32 characters. The one rule
/// for the repository (`cargo xtask publish`) and for hosts (user-data `update.channel`).
pub fn check_channel(channel: &str) -> Result<(), String> {
    let ok = !channel.is_empty()
        && channel.len() <= 32
        && channel
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{channel:?} is not a channel name (lowercase letters, digits, '-')"
        ))
    }
}

/// One version a channel offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    /// The version.
    pub version: String,
    /// SHA-256 of the bundle file.
    pub sha256: Digest,
    /// Size of the bundle file.
    pub size: u64,
}

/// A channel's index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Index {
    /// The channel.
    pub channel: String,
    /// Unix time it was published (strictly increasing per channel).
    pub issued: u64,
    /// Unix time after which the index must not be trusted.
    pub expires: u64,
    /// Whether hosts may move to a lower version than they run.
    pub allow_downgrade: bool,
    /// The versions, highest first.
    pub releases: Vec<Release>,
}

/// An index that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("update index: {0}")]
pub struct IndexError(pub String);

impl Index {
    /// The index text (the signed bytes); releases highest first.
    pub fn to_text(&self) -> String {
        let mut releases = self.releases.clone();
        releases.sort_by(|a, b| compare_versions(&b.version, &a.version));
        let mut s = format!(
            "format={FORMAT_VERSION}\nchannel={}\nissued={}\nexpires={}\nallow-downgrade={}\n",
            self.channel,
            self.issued,
            self.expires,
            u8::from(self.allow_downgrade)
        );
        for r in &releases {
            s.push_str(&format!("release={} {} {}\n", r.version, r.sha256, r.size));
        }
        s
    }

    /// Parses index text.
    pub fn parse(text: &str) -> Result<Self, IndexError> {
        let bad = |m: String| IndexError(m);
        let (mut format, mut channel, mut issued, mut expires, mut allow) =
            (None, None, None, None, None);
        let mut releases = Vec::new();
        for line in text.lines() {
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| bad(format!("{line:?} is not key=value")))?;
            let slot = match key {
                "format" => &mut format,
                "channel" => &mut channel,
                "issued" => &mut issued,
                "expires" => &mut expires,
                "allow-downgrade" => &mut allow,
                "release" => {
                    let f: Vec<&str> = value.split(' ').collect();
                    let [version, sha, size] = f.as_slice() else {
                        return Err(bad(format!(
                            "release {value:?} needs version, sha256 and size"
                        )));
                    };
                    check_version(version).map_err(|e| bad(e.to_string()))?;
                    releases.push(Release {
                        version: (*version).to_owned(),
                        sha256: sha
                            .parse()
                            .map_err(|e: crate::digest::DigestParseError| bad(e.to_string()))?,
                        size: size
                            .parse()
                            .map_err(|_| bad(format!("{size:?} is not a size")))?,
                    });
                    continue;
                }
                other => return Err(bad(format!("unknown key {other:?}"))),
            };
            if slot.replace(value.to_owned()).is_some() {
                return Err(bad(format!("{key} given twice")));
            }
        }
        if format.as_deref() != Some("2") {
            return Err(bad(format!(
                "format {} is not the format this host reads (2)",
                format.as_deref().unwrap_or("(missing)")
            )));
        }
        let channel = channel.ok_or_else(|| bad("no channel".into()))?;
        check_channel(&channel).map_err(bad)?;
        let number = |v: Option<String>, key: &str| -> Result<u64, IndexError> {
            v.ok_or_else(|| bad(format!("no {key}")))?
                .parse()
                .map_err(|_| bad(format!("{key} is not a number")))
        };
        let issued = number(issued, "issued")?;
        let expires = number(expires, "expires")?;
        if expires <= issued {
            return Err(bad(format!(
                "it expires ({expires}) before it was issued ({issued})"
            )));
        }
        let allow_downgrade = match allow.as_deref() {
            Some("0") | None => false,
            Some("1") => true,
            Some(other) => return Err(bad(format!("allow-downgrade {other:?} is not 0 or 1"))),
        };
        releases.sort_by(|a, b| compare_versions(&b.version, &a.version));
        Ok(Index {
            channel,
            issued,
            expires,
            allow_downgrade,
            releases,
        })
    }

    /// The release a host running `current` should move to, skipping `refused` versions:
    /// the highest above `current`, or (when the index allows downgrades) the highest below
    /// it if nothing is above. `None` when there is nothing to do.
    pub fn target<'a>(&'a self, current: &str, refused: &[String]) -> Option<&'a Release> {
        let candidates = self
            .releases
            .iter()
            .filter(|r| !refused.contains(&r.version));
        let mut best: Option<&Release> = None;
        for r in candidates {
            let ord = compare_versions(&r.version, current);
            let wanted =
                ord == Ordering::Greater || (self.allow_downgrade && ord == Ordering::Less);
            if wanted
                && best
                    .is_none_or(|b| compare_versions(&r.version, &b.version) == Ordering::Greater)
            {
                best = Some(r);
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(allow: bool) -> Index {
        Index {
            channel: "stable".into(),
            issued: 1_900_000_000,
            expires: 2_000_000_000,
            allow_downgrade: allow,
            releases: ["0.1.0", "0.3.0", "0.2.0"]
                .iter()
                .map(|v| Release {
                    version: (*v).into(),
                    sha256: Digest::of(v.as_bytes()),
                    size: 10,
                })
                .collect(),
        }
    }

    #[test]
    fn index_round_trips_with_releases_highest_first() {
        let text = index(false).to_text();
        assert!(text.contains("release=0.3.0 ") && text.find("0.3.0") < text.find("0.1.0"));
        let parsed = Index::parse(&text).unwrap();
        assert_eq!(parsed.releases[0].version, "0.3.0");
        assert_eq!(parsed.to_text(), text);
        assert!(Index::parse(&format!("{text}mirror=x\n")).is_err());
        assert!(Index::parse(&text.replace("format=2", "format=9")).is_err());
        assert!(Index::parse(&text.replace("format=2", "format=1")).is_err());
        assert!(Index::parse(&text.replace("issued=1900000000\n", "")).is_err());
        assert!(Index::parse(&text.replace("issued=1900000000", "issued=2100000000")).is_err());
        assert!(Index::parse(&text.replace("channel=stable", "channel=Stable")).is_err());
    }

    #[test]
    fn targets_go_up_and_down_only_when_allowed() {
        let i = index(false);
        assert_eq!(
            i.target("0.1.0", &[]).map(|r| r.version.as_str()),
            Some("0.3.0")
        );
        assert_eq!(
            i.target("0.1.0", &["0.3.0".into()])
                .map(|r| r.version.as_str()),
            Some("0.2.0")
        );
        assert_eq!(i.target("0.3.0", &[]), None);
        assert_eq!(i.target("0.4.0", &[]), None, "no downgrade");
        assert_eq!(
            index(true).target("0.4.0", &[]).map(|r| r.version.as_str()),
            Some("0.3.0")
        );
    }
}
