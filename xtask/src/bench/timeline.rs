//! One boot's console read as a timeline: when the firmware handed over, when the kernel
//! started, when each phase of the init and each service event happened.
//!
//! Two clocks meet here. The host stamps every console line with its arrival, in seconds
//! since QEMU was started (power-on); the guest stamps its own lines with its monotonic
//! clock, which starts with the kernel. The firmware and the boot loader have no clock of
//! their own, so they are seen by arrival only. The kernel's start on the host clock is
//! estimated as the smallest `arrival - stamp` over all stamped lines: a line can reach
//! the host late (the kernel buffers its first messages until the serial console is up)
//! but never before it was stamped, so the smallest difference is the tightest bound.
//! Every guest time then also has a place on the host clock: `kernel start + stamp`.

use crust_format::phase::{self, Phase};

/// A console line and when the host received it.
#[derive(Debug, Clone, PartialEq)]
pub struct TimedLine {
    /// Seconds since QEMU was started.
    pub at: f64,
    /// The line, without its line ending.
    pub text: String,
}

/// A service's own console line (`[stamp] <name>: <text>`).
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceEvent {
    /// The service.
    pub service: String,
    /// Guest clock, seconds since kernel start.
    pub at: f64,
    /// What it said.
    pub text: String,
}

/// What one boot's console shows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Timeline {
    /// Host seconds at which the firmware started the boot loader (`BdsDxe: starting`).
    pub loader: Option<f64>,
    /// Host seconds at which the UKI's EFI stub spoke (`EFI stub: …`).
    pub stub: Option<f64>,
    /// Estimated host seconds at which the kernel's clock started.
    pub kernel_start: Option<f64>,
    /// The first line of each init phase, on the guest clock, in console order.
    pub phases: Vec<(Phase, f64)>,
    /// Service events, on the guest clock, in console order.
    pub services: Vec<ServiceEvent>,
}

/// One named figure of a boot.
#[derive(Debug, Clone, PartialEq)]
pub struct Mark {
    /// What happened (`kernel start`, a phase name, `demo answering`, …).
    pub name: String,
    /// Guest clock (seconds since kernel start), for events the guest stamped.
    pub kernel: Option<f64>,
    /// Seconds since power-on (QEMU start) on the host clock.
    pub since_power_on: Option<f64>,
}

/// Name of the mark for the host seeing the firmware start the boot loader.
pub const LOADER: &str = "boot loader started";
/// Name of the mark for the UKI's stub running.
pub const STUB: &str = "UKI stub running";
/// Name of the mark for the kernel's clock starting.
pub const KERNEL: &str = "kernel start";
/// Name of the mark for the demo service's first answer to the host.
pub const ANSWERING: &str = "demo answering";

/// The phases a boot chart and the table show: the boot itself, not its end.
pub fn boot_phases() -> impl Iterator<Item = Phase> {
    Phase::ALL.into_iter().filter(|p| {
        !matches!(
            p,
            Phase::Shutdown | Phase::PowerOff | Phase::Error | Phase::Warning
        )
    })
}

/// The guest's stamp of a console line (`[   12.345678] …`) and the text after it.
/// Escape sequences before the bracket (the firmware clears the screen) are skipped.
pub fn kernel_stamp(line: &str) -> Option<(f64, &str)> {
    let mut from = 0;
    while let Some(open) = line[from..].find('[').map(|i| i + from) {
        from = open + 1;
        let close = line[open..].find(']').map(|i| i + open)?;
        let inside = line[open + 1..close].trim_start();
        let Some((secs, micros)) = inside.split_once('.') else {
            continue;
        };
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if digits(secs) && micros.len() == 6 && digits(micros) {
            let at = secs.parse::<f64>().ok()? + micros.parse::<f64>().ok()? / 1e6;
            return Some((at, line[close + 1..].trim_start()));
        }
    }
    None
}

impl Timeline {
    /// Reads a boot's console; `services` names the services whose lines to collect.
    pub fn read(lines: &[TimedLine], services: &[String]) -> Self {
        let mut t = Timeline::default();
        for line in lines {
            if t.loader.is_none() && line.text.contains("BdsDxe: starting") {
                t.loader = Some(line.at);
            }
            if t.stub.is_none() && line.text.contains("EFI stub:") {
                t.stub = Some(line.at);
            }
            let Some((stamp, rest)) = kernel_stamp(&line.text) else {
                continue;
            };
            let offset = line.at - stamp;
            if t.kernel_start.is_none_or(|k| offset < k) {
                t.kernel_start = Some(offset);
            }
            if let Some(p) = phase::parse_line(&line.text) {
                if !t.phases.iter().any(|(q, _)| *q == p.phase) {
                    t.phases.push((p.phase, p.at.as_secs_f64()));
                }
                continue;
            }
            if let Some((name, text)) = rest.split_once(": ")
                && services.iter().any(|s| s == name)
            {
                t.services.push(ServiceEvent {
                    service: name.to_owned(),
                    at: stamp,
                    text: text.trim_end().to_owned(),
                });
            }
        }
        t
    }

    /// The guest time of `phase`'s first line.
    pub fn phase(&self, phase: Phase) -> Option<f64> {
        self.phases
            .iter()
            .find(|(p, _)| *p == phase)
            .map(|(_, at)| *at)
    }

