//! What this machine needs, and getting it: Debian packages through apt, the Rust target
//! for the static init through rustup.
//!
//! Each command states what it needs as a list of [`Need`]s. Anything missing is installed
//! with `apt-get` when running as root (saying so first), or named with the command to run
//! otherwise. Nothing is ever downloaded from anywhere but Debian's archive and rustup.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// A file or command on this machine, and the Debian package that provides it.
#[derive(Debug, Clone, Copy)]
pub struct Need {
    /// A command name (looked up on `PATH`) or an absolute file path.
    pub what: &'static str,
    /// The package providing it.
    pub package: &'static str,
}

const fn need(what: &'static str, package: &'static str) -> Need {
    Need { what, package }
}

/// Building an image: apt and Debian's archive keyring; qemu-img, GNU tar and gzip for
/// the output formats.
pub const BUILD: &[Need] = &[
    need("apt-get", "apt"),
    need(
        "/usr/share/keyrings/debian-archive-keyring.gpg",
        "debian-archive-keyring",
    ),
    need("qemu-img", "qemu-utils"),
    need("tar", "tar"),
    need("gzip", "gzip"),
    // Secure Boot ([secure-boot] profiles, `keygen --secure-boot`): keys, signed variable
    // updates, Authenticode signatures with a fixed signing time.
    need("openssl", "openssl"),
    need("sign-efi-sig-list", "efitools"),
    need("osslsigncode", "osslsigncode"),
    // The observability agent's TLS (ring) has C, compiled for the static musl target.
    need("musl-gcc", "musl-tools"),
    // The installer ISO (`--format iso`): hybrid El Torito + GPT, made by xorriso.
    need("xorriso", "xorriso"),
];

/// A Python virtual environment with Debian's Python (for moto in the AMI test).
pub const PYTHON_VENV: &[Need] = &[need("/usr/lib/python3.11/ensurepip", "python3-venv")];

/// Booting an image.
pub const QEMU: &[Need] = &[
    need("qemu-system-x86_64", "qemu-system-x86"),
    need("qemu-img", "qemu-utils"),
    need("/usr/share/OVMF/OVMF_CODE_4M.fd", "ovmf"),
    need("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd", "ovmf"),
    // The TPM 2.0 of Secure Boot machines.
    need("swtpm", "swtpm"),
];

/// The test suite's independent checkers.
pub const TEST: &[Need] = &[
    need("sgdisk", "gdisk"),
    need("sfdisk", "fdisk"),
    need("fsck.fat", "dosfstools"),
    need("mcopy", "mtools"),
    need("unsquashfs", "squashfs-tools"),
    need("veritysetup", "cryptsetup-bin"),
    need("cpio", "cpio"),
    need("objdump", "binutils"),
    need("systemd-dissect", "systemd-container"),
    need("blkid", "util-linux"),
    need("openssl", "openssl"),
    need("depmod", "kmod"),
    need("zstd", "zstd"),
    need("losetup", "mount"),
    need("mkfs.ext4", "e2fsprogs"),
    need("debugfs", "e2fsprogs"),
    // The fleet tests' coordinator.
    need("etcd", "etcd-server"),
    need("etcdctl", "etcd-client"),
    // Update repositories as they are hosted: a virtual host over HTTPS, behind a proxy.
    need("nginx", "nginx"),
    need("squid", "squid"),
    // UEFI HTTP boot on a network of its own (a network namespace with a tap device): the
    // DHCP and TFTP server that hands out the URL.
    need("dnsmasq", "dnsmasq-base"),
    need("ip", "iproute2"),
    // Offline attacks on a test machine's disk: a block of its qcow2 overlay overwritten,
    // a static program planted on its state partition.
    need("qemu-io", "qemu-utils"),
    need("gcc", "gcc"),
    need("/usr/lib/x86_64-linux-gnu/libc.a", "libc6-dev"),
    need("mlabel", "mtools"),
    // NoCloud seeds as cloud-localds makes them (ISO 9660, label cidata).
    need("genisoimage", "genisoimage"),
    need("sha256sum", "coreutils"),
    // Data volumes: the disk probe checked against images the real tools make (and
    // against blkid), RAID members read back by mdadm.
    need("mkfs.xfs", "xfsprogs"),
    need("xfs_repair", "xfsprogs"),
    need("mdadm", "mdadm"),
    need("mkswap", "util-linux"),
    need("mkfs.vfat", "dosfstools"),
    need("cryptsetup", "cryptsetup-bin"),
    // The seccomp profiles' system call names, checked against libseccomp itself.
    need("scmp_sys_resolver", "seccomp"),
    // Secure Boot signatures checked by another implementation than the signer's.
    need("sbverify", "sbsigntool"),
    // The sealed /var: a software TPM for the machines and the command layer's tests,
    // tpm2-tools and systemd-measure as independent oracles.
    need("swtpm", "swtpm"),
    need("tpm2_unseal", "tpm2-tools"),
    need("/usr/lib/systemd/systemd-measure", "systemd"),
    // The encrypted /var decrypted by another AES-XTS than the kernel's (OpenSSL's).
    need(
        "/usr/lib/python3/dist-packages/cryptography/__init__.py",
        "python3-cryptography",
    ),
    // Container images for the service tests: a registry, OCI layouts made by umoci,
    // copied by skopeo (which the builder also uses for registry images), busybox from
    // its package.
    need("docker-registry", "docker-registry"),
    need("skopeo", "skopeo"),
    need("umoci", "umoci"),
    need("dpkg-deb", "dpkg"),
    need(
        "/usr/lib/systemd/boot/efi/linuxx64.efi.stub",
        "systemd-boot-efi",
    ),
    // Observability: Prometheus scrapes a guest and lints the exposition format
    // (`promtool`); rsyslog receives its logs (and over TLS, with its GnuTLS driver).
    need("prometheus", "prometheus"),
    need("promtool", "prometheus"),
    need("rsyslogd", "rsyslog"),
    need("curl", "curl"),
    need(
        "/usr/lib/x86_64-linux-gnu/rsyslog/lmnsd_gtls.so",
        "rsyslog-gnutls",
    ),
];

