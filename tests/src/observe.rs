//! Real observability servers for the tests, from Debian's packages, each started on this
//! machine's loopback with a configuration and data folder of its own and stopped when
//! dropped: Prometheus 2.42 (`prometheus`, asked through its HTTP API) and rsyslog 8.2302
//! (`rsyslogd -n -f`, TCP or TLS with its GnuTLS driver, writing RFC 5424 lines to a file);
//! and the certificates they and the guest use, made by `openssl`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::run_ok;

pub use crate::free_port;

/// Waits until something accepts connections on 127.0.0.1:`port`.
pub fn wait_listening(port: u16, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// A certificate authority and certificates it signed (ECDSA P-256, PEM files).
#[derive(Debug)]
pub struct Certs {
    dir: PathBuf,
}

impl Certs {
    /// A new CA in `dir`.
    pub fn new(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).expect("certificate folder");
        run_ok(
            Command::new("openssl")
                .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
                .args(["ec_paramgen_curve:P-256", "-nodes", "-days", "3650"])
                .args(["-subj", "/CN=crust test CA", "-keyout"])
                .arg(dir.join("ca.key"))
                .arg("-out")
                .arg(dir.join("ca.pem")),
        );
        Self {
            dir: dir.to_path_buf(),
        }
    }

    /// The CA certificate.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A certificate `name` for `dns` names and `ips` (server or client use); returns
    /// (certificate, key).
    pub fn issue(
        &self,
        name: &str,
        dns: &[&str],
        ips: &[&str],
        client: bool,
    ) -> (PathBuf, PathBuf) {
        let key = self.dir.join(format!("{name}.key"));
        let csr = self.dir.join(format!("{name}.csr"));
        let cert = self.dir.join(format!("{name}.pem"));
        let ext = self.dir.join(format!("{name}.ext"));
        let mut san: Vec<String> = dns.iter().map(|d| format!("DNS:{d}")).collect();
        san.extend(ips.iter().map(|i| format!("IP:{i}")));
        let usage = if client { "clientAuth" } else { "serverAuth" };
        let mut text = format!("extendedKeyUsage={usage}\nbasicConstraints=CA:FALSE\n");
        if !san.is_empty() {
            text.push_str(&format!("subjectAltName={}\n", san.join(",")));
        }
        std::fs::write(&ext, text).expect("extensions");
        run_ok(
            Command::new("openssl")
                .args([
                    "req",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                ])
                .args(["-nodes", "-subj", &format!("/CN={name}"), "-keyout"])
                .arg(&key)
                .arg("-out")
                .arg(&csr),
        );
        run_ok(
            Command::new("openssl")
                .args(["x509", "-req", "-days", "3650", "-in"])
                .arg(&csr)
                .arg("-CA")
                .arg(self.ca())
                .arg("-CAkey")
                .arg(self.dir.join("ca.key"))
                .args(["-CAcreateserial", "-out"])
                .arg(&cert)
                .arg("-extfile")
                .arg(&ext),
        );
        (cert, key)
    }
}

/// rsyslog's TLS settings: its certificate and key, the CA it trusts, and whether clients
/// must show a certificate from it.
#[derive(Debug, Clone)]
pub struct RsyslogTls {
    /// The CA certificate.
    pub ca: PathBuf,
    /// rsyslog's certificate.
    pub certificate: PathBuf,
    /// Its key.
    pub key: PathBuf,
    /// Ask clients for a certificate (`x509/certvalid`).
    pub client_certificates: bool,
}

/// rsyslog listening on 127.0.0.1 (TCP, or TLS), writing what it receives to a file in
/// `RSYSLOG_SyslogProtocol23Format` (RFC 5424).
#[derive(Debug)]
pub struct Rsyslog {
    /// The port.
    pub port: u16,
    /// The file it writes.
    pub file: PathBuf,
    config: PathBuf,
    dir: PathBuf,
    child: Option<Child>,
}

