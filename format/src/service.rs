//! Services: how the builder tells the init what to run.
//!
//! Each service has a folder in the read-only root under `/usr/lib/crust/services/<name>/`
//! with a `service` file: `key=value` lines with what the OCI spec has no words for (how it
//! runs, restart policy, dependencies, health check, stop timeout). What else the folder
//! holds depends on the service's [`Kind`]:
//!
//! - `crun`: an OCI runtime bundle (`config.json` plus `rootfs/`) run by `crun run`;
//! - `host`: `process.json`, an OCI process object (arguments, environment, working
//!   directory) run as a program of the root in the host's namespaces (containerd);
//! - `pull`: `process.json` with the environment (and the arguments, if the profile replaces
//!   the image's) of an image that containerd pulls by reference at boot and runs, and
//!   `seccomp.json`, the seccomp profile `ctr run` gives it (images user-data pulls get
//!   [`PULL_SECCOMP`]); the service file's `pids-max` is the limit the init sets on its
//!   cgroup.
//!
//! A container that mounts data volumes names them in its service file (`volumes=db,cache`):
//! the init starts it only once each is mounted on `/var/mnt/<name>`.
//!
//! `services/order` lists the names in start order (dependencies first), computed by the
//! builder. A service with an `exec` health check also carries `health.json`, the OCI
//! process object `crun exec --process` runs in its container (a host service runs it on
//! the host).

use std::fmt;

/// Folder of the service bundles in the root (no leading `/`, as in trees).
pub const SERVICES_DIR: &str = "usr/lib/crust/services";
/// The start order file inside [`SERVICES_DIR`].
pub const ORDER_FILE: &str = "order";
/// The service file inside a bundle.
pub const SERVICE_FILE: &str = "service";
/// The OCI process of an `exec` health check inside a bundle.
pub const HEALTH_PROCESS_FILE: &str = "health.json";
/// The OCI process of a `host` or `pull` service.
pub const PROCESS_FILE: &str = "process.json";
/// The containerd namespace that `pull` services' containers live in.
pub const CONTAINERD_NAMESPACE: &str = "crust";
/// containerd's API socket, as the containerd profile configures it.
pub const CONTAINERD_SOCKET: &str = "/run/containerd/containerd.sock";
/// The name of the host service that `pull` services need.
pub const CONTAINERD_SERVICE: &str = "containerd";
/// A `pull` service's seccomp profile inside its folder (the OCI `linux.seccomp` object,
/// which `ctr run --seccomp-profile` reads).
pub const SECCOMP_FILE: &str = "seccomp.json";
/// The seccomp profile of images user-data pulls (no trailing folder of their own), in
/// images that have containerd.
pub const PULL_SECCOMP: &str = "usr/lib/crust/seccomp/pull.json";
/// The pids limit (cgroup v2 `pids.max`) of a container whose declaration names none:
/// processes and threads together.
pub const DEFAULT_PIDS_MAX: u64 = 1024;

/// How a service runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// An OCI runtime bundle in the root, run by crun.
    Crun,
    /// A program of the root run in the host's namespaces (in its own cgroup).
    Host,
    /// An image pulled by containerd at boot from this reference, and run by it.
    Pull(String),
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Kind::Crun => f.write_str("crun"),
            Kind::Host => f.write_str("host"),
            Kind::Pull(reference) => write!(f, "pull {reference}"),
        }
    }
}
/// The cgroup (below the cgroup2 root) that holds the services' cgroups.
pub const CGROUP_PARENT: &str = "crust";

/// When a service that ended is started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// Whatever the exit status.
    Always,
    /// Only after a non-zero exit or a signal.
    OnFailure,
    /// Never.
    Never,
}

impl Restart {
    /// The name in profiles and service files.
    pub fn as_str(self) -> &'static str {
        match self {
            Restart::Always => "always",
            Restart::OnFailure => "on-failure",
            Restart::Never => "never",
        }
    }

    /// Parses a name.
    pub fn parse(s: &str) -> Option<Self> {
        [Restart::Always, Restart::OnFailure, Restart::Never]
            .into_iter()
            .find(|r| r.as_str() == s)
    }
}

/// How the init decides a service works.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// A TCP connection to this port on 127.0.0.1 is accepted (host network only).
    Tcp(u16),
    /// `GET <path>` on 127.0.0.1:`port` answers 2xx (host network only).
    Http {
        /// Port.
        port: u16,
        /// Path, starting with `/`.
        path: String,
    },
    /// `crun exec --process health.json` exits 0.
    Exec,
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Health::Tcp(port) => write!(f, "tcp:{port}"),
            Health::Http { port, path } => write!(f, "http:{port}{path}"),
            Health::Exec => f.write_str("exec"),
        }
    }
}

