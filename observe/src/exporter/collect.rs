//! What a scrape exports, gathered afresh each time from the kernel (`/proc`, `/sys`,
//! `statvfs`) and from the facts the init publishes (`/run/crust/boot`, the manifest, the
//! status files of [`crust_format::observe::status`]). Nothing is asked of PID 1.
//!
//! Node-level families use node_exporter's names where the meaning is the same (so the
//! dashboards and alerts operators already have work unchanged); Crust's own start with
//! `crust_`; the exporter's own use the client libraries' `process_` names. Every family
//! is listed, with its type and meaning, in docs/OBSERVABILITY.md. A source that cannot be
//! read leaves its families out of that scrape.

use std::path::{Path, PathBuf};

use crust_format::initrd::{self, boot_keys};
use crust_format::observe::{self, KeyValues, status};

use super::exposition::{Exposition, Kind, sanitize_name};

/// Where a scrape looks.
#[derive(Debug, Clone)]
pub struct Sources {
    /// The proc file system (`/proc`).
    pub proc: PathBuf,
    /// The sysfs network class folder (`/sys/class/net`).
    pub sys_net: PathBuf,
    /// The status folder ([`observe::STATUS_DIR`]).
    pub status: PathBuf,
    /// The stage-1 facts (`/run/crust/boot`).
    pub boot: PathBuf,
    /// The running manifest (`/run/crust/manifest`).
    pub manifest: PathBuf,
    /// The mount point whose file system is reported (`/var`).
    pub var: PathBuf,
}

impl Default for Sources {
    fn default() -> Self {
        Self {
            proc: "/proc".into(),
            sys_net: "/sys/class/net".into(),
            status: observe::STATUS_DIR.into(),
            boot: initrd::RUN_BOOT.into(),
            manifest: initrd::RUN_MANIFEST.into(),
            var: "/var".into(),
        }
    }
}

/// Reads at most [`observe::MAX_FILE`] bytes of a text file.
pub fn read_text(path: &Path) -> Option<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)
        .ok()?
        .take(observe::MAX_FILE)
        .read_to_string(&mut text)
        .ok()?;
    Some(text)
}

fn status_file(s: &Sources, name: &str) -> Option<KeyValues> {
    read_text(&s.status.join(name)).map(|t| KeyValues::parse(&t))
}

/// Gathers every family.
pub fn collect(s: &Sources) -> Exposition {
    let mut e = Exposition::default();
    build_info(&mut e, s);
    boot(&mut e, s);
    update(&mut e, s);
    services(&mut e, s);
    clock(&mut e, s);
    verity_and_logs(&mut e, s);
    cpu_and_stat(&mut e, s);
    memory(&mut e, s);
    load(&mut e, s);
    filesystem(&mut e, s);
    disks(&mut e, s);
    network(&mut e, s);
    uname(&mut e);
    process(&mut e, s);
    e
}

fn build_info(e: &mut Exposition, s: &Sources) {
    let boot = read_text(&s.boot)
        .map(|t| KeyValues::parse(&t))
        .unwrap_or_default();
    let manifest = std::fs::read(&s.manifest)
        .ok()
        .and_then(|b| crust_format::Manifest::parse(&b).ok());
    let Some(m) = manifest else {
        return;
    };
    let root_hash = m.verity.root_hash.to_hex();
    let build_id = m.build_id.to_hex();
    e.add(
        "crust_build_info",
        "The running image: name, version, slot, dm-verity root hash, build id, kernel; always 1.",
        Kind::Gauge,
        &[
            ("name", &m.name),
            ("version", &m.version),
            ("slot", boot.get(boot_keys::SLOT).unwrap_or("")),
            ("root_hash", &root_hash),
            ("build_id", &build_id),
            ("kernel", &m.kernel_release),
        ],
        1.0,
    );
}

