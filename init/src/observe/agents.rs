//! The observability agent's processes, supervised by PID 1 like host services: the
//! exporter (`[metrics]`) and the shipper (`[logs]`), each `/usr/libexec/crust/observe` in
//! one mode, started after the config phase.
//!
//! The init writes each mode's settings (and the PEM files they name) under
//! `/run/crust/observe/` (mode 0700), starts the process in the cgroup
//! `/crust-observe/<mode>` (memory and task limits, so a runaway agent cannot take the
//! host with it), puts what it says on standard error on the console under `metrics:` or
//! `logs:`, and starts it again when it ends (after 1 s, doubling up to a minute; the
//! delay starts over after a run of [`STABLE_AFTER`]). The shipper reads the log pipe's
//! other end as its standard input; the init keeps that end open too, so lines written
//! while the shipper restarts wait in the pipe. At shutdown the agents are stopped after
//! the services (the shipper sends their last lines first): SIGTERM, then SIGKILL after
//! [`STOP_WAIT`].

use std::fs;
use std::io::Write;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crust_format::observe::{
    AGENT, LOGS_SETTINGS, LogsSettings, METRICS_SETTINGS, MetricsSettings, RUN_DIR, ServerTls,
};
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use super::{sink, status};
use crate::config::HostConfig;
use crate::console;
use crate::event::{Control, Task};
use crate::services::output::OutputPipe;

/// A run at least this long starts the restart delay afresh.
pub const STABLE_AFTER: Duration = Duration::from_secs(10);
/// Longest pause between restarts.
pub const BACKOFF_CAP: Duration = Duration::from_secs(60);
/// How long a stopping agent gets before SIGKILL (the shipper sends what it holds).
pub const STOP_WAIT: Duration = Duration::from_secs(4);
/// The log pipe's size asked of the kernel (it keeps the default, 64 KiB, if it refuses).
pub const PIPE_SIZE: i32 = 1 << 20;
/// The agents' cgroup, below the cgroup2 root.
pub const CGROUP: &str = "/sys/fs/cgroup/crust-observe";
/// How often the log pipe's drop count is looked at for the status file.
const STATUS_EVERY: Duration = Duration::from_secs(5);

/// Which mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The Prometheus endpoint.
    Exporter,
    /// The syslog shipper.
    Shipper,
}

impl Mode {
    /// The agent's argument.
    pub fn arg(self) -> &'static str {
        match self {
            Mode::Exporter => "exporter",
            Mode::Shipper => "shipper",
        }
    }

    /// Its name on the console.
    pub fn who(self) -> &'static str {
        match self {
            Mode::Exporter => "metrics",
            Mode::Shipper => "logs",
        }
    }

    /// Its memory limit: the exporter's scrapes are small; the shipper holds its buffer.
    fn memory_max(self, buffer: u64) -> u64 {
        match self {
            Mode::Exporter => 64 << 20,
            Mode::Shipper => buffer.saturating_mul(2).saturating_add(48 << 20),
        }
    }
}

#[derive(Debug)]
enum State {
    Running { pid: Pid, since: Instant },
    Backoff { until: Instant },
    Stopped,
}

#[derive(Debug)]
struct Agent {
    mode: Mode,
    settings: PathBuf,
    /// The shipper's standard input: the log pipe's reading end.
    stdin: Option<OwnedFd>,
    state: State,
    stderr: Option<OutputPipe>,
    starts: u32,
    failures: u32,
    memory_max: u64,
}

/// The agents task.
#[derive(Debug, Default)]
pub struct Agents {
    agents: Vec<Agent>,
    cgroup: bool,
    published_drops: Option<u64>,
    next_status: Option<Instant>,
}

/// Writes `text` to `path` readable by root only.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    let _ = fs::remove_file(path);
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
}

