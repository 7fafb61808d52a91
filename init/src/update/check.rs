//! One check of the update channel, from the index to the installed slot, on a thread of
//! its own: the download and the writes take seconds to minutes, and PID 1's main loop must
//! keep reaping, supervising services and answering the power button meanwhile.
//!
//! The thread owns everything it uses (a [`Checker`] is a copy of the agent's settings and
//! boot facts) and never starts a process: PID 1's loop reaps every child, and a process
//! this thread waited for could be reaped from under it. A shutdown [`Cancel`]s the check;
//! it stops at its next step (every write of the download, between the parts of the
//! install), which the install's order makes safe, and the next boot starts over.
//!
//! Order of a check: the index is judged ([`super::index`]) and recorded as the newest
//! accepted; the release is picked (never one that rolled back or was refused); room on
//! `/var` is made (superseded downloads removed) and checked; the bundle is downloaded,
//! hashed on the way against the signed index, and checked as a stream
//! ([`super::bundle`]); the parts are measured against the other slot's partitions and
//! the ESP's room; only then does [`install`] touch the disk. A bundle refused after its
//! download matched the signed index is refused for good: the refusal is recorded and the
//! version never fetched again.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crust_format::Digest;
use crust_format::boot_entry::BootEntryName;
use crust_format::repo::{self, Choice, Index, ReleaseState};
use crust_format::signature::PublicKey;

use super::record::{self, Pending, Records};
use super::{Booted, Settings, bundle, index, install, say, unix_now};
use crate::error::{Context, Error, Result};
use crate::fleet::{self, Fleet};
use crate::http::Bounds;
use crate::http::client::Client;

/// What a cancelled check fails with.
pub(super) const STOPPED: &str =
    "stopped: the host is going down (the next boot starts the update over)";
/// How long one network step may wait.
const STEP: Duration = Duration::from_secs(10);
/// The whole exchange for an index or its signature.
const INDEX_DEADLINE: Duration = Duration::from_secs(60);
/// A bundle download's deadline: this, plus its size at [`MIN_RATE`].
const BUNDLE_BASE: Duration = Duration::from_secs(60);
/// The slowest download rate a bundle's deadline allows for, bytes per second.
const MIN_RATE: u64 = 32 << 10;
/// Largest index accepted.
const MAX_INDEX: u64 = 1 << 20;
/// Room left free on `/var` beyond a download.
const SPARE: u64 = 16 << 20;

/// Set when the host is going down; the check stops at its next step.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    /// Asks the check to stop.
    pub fn set(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether the check was asked to stop.
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// Fails once the check was asked to stop.
    pub fn check(&self) -> Result<()> {
        if self.is_set() {
            Err(Error::new("update", STOPPED))
        } else {
            Ok(())
        }
    }
}

/// What a check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checked {
    /// A newer version is installed in the other slot and waits for a reboot.
    Installed,
    /// Nothing to install, and why (up to date, a downgrade refused).
    Nothing(String),
    /// The release's signed bundle cannot be taken by this host (recorded; not retried).
    Refused(String),
    /// The index checked out (a trial boot's proof that it can update).
    IndexVerified(String),
    /// A release is rolling out and reaches this host at the Unix second.
    Waiting(String, u64),
}

/// Everything one check needs, owned, so that it can run on its own thread.
#[derive(Debug, Clone)]
pub struct Checker {
    /// The repository and channel.
    pub settings: Settings,
    /// The image's key, which signs indexes and bundles.
    pub key: PublicKey,
    /// The running system.
    pub booted: Booted,
    /// The agent's records (failed versions, the pending update).
    pub records: Records,
    /// Set at shutdown.
    pub cancel: Cancel,
    /// The fleet this host coordinates its reboots with, if any.
    pub fleet: Option<Fleet>,
    /// What happened since the last check, for the fleet status (`blessed`, `rolled-back`).
    pub event: Option<(String, String)>,
    /// How the repository is reached (proxies, extra authorities).
    pub client: Client,
}

/// How often a host waiting for a reboot slot asks again.
pub const SLOT_RETRY: Duration = Duration::from_secs(10);

impl Checker {
    /// Puts this host's status in the fleet (best effort: a status is refreshed at every
    /// check, so a failure costs nothing but a log line).
    fn report(&self, state: &str, detail: &str) {
        let Some(fleet) = &self.fleet else { return };
        let status = fleet::Status {
            version: self.booted.manifest.version.clone(),
            slot: self.booted.slot.as_str().into(),
            state: state.into(),
            detail: detail.into(),
            last_check: unix_now(),
        };
        match fleet.report(&status) {
            Err(e) if fleet.report_changed(true) => {
                say(&format!("cannot report to the fleet: {e}"));
            }
            Ok(()) if fleet.report_changed(false) => say("reporting to the fleet again"),
            _ => {}
        }
    }

