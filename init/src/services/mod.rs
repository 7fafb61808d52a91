//! The host's services: containers from the read-only root run by crun, host programs
//! (containerd), and images containerd pulls at boot, all supervised here.
//!
//! The builder lays the services out under `/usr/lib/crust/services` with a start order and
//! a policy file each ([`crust_format::service`]); user-data may change, add or turn off
//! services ([`plan`]). Stage 2 mounts cgroup2, then this task starts every service (one
//! foreground process per service that this task watches, made by [`runner`] for its kind,
//! after the steps it needs first, such as a pull), sends each one's output to the console
//! and its log, restarts it per policy with exponential backoff, runs its health checks, and
//! reports the boot healthy once every service that has a check passed it. A service starts
//! once those it names in `after` run and, if they have a health check, have passed it. At
//! shutdown it stops the services in reverse order: SIGTERM, up to the service's stop
//! timeout, then SIGKILL. The admin shell's service has the console itself as its input and
//! output instead of a pipe. A container that mounts data volumes ([`crate::volumes`])
//! starts only once each is mounted, and says on the console what it waits for; while a
//! volume is missing or refused, its services do not count against the boot's health.

mod health;
mod limits;
pub mod output;
mod plan;
mod process;
mod runner;

pub use plan::check as check_user_data;

use std::cell::Cell;
use std::collections::VecDeque;
use std::fs::{self, OpenOptions};
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use crust_format::phase::Phase;
use crust_format::service::{self, Health, Kind, Restart, ServiceSpec};
use nix::mount::{MsFlags, mount};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::config::services::Service as UserService;
use crate::console;
use crate::event::{Control, Task, Worker};
use crate::volumes;
use output::{Log, OutputPipe};
use plan::Changes;
use runner::{CGROUP_ROOT, CRUN, CTR, Launch, Step};

/// The console, for services that are interactive (the admin shell).
const CONSOLE: &str = "/dev/console";
/// A service that ran at least this long before it ended starts its backoff afresh.
const STABLE_AFTER: Duration = Duration::from_secs(10);
/// Longest wait between restarts.
const BACKOFF_CAP: Duration = Duration::from_secs(60);

/// Where a service is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Not started yet (waiting for the services it follows).
    Waiting,
    /// A step before the process runs (removing leftovers, the pull).
    Preparing { pid: Pid, must_succeed: bool },
    /// The service's process runs.
    Running { pid: Pid, since: Instant },
    /// Ended; starts again at the instant.
    Backoff { until: Instant },
    /// Ended for good (restart policy).
    Done,
}

#[derive(Debug)]
struct Service {
    spec: ServiceSpec,
    /// Its folder in the root (`health.json`), if it has one.
    dir: Option<PathBuf>,
    launch: Launch,
    /// Steps left before the process starts.
    steps: VecDeque<Step>,
    /// Whether this boot pulled its image already.
    pulled: bool,
    /// The step running now, and whether its outcome is shown.
    step: Option<(String, bool)>,
    state: State,
    failures: u32,
    starts: u32,
    pipe: Option<OutputPipe>,
    log: Log,
    health_ok: Option<bool>,
    passed_once: bool,
    next_check: Option<Instant>,
    check_pid: Option<Pid>,
    /// A TCP or HTTP check running on its thread: a service that answers slowly (or a
    /// byte at a time) must never hold up PID 1's loop.
    probe: Option<Worker<bool>>,
    /// The last word printed on why it waits for a volume (said again only when it
    /// changes).
    held: Option<String>,
    /// How its last run ended (`code:N` or `signal:N`) and when (Unix seconds).
    last_exit: Option<(String, i64)>,
}

/// The services task.
#[derive(Debug)]
pub struct Services {
    services: Vec<Service>,
    changes: Changes,
    healthy_reported: bool,
    healthy: Rc<Cell<bool>>,
    /// The volumes' states: a container that mounts a volume starts once it is mounted.
    volumes: volumes::Shared,
    /// When the services were loaded: a deadline that is always due.
    loaded_at: Instant,
    /// The status file's text as last written (it is written when it changes).
    published: String,
}

