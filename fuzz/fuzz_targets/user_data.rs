//! User-data TOML accepted as the config phase does: policy, schema, [[service]] checks.
//!
//! `cargo xtask fuzz user_data` runs it; docs/ROBUSTNESS.md has its figures.

#![no_main]

/// A root with real services (from a built image), for the `[[service]]` checks.
const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/root");

libfuzzer_sys::fuzz_target!(|data: &[u8]| crust_init::fuzz::user_data(
    std::path::Path::new(ROOT),
    data
));
