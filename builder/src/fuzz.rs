//! Entry points for fuzzing the builder's readers of files it did not write: profiles, lock
//! files, Debian packages and OCI image layouts. The builder never calls them.
//!
//! Each function feeds one reader arbitrary bytes through the same functions a build uses,
//! and returns nothing: a fuzzer looks for panics, hangs and runaway allocations. Where a
//! format has a writer, what was read is written out and read back, and must come back the
//! same. The cargo-fuzz targets in `fuzz/fuzz_targets/` call these, and
//! `tests/tests/fuzz_corpus.rs` replays the committed corpus through them on the stable
//! toolchain (docs/ROBUSTNESS.md).

use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest};

use crate::deb::{self, Excludes};
use crate::lock::{Inputs, Lock, Role};
use crate::profile::Profile;
use crate::tree::Tree;

/// A profile's text as the file `dir/fuzz.toml` (`dir` holds what it may include, such as
/// the repository's `profiles/`), read and checked as `cargo xtask build` reads a profile:
/// TOML layers, includes from disk, merge, every table resolved and validated, services
/// checked; then what a build derives from it first (the lock's inputs, the kernel
/// command line).
pub fn profile(dir: &Path, data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(profile) = Profile::from_text(&dir.join("fuzz.toml"), text) {
        let inputs = Inputs::of(&profile);
        let _ = inputs.describe_change(&Inputs {
            packages: Vec::new(),
            ..inputs.clone()
        });
        let _ = (profile.kernel_cmdline(), profile.lock_path());
    }
}

/// A lock file's text, read and checked as a build reads `profiles/<name>.lock` (TOML,
/// format version, every digest), then used as a build uses it (packages by role, apt's
/// `name=version`, digests, the inputs compared). A lock that reads is written out and
/// must read back the same.
pub fn lock(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(lock) = Lock::from_text(Path::new("fuzz.lock"), text) else {
        return;
    };
    for role in [Role::Root, Role::Kernel, Role::Boot, Role::Service] {
        let _ = lock.single(role);
        for p in lock.with_role(role) {
            let _ = (p.apt_spec(), p.digest(), p.to_string());
        }
    }
    let _ = lock.inputs.describe_change(&Inputs {
        packages: Vec::new(),
        ..lock.inputs.clone()
    });
    let written = toml::to_string(&lock).expect("a lock that was read can be written");
    let again = Lock::from_text(Path::new("fuzz.lock"), &written);
    assert_eq!(
        again.as_ref().ok(),
        Some(&lock),
        "a lock read back from its own text differs: {again:?}"
    );
}

/// A `.deb` file (an `ar` archive whose `data.tar`, `data.tar.xz` or `data.tar.zst` holds
/// the files), unpacked into a tree as the build unpacks a package from the cache: paths
/// normalised and folded into `/usr`, exclusions, hard links, then the merged-`/usr` links.
pub fn deb(data: &[u8]) {
    let Ok(mut file) = tempfile::NamedTempFile::new_in(scratch_dir()) else {
        return;
    };
    if std::io::Write::write_all(&mut file, data).is_err() {
        return;
    }
    let mut tree = Tree::new();
    if deb::unpack(
        &mut tree,
        file.path(),
        &Excludes::new(["/etc/cron.d".to_owned()]),
    )
    .is_ok()
    {
        let _ = deb::add_merged_usr_links(&mut tree);
    }
}

/// Where scratch files go: `/dev/shm` (memory) when there is one, else the temporary
/// folder. A fuzzer writes files at every execution; on a busy disk that is most of the
/// time it takes.
pub fn scratch_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        match tempfile::tempdir_in(shm) {
            Ok(_) => shm.to_path_buf(),
            Err(_) => std::env::temp_dir(),
        }
    })
    .clone()
}

