//! The exporter: `GET /metrics` in Prometheus's text format ([`exposition`]) with what
//! [`collect`] gathers, on the address and port user-data's `[metrics]` names, over plain
//! HTTP or TLS, optionally behind a bearer token or client certificates.
//!
//! The HTTP/1.1 server is written here rather than taken from a crate: the whole protocol
//! it needs is one request line, one header (`Authorization`) and one response per
//! connection (`Connection: close`), and an HTTP crate (hyper and an async runtime, or
//! tiny_http) would be most of the binary. Every read is bounded: the request head to
//! [`MAX_HEAD`] bytes within [`REQUEST_TIMEOUT`]; at most [`MAX_CONNECTIONS`] connections
//! are served at once (each on its own thread), further ones are closed at once.
//!
//! Binding needs root when the port is below 1024; once bound (and the key files read) the
//! exporter runs as `nobody` for good. An address that cannot be bound yet (not assigned,
//! in use) is tried again every [`BIND_RETRY`], and the console says what is wrong once.

pub mod collect;
pub mod exposition;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crust_format::observe::MetricsSettings;
use rustls::{ServerConfig, ServerConnection, StreamOwned};

use crate::{drop_privileges, read_settings, say, tls};
use collect::Sources;

/// The largest request head read (request line and headers).
pub const MAX_HEAD: usize = 8192;
/// How long a client may take to send its request (and, with TLS, its handshake).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more are closed without an answer.
pub const MAX_CONNECTIONS: usize = 4;
/// Pause between tries to bind the address.
pub const BIND_RETRY: Duration = Duration::from_secs(10);

/// What every connection needs.
#[derive(Debug)]
pub struct Server {
    tls: Option<Arc<ServerConfig>>,
    token: Option<String>,
    sources: Sources,
}

impl Server {
    /// A server with these TLS settings and token, reading `sources`.
    pub fn new(tls: Option<Arc<ServerConfig>>, token: Option<String>, sources: Sources) -> Self {
        Self {
            tls,
            token,
            sources,
        }
    }

    /// Serves one connection: the TLS handshake if any, one request, one answer.
    pub fn handle(&self, stream: TcpStream) {
        let _ = stream.set_read_timeout(Some(REQUEST_TIMEOUT));
        let _ = stream.set_write_timeout(Some(REQUEST_TIMEOUT));
        let _ = stream.set_nodelay(true);
        match &self.tls {
            Some(config) => {
                let Ok(conn) = ServerConnection::new(config.clone()) else {
                    return;
                };
                let mut tls = StreamOwned::new(conn, stream);
                self.serve(&mut tls);
                tls.conn.send_close_notify();
                let _ = tls.flush();
            }
            None => {
                let mut stream = stream;
                self.serve(&mut stream);
            }
        }
    }

    fn serve(&self, s: &mut impl ReadWrite) {
        let response = match read_head(s) {
            Ok(head) => self.answer(&head),
            Err(HeadError::Closed) => return,
            Err(HeadError::TooLarge) => Response::text(431, "Request Header Fields Too Large"),
            Err(HeadError::Bad) => Response::text(400, "Bad Request"),
        };
        let _ = s.write_all(&response.to_bytes());
        let _ = s.flush();
    }

