//! The wall clock: set at boot from a time server with SNTP (RFC 4330), so that what
//! checks dates later (signature expiry, TLS) sees the right time, then kept right.
//!
//! Servers are the configured ones (`[time] servers`), then the NTP servers DHCP offered
//! (option 42); the first that answers sets the clock. Packets are built, checked (mode,
//! stratum, kiss-of-death, leap indicator, that the reply echoes our transmit time) and the
//! offset computed by the `sntpc` crate; this module picks servers, bounds the wait and
//! moves the clock. At boot the clock is stepped; without an answer it stays at what the
//! RTC gave the kernel, and the `clock` line says so.
//!
//! After boot the [`Keeper`] task asks again every `time.interval` (sooner, backing off,
//! while no server answers, so a host that booted without its time server gets the time
//! once the server is reachable). An offset up to [`SLEW_LIMIT`] is slewed (`adjtime`:
//! the kernel runs the clock slightly fast or slow until it is gone, so time never jumps
//! back); a larger one is stepped and said on the console. Each exchange runs on a
//! [`Worker`] thread: name lookups and the one-second waits stay off PID 1's loop.
//!
//! SNTP is not authenticated, and the clock judges whether an update index has expired. So
//! the clock has a [`Floor`]: the image's build time (systemd's `/usr/lib/clock-epoch`
//! convention, in the verified root) and the issue time of the newest update index this
//! host accepted. A clock found below it at boot is moved up to it, and a server's answer
//! below it is refused with a console line: nobody who can answer SNTP packets can take
//! the clock back to a time when an old, expired index was still valid.

use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::os::fd::BorrowedFd;
use std::path::Path;
use std::time::{Duration, Instant};

use crust_format::phase::Phase;
use crust_format::utc::UtcTime;
use nix::sys::time::TimeSpec;
use nix::time::{ClockId, clock_gettime, clock_settime};
use sntpc::{NtpContext, NtpResult, NtpTimestampGenerator, NtpUdpSocket};

use crate::config::HostConfig;
use crate::config::schema::{self, NTP_PORT, ServerName};
use crate::event::{Control, Task, Worker};
use crate::observe::status::ClockStatus;
use crate::services::output::{LOG_DIR, Log};
use crate::{console, net};

/// How long one request waits for its answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
/// Requests per server.
pub const TRIES: u32 = 2;
/// Bound on one exchange (the boot's phase or a later check), name lookups included.
pub const BUDGET: Duration = Duration::from_secs(6);
/// Offsets up to this are slewed after boot; larger ones are stepped. At the kernel's
/// 500 ppm, half a second is gone in about 17 minutes, within the default interval.
pub const SLEW_LIMIT: Duration = Duration::from_millis(500);
/// First retry after no server answered (doubling up to the interval).
const RETRY: Duration = Duration::from_secs(16);
/// The file whose modification time is the image's build time, in the verified root.
pub const CLOCK_EPOCH: &str = "/usr/lib/clock-epoch";

/// The earliest time the clock may show, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Floor {
    /// Unix seconds.
    pub at: i64,
    /// What sets it.
    pub what: &'static str,
}

impl Floor {
    /// The floor from the image's build time and the newest accepted update index.
    pub fn read() -> Option<Floor> {
        let built = std::fs::metadata(CLOCK_EPOCH)
            .ok()
            .map(|m| std::os::unix::fs::MetadataExt::mtime(&m));
        let index = crate::update::record::Records::new(Path::new(crate::update::record::DIR))
            .newest_issued()
            .and_then(|t| i64::try_from(t).ok());
        Self::of(built, index)
    }

    /// The higher of the two times that are known.
    pub fn of(built: Option<i64>, index: Option<i64>) -> Option<Floor> {
        let built = built.map(|at| Floor {
            at,
            what: "this image's build",
        });
        let index = index.map(|at| Floor {
            at,
            what: "the newest update index this host accepted",
        });
        match (built, index) {
            (Some(b), Some(i)) => Some(if i.at > b.at { i } else { b }),
            (b, i) => b.or(i),
        }
    }

    /// Whether a clock at `unix` would be below the floor.
    pub fn refuses(&self, unix: i64) -> bool {
        unix < self.at
    }
}

