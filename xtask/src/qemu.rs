//! Booting an image on this machine: the serial console on the terminal, the image's
//! writes kept in an overlay so the built image itself stays as built.
//!
//! Each output folder keeps `run.qcow2` (a copy-on-write overlay over `image.raw`) and
//! `efivars.fd` (the firmware's variables), so state such as `/var` and boot counters
//! survives from one `cargo xtask qemu` to the next. A rebuilt image, or `--reset`, starts
//! them afresh.

use std::path::Path;

use std::time::Duration;

use anyhow::{Result, bail};
use crust_builder::build::outputs;
use crust_builder::report;
use crust_format::phase::{self, Phase};
use crust_vm::{Config, DiskBus, Vm, firmware::Firmware};

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
}

/// Prepares the machine for the image in `out_dir`: the overlay and firmware variables
/// (fresh when the image was rebuilt or `reset` is asked) and the accelerator.
fn machine(out_dir: &Path, opts: &QemuOptions) -> Result<Config> {
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
    let base_id = std::fs::read_to_string(out_dir.join(outputs::BUILD_ID)).unwrap_or_default();
    let stamp = out_dir.join("run.build-id");
    let stale = std::fs::read_to_string(&stamp).ok().as_deref() != Some(base_id.as_str());
    if opts.reset || stale || !overlay.exists() {
        for f in [&overlay, &vars] {
            let _ = std::fs::remove_file(f);
        }
        crust_vm::overlay::create(&image, &overlay)?;
        std::fs::write(&stamp, &base_id)?;
    }
    let accel = crust_vm::accel::detect(&out_dir.join("vmlinuz"), &image::crust_target())?;
    let mut config = Config::new(&overlay, accel, Firmware::with_vars(&vars)?);
    config.bus = if opts.nvme {
        DiskBus::Nvme
    } else {
        DiskBus::Virtio
    };
    config.memory_mib = opts.memory_mib;
    config.forwards = opts.forwards.clone();
    Ok(config)
}

/// Boots the image in `out_dir` with the console on this terminal, until QEMU exits.
pub fn interactive(out_dir: &Path, opts: &QemuOptions) -> Result<()> {
    let config = machine(out_dir, opts)?;
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

/// Boots the image without a terminal, shows that it came up (the init's phases and its
/// ready line), then presses the ACPI power button and waits for a clean power-off.
pub fn demonstrate(out_dir: &Path, opts: &QemuOptions) -> Result<()> {
    let mut config = machine(out_dir, opts)?;
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
    let ready = vm.wait_for_phase(Phase::Ready, bound)?;
    let booted = vm.elapsed();
    let phases: Vec<String> = vm
        .console()
        .history()
        .iter()
        .filter_map(|l| phase::parse_line(l))
        .map(|p| format!("{} {:.2}s", p.phase, p.at.as_secs_f64()))
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
    report::status(
        "Off",
        format!("clean power-off on the ACPI power button (QEMU {status})"),
    );
    Ok(())
}