    /// The answer to a request head.
    pub fn answer(&self, head: &str) -> Response {
        let mut lines = head.split("\r\n");
        let request = lines.next().unwrap_or("");
        let mut parts = request.split(' ');
        let (Some(method), Some(target), Some(version)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Response::text(400, "Bad Request");
        };
        if !version.starts_with("HTTP/1.") {
            return Response::text(505, "HTTP Version Not Supported");
        }
        if let Some(token) = &self.token {
            let given = lines
                .filter_map(|l| l.split_once(':'))
                .find(|(name, _)| name.trim().eq_ignore_ascii_case("authorization"))
                .map(|(_, value)| value.trim());
            let ok = given
                .and_then(|v| {
                    v.strip_prefix("Bearer ")
                        .or_else(|| v.strip_prefix("bearer "))
                })
                .is_some_and(|t| same(t.trim().as_bytes(), token.as_bytes()));
            if !ok {
                let mut r = Response::text(401, "Unauthorized");
                r.extra = "WWW-Authenticate: Bearer realm=\"crust\"\r\n";
                return r;
            }
        }
        let head_only = match method {
            "GET" => false,
            "HEAD" => true,
            _ => {
                let mut r = Response::text(405, "Method Not Allowed");
                r.extra = "Allow: GET, HEAD\r\n";
                return r;
            }
        };
        let path = target.split('?').next().unwrap_or("");
        let mut response = match path {
            "/metrics" => Response {
                status: 200,
                content_type: exposition::CONTENT_TYPE,
                body: collect::collect(&self.sources).render().into_bytes(),
                extra: "",
                head_len: None,
            },
            "/" => Response::text(200, "Crust's metrics are at /metrics"),
            _ => Response::text(404, "Not Found: the metrics are at /metrics"),
        };
        if head_only {
            response.content_length_only();
        }
        response
    }
}

/// Equal bytes, compared in time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A stream the server reads a request from and writes the answer to.
pub trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// Why no request head was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// The client went away (or took too long) before sending a whole head.
    Closed,
    /// The head is longer than [`MAX_HEAD`].
    TooLarge,
    /// Not text.
    Bad,
}

/// Reads a request head (up to the empty line), within [`MAX_HEAD`] bytes and
/// [`REQUEST_TIMEOUT`] in all.
pub fn read_head(s: &mut impl Read) -> Result<String, HeadError> {
    let started = Instant::now();
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.truncate(end);
            return String::from_utf8(buf).map_err(|_| HeadError::Bad);
        }
        if buf.len() > MAX_HEAD {
            return Err(HeadError::TooLarge);
        }
        if started.elapsed() > REQUEST_TIMEOUT {
            return Err(HeadError::Closed);
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return Err(HeadError::Closed),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// An answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The body's type.
    pub content_type: &'static str,
    /// The body.
    pub body: Vec<u8>,
    /// Extra header lines, each ending in CRLF.
    pub extra: &'static str,
    /// The `Content-Length` of a HEAD answer (the body's, which is not sent).
    pub head_len: Option<usize>,
}

impl Response {
    fn text(status: u16, text: &str) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: format!("{text}\n").into_bytes(),
            extra: "",
            head_len: None,
        }
    }

    /// HEAD: the same headers, no body.
    fn content_length_only(&mut self) {
        self.extra = "";
        let len = self.body.len();
        self.body.clear();
        self.body.shrink_to_fit();
        self.head_len = Some(len);
    }

    /// The bytes on the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            401 => "Unauthorized",
            404 => "Not Found",
            405 => "Method Not Allowed",
            431 => "Request Header Fields Too Large",
            505 => "HTTP Version Not Supported",
            _ => "Error",
        };
        let mut out = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{}Connection: close\r\n\r\n",
            self.status,
            self.content_type,
            self.head_len.unwrap_or(self.body.len()),
            self.extra
        )
        .into_bytes();
        out.extend_from_slice(&self.body);
        out
    }
}

/// Runs the exporter with the settings file at `settings`; returns only on a failure that
/// a restart cannot mend by itself (the init says it and tries again later).
pub fn run(settings: &Path) -> Result<(), String> {
    let settings = MetricsSettings::parse(&read_settings(settings)?)?;
    let tls = match &settings.tls {
        Some(t) => Some(tls::server(
            Path::new(&t.certificate),
            Path::new(&t.key),
            t.client_ca.as_deref().map(Path::new),
        )?),
        None => None,
    };
    let address = SocketAddr::new(settings.address, settings.port);
    let listener = bind(address);
    drop_privileges()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut guards = Vec::new();
    if settings.bearer_token.is_some() {
        guards.push("a bearer token");
    }
    if settings.tls.as_ref().is_some_and(|t| t.client_ca.is_some()) {
        guards.push("a client certificate");
    }
    say(&format!(
        "serving {scheme}://{address}/metrics{}",
        if guards.is_empty() {
            String::new()
        } else {
            format!(" to clients with {}", guards.join(" and "))
        }
    ));
    let server = Arc::new(Server::new(tls, settings.bearer_token, Sources::default()));
    let active = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let Ok(stream) = stream else {
            // EMFILE and the like: do not spin.
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        if active.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
            drop(stream);
            continue;
        }
        active.fetch_add(1, Ordering::SeqCst);
        let (server, active2) = (server.clone(), active.clone());
        let spawned = std::thread::Builder::new()
            .name("scrape".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                server.handle(stream);
                active2.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            active.fetch_sub(1, Ordering::SeqCst);
        }
    }
    Err("the listening socket failed".into())
}

