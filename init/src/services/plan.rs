//! What runs: the root's services, in the builder's start order, as the user-data's
//! `[[service]]` tables change them ([`crate::config::services`]).
//!
//! The root is read-only, so a container whose process user-data changes, or a new
//! container made from an image in the root, gets a `config.json` of its own under
//! [`RUN_SERVICES`]: the root bundle's, with the process (and, for a new container, the
//! container id's cgroup) rewritten and `root.path` pointing at the image's read-only
//! `rootfs` in the root. Host and pulled services keep their process in memory.
//!
//! [`apply`] is pure and is run twice: in the config phase, to refuse user-data that names
//! what the image does not have (the host then boots with its built-in configuration), and
//! again when the services start.

use std::fs;
use std::path::{Path, PathBuf};

use crust_format::service::{
    self, CGROUP_PARENT, CONTAINERD_SERVICE, Health, Kind, Restart, ServiceSpec,
};
use serde_json::Value;

use super::process::Process;
use super::runner::{Launch, PullConfinement};
use crate::config::schema::SchemaError;
use crate::config::services::{self as user, field};
use crust_format::user_data::{Permission, Policy};

/// Where bundles that user-data changed are written (on the `/run` tmpfs).
pub const RUN_SERVICES: &str = "/run/crust/services";

/// One service as the init will run it.
#[derive(Debug, Clone, PartialEq)]
pub struct Definition {
    /// Its policy.
    pub spec: ServiceSpec,
    /// Its folder in the root (for `health.json`); a new service has none.
    pub dir: Option<PathBuf>,
    /// Its process.
    pub launch: Launch,
    /// A `config.json` to write into [`Launch::Crun`]'s bundle before the start.
    pub config: Option<Value>,
}

/// What user-data did, for the console.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Services added.
    pub added: Vec<String>,
    /// Services changed.
    pub changed: Vec<String>,
    /// Services turned off.
    pub disabled: Vec<String>,
}

impl Changes {
    /// `user-data: added x; changed y; turned off z`, or nothing.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        for (what, names) in [
            ("added", &self.added),
            ("changed", &self.changed),
            ("turned off", &self.disabled),
        ] {
            if !names.is_empty() {
                parts.push(format!("{what} {}", names.join(", ")));
            }
        }
        if parts.is_empty() {
            String::new()
        } else {
            format!("; user-data {}", parts.join("; "))
        }
    }
}

/// Reads the root's services in start order. A service whose files cannot be read is left
/// out, with a message in the returned list; the others still run.
pub fn load_root(root: &Path) -> (Vec<Definition>, Vec<String>) {
    let dir = root.join(service::SERVICES_DIR);
    let order = fs::read_to_string(dir.join(service::ORDER_FILE)).unwrap_or_default();
    let mut defs = Vec::new();
    let mut problems = Vec::new();
    for name in order.lines().filter(|l| !l.is_empty()) {
        match load_one(&dir.join(name)) {
            Ok(def) => defs.push(def),
            Err(e) => problems.push(format!("service {name} left out: {e}")),
        }
    }
    (defs, problems)
}

fn load_one(dir: &Path) -> Result<Definition, String> {
    let text = fs::read_to_string(dir.join(service::SERVICE_FILE))
        .map_err(|e| format!("cannot read its service file: {e}"))?;
    let spec = ServiceSpec::parse(&text).map_err(|e| e.to_string())?;
    let process = || Process::read(&dir.join(service::PROCESS_FILE));
    let launch = match &spec.kind {
        Kind::Crun => Launch::Crun {
            bundle: dir.to_path_buf(),
        },
        Kind::Host => {
            let process = process()?;
            if process.args.is_empty() {
                return Err("its process.json names no program".into());
            }
            Launch::Host { process }
        }
        Kind::Pull(reference) => Launch::Pull {
            reference: reference.clone(),
            process: process()?,
            confinement: PullConfinement::of_folder(dir, spec.pids_max),
        },
    };
    Ok(Definition {
        spec,
        dir: Some(dir.to_path_buf()),
        launch,
        config: None,
    })
}

