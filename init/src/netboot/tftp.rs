//! A TFTP client (RFC 1350) with the block size and transfer size options (RFC 2347,
//! 2348, 2349): what the boot server that DHCP named serves, fetched into a file.
//!
//! Nothing fetched is trusted: the caller checks it against the signed manifest (through
//! dm-verity), so this only has to be a correct, bounded client.

use std::io::{self, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::time::Duration;

const RRQ: u16 = 1;
const DATA: u16 = 3;
const ACK: u16 = 4;
const ERROR: u16 = 5;
const OACK: u16 = 6;
/// The block size asked for: fits a 1500-byte Ethernet frame with IP, UDP and TFTP headers.
pub const BLOCK_SIZE: usize = 1468;
const DEFAULT_BLOCK_SIZE: usize = 512;
/// Per-packet wait before the last packet is sent again.
const PACKET_TIMEOUT: Duration = Duration::from_secs(1);
/// Sends of one packet before giving up.
const TRIES: u32 = 8;

/// The read request for `file`, asking for the block size and the transfer size.
pub fn read_request(file: &str) -> Vec<u8> {
    let mut p = RRQ.to_be_bytes().to_vec();
    for field in [
        file,
        "octet",
        "blksize",
        &BLOCK_SIZE.to_string(),
        "tsize",
        "0",
    ] {
        p.extend_from_slice(field.as_bytes());
        p.push(0);
    }
    p
}

/// The options of an OACK packet's body, as (name, value) pairs.
pub fn parse_options(body: &[u8]) -> Vec<(String, String)> {
    let fields: Vec<String> = body
        .split(|&b| b == 0)
        .map(|f| String::from_utf8_lossy(f).to_ascii_lowercase())
        .collect();
    fields
        .chunks_exact(2)
        .map(|c| (c[0].clone(), c[1].clone()))
        .collect()
}

fn ack(block: u16) -> [u8; 4] {
    let mut p = [0u8; 4];
    p[..2].copy_from_slice(&ACK.to_be_bytes());
    p[2..].copy_from_slice(&block.to_be_bytes());
    p
}

/// Fetches `file` from `server` into `out`; refuses more than `limit` bytes. Returns the
/// bytes received.
pub fn fetch(server: Ipv4Addr, file: &str, out: &mut impl Write, limit: u64) -> io::Result<u64> {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    socket.set_read_timeout(Some(PACKET_TIMEOUT))?;
    let request = read_request(file);
    let mut last: Vec<u8> = request.clone();
    let mut to = SocketAddr::V4(SocketAddrV4::new(server, 69));
    let mut peer: Option<SocketAddr> = None;
    let mut block_size = DEFAULT_BLOCK_SIZE;
    let mut expected: u16 = 1;
    let mut received = 0u64;
    let mut buf = vec![0u8; BLOCK_SIZE + 4];
    let mut tries = 0;
    socket.send_to(&request, to)?;
    loop {
        let (n, from) = match socket.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                tries += 1;
                if tries >= TRIES {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "no answer from {server} for {file} after {received} bytes ({TRIES} tries)"
                        ),
                    ));
                }
                socket.send_to(&last, to)?;
                continue;
            }
            Err(e) => return Err(e),
        };
        // The server answers from a port of its own (its transfer id); packets from any
        // other address are not part of this transfer.
        if from.ip() != std::net::IpAddr::V4(server) || peer.is_some_and(|p| p != from) {
            continue;
        }
        if n < 4 {
            continue;
        }
        let opcode = u16::from_be_bytes([buf[0], buf[1]]);
        match opcode {
            ERROR => {
                let message = String::from_utf8_lossy(&buf[4..n])
                    .trim_end_matches('\0')
                    .to_owned();
                return Err(io::Error::other(format!(
                    "{server} refused {file}: {message}"
                )));
            }
            OACK if peer.is_none() => {
                peer = Some(from);
                to = from;
                for (name, value) in parse_options(&buf[2..n]) {
                    if name == "blksize" {
                        block_size = value
                            .parse()
                            .ok()
                            .filter(|&b| (8..=BLOCK_SIZE).contains(&b))
                            .ok_or_else(|| {
                                io::Error::other(format!("bad blksize {value:?} from {server}"))
                            })?;
                    }
                    if name == "tsize" && value.parse::<u64>().is_ok_and(|t| t > limit) {
                        return Err(io::Error::other(format!(
                            "{file} is {value} bytes on {server}, more than the {limit} expected"
                        )));
                    }
                }
                last = ack(0).to_vec();
                tries = 0;
                socket.send_to(&last, to)?;
            }
            DATA => {
                if peer.is_none() {
                    // A server without options: 512-byte blocks.
                    peer = Some(from);
                    to = from;
                }
                let block = u16::from_be_bytes([buf[2], buf[3]]);
                let data = &buf[4..n];
                if block == expected {
                    received += data.len() as u64;
                    if received > limit {
                        return Err(io::Error::other(format!(
                            "{file} from {server} is longer than the {limit} bytes expected"
                        )));
                    }
                    out.write_all(data)?;
                    last = ack(block).to_vec();
                    tries = 0;
                    socket.send_to(&last, to)?;
                    expected = expected.wrapping_add(1);
                    if data.len() < block_size {
                        return Ok(received);
                    }
                } else if block == expected.wrapping_sub(1) {
                    // Our ACK was lost: say it again.
                    socket.send_to(&last, to)?;
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_asks_for_octets_and_the_options() {
        let r = read_request("root.img");
        assert_eq!(&r[..2], &[0, 1]);
        assert_eq!(
            &r[2..],
            b"root.img\0octet\0blksize\x001468\0tsize\x000\0".as_slice()
        );
        assert_eq!(
            parse_options(b"blksize\x001468\0tsize\x001234\0"),
            vec![
                ("blksize".into(), "1468".into()),
                ("tsize".into(), "1234".into())
            ]
        );
    }
}
