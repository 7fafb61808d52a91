//! Data volumes: the disks beyond the boot disk that the profile's and user-data's
//! `[[volume]]` tables declare (`docs/CONFIGURATION.md`, "Volumes"), formatted when empty,
//! checked, assembled into a RAID 0 when there are several, mounted on `/var/mnt/<name>`,
//! and handed to the containers that mount them by name.
//!
//! PID 1 owns the declarations and the state of each volume; the work is done by a helper
//! process ([`helper`]: the init binary started again with [`HELPER_ARG`]), because mkfs,
//! fsck and mdadm are programs that can run for minutes on large disks, and nothing on
//! PID 1's loop may wait on a disk. So the `volumes` phase (right after `config`: user-data
//! may declare volumes) writes the plan to `/run/crust/volumes`, starts the helper and moves
//! on; the network, clock and services phases run meanwhile. Services that mount a volume
//! wait until it is mounted ([`Board`], read by [`crate::services`]); the others start at
//! once. When the helper exits, the [`Volumes`] task reads each volume's outcome
//! ([`status`]). A volume that is missing or refused is set up again, by a new helper, when
//! the machine's block devices change (a volume attached after boot), looked at every few
//! seconds.
//!
//! The modules: [`declare`] (the root's declarations, user-data's, the config phase's
//! check), `disks` (the machine's disks from sysfs, by-id names without udev), `raid`
//! (mdadm), `fs` (mkfs, checks, mounts, growth), [`helper`] (the helper process's steps),
//! [`status`] (its report to PID 1).

pub mod declare;
pub(crate) mod disks;
pub(crate) mod fs;
pub mod helper;
mod raid;
pub mod status;

pub use declare::check_user_data;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::os::fd::BorrowedFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use crust_format::phase::Phase;
use crust_format::volume::VolumeSpec;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::config::volumes::Volume;
use crate::console;
use crate::event::{Control, Task};
use status::Outcome;

/// Where PID 1 and the helper exchange the plan and the outcomes (on the `/run` tmpfs).
pub const RUN_DIR: &str = "/run/crust/volumes";
/// The volumes' names in order, one a line, in [`RUN_DIR`].
pub const ORDER_FILE: &str = "order";
/// The volume files (as the builder writes them) in [`RUN_DIR`].
pub const PLAN_DIR: &str = "plan";
/// The outcomes, one file per volume, in [`RUN_DIR`].
pub const STATE_DIR: &str = "state";
/// The boot disk's kernel name, in [`RUN_DIR`].
pub const BOOT_DISK_FILE: &str = "boot-disk";
/// The volumes' log on the state partition.
pub const LOG: &str = "/var/log/crust/volumes.log";
/// The argument that makes the init binary the volume helper.
pub const HELPER_ARG: &str = "--volumes-helper";
/// How often the block devices are looked at while a volume is missing or refused.
const LOOK_EVERY: Duration = Duration::from_secs(5);

/// `1.0 GiB`, `512 MiB`.
pub fn size_text(bytes: u64) -> String {
    const GIB: f64 = (1u64 << 30) as f64;
    if bytes >= 1 << 30 {
        format!("{:.1} GiB", bytes as f64 / GIB)
    } else {
        format!("{} MiB", bytes >> 20)
    }
}

/// Where a volume is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// The helper is setting it up.
    Pending,
    /// Mounted on `/var/mnt/<name>` from this device.
    Mounted(String),
    /// Its disks are not there.
    Missing(String),
    /// Its disks cannot be used as they are.
    Failed(String),
}

/// Every volume's state, shared by the [`Volumes`] task (which writes it) and the services
/// (which start a container once the volumes it mounts are mounted).
#[derive(Debug, Default)]
pub struct Board {
    states: BTreeMap<String, State>,
}

/// The board as the two tasks share it (both live on PID 1's one thread).
pub type Shared = Rc<RefCell<Board>>;

/// Why a service that mounts some volumes cannot start yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked {
    /// The first volume not mounted.
    pub volume: String,
    /// What it is waiting for.
    pub why: String,
    /// Whether it will stay so until something changes on the machine (a missing disk, a
    /// refused one), as opposed to a set-up under way.
    pub lasting: bool,
}

