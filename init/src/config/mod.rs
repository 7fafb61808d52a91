//! The host configuration (user-data): finding it, checking it, and applying what is not
//! the network's or the clock's business (host name, kernel modules, sysctls, update
//! settings). `docs/CONFIGURATION.md` documents the schema for users.
//!
//! Sources ([`source`]), in the order the image's policy lists them ([`trust`]; by default
//! all five), the first that has user-data winning: `crust.config=` on the kernel command
//! line (base64 of the TOML), a NoCloud seed that is not on the boot disk ([`nocloud`]),
//! the installer medium's user-data that the installer left on the boot disk's ESP, taken
//! only with the image's key's signature over its list ([`installer`]), EC2's IMDSv2 on EC2 instances ([`imds`], which needs a DHCP lease first:
//! [`crate::net::Network`] provides it), the image's own `/usr/lib/crust/config.toml`; then
//! built-in defaults.
//!
//! User-data that cannot be used (unsigned where the image wants a signature, not TOML, an
//! unknown key, a wrong type, `#cloud-config`, a change the image does not allow) never
//! stops the boot: one console warning names the source and the reason, the error is
//! appended to `/var/log/crust/config.log`, and the host comes up with the image's
//! configuration.

pub mod apply;
pub mod imds;
pub mod installer;
pub mod nocloud;
pub mod observe;
pub mod schema;
pub mod services;
pub mod source;
pub mod trust;
pub mod volumes;

use std::fs;
use std::path::Path;

use crust_format::phase::Phase;
use crust_format::user_data::{Policy, Source};

pub use schema::HostConfig;
use source::Origin;
use trust::Found;

use crate::{clock, cmdline, console, net};

/// The log of refused user-data, on the state partition.
pub const LOG: &str = "/var/log/crust/config.log";
/// Where the kernel shows the firmware's DMI identity.
const DMI: &str = "/sys/class/dmi/id";

/// The configuration in effect and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    /// The configuration.
    pub config: HostConfig,
    /// Its source.
    pub origin: Origin,
    /// The text it was parsed from (empty for built-in defaults).
    pub text: String,
}

/// The `config` phase: finds and checks the user-data, applies host name, modules,
/// sysctls and update settings, prints the phase line, and returns the configuration for
/// the network and clock phases. `boot_disk` (a kernel name) is never a source. May bring
/// the network up early, for IMDS.
pub fn phase(network: &mut net::Network, boot_disk: &str) -> HostConfig {
    let policy = trust::policy(Path::new("/"));
    let (loaded, refused) = match find(network, &policy, boot_disk) {
        None => (image_default(), None),
        Some((origin, found)) => match accept(&origin, found, &policy) {
            Ok(loaded) => (loaded, None),
            Err(why) => {
                let fallback = image_default();
                refuse(&origin, &why, &fallback.origin);
                (fallback, Some(origin))
            }
        },
    };
    // Measured boot: what the host is about to apply, and where it came from, goes into
    // PCR 12 first.
    crate::tpm::measure::event(
        crust_format::pcr::CRUST,
        &format!("user-data-source={}", loaded.origin),
    );
    crate::tpm::measure::event(
        crust_format::pcr::CRUST,
        &format!(
            "user-data={}",
            crust_format::Digest::of(loaded.text.as_bytes())
        ),
    );
    let applied = apply_all(&loaded);
    let detail = match refused {
        Some(origin) => format!(
            "user-data from {origin} refused (see {LOG}); {} instead{applied}",
            loaded.origin
        ),
        None if loaded.origin == Origin::BuiltIn
            || (loaded.origin == Origin::Image
                && policy.sources.first() != Some(&Source::Image)) =>
        {
            format!(
                "no user-data ({}); {}{applied}",
                describe_sources(&policy),
                loaded.origin
            )
        }
        None => format!("from {}{applied}", loaded.origin),
    };
    console::phase(Phase::Config, &detail);
    loaded.config
}

/// The sources the policy reads, for the phase line (`crust.config=, NoCloud, EC2 IMDS`).
fn describe_sources(policy: &Policy) -> String {
    let names: Vec<String> = policy
        .sources
        .iter()
        .filter(|s| **s != Source::Image)
        .map(|s| match s {
            Source::Cmdline => format!("{}=", source::CMDLINE_KEY),
            Source::NoCloud => "NoCloud".into(),
            Source::Install => "installer's user-data".into(),
            Source::Imds => "EC2 IMDS".into(),
            Source::Image => unreachable!("filtered out"),
        })
        .collect();
    if names.is_empty() {
        "the image reads none".into()
    } else {
        names.join(", ")
    }
}

/// User-data a source gave, if the policy accepts it: signed where it must be, valid, and
/// changing only what the image lets user-data change.
fn accept(
    origin: &Origin,
    found: Result<Found, String>,
    policy: &Policy,
) -> Result<Loaded, String> {
    accept_in(Path::new("/"), origin, found, policy)
}

