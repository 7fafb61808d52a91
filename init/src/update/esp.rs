//! The ESP at run time: mounted only while the agent changes it (installing a UKI,
//! removing the other slot's, blessing a boot), through the kernel's vfat driver.
//!
//! Each change is one rename or one unlink, which FAT performs as a single directory entry
//! update: a power cut leaves the old name or the new one. A new UKI is written under a
//! temporary name, synced, then renamed into place, so a UKI name on the ESP always stands
//! for a complete file.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crust_format::boot_entry::{BootEntryName, UKI_DIR};
use nix::mount::{MntFlags, MsFlags, mount, umount2};

use crate::error::{Context, Error, Result};

/// Where the ESP is mounted while the agent works on it.
pub const MOUNT_POINT: &str = "/run/crust/esp";

/// The ESP, mounted; unmounted on drop.
#[derive(Debug)]
pub struct Esp {
    root: PathBuf,
}

impl Esp {
    /// Mounts the ESP partition `device` read-write.
    pub fn mount(device: &Path) -> Result<Self> {
        fs::create_dir_all(MOUNT_POINT)
            .context("update", || format!("cannot create {MOUNT_POINT}"))?;
        mount(
            Some(device),
            MOUNT_POINT,
            Some("vfat"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("flush,umask=0077"),
        )
        .context("update", || {
            format!("cannot mount the ESP {} (vfat)", device.display())
        })?;
        Ok(Self {
            root: PathBuf::from(MOUNT_POINT),
        })
    }

    fn dir(&self) -> PathBuf {
        self.root.join(UKI_DIR)
    }

    /// The Crust UKIs on the ESP, by file name.
    pub fn entries(&self) -> Vec<BootEntryName> {
        let mut names: Vec<BootEntryName> = fs::read_dir(self.dir())
            .map(|d| {
                d.flatten()
                    .filter_map(|e| BootEntryName::parse(&e.file_name().to_string_lossy()))
                    .collect()
            })
            .unwrap_or_default();
        names.sort_by_key(|a| a.file_name());
        names
    }

    /// Bytes a new UKI may take: the free space, plus the UKIs that `keep` does not keep
    /// (an install removes them first).
    pub fn room(&self, keep: &dyn Fn(&BootEntryName) -> bool) -> Result<u64> {
        let st = nix::sys::statvfs::statvfs(&self.root).map_err(|e| {
            Error::new(
                "update",
                format!("cannot measure the ESP's free space: {}", e.desc()),
            )
        })?;
        let free = st.blocks_available() * st.fragment_size();
        let removed: u64 = self
            .entries()
            .iter()
            .filter(|e| !keep(e))
            .filter_map(|e| fs::metadata(self.dir().join(e.file_name())).ok())
            .map(|m| m.len())
            .sum();
        Ok(free + removed)
    }

    /// Removes a UKI.
    pub fn remove(&self, entry: &BootEntryName) -> Result<()> {
        let path = self.dir().join(entry.file_name());
        fs::remove_file(&path).context("update", || format!("cannot remove {}", path.display()))?;
        self.sync()
    }

    /// Writes a UKI under `entry`'s name: to a temporary file first, synced, then (once
    /// `check` accepts what was read from `data`) renamed into place. A refused file is
    /// removed before systemd-boot could ever see it.
    pub fn install<R: std::io::Read>(
        &self,
        entry: &BootEntryName,
        data: &mut R,
        check: impl FnOnce(&mut R) -> Result<()>,
    ) -> Result<u64> {
        let dir = self.dir();
        fs::create_dir_all(&dir)
            .context("update", || format!("cannot create {}", dir.display()))?;
        let tmp = dir.join(".incoming.tmp");
        let final_path = dir.join(entry.file_name());
        let written = (|| -> std::io::Result<u64> {
            let mut f = fs::File::create(&tmp)?;
            let n = std::io::copy(data, &mut f)?;
            f.flush()?;
            f.sync_all()?;
            Ok(n)
        })()
        .context("update", || format!("cannot write {}", tmp.display()))?;
        if let Err(e) = check(data) {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        fs::rename(&tmp, &final_path)
            .context("update", || format!("cannot name {}", final_path.display()))?;
        self.sync()?;
        Ok(written)
    }

    /// Renames an entry (one directory entry update: a power cut leaves either name).
    pub fn rename(&self, from: &BootEntryName, to: &BootEntryName) -> Result<()> {
        let (a, b) = (
            self.dir().join(from.file_name()),
            self.dir().join(to.file_name()),
        );
        fs::rename(&a, &b).context("update", || {
            format!("cannot rename {} to {}", a.display(), b.display())
        })?;
        self.sync()
    }

    /// Writes a small note at `path` (relative to the ESP's root), synced.
    pub fn write_note(&self, path: &str, text: &str) -> Result<()> {
        let file = self.root.join(path);
        if let Some(dir) = file.parent() {
            fs::create_dir_all(dir)
                .context("update", || format!("cannot create {}", dir.display()))?;
        }
        (|| -> std::io::Result<()> {
            let mut f = fs::File::create(&file)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()
        })()
        .context("update", || format!("cannot write {}", file.display()))
    }

    /// Reads (at most `limit` bytes of) the note at `path` and removes it.
    pub fn take_note(&self, path: &str, limit: u64) -> Option<String> {
        use std::io::Read;
        let file = self.root.join(path);
        let mut text = String::new();
        let read = fs::File::open(&file)
            .ok()?
            .take(limit)
            .read_to_string(&mut text);
        let _ = fs::remove_file(&file);
        nix::unistd::sync();
        read.ok().map(|_| text)
    }

    /// Renames a counted entry to its blessed name (dropping the boot counter).
    pub fn bless(&self, entry: &BootEntryName) -> Result<BootEntryName> {
        let blessed = entry.blessed();
        let from = self.dir().join(entry.file_name());
        let to = self.dir().join(blessed.file_name());
        fs::rename(&from, &to).context("update", || {
            format!("cannot rename {} to {}", from.display(), to.display())
        })?;
        self.sync()?;
        Ok(blessed)
    }

    fn sync(&self) -> Result<()> {
        fs::File::open(self.dir())
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::new("update", format!("cannot sync the ESP: {e}")))
    }
}

impl Drop for Esp {
    fn drop(&mut self) {
        nix::unistd::sync();
        let _ = umount2(&self.root, MntFlags::empty());
    }
}
