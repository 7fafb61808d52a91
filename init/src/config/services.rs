//! `[[service]]` in user-data: services the host configuration adds, changes or turns off.
//!
//! A table whose `name` is a service of the image changes it (`command`, `env`, `restart`)
//! or turns it off (`enabled = false`). Any other name adds a service, which needs an image:
//! `image.service` reuses the image of one of the root's services (a new container from the
//! same read-only files), and `image.pull` names an image containerd pulls at boot (images
//! built from the containerd profile). This module checks what needs nothing but the text;
//! [`crate::services::check_user_data`] then checks the names against the root, in the same config
//! phase, so a service that does not exist is refused like any other mistake.

use std::collections::{BTreeMap, BTreeSet};

use crust_format::service::{Restart, check_name};
use serde::Deserialize;

use super::schema::SchemaError;

/// One `[[service]]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// The service's name: one of the image's, or a new one.
    pub name: String,
    /// `false` turns a service of the image off.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// The image of a new service.
    #[serde(default)]
    pub image: Option<Image>,
    /// Program and arguments, replacing the service's (or its image's) whole command.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// Environment variables set on top of the service's.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Restart policy.
    #[serde(default)]
    pub restart: Option<Policy>,
    /// Services a new service starts after (and after their health checks pass).
    #[serde(default)]
    pub after: Vec<String>,
    /// Volumes a new container mounts (`{ volume = "db", target = "/data" }`).
    #[serde(default)]
    pub mounts: Vec<VolumeMount>,
}

/// One entry of `mounts`: a volume bound into the container.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct VolumeMount {
    /// The volume's name (the profile's or user-data's `[[volume]]`).
    pub volume: String,
    /// The absolute path in the container.
    pub target: String,
    /// A folder inside the volume to bind instead of its root (made on first use, owned
    /// by the container's user).
    #[serde(default)]
    pub path: Option<String>,
    /// Read-only in the container.
    #[serde(default)]
    pub read_only: bool,
}

impl VolumeMount {
    /// The host path bound: `/var/mnt/<volume>[/<path>]`.
    pub fn source(&self) -> String {
        let root = crust_format::volume::mount_point(&self.volume);
        match &self.path {
            Some(p) => format!("{root}/{}", p.trim_matches('/')),
            None => root,
        }
    }
}

/// Checks a mount's target (absolute, no `..`) and path (relative, no `..`); the error
/// names the key.
pub fn check_volume_mount(m: &VolumeMount) -> Result<(), (&'static str, String)> {
    crust_format::volume::check_name(&m.volume).map_err(|e| ("volume", e))?;
    let clean = |p: &str| {
        !p.split('/').any(|c| c == ".." || c == ".")
            && !p.contains(['\0', '\n', ','])
            && p.len() <= 1024
    };
    if !m.target.starts_with('/') || m.target == "/" || !clean(&m.target) {
        return Err((
            "target",
            format!(
                "{:?} must be an absolute path in the container, not /",
                m.target
            ),
        ));
    }
    if let Some(p) = &m.path
        && (p.is_empty() || p.starts_with('/') || !clean(p) || p.split('/').any(str::is_empty))
    {
        return Err((
            "path",
            format!("{p:?} must be a relative path inside the volume, such as \"postgres\""),
        ));
    }
    Ok(())
}

/// `image` of a new service: exactly one of the two.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Image {
    /// The image of this service of the root.
    #[serde(default)]
    pub service: Option<String>,
    /// An image reference containerd pulls at boot (`http://` first for a plain-HTTP
    /// registry).
    #[serde(default)]
    pub pull: Option<String>,
}

/// `restart`, as in profiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// Whatever the exit status.
    Always,
    /// After a non-zero exit or a signal.
    OnFailure,
    /// Never.
    Never,
}

impl From<Policy> for Restart {
    fn from(p: Policy) -> Self {
        match p {
            Policy::Always => Restart::Always,
            Policy::OnFailure => Restart::OnFailure,
            Policy::Never => Restart::Never,
        }
    }
}

impl Service {
    /// Whether the service runs (the default) or is turned off.
    pub fn enabled(&self) -> bool {
        self.enabled.unwrap_or(true)
    }
}

