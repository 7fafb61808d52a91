//! The DHCPv4 client state machine of RFC 2131 §4.4, for one interface: SELECTING
//! (DISCOVER, wait for an OFFER), REQUESTING (REQUEST the offer, wait for ACK or NAK),
//! BOUND, RENEWING at T1 (REQUEST unicast to the server), REBINDING at T2 (REQUEST
//! broadcast to any server), and back to SELECTING when the lease expires or a NAK comes.
//!
//! The machine is pure: it is fed the time and the messages that arrived, and answers with
//! [`Action`]s (messages to send, leases to apply or drop) and the next time it wants to
//! run. The caller owns the socket and the interface; tests drive it with simulated time.
//!
//! Timing: retransmissions back off from 1 s, doubling to at most 64 s, with ±0.25 s of
//! randomisation (RFC 2131 §4.1 suggests 4 s to start; a booting host should not wait that
//! long for a lost first packet). A REQUEST for an offer is sent at most four times before
//! the client starts over. While renewing and rebinding, retransmissions come after half
//! the time left to T2 or expiry, but not sooner than 60 s (RFC 2131 §4.4.5).

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder};

use super::lease::Lease;

/// First retransmission delay. Short: right after a link comes up, the kernel may still
/// drop what is sent until its link watcher has activated the transmit queue, so the first
/// DISCOVER is often lost; retrying soon (and then doubling) costs a few packets and saves
/// most of a second of boot.
pub const FIRST_DELAY: Duration = Duration::from_millis(250);
/// Longest retransmission delay.
pub const MAX_DELAY: Duration = Duration::from_secs(64);
/// REQUESTs sent for one offer before starting over.
pub const REQUEST_TRIES: u32 = 4;
/// Shortest retransmission interval while renewing or rebinding.
pub const MIN_RENEW_RETRY: Duration = Duration::from_secs(60);
/// Pause before starting over after a NAK.
pub const NAK_PAUSE: Duration = Duration::from_secs(1);
/// Largest DHCP message we accept (option 57).
pub const MAX_MESSAGE_SIZE: u16 = 1500;

/// Where a message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// 255.255.255.255.
    Broadcast,
    /// The server's address (renewing).
    Server(Ipv4Addr),
}

/// What the client asks of its caller.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Send this message to UDP port 67.
    Send(Box<Message>, Destination),
    /// Configure the interface with this lease (new, or renewed: replaces the old one).
    Apply(Lease),
    /// Remove this lease's address and routes (expired, refused, or replaced).
    Drop(Lease),
}

/// The client's state (RFC 2131 figure 5).
#[derive(Debug, Clone, PartialEq)]
pub enum State {
    /// Looking for a server: DISCOVER sent (or about to be), waiting for an OFFER.
    Selecting,
    /// REQUEST sent for an offer, waiting for the ACK.
    Requesting {
        /// The offered address.
        offered: Ipv4Addr,
        /// The server that offered it.
        server: Ipv4Addr,
        /// When the last REQUEST went out (the lease counts from there).
        sent: Instant,
        /// REQUESTs sent.
        tries: u32,
    },
    /// Holding a lease, waiting for T1.
    Bound(Lease),
    /// T1 passed: asking the server to extend the lease.
    Renewing {
        /// The current lease.
        lease: Lease,
        /// When the last REQUEST went out.
        sent: Instant,
    },
    /// T2 passed: asking any server to extend the lease.
    Rebinding {
        /// The current lease.
        lease: Lease,
        /// When the last REQUEST went out.
        sent: Instant,
    },
}

impl State {
    /// RFC 2131's name of the state.
    pub fn name(&self) -> &'static str {
        match self {
            State::Selecting => "selecting",
            State::Requesting { .. } => "requesting",
            State::Bound(_) => "bound",
            State::Renewing { .. } => "renewing",
            State::Rebinding { .. } => "rebinding",
        }
    }
}

/// A DHCP client for one interface.
#[derive(Debug, Clone)]
pub struct Client {
    mac: [u8; 6],
    hostname: Option<String>,
    rng: u64,
    xid: u32,
    state: State,
    /// When the current exchange began (DISCOVER or REQUEST), for the `secs` field.
    began: Instant,
    /// When to run next.
    next: Option<Instant>,
    /// The current retransmission delay.
    delay: Duration,
}

impl Client {
    /// A client for the interface with `mac`, sending `hostname` (option 12) if given;
    /// `seed` randomises transaction ids and retransmission times. Returns the client and
    /// its first DISCOVER.
    pub fn start(
        mac: [u8; 6],
        hostname: Option<String>,
        seed: u64,
        now: Instant,
    ) -> (Self, Vec<Action>) {
        let mut client = Self {
            mac,
            hostname,
            rng: seed | 1,
            xid: 0,
            state: State::Selecting,
            began: now,
            next: None,
            delay: FIRST_DELAY,
        };
        let actions = client.select(now);
        (client, actions)
    }

