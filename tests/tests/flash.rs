//! Flashing (`crust_flash`, the library behind `cargo xtask flash`): a used disk larger
//! than the image boots and grows `/var`; a loop device is written through the block-device
//! path (exclusive open, direct I/O, partition re-read); and every refusal (a tampered or
//! unsigned image, a wrong key, a mounted disk, the running system's disk, a partition, a
//! file without `--allow-file`, a disk too small) comes before a single byte is written.
//! The tests with loop devices need root, as flashing does; `cargo xtask test` runs as root.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crust_builder::release::{ReleaseError, SUMS, SUMS_SIG};
use crust_builder::sign::SigningKey;
use crust_flash::{FlashError, Flashed, Request, prepare};
use crust_format::phase::Phase;
use crust_format::signature::PublicKey;
use crust_tests::{
    BootOptions, BuiltImage, Disk, boot_timeout, built_image, extract, flip_byte, partition,
    partitions, run_ok,
};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

fn key(img: &BuiltImage) -> PublicKey {
    crust_builder::release::read_public_key(&img.dir.join("../keys/development.pub"))
        .expect("the development key the test image is signed with")
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn image_len(img: &BuiltImage) -> u64 {
    std::fs::metadata(&img.image).expect("image").len()
}

/// Copies the image and its signed release (sparse) into `dir`; returns the image copy.
fn release_copy(img: &BuiltImage, dir: &Path) -> PathBuf {
    let image = dir.join("image.raw");
    run_ok(
        Command::new("cp")
            .arg("--sparse=always")
            .arg(&img.image)
            .arg(&image),
    );
    for name in [SUMS, SUMS_SIG] {
        std::fs::copy(img.dir.join(name), dir.join(name)).expect("copy release file");
    }
    image
}

fn flash(image: &Path, device: &Path, key: &PublicKey, allow_file: bool) -> Flashed {
    let plan = prepare(&Request {
        image,
        device,
        key,
        allow_file,
    })
    .unwrap_or_else(|e| panic!("flash refused: {e}"));
    plan.write().unwrap_or_else(|e| panic!("flash failed: {e}"))
}

fn refusal(image: &Path, device: &Path, key: &PublicKey, allow_file: bool) -> FlashError {
    match prepare(&Request {
        image,
        device,
        key,
        allow_file,
    }) {
        Ok(plan) => panic!("{} was accepted: {}", device.display(), plan.summary()),
        Err(e) => e,
    }
}

/// A sparse file of `len` bytes, nothing allocated: any write would allocate blocks.
fn untouched_file(path: &Path, len: u64) {
    std::fs::File::create(path)
        .and_then(|f| f.set_len(len))
        .expect("target file");
}

fn assert_untouched(path: &Path, len: u64) {
    let meta = std::fs::metadata(path).expect("target");
    assert_eq!(meta.len(), len, "{} changed size", path.display());
    assert_eq!(meta.blocks(), 0, "{} was written to", path.display());
}

fn sgdisk_clean(disk: &Path) {
    let out = run_ok(Command::new("sgdisk").arg("-v").arg(disk));
    let verify = String::from_utf8_lossy(&out.stdout);
    assert!(verify.contains("No problems found"), "{verify}");
}

fn same_partitions(a: &Path, b: &Path) {
    let strip = |disk: &Path| -> Vec<(String, u64, u64, String)> {
        partitions(disk)
            .into_iter()
            .map(|p| (p.name, p.offset, p.size, p.uuid))
            .collect()
    };
    assert_eq!(strip(a), strip(b));
}

#[test]
#[ignore = "boots QEMU; run through `cargo xtask test`"]
fn a_flashed_used_disk_boots_and_grows_var() {
    let img = built_image();
    let scratch = tempfile::tempdir().expect("scratch");
    let len = image_len(&img);
    // A used disk 1 GiB larger than the image: where the image has holes, old bytes stay.
    let target = scratch.path().join("disk.raw");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&target).expect("target");
        let junk = vec![0xa5u8; 4 * MIB as usize];
        for _ in 0..len / (4 * MIB) {
            f.write_all(&junk).expect("fill");
        }
        f.set_len(len + GIB).expect("size");
    }
    let flashed = flash(&img.image, &target, &key(&img), true);
    let sectors = (len + GIB) / 512;
    let moved = flashed.backup_gpt.expect("the backup GPT moved");
    assert_eq!((moved.from_lba, moved.to_lba), (len / 512 - 1, sectors - 1));
    assert!(
        flashed.written < 256 * MIB,
        "only data regions are written, not {} bytes",
        flashed.written
    );
    sgdisk_clean(&target);
    same_partitions(&target, &img.image);
    // The ESP does not depend on the disk reading as zeros where the image has holes.
    let esp = partition(&target, "esp");
    let esp_file = scratch.path().join("esp.img");
    extract(&target, &esp, &esp_file, None);
    run_ok(Command::new("fsck.fat").arg("-n").arg(&esp_file));
    std::fs::remove_file(&esp_file).ok();

    let mut disk = Disk::over(&target, &img.dir);
    let mut vm = disk.boot(BootOptions::default());
    let timeout = boot_timeout(vm.accel);
    let state = vm
        .vm
        .wait_for_phase(Phase::State, timeout)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(state.detail.contains("grown from"), "{}", state.detail);
    vm.vm
        .wait_for_phase(Phase::Ready, timeout)
        .unwrap_or_else(|e| panic!("{e}"));
    vm.power_off();
}