/// Writes the settings (and PEM files) of each mode `config` turns on.
fn write_settings(config: &HostConfig, dir: &Path) -> Result<Vec<(Mode, PathBuf, u64)>, String> {
    let e = |p: &Path, err: std::io::Error| format!("cannot write {}: {err}", p.display());
    let file = |name: &str, text: &str| -> Result<String, String> {
        let path = dir.join(name);
        write_private(&path, text).map_err(|err| e(&path, err))?;
        Ok(path.display().to_string())
    };
    let mut modes = Vec::new();
    if let Some(m) = &config.metrics {
        let tls = match &m.tls {
            Some(t) => Some(ServerTls {
                certificate: file("metrics.crt", &t.certificate)?,
                key: file("metrics.key", &t.key)?,
                client_ca: t
                    .client_ca
                    .as_deref()
                    .map(|ca| file("metrics-client-ca.pem", ca))
                    .transpose()?,
            }),
            None => None,
        };
        let settings = MetricsSettings {
            address: m.address,
            port: m.port,
            tls,
            bearer_token: m.bearer_token.clone(),
        };
        let path = PathBuf::from(file(METRICS_SETTINGS, &settings.to_text())?);
        modes.push((Mode::Exporter, path, 0));
    }
    if let Some(l) = &config.logs {
        let (host, port) = l.host_port()?;
        let client = match (&l.certificate, &l.key) {
            (Some(c), Some(k)) => Some((file("logs.crt", c)?, file("logs.key", k)?)),
            _ => None,
        };
        let settings = LogsSettings {
            host,
            port,
            protocol: l.protocol(),
            ca: l
                .ca
                .as_deref()
                .map(|ca| file("logs-ca.pem", ca))
                .transpose()?,
            server_name: l.server_name.clone(),
            client,
            buffer: l.buffer,
            kernel: l.kernel,
        };
        let path = PathBuf::from(file(LOGS_SETTINGS, &settings.to_text())?);
        modes.push((Mode::Shipper, path, l.buffer));
    }
    Ok(modes)
}

