//! The host's network: loopback, every Ethernet interface brought up, DHCPv4 or static
//! IPv4 addressing per the host configuration, `/etc/resolv.conf`, and IPv6 router
//! advertisements accepted (SLAAC is the kernel's).
//!
//! [`Network`] owns the interfaces from the first packet to power-off. At boot it waits a
//! bounded time for carrier and for leases ([`Network::phase`]); whatever is still
//! missing then does not hold the boot up, the clients keep trying. After boot it is a
//! [`Task`] of PID 1's event loop: its DHCP sockets are polled, and its clients' timers
//! (retransmission, renewal at T1, rebinding at T2, expiry) are its deadline.
//!
//! Parts: [`dhcp`] is the pure DHCPv4 state machine, [`lease`] what an ACK grants,
//! [`socket`] the DHCP UDP socket, [`netlink`] interface setup through rtnetlink,
//! [`resolv`] the resolver file.

pub mod dhcp;
pub mod lease;
pub mod netlink;
pub mod resolv;
pub mod socket;

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use crust_format::phase::Phase;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::config::apply;
use crate::config::schema::{Cidr, HostConfig, Interface};
use crate::console;
use crate::event::{Control, Task};
use dhcp::{Action, Client};
use lease::Lease;
use netlink::{Link, Netlink, Route};
use socket::DhcpSocket;

/// How long the boot waits for Ethernet links to report carrier.
pub const CARRIER_WAIT: Duration = Duration::from_secs(3);
/// How long IMDS's early DHCP waits for a lease (the config phase).
pub const METADATA_DHCP_WAIT: Duration = Duration::from_secs(10);
/// Route metric of an interface's default route: this plus the interface index, so the
/// first interface wins and each keeps its own route.
const DEFAULT_ROUTE_METRIC: u32 = 1024;

/// One interface under DHCP.
#[derive(Debug)]
struct Dhcp {
    link: Link,
    socket: DhcpSocket,
    client: Client,
    /// The lease applied to the interface.
    applied: Option<Lease>,
    /// An MTU the configuration sets (wins over DHCP's).
    mtu: Option<u16>,
    /// Name servers the configuration adds.
    dns: Vec<IpAddr>,
}

/// One interface with a static address.
#[derive(Debug, Clone)]
struct Static {
    link: Link,
    address: Cidr,
    gateway: Option<Ipv4Addr>,
    dns: Vec<IpAddr>,
}

/// The host's network interfaces.
#[derive(Debug)]
pub struct Network {
    netlink: Option<Netlink>,
    /// Ethernet links, by index order.
    links: Vec<Link>,
    dhcp: Vec<Dhcp>,
    statics: Vec<Static>,
    /// The host name sent to DHCP servers.
    hostname: Option<String>,
    /// Set when no configured host name exists: DHCP's may be used.
    hostname_from_dhcp: bool,
    problems: Vec<String>,
}

impl Network {
    /// Brings up loopback and every Ethernet link; nothing is addressed yet.
    /// Brings every Ethernet link (and loopback) up, as early as stage 1 can: a NIC takes
    /// about a second from "up" to carrying traffic, which then overlaps the rest of the
    /// boot instead of delaying DHCP. Problems are left for [`Network::start`] to report.
    pub fn bring_up_early() {
        let Ok(mut nl) = Netlink::open() else { return };
        let Ok(links) = nl.links() else { return };
        for link in links
            .iter()
            .filter(|l| (l.name == "lo" || l.ethernet) && !l.up)
        {
            let _ = nl.set_up(link.index);
        }
    }

    /// Brings the links up (if stage 1 has not) and prepares their configuration.
    pub fn start() -> Self {
        let mut network = Self {
            netlink: None,
            links: Vec::new(),
            dhcp: Vec::new(),
            statics: Vec::new(),
            hostname: None,
            hostname_from_dhcp: true,
            problems: Vec::new(),
        };
        let mut nl = match Netlink::open() {
            Ok(nl) => nl,
            Err(e) => {
                network.problems.push(format!("no rtnetlink socket: {e}"));
                return network;
            }
        };
        match nl.links() {
            Ok(links) => {
                for link in &links {
                    let wanted = link.name == "lo" || link.ethernet;
                    if wanted
                        && !link.up
                        && let Err(e) = nl.set_up(link.index)
                    {
                        network
                            .problems
                            .push(format!("cannot bring {} up: {e}", link.name));
                    }
                }
                network.links = links.into_iter().filter(|l| l.ethernet).collect();
            }
            Err(e) => network.problems.push(format!("cannot list links: {e}")),
        }
        for link in &network.links {
            accept_router_advertisements(&link.name);
        }
        network.netlink = Some(nl);
        network
    }

