//! The EC2 instance metadata service, IMDSv2: `PUT /latest/api/token` with
//! `X-aws-ec2-metadata-token-ttl-seconds` for a session token, then
//! `GET /latest/user-data` with `X-aws-ec2-metadata-token`.
//!
//! Only asked on machines whose firmware says they are EC2 instances ([`is_ec2`]): probing
//! a link-local address on every other machine would cost every boot a timeout, and send
//! packets where nothing should answer. Failures are retried with backoff, within a bound.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::time::Duration;

use crate::http::{self, HttpError};

/// Where IMDS listens.
pub const ADDRESS: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(169, 254, 169, 254), 80));
/// The token request's TTL header.
pub const TTL_HEADER: &str = "X-aws-ec2-metadata-token-ttl-seconds";
/// The header carrying the token.
pub const TOKEN_HEADER: &str = "X-aws-ec2-metadata-token";
/// The token's lifetime we ask for: long enough for the few requests of a boot.
pub const TOKEN_TTL: u32 = 300;
/// The user-data path.
pub const USER_DATA: &str = "/latest/user-data";

/// How hard to try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// Attempts in all.
    pub attempts: u32,
    /// Pause after the first failure; doubled after each further one.
    pub first_pause: Duration,
    /// Bound on each connect and read.
    pub timeout: Duration,
}

/// The boot's policy: 5 attempts, pauses of 0.25, 0.5, 1 and 2 s, 2 s per step — at most
/// about 14 s when IMDS never answers.
pub const BOOT_RETRY: Retry = Retry {
    attempts: 5,
    first_pause: Duration::from_millis(250),
    timeout: Duration::from_secs(2),
};

/// Why IMDS gave no user-data.
#[derive(Debug)]
pub enum ImdsError {
    /// No answer after every attempt.
    Unreachable(HttpError),
    /// An answer that is not what IMDSv2 gives.
    Refused {
        /// The request.
        what: &'static str,
        /// Its status code.
        status: u16,
    },
}

impl fmt::Display for ImdsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImdsError::Unreachable(e) => write!(f, "no answer from {ADDRESS}: {e}"),
            ImdsError::Refused { what, status } => {
                write!(f, "{what} was answered with HTTP {status}")
            }
        }
    }
}

impl std::error::Error for ImdsError {}

/// Whether the firmware says this is an EC2 instance: the DMI system vendor of Nitro
/// instances, or the UUID and BIOS version of Xen-based ones (as cloud-init checks).
pub fn is_ec2(dmi: &Path) -> bool {
    let read = |name: &str| {
        std::fs::read_to_string(dmi.join(name))
            .map(|s| s.trim().to_ascii_lowercase())
            .unwrap_or_default()
    };
    read("sys_vendor") == "amazon ec2"
        || read("product_uuid").starts_with("ec2")
        || read("bios_version").contains("amazon")
}

/// Fetches the user-data at `addr`: `Ok(None)` when the instance has none (HTTP 404).
pub fn user_data(addr: SocketAddr, retry: Retry) -> Result<Option<Vec<u8>>, ImdsError> {
    let mut pause = retry.first_pause;
    let mut attempt = 1;
    loop {
        match try_once(addr, retry.timeout) {
            Ok(found) => return Ok(found),
            Err(Attempt::Final(e)) => return Err(e),
            Err(Attempt::Again(e)) if attempt >= retry.attempts => return Err(e),
            Err(Attempt::Again(_)) => {
                std::thread::sleep(pause);
                pause *= 2;
                attempt += 1;
            }
        }
    }
}

/// An attempt's failure: worth another try, or not.
pub(crate) enum Attempt {
    Again(ImdsError),
    Final(ImdsError),
}

fn try_once(addr: SocketAddr, timeout: Duration) -> Result<Option<Vec<u8>>, Attempt> {
    let endpoint = http::Endpoint::address(addr);
    // Each request is over within its timeout, however the service answers.
    exchange(&mut |method, path, headers| {
        let bounds = http::Bounds::new(timeout, timeout);
        http::request(&endpoint, method, path, headers, bounds)
    })
}

/// One request to IMDS: method, path, header fields.
pub(crate) type Request<'a> =
    dyn FnMut(&str, &str, &[(&str, &str)]) -> Result<http::Response, HttpError> + 'a;