fn boot(e: &mut Exposition, s: &Sources) {
    const HELP: &str = "Seconds after the kernel started (CLOCK_MONOTONIC) at which each boot \
                        phase line was printed.";
    if let Some(boot) = read_text(&s.boot).map(|t| KeyValues::parse(&t)) {
        for (k, v) in boot.iter() {
            if let (Some(phase), Ok(at)) = (k.strip_prefix(boot_keys::PHASE_PREFIX), v.parse()) {
                e.add(
                    "crust_boot_phase_seconds",
                    HELP,
                    Kind::Gauge,
                    &[("phase", phase)],
                    at,
                );
            }
        }
    }
    if let Some(phases) = status_file(s, status::PHASES) {
        for (phase, v) in phases.iter() {
            if let Ok(at) = v.parse() {
                e.add(
                    "crust_boot_phase_seconds",
                    HELP,
                    Kind::Gauge,
                    &[("phase", phase)],
                    at,
                );
            }
        }
    }
    if let Some(b) = status_file(s, status::BOOT) {
        if let Some(n) = b.parsed::<f64>("count") {
            e.counter(
                "crust_boots_total",
                "Boots of this host's state partition, this one included.",
                n,
            );
        }
        if let Some(p) = b.parsed::<f64>("persistent") {
            e.gauge(
                "crust_state_persistent",
                "1 when /var is the state partition, 0 when it fell back to a tmpfs.",
                p,
            );
        }
    }
}

/// The update agent's states, as the status file names them.
pub const UPDATE_STATES: [&str; 8] = [
    "off",
    "awaiting-health",
    "probing",
    "idle",
    "checking",
    "reboot-pending",
    "coordinating",
    "done",
];

fn update(e: &mut Exposition, s: &Sources) {
    let Some(u) = status_file(s, status::UPDATE) else {
        return;
    };
    let state = u.get("state").unwrap_or("off");
    for st in UPDATE_STATES {
        e.add(
            "crust_update_state",
            "The update agent's state: 1 for the current one.",
            Kind::Gauge,
            &[("state", st)],
            f64::from(u8::from(st == state)),
        );
    }
    numbers(
        e,
        &u,
        &[
            (
                "configured",
                "crust_update_configured",
                "1 when user-data names an update repository.",
                Kind::Gauge,
            ),
            (
                "trial",
                "crust_update_trial",
                "1 while the running version is an update on trial (not blessed yet).",
                Kind::Gauge,
            ),
            (
                "checks",
                "crust_update_checks_total",
                "Channel checks the update agent finished this boot.",
                Kind::Counter,
            ),
            (
                "failures",
                "crust_update_check_failures_total",
                "Channel checks that failed this boot (network, repository, signature).",
                Kind::Counter,
            ),
            (
                "last-check",
                "crust_update_last_check_timestamp_seconds",
                "Unix time the last channel check ended.",
                Kind::Gauge,
            ),
            (
                "last-check-ok",
                "crust_update_last_check_success",
                "1 when the last channel check succeeded.",
                Kind::Gauge,
            ),
        ],
    );
    if let Some(result) = u.get("last-result") {
        e.add(
            "crust_update_last_result",
            "What the last check found: up-to-date, installed, refused, index-verified, waiting \
             (for a staged rollout) or error; \
             always 1.",
            Kind::Gauge,
            &[("result", result)],
            1.0,
        );
    }
    if let Some(v) = u.parsed::<f64>("rollbacks") {
        e.counter(
            "crust_update_rollbacks_total",
            "Versions that rolled back on this host (their boots failed), as the update \
             records keep them.",
            v,
        );
    }
}

