//! The in-memory file system tree that the root file system and the initramfs are built from.
//!
//! Paths are relative (`usr/bin/crun`: no leading `/`, no `.` or `..`, no trailing `/`) and
//! kept sorted, so every writer walks the tree in the same order and a parent always comes
//! before its children. Ownership and modes are data, never taken from this machine: the
//! builder needs no root privileges. Timestamps are not stored per entry; writers stamp
//! every entry with the build's one `SOURCE_DATE_EPOCH`.

use std::collections::BTreeMap;
use std::sync::Arc;

/// What a path is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A directory.
    Dir,
    /// A regular file and its bytes.
    File(Arc<[u8]>),
    /// A symbolic link and its target, as written.
    Symlink(String),
    /// A character device.
    CharDevice {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
    /// A block device.
    BlockDevice {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
    /// A named pipe.
    Fifo,
}

/// A path's node and metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The node.
    pub node: Node,
    /// Permission bits including setuid, setgid and sticky (`0o7777` at most).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
}

impl Entry {
    /// A root-owned directory.
    pub fn dir(mode: u32) -> Self {
        Self::root_owned(Node::Dir, mode)
    }

    /// A root-owned regular file.
    pub fn file(data: impl Into<Arc<[u8]>>, mode: u32) -> Self {
        Self::root_owned(Node::File(data.into()), mode)
    }

    /// A root-owned symbolic link.
    pub fn symlink(target: impl Into<String>) -> Self {
        Self::root_owned(Node::Symlink(target.into()), 0o777)
    }

    fn root_owned(node: Node, mode: u32) -> Self {
        Self {
            node,
            mode: mode & 0o7777,
            uid: 0,
            gid: 0,
        }
    }

    /// The file's bytes, if it is a regular file.
    pub fn data(&self) -> Option<&[u8]> {
        match &self.node {
            Node::File(d) => Some(d),
            _ => None,
        }
    }
}

/// Why a path could not be added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TreeError {
    /// The path is empty, absolute after normalising, or has `.`/`..` components.
    #[error("{0:?} is not a valid path inside an image")]
    BadPath(String),
    /// A parent of the path is not a directory.
    #[error("cannot add {path:?}: its parent {parent:?} is not a directory")]
    ParentNotDir {
        /// The path added.
        path: String,
        /// The parent in the way.
        parent: String,
    },
    /// A directory would be replaced by something else, or the other way round.
    #[error("cannot replace {0:?}: a directory and a non-directory conflict")]
    KindConflict(String),
}

/// A sorted file system tree.
#[derive(Debug, Clone, Default)]
pub struct Tree {
    entries: BTreeMap<String, Entry>,
}

/// Normalises `/usr//bin/./x` to `usr/bin/x`; refuses `..`.
pub fn normalize(path: &str) -> Result<String, TreeError> {
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(TreeError::BadPath(path.to_owned())),
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return Err(TreeError::BadPath(path.to_owned()));
    }
    Ok(parts.join("/"))
}

impl Tree {
    /// An empty tree (the root directory is implicit: mode 0755, root-owned).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces `path`, creating missing parent directories (0755, root-owned).
    ///
    /// Adding a directory where one exists keeps the existing one's metadata (the first
    /// package to create a directory owns it, as with dpkg); a file replaces a file.
    pub fn insert(&mut self, path: &str, entry: Entry) -> Result<(), TreeError> {
        let path = normalize(path)?;
        let mut parent = String::new();
        for component in path
            .split('/')
            .collect::<Vec<_>>()
            .split_last()
            .map_or(&[][..], |(_, p)| p)
        {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(component);
            match self.entries.get(&parent) {
                Some(Entry {
                    node: Node::Dir, ..
                }) => {}
                Some(_) => {
                    return Err(TreeError::ParentNotDir {
                        path: path.clone(),
                        parent,
                    });
                }
                None => {
                    self.entries.insert(parent.clone(), Entry::dir(0o755));
                }
            }
        }
        match (self.entries.get(&path), &entry.node) {
            (
                Some(Entry {
                    node: Node::Dir, ..
                }),
                Node::Dir,
            ) => Ok(()),
            (
                Some(Entry {
                    node: Node::Dir, ..
                }),
                _,
            )
            | (Some(_), Node::Dir) => Err(TreeError::KindConflict(path)),
            _ => {
                self.entries.insert(path, entry);
                Ok(())
            }
        }
    }

