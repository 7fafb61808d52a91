//! Secure Boot with the user's own keys, end to end: a key set made by the keygen code, an
//! image built from the default profile with `[secure-boot]` on it, and OVMF's Secure Boot
//! firmware (`OVMF_CODE_4M.secboot.fd`).
//!
//! - With the keys enrolled (`virt-fw-vars`) the image boots to `ready` and the kernel
//!   reports Secure Boot enabled. Its profile has `[secure-boot]`, so user-data must be
//!   signed: an unsigned NoCloud seed that names a host name and changes a service's command
//!   is refused and the host comes up with its image defaults; the same seed signed with
//!   the image's key (as `cargo xtask sign-user-data` signs) is taken on the next boot. A
//!   seed on the boot disk itself (the ESP relabelled `CIDATA`, holding user-data signed
//!   with the right key) is never read. The same image with one byte of the UKI's command line
//!   changed, or with the UKI's signature removed, is refused by the firmware before any
//!   kernel runs.
//! - On a machine in setup mode systemd-boot enrols the image's own `.auth` files, reboots,
//!   and the image then boots with Secure Boot enforced.
//! - `sbverify` (another implementation than the signer's) accepts systemd-boot and the UKI
//!   with the db certificate, and a second build with the same keys gives the same image.
//! - The installer ISO and the netboot UKI (docs/METAL.md), signed with the same db key,
//!   start under the enforcing firmware: the ISO's installer from a CD-ROM, the netboot
//!   UKI by UEFI PXE on a diskless machine, to `ready`.
//!
//! The profile encrypts `/var` with a key sealed to the TPM (the default with
//! `[secure-boot]`), so the machines have one (swtpm); `sealed.rs` tests the sealing.
//!
//! `cargo xtask test` passes the init (`CRUST_TEST_INIT`) and `virt-fw-vars`
//! (`CRUST_TEST_VIRT_FW_VARS`). The tests here build and boot, so they run one at a time.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock};

use crust_builder::build::{BuildOutcome, BuildRequest, outputs};
use crust_builder::fetch::{self, Cache};
use crust_builder::profile::OutputFormat;
use crust_builder::secureboot::{KeySet, Role, generate};
use crust_format::boot_entry::BootEntryName;
use crust_format::phase::Phase;
use crust_tests::{BootOptions, BuiltImage, Disk, boot_timeout, copy_image, partition, run_ok};
use crust_vm::firmware::{self, Firmware, OVMF_VARS};

/// The kernel's line when the firmware started it with Secure Boot on.
const ENABLED: &str = "secureboot: Secure boot enabled";
/// OVMF's last word when nothing it may start is left.
const NOTHING_LEFT: &str = "No bootable option or device was found";

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

fn env_path(var: &str) -> PathBuf {
    std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        panic!("{var} is not set: run the Secure Boot tests through `cargo xtask test`")
    })
}

/// The signed image of this test run, its keys and the profile it came from.
struct Signed {
    scratch: tempfile::TempDir,
    keys: KeySet,
    profile: PathBuf,
    image: BuiltImage,
    uki: String,
}

/// Writes a profile that is the default one plus `[secure-boot]` with `keys`, next to a copy
/// of the default profile's lock (the package inputs are the same), and returns its path.
fn profile_with_keys(dir: &Path, keys: &Path) -> PathBuf {
    let profiles = Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles");
    let profile = dir.join("secure.toml");
    std::fs::write(
        &profile,
        format!(
            "include = \"{}\"\n\n[secure-boot]\nkeys = \"{}\"\nenroll = \"force\"\n",
            profiles.join("qemu.toml").display(),
            keys.display()
        ),
    )
    .expect("write profile");
    std::fs::copy(profiles.join("qemu.lock"), dir.join("secure.lock")).expect("copy lock");
    profile
}

