//! PID 1's main loop: one `poll(2)` over the signalfd and every [`Task`]'s descriptors,
//! with the earliest of their deadlines as the timeout.
//!
//! Everything stage 2 keeps doing after boot is a task: the power button, the DHCP leases,
//! the services. The loop owns the signals: it reaps every exited child (orphans included,
//! as PID 1 must) and offers each status to the tasks, so a supervisor learns that its
//! process died; it turns SIGTERM, SIGPWR and ctrl-alt-del into a shutdown, which stops the
//! tasks in reverse order before the machine goes down. A task with long blocking work (a
//! download, an SNTP exchange with name lookups) hands it to a [`Worker`] thread and
//! polls the worker's descriptor.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::Signal;
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::console;
use crate::shutdown::Action;

/// What a task asks of the loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// Keep going.
    Continue,
    /// Shut the machine down (or reboot), giving the reason.
    Shutdown(Action, String),
}

/// Something PID 1 keeps doing after boot.
pub trait Task {
    /// Descriptors to wait for input on.
    fn fds(&self) -> Vec<BorrowedFd<'_>>;

    /// When the task wants to run even without input.
    fn deadline(&self) -> Option<Instant>;

    /// Runs after a wake-up: `ready[i]` tells whether `fds()[i]` has input (the same
    /// descriptors, in the same order, as the last `fds()` call). `now` may be at or past
    /// the deadline.
    fn run(&mut self, ready: &[bool], now: Instant) -> Control;

    /// A child exited; returns true if it was this task's.
    fn child_exited(&mut self, _pid: Pid, _status: WaitStatus) -> bool {
        false
    }

    /// The machine is going down: stop what this task started, within `budget`.
    fn stop(&mut self, _budget: Duration) {}
}

/// The loop's decision to end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    /// Power off or reboot.
    pub action: Action,
    /// Why.
    pub reason: String,
}

/// How long tasks get to stop at shutdown, altogether.
pub const STOP_BUDGET: Duration = Duration::from_secs(20);

/// Runs the tasks until one of them or a signal asks for a shutdown; stops the tasks in
/// reverse order and returns the decision.
pub fn run(signals: &SignalFd, tasks: &mut [Box<dyn Task>]) -> Exit {
    let exit = loop {
        let now = Instant::now();
        let deadline = tasks.iter().filter_map(|t| t.deadline()).min();
        let timeout = match deadline {
            Some(d) => {
                let ms = d.saturating_duration_since(now).as_millis().min(60_000) as u16;
                PollTimeout::from(ms)
            }
            None => PollTimeout::NONE,
        };
        let (signal_ready, ready) = {
            let per_task: Vec<Vec<BorrowedFd<'_>>> = tasks.iter().map(|t| t.fds()).collect();
            let mut fds = vec![PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
            for task_fds in &per_task {
                fds.extend(
                    task_fds
                        .iter()
                        .map(|fd| PollFd::new(*fd, PollFlags::POLLIN)),
                );
            }
            match poll(&mut fds, timeout) {
                Ok(_) => {}
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    // Nothing to wait on is fatal for a supervisor; do not spin.
                    console::warning(&format!("poll failed: {}", e.desc()));
                    std::thread::sleep(Duration::from_secs(1));
                    continue;
                }
            }
            let flags: Vec<bool> = fds
                .iter()
                .map(|fd| fd.revents().is_some_and(|r| !r.is_empty()))
                .collect();
            let mut at = 1;
            let ready: Vec<Vec<bool>> = per_task
                .iter()
                .map(|task_fds| {
                    let slice = flags[at..at + task_fds.len()].to_vec();
                    at += task_fds.len();
                    slice
                })
                .collect();
            (flags[0], ready)
        };
        if signal_ready && let Some(exit) = drain_signals(signals, tasks) {
            break exit;
        }
        let now = Instant::now();
        let mut decision = None;
        for (task, ready) in tasks.iter_mut().zip(ready) {
            let due = task.deadline().is_some_and(|d| d <= now);
            if !(due || ready.iter().any(|r| *r)) {
                continue;
            }
            if let Control::Shutdown(action, reason) = task.run(&ready, now) {
                decision = Some(Exit { action, reason });
                break;
            }
        }
        if let Some(exit) = decision {
            break exit;
        }
    };
    let deadline = Instant::now() + STOP_BUDGET;
    for task in tasks.iter_mut().rev() {
        task.stop(deadline.saturating_duration_since(Instant::now()));
    }
    exit
}

