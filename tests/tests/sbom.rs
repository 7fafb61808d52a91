//! The SBOM of the built image (docs/FORMAT.md §13), checked by independent tools:
//!
//! - spdx-tools (`pyspdxtools -i`) validates the release's SPDX document and the root's
//!   copy, ntia-conformance-checker finds the NTIA minimum elements in both, and
//!   cyclonedx-python-lib's JSON validator accepts the CycloneDX rendering (the tools come
//!   from PyPI, pinned, in the virtual environment `cargo xtask test` makes);
//! - its Debian packages are exactly what the root and the service image hold: every file
//!   `unsquashfs` lists in the root belongs to a package the SBOM names there (by
//!   `dpkg-deb --contents` of the `.deb` with the SBOM's checksum) or to Crust itself, and
//!   every package named owns files there; and they are the lock's packages of that role;
//! - its crates are what `cargo tree` says cargo compiles into the init for its target,
//!   within `cargo metadata`'s resolve, with `Cargo.lock`'s checksums;
//! - the bundle carries the release's document byte for byte, and the root's copy lists the
//!   same packages without the root hash;
//! - a second build gives the same bytes, and a variant with one Debian package more differs
//!   from it by exactly that package (`sbom diff`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::LazyLock;

use crust_builder::build::outputs;
use crust_builder::lock::{Lock, Role};
use crust_builder::profile::Profile;
use crust_builder::sbom::read::{self, Change, Document};
use crust_tests::{BuiltImage, build_profile, built_image, extract, partition, run_ok};

/// The virtual environment's `bin` folder with the validators.
fn tools() -> PathBuf {
    let python = std::env::var_os("CRUST_TEST_SBOM_PYTHON")
        .map(PathBuf::from)
        .expect("CRUST_TEST_SBOM_PYTHON is not set: run the SBOM tests through `cargo xtask test`");
    python
        .parent()
        .expect("the venv's bin folder")
        .to_path_buf()
}

/// The root image of the built disk, in `dir`.
fn root_image(img: &BuiltImage, dir: &Path) -> PathBuf {
    let root = dir.join("root.squashfs");
    extract(
        &img.image,
        &partition(&img.image, "root-a"),
        &root,
        Some(img.manifest.verity.data_size()),
    );
    root
}

/// The root's copy of the SBOM, read out of the squashfs by `unsquashfs`.
fn root_copy(root: &Path, dir: &Path) -> PathBuf {
    let out = dir.join("unpacked");
    run_ok(
        Command::new("unsquashfs")
            .args(["-q", "-n", "-d"])
            .arg(&out)
            .arg(root)
            .arg("usr/share/crust/sbom.spdx.json"),
    );
    out.join("usr/share/crust/sbom.spdx.json")
}

fn validate_spdx(file: &Path) -> String {
    run_ok(
        Command::new(tools().join("pyspdxtools"))
            .arg("-i")
            .arg(file),
    );
    let out = run_ok(
        Command::new(tools().join("ntia-checker"))
            .args(["--comply", "ntia", "--output", "json"])
            .arg(file),
    );
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("ntia-checker's JSON report");
    assert_eq!(
        report["isConformant"],
        true,
        "{} misses NTIA minimum elements: {report:#}",
        file.display()
    );
    format!(
        "{}: spdx-tools valid; NTIA minimum elements conformant ({} components)",
        file.display(),
        report["totalNumberComponents"]
    )
}