/// Binds `address`, trying again every [`BIND_RETRY`] while it cannot (saying why once).
fn bind(address: SocketAddr) -> TcpListener {
    let mut said = false;
    loop {
        match TcpListener::bind(address) {
            Ok(l) => {
                if said {
                    say(&format!("{address} can be bound now"));
                }
                return l;
            }
            Err(e) => {
                if !said {
                    say(&format!(
                        "cannot listen on {address}: {e}; check [metrics] address and port in \
                         user-data; trying again every {} s",
                        BIND_RETRY.as_secs()
                    ));
                    said = true;
                }
                std::thread::sleep(BIND_RETRY);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(token: Option<&str>) -> Server {
        let dir = std::env::temp_dir().join("crust-observe-none");
        Server::new(
            None,
            token.map(str::to_owned),
            Sources {
                status: dir.join("status"),
                boot: dir.join("boot"),
                manifest: dir.join("manifest"),
                var: "/".into(),
                ..Sources::default()
            },
        )
    }

    #[test]
    fn requests_are_answered_by_path_method_and_token() {
        let s = server(None);
        let ok = s.answer("GET /metrics HTTP/1.1\r\nHost: x");
        assert_eq!(ok.status, 200);
        assert_eq!(ok.content_type, exposition::CONTENT_TYPE);
        assert!(String::from_utf8_lossy(&ok.body).contains("node_load1 "));
        assert_eq!(s.answer("GET /nope HTTP/1.1").status, 404);
        assert_eq!(s.answer("POST /metrics HTTP/1.1").status, 405);
        assert_eq!(s.answer("GET /metrics SPDY/3").status, 505);
        assert_eq!(s.answer("nonsense").status, 400);
        let head = s.answer("HEAD /metrics HTTP/1.1");
        assert!(head.body.is_empty());
        let wire = String::from_utf8(head.to_bytes()).unwrap();
        assert!(!wire.contains("Content-Length: 0\r\n"), "{wire}");

        let guarded = server(Some("0123456789abcdef"));
        let no = guarded.answer("GET /metrics HTTP/1.1\r\nHost: x");
        assert_eq!(no.status, 401);
        assert!(String::from_utf8_lossy(&no.to_bytes()).contains("WWW-Authenticate: Bearer"));
        let wrong =
            guarded.answer("GET /metrics HTTP/1.1\r\nauthorization: Bearer 0123456789abcdeX");
        assert_eq!(wrong.status, 401);
        let right =
            guarded.answer("GET /metrics HTTP/1.1\r\nAUTHORIZATION:  Bearer 0123456789abcdef");
        assert_eq!(right.status, 200);
    }

    #[test]
    fn heads_are_bounded() {
        let mut long = std::io::Cursor::new(vec![b'a'; MAX_HEAD * 2]);
        assert_eq!(read_head(&mut long), Err(HeadError::TooLarge));
        let mut cut = std::io::Cursor::new(b"GET / HTTP/1.1\r\n".to_vec());
        assert_eq!(read_head(&mut cut), Err(HeadError::Closed));
        let mut ok = std::io::Cursor::new(b"GET / HTTP/1.1\r\nA: b\r\n\r\nbody".to_vec());
        assert_eq!(read_head(&mut ok).unwrap(), "GET / HTTP/1.1\r\nA: b");
    }
}
