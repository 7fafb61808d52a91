//! EC2 IMDSv2 answers (the token, then the user-data) read by the init's IMDS client.
//!
//! `cargo xtask fuzz imds` runs it; docs/ROBUSTNESS.md has its figures.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| crust_init::fuzz::imds(data));
