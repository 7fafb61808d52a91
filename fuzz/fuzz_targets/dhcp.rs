//! A DHCP message into the init's client state machine, in each of its states.
//!
//! `cargo xtask fuzz dhcp` runs it; docs/ROBUSTNESS.md has its figures.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| crust_init::fuzz::dhcp(data));
