//! Entry points for fuzzing the init's parsers of untrusted bytes; PID 1 never calls them.
//!
//! Each function feeds one parser arbitrary bytes the way PID 1 does — through the same
//! functions, after the same checks — and returns nothing: what a fuzzer looks for is a
//! panic, a hang or an allocation out of proportion to the input. Where a format has a
//! writer, what was parsed is also written out and parsed back, and must come back the
//! same (an `assert!`: a difference is a bug the fuzzer reports like a panic).
//!
//! The cargo-fuzz targets in `fuzz/fuzz_targets/` call these functions, one each, and
//! `tests/tests/fuzz_corpus.rs` replays every file of `fuzz/corpus/` and
//! `fuzz/regressions/` through them on the stable toolchain (docs/ROBUSTNESS.md).
//!
//! Signatures: an update index, a bundle header and the manifest are parsed only after
//! their Ed25519 signature checks out, which no fuzzer can forge. So these functions sign
//! what they are given with a fixed throw-away key ([`fuzz_public_key`]) and hand the
//! parser that key, as the image's key; a wrong signature is tried as well. Nothing PID 1
//! trusts is involved: the key exists only here.

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crust_format::bundle::{self, PartKind};
use crust_format::manifest::Filesystem;
use crust_format::repo::Index;
use crust_format::signature::PublicKey;
use crust_format::user_data::{Permission, Policy, Source};
use crust_format::verity::{OnCorruption, VerityParams};
use crust_format::{Digest, Manifest};
use dhcproto::Encodable;
use dhcproto::v4::{DhcpOption, Message, MessageType, Opcode};
use ed25519_dalek::{Signer, SigningKey};
use sntpc::{NtpTimestampGenerator, NtpUdpSocket};

use crate::clock::{self, Correction, Floor};
use crate::config::schema::{self, ServerName};
use crate::config::source::Origin;
use crate::config::trust::Found;
use crate::config::{imds, nocloud};
use crate::net::dhcp::{Action, Client};
use crate::net::{lease::Lease, netlink, resolv};
use crate::update::index;
use crate::update::record::Accepted;

/// The throw-away key these functions sign with: a constant, never an image's.
const FUZZ_SEED: [u8; 32] = *b"crust fuzzing key, never trusted";

fn fuzz_key() -> SigningKey {
    SigningKey::from_bytes(&FUZZ_SEED)
}

/// The public half of the key the signed formats are signed with here (the key the
/// parsers are given as the image's).
pub fn fuzz_public_key() -> PublicKey {
    PublicKey::from_verifying_key(fuzz_key().verifying_key())
}

/// The moment the functions take as "now" where the parsers compare times with the
/// clock: 2026-12-01T00:00:00Z, fixed so that a run is repeatable.
const NOW: u64 = 1_795_996_800;

// ----- DHCP -----------------------------------------------------------------------------

/// The client's hardware address.
const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
/// The address and server the scripted exchange uses (QEMU's user network).
const OFFERED: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
/// Timer steps run after each message (renewals, rebinding, expiry, retransmissions).
const TIMER_STEPS: usize = 12;

/// A DHCP message from the network (a UDP datagram to port 68), decoded as the client's
/// socket decodes it, then handed to the client state machine in each of its states:
/// selecting, requesting, bound, renewing and rebinding. The message's bytes are given the
/// transaction id and hardware address of the exchange under way (whoever sees the
/// broadcast DISCOVER knows both; `hlen` stays as it came), and once as they came; after it the client's timers run, and what
/// the client asks for is carried out as far as it is pure: messages encoded, a lease's
/// routes, `resolv.conf` and host name worked out.
pub fn dhcp(data: &[u8]) {
    let t0 = Instant::now();
    for state in 0..5 {
        let (mut client, xid, now) = client_in_state(state, t0);
        // The transaction id and the first six bytes of `chaddr` patched in the message as
        // sent, `hlen` left as it came.
        let mut answer = data.to_vec();
        if let Some(id) = answer.get_mut(4..8) {
            id.copy_from_slice(&xid.to_be_bytes());
        }
        if let Some(mac) = answer.get_mut(28..34) {
            mac.copy_from_slice(&MAC);
        }
        let mut now = now;
        if let Some(msg) = crate::net::dhcp::decode(&answer) {
            carry_out(&client.on_message(&msg, now), now);
        }
        if state == 0
            && let Some(msg) = crate::net::dhcp::decode(data)
        {
            carry_out(&client.on_message(&msg, now), now);
        }
        for _ in 0..TIMER_STEPS {
            let Some(due) = client.deadline() else { break };
            now = now.max(due);
            carry_out(&client.on_timer(now), now);
            let _ = client.lease().map(|l| l.remaining(now));
        }
    }
}