/// Mounts cgroup2 and turns on the controllers services' limits need.
pub fn mount_cgroups() {
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    if !crate::mounts::is_mount_point(Path::new(CGROUP_ROOT))
        && let Err(e) = mount(
            Some("cgroup2"),
            CGROUP_ROOT,
            Some("cgroup2"),
            flags,
            Some("nsdelegate"),
        )
    {
        console::warning(&format!(
            "cannot mount cgroup2 on {CGROUP_ROOT}: {}; services will not start",
            e.desc()
        ));
        return;
    }
    let control = Path::new(CGROUP_ROOT).join("cgroup.subtree_control");
    let available =
        fs::read_to_string(Path::new(CGROUP_ROOT).join("cgroup.controllers")).unwrap_or_default();
    let wanted: Vec<String> = ["cpu", "memory", "pids", "io"]
        .iter()
        .filter(|c| available.split_whitespace().any(|a| a == **c))
        .map(|c| format!("+{c}"))
        .collect();
    if let Err(e) = fs::write(&control, wanted.join(" ")) {
        console::warning(&format!(
            "cannot enable cgroup controllers ({}): {e}",
            wanted.join(" ")
        ));
    }
    limits::cap_services_memory(Path::new(CGROUP_ROOT));
}

impl Services {
    /// Reads the services listed in the root's start order and applies user-data's
    /// `tables` (the config phase checked them against the same root). A service whose
    /// files cannot be read is reported and left out; the others still run. `volumes` is
    /// the volumes' board: a service that mounts one waits until it is mounted.
    pub fn load(root: &Path, tables: &[UserService], volumes: volumes::Shared) -> Self {
        let (defs, problems) = plan::load_root(root);
        for p in problems {
            console::warning(&p);
        }
        let (defs, changes) = match plan::apply(defs.clone(), tables) {
            Ok(applied) => applied,
            Err(e) => {
                console::warning(&format!(
                    "services: user-data not applied ({e}); running the image's services"
                ));
                (defs, Changes::default())
            }
        };
        let (defs, problems) = plan::write_bundles(defs);
        for p in problems {
            console::warning(&p);
        }
        let services = defs
            .into_iter()
            .map(|def| Service {
                log: Log::new(Path::new(output::LOG_DIR), &def.spec.name),
                spec: def.spec,
                dir: def.dir,
                launch: def.launch,
                steps: VecDeque::new(),
                pulled: false,
                step: None,
                state: State::Waiting,
                failures: 0,
                starts: 0,
                pipe: None,
                health_ok: None,
                passed_once: false,
                next_check: None,
                check_pid: None,
                probe: None,
                held: None,
                last_exit: None,
            })
            .collect();
        Self {
            services,
            changes,
            healthy_reported: false,
            healthy: Rc::new(Cell::new(false)),
            volumes,
            loaded_at: Instant::now(),
            published: String::new(),
        }
    }

    /// Turns true once every service with a health check passed it (the update agent
    /// blesses a trial boot then).
    pub fn healthy_flag(&self) -> Rc<Cell<bool>> {
        self.healthy.clone()
    }

    /// Prints the `healthy` phase once every health check passed (at once if none are
    /// declared).
    pub fn report_healthy(&mut self) {
        if !self.healthy_reported
            && let Some(detail) = self.all_healthy()
        {
            self.healthy_reported = true;
            self.healthy.set(true);
            console::phase(
                Phase::Healthy,
                &format!("{detail}; init resident {}", crate::memory::resident()),
            );
        }
    }

    /// Starts what can start now; returns the console detail of the `services` phase.
    pub fn start(&mut self) -> String {
        if self.services.is_empty() {
            return format!("none declared{}", self.changes.describe());
        }
        for (program, needed_by) in [(CRUN, "crun"), (CTR, "pull")] {
            let needed = self.services.iter().any(|s| match &s.spec.kind {
                Kind::Crun => needed_by == "crun",
                Kind::Pull(_) => needed_by == "pull",
                Kind::Host => false,
            });
            if needed && !Path::new(program).is_file() {
                console::warning(&format!(
                    "{program} is not in the image: services of kind {needed_by} cannot run"
                ));
            }
        }
        self.start_ready(Instant::now());
        self.publish();
        let names: Vec<&str> = self.services.iter().map(|s| s.spec.name.as_str()).collect();
        let checks = self
            .services
            .iter()
            .filter(|s| s.spec.health.is_some())
            .count();
        let held: Vec<String> = self
            .services
            .iter()
            .filter(|s| s.state == State::Waiting && !s.spec.volumes.is_empty())
            .map(|s| {
                format!(
                    "{} waits for volumes {}",
                    s.spec.name,
                    s.spec.volumes.join(", ")
                )
            })
            .collect();
        let held = if held.is_empty() {
            String::new()
        } else {
            format!("; {}", held.join("; "))
        };
        format!(
            "started {} ({} with health checks){held}{}",
            names.join(", "),
            checks,
            self.changes.describe()
        )
    }

