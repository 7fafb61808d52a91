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

pub mod etcd;
pub mod observe;
pub mod registry;
pub mod repo;

/// A TCP port free on 127.0.0.1 now (the kernel's pick; test files run side by side, so
/// nothing here uses a fixed port).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

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

/// The observability agent built beside the test init (`cargo xtask build` builds both),
/// with its crates for the SBOM, as `cargo xtask build` gives it to the builder.
pub fn observe_program() -> Option<crust_builder::build::Program> {
    static CRATES: std::sync::OnceLock<Vec<crust_builder::sbom::Crate>> =
        std::sync::OnceLock::new();
    let path = init_binary().with_file_name("crust-observe");
    assert!(
        path.is_file(),
        "{} is missing: `cargo xtask build` builds it beside the init",
        path.display()
    );
    let crates = CRATES
        .get_or_init(|| {
            crust_builder::sbom::cargo::init_crates(
                &Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml"),
                "crust-observe",
                &init_target(),
            )
            .unwrap_or_else(|e| panic!("the observability agent's crates: {e:#}"))
        })
        .clone();
    Some(crust_builder::build::Program {
        path,
        crates: Some(crates),
    })
}

/// The target the test init was built for: the folder above its profile folder
/// (`target/<triple>/init/init`), as `cargo xtask` builds it.
pub fn init_target() -> String {
    let init = init_binary();
    init.parent()
        .and_then(Path::parent)
        .and_then(Path::file_name)
        .map(|t| t.to_string_lossy().into_owned())
        .filter(|t| t.contains("-linux-"))
        .unwrap_or_else(|| "x86_64-unknown-linux-musl".into())
}

