//! The init's own memory, as the kernel counts it (`/proc/self/status`), for the console:
//! the resident size after boot and the peak during an update, so that "PID 1 stays small"
//! is a measured fact (docs/ROBUSTNESS.md).
//!
//! PID 1 is never chosen by the kernel's OOM killer (it spares the global init), so a
//! service that leaks until the OOM killer acts takes down itself, not the init or the
//! update agent running on the init's threads.

use std::io::Read;

/// A `/proc/self/status` field in KiB (`VmRSS`, `VmHWM`).
fn status_kib(field: &str) -> Option<u64> {
    let mut text = String::new();
    std::fs::File::open("/proc/self/status")
        .ok()?
        .take(16 << 10)
        .read_to_string(&mut text)
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or("unknown".into(), |k| {
        format!("{:.1} MiB", k as f64 / 1024.0)
    })
}

/// The resident size now, e.g. `3.2 MiB`.
pub fn resident() -> String {
    mib(status_kib("VmRSS"))
}

/// The largest resident size so far (all threads), e.g. `4.0 MiB`.
pub fn peak_resident() -> String {
    mib(status_kib("VmHWM"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_a_resident_size() {
        assert!(resident().ends_with(" MiB"), "{}", resident());
        assert!(peak_resident().ends_with(" MiB"));
        assert_eq!(mib(Some(1536)), "1.5 MiB");
        assert_eq!(mib(None), "unknown");
    }
}
