//! Container images: OCI image layouts read into a [`Tree`], and registry images fetched
//! into the cache as layouts.
//!
//! A layout is read by the book: `index.json` names a manifest (by its
//! `org.opencontainers.image.ref.name` tag, or the only one; an image index is followed to
//! its linux/amd64 entry), the manifest names the config and the layers, every blob is
//! checked against its digest, and layers are applied in order with their whiteouts
//! (`.wh.<name>` deletes a path of the layers below, `.wh..wh..opq` empties a directory).
//!
//! Registries are spoken to by `skopeo` (Debian package `skopeo`), as apt is used for
//! packages: the lock pins an image by the digest `skopeo inspect` reports, and a build
//! copies exactly that digest into a layout in the cache, keyed by it.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use crust_format::Digest;
use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};

use crate::deb;
use crate::tree::{Entry, Tree};

/// What an image says about running it (the parts a runtime bundle uses).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
    /// `Env`, as `KEY=value`.
    pub env: Vec<String>,
    /// `WorkingDir`.
    pub workdir: Option<String>,
    /// `User`, when numeric.
    pub user: Option<(u32, u32)>,
    /// The digest of the image manifest it was read from (`sha256:…`), for the SBOM.
    pub digest: Option<String>,
    /// The `org.opencontainers.image.vendor` label, for the SBOM's supplier.
    pub vendor: Option<String>,
}

/// A registry image reference: `host[:port]/path[:tag][@sha256:…]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// Registry host (and port).
    pub registry: String,
    /// Repository path.
    pub repository: String,
    /// Tag, if any.
    pub tag: Option<String>,
    /// Digest, if any.
    pub digest: Option<String>,
}

impl Reference {
    /// Parses a reference; the registry host must be explicit (no implied Docker Hub).
    pub fn parse(s: &str) -> Result<Self, String> {
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) if d.starts_with("sha256:") && d.len() == 71 => (r, Some(d.to_owned())),
            Some(_) => return Err(format!("{s:?}: a digest must be sha256:<64 hex digits>")),
            None => (s, None),
        };
        let (registry, path) = rest
            .split_once('/')
            .filter(|(host, _)| host.contains('.') || host.contains(':') || *host == "localhost")
            .ok_or_else(|| {
                format!("{s:?} must name its registry host, e.g. registry.example.com/name:tag")
            })?;
        let (repository, tag) = match path.rsplit_once(':') {
            Some((repo, tag)) if !tag.contains('/') => (repo, Some(tag.to_owned())),
            _ => (path, None),
        };
        if repository.is_empty() {
            return Err(format!("{s:?} has no repository"));
        }
        Ok(Self {
            registry: registry.to_owned(),
            repository: repository.to_owned(),
            tag,
            digest,
        })
    }

    /// Plain HTTP, as registries on this machine are run (`localhost`, `127.0.0.1`).
    pub fn is_local(&self) -> bool {
        let host = self.registry.split(':').next().unwrap_or("");
        host == "localhost" || host == "127.0.0.1"
    }

    /// The reference pinned to `digest`.
    pub fn pinned(&self, digest: &str) -> String {
        format!("{}/{}@{digest}", self.registry, self.repository)
    }
}

