//! Licenses as SPDX expressions: what a Debian package's machine-readable copyright file
//! (DEP-5) declares, and what a crate's `license` field says.
//!
//! Debian writes its own short names (`GPL-2+`, `Expat`, `BSD-3-clause`, `GPL-2 with
//! Linux-syscall-note exception`) joined by `or`, `and` and `,`; [`from_copyright`] maps them
//! onto SPDX license list identifiers where the meaning is the same, and keeps every other
//! name as a `LicenseRef-` with the text the file gives for it ([`Extracted`]), so the
//! expression is always valid SPDX. A copyright file that is not DEP-5 declares nothing
//! machine-readable: the caller writes `NOASSERTION`.

use std::collections::BTreeSet;

use crust_format::Digest;
use serde::{Deserialize, Serialize};

/// A license the SPDX list has no identifier for, kept as `LicenseRef-…` with its text.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Extracted {
    /// `LicenseRef-<name>-<8 hex digits of the text's digest>`.
    pub id: String,
    /// The name the copyright file uses.
    pub name: String,
    /// The license text the file gives (or a sentence saying it gives none).
    pub text: String,
}

/// What a copyright file declares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Declared {
    /// An SPDX license expression.
    pub expression: String,
    /// The `LicenseRef-` licenses it uses.
    pub extracted: Vec<Extracted>,
}

/// One deb822 paragraph: fields in order, names as written, values with continuation lines
/// joined by `\n` (first line trimmed, continuation lines without their leading space).
pub(crate) type Paragraph = Vec<(String, String)>;

/// Splits deb822 text (a `control` file, a copyright file) into paragraphs.
pub(crate) fn paragraphs(text: &str) -> Vec<Paragraph> {
    let mut out = Vec::new();
    let mut current: Paragraph = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !current.is_empty() {
                out.push(std::mem::take(&mut current));
            }
        } else if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = current.last_mut() {
                let line = line.strip_prefix([' ', '\t']).unwrap_or(line);
                value.push('\n');
                if line.trim_end() != "." {
                    value.push_str(line.trim_end());
                }
            }
        } else if !line.starts_with('#')
            && let Some((name, value)) = line.split_once(':')
        {
            current.push((name.trim().to_owned(), value.trim().to_owned()));
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// A field of a paragraph (names are case-insensitive in deb822).
pub(crate) fn field<'a>(p: &'a Paragraph, name: &str) -> Option<&'a str> {
    p.iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// What a DEP-5 copyright file declares for the package's files; `None` when the file is
/// not machine-readable. `package` names it in texts the file lacks.
pub fn from_copyright(text: &str, package: &str) -> Option<Declared> {
    let paras = paragraphs(text);
    let header = paras.first()?;
    let format = field(header, "Format")?;
    if !(format.contains("copyright-format") || format.contains("dep5")) {
        return None;
    }
    // The texts of standalone License paragraphs, by short name.
    let standalone: Vec<(&str, &str)> = paras
        .iter()
        .skip(1)
        .filter(|p| field(p, "Files").is_none())
        .filter_map(|p| field(p, "License"))
        .filter_map(|l| l.split_once('\n').map(|(n, t)| (n.trim(), t)))
        .collect();
    let text_of = |name: &str, own: Option<&str>| -> String {
        let own = own.map(str::trim).filter(|t| !t.is_empty());
        let found = own.or_else(|| {
            standalone
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, t)| t.trim())
        });
        match found {
            Some(t) => format!("{t}\n"),
            None => format!(
                "The Debian copyright file of {package} names this license \"{name}\" without its text.\n"
            ),
        }
    };
    // Files paragraphs, but those that only cover Debian's packaging (`debian/*`), which
    // is not in the binary package.
    let mut licenses: Vec<(&str, Option<&str>)> = paras
        .iter()
        .skip(1)
        .filter(|p| {
            field(p, "Files").is_some_and(|f| {
                !f.split_whitespace()
                    .all(|pattern| pattern.starts_with("debian/"))
            })
        })
        .filter_map(|p| field(p, "License"))
        .map(|l| match l.split_once('\n') {
            Some((name, own)) => (name.trim(), Some(own)),
            None => (l.trim(), None),
        })
        .collect();
    if licenses.is_empty() {
        // No Files paragraph: the header's License covers the package, if it has one.
        if let Some(l) = field(header, "License") {
            licenses.push(match l.split_once('\n') {
                Some((name, own)) => (name.trim(), Some(own)),
                None => (l.trim(), None),
            });
        }
    }
    if licenses.is_empty() {
        return None;
    }
    let mut expressions = BTreeSet::new();
    let mut extracted = BTreeSet::new();
    for (name, own) in licenses {
        let e = debian_expression(name, |term| text_of(term, own), &mut extracted);
        expressions.insert(e);
    }
    let expression = and_all(expressions.into_iter().collect());
    Some(Declared {
        expression,
        extracted: extracted.into_iter().collect(),
    })
}

