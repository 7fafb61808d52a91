//! Interface setup through rtnetlink: list links, bring them up, set the MTU, add and
//! remove IPv4 addresses (with the lease's lifetime, so the kernel itself drops an address
//! whose lease ran out), add routes.
//!
//! rtnetlink rather than the classic `SIOCSIF*`/`SIOCADDRT` ioctls: an address and its
//! prefix go in one message, lifetimes and route metrics exist only here, every request is
//! acknowledged with an errno, and there is no `unsafe` on our side (the ioctls need C
//! structs filled by hand). The packets are `netlink-packet-route`'s typed messages; the
//! socket is `netlink-sys`'s, used synchronously (one request, then its replies).

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkHeader,
    NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope, CacheInfo};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkLayerType, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::protocols::NETLINK_ROUTE;
use netlink_sys::{Socket, SocketAddr};

/// A network interface as the kernel lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Kernel name (`eth0`).
    pub name: String,
    /// Hardware address, for Ethernet.
    pub mac: Option<[u8; 6]>,
    /// Ethernet (not loopback, not a tunnel).
    pub ethernet: bool,
    /// Administratively up.
    pub up: bool,
    /// The link has carrier (`IFF_LOWER_UP`).
    pub carrier: bool,
    /// Current MTU.
    pub mtu: u32,
}

/// An IPv4 route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// Destination network.
    pub destination: Ipv4Addr,
    /// Its prefix length (0 for the default route).
    pub prefix_len: u8,
    /// Next hop; `None` for a destination on the link.
    pub gateway: Option<Ipv4Addr>,
    /// Outgoing interface.
    pub index: u32,
    /// Metric (lower wins).
    pub metric: u32,
    /// Who made it: DHCP or static configuration.
    pub dhcp: bool,
}

/// A route netlink socket.
#[derive(Debug)]
pub struct Netlink {
    socket: Socket,
    sequence: u32,
}

impl Netlink {
    /// Opens the socket.
    pub fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Self {
            socket,
            sequence: 0,
        })
    }

    /// Every link.
    pub fn links(&mut self) -> io::Result<Vec<Link>> {
        let replies = self.request(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(links_of(replies))
    }

    /// Brings a link up.
    pub fn set_up(&mut self, index: u32) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        self.request(RouteNetlinkMessage::SetLink(msg), NLM_F_ACK)
            .map(drop)
    }

    /// Sets a link's MTU.
    pub fn set_mtu(&mut self, index: u32, mtu: u32) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::Mtu(mtu));
        self.request(RouteNetlinkMessage::SetLink(msg), NLM_F_ACK)
            .map(drop)
    }

    /// Adds (or refreshes) an IPv4 address; with a lifetime, the kernel removes it when the
    /// lifetime ends.
    pub fn add_address(
        &mut self,
        index: u32,
        address: Ipv4Addr,
        prefix_len: u8,
        lifetime: Option<Duration>,
    ) -> io::Result<()> {
        let mut msg = address_message(index, address, prefix_len);
        let mask = u32::MAX
            .checked_shl(32 - u32::from(prefix_len))
            .unwrap_or(0);
        if prefix_len < 31 {
            let broadcast = Ipv4Addr::from(u32::from(address) | !mask);
            msg.attributes.push(AddressAttribute::Broadcast(broadcast));
        }
        let secs = lifetime.map_or(u32::MAX, |l| {
            u32::try_from(l.as_secs())
                .unwrap_or(u32::MAX - 1)
                .min(u32::MAX - 1)
        });
        let mut lifetime = CacheInfo::default();
        lifetime.ifa_preferred = secs;
        lifetime.ifa_valid = secs;
        msg.attributes.push(AddressAttribute::CacheInfo(lifetime));
        self.request(
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map(drop)
    }

    /// Removes an IPv4 address (absent already is fine).
    pub fn del_address(&mut self, index: u32, address: Ipv4Addr, prefix_len: u8) -> io::Result<()> {
        match self.request(
            RouteNetlinkMessage::DelAddress(address_message(index, address, prefix_len)),
            NLM_F_ACK,
        ) {
            Err(e) if e.raw_os_error() == Some(nix::libc::EADDRNOTAVAIL) => Ok(()),
            other => other.map(drop),
        }
    }

    /// The addresses of a link (both families), with prefix lengths.
    pub fn addresses(&mut self, index: u32) -> io::Result<Vec<(IpAddr, u8)>> {
        let replies = self.request(
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(addresses_of(replies, index))
    }

    /// Adds or replaces a route.
    pub fn add_route(&mut self, route: &Route) -> io::Result<()> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        msg.header.destination_prefix_length = route.prefix_len;
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        msg.header.protocol = if route.dhcp {
            RouteProtocol::Dhcp
        } else {
            RouteProtocol::Static
        };
        msg.header.scope = if route.gateway.is_some() {
            RouteScope::Universe
        } else {
            RouteScope::Link
        };
        msg.header.kind = RouteType::Unicast;
        if route.prefix_len > 0 {
            msg.attributes
                .push(RouteAttribute::Destination(RouteAddress::Inet(
                    route.destination,
                )));
        }
        if let Some(gateway) = route.gateway {
            msg.attributes
                .push(RouteAttribute::Gateway(RouteAddress::Inet(gateway)));
        }
        msg.attributes.push(RouteAttribute::Oif(route.index));
        msg.attributes.push(RouteAttribute::Priority(route.metric));
        self.request(
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map(drop)
    }

    /// Sends one request and collects its replies: until `NLMSG_DONE` for a dump, until
    /// the acknowledgement otherwise. A negative acknowledgement is the errno it carries.
    fn request(
        &mut self,
        payload: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.sequence = self.sequence.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.sequence;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(payload));
        packet.finalize();
        let mut buf = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket.send(&buf, 0)?;
        let mut replies = Vec::new();
        loop {
            let (datagram, _) = self.socket.recv_from_full()?;
            if read_datagram(&datagram, self.sequence, &mut replies)? {
                return Ok(replies);
            }
        }
    }
}