    /// Whether the services service `i` follows run (and passed their health checks, if
    /// they have one), or ended for good.
    fn deps_up(&self, i: usize) -> bool {
        self.services[i].spec.after.iter().all(|dep| {
            self.services.iter().any(|s| {
                &s.spec.name == dep
                    && match s.state {
                        State::Running { .. } => s.spec.health.is_none() || s.passed_once,
                        State::Done => true,
                        _ => false,
                    }
            })
        })
    }

    fn start_ready(&mut self, now: Instant) {
        for i in 0..self.services.len() {
            let due = match self.services[i].state {
                State::Waiting => true,
                State::Backoff { until } => until <= now,
                _ => false,
            };
            if !(due && self.deps_up(i)) {
                continue;
            }
            let blocked = self
                .volumes
                .borrow()
                .blocking(&self.services[i].spec.volumes);
            let s = &mut self.services[i];
            match blocked {
                None => {
                    s.held = None;
                    s.launch(now);
                }
                // Never started without its volume: the mount point would be a folder of
                // the state partition, and the service's data would go there.
                Some(b) => {
                    let note = format!("waits for volume {}: {}", b.volume, b.why);
                    if s.held.as_deref() != Some(note.as_str()) {
                        s.say(&note);
                        s.held = Some(note);
                    }
                }
            }
        }
    }

    /// Services that cannot start until a missing or refused volume comes (they do not
    /// hold the boot's health back: no rollback brings a disk).
    fn held_by_volumes(&self) -> Vec<&Service> {
        let board = self.volumes.borrow();
        self.services
            .iter()
            .filter(|s| {
                s.state == State::Waiting
                    && board.blocking(&s.spec.volumes).is_some_and(|b| b.lasting)
            })
            .collect()
    }

    /// Publishes each service's state for the exporter ([`crate::observe::status`]) if it
    /// changed since the last time.
    fn publish(&mut self) {
        let mut kv = crust_format::observe::KeyValues::default();
        for s in &self.services {
            let name = &s.spec.name;
            let state = match s.state {
                State::Waiting => "waiting",
                State::Preparing { .. } => "preparing",
                State::Running { .. } => "running",
                State::Backoff { .. } => "backoff",
                State::Done => "done",
            };
            kv.set(&format!("{name}.state"), state)
                .set(
                    &format!("{name}.up"),
                    u8::from(matches!(s.state, State::Running { .. })),
                )
                .set(&format!("{name}.starts"), s.starts)
                .set(&format!("{name}.restarts"), s.starts.saturating_sub(1));
            if let Some((how, at)) = &s.last_exit {
                kv.set(&format!("{name}.last-exit"), how)
                    .set(&format!("{name}.last-exit-time"), at);
            }
            if s.spec.health.is_some() {
                let health = match s.health_ok {
                    Some(true) => "pass",
                    Some(false) => "fail",
                    None => "unknown",
                };
                kv.set(&format!("{name}.health"), health);
            }
        }
        let text = kv.to_text();
        if text != self.published {
            crate::observe::status::publish(crust_format::observe::status::SERVICES, &kv);
            self.published = text;
        }
    }

    /// A child exited: the service (or step, or check) it was, if any, takes note.
    fn exited(&mut self, pid: Pid, status: WaitStatus) -> bool {
        let now = Instant::now();
        for s in &mut self.services {
            if s.check_pid == Some(pid) {
                s.check_pid = None;
                s.record(matches!(status, WaitStatus::Exited(_, 0)));
                return true;
            }
            if let State::Preparing {
                pid: p,
                must_succeed,
            } = s.state
                && p == pid
            {
                s.step_ended(now, must_succeed, status);
                return true;
            }
            if matches!(s.state, State::Running { pid: p, .. } if p == pid) {
                s.pump();
                s.say(&format!("exited ({})", describe(status)));
                s.last_exit = match status {
                    WaitStatus::Exited(_, code) => Some(format!("code:{code}")),
                    WaitStatus::Signaled(_, sig, _) => Some(format!("signal:{}", sig as i32)),
                    _ => None,
                }
                .map(|how| (how, crate::clock::now_unix()));
                s.ended(now, matches!(status, WaitStatus::Exited(_, 0)));
                return true;
            }
        }
        false
    }