/// Applies user-data's services to the root's; errors name the user-data field.
pub fn apply(
    mut defs: Vec<Definition>,
    tables: &[user::Service],
) -> Result<(Vec<Definition>, Changes), SchemaError> {
    let mut changes = Changes::default();
    let mut turned_off: Vec<(usize, String)> = Vec::new();
    for (i, t) in tables.iter().enumerate() {
        let bad = |f: &str, m: String| SchemaError::new(field(i, f), m);
        match defs.iter().position(|d| d.spec.name == t.name) {
            Some(at) => {
                if t.image.is_some() {
                    return Err(bad(
                        "image",
                        format!(
                            "{} is a service of the image and keeps its image; to run \
                             another, give the new service another name",
                            t.name
                        ),
                    ));
                }
                if !t.after.is_empty() {
                    return Err(bad(
                        "after",
                        format!(
                            "{} is a service of the image, whose order the image fixes; \
                             `after` is for services user-data adds",
                            t.name
                        ),
                    ));
                }
                if !t.enabled() {
                    defs.remove(at);
                    turned_off.push((i, t.name.clone()));
                    changes.disabled.push(t.name.clone());
                    continue;
                }
                change(&mut defs[at], t).map_err(|m| bad("command", m))?;
                changes.changed.push(t.name.clone());
            }
            None => {
                let Some(image) = &t.image else {
                    let names: Vec<&str> = defs.iter().map(|d| d.spec.name.as_str()).collect();
                    return Err(bad(
                        "name",
                        format!(
                            "this image has no service {:?} (it has {}); a new service needs \
                             image.service or image.pull",
                            t.name,
                            if names.is_empty() {
                                "none".into()
                            } else {
                                names.join(", ")
                            }
                        ),
                    ));
                };
                let def = match (&image.service, &image.pull) {
                    (Some(base), _) => {
                        from_root_image(&defs, base, t).map_err(|(f, m)| bad(&f, m))?
                    }
                    (None, Some(reference)) => {
                        pulled(&defs, reference, t).map_err(|m| bad("image.pull", m))?
                    }
                    (None, None) => return Err(bad("image", "names no image".into())),
                };
                defs.push(def);
                changes.added.push(t.name.clone());
            }
        }
    }
    // Nothing may wait for a service that is not there.
    for d in &defs {
        for dep in &d.spec.after {
            if defs.iter().any(|o| &o.spec.name == dep) {
                continue;
            }
            if let Some((j, _)) = turned_off.iter().find(|(_, n)| n == dep) {
                return Err(SchemaError::new(
                    field(*j, "enabled"),
                    format!(
                        "{} waits for {dep} (after), so it cannot be turned off",
                        d.spec.name
                    ),
                ));
            }
            let i = tables
                .iter()
                .position(|t| t.name == d.spec.name)
                .unwrap_or(0);
            return Err(SchemaError::new(
                field(i, "after"),
                format!("no service is named {dep:?}"),
            ));
        }
    }
    let defs = order(defs).map_err(|stuck| {
        let i = tables
            .iter()
            .position(|t| stuck.contains(&t.name))
            .unwrap_or(0);
        SchemaError::new(
            field(i, "after"),
            format!("dependency cycle among {}", stuck.join(", ")),
        )
    })?;
    Ok((defs, changes))
}

/// A changed command or environment; the restart policy.
fn change(def: &mut Definition, t: &user::Service) -> Result<(), String> {
    if let Some(policy) = t.restart {
        def.spec.restart = policy.into();
    }
    if t.command.is_none() && t.env.is_empty() {
        return Ok(());
    }
    let name = def.spec.name.clone();
    if let (Launch::Host { .. }, Some(program)) =
        (&def.launch, t.command.as_ref().and_then(|c| c.first()))
        && !in_verified_root(program)
    {
        return Err(format!(
            "{program} is not a program of the verified root: a host program runs as root in \
             the host's namespaces, so it must come from /usr (nothing the host runs comes \
             from /var, /run, /tmp or /etc)"
        ));
    }
    match &mut def.launch {
        Launch::Host { process } | Launch::Pull { process, .. } => {
            if let Some(command) = &t.command {
                process.args = command.clone();
            }
            process.set_env(&t.env);
        }
        Launch::Crun { bundle } => {
            let mut config = read_config(bundle)?;
            set_process(&mut config, t.command.as_deref(), t)?;
            anchor_root(&mut config, bundle)?;
            *bundle = Path::new(RUN_SERVICES).join(&name);
            def.config = Some(config);
        }
    }
    Ok(())
}

