//! `[[service]]` declarations as written in a profile, and their checks: every field of a
//! table ([`ServiceToml`]) becomes a [`ServiceDecl`] or an error naming the profile line, the
//! service and the field; [`resolve`] also checks names, dependencies and cycles and returns
//! the services in start order. The admin container's declaration ([`admin`]) is here too.
//! Nothing here reads an image or writes a file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crust_format::service::{self, DEFAULT_PIDS_MAX, Health, Restart};
use crust_format::volume;
use oci_spec::runtime::Capability;
use serde::Deserialize;

use super::invalid;
use super::seccomp::Seccomp;
use super::syscalls;
use crate::profile::{FileSpec, Located, Origin, ProfileError};

/// A `[[service]]` table as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ServiceToml {
    name: String,
    image: Option<ImageToml>,
    host: Option<Vec<String>>,
    command: Option<Vec<String>>,
    args: Option<Vec<String>>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    workdir: Option<String>,
    user: Option<String>,
    network: Option<String>,
    #[serde(default)]
    mounts: Vec<MountToml>,
    read_only: Option<bool>,
    capabilities: Option<Vec<String>>,
    memory: Option<String>,
    cpus: Option<f64>,
    pids_max: Option<u64>,
    seccomp: Option<String>,
    seccomp_allow: Option<Vec<String>>,
    user_namespace: Option<bool>,
    restart: Option<String>,
    #[serde(default)]
    after: Vec<String>,
    health: Option<HealthToml>,
    stop_timeout: Option<u32>,
    #[serde(default)]
    files: Vec<FileToml>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct ImageToml {
    debian: Option<Vec<String>>,
    oci_layout: Option<PathBuf>,
    tag: Option<String>,
    registry: Option<String>,
    pull: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct MountToml {
    source: Option<String>,
    volume: Option<String>,
    path: Option<String>,
    target: String,
    read_only: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct HealthToml {
    tcp: Option<u16>,
    http: Option<String>,
    command: Option<Vec<String>>,
    interval: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileToml {
    source: PathBuf,
    path: String,
    mode: Option<String>,
}

impl ServiceToml {
    /// Makes relative paths (OCI layouts, files) relative to `dir`, the declaring profile's.
    pub fn anchor(&mut self, dir: &Path) {
        if let Some(p) = self.image.as_mut().and_then(|i| i.oci_layout.as_mut()) {
            *p = dir.join(&*p);
        }
        for f in &mut self.files {
            f.source = dir.join(&f.source);
        }
    }
}

/// Where a service's image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    /// Assembled from these Debian packages (and their dependencies).
    Debian(Vec<String>),
    /// An OCI image layout directory, optionally a tag in it.
    OciLayout {
        /// The layout directory.
        path: PathBuf,
        /// The `org.opencontainers.image.ref.name` to use (the only image if absent).
        tag: Option<String>,
    },
    /// An image reference in a registry, pulled at build time, digest pinned in the lock.
    Registry(String),
}

/// What a service runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceKind {
    /// A container made from this image, baked into the root as an OCI bundle, run by crun.
    Bundle(ImageSource),
    /// A program of the root (`host = [...]`: absolute path, then arguments) run in the
    /// host's namespaces, in its own cgroup: containerd, say.
    Host(Vec<String>),
    /// An image reference containerd pulls at boot (`image.pull`) and runs.
    Pull(String),
}

/// Network of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    /// The host's network (and host name).
    Host,
    /// A private network namespace with only loopback.
    Private,
}

/// A bind mount of a host directory under `/var` into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VarMount {
    /// Host directory (under `/var`).
    pub source: String,
    /// Path in the container.
    pub target: String,
    /// Read-only in the container.
    pub read_only: bool,
}

/// A range of host user and group ids that a user namespace maps a container's ids onto:
/// container id `n` is host id `host + n`, for `n` below `size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    /// The host id of the container's root.
    pub host: u32,
    /// How many ids are mapped.
    pub size: u32,
}

impl IdRange {
    /// The ids every container maps: 0 to 65535.
    pub const SIZE: u32 = 65536;