impl Health {
    /// Parses the form [`Display`](fmt::Display) writes.
    pub fn parse(s: &str) -> Option<Self> {
        if s == "exec" {
            return Some(Health::Exec);
        }
        if let Some(port) = s.strip_prefix("tcp:") {
            return port.parse().ok().filter(|p| *p != 0).map(Health::Tcp);
        }
        let rest = s.strip_prefix("http:")?;
        let slash = rest.find('/')?;
        let port = rest[..slash].parse().ok().filter(|p: &u16| *p != 0)?;
        Some(Health::Http {
            port,
            path: rest[slash..].to_owned(),
        })
    }
}

/// One service's run-time policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    /// Name (also the container id).
    pub name: String,
    /// How it runs.
    pub kind: Kind,
    /// Its standard input, output and error are the console itself (the admin shell),
    /// not a pipe through the init.
    pub console: bool,
    /// Restart policy.
    pub restart: Restart,
    /// Services that must be started first.
    pub after: Vec<String>,
    /// Health check, if any.
    pub health: Option<Health>,
    /// Seconds between health checks.
    pub health_interval: u32,
    /// Seconds between SIGTERM and SIGKILL at stop.
    pub stop_timeout: u32,
    /// The pids limit the init sets on the cgroup of a `pull` service (a crun bundle's is
    /// in its `config.json`); `None` for [`DEFAULT_PIDS_MAX`].
    pub pids_max: Option<u64>,
    /// The volumes ([`crate::volume`]) its `config.json` binds from `/var/mnt/<name>`: the
    /// service starts only once each is mounted.
    pub volumes: Vec<String>,
}

/// A service file that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("service file, line {line}: {message}")]
pub struct ServiceError {
    /// 1-based line.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// Checks a service name: lowercase letters, digits and `-`, starting with a letter, at most
/// 32 characters (it becomes a container id, a cgroup and a log file name).
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a service name (lowercase letters, digits and '-', starting with a letter, at most 32)"
        ))
    }
}

impl ServiceSpec {
    /// The file's text.
    pub fn to_text(&self) -> String {
        let mut s = format!("name={}\n", self.name);
        match &self.kind {
            Kind::Crun => s.push_str("kind=crun\n"),
            Kind::Host => s.push_str("kind=host\n"),
            Kind::Pull(reference) => s.push_str(&format!("kind=pull\nimage={reference}\n")),
        }
        if self.console {
            s.push_str("console=true\n");
        }
        s.push_str(&format!(
            "restart={}\nafter={}\n",
            self.restart.as_str(),
            self.after.join(",")
        ));
        if let Some(h) = &self.health {
            s.push_str(&format!("health={h}\n"));
        }
        s.push_str(&format!(
            "health-interval={}\nstop-timeout={}\n",
            self.health_interval, self.stop_timeout
        ));
        if let Some(max) = self.pids_max {
            s.push_str(&format!("pids-max={max}\n"));
        }
        if !self.volumes.is_empty() {
            s.push_str(&format!("volumes={}\n", self.volumes.join(",")));
        }
        s
    }

