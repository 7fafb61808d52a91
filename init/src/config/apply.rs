//! Putting a host configuration into effect: host name, sysctls, kernel modules, and the
//! files under `/run/crust` that later readers (the update agent, services) use.
//!
//! Each setting that cannot be applied is a warning, not a failed boot: the kernel may
//! lack a sysctl, the image a module.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::kmod::{ModuleInitFlags, finit_module};

use super::schema::{HostConfig, Update};
use crate::console;

/// The accepted configuration text, for later readers.
pub const RUN_CONFIG: &str = "/run/crust/config.toml";
/// Which source it came from ([`super::source::Origin::name`]).
pub const RUN_CONFIG_SOURCE: &str = "/run/crust/config-source";
/// The update settings, `key=value` lines (`repository`, `channel`).
pub const RUN_UPDATE: &str = "/run/crust/update";
/// Where the root keeps kernel modules (when the image ships any).
const MODULES_ROOT: &str = "/usr/lib/modules";

/// Sets the host name (kernel and `/etc/hostname`); returns the kernel's name read back.
pub fn hostname(name: &str) -> Result<String, String> {
    nix::unistd::sethostname(name).map_err(|e| format!("sethostname: {}", e.desc()))?;
    fs::write("/etc/hostname", format!("{name}\n"))
        .map_err(|e| format!("cannot write /etc/hostname: {e}"))?;
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .map_err(|e| format!("cannot read the host name back: {e}"))
}

/// The `/proc/sys` file of a sysctl key: `.` separates levels unless the key uses `/`
/// (needed when a level holds a dot, as `net/ipv4/conf/eth0.100/rp_filter` does).
pub fn sysctl_path(key: &str) -> PathBuf {
    let relative = if key.contains('/') {
        key.to_owned()
    } else {
        key.replace('.', "/")
    };
    Path::new("/proc/sys").join(relative)
}

/// Writes one sysctl; returns the value the kernel reports afterwards.
pub fn sysctl(key: &str, value: &str) -> Result<String, String> {
    let path = sysctl_path(key);
    fs::write(&path, value).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!("sysctl {key}: this kernel has no such setting"),
        _ => format!("sysctl {key}={value}: {e}"),
    })?;
    fs::read_to_string(&path)
        .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
        .map_err(|e| format!("sysctl {key}: cannot read it back: {e}"))
}

/// What loading the configured modules did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Modules {
    /// Loaded now.
    pub loaded: Vec<String>,
    /// Already there (loaded by stage 1, or built in).
    pub present: Vec<String>,
}

/// Loads each module (and what it depends on) from the root's `/usr/lib/modules/<release>`,
/// in `modules.dep` order. A module already loaded or built in counts as present; one the
/// image does not ship is a warning, since the profile decides what the image carries.
pub fn modules(names: &[String], release: &str) -> Modules {
    let mut done = Modules::default();
    let dir = Path::new(MODULES_ROOT).join(release);
    let deps = fs::read_to_string(dir.join("modules.dep")).ok();
    for name in names {
        let canonical = name.replace('-', "_");
        if Path::new("/sys/module").join(&canonical).exists() {
            done.present.push(name.clone());
            continue;
        }
        let Some(deps) = &deps else {
            console::warning(&format!(
                "config: kernel module {name} is not loaded and this image ships no modules \
                 in {}; add it to the profile's [kernel] modules",
                dir.display()
            ));
            continue;
        };
        let Some(order) = load_order(deps, &canonical) else {
            console::warning(&format!(
                "config: kernel module {name} is not in {}/modules.dep",
                dir.display()
            ));
            continue;
        };
        let mut failed = None;
        for path in order {
            let result = File::open(dir.join(&path))
                .map_err(|e| e.to_string())
                .and_then(|f| match finit_module(&f, c"", ModuleInitFlags::empty()) {
                    Ok(()) | Err(Errno::EEXIST) => Ok(()),
                    Err(e) => Err(e.desc().to_owned()),
                });
            if let Err(e) = result {
                failed = Some(format!("{path}: {e}"));
                break;
            }
        }
        match failed {
            None => done.loaded.push(name.clone()),
            Some(why) => console::warning(&format!("config: cannot load module {name}: {why}")),
        }
    }
    done
}