/// Handles pending signals; returns a shutdown decision if one arrived.
fn drain_signals(signals: &SignalFd, tasks: &mut [Box<dyn Task>]) -> Option<Exit> {
    loop {
        let info = match signals.read_signal() {
            Ok(Some(info)) => info,
            Ok(None) => return None,
            Err(Errno::EINTR) => continue,
            Err(_) => return None,
        };
        let Some(signal) = i32::try_from(info.ssi_signo)
            .ok()
            .and_then(|n| Signal::try_from(n).ok())
        else {
            continue;
        };
        let exit = |action, reason: &str| {
            Some(Exit {
                action,
                reason: reason.to_owned(),
            })
        };
        match signal {
            Signal::SIGCHLD => reap(tasks),
            Signal::SIGTERM => return exit(Action::PowerOff, "SIGTERM"),
            Signal::SIGPWR => return exit(Action::PowerOff, "SIGPWR (power failure)"),
            Signal::SIGINT => return exit(Action::Reboot, "ctrl-alt-del"),
            other => console::warning(&format!("ignoring {other}: nothing handles it")),
        }
    }
}

/// Reaps every exited child and offers each status to the tasks (orphans belong to none).
pub fn reap(tasks: &mut [Box<dyn Task>]) {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
            Ok(status) => {
                if let Some(pid) = status.pid() {
                    for task in tasks.iter_mut() {
                        if task.child_exited(pid, status) {
                            break;
                        }
                    }
                }
            }
            Err(Errno::EINTR) => {}
            Err(_) => return,
        }
    }
}

/// Blocking work on a thread of its own, for a task to poll: [`Worker::fd`] reads as ready
/// (end of file) once the thread has ended, however it ended, because the thread holds the
/// only write end of a pipe and drops it last.
///
/// Work on a worker must not start processes: the loop reaps every child, so a process
/// the thread waited for could be reaped from under it.
#[derive(Debug)]
pub struct Worker<T> {
    thread: JoinHandle<T>,
    done: OwnedFd,
}

impl<T: Send + 'static> Worker<T> {
    /// Runs `work` on a new thread named `name`.
    pub fn start(name: &str, work: impl FnOnce() -> T + Send + 'static) -> std::io::Result<Self> {
        let (done, write_end) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let outcome = work();
                drop(write_end);
                outcome
            })?;
        Ok(Self { thread, done })
    }

    /// The descriptor that reads as ready once the work has ended.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.done.as_fd()
    }

    /// Waits up to `budget` for the work to end: its outcome (`None` if the thread
    /// panicked) if it did, else the worker back.
    pub fn wait(self, budget: Duration) -> Result<Option<T>, Self> {
        let ms = budget.as_millis().min(u128::from(u16::MAX)) as u16;
        let mut fds = [PollFd::new(self.done.as_fd(), PollFlags::POLLIN)];
        // Ready means the work has returned; the thread itself ends a moment later, which
        // the join waits for.
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(n) if n > 0 => Ok(self.finish()),
            _ => Err(self),
        }
    }

    /// The work's outcome, waiting for it if need be; `None` if the thread panicked.
    pub fn finish(self) -> Option<T> {
        self.thread.join().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready<T: Send + 'static>(worker: &Worker<T>) -> bool {
        let mut fds = [PollFd::new(worker.fd(), PollFlags::POLLIN)];
        poll(&mut fds, PollTimeout::ZERO).unwrap() == 1
    }

    #[test]
    fn a_worker_reads_ready_once_its_thread_ended() {
        let (go, wait) = std::sync::mpsc::channel::<()>();
        let worker = Worker::start("test", move || {
            wait.recv().unwrap();
            42
        })
        .unwrap();
        assert!(!ready(&worker), "ready while the work still runs");
        go.send(()).unwrap();
        let mut fds = [PollFd::new(worker.fd(), PollFlags::POLLIN)];
        assert_eq!(poll(&mut fds, PollTimeout::from(5000u16)).unwrap(), 1);
        assert_eq!(worker.finish(), Some(42));
    }

    #[test]
    fn a_wait_takes_only_its_budget() {
        let (go, wait) = std::sync::mpsc::channel::<()>();
        let worker = Worker::start("test", move || wait.recv().is_ok()).unwrap();
        let started = Instant::now();
        let worker = worker
            .wait(Duration::from_millis(50))
            .expect_err("the work ended before it could");
        assert!(started.elapsed() < Duration::from_secs(5));
        go.send(()).unwrap();
        assert_eq!(worker.wait(Duration::from_secs(5)).ok(), Some(Some(true)));
    }
}
