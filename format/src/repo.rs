//! Update repositories: static files any HTTP server can serve.
//!
//! ```text
//! channels/<channel>.index       which versions the channel offers (text, below)
//! channels/<channel>.index.sig   raw 64-byte Ed25519 signature over the index bytes
//! bundles/<sha256>.bundle        update bundles, named by the SHA-256 of the whole file
//! ```
//!
//! The index is `key=value` lines: `format=3`, `channel` (a host refuses an index whose
//! signed channel is not the one it follows, so a mirror cannot serve one channel's index
//! as another's), `issued` (Unix seconds, strictly increasing from one publication of a
//! channel to the next: a host remembers the newest it accepted and refuses older ones, so
//! an old index cannot be replayed), `expires` (Unix seconds: a host refuses an index past
//! it, so a stale mirror cannot hold hosts back forever unnoticed), `allow-downgrade` (`0`
//! or `1`), and one `release=<version> <sha256> <size> <start> <duration> <state>` line per
//! version: the staged rollout (Unix second it starts, seconds it takes to reach every host;
//! `0 0` for everyone at once) and whether new hosts may take it (`active`, `paused`, or
//! `pulled`: withdrawn). Hosts take the highest version above their own whose rollout has
//! reached them: each host's place in a rollout is a stable fraction of its duration,
//! derived from its machine id and the version ([`Rollout::eligible_at`]), so hosts come
//! in a different order for every release.

use std::cmp::Ordering;

use crate::Digest;
use crate::version::{check_version, compare_versions};

/// The index format this crate reads and writes (format 1 had no `issued`, format 2 no
/// rollouts and states: hosts refuse formats they do not know, rather than ignore a pause).
pub const FORMAT_VERSION: u32 = 3;

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

/// When a release reaches hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rollout {
    /// Unix second the rollout starts.
    pub start: u64,
    /// Seconds from the start until every host is eligible (0: all at once).
    pub duration: u64,
}

impl Rollout {
    /// The host's place in the rollout of `version`: a fraction of the duration, the same
    /// for the same host and version every time, different across versions.
    pub fn fraction(machine_id: &[u8], version: &str) -> u64 {
        let digest = Digest::of_parts([
            b"crust rollout v1".as_slice(),
            machine_id,
            version.as_bytes(),
        ]);
        u64::from_be_bytes(digest.0[..8].try_into().unwrap_or_default())
    }

    /// When the host with `machine_id` may install `version`: start + fraction × duration.
    pub fn eligible_at(&self, machine_id: &[u8], version: &str) -> u64 {
        let place =
            (u128::from(Self::fraction(machine_id, version)) * u128::from(self.duration)) >> 64;
        self.start
            .saturating_add(u64::try_from(place).unwrap_or(u64::MAX))
    }
}

/// Whether hosts may start a release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReleaseState {
    /// Hosts take it when their place in the rollout comes.
    #[default]
    Active,
    /// No further host starts it; hosts on it stay.
    Paused,
    /// Withdrawn: no host that does not run it ever installs it; hosts running it stay
    /// until a newer release is offered.
    Pulled,
}

impl ReleaseState {
    /// The name in the index.
    pub fn as_str(self) -> &'static str {
        match self {
            ReleaseState::Active => "active",
            ReleaseState::Paused => "paused",
            ReleaseState::Pulled => "pulled",
        }
    }

    /// Parses a name.
    pub fn parse(name: &str) -> Option<Self> {
        [Self::Active, Self::Paused, Self::Pulled]
            .into_iter()
            .find(|s| s.as_str() == name)
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
    /// When it reaches hosts.
    pub rollout: Rollout,
    /// Whether hosts may start it.
    pub state: ReleaseState,
}