#[test]
#[ignore = "needs the built image and the SBOM tools; run through `cargo xtask test`"]
fn documents_pass_spdx_tools_ntia_checker_and_cyclonedx() {
    let img = built_image();
    let dir = tempfile::tempdir().unwrap();
    let root = root_image(&img, dir.path());
    for file in [
        img.dir.join(outputs::SBOM_SPDX),
        root_copy(&root, dir.path()),
    ] {
        eprintln!("{}", validate_spdx(&file));
    }
    let script = "import sys\n\
        from cyclonedx.schema import SchemaVersion\n\
        from cyclonedx.validation.json import JsonStrictValidator\n\
        errors = JsonStrictValidator(SchemaVersion.V1_5).validate_str(open(sys.argv[1]).read())\n\
        if errors:\n    sys.exit(f'invalid CycloneDX 1.5: {errors}')\n\
        print('valid CycloneDX 1.5')\n";
    let out = run_ok(
        Command::new(tools().join("python3"))
            .args(["-c", script])
            .arg(img.dir.join(outputs::SBOM_CYCLONEDX)),
    );
    eprintln!(
        "{}: {}",
        outputs::SBOM_CYCLONEDX,
        String::from_utf8_lossy(&out.stdout).trim()
    );
}

/// Files (not folders) under `prefix` as `unsquashfs -lls` lists them, relative to it.
fn image_files(listing: &str, prefix: &str) -> BTreeSet<String> {
    listing
        .lines()
        .filter(|l| !l.starts_with('d'))
        .filter_map(|l| {
            let path = &l[l.find(" /")? + 1..];
            let path = path.split(" -> ").next().unwrap_or(path);
            path.strip_prefix(prefix).map(str::to_owned)
        })
        .collect()
}

/// The paths the qemu profile's `[root] exclude` leaves out (exact paths or folders).
static PROFILE_EXCLUDES: LazyLock<Vec<String>> = LazyLock::new(|| {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles/qemu.toml");
    Profile::load(&path)
        .expect("the qemu profile")
        .exclude
        .into_iter()
        .map(|e| e.value)
        .collect()
});

/// What Crust's unpacking leaves out of an image (deb.rs: documentation but copyright
/// files, manual and info pages, translations, bug and lintian data, completions; and what
/// the profile excludes).
fn left_out(path: &str) -> bool {
    let docs = path.starts_with("usr/share/doc/") && !path.ends_with("/copyright");
    let excluded = PROFILE_EXCLUDES
        .iter()
        .any(|p| path == p || path.starts_with(&format!("{p}/")));
    docs || excluded
        || [
            "usr/share/doc-base/",
            "usr/share/man/",
            "usr/share/info/",
            "usr/share/locale/",
            "usr/share/lintian/",
            "usr/share/bug/",
            "usr/share/bash-completion/",
            "usr/share/zsh/",
            "usr/share/fish/",
        ]
        .iter()
        .any(|p| path.starts_with(p))
}

/// The files of a `.deb` as `dpkg-deb --contents` lists them, merged `/usr` applied.
fn deb_files(deb: &Path) -> BTreeSet<String> {
    let out = run_ok(Command::new("dpkg-deb").arg("--contents").arg(deb));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('d'))
        .filter_map(|l| {
            let path = &l[l.find(" ./")? + 3..];
            let path = path.split(" -> ").next().unwrap_or(path);
            let path = path.split(" link to ").next().unwrap_or(path);
            let merged = match path.split_once('/') {
                Some((top, rest))
                    if ["bin", "sbin", "lib", "lib32", "lib64", "libx32"].contains(&top) =>
                {
                    format!("usr/{top}/{rest}")
                }
                _ => path.to_owned(),
            };
            (!left_out(&merged)).then_some(merged)
        })
        .collect()
}

/// The Debian packages the SBOM places at `place`: name → (version, sha256).
fn debs_at(doc: &Document, place: &str) -> BTreeMap<String, (String, String)> {
    doc.entries
        .iter()
        .filter(|e| e.kind == "deb" && e.place == place)
        .map(|e| {
            (
                e.name.clone(),
                (
                    e.version.clone(),
                    e.sha256.clone().expect("a .deb checksum"),
                ),
            )
        })
        .collect()
}

fn cached_deb(sha256: &str) -> PathBuf {
    crust_builder::fetch::Cache::new(crust_builder::fetch::Cache::default_root())
        .deb_path(&sha256.parse().expect("a digest"))
}

