//! What a checked declaration becomes in the root: an OCI runtime bundle (the image's
//! tree plus a `config.json` made with oci-spec from the image's configuration and the
//! declaration) for a container, an OCI process object (`process.json`) for a host program
//! or a pulled image, and for each the init's policy file ([`ServiceSpec`]); [`install`]
//! puts them under `/usr/lib/crust/services`. JSON is canonical (sorted keys and sets), so
//! builds do not depend on a hash seed.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

use crust_format::service::{self, CGROUP_PARENT, Health, Kind, ServiceSpec};
use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxIdMappingBuilder,
    LinuxMemoryBuilder, LinuxNamespace, LinuxNamespaceType, LinuxPidsBuilder,
    LinuxResourcesBuilder, Mount, MountBuilder, ProcessBuilder, RootBuilder, SpecBuilder,
    UserBuilder,
};

use super::decl::{DEFAULT_CAPABILITIES, Network, ServiceDecl, ServiceKind, parse_capability};
use super::invalid;
use super::seccomp::{self, Seccomp};
use crate::oci::ImageConfig;
use crate::profile::ProfileError;
use crate::tree::{Entry, Node, Tree};

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
    Process {
        /// `process.json`.
        process: String,
        /// `seccomp.json`, a pulled image's seccomp profile (none for a host program, or for
        /// a pull whose declaration says `seccomp = "unconfined"`).
        seccomp: Option<String>,
    },
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
    // The declaration's files first: the command may be one of them.
    for f in &decl.files {
        let data = std::fs::read(&f.source)
            .map_err(|e| bad("files.source", format!("{}: {e}", f.source.display())))?;
        rootfs
            .insert(&f.path, Entry::file(data, f.mode))
            .map_err(|e| bad("files.path", e.to_string()))?;
    }
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
    if decl.user_namespace.is_some() {
        namespaces.push(LinuxNamespaceType::User);
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
    if let Some(limit) = decl.pids_max {
        resources = resources.pids(
            LinuxPidsBuilder::default()
                .limit(limit as i64)
                .build()
                .map_err(build_err)?,
        );
    }
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
    let mut linux = LinuxBuilder::default();
    if let Seccomp::Default { allow } = &decl.seccomp {
        linux = linux.seccomp(seccomp::profile(&caps, allow));
    }
    if let Some(range) = decl.user_namespace {
        // The image's files belong to host root: in the container they show as the
        // overflow id (nobody) and stay readable and runnable through their "other" bits;
        // the root file system is read-only anyway.
        let map = LinuxIdMappingBuilder::default()
            .container_id(0u32)
            .host_id(range.host)
            .size(range.size)
            .build()
            .map_err(build_err)?;
        linux = linux.uid_mappings(vec![map]).gid_mappings(vec![map]);
    }
    let linux = linux
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
        // A bundle's limit is in its config.json; the init sets a pull's on its cgroup.
        pids_max: match decl.kind {
            ServiceKind::Pull(_) => decl.pids_max,
            ServiceKind::Bundle(_) | ServiceKind::Host(_) => None,
        },
        volumes: decl.volumes.clone(),
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
    let seccomp = match (&decl.kind, &decl.seccomp) {
        (ServiceKind::Pull(_), Seccomp::Default { allow }) => {
            Some(canonical_json(&pull_seccomp(allow)).map_err(|e| bad("seccomp", e.to_string()))?)
        }
        _ => None,
    };
    Ok(Bundle {
        name: decl.name.clone(),
        contents: Contents::Process {
            process: json,
            seccomp,
        },
        spec: spec_of(decl),
        health_process,
    })
}

