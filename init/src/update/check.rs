//! One check of the update channel, from the index to the installed slot, on a thread of
//! its own: the download and the writes take seconds to minutes, and PID 1's main loop must
//! keep reaping, supervising services and answering the power button meanwhile.
//!
//! The thread owns everything it uses (a [`Checker`] is a copy of the agent's settings and
//! boot facts) and never starts a process: PID 1's loop reaps every child, and a process
//! this thread waited for could be reaped from under it. A shutdown [`Cancel`]s the check;
//! it stops at its next step (every write of the download, between the parts of the
//! install), which the install's order makes safe, and the next boot starts over.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crust_format::Digest;
use crust_format::boot_entry::BootEntryName;
use crust_format::bundle::{self, Header};
use crust_format::repo::{self, Index};
use crust_format::signature::PublicKey;

use super::record::{Pending, Records};
use super::{Booted, NET_TIMEOUT, Settings, install, say, unix_now};
use crate::error::{Context, Error, Result};
use crate::http;

/// What a cancelled check fails with.
pub(super) const STOPPED: &str =
    "stopped: the host is going down (the next boot starts the update over)";

/// Set when the host is going down; the check stops at its next step.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    /// Asks the check to stop.
    pub fn set(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether the check was asked to stop.
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// Fails once the check was asked to stop.
    pub fn check(&self) -> Result<()> {
        if self.is_set() {
            Err(Error::new("update", STOPPED))
        } else {
            Ok(())
        }
    }
}

/// What a check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checked {
    /// A newer version is installed in the other slot and waits for a reboot.
    Installed,
    /// Nothing to install, and why (up to date, a downgrade refused).
    Nothing(String),
}

/// Everything one check needs, owned, so that it can run on its own thread.
#[derive(Debug, Clone)]
pub struct Checker {
    /// The repository and channel.
    pub settings: Settings,
    /// The image's key, which signs indexes and bundles.
    pub key: PublicKey,
    /// The running system.
    pub booted: Booted,
    /// The agent's records (failed versions, the pending update).
    pub records: Records,
    /// Set at shutdown.
    pub cancel: Cancel,
}

impl Checker {
    /// Checks the channel and installs what it offers.
    pub fn check(&self) -> Result<Checked> {
        let s = &self.settings;
        let addr = s
            .repository
            .address()
            .map_err(|e| Error::new("update", format!("{}: {e}", s.repository.host)))?;
        let fetch = |rel: &str, limit: u64| -> Result<Vec<u8>> {
            let mut body = Vec::new();
            http::download(addr, &s.repository.join(rel), NET_TIMEOUT, limit, &mut body)
                .map_err(|e| Error::new("update", format!("{}: {e}", rel)))?;
            Ok(body)
        };
        let text = fetch(&repo::index_path(&s.channel), 1 << 20)?;
        let sig = fetch(&repo::signature_path(&s.channel), 64)?;
        self.key.verify(&text, &sig).map_err(|e| {
            Error::new(
                "update",
                format!(
                    "the {} index is not signed by this image's key ({e}); refused",
                    s.channel
                ),
            )
        })?;
        let index = Index::parse(&String::from_utf8_lossy(&text))
            .map_err(|e| Error::new("update", e.to_string()))?;
        let now = unix_now();
        if index.expires <= now {
            return Err(Error::new(
                "update",
                format!(
                    "the {} index expired {} s ago; refused (the repository must be republished)",
                    s.channel,
                    now - index.expires
                ),
            ));
        }
        let running = &self.booted.manifest.version;
        let failed = self.records.failed();
        let Some(release) = index.target(running, &failed).cloned() else {
            let newest = index
                .releases
                .first()
                .map_or("nothing".to_owned(), |r| r.version.clone());
            let why = if crust_format::version::compare_versions(&newest, running)
                == std::cmp::Ordering::Less
            {
                format!(
                    "the channel offers {newest}, older than {running}: downgrades are refused unless the index allows them"
                )
            } else {
                format!("up to date ({running}; the channel's newest is {newest})")
            };
            return Ok(Checked::Nothing(why));
        };
        say(&format!(
            "found {} on channel {} ({} bytes); running {running}",
            release.version, s.channel, release.size
        ));
        let started = Instant::now();
        let path = self.download(addr, s, &release)?;
        say(&format!(
            "downloaded {} bytes in {:.1} s; checking every digest and the signature",
            release.size,
            started.elapsed().as_secs_f64()
        ));
        let (header, header_len) = self.verify_bundle(&path, &release.version)?;
        let target = install::find(&self.booted.disk, self.booted.slot.other())?;
        // Everything but the running version's UKI goes: that is what the other slot held
        // (or a failed version's leftovers).
        let keep_version = running.clone();
        let keep = move |e: &BootEntryName| e.version == keep_version;
        say(&format!(
            "writing {} into slot {}",
            release.version,
            target.slot.as_str()
        ));
        self.cancel.check()?;
        let installed = install::install(
            &path,
            &header,
            header_len,
            &target,
            &keep,
            &self.booted.devices,
            &self.cancel,
        )?;
        self.records
            .set_pending(&Pending {
                version: release.version.clone(),
                slot: target.slot.as_str().into(),
                from: running.clone(),
            })
            .context("update", || "cannot record the installed update".into())?;
        let _ = std::fs::remove_file(&path);
        say(&format!(
            "{} installed in slot {} as {} ({} bytes written{}) in {:.1} s",
            release.version,
            target.slot.as_str(),
            installed.entry.file_name(),
            installed.written,
            if installed.removed.is_empty() {
                String::new()
            } else {
                format!(", removed {}", installed.removed.join(" "))
            },
            started.elapsed().as_secs_f64()
        ));
        Ok(Checked::Installed)
    }

