//! The built image, checked part by part with tools that do not share our code: sgdisk and
//! sfdisk for the GPT, fsck.fat and mtools for the ESP, objdump/objcopy for the UKI, cpio
//! for the initramfs, unsquashfs for the root, veritysetup and systemd-dissect for verity.

use std::path::Path;
use std::process::{Command, Stdio};

use crust_format::layout::{self, Role};
use crust_format::signature::PublicKey;
use crust_tests::{built_image, extract, partition, partitions, run_ok};

const UKI_NAME: &str = "crust_0.1.0.efi";

#[test]
#[ignore = "needs the image built by `cargo xtask test`"]
fn gpt_is_clean_and_follows_layout_v1() {
    let img = built_image();
    let out = run_ok(Command::new("sgdisk").arg("-v").arg(&img.image));
    assert!(String::from_utf8_lossy(&out.stdout).contains("No problems found"));
    let parts = partitions(&img.image);
    let names: Vec<&str> = parts.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        ["esp", "root-a", "verity-a", "root-b", "verity-b", "state"]
    );
    for (part, role) in parts.iter().zip(Role::ALL) {
        assert_eq!(
            part.type_guid,
            role.type_guid().to_string(),
            "{}",
            part.name
        );
        assert_eq!(
            part.offset % (1 << 20),
            0,
            "{} is not 1 MiB aligned",
            part.name
        );
    }
    let hash = &img.manifest.verity.root_hash;
    assert_eq!(parts[1].uuid, layout::root_partition_uuid(hash).to_string());
    assert_eq!(
        parts[2].uuid,
        layout::verity_partition_uuid(hash).to_string()
    );
    assert_ne!(parts[3].uuid, parts[1].uuid, "slot B has its own identity");
}

fn esp_image(dir: &Path) -> std::path::PathBuf {
    let img = built_image();
    let esp = partition(&img.image, "esp");
    let path = dir.join("esp.img");
    extract(&img.image, &esp, &path, None);
    path
}

#[test]
#[ignore = "needs the image built by `cargo xtask test`"]
fn esp_is_clean_fat32_with_systemd_boot_and_the_uki() {
    let dir = tempfile::tempdir().unwrap();
    let esp = esp_image(dir.path());
    let fsck = Command::new("fsck.fat")
        .arg("-n")
        .arg(&esp)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&fsck.stdout);
    assert!(fsck.status.success(), "fsck.fat -n: {report}");
    assert_eq!(report.lines().count(), 2, "fsck.fat complained:\n{report}");
    let listing = run_ok(
        Command::new("mdir")
            .args(["-/", "-b", "-i"])
            .arg(&esp)
            .arg("::"),
    );
    let listing = String::from_utf8_lossy(&listing.stdout);
    for want in [
        "::/EFI/BOOT/BOOTX64.EFI",
        &format!("::/EFI/Linux/{UKI_NAME}"),
        "::/loader/loader.conf",
    ] {
        assert!(
            listing.lines().any(|l| l == want),
            "{want} missing:\n{listing}"
        );
    }
    let conf = run_ok(
        Command::new("mtype")
            .arg("-i")
            .arg(&esp)
            .arg("::/loader/loader.conf"),
    );
    let conf = String::from_utf8_lossy(&conf.stdout);
    assert!(
        !conf.lines().any(|l| l.trim_start().starts_with("default")),
        "no fixed default:\n{conf}"
    );
    let boot = run_ok(
        Command::new("mtype")
            .arg("-i")
            .arg(&esp)
            .arg("::/EFI/BOOT/BOOTX64.EFI"),
    );
    assert_eq!(
        boot.stdout,
        std::fs::read("/usr/lib/systemd/boot/efi/systemd-bootx64.efi").unwrap()
    );
}