/// Reads the kernel's messages in one datagram, keeping the replies to request `sequence`
/// in `replies`; `Ok(true)` once the request is answered in full (`NLMSG_DONE` or the
/// acknowledgement), the errno of a negative acknowledgement as an error.
pub(crate) fn read_datagram(
    datagram: &[u8],
    sequence: u32,
    replies: &mut Vec<RouteNetlinkMessage>,
) -> io::Result<bool> {
    let mut at = 0;
    while at < datagram.len() {
        let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&datagram[at..])
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        let length = reply.header.length as usize;
        if reply.header.sequence_number == sequence {
            match reply.payload {
                NetlinkPayload::Done(_) => return Ok(true),
                NetlinkPayload::Error(e) => {
                    return match e.code {
                        None => Ok(true),
                        // The errno is the code negated. Not `e.to_io()`: it negates with
                        // `abs()`, which overflows on i32::MIN.
                        Some(code) => {
                            Err(io::Error::from_raw_os_error(code.get().saturating_abs()))
                        }
                    };
                }
                NetlinkPayload::InnerMessage(m) => replies.push(m),
                _ => {}
            }
        }
        if length == 0 {
            break;
        }
        at += length.div_ceil(4) * 4;
    }
    Ok(false)
}

/// The links in a dump's replies.
pub(crate) fn links_of(replies: Vec<RouteNetlinkMessage>) -> Vec<Link> {
    replies
        .into_iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewLink(link) => Some(to_link(&link)),
            _ => None,
        })
        .collect()
}

/// The addresses of link `index` in a dump's replies, with prefix lengths.
pub(crate) fn addresses_of(replies: Vec<RouteNetlinkMessage>, index: u32) -> Vec<(IpAddr, u8)> {
    replies
        .into_iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewAddress(a) if a.header.index == index => {
                let ip = a.attributes.iter().find_map(|attr| match attr {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })?;
                Some((ip, a.header.prefix_len))
            }
            _ => None,
        })
        .collect()
}

fn address_message(index: u32, address: Ipv4Addr, prefix_len: u8) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.family = AddressFamily::Inet;
    msg.header.prefix_len = prefix_len;
    msg.header.scope = AddressScope::Universe;
    msg.header.index = index;
    msg.attributes
        .push(AddressAttribute::Local(IpAddr::V4(address)));
    msg.attributes
        .push(AddressAttribute::Address(IpAddr::V4(address)));
    msg
}

fn to_link(msg: &LinkMessage) -> Link {
    let mut link = Link {
        index: msg.header.index,
        name: String::new(),
        mac: None,
        ethernet: msg.header.link_layer_type == LinkLayerType::Ether,
        up: msg.header.flags.contains(LinkFlags::Up),
        carrier: msg.header.flags.contains(LinkFlags::LowerUp),
        mtu: 0,
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(name) => link.name = name.clone(),
            LinkAttribute::Address(mac) => link.mac = <[u8; 6]>::try_from(mac.as_slice()).ok(),
            LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
            _ => {}
        }
    }
    link
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The loopback device exists in every network namespace, test machines included: the
    /// dump must find it, with its name and flags decoded.
    #[test]
    fn an_error_code_of_i32_min_is_an_error_not_a_panic() {
        // Found by `cargo xtask fuzz netlink`: NLMSG_ERROR with code -2^31 overflowed the
        // negation in netlink-packet-core's ErrorMessage::to_io.
        let found = include_bytes!("../../../fuzz/regressions/netlink/error-code-i32-min");
        let sequence = u32::from_ne_bytes(found[8..12].try_into().unwrap());
        let err = read_datagram(found, sequence, &mut Vec::new()).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(i32::MAX));
        // An ordinary refusal keeps its errno.
        let mut nack = found.to_vec();
        nack[16..20].copy_from_slice(&(-nix::libc::ENODEV).to_ne_bytes());
        let err = read_datagram(&nack, sequence, &mut Vec::new()).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(nix::libc::ENODEV));
    }

    #[test]
    fn lists_the_loopback_link() {
        let mut nl = Netlink::open().unwrap();
        let links = nl.links().unwrap();
        let lo = links.iter().find(|l| l.name == "lo").expect("lo");
        assert!(!lo.ethernet);
        assert_eq!(lo.index, 1);
        assert!(lo.mtu > 0);
        // A second request on the same socket works (sequence numbers move on).
        assert_eq!(nl.links().unwrap().len(), links.len());
    }

    #[test]
    fn a_refused_request_returns_the_errno() {
        let mut nl = Netlink::open().unwrap();
        // There is no interface 0x7fff_fff0.
        let err = nl.set_mtu(0x7fff_fff0, 1500).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(nix::libc::ENODEV), "{err}");
    }
}