#[test]
#[ignore = "needs the built image; run through `cargo xtask test`"]
fn bad_images_keys_and_targets_are_refused_before_a_byte_is_written() {
    let img = built_image();
    let key = key(&img);
    let scratch = tempfile::tempdir().expect("scratch");
    let dir = scratch.path().join("release");
    std::fs::create_dir(&dir).expect("mkdir");
    let image = release_copy(&img, &dir);
    let len = image_len(&img);
    let target = scratch.path().join("disk.raw");
    untouched_file(&target, len + GIB);

    // One byte of the root file system changed after signing.
    let at = partition(&image, "root-a").offset + 4096;
    flip_byte(&image, at);
    let err = refusal(&image, &target, &key, true);
    assert!(
        matches!(err, FlashError::Release(ReleaseError::Mismatch { .. })),
        "{err}"
    );
    assert_untouched(&target, len + GIB);
    flip_byte(&image, at);

    // A changed list, a foreign key, no signature at all.
    let sums = std::fs::read_to_string(dir.join(SUMS)).expect("sums");
    let forged: String = sums
        .lines()
        .map(|l| match l.strip_suffix("  image.raw") {
            Some(digest) => {
                let other = if digest.starts_with('0') { "1" } else { "0" };
                format!("{other}{}  image.raw\n", &digest[1..])
            }
            None => format!("{l}\n"),
        })
        .collect();
    std::fs::write(dir.join(SUMS), forged).expect("forge");
    let err = refusal(&image, &target, &key, true);
    assert!(
        matches!(err, FlashError::Release(ReleaseError::BadSignature { .. })),
        "{err}"
    );
    std::fs::write(dir.join(SUMS), &sums).expect("restore");
    let stranger = SigningKey::development(&scratch.path().join("stranger"))
        .expect("key")
        .public_key();
    let err = refusal(&image, &target, &stranger, true);
    assert!(
        matches!(err, FlashError::Release(ReleaseError::BadSignature { .. })),
        "{err}"
    );
    std::fs::rename(dir.join(SUMS_SIG), dir.join("moved.sig")).expect("move");
    let err = refusal(&image, &target, &key, true);
    assert!(
        matches!(err, FlashError::Release(ReleaseError::Unsigned { .. })),
        "{err}"
    );
    std::fs::rename(dir.join("moved.sig"), dir.join(SUMS_SIG)).expect("move back");
    assert_untouched(&target, len + GIB);

    // A signed file of the release that is not a raw disk.
    let zst = dir.join("image.raw.zst");
    std::fs::copy(img.dir.join("image.raw.zst"), &zst).expect("copy image.raw.zst");
    let err = refusal(&zst, &target, &key, true);
    assert!(matches!(err, FlashError::BadImage { .. }), "{err}");
    assert_untouched(&target, len + GIB);

    // Targets: a file without --allow-file, a disk too small, the image itself.
    let err = refusal(&image, &target, &key, false);
    assert!(matches!(err, FlashError::NotBlockDevice { .. }), "{err}");
    assert!(err.to_string().contains("--allow-file"), "{err}");
    let small = scratch.path().join("small.raw");
    untouched_file(&small, len - MIB);
    let err = refusal(&image, &small, &key, true);
    assert!(matches!(err, FlashError::TooSmall { .. }), "{err}");
    assert_untouched(&small, len - MIB);
    let err = refusal(&image, &image, &key, true);
    assert!(matches!(err, FlashError::SameAsImage { .. }), "{err}");
    let err = refusal(&image, Path::new("/dev/null"), &key, true);
    assert!(matches!(err, FlashError::NotBlockDevice { .. }), "{err}");
    assert_untouched(&target, len + GIB);

    // The untampered image goes through.
    prepare(&Request {
        image: &image,
        device: &target,
        key: &key,
        allow_file: true,
    })
    .expect("the intact release is accepted");
}

/// A loop device over a file, detached (and unmounted) when dropped.
struct Loop {
    device: PathBuf,
    mountpoint: Option<PathBuf>,
}

impl Loop {
    fn attach(file: &Path, partitions: bool) -> Self {
        let mut cmd = Command::new("losetup");
        cmd.args(["--find", "--show"]);
        if partitions {
            cmd.arg("--partscan");
        }
        let out = run_ok(cmd.arg(file));
        let device = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        Self {
            device,
            mountpoint: None,
        }
    }

    fn mount(&mut self, at: &Path) {
        // Read-only: the file system itself writes nothing, so any change is the flash's.
        run_ok(
            Command::new("mount")
                .args(["-o", "ro"])
                .arg(&self.device)
                .arg(at),
        );
        self.mountpoint = Some(at.to_path_buf());
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        if let Some(m) = self.mountpoint.take() {
            let _ = Command::new("umount").arg(m).status();
        }
        let _ = Command::new("losetup").arg("-d").arg(&self.device).status();
    }
}

