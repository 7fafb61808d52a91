//! Observability: what the init hands the observability agent, and what the init publishes
//! for it (docs/FORMAT.md §14).
//!
//! The agent (`/usr/libexec/crust/observe` in the root, a static program of its own that the
//! init starts and supervises) runs in two modes: the Prometheus **exporter** and the syslog
//! **shipper**. The init tells each mode its settings in a `key=value` file under
//! [`RUN_DIR`] (mode 0600: it may name a bearer token and private keys, which are files
//! beside it), and publishes its own facts (stage-2 phase times, services, the update agent,
//! the clock, dm-verity, the boot count) as `key=value` files under [`STATUS_DIR`], each
//! replaced atomically (written under a temporary name, then renamed) when it changes. The
//! exporter reads those files on each scrape and never asks PID 1 anything.
//!
//! The shipper reads [`Record`]s, one per line, from its standard input: a pipe the init
//! writes every console line and every service's output to, without ever blocking.
//!
//! Everything here is text in, text out: no I/O.

use std::fmt;
use std::net::IpAddr;

/// The agent program in the root (no leading `/`, as in trees).
pub const AGENT_PATH: &str = "usr/libexec/crust/observe";
/// The agent program on a running host.
pub const AGENT: &str = "/usr/libexec/crust/observe";
/// The folder of the agent's settings (mode 0700, on the `/run` tmpfs).
pub const RUN_DIR: &str = "/run/crust/observe";
/// The exporter's settings file name in [`RUN_DIR`].
pub const METRICS_SETTINGS: &str = "metrics";
/// The shipper's settings file name in [`RUN_DIR`].
pub const LOGS_SETTINGS: &str = "logs";
/// The folder the init publishes its facts in (mode 0755; the files 0644).
pub const STATUS_DIR: &str = "/run/crust/status";
/// The largest status or settings file a reader takes.
pub const MAX_FILE: u64 = 256 * 1024;
/// The largest record on the shipper's pipe, newline included: `PIPE_BUF`, so that every
/// record is written whole or not at all.
pub const MAX_RECORD: usize = 4096;

/// The status files in [`STATUS_DIR`].
pub mod status {
    /// `<phase>=<seconds>`: the monotonic time each stage-2 phase line was printed at
    /// (stage 1's are `phase.<name>` in `/run/crust/boot`).
    pub const PHASES: &str = "phases";
    /// `<service>.<key>=<value>`: `up`, `state`, `starts`, `restarts`, `last-exit`
    /// (`code:N` or `signal:N`), `last-exit-time` (Unix seconds), `health` (`pass`, `fail`,
    /// `unknown`; absent without a check).
    pub const SERVICES: &str = "services";
    /// The update agent: `configured`, `state`, `trial`, `checks`, `failures`, `last-check`
    /// (Unix seconds), `last-check-ok`, `last-result`, `rollbacks`.
    pub const UPDATE: &str = "update";
    /// The clock: `servers`, `synced`, `answering`, `offset` (seconds), `last-sync` (Unix
    /// seconds), `server`.
    pub const CLOCK: &str = "clock";
    /// dm-verity: `errors` (corruption reports heard this boot), `corrupted` (0/1).
    pub const VERITY: &str = "verity";
    /// The boot: `count` (boots of this machine's state partition, this one included),
    /// `persistent` (0 when `/var` is a tmpfs).
    pub const BOOT: &str = "boot";
    /// The log pipe, init's side: `dropped` (lines it could not hand to the shipper).
    pub const LOGS: &str = "logs";
}

pub use crate::kv::KeyValues;

/// The exporter's settings ([`METRICS_SETTINGS`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsSettings {
    /// The address to listen on.
    pub address: IpAddr,
    /// The TCP port.
    pub port: u16,
    /// TLS: the certificate chain and key files (PEM); `None` serves plain HTTP.
    pub tls: Option<ServerTls>,
    /// A bearer token every request must carry (`Authorization: Bearer …`).
    pub bearer_token: Option<String>,
}

