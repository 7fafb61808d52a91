//! A minimal HTTP/1.1 client over `std::net::TcpStream`: the EC2 instance metadata service,
//! health checks, and the update agent's repository (plain HTTP; bundles are signed, so the
//! transport needs no trust).
//!
//! Hand-written on purpose: the init needs exactly one request at a time with a fixed
//! method, path and a few headers, a bounded wait and a bounded body (or a streamed one). The general clients (ureq, reqwest, hyper) bring TLS stacks,
//! connection pools or async runtimes that would make the static PID 1 several times larger
//! for none of that. Each request uses its own connection (`Connection: close`); responses
//! are read to the end, framed by `Content-Length` when the server sends it, or chunked
//! (etcd's JSON gateway chunks large answers); a streamed download takes `Content-Length`
//! framing only (static file servers send it).
//!
//! Every exchange is bounded twice ([`Bounds`]): each network step (connect, each read and
//! write) waits at most a step timeout, and the whole exchange ends at a deadline, so a
//! peer that sends one byte at a time cannot hold a caller longer than the deadline.

pub mod client;
pub mod tls;

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

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

/// How long an exchange may take: each step, and the whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// The longest wait for one network step (connect, a read, a write).
    pub step: Duration,
    /// When the whole exchange must be over.
    pub deadline: Instant,
}

impl Bounds {
    /// Steps of at most `step`, the whole exchange at most `total` from now.
    pub fn new(step: Duration, total: Duration) -> Self {
        Self {
            step,
            deadline: Instant::now() + total,
        }
    }

    /// The wait for the next step: the step timeout, or what is left until the deadline
    /// if that is less. An error once the deadline has passed.
    fn next_wait(&self) -> io::Result<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the exchange ran past its deadline",
            ));
        }
        Ok(left.min(self.step))
    }
}

/// Where a request goes: the address to connect to, and the name for the `Host` header
/// (the URL's host and port, so that name-based virtual hosts, CDNs and buckets answer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The address connected to.
    pub addr: SocketAddr,
    /// The `Host` header's value.
    pub host: String,
}

impl Endpoint {
    /// An endpoint known by its address only (`Host` is the address).
    pub fn address(addr: SocketAddr) -> Self {
        let host = match addr {
            SocketAddr::V4(a) if a.port() == 80 => a.ip().to_string(),
            SocketAddr::V4(a) => a.to_string(),
            SocketAddr::V6(a) if a.port() == 80 => format!("[{}]", a.ip()),
            SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
        };
        Self { addr, host }
    }
}

/// A connection whose every read and write waits no longer than its bounds allow.
struct Bounded {
    stream: TcpStream,
    bounds: Bounds,
}

impl Bounded {
    fn connect(endpoint: &Endpoint, bounds: Bounds) -> Result<Self, HttpError> {
        let wait = bounds.next_wait().map_err(HttpError::Connect)?;
        let stream =
            TcpStream::connect_timeout(&endpoint.addr, wait).map_err(HttpError::Connect)?;
        Ok(Self { stream, bounds })
    }
}

impl Bounded {
    /// A socket timeout (`EAGAIN` on Linux) said as what it was: a silent peer, or the
    /// exchange's deadline.
    fn timed_out(&self, e: io::Error, waited: Duration) -> io::Error {
        if !matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ) {
            return e;
        }
        if Instant::now() >= self.bounds.deadline {
            io::Error::new(
                io::ErrorKind::TimedOut,
                "the exchange ran past its deadline",
            )
        } else {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the server sent nothing for {:.1} s", waited.as_secs_f64()),
            )
        }
    }
}

impl Read for Bounded {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let wait = self.bounds.next_wait()?;
        self.stream.set_read_timeout(Some(wait))?;
        self.stream.read(buf).map_err(|e| self.timed_out(e, wait))
    }
}

impl Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let wait = self.bounds.next_wait()?;
        self.stream.set_write_timeout(Some(wait))?;
        self.stream.write(buf).map_err(|e| self.timed_out(e, wait))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
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

/// A URL's scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Plain HTTP (what travels over it is signed, or it is on the host itself).
    Http,
    /// HTTP over TLS ([`tls`]).
    Https,
}

