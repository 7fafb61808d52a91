//! The services' memory, together: `memory.max` of their parent cgroup (`/crust`), set
//! below the machine's memory. A service that leaks is then killed by its cgroup's OOM
//! killer as soon as the services together reach the cap, instead of the whole machine
//! reclaiming PID 1's and the update agent's pages until the global OOM killer acts
//! (under emulation, a stall of minutes). Each service's own limits (`pids-max`,
//! `memory`) are the runner's.

use std::fs;
use std::path::Path;

use crust_format::service::CGROUP_PARENT;

use crate::console;

/// What the kernel, PID 1 and its agents keep at least, and at most.
const KEPT_MIN: u64 = 160 << 20;
const KEPT_MAX: u64 = 1 << 30;

/// Sets the cap under `cgroup_root` from `/proc/meminfo`; says so when it cannot.
pub fn cap_services_memory(cgroup_root: &Path) {
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let Some(total) = mem_total(&meminfo) else {
        console::warning(
            "cannot read MemTotal from /proc/meminfo; the services' memory is not capped",
        );
        return;
    };
    let max = services_memory_max(total);
    let dir = cgroup_root.join(CGROUP_PARENT);
    let set =
        fs::create_dir_all(&dir).and_then(|()| fs::write(dir.join("memory.max"), max.to_string()));
    if let Err(e) = set {
        console::warning(&format!(
            "cannot cap the services' memory at {} MiB in {}: {e}",
            max >> 20,
            dir.display()
        ));
    }
}

/// `MemTotal` of `/proc/meminfo`, in bytes.
fn mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// What the services may use together: the machine's memory less what the kernel, PID 1
/// and its agents keep (an eighth, at least [`KEPT_MIN`] and at most [`KEPT_MAX`]).
fn services_memory_max(total: u64) -> u64 {
    let kept = (total / 8).clamp(KEPT_MIN, KEPT_MAX);
    total.saturating_sub(kept).max(64 << 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_total_is_read_in_bytes() {
        let meminfo = "MemTotal:         975864 kB\nMemFree:           43680 kB\n";
        assert_eq!(mem_total(meminfo), Some(975_864 * 1024));
        assert_eq!(mem_total("MemFree: 1 kB\n"), None);
        assert_eq!(mem_total("MemTotal: lots kB\n"), None);
    }

    #[test]
    fn the_host_keeps_an_eighth_within_bounds() {
        const MIB: u64 = 1 << 20;
        // A 1 GiB test machine: 160 MiB kept.
        assert_eq!(services_memory_max(953 * MIB), 793 * MIB);
        // 4 GiB: an eighth.
        assert_eq!(services_memory_max(4096 * MIB), 3584 * MIB);
        // 64 GiB: 1 GiB.
        assert_eq!(services_memory_max(65536 * MIB), 64512 * MIB);
        // A tiny machine still lets services run.
        assert_eq!(services_memory_max(100 * MIB), 64 * MIB);
    }
}
