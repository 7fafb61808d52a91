//! Unified kernel images: systemd's EFI stub with the kernel, initramfs, command line and
//! os-release appended as PE sections.
//!
//! No crate assembles UKIs and `ukify` is not packaged for Debian 12, so this module appends
//! sections itself (the alternative, `objcopy --add-section` with hand-picked VMAs, needs
//! the same arithmetic and a host tool). `object` parses and validates the stub; the new
//! section headers go into the free space after the stub's section table, their data right
//! after the stub's last section at `FileAlignment`, their addresses after the stub's last
//! section, page-aligned. The PE checksum is zeroed (UEFI does not check it; a Secure Boot
//! signer recomputes it), so the result is a deterministic function of its inputs.
//!
//! Whatever the stub's file holds after its last section is dropped: Debian's stub ends
//! with a COFF symbol table (which no loader reads), and a signed stub with its signature.
//! Left in place, it would sit in a gap between the stub's sections and ours, and
//! Authenticode implementations hash such gaps differently: `osslsigncode` signs what
//! `sbverify` then rejects. With no gaps every implementation, the firmware's among them,
//! hashes the same bytes ([`crate::secureboot`]).

use anyhow::{Context, Result, bail};
use object::LittleEndian as LE;
use object::pe::{
    IMAGE_DIRECTORY_ENTRY_SECURITY, IMAGE_FILE_MACHINE_AMD64, IMAGE_SCN_CNT_INITIALIZED_DATA,
    IMAGE_SCN_MEM_READ, ImageDosHeader, ImageNtHeaders64,
};
use object::read::pe::ImageNtHeaders;

/// The parts of a UKI, in the order their sections are added (`.linux` last, as ukify does).
#[derive(Debug, Clone, Copy)]
pub struct Parts<'a> {
    /// os-release of the image (systemd-boot shows and sorts entries by it).
    pub os_release: &'a str,
    /// The kernel command line.
    pub cmdline: &'a str,
    /// The kernel release (`uname -r`).
    pub uname: &'a str,
    /// The compressed initramfs.
    pub initrd: &'a [u8],
    /// The kernel bzImage.
    pub linux: &'a [u8],
    /// The public key whose signatures of PCR 11 policies unseal the state's key (PEM);
    /// systemd's stub measures it into PCR 11 ([`crate::measure`]).
    pub pcrpkey: Option<&'a [u8]>,
    /// The signed PCR 11 policy (systemd's JSON); not measured.
    pub pcrsig: Option<&'a [u8]>,
}

const SECTION_HEADER_SIZE: usize = 40;
const PAGE: u32 = 4096;

fn align(value: u32, to: u32) -> u32 {
    value.div_ceil(to) * to
}

