//! dm-verity parameters, the on-disk superblock, and the kernel table line.
//!
//! Crust uses one fixed parameter set (layout v1): hash format 1 (the Chromium OS format
//! `veritysetup` calls version 1: the salt is hashed *before* each block), SHA-256, 4096-byte
//! data and hash blocks, a 32-byte salt, and a `veritysetup`-compatible superblock at the
//! start of the verity partition, so the hash tree starts at hash block 1.

use crate::Digest;

/// Data and hash block size in bytes.
pub const BLOCK_SIZE: u32 = 4096;
/// The hash algorithm, as the kernel and `veritysetup` name it.
pub const HASH_ALGORITHM: &str = "sha256";
/// dm-verity hash format version (1 = salt first, digests padded to powers of two).
pub const HASH_TYPE: u32 = 1;
/// Size of the superblock structure; it occupies the whole first hash block.
pub const SUPERBLOCK_SIZE: usize = 512;
/// The superblock signature.
pub const SUPERBLOCK_MAGIC: &[u8; 8] = b"verity\0\0";

/// Name of the device-mapper device that holds the verified root.
pub const DM_NAME: &str = "root";
/// Prefix of its device-mapper UUID; the root hash follows (`CRUST-VERITY-<hex>`), so the
/// running system can tell which image `/` is from `/sys/block/dm-N/dm/uuid`.
pub const DM_UUID_PREFIX: &str = "CRUST-VERITY-";

/// The device-mapper UUID of the verified root with `root_hash`.
pub fn dm_uuid(root_hash: &Digest) -> String {
    format!("{DM_UUID_PREFIX}{root_hash}")
}

/// What the kernel does when a block does not match its hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnCorruption {
    /// Return an I/O error to the reader.
    Error,
    /// Restart the machine (so boot counting falls back to the other slot).
    Restart,
    /// Panic the kernel (it reboots after `panic=` seconds).
    Panic,
}

/// The verity parameters of one root image; the manifest carries them, signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerityParams {
    /// The root hash of the tree.
    pub root_hash: Digest,
    /// The salt hashed before every block.
    pub salt: Digest,
    /// Number of 4096-byte data blocks covered (the root image size / 4096).
    pub data_blocks: u64,
    /// Bytes of the verity partition in use: superblock block plus hash tree.
    pub hash_size: u64,
    /// UUID recorded in the superblock.
    pub uuid: [u8; 16],
}

impl VerityParams {
    /// Size in bytes of the data the tree covers.
    pub fn data_size(&self) -> u64 {
        self.data_blocks * u64::from(BLOCK_SIZE)
    }

    /// The device-mapper `verity` target parameters for this tree.
    ///
    /// `data_dev` and `hash_dev` are `major:minor` pairs or device paths.
    pub fn table_params(
        &self,
        data_dev: &str,
        hash_dev: &str,
        on_corruption: OnCorruption,
    ) -> String {
        let mut params = format!(
            "{HASH_TYPE} {data_dev} {hash_dev} {BLOCK_SIZE} {BLOCK_SIZE} {blocks} 1 {HASH_ALGORITHM} {root} {salt}",
            blocks = self.data_blocks,
            root = self.root_hash,
            salt = self.salt,
        );
        match on_corruption {
            OnCorruption::Error => {}
            OnCorruption::Restart => params.push_str(" 1 restart_on_corruption"),
            OnCorruption::Panic => params.push_str(" 1 panic_on_corruption"),
        }
        params
    }

    /// Length of the device-mapper target in 512-byte sectors.
    pub fn table_sectors(&self) -> u64 {
        self.data_size() / 512
    }

    /// The 512-byte superblock (callers pad it to a full block on disk).
    pub fn superblock(&self) -> [u8; SUPERBLOCK_SIZE] {
        let mut sb = [0u8; SUPERBLOCK_SIZE];
        sb[0..8].copy_from_slice(SUPERBLOCK_MAGIC);
        sb[8..12].copy_from_slice(&1u32.to_le_bytes()); // superblock version
        sb[12..16].copy_from_slice(&HASH_TYPE.to_le_bytes());
        sb[16..32].copy_from_slice(&self.uuid);
        sb[32..32 + HASH_ALGORITHM.len()].copy_from_slice(HASH_ALGORITHM.as_bytes());
        sb[64..68].copy_from_slice(&BLOCK_SIZE.to_le_bytes());
        sb[68..72].copy_from_slice(&BLOCK_SIZE.to_le_bytes());
        sb[72..80].copy_from_slice(&self.data_blocks.to_le_bytes());
        sb[80..82].copy_from_slice(&32u16.to_le_bytes()); // salt size
        sb[88..120].copy_from_slice(self.salt.as_bytes());
        sb
    }
}