    /// The range of the service `name`: 65536 ids starting at a multiple of 65536 chosen by
    /// the name (SHA-256, first four bytes, modulo 32766, plus 2), so from 131072 up to below
    /// 2^31. The same name keeps its range from one image version to the next, so the files
    /// it wrote under `/var` stay its own.
    pub fn of_service(name: &str) -> Self {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(name.as_bytes());
        let n = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]);
        IdRange {
            host: (2 + n % 32766) * Self::SIZE,
            size: Self::SIZE,
        }
    }
}

/// A checked service declaration.
#[derive(Debug, Clone)]
pub struct ServiceDecl {
    /// Name.
    pub name: String,
    /// The declaring `[[service]]` table.
    pub at: Origin,
    /// What runs.
    pub kind: ServiceKind,
    /// Replaces the image's entrypoint and command.
    pub command: Option<Vec<String>>,
    /// Replaces the image's command (arguments after its entrypoint).
    pub args: Option<Vec<String>>,
    /// Environment added to (or overriding) the image's.
    pub env: BTreeMap<String, String>,
    /// Working directory.
    pub workdir: Option<String>,
    /// `uid[:gid]`, numeric.
    pub user: Option<(u32, u32)>,
    /// Network.
    pub network: Network,
    /// Mounts from `/var` (volumes' from `/var/mnt/<name>`).
    pub mounts: Vec<VarMount>,
    /// The volumes it mounts (`mounts = [{ volume = "db", … }]`): the init starts it once
    /// each is mounted.
    pub volumes: Vec<String>,
    /// Read-only root file system in the container.
    pub read_only: bool,
    /// Capabilities (`CAP_…`); `None` for the default set.
    pub capabilities: Option<Vec<Capability>>,
    /// Memory limit in bytes.
    pub memory: Option<u64>,
    /// CPU limit in CPUs.
    pub cpus: Option<f64>,
    /// Limit of processes and threads (cgroup v2 `pids.max`); `None`: no limit.
    pub pids_max: Option<u64>,
    /// System call filter.
    pub seccomp: Seccomp,
    /// The host ids the container's user namespace maps its ids 0 to 65535 onto, if it has
    /// one of its own (`user-namespace = true`).
    pub user_namespace: Option<IdRange>,
    /// Restart policy.
    pub restart: Restart,
    /// Services started first.
    pub after: Vec<String>,
    /// Health check (exec checks keep their command).
    pub health: Option<(Health, Option<Vec<String>>)>,
    /// Seconds between health checks.
    pub health_interval: u32,
    /// Seconds between SIGTERM and SIGKILL.
    pub stop_timeout: u32,
    /// Files added to the image.
    pub files: Vec<FileSpec>,
    /// Standard input, output and error on the console itself (the admin shell).
    pub console: bool,
    /// In the host's PID namespace instead of one of its own (the admin shell).
    pub host_pid: bool,
}

impl ServiceDecl {
    /// The image the builder makes the service's bundle from, if it has one.
    pub fn image(&self) -> Option<&ImageSource> {
        match &self.kind {
            ServiceKind::Bundle(image) => Some(image),
            ServiceKind::Host(_) | ServiceKind::Pull(_) => None,
        }
    }
}

/// The capabilities a container gets unless its declaration says otherwise (Docker's
/// default set, minus the ones a host service has no business with).
pub(super) const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
];

/// The admin service's name.
pub const ADMIN: &str = "admin";

/// What the admin container runs: a banner, then a busybox shell entered into the host's
/// mount namespace (it already shares the host's PID namespace). The shell's binary is the
/// container's own busybox, reached through the host's view of the root. `setsid -c` makes
/// the console (the shell's standard input) its controlling terminal, so Ctrl-C interrupts
/// the command in the foreground and the shell has job control.
const ADMIN_SCRIPT: &str = "echo \"Crust admin shell (busybox) in the host's PID and mount \
namespaces; the profile's [admin] enabled = true put it here. Type commands; exit starts a \
new shell.\"; B=/usr/lib/crust/services/admin/rootfs/bin/busybox; \
exec /bin/busybox nsenter -t 1 -m -- $B setsid -c $B sh -i";

