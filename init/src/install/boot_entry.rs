//! Making the firmware boot the installed disk: an EFI load option `Boot####` for the new
//! ESP's removable-media loader (`\EFI\BOOT\BOOTX64.EFI`, systemd-boot), put first in
//! `BootOrder` and named in `BootNext`, written through efivarfs.
//!
//! The option's device path is the short form the UEFI specification allows (§3.1.2): a
//! hard-drive node naming the partition by its GPT GUID, then the file. Firmware expands
//! it by finding the partition with that GUID on any disk, so the entry does not depend
//! on the controller the disk hangs off.

use std::fs;

use nix::mount::{MsFlags, mount};

use super::write::Esp;
use crate::efivar::{EFIVARS, booted_with_efi};

/// The EFI global variable vendor GUID (`Boot####`, `BootOrder`, `BootNext`).
pub const EFI_GLOBAL: &str = "8be4df61-93ca-11d2-aa0d-00e098032b8c";
/// Non-volatile, boot-service and runtime access.
const ATTRIBUTES: u32 = 0x7;
/// `LOAD_OPTION_ACTIVE`.
const LOAD_OPTION_ACTIVE: u32 = 0x1;
/// The entry's description in the firmware's boot menu.
pub const DESCRIPTION: &str = "Crust";
/// The loader the entry starts.
pub const LOADER: &str = "\\EFI\\BOOT\\BOOTX64.EFI";

/// The `EFI_LOAD_OPTION` for `file` on the partition `esp`.
pub fn load_option(description: &str, esp: &Esp, file: &str) -> Vec<u8> {
    let mut path = Vec::new();
    // Media device path, hard drive (type 4, subtype 1, 42 bytes).
    path.extend_from_slice(&[0x04, 0x01, 42, 0]);
    path.extend_from_slice(&esp.number.to_le_bytes());
    path.extend_from_slice(&esp.first_lba.to_le_bytes());
    path.extend_from_slice(&esp.sectors.to_le_bytes());
    path.extend_from_slice(&esp.partuuid.to_bytes_le());
    path.extend_from_slice(&[0x02, 0x02]); // GPT, GUID signature
    // Media device path, file path (type 4, subtype 4): UTF-16, NUL-terminated.
    let name = utf16z(file);
    let len = u16::try_from(4 + name.len()).unwrap_or(u16::MAX);
    path.extend_from_slice(&[0x04, 0x04]);
    path.extend_from_slice(&len.to_le_bytes());
    path.extend_from_slice(&name);
    // End of the whole device path.
    path.extend_from_slice(&[0x7F, 0xFF, 0x04, 0x00]);

    let mut option = Vec::new();
    option.extend_from_slice(&LOAD_OPTION_ACTIVE.to_le_bytes());
    option.extend_from_slice(&u16::try_from(path.len()).unwrap_or(u16::MAX).to_le_bytes());
    option.extend_from_slice(&utf16z(description));
    option.extend_from_slice(&path);
    option
}

fn utf16z(s: &str) -> Vec<u8> {
    s.encode_utf16()
        .chain(std::iter::once(0))
        .flat_map(u16::to_le_bytes)
        .collect()
}

/// The `BootOrder` with `first` in front (and nowhere else).
pub fn boot_order(old: &[u8], first: u16) -> Vec<u8> {
    std::iter::once(first)
        .chain(
            old.chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .filter(|&n| n != first),
        )
        .flat_map(u16::to_le_bytes)
        .collect()
}

/// The lowest `Boot####` number not in `taken`, or the one whose option is `option`.
pub fn pick_number(existing: &[(u16, Vec<u8>)], option: &[u8]) -> Option<u16> {
    if let Some((n, _)) = existing.iter().find(|(_, o)| o == option) {
        return Some(*n);
    }
    (0..=u16::MAX).find(|n| !existing.iter().any(|(t, _)| t == n))
}

/// Whether a load option's device path goes through a network node (MAC address, IPv4,
/// IPv6 or URI: UEFI PXE and HTTP boot), as the firmware's network boot options do.
pub fn load_option_is_network(option: &[u8]) -> bool {
    let Some(path_len) = option
        .get(4..6)
        .map(|b| usize::from(u16::from_le_bytes([b[0], b[1]])))
    else {
        return false;
    };
    // The description: UTF-16, NUL-terminated, after the 6-byte header.
    let mut at = 6;
    while let Some(unit) = option.get(at..at + 2) {
        at += 2;
        if unit == [0, 0] {
            break;
        }
    }
    let Some(mut path) = option.get(at..at + path_len) else {
        return false;
    };
    while path.len() >= 4 {
        let (kind, subtype) = (path[0], path[1]);
        let len = usize::from(u16::from_le_bytes([path[2], path[3]]));
        if kind == 0x7F || len < 4 || len > path.len() {
            return false;
        }
        // Messaging device path: MAC (11), IPv4 (12), IPv6 (13), URI (24).
        if kind == 0x03 && matches!(subtype, 11 | 12 | 13 | 24) {
            return true;
        }
        path = &path[len..];
    }
    false
}

/// Whether the firmware started this boot from the network (`BootCurrent`'s option).
pub fn booted_from_network() -> bool {
    if !booted_with_efi() || crate::efivar::mount_efivarfs().is_err() {
        return false;
    }
    let Some(current) = read_var("BootCurrent").filter(|v| v.len() == 2) else {
        return false;
    };
    let number = u16::from_le_bytes([current[0], current[1]]);
    read_var(&format!("Boot{number:04X}")).is_some_and(|o| load_option_is_network(&o))
}

fn var_path(name: &str) -> String {
    format!("{EFIVARS}/{name}-{EFI_GLOBAL}")
}

