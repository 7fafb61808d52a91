//! What the update agent remembers across boots, under `/var/lib/crust/update/`:
//! `pending` (the version last installed into the other slot, until it proves itself or
//! rolls back), `failed` (versions that rolled back; they are never tried again),
//! `refused` (versions whose signed bundle this host cannot take, with why; never fetched
//! again), `index-<channel>` (the newest index accepted on each channel: its issue time and
//! digest, so an older one is refused), `reserve` (room kept for the agent on a `/var` that
//! services may fill), and the downloaded bundles.
//!
//! Every file is small and read with a bound: the state partition is not verified, and a
//! damaged record must cost a log line, never the agent.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crust_format::Digest;

/// The folder.
pub const DIR: &str = "/var/lib/crust/update";

/// The newest index accepted on a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// Its signed issue time (Unix seconds).
    pub issued: u64,
    /// The digest of its bytes.
    pub sha256: Digest,
}

/// The room kept for the update agent on `/var`: a bundle (kernel, initramfs and root; 38
/// MiB for the qemu profile, about 58 MiB for containerd's) and the 16 MiB spare a download
/// leaves, with room to grow.
pub const RESERVE: u64 = 128 << 20;

/// What the reserve gives up for a record when `/var` is full (records are a few hundred
/// bytes; a file system needs a block or two for the new file and its directory entry).
const RECORD_ROOM: u64 = 1 << 20;

/// What `/var` must still have free once the reserve is made (a small state partition
/// keeps room for its services before the agent takes any).
const HEADROOM: u64 = 64 << 20;

/// Free bytes on the file system holding `path` (or its nearest existing parent), as root
/// may use them.
pub fn free_bytes(path: &Path) -> Option<u64> {
    let existing = path.ancestors().find(|p| p.exists())?;
    let st = nix::sys::statvfs::statvfs(existing).ok()?;
    Some(st.blocks_available() * st.fragment_size())
}

/// Largest record file read.
const MAX_RECORD: u64 = 64 << 10;

fn read_bounded(path: &Path) -> Option<String> {
    use std::io::Read;
    let mut text = String::new();
    fs::File::open(path)
        .ok()?
        .take(MAX_RECORD)
        .read_to_string(&mut text)
        .ok()?;
    Some(text)
}

