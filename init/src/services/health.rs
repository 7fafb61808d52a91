//! Health checks: a TCP connection or an HTTP GET on the host's loopback (for services on
//! the host network), or a command run in the container through `crun exec`.
//!
//! HTTP goes through the init's small client ([`crate::http`]). Network checks run on a
//! thread of their own (the services task polls it), and each is over within half a second
//! in all, however slowly the service answers.

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// How long a network check may take.
pub const TIMEOUT: Duration = Duration::from_millis(500);

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
pub fn tcp(port: u16) -> bool {
    TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), TIMEOUT).is_ok()
}

/// Whether `GET path` on 127.0.0.1:`port` answers with a 2xx status.
pub fn http(port: u16, path: &str) -> bool {
    let endpoint = crate::http::Endpoint::address(SocketAddr::from(([127, 0, 0, 1], port)));
    // The whole check is over within TIMEOUT, however slowly the service answers.
    let bounds = crate::http::Bounds::new(TIMEOUT, TIMEOUT);
    crate::http::request(&endpoint, "GET", path, &[], bounds)
        .is_ok_and(|r| (200..300).contains(&r.status))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    #[test]
    fn checks_against_a_real_listener() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            // First the TCP check's connection, then the HTTP check's.
            drop(listener.accept().unwrap());
            let (mut conn, _) = listener.accept().unwrap();
            let mut buf = [0u8; 256];
            let n = conn.read(&mut buf).unwrap();
            let request = String::from_utf8_lossy(&buf[..n]).into_owned();
            conn.write_all(b"HTTP/1.0 200 OK\r\n\r\nok").unwrap();
            request
        });
        assert!(tcp(port));
        assert!(http(port, "/healthz"));
        assert!(
            server
                .join()
                .unwrap()
                .starts_with("GET /healthz HTTP/1.1\r\n")
        );

        let closed_port = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        assert!(!tcp(closed_port));
        assert!(!http(closed_port, "/"));
    }
}
