//! The seccomp profile of Crust's containers: which system calls a container may make,
//! written into its `config.json` as the OCI `linux.seccomp` (crun loads it), and for
//! pulled images as the file `ctr run --seccomp-profile` reads.
//!
//! The profile is an allow list: a call not on it fails with `EPERM` (the default action),
//! on every architecture the filter covers (x86_64 and the 32-bit x86 and x32 ABIs a 64-bit
//! kernel also runs). What is on it:
//!
//! - the calls every program needs, grouped below by what they do ([`GROUPS`]);
//! - calls whose only use is a power the container's capabilities already grant
//!   ([`BY_CAPABILITY`]): `mount` with `CAP_SYS_ADMIN`, `ptrace` with `CAP_SYS_PTRACE`, ...;
//!   the builder knows the container's bounding set, so these are decided at build time;
//! - calls allowed only with some arguments: `clone` without namespace flags, `clone3`
//!   answered with `ENOSYS` (so C libraries fall back to `clone`, whose flags the filter can
//!   read), `socket` of every family but `AF_ALG` and `AF_VSOCK`, `personality` only to
//!   query it or select the Linux and 32-bit Linux personalities;
//! - what the service's declaration adds (`seccomp-allow`), checked against the names
//!   libseccomp knows ([`super::syscalls`]).
//!
//! Docker's default profile (moby's `profiles/seccomp/default.json`) is the reference:
//! every call Crust allows, Docker's profile allows too, for the same capabilities; Crust
//! is stricter on `ptrace`, `process_vm_readv` and `process_vm_writev` (Docker allows them
//! without `CAP_SYS_PTRACE` on kernels from 4.8), `modify_ldt` and the `UNAME26`
//! personalities. docs/PROFILES.md has the comparison call by call.

use std::collections::{BTreeSet, HashSet};

use oci_spec::runtime::{
    Arch, Capability, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompArgBuilder,
    LinuxSeccompOperator, LinuxSyscall,
};

/// How a service's system calls are filtered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seccomp {
    /// Crust's profile, plus these calls (checked names).
    Default {
        /// Calls allowed besides the profile's, sorted.
        allow: Vec<String>,
    },
    /// No filter at all (`seccomp = "unconfined"`; the admin container).
    Unconfined,
}

impl Seccomp {
    /// Crust's profile as it is.
    pub fn default_profile() -> Self {
        Seccomp::Default { allow: Vec::new() }
    }
}

/// `errno` of every call the profile does not allow.
pub const EPERM: u32 = 1;
/// `errno` of `clone3` (`ENOSYS`: "not implemented", so C libraries use `clone`).
pub const ENOSYS: u32 = 38;

/// The architectures the filter covers.
pub const ARCHITECTURES: [Arch; 3] = [Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32];

/// Files, directories, pipes and descriptors.
#[rustfmt::skip]
const FILES: &[&str] = &[
    "_llseek", "access", "chdir", "chmod", "chown", "chown32", "close", "close_range",
    "copy_file_range", "creat", "dup", "dup2", "dup3", "faccessat", "faccessat2", "fadvise64",
    "fadvise64_64", "fallocate", "fchdir", "fchmod", "fchmodat", "fchmodat2", "fchown",
    "fchown32", "fchownat", "fcntl", "fcntl64", "fdatasync", "flock", "fstat", "fstat64",
    "fstatat64", "fstatfs", "fstatfs64", "fsync", "ftruncate", "ftruncate64", "futimesat",
    "getcwd", "getdents", "getdents64", "ioctl", "lchown", "lchown32", "link", "linkat",
    "lseek", "lstat", "lstat64", "mkdir", "mkdirat", "mknod", "mknodat", "name_to_handle_at",
    "newfstatat", "open", "openat", "openat2", "pipe", "pipe2", "pread64", "preadv", "preadv2",
    "pwrite64", "pwritev", "pwritev2", "read", "readahead", "readlink", "readlinkat", "readv",
    "rename", "renameat", "renameat2", "rmdir", "sendfile", "sendfile64", "splice", "stat",
    "stat64", "statfs", "statfs64", "statx", "symlink", "symlinkat", "sync", "sync_file_range",
    "syncfs", "tee", "truncate", "truncate64", "umask", "unlink", "unlinkat", "utime",
    "utimensat", "utimensat_time64", "utimes", "vmsplice", "write", "writev",
];

