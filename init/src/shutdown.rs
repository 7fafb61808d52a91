//! The end of every boot: stop all processes, sync, unmount, and power off or reboot.
//! Also the last resort of the error path, which reboots without ceremony.

use std::time::{Duration, Instant};

use crust_format::phase::Phase;
use nix::errno::Errno;
use nix::sys::reboot::{RebootMode, reboot};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{Pid, sync};

use crate::{console, mounts};

/// How long processes get to exit after SIGTERM before they are killed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// What the machine does at the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Power off (SIGTERM, SIGPWR, the power button).
    PowerOff,
    /// Reboot (ctrl-alt-del, errors).
    Reboot,
}

/// Shuts down cleanly: stops processes, unmounts, then powers off or reboots.
pub fn shutdown(action: Action, reason: &str) -> ! {
    let verb = match action {
        Action::PowerOff => "power off",
        Action::Reboot => "reboot",
    };
    console::phase(
        Phase::Shutdown,
        &format!("{reason}: stopping processes, then {verb}"),
    );
    let stopped = stop_processes(STOP_TIMEOUT);
    sync();
    let unmounted = mounts::unmount_all();
    sync();
    let mut detail = match action {
        Action::PowerOff => "powering off".to_owned(),
        Action::Reboot => "rebooting".to_owned(),
    };
    detail.push_str(&format!(
        " ({} processes stopped, {} killed; {} file systems unmounted, {} detached, {} busy)",
        stopped.exited, stopped.killed, unmounted.clean, unmounted.detached, unmounted.failed
    ));
    console::phase(Phase::PowerOff, &detail);
    halt(action)
}

/// Hands the machine to the firmware. Never returns: if the kernel refuses (it only does
/// for a caller without CAP_SYS_BOOT), PID 1 waits for the operator rather than exit,
/// which would panic the kernel.
pub fn halt(action: Action) -> ! {
    let mode = match action {
        Action::PowerOff => RebootMode::RB_POWER_OFF,
        Action::Reboot => RebootMode::RB_AUTOBOOT,
    };
    sync();
    let _ = reboot(mode);
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Processes that went away.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stopped {
    /// Exited after SIGTERM.
    pub exited: usize,
    /// Reaped after SIGKILL.
    pub killed: usize,
}

/// Sends SIGTERM to every process, reaps them for up to `timeout`, then SIGKILLs the rest.
fn stop_processes(timeout: Duration) -> Stopped {
    let mut stopped = Stopped::default();
    // kill(-1) reaches every process but PID 1 itself; ESRCH means there were none.
    if kill(Pid::from_raw(-1), Signal::SIGTERM) == Err(Errno::ESRCH) {
        return stopped;
    }
    let deadline = Instant::now() + timeout;
    loop {
        let (reaped, left) = reap();
        stopped.exited += reaped;
        if !left {
            return stopped;
        }
        if Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let (reaped, left) = reap();
        stopped.killed += reaped;
        if !left || Instant::now() >= deadline {
            return stopped;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reaps every child that has exited; returns how many, and whether children remain.
/// Orphans are re-parented to PID 1, so "no children" means no processes at all.
pub fn reap() -> (usize, bool) {
    let mut reaped = 0;
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => return (reaped, true),
            Ok(_) => reaped += 1,
            Err(Errno::EINTR) => {}
            Err(_) => return (reaped, false),
        }
    }
}
