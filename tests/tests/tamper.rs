//! Tampering with any part of the boot path is refused: each test changes one thing in a
//! copy of the built image and boots it. The boot must end in one console line naming the
//! failed check and a reboot (QEMU runs with `-no-reboot`, so the reboot ends it), never
//! in `crust: ready` and never in a hang.

use std::path::Path;
use std::time::Duration;

use crust_tests::{
    BootOptions, Disk, boot_timeout, built_image, copy_image, edit_initramfs, file_data_offset,
    flip_byte, partition,
};

const UKI: &str = "crust_0.1.0.efi";

/// Boots `raw` and expects a refusal whose console line contains every word of `expect`.
fn refused(raw: &Path, image_dir: &Path, allow: &str, expect: &[&str]) {
    let mut disk = Disk::over(raw, image_dir);
    let mut t = disk.boot(BootOptions::default());
    t.vm.console().allow(allow);
    let timeout = boot_timeout(t.accel);
    let line =
        t.vm.console()
            .wait_for(&expect.join(" "), timeout, |l| {
                expect.iter().all(|w| l.contains(w)) || l.contains("crust: ready")
            })
            .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        !line.contains("crust: ready"),
        "a tampered image booted: {line}"
    );
    // Then a reboot, which -no-reboot turns into QEMU exiting: not a hang.
    let status =
        t.vm.wait_exit(Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("{e}"));
    assert!(status.success(), "QEMU exited with {status}");
    let log = t.vm.console().history().join("\n");
    assert!(
        !log.contains("crust: ready"),
        "the tampered image reached ready:\n{log}"
    );
    assert!(
        log.contains("reboot: Restarting system") || log.contains("rebooting"),
        "no reboot after the refusal:\n{log}"
    );
}

#[test]
#[ignore = "boots QEMU; run through `cargo xtask test`"]
fn a_changed_byte_in_a_root_file_is_refused_by_dm_verity() {
    let img = built_image();
    let dir = tempfile::tempdir().unwrap();
    let raw = copy_image(&img, dir.path());
    let root = partition(&raw, "root-a");
    let root_image = dir.path().join("root.sqfs");
    crust_tests::extract(
        &raw,
        &root,
        &root_image,
        Some(img.manifest.verity.data_size()),
    );
    // The init itself: stage 1 execs it from the verified root.
    let offset = file_data_offset(&root_image, "/usr/sbin/init");
    flip_byte(&raw, root.offset + offset + 64);
    refused(
        &raw,
        &img.dir,
        "crust: error:",
        &["device-mapper: verity", "is corrupted"],
    );
}

#[test]
#[ignore = "boots QEMU; run through `cargo xtask test`"]
fn a_changed_byte_in_the_verity_tree_is_refused() {
    let img = built_image();
    let dir = tempfile::tempdir().unwrap();
    let raw = copy_image(&img, dir.path());
    let verity = partition(&raw, "verity-a");
    // The top level of the tree, right after the superblock: every read goes through it.
    flip_byte(&raw, verity.offset + 4096 + 7);
    refused(
        &raw,
        &img.dir,
        "crust: error:",
        &["device-mapper: verity", "is corrupted"],
    );
}

#[test]
#[ignore = "boots QEMU; run through `cargo xtask test`"]
fn a_changed_manifest_is_refused_by_its_signature() {
    let img = built_image();
    let dir = tempfile::tempdir().unwrap();
    let raw = copy_image(&img, dir.path());
    edit_initramfs(&raw, UKI, |tree| {
        let path = tree.join("crust/manifest");
        let text = std::fs::read_to_string(&path).unwrap();
        let changed = text.replace("version=0.1.0", "version=9.9.9");
        assert_ne!(text, changed);
        std::fs::write(path, changed).unwrap();
    });
    refused(
        &raw,
        &img.dir,
        "crust: error: manifest-signature",
        &["crust: error: manifest-signature"],
    );
}

#[test]
#[ignore = "boots QEMU; run through `cargo xtask test`"]
fn a_manifest_signed_by_another_key_is_refused() {
    let img = built_image();
    let dir = tempfile::tempdir().unwrap();
    let raw = copy_image(&img, dir.path());
    let (other, _) = crust_builder::sign::generate(dir.path(), "other").unwrap();
    let other = crust_builder::sign::SigningKey::load(&other).unwrap();
    edit_initramfs(&raw, UKI, |tree| {
        let manifest = std::fs::read(tree.join("crust/manifest")).unwrap();
        std::fs::write(tree.join("crust/manifest.sig"), other.sign(&manifest)).unwrap();
    });
    refused(
        &raw,
        &img.dir,
        "crust: error: manifest-signature",
        &["crust: error: manifest-signature"],
    );
}
