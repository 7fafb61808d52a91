//! Data volumes: the disks beyond the boot disk that a host formats (only when empty),
//! checks, assembles and mounts under `/var/mnt/<name>` for its services, as a profile's or
//! user-data's `[[volume]]` tables declare them.
//!
//! This module is the contract between the builder, which writes a profile's volumes into
//! the root, and the init, which reads them (and user-data's) at boot:
//!
//! - [`VolumeSpec`]: one volume (name, which disks, file system, mount options, formatting
//!   rule), with the checks both sides apply to every value;
//! - the file the builder writes for each profile volume, `usr/lib/crust/volumes/<name>`
//!   ([`VOLUMES_DIR`]): `key=value` lines, strict like the service files
//!   ([`VolumeSpec::to_text`], [`VolumeSpec::parse`]);
//! - [`probe`]: what a disk holds, read from its first and last MiB (partition tables, file
//!   systems, RAID members, encrypted or LVM volumes, or unknown bytes), which decides
//!   whether the host may format it.
//!
//! The volume file:
//!
//! ```text
//! name=db
//! serial=vol0123456789abcdef0        (or disk=, wwn= (each repeatable), label=, disks=)
//! filesystem=ext4
//! mount-options=noatime,discard
//! format=if-empty
//! ```

use std::fmt;

pub mod probe;

/// Folder of the profile's volume files in the root (no leading `/`, as in trees).
pub const VOLUMES_DIR: &str = "usr/lib/crust/volumes";
/// Where volumes are mounted: `/var/mnt/<name>` (under `/var`, so services' bind mounts
/// follow the same rule as every other source).
pub const MOUNT_ROOT: &str = "/var/mnt";
/// The `disks =` value that selects every unused NVMe instance store.
pub const INSTANCE_STORES: &str = "nvme-instance-store";
/// The prefix of `disk =` values.
pub const BY_ID: &str = "/dev/disk/by-id/";
/// The model an Amazon EC2 instance store's NVMe controller reports.
pub const EC2_INSTANCE_STORE_MODEL: &str = "Amazon EC2 NVMe Instance Storage";
/// The model QEMU's emulated NVMe controller reports.
pub const QEMU_NVME_MODEL: &str = "QEMU NVMe Ctrl";
/// On a QEMU NVMe controller, the serial prefix that makes a disk count as an instance
/// store (QEMU 7.2 cannot set the model, so tests and local trials mark them this way).
pub const QEMU_INSTANCE_STORE_SERIAL: &str = "instance-store";
/// At most this many disks in one volume.
pub const MAX_DISKS: usize = 24;

/// Which disks a volume is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disks {
    /// `/dev/disk/by-id/` names, without that prefix (the init derives them from sysfs, as
    /// udev's rules would name the links).
    ById(Vec<String>),
    /// Disk serial numbers (NVMe, virtio, SCSI/SATA unit serial).
    Serial(Vec<String>),
    /// World wide names (`0x5000c500a1b2c3d4`, `naa.…`, `eui.…`, `nvme.…`).
    Wwn(Vec<String>),
    /// A file system or GPT partition label (one device).
    Label(String),
    /// Every unused NVMe instance store of the machine ([`INSTANCE_STORES`]).
    InstanceStores,
    /// None yet: the image declares the volume (and services that mount it) and leaves the
    /// disk to user-data, which replaces the declaration.
    Unnamed,
}

impl Disks {
    /// The key it is written with.
    pub fn key(&self) -> &'static str {
        match self {
            Disks::ById(_) => "disk",
            Disks::Serial(_) => "serial",
            Disks::Wwn(_) => "wwn",
            Disks::Label(_) => "label",
            Disks::InstanceStores => "disks",
            Disks::Unnamed => "",
        }
    }
}