/// The exporter's TLS files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTls {
    /// The certificate chain (PEM), leaf first.
    pub certificate: String,
    /// The private key (PEM).
    pub key: String,
    /// CA certificates (PEM) that client certificates must chain to (mutual TLS).
    pub client_ca: Option<String>,
}

impl MetricsSettings {
    /// The settings file's text.
    pub fn to_text(&self) -> String {
        let mut kv = KeyValues::default();
        kv.set("address", self.address).set("port", self.port);
        if let Some(tls) = &self.tls {
            kv.set("certificate", &tls.certificate).set("key", &tls.key);
            if let Some(ca) = &tls.client_ca {
                kv.set("client-ca", ca);
            }
        }
        if let Some(token) = &self.bearer_token {
            kv.set("bearer-token", token);
        }
        kv.to_text()
    }

    /// Parses the settings file's text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let kv = KeyValues::parse(text);
        let address = need(&kv, "address")?
            .parse()
            .map_err(|_| "address is not an IP address".to_owned())?;
        let port = need(&kv, "port")?
            .parse()
            .map_err(|_| "port is not a port number".to_owned())?;
        let tls = match (kv.get("certificate"), kv.get("key")) {
            (Some(certificate), Some(key)) => Some(ServerTls {
                certificate: certificate.to_owned(),
                key: key.to_owned(),
                client_ca: kv.get("client-ca").map(str::to_owned),
            }),
            (None, None) => None,
            _ => return Err("certificate and key go together".into()),
        };
        Ok(Self {
            address,
            port,
            tls,
            bearer_token: kv.get("bearer-token").map(str::to_owned),
        })
    }
}

/// How the shipper reaches its collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// RFC 5424 messages over TCP, octet-counted (RFC 6587).
    Tcp,
    /// One RFC 5424 message per UDP datagram (RFC 5426).
    Udp,
    /// Octet-counted over TLS (RFC 5425).
    Tls,
}

impl Protocol {
    /// The name in user-data and settings.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Tls => "tls",
        }
    }

    /// The protocol of that name.
    pub fn from_name(name: &str) -> Option<Self> {
        [Protocol::Tcp, Protocol::Udp, Protocol::Tls]
            .into_iter()
            .find(|p| p.as_str() == name)
    }

    /// The collector port when none is given: 514 (TCP and UDP syslog), 6514 (RFC 5425).
    pub fn default_port(self) -> u16 {
        match self {
            Protocol::Tcp | Protocol::Udp => 514,
            Protocol::Tls => 6514,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The shipper's settings ([`LOGS_SETTINGS`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogsSettings {
    /// The collector's host name or address.
    pub host: String,
    /// Its port.
    pub port: u16,
    /// How to reach it.
    pub protocol: Protocol,
    /// TLS: CA certificates (PEM file) the collector's certificate must chain to.
    pub ca: Option<String>,
    /// TLS: the name the collector's certificate must carry (default: `host`).
    pub server_name: Option<String>,
    /// TLS: a client certificate chain and key (PEM files), for collectors that ask.
    pub client: Option<(String, String)>,
    /// Bytes of messages kept while the collector is unreachable.
    pub buffer: u64,
    /// Whether kernel messages (`/dev/kmsg`) go too.
    pub kernel: bool,
}

impl LogsSettings {
    /// The settings file's text.
    pub fn to_text(&self) -> String {
        let mut kv = KeyValues::default();
        kv.set("protocol", self.protocol)
            .set("host", &self.host)
            .set("port", self.port)
            .set("buffer", self.buffer)
            .set("kernel", u8::from(self.kernel));
        if let Some(ca) = &self.ca {
            kv.set("ca", ca);
        }
        if let Some(name) = &self.server_name {
            kv.set("server-name", name);
        }
        if let Some((certificate, key)) = &self.client {
            kv.set("certificate", certificate).set("key", key);
        }
        kv.to_text()
    }

    /// Parses the settings file's text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let kv = KeyValues::parse(text);
        let protocol = Protocol::from_name(need(&kv, "protocol")?)
            .ok_or_else(|| "protocol is not tcp, udp or tls".to_owned())?;
        let client = match (kv.get("certificate"), kv.get("key")) {
            (Some(c), Some(k)) => Some((c.to_owned(), k.to_owned())),
            (None, None) => None,
            _ => return Err("certificate and key go together".into()),
        };
        Ok(Self {
            host: need(&kv, "host")?.to_owned(),
            port: need(&kv, "port")?
                .parse()
                .map_err(|_| "port is not a port number".to_owned())?,
            protocol,
            ca: kv.get("ca").map(str::to_owned),
            server_name: kv.get("server-name").map(str::to_owned),
            client,
            buffer: need(&kv, "buffer")?
                .parse()
                .map_err(|_| "buffer is not a number of bytes".to_owned())?,
            kernel: kv.get("kernel") != Some("0"),
        })
    }
}

