//! The host on the network and configured from user-data, in QEMU with its user-mode
//! network (slirp: a real DHCP server at 10.0.2.2, the host's loopback behind 10.0.2.2):
//!
//! - with a NoCloud seed: DHCP gives 10.0.2.15, the host name and a sysctl from the
//!   user-data are in effect, and the clock is set by SNTP from a server this test runs on
//!   the host (reached as 10.0.2.2), which answers with a date far from today; after boot
//!   the clock is checked again every `time.interval`: the server's time jumps an hour
//!   (the guest steps its clock and says so), then half a second less than that bound
//!   (the guest slews, which only its `/var/log/crust/clock.log` records), then back to
//!   2001, before the image was built (the guest refuses it and says so: SNTP is not
//!   authenticated, and a clock taken back would make expired update indexes valid);
//! - with the EC2 IMDSv2 emulator: the same user-data path through a token, and a request
//!   without a token refused by the emulator;
//! - with broken user-data: one clear line naming the source and the field, the host up
//!   with its defaults, and the error in `/var/log/crust/config.log` on the state
//!   partition (read afterwards with `debugfs`).
//!
//! Every wait fails on a kernel panic, Oops, BUG, segfault or init error line.

use std::io::Write;
use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crust_format::phase::Phase;
use crust_tests::{
    BootOptions, Disk, TestVm, boot_timeout, built_image, extract, partition, run_ok,
};
use crust_vm::imds::{Emulator, TokenUse};

/// 2031-05-17T12:00:00Z: a time the guest's RTC cannot have.
const SERVED_TIME: u64 = 1_936_785_600;
/// Shift from [`SERVED_TIME`] back to 2001-09-09T01:46:40Z, years before any build.
const BEFORE_THE_BUILD_MS: i64 = -((SERVED_TIME - 1_000_000_000) as i64) * 1000;
/// Seconds between NTP's epoch (1900) and Unix's.
const NTP_UNIX: u64 = 2_208_988_800;

