//! A minimal HTTP/1.1 client over `std::net::TcpStream`: the EC2 instance metadata service,
//! health checks, and the update agent's repository (plain HTTP; bundles are signed, so the
//! transport needs no trust).
//!
//! Hand-written on purpose: the init needs exactly one request at a time with a fixed
//! method, path and a few headers, a bounded wait and a bounded body (or a streamed one). The general clients (ureq, reqwest, hyper) bring TLS stacks,
//! connection pools or async runtimes that would make the static PID 1 several times larger
//! for none of that. Each request uses its own connection (`Connection: close`); responses
//! are read to the end, framed by `Content-Length` when the server sends it. Chunked
//! transfer encoding is refused (IMDS does not use it).

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Largest response accepted (EC2 caps user-data at 16 KiB; leave room).
pub const MAX_RESPONSE: usize = 1 << 20;

/// A response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Header fields, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// The first header field called `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Why a request failed.
#[derive(Debug)]
pub enum HttpError {
    /// No connection (refused, unreachable, timed out).
    Connect(io::Error),
    /// The connection broke or timed out mid-exchange.
    Io(io::Error),
    /// The server's answer is not an HTTP/1.x response this client reads.
    Malformed(String),
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::Connect(e) => write!(f, "cannot connect: {e}"),
            HttpError::Io(e) => write!(f, "connection failed: {e}"),
            HttpError::Malformed(why) => write!(f, "bad HTTP response: {why}"),
        }
    }
}

impl std::error::Error for HttpError {}

/// An `http://host[:port]/path` URL (plain HTTP: what travels over it is signed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Path, starting with `/`, without a trailing `/`.
    pub path: String,
}

impl Url {
    /// Parses a URL; only `http://` is supported.
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("{url:?} is not an http:// URL"))?;
        let (hostport, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse().map_err(|_| format!("{url:?}: bad port {p:?}"))?,
            ),
            None => (hostport, 80),
        };
        if host.is_empty() {
            return Err(format!("{url:?} has no host"));
        }
        Ok(Self {
            host: host.to_owned(),
            port,
            path: path.trim_end_matches('/').to_owned(),
        })
    }

    /// The first address the host resolves to (DNS through the C library's resolver).
    pub fn address(&self) -> Result<SocketAddr, HttpError> {
        use std::net::ToSocketAddrs;
        (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(HttpError::Connect)?
            .next()
            .ok_or_else(|| {
                HttpError::Connect(io::Error::other(format!("{} has no address", self.host)))
            })
    }

    /// The path of `rel` below this URL's path.
    pub fn join(&self, rel: &str) -> String {
        format!("{}/{}", self.path, rel.trim_start_matches('/'))
    }
}

/// `GET path`, the body streamed into `sink` (at most `limit` bytes; each network step waits
/// at most `timeout`). Anything but `200 OK` is an error. Returns the body's length.
pub fn download(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
    limit: u64,
    sink: &mut dyn Write,
) -> Result<u64, HttpError> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(HttpError::Connect)?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(HttpError::Io)?;
    stream
        .write_all(request_bytes(addr, "GET", path, &[]).as_bytes())
        .map_err(HttpError::Io)?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 64 << 10];
    let end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        if buf.len() > 64 << 10 {
            return Err(HttpError::Malformed("header too long".into()));
        }
        let n = stream.read(&mut chunk).map_err(HttpError::Io)?;
        if n == 0 {
            return Err(HttpError::Malformed("no end of the header".into()));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..end])
        .map_err(|_| HttpError::Malformed("header is not text".into()))?;
    let (status, headers) = parse_head(head)?;
    if status != 200 {
        return Err(HttpError::Malformed(format!(
            "{path}: HTTP status {status}"
        )));
    }
    let field = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    if field("transfer-encoding").is_some_and(|te| !te.eq_ignore_ascii_case("identity")) {
        return Err(HttpError::Malformed(
            "chunked transfer encoding is not supported".into(),
        ));
    }
    let length: Option<u64> = match field("content-length") {
        Some(l) => Some(
            l.parse()
                .map_err(|_| HttpError::Malformed(format!("Content-Length {l:?}")))?,
        ),
        None => None,
    };
    let mut written = 0u64;
    let mut take = |bytes: &[u8]| -> Result<(), HttpError> {
        written += bytes.len() as u64;
        if written > limit || length.is_some_and(|l| written > l) {
            return Err(HttpError::Malformed(format!(
                "{path}: body larger than expected"
            )));
        }
        sink.write_all(bytes).map_err(HttpError::Io)
    };
    take(&buf[end + 4..])?;
    loop {
        let n = stream.read(&mut chunk).map_err(HttpError::Io)?;
        if n == 0 {
            break;
        }
        take(&chunk[..n])?;
    }
    if length.is_some_and(|l| written != l) {
        return Err(HttpError::Malformed(format!(
            "{path}: the body ended early"
        )));
    }
    Ok(written)
}

