//! The console: one line per boot phase, in the format `crust_format::phase` defines, so
//! tests and the boot-time benchmark can read the serial log.
//!
//! The kernel hands PID 1 `/dev/console` on fds 0-2; every line goes to stdout and is
//! flushed at once (a line stuck in a buffer is lost when the machine reboots). Write
//! errors are ignored: PID 1 has nowhere else to report them. Every line also goes to the
//! log shipper when `[logs]` is on ([`crate::observe::sink`], which never waits), and
//! phase times to the exporter's status files ([`crate::observe::status`]).

use std::io::Write;
use std::time::Duration;

use crust_format::observe::Severity;
use crust_format::phase::{Phase, format_line};
use nix::time::{ClockId, clock_gettime};

use crate::observe;

/// The monotonic clock, the one the kernel stamps its own console lines with.
pub fn now() -> Duration {
    clock_gettime(ClockId::CLOCK_MONOTONIC)
        .ok()
        .and_then(|ts| {
            Some(Duration::new(
                u64::try_from(ts.tv_sec()).ok()?,
                u32::try_from(ts.tv_nsec()).ok()?,
            ))
        })
        .unwrap_or_default()
}

/// Prints the line of a phase and returns its timestamp.
pub fn phase(phase: Phase, detail: &str) -> Duration {
    let at = now();
    phase_at(at, phase, detail);
    at
}

/// Prints the line of a phase with a timestamp taken earlier.
pub fn phase_at(at: Duration, phase: Phase, detail: &str) {
    print_line(&format_line(at, phase, detail));
    let severity = match phase {
        Phase::Error => Severity::Error,
        Phase::Warning => Severity::Warning,
        _ => Severity::Info,
    };
    observe::status::phase(phase, at);
    observe::sink::record(&observe::sink::own(
        at,
        severity,
        phase.as_str(),
        &format!("{phase}: {detail}"),
    ));
}

/// Prints a line on behalf of `who` (the update agent, the clock): `[time] <who>: <line>`.
/// Not a phase line: these may appear any number of times.
pub fn note(who: &str, line: &str) {
    let at = now();
    print_line(&format!(
        "[{:5}.{:06}] {who}: {line}",
        at.as_secs(),
        at.subsec_micros()
    ));
    observe::sink::record(&observe::sink::own(
        at,
        Severity::Info,
        who,
        &format!("{who}: {line}"),
    ));
}

/// Prints a line of service `name` (its output, or what its supervisor says of it):
/// `[time] <name>: <line>`; the log collector gets it under the service's name.
pub fn service(name: &str, line: &str) {
    let at = now();
    print_line(&format!(
        "[{:5}.{:06}] {name}: {line}",
        at.as_secs(),
        at.subsec_micros()
    ));
    observe::sink::record(&observe::sink::service(at, name, line));
}

/// Prints a warning: something is off but the boot goes on. Unlike a phase, a warning
/// may appear any number of times.
pub fn warning(detail: &str) {
    phase_at(now(), Phase::Warning, detail);
}

fn print_line(line: &str) {
    let mut out = std::io::stdout().lock();
    // A console line is one line, whatever a message carried in from outside holds.
    let line = line.replace(['\n', '\r'], " ");
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Formats a timestamp as seconds with microseconds, as `/run/crust/boot` stores it.
pub fn seconds(d: Duration) -> String {
    format!("{}.{:06}", d.as_secs(), d.subsec_micros())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crust_format::phase::parse_line;

    #[test]
    fn warnings_share_the_phase_layout() {
        let line = format_line(
            Duration::from_micros(1_500_000),
            Phase::Warning,
            "unknown option",
        );
        assert_eq!(line, "[    1.500000] crust: warning: unknown option");
        assert_eq!(parse_line(&line).map(|p| p.phase), Some(Phase::Warning));
    }

    #[test]
    fn seconds_keep_microseconds() {
        assert_eq!(seconds(Duration::from_micros(2_000_042)), "2.000042");
    }

    #[test]
    fn the_clock_moves_forward() {
        let a = now();
        let b = now();
        assert!(b >= a && a > Duration::ZERO);
    }
}
