//! The machine's disks as the kernel shows them in sysfs, without udev: each block device's
//! size, serial number, model, world wide name, GPT partition name, the
//! `/dev/disk/by-id/` names udev's rules would give it, and whether something uses it.
//!
//! The identities come from the files the drivers export:
//!
//! | device | serial | model | world wide name |
//! |---|---|---|---|
//! | NVMe namespace `nvmeXnY` | `device/serial` (the controller's; else `/sys/class/nvme/nvmeX/serial`) | `device/model` | `wwid` (`eui.…`, `nvme.…`, `uuid.…`) |
//! | virtio-blk `vdX` | `serial` | – | – |
//! | SCSI/SATA `sdX` | `device/vpd_pg80` (the unit serial page) | `device/model` | `device/wwid` (`naa.…`) |
//!
//! and the by-id names follow udev's `60-persistent-storage.rules` for those devices:
//! `nvme-<model>_<serial>`, `nvme-<model>_<serial>_<nsid>`, `nvme-<wwid>`,
//! `virtio-<serial>`, `wwn-0x<naa>`, each partition with `-part<N>`; spaces become `_` and
//! characters outside `0-9A-Za-z#+-.:=@_` become `_`, as udev's `string_escape=replace`
//! makes them. A device is in use when it, one of its partitions or a device stacked on it
//! (its `holders`: md, device-mapper) is mounted or used as swap, or has holders at all.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use crate::devnode::DevNum;

/// Block device name prefixes that are never a data disk.
const SKIPPED: [&str; 7] = ["loop", "ram", "zram", "sr", "fd", "dm-", "md"];

/// Where sysfs is (tests point elsewhere).
#[derive(Debug, Clone)]
pub struct Sysfs {
    /// The sysfs mount point, `/sys`.
    pub root: PathBuf,
}

impl Default for Sysfs {
    fn default() -> Self {
        Self {
            root: PathBuf::from("/sys"),
        }
    }
}

impl Sysfs {
    /// `class/block/<name>`.
    pub fn block(&self, name: &str) -> PathBuf {
        self.root.join("class/block").join(name)
    }
}

/// One block device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Device {
    /// Kernel name (`vdb`, `nvme1n1`, `vdb1`).
    pub name: String,
    /// The disk of a partition.
    pub parent: Option<String>,
    /// The partition number of a partition.
    pub partition: Option<u32>,
    /// Size in bytes.
    pub size: u64,
    /// Read-only (a write-protected disk, or one attached read-only).
    pub read_only: bool,
    /// Device number.
    pub dev: Option<DevNum>,
    /// Serial number, trimmed.
    pub serial: Option<String>,
    /// Model, trimmed.
    pub model: Option<String>,
    /// World wide name as the kernel shows it (`eui.…`, `naa.…`).
    pub wwid: Option<String>,
    /// GPT partition name.
    pub part_name: Option<String>,
    /// `/dev/disk/by-id/` names (without the folder).
    pub by_id: Vec<String>,
    /// Devices stacked on it (md arrays, device-mapper).
    pub holders: Vec<String>,
}

impl Device {
    /// Whether it is an NVMe namespace (or a partition of one).
    pub fn is_nvme(&self) -> bool {
        self.name.starts_with("nvme")
    }

    /// How it is named in messages: `vdb (serial data1)`.
    pub fn describe(&self) -> String {
        let mut facts = Vec::new();
        if let Some(m) = &self.model {
            facts.push(m.clone());
        }
        if let Some(s) = &self.serial {
            facts.push(format!("serial {s}"));
        }
        facts.push(crate::volumes::size_text(self.size));
        format!("/dev/{} ({})", self.name, facts.join(", "))
    }
}

/// Every block device, and what the running system uses.
#[derive(Debug, Clone, Default)]
pub struct Inventory {
    /// Disks and partitions, sorted by name.
    pub devices: Vec<Device>,
    /// Device name → where it is mounted.
    pub mounted: BTreeMap<String, String>,
    /// Devices used as swap.
    pub swaps: Vec<String>,
}

