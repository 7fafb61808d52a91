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
//! With a repository configured (user-data `[update]`), a trial boot is blessed only once
//! it has also fetched and verified its channel's index: a version that breaks the network
//! or the update path must not become the one the host keeps. The agent then checks the
//! channel at boot and every interval (plus up to a tenth at random): the index judged
//! ([`index`]: the image's own key, the channel it follows, not older than the newest
//! accepted, not expired), the highest version above the running one (lower only if the
//! index allows it), the bundle downloaded to `/var` and checked in full ([`bundle`]:
//! signature, every digest) and measured against the other slot before anything is
//! written, then [`install`] into the other slot, and a reboot now or in the configured
//! window. Each check runs on a thread of its own ([`check`]), so the main loop goes on
//! supervising while it downloads and writes.

pub(crate) mod bundle;
mod check;
pub mod corruption;
mod esp;
pub(crate) mod index;
mod install;
pub mod record;

use std::cell::Cell;
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crust_format::Manifest;
use crust_format::boot_entry::BootEntryName;
use crust_format::layout::Slot;
use crust_format::signature::PublicKey;

use crate::config::schema::{HEALTH_TIMEOUT, UPDATE_INTERVAL};
use crate::console;
use crate::error::{Error, Result};
use crate::event::{Control, Task, Worker};
use crate::fleet::{self, Fleet};
use crate::http::Url;
use crate::http::client::Client;
use crate::shutdown::Action;
use check::{Cancel, Checked, Checker};
use record::Records;

