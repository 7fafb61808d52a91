//! What the sealed `/var` costs at boot, on this machine's accelerator.
//!
//! The bench profile is built twice with `[secure-boot]` (the development key set):
//! `[state] encryption = "none"` and `"tpm"`. Both boot under OVMF's Secure Boot firmware
//! with the keys enrolled and a TPM (swtpm): the unencrypted image once, the encrypted one
//! twice on one disk and TPM — its first boot makes, seals and formats, its second unseals
//! and opens, as every later boot does. Each boot is a fresh machine (overlay, variable
//! store, TPM) but the second encrypted one, which reuses the first's.
//!
//! The figure is the `state` phase: guest seconds from `stage2` to `state`. The
//! differences to the unencrypted boot are the cost; the init's own timings from the state
//! line (waiting for the kernel's generator, sealing, unsealing, dm-crypt, `mke2fs`) say
//! where it goes.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use crust_builder::build::{BuildRequest, outputs};
use crust_builder::fetch::Cache;
use crust_builder::profile::Profile;
use crust_builder::report as say;
use crust_builder::secureboot::{KeySet, Role};
use crust_format::phase::Phase;
use crust_vm::Accel;
use serde::{Deserialize, Serialize};

use super::boot::{self, Boot, Until};
use super::stats::Series;
use super::timeline::{TimedLine, Timeline};
use crate::{host, image};

/// The sealed `/var`'s boot figures (medians over the runs, seconds unless in ms).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SealedTimes {
    /// The accelerator.
    pub accelerator: String,
    /// Boots of each kind.
    pub boots: usize,
    /// The `state` phase (from `stage2`) of the unencrypted image.
    pub plain: Series,
    /// The same of the encrypted image's first boot.
    pub first: Series,
    /// The same of its later boot.
    pub later: Series,
    /// `first - plain` (medians).
    pub first_cost: f64,
    /// `later - plain` (medians): what every boot of an encrypted host pays.
    pub later_cost: f64,
    /// First boot: milliseconds waited for the kernel's generator to be seeded.
    pub random_wait_ms: Option<Series>,
    /// First boot: milliseconds to seal the key and unseal it again (the check).
    pub seal_ms: Option<Series>,
    /// First boot: milliseconds of `mke2fs` inside dm-crypt.
    pub mkfs_ms: Option<Series>,
    /// Later boot: milliseconds to unseal the key.
    pub unseal_ms: Option<Series>,
    /// Later boot: milliseconds to set up dm-crypt.
    pub dm_crypt_ms: Option<Series>,
}

/// The number after `label` in `text` (`"sealed in 41 ms"` → 41 with label `"sealed in "`).
pub fn number_after(text: &str, label: &str) -> Option<f64> {
    let rest = &text[text.find(label)? + label.len()..];
    let digits: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    digits.parse().ok()
}

/// One boot's `stage2`→`state` seconds and its state line.
fn state_phase(lines: &[TimedLine]) -> Option<(f64, String)> {
    let t = Timeline::read(lines, &[]);
    let seconds = t.phase(Phase::State)? - t.phase(Phase::Stage2)?;
    let line = lines
        .iter()
        .find(|l| l.text.contains("crust: state: "))?
        .text
        .clone();
    Some((seconds, line))
}

/// Writes a variant of `profile` with `[secure-boot]` and `encryption` next to a copy of its
/// lock (the packages are the same) in `dir`; returns the variant's path.
fn variant(profile: &Profile, dir: &Path, encryption: &str) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("sealed-{encryption}.toml"));
    std::fs::write(
        &path,
        format!(
            "include = \"{}\"\n\n[secure-boot]\nenroll = \"force\"\n\n[state]\nencryption = \
             \"{encryption}\"\n",
            profile.path.canonicalize()?.display()
        ),
    )?;
    std::fs::copy(profile.lock_path(), path.with_extension("lock"))
        .with_context(|| format!("cannot copy {}", profile.lock_path().display()))?;
    Ok(path)
}

