//! An update bundle file, header signed, checked as a stream by the update agent.
//!
//! `cargo xtask fuzz bundle` runs it; docs/ROBUSTNESS.md has its figures.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| crust_init::fuzz::bundle(data));
