//! The shipper: every record the init writes to its standard input (a pipe: console lines
//! and services' output, [`crust_format::observe::Record`]) and every kernel message
//! ([`kmsg`]) to the syslog collector user-data's `[logs]` names, as RFC 5424 messages
//! ([`syslog`]) over TCP, UDP or TLS.
//!
//! One thread, one `poll` over the pipe, `/dev/kmsg`, the connection and a signalfd.
//! Records wait in a bounded [`buffer`] while there is no connection and are sent oldest
//! first once there is one again; what does not fit is counted, and the count is sent in
//! its place. A broken connection shows as the socket turning readable (the collector's
//! FIN, or a TLS close) or as a failed write; the connection is made again after 1 s,
//! doubling up to [`RETRY_MAX`]. Connecting (name lookup, TCP, the TLS handshake) and
//! writing block this thread for at most [`IO_TIMEOUT`] each: meanwhile the pipe holds
//! what the init writes (the init never waits for it: a full pipe drops and counts).
//!
//! At SIGTERM (the init stops it after the services) the shipper sends what it holds for
//! up to [`STOP_BUDGET`], then exits.

pub mod buffer;
pub mod kmsg;
pub mod syslog;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crust_format::observe::{Facility, LogsSettings, MAX_RECORD, Protocol, Record, Severity};
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::time::{ClockId, clock_gettime};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection};

use crate::{drop_privileges, read_settings, say, tls};
use buffer::Buffer;

/// Bound on connecting (each address) and on each write.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest pause between tries to reach the collector.
pub const RETRY_MAX: Duration = Duration::from_secs(5);
/// How long a stopping shipper keeps sending what it holds.
pub const STOP_BUDGET: Duration = Duration::from_secs(3);
/// Kernel records read per wake-up (a flood is taken a batch at a time).
const KMSG_BATCH: usize = 256;

/// Where messages go.
enum Connection {
    Tcp(TcpStream),
    Udp(UdpSocket),
    Tls(Box<ClientConnection>, TcpStream),
}

impl Connection {
    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Connection::Tcp(s) | Connection::Tls(_, s) => s.as_fd(),
            Connection::Udp(s) => s.as_fd(),
        }
    }

    /// Bytes written but not yet acknowledged by the collector's kernel (`SIOCOUTQ`), for
    /// TCP and TLS; `None` for UDP (or if the kernel does not say).
    fn unacked(&self) -> Option<usize> {
        let fd = match self {
            Connection::Tcp(s) | Connection::Tls(_, s) => s.as_raw_fd(),
            Connection::Udp(_) => return None,
        };
        let mut n: nix::libc::c_int = 0;
        // SAFETY: TIOCOUTQ (SIOCOUTQ for sockets) writes one int through the pointer, which
        // points at `n`, alive for the call; `fd` is this connection's open socket.
        let rc = unsafe { nix::libc::ioctl(fd, nix::libc::TIOCOUTQ, &mut n) };
        (rc == 0).then(|| usize::try_from(n).unwrap_or(0))
    }

    /// Writes one message; the bytes it took on the wire.
    fn send(&mut self, message: &str) -> std::io::Result<usize> {
        match self {
            Connection::Tcp(s) => {
                let frame = syslog::octet_counted(message);
                s.write_all(&frame)?;
                Ok(frame.len())
            }
            Connection::Udp(s) => s.send(syslog::datagram(message).as_bytes()),
            Connection::Tls(conn, s) => {
                conn.writer().write_all(&syslog::octet_counted(message))?;
                let mut wire = 0;
                while conn.wants_write() {
                    wire += conn.write_tls(s)?;
                }
                Ok(wire)
            }
        }
    }

    /// The socket turned readable: `Err` if the collector closed or broke the connection.
    /// (Collectors send nothing; whatever they do send is read and dropped.)
    fn readable(&mut self) -> Result<(), Broken> {
        let mut buf = [0u8; 4096];
        let closed = |what: &str| Broken {
            why: what.into(),
            clean: true,
        };
        let broken = |e: std::io::Error| Broken {
            why: e.to_string(),
            clean: false,
        };
        match self {
            Connection::Tcp(s) => match s.read(&mut buf) {
                Ok(0) => Err(closed("the collector closed the connection")),
                Ok(_) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
                Err(e) => Err(broken(e)),
            },
            Connection::Udp(s) => match s.recv(&mut buf) {
                // A refused datagram comes back as an error here (ICMP port unreachable).
                Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => Err(broken(e)),
                _ => Ok(()),
            },
            Connection::Tls(conn, s) => match conn.read_tls(s) {
                Ok(0) => Err(closed("the collector closed the connection")),
                Ok(_) => {
                    let state = conn.process_new_packets().map_err(|e| Broken {
                        why: e.to_string(),
                        clean: false,
                    })?;
                    if state.peer_has_closed() {
                        return Err(closed("the collector closed the TLS session"));
                    }
                    let _ = conn.reader().read(&mut buf);
                    Ok(())
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
                Err(e) => Err(broken(e)),
            },
        }
    }
}