/// Every capability of Linux 6.1: the admin shell is for debugging the host.
pub(super) const ALL_CAPABILITIES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// The admin container a profile's `[admin] enabled = true` adds (off by default): Debian's
/// busybox-static with every capability, in the host's PID namespace, its shell entered
/// into the host's mount namespace, on the serial console. The host itself still has no
/// shell: only this container's image carries one.
pub fn admin(at: &Origin) -> ServiceDecl {
    ServiceDecl {
        name: ADMIN.into(),
        at: at.clone(),
        kind: ServiceKind::Bundle(ImageSource::Debian(vec!["busybox-static".into()])),
        command: Some(vec![
            "/bin/busybox".into(),
            "sh".into(),
            "-c".into(),
            ADMIN_SCRIPT.into(),
        ]),
        args: None,
        env: BTreeMap::from([
            ("PS1".into(), "crust-admin# ".into()),
            ("HOME".into(), "/".into()),
        ]),
        workdir: None,
        user: None,
        network: Network::Host,
        mounts: Vec::new(),
        volumes: Vec::new(),
        read_only: true,
        capabilities: Some(
            ALL_CAPABILITIES
                .iter()
                .filter_map(|c| parse_capability(c))
                .collect(),
        ),
        memory: None,
        cpus: None,
        pids_max: None,
        seccomp: Seccomp::Unconfined,
        user_namespace: None,
        restart: Restart::Always,
        after: Vec::new(),
        health: None,
        health_interval: 10,
        // An interactive shell ignores SIGTERM; there is nothing to wait for.
        stop_timeout: 1,
        files: Vec::new(),
        console: true,
        host_pid: true,
    }
}

/// Checks the declarations of a profile (in the order written) and their dependency graph.
/// `admin` is where the profile turned the admin container on, if it did. Returns them in
/// start order: every service after those it names in `after`.
pub fn resolve(
    raw: Vec<Located<ServiceToml>>,
    admin_at: Option<&Origin>,
) -> Result<Vec<ServiceDecl>, ProfileError> {
    let mut decls: Vec<ServiceDecl> = Vec::new();
    for s in raw {
        let decl = check(s.value, &s.at)?;
        if let Some(first) = decls.iter().find(|d| d.name == decl.name) {
            return Err(invalid(
                &decl.at,
                &decl.name,
                "name",
                format!("declared twice (first at {})", first.at),
            ));
        }
        decls.push(decl);
    }
    if let Some(at) = admin_at {
        if let Some(taken) = decls.iter().find(|d| d.name == ADMIN) {
            return Err(invalid(
                &taken.at,
                ADMIN,
                "name",
                "is the admin container's, which [admin] enabled = true adds".into(),
            ));
        }
        decls.push(admin(at));
    }
    // Two containers in one id range could reach each other's files and processes.
    for (i, d) in decls.iter().enumerate() {
        let Some(range) = d.user_namespace else {
            continue;
        };
        if let Some(other) = decls[..i]
            .iter()
            .find(|o| o.user_namespace.is_some_and(|r| r.host == range.host))
        {
            return Err(invalid(
                &d.at,
                &d.name,
                "user-namespace",
                format!(
                    "maps to the same host ids as service {} ({} to {}); rename one",
                    other.name,
                    range.host,
                    range.host + (range.size - 1)
                ),
            ));
        }
    }
    order(decls)
}