impl Board {
    /// What holds a service back that mounts `volumes`; `None` when every one is mounted.
    pub fn blocking(&self, volumes: &[String]) -> Option<Blocked> {
        volumes.iter().find_map(|v| {
            let (why, lasting) = match self.states.get(v) {
                Some(State::Mounted(_)) => return None,
                Some(State::Pending) => ("being set up".to_owned(), false),
                Some(State::Missing(why)) => (format!("missing: {why}"), true),
                Some(State::Failed(why)) => (format!("refused: {why}"), true),
                None => ("no such volume is declared".to_owned(), true),
            };
            Some(Blocked {
                volume: v.clone(),
                why,
                lasting,
            })
        })
    }
}

/// The task that owns the volumes after boot: it hears the helper end, records the
/// outcomes, and starts the helper again when a volume is missing or refused and the
/// machine's block devices changed.
#[derive(Debug)]
pub struct Volumes {
    board: Shared,
    names: Vec<String>,
    /// The running helper.
    helper: Option<Pid>,
    /// The block devices when the last helper started.
    seen: Vec<String>,
    /// When the block devices are looked at next.
    next_look: Option<Instant>,
}

/// The `volumes` phase: finds the declarations (the root's, user-data's), hands them to
/// the helper and prints the phase line; returns the task. `boot_disk` (a kernel name) is
/// never a volume.
pub fn phase(user: &[Volume], boot_disk: &str) -> Volumes {
    let (root, problems) = declare::load_root(Path::new("/"));
    for p in problems {
        console::warning(&p);
    }
    let (specs, replaced) = declare::merge(root, crate::config::volumes::specs(user));
    let mut task = Volumes {
        board: Rc::new(RefCell::new(Board::default())),
        names: specs.iter().map(|s| s.name.clone()).collect(),
        helper: None,
        seen: Vec::new(),
        next_look: None,
    };
    if specs.is_empty() {
        console::phase(Phase::Volumes, "none declared");
        return task;
    }
    let listed: Vec<String> = specs.iter().map(declare::describe).collect();
    let replaced = if replaced.is_empty() {
        String::new()
    } else {
        format!("; user-data named the disks of {}", replaced.join(", "))
    };
    let detail = match write_plan(&specs, boot_disk).and_then(|()| task.start_helper()) {
        Ok(pid) => format!(
            "{}{replaced}: set up by the volume helper (pid {pid}) while the boot goes on; \
             services that mount them wait for them",
            listed.join(", ")
        ),
        Err(e) => {
            let why = format!("the volume helper cannot start: {e}");
            for name in &task.names {
                task.board
                    .borrow_mut()
                    .states
                    .insert(name.clone(), State::Failed(why.clone()));
            }
            format!("{}{replaced}: NOT set up ({why})", listed.join(", "))
        }
    };
    console::phase(Phase::Volumes, &detail);
    task
}

/// Writes the plan for the helper into [`RUN_DIR`].
fn write_plan(specs: &[VolumeSpec], boot_disk: &str) -> Result<(), String> {
    let dir = Path::new(RUN_DIR);
    let plan = dir.join(PLAN_DIR);
    let write = |path: &Path, text: &str| {
        std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
    };
    std::fs::create_dir_all(&plan).map_err(|e| format!("cannot make {}: {e}", plan.display()))?;
    for s in specs {
        write(&plan.join(&s.name), &s.to_text())?;
    }
    let order: String = specs.iter().map(|s| format!("{}\n", s.name)).collect();
    write(&dir.join(ORDER_FILE), &order)?;
    write(&dir.join(BOOT_DISK_FILE), &format!("{boot_disk}\n"))
}

/// The names in `/sys/class/block`, sorted.
fn block_devices() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/sys/class/block")
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

impl Volumes {
    /// The board the services read.
    pub fn board(&self) -> Shared {
        self.board.clone()
    }