    /// The state.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The lease held, if any.
    pub fn lease(&self) -> Option<&Lease> {
        match &self.state {
            State::Bound(lease)
            | State::Renewing { lease, .. }
            | State::Rebinding { lease, .. } => Some(lease),
            _ => None,
        }
    }

    /// When the client wants [`Client::on_timer`] to run.
    pub fn deadline(&self) -> Option<Instant> {
        self.next
    }

    /// Runs the timers due at `now`: retransmissions, T1, T2, expiry.
    pub fn on_timer(&mut self, now: Instant) -> Vec<Action> {
        if self.next.is_none_or(|next| now < next) {
            return Vec::new();
        }
        match self.state.clone() {
            State::Selecting => {
                let discover = self.discover(now);
                self.backoff(now);
                vec![discover]
            }
            State::Requesting {
                offered,
                server,
                tries,
                ..
            } => {
                if tries >= REQUEST_TRIES {
                    return self.select(now);
                }
                self.state = State::Requesting {
                    offered,
                    server,
                    sent: now,
                    tries: tries + 1,
                };
                let request = self.request_offer(offered, server, now);
                self.backoff(now);
                vec![request]
            }
            State::Bound(lease) => {
                self.xid = self.random() as u32;
                self.began = now;
                self.renew(lease, now)
            }
            State::Renewing { lease, .. } => self.renew(lease, now),
            State::Rebinding { lease, .. } => self.renew(lease, now),
        }
    }

    /// Handles a message from a server.
    pub fn on_message(&mut self, msg: &Message, now: Instant) -> Vec<Action> {
        if msg.opcode() != Opcode::BootReply
            || msg.xid() != self.xid
            || msg.chaddr().get(..6) != Some(&self.mac[..])
        {
            return Vec::new();
        }
        let Some(kind) = msg.opts().msg_type() else {
            return Vec::new();
        };
        let server = match msg.opts().get(OptionCode::ServerIdentifier) {
            Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
            _ => None,
        };
        match (self.state.clone(), kind) {
            (State::Selecting, MessageType::Offer) => {
                let offered = msg.yiaddr();
                let Some(server) = server else {
                    return Vec::new();
                };
                if offered.is_unspecified() {
                    return Vec::new();
                }
                self.state = State::Requesting {
                    offered,
                    server,
                    sent: now,
                    tries: 1,
                };
                self.delay = FIRST_DELAY;
                let request = self.request_offer(offered, server, now);
                self.next = Some(now + self.jitter(self.delay));
                vec![request]
            }
            (
                State::Requesting {
                    server: chosen,
                    sent,
                    ..
                },
                MessageType::Ack,
            ) if server.is_none_or(|s| s == chosen) => match Lease::from_ack(msg, sent) {
                Ok(lease) => self.bind(lease, None),
                // An unusable ACK: start over rather than wait on a server that sends it.
                Err(_) => self.select(now),
            },
            (State::Requesting { server: chosen, .. }, MessageType::Nak)
                if server.is_none_or(|s| s == chosen) =>
            {
                self.restart_after_nak(now, None)
            }
            (
                State::Renewing { lease, sent } | State::Rebinding { lease, sent },
                MessageType::Ack,
            ) => match Lease::from_ack(msg, sent) {
                Ok(new) => self.bind(new, Some(lease)),
                Err(_) => Vec::new(),
            },
            (State::Renewing { lease, .. } | State::Rebinding { lease, .. }, MessageType::Nak) => {
                self.restart_after_nak(now, Some(lease))
            }
            _ => Vec::new(),
        }
    }

    /// Starts over: a new transaction, a DISCOVER now.
    fn select(&mut self, now: Instant) -> Vec<Action> {
        self.state = State::Selecting;
        self.xid = self.random() as u32;
        self.began = now;
        self.delay = FIRST_DELAY;
        let discover = self.discover(now);
        self.next = Some(now + self.jitter(self.delay));
        vec![discover]
    }

    fn restart_after_nak(&mut self, now: Instant, held: Option<Lease>) -> Vec<Action> {
        self.state = State::Selecting;
        self.xid = self.random() as u32;
        self.began = now + NAK_PAUSE;
        self.delay = FIRST_DELAY / 2;
        // The DISCOVER goes out when the pause is over (on_timer doubles the delay).
        self.next = Some(now + NAK_PAUSE);
        held.into_iter().map(Action::Drop).collect()
    }

