//! The installer's medium: the ISO 9660 file system labelled `CRUST-INSTALL` (a CD, BMC
//! virtual media, or a USB stick the hybrid ISO was written onto), found by reading labels
//! off the raw devices, mounted read-only, and its list checked against the image's key
//! before any file on it is used.

use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crust_format::Digest;
use crust_format::install;
use crust_format::signature::PublicKey;
use crust_format::sums::{SUMS, SUMS_SIG, Sums};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use sha2::{Digest as _, Sha256};

use crate::config::nocloud::{self, FsKind};
use crate::devnode::{self, DevNum, Kind};
use crate::error::{Context, Error, Result};

/// Where the medium is mounted.
pub const MOUNT_POINT: &str = "/run/crust/medium";
const SYS_CLASS_BLOCK: &str = "/sys/class/block";
/// Largest user-data or list read from the medium.
const MAX_TEXT: u64 = 1 << 20;

/// The medium, mounted.
#[derive(Debug)]
pub struct Medium {
    /// The device holding the ISO 9660 file system (`/dev/sr0`, `/dev/sda`).
    pub device: PathBuf,
    /// The kernel name of the whole disk it is on (never a target); empty for the network.
    pub disk: String,
    /// The folder holding [`install::DIR`]: the mount point, or the fetched copy.
    pub root: PathBuf,
    /// Whether `root` is a mount to undo.
    mounted: bool,
}

/// What the medium carries, its list verified.
#[derive(Debug)]
pub struct Release {
    /// The verified list.
    pub sums: Sums,
    /// The list's exact bytes and its signature (handed on with the user-data).
    pub list: Vec<u8>,
    /// The list's signature by the image's key.
    pub signature: Vec<u8>,
    /// The user-data on the medium (listed and checked), if any.
    pub user_data: Option<String>,
    /// The compressed image's path.
    pub image: PathBuf,
}

