//! Reaching servers the way real networks need: `https://` ([`super::tls`]), an HTTP proxy
//! (`http_proxy`/`https_proxy`/`no_proxy` semantics, from user-data `[network.proxy]`), and
//! redirects (a bounded number, never from https down to http). The update agent and the
//! fleet client use it; every exchange keeps the step and overall bounds of [`Bounds`].
//!
//! Through a proxy, a plain-HTTP request goes to the proxy in absolute form (`GET
//! http://host/path`); an https one first opens a tunnel (`CONNECT host:443`) and does TLS
//! with the server itself through it, so the proxy sees neither the content nor a
//! certificate of its own.

use std::io::{Read, Write};
use std::sync::{Arc, OnceLock};

use rustls::ClientConfig;
use serde::{Deserialize, Serialize};

use super::tls::{self, Stream, Trust};
use super::{Bounded, Bounds, HttpError, Response, Scheme, Url};

/// Where the configuration step leaves these settings (JSON).
pub const RUN_HTTP: &str = "/run/crust/http.json";
/// Redirects followed at most.
pub const MAX_REDIRECTS: usize = 5;

/// How to reach servers (user-data `[network.proxy]` and `network.ca-certificates`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// The proxy for `http://` URLs.
    pub http_proxy: Option<String>,
    /// The proxy for `https://` URLs.
    pub https_proxy: Option<String>,
    /// Hosts reached directly: a name, `.domain` or `domain` (and its subdomains), an
    /// address, or `*`.
    pub no_proxy: Vec<String>,
    /// Extra certificate authorities (PEM).
    pub ca_certificates: Vec<String>,
}

impl Settings {
    /// Reads [`RUN_HTTP`]; the defaults (direct, built-in roots) without it.
    pub fn read() -> Self {
        std::fs::read(RUN_HTTP)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Whether `host` is reached without the proxy.
    pub fn bypasses(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.no_proxy.iter().any(|entry| {
            let entry = entry.trim().trim_end_matches('.').to_ascii_lowercase();
            let domain = entry.trim_start_matches('.');
            entry == "*"
                || host == domain
                || (!domain.is_empty() && host.ends_with(&format!(".{domain}")))
        })
    }
}

/// A client with its proxies and trust.
#[derive(Debug, Clone)]
pub struct Client {
    settings: Settings,
    trust: Trust,
    tls: Arc<OnceLock<Result<Arc<ClientConfig>, String>>>,
}

impl Client {
    /// A client for `settings` (proxies, extra authorities) and an optional client
    /// certificate and key (PEM).
    pub fn new(settings: Settings, client_cert: Option<(String, String)>) -> Self {
        let trust = Trust {
            ca_certificates: settings.ca_certificates.clone(),
            client: client_cert,
        };
        Self {
            settings,
            trust,
            tls: Arc::default(),
        }
    }

    /// The client of this boot's configuration.
    pub fn from_run() -> Self {
        Self::new(Settings::read(), None)
    }

    fn tls_config(&self) -> Result<Arc<ClientConfig>, HttpError> {
        self.tls
            .get_or_init(|| tls::config(&self.trust))
            .clone()
            .map_err(HttpError::Malformed)
    }

    /// The proxy for `url`, if it goes through one.
    fn proxy_for(&self, url: &Url) -> Result<Option<Url>, HttpError> {
        let proxy = match url.scheme {
            Scheme::Http => &self.settings.http_proxy,
            Scheme::Https => &self.settings.https_proxy,
        };
        match proxy {
            Some(p) if !self.settings.bypasses(&url.host) => Url::parse(p)
                .map(Some)
                .map_err(|e| HttpError::Malformed(format!("proxy: {e}"))),
            _ => Ok(None),
        }
    }