/// udev's `string_escape=replace`: runs of white space become one `_` (leading and trailing
/// ones dropped), and characters outside `0-9A-Za-z#+-.:=@_` become `_`.
pub fn escape(s: &str) -> String {
    let words: Vec<&str> = s.split_whitespace().collect();
    words
        .join("_")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "#+-.:=@_".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn read_trimmed(path: &Path) -> Option<String> {
    let text = fs::read_to_string(path).ok()?;
    let t = text.trim();
    (!t.is_empty()).then(|| t.to_owned())
}

/// The serial of a SCSI unit serial number page (VPD page 0x80): a 4-byte header, then
/// the page's length in ASCII.
pub fn vpd_serial(page: &[u8]) -> Option<String> {
    if page.len() < 4 || page[1] != 0x80 {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([page[2], page[3]]));
    let bytes = page.get(4..4 + len.min(page.len() - 4))?;
    let s: String = bytes
        .iter()
        .filter(|b| b.is_ascii_graphic() || **b == b' ')
        .map(|b| char::from(*b))
        .collect();
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_owned())
}

/// A partition's `PARTNAME=` from its `uevent`.
fn part_name(dir: &Path) -> Option<String> {
    fs::read_to_string(dir.join("uevent"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("PARTNAME="))
        .map(str::to_owned)
        .filter(|n| !n.is_empty())
}

/// The serial and model of an NVMe namespace: its controller's (`device/…`, or
/// `/sys/class/nvme/nvmeX/…` for `nvmeXnY`).
fn nvme_identity(sys: &Sysfs, name: &str, dir: &Path) -> (Option<String>, Option<String>) {
    let from = |d: &Path| {
        (
            read_trimmed(&d.join("serial")),
            read_trimmed(&d.join("model")),
        )
    };
    let (serial, model) = from(&dir.join("device"));
    if serial.is_some() {
        return (serial, model);
    }
    let controller = name
        .strip_prefix("nvme")
        .and_then(|rest| rest.split('n').next())
        .map(|n| sys.root.join("class/nvme").join(format!("nvme{n}")));
    match controller {
        Some(c) => from(&c),
        None => (None, model),
    }
}

/// The by-id names of a whole disk.
fn by_id_names(d: &Device, nsid: Option<&str>) -> Vec<String> {
    let mut names = Vec::new();
    if d.name.starts_with("nvme") {
        if let (Some(model), Some(serial)) = (&d.model, &d.serial) {
            let base = format!("nvme-{}_{}", escape(model), escape(serial));
            if let Some(ns) = nsid {
                names.push(format!("{base}_{ns}"));
            }
            names.push(base);
        }
        if let Some(wwid) = &d.wwid {
            names.push(format!("nvme-{}", escape(wwid)));
        }
    } else if d.name.starts_with("vd") {
        if let Some(serial) = &d.serial {
            names.push(format!("virtio-{}", escape(serial)));
        }
    } else if d.name.starts_with("sd")
        && let Some(naa) = d.wwid.as_deref().and_then(|w| w.strip_prefix("naa."))
    {
        names.push(format!("wwn-0x{}", naa.to_ascii_lowercase()));
    }
    names
}

impl Inventory {
    /// Reads every block device under `sys` and what `mountinfo` and `swaps` (the texts of
    /// `/proc/self/mountinfo` and `/proc/swaps`) say is in use.
    pub fn scan(sys: &Sysfs, mountinfo: &str, swaps: &str) -> Self {
        let mut devices = Vec::new();
        let mut names: Vec<String> = fs::read_dir(sys.root.join("class/block"))
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        for name in names {
            let dir = sys.block(&name);
            let partition = fs::read_to_string(dir.join("partition"))
                .ok()
                .and_then(|p| p.trim().parse::<u32>().ok());
            let parent = partition.and(
                fs::canonicalize(&dir)
                    .ok()
                    .and_then(|p| p.parent()?.file_name()?.to_str().map(str::to_owned)),
            );
            let disk_name = parent.as_deref().unwrap_or(&name);
            if SKIPPED.iter().any(|p| disk_name.starts_with(p)) {
                continue;
            }
            let sectors = read_trimmed(&dir.join("size"))
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(0);
            let mut d = Device {
                name: name.clone(),
                parent: parent.clone(),
                partition,
                size: sectors * 512,
                read_only: read_trimmed(&dir.join("ro")).as_deref() == Some("1"),
                dev: DevNum::from_sysfs(&dir).ok(),
                serial: None,
                model: None,
                wwid: None,
                part_name: partition.and_then(|_| part_name(&dir)),
                by_id: Vec::new(),
                holders: fs::read_dir(dir.join("holders"))
                    .map(|entries| {
                        let mut h: Vec<String> = entries
                            .filter_map(|e| e.ok()?.file_name().into_string().ok())
                            .collect();
                        h.sort();
                        h
                    })
                    .unwrap_or_default(),
            };
            if partition.is_none() {
                if name.starts_with("nvme") {
                    let (serial, model) = nvme_identity(sys, &name, &dir);
                    d.serial = serial;
                    d.model = model;
                    d.wwid = read_trimmed(&dir.join("wwid"));
                } else if name.starts_with("vd") {
                    d.serial = read_trimmed(&dir.join("serial"));
                } else {
                    d.serial = fs::read(dir.join("device/vpd_pg80"))
                        .ok()
                        .and_then(|p| vpd_serial(&p));
                    d.model = read_trimmed(&dir.join("device/model"));
                    d.wwid = read_trimmed(&dir.join("device/wwid"));
                }
                let nsid = read_trimmed(&dir.join("nsid"));
                d.by_id = by_id_names(&d, nsid.as_deref());
            }
            devices.push(d);
        }
        // A partition's by-id names are its disk's with `-part<N>`.
        let disks: BTreeMap<String, Vec<String>> = devices
            .iter()
            .filter(|d| d.partition.is_none())
            .map(|d| (d.name.clone(), d.by_id.clone()))
            .collect();
        for d in &mut devices {
            if let (Some(parent), Some(n)) = (&d.parent, d.partition) {
                d.by_id = disks
                    .get(parent)
                    .map(|names| names.iter().map(|b| format!("{b}-part{n}")).collect())
                    .unwrap_or_default();
            }
        }
        let mut mounted = BTreeMap::new();
        for e in crate::mounts::parse_mountinfo(mountinfo) {
            if let Some(dev) = device_name(&e.source) {
                mounted.entry(dev).or_insert(e.mount_point);
            }
        }
        let swaps = swaps
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next())
            .filter_map(device_name)
            .collect();
        Self {
            devices,
            mounted,
            swaps,
        }
    }

    /// Reads the running system's devices.
    pub fn read() -> Self {
        Self::scan(
            &Sysfs::default(),
            &fs::read_to_string(crate::mounts::MOUNTINFO).unwrap_or_default(),
            &fs::read_to_string("/proc/swaps").unwrap_or_default(),
        )
    }

    /// The device named `name`.
    pub fn get(&self, name: &str) -> Option<&Device> {
        self.devices.iter().find(|d| d.name == name)
    }

    /// Whole disks.
    pub fn disks(&self) -> impl Iterator<Item = &Device> {
        self.devices.iter().filter(|d| d.partition.is_none())
    }

    /// The partitions of `disk`.
    pub fn partitions<'a>(&'a self, disk: &'a str) -> impl Iterator<Item = &'a Device> {
        self.devices
            .iter()
            .filter(move |d| d.parent.as_deref() == Some(disk))
    }

    /// The disk a device is on (itself for a disk).
    pub fn disk_of<'a>(&'a self, name: &'a str) -> &'a str {
        self.get(name)
            .and_then(|d| d.parent.as_deref())
            .unwrap_or(name)
    }

    /// Why `name` (or one of its partitions) is in use, if it is: mounted, swap, or with a
    /// device stacked on it other than those `allowed` (a volume's own md array).
    pub fn in_use(&self, name: &str, allowed: &[String]) -> Option<String> {
        let mut parts: Vec<&str> = vec![name];
        parts.extend(self.partitions(name).map(|p| p.name.as_str()));
        for p in parts {
            if let Some(at) = self.mounted.get(p) {
                return Some(format!("/dev/{p} is mounted on {at}"));
            }
            if self.swaps.iter().any(|s| s == p) {
                return Some(format!("/dev/{p} is swap space in use"));
            }
            if let Some(holder) = self
                .get(p)
                .and_then(|d| d.holders.iter().find(|h| !allowed.contains(h)))
            {
                return Some(format!("/dev/{p} is held by /dev/{holder}"));
            }
        }
        None
    }
}

