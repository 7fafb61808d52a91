//! `/run/crust/boot`: the facts stage 1 found, handed to stage 2 (and later to the update
//! agent) as `key=value` lines ([`crust_format::kv`]).
//!
//! Keys: `slot`, `disk`, `root-device`, `verity-device`, `dm-device`, `root-hash`,
//! `esp-partuuid` and `uki` (when the boot loader said), and `phase.<name>` with the
//! monotonic time in seconds at which each stage-1 phase ended.

use std::time::Duration;

use crust_format::initrd::boot_keys;

use crate::console;

/// Ordered `key=value` facts.
pub type BootInfo = crust_format::kv::KeyValues;

/// Records in `boot` when a phase ended.
pub fn set_phase(boot: &mut BootInfo, phase: &str, at: Duration) {
    boot.set(
        &format!("{}{phase}", boot_keys::PHASE_PREFIX),
        console::seconds(at),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_in_order() {
        let mut info = BootInfo::default();
        info.set("slot", "a");
        info.set("disk", "vda");
        set_phase(&mut info, "init", Duration::from_micros(512_000));
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
