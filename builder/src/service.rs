//! Services: the `[[service]]` declarations of a profile, checked at build time, and the
//! OCI runtime bundles made from them inside the read-only root.
//!
//! A declaration says what runs ([`ServiceKind`]) and how. Most services are containers made
//! from an image (Debian packages the builder assembles, an OCI image layout on disk, or an
//! image in a registry) and run by crun; a `host` service is a program of the root itself
//! run in the host's namespaces (containerd), and an `image.pull` service names an image
//! that containerd pulls at boot. [`resolve`] checks every field and the dependency graph,
//! naming the service, the field and the profile line; [`bundle`] turns a declaration plus
//! its image into what crun runs: a root file system and a `config.json` following the OCI
//! runtime spec, generated from the image's configuration and the declaration, plus the
//! init's [`ServiceSpec`]. [`admin`] is the optional admin shell. Nothing here runs at boot.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use crust_format::service::{self, CGROUP_PARENT, Health, Kind, Restart, ServiceSpec};
use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxMemoryBuilder,
    LinuxNamespace, LinuxNamespaceType, LinuxResourcesBuilder, Mount, MountBuilder, ProcessBuilder,
    RootBuilder, SpecBuilder, UserBuilder,
};
use serde::Deserialize;

use crate::oci::ImageConfig;
use crate::profile::{FileSpec, Located, Origin, ProfileError};
use crate::tree::{Entry, Node, Tree};

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
    source: String,
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
    /// Mounts from `/var`.
    pub mounts: Vec<VarMount>,
    /// Read-only root file system in the container.
    pub read_only: bool,
    /// Capabilities (`CAP_…`); `None` for the default set.
    pub capabilities: Option<Vec<Capability>>,
    /// Memory limit in bytes.
    pub memory: Option<u64>,
    /// CPU limit in CPUs.
    pub cpus: Option<f64>,
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
const DEFAULT_CAPABILITIES: &[&str] = &[
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
const ALL_CAPABILITIES: &[&str] = &[
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
        read_only: true,
        capabilities: Some(
            ALL_CAPABILITIES
                .iter()
                .filter_map(|c| parse_capability(c))
                .collect(),
        ),
        memory: None,
        cpus: None,
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
    order(decls)
}

fn invalid(at: &Origin, service: &str, field: &str, message: String) -> ProfileError {
    ProfileError::Invalid {
        at: at.clone(),
        field: format!("service {service}: {field}"),
        message,
    }
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
    for m in s.mounts {
        let src = crate::tree::normalize(&m.source).map(|p| format!("/{p}"));
        match src {
            Ok(src) if src.starts_with("/var/") => {}
            _ => {
                return Err(bad(
                    "mounts.source",
                    format!(
                        "{:?} is not a directory under /var (the only writable place)",
                        m.source
                    ),
                ));
            }
        }
        if !m.target.starts_with('/') || m.target.split('/').any(|c| c == "..") {
            return Err(bad(
                "mounts.target",
                format!("{:?} must be an absolute path", m.target),
            ));
        }
        mounts.push(VarMount {
            source: m.source,
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
        read_only: s.read_only.unwrap_or(true),
        capabilities,
        memory,
        cpus: s.cpus,
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
fn parse_capability(name: &str) -> Option<Capability> {
    name.strip_prefix("CAP_").unwrap_or(name).parse().ok()
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

/// A service ready to be installed in the root.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// The service's name.
    pub name: String,
    /// What the init runs.
    pub contents: Contents,
    /// The init's policy file.
    pub spec: ServiceSpec,
    /// `health.json` for exec checks.
    pub health_process: Option<String>,
}

/// What a service's folder holds besides its policy file.
#[derive(Debug, Clone)]
pub enum Contents {
    /// An OCI runtime bundle, for crun.
    Oci {
        /// The container's root file system.
        rootfs: Tree,
        /// `config.json`.
        config: String,
    },
    /// `process.json`: the OCI process of a host program, or the environment (and
    /// arguments) of a pulled image.
    Process(String),
}

/// Facts every container is told about the host image.
#[derive(Debug, Clone)]
pub struct HostFacts {
    /// Image name.
    pub image_name: String,
    /// Image version.
    pub image_version: String,
}

/// Makes the bundle of `decl` from its image.
pub fn bundle(
    decl: &ServiceDecl,
    mut rootfs: Tree,
    image: &ImageConfig,
    host: &HostFacts,
) -> Result<Bundle, ProfileError> {
    let bad = |field: &str, message: String| invalid(&decl.at, &decl.name, field, message);
    let args: Vec<String> = match (&decl.command, &decl.args) {
        (Some(cmd), Some(args)) => cmd.iter().chain(args).cloned().collect(),
        (Some(cmd), None) => cmd.clone(),
        (None, Some(args)) => image.entrypoint.iter().chain(args).cloned().collect(),
        (None, None) => image.entrypoint.iter().chain(&image.cmd).cloned().collect(),
    };
    let Some(program) = args.first() else {
        return Err(bad(
            "command",
            "neither the declaration nor the image says what to run".into(),
        ));
    };
    if program.starts_with('/') && !runnable(&rootfs, program) {
        return Err(bad(
            "command",
            format!("{program} is not a file in the image"),
        ));
    }
    // Mount points crun needs in a read-only root, and the files it binds over.
    for dir in ["proc", "sys", "dev", "tmp", "run", "etc"] {
        if rootfs.get(dir).is_none() {
            rootfs
                .insert(dir, Entry::dir(0o755))
                .map_err(|e| bad("image", e.to_string()))?;
        }
    }
    for file in ["etc/resolv.conf", "etc/hosts", "etc/hostname"] {
        if rootfs.get(file).is_none() {
            rootfs
                .insert(file, Entry::file(Vec::new(), 0o644))
                .map_err(|e| bad("image", e.to_string()))?;
        }
    }
    for m in &decl.mounts {
        if rootfs.get(&m.target).is_none() {
            rootfs
                .insert(&m.target, Entry::dir(0o755))
                .map_err(|e| bad("mounts.target", e.to_string()))?;
        }
    }
    for f in &decl.files {
        let data = std::fs::read(&f.source)
            .map_err(|e| bad("files.source", format!("{}: {e}", f.source.display())))?;
        rootfs
            .insert(&f.path, Entry::file(data, f.mode))
            .map_err(|e| bad("files.path", e.to_string()))?;
    }

    let env = environment(&image.env, host, &decl.env);
    let (uid, gid) = decl.user.or(image.user).unwrap_or((0, 0));
    let cwd = decl
        .workdir
        .clone()
        .or_else(|| image.workdir.clone())
        .unwrap_or_else(|| "/".into());

    let build_err =
        |e: oci_spec::OciSpecError| bad("image", format!("cannot make config.json: {e}"));
    let caps: HashSet<Capability> = match &decl.capabilities {
        Some(c) => c.iter().copied().collect(),
        None => DEFAULT_CAPABILITIES
            .iter()
            .filter_map(|c| parse_capability(c))
            .collect(),
    };
    // Nothing inheritable or ambient: a program the service runs gets no capabilities it
    // was not given by file capabilities (as Docker does).
    let capabilities = LinuxCapabilitiesBuilder::default()
        .ambient(HashSet::new())
        .inheritable(HashSet::new())
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps.clone())
        .build()
        .map_err(build_err)?;
    let process = ProcessBuilder::default()
        .terminal(false)
        .user(
            UserBuilder::default()
                .uid(uid)
                .gid(gid)
                .build()
                .map_err(build_err)?,
        )
        .args(args.clone())
        .env(env.clone())
        .cwd(cwd.clone())
        .no_new_privileges(true)
        .capabilities(capabilities.clone())
        .build()
        .map_err(build_err)?;

    let mut mounts: Vec<Mount> = oci_spec::runtime::get_default_mounts();
    let tmpfs = |dest: &str, options: &[&str]| {
        MountBuilder::default()
            .destination(dest)
            .typ("tmpfs")
            .source("tmpfs")
            .options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>())
            .build()
    };
    mounts.push(tmpfs("/tmp", &["nosuid", "nodev", "mode=1777"]).map_err(build_err)?);
    mounts.push(tmpfs("/run", &["nosuid", "nodev", "mode=755"]).map_err(build_err)?);
    let bind = |src: &str, dest: &str, ro: bool| {
        let mut options = vec!["rbind".to_string(), "nosuid".into(), "nodev".into()];
        options.push(if ro { "ro" } else { "rw" }.into());
        MountBuilder::default()
            .destination(dest)
            .typ("bind")
            .source(src)
            .options(options)
            .build()
    };
    mounts.push(bind("/etc/resolv.conf", "/etc/resolv.conf", true).map_err(build_err)?);
    mounts.push(bind("/etc/hosts", "/etc/hosts", true).map_err(build_err)?);
    for m in &decl.mounts {
        mounts.push(bind(&m.source, &m.target, m.read_only).map_err(build_err)?);
    }

    let mut namespaces = vec![LinuxNamespaceType::Ipc, LinuxNamespaceType::Mount];
    if !decl.host_pid {
        namespaces.insert(0, LinuxNamespaceType::Pid);
    }
    if decl.network == Network::Private {
        namespaces.push(LinuxNamespaceType::Network);
        namespaces.push(LinuxNamespaceType::Uts);
    }
    let namespaces: Vec<LinuxNamespace> = namespaces
        .into_iter()
        .map(|typ| {
            oci_spec::runtime::LinuxNamespaceBuilder::default()
                .typ(typ)
                .build()
        })
        .collect::<Result<_, _>>()
        .map_err(build_err)?;
    let mut resources = LinuxResourcesBuilder::default();
    if let Some(limit) = decl.memory {
        resources = resources.memory(
            LinuxMemoryBuilder::default()
                .limit(limit as i64)
                .build()
                .map_err(build_err)?,
        );
    }
    if let Some(cpus) = decl.cpus {
        let period: u64 = 100_000;
        resources = resources.cpu(
            LinuxCpuBuilder::default()
                .period(period)
                .quota((cpus * period as f64).round() as i64)
                .build()
                .map_err(build_err)?,
        );
    }
    let linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .resources(resources.build().map_err(build_err)?)
        .cgroups_path(PathBuf::from(format!("/{CGROUP_PARENT}/{}", decl.name)))
        .masked_paths(oci_spec::runtime::get_default_maskedpaths())
        .readonly_paths(oci_spec::runtime::get_default_readonly_paths())
        .build()
        .map_err(build_err)?;
    let spec = SpecBuilder::default()
        .version("1.0.2")
        .root(
            RootBuilder::default()
                .path("rootfs")
                .readonly(decl.read_only)
                .build()
                .map_err(build_err)?,
        )
        .process(process)
        .mounts(mounts)
        .linux(linux);
    let mut spec = spec.build().map_err(build_err)?;
    // A host name needs a UTS namespace of its own: only private-network services get one
    // (host-network services share the host's name, which is what they should report).
    spec.set_hostname(match decl.network {
        Network::Private => Some(decl.name.clone()),
        Network::Host => None,
    });
    let config = canonical_json(&spec).map_err(|e| bad("image", e.to_string()))?;

    let health_process = match &decl.health {
        Some((Health::Exec, Some(cmd))) => {
            let p = ProcessBuilder::default()
                .terminal(false)
                .user(
                    UserBuilder::default()
                        .uid(uid)
                        .gid(gid)
                        .build()
                        .map_err(build_err)?,
                )
                .args(cmd.clone())
                .env(env)
                .cwd(cwd)
                .no_new_privileges(true)
                .capabilities(capabilities)
                .build()
                .map_err(build_err)?;
            Some(canonical_json(&p).map_err(|e| bad("health", e.to_string()))?)
        }
        _ => None,
    };
    Ok(Bundle {
        name: decl.name.clone(),
        contents: Contents::Oci { rootfs, config },
        spec: spec_of(decl),
        health_process,
    })
}

/// The init's policy for `decl`.
fn spec_of(decl: &ServiceDecl) -> ServiceSpec {
    ServiceSpec {
        name: decl.name.clone(),
        kind: match &decl.kind {
            ServiceKind::Bundle(_) => Kind::Crun,
            ServiceKind::Host(_) => Kind::Host,
            ServiceKind::Pull(reference) => Kind::Pull(reference.clone()),
        },
        console: decl.console,
        restart: decl.restart,
        after: decl.after.clone(),
        health: decl.health.as_ref().map(|(h, _)| h.clone()),
        health_interval: decl.health_interval,
        stop_timeout: decl.stop_timeout,
    }
}

/// The environment every service gets: a `PATH`, the image facts, then `extra`.
fn environment(
    image_env: &[String],
    host: &HostFacts,
    extra: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    env.insert(
        "PATH".into(),
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
    );
    for kv in image_env {
        if let Some((k, v)) = kv.split_once('=') {
            env.insert(k.into(), v.into());
        }
    }
    env.insert("CRUST_IMAGE_NAME".into(), host.image_name.clone());
    env.insert("CRUST_IMAGE_VERSION".into(), host.image_version.clone());
    env.extend(extra.clone());
    env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// The folder of a `host` or `pull` service: its process (arguments, environment, working
/// directory) as an OCI process object. A host program must be a file of `root`; a pulled
/// image's process has no arguments unless the declaration replaces the image's, and only
/// the declaration's environment (containerd adds the image's).
pub fn process_service(
    decl: &ServiceDecl,
    root: &Tree,
    host: &HostFacts,
) -> Result<Bundle, ProfileError> {
    let bad = |field: &str, message: String| invalid(&decl.at, &decl.name, field, message);
    let build_err =
        |e: oci_spec::OciSpecError| bad("host", format!("cannot make process.json: {e}"));
    let (args, env) = match &decl.kind {
        ServiceKind::Host(argv) => {
            if !runnable(root, &argv[0]) {
                return Err(bad(
                    "host",
                    format!(
                        "{} is not a file in the root; add its package to root.packages",
                        argv[0]
                    ),
                ));
            }
            (argv.clone(), environment(&[], host, &decl.env))
        }
        ServiceKind::Pull(_) => {
            let mut env: Vec<String> = decl.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
            env.push(format!("CRUST_IMAGE_NAME={}", host.image_name));
            env.push(format!("CRUST_IMAGE_VERSION={}", host.image_version));
            env.sort();
            (decl.command.clone().unwrap_or_default(), env)
        }
        ServiceKind::Bundle(_) => {
            return Err(bad("image", "is a bundle, not a process".into()));
        }
    };
    let process = |args: Vec<String>| {
        ProcessBuilder::default()
            .terminal(false)
            .args(args)
            .env(env.clone())
            .cwd("/")
            .build()
    };
    let json = canonical_json(&process(args).map_err(build_err)?)
        .map_err(|e| bad("host", e.to_string()))?;
    let health_process = match &decl.health {
        Some((Health::Exec, Some(cmd))) => {
            if !runnable(root, &cmd[0]) {
                return Err(bad(
                    "health.command",
                    format!("{} is not a file in the root", cmd[0]),
                ));
            }
            Some(
                canonical_json(&process(cmd.clone()).map_err(build_err)?)
                    .map_err(|e| bad("health", e.to_string()))?,
            )
        }
        _ => None,
    };
    Ok(Bundle {
        name: decl.name.clone(),
        contents: Contents::Process(json),
        spec: spec_of(decl),
        health_process,
    })
}

/// JSON with a stable byte form: object keys sorted (serde_json's map is ordered) and the
/// capability sets, which oci-spec keeps in hash sets, sorted too. Builds must not depend
/// on a hash seed.
fn canonical_json(value: &impl serde::Serialize) -> serde_json::Result<String> {
    fn sort_sets(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(map) => {
                for (key, child) in map.iter_mut() {
                    if key == "capabilities"
                        && let serde_json::Value::Object(sets) = child
                    {
                        for set in sets.values_mut() {
                            if let serde_json::Value::Array(items) = set {
                                items.sort_by_key(|a| a.to_string());
                            }
                        }
                    }
                    sort_sets(child);
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(sort_sets),
            _ => {}
        }
    }
    let mut v = serde_json::to_value(value)?;
    sort_sets(&mut v);
    serde_json::to_string_pretty(&v)
}

/// Whether `path` names a file (following symlinks inside the tree) in `rootfs`.
fn runnable(rootfs: &Tree, path: &str) -> bool {
    let mut current = path.trim_start_matches('/').to_owned();
    for _ in 0..16 {
        match rootfs.get(&current).map(|e| &e.node) {
            Some(Node::File(_)) => return true,
            Some(Node::Symlink(target)) => {
                current = if target.starts_with('/') {
                    target.trim_start_matches('/').to_owned()
                } else {
                    let parent = current.rsplit_once('/').map_or("", |(p, _)| p);
                    format!("{parent}/{target}")
                };
                match crate::tree::normalize(&current) {
                    Ok(n) => current = n,
                    Err(_) => return false,
                }
            }
            _ => {
                // A symlinked parent directory (merged /usr): resolve the first component.
                let (first, rest) = current.split_once('/').unwrap_or((current.as_str(), ""));
                match rootfs.get(first).map(|e| &e.node) {
                    Some(Node::Symlink(t)) if !rest.is_empty() => {
                        current = format!("{}/{rest}", t.trim_start_matches('/'));
                    }
                    _ => return false,
                }
            }
        }
    }
    false
}

/// Puts the bundles into the root under `/usr/lib/crust/services`, with the start order.
pub fn install(root: &mut Tree, bundles: &[Bundle]) -> anyhow::Result<()> {
    let dir = service::SERVICES_DIR;
    root.insert(dir, Entry::dir(0o755))?;
    let mut order = String::new();
    for b in bundles {
        let base = format!("{dir}/{}", b.name);
        match &b.contents {
            Contents::Oci { rootfs, config } => {
                root.insert(&format!("{base}/rootfs"), Entry::dir(0o755))?;
                for (path, entry) in rootfs.iter() {
                    root.insert(&format!("{base}/rootfs/{path}"), entry.clone())?;
                }
                root.insert(
                    &format!("{base}/config.json"),
                    Entry::file(config.clone().into_bytes(), 0o644),
                )?;
            }
            Contents::Process(process) => {
                root.insert(&base, Entry::dir(0o755))?;
                root.insert(
                    &format!("{base}/{}", service::PROCESS_FILE),
                    Entry::file(process.clone().into_bytes(), 0o644),
                )?;
            }
        }
        root.insert(
            &format!("{base}/{}", service::SERVICE_FILE),
            Entry::file(b.spec.to_text().into_bytes(), 0o644),
        )?;
        if let Some(h) = &b.health_process {
            root.insert(
                &format!("{base}/{}", service::HEALTH_PROCESS_FILE),
                Entry::file(h.clone().into_bytes(), 0o644),
            )?;
        }
        order.push_str(&b.name);
        order.push('\n');
    }
    root.insert(
        &format!("{dir}/{}", service::ORDER_FILE),
        Entry::file(order.into_bytes(), 0o644),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn at() -> Origin {
        Origin {
            file: Arc::from(Path::new("p.toml")),
            line: 9,
        }
    }

    fn decl(toml_text: &str) -> Result<Vec<ServiceDecl>, ProfileError> {
        #[derive(Deserialize)]
        struct Doc {
            service: Vec<ServiceToml>,
        }
        let doc: Doc = toml::from_str(toml_text).unwrap();
        resolve(
            doc.service
                .into_iter()
                .map(|value| Located { value, at: at() })
                .collect(),
            None,
        )
    }

    const WEB: &str = "[[service]]\nname = \"web\"\nimage.debian = [\"busybox-static\"]\n";

    fn busybox_tree() -> Tree {
        let mut t = Tree::new();
        t.insert("usr/bin/busybox", Entry::file(&b"\x7fELF"[..], 0o755))
            .unwrap();
        t.insert("bin", Entry::symlink("usr/bin")).unwrap();
        t
    }

    fn oci(b: &Bundle) -> (&Tree, &str) {
        match &b.contents {
            Contents::Oci { rootfs, config } => (rootfs, config),
            Contents::Process(_) => panic!("{} is not a bundle", b.name),
        }
    }

    fn host() -> HostFacts {
        HostFacts {
            image_name: "crust".into(),
            image_version: "0.1.0".into(),
        }
    }

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

    const CONTAINERD: &str = "[[service]]\nname = \"containerd\"\nhost = [\"/usr/bin/containerd\", \"--config\", \"/etc/containerd/config.toml\"]\nhealth = { command = [\"/usr/bin/ctr\", \"version\"] }\n";

    #[test]
    fn host_and_pull_services_check_their_fields() {
        let text = format!(
            "[[service]]\nname = \"demo\"\nimage.pull = \"10.0.2.2:5000/demo:1\"\nenv = {{ A = \"1\" }}\nhealth = {{ command = [\"/bin/true\"] }}\n{CONTAINERD}"
        );
        let err = decl(&text).unwrap_err().to_string();
        assert!(
            err.contains("service demo: health.command") && err.contains("image.pull"),
            "{err}"
        );
        let text = format!(
            "[[service]]\nname = \"demo\"\nimage.pull = \"http://10.0.2.2:5000/demo:1\"\ncommand = [\"/bin/busybox\", \"echo\"]\n{CONTAINERD}"
        );
        let decls = decl(&text).unwrap();
        let names: Vec<&str> = decls.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["containerd", "demo"], "pulls wait for containerd");
        assert_eq!(decls[1].after, ["containerd"]);

        let mut root = Tree::new();
        root.insert("usr/bin/containerd", Entry::file(&b"\x7fELF"[..], 0o755))
            .unwrap();
        root.insert("usr/bin/ctr", Entry::file(&b"\x7fELF"[..], 0o755))
            .unwrap();
        let c = process_service(&decls[0], &root, &host()).unwrap();
        assert_eq!(c.spec.kind, Kind::Host);
        let Contents::Process(json) = &c.contents else {
            panic!("a host service has a process");
        };
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(v["args"][0], "/usr/bin/containerd");
        assert!(c.health_process.unwrap().contains("/usr/bin/ctr"));
        let d = process_service(&decls[1], &root, &host()).unwrap();
        assert_eq!(
            d.spec.kind,
            Kind::Pull("http://10.0.2.2:5000/demo:1".into())
        );
        let err = process_service(&decls[0], &Tree::new(), &host())
            .unwrap_err()
            .to_string();
        assert!(err.contains("service containerd: host") && err.contains("not a file"));

        for (text, field, message) in [
            (
                "[[service]]\nname = \"demo\"\nimage.pull = \"10.0.2.2:5000/demo:1\"\n".to_string(),
                "service demo: image.pull",
                "containerd",
            ),
            (
                format!("{CONTAINERD}mounts = [{{ source = \"/var/x\", target = \"/x\" }}]\n"),
                "service containerd: mounts",
                "not for a host service",
            ),
            (
                "[[service]]\nname = \"c\"\nhost = [\"containerd\"]\n".to_string(),
                "service c: host",
                "absolute path",
            ),
            (
                "[[service]]\nname = \"c\"\nhost = [\"/x\"]\nimage.debian = [\"x\"]\n".to_string(),
                "service c: image",
                "exactly one of",
            ),
        ] {
            let err = decl(&text).unwrap_err().to_string();
            assert!(
                err.contains(field) && err.contains(message),
                "{text}\n=> {err}"
            );
        }
    }

    #[test]
    fn the_admin_shell_is_off_unless_asked_for() {
        assert!(decl(WEB).unwrap().iter().all(|d| d.name != ADMIN));
        let decls = resolve(Vec::new(), Some(&at())).unwrap();
        let admin = &decls[0];
        assert_eq!(admin.name, ADMIN);
        let b = bundle(admin, busybox_tree(), &ImageConfig::default(), &host()).unwrap();
        assert!(b.spec.console, "the admin shell is on the console");
        let v: serde_json::Value = serde_json::from_str(oci(&b).1).unwrap();
        let ns: Vec<&str> = v["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|n| n["type"].as_str())
            .collect();
        assert!(!ns.contains(&"pid"), "the host's PID namespace: {ns:?}");
        let caps = v["process"]["capabilities"]["bounding"].as_array().unwrap();
        assert!(caps.iter().any(|c| c == "CAP_SYS_ADMIN"), "{caps:?}");
        assert_eq!(caps.len(), ALL_CAPABILITIES.len());
        assert!(
            v["process"]["args"][3]
                .as_str()
                .unwrap()
                .contains("nsenter -t 1 -m")
        );
        // A profile service cannot take the name.
        let mut doc: Vec<Located<ServiceToml>> = Vec::new();
        #[derive(Deserialize)]
        struct Doc {
            service: Vec<ServiceToml>,
        }
        let parsed: Doc =
            toml::from_str("[[service]]\nname = \"admin\"\nimage.debian = [\"busybox-static\"]\n")
                .unwrap();
        doc.extend(
            parsed
                .service
                .into_iter()
                .map(|value| Located { value, at: at() }),
        );
        let err = resolve(doc, Some(&at())).unwrap_err().to_string();
        assert!(err.contains("service admin: name"), "{err}");
    }

    #[test]
    fn a_service_without_a_command_is_refused() {
        let d = &decl(WEB).unwrap()[0];
        let err = bundle(d, busybox_tree(), &ImageConfig::default(), &host())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("service web: command") && err.contains("neither"),
            "{err}"
        );
        let d = &decl(&format!("{WEB}command = [\"/bin/nothere\"]\n")).unwrap()[0];
        let err = bundle(d, busybox_tree(), &ImageConfig::default(), &host())
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a file in the image"), "{err}");
    }

    #[test]
    fn config_json_follows_the_declaration_and_is_deterministic() {
        let text = format!(
            "{WEB}command = [\"/bin/busybox\", \"httpd\", \"-f\"]\nenv = {{ A = \"1\" }}\nuser = \"1000:1000\"\nmemory = \"64MiB\"\ncpus = 0.5\nmounts = [{{ source = \"/var/lib/web\", target = \"/data\" }}]\nhealth = {{ command = [\"/bin/busybox\", \"true\"] }}\n"
        );
        let d = &decl(&text).unwrap()[0];
        let image = ImageConfig {
            env: vec!["PATH=/bin".into(), "B=2".into()],
            ..ImageConfig::default()
        };
        let b = bundle(d, busybox_tree(), &image, &host()).unwrap();
        let again = bundle(d, busybox_tree(), &image, &host()).unwrap();
        assert_eq!(
            oci(&b).1,
            oci(&again).1,
            "config.json must not depend on hash order"
        );
        let v: serde_json::Value = serde_json::from_str(oci(&b).1).unwrap();
        assert_eq!(
            v["process"]["args"],
            serde_json::json!(["/bin/busybox", "httpd", "-f"])
        );
        assert_eq!(v["process"]["user"]["uid"], 1000);
        let env: Vec<&str> = v["process"]["env"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e.as_str())
            .collect();
        assert!(
            env.contains(&"A=1") && env.contains(&"B=2") && env.contains(&"PATH=/bin"),
            "{env:?}"
        );
        assert!(env.contains(&"CRUST_IMAGE_VERSION=0.1.0"), "{env:?}");
        assert_eq!(v["root"]["readonly"], true);
        let caps = &v["process"]["capabilities"];
        assert!(
            caps["bounding"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c == "CAP_NET_BIND_SERVICE"),
            "{caps}"
        );
        assert_eq!(caps["bounding"], caps["effective"]);
        assert_eq!(caps["ambient"], serde_json::json!([]));
        assert_eq!(v["linux"]["resources"]["memory"]["limit"], 64 << 20);
        assert_eq!(v["linux"]["resources"]["cpu"]["quota"], 50_000);
        assert_eq!(v["linux"]["cgroupsPath"], "/crust/web");
        assert!(
            v.get("hostname").is_none(),
            "host-network services keep the host's name"
        );
        let ns: Vec<&str> = v["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|n| n["type"].as_str())
            .collect();
        assert!(!ns.contains(&"network"), "host network by default: {ns:?}");
        assert!(
            v["mounts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["destination"] == "/data" && m["source"] == "/var/lib/web")
        );
        let rootfs = oci(&b).0;
        assert!(rootfs.get("data").is_some() && rootfs.get("etc/resolv.conf").is_some());
        assert_eq!(b.spec.kind, Kind::Crun);
        assert!(!b.spec.console);
        assert!(ns.contains(&"pid"), "a PID namespace of its own: {ns:?}");
        assert_eq!(b.spec.health, Some(Health::Exec));
        assert!(b.health_process.unwrap().contains("\"true\""));
    }
}