    /// A connection ready for a request to `url`, and the request target to send.
    fn open(
        &self,
        url: &Url,
        path: &str,
        bounds: Bounds,
    ) -> Result<(Box<dyn Stream>, String), HttpError> {
        let proxy = self.proxy_for(url)?;
        let via = proxy.as_ref().unwrap_or(url);
        let endpoint = via.endpoint()?;
        let mut tcp = Bounded::connect(&endpoint, bounds)?;
        match (url.scheme, &proxy) {
            (Scheme::Http, None) => Ok((Box::new(tcp), path.to_owned())),
            (Scheme::Http, Some(_)) => {
                Ok((Box::new(tcp), format!("http://{}{path}", url.authority())))
            }
            (Scheme::Https, proxied) => {
                if proxied.is_some() {
                    tunnel(&mut tcp, url)?;
                }
                let stream = tls::connect(self.tls_config()?, &url.host, tcp)
                    .map_err(HttpError::Malformed)?;
                Ok((stream, path.to_owned()))
            }
        }
    }

    /// `GET url`, following redirects, the body streamed into `sink` (at most `limit`
    /// bytes). Anything but a final `200` is an error. Returns the body's length.
    pub fn get(
        &self,
        url: &Url,
        bounds: Bounds,
        limit: u64,
        sink: &mut dyn Write,
    ) -> Result<u64, HttpError> {
        let mut current = url.clone();
        for _ in 0..=MAX_REDIRECTS {
            let path = if current.path.is_empty() {
                "/".to_owned()
            } else {
                current.path.clone()
            };
            let (mut stream, target) = self.open(&current, &path, bounds)?;
            let request = super::request_bytes(&current.authority(), "GET", &target, &[], 0);
            stream
                .write_all(request.as_bytes())
                .map_err(HttpError::Io)?;
            let head = super::read_head(&mut stream)?;
            match head.status {
                200 => return super::stream_body(&mut stream, &head, &current.path, limit, sink),
                301 | 302 | 303 | 307 | 308 => {
                    let location = head.header("location").ok_or_else(|| {
                        HttpError::Malformed(format!(
                            "{}: HTTP {} without a Location",
                            current.path, head.status
                        ))
                    })?;
                    current = redirect(&current, location)?;
                }
                status => {
                    return Err(HttpError::Malformed(format!(
                        "{}: HTTP status {status}",
                        current.path
                    )));
                }
            }
        }
        Err(HttpError::Malformed(format!(
            "{}: more than {MAX_REDIRECTS} redirects",
            url.path
        )))
    }