    fn bind(&mut self, lease: Lease, old: Option<Lease>) -> Vec<Action> {
        let mut actions = Vec::new();
        if let Some(old) = old
            && (old.address != lease.address || old.prefix_len != lease.prefix_len)
        {
            actions.push(Action::Drop(old));
        }
        self.next = lease.renew_at();
        self.state = State::Bound(lease.clone());
        actions.push(Action::Apply(lease));
        actions
    }

    /// At or after T1: renew (or rebind after T2), or give the lease up once it expired.
    fn renew(&mut self, lease: Lease, now: Instant) -> Vec<Action> {
        let (Some(rebind), Some(expires)) = (lease.rebind_at(), lease.expires_at()) else {
            // Infinite leases are never renewed; nothing to do.
            self.next = None;
            self.state = State::Bound(lease);
            return Vec::new();
        };
        if now >= expires {
            let mut actions = vec![Action::Drop(lease)];
            actions.extend(self.select(now));
            return actions;
        }
        let (until, destination) = if now >= rebind {
            (expires, Destination::Broadcast)
        } else {
            (rebind, Destination::Server(lease.server))
        };
        let wait = (until.saturating_duration_since(now) / 2).max(MIN_RENEW_RETRY);
        self.next = Some((now + wait).min(until));
        let mut msg = self.message(MessageType::Request, now);
        msg.set_ciaddr(lease.address);
        self.state = if destination == Destination::Broadcast {
            State::Rebinding { lease, sent: now }
        } else {
            State::Renewing { lease, sent: now }
        };
        vec![Action::Send(Box::new(msg), destination)]
    }

    fn discover(&mut self, now: Instant) -> Action {
        let mut msg = self.message(MessageType::Discover, now);
        msg.set_flags(Flags::default().set_broadcast());
        Action::Send(Box::new(msg), Destination::Broadcast)
    }

    fn request_offer(&mut self, offered: Ipv4Addr, server: Ipv4Addr, now: Instant) -> Action {
        let mut msg = self.message(MessageType::Request, now);
        msg.set_flags(Flags::default().set_broadcast());
        msg.opts_mut()
            .insert(DhcpOption::RequestedIpAddress(offered));
        msg.opts_mut().insert(DhcpOption::ServerIdentifier(server));
        Action::Send(Box::new(msg), Destination::Broadcast)
    }

    /// A message with what every client message carries.
    fn message(&self, kind: MessageType, now: Instant) -> Message {
        let mut msg = blank_request(self.xid, &self.mac);
        let secs = now.saturating_duration_since(self.began).as_secs();
        msg.set_secs(u16::try_from(secs).unwrap_or(u16::MAX));
        let opts = msg.opts_mut();
        opts.insert(DhcpOption::MessageType(kind));
        let mut id = vec![1];
        id.extend_from_slice(&self.mac);
        opts.insert(DhcpOption::ClientIdentifier(id));
        opts.insert(DhcpOption::MaxMessageSize(MAX_MESSAGE_SIZE));
        opts.insert(DhcpOption::ParameterRequestList(vec![
            OptionCode::SubnetMask,
            OptionCode::Router,
            OptionCode::DomainNameServer,
            OptionCode::Hostname,
            OptionCode::DomainName,
            OptionCode::InterfaceMtu,
            OptionCode::NtpServers,
            OptionCode::AddressLeaseTime,
            OptionCode::Renewal,
            OptionCode::Rebinding,
            OptionCode::ClasslessStaticRoute,
        ]));
        if let Some(name) = &self.hostname {
            opts.insert(DhcpOption::Hostname(name.clone()));
        }
        msg
    }

    fn backoff(&mut self, now: Instant) {
        self.delay = (self.delay * 2).min(MAX_DELAY);
        self.next = Some(now + self.jitter(self.delay));
    }

    /// `delay` ± up to a quarter of it (at most 250 ms).
    fn jitter(&mut self, delay: Duration) -> Duration {
        let spread = (delay.as_millis() as i64 / 4).clamp(1, 250);
        let ms = (self.random() % (2 * spread as u64 + 1)) as i64 - spread;
        let base = delay.as_millis() as i64;
        Duration::from_millis((base + ms).max(base / 2) as u64)
    }

    /// xorshift64: enough to spread retransmissions and pick transaction ids.
    fn random(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }
}

/// Longest hardware address a message can carry (the `chaddr` field's 16 bytes).
const MAX_HLEN: u8 = 16;

/// A DHCP message as it arrived (a UDP datagram's payload), if it decodes.
///
/// dhcproto trusts two things a sender chooses. `Message::chaddr()` slices the 16-byte
/// field by the message's `hlen`, and panics (in every build) when it says more than 16:
/// such messages are refused. And some option lengths are `debug_assert!`s instead of
/// checks (rapid commit 0 bytes, client FQDN at least 3, client network interface 3, the
/// bulk leasequery times 4, counted after RFC 3396 joins repeated options): a server
/// sending another length panics any build with debug assertions (tests, fuzzing), and in
/// others the value is misread. Messages carrying them are refused too; the client uses
/// none of those options.
pub fn decode(bytes: &[u8]) -> Option<Message> {
    if bytes.get(2).is_some_and(|hlen| *hlen > MAX_HLEN) || !option_lengths_fit(bytes) {
        return None;
    }
    Message::decode(&mut Decoder::new(bytes)).ok()
}

