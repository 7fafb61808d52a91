//! The installer ISO (docs/METAL.md), booted as a CD-ROM under OVMF:
//!
//! - one empty disk: the release is written, the machine reboots into the disk (through
//!   the `BootNext` entry the installer wrote, the ISO still attached and first in QEMU's
//!   boot order) and reaches `ready` with `/var` grown; `sgdisk -v` finds the GPT clean;
//! - two empty disks and `disk = "auto"`: refused, both disks untouched;
//! - a disk holding ext4, named without `wipe` by a NoCloud seed beside the ISO: refused,
//!   the file system and the seed intact, the seed never a candidate;
//! - an ISO whose `image.raw.zst` had one byte changed: refused before writing;
//! - an ISO whose signed user-data names a disk holding ext4: refused without `wipe`;
//!   with `wipe = true` installed there, the other disk untouched, and the installed host
//!   takes the ISO's user-data from its ESP (source `install`); one byte of it changed on
//!   the ESP, the host refuses it by name and boots with the image's configuration.
//!
//! The ISO is the one `cargo xtask test` built (every output format). Its format is
//! checked by xorriso's own report and `sgdisk -v`, its El Torito image by `fsck.fat`.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use crust_builder::build::outputs;
use crust_format::phase::Phase;
use crust_tests::{boot_timeout, built_image, flip_byte, run_ok};
use crust_vm::firmware::Firmware;
use crust_vm::{Config, Vm};

/// One machine at a time (two cores).
static BOOTS: Mutex<()> = Mutex::new(());

/// The installer's console lines start with this.
const WHO: &str = "crust-install:";

fn iso_path() -> PathBuf {
    built_image().dir.join("installer.iso")
}

/// A sparse empty disk as large as the image plus `extra` bytes.
fn empty_disk(dir: &Path, name: &str, extra: u64) -> PathBuf {
    let len = std::fs::metadata(built_image().image).unwrap().len();
    let path = dir.join(name);
    File::create(&path).unwrap().set_len(len + extra).unwrap();
    path
}

/// Starts the installer from `iso` with `disks` (the first is the machine's first disk).
fn start(dir: &Path, iso: &Path, disks: &[PathBuf], reboot: bool, log: &str) -> Vm {
    let img = built_image();
    let accel = crust_vm::accel::detect(&img.dir.join(outputs::KERNEL), &img.dir).unwrap();
    let firmware = Firmware::with_vars(&dir.join("efivars.fd")).unwrap();
    let mut config = Config::new(&disks[0], accel, firmware);
    config.cdrom = Some(iso.to_path_buf());
    config.data_drives = crust_vm::DataDrive::numbered(&disks[1..]);
    config.qmp_socket = Some(dir.join("qmp.sock"));
    config.no_reboot = !reboot;
    Vm::start(&config, Some(&dir.join(log)), true).expect("start QEMU")
}

fn timeout() -> Duration {
    let img = built_image();
    let accel = crust_vm::accel::detect(&img.dir.join(outputs::KERNEL), &img.dir).unwrap();
    boot_timeout(accel) * 3
}

/// Waits for the installer's refusal and the power-off that follows; returns the line.
fn refused(vm: &mut Vm) -> String {
    let line = vm
        .wait_for_text(&format!("{WHO} refused:"), timeout())
        .unwrap_or_else(|e| panic!("{e}"));
    let status = vm
        .wait_exit(Duration::from_secs(120))
        .expect("the installer powers off after a refusal");
    assert!(status.success(), "QEMU exited with {status}");
    line
}

/// The disk file holds no data at all: nothing was ever written to it.
fn untouched(disk: &Path) {
    let file = File::open(disk).unwrap();
    let regions = crust_builder::sparse::data_regions(&file).unwrap();
    assert!(
        regions.is_empty(),
        "{} was written: data at {regions:?}",
        disk.display()
    );
}

