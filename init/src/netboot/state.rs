//! A network-booted host's `/var` on a local disk: user-data's `[state] disk`
//! (docs/METAL.md). Until user-data is read, `/var` is the tmpfs the state step mounted;
//! when user-data names a disk, it is prepared by the data volumes' rule (formatted as
//! ext4 only when every byte of its first and last MiB is zero, checked with `e2fsck -p`
//! when it holds ext4, refused when it holds anything else or is in use) and mounted on
//! `/var` over that tmpfs, `nosuid,nodev,noexec`, with the machine id it keeps.

use std::path::{Path, PathBuf};

use crust_format::volume::Filesystem;
use crust_format::volume::probe::Content;

use crate::volumes::disks::{Device, Inventory};
use crate::volumes::{fs, helper};

/// The file system label of a state disk Crust made.
pub const LABEL: &str = "crust-state";

/// How `[state] disk` names a disk: `/dev/disk/by-id/NAME`, `/dev/NAME` (the kernel's
/// name), or a serial number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wanted {
    /// A `/dev/disk/by-id/` name (without the folder).
    ById(String),
    /// A kernel name (`vdb`, `nvme1n1`).
    Kernel(String),
    /// A serial number.
    Serial(String),
}

impl Wanted {
    /// Reads user-data's `disk`.
    pub fn parse(disk: &str) -> Self {
        if let Some(id) = disk.strip_prefix("/dev/disk/by-id/") {
            Wanted::ById(id.to_owned())
        } else if let Some(name) = disk.strip_prefix("/dev/") {
            Wanted::Kernel(name.to_owned())
        } else {
            Wanted::Serial(disk.to_owned())
        }
    }

    /// Whether `device` is the disk named.
    pub fn matches(&self, device: &Device) -> bool {
        match self {
            Wanted::ById(id) => device.by_id.iter().any(|b| b == id),
            Wanted::Kernel(name) => &device.name == name,
            Wanted::Serial(serial) => device.serial.as_deref() == Some(serial.as_str()),
        }
    }
}

/// Puts `/var` on the disk user-data names; returns the console detail, or why not (the
/// tmpfs stays, nothing was written).
pub fn attach(disk: &str) -> Result<String, String> {
    let wanted = Wanted::parse(disk);
    let inventory = Inventory::read();
    let device = inventory
        .devices
        .iter()
        .find(|d| wanted.matches(d))
        .ok_or_else(|| {
            let here: Vec<String> = inventory.disks().map(Device::describe).collect();
            format!(
                "state.disk = {disk:?} names no disk of this machine (disks here: {})",
                if here.is_empty() {
                    "none".into()
                } else {
                    here.join("; ")
                }
            )
        })?;
    let node = PathBuf::from("/dev").join(&device.name);
    if device.read_only {
        return Err(format!(
            "state.disk = {disk:?} is {}, which is read-only",
            device.describe()
        ));
    }
    if let Some(why) = inventory.in_use(&device.name, &[]) {
        return Err(format!("state.disk = {disk:?}: {why}"));
    }
    let content = helper::probe_device(&helper::node_of(&device.name, device.dev), device.size)?;
    let prepared = match &content {
        Content::Empty => {
            fs::make(Filesystem::Ext4, &node, LABEL)
                .map_err(|e| format!("state.disk = {disk:?}: {e}"))?;
            "ext4 made now: the disk was empty".to_owned()
        }
        Content::Found(found) if Filesystem::Ext4.matches(found) => {
            fs::check(Filesystem::Ext4, &node, false)
                .map_err(|e| format!("state.disk = {disk:?}: {e}; not mounted"))?
                .describe()
        }
        other => {
            return Err(format!(
                "state.disk = {disk:?} is {}, which holds {other}: not ext4 and not empty, so \
                 it is neither formatted nor mounted (zero its first and last MiB to let the \
                 host format it)",
                device.describe()
            ));
        }
    };
    fs::mount_on(Filesystem::Ext4, &node, Path::new(crate::state::VAR), &[])
        .map_err(|e| format!("state.disk = {disk:?}: {e}"))?;
    let id = crate::state::adopt_identity();
    Ok(format!(
        "/var on {} ({prepared}), persistent (state.disk from user-data); machine-id {id}",
        device.describe()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_disk_is_named_by_id_kernel_name_or_serial() {
        let d = Device {
            name: "vdb".into(),
            serial: Some("crust-state".into()),
            by_id: vec!["virtio-crust-state".into()],
            ..Device::default()
        };
        for yes in [
            "/dev/disk/by-id/virtio-crust-state",
            "/dev/vdb",
            "crust-state",
        ] {
            assert!(Wanted::parse(yes).matches(&d), "{yes}");
        }
        for no in [
            "/dev/disk/by-id/crust-state",
            "/dev/vdc",
            "vdb",
            "virtio-crust-state",
        ] {
            assert!(!Wanted::parse(no).matches(&d), "{no}");
        }
    }
}
