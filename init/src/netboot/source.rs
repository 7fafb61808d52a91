//! Where a network-booted host fetches `root.img` and `verity.img` from, and the HTTP(S)
//! download itself.
//!
//! The choice, in order: a URL on the kernel command line (`crust.netboot.url=`, signed
//! with the UKI, set at build time), then the DHCP lease's boot file when it is an
//! `http(s)://` URL (what a UEFI HTTP boot was handed: the images are in the same
//! folder), then TFTP from the server that granted the lease (from the boot file's folder,
//! when it names one). None of them is trusted: what comes is checked by dm-verity against
//! the signed manifest's root hash, so the choice is about reaching the images, not about
//! believing them.

use std::fmt;
use std::io::Write;
use std::net::Ipv4Addr;
use std::time::Duration;

use crate::http::client::{Client, Settings};
use crate::http::{Bounds, HttpError, Url};

/// The longest wait for one network step of an HTTP download (connect, one read).
pub const HTTP_STEP: Duration = Duration::from_secs(15);
/// The longest a whole HTTP download may take (one file).
pub const HTTP_TOTAL: Duration = Duration::from_secs(600);

/// Why a source was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// `crust.netboot.url=` on the (signed) kernel command line.
    CommandLine,
    /// The DHCP lease's boot file (UEFI HTTP boot's URL).
    BootFile,
}

/// Where the images come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// HTTP(S): the folder's URL (files are joined below its path).
    Http {
        /// The folder.
        folder: Url,
        /// Why this folder.
        origin: Origin,
    },
    /// TFTP from the DHCP server, from a folder on it (`""`: its root).
    Tftp {
        /// The server that granted the lease.
        server: Ipv4Addr,
        /// The boot file's folder, without a trailing `/`.
        folder: String,
    },
}

impl Source {
    /// The source's name for `file`, as the console shows it.
    pub fn describe(&self, file: &str) -> String {
        match self {
            Source::Http { folder, .. } => folder.with_path(file).to_text(),
            Source::Tftp { server, .. } => format!("tftp://{server}/{}", self.tftp_path(file)),
        }
    }

    /// The file's name on a TFTP server.
    pub fn tftp_path(&self, file: &str) -> String {
        match self {
            Source::Tftp { folder, .. } if !folder.is_empty() => format!("{folder}/{file}"),
            _ => file.to_owned(),
        }
    }

    /// How the console names the transport and why it was chosen.
    pub fn how(&self) -> &'static str {
        match self {
            Source::Http {
                origin: Origin::CommandLine,
                ..
            } => "by HTTP (crust.netboot.url on the kernel command line)",
            Source::Http {
                origin: Origin::BootFile,
                ..
            } => "by HTTP (the DHCP boot file's folder)",
            Source::Tftp { .. } => "by TFTP (the DHCP server)",
        }
    }
}

/// Why no source could be chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoSource {
    /// `crust.netboot.url=` is not an `http(s)://` URL.
    BadCommandLineUrl(String),
    /// The lease's boot file looks like a URL but is not one this client reads.
    BadBootFileUrl(String),
    /// No URL and no DHCP server to ask by TFTP.
    NoServer,
}

impl fmt::Display for NoSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NoSource::BadCommandLineUrl(why) => write!(
                f,
                "crust.netboot.url on the kernel command line: {why} (build the netboot UKI \
                 again with --netboot-url http://HOST/FOLDER or https://…)"
            ),
            NoSource::BadBootFileUrl(why) => write!(
                f,
                "the DHCP boot file: {why} (fix the DHCP server's boot file name)"
            ),
            NoSource::NoServer => {
                write!(
                    f,
                    "the DHCP lease names no server to fetch from, and there is no crust.netboot.url"
                )
            }
        }
    }
}

/// Chooses the source: the command line's URL, else the boot file's folder when the boot
/// file is an `http(s)://` URL, else TFTP from `server` (from the boot file's folder).
pub fn choose(
    command_line: Option<&str>,
    boot_file: Option<&str>,
    server: Option<Ipv4Addr>,
) -> Result<Source, NoSource> {
    if let Some(url) = command_line {
        let folder = Url::parse(url).map_err(NoSource::BadCommandLineUrl)?;
        return Ok(Source::Http {
            folder,
            origin: Origin::CommandLine,
        });
    }
    let boot_file = boot_file.map(str::trim).filter(|b| !b.is_empty());
    if let Some(file) = boot_file.filter(|b| is_url(b)) {
        // The scheme in lower case (URL schemes are case-insensitive).
        let (scheme, rest) = file.split_once("://").unwrap_or((file, ""));
        let file = format!("{}://{rest}", scheme.to_ascii_lowercase());
        let url = Url::parse(&file).map_err(NoSource::BadBootFileUrl)?;
        // The folder: the path up to its last `/` (query strings are not for us).
        let path = url.path.split(['?', '#']).next().unwrap_or("");
        let folder = path.rsplit_once('/').map_or("", |(dir, _)| dir).to_owned();
        return Ok(Source::Http {
            folder: Url {
                path: folder,
                ..url
            },
            origin: Origin::BootFile,
        });
    }
    let server = server.ok_or(NoSource::NoServer)?;
    let folder = boot_file
        .and_then(|b| b.rsplit_once('/'))
        .map_or("", |(dir, _)| dir)
        .trim_matches('/')
        .to_owned();
    Ok(Source::Tftp { server, folder })
}

/// Whether a boot file names an HTTP(S) URL (scheme case-insensitive, as URLs are).
fn is_url(boot_file: &str) -> bool {
    let lower = boot_file.get(..8).unwrap_or(boot_file).to_ascii_lowercase();
    lower.starts_with("http://") || lower.starts_with("https://")
}