/// Whether every option dhcproto would assert the length of has that length.
fn option_lengths_fit(bytes: &[u8]) -> bool {
    // The fixed header and the magic cookie: 236 + 4 bytes, then the options.
    let Some(mut options) = bytes.get(240..) else {
        return true;
    };
    // The code and summed length of the run of equal options being read.
    let mut run: Option<(u8, usize)> = None;
    let fits = |(code, len): (u8, usize)| match code {
        80 => len == 0,
        81 => len >= 3,
        94 => len == 3,
        152..=155 => len == 4,
        _ => true,
    };
    loop {
        let (code, len, rest) = match options {
            [] | [255, ..] => break,
            [0, rest @ ..] => (0, 0, rest),
            [code, len, rest @ ..] => {
                let len = usize::from(*len);
                (*code, len, rest.get(len..).unwrap_or_default())
            }
            [_] => break,
        };
        options = rest;
        if code == 0 {
            // Padding ends a run, as it does for dhcproto.
            if let Some(done) = run.take()
                && !fits(done)
            {
                return false;
            }
            continue;
        }
        run = match run {
            Some((c, total)) if c == code => Some((c, total + len)),
            Some(done) if !fits(done) => return false,
            _ => Some((code, len)),
        };
    }
    run.is_none_or(fits)
}

/// An empty BOOTREQUEST (RFC 2131 §2) with transaction id `xid` from the hardware address
/// `mac`: every address zero, no flags, the magic cookie and no options yet.
///
/// Built by decoding the fixed header rather than with `Message::new_with_id`, which starts
/// from dhcproto's `Message::default()` and so draws a transaction id from `rand`: that
/// reads `getrandom(2)` in blocking mode, and before the kernel's generator is seeded
/// (a second or more under emulation) the DISCOVER would wait for it.
fn blank_request(xid: u32, mac: &[u8; 6]) -> Message {
    const HEADER: usize = 236;
    let mut bytes = [0u8; HEADER + 5];
    bytes[0] = 1; // op: BOOTREQUEST
    bytes[1] = 1; // htype: Ethernet
    bytes[2] = 6; // hlen
    bytes[4..8].copy_from_slice(&xid.to_be_bytes());
    bytes[28..34].copy_from_slice(mac);
    bytes[HEADER..HEADER + 4].copy_from_slice(&[99, 130, 83, 99]);
    bytes[HEADER + 4] = 255; // end of options
    Message::decode(&mut Decoder::new(&bytes)).expect("a fixed, well-formed BOOTP header")
}

#[cfg(test)]
mod tests {
    use super::*;
    use dhcproto::Encodable;