    /// Gives back a reboot slot still held from an update that has settled (blessed, or
    /// rolled back).
    fn settle_slot(&self) {
        let Some(fleet) = &self.fleet else { return };
        match fleet.release() {
            Ok(Some(held)) => say(&format!(
                "gave back reboot slot {} of fleet group {}",
                held.slot,
                fleet.settings().group
            )),
            Ok(None) => {}
            Err(e) => say(&format!(
                "cannot give back the reboot slot ({e}); it expires with its lease"
            )),
        }
    }

    /// Before an update reboot: takes one of the group's reboot slots. `Ok(None)` without a
    /// fleet; `Ok(Some(Busy))` when every slot is held (the caller asks again).
    pub fn acquire_slot(&self) -> Result<Option<fleet::Acquired>> {
        let Some(fleet) = &self.fleet else {
            return Ok(None);
        };
        let group = &fleet.settings().group;
        let acquired = fleet.acquire().map_err(|e| {
            Error::new(
                "update",
                format!(
                    "{e}: not rebooting for the update until the fleet (group {group}) gives a \
                     reboot slot"
                ),
            )
        })?;
        match &acquired {
            fleet::Acquired::Taken(held) => {
                let line = format!(
                    "took reboot slot {} of {} in fleet group {group}",
                    held.slot,
                    fleet.settings().max_rebooting
                );
                say(&line);
                self.report("rebooting", &line);
            }
            fleet::Acquired::Busy(holders) => {
                let line = format!(
                    "waiting for a reboot slot in fleet group {group} (max-rebooting {}): held \
                     by {}",
                    fleet.settings().max_rebooting,
                    holders.join(", ")
                );
                self.report("waiting", &line);
            }
        }
        Ok(Some(acquired))
    }

    /// Fetches the channel's index and judges it; records it as the newest accepted.
    fn index(&self) -> Result<Index> {
        let s = &self.settings;
        let fetch = |rel: &str, limit: u64| -> Result<Vec<u8>> {
            let mut body = Vec::new();
            let bounds = Bounds::new(STEP, INDEX_DEADLINE);
            self.client
                .get(&s.repository.with_path(rel), bounds, limit, &mut body)
                .map_err(|e| Error::new("update", format!("{rel}: {e}")))?;
            Ok(body)
        };
        let text = fetch(&repo::index_path(&s.channel), MAX_INDEX)?;
        let sig = fetch(&repo::signature_path(&s.channel), 64)?;
        let (index, accepted) = index::judge(
            &text,
            &sig,
            &self.key,
            &s.channel,
            self.records.accepted(&s.channel),
            unix_now(),
        )
        .map_err(|r| Error::new("update", r.0))?;
        self.records
            .accept(&s.channel, accepted)
            .context("update", || "cannot record the accepted index".into())?;
        Ok(index)
    }

    /// Fetches and judges the index only: the proof a trial boot gives before it is
    /// blessed that it can still reach its repository and trust what it serves.
    pub fn probe(&self) -> Result<Checked> {
        if let Some(fleet) = &self.fleet
            && fleet.held().is_some()
        {
            match fleet.renew() {
                Ok(true) => {}
                Ok(false) => say(
                    "the reboot slot's lease had expired: another host of the fleet may be \
                     rebooting too",
                ),
                Err(e) => say(&format!("cannot renew the reboot slot's lease: {e}")),
            }
        }
        let index = self.index()?;
        let n = index.releases.len();
        Ok(Checked::IndexVerified(format!(
            "the {} index checks out (issued {}, {n} release{})",
            index.channel,
            crate::clock::format_utc(i64::try_from(index.issued).unwrap_or(i64::MAX)),
            if n == 1 { "" } else { "s" }
        )))
    }

    /// Checks the channel and installs what it offers. On a full `/var` the agent's reserve
    /// gives room only at the moment it is written to (a record, a download), never for a
    /// whole check: a service still filling the disk would take room freed early. The
    /// reserve is made whole again afterwards, when there is room.
    pub fn check(&self) -> Result<Checked> {
        // A check runs only once the running version is settled: any slot still held is
        // from an update that was blessed or rolled back.
        self.settle_slot();
        let outcome = self.check_channel();
        self.records.keep_reserve();
        let (state, detail) = match &outcome {
            Ok(Checked::Installed) => (
                "installed".to_owned(),
                "an update waits for its reboot".to_owned(),
            ),
            Ok(Checked::Nothing(why)) => match &self.event {
                Some((state, detail)) => (state.clone(), format!("{detail}; {why}")),
                None => ("idle".to_owned(), why.clone()),
            },
            Ok(Checked::Waiting(why, _)) => ("eligible".to_owned(), why.clone()),
            Ok(Checked::Refused(why)) => ("refused".to_owned(), why.clone()),
            Ok(Checked::IndexVerified(why)) => ("idle".to_owned(), why.clone()),
            Err(e) => ("error".to_owned(), e.message.clone()),
        };
        self.report(&state, &detail);
        outcome
    }

