//! What the update agent remembers across boots, under `/var/lib/crust/update/`:
//! `pending` (the version last installed into the other slot, until it proves itself or
//! rolls back), `failed` (versions that rolled back; they are never tried again), and the
//! downloaded bundles.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The folder.
pub const DIR: &str = "/var/lib/crust/update";

/// An installed update waiting for its first healthy boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// The version installed.
    pub version: String,
    /// The slot it went into (`a` or `b`).
    pub slot: String,
    /// The version that installed it (where a rollback lands).
    pub from: String,
}

/// The agent's records in `dir`.
#[derive(Debug, Clone)]
pub struct Records {
    dir: PathBuf,
}

impl Records {
    /// The records in `dir` (created when first written).
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
        }
    }

    /// Where downloaded bundles go.
    pub fn downloads(&self) -> PathBuf {
        self.dir.join("downloads")
    }

    /// The pending update, if any.
    pub fn pending(&self) -> Option<Pending> {
        let text = fs::read_to_string(self.dir.join("pending")).ok()?;
        let get = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .map(str::to_owned)
        };
        Some(Pending {
            version: get("version")?,
            slot: get("slot")?,
            from: get("from")?,
        })
    }

    /// Records an installed update (synced: the next boot must find it).
    pub fn set_pending(&self, p: &Pending) -> std::io::Result<()> {
        self.write(
            "pending",
            &format!("version={}\nslot={}\nfrom={}\n", p.version, p.slot, p.from),
        )
    }

    /// Forgets the pending update.
    pub fn clear_pending(&self) {
        let _ = fs::remove_file(self.dir.join("pending"));
    }

    /// Versions that rolled back.
    pub fn failed(&self) -> Vec<String> {
        fs::read_to_string(self.dir.join("failed"))
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// Adds a version that rolled back.
    pub fn add_failed(&self, version: &str) -> std::io::Result<()> {
        let mut all = self.failed();
        if !all.iter().any(|v| v == version) {
            all.push(version.to_owned());
        }
        self.write("failed", &(all.join("\n") + "\n"))
    }

    fn write(&self, name: &str, text: &str) -> std::io::Result<()> {
        fs::create_dir_all(&self.dir)?;
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let mut f = fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, self.dir.join(name))?;
        fs::File::open(&self.dir)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let r = Records::new(&dir.path().join("update"));
        assert_eq!(r.pending(), None);
        let p = Pending {
            version: "0.2.0".into(),
            slot: "b".into(),
            from: "0.1.0".into(),
        };
        r.set_pending(&p).unwrap();
        assert_eq!(r.pending(), Some(p));
        r.clear_pending();
        assert_eq!(r.pending(), None);
        r.add_failed("0.3.0").unwrap();
        r.add_failed("0.3.0").unwrap();
        r.add_failed("0.4.0").unwrap();
        assert_eq!(r.failed(), ["0.3.0", "0.4.0"]);
    }
}