fn build_into(profile: &Path, out: &Path) -> BuildOutcome {
    // With the installer ISO and the netboot folder: their UKIs are signed too.
    let formats = [OutputFormat::Iso, OutputFormat::Netboot];
    let outcome = crust_builder::build::build_with(
        &BuildRequest {
            profile: profile.to_path_buf(),
            init: env_path("CRUST_TEST_INIT"),
            out_dir: out.to_path_buf(),
            dev_key_dir: profile.with_file_name("ed25519-keys"),
            cache: Cache::new(Cache::default_root()),
            locked: true,
            source_date_epoch: None,
            init_crates: Some(crust_tests::init_crates()),
            observe: crust_tests::observe_program(),
            extras: Default::default(),
        },
        &formats,
    )
    .unwrap_or_else(|e| panic!("the Secure Boot profile does not build: {e:#}"));
    assert!(!outcome.fresh, "{} was not a clean folder", out.display());
    outcome
}

/// Made once per test binary: the key set, then the image.
fn signed() -> &'static Signed {
    static SIGNED: OnceLock<Signed> = OnceLock::new();
    SIGNED.get_or_init(|| {
        let scratch = tempfile::tempdir().expect("scratch");
        let keys = generate(&scratch.path().join("keys"), "Crust test").expect("keygen");
        let profile = profile_with_keys(scratch.path(), keys.dir());
        let outcome = build_into(&profile, &scratch.path().join("a"));
        let uki =
            BootEntryName::new(&outcome.manifest.name, &outcome.manifest.version, None).to_string();
        Signed {
            image: BuiltImage {
                dir: scratch.path().join("a"),
                image: outcome.image,
                manifest: outcome.manifest,
            },
            scratch,
            keys,
            profile,
            uki,
        }
    })
}

impl Signed {
    /// A variable store with this key set enrolled and Secure Boot on, made once.
    fn enrolled_store(&self) -> PathBuf {
        let store = self.scratch.path().join("enrolled.fd");
        if !store.exists() {
            let owner = self.keys.owner().to_string();
            let (pk, kek, db) = (
                self.keys.certificate(Role::Pk),
                self.keys.certificate(Role::Kek),
                self.keys.certificate(Role::Db),
            );
            firmware::enrolled_store(
                &env_path("CRUST_TEST_VIRT_FW_VARS"),
                &firmware::Enrolment {
                    owner: &owner,
                    pk: &pk,
                    kek: &kek,
                    db: &db,
                },
                &store,
            )
            .expect("virt-fw-vars");
        }
        store
    }

    /// `image`'s ESP as mtools addresses it.
    fn esp(image: &Path) -> String {
        format!("{}@@{}", image.display(), partition(image, "esp").offset)
    }

    /// Copies `path` off the ESP of `image` into `dest`.
    fn take(image: &Path, path: &str, dest: &Path) {
        run_ok(
            Command::new("mcopy")
                .args(["-n", "-i", &Self::esp(image)])
                .arg(format!("::/{path}"))
                .arg(dest),
        );
    }

    /// Writes `src` over `path` on the ESP of `image`.
    fn put(image: &Path, src: &Path, path: &str) {
        run_ok(
            Command::new("mcopy")
                .args(["-o", "-n", "-i", &Self::esp(image)])
                .arg(src)
                .arg(format!("::/{path}")),
        );
    }
}

/// Boots `raw` under the Secure Boot firmware, the machine's store a copy of `template`.
fn boot_secure(
    raw: &Path,
    image_dir: &Path,
    template: &Path,
    opts: BootOptions,
) -> (Disk, crust_tests::TestVm) {
    let mut disk = Disk::over(raw, image_dir);
    let vars = disk.scratch.path().join("efivars-secure-boot.fd");
    // The profile's /var is sealed to a TPM (encryption = "tpm" is the default with
    // [secure-boot]): the machine has one.
    let tpm = disk.tpm_state();
    let vm = disk.boot_with_tpm(opts, &tpm, |config| {
        config.firmware = Firmware::secure_boot(&vars, template).expect("Secure Boot firmware");
    });
    (disk, vm)
}

/// User-data that names a host name and replaces the web service's command (so the page
/// is served, and the command's first line shows it ran).
fn user_data(hostname: &str) -> String {
    format!(
        "version = 1\nhostname = \"{hostname}\"\n\n[[service]]\nname = \"web\"\n\
         command = [\"/bin/busybox\", \"sh\", \"-c\", \"echo command-from-{hostname}; exec \
         /bin/busybox sh /srv/web/start\"]\n"
    )
}