    fn check_channel(&self) -> Result<Checked> {
        let s = &self.settings;
        let index = self.index()?;
        let running = &self.booted.manifest.version;
        let skipped = self.records.skipped();
        let machine = machine_id();
        let release = match index.choose(running, &skipped, machine.as_bytes(), unix_now()) {
            Choice::Install(release) => release.clone(),
            Choice::Wait(release, at) => {
                return Ok(Checked::Waiting(
                    format!(
                        "{} is rolling out on channel {}: this host's turn comes at {} (in \
                         {} s); running {running}",
                        release.version,
                        s.channel,
                        crate::clock::format_utc(i64::try_from(at).unwrap_or(i64::MAX)),
                        at.saturating_sub(unix_now())
                    ),
                    at,
                ));
            }
            Choice::Nothing => {
                return Ok(Checked::Nothing(nothing_to_do(&index, running, &skipped)));
            }
        };
        let found = format!(
            "found {} on channel {} ({} bytes); running {running}",
            release.version, s.channel, release.size
        );
        say(&found);
        self.report("downloading", &found);
        let started = Instant::now();
        let path = self.download(&release)?;
        say(&format!(
            "downloaded {} bytes in {:.1} s; checking every digest and the signature",
            release.size,
            started.elapsed().as_secs_f64()
        ));
        // The file is what the signed index names: what is wrong with it now is wrong with
        // the release, and stays wrong.
        let refuse = |why: String| -> Result<Checked> {
            let _ = std::fs::remove_file(&path);
            let line = format!(
                "bundle {}: {why}; refused, nothing written (not tried again)",
                release.version
            );
            self.records
                .add_refused(&release.version, &why)
                .context("update", || "cannot record the refusal".into())?;
            Ok(Checked::Refused(line))
        };
        let verified =
            match bundle::verify(&path, &self.key, &self.booted.manifest, &release.version) {
                Ok(v) => v,
                Err(why) => return refuse(why),
            };
        let target = install::find(&self.booted.disk, self.booted.slot.other())?;
        // Everything but the running version's UKI goes: that is what the other slot held
        // (or a failed version's leftovers).
        let keep_version = running.clone();
        let keep = move |e: &BootEntryName| e.version == keep_version;
        if let Err(why) = install::fits(&verified.header, &target, &keep)? {
            return refuse(why);
        }
        say(&format!(
            "writing {} into slot {}",
            release.version,
            target.slot.as_str()
        ));
        self.cancel.check()?;
        let installed = install::install(
            &path,
            &verified,
            &target,
            &keep,
            &self.booted.devices,
            &self.cancel,
        )?;
        self.records
            .set_pending(&Pending {
                version: release.version.clone(),
                slot: target.slot.as_str().into(),
                from: running.clone(),
            })
            .context("update", || "cannot record the installed update".into())?;
        let _ = std::fs::remove_file(&path);
        say(&format!(
            "{} installed in slot {} as {} ({} bytes written{}) in {:.1} s; init peak \
             resident {}",
            release.version,
            target.slot.as_str(),
            installed.entry.file_name(),
            installed.written,
            if installed.removed.is_empty() {
                String::new()
            } else {
                format!(", removed {}", installed.removed.join(" "))
            },
            started.elapsed().as_secs_f64(),
            crate::memory::peak_resident()
        ));
        Ok(Checked::Installed)
    }

