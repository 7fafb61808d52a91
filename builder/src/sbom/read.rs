//! Reading SBOMs back: the SPDX document of a release folder, an update bundle or a file,
//! its packages with where they sit, and the differences between two releases
//! (`cargo xtask sbom diff` and `query`).
//!
//! A package is anything with a purl; where it sits is the set of packages that CONTAIN it
//! (or that it is a BUILD_DEPENDENCY_OF), by SPDX id: `root`, `boot`, `service-web`, `init`.
//! Two releases' packages are the same package when type, name and place agree; a changed
//! version or checksum is a change. Signatures are not checked here (`cargo xtask verify`
//! checks a release, `publish` a bundle); the bundle's part digests are.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use crate::build::outputs;

/// One package of an SBOM.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Entry {
    /// The purl type: `deb`, `cargo`, `oci`, ….
    pub kind: String,
    /// The package name.
    pub name: String,
    /// Where it sits: the ids of what contains it, comma-separated (`root`, `init`).
    pub place: String,
    /// Its version.
    pub version: String,
    /// Its SHA-256, if the document gives one.
    pub sha256: Option<String>,
    /// For Debian packages, the source package (`name` or `name@version`), if it differs.
    pub source: Option<String>,
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} ({})",
            self.kind, self.name, self.version, self.place
        )?;
        if let Some(s) = &self.source {
            write!(f, " [source {s}]")?;
        }
        Ok(())
    }
}