fn services(e: &mut Exposition, s: &Sources) {
    let Some(kv) = status_file(s, status::SERVICES) else {
        return;
    };
    let mut names: Vec<&str> = kv
        .iter()
        .filter_map(|(k, _)| k.strip_suffix(".state"))
        .collect();
    names.dedup();
    for name in names {
        let get = |key: &str| kv.get(&format!("{name}.{key}"));
        let num = |key: &str| get(key).and_then(|v| v.parse::<f64>().ok());
        let labels = [("service", name)];
        if let Some(v) = num("up") {
            e.add(
                "crust_service_up",
                "1 while the service's process runs.",
                Kind::Gauge,
                &labels,
                v,
            );
        }
        if let Some(v) = num("restarts") {
            e.add(
                "crust_service_restarts_total",
                "Times the service was started again after it ended, this boot.",
                Kind::Counter,
                &labels,
                v,
            );
        }
        if let Some((kind, n)) = get("last-exit").and_then(|v| v.split_once(':')) {
            let code: f64 = n.parse().unwrap_or(-1.0);
            // A shell's convention: 128 + the signal that ended it.
            let code = if kind == "signal" { 128.0 + code } else { code };
            e.add(
                "crust_service_last_exit_code",
                "Exit status of the service's last run that ended (128 + N when signal N \
                 ended it); absent until one ended.",
                Kind::Gauge,
                &labels,
                code,
            );
        }
        if let Some(v) = num("last-exit-time") {
            e.add(
                "crust_service_last_exit_timestamp_seconds",
                "Unix time the service's last run ended.",
                Kind::Gauge,
                &labels,
                v,
            );
        }
        if let Some(h) = get("health") {
            let v = match h {
                "pass" => 1.0,
                "fail" => 0.0,
                _ => f64::NAN,
            };
            e.add(
                "crust_service_healthy",
                "1 when the service's last health check passed, 0 when it failed, NaN before \
                 the first; absent for services without a check.",
                Kind::Gauge,
                &labels,
                v,
            );
        }
    }
}

fn clock(e: &mut Exposition, s: &Sources) {
    let Some(c) = status_file(s, status::CLOCK) else {
        return;
    };
    numbers(
        e,
        &c,
        &[
            (
                "synced",
                "crust_clock_synced",
                "1 once a time server answered this boot.",
                Kind::Gauge,
            ),
            (
                "answering",
                "crust_clock_answering",
                "1 when the last check of the clock got an answer.",
                Kind::Gauge,
            ),
            (
                "offset",
                "crust_clock_offset_seconds",
                "How far the clock was off at the last answer (positive: it was behind).",
                Kind::Gauge,
            ),
            (
                "last-sync",
                "crust_clock_last_sync_timestamp_seconds",
                "Unix time of the last answer from a time server.",
                Kind::Gauge,
            ),
            (
                "servers",
                "crust_clock_servers",
                "Time servers the host asks (configured and from DHCP).",
                Kind::Gauge,
            ),
        ],
    );
}

/// One family per status key holding a number: `(key, name, help, kind)`; a key that is
/// absent or not a number is left out.
fn numbers(e: &mut Exposition, kv: &KeyValues, families: &[(&str, &str, &str, Kind)]) {
    for (key, name, help, kind) in families {
        if let Some(v) = kv.parsed::<f64>(key) {
            e.add(name, help, *kind, &[], v);
        }
    }
}

fn verity_and_logs(e: &mut Exposition, s: &Sources) {
    if let Some(v) = status_file(s, status::VERITY) {
        if let Some(n) = v.parsed::<f64>("errors") {
            e.counter(
                "crust_verity_errors_total",
                "dm-verity corruption reports about the root heard this boot.",
                n,
            );
        }
        if let Some(n) = v.parsed::<f64>("corrupted") {
            e.gauge(
                "crust_verity_corrupted",
                "1 when device-mapper says the root's dm-verity device saw a corrupted block.",
                n,
            );
        }
    }
    if let Some(n) = status_file(s, status::LOGS).and_then(|l| l.parsed::<f64>("dropped")) {
        e.counter(
            "crust_log_pipe_dropped_total",
            "Lines the init could not hand to the log shipper (its pipe was full).",
            n,
        );
    }
}

