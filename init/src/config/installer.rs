//! The installer's user-data on the boot disk's ESP (source `install`): what an installer
//! medium carried under its signed list, copied by the installer verbatim, with that list
//! and its signature, into [`ESP_DIR`] of the disk it installed (docs/METAL.md).
//!
//! The boot disk is otherwise never a source of user-data: whoever can write the ESP
//! (which Secure Boot does not cover) could put anything there. So these three files count
//! only together, and only when the list's signature verifies with the image's own key
//! (the key in the initramfs that verified this boot's manifest, kept at
//! [`initrd::RUN_PUBLIC_KEY`]) and the user-data's SHA-256 is the list's `user-data` line.
//! Anything else on the ESP is never read. The check happens here, whatever the policy's
//! `signed` says; what the user-data may then change is the policy's, as for every source.
//!
//! The ESP is mounted read-only only while the three files are read, each bounded.

use std::fs;
use std::path::Path;

use crust_format::Digest;
use crust_format::initrd;
use crust_format::install::{ESP_DIR, USER_DATA};
use crust_format::layout::Role;
use crust_format::signature::PublicKey;
use crust_format::sums::{SUMS, SUMS_SIG, Sums};
use gpt::disk::LogicalBlockSize;
use nix::mount::{MntFlags, MsFlags, mount, umount2};

use super::source::{Origin, read_bounded};
use super::trust::Found;
use crate::devnode::{self, Kind};
use crate::disk::{self, BlockDev};

/// Where the ESP is mounted while the files are read.
const MOUNT_POINT: &str = "/run/crust/esp-user-data";
/// The largest user-data read (as for every source).
const MAX_USER_DATA: u64 = super::nocloud::MAX_USER_DATA;
/// The largest list read (an installer's names three files).
const MAX_LIST: u64 = 64 << 10;
/// The largest signature file read (one is 64 bytes; more is refused by length).
const MAX_SIGNATURE: u64 = 1024;

/// The three files as read from the ESP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Files {
    /// `user-data`.
    pub user_data: Vec<u8>,
    /// `SHA256SUMS`, if present.
    pub list: Option<Vec<u8>>,
    /// `SHA256SUMS.sig`, if present.
    pub signature: Option<Vec<u8>>,
}

/// The installer's user-data on the ESP of `boot_disk` (a kernel name): `None` when the
/// ESP holds none (or there is no ESP: a network boot), otherwise the user-data or why it
/// does not count.
pub fn find(boot_disk: &str) -> Option<(Origin, Result<Found, String>)> {
    let esp = esp_of(boot_disk)?;
    let node = esp.node();
    let origin = Origin::Install(node.display().to_string());
    let files = match read(&esp) {
        Ok(files) => files?,
        Err(why) => {
            // Not knowing whether it holds user-data is not a refusal: the next source.
            crate::console::warning(&format!("config: {origin}: {why}"));
            return None;
        }
    };
    let checked = PublicKey::from_bytes(&fs::read(initrd::RUN_PUBLIC_KEY).unwrap_or_default())
        .map_err(|e| {
            format!(
                "the image's key {} is unusable: {e}",
                initrd::RUN_PUBLIC_KEY
            )
        })
        .and_then(|key| verify(&key, files));
    Some((origin, checked.map(Found::bytes)))
}

/// The ESP partition of `boot_disk`, as the kernel shows it.
fn esp_of(boot_disk: &str) -> Option<BlockDev> {
    if boot_disk.is_empty() {
        return None;
    }
    let table =
        disk::read_table(&Path::new("/dev").join(boot_disk), LogicalBlockSize::Lb512).ok()?;
    let (&number, _) = table.iter().find(|(_, p)| {
        p.part_type_guid.guid == Role::Esp.type_guid() && p.name == Role::Esp.label()
    })?;
    disk::partitions(boot_disk).remove(&number)
}

/// Mounts the ESP read-only and reads the three files; `Ok(None)` when it has no
/// `user-data` in [`ESP_DIR`].
fn read(esp: &BlockDev) -> Result<Option<Files>, String> {
    let node = esp.node();
    devnode::ensure(
        &node,
        Kind::Block,
        esp.dev,
        std::time::Duration::from_millis(200),
    )
    .map_err(|e| format!("cannot create {}: {e}", node.display()))?;
    let target = Path::new(MOUNT_POINT);
    fs::create_dir_all(target).map_err(|e| format!("cannot create {MOUNT_POINT}: {e}"))?;
    let flags = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(Some(&node), target, Some("vfat"), flags, None::<&str>).map_err(|e| {
        format!(
            "cannot mount the ESP {} (vfat) read-only: {}",
            node.display(),
            e.desc()
        )
    })?;
    let dir = target.join(ESP_DIR);
    let read = read_bounded(
        &dir.join(USER_DATA),
        &format!("{ESP_DIR}/{USER_DATA}"),
        MAX_USER_DATA,
    )
    .and_then(|user_data| {
        let Some(user_data) = user_data else {
            return Ok(None);
        };
        Ok(Some(Files {
            user_data,
            list: read_bounded(&dir.join(SUMS), &format!("{ESP_DIR}/{SUMS}"), MAX_LIST)?,
            signature: read_bounded(
                &dir.join(SUMS_SIG),
                &format!("{ESP_DIR}/{SUMS_SIG}"),
                MAX_SIGNATURE,
            )?,
        }))
    });
    let _ = umount2(target, MntFlags::MNT_DETACH);
    let _ = fs::remove_dir(target);
    read
}

