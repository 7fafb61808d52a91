//! Containers confined by default, end to end, on one boot of a variant of the qemu profile
//! with four extra services (Debian's busybox-static, plus a static C program the test
//! compiles with `gcc -static` and puts in with `files`):
//!
//! - `probe` runs with the defaults and tries what a container must not do: every call
//!   fails with `EPERM` (`unshare(CLONE_NEWUSER)` and `clone` with namespace flags, the key
//!   calls, `mount`/`umount2`, `ptrace` of its container's PID 1 and of its own child, kernel
//!   modules, `kexec_load`, `bpf`, `perf_event_open`, `userfaultfd`, `io_uring_setup`, the
//!   `UNAME26` personality, `AF_VSOCK` and `AF_ALG` sockets), `clone3` with `ENOSYS`, while
//!   `fork`, an `AF_INET` socket and reading the personality work; the kernel reports a
//!   seccomp filter and no_new_privs;
//! - `relaxed` runs the same program with `seccomp-allow = ["keyctl"]`: `keyctl` now reaches
//!   the kernel (`ENOKEY`), the other key calls stay refused;
//! - `userns` has `user-namespace = true` and a bind mount of `/var/lib/userns`: it is uid 0
//!   in its namespace, the image's files show as the overflow id, and the file it writes
//!   belongs on the host to the range the builder derived from its name (read from the state
//!   partition after the power-off with debugfs);
//! - `bomb` is a fork bomb under the default pids limit (and `cpus = 0.5`): fork fails with
//!   `EAGAIN` at the limit, and while it keeps trying, the demo web page answers through a
//!   port forward, the boot reaches `healthy`, and at the power-off the init stops the bomb
//!   and every other service and powers off cleanly.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crust_builder::service::IdRange;
use crust_format::phase::Phase;
use crust_tests::{
    BootOptions, Disk, boot_timeout, build_profile, built_image, extract, free_port, partition,
    profiles_copy, run_ok,
};

/// The probe and the fork bomb: `confine-probe probe` prints one `check CALL: RESULT` line
/// per call (`ok` or the errno's name), `confine-probe bomb` forks until the pids limit
/// stops it and then keeps every process trying.
const PROBE_C: &str = r#"
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/personality.h>
#include <sys/ptrace.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void report(const char *call, long r) {
    if (r >= 0)
        dprintf(1, "check %s: ok\n", call);
    else
        dprintf(1, "check %s: %s\n", call, strerrorname_np(errno));
}

/* A raw clone or clone3: a child that exists only to be reaped. */
static long reaped(long r) {
    if (r == 0)
        _exit(0);
    if (r > 0)
        waitpid((pid_t)r, NULL, 0);
    return r;
}

static void status(void) {
    char buf[4096];
    int fd = open("/proc/self/status", O_RDONLY);
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    buf[n > 0 ? n : 0] = 0;
    char *seccomp = strstr(buf, "\nSeccomp:"), *nnp = strstr(buf, "\nNoNewPrivs:");
    dprintf(1, "status seccomp %c no_new_privs %c\n",
            seccomp ? seccomp[strlen("\nSeccomp:") + 1] : '?',
            nnp ? nnp[strlen("\nNoNewPrivs:") + 1] : '?');
}