/// Waits up to `timeout` for a device whose ISO 9660 label is `CRUST-INSTALL`, and mounts
/// it read-only.
pub fn find(timeout: Duration) -> Result<Medium> {
    let deadline = Instant::now() + timeout;
    let device = loop {
        if let Some(found) = probe() {
            break found;
        }
        if Instant::now() >= deadline {
            return Err(Error::new(
                "install-medium",
                format!(
                    "no device with the ISO 9660 label {} appeared within {} s",
                    install::LABEL,
                    timeout.as_secs()
                ),
            )
            .advice("the installer reads its release from the medium it booted from; check that the CD or USB driver is in the profile's kernel modules"));
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    fs::create_dir_all(MOUNT_POINT)
        .context("install-medium", || format!("cannot create {MOUNT_POINT}"))?;
    let flags = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(
        Some(&device.0),
        MOUNT_POINT,
        Some("iso9660"),
        flags,
        None::<&str>,
    )
    .context("install-medium", || {
        format!("cannot mount {} (iso9660) read-only", device.0.display())
    })?;
    Ok(Medium {
        device: device.0,
        disk: device.1,
        root: PathBuf::from(MOUNT_POINT),
        mounted: true,
    })
}

/// Where a network installation keeps what it fetched (memory).
pub const NETWORK_DIR: &str = "/run/crust/medium-net";
/// Largest compressed image fetched over the network.
const MAX_NETWORK_IMAGE: u64 = 16 << 30;

/// A network installation's "medium": DHCP, then the release's `SHA256SUMS`, its
/// signature, `image.raw.zst` (and `user-data`, if the server has one) fetched by TFTP
/// from the server that granted the lease. Checked exactly as a medium's files are.
pub fn fetch_from_network() -> Result<Medium> {
    let mut network = crate::net::Network::start();
    network
        .up_for_metadata()
        .map_err(|e| Error::new("install-medium", format!("no network to install from: {e}")))?;
    let server = network.dhcp_server().ok_or_else(|| {
        Error::new(
            "install-medium",
            "the DHCP lease names no server to fetch from",
        )
    })?;
    let dir = Path::new(NETWORK_DIR).join(install::DIR);
    fs::create_dir_all(&dir).context("install-medium", || {
        format!("cannot create {}", dir.display())
    })?;
    let started = Instant::now();
    let mut bytes = 0;
    for (name, limit, needed) in [
        (SUMS, MAX_TEXT, true),
        (SUMS_SIG, MAX_TEXT, true),
        (install::USER_DATA, MAX_TEXT, false),
        (install::IMAGE, MAX_NETWORK_IMAGE, true),
    ] {
        let path = dir.join(name);
        let file = File::create(&path).context("install-medium", || {
            format!("cannot create {}", path.display())
        })?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
        match crate::netboot::tftp::fetch(server, name, &mut out, limit) {
            Ok(n) => bytes += n,
            Err(_) if !needed => {
                drop(out);
                let _ = fs::remove_file(&path);
            }
            Err(e) => {
                return Err(Error::new(
                    "install-medium",
                    format!("cannot fetch {name} from {server} by TFTP: {e}"),
                ));
            }
        }
    }
    crate::console::note(
        super::WHO,
        &format!(
            "fetched the release ({} MiB) from {server} by TFTP in {} ms",
            bytes >> 20,
            started.elapsed().as_millis()
        ),
    );
    Ok(Medium {
        device: PathBuf::from(format!("tftp://{server}")),
        disk: String::new(),
        root: PathBuf::from(NETWORK_DIR),
        mounted: false,
    })
}

/// The first block device (name order; whole disks sort before their partitions) that
/// holds the medium's label: its node and its disk's kernel name.
fn probe() -> Option<(PathBuf, String)> {
    let mut names: Vec<String> = fs::read_dir(SYS_CLASS_BLOCK)
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| {
            !["loop", "ram", "zram", "dm-", "fd"]
                .iter()
                .any(|p| n.starts_with(p))
        })
        .collect();
    names.sort();
    names.into_iter().find_map(|name| {
        let sys = Path::new(SYS_CLASS_BLOCK).join(&name);
        let size: u64 = fs::read_to_string(sys.join("size"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        if size == 0 {
            return None;
        }
        let device = Path::new("/dev").join(&name);
        let dev = DevNum::from_sysfs(&sys).ok()?;
        devnode::ensure(&device, Kind::Block, dev, Duration::from_millis(200)).ok()?;
        let mut head = Vec::with_capacity(nocloud::PROBE_BYTES);
        File::open(&device)
            .ok()?
            .take(nocloud::PROBE_BYTES as u64)
            .read_to_end(&mut head)
            .ok()?;
        match nocloud::label(&head)? {
            (FsKind::Iso9660, label) if label == install::LABEL => {
                Some((device, super::disks::disk_of(&name)))
            }
            _ => None,
        }
    })
}

impl Medium {
    fn path(&self, name: &str) -> PathBuf {
        self.root.join(install::DIR).join(name)
    }

    /// Checks the list's signature with `key` (the image's public key), then reads the
    /// user-data and checks it against the list.
    pub fn verify(&self, key: &[u8]) -> Result<Release> {
        let key = PublicKey::from_bytes(key).context("install-key", || {
            "the image's public key in the initramfs is unusable".into()
        })?;
        let list_path = self.path(SUMS);
        let list = read_limited(&list_path)?;
        let signature = read_limited(&self.path(SUMS_SIG))?;
        key.verify(&list, &signature)
            .context("install-signature", || {
                format!(
                    "{} is not signed by the image's key {}",
                    list_path.display(),
                    key.fingerprint()
                )
            })?;
        let sums = Sums::parse(&list).context("install-signature", || {
            format!("{} is signed but malformed", list_path.display())
        })?;
        for name in [install::IMAGE, install::RAW_IMAGE] {
            if sums.get(name).is_none() {
                return Err(Error::new(
                    "install-signature",
                    format!("{} does not list {name}", list_path.display()),
                ));
            }
        }
        let user_path = self.path(install::USER_DATA);
        let user_data = match (sums.get(install::USER_DATA), user_path.exists()) {
            (Some(want), true) => {
                let bytes = read_limited(&user_path)?;
                let found = Digest::of(&bytes);
                if &found != want {
                    return Err(Error::new(
                        "install-user-data",
                        format!(
                            "{} does not match the signed list (expected {}, found {})",
                            user_path.display(),
                            want.to_hex(),
                            found.to_hex()
                        ),
                    ));
                }
                Some(String::from_utf8(bytes).map_err(|_| {
                    Error::new(
                        "install-user-data",
                        format!("{} is not UTF-8 text", user_path.display()),
                    )
                })?)
            }
            (Some(_), false) => {
                return Err(Error::new(
                    "install-user-data",
                    format!("the list names {} but it is missing", user_path.display()),
                ));
            }
            (None, true) => {
                return Err(Error::new(
                    "install-user-data",
                    format!(
                        "{} is not in the signed list: the medium was changed after signing",
                        user_path.display()
                    ),
                ));
            }
            (None, false) => None,
        };
        Ok(Release {
            sums,
            list,
            signature,
            user_data,
            image: self.path(install::IMAGE),
        })
    }

    /// Unmounts the medium.
    pub fn release(self) {
        if self.mounted {
            let _ = umount2(&self.root, MntFlags::MNT_DETACH);
        }
    }
}

impl Release {
    /// The digest the list gives for `name` (checked present by [`Medium::verify`]).
    pub fn digest(&self, name: &str) -> Digest {
        self.sums.get(name).copied().unwrap_or(Digest([0; 32]))
    }

    /// Hashes the whole compressed image and compares it with the list: a changed byte is
    /// refused before the disk is touched.
    pub fn check_image(&self) -> Result<()> {
        let mut file = File::open(&self.image).context("install-image", || {
            format!("cannot open {}", self.image.display())
        })?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf).context("install-image", || {
                format!("cannot read {}", self.image.display())
            })?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        let found = Digest(hasher.finalize().into());
        let want = self.digest(install::IMAGE);
        if found != want {
            return Err(Error::new(
                "install-image",
                format!(
                    "{} does not match the signed list (expected {}, found {}): it was changed \
                     after signing",
                    self.image.display(),
                    want.to_hex(),
                    found.to_hex()
                ),
            ));
        }
        Ok(())
    }
}

fn read_limited(path: &Path) -> Result<Vec<u8>> {
    let file = File::open(path).context("install-medium", || {
        format!("cannot open {}", path.display())
    })?;
    let mut data = Vec::new();
    file.take(MAX_TEXT + 1)
        .read_to_end(&mut data)
        .context("install-medium", || {
            format!("cannot read {}", path.display())
        })?;
    if data.len() as u64 > MAX_TEXT {
        return Err(Error::new(
            "install-medium",
            format!("{} is larger than {MAX_TEXT} bytes", path.display()),
        ));
    }
    Ok(data)
}