/// Moves a clock that is below the floor up to it (a dead RTC battery, or an RTC someone
/// set back); returns what it did, for the phase line.
fn raise_to_floor(floor: Option<Floor>) -> Option<String> {
    let floor = floor?;
    let now = now_unix();
    if !floor.refuses(now) {
        return None;
    }
    let moved = set_clock((floor.at - now).saturating_mul(1_000_000));
    Some(match moved {
        Ok(()) => format!(
            "the RTC said {}, before {} ({}): moved up to it",
            format_utc(now),
            floor.what,
            format_utc(floor.at)
        ),
        Err(e) => format!(
            "the RTC says {}, before {} ({}), and the clock cannot be set ({e})",
            format_utc(now),
            floor.what,
            format_utc(floor.at)
        ),
    })
}

/// What a successful exchange did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Synced {
    /// The server that answered.
    pub server: String,
    /// Its stratum.
    pub stratum: u8,
    /// How far the clock was off, in microseconds (positive: it was behind).
    pub offset_us: i64,
    /// The round trip, in microseconds.
    pub delay_us: u64,
    /// The clock afterwards, Unix seconds.
    pub now: i64,
    /// Whether the clock was slewed rather than stepped.
    pub slewed: bool,
}

/// How an offset is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Correction {
    /// Set the clock at once.
    Step,
    /// Run the clock fast or slow until the offset is gone, or step it if the offset is
    /// larger than [`SLEW_LIMIT`].
    SlewOrStep,
}

/// The `clock` phase; returns the task that keeps the clock right afterwards.
pub fn phase(config: &HostConfig, network: &net::Network) -> Keeper {
    let offered = if config.time.dhcp {
        network.ntp_servers()
    } else {
        Vec::new()
    };
    let servers = servers(&config.time.servers, &offered);
    let interval = Duration::from_secs(u64::from(config.time.interval));
    if let Some(raised) = raise_to_floor(Floor::read()) {
        console::note("clock", &raised);
    }
    let mut status = ClockStatus::new(servers.len());
    let (detail, synced) = if servers.is_empty() {
        let detail = format!(
            "no time server (none configured, none from DHCP); the clock stays at {} from \
             the RTC",
            format_utc(now_unix())
        );
        (detail, false)
    } else {
        match sync(&servers, BUDGET, Correction::Step) {
            Ok(s) => {
                status.answered(s.offset_us, &s.server);
                (
                    format!(
                        "set from {} (stratum {}, delay {} ms): {}, moved {:+.3} s; checked again \
                     every {} s",
                        s.server,
                        s.stratum,
                        s.delay_us / 1000,
                        format_utc(s.now),
                        s.offset_us as f64 / 1e6,
                        interval.as_secs()
                    ),
                    true,
                )
            }
            Err(why) => (
                format!(
                    "{why}; the clock stays at {} from the RTC; asking again in {} s",
                    format_utc(now_unix()),
                    RETRY.as_secs()
                ),
                false,
            ),
        }
    };
    console::phase(Phase::Clock, &detail);
    if !synced {
        status.unanswered();
    }
    let mut keeper = Keeper::new(
        servers,
        interval,
        synced,
        Instant::now(),
        Path::new(LOG_DIR),
    );
    keeper.status = status;
    keeper
}

/// The servers to try, configured ones first, without repeats.
pub fn servers(configured: &[String], offered: &[std::net::Ipv4Addr]) -> Vec<ServerName> {
    let mut all: Vec<ServerName> = configured
        .iter()
        .filter_map(|s| schema::parse_server(s).ok())
        .collect();
    for ip in offered {
        let name = ServerName {
            host: ip.to_string(),
            port: NTP_PORT,
        };
        if !all.contains(&name) {
            all.push(name);
        }
    }
    all
}

/// Asks the servers in turn until one answers with a time not below the [`Floor`],
/// within `budget`; corrects the clock.
pub fn sync(
    servers: &[ServerName],
    budget: Duration,
    correction: Correction,
) -> Result<Synced, String> {
    let floor = Floor::read();
    let deadline = Instant::now() + budget;
    let mut failures = Vec::new();
    for server in servers {
        if Instant::now() >= deadline {
            failures.push(format!("{server}: out of time"));
            break;
        }
        let addrs: Vec<SocketAddr> = match (server.host.as_str(), server.port).to_socket_addrs() {
            Ok(a) => a.collect(),
            Err(e) => {
                failures.push(format!("{server}: {e}"));
                continue;
            }
        };
        for addr in addrs {
            match query(addr, TRIES, deadline) {
                Ok(result) => {
                    let (offset_us, slewed) =
                        match judge(&result, server, now_unix(), floor, correction) {
                            Ok(taken) => taken,
                            Err(refused) => {
                                failures.push(refused);
                                continue;
                            }
                        };
                    let moved = if slewed {
                        slew_clock(offset_us)
                    } else {
                        set_clock(offset_us)
                    };
                    moved.map_err(|e| format!("cannot correct the clock: {e}"))?;
                    return Ok(Synced {
                        server: server.to_string(),
                        stratum: result.stratum(),
                        offset_us,
                        delay_us: result.roundtrip(),
                        now: now_unix(),
                        slewed,
                    });
                }
                Err(e) => failures.push(format!("{server}: {e}")),
            }
        }
    }
    Err(format!(
        "no time server gave a usable answer ({})",
        failures.join("; ")
    ))
}