/// Fetches `url` into `out`: at most `limit` bytes, each step within [`HTTP_STEP`], the whole
/// within [`HTTP_TOTAL`]; the built-in web roots for https (user-data is not read yet).
pub fn http_fetch(url: &Url, out: &mut dyn Write, limit: u64) -> Result<u64, HttpError> {
    let client = Client::new(Settings::default(), None);
    client.get(url, Bounds::new(HTTP_STEP, HTTP_TOTAL), limit, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);

    #[test]
    fn the_command_line_url_comes_first() {
        let s = choose(
            Some("https://boot.example:8443/crust/"),
            Some("http://192.168.77.1/other/netboot.efi"),
            Some(SERVER),
        )
        .unwrap();
        let Source::Http { folder, origin } = &s else {
            panic!("{s:?}")
        };
        assert_eq!(*origin, Origin::CommandLine);
        assert_eq!(
            folder.with_path("root.img").to_text(),
            "https://boot.example:8443/crust/root.img"
        );
        assert!(matches!(
            choose(Some("ftp://x/"), None, Some(SERVER)),
            Err(NoSource::BadCommandLineUrl(_))
        ));
    }

    #[test]
    fn an_http_boot_file_gives_its_folder() {
        let s = choose(
            None,
            Some("http://192.168.77.1/crust/netboot.efi"),
            Some(SERVER),
        )
        .unwrap();
        assert_eq!(s.describe("root.img"), "http://192.168.77.1/crust/root.img");
        assert!(matches!(
            s,
            Source::Http {
                origin: Origin::BootFile,
                ..
            }
        ));
        // At the server's root, with a port, upper-case scheme and a query string.
        let s = choose(None, Some("HTTP://boot:8080/netboot.efi?x=1"), None).unwrap();
        assert_eq!(s.describe("verity.img"), "http://boot:8080/verity.img");
        assert!(matches!(
            choose(None, Some("http://:80/netboot.efi"), Some(SERVER)),
            Err(NoSource::BadBootFileUrl(_))
        ));
    }

    #[test]
    fn otherwise_tftp_from_the_dhcp_server_in_the_boot_files_folder() {
        let s = choose(None, Some("netboot.efi"), Some(SERVER)).unwrap();
        assert_eq!(
            s,
            Source::Tftp {
                server: SERVER,
                folder: String::new()
            }
        );
        assert_eq!(s.tftp_path("root.img"), "root.img");
        let s = choose(None, Some("crust/x86/netboot.efi"), Some(SERVER)).unwrap();
        assert_eq!(s.tftp_path("root.img"), "crust/x86/root.img");
        assert_eq!(
            s.describe("root.img"),
            "tftp://192.168.77.1/crust/x86/root.img"
        );
        let s = choose(None, None, Some(SERVER)).unwrap();
        assert_eq!(s.tftp_path("verity.img"), "verity.img");
        assert_eq!(choose(None, None, None), Err(NoSource::NoServer));
        assert_eq!(
            choose(None, Some("netboot.efi"), None),
            Err(NoSource::NoServer)
        );
    }

    /// A loopback HTTP server answering one request with `answer`.
    fn serve(answer: Vec<u8>) -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            if let Ok((mut conn, _)) = listener.accept() {
                let mut buf = [0u8; 4096];
                let _ = std::io::Read::read(&mut conn, &mut buf);
                let _ = conn.write_all(&answer);
            }
        });
        port
    }

    #[test]
    fn https_refuses_a_server_whose_certificate_no_web_root_signed() {
        // A real TLS server (OpenSSL's s_server) with a self-signed certificate: the
        // stage-1 client trusts the built-in web roots only.
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        let made = std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ])
            .args(["-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"])
            .args(["-addext", "subjectAltName=IP:127.0.0.1", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("openssl");
        assert!(made.status.success(), "{made:?}");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = std::process::Command::new("openssl")
            .args(["s_server", "-quiet", "-www", "-accept"])
            .arg(port.to_string())
            .arg("-cert")
            .arg(&cert)
            .arg("-key")
            .arg(&key)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("openssl s_server");
        let url = Url::parse(&format!("https://127.0.0.1:{port}/root.img")).unwrap();
        let mut result = None;
        for _ in 0..100 {
            let mut out = Vec::new();
            match http_fetch(&url, &mut out, 1 << 20) {
                Err(HttpError::Connect(_)) => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                other => {
                    result = Some((other, out));
                    break;
                }
            }
        }
        let _ = server.kill();
        let _ = server.wait();
        let (result, out) = result.expect("s_server did not listen");
        let err = result.expect_err("a self-signed server was trusted");
        assert!(
            err.to_string().to_lowercase().contains("certificate"),
            "{err}"
        );
        assert!(out.is_empty());
    }

    #[test]
    fn the_download_is_bounded_by_the_manifests_length() {
        let body = vec![7u8; 5000];
        let mut answer =
            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        answer.extend_from_slice(&body);
        let port = serve(answer.clone());
        let url = Url::parse(&format!("http://127.0.0.1:{port}/root.img")).unwrap();
        let mut out = Vec::new();
        assert_eq!(http_fetch(&url, &mut out, 5000).unwrap(), 5000);
        assert_eq!(out, body);
        // One byte more than the manifest says: refused, not read on.
        let port = serve(answer);
        let url = Url::parse(&format!("http://127.0.0.1:{port}/root.img")).unwrap();
        let mut out = Vec::new();
        assert!(http_fetch(&url, &mut out, 4999).is_err());
        assert!(out.len() <= 4999);
    }
}