    fn all_healthy(&self) -> Option<String> {
        let held = self.held_by_volumes();
        let checked: Vec<&Service> = self
            .services
            .iter()
            .filter(|s| s.spec.health.is_some())
            .filter(|s| !held.iter().any(|h| h.spec.name == s.spec.name))
            .collect();
        let not_counted = held
            .iter()
            .filter(|s| s.spec.health.is_some())
            .map(|s| s.spec.name.as_str())
            .collect::<Vec<_>>();
        let not_counted = if not_counted.is_empty() {
            String::new()
        } else {
            format!(
                "; not counted: {} (waiting for a volume)",
                not_counted.join(", ")
            )
        };
        if checked.iter().all(|s| s.passed_once) {
            let list: Vec<String> = checked
                .iter()
                .map(|s| {
                    format!(
                        "{} {}",
                        s.spec.name,
                        s.spec
                            .health
                            .as_ref()
                            .map_or(String::new(), |h| h.to_string())
                    )
                })
                .collect();
            Some(if list.is_empty() {
                format!("no service has a health check{not_counted}")
            } else {
                format!(
                    "{} health check(s) pass: {}{not_counted}",
                    list.len(),
                    list.join(", ")
                )
            })
        } else {
            None
        }
    }
}

impl Service {
    fn say(&mut self, line: &str) {
        output::to_console(&self.spec.name, line);
        self.log.write(line);
    }

    /// Starts the service: the steps its kind needs first, then its process.
    fn launch(&mut self, now: Instant) {
        self.steps = self.launch.steps(&self.spec.name, self.pulled).into();
        self.next(now);
    }

    /// Runs the next step, or the service's process when no step is left.
    fn next(&mut self, now: Instant) {
        if let Some(mut step) = self.steps.pop_front() {
            if step.show_errors {
                self.say(&step.what);
            }
            let spawned = OutputPipe::new().and_then(|(pipe, write)| {
                let stderr = if step.show_errors {
                    Stdio::from(write)
                } else {
                    Stdio::null()
                };
                let child = step
                    .command
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(stderr)
                    .spawn()?;
                Ok((pipe, child.id()))
            });
            match spawned {
                Ok((pipe, pid)) => {
                    self.pipe = step.show_errors.then_some(pipe);
                    self.step = Some((step.what, step.show_errors));
                    self.state = State::Preparing {
                        pid: Pid::from_raw(pid as i32),
                        must_succeed: step.must_succeed,
                    };
                }
                Err(e) if step.must_succeed => {
                    self.say(&format!("cannot start ({}): {e}", step.what));
                    self.ended(now, false);
                }
                Err(_) => self.next(now),
            }
            return;
        }
        let spawned = if self.spec.console {
            // The console itself: an interactive shell writes prompts without newlines and
            // reads what is typed.
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(CONSOLE)
                .and_then(|tty| {
                    let child = self
                        .launch
                        .command(&self.spec.name)
                        .stdin(Stdio::from(tty.try_clone()?))
                        .stdout(Stdio::from(tty.try_clone()?))
                        .stderr(Stdio::from(tty))
                        .spawn()?;
                    Ok((None, child.id()))
                })
        } else {
            OutputPipe::new().and_then(|(pipe, write)| {
                let child = self
                    .launch
                    .command(&self.spec.name)
                    .stdin(Stdio::null())
                    .stdout(Stdio::from(write.try_clone()?))
                    .stderr(Stdio::from(write))
                    .spawn()?;
                Ok((Some(pipe), child.id()))
            })
        };
        match spawned {
            Ok((pipe, pid)) => {
                let pid = Pid::from_raw(pid as i32);
                self.starts += 1;
                self.pipe = pipe;
                self.state = State::Running { pid, since: now };
                self.next_check = self
                    .spec
                    .health
                    .as_ref()
                    .map(|_| now + Duration::from_millis(500));
                if self.starts > 1 {
                    let n = self.starts - 1;
                    self.say(&format!("restarted (restart {n})"));
                }
                if let Err(e) = self.launch.started(&self.spec.name, pid) {
                    self.say(&e);
                }
            }
            Err(e) => {
                self.say(&format!("cannot start: {e}"));
                self.ended(now, false);
            }
        }
    }