/// A client driven by a well-behaved server into state `state` (0 selecting, 1
/// requesting, 2 bound, 3 renewing, 4 rebinding); its transaction id and the time.
fn client_in_state(state: u8, t0: Instant) -> (Client, u32, Instant) {
    let (mut client, actions) = Client::start(MAC, Some("fuzz".into()), 7, t0);
    let mut xid = sent_xid(&actions).unwrap_or_default();
    let mut now = t0;
    if state >= 1 {
        let offer = server_reply(xid, MessageType::Offer);
        xid = sent_xid(&client.on_message(&offer, now)).unwrap_or(xid);
    }
    if state >= 2 {
        let ack = server_reply(xid, MessageType::Ack);
        client.on_message(&ack, now);
    }
    if state >= 3 {
        let renew = client.lease().and_then(Lease::renew_at).unwrap_or(now);
        now = renew;
        xid = sent_xid(&client.on_timer(now)).unwrap_or(xid);
    }
    if state >= 4 {
        let rebind = client.lease().and_then(Lease::rebind_at).unwrap_or(now);
        now = rebind;
        xid = sent_xid(&client.on_timer(now)).unwrap_or(xid);
    }
    (client, xid, now)
}

fn sent_xid(actions: &[Action]) -> Option<u32> {
    actions.iter().find_map(|a| match a {
        Action::Send(m, _) => Some(m.xid()),
        _ => None,
    })
}

/// What QEMU's DHCP server answers: a one-hour lease of [`OFFERED`].
fn server_reply(xid: u32, kind: MessageType) -> Message {
    let unspecified = Ipv4Addr::UNSPECIFIED;
    let mut m = Message::new_with_id(xid, unspecified, OFFERED, SERVER, unspecified, &MAC);
    m.set_opcode(Opcode::BootReply);
    let o = m.opts_mut();
    o.insert(DhcpOption::MessageType(kind));
    o.insert(DhcpOption::ServerIdentifier(SERVER));
    o.insert(DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)));
    o.insert(DhcpOption::Router(vec![SERVER]));
    o.insert(DhcpOption::DomainNameServer(vec![Ipv4Addr::new(
        10, 0, 2, 3,
    )]));
    o.insert(DhcpOption::AddressLeaseTime(3600));
    m
}

/// The pure part of what the network module does with a client's actions.
fn carry_out(actions: &[Action], now: Instant) {
    for action in actions {
        match action {
            Action::Send(msg, _) => {
                let _ = msg.to_vec();
            }
            Action::Apply(lease) | Action::Drop(lease) => {
                let _ = crate::net::lease_routes(lease, 2);
                let dns: Vec<IpAddr> = lease.dns.iter().map(|ip| IpAddr::V4(*ip)).collect();
                let search: Vec<String> = lease.domain.iter().cloned().collect();
                let _ = resolv::render(&dns, &search);
                if let Some(name) = &lease.hostname {
                    let _ = schema::check_hostname(name);
                }
                let _ = (
                    lease.remaining(now),
                    lease.default_gateway(),
                    lease.expires_at(),
                );
            }
        }
    }
}

// ----- HTTP and IMDS --------------------------------------------------------------------

/// A peer that answers with `data`, at most `piece` bytes per read, and swallows what it
/// is sent: a connection as the client sees it.
struct Peer<'a> {
    data: &'a [u8],
    at: usize,
    piece: usize,
}

impl<'a> Peer<'a> {
    fn new(data: &'a [u8], piece: usize) -> Self {
        Self {
            data,
            at: 0,
            piece: piece.max(1),
        }
    }
}

impl Read for Peer<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let rest = &self.data[self.at..];
        let n = rest.len().min(buf.len()).min(self.piece);
        buf[..n].copy_from_slice(&rest[..n]);
        self.at += n;
        Ok(n)
    }
}