/// What to do with `server`'s answer when the clock says `now` (Unix seconds): refuse it
/// (it would take the clock below the floor), or move the clock by the offset (in
/// microseconds), slewed (`true`) or stepped.
pub(crate) fn judge(
    result: &NtpResult,
    server: &ServerName,
    now: i64,
    floor: Option<Floor>,
    correction: Correction,
) -> Result<(i64, bool), String> {
    let offset_us = result.offset();
    let claimed = now.saturating_add(offset_us.div_euclid(1_000_000));
    if let Some(f) = floor.filter(|f| f.refuses(claimed)) {
        return Err(format!(
            "refused {server}'s time {}: it is before {} ({})",
            format_utc(claimed),
            f.what,
            format_utc(f.at)
        ));
    }
    let slewed = correction == Correction::SlewOrStep
        && offset_us.unsigned_abs() <= SLEW_LIMIT.as_micros() as u64;
    Ok((offset_us, slewed))
}

/// The task that keeps the clock right after boot.
#[derive(Debug)]
pub struct Keeper {
    servers: Vec<ServerName>,
    interval: Duration,
    /// When the next check starts (none without servers, or while one runs).
    next: Option<Instant>,
    /// The wait after the next failure.
    retry: Duration,
    /// Whether the last exchange got an answer (the console hears of changes only).
    answering: bool,
    worker: Option<Worker<Result<Synced, String>>>,
    log: Log,
    /// What the exporter is told ([`crate::observe::status`]).
    status: ClockStatus,
}

impl Keeper {
    /// Checks `servers` every `interval`, logging to `clock.log` in `log_dir`; the boot's
    /// exchange `synced` or not at `now`.
    pub fn new(
        servers: Vec<ServerName>,
        interval: Duration,
        synced: bool,
        now: Instant,
        log_dir: &Path,
    ) -> Self {
        let next = if servers.is_empty() {
            None
        } else if synced {
            Some(now + interval + crate::random::below(interval / 10))
        } else {
            Some(now + RETRY)
        };
        let status = ClockStatus::new(servers.len());
        Self {
            servers,
            interval,
            next,
            retry: if synced {
                RETRY
            } else {
                (RETRY * 2).min(interval)
            },
            answering: synced,
            status,
            worker: None,
            log: Log::new(log_dir, "clock"),
        }
    }

    /// Acts on a check's outcome: the console hears of steps and of servers that stop or
    /// start answering; every check goes to `/var/log/crust/clock.log`.
    fn checked(&mut self, outcome: Result<Synced, String>, now: Instant) {
        match outcome {
            Ok(s) => {
                let how = if s.slewed { "slewing" } else { "stepped" };
                let line = format!(
                    "{} (stratum {}, delay {} ms): off by {:+.6} s, {how}",
                    s.server,
                    s.stratum,
                    s.delay_us / 1000,
                    s.offset_us as f64 / 1e6
                );
                self.log.write(&line);
                self.status.answered(s.offset_us, &s.server);
                if !s.slewed {
                    console::note(
                        "clock",
                        &format!(
                            "stepped {:+.3} s by {} to {}",
                            s.offset_us as f64 / 1e6,
                            s.server,
                            format_utc(s.now)
                        ),
                    );
                } else if !self.answering {
                    console::note("clock", &format!("{line} (answering again)"));
                }
                self.answering = true;
                self.retry = RETRY;
                self.next = Some(now + self.interval + crate::random::below(self.interval / 10));
            }
            Err(why) => {
                let wait = self.retry.min(self.interval);
                let line = format!("{why}; asking again in {} s", wait.as_secs());
                self.log.write(&line);
                self.status.unanswered();
                if self.answering {
                    console::note("clock", &line);
                }
                self.answering = false;
                self.retry = (self.retry * 2).min(self.interval);
                self.next = Some(now + wait);
            }
        }
    }
}