/// [`accept`] with the services of the root at `root`.
pub(crate) fn accept_in(
    root: &Path,
    origin: &Origin,
    found: Result<Found, String>,
    policy: &Policy,
) -> Result<Loaded, String> {
    let bytes = trust::authenticate(found?, origin, policy)?;
    let text = source::to_text(bytes)?;
    // The image's own default is the profile's word: no policy applies to it.
    let limits = (*origin != Origin::Image).then_some(policy);
    let config = parse_in(root, &text, limits).map_err(|e| e.to_string())?;
    Ok(Loaded {
        config,
        origin: origin.clone(),
        text,
    })
}

/// Parses user-data and checks its services and volumes against the root's and against
/// what `policy` allows (a service that is not there, one user-data may not touch, or a
/// volume on an image that does not let user-data declare any, is refused like any other
/// mistake).
fn parse(text: &str, policy: Option<&Policy>) -> Result<HostConfig, schema::SchemaError> {
    parse_in(Path::new("/"), text, policy)
}

/// [`parse`] against the services of the root at `root`.
fn parse_in(
    root: &Path,
    text: &str,
    policy: Option<&Policy>,
) -> Result<HostConfig, schema::SchemaError> {
    let config = schema::parse(text)?;
    // A state disk is formatted when it is empty: like a volume, the image must allow it.
    if let Some(policy) = policy
        && config.state.is_some()
        && !policy.allows(crust_format::user_data::Permission::Volumes)
    {
        return Err(schema::SchemaError::new(
            "state.disk",
            "this image does not let user-data name a disk for /var, which formats an empty \
             disk (its profile's [config] allow lacks \"volumes\")",
        ));
    }
    crate::services::check_user_data(root, &config.service, policy)?;
    crate::volumes::check_user_data(root, &config.volume, &config.service, policy)?;
    Ok(config)
}

/// The first source of the policy's that has user-data, with the bytes or why they could
/// not be read.
fn find(
    network: &mut net::Network,
    policy: &Policy,
    boot_disk: &str,
) -> Option<(Origin, Result<Found, String>)> {
    policy.sources.iter().find_map(|source| match source {
        Source::Cmdline => {
            let line = fs::read_to_string(cmdline::PROC_CMDLINE).ok()?;
            let found = source::from_cmdline(&line)?;
            Some((Origin::Cmdline, found.map(Found::bytes)))
        }
        Source::NoCloud => {
            let seed = nocloud::find(boot_disk)?;
            let origin = Origin::NoCloud(seed.device.display().to_string());
            match nocloud::read_user_data(&seed) {
                Ok(Some(data)) => Some((
                    origin,
                    Ok(Found {
                        bytes: data.user_data,
                        signature: data.signature,
                    }),
                )),
                Ok(None) => {
                    console::warning(&format!("config: {origin} holds no user-data"));
                    None
                }
                Err(why) => Some((origin, Err(why))),
            }
        }
        Source::Install => installer::find(boot_disk),
        Source::Imds => from_imds(network).map(|bytes| (Origin::Imds, Ok(Found::bytes(bytes)))),
        Source::Image => fs::read(source::IMAGE_DEFAULT)
            .ok()
            .map(|bytes| (Origin::Image, Ok(Found::bytes(bytes)))),
    })
}

/// EC2's user-data, on EC2 instances that have any.
fn from_imds(network: &mut net::Network) -> Option<Vec<u8>> {
    if !imds::is_ec2(Path::new(DMI)) {
        return None;
    }
    match network.up_for_metadata() {
        Err(why) => {
            console::warning(&format!(
                "config: this is an EC2 instance but {why}, so IMDS cannot be asked"
            ));
            None
        }
        Ok(()) => match imds::user_data(imds::ADDRESS, imds::BOOT_RETRY) {
            Ok(found) => found,
            Err(e) => {
                console::warning(&format!("config: EC2 IMDS: {e}"));
                None
            }
        },
    }
}

/// The image's default configuration, or the built-in one when the image has none (or a
/// broken one, which is reported).
fn image_default() -> Loaded {
    let builtin = Loaded {
        config: HostConfig::default(),
        origin: Origin::BuiltIn,
        text: String::new(),
    };
    match fs::read_to_string(source::IMAGE_DEFAULT) {
        Err(_) => builtin,
        Ok(text) => match parse(&text, None) {
            Ok(config) => Loaded {
                config,
                origin: Origin::Image,
                text,
            },
            Err(e) => {
                refuse(&Origin::Image, &e.to_string(), &Origin::BuiltIn);
                builtin
            }
        },
    }
}

/// Reports refused user-data on the console and in the log.
fn refuse(origin: &Origin, why: &str, instead: &Origin) {
    console::warning(&refusal(origin, why, instead));
    if let Err(e) = append_log(&format!(
        "{} {}: {why}\n",
        clock::format_utc(clock::now_unix()),
        origin
    )) {
        console::warning(&format!("config: cannot write {LOG}: {e}"));
    }
}

/// The console line for refused user-data: the source, the field and what is wrong, and
/// what the host uses instead.
fn refusal(origin: &Origin, why: &str, instead: &Origin) -> String {
    format!("config: user-data from {origin} refused: {why}; booting with the {instead} instead")
}