    /// The entry at `path`.
    pub fn get(&self, path: &str) -> Option<&Entry> {
        normalize(path).ok().and_then(|p| self.entries.get(&p))
    }

    /// Removes `path` and everything below it; returns how many entries went.
    pub fn remove_all(&mut self, path: &str) -> usize {
        let Ok(path) = normalize(path) else { return 0 };
        let prefix = format!("{path}/");
        let before = self.entries.len();
        self.entries
            .retain(|p, _| p != &path && !p.starts_with(&prefix));
        before - self.entries.len()
    }

    /// All entries in path order (parents before children).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Entry)> {
        self.entries.iter().map(|(p, e)| (p.as_str(), e))
    }

    /// Number of entries (the implicit root not counted).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the tree holds nothing but the implicit root.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Total bytes of regular files.
    pub fn file_bytes(&self) -> u64 {
        self.entries
            .values()
            .filter_map(Entry::data)
            .map(|d| d.len() as u64)
            .sum()
    }

    /// The direct children of directory `dir` (`""` for the root), in order.
    pub fn children<'a>(&'a self, dir: &str) -> impl Iterator<Item = (&'a str, &'a Entry)> + 'a {
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        let len = prefix.len();
        self.entries
            .range(prefix.clone()..)
            .take_while(move |(p, _)| p.starts_with(&prefix))
            .filter(move |(p, _)| !p[len..].contains('/'))
            .map(|(p, e)| (p.as_str(), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_are_created_and_order_is_stable() {
        let mut t = Tree::new();
        t.insert("/usr/bin/crun", Entry::file(&b"x"[..], 0o755))
            .unwrap();
        t.insert("usr-local", Entry::dir(0o755)).unwrap();
        t.insert("etc//os-release", Entry::symlink("../usr/lib/os-release"))
            .unwrap();
        let paths: Vec<_> = t.iter().map(|(p, _)| p).collect();
        assert_eq!(
            paths,
            [
                "etc",
                "etc/os-release",
                "usr",
                "usr-local",
                "usr/bin",
                "usr/bin/crun"
            ]
        );
        assert_eq!(t.file_bytes(), 1);
        let kids: Vec<_> = t.children("usr").map(|(p, _)| p).collect();
        assert_eq!(kids, ["usr/bin"]);
    }

    #[test]
    fn conflicts_and_bad_paths_are_refused() {
        let mut t = Tree::new();
        t.insert("a", Entry::file(&b"x"[..], 0o644)).unwrap();
        assert!(matches!(
            t.insert("a/b", Entry::dir(0o755)),
            Err(TreeError::ParentNotDir { .. })
        ));
        assert!(matches!(
            t.insert("a", Entry::dir(0o755)),
            Err(TreeError::KindConflict(_))
        ));
        assert!(matches!(
            t.insert("x/../y", Entry::dir(0o755)),
            Err(TreeError::BadPath(_))
        ));
        assert!(matches!(
            t.insert("/", Entry::dir(0o755)),
            Err(TreeError::BadPath(_))
        ));
    }

    #[test]
    fn existing_directories_keep_their_metadata() {
        let mut t = Tree::new();
        t.insert("tmp", Entry::dir(0o1777)).unwrap();
        t.insert("tmp", Entry::dir(0o755)).unwrap();
        assert_eq!(t.get("tmp").unwrap().mode, 0o1777);
        t.insert("tmp/a/b", Entry::file(&b""[..], 0o644)).unwrap();
        assert_eq!(t.remove_all("tmp/a"), 2);
        assert_eq!(t.len(), 1);
    }
}