    /// A step ended: the next one (or the process) starts, unless a step that must
    /// succeed failed.
    fn step_ended(&mut self, now: Instant, must_succeed: bool, status: WaitStatus) {
        self.pump();
        self.pipe = None;
        let ok = matches!(status, WaitStatus::Exited(_, 0));
        if let Some((what, true)) = self.step.take() {
            let outcome = if ok { "done".into() } else { describe(status) };
            self.say(&format!("{what}: {outcome}"));
        }
        if !must_succeed {
            self.next(now);
        } else if ok {
            self.pulled = true;
            self.next(now);
        } else {
            self.ended(now, false);
        }
    }

    /// The service's process ended (`clean`: exit status 0).
    fn ended(&mut self, now: Instant, clean: bool) {
        let ran = match self.state {
            State::Running { since, .. } => now - since,
            _ => Duration::ZERO,
        };
        if ran >= STABLE_AFTER {
            self.failures = 0;
        }
        self.health_ok = None;
        self.next_check = None;
        let restart = match self.spec.restart {
            Restart::Always => true,
            Restart::OnFailure => !clean,
            Restart::Never => false,
        };
        if restart {
            let delay = Duration::from_secs(1u64 << self.failures.min(6)).min(BACKOFF_CAP);
            self.failures += 1;
            self.state = State::Backoff { until: now + delay };
            self.say(&format!(
                "restarting in {} s (policy {})",
                delay.as_secs(),
                self.spec.restart.as_str()
            ));
        } else {
            self.state = State::Done;
            self.say(&format!(
                "not restarted (policy {})",
                self.spec.restart.as_str()
            ));
        }
    }

    /// Runs a due health check (exec checks complete in `child_exited`).
    fn check(&mut self, now: Instant) {
        let Some(health) = self.spec.health.clone() else {
            return;
        };
        if !matches!(self.state, State::Running { .. })
            || self.check_pid.is_some()
            || self.probe.is_some()
        {
            return;
        }
        self.next_check = Some(now + Duration::from_secs(u64::from(self.spec.health_interval)));
        let probe = match health {
            Health::Tcp(port) => Worker::start("health", move || health::tcp(port)),
            Health::Http { port, path } => {
                Worker::start("health", move || health::http(port, &path))
            }
            Health::Exec => {
                let process = self
                    .dir
                    .as_ref()
                    .map(|d| d.join(service::HEALTH_PROCESS_FILE))
                    .unwrap_or_default();
                let spawned = self
                    .launch
                    .health_command(&self.spec.name, &process)
                    .map_err(std::io::Error::other)
                    .and_then(|mut cmd: Command| {
                        cmd.stdin(Stdio::null())
                            .stdout(Stdio::null())
                            .stderr(Stdio::null())
                            .spawn()
                    });
                match spawned {
                    Ok(child) => self.check_pid = Some(Pid::from_raw(child.id() as i32)),
                    Err(e) => {
                        self.say(&format!("cannot run the health check: {e}"));
                        self.record(false);
                    }
                }
                return;
            }
        };
        match probe {
            Ok(worker) => self.probe = Some(worker),
            Err(e) => {
                self.say(&format!("cannot run the health check: {e}"));
                self.record(false);
            }
        }
    }

    /// Records a TCP or HTTP check whose thread has ended.
    fn probe_ended(&mut self) {
        let Some(worker) = self.probe.take() else {
            return;
        };
        match worker.wait(Duration::ZERO) {
            Ok(outcome) => self.record(outcome.unwrap_or(false)),
            Err(worker) => self.probe = Some(worker),
        }
    }

    fn record(&mut self, ok: bool) {
        if self.health_ok != Some(ok) {
            let h = self
                .spec
                .health
                .as_ref()
                .map_or(String::new(), |h| h.to_string());
            self.say(&format!(
                "health check {h} {}",
                if ok { "passes" } else { "fails" }
            ));
        }
        self.health_ok = Some(ok);
        self.passed_once |= ok;
    }