fn sha256(path: &Path) -> String {
    let out = run_ok(Command::new("sha256sum").arg(path));
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

#[test]
#[ignore = "needs the ISO built by `cargo xtask test`"]
fn the_iso_is_hybrid_with_an_efi_el_torito_image() {
    let iso = iso_path();
    let out = run_ok(Command::new("xorriso").arg("-indev").arg(&iso).args([
        "-report_el_torito",
        "plain",
        "-report_system_area",
        "plain",
    ]));
    // xorriso prints its reports among its messages, on standard error.
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        report.contains("Volume id    : 'CRUST-INSTALL'"),
        "{report}"
    );
    assert!(
        report
            .lines()
            .any(|l| l.starts_with("El Torito boot img") && l.contains("UEFI")),
        "{report}"
    );
    assert!(report.contains("GPT"), "{report}");
    // The GPT's partition 2 is the El Torito FAT image: an ESP fsck.fat finds clean, with
    // the installer UKI where firmware looks on removable media.
    let out = run_ok(Command::new("sgdisk").arg("-v").arg(&iso));
    let verify = String::from_utf8_lossy(&out.stdout);
    assert!(verify.contains("No problems found"), "{verify}");
    let out = run_ok(Command::new("sgdisk").args(["-i", "2"]).arg(&iso));
    let info = String::from_utf8_lossy(&out.stdout);
    assert!(
        info.contains("C12A7328-F81F-11D2-BA4B-00A0C93EC93B"),
        "{info}"
    );
    let field = |name: &str| -> u64 {
        info.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {info}"))
    };
    let (first, last) = (field("First sector: "), field("Last sector: "));
    let scratch = tempfile::tempdir().unwrap();
    let efi = scratch.path().join("efiboot.img");
    run_ok(
        Command::new("dd")
            .arg(format!("if={}", iso.display()))
            .arg(format!("of={}", efi.display()))
            .arg(format!("skip={first}"))
            .arg(format!("count={}", last - first + 1))
            .arg("status=none"),
    );
    run_ok(Command::new("fsck.fat").arg("-n").arg(&efi));
    let out = run_ok(
        Command::new("mdir")
            .args(["-b", "-i"])
            .arg(&efi)
            .arg("::/EFI/BOOT"),
    );
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(listing.contains("BOOTX64.EFI"), "{listing}");
    let uki = scratch.path().join("bootx64.efi");
    run_ok(
        Command::new("mcopy")
            .arg("-i")
            .arg(&efi)
            .arg("::/EFI/BOOT/BOOTX64.EFI")
            .arg(&uki),
    );
    assert_eq!(
        sha256(&uki),
        sha256(&built_image().dir.join("installer.efi"))
    );
    // The medium's list is signed by the image's key, as the release's is.
    let medium = scratch.path().join("medium");
    run_ok(
        Command::new("xorriso")
            .arg("-osirrox")
            .arg("on")
            .arg("-indev")
            .arg(&iso)
            .arg("-extract")
            .arg("/crust")
            .arg(&medium),
    );
    let sums = std::fs::read_to_string(medium.join("SHA256SUMS")).unwrap();
    for name in ["image.raw", "image.raw.zst"] {
        assert!(sums.contains(&format!("  {name}\n")), "{sums}");
    }
    let raw_line = sums.lines().find(|l| l.ends_with("  image.raw")).unwrap();
    assert!(raw_line.starts_with(&sha256(&built_image().image)));
    // sha256sum checks the compressed image the list names.
    let zst_only: String = sums
        .lines()
        .filter(|l| !l.ends_with("  image.raw"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(scratch.path().join("zst.sums"), zst_only).unwrap();
    run_ok(
        Command::new("sha256sum")
            .args(["--check", "--strict"])
            .arg(scratch.path().join("zst.sums"))
            .current_dir(&medium),
    );
    let public = built_image()
        .dir
        .parent()
        .unwrap()
        .join("keys/development.pub");
    run_ok(
        Command::new("openssl")
            .args(["pkeyutl", "-verify", "-pubin", "-rawin", "-inkey"])
            .arg(&public)
            .arg("-in")
            .arg(medium.join("SHA256SUMS"))
            .arg("-sigfile")
            .arg(medium.join("SHA256SUMS.sig")),
    );
}

#[test]
#[ignore = "boots QEMU; run through `cargo xtask test`"]
fn the_iso_installs_onto_the_empty_disk_which_then_boots() {
    let _one = BOOTS.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let disk = empty_disk(dir.path(), "disk.raw", 1 << 30);
    let mut vm = start(
        dir.path(),
        &iso_path(),
        std::slice::from_ref(&disk),
        true,
        "install.log",
    );
    let installed = vm
        .wait_for_text(&format!("{WHO} installed on"), timeout())
        .unwrap_or_else(|e| panic!("{e}"));
    let installed_at = vm.elapsed();
    assert!(installed.contains("/dev/vda"), "{installed}");
    let history = vm.console().history().join("\n");
    assert!(history.contains("read back and compared"), "{history}");
    assert!(
        history.contains("added, first in BootOrder and BootNext"),
        "{history}"
    );
    // The reboot: the firmware's BootNext names the new disk, though the CD comes first.
    let disk_line = vm
        .wait_for_phase(Phase::Disk, timeout())
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(disk_line.detail.contains("vda"), "{}", disk_line.detail);
    let state = vm
        .wait_for_phase(Phase::State, timeout())
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(state.detail.contains("grown"), "{}", state.detail);
    vm.wait_for_phase(Phase::Ready, timeout())
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "installer: from power-on to ready on the installed disk in {:.1} s ({:.1} s to \
         installed)",
        vm.elapsed().as_secs_f64(),
        installed_at.as_secs_f64()
    );
    vm.qmp().unwrap().system_powerdown().unwrap();
    vm.wait_for_phase(Phase::PowerOff, Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e}"));
    vm.wait_exit(Duration::from_secs(60)).unwrap();

    let out = run_ok(Command::new("sgdisk").arg("-v").arg(&disk));
    let verify = String::from_utf8_lossy(&out.stdout);
    assert!(verify.contains("No problems found"), "{verify}");
}

#[test]
#[ignore = "boots QEMU; run through `cargo xtask test`"]
fn two_empty_disks_are_refused_and_left_alone() {
    let _one = BOOTS.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let disks = [
        empty_disk(dir.path(), "a.raw", 0),
        empty_disk(dir.path(), "b.raw", 0),
    ];
    let mut vm = start(dir.path(), &iso_path(), &disks, false, "two.log");
    let line = refused(&mut vm);
    assert!(
        line.contains("disk = \"auto\"") && line.contains("vda, vdb"),
        "{line}"
    );
    let history = vm.console().history().join("\n");
    assert!(history.contains("refusing: /dev/vda"), "{history}");
    assert!(
        history.contains("refusing: /dev/vdb: model -, serial crust-disk1"),
        "{history}"
    );
    for disk in &disks {
        untouched(disk);
    }
}

#[test]
#[ignore = "boots QEMU; run through `cargo xtask test`"]
fn a_disk_with_a_file_system_is_refused_and_kept() {
    let _one = BOOTS.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let disk = empty_disk(dir.path(), "ext4.raw", 0);
    run_ok(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "data"])
            .arg(&disk),
    );
    let before = sha256(&disk);
    // A NoCloud seed beside the ISO (which carries no user-data) names that disk without
    // `wipe`: the seed's [install] decides, and the seed itself is never a candidate.
    let seed = dir.path().join("seed.img");
    crust_vm::seed::write(
        b"version = 1\nhostname = \"seeded\"\n\n[install]\ndisk = \"/dev/vda\"\n",
        &seed,
    )
    .unwrap();
    let seed_before = sha256(&seed);
    let mut vm = start(
        dir.path(),
        &iso_path(),
        &[disk.clone(), seed.clone()],
        false,
        "ext4.log",
    );
    let line = refused(&mut vm);
    assert!(
        line.contains("disk = \"/dev/vda\" is /dev/vda and holds ext2/3/4")
            && line.contains("set wipe = true"),
        "{line}"
    );
    let history = vm.console().history().join("\n");
    assert!(
        history.contains("(from the NoCloud seed /dev/vdb, its [install] table only)"),
        "{history}"
    );
    assert!(
        history.contains("holds ext2/3/4 (found by its signature)"),
        "{history}"
    );
    assert!(!history.contains("refusing: /dev/vdb"), "{history}");
    assert_eq!(sha256(&disk), before, "the ext4 disk changed");
    assert_eq!(sha256(&seed), seed_before, "the seed changed");
    run_ok(Command::new("e2fsck").arg("-fn").arg(&disk));
}