/// Whether `program` lies in the read-only, verified part of the root: `/usr` (and the
/// merged-`/usr` links `/bin`, `/sbin`, `/lib`), never a writable or virtual file system.
fn in_verified_root(program: &str) -> bool {
    let path = Path::new(program);
    path.is_absolute()
        && !path
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
        && ["/usr/", "/bin/", "/sbin/", "/lib/"]
            .iter()
            .any(|p| program.starts_with(p))
}

/// A new container from the image of the root's service `base`.
fn from_root_image(
    defs: &[Definition],
    base: &str,
    t: &user::Service,
) -> Result<Definition, (String, String)> {
    let bad = |m: String| ("image.service".to_owned(), m);
    let source = defs.iter().find(|d| d.spec.name == base).ok_or_else(|| {
        bad(format!(
            "this image has no service {base:?} whose image to use"
        ))
    })?;
    let Launch::Crun { bundle } = &source.launch else {
        return Err(bad(format!(
            "{base} is a {} service, not a container image in the root",
            source.spec.kind
        )));
    };
    // The root's own bundle, even if user-data changed `base` too.
    let root_bundle = source.dir.clone().unwrap_or_else(|| bundle.clone());
    let mut config = read_config(&root_bundle).map_err(bad)?;
    set_process(&mut config, t.command.as_deref(), t).map_err(bad)?;
    anchor_root(&mut config, &root_bundle).map_err(bad)?;
    if let Some(linux) = config.get_mut("linux").and_then(Value::as_object_mut) {
        linux.insert(
            "cgroupsPath".into(),
            Value::String(format!("/{CGROUP_PARENT}/{}", t.name)),
        );
    }
    if let Some(hostname) = config.get_mut("hostname") {
        *hostname = Value::String(t.name.clone());
    }
    // The base's volumes come with its mounts; the new container waits for them too.
    let mut volumes = source.spec.volumes.clone();
    let rootfs = root_bundle.join("rootfs");
    for (j, m) in t.mounts.iter().enumerate() {
        add_volume_mount(&mut config, &rootfs, m)
            .map_err(|e| (format!("mounts[{j}].target"), e))?;
        if !volumes.contains(&m.volume) {
            volumes.push(m.volume.clone());
        }
    }
    Ok(Definition {
        spec: ServiceSpec {
            name: t.name.clone(),
            kind: Kind::Crun,
            console: false,
            restart: t.restart.map_or(Restart::Always, Restart::from),
            after: t.after.clone(),
            health: None,
            health_interval: 10,
            stop_timeout: source.spec.stop_timeout,
            pids_max: None,
            volumes,
        },
        dir: None,
        launch: Launch::Crun {
            bundle: Path::new(RUN_SERVICES).join(&t.name),
        },
        config: Some(config),
    })
}

/// A new service whose image containerd pulls.
fn pulled(defs: &[Definition], reference: &str, t: &user::Service) -> Result<Definition, String> {
    let has_containerd = defs
        .iter()
        .any(|d| d.spec.name == CONTAINERD_SERVICE && d.spec.kind == Kind::Host);
    if !has_containerd {
        return Err(format!(
            "this image has no containerd (a host service named {CONTAINERD_SERVICE:?}) to \
             pull {reference}; build the image from profiles/containerd.toml"
        ));
    }
    let mut after = t.after.clone();
    if !after.iter().any(|a| a == CONTAINERD_SERVICE) {
        after.push(CONTAINERD_SERVICE.into());
    }
    let mut process = Process {
        args: t.command.clone().unwrap_or_default(),
        env: Vec::new(),
        cwd: "/".into(),
    };
    process.set_env(&t.env);
    Ok(Definition {
        spec: ServiceSpec {
            name: t.name.clone(),
            kind: Kind::Pull(reference.to_owned()),
            console: false,
            restart: t.restart.map_or(Restart::Always, Restart::from),
            after,
            health: None::<Health>,
            health_interval: 10,
            stop_timeout: 10,
            pids_max: None,
            volumes: Vec::new(),
        },
        dir: None,
        launch: Launch::Pull {
            reference: reference.to_owned(),
            process,
            confinement: PullConfinement::default_for_user_data(),
        },
        config: None,
    })
}

