//! Publishing to an update repository: a folder of static files ([`crust_format::repo`])
//! that any HTTP server can serve.
//!
//! Publishing a bundle copies it in under its digest and rewrites the channel's index,
//! signed with the same key as the images (hosts check it with the key their own image
//! carries). An existing index is only extended if its signature checks out with that key,
//! so a repository never mixes releases from two keys by accident. Key rotation is a
//! release: an image built with the new key, published (index and bundle header re-signed)
//! with the old one; once hosts run it, publish with the new key (docs/UPDATES.md).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use crust_format::repo::{self, Index, Release, ReleaseState, Rollout};
use crust_format::version::compare_versions;

use crate::output::write_atomic;
use crate::sign::SigningKey;

/// What to publish and how.
#[derive(Debug, Clone)]
pub struct Publish<'a> {
    /// The repository folder.
    pub repo: &'a Path,
    /// The bundle file.
    pub bundle: &'a Path,
    /// The channel.
    pub channel: &'a str,
    /// Seconds from now until the index expires.
    pub valid_for: u64,
    /// Let hosts move to a lower version.
    pub allow_downgrade: bool,
    /// Seconds the release's rollout takes to reach every host (0: all at once); it starts
    /// when the index is issued.
    pub rollout: u64,
    /// The current time (Unix seconds).
    pub now: u64,
    /// The key the bundle was built with, when it is not the publishing key (key rotation:
    /// the bundle is checked with it, and its header re-signed with the publishing key).
    pub built_with: Option<&'a crust_format::signature::PublicKey>,
}

/// What was published.
#[derive(Debug, Clone)]
pub struct Published {
    /// The release added.
    pub release: Release,
    /// Where the bundle went.
    pub bundle: PathBuf,
    /// The new index.
    pub index: Index,
}

/// Adds a bundle to a channel of the repository.
pub fn publish(p: &Publish<'_>, key: &SigningKey) -> Result<Published> {
    repo::check_channel(p.channel).map_err(anyhow::Error::msg)?;
    let public = key.public_key();
    let check_with = p.built_with.unwrap_or(&public);
    let (header, mut sha256) = crate::bundle::verify(p.bundle, check_with).with_context(|| {
        format!(
            "{} is not a bundle signed by the build's key",
            p.bundle.display()
        )
    })?;
    // Re-signed for the publishing key when it differs (hosts check with the key they run).
    let resigned = if p.built_with.is_some_and(|k| *k != public) {
        let bytes = crate::bundle::resign(p.bundle, key)?;
        sha256 = crust_format::Digest::of(&bytes);
        Some(bytes)
    } else {
        None
    };
    let size = match &resigned {
        Some(b) => b.len() as u64,
        None => std::fs::metadata(p.bundle)?.len(),
    };

    let previous = read_index(p.repo, p.channel, key)?;
    let issued = next_issue(previous.as_ref(), p.now);
    let mut releases = previous.map(|i| i.releases).unwrap_or_default();
    let existing = releases
        .iter()
        .find(|r| r.version == header.version)
        .cloned();
    if let Some(existing) = &existing
        && existing.sha256 != sha256
    {
        bail!(
            "{} already offers {} {} with another bundle; raise the version (a version is never rebuilt in place)",
            p.channel,
            header.name,
            header.version
        );
    }
    // Publishing a release again renews the index; its rollout and state stay as they were.
    let release = existing.unwrap_or(Release {
        version: header.version.clone(),
        sha256,
        size,
        rollout: Rollout {
            start: issued,
            duration: p.rollout,
        },
        state: ReleaseState::Active,
    });
    releases.retain(|r| r.version != release.version);
    releases.push(release.clone());
    releases.sort_by(|a, b| compare_versions(&b.version, &a.version));

    let dest = p.repo.join(repo::bundle_path(&sha256));
    if !dest.exists() {
        std::fs::create_dir_all(dest.parent().unwrap_or(p.repo))?;
        match &resigned {
            Some(bytes) => write_atomic(&dest, bytes)?,
            None => crate::output::link_or_copy(p.bundle, &dest)?,
        }
    }
    let index = Index {
        channel: p.channel.to_owned(),
        issued,
        expires: issued + p.valid_for.max(1),
        allow_downgrade: p.allow_downgrade,
        releases,
    };
    write_index(p.repo, &index, key)?;
    Ok(Published {
        release,
        bundle: dest,
        index,
    })
}

/// A change of a published release's state (`cargo xtask publish --pause/--resume/--pull`).
#[derive(Debug, Clone)]
pub struct StateChange<'a> {
    /// The repository folder.
    pub repo: &'a Path,
    /// The channel.
    pub channel: &'a str,
    /// The release.
    pub version: &'a str,
    /// Its new state.
    pub state: ReleaseState,
    /// Seconds from now until the re-signed index expires.
    pub valid_for: u64,
    /// The current time (Unix seconds).
    pub now: u64,
}

