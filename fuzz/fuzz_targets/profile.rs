//! A profile's TOML read, merged with its includes and validated by the builder.
//!
//! `cargo xtask fuzz profile` runs it; docs/ROBUSTNESS.md has its figures.

#![no_main]

/// The repository's profiles: what a fuzzed profile may include.
const PROFILES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../profiles");

libfuzzer_sys::fuzz_target!(|data: &[u8]| crust_builder::fuzz::profile(
    std::path::Path::new(PROFILES),
    data
));
