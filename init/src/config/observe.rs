//! User-data's `[metrics]` and `[logs]` tables: the Prometheus endpoint and the syslog
//! collector (docs/CONFIGURATION.md). Both are off unless their table is there. The
//! observability agent does the work ([`crate::observe`]); here the tables are only read
//! and checked, like the rest of the schema: a mistake names its field and refuses the
//! user-data. Certificates, keys and tokens are never echoed in a message.

use std::net::{IpAddr, Ipv4Addr};

use crust_format::observe::Protocol;
use serde::Deserialize;

use super::schema::{SchemaError, check_hostname};

/// `[metrics]`: a Prometheus endpoint served by the observability agent.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Metrics {
    /// The address to listen on (`0.0.0.0`: every IPv4 address; `::` every address).
    #[serde(default = "any_address")]
    pub address: IpAddr,
    /// The TCP port.
    #[serde(default = "default_port")]
    pub port: u16,
    /// Serve over TLS with this certificate and key (and ask clients for certificates).
    #[serde(default)]
    pub tls: Option<MetricsTls>,
    /// A token every scrape must send as `Authorization: Bearer <token>` (needs TLS).
    #[serde(default)]
    pub bearer_token: Option<String>,
}

/// `[metrics.tls]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct MetricsTls {
    /// The certificate chain, PEM, leaf first.
    pub certificate: String,
    /// Its private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: String,
    /// CA certificates, PEM: clients must show a certificate that chains to one (mutual
    /// TLS).
    #[serde(default)]
    pub client_ca: Option<String>,
}

/// `[logs]`: a syslog collector that gets every console line, every service's output and
/// the kernel's messages.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Logs {
    /// `host`, `host:port`, `192.0.2.1:514`, `[2001:db8::1]:6514`.
    pub address: String,
    /// `tcp` (RFC 6587 octet counting), `udp` (RFC 5426) or `tls` (RFC 5425).
    #[serde(default = "default_protocol")]
    pub protocol: String,
    /// TLS: CA certificates (PEM) the collector's certificate must chain to.
    #[serde(default)]
    pub ca: Option<String>,
    /// TLS: the name the collector's certificate must carry (default: the address's host).
    #[serde(default)]
    pub server_name: Option<String>,
    /// TLS: a client certificate chain (PEM) for collectors that ask for one.
    #[serde(default)]
    pub certificate: Option<String>,
    /// TLS: the client certificate's key (PEM).
    #[serde(default)]
    pub key: Option<String>,
    /// Bytes of messages kept while the collector is unreachable, in [`BUFFER`].
    #[serde(default = "default_buffer")]
    pub buffer: u64,
    /// Also send the kernel's messages (`/dev/kmsg`).
    #[serde(default = "yes")]
    pub kernel: bool,
}

/// The metrics port when none is given (node_exporter's, which the node families share).
pub const DEFAULT_PORT: u16 = 9100;
/// Bounds of `logs.buffer`, in bytes.
pub const BUFFER: std::ops::RangeInclusive<u64> = 4096..=64 << 20;
/// Bounds of a bearer token's length.
pub const TOKEN_LEN: std::ops::RangeInclusive<usize> = 16..=512;
/// The largest PEM text taken.
pub const MAX_PEM: usize = 64 * 1024;

fn any_address() -> IpAddr {
    IpAddr::V4(Ipv4Addr::UNSPECIFIED)
}

fn default_port() -> u16 {
    DEFAULT_PORT
}

fn default_protocol() -> String {
    "tcp".into()
}

fn default_buffer() -> u64 {
    1 << 20
}

fn yes() -> bool {
    true
}

/// Checks PEM text of `kind` (`CERTIFICATE` or `PRIVATE KEY`) without echoing it.
fn check_pem(field: &str, text: &str, kind: &str) -> Result<(), SchemaError> {
    let ok = text.len() <= MAX_PEM
        && text.contains("-----BEGIN ")
        && text.lines().any(|l| {
            l.starts_with("-----BEGIN ") && l.trim_end().ends_with(&format!("{kind}-----"))
        });
    if ok {
        Ok(())
    } else {
        Err(SchemaError::new(
            field,
            format!(
                "not PEM text with a {kind} (at most {} KiB)",
                MAX_PEM / 1024
            ),
        ))
    }
}