/// Changes a release's state and re-signs the channel's index (issued anew, so hosts take
/// it over the one they have).
pub fn change_state(c: &StateChange<'_>, key: &SigningKey) -> Result<Index> {
    let Some(mut index) = read_index(c.repo, c.channel, key)? else {
        bail!(
            "{} has no {} channel to change (publish a release to it first)",
            c.repo.display(),
            c.channel
        );
    };
    let offered: Vec<String> = index.releases.iter().map(|r| r.version.clone()).collect();
    let Some(release) = index.release_mut(c.version) else {
        bail!(
            "the {} channel does not offer {} (it offers {})",
            c.channel,
            c.version,
            offered.join(", ")
        );
    };
    release.state = c.state;
    index.issued = next_issue(Some(&index), c.now);
    index.expires = index.issued + c.valid_for.max(1);
    write_index(c.repo, &index, key)?;
    Ok(index)
}

/// The channel's index in `repo`, if there is one, checked against `key` (a repository is
/// only ever extended by the key that signed it).
fn read_index(repo: &Path, channel: &str, key: &SigningKey) -> Result<Option<Index>> {
    repo::check_channel(channel).map_err(anyhow::Error::msg)?;
    let index_path = repo.join(repo::index_path(channel));
    let text = match std::fs::read(&index_path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", index_path.display())),
    };
    let sig = std::fs::read(repo.join(repo::signature_path(channel))).unwrap_or_default();
    key.public_key().verify(&text, &sig).map_err(|e| {
        anyhow::anyhow!(
            "{} is not signed by {} ({e}); it belongs to another key: publish to a new channel or repository",
            index_path.display(),
            key.path.display()
        )
    })?;
    Index::parse(std::str::from_utf8(&text)?)
        .with_context(|| format!("{} cannot be extended", index_path.display()))
        .map(Some)
}

/// The issue time of the next index: now, and after the last one (hosts refuse an index
/// older than the newest they accepted, so even two publications in one second differ).
fn next_issue(previous: Option<&Index>, now: u64) -> u64 {
    previous.map_or(now, |old| now.max(old.issued + 1))
}

/// Writes the index and its signature (each atomically; the signature last, so a host that
/// reads both in between sees a mismatch and tries again, never a wrongly trusted index).
fn write_index(repo: &Path, index: &Index, key: &SigningKey) -> Result<()> {
    let text = index.to_text();
    write_atomic(
        &repo.join(repo::index_path(&index.channel)),
        text.as_bytes(),
    )?;
    write_atomic(
        &repo.join(repo::signature_path(&index.channel)),
        &key.sign(text.as_bytes()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::{Contents, write};
    use crust_format::Digest;

    fn bundle(dir: &Path, key: &SigningKey, version: &str) -> PathBuf {
        let path = dir.join(format!("{version}.bundle"));
        write(
            &path,
            &Contents {
                layout: 1,
                name: "crust",
                version,
                root_hash: Digest::of(version.as_bytes()),
                root: &[0u8; 4096],
                verity: &[0u8; 4096],
                uki: version.as_bytes(),
                sbom: b"{}",
            },
            key,
        )
        .unwrap();
        path
    }

    #[test]
    fn publishing_adds_releases_and_signs_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::development(&dir.path().join("k")).unwrap();
        let repo_dir = dir.path().join("repo");
        for v in ["0.1.0", "0.2.0"] {
            let b = bundle(dir.path(), &key, v);
            publish(
                &Publish {
                    repo: &repo_dir,
                    bundle: &b,
                    channel: "stable",
                    valid_for: 3600,
                    allow_downgrade: false,
                    rollout: 0,
                    now: 1000,
                    built_with: None,
                },
                &key,
            )
            .unwrap();
        }
        let text = std::fs::read(repo_dir.join("channels/stable.index")).unwrap();
        let sig = std::fs::read(repo_dir.join("channels/stable.index.sig")).unwrap();
        key.public_key().verify(&text, &sig).unwrap();
        let index = Index::parse(std::str::from_utf8(&text).unwrap()).unwrap();
        assert_eq!(index.releases.len(), 2);
        assert_eq!(index.releases[0].version, "0.2.0");
        // Two publications in the same second: the second is issued one second later, so
        // hosts that saw the first accept it and refuse the first from then on.
        assert_eq!(index.issued, 1001);
        assert_eq!(index.expires, 4601);
        assert!(
            repo_dir
                .join(repo::bundle_path(&index.releases[0].sha256))
                .is_file()
        );

        // Another key cannot extend this channel.
        let other = SigningKey::development(&dir.path().join("other")).unwrap();
        let b = bundle(dir.path(), &other, "0.3.0");
        let err = publish(
            &Publish {
                repo: &repo_dir,
                bundle: &b,
                channel: "stable",
                valid_for: 3600,
                allow_downgrade: false,
                rollout: 0,
                now: 1000,
                built_with: None,
            },
            &other,
        )
        .unwrap_err();
        assert!(err.to_string().contains("not signed by"), "{err}");
    }
}
