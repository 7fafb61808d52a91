//! An EC2 instance metadata service (IMDSv2 only) for test machines, served to the guest
//! at 169.254.169.254:80 through QEMU's user-mode network.
//!
//! QEMU's `guestfwd=tcp:169.254.169.254:80-cmd:PROGRAM` starts PROGRAM for every connection
//! the guest opens, with the connection on its standard input and output; PROGRAM calls
//! [`Emulator::serve`]. (A `chardev` guestfwd would accept a single connection only.)
//! QEMU accepts a guestfwd address only inside the user network, so a machine with the
//! emulator gets [`NETWORK`] (169.254.169.0/24: DHCP gives the guest 169.254.169.15, the
//! gateway is 169.254.169.2) instead of 10.0.2.0/24. The
//! state that must outlive one connection lives in a folder: the user-data, the issued
//! tokens with their expiry, and a log of every request with the answer given, which tests
//! read to see what the guest did.
//!
//! The token rules are EC2's with `HttpTokens=required`:
//! - `PUT /latest/api/token` needs `X-aws-ec2-metadata-token-ttl-seconds` of 1..=21600
//!   (400 without it or out of range) and is refused with 403 when it carries
//!   `X-Forwarded-For` (a request relayed by a proxy);
//! - every `GET` needs `X-aws-ec2-metadata-token` with an issued, unexpired token: 401
//!   otherwise;
//! - other methods get 405; unknown paths, and user-data when there is none, 404.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

/// The address the guest connects to.
pub const ADDRESS: &str = "169.254.169.254";
/// The port.
pub const PORT: u16 = 80;
/// The user network of a machine with the emulator (QEMU's `net=`).
pub const NETWORK: &str = "169.254.169.0/24";
/// The header a token request carries its lifetime in.
pub const TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
/// The header a metadata request carries its token in.
pub const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";
/// The longest token lifetime EC2 grants, in seconds.
pub const MAX_TTL: u64 = 21_600;
/// The instance id the emulator reports.
pub const INSTANCE_ID: &str = "i-0c0ffee0c0ffee000";
/// The SMBIOS type-1 fields that make a QEMU machine look like an EC2 (Nitro) instance to
/// its firmware tables, as `-smbios` takes them.
pub const EC2_SMBIOS: &str = "type=1,manufacturer=Amazon EC2,product=crust-imds-emulator";

const USER_DATA_FILE: &str = "user-data";
const TOKENS_FILE: &str = "tokens";
const LOG_FILE: &str = "requests.log";
/// Bound on a request head, so a broken client cannot make the handler grow.
const MAX_HEAD: usize = 16 << 10;

/// How a request's token looked to the emulator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenUse {
    /// No token header.
    Missing,
    /// A token this emulator issued, not expired.
    Valid,
    /// A token it issued that has expired.
    Expired,
    /// A token it never issued.
    Unknown,
    /// A token request (`PUT`), which carries none.
    NotNeeded,
}

impl TokenUse {
    fn as_str(self) -> &'static str {
        match self {
            TokenUse::Missing => "missing",
            TokenUse::Valid => "valid",
            TokenUse::Expired => "expired",
            TokenUse::Unknown => "unknown",
            TokenUse::NotNeeded => "-",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [
            TokenUse::Missing,
            TokenUse::Valid,
            TokenUse::Expired,
            TokenUse::Unknown,
            TokenUse::NotNeeded,
        ]
        .into_iter()
        .find(|t| t.as_str() == s)
    }
}

/// One logged request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    /// Method.
    pub method: String,
    /// Path.
    pub path: String,
    /// The token it carried.
    pub token: TokenUse,
    /// The status answered.
    pub status: u16,
}

impl fmt::Display for Logged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} token={} -> {}",
            self.method,
            self.path,
            self.token.as_str(),
            self.status
        )
    }
}

/// The emulator's state folder.
#[derive(Debug, Clone)]
pub struct Emulator {
    dir: PathBuf,
}

impl Emulator {
    /// Prepares `dir` to serve `user_data` (none: user-data answers 404), forgetting any
    /// earlier tokens and log.
    pub fn create(dir: &Path, user_data: Option<&[u8]>) -> Result<Self> {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let data = dir.join(USER_DATA_FILE);
        match user_data {
            Some(bytes) => fs::write(&data, bytes)?,
            None => {
                let _ = fs::remove_file(&data);
            }
        }
        fs::write(dir.join(TOKENS_FILE), "")?;
        fs::write(dir.join(LOG_FILE), "")?;
        Ok(Self::open(dir))
    }