/// The raw signature the image's policy accepts over `data`, by the image's own key (what
/// `cargo xtask sign-user-data` writes).
fn sign_user_data(signed: &Signed, data: &[u8]) -> Vec<u8> {
    let key = crust_builder::sign::SigningKey::development(
        &signed.profile.with_file_name("ed25519-keys"),
    )
    .expect("the image's signing key");
    key.sign(&crust_format::user_data::signed_message(data))
        .to_vec()
}

#[test]
#[ignore = "needs the init and virt-fw-vars from `cargo xtask test`"]
fn signed_image_boots_with_secure_boot_enforced_and_takes_only_signed_user_data() {
    let _one = serial();
    let signed = signed();
    let work = tempfile::tempdir().expect("work");
    // The boot disk's ESP relabelled CIDATA, with user-data signed by the right key: whoever
    // can write the ESP must still not be a source.
    let raw = copy_image(&signed.image, work.path());
    let esp_data = user_data("from-the-esp");
    let on_esp = work.path().join("user-data");
    std::fs::write(&on_esp, &esp_data).expect("user-data");
    std::fs::write(
        work.path().join("user-data.sig"),
        sign_user_data(signed, esp_data.as_bytes()),
    )
    .expect("signature");
    run_ok(Command::new("mlabel").args(["-i", &Signed::esp(&raw), "::CIDATA"]));
    Signed::put(&raw, &on_esp, "user-data");
    Signed::put(&raw, &work.path().join("user-data.sig"), "user-data.sig");

    // Boot 1: an unsigned seed.
    let seed = work.path().join("seed.img");
    let unsigned = user_data("unsigned");
    crust_vm::seed::write(unsigned.as_bytes(), &seed).expect("seed");
    let mut disk = Disk::over(&raw, &signed.image.dir);
    let vars = disk.scratch.path().join("efivars-secure-boot.fd");
    let template = signed.enrolled_store();
    let machine = |config: &mut crust_vm::Config| {
        config.firmware = Firmware::secure_boot(&vars, &template).expect("Secure Boot firmware");
        config.extra_drives.push(seed.clone());
    };
    let tpm = disk.tpm_state();
    let mut vm = disk.boot_with_tpm(BootOptions::default(), &tpm, |c| machine(c));
    let bound = boot_timeout(vm.accel);
    vm.vm
        .wait_for_text(ENABLED, bound)
        .unwrap_or_else(|e| panic!("{e}"));
    let ignored = vm
        .vm
        .wait_for_text("config: ignoring the CIDATA file system on /dev/vda", bound)
        .unwrap_or_else(|e| panic!("the ESP seed was not ignored: {e}"));
    assert!(
        ignored.contains("the boot disk is never a source"),
        "{ignored}"
    );
    let refused = vm
        .vm
        .wait_for_text(
            "config: user-data from NoCloud seed /dev/vdb refused",
            bound,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        refused.contains("it carries no signature; this image takes only user-data signed by key"),
        "{refused}"
    );
    let network = vm
        .vm
        .wait_for_phase(Phase::Network, bound)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        network.detail.contains("hostname crust (default)"),
        "{}",
        network.detail
    );
    let ready = vm
        .vm
        .wait_for_phase(Phase::Ready, bound)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(ready.detail.contains("dm-verity"), "{}", ready.detail);
    vm.vm
        .wait_for_text("web: serving", bound)
        .unwrap_or_else(|e| panic!("{e}"));
    let history = vm.vm.console().history().join("\n");
    assert!(
        history.contains("Kernel is locked down from EFI Secure Boot"),
        "the kernel did not lock itself down:\n{history}"
    );
    for foreign in ["command-from-", "from-the-esp", "user-data changed"] {
        assert!(
            !history.contains(foreign),
            "refused user-data ran ({foreign}):\n{history}"
        );
    }
    vm.power_off();
    drop(vm);

    // Boot 2: the same user-data, signed.
    let good = user_data("signed");
    crust_vm::seed::write_signed(
        good.as_bytes(),
        Some(&sign_user_data(signed, good.as_bytes())),
        &seed,
    )
    .expect("seed");
    let mut vm = disk.boot_with_tpm(BootOptions::default(), &tpm, |c| machine(c));
    let config = vm
        .vm
        .wait_for_phase(Phase::Config, bound)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        config
            .detail
            .contains("from NoCloud seed /dev/vdb: hostname signed"),
        "{}",
        config.detail
    );
    let services = vm
        .vm
        .wait_for_phase(Phase::Services, bound)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        services.detail.contains("user-data changed web"),
        "{}",
        services.detail
    );
    vm.vm
        .wait_for_text("web: command-from-signed", bound)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        !vm.vm
            .console()
            .history()
            .iter()
            .any(|l| l.contains("from-the-esp")),
        "the ESP's user-data was read"
    );
    vm.power_off();
}

