//! The update agent: a task of PID 1's main loop that keeps the host on the newest version
//! its channel offers, and blesses or rolls back the boots that follow an update.
//!
//! Every boot it first settles the last update: a boot from a UKI with boot counters is an
//! update on trial, blessed (its counter dropped) once every service's health check passed,
//! or ended by a reboot if that takes longer than the health timeout (systemd-boot then
//! tries it again until its tries run out and falls back to the previous version). A
//! recorded update that is not the running version rolled back: it is reported and never
//! tried again.
//!
//! With a repository configured (user-data `[update]`), it then checks the channel at boot
//! and every interval (plus up to a tenth at random): the index's signature (the image's
//! own key) and expiry, the highest version above the running one (lower only if the index
//! allows it), the bundle downloaded to `/var` and checked in full (signature, every digest)
//! before anything is written, then [`install`] into the other slot, and a reboot now or
//! in the configured window.

mod esp;
mod install;
mod record;

use std::cell::Cell;
use std::io::Write;
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crust_format::boot_entry::BootEntryName;
use crust_format::bundle::{self, Header};
use crust_format::layout::Slot;
use crust_format::repo::{self, Index};
use crust_format::signature::PublicKey;
use crust_format::{Digest, Manifest};

use crate::console;
use crate::error::{Context, Error, Result};
use crate::event::{Control, Task};
use crate::http::{self, Url};
use crate::shutdown::Action;
use record::{Pending, Records};

/// The update settings the configuration step leaves (`key=value` lines).
pub const RUN_UPDATE: &str = "/run/crust/update";
/// The update log.
const LOG: &str = "/var/log/crust/update.log";
/// How long a network step may wait.
const NET_TIMEOUT: Duration = Duration::from_secs(10);
/// Health timeout when no configuration names one.
const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(300);
/// First retry after a failed check (doubling up to the interval).
const RETRY: Duration = Duration::from_secs(30);

/// When an installed update may reboot the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RebootWindow {
    /// At once.
    Now,
    /// Daily, between two UTC times (minutes after midnight; may wrap past midnight).
    Daily(u32, u32),
}

impl RebootWindow {
    /// Parses `now` or `HH:MM-HH:MM`.
    pub fn parse(s: &str) -> Option<Self> {
        if s == "now" {
            return Some(RebootWindow::Now);
        }
        let minutes = |t: &str| -> Option<u32> {
            let (h, m) = t.split_once(':')?;
            let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
            (h < 24 && m < 60).then_some(h * 60 + m)
        };
        let (a, b) = s.split_once('-')?;
        Some(RebootWindow::Daily(minutes(a)?, minutes(b)?))
    }

    /// Whether a reboot may happen at `unix` seconds (UTC).
    pub fn open(self, unix: u64) -> bool {
        let now = ((unix / 60) % 1440) as u32;
        match self {
            RebootWindow::Now => true,
            RebootWindow::Daily(a, b) if a <= b => (a..b).contains(&now),
            RebootWindow::Daily(a, b) => now >= a || now < b,
        }
    }
}

/// The agent's settings (`/run/crust/update`).
#[derive(Debug, Clone)]
struct Settings {
    repository: Url,
    channel: String,
    interval: Duration,
    reboot: RebootWindow,
    health_timeout: Duration,
}

impl Settings {
    fn read() -> Option<std::result::Result<Self, String>> {
        let text = std::fs::read_to_string(RUN_UPDATE).ok()?;
        let get = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .map(str::to_owned)
        };
        let parse = || -> std::result::Result<Self, String> {
            let repository = Url::parse(&get("repository").ok_or("no repository")?)?;
            let secs = |k: &str, d: u64| get(k).and_then(|v| v.parse().ok()).unwrap_or(d);
            Ok(Settings {
                repository,
                channel: get("channel").unwrap_or_else(|| "stable".into()),
                interval: Duration::from_secs(secs("interval", 3600).max(10)),
                reboot: get("reboot")
                    .as_deref()
                    .and_then(RebootWindow::parse)
                    .unwrap_or(RebootWindow::Now),
                health_timeout: Duration::from_secs(secs("health-timeout", 300)),
            })
        };
        Some(parse())
    }
}

