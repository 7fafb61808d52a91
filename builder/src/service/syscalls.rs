//! The system call names the seccomp profiles may use: every name that Debian 12's
//! libseccomp (2.5.4-1+deb12u1, the library crun and runc link in the image) resolves to a
//! system call of x86_64, x86 or x32, the architectures a Crust profile filters.
//!
//! A profile's `seccomp-allow` is checked against this list at build time, so a misspelt
//! name is refused with the profile line instead of being skipped by crun at run time
//! (crun warns and ignores names libseccomp does not know). The list was made by asking
//! `scmp_sys_resolver` for every number of the three architectures; the tests ask it again,
//! name by name and number by number. When the image's libseccomp changes, make the list
//! again the same way.

/// The names, sorted (byte order), for binary search.
#[rustfmt::skip]
pub(super) const KNOWN: &[&str] = &[
    "_llseek", "_newselect", "_sysctl", "accept", "accept4", "access", "acct", "add_key",
    "adjtimex", "afs_syscall", "alarm", "arch_prctl", "bdflush", "bind", "bpf", "break", "brk",
    "cachestat", "capget", "capset", "chdir", "chmod", "chown", "chown32", "chroot",
    "clock_adjtime", "clock_adjtime64", "clock_getres", "clock_getres_time64", "clock_gettime",
    "clock_gettime64", "clock_nanosleep", "clock_nanosleep_time64", "clock_settime",
    "clock_settime64", "clone", "clone3", "close", "close_range", "connect", "copy_file_range",
    "creat", "create_module", "delete_module", "dup", "dup2", "dup3", "epoll_create",
    "epoll_create1", "epoll_ctl", "epoll_ctl_old", "epoll_pwait", "epoll_pwait2", "epoll_wait",
    "epoll_wait_old", "eventfd", "eventfd2", "execve", "execveat", "exit", "exit_group",
    "faccessat", "faccessat2", "fadvise64", "fadvise64_64", "fallocate", "fanotify_init",
    "fanotify_mark", "fchdir", "fchmod", "fchmodat", "fchmodat2", "fchown", "fchown32",
    "fchownat", "fcntl", "fcntl64", "fdatasync", "fgetxattr", "finit_module", "flistxattr",
    "flock", "fork", "fremovexattr", "fsconfig", "fsetxattr", "fsmount", "fsopen", "fspick",
    "fstat", "fstat64", "fstatat64", "fstatfs", "fstatfs64", "fsync", "ftime", "ftruncate",
    "ftruncate64", "futex", "futex_requeue", "futex_time64", "futex_wait", "futex_waitv",
    "futex_wake", "futimesat", "get_kernel_syms", "get_mempolicy", "get_robust_list",
    "get_thread_area", "getcpu", "getcwd", "getdents", "getdents64", "getegid", "getegid32",
    "geteuid", "geteuid32", "getgid", "getgid32", "getgroups", "getgroups32", "getitimer",
    "getpeername", "getpgid", "getpgrp", "getpid", "getpmsg", "getppid", "getpriority",
    "getrandom", "getresgid", "getresgid32", "getresuid", "getresuid32", "getrlimit",
    "getrusage", "getsid", "getsockname", "getsockopt", "gettid", "gettimeofday", "getuid",
    "getuid32", "getxattr", "gtty", "idle", "init_module", "inotify_add_watch", "inotify_init",
    "inotify_init1", "inotify_rm_watch", "io_cancel", "io_destroy", "io_getevents",
    "io_pgetevents", "io_pgetevents_time64", "io_setup", "io_submit", "io_uring_enter",
    "io_uring_register", "io_uring_setup", "ioctl", "ioperm", "iopl", "ioprio_get",
    "ioprio_set", "ipc", "kcmp", "kexec_file_load", "kexec_load", "keyctl", "kill",
    "landlock_add_rule", "landlock_create_ruleset", "landlock_restrict_self", "lchown",
    "lchown32", "lgetxattr", "link", "linkat", "listen", "listxattr", "llistxattr", "lock",
    "lookup_dcookie", "lremovexattr", "lseek", "lsetxattr", "lstat", "lstat64", "madvise",
    "map_shadow_stack", "mbind", "membarrier", "memfd_create", "memfd_secret", "migrate_pages",
    "mincore", "mkdir", "mkdirat", "mknod", "mknodat", "mlock", "mlock2", "mlockall", "mmap",
    "mmap2", "modify_ldt", "mount", "mount_setattr", "move_mount", "move_pages", "mprotect",
    "mpx", "mq_getsetattr", "mq_notify", "mq_open", "mq_timedreceive",
    "mq_timedreceive_time64", "mq_timedsend", "mq_timedsend_time64", "mq_unlink", "mremap",
    "msgctl", "msgget", "msgrcv", "msgsnd", "msync", "munlock", "munlockall", "munmap",
    "name_to_handle_at", "nanosleep", "newfstatat", "nfsservctl", "nice", "oldfstat",
    "oldlstat", "oldolduname", "oldstat", "olduname", "open", "open_by_handle_at", "open_tree",
    "openat", "openat2", "pause", "perf_event_open", "personality", "pidfd_getfd",
    "pidfd_open", "pidfd_send_signal", "pipe", "pipe2", "pivot_root", "pkey_alloc",
    "pkey_free", "pkey_mprotect", "poll", "ppoll", "ppoll_time64", "prctl", "pread64",
    "preadv", "preadv2", "prlimit64", "process_madvise", "process_mrelease",
    "process_vm_readv", "process_vm_writev", "prof", "profil", "pselect6", "pselect6_time64",
    "ptrace", "putpmsg", "pwrite64", "pwritev", "pwritev2", "query_module", "quotactl",
    "quotactl_fd", "read", "readahead", "readdir", "readlink", "readlinkat", "readv", "reboot",
    "recvfrom", "recvmmsg", "recvmmsg_time64", "recvmsg", "remap_file_pages", "removexattr",
    "rename", "renameat", "renameat2", "request_key", "restart_syscall", "rmdir", "rseq",
    "rt_sigaction", "rt_sigpending", "rt_sigprocmask", "rt_sigqueueinfo", "rt_sigreturn",
    "rt_sigsuspend", "rt_sigtimedwait", "rt_sigtimedwait_time64", "rt_tgsigqueueinfo",
    "sched_get_priority_max", "sched_get_priority_min", "sched_getaffinity", "sched_getattr",
    "sched_getparam", "sched_getscheduler", "sched_rr_get_interval",
    "sched_rr_get_interval_time64", "sched_setaffinity", "sched_setattr", "sched_setparam",
    "sched_setscheduler", "sched_yield", "seccomp", "security", "select", "semctl", "semget",
    "semop", "semtimedop", "semtimedop_time64", "sendfile", "sendfile64", "sendmmsg",
    "sendmsg", "sendto", "set_mempolicy", "set_mempolicy_home_node", "set_robust_list",
    "set_thread_area", "set_tid_address", "setdomainname", "setfsgid", "setfsgid32",
    "setfsuid", "setfsuid32", "setgid", "setgid32", "setgroups", "setgroups32", "sethostname",
    "setitimer", "setns", "setpgid", "setpriority", "setregid", "setregid32", "setresgid",
    "setresgid32", "setresuid", "setresuid32", "setreuid", "setreuid32", "setrlimit", "setsid",
    "setsockopt", "settimeofday", "setuid", "setuid32", "setxattr", "sgetmask", "shmat",
    "shmctl", "shmdt", "shmget", "shutdown", "sigaction", "sigaltstack", "signal", "signalfd",
    "signalfd4", "sigpending", "sigprocmask", "sigreturn", "sigsuspend", "socket",
    "socketcall", "socketpair", "splice", "ssetmask", "stat", "stat64", "statfs", "statfs64",
    "statx", "stime", "stty", "swapoff", "swapon", "symlink", "symlinkat", "sync",
    "sync_file_range", "syncfs", "sysfs", "sysinfo", "syslog", "tee", "tgkill", "time",
    "timer_create", "timer_delete", "timer_getoverrun", "timer_gettime", "timer_gettime64",
    "timer_settime", "timer_settime64", "timerfd_create", "timerfd_gettime",
    "timerfd_gettime64", "timerfd_settime", "timerfd_settime64", "times", "tkill", "truncate",
    "truncate64", "tuxcall", "ugetrlimit", "ulimit", "umask", "umount", "umount2", "uname",
    "unlink", "unlinkat", "unshare", "uselib", "userfaultfd", "ustat", "utime", "utimensat",
    "utimensat_time64", "utimes", "vfork", "vhangup", "vm86", "vm86old", "vmsplice", "vserver",
    "wait4", "waitid", "waitpid", "write", "writev",
];