fn check(s: ServiceToml, at: &Origin) -> Result<ServiceDecl, ProfileError> {
    let name = s.name.clone();
    let bad = |field: &str, message: String| invalid(at, &name, field, message);
    service::check_name(&name).map_err(|m| bad("name", m))?;

    let image = s.image.unwrap_or(ImageToml {
        debian: None,
        oci_layout: None,
        tag: None,
        registry: None,
        pull: None,
    });
    let tagged = image.tag.is_some();
    let kind = match (
        image.debian,
        image.oci_layout,
        image.registry,
        image.pull,
        s.host,
    ) {
        (Some(pkgs), None, None, None, None) => {
            if pkgs.is_empty() {
                return Err(bad("image.debian", "names no package".into()));
            }
            ServiceKind::Bundle(ImageSource::Debian(pkgs))
        }
        (None, Some(path), None, None, None) => {
            if !path.join("index.json").is_file() {
                return Err(bad(
                    "image.oci-layout",
                    format!(
                        "{} is not an OCI image layout (no index.json)",
                        path.display()
                    ),
                ));
            }
            ServiceKind::Bundle(ImageSource::OciLayout {
                path,
                tag: image.tag,
            })
        }
        (None, None, Some(reference), None, None) => {
            crate::oci::Reference::parse(&reference).map_err(|m| bad("image.registry", m))?;
            ServiceKind::Bundle(ImageSource::Registry(reference))
        }
        (None, None, None, Some(reference), None) => {
            // `http://` marks a plain-HTTP registry for containerd.
            let bare = reference.strip_prefix("http://").unwrap_or(&reference);
            crate::oci::Reference::parse(bare).map_err(|m| bad("image.pull", m))?;
            ServiceKind::Pull(reference)
        }
        (None, None, None, None, Some(argv)) => {
            if !argv.first().is_some_and(|p| p.starts_with('/')) {
                return Err(bad(
                    "host",
                    "must start with the absolute path of a program in the root".into(),
                ));
            }
            ServiceKind::Host(argv)
        }
        _ => {
            return Err(bad(
                "image",
                "give exactly one of image.debian = [...], image.oci-layout = \"dir\", \
                 image.registry = \"host/name:tag\", image.pull = \"host/name:tag\" or \
                 host = [\"/usr/bin/program\", ...]"
                    .into(),
            ));
        }
    };
    if tagged && !matches!(kind, ServiceKind::Bundle(ImageSource::OciLayout { .. })) {
        return Err(bad("image.tag", "belongs to image.oci-layout".into()));
    }
    // Host programs and pulled images are not bundles the builder makes: what only a
    // bundle can have is refused rather than silently ignored.
    let what = match &kind {
        ServiceKind::Bundle(_) => None,
        ServiceKind::Host(_) => Some("a host service"),
        ServiceKind::Pull(_) => Some("an image.pull service"),
    };
    if let Some(what) = what {
        let host = matches!(kind, ServiceKind::Host(_));
        let set = [
            ("command", host && s.command.is_some()),
            ("args", s.args.is_some()),
            ("workdir", s.workdir.is_some()),
            ("user", s.user.is_some()),
            ("network", s.network.is_some()),
            ("mounts", !s.mounts.is_empty()),
            ("read-only", s.read_only.is_some()),
            ("capabilities", s.capabilities.is_some()),
            ("memory", s.memory.is_some()),
            ("cpus", s.cpus.is_some()),
            ("user-namespace", s.user_namespace.is_some()),
            ("pids-max", host && s.pids_max.is_some()),
            ("seccomp", host && s.seccomp.is_some()),
            ("seccomp-allow", host && s.seccomp_allow.is_some()),
            ("files", !s.files.is_empty()),
            (
                "health.command",
                !host && s.health.as_ref().is_some_and(|h| h.command.is_some()),
            ),
        ];
        if let Some((field, _)) = set.iter().find(|(_, set)| *set) {
            return Err(bad(field, format!("is not for {what}")));
        }
    }
    for (field, list) in [("command", &s.command), ("args", &s.args)] {
        if list.as_ref().is_some_and(|l| l.is_empty()) {
            return Err(bad(
                field,
                "is empty; leave it out to use the image's".into(),
            ));
        }
    }
    if s.command.as_ref().is_some_and(|c| !c[0].starts_with('/')) {
        return Err(bad(
            "command",
            format!(
                "{:?} must be an absolute path in the image",
                s.command.as_ref().map(|c| &c[0])
            ),
        ));
    }
    for key in s.env.keys() {
        if key.is_empty() || key.contains('=') {
            return Err(bad("env", format!("{key:?} is not a variable name")));
        }
    }
    if let Some(w) = &s.workdir
        && !w.starts_with('/')
    {
        return Err(bad("workdir", format!("{w:?} must be absolute")));
    }
    let user = match &s.user {
        None => None,
        Some(u) => Some(
            parse_user(u)
                .ok_or_else(|| bad("user", format!("{u:?} is not uid or uid:gid (numbers)")))?,
        ),
    };
    let network = match s.network.as_deref() {
        None | Some("host") => Network::Host,
        Some("private") => Network::Private,
        Some(other) => {
            return Err(bad(
                "network",
                format!("{other:?} is not \"host\" or \"private\""),
            ));
        }
    };
    let mut mounts = Vec::new();
    let mut volumes: Vec<String> = Vec::new();
    for m in s.mounts {
        let source = match (m.source, m.volume) {
            (Some(source), None) => {
                if m.path.is_some() {
                    return Err(bad(
                        "mounts.path",
                        "belongs to a volume's mount (volume = \"NAME\")".into(),
                    ));
                }
                let src = crate::tree::normalize(&source).map(|p| format!("/{p}"));
                match src {
                    Ok(src) if src.starts_with("/var/") => {
                        // A volume's mount point is a plain folder of the state partition
                        // until the volume is mounted: only a volume mount waits for it.
                        if std::path::Path::new(&src).starts_with(volume::MOUNT_ROOT) {
                            return Err(bad(
                                "mounts.source",
                                format!(
                                    "{source:?} is under {}, where volumes are mounted; mount \
                                     the volume by name: {{ volume = \"NAME\", target = … }}",
                                    volume::MOUNT_ROOT
                                ),
                            ));
                        }
                    }
                    _ => {
                        return Err(bad(
                            "mounts.source",
                            format!(
                                "{source:?} is not a directory under /var (the only writable place)"
                            ),
                        ));
                    }
                }
                source
            }
            (None, Some(name)) => {
                volume::check_name(&name).map_err(|e| bad("mounts.volume", e))?;
                let root = volume::mount_point(&name);
                if !volumes.contains(&name) {
                    volumes.push(name);
                }
                match m.path {
                    None => root,
                    Some(p) => {
                        let ok = !p.is_empty()
                            && !p.starts_with('/')
                            && p.split('/').all(|c| !c.is_empty() && c != ".." && c != ".");
                        if !ok {
                            return Err(bad(
                                "mounts.path",
                                format!("{p:?} must be a relative path inside the volume"),
                            ));
                        }
                        format!("{root}/{p}")
                    }
                }
            }
            _ => {
                return Err(bad(
                    "mounts",
                    "give exactly one of source = \"/var/…\" or volume = \"NAME\"".into(),
                ));
            }
        };
        if !m.target.starts_with('/') || m.target.split('/').any(|c| c == "..") {
            return Err(bad(
                "mounts.target",
                format!("{:?} must be an absolute path", m.target),
            ));
        }
        mounts.push(VarMount {
            source,
            target: m.target,
            read_only: m.read_only.unwrap_or(false),
        });
    }
    let capabilities = match s.capabilities {
        None => None,
        Some(list) => {
            let mut caps = Vec::new();
            for c in list {
                caps.push(parse_capability(&c).ok_or_else(|| {
                    bad("capabilities", format!("{c:?} is not a Linux capability"))
                })?);
            }
            Some(caps)
        }
    };
    let memory = match &s.memory {
        None => None,
        Some(m) => {
            let bytes = m
                .parse::<bytesize::ByteSize>()
                .map_err(|_| bad("memory", format!("{m:?} is not a size such as \"128MiB\"")))?
                .as_u64();
            if bytes < 4 << 20 {
                return Err(bad(
                    "memory",
                    format!("{m} is below the 4 MiB a container needs"),
                ));
            }
            Some(bytes)
        }
    };
    if let Some(c) = s.cpus
        && !(c > 0.0 && c <= 1024.0)
    {
        return Err(bad("cpus", format!("{c} is not between 0 and 1024")));
    }
    let pids_max = match s.pids_max {
        None => DEFAULT_PIDS_MAX,
        Some(n) if (MIN_PIDS_MAX..=MAX_PIDS_MAX).contains(&n) => n,
        Some(n) => {
            return Err(bad(
                "pids-max",
                format!(
                    "{n} is not between {MIN_PIDS_MAX} (a process and its health check) and \
                     {MAX_PIDS_MAX} (the kernel's most)"
                ),
            ));
        }
    };
    let seccomp =
        check_seccomp(s.seccomp.as_deref(), s.seccomp_allow).map_err(|(f, m)| bad(f, m))?;
    let user_namespace = match s.user_namespace {
        Some(true) => {
            let range = IdRange::of_service(&name);
            if let Some((uid, gid)) = user
                && (uid >= range.size || gid >= range.size)
            {
                return Err(bad(
                    "user",
                    format!(
                        "{uid}:{gid} is outside the ids 0 to {} that user-namespace = true maps",
                        range.size - 1
                    ),
                ));
            }
            Some(range)
        }
        None | Some(false) => None,
    };
    let restart = match s.restart.as_deref() {
        None => Restart::Always,
        Some(r) => Restart::parse(r).ok_or_else(|| {
            bad(
                "restart",
                format!("{r:?} is not always, on-failure or never"),
            )
        })?,
    };
    for dep in &s.after {
        if dep == &name {
            return Err(bad("after", "a service cannot wait for itself".into()));
        }
    }
    let (health, health_interval) = match s.health {
        None => (None, 10),
        Some(h) => {
            let interval = h.interval.unwrap_or(5).clamp(1, 3600);
            let check = match (h.tcp, h.http, h.command) {
                (Some(port), None, None) if port > 0 => (Health::Tcp(port), None),
                (None, Some(url), None) => {
                    let (port, path) = parse_local_url(&url).ok_or_else(|| {
                        bad(
                            "health.http",
                            format!(
                                "{url:?} is not http://127.0.0.1:PORT/PATH (checks run on the host)"
                            ),
                        )
                    })?;
                    (Health::Http { port, path }, None)
                }
                (None, None, Some(cmd)) if !cmd.is_empty() => (Health::Exec, Some(cmd)),
                _ => {
                    return Err(bad(
                        "health",
                        "give exactly one of tcp = PORT, http = \"URL\" or command = [...]".into(),
                    ));
                }
            };
            if network == Network::Private && check.0 != Health::Exec {
                return Err(bad(
                    "health",
                    "a service on a private network can only be checked with a command".into(),
                ));
            }
            (Some(check), interval)
        }
    };
    let mut files = Vec::new();
    for f in s.files {
        let mode = match &f.mode {
            None => 0o644,
            Some(m) => u32::from_str_radix(m.trim_start_matches("0o"), 8)
                .ok()
                .filter(|m| *m <= 0o7777)
                .ok_or_else(|| bad("files.mode", format!("{m:?} is not an octal mode")))?,
        };
        if !f.source.is_file() {
            return Err(bad(
                "files.source",
                format!("{} is not a file", f.source.display()),
            ));
        }
        if !f.path.starts_with('/') {
            return Err(bad("files.path", format!("{:?} must be absolute", f.path)));
        }
        files.push(FileSpec {
            source: f.source,
            path: f.path,
            mode,
            at: at.clone(),
        });
    }
    let mut after = s.after;
    if matches!(kind, ServiceKind::Pull(_))
        && !after.iter().any(|a| a == service::CONTAINERD_SERVICE)
    {
        after.push(service::CONTAINERD_SERVICE.to_owned());
    }
    Ok(ServiceDecl {
        name,
        at: at.clone(),
        kind,
        command: s.command,
        args: s.args,
        env: s.env,
        workdir: s.workdir,
        user,
        network,
        mounts,
        volumes,
        read_only: s.read_only.unwrap_or(true),
        capabilities,
        memory,
        cpus: s.cpus,
        pids_max: Some(pids_max),
        seccomp,
        user_namespace,
        restart,
        after,
        health,
        health_interval,
        stop_timeout: s.stop_timeout.unwrap_or(10).clamp(1, 600),
        files,
        console: false,
        host_pid: false,
    })
}