    /// A guest time placed on the host clock.
    pub fn on_host(&self, guest: f64) -> Option<f64> {
        self.kernel_start.map(|k| k + guest)
    }

    /// The boot's figures in boot order: boot loader, stub, kernel start, every boot phase
    /// seen, and the demo service's first answer (`answered`, host seconds) if any.
    pub fn marks(&self, answered: Option<f64>) -> Vec<Mark> {
        let mut marks = Vec::new();
        let host = |name: &str, at: Option<f64>| Mark {
            name: name.to_owned(),
            kernel: None,
            since_power_on: at,
        };
        marks.push(host(LOADER, self.loader));
        marks.push(host(STUB, self.stub));
        marks.push(Mark {
            name: KERNEL.to_owned(),
            kernel: Some(0.0),
            since_power_on: self.kernel_start,
        });
        for phase in boot_phases() {
            if let Some(at) = self.phase(phase) {
                marks.push(Mark {
                    name: phase.as_str().to_owned(),
                    kernel: Some(at),
                    since_power_on: self.on_host(at),
                });
            }
        }
        if answered.is_some() {
            marks.push(host(ANSWERING, answered));
        }
        marks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(raw: &[(f64, &str)]) -> Vec<TimedLine> {
        raw.iter()
            .map(|(at, text)| TimedLine {
                at: *at,
                text: (*text).to_owned(),
            })
            .collect()
    }

    const BOOT: &[(f64, &str)] = &[
        (
            2.0,
            "\x1b[2J\x1b[01;01HBdsDxe: loading Boot0001 \"UEFI Misc Device\"",
        ),
        (
            2.1,
            "BdsDxe: starting Boot0001 \"UEFI Misc Device\" from PciRoot(0x0)",
        ),
        (
            3.5,
            "EFI stub: Loaded initrd from LINUX_EFI_INITRD_MEDIA_GUID device path",
        ),
        // Buffered until the console came up: arrives late.
        (5.4, "[    0.000000] Linux version 6.1.0-56-cloud-amd64"),
        (6.4, "[    1.003000] Run /init as init process"),
        (
            6.45,
            "[    1.040000] crust: init: crust-init 0.1.0, kernel 6.1.0",
        ),
        (6.7, "[    1.300000] crust: modules: 28 loaded in 256 ms"),
        (
            8.6,
            "[    3.200000] crust: services: started web (1 with health checks)",
        ),
        (8.7, "[    3.250000] crust: ready: crust 0.1.0, slot a"),
        (
            8.9,
            "[    3.400000] web: serving http://crust:80/ (httpd pid 6)",
        ),
        (9.2, "[    3.700000] web: health check http:80/ passes"),
        (
            9.21,
            "[    3.700500] crust: healthy: 1 health check(s) pass: web http:80/",
        ),
        (9.3, "[    3.800000] other: not a service of this image"),
        (9.4, "[    3.900000] crust: warning: something"),
    ];

    #[test]
    fn stamps_are_found_after_escape_codes_and_only_in_kernel_form() {
        assert_eq!(
            kernel_stamp("\x1b[0m[   12.345678] crust: root: x"),
            Some((12.345678, "crust: root: x"))
        );
        assert_eq!(kernel_stamp("[2J[01;01H BdsDxe"), None);
        assert_eq!(kernel_stamp("[ 1.5] short"), None);
        assert_eq!(kernel_stamp("no bracket"), None);
        assert_eq!(kernel_stamp("[    0.000000] Linux"), Some((0.0, "Linux")));
    }

    #[test]
    fn a_boot_reads_as_firmware_kernel_phases_and_services() {
        let services = ["web".to_owned()];
        let t = Timeline::read(&lines(BOOT), &services);
        assert_eq!(t.loader, Some(2.1));
        assert_eq!(t.stub, Some(3.5));
        // The smallest arrival - stamp: 6.4 - 1.003 (the buffered first line gives 5.4).
        let k = t.kernel_start.unwrap();
        assert!((k - 5.397).abs() < 1e-9, "{k}");
        assert_eq!(t.phase(Phase::Init), Some(1.04));
        assert_eq!(t.phase(Phase::Healthy), Some(3.7005));
        assert_eq!(t.phase(Phase::Disk), None);
        // Warnings are collected like phases but are not boot figures (see `marks`).
        assert_eq!(t.phase(Phase::Warning), Some(3.9));
        assert_eq!(t.services.len(), 2, "{:?}", t.services);
        assert_eq!(t.services[1].text, "health check http:80/ passes");
        assert_eq!(t.services[0].at, 3.4);
    }

    #[test]
    fn marks_come_in_boot_order_on_both_clocks() {
        let t = Timeline::read(&lines(BOOT), &["web".to_owned()]);
        let marks = t.marks(Some(9.05));
        let names: Vec<&str> = marks.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                LOADER, STUB, KERNEL, "init", "modules", "services", "ready", "healthy", ANSWERING
            ]
        );
        let init = &marks[3];
        assert_eq!(init.kernel, Some(1.04));
        assert!((init.since_power_on.unwrap() - (5.397 + 1.04)).abs() < 1e-9);
        assert_eq!(marks.last().unwrap().since_power_on, Some(9.05));
        assert_eq!(marks.last().unwrap().kernel, None);
        // No answer, no mark.
        assert!(t.marks(None).iter().all(|m| m.name != ANSWERING));
    }
}