impl fmt::Display for Disks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |f: &mut fmt::Formatter<'_>, what: &str, v: &[String]| {
            write!(f, "{what} {}", v.join(" + "))
        };
        match self {
            Disks::ById(v) => list(f, "by-id", v),
            Disks::Serial(v) => list(f, "serial", v),
            Disks::Wwn(v) => list(f, "wwn", v),
            Disks::Label(l) => write!(f, "label {l}"),
            Disks::InstanceStores => f.write_str("every NVMe instance store"),
            Disks::Unnamed => f.write_str("no disk named"),
        }
    }
}

/// The file system a volume carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filesystem {
    /// ext4 (`mke2fs -t ext4`; an existing ext2 or ext3 is mounted by the ext4 driver too).
    Ext4,
    /// XFS (`mkfs.xfs`).
    Xfs,
}

impl Filesystem {
    /// The name in profiles, user-data and volume files (and the kernel's type).
    pub fn as_str(self) -> &'static str {
        match self {
            Filesystem::Ext4 => "ext4",
            Filesystem::Xfs => "xfs",
        }
    }

    /// Parses a name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ext4" => Some(Filesystem::Ext4),
            "xfs" => Some(Filesystem::Xfs),
            _ => None,
        }
    }

    /// Whether a device holding `found` carries this file system (and can be mounted as
    /// the volume without formatting).
    pub fn matches(self, found: &probe::Found) -> bool {
        matches!(
            (self, found),
            (Filesystem::Ext4, probe::Found::Ext { .. })
                | (Filesystem::Xfs, probe::Found::Xfs { .. })
        )
    }
}

impl fmt::Display for Filesystem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// When the host may format a volume's disks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Only disks that hold nothing: no partition table, no signature, not one non-zero
    /// byte in their first and last MiB (the default).
    IfEmpty,
    /// Never: the volume is mounted if it holds its file system, and refused otherwise.
    Never,
}

impl Format {
    /// The name in profiles, user-data and volume files.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::IfEmpty => "if-empty",
            Format::Never => "never",
        }
    }

    /// Parses a name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "if-empty" => Some(Format::IfEmpty),
            "never" => Some(Format::Never),
            _ => None,
        }
    }
}

/// One volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeSpec {
    /// Its name: the mount point `/var/mnt/<name>`, and what services' mounts name.
    pub name: String,
    /// Its disks.
    pub disks: Disks,
    /// Its file system.
    pub filesystem: Filesystem,
    /// Mount options beyond Crust's own (`nosuid,nodev,noexec` always).
    pub mount_options: Vec<String>,
    /// When it may be formatted.
    pub format: Format,
}

/// A volume file or value that cannot be used: the key and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct VolumeError {
    /// The key (`serial`, `mount-options`, …), empty for the whole declaration.
    pub field: String,
    /// What is wrong and what to do.
    pub message: String,
}

impl VolumeError {
    fn new(field: &str, message: impl Into<String>) -> Self {
        Self {
            field: field.to_owned(),
            message: message.into(),
        }
    }
}

/// Checks a volume name: lowercase letters, digits and `-`, starting with a letter, at most
/// 32 characters (a directory under `/var/mnt` and part of a RAID array's name).
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a volume name (lowercase letters, digits and '-', starting with a \
             letter, at most 32)"
        ))
    }
}

/// The mount point of volume `name`.
pub fn mount_point(name: &str) -> String {
    format!("{MOUNT_ROOT}/{name}")
}

/// The name mdadm records in the superblocks of a RAID volume's members
/// (`crust:<name>`): the host knows its arrays by it.
pub fn array_name(name: &str) -> String {
    format!("crust:{name}")
}