static int probe(void) {
    status();
    report("unshare(CLONE_NEWUSER)", unshare(CLONE_NEWUSER));
    report("unshare(CLONE_NEWNS)", unshare(CLONE_NEWNS));
    report("clone(CLONE_NEWUSER)", reaped(syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0)));
    uint64_t args[8] = {0, 0, 0, 0, SIGCHLD, 0, 0, 0};
    report("clone3", reaped(syscall(SYS_clone3, args, sizeof args)));
    report("fork", reaped(fork()));
    report("keyctl", syscall(SYS_keyctl, 0 /* GET_KEYRING_ID */, -1 /* thread */, 0));
    report("add_key", syscall(SYS_add_key, "user", "crust", "x", 1, -2 /* process */));
    report("request_key", syscall(SYS_request_key, "user", "crust", NULL, 0));
    report("mount", mount("tmpfs", "/tmp", "tmpfs", 0, NULL));
    report("umount2", umount2("/tmp", MNT_DETACH));
    report("ptrace(pid 1)", ptrace(PTRACE_ATTACH, 1, 0, 0));
    pid_t child = fork();
    if (child == 0) {
        pause();
        _exit(0);
    }
    report("ptrace(child)", ptrace(PTRACE_ATTACH, child, 0, 0));
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
    char here[16] = "confined", there[16];
    struct iovec local = {there, sizeof there}, remote = {here, sizeof here};
    report("process_vm_readv", process_vm_readv(getpid(), &local, 1, &remote, 1, 0));
    char image[64] = {0};
    report("init_module", syscall(SYS_init_module, image, sizeof image, ""));
    report("finit_module", syscall(SYS_finit_module, open("/bin/busybox", O_RDONLY), "", 0));
    report("delete_module", syscall(SYS_delete_module, "virtio_net", O_NONBLOCK));
    report("kexec_load", syscall(SYS_kexec_load, 0, 0, NULL, 0));
    char attr[128] = {0};
    report("bpf", syscall(SYS_bpf, 0 /* MAP_CREATE */, attr, sizeof attr));
    report("perf_event_open", syscall(SYS_perf_event_open, attr, 0, -1, -1, 0));
    report("userfaultfd", syscall(SYS_userfaultfd, 0));
    report("io_uring_setup", syscall(SYS_io_uring_setup, 1, attr));
    report("personality(UNAME26)", personality(0x0020000));
    report("personality(query)", personality(0xffffffff));
    report("socket(AF_VSOCK)", socket(40, SOCK_STREAM, 0));
    report("socket(AF_ALG)", socket(38, SOCK_SEQPACKET, 0));
    report("socket(AF_INET)", socket(AF_INET, SOCK_STREAM, 0));
    dprintf(1, "probe done\n");
    return 0;
}

static struct {
    volatile int refused, reported;
} *shared;

static void leave(int sig) {
    (void)sig;
    _exit(0);
}

/* Every process forks forever; children do the same. The bombers run at the lowest
   priority, so this PID 1, in the same cgroup, still gets to count them. */
static void bomb_loop(void) {
    setpriority(PRIO_PROCESS, 0, 19);
    for (;;) {
        pid_t p = fork();
        if (p == 0)
            continue;
        if (p < 0 && errno == EAGAIN) {
            __sync_fetch_and_add(&shared->refused, 1);
            shared->reported = 1;
        }
    }
}

/* The processes of this PID namespace (its /proc), and how many of them are zombies. */
static int processes(int *zombies) {
    int n = 0;
    *zombies = 0;
    DIR *d = opendir("/proc");
    struct dirent *e;
    while (d && (e = readdir(d))) {
        if (e->d_name[0] < '1' || e->d_name[0] > '9')
            continue;
        n++;
        char path[64], stat[256];
        snprintf(path, sizeof path, "/proc/%s/stat", e->d_name);
        int fd = open(path, O_RDONLY);
        ssize_t len = fd >= 0 ? read(fd, stat, sizeof stat - 1) : -1;
        if (fd >= 0)
            close(fd);
        if (len > 0) {
            stat[len] = 0;
            char *end = strrchr(stat, ')');
            if (end && end[2] == 'Z')
                (*zombies)++;
        }
    }
    if (d)
        closedir(d);
    return n;
}

static int bomb(void) {
    shared = mmap(NULL, sizeof *shared, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    signal(SIGTERM, leave);
    dprintf(1, "forking\n");
    if (fork() == 0)
        bomb_loop();
    while (!shared->reported)
        usleep(100000);
    /* Forks that raced the first refusal have ended one way or the other by now; no
       bomber ever exits, so the namespace's processes are the cgroup's. */
    sleep(1);
    int zombies, n = processes(&zombies);
    dprintf(1, "bomb stopped at %d processes (%d zombies): fork failed with EAGAIN\n", n, zombies);
    sleep(10);
    dprintf(1, "bomb still refused after 10 s: %d forks refused\n", shared->refused);
    for (;;)
        pause();
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "bomb") == 0)
        return bomb();
    return probe();
}
"#;

/// The variant: the qemu profile (with its demo web service) and the four services.
const VARIANT: &str = r#"include = "qemu.toml"

[[service]]
name = "probe"
image.debian = ["busybox-static"]
command = ["/bin/busybox", "sh", "-c", "/usr/local/bin/confine-probe; echo probe exits"]
files = [{ source = "confine-probe", path = "/usr/local/bin/confine-probe", mode = "0755" }]
restart = "never"