/// An SBOM as read back.
#[derive(Debug, Clone)]
pub struct Document {
    /// Where it was read from (for messages).
    pub origin: String,
    /// The document's name.
    pub name: String,
    /// The described package: name and version (the image).
    pub image: (String, String),
    /// The image's root hash (release documents only).
    pub root_hash: Option<String>,
    /// Its packages, sorted by kind, name, place and version.
    pub entries: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDoc {
    spdx_version: String,
    name: String,
    #[serde(default)]
    packages: Vec<RawPackage>,
    #[serde(default)]
    relationships: Vec<RawRelationship>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawPackage {
    #[serde(rename = "SPDXID")]
    spdx_id: String,
    name: String,
    #[serde(default)]
    version_info: Option<String>,
    #[serde(default)]
    checksums: Vec<RawChecksum>,
    #[serde(default)]
    external_refs: Vec<RawRef>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawChecksum {
    algorithm: String,
    checksum_value: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRef {
    reference_type: String,
    reference_locator: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRelationship {
    spdx_element_id: String,
    relationship_type: String,
    related_spdx_element: String,
}

/// Reads the SBOM of `path`: a release folder (its `sbom.spdx.json`), an update bundle
/// (its `sbom` part) or an SPDX JSON file.
pub fn load(path: &Path) -> Result<Document> {
    let (bytes, origin) = if path.is_dir() {
        let file = path.join(outputs::SBOM_SPDX);
        if !file.is_file() {
            bail!(
                "{} has no {}: it is not a release folder made by a build with SBOMs \
                 (build it with `cargo xtask build`)",
                path.display(),
                outputs::SBOM_SPDX
            );
        }
        (
            std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?,
            file.display().to_string(),
        )
    } else {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        if bytes.starts_with(crust_format::bundle::MAGIC) {
            (
                crate::bundle::read_sbom(path)?,
                format!("{} (sbom part)", path.display()),
            )
        } else {
            (bytes, path.display().to_string())
        }
    };
    parse(&bytes, &origin)
}

/// Parses an SPDX 2.3 JSON document; `origin` names it in errors.
pub fn parse(bytes: &[u8], origin: &str) -> Result<Document> {
    let raw: RawDoc = serde_json::from_slice(bytes).with_context(|| {
        format!(
            "{origin} is not an SPDX JSON document (expected a release folder, an update \
             bundle or an .spdx.json file)"
        )
    })?;
    if raw.spdx_version != "SPDX-2.3" {
        bail!(
            "{origin} is {}, not SPDX-2.3: this reader knows SPDX 2.3 only",
            raw.spdx_version
        );
    }
    let by_id: BTreeMap<&str, &RawPackage> = raw
        .packages
        .iter()
        .map(|p| (p.spdx_id.as_str(), p))
        .collect();
    let described = raw
        .relationships
        .iter()
        .find(|r| r.spdx_element_id == "SPDXRef-DOCUMENT" && r.relationship_type == "DESCRIBES")
        .and_then(|r| by_id.get(r.related_spdx_element.as_str()))
        .with_context(|| format!("{origin} describes no package"))?;
    // Parents: who CONTAINS a package, or whom it is a BUILD_DEPENDENCY_OF.
    let mut parents: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for r in &raw.relationships {
        let (parent, child) = match r.relationship_type.as_str() {
            "CONTAINS" => (&r.spdx_element_id, &r.related_spdx_element),
            "CONTAINED_BY" | "BUILD_DEPENDENCY_OF" => (&r.related_spdx_element, &r.spdx_element_id),
            _ => continue,
        };
        parents
            .entry(child.as_str())
            .or_default()
            .push(parent.as_str());
    }
    let mut entries = Vec::new();
    for p in &raw.packages {
        let Some(purl) = p
            .external_refs
            .iter()
            .find(|r| r.reference_type == "purl")
            .map(|r| r.reference_locator.as_str())
        else {
            continue;
        };
        let kind = purl
            .strip_prefix("pkg:")
            .and_then(|rest| rest.split('/').next())
            .unwrap_or("unknown")
            .to_owned();
        let mut place: Vec<&str> = parents
            .get(p.spdx_id.as_str())
            .map(|v| {
                v.iter()
                    .map(|id| id.strip_prefix("SPDXRef-").unwrap_or(id))
                    .collect()
            })
            .unwrap_or_default();
        place.sort_unstable();
        place.dedup();
        entries.push(Entry {
            kind,
            name: p.name.clone(),
            place: if place.is_empty() {
                "-".into()
            } else {
                place.join(",")
            },
            version: p.version_info.clone().unwrap_or_default(),
            sha256: p
                .checksums
                .iter()
                .find(|c| c.algorithm == "SHA256")
                .map(|c| c.checksum_value.clone()),
            source: qualifier(purl, "upstream").map(|s| percent_decode(&s)),
        });
    }
    entries.sort();
    let root_hash = described
        .external_refs
        .iter()
        .find(|r| r.reference_type == super::spdx::ROOT_HASH_REF)
        .map(|r| r.reference_locator.clone());
    Ok(Document {
        origin: origin.to_owned(),
        name: raw.name,
        image: (
            described.name.clone(),
            described.version_info.clone().unwrap_or_default(),
        ),
        root_hash,
        entries,
    })
}

fn qualifier(purl: &str, key: &str) -> Option<String> {
    let query = purl.split_once('?')?.1;
    let query = query.split('#').next().unwrap_or(query);
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .map(str::to_owned)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(b) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One difference between two releases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Only the new release has it.
    Added(Entry),
    /// Only the old release has it.
    Removed(Entry),
    /// Both have it, with another version or checksum.
    Changed {
        /// As the old release has it.
        old: Entry,
        /// As the new release has it.
        new: Entry,
    },
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Added(e) => write!(f, "added    {e}"),
            Change::Removed(e) => write!(f, "removed  {e}"),
            Change::Changed { old, new } if old.version == new.version => write!(
                f,
                "changed  {} {} {} ({}): same version, other checksum",
                new.kind, new.name, new.version, new.place
            ),
            Change::Changed { old, new } => write!(
                f,
                "changed  {} {} {} -> {} ({})",
                new.kind, new.name, old.version, new.version, new.place
            ),
        }
    }
}

/// The packages added, removed and changed from `old` to `new`, in name order. A name
/// held in several versions at one place (two `syn`s) pairs equal versions first.
pub fn diff(old: &Document, new: &Document) -> Vec<Change> {
    type Key = (String, String, String);
    let group = |d: &Document| {
        let mut m: BTreeMap<Key, Vec<Entry>> = BTreeMap::new();
        for e in &d.entries {
            m.entry((e.kind.clone(), e.name.clone(), e.place.clone()))
                .or_default()
                .push(e.clone());
        }
        m
    };
    let (mut a, mut b) = (group(old), group(new));
    let mut keys: Vec<Key> = a.keys().chain(b.keys()).cloned().collect();
    keys.sort();
    keys.dedup();
    let mut changes = Vec::new();
    for key in keys {
        let mut olds = a.remove(&key).unwrap_or_default();
        let mut news = b.remove(&key).unwrap_or_default();
        // Identical entries are no change.
        olds.retain(|o| match news.iter().position(|n| n == o) {
            Some(i) => {
                news.remove(i);
                false
            }
            None => true,
        });
        // Same version, other checksum; then the rest paired in order.
        let mut rest_old = Vec::new();
        for o in olds {
            match news.iter().position(|n| n.version == o.version) {
                Some(i) => changes.push(Change::Changed {
                    old: o,
                    new: news.remove(i),
                }),
                None => rest_old.push(o),
            }
        }
        let mut news = news.into_iter();
        for o in rest_old {
            match news.next() {
                Some(n) => changes.push(Change::Changed { old: o, new: n }),
                None => changes.push(Change::Removed(o)),
            }
        }
        changes.extend(news.map(Change::Added));
    }
    changes
}

/// The packages of `doc` named `name`, or built from a Debian source package of that name.
pub fn query<'a>(doc: &'a Document, name: &str) -> Vec<&'a Entry> {
    doc.entries
        .iter()
        .filter(|e| {
            e.name == name
                || e.source
                    .as_deref()
                    .is_some_and(|s| s.split('@').next() == Some(name))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(entries: &[(&str, &str, &str, &str)]) -> Document {
        Document {
            origin: "test".into(),
            name: "test".into(),
            image: ("crust".into(), "0.1.0".into()),
            root_hash: None,
            entries: entries
                .iter()
                .map(|(kind, name, place, version)| Entry {
                    kind: (*kind).into(),
                    name: (*name).into(),
                    place: (*place).into(),
                    version: (*version).into(),
                    sha256: Some(format!("{name}{version}")),
                    source: None,
                })
                .collect(),
        }
    }

    #[test]
    fn diff_names_added_removed_and_changed_packages() {
        let old = doc(&[
            ("deb", "crun", "root", "1"),
            ("deb", "libc6", "root", "2.36-1"),
            ("cargo", "syn", "init", "2.0.1"),
            ("cargo", "syn", "init", "3.0.1"),
            ("deb", "busybox-static", "service-web", "1"),
        ]);
        let new = doc(&[
            ("deb", "crun", "root", "1"),
            ("deb", "libc6", "root", "2.36-2"),
            ("cargo", "syn", "init", "2.0.1"),
            ("cargo", "syn", "init", "3.0.2"),
            ("deb", "busybox-static", "root", "1"),
        ]);
        let changes: Vec<String> = diff(&old, &new).iter().map(ToString::to_string).collect();
        assert_eq!(
            changes,
            [
                "changed  cargo syn 3.0.1 -> 3.0.2 (init)",
                "added    deb busybox-static 1 (root)",
                "removed  deb busybox-static 1 (service-web)",
                "changed  deb libc6 2.36-1 -> 2.36-2 (root)",
            ]
        );
        assert!(diff(&new, &new).is_empty());
    }

    #[test]
    fn purl_qualifiers_decode() {
        assert_eq!(
            qualifier(
                "pkg:deb/debian/x@1?arch=amd64&upstream=busybox%401%3A1.35",
                "upstream"
            )
            .map(|s| percent_decode(&s))
            .as_deref(),
            Some("busybox@1:1.35")
        );
        assert_eq!(qualifier("pkg:cargo/x@1", "upstream"), None);
    }

    #[test]
    fn bad_documents_are_named() {
        let e = parse(b"{}", "x.json").unwrap_err().to_string();
        assert!(e.contains("x.json"), "{e}");
        let e = parse(br#"{"spdxVersion":"SPDX-2.2","name":"n"}"#, "y.json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("SPDX-2.3"), "{e}");
    }
}
