//! EFI signature lists (UEFI 2.10 §32.4.1) and signed variable updates (`.auth`, §8.2.2).
//!
//! A signature list holding one X.509 certificate is a 28-byte header (the
//! `EFI_CERT_X509_GUID` type, the list size, no extra header, the entry size) and one entry:
//! the owner GUID and the DER certificate. It is simple enough to write here, and checked
//! against efitools' `cert-to-efi-sig-list`. A signed update is the
//! `EFI_VARIABLE_AUTHENTICATION_2` header (a time stamp and a PKCS#7 signature over the
//! variable's name, GUID, attributes, that time stamp and the list) followed by the list;
//! that one is made by efitools' `sign-efi-sig-list`, the tool Secure Boot guides use, with
//! the time stamp given so the result depends on nothing else.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use crust_format::utc::UtcTime;
use uuid::Uuid;

use super::keys::Role;

/// `EFI_CERT_X509_GUID`: the list holds DER certificates.
pub const CERT_X509: Uuid = uuid::uuid!("a5c059a1-94e4-4aa7-87b5-ab155c2bf072");
/// `EFI_GLOBAL_VARIABLE`: the vendor of `PK` and `KEK`.
pub const GLOBAL_VARIABLE: Uuid = uuid::uuid!("8be4df61-93ca-11d2-aa0d-00e098032b8c");
/// `EFI_IMAGE_SECURITY_DATABASE_GUID`: the vendor of `db`.
pub const IMAGE_SECURITY_DATABASE: Uuid = uuid::uuid!("d719b2cb-3d3a-4596-a3bc-dad00e67656f");
/// Non-volatile, boot-service and runtime access, time-based authenticated writes.
pub const ATTRIBUTES: u32 = 0x1 | 0x2 | 0x4 | 0x20;

/// The vendor GUID of a role's variable.
pub fn vendor(role: Role) -> Uuid {
    match role {
        Role::Pk | Role::Kek => GLOBAL_VARIABLE,
        Role::Db => IMAGE_SECURITY_DATABASE,
    }
}

/// A signature list holding the DER certificate `der`, owned by `owner`.
pub fn signature_list(owner: Uuid, der: &[u8]) -> Vec<u8> {
    let entry = 16 + der.len();
    let total = 28 + entry;
    let mut list = Vec::with_capacity(total);
    list.extend_from_slice(&CERT_X509.to_bytes_le());
    // A certificate is far below 4 GiB; `as` cannot truncate these.
    list.extend_from_slice(&(total as u32).to_le_bytes());
    list.extend_from_slice(&0u32.to_le_bytes());
    list.extend_from_slice(&(entry as u32).to_le_bytes());
    list.extend_from_slice(&owner.to_bytes_le());
    list.extend_from_slice(der);
    list
}

