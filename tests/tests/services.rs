//! Containers as the host's only workload: the qemu profile's demo web service runs under
//! crun, answers through a port forward, passes its health check (which marks the boot
//! healthy), and stops on SIGTERM (its handler runs) before the power-off, and nothing on
//! the console runs typed commands (the admin shell is off by default); a service that keeps
//! failing is restarted with growing delays; dependencies start first.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use crust_builder::build::{BuildRequest, build};
use crust_builder::fetch::Cache;
use crust_format::phase::Phase;
use crust_tests::{BootOptions, Disk, boot_timeout, built_image, free_port, init_binary};

fn get(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the port forward");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\nHost: crust\r\n\r\n")
        .unwrap();
    let mut page = String::new();
    s.read_to_string(&mut page).unwrap();
    page
}

#[test]
#[ignore = "boots QEMU; run through `cargo xtask test`"]
fn demo_web_service_answers_is_healthy_and_stops_on_sigterm() {
    let img = built_image();
    let mut disk = Disk::new(&img);
    let port = free_port();
    let mut t = disk.boot_with(BootOptions::default(), |c| {
        c.forwards.push((port, 80));
        c.console_input = true;
    });
    let timeout = boot_timeout(t.accel);
    let started =
        t.vm.wait_for_phase(Phase::Services, timeout)
            .unwrap_or_else(|e| panic!("{e}"));
    assert!(started.detail.contains("web"), "{}", started.detail);
    t.vm.wait_for_phase(Phase::Ready, timeout)
        .unwrap_or_else(|e| panic!("{e}"));
    // No admin shell by default: what is typed on the console runs nowhere (the check is
    // at the end, after the power-off, so the command has had all that time).
    t.vm.type_text(NOT_A_SHELL).unwrap();
    let healthy =
        t.vm.wait_for_phase(Phase::Healthy, timeout)
            .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        healthy.detail.contains("web http:80/"),
        "{}",
        healthy.detail
    );

    let page = get(port);
    assert!(
        page.starts_with("HTTP/1.") && page.lines().next().unwrap().contains(" 200 "),
        "{page}"
    );
    assert!(
        page.contains("Crust 0.1.0 on "),
        "the page names the image version and host:\n{page}"
    );

    t.vm.qmp()
        .expect("QMP")
        .system_powerdown()
        .expect("powerdown");
    // The service's own SIGTERM handler prints this; then the init reports it stopped.
    t.vm.wait_for_text(
        "web: SIGTERM received: stopping httpd",
        Duration::from_secs(60),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let stopped =
        t.vm.wait_for_text("web: stopped in", Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("{e}"));
    assert!(stopped.contains("exit status 0"), "{stopped}");
    t.vm.wait_for_phase(Phase::PowerOff, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(t.vm.wait_exit(Duration::from_secs(60)).unwrap().success());
    assert!(
        !started.detail.contains("admin"),
        "the admin shell is off by default"
    );
    assert!(
        !t.vm
            .console()
            .history()
            .iter()
            .any(|l| l.contains("no-shell-42")),
        "a command typed on the console ran"
    );
}

/// Typed on the console of the default image: a shell would print `no-shell-42`; the
/// terminal's echo of the typed text does not contain it.
const NOT_A_SHELL: &str = "echo no-shell-$((6*7))\n";

/// The qemu profile plus a service that fails every time and one that waits for it.
const VARIANT: &str = r#"include = "qemu.toml"

[[service]]
name = "late"
image.debian = ["busybox-static"]
command = ["/bin/busybox", "sh", "-c", "echo late is up; exec /bin/busybox sleep 3600"]
after = ["flaky"]

[[service]]
name = "flaky"
image.debian = ["busybox-static"]
command = ["/bin/busybox", "sh", "-c", "echo flaky starts and fails; exit 3"]
restart = "on-failure"
"#;

#[test]
#[ignore = "builds a variant image and boots it; run through `cargo xtask test`"]
fn a_failing_service_is_restarted_with_growing_delays() {
    let img = built_image();
    let dir = tempfile::tempdir().unwrap();
    let profiles = Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles");
    for f in ["base.toml", "qemu.toml", "qemu.lock"] {
        std::fs::copy(profiles.join(f), dir.path().join(f)).unwrap();
    }
    std::fs::create_dir(dir.path().join("files")).unwrap();
    std::fs::copy(
        profiles.join("files/web-start.sh"),
        dir.path().join("files/web-start.sh"),
    )
    .unwrap();
    std::fs::write(dir.path().join("variant.toml"), VARIANT).unwrap();
    std::fs::copy(profiles.join("qemu.lock"), dir.path().join("variant.lock")).unwrap();
    let out = dir.path().join("out");
    let variant = build(&BuildRequest {
        profile: dir.path().join("variant.toml"),
        init: init_binary(),
        out_dir: out.clone(),
        dev_key_dir: out.join("keys"),
        cache: Cache::new(Cache::default_root()),
        locked: false,
        source_date_epoch: None,
        init_crates: Some(crust_tests::init_crates()),
        observe: crust_tests::observe_program(),
        extras: Default::default(),
    })
    .expect("the variant builds");

    let mut disk = Disk::over(&variant.image, &img.dir);
    let mut t = disk.boot(BootOptions::default());
    let timeout = boot_timeout(t.accel);
    let started =
        t.vm.wait_for_phase(Phase::Services, timeout)
            .unwrap_or_else(|e| panic!("{e}"));
    // Start order: flaky before late (late waits for it), web on its own.
    let order: Vec<&str> = started
        .detail
        .trim_start_matches("started ")
        .split(" (")
        .next()
        .unwrap()
        .split(", ")
        .collect();
    let pos = |n: &str| {
        order
            .iter()
            .position(|s| *s == n)
            .unwrap_or_else(|| panic!("{n} not in {order:?}"))
    };
    assert!(pos("flaky") < pos("late"), "{order:?}");
    let mut delays = Vec::new();
    while delays.len() < 3 {
        let line =
            t.vm.console()
                .wait_for("flaky restarting", Duration::from_secs(60), |l| {
                    l.contains("flaky: restarting in ")
                })
                .unwrap_or_else(|e| panic!("{e}"));
        let secs: u64 = line
            .split("restarting in ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap();
        delays.push(secs);
    }
    assert_eq!(delays, [1, 2, 4], "exponential backoff");
    // `late` started once `flaky` first ran, probably while the delays above were read.
    if !t
        .vm
        .console()
        .history()
        .iter()
        .any(|l| l.contains("late: late is up"))
    {
        t.vm.wait_for_text("late: late is up", Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("{e}"));
    }
    t.power_off();
}
