//! Service images from an OCI image layout and from a registry, end to end, on one variant
//! of the qemu profile that also turns the admin shell on:
//!
//! - an image made by umoci as an OCI layout is pushed by skopeo to a real registry
//!   (Debian's `docker-registry` on 127.0.0.1); the variant runs the layout as one service and
//!   the registry image as another; the build pins the registry's digest in the lock, and the
//!   registry is stopped before the boot (the image is baked into the verified root);
//! - the first boot carries user-data that changes one service, adds one made from an image
//!   in the root, and turns the demo web service off; both images' services print their
//!   lines, and the admin shell on the serial console runs a typed command in the host's
//!   PID and mount namespaces, and Ctrl-C interrupts a command in it (the console is its
//!   controlling terminal);
//! - the second boot carries user-data naming a service the image does not have: it is
//!   refused with its field, and the host runs its built-in services.

use std::time::Duration;

use crust_format::phase::Phase;
use crust_tests::registry::{Registry, busybox_layout};
use crust_tests::{BootOptions, Disk, build_profile, built_image, profiles_copy};

/// The qemu profile, the admin shell, and a service per image source. `{REFERENCE}` is the
/// registry image.
const VARIANT: &str = r#"include = "qemu.toml"

[admin]
enabled = true

[[service]]
name = "layout"
image.oci-layout = "layout"
image.tag = "demo"
env = { SOURCE = "oci-layout" }

[[service]]
name = "pulled"
image.registry = "{REFERENCE}"
env = { SOURCE = "registry" }
"#;

/// Changes `layout`, adds `copy` from the registry image in the root, turns `web` off.
const USER_DATA: &str = r#"version = 1

[[service]]
name = "layout"
env = { GREETING = "changed by user-data" }

[[service]]
name = "copy"
image.service = "pulled"
command = ["/bin/busybox", "sh", "-c", "echo copy runs in cgroup $(/bin/busybox cat /proc/self/cgroup)"]
restart = "never"

[[service]]
name = "web"
enabled = false
"#;

/// What is typed into the admin shell: it proves the shell shares the host's mount
/// namespace (the same one as PID 1) and sees the host's processes and files. The answer
/// starts `admin-42`, which the terminal's echo of the command does not contain.
const ADMIN_COMMAND: &str = "[ \"$(readlink /proc/self/ns/mnt)\" = \"$(readlink /proc/1/ns/mnt)\" ] && echo \"admin-$((6*7)): host mount namespace, pid 1 is $(cat /proc/1/comm), $(ls -d /usr/lib/crust/services/*/ | wc -l) service folders\"\n";

