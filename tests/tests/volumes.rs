//! Data volumes end to end: a variant of the qemu profile declares volumes and containers
//! that mount them (user-data from a NoCloud seed declares one more), and three boots of one
//! machine check, with the disks' bytes read back on this machine afterwards:
//!
//! 1. all disks attached: an empty virtio disk named by serial is formatted (ext4) and
//!    mounted, and a container writes to it; a disk already holding ext4 with a file
//!    (declared in user-data, mounted by a container user-data adds) is mounted, not
//!    formatted, and the file read; a disk holding xfs, declared as ext4, is refused and its
//!    container waits (without holding the boot's health back); two empty NVMe instance
//!    stores become one RAID 0 (`/proc/mdstat` on the console), formatted and mounted;
//! 2. after a power-off, without the ext4 disk: its volume is missing and its container
//!    waits while the host reaches `ready` and the rest runs; the first disk and the RAID
//!    keep what was written (assembled, not formatted); an update to a new release is
//!    installed and the machine reboots into it;
//! 3. the new release mounts the same volumes, not formatted, with their data.
//!
//! Afterwards: the xfs disk is byte for byte what it was; the first disk's ext4 passes
//! `e2fsck -fn` and holds one line per boot (`debugfs`); the NVMe disks are RAID members
//! named `crust:scratch`, as `mdadm --examine` and Crust's own probe read them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crust_format::phase::Phase;
use crust_format::volume::probe::{self, Content, Found, SAMPLE, Sample};
use crust_tests::repo::{self, Server, now, release_to};
use crust_tests::{BootOptions, Disk, TestVm, boot_timeout, built_image, run_ok};
use crust_vm::{DataDrive, DiskBus};

const MIB: u64 = 1 << 20;

/// The profile's volumes and containers, on top of the qemu profile.
const VARIANT: &str = r#"
[config]
allow = ["services", "volumes"]

[[volume]]
name = "data"
serial = "crust-data"
mount-options = ["noatime"]

[[volume]]
name = "other"
serial = "crust-other"

[[volume]]
name = "scratch"
disks = "nvme-instance-store"

[[service]]
name = "writer"
image.debian = ["busybox-static"]
command = ["/bin/busybox", "sh", "-c", """
echo "$CRUST_IMAGE_VERSION" >> /data/boots
[ -f /scratch/marker ] || echo "made on $CRUST_IMAGE_VERSION" > /scratch/marker
echo "data has $(/bin/busybox wc -l < /data/boots) boots: $(/bin/busybox tr '\n' ' ' < /data/boots)"
echo "scratch marker: $(/bin/busybox cat /scratch/marker)"
trap 'exit 0' TERM
/bin/busybox sleep 100000 & wait
"""]
mounts = [{ volume = "data", target = "/data" }, { volume = "scratch", target = "/scratch" }]

[[service]]
name = "stuck"
image.debian = ["busybox-static"]
command = ["/bin/busybox", "sh", "-c", "echo stuck started; trap 'exit 0' TERM; /bin/busybox sleep 100000 & wait"]
mounts = [{ volume = "other", target = "/other" }]
health = { tcp = 9, interval = 1 }
"#;

/// Waits until every one of `texts` has been on the console since its line `since` (in
/// any order); returns the line of each.
fn wait_all(t: &mut TestVm, since: usize, texts: &[&str], secs: u64) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let history = t.vm.console().history()[since..].to_vec();
        let found: Vec<Option<String>> = texts
            .iter()
            .map(|x| history.iter().rev().find(|l| l.contains(x)).cloned())
            .collect();
        if found.iter().all(Option::is_some) {
            return found.into_iter().flatten().collect();
        }
        let missing: Vec<String> = texts
            .iter()
            .zip(&found)
            .filter(|(_, f)| f.is_none())
            .map(|(x, _)| (*x).to_owned())
            .collect();
        let left = deadline.saturating_duration_since(Instant::now());
        t.vm.console()
            .wait_for(&missing.join(" | "), left, |l| {
                missing.iter().any(|m| l.contains(m.as_str()))
            })
            .unwrap_or_else(|e| panic!("{e}"));
    }
}