    /// Downloads a release's bundle to `/var` (streamed, hashed on the way, within a
    /// deadline that grows with its size); an already complete download is reused. Every
    /// other file in the download folder (a superseded or partial download) goes first, and
    /// the download needs room for itself and a spare.
    fn download(&self, release: &repo::Release) -> Result<PathBuf> {
        let dir = self.records.downloads();
        std::fs::create_dir_all(&dir)
            .context("update", || format!("cannot create {}", dir.display()))?;
        let name = format!("{}.bundle", release.sha256);
        let path = dir.join(&name);
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if entry.file_name() != name.as_str() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        if bundle::file_digest(&path).is_some_and(|d| d == release.sha256) {
            return Ok(path);
        }
        let mut free = record::free_bytes(&dir).unwrap_or(u64::MAX);
        if free < release.size.saturating_add(SPARE)
            && self
                .records
                .release_reserve_if(release.size.saturating_add(SPARE))
        {
            say(&format!(
                "/var has too little room: released the update agent's reserve ({} MiB)",
                record::RESERVE >> 20
            ));
            free = record::free_bytes(&dir).unwrap_or(u64::MAX);
        }
        if free < release.size.saturating_add(SPARE) {
            return Err(Error::new(
                "update",
                format!(
                    "not enough room on /var for the {} bundle: it needs {} MiB, {} MiB are \
                     free; free space on the state partition (or give the disk more)",
                    release.version,
                    (release.size + SPARE) >> 20,
                    free >> 20
                ),
            ));
        }
        let partial = dir.join("partial");
        let mut file = std::fs::File::create(&partial)
            .context("update", || format!("cannot create {}", partial.display()))?;
        let mut hashing = HashingWriter::new(&mut file, &self.cancel);
        let deadline = BUNDLE_BASE + Duration::from_secs(release.size / MIN_RATE);
        let fetched = self.client.get(
            &self
                .settings
                .repository
                .with_path(&repo::bundle_path(&release.sha256)),
            Bounds::new(STEP, deadline),
            release.size,
            &mut hashing,
        );
        let (bytes, digest) = hashing.finish();
        if let Err(e) = fetched {
            let _ = std::fs::remove_file(&partial);
            return Err(Error::new(
                "update",
                format!("bundle {}: {e}", release.version),
            ));
        }
        if bytes != release.size || digest != release.sha256 {
            let _ = std::fs::remove_file(&partial);
            return Err(Error::new(
                "update",
                format!(
                    "the bundle of {} does not match the signed index (got {bytes} bytes, {}); refused, nothing written",
                    release.version,
                    digest.short(12)
                ),
            ));
        }
        file.sync_all()
            .context("update", || "cannot sync the download".into())?;
        std::fs::rename(&partial, &path).context("update", || "cannot keep the download".into())?;
        // The rename must survive a power cut too, or the next boot downloads it again.
        std::fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .context("update", || "cannot sync the download folder".into())?;
        Ok(path)
    }
}

/// This host's machine id (`/etc/machine-id`, made on the first boot and kept in `/var`):
/// its place in every rollout derives from it.
fn machine_id() -> String {
    std::fs::read_to_string("/etc/machine-id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// Why there is nothing to install, for the log.
fn nothing_to_do(index: &Index, running: &str, skipped: &[String]) -> String {
    let newest = index
        .releases
        .first()
        .map_or("nothing".to_owned(), |r| r.version.clone());
    let state = index.releases.first().map(|r| r.state);
    if crust_format::version::compare_versions(&newest, running) == std::cmp::Ordering::Greater {
        match state {
            Some(ReleaseState::Paused) => {
                return format!(
                    "{newest} is paused on this channel: not starting it (running {running})"
                );
            }
            Some(ReleaseState::Pulled) => {
                return format!(
                    "{newest} was pulled from this channel: not installing it (running {running})"
                );
            }
            _ => {}
        }
    }
    let newer =
        crust_format::version::compare_versions(&newest, running) == std::cmp::Ordering::Greater;
    if newer && skipped.contains(&newest) {
        format!(
            "nothing to install: the channel's newest, {newest}, rolled back or was refused on \
             this host before (running {running})"
        )
    } else if crust_format::version::compare_versions(&newest, running) == std::cmp::Ordering::Less
    {
        format!(
            "the channel offers {newest}, older than {running}: downgrades are refused unless the index allows them"
        )
    } else {
        format!("up to date ({running}; the channel's newest is {newest})")
    }
}

/// Hashes what is written through it; fails once the check is cancelled.
struct HashingWriter<'a> {
    inner: &'a mut std::fs::File,
    cancel: &'a Cancel,
    hasher: sha2::Sha256,
    bytes: u64,
}

impl<'a> HashingWriter<'a> {
    fn new(inner: &'a mut std::fs::File, cancel: &'a Cancel) -> Self {
        use sha2::Digest as _;
        Self {
            inner,
            cancel,
            hasher: sha2::Sha256::new(),
            bytes: 0,
        }
    }

    fn finish(self) -> (u64, Digest) {
        use sha2::Digest as _;
        (self.bytes, Digest(self.hasher.finalize().into()))
    }
}

impl Write for HashingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        use sha2::Digest as _;
        if self.cancel.is_set() {
            return Err(std::io::Error::other(STOPPED));
        }
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