/// Sends one request with an empty body and reads the response; every step waits at most
/// `timeout`.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> Result<Response, HttpError> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(HttpError::Connect)?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(HttpError::Io)?;
    stream
        .write_all(request_bytes(addr, method, path, headers).as_bytes())
        .map_err(HttpError::Io)?;
    let mut raw = Vec::new();
    stream
        .take(MAX_RESPONSE as u64 + 1)
        .read_to_end(&mut raw)
        .map_err(HttpError::Io)?;
    if raw.len() > MAX_RESPONSE {
        return Err(HttpError::Malformed(format!(
            "response larger than {MAX_RESPONSE} bytes"
        )));
    }
    parse_response(&raw)
}

/// The request's bytes.
fn request_bytes(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> String {
    let mut text = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: crust-init/{}\r\nAccept: */*\r\n\
         Connection: close\r\n",
        addr.ip(),
        crate::VERSION
    );
    if method != "GET" {
        text.push_str("Content-Length: 0\r\n");
    }
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("\r\n");
    text
}

/// Parses a response's status line and header fields (without the blank line).
fn parse_head(head: &str) -> Result<(u16, Vec<(String, String)>), HttpError> {
    let bad = |why: &str| HttpError::Malformed(why.to_owned());
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(bad(&format!("status line {status_line:?}")));
    }
    let status = parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|s| (100..=599).contains(s))
        .ok_or_else(|| bad(&format!("status line {status_line:?}")))?;
    let mut headers = Vec::new();
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| bad(&format!("header line {line:?}")))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
    Ok((status, headers))
}

/// Parses a complete response (the server closed the connection after it).
pub fn parse_response(raw: &[u8]) -> Result<Response, HttpError> {
    let bad = |why: &str| HttpError::Malformed(why.to_owned());
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of the header"))?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| bad("header is not text"))?;
    let (status, headers) = parse_head(head)?;
    let response = Response {
        status,
        headers,
        body: Vec::new(),
    };
    if response
        .header("transfer-encoding")
        .is_some_and(|te| !te.eq_ignore_ascii_case("identity"))
    {
        return Err(bad("chunked transfer encoding is not supported"));
    }
    let mut body = raw[end + 4..].to_vec();
    if let Some(length) = response.header("content-length") {
        let length: usize = length
            .parse()
            .map_err(|_| bad(&format!("Content-Length {length:?}")))?;
        if body.len() < length {
            return Err(bad(&format!("body has {} of {length} bytes", body.len())));
        }
        body.truncate(length);
    }
    Ok(Response { body, ..response })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_close_and_carry_headers() {
        let addr: SocketAddr = "169.254.169.254:80".parse().unwrap();
        let text = request_bytes(addr, "PUT", "/latest/api/token", &[("X-A", "1")]);
        assert!(text.starts_with("PUT /latest/api/token HTTP/1.1\r\nHost: 169.254.169.254\r\n"));
        assert!(text.contains("Connection: close\r\n"));
        assert!(text.contains("Content-Length: 0\r\n"));
        assert!(text.ends_with("X-A: 1\r\n\r\n"));
        let get = request_bytes(addr, "GET", "/", &[]);
        assert!(!get.contains("Content-Length"));
    }

    #[test]
    fn responses_parse_with_and_without_length() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-Y: z\r\n\r\nabcdef")
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"abc");
        assert_eq!(r.header("x-y"), Some("z"));
        let r = parse_response(b"HTTP/1.0 401 Unauthorized\r\n\r\nno").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (401, &b"no"[..]));
    }

    #[test]
    fn malformed_responses_are_refused() {
        for raw in [
            &b"HTTP/1.1 200 OK\r\n"[..],
            b"SSH-2.0-OpenSSH\r\n\r\n",
            b"HTTP/1.1 abc OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
        ] {
            assert!(
                parse_response(raw).is_err(),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
    }
}
