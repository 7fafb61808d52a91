//! Booting an image on this machine: the serial console on the terminal, the image's
//! writes kept in an overlay so the built image itself stays as built.
//!
//! Each output folder keeps `run.qcow2` (a copy-on-write overlay over `image.raw`) and
//! `efivars.fd` (the firmware's variables), so state such as `/var` and boot counters
//! survives from one `cargo xtask qemu` to the next. A rebuilt image, or `--reset`, starts
//! them afresh.

use std::path::Path;

use anyhow::{Result, bail};
use crust_builder::build::outputs;
use crust_vm::{Config, DiskBus, firmware::Firmware};

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

/// Boots the image in `out_dir` interactively.
pub fn run(out_dir: &Path, opts: &QemuOptions) -> Result<()> {
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
    eprintln!(
        "crust: booting {} under QEMU ({accel}); Ctrl-A X quits, Ctrl-A C opens the QEMU monitor",
        image.display()
    );
    let status = config.run_interactive()?;
    if !status.success() {
        bail!("QEMU exited with {status}");
    }
    Ok(())
}
