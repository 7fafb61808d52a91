//! The host configuration's schema (version 1) and its validation.
//!
//! User-data is TOML. Parsing is strict: an unknown key, a value of the wrong type or a
//! value out of range is an error that names the field by its dotted path (`network.
//! interfaces.eth0.mtu`) and, where the TOML parser knows it, the line. Nothing here reads
//! files or touches the system; `docs/CONFIGURATION.md` is the reference for users.
//!
//! Services (`[[service]]`) and volumes (`[[volume]]`) have their own modules,
//! [`super::services`] and [`super::volumes`].

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

/// The schema version this init understands.
pub const VERSION: u32 = 1;

/// The host configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// Schema version; must be [`VERSION`].
    pub version: u32,
    /// The host name (RFC 1123: letters, digits, `-`, dot-separated labels).
    #[serde(default)]
    pub hostname: Option<String>,
    /// Network interfaces.
    #[serde(default)]
    pub network: Network,
    /// Time servers.
    #[serde(default)]
    pub time: Time,
    /// Kernel parameters written to `/proc/sys` (`"net.ipv4.ip_forward" = 1`).
    #[serde(default)]
    pub sysctl: BTreeMap<String, SysctlValue>,
    /// Kernel modules.
    #[serde(default)]
    pub kernel: Kernel,
    /// Where the update agent looks for new versions.
    #[serde(default)]
    pub update: Option<Update>,
    /// Reboots coordinated with the rest of a fleet through etcd.
    #[serde(default)]
    pub fleet: Option<Fleet>,
    /// Services added, changed or turned off ([`super::services`]).
    #[serde(default)]
    pub service: Vec<super::services::Service>,
    /// Data volumes ([`super::volumes`]).
    #[serde(default)]
    pub volume: Vec<super::volumes::Volume>,
    /// The Prometheus endpoint, off without the table ([`super::observe`]).
    #[serde(default)]
    pub metrics: Option<super::observe::Metrics>,
    /// The syslog collector, off without the table ([`super::observe`]).
    #[serde(default)]
    pub logs: Option<super::observe::Logs>,
    /// `[install]`: the installer's choice of disk (docs/METAL.md). Checked here too, so
    /// one file can serve the installer and the host it installs; the host ignores it.
    #[serde(default)]
    pub install: Option<crate::install::InstallConfig>,
    /// `[state]`: a network-booted host's `/var` on a local disk (docs/METAL.md); a host
    /// booted from its own disk keeps `/var` on its state partition and says it ignores it.
    #[serde(default)]
    pub state: Option<StateDisk>,
}

/// `[state]` (network-booted hosts).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateDisk {
    /// The disk for `/var`: `/dev/disk/by-id/NAME`, `/dev/NAME` or a serial number.
    pub disk: String,
}

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            version: VERSION,
            hostname: None,
            network: Network::default(),
            time: Time::default(),
            sysctl: BTreeMap::new(),
            kernel: Kernel::default(),
            update: None,
            fleet: None,
            service: Vec::new(),
            volume: Vec::new(),
            metrics: None,
            logs: None,
            install: None,
            state: None,
        }
    }
}

/// `[network]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// DHCP on every Ethernet interface with a link that `interfaces` does not name.
    #[serde(default = "yes")]
    pub dhcp: bool,
    /// How long the boot waits for DHCP leases, in seconds (the clients keep trying after).
    #[serde(default = "default_dhcp_timeout")]
    pub dhcp_timeout: u32,
    /// Interfaces by kernel name (`eth0`, `ens5`).
    #[serde(default)]
    pub interfaces: BTreeMap<String, Interface>,
    /// Static names (`/etc/hosts`): name → address.
    #[serde(default)]
    pub hosts: BTreeMap<String, IpAddr>,
    /// The HTTP proxy for update repositories (and containerd's pulls).
    #[serde(default)]
    pub proxy: Option<Proxy>,
    /// Certificate authorities (PEM) trusted besides the built-in roots, for `https://`
    /// repositories and etcd members.
    #[serde(default, rename = "ca-certificates")]
    pub ca_certificates: Vec<String>,
}

/// `[network.proxy]`: `http_proxy`/`https_proxy`/`no_proxy` semantics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Proxy {
    /// The proxy for `http://` URLs, `http://host:port`.
    #[serde(default)]
    pub http: Option<String>,
    /// The proxy for `https://` URLs (a tunnel through it), `http://host:port`.
    #[serde(default)]
    pub https: Option<String>,
    /// Hosts reached directly: names, `.domain`s, addresses, or `*`.
    #[serde(default)]
    pub no_proxy: Vec<String>,
}

impl Default for Network {
    fn default() -> Self {
        Self {
            dhcp: true,
            dhcp_timeout: default_dhcp_timeout(),
            interfaces: BTreeMap::new(),
            hosts: BTreeMap::new(),
            proxy: None,
            ca_certificates: Vec::new(),
        }
    }
}

