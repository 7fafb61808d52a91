//! Booting an image on this machine: the serial console on the terminal, the image's
//! writes kept in an overlay so the built image itself stays as built.
//!
//! Each output folder keeps `run.qcow2` (a copy-on-write overlay over `image.raw`) and
//! `efivars.fd` (the firmware's variables), so state such as `/var` and boot counters
//! survives from one `cargo xtask qemu` to the next. A rebuilt image, or `--reset`, starts
//! them afresh.
//!
//! With `--secure-boot` the machine runs OVMF's Secure Boot build, its variables
//! (`efivars-secure-boot.fd`) starting from a store with the profile's PK, KEK and db
//! enrolled and Secure Boot on ([`crust_vm::firmware::enrolled_store`]): the firmware then
//! runs only what the profile's db key signed. Such a machine also has a TPM 2.0
//! ([`crust_vm::tpm::Swtpm`], its state in `tpm/` of the output folder, kept like the
//! overlay), to which the image seals the key of its encrypted `/var`.

use std::path::Path;

use std::time::Duration;

use anyhow::{Context, Result, bail};
use crust_builder::build::outputs;
use crust_builder::report;
use crust_builder::secureboot::{KeySet, Role};
use crust_format::phase::{self, Phase};
use crust_vm::firmware::{self, Firmware};
use crust_vm::tpm::Swtpm;
use crust_vm::{Config, DiskBus, Vm};

use crate::host;
use crate::image;

/// Options of `cargo xtask qemu`.
#[derive(Debug, Clone)]
pub struct QemuOptions {
    /// Attach the disk as NVMe instead of virtio.
    pub nvme: bool,
    /// Discard the overlay and firmware variables first.
    pub reset: bool,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Host-to-guest TCP forwards.
    pub forwards: Vec<(u16, u16)>,
    /// User-data to attach on a NoCloud seed disk.
    pub user_data: Option<std::path::PathBuf>,
    /// User-data to serve from the EC2 IMDSv2 emulator.
    pub imds: Option<std::path::PathBuf>,
    /// Boot with OVMF's Secure Boot firmware, this Secure Boot key folder enrolled.
    pub secure_boot: Option<std::path::PathBuf>,
}

/// The kernel's console line when the firmware booted it with Secure Boot on.
pub const SECURE_BOOT_ENABLED: &str = "secureboot: Secure boot enabled";

/// Prepares the machine for the image in `out_dir`: the overlay and firmware variables
/// (fresh when the image was rebuilt or `reset` is asked), the accelerator, and for Secure
/// Boot the TPM (running until the returned handle is dropped).
fn machine(out_dir: &Path, opts: &QemuOptions) -> Result<(Config, Option<Swtpm>)> {
    host::ensure(&[host::QEMU])?;
    let image = out_dir.join(outputs::IMAGE);
    if !image.is_file() {
        bail!(
            "{} does not exist; build it with `cargo xtask build`",
            image.display()
        );
    }
    let overlay = out_dir.join("run.qcow2");
    let vars = out_dir.join("efivars.fd");
    let secure_vars = out_dir.join("efivars-secure-boot.fd");
    let base_id = std::fs::read_to_string(out_dir.join(outputs::BUILD_ID)).unwrap_or_default();
    let stamp = out_dir.join("run.build-id");
    let stale = std::fs::read_to_string(&stamp).ok().as_deref() != Some(base_id.as_str());
    let tpm_state = out_dir.join("tpm");
    if opts.reset || stale || !overlay.exists() {
        for f in [&overlay, &vars, &secure_vars] {
            let _ = std::fs::remove_file(f);
        }
        // The TPM holds what the old /var's key was sealed under: a new disk, a new TPM.
        let _ = std::fs::remove_dir_all(&tpm_state);
        crust_vm::overlay::create(&image, &overlay)?;
        std::fs::write(&stamp, &base_id)?;
    }
    let accel = crust_vm::accel::detect(&out_dir.join("vmlinuz"), &image::crust_target())?;
    let firmware = match &opts.secure_boot {
        Some(keys) => secure_boot_firmware(out_dir, keys, &secure_vars)?,
        None => Firmware::with_vars(&vars)?,
    };
    let mut config = Config::new(&overlay, accel, firmware);
    let tpm = match &opts.secure_boot {
        Some(_) => {
            let tpm = Swtpm::for_qemu(&tpm_state)?;
            config.tpm = tpm.socket.clone();
            Some(tpm)
        }
        None => None,
    };
    config.bus = if opts.nvme {
        DiskBus::Nvme
    } else {
        DiskBus::Virtio
    };
    config.memory_mib = opts.memory_mib;
    config.forwards = opts.forwards.clone();
    if let Some(user_data) = &opts.user_data {
        crust_vm::seed::attach(&mut config, user_data, &out_dir.join("seed.img"))?;
    }
    if let Some(file) = &opts.imds {
        let data = std::fs::read(file)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
        let handler = [
            std::env::current_exe()?.display().to_string(),
            "imds-connection".to_owned(),
        ];
        crust_vm::imds::Emulator::attach(
            &mut config,
            &out_dir.join("imds"),
            Some(&data),
            &handler,
        )?;
    }
    Ok((config, tpm))
}

