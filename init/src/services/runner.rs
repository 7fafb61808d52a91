//! How each kind of service runs ([`crust_format::service::Kind`]): the commands that start
//! it, signal it and clean up after it. The supervisor in [`super`] is the same for all.
//!
//! - **crun**: `crun run` of an OCI bundle in the foreground; signals go through `crun kill`.
//! - **host**: a program of the verified root, started directly and moved into the cgroup
//!   `/crust/<name>` (containerd runs so). SIGTERM goes to the program; SIGKILL to the whole
//!   cgroup (`cgroup.kill`), so nothing it started survives it.
//! - **pull**: containerd pulls the image (`ctr image pull`, once per boot: a restart uses
//!   what is there), then `ctr run --rm` runs it in the foreground in cgroup `/crust/<name>`
//!   with the host's network. `ctr run` passes the signals it gets to the container;
//!   SIGKILL goes to the container's cgroup. A reference written `http://host/…` is pulled
//!   over plain HTTP.
//!
//! Steps that come before the service's own process (removing a container left over from
//! an earlier run, the pull) are [`Step`]s the supervisor runs one after another without
//! blocking its loop.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crust_format::service::{CGROUP_PARENT, CONTAINERD_NAMESPACE, CONTAINERD_SOCKET};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::process::Process;

/// crun, from the root.
pub const CRUN: &str = "/usr/bin/crun";
/// crun's state (on the /run tmpfs).
const CRUN_ROOT: &str = "/run/crun";
/// containerd's client, from the root (the containerd profile).
pub const CTR: &str = "/usr/bin/ctr";
/// Where cgroup2 is mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// What the service's process is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Launch {
    /// `crun run` of the bundle in this folder.
    Crun {
        /// The bundle (`config.json`; its `root.path` may point elsewhere).
        bundle: PathBuf,
    },
    /// A program of the root, in the host's namespaces.
    Host {
        /// Its arguments and environment.
        process: Process,
    },
    /// An image containerd pulls and runs.
    Pull {
        /// The image reference, `http://` first for a plain-HTTP registry.
        reference: String,
        /// Arguments (empty: the image's) and environment (added to the image's).
        process: Process,
    },
}

/// A command run before the service's own process.
#[derive(Debug)]
pub struct Step {
    /// The command.
    pub command: Command,
    /// What it does, for messages.
    pub what: String,
    /// Whether the service can start only if it exits 0.
    pub must_succeed: bool,
    /// Whether its standard error goes to the service's output (else nowhere).
    pub show_errors: bool,
}

/// `http://host/name:tag` → (plain HTTP, `host/name:tag`).
pub fn split_reference(reference: &str) -> (bool, &str) {
    match reference.strip_prefix("http://") {
        Some(rest) => (true, rest),
        None => (false, reference),
    }
}

fn crun(args: &[&str]) -> Command {
    let mut cmd = Command::new(CRUN);
    cmd.args(["--root", CRUN_ROOT]).args(args);
    cmd
}

fn ctr(args: &[&str]) -> Command {
    let mut cmd = Command::new(CTR);
    cmd.args([
        "--address",
        CONTAINERD_SOCKET,
        "--namespace",
        CONTAINERD_NAMESPACE,
    ])
    .args(args);
    cmd
}

/// The service's cgroup (host services and pulled containers; crun makes its own there).
pub fn cgroup(name: &str) -> PathBuf {
    Path::new(CGROUP_ROOT).join(CGROUP_PARENT).join(name)
}