impl Network {
    /// The configuration of interface `name`: its own table, or the `dhcp` default.
    pub fn interface(&self, name: &str) -> Interface {
        self.interfaces.get(name).cloned().unwrap_or(Interface {
            dhcp: Some(self.dhcp),
            ..Interface::default()
        })
    }
}

/// Upper bound of `network.dhcp_timeout`.
pub const MAX_DHCP_TIMEOUT: u32 = 300;

fn default_dhcp_timeout() -> u32 {
    10
}

fn yes() -> bool {
    true
}

/// `[network.interfaces.NAME]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Interface {
    /// Use DHCP; defaults to true unless `address` is given.
    #[serde(default)]
    pub dhcp: Option<bool>,
    /// Static IPv4 address with prefix length, `192.0.2.10/24`.
    #[serde(default)]
    pub address: Option<Cidr>,
    /// Default gateway (static addressing only).
    #[serde(default)]
    pub gateway: Option<Ipv4Addr>,
    /// Name servers, in order of preference.
    #[serde(default)]
    pub dns: Vec<IpAddr>,
    /// MTU in bytes (68..=65535); DHCP's option 26 otherwise.
    #[serde(default)]
    pub mtu: Option<u16>,
}

impl Interface {
    /// Whether this interface runs DHCP.
    pub fn uses_dhcp(&self) -> bool {
        self.dhcp.unwrap_or(self.address.is_none())
    }
}

/// An IPv4 address with a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The address.
    pub address: Ipv4Addr,
    /// The prefix length, 0..=32.
    pub prefix_len: u8,
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix_len)
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (address, prefix) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} needs a prefix length, such as {s}/24"))?;
        let address = address
            .parse()
            .map_err(|_| format!("{address:?} is not an IPv4 address"))?;
        let prefix_len = prefix
            .parse::<u8>()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| format!("prefix length {prefix:?} is not 0..=32"))?;
        Ok(Self {
            address,
            prefix_len,
        })
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(de::Error::custom)
    }
}

/// `[time]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Time {
    /// SNTP servers: `host`, `host:port`, `192.0.2.1`, `[2001:db8::1]:123`.
    #[serde(default)]
    pub servers: Vec<String>,
    /// Also use the NTP servers DHCP offers (option 42), after `servers`.
    #[serde(default = "yes")]
    pub dhcp: bool,
    /// Seconds between the checks of the clock after boot.
    #[serde(default = "default_time_interval")]
    pub interval: u32,
}

impl Default for Time {
    fn default() -> Self {
        Self {
            servers: Vec::new(),
            dhcp: true,
            interval: default_time_interval(),
        }
    }
}

/// Bounds of `time.interval`, in seconds (NTP's poll range, 2^4 to 2^17).
pub const TIME_INTERVAL: std::ops::RangeInclusive<u32> = 16..=131_072;

fn default_time_interval() -> u32 {
    1024
}

/// `[kernel]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kernel {
    /// Modules to load, by name.
    #[serde(default)]
    pub modules: Vec<String>,
}

/// `[update]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Update {
    /// The update repository, an `http://` URL (indexes and bundles are signed, so the
    /// transport needs no trust of its own).
    pub repository: String,
    /// The channel to follow ([`crust_format::repo::check_channel`]'s names).
    #[serde(default = "default_channel")]
    pub channel: String,
    /// Seconds between checks (a tenth of it is added at random), in [`UPDATE_INTERVAL`].
    #[serde(default = "default_interval")]
    pub interval: u64,
    /// When an installed update may reboot the host: `"now"`, or a daily UTC window
    /// `"HH:MM-HH:MM"`.
    #[serde(default = "default_reboot")]
    pub reboot: String,
    /// Seconds a newly updated boot may take to become healthy (and to fetch a verified
    /// index) before it counts as failed, in [`HEALTH_TIMEOUT`].
    #[serde(default = "default_health_timeout")]
    pub health_timeout: u64,
}

/// `[fleet]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Fleet {
    /// etcd members, `http://host:port` (tried in turn).
    pub etcd: Vec<String>,
    /// The group whose hosts share reboot slots (the channel names' rule).
    #[serde(default = "default_group")]
    pub group: String,
    /// How many hosts of the group may be rebooting into an update or on trial at once.
    #[serde(default = "one")]
    pub max_rebooting: u32,
    /// Seconds a held slot survives without renewal (a host that dies loses it after
    /// this), in [`FLEET_LEASE`].
    #[serde(default = "default_lease")]
    pub lease: u64,
    /// A client certificate chain (PEM) for members that ask for one (mutual TLS).
    #[serde(default)]
    pub client_certificate: Option<String>,
    /// Its private key (PEM).
    #[serde(default)]
    pub client_key: Option<String>,
}

