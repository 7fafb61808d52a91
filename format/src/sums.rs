//! `SHA256SUMS`, the signed list of a release's files (docs/FORMAT.md §10): what `sha256sum`
//! writes and `sha256sum -c` checks — one line per file, `<64 lowercase hex digits><space>
//! <space><file name>\n`, sorted by name, plain names without folders. The builder writes
//! and checks release folders with it; the installer checks what its medium carries.

use std::collections::BTreeMap;

use crate::Digest;

/// The list's file name.
pub const SUMS: &str = "SHA256SUMS";
/// The raw 64-byte Ed25519 signature over the list's exact bytes.
pub const SUMS_SIG: &str = "SHA256SUMS.sig";

/// A line of a list that is not `<digest>  <name>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct SumsError {
    /// Line number (from 1).
    pub line: usize,
    /// What is wrong.
    pub reason: &'static str,
}

/// A parsed `SHA256SUMS`: file names and digests, sorted by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sums(BTreeMap<String, Digest>);

impl Sums {
    /// Parses the list strictly.
    pub fn parse(text: &[u8]) -> Result<Self, SumsError> {
        let bad = |line: usize, reason: &'static str| SumsError { line, reason };
        let text = std::str::from_utf8(text).map_err(|_| bad(1, "not UTF-8 text"))?;
        if !text.is_empty() && !text.ends_with('\n') {
            return Err(bad(text.lines().count(), "no newline at the end"));
        }
        let mut sums = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let (digest, name) = line
                .split_once("  ")
                .ok_or_else(|| bad(i + 1, "expected `<sha256>  <file name>`"))?;
            if digest.len() != 64
                || !digest
                    .bytes()
                    .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            {
                return Err(bad(i + 1, "the digest is not 64 lowercase hex digits"));
            }
            let digest: Digest = digest
                .parse()
                .map_err(|_| bad(i + 1, "the digest is not 64 lowercase hex digits"))?;
            check_name(name).map_err(|reason| bad(i + 1, reason))?;
            if sums.insert(name.to_owned(), digest).is_some() {
                return Err(bad(i + 1, "the file is listed twice"));
            }
        }
        Ok(Self(sums))
    }

    /// The `sha256sum` text.
    pub fn to_text(&self) -> String {
        self.0
            .iter()
            .map(|(name, digest)| format!("{}  {name}\n", digest.to_hex()))
            .collect()
    }

    /// The digest listed for `name`.
    pub fn get(&self, name: &str) -> Option<&Digest> {
        self.0.get(name)
    }

    /// File names and digests, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Digest)> {
        self.0.iter().map(|(n, d)| (n.as_str(), d))
    }

    /// Adds or replaces a file's digest.
    pub fn insert(&mut self, name: &str, digest: Digest) {
        self.0.insert(name.to_owned(), digest);
    }

    /// How many files are listed.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when no file is listed.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A listed name must stay inside the release folder.
fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name == "." || name == ".." {
        return Err("the file name is empty or a folder");
    }
    if name.contains(['/', '\\', '\0']) || name.starts_with('*') {
        return Err("file names must be plain names in the release folder");
    }
    Ok(())
}