fn append_log(line: &str) -> std::io::Result<()> {
    crate::services::output::append_bounded(Path::new(LOG), line)
}

/// Applies what the config phase owns; returns the phase line's tail.
fn apply_all(loaded: &Loaded) -> String {
    let c = &loaded.config;
    let modules = apply::modules(&c.kernel.modules, &crate::kernel_release());
    let mut sysctls = Vec::new();
    for (key, value) in &c.sysctl {
        match apply::sysctl(key, &value.0) {
            Ok(now) => sysctls.push((key.clone(), now)),
            Err(e) => console::warning(&format!("config: {e}")),
        }
    }
    let hostname = c
        .hostname
        .as_ref()
        .and_then(|name| match apply::hostname(name) {
            Ok(now) => Some(now),
            Err(e) => {
                console::warning(&format!("config: cannot set the host name {name}: {e}"));
                None
            }
        });
    for result in [
        apply::update(c.update.as_ref()),
        apply::fleet(c.fleet.as_ref(), c.update.as_ref()),
        apply::http(&c.network),
        apply::hosts(&c.network.hosts),
        apply::record(&loaded.text, loaded.origin.name()),
    ] {
        if let Err(e) = result {
            console::warning(&format!("config: {e}"));
        }
    }
    let mut parts = Vec::new();
    if let Some(name) = hostname {
        parts.push(format!("hostname {name}"));
    }
    let summary = apply::summary(c, &sysctls);
    if !summary.is_empty() {
        parts.push(summary);
    }
    if !modules.loaded.is_empty() {
        parts.push(format!("loaded {}", modules.loaded.join(" ")));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!(": {}", parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_disk_needs_the_volumes_permission() {
        let text = "version = 1\n[state]\ndisk = \"crust-state\"\n";
        let services_only = Policy::default();
        let why = parse(text, Some(&services_only)).unwrap_err().to_string();
        assert!(
            why.contains("state.disk") && why.contains("\"volumes\""),
            "{why}"
        );
        let volumes = Policy {
            allow: vec![
                crust_format::user_data::Permission::Services,
                crust_format::user_data::Permission::Volumes,
            ],
            ..Policy::default()
        };
        let config = parse(text, Some(&volumes)).unwrap();
        assert_eq!(config.state.unwrap().disk, "crust-state");
        // The image's own default is the profile's word.
        assert!(parse(text, None).is_ok());
    }

    #[test]
    fn the_installers_user_data_counts_as_signed_but_meets_the_policys_limits() {
        let root = tempfile::tempdir().unwrap();
        let policy = Policy {
            sources: Source::ALL.to_vec(),
            signed: true,
            keys: Vec::new(),
            allow: Vec::new(),
        };
        let origin = Origin::Install("/dev/vda1".into());
        // Its signature (the image key's, over the medium's list) was checked by the
        // source: `signed` asks for no other.
        let text = "version = 1\nhostname = \"installed\"\n\n[install]\ndisk = \"auto\"\n";
        let loaded = accept_in(
            root.path(),
            &origin,
            Ok(Found::bytes(text.as_bytes().to_vec())),
            &policy,
        )
        .unwrap();
        assert_eq!(loaded.config.hostname.as_deref(), Some("installed"));
        // What the image does not allow stays refused.
        let volume =
            "version = 1\n[[volume]]\nname = \"db\"\nserial = \"vol1\"\nfilesystem = \"ext4\"\n";
        let err = accept_in(
            root.path(),
            &origin,
            Ok(Found::bytes(volume.as_bytes().to_vec())),
            &policy,
        )
        .unwrap_err();
        assert!(err.contains("lacks \"volumes\""), "{err}");
        // Its refusal by the source names the files, and the host boots on.
        let err = accept_in(root.path(), &origin, Err("changed".into()), &policy).unwrap_err();
        assert_eq!(err, "changed");
    }

    #[test]
    fn a_refusal_names_the_source_and_the_field() {
        let text = "version = 1\n[network.interfaces.eth0]\nmtu = \"big\"\n";
        let why = schema::parse(text).unwrap_err().to_string();
        let line = refusal(&Origin::NoCloud("/dev/vdb".into()), &why, &Origin::BuiltIn);
        assert!(
            line.starts_with(
                "config: user-data from NoCloud seed /dev/vdb refused: \
                 field network.interfaces.eth0.mtu (line 3): invalid type: string \"big\""
            ),
            "{line}"
        );
        assert!(
            line.ends_with("; booting with the built-in defaults instead"),
            "{line}"
        );
        let why = source::to_text(vec![0x1f, 0x8b]).unwrap_err();
        let line = refusal(&Origin::Imds, &why, &Origin::Image);
        assert_eq!(
            line,
            "config: user-data from EC2 IMDS refused: the user-data is gzip-compressed; Crust \
             reads plain TOML; booting with the image default /usr/lib/crust/config.toml instead"
        );
    }
}
