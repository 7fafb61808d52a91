//! A route netlink datagram read as the init reads replies, links and addresses.
//!
//! `cargo xtask fuzz netlink` runs it; docs/ROBUSTNESS.md has its figures.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| crust_init::fuzz::netlink(data));