/// `CAP_NET_BIND_SERVICE` or `NET_BIND_SERVICE` (oci-spec parses the name without prefix).
pub(super) fn parse_capability(name: &str) -> Option<Capability> {
    name.strip_prefix("CAP_").unwrap_or(name).parse().ok()
}

/// The smallest `pids-max`: a service's process and a health check run beside it.
const MIN_PIDS_MAX: u64 = 8;
/// The largest `pids-max`: the kernel's `PID_MAX_LIMIT` on 64-bit machines.
const MAX_PIDS_MAX: u64 = 4_194_304;

/// `seccomp` and `seccomp-allow` as written: the filter, or the field and what is wrong.
fn check_seccomp(
    mode: Option<&str>,
    allow: Option<Vec<String>>,
) -> Result<Seccomp, (&'static str, String)> {
    match mode {
        None | Some("default") => {}
        Some("unconfined") => {
            return match allow {
                Some(_) => Err((
                    "seccomp-allow",
                    "adds nothing to seccomp = \"unconfined\", which filters no call".into(),
                )),
                None => Ok(Seccomp::Unconfined),
            };
        }
        Some(other) => {
            return Err((
                "seccomp",
                format!("{other:?} is not \"default\" or \"unconfined\""),
            ));
        }
    }
    let mut names = allow.unwrap_or_default();
    for name in &names {
        if !syscalls::is_known(name) {
            let hint = match syscalls::closest(name) {
                Some(close) => format!("; did you mean {close:?}?"),
                None => String::new(),
            };
            return Err((
                "seccomp-allow",
                format!(
                    "{name:?} is not a system call of x86_64, x86 or x32 that libseccomp (Debian 12) \
                     knows{hint}"
                ),
            ));
        }
    }
    names.sort();
    names.dedup();
    Ok(Seccomp::Default { allow: names })
}