#[test]
#[ignore = "needs the image built by `cargo xtask test`"]
fn uki_carries_kernel_initramfs_cmdline_and_os_release() {
    let img = built_image();
    let dir = tempfile::tempdir().unwrap();
    let esp = esp_image(dir.path());
    let uki = dir.path().join("uki.efi");
    run_ok(
        Command::new("mcopy")
            .arg("-n")
            .arg("-i")
            .arg(&esp)
            .arg(format!("::/EFI/Linux/{UKI_NAME}"))
            .arg(&uki),
    );
    let headers = run_ok(Command::new("objdump").arg("-h").arg(&uki));
    let headers = String::from_utf8_lossy(&headers.stdout);
    for section in [
        ".osrel", ".cmdline", ".uname", ".initrd", ".linux", ".sdmagic",
    ] {
        assert!(
            headers.contains(&format!(" {section} ")),
            "{section} missing:\n{headers}"
        );
    }
    let section = |name: &str| {
        let out = dir.path().join(name.trim_start_matches('.'));
        run_ok(
            Command::new("objcopy")
                .args(["-O", "binary", "--only-section", name])
                .arg(&uki)
                .arg(&out),
        );
        std::fs::read(out).unwrap()
    };
    let cmdline = String::from_utf8(section(".cmdline")).unwrap();
    assert!(cmdline.starts_with("panic=10 "), "{cmdline}");
    assert!(cmdline.contains("console=ttyS0,115200"), "{cmdline}");
    let osrel = String::from_utf8(section(".osrel")).unwrap();
    assert!(osrel.contains("IMAGE_VERSION=0.1.0"), "{osrel}");
    assert_eq!(
        String::from_utf8(section(".uname")).unwrap(),
        img.manifest.kernel_release
    );
    let linux = section(".linux");
    assert_eq!(
        crust_format::Digest::of(&linux),
        img.manifest.kernel_sha256,
        "manifest pins the kernel"
    );
    assert_eq!(linux, std::fs::read(img.dir.join("vmlinuz")).unwrap());

    // The initramfs, read by zstd and GNU cpio.
    std::fs::write(dir.path().join("initrd.zst"), section(".initrd")).unwrap();
    run_ok(
        Command::new("zstd")
            .args(["-q", "-d", "-f"])
            .arg(dir.path().join("initrd.zst")),
    );
    let list = run_ok(
        Command::new("cpio")
            .args(["-it", "--quiet", "-F"])
            .arg(dir.path().join("initrd")),
    );
    let list = String::from_utf8_lossy(&list.stdout);
    for want in [
        "init",
        "dev/console",
        "etc/initrd-release",
        "crust/manifest",
        "crust/manifest.sig",
        "crust/verify.pub",
        "crust/modules",
    ] {
        assert!(
            list.lines().any(|l| l == want),
            "{want} missing from the initramfs:\n{list}"
        );
    }
    for module in [
        "dm-verity.ko",
        "squashfs.ko",
        "efivarfs.ko",
        "virtio_blk.ko",
        "dm-bufio.ko",
    ] {
        assert!(
            list.lines().any(|l| l.ends_with(module)),
            "{module} missing:\n{list}"
        );
    }
    // The manifest in the initramfs is the published one, and its signature checks out
    // against the public key beside it.
    let x = dir.path().join("x");
    std::fs::create_dir(&x).unwrap();
    let cpio = Command::new("cpio")
        .args(["-id", "--quiet", "-F"])
        .arg(dir.path().join("initrd"))
        .current_dir(&x)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(cpio.success());
    let manifest = std::fs::read(x.join("crust/manifest")).unwrap();
    assert_eq!(manifest, std::fs::read(img.dir.join("manifest")).unwrap());
    let key = PublicKey::from_bytes(&std::fs::read(x.join("crust/verify.pub")).unwrap()).unwrap();
    key.verify(
        &manifest,
        &std::fs::read(x.join("crust/manifest.sig")).unwrap(),
    )
    .expect("the manifest signature verifies");
    // Module load order: every module after its dependencies, as depmod computes them.
    let order = std::fs::read_to_string(x.join("crust/modules")).unwrap();
    let pos = |m: &str| {
        order
            .lines()
            .position(|l| l.ends_with(m))
            .unwrap_or_else(|| panic!("{m} not in\n{order}"))
    };
    assert!(pos("/dm-mod.ko") < pos("/dm-verity.ko"));
    assert!(pos("/virtio.ko") < pos("/virtio_blk.ko"));
    // The init is a static executable: no program interpreter.
    let elf = run_ok(Command::new("readelf").arg("-lW").arg(x.join("init")));
    let elf = String::from_utf8_lossy(&elf.stdout);
    assert!(
        !elf.contains("INTERP"),
        "the init asks for a dynamic loader:\n{elf}"
    );
}

#[test]
#[ignore = "needs the image built by `cargo xtask test`"]
fn root_is_squashfs_and_veritysetup_accepts_it_with_the_signed_root_hash() {
    let img = built_image();
    let dir = tempfile::tempdir().unwrap();
    let v = &img.manifest.verity;
    let (root, hash) = (dir.path().join("root"), dir.path().join("verity"));
    extract(
        &img.image,
        &partition(&img.image, "root-a"),
        &root,
        Some(v.data_size()),
    );
    extract(
        &img.image,
        &partition(&img.image, "verity-a"),
        &hash,
        Some(v.hash_size),
    );
    let ok = run_ok(
        Command::new("veritysetup")
            .arg("verify")
            .arg(&root)
            .arg(&hash)
            .arg(v.root_hash.to_hex()),
    );
    assert!(ok.status.success());
    // A different root hash is refused.
    let wrong = Command::new("veritysetup")
        .arg("verify")
        .arg(&root)
        .arg(&hash)
        .arg("00".repeat(32))
        .output()
        .unwrap();
    assert!(
        !wrong.status.success(),
        "veritysetup accepted a wrong root hash"
    );

    let sb = run_ok(Command::new("unsquashfs").arg("-s").arg(&root));
    assert!(String::from_utf8_lossy(&sb.stdout).contains("Compression zstd"));
    let list = run_ok(
        Command::new("unsquashfs")
            .args(["-lls", "-d", ""])
            .arg(&root),
    );
    let list = String::from_utf8_lossy(&list.stdout);
    for want in [
        "/usr/sbin/init",
        "/sbin -> usr/sbin",
        "/usr/lib/os-release",
        "/dev",
        "/proc",
        "/sys",
        "/run",
        "/var",
        "/tmp",
    ] {
        assert!(
            list.lines().any(|l| l.ends_with(want)),
            "{want} missing from the root:\n{list}"
        );
    }
}

#[test]
#[ignore = "needs the image built by `cargo xtask test` and loop devices (root)"]
fn systemd_dissect_pairs_root_a_with_its_verity_partition() {
    let img = built_image();
    let out = run_ok(
        Command::new("systemd-dissect")
            .arg(format!("--root-hash={}", img.manifest.verity.root_hash))
            .arg("--json=short")
            .arg(&img.image),
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mounts = json["mounts"].as_array().unwrap();
    let root = mounts
        .iter()
        .find(|m| m["designator"] == "root")
        .expect("a root partition");
    assert_eq!(root["partition_label"], "root-a");
    assert_eq!(root["verity"], "yes");
    assert_eq!(root["fstype"], "squashfs");
    assert!(
        mounts
            .iter()
            .any(|m| m["designator"] == "root-verity" && m["partition_label"] == "verity-a")
    );
    assert!(mounts.iter().any(|m| m["designator"] == "esp"));
    let osrel: Vec<&str> = json["osRelease"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(osrel.contains(&"IMAGE_VERSION=0.1.0"), "{osrel:?}");
}