/// The files under `prefix` of the image that no package of the SBOM at `place` ships;
/// fails if one of those packages ships none of the image's files.
fn unowned(
    doc: &Document,
    place: &str,
    listing: &str,
    prefix: &str,
) -> (BTreeSet<String>, BTreeMap<String, usize>) {
    let files = image_files(listing, prefix);
    let mut owned = BTreeSet::new();
    let mut counts = BTreeMap::new();
    for (name, (_, sha256)) in debs_at(doc, place) {
        let shipped = deb_files(&cached_deb(&sha256));
        let present = shipped.intersection(&files).count();
        assert!(
            present > 0 || shipped.is_empty(),
            "the SBOM lists {name} at {place}, but none of its files is in the image"
        );
        counts.insert(name, present);
        owned.extend(shipped);
    }
    (files.difference(&owned).cloned().collect(), counts)
}

#[test]
#[ignore = "needs the built image; run through `cargo xtask test`"]
fn debian_packages_are_what_the_root_and_service_images_hold() {
    let img = built_image();
    let doc = read::load(&img.dir).expect("the release's SBOM");
    let dir = tempfile::tempdir().unwrap();
    let root = root_image(&img, dir.path());
    let listing = run_ok(
        Command::new("unsquashfs")
            .args(["-lls", "-d", ""])
            .arg(&root),
    );
    let listing = String::from_utf8_lossy(&listing.stdout).into_owned();

    // The root: every file is a package's or Crust's own; every package has files there.
    let services = "usr/lib/crust/services/";
    let (rest, counts) = unowned(&doc, "root", &listing, "/");
    let crust_own = |p: &String| {
        p.starts_with(services)
            || [
                "usr/sbin/init",
                "usr/libexec/crust/observe",
                "usr/lib/os-release",
                "etc/os-release",
                "usr/share/crust/sbom.spdx.json",
                // What the init needs from the build: its clock floor, the user-data and
                // state policies.
                "usr/lib/clock-epoch",
                "usr/lib/crust/config-policy",
                "usr/lib/crust/state-policy",
                // The merged-/usr links.
                "bin",
                "sbin",
                "lib",
                "lib64",
            ]
            .contains(&p.as_str())
    };
    let strays: Vec<_> = rest.iter().filter(|p| !crust_own(p)).collect();
    assert!(
        strays.is_empty(),
        "files in the root that no package of the SBOM ships: {strays:?}"
    );
    eprintln!("root: {counts:?}");

    // The web service's image: its files are busybox-static's, the profile's start script
    // and the bind-mount targets Crust makes (service.rs).
    let (rest, counts) = unowned(
        &doc,
        "service-web",
        &listing,
        "/usr/lib/crust/services/web/rootfs/",
    );
    let strays: Vec<_> = rest
        .iter()
        .filter(|p| {
            ![
                "srv/web/start",
                "etc/resolv.conf",
                "etc/hosts",
                "etc/hostname",
                "bin",
                "sbin",
                "lib",
                "lib64",
            ]
            .contains(&p.as_str())
        })
        .collect();
    assert!(
        strays.is_empty(),
        "files in the web image that no package of the SBOM ships: {strays:?}"
    );
    eprintln!("service-web: {counts:?}");

    // And they are the lock's packages of each role, nothing more.
    let profile = Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles/qemu.lock");
    let lock = Lock::read(&profile).expect("lock").expect("the qemu lock");
    let locked = |roles: &[Role], service: Option<&str>| -> BTreeMap<String, (String, String)> {
        lock.packages
            .iter()
            .filter(|p| roles.contains(&p.role) && p.service.as_deref() == service)
            .map(|p| (p.name.clone(), (p.version.clone(), p.sha256.clone())))
            .collect()
    };
    assert_eq!(debs_at(&doc, "root"), locked(&[Role::Root], None));
    assert_eq!(
        debs_at(&doc, "boot"),
        locked(&[Role::Kernel, Role::Boot], None)
    );
    let kernel = &img.manifest.kernel_release;
    assert!(
        debs_at(&doc, "boot")
            .keys()
            .any(|name| name == &format!("linux-image-{kernel}")),
        "the SBOM's boot set has no linux-image-{kernel}"
    );
    assert_eq!(
        debs_at(&doc, "service-web"),
        locked(&[Role::Service], Some("web"))
    );
    let places: BTreeSet<&str> = doc
        .entries
        .iter()
        .filter(|e| e.kind == "deb")
        .map(|e| e.place.as_str())
        .collect();
    assert_eq!(places, BTreeSet::from(["boot", "root", "service-web"]));
}