/// The update settings the configuration step leaves (`key=value` lines).
pub const RUN_UPDATE: &str = "/run/crust/update";
/// The update log.
const LOG: &str = "/var/log/crust/update.log";
/// Health timeout when no configuration names one.
const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest wait at shutdown for a check to stop (the services' stop needs the rest).
const STOP_WAIT: Duration = Duration::from_secs(5);
/// First retry after a failed check (doubling up to the interval).
const RETRY: Duration = Duration::from_secs(30);
/// Retry of a trial boot's index fetch (until its health deadline).
const PROBE_RETRY: Duration = Duration::from_secs(5);

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
            // The config phase checked the ranges; clamping again keeps every deadline
            // computed from them far from an Instant's overflow whatever the file says.
            let secs = |k: &str, d: u64, range: std::ops::RangeInclusive<u64>| {
                let v = get(k).and_then(|v| v.parse().ok()).unwrap_or(d);
                Duration::from_secs(v.clamp(*range.start(), *range.end()))
            };
            Ok(Settings {
                repository,
                channel: get("channel").unwrap_or_else(|| "stable".into()),
                interval: secs("interval", 3600, UPDATE_INTERVAL),
                reboot: get("reboot")
                    .as_deref()
                    .and_then(RebootWindow::parse)
                    .unwrap_or(RebootWindow::Now),
                health_timeout: secs("health-timeout", 300, HEALTH_TIMEOUT),
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
    /// A healthy trial boot fetches and verifies its index before it is blessed (on a
    /// thread while `job` runs; again at `next` after a failure), until the deadline.
    Probing {
        deadline: Option<Instant>,
        next: Option<Instant>,
    },
    /// Checking the channel at the instant.
    Idle { next: Instant },
    /// A check runs on its thread.
    Checking,
    /// An update is installed; rebooting in the window.
    RebootPending { next: Instant },
    /// Asking the fleet for a reboot slot (on a thread).
    Coordinating,
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
    /// The check running now, if one is.
    job: Option<Worker<Result<Checked>>>,
    /// Asking the fleet for a reboot slot, if that runs now.
    coordination: Option<Worker<Result<Option<fleet::Acquired>>>>,
    cancel: Cancel,
    /// The fleet this host coordinates its update reboots with.
    fleet: Option<Fleet>,
    /// What the next check reports to the fleet (a blessing, a rollback).
    event: Option<(String, String)>,
    /// How servers are reached (proxies, extra authorities), once per boot.
    client: Client,
    /// What the exporter is told ([`crate::observe::status`]).
    status: crate::observe::status::UpdateStatus,
}

/// What a network-booted (diskless) host says instead of starting the agent: it has no
/// slots to write an update into. Configured update settings are named as ignored.
pub fn not_on_a_network_boot() -> String {
    let line = match Settings::read() {
        Some(_) => {
            "not running: a network-booted host has no slots to install an update into; the \
             update settings of its user-data are ignored (serve the new version's netboot \
             folder and reboot the host)"
        }
        None => {
            "not running: a network-booted host has no slots to install an update into \
             (serve the new version's netboot folder and reboot the host)"
        }
    };
    console::note("update", line);
    line.to_owned()
}

fn say(line: &str) {
    console::note("update", line);
    let now = console::now();
    let _ = crate::services::output::append_bounded(
        Path::new(LOG),
        &format!("[{:5}.{:06}] {line}\n", now.as_secs(), now.subsec_micros()),
    );
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
        if settings.is_some() && !records.keep_reserve() {
            say(&format!(
                "/var has no room for the update agent's reserve ({} MiB): a full /var could \
                 stop updates",
                record::RESERVE >> 20
            ));
        }
        let running = booted.manifest.version.clone();
        let mut event = None;
        if let Some(p) = records.pending()
            && p.version != running
        {
            let line = format!(
                "{} in slot {} rolled back: its boots failed, running {running} in slot {} again; {} will not be tried again",
                p.version,
                p.slot,
                booted.slot.as_str(),
                p.version
            );
            say(&line);
            event = Some(("rolled-back".to_owned(), line));
            let _ = records.add_failed(&p.version);
            records.clear_pending();
        }
        let fleet = settings.as_ref().and_then(|_| {
            let s = fleet::Settings::read()?;
            Fleet::new(s, Path::new(record::DIR))
                .map_err(|e| say(&format!("ignoring the fleet settings: {e}")))
                .ok()
        });
        // systemd-boot names the entry it started without its counter, so the ESP itself
        // says whether the running version is on trial: its UKI still carries a counter.
        let (entry, note) = running_entry(&booted);
        if let Some(n) = note {
            say(&format!(
                "{} in slot {} was set aside ({}); running {running} in slot {} instead; an \
                 update of slot {} rewrites it",
                n.version,
                n.slot,
                n.why,
                booted.slot.as_str(),
                n.slot
            ));
        }
        let trial = entry.filter(|e| e.counter.is_some());
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
        let rollbacks = records.failed().len();
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
            job: None,
            cancel: Cancel::default(),
            coordination: None,
            fleet,
            event,
            client: Client::from_run(),
            status: crate::observe::status::UpdateStatus::new(rollbacks),
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
                let line = format!(
                    "{} in slot {} is healthy: blessed {} ({from} stays as the fallback)",
                    self.booted.manifest.version,
                    self.booted.slot.as_str(),
                    blessed.file_name()
                );
                say(&line);
                self.event = Some(("blessed".to_owned(), line));
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

    /// A checker owning a copy of what a check needs; `None` without update settings.
    fn checker(&self) -> Option<Checker> {
        Some(Checker {
            settings: self.settings.clone()?,
            key: self.key.clone(),
            booted: self.booted.clone(),
            records: self.records.clone(),
            cancel: self.cancel.clone(),
            fleet: self.fleet.clone(),
            event: self.event.clone(),
            client: self.client.clone(),
        })
    }

    /// Starts a check on its thread.
    fn start_check(&mut self, now: Instant) -> Control {
        let Some(checker) = self.checker() else {
            self.stage = Stage::Done;
            return Control::Continue;
        };
        match Worker::start("update", move || checker.check()) {
            Ok(job) => {
                self.job = Some(job);
                self.stage = Stage::Checking;
                Control::Continue
            }
            Err(e) => self.checked(
                Err(Error::new("update", format!("cannot start the check: {e}"))),
                now,
            ),
        }
    }

    /// A healthy trial boot: fetches and verifies the index on a thread before blessing.
    fn start_probe(&mut self, deadline: Option<Instant>, now: Instant) -> Control {
        let Some(checker) = self.checker() else {
            self.bless();
            self.stage = Stage::Done;
            return Control::Continue;
        };
        match Worker::start("update", move || checker.probe()) {
            Ok(job) => {
                self.job = Some(job);
                self.stage = Stage::Probing {
                    deadline,
                    next: None,
                };
            }
            Err(e) => {
                say(&format!("cannot start the index check: {e}"));
                self.stage = Stage::Probing {
                    deadline,
                    next: Some(now + PROBE_RETRY),
                };
            }
        }
        Control::Continue
    }

    /// Acts on a trial boot's index check: blessed once it passed; retried until the health
    /// deadline otherwise (and the deadline's reboot counts the try as failed).
    fn probed(&mut self, outcome: Result<Checked>, deadline: Option<Instant>, now: Instant) {
        self.status.checked(if outcome.is_ok() {
            "index-verified"
        } else {
            "error"
        });
        match outcome {
            Ok(Checked::IndexVerified(line)) => {
                say(&line);
                self.bless();
                self.stage = Stage::Idle { next: now };
            }
            Ok(other) => {
                say(&format!("unexpected outcome of the index check: {other:?}"));
                self.stage = Stage::Probing {
                    deadline,
                    next: Some(now + PROBE_RETRY),
                };
            }
            Err(e) => {
                self.report(format!(
                    "{} in slot {} is healthy but cannot fetch a verified index ({}): not \
                     blessed; trying again in {} s",
                    self.booted.manifest.version,
                    self.booted.slot.as_str(),
                    e.message,
                    PROBE_RETRY.as_secs()
                ));
                self.stage = Stage::Probing {
                    deadline,
                    next: Some(now + PROBE_RETRY),
                };
            }
        }
    }

    /// Acts on the fleet's answer to a reboot slot request: reboot with the slot, or wait
    /// and ask again (never reboot without etcd's answer).
    fn coordinated(&mut self, outcome: Result<Option<fleet::Acquired>>, now: Instant) -> Control {
        let again = format!("asking again in {} s", check::SLOT_RETRY.as_secs());
        match outcome {
            Ok(None | Some(fleet::Acquired::Taken(_))) => {
                say("rebooting into the new version");
                return Control::Shutdown(Action::Reboot, "update installed".into());
            }
            Ok(Some(fleet::Acquired::Busy(holders))) => self.report(format!(
                "every reboot slot of the fleet group is held (by {}): waiting; {again}",
                holders.join(", ")
            )),
            Err(e) => self.report(format!("{}; {again}", e.message)),
        }
        self.stage = Stage::RebootPending {
            next: now + check::SLOT_RETRY,
        };
        Control::Continue
    }

    /// Acts on a check's outcome.
    fn checked(&mut self, outcome: Result<Checked>, now: Instant) -> Control {
        if outcome.is_ok() {
            // Reported to the fleet by that check.
            self.event = None;
        }
        let interval = self
            .settings
            .as_ref()
            .map_or(Duration::from_secs(3600), |s| s.interval);
        self.status.checked(match &outcome {
            Ok(Checked::Installed) => "installed",
            Ok(Checked::Nothing(_)) => "up-to-date",
            Ok(Checked::Refused(_)) => "refused",
            Ok(Checked::IndexVerified(_)) => "index-verified",
            Ok(Checked::Waiting(..)) => "waiting",
            Err(_) => "error",
        });
        match outcome {
            Ok(Checked::Installed) => {
                self.stage = Stage::RebootPending { next: now };
                return self.run(&[], now);
            }
            Ok(Checked::Nothing(why) | Checked::Refused(why) | Checked::IndexVerified(why)) => {
                self.report(why);
                self.retry = RETRY;
                self.stage = Stage::Idle {
                    next: now + interval + jitter(interval),
                };
            }
            Ok(Checked::Waiting(why, at)) => {
                self.report(why);
                self.retry = RETRY;
                // Checked again at its turn (the index may change before: at the interval).
                let turn = Duration::from_secs(at.saturating_sub(unix_now()).saturating_add(1));
                self.stage = Stage::Idle {
                    next: now + turn.min(interval),
                };
            }
            Err(e) => {
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
        }
        Control::Continue
    }
}

/// The running version's UKI on the ESP (as it is named now, counter included), and the
/// note a version set aside after a dm-verity error left ([`corruption`]), taken.
fn running_entry(booted: &Booted) -> (Option<BootEntryName>, Option<corruption::Note>) {
    let Some(esp) = install::find(&booted.disk, booted.slot)
        .ok()
        .and_then(|t| esp::Esp::mount(&t.esp.node).ok())
    else {
        return (None, None);
    };
    let m = &booted.manifest;
    let entry = esp
        .entries()
        .into_iter()
        .find(|e| e.name == m.name && e.version == m.version);
    (entry, corruption::take_note(&esp))
}

impl Updater {
    /// Publishes the agent's state for the exporter when it changed.
    fn publish_status(&mut self) {
        let state = match self.stage {
            Stage::AwaitHealthy { .. } => "awaiting-health",
            Stage::Probing { .. } => "probing",
            Stage::Idle { .. } => "idle",
            Stage::Checking => "checking",
            Stage::RebootPending { .. } => "reboot-pending",
            Stage::Coordinating => "coordinating",
            Stage::Done if self.settings.is_none() => "off",
            Stage::Done => "done",
        };
        let (configured, trial) = (self.settings.is_some(), self.trial.is_some());
        self.status.publish(configured, state, trial);
    }
}

impl Task for Updater {
    fn fds(&self) -> Vec<BorrowedFd<'_>> {
        match self.stage {
            Stage::Coordinating => self.coordination.iter().map(Worker::fd).collect(),
            _ => self.job.iter().map(Worker::fd).collect(),
        }
    }

    fn deadline(&self) -> Option<Instant> {
        match self.stage {
            Stage::AwaitHealthy { next, .. }
            | Stage::Idle { next }
            | Stage::RebootPending { next } => Some(next),
            // While the index check runs, the health deadline still ends the trial.
            Stage::Probing { deadline, next } => match (deadline, next) {
                (Some(d), Some(n)) => Some(d.min(n)),
                (d, n) => d.or(n),
            },
            Stage::Checking | Stage::Coordinating | Stage::Done => None,
        }
    }

    fn run(&mut self, ready: &[bool], now: Instant) -> Control {
        let control = self.step(ready, now);
        self.publish_status();
        control
    }

    fn stop(&mut self, budget: Duration) {
        self.stop_check(budget);
    }
}

impl Updater {
    /// What [`Task::run`] does, before the state is published.
    fn step(&mut self, ready: &[bool], now: Instant) -> Control {
        match self.stage {
            Stage::AwaitHealthy { deadline, .. } => {
                // The health flag is looked at once a second until it is up.
                self.stage = Stage::AwaitHealthy {
                    deadline,
                    next: now + Duration::from_secs(1),
                };
                if self.healthy.get() {
                    if self.trial.is_some() && self.settings.is_some() {
                        return self.start_probe(deadline, now);
                    }
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
            Stage::Probing { deadline, next } => {
                if ready.first().copied().unwrap_or(false)
                    && let Some(job) = self.job.take()
                {
                    let outcome = job
                        .finish()
                        .unwrap_or_else(|| Err(Error::new("update", "the check's thread failed")));
                    self.probed(outcome, deadline, now);
                    return Control::Continue;
                }
                if deadline.is_some_and(|d| now >= d) {
                    if let Some(job) = self.job.take() {
                        self.cancel.set();
                        let _ = job.wait(STOP_WAIT);
                    }
                    say(&format!(
                        "{} in slot {} could not fetch a verified index in time: rebooting \
                         (systemd-boot counts the failed try; a version that cannot update \
                         is not kept)",
                        self.booted.manifest.version,
                        self.booted.slot.as_str()
                    ));
                    return Control::Shutdown(
                        Action::Reboot,
                        "update on trial cannot reach its repository".into(),
                    );
                }
                if self.job.is_none() && next.is_some_and(|n| now >= n) {
                    return self.start_probe(deadline, now);
                }
            }
            Stage::Idle { next } if now >= next => return self.start_check(now),
            Stage::Coordinating if ready.first().copied().unwrap_or(false) => {
                if let Some(job) = self.coordination.take() {
                    let outcome = job.finish().unwrap_or_else(|| {
                        Err(Error::new("update", "the fleet request's thread failed"))
                    });
                    return self.coordinated(outcome, now);
                }
            }
            Stage::Checking if ready.first().copied().unwrap_or(false) => {
                if let Some(job) = self.job.take() {
                    let outcome = job
                        .finish()
                        .unwrap_or_else(|| Err(Error::new("update", "the check's thread failed")));
                    return self.checked(outcome, now);
                }
            }
            Stage::RebootPending { next } if now >= next => {
                let window = self
                    .settings
                    .as_ref()
                    .map_or(RebootWindow::Now, |s| s.reboot);
                if window.open(unix_now()) {
                    if let Some(checker) = self.checker().filter(|c| c.fleet.is_some()) {
                        match Worker::start("fleet", move || checker.acquire_slot()) {
                            Ok(job) => {
                                self.coordination = Some(job);
                                self.stage = Stage::Coordinating;
                            }
                            Err(e) => {
                                say(&format!("cannot ask the fleet for a reboot slot: {e}"));
                                self.stage = Stage::RebootPending {
                                    next: now + check::SLOT_RETRY,
                                };
                            }
                        }
                        return Control::Continue;
                    }
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

    fn stop_check(&mut self, budget: Duration) {
        let Some(job) = self.job.take() else {
            return;
        };
        self.cancel.set();
        let budget = budget.min(STOP_WAIT);
        match job.wait(budget) {
            Ok(Some(Err(e))) => say(&e.message),
            Ok(_) => {}
            Err(_) => say(&format!(
                "the check did not stop within {} s; the next boot starts the update over",
                budget.as_secs()
            )),
        }
    }
}

/// Up to a tenth of `interval`, so a fleet does not check in step.
fn jitter(interval: Duration) -> Duration {
    crate::random::below(interval / 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancelled_check_stops_at_its_next_step() {
        let cancel = Cancel::default();
        let seen = cancel.clone();
        let worker = Worker::start("test", move || {
            while !seen.is_set() {
                std::thread::sleep(Duration::from_millis(5));
            }
            seen.check().map(|()| Checked::Installed)
        })
        .unwrap();
        cancel.set();
        let outcome = worker
            .wait(Duration::from_secs(5))
            .expect("the check did not stop within 5 s")
            .expect("the check's thread panicked");
        let error = outcome.expect_err("a cancelled check succeeded");
        assert_eq!(error.message, check::STOPPED);
    }

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
