//! The containerd profile, end to end: containerd (with its CRI plugin) runs as a host
//! service the init supervises and health-checks through its API; user-data names an image
//! in a real registry on the host (Debian's `docker-registry`, the image made by umoci and
//! pushed by skopeo), which the guest pulls at boot through QEMU's user network
//! (10.0.2.2) and runs with `ctr run`. Its output reaches the console, and at the power-off
//! its SIGTERM handler runs before containerd stops.

use std::time::Duration;

use crust_format::phase::Phase;
use crust_tests::registry::{Registry, busybox_layout};
use crust_tests::{BootOptions, Disk, boot_timeout, build_profile, built_image, profiles_copy};

#[test]
#[ignore = "builds the containerd profile, runs a registry and boots; run through `cargo xtask test`"]
fn containerd_pulls_an_image_from_a_registry_at_boot_and_runs_it() {
    let img = built_image();
    let dir = profiles_copy();
    let registry = Registry::start();
    let layout = busybox_layout(dir.path(), "demo");
    registry.push(&layout, "demo", "demo:1");
    let built = build_profile(dir.path(), "containerd", true);
    eprintln!(
        "containerd profile: root file system {} bytes ({:.1} MiB)",
        built.breakdown.root,
        built.breakdown.root as f64 / f64::from(1 << 20)
    );

    let user_data = format!(
        "version = 1\n\n[[service]]\nname = \"demo\"\nimage.pull = \"http://10.0.2.2:{}/demo:1\"\nenv = {{ SOURCE = \"containerd\" }}\n",
        registry.port
    );
    let mut disk = Disk::over(&built.image, &img.dir);
    let seed = disk.scratch.path().join("seed.img");
    crust_vm::seed::write(user_data.as_bytes(), &seed).unwrap();
    let mut t = disk.boot_with(BootOptions::default(), |c| c.extra_drives.push(seed));
    let timeout = boot_timeout(t.accel);
    let started =
        t.vm.wait_for_phase(Phase::Services, timeout)
            .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        started
            .detail
            .starts_with("started containerd, demo (1 with health checks); user-data added demo"),
        "{}",
        started.detail
    );
    let long = Duration::from_secs(180);
    for text in [
        "Start cri plugin",
        "containerd: health check exec passes",
        "crust: healthy: 1 health check(s) pass: containerd exec",
        &format!(
            "demo: pulling http://10.0.2.2:{}/demo:1: done",
            registry.port
        ),
        "demo: hello from containerd",
    ] {
        if !t.vm.console().history().iter().any(|l| l.contains(text)) {
            t.vm.wait_for_text(text, long)
                .unwrap_or_else(|e| panic!("{e}"));
        }
    }

    t.vm.qmp()
        .expect("QMP")
        .system_powerdown()
        .expect("powerdown");
    // The image's handler runs (init signals the task through containerd), then containerd
    // stops, last.
    t.vm.wait_for_text("demo: containerd: SIGTERM received", long)
        .unwrap_or_else(|e| panic!("{e}"));
    let stopped =
        t.vm.wait_for_text("containerd: stopped in", long)
            .unwrap_or_else(|e| panic!("{e}"));
    assert!(stopped.contains("exit status 0"), "{stopped}");
    t.vm.wait_for_phase(Phase::PowerOff, long)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(t.vm.wait_exit(long).unwrap().success());
}