/// An `http://` or `https://host[:port]/path` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// The scheme.
    pub scheme: Scheme,
    /// Host name or address (an IPv6 address without brackets).
    pub host: String,
    /// Port.
    pub port: u16,
    /// Path, starting with `/`, without a trailing `/`.
    pub path: String,
}

impl Url {
    /// Parses an `http://` or `https://` URL.
    pub fn parse(url: &str) -> Result<Self, String> {
        let (scheme, rest) = if let Some(rest) = url.strip_prefix("http://") {
            (Scheme::Http, rest)
        } else if let Some(rest) = url.strip_prefix("https://") {
            (Scheme::Https, rest)
        } else {
            return Err(format!("{url:?} is not an http:// or https:// URL"));
        };
        let (hostport, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let default_port = match scheme {
            Scheme::Http => 80,
            Scheme::Https => 443,
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("{url:?}: unclosed [ in the host"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| format!("{url:?}: bad port {p:?}"))?,
                None if after.is_empty() => default_port,
                None => return Err(format!("{url:?}: bad host")),
            };
            (host, port)
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (
                    h,
                    p.parse().map_err(|_| format!("{url:?}: bad port {p:?}"))?,
                ),
                None => (hostport, default_port),
            }
        };
        if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c.is_control()) {
            return Err(format!("{url:?} has no host"));
        }
        Ok(Self {
            scheme,
            host: host.to_owned(),
            port,
            path: path.trim_end_matches('/').to_owned(),
        })
    }

    /// `host[:port]` as the `Host` header and proxies' `CONNECT` want it (the port only
    /// when it is not the scheme's).
    pub fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let default = match self.scheme {
            Scheme::Http => 80,
            Scheme::Https => 443,
        };
        if self.port == default {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    /// The first address the host resolves to (DNS through the C library's resolver, which
    /// reads `/etc/hosts` first), with the URL's name for the `Host` header.
    pub fn endpoint(&self) -> Result<Endpoint, HttpError> {
        use std::net::ToSocketAddrs;
        let addr = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(HttpError::Connect)?
            .next()
            .ok_or_else(|| {
                HttpError::Connect(io::Error::other(format!("{} has no address", self.host)))
            })?;
        Ok(Endpoint {
            addr,
            host: self.authority(),
        })
    }

    /// The path of `rel` below this URL's path.
    pub fn join(&self, rel: &str) -> String {
        format!("{}/{}", self.path, rel.trim_start_matches('/'))
    }

    /// The same server, another path (a path joined below this one).
    pub fn with_path(&self, rel: &str) -> Url {
        Url {
            path: self.join(rel),
            ..self.clone()
        }
    }

    /// The URL as text.
    pub fn to_text(&self) -> String {
        let scheme = match self.scheme {
            Scheme::Http => "http",
            Scheme::Https => "https",
        };
        let path = if self.path.is_empty() {
            "/"
        } else {
            &self.path
        };
        format!("{scheme}://{}{path}", self.authority())
    }
}

/// A response's status and header fields, and the body bytes read with them.
#[derive(Debug)]
pub struct Head {
    /// The status code.
    pub status: u16,
    /// Header fields, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The first bytes of the body.
    pub rest: Vec<u8>,
}