fn field(text: &str, key: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .map(str::to_owned)
}

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

    /// The reserve file: [`RESERVE`] bytes allocated while `/var` has room, released when a
    /// check finds `/var` full, so a service that fills the state partition cannot stop
    /// the host from updating.
    pub fn reserve_path(&self) -> PathBuf {
        self.dir.join("reserve")
    }

    /// Allocates the reserve, or what it lacks after [`Records::write`] took some, if `/var`
    /// has room for that and [`HEADROOM`]. Returns whether the whole reserve is in place.
    pub fn keep_reserve(&self) -> bool {
        let path = self.reserve_path();
        let have = fs::metadata(&path).map_or(0, |m| m.len());
        if have >= RESERVE {
            return true;
        }
        if free_bytes(&self.dir).is_none_or(|free| free < RESERVE - have + HEADROOM) {
            return false;
        }
        // Not truncated on opening: what is left of the reserve stays if this fails.
        let made = fs::create_dir_all(&self.dir)
            .and_then(|()| {
                fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&path)
            })
            .and_then(|f| {
                // Real blocks, not a sparse promise: the room must exist when it is needed.
                nix::fcntl::fallocate(
                    &f,
                    nix::fcntl::FallocateFlags::empty(),
                    0,
                    RESERVE as nix::libc::off_t,
                )
                .map_err(std::io::Error::from)?;
                f.sync_all()
            });
        if made.is_err() && have == 0 {
            let _ = fs::remove_file(&path);
        }
        made.is_ok()
    }

    /// Gives a record room on a full `/var`: the reserve shrinks by [`RECORD_ROOM`] (it is
    /// made whole again by [`Records::keep_reserve`] once there is room). Only at the
    /// moment of writing, so a service filling the disk cannot take the room first.
    fn room_for_record(&self) {
        if free_bytes(&self.dir).is_some_and(|free| free >= RECORD_ROOM) {
            return;
        }
        if let Ok(f) = fs::OpenOptions::new().write(true).open(self.reserve_path()) {
            let len = f.metadata().map_or(0, |m| m.len());
            let _ = f.set_len(len.saturating_sub(RECORD_ROOM));
        }
    }

    /// Frees the reserve when `/var` has less than `needed` bytes free; returns whether it
    /// did.
    pub fn release_reserve_if(&self, needed: u64) -> bool {
        let path = self.reserve_path();
        let free = free_bytes(&self.dir).unwrap_or(0);
        if free >= needed || !path.exists() {
            return false;
        }
        fs::remove_file(&path).is_ok()
    }

    /// Where downloaded bundles go.
    pub fn downloads(&self) -> PathBuf {
        self.dir.join("downloads")
    }

    /// The pending update, if any.
    pub fn pending(&self) -> Option<Pending> {
        let text = read_bounded(&self.dir.join("pending"))?;
        Some(Pending {
            version: field(&text, "version")?,
            slot: field(&text, "slot")?,
            from: field(&text, "from")?,
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
        read_bounded(&self.dir.join("failed"))
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// Versions refused for good, with why (`<version> <why>` lines).
    pub fn refused(&self) -> Vec<(String, String)> {
        read_bounded(&self.dir.join("refused"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let (v, why) = l.split_once(' ').unwrap_or((l, ""));
                (!v.is_empty()).then(|| (v.to_owned(), why.to_owned()))
            })
            .collect()
    }

    /// Records that `version`'s bundle cannot be taken, and why (one line).
    pub fn add_refused(&self, version: &str, why: &str) -> std::io::Result<()> {
        let mut all = self.refused();
        if !all.iter().any(|(v, _)| v == version) {
            all.push((version.to_owned(), why.replace(['\n', '\r'], " ")));
        }
        let text: String = all.iter().map(|(v, w)| format!("{v} {w}\n")).collect();
        self.write("refused", &text)
    }

    /// The versions no check fetches again: rolled back or refused.
    pub fn skipped(&self) -> Vec<String> {
        let mut all = self.failed();
        all.extend(self.refused().into_iter().map(|(v, _)| v));
        all
    }

    /// The newest index accepted on `channel`.
    pub fn accepted(&self, channel: &str) -> Option<Accepted> {
        let text = read_bounded(&self.dir.join(format!("index-{channel}")))?;
        Some(Accepted {
            issued: field(&text, "issued")?.parse().ok()?,
            sha256: field(&text, "sha256")?.parse().ok()?,
        })
    }

    /// Records the newest index accepted on `channel` (synced: a replay after a power cut
    /// must still be refused).
    pub fn accept(&self, channel: &str, index: Accepted) -> std::io::Result<()> {
        if self.accepted(channel) == Some(index) {
            return Ok(());
        }
        self.write(
            &format!("index-{channel}"),
            &format!("issued={}\nsha256={}\n", index.issued, index.sha256),
        )
    }

    /// The latest issue time of any accepted index: a time the clock is known to be past.
    pub fn newest_issued(&self) -> Option<u64> {
        fs::read_dir(&self.dir)
            .ok()?
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let channel = name.strip_prefix("index-")?;
                Some(self.accepted(channel)?.issued)
            })
            .max()
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
        self.room_for_record();
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
        r.add_refused("0.5.0", "too big\nfor the disk").unwrap();
        r.add_refused("0.5.0", "again").unwrap();
        assert_eq!(
            r.refused(),
            [("0.5.0".into(), "too big for the disk".into())]
        );
        assert_eq!(r.skipped(), ["0.3.0", "0.4.0", "0.5.0"]);
    }

    #[test]
    fn accepted_indexes_are_per_channel_and_give_the_newest_time() {
        let dir = tempfile::tempdir().unwrap();
        let r = Records::new(&dir.path().join("update"));
        assert_eq!(r.accepted("stable"), None);
        assert_eq!(r.newest_issued(), None);
        let a = Accepted {
            issued: 1_900_000_000,
            sha256: Digest::of(b"a"),
        };
        r.accept("stable", a).unwrap();
        r.accept(
            "beta",
            Accepted {
                issued: 1_900_000_500,
                sha256: Digest::of(b"b"),
            },
        )
        .unwrap();
        assert_eq!(r.accepted("stable"), Some(a));
        assert_eq!(r.newest_issued(), Some(1_900_000_500));
        // A damaged record is no record.
        std::fs::write(dir.path().join("update/index-stable"), "issued=soon\n").unwrap();
        assert_eq!(r.accepted("stable"), None);
    }
}