/// The user-data, if the list's signature verifies with `key` (the image's) and the list
/// gives the user-data's digest; otherwise why not, naming the file.
pub fn verify(key: &PublicKey, files: Files) -> Result<Vec<u8>, String> {
    let advice = "the installer writes these files; install again to replace them";
    let (Some(list), Some(signature)) = (&files.list, &files.signature) else {
        let missing = if files.list.is_none() { SUMS } else { SUMS_SIG };
        return Err(format!(
            "{ESP_DIR}/{missing} is missing, and user-data on the boot disk counts only under \
             the installer medium's signed list; {advice}"
        ));
    };
    key.verify(list, signature).map_err(|e| {
        format!(
            "{ESP_DIR}/{SUMS} is not signed by the image's key {} ({e}); {advice}",
            key.fingerprint()
        )
    })?;
    let sums = Sums::parse(list).map_err(|e| format!("{ESP_DIR}/{SUMS} is signed but {e}"))?;
    let want = sums
        .get(USER_DATA)
        .ok_or_else(|| format!("{ESP_DIR}/{SUMS} does not list {USER_DATA}; {advice}"))?;
    let found = Digest::of(&files.user_data);
    if &found != want {
        return Err(format!(
            "{ESP_DIR}/{USER_DATA} does not match the signed list (expected {}, found {}): it \
             was changed after the installer wrote it; {advice}",
            want.to_hex(),
            found.to_hex()
        ));
    }
    Ok(files.user_data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    const DATA: &[u8] = b"version = 1\nhostname = \"installed\"\n";

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn public(seed: u8) -> PublicKey {
        PublicKey::from_verifying_key(key(seed).verifying_key())
    }

    /// The files as an installer medium signed by `seed` carries them for `data`.
    fn medium(seed: u8, data: &[u8]) -> Files {
        let mut sums = Sums::default();
        sums.insert("image.raw", Digest::of(b"image"));
        sums.insert(USER_DATA, Digest::of(data));
        let list = sums.to_text().into_bytes();
        let signature = key(seed).sign(&list).to_bytes().to_vec();
        Files {
            user_data: data.to_vec(),
            list: Some(list),
            signature: Some(signature),
        }
    }

    #[test]
    fn user_data_under_the_image_keys_list_counts() {
        assert_eq!(verify(&public(1), medium(1, DATA)).unwrap(), DATA);
    }

    #[test]
    fn a_changed_byte_is_refused_by_name() {
        let mut files = medium(1, DATA);
        files.user_data[20] ^= 1;
        let err = verify(&public(1), files).unwrap_err();
        assert!(
            err.starts_with("EFI/crust/install/user-data does not match the signed list"),
            "{err}"
        );
        assert!(
            err.contains("changed after the installer wrote it"),
            "{err}"
        );
    }

    #[test]
    fn another_key_or_a_changed_list_is_refused() {
        let err = verify(&public(1), medium(2, DATA)).unwrap_err();
        assert!(
            err.starts_with("EFI/crust/install/SHA256SUMS is not signed by the image's key"),
            "{err}"
        );
        // A list rewritten to match changed user-data no longer carries the signature.
        let evil = b"version = 1\nhostname = \"evil\"\n";
        let mut files = medium(1, DATA);
        files.user_data = evil.to_vec();
        files.list = medium(1, evil).list;
        assert!(
            verify(&public(1), files)
                .unwrap_err()
                .contains("is not signed by the image's key")
        );
    }

    #[test]
    fn user_data_without_its_list_or_signature_is_refused() {
        let mut files = medium(1, DATA);
        files.signature = None;
        let err = verify(&public(1), files).unwrap_err();
        assert!(
            err.starts_with("EFI/crust/install/SHA256SUMS.sig is missing"),
            "{err}"
        );
        let mut files = medium(1, DATA);
        files.list = None;
        assert!(
            verify(&public(1), files)
                .unwrap_err()
                .starts_with("EFI/crust/install/SHA256SUMS is missing")
        );
        let mut files = medium(1, DATA);
        files.signature = Some(vec![0; 12]);
        assert!(verify(&public(1), files).is_err());
    }

    #[test]
    fn a_signed_list_that_does_not_name_user_data_is_refused() {
        // The release's own list (signed by the same key) names no user-data.
        let mut sums = Sums::default();
        sums.insert("image.raw", Digest::of(b"image"));
        let list = sums.to_text().into_bytes();
        let files = Files {
            user_data: DATA.to_vec(),
            signature: Some(key(1).sign(&list).to_bytes().to_vec()),
            list: Some(list),
        };
        let err = verify(&public(1), files).unwrap_err();
        assert!(err.contains("does not list user-data"), "{err}");
    }
}