/// The Secure Boot key folder of `profile`, for `--secure-boot`: its `secure-boot.keys`, or
/// the development set. A profile without `[secure-boot]` makes unsigned images, which the
/// firmware would refuse: that is an error here rather than a machine that does not boot.
pub fn secure_boot_keys(profile: &Path) -> Result<std::path::PathBuf> {
    let loaded = crust_builder::profile::Profile::load(profile)?;
    match loaded.secure_boot.map(|s| s.keys) {
        Some(Some(dir)) => Ok(dir.value),
        // The build that made the image warned about these.
        Some(None) => Ok(KeySet::development(&image::crust_target().join("keys"))?
            .dir()
            .to_path_buf()),
        None => bail!(
            "{} has no [secure-boot] table: its images are not signed, and Secure Boot \
             firmware would refuse them. Add one (docs/SECURE-BOOT.md) or use \
             --profile qemu-secure-boot",
            profile.display()
        ),
    }
}

/// OVMF's Secure Boot build, the machine's variables in `vars` starting from a store with
/// the PK, KEK and db of the key folder `keys_dir` enrolled. The enrolled store is made
/// afresh each time (a second's work); the machine's copy is kept like the plain one,
/// unless the key set changed.
fn secure_boot_firmware(out_dir: &Path, keys_dir: &Path, vars: &Path) -> Result<Firmware> {
    let keys = KeySet::open(keys_dir)?;
    let tools = host::uefi_tools()?;
    let template = out_dir.join("efivars-secure-boot.template.fd");
    let owner = keys.owner().to_string();
    let (pk, kek, db) = (
        keys.certificate(Role::Pk),
        keys.certificate(Role::Kek),
        keys.certificate(Role::Db),
    );
    let enrolment = firmware::Enrolment {
        owner: &owner,
        pk: &pk,
        kek: &kek,
        db: &db,
    };
    firmware::enrolled_store(&tools.virt_fw_vars, &enrolment, &template)?;
    let stamp = out_dir.join("efivars-secure-boot.owner");
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(owner.as_str()) {
        let _ = std::fs::remove_file(vars);
        std::fs::write(&stamp, &owner)
            .with_context(|| format!("cannot write {}", stamp.display()))?;
    }
    Firmware::secure_boot(vars, &template)
}

/// Boots the image in `out_dir` with the console on this terminal, until QEMU exits.
pub fn interactive(out_dir: &Path, opts: &QemuOptions) -> Result<()> {
    let (config, _tpm) = machine(out_dir, opts)?;
    eprintln!(
        "crust: booting {} under QEMU ({}); Ctrl-A X quits, Ctrl-A C opens the QEMU monitor",
        config.disk.display(),
        config.accel
    );
    let status = config.run_interactive()?;
    if !status.success() {
        bail!("QEMU exited with {status}");
    }
    Ok(())
}

