//! How each kind of service runs ([`crust_format::service::Kind`]): the commands that start
//! it, signal it and clean up after it. The supervisor in [`super`] is the same for all.
//!
//! - **crun**: `crun run` of an OCI bundle in the foreground; signals go through `crun kill`.
//!   The bundle's `config.json` holds its confinement (seccomp profile, pids and other
//!   limits, user namespace); before each start the init makes the bind-mount sources under
//!   `/var` that do not exist yet, owned by the container's user as the host sees it.
//! - **host**: a program of the verified root, started directly and moved into the cgroup
//!   `/crust/<name>` (containerd runs so). SIGTERM goes to the program; SIGKILL to the whole
//!   cgroup (`cgroup.kill`), so nothing it started survives it.
//! - **pull**: containerd pulls the image (`ctr image pull`, once per boot: a restart uses
//!   what is there), then `ctr run --rm` runs it in the foreground in cgroup `/crust/<name>`
//!   with the host's network. `ctr run` passes the signals it gets to the container;
//!   SIGKILL goes to the container's cgroup. A reference written `http://host/…` is pulled
//!   over plain HTTP. The container runs under the service's seccomp profile
//!   (`--seccomp-profile`) and the init sets its cgroup's `pids.max` (ctr has no flag for
//!   it; runc leaves a limit the spec does not set alone).
//!
//! Steps that come before the service's own process (removing a container left over from
//! an earlier run, the pull) are [`Step`]s the supervisor runs one after another without
//! blocking its loop.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crust_format::service::{
    CGROUP_PARENT, CONTAINERD_NAMESPACE, CONTAINERD_SOCKET, DEFAULT_PIDS_MAX, PULL_SECCOMP,
    SECCOMP_FILE,
};
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
        /// Its confinement.
        confinement: PullConfinement,
    },
}

/// How a pulled image's container is confined beyond containerd's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullConfinement {
    /// The seccomp profile `ctr run` loads (`None`: the declaration says `unconfined`).
    pub seccomp: Option<PathBuf>,
    /// The limit of processes and threads in its cgroup.
    pub pids_max: u64,
}

impl PullConfinement {
    /// What a pull the image declares gets: the profile in its folder (absent when the
    /// declaration turned the filter off) and the limit of its service file.
    pub fn of_folder(dir: &Path, pids_max: Option<u64>) -> Self {
        let profile = dir.join(SECCOMP_FILE);
        PullConfinement {
            seccomp: profile.is_file().then_some(profile),
            pids_max: pids_max.unwrap_or(DEFAULT_PIDS_MAX),
        }
    }