fn cpu_and_stat(e: &mut Exposition, s: &Sources) {
    let Some(text) = read_text(&s.proc.join("stat")) else {
        return;
    };
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|h| *h > 0)
        .unwrap_or(100) as f64;
    const MODES: [&str; 8] = [
        "user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal",
    ];
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let Some(key) = fields.next() else { continue };
        let values: Vec<f64> = fields.filter_map(|f| f.parse().ok()).collect();
        if let Some(cpu) = key.strip_prefix("cpu").filter(|c| !c.is_empty()) {
            for (mode, ticks) in MODES.iter().zip(&values) {
                e.add(
                    "node_cpu_seconds_total",
                    "Seconds the CPUs spent in each mode.",
                    Kind::Counter,
                    &[("cpu", cpu), ("mode", mode)],
                    ticks / hz,
                );
            }
            continue;
        }
        let Some(v) = values.first().copied() else {
            continue;
        };
        match key {
            "btime" => e.gauge("node_boot_time_seconds", "Node boot time, in unixtime.", v),
            "ctxt" => e.counter(
                "node_context_switches_total",
                "Total number of context switches.",
                v,
            ),
            "intr" => e.counter("node_intr_total", "Total number of interrupts serviced.", v),
            "processes" => e.counter("node_forks_total", "Total number of forks.", v),
            "procs_running" => e.gauge(
                "node_procs_running",
                "Number of processes in runnable state.",
                v,
            ),
            "procs_blocked" => e.gauge(
                "node_procs_blocked",
                "Number of processes blocked waiting for I/O to complete.",
                v,
            ),
            _ => {}
        }
    }
    if let Some(up) = read_text(&s.proc.join("uptime"))
        .and_then(|t| t.split_whitespace().next()?.parse::<f64>().ok())
    {
        e.gauge(
            "crust_uptime_seconds",
            "Seconds since the kernel started (CLOCK_BOOTTIME), not moved by clock steps.",
            up,
        );
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    e.gauge(
        "node_time_seconds",
        "System time in seconds since epoch (1970).",
        now,
    );
}

fn memory(e: &mut Exposition, s: &Sources) {
    let Some(text) = read_text(&s.proc.join("meminfo")) else {
        return;
    };
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let mut parts = rest.split_whitespace();
        let Some(v) = parts.next().and_then(|v| v.parse::<f64>().ok()) else {
            continue;
        };
        let key = sanitize_name(key);
        let (name, value) = match parts.next() {
            Some("kB") => (format!("node_memory_{key}_bytes"), v * 1024.0),
            _ => (format!("node_memory_{key}"), v),
        };
        let help = format!("Memory information field {key}.");
        e.add(&name, &help, Kind::Gauge, &[], value);
    }
}

fn load(e: &mut Exposition, s: &Sources) {
    let Some(text) = read_text(&s.proc.join("loadavg")) else {
        return;
    };
    let v: Vec<f64> = text
        .split_whitespace()
        .take(3)
        .filter_map(|f| f.parse().ok())
        .collect();
    for (name, (value, what)) in ["node_load1", "node_load5", "node_load15"]
        .iter()
        .zip(v.iter().zip(["1m", "5m", "15m"]))
    {
        e.gauge(name, &format!("{what} load average."), *value);
    }
}

/// The device and type of the file system mounted at `mount_point`, from mountinfo.
fn mount_of(proc: &Path, mount_point: &Path) -> Option<(String, String)> {
    let text = read_text(&proc.join("self/mountinfo"))?;
    let want = mount_point.to_str()?;
    // The last mount on a point is the one in effect.
    text.lines().rev().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let dash = fields.iter().position(|f| *f == "-")?;
        if fields.get(4) != Some(&want) {
            return None;
        }
        Some((
            fields.get(dash + 2)?.to_string(),
            fields.get(dash + 1)?.to_string(),
        ))
    })
}

fn filesystem(e: &mut Exposition, s: &Sources) {
    let Ok(st) = nix::sys::statvfs::statvfs(&s.var) else {
        return;
    };
    let (device, fstype) = mount_of(&s.proc, &s.var).unwrap_or_default();
    let mountpoint = s.var.to_string_lossy();
    let labels = [
        ("device", device.as_str()),
        ("fstype", fstype.as_str()),
        ("mountpoint", &*mountpoint),
    ];
    let frag = st.fragment_size() as f64;
    let all: [(&str, &str, f64); 6] = [
        (
            "node_filesystem_size_bytes",
            "Filesystem size in bytes.",
            st.blocks() as f64 * frag,
        ),
        (
            "node_filesystem_free_bytes",
            "Filesystem free space in bytes.",
            st.blocks_free() as f64 * frag,
        ),
        (
            "node_filesystem_avail_bytes",
            "Filesystem space available to non-root users in bytes.",
            st.blocks_available() as f64 * frag,
        ),
        (
            "node_filesystem_files",
            "Filesystem total file nodes.",
            st.files() as f64,
        ),
        (
            "node_filesystem_files_free",
            "Filesystem total free file nodes.",
            st.files_free() as f64,
        ),
        (
            "node_filesystem_readonly",
            "Filesystem read-only status.",
            f64::from(u8::from(
                st.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY),
            )),
        ),
    ];
    for (name, help, v) in all {
        e.add(name, help, Kind::Gauge, &labels, v);
    }
}