[[service]]
name = "relaxed"
image.debian = ["busybox-static"]
command = ["/usr/local/bin/confine-probe"]
files = [{ source = "confine-probe", path = "/usr/local/bin/confine-probe", mode = "0755" }]
seccomp-allow = ["keyctl"]
restart = "never"

[[service]]
name = "userns"
image.debian = ["busybox-static"]
user-namespace = true
mounts = [{ source = "/var/lib/userns", target = "/data" }]
command = ["/bin/busybox", "sh", "-c", "B=/bin/busybox; echo \"inside: uid $($B id -u) gid $($B id -g), /bin/busybox owned by $($B stat -c %u /bin/busybox), uid_map $($B cat /proc/self/uid_map)\"; echo written-inside > /data/made-inside && echo \"wrote /data/made-inside as $($B stat -c %u:%g /data/made-inside)\""]
restart = "never"

[[service]]
name = "bomb"
image.debian = ["busybox-static"]
command = ["/usr/local/bin/confine-probe", "bomb"]
files = [{ source = "confine-probe", path = "/usr/local/bin/confine-probe", mode = "0755" }]
cpus = 0.5
stop-timeout = 5
restart = "never"
"#;

/// What the default profile must answer, call by call.
const REFUSED: &[(&str, &str)] = &[
    ("unshare(CLONE_NEWUSER)", "EPERM"),
    ("unshare(CLONE_NEWNS)", "EPERM"),
    ("clone(CLONE_NEWUSER)", "EPERM"),
    ("clone3", "ENOSYS"),
    ("keyctl", "EPERM"),
    ("add_key", "EPERM"),
    ("request_key", "EPERM"),
    ("mount", "EPERM"),
    ("umount2", "EPERM"),
    ("ptrace(pid 1)", "EPERM"),
    ("ptrace(child)", "EPERM"),
    ("process_vm_readv", "EPERM"),
    ("init_module", "EPERM"),
    ("finit_module", "EPERM"),
    ("delete_module", "EPERM"),
    ("kexec_load", "EPERM"),
    ("bpf", "EPERM"),
    ("perf_event_open", "EPERM"),
    ("userfaultfd", "EPERM"),
    ("io_uring_setup", "EPERM"),
    ("personality(UNAME26)", "EPERM"),
    ("socket(AF_VSOCK)", "EPERM"),
    ("socket(AF_ALG)", "EPERM"),
    ("fork", "ok"),
    ("personality(query)", "ok"),
    ("socket(AF_INET)", "ok"),
];

fn compile_probe(dir: &Path) {
    let source = dir.join("confine-probe.c");
    std::fs::write(&source, PROBE_C).unwrap();
    run_ok(
        Command::new("gcc")
            .args(["-static", "-O2", "-Wall", "-o"])
            .arg(dir.join("confine-probe"))
            .arg(&source),
    );
}

/// The demo page's status line, through the port forward.
fn get(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the port forward");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\nHost: crust\r\n\r\n")
        .unwrap();
    let mut page = String::new();
    s.read_to_string(&mut page).unwrap();
    page.lines().next().unwrap_or_default().to_owned()
}

/// The console line containing `text`, waiting for it unless it went by already.
fn line(t: &mut crust_tests::TestVm, text: &str) -> String {
    if let Some(l) = t.vm.console().history().iter().find(|l| l.contains(text)) {
        return l.clone();
    }
    t.vm.wait_for_text(text, Duration::from_secs(180))
        .unwrap_or_else(|e| panic!("{e}"))
}

/// What `service` printed for `call` (`check CALL: RESULT`).
fn result(history: &[String], service: &str, call: &str) -> String {
    let prefix = format!("{service}: check {call}: ");
    history
        .iter()
        .find_map(|l| l.split(&prefix).nth(1).map(|r| r.trim().to_owned()))
        .unwrap_or_else(|| panic!("{service} printed nothing for {call}"))
}