fn default_group() -> String {
    "default".into()
}

fn one() -> u32 {
    1
}

fn default_lease() -> u64 {
    900
}

/// Bounds of `fleet.lease`, in seconds.
pub const FLEET_LEASE: std::ops::RangeInclusive<u64> = 60..=86_400;
/// Bounds of `fleet.max-rebooting`.
pub const MAX_REBOOTING: std::ops::RangeInclusive<u32> = 1..=10_000;

/// Bounds of `update.interval`, in seconds: ten seconds to thirty days.
pub const UPDATE_INTERVAL: std::ops::RangeInclusive<u64> = 10..=2_592_000;
/// Bounds of `update.health-timeout`, in seconds: ten seconds to a day.
pub const HEALTH_TIMEOUT: std::ops::RangeInclusive<u64> = 10..=86_400;

/// Sysctls user-data may not set: each makes the kernel run a program named by path (or
/// write core files wherever it says), which would run code from outside the verified root.
pub const FORBIDDEN_SYSCTLS: [&str; 4] = [
    "kernel.core_pattern",
    "kernel.modprobe",
    "kernel.hotplug",
    "kernel.poweroff_cmd",
];

fn default_interval() -> u64 {
    3600
}

fn default_reboot() -> String {
    "now".into()
}

fn default_health_timeout() -> u64 {
    300
}

fn default_channel() -> String {
    "stable".into()
}

/// A sysctl value: TOML strings, integers and booleans are all written as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysctlValue(pub String);

impl<'de> Deserialize<'de> for SysctlValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = SysctlValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, an integer or a boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<SysctlValue, E> {
                Ok(SysctlValue(v.to_owned()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<SysctlValue, E> {
                Ok(SysctlValue(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<SysctlValue, E> {
                Ok(SysctlValue(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<SysctlValue, E> {
                Ok(SysctlValue(if v { "1" } else { "0" }.to_owned()))
            }
        }
        d.deserialize_any(V)
    }
}

/// Why user-data was refused: the field (dotted path, empty for the whole document), the
/// line when known, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaError {
    /// Dotted path of the offending field; empty when the document as a whole is refused.
    pub field: String,
    /// 1-based line in the document, when known.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl SchemaError {
    /// An error about `field` (no line).
    pub(crate) fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            line: None,
            message: message.into(),
        }
    }
}

impl fmt::Display for SchemaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.field.is_empty(), self.line) {
            (true, Some(line)) => write!(f, "line {line}: ")?,
            (false, Some(line)) => write!(f, "field {} (line {line}): ", self.field)?,
            (false, None) => write!(f, "field {}: ", self.field)?,
            (true, None) => {}
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for SchemaError {}

/// Parses and validates user-data text.
pub fn parse(text: &str) -> Result<HostConfig, SchemaError> {
    if let Some(message) = foreign_format(text) {
        return Err(SchemaError::new("", message));
    }
    let line_of = |span: Option<std::ops::Range<usize>>| {
        span.map(|s| {
            let before = &text.as_bytes()[..s.start.min(text.len())];
            before.iter().filter(|b| **b == b'\n').count() + 1
        })
    };
    let deserializer = toml::Deserializer::parse(text).map_err(|e| SchemaError {
        field: String::new(),
        line: line_of(e.span()),
        message: format!("not valid TOML: {}", e.message()),
    })?;
    let config: HostConfig = serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = inner.message().to_owned();
        // The path ends at the unknown key itself, or at its table.
        let field = match unknown_key(&message) {
            Some(key) if path == "." => key.to_owned(),
            Some(key) if path != key && !path.ends_with(&format!(".{key}")) => {
                format!("{path}.{key}")
            }
            _ if path == "." => String::new(),
            _ => path,
        };
        SchemaError {
            field,
            line: line_of(inner.span()),
            message,
        }
    })?;
    validate(&config)?;
    Ok(config)
}

/// `[state] disk`: a `/dev/disk/by-id/` name the init derives without udev, a kernel
/// name under `/dev/`, or a serial number.
fn check_state_disk(disk: &str) -> Result<(), String> {
    use crust_format::volume::{check_by_id, check_serial};
    if disk.starts_with("/dev/disk/") {
        check_by_id(disk).map(|_| ())
    } else if let Some(name) = disk.strip_prefix("/dev/") {
        let ok =
            !name.is_empty() && name.len() <= 32 && name.chars().all(|c| c.is_ascii_alphanumeric());
        if ok {
            Ok(())
        } else {
            Err(format!(
                "{disk:?} is not a disk's kernel name (such as /dev/vdb)"
            ))
        }
    } else {
        check_serial(disk)
    }
}

/// The key an "unknown field" error names.
fn unknown_key(message: &str) -> Option<&str> {
    message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split('`').next())
}