fn need<'a>(kv: &'a KeyValues, key: &str) -> Result<&'a str, String> {
    kv.get(key).ok_or_else(|| format!("no {key}"))
}

/// Syslog severities (RFC 5424 §6.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// 0: the system is unusable.
    Emergency = 0,
    /// 1: action must be taken immediately.
    Alert = 1,
    /// 2: critical conditions.
    Critical = 2,
    /// 3: error conditions (the init's `error` lines).
    Error = 3,
    /// 4: warning conditions (the init's `warning` lines).
    Warning = 4,
    /// 5: normal but significant.
    Notice = 5,
    /// 6: informational (phase lines, services' output).
    Info = 6,
    /// 7: debug-level messages.
    Debug = 7,
}

impl Severity {
    /// The severity of a number's low three bits.
    pub fn from_code(code: u8) -> Self {
        match code & 7 {
            0 => Severity::Emergency,
            1 => Severity::Alert,
            2 => Severity::Critical,
            3 => Severity::Error,
            4 => Severity::Warning,
            5 => Severity::Notice,
            6 => Severity::Info,
            _ => Severity::Debug,
        }
    }
}

/// Syslog facilities Crust uses (RFC 5424 §6.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Facility {
    /// 0: kernel messages (`/dev/kmsg`).
    Kernel = 0,
    /// 1: user-level messages: the services' output.
    User = 1,
    /// 3: system daemons: the init's own lines.
    Daemon = 3,
}

impl Facility {
    /// The facility of a priority value's high bits, if Crust ships that facility.
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(Facility::Kernel),
            1 => Some(Facility::User),
            3 => Some(Facility::Daemon),
            _ => None,
        }
    }
}

/// One line on the shipper's pipe: `<monotonic µs> <PRI> <APP-NAME> <MSGID> <MSG>\n`.
///
/// The monotonic time is `CLOCK_MONOTONIC` when the line was made (the clock of the
/// console's `[seconds]`); the shipper turns it into a wall-clock time when it sends the
/// message, so lines that waited in a buffer keep the time they were made at, on the
/// clock as it is set then. APP-NAME and MSGID are printable ASCII without spaces (`-` for
/// none), MSG one line of UTF-8.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// `CLOCK_MONOTONIC` in microseconds when the line was made.
    pub monotonic_us: u64,
    /// Facility.
    pub facility: Facility,
    /// Severity.
    pub severity: Severity,
    /// RFC 5424 APP-NAME: `crust`, a service's name, `kernel`.
    pub app: String,
    /// RFC 5424 MSGID: the phase or the init's part (`ready`, `update`, `clock`); `-`.
    pub msgid: String,
    /// The message.
    pub msg: String,
}

/// Keeps what RFC 5424 allows in APP-NAME (48) and MSGID (32): printable ASCII, no space.
pub fn header_field(text: &str, max: usize) -> String {
    let field: String = text
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(max)
        .collect();
    if field.is_empty() { "-".into() } else { field }
}

