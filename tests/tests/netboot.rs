//! Network boot (docs/METAL.md), under OVMF with real servers:
//!
//! - UEFI PXE from QEMU's user-network TFTP server: a diskless machine to `ready` with `/`
//!   on dm-verity, tmpfs `/var` and the demo page served, the images fetched by TFTP; the
//!   installer UKI fetching the release and installing it onto an empty disk that then
//!   boots;
//! - a network of its own (a network namespace with a tap device) with Debian's dnsmasq
//!   (DHCP and TFTP) and nginx, configured as docs/METAL.md says: UEFI HTTP boot, where
//!   dnsmasq answers the firmware's `HTTPClient` request with the URL of `netboot.efi`, the
//!   firmware loads the UKI over HTTP, and the init takes the folder from its own lease and
//!   fetches `root.img` and `verity.img` from nginx (its access log says so) to `ready`,
//!   without an update agent, `/var` on the empty disk its user-data names (formatted,
//!   then kept on the next boot); and UEFI PXE from dnsmasq's TFTP with a changed root
//!   byte on the server, refused by dm-verity.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use crust_builder::build::outputs;
use crust_format::phase::Phase;
use crust_tests::{boot_timeout, built_image, flip_byte, run_ok};
use crust_vm::firmware::Firmware;
use crust_vm::web::Web;
use crust_vm::{Config, DataDrive, DiskBus, Tap, Vm};

/// One machine at a time (two cores).
static BOOTS: Mutex<()> = Mutex::new(());

/// The installer's console lines start with this.
const WHO: &str = "crust-install:";

fn timeout() -> Duration {
    let img = built_image();
    let accel = crust_vm::accel::detect(&img.dir.join(outputs::KERNEL), &img.dir).unwrap();
    boot_timeout(accel) * 3
}

/// A sparse empty disk as large as the image plus `extra` bytes.
fn empty_disk(dir: &Path, name: &str, extra: u64) -> PathBuf {
    let len = std::fs::metadata(built_image().image).unwrap().len();
    let path = dir.join(name);
    std::fs::File::create(&path)
        .unwrap()
        .set_len(len + extra)
        .unwrap();
    path
}

/// A TFTP folder holding the build's netboot files (copies, so a test may change them).
fn netboot_folder(dir: &Path) -> PathBuf {
    let tftp = dir.join("tftp");
    std::fs::create_dir_all(&tftp).unwrap();
    for name in ["netboot.efi", "root.img", "verity.img"] {
        std::fs::copy(built_image().dir.join(name), tftp.join(name)).unwrap();
    }
    tftp
}

/// A diskless machine that boots `netboot.efi` by UEFI PXE from QEMU's TFTP server.
fn start_diskless(dir: &Path, tftp: &Path, forward: Option<u16>, log: &str) -> Vm {
    let img = built_image();
    let accel = crust_vm::accel::detect(&img.dir.join(outputs::KERNEL), &img.dir).unwrap();
    let firmware = Firmware::with_vars(&dir.join("efivars.fd")).unwrap();
    let mut config = Config::new(Path::new(""), accel, firmware);
    config.tftp = Some((tftp.to_path_buf(), "netboot.efi".into()));
    config.no_reboot = true;
    config.qmp_socket = Some(dir.join("qmp.sock"));
    config.forwards = forward.map(|p| vec![(p, 80)]).unwrap_or_default();
    Vm::start(&config, Some(&dir.join(log)), true).expect("start QEMU")
}

