//! Same profile, lock, key, init and `SOURCE_DATE_EPOCH`: the same `image.raw`, bit for
//! bit, from two clean output folders. A different epoch must give a different image (so
//! the comparison can fail).

use std::path::Path;

use crust_builder::build::{BuildRequest, build};
use crust_builder::fetch::{self, Cache};
use crust_tests::init_binary;

fn build_into(out: &Path, keys: &Path, epoch: Option<u64>) -> crust_format::Digest {
    let profile = Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles/qemu.toml");
    let outcome = build(&BuildRequest {
        profile,
        init: init_binary(),
        out_dir: out.to_path_buf(),
        dev_key_dir: keys.to_path_buf(),
        cache: Cache::new(Cache::default_root()),
        locked: true,
        source_date_epoch: epoch,
        init_crates: Some(crust_tests::init_crates()),
        observe: crust_tests::observe_program(),
        extras: Default::default(),
    })
    .expect("build");
    assert!(!outcome.fresh, "{} was not a clean folder", out.display());
    fetch::sha256_file(&outcome.image).expect("hash")
}

#[test]
#[ignore = "needs the init built by `cargo xtask test`"]
fn two_clean_builds_are_bit_identical() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let a = build_into(&dir.path().join("a"), &keys, None);
    let b = build_into(&dir.path().join("b"), &keys, None);
    assert_eq!(a, b, "two builds of the same inputs differ");
    // The signed release too: the same list, and Ed25519 signatures are deterministic; the
    // SBOMs it lists the same bytes.
    for name in [
        "SHA256SUMS",
        "SHA256SUMS.sig",
        "sbom.spdx.json",
        "sbom.cdx.json",
    ] {
        let read = |out: &str| std::fs::read(dir.path().join(out).join(name)).expect("release");
        assert_eq!(read("a"), read("b"), "{name} differs between two builds");
    }
    let c = build_into(&dir.path().join("c"), &keys, Some(1_234_567_890));
    assert_ne!(a, c, "the epoch did not reach the image");
}
