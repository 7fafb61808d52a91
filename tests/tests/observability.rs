//! Observability end to end, against the real servers operators run (Debian's Prometheus
//! 2.42 and rsyslog 8.2302, started by the test on this machine's loopback), in two boots:
//!
//! - **Both working**: the guest's exporter serves `GET /metrics` over mutual TLS behind a
//!   bearer token, through a QEMU port forward; Prometheus scrapes it, and the test asks
//!   Prometheus's HTTP API (not the endpoint) for the info metric (version, slot, root hash
//!   of the built image), for the restart counter of a service the test made crash twice
//!   (a `busybox nc` listener that exits when the test connects), and for CPU seconds. The
//!   shipper sends to rsyslog over TCP with a 4 KiB buffer: every boot phase (app `crust`,
//!   MSGID the phase), the demo service's lines under its name, the kernel's under facility
//!   kern, the host name from user-data, the boot id as structured data. rsyslog is stopped
//!   for a few seconds and started again: the lines a ticking service printed in the gap
//!   arrive, each once, in order. Then it is stopped for longer than 4 KiB of lines: what
//!   was kept arrives, oldest first, then the count of the lines that did not fit.
//! - **Both misconfigured**: the exporter on an address the host does not have, the
//!   collector a name that does not resolve: the host still comes up (`ready`) and the
//!   console says what is wrong with each.

use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use crust_format::phase::Phase;
use crust_tests::observe::{Certs, Prometheus, Rsyslog, ScrapeTls, SyslogLine, free_port};
use crust_tests::{BootOptions, Disk, TestVm, boot_timeout, built_image};

const TOKEN: &str = "observability-e2e-token-0123456789";

fn seed(disk: &Disk, user_data: &str) -> std::path::PathBuf {
    let path = disk.scratch.path().join("seed.img");
    crust_vm::seed::write(user_data.as_bytes(), &path).expect("seed disk");
    path
}