fn disks(e: &mut Exposition, s: &Sources) {
    let Some(text) = read_text(&s.proc.join("diskstats")) else {
        return;
    };
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let Some(&device) = f.get(2) else { continue };
        if device.starts_with("loop") || device.starts_with("ram") || f.len() < 14 {
            continue;
        }
        let n = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        let all: [(&str, &str, f64); 5] = [
            (
                "node_disk_reads_completed_total",
                "The total number of reads completed successfully.",
                n(3),
            ),
            (
                "node_disk_read_bytes_total",
                "The total number of bytes read successfully.",
                n(5) * 512.0,
            ),
            (
                "node_disk_writes_completed_total",
                "The total number of writes completed successfully.",
                n(7),
            ),
            (
                "node_disk_written_bytes_total",
                "The total number of bytes written successfully.",
                n(9) * 512.0,
            ),
            (
                "node_disk_io_time_seconds_total",
                "Total seconds spent doing I/Os.",
                n(12) / 1000.0,
            ),
        ];
        for (name, help, v) in all {
            e.add(name, help, Kind::Counter, &[("device", device)], v);
        }
    }
}

fn network(e: &mut Exposition, s: &Sources) {
    let Some(text) = read_text(&s.proc.join("net/dev")) else {
        return;
    };
    // Receive: bytes packets errs drop fifo frame compressed multicast; then transmit:
    // bytes packets errs drop fifo colls carrier compressed.
    const FIELDS: [(usize, &str, &str); 8] = [
        (0, "receive_bytes", "bytes received"),
        (1, "receive_packets", "packets received"),
        (2, "receive_errs", "receive errors"),
        (3, "receive_drop", "received packets dropped"),
        (8, "transmit_bytes", "bytes sent"),
        (9, "transmit_packets", "packets sent"),
        (10, "transmit_errs", "transmit errors"),
        (11, "transmit_drop", "packets dropped on the way out"),
    ];
    for line in text.lines().skip(2) {
        let Some((device, rest)) = line.split_once(':') else {
            continue;
        };
        let device = device.trim();
        let values: Vec<f64> = rest
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        for (i, field, what) in FIELDS {
            if let Some(v) = values.get(i) {
                e.add(
                    &format!("node_network_{field}_total"),
                    &format!("Network device statistic {field}: {what}."),
                    Kind::Counter,
                    &[("device", device)],
                    *v,
                );
            }
        }
        if let Some(state) = read_text(&s.sys_net.join(device).join("operstate")) {
            e.add(
                "node_network_up",
                "Value is 1 if operstate is 'up', 0 otherwise.",
                Kind::Gauge,
                &[("device", device)],
                f64::from(u8::from(state.trim() == "up")),
            );
        }
    }
}

fn uname(e: &mut Exposition) {
    let Ok(u) = nix::sys::utsname::uname() else {
        return;
    };
    let s = |v: &std::ffi::OsStr| v.to_string_lossy().into_owned();
    let domain = read_text(Path::new("/proc/sys/kernel/domainname"))
        .map(|d| d.trim().to_owned())
        .unwrap_or_default();
    e.add(
        "node_uname_info",
        "Labeled system information as provided by the uname system call.",
        Kind::Gauge,
        &[
            ("sysname", &s(u.sysname())),
            ("release", &s(u.release())),
            ("version", &s(u.version())),
            ("machine", &s(u.machine())),
            ("nodename", &s(u.nodename())),
            ("domainname", &domain),
        ],
        1.0,
    );
}

