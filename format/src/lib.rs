//! Crust's on-disk contract, in code.
//!
//! This crate holds what the image builder and the host's PID 1 must agree on, and nothing
//! else: the signed manifest and its signature, the partition layout and how partition UUIDs
//! derive from the root hash, the dm-verity parameters and superblock, the names of unified
//! kernel images (with boot counters), the paths inside the initramfs, what user-data may
//! be and do (`user_data`), data volumes and what a disk holds (`volume`), the console line
//! format the init prints, what the init and its observability agent exchange (`observe`),
//! and the calendar dates formats and logs carry (`utc`); for the sealed `/var`, the PCRs
//! and policy digests (`pcr`) and the state partition's header and policy (`sealed`).
//! `docs/FORMAT.md` is the prose version of the same contract; the
//! two change together.
//!
//! The crate is deliberately small (no I/O, no allocation-heavy dependencies) so that the
//! static init can link it without growing.

pub mod boot_entry;
pub mod bundle;
pub mod digest;
pub mod initrd;
pub mod install;
pub mod kv;
pub mod layout;
pub mod manifest;
pub mod observe;
pub mod pcr;
pub mod phase;
pub mod repo;
pub mod sealed;
pub mod service;
pub mod signature;
pub mod sums;
pub mod user_data;
pub mod utc;
pub mod verity;
pub mod version;
pub mod volume;

pub use digest::Digest;
pub use manifest::Manifest;