    const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
    const ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);

    /// What a server (slirp's, say) answers: a reply to `request` of type `kind`.
    fn reply(request: &Message, kind: MessageType, lease: u32) -> Message {
        let mut m = Message::new_with_id(
            request.xid(),
            Ipv4Addr::UNSPECIFIED,
            ADDRESS,
            SERVER,
            Ipv4Addr::UNSPECIFIED,
            request.chaddr(),
        );
        m.set_opcode(Opcode::BootReply);
        let o = m.opts_mut();
        o.insert(DhcpOption::MessageType(kind));
        o.insert(DhcpOption::ServerIdentifier(SERVER));
        if kind != MessageType::Nak {
            o.insert(DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)));
            o.insert(DhcpOption::Router(vec![SERVER]));
            o.insert(DhcpOption::DomainNameServer(vec![Ipv4Addr::new(
                10, 0, 2, 3,
            )]));
            o.insert(DhcpOption::AddressLeaseTime(lease));
        }
        // Through the wire format and back, as the socket would deliver it.
        let bytes = m.to_vec().unwrap();
        Message::decode(&mut Decoder::new(&bytes)).unwrap()
    }

    fn sent(actions: &[Action]) -> (&Message, Destination) {
        actions
            .iter()
            .find_map(|a| match a {
                Action::Send(m, d) => Some((m.as_ref(), *d)),
                _ => None,
            })
            .expect("a message to send")
    }

    fn kind(m: &Message) -> MessageType {
        m.opts().msg_type().unwrap()
    }

    /// Runs DISCOVER, OFFER, REQUEST, ACK at `t0`; returns the bound client.
    fn bound(t0: Instant, lease: u32) -> Client {
        let (mut c, actions) = Client::start(MAC, Some("web-1".into()), 42, t0);
        let (discover, to) = sent(&actions);
        assert_eq!(
            (kind(discover), to),
            (MessageType::Discover, Destination::Broadcast)
        );
        let offer = reply(discover, MessageType::Offer, lease);
        let actions = c.on_message(&offer, t0);
        let (request, to) = sent(&actions);
        assert_eq!(
            (kind(request), to),
            (MessageType::Request, Destination::Broadcast)
        );
        let ack = reply(request, MessageType::Ack, lease);
        let actions = c.on_message(&ack, t0 + Duration::from_millis(10));
        assert_eq!(
            c.lease().unwrap().acquired,
            t0,
            "times count from the REQUEST"
        );
        assert!(matches!(&actions[..], [Action::Apply(l)] if l.address == ADDRESS));
        c
    }

    #[test]
    fn the_blank_request_is_the_header_new_with_id_makes() {
        let mac = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
        let ours = blank_request(0xdead_beef, &mac);
        let unspecified = Ipv4Addr::UNSPECIFIED;
        let theirs = Message::new_with_id(
            0xdead_beef,
            unspecified,
            unspecified,
            unspecified,
            unspecified,
            &mac,
        );
        assert_eq!(ours.to_vec().unwrap(), theirs.to_vec().unwrap());
        assert_eq!(ours.opcode(), Opcode::BootRequest);
        assert_eq!(ours.xid(), 0xdead_beef);
        assert_eq!(&ours.chaddr()[..6], &mac);
    }

    #[test]
    fn discover_offer_request_ack() {
        let t0 = Instant::now();
        let (mut c, actions) = Client::start(MAC, Some("web-1".into()), 7, t0);
        let (discover, _) = sent(&actions);
        assert!(
            discover.flags().broadcast(),
            "no address yet: replies must be broadcast"
        );
        assert_eq!(discover.opcode(), Opcode::BootRequest);
        assert_eq!(&discover.chaddr()[..6], &MAC);
        assert!(matches!(
            discover.opts().get(OptionCode::Hostname),
            Some(DhcpOption::Hostname(h)) if h == "web-1"
        ));
        assert!(matches!(
            discover.opts().get(OptionCode::ClientIdentifier),
            Some(DhcpOption::ClientIdentifier(id)) if id[0] == 1 && id[1..] == MAC
        ));
        assert!(discover.opts().get(OptionCode::ServerIdentifier).is_none());

        let actions = c.on_message(&reply(discover, MessageType::Offer, 86_400), t0);
        let (request, _) = sent(&actions);
        assert_eq!(request.xid(), discover.xid());
        assert!(request.ciaddr().is_unspecified());
        assert!(matches!(
            request.opts().get(OptionCode::RequestedIpAddress),
            Some(DhcpOption::RequestedIpAddress(ip)) if *ip == ADDRESS
        ));
        assert!(matches!(
            request.opts().get(OptionCode::ServerIdentifier),
            Some(DhcpOption::ServerIdentifier(ip)) if *ip == SERVER
        ));
        let t1 = t0 + Duration::from_millis(3);
        let actions = c.on_message(&reply(request, MessageType::Ack, 86_400), t1);
        let Action::Apply(lease) = &actions[0] else {
            panic!("{actions:?}")
        };
        assert_eq!(lease.address, ADDRESS);
        assert_eq!(lease.prefix_len, 24);
        assert_eq!(lease.routers, [SERVER]);
        assert_eq!(lease.dns, [Ipv4Addr::new(10, 0, 2, 3)]);
        assert_eq!(lease.duration, Some(Duration::from_secs(86_400)));
        // T1 and T2 default to 1/2 and 7/8 of the lease, counted from the REQUEST.
        assert_eq!(lease.renew_at(), Some(t0 + Duration::from_secs(43_200)));
        assert_eq!(lease.rebind_at(), Some(t0 + Duration::from_secs(75_600)));
        assert_eq!(c.deadline(), lease.renew_at());
        assert!(matches!(c.state(), State::Bound(_)));
    }

    #[test]
    fn foreign_and_stray_messages_are_ignored() {
        let t0 = Instant::now();
        let (mut c, actions) = Client::start(MAC, None, 1, t0);
        let (discover, _) = sent(&actions);
        let mut other_xid = reply(discover, MessageType::Offer, 60);
        other_xid.set_xid(discover.xid() ^ 1);
        assert!(c.on_message(&other_xid, t0).is_empty());
        let mut other_mac = reply(discover, MessageType::Offer, 60);
        other_mac.set_chaddr(&[1, 2, 3, 4, 5, 6]);
        assert!(c.on_message(&other_mac, t0).is_empty());
        let mut request_not_reply = reply(discover, MessageType::Offer, 60);
        request_not_reply.set_opcode(Opcode::BootRequest);
        assert!(c.on_message(&request_not_reply, t0).is_empty());
        // An ACK while selecting is not an answer to anything we asked.
        assert!(
            c.on_message(&reply(discover, MessageType::Ack, 60), t0)
                .is_empty()
        );
        assert!(matches!(c.state(), State::Selecting));
    }

    #[test]
    fn silence_backs_off_and_a_silent_request_starts_over() {
        let t0 = Instant::now();
        let (mut c, _) = Client::start(MAC, None, 3, t0);
        let mut gaps = Vec::new();
        let mut now = t0;
        for _ in 0..8 {
            let next = c.deadline().unwrap();
            assert!(
                c.on_timer(next - Duration::from_millis(1)).is_empty(),
                "not yet due"
            );
            gaps.push(next - now);
            now = next;
            let actions = c.on_timer(now);
            assert_eq!(kind(sent(&actions).0), MessageType::Discover);
        }
        // 0.25, 0.5, 1, 2, ... s (± a quarter, at most 0.25 s), doubling up to 64 s.
        for (gap, expected_ms) in gaps
            .iter()
            .zip([250u64, 500, 1000, 2000, 4000, 8000, 16_000, 32_000])
        {
            let e = Duration::from_millis(expected_ms);
            let spread = Duration::from_millis((expected_ms / 4).min(250));
            assert!(*gap + spread >= e && *gap <= e + spread, "{gaps:?}");
        }
        // An offer, then no ACK: four REQUESTs, then back to DISCOVER.
        let actions = c.on_timer(c.deadline().unwrap());
        let discover = sent(&actions).0.clone();
        let actions = c.on_message(&reply(&discover, MessageType::Offer, 600), now);
        let mut requests = 1;
        assert_eq!(kind(sent(&actions).0), MessageType::Request);
        loop {
            let actions = c.on_timer(c.deadline().unwrap());
            match kind(sent(&actions).0) {
                MessageType::Request => requests += 1,
                MessageType::Discover => break,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(requests, REQUEST_TRIES);
        assert_ne!(c.xid, discover.xid(), "a new transaction");
    }

    #[test]
    fn renew_at_t1_rebind_at_t2_expire_at_the_end() {
        let t0 = Instant::now();
        let mut c = bound(t0, 3600);
        let t1 = c.deadline().unwrap();
        assert_eq!(t1, t0 + Duration::from_secs(1800));
        // T1: unicast REQUEST to the server, our address in ciaddr, no server id.
        let actions = c.on_timer(t1);
        let (renew, to) = sent(&actions);
        assert_eq!(to, Destination::Server(SERVER));
        assert_eq!(renew.ciaddr(), ADDRESS);
        assert!(!renew.flags().broadcast());
        assert!(renew.opts().get(OptionCode::ServerIdentifier).is_none());
        assert!(renew.opts().get(OptionCode::RequestedIpAddress).is_none());
        assert!(matches!(c.state(), State::Renewing { .. }));
        // Retransmit after half the time to T2 (1350 s / 2), not later than T2.
        let retry = c.deadline().unwrap();
        assert_eq!(retry, t1 + Duration::from_secs(675));
        let actions = c.on_timer(retry);
        assert_eq!(sent(&actions).1, Destination::Server(SERVER));
        // Close to T2 the 60 s minimum and the T2 cap apply.
        let t2 = t0 + Duration::from_secs(3150);
        let mut gaps = Vec::new();
        let mut now = retry;
        while c.deadline().unwrap() < t2 {
            let next = c.deadline().unwrap();
            gaps.push(next - now);
            now = next;
            c.on_timer(now);
        }
        assert!(gaps.iter().all(|g| *g >= MIN_RENEW_RETRY), "{gaps:?}");
        assert_eq!(c.deadline(), Some(t2));
        // T2: broadcast.
        let actions = c.on_timer(t2);
        assert_eq!(sent(&actions).1, Destination::Broadcast);
        assert_eq!(sent(&actions).0.ciaddr(), ADDRESS);
        assert!(matches!(c.state(), State::Rebinding { .. }));
        // Nobody answers until the lease ends: drop it and start over.
        let expiry = t0 + Duration::from_secs(3600);
        while c.deadline().unwrap() < expiry {
            now = c.deadline().unwrap();
            c.on_timer(now);
        }
        let actions = c.on_timer(expiry);
        assert!(matches!(&actions[0], Action::Drop(l) if l.address == ADDRESS));
        assert_eq!(kind(sent(&actions).0), MessageType::Discover);
        assert!(c.lease().is_none());
    }

    #[test]
    fn a_renewal_ack_extends_the_lease() {
        let t0 = Instant::now();
        let mut c = bound(t0, 600);
        let t1 = c.deadline().unwrap();
        let actions = c.on_timer(t1);
        let (renew, _) = sent(&actions);
        let ack = reply(renew, MessageType::Ack, 600);
        let actions = c.on_message(&ack, t1 + Duration::from_millis(2));
        // Same address: apply again (new lifetimes), nothing dropped.
        assert!(matches!(&actions[..], [Action::Apply(l)] if l.acquired == t1));
        assert_eq!(c.deadline(), Some(t1 + Duration::from_secs(300)));
    }

    #[test]
    fn a_nak_while_renewing_drops_the_lease_and_starts_over() {
        let t0 = Instant::now();
        let mut c = bound(t0, 600);
        let t1 = c.deadline().unwrap();
        let actions = c.on_timer(t1);
        let nak = reply(sent(&actions).0, MessageType::Nak, 0);
        let actions = c.on_message(&nak, t1);
        assert!(matches!(&actions[..], [Action::Drop(l)] if l.address == ADDRESS));
        assert!(matches!(c.state(), State::Selecting));
        // A pause, then DISCOVER.
        assert_eq!(c.deadline(), Some(t1 + NAK_PAUSE));
        let actions = c.on_timer(t1 + NAK_PAUSE);
        assert_eq!(kind(sent(&actions).0), MessageType::Discover);
    }

    #[test]
    fn a_nak_for_the_offer_starts_over() {
        let t0 = Instant::now();
        let (mut c, actions) = Client::start(MAC, None, 9, t0);
        let actions = c.on_message(&reply(sent(&actions).0, MessageType::Offer, 600), t0);
        let actions = c.on_message(&reply(sent(&actions).0, MessageType::Nak, 0), t0);
        assert!(actions.is_empty());
        assert!(matches!(c.state(), State::Selecting));
    }

    #[test]
    fn an_infinite_lease_is_never_renewed() {
        let c = bound(Instant::now(), u32::MAX);
        assert_eq!(c.deadline(), None);
        assert_eq!(c.lease().unwrap().remaining(Instant::now()), None);
    }

    #[test]
    fn lease_options_are_read() {
        let t0 = Instant::now();
        let (_, actions) = Client::start(MAC, None, 5, t0);
        let mut ack = reply(sent(&actions).0, MessageType::Ack, 7200);
        let o = ack.opts_mut();
        o.insert(DhcpOption::Renewal(1000));
        o.insert(DhcpOption::Rebinding(2000));
        o.insert(DhcpOption::InterfaceMtu(9001));
        o.insert(DhcpOption::NtpServers(vec![Ipv4Addr::new(10, 0, 2, 123)]));
        o.insert(DhcpOption::DomainName("example.internal".into()));
        o.insert(DhcpOption::ClasslessStaticRoute(vec![
            ("0.0.0.0/0".parse().unwrap(), Ipv4Addr::new(10, 0, 2, 1)),
            (
                "192.168.0.0/16".parse().unwrap(),
                Ipv4Addr::new(10, 0, 2, 9),
            ),
        ]));
        let bytes = ack.to_vec().unwrap();
        let ack = Message::decode(&mut Decoder::new(&bytes)).unwrap();
        let lease = Lease::from_ack(&ack, t0).unwrap();
        assert_eq!(lease.renew_after, Some(Duration::from_secs(1000)));
        assert_eq!(lease.rebind_after, Some(Duration::from_secs(2000)));
        assert_eq!(lease.mtu, Some(9001));
        assert_eq!(lease.ntp, [Ipv4Addr::new(10, 0, 2, 123)]);
        assert_eq!(lease.domain.as_deref(), Some("example.internal"));
        assert_eq!(lease.routes.len(), 2);
        assert_eq!(lease.routes[1].prefix_len, 16);
        // RFC 3442: with classless routes, option 3 is ignored for the default route.
        assert_eq!(lease.default_gateway(), Some(Ipv4Addr::new(10, 0, 2, 1)));
        assert_eq!(lease.boot_file, None);
    }

    #[test]
    fn the_boot_file_comes_from_option_67_or_the_file_field() {
        let t0 = Instant::now();
        let (_, actions) = Client::start(MAC, None, 5, t0);
        let decoded = |ack: Message| {
            let bytes = ack.to_vec().unwrap();
            let ack = Message::decode(&mut Decoder::new(&bytes)).unwrap();
            Lease::from_ack(&ack, t0).unwrap().boot_file
        };
        // What dnsmasq's `dhcp-boot` sends: the BOOTP header's file field.
        let mut ack = reply(sent(&actions).0, MessageType::Ack, 7200);
        ack.set_fname_str("http://192.168.77.1/crust/netboot.efi");
        assert_eq!(
            decoded(ack.clone()).as_deref(),
            Some("http://192.168.77.1/crust/netboot.efi")
        );
        // Option 67 wins over the field.
        ack.opts_mut()
            .insert(DhcpOption::BootfileName(b"netboot.efi\0".to_vec()));
        assert_eq!(decoded(ack).as_deref(), Some("netboot.efi"));
        // Anything but printable ASCII is no name.
        let mut ack = reply(sent(&actions).0, MessageType::Ack, 7200);
        ack.opts_mut()
            .insert(DhcpOption::BootfileName(b"a b\xff".to_vec()));
        assert_eq!(decoded(ack), None);
    }

    #[test]
    fn options_whose_length_dhcproto_asserts_are_refused_not_panicked_on() {
        // Found by `cargo xtask fuzz dhcp`: option 94 (client network interface) of 2
        // bytes tripped dhcproto's `debug_assert!(len == 3)`.
        let found =
            include_bytes!("../../../fuzz/regressions/dhcp/client-network-interface-of-2-bytes");
        assert!(decode(found).is_none());
        let t0 = Instant::now();
        let (_, actions) = Client::start(MAC, None, 5, t0);
        let offer = reply(sent(&actions).0, MessageType::Offer, 60)
            .to_vec()
            .unwrap();
        let with = |options: &[u8]| {
            let mut bytes = offer.clone();
            let end = bytes.iter().rposition(|b| *b == 255).unwrap();
            bytes.splice(end..end, options.iter().copied());
            bytes
        };
        for bad in [
            &[94, 2, 1, 2][..],
            &[80, 1, 0],
            &[81, 2, 0, 0],
            &[152, 3, 0, 0, 0],
            // RFC 3396: repeated options are joined, and the joined length counts.
            &[94, 3, 1, 2, 3, 94, 3, 1, 2, 3],
        ] {
            assert!(decode(&with(bad)).is_none(), "{bad:?}");
        }
        for good in [
            &[94, 3, 1, 2, 3][..],
            &[80, 0],
            &[152, 4, 0, 0, 0, 1],
            &[94, 3, 1, 2, 3, 0, 94, 3, 1, 2, 3],
        ] {
            let msg = decode(&with(good)).expect("decodes");
            assert_eq!(msg.opts().msg_type(), Some(MessageType::Offer), "{good:?}");
        }
        assert!(decode(&offer).is_some());
        assert!(decode(&offer[..100]).is_none());
    }

    #[test]
    fn a_hardware_address_longer_than_the_field_is_refused_not_panicked_on() {
        // Found by `cargo xtask fuzz dhcp`: a reply with this client's transaction id and
        // hlen 255 made dhcproto's Message::chaddr() slice its 16-byte field to 255 bytes,
        // in any build. Whoever sees the broadcast DISCOVER knows the transaction id.
        let found =
            include_bytes!("../../../fuzz/regressions/dhcp/hardware-address-length-over-16");
        assert_eq!(found[2], 255);
        assert!(decode(found).is_none());
        let t0 = Instant::now();
        let (mut c, actions) = Client::start(MAC, None, 5, t0);
        let mut offer = reply(sent(&actions).0, MessageType::Offer, 60)
            .to_vec()
            .unwrap();
        for hlen in [17, 255] {
            offer[2] = hlen;
            assert!(decode(&offer).is_none(), "hlen {hlen}");
        }
        // Up to the field's 16 bytes the message decodes, and is this client's if the first
        // six are its address.
        offer[2] = 16;
        let msg = decode(&offer).expect("hlen 16 decodes");
        assert_eq!(kind(sent(&c.on_message(&msg, t0)).0), MessageType::Request);
    }

    #[test]
    fn unusable_acks_are_refused() {
        let t0 = Instant::now();
        let (_, actions) = Client::start(MAC, None, 5, t0);
        let mut ack = reply(sent(&actions).0, MessageType::Ack, 60);
        ack.set_yiaddr(Ipv4Addr::UNSPECIFIED);
        assert!(Lease::from_ack(&ack, t0).is_err());
        let mut ack = reply(sent(&actions).0, MessageType::Ack, 60);
        ack.opts_mut()
            .insert(DhcpOption::SubnetMask(Ipv4Addr::new(255, 0, 255, 0)));
        assert!(
            Lease::from_ack(&ack, t0)
                .unwrap_err()
                .contains("not contiguous")
        );
        // A zero lease is taken as a minute, T1 and T2 within it.
        let mut ack = reply(sent(&actions).0, MessageType::Ack, 0);
        ack.opts_mut().insert(DhcpOption::Renewal(500));
        let lease = Lease::from_ack(&ack, t0).unwrap();
        assert_eq!(lease.duration, Some(Duration::from_secs(60)));
        assert!(lease.renew_after <= lease.rebind_after);
        assert!(lease.rebind_after < lease.duration);
    }
}