/// Builds both variants, boots them `iterations` times each, and returns the figures.
pub fn measure(
    profile: &Profile,
    init: &Path,
    work: &Path,
    accel: Accel,
    iterations: usize,
) -> Result<SealedTimes> {
    let dir = work.join("sealed");
    let keys_dir = image::crust_target().join("keys");
    let build = |encryption: &str| -> Result<PathBuf> {
        let path = variant(profile, &dir, encryption)?;
        say::status("Bench", format!("sealed /var: {encryption} image"));
        let out = dir.join(format!("out-{encryption}"));
        crust_builder::build::build(&BuildRequest {
            profile: path,
            init: init.to_path_buf(),
            out_dir: out.clone(),
            dev_key_dir: keys_dir.clone(),
            cache: Cache::new(Cache::default_root()),
            locked: true,
            source_date_epoch: None,
            init_crates: Some(image::init_crates()?),
            observe: Some(image::observe_program(init)?),
            extras: Default::default(),
        })?;
        Ok(out.join(outputs::IMAGE))
    };
    let plain = build("none")?;
    let sealed = build("tpm")?;
    let keys = KeySet::development(&keys_dir)?;
    let store = dir.join("enrolled.fd");
    let owner = keys.owner().to_string();
    crust_vm::firmware::enrolled_store(
        &host::uefi_tools()?.virt_fw_vars,
        &crust_vm::firmware::Enrolment {
            owner: &owner,
            pk: &keys.certificate(Role::Pk),
            kek: &keys.certificate(Role::Kek),
            db: &keys.certificate(Role::Db),
        },
        &store,
    )?;

    let mut runs: [Vec<(f64, String)>; 3] = Default::default();
    for i in 0..iterations {
        for (kind, disk, fresh) in [(0, &plain, true), (1, &sealed, true), (2, &sealed, false)] {
            let what = [
                "unencrypted",
                "encrypted, first boot",
                "encrypted, later boot",
            ][kind];
            say::status(
                "Bench",
                format!("sealed /var: boot {}/{iterations}, {what} ({accel})", i + 1),
            );
            let machine = dir.join(if kind == 0 {
                "plain-boot"
            } else {
                "sealed-boot"
            });
            if fresh {
                let _ = std::fs::remove_dir_all(&machine);
            }
            let capture = boot::run(&Boot {
                disk,
                work: &machine,
                accel,
                demo_port: None,
                until: Until::Up,
                secure_boot: Some(&store),
                tpm: Some(&machine.join("tpm")),
                keep_disk: !fresh,
            })?;
            runs[kind].push(state_phase(&capture.lines).with_context(|| {
                format!(
                    "the {what} boot printed no stage2 and state lines (see {})",
                    machine.join("console.log").display()
                )
            })?);
        }
    }
    let series = |kind: usize| {
        Series::of(runs[kind].iter().map(|(s, _)| *s).collect()).context("no boot measured")
    };
    let detail = |kind: usize, label: &str| {
        Series::of(
            runs[kind]
                .iter()
                .filter_map(|(_, line)| number_after(line, label))
                .collect(),
        )
    };
    let (plain, first, later) = (series(0)?, series(1)?, series(2)?);
    Ok(SealedTimes {
        accelerator: accel.as_str().into(),
        boots: iterations,
        first_cost: first.median - plain.median,
        later_cost: later.median - plain.median,
        random_wait_ms: detail(1, "generator was ready after "),
        seal_ms: detail(1, "sealed in "),
        mkfs_ms: detail(1, "ext4 made in "),
        unseal_ms: detail(2, "key unsealed in "),
        dm_crypt_ms: detail(2, "opened in "),
        plain,
        first,
        later,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_line_gives_its_timings() {
        let first = "[    4.8] crust: state: /dev/vda6 encrypted (as /dev/dm-1: new key (the kernel's \
                     generator was ready after 1019 ms) sealed in 98 ms to PCR 7; dm-crypt \
                     aes-xts-plain64 opened in 23 ms; ext4 made in 223 ms), ext4 on /var";
        assert_eq!(
            number_after(first, "generator was ready after "),
            Some(1019.0)
        );
        assert_eq!(number_after(first, "sealed in "), Some(98.0));
        assert_eq!(number_after(first, "opened in "), Some(23.0));
        assert_eq!(number_after(first, "ext4 made in "), Some(223.0));
        assert_eq!(number_after(first, "key unsealed in "), None);
        let lines: Vec<TimedLine> = [
            "[    3.240000] crust: stage2: crust-init 0.1.0",
            "[    3.700000] crust: state: /dev/vda6 encrypted (as /dev/dm-1: key unsealed in 34 ms",
        ]
        .iter()
        .enumerate()
        .map(|(i, t)| TimedLine {
            at: i as f64,
            text: (*t).into(),
        })
        .collect();
        let (seconds, line) = state_phase(&lines).unwrap();
        assert!((seconds - 0.46).abs() < 1e-9, "{seconds}");
        assert_eq!(number_after(&line, "key unsealed in "), Some(34.0));
    }
}
