//! The DHCP client's UDP socket: bound to `0.0.0.0:68` on one interface
//! (`SO_BINDTODEVICE`), allowed to broadcast, non-blocking.
//!
//! A plain UDP socket is enough while the client sets the broadcast flag: the kernel sends
//! from 0.0.0.0 on an interface without an address, and receives the server's broadcast
//! replies. Raw `AF_PACKET` sockets are only needed for servers that ignore the flag and
//! unicast to an address the interface does not have yet.

use std::ffi::OsString;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsFd, BorrowedFd};

use dhcproto::Encodable;
use dhcproto::v4::Message;
use nix::sys::socket::{
    AddressFamily, SockFlag, SockType, SockaddrIn, bind, setsockopt, socket, sockopt,
};

use super::dhcp::Destination;

/// The DHCP client port.
pub const CLIENT_PORT: u16 = 68;
/// The DHCP server port.
pub const SERVER_PORT: u16 = 67;

/// A DHCP client socket on one interface.
#[derive(Debug)]
pub struct DhcpSocket {
    socket: UdpSocket,
}

impl DhcpSocket {
    /// Binds to port 68 on `interface`.
    pub fn bind(interface: &str) -> io::Result<Self> {
        let fd = socket(
            AddressFamily::Inet,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )?;
        setsockopt(&fd, sockopt::ReuseAddr, &true)?;
        setsockopt(&fd, sockopt::Broadcast, &true)?;
        setsockopt(&fd, sockopt::BindToDevice, &OsString::from(interface))?;
        bind(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &SockaddrIn::from(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, CLIENT_PORT)),
        )?;
        Ok(Self {
            socket: UdpSocket::from(fd),
        })
    }

    /// Sends a message.
    pub fn send(&self, msg: &Message, to: Destination) -> io::Result<()> {
        let bytes = msg
            .to_vec()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let ip = match to {
            Destination::Broadcast => Ipv4Addr::BROADCAST,
            Destination::Server(ip) => ip,
        };
        self.socket
            .send_to(&bytes, SocketAddrV4::new(ip, SERVER_PORT))
            .map(drop)
    }

    /// Every message waiting on the socket (those that do not decode are skipped).
    pub fn receive(&self) -> Vec<Message> {
        let mut messages = Vec::new();
        let mut buf = [0u8; 1500];
        while let Ok((n, _)) = self.socket.recv_from(&mut buf) {
            if let Some(msg) = super::dhcp::decode(&buf[..n]) {
                messages.push(msg);
            }
        }
        messages
    }
}

impl AsFd for DhcpSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}