/// The next console line with `text`.
fn next(t: &mut TestVm, text: &str, within: Duration) -> String {
    t.vm.wait_for_text(text, within)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The tick number of a `ticker: tick N` console line or syslog message.
fn tick(text: &str) -> Option<u64> {
    text.split("tick ").nth(1)?.trim().parse().ok()
}

/// Reads console lines for `span`; returns the last tick seen.
fn ticks_for(t: &mut TestVm, span: Duration) -> u64 {
    let end = Instant::now() + span;
    let mut last = 0;
    while Instant::now() < end {
        let left = end.saturating_duration_since(Instant::now());
        match t
            .vm
            .console()
            .wait_for("a tick", left, |l| l.contains("] ticker: tick "))
        {
            Ok(line) => last = tick(&line).unwrap_or(last),
            Err(crust_vm::console::WaitError::Timeout { .. }) => break,
            Err(e) => panic!("{e}"),
        }
    }
    last
}

/// The tick numbers rsyslog holds, in the order it received them.
fn received_ticks(lines: &[SyslogLine]) -> Vec<u64> {
    lines
        .iter()
        .filter(|l| l.app == "ticker")
        .filter_map(|l| tick(&l.msg))
        .collect()
}

fn pem(path: &Path) -> String {
    std::fs::read_to_string(path).expect("PEM file")
}

#[test]
#[ignore = "boots QEMU; run through `cargo xtask test`"]
fn prometheus_scrapes_and_rsyslog_receives_through_a_collector_outage() {
    let img = built_image();
    let mut disk = Disk::new(&img);
    let work = disk.scratch.path().join("observe");
    let certs = Certs::new(&work.join("certs"));
    let (server, server_key) = certs.issue("metrics", &["crust-metrics"], &[], false);
    let (client, client_key) = certs.issue("prometheus", &["prometheus"], &[], true);
    let mut rsyslog = Rsyslog::new(&work.join("rsyslog"), None, true);
    let (metrics_port, crash_port) = (free_port(), free_port());
    let user_data = format!(
        r#"version = 1
hostname = "observed-1"

[metrics]
port = 9100
bearer-token = "{TOKEN}"

[metrics.tls]
certificate = '''{cert}'''
key = '''{key}'''
client-ca = '''{ca}'''

[logs]
address = "10.0.2.2:{rport}"
buffer = 4096

[[service]]
name = "ticker"
image.service = "web"
command = ["/bin/busybox", "sh", "-c", "i=0; while true; do i=$((i+1)); echo tick $i; /bin/busybox sleep 1; done"]

[[service]]
name = "crasher"
image.service = "web"
command = ["/bin/busybox", "sh", "-c", "echo waiting for a crash request; /bin/busybox nc -l -p 7000 </dev/null >/dev/null; echo crashing on request; exit 3"]
restart = "on-failure"
"#,
        cert = pem(&server),
        key = pem(&server_key),
        ca = pem(&certs.ca()),
        rport = rsyslog.port,
    );
    let seed = seed(&disk, &user_data);
    let prometheus = Prometheus::start(
        &work.join("prometheus"),
        metrics_port,
        Some(&ScrapeTls {
            ca: certs.ca(),
            server_name: "crust-metrics".into(),
            client: Some((client, client_key)),
            token: Some(TOKEN.into()),
        }),
        Duration::from_secs(5),
    );
    let started = Instant::now();
    let mut t = disk.boot_with(BootOptions::default(), |c| {
        c.extra_drives.push(seed);
        c.forwards.push((metrics_port, 9100));
        c.forwards.push((crash_port, 7000));
    });
    let timeout = boot_timeout(t.accel);
    let config =
        t.vm.wait_for_phase(Phase::Config, timeout)
            .unwrap_or_else(|e| panic!("{e}"))
            .detail;
    assert!(
        config.contains("metrics on https 0.0.0.0:9100")
            && config.contains(&format!("logs to tcp 10.0.2.2:{}", rsyslog.port)),
        "{config}"
    );
    t.vm.wait_for_phase(Phase::Ready, timeout)
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("observability: ready after {:?}", started.elapsed());

    // The service made to crash twice: each connection ends its listener, and it exits 3.
    for n in 1..=2 {
        next(
            &mut t,
            "crasher: waiting for a crash request",
            Duration::from_secs(120),
        );
        // The line comes just before nc listens: knock until it has.
        let mut exited = None;
        for _ in 0..20 {
            let mut s = TcpStream::connect(("127.0.0.1", crash_port)).expect("the port forward");
            let _ = s.write_all(b"crash\n");
            drop(s);
            match t
                .vm
                .console()
                .wait_for("the crash", Duration::from_secs(3), |l| {
                    l.contains("] crasher: exited")
                }) {
                Ok(line) => {
                    exited = Some(line);
                    break;
                }
                Err(crust_vm::console::WaitError::Timeout { .. }) => {}
                Err(e) => panic!("{e}"),
            }
        }
        let exited = exited.expect("the crasher never exited");
        assert!(exited.contains("exit status 3"), "{exited}");
        next(
            &mut t,
            &format!("crasher: restarted (restart {n})"),
            Duration::from_secs(60),
        );
    }

    // Prometheus, asked through its API.
    let (info, _) = prometheus.wait_for("crust_build_info", Duration::from_secs(120), |_, v| {
        v == 1.0
    });
    assert_eq!(info["version"], img.manifest.version.as_str(), "{info}");
    assert_eq!(info["name"], img.manifest.name.as_str(), "{info}");
    assert_eq!(info["slot"], "a", "{info}");
    assert_eq!(
        info["root_hash"],
        img.manifest.verity.root_hash.to_hex().as_str(),
        "{info}"
    );
    assert_eq!(info["job"], "crust", "{info}");
    prometheus.wait_for(
        "crust_service_restarts_total{service=\"crasher\"}",
        Duration::from_secs(60),
        |_, v| v == 2.0,
    );
    let (_, exit) = prometheus.wait_for(
        "crust_service_last_exit_code{service=\"crasher\"}",
        Duration::from_secs(30),
        |_, _| true,
    );
    assert_eq!(exit, 3.0);
    let cpu = prometheus.query("node_cpu_seconds_total");
    assert!(
        cpu.iter()
            .any(|(m, v)| m["cpu"] == "0" && m["mode"] == "idle" && *v > 0.0),
        "{cpu:?}"
    );
    assert!(
        cpu.iter().any(|(m, v)| m["mode"] == "system" && *v > 0.0),
        "{cpu:?}"
    );
    let (_, phase) = prometheus.wait_for(
        "crust_boot_phase_seconds{phase=\"ready\"}",
        Duration::from_secs(30),
        |_, v| v > 0.0,
    );
    let rss = prometheus.query("process_resident_memory_bytes");
    let scrape = prometheus.query("scrape_duration_seconds");
    eprintln!(
        "observability: ready at {phase} s (guest clock); exporter resident {rss:?}; last scrape \
         over mutual TLS {scrape:?}"
    );

    // rsyslog: every phase, the demo service under its name, the host name, the kernel.
    let phases = [
        Phase::Init,
        Phase::Modules,
        Phase::Manifest,
        Phase::Disk,
        Phase::Verity,
        Phase::Root,
        Phase::SwitchRoot,
        Phase::Stage2,
        Phase::State,
        Phase::Config,
        Phase::Network,
        Phase::Clock,
        Phase::Services,
        Phase::Ready,
    ];
    rsyslog.wait_for("the ready phase", Duration::from_secs(60), |l| {
        l.app == "crust" && l.msgid == "ready"
    });
    rsyslog.wait_for("the demo service", Duration::from_secs(60), |l| {
        l.app == "web" && l.msg.starts_with("serving http://observed-1:80/")
    });
    let got = rsyslog.received();
    let mut at = 0;
    for phase in phases {
        let found = got
            .iter()
            .position(|l| l.app == "crust" && l.msgid == phase.as_str())
            .unwrap_or_else(|| panic!("no {phase} line among {got:#?}"));
        assert!(found >= at, "{phase} arrived out of order");
        assert!(
            got[found].msg.starts_with(&format!("{phase}: ")),
            "{:?}",
            got[found]
        );
        // daemon.info
        assert_eq!(got[found].pri, 3 * 8 + 6, "{:?}", got[found]);
        at = found;
    }
    assert!(got.iter().all(|l| l.host == "observed-1"), "host names");
    let boot_id = &got[0].sd;
    assert!(
        boot_id.starts_with("[crust@32473 boot-id=\"") && boot_id.len() == 60,
        "{boot_id}"
    );
    assert!(got.iter().all(|l| &l.sd == boot_id), "one boot id");
    assert!(
        got.iter()
            .any(|l| l.app == "kernel" && l.pri >> 3 == 0 && l.msg.contains("Linux version")),
        "kernel messages under facility kern"
    );
    assert!(
        got.iter()
            .any(|l| l.app == "crasher" && l.msg == "exited (exit status 3)"),
        "what the init says of a service goes under its name"
    );

    // A short outage: every line of the gap arrives once, in order.
    rsyslog.stop();
    next(&mut t, "logs: lost the collector", Duration::from_secs(30));
    let first = ticks_for(&mut t, Duration::from_millis(1500));
    let last = ticks_for(&mut t, Duration::from_secs(7));
    assert!(last > first, "the ticker went on ({first}..{last})");
    rsyslog.start();
    next(
        &mut t,
        "logs: reconnected to the collector",
        Duration::from_secs(30),
    );
    rsyslog.wait_for(&format!("tick {last}"), Duration::from_secs(30), |l| {
        l.app == "ticker" && tick(&l.msg) == Some(last)
    });
    let ticks = received_ticks(&rsyslog.received());
    for n in first..=last {
        assert_eq!(
            ticks.iter().filter(|t| **t == n).count(),
            1,
            "tick {n} of the gap {first}..={last} arrives once: {ticks:?}"
        );
    }
    assert!(
        ticks.windows(2).all(|w| w[0] <= w[1]),
        "ticks arrive in order: {ticks:?}"
    );
    let dropped: Vec<SyslogLine> = rsyslog
        .received()
        .into_iter()
        .filter(|l| l.msg.contains("did not fit"))
        .collect();
    assert!(dropped.is_empty(), "a short gap fits in 4 KiB: {dropped:?}");

    // A long outage: what fits arrives, then the count of what did not.
    rsyslog.stop();
    next(&mut t, "logs: lost the collector", Duration::from_secs(30));
    let kept_from = ticks_for(&mut t, Duration::from_millis(1500));
    let last = ticks_for(&mut t, Duration::from_secs(35));
    rsyslog.start();
    next(
        &mut t,
        "logs: reconnected to the collector",
        Duration::from_secs(30),
    );
    let count = rsyslog.wait_for("the count of dropped lines", Duration::from_secs(30), |l| {
        l.app == "crust"
            && l.msgid == "logs"
            && l.msg.contains("did not fit in the 4096-byte buffer")
    });
    let dropped: u64 = count
        .msg
        .split("logs: ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{count:?}"));
    assert_eq!(count.pri, 3 * 8 + 4, "daemon.warning: {count:?}");
    rsyslog.wait_for("a tick after the outage", Duration::from_secs(30), |l| {
        l.app == "ticker" && tick(&l.msg).is_some_and(|n| n > last)
    });
    let lines = rsyslog.received();
    let at_count = lines.iter().position(|l| *l == count).unwrap();
    let before: Vec<u64> = received_ticks(&lines[..at_count]);
    let after: Vec<u64> = received_ticks(&lines[at_count..]);
    let kept_last = *before.last().unwrap();
    let resumed = *after.first().unwrap();
    assert!(
        kept_last >= kept_from,
        "the oldest lines of the outage were kept ({kept_from}.., last kept {kept_last})"
    );
    let missing = resumed - kept_last - 1;
    assert!(
        missing > 0 && dropped >= missing,
        "{dropped} dropped, ticks {kept_last}..{resumed} missing"
    );
    assert!(before.windows(2).all(|w| w[0] <= w[1]), "{before:?}");
    eprintln!(
        "observability: {dropped} lines dropped in the long outage (ticks {}..={} missing)",
        kept_last + 1,
        resumed - 1
    );
    t.power_off();
    eprintln!("observability: the first boot took {:?}", started.elapsed());
}