/// A `/dev/disk/by-id/` name the init can derive without udev: `nvme-<model>_<serial>`
/// (with or without `_<namespace>`), `nvme-<wwid>` (`eui.…`, `nvme.…`, `uuid.…`),
/// `virtio-<serial>` or `wwn-0x<hex>`, each with an optional `-part<N>`. Takes the whole
/// path (`/dev/disk/by-id/…`) and returns the name.
pub fn check_by_id(path: &str) -> Result<String, String> {
    let name = path.strip_prefix(BY_ID).ok_or_else(|| {
        format!("{path:?} is not a /dev/disk/by-id/ path (use serial = or wwn = for other names)")
    })?;
    if name.is_empty() || name.contains('/') || !printable(name) || name.len() > 200 {
        return Err(format!("{path:?} is not a /dev/disk/by-id/ name"));
    }
    let known = ["nvme-", "virtio-", "wwn-0x"];
    if !known
        .iter()
        .any(|p| name.starts_with(p) && name.len() > p.len())
    {
        return Err(format!(
            "{path:?}: Crust names disks without udev, from what the kernel shows in sysfs, \
             and knows the nvme-…, virtio-… and wwn-0x… forms of /dev/disk/by-id; name other \
             disks by serial = \"…\" or wwn = \"…\""
        ));
    }
    Ok(name.to_owned())
}

/// A serial number: 1 to 80 printable ASCII characters (NVMe has 20, SCSI up to 252, and
/// leading or trailing spaces never count).
pub fn check_serial(serial: &str) -> Result<(), String> {
    let trimmed = serial.trim();
    if trimmed.is_empty() || trimmed.len() > 80 || !printable(trimmed) {
        return Err(format!(
            "{serial:?} is not a serial number (1 to 80 printable characters)"
        ));
    }
    Ok(())
}

/// A world wide name: hex digits with an optional `0x`, or the kernel's `naa.`, `eui.`,
/// `nvme.`, `uuid.` or `t10.` forms (as `wwid` files show them).
pub fn check_wwn(wwn: &str) -> Result<(), String> {
    let lower = wwn.to_ascii_lowercase();
    let hex = lower.strip_prefix("0x").unwrap_or(&lower);
    let kernel_form = ["naa.", "eui.", "nvme.", "uuid.", "t10."]
        .iter()
        .any(|p| lower.starts_with(p) && lower.len() > p.len());
    let ok = (kernel_form && printable(wwn) && wwn.len() <= 256)
        || (!hex.is_empty() && hex.len() <= 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{wwn:?} is not a world wide name (0x5000c500a1b2c3d4, or naa./eui./nvme. as the \
             kernel's wwid shows it)"
        ))
    }
}

/// A label: 1 to 64 printable characters (ext4 keeps 16 bytes, XFS 12, a GPT partition
/// name 36 characters).
pub fn check_label(label: &str) -> Result<(), String> {
    if label.is_empty() || label.len() > 64 || !printable(label) {
        return Err(format!(
            "{label:?} is not a label (1 to 64 printable characters)"
        ));
    }
    Ok(())
}

/// Options the init turns into mount flags; every other allowed option is handed to the
/// file system.
pub const MOUNT_FLAGS: &[&str] = &[
    "ro",
    "rw",
    "noatime",
    "nodiratime",
    "relatime",
    "strictatime",
    "lazytime",
    "sync",
    "dirsync",
    "nosuid",
    "nodev",
    "noexec",
];

