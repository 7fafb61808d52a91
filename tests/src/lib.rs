//! Shared pieces of Crust's end-to-end tests: the one image `cargo xtask test` builds for
//! all of them, reading its partitions with independent tools, and booting it in QEMU.
//!
//! The tests that need the image or QEMU are `#[ignore]`d for a bare `cargo test` and run
//! by `cargo xtask test`, which builds the image once and passes its folder in
//! `CRUST_TEST_IMAGE_DIR` (and the init in `CRUST_TEST_INIT`).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use crust_builder::build::outputs;
use crust_format::Manifest;
use crust_vm::{Accel, Config, Vm, firmware::Firmware};

/// The image built for this test run.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    /// Its output folder.
    pub dir: PathBuf,
    /// `image.raw`.
    pub image: PathBuf,
    /// The manifest next to it.
    pub manifest: Manifest,
}

fn env_path(var: &str) -> PathBuf {
    std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        panic!("{var} is not set: run the end-to-end tests through `cargo xtask test`")
    })
}

/// The image `cargo xtask test` built.
pub fn built_image() -> BuiltImage {
    let dir = env_path("CRUST_TEST_IMAGE_DIR");
    let manifest = Manifest::parse(&std::fs::read(dir.join(outputs::MANIFEST)).expect("manifest"))
        .expect("the built manifest parses");
    BuiltImage {
        image: dir.join(outputs::IMAGE),
        dir,
        manifest,
    }
}

/// The static init the image was built with.
pub fn init_binary() -> PathBuf {
    env_path("CRUST_TEST_INIT")
}

/// Runs a command, panicking with its output if it fails.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {cmd:?}: {e} (cargo xtask test installs the tools)")
    });
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A partition as `sfdisk -J` reports it.
#[derive(Debug, Clone)]
pub struct Part {
    /// GPT partition name.
    pub name: String,
    /// Byte offset.
    pub offset: u64,
    /// Size in bytes.
    pub size: u64,
    /// Type GUID, lowercase.
    pub type_guid: String,
    /// Partition GUID, lowercase.
    pub uuid: String,
}

/// The partitions of a disk image, read by `sfdisk`.
pub fn partitions(image: &Path) -> Vec<Part> {
    let out = run_ok(Command::new("sfdisk").arg("-J").arg(image));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("sfdisk JSON");
    let table = &json["partitiontable"];
    assert_eq!(table["sectorsize"], 512);
    table["partitions"]
        .as_array()
        .expect("partitions")
        .iter()
        .map(|p| Part {
            name: p["name"].as_str().unwrap_or_default().to_owned(),
            offset: p["start"].as_u64().unwrap_or_default() * 512,
            size: p["size"].as_u64().unwrap_or_default() * 512,
            type_guid: p["type"].as_str().unwrap_or_default().to_lowercase(),
            uuid: p["uuid"].as_str().unwrap_or_default().to_lowercase(),
        })
        .collect()
}

/// The partition named `name`.
pub fn partition(image: &Path, name: &str) -> Part {
    partitions(image)
        .into_iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("{} has no partition {name}", image.display()))
}

/// Copies a partition's bytes into `dest` (at most `limit` bytes), keeping holes sparse.
pub fn extract(image: &Path, part: &Part, dest: &Path, limit: Option<u64>) {
    let mut src = File::open(image).expect("open image");
    let mut out = File::create(dest).expect("create extract");
    let len = limit.map_or(part.size, |l| l.min(part.size));
    src.seek(SeekFrom::Start(part.offset)).expect("seek");
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    while done < len {
        let n = ((len - done) as usize).min(buf.len());
        src.read_exact(&mut buf[..n]).expect("read image");
        if buf[..n].iter().all(|&b| b == 0) {
            out.seek(SeekFrom::Current(n as i64)).expect("seek");
        } else {
            out.write_all(&buf[..n]).expect("write extract");
        }
        done += n as u64;
    }
    out.set_len(len).expect("size extract");
}

static BOOTS: Mutex<()> = Mutex::new(());

/// A booted test machine and the scratch files behind it.
#[derive(Debug)]
pub struct TestVm {
    /// The machine.
    pub vm: Vm,
    /// The accelerator used.
    pub accel: Accel,
    /// Holds the overlay, variables, QMP socket and console log.
    pub scratch: tempfile::TempDir,
    _serial: MutexGuard<'static, ()>,
}

/// How a test machine is set up.
#[derive(Debug, Clone, Copy)]
pub struct BootOptions {
    /// Attach the disk as NVMe.
    pub nvme: bool,
    /// Exit QEMU instead of rebooting.
    pub no_reboot: bool,
}

impl Default for BootOptions {
    fn default() -> Self {
        Self {
            nvme: false,
            no_reboot: true,
        }
    }
}

/// Boots `image` on a fresh overlay with fresh firmware variables. Boots are serialised
/// across the tests of one binary (this machine has two cores). The console is logged to
/// `console.log` in the scratch folder and echoed to stderr (shown for failing tests).
pub fn boot(image: &BuiltImage, opts: BootOptions) -> TestVm {
    let serial = BOOTS.lock().unwrap_or_else(|e| e.into_inner());
    let scratch = tempfile::tempdir().expect("scratch dir");
    let overlay = scratch.path().join("disk.qcow2");
    crust_vm::overlay::create(&image.image, &overlay).expect("overlay");
    let accel =
        crust_vm::accel::detect(&image.dir.join(outputs::KERNEL), &image.dir).expect("accelerator");
    let firmware = Firmware::with_vars(&scratch.path().join("efivars.fd")).expect("firmware");
    let mut config = Config::new(&overlay, accel, firmware);
    config.bus = if opts.nvme {
        crust_vm::DiskBus::Nvme
    } else {
        crust_vm::DiskBus::Virtio
    };
    config.qmp_socket = Some(scratch.path().join("qmp.sock"));
    config.no_reboot = opts.no_reboot;
    let vm =
        Vm::start(&config, Some(&scratch.path().join("console.log")), true).expect("start QEMU");
    TestVm {
        vm,
        accel,
        scratch,
        _serial: serial,
    }
}

/// Generous bounds for software emulation; KVM needs a fraction.
pub fn boot_timeout(accel: Accel) -> Duration {
    match accel {
        Accel::Kvm => Duration::from_secs(60),
        Accel::Tcg => Duration::from_secs(240),
    }
}