/// `cargo tree`'s crates for the init (`name version`), run here independently.
fn cargo_tree(target: &str) -> BTreeSet<String> {
    let out = run_ok(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["tree", "--locked", "-e", "normal", "--prefix", "none"])
            .args(["--format", "{p}", "-p", "crust-init", "-p", "crust-observe"])
            .args(["--target", target])
            .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("..")),
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some(format!("{} {}", w.next()?, w.next()?.strip_prefix('v')?))
        })
        .collect()
}

/// `cargo metadata`'s resolve walked from the init and the observability agent through
/// normal dependencies.
fn metadata_normal(target: &str) -> BTreeMap<String, Option<String>> {
    let out = run_ok(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["metadata", "--locked", "--format-version", "1"])
            .args(["--filter-platform", target])
            .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("..")),
    );
    let m: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
    let packages: BTreeMap<&str, &serde_json::Value> = m["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p))
        .collect();
    let nodes: BTreeMap<&str, &serde_json::Value> = m["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["id"].as_str().unwrap(), n))
        .collect();
    let start = |name: &str| {
        packages
            .iter()
            .find(|(_, p)| p["name"] == name)
            .map(|(id, _)| *id)
            .unwrap_or_else(|| panic!("{name}"))
    };
    let mut seen = BTreeSet::new();
    let mut stack = vec![start("crust-init"), start("crust-observe")];
    while let Some(id) = stack.pop() {
        if !seen.insert(id) {
            continue;
        }
        for d in nodes[id]["deps"].as_array().unwrap() {
            let normal = d["dep_kinds"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k["kind"].is_null());
            if normal {
                stack.push(d["pkg"].as_str().unwrap());
            }
        }
    }
    seen.iter()
        .map(|id| {
            let p = packages[id];
            (
                format!(
                    "{} {}",
                    p["name"].as_str().unwrap(),
                    p["version"].as_str().unwrap()
                ),
                p["source"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

#[test]
#[ignore = "needs the built image; run through `cargo xtask test`"]
fn init_crates_are_what_cargo_compiles_for_its_target() {
    let img = built_image();
    let doc = read::load(&img.dir).expect("the release's SBOM");
    let target = crust_tests::init_target();
    let listed: BTreeSet<String> = doc
        .entries
        .iter()
        .filter(|e| e.kind == "cargo")
        .map(|e| format!("{} {}", e.name, e.version))
        .collect();
    let compiled = cargo_tree(&target);
    assert_eq!(listed, compiled, "the SBOM's crates are not cargo tree's");
    // cargo metadata's resolve unifies features over the whole workspace: it holds all of
    // these, and some crates only the builder's features pull in, which the init never
    // compiles.
    let resolve = metadata_normal(&target);
    let outside: Vec<_> = listed
        .iter()
        .filter(|c| !resolve.contains_key(*c))
        .collect();
    assert!(
        outside.is_empty(),
        "crates outside cargo metadata's resolve: {outside:?}"
    );
    let unified: Vec<_> = resolve.keys().filter(|c| !listed.contains(*c)).collect();
    eprintln!(
        "{} crates (the init and {} more); cargo metadata's resolve also has, through \
         workspace feature unification only: {unified:?}",
        listed.len(),
        listed.len() - 1
    );
    // Checksums are Cargo.lock's, for every registry crate; the init's is its binary's.
    let lock: toml_lock::Lock = toml_lock::read();
    for e in doc
        .entries
        .iter()
        .filter(|e| e.kind == "cargo" && e.name != "crust-init" && e.name != "crust-observe")
    {
        let key = format!("{} {}", e.name, e.version);
        let from_registry = resolve.get(&key).cloned().flatten().is_some();
        assert_eq!(
            e.sha256,
            lock.get(&key).cloned().flatten(),
            "{key}: checksum"
        );
        assert_eq!(
            e.sha256.is_some(),
            from_registry,
            "{key}: checksum presence"
        );
    }
    // The init itself is contained by the root and the boot set; linked crates by the init.
    let init = doc
        .entries
        .iter()
        .find(|e| e.kind == "cargo" && e.name == "crust-init")
        .expect("the init");
    assert_eq!(init.place, "boot,root");
    let binary = std::fs::read(crust_tests::init_binary()).expect("the init");
    assert_eq!(
        init.sha256.as_deref(),
        Some(crust_format::Digest::of(&binary).to_hex().as_str())
    );
    assert!(
        doc.entries
            .iter()
            .any(|e| e.name == "serde_derive" && e.place == "init"),
        "macro crates are build dependencies of the init"
    );
    // The observability agent is the root's; the crates it shares with the init (all of
    // them today, rustls included) are listed once.
    let observe = doc
        .entries
        .iter()
        .find(|e| e.kind == "cargo" && e.name == "crust-observe")
        .expect("the observability agent");
    assert_eq!(observe.place, "root");
    let agent = crust_tests::observe_program().expect("the agent").path;
    let binary = std::fs::read(agent).expect("the agent's binary");
    assert_eq!(
        observe.sha256.as_deref(),
        Some(crust_format::Digest::of(&binary).to_hex().as_str())
    );
    let rustls: Vec<_> = doc.entries.iter().filter(|e| e.name == "rustls").collect();
    assert_eq!(
        rustls.len(),
        1,
        "rustls, the init's and the agent's: {rustls:?}"
    );
    let nix: Vec<_> = doc.entries.iter().filter(|e| e.name == "nix").collect();
    assert_eq!(nix.len(), 1, "a crate both use is one component: {nix:?}");
}

/// `Cargo.lock`'s checksums by `name version`, read with a plain TOML scan.
mod toml_lock {
    use std::collections::BTreeMap;

    pub type Lock = BTreeMap<String, Option<String>>;

    pub fn read() -> Lock {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.lock");
        let text = std::fs::read_to_string(path).expect("Cargo.lock");
        let mut lock = Lock::new();
        for block in text.split("[[package]]").skip(1) {
            let field = |k: &str| {
                block.lines().find_map(|l| {
                    l.strip_prefix(&format!("{k} = \""))
                        .and_then(|v| v.strip_suffix('"'))
                        .map(str::to_owned)
                })
            };
            let (Some(name), Some(version)) = (field("name"), field("version")) else {
                continue;
            };
            lock.insert(format!("{name} {version}"), field("checksum"));
        }
        lock
    }
}

#[test]
#[ignore = "needs the built image; run through `cargo xtask test`"]
fn bundle_carries_the_release_document_and_the_root_the_same_packages() {
    let img = built_image();
    let release = std::fs::read(img.dir.join(outputs::SBOM_SPDX)).expect("release SBOM");
    let bundle = crust_builder::bundle::read_sbom(&img.dir.join(outputs::BUNDLE))
        .expect("the bundle's sbom part");
    assert!(
        bundle == release,
        "the bundle's SBOM differs from sbom.spdx.json"
    );
    let dir = tempfile::tempdir().unwrap();
    let root = root_image(&img, dir.path());
    let inner = read::load(&root_copy(&root, dir.path())).expect("the root's copy");
    let outer = read::parse(&release, "release").expect("the release's copy");
    assert_eq!(inner.entries, outer.entries);
    assert_eq!(inner.root_hash, None);
    assert_eq!(
        outer.root_hash.as_deref(),
        Some(img.manifest.verity.root_hash.to_hex().as_str())
    );
    assert!(read::diff(&inner, &outer).is_empty());
}

#[test]
#[ignore = "needs the init built by `cargo xtask test` (two builds)"]
fn same_inputs_same_sbom_and_one_more_package_is_the_only_difference() {
    let img = built_image();
    let profiles = crust_tests::profiles_copy();
    let dir = profiles.path();
    // The built image's inputs again (the same development key): the same SBOM bytes.
    let keys = img.dir.parent().expect("target/crust").join("keys");
    let again = crust_builder::build::build(&crust_builder::build::BuildRequest {
        profile: dir.join("qemu.toml"),
        init: crust_tests::init_binary(),
        out_dir: dir.join("out-qemu"),
        dev_key_dir: keys.clone(),
        cache: crust_builder::fetch::Cache::new(crust_builder::fetch::Cache::default_root()),
        locked: true,
        source_date_epoch: None,
        init_crates: Some(crust_tests::init_crates()),
        observe: crust_tests::observe_program(),
        extras: Default::default(),
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("steps: {:?}", again.steps);
    for name in [outputs::SBOM_SPDX, outputs::SBOM_CYCLONEDX] {
        let a = std::fs::read(img.dir.join(name)).expect("built SBOM");
        let b = std::fs::read(dir.join("out-qemu").join(name)).expect("rebuilt SBOM");
        assert!(
            a == b,
            "{name} differs between two builds of the same inputs"
        );
    }

    // A variant with busybox-static in the root as well, its lock the qemu lock plus that
    // package (as pinned for the web service: no other package moves).
    std::fs::write(
        dir.join("variant.toml"),
        "include = \"qemu.toml\"\n[root]\npackages = [\"busybox-static\"]\n",
    )
    .unwrap();
    let mut lock = Lock::read(&dir.join("qemu.lock")).unwrap().unwrap();
    let busybox = lock
        .packages
        .iter()
        .find(|p| p.name == "busybox-static")
        .expect("busybox-static in the qemu lock")
        .clone();
    lock.inputs.packages.push("busybox-static".into());
    lock.inputs.packages.sort();
    lock.packages.push(crust_builder::lock::LockedPackage {
        role: Role::Root,
        service: None,
        ..busybox.clone()
    });
    lock.packages
        .sort_by(|a, b| (a.role, &a.service, &a.name).cmp(&(b.role, &b.service, &b.name)));
    lock.write(&dir.join("variant.lock")).unwrap();
    let variant = build_profile(dir, "variant", true);
    let new = read::load(variant.image.parent().unwrap()).expect("the variant's SBOM");
    let old = read::load(&img.dir).expect("the built SBOM");
    let changes = read::diff(&old, &new);
    let shown: Vec<String> = changes.iter().map(ToString::to_string).collect();
    eprintln!("sbom diff:\n{}", shown.join("\n"));
    assert_eq!(changes.len(), 1, "{shown:?}");
    match &changes[0] {
        Change::Added(e) => {
            assert_eq!(
                (e.kind.as_str(), e.name.as_str(), e.place.as_str()),
                ("deb", "busybox-static", "root")
            );
            assert_eq!(e.version, busybox.version);
        }
        other => panic!("expected busybox-static added to the root, got {other}"),
    }
    // `sbom query` finds it in both places of the variant, in one of the old release.
    assert_eq!(read::query(&new, "busybox-static").len(), 2);
    assert_eq!(read::query(&old, "busybox-static").len(), 1);
    // The bundle of the variant reads back the same.
    let bundled = read::load(&variant.image.parent().unwrap().join(outputs::BUNDLE)).unwrap();
    assert_eq!(bundled.entries, new.entries);
}
