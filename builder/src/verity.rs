//! The dm-verity hash tree over the root image, compatible with `veritysetup format`.
//!
//! No maintained crate computes it, and it is short: every 4 KiB data block is hashed as
//! `SHA-256(salt ‖ block)`; digests are packed 128 to a 4 KiB hash block (zero-padded);
//! the next level hashes those blocks the same way, until one block remains, whose salted
//! hash is the root hash. On disk the superblock comes first, then the levels from the top
//! (one block) down to the leaves, as the kernel expects. Level 0 is hashed in parallel.

use crust_format::Digest;
use crust_format::verity::{BLOCK_SIZE, VerityParams, hash_blocks};
use rayon::prelude::*;
use sha2::{Digest as _, Sha256};

const BLOCK: usize = BLOCK_SIZE as usize;
const DIGESTS_PER_BLOCK: usize = BLOCK / 32;

/// The salt for an image: derived from its content, so equal images get equal trees and
/// different images different salts.
pub fn salt_for(data: &[u8]) -> Digest {
    Digest::of_parts([
        b"crust verity salt v1".as_slice(),
        Digest::of(data).as_bytes(),
    ])
}

/// Computes the tree over `data` (a multiple of 4 KiB) and returns its parameters and the
/// bytes of the verity partition (superblock block followed by the tree).
pub fn build(data: &[u8], salt: Digest) -> (VerityParams, Vec<u8>) {
    assert_eq!(data.len() % BLOCK, 0, "verity data must be padded to 4 KiB");
    let data_blocks = (data.len() / BLOCK) as u64;
    let hash = |block: &[u8]| -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(salt.as_bytes());
        h.update(block);
        h.finalize().into()
    };
    // Each level is stored as whole hash blocks.
    let pack = |digests: Vec<[u8; 32]>| -> Vec<u8> {
        let blocks = digests.len().div_ceil(DIGESTS_PER_BLOCK).max(1);
        let mut out = vec![0u8; blocks * BLOCK];
        for (i, d) in digests.iter().enumerate() {
            out[i * 32..i * 32 + 32].copy_from_slice(d);
        }
        out
    };
    // levels[0] hashes the data, each next level the one before, until one block is left.
    let mut levels: Vec<Vec<u8>> = Vec::new();
    loop {
        let below: &[u8] = levels.last().map_or(data, Vec::as_slice);
        if below.len() <= BLOCK {
            break;
        }
        let level = pack(below.par_chunks(BLOCK).map(hash).collect());
        levels.push(level);
    }
    let root_hash = Digest(hash(levels.last().map_or(data, Vec::as_slice)));

    let uuid_digest = Digest::of_parts([b"crust verity uuid v1".as_slice(), salt.as_bytes()]);
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&uuid_digest.0[..16]);
    uuid[6] = (uuid[6] & 0x0f) | 0x40; // RFC 4122 version 4 (random-looking, derived)
    uuid[8] = (uuid[8] & 0x3f) | 0x80;

    let tree_blocks: usize = levels.iter().map(|l| l.len() / BLOCK).sum();
    debug_assert_eq!(tree_blocks as u64, hash_blocks(data_blocks));
    let params = VerityParams {
        root_hash,
        salt,
        data_blocks,
        hash_size: (tree_blocks as u64 + 1) * BLOCK_SIZE as u64,
        uuid,
    };
    let mut out = Vec::with_capacity(params.hash_size as usize);
    out.extend_from_slice(&params.superblock());
    out.resize(BLOCK, 0);
    for level in levels.iter().rev() {
        out.extend_from_slice(level);
    }
    (params, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn veritysetup() -> &'static str {
        assert!(
            Command::new("sh")
                .args(["-c", "command -v veritysetup"])
                .output()
                .unwrap()
                .status
                .success(),
            "veritysetup is missing: install cryptsetup-bin (cargo xtask test does)"
        );
        "veritysetup"
    }

    fn data(blocks: usize) -> Vec<u8> {
        (0..blocks * BLOCK).map(|i| (i * 7 / 3) as u8).collect()
    }

    #[test]
    fn veritysetup_verifies_the_tree_and_rejects_a_flipped_byte() {
        for blocks in [1, 129, 20_000] {
            let mut data = data(blocks);
            let salt = salt_for(&data);
            let (params, tree) = build(&data, salt);
            assert_eq!(tree.len() as u64, params.hash_size);
            let superblock = crust_format::verity::Superblock::parse(&tree).unwrap();
            assert_eq!(superblock.data_blocks, blocks as u64);
            let dir = tempfile::tempdir().unwrap();
            let (d, h) = (dir.path().join("data"), dir.path().join("hash"));
            std::fs::write(&d, &data).unwrap();
            std::fs::write(&h, &tree).unwrap();
            let verify = |d: &std::path::Path| {
                Command::new(veritysetup())
                    .arg("verify")
                    .arg(d)
                    .arg(&h)
                    .arg(params.root_hash.to_hex())
                    .output()
                    .unwrap()
            };
            let out = verify(&d);
            assert!(
                out.status.success(),
                "{blocks} blocks: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            data[BLOCK * (blocks / 2) + 5] ^= 1;
            std::fs::write(&d, &data).unwrap();
            assert!(
                !verify(&d).status.success(),
                "{blocks} blocks: corruption not detected"
            );
        }
    }

    #[test]
    fn matches_veritysetup_format_byte_for_byte() {
        for blocks in [1, 300] {
            let data = data(blocks);
            let salt = salt_for(&data);
            let (params, tree) = build(&data, salt);
            let dir = tempfile::tempdir().unwrap();
            let (d, h) = (dir.path().join("data"), dir.path().join("hash"));
            std::fs::write(&d, &data).unwrap();
            let uuid = uuid::Uuid::from_bytes(params.uuid).to_string();
            let out = Command::new(veritysetup())
                .args(["format", "--salt", &salt.to_hex(), "--uuid", &uuid])
                .arg(&d)
                .arg(&h)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(stdout.contains(&params.root_hash.to_hex()), "{stdout}");
            assert_eq!(std::fs::read(&h).unwrap(), tree);
        }
    }
}
