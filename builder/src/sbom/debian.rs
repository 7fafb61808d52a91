//! What an SBOM says about a Debian package, read from the `.deb` itself: its control
//! fields (source package, maintainer, homepage, summary, dependencies) and the licenses of
//! its machine-readable copyright file, `/usr/share/doc/<package>/copyright`.
//!
//! The control archive is small and read whole; the data archive is streamed until the
//! copyright file (or the symlink that stands for the package's documentation folder,
//! which Debian allows between packages of one source) turns up. That can mean
//! decompressing a whole kernel package, so [`read_cached`] keeps the facts in the package
//! cache, by the `.deb`'s digest and a digest of this reader's own source: a changed reader
//! reads every package again.

use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result, bail};
use crust_format::Digest;
use serde::{Deserialize, Serialize};

use super::license::{self, Declared, field, paragraphs};
use crate::deb;
use crate::fetch::{Cache, Deb};

/// The facts of one `.deb`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Facts {
    /// `Package`.
    pub package: String,
    /// `Version`.
    pub version: String,
    /// `Architecture`.
    pub architecture: String,
    /// The source package's name (`Source`, else the package's own).
    pub source: String,
    /// The source package's version (from `Source: name (version)`, else the package's).
    pub source_version: String,
    /// `Maintainer`.
    pub maintainer: Option<String>,
    /// `Homepage`.
    pub homepage: Option<String>,
    /// The first line of `Description`.
    pub summary: Option<String>,
    /// `Pre-Depends` and `Depends`: each a list of alternatives, by package name.
    pub depends: Vec<Vec<String>>,
    /// `Provides`, by name.
    pub provides: Vec<String>,
    /// The copyright file's licenses.
    pub copyright: Copyright,
}

/// What the package's copyright file says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Copyright {
    /// A DEP-5 file: these licenses.
    Declared(Declared),
    /// A copyright file that is not machine-readable.
    NotMachineReadable,
    /// The documentation folder is a symlink to another package's (of the same source).
    SameAs(String),
    /// No copyright file.
    Missing,
}

/// The facts of a verified `.deb`, from the cache (`<cache>/sbom/<reader>/<sha256>.json`)
/// or read and then kept there.
pub fn read_cached(cache: &Cache, deb: &Deb) -> Result<Facts> {
    let reader = Digest::of_parts([
        include_str!("debian.rs").as_bytes(),
        include_str!("license.rs").as_bytes(),
    ]);
    let path = cache
        .root()
        .join("sbom")
        .join(reader.short(16))
        .join(format!("{}.json", deb.package.sha256));
    if let Some(facts) = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Facts>(&b).ok())
    {
        return Ok(facts);
    }
    let facts = read(&deb.path)?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    crate::output::write_atomic(&path, &serde_json::to_vec(&facts)?)?;
    Ok(facts)
}

/// Reads the facts of the `.deb` at `path`.
pub fn read(path: &Path) -> Result<Facts> {
    let control = control_file(path)?;
    let para = paragraphs(&control)
        .into_iter()
        .next()
        .with_context(|| format!("{}: the control file is empty", path.display()))?;
    let get = |name: &str| field(&para, name).map(str::to_owned);
    let need = |name: &str| {
        get(name).with_context(|| format!("{}: the control file has no {name}", path.display()))
    };
    let package = need("Package")?;
    let version = need("Version")?;
    let (source, source_version) = match get("Source") {
        Some(s) => match s.split_once(' ') {
            Some((name, v)) => (
                name.to_owned(),
                v.trim()
                    .trim_start_matches('(')
                    .trim_end_matches(')')
                    .to_owned(),
            ),
            None => (s, version.clone()),
        },
        None => (package.clone(), version.clone()),
    };
    let mut depends = Vec::new();
    for name in ["Pre-Depends", "Depends"] {
        if let Some(list) = get(name) {
            depends.extend(relations(&list));
        }
    }
    let provides = get("Provides")
        .map(|p| relations(&p).into_iter().flatten().collect())
        .unwrap_or_default();
    let copyright = copyright(path, &package)?;
    Ok(Facts {
        architecture: need("Architecture")?,
        maintainer: get("Maintainer"),
        homepage: get("Homepage"),
        summary: get("Description").and_then(|d| d.lines().next().map(str::to_owned)),
        package,
        version,
        source,
        source_version,
        depends,
        provides,
        copyright,
    })
}

/// `a (>= 1) | b, c [amd64]` as `[[a, b], [c]]`: names only.
fn relations(list: &str) -> Vec<Vec<String>> {
    list.split(',')
        .map(|group| {
            group
                .split('|')
                .filter_map(|alt| {
                    let name = alt.split_whitespace().next()?;
                    // `name:any` (multi-arch) is the same package.
                    Some(name.split(':').next().unwrap_or(name).to_owned())
                })
                .collect::<Vec<_>>()
        })
        .filter(|g| !g.is_empty())
        .collect()
}