impl Metrics {
    /// Checks what types alone do not.
    pub fn validate(&self) -> Result<(), SchemaError> {
        if self.port == 0 {
            return Err(SchemaError::new("metrics.port", "0 is not a port"));
        }
        if let Some(tls) = &self.tls {
            check_pem("metrics.tls.certificate", &tls.certificate, "CERTIFICATE")?;
            check_pem("metrics.tls.key", &tls.key, "PRIVATE KEY")?;
            if let Some(ca) = &tls.client_ca {
                check_pem("metrics.tls.client-ca", ca, "CERTIFICATE")?;
            }
        }
        if let Some(token) = &self.bearer_token {
            if !TOKEN_LEN.contains(&token.len()) || !token.chars().all(|c| c.is_ascii_graphic()) {
                return Err(SchemaError::new(
                    "metrics.bearer-token",
                    format!(
                        "a token is {}..={} visible ASCII characters",
                        TOKEN_LEN.start(),
                        TOKEN_LEN.end()
                    ),
                ));
            }
            if self.tls.is_none() {
                return Err(SchemaError::new(
                    "metrics.bearer-token",
                    "a bearer token needs [metrics.tls]: over plain HTTP anyone on the way \
                     could read it",
                ));
            }
        }
        Ok(())
    }
}

impl Logs {
    /// The protocol named.
    pub fn protocol(&self) -> Protocol {
        Protocol::from_name(&self.protocol).unwrap_or(Protocol::Tcp)
    }

    /// The collector's host and port (the protocol's port when none is written).
    pub fn host_port(&self) -> Result<(String, u16), String> {
        parse_address(&self.address, self.protocol().default_port())
    }

    /// Checks what types alone do not.
    pub fn validate(&self) -> Result<(), SchemaError> {
        let Some(protocol) = Protocol::from_name(&self.protocol) else {
            return Err(SchemaError::new(
                "logs.protocol",
                format!("{:?} is not tcp, udp or tls", self.protocol),
            ));
        };
        self.host_port()
            .map_err(|m| SchemaError::new("logs.address", m))?;
        if !BUFFER.contains(&self.buffer) {
            return Err(SchemaError::new(
                "logs.buffer",
                format!(
                    "{} bytes is outside {}..={}",
                    self.buffer,
                    BUFFER.start(),
                    BUFFER.end()
                ),
            ));
        }
        let tls_only = [
            ("logs.ca", self.ca.is_some()),
            ("logs.server-name", self.server_name.is_some()),
            ("logs.certificate", self.certificate.is_some()),
            ("logs.key", self.key.is_some()),
        ];
        if protocol != Protocol::Tls {
            if let Some((field, _)) = tls_only.iter().find(|(_, set)| *set) {
                return Err(SchemaError::new(
                    *field,
                    format!("only for protocol \"tls\" (this is {protocol})"),
                ));
            }
            return Ok(());
        }
        match &self.ca {
            Some(ca) => check_pem("logs.ca", ca, "CERTIFICATE")?,
            None => {
                return Err(SchemaError::new(
                    "logs.ca",
                    "protocol \"tls\" needs the CA certificates (PEM) the collector's \
                     certificate chains to",
                ));
            }
        }
        if let Some(name) = &self.server_name
            && name.parse::<IpAddr>().is_err()
        {
            check_hostname(name).map_err(|m| SchemaError::new("logs.server-name", m))?;
        }
        match (&self.certificate, &self.key) {
            (Some(c), Some(k)) => {
                check_pem("logs.certificate", c, "CERTIFICATE")?;
                check_pem("logs.key", k, "PRIVATE KEY")?;
            }
            (None, None) => {}
            (Some(_), None) => {
                return Err(SchemaError::new("logs.key", "a certificate needs its key"));
            }
            (None, Some(_)) => {
                return Err(SchemaError::new(
                    "logs.certificate",
                    "a key needs its certificate",
                ));
            }
        }
        Ok(())
    }
}

/// `host`, `host:port`, an IPv4 address, `[v6]` or `[v6]:port`.
pub fn parse_address(text: &str, default_port: u16) -> Result<(String, u16), String> {
    super::schema::parse_host_port(text, default_port, "a collector address")
}