impl Write for Peer<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// An HTTP response (what a server sends back, up to closing the connection) read by the
/// init's client both ways it reads one: whole, for IMDS ([`crate::http::request`]: status
/// line, header fields, `Content-Length`, transfer encodings refused), and streamed, for
/// the update repository ([`crate::http::read_head`] then [`crate::http::stream_body`]: the
/// head found across reads, the body checked against its length and a limit as it is
/// written out). The stream arrives
/// in one piece, in pieces of a few bytes, and with a limit smaller than the body.
pub fn http_response(data: &[u8]) {
    if let Ok(r) = crate::http::request_over(
        &mut Peer::new(data, usize::MAX),
        "169.254.169.254",
        "GET",
        "/latest/user-data",
        &[("X-aws-ec2-metadata-token", "token")],
        &[],
    ) {
        let _ = (r.header("content-type"), r.status, r.body.len());
    }
    for (piece, limit) in [(usize::MAX, 1 << 20), (7, 1 << 20), (3, 16)] {
        let mut body = Vec::new();
        let mut peer = Peer::new(data, piece);
        if let Ok(head) = crate::http::read_head(&mut peer) {
            let _ = crate::http::stream_body(&mut peer, &head, "stable.index", limit, &mut body);
        }
    }
}

/// What separates the two answers in an [`imds`] input.
pub const IMDS_SEPARATOR: &[u8] = b"\n--crust-fuzz-next-response--\n";

