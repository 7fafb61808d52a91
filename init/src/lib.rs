//! Crust's PID 1, as a library: the binary (`src/main.rs`) only calls [`run`].
//!
//! One static binary, two stages: in the initramfs (marked by `/etc/initrd-release`) it
//! verifies the signed manifest, sets up the dm-verity root and switches to it; in the
//! verified root it proves `/` is verified and supervises the host until power-off.
//!
//! PID 1 must never exit or unwind (either panics the kernel, and a kernel panic hides
//! what went wrong). Every failure — an error or a panic — prints one `error` line naming
//! the failed check, waits `crust.reboot_delay` seconds so a person can read it, and
//! reboots, so that boot counting can fall back to the other slot.
//!
//! Code map: [`stage1`] and [`stage2`] read top to bottom as the boot does; [`modules`],
//! [`manifest`], [`efivar`], [`disk`], [`dm`] and [`switch_root`] are stage 1's steps;
//! [`power`] and [`shutdown`] are stage 2's, as are [`config`] (user-data), [`volumes`]
//! (data disks, set up by a helper process: this binary started again by PID 1),
//! [`net`] (DHCP and static addressing) and [`clock`] (SNTP); [`console`], [`cmdline`],
//! [`mounts`], [`devnode`], [`bootinfo`] and [`error`] serve both. [`tpm`] speaks to the
//! TPM 2.0 (both stages measure into it; stage 2 unseals the key of the encrypted `/var`,
//! [`sealed`]). `unsafe` is kept to the system
//! calls nix does not wrap: the device-mapper ioctl in [`dm`], `BLKPG` and the ext4 resize
//! in [`grow`], `getrandom` in [`random`] (and its blocking form in [`sealed`]) and `adjtime` in
//! [`clock`].
//!
//! The library exists so that the parsers of untrusted bytes can be fuzzed without
//! exposing the init: every module is private but [`fuzz`], whose functions each feed one
//! parser arbitrary bytes the way PID 1 does (`fuzz/` holds the cargo-fuzz targets,
//! `docs/ROBUSTNESS.md` the figures). PID 1 never calls them; the `init` profile's
//! link-time optimisation leaves them out of the binary.

mod bootinfo;
mod clock;
mod cmdline;
mod config;
mod console;
mod devnode;
mod disk;
mod dm;
mod efivar;
mod error;
mod event;
mod fleet;
pub mod fuzz;
mod grow;
mod http;
mod install;
mod manifest;
mod memory;
mod modules;
mod mounts;
mod net;
mod netboot;
mod observe;
mod power;
mod random;
mod sealed;
mod services;
mod shutdown;
mod stage1;
mod stage2;
mod state;
mod switch_root;
mod tpm;
mod update;
mod volumes;

use std::io::Write;
use std::panic::PanicHookInfo;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crust_format::initrd;
use crust_format::phase::Phase;

use crate::error::Error;
use crate::shutdown::Action;

/// This init's version, printed in the first console line.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The reboot delay in seconds; the panic hook reads it, so it lives outside any stage.
static REBOOT_DELAY_SECS: AtomicU64 = AtomicU64::new(cmdline::DEFAULT_REBOOT_DELAY.as_secs());

/// Sets the pause between an error line and the reboot.
pub fn set_reboot_delay(delay: Duration) {
    REBOOT_DELAY_SECS.store(delay.as_secs(), Ordering::Relaxed);
}

fn reboot_delay() -> Duration {
    Duration::from_secs(REBOOT_DELAY_SECS.load(Ordering::Relaxed))
}

/// The running kernel's release (`uname -r`).
pub fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".into())
}

/// PID 1's entry point (the binary's `main`): stage 1 in the initramfs, stage 2 in the
/// verified root. It never returns: a failure or a panic reboots. Run as any other process,
/// it explains itself and exits.
pub fn run() -> ! {
    if nix::unistd::getpid().as_raw() != 1 {
        not_pid1();
    }
    std::panic::set_hook(Box::new(on_panic));
    let failed = if Path::new("/").join(initrd::STAGE1_MARKER).exists() {
        stage1::run()
    } else {
        stage2::run()
    };
    match failed {
        Err(error) => fail(&error),
        Ok(never) => match never {},
    }
}

/// Run by hand: explain, and do nothing else (mounting or rebooting would be a surprise).
/// The one exception is the volume helper, which PID 1 starts itself ([`volumes::helper`]).
fn not_pid1() -> ! {
    if std::env::args().nth(1).as_deref() == Some(volumes::HELPER_ARG) {
        volumes::helper::main();
    }
    if std::env::args().skip(1).any(|a| a == "--version") {
        println!("crust-init {VERSION}");
        std::process::exit(0);
    }
    eprintln!(
        "crust-init {VERSION}: this is Crust's PID 1; the kernel starts it (it mounts file \
         systems, sets up the verified root and powers the machine off), so it does nothing \
         as process {}. Try --version.",
        std::process::id()
    );
    std::process::exit(2);
}

/// Reports a failed check and reboots (setting the running version aside first if the
/// failure came from a corrupted root and the other slot can boot instead).
fn fail(error: &Error) -> ! {
    update::corruption::after_failure();
    let delay = reboot_delay();
    console::phase(
        Phase::Error,
        &format!("{error}; rebooting in {} s", delay.as_secs()),
    );
    std::thread::sleep(delay);
    shutdown::halt(Action::Reboot)
}

/// The panic hook: the `init` profile aborts on panic, and the hook runs first. It never
/// returns, so the abort (and the kernel panic it would cause) never comes.
fn on_panic(info: &PanicHookInfo<'_>) {
    let message = info
        .payload()
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| info.payload().downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into());
    let place = info
        .location()
        .map(|l| format!(" at {}:{}", l.file(), l.line()))
        .unwrap_or_default();
    let delay = reboot_delay();
    // stderr, not stdout: a panic inside a console write must not wait on stdout's lock.
    let line = crust_format::phase::format_line(
        console::now(),
        Phase::Error,
        &format!(
            "panic: {message}{place}; this is a bug in crust-init, please report it; \
             rebooting in {} s",
            delay.as_secs()
        ),
    );
    let _ = writeln!(std::io::stderr(), "{}", line.replace(['\n', '\r'], " "));
    std::thread::sleep(delay);
    shutdown::halt(Action::Reboot)
}
