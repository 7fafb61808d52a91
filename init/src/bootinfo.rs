//! `/run/crust/boot`: the facts stage 1 found, handed to stage 2 (and later to the update
//! agent) as `key=value` lines.
//!
//! Keys: `slot`, `disk`, `root-device`, `verity-device`, `dm-device`, `root-hash`,
//! `esp-partuuid` and `uki` (when the boot loader said), and `phase.<name>` with the
//! monotonic time in seconds at which each stage-1 phase ended.

use std::time::Duration;

use crust_format::initrd::boot_keys;

use crate::console;

/// Ordered `key=value` facts.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BootInfo {
    entries: Vec<(String, String)>,
}

impl BootInfo {
    /// Sets `key` (replacing an earlier value).
    pub fn set(&mut self, key: &str, value: impl Into<String>) {
        let value = value.into();
        match self.entries.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = value,
            None => self.entries.push((key.to_owned(), value)),
        }
    }

    /// Records when a phase ended.
    pub fn set_phase(&mut self, phase: &str, at: Duration) {
        self.set(
            &format!("{}{phase}", boot_keys::PHASE_PREFIX),
            console::seconds(at),
        );
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The file's text.
    pub fn to_text(&self) -> String {
        self.entries
            .iter()
            .map(|(k, v)| format!("{k}={v}\n"))
            .collect()
    }

    /// Parses the file's text; lines that are not `key=value` are skipped.
    pub fn parse(text: &str) -> Self {
        let mut info = Self::default();
        for (k, v) in text.lines().filter_map(|l| l.split_once('=')) {
            info.set(k, v);
        }
        info
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_in_order() {
        let mut info = BootInfo::default();
        info.set("slot", "a");
        info.set("disk", "vda");
        info.set_phase("init", Duration::from_micros(512_000));
        info.set("slot", "b");
        let text = info.to_text();
        assert_eq!(text, "slot=b\ndisk=vda\nphase.init=0.512000\n");
        let back = BootInfo::parse(&text);
        assert_eq!(back, info);
        assert_eq!(back.get("disk"), Some("vda"));
        assert_eq!(back.get("uki"), None);
    }

    #[test]
    fn values_may_hold_equals_signs() {
        let info = BootInfo::parse("uki=a=b\nnonsense\n");
        assert_eq!(info.get("uki"), Some("a=b"));
        assert_eq!(info.to_text(), "uki=a=b\n");
    }
}