    /// Brings DHCP up on every Ethernet link with carrier and waits (bounded) for a lease,
    /// so that the config phase can ask EC2's IMDS. The network phase keeps these clients.
    pub fn up_for_metadata(&mut self) -> Result<(), String> {
        self.wait_for_carrier();
        let names: Vec<Link> = self.links.iter().filter(|l| l.carrier).cloned().collect();
        if names.is_empty() {
            return Err("no Ethernet interface has a link".into());
        }
        for link in names {
            self.start_dhcp(&link, &Interface::default());
        }
        self.wait_for_leases(METADATA_DHCP_WAIT);
        if self.dhcp.iter().any(|d| d.applied.is_some()) {
            Ok(())
        } else {
            Err(format!(
                "no DHCP lease within {} s",
                METADATA_DHCP_WAIT.as_secs()
            ))
        }
    }

    /// The server that granted the first lease (option 54): where a network boot fetches
    /// its images from.
    pub fn dhcp_server(&self) -> Option<Ipv4Addr> {
        self.dhcp
            .iter()
            .find_map(|d| d.applied.as_ref().map(|l| l.server))
    }

    /// The boot file the first lease names (a UEFI HTTP boot's URL, or a PXE file name).
    pub fn dhcp_boot_file(&self) -> Option<String> {
        self.dhcp
            .iter()
            .find_map(|d| d.applied.as_ref().and_then(|l| l.boot_file.clone()))
    }

    /// The `network` phase: configures every Ethernet link as `config` says, waits up to
    /// `network.dhcp_timeout` for leases, writes `/etc/resolv.conf`, prints the line.
    pub fn phase(&mut self, config: &HostConfig) {
        self.hostname = config.hostname.clone();
        self.hostname_from_dhcp = config.hostname.is_none();
        for name in config.network.interfaces.keys() {
            if !self.links.iter().any(|l| &l.name == name) {
                console::warning(&format!(
                    "network: the configuration names {name}, which this machine does not have"
                ));
            }
        }
        self.wait_for_carrier();
        for link in self.links.clone() {
            let iface = config.network.interface(&link.name);
            if let Some(address) = iface.address {
                self.stop_dhcp(link.index);
                self.set_static(&link, address, &iface);
            } else if iface.uses_dhcp() && link.carrier {
                self.start_dhcp(&link, &iface);
            } else {
                self.stop_dhcp(link.index);
            }
        }
        self.wait_for_leases(Duration::from_secs(u64::from(config.network.dhcp_timeout)));
        self.write_resolv_conf();
        let hostname = self.hostname_line();
        let mut detail = self.describe(config);
        detail.push_str(&hostname);
        console::phase(Phase::Network, &detail);
    }

    /// The NTP servers the leases offered (option 42).
    pub fn ntp_servers(&self) -> Vec<Ipv4Addr> {
        self.dhcp
            .iter()
            .filter_map(|d| d.applied.as_ref())
            .flat_map(|l| l.ntp.iter().copied())
            .collect()
    }

