//! `cargo xtask sbom diff|query`: what changed between two releases, and whether a release
//! holds a package, read from their SBOMs (`crust_builder::sbom::read`).

use std::path::Path;

use anyhow::{Result, bail};
use crust_builder::sbom::read::{self, Change, Document};

/// The image line of a document: `crust 0.1.0 (root hash 1da0801a64cf)`.
fn image(doc: &Document) -> String {
    let (name, version) = &doc.image;
    match &doc.root_hash {
        Some(h) => format!("{name} {version} (root hash {})", &h[..h.len().min(12)]),
        None => format!("{name} {version}"),
    }
}

/// Prints the packages added, removed and changed from `old` to `new` (release folders,
/// update bundles or SPDX files).
pub fn diff(old: &Path, new: &Path) -> Result<()> {
    let (a, b) = (read::load(old)?, read::load(new)?);
    println!("{} -> {}", image(&a), image(&b));
    let changes = read::diff(&a, &b);
    for c in &changes {
        println!("{c}");
    }
    let count = |f: fn(&Change) -> bool| changes.iter().filter(|c| f(c)).count();
    println!(
        "{} added, {} removed, {} changed ({} packages before, {} after)",
        count(|c| matches!(c, Change::Added(_))),
        count(|c| matches!(c, Change::Removed(_))),
        count(|c| matches!(c, Change::Changed { .. })),
        a.entries.len(),
        b.entries.len()
    );
    Ok(())
}

/// Prints where and at what version `dir` (a release folder, bundle or SPDX file) holds
/// `package` (a package name, or a Debian source package's); fails if it holds none.
pub fn query(dir: &Path, package: &str) -> Result<()> {
    let doc = read::load(dir)?;
    let found = read::query(&doc, package);
    if found.is_empty() {
        bail!(
            "{} holds no package named {package:?} (nor one built from a Debian source \
             package of that name); `cargo xtask sbom diff` lists what changed between releases",
            image(&doc)
        );
    }
    println!("{}:", image(&doc));
    for e in found {
        println!("  {e}");
    }
    Ok(())
}
