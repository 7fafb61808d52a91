//! The init's facts for the exporter: `key=value` files in `/run/crust/status/`
//! ([`crust_format::observe::status`] names them and their keys; docs/FORMAT.md §14).
//!
//! Each file is replaced whole (written under a temporary name, then renamed), so a reader
//! never sees half of one. Files are written when what they say changes: at a phase line,
//! when a service starts, ends or changes health, after an update check or a clock check,
//! at a dm-verity report; never per output line. Nothing is written before stage 2 creates
//! the folder ([`enable`]): stage 1 has its own record, `/run/crust/boot`.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crust_format::observe::{KeyValues, STATUS_DIR, status};
use crust_format::phase::Phase;

static ENABLED: AtomicBool = AtomicBool::new(false);
static PHASES: Mutex<Vec<(Phase, Duration)>> = Mutex::new(Vec::new());

/// Creates the folder and publishes what is known already (the phases so far, the boot
/// count). Called once `/var` is set up.
pub fn enable() {
    let made = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(STATUS_DIR);
    if made.is_ok() {
        ENABLED.store(true, Ordering::SeqCst);
        publish_phases();
        boot();
        verity(crate::update::corruption::root_corrupted());
    }
}

/// Replaces the status file `name` with `kv` (nothing before [`enable`]; a failed write is
/// left for the next change: the console is not the place for it).
pub fn publish(name: &str, kv: &KeyValues) {
    if !ENABLED.load(Ordering::SeqCst) {
        return;
    }
    let dir = Path::new(STATUS_DIR);
    let tmp = dir.join(format!(".{name}.tmp"));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&tmp)
        .and_then(|mut f| f.write_all(kv.to_text().as_bytes()));
    if written.is_ok() {
        let _ = std::fs::rename(&tmp, dir.join(name));
    }
}

/// A phase line was printed at `at` (warnings and errors are not phases).
pub fn phase(phase: Phase, at: Duration) {
    if matches!(phase, Phase::Warning | Phase::Error) {
        return;
    }
    PHASES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((phase, at));
    publish_phases();
}

fn publish_phases() {
    if !ENABLED.load(Ordering::SeqCst) {
        return;
    }
    let mut kv = KeyValues::default();
    for (phase, at) in PHASES.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        kv.set(phase.as_str(), crate::console::seconds(*at));
    }
    publish(status::PHASES, &kv);
}

/// The boot count the state phase left, and whether `/var` is the state partition.
fn boot() {
    let count = std::fs::read_to_string("/var/lib/crust/boot-count")
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok());
    let persistent = nix::sys::statfs::statfs("/var")
        .is_ok_and(|s| s.filesystem_type() != nix::sys::statfs::TMPFS_MAGIC);
    let mut kv = KeyValues::default();
    if let Some(n) = count {
        kv.set("count", n);
    }
    kv.set("persistent", u8::from(persistent));
    publish(status::BOOT, &kv);
}

static VERITY_ERRORS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// dm-verity reported a corrupted block of the root (a uevent); `corrupted` is what
/// device-mapper says of the device now.
pub fn verity_report(corrupted: bool) {
    VERITY_ERRORS.fetch_add(1, Ordering::SeqCst);
    verity(corrupted);
}

fn verity(corrupted: bool) {
    let mut kv = KeyValues::default();
    kv.set("errors", VERITY_ERRORS.load(Ordering::SeqCst))
        .set("corrupted", u8::from(corrupted));
    publish(status::VERITY, &kv);
}

/// The log pipe's drops so far.
pub fn logs(dropped: u64) {
    let mut kv = KeyValues::default();
    kv.set("dropped", dropped);
    publish(status::LOGS, &kv);
}

/// Unix seconds now.
fn unix_now() -> i64 {
    crate::clock::now_unix()
}

/// What the update agent has done this boot, for [`status::UPDATE`].
#[derive(Debug, Clone, Default)]
pub struct UpdateStatus {
    checks: u64,
    failures: u64,
    last: Option<(i64, bool, &'static str)>,
    rollbacks: usize,
    published: String,
}

impl UpdateStatus {
    /// Versions that rolled back on this host, as the update records list them.
    pub fn new(rollbacks: usize) -> Self {
        Self {
            rollbacks,
            ..Self::default()
        }
    }

    /// A check ended: `result` is `up-to-date`, `installed`, `refused`, `index-verified`
    /// or `error`.
    pub fn checked(&mut self, result: &'static str) {
        let ok = result != "error";
        self.checks += 1;
        if !ok {
            self.failures += 1;
        }
        self.last = Some((unix_now(), ok, result));
    }

    /// Publishes it with the agent's state (one of the exporter's `UPDATE_STATES`), if
    /// anything changed since the last time.
    pub fn publish(&mut self, configured: bool, state: &str, trial: bool) {
        let mut kv = KeyValues::default();
        kv.set("configured", u8::from(configured))
            .set("state", state)
            .set("trial", u8::from(trial))
            .set("checks", self.checks)
            .set("failures", self.failures)
            .set("rollbacks", self.rollbacks);
        if let Some((at, ok, result)) = self.last {
            kv.set("last-check", at)
                .set("last-check-ok", u8::from(ok))
                .set("last-result", result);
        }
        let text = kv.to_text();
        if text != self.published {
            publish(status::UPDATE, &kv);
            self.published = text;
        }
    }
}

/// What the clock keeper knows, for [`status::CLOCK`].
#[derive(Debug, Clone, Default)]
pub struct ClockStatus {
    servers: usize,
    synced: bool,
    answering: bool,
    last: Option<(i64, i64, String)>,
}

impl ClockStatus {
    /// Asking `servers`; whether the boot's exchange got an answer.
    pub fn new(servers: usize) -> Self {
        Self {
            servers,
            ..Self::default()
        }
    }

    /// A server answered: the offset (µs) and who; published.
    pub fn answered(&mut self, offset_us: i64, server: &str) {
        self.synced = true;
        self.answering = true;
        self.last = Some((unix_now(), offset_us, server.to_owned()));
        self.publish();
    }

    /// No server answered; published.
    pub fn unanswered(&mut self) {
        self.answering = false;
        self.publish();
    }

    fn publish(&self) {
        let mut kv = KeyValues::default();
        kv.set("servers", self.servers)
            .set("synced", u8::from(self.synced))
            .set("answering", u8::from(self.answering));
        if let Some((at, offset_us, server)) = &self.last {
            kv.set("offset", format!("{:.6}", *offset_us as f64 / 1e6))
                .set("last-sync", at)
                .set("server", server);
        }
        publish(status::CLOCK, &kv);
    }
}
