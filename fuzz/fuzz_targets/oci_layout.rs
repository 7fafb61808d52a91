//! An OCI layout's JSON (index, manifest, config) read by the builder's layout reader.
//!
//! `cargo xtask fuzz oci_layout` runs it; docs/ROBUSTNESS.md has its figures.

#![no_main]

/// A real OCI image layout made by umoci, whose documents the input replaces.
const OCI_TEMPLATE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/oci-layout");

libfuzzer_sys::fuzz_target!(|data: &[u8]| crust_builder::fuzz::oci_layout(
    std::path::Path::new(OCI_TEMPLATE),
    data
));