/// The paths to load for `module` from a `modules.dep` text, dependencies first.
pub fn load_order(modules_dep: &str, module: &str) -> Option<Vec<String>> {
    let deps: Vec<(&str, Vec<&str>)> = modules_dep
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(path, deps)| (path.trim(), deps.split_whitespace().collect()))
        .collect();
    let name_of = |path: &str| {
        let file = path.rsplit('/').next().unwrap_or(path);
        file.split(".ko").next().unwrap_or(file).replace('-', "_")
    };
    let (path, direct) = deps.iter().find(|(p, _)| name_of(p) == module)?;
    // modules.dep lists every dependency, transitive ones included, the deepest last.
    let mut order: Vec<String> = direct.iter().rev().map(|d| (*d).to_owned()).collect();
    order.push((*path).to_owned());
    Some(order)
}

/// Writes the update settings for the update agent (removes them when there are none).
pub fn update(settings: Option<&Update>) -> Result<(), String> {
    match settings {
        Some(u) => fs::write(
            RUN_UPDATE,
            format!(
                "repository={}\nchannel={}\ninterval={}\nreboot={}\nhealth-timeout={}\n",
                u.repository, u.channel, u.interval, u.reboot, u.health_timeout
            ),
        )
        .map_err(|e| format!("cannot write {RUN_UPDATE}: {e}")),
        None => match fs::remove_file(RUN_UPDATE) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(format!("cannot remove {RUN_UPDATE}: {e}"))
            }
            _ => Ok(()),
        },
    }
}

/// Writes the fleet settings for the update agent (removes them when there are none).
pub fn fleet(fleet: Option<&super::schema::Fleet>, update: Option<&Update>) -> Result<(), String> {
    let path = crate::fleet::RUN_FLEET;
    match (fleet, update) {
        (Some(f), Some(u)) => {
            let settings = crate::fleet::Settings {
                endpoints: f.etcd.clone(),
                group: f.group.clone(),
                max_rebooting: f.max_rebooting,
                lease: f.lease,
                // Three missed checks and a host's status is gone.
                status_ttl: u.interval.saturating_mul(3).clamp(60, 86_400),
                client_certificate: f.client_certificate.clone().zip(f.client_key.clone()),
            };
            fs::write(path, settings.to_text()).map_err(|e| format!("cannot write {path}: {e}"))
        }
        _ => match fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(format!("cannot remove {path}: {e}"))
            }
            _ => Ok(()),
        },
    }
}

/// Writes how servers are reached (proxies, extra authorities) for the update agent and the
/// fleet client.
pub fn http(network: &super::schema::Network) -> Result<(), String> {
    let proxy = network.proxy.clone().unwrap_or_default();
    let settings = crate::http::client::Settings {
        http_proxy: proxy.http,
        https_proxy: proxy.https,
        no_proxy: proxy.no_proxy,
        ca_certificates: network.ca_certificates.clone(),
    };
    let path = crate::http::client::RUN_HTTP;
    let text = serde_json::to_vec(&settings).map_err(|e| format!("{path}: {e}"))?;
    fs::write(path, text).map_err(|e| format!("cannot write {path}: {e}"))
}

/// Adds the user-data's static names to `/etc/hosts` (on the `/etc` overlay), after the
/// image's own lines.
pub fn hosts(names: &std::collections::BTreeMap<String, std::net::IpAddr>) -> Result<(), String> {
    if names.is_empty() {
        return Ok(());
    }
    let path = "/etc/hosts";
    let mut text = fs::read_to_string(path).unwrap_or_else(|_| {
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n".into()
    });
    if !text.ends_with('\n') && !text.is_empty() {
        text.push('\n');
    }
    for (name, addr) in names {
        text.push_str(&format!("{addr}\t{name}\n"));
    }
    fs::write(path, text).map_err(|e| format!("cannot write {path}: {e}"))
}