    fn wait_for_carrier(&mut self) {
        let deadline = Instant::now() + CARRIER_WAIT;
        loop {
            if self.links.iter().all(|l| l.carrier) || Instant::now() >= deadline {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
            let Some(nl) = self.netlink.as_mut() else {
                return;
            };
            if let Ok(all) = nl.links() {
                for link in &mut self.links {
                    if let Some(now) = all.iter().find(|l| l.index == link.index) {
                        link.carrier = now.carrier;
                        link.mtu = now.mtu;
                    }
                }
            }
        }
    }

    fn start_dhcp(&mut self, link: &Link, iface: &Interface) {
        if let Some(d) = self.dhcp.iter_mut().find(|d| d.link.index == link.index) {
            d.mtu = iface.mtu;
            d.dns = iface.dns.clone();
            return;
        }
        let Some(mac) = link.mac else {
            self.problems
                .push(format!("{} has no hardware address for DHCP", link.name));
            return;
        };
        let socket = match DhcpSocket::bind(&link.name) {
            Ok(s) => s,
            Err(e) => {
                self.problems
                    .push(format!("{}: no DHCP socket: {e}", link.name));
                return;
            }
        };
        let seed = random_seed()
            ^ u64::from_le_bytes([mac[0], mac[1], mac[2], mac[3], mac[4], mac[5], 0, 0]);
        let (client, actions) = Client::start(mac, self.hostname.clone(), seed, Instant::now());
        let mut d = Dhcp {
            link: link.clone(),
            socket,
            client,
            applied: None,
            mtu: iface.mtu,
            dns: iface.dns.clone(),
        };
        perform(self.netlink.as_mut(), &mut d, actions, Instant::now());
        self.dhcp.push(d);
    }

    fn stop_dhcp(&mut self, index: u32) {
        if let Some(at) = self.dhcp.iter().position(|d| d.link.index == index) {
            let mut d = self.dhcp.remove(at);
            if let Some(lease) = d.applied.take() {
                drop_lease(self.netlink.as_mut(), &d.link, &lease);
            }
        }
    }

    fn set_static(&mut self, link: &Link, address: Cidr, iface: &Interface) {
        let Some(nl) = self.netlink.as_mut() else {
            return;
        };
        let mut fail = |what: String| self.problems.push(what);
        if let Some(mtu) = iface.mtu
            && u32::from(mtu) != link.mtu
            && let Err(e) = nl.set_mtu(link.index, u32::from(mtu))
        {
            fail(format!("{}: cannot set MTU {mtu}: {e}", link.name));
        }
        if let Err(e) = nl.add_address(link.index, address.address, address.prefix_len, None) {
            fail(format!("{}: cannot add {address}: {e}", link.name));
        }
        if let Some(gateway) = iface.gateway {
            let route = Route {
                destination: Ipv4Addr::UNSPECIFIED,
                prefix_len: 0,
                gateway: Some(gateway),
                index: link.index,
                metric: DEFAULT_ROUTE_METRIC + link.index,
                dhcp: false,
            };
            if let Err(e) = nl.add_route(&route) {
                fail(format!("{}: cannot route via {gateway}: {e}", link.name));
            }
        }
        self.statics.retain(|s| s.link.index != link.index);
        self.statics.push(Static {
            link: link.clone(),
            address,
            gateway: iface.gateway,
            dns: iface.dns.clone(),
        });
    }

    /// Runs the DHCP clients until each holds a lease or `timeout` passes.
    fn wait_for_leases(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let now = Instant::now();
            if self.dhcp.iter().all(|d| d.client.lease().is_some()) || now >= deadline {
                return;
            }
            let wake = self
                .deadline()
                .map_or(deadline, |d| d.min(deadline))
                .saturating_duration_since(now);
            let ready = {
                let mut fds: Vec<PollFd<'_>> = self
                    .fds()
                    .into_iter()
                    .map(|fd| PollFd::new(fd, PollFlags::POLLIN))
                    .collect();
                let ms = u16::try_from(wake.as_millis()).unwrap_or(u16::MAX);
                if poll(&mut fds, PollTimeout::from(ms)).is_err() {
                    std::thread::sleep(Duration::from_millis(10));
                }
                fds.iter()
                    .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
                    .collect::<Vec<bool>>()
            };
            self.step(&ready, Instant::now());
        }
    }

    /// Feeds the clients what arrived and what is due.
    fn step(&mut self, ready: &[bool], now: Instant) {
        let mut dns_changed = false;
        for (i, d) in self.dhcp.iter_mut().enumerate() {
            let mut actions = Vec::new();
            if ready.get(i).copied().unwrap_or(false) {
                for msg in d.socket.receive() {
                    actions.extend(d.client.on_message(&msg, now));
                }
            }
            if d.client.deadline().is_some_and(|t| t <= now) {
                actions.extend(d.client.on_timer(now));
            }
            dns_changed |= perform(self.netlink.as_mut(), d, actions, now);
        }
        if dns_changed {
            self.write_resolv_conf();
        }
    }

    fn write_resolv_conf(&self) {
        let mut servers: Vec<IpAddr> = Vec::new();
        let mut search = Vec::new();
        for s in &self.statics {
            servers.extend(&s.dns);
        }
        for d in &self.dhcp {
            servers.extend(&d.dns);
            if let Some(lease) = &d.applied {
                servers.extend(lease.dns.iter().map(|ip| IpAddr::V4(*ip)));
                search.extend(lease.domain.clone());
            }
        }
        let text = resolv::render(&servers, &search);
        if let Err(e) = resolv::write(Path::new(resolv::RESOLV_CONF), &text) {
            console::warning(&format!(
                "network: cannot write {}: {e}",
                resolv::RESOLV_CONF
            ));
        }
    }

    /// Sets the host name DHCP offers when the configuration has none; returns the tail of
    /// the phase line.
    fn hostname_line(&self) -> String {
        if !self.hostname_from_dhcp {
            return String::new();
        }
        let offered = self
            .dhcp
            .iter()
            .filter_map(|d| d.applied.as_ref()?.hostname.clone())
            .find(|h| crate::config::schema::check_hostname(h).is_ok());
        let (name, from) = match offered {
            Some(name) => (name, "DHCP"),
            None => ("crust".to_owned(), "default"),
        };
        match apply::hostname(&name) {
            Ok(now) => format!("; hostname {now} ({from})"),
            Err(e) => {
                console::warning(&format!("network: cannot set the host name {name}: {e}"));
                String::new()
            }
        }
    }

