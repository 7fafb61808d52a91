//! NoCloud seed disks: a FAT volume labelled `CIDATA` holding `user-data` and `meta-data`,
//! as cloud-init's NoCloud data source defines it and as Crust's init looks for it, and
//! `user-data.sig` when the user-data is signed (`cargo xtask sign-user-data`).
//!
//! The volume is written by the builder's FAT32 writer ([`crust_builder::fat`]); FAT32's
//! smallest volume is a little over 32 MiB, but the file is sparse, so it takes a few
//! kilobytes on disk.

use std::fs::File;
use std::path::Path;

use anyhow::{Context, Result};
use crust_builder::fat::{self, FatOptions, FatTree};

/// The label NoCloud seeds carry.
pub const LABEL: &str = "CIDATA";
/// The name of the signature beside `user-data`.
pub const SIGNATURE_FILE: &str = crust_format::user_data::SEED_SIGNATURE_FILE;
/// The volume size: the smallest FAT32 volume, rounded up to a whole MiB.
pub const SIZE: u64 = fat::MIN_VOLUME_SIZE.div_ceil(1 << 20) * (1 << 20);

/// Writes a seed disk image holding `user_data` to `dest` (replacing it). `meta-data`
/// names the instance, as NoCloud requires.
pub fn write(user_data: &[u8], dest: &Path) -> Result<()> {
    write_signed(user_data, None, dest)
}

/// [`write`], with `signature` (the raw 64 bytes) as `user-data.sig` beside the user-data.
pub fn write_signed(user_data: &[u8], signature: Option<&[u8]>, dest: &Path) -> Result<()> {
    let mut tree = FatTree::new();
    tree.add_file("user-data", user_data.to_vec())?;
    if let Some(signature) = signature {
        tree.add_file(SIGNATURE_FILE, signature.to_vec())?;
    }
    tree.add_file(
        "meta-data",
        b"instance-id: crust-nocloud\nlocal-hostname: crust\n".to_vec(),
    )?;
    let opts = FatOptions {
        volume_id: 0xC1DA_7A00,
        label: LABEL.into(),
        timestamp: 0,
        hidden_sectors: 0,
    };
    let _ = std::fs::remove_file(dest);
    let mut file =
        File::create(dest).with_context(|| format!("cannot create {}", dest.display()))?;
    file.set_len(SIZE)?;
    fat::write_volume(&mut file, SIZE, &opts, &tree)
        .with_context(|| format!("cannot write the seed volume {}", dest.display()))?;
    file.sync_all()?;
    Ok(())
}

/// Writes a seed holding the user-data file `user_data` (and its signature `FILE.sig`, if
/// there is one beside it) to `dest` and attaches it to `config`'s machine as a second disk.
pub fn attach(config: &mut crate::Config, user_data: &Path, dest: &Path) -> Result<()> {
    let bytes = std::fs::read(user_data)
        .with_context(|| format!("cannot read the user-data {}", user_data.display()))?;
    let mut sig_path = user_data.as_os_str().to_owned();
    sig_path.push(".sig");
    let signature = match std::fs::read(&sig_path) {
        Ok(sig) => Some(sig),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            return Err(e)
                .with_context(|| format!("cannot read {}", Path::new(&sig_path).display()));
        }
    };
    write_signed(&bytes, signature.as_deref(), dest)?;
    config.extra_drives.push(dest.to_path_buf());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn the_seed_is_a_clean_fat_volume_labelled_cidata() {
        let dir = tempfile::tempdir().unwrap();
        let seed = dir.path().join("seed.img");
        write(b"version = 1\nhostname = \"x\"\n", &seed).unwrap();
        // Independent readers: dosfstools and mtools.
        let fsck = Command::new("fsck.fat")
            .arg("-n")
            .arg(&seed)
            .output()
            .unwrap();
        assert!(
            fsck.status.success(),
            "{}",
            String::from_utf8_lossy(&fsck.stdout)
        );
        let label = Command::new("fatlabel").arg(&seed).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&label.stdout).trim(), LABEL);
        let out = Command::new("mtype")
            .arg("-i")
            .arg(&seed)
            .arg("::user-data")
            .output()
            .unwrap();
        assert_eq!(out.stdout, b"version = 1\nhostname = \"x\"\n");
        // Sparse: the file is 33 MiB long but holds far less.
        let meta = std::fs::metadata(&seed).unwrap();
        assert_eq!(meta.len(), SIZE);
        use std::os::unix::fs::MetadataExt;
        assert!(
            meta.blocks() * 512 < 4 << 20,
            "{} bytes used",
            meta.blocks() * 512
        );
    }
}
