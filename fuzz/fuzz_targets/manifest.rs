//! The signed manifest, verified and parsed as stage 1 does.
//!
//! `cargo xtask fuzz manifest` runs it; docs/ROBUSTNESS.md has its figures.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| crust_init::fuzz::manifest(data));