    /// Parses a service file.
    pub fn parse(text: &str) -> Result<Self, ServiceError> {
        let mut spec = ServiceSpec {
            name: String::new(),
            kind: Kind::Crun,
            console: false,
            restart: Restart::Always,
            after: Vec::new(),
            health: None,
            health_interval: 10,
            stop_timeout: 10,
            pids_max: None,
            volumes: Vec::new(),
        };
        let mut kind = None;
        let mut image = None;
        for (i, line) in text.lines().enumerate() {
            let err = |message: String| ServiceError {
                line: i + 1,
                message,
            };
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| err("expected key=value".into()))?;
            let number = |v: &str| {
                v.parse::<u32>()
                    .map_err(|_| err(format!("{key}: {v:?} is not a number")))
            };
            match key {
                "name" => {
                    check_name(value).map_err(err)?;
                    spec.name = value.to_owned();
                }
                "kind" => match value {
                    "crun" | "host" | "pull" => kind = Some(value.to_owned()),
                    other => {
                        return Err(err(format!("kind: {other:?} is not crun, host or pull")));
                    }
                },
                "image" => image = Some(value.to_owned()),
                "console" => {
                    spec.console = match value {
                        "true" => true,
                        "false" => false,
                        other => return Err(err(format!("console: {other:?} is not a bool"))),
                    }
                }
                "restart" => {
                    spec.restart = Restart::parse(value).ok_or_else(|| {
                        err(format!(
                            "restart: {value:?} is not always, on-failure or never"
                        ))
                    })?;
                }
                "after" => {
                    spec.after = value
                        .split(',')
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect();
                }
                "health" => {
                    spec.health = Some(
                        Health::parse(value)
                            .ok_or_else(|| err(format!("health: {value:?} is not a check")))?,
                    );
                }
                "health-interval" => spec.health_interval = number(value)?.max(1),
                "stop-timeout" => spec.stop_timeout = number(value)?,
                "pids-max" => {
                    spec.pids_max = Some(
                        value
                            .parse::<u64>()
                            .ok()
                            .filter(|n| *n > 0)
                            .ok_or_else(|| err(format!("pids-max: {value:?} is not a limit")))?,
                    );
                }
                "volumes" => {
                    spec.volumes = value
                        .split(',')
                        .filter(|s| !s.is_empty())
                        .map(|v| {
                            crate::volume::check_name(v).map_err(&err)?;
                            Ok(v.to_owned())
                        })
                        .collect::<Result<_, _>>()?;
                }
                other => return Err(err(format!("unknown key {other:?}"))),
            }
        }
        if spec.name.is_empty() {
            return Err(ServiceError {
                line: 0,
                message: "no name".into(),
            });
        }
        spec.kind = match (kind.as_deref(), image) {
            (None | Some("crun"), None) => Kind::Crun,
            (Some("host"), None) => Kind::Host,
            (Some("pull"), Some(reference)) if !reference.is_empty() => Kind::Pull(reference),
            (Some("pull"), _) => {
                return Err(ServiceError {
                    line: 0,
                    message: "kind=pull needs image=REFERENCE".into(),
                });
            }
            (_, Some(_)) => {
                return Err(ServiceError {
                    line: 0,
                    message: "image= belongs to kind=pull only".into(),
                });
            }
            (Some(other), None) => {
                return Err(ServiceError {
                    line: 0,
                    message: format!("kind {other:?}"),
                });
            }
        };
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_round_trip() {
        for health in [
            None,
            Some(Health::Tcp(80)),
            Some(Health::Http {
                port: 8080,
                path: "/healthz?x=1".into(),
            }),
            Some(Health::Exec),
        ] {
            let spec = ServiceSpec {
                name: "web".into(),
                kind: Kind::Crun,
                console: false,
                restart: Restart::OnFailure,
                after: vec!["db".into(), "cache".into()],
                health,
                health_interval: 3,
                stop_timeout: 7,
                pids_max: None,
                volumes: vec!["db".into(), "cache".into()],
            };
            assert_eq!(ServiceSpec::parse(&spec.to_text()), Ok(spec));
        }
        for (kind, console, pids_max) in [
            (Kind::Host, false, None),
            (Kind::Pull("10.0.2.2:5000/demo:1".into()), false, Some(64)),
            (Kind::Crun, true, None),
        ] {
            let spec = ServiceSpec {
                name: "svc".into(),
                kind,
                console,
                restart: Restart::Always,
                after: Vec::new(),
                health: None,
                health_interval: 10,
                stop_timeout: 10,
                pids_max,
                volumes: Vec::new(),
            };
            assert_eq!(ServiceSpec::parse(&spec.to_text()), Ok(spec));
        }
        // Files written before kinds existed are crun bundles.
        assert_eq!(
            ServiceSpec::parse("name=web\n").map(|s| s.kind),
            Ok(Kind::Crun)
        );
    }

    #[test]
    fn bad_files_and_names_are_refused() {
        assert!(ServiceSpec::parse("name=web\nrestart=sometimes\n").is_err());
        assert!(ServiceSpec::parse("name=web\ncolour=red\n").is_err());
        assert!(ServiceSpec::parse("restart=always\n").is_err());
        assert!(ServiceSpec::parse("name=web\nhealth=tcp:0\n").is_err());
        assert!(ServiceSpec::parse("name=web\nkind=pull\n").is_err());
        assert!(ServiceSpec::parse("name=web\nkind=crun\nimage=x/y\n").is_err());
        assert!(ServiceSpec::parse("name=web\nkind=vm\n").is_err());
        assert!(ServiceSpec::parse("name=web\npids-max=0\n").is_err());
        assert!(ServiceSpec::parse("name=web\nvolumes=Db\n").is_err());
        assert!(check_name("Web").is_err());
        assert!(check_name("1web").is_err());
        assert!(check_name("web-1").is_ok());
    }
}