    fn pump(&mut self) {
        if let Some(pipe) = self.pipe.as_mut() {
            let closed = output::pump(&self.spec.name, pipe, &mut self.log);
            if closed {
                self.pipe = None;
            }
        }
    }

    /// SIGTERM, wait up to the stop timeout (still relaying output), then SIGKILL.
    fn stop(&mut self, budget: Duration) {
        let pid = match self.state {
            State::Running { pid, .. } => pid,
            State::Preparing { pid, .. } => {
                // A step (a pull, say) is not worth waiting for.
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                let _ = wait_for(pid, Duration::from_secs(5), || {});
                self.state = State::Done;
                return;
            }
            _ => return,
        };
        let start = Instant::now();
        let timeout = Duration::from_secs(u64::from(self.spec.stop_timeout)).min(budget);
        self.say("stopping: SIGTERM");
        self.launch.terminate(&self.spec.name, pid);
        let mut status = wait_for(pid, timeout, || self.pump());
        if status.is_none() {
            self.say(&format!(
                "still running after {} s: SIGKILL",
                timeout.as_secs()
            ));
            self.launch.kill(&self.spec.name, pid);
            status = wait_for(pid, Duration::from_secs(5), || self.pump());
        }
        self.pump();
        self.launch.cleanup(&self.spec.name);
        self.state = State::Done;
        self.say(&format!(
            "stopped in {:.1} s ({})",
            start.elapsed().as_secs_f64(),
            status.map_or("did not exit".into(), describe)
        ));
    }
}

/// Waits for `pid` to exit, calling `tick` meanwhile; `None` on timeout.
fn wait_for(pid: Pid, timeout: Duration, mut tick: impl FnMut()) -> Option<WaitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {}
            Ok(status) => return Some(status),
            Err(_) => return Some(WaitStatus::StillAlive), // already reaped elsewhere
        }
        tick();
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn describe(status: WaitStatus) -> String {
    match status {
        WaitStatus::Exited(_, 0) => "exit status 0".into(),
        WaitStatus::Exited(_, code) => format!("exit status {code}"),
        WaitStatus::Signaled(_, sig, _) => format!("killed by {sig}"),
        _ => "gone".into(),
    }
}

impl Task for Services {
    fn fds(&self) -> Vec<BorrowedFd<'_>> {
        let pipes = self
            .services
            .iter()
            .filter_map(|s| s.pipe.as_ref().map(|p| p.fd()));
        let probes = self
            .services
            .iter()
            .filter_map(|s| s.probe.as_ref().map(Worker::fd));
        pipes.chain(probes).collect()
    }

    fn deadline(&self) -> Option<Instant> {
        // A volume mounted meanwhile (the volumes task heard its helper end): its services
        // start on the loop's next turn.
        let board = self.volumes.borrow();
        let unblocked = self.services.iter().enumerate().any(|(i, s)| {
            s.state == State::Waiting
                && !s.spec.volumes.is_empty()
                && board.blocking(&s.spec.volumes).is_none()
                && self.deps_up(i)
        });
        drop(board);
        // Or a volume found missing: the services waiting for it no longer hold the health
        // back.
        if unblocked || (!self.healthy_reported && self.all_healthy().is_some()) {
            // Already past: the loop compares deadlines with the time it woke up.
            return Some(self.loaded_at);
        }
        self.services
            .iter()
            .flat_map(|s| {
                let backoff = match s.state {
                    State::Backoff { until } => Some(until),
                    _ => None,
                };
                [backoff, s.next_check]
            })
            .flatten()
            .min()
    }

    fn run(&mut self, _ready: &[bool], now: Instant) -> Control {
        for s in &mut self.services {
            s.pump();
            s.probe_ended();
            if s.next_check.is_some_and(|t| t <= now) {
                s.check(now);
            }
        }
        self.start_ready(now);
        self.report_healthy();
        self.publish();
        Control::Continue
    }

    fn child_exited(&mut self, pid: Pid, status: WaitStatus) -> bool {
        let handled = self.exited(pid, status);
        if handled {
            self.publish();
        }
        handled
    }

    fn stop(&mut self, budget: Duration) {
        let deadline = Instant::now() + budget;
        for s in self.services.iter_mut().rev() {
            let left = deadline.saturating_duration_since(Instant::now());
            s.stop(left.max(Duration::from_secs(1)));
        }
    }
}