/// A JSON document of an OCI image layout (the image index `index.json`, an image
/// manifest or an image configuration), read by the builder's layout reader in each of
/// those three places of the layout in `template` (a real one, made by umoci), the other
/// documents and the layers being the template's: digests and sizes that point at the
/// document are made to fit it, as a layout's writer would. The reader checks digests,
/// follows nested indexes, applies the layers and reads the configuration.
pub fn oci_layout(template: &Path, data: &[u8]) {
    let Ok(layout) = Template::read(template) else {
        return;
    };
    let Ok(scratch) = layout.scratch() else {
        return;
    };
    // 1. The document as index.json.
    let _ = layout.try_with(scratch.path(), data, &[]);
    // 2. As the image manifest (or a nested index) the index points at.
    let manifest = layout.descriptor_for(&layout.manifest_descriptor, data);
    let index = layout.index_with(manifest);
    let _ = layout.try_with(scratch.path(), &index, &[data]);
    // 3. As the image configuration the manifest points at.
    let Ok(mut m) = serde_json::from_slice::<ImageManifest>(&layout.manifest) else {
        return;
    };
    m.set_config(layout.descriptor_for(m.config(), data));
    let Ok(manifest) = serde_json::to_vec(&m) else {
        return;
    };
    let index = layout.index_with(layout.descriptor_for(&layout.manifest_descriptor, &manifest));
    let _ = layout.try_with(scratch.path(), &index, &[&manifest, data]);
}

/// The template layout: its files, its index's one manifest descriptor, that manifest.
struct Template<'a> {
    dir: &'a Path,
    index: ImageIndex,
    manifest_descriptor: Descriptor,
    manifest: Vec<u8>,
}

impl<'a> Template<'a> {
    fn read(dir: &'a Path) -> anyhow::Result<Self> {
        let index = ImageIndex::from_file(dir.join("index.json"))?;
        let manifest_descriptor = index
            .manifests()
            .first()
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("the template lists no image"))?;
        let (_, hex) = manifest_descriptor
            .digest()
            .as_ref()
            .split_once(':')
            .ok_or_else(|| anyhow::anyhow!("bad digest"))?;
        let manifest = std::fs::read(dir.join("blobs/sha256").join(hex))?;
        Ok(Self {
            dir,
            index,
            manifest_descriptor,
            manifest,
        })
    }

    /// `descriptor`, pointing at `blob` instead.
    fn descriptor_for(&self, descriptor: &Descriptor, blob: &[u8]) -> Descriptor {
        let mut d = descriptor.clone();
        let digest = format!("sha256:{}", crust_format::Digest::of(blob));
        if let Ok(digest) = digest.parse() {
            d.set_digest(digest);
        }
        d.set_size(blob.len() as u64);
        d
    }

    /// The template's index, listing `manifest` instead of its own.
    fn index_with(&self, manifest: Descriptor) -> Vec<u8> {
        let mut index = self.index.clone();
        index.set_manifests(vec![manifest]);
        serde_json::to_vec(&index).unwrap_or_default()
    }

    /// A copy of the template layout in a temporary folder (its blobs linked, or copied).
    fn scratch(&self) -> anyhow::Result<tempfile::TempDir> {
        let dir = tempfile::tempdir_in(scratch_dir())?;
        let sha = dir.path().join("blobs/sha256");
        std::fs::create_dir_all(&sha)?;
        for entry in std::fs::read_dir(self.dir.join("blobs/sha256"))? {
            let entry = entry?;
            let to = sha.join(entry.file_name());
            if std::fs::hard_link(entry.path(), &to).is_err() {
                std::fs::copy(entry.path(), &to)?;
            }
        }
        std::fs::copy(self.dir.join("oci-layout"), dir.path().join("oci-layout"))?;
        Ok(dir)
    }

    /// The layout in `dir` with `index` as index.json and `blobs` added, read as a build
    /// reads a service's `image.layout` (by tag, then without one); the added blobs are
    /// removed again.
    fn try_with(&self, dir: &Path, index: &[u8], blobs: &[&[u8]]) -> anyhow::Result<()> {
        let sha = dir.join("blobs/sha256");
        let mut added = Vec::new();
        for blob in blobs {
            let path = sha.join(crust_format::Digest::of(blob).to_hex());
            if !path.exists() {
                std::fs::write(&path, blob)?;
                added.push(path);
            }
        }
        std::fs::write(dir.join("index.json"), index)?;
        for tag in [Some("latest"), None] {
            if let Ok((tree, config)) = crate::oci::read_layout(dir, tag) {
                let _ = (tree.len(), config.entrypoint.len(), config.user);
            }
        }
        for path in added {
            std::fs::remove_file(path)?;
        }
        Ok(())
    }
}