fn read_var(name: &str) -> Option<Vec<u8>> {
    fs::read(var_path(name))
        .ok()
        .map(|b| b.get(4..).unwrap_or_default().to_vec())
}

fn write_var(name: &str, data: &[u8]) -> std::io::Result<()> {
    let mut bytes = ATTRIBUTES.to_le_bytes().to_vec();
    bytes.extend_from_slice(data);
    // efivarfs takes a variable in one write(2): attributes, then the data.
    fs::write(var_path(name), bytes)
}

/// Adds (or reuses) the boot entry for `esp`, puts it first in `BootOrder` and sets
/// `BootNext`; returns its number.
pub fn boot_next(esp: &Esp) -> Result<u16, String> {
    if !booted_with_efi() {
        return Err("the machine did not boot through UEFI".into());
    }
    // Read-write: stage 1's own mount (when there is one) is read-only.
    let rw = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let mounted = mount(
        Some("efivarfs"),
        EFIVARS,
        Some("efivarfs"),
        rw,
        None::<&str>,
    )
    .or_else(|_| {
        mount(
            None::<&str>,
            EFIVARS,
            None::<&str>,
            rw | MsFlags::MS_REMOUNT,
            None::<&str>,
        )
    });
    mounted.map_err(|e| {
        format!(
            "cannot mount efivarfs read-write on {EFIVARS}: {}",
            e.desc()
        )
    })?;

    let option = load_option(DESCRIPTION, esp, LOADER);
    let existing: Vec<(u16, Vec<u8>)> = fs::read_dir(EFIVARS)
        .map_err(|e| format!("cannot list {EFIVARS}: {e}"))?
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            let number = name
                .strip_suffix(&format!("-{EFI_GLOBAL}"))?
                .strip_prefix("Boot")
                .filter(|n| n.len() == 4)?;
            let number = u16::from_str_radix(number, 16).ok()?;
            Some((number, read_var(&format!("Boot{number:04X}"))?))
        })
        .collect();
    let number = pick_number(&existing, &option).ok_or("every Boot#### number is taken")?;
    let name = format!("Boot{number:04X}");
    write_var(&name, &option).map_err(|e| format!("cannot write {name}: {e}"))?;
    let order = boot_order(&read_var("BootOrder").unwrap_or_default(), number);
    write_var("BootOrder", &order).map_err(|e| format!("cannot write BootOrder: {e}"))?;
    write_var("BootNext", &number.to_le_bytes())
        .map_err(|e| format!("cannot write BootNext: {e}"))?;
    Ok(number)
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[test]
    fn the_load_option_is_laid_out_as_uefi_says() {
        let esp = Esp {
            number: 1,
            first_lba: 2048,
            sectors: 1_048_576,
            partuuid: Uuid::parse_str("01234567-89ab-cdef-0123-456789abcdef").unwrap(),
        };
        let o = load_option("Crust", &esp, LOADER);
        assert_eq!(&o[..4], &[1, 0, 0, 0]);
        let path_len = u16::from_le_bytes([o[4], o[5]]) as usize;
        let desc_len = 2 * ("Crust".len() + 1);
        assert_eq!(o.len(), 6 + desc_len + path_len);
        let path = &o[6 + desc_len..];
        assert_eq!(&path[..4], &[4, 1, 42, 0]);
        assert_eq!(u32::from_le_bytes(path[4..8].try_into().unwrap()), 1);
        assert_eq!(u64::from_le_bytes(path[8..16].try_into().unwrap()), 2048);
        // The GUID in the mixed-endian order of EFI_GUID.
        assert_eq!(&path[24..28], &[0x67, 0x45, 0x23, 0x01]);
        assert_eq!(&path[40..42], &[2, 2]);
        assert_eq!(&path[42..44], &[4, 4]);
        assert_eq!(&path[path_len - 4..], &[0x7F, 0xFF, 4, 0]);
    }

    #[test]
    fn network_boot_options_are_told_apart() {
        let esp = Esp {
            number: 1,
            first_lba: 2048,
            sectors: 8,
            partuuid: Uuid::nil(),
        };
        assert!(!load_option_is_network(&load_option("Crust", &esp, LOADER)));
        // OVMF's "UEFI PXEv4": PciRoot/Pci/MAC/IPv4.
        let mut path = vec![0x02, 0x01, 12, 0, 0xD0, 0x41, 0x03, 0x0A, 0, 0, 0, 0];
        path.extend_from_slice(&[0x01, 0x01, 6, 0, 0, 1]);
        let mut mac = vec![0x03, 11, 37, 0];
        mac.extend_from_slice(&[0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        mac.resize(37, 0);
        mac[36] = 1;
        path.extend_from_slice(&mac);
        path.extend_from_slice(&[0x7F, 0xFF, 4, 0]);
        let mut option = 1u32.to_le_bytes().to_vec();
        option.extend_from_slice(&(path.len() as u16).to_le_bytes());
        option.extend_from_slice(&utf16z("UEFI PXEv4"));
        option.extend_from_slice(&path);
        assert!(load_option_is_network(&option));
        assert!(!load_option_is_network(&option[..10]));
    }

    #[test]
    fn boot_order_puts_the_entry_first_once() {
        assert_eq!(boot_order(&[1, 0, 0, 0, 3, 0], 3), vec![3, 0, 1, 0, 0, 0]);
        assert_eq!(boot_order(&[], 7), vec![7, 0]);
        let existing = vec![(0, vec![1]), (1, vec![2]), (3, vec![9])];
        assert_eq!(pick_number(&existing, &[5]), Some(2));
        assert_eq!(pick_number(&existing, &[9]), Some(3));
    }
}
