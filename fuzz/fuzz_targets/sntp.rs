//! An SNTP reply checked by sntpc and judged by the init's clock (floor, step or slew).
//!
//! `cargo xtask fuzz sntp` runs it; docs/ROBUSTNESS.md has its figures.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| crust_init::fuzz::sntp(data));
