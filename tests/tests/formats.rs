//! The output formats and the signed release of the built image (`cargo xtask test` builds
//! it in every format), checked by independent tools: `qemu-img check`, `info` and
//! `compare` for qcow2, VMDK and VHD, the zstd and GNU tar command lines for `raw.zst` and
//! the GCE archive, `sha256sum -c` and `openssl pkeyutl` for the release; every format made
//! again gives the same bytes; and the qcow2 file boots.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crust_builder::formats::{self, Stamp};
use crust_builder::profile::{OutputFormat, Profile};
use crust_builder::release::{self, SUMS, SUMS_SIG};
use crust_builder::sign::SigningKey;
use crust_format::phase::Phase;
use crust_tests::{BootOptions, BuiltImage, Disk, boot_timeout, built_image, partitions, run_ok};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

fn path_of(img: &BuiltImage, format: OutputFormat) -> PathBuf {
    img.dir.join(format.file_name())
}

fn text(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The development key's public half, beside the output folders (`target/crust/keys`).
fn public_key_file(img: &BuiltImage) -> PathBuf {
    img.dir.join("../keys/development.pub")
}

/// `qemu-img info --output=json` of a file in `format`.
fn info(path: &Path, format: &str) -> serde_json::Value {
    let out = run_ok(
        Command::new("qemu-img")
            .args(["info", "--output=json", "-f", format])
            .arg(path),
    );
    serde_json::from_slice(&out.stdout).expect("qemu-img info JSON")
}

#[test]
#[ignore = "needs the built image; run through `cargo xtask test`"]
fn the_release_is_signed_and_lists_every_format() {
    let img = built_image();
    // sha256sum checks every digest; OpenSSL checks the Ed25519 signature over the list.
    let out = run_ok(
        Command::new("sha256sum")
            .args(["--check", "--strict", SUMS])
            .current_dir(&img.dir),
    );
    let checked = text(&out);
    for name in OutputFormat::ALL.iter().flat_map(|f| f.file_names()) {
        assert!(checked.contains(&format!("{name}: OK")), "{checked}");
    }
    for name in [
        "manifest: OK",
        "manifest.sig: OK",
        "sbom.spdx.json: OK",
        "sbom.cdx.json: OK",
    ] {
        assert!(checked.contains(name), "{checked}");
    }
    run_ok(
        Command::new("openssl")
            .args(["pkeyutl", "-verify", "-pubin", "-rawin", "-inkey"])
            .arg(public_key_file(&img))
            .arg("-in")
            .arg(img.dir.join(SUMS))
            .arg("-sigfile")
            .arg(img.dir.join(SUMS_SIG)),
    );
    let key = release::read_public_key(&public_key_file(&img)).expect("key");
    let sums = release::verify(&img.dir, &key).expect("the release verifies");
    // The formats, the manifest and its signature, and the two SBOMs.
    let mut files: Vec<&str> = OutputFormat::ALL
        .iter()
        .flat_map(|f| f.file_names())
        .copied()
        .collect();
    files.sort_unstable();
    files.dedup();
    assert_eq!(sums.len(), files.len() + 4);
}

#[test]
#[ignore = "needs the built image; run through `cargo xtask test`"]
fn qcow2_vmdk_and_vhd_pass_qemu_img_and_hold_the_image() {
    let img = built_image();
    let raw_len = std::fs::metadata(&img.image).expect("image").len();
    for (format, driver) in [
        (OutputFormat::Qcow2, "qcow2"),
        (OutputFormat::Vmdk, "vmdk"),
        (OutputFormat::Vhd, "vpc"),
    ] {
        let path = path_of(&img, format);
        let info = info(&path, driver);
        assert_eq!(info["format"], driver, "{info}");
        assert_eq!(info["virtual-size"], raw_len, "{format}: {info}");
        // qemu-img has no consistency check for VHD; opening it checks the footer's
        // checksum (`info` above fails on a bad one).
        if format != OutputFormat::Vhd {
            let out = run_ok(
                Command::new("qemu-img")
                    .args(["check", "-f", driver])
                    .arg(&path),
            );
            assert!(
                text(&out).contains("No errors were found"),
                "{}",
                text(&out)
            );
        }
        let out = run_ok(
            Command::new("qemu-img")
                .args(["compare", "-f", "raw", "-F", driver])
                .arg(&img.image)
                .arg(&path),
        );
        assert!(
            text(&out).contains("Images are identical"),
            "{format}: {}",
            text(&out)
        );
    }

    let vmdk = std::fs::read(path_of(&img, OutputFormat::Vmdk)).expect("vmdk");
    let descriptor = String::from_utf8_lossy(&vmdk[512..512 + 20 * 512]);
    assert!(
        descriptor.contains("createType=\"streamOptimized\""),
        "{descriptor}"
    );
    let cid = hex_of(&img.manifest.build_id.0[..4]);
    assert!(descriptor.contains(&format!("CID={cid}\n")), "{descriptor}");

    // Azure: a fixed VHD is the raw disk, a whole number of MiB, then a 512-byte footer.
    let vhd = path_of(&img, OutputFormat::Vhd);
    assert_eq!(raw_len % MIB, 0);
    assert_eq!(std::fs::metadata(&vhd).expect("vhd").len(), raw_len + 512);
    let mut footer = [0u8; 512];
    let mut f = std::fs::File::open(&vhd).expect("vhd");
    std::io::Seek::seek(&mut f, std::io::SeekFrom::End(-512)).expect("seek");
    f.read_exact(&mut footer).expect("footer");
    assert_eq!(&footer[..8], b"conectix");
    assert_eq!(footer[60..64], 2u32.to_be_bytes(), "disk type fixed");
    assert_eq!(footer[48..56], raw_len.to_be_bytes(), "current size");
    assert_eq!(
        u64::from(u32::from_be_bytes(footer[24..28].try_into().unwrap())),
        epoch() - 946_684_800,
        "the time stamp is SOURCE_DATE_EPOCH"
    );
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The image's digest in the release.
fn raw_digest(img: &BuiltImage) -> String {
    let sums = std::fs::read_to_string(img.dir.join(SUMS)).expect("SHA256SUMS");
    sums.lines()
        .find(|l| l.ends_with("  image.raw"))
        .and_then(|l| l.split_whitespace().next())
        .expect("image.raw listed")
        .to_owned()
}

#[test]
#[ignore = "needs the built image; run through `cargo xtask test`"]
fn raw_zst_and_the_gce_archive_unpack_to_the_image() {
    let img = built_image();
    let raw_len = std::fs::metadata(&img.image).expect("image").len();

    // zstd's own command line: integrity, the recorded size, and the bytes.
    let zst = path_of(&img, OutputFormat::RawZst);
    run_ok(Command::new("zstd").args(["-q", "-t"]).arg(&zst));
    let out = run_ok(
        Command::new("sh")
            .arg("-c")
            .arg("zstd -q -d -c \"$1\" | sha256sum")
            .arg("sh")
            .arg(&zst),
    );
    assert!(text(&out).starts_with(&raw_digest(&img)), "{}", text(&out));

    // GCE: a gzipped GNU tar (oldgnu) holding disk.raw as a sparse entry.
    let gce = path_of(&img, OutputFormat::Gce);
    let out = run_ok(
        Command::new("sh")
            .arg("-c")
            .arg("gzip -d -c \"$1\" | head -c 512")
            .arg("sh")
            .arg(&gce),
    );
    let header = &out.stdout;
    assert_eq!(&header[..9], b"disk.raw\0", "the one member is disk.raw");
    assert_eq!(&header[257..265], b"ustar  \0", "GNU tar's oldgnu format");
    assert_eq!(header[156], b'S', "a sparse member");
    let listing = text(&run_ok(Command::new("tar").args(["-tzf"]).arg(&gce)));
    assert_eq!(listing, "disk.raw\n");

    let scratch = tempfile::tempdir().expect("scratch");
    run_ok(
        Command::new("tar")
            .args(["-xSzf"])
            .arg(&gce)
            .arg("-C")
            .arg(scratch.path()),
    );
    let disk = scratch.path().join("disk.raw");
    let len = std::fs::metadata(&disk).expect("disk.raw").len();
    assert_eq!(len, raw_len.div_ceil(GIB) * GIB, "a whole number of GiB");
    let verify = text(&run_ok(Command::new("sgdisk").arg("-v").arg(&disk)));
    assert!(verify.contains("No problems found"), "{verify}");
    let strip = |parts: Vec<crust_tests::Part>| -> Vec<(String, u64, u64, String)> {
        parts
            .into_iter()
            .map(|p| (p.name, p.offset, p.size, p.uuid))
            .collect()
    };
    assert_eq!(strip(partitions(&disk)), strip(partitions(&img.image)));
    // Between the primary GPT and the image's end, the bytes are the image's.
    run_ok(
        Command::new("cmp")
            .args(["-n", &(raw_len - 2 * MIB).to_string()])
            .arg(&disk)
            .arg(&img.image)
            .args([MIB.to_string(), MIB.to_string()]),
    );
}

/// `SOURCE_DATE_EPOCH` of the build: the environment's, else the lock's.
fn epoch() -> u64 {
    if let Ok(v) = std::env::var("SOURCE_DATE_EPOCH") {
        return v.trim().parse().expect("SOURCE_DATE_EPOCH");
    }
    let profile =
        Profile::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles/qemu.toml"))
            .expect("profile");
    crust_builder::lock::Lock::read(&profile.lock_path())
        .expect("lock")
        .expect("lock exists")
        .source_date_epoch
}

#[test]
#[ignore = "needs the built image; run through `cargo xtask test`"]
fn every_format_made_again_is_the_same_bytes() {
    let img = built_image();
    let key = release::read_public_key(&public_key_file(&img)).expect("key");
    let sums = release::signed_sums(&img.dir, &key).expect("signed release");
    let stamp = Stamp {
        build_id: img.manifest.build_id,
        epoch: epoch(),
    };
    let again = tempfile::tempdir().expect("scratch");
    // The ISO and the netboot folder take the build's boot-variant UKIs and manifest from
    // the output folder, and the ISO's medium list is signed (Ed25519 is deterministic).
    for name in ["installer.efi", "netboot.efi", "manifest"] {
        std::fs::copy(img.dir.join(name), again.path().join(name)).expect("copy");
    }
    let signing = SigningKey::development(&img.dir.parent().unwrap().join("keys")).expect("key");
    assert_eq!(
        signing.public_key(),
        key,
        "the test build is signed by the development key"
    );
    for format in OutputFormat::ALL {
        if format == OutputFormat::Raw {
            continue;
        }
        let made = formats::make(
            &img.image,
            again.path(),
            format,
            &stamp,
            &signing,
            &Default::default(),
        )
        .expect("convert");
        for name in format.file_names() {
            let digest = release::hash_file(&again.path().join(name)).expect("hash");
            assert_eq!(
                Some(&digest),
                sums.get(name),
                "{format}: {name} differs when made again from the same image"
            );
        }
        assert!(made.ends_with(format.file_name()));
    }
}

#[test]
#[ignore = "boots QEMU; run through `cargo xtask test`"]
fn the_qcow2_image_boots_to_ready() {
    let img = built_image();
    let mut disk = Disk::copy_of_qcow2(&path_of(&img, OutputFormat::Qcow2), &img.dir);
    let mut vm = disk.boot(BootOptions::default());
    let timeout = boot_timeout(vm.accel);
    vm.vm
        .wait_for_phase(Phase::Ready, timeout)
        .unwrap_or_else(|e| panic!("{e}"));
    vm.power_off();
    // It booted from the qcow2 file itself: the machine's writes (machine id, boot count)
    // landed in it.
    let status = Command::new("qemu-img")
        .args(["compare", "-q", "-f", "qcow2", "-F", "raw"])
        .arg(&disk.overlay)
        .arg(&img.image)
        .stderr(Stdio::null())
        .status()
        .expect("qemu-img compare");
    assert_eq!(
        status.code(),
        Some(1),
        "qemu-img compare: 1 means the images differ"
    );
}