/// Boots the installer ISO in `out_dir` as a CD-ROM with `disks` empty disks (kept in
/// `install-disk<N>.raw` with their own firmware variables until `--reset`, so a machine
/// that installed boots its disk the next time), the console on this terminal.
pub fn interactive_iso(out_dir: &Path, opts: &QemuOptions, disks: usize) -> Result<()> {
    host::ensure(&[host::QEMU])?;
    let iso = out_dir.join(crust_builder::profile::OutputFormat::Iso.file_name());
    if !iso.is_file() {
        bail!(
            "{} does not exist; build it with `cargo xtask build --format iso`",
            iso.display()
        );
    }
    if disks == 0 {
        bail!("--disks must be at least 1: the installer needs a disk to write");
    }
    let image_len = std::fs::metadata(out_dir.join(outputs::IMAGE))
        .with_context(|| format!("cannot read {}", out_dir.join(outputs::IMAGE).display()))?
        .len();
    let vars = out_dir.join("efivars-install.fd");
    let mut paths = Vec::new();
    for i in 0..disks {
        let path = out_dir.join(format!("install-disk{i}.raw"));
        if opts.reset || !path.exists() {
            let file = std::fs::File::create(&path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            // Sparse: room for the image and 1 GiB of /var growth.
            file.set_len(image_len + (1 << 30))?;
            let _ = std::fs::remove_file(&vars);
        }
        paths.push(path);
    }
    if opts.reset {
        let _ = std::fs::remove_file(&vars);
    }
    let accel = crust_vm::accel::detect(&out_dir.join("vmlinuz"), &image::crust_target())?;
    let mut config = Config::new(&paths[0], accel, Firmware::with_vars(&vars)?);
    config.memory_mib = opts.memory_mib;
    config.forwards = opts.forwards.clone();
    config.cdrom = Some(iso);
    config.data_drives = crust_vm::DataDrive::numbered(&paths[1..]);
    eprintln!(
        "crust: booting the installer {} under QEMU ({}) with {disks} disk(s) ({}); Ctrl-A X \
         quits",
        out_dir.join("installer.iso").display(),
        config.accel,
        paths
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let status = config.run_interactive()?;
    if !status.success() {
        bail!("QEMU exited with {status}");
    }
    Ok(())
}

/// Boots `out_dir` by UEFI PXE from QEMU's own TFTP server, which serves `netboot-tftp/`
/// (hard links), and serves the same folder by HTTP on port [`NETBOOT_HTTP_PORT`] of this
/// machine (nginx, when it is installed), the console on this terminal. Live: `netboot.efi`, `root.img` and
/// `verity.img` on a diskless machine. `install`: `installer.efi` with the release's
/// `SHA256SUMS`, its signature and `image.raw.zst`, and one empty disk
/// (`install-disk0.raw`, kept until `--reset`, as for `--iso`).
pub fn interactive_netboot(out_dir: &Path, opts: &QemuOptions, install: bool) -> Result<()> {
    use crust_builder::profile::OutputFormat;
    host::ensure(&[host::QEMU])?;
    let tftp = out_dir.join("netboot-tftp");
    let _ = std::fs::remove_dir_all(&tftp);
    std::fs::create_dir_all(&tftp).with_context(|| format!("cannot create {}", tftp.display()))?;
    let (files, boot, format): (&[&str], &str, &str) = if install {
        (
            &[
                crust_format::install::INSTALLER_UKI,
                crust_format::install::IMAGE,
                crust_builder::release::SUMS,
                crust_builder::release::SUMS_SIG,
            ],
            crust_format::install::INSTALLER_UKI,
            "iso",
        )
    } else {
        (
            OutputFormat::Netboot.file_names(),
            crust_format::install::NETBOOT_UKI,
            "netboot",
        )
    };
    for name in files {
        let from = out_dir.join(name);
        if !from.is_file() {
            bail!(
                "{} does not exist; build it with `cargo xtask build --format {format}`",
                from.display()
            );
        }
        crust_builder::output::link_or_copy(&from, &tftp.join(name))?;
    }
    let accel = crust_vm::accel::detect(&out_dir.join("vmlinuz"), &image::crust_target())?;
    let vars = out_dir.join("efivars-netboot.fd");
    let disk = if install {
        let path = out_dir.join("install-disk0.raw");
        if opts.reset || !path.exists() {
            let len = std::fs::metadata(out_dir.join(outputs::IMAGE))?.len();
            std::fs::File::create(&path)
                .and_then(|f| f.set_len(len + (1 << 30)))
                .with_context(|| format!("cannot create {}", path.display()))?;
            let _ = std::fs::remove_file(&vars);
        }
        path
    } else {
        let _ = std::fs::remove_file(&vars);
        std::path::PathBuf::new()
    };
    let mut config = Config::new(&disk, accel, Firmware::with_vars(&vars)?);
    config.memory_mib = opts.memory_mib;
    config.forwards = opts.forwards.clone();
    config.tftp = Some((tftp.clone(), boot.into()));
    // The same folder over HTTP on this machine, which the guest reaches as 10.0.2.2: a
    // netboot UKI built with `--netboot-url` for it fetches its images from there.
    let listen = format!("127.0.0.1:{NETBOOT_HTTP_PORT}");
    let web = match crust_vm::web::Web::serve(&tftp, &listen, &out_dir.join("netboot-web"), None) {
        Ok(web) => {
            eprintln!(
                "crust: {} also served by HTTP at http://{listen}/, which the guest reaches as \
                 http://10.0.2.2:{NETBOOT_HTTP_PORT}/ (a netboot UKI built with \
                 `--netboot-url http://10.0.2.2:{NETBOOT_HTTP_PORT}/` fetches root.img and \
                 verity.img from it; without one the init fetches them by TFTP)",
                tftp.display()
            );
            Some(web)
        }
        Err(e) => {
            eprintln!(
                "crust: warning: not serving {} by HTTP: {e:#}",
                tftp.display()
            );
            None
        }
    };
    eprintln!(
        "crust: network-booting {boot} from {} under QEMU ({}), {}; Ctrl-A X quits",
        tftp.display(),
        config.accel,
        if install {
            format!("disk {}", disk.display())
        } else {
            "no disk".into()
        }
    );
    let status = config.run_interactive()?;
    drop(web);
    if !status.success() {
        bail!("QEMU exited with {status}");
    }
    Ok(())
}

/// The port on this machine where `cargo xtask qemu --netboot` serves the netboot folder by
/// HTTP (fixed, so that a URL built into a netboot UKI stays right).
pub const NETBOOT_HTTP_PORT: u16 = 8069;

/// GETs `/` from the host side of a port forward; returns the body (or the status line).
fn fetch_page(port: u16) -> Result<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(b"GET / HTTP/1.0\r\nHost: crust\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head.lines().next().unwrap_or("no answer");
    Ok(format!("{status}\n{}", body.trim()))
}

/// Boots the image without a terminal, shows that it came up (the init's phases and its
/// ready line), then presses the ACPI power button and waits for a clean power-off.
pub fn demonstrate(out_dir: &Path, opts: &QemuOptions) -> Result<()> {
    let (mut config, _tpm) = machine(out_dir, opts)?;
    config.qmp_socket = Some(out_dir.join("qmp.sock"));
    config.no_reboot = true;
    let log = out_dir.join("console.log");
    eprintln!(
        "crust: booting {} under QEMU ({}), console below and in {}",
        config.disk.display(),
        config.accel,
        log.display()
    );
    let mut vm = Vm::start(&config, Some(&log), true)?;
    let bound = match config.accel {
        crust_vm::Accel::Kvm => Duration::from_secs(120),
        crust_vm::Accel::Tcg => Duration::from_secs(300),
    };
    let services = vm.wait_for_phase(Phase::Services, bound)?;
    let ready = vm.wait_for_phase(Phase::Ready, bound)?;
    let booted = vm.elapsed();
    // Services with health checks mark the boot healthy; wait for that before looking.
    let checked = !services.detail.contains("(0 with health checks)")
        && services.detail.starts_with("started");
    let healthy = if checked {
        Some(vm.wait_for_phase(Phase::Healthy, bound)?)
    } else {
        None
    };
    let secure_boot = vm
        .console()
        .history()
        .iter()
        .any(|l| l.contains(SECURE_BOOT_ENABLED));
    if opts.secure_boot.is_some() && !secure_boot {
        bail!(
            "the machine came up without Secure Boot: the kernel never said \"{SECURE_BOOT_ENABLED}\""
        );
    }
    let phases: Vec<String> = vm
        .console()
        .history()
        .iter()
        .filter_map(|l| phase::parse_line(l))
        .filter(|p| p.phase != Phase::Warning)
        .map(|p| format!("{} {:.2}s", p.phase, p.at.as_secs_f64()))
        .collect();
    let pages: Vec<String> = config
        .forwards
        .iter()
        .map(|(host, guest)| match fetch_page(*host) {
            Ok(page) => format!("guest port {guest} (host 127.0.0.1:{host}) answers:\n{page}"),
            Err(e) => format!("guest port {guest} (host 127.0.0.1:{host}): {e}"),
        })
        .collect();
    vm.qmp()?.system_powerdown()?;
    vm.wait_for_phase(Phase::PowerOff, Duration::from_secs(60))?;
    let status = vm.wait_exit(Duration::from_secs(60))?;
    eprintln!();
    report::status(
        "Up",
        format!(
            "{} ({:.1}s after QEMU started)",
            ready.detail,
            booted.as_secs_f64()
        ),
    );
    report::status(
        "Phases",
        format!("since kernel start: {}", phases.join(", ")),
    );
    if secure_boot {
        report::status(
            "Secure Boot",
            format!("enforced by the firmware; the kernel says \"{SECURE_BOOT_ENABLED}\""),
        );
    }
    if let Some(h) = healthy {
        report::status("Healthy", h.detail);
    }
    for page in pages {
        report::status("Fetched", page);
    }
    report::status(
        "Off",
        format!("clean power-off on the ACPI power button (QEMU {status})"),
    );
    Ok(())
}