impl Head {
    /// The first header field called `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Largest response head read.
const MAX_HEAD: usize = 64 << 10;

/// Reads a response's head from `stream` (at most [`MAX_HEAD`] bytes).
pub fn read_head(stream: &mut dyn Read) -> Result<Head, HttpError> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8 << 10];
    // Where the search for the blank line resumes: a head sent a byte at a time is not
    // searched again from its start after every byte.
    let mut searched = 0;
    let end = loop {
        if let Some(at) = buf[searched..].windows(4).position(|w| w == b"\r\n\r\n") {
            break searched + at;
        }
        searched = buf.len().saturating_sub(3);
        if buf.len() > MAX_HEAD {
            return Err(HttpError::Malformed("header too long".into()));
        }
        let n = stream.read(&mut chunk).map_err(HttpError::Io)?;
        if n == 0 {
            return Err(HttpError::Malformed("no end of the header".into()));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let text = std::str::from_utf8(&buf[..end])
        .map_err(|_| HttpError::Malformed("header is not text".into()))?;
    let (status, headers) = parse_head(text)?;
    Ok(Head {
        status,
        headers,
        rest: buf[end + 4..].to_vec(),
    })
}

/// Streams a `200` response's body (framed by `Content-Length`, or by the end of the
/// connection) into `sink`: at most `limit` bytes. Returns its length.
pub fn stream_body(
    stream: &mut dyn Read,
    head: &Head,
    what: &str,
    limit: u64,
    sink: &mut dyn Write,
) -> Result<u64, HttpError> {
    if head
        .header("transfer-encoding")
        .is_some_and(|te| !te.eq_ignore_ascii_case("identity"))
    {
        return Err(HttpError::Malformed(
            "chunked transfer encoding is not supported for downloads".into(),
        ));
    }
    let length: Option<u64> = match head.header("content-length") {
        Some(l) => Some(
            l.parse()
                .map_err(|_| HttpError::Malformed(format!("Content-Length {l:?}")))?,
        ),
        None => None,
    };
    let mut written = 0u64;
    let mut take = |written: &mut u64, bytes: &[u8]| -> Result<(), HttpError> {
        *written += bytes.len() as u64;
        if *written > limit || length.is_some_and(|l| *written > l) {
            return Err(HttpError::Malformed(format!(
                "{what}: body larger than expected"
            )));
        }
        sink.write_all(bytes).map_err(HttpError::Io)
    };
    take(&mut written, &head.rest)?;
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        if length.is_some_and(|l| written == l) {
            break;
        }
        let n = match stream.read(&mut chunk) {
            Ok(n) => n,
            // A TLS peer that closes without close_notify after a complete body is fine.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && length.is_none() => 0,
            Err(e) => return Err(HttpError::Io(e)),
        };
        if n == 0 {
            break;
        }
        take(&mut written, &chunk[..n])?;
    }
    if length.is_some_and(|l| written != l) {
        return Err(HttpError::Malformed(format!(
            "{what}: the body ended early"
        )));
    }
    Ok(written)
}

/// Sends one request with an empty body and reads the response (at most
/// [`MAX_RESPONSE`] bytes), within `bounds`.
pub fn request(
    endpoint: &Endpoint,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    bounds: Bounds,
) -> Result<Response, HttpError> {
    request_with_body(endpoint, method, path, headers, &[], bounds)
}

/// [`request`] with a body (sent with its `Content-Length`; a `Content-Type` goes in
/// `headers`).
pub fn request_with_body(
    endpoint: &Endpoint,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    bounds: Bounds,
) -> Result<Response, HttpError> {
    let mut stream = Bounded::connect(endpoint, bounds)?;
    request_over(&mut stream, &endpoint.host, method, path, headers, body)
}