/// The signature list at `list` signed as an update of `role`'s variable, stamped `time`
/// (seconds since 1970, UTC), with the private key and certificate in `signer`.
pub fn signed_update(
    role: Role,
    list: &Path,
    owner: Uuid,
    time: u64,
    signer: (&Path, &Path),
) -> Result<Vec<u8>> {
    let dir = tempfile::tempdir().context("cannot make a temporary folder")?;
    let out = dir.path().join("update.auth");
    let output = Command::new("sign-efi-sig-list")
        // It reads the time stamp as local time: make local time UTC.
        .env("TZ", "UTC")
        .args(["-t", &efi_time_text(time), "-g", &owner.to_string(), "-k"])
        .arg(signer.0)
        .arg("-c")
        .arg(signer.1)
        .arg(role.variable())
        .arg(list)
        .arg(&out)
        .output()
        .context("cannot run sign-efi-sig-list: install Debian's efitools package")?;
    if !output.status.success() {
        bail!(
            "sign-efi-sig-list could not sign the {} update: {}",
            role.variable(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    std::fs::read(&out).with_context(|| format!("cannot read {}", out.display()))
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) for `sign-efi-sig-list -t`.
pub fn efi_time_text(secs: u64) -> String {
    let t = UtcTime::from_unix(i64::try_from(secs).unwrap_or(i64::MAX));
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        t.year, t.month, t.day, t.hour, t.minute, t.second
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secureboot::keys::generate_at;

    #[test]
    fn efi_times() {
        assert_eq!(efi_time_text(0), "1970-01-01 00:00:00");
        assert_eq!(efi_time_text(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(efi_time_text(1_795_902_102), "2026-11-28 21:41:42");
    }

    /// DER length octets.
    fn der_len(n: usize) -> Vec<u8> {
        match n {
            0..=0x7f => vec![n as u8],
            0x80..=0xff => vec![0x81, n as u8],
            _ => vec![0x82, (n >> 8) as u8, n as u8],
        }
    }

    #[test]
    fn lists_equal_efitools_and_updates_verify_with_openssl() {
        let dir = tempfile::tempdir().unwrap();
        let time = 1_700_000_000;
        let keys = generate_at(&dir.path().join("sb"), "Test", time).unwrap();
        for role in Role::ALL {
            // The list, against efitools' own.
            let theirs = dir.path().join(format!("{}.esl", role.variable()));
            let out = Command::new("cert-to-efi-sig-list")
                .args(["-g", &keys.owner().to_string()])
                .arg(keys.certificate(role))
                .arg(&theirs)
                .output()
                .expect("cert-to-efi-sig-list (efitools)");
            assert!(out.status.success());
            let list = std::fs::read(keys.signature_list(role)).unwrap();
            assert_eq!(list, std::fs::read(&theirs).unwrap(), "{role:?}");

            // The update: EFI_TIME, WIN_CERTIFICATE_UEFI_GUID with a PKCS#7 SignedData,
            // then the list.
            let auth = std::fs::read(keys.update(role)).unwrap();
            let stamp = &auth[..16];
            assert_eq!(u16::from_le_bytes([stamp[0], stamp[1]]), 2023);
            assert_eq!(&stamp[2..7], &[11, 14, 22, 13, 20], "2023-11-14 22:13:20");
            let length = u32::from_le_bytes(auth[16..20].try_into().unwrap()) as usize;
            assert_eq!(&auth[20..22], &0x0200u16.to_le_bytes(), "revision");
            assert_eq!(
                &auth[22..24],
                &0x0ef1u16.to_le_bytes(),
                "WIN_CERT_TYPE_EFI_GUID"
            );
            assert_eq!(
                &auth[24..40],
                &uuid::uuid!("4aafd29d-68df-49ee-8aa9-347d375665a7").to_bytes_le(),
                "EFI_CERT_TYPE_PKCS7_GUID"
            );
            let signed_data = &auth[40..16 + length];
            assert_eq!(&auth[16 + length..], list.as_slice());

            // openssl checks the signature over name ‖ vendor ‖ attributes ‖ time ‖ list,
            // made by the role's update signer (PK for PK and KEK, KEK for db).
            let mut content: Vec<u8> = role
                .variable()
                .encode_utf16()
                .flat_map(u16::to_le_bytes)
                .collect();
            content.extend_from_slice(&vendor(role).to_bytes_le());
            content.extend_from_slice(&ATTRIBUTES.to_le_bytes());
            content.extend_from_slice(stamp);
            content.extend_from_slice(&list);
            let oid = [
                0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02,
            ];
            let mut explicit = vec![0xa0];
            explicit.extend(der_len(signed_data.len()));
            explicit.extend_from_slice(signed_data);
            let mut info = vec![0x30];
            info.extend(der_len(oid.len() + explicit.len()));
            info.extend_from_slice(&oid);
            info.extend(explicit);
            let p7 = dir.path().join("update.p7");
            let data = dir.path().join("update.data");
            std::fs::write(&p7, &info).unwrap();
            std::fs::write(&data, &content).unwrap();
            let verify = |ca: &Path| {
                Command::new("openssl")
                    .args([
                        "cms", "-verify", "-binary", "-inform", "DER", "-purpose", "any",
                    ])
                    .arg("-in")
                    .arg(&p7)
                    .arg("-content")
                    .arg(&data)
                    .arg("-CAfile")
                    .arg(ca)
                    .args(["-out", "/dev/null"])
                    .output()
                    .unwrap()
            };
            let signer = keys.certificate(role.update_signer());
            let ok = verify(&signer);
            assert!(
                ok.status.success(),
                "{role:?}: {}",
                String::from_utf8_lossy(&ok.stderr)
            );
            let other = if role.update_signer() == Role::Db {
                Role::Pk
            } else {
                Role::Db
            };
            assert!(
                !verify(&keys.certificate(other)).status.success(),
                "{role:?} verified against the wrong key"
            );
        }
    }
}
