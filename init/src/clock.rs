//! The wall clock: set once at boot from a time server with SNTP (RFC 4330), so that what
//! checks dates later (signature expiry, TLS) sees the right time.
//!
//! Servers are the configured ones (`[time] servers`), then the NTP servers DHCP offered
//! (option 42); the first that answers sets the clock. Packets are built, checked (mode,
//! stratum, kiss-of-death, leap indicator, that the reply echoes our transmit time) and the
//! offset computed by the `sntpc` crate; this module picks servers, bounds the wait and
//! calls `clock_settime`. Without an answer the clock stays at what the RTC gave the
//! kernel, and the `clock` line says so.

use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::time::{Duration, Instant};

use crust_format::phase::Phase;
use nix::sys::time::TimeSpec;
use nix::time::{ClockId, clock_gettime, clock_settime};
use sntpc::{NtpContext, NtpResult, NtpTimestampGenerator, NtpUdpSocket};

use crate::config::HostConfig;
use crate::config::schema::{self, NTP_PORT, ServerName};
use crate::{console, net};

/// How long one request waits for its answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
/// Requests per server.
pub const TRIES: u32 = 2;
/// Bound on the whole phase, name lookups included.
pub const BUDGET: Duration = Duration::from_secs(6);

/// What a successful exchange did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Synced {
    /// The server that answered.
    pub server: String,
    /// Its stratum.
    pub stratum: u8,
    /// How far the clock moved, in microseconds.
    pub offset_us: i64,
    /// The round trip, in microseconds.
    pub delay_us: u64,
    /// The clock afterwards, Unix seconds.
    pub now: i64,
}

/// The `clock` phase.
pub fn phase(config: &HostConfig, network: &net::Network) {
    let offered = if config.time.dhcp {
        network.ntp_servers()
    } else {
        Vec::new()
    };
    let servers = servers(&config.time.servers, &offered);
    let detail = if servers.is_empty() {
        format!(
            "no time server (none configured, none from DHCP); the clock stays at {} from \
             the RTC",
            format_utc(now_unix())
        )
    } else {
        match sync(&servers, BUDGET) {
            Ok(s) => format!(
                "set from {} (stratum {}, delay {} ms): {}, moved {:+.3} s",
                s.server,
                s.stratum,
                s.delay_us / 1000,
                format_utc(s.now),
                s.offset_us as f64 / 1e6
            ),
            Err(why) => format!(
                "{why}; the clock stays at {} from the RTC",
                format_utc(now_unix())
            ),
        }
    };
    console::phase(Phase::Clock, &detail);
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

/// Asks the servers in turn until one answers, within `budget`; sets the clock.
pub fn sync(servers: &[ServerName], budget: Duration) -> Result<Synced, String> {
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
                    let offset_us = result.offset();
                    set_clock(offset_us).map_err(|e| format!("cannot set the clock: {e}"))?;
                    return Ok(Synced {
                        server: server.to_string(),
                        stratum: result.stratum(),
                        offset_us,
                        delay_us: result.roundtrip(),
                        now: now_unix(),
                    });
                }
                Err(e) => failures.push(format!("{server}: {e}")),
            }
        }
    }
    Err(format!("no time server answered ({})", failures.join("; ")))
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
        let context = NtpContext::new(RealtimeClock::default());
        match sntpc::sync::get_time(addr, &Socket(&socket), context) {
            Ok(result) => return Ok(result),
            Err(sntpc::Error::Network) => last = "no answer".into(),
            Err(e) => last = format!("bad answer ({e:?})"),
        }
    }
    Err(last)
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

/// The wall clock in Unix seconds.
pub fn now_unix() -> i64 {
    clock_gettime(ClockId::CLOCK_REALTIME)
        .map(|t| t.tv_sec())
        .unwrap_or(0)
}

/// Formats Unix seconds as an RFC 3339 UTC time (`2031-05-17T12:00:05Z`).
pub fn format_utc(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
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