fn present(what: &str) -> bool {
    if what.starts_with('/') {
        return Path::new(what).exists();
    }
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(what).is_file()))
        || ["/usr/sbin", "/sbin"]
            .iter()
            .any(|d| Path::new(d).join(what).is_file())
}

/// True when running as root (`/proc/self` belongs to the effective user).
fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Makes sure every need is met, installing missing packages when possible.
///
/// Everything a command needs is asked for in one call, so one `apt-get install` brings
/// all of it. Installing can remove what was there: a package from another suite (a
/// backported `qemu-utils`, say) that conflicts with one the install pulls in is replaced
/// by nothing. So the needs are checked again afterwards; what went missing is installed
/// in a second round (now Debian's own version is the candidate), and whatever is still
/// missing after that is named, need by need, instead of failing later.
pub fn ensure(needs: &[&[Need]]) -> Result<()> {
    let all: Vec<Need> = needs.iter().flat_map(|n| n.iter().copied()).collect();
    let mut installed: Vec<&str> = Vec::new();
    for round in 0..2 {
        let missing = missing_packages(&all);
        if missing.is_empty() {
            return Ok(());
        }
        let list = missing.join(" ");
        if !is_root() {
            bail!(
                "this machine lacks Debian packages {list}; install them with\n    sudo apt-get install --no-install-recommends {list}"
            );
        }
        if round == 0 {
            eprintln!("crust: installing missing host packages with apt-get: {list}");
            apt_update()?;
        } else {
            eprintln!(
                "crust: installing {} removed {list}, which this command needs too; installing \
                 {} again from Debian",
                installed.join(" "),
                if missing.len() == 1 { "it" } else { "them" }
            );
        }
        let status = Command::new("apt-get")
            .args(["-q", "-y", "install", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("cannot run apt-get")?;
        if !status.success() {
            bail!("apt-get install {list} failed");
        }
        installed.extend(missing);
    }
    let still: Vec<String> = all
        .iter()
        .filter(|n| !present(n.what))
        .map(|n| format!("{} (package {})", n.what, n.package))
        .collect();
    if still.is_empty() {
        return Ok(());
    }
    bail!(
        "after installing {}, this machine still lacks {}; apt-get removes a package when \
         another it installs conflicts with it: install these by hand (`apt-get install \
         --no-install-recommends PACKAGE`) and run the command again",
        installed.join(" "),
        still.join(", ")
    )
}

/// The packages behind the needs that are not met, sorted, without repeats.
fn missing_packages(needs: &[Need]) -> Vec<&'static str> {
    let mut missing: Vec<&'static str> = needs
        .iter()
        .filter(|n| !present(n.what))
        .map(|n| n.package)
        .collect();
    missing.sort_unstable();
    missing.dedup();
    missing
}

/// `apt-get update`, once per run.
fn apt_update() -> Result<()> {
    static UPDATED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    if UPDATED.get().is_some() {
        return Ok(());
    }
    let status = Command::new("apt-get")
        .args(["-q", "update"])
        .status()
        .context("cannot run apt-get")?;
    if !status.success() {
        bail!("apt-get update failed; check the machine's apt sources and network");
    }
    let _ = UPDATED.set(());
    Ok(())
}

/// The Rust target the init is built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitTarget {
    /// musl, static by default.
    Musl,
    /// glibc with `+crt-static`: the fallback that needs no rustup download.
    GlibcStatic,
}

