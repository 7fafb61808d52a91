//! What systemd-boot tells the OS through EFI variables (the Boot Loader Interface):
//! which partition it was loaded from, and which entry it booted.

use std::io;
use std::path::Path;

use nix::mount::MsFlags;
use uuid::Uuid;

use crate::error::Result;
use crate::mounts::{self, Mount};

/// Present when the kernel was started by UEFI firmware.
pub const EFI_DIR: &str = "/sys/firmware/efi";
/// Where efivarfs goes.
pub const EFIVARS: &str = "/sys/firmware/efi/efivars";
pub use crust_format::boot_entry::{
    LOADER_DEVICE_PART_UUID, LOADER_ENTRY_SELECTED, LOADER_VENDOR_GUID as LOADER_VENDOR,
};

/// Whether the machine booted through UEFI.
pub fn booted_with_efi() -> bool {
    Path::new(EFI_DIR).is_dir()
}

/// Mounts efivarfs (read-only: stage 1 only reads). Fails if the kernel lacks efivarfs.
pub fn mount_efivarfs() -> Result<()> {
    mounts::mount_once(&Mount {
        source: "efivarfs",
        target: EFIVARS,
        fstype: "efivarfs",
        flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY,
        data: None,
    })
    .map(drop)
}

/// Reads one of systemd-boot's string variables; `None` if it is not set.
pub fn read_loader_string(name: &str) -> io::Result<Option<String>> {
    let path = Path::new(EFIVARS).join(format!("{name}-{LOADER_VENDOR}"));
    match std::fs::read(path) {
        Ok(bytes) => decode_string(&bytes)
            .map(Some)
            .ok_or_else(|| io::Error::other(format!("{name} is not a UTF-16 string"))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Reads `LoaderDevicePartUUID`: the ESP the boot loader came from.
pub fn loader_device_part_uuid() -> io::Result<Option<Uuid>> {
    read_loader_string(LOADER_DEVICE_PART_UUID)?
        .map(|s| {
            Uuid::parse_str(s.trim()).map_err(|_| {
                io::Error::other(format!("{LOADER_DEVICE_PART_UUID} {s:?} is not a UUID"))
            })
        })
        .transpose()
}

/// Decodes an efivarfs file holding a string: 4 bytes of attributes, then UTF-16LE text,
/// usually NUL-terminated.
pub fn decode_string(file: &[u8]) -> Option<String> {
    let data = file.get(4..)?;
    if data.len() % 2 != 0 {
        return None;
    }
    let units: Vec<u16> = data
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    String::from_utf16(&units).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn efivar(text: &str, nul: bool) -> Vec<u8> {
        let mut v = vec![0x06, 0, 0, 0]; // boot service + runtime access
        for u in text.encode_utf16() {
            v.extend_from_slice(&u.to_le_bytes());
        }
        if nul {
            v.extend_from_slice(&[0, 0]);
        }
        v
    }

    #[test]
    fn decodes_with_and_without_terminator() {
        let s = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
        assert_eq!(decode_string(&efivar(s, true)).as_deref(), Some(s));
        assert_eq!(decode_string(&efivar(s, false)).as_deref(), Some(s));
        assert_eq!(decode_string(&efivar("", true)).as_deref(), Some(""));
    }

    #[test]
    fn refuses_truncated_files() {
        assert_eq!(decode_string(&[6, 0, 0]), None);
        assert_eq!(decode_string(&[6, 0, 0, 0, b'a']), None);
        // A lone surrogate is not text.
        assert_eq!(decode_string(&[6, 0, 0, 0, 0x00, 0xd8]), None);
    }

    #[test]
    fn uuids_parse_in_either_case() {
        let upper = decode_string(&efivar("1F2E3D4C-5B6A-4978-8695-A4B3C2D1E0F9", true)).unwrap();
        let lower = upper.to_lowercase();
        assert_eq!(
            Uuid::parse_str(&upper).unwrap(),
            Uuid::parse_str(&lower).unwrap()
        );
    }
}