fn put_u16(buf: &mut [u8], at: usize, v: u16) {
    buf[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn put_u32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// Appends the parts to `stub` (systemd's `linuxx64.efi.stub`) and returns the UKI.
pub fn assemble(stub: &[u8], parts: &Parts<'_>) -> Result<Vec<u8>> {
    let dos = ImageDosHeader::parse(stub).context("the UKI stub is not a PE file")?;
    let nt_offset = u64::from(dos.nt_headers_offset());
    let mut offset = nt_offset;
    let (nt, _) =
        ImageNtHeaders64::parse(stub, &mut offset).context("the UKI stub is not a PE32+ image")?;
    if nt.file_header.machine.get(LE) != IMAGE_FILE_MACHINE_AMD64 {
        bail!("the UKI stub is not an x86-64 image");
    }
    let sections = nt
        .sections(stub, offset)
        .context("bad section table in the UKI stub")?;
    let table_offset = offset as usize;
    let file_header_offset = nt_offset as usize + 4;
    let optional_offset = file_header_offset + 20;
    let opt = &nt.optional_header;
    let section_alignment = opt.section_alignment.get(LE).max(PAGE);
    let file_alignment = opt.file_alignment.get(LE);
    let size_of_headers = opt.size_of_headers.get(LE) as usize;
    let count = sections.len();

    let mut new: Vec<(&[u8; 8], &[u8])> = vec![
        (b".osrel\0\0", parts.os_release.as_bytes()),
        (b".cmdline", parts.cmdline.as_bytes()),
        (b".uname\0\0", parts.uname.as_bytes()),
    ];
    if let Some(key) = parts.pcrpkey {
        new.push((b".pcrpkey", key));
    }
    if let Some(sig) = parts.pcrsig {
        new.push((b".pcrsig\0", sig));
    }
    new.push((b".initrd\0", parts.initrd));
    new.push((b".linux\0\0", parts.linux));
    for (name, _) in &new {
        if sections.iter().any(|s| &s.name == *name) {
            bail!(
                "the UKI stub already has a {} section",
                String::from_utf8_lossy(*name)
            );
        }
    }
    let table_end = table_offset + count * SECTION_HEADER_SIZE;
    if table_end + new.len() * SECTION_HEADER_SIZE > size_of_headers {
        bail!(
            "the UKI stub has no room for {} more section headers (systemd#28593); use a newer stub",
            new.len()
        );
    }
    let image_end = sections
        .iter()
        .map(|s| s.virtual_address.get(LE) + s.virtual_size.get(LE).max(s.size_of_raw_data.get(LE)))
        .max()
        .unwrap_or(0);

    // The stub's sections end where its loaded content ends; a symbol table or a signature
    // after them is dropped (see the module documentation), and the header no longer
    // points at them.
    let sections_end = sections
        .iter()
        .map(|s| s.pointer_to_raw_data.get(LE) as usize + s.size_of_raw_data.get(LE) as usize)
        .max()
        .unwrap_or(size_of_headers)
        .max(size_of_headers);
    if sections_end > stub.len() {
        bail!("the UKI stub is truncated: its sections end past the end of the file");
    }
    let mut out = stub[..sections_end].to_vec();
    put_u32(&mut out, file_header_offset + 8, 0); // PointerToSymbolTable
    put_u32(&mut out, file_header_offset + 12, 0); // NumberOfSymbols
    let security = optional_offset + 112 + 8 * IMAGE_DIRECTORY_ENTRY_SECURITY;
    out[security..security + 8].fill(0);

    let mut next_va = align(image_end, section_alignment);
    let mut added_data = 0u32;
    for (i, (name, data)) in new.iter().enumerate() {
        let size = u32::try_from(data.len()).context("a UKI part is larger than 4 GiB")?;
        let raw_size = align(size, file_alignment);
        let raw_offset = align(out.len() as u32, file_alignment);
        out.resize(raw_offset as usize, 0);
        out.extend_from_slice(data);
        out.resize((raw_offset + raw_size) as usize, 0);

        let h = table_end + i * SECTION_HEADER_SIZE;
        out[h..h + SECTION_HEADER_SIZE].fill(0);
        out[h..h + 8].copy_from_slice(*name);
        put_u32(&mut out, h + 8, size); // VirtualSize
        put_u32(&mut out, h + 12, next_va); // VirtualAddress
        put_u32(&mut out, h + 16, raw_size); // SizeOfRawData
        put_u32(&mut out, h + 20, raw_offset); // PointerToRawData
        put_u32(
            &mut out,
            h + 36,
            (IMAGE_SCN_CNT_INITIALIZED_DATA | IMAGE_SCN_MEM_READ).0,
        );
        next_va = align(next_va + size.max(1), section_alignment);
        added_data += raw_size;
    }
    put_u16(&mut out, file_header_offset + 2, (count + new.len()) as u16); // NumberOfSections
    let initialized = opt.size_of_initialized_data.get(LE) + added_data;
    put_u32(&mut out, optional_offset + 8, initialized); // SizeOfInitializedData
    put_u32(&mut out, optional_offset + 56, next_va); // SizeOfImage
    put_u32(&mut out, optional_offset + 64, 0); // CheckSum
    Ok(out)
}

/// The systemd-boot stub from the Debian package tree, read by [`crate::build`].
pub const STUB_PATH: &str = "usr/lib/systemd/boot/efi/linuxx64.efi.stub";
/// systemd-boot from the same package.
pub const BOOT_PATH: &str = "usr/lib/systemd/boot/efi/systemd-bootx64.efi";

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    const STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";

    fn stub() -> Vec<u8> {
        std::fs::read(STUB).unwrap_or_else(|_| {
            panic!("{STUB} is missing: install systemd-boot-efi (cargo xtask test does)")
        })
    }

    #[test]
    fn objdump_sees_the_sections_and_objcopy_extracts_them() {
        let initrd: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let linux = vec![0xAAu8; 70_001];
        let parts = Parts {
            os_release: "ID=crust\nVERSION_ID=0.1.0\n",
            cmdline: "console=ttyS0 panic=10",
            uname: "6.1.0-test",
            initrd: &initrd,
            linux: &linux,
            pcrpkey: None,
            pcrsig: None,
        };
        let uki = assemble(&stub(), &parts).unwrap();
        assert_eq!(assemble(&stub(), &parts).unwrap(), uki, "deterministic");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("uki.efi");
        std::fs::write(&path, &uki).unwrap();

        let out = Command::new("objdump")
            .arg("-h")
            .arg(&path)
            .output()
            .expect("objdump (binutils) is missing");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let listing = String::from_utf8_lossy(&out.stdout);
        let mut last_end = 0u64;
        for (name, size) in [
            (".osrel", 26),
            (".cmdline", 22),
            (".uname", 10),
            (".initrd", 10_000),
            (".linux", 70_001),
        ] {
            let cols: Vec<&str> = listing
                .lines()
                .map(|l| l.split_whitespace().collect::<Vec<_>>())
                .find(|c| c.get(1) == Some(&name))
                .unwrap_or_else(|| panic!("{name} missing:\n{listing}"))
                .clone();
            assert_eq!(u64::from_str_radix(cols[2], 16).unwrap(), size, "{name}");
            let vma = u64::from_str_radix(cols[3], 16).unwrap();
            assert!(
                vma >= last_end && vma.is_multiple_of(4096),
                "{name} at {vma:#x} overlaps or is unaligned"
            );
            last_end = vma + size;
        }
        let extract = |section: &str| {
            let out_file = dir.path().join(section.trim_start_matches('.'));
            let ok = Command::new("objcopy")
                .args(["-O", "binary", "--only-section", section])
                .arg(&path)
                .arg(&out_file)
                .status()
                .unwrap();
            assert!(ok.success());
            std::fs::read(out_file).unwrap()
        };
        assert_eq!(extract(".cmdline"), b"console=ttyS0 panic=10");
        assert_eq!(extract(".initrd"), initrd);
        assert_eq!(extract(".linux"), linux);
    }

    #[test]
    fn the_pcr_key_and_signature_fit_the_stubs_header_room() {
        // Seven sections: systemd 252's stub has room for exactly seven more headers.
        let parts = Parts {
            os_release: "ID=crust\n",
            cmdline: "console=ttyS0",
            uname: "6.1.0-test",
            initrd: &[1; 3000],
            linux: &[2; 5000],
            pcrpkey: Some(b"-----BEGIN PUBLIC KEY-----\n"),
            pcrsig: Some(br#"{"sha256":[]}"#),
        };
        let uki = assemble(&stub(), &parts).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("uki.efi");
        std::fs::write(&path, &uki).unwrap();
        for (section, want) in [
            (".pcrpkey", parts.pcrpkey.unwrap()),
            (".pcrsig", parts.pcrsig.unwrap()),
            (".linux", parts.linux),
        ] {
            let out_file = dir.path().join(section.trim_start_matches('.'));
            let ok = Command::new("objcopy")
                .args(["-O", "binary", "--only-section", section])
                .arg(&path)
                .arg(&out_file)
                .status()
                .unwrap();
            assert!(ok.success(), "{section}");
            assert_eq!(std::fs::read(out_file).unwrap(), want, "{section}");
        }
    }

    #[test]
    fn sections_follow_each_other_without_gaps_and_nothing_follows_them() {
        let stub = stub();
        let parts = Parts {
            os_release: "ID=crust\n",
            cmdline: "console=ttyS0",
            uname: "6.1.0-test",
            initrd: &[1; 3000],
            linux: &[2; 5000],
            pcrpkey: None,
            pcrsig: None,
        };
        let uki = assemble(&stub, &parts).unwrap();
        let dos = ImageDosHeader::parse(uki.as_slice()).unwrap();
        let mut offset = u64::from(dos.nt_headers_offset());
        let (nt, _) = ImageNtHeaders64::parse(uki.as_slice(), &mut offset).unwrap();
        assert_eq!(nt.file_header.pointer_to_symbol_table.get(LE), 0);
        assert_eq!(nt.file_header.number_of_symbols.get(LE), 0);
        let mut raw: Vec<(u32, u32)> = nt
            .sections(uki.as_slice(), offset)
            .unwrap()
            .iter()
            .map(|s| (s.pointer_to_raw_data.get(LE), s.size_of_raw_data.get(LE)))
            .filter(|(_, size)| *size > 0)
            .collect();
        raw.sort_unstable();
        let mut end = nt.optional_header.size_of_headers.get(LE);
        for (at, size) in raw {
            assert_eq!(at, end, "a gap or an overlap before the section at {at:#x}");
            end = at + size;
        }
        assert_eq!(end as usize, uki.len(), "bytes after the last section");
        // The stub this runs against is Debian's, which ends with a symbol table: the test
        // only proves something while it does.
        let stub_dos = ImageDosHeader::parse(stub.as_slice()).unwrap();
        let mut stub_offset = u64::from(stub_dos.nt_headers_offset());
        let (stub_nt, _) = ImageNtHeaders64::parse(stub.as_slice(), &mut stub_offset).unwrap();
        assert_ne!(stub_nt.file_header.pointer_to_symbol_table.get(LE), 0);
    }

    #[test]
    fn refuses_a_file_that_is_not_a_pe_image() {
        let parts = Parts {
            os_release: "",
            cmdline: "",
            uname: "",
            initrd: &[],
            linux: &[],
            pcrpkey: None,
            pcrsig: None,
        };
        assert!(assemble(b"MZ not really", &parts).is_err());
    }
}
