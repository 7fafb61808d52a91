//! Every shipped profile's lock is current: a `--locked` build of any profile in
//! `profiles/` (and so its SBOM) starts from the committed lock, never from a refusal.
//!
//! This compares each lock's recorded inputs with what its profile asks for now, as a
//! `--locked` build does before anything else; no network. A profile whose packages changed
//! without `cargo xtask lock --profile NAME` fails here with the build's own message.

use std::path::Path;

use crust_builder::build::lock_state;
use crust_builder::profile::Profile;

#[test]
fn every_shipped_profile_lock_is_current() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../profiles")
        .canonicalize()
        .expect("the profiles folder");
    let mut profiles: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.expect("profiles entry").path())
        // base.toml is only ever included: it has no image of its own, and no lock.
        .filter(|p| p.extension().is_some_and(|e| e == "toml") && !p.ends_with("base.toml"))
        .collect();
    profiles.sort();
    assert!(
        profiles.len() >= 4,
        "expected the shipped profiles in {}",
        dir.display()
    );
    let stale: Vec<String> = profiles
        .iter()
        .filter_map(|path| {
            let profile = Profile::load(path).unwrap_or_else(|e| panic!("{e}"));
            let state = lock_state(&profile).unwrap_or_else(|e| panic!("{e:#}"));
            state.require(&profile).err().map(|e| e.to_string())
        })
        .collect();
    assert!(
        stale.is_empty(),
        "profile locks out of date (a `--locked` build refuses them):\n{}",
        stale.join("\n")
    );
}