impl Task for Keeper {
    fn fds(&self) -> Vec<BorrowedFd<'_>> {
        self.worker.iter().map(Worker::fd).collect()
    }

    fn deadline(&self) -> Option<Instant> {
        self.next
    }

    fn run(&mut self, ready: &[bool], now: Instant) -> Control {
        if let Some(worker) = self.worker.take() {
            if ready.first().copied().unwrap_or(false) {
                let outcome = worker
                    .finish()
                    .unwrap_or_else(|| Err("the check's thread failed".into()));
                self.checked(outcome, now);
            } else {
                self.worker = Some(worker);
            }
        } else if self.next.is_some_and(|n| now >= n) {
            let servers = self.servers.clone();
            match Worker::start("clock", move || {
                sync(&servers, BUDGET, Correction::SlewOrStep)
            }) {
                Ok(worker) => {
                    self.worker = Some(worker);
                    self.next = None;
                }
                Err(e) => self.checked(Err(format!("cannot start the check: {e}")), now),
            }
        }
        Control::Continue
    }

    fn stop(&mut self, budget: Duration) {
        // An exchange ends within its own budget; waiting for it keeps the clock from
        // moving under the shutdown's last lines.
        if let Some(worker) = self.worker.take() {
            let _ = worker.wait(budget.min(BUDGET));
        }
    }
}