/// Checks one mount option: a flag of [`MOUNT_FLAGS`], or a file-system option (`discard`,
/// `commit=30`, `inode64`: lowercase letters, digits and `_`, optionally `=` and a value
/// of letters, digits and `_ . : + / -`). What would let the host run or trust files from
/// the disk (`exec`, `suid`, `dev`, `defaults`) and what is not a mount option at all
/// (fstab's `auto`, `nofail`, `user`, …; `remount`, `bind`) are refused.
pub fn check_mount_option(option: &str) -> Result<(), String> {
    const WIDENING: &[&str] = &["exec", "suid", "dev", "defaults"];
    const NOT_OPTIONS: &[&str] = &[
        "remount",
        "bind",
        "rbind",
        "move",
        "auto",
        "noauto",
        "nofail",
        "user",
        "users",
        "nouser",
        "owner",
        "group",
        "_netdev",
        "shared",
        "rshared",
        "private",
        "rprivate",
        "slave",
        "rslave",
        "unbindable",
        "runbindable",
        "async",
        "mand",
        "nomand",
        "silent",
        "loud",
    ];
    if WIDENING.contains(&option) {
        return Err(format!(
            "{option:?}: volumes are always mounted nosuid, nodev and noexec (nothing the host \
             runs comes from a disk outside the verified root)"
        ));
    }
    if NOT_OPTIONS.contains(&option) || option.starts_with("x-") {
        return Err(format!(
            "{option:?} is not an option Crust mounts with (every volume is mounted at boot, \
             by the init, on /var/mnt/<name>)"
        ));
    }
    let (key, value) = match option.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (option, None),
    };
    let key_ok = !key.is_empty()
        && key.len() <= 64
        && key
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    let value_ok = value.is_none_or(|v| {
        !v.is_empty()
            && v.len() <= 256
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.:+/-".contains(&b))
    });
    if key_ok && value_ok {
        Ok(())
    } else {
        Err(format!(
            "{option:?} is not a mount option (such as noatime, discard or commit=30)"
        ))
    }
}

fn printable(s: &str) -> bool {
    s.bytes().all(|b| (0x20..0x7f).contains(&b))
}

impl VolumeSpec {
    /// The mount point, `/var/mnt/<name>`.
    pub fn mount_point(&self) -> String {
        mount_point(&self.name)
    }

    /// Checks every value; the error names the key.
    pub fn check(&self) -> Result<(), VolumeError> {
        check_name(&self.name).map_err(|m| VolumeError::new("name", m))?;
        let list = |field: &str, v: &[String], check: fn(&str) -> Result<(), String>| {
            if v.is_empty() || v.len() > MAX_DISKS {
                return Err(VolumeError::new(
                    field,
                    format!("name 1 to {MAX_DISKS} disks"),
                ));
            }
            for (i, item) in v.iter().enumerate() {
                check(item).map_err(|m| VolumeError::new(field, m))?;
                if v[..i].contains(item) {
                    return Err(VolumeError::new(field, format!("{item:?} is named twice")));
                }
            }
            Ok(())
        };
        match &self.disks {
            Disks::ById(names) => list("disk", names, |n| {
                check_by_id(&format!("{BY_ID}{n}")).map(|_| ())
            })?,
            Disks::Serial(serials) => list("serial", serials, check_serial)?,
            Disks::Wwn(wwns) => list("wwn", wwns, check_wwn)?,
            Disks::Label(label) => check_label(label).map_err(|m| VolumeError::new("label", m))?,
            Disks::InstanceStores | Disks::Unnamed => {}
        }
        for option in &self.mount_options {
            check_mount_option(option).map_err(|m| VolumeError::new("mount-options", m))?;
        }
        if self.mount_options.iter().any(|o| o == "ro")
            && self.mount_options.iter().any(|o| o == "rw")
        {
            return Err(VolumeError::new(
                "mount-options",
                "ro and rw exclude each other",
            ));
        }
        Ok(())
    }

    /// Whether it is mounted read-only.
    pub fn read_only(&self) -> bool {
        self.mount_options.iter().any(|o| o == "ro")
    }

    /// The volume file's text.
    pub fn to_text(&self) -> String {
        let mut s = format!("name={}\n", self.name);
        match &self.disks {
            Disks::ById(v) | Disks::Serial(v) | Disks::Wwn(v) => {
                for item in v {
                    let item = match &self.disks {
                        Disks::ById(_) => format!("{BY_ID}{item}"),
                        _ => item.clone(),
                    };
                    s.push_str(&format!("{}={item}\n", self.disks.key()));
                }
            }
            Disks::Label(l) => s.push_str(&format!("label={l}\n")),
            Disks::InstanceStores => s.push_str(&format!("disks={INSTANCE_STORES}\n")),
            Disks::Unnamed => {}
        }
        s.push_str(&format!("filesystem={}\n", self.filesystem));
        if !self.mount_options.is_empty() {
            s.push_str(&format!("mount-options={}\n", self.mount_options.join(",")));
        }
        s.push_str(&format!("format={}\n", self.format.as_str()));
        s
    }