/// The seccomp profile of an image containerd pulls and runs with its default capabilities,
/// plus `allow`.
fn pull_seccomp(allow: &[String]) -> oci_spec::runtime::LinuxSeccomp {
    let caps: HashSet<Capability> = seccomp::CONTAINERD_CAPABILITIES.iter().copied().collect();
    seccomp::profile(&caps, allow)
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
            Contents::Process { process, seccomp } => {
                root.insert(&base, Entry::dir(0o755))?;
                root.insert(
                    &format!("{base}/{}", service::PROCESS_FILE),
                    Entry::file(process.clone().into_bytes(), 0o644),
                )?;
                if let Some(profile) = seccomp {
                    root.insert(
                        &format!("{base}/{}", service::SECCOMP_FILE),
                        Entry::file(profile.clone().into_bytes(), 0o644),
                    )?;
                }
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
    // With containerd, user-data may add pulls of its own: they get the default profile.
    let containerd = bundles
        .iter()
        .any(|b| b.name == service::CONTAINERD_SERVICE && b.spec.kind == Kind::Host);
    if containerd {
        root.insert(
            service::PULL_SECCOMP,
            Entry::file(canonical_json(&pull_seccomp(&[]))?.into_bytes(), 0o644),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::super::testing::{CONTAINERD, WEB, at, busybox_tree, decl, host, oci};
    use super::*;
    use crate::profile::Located;
    use crate::service::decl::ALL_CAPABILITIES;
    use crate::service::{ADMIN, IdRange, ServiceToml, resolve};
    use std::collections::BTreeSet;

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
        let Contents::Process { process: json, .. } = &c.contents else {
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
        // Unconfined by design: no filter, no pids limit.
        assert!(v["linux"].get("seccomp").is_none(), "{}", v["linux"]);
        assert!(v["linux"]["resources"].get("pids").is_none());
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
        // A program the declaration adds with `files` is one.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tool"), b"\x7fELF").unwrap();
        let d = &decl(&format!(
            "{WEB}command = [\"/usr/local/bin/tool\"]\nfiles = [{{ source = \"{}\", path = \"/usr/local/bin/tool\", mode = \"0755\" }}]\n",
            dir.path().join("tool").display()
        ))
        .unwrap()[0];
        bundle(d, busybox_tree(), &ImageConfig::default(), &host()).unwrap();
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
        // Confined by default: Crust's profile for these capabilities, a pids limit, the
        // host's user namespace.
        assert_eq!(v["linux"]["resources"]["pids"]["limit"], 1024);
        assert_eq!(v["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(v["linux"]["seccomp"]["defaultErrnoRet"], 1);
        let allowed = &v["linux"]["seccomp"]["syscalls"][0];
        assert_eq!(allowed["action"], "SCMP_ACT_ALLOW");
        let names = allowed["names"].as_array().unwrap();
        assert!(names.iter().any(|n| n == "chroot"), "CAP_SYS_CHROOT's call");
        assert!(!names.iter().any(|n| n == "keyctl" || n == "ptrace"));
        assert!(!ns.contains(&"user") && v["linux"].get("uidMappings").is_none());
    }

    /// The confinement keys: relaxing the filter, the pids limit, a user namespace.
    #[test]
    fn confinement_follows_the_declaration() {
        let config = |extra: &str| -> serde_json::Value {
            let d = &decl(&format!(
                "{WEB}command = [\"/bin/busybox\", \"true\"]\n{extra}"
            ))
            .unwrap()[0];
            let b = bundle(d, busybox_tree(), &ImageConfig::default(), &host()).unwrap();
            serde_json::from_str(oci(&b).1).unwrap()
        };
        let v = config("seccomp-allow = [\"keyctl\", \"add_key\", \"keyctl\"]\npids-max = 64\n");
        let names = v["linux"]["seccomp"]["syscalls"][0]["names"]
            .as_array()
            .unwrap();
        assert!(names.iter().any(|n| n == "keyctl") && names.iter().any(|n| n == "add_key"));
        assert!(!names.iter().any(|n| n == "request_key"));
        assert_eq!(v["linux"]["resources"]["pids"]["limit"], 64);

        let v = config("seccomp = \"unconfined\"\n");
        assert!(v["linux"].get("seccomp").is_none());

        let v = config(
            "user-namespace = true\nmounts = [{ source = \"/var/lib/u\", target = \"/data\" }]\n",
        );
        let range = IdRange::of_service("web");
        assert!(
            range.host >= 2 << 16 && range.host.is_multiple_of(1 << 16),
            "{range:?}"
        );
        assert!(u64::from(range.host) + u64::from(range.size) <= 1 << 31);
        let map = serde_json::json!([{"containerID": 0, "hostID": range.host, "size": 65536}]);
        assert_eq!(v["linux"]["uidMappings"], map);
        assert_eq!(v["linux"]["gidMappings"], map);
        assert!(
            v["linux"]["namespaces"]
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n["type"] == "user")
        );
        assert_eq!(v["process"]["user"]["uid"], 0, "root in its namespace");
        assert_eq!(range, IdRange::of_service("web"), "a name keeps its range");
        assert_ne!(range, IdRange::of_service("db"));
    }

    /// Pulled images: their own profile (containerd's default capabilities, plus what the
    /// declaration allows) next to process.json, a pids limit in the service file; images
    /// with containerd carry the profile of user-data's pulls.
    #[test]
    fn pulled_images_get_a_profile_and_a_pids_limit() {
        let text = format!(
            "[[service]]\nname = \"demo\"\nimage.pull = \"r.example/demo:1\"\nseccomp-allow = [\"keyctl\"]\npids-max = 100\n{CONTAINERD}"
        );
        let decls = decl(&text).unwrap();
        let mut root = Tree::new();
        for p in ["usr/bin/containerd", "usr/bin/ctr"] {
            root.insert(p, Entry::file(&b"\x7fELF"[..], 0o755)).unwrap();
        }
        let bundles: Vec<Bundle> = decls
            .iter()
            .map(|d| process_service(d, &root, &host()).unwrap())
            .collect();
        let demo = &bundles[1];
        assert_eq!(demo.spec.pids_max, Some(100));
        assert!(demo.spec.to_text().contains("pids-max=100\n"));
        let Contents::Process {
            seccomp: Some(profile),
            ..
        } = &demo.contents
        else {
            panic!("a pull has a seccomp profile");
        };
        let v: serde_json::Value = serde_json::from_str(profile).unwrap();
        let names = v["syscalls"][0]["names"].as_array().unwrap();
        assert!(names.iter().any(|n| n == "keyctl") && names.iter().any(|n| n == "chroot"));
        assert!(!names.iter().any(|n| n == "mount"));
        assert!(matches!(
            bundles[0].contents,
            Contents::Process { seccomp: None, .. }
        ));
        assert_eq!(
            bundles[0].spec.pids_max, None,
            "containerd is part of the host"
        );

        let mut image = Tree::new();
        install(&mut image, &bundles).unwrap();
        for p in [
            "usr/lib/crust/services/demo/seccomp.json".to_string(),
            service::PULL_SECCOMP.to_string(),
        ] {
            assert!(image.get(&p).is_some(), "{p}");
        }
        let mut image = Tree::new();
        install(&mut image, &bundles[1..]).unwrap();
        assert!(
            image.get(service::PULL_SECCOMP).is_none(),
            "no containerd, no pulls from user-data"
        );
    }

    /// Every system call name a generated config.json names is one Debian 12's libseccomp
    /// resolves on x86_64 (crun would skip an unknown one with a warning), asked of
    /// `scmp_sys_resolver` itself, for a container with every capability and every
    /// argument rule.
    #[test]
    fn libseccomp_resolves_every_name_of_a_generated_config() {
        let caps: Vec<String> = ALL_CAPABILITIES
            .iter()
            .map(|c| format!("\"CAP_{c}\""))
            .collect();
        let mut names = BTreeSet::new();
        for extra in [
            format!("capabilities = [{}]\n", caps.join(", ")),
            String::new(),
        ] {
            let d = &decl(&format!(
                "{WEB}command = [\"/bin/busybox\", \"true\"]\n{extra}"
            ))
            .unwrap()[0];
            let b = bundle(d, busybox_tree(), &ImageConfig::default(), &host()).unwrap();
            let v: serde_json::Value = serde_json::from_str(oci(&b).1).unwrap();
            for rule in v["linux"]["seccomp"]["syscalls"].as_array().unwrap() {
                for n in rule["names"].as_array().unwrap() {
                    names.insert(n.as_str().unwrap().to_owned());
                }
            }
        }
        assert!(names.len() > 350, "{}", names.len());
        let unresolved: Vec<&String> = names
            .iter()
            .filter(|n| {
                let out = std::process::Command::new("scmp_sys_resolver")
                    .args(["-a", "x86_64", n.as_str()])
                    .output()
                    .unwrap_or_else(|e| {
                        panic!(
                            "cannot run scmp_sys_resolver ({e}): install Debian's seccomp package"
                        )
                    });
                // Names of other x86 ABIs resolve to negative pseudo numbers; unknown: -1.
                String::from_utf8_lossy(&out.stdout).trim() == "-1"
            })
            .collect();
        assert!(
            unresolved.is_empty(),
            "unknown to libseccomp: {unresolved:?}"
        );
    }
}
