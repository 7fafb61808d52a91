//! The fuzz corpus replayed on the stable toolchain: every file of `fuzz/corpus/<target>/`
//! and `fuzz/regressions/<target>/` goes through the function its cargo-fuzz target calls
//! (`crust_init::fuzz`, `crust_builder::fuzz`), and none may panic. No fuzzing happens
//! here and no nightly is needed: this keeps what the fuzzer found (and every crash it
//! found, once fixed) from coming back. `cargo xtask fuzz` grows the corpus;
//! docs/ROBUSTNESS.md explains both.

use std::path::{Path, PathBuf};
use std::time::Instant;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// A fuzz target's function.
type Target = Box<dyn Fn(&[u8])>;

/// What the cargo-fuzz target `name` calls, as `fuzz/fuzz_targets/<name>.rs` calls it.
fn target(name: &str) -> Option<Target> {
    let fuzz = fuzz_dir();
    Some(match name {
        "dhcp" => Box::new(crust_init::fuzz::dhcp),
        "http_response" => Box::new(crust_init::fuzz::http_response),
        "imds" => Box::new(crust_init::fuzz::imds),
        "sntp" => Box::new(crust_init::fuzz::sntp),
        "index" => Box::new(crust_init::fuzz::index),
        "bundle" => Box::new(crust_init::fuzz::bundle),
        "manifest" => Box::new(crust_init::fuzz::manifest),
        "user_data" => {
            let root = fuzz.join("root");
            Box::new(move |data| crust_init::fuzz::user_data(&root, data))
        }
        "nocloud" => Box::new(crust_init::fuzz::nocloud),
        "netlink" => Box::new(crust_init::fuzz::netlink),
        "profile" => {
            let profiles = fuzz.join("../profiles");
            Box::new(move |data| crust_builder::fuzz::profile(&profiles, data))
        }
        "lock" => Box::new(crust_builder::fuzz::lock),
        "deb" => Box::new(crust_builder::fuzz::deb),
        "oci_layout" => {
            let template = fuzz.join("oci-layout");
            Box::new(move |data| crust_builder::fuzz::oci_layout(&template, data))
        }
        _ => return None,
    })
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The targets cargo-fuzz builds: `fuzz/fuzz_targets/<name>.rs`.
fn fuzz_targets() -> Vec<String> {
    names_in(&fuzz_dir().join("fuzz_targets"))
        .into_iter()
        .filter_map(|n| n.strip_suffix(".rs").map(str::to_owned))
        .collect()
}

#[test]
fn every_fuzz_target_is_replayed_and_has_a_seeded_corpus() {
    for name in fuzz_targets() {
        assert!(
            target(&name).is_some(),
            "fuzz/fuzz_targets/{name}.rs has no replay here: add it to target()"
        );
        let corpus = names_in(&fuzz_dir().join("corpus").join(&name));
        assert!(
            corpus.iter().any(|f| f.starts_with("seed-")),
            "fuzz/corpus/{name}/ has no seed-* file (real inputs the corpus starts from)"
        );
    }
    for kind in ["corpus", "regressions"] {
        for dir in names_in(&fuzz_dir().join(kind)) {
            assert!(
                target(&dir).is_some() && fuzz_targets().contains(&dir),
                "fuzz/{kind}/{dir}/ belongs to no fuzz target"
            );
        }
    }
}

#[test]
fn every_corpus_and_regression_file_goes_through_its_target_without_a_panic() {
    let started = Instant::now();
    let mut failed = Vec::new();
    let mut files = 0;
    let mut took = Vec::new();
    for kind in ["corpus", "regressions"] {
        for name in names_in(&fuzz_dir().join(kind)) {
            let Some(run) = target(&name) else { continue };
            let this = Instant::now();
            let dir = fuzz_dir().join(kind).join(&name);
            for file in names_in(&dir) {
                let path = dir.join(&file);
                let data = std::fs::read(&path).expect("a corpus file");
                files += 1;
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&data))).is_err() {
                    failed.push(format!("fuzz/{kind}/{name}/{file}"));
                }
            }
            took.push(format!(
                "{kind}/{name} {:.2} s",
                this.elapsed().as_secs_f64()
            ));
        }
    }
    assert!(
        files > 0,
        "no corpus files found under {}",
        fuzz_dir().display()
    );
    assert!(
        failed.is_empty(),
        "{} of {files} inputs panicked (the messages are above):\n{}",
        failed.len(),
        failed.join("\n")
    );
    eprintln!(
        "replayed {files} corpus and regression files in {:.2} s ({})",
        started.elapsed().as_secs_f64(),
        took.join(", ")
    );
}