fn skopeo(args: &[&str]) -> Result<Vec<u8>> {
    let out = Command::new("skopeo")
        .args(args)
        .output()
        .context("cannot run skopeo; install it with `apt-get install skopeo`")?;
    if !out.status.success() {
        bail!(
            "skopeo {}: {}",
            args.first().unwrap_or(&""),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

/// The digest a registry currently serves for `reference` (what a lock pins).
pub fn resolve_digest(reference: &str) -> Result<String> {
    let r = Reference::parse(reference).map_err(anyhow::Error::msg)?;
    if let Some(d) = &r.digest {
        return Ok(d.clone());
    }
    let mut args = vec!["inspect", "--raw"];
    if r.is_local() {
        args.push("--tls-verify=false");
    }
    let target = format!("docker://{reference}");
    args.push(&target);
    let manifest = skopeo(&args).with_context(|| format!("cannot look up {reference}"))?;
    Ok(format!("sha256:{}", Digest::of(&manifest)))
}

/// Copies the image `reference@digest` into the cache (once) and returns its layout folder.
pub fn pull(cache_root: &Path, reference: &str, digest: &str) -> Result<PathBuf> {
    let r = Reference::parse(reference).map_err(anyhow::Error::msg)?;
    let hex = digest.trim_start_matches("sha256:");
    let dir = cache_root.join("oci").join(hex);
    if dir.join("index.json").is_file() {
        return Ok(dir);
    }
    let scratch = cache_root.join("oci").join(format!(".{hex}.partial"));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch)?;
    let src = format!("docker://{}", r.pinned(digest));
    let dest = format!("oci:{}:image", scratch.display());
    let mut args = vec![
        "copy",
        "--quiet",
        "--override-os",
        "linux",
        "--override-arch",
        "amd64",
    ];
    if r.is_local() {
        args.push("--src-tls-verify=false");
    }
    args.push(&src);
    args.push(&dest);
    skopeo(&args).with_context(|| format!("cannot pull {reference}@{digest}"))?;
    std::fs::rename(&scratch, &dir)?;
    Ok(dir)
}

fn blob_path(layout: &Path, digest: &str) -> Result<PathBuf> {
    let (alg, hex) = digest
        .split_once(':')
        .with_context(|| format!("bad digest {digest:?}"))?;
    if alg != "sha256" || hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("unsupported digest {digest:?} (only sha256)");
    }
    Ok(layout.join("blobs").join(alg).join(hex))
}

/// Reads a blob and checks it against its digest.
fn read_blob(layout: &Path, digest: &str) -> Result<Vec<u8>> {
    let path = blob_path(layout, digest)?;
    let data = std::fs::read(&path)
        .with_context(|| format!("{}: missing blob {digest}", layout.display()))?;
    let actual = format!("sha256:{}", Digest::of(&data));
    if actual != digest {
        bail!(
            "{}: blob {digest} is corrupt (its content hashes to {actual})",
            layout.display()
        );
    }
    Ok(data)
}

const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// The manifest of the image `tag` (or the only image) in the layout, and its digest.
fn find_manifest(layout: &Path, tag: Option<&str>) -> Result<(String, ImageManifest)> {
    let index_path = layout.join("index.json");
    let index = ImageIndex::from_file(&index_path)
        .with_context(|| format!("{} is not an OCI image index", index_path.display()))?;
    let candidates: Vec<_> = index
        .manifests()
        .iter()
        .filter(|d| match tag {
            Some(t) => d
                .annotations()
                .as_ref()
                .and_then(|a| a.get(REF_NAME))
                .is_some_and(|n| n == t),
            None => true,
        })
        .collect();
    let descriptor = match (candidates.as_slice(), tag) {
        ([one], _) => *one,
        ([], Some(t)) => bail!("{}: no image is tagged {t:?}", layout.display()),
        ([], None) => bail!("{}: the index lists no image", layout.display()),
        (_, _) => bail!("{}: several images; name one with `tag`", layout.display()),
    };
    let mut digest = descriptor.digest().to_string();
    for _ in 0..4 {
        let blob = read_blob(layout, &digest)?;
        // An image index (multi-platform): follow its linux/amd64 entry.
        if let Ok(nested) = serde_json::from_slice::<ImageIndex>(&blob)
            && serde_json::from_slice::<serde_json::Value>(&blob)?
                .get("manifests")
                .is_some()
        {
            let entry = nested
                .manifests()
                .iter()
                .find(|d| {
                    d.platform().as_ref().is_some_and(|p| {
                        p.os().to_string() == "linux" && p.architecture().to_string() == "amd64"
                    })
                })
                .with_context(|| {
                    format!("{}: no linux/amd64 image in the index", layout.display())
                })?;
            digest = entry.digest().to_string();
            continue;
        }
        let manifest = serde_json::from_slice(&blob)
            .with_context(|| format!("{}: bad image manifest {digest}", layout.display()))?;
        return Ok((digest, manifest));
    }
    bail!("{}: image indexes nest too deeply", layout.display())
}

/// Reads the image `tag` (or the only one) of an OCI image layout: its file system and
/// configuration.
pub fn read_layout(layout: &Path, tag: Option<&str>) -> Result<(Tree, ImageConfig)> {
    let (digest, manifest) = find_manifest(layout, tag)?;
    let config_blob = read_blob(layout, manifest.config().digest().as_ref())?;
    let config: ImageConfiguration = serde_json::from_slice(&config_blob)
        .with_context(|| format!("{}: bad image configuration", layout.display()))?;
    let mut tree = Tree::new();
    for layer in manifest.layers() {
        let blob = read_blob(layout, layer.digest().as_ref())?;
        apply_layer(&mut tree, &blob)
            .with_context(|| format!("{}: layer {}", layout.display(), layer.digest()))?;
    }
    let c = config.config().clone().unwrap_or_default();
    let image = ImageConfig {
        entrypoint: c.entrypoint().clone().unwrap_or_default(),
        cmd: c.cmd().clone().unwrap_or_default(),
        env: c.env().clone().unwrap_or_default(),
        workdir: c.working_dir().clone().filter(|w| !w.is_empty()),
        user: c.user().as_deref().and_then(numeric_user),
        digest: Some(digest),
        vendor: c
            .labels()
            .as_ref()
            .and_then(|l| l.get("org.opencontainers.image.vendor"))
            .cloned(),
    };
    Ok((tree, image))
}

fn numeric_user(u: &str) -> Option<(u32, u32)> {
    match u.split_once(':') {
        Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
        None => u.parse().ok().map(|n| (n, n)),
    }
}

/// Applies one layer (tar, gzip or zstd, told apart by their magic numbers) to `tree`.
pub fn apply_layer(tree: &mut Tree, blob: &[u8]) -> Result<()> {
    let stream: Box<dyn Read + '_> = match blob {
        // Parallel compressors (umoci's pgzip) write several gzip members one after another.
        [0x1f, 0x8b, ..] => Box::new(flate2::read::MultiGzDecoder::new(blob)),
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Box::new(zstd::stream::read::Decoder::new(blob)?),
        _ => Box::new(blob),
    };
    // Whiteouts hide what lower layers put there, so they are applied first; the layer's
    // own entries then go on top.
    let mut entries = Vec::new();
    deb::walk_tar(stream, |path, meta, data| {
        let name = path.rsplit('/').next().unwrap_or(path);
        let parent = path.rsplit_once('/').map_or("", |(p, _)| p);
        if name == ".wh..wh..opq" {
            let children: Vec<String> = tree.children(parent).map(|(p, _)| p.to_owned()).collect();
            for child in children {
                tree.remove_all(&child);
            }
        } else if let Some(hidden) = name.strip_prefix(".wh.") {
            let target = if parent.is_empty() {
                hidden.to_owned()
            } else {
                format!("{parent}/{hidden}")
            };
            tree.remove_all(&target);
        } else {
            let mut buf = Vec::new();
            data.read_to_end(&mut buf)?;
            entries.push((path.to_owned(), meta.clone(), buf));
        }
        Ok(())
    })?;
    for (path, meta, data) in entries {
        let Some(node) = deb::node_for(tree, &meta, &mut data.as_slice(), |p| p.to_owned())? else {
            continue;
        };
        // A later layer may replace a directory with a file or the other way round.
        if let Some(existing) = tree.get(&path)
            && (existing.node == crate::tree::Node::Dir) != (node == crate::tree::Node::Dir)
        {
            tree.remove_all(&path);
        }
        tree.insert(
            &path,
            Entry {
                node,
                mode: meta.mode,
                uid: meta.uid,
                gid: meta.gid,
            },
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_and_refuse_implicit_registries() {
        let r = Reference::parse("localhost:5000/demo/web:1.0").unwrap();
        assert_eq!(r.registry, "localhost:5000");
        assert_eq!(r.repository, "demo/web");
        assert_eq!(r.tag.as_deref(), Some("1.0"));
        assert!(r.is_local());
        let d = format!("registry.example.com/x@sha256:{}", "a".repeat(64));
        assert_eq!(Reference::parse(&d).unwrap().digest.unwrap().len(), 71);
        assert!(Reference::parse("busybox:latest").is_err());
        assert!(Reference::parse("registry.example.com/x@sha256:abc").is_err());
    }

    fn tar_layer(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            h.set_size(data.len() as u64);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, path, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn layers_apply_in_order_with_whiteouts() {
        let mut t = Tree::new();
        apply_layer(
            &mut t,
            &tar_layer(&[("etc/a", b"1"), ("etc/b", b"2"), ("opt/x/y", b"3")]),
        )
        .unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(
            &mut gz,
            &tar_layer(&[
                ("etc/.wh.a", b""),
                ("opt/x/.wh..wh..opq", b""),
                ("opt/x/z", b"4"),
                ("etc/b", b"5"),
            ]),
        )
        .unwrap();
        apply_layer(&mut t, &gz.finish().unwrap()).unwrap();
        assert!(t.get("etc/a").is_none(), "whiteout removes a lower file");
        assert_eq!(t.get("etc/b").unwrap().data(), Some(&b"5"[..]));
        assert!(
            t.get("opt/x/y").is_none(),
            "opaque directory hides lower content"
        );
        assert_eq!(t.get("opt/x/z").unwrap().data(), Some(&b"4"[..]));
    }

    #[test]
    fn gzip_layers_of_several_members_are_read_whole() {
        // Parallel gzip (umoci's pgzip) cuts one tar stream into several gzip members.
        let tar = tar_layer(&[("a", &[1u8; 3000][..]), ("b", b"2")]);
        let mut layer = Vec::new();
        for piece in tar.chunks(1024) {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            std::io::Write::write_all(&mut gz, piece).unwrap();
            layer.extend(gz.finish().unwrap());
        }
        let mut t = Tree::new();
        apply_layer(&mut t, &layer).unwrap();
        assert_eq!(t.get("a").unwrap().data().map(|d| d.len()), Some(3000));
        assert_eq!(t.get("b").unwrap().data(), Some(&b"2"[..]));
    }
}