#[test]
#[ignore = "runs a registry, builds a variant image and boots it twice; run through `cargo xtask test`"]
fn layout_and_registry_images_user_data_services_and_the_admin_shell() {
    let img = built_image();
    let dir = profiles_copy();
    let layout = busybox_layout(dir.path(), "demo");
    let (reference, digest) = {
        let registry = Registry::start();
        let digest = registry.push(&layout, "demo", "demo:1");
        let reference = registry.reference("demo:1");
        std::fs::write(
            dir.path().join("variant.toml"),
            VARIANT.replace("{REFERENCE}", &reference),
        )
        .unwrap();
        std::fs::copy(
            dir.path().join("qemu.lock"),
            dir.path().join("variant.lock"),
        )
        .unwrap();
        build_profile(dir.path(), "variant", false);
        (reference, digest)
        // The registry stops here: the boots below use what the build baked in.
    };
    let lock = crust_builder::lock::Lock::read(&dir.path().join("variant.lock"))
        .unwrap()
        .unwrap();
    let pinned = lock
        .images
        .iter()
        .find(|i| i.service == "pulled")
        .expect("the lock pins the registry image");
    assert_eq!(pinned.reference, reference);
    assert_eq!(
        pinned.digest, digest,
        "the lock pins the digest the registry serves"
    );
    let variant = dir.path().join("out-variant/image.raw");

    // Boot 1: user-data services and the admin shell.
    let mut disk = Disk::over(&variant, &img.dir);
    let seed = disk.scratch.path().join("seed.img");
    crust_vm::seed::write(USER_DATA.as_bytes(), &seed).unwrap();
    let mut t = disk.boot_with(BootOptions::default(), |c| {
        c.extra_drives.push(seed);
        c.console_input = true;
    });
    let timeout = boot_timeout(&t);
    let started =
        t.vm.wait_for_phase(Phase::Services, timeout)
            .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        started
            .detail
            .contains("user-data added copy; changed layout; turned off web"),
        "{}",
        started.detail
    );
    assert!(!started.detail.contains("web,"), "{}", started.detail);
    for line in [
        "layout: changed by user-data from oci-layout",
        "pulled: hello from registry",
        "copy: copy runs in cgroup 0::/crust/copy",
        "Crust admin shell (busybox) in the host's PID and mount namespaces",
    ] {
        wait_or_seen(&mut t, line);
    }
    t.vm.type_text(ADMIN_COMMAND).unwrap();
    let answer =
        t.vm.wait_for_text("admin-42: host mount namespace", Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        answer.contains("pid 1 is init, 4 service folders"),
        "{answer}"
    );
    assert!(
        t.vm.console()
            .history()
            .iter()
            .any(|l| l.contains("crust-admin# ")),
        "no shell prompt"
    );
    // The console is the shell's controlling terminal: Ctrl-C ends a command that would
    // otherwise hold the shell for ten minutes, and the next command runs.
    t.vm.type_text("sleep 600\n").unwrap();
    std::thread::sleep(Duration::from_secs(2));
    t.vm.type_text("\x03").unwrap();
    t.vm.type_text("echo \"admin-$((6*8)): interrupted\"\n")
        .unwrap();
    t.vm.wait_for_text("admin-48: interrupted", Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("Ctrl-C did not interrupt the admin shell's command: {e}"));
    t.power_off();
    // The image's own SIGTERM handler ran in the layout container.
    assert!(
        t.vm.console()
            .history()
            .iter()
            .any(|l| l.contains("layout: oci-layout: SIGTERM received")),
        "layout did not see SIGTERM"
    );
    drop(t);

    // Boot 2: user-data naming a service the image lacks is refused; the image's services
    // run as built.
    let mut disk = Disk::over(&variant, &img.dir);
    let seed = disk.scratch.path().join("seed.img");
    crust_vm::seed::write(
        b"version = 1\nhostname = \"not-applied\"\n[[service]]\nname = \"nosuch\"\nrestart = \"never\"\n",
        &seed,
    )
    .unwrap();
    let mut t = disk.boot_with(BootOptions::default(), |c| c.extra_drives.push(seed));
    let timeout = boot_timeout(&t);
    let refused =
        t.vm.wait_for_text("crust: warning: config: user-data from", timeout)
            .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        refused.contains(
            "refused: field service[0].name: this image has no service \"nosuch\" (it has web, layout, pulled, admin)"
        ),
        "{refused}"
    );
    let started =
        t.vm.wait_for_phase(Phase::Services, timeout)
            .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        started
            .detail
            .starts_with("started web, layout, pulled, admin ("),
        "{}",
        started.detail
    );
    wait_or_seen(&mut t, "layout: hello from oci-layout");
    assert!(
        !t.vm
            .console()
            .history()
            .iter()
            .any(|l| l.contains("not-applied")),
        "the refused user-data's host name was applied"
    );
    t.power_off();
}

fn boot_timeout(t: &crust_tests::TestVm) -> Duration {
    crust_tests::boot_timeout(t.accel)
}

/// Waits for a console line containing `text`, unless one went by already.
fn wait_or_seen(t: &mut crust_tests::TestVm, text: &str) {
    if t.vm.console().history().iter().any(|l| l.contains(text)) {
        return;
    }
    t.vm.wait_for_text(text, Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e}"));
}