/// The field path of entry `i`'s `field`, as the TOML parser names them.
pub fn field(i: usize, field: &str) -> String {
    if field.is_empty() {
        format!("service[{i}]")
    } else {
        format!("service[{i}].{field}")
    }
}

/// Checks a reference's form: `[http://]host[:port]/repository[:tag][@sha256:…]`, with an
/// explicit registry host (no implied Docker Hub).
pub fn check_reference(reference: &str) -> Result<(), String> {
    let rest = reference.strip_prefix("http://").unwrap_or(reference);
    let host = rest.split('/').next().unwrap_or("");
    let ok = rest.len() > host.len() + 1
        && (host.contains('.') || host.contains(':') || host == "localhost")
        && !rest
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '\\');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{reference:?} is not an image reference with its registry host, such as \
             registry.example.com/name:tag (or http://10.0.2.2:5000/name:tag for a plain-HTTP \
             registry)"
        ))
    }
}

/// Checks that a reference names its image by digest (`…@sha256:<64 hex digits>`):
/// containerd keeps pulled images on the state partition, which nothing verifies, and runs
/// the same image again for the same reference, so the reference must say which bytes.
pub fn check_pinned(reference: &str) -> Result<(), String> {
    let digest = reference.rsplit_once("@sha256:").map(|(_, d)| d);
    if digest.is_some_and(|d| d.len() == 64 && d.bytes().all(|b| b.is_ascii_hexdigit())) {
        Ok(())
    } else {
        Err(format!(
            "{reference:?} is not pinned by digest; name the image as \
             host/name[:tag]@sha256:<digest> (`skopeo inspect` shows the digest), so the host \
             runs exactly those bytes"
        ))
    }
}