#[test]
#[ignore = "boots QEMU; run through `cargo xtask test`"]
fn a_changed_byte_of_the_carried_image_is_refused_before_writing() {
    let _one = BOOTS.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let iso = dir.path().join("tampered.iso");
    std::fs::copy(iso_path(), &iso).unwrap();
    // Where image.raw.zst lies in the ISO: its first 64 KiB found in the ISO's bytes.
    let zst = built_image().dir.join("image.raw.zst");
    let zst_len = std::fs::metadata(&zst).unwrap().len();
    let mut head = vec![0u8; 64 << 10];
    File::open(&zst).unwrap().read_exact(&mut head).unwrap();
    let offset = find(&iso, &head).expect("image.raw.zst inside the ISO");
    flip_byte(&iso, offset + zst_len / 2);
    let disk = empty_disk(dir.path(), "disk.raw", 0);
    let mut vm = start(
        dir.path(),
        &iso,
        std::slice::from_ref(&disk),
        false,
        "tampered.log",
    );
    let line = refused(&mut vm);
    assert!(
        line.contains("image.raw.zst does not match the signed list"),
        "{line}"
    );
    untouched(&disk);
}

/// The offset of `needle` in `file`, looking at 2048-byte boundaries (ISO 9660 blocks).
fn find(file: &Path, needle: &[u8]) -> Option<u64> {
    let mut f = File::open(file).ok()?;
    let len = f.metadata().ok()?.len();
    let mut buf = vec![0u8; needle.len()];
    let mut at = 0;
    while at + needle.len() as u64 <= len {
        f.seek(SeekFrom::Start(at)).ok()?;
        f.read_exact(&mut buf).ok()?;
        if buf == needle {
            return Some(at);
        }
        at += 2048;
    }
    None
}

