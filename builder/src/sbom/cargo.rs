//! The crates compiled into the init, as cargo resolves them for the init's target.
//!
//! `cargo tree -e normal --target <triple> -p <package>` gives the set cargo compiles for
//! that one package and target and the edges between them (cargo's feature resolver run for
//! that build alone); `cargo metadata` adds what a crate declares (license, source, whether
//! it is a procedural macro) and `Cargo.lock` the SHA-256 of each registry crate.
//! `cargo metadata`'s own resolve is not used for the set: it unifies features across the
//! whole workspace, so it also lists crates that only the builder's feature choices pull in
//! (`pkcs8` through `ed25519-dalek/pem`, say), which the init never compiles.
//!
//! A crate is *linked* when the init reaches it through normal dependencies without passing
//! a procedural macro; the macros and what only they use run in the compiler and leave
//! generated code behind, not themselves ([`Crate::linked`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// Where a crate came from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// crates.io.
    CratesIo,
    /// Another registry (its index URL).
    Registry(String),
    /// A git repository (URL with the revision).
    Git(String),
    /// A path in the workspace (the init itself and `crust-format`).
    Path,
}

/// One crate of the init.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Crate {
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Where it came from.
    pub source: Source,
    /// SHA-256 of the `.crate` file (`Cargo.lock`'s checksum; registry crates only).
    pub checksum: Option<String>,
    /// The `license` field of its `Cargo.toml`, as written.
    pub license: Option<String>,
    /// Whether its code is in the binary (false: a procedural macro, or a crate only macros
    /// use).
    pub linked: bool,
    /// The crates it depends on (normal dependencies), as `name version`.
    pub depends: Vec<String>,
}

impl Crate {
    /// `name version`, how dependencies name it.
    pub fn key(&self) -> String {
        format!("{} {}", self.name, self.version)
    }
}