fn line_with<'a>(lines: &'a [String], text: &str) -> &'a str {
    lines
        .iter()
        .find(|l| l.contains(text))
        .map(String::as_str)
        .unwrap_or_else(|| panic!("no line with {text:?}"))
}

/// A sparse disk image of `size` bytes.
fn blank(path: &Path, size: u64) {
    std::fs::File::create(path)
        .and_then(|f| f.set_len(size))
        .unwrap();
}

fn sha256(path: &Path) -> String {
    let out = run_ok(Command::new("sha256sum").arg(path));
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

/// Crust's own probe of a disk image file.
fn probe_file(file: &Path) -> Content {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(file).unwrap();
    let size = f.metadata().unwrap().len();
    let n = SAMPLE.min(size as usize);
    let (mut head, mut tail) = (vec![0u8; n], vec![0u8; n]);
    f.read_exact_at(&mut head, 0).unwrap();
    f.read_exact_at(&mut tail, size - n as u64).unwrap();
    probe::probe(&Sample {
        head: &head,
        tail: &tail,
        size,
    })
}

struct Disks {
    data: PathBuf,
    kept: PathBuf,
    other: PathBuf,
    stores: [PathBuf; 2],
}

impl Disks {
    fn make(dir: &Path) -> Self {
        let data = dir.join("data.raw");
        blank(&data, 256 * MIB);
        // ext4 holding a file, as a disk moved from another machine would.
        let tree = dir.join("kept-tree");
        std::fs::create_dir_all(&tree).unwrap();
        std::fs::write(
            tree.join("keep.txt"),
            "written before Crust saw this disk\n",
        )
        .unwrap();
        let kept = dir.join("kept.raw");
        blank(&kept, 256 * MIB);
        run_ok(
            Command::new("mkfs.ext4")
                .args(["-q", "-F", "-L", "kept", "-d"])
                .arg(&tree)
                .arg(&kept),
        );
        // xfs, where the volume says ext4 (mkfs.xfs wants 300 MiB at least).
        let other = dir.join("other.raw");
        blank(&other, 320 * MIB);
        run_ok(
            Command::new("mkfs.xfs")
                .args(["-q", "-L", "old"])
                .arg(&other),
        );
        let stores = [dir.join("store1.raw"), dir.join("store2.raw")];
        for s in &stores {
            blank(s, 128 * MIB);
        }
        Self {
            data,
            kept,
            other,
            stores,
        }
    }

    /// The machine's data drives; `with_kept` attaches the ext4 disk.
    fn drives(&self, with_kept: bool) -> Vec<DataDrive> {
        let drive = |path: &Path, bus, serial: &str| DataDrive {
            path: path.to_path_buf(),
            bus,
            serial: serial.into(),
        };
        let mut drives = vec![drive(&self.data, DiskBus::Virtio, "crust-data")];
        if with_kept {
            drives.push(drive(&self.kept, DiskBus::Virtio, "crust-kept"));
        }
        drives.push(drive(&self.other, DiskBus::Virtio, "crust-other"));
        drives.push(drive(&self.stores[0], DiskBus::Nvme, "instance-store-1"));
        drives.push(drive(&self.stores[1], DiskBus::Nvme, "instance-store-2"));
        drives
    }
}

fn boot(disk: &mut Disk, seed: &Path, drives: Vec<DataDrive>) -> TestVm {
    let seed = seed.to_path_buf();
    let opts = BootOptions {
        no_reboot: false,
        ..BootOptions::default()
    };
    disk.boot_with(opts, move |c| {
        c.extra_drives.push(seed);
        c.data_drives = drives;
    })
}

fn ready(t: &mut TestVm, version: &str) {
    let line =
        t.vm.wait_for_phase(Phase::Ready, boot_timeout(t.accel))
            .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        line.detail.contains(&format!("crust {version},")),
        "{}",
        line.detail
    );
    eprintln!("=== {version} ready at {:.0?}", t.vm.elapsed());
}