/// The exporter's own process, under the names Prometheus's client libraries use.
fn process(e: &mut Exposition, s: &Sources) {
    let Some(stat) = read_text(&s.proc.join("self/stat")) else {
        return;
    };
    // Fields after the command name (which may hold spaces), numbered from 3 (state).
    let Some(after) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
        return;
    };
    let f: Vec<&str> = after.split_whitespace().collect();
    let n = |field: usize| f.get(field - 3).and_then(|v| v.parse::<f64>().ok());
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|h| *h > 0)
        .unwrap_or(100) as f64;
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(4096) as f64;
    if let (Some(utime), Some(stime)) = (n(14), n(15)) {
        e.counter(
            "process_cpu_seconds_total",
            "Total user and system CPU time spent by the exporter in seconds.",
            (utime + stime) / hz,
        );
    }
    if let Some(rss) = n(24) {
        e.gauge(
            "process_resident_memory_bytes",
            "The exporter's resident memory size in bytes.",
            rss * page,
        );
    }
    let btime = read_text(&s.proc.join("stat")).and_then(|t| {
        t.lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse::<f64>().ok())
    });
    if let (Some(start), Some(btime)) = (n(22), btime) {
        e.gauge(
            "process_start_time_seconds",
            "Start time of the exporter since unix epoch in seconds.",
            btime + start / hz,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_machine_gives_the_node_families() {
        let dir = tempfile::tempdir().unwrap();
        let sources = Sources {
            status: dir.path().join("status"),
            boot: dir.path().join("boot"),
            manifest: dir.path().join("manifest"),
            var: "/".into(),
            ..Sources::default()
        };
        let text = collect(&sources).render();
        for name in [
            "node_cpu_seconds_total{cpu=\"0\",mode=\"idle\"}",
            "node_memory_MemAvailable_bytes ",
            "node_load1 ",
            "node_filesystem_avail_bytes{",
            "node_filesystem_size_bytes{",
            "node_network_receive_bytes_total{device=\"lo\"}",
            "node_network_transmit_bytes_total{device=\"lo\"}",
            "node_boot_time_seconds ",
            "crust_uptime_seconds ",
            "node_uname_info{",
            "process_resident_memory_bytes ",
        ] {
            assert!(text.contains(name), "no {name} in\n{text}");
        }
        assert!(!text.contains("crust_build_info"), "no manifest, no info");
    }

    /// A status folder as the init writes it, a manifest and boot facts as stage 1 leaves
    /// them.
    fn host_like(dir: &Path) -> Sources {
        use crust_format::manifest::Filesystem;
        use crust_format::verity::VerityParams;
        use crust_format::{Digest, Manifest};
        let status = dir.join("status");
        std::fs::create_dir_all(&status).unwrap();
        let files = [
            (
                status::PHASES,
                "stage2=3.5\nstate=3.9\nconfig=4.1\nready=9.25\n",
            ),
            (
                status::SERVICES,
                "web.state=running\nweb.up=1\nweb.starts=1\nweb.restarts=0\nweb.health=pass\n\
                 crasher.state=backoff\ncrasher.up=0\ncrasher.starts=3\ncrasher.restarts=2\n\
                 crasher.last-exit=code:3\ncrasher.last-exit-time=1796373000\n\
                 killed.state=done\nkilled.up=0\nkilled.restarts=0\nkilled.last-exit=signal:9\n\
                 killed.health=unknown\n",
            ),
            (
                status::UPDATE,
                "configured=1\nstate=idle\ntrial=0\nchecks=2\nfailures=1\nlast-check=1796373000\n\
                 last-check-ok=1\nlast-result=up-to-date\nrollbacks=1\n",
            ),
            (
                status::CLOCK,
                "servers=1\nsynced=1\nanswering=1\noffset=-0.0123\nlast-sync=1796373001\n",
            ),
            (status::VERITY, "errors=0\ncorrupted=0\n"),
            (status::BOOT, "count=7\npersistent=1\n"),
            (status::LOGS, "dropped=0\n"),
        ];
        for (name, text) in files {
            std::fs::write(status.join(name), text).unwrap();
        }
        std::fs::write(
            dir.join("boot"),
            "slot=a\ndisk=vda\nphase.init=0.8\nphase.switch-root=2.9\n",
        )
        .unwrap();
        let m = Manifest {
            layout: 1,
            name: "crust".into(),
            version: "0.1.0".into(),
            build_id: Digest::of(b"build"),
            filesystem: Filesystem::Squashfs,
            verity: VerityParams {
                root_hash: Digest::of(b"root"),
                salt: Digest::of(b"salt"),
                data_blocks: 1000,
                hash_size: (crust_format::verity::hash_blocks(1000) + 1) * 4096,
                uuid: [3; 16],
            },
            kernel_release: "6.1.0-56-cloud-amd64".into(),
            kernel_sha256: Digest::of(b"kernel"),
        };
        std::fs::write(dir.join("manifest"), m.to_text()).unwrap();
        Sources {
            status,
            boot: dir.join("boot"),
            manifest: dir.join("manifest"),
            var: "/".into(),
            ..Sources::default()
        }
    }

    #[test]
    fn crust_families_come_from_the_published_facts() {
        let dir = tempfile::tempdir().unwrap();
        let text = collect(&host_like(dir.path())).render();
        for line in [
            "crust_build_info{name=\"crust\",version=\"0.1.0\",slot=\"a\",root_hash=\"",
            "crust_boot_phase_seconds{phase=\"init\"} 0.8\n",
            "crust_boot_phase_seconds{phase=\"ready\"} 9.25\n",
            "crust_boots_total 7\n",
            "crust_update_state{state=\"idle\"} 1\n",
            "crust_update_state{state=\"checking\"} 0\n",
            "crust_update_last_result{result=\"up-to-date\"} 1\n",
            "crust_update_rollbacks_total 1\n",
            "crust_update_last_check_timestamp_seconds 1796373000\n",
            "crust_service_up{service=\"web\"} 1\n",
            "crust_service_restarts_total{service=\"crasher\"} 2\n",
            "crust_service_last_exit_code{service=\"crasher\"} 3\n",
            "crust_service_last_exit_code{service=\"killed\"} 137\n",
            "crust_service_healthy{service=\"web\"} 1\n",
            "crust_service_healthy{service=\"killed\"} NaN\n",
            "crust_clock_offset_seconds -0.0123\n",
            "crust_clock_last_sync_timestamp_seconds 1796373001\n",
            "crust_verity_errors_total 0\n",
            "crust_log_pipe_dropped_total 0\n",
        ] {
            assert!(text.contains(line), "no {line:?} in\n{text}");
        }
        assert!(!text.contains("crust_service_healthy{service=\"crasher\"}"));
    }

    /// Prometheus's own linter (`promtool check metrics`, Debian's prometheus package)
    /// finds nothing wrong with a whole scrape: format, names, types, help texts. It
    /// parses the text first (a syntax error fails it outright); of its naming advice, the
    /// one point it makes is about node_exporter's own `/proc/meminfo` names
    /// (`node_memory_MemAvailable_bytes`), which it makes about node_exporter's output too,
    /// and which the exporter keeps so that existing dashboards work.
    #[test]
    fn promtool_accepts_a_scrape() {
        use std::io::Write;
        use std::process::{Command, Stdio};
        let dir = tempfile::tempdir().unwrap();
        let text = collect(&host_like(dir.path())).render();
        let mut child = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("promtool (Debian's prometheus package; cargo xtask test installs it)");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let problems: Vec<&str> = said
            .lines()
            .filter(|l| {
                !(l.starts_with("node_memory_")
                    && l.ends_with(
                        "metric names should be written in 'snake_case' not 'camelCase'",
                    ))
            })
            .collect();
        assert!(
            problems.is_empty(),
            "promtool check metrics:\n{said}\n{text}"
        );
        assert!(said.contains("node_memory_MemAvailable_bytes"), "{said}");
    }
}