#[test]
#[ignore = "boots QEMU; run through `cargo xtask test`"]
fn a_diskless_machine_boots_over_the_network_to_ready() {
    let _one = BOOTS.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let tftp = netboot_folder(dir.path());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut vm = start_diskless(dir.path(), &tftp, Some(port), "netboot.log");
    let fetched = vm
        .wait_for_text("crust-netboot: fetched", timeout())
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        fetched.contains("by TFTP (the DHCP server) from tftp://10.0.2.2/"),
        "{fetched}"
    );
    let disk = vm
        .wait_for_phase(Phase::Disk, timeout())
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(disk.detail.starts_with("network boot:"), "{}", disk.detail);
    let state = vm
        .wait_for_phase(Phase::State, timeout())
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        state
            .detail
            .contains("tmpfs on /var, NOT persistent (network boot"),
        "{}",
        state.detail
    );
    let ready = vm
        .wait_for_phase(Phase::Ready, timeout())
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(ready.detail.contains("dm-verity root"), "{}", ready.detail);
    eprintln!(
        "netboot: ready {:.1} s after power-on; the firmware fetched netboot.efi ({} bytes), \
         the init {}",
        vm.elapsed().as_secs_f64(),
        std::fs::metadata(tftp.join("netboot.efi")).unwrap().len(),
        fetched.split("crust-netboot: ").nth(1).unwrap_or(&fetched)
    );
    vm.wait_for_phase(Phase::Healthy, timeout())
        .unwrap_or_else(|e| panic!("{e}"));
    // The demo page, through the port forward.
    let mut page = String::new();
    {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(b"GET / HTTP/1.0\r\nHost: crust\r\n\r\n")
            .unwrap();
        s.read_to_string(&mut page).unwrap();
    }
    assert!(
        page.starts_with("HTTP/1.") && page.contains(" 200 "),
        "{page}"
    );
    vm.qmp().unwrap().system_powerdown().unwrap();
    vm.wait_for_phase(Phase::PowerOff, Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e}"));
    vm.wait_exit(Duration::from_secs(60)).unwrap();
}

#[test]
#[ignore = "boots QEMU; run through `cargo xtask test`"]
fn the_installer_started_by_uefi_pxe_installs_from_the_network() {
    let _one = BOOTS.lock().unwrap_or_else(|e| e.into_inner());
    let img = built_image();
    let dir = tempfile::tempdir().unwrap();
    // What the boot server serves: the installer UKI and the signed release's list and
    // compressed image.
    let tftp = dir.path().join("tftp");
    std::fs::create_dir(&tftp).unwrap();
    for name in [
        "installer.efi",
        "image.raw.zst",
        "SHA256SUMS",
        "SHA256SUMS.sig",
    ] {
        std::fs::copy(img.dir.join(name), tftp.join(name)).unwrap();
    }
    let disk = empty_disk(dir.path(), "disk.raw", 1 << 30);
    let accel = crust_vm::accel::detect(&img.dir.join(outputs::KERNEL), &img.dir).unwrap();
    let firmware = Firmware::with_vars(&dir.path().join("efivars.fd")).unwrap();
    let mut config = Config::new(&disk, accel, firmware);
    config.tftp = Some((tftp, "installer.efi".into()));
    config.qmp_socket = Some(dir.path().join("qmp.sock"));
    let mut vm = Vm::start(&config, Some(&dir.path().join("netinstall.log")), true).unwrap();
    let fetched = vm
        .wait_for_text(&format!("{WHO} fetched the release"), timeout())
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(fetched.contains("from 10.0.2.2 by TFTP"), "{fetched}");
    vm.wait_for_text(&format!("{WHO} installed on /dev/vda"), timeout())
        .unwrap_or_else(|e| panic!("{e}"));
    let installed_at = vm.elapsed();
    let disk_line = vm
        .wait_for_phase(Phase::Disk, timeout())
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(disk_line.detail.contains("vda"), "{}", disk_line.detail);
    vm.wait_for_phase(Phase::Ready, timeout())
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "network install: installed {:.1} s after power-on, ready on the disk at {:.1} s",
        installed_at.as_secs_f64(),
        vm.elapsed().as_secs_f64()
    );
    vm.qmp().unwrap().system_powerdown().unwrap();
    vm.wait_for_phase(Phase::PowerOff, Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e}"));
    vm.wait_exit(Duration::from_secs(60)).unwrap();
    let out = run_ok(Command::new("sgdisk").arg("-v").arg(&disk));
    let verify = String::from_utf8_lossy(&out.stdout);
    assert!(verify.contains("No problems found"), "{verify}");
}

/// The boot network's addresses: the server's on the tap device, and the URL UEFI HTTP
/// boot clients (and the init's own DHCP request) are handed.
const SERVER: &str = "192.168.77.1";
const BOOT_URL: &str = "http://192.168.77.1/crust/netboot.efi";

