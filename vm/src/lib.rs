//! Runs Crust images in QEMU and watches them, for `cargo xtask qemu` and the end-to-end
//! tests.
//!
//! The crate owns everything about the virtual machine: which accelerator works on this
//! host ([`accel`]: KVM only after a probe boot proves it, TCG otherwise), the UEFI firmware
//! and its writable variable store ([`firmware`]), the QEMU command line ([`machine`]), the
//! serial console as a stream of lines checked for kernel and init failures ([`console`]),
//! and the QMP control socket for ACPI power events ([`qmp`]). For the host configuration
//! tests it makes NoCloud seed disks ([`seed`]) and emulates EC2's IMDSv2 ([`imds`]); a
//! machine may have a TPM 2.0 ([`tpm`]: swtpm). Network boots get their folder served over HTTP
//! by Debian's nginx ([`web`]).

pub mod accel;
pub mod console;
pub mod firmware;
pub mod imds;
pub mod machine;
pub mod overlay;
pub mod qmp;
pub mod seed;
pub mod tpm;
pub mod web;

pub use accel::Accel;
pub use machine::{Config, DataDrive, DiskBus, Tap, Vm};