    fn describe(&mut self, config: &HostConfig) -> String {
        let mut parts = Vec::new();
        let mut ipv6 = Vec::new();
        if let Some(nl) = self.netlink.as_mut() {
            for link in &self.links {
                for (ip, prefix) in nl.addresses(link.index).unwrap_or_default() {
                    if let IpAddr::V6(v6) = ip
                        && !v6.is_unicast_link_local()
                    {
                        ipv6.push(format!("{} {v6}/{prefix}", link.name));
                    }
                }
            }
        }
        for link in &self.links {
            let mut text = link.name.clone();
            if let Some(s) = self.statics.iter().find(|s| s.link.index == link.index) {
                let _ = write!(text, " {} static", s.address);
                if let Some(gw) = s.gateway {
                    let _ = write!(text, ", gateway {gw}");
                }
            } else if let Some(d) = self.dhcp.iter().find(|d| d.link.index == link.index) {
                match &d.applied {
                    Some(l) => {
                        let _ = write!(
                            text,
                            " {}/{} by DHCP from {}",
                            l.address, l.prefix_len, l.server
                        );
                        if let Some(gw) = l.default_gateway() {
                            let _ = write!(text, ", gateway {gw}");
                        }
                        if !l.dns.is_empty() {
                            let dns: Vec<String> = l.dns.iter().map(ToString::to_string).collect();
                            let _ = write!(text, ", dns {}", dns.join(" "));
                        }
                        match l.duration {
                            Some(t) => {
                                let _ = write!(text, ", lease {} s", t.as_secs());
                            }
                            None => text.push_str(", lease forever"),
                        }
                    }
                    None => {
                        let _ = write!(
                            text,
                            " no DHCP lease within {} s (still trying, {})",
                            config.network.dhcp_timeout,
                            d.client.state().name()
                        );
                    }
                }
            } else if !link.carrier {
                text.push_str(" no link");
            } else {
                text.push_str(" not configured");
            }
            parts.push(text);
        }
        let mut detail = if parts.is_empty() {
            "no Ethernet interfaces; loopback only".to_owned()
        } else {
            let v6 = if ipv6.is_empty() {
                String::new()
            } else {
                format!(" ({})", ipv6.join(", "))
            };
            format!(
                "{}; IPv6 router advertisements accepted{v6}",
                parts.join("; ")
            )
        };
        for p in &self.problems {
            let _ = write!(detail, "; {p}");
        }
        detail
    }
}

impl Task for Network {
    fn fds(&self) -> Vec<BorrowedFd<'_>> {
        self.dhcp.iter().map(|d| d.socket.as_fd()).collect()
    }

    fn deadline(&self) -> Option<Instant> {
        self.dhcp.iter().filter_map(|d| d.client.deadline()).min()
    }

    fn run(&mut self, ready: &[bool], now: Instant) -> Control {
        self.step(ready, now);
        Control::Continue
    }
}

/// Carries out a client's actions on its interface; returns whether name servers changed.
fn perform(mut nl: Option<&mut Netlink>, d: &mut Dhcp, actions: Vec<Action>, now: Instant) -> bool {
    let mut dns_changed = false;
    for action in actions {
        match action {
            Action::Send(msg, to) => {
                // A lost packet is retransmitted; an error here is one lost packet.
                let _ = d.socket.send(&msg, to);
            }
            Action::Apply(lease) => {
                if let Some(nl) = nl.as_deref_mut() {
                    apply_lease(nl, d, &lease, now);
                }
                let changed_address = d
                    .applied
                    .as_ref()
                    .is_some_and(|old| old.address != lease.address);
                dns_changed |= d
                    .applied
                    .as_ref()
                    .is_none_or(|old| old.dns != lease.dns || old.domain != lease.domain);
                if changed_address {
                    console::warning(&format!(
                        "network: {} has a new DHCP lease {}/{}",
                        d.link.name, lease.address, lease.prefix_len
                    ));
                }
                d.applied = Some(lease);
            }
            Action::Drop(lease) => {
                drop_lease(nl.as_deref_mut(), &d.link, &lease);
                console::warning(&format!(
                    "network: {} lost its DHCP lease on {}",
                    d.link.name, lease.address
                ));
                if d.applied
                    .as_ref()
                    .is_some_and(|a| a.address == lease.address)
                {
                    d.applied = None;
                    dns_changed = true;
                }
            }
        }
    }
    dns_changed
}