    /// Parses a volume file (strict: unknown or repeated keys, two kinds of disk, or a
    /// value that fails its check refuse the file).
    pub fn parse(text: &str) -> Result<Self, VolumeError> {
        let (mut name, mut filesystem, mut options, mut format) = (None, None, None, None);
        let mut disks: Option<Disks> = None;
        for (n, line) in text.lines().enumerate() {
            let (key, value) = line.split_once('=').ok_or_else(|| {
                VolumeError::new("", format!("line {}: expected key=value", n + 1))
            })?;
            let once = |slot: &mut Option<String>| {
                if slot.replace(value.to_owned()).is_some() {
                    return Err(VolumeError::new(key, "given twice"));
                }
                Ok(())
            };
            match key {
                "name" => once(&mut name)?,
                "filesystem" => once(&mut filesystem)?,
                "mount-options" => once(&mut options)?,
                "format" => once(&mut format)?,
                "disk" | "serial" | "wwn" => {
                    let item = if key == "disk" {
                        check_by_id(value).map_err(|m| VolumeError::new(key, m))?
                    } else {
                        value.to_owned()
                    };
                    match (&mut disks, key) {
                        (None, "disk") => disks = Some(Disks::ById(vec![item])),
                        (None, "serial") => disks = Some(Disks::Serial(vec![item])),
                        (None, _) => disks = Some(Disks::Wwn(vec![item])),
                        (Some(Disks::ById(v)), "disk")
                        | (Some(Disks::Serial(v)), "serial")
                        | (Some(Disks::Wwn(v)), "wwn") => v.push(item),
                        (Some(other), _) => {
                            return Err(VolumeError::new(
                                key,
                                format!("the volume already names its disks by {}", other.key()),
                            ));
                        }
                    }
                }
                "label" | "disks" => {
                    if let Some(other) = &disks {
                        return Err(VolumeError::new(
                            key,
                            format!("the volume already names its disks by {}", other.key()),
                        ));
                    }
                    disks = Some(if key == "label" {
                        Disks::Label(value.to_owned())
                    } else if value == INSTANCE_STORES {
                        Disks::InstanceStores
                    } else {
                        return Err(VolumeError::new(
                            key,
                            format!("{value:?} is not {INSTANCE_STORES:?}"),
                        ));
                    });
                }
                other => {
                    return Err(VolumeError::new(other, "unknown key"));
                }
            }
        }
        let spec = VolumeSpec {
            name: name.ok_or_else(|| VolumeError::new("name", "missing"))?,
            disks: disks.unwrap_or(Disks::Unnamed),
            filesystem: match filesystem.as_deref() {
                None => Filesystem::Ext4,
                Some(f) => Filesystem::parse(f).ok_or_else(|| {
                    VolumeError::new("filesystem", format!("{f:?} is not ext4 or xfs"))
                })?,
            },
            mount_options: options
                .map(|o| {
                    o.split(',')
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
            format: match format.as_deref() {
                None => Format::IfEmpty,
                Some(f) => Format::parse(f).ok_or_else(|| {
                    VolumeError::new("format", format!("{f:?} is not if-empty or never"))
                })?,
            },
        };
        spec.check()?;
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(disks: Disks) -> VolumeSpec {
        VolumeSpec {
            name: "db".into(),
            disks,
            filesystem: Filesystem::Xfs,
            mount_options: vec!["noatime".into(), "commit=30".into()],
            format: Format::Never,
        }
    }

    #[test]
    fn volume_files_round_trip() {
        for disks in [
            Disks::ById(vec![
                "nvme-Amazon_Elastic_Block_Store_vol0123456789abcdef0".into(),
                "virtio-data-2".into(),
            ]),
            Disks::Serial(vec!["data1".into()]),
            Disks::Wwn(vec![
                "0x5000c500a1b2c3d4".into(),
                "eui.0025388b71b1e2a5".into(),
            ]),
            Disks::Label("pgdata".into()),
            Disks::InstanceStores,
            Disks::Unnamed,
        ] {
            let s = spec(disks);
            assert_eq!(
                VolumeSpec::parse(&s.to_text()),
                Ok(s.clone()),
                "{}",
                s.to_text()
            );
        }
        let defaults = VolumeSpec::parse("name=scratch\ndisks=nvme-instance-store\n").unwrap();
        assert_eq!(defaults.filesystem, Filesystem::Ext4);
        assert_eq!(defaults.format, Format::IfEmpty);
        assert!(defaults.mount_options.is_empty());
        assert_eq!(defaults.mount_point(), "/var/mnt/scratch");
        assert_eq!(array_name("scratch"), "crust:scratch");
    }

    #[test]
    fn bad_files_name_the_key() {
        for (text, field) in [
            ("serial=x\n", "name"),
            ("name=Db\n", "name"),
            ("name=db\nserial=a\nlabel=b\n", "label"),
            ("name=db\nserial=a\nwwn=0x1\n", "wwn"),
            ("name=db\nserial=a\nserial=a\n", "serial"),
            ("name=db\ndisk=/dev/sdb\n", "disk"),
            (
                "name=db\ndisk=/dev/disk/by-id/ata-QEMU_HARDDISK_QM00005\n",
                "disk",
            ),
            ("name=db\ndisks=all\n", "disks"),
            ("name=db\nwwn=0xzz\n", "wwn"),
            ("name=db\nfilesystem=btrfs\n", "filesystem"),
            ("name=db\nformat=always\n", "format"),
            ("name=db\nmount-options=exec\n", "mount-options"),
            ("name=db\nmount-options=nofail\n", "mount-options"),
            ("name=db\nmount-options=ro,rw\n", "mount-options"),
            ("name=db\ncolour=red\n", "colour"),
            ("name=db\nname=x\n", "name"),
        ] {
            assert_eq!(VolumeSpec::parse(text).unwrap_err().field, field, "{text}");
        }
    }

    #[test]
    fn by_id_names_are_the_forms_sysfs_gives() {
        assert_eq!(
            check_by_id("/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol0abc-part1").unwrap(),
            "nvme-Amazon_Elastic_Block_Store_vol0abc-part1"
        );
        for ok in [
            "/dev/disk/by-id/nvme-eui.0025388b71b1e2a5",
            "/dev/disk/by-id/virtio-data1",
            "/dev/disk/by-id/wwn-0x5000c500a1b2c3d4",
        ] {
            check_by_id(ok).unwrap();
        }
        for bad in [
            "nvme-x",
            "/dev/disk/by-id/",
            "/dev/disk/by-id/nvme-",
            "/dev/disk/by-id/a/b",
            "/dev/disk/by-id/scsi-0QEMU_QEMU_HARDDISK_drive0",
        ] {
            assert!(check_by_id(bad).is_err(), "{bad}");
        }
        for (wwn, ok) in [
            ("0x5000C500A1B2C3D4", true),
            ("5000c500a1b2c3d4", true),
            ("naa.5000c500a1b2c3d4", true),
            ("nvme.1b36-0001", true),
            ("", false),
            ("0x", false),
            ("naa.", false),
        ] {
            assert_eq!(check_wwn(wwn).is_ok(), ok, "{wwn}");
        }
        for option in [
            "discard",
            "commit=30",
            "data=ordered",
            "inode64",
            "ro",
            "noatime",
        ] {
            check_mount_option(option).unwrap();
        }
        for option in [
            "exec",
            "suid",
            "dev",
            "defaults",
            "x-systemd.automount",
            "a b",
            "A=1",
            "=1",
            "k=",
        ] {
            assert!(check_mount_option(option).is_err(), "{option}");
        }
    }
}