/// The `control` file of the package's control archive.
fn control_file(path: &Path) -> Result<String> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut archive = ar::Archive::new(std::io::BufReader::new(file));
    while let Some(member) = archive.next_entry() {
        let member =
            member.with_context(|| format!("{} is not a Debian package", path.display()))?;
        let name = String::from_utf8_lossy(member.header().identifier()).into_owned();
        let decoder: Box<dyn Read + '_> = match name.as_str() {
            "control.tar.xz" => Box::new(liblzma::read::XzDecoder::new(member)),
            "control.tar.zst" => Box::new(zstd::stream::read::Decoder::new(member)?),
            "control.tar.gz" => Box::new(flate2::read::GzDecoder::new(member)),
            "control.tar" => Box::new(member),
            _ => continue,
        };
        let mut control = None;
        deb::walk_tar(decoder, |p, _, data| {
            if p == "control" {
                let mut s = String::new();
                data.read_to_string(&mut s)?;
                control = Some(s);
            }
            Ok(())
        })
        .with_context(|| format!("{}: bad control archive", path.display()))?;
        return control.with_context(|| {
            format!(
                "{}: the control archive has no control file",
                path.display()
            )
        });
    }
    bail!("{} has no control archive", path.display())
}

/// Stops a data archive walk once the copyright file is found.
#[derive(Debug, thiserror::Error)]
#[error("found")]
struct Found;

/// The package's copyright file, from its data archive.
fn copyright(path: &Path, package: &str) -> Result<Copyright> {
    let doc = format!("usr/share/doc/{package}");
    let file = format!("{doc}/copyright");
    let mut outcome = Copyright::Missing;
    let walked = deb::walk_data(path, |p, meta, data| {
        if p == file && meta.kind == deb::Kind::File {
            let mut text = String::new();
            data.read_to_string(&mut text)
                .context("the copyright file is not UTF-8")?;
            outcome = match license::from_copyright(&text, package) {
                Some(d) => Copyright::Declared(d),
                None => Copyright::NotMachineReadable,
            };
            return Err(Found.into());
        }
        if p == doc && meta.kind == deb::Kind::Symlink {
            let target = meta.link.as_deref().unwrap_or_default();
            outcome = Copyright::SameAs(target.rsplit('/').next().unwrap_or(target).to_owned());
            return Err(Found.into());
        }
        Ok(())
    });
    match walked {
        Ok(()) => Ok(outcome),
        Err(e) if e.chain().any(|c| c.is::<Found>()) => Ok(outcome),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relations_keep_names_and_alternatives() {
        assert_eq!(
            relations("libc6 (>= 2.34), libgcc-s1 | libgcc1, python3:any, foo [amd64]"),
            vec![
                vec!["libc6".to_owned()],
                vec!["libgcc-s1".into(), "libgcc1".into()],
                vec!["python3".into()],
                vec!["foo".into()],
            ]
        );
    }

    /// A package made by `dpkg-deb --build` (the independent tool) reads back.
    #[test]
    fn facts_of_a_package_built_by_dpkg_deb() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("pkg");
        std::fs::create_dir_all(root.join("DEBIAN")).unwrap();
        std::fs::create_dir_all(root.join("usr/share/doc/hello")).unwrap();
        std::fs::write(
            root.join("DEBIAN/control"),
            "Package: hello\nVersion: 1:2.10-3+b1\nArchitecture: amd64\n\
             Maintainer: Someone <someone@example.org>\nSource: hello-src (2.10-3)\n\
             Depends: libc6 (>= 2.34)\nDescription: says hello\n a longer text\n",
        )
        .unwrap();
        std::fs::write(
            root.join("usr/share/doc/hello/copyright"),
            "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\n\
             Files: *\nCopyright: 2024 Someone\nLicense: GPL-3+\n",
        )
        .unwrap();
        let deb = dir.path().join("hello.deb");
        let out = std::process::Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zxz", "--build"])
            .arg(&root)
            .arg(&deb)
            .output()
            .expect("dpkg-deb");
        assert!(out.status.success(), "{out:?}");
        let facts = read(&deb).unwrap();
        assert_eq!(facts.package, "hello");
        assert_eq!(facts.version, "1:2.10-3+b1");
        assert_eq!(
            (facts.source.as_str(), facts.source_version.as_str()),
            ("hello-src", "2.10-3")
        );
        assert_eq!(facts.summary.as_deref(), Some("says hello"));
        assert_eq!(facts.depends, vec![vec!["libc6".to_owned()]]);
        match facts.copyright {
            Copyright::Declared(d) => assert_eq!(d.expression, "GPL-3.0-or-later"),
            other => panic!("{other:?}"),
        }
    }
}