/// Boots `raw` with the keys enrolled and checks the firmware refuses the UKI: systemd-boot
/// (signed) says it cannot load it, no kernel starts, no init line appears, and the
/// firmware runs out of things to start.
fn assert_refused(signed: &Signed, raw: &Path) {
    let (_disk, mut vm) = boot_secure(
        raw,
        &signed.image.dir,
        &signed.enrolled_store(),
        BootOptions::default(),
    );
    vm.vm
        .wait_for_text(NOTHING_LEFT, boot_timeout(vm.accel))
        .unwrap_or_else(|e| panic!("the firmware did not give up: {e}"));
    let history = vm.vm.console().history().to_vec();
    let refusal = format!("Error loading \\EFI\\Linux\\{}", signed.uki);
    assert!(
        history.iter().any(|l| l.contains(&refusal)
            && (l.contains("Access Denied") || l.contains("Security Violation"))),
        "no refusal of the UKI (\"{refusal}: Access Denied\") on the console:\n{}",
        history.join("\n")
    );
    for line in &history {
        assert!(
            !line.contains("crust:") && !line.contains("Linux version"),
            "a refused UKI ran: {line}"
        );
    }
}

#[test]
#[ignore = "needs the init and virt-fw-vars from `cargo xtask test`"]
fn firmware_refuses_a_uki_with_one_byte_changed() {
    let _one = serial();
    let signed = signed();
    let work = tempfile::tempdir().expect("work");
    let raw = copy_image(&signed.image, work.path());
    let uki = work.path().join("uki.efi");
    let uki_path = format!("EFI/Linux/{}", signed.uki);
    Signed::take(&raw, &uki_path, &uki);
    // The byte: the first of the command line, as objdump places the section in the file.
    let headers = run_ok(Command::new("objdump").arg("-h").arg(&uki));
    let headers = String::from_utf8_lossy(&headers.stdout);
    let offset = headers
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|c| c.get(1) == Some(&".cmdline"))
        .and_then(|c| u64::from_str_radix(c.get(5)?, 16).ok())
        .unwrap_or_else(|| panic!("no .cmdline in the UKI:\n{headers}"));
    crust_tests::flip_byte(&uki, offset);
    Signed::put(&raw, &uki, &uki_path);
    assert_refused(signed, &raw);
}

#[test]
#[ignore = "needs the init and virt-fw-vars from `cargo xtask test`"]
fn firmware_refuses_the_uki_unsigned() {
    let _one = serial();
    let signed = signed();
    let work = tempfile::tempdir().expect("work");
    let raw = copy_image(&signed.image, work.path());
    let uki = work.path().join("uki.efi");
    let uki_path = format!("EFI/Linux/{}", signed.uki);
    Signed::take(&raw, &uki_path, &uki);
    // The same UKI with its signature removed by sbsigntool.
    run_ok(Command::new("sbattach").arg("--remove").arg(&uki));
    let unsigned = run_ok(
        Command::new("sbverify")
            .arg("--list")
            .arg(&uki)
            .env("LC_ALL", "C"),
    );
    let listing = format!(
        "{}{}",
        String::from_utf8_lossy(&unsigned.stdout),
        String::from_utf8_lossy(&unsigned.stderr)
    );
    assert!(
        listing.contains("No signature table present"),
        "the UKI still has a signature: {listing}"
    );
    Signed::put(&raw, &uki, &uki_path);
    assert_refused(signed, &raw);
}