    /// The emulator whose state is in `dir` (as a per-connection handler opens it).
    pub fn open(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
        }
    }

    /// The state folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Sets `dir` up to serve `user_data` and makes `config`'s machine an EC2 look-alike
    /// that reaches it: the guestfwd running `handler` (program and arguments, to which the
    /// state folder is appended) per connection, the user network around 169.254.169.254,
    /// and the SMBIOS vendor that tells the init it runs on EC2.
    pub fn attach(
        config: &mut crate::Config,
        dir: &Path,
        user_data: Option<&[u8]>,
        handler: &[String],
    ) -> Result<Self> {
        let emulator = Self::create(dir, user_data)?;
        let mut command = handler.to_vec();
        command.push(dir.display().to_string());
        config.guestfwds.push(Self::guestfwd(&command));
        config.user_network = Some(NETWORK.into());
        config.smbios.push(EC2_SMBIOS.into());
        Ok(emulator)
    }

    /// QEMU's `guestfwd` value that runs `handler` (program and arguments) per connection.
    /// Arguments are quoted for the shell-like splitting QEMU applies, commas doubled for
    /// QEMU's option parser.
    pub fn guestfwd(handler: &[String]) -> String {
        let quoted: Vec<String> = handler
            .iter()
            .map(|a| format!("'{}'", a.replace('\'', r"'\''")))
            .collect();
        format!("tcp:{ADDRESS}:{PORT}-cmd:{}", quoted.join(" ")).replace(',', ",,")
    }

    /// Serves one connection: requests until the client closes it or asks to.
    pub fn serve(&self, input: impl Read, mut output: impl Write) -> Result<()> {
        let mut input = BufReader::new(input);
        loop {
            let Some(request) = read_request(&mut input)? else {
                return Ok(());
            };
            let (status, headers, body, token) = self.answer(&request);
            self.log(&Logged {
                method: request.method.clone(),
                path: request.path.clone(),
                token,
                status,
            })?;
            write_response(&mut output, status, &headers, &body)?;
            if request.close {
                return Ok(());
            }
        }
    }

    /// Every request served so far, in order.
    pub fn requests(&self) -> Result<Vec<Logged>> {
        let text = fs::read_to_string(self.dir.join(LOG_FILE))?;
        text.lines()
            .map(|line| {
                let parse = || -> Option<Logged> {
                    let mut f = line.split(' ');
                    let method = f.next()?.to_owned();
                    let path = f.next()?.to_owned();
                    let token = TokenUse::parse(f.next()?.strip_prefix("token=")?)?;
                    let status = f.nth(1)?.parse().ok()?;
                    Some(Logged {
                        method,
                        path,
                        token,
                        status,
                    })
                };
                parse().with_context(|| format!("bad log line {line:?}"))
            })
            .collect()
    }

    fn answer(&self, r: &Request) -> (u16, Vec<(String, String)>, Vec<u8>, TokenUse) {
        let text = |s: &str| s.as_bytes().to_vec();
        match r.method.as_str() {
            "PUT" if r.path == "/latest/api/token" => {
                if r.header("x-forwarded-for").is_some() {
                    return (403, vec![], text("Forbidden"), TokenUse::NotNeeded);
                }
                let ttl = r
                    .header(TTL_HEADER)
                    .and_then(|v| v.parse::<u64>().ok())
                    .filter(|t| (1..=MAX_TTL).contains(t));
                let Some(ttl) = ttl else {
                    return (400, vec![], text("Bad Request"), TokenUse::NotNeeded);
                };
                match self.issue(ttl) {
                    Ok(token) => (
                        200,
                        vec![(
                            "X-Aws-Ec2-Metadata-Token-Ttl-Seconds".into(),
                            ttl.to_string(),
                        )],
                        text(&token),
                        TokenUse::NotNeeded,
                    ),
                    Err(_) => (
                        500,
                        vec![],
                        text("Internal Server Error"),
                        TokenUse::NotNeeded,
                    ),
                }
            }
            "PUT" => (404, vec![], text("Not Found"), TokenUse::NotNeeded),
            "GET" | "HEAD" => {
                let token = match r.header(TOKEN_HEADER) {
                    None => TokenUse::Missing,
                    Some(t) => self.check(t),
                };
                if token != TokenUse::Valid {
                    return (401, vec![], text("Unauthorized"), token);
                }
                let (status, body) = self.content(&r.path);
                let body = if r.method == "HEAD" { vec![] } else { body };
                (status, vec![], body, token)
            }
            _ => (405, vec![], text("Method Not Allowed"), TokenUse::NotNeeded),
        }
    }

    fn content(&self, path: &str) -> (u16, Vec<u8>) {
        let listing = |items: &[&str]| (200, items.join("\n").into_bytes());
        match path.trim_end_matches('/') {
            "/latest" => listing(&["dynamic", "meta-data", "user-data"]),
            "/latest/meta-data" => listing(&["instance-id", "local-hostname"]),
            "/latest/meta-data/instance-id" => (200, INSTANCE_ID.as_bytes().to_vec()),
            "/latest/meta-data/local-hostname" => (200, b"ip-10-0-2-15.ec2.internal".to_vec()),
            "/latest/user-data" => match fs::read(self.dir.join(USER_DATA_FILE)) {
                Ok(bytes) => (200, bytes),
                Err(_) => (404, b"Not Found".to_vec()),
            },
            _ => (404, b"Not Found".to_vec()),
        }
    }

    fn issue(&self, ttl: u64) -> Result<String> {
        let mut raw = [0u8; 32];
        getrandom::fill(&mut raw).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        let expiry = now_ms() + ttl * 1000;
        // One write of one line with O_APPEND: concurrent handlers do not interleave.
        let mut file = OpenOptions::new()
            .append(true)
            .open(self.dir.join(TOKENS_FILE))?;
        file.write_all(format!("{token} {expiry}\n").as_bytes())?;
        Ok(token)
    }

    fn check(&self, token: &str) -> TokenUse {
        let tokens = fs::read_to_string(self.dir.join(TOKENS_FILE)).unwrap_or_default();
        let expiry = tokens.lines().find_map(|line| {
            let (t, expiry) = line.split_once(' ')?;
            (t == token).then(|| expiry.parse::<u64>().ok()).flatten()
        });
        match expiry {
            None => TokenUse::Unknown,
            Some(e) if e <= now_ms() => TokenUse::Expired,
            Some(_) => TokenUse::Valid,
        }
    }

    /// Makes every issued token expire now (as the TTL running out would).
    pub fn expire_tokens(&self) -> Result<()> {
        let tokens = fs::read_to_string(self.dir.join(TOKENS_FILE))?;
        let expired: String = tokens
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(t, _)| format!("{t} 0\n"))
            .collect();
        fs::write(self.dir.join(TOKENS_FILE), expired)?;
        Ok(())
    }

    fn log(&self, entry: &Logged) -> Result<()> {
        let mut file = OpenOptions::new()
            .append(true)
            .create(true)
            .open(self.dir.join(LOG_FILE))?;
        file.write_all(format!("{entry}\n").as_bytes())?;
        Ok(())
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64
}

