//! The containerd profile, end to end: containerd (with its CRI plugin) runs as a host
//! service the init supervises and health-checks through its API; user-data names an image
//! in a real registry on the host (Debian's `docker-registry`, the image made by umoci and
//! pushed by skopeo), which the guest pulls at boot through QEMU's user network
//! (10.0.2.2) and runs with `ctr run`. Its output reaches the console, and at the power-off
//! its SIGTERM handler runs before containerd stops. A second service from the same image
//! shows how pulled containers are confined: the kernel reports a seccomp filter, its cgroup
//! has the default pids limit, and `unshare -U` is refused.
//!
//! Nothing the host runs comes from `/var`: before the boot, a program named
//! `containerd-shim-runc-v2` that would announce itself on the console is written into
//! `/var/lib/containerd/opt/bin` of the state partition, offline (debugfs), where containerd's
//! `opt` plugin would have put it first on the PATH. The container starts with the verified
//! root's shim, and the planted one never runs.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crust_format::phase::Phase;
use crust_tests::registry::{Registry, busybox_layout};
use crust_tests::{
    BootOptions, Disk, boot_timeout, build_profile, built_image, profiles_copy, run_ok,
    write_state_file,
};

/// What the second pulled container runs: it reports its seccomp mode, whether it may make
/// a user namespace, and how many processes it could start before fork failed (it sees no
/// cgroup file system, so it counts: a subshell starts `sleep`s until the pids limit stops
/// it, then everything but the shell is killed).
const CONFINED: &str = "B=/bin/busybox; \
    mode=$($B grep '^Seccomp:' /proc/self/status | $B cut -f2); \
    if $B unshare -U $B true 2>/dev/null; then u=allowed; else u=refused; fi; \
    ( i=0; while :; do $B sleep 600 & i=$((i+1)); echo $i > /forks; done ) 2>/dev/null; \
    kill -9 -1; wait; \
    echo \"seccomp $mode, unshare -U $u, $($B cat /forks) sleeps before fork failed\"";

/// What the planted shim prints if it ever runs.
const MARKER: &str = "SHIM-FROM-VAR-RAN";

/// A static program that writes [`MARKER`] to the kernel log and the console, then fails.
fn planted_shim(dir: &Path) -> std::path::PathBuf {
    let source = dir.join("shim.c");
    std::fs::write(
        &source,
        format!(
            "#include <fcntl.h>\n#include <unistd.h>\nint main(void) {{\n\
             const char m[] = \"{MARKER}\\n\";\n\
             for (const char **p = (const char *[]){{\"/dev/kmsg\", \"/dev/console\", 0}}; *p; p++) {{\n\
             int fd = open(*p, O_WRONLY); if (fd >= 0) {{ write(fd, m, sizeof m - 1); close(fd); }} }}\n\
             return 1; }}\n"
        ),
    )
    .unwrap();
    let binary = dir.join("containerd-shim-runc-v2");
    run_ok(
        Command::new("gcc")
            .args(["-static", "-Os", "-o"])
            .arg(&binary)
            .arg(&source),
    );
    binary
}

#[test]
#[ignore = "builds the containerd profile, runs a registry and boots; run through `cargo xtask test`"]
fn containerd_pulls_an_image_from_a_registry_at_boot_and_runs_it() {
    let img = built_image();
    let dir = profiles_copy();
    let registry = Registry::start();
    let layout = busybox_layout(dir.path(), "demo");
    let digest = registry.push(&layout, "demo", "demo:1");
    let built = build_profile(dir.path(), "containerd", true);
    eprintln!(
        "containerd profile: root file system {} bytes ({:.1} MiB)",
        built.breakdown.root,
        built.breakdown.root as f64 / f64::from(1 << 20)
    );

    // User-data pins the image by the digest the registry serves (as it must).
    let reference = format!("http://10.0.2.2:{}/demo:1@{digest}", registry.port);
    let user_data = format!(
        "version = 1\n\n[[service]]\nname = \"demo\"\nimage.pull = \"{reference}\"\nenv = {{ SOURCE = \"containerd\" }}\n\n\
         [[service]]\nname = \"confined\"\nimage.pull = \"{reference}\"\nrestart = \"never\"\n\
         command = [\"/bin/busybox\", \"sh\", \"-c\", {CONFINED:?}]\n"
    );
    let work = tempfile::tempdir().unwrap();
    let raw = crust_tests::copy_image(
        &crust_tests::BuiltImage {
            dir: img.dir.clone(),
            image: built.image.clone(),
            manifest: built.manifest.clone(),
        },
        work.path(),
    );
    // Written offline into the state partition, as an attacker with the disk would.
    write_state_file(
        &raw,
        "/lib/containerd/opt/bin/containerd-shim-runc-v2",
        &std::fs::read(planted_shim(work.path())).unwrap(),
        0o755,
    );
    let mut disk = Disk::over(&raw, &img.dir);
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
            .starts_with(
                "started containerd, demo, confined (1 with health checks); user-data added demo, confined"
            ),
        "{}",
        started.detail
    );
    let long = Duration::from_secs(180);
    for text in [
        "Start cri plugin",
        "containerd: health check exec passes",
        "crust: healthy: 1 health check(s) pass: containerd exec",
        &format!("demo: pulling {reference}: done"),
        "demo: hello from containerd",
        "confined: seccomp 2, unshare -U refused, ",
    ] {
        if !t.vm.console().history().iter().any(|l| l.contains(text)) {
            t.vm.wait_for_text(text, long)
                .unwrap_or_else(|e| panic!("{e}"));
        }
    }

    // The pids limit (1024) less the container's shell and the subshell.
    let history = t.vm.console().history();
    let counted = history
        .iter()
        .find_map(|l| l.split("unshare -U refused, ").nth(1))
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse::<u32>().ok())
        .expect("the confined container's count");
    assert!((1000..=1022).contains(&counted), "{counted} sleeps");

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
    assert!(
        !t.vm.console().history().iter().any(|l| l.contains(MARKER)),
        "a program from /var ran"
    );
}