/// Formats Crust does not take, recognised so the message can say what it does take.
fn foreign_format(text: &str) -> Option<String> {
    const ACCEPTED: &str = "Crust reads TOML host configuration starting with `version = 1` \
                            (see docs/CONFIGURATION.md)";
    let first = text.trim_start_matches('\u{feff}').trim_start();
    if first.starts_with("#cloud-config") {
        Some(format!(
            "this is cloud-init's #cloud-config, which Crust does not run; {ACCEPTED}"
        ))
    } else if first.starts_with("#!") {
        Some(format!(
            "this is a script; Crust runs no scripts from user-data. {ACCEPTED}"
        ))
    } else if first.starts_with("Content-Type: multipart") || first.starts_with("MIME-Version") {
        Some(format!("this is a MIME multi-part archive; {ACCEPTED}"))
    } else {
        None
    }
}

/// Checks what types alone do not.
fn validate(c: &HostConfig) -> Result<(), SchemaError> {
    if c.version != VERSION {
        return Err(SchemaError::new(
            "version",
            format!(
                "this host understands version {VERSION}, the user-data is version {}",
                c.version
            ),
        ));
    }
    if let Some(name) = &c.hostname {
        check_hostname(name).map_err(|m| SchemaError::new("hostname", m))?;
    }
    if let Some(state) = &c.state {
        check_state_disk(&state.disk).map_err(|m| SchemaError::new("state.disk", m))?;
    }
    if c.network.dhcp_timeout > MAX_DHCP_TIMEOUT {
        return Err(SchemaError::new(
            "network.dhcp_timeout",
            format!(
                "{} s is more than {MAX_DHCP_TIMEOUT} s",
                c.network.dhcp_timeout
            ),
        ));
    }
    for (name, iface) in &c.network.interfaces {
        let field = |f: &str| format!("network.interfaces.{name}{f}");
        check_interface_name(name).map_err(|m| SchemaError::new(field(""), m))?;
        if iface.dhcp == Some(true) && iface.address.is_some() {
            return Err(SchemaError::new(
                field(".address"),
                "a static address and `dhcp = true` exclude each other",
            ));
        }
        if iface.gateway.is_some() && iface.address.is_none() {
            return Err(SchemaError::new(
                field(".gateway"),
                "a gateway needs a static `address` (DHCP brings its own)",
            ));
        }
        if let (Some(gw), Some(addr)) = (iface.gateway, iface.address)
            && !same_subnet(gw, addr)
        {
            return Err(SchemaError::new(
                field(".gateway"),
                format!("{gw} is not in {addr}'s subnet"),
            ));
        }
        if iface.mtu.is_some_and(|m| m < 68) {
            return Err(SchemaError::new(
                field(".mtu"),
                "the smallest IPv4 MTU is 68",
            ));
        }
    }
    for name in c.network.hosts.keys() {
        check_hostname(name)
            .map_err(|m| SchemaError::new(format!("network.hosts.\"{name}\""), m))?;
    }
    if let Some(proxy) = &c.network.proxy {
        for (field, url) in [("http", &proxy.http), ("https", &proxy.https)] {
            if let Some(url) = url {
                let parsed = crate::http::Url::parse(url)
                    .map_err(|m| SchemaError::new(format!("network.proxy.{field}"), m))?;
                if parsed.scheme != crate::http::Scheme::Http {
                    return Err(SchemaError::new(
                        format!("network.proxy.{field}"),
                        format!(
                            "{url:?}: a proxy is reached over http:// (https goes through it in a tunnel)"
                        ),
                    ));
                }
            }
        }
        for (i, entry) in proxy.no_proxy.iter().enumerate() {
            if entry.is_empty() || entry.contains(|ch: char| ch.is_whitespace() || ch == '/') {
                return Err(SchemaError::new(
                    format!("network.proxy.no-proxy[{i}]"),
                    format!("{entry:?} is not a host, .domain, address or *"),
                ));
            }
        }
    }
    if c.network.ca_certificates.len() > 64 {
        return Err(SchemaError::new(
            "network.ca-certificates",
            "at most 64 certificate authorities",
        ));
    }
    for (i, pem) in c.network.ca_certificates.iter().enumerate() {
        check_pem(pem).map_err(|m| SchemaError::new(format!("network.ca-certificates[{i}]"), m))?;
        crate::http::tls::config(&crate::http::tls::Trust {
            ca_certificates: vec![pem.clone()],
            client: None,
        })
        .map_err(|m| SchemaError::new(format!("network.ca-certificates[{i}]"), m))?;
    }
    if !TIME_INTERVAL.contains(&c.time.interval) {
        return Err(SchemaError::new(
            "time.interval",
            format!(
                "{} s is outside {}..={} s",
                c.time.interval,
                TIME_INTERVAL.start(),
                TIME_INTERVAL.end()
            ),
        ));
    }
    for (i, server) in c.time.servers.iter().enumerate() {
        parse_server(server).map_err(|m| SchemaError::new(format!("time.servers[{i}]"), m))?;
    }
    for key in c.sysctl.keys() {
        check_sysctl(key).map_err(|m| SchemaError::new(format!("sysctl.\"{key}\""), m))?;
        let dotted = key.replace('/', ".");
        if FORBIDDEN_SYSCTLS.contains(&dotted.as_str()) {
            return Err(SchemaError::new(
                format!("sysctl.\"{key}\""),
                "user-data may not set it: the kernel would run a program (or write files) \
                 where it says, outside the verified root",
            ));
        }
    }
    for (key, value) in &c.sysctl {
        if value.0.contains(['\n', '\0']) {
            return Err(SchemaError::new(
                format!("sysctl.\"{key}\""),
                "a value is one line",
            ));
        }
    }
    for (i, module) in c.kernel.modules.iter().enumerate() {
        if module.is_empty()
            || module.len() > 56
            || !module
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '-')
        {
            return Err(SchemaError::new(
                format!("kernel.modules[{i}]"),
                format!("{module:?} is not a module name (letters, digits, `_`, `-`)"),
            ));
        }
    }
    if let Some(update) = &c.update {
        check_url(&update.repository).map_err(|m| SchemaError::new("update.repository", m))?;
        crate::http::Url::parse(&update.repository)
            .map_err(|m| SchemaError::new("update.repository", m))?;
        for (field, value, range) in [
            ("update.interval", update.interval, &UPDATE_INTERVAL),
            (
                "update.health-timeout",
                update.health_timeout,
                &HEALTH_TIMEOUT,
            ),
        ] {
            if !range.contains(&value) {
                return Err(SchemaError::new(
                    field,
                    format!("{value} s is outside {}..={} s", range.start(), range.end()),
                ));
            }
        }
        if crate::update::RebootWindow::parse(&update.reboot).is_none() {
            return Err(SchemaError::new(
                "update.reboot",
                format!(
                    "{:?} is not \"now\" or a UTC window \"HH:MM-HH:MM\"",
                    update.reboot
                ),
            ));
        }
        crust_format::repo::check_channel(&update.channel)
            .map_err(|m| SchemaError::new("update.channel", m))?;
    }
    if let Some(fleet) = &c.fleet {
        validate_fleet(fleet, c.update.is_some())?;
    }
    super::services::validate(&c.service)?;
    super::volumes::validate(&c.volume)?;
    if let Some(metrics) = &c.metrics {
        metrics.validate()?;
    }
    if let Some(logs) = &c.logs {
        logs.validate()?;
    }
    Ok(())
}