/// Why a connection ended: `clean` when the collector closed it (a FIN: it read what had
/// reached it), not when it was reset or a write failed.
struct Broken {
    why: String,
    clean: bool,
}

/// What the shipper needs to reach the collector.
struct Target {
    settings: LogsSettings,
    tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
}

impl Target {
    fn describe(&self) -> String {
        format!(
            "{}://{}:{}",
            self.settings.protocol, self.settings.host, self.settings.port
        )
    }

    /// Resolves and connects (and shakes hands, for TLS).
    fn connect(&self) -> Result<(Connection, SocketAddr), String> {
        let s = &self.settings;
        let addrs: Vec<SocketAddr> = (s.host.as_str(), s.port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {}: {e}", s.host))?
            .collect();
        let mut why = format!("{} has no address", s.host);
        for addr in addrs {
            let made = match s.protocol {
                Protocol::Udp => udp(addr).map(Connection::Udp),
                Protocol::Tcp => tcp(addr).map(Connection::Tcp),
                Protocol::Tls => tcp(addr).and_then(|sock| self.handshake(sock)),
            };
            match made {
                Ok(c) => return Ok((c, addr)),
                Err(e) => why = format!("{addr}: {e}"),
            }
        }
        Err(why)
    }

    fn handshake(&self, mut sock: TcpStream) -> std::io::Result<Connection> {
        let Some((config, name)) = &self.tls else {
            return Err(std::io::Error::other("no TLS configuration"));
        };
        let mut conn =
            ClientConnection::new(config.clone(), name.clone()).map_err(std::io::Error::other)?;
        sock.set_read_timeout(Some(IO_TIMEOUT))?;
        let started = Instant::now();
        while conn.is_handshaking() {
            if started.elapsed() > IO_TIMEOUT {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the TLS handshake took too long",
                ));
            }
            conn.complete_io(&mut sock)?;
        }
        // Writes block (bounded); reads happen only when poll says there is something.
        sock.set_read_timeout(Some(Duration::from_millis(1)))?;
        Ok(Connection::Tls(Box::new(conn), sock))
    }
}

fn tcp(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    s.set_read_timeout(Some(Duration::from_millis(1)))?;
    let _ = s.set_nodelay(true);
    Ok(s)
}

fn udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let local: SocketAddr = if addr.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let s = UdpSocket::bind(local)?;
    s.connect(addr)?;
    s.set_nonblocking(true)?;
    Ok(s)
}

fn clock_us(id: ClockId) -> i64 {
    clock_gettime(id).map_or(0, |t| t.tv_sec() * 1_000_000 + t.tv_nsec() / 1000)
}