impl Rsyslog {
    /// Writes the configuration; starts it unless `start` is false.
    pub fn new(dir: &Path, tls: Option<&RsyslogTls>, start: bool) -> Self {
        std::fs::create_dir_all(dir.join("work")).expect("rsyslog folder");
        let port = free_port();
        let file = dir.join("received.log");
        let (global, module) = match tls {
            None => (String::new(), r#"module(load="imtcp")"#.to_owned()),
            Some(t) => (
                format!(
                    r#"DefaultNetstreamDriver="gtls" DefaultNetstreamDriverCAFile="{}" DefaultNetstreamDriverCertFile="{}" DefaultNetstreamDriverKeyFile="{}""#,
                    t.ca.display(),
                    t.certificate.display(),
                    t.key.display()
                ),
                format!(
                    r#"module(load="imtcp" StreamDriver.Name="gtls" StreamDriver.Mode="1" StreamDriver.Authmode="{}")"#,
                    if t.client_certificates {
                        "x509/certvalid"
                    } else {
                        "anon"
                    }
                ),
            ),
        };
        let config = dir.join("rsyslog.conf");
        std::fs::write(
            &config,
            format!(
                "global(workDirectory=\"{work}\" {global})\n{module}\n\
                 input(type=\"imtcp\" port=\"{port}\" address=\"127.0.0.1\")\n\
                 action(type=\"omfile\" file=\"{file}\" template=\"RSYSLOG_SyslogProtocol23Format\")\n",
                work = dir.join("work").display(),
                file = file.display(),
            ),
        )
        .expect("rsyslog.conf");
        let mut r = Self {
            port,
            file,
            config,
            dir: dir.to_path_buf(),
            child: None,
        };
        if start {
            r.start();
        }
        r
    }

    /// Starts it (in the foreground, `-n`) and waits until it listens.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "rsyslog runs already");
        let child = Command::new("rsyslogd")
            .args(["-n", "-f"])
            .arg(&self.config)
            .arg("-i")
            .arg(self.dir.join("rsyslogd.pid"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("rsyslogd (Debian's rsyslog; cargo xtask test installs it)");
        self.child = Some(child);
        assert!(
            wait_listening(self.port, Duration::from_secs(20)),
            "rsyslog does not listen on {}",
            self.port
        );
    }

    /// Stops it (SIGTERM) and waits for it to end.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// What it wrote so far, parsed.
    pub fn received(&self) -> Vec<SyslogLine> {
        std::fs::read_to_string(&self.file)
            .unwrap_or_default()
            .lines()
            .filter_map(SyslogLine::parse)
            .collect()
    }

    /// Waits until a line matches.
    pub fn wait_for(
        &self,
        what: &str,
        within: Duration,
        f: impl Fn(&SyslogLine) -> bool,
    ) -> SyslogLine {
        let deadline = Instant::now() + within;
        loop {
            if let Some(l) = self.received().into_iter().find(|l| f(l)) {
                return l;
            }
            assert!(
                Instant::now() < deadline,
                "rsyslog received no {what} within {} s; it has:\n{}",
                within.as_secs(),
                std::fs::read_to_string(&self.file).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One line of rsyslog's `RSYSLOG_SyslogProtocol23Format`:
/// `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID STRUCTURED-DATA MSG`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyslogLine {
    /// The priority value.
    pub pri: u8,
    /// The timestamp as written.
    pub timestamp: String,
    /// HOSTNAME.
    pub host: String,
    /// APP-NAME.
    pub app: String,
    /// MSGID.
    pub msgid: String,
    /// STRUCTURED-DATA.
    pub sd: String,
    /// MSG.
    pub msg: String,
}

impl SyslogLine {
    /// Parses a line.
    pub fn parse(line: &str) -> Option<Self> {
        let rest = line.strip_prefix('<')?;
        let (pri, rest) = rest.split_once(">1 ")?;
        let mut f = rest.splitn(6, ' ');
        let timestamp = f.next()?.to_owned();
        let host = f.next()?.to_owned();
        let app = f.next()?.to_owned();
        let _procid = f.next()?;
        let msgid = f.next()?.to_owned();
        let rest = f.next()?;
        let (sd, msg) = if rest.starts_with('[') {
            // The element ends at the first `]` not escaped by a backslash.
            let bytes = rest.as_bytes();
            let mut end = None;
            let mut i = 0;
            while i < bytes.len() {
                match bytes[i] {
                    b'\\' => i += 1,
                    b']' if bytes.get(i + 1) != Some(&b'[') => {
                        end = Some(i);
                        break;
                    }
                    _ => {}
                }
                i += 1;
            }
            let end = end?;
            (
                rest[..=end].to_owned(),
                rest[end + 1..].trim_start().to_owned(),
            )
        } else {
            let (sd, msg) = rest.split_once(' ').unwrap_or((rest, ""));
            (sd.to_owned(), msg.to_owned())
        };
        Some(Self {
            pri: pri.parse().ok()?,
            timestamp,
            host,
            app,
            msgid,
            sd,
            msg,
        })
    }
}

/// How Prometheus reaches its target.
#[derive(Debug, Clone, Default)]
pub struct ScrapeTls {
    /// The CA that signed the target's certificate.
    pub ca: PathBuf,
    /// The name in the target's certificate.
    pub server_name: String,
    /// A client certificate and key.
    pub client: Option<(PathBuf, PathBuf)>,
    /// A bearer token.
    pub token: Option<String>,
}

/// Prometheus on 127.0.0.1, scraping one target every `interval`.
#[derive(Debug)]
pub struct Prometheus {
    /// Its HTTP port (API and UI).
    pub port: u16,
    child: Child,
}

impl Prometheus {
    /// Starts it with data in `dir`, scraping 127.0.0.1:`target` (job `crust`), and
    /// waits until it is ready.
    pub fn start(dir: &Path, target: u16, tls: Option<&ScrapeTls>, interval: Duration) -> Self {
        std::fs::create_dir_all(dir.join("data")).expect("prometheus folder");
        let port = free_port();
        let mut job = format!(
            "  - job_name: crust\n    static_configs:\n      - targets: ['127.0.0.1:{target}']\n"
        );
        if let Some(t) = tls {
            job.push_str(&format!(
                "    scheme: https\n    tls_config:\n      ca_file: {}\n      server_name: {}\n",
                t.ca.display(),
                t.server_name
            ));
            if let Some((cert, key)) = &t.client {
                job.push_str(&format!(
                    "      cert_file: {}\n      key_file: {}\n",
                    cert.display(),
                    key.display()
                ));
            }
            if let Some(token) = &t.token {
                job.push_str(&format!("    authorization:\n      credentials: {token}\n"));
            }
        }
        let secs = interval.as_secs().max(1);
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: {secs}s\n  scrape_timeout: {secs}s\nscrape_configs:\n{job}"
            ),
        )
        .expect("prometheus.yml");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).expect("log"))
            .spawn()
            .expect("prometheus (Debian's package; cargo xtask test installs it)");
        let p = Self { port, child };
        let deadline = Instant::now() + Duration::from_secs(60);
        while p.get("/-/ready").0 != 200 {
            assert!(Instant::now() < deadline, "prometheus is not ready");
            std::thread::sleep(Duration::from_millis(250));
        }
        p
    }

    /// A GET on its HTTP port: status and body.
    pub fn get(&self, path: &str) -> (u16, String) {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return (0, String::new());
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
        let _ = write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = text
            .split_once("\r\n\r\n")
            .map_or("", |(_, b)| b)
            .to_owned();
        (status, body)
    }

    /// An instant query through the HTTP API: each series' labels and value.
    pub fn query(&self, expr: &str) -> Vec<(serde_json::Value, f64)> {
        let encoded: String = expr
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        let (status, body) = self.get(&format!("/api/v1/query?query={encoded}"));
        assert_eq!(status, 200, "query {expr}: {body}");
        let json: serde_json::Value = serde_json::from_str(&body).expect("API JSON");
        json["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|r| {
                let v = r["value"][1]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(f64::NAN);
                (r["metric"].clone(), v)
            })
            .collect()
    }