/// A superblock that does not describe a Crust layout-v1 tree.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("verity superblock: {0}")]
pub struct SuperblockError(pub &'static str);

/// What a superblock records, read back from disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Superblock {
    /// The UUID of the hash device.
    pub uuid: [u8; 16],
    /// Number of data blocks.
    pub data_blocks: u64,
    /// The salt.
    pub salt: Digest,
}

impl Superblock {
    /// Parses a superblock and checks it uses Crust's fixed parameters.
    pub fn parse(bytes: &[u8]) -> Result<Self, SuperblockError> {
        let sb = bytes
            .get(..SUPERBLOCK_SIZE)
            .ok_or(SuperblockError("shorter than 512 bytes"))?;
        let u32_at = |o: usize| u32::from_le_bytes(sb[o..o + 4].try_into().unwrap_or_default());
        if &sb[0..8] != SUPERBLOCK_MAGIC {
            return Err(SuperblockError("no \"verity\" signature"));
        }
        if u32_at(8) != 1 || u32_at(12) != HASH_TYPE {
            return Err(SuperblockError("unsupported version or hash type"));
        }
        let algorithm = sb[32..64].split(|&b| b == 0).next().unwrap_or_default();
        if algorithm != HASH_ALGORITHM.as_bytes() {
            return Err(SuperblockError("hash algorithm is not sha256"));
        }
        if u32_at(64) != BLOCK_SIZE || u32_at(68) != BLOCK_SIZE {
            return Err(SuperblockError("block sizes are not 4096"));
        }
        if u16::from_le_bytes([sb[80], sb[81]]) != 32 {
            return Err(SuperblockError("salt is not 32 bytes"));
        }
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&sb[16..32]);
        let mut salt = [0u8; 32];
        salt.copy_from_slice(&sb[88..120]);
        Ok(Self {
            uuid,
            data_blocks: u64::from_le_bytes(sb[72..80].try_into().unwrap_or_default()),
            salt: Digest(salt),
        })
    }
}

/// Number of hash blocks (excluding the superblock) a tree over `data_blocks` needs.
pub fn hash_blocks(data_blocks: u64) -> u64 {
    let per_block = u64::from(BLOCK_SIZE) / 32;
    // Levels are added until one block remains; a single data block needs no tree at all
    // (its salted hash is the root hash).
    let mut total = 0;
    let mut level = data_blocks;
    while level > 1 {
        level = level.div_ceil(per_block);
        total += level;
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> VerityParams {
        VerityParams {
            root_hash: Digest([0xab; 32]),
            salt: Digest([0x01; 32]),
            data_blocks: 300,
            hash_size: 3 * 4096,
            uuid: [7; 16],
        }
    }

    #[test]
    fn superblock_round_trips() {
        let p = params();
        let sb = Superblock::parse(&p.superblock()).unwrap();
        assert_eq!(sb.data_blocks, 300);
        assert_eq!(sb.salt, p.salt);
        assert_eq!(sb.uuid, [7; 16]);
        let mut bad = p.superblock();
        bad[0] = b'X';
        assert!(Superblock::parse(&bad).is_err());
    }

    #[test]
    fn table_line_matches_the_kernel_syntax() {
        let line = params().table_params("254:2", "254:3", OnCorruption::Restart);
        assert!(line.starts_with("1 254:2 254:3 4096 4096 300 1 sha256 abab"));
        assert!(line.ends_with(" 1 restart_on_corruption"));
        assert_eq!(params().table_sectors(), 300 * 8);
    }

    #[test]
    fn hash_block_count_follows_the_tree_shape() {
        assert_eq!(hash_blocks(1), 0);
        assert_eq!(hash_blocks(2), 1);
        assert_eq!(hash_blocks(128), 1);
        assert_eq!(hash_blocks(129), 3); // two leaves, one root block
        assert_eq!(hash_blocks(128 * 128 + 1), 129 + 2 + 1);
    }
}