/// What a host should do about a channel's index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice<'a> {
    /// Install this release now.
    Install(&'a Release),
    /// A release is wanted but its rollout reaches this host only at the Unix second.
    Wait(&'a Release, u64),
    /// Nothing to do.
    Nothing,
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
            s.push_str(&format!(
                "release={} {} {} {} {} {}\n",
                r.version,
                r.sha256,
                r.size,
                r.rollout.start,
                r.rollout.duration,
                r.state.as_str()
            ));
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
                    let [version, sha, size, start, duration, state] = f.as_slice() else {
                        return Err(bad(format!(
                            "release {value:?} needs version, sha256, size, rollout start, \
                             rollout duration and state"
                        )));
                    };
                    check_version(version).map_err(|e| bad(e.to_string()))?;
                    if releases.iter().any(|r: &Release| r.version == *version) {
                        return Err(bad(format!("release {version} given twice")));
                    }
                    let number = |n: &str, what: &str| {
                        n.parse::<u64>()
                            .map_err(|_| bad(format!("{n:?} is not a {what}")))
                    };
                    releases.push(Release {
                        version: (*version).to_owned(),
                        sha256: sha
                            .parse()
                            .map_err(|e: crate::digest::DigestParseError| bad(e.to_string()))?,
                        size: number(size, "size")?,
                        rollout: Rollout {
                            start: number(start, "rollout start")?,
                            duration: number(duration, "rollout duration")?,
                        },
                        state: ReleaseState::parse(state)
                            .ok_or_else(|| bad(format!("release state {state:?}")))?,
                    });
                    continue;
                }
                other => return Err(bad(format!("unknown key {other:?}"))),
            };
            if slot.replace(value.to_owned()).is_some() {
                return Err(bad(format!("{key} given twice")));
            }
        }
        if format.as_deref() != Some("3") {
            return Err(bad(format!(
                "format {} is not the format this host reads (3)",
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

    /// What a host running `current` with `machine_id` should do at Unix time `now`,
    /// skipping `skipped` versions (rolled back or refused there): install the highest
    /// active release above `current` (or, when the index allows downgrades and nothing is
    /// above, below it) whose rollout has reached the host; else wait for the earliest such
    /// release's turn.
    pub fn choose<'a>(
        &'a self,
        current: &str,
        skipped: &[String],
        machine_id: &[u8],
        now: u64,
    ) -> Choice<'a> {
        let mut wanted: Vec<&Release> = self
            .releases
            .iter()
            .filter(|r| r.state == ReleaseState::Active && !skipped.contains(&r.version))
            .filter(|r| compare_versions(&r.version, current) == Ordering::Greater)
            .collect();
        if wanted.is_empty() && self.allow_downgrade {
            wanted = self
                .releases
                .iter()
                .filter(|r| r.state == ReleaseState::Active && !skipped.contains(&r.version))
                .filter(|r| compare_versions(&r.version, current) == Ordering::Less)
                .collect();
        }
        wanted.sort_by(|a, b| compare_versions(&b.version, &a.version));
        let at = |r: &Release| r.rollout.eligible_at(machine_id, &r.version);
        if let Some(r) = wanted.iter().find(|r| at(r) <= now) {
            return Choice::Install(r);
        }
        wanted
            .into_iter()
            .min_by_key(|r| at(r))
            .map_or(Choice::Nothing, |r| Choice::Wait(r, at(r)))
    }

    /// The release named `version`, for changing its state.
    pub fn release_mut(&mut self, version: &str) -> Option<&mut Release> {
        self.releases.iter_mut().find(|r| r.version == version)
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
                    rollout: Rollout::default(),
                    state: ReleaseState::Active,
                })
                .collect(),
        }
    }

    const NOW: u64 = 1_950_000_000;

    fn chosen<'a>(i: &'a Index, current: &str, skipped: &[String]) -> Option<&'a str> {
        match i.choose(current, skipped, b"machine", NOW) {
            Choice::Install(r) => Some(r.version.as_str()),
            Choice::Wait(..) | Choice::Nothing => None,
        }
    }

    #[test]
    fn index_round_trips_with_releases_highest_first() {
        let mut i = index(false);
        i.release_mut("0.3.0").unwrap().rollout = Rollout {
            start: 1_900_000_100,
            duration: 86_400,
        };
        i.release_mut("0.2.0").unwrap().state = ReleaseState::Paused;
        let text = i.to_text();
        assert!(text.contains("release=0.3.0 ") && text.find("0.3.0") < text.find("0.1.0"));
        assert!(text.contains(" 1900000100 86400 active\n"), "{text}");
        assert!(text.contains(" 0 0 paused\n"), "{text}");
        let parsed = Index::parse(&text).unwrap();
        assert_eq!(parsed.releases[0].version, "0.3.0");
        assert_eq!(parsed.to_text(), text);
        assert!(Index::parse(&format!("{text}mirror=x\n")).is_err());
        assert!(Index::parse(&text.replace("format=3", "format=9")).is_err());
        assert!(Index::parse(&text.replace("format=3", "format=2")).is_err());
        assert!(Index::parse(&text.replace(" paused", " halted")).is_err());
        assert!(Index::parse(&text.replace(" 0 0 paused", " paused")).is_err());
        assert!(Index::parse(&text.replace("issued=1900000000\n", "")).is_err());
        assert!(Index::parse(&text.replace("issued=1900000000", "issued=2100000000")).is_err());
        assert!(Index::parse(&text.replace("channel=stable", "channel=Stable")).is_err());
        let twice = text.replace("release=0.1.0", "release=0.2.0");
        assert!(Index::parse(&twice).is_err(), "{twice}");
    }

    #[test]
    fn targets_go_up_and_down_only_when_allowed() {
        let i = index(false);
        assert_eq!(chosen(&i, "0.1.0", &[]), Some("0.3.0"));
        assert_eq!(chosen(&i, "0.1.0", &["0.3.0".into()]), Some("0.2.0"));
        assert_eq!(chosen(&i, "0.3.0", &[]), None);
        assert_eq!(chosen(&i, "0.4.0", &[]), None, "no downgrade");
        assert_eq!(chosen(&index(true), "0.4.0", &[]), Some("0.3.0"));
    }

    #[test]
    fn paused_and_pulled_releases_start_no_host() {
        let mut i = index(false);
        i.release_mut("0.3.0").unwrap().state = ReleaseState::Paused;
        assert_eq!(chosen(&i, "0.1.0", &[]), Some("0.2.0"));
        i.release_mut("0.2.0").unwrap().state = ReleaseState::Pulled;
        assert_eq!(chosen(&i, "0.1.0", &[]), None);
        assert_eq!(i.choose("0.1.0", &[], b"m", NOW), Choice::Nothing);
        // A host running a pulled release stays on it: nothing is lower it would take.
        assert_eq!(chosen(&i, "0.2.0", &[]), None);
    }

    #[test]
    fn a_rollout_spreads_hosts_over_its_duration_in_a_stable_order() {
        let rollout = Rollout {
            start: NOW,
            duration: 10_000,
        };
        let times: Vec<u64> = (0..200u32)
            .map(|m| rollout.eligible_at(&m.to_be_bytes(), "0.3.0"))
            .collect();
        assert!(times.iter().all(|t| (NOW..NOW + 10_000).contains(t)));
        let early = times.iter().filter(|t| **t < NOW + 5_000).count();
        assert!(
            (70..130).contains(&early),
            "{early} of 200 in the first half"
        );
        // The same host, the same place; another release, another place.
        assert_eq!(
            rollout.eligible_at(b"m1", "0.3.0"),
            rollout.eligible_at(b"m1", "0.3.0")
        );
        let first: Vec<bool> = (0..50u32)
            .map(|m| rollout.eligible_at(&m.to_be_bytes(), "0.3.0") < NOW + 5_000)
            .collect();
        let second: Vec<bool> = (0..50u32)
            .map(|m| rollout.eligible_at(&m.to_be_bytes(), "0.4.0") < NOW + 5_000)
            .collect();
        assert_ne!(first, second, "the order is the same for every release");
        assert_eq!(Rollout::default().eligible_at(b"m", "0.3.0"), 0);
    }

    #[test]
    fn a_host_waits_for_its_turn() {
        let mut i = index(false);
        let rollout = Rollout {
            start: NOW - 10,
            duration: 1 << 40,
        };
        i.release_mut("0.3.0").unwrap().rollout = rollout;
        match i.choose("0.2.0", &[], b"m", NOW) {
            Choice::Wait(r, at) => {
                assert_eq!(r.version, "0.3.0");
                assert_eq!(at, rollout.eligible_at(b"m", "0.3.0"));
                assert!(at > NOW);
            }
            other => panic!("{other:?}"),
        }
    }
}