/// The dnsmasq configuration docs/METAL.md gives, for this network: UEFI PXE clients get
/// `netboot.efi` by TFTP, UEFI HTTP boot clients its URL, and everything else (the init)
/// the URL too, so that it fetches the images from the same folder by HTTP.
fn dnsmasq_conf(tftp_root: &Path) -> String {
    format!(
        "interface=tap0\n\
         bind-interfaces\n\
         port=0\n\
         dhcp-range=192.168.77.100,192.168.77.200,1h\n\
         enable-tftp\n\
         tftp-root={root}\n\
         dhcp-match=set:efi-pxe,option:client-arch,7\n\
         dhcp-match=set:efi-pxe,option:client-arch,9\n\
         dhcp-match=set:efi-http,option:client-arch,16\n\
         dhcp-boot=tag:efi-pxe,netboot.efi\n\
         dhcp-option-force=tag:efi-http,60,HTTPClient\n\
         dhcp-boot=tag:!efi-pxe,{BOOT_URL}\n",
        root = tftp_root.display()
    )
}

/// A process stopped when dropped.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A network namespace of its own with a tap device for the machine; removed when
/// dropped.
struct Namespace(String);

impl Namespace {
    /// The namespace, its loopback up and `tap0` with the server's address.
    fn new() -> Self {
        let name = format!("crust-netboot-{}", std::process::id());
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        let ns = Self(name);
        for args in [
            &["link", "set", "lo", "up"][..],
            &["tuntap", "add", "dev", "tap0", "mode", "tap"],
            &["addr", "add", &format!("{SERVER}/24"), "dev", "tap0"],
            &["link", "set", "tap0", "up"],
        ] {
            run_ok(Command::new("ip").arg("-n").arg(&ns.0).args(args));
        }
        ns
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// A boot server on a network of its own: Debian's dnsmasq (DHCP and TFTP) and nginx
/// serving the build's netboot files in `crust/`; stopped in this order, the namespace
/// last, when dropped.
struct BootServer {
    _dnsmasq: Daemon,
    web: Web,
    ns: Namespace,
    folder: PathBuf,
    dnsmasq_log: PathBuf,
}

impl BootServer {
    /// Serves copies of the netboot files of the build in `from`, after `change` had its
    /// way with the folder.
    fn start(dir: &Path, from: &Path, change: impl FnOnce(&Path)) -> Self {
        let www = dir.join("www");
        let folder = www.join("crust");
        std::fs::create_dir_all(&folder).unwrap();
        for name in ["netboot.efi", "root.img", "verity.img"] {
            std::fs::copy(from.join(name), folder.join(name)).unwrap();
        }
        change(&folder);
        let ns = Namespace::new();
        let web = Web::serve(
            &www,
            &format!("{SERVER}:80"),
            &dir.join("nginx"),
            Some(&ns.0),
        )
        .expect("nginx (cargo xtask test installs it)");
        let conf = dir.join("dnsmasq.conf");
        let dnsmasq_log = dir.join("dnsmasq.log");
        // Besides the configuration of the docs: files and logs of this test's own, and
        // no switch to the `dnsmasq` user (which cannot read the test's folder).
        std::fs::write(
            &conf,
            format!(
                "{}user=root\n\
                 dhcp-leasefile={d}/dnsmasq.leases\n\
                 pid-file={d}/dnsmasq.pid\n\
                 log-dhcp\n\
                 log-facility={log}\n",
                dnsmasq_conf(&folder),
                d = dir.display(),
                log = dnsmasq_log.display()
            ),
        )
        .unwrap();
        let dnsmasq = Command::new("ip")
            .args(["netns", "exec", &ns.0, "dnsmasq", "--keep-in-foreground"])
            .arg(format!("--conf-file={}", conf.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq (cargo xtask test installs dnsmasq-base)");
        Self {
            _dnsmasq: Daemon(dnsmasq),
            web,
            ns,
            folder,
            dnsmasq_log,
        }
    }

    /// A diskless machine on the network. `http`: the firmware tries UEFI HTTP boot
    /// (IPv4) alone, as a server set up for it would (no PXE try and its timeouts first);
    /// otherwise UEFI PXE comes first, as OVMF orders it.
    fn machine(&self, dir: &Path, http: bool, log: &str, edit: impl FnOnce(&mut Config)) -> Vm {
        let img = built_image();
        let accel = crust_vm::accel::detect(&img.dir.join(outputs::KERNEL), &img.dir).unwrap();
        let firmware = Firmware::with_vars(&dir.join("efivars.fd")).unwrap();
        let mut config = Config::new(Path::new(""), accel, firmware);
        config.tap = Some(Tap {
            netns: self.ns.0.clone(),
            ifname: "tap0".into(),
        });
        if http {
            config.fw_cfg = vec![
                ("opt/org.tianocore/IPv4PXESupport".into(), "no".into()),
                ("opt/org.tianocore/IPv6Support".into(), "no".into()),
            ];
        }
        config.no_reboot = true;
        config.qmp_socket = Some(dir.join("qmp.sock"));
        edit(&mut config);
        Vm::start(&config, Some(&dir.join(log)), true).expect("start QEMU")
    }

    fn dhcp_log(&self) -> String {
        std::fs::read_to_string(&self.dnsmasq_log).unwrap_or_default()
    }

    fn access_log(&self) -> String {
        std::fs::read_to_string(self.web.access_log()).unwrap_or_default()
    }
}

/// The qemu profile with user-data allowed to name disks (a state disk formats an empty
/// disk, which is the `volumes` permission).
const STATE_VARIANT: &str = "[config]\nallow = [\"services\", \"volumes\"]\n\
                             [output]\nformats = [\"netboot\"]\n";

/// The user-data of the HTTP boot: `/var` on the disk with the serial `crust-state`.
const STATE_USER_DATA: &str =
    "version = 1\n\n[state]\ndisk = \"/dev/disk/by-id/virtio-crust-state\"\n";

#[test]
#[ignore = "boots QEMU; run through `cargo xtask test` (as root: a network namespace)"]
fn uefi_http_boot_from_dnsmasq_and_nginx_fetches_the_images_by_http() {
    let _one = BOOTS.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    // Kept between runs: an unchanged variant is not built again.
    let work = Path::new(env!("CARGO_TARGET_TMPDIR")).join("netboot-state");
    let out = crust_tests::repo::variant(&work, &work.join("keys"), "0.1.0", STATE_VARIANT, &[]);
    let server = BootServer::start(dir.path(), &out, |_| {});
    // An empty local disk for /var, named by the user-data of a NoCloud seed.
    let state_disk = dir.path().join("state.raw");
    std::fs::File::create(&state_disk)
        .unwrap()
        .set_len(512 << 20)
        .unwrap();
    let seed = dir.path().join("seed.img");
    crust_vm::seed::write(STATE_USER_DATA.as_bytes(), &seed).unwrap();
    let attach = |config: &mut Config| {
        config.extra_drives = vec![seed.clone()];
        config.data_drives = vec![DataDrive {
            path: state_disk.clone(),
            bus: DiskBus::Virtio,
            serial: "crust-state".into(),
        }];
    };

    let mut vm = server.machine(dir.path(), true, "http-boot.log", attach);
    let fetched = vm
        .wait_for_text("crust-netboot: fetched", timeout())
        .unwrap_or_else(|e| panic!("{e}\ndnsmasq's log:\n{}", server.dhcp_log()));
    assert!(
        fetched.contains("by HTTP (the DHCP boot file's folder) from http://192.168.77.1/crust/"),
        "{fetched}"
    );
    let disk = vm
        .wait_for_phase(Phase::Disk, timeout())
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(disk.detail.starts_with("network boot:"), "{}", disk.detail);
    let state = vm
        .wait_for_phase(Phase::State, timeout())
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(state.detail.contains("tmpfs on /var"), "{}", state.detail);
    // User-data names the empty disk: formatted, and /var on it.
    let on_disk = vm
        .wait_for_text("state: /var on", timeout())
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        on_disk.contains("serial crust-state")
            && on_disk.contains("ext4 made now: the disk was empty")
            && on_disk.contains("persistent"),
        "{on_disk}"
    );
    let machine_id = on_disk
        .rsplit("machine-id ")
        .next()
        .unwrap()
        .trim()
        .to_owned();
    let ready = vm
        .wait_for_phase(Phase::Ready, timeout())
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(ready.detail.contains("dm-verity root"), "{}", ready.detail);
    let ready_at = vm.elapsed();
    // No slots to update: the update agent does not run, and says so.
    vm.wait_for_text("update: not running: a network-booted host", timeout())
        .unwrap_or_else(|e| panic!("{e}"));

    // The firmware asked as an HTTP boot client and was given the URL; the UKI and both
    // images came from nginx, whole.
    let dhcp = server.dhcp_log();
    assert!(
        dhcp.contains("vendor class: HTTPClient")
            && dhcp.contains("tags: efi-http")
            && dhcp.contains(BOOT_URL),
        "dnsmasq's log:\n{dhcp}"
    );
    let access = server.access_log();
    for name in ["netboot.efi", "root.img", "verity.img"] {
        let len = std::fs::metadata(server.folder.join(name)).unwrap().len();
        assert!(
            access
                .lines()
                .any(|l| l.contains(&format!("GET /crust/{name} HTTP/1.1\" 200 {len} "))),
            "{name} ({len} bytes) not served whole:\n{access}"
        );
    }
    eprintln!(
        "http boot: ready {:.1} s after power-on; the firmware fetched netboot.efi ({} bytes) \
         by HTTP; the init {}",
        ready_at.as_secs_f64(),
        std::fs::metadata(server.folder.join("netboot.efi"))
            .unwrap()
            .len(),
        fetched.split("crust-netboot: ").nth(1).unwrap_or(&fetched)
    );
    vm.qmp().unwrap().system_powerdown().unwrap();
    vm.wait_for_phase(Phase::PowerOff, Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e}"));
    vm.wait_exit(Duration::from_secs(60)).unwrap();
    drop(vm);
    // The disk holds a clean ext4 with the machine id on it.
    run_ok(Command::new("e2fsck").arg("-fn").arg(&state_disk));
    let out = run_ok(
        Command::new("debugfs")
            .args(["-R", "cat /lib/crust/machine-id"])
            .arg(&state_disk),
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), machine_id);

    // The next boot keeps it: checked, not formatted, the same machine id.
    let _ = std::fs::remove_file(dir.path().join("qmp.sock"));
    let mut vm = server.machine(dir.path(), true, "http-boot-2.log", attach);
    let on_disk = vm
        .wait_for_text("state: /var on", timeout())
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        on_disk.contains("checked clean") && on_disk.contains(&format!("machine-id {machine_id}")),
        "{on_disk}"
    );
    vm.wait_for_phase(Phase::Ready, timeout())
        .unwrap_or_else(|e| panic!("{e}"));
    vm.qmp().unwrap().system_powerdown().unwrap();
    vm.wait_for_phase(Phase::PowerOff, Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e}"));
    vm.wait_exit(Duration::from_secs(60)).unwrap();
}

#[test]
#[ignore = "boots QEMU; run through `cargo xtask test` (as root: a network namespace)"]
fn a_changed_root_byte_on_the_boot_server_is_refused() {
    let _one = BOOTS.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    // The squashfs superblock: the first read of the root goes through it.
    let server = BootServer::start(dir.path(), &built_image().dir, |folder| {
        flip_byte(&folder.join("root.img"), 40)
    });
    // UEFI PXE this time: netboot.efi by dnsmasq's TFTP; the init still gets the URL.
    let mut vm = server.machine(dir.path(), false, "tampered-netboot.log", |_| {});
    vm.console().allow("crust: error:");
    let fetched = vm
        .wait_for_text("crust-netboot: fetched", timeout())
        .unwrap_or_else(|e| panic!("{e}\ndnsmasq's log:\n{}", server.dhcp_log()));
    assert!(fetched.contains("by HTTP"), "{fetched}");
    let line = vm
        .console()
        .wait_for("verity refusal", timeout(), |l| {
            (l.contains("device-mapper: verity") && l.contains("is corrupted"))
                || l.contains("crust: ready")
        })
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        !line.contains("crust: ready"),
        "a tampered root booted: {line}"
    );
    let error = vm
        .wait_for_phase(Phase::Error, timeout())
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(error.detail.contains("root"), "{}", error.detail);
    // No slot to set aside: the next boot fetches the images again.
    let history = vm.console().history().join("\n");
    assert!(
        history.contains("a network boot has no other slot to fall back to"),
        "{history}"
    );
    // The firmware was a PXE client and took netboot.efi from dnsmasq's TFTP server.
    let dhcp = server.dhcp_log();
    assert!(
        dhcp.contains("tags: efi-pxe")
            && dhcp.lines().any(|l| l.contains("dnsmasq-tftp")
                && l.contains("sent")
                && l.contains("netboot.efi")),
        "dnsmasq's log:\n{dhcp}"
    );
}