fn validate_fleet(fleet: &Fleet, updates: bool) -> Result<(), SchemaError> {
    if !updates {
        return Err(SchemaError::new(
            "fleet",
            "a fleet coordinates update reboots: it needs [update] too",
        ));
    }
    if fleet.etcd.is_empty() || fleet.etcd.len() > 16 {
        return Err(SchemaError::new(
            "fleet.etcd",
            "name 1 to 16 etcd members, such as [\"http://10.0.0.5:2379\"]",
        ));
    }
    for (i, url) in fleet.etcd.iter().enumerate() {
        crate::http::Url::parse(url)
            .map_err(|m| SchemaError::new(format!("fleet.etcd[{i}]"), m))?;
    }
    if fleet.client_certificate.is_some() != fleet.client_key.is_some() {
        return Err(SchemaError::new(
            "fleet.client-key",
            "a client certificate and its key come together",
        ));
    }
    for (field, pem) in [
        ("fleet.client-certificate", &fleet.client_certificate),
        ("fleet.client-key", &fleet.client_key),
    ] {
        if let Some(pem) = pem {
            check_pem(pem).map_err(|m| SchemaError::new(field, m))?;
        }
    }
    crust_format::repo::check_channel(&fleet.group)
        .map_err(|m| SchemaError::new("fleet.group", m.replace("channel name", "group name")))?;
    if !MAX_REBOOTING.contains(&fleet.max_rebooting) {
        return Err(SchemaError::new(
            "fleet.max-rebooting",
            format!(
                "{} is outside {}..={}",
                fleet.max_rebooting,
                MAX_REBOOTING.start(),
                MAX_REBOOTING.end()
            ),
        ));
    }
    if !FLEET_LEASE.contains(&fleet.lease) {
        return Err(SchemaError::new(
            "fleet.lease",
            format!(
                "{} s is outside {}..={} s",
                fleet.lease,
                FLEET_LEASE.start(),
                FLEET_LEASE.end()
            ),
        ));
    }
    Ok(())
}