    /// Downloads a release's bundle to `/var` (streamed, hashed on the way); an already
    /// complete download is reused.
    fn download(
        &self,
        addr: std::net::SocketAddr,
        s: &Settings,
        release: &repo::Release,
    ) -> Result<PathBuf> {
        let dir = self.records.downloads();
        std::fs::create_dir_all(&dir)
            .context("update", || format!("cannot create {}", dir.display()))?;
        let path = dir.join(format!("{}.bundle", release.sha256));
        if file_digest(&path).is_some_and(|d| d == release.sha256) {
            return Ok(path);
        }
        let partial = dir.join("partial");
        let mut file = std::fs::File::create(&partial)
            .context("update", || format!("cannot create {}", partial.display()))?;
        let mut hashing = HashingWriter::new(&mut file, &self.cancel);
        http::download(
            addr,
            &s.repository.join(&repo::bundle_path(&release.sha256)),
            NET_TIMEOUT,
            release.size,
            &mut hashing,
        )
        .map_err(|e| Error::new("update", format!("bundle {}: {e}", release.version)))?;
        let (bytes, digest) = hashing.finish();
        if bytes != release.size || digest != release.sha256 {
            let _ = std::fs::remove_file(&partial);
            return Err(Error::new(
                "update",
                format!(
                    "the bundle of {} does not match the signed index (got {bytes} bytes, {}); refused, nothing written",
                    release.version,
                    digest.short(12)
                ),
            ));
        }
        file.sync_all()
            .context("update", || "cannot sync the download".into())?;
        std::fs::rename(&partial, &path).context("update", || "cannot keep the download".into())?;
        // The rename must survive a power cut too, or the next boot downloads it again.
        std::fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .context("update", || "cannot sync the download folder".into())?;
        Ok(path)
    }

    /// Checks a downloaded bundle in full before anything is written.
    fn verify_bundle(&self, path: &Path, version: &str) -> Result<(Header, u64)> {
        let bytes =
            std::fs::read(path).context("update", || format!("cannot read {}", path.display()))?;
        let bad = |m: String| {
            Error::new(
                "update",
                format!("bundle {version}: {m}; refused, nothing written"),
            )
        };
        let prefix: &[u8; 12] = bytes
            .get(..12)
            .and_then(|p| p.try_into().ok())
            .ok_or_else(|| bad("truncated".into()))?;
        let len = bundle::header_len(prefix).map_err(|e| bad(e.to_string()))? as usize;
        let text = bytes
            .get(12..12 + len)
            .ok_or_else(|| bad("truncated".into()))?;
        let sig = bytes
            .get(12 + len..12 + len + 64)
            .ok_or_else(|| bad("truncated".into()))?;
        self.key
            .verify(text, sig)
            .map_err(|e| bad(format!("header signature: {e}")))?;
        let header =
            Header::parse(&String::from_utf8_lossy(text)).map_err(|e| bad(e.to_string()))?;
        let m = &self.booted.manifest;
        if header.name != m.name || header.version != version {
            return Err(bad(format!(
                "it holds {} {}, not {} {version}",
                header.name, header.version, m.name
            )));
        }
        if header.layout != m.layout {
            return Err(bad(format!(
                "it needs disk layout {} but this disk has layout {}",
                header.layout, m.layout
            )));
        }
        if header.file_size(len as u64) != bytes.len() as u64 {
            return Err(bad("its size does not match its header".into()));
        }
        for part in &header.parts {
            let at = header.part_offset(len as u64, part.kind) as usize;
            if Digest::of(&bytes[at..at + part.size as usize]) != part.sha256 {
                return Err(bad(format!(
                    "the {} part does not match its digest",
                    part.kind.as_str()
                )));
            }
        }
        Ok((header, len as u64))
    }
}

fn file_digest(path: &Path) -> Option<Digest> {
    std::fs::read(path).ok().map(|b| Digest::of(&b))
}

/// Hashes what is written through it; fails once the check is cancelled.
struct HashingWriter<'a> {
    inner: &'a mut std::fs::File,
    cancel: &'a Cancel,
    hasher: sha2::Sha256,
    bytes: u64,
}

impl<'a> HashingWriter<'a> {
    fn new(inner: &'a mut std::fs::File, cancel: &'a Cancel) -> Self {
        use sha2::Digest as _;
        Self {
            inner,
            cancel,
            hasher: sha2::Sha256::new(),
            bytes: 0,
        }
    }

    fn finish(self) -> (u64, Digest) {
        use sha2::Digest as _;
        (self.bytes, Digest(self.hasher.finalize().into()))
    }
}

impl Write for HashingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        use sha2::Digest as _;
        if self.cancel.is_set() {
            return Err(std::io::Error::other(STOPPED));
        }
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
