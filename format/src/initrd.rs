//! The stage-1 contract: what the builder puts into the initramfs and where the init finds
//! it, and what stage 1 hands to stage 2 under `/run`.
//!
//! Paths are relative to the initramfs root (the newc archive has no leading `/`).

/// The init binary the kernel runs.
pub const INIT: &str = "init";
/// Marks the initramfs, as systemd's initrd does; its presence selects stage 1.
pub const STAGE1_MARKER: &str = "etc/initrd-release";
/// The signed manifest ([`crate::manifest`]).
pub const MANIFEST: &str = "crust/manifest";
/// Raw 64-byte Ed25519 signature over the manifest file.
pub const MANIFEST_SIGNATURE: &str = "crust/manifest.sig";
/// Raw 32-byte Ed25519 public key that must have signed the manifest.
pub const PUBLIC_KEY: &str = "crust/verify.pub";
/// Kernel modules to load, one path per line, in load order (dependencies first).
pub const MODULES: &str = "crust/modules";

/// Where stage 1 mounts the verified root before switching to it.
pub const SYSROOT: &str = "/sysroot";
/// Where stage 1 leaves what it verified for stage 2 (on the `/run` tmpfs it moves over).
pub const RUN_DIR: &str = "/run/crust";
/// The verified manifest, copied for stage 2 and the update agent.
pub const RUN_MANIFEST: &str = "/run/crust/manifest";
/// The public key that verified the manifest, copied for the update agent (it verifies
/// update indexes and bundles with the key of the image it runs).
pub const RUN_PUBLIC_KEY: &str = "/run/crust/verify.pub";
/// Stage 1's boot facts for stage 2 (and the update agent), `key=value` lines with the keys
/// of [`boot_keys`].
pub const RUN_BOOT: &str = "/run/crust/boot";

/// Where systemd's stub puts the UKI's `.pcrsig` section (the PCR 11 policies signed at
/// build time) in the initramfs, as an extra cpio archive after the UKI's own.
pub const STUB_PCR_SIGNATURE: &str = ".extra/tpm2-pcr-signature.json";
/// Stage 1's copy of it, for stage 2, which unseals `/var`'s key.
pub const RUN_PCR_SIGNATURE: &str = "/run/crust/tpm2-pcr-signature.json";
/// The event log of what the init extended into the TPM's PCRs, one line per event:
/// `<pcr> <sha256 of the event, hex> <event>`.
pub const RUN_MEASUREMENTS: &str = "/run/crust/measurements";

/// Where stage 1 keeps the writable layer of the `/etc` overlay (on the `/run` tmpfs, so
/// `/etc` starts each boot as the verified root has it).
pub const ETC_OVERLAY_DIR: &str = "/run/crust/etc";

/// Keys of [`RUN_BOOT`].
pub mod boot_keys {
    /// The slot booted, `a` or `b`.
    pub const SLOT: &str = "slot";
    /// The boot disk's kernel name (`vda`, `nvme0n1`).
    pub const DISK: &str = "disk";
    /// The root partition's device node.
    pub const ROOT_DEVICE: &str = "root-device";
    /// The verity partition's device node.
    pub const VERITY_DEVICE: &str = "verity-device";
    /// The device-mapper device holding `/` (`dm-0`).
    pub const DM_DEVICE: &str = "dm-device";
    /// The verified root hash.
    pub const ROOT_HASH: &str = "root-hash";
    /// The ESP's partition UUID as the boot loader reported it (absent without one).
    pub const ESP_PARTUUID: &str = "esp-partuuid";
    /// The boot entry (UKI file name) the loader started (absent without one).
    pub const UKI: &str = "uki";
    /// Prefix of the per-phase keys: `phase.<name>=<seconds since boot>`.
    pub const PHASE_PREFIX: &str = "phase.";
}