/// PEM text: a `-----BEGIN` line, within 64 KiB.
fn check_pem(pem: &str) -> Result<(), String> {
    if pem.len() > 64 << 10 || !pem.trim_start().starts_with("-----BEGIN ") {
        return Err("not PEM (it starts with -----BEGIN …; at most 64 KiB)".into());
    }
    Ok(())
}

fn same_subnet(ip: Ipv4Addr, net: Cidr) -> bool {
    let mask = u32::MAX
        .checked_shl(32 - u32::from(net.prefix_len))
        .unwrap_or(0);
    u32::from(ip) & mask == u32::from(net.address) & mask
}

/// RFC 1123 host names: at most 64 characters (the kernel's limit), labels of letters,
/// digits and inner hyphens.
pub fn check_hostname(name: &str) -> Result<(), String> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if name.is_empty() || name.len() > 64 || !name.split('.').all(label_ok) {
        return Err(format!(
            "{name:?} is not a host name (at most 64 characters; dot-separated labels of \
             letters, digits and inner `-`)"
        ));
    }
    Ok(())
}

fn check_interface_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 15
        || name == "."
        || name == ".."
        || name.contains(['/', ':'])
        || name.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "{name:?} is not an interface name (1-15 characters, no `/`, `:` or spaces)"
        ));
    }
    Ok(())
}

fn check_sysctl(key: &str) -> Result<(), String> {
    let ok = !key.is_empty()
        && !key.starts_with(['.', '/'])
        && key
            .split(['.', '/'])
            .all(|part| !part.is_empty() && part != "..")
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '/' | '_' | '-' | '*'))
        && !key.contains('*');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{key:?} is not a sysctl name such as \"net.ipv4.ip_forward\""
        ))
    }
}

fn check_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| format!("{url:?} is not an http:// or https:// URL"))?;
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty() || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{url:?} has no host, or holds spaces"));
    }
    Ok(())
}

/// A time server as written: a host (name or address) and a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerName {
    /// Host name or IP address (without brackets).
    pub host: String,
    /// UDP port.
    pub port: u16,
}

impl fmt::Display for ServerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// The NTP port.
pub const NTP_PORT: u16 = 123;

/// Parses `host`, `host:port`, an IPv4 address, `[v6]` or `[v6]:port`.
pub fn parse_server(text: &str) -> Result<ServerName, String> {
    let (host, port) = parse_host_port(text, NTP_PORT, "a time server")?;
    Ok(ServerName { host, port })
}