fn read_config(bundle: &Path) -> Result<Value, String> {
    let path = bundle.join("config.json");
    let text = fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Replaces `process.args` (if `command`) and sets `t.env` in `process.env`.
fn set_process(
    config: &mut Value,
    command: Option<&[String]>,
    t: &user::Service,
) -> Result<(), String> {
    let process = config
        .get_mut("process")
        .and_then(Value::as_object_mut)
        .ok_or("its config.json has no process")?;
    let env: Vec<String> = process
        .get("env")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let mut p = Process {
        args: Vec::new(),
        env,
        cwd: "/".into(),
    };
    p.set_env(&t.env);
    process.insert("env".into(), Value::from(p.env));
    if let Some(command) = command {
        process.insert("args".into(), Value::from(command.to_vec()));
    }
    Ok(())
}

/// Adds the bind mount of a volume (`/var/mnt/<name>[/<path>]`) to a container's config.
/// The root file system is read-only (squashfs), so the target must be a directory of the
/// image, or lie in one of the container's tmpfs mounts (`/tmp`, `/run`), where crun can
/// make it.
fn add_volume_mount(
    config: &mut Value,
    rootfs: &Path,
    m: &user::VolumeMount,
) -> Result<(), String> {
    let mounts = config
        .get_mut("mounts")
        .and_then(Value::as_array_mut)
        .ok_or("its config.json has no mounts")?;
    let in_tmpfs = mounts.iter().any(|other| {
        other.get("type").and_then(Value::as_str) == Some("tmpfs")
            && other
                .get("destination")
                .and_then(Value::as_str)
                .is_some_and(|d| Path::new(&m.target).starts_with(d) && m.target != d)
    });
    let in_image = rootfs.join(m.target.trim_start_matches('/'));
    if !in_tmpfs && !in_image.is_dir() {
        return Err(format!(
            "{} is not a directory of the image, whose files are read-only; mount the volume on \
             a directory the image has (or below /tmp or /run)",
            m.target
        ));
    }
    let mode = if m.read_only { "ro" } else { "rw" };
    mounts.push(serde_json::json!({
        "destination": m.target,
        "type": "bind",
        "source": m.source(),
        "options": ["rbind", "nosuid", "nodev", mode],
    }));
    Ok(())
}

/// Makes `root.path` absolute (the new bundle lives elsewhere than the image's files).
fn anchor_root(config: &mut Value, bundle: &Path) -> Result<(), String> {
    let root = config
        .get_mut("root")
        .and_then(Value::as_object_mut)
        .ok_or("its config.json has no root")?;
    let path = root
        .get("path")
        .and_then(Value::as_str)
        .ok_or("its config.json has no root.path")?;
    let absolute = bundle.join(path);
    root.insert(
        "path".into(),
        Value::String(absolute.to_string_lossy().into_owned()),
    );
    Ok(())
}

/// Orders definitions so each comes after those it waits for, keeping the given order
/// otherwise; on a cycle, the names that could not be placed.
fn order(mut left: Vec<Definition>) -> Result<Vec<Definition>, Vec<String>> {
    let mut placed: Vec<Definition> = Vec::new();
    while !left.is_empty() {
        let ready = left.iter().position(|d| {
            d.spec
                .after
                .iter()
                .all(|a| placed.iter().any(|p| &p.spec.name == a))
        });
        match ready {
            Some(i) => placed.push(left.remove(i)),
            None => return Err(left.into_iter().map(|d| d.spec.name).collect()),
        }
    }
    Ok(placed)
}

/// Writes the `config.json` of every bundle user-data changed. A bundle that cannot be
/// written is reported and its service left out.
pub fn write_bundles(defs: Vec<Definition>) -> (Vec<Definition>, Vec<String>) {
    let mut kept = Vec::new();
    let mut problems = Vec::new();
    for def in defs {
        if let (Some(config), Launch::Crun { bundle }) = (&def.config, &def.launch) {
            let written = fs::create_dir_all(bundle).and_then(|()| {
                let text = serde_json::to_vec_pretty(config).map_err(std::io::Error::other)?;
                fs::write(bundle.join("config.json"), text)
            });
            if let Err(e) = written {
                problems.push(format!(
                    "service {} left out: cannot write {}: {e}",
                    def.spec.name,
                    bundle.display()
                ));
                continue;
            }
        }
        kept.push(def);
    }
    (kept, problems)
}

/// The config phase's check: user-data's services against the root's, and (for user-data
/// from outside the image) against what `policy` lets user-data do.
pub fn check(
    root: &Path,
    tables: &[user::Service],
    policy: Option<&Policy>,
) -> Result<(), SchemaError> {
    if tables.is_empty() {
        return Ok(());
    }
    let defs = load_root(root).0;
    if let Some(policy) = policy {
        permitted(&defs, tables, policy)?;
    }
    apply(defs, tables).map(|_| ())
}

/// Refuses a table that does what the image's policy does not allow: changing a host
/// program (`host`), a privileged container or its image (`admin`), any other container
/// (`services`), or pulling an image (`pull`).
fn permitted(
    defs: &[Definition],
    tables: &[user::Service],
    policy: &Policy,
) -> Result<(), SchemaError> {
    for (i, t) in tables.iter().enumerate() {
        let existing = defs.iter().find(|d| d.spec.name == t.name);
        let (needed, field_name, what) = match (existing, &t.image) {
            (Some(def), _) => {
                let needed = needs(def);
                let what = if t.enabled() {
                    format!("change the {} service {}", kind_of(needed), t.name)
                } else {
                    format!("turn off the {} service {}", kind_of(needed), t.name)
                };
                (needed, "name", what)
            }
            (None, Some(image)) => match (&image.service, &image.pull) {
                (Some(base), _) => {
                    let Some(def) = defs.iter().find(|d| &d.spec.name == base) else {
                        // `apply` names the missing image.
                        continue;
                    };
                    let needed = match needs(def) {
                        Permission::Host => Permission::Services,
                        other => other,
                    };
                    (
                        needed,
                        "image.service",
                        format!("start containers from the image of {}", def.spec.name),
                    )
                }
                (None, Some(_)) => (
                    Permission::Pull,
                    "image.pull",
                    "start services from images it pulls".to_owned(),
                ),
                (None, None) => continue,
            },
            (None, None) => continue,
        };
        if !policy.allows(needed) {
            return Err(SchemaError::new(
                field(i, field_name),
                format!(
                    "this image does not let user-data {what} (its profile's [config] allow \
                     lacks \"{needed}\")"
                ),
            ));
        }
    }
    Ok(())
}

/// What changing `def` takes: `host` for a host program, `admin` for a container with the
/// host's powers (every capability, or the host's PID or mount namespace, as the admin
/// shell has), `services` for any other.
fn needs(def: &Definition) -> Permission {
    match &def.launch {
        Launch::Host { .. } => Permission::Host,
        Launch::Pull { .. } => Permission::Services,
        Launch::Crun { bundle } => {
            let dir = def.dir.as_deref().unwrap_or(bundle);
            match read_config(dir) {
                Ok(config) if !privileged(&config) => Permission::Services,
                // A bundle that cannot be read is treated as the most powerful kind.
                _ => Permission::Admin,
            }
        }
    }
}

fn kind_of(p: Permission) -> &'static str {
    match p {
        Permission::Host => "host program",
        Permission::Admin => "privileged container",
        _ => "container",
    }
}