/// The crates compiled into the test init, as `cargo xtask build` gives them to the
/// builder for the SBOM (computed once per test binary).
pub fn init_crates() -> Vec<crust_builder::sbom::Crate> {
    static CRATES: std::sync::OnceLock<Vec<crust_builder::sbom::Crate>> =
        std::sync::OnceLock::new();
    CRATES
        .get_or_init(|| {
            crust_builder::sbom::cargo::init_crates(
                &Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml"),
                "crust-init",
                &init_target(),
            )
            .unwrap_or_else(|e| panic!("the init's crates: {e:#}"))
        })
        .clone()
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

/// A test machine's disk: a qcow2 overlay over a raw image, with its own firmware
/// variables, so several boots can share state (reboots) while the image stays as built.
#[derive(Debug)]
pub struct Disk {
    /// Holds the overlay, variables, QMP socket and console logs.
    pub scratch: tempfile::TempDir,
    /// The overlay the machine writes to.
    pub overlay: PathBuf,
    /// The built image's folder (for the kernel the accelerator probe boots).
    image_dir: PathBuf,
    boots: usize,
}

impl Disk {
    /// A fresh disk over the built image.
    pub fn new(image: &BuiltImage) -> Self {
        Self::over(&image.image, &image.dir)
    }

    /// A fresh disk over any raw image (a tampered copy, say).
    pub fn over(raw: &Path, image_dir: &Path) -> Self {
        let scratch = tempfile::tempdir().expect("scratch dir");
        let overlay = scratch.path().join("disk.qcow2");
        crust_vm::overlay::create(raw, &overlay).expect("overlay");
        Self {
            scratch,
            overlay,
            image_dir: image_dir.to_path_buf(),
            boots: 0,
        }
    }

    /// A disk that is a copy of a qcow2 image (the build's `image.qcow2`): the machine boots
    /// the format itself, with no overlay between.
    pub fn copy_of_qcow2(qcow2: &Path, image_dir: &Path) -> Self {
        let scratch = tempfile::tempdir().expect("scratch dir");
        let overlay = scratch.path().join("disk.qcow2");
        std::fs::copy(qcow2, &overlay).expect("copy the qcow2 image");
        Self {
            scratch,
            overlay,
            image_dir: image_dir.to_path_buf(),
            boots: 0,
        }
    }

    /// Makes the disk `bytes` larger, as a cloud volume bigger than the image is.
    pub fn grow(&self, bytes: u64) {
        run_ok(
            Command::new("qemu-img")
                .args(["resize", "-q"])
                .arg(&self.overlay)
                .arg(format!("+{bytes}")),
        );
    }

    /// The disk's current content as a sparse raw file in the scratch folder.
    pub fn to_raw(&self) -> PathBuf {
        let raw = self.scratch.path().join("disk.raw");
        run_ok(
            Command::new("qemu-img")
                .args(["convert", "-O", "raw"])
                .arg(&self.overlay)
                .arg(&raw),
        );
        raw
    }

    /// Boots the disk. Boots are serialised across the tests of one binary (this machine
    /// has two cores). The console is logged to `console-N.log` in the scratch folder and
    /// echoed to stderr (shown for failing tests).
    pub fn boot(&mut self, opts: BootOptions) -> TestVm {
        self.boot_with(opts, |_| {})
    }

    /// [`Disk::boot`] with `adjust` applied to the machine first (extra drives, guestfwd
    /// rules, SMBIOS fields).
    pub fn boot_with(&mut self, opts: BootOptions, adjust: impl FnOnce(&mut Config)) -> TestVm {
        let serial = BOOTS.lock().unwrap_or_else(|e| e.into_inner());
        self.start(opts, None, adjust, Some(serial))
    }

    /// [`Disk::boot_with`] on a machine with a TPM 2.0 whose state is the folder `tpm` (made
    /// if missing: a new TPM; the same folder again: the same TPM, as a machine keeps it).
    pub fn boot_with_tpm(
        &mut self,
        opts: BootOptions,
        tpm: &Path,
        adjust: impl FnOnce(&mut Config),
    ) -> TestVm {
        let serial = BOOTS.lock().unwrap_or_else(|e| e.into_inner());
        self.start(opts, Some(tpm), adjust, Some(serial))
    }

    /// The folder of this disk's own TPM state ([`Disk::boot_with_tpm`]).
    pub fn tpm_state(&self) -> PathBuf {
        self.scratch.path().join("tpm")
    }

    /// [`Disk::boot_with`] without waiting for other machines of this test binary: for a
    /// test that runs several machines at once (a fleet), alone in its binary.
    pub fn boot_alongside(
        &mut self,
        opts: BootOptions,
        adjust: impl FnOnce(&mut Config),
    ) -> TestVm {
        self.start(opts, None, adjust, None)
    }

    fn start(
        &mut self,
        opts: BootOptions,
        tpm: Option<&Path>,
        adjust: impl FnOnce(&mut Config),
        serial: Option<MutexGuard<'static, ()>>,
    ) -> TestVm {
        self.boots += 1;
        let dir = self.scratch.path();
        let accel = crust_vm::accel::detect(&self.image_dir.join(outputs::KERNEL), &self.image_dir)
            .expect("accelerator");
        let firmware = Firmware::with_vars(&dir.join("efivars.fd")).expect("firmware");
        let mut config = Config::new(&self.overlay, accel, firmware);
        config.bus = if opts.nvme {
            crust_vm::DiskBus::Nvme
        } else {
            crust_vm::DiskBus::Virtio
        };
        config.qmp_socket = Some(dir.join("qmp.sock"));
        config.no_reboot = opts.no_reboot;
        let swtpm = tpm.map(|state| {
            let swtpm = crust_vm::tpm::Swtpm::for_qemu(state).expect("swtpm");
            config.tpm = swtpm.socket.clone();
            swtpm
        });
        adjust(&mut config);
        let log = dir.join(format!("console-{}.log", self.boots));
        let vm = Vm::start(&config, Some(&log), true).expect("start QEMU");
        TestVm {
            vm,
            accel,
            _tpm: swtpm,
            _serial: serial,
        }
    }
}

/// A booted test machine.
#[derive(Debug)]
pub struct TestVm {
    /// The machine.
    pub vm: Vm,
    /// The accelerator used.
    pub accel: Accel,
    /// The machine's TPM, if it has one (ended after QEMU).
    _tpm: Option<crust_vm::tpm::Swtpm>,
    _serial: Option<MutexGuard<'static, ()>>,
}

impl TestVm {
    /// Presses the power button and waits for the init's clean power-off and QEMU's exit.
    pub fn power_off(&mut self) {
        self.vm
            .qmp()
            .expect("QMP")
            .system_powerdown()
            .expect("system_powerdown");
        self.vm
            .wait_for_phase(
                crust_format::phase::Phase::PowerOff,
                Duration::from_secs(60),
            )
            .unwrap_or_else(|e| panic!("{e}"));
        let status = self
            .vm
            .wait_exit(Duration::from_secs(60))
            .expect("QEMU ends after the power-off");
        assert!(status.success(), "QEMU exited with {status}");
    }
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

/// Generous bounds for software emulation; KVM needs a fraction.
pub fn boot_timeout(accel: Accel) -> Duration {
    match accel {
        Accel::Kvm => Duration::from_secs(60),
        Accel::Tcg => Duration::from_secs(240),
    }
}

/// A sparse copy of the built image to tamper with, in `dir`.
pub fn copy_image(image: &BuiltImage, dir: &Path) -> PathBuf {
    let copy = dir.join("tampered.raw");
    run_ok(
        Command::new("cp")
            .arg("--sparse=always")
            .arg(&image.image)
            .arg(&copy),
    );
    copy
}

/// XORs the byte at `offset` of `file` with 0xff.
pub fn flip_byte(file: &Path, offset: u64) {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(file)
        .expect("open");
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(offset)).expect("seek");
    f.read_exact(&mut b).expect("read");
    b[0] ^= 0xff;
    f.seek(SeekFrom::Start(offset)).expect("seek");
    f.write_all(&b).expect("write");
}

/// Offset in a squashfs root image of the first data block of the file at `path`.
pub fn file_data_offset(root_image: &Path, path: &str) -> u64 {
    use backhand::{FilesystemReader, InnerNode, SquashfsFileReader};
    let reader = std::io::BufReader::new(File::open(root_image).expect("root image"));
    let fs = FilesystemReader::from_reader(reader).expect("squashfs");
    let node = fs
        .files()
        .find(|n| n.fullpath == Path::new(path))
        .unwrap_or_else(|| panic!("{path} not in the root"));
    match &node.inner {
        InnerNode::File(SquashfsFileReader::Basic(f)) => u64::from(f.blocks_start),
        InnerNode::File(SquashfsFileReader::Extended(f)) => f.blocks_start,
        _ => panic!("{path} is not a file"),
    }
}

/// Writes `content` as the file `path` (mode `mode`; parent folders made) into the state
/// partition (`/var` on a running host) of the disk image `raw`, with e2fsprogs' debugfs, as
/// the first boot's set-up or an attacker with the disk would; checks it is there after.
pub fn write_state_file(raw: &Path, path: &str, content: &[u8], mode: u32) {
    let work = tempfile::tempdir().expect("work dir");
    let state = partition(raw, "state");
    let fs = work.path().join("state.img");
    extract(raw, &state, &fs, None);
    let source = work.path().join("content");
    std::fs::write(&source, content).expect("write content");
    let mut script = String::new();
    let mut parent = String::new();
    let components: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    for dir in &components[..components.len() - 1] {
        parent.push('/');
        parent.push_str(dir);
        // An existing folder makes debugfs complain and go on.
        script.push_str(&format!(
            "mkdir {parent}
"
        ));
    }
    script.push_str(&format!(
        "rm {path}
write {} {path}
sif {path} mode 0{:o}
",
        source.display(),
        0o100_000 | mode
    ));
    let commands = work.path().join("debugfs.cmd");
    std::fs::write(&commands, script).expect("write commands");
    run_ok(
        Command::new("debugfs")
            .arg("-w")
            .arg("-f")
            .arg(&commands)
            .arg(&fs),
    );
    let read_back = run_ok(
        Command::new("debugfs")
            .args(["-R", &format!("cat {path}")])
            .arg(&fs),
    );
    assert_eq!(
        read_back.stdout, content,
        "{path} was not written to the state partition"
    );
    run_ok(
        Command::new("dd")
            .arg(format!("if={}", fs.display()))
            .arg(format!("of={}", raw.display()))
            .args(["bs=1M", "conv=notrunc,sparse", "status=none"])
            .arg(format!("seek={}", state.offset >> 20)),
    );
}

/// The boot package of the test image's lock, from the package cache (no network).
fn stub() -> Vec<u8> {
    use crust_builder::{apt::Apt, fetch, lock::Lock, lock::Role, profile::Profile};
    let profile =
        Profile::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles/qemu.toml"))
            .expect("profile");
    let lock = Lock::read(&profile.lock_path())
        .expect("lock")
        .expect("lock exists");
    let cache = fetch::Cache::new(fetch::Cache::default_root());
    let apt = Apt::new(cache.root(), &profile).expect("apt");
    let debs = fetch::fetch(&cache, &apt, &lock).expect("cached packages");
    let boot = debs
        .iter()
        .find(|d| d.package.role == Role::Boot)
        .expect("boot package");
    crust_builder::build::boot_files(boot).expect("stub").0
}

/// Rewrites the initramfs inside the UKI on `raw`'s ESP: unpacks it with GNU cpio, lets
/// `edit` change the files, packs it again (cpio, zstd), rebuilds the UKI around it and puts
/// it back with mtools. Everything else on the disk stays as it was.
pub fn edit_initramfs(raw: &Path, uki_name: &str, edit: impl FnOnce(&Path)) {
    let work = tempfile::tempdir().expect("work dir");
    let w = work.path();
    let esp = partition(raw, "esp");
    let at = format!("{}@@{}", raw.display(), esp.offset);
    let uki = w.join("uki.efi");
    run_ok(
        Command::new("mcopy")
            .args(["-n", "-i", &at])
            .arg(format!("::/EFI/Linux/{uki_name}"))
            .arg(&uki),
    );
    let section = |name: &str| {
        let out = w.join(name.trim_start_matches('.'));
        run_ok(
            Command::new("objcopy")
                .args(["-O", "binary", "--only-section", name])
                .arg(&uki)
                .arg(&out),
        );
        std::fs::read(out).expect("section")
    };
    let (osrel, cmdline, uname, linux) = (
        section(".osrel"),
        section(".cmdline"),
        section(".uname"),
        section(".linux"),
    );
    std::fs::write(w.join("initrd.zst"), section(".initrd")).expect("write");
    run_ok(
        Command::new("zstd")
            .args(["-q", "-d", "-f"])
            .arg(w.join("initrd.zst")),
    );
    let tree = w.join("tree");
    std::fs::create_dir(&tree).expect("mkdir");
    run_ok(
        Command::new("cpio")
            .args(["-idm", "--quiet", "-F"])
            .arg(w.join("initrd"))
            .current_dir(&tree),
    );
    edit(&tree);
    run_ok(
        Command::new("sh")
            .arg("-c")
            .arg("find . | sort | cpio -o -H newc --quiet > ../initrd.new")
            .current_dir(&tree),
    );
    run_ok(
        Command::new("zstd")
            .args(["-q", "-f", "-19"])
            .arg(w.join("initrd.new")),
    );
    let initrd = std::fs::read(w.join("initrd.new.zst")).expect("read");
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).expect("UTF-8 section");
    let new_uki = crust_builder::uki::assemble(
        &stub(),
        &crust_builder::uki::Parts {
            os_release: &text(&osrel),
            cmdline: &text(&cmdline),
            uname: &text(&uname),
            initrd: &initrd,
            linux: &linux,
            pcrpkey: None,
            pcrsig: None,
        },
    )
    .expect("UKI");
    std::fs::write(&uki, new_uki).expect("write UKI");
    run_ok(
        Command::new("mcopy")
            .args(["-o", "-n", "-i", &at])
            .arg(&uki)
            .arg(format!("::/EFI/Linux/{uki_name}")),
    );
}

/// A copy of the committed `profiles/` folder (profiles, locks, files) in a temporary
/// folder, for variant profiles that include them.
pub fn profiles_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("profile folder");
    let profiles = Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles");
    run_ok(
        Command::new("cp")
            .arg("-r")
            .arg(profiles.join("."))
            .arg(dir.path()),
    );
    dir
}

/// Builds the profile `name` of `dir` (a [`profiles_copy`]) into `dir/out-<name>` with the
/// test init; `locked` refuses a lock that is out of date.
pub fn build_profile(dir: &Path, name: &str, locked: bool) -> crust_builder::build::BuildOutcome {
    let out = dir.join(format!("out-{name}"));
    crust_builder::build::build(&crust_builder::build::BuildRequest {
        profile: dir.join(format!("{name}.toml")),
        init: init_binary(),
        out_dir: out.clone(),
        dev_key_dir: out.join("keys"),
        cache: crust_builder::fetch::Cache::new(crust_builder::fetch::Cache::default_root()),
        locked,
        source_date_epoch: None,
        init_crates: Some(init_crates()),
        observe: observe_program(),
        extras: Default::default(),
    })
    .unwrap_or_else(|e| panic!("{name} does not build: {e:#}"))
}