fn parse_user(u: &str) -> Option<(u32, u32)> {
    match u.split_once(':') {
        Some((uid, gid)) => Some((uid.parse().ok()?, gid.parse().ok()?)),
        None => {
            let uid = u.parse().ok()?;
            Some((uid, uid))
        }
    }
}

/// `http://127.0.0.1:PORT/PATH` or `http://localhost:PORT/PATH`.
fn parse_local_url(url: &str) -> Option<(u16, String)> {
    let rest = url.strip_prefix("http://")?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_owned()),
        None => (rest, "/".to_owned()),
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().ok()?),
        None => (hostport, 80),
    };
    (host == "127.0.0.1" || host == "localhost").then_some((port, path))
}

/// Orders services so each comes after those it waits for; refuses unknown names and cycles.
fn order(decls: Vec<ServiceDecl>) -> Result<Vec<ServiceDecl>, ProfileError> {
    let names: BTreeSet<&str> = decls.iter().map(|d| d.name.as_str()).collect();
    for d in &decls {
        if let ServiceKind::Pull(_) = d.kind {
            let containerd = decls.iter().find(|c| c.name == service::CONTAINERD_SERVICE);
            if !containerd.is_some_and(|c| matches!(c.kind, ServiceKind::Host(_))) {
                return Err(invalid(
                    &d.at,
                    &d.name,
                    "image.pull",
                    format!(
                        "images are pulled at boot by containerd: the profile needs a host \
                         service named {:?} (profiles/containerd.toml has one)",
                        service::CONTAINERD_SERVICE
                    ),
                ));
            }
        }
        if let Some(unknown) = d.after.iter().find(|a| !names.contains(a.as_str())) {
            return Err(invalid(
                &d.at,
                &d.name,
                "after",
                format!("no service is named {unknown:?}"),
            ));
        }
    }
    let mut placed: Vec<ServiceDecl> = Vec::new();
    let mut left = decls;
    while !left.is_empty() {
        let ready = left
            .iter()
            .position(|d| d.after.iter().all(|a| placed.iter().any(|p| &p.name == a)));
        match ready {
            Some(i) => placed.push(left.remove(i)),
            None => {
                let cycle: Vec<&str> = left.iter().map(|d| d.name.as_str()).collect();
                return Err(invalid(
                    &left[0].at,
                    &left[0].name,
                    "after",
                    format!("dependency cycle among {}", cycle.join(", ")),
                ));
            }
        }
    }
    Ok(placed)
}

