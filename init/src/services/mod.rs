//! The host's services: OCI bundles from the read-only root, run by crun, supervised here.
//!
//! The builder lays the bundles out under `/usr/lib/crust/services` with a start order and a
//! policy file each ([`crust_format::service`]). Stage 2 mounts cgroup2, then this task
//! starts every service (`crun run`, in the foreground, one process per service that this
//! task watches), sends each one's output to the console and its log, restarts it per
//! policy with exponential backoff, runs its health checks, and reports the boot healthy
//! once every service that has a check passed it. At shutdown it stops the services in
//! reverse order: SIGTERM, up to the service's stop timeout, then SIGKILL.

mod health;
mod output;

use std::fs;
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crust_format::phase::Phase;
use crust_format::service::{self, Health, Restart, ServiceSpec};
use nix::mount::{MsFlags, mount};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::console;
use crate::event::{Control, Task};
use output::{Log, OutputPipe};

/// crun, from the root.
const CRUN: &str = "/usr/bin/crun";
/// crun's state (on the /run tmpfs).
const CRUN_ROOT: &str = "/run/crun";
/// Where cgroup2 is mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// A service that ran at least this long before it ended starts its backoff afresh.
const STABLE_AFTER: Duration = Duration::from_secs(10);
/// Longest wait between restarts.
const BACKOFF_CAP: Duration = Duration::from_secs(60);

/// Where a service is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Not started yet (waiting for the services it follows).
    Waiting,
    /// `crun run` is running.
    Running { pid: Pid, since: Instant },
    /// Ended; starts again at the instant.
    Backoff { until: Instant },
    /// Ended for good (restart policy).
    Done,
}

#[derive(Debug)]
struct Service {
    spec: ServiceSpec,
    bundle: PathBuf,
    state: State,
    failures: u32,
    starts: u32,
    pipe: Option<OutputPipe>,
    log: Log,
    health_ok: Option<bool>,
    passed_once: bool,
    next_check: Option<Instant>,
    check_pid: Option<Pid>,
}

/// The services task.
#[derive(Debug)]
pub struct Services {
    services: Vec<Service>,
    healthy_reported: bool,
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
}

impl Services {
    /// Reads the bundles listed in the root's start order. A service whose files cannot be
    /// read is reported and left out; the others still run.
    pub fn load(root: &Path) -> Self {
        let dir = root.join(service::SERVICES_DIR);
        let order = fs::read_to_string(dir.join(service::ORDER_FILE)).unwrap_or_default();
        let mut services = Vec::new();
        for name in order.lines().filter(|l| !l.is_empty()) {
            let bundle = dir.join(name);
            let spec = fs::read_to_string(bundle.join(service::SERVICE_FILE))
                .map_err(|e| e.to_string())
                .and_then(|t| ServiceSpec::parse(&t).map_err(|e| e.to_string()));
            match spec {
                Ok(spec) => services.push(Service {
                    log: Log::new(Path::new(output::LOG_DIR), &spec.name),
                    spec,
                    bundle,
                    state: State::Waiting,
                    failures: 0,
                    starts: 0,
                    pipe: None,
                    health_ok: None,
                    passed_once: false,
                    next_check: None,
                    check_pid: None,
                }),
                Err(e) => console::warning(&format!("service {name} left out: {e}")),
            }
        }
        Self {
            services,
            healthy_reported: false,
        }
    }

    /// Starts what can start now; returns the console detail of the `services` phase.
    pub fn start(&mut self) -> String {
        if self.services.is_empty() {
            return "none declared".into();
        }
        if !Path::new(CRUN).is_file() {
            console::warning(&format!("{CRUN} is not in the image: no service can run"));
        }
        self.start_ready(Instant::now());
        let names: Vec<&str> = self.services.iter().map(|s| s.spec.name.as_str()).collect();
        let checks = self
            .services
            .iter()
            .filter(|s| s.spec.health.is_some())
            .count();
        format!(
            "started {} ({} with health checks)",
            names.join(", "),
            checks
        )
    }

    fn start_ready(&mut self, now: Instant) {
        for i in 0..self.services.len() {
            let due = match self.services[i].state {
                State::Waiting => true,
                State::Backoff { until } => until <= now,
                _ => false,
            };
            let deps_up = self.services[i].spec.after.iter().all(|dep| {
                self.services.iter().any(|s| {
                    &s.spec.name == dep && matches!(s.state, State::Running { .. } | State::Done)
                })
            });
            if due && deps_up {
                self.services[i].launch(now);
            }
        }
    }