/// `debugfs`'s `stat` of `path` on the state partition: (uid, gid).
fn owner_on_state(disk: &Disk, path: &str) -> (u32, u32) {
    let raw = disk.to_raw();
    let fs = disk.scratch.path().join("state.img");
    extract(&raw, &partition(&raw, "state"), &fs, None);
    let out = run_ok(
        Command::new("debugfs")
            .args(["-R", &format!("stat {path}")])
            .arg(&fs),
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let field = |name: &str| -> u32 {
        text.split(name)
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in debugfs stat {path}:\n{text}"))
    };
    (field("User:"), field("Group:"))
}

#[test]
#[ignore = "builds a variant image and boots it; run through `cargo xtask test`"]
fn default_containers_are_confined_and_a_fork_bomb_stays_in_its_service() {
    let started_at = Instant::now();
    let img = built_image();
    let dir = profiles_copy();
    compile_probe(dir.path());
    std::fs::write(dir.path().join("variant.toml"), VARIANT).unwrap();
    std::fs::copy(
        dir.path().join("qemu.lock"),
        dir.path().join("variant.lock"),
    )
    .unwrap();
    let variant = build_profile(dir.path(), "variant", false);
    eprintln!("variant built in {:.0?}", started_at.elapsed());

    let mut disk = Disk::over(&variant.image, &img.dir);
    let port = free_port();
    let mut t = disk.boot_with(BootOptions::default(), |c| c.forwards.push((port, 80)));
    let timeout = boot_timeout(t.accel);
    let started =
        t.vm.wait_for_phase(Phase::Services, timeout)
            .unwrap_or_else(|e| panic!("{e}"));
    for name in ["web", "probe", "relaxed", "userns", "bomb"] {
        assert!(started.detail.contains(name), "{}", started.detail);
    }

    // The default profile, call by call.
    line(&mut t, "probe: probe done");
    let history = t.vm.console().history();
    for (call, expected) in REFUSED {
        assert_eq!(&result(history, "probe", call), expected, "probe: {call}");
    }
    assert!(
        history
            .iter()
            .any(|l| l.contains("probe: status seccomp 2 no_new_privs 1")),
        "the kernel reports no seccomp filter"
    );

    // A relaxed profile: keyctl reaches the kernel, nothing else changed.
    line(&mut t, "relaxed: probe done");
    let history = t.vm.console().history();
    assert_eq!(result(history, "relaxed", "keyctl"), "ENOKEY");
    for call in ["add_key", "request_key", "unshare(CLONE_NEWUSER)", "mount"] {
        assert_eq!(result(history, "relaxed", call), "EPERM", "relaxed: {call}");
    }

    // A user namespace: root inside, the mapped range outside.
    let range = IdRange::of_service("userns");
    let inside = line(&mut t, "userns: inside:");
    assert!(
        inside.contains("uid 0 gid 0, /bin/busybox owned by 65534"),
        "{inside}"
    );
    let uid_map: Vec<&str> = inside
        .split("uid_map")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(uid_map, ["0", &range.host.to_string(), "65536"], "{inside}");
    let wrote = line(&mut t, "userns: wrote /data/made-inside as");
    assert!(wrote.ends_with("as 0:0"), "{wrote}");

    // The fork bomb meets its pids limit; the rest of the host carries on.
    let stopped = line(&mut t, "bomb: bomb stopped at");
    let processes: u32 = stopped
        .split("stopped at ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{stopped}"));
    assert!(
        (1016..=1024).contains(&processes)
            && stopped.ends_with("(0 zombies): fork failed with EAGAIN"),
        "the default limit is 1024: {stopped}"
    );
    let status = get(port);
    assert!(
        status.contains(" 200 "),
        "the demo page during the bomb: {status}"
    );
    line(&mut t, "bomb: bomb still refused after 10 s");
    let status = get(port);
    assert!(
        status.contains(" 200 "),
        "the demo page during the bomb: {status}"
    );
    line(&mut t, &format!("crust: {}:", Phase::Healthy.as_str()));
    eprintln!(
        "bomb at its limit, page served, boot healthy after {:.0?}",
        started_at.elapsed()
    );

    // The init stops the bomb (every one of its processes) and the rest, and powers off.
    t.power_off();
    let history = t.vm.console().history();
    for name in ["bomb", "web"] {
        assert!(
            history
                .iter()
                .any(|l| l.contains(&format!("{name}: stopped in"))),
            "{name} was not stopped"
        );
    }
    drop(t);

    let file = owner_on_state(&disk, "/lib/userns/made-inside");
    assert_eq!(
        file,
        (range.host, range.host),
        "a file the container's root wrote belongs to its range on the host"
    );
    assert_eq!(
        owner_on_state(&disk, "/lib/userns"),
        (range.host, range.host)
    );
    eprintln!("confinement test: {:.0?}", started_at.elapsed());
}