/// The two requests of an attempt, sent through `request`, and what their answers mean.
pub(crate) fn exchange(request: &mut Request<'_>) -> Result<Option<Vec<u8>>, Attempt> {
    let ttl = TOKEN_TTL.to_string();
    let token = request("PUT", "/latest/api/token", &[(TTL_HEADER, &ttl)])
        .map_err(|e| Attempt::Again(ImdsError::Unreachable(e)))?;
    match token.status {
        200 => {}
        // Throttled or starting up: try again. Anything else will not change.
        429 | 500..=599 => {
            return Err(Attempt::Again(ImdsError::Refused {
                what: "the token request",
                status: token.status,
            }));
        }
        status => {
            return Err(Attempt::Final(ImdsError::Refused {
                what: "the token request",
                status,
            }));
        }
    }
    let token = String::from_utf8_lossy(&token.body).trim().to_owned();
    // The token goes back as a header value: a line break in it would add header lines
    // of the answerer's choosing to the next request.
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Attempt::Final(ImdsError::Unreachable(
            HttpError::Malformed(
                "the session token is not a header value (empty, or not visible ASCII)".into(),
            ),
        )));
    }
    let data = request("GET", USER_DATA, &[(TOKEN_HEADER, &token)])
        .map_err(|e| Attempt::Again(ImdsError::Unreachable(e)))?;
    match data.status {
        200 => Ok(Some(data.body)),
        404 => Ok(None),
        // 401: the token expired in between (or the clock jumped): a fresh one next time.
        401 | 429 | 500..=599 => Err(Attempt::Again(ImdsError::Refused {
            what: "the user-data request",
            status: data.status,
        })),
        status => Err(Attempt::Final(ImdsError::Refused {
            what: "the user-data request",
            status,
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crust_vm::imds::{Emulator, TokenUse};
    use std::net::TcpListener;
    use std::time::Instant;

    /// The emulator behind a real TCP listener on 127.0.0.1, one thread per connection, as
    /// QEMU runs one handler per guest connection.
    fn serve(emulator: &Emulator) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let emulator = emulator.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let emulator = emulator.clone();
                std::thread::spawn(move || {
                    let reader = stream.try_clone().unwrap();
                    let _ = emulator.serve(std::io::BufReader::new(reader), stream);
                });
            }
        });
        addr
    }

    const FAST: Retry = Retry {
        attempts: 3,
        first_pause: Duration::from_millis(10),
        timeout: Duration::from_secs(2),
    };

    #[test]
    fn fetches_user_data_with_a_token() {
        let dir = tempfile::tempdir().unwrap();
        let emulator = Emulator::create(dir.path(), Some(b"version = 1\n")).unwrap();
        let data = user_data(serve(&emulator), FAST).unwrap();
        assert_eq!(data.as_deref(), Some(&b"version = 1\n"[..]));
        let log = emulator.requests().unwrap();
        assert_eq!(log.len(), 2, "{log:?}");
        assert_eq!((log[0].method.as_str(), log[0].status), ("PUT", 200));
        assert_eq!(log[1].path, USER_DATA);
        assert_eq!((log[1].token, log[1].status), (TokenUse::Valid, 200));
    }

    #[test]
    fn a_token_that_would_inject_header_lines_is_refused() {
        let mut sent = Vec::new();
        let got = exchange(&mut |method, path, headers| {
            sent.push((method.to_owned(), path.to_owned()));
            assert!(headers.iter().all(|(_, v)| !v.contains(['\r', '\n'])));
            http::parse_response(
                b"HTTP/1.1 200 OK\r\nContent-Length: 22\r\n\r\nabc\r\nX-Injected: yes\r\n",
            )
        });
        assert!(matches!(got, Err(Attempt::Final(_))));
        assert_eq!(sent.len(), 1, "no second request: {sent:?}");
    }

    #[test]
    fn no_user_data_is_not_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let emulator = Emulator::create(dir.path(), None).unwrap();
        assert_eq!(user_data(serve(&emulator), FAST).unwrap(), None);
        assert_eq!(emulator.requests().unwrap()[1].status, 404);
    }

    #[test]
    fn a_silent_address_fails_within_the_bound() {
        // A port nothing listens on: refused at once, every attempt.
        let free = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = free.local_addr().unwrap();
        drop(free);
        let started = Instant::now();
        let err = user_data(addr, FAST).unwrap_err();
        assert!(matches!(err, ImdsError::Unreachable(_)), "{err}");
        // Pauses 10 + 20 ms between three attempts.
        assert!(started.elapsed() >= Duration::from_millis(30));
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn ec2_is_recognised_from_dmi() {
        let dir = tempfile::tempdir().unwrap();
        let dmi = dir.path();
        assert!(!is_ec2(dmi));
        std::fs::write(dmi.join("sys_vendor"), "QEMU\n").unwrap();
        assert!(!is_ec2(dmi));
        std::fs::write(dmi.join("sys_vendor"), "Amazon EC2\n").unwrap();
        assert!(is_ec2(dmi));
        std::fs::remove_file(dmi.join("sys_vendor")).unwrap();
        std::fs::write(
            dmi.join("product_uuid"),
            "EC2E1916-9099-7CAF-FD21-012345ABCDEF\n",
        )
        .unwrap();
        assert!(is_ec2(dmi));
    }
}