    /// What a pull user-data adds gets: the image's default profile and limit. User-data
    /// cannot relax a container's confinement.
    pub fn default_for_user_data() -> Self {
        PullConfinement {
            seccomp: Some(Path::new("/").join(PULL_SECCOMP)),
            pids_max: DEFAULT_PIDS_MAX,
        }
    }
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
    // Pulls are made by ctr itself: the user-data's proxy applies (docs/CONFIGURATION.md).
    let http = crate::http::client::Settings::read();
    for (name, value) in [
        ("HTTP_PROXY", &http.http_proxy),
        ("HTTPS_PROXY", &http.https_proxy),
    ] {
        if let Some(value) = value {
            cmd.env(name, value);
        }
    }
    if !http.no_proxy.is_empty() {
        cmd.env("NO_PROXY", http.no_proxy.join(","));
    }
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
    /// image. Called once per start, right before the steps run, so it also readies what
    /// the host gives a crun bundle: the bind-mount sources under `/var` (a source that
    /// cannot be made is left to crun, whose error names it).
    pub fn steps(&self, name: &str, pulled: bool) -> Vec<Step> {
        if let Launch::Crun { bundle } = self {
            mounts::prepare(bundle);
        }
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
            Launch::Pull {
                reference,
                process,
                confinement,
            } => {
                let cgroup = format!("/{CGROUP_PARENT}/{name}");
                let mut cmd = ctr(&["run", "--rm", "--net-host", "--cgroup", &cgroup]);
                if let Some(profile) = &confinement.seccomp {
                    cmd.args(["--seccomp", "--seccomp-profile"]).arg(profile);
                }
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

    /// The process started: a host program joins its cgroup (it may have started children
    /// before this; a program the init supervises does its work after start-up); a pulled
    /// image's cgroup gets its pids limit. `ctr run` has only just started, long before
    /// runc makes the container; and were runc first, the limit would hold from the write
    /// on, since runc leaves `pids.max` alone when the spec sets none.
    pub fn started(&self, name: &str, pid: Pid) -> Result<(), String> {
        match self {
            Launch::Host { .. } => {
                let dir = cgroup(name);
                fs::create_dir_all(&dir)
                    .and_then(|()| fs::write(dir.join("cgroup.procs"), pid.to_string()))
                    .map_err(|e| format!("cannot move it into {}: {e}", dir.display()))?;
            }
            Launch::Pull { confinement, .. } => {
                limit_pids(&cgroup(name), confinement.pids_max)
                    .map_err(|e| format!("cannot set its pids limit: {e}"))?;
            }
            Launch::Crun { .. } => {}
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
            // `ctr run --rm` removes its container (and runc its cgroup); a next start clears
            // leftovers. The cgroup goes too if the limit was set after runc removed it.
            Launch::Pull { .. } => {
                let _ = fs::remove_dir(cgroup(name));
            }
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

/// Makes `dir` (a cgroup below [`CGROUP_PARENT`]) with `pids.max` = `max`: the pids
/// controller is turned on for the parent's children first (the parent holds no process,
/// so it may hand controllers down).
fn limit_pids(dir: &Path, max: u64) -> std::io::Result<()> {
    let parent = dir.parent().unwrap_or(dir);
    fs::create_dir_all(parent)?;
    fs::write(parent.join("cgroup.subtree_control"), "+pids")?;
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    fs::write(dir.join("pids.max"), max.to_string())
}

/// Bind-mount sources of crun bundles.
mod mounts {
    use std::fs;
    use std::os::unix::fs::{DirBuilderExt, lchown};
    use std::path::{Component, Path};

    use serde_json::Value;

    /// Where bind-mount sources may be (the builder and the user-data checks refuse others).
    const VAR: &str = "/var";

    /// Makes each bind-mount source under `/var` that `bundle`'s `config.json` names and
    /// that does not exist: parents as root's (0755), the source itself owned by the
    /// container's user as the host sees it (through the user namespace's mapping, if the
    /// container has one), so the service can write there. Existing directories are left
    /// as they are; a symbolic link on the way stops it (the init never follows a link a
    /// container may have planted).
    pub fn prepare(bundle: &Path) {
        let Ok(text) = fs::read(bundle.join("config.json")) else {
            return;
        };
        let Ok(config) = serde_json::from_slice::<Value>(&text) else {
            return;
        };
        let owner = host_owner(&config);
        for source in bind_sources(&config) {
            let _ = make(Path::new("/"), Path::new(&source), owner);
        }
    }

    /// The sources of the config's bind mounts that lie under `/var`.
    pub(super) fn bind_sources(config: &Value) -> Vec<String> {
        let Some(mounts) = config.get("mounts").and_then(Value::as_array) else {
            return Vec::new();
        };
        mounts
            .iter()
            .filter(|m| m.get("type").and_then(Value::as_str) == Some("bind"))
            .filter_map(|m| m.get("source").and_then(Value::as_str))
            .filter(|s| {
                let p = Path::new(s);
                p.starts_with(VAR)
                    && p != Path::new(VAR)
                    && p.components().all(|c| !matches!(c, Component::ParentDir))
            })
            .map(str::to_owned)
            .collect()
    }

    /// The host uid and gid of the container's process user.
    pub(super) fn host_owner(config: &Value) -> (u32, u32) {
        let id = |key: &str| {
            config
                .pointer(&format!("/process/user/{key}"))
                .and_then(Value::as_u64)
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(0)
        };
        let map = |inside: u32, key: &str| -> u32 {
            let Some(maps) = config
                .pointer(&format!("/linux/{key}"))
                .and_then(Value::as_array)
            else {
                return inside;
            };
            for m in maps {
                let field = |f: &str| m.get(f).and_then(Value::as_u64).unwrap_or(0);
                let (container, host, size) =
                    (field("containerID"), field("hostID"), field("size"));
                let inside = u64::from(inside);
                if inside >= container && inside < container + size {
                    return u32::try_from(host + (inside - container)).unwrap_or(u32::MAX);
                }
            }
            // Unmapped ids are the overflow id in the container: nobody can own it there.
            65534
        };
        (map(id("uid"), "uidMappings"), map(id("gid"), "gidMappings"))
    }

    /// Makes `source` (absolute) below `root` as [`prepare`] says.
    pub(super) fn make(root: &Path, source: &Path, (uid, gid): (u32, u32)) -> std::io::Result<()> {
        let mut path = root.to_path_buf();
        let parts: Vec<Component> = source.components().skip(1).collect();
        for (i, part) in parts.iter().enumerate() {
            path.push(part);
            match fs::symlink_metadata(&path) {
                Ok(meta) if meta.is_dir() => continue,
                Ok(_) => return Err(std::io::Error::other("not a directory")),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            fs::DirBuilder::new().mode(0o755).create(&path)?;
            if i == parts.len() - 1 && (uid, gid) != (0, 0) {
                lchown(&path, Some(uid), Some(gid))?;
            }
        }
        Ok(())
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
            confinement: PullConfinement::default_for_user_data(),
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
                "--seccomp",
                "--seccomp-profile",
                "/usr/lib/crust/seccomp/pull.json",
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

    #[test]
    fn pulls_declared_unconfined_run_without_a_profile() {
        let dir = tempfile::tempdir().unwrap();
        let unconfined = PullConfinement::of_folder(dir.path(), Some(64));
        assert_eq!(
            unconfined,
            PullConfinement {
                seccomp: None,
                pids_max: 64
            }
        );
        fs::write(dir.path().join(SECCOMP_FILE), "{}").unwrap();
        let confined = PullConfinement::of_folder(dir.path(), None);
        assert_eq!(confined.seccomp, Some(dir.path().join(SECCOMP_FILE)));
        assert_eq!(confined.pids_max, 1024);
        let launch = Launch::Pull {
            reference: "r.example/x:1".into(),
            process: Process::default(),
            confinement: unconfined,
        };
        assert!(!args(&launch.command("x")).contains(&"--seccomp".to_string()));
    }

    #[test]
    fn pids_limits_are_written_into_the_cgroup() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("crust/demo");
        limit_pids(&dir, 1024).unwrap();
        assert_eq!(fs::read_to_string(dir.join("pids.max")).unwrap(), "1024");
        assert_eq!(
            fs::read_to_string(root.path().join("crust/cgroup.subtree_control")).unwrap(),
            "+pids"
        );
        // Again, over the cgroup runc may have made meanwhile.
        limit_pids(&dir, 64).unwrap();
        assert_eq!(fs::read_to_string(dir.join("pids.max")).unwrap(), "64");
    }

    #[test]
    fn bind_sources_belong_to_the_containers_user_as_the_host_sees_it() {
        let config: serde_json::Value = serde_json::from_str(
            r#"{"process":{"user":{"uid":0,"gid":0}},
                "mounts":[{"type":"bind","source":"/var/lib/u","destination":"/data"},
                          {"type":"bind","source":"/etc/hosts","destination":"/etc/hosts"},
                          {"type":"bind","source":"/var/lib/../../etc","destination":"/x"},
                          {"type":"tmpfs","source":"tmpfs","destination":"/tmp"}],
                "linux":{"uidMappings":[{"containerID":0,"hostID":131072,"size":65536}],
                         "gidMappings":[{"containerID":0,"hostID":196608,"size":65536}]}}"#,
        )
        .unwrap();
        assert_eq!(mounts::bind_sources(&config), ["/var/lib/u"]);
        assert_eq!(mounts::host_owner(&config), (131072, 196608));
        let mut plain = config.clone();
        plain["linux"] = serde_json::json!({});
        plain["process"]["user"] = serde_json::json!({"uid": 1000, "gid": 100});
        assert_eq!(mounts::host_owner(&plain), (1000, 100));
        plain["linux"] = config["linux"].clone();
        plain["process"]["user"]["uid"] = serde_json::json!(70000);
        assert_eq!(mounts::host_owner(&plain).0, 65534, "unmapped");

        // Made with their owner; what exists stays as it is; no link is followed.
        use std::os::unix::fs::MetadataExt;
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let me = (
            fs::metadata(r).unwrap().uid(),
            fs::metadata(r).unwrap().gid(),
        );
        mounts::make(r, Path::new("/var/lib/u"), me).unwrap();
        assert!(r.join("var/lib/u").is_dir());
        mounts::make(r, Path::new("/var/lib/u"), me).unwrap();
        std::os::unix::fs::symlink("/etc", r.join("var/lib/link")).unwrap();
        assert!(mounts::make(r, Path::new("/var/lib/link/x"), me).is_err());
        assert!(!Path::new("/etc/x").exists());
    }
}
