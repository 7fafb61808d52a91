//! An update index, signed, judged by the update agent (key, channel, replay, expiry).
//!
//! `cargo xtask fuzz index` runs it; docs/ROBUSTNESS.md has its figures.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| crust_init::fuzz::index(data));