impl Record {
    /// The line for the pipe, newline included, at most [`MAX_RECORD`] bytes (the message
    /// is cut at a character boundary if need be).
    pub fn to_line(&self) -> String {
        let head = format!(
            "{} {} {} {} ",
            self.monotonic_us,
            (self.facility as u8) * 8 + self.severity as u8,
            header_field(&self.app, 48),
            header_field(&self.msgid, 32)
        );
        let room = MAX_RECORD.saturating_sub(head.len() + 1);
        let mut msg: String = self
            .msg
            .chars()
            .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
            .collect();
        if msg.len() > room {
            let mut cut = room;
            while !msg.is_char_boundary(cut) {
                cut -= 1;
            }
            msg.truncate(cut);
        }
        format!("{head}{msg}\n")
    }

    /// Parses a line of the pipe (without its newline).
    pub fn parse(line: &str) -> Option<Self> {
        let mut parts = line.splitn(5, ' ');
        let monotonic_us = parts.next()?.parse().ok()?;
        let pri: u8 = parts.next()?.parse().ok()?;
        let facility = Facility::from_code(pri / 8)?;
        let app = parts.next()?.to_owned();
        let msgid = parts.next()?.to_owned();
        let msg = parts.next().unwrap_or("").to_owned();
        Some(Self {
            monotonic_us,
            facility,
            severity: Severity::from_code(pri),
            app,
            msgid,
            msg,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_values_round_trip_on_one_line_each() {
        let mut kv = KeyValues::default();
        kv.set("web.up", 1)
            .set("web.health", "pass")
            .set("x", "a\nb");
        kv.set("web.up", 0);
        let text = kv.to_text();
        assert_eq!(text, "web.up=0\nweb.health=pass\nx=a b\n");
        let back = KeyValues::parse(&text);
        assert_eq!(back, kv);
        assert_eq!(back.parsed::<u32>("web.up"), Some(0));
        assert_eq!(back.parsed::<u32>("web.health"), None);
    }

    #[test]
    fn settings_round_trip() {
        let m = MetricsSettings {
            address: "0.0.0.0".parse().unwrap(),
            port: 9100,
            tls: Some(ServerTls {
                certificate: "/run/crust/observe/metrics.crt".into(),
                key: "/run/crust/observe/metrics.key".into(),
                client_ca: None,
            }),
            bearer_token: Some("s3cret-token-0123456789".into()),
        };
        assert_eq!(MetricsSettings::parse(&m.to_text()), Ok(m));
        let l = LogsSettings {
            host: "logs.example.com".into(),
            port: 6514,
            protocol: Protocol::Tls,
            ca: Some("/run/crust/observe/logs-ca.pem".into()),
            server_name: None,
            client: None,
            buffer: 1 << 20,
            kernel: true,
        };
        assert_eq!(LogsSettings::parse(&l.to_text()), Ok(l));
        assert!(MetricsSettings::parse("address=x\nport=1\n").is_err());
        assert!(LogsSettings::parse("protocol=smtp\nhost=x\nport=1\nbuffer=1\n").is_err());
    }

    #[test]
    fn records_round_trip_and_stay_within_pipe_buf() {
        let r = Record {
            monotonic_us: 4_233_120,
            facility: Facility::Daemon,
            severity: Severity::Warning,
            app: "crust".into(),
            msgid: "warning".into(),
            msg: "a b\nc".into(),
        };
        let line = r.to_line();
        assert_eq!(line, "4233120 28 crust warning a b c\n");
        let back = Record::parse(line.trim_end_matches('\n')).unwrap();
        assert_eq!(back.msg, "a b c");
        assert_eq!(
            (back.facility, back.severity),
            (Facility::Daemon, Severity::Warning)
        );
        let long = Record {
            msg: "é".repeat(5000),
            app: "a service name that is far too long for rfc 5424's app-name field".into(),
            ..r
        };
        let line = long.to_line();
        assert!(
            line.len() <= MAX_RECORD && line.ends_with('\n'),
            "{}",
            line.len()
        );
        let back = Record::parse(line.trim_end_matches('\n')).unwrap();
        assert_eq!(back.app.len(), 48);
        assert!(back.msg.chars().all(|c| c == 'é'));
        assert_eq!(Record::parse("x 1 a b c"), None);
        assert_eq!(
            Record::parse("1 200 a b c"),
            None,
            "facility 25 is not Crust's"
        );
    }
}