/// Extended attributes.
#[rustfmt::skip]
const XATTRS: &[&str] = &[
    "fgetxattr", "flistxattr", "fremovexattr", "fsetxattr", "getxattr", "lgetxattr",
    "listxattr", "llistxattr", "lremovexattr", "lsetxattr", "removexattr", "setxattr",
];

/// Waiting for descriptors, events, file changes and timers.
#[rustfmt::skip]
const EVENTS: &[&str] = &[
    "_newselect", "epoll_create", "epoll_create1", "epoll_ctl", "epoll_ctl_old", "epoll_pwait",
    "epoll_pwait2", "epoll_wait", "epoll_wait_old", "eventfd", "eventfd2", "fanotify_mark",
    "inotify_add_watch", "inotify_init", "inotify_init1", "inotify_rm_watch", "poll", "ppoll",
    "ppoll_time64", "pselect6", "pselect6_time64", "select", "signalfd", "signalfd4",
    "timerfd_create", "timerfd_gettime", "timerfd_gettime64", "timerfd_settime",
    "timerfd_settime64",
];

/// Linux native asynchronous I/O and I/O priorities (not io_uring, which is left out).
#[rustfmt::skip]
const ASYNC_IO: &[&str] = &[
    "io_cancel", "io_destroy", "io_getevents", "io_pgetevents", "io_pgetevents_time64",
    "io_setup", "io_submit", "ioprio_get", "ioprio_set",
];

/// The process's own memory.
#[rustfmt::skip]
const MEMORY: &[&str] = &[
    "brk", "cachestat", "madvise", "map_shadow_stack", "membarrier", "memfd_create",
    "memfd_secret", "mincore", "mlock", "mlock2", "mlockall", "mmap", "mmap2", "mprotect",
    "mremap", "msync", "munlock", "munlockall", "munmap", "pkey_alloc", "pkey_free",
    "pkey_mprotect", "remap_file_pages",
];

/// Processes and threads: running programs, waiting for children, limits, scheduling,
/// thread-local storage (`arch_prctl`), restricting oneself further (`seccomp`, Landlock).
#[rustfmt::skip]
const PROCESSES: &[&str] = &[
    "arch_prctl", "capget", "capset", "execve", "execveat", "exit", "exit_group", "fork",
    "get_robust_list", "get_thread_area", "getcpu", "getpgid", "getpgrp", "getpid", "getppid",
    "getpriority", "getrlimit", "getrusage", "getsid", "gettid", "kill", "landlock_add_rule",
    "landlock_create_ruleset", "landlock_restrict_self", "pidfd_open", "pidfd_send_signal",
    "prctl", "prlimit64", "process_mrelease", "restart_syscall", "rseq",
    "sched_get_priority_max", "sched_get_priority_min", "sched_getaffinity", "sched_getattr",
    "sched_getparam", "sched_getscheduler", "sched_rr_get_interval",
    "sched_rr_get_interval_time64", "sched_setaffinity", "sched_setattr", "sched_setparam",
    "sched_setscheduler", "sched_yield", "seccomp", "set_robust_list", "set_thread_area",
    "set_tid_address", "setpgid", "setpriority", "setrlimit", "setsid", "sysinfo", "tgkill",
    "times", "tkill", "ugetrlimit", "uname", "vfork", "wait4", "waitid", "waitpid",
];

/// User and group ids (within what the container's capabilities allow).
#[rustfmt::skip]
const IDS: &[&str] = &[
    "getegid", "getegid32", "geteuid", "geteuid32", "getgid", "getgid32", "getgroups",
    "getgroups32", "getresgid", "getresgid32", "getresuid", "getresuid32", "getuid",
    "getuid32", "setfsgid", "setfsgid32", "setfsuid", "setfsuid32", "setgid", "setgid32",
    "setgroups", "setgroups32", "setregid", "setregid32", "setresgid", "setresgid32",
    "setresuid", "setresuid32", "setreuid", "setreuid32", "setuid", "setuid32",
];

/// Signals.
#[rustfmt::skip]
const SIGNALS: &[&str] = &[
    "alarm", "pause", "rt_sigaction", "rt_sigpending", "rt_sigprocmask", "rt_sigqueueinfo",
    "rt_sigreturn", "rt_sigsuspend", "rt_sigtimedwait", "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo", "sigaltstack", "sigprocmask", "sigreturn",
];

