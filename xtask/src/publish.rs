//! `cargo xtask publish`: adds the last build's update bundle to an update repository, or
//! changes a published release's state (`--pause`, `--resume`, `--pull`). Either way the
//! channel's index is re-signed and issued anew (docs/UPDATES.md).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use crust_builder::repo::{Publish, StateChange, change_state, publish};
use crust_builder::report;
use crust_builder::sign::SigningKey;
use crust_format::repo::ReleaseState;

use crate::image;

/// What `publish` was asked.
#[derive(Debug, Clone)]
pub struct Options {
    /// The profile whose bundle (and key) is used.
    pub profile: String,
    /// The repository folder.
    pub repo: PathBuf,
    /// The channel.
    pub channel: String,
    /// Days until the index expires.
    pub valid_days: u64,
    /// Let hosts move to a lower version.
    pub allow_downgrade: bool,
    /// Seconds the rollout of a new release takes.
    pub rollout: u64,
    /// A state change instead of a new release: the version and its new state.
    pub change: Option<(String, ReleaseState)>,
    /// A key other than the profile's.
    pub key: Option<PathBuf>,
}

/// Parses a rollout duration: `0`, or a number with `s`, `m`, `h` or `d` (`90s`, `10m`,
/// `24h`, `7d`); at most a year.
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let bad = || format!("{text:?} is not a duration such as 0, 90s, 10m, 24h or 7d");
    if t == "0" {
        return Ok(0);
    }
    let (number, unit) = t.split_at(t.len().saturating_sub(1));
    let n: u64 = number.parse().map_err(|_| bad())?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    let seconds = n.checked_mul(scale).ok_or_else(bad)?;
    if seconds > 366 * 86_400 {
        return Err(format!("{text:?} is longer than a year"));
    }
    Ok(seconds)
}

/// Runs `publish`.
pub fn run(o: &Options) -> Result<()> {
    let path = image::profile_path(&o.profile);
    let profile = crust_builder::profile::Profile::load(&path)?;
    let build_key =
        crust_builder::build::signing_key(&profile, &image::crust_target().join("keys"))?;
    let built_with = build_key.public_key();
    let key = match &o.key {
        Some(k) => SigningKey::load(k)?,
        None => build_key,
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let valid_for = o.valid_days * 86_400;
    if let Some((version, state)) = &o.change {
        let index = change_state(
            &StateChange {
                repo: &o.repo,
                channel: &o.channel,
                version,
                state: *state,
                valid_for,
                now,
            },
            &key,
        )?;
        report::status(
            "Changed",
            format!(
                "{version} on channel {} of {} is {} (index issued {}, expires in {} days)",
                o.channel,
                o.repo.display(),
                state.as_str(),
                index.issued,
                o.valid_days
            ),
        );
        return Ok(());
    }
    let bundle = image::out_dir(&path).join(crust_builder::build::outputs::BUNDLE);
    if !bundle.is_file() {
        bail!(
            "{} does not exist; build it with `cargo xtask build --profile {}`",
            bundle.display(),
            profile.name
        );
    }
    let published = publish(
        &Publish {
            repo: &o.repo,
            bundle: &bundle,
            channel: &o.channel,
            valid_for,
            allow_downgrade: o.allow_downgrade,
            rollout: o.rollout,
            now,
            built_with: o.key.is_some().then_some(&built_with),
        },
        &key,
    )
    .with_context(|| format!("cannot publish {}", bundle.display()))?;
    let r = &published.release;
    let rollout = if r.rollout.duration == 0 {
        "to every host at once".to_owned()
    } else {
        format!(
            "rolling out over {} s from {}",
            r.rollout.duration, r.rollout.start
        )
    };
    report::status(
        "Published",
        format!(
            "{} on channel {} of {}, {rollout} ({} releases, index expires in {} days)",
            r.version,
            o.channel,
            o.repo.display(),
            published.index.releases.len(),
            o.valid_days
        ),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_in_every_unit() {
        assert_eq!(parse_duration("0"), Ok(0));
        assert_eq!(parse_duration("90s"), Ok(90));
        assert_eq!(parse_duration("10m"), Ok(600));
        assert_eq!(parse_duration("24h"), Ok(86_400));
        assert_eq!(parse_duration("7d"), Ok(604_800));
        for bad in [
            "",
            "10",
            "h",
            "1.5h",
            "-1h",
            "400d",
            "99999999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
