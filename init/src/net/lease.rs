//! A DHCPv4 lease: what a DHCPACK granted, and when it must be renewed, rebound, and
//! given up (RFC 2131 §4.4.5).

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use dhcproto::v4::{DhcpOption, Message, OptionCode};

/// A route DHCP asked for (option 121, RFC 3442).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StaticRoute {
    /// Destination network.
    pub destination: Ipv4Addr,
    /// Prefix length.
    pub prefix_len: u8,
    /// Next hop; 0.0.0.0 means on the link.
    pub gateway: Ipv4Addr,
}

/// What the server granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Our address.
    pub address: Ipv4Addr,
    /// The subnet's prefix length (option 1; classful when absent).
    pub prefix_len: u8,
    /// The server that granted it (option 54).
    pub server: Ipv4Addr,
    /// Routers, in order of preference (option 3).
    pub routers: Vec<Ipv4Addr>,
    /// Classless static routes (option 121); when present, routers are ignored (RFC 3442).
    pub routes: Vec<StaticRoute>,
    /// Name servers (option 6).
    pub dns: Vec<Ipv4Addr>,
    /// Domain name (option 15), the search domain.
    pub domain: Option<String>,
    /// Interface MTU (option 26).
    pub mtu: Option<u16>,
    /// NTP servers (option 42).
    pub ntp: Vec<Ipv4Addr>,
    /// Host name the server suggests (option 12).
    pub hostname: Option<String>,
    /// The boot file the server names (option 67, else the BOOTP `file` field): a network
    /// boot's URL when it is `http(s)://` (UEFI HTTP boot).
    pub boot_file: Option<String>,
    /// Lease time (option 51); `None` for an infinite lease.
    pub duration: Option<Duration>,
    /// Renewal time T1 after `acquired` (option 58, else half the lease).
    pub renew_after: Option<Duration>,
    /// Rebinding time T2 after `acquired` (option 59, else 7/8 of the lease).
    pub rebind_after: Option<Duration>,
    /// When the request that got it was sent: the lease's times count from there.
    pub acquired: Instant,
}

/// Option 51's "infinity".
const INFINITE: u32 = u32::MAX;
/// A lease without option 51 (a broken server) is taken as one hour.
const DEFAULT_LEASE: u32 = 3600;

/// The boot file name of an ACK: option 67, else the `file` header field; printable
/// ASCII only, trailing NULs dropped.
fn boot_file(ack: &Message) -> Option<String> {
    let raw = match ack.opts().get(OptionCode::BootfileName) {
        Some(DhcpOption::BootfileName(name)) => Some(name.as_slice()),
        _ => ack.fname(),
    }?;
    let name = std::str::from_utf8(raw).ok()?;
    let name = name.trim_end_matches('\0').trim();
    (!name.is_empty() && name.chars().all(|c| c.is_ascii_graphic())).then(|| name.to_owned())
}