    fn all_healthy(&self) -> Option<String> {
        let checked: Vec<&Service> = self
            .services
            .iter()
            .filter(|s| s.spec.health.is_some())
            .collect();
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
                "no service has a health check".into()
            } else {
                format!("{} health check(s) pass: {}", list.len(), list.join(", "))
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

    fn launch(&mut self, now: Instant) {
        // A container left over from a crashed run would make `crun run` fail.
        let _ = crun(&["delete", "--force", &self.spec.name]);
        let spawned = OutputPipe::new().and_then(|(pipe, write)| {
            let child = Command::new(CRUN)
                .args(["--root", CRUN_ROOT, "run", "--no-new-keyring", "--bundle"])
                .arg(&self.bundle)
                .arg(&self.spec.name)
                .stdin(Stdio::null())
                .stdout(Stdio::from(write.try_clone()?))
                .stderr(Stdio::from(write))
                .spawn()?;
            Ok((pipe, child.id()))
        });
        match spawned {
            Ok((pipe, pid)) => {
                self.starts += 1;
                self.pipe = Some(pipe);
                self.state = State::Running {
                    pid: Pid::from_raw(pid as i32),
                    since: now,
                };
                self.next_check = self
                    .spec
                    .health
                    .as_ref()
                    .map(|_| now + Duration::from_millis(500));
                if self.starts > 1 {
                    let n = self.starts - 1;
                    self.say(&format!("restarted (restart {n})"));
                }
            }
            Err(e) => {
                self.say(&format!("cannot start: {e}"));
                self.ended(now, false);
            }
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
        if !matches!(self.state, State::Running { .. }) || self.check_pid.is_some() {
            return;
        }
        self.next_check = Some(now + Duration::from_secs(u64::from(self.spec.health_interval)));
        match health {
            Health::Tcp(port) => self.record(health::tcp(port)),
            Health::Http { port, path } => self.record(health::http(port, &path)),
            Health::Exec => {
                let process = self.bundle.join(service::HEALTH_PROCESS_FILE);
                let spawned = Command::new(CRUN)
                    .args(["--root", CRUN_ROOT, "exec", "--process"])
                    .arg(process)
                    .arg(&self.spec.name)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn();
                match spawned {
                    Ok(child) => self.check_pid = Some(Pid::from_raw(child.id() as i32)),
                    Err(e) => {
                        self.say(&format!("cannot run the health check: {e}"));
                        self.record(false);
                    }
                }
            }
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
        let State::Running { pid, .. } = self.state else {
            return;
        };
        let start = Instant::now();
        let timeout = Duration::from_secs(u64::from(self.spec.stop_timeout)).min(budget);
        self.say("stopping: SIGTERM");
        let _ = crun(&["kill", &self.spec.name, "TERM"]);
        let mut status = wait_for(pid, timeout, || self.pump());
        if status.is_none() {
            self.say(&format!(
                "still running after {} s: SIGKILL",
                timeout.as_secs()
            ));
            let _ = crun(&["kill", "--all", &self.spec.name, "KILL"]);
            status = wait_for(pid, Duration::from_secs(5), || self.pump());
        }
        self.pump();
        let _ = crun(&["delete", "--force", &self.spec.name]);
        self.state = State::Done;
        self.say(&format!(
            "stopped in {:.1} s ({})",
            start.elapsed().as_secs_f64(),
            status.map_or("did not exit".into(), describe)
        ));
    }
}

/// Runs a short crun command and waits for it.
fn crun(args: &[&str]) -> std::io::Result<std::process::ExitStatus> {
    Command::new(CRUN)
        .args(["--root", CRUN_ROOT])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
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
        self.services
            .iter()
            .filter_map(|s| s.pipe.as_ref().map(|p| p.fd()))
            .collect()
    }

    fn deadline(&self) -> Option<Instant> {
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
            if s.next_check.is_some_and(|t| t <= now) {
                s.check(now);
            }
        }
        self.start_ready(now);
        if !self.healthy_reported
            && let Some(detail) = self.all_healthy()
        {
            self.healthy_reported = true;
            console::phase(Phase::Healthy, &detail);
        }
        Control::Continue
    }

    fn child_exited(&mut self, pid: Pid, status: WaitStatus) -> bool {
        let now = Instant::now();
        for s in &mut self.services {
            if s.check_pid == Some(pid) {
                s.check_pid = None;
                s.record(matches!(status, WaitStatus::Exited(_, 0)));
                return true;
            }
            if matches!(s.state, State::Running { pid: p, .. } if p == pid) {
                s.pump();
                s.say(&format!("exited ({})", describe(status)));
                s.ended(now, matches!(status, WaitStatus::Exited(_, 0)));
                return true;
            }
        }
        false
    }

    fn stop(&mut self, budget: Duration) {
        let deadline = Instant::now() + budget;
        for s in self.services.iter_mut().rev() {
            let left = deadline.saturating_duration_since(Instant::now());
            s.stop(left.max(Duration::from_secs(1)));
        }
    }
}