/// Two HTTP responses from EC2's instance metadata service, separated by
/// [`IMDS_SEPARATOR`]: the answer to the token request (`PUT /latest/api/token`), then the
/// answer to `GET /latest/user-data`, read by the IMDS client as at boot; user-data it
/// accepts goes on to the user-data checks ([`user_data`]'s first steps).
pub fn imds(data: &[u8]) {
    let (token, rest) = match find(data, IMDS_SEPARATOR) {
        Some(at) => (&data[..at], &data[at + IMDS_SEPARATOR.len()..]),
        None => (data, &b""[..]),
    };
    let mut answers = [token, rest].into_iter();
    let got = imds::exchange(&mut |method, path, headers| {
        let answer = answers.next().unwrap_or_default();
        crate::http::request_over(
            &mut Peer::new(answer, usize::MAX),
            "169.254.169.254",
            method,
            path,
            headers,
            &[],
        )
    });
    if let Ok(Some(bytes)) = got {
        let found = crate::config::trust::authenticate(
            Found::bytes(bytes),
            &Origin::Imds,
            &Policy::default(),
        );
        if let Ok(bytes) = found
            && let Ok(text) = crate::config::source::to_text(bytes)
        {
            let _ = schema::parse(&text);
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

// ----- SNTP -----------------------------------------------------------------------------

/// The time server's address in [`sntp`].
const NTP_SERVER: &str = "10.0.2.2:123";

/// A UDP socket whose peer answers any request with one datagram.
struct NtpPeer<'a> {
    reply: &'a [u8],
    addr: SocketAddr,
    request: RefCell<Vec<u8>>,
}

impl NtpUdpSocket for NtpPeer<'_> {
    async fn send_to(&self, buf: &[u8], _addr: SocketAddr) -> sntpc::Result<usize> {
        *self.request.borrow_mut() = buf.to_vec();
        Ok(buf.len())
    }

    async fn recv_from(&self, buf: &mut [u8]) -> sntpc::Result<(usize, SocketAddr)> {
        let mut reply = self.reply.to_vec();
        // The answer echoes the request's transmit time (a server that answers knows it).
        let request = self.request.borrow();
        if let (Some(slot), Some(sent)) = (reply.get_mut(24..32), request.get(40..48)) {
            slot.copy_from_slice(sent);
        }
        let n = reply.len().min(buf.len());
        buf[..n].copy_from_slice(&reply[..n]);
        Ok((n, self.addr))
    }
}

/// A clock fixed at [`NOW`], for repeatable runs.
#[derive(Debug, Clone, Copy, Default)]
struct FixedClock;

impl NtpTimestampGenerator for FixedClock {
    fn init(&mut self) {}

    fn timestamp_sec(&self) -> u64 {
        NOW
    }

    fn timestamp_subsec_micros(&self) -> u32 {
        250_000
    }
}

/// A time server's answer to the init's SNTP request (a UDP datagram; it is given the
/// request's transmit time in its originate field, as any server that answers at all
/// can), checked by sntpc as the clock module asks it to, then judged against the clock
/// floor and turned into a step or a slew.
pub fn sntp(data: &[u8]) {
    let Ok(addr) = NTP_SERVER.parse() else { return };
    let peer = NtpPeer {
        reply: data,
        addr,
        request: RefCell::new(Vec::new()),
    };
    let Ok(result) = clock::ask(addr, &peer, FixedClock) else {
        return;
    };
    let server = ServerName {
        host: "10.0.2.2".into(),
        port: 123,
    };
    let now = NOW as i64;
    for floor in [None, Floor::of(Some(now - 86_400), Some(now + 60))] {
        for correction in [Correction::Step, Correction::SlewOrStep] {
            let _ = clock::judge(&result, &server, now, floor, correction);
        }
    }
    let _ = (
        result.stratum(),
        result.roundtrip() / 1000,
        result.offset() as f64 / 1e6,
    );
}

// ----- Update index, bundle, manifest ---------------------------------------------------

/// The channel a host follows in [`index`].
const CHANNEL: &str = "stable";
/// The version a host runs in [`index`].
const RUNNING: &str = "0.1.0";

/// An update index as a repository serves it, signed (by the fuzzing key) and judged by
/// the update agent ([`crate::update::index::judge`]: key, channel, not older than the
/// newest accepted, expiry) as a host following `stable` would at first, then after
/// having accepted it, then once it has expired; the release to install is then picked
/// as the agent picks it. An index that parses is written out and must parse back the
/// same. The same bytes with a wrong signature are refused.
pub fn index(data: &[u8]) {
    let key = fuzz_public_key();
    let signature = fuzz_key().sign(data).to_bytes();
    let _ = index::judge(data, &[0; 64], &key, CHANNEL, None, NOW);
    let Ok((index, accepted)) = index::judge(data, &signature, &key, CHANNEL, None, 0) else {
        return;
    };
    let again = Some(accepted);
    let _ = index::judge(data, &signature, &key, CHANNEL, again, 0);
    let later = Some(Accepted {
        issued: accepted.issued.saturating_add(1),
        sha256: accepted.sha256,
    });
    let _ = index::judge(data, &signature, &key, CHANNEL, later, 0);
    let _ = index::judge(data, &signature, &key, CHANNEL, again, u64::MAX);
    let _ = index.choose(RUNNING, &["0.3.0".to_owned()], b"fuzz-machine-id", NOW);
    let _ = clock::format_utc(i64::try_from(index.issued).unwrap_or(i64::MAX));
    assert_eq!(
        Index::parse(&index.to_text()).as_ref(),
        Ok(&index),
        "an index read back from its own text differs"
    );
}

/// Unique names for scratch files, across threads.
static SCRATCH: AtomicU64 = AtomicU64::new(0);

/// A scratch file in the temporary folder, removed when dropped.
struct Scratch(std::path::PathBuf);

impl Scratch {
    /// A file holding `bytes`, in `/dev/shm` (memory) when there is one, else in the
    /// temporary folder (on a busy disk, writing it would be most of an execution).
    fn with(bytes: &[u8]) -> Option<Self> {
        let n = SCRATCH.fetch_add(1, Ordering::Relaxed);
        let shm = Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let path = dir.join(format!("crust-fuzz-{}-{n}", std::process::id()));
        std::fs::write(&path, bytes).ok()?;
        Some(Self(path))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// An update bundle file as downloaded, checked by the update agent
/// ([`crate::update::bundle`]: prefix, header length, header signature, header, name,
/// version, layout, size, every part's digest) as a stream from a file. Its header is
/// signed afresh with the fuzzing key (the 64 bytes after it are replaced, or added), and
/// the running image and the version the index offered are taken from the header's own
/// `name=` and `version=` lines, so that a header that parses gets as far as the parts.
pub fn bundle(data: &[u8]) {
    let mut file = data.to_vec();
    let mut name = "crust".to_owned();
    let mut version = "0.2.0".to_owned();
    if let Some(prefix) = data.get(..12).and_then(|p| <&[u8; 12]>::try_from(p).ok())
        && let Ok(len) = bundle::header_len(prefix)
        && let Some(header) = data.get(12..12 + len as usize)
    {
        let end = 12 + header.len();
        let signature = fuzz_key().sign(header).to_bytes();
        let rest = data.get(end + 64..).unwrap_or_default();
        file.truncate(end);
        file.extend_from_slice(&signature);
        file.extend_from_slice(rest);
        for line in String::from_utf8_lossy(header).lines() {
            if let Some(n) = line.strip_prefix("name=") {
                n.clone_into(&mut name);
            } else if let Some(v) = line.strip_prefix("version=") {
                v.clone_into(&mut version);
            }
        }
    }
    let running = running_manifest(&name);
    let Some(scratch) = Scratch::with(&file) else {
        return;
    };
    let key = fuzz_public_key();
    if let Ok(verified) = crate::update::bundle::verify(&scratch.0, &key, &running, &version) {
        for kind in PartKind::ALL {
            let _ = verified.header.part_offset(verified.header_len, kind);
        }
        let header = &verified.header;
        assert_eq!(
            bundle::Header::parse(&header.to_text()).as_ref(),
            Ok(header),
            "a bundle header read back from its own text differs"
        );
    }
}

/// The manifest of a running image called `name`, layout 1.
fn running_manifest(name: &str) -> Manifest {
    Manifest {
        layout: 1,
        name: name.to_owned(),
        version: RUNNING.to_owned(),
        build_id: Digest::of(b"build"),
        filesystem: Filesystem::Squashfs,
        verity: VerityParams {
            root_hash: Digest::of(b"root"),
            salt: Digest::of(b"salt"),
            data_blocks: 1,
            hash_size: 8192,
            uuid: [0; 16],
        },
        kernel_release: "6.1.0-41-cloud-amd64".into(),
        kernel_sha256: Digest::of(b"kernel"),
    }
}

/// A signed manifest as stage 1 finds it in the initramfs: verified with the key beside it
/// (the fuzzing key's signature over the bytes, and a wrong one), parsed, and its verity
/// parameters turned into what stage 1 gives device-mapper; also parsed unsigned, as
/// stage 2 reads back the copy in `/run`. What parses is written out and must parse back
/// the same.
pub fn manifest(data: &[u8]) {
    let key = fuzz_public_key().to_bytes();
    let _ = crate::manifest::verify(data.to_vec(), &[0; 64], &key);
    let signature = fuzz_key().sign(data).to_bytes();
    if let Ok(verified) = crate::manifest::verify(data.to_vec(), &signature, &key) {
        let m = &verified.manifest;
        let v = &m.verity;
        let _ = v.table_params("259:2", "259:3", OnCorruption::Restart);
        let _ = (
            v.table_sectors(),
            v.superblock(),
            m.verity.root_hash.short(12),
        );
        assert_eq!(
            Manifest::parse(m.to_text().as_bytes()).as_ref(),
            Ok(m),
            "a manifest read back from its own text differs"
        );
    }
    let _ = Manifest::parse(data);
}

// ----- User-data, NoCloud, netlink ------------------------------------------------------

/// User-data as a source hands it over (a NoCloud seed's `user-data`, IMDS's answer, the
/// decoded `crust.config=`), accepted as the config phase accepts it (the image's policy,
/// inline signature line, UTF-8, the TOML schema with its ranges, then the `[[service]]`
/// tables against the services of the root at `root` and what the policy allows), under
/// the default policy, a policy that allows user-data nothing, one that allows it
/// everything, and as the image's own default.
pub fn user_data(root: &Path, data: &[u8]) {
    let nothing = Policy {
        sources: Source::ALL.to_vec(),
        signed: false,
        keys: Vec::new(),
        allow: Vec::new(),
    };
    let everything = Policy {
        allow: Permission::ALL.to_vec(),
        ..nothing.clone()
    };
    let signed = Policy {
        signed: true,
        keys: vec![fuzz_public_key()],
        ..everything.clone()
    };
    let seed = Origin::NoCloud("/dev/vdb".into());
    for (origin, policy) in [
        (&seed, &Policy::default()),
        (&Origin::Imds, &nothing),
        (&Origin::Cmdline, &everything),
        (&seed, &signed),
        (&Origin::Image, &nothing),
    ] {
        let found = Ok(Found::bytes(data.to_vec()));
        if let Ok(loaded) = crate::config::accept_in(root, origin, found, policy) {
            let c = &loaded.config;
            let _ = crate::clock::servers(&c.time.servers, &[Ipv4Addr::new(10, 0, 2, 3)]);
            for name in c.network.interfaces.keys() {
                let _ = c.network.interface(name).uses_dhcp();
            }
            let _ = crate::config::apply::summary(c, &[]);
        }
    }
}

/// The first bytes of a block device (up to [`nocloud::PROBE_BYTES`]), probed for a FAT or
/// ISO 9660 file system label as the NoCloud source looks for `CIDATA`.
pub fn nocloud(data: &[u8]) {
    let head = &data[..data.len().min(nocloud::PROBE_BYTES)];
    if let Some((_, label)) = nocloud::label(head) {
        let _ = label.eq_ignore_ascii_case(nocloud::LABEL);
    }
}

/// A datagram from the kernel's route netlink socket, read as the init reads the replies
/// to its requests (messages walked by their lengths, the request's sequence number taken
/// from the first message, `NLMSG_DONE` and acknowledgements), then read for links and
/// addresses as the network setup does.
pub fn netlink(data: &[u8]) {
    let sequence = data
        .get(8..12)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map_or(0, u32::from_ne_bytes);
    let mut replies = Vec::new();
    if let Err(e) = netlink::read_datagram(data, sequence, &mut replies) {
        let _ = e.raw_os_error();
    }
    let _ = netlink::links_of(replies.clone());
    let _ = netlink::addresses_of(replies, 1);
}