    /// Waits until `expr` has a series for which `f` holds; returns it.
    pub fn wait_for(
        &self,
        expr: &str,
        within: Duration,
        f: impl Fn(&serde_json::Value, f64) -> bool,
    ) -> (serde_json::Value, f64) {
        let deadline = Instant::now() + within;
        loop {
            let got = self.query(expr);
            if let Some(hit) = got.iter().find(|(m, v)| f(m, *v)) {
                return hit.clone();
            }
            assert!(
                Instant::now() < deadline,
                "prometheus: {expr} never matched within {} s (last: {got:?}; targets: {})",
                within.as_secs(),
                self.get("/api/v1/targets").1
            );
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rsyslog_lines_parse_with_structured_data() {
        let l = SyslogLine::parse(
            "<14>1 2026-12-04T08:08:58.267855+00:00 observed-1 web - - \
             [crust@32473 boot-id=\"7a58\\]x\"] serving http://observed-1:80/",
        )
        .unwrap();
        assert_eq!(
            (l.pri, l.host.as_str(), l.app.as_str()),
            (14, "observed-1", "web")
        );
        assert_eq!(l.sd, "[crust@32473 boot-id=\"7a58\\]x\"]");
        assert_eq!(l.msg, "serving http://observed-1:80/");
        let n = SyslogLine::parse("<30>1 - h crust - ready - ready: up").unwrap();
        assert_eq!(
            (n.msgid.as_str(), n.sd.as_str(), n.msg.as_str()),
            ("ready", "-", "ready: up")
        );
    }
}