/// Futexes (locks and condition variables).
#[rustfmt::skip]
const FUTEXES: &[&str] = &[
    "futex", "futex_requeue", "futex_time64", "futex_wait", "futex_waitv", "futex_wake",
];

/// Clocks, sleeping, timers (reading the clock's adjustment only: setting it takes
/// `CAP_SYS_TIME`), random numbers.
#[rustfmt::skip]
const TIME: &[&str] = &[
    "adjtimex", "clock_adjtime", "clock_adjtime64", "clock_getres", "clock_getres_time64",
    "clock_gettime", "clock_gettime64", "clock_nanosleep", "clock_nanosleep_time64",
    "getitimer", "getrandom", "gettimeofday", "nanosleep", "setitimer", "time", "timer_create",
    "timer_delete", "timer_getoverrun", "timer_gettime", "timer_gettime64", "timer_settime",
    "timer_settime64",
];

/// Sockets once made (`socket` itself has an argument rule; `socketcall` is how 32-bit x86
/// programs reach all of them).
#[rustfmt::skip]
const SOCKETS: &[&str] = &[
    "accept", "accept4", "bind", "connect", "getpeername", "getsockname", "getsockopt",
    "listen", "recvfrom", "recvmmsg", "recvmmsg_time64", "recvmsg", "sendmmsg", "sendmsg",
    "sendto", "setsockopt", "shutdown", "socketcall", "socketpair",
];

/// System V and POSIX message queues, semaphores and shared memory (in the container's own
/// IPC namespace).
#[rustfmt::skip]
const IPC: &[&str] = &[
    "ipc", "mq_getsetattr", "mq_notify", "mq_open", "mq_timedreceive",
    "mq_timedreceive_time64", "mq_timedsend", "mq_timedsend_time64", "mq_unlink", "msgctl",
    "msgget", "msgrcv", "msgsnd", "semctl", "semget", "semop", "semtimedop",
    "semtimedop_time64", "shmat", "shmctl", "shmdt", "shmget",
];

/// The calls every container may make, by what they are for.
pub const GROUPS: &[(&str, &[&str])] = &[
    ("files", FILES),
    ("extended attributes", XATTRS),
    ("events", EVENTS),
    ("asynchronous I/O", ASYNC_IO),
    ("memory", MEMORY),
    ("processes", PROCESSES),
    ("ids", IDS),
    ("signals", SIGNALS),
    ("futexes", FUTEXES),
    ("time", TIME),
    ("sockets", SOCKETS),
    ("IPC", IPC),
];

/// Calls allowed when the container's bounding set holds the capability: the capability
/// is what the call checks, so the filter adds nothing to refuse. `CAP_SYS_ADMIN` also
/// lifts the argument rules of `clone` and `clone3`.
#[rustfmt::skip]
pub const BY_CAPABILITY: &[(Capability, &[&str])] = &[
    (
        Capability::SysAdmin,
        &[
            "bpf", "clone", "clone3", "fanotify_init", "fsconfig", "fsmount", "fsopen", "fspick",
            "lookup_dcookie", "mount", "mount_setattr", "move_mount", "open_tree",
            "perf_event_open", "quotactl", "quotactl_fd", "setdomainname", "sethostname",
            "setns", "syslog", "umount", "umount2", "unshare",
        ],
    ),
    (Capability::SysBoot, &["reboot"]),
    (Capability::SysChroot, &["chroot"]),
    (
        Capability::SysModule,
        &["delete_module", "finit_module", "init_module"],
    ),
    (Capability::SysPacct, &["acct"]),
    (
        Capability::SysPtrace,
        &[
            "kcmp", "pidfd_getfd", "process_madvise", "process_vm_readv", "process_vm_writev",
            "ptrace",
        ],
    ),
    (Capability::SysRawio, &["ioperm", "iopl"]),
    (
        Capability::SysTime,
        &["clock_settime", "clock_settime64", "settimeofday", "stime"],
    ),
    (Capability::SysTtyConfig, &["vhangup"]),
    (
        Capability::SysNice,
        &["get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node"],
    ),
    (Capability::Syslog, &["syslog"]),
    (Capability::Bpf, &["bpf"]),
    (Capability::Perfmon, &["perf_event_open"]),
    (Capability::DacReadSearch, &["open_by_handle_at"]),
];