#[cfg(test)]
mod tests {
    use super::super::schema::parse;

    const CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    const KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n";

    #[test]
    fn tables_parse_with_defaults() {
        let c = parse("version = 1\n[metrics]\n[logs]\naddress = \"10.0.2.2\"\n").unwrap();
        let m = c.metrics.unwrap();
        assert_eq!((m.address.to_string(), m.port), ("0.0.0.0".into(), 9100));
        let l = c.logs.unwrap();
        assert_eq!(l.host_port().unwrap(), ("10.0.2.2".into(), 514));
        assert_eq!((l.buffer, l.kernel), (1 << 20, true));
        let c = parse(&format!(
            "version = 1\n[metrics]\nport = 9443\nbearer-token = \"0123456789abcdef\"\n\
             [metrics.tls]\ncertificate = '''{CERT}'''\nkey = '''{KEY}'''\nclient-ca = '''{CERT}'''\n\
             [logs]\naddress = \"logs.example.com\"\nprotocol = \"tls\"\nca = '''{CERT}'''\n\
             buffer = 4096\nkernel = false\n"
        ))
        .unwrap();
        assert!(c.metrics.unwrap().tls.unwrap().client_ca.is_some());
        assert_eq!(
            c.logs.unwrap().host_port().unwrap(),
            ("logs.example.com".into(), 6514)
        );
        assert_eq!(parse("version = 1\n").unwrap().metrics, None);
    }

    #[test]
    fn mistakes_name_their_field_and_never_the_secret() {
        for (text, field) in [
            ("[metrics]\nport = 0\n", "metrics.port"),
            ("[metrics]\naddress = \"any\"\n", "metrics.address"),
            (
                "[metrics]\nbearer-token = \"short\"\n",
                "metrics.bearer-token",
            ),
            (
                "[metrics]\nbearer-token = \"0123456789abcdef-without-tls\"\n",
                "metrics.bearer-token",
            ),
            (
                "[metrics.tls]\ncertificate = \"not pem\"\nkey = \"x\"\n",
                "metrics.tls.certificate",
            ),
            ("[metrics]\ncolour = 1\n", "metrics.colour"),
            ("[logs]\n", "logs"),
            ("[logs]\naddress = \"a b\"\n", "logs.address"),
            ("[logs]\naddress = \"host:0\"\n", "logs.address"),
            (
                "[logs]\naddress = \"h\"\nprotocol = \"relp\"\n",
                "logs.protocol",
            ),
            ("[logs]\naddress = \"h\"\nbuffer = 100\n", "logs.buffer"),
            ("[logs]\naddress = \"h\"\nprotocol = \"tls\"\n", "logs.ca"),
            (
                "[logs]\naddress = \"h\"\nca = \"-----BEGIN CERTIFICATE-----\"\n",
                "logs.ca",
            ),
            (
                "[logs]\naddress = \"h\"\nprotocol = \"tls\"\nca = \"-----BEGIN CERTIFICATE-----\"\nkey = \"-----BEGIN PRIVATE KEY-----\"\n",
                "logs.certificate",
            ),
        ] {
            let e = parse(&format!("version = 1\n{text}")).unwrap_err();
            assert_eq!(e.field, field, "{text}: {e}");
            assert!(!e.to_string().contains("0123456789abcdef"), "{e}");
            assert!(!e.to_string().contains("not pem"), "{e}");
        }
    }

    #[test]
    fn addresses_parse_in_every_form() {
        let p = |s: &str| super::parse_address(s, 514);
        assert_eq!(p("10.0.2.2:1514").unwrap(), ("10.0.2.2".into(), 1514));
        assert_eq!(
            p("logs.example.com").unwrap(),
            ("logs.example.com".into(), 514)
        );
        assert_eq!(
            p("[2001:db8::1]:6514").unwrap(),
            ("2001:db8::1".into(), 6514)
        );
        assert_eq!(p("2001:db8::1").unwrap(), ("2001:db8::1".into(), 514));
        for bad in ["", "a b", "x:", "x:99999", "[::1", "under_score:1"] {
            assert!(p(bad).is_err(), "{bad}");
        }
    }
}
