//! Partition layout v1: the six partitions, their type GUIDs and labels, and how a slot's
//! partition UUIDs derive from its root hash.
//!
//! Type GUIDs follow the Discoverable Partitions Specification (x86-64), so `sgdisk`,
//! `systemd-dissect` and friends understand a Crust disk. As that specification describes
//! for verity, a root partition's UUID is the first 128 bits of its root hash and its verity
//! partition's UUID the last 128 bits: the signed root hash alone identifies both partitions.

use uuid::Uuid;

use crate::Digest;

/// The layout version this crate describes.
pub const LAYOUT_VERSION: u32 = 1;
/// Logical sector size.
pub const SECTOR_SIZE: u64 = 512;
/// Every partition starts and ends on this boundary.
pub const ALIGNMENT: u64 = 1 << 20;

/// DPS type GUIDs used by layout v1.
pub mod type_guid {
    use uuid::{Uuid, uuid};

    /// EFI System Partition.
    pub const ESP: Uuid = uuid!("c12a7328-f81f-11d2-ba4b-00a0c93ec93b");
    /// Root partition, x86-64.
    pub const ROOT_X86_64: Uuid = uuid!("4f68bce3-e8cd-4db1-96e7-fbcaf984b709");
    /// Root verity partition, x86-64.
    pub const ROOT_VERITY_X86_64: Uuid = uuid!("2c7357ed-ebd2-46d9-aec1-23d437ec2bf5");
    /// Variable data partition (`/var`).
    pub const VAR: Uuid = uuid!("4d21b016-b534-45c2-a9fb-5c16e091fd2d");
}

/// File system label of the state partition's ext4.
pub const STATE_LABEL: &str = "crust-state";
/// Where the host keeps its own state on `/var` (machine id, boot count).
pub const STATE_DIR: &str = "/var/lib/crust";

/// GPT attribute bit 60: the partition is read-only.
pub const ATTR_READ_ONLY: u64 = 1 << 60;
/// GPT attribute bit 59: the file system should grow to fill the partition.
pub const ATTR_GROW_FS: u64 = 1 << 59;

/// One of the two A/B slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Slot {
    /// The slot the first image installs into.
    A,
    /// The slot the first update installs into.
    B,
}

impl Slot {
    /// The other slot.
    pub fn other(self) -> Self {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    /// `"a"` or `"b"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }
}

/// What a partition of layout v1 is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// FAT32: systemd-boot and the UKIs.
    Esp,
    /// A slot's read-only root file system.
    Root(Slot),
    /// A slot's dm-verity hash tree.
    Verity(Slot),
    /// ext4 mounted at `/var`; grows to fill the disk.
    State,
}

impl Role {
    /// The partitions of layout v1, in table order (entry 1 first).
    pub const ALL: [Role; 6] = [
        Role::Esp,
        Role::Root(Slot::A),
        Role::Verity(Slot::A),
        Role::Root(Slot::B),
        Role::Verity(Slot::B),
        Role::State,
    ];

    /// The GPT partition name.
    pub fn label(self) -> &'static str {
        match self {
            Role::Esp => "esp",
            Role::Root(Slot::A) => "root-a",
            Role::Verity(Slot::A) => "verity-a",
            Role::Root(Slot::B) => "root-b",
            Role::Verity(Slot::B) => "verity-b",
            Role::State => "state",
        }
    }

    /// The role a GPT partition name stands for.
    pub fn from_label(label: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.label() == label)
    }

    /// The DPS partition type GUID.
    pub fn type_guid(self) -> Uuid {
        match self {
            Role::Esp => type_guid::ESP,
            Role::Root(_) => type_guid::ROOT_X86_64,
            Role::Verity(_) => type_guid::ROOT_VERITY_X86_64,
            Role::State => type_guid::VAR,
        }
    }

    /// The GPT partition entry number (1-based).
    pub fn number(self) -> u32 {
        Self::ALL
            .iter()
            .position(|&r| r == self)
            .map_or(0, |i| i as u32 + 1)
    }

    /// GPT attribute bits set on this partition.
    pub fn attributes(self) -> u64 {
        match self {
            Role::Root(_) | Role::Verity(_) => ATTR_READ_ONLY,
            Role::State => ATTR_GROW_FS,
            Role::Esp => 0,
        }
    }
}

/// The root partition UUID of the slot holding the image with this root hash.
pub fn root_partition_uuid(root_hash: &Digest) -> Uuid {
    Uuid::from_bytes(root_hash.0[..16].try_into().unwrap_or_default())
}

/// The verity partition UUID of the slot holding the image with this root hash.
pub fn verity_partition_uuid(root_hash: &Digest) -> Uuid {
    Uuid::from_bytes(root_hash.0[16..].try_into().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_the_halves_of_the_root_hash() {
        let hash: Digest = "00112233445566778899aabbccddeeff0123456789abcdeffedcba9876543210"
            .parse()
            .unwrap();
        assert_eq!(
            root_partition_uuid(&hash).to_string(),
            "00112233-4455-6677-8899-aabbccddeeff"
        );
        assert_eq!(
            verity_partition_uuid(&hash).to_string(),
            "01234567-89ab-cdef-fedc-ba9876543210"
        );
    }

    #[test]
    fn table_order_and_labels() {
        let labels: Vec<_> = Role::ALL.iter().map(|r| r.label()).collect();
        assert_eq!(
            labels,
            ["esp", "root-a", "verity-a", "root-b", "verity-b", "state"]
        );
        assert_eq!(Role::Verity(Slot::B).number(), 5);
        assert_eq!(Role::from_label("root-b"), Some(Role::Root(Slot::B)));
    }
}