fn apply_lease(nl: &mut Netlink, d: &Dhcp, lease: &Lease, now: Instant) {
    let name = &d.link.name;
    let warn = |what: String| console::warning(&format!("network: {name}: {what}"));
    if let Some(mtu) = d.mtu.or(lease.mtu).map(u32::from)
        && mtu != d.link.mtu
        && let Err(e) = nl.set_mtu(d.link.index, mtu)
    {
        warn(format!("cannot set MTU {mtu}: {e}"));
    }
    if let Err(e) = nl.add_address(
        d.link.index,
        lease.address,
        lease.prefix_len,
        lease.remaining(now),
    ) {
        warn(format!(
            "cannot add {}/{}: {e}",
            lease.address, lease.prefix_len
        ));
        return;
    }
    for route in lease_routes(lease, d.link.index) {
        if let Err(e) = nl.add_route(&route) {
            warn(format!(
                "cannot add route {}/{}: {e}",
                route.destination, route.prefix_len
            ));
        }
    }
}

/// The routes a lease asks for on link `index`: its classless static routes (option 121),
/// else a default route through its first router (and a route to that router first when it
/// is outside the subnet).
pub(crate) fn lease_routes(lease: &Lease, index: u32) -> Vec<Route> {
    let metric = DEFAULT_ROUTE_METRIC.saturating_add(index);
    let mut routes = Vec::new();
    if lease.routes.is_empty() {
        if let Some(gateway) = lease.routers.first().copied() {
            // A router outside the subnet (a /32 lease, say) needs a route to itself first.
            if !in_subnet(gateway, lease.address, lease.prefix_len) {
                routes.push(host_route(gateway, index, metric));
            }
            routes.push(Route {
                destination: Ipv4Addr::UNSPECIFIED,
                prefix_len: 0,
                gateway: Some(gateway),
                index,
                metric,
                dhcp: true,
            });
        }
    } else {
        for r in &lease.routes {
            routes.push(Route {
                destination: r.destination,
                prefix_len: r.prefix_len,
                gateway: (!r.gateway.is_unspecified()).then_some(r.gateway),
                index,
                metric,
                dhcp: true,
            });
        }
    }
    routes
}

fn host_route(to: Ipv4Addr, index: u32, metric: u32) -> Route {
    Route {
        destination: to,
        prefix_len: 32,
        gateway: None,
        index,
        metric,
        dhcp: true,
    }
}

fn drop_lease(nl: Option<&mut Netlink>, link: &Link, lease: &Lease) {
    // Routes through the address go with it.
    if let Some(nl) = nl
        && let Err(e) = nl.del_address(link.index, lease.address, lease.prefix_len)
    {
        console::warning(&format!(
            "network: {}: cannot remove {}: {e}",
            link.name, lease.address
        ));
    }
}

fn in_subnet(ip: Ipv4Addr, address: Ipv4Addr, prefix_len: u8) -> bool {
    let mask = u32::MAX
        .checked_shl(32 - u32::from(prefix_len))
        .unwrap_or(0);
    u32::from(ip) & mask == u32::from(address) & mask
}

/// IPv6 on `interface`: accept router advertisements even when forwarding is on (a
/// container host often turns it on), and configure addresses from them (SLAAC).
fn accept_router_advertisements(interface: &str) {
    for (name, value) in [("accept_ra", "2"), ("autoconf", "1")] {
        let key = format!("net/ipv6/conf/{interface}/{name}");
        if let Err(e) = apply::sysctl(&key, value).map(drop) {
            console::warning(&format!("network: {e}"));
        }
    }
}

/// Randomness for transaction ids: the kernel's, without waiting for its generator to be
/// seeded (ids must differ, not be secret); a clock value if there is none.
fn random_seed() -> u64 {
    let mut bytes = [0u8; 8];
    match crate::random::fill(&mut bytes) {
        Ok(()) => u64::from_le_bytes(bytes),
        Err(_) => crate::console::now().as_nanos() as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_contain_their_gateways() {
        let a = Ipv4Addr::new(10, 0, 2, 15);
        assert!(in_subnet(Ipv4Addr::new(10, 0, 2, 2), a, 24));
        assert!(!in_subnet(Ipv4Addr::new(10, 0, 3, 1), a, 24));
        assert!(!in_subnet(Ipv4Addr::new(10, 0, 2, 1), a, 32));
        assert!(in_subnet(Ipv4Addr::new(1, 2, 3, 4), a, 0));
    }
}