    /// Starts the helper; volumes not mounted yet are pending until it ends.
    fn start_helper(&mut self) -> Result<Pid, String> {
        self.seen = block_devices();
        // The init binary itself, as this boot runs it (verified, in the root).
        let child = Command::new("/proc/self/exe")
            .arg(HELPER_ARG)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin")
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        let pid = Pid::from_raw(child.id() as i32);
        self.helper = Some(pid);
        let mut board = self.board.borrow_mut();
        for name in &self.names {
            board.states.entry(name.clone()).or_insert(State::Pending);
        }
        Ok(pid)
    }

    /// Reads the helper's outcomes after it ended with `status`.
    fn helper_ended(&mut self, status: WaitStatus, now: Instant) {
        self.helper = None;
        let dir = Path::new(RUN_DIR).join(STATE_DIR);
        let ended_badly = !matches!(status, WaitStatus::Exited(_, 0));
        let mut board = self.board.borrow_mut();
        for name in &self.names {
            let state = match status::read(&dir, name) {
                Some(Outcome::Mounted { device, .. }) => State::Mounted(device),
                Some(Outcome::Missing(why)) => State::Missing(why),
                Some(Outcome::Failed(why)) => State::Failed(why),
                None if ended_badly => {
                    let why = format!("the volume helper ended early ({status:?})");
                    console::warning(&format!("volumes: {name}: {why}"));
                    State::Failed(why)
                }
                None => State::Failed("the volume helper left no outcome".into()),
            };
            board.states.insert(name.clone(), state);
        }
        let unsettled = board
            .states
            .values()
            .any(|s| matches!(s, State::Missing(_) | State::Failed(_)));
        self.next_look = unsettled.then_some(now + LOOK_EVERY);
    }
}

impl Task for Volumes {
    fn fds(&self) -> Vec<BorrowedFd<'_>> {
        Vec::new()
    }

    fn deadline(&self) -> Option<Instant> {
        self.next_look
    }

    fn run(&mut self, _ready: &[bool], now: Instant) -> Control {
        if self.next_look.is_none_or(|t| t > now) || self.helper.is_some() {
            return Control::Continue;
        }
        self.next_look = Some(now + LOOK_EVERY);
        if block_devices() != self.seen {
            match self.start_helper() {
                Ok(_) => self.next_look = None,
                Err(e) => console::warning(&format!("volumes: cannot start the helper: {e}")),
            }
        }
        Control::Continue
    }

    fn child_exited(&mut self, pid: Pid, status: WaitStatus) -> bool {
        if self.helper != Some(pid) {
            return false;
        }
        self.helper_ended(status, Instant::now());
        true
    }

    /// A helper in the middle of a mkfs is given the budget to finish (a file system cut
    /// short makes the disk not empty, and it would never be formatted again by itself).
    fn stop(&mut self, budget: Duration) {
        let Some(pid) = self.helper.take() else {
            return;
        };
        let deadline = Instant::now() + budget;
        loop {
            match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => {}
                _ => return,
            }
            if Instant::now() >= deadline {
                console::warning("volumes: the volume helper is still at work; stopping it");
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                let _ = waitpid(pid, None);
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_board_says_what_holds_a_service_back() {
        let mut board = Board::default();
        board
            .states
            .insert("db".into(), State::Mounted("/dev/vdb".into()));
        board.states.insert("cache".into(), State::Pending);
        board.states.insert(
            "logs".into(),
            State::Missing("no disk has serial l1".into()),
        );
        assert_eq!(board.blocking(&["db".into()]), None);
        let b = board.blocking(&["db".into(), "cache".into()]).unwrap();
        assert_eq!((b.volume.as_str(), b.lasting), ("cache", false));
        let b = board.blocking(&["logs".into()]).unwrap();
        assert!(b.lasting && b.why.starts_with("missing: no disk"), "{b:?}");
        assert!(board.blocking(&["nosuch".into()]).unwrap().lasting);
        assert_eq!(size_text(1 << 30), "1.0 GiB");
        assert_eq!(size_text(512 << 20), "512 MiB");
    }
}
