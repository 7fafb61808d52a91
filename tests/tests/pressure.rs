//! A host under pressure keeps supervising and updating. One service fills `/var` (the
//! state partition) until the disk is full; another leaks memory until the kernel's OOM
//! killer ends it, again and again. Meanwhile the host finds an update, downloads it (its
//! update agent gives back the room it kept for itself on `/var`), installs it, reboots
//! into it, fetches a verified index and blesses it. The web service answers throughout,
//! PID 1 is never the OOM killer's choice, and the console says what the init's resident
//! size was after boot and at the peak of the update.

use std::time::Duration;

use crust_builder::build::outputs;
use crust_builder::sign::SigningKey;
use crust_format::phase::Phase;
use crust_tests::repo::{self, Server, now, release_to};
use crust_tests::{BootOptions, Disk, TestVm, boot_timeout, built_image};

/// The services that press: a filler that writes zeros into `/var/lib/filler` until the
/// disk is full (once: a marker says it did), and a leaker whose shell doubles a string
/// until the OOM killer ends it (restarted on failure, with backoff).
const PRESSING: &str = r#"
[[service]]
name = "filler"
image.debian = ["busybox-static"]
command = ["/bin/busybox", "sh", "-c", "if [ ! -e /data/full ]; then /bin/busybox dd if=/dev/zero of=/data/fill bs=1M 2>&1 | /bin/busybox tail -n 1; /bin/busybox touch /data/full; fi; echo filler: /var is full; /bin/busybox df -k /data | /bin/busybox tail -n 1; exec /bin/busybox sleep 1000000"]
mounts = [{ source = "/var/lib/filler", target = "/data", read-only = false }]
restart = "never"

[[service]]
name = "leaker"
image.debian = ["busybox-static"]
command = ["/bin/busybox", "sh", "-c", "echo leaking; x=0123456789abcdef; while :; do x=$x$x; done"]
restart = "on-failure"
"#;

/// The console line holding `text`: one printed since line `since` of the console (the
/// services race the boot's later phases, so a line may come before the one waited for
/// first), or the next.
fn wait(t: &mut TestVm, since: usize, text: &str, secs: u64) -> String {
    let history = t.vm.console().history();
    if let Some(line) = history.iter().skip(since).find(|l| l.contains(text)) {
        return line.clone();
    }
    t.vm.wait_for_text(text, Duration::from_secs(secs))
        .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
#[ignore = "builds two versions and boots them in QEMU; run through `cargo xtask test`"]
fn a_full_var_and_a_leaking_service_do_not_stop_supervision_or_updates() {
    let img = built_image();
    let work = tempfile::tempdir().unwrap();
    let keys = img.dir.parent().unwrap().join("keys");
    let key = SigningKey::development(&keys).unwrap();
    let v1 = repo::variant(work.path(), &keys, "0.1.1", PRESSING, &[]);
    let v2 = repo::variant(work.path(), &keys, "0.1.2", PRESSING, &[]);

    let repository = work.path().join("repo");
    let port = repo::free_port();
    let _server = Server::start(&repository, port);
    let seed = work.path().join("seed.img");
    let user_data = format!(
        "version = 1\n[update]\nrepository = \"http://10.0.2.2:{port}\"\ninterval = 10\n\
         health-timeout = 120\n"
    );
    crust_vm::seed::write(user_data.as_bytes(), &seed).unwrap();
    let mut disk = Disk::over(&v1.join(outputs::IMAGE), &img.dir);
    let opts = BootOptions {
        no_reboot: false,
        ..BootOptions::default()
    };
    let mut t = disk.boot_with(opts, |c| c.extra_drives.push(seed.clone()));
    let timeout = boot_timeout(t.accel);
    let healthy =
        t.vm.wait_for_phase(Phase::Healthy, timeout)
            .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        healthy.detail.contains("; init resident "),
        "{}",
        healthy.detail
    );
    eprintln!("=== after boot: {}", healthy.detail);

    // /var fills up, and the leaker is killed by the OOM killer (and restarted).
    wait(&mut t, 0, "filler: /var is full", 300);
    // crun reports its container's SIGKILL as exit status 137 (128 + 9).
    wait(&mut t, 0, "leaker: exited (exit status 137)", 300);
    wait(&mut t, 0, "leaker: restarted", 120);

    // An update: the agent takes back its reserve, downloads, installs, reboots.
    release_to(
        &repository,
        "stable",
        &v2.join(outputs::BUNDLE),
        &key,
        86_400,
        now(),
    );
    wait(
        &mut t,
        0,
        "update: /var has too little room: released the update agent's reserve",
        120,
    );
    let installed = wait(&mut t, 0, "update: 0.1.2 installed in slot b", 300);
    let second_boot = t.vm.console().history().len();
    assert!(installed.contains("init peak resident "), "{installed}");
    eprintln!("=== during the update: {installed}");
    let ready =
        t.vm.wait_for_phase(Phase::Ready, timeout)
            .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        ready.detail.contains("crust 0.1.2, slot b"),
        "{}",
        ready.detail
    );
    wait(&mut t, second_boot, "filler: /var is full", 120);
    wait(
        &mut t,
        second_boot,
        "update: 0.1.2 in slot b is healthy: blessed crust_0.1.2.efi",
        300,
    );
    for line in t.vm.console().history() {
        assert!(
            !(line.contains("Out of memory: Killed process") && line.contains("(init)")),
            "the OOM killer chose PID 1: {line}"
        );
    }
    t.power_off();
}