/// Up to `tries` SNTP requests to `addr`, each waiting [`REQUEST_TIMEOUT`] at most.
pub fn query(addr: SocketAddr, tries: u32, deadline: Instant) -> Result<NtpResult, String> {
    let bind: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse().map_err(|_| "bad bind address")?
    } else {
        "[::]:0".parse().map_err(|_| "bad bind address")?
    };
    let socket = UdpSocket::bind(bind).map_err(|e| e.to_string())?;
    let mut last = String::from("no answer");
    for _ in 0..tries {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        socket
            .set_read_timeout(Some(left.min(REQUEST_TIMEOUT)))
            .map_err(|e| e.to_string())?;
        match ask(addr, &Socket(&socket), RealtimeClock::default()) {
            Ok(result) => return Ok(result),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// One SNTP request to `addr` over `socket` and its answer, checked by sntpc, with times
/// from `clock`.
pub(crate) fn ask(
    addr: SocketAddr,
    socket: &impl NtpUdpSocket,
    clock: impl NtpTimestampGenerator + Copy,
) -> Result<NtpResult, String> {
    match sntpc::sync::get_time(addr, socket, NtpContext::new(clock)) {
        Ok(result) => Ok(result),
        Err(sntpc::Error::Network) => Err("no answer".into()),
        Err(e) => Err(format!("bad answer ({e:?})")),
    }
}

/// Moves `CLOCK_REALTIME` by `offset_us`.
fn set_clock(offset_us: i64) -> nix::Result<()> {
    let now = clock_gettime(ClockId::CLOCK_REALTIME)?;
    let nanos = now.tv_nsec() + offset_us.rem_euclid(1_000_000) * 1000;
    let secs = now
        .tv_sec()
        .checked_add(offset_us.div_euclid(1_000_000))
        .and_then(|s| s.checked_add(nanos.div_euclid(1_000_000_000)))
        .ok_or(nix::errno::Errno::EOVERFLOW)?;
    let target = TimeSpec::new(secs, nanos.rem_euclid(1_000_000_000));
    clock_settime(ClockId::CLOCK_REALTIME, target)
}

/// Slews `CLOCK_REALTIME` by `offset_us`: the kernel runs it slightly fast or slow until
/// the offset is gone (replacing any slew still under way).
fn slew_clock(offset_us: i64) -> nix::Result<()> {
    let delta = nix::libc::timeval {
        tv_sec: offset_us.div_euclid(1_000_000),
        tv_usec: offset_us.rem_euclid(1_000_000),
    };
    // SAFETY: `delta` is a valid, initialised timeval that outlives the call; the old
    // adjustment is not asked for (null), which adjtime(3) allows.
    let rc = unsafe { nix::libc::adjtime(&delta, std::ptr::null_mut()) };
    nix::errno::Errno::result(rc).map(drop)
}

/// The wall clock in Unix seconds.
pub fn now_unix() -> i64 {
    clock_gettime(ClockId::CLOCK_REALTIME)
        .map(|t| t.tv_sec())
        .unwrap_or(0)
}

/// Formats Unix seconds as an RFC 3339 UTC time (`2031-05-17T12:00:05Z`).
pub fn format_utc(secs: i64) -> String {
    UtcTime::from_unix(secs).to_string()
}

/// `CLOCK_REALTIME` for sntpc's timestamps (its own generator can panic on a clock before
/// 1970; PID 1 must not).
#[derive(Debug, Clone, Copy, Default)]
struct RealtimeClock {
    now: Duration,
}

impl NtpTimestampGenerator for RealtimeClock {
    fn init(&mut self) {
        self.now = clock_gettime(ClockId::CLOCK_REALTIME)
            .ok()
            .and_then(|t| {
                Some(Duration::new(
                    u64::try_from(t.tv_sec()).ok()?,
                    u32::try_from(t.tv_nsec()).ok()?,
                ))
            })
            .unwrap_or_default();
    }

    fn timestamp_sec(&self) -> u64 {
        self.now.as_secs()
    }

    fn timestamp_subsec_micros(&self) -> u32 {
        self.now.subsec_micros()
    }
}

/// A blocking UDP socket for sntpc (its futures complete at once).
struct Socket<'a>(&'a UdpSocket);

impl NtpUdpSocket for Socket<'_> {
    async fn send_to(&self, buf: &[u8], addr: SocketAddr) -> sntpc::Result<usize> {
        self.0.send_to(buf, addr).map_err(|_| sntpc::Error::Network)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> sntpc::Result<(usize, SocketAddr)> {
        self.0.recv_from(buf).map_err(|_| sntpc::Error::Network)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seconds between 1900 (NTP's epoch) and 1970.
    const NTP_UNIX: u64 = 2_208_988_800;

    fn keeper(synced: bool, now: Instant, logs: &Path) -> Keeper {
        let server = schema::parse_server("10.0.2.2").unwrap();
        Keeper::new(vec![server], Duration::from_secs(1024), synced, now, logs)
    }

    fn answered(slewed: bool) -> Result<Synced, String> {
        Ok(Synced {
            server: "10.0.2.2:123".into(),
            stratum: 2,
            offset_us: 1200,
            delay_us: 800,
            now: 1_936_785_600,
            slewed,
        })
    }

    #[test]
    fn without_servers_the_keeper_never_wakes() {
        let logs = tempfile::tempdir().unwrap();
        let k = Keeper::new(
            Vec::new(),
            Duration::from_secs(64),
            false,
            Instant::now(),
            logs.path(),
        );
        assert_eq!(k.deadline(), None);
    }

    #[test]
    fn a_synced_clock_is_checked_every_interval_with_jitter() {
        let logs = tempfile::tempdir().unwrap();
        let now = Instant::now();
        let mut k = keeper(true, now, logs.path());
        let first = k.deadline().unwrap() - now;
        assert!(first >= Duration::from_secs(1024) && first < Duration::from_millis(1_126_400));
        k.checked(answered(true), now);
        let next = k.deadline().unwrap() - now;
        assert!(next >= Duration::from_secs(1024) && next < Duration::from_millis(1_126_400));
        let log = std::fs::read_to_string(logs.path().join("clock.log")).unwrap();
        assert!(
            log.contains("10.0.2.2:123 (stratum 2, delay 0 ms): off by +0.001200 s, slewing"),
            "{log}"
        );
    }

    #[test]
    fn without_an_answer_the_keeper_backs_off_up_to_the_interval_then_recovers() {
        let logs = tempfile::tempdir().unwrap();
        let now = Instant::now();
        let mut k = keeper(false, now, logs.path());
        assert_eq!(
            k.deadline(),
            Some(now + RETRY),
            "unsynced at boot: ask soon"
        );
        let mut waits = Vec::new();
        for _ in 0..8 {
            k.checked(Err("no time server answered".into()), now);
            waits.push((k.deadline().unwrap() - now).as_secs());
        }
        assert_eq!(waits, [32, 64, 128, 256, 512, 1024, 1024, 1024]);
        k.checked(answered(false), now);
        assert!(k.deadline().unwrap() - now >= Duration::from_secs(1024));
        k.checked(Err("no time server answered".into()), now);
        assert_eq!(k.deadline(), Some(now + RETRY), "the backoff starts afresh");
        let log = std::fs::read_to_string(logs.path().join("clock.log")).unwrap();
        assert_eq!(log.matches("asking again in").count(), 9, "{log}");
        assert!(log.contains("off by +0.001200 s, stepped"), "{log}");
    }

    /// A one-shot SNTP server on 127.0.0.1 answering with `reply(request)`.
    fn server(reply: impl Fn(&[u8]) -> Vec<u8> + Send + 'static) -> SocketAddr {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = socket.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = socket.recv_from(&mut buf) {
                let _ = socket.send_to(&reply(&buf[..n]), from);
            }
        });
        addr
    }

    /// A server's reply that claims Unix time `unix` (RFC 4330 §5).
    fn answer(request: &[u8], unix: u64, stratum: u8, leap: u8) -> Vec<u8> {
        let mut r = vec![0u8; 48];
        r[0] = (leap << 6) | (4 << 3) | 4;
        r[1] = stratum;
        let ts = ((unix + NTP_UNIX) << 32).to_be_bytes();
        r[24..32].copy_from_slice(&request[40..48]);
        r[32..40].copy_from_slice(&ts);
        r[40..48].copy_from_slice(&ts);
        r
    }

    #[test]
    fn a_reply_gives_the_offset() {
        // 2031-05-17T12:00:00Z, far from now: the offset says how far.
        let target = 1_936_785_600;
        let addr = server(move |req| answer(req, target, 2, 0));
        let deadline = Instant::now() + Duration::from_secs(5);
        let result = query(addr, 1, deadline).unwrap();
        assert_eq!(result.stratum(), 2);
        let expected = (target as i64 - now_unix()) * 1_000_000;
        assert!(
            (result.offset() - expected).abs() < 2_000_000,
            "offset {} µs, expected about {expected}",
            result.offset()
        );
    }

    #[test]
    fn bad_replies_are_refused() {
        let deadline = || Instant::now() + Duration::from_secs(5);
        // Kiss-of-death (stratum 0), an unsynchronised server (leap 3), and a reply that
        // does not echo our transmit time.
        let kod = server(|req| answer(req, 1_900_000_000, 0, 0));
        assert!(
            query(kod, 1, deadline())
                .unwrap_err()
                .contains("bad answer")
        );
        let unsynced = server(|req| answer(req, 1_900_000_000, 2, 3));
        assert!(
            query(unsynced, 1, deadline())
                .unwrap_err()
                .contains("bad answer")
        );
        let forged = server(|req| {
            let mut r = answer(req, 1_900_000_000, 2, 0);
            r[24] ^= 0xff;
            r
        });
        assert!(
            query(forged, 1, deadline())
                .unwrap_err()
                .contains("bad answer")
        );
    }

    #[test]
    fn silence_is_bounded() {
        let quiet = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = quiet.local_addr().unwrap();
        let started = Instant::now();
        let err = query(addr, 2, Instant::now() + Duration::from_secs(5)).unwrap_err();
        assert_eq!(err, "no answer");
        let took = started.elapsed();
        assert!(
            took >= REQUEST_TIMEOUT * 2 && took < REQUEST_TIMEOUT * 3,
            "{took:?}"
        );
    }

    #[test]
    fn the_floor_is_the_later_of_the_build_and_the_newest_index() {
        assert_eq!(Floor::of(None, None), None);
        let f = Floor::of(Some(1_700_000_000), None).unwrap();
        assert_eq!(f.what, "this image's build");
        assert!(f.refuses(1_699_999_999) && !f.refuses(1_700_000_000));
        let f = Floor::of(Some(1_700_000_000), Some(1_800_000_000)).unwrap();
        assert_eq!(f.at, 1_800_000_000);
        assert_eq!(f.what, "the newest update index this host accepted");
        assert_eq!(
            Floor::of(Some(1_900_000_000), Some(1_800_000_000))
                .unwrap()
                .at,
            1_900_000_000
        );
    }

    #[test]
    fn configured_servers_come_before_offered_ones() {
        let list = servers(
            &["10.0.2.2:1123".into(), "192.0.2.1".into()],
            &["192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap()],
        );
        let names: Vec<String> = list.iter().map(ToString::to_string).collect();
        assert_eq!(names, ["10.0.2.2:1123", "192.0.2.1:123", "192.0.2.2:123"]);
    }

    #[test]
    fn utc_times_format() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_utc(1_936_785_605), "2031-05-17T12:00:05Z");
        assert_eq!(format_utc(-1), "1969-12-31T23:59:59Z");
    }
}