    /// One request with a body (etcd's gateway): no redirects; the response at most
    /// [`super::MAX_RESPONSE`] bytes.
    pub fn send(
        &self,
        method: &str,
        url: &Url,
        headers: &[(&str, &str)],
        body: &[u8],
        bounds: Bounds,
    ) -> Result<Response, HttpError> {
        let path = if url.path.is_empty() {
            "/".to_owned()
        } else {
            url.path.clone()
        };
        let (mut stream, target) = self.open(url, &path, bounds)?;
        let mut bytes =
            super::request_bytes(&url.authority(), method, &target, headers, body.len())
                .into_bytes();
        bytes.extend_from_slice(body);
        stream.write_all(&bytes).map_err(HttpError::Io)?;
        let mut raw = Vec::new();
        match stream
            .take(super::MAX_RESPONSE as u64 + 1)
            .read_to_end(&mut raw)
        {
            Ok(_) => {}
            // A TLS server that closes without close_notify: what came is what there is.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
            Err(e) => return Err(HttpError::Io(e)),
        }
        if raw.len() > super::MAX_RESPONSE {
            return Err(HttpError::Malformed(format!(
                "response larger than {} bytes",
                super::MAX_RESPONSE
            )));
        }
        super::parse_response(&raw)
    }
}

/// Asks a proxy for a tunnel to `url`'s server (`CONNECT host:port`).
fn tunnel(tcp: &mut Bounded, url: &Url) -> Result<(), HttpError> {
    let authority = format!(
        "{}:{}",
        if url.host.contains(':') {
            format!("[{}]", url.host)
        } else {
            url.host.clone()
        },
        url.port
    );
    let request = format!(
        "CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: crust-init/{}\r\n\r\n",
        crate::VERSION
    );
    tcp.write_all(request.as_bytes()).map_err(HttpError::Io)?;
    let head = super::read_head(tcp)?;
    if !(200..300).contains(&head.status) {
        return Err(HttpError::Malformed(format!(
            "the proxy refused a tunnel to {authority}: HTTP status {}",
            head.status
        )));
    }
    if !head.rest.is_empty() {
        return Err(HttpError::Malformed(
            "the proxy sent data before the tunnel was up".into(),
        ));
    }
    Ok(())
}

/// Where a redirect from `from` to `location` leads: an absolute URL, or a path on the same
/// server. Never from https down to http.
pub fn redirect(from: &Url, location: &str) -> Result<Url, HttpError> {
    let to = if location.starts_with("http://") || location.starts_with("https://") {
        Url::parse(location).map_err(HttpError::Malformed)?
    } else if location.starts_with('/') {
        Url {
            path: location.to_owned(),
            ..from.clone()
        }
    } else {
        return Err(HttpError::Malformed(format!(
            "a redirect to {location:?}, which is not an absolute URL or path"
        )));
    };
    if from.scheme == Scheme::Https && to.scheme == Scheme::Http {
        return Err(HttpError::Malformed(format!(
            "a redirect from https to {location:?} (plain HTTP) is refused"
        )));
    }
    Ok(to)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_proxy_matches_names_domains_and_everything() {
        let s = Settings {
            no_proxy: vec!["localhost".into(), ".internal".into(), "example.com".into()],
            ..Settings::default()
        };
        assert!(s.bypasses("localhost"));
        assert!(s.bypasses("repo.internal"));
        assert!(s.bypasses("a.example.com") && s.bypasses("EXAMPLE.COM."));
        assert!(!s.bypasses("notexample.com"));
        assert!(!s.bypasses("updates.test"));
        let all = Settings {
            no_proxy: vec!["*".into()],
            ..Settings::default()
        };
        assert!(all.bypasses("anything"));
    }

    #[test]
    fn redirects_stay_on_https_and_resolve_paths() {
        let https = Url::parse("https://updates.test/old").unwrap();
        assert_eq!(
            redirect(&https, "/crust/channels/x").unwrap().to_text(),
            "https://updates.test/crust/channels/x"
        );
        assert_eq!(
            redirect(&https, "https://cdn.test:8443/a")
                .unwrap()
                .to_text(),
            "https://cdn.test:8443/a"
        );
        assert!(redirect(&https, "http://updates.test/a").is_err());
        assert!(redirect(&https, "relative/path").is_err());
        let http = Url::parse("http://updates.test/old").unwrap();
        assert!(redirect(&http, "https://updates.test/new").is_ok());
    }

    /// A loopback server answering each connection with the next of `answers`, recording
    /// what it was asked.
    fn server(answers: Vec<String>) -> (u16, std::sync::mpsc::Receiver<String>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for answer in answers {
                let Ok((mut conn, _)) = listener.accept() else {
                    return;
                };
                let mut buf = [0u8; 4096];
                let n = conn.read(&mut buf).unwrap_or(0);
                let _ = tx.send(String::from_utf8_lossy(&buf[..n]).into_owned());
                let _ = conn.write_all(answer.as_bytes());
            }
        });
        (port, rx)
    }

    #[test]
    fn a_proxy_gets_absolute_requests_and_redirects_are_followed() {
        let (port, asked) = server(vec![
            "HTTP/1.1 301 Moved\r\nLocation: /crust/index\r\nContent-Length: 0\r\n\r\n".into(),
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello".into(),
        ]);
        let client = Client::new(
            Settings {
                http_proxy: Some(format!("http://127.0.0.1:{port}")),
                ..Settings::default()
            },
            None,
        );
        let url = Url::parse("http://updates.test:8080/old").unwrap();
        let mut body = Vec::new();
        let bounds = Bounds::new(
            std::time::Duration::from_secs(5),
            std::time::Duration::from_secs(10),
        );
        assert_eq!(client.get(&url, bounds, 100, &mut body).unwrap(), 5);
        assert_eq!(body, b"hello");
        let first = asked.recv().unwrap();
        assert!(
            first.starts_with(
                "GET http://updates.test:8080/old HTTP/1.1\r\nHost: updates.test:8080\r\n"
            ),
            "{first}"
        );
        let second = asked.recv().unwrap();
        assert!(
            second.starts_with("GET http://updates.test:8080/crust/index HTTP/1.1\r\n"),
            "{second}"
        );
    }
}