impl Lease {
    /// The lease a DHCPACK grants, taking its times from `acquired`.
    pub fn from_ack(ack: &Message, acquired: Instant) -> Result<Self, String> {
        let address = ack.yiaddr();
        if address.is_unspecified() || address.is_broadcast() || address.is_multicast() {
            return Err(format!("the ACK offers no usable address ({address})"));
        }
        let opts = ack.opts();
        let server = match opts.get(OptionCode::ServerIdentifier) {
            Some(DhcpOption::ServerIdentifier(ip)) => *ip,
            _ => ack.siaddr(),
        };
        let prefix_len = match opts.get(OptionCode::SubnetMask) {
            Some(DhcpOption::SubnetMask(mask)) => {
                prefix_of(*mask).ok_or_else(|| format!("subnet mask {mask} is not contiguous"))?
            }
            _ => classful(address),
        };
        let ips = |code| match opts.get(code) {
            Some(
                DhcpOption::Router(v) | DhcpOption::DomainNameServer(v) | DhcpOption::NtpServers(v),
            ) => v.clone(),
            _ => Vec::new(),
        };
        let text = |code| match opts.get(code) {
            Some(DhcpOption::DomainName(s) | DhcpOption::Hostname(s)) => {
                let s = s.trim_end_matches('\0').trim();
                (!s.is_empty() && s.chars().all(|c| c.is_ascii_graphic())).then(|| s.to_owned())
            }
            _ => None,
        };
        let seconds = |code| match opts.get(code) {
            Some(
                DhcpOption::AddressLeaseTime(s) | DhcpOption::Renewal(s) | DhcpOption::Rebinding(s),
            ) => Some(*s),
            _ => None,
        };
        let routes = match opts.get(OptionCode::ClasslessStaticRoute) {
            Some(DhcpOption::ClasslessStaticRoute(list)) => list
                .iter()
                .map(|(net, gateway)| StaticRoute {
                    destination: net.network(),
                    prefix_len: net.prefix_len(),
                    gateway: *gateway,
                })
                .collect(),
            _ => Vec::new(),
        };
        let mtu = match opts.get(OptionCode::InterfaceMtu) {
            Some(DhcpOption::InterfaceMtu(m)) if *m >= 68 => Some(*m),
            _ => None,
        };
        let lease_secs = seconds(OptionCode::AddressLeaseTime).unwrap_or(DEFAULT_LEASE);
        let (duration, renew_after, rebind_after) = if lease_secs == INFINITE {
            (None, None, None)
        } else {
            // At least a minute: a zero lease would have us spin.
            let lease = lease_secs.max(60);
            let rebind = seconds(OptionCode::Rebinding)
                .filter(|t| *t < lease)
                .unwrap_or(lease / 8 * 7);
            let renew = seconds(OptionCode::Renewal)
                .filter(|t| *t <= rebind)
                .unwrap_or((lease / 2).min(rebind));
            let s = |n: u32| Some(Duration::from_secs(u64::from(n)));
            (s(lease), s(renew), s(rebind))
        };
        Ok(Self {
            address,
            prefix_len,
            server,
            routers: ips(OptionCode::Router),
            routes,
            dns: ips(OptionCode::DomainNameServer),
            domain: text(OptionCode::DomainName),
            mtu,
            ntp: ips(OptionCode::NtpServers),
            hostname: text(OptionCode::Hostname),
            boot_file: boot_file(ack),
            duration,
            renew_after,
            rebind_after,
            acquired,
        })
    }

    /// When to renew (T1).
    pub fn renew_at(&self) -> Option<Instant> {
        self.renew_after.map(|d| self.acquired + d)
    }

    /// When to rebind (T2).
    pub fn rebind_at(&self) -> Option<Instant> {
        self.rebind_after.map(|d| self.acquired + d)
    }

    /// When it expires.
    pub fn expires_at(&self) -> Option<Instant> {
        self.duration.map(|d| self.acquired + d)
    }

    /// What is left of it at `now` (`None`: forever), for the address lifetime.
    pub fn remaining(&self, now: Instant) -> Option<Duration> {
        self.expires_at().map(|e| e.saturating_duration_since(now))
    }

    /// The gateway of the default route: option 121's default route if it has one, else
    /// the first router (when option 121 is absent).
    pub fn default_gateway(&self) -> Option<Ipv4Addr> {
        if self.routes.is_empty() {
            self.routers.first().copied()
        } else {
            self.routes
                .iter()
                .find(|r| r.prefix_len == 0)
                .map(|r| r.gateway)
        }
    }
}

/// The prefix length of a contiguous netmask.
pub fn prefix_of(mask: Ipv4Addr) -> Option<u8> {
    let bits = u32::from(mask);
    let ones = bits.leading_ones();
    (bits.checked_shl(ones).unwrap_or(0) == 0).then_some(ones as u8)
}

/// The classful prefix of an address (what a mask-less lease falls back to).
fn classful(ip: Ipv4Addr) -> u8 {
    match ip.octets()[0] {
        0..=127 => 8,
        128..=191 => 16,
        _ => 24,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netmasks_become_prefixes() {
        assert_eq!(prefix_of(Ipv4Addr::new(255, 255, 255, 0)), Some(24));
        assert_eq!(prefix_of(Ipv4Addr::new(255, 255, 240, 0)), Some(20));
        assert_eq!(prefix_of(Ipv4Addr::new(255, 255, 255, 255)), Some(32));
        assert_eq!(prefix_of(Ipv4Addr::UNSPECIFIED), Some(0));
        assert_eq!(prefix_of(Ipv4Addr::new(255, 0, 255, 0)), None);
        assert_eq!(classful(Ipv4Addr::new(10, 0, 2, 15)), 8);
        assert_eq!(classful(Ipv4Addr::new(192, 168, 1, 2)), 24);
    }
}