/// `/dev/vdb1` → `vdb1` (symbolic links such as `/dev/md/db` followed).
fn device_name(source: &str) -> Option<String> {
    if !source.starts_with("/dev/") {
        return None;
    }
    let real = fs::canonicalize(source).unwrap_or_else(|_| PathBuf::from(source));
    let name = real
        .strip_prefix("/dev")
        .ok()?
        .to_str()?
        .trim_start_matches('/');
    (!name.is_empty() && !name.contains('/')).then(|| name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A sysfs tree the way the kernel lays it out: devices under `devices/`, links to
    /// them in `class/block/`, partitions inside their disk's folder.
    struct Tree(tempfile::TempDir);

    impl Tree {
        fn new() -> Self {
            Self(tempfile::tempdir().unwrap())
        }

        fn sys(&self) -> Sysfs {
            Sysfs {
                root: self.0.path().to_path_buf(),
            }
        }

        fn disk(&self, name: &str, files: &[(&str, &[u8])]) -> PathBuf {
            let dir = self.0.path().join("devices/pci0000:00").join(name);
            fs::create_dir_all(dir.join("holders")).unwrap();
            fs::write(dir.join("size"), "2097152\n").unwrap();
            fs::write(dir.join("dev"), "254:16\n").unwrap();
            fs::write(dir.join("ro"), "0\n").unwrap();
            for (file, content) in files {
                let path = dir.join(file);
                fs::create_dir_all(path.parent().unwrap()).unwrap();
                fs::write(path, content).unwrap();
            }
            self.link(name, &dir);
            dir
        }

        fn partition(&self, disk: &Path, name: &str, n: u32, partname: &str) {
            let dir = disk.join(name);
            fs::create_dir_all(dir.join("holders")).unwrap();
            fs::write(dir.join("partition"), format!("{n}\n")).unwrap();
            fs::write(dir.join("size"), "2048\n").unwrap();
            fs::write(
                dir.join("uevent"),
                format!(
                    "MAJOR=254\nDEVNAME={name}\nDEVTYPE=partition\nPARTN={n}\nPARTNAME={partname}\n"
                ),
            )
            .unwrap();
            self.link(name, &dir);
        }

        fn link(&self, name: &str, target: &Path) {
            let class = self.0.path().join("class/block");
            fs::create_dir_all(&class).unwrap();
            symlink(target, class.join(name)).unwrap();
        }
    }

    #[test]
    fn identities_and_by_id_names_come_from_sysfs() {
        let t = Tree::new();
        let ebs = t.disk(
            "nvme1n1",
            &[
                ("device/serial", b"vol0123456789abcdef0\n"),
                (
                    "device/model",
                    b"Amazon Elastic Block Store              \n",
                ),
                ("wwid", b"nvme.1d0f-766f6c30-416d617a6f6e-00000001\n"),
                ("nsid", b"1\n"),
            ],
        );
        t.partition(&ebs, "nvme1n1p1", 1, "pgdata");
        t.disk("vdb", &[("serial", b"data1\n")]);
        let mut pg80 = vec![0u8, 0x80, 0, 8];
        pg80.extend_from_slice(b"QM00005 ");
        t.disk(
            "sda",
            &[
                ("device/vpd_pg80", &pg80),
                ("device/model", b"QEMU HARDDISK   \n"),
                ("device/wwid", b"naa.5000C500A1B2C3D4\n"),
            ],
        );
        t.disk("loop0", &[]);
        let inv = Inventory::scan(&t.sys(), "", "");
        let names: Vec<&str> = inv.devices.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["nvme1n1", "nvme1n1p1", "sda", "vdb"]);

        let nvme = inv.get("nvme1n1").unwrap();
        assert_eq!(nvme.serial.as_deref(), Some("vol0123456789abcdef0"));
        assert_eq!(nvme.model.as_deref(), Some("Amazon Elastic Block Store"));
        assert_eq!(nvme.size, 1 << 30);
        assert_eq!(
            nvme.by_id,
            [
                "nvme-Amazon_Elastic_Block_Store_vol0123456789abcdef0_1",
                "nvme-Amazon_Elastic_Block_Store_vol0123456789abcdef0",
                "nvme-nvme.1d0f-766f6c30-416d617a6f6e-00000001",
            ]
        );
        let part = inv.get("nvme1n1p1").unwrap();
        assert_eq!(part.parent.as_deref(), Some("nvme1n1"));
        assert_eq!(part.part_name.as_deref(), Some("pgdata"));
        assert!(
            part.by_id
                .contains(&"nvme-Amazon_Elastic_Block_Store_vol0123456789abcdef0-part1".into())
        );
        assert_eq!(inv.disk_of("nvme1n1p1"), "nvme1n1");
        assert_eq!(inv.get("vdb").unwrap().by_id, ["virtio-data1"]);
        let sda = inv.get("sda").unwrap();
        assert_eq!(sda.serial.as_deref(), Some("QM00005"));
        assert_eq!(sda.by_id, ["wwn-0x5000c500a1b2c3d4"]);
    }

    #[test]
    fn nvme_controllers_are_found_by_name_when_the_namespace_has_no_device_link() {
        let t = Tree::new();
        t.disk("nvme0n1", &[]);
        let ctrl = t.0.path().join("class/nvme/nvme0");
        fs::create_dir_all(&ctrl).unwrap();
        fs::write(ctrl.join("serial"), "instance-store-1 \n").unwrap();
        fs::write(ctrl.join("model"), "QEMU NVMe Ctrl\n").unwrap();
        let inv = Inventory::scan(&t.sys(), "", "");
        let d = inv.get("nvme0n1").unwrap();
        assert_eq!(d.serial.as_deref(), Some("instance-store-1"));
        assert_eq!(d.by_id, ["nvme-QEMU_NVMe_Ctrl_instance-store-1"]);
    }

    #[test]
    fn mounted_swapped_and_held_devices_are_in_use() {
        let t = Tree::new();
        let vdb = t.disk("vdb", &[]);
        t.partition(&vdb, "vdb1", 1, "x");
        let vdc = t.disk("vdc", &[]);
        fs::write(vdc.join("holders/md127"), "").unwrap();
        t.disk("vdd", &[]);
        t.disk("vde", &[]);
        let mountinfo = "30 22 254:17 / /srv rw - ext4 /dev/vdb1 rw\n";
        let swaps = "Filename\tType\tSize\tUsed\tPriority\n/dev/vdd partition 1 0 -2\n";
        let inv = Inventory::scan(&t.sys(), mountinfo, swaps);
        assert_eq!(
            inv.in_use("vdb", &[]).as_deref(),
            Some("/dev/vdb1 is mounted on /srv")
        );
        assert_eq!(
            inv.in_use("vdc", &[]).as_deref(),
            Some("/dev/vdc is held by /dev/md127")
        );
        assert_eq!(inv.in_use("vdc", &["md127".into()]), None);
        assert!(inv.in_use("vdd", &[]).unwrap().contains("swap"));
        assert_eq!(inv.in_use("vde", &[]), None);
    }

    #[test]
    fn escaping_follows_udev() {
        assert_eq!(
            escape("  Amazon EC2  NVMe Instance Storage "),
            "Amazon_EC2_NVMe_Instance_Storage"
        );
        assert_eq!(escape("a/b\\c*d"), "a_b_c_d");
        assert_eq!(escape("x#+-.:=@_y"), "x#+-.:=@_y");
        assert_eq!(
            vpd_serial(&[0, 0x80, 0, 3, b' ', b'A', b'1']).as_deref(),
            Some("A1")
        );
        assert_eq!(vpd_serial(&[0, 0x83, 0, 1, b'A']), None);
    }
}
