//! A profile's lock file read and checked by the builder.
//!
//! `cargo xtask fuzz lock` runs it; docs/ROBUSTNESS.md has its figures.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| crust_builder::fuzz::lock(data));