#[test]
#[ignore = "needs the init and virt-fw-vars from `cargo xtask test`"]
fn systemd_boot_enrols_the_keys_of_the_esp_in_setup_mode() {
    let _one = serial();
    let signed = signed();
    // A pristine store under the Secure Boot firmware: setup mode, no keys. The image's
    // loader.conf says `secure-boot-enroll force`: systemd-boot enrols loader/keys/auto
    // and resets the machine, which then boots with Secure Boot enforced.
    let (disk, mut vm) = boot_secure(
        &signed.image.image,
        &signed.image.dir,
        Path::new(OVMF_VARS),
        BootOptions {
            nvme: false,
            no_reboot: false,
        },
    );
    let bound = boot_timeout(vm.accel);
    vm.vm
        .wait_for_text(
            "Enrolling secure boot keys from directory: \\loader\\keys\\auto",
            bound,
        )
        .unwrap_or_else(|e| panic!("systemd-boot did not enrol the keys: {e}"));
    vm.vm
        .wait_for_text(ENABLED, bound)
        .unwrap_or_else(|e| panic!("{e}"));
    vm.vm
        .wait_for_phase(Phase::Ready, bound)
        .unwrap_or_else(|e| panic!("{e}"));
    vm.power_off();

    // The machine's store now holds the key set's own lists, as virt-fw-vars reads them.
    let json = disk.scratch.path().join("vars.json");
    run_ok(
        Command::new(env_path("CRUST_TEST_VIRT_FW_VARS"))
            .arg("--input")
            .arg(disk.scratch.path().join("efivars-secure-boot.fd"))
            .arg("--output-json")
            .arg(&json),
    );
    let vars: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("json")).expect("virt-fw-vars JSON");
    for role in Role::ALL {
        let list = std::fs::read(signed.keys.signature_list(role)).expect("list");
        let hex: String = list.iter().map(|b| format!("{b:02x}")).collect();
        let enrolled = vars["variables"]
            .as_array()
            .expect("variables")
            .iter()
            .find(|v| v["name"] == role.variable())
            .unwrap_or_else(|| panic!("{} is not enrolled: {vars}", role.variable()));
        assert_eq!(
            enrolled["data"].as_str(),
            Some(hex.as_str()),
            "{} holds another list",
            role.variable()
        );
    }
}

