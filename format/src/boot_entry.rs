//! Names of unified kernel images on the ESP, with systemd-boot's boot counters.
//!
//! Each installed version is one file `EFI/Linux/<name>_<version>[+<left>[-<done>]].efi`.
//! systemd-boot reads the counters from the name: it tries an entry with `left > 0`,
//! renaming it to `left-1`/`done+1` first, sorts entries with `left == 0` last, and leaves
//! names without counters alone. Blessing a boot means renaming the file to drop the counter.

use std::fmt;

use crate::version::{check_name, check_version};

/// Folder on the ESP that holds the UKIs (systemd-boot's "type #2" entries).
pub const UKI_DIR: &str = "EFI/Linux";
/// Path of systemd-boot on the ESP (the removable-media default loader).
pub const BOOT_LOADER: &str = "EFI/BOOT/BOOTX64.EFI";
/// Path of systemd-boot's configuration on the ESP.
pub const LOADER_CONF: &str = "loader/loader.conf";
/// Vendor GUID of systemd-boot's EFI variables (the Boot Loader Interface), e.g.
/// `LoaderDevicePartUUID-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f`.
pub const LOADER_VENDOR_GUID: &str = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";
/// Variable holding the partition UUID of the ESP the loader was started from.
pub const LOADER_DEVICE_PART_UUID: &str = "LoaderDevicePartUUID";
/// Variable holding the id (file name) of the boot entry that was started.
pub const LOADER_ENTRY_SELECTED: &str = "LoaderEntrySelected";
/// Boot tries a freshly installed update gets.
pub const DEFAULT_TRIES: u32 = 3;

/// Boot counters in an entry name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counter {
    /// Tries left.
    pub left: u32,
    /// Tries made (absent in a fresh `+N` name).
    pub done: Option<u32>,
}

/// A parsed UKI file name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootEntryName {
    /// Image name.
    pub name: String,
    /// Image version.
    pub version: String,
    /// Boot counters; `None` for a blessed (or never counted) entry.
    pub counter: Option<Counter>,
}

impl BootEntryName {
    /// An entry for `name` and `version`, with `tries` boot attempts if given.
    pub fn new(name: &str, version: &str, tries: Option<u32>) -> Self {
        Self {
            name: name.to_owned(),
            version: version.to_owned(),
            counter: tries.map(|left| Counter { left, done: None }),
        }
    }

    /// Parses a file name such as `crust_1.2.0+2-1.efi`; `None` if it is not a Crust UKI.
    pub fn parse(file_name: &str) -> Option<Self> {
        let stem = file_name.strip_suffix(".efi")?;
        let (id, counter) = match stem.rsplit_once('+') {
            Some((id, counts)) => (id, Some(parse_counter(counts)?)),
            None => (stem, None),
        };
        let (name, version) = id.split_once('_')?;
        check_name(name).ok()?;
        check_version(version).ok()?;
        Some(Self {
            name: name.to_owned(),
            version: version.to_owned(),
            counter,
        })
    }

    /// The same entry without counters: the name a blessed boot renames it to.
    pub fn blessed(&self) -> Self {
        Self {
            counter: None,
            ..self.clone()
        }
    }

    /// The file name.
    pub fn file_name(&self) -> String {
        self.to_string()
    }
}

fn parse_counter(s: &str) -> Option<Counter> {
    let digits = |s: &str| -> Option<u32> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    match s.split_once('-') {
        Some((left, done)) => Some(Counter {
            left: digits(left)?,
            done: Some(digits(done)?),
        }),
        None => Some(Counter {
            left: digits(s)?,
            done: None,
        }),
    }
}

impl fmt::Display for BootEntryName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}_{}", self.name, self.version)?;
        match self.counter {
            Some(Counter {
                left,
                done: Some(done),
            }) => write!(f, "+{left}-{done}")?,
            Some(Counter { left, done: None }) => write!(f, "+{left}")?,
            None => {}
        }
        f.write_str(".efi")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_with_and_without_counters() {
        for name in [
            "crust_0.1.0.efi",
            "crust_1.2.0+3.efi",
            "crust_1.2.0+1-2.efi",
        ] {
            assert_eq!(BootEntryName::parse(name).unwrap().file_name(), name);
        }
        let e = BootEntryName::parse("crust_1.2.0+0-3.efi").unwrap();
        assert_eq!(
            e.counter,
            Some(Counter {
                left: 0,
                done: Some(3)
            })
        );
        assert_eq!(e.blessed().file_name(), "crust_1.2.0.efi");
        assert_eq!(
            BootEntryName::new("crust", "2.0", Some(3)).file_name(),
            "crust_2.0+3.efi"
        );
    }

    #[test]
    fn other_files_are_not_entries() {
        for name in [
            "BOOTX64.EFI",
            "crust.efi",
            "crust_1.0+x.efi",
            "crust_1.0.conf",
            "Crust_1.0.efi",
        ] {
            assert_eq!(BootEntryName::parse(name), None, "{name}");
        }
    }
}
