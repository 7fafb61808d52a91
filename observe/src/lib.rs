//! Crust's observability agent: one static program in the verified root
//! (`/usr/libexec/crust/observe`) that the init starts and supervises in two modes, so that
//! PID 1 itself answers no network requests and never waits on a peer:
//!
//! - [`exporter`]: the Prometheus endpoint (`GET /metrics`, text exposition format 0.0.4),
//!   optionally over TLS with a bearer token or client certificates;
//! - [`shipper`]: every console line and service output line the init hands it through a
//!   pipe, and the kernel's messages, to a syslog collector (RFC 5424 over TCP, UDP or TLS),
//!   buffered while the collector is away.
//!
//! What the init and the agent exchange (settings files, status files, the pipe's records)
//! is [`crust_format::observe`]; docs/OBSERVABILITY.md is the operator's side.

pub mod exporter;
pub mod shipper;
pub mod tls;

/// The user the agent runs as once it holds what needs root (a bound port, `/dev/kmsg`,
/// its key files): `nobody`.
pub const NOBODY: u32 = 65534;

/// Gives up root for good: no supplementary groups, `nobody`'s user and group, and no way
/// back through set-user-id programs.
pub fn drop_privileges() -> Result<(), String> {
    use nix::unistd::{Gid, Uid, setgroups, setresgid, setresuid};
    if !Uid::effective().is_root() {
        return Ok(());
    }
    let gid = Gid::from_raw(NOBODY);
    let uid = Uid::from_raw(NOBODY);
    setgroups(&[]).map_err(|e| format!("setgroups: {}", e.desc()))?;
    setresgid(gid, gid, gid).map_err(|e| format!("setresgid: {}", e.desc()))?;
    setresuid(uid, uid, uid).map_err(|e| format!("setresuid: {}", e.desc()))?;
    nix::sys::prctl::set_no_new_privs().map_err(|e| format!("no_new_privs: {}", e.desc()))?;
    Ok(())
}

/// Reads a settings file (bounded).
pub fn read_settings(path: &std::path::Path) -> Result<String, String> {
    exporter::collect::read_text(path).ok_or_else(|| format!("cannot read {}", path.display()))
}

/// Prints one line for the init to put on the console (under the agent's name).
pub fn say(line: &str) {
    use std::io::Write;
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{}", line.replace(['\n', '\r'], " "));
}