/// `a AND b AND …`, each operand holding an `OR` in parentheses.
fn and_all(parts: Vec<String>) -> String {
    if parts.len() == 1 {
        return parts.into_iter().next().unwrap_or_default();
    }
    parts
        .into_iter()
        .map(|p| {
            if p.contains(" OR ") {
                format!("({p})")
            } else {
                p
            }
        })
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// The SPDX expression for a Debian `License:` short-name expression (DEP-5: `or` and `and`
/// between names, `,` an `and` of lowest precedence, `with X exception` after a name).
fn debian_expression(
    expr: &str,
    text_of: impl Fn(&str) -> String,
    extracted: &mut BTreeSet<Extracted>,
) -> String {
    let mut groups = Vec::new();
    for group in expr.split(',') {
        let group = group.trim();
        let group = group.strip_prefix("and ").unwrap_or(group).trim();
        if group.is_empty() {
            continue;
        }
        // Terms between the operators; `and` binds tighter than `or`, as in SPDX.
        let mut out = String::new();
        let mut term: Vec<&str> = Vec::new();
        let mut flush = |term: &mut Vec<&str>, out: &mut String| {
            if !term.is_empty() {
                out.push_str(&spdx_term(&term.join(" "), &text_of, extracted));
                term.clear();
            }
        };
        for word in group.split_whitespace() {
            match word.to_ascii_lowercase().as_str() {
                op @ ("or" | "and") if !term.is_empty() => {
                    flush(&mut term, &mut out);
                    out.push_str(if op == "or" { " OR " } else { " AND " });
                }
                _ => term.push(word),
            }
        }
        flush(&mut term, &mut out);
        if out.ends_with(" OR ") || out.ends_with(" AND ") {
            // A dangling operator (`GPL-2 or`): the name is not an expression at all.
            out = reference(expr, &text_of(expr), extracted);
        }
        groups.push(out);
    }
    if groups.is_empty() {
        return reference("unnamed", &text_of(""), extracted);
    }
    and_all(groups)
}

/// One Debian license term (`GPL-2+`, `GPL-2 with Linux-syscall-note exception`) as SPDX.
fn spdx_term(
    term: &str,
    text_of: &impl Fn(&str) -> String,
    extracted: &mut BTreeSet<Extracted>,
) -> String {
    let lower = term.to_ascii_lowercase();
    if let Some(at) = lower.find(" with ") {
        let (license, exception) = (&term[..at], &term[at + 6..]);
        let exception = exception
            .strip_suffix(" exception")
            .or_else(|| exception.strip_suffix(" Exception"))
            .unwrap_or(exception);
        if let (Some(l), Some(e)) = (spdx_license(license), spdx_exception(license, exception)) {
            return format!("{l} WITH {e}");
        }
        return reference(term, &text_of(term), extracted);
    }
    match spdx_license(term) {
        Some(id) => id,
        None => reference(term, &text_of(term), extracted),
    }
}

/// The SPDX identifier for a Debian short license name, when they mean the same.
fn spdx_license(name: &str) -> Option<String> {
    let lower = name.trim().to_ascii_lowercase();
    let fixed = match lower.as_str() {
        "expat" | "mit" => Some("MIT"),
        "mit-x11" | "x11" => Some("X11"),
        "zlib" => Some("Zlib"),
        "isc" => Some("ISC"),
        "gpl" => Some("GPL-1.0-or-later"),
        "lgpl" => Some("LGPL-2.0-or-later"),
        "apache-2" | "apache-2.0" => Some("Apache-2.0"),
        "apache-1.1" => Some("Apache-1.1"),
        "artistic" | "artistic-1" | "artistic-1.0" => Some("Artistic-1.0-Perl"),
        "artistic-2" | "artistic-2.0" => Some("Artistic-2.0"),
        "bsd-2-clause" => Some("BSD-2-Clause"),
        "bsd-3-clause" => Some("BSD-3-Clause"),
        "bsd-4-clause" => Some("BSD-4-Clause"),
        "cc0" | "cc0-1.0" => Some("CC0-1.0"),
        "psf-2" | "psf-2.0" => Some("PSF-2.0"),
        "mpl-1.1" => Some("MPL-1.1"),
        "mpl-2" | "mpl-2.0" => Some("MPL-2.0"),
        "bsl-1.0" | "boost-1.0" => Some("BSL-1.0"),
        "openssl" => Some("OpenSSL"),
        "unlicense" => Some("Unlicense"),
        "wtfpl" => Some("WTFPL"),
        _ => None,
    };
    if let Some(id) = fixed {
        return Some(id.to_owned());
    }
    // The GNU family: GPL-2, GPL-2+, LGPL-2.1+, AGPL-3, GFDL-1.3+.
    for family in ["agpl", "lgpl", "gpl", "gfdl"] {
        let Some(rest) = lower.strip_prefix(family).and_then(|r| r.strip_prefix('-')) else {
            continue;
        };
        let (version, later) = match rest.strip_suffix('+') {
            Some(v) => (v, true),
            None => (rest, false),
        };
        let version = if version.contains('.') {
            version.to_owned()
        } else {
            format!("{version}.0")
        };
        let id = format!(
            "{}-{version}-{}",
            family.to_ascii_uppercase(),
            if later { "or-later" } else { "only" }
        );
        return spdx::license_id(&id).map(|_| id);
    }
    // A name that already is an SPDX identifier (FSFULLR, Latex2e, Unicode-DFS-2016…).
    let name = name.trim();
    match spdx::license_id(name) {
        Some(id) if !name.ends_with('+') && !id.is_deprecated() => Some(id.name.to_owned()),
        _ => None,
    }
}

/// The SPDX exception for Debian's `<license> with <name> exception`.
fn spdx_exception(license: &str, name: &str) -> Option<&'static str> {
    let v3 = license.to_ascii_lowercase().contains("gpl-3");
    let id = match name.trim().to_ascii_lowercase().as_str() {
        "linux-syscall-note" => "Linux-syscall-note",
        "autoconf" if v3 => "Autoconf-exception-3.0",
        "autoconf" => "Autoconf-exception-2.0",
        "libtool" => "Libtool-exception",
        "bison" => "Bison-exception-2.2",
        "gcc" | "gcc-3.1" if v3 => "GCC-exception-3.1",
        "gcc" | "gcc-2.0" => "GCC-exception-2.0",
        "classpath" => "Classpath-exception-2.0",
        "font" => "Font-exception-2.0",
        _ => return None,
    };
    spdx::exception_id(id).map(|e| e.name)
}

