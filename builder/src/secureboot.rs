//! Secure Boot with the user's own keys: the PK/KEK/db key set, Authenticode signatures on
//! systemd-boot and the UKIs, and what a machine needs to trust them.
//!
//! The chain: the firmware trusts the certificates in its `db` variable; with the db key a
//! build signs `BOOTX64.EFI` (systemd-boot) and every UKI after all its sections are added,
//! so the firmware runs only those, and the UKI's signature covers the kernel, the
//! initramfs (the init, the signed manifest and the public key that checks it) and the
//! command line. From there the init's manifest check and dm-verity take over. `KEK` signs
//! changes of `db`, `PK` changes of `KEK` and of itself; neither signs anything a build
//! makes, so both private keys can stay offline (docs/SECURE-BOOT.md).
//!
//! The modules, in the order a key set is used:
//!
//! - [`keys`]: making a key set (`cargo xtask keygen --secure-boot`) and opening one;
//! - [`lists`]: EFI signature lists and the signed variable updates (`.auth`) made from
//!   them once, at key generation, which systemd-boot enrols on a machine in setup mode;
//! - [`authenticode`]: signing a PE image with the db key, deterministically;
//! - [`aws`]: the UEFI variable store an AMI is registered with (`UefiData`).
//!
//! Every tool is Debian's or PyPI's, never re-implemented where a signature is involved:
//! `openssl` makes the keys, `sign-efi-sig-list` (efitools) the `.auth` files,
//! `osslsigncode` the Authenticode signatures, AWS's `uefivars` the AMI's variable store.

pub mod authenticode;
pub mod aws;
pub mod keys;
pub mod lists;

pub use authenticode::{Signer, sign_pe};
pub use keys::{KeySet, Role, generate};

use serde::Deserialize;

/// Where on the ESP the enrolment files go: systemd-boot offers each folder of
/// `/loader/keys/` in its menu on a machine in setup mode, and enrols the one named `auto`
/// by itself when `loader.conf` says `secure-boot-enroll force`.
pub const ENROLL_DIR: &str = "loader/keys/auto";

/// What systemd-boot does with the key set on a machine in setup mode (`loader.conf`'s
/// `secure-boot-enroll`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Enroll {
    /// Nothing: the keys are not put on the ESP; they are enrolled another way (the
    /// firmware's setup screens, a cloud's variable store).
    Off,
    /// A menu entry "Enroll Secure Boot keys: auto" that someone has to choose (the menu
    /// shows when a key is held at boot).
    #[default]
    Manual,
    /// Enrol without asking, after a 15-second countdown, then reboot. Safe on virtual
    /// machines; on hardware whose option ROMs are signed by Microsoft's keys, which this
    /// key set does not hold, it can leave the machine without a working display or disk.
    Force,
}

impl Enroll {
    /// The value in `loader.conf`.
    pub fn loader_conf_value(self) -> &'static str {
        match self {
            Enroll::Off => "off",
            Enroll::Manual => "manual",
            Enroll::Force => "force",
        }
    }
}

/// The signed variable updates systemd-boot enrols, as they go on the ESP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrolment {
    /// `secure-boot-enroll` in `loader.conf`.
    pub mode: Enroll,
    /// `PK.auth`, `KEK.auth` and `db.auth`, in that order.
    pub updates: Vec<(Role, Vec<u8>)>,
}

impl Enrolment {
    /// The files under [`ENROLL_DIR`], path and content; none when `mode` is [`Enroll::Off`].
    pub fn files(&self) -> Vec<(String, &[u8])> {
        if self.mode == Enroll::Off {
            return Vec::new();
        }
        self.updates
            .iter()
            .map(|(role, data)| {
                (
                    format!("{ENROLL_DIR}/{}.auth", role.variable()),
                    data.as_slice(),
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enrolment_files_go_to_the_auto_folder_unless_enrolment_is_off() {
        let updates = Role::ALL.map(|r| (r, r.variable().as_bytes().to_vec()));
        let mut enrolment = Enrolment {
            mode: Enroll::Force,
            updates: updates.to_vec(),
        };
        let files: Vec<(String, Vec<u8>)> = enrolment
            .files()
            .into_iter()
            .map(|(p, d)| (p, d.to_vec()))
            .collect();
        assert_eq!(
            files,
            [
                ("loader/keys/auto/PK.auth".to_owned(), b"PK".to_vec()),
                ("loader/keys/auto/KEK.auth".to_owned(), b"KEK".to_vec()),
                ("loader/keys/auto/db.auth".to_owned(), b"db".to_vec()),
            ]
        );
        assert_eq!(enrolment.mode.loader_conf_value(), "force");
        enrolment.mode = Enroll::Off;
        assert!(enrolment.files().is_empty());
        assert_eq!(Enroll::default(), Enroll::Manual);
    }
}
