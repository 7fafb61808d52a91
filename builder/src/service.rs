//! Services: the `[[service]]` declarations of a profile, checked at build time, and the
//! OCI runtime bundles made from them inside the read-only root.
//!
//! A declaration names an image (Debian packages the builder assembles, an OCI image layout
//! on disk, or an image in a registry) and how to run it. [`resolve`] checks every field
//! and the dependency graph, naming the service, the field and the profile line;
//! [`bundle`] turns a declaration plus its image into what crun runs: a root file system and
//! a `config.json` following the OCI runtime spec, generated from the image's configuration
//! and the declaration, plus the init's [`ServiceSpec`]. Nothing here runs at boot.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use crust_format::service::{self, CGROUP_PARENT, Health, Restart, ServiceSpec};
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
    image: ImageToml,
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
        if let Some(p) = &mut self.image.oci_layout {
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
    /// The image.
    pub image: ImageSource,
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

/// Checks the declarations of a profile (in the order written) and their dependency graph.
/// Returns them in start order: every service after those it names in `after`.
pub fn resolve(raw: Vec<Located<ServiceToml>>) -> Result<Vec<ServiceDecl>, ProfileError> {
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

    let image = match (s.image.debian, s.image.oci_layout, s.image.registry) {
        (Some(pkgs), None, None) => {
            if pkgs.is_empty() {
                return Err(bad("image.debian", "names no package".into()));
            }
            ImageSource::Debian(pkgs)
        }
        (None, Some(path), None) => {
            if !path.join("index.json").is_file() {
                return Err(bad(
                    "image.oci-layout",
                    format!(
                        "{} is not an OCI image layout (no index.json)",
                        path.display()
                    ),
                ));
            }
            ImageSource::OciLayout {
                path,
                tag: s.image.tag,
            }
        }
        (None, None, Some(reference)) => {
            crate::oci::Reference::parse(&reference).map_err(|m| bad("image.registry", m))?;
            ImageSource::Registry(reference)
        }
        _ => {
            return Err(bad(
                "image",
                "give exactly one of debian = [...], oci-layout = \"dir\" or registry = \"host/name:tag\"".into(),
            ));
        }
    };
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
    Ok(ServiceDecl {
        name,
        at: at.clone(),
        image,
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
        after: s.after,
        health,
        health_interval,
        stop_timeout: s.stop_timeout.unwrap_or(10).clamp(1, 600),
        files,
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
    /// The container's root file system.
    pub rootfs: Tree,
    /// `config.json`.
    pub config: String,
    /// The init's policy file.
    pub spec: ServiceSpec,
    /// `health.json` for exec checks.
    pub health_process: Option<String>,
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

    let mut env: BTreeMap<String, String> = BTreeMap::new();
    env.insert(
        "PATH".into(),
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
    );
    for kv in &image.env {
        if let Some((k, v)) = kv.split_once('=') {
            env.insert(k.into(), v.into());
        }
    }
    env.insert("CRUST_IMAGE_NAME".into(), host.image_name.clone());
    env.insert("CRUST_IMAGE_VERSION".into(), host.image_version.clone());
    env.extend(decl.env.clone());
    let env: Vec<String> = env.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
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

    let mut namespaces = vec![
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Mount,
    ];
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
        rootfs,
        config,
        spec: ServiceSpec {
            name: decl.name.clone(),
            restart: decl.restart,
            after: decl.after.clone(),
            health: decl.health.as_ref().map(|(h, _)| h.clone()),
            health_interval: decl.health_interval,
            stop_timeout: decl.stop_timeout,
        },
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
        root.insert(&format!("{base}/rootfs"), Entry::dir(0o755))?;
        for (path, entry) in b.rootfs.iter() {
            root.insert(&format!("{base}/rootfs/{path}"), entry.clone())?;
        }
        root.insert(
            &format!("{base}/config.json"),
            Entry::file(b.config.clone().into_bytes(), 0o644),
        )?;
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
            b.config, again.config,
            "config.json must not depend on hash order"
        );
        let v: serde_json::Value = serde_json::from_str(&b.config).unwrap();
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
        assert!(b.rootfs.get("data").is_some() && b.rootfs.get("etc/resolv.conf").is_some());
        assert_eq!(b.spec.health, Some(Health::Exec));
        assert!(b.health_process.unwrap().contains("\"true\""));
    }
}