/// [`request_with_body`] over a connected `stream` (the socket, or bytes in a test or fuzz
/// target): sends the request, reads the response to the end of the stream and parses it.
pub(crate) fn request_over(
    stream: &mut (impl Read + Write),
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Response, HttpError> {
    let mut bytes = request_bytes(host, method, path, headers, body.len()).into_bytes();
    bytes.extend_from_slice(body);
    stream.write_all(&bytes).map_err(HttpError::Io)?;
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
pub(crate) fn request_bytes(
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body_len: usize,
) -> String {
    let mut text = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: crust-init/{}\r\nAccept: */*\r\n\
         Connection: close\r\n",
        crate::VERSION
    );
    if method != "GET" {
        text.push_str(&format!("Content-Length: {body_len}\r\n"));
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
    match response.header("transfer-encoding") {
        None => {}
        Some(te) if te.eq_ignore_ascii_case("identity") => {}
        Some(te) if te.eq_ignore_ascii_case("chunked") => {
            let body = dechunk(&raw[end + 4..])?;
            return Ok(Response { body, ..response });
        }
        Some(te) => return Err(bad(&format!("transfer encoding {te:?} is not supported"))),
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

/// The body of a chunked response (RFC 9112 §7.1): hex sizes (extensions ignored), each
/// chunk followed by CRLF, a zero-size chunk, then trailer lines until an empty line.
/// Never reads past `raw`, never allocates more than `raw` holds.
fn dechunk(raw: &[u8]) -> Result<Vec<u8>, HttpError> {
    let bad = |why: &str| HttpError::Malformed(format!("chunked body: {why}"));
    let line_end = |from: usize| -> Result<usize, HttpError> {
        raw.get(from..)
            .and_then(|rest| rest.windows(2).position(|w| w == b"\r\n"))
            .map(|at| from + at)
            .ok_or_else(|| bad("a line does not end"))
    };
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let end = line_end(at)?;
        let line = std::str::from_utf8(&raw[at..end]).map_err(|_| bad("size is not text"))?;
        let digits = line.split(';').next().unwrap_or("").trim();
        if digits.is_empty() || digits.len() > 15 {
            return Err(bad("no chunk size"));
        }
        let size = usize::from_str_radix(digits, 16).map_err(|_| bad("size is not hex"))?;
        at = end + 2;
        if size == 0 {
            // Trailers, up to the empty line (a server that closes right away is forgiven).
            while at < raw.len() {
                let end = line_end(at)?;
                let empty = end == at;
                at = end + 2;
                if empty {
                    break;
                }
            }
            return Ok(body);
        }
        let data = raw
            .get(at..at.saturating_add(size))
            .filter(|d| d.len() == size)
            .ok_or_else(|| bad("a chunk is cut short"))?;
        body.extend_from_slice(data);
        at += size;
        if raw.get(at..at + 2) != Some(b"\r\n") {
            return Err(bad("a chunk does not end with CRLF"));
        }
        at += 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_close_and_carry_headers() {
        let addr: SocketAddr = "169.254.169.254:80".parse().unwrap();
        let host = Endpoint::address(addr).host;
        let text = request_bytes(&host, "PUT", "/latest/api/token", &[("X-A", "1")], 0);
        assert!(text.starts_with("PUT /latest/api/token HTTP/1.1\r\nHost: 169.254.169.254\r\n"));
        assert!(text.contains("Connection: close\r\n"));
        assert!(text.contains("Content-Length: 0\r\n"));
        assert!(text.ends_with("X-A: 1\r\n\r\n"));
        let get = request_bytes(&host, "GET", "/", &[], 0);
        assert!(!get.contains("Content-Length"));
    }

    #[test]
    fn the_host_header_names_the_url_host_and_port() {
        let url = Url::parse("http://127.0.0.1:8080/crust").unwrap();
        assert_eq!(url.endpoint().unwrap().host, "127.0.0.1:8080");
        let url = Url::parse("http://localhost/crust/").unwrap();
        let e = url.endpoint().unwrap();
        assert_eq!(e.host, "localhost");
        assert_eq!(e.addr.port(), 80);
        assert_eq!(
            Endpoint::address("[::1]:8080".parse().unwrap()).host,
            "[::1]:8080"
        );
    }

    /// A server that sends its answer one byte every 200 ms, for ever.
    fn trickle() -> SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                std::thread::spawn(move || {
                    let _ = conn.write_all(b"HTTP/1.1 200 OK\r\n\r\n");
                    while conn.write_all(b"x").is_ok() {
                        std::thread::sleep(Duration::from_millis(200));
                    }
                });
            }
        });
        addr
    }

    #[test]
    fn a_peer_sending_a_byte_at_a_time_is_cut_off_at_the_deadline() {
        let endpoint = Endpoint::address(trickle());
        let url = Url::parse(&format!("http://{}/", endpoint.host)).unwrap();
        let started = Instant::now();
        let bounds = Bounds::new(Duration::from_secs(5), Duration::from_millis(1500));
        let err = client::Client::new(Default::default(), None)
            .get(&url, bounds, 1 << 20, &mut Vec::new())
            .unwrap_err();
        let took = started.elapsed();
        assert!(err.to_string().contains("past its deadline"), "{err}");
        assert!(took < Duration::from_secs(3), "{took:?}");
        let started = Instant::now();
        let bounds = Bounds::new(Duration::from_secs(5), Duration::from_millis(1500));
        assert!(request(&endpoint, "GET", "/", &[], bounds).is_err());
        assert!(started.elapsed() < Duration::from_secs(3));
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
    fn chunked_bodies_are_joined() {
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n\
              a;ext=1\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.body, b"abc0123456789");
        let r = parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
            .unwrap();
        assert!(r.body.is_empty());
        for raw in [
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabc\r\n0\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXY0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nabc",
        ] {
            assert!(
                parse_response(raw).is_err(),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn malformed_responses_are_refused() {
        for raw in [
            &b"HTTP/1.1 200 OK\r\n"[..],
            b"SSH-2.0-OpenSSH\r\n\r\n",
            b"HTTP/1.1 abc OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort",
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