impl InitTarget {
    /// The target triple.
    pub fn triple(self) -> &'static str {
        match self {
            InitTarget::Musl => "x86_64-unknown-linux-musl",
            InitTarget::GlibcStatic => "x86_64-unknown-linux-gnu",
        }
    }
}

/// The musl target if it is installed or rustup can add it; glibc static otherwise (asked
/// once per run).
pub fn init_target() -> InitTarget {
    static TARGET: std::sync::OnceLock<InitTarget> = std::sync::OnceLock::new();
    *TARGET.get_or_init(find_init_target)
}

fn find_init_target() -> InitTarget {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.trim() == "x86_64-unknown-linux-musl")
        })
        .unwrap_or(false);
    if installed {
        return InitTarget::Musl;
    }
    eprintln!(
        "crust: adding the Rust target x86_64-unknown-linux-musl for the static init (rustup)"
    );
    let added = Command::new("rustup")
        .args(["target", "add", "x86_64-unknown-linux-musl"])
        .status()
        .is_ok_and(|s| s.success());
    if added {
        InitTarget::Musl
    } else {
        eprintln!(
            "crust: rustup could not add musl; building the init as a static glibc binary instead"
        );
        InitTarget::GlibcStatic
    }
}

/// The PyPI packages behind Secure Boot variable stores, pinned: Red Hat's `virt-fw-vars`
/// (OVMF stores with keys enrolled) and AWS's `uefivars` (an AMI's `UefiData`).
const UEFI_TOOLS: &[&str] = &["virt-firmware==26.10", "uefivars==1.2"];

/// The programs that make UEFI variable stores.
#[derive(Debug, Clone)]
pub struct UefiTools {
    /// `virt-fw-vars`.
    pub virt_fw_vars: std::path::PathBuf,
    /// `uefivars`.
    pub uefivars: std::path::PathBuf,
}

/// [`UefiTools`] in a Python virtual environment under `target/crust/uefi-tools`, installed
/// from PyPI on first use (neither is packaged for Debian 12).
pub fn uefi_tools() -> Result<UefiTools> {
    let venv = crate::image::crust_target().join("uefi-tools");
    let bin = venv.join("bin");
    let tools = UefiTools {
        virt_fw_vars: bin.join("virt-fw-vars"),
        uefivars: bin.join("uefivars"),
    };
    let stamp = venv.join("crust-requirements");
    let wanted = UEFI_TOOLS.join(" ");
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) {
        return Ok(tools);
    }
    eprintln!(
        "crust: installing {wanted} from PyPI into {}",
        venv.display()
    );
    let made = |python: &str| {
        Command::new(python)
            .args(["-m", "venv", "--clear"])
            .arg(&venv)
            .status()
            .is_ok_and(|s| s.success())
    };
    if !made("python3") {
        // Debian's Python needs its venv module from a separate package.
        ensure(&[PYTHON_VENV])?;
        if !made("/usr/bin/python3") {
            bail!(
                "cannot make a Python virtual environment in {}",
                venv.display()
            );
        }
    }
    let status = Command::new(bin.join("pip"))
        .args(["install", "--quiet"])
        .args(UEFI_TOOLS)
        .status()
        .context("cannot run pip")?;
    if !status.success() {
        bail!("pip install {wanted} failed (PyPI must be reachable once)");
    }
    std::fs::write(&stamp, &wanted).with_context(|| format!("cannot write {}", stamp.display()))?;
    Ok(tools)
}
