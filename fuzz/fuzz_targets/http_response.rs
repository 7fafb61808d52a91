//! An HTTP response read by the init's client, whole (IMDS) and streamed (downloads).
//!
//! `cargo xtask fuzz http_response` runs it; docs/ROBUSTNESS.md has its figures.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| crust_init::fuzz::http_response(data));