#[test]
#[ignore = "builds two releases and boots them in QEMU; run through `cargo xtask test`"]
fn volumes_are_formatted_once_kept_refused_striped_and_waited_for() {
    let started = Instant::now();
    let img = built_image();
    let work = tempfile::tempdir().unwrap();
    let keys = img.dir.parent().unwrap().join("keys");
    let key = crust_builder::sign::SigningKey::development(&keys).unwrap();
    let a = repo::variant(work.path(), &keys, "0.1.5", VARIANT, &[]);
    let b = repo::variant(work.path(), &keys, "0.2.0", VARIANT, &[]);
    eprintln!("=== built two releases in {:.0?}", started.elapsed());

    let disks = Disks::make(work.path());
    let other_before = sha256(&disks.other);
    let repo_dir = work.path().join("repo");
    let port = repo::free_port();
    let _server = Server::start(&repo_dir, port);
    // The seed: update settings, a volume of user-data's own, and a container it adds that
    // mounts it (below /tmp, a tmpfs in every container: the image has no /kept).
    let user_data = format!(
        r#"version = 1
[update]
repository = "http://10.0.2.2:{port}"
channel = "stable"
interval = 10

[[volume]]
name = "kept"
serial = "crust-kept"

[[service]]
name = "reader"
image.service = "writer"
command = ["/bin/busybox", "sh", "-c", "echo \"kept says: $(/bin/busybox cat /tmp/kept/keep.txt)\"; trap 'exit 0' TERM; /bin/busybox sleep 100000 & wait"]
mounts = [{{ volume = "kept", target = "/tmp/kept", read-only = true }}]
"#
    );
    let seed = work.path().join("seed.img");
    crust_vm::seed::write(user_data.as_bytes(), &seed).unwrap();

    let mut disk = Disk::over(&a.join(crust_builder::build::outputs::IMAGE), &a);

    // 1. Every disk there.
    let mut t = boot(&mut disk, &seed, disks.drives(true));
    let phase =
        t.vm.wait_for_phase(Phase::Volumes, boot_timeout(t.accel))
            .unwrap_or_else(|e| panic!("{e}"));
    for name in ["data (serial crust-data, ext4)", "kept", "other", "scratch"] {
        assert!(phase.detail.contains(name), "{}", phase.detail);
    }
    ready(&mut t, "0.1.5");
    let lines = wait_all(
        &mut t,
        0,
        &[
            "volumes: data: mounted on /var/mnt/data",
            "volumes: kept: mounted on /var/mnt/kept",
            "volumes: other: refused",
            "volumes: scratch: RAID 0 made",
            "volumes: scratch: mounted on /var/mnt/scratch",
            "writer: data has 1 boots: 0.1.5",
            "writer: scratch marker: made on 0.1.5",
            "reader: kept says: written before Crust saw this disk",
            "stuck: waits for volume other: refused",
            "crust: healthy:",
        ],
        600,
    );
    let data = line_with(&lines, "volumes: data: mounted");
    assert!(data.contains("formatted now (it was empty)"), "{data}");
    let kept = line_with(&lines, "volumes: kept: mounted");
    assert!(
        kept.contains("not formatted (it holds its file system)"),
        "{kept}"
    );
    let other = line_with(&lines, "volumes: other: refused");
    assert!(
        other.contains("holds an xfs file system labelled \"old\", not an empty disk or ext4"),
        "{other}"
    );
    let raid = line_with(&lines, "volumes: scratch: RAID 0 made");
    assert!(
        raid.contains(": active raid0 ") && raid.contains("nvme0n1") && raid.contains("nvme1n1"),
        "{raid}"
    );
    assert!(
        raid.contains("super 1.2") && raid.contains("chunks"),
        "{raid}"
    );
    let scratch = line_with(&lines, "volumes: scratch: mounted");
    assert!(scratch.contains("formatted now"), "{scratch}");
    let healthy = line_with(&lines, "crust: healthy:");
    assert!(
        healthy.contains("not counted: stuck (waiting for a volume)"),
        "{healthy}"
    );
    assert!(
        !t.vm
            .console()
            .history()
            .iter()
            .any(|l| l.contains("stuck: stuck started")),
        "a container started without its volume"
    );
    t.power_off();
    // Boots are serialised: this machine's turn ends with its handle.
    drop(t);

    // 2. The ext4 disk taken away; a new release published.
    let bundle = b.join(crust_builder::build::outputs::BUNDLE);
    release_to(&repo_dir, "stable", &bundle, &key, 86_400, now());
    let mut t = boot(&mut disk, &seed, disks.drives(false));
    ready(&mut t, "0.1.5");
    let lines = wait_all(
        &mut t,
        0,
        &[
            "volumes: kept: missing: no disk has serial crust-kept",
            "reader: waits for volume kept: missing",
            "volumes: data: mounted on /var/mnt/data",
            "volumes: scratch: RAID 0 assembled",
            "volumes: scratch: mounted on /var/mnt/scratch",
            "writer: data has 2 boots: 0.1.5 0.1.5",
            "writer: scratch marker: made on 0.1.5",
            // The web service (no volume) runs and answers its check.
            "web: health check http:80/ passes",
        ],
        600,
    );
    for name in ["data", "scratch"] {
        let l = line_with(&lines, &format!("volumes: {name}: mounted"));
        assert!(l.contains("not formatted"), "{l}");
    }
    wait_all(&mut t, 0, &["update: 0.2.0 installed in slot b"], 600);

    // 3. The new release (the same machine, rebooted by the update agent).
    let since = t.vm.console().history().len();
    ready(&mut t, "0.2.0");
    let lines = wait_all(
        &mut t,
        since,
        &[
            "volumes: data: mounted on /var/mnt/data",
            "volumes: scratch: mounted on /var/mnt/scratch",
            "writer: data has 3 boots: 0.1.5 0.1.5 0.2.0",
            "writer: scratch marker: made on 0.1.5",
        ],
        600,
    );
    for name in ["data", "scratch"] {
        let l = line_with(&lines, &format!("volumes: {name}: mounted"));
        assert!(l.contains("not formatted"), "{l}");
    }
    t.power_off();

    // The disks as this machine reads them.
    assert_eq!(
        sha256(&disks.other),
        other_before,
        "the refused disk was written"
    );
    run_ok(Command::new("e2fsck").arg("-fn").arg(&disks.data));
    let boots = run_ok(
        Command::new("debugfs")
            .args(["-R", "cat /boots"])
            .arg(&disks.data),
    );
    assert_eq!(
        String::from_utf8_lossy(&boots.stdout),
        "0.1.5\n0.1.5\n0.2.0\n"
    );
    for (i, store) in disks.stores.iter().enumerate() {
        let examine = run_ok(Command::new("mdadm").arg("--examine").arg(store));
        let text = String::from_utf8_lossy(&examine.stdout);
        assert!(text.contains("Raid Level : raid0"), "{text}");
        assert!(text.contains("Name : crust:scratch"), "{text}");
        match probe_file(store) {
            Content::Found(Found::Md {
                version,
                name,
                level,
                raid_disks,
                ..
            }) => {
                assert_eq!((version, level, raid_disks), ("1.2", 0, 2), "store {i}");
                assert_eq!(name.as_deref(), Some("crust:scratch"));
            }
            other => panic!("store {i}: {other}"),
        }
    }
    eprintln!("=== volumes test took {:.0?}", started.elapsed());
}
