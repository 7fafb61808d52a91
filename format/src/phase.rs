//! The console line format of the init, shared with the tests and the benchmark that read it.
//!
//! Every phase prints exactly one line `[SSSSS.UUUUUU] crust: <phase>: <detail>`, where the
//! bracket holds the monotonic clock in seconds (the same clock and layout as the kernel's own
//! console timestamps, so the two interleave readably). Errors use the phase `error` and name
//! the check that failed.

use std::fmt;
use std::time::Duration;

/// The phases of a boot, in order, and the other events the init reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Phase {
    /// Stage 1 started (the kernel ran `/init`).
    Init,
    /// Kernel modules loaded.
    Modules,
    /// Manifest signature verified.
    Manifest,
    /// Boot disk and the slot's partitions found.
    Disk,
    /// dm-verity device set up.
    Verity,
    /// Root file system mounted.
    Root,
    /// Switching to the verified root.
    SwitchRoot,
    /// Stage 2 started in the verified root.
    Stage2,
    /// The state partition checked, grown if the disk is larger, and mounted on `/var`.
    State,
    /// The host configuration read (user-data from the command line, NoCloud, EC2 IMDS, or
    /// the image's default) and applied (hostname, sysctls, modules).
    Config,
    /// The data volumes declared by the profile and user-data: found, and handed to a
    /// helper that formats (if empty), checks, assembles and mounts them under `/var/mnt`
    /// while the boot goes on.
    Volumes,
    /// Network interfaces configured (DHCP or static).
    Network,
    /// The clock set from a time server.
    Clock,
    /// The host's services (containers) started.
    Services,
    /// The host is up.
    Ready,
    /// Every service with a health check passed it: the boot counts as good.
    Healthy,
    /// Shutdown requested.
    Shutdown,
    /// Last line before power-off or reboot.
    PowerOff,
    /// A check failed; the machine reboots.
    Error,
    /// Something is off but the boot goes on (not a phase: may appear any number of times).
    Warning,
}

impl Phase {
    /// Every phase, in boot order.
    pub const ALL: [Phase; 20] = [
        Phase::Init,
        Phase::Modules,
        Phase::Manifest,
        Phase::Disk,
        Phase::Verity,
        Phase::Root,
        Phase::SwitchRoot,
        Phase::Stage2,
        Phase::State,
        Phase::Config,
        Phase::Volumes,
        Phase::Network,
        Phase::Clock,
        Phase::Services,
        Phase::Ready,
        Phase::Healthy,
        Phase::Shutdown,
        Phase::PowerOff,
        Phase::Error,
        Phase::Warning,
    ];

    /// The name printed on the console.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Init => "init",
            Phase::Modules => "modules",
            Phase::Manifest => "manifest",
            Phase::Disk => "disk",
            Phase::Verity => "verity",
            Phase::Root => "root",
            Phase::SwitchRoot => "switch-root",
            Phase::Stage2 => "stage2",
            Phase::State => "state",
            Phase::Config => "config",
            Phase::Volumes => "volumes",
            Phase::Network => "network",
            Phase::Clock => "clock",
            Phase::Services => "services",
            Phase::Healthy => "healthy",
            Phase::Ready => "ready",
            Phase::Shutdown => "shutdown",
            Phase::PowerOff => "poweroff",
            Phase::Error => "error",
            Phase::Warning => "warning",
        }
    }

    /// The phase with this console name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == name)
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One parsed console line of the init.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhaseLine {
    /// Monotonic time of the event.
    pub at: Duration,
    /// The phase.
    pub phase: Phase,
    /// Free text after the phase name.
    pub detail: String,
}

/// Formats a console line.
pub fn format_line(at: Duration, phase: Phase, detail: &str) -> String {
    format!(
        "[{:5}.{:06}] crust: {}: {}",
        at.as_secs(),
        at.subsec_micros(),
        phase.as_str(),
        detail
    )
}

/// Parses a console line; `None` for any other line (kernel messages and the like). Leading
/// noise before the `[` (such as a serial console's escape codes) is skipped.
pub fn parse_line(line: &str) -> Option<PhaseLine> {
    let start = line.find("] crust: ")?;
    let open = line[..start].rfind('[')?;
    let stamp = line[open + 1..start].trim();
    let (secs, micros) = stamp.split_once('.')?;
    let at = Duration::from_secs(secs.parse().ok()?) + Duration::from_micros(micros.parse().ok()?);
    let rest = &line[start + "] crust: ".len()..];
    let (name, detail) = rest
        .split_once(": ")
        .unwrap_or((rest.trim_end_matches(':'), ""));
    Some(PhaseLine {
        at,
        phase: Phase::from_name(name)?,
        detail: detail.trim_end().to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip() {
        let at = Duration::from_micros(12_345_678);
        let line = format_line(at, Phase::Verity, "root a1b2 on vda2+vda3");
        assert_eq!(line, "[   12.345678] crust: verity: root a1b2 on vda2+vda3");
        let parsed = parse_line(&format!("\x1b[0m{line}\r")).unwrap();
        assert_eq!(parsed.at, at);
        assert_eq!(parsed.phase, Phase::Verity);
        assert_eq!(parsed.detail, "root a1b2 on vda2+vda3");
    }

    #[test]
    fn other_lines_are_ignored() {
        assert_eq!(
            parse_line("[    1.000000] virtio_blk virtio1: [vda] 2 GiB"),
            None
        );
        assert_eq!(parse_line("[    1.000000] crust: nonsense: x"), None);
    }
}