#[test]
#[ignore = "boots QEMU; run through `cargo xtask test`"]
fn a_host_with_a_bad_collector_and_a_bad_metrics_address_still_boots_and_says_why() {
    let img = built_image();
    let mut disk = Disk::new(&img);
    let seed = seed(
        &disk,
        "version = 1\nhostname = \"observed-2\"\n\n[metrics]\naddress = \"192.0.2.1\"\n\n\
         [logs]\naddress = \"collector.invalid\"\nbuffer = 4096\n",
    );
    let started = Instant::now();
    let mut t = disk.boot_with(BootOptions::default(), |c| c.extra_drives.push(seed));
    let timeout = boot_timeout(t.accel);
    t.vm.wait_for_phase(Phase::Ready, timeout)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut said = (None, None);
    let deadline = Instant::now() + Duration::from_secs(90);
    while said.0.is_none() || said.1.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        let line =
            t.vm.console()
                .wait_for("what is wrong", left, |l| {
                    l.contains("] metrics: cannot listen") || l.contains("] logs: cannot reach")
                })
                .unwrap_or_else(|e| panic!("{e}"));
        if line.contains("metrics:") {
            said.0 = Some(line);
        } else {
            said.1 = Some(line);
        }
    }
    let (metrics, logs) = (said.0.unwrap(), said.1.unwrap());
    assert!(
        metrics.contains("cannot listen on 192.0.2.1:9100: ")
            && metrics.contains("check [metrics] address and port"),
        "{metrics}"
    );
    assert!(
        logs.contains("cannot reach the collector tcp://collector.invalid:514: cannot resolve collector.invalid"),
        "{logs}"
    );
    t.power_off();
    eprintln!(
        "observability: the misconfigured boot took {:?}",
        started.elapsed()
    );
}