#[test]
#[ignore = "boots QEMU; run through `cargo xtask test`"]
fn the_media_user_data_names_the_disk_and_wipe_is_needed_for_data() {
    let _one = BOOTS.lock().unwrap_or_else(|e| e.into_inner());
    let img = built_image();
    let dir = tempfile::tempdir().unwrap();
    // An ISO carrying user-data that names the second disk by its serial number.
    let user_data = dir.path().join("install.toml");
    std::fs::write(
        &user_data,
        "version = 1\n\n[install]\ndisk = \"crust-disk1\"\n",
    )
    .unwrap();
    let key = crust_builder::sign::SigningKey::development(&img.dir.parent().unwrap().join("keys"))
        .unwrap();
    let iso = dir.path().join("user-data.iso");
    let stamp = crust_builder::formats::Stamp {
        build_id: img.manifest.build_id,
        epoch: 0,
    };
    crust_builder::installer::iso(&img.image, &img.dir, &iso, &key, &stamp, Some(&user_data))
        .expect("the ISO with user-data");
    // The named disk holds ext4; the other is empty (and would be "auto"'s choice).
    let disks = [
        empty_disk(dir.path(), "empty.raw", 0),
        empty_disk(dir.path(), "data.raw", 0),
    ];
    run_ok(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&disks[1]));
    let before = sha256(&disks[1]);
    let mut vm = start(dir.path(), &iso, &disks, false, "user-data.log");
    let line = refused(&mut vm);
    assert!(
        line.contains("disk = \"crust-disk1\" is /dev/vdb") && line.contains("wipe = true"),
        "{line}"
    );
    let history = vm.console().history().join("\n");
    assert!(
        history.contains("from the medium's signed user-data"),
        "{history}"
    );
    untouched(&disks[0]);
    assert_eq!(sha256(&disks[1]), before, "the named disk changed");
    drop(vm);

    // With `wipe = true` the named disk is written, and the installed host takes the
    // medium's user-data (here its host name) from the ESP, under the ISO's signed list.
    // The ext4 disk is QEMU's first disk now: OVMF connects only the devices in QEMU's
    // boot order, so the installed disk must be in it for `BootNext` to reach it.
    std::fs::write(
        &user_data,
        "version = 1\nhostname = \"from-the-iso\"\n\n[install]\ndisk = \"/dev/vda\"\nwipe = true\n",
    )
    .unwrap();
    let iso = dir.path().join("wipe.iso");
    crust_builder::installer::iso(&img.image, &img.dir, &iso, &key, &stamp, Some(&user_data))
        .expect("the ISO with user-data");
    let _ = std::fs::remove_file(dir.path().join("qmp.sock"));
    let reordered = [disks[1].clone(), disks[0].clone()];
    let mut vm = start(dir.path(), &iso, &reordered, true, "wipe.log");
    let copied = vm
        .wait_for_text(
            &format!("{WHO} the medium's user-data and its signed list copied to /dev/vda1"),
            timeout(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(copied.contains(":/EFI/crust/install"), "{copied}");
    let config = vm
        .wait_for_phase(Phase::Config, timeout())
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        config.detail.starts_with(
            "from installer's user-data /dev/vda1:/EFI/crust/install: hostname from-the-iso"
        ),
        "{}",
        config.detail
    );
    vm.wait_for_phase(Phase::Ready, timeout())
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "installer: installed with the ISO's user-data and ready in {:.1} s",
        vm.elapsed().as_secs_f64()
    );
    vm.qmp().unwrap().system_powerdown().unwrap();
    vm.wait_for_phase(Phase::PowerOff, Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e}"));
    vm.wait_exit(Duration::from_secs(60)).unwrap();
    drop(vm);
    untouched(&disks[0]);

    // One changed byte of the user-data on the installed ESP: the host names the file and
    // boots with the image's configuration.
    let esp = esp_image(&disks[1]);
    let on_esp = run_ok(Command::new("mtype").arg("-i").arg(&esp).arg(ESP_USER_DATA)).stdout;
    assert!(
        String::from_utf8_lossy(&on_esp).contains("from-the-iso"),
        "{on_esp:?}"
    );
    let mut changed = on_esp.clone();
    let at = changed.iter().position(|&b| b == b'f').unwrap();
    changed[at] = b'F';
    let changed_file = dir.path().join("changed-user-data");
    std::fs::write(&changed_file, &changed).unwrap();
    run_ok(
        Command::new("mcopy")
            .args(["-o", "-i"])
            .arg(&esp)
            .arg(&changed_file)
            .arg(ESP_USER_DATA),
    );
    // The installed disk alone (with the CD attached QEMU's boot order starts the installer).
    let accel = crust_vm::accel::detect(&img.dir.join(outputs::KERNEL), &img.dir).unwrap();
    let firmware = Firmware::with_vars(&dir.path().join("efivars-disk.fd")).unwrap();
    let mut vm = Vm::start(
        &Config::new(&disks[1], accel, firmware),
        Some(&dir.path().join("changed.log")),
        true,
    )
    .expect("start QEMU");
    let refused = vm
        .wait_for_text(
            "config: user-data from installer's user-data /dev/vda1:/EFI/crust/install refused:",
            timeout(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        refused.contains("EFI/crust/install/user-data does not match the signed list")
            // The qemu image has no default user-data of its own.
            && refused.contains("; booting with the built-in defaults instead"),
        "{refused}"
    );
    let config = vm
        .wait_for_phase(Phase::Config, timeout())
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        config.detail.starts_with(
            "user-data from installer's user-data /dev/vda1:/EFI/crust/install refused"
        ) && !config.detail.contains("from-the-iso"),
        "{}",
        config.detail
    );
}

/// The user-data the installer leaves on the ESP, as mtools names it.
const ESP_USER_DATA: &str = "::EFI/crust/install/user-data";

/// `DISK@@OFFSET`: the installed disk's ESP (partition 1) for mtools' `-i`.
fn esp_image(disk: &Path) -> String {
    let out = run_ok(Command::new("sgdisk").args(["-i", "1"]).arg(disk));
    let info = String::from_utf8_lossy(&out.stdout);
    let first: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("First sector: "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no ESP in {}: {info}", disk.display()));
    format!("{}@@{}", disk.display(), first * 512)
}
