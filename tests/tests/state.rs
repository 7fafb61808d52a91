//! `/var` on the state partition: what the host writes there survives a reboot, and on a
//! disk larger than the image the partition and its ext4 grow to the end of the disk,
//! leaving a GPT that `sgdisk -v` and a file system that `e2fsck -fn` find clean.

use std::process::Command;

use crust_format::phase::Phase;
use crust_tests::{BootOptions, Disk, boot_timeout, built_image, extract, partition, run_ok};

const GIB: u64 = 1 << 30;

/// Boots `disk` to ready and powers it off; returns the detail of the `state` line.
fn boot_once(disk: &mut Disk) -> String {
    let mut t = disk.boot(BootOptions::default());
    let timeout = boot_timeout(t.accel);
    let state =
        t.vm.wait_for_phase(Phase::State, timeout)
            .unwrap_or_else(|e| panic!("{e}"));
    t.vm.wait_for_phase(Phase::Ready, timeout)
        .unwrap_or_else(|e| panic!("{e}"));
    t.power_off();
    state.detail
}

fn machine_id(detail: &str) -> &str {
    detail
        .split("machine-id ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no machine-id in {detail:?}"))
}

#[test]
#[ignore = "boots QEMU; run through `cargo xtask test`"]
fn var_survives_reboots_and_grows_with_the_disk() {
    let img = built_image();
    let shipped = partition(&img.image, "state").size;
    let mut disk = Disk::new(&img);

    let first = boot_once(&mut disk);
    assert!(first.contains("(new), boot 1"), "{first}");
    assert!(!first.contains("grown"), "{first}");

    // The same disk again: the identity made on the first boot is read back from /var.
    let second = boot_once(&mut disk);
    assert!(second.contains("(kept), boot 2"), "{second}");
    assert_eq!(machine_id(&first), machine_id(&second));

    // A disk 1 GiB larger, as a bigger cloud volume or a flashed disk is.
    disk.grow(GIB);
    let third = boot_once(&mut disk);
    assert!(third.contains("grown from"), "{third}");
    assert!(third.contains("(kept), boot 3"), "{third}");
    assert_eq!(machine_id(&first), machine_id(&third));

    let raw = disk.to_raw();
    let out = run_ok(Command::new("sgdisk").arg("-v").arg(&raw));
    let verify = String::from_utf8_lossy(&out.stdout);
    assert!(verify.contains("No problems found"), "{verify}");
    let state = partition(&raw, "state");
    assert!(
        state.size >= shipped + GIB - (2 << 20) && state.size <= shipped + GIB,
        "state partition is {} bytes after growing a {} byte partition by 1 GiB",
        state.size,
        shipped
    );
    assert_eq!(
        state.offset + state.size,
        std::fs::metadata(&raw).unwrap().len() - (1 << 20),
        "the partition ends at the last whole MiB before the backup GPT"
    );

    let fs = disk.scratch.path().join("state.img");
    extract(&raw, &state, &fs, None);
    run_ok(Command::new("e2fsck").arg("-fn").arg(&fs));
    let dump = run_ok(Command::new("dumpe2fs").arg("-h").arg(&fs));
    let dump = String::from_utf8_lossy(&dump.stdout);
    let field = |name: &str| -> u64 {
        dump.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{dump}"))
    };
    assert_eq!(
        field("Block count:") * field("Block size:"),
        state.size,
        "the file system fills the partition"
    );
}
