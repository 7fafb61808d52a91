//! Choosing the accelerator: KVM when a short probe boot shows it works, TCG otherwise.
//!
//! `/dev/kvm` existing proves little: under nested virtualisation QEMU may abort ("failed to
//! set MSR") or the guest may hang early. The probe boots the real kernel under KVM with no
//! root file system and waits for its "cannot mount root" panic, which it reaches only if
//! the whole kernel start worked. The answer is cached per host boot
//! (`/proc/sys/kernel/random/boot_id`), so only the first run of a boot pays for it.
//! `CRUST_ACCEL=kvm|tcg` skips the probe.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A QEMU accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualisation.
    Kvm,
    /// QEMU's software emulation.
    Tcg,
}

impl Accel {
    /// The name QEMU uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

impl std::fmt::Display for Accel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How long the probe may take; a working KVM boots to the panic in a second or two.
const PROBE_TIMEOUT: Duration = Duration::from_secs(20);

/// Picks the accelerator: `CRUST_ACCEL` if set, else the cached or fresh probe result.
/// `kernel` is a bzImage to probe with; `cache_dir` holds the cached answer.
pub fn detect(kernel: &Path, cache_dir: &Path) -> Result<Accel> {
    match std::env::var("CRUST_ACCEL").as_deref() {
        Ok("kvm") => return Ok(Accel::Kvm),
        Ok("tcg") => return Ok(Accel::Tcg),
        Ok("auto") | Err(_) => {}
        Ok(other) => bail!("CRUST_ACCEL={other:?}: use kvm, tcg or auto"),
    }
    if std::fs::metadata("/dev/kvm").is_err() {
        return Ok(Accel::Tcg);
    }
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let cache = cache_dir.join("kvm-probe");
    if let Ok(text) = std::fs::read_to_string(&cache)
        && let Some((id, answer)) = text.split_once(' ')
        && id == boot_id.trim()
    {
        return Ok(if answer.trim() == "kvm" {
            Accel::Kvm
        } else {
            Accel::Tcg
        });
    }
    let accel = if probe_kvm(kernel)? {
        Accel::Kvm
    } else {
        Accel::Tcg
    };
    std::fs::create_dir_all(cache_dir).ok();
    std::fs::write(&cache, format!("{} {accel}\n", boot_id.trim())).ok();
    Ok(accel)
}

/// Boots `kernel` under KVM without a root file system; true if it reaches its panic.
fn probe_kvm(kernel: &Path) -> Result<bool> {
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-machine",
            "q35,accel=kvm",
            "-cpu",
            "host",
            "-m",
            "256",
            "-nodefaults",
        ])
        .args([
            "-no-user-config",
            "-display",
            "none",
            "-serial",
            "stdio",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(kernel)
        .args(["-append", "console=ttyS0 panic=-1 loglevel=4"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot run qemu-system-x86_64 (install qemu-system-x86)")?;
    let mut stdout = child.stdout.take().context("no QEMU stdout")?;
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let start = Instant::now();
    while start.elapsed() < PROBE_TIMEOUT {
        if child.try_wait()?.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    let text = reader.join().unwrap_or_default();
    Ok(text.contains("Kernel panic") || text.contains("Unable to mount root"))
}