fn sha256(path: &Path) -> String {
    let out = run_ok(Command::new("sha256sum").arg(path));
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// The whole disk `/` is mounted from, if it is a plain disk or partition.
fn root_disk() -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let devt = mountinfo
        .lines()
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .find(|f| f.get(4) == Some(&"/"))?
        .get(2)?
        .to_string();
    let mut sysfs = PathBuf::from("/sys/dev/block")
        .join(devt)
        .canonicalize()
        .ok()?;
    if sysfs.join("partition").exists() {
        sysfs = sysfs.parent()?.to_path_buf();
    }
    let name = sysfs.file_name()?.to_string_lossy().into_owned();
    let device = PathBuf::from("/dev").join(name);
    device.exists().then_some(device)
}

#[test]
#[ignore = "needs root and the built image; run through `cargo xtask test`"]
fn mounted_system_and_partition_targets_are_refused() {
    if !is_root() {
        eprintln!("SKIPPED: loop devices and mounts need root");
        return;
    }
    let img = built_image();
    let key = key(&img);
    let scratch = tempfile::tempdir().expect("scratch");

    if let Some(disk) = root_disk() {
        let err = refusal(&img.image, &disk, &key, false);
        assert!(
            matches!(err, FlashError::RunningSystem { .. }),
            "{}: {err}",
            disk.display()
        );
    } else {
        eprintln!("/ is not on a plain disk here; the running-system check is not exercised");
    }

    // A mounted file system.
    let fs = scratch.path().join("fs.img");
    untouched_file(&fs, 64 * MIB);
    run_ok(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&fs));
    let mut lo = Loop::attach(&fs, false);
    let mnt = scratch.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    lo.mount(&mnt);
    let before = sha256(&fs);
    let err = refusal(&img.image, &lo.device, &key, false);
    match &err {
        FlashError::Mounted { mountpoint, .. } => {
            assert_eq!(Path::new(mountpoint), mnt.canonicalize().expect("mnt"))
        }
        other => panic!("{}: {other}", lo.device.display()),
    }
    // The file behind a loop device is in use too.
    let err = refusal(&img.image, &fs, &key, true);
    assert!(matches!(err, FlashError::Held { .. }), "{err}");
    drop(lo);
    assert_eq!(sha256(&fs), before, "the mounted disk was written to");

    // A partition rather than a disk.
    let gpt = scratch.path().join("gpt.img");
    untouched_file(&gpt, 64 * MIB);
    run_ok(Command::new("sgdisk").args(["-n", "1:1M:+16M"]).arg(&gpt));
    let lo = Loop::attach(&gpt, true);
    // Kernels without the EFI partition parser leave the partition to user space.
    let _ = Command::new("partx").arg("--add").arg(&lo.device).status();
    let part = PathBuf::from(format!("{}p1", lo.device.display()));
    let waited = std::time::Instant::now();
    while !part.exists() && waited.elapsed().as_secs() < 10 {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let err = refusal(&img.image, &part, &key, false);
    assert!(matches!(err, FlashError::Partition { .. }), "{err}");
}

#[test]
#[ignore = "needs root and the built image; run through `cargo xtask test`"]
fn a_loop_device_is_flashed_exclusively_and_reads_back() {
    if !is_root() {
        eprintln!("SKIPPED: loop devices need root");
        return;
    }
    let img = built_image();
    let key = key(&img);
    let scratch = tempfile::tempdir().expect("scratch");
    let len = image_len(&img);
    let backing = scratch.path().join("disk.raw");
    untouched_file(&backing, len + 256 * MIB);
    let lo = Loop::attach(&backing, true);

    let plan = prepare(&Request {
        image: &img.image,
        device: &lo.device,
        key: &key,
        allow_file: false,
    })
    .unwrap_or_else(|e| panic!("{e}"));
    // The plan holds the disk exclusively: a second flash cannot open it meanwhile.
    let err = refusal(&img.image, &lo.device, &key, false);
    assert!(matches!(err, FlashError::Busy { .. }), "{err}");
    let flashed = plan.write().unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "flashed {} bytes to {} in {:.2} s, read back in {:.2} s",
        flashed.written,
        lo.device.display(),
        flashed.write_time.as_secs_f64(),
        flashed.verify_time.as_secs_f64()
    );
    assert!(flashed.backup_gpt.is_some());
    assert!(flashed.partitions_reread, "BLKRRPART on the loop device");
    sgdisk_clean(&lo.device);
    same_partitions(&lo.device, &img.image);
    // The ESP as a file (this kernel may lack the EFI partition parser, so no /dev/loopNp1).
    let esp = partition(&lo.device, "esp");
    let esp_file = scratch.path().join("esp.img");
    extract(&lo.device, &esp, &esp_file, None);
    let out = run_ok(
        Command::new("blkid")
            .args(["-o", "value", "-s", "LABEL"])
            .arg(&esp_file),
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "CRUST-ESP");
    run_ok(Command::new("fsck.fat").arg("-n").arg(&esp_file));
}