/// What the boot facts say about where this boot came from.
#[derive(Debug, Clone)]
pub struct Booted {
    /// The running manifest.
    pub manifest: Manifest,
    /// The slot booted.
    pub slot: Slot,
    /// The boot disk's kernel name.
    pub disk: String,
    /// The device nodes under `/` (never written).
    pub devices: Vec<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Waiting for the boot to become healthy (a trial boot ends in a reboot at the
    /// deadline); the flag is looked at again at `next`.
    AwaitHealthy {
        deadline: Option<Instant>,
        next: Instant,
    },
    /// Checking the channel at the instant.
    Idle { next: Instant },
    /// An update is installed; rebooting in the window.
    RebootPending { next: Instant },
    /// Nothing more to do this boot.
    Done,
}

/// The update agent task.
#[derive(Debug)]
pub struct Updater {
    booted: Booted,
    key: PublicKey,
    settings: Option<Settings>,
    records: Records,
    healthy: Rc<Cell<bool>>,
    trial: Option<BootEntryName>,
    stage: Stage,
    retry: Duration,
    last_report: String,
}

fn say(line: &str) {
    console::note("update", line);
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(LOG)
    {
        let now = console::now();
        let _ = writeln!(f, "[{:5}.{:06}] {line}", now.as_secs(), now.subsec_micros());
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Updater {
    /// Settles the last update and prepares the checks. `healthy` turns true when every
    /// service with a health check passed it.
    pub fn new(booted: Booted, key: PublicKey, healthy: Rc<Cell<bool>>) -> Self {
        let records = Records::new(Path::new(record::DIR));
        let settings = match Settings::read() {
            Some(Ok(s)) => Some(s),
            Some(Err(e)) => {
                say(&format!("ignoring the update settings: {e}"));
                None
            }
            None => None,
        };
        let running = booted.manifest.version.clone();
        if let Some(p) = records.pending()
            && p.version != running
        {
            say(&format!(
                "{} in slot {} rolled back: its boots failed, running {running} in slot {} again; {} will not be tried again",
                p.version,
                p.slot,
                booted.slot.as_str(),
                p.version
            ));
            let _ = records.add_failed(&p.version);
            records.clear_pending();
        }
        // systemd-boot names the entry it started without its counter, so the ESP itself
        // says whether the running version is on trial: its UKI still carries a counter.
        let trial = running_entry(&booted).filter(|e| e.counter.is_some());
        let counted = trial.is_some();
        let timeout = settings
            .as_ref()
            .map_or(DEFAULT_HEALTH_TIMEOUT, |s| s.health_timeout);
        let deadline = counted.then(|| Instant::now() + timeout);
        if counted {
            say(&format!(
                "{running} in slot {} is on trial: it must be healthy within {} s or the previous version comes back",
                booted.slot.as_str(),
                timeout.as_secs()
            ));
        }
        Self {
            booted,
            key,
            settings,
            records,
            healthy,
            trial,
            stage: Stage::AwaitHealthy {
                deadline,
                next: Instant::now(),
            },
            retry: RETRY,
            last_report: String::new(),
        }
    }

    /// Blesses the running UKI (drops its boot counter) and records the update as done.
    fn bless(&mut self) {
        let Some(entry) = self.trial.take() else {
            return;
        };
        let result = install::find(&self.booted.disk, self.booted.slot)
            .and_then(|t| esp::Esp::mount(&t.esp.node))
            .and_then(|esp| esp.bless(&entry));
        match result {
            Ok(blessed) => {
                let from = self
                    .records
                    .pending()
                    .map(|p| p.from)
                    .unwrap_or_else(|| "the previous version".into());
                say(&format!(
                    "{} in slot {} is healthy: blessed {} ({from} stays as the fallback)",
                    self.booted.manifest.version,
                    self.booted.slot.as_str(),
                    blessed.file_name()
                ));
                self.records.clear_pending();
            }
            Err(e) => say(&format!("cannot bless {}: {e}", entry.file_name())),
        }
    }

    fn report(&mut self, line: String) {
        if line != self.last_report {
            say(&line);
            self.last_report = line;
        }
    }

    /// Checks the channel and installs what it offers; returns whether an update was
    /// installed.
    fn check(&mut self) -> Result<bool> {
        let Some(s) = self.settings.clone() else {
            return Ok(false);
        };
        let addr = s
            .repository
            .address()
            .map_err(|e| Error::new("update", format!("{}: {e}", s.repository.host)))?;
        let fetch = |rel: &str, limit: u64| -> Result<Vec<u8>> {
            let mut body = Vec::new();
            http::download(addr, &s.repository.join(rel), NET_TIMEOUT, limit, &mut body)
                .map_err(|e| Error::new("update", format!("{}: {e}", rel)))?;
            Ok(body)
        };
        let text = fetch(&repo::index_path(&s.channel), 1 << 20)?;
        let sig = fetch(&repo::signature_path(&s.channel), 64)?;
        self.key.verify(&text, &sig).map_err(|e| {
            Error::new(
                "update",
                format!(
                    "the {} index is not signed by this image's key ({e}); refused",
                    s.channel
                ),
            )
        })?;
        let index = Index::parse(&String::from_utf8_lossy(&text))
            .map_err(|e| Error::new("update", e.to_string()))?;
        let now = unix_now();
        if index.expires <= now {
            return Err(Error::new(
                "update",
                format!(
                    "the {} index expired {} s ago; refused (the repository must be republished)",
                    s.channel,
                    now - index.expires
                ),
            ));
        }
        let running = &self.booted.manifest.version;
        let failed = self.records.failed();
        let Some(release) = index.target(running, &failed).cloned() else {
            let newest = index
                .releases
                .first()
                .map_or("nothing".to_owned(), |r| r.version.clone());
            let why = if crust_format::version::compare_versions(&newest, running)
                == std::cmp::Ordering::Less
            {
                format!(
                    "the channel offers {newest}, older than {running}: downgrades are refused unless the index allows them"
                )
            } else {
                format!("up to date ({running}; the channel's newest is {newest})")
            };
            self.report(why);
            return Ok(false);
        };
        say(&format!(
            "found {} on channel {} ({} bytes); running {running}",
            release.version, s.channel, release.size
        ));
        let started = Instant::now();
        let path = self.download(addr, &s, &release)?;
        say(&format!(
            "downloaded {} bytes in {:.1} s; checking every digest and the signature",
            release.size,
            started.elapsed().as_secs_f64()
        ));
        let (header, header_len) = self.verify_bundle(&path, &release.version)?;
        let target = install::find(&self.booted.disk, self.booted.slot.other())?;
        // Everything but the running version's UKI goes: that is what the other slot held
        // (or a failed version's leftovers).
        let keep_version = running.clone();
        let keep = move |e: &BootEntryName| e.version == keep_version;
        say(&format!(
            "writing {} into slot {}",
            release.version,
            target.slot.as_str()
        ));
        let installed = install::install(
            &path,
            &header,
            header_len,
            &target,
            &keep,
            &self.booted.devices,
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
            "{} installed in slot {} as {} ({} bytes written{}) in {:.1} s",
            release.version,
            target.slot.as_str(),
            installed.entry.file_name(),
            installed.written,
            if installed.removed.is_empty() {
                String::new()
            } else {
                format!(", removed {}", installed.removed.join(" "))
            },
            started.elapsed().as_secs_f64()
        ));
        Ok(true)
    }

    /// Downloads a release's bundle to `/var` (streamed, hashed on the way); an already
    /// complete download is reused.
    fn download(
        &self,
        addr: std::net::SocketAddr,
        s: &Settings,
        release: &repo::Release,
    ) -> Result<PathBuf> {
        let dir = self.records.downloads();
        std::fs::create_dir_all(&dir)
            .context("update", || format!("cannot create {}", dir.display()))?;
        let path = dir.join(format!("{}.bundle", release.sha256));
        if file_digest(&path).is_some_and(|d| d == release.sha256) {
            return Ok(path);
        }
        let partial = dir.join("partial");
        let mut file = std::fs::File::create(&partial)
            .context("update", || format!("cannot create {}", partial.display()))?;
        let mut hashing = HashingWriter::new(&mut file);
        http::download(
            addr,
            &s.repository.join(&repo::bundle_path(&release.sha256)),
            NET_TIMEOUT,
            release.size,
            &mut hashing,
        )
        .map_err(|e| Error::new("update", format!("bundle {}: {e}", release.version)))?;
        let (bytes, digest) = hashing.finish();
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

    /// Checks a downloaded bundle in full before anything is written.
    fn verify_bundle(&self, path: &Path, version: &str) -> Result<(Header, u64)> {
        let bytes =
            std::fs::read(path).context("update", || format!("cannot read {}", path.display()))?;
        let bad = |m: String| {
            Error::new(
                "update",
                format!("bundle {version}: {m}; refused, nothing written"),
            )
        };
        let prefix: &[u8; 12] = bytes
            .get(..12)
            .and_then(|p| p.try_into().ok())
            .ok_or_else(|| bad("truncated".into()))?;
        let len = bundle::header_len(prefix).map_err(|e| bad(e.to_string()))? as usize;
        let text = bytes
            .get(12..12 + len)
            .ok_or_else(|| bad("truncated".into()))?;
        let sig = bytes
            .get(12 + len..12 + len + 64)
            .ok_or_else(|| bad("truncated".into()))?;
        self.key
            .verify(text, sig)
            .map_err(|e| bad(format!("header signature: {e}")))?;
        let header =
            Header::parse(&String::from_utf8_lossy(text)).map_err(|e| bad(e.to_string()))?;
        let m = &self.booted.manifest;
        if header.name != m.name || header.version != version {
            return Err(bad(format!(
                "it holds {} {}, not {} {version}",
                header.name, header.version, m.name
            )));
        }
        if header.layout != m.layout {
            return Err(bad(format!(
                "it needs disk layout {} but this disk has layout {}",
                header.layout, m.layout
            )));
        }
        if header.file_size(len as u64) != bytes.len() as u64 {
            return Err(bad("its size does not match its header".into()));
        }
        for part in &header.parts {
            let at = header.part_offset(len as u64, part.kind) as usize;
            if Digest::of(&bytes[at..at + part.size as usize]) != part.sha256 {
                return Err(bad(format!(
                    "the {} part does not match its digest",
                    part.kind.as_str()
                )));
            }
        }
        Ok((header, len as u64))
    }
}

/// The running version's UKI on the ESP (as it is named now, counter included).
fn running_entry(booted: &Booted) -> Option<BootEntryName> {
    let target = install::find(&booted.disk, booted.slot).ok()?;
    let esp = esp::Esp::mount(&target.esp.node).ok()?;
    let m = &booted.manifest;
    esp.entries()
        .into_iter()
        .find(|e| e.name == m.name && e.version == m.version)
}

fn file_digest(path: &Path) -> Option<Digest> {
    std::fs::read(path).ok().map(|b| Digest::of(&b))
}

/// Hashes what is written through it.
struct HashingWriter<'a> {
    inner: &'a mut std::fs::File,
    hasher: sha2::Sha256,
    bytes: u64,
}

impl<'a> HashingWriter<'a> {
    fn new(inner: &'a mut std::fs::File) -> Self {
        use sha2::Digest as _;
        Self {
            inner,
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
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl Task for Updater {
    fn fds(&self) -> Vec<BorrowedFd<'_>> {
        Vec::new()
    }

    fn deadline(&self) -> Option<Instant> {
        match self.stage {
            Stage::AwaitHealthy { next, .. }
            | Stage::Idle { next }
            | Stage::RebootPending { next } => Some(next),
            Stage::Done => None,
        }
    }

    fn run(&mut self, _ready: &[bool], now: Instant) -> Control {
        match self.stage {
            Stage::AwaitHealthy { deadline, .. } => {
                // The health flag is looked at once a second until it is up.
                self.stage = Stage::AwaitHealthy {
                    deadline,
                    next: now + Duration::from_secs(1),
                };
                if self.healthy.get() {
                    self.bless();
                    self.stage = if self.settings.is_some() {
                        Stage::Idle { next: now }
                    } else {
                        Stage::Done
                    };
                } else if deadline.is_some_and(|d| now >= d) {
                    say(&format!(
                        "{} in slot {} did not become healthy in time: rebooting (systemd-boot counts the failed try)",
                        self.booted.manifest.version,
                        self.booted.slot.as_str()
                    ));
                    return Control::Shutdown(Action::Reboot, "update on trial not healthy".into());
                }
            }
            Stage::Idle { next } if now >= next => match self.check() {
                Ok(true) => {
                    self.stage = Stage::RebootPending { next: now };
                    return self.run(&[], now);
                }
                Ok(false) => {
                    self.retry = RETRY;
                    let interval = self
                        .settings
                        .as_ref()
                        .map_or(Duration::from_secs(3600), |s| s.interval);
                    self.stage = Stage::Idle {
                        next: now + interval + jitter(interval),
                    };
                }
                Err(e) => {
                    let interval = self
                        .settings
                        .as_ref()
                        .map_or(Duration::from_secs(3600), |s| s.interval);
                    let wait = self.retry.min(interval);
                    // The error names its check ("update"), which the line's prefix says already.
                    let what = if e.advice.is_empty() {
                        e.message.clone()
                    } else {
                        format!("{}; {}", e.message, e.advice)
                    };
                    say(&format!("{what}; trying again in {} s", wait.as_secs()));
                    self.retry = (self.retry * 2).min(interval);
                    self.stage = Stage::Idle { next: now + wait };
                }
            },
            Stage::RebootPending { next } if now >= next => {
                let window = self
                    .settings
                    .as_ref()
                    .map_or(RebootWindow::Now, |s| s.reboot);
                if window.open(unix_now()) {
                    say("rebooting into the new version");
                    return Control::Shutdown(Action::Reboot, "update installed".into());
                }
                self.report("waiting for the reboot window".into());
                self.stage = Stage::RebootPending {
                    next: now + Duration::from_secs(60),
                };
            }
            _ => {}
        }
        Control::Continue
    }
}

/// Up to a tenth of `interval`, so a fleet does not check in step.
fn jitter(interval: Duration) -> Duration {
    let mut b = [0u8; 4];
    let _ = crate::random::fill(&mut b);
    let tenth = interval.as_millis() as u64 / 10;
    Duration::from_millis(u64::from(u32::from_le_bytes(b)) % tenth.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reboot_windows() {
        assert_eq!(RebootWindow::parse("now"), Some(RebootWindow::Now));
        let w = RebootWindow::parse("02:00-04:30").unwrap();
        assert!(w.open(3 * 3600));
        assert!(!w.open(5 * 3600));
        let wrap = RebootWindow::parse("23:00-01:00").unwrap();
        assert!(wrap.open(23 * 3600 + 60) && wrap.open(1800) && !wrap.open(12 * 3600));
        assert_eq!(RebootWindow::parse("25:00-01:00"), None);
        assert_eq!(RebootWindow::parse("soon"), None);
    }
}