/// One request head (bodies are read and ignored).
#[derive(Debug)]
struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    close: bool,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads the next request; `None` at a clean end of the connection.
fn read_request(input: &mut impl BufRead) -> Result<Option<Request>> {
    let mut head = Vec::new();
    loop {
        let mut line = Vec::new();
        let n = input
            .by_ref()
            .take(MAX_HEAD as u64)
            .read_until(b'\n', &mut line)?;
        if n == 0 {
            if head.is_empty() {
                return Ok(None);
            }
            bail!("connection closed inside a request head");
        }
        if line == b"\r\n" || line == b"\n" {
            if head.is_empty() {
                continue;
            }
            break;
        }
        head.push(String::from_utf8_lossy(&line).trim_end().to_owned());
        if head.iter().map(String::len).sum::<usize>() > MAX_HEAD {
            bail!("request head larger than {MAX_HEAD} bytes");
        }
    }
    let mut first = head[0].split(' ');
    let (method, path, version) = (
        first.next().unwrap_or_default().to_owned(),
        first.next().unwrap_or_default().to_owned(),
        first.next().unwrap_or_default().to_owned(),
    );
    let headers: Vec<(String, String)> = head[1..]
        .iter()
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut request = Request {
        close: version != "HTTP/1.1",
        method,
        path,
        headers,
    };
    if request
        .header("connection")
        .is_some_and(|c| c.eq_ignore_ascii_case("close"))
    {
        request.close = true;
    }
    let length: u64 = request
        .header("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    std::io::copy(&mut input.by_ref().take(length), &mut std::io::sink())?;
    Ok(Some(request))
}

fn write_response(
    out: &mut impl Write,
    status: u16,
    headers: &[(String, String)],
    body: &[u8],
) -> Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Internal Server Error",
    };
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         Server: EC2ws\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    out.write_all(head.as_bytes())?;
    out.write_all(body)?;
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs one connection's worth of raw request bytes through the emulator.
    fn exchange(e: &Emulator, raw: &str) -> String {
        let mut out = Vec::new();
        e.serve(raw.as_bytes(), &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    fn token(e: &Emulator, ttl: &str) -> String {
        let reply = exchange(
            e,
            &format!(
                "PUT /latest/api/token HTTP/1.1\r\nX-aws-ec2-metadata-token-ttl-seconds: {ttl}\r\nConnection: close\r\n\r\n"
            ),
        );
        assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
        assert!(reply.contains(&format!("X-Aws-Ec2-Metadata-Token-Ttl-Seconds: {ttl}\r\n")));
        reply.split("\r\n\r\n").nth(1).unwrap().to_owned()
    }

    fn get(e: &Emulator, path: &str, token: Option<&str>) -> String {
        let header = token
            .map(|t| format!("X-aws-ec2-metadata-token: {t}\r\n"))
            .unwrap_or_default();
        exchange(
            e,
            &format!("GET {path} HTTP/1.1\r\n{header}Connection: close\r\n\r\n"),
        )
    }

    #[test]
    fn tokens_are_enforced_as_ec2_does() {
        let dir = tempfile::tempdir().unwrap();
        let e = Emulator::create(dir.path(), Some(b"version = 1\n")).unwrap();
        // No token, a made-up token: 401.
        assert!(get(&e, "/latest/user-data", None).starts_with("HTTP/1.1 401 "));
        assert!(get(&e, "/latest/user-data", Some("abc")).starts_with("HTTP/1.1 401 "));
        // The TTL header is required and bounded.
        for bad in [
            "PUT /latest/api/token HTTP/1.1\r\n\r\n",
            "PUT /latest/api/token HTTP/1.1\r\nX-aws-ec2-metadata-token-ttl-seconds: 0\r\n\r\n",
            "PUT /latest/api/token HTTP/1.1\r\nX-aws-ec2-metadata-token-ttl-seconds: 21601\r\n\r\n",
            "PUT /latest/api/token HTTP/1.1\r\nX-aws-ec2-metadata-token-ttl-seconds: soon\r\n\r\n",
        ] {
            assert!(exchange(&e, bad).starts_with("HTTP/1.1 400 "), "{bad}");
        }
        let relayed = "PUT /latest/api/token HTTP/1.1\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n";
        assert!(exchange(&e, relayed).starts_with("HTTP/1.1 403 "));
        // A real token works, for user-data and meta-data.
        let t = token(&e, "21600");
        let reply = get(&e, "/latest/user-data", Some(&t));
        assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
        assert!(reply.ends_with("\r\n\r\nversion = 1\n"));
        assert!(get(&e, "/latest/meta-data/instance-id", Some(&t)).ends_with(INSTANCE_ID));
        assert!(get(&e, "/latest/nothing", Some(&t)).starts_with("HTTP/1.1 404 "));
        assert!(
            exchange(&e, "POST /latest/user-data HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405 ")
        );
        // Until it expires.
        e.expire_tokens().unwrap();
        assert!(get(&e, "/latest/user-data", Some(&t)).starts_with("HTTP/1.1 401 "));

        let log = e.requests().unwrap();
        let seen: Vec<(TokenUse, u16)> = log.iter().map(|l| (l.token, l.status)).collect();
        assert_eq!(
            seen,
            [
                (TokenUse::Missing, 401),
                (TokenUse::Unknown, 401),
                (TokenUse::NotNeeded, 400),
                (TokenUse::NotNeeded, 400),
                (TokenUse::NotNeeded, 400),
                (TokenUse::NotNeeded, 400),
                (TokenUse::NotNeeded, 403),
                (TokenUse::NotNeeded, 200),
                (TokenUse::Valid, 200),
                (TokenUse::Valid, 200),
                (TokenUse::Valid, 404),
                (TokenUse::NotNeeded, 405),
                (TokenUse::Expired, 401),
            ]
        );
    }

    #[test]
    fn a_connection_may_carry_several_requests() {
        let dir = tempfile::tempdir().unwrap();
        let e = Emulator::create(dir.path(), None).unwrap();
        let t = token(&e, "60");
        let raw = format!(
            "GET /latest/meta-data/ HTTP/1.1\r\nX-aws-ec2-metadata-token: {t}\r\n\r\n\
             GET /latest/user-data HTTP/1.1\r\nX-aws-ec2-metadata-token: {t}\r\n\r\n"
        );
        let reply = exchange(&e, &raw);
        assert_eq!(reply.matches("HTTP/1.1 ").count(), 2, "{reply}");
        assert!(reply.contains("instance-id\nlocal-hostname"));
        assert!(reply.contains("HTTP/1.1 404 "), "no user-data: 404");
    }

    #[test]
    fn guestfwd_quotes_for_qemu() {
        let spec = Emulator::guestfwd(&["/t/imds".into(), "/d,x/it's".into()]);
        assert_eq!(
            spec,
            r"tcp:169.254.169.254:80-cmd:'/t/imds' '/d,,x/it'\''s'"
        );
    }
}