/// The namespace flags of `clone` (`CLONE_NEWNS`, `NEWCGROUP`, `NEWUTS`, `NEWIPC`,
/// `NEWUSER`, `NEWPID`, `NEWNET`): a `clone` with none of them is a fork or a thread.
pub const CLONE_NAMESPACE_FLAGS: u64 =
    0x0002_0000 | 0x0200_0000 | 0x0400_0000 | 0x0800_0000 | 0x1000_0000 | 0x2000_0000 | 0x4000_0000;

/// `AF_ALG` (the kernel's crypto API) and `AF_VSOCK` (the hypervisor's sockets): the socket
/// families a container may not open. The rule is written as ranges around them.
const AF_ALG: u64 = 38;
const AF_VSOCK: u64 = 40;

/// The `personality` values a container may set: `PER_LINUX`, `PER_LINUX32`, and
/// `0xffffffff`, which only reads the current one.
const PERSONALITIES: [u64; 3] = [0x0, 0x8, 0xffff_ffff];

/// The calls a container with capabilities `caps` may make, plus `extra` (names checked
/// by the caller), without those that have argument rules unless `extra` or a capability
/// allows them outright.
pub fn allowed(caps: &HashSet<Capability>, extra: &[String]) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = GROUPS
        .iter()
        .flat_map(|(_, names)| names.iter())
        .map(|n| (*n).to_owned())
        .collect();
    for (cap, calls) in BY_CAPABILITY {
        if caps.contains(cap) {
            names.extend(calls.iter().map(|n| (*n).to_owned()));
        }
    }
    names.extend(extra.iter().cloned());
    names
}

/// The profile of a container whose bounding set is `caps`, with `extra` calls allowed
/// besides (names from [`super::syscalls::KNOWN`]).
pub fn profile(caps: &HashSet<Capability>, extra: &[String]) -> LinuxSeccomp {
    let names = allowed(caps, extra);
    let mut rules = vec![rule(
        names.iter().cloned().collect(),
        LinuxSeccompAction::ScmpActAllow,
    )];
    let arg = |op, value, value_two: Option<u64>| {
        let a = LinuxSeccompArgBuilder::default()
            .index(0usize)
            .op(op)
            .value(value);
        match value_two {
            Some(two) => a.value_two(two),
            None => a,
        }
        .build()
        .expect("every field of a seccomp argument is set")
    };
    let with_arg = |name: &str, a: LinuxSeccompArg| {
        let mut r = rule(vec![name.to_owned()], LinuxSeccompAction::ScmpActAllow);
        r.set_args(Some(vec![a]));
        r
    };
    if !names.contains("clone") {
        rules.push(with_arg(
            "clone",
            arg(
                LinuxSeccompOperator::ScmpCmpMaskedEq,
                CLONE_NAMESPACE_FLAGS,
                Some(0),
            ),
        ));
    }
    if !names.contains("clone3") {
        let mut r = rule(vec!["clone3".into()], LinuxSeccompAction::ScmpActErrno);
        r.set_errno_ret(Some(ENOSYS));
        rules.push(r);
    }
    if !names.contains("socket") {
        // One comparison per rule (libseccomp takes one per argument), so three rules:
        // below AF_ALG, between the two, above AF_VSOCK.
        for a in [
            arg(LinuxSeccompOperator::ScmpCmpLt, AF_ALG, None),
            arg(LinuxSeccompOperator::ScmpCmpEq, AF_ALG + 1, None),
            arg(LinuxSeccompOperator::ScmpCmpGt, AF_VSOCK, None),
        ] {
            rules.push(with_arg("socket", a));
        }
    }
    if !names.contains("personality") {
        for value in PERSONALITIES {
            rules.push(with_arg(
                "personality",
                arg(LinuxSeccompOperator::ScmpCmpEq, value, None),
            ));
        }
    }
    let mut profile = LinuxSeccomp::default();
    profile.set_default_action(LinuxSeccompAction::ScmpActErrno);
    profile.set_default_errno_ret(Some(EPERM));
    profile.set_architectures(Some(ARCHITECTURES.to_vec()));
    profile.set_syscalls(Some(rules));
    profile
}