/// Checks the tables on their own (names, forms, exclusive fields).
pub fn validate(services: &[Service]) -> Result<(), SchemaError> {
    let mut seen = BTreeSet::new();
    for (i, s) in services.iter().enumerate() {
        let bad = |f: &str, m: String| SchemaError::new(field(i, f), m);
        check_name(&s.name).map_err(|m| bad("name", m))?;
        if !seen.insert(s.name.as_str()) {
            return Err(bad("name", format!("{:?} is named twice", s.name)));
        }
        if !s.enabled() {
            let other = s.image.is_some()
                || s.command.is_some()
                || !s.env.is_empty()
                || s.restart.is_some()
                || !s.after.is_empty()
                || !s.mounts.is_empty();
            if other {
                return Err(bad(
                    "enabled",
                    "a service turned off takes no other settings".into(),
                ));
            }
        }
        if let Some(image) = &s.image {
            match (&image.service, &image.pull) {
                (Some(base), None) => check_name(base).map_err(|m| bad("image.service", m))?,
                (None, Some(reference)) => {
                    check_reference(reference).map_err(|m| bad("image.pull", m))?;
                    check_pinned(reference).map_err(|m| bad("image.pull", m))?;
                }
                _ => {
                    return Err(bad(
                        "image",
                        "give exactly one of service = \"NAME\" (an image in the root) or \
                         pull = \"REFERENCE\" (pulled by containerd)"
                            .into(),
                    ));
                }
            }
        }
        if let Some(command) = &s.command {
            if !command.first().is_some_and(|p| p.starts_with('/')) {
                return Err(bad(
                    "command",
                    "must start with the absolute path of a program in the image".into(),
                ));
            }
            if command.iter().any(|a| a.contains('\0')) {
                return Err(bad("command", "holds a NUL character".into()));
            }
        }
        for (key, value) in &s.env {
            if key.is_empty() || key.contains(['=', '\0']) || value.contains('\0') {
                return Err(bad(
                    &format!("env.{key}"),
                    format!("{key:?} is not a variable name"),
                ));
            }
        }
        if !s.mounts.is_empty() && s.image.as_ref().is_none_or(|image| image.service.is_none()) {
            return Err(bad(
                "mounts",
                "volumes are mounted into containers user-data adds from an image in the root \
                 (image.service); a service of the image mounts what its profile says, and a \
                 pulled image none"
                    .into(),
            ));
        }
        for (j, m) in s.mounts.iter().enumerate() {
            check_volume_mount(m)
                .map_err(|(f, message)| bad(&format!("mounts[{j}].{f}"), message))?;
            if s.mounts[..j].iter().any(|o| o.target == m.target) {
                return Err(bad(
                    &format!("mounts[{j}].target"),
                    format!("{} is mounted twice", m.target),
                ));
            }
        }
        for (j, dep) in s.after.iter().enumerate() {
            check_name(dep).map_err(|m| bad(&format!("after[{j}]"), m))?;
            if dep == &s.name {
                return Err(bad(
                    &format!("after[{j}]"),
                    "a service cannot wait for itself".into(),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::schema::parse;

    fn field_of(text: &str) -> String {
        parse(&format!("version = 1\n{text}")).unwrap_err().field
    }

    #[test]
    fn services_parse() {
        let c = parse(
            r#"version = 1
[[service]]
name = "web"
env = { GREETING = "hi" }
restart = "on-failure"

[[service]]
name = "cache"
enabled = false

[[service]]
name = "demo"
image.pull = "http://10.0.2.2:5000/demo:1@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
command = ["/bin/busybox", "echo", "hello"]
after = ["web"]
"#,
        )
        .unwrap();
        assert_eq!(c.service.len(), 3);
        assert_eq!(c.service[0].env["GREETING"], "hi");
        assert!(!c.service[1].enabled());
        assert!(
            c.service[2]
                .image
                .as_ref()
                .unwrap()
                .pull
                .as_deref()
                .unwrap()
                .ends_with(
                    "@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
                )
        );
    }

    #[test]
    fn bad_services_name_the_field() {
        for (text, field) in [
            ("[[service]]\nname = \"Web\"\n", "service[0].name"),
            (
                "[[service]]\nname = \"web\"\nrestart = \"sometimes\"\n",
                "service[0].restart",
            ),
            (
                "[[service]]\nname = \"web\"\ncolour = \"red\"\n",
                "service[0].colour",
            ),
            (
                "[[service]]\nname = \"web\"\n[[service]]\nname = \"web\"\n",
                "service[1].name",
            ),
            (
                "[[service]]\nname = \"web\"\nenabled = false\nrestart = \"never\"\n",
                "service[0].enabled",
            ),
            (
                "[[service]]\nname = \"x\"\nimage = { service = \"web\", pull = \"r.example/x\" }\n",
                "service[0].image",
            ),
            (
                "[[service]]\nname = \"x\"\nimage.pull = \"busybox\"\n",
                "service[0].image.pull",
            ),
            (
                "[[service]]\nname = \"x\"\nimage.pull = \"r.example/x:1\"\n",
                "service[0].image.pull",
            ),
            (
                "[[service]]\nname = \"x\"\nimage.pull = \"r.example/x@sha256:abc\"\n",
                "service[0].image.pull",
            ),
            (
                "[[service]]\nname = \"x\"\ncommand = [\"sh\"]\n",
                "service[0].command",
            ),
            (
                "[[service]]\nname = \"x\"\ncommand = []\n",
                "service[0].command",
            ),
            (
                "[[service]]\nname = \"x\"\nafter = [\"x\"]\n",
                "service[0].after[0]",
            ),
            (
                "[[service]]\nname = \"web\"\nmounts = [{ volume = \"db\", target = \"/d\" }]\n",
                "service[0].mounts",
            ),
            (
                "[[service]]\nname = \"x\"\nimage.service = \"web\"\nmounts = [{ volume = \"Db\", target = \"/d\" }]\n",
                "service[0].mounts[0].volume",
            ),
            (
                "[[service]]\nname = \"x\"\nimage.service = \"web\"\nmounts = [{ volume = \"db\", target = \"d\" }]\n",
                "service[0].mounts[0].target",
            ),
            (
                "[[service]]\nname = \"x\"\nimage.service = \"web\"\nmounts = [{ volume = \"db\", target = \"/d\", path = \"../x\" }]\n",
                "service[0].mounts[0].path",
            ),
            (
                "[[service]]\nname = \"x\"\nimage.service = \"web\"\nmounts = [{ volume = \"db\", target = \"/d\" }, { volume = \"c\", target = \"/d\" }]\n",
                "service[0].mounts[1].target",
            ),
            (
                "[[service]]\nname = \"x\"\nimage.service = \"web\"\nmounts = [{ volume = \"db\", source = \"/var/x\", target = \"/d\" }]\n",
                "service[0].mounts[0].source",
            ),
        ] {
            assert_eq!(field_of(text), field, "{text}");
        }
    }
}
