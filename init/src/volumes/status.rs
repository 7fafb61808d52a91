//! What the helper tells PID 1 about each volume: one file per volume under
//! `/run/crust/volumes/state/<name>`, written whole (a temporary file renamed), read when
//! the helper has exited.
//!
//! ```text
//! state=mounted          (mounted, missing or failed)
//! device=/dev/md127      (the device mounted, or empty)
//! detail=…               (one line: what was done, or why not)
//! ```

use std::fs;
use std::path::Path;

/// A volume's state as the helper left it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Mounted on `/var/mnt/<name>`.
    Mounted {
        /// The device mounted (a disk, a partition or an md array).
        device: String,
        /// What was done: formatted, checked, grown.
        detail: String,
    },
    /// Its disks are not there (yet): nothing was done.
    Missing(String),
    /// Its disks are there but cannot be used as they are (another file system, data,
    /// a failed check, a disk in use): nothing was formatted.
    Failed(String),
}

impl Outcome {
    /// The state's name.
    pub fn state(&self) -> &'static str {
        match self {
            Outcome::Mounted { .. } => "mounted",
            Outcome::Missing(_) => "missing",
            Outcome::Failed(_) => "failed",
        }
    }

    /// The file's text.
    pub fn to_text(&self) -> String {
        let (device, detail) = match self {
            Outcome::Mounted { device, detail } => (device.as_str(), detail.as_str()),
            Outcome::Missing(why) | Outcome::Failed(why) => ("", why.as_str()),
        };
        format!(
            "state={}\ndevice={device}\ndetail={}\n",
            self.state(),
            detail.replace(['\n', '\r'], " ")
        )
    }

    /// Parses a state file.
    pub fn parse(text: &str) -> Option<Self> {
        let field = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k)?.strip_prefix('='))
                .map(str::to_owned)
        };
        let detail = field("detail")?;
        match field("state")?.as_str() {
            "mounted" => Some(Outcome::Mounted {
                device: field("device")?,
                detail,
            }),
            "missing" => Some(Outcome::Missing(detail)),
            "failed" => Some(Outcome::Failed(detail)),
            _ => None,
        }
    }
}

/// Writes `outcome` as the state of volume `name` in `dir`.
pub fn write(dir: &Path, name: &str, outcome: &Outcome) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{name}.tmp"));
    fs::write(&tmp, outcome.to_text())?;
    fs::rename(tmp, dir.join(name))
}

/// The state of volume `name` in `dir`, if the helper wrote one.
pub fn read(dir: &Path, name: &str) -> Option<Outcome> {
    Outcome::parse(&fs::read_to_string(dir.join(name)).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_through_files() {
        let dir = tempfile::tempdir().unwrap();
        for outcome in [
            Outcome::Mounted {
                device: "/dev/md127".into(),
                detail: "formatted ext4\nnow".into(),
            },
            Outcome::Missing("no disk has serial data1".into()),
            Outcome::Failed("/dev/vdc holds an xfs file system".into()),
        ] {
            write(dir.path(), "db", &outcome).unwrap();
            let back = read(dir.path(), "db").unwrap();
            assert_eq!(back.state(), outcome.state());
            assert!(!back.to_text().contains("\nnow"));
        }
        assert_eq!(read(dir.path(), "other"), None);
        assert_eq!(Outcome::parse("state=odd\ndetail=x\n"), None);
    }
}
