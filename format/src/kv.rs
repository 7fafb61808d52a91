//! Ordered `key=value` lines: the small files the init hands between its stages and to the
//! observability agent (`/run/crust/boot`, the status and settings files of
//! [`crate::observe`]), one format for all of them.

use std::fmt;

/// Ordered `key=value` lines, as every such file holds them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyValues {
    entries: Vec<(String, String)>,
}

impl KeyValues {
    /// Sets `key` (replacing an earlier value); a value is kept on one line.
    pub fn set(&mut self, key: &str, value: impl fmt::Display) -> &mut Self {
        let value: String = value
            .to_string()
            .chars()
            .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
            .collect();
        match self.entries.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = value,
            None => self.entries.push((key.to_owned(), value)),
        }
        self
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The value of `key` parsed, if it is there and parses.
    pub fn parsed<T: std::str::FromStr>(&self, key: &str) -> Option<T> {
        self.get(key)?.parse().ok()
    }

    /// Every entry, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The file's text.
    pub fn to_text(&self) -> String {
        self.entries
            .iter()
            .map(|(k, v)| format!("{k}={v}\n"))
            .collect()
    }

    /// Parses a file's text; lines that are not `key=value` are skipped.
    pub fn parse(text: &str) -> Self {
        let mut kv = Self::default();
        for (k, v) in text.lines().filter_map(|l| l.split_once('=')) {
            kv.set(k, v);
        }
        kv
    }
}
