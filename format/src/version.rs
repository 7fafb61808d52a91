//! Image names and versions: what characters they may hold and how versions sort.
//!
//! Both end up in UKI file names (`<name>_<version>.efi`), where systemd-boot splits off the
//! boot counter at the last `+`, so neither may contain `+`, `_` or `/`. Versions sort like
//! systemd's `strverscmp_improved` for the forms Crust uses: runs of digits compare as
//! numbers, other runs compare as text, and a `~` sorts before anything (so `1.0~rc1` comes
//! before `1.0`).

use std::cmp::Ordering;
use std::fmt;

/// Why a name or version was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The string is empty or longer than 64 bytes.
    #[error("{what} must be 1 to 64 characters long, found {len}")]
    Length {
        /// "image name" or "version".
        what: &'static str,
        /// The length found.
        len: usize,
    },
    /// The string holds a character outside the allowed set.
    #[error("{what} {value:?} holds {found:?}; allowed are {allowed}")]
    Character {
        /// "image name" or "version".
        what: &'static str,
        /// The whole string.
        value: String,
        /// The first character not allowed.
        found: char,
        /// A description of the allowed set.
        allowed: &'static str,
    },
    /// A version must start with a digit.
    #[error("version {0:?} must start with a digit")]
    VersionStart(String),
}

/// Checks an image name: lowercase letters, digits and `-`, 1 to 64 characters.
pub fn check_name(name: &str) -> Result<(), NameError> {
    check_chars(
        "image name",
        name,
        |c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-',
        "lowercase letters, digits and '-'",
    )
}

/// Checks a version: starts with a digit, then letters, digits, `.`, `-` and `~`.
pub fn check_version(version: &str) -> Result<(), NameError> {
    check_chars(
        "version",
        version,
        |c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '~'),
        "letters, digits, '.', '-' and '~'",
    )?;
    if !version.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(NameError::VersionStart(version.to_owned()));
    }
    Ok(())
}

fn check_chars(
    what: &'static str,
    value: &str,
    ok: impl Fn(char) -> bool,
    allowed: &'static str,
) -> Result<(), NameError> {
    if value.is_empty() || value.len() > 64 {
        return Err(NameError::Length {
            what,
            len: value.len(),
        });
    }
    match value.chars().find(|&c| !ok(c)) {
        Some(found) => Err(NameError::Character {
            what,
            value: value.to_owned(),
            found,
            allowed,
        }),
        None => Ok(()),
    }
}

/// A version string with the ordering systemd-boot uses to sort boot entries.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Version(String);

impl Version {
    /// Wraps a version after checking it with [`check_version`].
    pub fn new(s: &str) -> Result<Self, NameError> {
        check_version(s)?;
        Ok(Self(s.to_owned()))
    }

    /// The version as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        compare_versions(&self.0, &other.0)
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Compares two version strings: digit runs numerically, `~` first, other runs as text.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        // A tilde sorts before everything, even the end of the string.
        match (a.first() == Some(&b'~'), b.first() == Some(&b'~')) {
            (true, true) => {
                a = &a[1..];
                b = &b[1..];
                continue;
            }
            (true, false) => return Ordering::Less,
            (false, true) => return Ordering::Greater,
            (false, false) => {}
        }
        match (a.first(), b.first()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            _ => {}
        }
        let a_digit = a[0].is_ascii_digit();
        let b_digit = b[0].is_ascii_digit();
        if a_digit != b_digit {
            // A number sorts after text ("1.0.1" > "1.0.rc").
            return if a_digit {
                Ordering::Greater
            } else {
                Ordering::Less
            };
        }
        let run = |s: &[u8]| {
            s.iter()
                .position(|c| c.is_ascii_digit() != a_digit || *c == b'~')
                .unwrap_or(s.len())
        };
        let (ra, rb) = (run(a), run(b));
        let (ta, tb) = (&a[..ra], &b[..rb]);
        let ord = if a_digit {
            let (ta, tb) = (strip_zeros(ta), strip_zeros(tb));
            ta.len().cmp(&tb.len()).then_with(|| ta.cmp(tb))
        } else {
            ta.cmp(tb)
        };
        if ord != Ordering::Equal {
            return ord;
        }
        a = &a[ra..];
        b = &b[rb..];
    }
}

fn strip_zeros(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|&c| c != b'0').unwrap_or(s.len());
    &s[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_sort_numerically_by_component() {
        let mut v = ["1.10.0", "1.2.0", "1.2.0~rc1", "0.9", "1.2.0-1", "1.2"];
        v.sort_by(|a, b| compare_versions(a, b));
        assert_eq!(v, ["0.9", "1.2", "1.2.0~rc1", "1.2.0", "1.2.0-1", "1.10.0"]);
        assert_eq!(compare_versions("1.02", "1.2"), Ordering::Equal);
    }

    #[test]
    fn names_and_versions_refuse_separators_of_boot_entry_names() {
        assert!(check_name("crust").is_ok());
        assert!(check_name("my_os").is_err());
        assert!(check_name("").is_err());
        assert!(check_version("1.0.0").is_ok());
        assert!(check_version("1.0+3").is_err());
        assert!(check_version("v1").is_err());
    }
}
