//! The reference floor of `cargo xtask bench`: the least an init can do.
//!
//! The benchmark boots the image's own kernel, through the same firmware and boot loader,
//! with an initramfs holding only this program. It prints one phase line in the init's
//! format (`[seconds] crust: init: …`, CLOCK_MONOTONIC like the kernel's own stamps), so
//! the benchmark sees when user space began, and powers the machine off at once. Every boot
//! figure of the real image is compared with how long this takes.

use std::io::Write;
use std::time::Duration;

use crust_format::phase::{self, Phase};
use nix::sys::reboot::{RebootMode, reboot};
use nix::time::{ClockId, clock_gettime};

fn main() {
    let now = clock_gettime(ClockId::CLOCK_MONOTONIC)
        .map(|t| {
            Duration::new(
                u64::try_from(t.tv_sec()).unwrap_or(0),
                u32::try_from(t.tv_nsec()).unwrap_or(0),
            )
        })
        .unwrap_or_default();
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{}",
        phase::format_line(now, Phase::Init, "reference floor: powering off")
    );
    let _ = out.flush();
    drop(out);
    // Nothing was written anywhere, so there is nothing to sync.
    let _ = reboot(RebootMode::RB_POWER_OFF);
    // PID 1 must not exit (the kernel would panic): wait for the power to go.
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