/// The log pipe: (reading end for the shipper, non-blocking writing end for the init).
fn log_pipe() -> nix::Result<(OwnedFd, OwnedFd)> {
    let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    fcntl(&write, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
    let _ = fcntl(&write, FcntlArg::F_SETPIPE_SZ(PIPE_SIZE));
    Ok((read, write))
}

/// Makes the agents' cgroup with the memory and pids controllers for its children.
fn make_cgroup() -> bool {
    let dir = Path::new(CGROUP);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .is_ok()
        && fs::write(dir.join("cgroup.subtree_control"), "+memory +pids").is_ok()
}

impl Agents {
    /// Starts what `config` turns on. Without `[logs]` the console's early lines are let
    /// go. Says on the console what is wrong, if anything; never fails the boot.
    pub fn start(config: &HostConfig) -> Self {
        if config.logs.is_none() {
            sink::off();
        }
        if config.metrics.is_none() && config.logs.is_none() {
            return Self::default();
        }
        if !Path::new(AGENT).is_file() {
            sink::off();
            console::warning(&format!(
                "observe: {AGENT} is not in this image, so [metrics] and [logs] do nothing; \
                 build the image with a builder that puts the observability agent in the root"
            ));
            return Self::default();
        }
        let made = fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(RUN_DIR)
            .map_err(|e| format!("cannot create {RUN_DIR}: {e}"))
            .and_then(|()| write_settings(config, Path::new(RUN_DIR)));
        let modes = match made {
            Ok(modes) => modes,
            Err(e) => {
                sink::off();
                console::warning(&format!("observe: {e}; [metrics] and [logs] do nothing"));
                return Self::default();
            }
        };
        let cgroup = make_cgroup();
        if !cgroup {
            console::warning(&format!(
                "observe: cannot make {CGROUP}; the agents run without memory limits"
            ));
        }
        let mut agents = Self {
            agents: Vec::new(),
            cgroup,
            published_drops: None,
            next_status: None,
        };
        for (mode, settings, buffer) in modes {
            let stdin = if mode == Mode::Shipper {
                match log_pipe() {
                    Ok((read, write)) => {
                        sink::connect(write);
                        agents.next_status = Some(Instant::now());
                        Some(read)
                    }
                    Err(e) => {
                        sink::off();
                        console::warning(&format!(
                            "observe: cannot make the log pipe ({}); no logs are shipped",
                            e.desc()
                        ));
                        continue;
                    }
                }
            } else {
                None
            };
            agents.agents.push(Agent {
                mode,
                settings,
                stdin,
                state: State::Backoff {
                    until: Instant::now(),
                },
                stderr: None,
                starts: 0,
                failures: 0,
                memory_max: mode.memory_max(buffer),
            });
        }
        let now = Instant::now();
        let cgroup = agents.cgroup;
        for a in &mut agents.agents {
            a.launch(now, cgroup);
        }
        agents
    }
}

impl Agent {
    fn say(&self, line: &str) {
        console::note(self.mode.who(), line);
    }

    fn launch(&mut self, now: Instant, cgroup: bool) {
        let mut cmd = Command::new(AGENT);
        cmd.arg(self.mode.arg())
            .arg(&self.settings)
            .env_clear()
            .current_dir("/")
            .stdout(Stdio::null());
        if self.mode == Mode::Shipper && self.starts > 0 {
            // The kernel's earlier messages went out with the last run.
            cmd.arg("--kmsg-from-end");
        }
        let stdin = match &self.stdin {
            Some(fd) => fd.try_clone().map(Stdio::from),
            None => Ok(Stdio::null()),
        };
        let spawned = stdin.and_then(|stdin| {
            let (pipe, write) = OutputPipe::new()?;
            let child = cmd.stdin(stdin).stderr(Stdio::from(write)).spawn()?;
            Ok((pipe, child.id()))
        });
        match spawned {
            Ok((pipe, pid)) => {
                let pid = Pid::from_raw(pid as i32);
                self.starts += 1;
                self.stderr = Some(pipe);
                self.state = State::Running { pid, since: now };
                if cgroup && let Err(e) = self.join_cgroup(pid) {
                    self.say(&format!("runs without its limits: {e}"));
                }
            }
            Err(e) => {
                self.say(&format!("cannot start {AGENT}: {e}"));
                self.ended(now);
            }
        }
    }

    fn join_cgroup(&self, pid: Pid) -> std::io::Result<()> {
        let dir = Path::new(CGROUP).join(self.mode.arg());
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&dir)?;
        let _ = fs::write(dir.join("memory.max"), self.memory_max.to_string());
        let _ = fs::write(dir.join("pids.max"), "32");
        fs::write(dir.join("cgroup.procs"), pid.to_string())
    }

    fn ended(&mut self, now: Instant) {
        let ran = match self.state {
            State::Running { since, .. } => now.saturating_duration_since(since),
            _ => Duration::ZERO,
        };
        if ran >= STABLE_AFTER {
            self.failures = 0;
        }
        let delay = Duration::from_secs(1u64 << self.failures.min(6)).min(BACKOFF_CAP);
        self.failures += 1;
        self.state = State::Backoff { until: now + delay };
        self.say(&format!("starting it again in {} s", delay.as_secs()));
    }

    fn pump(&mut self) {
        if let Some(pipe) = self.stderr.as_mut() {
            let (lines, closed) = pipe.read_lines();
            for line in lines {
                console::note(self.mode.who(), &line);
            }
            if closed {
                self.stderr = None;
            }
        }
    }

    fn stop(&mut self, budget: Duration) {
        let State::Running { pid, .. } = self.state else {
            return;
        };
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + budget.min(STOP_WAIT);
        while let Ok(WaitStatus::StillAlive) = waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            self.pump();
            if Instant::now() >= deadline {
                let _ = kill(pid, Signal::SIGKILL);
                let _ = waitpid(pid, None);
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.pump();
        self.state = State::Stopped;
    }
}

fn describe(status: WaitStatus) -> String {
    match status {
        WaitStatus::Exited(_, code) => format!("exit status {code}"),
        WaitStatus::Signaled(_, sig, _) => format!("killed by {sig}"),
        _ => "gone".into(),
    }
}

impl Task for Agents {
    fn fds(&self) -> Vec<BorrowedFd<'_>> {
        self.agents
            .iter()
            .filter_map(|a| a.stderr.as_ref().map(OutputPipe::fd))
            .collect()
    }

    fn deadline(&self) -> Option<Instant> {
        self.agents
            .iter()
            .filter_map(|a| match a.state {
                State::Backoff { until } => Some(until),
                _ => None,
            })
            .chain(self.next_status)
            .min()
    }

    fn run(&mut self, _ready: &[bool], now: Instant) -> Control {
        let cgroup = self.cgroup;
        for a in &mut self.agents {
            a.pump();
            if matches!(a.state, State::Backoff { until } if until <= now) {
                a.launch(now, cgroup);
            }
        }
        if let Some(at) = self.next_status
            && at <= now
        {
            let dropped = sink::dropped_total();
            if self.published_drops != Some(dropped) {
                status::logs(dropped);
                self.published_drops = Some(dropped);
            }
            self.next_status = Some(now + STATUS_EVERY);
        }
        Control::Continue
    }

    fn child_exited(&mut self, pid: Pid, status: WaitStatus) -> bool {
        let now = Instant::now();
        for a in &mut self.agents {
            if matches!(a.state, State::Running { pid: p, .. } if p == pid) {
                a.pump();
                a.say(&format!("the agent ended ({})", describe(status)));
                a.ended(now);
                return true;
            }
        }
        false
    }

    fn stop(&mut self, budget: Duration) {
        let deadline = Instant::now() + budget;
        // The exporter first; the shipper last, so it can send the lines of the others.
        for a in &mut self.agents {
            let left = deadline.saturating_duration_since(Instant::now());
            a.stop(left.max(Duration::from_secs(1)));
        }
    }
}