/// A `LicenseRef-` for a name with no SPDX identifier, recorded with its text. The id ends
/// in the text's digest, so the same name with other words gets another id.
fn reference(name: &str, text: &str, extracted: &mut BTreeSet<Extracted>) -> String {
    let mut clean = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() || c == '.' {
            clean.push(c);
        } else if !clean.ends_with('-') {
            clean.push('-');
        }
    }
    let clean = clean.trim_matches('-');
    let clean = if clean.is_empty() { "unnamed" } else { clean };
    let digest = Digest::of_parts([name.as_bytes(), text.as_bytes()]);
    let id = format!("LicenseRef-{clean}-{}", digest.short(8));
    extracted.insert(Extracted {
        id: id.clone(),
        name: if name.is_empty() {
            "unnamed".into()
        } else {
            name.to_owned()
        },
        text: text.to_owned(),
    });
    id
}

/// A crate's `license` field as a valid SPDX expression (`MIT/Apache-2.0` becomes `MIT OR
/// Apache-2.0`); `None` when it is not one.
pub fn cargo_expression(license: &str) -> Option<String> {
    let canonical = match spdx::Expression::canonicalize(license) {
        Ok(Some(c)) => c,
        Ok(None) => license.to_owned(),
        Err(_) => return None,
    };
    spdx::Expression::parse(&canonical).ok().map(|_| canonical)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn declared(text: &str) -> Declared {
        from_copyright(text, "pkg").expect("machine-readable")
    }

    const HEADER: &str =
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\n";

    #[test]
    fn debian_names_become_spdx_identifiers() {
        let d = declared(&format!(
            "{HEADER}Files: *\nCopyright: x\nLicense: GPL-2+\n\n\
             Files: lib/*\nCopyright: y\nLicense: LGPL-2.1+ or BSD-3-clause\n\n\
             Files: debian/*\nCopyright: z\nLicense: Artistic\n\n\
             Files: include/uapi/*\nCopyright: z\nLicense: GPL-2 with Linux-syscall-note exception\n\n\
             Files: misc/*\nCopyright: z\nLicense: Expat\n"
        ));
        assert_eq!(
            d.expression,
            "GPL-2.0-only WITH Linux-syscall-note AND GPL-2.0-or-later AND \
             (LGPL-2.1-or-later OR BSD-3-Clause) AND MIT"
        );
        assert!(d.extracted.is_empty());
        spdx::Expression::parse(&d.expression).expect("valid SPDX");
    }

    #[test]
    fn other_names_keep_their_text_as_license_refs() {
        let d = declared(&format!(
            "{HEADER}Files: *\nCopyright: x\nLicense: public-domain\n\n\
             Files: a/*\nCopyright: x\nLicense: GPL-3+ with libocispec exception\n\n\
             License: public-domain\n The authors put this in the public domain.\n .\n Really.\n"
        ));
        assert_eq!(d.extracted.len(), 2, "{:?}", d.extracted);
        let pd = d
            .extracted
            .iter()
            .find(|e| e.name == "public-domain")
            .unwrap();
        assert_eq!(
            pd.text,
            "The authors put this in the public domain.\n\nReally.\n"
        );
        assert!(pd.id.starts_with("LicenseRef-public-domain-"), "{}", pd.id);
        let other = d
            .extracted
            .iter()
            .find(|e| e.name != "public-domain")
            .unwrap();
        assert!(
            other
                .id
                .starts_with("LicenseRef-GPL-3-with-libocispec-exception-"),
            "{}",
            other.id
        );
        assert!(other.text.contains("without its text"), "{}", other.text);
        spdx::Expression::parse(&d.expression).expect("valid SPDX");
        assert!(d.expression.contains(&pd.id));
    }

    #[test]
    fn comma_is_an_and_of_lowest_precedence() {
        let mut ex = BTreeSet::new();
        let e = debian_expression(
            "GPL-2+ or Artistic, and BSD-3-clause",
            |_| String::new(),
            &mut ex,
        );
        assert_eq!(
            e,
            "(GPL-2.0-or-later OR Artistic-1.0-Perl) AND BSD-3-Clause"
        );
    }

    #[test]
    fn copyright_files_that_are_not_dep5_declare_nothing() {
        assert_eq!(
            from_copyright(
                "This package was debianized by someone.\n\nIt is GPL.\n",
                "p"
            ),
            None
        );
        assert_eq!(from_copyright("", "p"), None);
    }

    #[test]
    fn crate_licenses_are_canonical_spdx() {
        assert_eq!(
            cargo_expression("MIT/Apache-2.0").as_deref(),
            Some("MIT OR Apache-2.0")
        );
        assert_eq!(
            cargo_expression("(MIT OR Apache-2.0) AND Unicode-3.0").as_deref(),
            Some("(MIT OR Apache-2.0) AND Unicode-3.0")
        );
        assert_eq!(cargo_expression("see LICENSE file"), None);
    }
}