/// Records the configuration in effect under `/run/crust` (readable by root only: it may
/// hold `[metrics]` and `[logs]` keys and tokens).
pub fn record(text: &str, origin: &str) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = fs::remove_file(RUN_CONFIG);
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(RUN_CONFIG)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| format!("cannot write {RUN_CONFIG}: {e}"))?;
    fs::write(RUN_CONFIG_SOURCE, format!("{origin}\n"))
        .map_err(|e| format!("cannot write {RUN_CONFIG_SOURCE}: {e}"))
}

/// A short account of what a configuration sets, for the console; `sysctls` are the
/// values the kernel reported after writing them.
pub fn summary(c: &HostConfig, sysctls: &[(String, String)]) -> String {
    let mut parts = Vec::new();
    let plural = |n: usize, one: &str| {
        if n == 1 {
            format!("1 {one}")
        } else {
            format!("{n} {one}s")
        }
    };
    if !c.network.interfaces.is_empty() {
        parts.push(plural(c.network.interfaces.len(), "interface"));
    }
    if !sysctls.is_empty() {
        let shown: Vec<String> = sysctls.iter().map(|(k, v)| format!("{k}={v}")).collect();
        parts.push(format!("sysctl {}", shown.join(" ")));
    }
    if !c.time.servers.is_empty() {
        parts.push(plural(c.time.servers.len(), "time server"));
    }
    if !c.kernel.modules.is_empty() {
        parts.push(format!("modules {}", c.kernel.modules.join(" ")));
    }
    if let Some(u) = &c.update {
        parts.push(format!("updates {} from {}", u.channel, u.repository));
    }
    if let Some(f) = &c.fleet {
        parts.push(format!(
            "fleet group {} (max-rebooting {}) on {}",
            f.group,
            f.max_rebooting,
            f.etcd.join(" ")
        ));
    }
    if let Some(m) = &c.metrics {
        let scheme = if m.tls.is_some() { "https" } else { "http" };
        parts.push(format!(
            "metrics on {scheme} {}",
            std::net::SocketAddr::new(m.address, m.port)
        ));
    }
    if let Some(l) = &c.logs {
        parts.push(format!("logs to {} {}", l.protocol, l.address));
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctl_keys_map_to_proc_sys() {
        assert_eq!(
            sysctl_path("net.ipv4.ip_forward"),
            Path::new("/proc/sys/net/ipv4/ip_forward")
        );
        assert_eq!(
            sysctl_path("net/ipv4/conf/eth0.100/rp_filter"),
            Path::new("/proc/sys/net/ipv4/conf/eth0.100/rp_filter")
        );
    }

    #[test]
    fn modules_load_after_their_dependencies() {
        let dep = "kernel/fs/fat/fat.ko:\nkernel/fs/fat/vfat.ko: kernel/fs/fat/fat.ko\n\
                   kernel/net/wireguard/wireguard.ko: kernel/lib/crypto/libchacha20poly1305.ko \
                   kernel/lib/crypto/libchacha.ko\n";
        assert_eq!(
            load_order(dep, "vfat").unwrap(),
            ["kernel/fs/fat/fat.ko", "kernel/fs/fat/vfat.ko"]
        );
        assert_eq!(
            load_order(dep, "wireguard").unwrap(),
            [
                "kernel/lib/crypto/libchacha.ko",
                "kernel/lib/crypto/libchacha20poly1305.ko",
                "kernel/net/wireguard/wireguard.ko"
            ]
        );
        assert_eq!(load_order(dep, "fat").unwrap(), ["kernel/fs/fat/fat.ko"]);
        assert!(load_order(dep, "ext4").is_none());
    }

    #[test]
    fn the_summary_names_what_is_set() {
        let c = super::super::schema::parse(
            "version = 1\n[sysctl]\n\"vm.swappiness\" = 10\n[time]\nservers = [\"a\"]\n",
        )
        .unwrap();
        let read_back = [("vm.swappiness".to_owned(), "10".to_owned())];
        assert_eq!(
            summary(&c, &read_back),
            "sysctl vm.swappiness=10, 1 time server"
        );
        assert_eq!(summary(&c, &[]), "1 time server");
    }
}