fn host_name() -> String {
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The monotonic clock now, in microseconds.
pub fn monotonic_us() -> u64 {
    u64::try_from(clock_us(ClockId::CLOCK_MONOTONIC)).unwrap_or(0)
}

/// A record of the shipper's own.
fn own(severity: Severity, msg: String) -> Record {
    Record {
        monotonic_us: monotonic_us(),
        facility: Facility::Daemon,
        severity,
        app: "crust".into(),
        msgid: "logs".into(),
        msg,
    }
}

/// The running shipper.
struct Shipper {
    target: Target,
    buffer: Buffer,
    conn: Option<(Connection, SocketAddr)>,
    next_try: Instant,
    retry: Duration,
    /// Whether the console heard of the current outage.
    told: bool,
    ever_connected: bool,
    boot_id: String,
    hostname: String,
    pending: Vec<u8>,
    kmsg_sequence: Option<u64>,
}

impl Shipper {
    fn take_line(&mut self, line: &[u8]) {
        if let Some(r) = std::str::from_utf8(line).ok().and_then(Record::parse) {
            self.keep(r);
        }
    }

    /// Buffers a record; with a connection, a buffer half full is sent at once, so a burst
    /// (the boot's kernel messages) never overflows it while the collector is there.
    fn keep(&mut self, r: Record) {
        self.buffer.push(r);
        self.say_drops();
        if self.conn.is_some() && self.buffer.bytes() * 2 > self.buffer.limit() {
            self.send();
        }
    }

    /// Reads what the pipe holds; false once the writer is gone.
    fn read_pipe(&mut self, fd: BorrowedFd<'_>) -> bool {
        let mut chunk = [0u8; 16384];
        // Bounded per wake-up, so the connection is served between batches.
        for _ in 0..16 {
            match nix::unistd::read(fd, &mut chunk) {
                Ok(0) => return false,
                Ok(n) => {
                    self.pending.extend_from_slice(&chunk[..n]);
                    while let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
                        let line: Vec<u8> = self.pending.drain(..=end).collect();
                        self.take_line(&line[..line.len() - 1]);
                    }
                    if self.pending.len() > 2 * MAX_RECORD {
                        self.pending.clear();
                    }
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(_) => break,
            }
        }
        true
    }

    fn read_kmsg(&mut self, fd: BorrowedFd<'_>) {
        let mut raw = [0u8; 8192];
        for _ in 0..KMSG_BATCH {
            match nix::unistd::read(fd, &mut raw) {
                Ok(0) => break,
                Ok(n) => {
                    let Some(k) = kmsg::parse(&raw[..n]) else {
                        continue;
                    };
                    if let Some(last) = self.kmsg_sequence
                        && k.sequence > last + 1
                    {
                        let lost = k.sequence - last - 1;
                        self.keep(own(
                            Severity::Warning,
                            format!(
                                "logs: {lost} kernel messages were overwritten in the kernel's \
                                 buffer before they could be read"
                            ),
                        ));
                    }
                    self.kmsg_sequence = Some(k.sequence);
                    self.keep(k.record);
                }
                // The reader fell behind the ring buffer: the next read resumes at the
                // oldest record still there, and the sequence gap is counted then.
                Err(nix::errno::Errno::EPIPE | nix::errno::Errno::EINTR) => {}
                Err(_) => break,
            }
        }
    }

    fn disconnect(&mut self, why: &str, clean: bool, now: Instant) {
        let Some((conn, addr)) = self.conn.take() else {
            return;
        };
        // After a FIN, what the collector's kernel acknowledged was read; after a reset
        // or a failed write nothing held is known to be.
        let unacked = if clean { conn.unacked() } else { None };
        drop(conn);
        let again = self.buffer.resend_recent(unacked);
        say(&format!(
            "lost the collector {addr} ({why}); keeping lines (up to {} bytes) until it is \
             back{}",
            self.buffer_limit(),
            if again > 0 {
                format!(", {again} sent just before are sent again")
            } else {
                String::new()
            }
        ));
        self.told = true;
        self.retry = Duration::from_secs(1);
        self.next_try = now + self.retry;
    }

    /// Says on the console (and so, later, to the collector) that a count of dropped lines
    /// was queued.
    fn say_drops(&mut self) {
        if let Some(n) = self.buffer.take_noted() {
            say(&format!(
                "{n} lines did not fit in the {}-byte buffer while the collector was \
                 unreachable and were dropped",
                self.buffer_limit()
            ));
        }
    }

    fn buffer_limit(&self) -> u64 {
        self.target.settings.buffer
    }

    fn try_connect(&mut self, now: Instant) {
        match self.target.connect() {
            Ok((conn, addr)) => {
                self.hostname = host_name();
                let waiting = self.buffer.len();
                let what = if self.ever_connected {
                    "reconnected to"
                } else {
                    "connected to"
                };
                say(&format!(
                    "{what} the collector {} ({addr}){}",
                    self.target.describe(),
                    if waiting > 0 {
                        format!("; sending {waiting} kept lines")
                    } else {
                        String::new()
                    }
                ));
                self.conn = Some((conn, addr));
                self.ever_connected = true;
                self.told = false;
                self.retry = Duration::from_secs(1);
            }
            Err(why) => {
                if !self.told {
                    say(&format!(
                        "cannot reach the collector {}: {why}; keeping lines (up to {} bytes) \
                         and trying again every {} s at most",
                        self.target.describe(),
                        self.buffer_limit(),
                        RETRY_MAX.as_secs()
                    ));
                    self.told = true;
                }
                self.next_try = now + self.retry;
                self.retry = (self.retry * 2).min(RETRY_MAX);
            }
        }
    }

    /// Sends what waits while the connection holds.
    fn send(&mut self) {
        let now = Instant::now();
        let offset = clock_us(ClockId::CLOCK_REALTIME) - clock_us(ClockId::CLOCK_MONOTONIC);
        loop {
            let Some((conn, _)) = self.conn.as_mut() else {
                return;
            };
            let Some(record) = self.buffer.next() else {
                return;
            };
            let unix_us = offset + i64::try_from(record.monotonic_us).unwrap_or(0);
            let message = syslog::message(record, unix_us, &self.hostname, &self.boot_id);
            let keep = !matches!(conn, Connection::Udp(_));
            match conn.send(&message) {
                Ok(wire) => {
                    self.buffer.sent(keep.then_some(wire));
                    self.buffer.note_drops(monotonic_us());
                    self.say_drops();
                }
                Err(e) => {
                    self.disconnect(&e.to_string(), false, now);
                    return;
                }
            }
        }
    }
}

/// Runs the shipper with the settings file at `settings`; `kmsg_from_end` skips the
/// kernel messages already there (a restarted shipper sent them before).
pub fn run(settings: &Path, kmsg_from_end: bool) -> Result<(), String> {
    let settings = LogsSettings::parse(&read_settings(settings)?)?;
    let tls = match settings.protocol {
        Protocol::Tls => {
            let ca = settings
                .ca
                .as_deref()
                .ok_or("TLS needs the collector's CA certificates")?;
            let config = tls::client(
                Path::new(ca),
                settings
                    .client
                    .as_ref()
                    .map(|(c, k)| (Path::new(c.as_str()), Path::new(k.as_str()))),
            )?;
            let name = tls::server_name(settings.server_name.as_deref().unwrap_or(&settings.host))?;
            Some((config, name))
        }
        _ => None,
    };
    let kmsg: Option<OwnedFd> = if settings.kernel {
        match nix::fcntl::open(
            "/dev/kmsg",
            OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        ) {
            Ok(fd) => {
                if kmsg_from_end {
                    let _ = nix::unistd::lseek(&fd, 0, nix::unistd::Whence::SeekEnd);
                }
                Some(fd)
            }
            Err(e) => {
                say(&format!(
                    "cannot read kernel messages from /dev/kmsg: {}",
                    e.desc()
                ));
                None
            }
        }
    } else {
        None
    };
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGTERM);
    mask.add(Signal::SIGINT);
    mask.thread_block().map_err(|e| e.desc().to_owned())?;
    let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(|e| e.desc().to_owned())?;
    drop_privileges()?;
    let stdin = std::io::stdin();
    let stdin_fd = stdin.as_fd();
    let _ = fcntl(stdin_fd, FcntlArg::F_SETFL(OFlag::O_NONBLOCK));
    let limit = usize::try_from(settings.buffer).unwrap_or(usize::MAX);
    let mut s = Shipper {
        target: Target { settings, tls },
        buffer: Buffer::new(limit),
        conn: None,
        next_try: Instant::now(),
        retry: Duration::from_secs(1),
        told: false,
        ever_connected: false,
        boot_id,
        hostname: host_name(),
        pending: Vec::new(),
        kmsg_sequence: None,
    };
    say(&format!(
        "shipping logs to {}{}, keeping up to {} bytes while it is away",
        s.target.describe(),
        if kmsg.is_some() {
            " with the kernel's messages"
        } else {
            ""
        },
        s.buffer_limit()
    ));
    let mut pipe_open = true;
    let mut stop_by: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if let Some(by) = stop_by {
            // What is still in the pipe (the services' last lines) goes too.
            if pipe_open && s.conn.is_some() && s.buffer.is_empty() {
                pipe_open = s.read_pipe(stdin_fd);
                s.send();
            }
            if now >= by || s.buffer.is_empty() || s.conn.is_none() {
                return Ok(());
            }
        }
        // What the collector acknowledged needs no resend any more.
        if let Some(u) = s.conn.as_ref().and_then(|(c, _)| c.unacked()) {
            s.buffer.acked(u);
        }
        // Wake for the next connection try (and at least every second).
        let wake = s.conn.is_none().then_some(s.next_try);
        let timeout = wake.map_or(PollTimeout::from(1000u16), |w| {
            PollTimeout::from(w.saturating_duration_since(now).as_millis().clamp(1, 1000) as u16)
        });
        let (sig, pipe, kern, sock) = {
            let mut fds = vec![PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
            let pipe_at = pipe_open.then(|| {
                fds.push(PollFd::new(stdin_fd, PollFlags::POLLIN));
                fds.len() - 1
            });
            let kmsg_at = kmsg.as_ref().map(|k| {
                fds.push(PollFd::new(k.as_fd(), PollFlags::POLLIN));
                fds.len() - 1
            });
            let conn_at = s.conn.as_ref().map(|(c, _)| {
                fds.push(PollFd::new(c.fd(), PollFlags::POLLIN));
                fds.len() - 1
            });
            match poll(&mut fds, timeout) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(format!("poll: {}", e.desc())),
            }
            let ready = |i: Option<usize>| {
                i.and_then(|i| fds.get(i))
                    .and_then(|f| f.revents())
                    .is_some_and(|r| !r.is_empty())
            };
            (
                ready(Some(0)),
                ready(pipe_at),
                ready(kmsg_at),
                ready(conn_at),
            )
        };
        let now = Instant::now();
        if sig {
            while let Ok(Some(_)) = signals.read_signal() {}
            stop_by.get_or_insert(now + STOP_BUDGET);
        }
        if sock
            && let Some((conn, _)) = s.conn.as_mut()
            && let Err(b) = conn.readable()
        {
            s.disconnect(&b.why, b.clean, now);
        }
        // Connecting first: a connection takes a burst as it comes.
        if s.conn.is_none() && now >= s.next_try && stop_by.is_none() {
            s.try_connect(now);
        }
        if pipe {
            pipe_open = s.read_pipe(stdin_fd);
        }
        if kern && let Some(k) = &kmsg {
            s.read_kmsg(k.as_fd());
        }
        s.send();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_records_are_the_daemons() {
        let r = own(Severity::Notice, "x".into());
        assert_eq!(
            (r.facility, r.app.as_str(), r.msgid.as_str()),
            (Facility::Daemon, "crust", "logs")
        );
        assert!(r.monotonic_us > 0);
    }
}