/// Runs a short command to its end, quietly; whether it succeeded.
fn quietly(mut cmd: Command) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl Launch {
    /// What runs before the process: `pulled` tells whether this boot already pulled the
    /// image.
    pub fn steps(&self, name: &str, pulled: bool) -> Vec<Step> {
        let step = |command, what: &str, must_succeed, show_errors| Step {
            command,
            what: what.to_owned(),
            must_succeed,
            show_errors,
        };
        match self {
            // A container left over from a crashed run would make `crun run` fail.
            Launch::Crun { .. } => vec![step(
                crun(&["delete", "--force", name]),
                "remove the old container",
                false,
                false,
            )],
            Launch::Host { .. } => Vec::new(),
            Launch::Pull { reference, .. } => {
                // containerd keeps container records across boots (in /var/lib/containerd).
                let mut steps = vec![
                    step(
                        ctr(&["task", "delete", "--force", name]),
                        "remove the old task",
                        false,
                        false,
                    ),
                    step(
                        ctr(&["container", "delete", name]),
                        "remove the old container",
                        false,
                        false,
                    ),
                ];
                if !pulled {
                    let what = format!("pulling {reference}");
                    let (plain, reference) = split_reference(reference);
                    let mut args = vec!["image", "pull"];
                    if plain {
                        args.push("--plain-http");
                    }
                    args.push(reference);
                    steps.push(step(ctr(&args), &what, true, true));
                }
                steps
            }
        }
    }

    /// The service's own process.
    pub fn command(&self, name: &str) -> Command {
        match self {
            Launch::Crun { bundle } => {
                let mut cmd = crun(&["run", "--no-new-keyring", "--bundle"]);
                cmd.arg(bundle).arg(name);
                cmd
            }
            Launch::Host { process } => {
                // An empty program fails to start (and says so) rather than panicking.
                let (program, args) = process
                    .args
                    .split_first()
                    .map_or(("", &[][..]), |(p, a)| (p.as_str(), a));
                let mut cmd = Command::new(program);
                cmd.args(args)
                    .env_clear()
                    .envs(process.env_pairs())
                    .current_dir(&process.cwd);
                cmd
            }
            Launch::Pull { reference, process } => {
                let cgroup = format!("/{CGROUP_PARENT}/{name}");
                let mut cmd = ctr(&["run", "--rm", "--net-host", "--cgroup", &cgroup]);
                for kv in &process.env {
                    cmd.arg("--env").arg(kv);
                }
                cmd.arg(split_reference(reference).1)
                    .arg(name)
                    .args(&process.args);
                cmd
            }
        }
    }

    /// The process started: a host program joins its cgroup. (It may have started children
    /// before this; a program the init supervises does its work after start-up.)
    pub fn started(&self, name: &str, pid: Pid) -> Result<(), String> {
        if let Launch::Host { .. } = self {
            let dir = cgroup(name);
            fs::create_dir_all(&dir)
                .and_then(|()| fs::write(dir.join("cgroup.procs"), pid.to_string()))
                .map_err(|e| format!("cannot move it into {}: {e}", dir.display()))?;
        }
        Ok(())
    }

    /// Asks the service to stop (SIGTERM).
    pub fn terminate(&self, name: &str, pid: Pid) {
        match self {
            Launch::Crun { .. } => {
                quietly(crun(&["kill", name, "TERM"]));
            }
            // Through containerd: `ctr run` forwards the signals it receives only once its
            // handler is in place, and a SIGTERM before that ends ctr, not the container,
            // whose output then goes nowhere. Without a task yet, ctr itself is signalled.
            Launch::Pull { .. } => {
                if !quietly(ctr(&["task", "kill", "--signal", "SIGTERM", name])) {
                    let _ = kill(pid, Signal::SIGTERM);
                }
            }
            Launch::Host { .. } => {
                let _ = kill(pid, Signal::SIGTERM);
            }
        }
    }

    /// Ends the service and everything it started (SIGKILL).
    pub fn kill(&self, name: &str, pid: Pid) {
        match self {
            Launch::Crun { .. } => {
                quietly(crun(&["kill", "--all", name, "KILL"]));
            }
            Launch::Host { .. } | Launch::Pull { .. } => {
                let _ = fs::write(cgroup(name).join("cgroup.kill"), "1");
                let _ = kill(pid, Signal::SIGKILL);
            }
        }
    }

    /// Removes what a stopped service leaves (container state, an empty cgroup).
    pub fn cleanup(&self, name: &str) {
        match self {
            Launch::Crun { .. } => {
                quietly(crun(&["delete", "--force", name]));
            }
            Launch::Host { .. } => {
                let _ = fs::remove_dir(cgroup(name));
            }
            // `ctr run --rm` removes its container; a next start clears leftovers.
            Launch::Pull { .. } => {}
        }
    }

    /// The command of an `exec` health check: `health` is the check's process object
    /// (`health.json`).
    pub fn health_command(&self, name: &str, health: &Path) -> Result<Command, String> {
        match self {
            Launch::Crun { .. } => {
                let mut cmd = crun(&["exec", "--process"]);
                cmd.arg(health).arg(name);
                Ok(cmd)
            }
            Launch::Host { .. } => {
                let p = Process::read(health)?;
                let Some((program, args)) = p.args.split_first() else {
                    return Err(format!("{} has no arguments", health.display()));
                };
                let mut cmd = Command::new(program);
                cmd.args(args)
                    .env_clear()
                    .envs(p.env_pairs())
                    .current_dir(&p.cwd);
                Ok(cmd)
            }
            Launch::Pull { .. } => Err("pulled images have no command checks".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(cmd: &Command) -> Vec<String> {
        std::iter::once(cmd.get_program())
            .chain(cmd.get_args())
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn pulled_images_are_pulled_once_then_run_by_ctr() {
        let launch = Launch::Pull {
            reference: "http://10.0.2.2:5000/demo:1".into(),
            process: Process {
                args: Vec::new(),
                env: vec!["SOURCE=containerd".into()],
                cwd: "/".into(),
            },
        };
        let steps = launch.steps("demo", false);
        let pull = steps.last().unwrap();
        assert!(pull.must_succeed);
        assert_eq!(pull.what, "pulling http://10.0.2.2:5000/demo:1");
        assert_eq!(
            args(&pull.command)[1..],
            [
                "--address",
                CONTAINERD_SOCKET,
                "--namespace",
                "crust",
                "image",
                "pull",
                "--plain-http",
                "10.0.2.2:5000/demo:1"
            ]
        );
        assert!(steps[..steps.len() - 1].iter().all(|s| !s.must_succeed));
        assert!(
            launch
                .steps("demo", true)
                .iter()
                .all(|s| !args(&s.command).contains(&"pull".to_string())),
            "a restart does not pull again"
        );
        let run = args(&launch.command("demo"));
        let tail: Vec<&str> = run[5..].iter().map(String::as_str).collect();
        assert_eq!(
            tail,
            [
                "run",
                "--rm",
                "--net-host",
                "--cgroup",
                "/crust/demo",
                "--env",
                "SOURCE=containerd",
                "10.0.2.2:5000/demo:1",
                "demo"
            ]
        );
    }

    #[test]
    fn host_programs_run_with_their_own_environment() {
        let launch = Launch::Host {
            process: Process {
                args: vec!["/usr/bin/containerd".into(), "--config".into(), "c".into()],
                env: vec!["PATH=/usr/bin".into()],
                cwd: "/".into(),
            },
        };
        let cmd = launch.command("containerd");
        assert_eq!(args(&cmd), ["/usr/bin/containerd", "--config", "c"]);
        assert!(launch.steps("containerd", false).is_empty());
        assert_eq!(
            cgroup("containerd"),
            Path::new("/sys/fs/cgroup/crust/containerd")
        );
        assert_eq!(split_reference("r.example/x:1"), (false, "r.example/x:1"));
    }
}
