//! Profiles that cannot work are refused with the file, line and field, and leave nothing
//! behind: no image, no temporary file, and the previous image (if any) untouched.

use std::path::{Path, PathBuf};

use crust_builder::build::{BuildRequest, build};
use crust_builder::fetch::Cache;
use crust_tests::init_binary;

/// A profile folder with the real base profile and lock, plus `variant.toml`.
fn profile_dir(variant: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let profiles = Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles");
    std::fs::copy(profiles.join("base.toml"), dir.path().join("base.toml")).unwrap();
    let path = dir.path().join("variant.toml");
    std::fs::write(&path, variant).unwrap();
    // The qemu lock pins what a qemu-like variant needs.
    std::fs::copy(profiles.join("qemu.lock"), dir.path().join("variant.lock")).unwrap();
    (dir, path)
}

fn try_build(profile: &Path, out: &Path) -> String {
    let err = build(&BuildRequest {
        profile: profile.to_path_buf(),
        init: init_binary(),
        out_dir: out.to_path_buf(),
        dev_key_dir: out.join("keys"),
        cache: Cache::new(Cache::default_root()),
        locked: false,
        source_date_epoch: None,
        init_crates: None,
        observe: None,
        extras: Default::default(),
    })
    .expect_err("the build must fail");
    format!("{err:#}")
}

fn assert_nothing_written(out: &Path) {
    let left: Vec<_> = std::fs::read_dir(out)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        left.iter().all(|f| f == "keys"),
        "a failed build left files behind: {left:?}"
    );
}

const QEMU_LIKE: &str = "include = \"base.toml\"\n\
[kernel]\n\
package = \"linux-image-cloud-amd64\"\n\
modules = [\"virtio_blk\"]\n";

#[test]
#[ignore = "needs the init built by `cargo xtask test`"]
fn an_unknown_key_is_named_with_its_line() {
    let (dir, profile) = profile_dir(&format!("{QEMU_LIKE}[root]\npakages = [\"crun\"]\n"));
    let out = dir.path().join("out");
    let err = try_build(&profile, &out);
    assert!(err.contains("variant.toml"), "{err}");
    assert!(err.contains("line 6"), "{err}");
    assert!(err.contains("pakages"), "{err}");
    assert_nothing_written(&out);
}

#[test]
#[ignore = "needs the init built by `cargo xtask test` and the Debian archive"]
fn a_missing_package_is_named_with_its_line() {
    let (dir, profile) = profile_dir(&format!(
        "{QEMU_LIKE}[root]\npackages = [\"no-such-package-crust\"]\n"
    ));
    let out = dir.path().join("out");
    let err = try_build(&profile, &out);
    assert!(err.contains("variant.toml:6: root.packages"), "{err}");
    assert!(err.contains("no-such-package-crust"), "{err}");
    assert_nothing_written(&out);
}

#[test]
#[ignore = "needs the init built by `cargo xtask test`"]
fn content_larger_than_its_partition_is_refused_before_writing() {
    let (dir, profile) = profile_dir(&format!(
        "{QEMU_LIKE}[disk]\nroot = \"8MiB\"\n[[root.files]]\nsource = \"blob\"\npath = \"/usr/share/blob\"\n"
    ));
    // 12 MiB that zstd cannot shrink.
    let mut blob = vec![0u8; 12 << 20];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for b in blob.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    std::fs::write(dir.path().join("blob"), blob).unwrap();
    let out = dir.path().join("out");
    let err = try_build(&profile, &out);
    assert!(err.contains("variant.toml:6: disk.root"), "{err}");
    assert!(err.contains("root file system needs"), "{err}");
    assert_nothing_written(&out);
}

#[test]
#[ignore = "needs the init built by `cargo xtask test`"]
fn a_failed_build_keeps_the_previous_image() {
    let (dir, profile) = profile_dir(QEMU_LIKE);
    let out = dir.path().join("out");
    let request = BuildRequest {
        profile: profile.clone(),
        init: init_binary(),
        out_dir: out.clone(),
        dev_key_dir: out.join("keys"),
        cache: Cache::new(Cache::default_root()),
        locked: false,
        source_date_epoch: None,
        init_crates: None,
        observe: None,
        extras: Default::default(),
    };
    let first = build(&request).expect("the variant builds");
    let before = std::fs::read(&first.image).unwrap();
    std::fs::write(&profile, format!("{QEMU_LIKE}[disk]\nesp = \"1MiB\"\n")).unwrap();
    let err = format!("{:#}", build(&request).unwrap_err());
    assert!(err.contains("variant.toml:6: disk.esp"), "{err}");
    assert_eq!(
        std::fs::read(&first.image).unwrap(),
        before,
        "the previous image changed"
    );
    let stray: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(stray.is_empty(), "temporary files left: {stray:?}");
}

#[test]
#[ignore = "needs the init built by `cargo xtask test`"]
fn bad_service_declarations_are_refused_with_the_service_and_field() {
    // Refused while the profile is read: a dependency cycle.
    let (dir, profile) = profile_dir(&format!(
        "{QEMU_LIKE}[[service]]\nname = \"a\"\nimage.debian = [\"busybox-static\"]\nafter = [\"b\"]\n\
         [[service]]\nname = \"b\"\nimage.debian = [\"busybox-static\"]\nafter = [\"a\"]\n"
    ));
    let out = dir.path().join("out");
    let err = try_build(&profile, &out);
    assert!(err.contains("variant.toml:"), "{err}");
    assert!(
        err.contains("service a: after") && err.contains("dependency cycle among a, b"),
        "{err}"
    );
    assert_nothing_written(&out);

    // A misspelt system call to allow, with its line and the name meant.
    let (dir, profile) = profile_dir(&format!(
        "{QEMU_LIKE}[[service]]\nname = \"keys\"\nimage.debian = [\"busybox-static\"]\nseccomp-allow = [\"keyctrl\"]\n"
    ));
    let out = dir.path().join("out");
    let err = try_build(&profile, &out);
    let line = QEMU_LIKE.lines().count() + 1;
    assert!(err.contains(&format!("variant.toml:{line}: ")), "{err}");
    assert!(
        err.contains("service keys: seccomp-allow") && err.contains("did you mean \"keyctl\"?"),
        "{err}"
    );
    assert_nothing_written(&out);

    // Refused once the image is unpacked: busybox-static says nothing about what to run.
    let (dir, profile) = profile_dir(&format!(
        "{QEMU_LIKE}[[service]]\nname = \"idle\"\nimage.debian = [\"busybox-static\"]\nmemory = \"64MiB\"\n"
    ));
    let out = dir.path().join("out");
    let err = try_build(&profile, &out);
    assert!(err.contains("variant.toml:"), "{err}");
    assert!(
        err.contains("service idle: command")
            && err.contains("neither the declaration nor the image says what to run"),
        "{err}"
    );
    assert_nothing_written(&out);
}
