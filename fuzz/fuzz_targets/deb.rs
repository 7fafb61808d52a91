//! A .deb archive (ar, tar, xz or zstd) unpacked by the builder into a tree.
//!
//! `cargo xtask fuzz deb` runs it; docs/ROBUSTNESS.md has its figures.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| crust_builder::fuzz::deb(data));
