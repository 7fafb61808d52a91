//! The builder's `modules.dep` for a Debian kernel package, checked against kmod's
//! `depmod` run over the same module tree.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use crust_builder::fetch::Cache;
use crust_builder::lock::{Lock, Role};
use crust_tests::run_ok;

fn parse(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(m, d)| {
            (
                m.to_owned(),
                d.split_whitespace().map(str::to_owned).collect(),
            )
        })
        .collect()
}

fn copy_tree(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&dest).unwrap();
            copy_tree(&entry.path(), &dest);
        } else if entry.file_name() != "modules.dep" {
            std::fs::copy(entry.path(), dest).unwrap();
        }
    }
}

#[test]
#[ignore = "needs the kernel package cached by `cargo xtask test`"]
fn generated_modules_dep_matches_depmod() {
    let lock_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles/qemu.lock");
    let lock = Lock::read(&lock_path).unwrap().expect("profiles/qemu.lock");
    let kernel = lock.single(Role::Kernel).unwrap();
    let dir = Cache::default_root().join("kernels").join(&kernel.sha256);
    let release = std::fs::read_to_string(dir.join("release"))
        .unwrap()
        .trim()
        .to_owned();
    let ours_dir = dir.join("lib/modules").join(&release);
    let ours = parse(&std::fs::read_to_string(ours_dir.join("modules.dep")).unwrap());

    let base = tempfile::tempdir().unwrap();
    let theirs_dir = base.path().join("lib/modules").join(&release);
    std::fs::create_dir_all(&theirs_dir).unwrap();
    copy_tree(&ours_dir, &theirs_dir);
    run_ok(
        Command::new("depmod")
            .arg("-b")
            .arg(base.path())
            .arg(&release),
    );
    let theirs = parse(&std::fs::read_to_string(theirs_dir.join("modules.dep")).unwrap());

    assert_eq!(ours.len(), theirs.len(), "module count");
    assert!(ours.len() > 500, "only {} modules", ours.len());
    for (module, deps) in &theirs {
        assert_eq!(ours.get(module), Some(deps), "dependencies of {module}");
    }
}