/// Whether libseccomp knows `name` as a system call of x86_64, x86 or x32.
pub fn is_known(name: &str) -> bool {
    KNOWN.binary_search(&name).is_ok()
}

/// The known name nearest to `name` (at most two letters inserted, removed or changed),
/// for a hint after a misspelling.
pub fn closest(name: &str) -> Option<&'static str> {
    KNOWN
        .iter()
        .map(|k| (distance(name, k), *k))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, k)| k)
}

/// Levenshtein distance between two short ASCII strings.
fn distance(a: &str, b: &str) -> usize {
    let b = b.as_bytes();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.bytes().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (diagonal + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            diagonal = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::process::Command;

    use super::*;

    /// The architectures the profiles filter, as `scmp_sys_resolver -a` names them, and the
    /// number their system calls start at (x32's carry bit 30).
    const ARCHES: [(&str, u32); 3] = [("x86_64", 0), ("x86", 0), ("x32", 0x4000_0000)];

    /// `scmp_sys_resolver -a ARCH WHAT`: a number for a name, a name for a number.
    fn resolve(arch: &str, what: &str) -> String {
        let out = Command::new("scmp_sys_resolver")
            .args(["-a", arch, what])
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run scmp_sys_resolver ({e}): install Debian's seccomp package")
            });
        assert!(out.status.success(), "scmp_sys_resolver -a {arch} {what}");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Runs `f` over `items` on a few threads (each item is one process to start).
    fn parallel<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
        let chunk = items.len().div_ceil(8).max(1);
        std::thread::scope(|s| {
            let handles: Vec<_> = items
                .chunks(chunk)
                .map(|part| s.spawn(|| part.iter().map(&f).collect::<Vec<R>>()))
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        })
    }

    #[test]
    fn the_list_is_sorted() {
        assert!(KNOWN.windows(2).all(|w| w[0] < w[1]));
        assert!(is_known("keyctl") && is_known("socketcall") && !is_known("keyctrl"));
        assert_eq!(closest("keyctrl"), Some("keyctl"));
        assert_eq!(closest("unshar"), Some("unshare"));
        assert_eq!(closest("completely-different"), None);
    }

    #[test]
    fn every_name_is_a_system_call_libseccomp_knows() {
        let unknown: Vec<&str> = parallel(KNOWN, |name: &&'static str| {
            let real = ARCHES
                .iter()
                .any(|(arch, _)| resolve(arch, name).parse::<i64>().is_ok_and(|n| n >= 0));
            (!real).then_some(*name)
        })
        .into_iter()
        .flatten()
        .collect();
        assert!(unknown.is_empty(), "not system calls of x86: {unknown:?}");
    }

    #[test]
    fn no_system_call_of_the_three_architectures_is_missing() {
        let numbers: Vec<(&str, u32)> = ARCHES
            .iter()
            .flat_map(|&(arch, base)| (0..600).map(move |n| (arch, base + n)))
            .collect();
        let names: BTreeSet<String> = parallel(&numbers, |(arch, n)| resolve(arch, &n.to_string()))
            .into_iter()
            .filter(|name| name != "UNKNOWN")
            .collect();
        let missing: Vec<&String> = names.iter().filter(|n| !is_known(n)).collect();
        assert!(
            missing.is_empty(),
            "libseccomp knows these too: {missing:?}"
        );
    }
}