/// Parses `host`, `host:port`, an IPv4 address, `[v6]` or `[v6]:port` (`default_port`
/// when none is given); an error says the text is not `what`.
pub fn parse_host_port(text: &str, default_port: u16, what: &str) -> Result<(String, u16), String> {
    let bad = || format!("{text:?} is not {what} (host, host:port, address, or [IPv6]:port)");
    let port = |p: &str| p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(bad);
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(bad)?;
        host.parse::<std::net::Ipv6Addr>().map_err(|_| bad())?;
        match after.strip_prefix(':') {
            Some(p) => (host, port(p)?),
            None if after.is_empty() => (host, default_port),
            None => return Err(bad()),
        }
    } else if text.parse::<std::net::Ipv6Addr>().is_ok() {
        (text, default_port)
    } else {
        match text.split_once(':') {
            Some((h, p)) => (h, port(p)?),
            None => (text, default_port),
        }
    };
    if !host.contains(':') && host.parse::<Ipv4Addr>().is_err() {
        check_hostname(host).map_err(|_| bad())?;
    }
    Ok((host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> SchemaError {
        parse(text).unwrap_err()
    }

    #[test]
    fn a_full_configuration_parses() {
        let c = parse(
            r#"
version = 1
hostname = "web-1.example.com"

[network]
dhcp = false
dhcp_timeout = 5

[network.interfaces.eth0]
address = "192.0.2.10/24"
gateway = "192.0.2.1"
dns = ["192.0.2.53", "2001:db8::53"]
mtu = 9000

[network.interfaces.eth1]
dhcp = true

[time]
servers = ["10.0.2.2:1123", "time.example.com", "[2001:db8::123]"]
interval = 64

[sysctl]
"net.ipv4.ip_forward" = 1
"vm.swappiness" = "10"
"net.ipv6.conf.all.forwarding" = true

[kernel]
modules = ["wireguard", "br_netfilter"]

[update]
repository = "http://updates.example.com/crust"
channel = "beta"
"#,
        )
        .unwrap();
        assert_eq!(c.hostname.as_deref(), Some("web-1.example.com"));
        let eth0 = c.network.interface("eth0");
        assert!(!eth0.uses_dhcp());
        assert_eq!(eth0.address.unwrap().to_string(), "192.0.2.10/24");
        assert_eq!(eth0.mtu, Some(9000));
        assert!(c.network.interface("eth1").uses_dhcp());
        assert!(
            !c.network.interface("eth2").uses_dhcp(),
            "dhcp = false for the rest"
        );
        assert_eq!(c.network.dhcp_timeout, 5);
        assert_eq!(c.time.interval, 64);
        assert_eq!(c.sysctl["net.ipv4.ip_forward"].0, "1");
        assert_eq!(c.sysctl["net.ipv6.conf.all.forwarding"].0, "1");
        assert_eq!(c.kernel.modules, ["wireguard", "br_netfilter"]);
        assert_eq!(c.update.unwrap().channel, "beta");
        assert_eq!(
            parse_server(&c.time.servers[0]).unwrap(),
            ServerName {
                host: "10.0.2.2".into(),
                port: 1123
            }
        );
    }

    #[test]
    fn the_smallest_configuration_is_the_version() {
        let c = parse("version = 1\n").unwrap();
        assert_eq!(c, HostConfig::default());
        assert!(c.network.interface("eth0").uses_dhcp());
    }

    #[test]
    fn unknown_keys_are_named_with_their_path_and_line() {
        let e = err("version = 1\nhostnme = \"x\"\n");
        assert_eq!(e.field, "hostnme");
        assert_eq!(e.line, Some(2));
        assert!(e.message.contains("unknown field"), "{e}");
        let e = err("version = 1\n[network.interfaces.eth0]\nadress = \"10.0.0.1/8\"\n");
        assert_eq!(e.field, "network.interfaces.eth0.adress");
        assert_eq!(e.line, Some(3));
        let e = err("version = 1\n[[service]]\nnme = \"x\"\n");
        assert_eq!(e.field, "service[0].nme");
    }

    #[test]
    fn wrong_types_name_the_field() {
        let e = err("version = 1\n[network.interfaces.eth0]\nmtu = \"big\"\n");
        assert_eq!(e.field, "network.interfaces.eth0.mtu");
        assert_eq!(e.line, Some(3));
        assert!(
            e.to_string()
                .starts_with("field network.interfaces.eth0.mtu (line 3): ")
        );
        let e = err("version = 1\nhostname = 7\n");
        assert_eq!(e.field, "hostname");
        let e = err("version = 1\n[time]\nservers = \"pool.ntp.org\"\n");
        assert_eq!(e.field, "time.servers");
        let e = err("version = 1\n[network.interfaces.eth0]\ngateway = \"10.0.0.256\"\n");
        assert_eq!(e.field, "network.interfaces.eth0.gateway");
        let e = err("version = 1\n[network.interfaces.eth0]\naddress = \"10.0.0.5\"\n");
        assert_eq!(e.field, "network.interfaces.eth0.address");
        assert!(e.message.contains("prefix length"), "{e}");
    }

    #[test]
    fn invalid_toml_names_the_line() {
        let e = err("version = 1\nhostname = \"unterminated\n");
        assert_eq!(e.field, "");
        assert_eq!(e.line, Some(2));
        assert!(e.message.starts_with("not valid TOML"), "{e}");
    }

    #[test]
    fn values_are_validated() {
        for (text, field) in [
            ("version = 2\n", "version"),
            ("hostname = \"\"\nversion = 1\n", "hostname"),
            ("version = 1\nhostname = \"bad_name\"\n", "hostname"),
            ("version = 1\nhostname = \"-x\"\n", "hostname"),
            (
                "version = 1\n[network]\ndhcp_timeout = 301\n",
                "network.dhcp_timeout",
            ),
            (
                "version = 1\n[network.interfaces.eth0]\ndhcp = true\naddress = \"10.0.0.2/8\"\n",
                "network.interfaces.eth0.address",
            ),
            (
                "version = 1\n[network.interfaces.eth0]\ngateway = \"10.0.0.1\"\n",
                "network.interfaces.eth0.gateway",
            ),
            (
                "version = 1\n[network.interfaces.eth0]\naddress = \"10.0.0.2/24\"\ngateway = \"10.0.1.1\"\n",
                "network.interfaces.eth0.gateway",
            ),
            (
                "version = 1\n[network.interfaces.eth0]\nmtu = 40\n",
                "network.interfaces.eth0.mtu",
            ),
            (
                "version = 1\n[network.interfaces.\"a/b\"]\n",
                "network.interfaces.a/b",
            ),
            (
                "version = 1\n[time]\nservers = [\"ok\", \"bad host\"]\n",
                "time.servers[1]",
            ),
            (
                "version = 1\n[time]\nservers = [\"x:0\"]\n",
                "time.servers[0]",
            ),
            ("version = 1\n[time]\ninterval = 15\n", "time.interval"),
            ("version = 1\n[time]\ninterval = 131073\n", "time.interval"),
            (
                "version = 1\n[sysctl]\n\"../../etc\" = 1\n",
                "sysctl.\"../../etc\"",
            ),
            (
                "version = 1\n[kernel]\nmodules = [\"a/b\"]\n",
                "kernel.modules[0]",
            ),
            (
                "version = 1\n[update]\nrepository = \"ftp://x\"\n",
                "update.repository",
            ),
            (
                "version = 1\n[update]\nrepository = \"http://x\"\nchannel = \"Beta!\"\n",
                "update.channel",
            ),
            // Names the repository never publishes (one rule for both sides).
            (
                "version = 1\n[update]\nrepository = \"http://x\"\nchannel = \"beta_1.x\"\n",
                "update.channel",
            ),
            (
                "version = 1\n[update]\nrepository = \"http://x\"\ninterval = 9\n",
                "update.interval",
            ),
            (
                "version = 1\n[update]\nrepository = \"http://x\"\ninterval = 9223372036854775807\n",
                "update.interval",
            ),
            (
                "version = 1\n[update]\nrepository = \"http://x\"\nhealth-timeout = 0\n",
                "update.health-timeout",
            ),
            (
                "version = 1\n[update]\nrepository = \"http://x\"\nhealth-timeout = 86401\n",
                "update.health-timeout",
            ),
            (
                "version = 1\n[fleet]\netcd = [\"http://e:2379\"]\n",
                "fleet",
            ),
            (
                "version = 1\n[update]\nrepository = \"http://x\"\n[fleet]\netcd = []\n",
                "fleet.etcd",
            ),
            (
                "version = 1\n[update]\nrepository = \"http://x\"\n[fleet]\netcd = [\"ftp://e\"]\n",
                "fleet.etcd[0]",
            ),
            (
                "version = 1\n[update]\nrepository = \"http://x\"\n[fleet]\netcd = [\"http://e:2379\"]\nmax-rebooting = 0\n",
                "fleet.max-rebooting",
            ),
            (
                "version = 1\n[update]\nrepository = \"http://x\"\n[fleet]\netcd = [\"http://e:2379\"]\nlease = 10\n",
                "fleet.lease",
            ),
            (
                "version = 1\n[update]\nrepository = \"http://x\"\n[fleet]\netcd = [\"http://e:2379\"]\ngroup = \"Web\"\n",
                "fleet.group",
            ),
            (
                "version = 1\n[sysctl]\n\"kernel.core_pattern\" = \"|/var/x\"\n",
                "sysctl.\"kernel.core_pattern\"",
            ),
            (
                "version = 1\n[sysctl]\n\"kernel/modprobe\" = \"/var/x\"\n",
                "sysctl.\"kernel/modprobe\"",
            ),
        ] {
            assert_eq!(err(text).field, field, "{text}");
        }
    }

    #[test]
    fn a_state_disk_is_a_by_id_name_a_kernel_name_or_a_serial() {
        for ok in [
            "/dev/disk/by-id/virtio-crust-state",
            "/dev/vdb",
            "/dev/nvme1n1",
            "S4EWNX0R123456",
        ] {
            let c = parse(&format!("version = 1\n[state]\ndisk = \"{ok}\"\n")).unwrap();
            assert_eq!(c.state.unwrap().disk, ok);
        }
        for bad in ["/dev/disk/by-uuid/x", "/dev/", "/dev/vdb/../sda", ""] {
            let e = err(&format!("version = 1\n[state]\ndisk = \"{bad}\"\n"));
            assert_eq!(e.field, "state.disk", "{bad}: {e}");
        }
        assert_eq!(
            err("version = 1\n[state]\ndisk = \"vdb\"\nsize = 1\n").field,
            "state.size"
        );
    }

    #[test]
    fn a_missing_version_is_named() {
        let e = err("hostname = \"a\"\n");
        assert!(e.message.contains("missing field `version`"), "{e}");
    }

    #[test]
    fn other_formats_are_told_what_crust_reads() {
        for text in [
            "#cloud-config\nhostname: x\n",
            "\u{feff}#cloud-config\n",
            "#!/bin/sh\necho hi\n",
        ] {
            let e = err(text);
            assert!(e.message.contains("version = 1"), "{e}");
            assert!(e.message.contains("CONFIGURATION.md"), "{e}");
        }
        assert!(err("#cloud-config\n").message.contains("#cloud-config"));
    }

    #[test]
    fn servers_parse_in_every_form() {
        let p = |s: &str| parse_server(s).map(|n| n.to_string());
        assert_eq!(p("pool.ntp.org").unwrap(), "pool.ntp.org:123");
        assert_eq!(p("10.0.2.2:1123").unwrap(), "10.0.2.2:1123");
        assert_eq!(p("2001:db8::1").unwrap(), "[2001:db8::1]:123");
        assert_eq!(p("[2001:db8::1]:10123").unwrap(), "[2001:db8::1]:10123");
        for bad in ["", "a b", "x:", "x:99999", "[::1", "[::1]x", "under_score"] {
            assert!(p(bad).is_err(), "{bad}");
        }
    }
}