/// Whether an OCI config gives its container the host's powers: `CAP_SYS_ADMIN` in its
/// bounding set, no PID or mount namespace of its own, or no seccomp filter (every
/// container Crust confines has one; a service the profile left `unconfined` has none).
pub fn privileged(config: &Value) -> bool {
    let unfiltered = config.pointer("/linux/seccomp").is_none();
    let has_cap = config
        .pointer("/process/capabilities/bounding")
        .and_then(Value::as_array)
        .is_some_and(|caps| caps.iter().any(|c| c.as_str() == Some("CAP_SYS_ADMIN")));
    let own_namespace = |kind: &str| {
        config
            .pointer("/linux/namespaces")
            .and_then(Value::as_array)
            .is_some_and(|ns| {
                ns.iter().any(|n| {
                    n.get("type").and_then(Value::as_str) == Some(kind) && n.get("path").is_none()
                })
            })
    };
    unfiltered || has_cap || !own_namespace("pid") || !own_namespace("mount")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::schema::parse;

    /// A root with `web` (crun, health check), `late` (after web), `containerd` (host),
    /// `admin` (crun in the host's PID namespace, every capability).
    fn root() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let services = dir.path().join(service::SERVICES_DIR);
        let confined = r#""seccomp":{"defaultAction":"SCMP_ACT_ERRNO"},"namespaces":[{"type":"pid"},{"type":"mount"},{"type":"network"}]"#;
        let host_pid = r#""namespaces":[{"type":"mount"}]"#;
        for (name, text, config) in [
            (
                "web",
                "name=web\nkind=crun\nrestart=always\nafter=\nhealth=http:80/\n",
                Some(confined),
            ),
            (
                "late",
                "name=late\nrestart=on-failure\nafter=web\n",
                Some(confined),
            ),
            ("containerd", "name=containerd\nkind=host\nafter=\n", None),
            ("admin", "name=admin\nkind=crun\nafter=\n", Some(host_pid)),
        ] {
            let d = services.join(name);
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join(service::SERVICE_FILE), text).unwrap();
            if let Some(namespaces) = config {
                fs::write(
                    d.join("config.json"),
                    format!(
                        r#"{{"ociVersion":"1.0.2","process":{{"args":["/bin/busybox","sh"],"env":["PATH=/bin","A=1"],"cwd":"/"}},"root":{{"path":"rootfs","readonly":true}},"linux":{{"cgroupsPath":"/crust/{name}",{namespaces}}}}}"#
                    ),
                )
                .unwrap();
            } else {
                fs::write(
                    d.join(service::PROCESS_FILE),
                    r#"{"args":["/usr/bin/containerd"],"env":["PATH=/usr/bin"],"cwd":"/"}"#,
                )
                .unwrap();
            }
        }
        fs::write(
            services.join(service::ORDER_FILE),
            "web\nlate\ncontainerd\nadmin\n",
        )
        .unwrap();
        dir
    }

    fn tables(text: &str) -> Vec<user::Service> {
        parse(&format!("version = 1\n{text}")).unwrap().service
    }

    fn names(defs: &[Definition]) -> Vec<&str> {
        defs.iter().map(|d| d.spec.name.as_str()).collect()
    }

    #[test]
    fn without_user_data_the_root_runs_as_built() {
        let root = root();
        let (defs, problems) = load_root(root.path());
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(names(&defs), ["web", "late", "containerd", "admin"]);
        let (same, changes) = apply(defs.clone(), &[]).unwrap();
        assert_eq!(same, defs);
        assert_eq!(changes.describe(), "");
    }

    #[test]
    fn user_data_changes_adds_and_turns_off() {
        let root = root();
        let t = tables(
            r#"
[[service]]
name = "web"
env = { A = "2", B = "3" }
restart = "never"

[[service]]
name = "extra"
image.service = "web"
command = ["/bin/busybox", "echo", "hi"]
after = ["web"]

[[service]]
name = "demo"
image.pull = "http://10.0.2.2:5000/demo:1@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
env = { SOURCE = "containerd" }

[[service]]
name = "late"
enabled = false
"#,
        );
        let (defs, changes) = apply(load_root(root.path()).0, &t).unwrap();
        assert_eq!(
            names(&defs),
            ["web", "containerd", "admin", "extra", "demo"]
        );
        assert_eq!(
            changes.describe(),
            "; user-data added extra, demo; changed web; turned off late"
        );
        let web = &defs[0];
        assert_eq!(web.spec.restart, Restart::Never);
        assert_eq!(
            web.launch,
            Launch::Crun {
                bundle: Path::new(RUN_SERVICES).join("web")
            }
        );
        let config = web.config.as_ref().unwrap();
        assert_eq!(
            config["process"]["env"],
            serde_json::json!(["PATH=/bin", "A=2", "B=3"])
        );
        assert_eq!(
            config["process"]["args"],
            serde_json::json!(["/bin/busybox", "sh"])
        );
        let rootfs = root.path().join(service::SERVICES_DIR).join("web/rootfs");
        assert_eq!(config["root"]["path"], rootfs.to_str().unwrap());
        assert_eq!(
            web.spec.health,
            Some(Health::Http {
                port: 80,
                path: "/".into()
            })
        );

        let extra = &defs[3];
        let config = extra.config.as_ref().unwrap();
        assert_eq!(
            config["process"]["args"],
            serde_json::json!(["/bin/busybox", "echo", "hi"])
        );
        assert_eq!(config["linux"]["cgroupsPath"], "/crust/extra");
        assert_eq!(config["root"]["path"], rootfs.to_str().unwrap());
        assert_eq!(extra.spec.health, None);

        let demo = &defs[4];
        assert_eq!(demo.spec.after, ["containerd"]);
        match &demo.launch {
            Launch::Pull {
                reference,
                process,
                confinement,
            } => {
                assert!(reference.starts_with("http://10.0.2.2:5000/demo:1@sha256:"));
                assert_eq!(confinement, &PullConfinement::default_for_user_data());
                assert_eq!(process.env, ["SOURCE=containerd"]);
                assert!(process.args.is_empty(), "the image's own command");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn user_data_that_names_what_is_not_there_is_refused() {
        let root = root();
        for (text, field, message) in [
            (
                "[[service]]\nname = \"nosuch\"\nenv = { A = \"1\" }\n",
                "service[0].name",
                "this image has no service \"nosuch\" (it has web, late, containerd, admin)",
            ),
            (
                "[[service]]\nname = \"x\"\nimage.service = \"nosuch\"\n",
                "service[0].image.service",
                "no service \"nosuch\"",
            ),
            (
                "[[service]]\nname = \"x\"\nimage.service = \"containerd\"\n",
                "service[0].image.service",
                "host service",
            ),
            (
                "[[service]]\nname = \"web\"\nenabled = false\n",
                "service[0].enabled",
                "late waits for web",
            ),
            (
                "[[service]]\nname = \"x\"\nimage.service = \"web\"\nafter = [\"nosuch\"]\n",
                "service[0].after",
                "no service is named \"nosuch\"",
            ),
            (
                "[[service]]\nname = \"x\"\nimage.service = \"web\"\nafter = [\"y\"]\n[[service]]\nname = \"y\"\nimage.service = \"web\"\nafter = [\"x\"]\n",
                "service[0].after",
                "dependency cycle among x, y",
            ),
            (
                "[[service]]\nname = \"web\"\nimage.service = \"late\"\n",
                "service[0].image",
                "keeps its image",
            ),
        ] {
            let e = check(root.path(), &tables(text), None).unwrap_err();
            assert_eq!(e.field, field, "{text}");
            assert!(e.message.contains(message), "{text}: {e}");
        }
        let bare = tempfile::tempdir().unwrap();
        let e = check(
            bare.path(),
            &tables(&format!(
                "[[service]]\nname = \"d\"\nimage.pull = \"r.example/d:1@sha256:{}\"\n",
                "a".repeat(64)
            )),
            None,
        )
        .unwrap_err();
        assert_eq!(e.field, "service[0].image.pull");
        assert!(e.message.contains("no containerd"), "{e}");
    }

    fn policy(allow: &[Permission]) -> Policy {
        Policy {
            allow: allow.to_vec(),
            ..Policy::default()
        }
    }

    #[test]
    fn user_data_does_only_what_the_image_allows() {
        let root = root();
        let pin = format!("@sha256:{}", "b".repeat(64));
        let cases: Vec<(String, Permission, &str)> = vec![
            (
                "[[service]]\nname = \"web\"\ncommand = [\"/bin/busybox\", \"sh\"]\n".into(),
                Permission::Services,
                "service[0].name",
            ),
            (
                "[[service]]\nname = \"late\"\nenabled = false\n".into(),
                Permission::Services,
                "service[0].name",
            ),
            (
                "[[service]]\nname = \"x\"\nimage.service = \"web\"\n".into(),
                Permission::Services,
                "service[0].image.service",
            ),
            (
                "[[service]]\nname = \"containerd\"\nenv = { X = \"1\" }\n".into(),
                Permission::Host,
                "service[0].name",
            ),
            (
                "[[service]]\nname = \"admin\"\ncommand = [\"/bin/busybox\", \"id\"]\n".into(),
                Permission::Admin,
                "service[0].name",
            ),
            (
                "[[service]]\nname = \"root\"\nimage.service = \"admin\"\n".into(),
                Permission::Admin,
                "service[0].image.service",
            ),
            (
                format!("[[service]]\nname = \"d\"\nimage.pull = \"r.example/d{pin}\"\n"),
                Permission::Pull,
                "service[0].image.pull",
            ),
        ];
        for (text, needed, field) in cases {
            let t = tables(&text);
            let others: Vec<Permission> = Permission::ALL
                .into_iter()
                .filter(|p| *p != needed)
                .collect();
            let e = check(root.path(), &t, Some(&policy(&others))).unwrap_err();
            assert_eq!(e.field, field, "{text}");
            assert!(
                e.message.contains(&format!("lacks \"{needed}\"")),
                "{text}: {e}"
            );
            // With the permission, the same user-data passes the policy (and the checks
            // after it: a pull still needs containerd, which this root has).
            check(root.path(), &t, Some(&policy(&[needed]))).unwrap_or_else(|e| {
                panic!("{text}: {e}");
            });
        }
    }

    #[test]
    fn host_programs_run_only_from_the_verified_root() {
        let root = root();
        let allow = policy(&[Permission::Host]);
        for program in [
            "/var/lib/x/evil",
            "/run/x",
            "/tmp/x",
            "/etc/x",
            "/proc/self/exe",
        ] {
            let t = tables(&format!(
                "[[service]]\nname = \"containerd\"\ncommand = [\"{program}\"]\n"
            ));
            let e = check(root.path(), &t, Some(&allow)).unwrap_err();
            assert_eq!(e.field, "service[0].command", "{program}");
            assert!(e.message.contains("verified root"), "{program}: {e}");
        }
        let t = tables(
            "[[service]]\nname = \"containerd\"\ncommand = [\"/usr/bin/containerd\", \"-l\", \"debug\"]\n",
        );
        check(root.path(), &t, Some(&allow)).unwrap();
    }

    #[test]
    fn privileged_containers_are_known_by_their_powers() {
        let config = |caps: &str, ns: &str| -> Value {
            serde_json::from_str(&format!(
                r#"{{"process":{{"capabilities":{{"bounding":[{caps}]}}}},"linux":{{"seccomp":{{}},"namespaces":[{ns}]}}}}"#
            ))
            .unwrap()
        };
        let own = r#"{"type":"pid"},{"type":"mount"}"#;
        assert!(!privileged(&config(r#""CAP_NET_BIND_SERVICE""#, own)));
        assert!(privileged(&config(r#""CAP_SYS_ADMIN""#, own)));
        assert!(privileged(&config("", r#"{"type":"mount"}"#)));
        assert!(privileged(&config(
            "",
            r#"{"type":"pid","path":"/proc/1/ns/pid"},{"type":"mount"}"#
        )));
        let unconfined: Value =
            serde_json::from_str(r#"{"linux":{"namespaces":[{"type":"pid"},{"type":"mount"}]}}"#)
                .unwrap();
        assert!(
            privileged(&unconfined),
            "no seccomp filter is the host's power"
        );
    }
}