#[test]
#[ignore = "needs the init from `cargo xtask test`"]
fn sbverify_accepts_every_signed_binary_and_builds_are_reproducible() {
    let _one = serial();
    let signed = signed();
    let work = tempfile::tempdir().expect("work");
    let raw = &signed.image.image;
    let db = signed.keys.certificate(Role::Db);
    for path in [
        "EFI/BOOT/BOOTX64.EFI".to_owned(),
        format!("EFI/Linux/{}", signed.uki),
    ] {
        let file = work.path().join("binary.efi");
        Signed::take(raw, &path, &file);
        let out = Command::new("sbverify")
            .arg("--cert")
            .arg(&db)
            .arg(&file)
            .output()
            .expect("sbverify (sbsigntool)");
        assert!(
            out.status.success(),
            "sbverify refuses {path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let kek = Command::new("sbverify")
            .arg("--cert")
            .arg(signed.keys.certificate(Role::Kek))
            .arg(&file)
            .output()
            .expect("sbverify");
        assert!(!kek.status.success(), "{path} verifies with the KEK too");
        std::fs::remove_file(&file).expect("remove");
    }
    // The enrolment files and the loader configuration that uses them.
    for role in Role::ALL {
        let file = work.path().join("update.auth");
        Signed::take(
            raw,
            &format!("loader/keys/auto/{}.auth", role.variable()),
            &file,
        );
        assert_eq!(
            std::fs::read(&file).expect("read"),
            std::fs::read(signed.keys.update(role)).expect("read"),
            "{}.auth",
            role.variable()
        );
        std::fs::remove_file(&file).expect("remove");
    }
    let conf = run_ok(
        Command::new("mtype")
            .args(["-i", &Signed::esp(raw)])
            .arg("::/loader/loader.conf"),
    );
    assert!(
        String::from_utf8_lossy(&conf.stdout)
            .lines()
            .any(|l| l == "secure-boot-enroll force"),
        "{}",
        String::from_utf8_lossy(&conf.stdout)
    );

    // A second clean build with the same keys: the same bytes, signatures included.
    let again = build_into(&signed.profile, &signed.scratch.path().join("b"));
    let digest = |p: &Path| fetch::sha256_file(p).expect("hash");
    assert_eq!(
        digest(raw),
        digest(&again.image),
        "two builds with the same keys differ"
    );
    assert_eq!(
        std::fs::read(signed.image.dir.join(outputs::MANIFEST)).expect("manifest"),
        std::fs::read(again.image.with_file_name(outputs::MANIFEST)).expect("manifest"),
    );
}

#[test]
fn the_shipped_secure_boot_profile_is_qemu_with_its_lock() {
    let profiles = Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles");
    let profile = crust_builder::profile::Profile::load(&profiles.join("qemu-secure-boot.toml"))
        .expect("profiles/qemu-secure-boot.toml loads");
    let secure_boot = profile.secure_boot.expect("it has [secure-boot]");
    assert_eq!(
        secure_boot.enroll.value,
        crust_builder::secureboot::Enroll::Force
    );
    let lock = |name: &str| {
        crust_builder::lock::Lock::read(&profiles.join(name))
            .expect("lock")
            .unwrap_or_else(|| panic!("{name} is missing"))
    };
    let (ours, base) = (lock("qemu-secure-boot.lock"), lock("qemu.lock"));
    assert_eq!(
        ours.inputs, base.inputs,
        "qemu-secure-boot.lock pins other inputs than qemu.lock: run `cargo xtask lock --profile qemu-secure-boot`"
    );
}

#[test]
#[ignore = "needs the init from `cargo xtask test`"]
fn the_installer_iso_and_the_netboot_uki_start_with_secure_boot_enforced() {
    let _one = serial();
    let signed = signed();
    let dir = &signed.image.dir;
    for name in ["installer.efi", "netboot.efi"] {
        let out = Command::new("sbverify")
            .arg("--cert")
            .arg(signed.keys.certificate(Role::Db))
            .arg(dir.join(name))
            .output()
            .expect("sbverify (sbsigntool)");
        assert!(
            out.status.success(),
            "sbverify refuses {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let accel = crust_vm::accel::detect(&dir.join(outputs::KERNEL), dir).expect("accelerator");
    let timeout = boot_timeout(accel);
    let work = tempfile::tempdir().expect("work");

    // The ISO as a CD-ROM: the firmware starts the signed installer, which begins.
    let disk = work.path().join("disk.raw");
    std::fs::File::create(&disk)
        .and_then(|f| f.set_len(std::fs::metadata(&signed.image.image)?.len() + (1 << 30)))
        .expect("empty disk");
    let vars = work.path().join("iso-vars.fd");
    let firmware = Firmware::secure_boot(&vars, &signed.enrolled_store()).expect("firmware");
    let mut config = crust_vm::Config::new(&disk, accel, firmware);
    config.cdrom = Some(dir.join("installer.iso"));
    config.no_reboot = true;
    let mut vm =
        crust_vm::Vm::start(&config, Some(&work.path().join("iso.log")), true).expect("start QEMU");
    vm.wait_for_text(ENABLED, timeout)
        .unwrap_or_else(|e| panic!("{e}"));
    vm.wait_for_text(
        "crust-install: image.raw.zst matches the signed list",
        timeout,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    drop(vm);

    // The netboot UKI on a diskless machine.
    let tftp = work.path().join("tftp");
    std::fs::create_dir(&tftp).expect("tftp folder");
    for name in ["netboot.efi", "root.img", "verity.img"] {
        std::fs::copy(dir.join(name), tftp.join(name)).expect("copy");
    }
    let vars = work.path().join("netboot-vars.fd");
    let firmware = Firmware::secure_boot(&vars, &signed.enrolled_store()).expect("firmware");
    let mut config = crust_vm::Config::new(Path::new(""), accel, firmware);
    config.tftp = Some((tftp, "netboot.efi".into()));
    config.no_reboot = true;
    let mut vm = crust_vm::Vm::start(&config, Some(&work.path().join("netboot.log")), true)
        .expect("start QEMU");
    vm.wait_for_text(ENABLED, timeout)
        .unwrap_or_else(|e| panic!("{e}"));
    let ready = vm
        .wait_for_phase(Phase::Ready, timeout)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(ready.detail.contains("dm-verity root"), "{}", ready.detail);
}
