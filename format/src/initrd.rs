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
/// Stage 1's boot facts for stage 2, `key=value` lines: `slot`, `disk`, `root-device`,
/// `uki`, and `phase.<name>` timestamps in seconds since boot.
pub const RUN_BOOT: &str = "/run/crust/boot";