fn rule(names: Vec<String>, action: LinuxSeccompAction) -> LinuxSyscall {
    let mut r = LinuxSyscall::default();
    r.set_names(names);
    r.set_action(action);
    r
}

/// The capabilities containerd gives a container `ctr run` starts (its default set), for
/// the profile of pulled images.
pub const CONTAINERD_CAPABILITIES: &[Capability] = &[
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

#[cfg(test)]
mod tests {
    use super::super::syscalls::is_known;
    use super::*;

    fn caps(list: &[Capability]) -> HashSet<Capability> {
        list.iter().copied().collect()
    }

    #[test]
    fn every_name_is_one_libseccomp_knows_and_groups_do_not_overlap() {
        let mut seen = BTreeSet::new();
        for (group, names) in GROUPS {
            for n in *names {
                assert!(is_known(n), "{group}: {n}");
                assert!(seen.insert(*n), "{n} is in two groups");
            }
        }
        for (cap, names) in BY_CAPABILITY {
            for n in *names {
                assert!(is_known(n), "{cap}: {n}");
                assert!(!seen.contains(n), "{n} is allowed anyway");
            }
        }
        for n in ["clone", "clone3", "socket", "personality"] {
            assert!(is_known(n) && !seen.contains(n), "{n}");
        }
    }

    #[test]
    fn what_a_default_container_may_not_do() {
        let names = allowed(&caps(&[Capability::Chown, Capability::SysChroot]), &[]);
        for refused in [
            "keyctl",
            "add_key",
            "request_key",
            "mount",
            "umount2",
            "unshare",
            "setns",
            "clone",
            "clone3",
            "ptrace",
            "process_vm_readv",
            "process_vm_writev",
            "kcmp",
            "kexec_load",
            "kexec_file_load",
            "init_module",
            "finit_module",
            "delete_module",
            "bpf",
            "perf_event_open",
            "userfaultfd",
            "personality",
            "modify_ldt",
            "io_uring_setup",
            "swapon",
            "reboot",
            "pivot_root",
            "open_by_handle_at",
            "syslog",
            "acct",
            "settimeofday",
            "iopl",
            "vm86",
            "socket",
        ] {
            assert!(!names.contains(refused), "{refused} is allowed");
        }
        assert!(names.contains("chroot") && names.contains("execve"));
        let with_admin = allowed(&caps(&[Capability::SysAdmin]), &["keyctl".into()]);
        assert!(with_admin.contains("mount") && with_admin.contains("unshare"));
        assert!(with_admin.contains("keyctl") && !with_admin.contains("ptrace"));
    }

    #[test]
    fn argument_rules_follow_what_is_allowed_outright() {
        let json = |p: &LinuxSeccomp| serde_json::to_value(p).unwrap();
        let v = json(&profile(&HashSet::new(), &[]));
        assert_eq!(v["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(v["defaultErrnoRet"], 1);
        assert_eq!(
            v["architectures"],
            serde_json::json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"])
        );
        let rules = v["syscalls"].as_array().unwrap();
        let of = |name: &str| -> Vec<&serde_json::Value> {
            rules
                .iter()
                .filter(|r| r["names"].as_array().unwrap().iter().any(|n| n == name))
                .collect()
        };
        let clone = of("clone");
        assert_eq!(clone.len(), 1);
        assert_eq!(
            clone[0]["args"],
            serde_json::json!([{"index": 0, "op": "SCMP_CMP_MASKED_EQ", "value": 0x7E02_0000u64, "valueTwo": 0}])
        );
        let clone3 = of("clone3");
        assert_eq!(clone3[0]["action"], "SCMP_ACT_ERRNO");
        assert_eq!(clone3[0]["errnoRet"], 38);
        assert_eq!(of("socket").len(), 3);
        assert_eq!(of("personality").len(), 3);
        assert!(of("keyctl").is_empty());
        // Allowed outright, the argument rules go (two rules for one call would conflict).
        let v = json(&profile(
            &caps(&[Capability::SysAdmin]),
            &["socket".into(), "personality".into()],
        ));
        let rules = v["syscalls"].as_array().unwrap();
        assert_eq!(rules.len(), 1, "{rules:?}");
        let names = rules[0]["names"].as_array().unwrap();
        assert!(
            names.windows(2).all(|w| w[0].as_str() < w[1].as_str()),
            "sorted"
        );
    }
}
