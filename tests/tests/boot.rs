//! Booting the built image in QEMU under OVMF: every boot phase of the init in order,
//! `crust: ready` with `/` on dm-verity, and a clean power-off on the ACPI power button.
//! Every wait fails on a kernel panic, Oops, BUG, segfault or init error line.

use std::time::Duration;

use crust_format::phase::Phase;
use crust_tests::{BootOptions, Disk, boot_timeout, built_image};

fn boots_to_ready_and_powers_off(opts: BootOptions) {
    let img = built_image();
    let mut disk = Disk::new(&img);
    let mut t = disk.boot(opts);
    let timeout = boot_timeout(t.accel);
    let mut last = Duration::ZERO;
    for phase in [
        Phase::Init,
        Phase::Modules,
        Phase::Manifest,
        Phase::Disk,
        Phase::Verity,
        Phase::Root,
        Phase::SwitchRoot,
        Phase::Stage2,
        Phase::State,
        Phase::Ready,
    ] {
        let line =
            t.vm.wait_for_phase(phase, timeout)
                .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            line.at >= last,
            "{phase} at {:?} is before the previous phase",
            line.at
        );
        last = line.at;
        match phase {
            Phase::Manifest => assert!(
                line.detail
                    .contains(&img.manifest.verity.root_hash.short(12)),
                "{}",
                line.detail
            ),
            Phase::Disk => assert!(
                line.detail.contains("root-a=") && line.detail.contains("slot a"),
                "{}",
                line.detail
            ),
            Phase::Ready => {
                assert!(line.detail.contains("crust 0.1.0"), "{}", line.detail);
                assert!(
                    line.detail.contains("dm-verity"),
                    "ready without a verified root: {}",
                    line.detail
                );
            }
            _ => {}
        }
    }
    // The power button, as a cloud's "stop instance" presses it.
    t.vm.qmp()
        .expect("QMP")
        .system_powerdown()
        .expect("system_powerdown");
    let shutdown =
        t.vm.wait_for_phase(Phase::Shutdown, Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("{e}"));
    assert!(shutdown.detail.contains("power"), "{}", shutdown.detail);
    t.vm.wait_for_phase(Phase::PowerOff, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}"));
    let status =
        t.vm.wait_exit(Duration::from_secs(60))
            .expect("QEMU ends after the power-off");
    assert!(status.success(), "QEMU exited with {status}");
    let log = t.vm.console().history().join("\n");
    assert!(
        log.contains("reboot: Power down"),
        "the kernel did not power down:\n{log}"
    );
}

#[test]
#[ignore = "boots QEMU; run through `cargo xtask test`"]
fn virtio_boot_reaches_ready_on_dm_verity_and_powers_off_on_acpi() {
    boots_to_ready_and_powers_off(BootOptions::default());
}

#[test]
#[ignore = "boots QEMU; run through `cargo xtask test`"]
fn nvme_boot_reaches_ready_on_dm_verity_and_powers_off_on_acpi() {
    boots_to_ready_and_powers_off(BootOptions {
        nvme: true,
        ..BootOptions::default()
    });
}