#[cfg(test)]
mod tests {
    use super::super::testing::{WEB, decl};
    use super::IdRange;

    #[test]
    fn services_are_ordered_by_their_dependencies() {
        let text = format!(
            "{WEB}after = [\"db\"]\n[[service]]\nname = \"db\"\nimage.debian = [\"x\"]\n[[service]]\nname = \"cache\"\nimage.debian = [\"x\"]\nafter = [\"db\"]\n"
        );
        let names: Vec<String> = decl(&text).unwrap().into_iter().map(|d| d.name).collect();
        assert_eq!(names, ["db", "web", "cache"]);
    }

    #[test]
    fn bad_declarations_name_the_service_and_field() {
        let cases = [
            (
                format!("{WEB}after = [\"db\"]\n"),
                "service web: after",
                "no service is named \"db\"",
            ),
            (
                format!(
                    "{WEB}after = [\"db\"]\n[[service]]\nname = \"db\"\nimage.debian = [\"x\"]\nafter = [\"web\"]\n"
                ),
                "after",
                "dependency cycle",
            ),
            (
                format!("{WEB}memory = \"1KiB\"\n"),
                "service web: memory",
                "below the 4 MiB",
            ),
            (
                format!("{WEB}cpus = 0.0\n"),
                "service web: cpus",
                "between 0 and 1024",
            ),
            (
                format!("{WEB}capabilities = [\"CAP_FLY\"]\n"),
                "capabilities",
                "not a Linux capability",
            ),
            (
                format!("{WEB}mounts = [{{ source = \"/etc\", target = \"/x\" }}]\n"),
                "mounts.source",
                "under /var",
            ),
            (
                format!("{WEB}network = \"private\"\nhealth = {{ tcp = 80 }}\n"),
                "health",
                "private network",
            ),
            (
                "[[service]]\nname = \"web\"\nimage = {}\n".to_string(),
                "service web: image",
                "exactly one of",
            ),
            (
                "[[service]]\nname = \"web\"\nimage.oci-layout = \"/nonexistent\"\n".to_string(),
                "image.oci-layout",
                "not an OCI image layout",
            ),
            (
                format!("{WEB}[[service]]\nname = \"web\"\nimage.debian = [\"x\"]\n"),
                "name",
                "declared twice",
            ),
            (
                "[[service]]\nname = \"Web\"\nimage.debian = [\"x\"]\n".to_string(),
                "name",
                "not a service name",
            ),
            (
                format!("{WEB}seccomp-allow = [\"keyctrl\"]\n"),
                "service web: seccomp-allow",
                "\"keyctrl\" is not a system call of x86_64, x86 or x32 that libseccomp (Debian 12) knows; did you mean \"keyctl\"?",
            ),
            (
                format!("{WEB}seccomp = \"unconfined\"\nseccomp-allow = [\"keyctl\"]\n"),
                "service web: seccomp-allow",
                "adds nothing",
            ),
            (
                format!("{WEB}seccomp = \"off\"\n"),
                "service web: seccomp",
                "\"off\" is not \"default\" or \"unconfined\"",
            ),
            (
                format!("{WEB}pids-max = 2\n"),
                "service web: pids-max",
                "2 is not between 8",
            ),
            (
                format!("{WEB}user-namespace = true\nuser = \"70000\"\n"),
                "service web: user",
                "outside the ids 0 to 65535",
            ),
            (
                "[[service]]\nname = \"c\"\nhost = [\"/usr/bin/containerd\"]\npids-max = 100\n".to_string(),
                "service c: pids-max",
                "not for a host service",
            ),
            (
                "[[service]]\nname = \"c\"\nhost = [\"/usr/bin/containerd\"]\nseccomp-allow = [\"keyctl\"]\n".to_string(),
                "service c: seccomp-allow",
                "not for a host service",
            ),
            (
                "[[service]]\nname = \"p\"\nimage.pull = \"r.example/p:1\"\nuser-namespace = true\n".to_string(),
                "service p: user-namespace",
                "not for an image.pull service",
            ),
        ];
        for (text, field, message) in cases {
            let err = decl(&text).unwrap_err().to_string();
            assert!(err.starts_with("p.toml:9: "), "{err}");
            assert!(
                err.contains(field) && err.contains(message),
                "{text}\n=> {err}"
            );
        }
    }

    #[test]
    fn two_user_namespaces_never_share_host_ids() {
        // Two names whose ranges collide, found the way the builder would meet them.
        let mut seen = std::collections::HashMap::new();
        let (a, b) = (0..)
            .map(|i| format!("s{i}"))
            .find_map(|n| {
                let host = IdRange::of_service(&n).host;
                seen.insert(host, n.clone()).map(|first| (first, n))
            })
            .unwrap();
        let service = |n: &str| {
            format!("[[service]]\nname = \"{n}\"\nimage.debian = [\"x\"]\nuser-namespace = true\n")
        };
        let err = decl(&format!("{}{}", service(&a), service(&b)))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!(
                "service {b}: user-namespace: maps to the same host ids as service {a}"
            )),
            "{err}"
        );
        assert!(decl(&format!("{}{}", service(&a), service("other"))).is_ok());
    }
}