/// An SNTP server on 127.0.0.1 that answers request `i` with [`SERVED_TIME`] plus the time
/// since it started plus `shifts_ms[i]` (the last shift for later requests); returns its
/// port and the count of requests answered.
fn sntp_server(shifts_ms: &'static [i64]) -> (u16, Arc<AtomicUsize>) {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind SNTP server");
    let port = socket.local_addr().expect("address").port();
    let answered = Arc::new(AtomicUsize::new(0));
    let count = answered.clone();
    let started = Instant::now();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            if n < 48 || buf[0] & 0x7 != 3 {
                continue; // not a client request
            }
            let i = count.load(Ordering::SeqCst).min(shifts_ms.len() - 1);
            let shift = Duration::from_millis(shifts_ms[i].unsigned_abs());
            let served = Duration::from_secs(SERVED_TIME + NTP_UNIX) + started.elapsed();
            let now = if shifts_ms[i] < 0 {
                served - shift
            } else {
                served + shift
            };
            let seconds = now.as_secs();
            let fraction = (u64::from(now.subsec_nanos()) << 32) / 1_000_000_000;
            let stamp = ((seconds << 32) | fraction).to_be_bytes();
            let mut reply = [0u8; 48];
            reply[0] = (buf[0] & 0x38) | 4; // LI 0, the client's version, mode 4 (server)
            reply[1] = 2; // stratum
            reply[12..16].copy_from_slice(b"TEST");
            reply[16..24].copy_from_slice(&stamp);
            reply[24..32].copy_from_slice(&buf[40..48]); // originate = the client's transmit
            reply[32..40].copy_from_slice(&stamp);
            reply[40..48].copy_from_slice(&stamp);
            if socket.send_to(&reply, from).is_ok() {
                count.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    (port, answered)
}

fn wait(t: &mut TestVm, phase: Phase) -> String {
    let timeout = boot_timeout(t.accel);
    t.vm.wait_for_phase(phase, timeout)
        .unwrap_or_else(|e| panic!("{e}"))
        .detail
}

/// A file of the state partition (`/var` in the guest), read with e2fsprogs' debugfs after
/// the machine is off.
fn state_file(disk: &Disk, path: &str) -> String {
    let raw = disk.to_raw();
    let state = partition(&raw, "state");
    let fs = disk.scratch.path().join("state.img");
    extract(&raw, &state, &fs, None);
    let out = run_ok(
        Command::new("debugfs")
            .args(["-R", &format!("cat {path}")])
            .arg(&fs),
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The number that follows `marker` in `line` (up to the next space).
fn number_after(line: &str, marker: &str) -> f64 {
    line.split(marker)
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number after {marker:?} in {line:?}"))
}

fn seed(disk: &Disk, user_data: &str) -> std::path::PathBuf {
    let path = disk.scratch.path().join("seed.img");
    crust_vm::seed::write(user_data.as_bytes(), &path).expect("seed disk");
    path
}

#[test]
#[ignore = "boots QEMU; run through `cargo xtask test`"]
fn nocloud_user_data_dhcp_and_a_time_server_on_the_host() {
    let img = built_image();
    let mut disk = Disk::new(&img);
    // The boot's answer, then an hour ahead (a step), then 0.3 s further (a slew), then
    // 2001-09-09, before the image's build (refused).
    let (port, answered) = sntp_server(&[0, 3_600_000, 3_600_300, BEFORE_THE_BUILD_MS]);
    let user_data = format!(
        "version = 1\nhostname = \"crust-nocloud-e2e\"\n\n[time]\nservers = [\"10.0.2.2:{port}\"]\n\
         interval = 16\n\n[sysctl]\n\"net.ipv4.tcp_keepalive_time\" = 611\n"
    );
    let seed = seed(&disk, &user_data);
    let mut t = disk.boot_with(BootOptions::default(), |c| c.extra_drives.push(seed));

    let config = wait(&mut t, Phase::Config);
    assert!(config.contains("from NoCloud seed /dev/vdb"), "{config}");
    assert!(config.contains("hostname crust-nocloud-e2e"), "{config}");
    assert!(
        config.contains("net.ipv4.tcp_keepalive_time=611"),
        "{config}"
    );

    let network = wait(&mut t, Phase::Network);
    assert!(
        network.contains("eth0 10.0.2.15/24 by DHCP from 10.0.2.2, gateway 10.0.2.2"),
        "{network}"
    );
    assert!(network.contains("dns 10.0.2.3"), "{network}");

    let clock = wait(&mut t, Phase::Clock);
    assert!(
        clock.contains(&format!("set from 10.0.2.2:{port}")),
        "{clock}"
    );
    assert!(clock.contains("2031-05-17T12:0"), "{clock}");
    assert!(
        answered.load(Ordering::SeqCst) >= 1,
        "the server saw no request"
    );

    wait(&mut t, Phase::Ready);

    // The next check, 16 s on: the server is an hour ahead, and the guest steps.
    let stepped =
        t.vm.wait_for_text("clock: stepped +", Duration::from_secs(90))
            .unwrap_or_else(|e| panic!("{e}"));
    let by = number_after(&stepped, "stepped +");
    assert!((by - 3600.0).abs() < 2.0, "{stepped}");
    assert!(
        stepped.contains(&format!("by 10.0.2.2:{port} to 2031-05-17T13:")),
        "{stepped}"
    );
    // The check after: 0.3 s off, slewed without a console line. The one after that: a
    // time before the build, refused on the console.
    let refused =
        t.vm.wait_for_text(
            "clock: no time server gave a usable answer",
            Duration::from_secs(120),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        refused.contains(&format!("refused 10.0.2.2:{port}'s time 2001-09-09T01:4"))
            && refused.contains("it is before this image's build"),
        "{refused}"
    );
    t.power_off();
    let said: Vec<&String> =
        t.vm.console()
            .history()
            .iter()
            .filter(|l| l.contains("] clock: "))
            .collect();
    assert_eq!(
        said.len(),
        2,
        "only the step and the refusal are said: {said:?}"
    );
    drop(t);

    let log = state_file(&disk, "/log/crust/clock.log");
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 3, "{log}");
    assert!(lines[0].ends_with(", stepped"), "{log}");
    let slewed = number_after(lines[1], "off by +");
    assert!(
        (slewed - 0.3).abs() < 0.15 && lines[1].ends_with(", slewing"),
        "{log}"
    );
    assert!(
        lines[2].contains("it is before this image's build"),
        "{log}"
    );
}

#[test]
#[ignore = "boots QEMU; run through `cargo xtask test`"]
fn imds_user_data_through_a_token() {
    let img = built_image();
    let mut disk = Disk::new(&img);
    let state = disk.scratch.path().join("imds");
    let handler = [env!("CARGO_BIN_EXE_crust-imds").to_owned()];
    let user_data = "version = 1\nhostname = \"crust-imds-e2e\"\n\n[update]\n\
                     repository = \"http://updates.example.com/crust\"\nchannel = \"beta\"\n";
    let mut emulator = None;
    let mut t = disk.boot_with(BootOptions::default(), |c| {
        emulator = Some(
            Emulator::attach(c, &state, Some(user_data.as_bytes()), &handler).expect("emulator"),
        );
    });
    let emulator = emulator.expect("attached");

    let config = wait(&mut t, Phase::Config);
    assert!(config.contains("from EC2 IMDS"), "{config}");
    assert!(config.contains("hostname crust-imds-e2e"), "{config}");
    assert!(
        config.contains("updates beta from http://updates.example.com/crust"),
        "{config}"
    );
    let network = wait(&mut t, Phase::Network);
    assert!(
        network.contains("eth0 169.254.169.15/24 by DHCP"),
        "{network}"
    );
    wait(&mut t, Phase::Ready);

    // What the guest asked, as the emulator saw it: a token, then user-data with it.
    let log = emulator.requests().expect("emulator log");
    let guest: Vec<String> = log.iter().map(ToString::to_string).collect();
    assert_eq!(
        guest,
        [
            "PUT /latest/api/token token=- -> 200",
            "GET /latest/user-data token=valid -> 200",
        ],
        "{guest:?}"
    );

    // A request without a token, through the same handler QEMU runs per connection.
    let mut handler = Command::new(env!("CARGO_BIN_EXE_crust-imds"))
        .arg(&state)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run the handler");
    handler
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"GET /latest/user-data HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n")
        .expect("request");
    let out = handler.wait_with_output().expect("handler output");
    let reply = String::from_utf8_lossy(&out.stdout);
    assert!(
        reply.starts_with("HTTP/1.1 401 Unauthorized\r\n"),
        "{reply}"
    );
    assert!(!reply.contains("crust-imds-e2e"), "{reply}");
    let last = emulator.requests().expect("log").pop().expect("an entry");
    assert_eq!((last.token, last.status), (TokenUse::Missing, 401));

    t.power_off();
}

#[test]
#[ignore = "boots QEMU; run through `cargo xtask test`"]
fn broken_user_data_boots_with_defaults_and_says_why() {
    let img = built_image();
    let mut disk = Disk::new(&img);
    let seed = seed(
        &disk,
        "version = 1\nhostname = \"broken\"\n\n[network.interfaces.eth0]\nmtu = \"big\"\n",
    );
    let mut t = disk.boot_with(BootOptions::default(), |c| c.extra_drives.push(seed));
    let timeout = boot_timeout(t.accel);
    let line =
        t.vm.wait_for_text(
            "refused: field network.interfaces.eth0.mtu (line 5)",
            timeout,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        line.contains("crust: warning: config: user-data from NoCloud seed /dev/vdb"),
        "{line}"
    );
    assert!(
        line.contains("booting with the built-in defaults instead"),
        "{line}"
    );

    let config = wait(&mut t, Phase::Config);
    assert!(config.contains("refused"), "{config}");
    assert!(!config.contains("broken"), "{config}");
    let network = wait(&mut t, Phase::Network);
    assert!(network.contains("eth0 10.0.2.15/24 by DHCP"), "{network}");
    assert!(network.contains("hostname crust (default)"), "{network}");
    wait(&mut t, Phase::Ready);
    t.power_off();
    drop(t);

    let log = state_file(&disk, "/log/crust/config.log");
    assert!(
        log.contains("NoCloud seed /dev/vdb: field network.interfaces.eth0.mtu (line 5)"),
        "{log}"
    );
}
