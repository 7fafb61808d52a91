//! The head of a block device probed for a FAT or ISO 9660 label (NoCloud CIDATA).
//!
//! `cargo xtask fuzz nocloud` runs it; docs/ROBUSTNESS.md has its figures.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| crust_init::fuzz::nocloud(data));
