//! Health checks: a TCP connection or an HTTP GET on the host's loopback (for services on
//! the host network), or a command run in the container through `crun exec`.
//!
//! Network checks are bounded to half a second so the main loop never stalls for long; a
//! loopback connection is accepted or refused at once when the service is there or not.

use std::io::{Read, Write};
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
    let Ok(mut stream) =
        TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), TIMEOUT)
    else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(TIMEOUT));
    let _ = stream.set_write_timeout(Some(TIMEOUT));
    let request =
        format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: crust-init\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 32];
    let mut got = 0;
    while got < 12 {
        match stream.read(&mut head[got..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    status_is_success(&head[..got])
}

/// Whether an HTTP response starts with a 2xx status line.
pub fn status_is_success(head: &[u8]) -> bool {
    let text = String::from_utf8_lossy(head);
    let mut parts = text.split(' ');
    matches!(parts.next(), Some(v) if v.starts_with("HTTP/1."))
        && parts
            .next()
            .is_some_and(|code| code.len() == 3 && code.starts_with('2'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn status_lines() {
        assert!(status_is_success(b"HTTP/1.0 200 OK\r\n"));
        assert!(status_is_success(b"HTTP/1.1 204 No Content"));
        assert!(!status_is_success(b"HTTP/1.0 404 Not Found"));
        assert!(!status_is_success(b"SSH-2.0-OpenSSH"));
        assert!(!status_is_success(b""));
    }

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
                .starts_with("GET /healthz HTTP/1.0\r\n")
        );

        let closed_port = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        assert!(!tcp(closed_port));
        assert!(!http(closed_port, "/"));
    }
}