/// The crates of the init, sorted by name and version: the package `package` of the cargo
/// workspace at `manifest` (its `Cargo.toml`), built for `target`. The package itself is the
/// first (and the one crate with no dependent).
pub fn init_crates(manifest: &Path, package: &str, target: &str) -> Result<Vec<Crate>> {
    let (nodes, edges) = tree(manifest, package, target)?;
    let metadata = metadata(manifest, target)?;
    let checksums = lock_checksums(&metadata.workspace_root.join("Cargo.lock"))?;
    let mut crates = Vec::new();
    let mut proc_macros = BTreeSet::new();
    for key in &nodes {
        let (name, version) = key.split_once(' ').unwrap_or((key, ""));
        let mut matching = metadata
            .packages
            .iter()
            .filter(|p| p.name == name && p.version == version);
        let (Some(p), None) = (matching.next(), matching.next()) else {
            bail!(
                "cargo metadata for {} does not name exactly one package {key} (from cargo tree)",
                manifest.display()
            );
        };
        if p.targets
            .iter()
            .any(|t| t.kind.iter().any(|k| k == "proc-macro"))
        {
            proc_macros.insert(key.clone());
        }
        let source = match p.source.as_deref() {
            None => Source::Path,
            Some("registry+https://github.com/rust-lang/crates.io-index")
            | Some("sparse+https://index.crates.io/") => Source::CratesIo,
            Some(s) if s.starts_with("git+") => Source::Git(s.trim_start_matches("git+").into()),
            Some(s) => Source::Registry(
                s.trim_start_matches("registry+")
                    .trim_start_matches("sparse+")
                    .into(),
            ),
        };
        crates.push(Crate {
            name: name.to_owned(),
            version: version.to_owned(),
            checksum: checksums
                .get(&(name.to_owned(), version.to_owned(), p.source.clone()))
                .cloned(),
            source,
            license: p.license.clone(),
            linked: false,
            depends: edges
                .get(key)
                .map(|d| d.iter().cloned().collect())
                .unwrap_or_default(),
        });
    }
    // Linked: reached from the package without passing through a procedural macro.
    let mut linked = BTreeSet::new();
    let mut stack = vec![
        nodes
            .first()
            .cloned()
            .context("cargo tree printed nothing")?,
    ];
    while let Some(key) = stack.pop() {
        if proc_macros.contains(&key) || !linked.insert(key.clone()) {
            continue;
        }
        stack.extend(edges.get(&key).into_iter().flatten().cloned());
    }
    for c in &mut crates {
        c.linked = linked.contains(&c.key());
    }
    let root = crates.remove(0);
    crates.sort();
    crates.insert(0, root);
    Ok(crates)
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Runs a cargo command and returns its standard output.
fn run(mut cmd: Command, what: &str) -> Result<Vec<u8>> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {what} (is cargo installed?)"))?;
    if !out.status.success() {
        bail!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

/// Crates as `name version`: in the order first printed (the package first), and each one's
/// dependencies.
type Graph = (Vec<String>, BTreeMap<String, BTreeSet<String>>);

/// `cargo tree`'s nodes and edges.
fn tree(manifest: &Path, package: &str, target: &str) -> Result<Graph> {
    let mut cmd = cargo();
    cmd.args(["tree", "--locked", "--edges", "normal", "--prefix", "depth"])
        .args(["--format", "{p}", "--target", target, "--package", package])
        .arg("--manifest-path")
        .arg(manifest);
    let what = format!(
        "cargo tree for {package} ({target}) in {}",
        manifest.display()
    );
    let text = String::from_utf8(run(cmd, &what)?).context("cargo tree printed no UTF-8")?;
    parse_tree(&text).with_context(|| what.clone())
}

/// Parses `cargo tree --prefix depth --format {p}` lines: `<depth><name> v<version> …`.
fn parse_tree(text: &str) -> Result<Graph> {
    let mut nodes: Vec<String> = Vec::new();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut path: Vec<String> = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let digits = line.bytes().take_while(u8::is_ascii_digit).count();
        let depth: usize = line[..digits]
            .parse()
            .with_context(|| format!("unexpected line {line:?}"))?;
        let mut words = line[digits..].split_whitespace();
        let (Some(name), Some(version)) = (words.next(), words.next()) else {
            bail!("unexpected line {line:?}");
        };
        let version = version
            .strip_prefix('v')
            .with_context(|| format!("unexpected version in {line:?}"))?;
        let key = format!("{name} {version}");
        if depth > path.len() || (depth == 0 && !nodes.is_empty()) {
            bail!("unexpected depth in {line:?}");
        }
        path.truncate(depth);
        if let Some(parent) = path.last() {
            edges.entry(parent.clone()).or_default().insert(key.clone());
        }
        if !nodes.contains(&key) {
            nodes.push(key.clone());
        }
        path.push(key);
    }
    Ok((nodes, edges))
}

#[derive(Deserialize)]
struct Metadata {
    packages: Vec<MetaPackage>,
    workspace_root: std::path::PathBuf,
}

#[derive(Deserialize)]
struct MetaPackage {
    name: String,
    version: String,
    source: Option<String>,
    license: Option<String>,
    targets: Vec<MetaTarget>,
}

#[derive(Deserialize)]
struct MetaTarget {
    kind: Vec<String>,
}

fn metadata(manifest: &Path, target: &str) -> Result<Metadata> {
    let mut cmd = cargo();
    cmd.args(["metadata", "--locked", "--format-version", "1"])
        .args(["--filter-platform", target])
        .arg("--manifest-path")
        .arg(manifest);
    let what = format!("cargo metadata for {}", manifest.display());
    serde_json::from_slice(&run(cmd, &what)?).with_context(|| format!("{what}: unexpected JSON"))
}

#[derive(Deserialize)]
struct LockFile {
    #[serde(default)]
    package: Vec<LockPackage>,
}

#[derive(Deserialize)]
struct LockPackage {
    name: String,
    version: String,
    source: Option<String>,
    checksum: Option<String>,
}

/// A `Cargo.lock` package: name, version, source.
type LockKey = (String, String, Option<String>);

/// `Cargo.lock`'s checksums by name, version and source.
fn lock_checksums(path: &Path) -> Result<BTreeMap<LockKey, String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let lock: LockFile =
        toml::from_str(&text).with_context(|| format!("{} is not a Cargo.lock", path.display()))?;
    Ok(lock
        .package
        .into_iter()
        .filter_map(|p| Some(((p.name, p.version, p.source), p.checksum?)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_lines_give_nodes_and_edges() {
        let text = "0crust-init v0.1.0 (/w/init)\n1crust-format v0.1.0 (/w/format)\n\
                    2sha2 v0.11.1\n1serde v1.0.229\n2serde_derive v1.0.229 (proc-macro)\n\
                    3syn v2.0.119\n1sha2 v0.11.1 (*)\n";
        let (nodes, edges) = parse_tree(text).unwrap();
        assert_eq!(
            nodes,
            [
                "crust-init 0.1.0",
                "crust-format 0.1.0",
                "sha2 0.11.1",
                "serde 1.0.229",
                "serde_derive 1.0.229",
                "syn 2.0.119"
            ]
        );
        assert_eq!(
            edges["crust-init 0.1.0"],
            ["crust-format 0.1.0", "serde 1.0.229", "sha2 0.11.1"]
                .map(String::from)
                .into()
        );
        assert_eq!(
            edges["serde_derive 1.0.229"],
            ["syn 2.0.119".to_owned()].into()
        );
        assert!(parse_tree("x\n").is_err());
    }
}
