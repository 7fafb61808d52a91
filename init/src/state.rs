//! The state partition on `/var`: the one place the host keeps anything across reboots.
//!
//! Stage 2 finds it on the boot disk (type "variable data", label `state`), grows it to the
//! end of a disk larger than the image, checks it with the root's `e2fsck -p`, mounts it,
//! and keeps the host's identity there: the machine id (made on the first boot, copied to
//! `/etc/machine-id` on every boot) and a boot count.
//!
//! A broken state partition does not take the host down: a reboot loop would not repair it,
//! and a rollback to the other slot would meet the same disk. The host comes up with a
//! tmpfs on `/var` instead and says so on the console, naming the device and what to do.
//!
//! An encrypted state partition ([`crate::sealed`]) is opened through dm-crypt first, its
//! key unsealed from the TPM (made, sealed and formatted on the first boot). When the key
//! cannot be had, the image's `without-tpm` policy decides: refuse the boot (an error, so a
//! new version that cannot unseal rolls back), or a tmpfs `/var`. The partition itself is
//! never written then.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crust_format::layout::{STATE_DIR, type_guid};
use gpt::disk::LogicalBlockSize;
use nix::mount::{MsFlags, mount};

use crate::console;
use crate::devnode::{self, Kind};
use crate::disk;
use crate::error::{Context, Error, Result};
use crate::grow::{self, Growth};
use crate::sealed::{self, Opened};
use crust_format::layout::STATE_LABEL;
use crust_format::sealed::{Encryption, WithoutTpm};

/// The mount point.
pub const VAR: &str = "/var";
/// e2fsck in the verified root (Debian's e2fsprogs).
const E2FSCK: &str = "/usr/sbin/e2fsck";
/// mke2fs, from the same package: the file system of an encrypted partition is made on the
/// host, inside dm-crypt, on its first boot.
const MKE2FS: &str = "/usr/sbin/mke2fs";
/// The host's machine id, kept across boots.
const MACHINE_ID: &str = "machine-id";
/// Boots on this disk so far.
const BOOT_COUNT: &str = "boot-count";

/// What `e2fsck -p` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Nothing to repair.
    Clean,
    /// Errors were repaired.
    Repaired,
    /// No e2fsck in the root: not checked.
    Skipped,
}

/// The state partition as mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    /// Its device node.
    pub device: PathBuf,
    /// Size of the file system on `/var`, in bytes.
    pub size: u64,
    /// Growth this boot, if the disk was larger.
    pub grown: Option<Growth>,
    /// The file system check.
    pub check: Check,
    /// The machine id.
    pub machine_id: String,
    /// Whether it was made this boot.
    pub new_id: bool,
    /// Boots so far, this one included.
    pub boots: u64,
    /// How it is encrypted (`None`: a plain ext4).
    pub encryption: Option<String>,
}

/// Why the state partition was not mounted.
#[derive(Debug)]
enum Failure {
    /// It could not be used (the caller falls back to a tmpfs).
    Broken(Error),
    /// Its key could not be had; the image's `without-tpm` policy decides.
    NoKey(String),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Broken(e)
    }
}

/// Sets up `/var` on the state partition of `disk`; on failure falls back to a tmpfs and
/// returns the reason. Returns the console detail either way, or an error when the key of
/// an encrypted partition cannot be had and the image refuses to run without it.
pub fn setup(disk: &str) -> Result<String> {
    let policy = sealed::policy();
    let (why, note) = match mount_state(disk, &policy) {
        Ok(state) => return Ok(describe(&state)),
        Err(Failure::Broken(e)) => (e.check.to_owned(), e.to_string()),
        Err(Failure::NoKey(why)) => {
            if policy.without_tpm == WithoutTpm::Refuse {
                return Err(Error::new(
                    "state-key",
                    format!(
                        "/var's key is not available: {why}. This image refuses to run without \
                         its encrypted /var (state.without-tpm = \"refuse\"); the data on it is \
                         untouched"
                    ),
                )
                .advice(
                    "boot it on the machine and TPM it was sealed on, with Secure Boot on, or \
                     recover the data with the owner's recovery key (docs/SECURE-BOOT.md#recovery)",
                ));
            }
            (
                "state-key".to_owned(),
                format!(
                    "/var's key is not available: {why}; the encrypted state partition is untouched"
                ),
            )
        }
    };
    console::warning(&format!(
        "{note}; /var is a tmpfs this boot: nothing written to it will be kept"
    ));
    Ok(volatile(&why))
}

/// Mounts a tmpfs on `/var` with a machine id in it; returns the console detail, which
/// says `/var` is `NOT persistent` and `why`.
pub fn volatile(why: &str) -> String {
    let fallback = mount(
        Some("tmpfs"),
        VAR,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=0755"),
    );
    let id = fallback.ok().and_then(|_| identity(Path::new(VAR)).ok());
    if let Some((id, _)) = &id {
        install_machine_id(id);
    }
    format!(
        "tmpfs on /var, NOT persistent ({why}); machine-id {}",
        id.map_or("none".into(), |(id, _)| id)
    )
}

fn describe(s: &State) -> String {
    let size = |b: u64| format!("{:.1} GiB", b as f64 / f64::from(1u32 << 30));
    let grown = s
        .grown
        .map(|g| format!(" (grown from {})", size(g.old_bytes)))
        .unwrap_or_default();
    let check = match s.check {
        Check::Clean => "checked clean",
        Check::Repaired => "repaired by e2fsck",
        Check::Skipped => "not checked (no e2fsck)",
    };
    let encryption = s
        .encryption
        .as_ref()
        .map(|e| format!(" encrypted ({e}),"))
        .unwrap_or_default();
    format!(
        "{}{encryption} ext4 on /var, {}{grown}, {check}; machine-id {} ({}), boot {}",
        s.device.display(),
        size(s.size),
        &s.machine_id[..12.min(s.machine_id.len())],
        if s.new_id { "new" } else { "kept" },
        s.boots
    )
}

fn mount_state(
    disk: &str,
    policy: &crust_format::sealed::StatePolicy,
) -> std::result::Result<State, Failure> {
    let disk_node = Path::new("/dev").join(disk);
    let block_size = match fs::read_to_string(format!(
        "{}/{disk}/queue/logical_block_size",
        disk::SYS_BLOCK
    )) {
        Ok(s) if s.trim() == "4096" => LogicalBlockSize::Lb4096,
        _ => LogicalBlockSize::Lb512,
    };
    let table = disk::read_table(&disk_node, block_size).context("state", || {
        format!("cannot read the GPT of {}", disk_node.display())
    })?;
    let (&number, _) = table
        .iter()
        .find(|(_, p)| p.part_type_guid.guid == type_guid::VAR && p.name == "state")
        .ok_or_else(|| Error::new("state", format!("{disk} has no state partition")))?;
    let grown = grow::grow_partition(&disk_node, number)?;
    let part = disk::partitions(disk).remove(&number).ok_or_else(|| {
        Error::new(
            "state",
            format!("the kernel shows no partition {number} on {disk}"),
        )
    })?;
    let partition = part.node();
    devnode::ensure(&partition, Kind::Block, part.dev, Duration::from_secs(1))
        .context("state", || format!("cannot create {}", partition.display()))?;

    let (device, fs_bytes, encryption) =
        match sealed::open(&partition, part.dev, part.sectors, policy) {
            Ok(Opened::Plain) => {
                if policy.encryption == Encryption::Tpm {
                    console::warning(&format!(
                        "{} is a plain ext4 made by an image without encryption: /var is NOT \
                         encrypted (whoever holds the disk reads it); to encrypt it, copy its data \
                         off and reinstall",
                        partition.display()
                    ));
                }
                (partition.clone(), grown.map(|g| g.new_bytes), None)
            }
            Ok(Opened::Crypt(mut crypt)) => {
                if crypt.format {
                    let made = std::time::Instant::now();
                    make_file_system(&crypt.node)?;
                    crypt.formatted()?;
                    crypt
                        .detail
                        .push_str(&format!("; ext4 made in {} ms", made.elapsed().as_millis()));
                }
                let detail = format!("as {}: {}", crypt.node.display(), crypt.detail);
                (crypt.node.clone(), grown.map(|_| crypt.size), Some(detail))
            }
            Err(sealed::OpenError::NoKey(why)) => return Err(Failure::NoKey(why)),
            Err(sealed::OpenError::Broken(why)) => {
                return Err(Failure::Broken(Error::new("state", why)));
            }
        };

    let check = check(&device)?;
    mount(
        Some(&device),
        VAR,
        Some("ext4"),
        // Nothing the host runs comes from the unverified state partition: no program on it
        // can be executed, set-uid or a device (containers' images run through their own
        // overlay mounts, which this does not cover).
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("errors=remount-ro"),
    )
    .context("state", || {
        format!("cannot mount {} (ext4) on {VAR}", device.display())
    })?;
    let size = match fs_bytes {
        Some(bytes) => grow::grow_ext4(Path::new(VAR), bytes)?,
        None => {
            let st =
                nix::sys::statvfs::statvfs(VAR).context("state", || "cannot stat /var".into())?;
            st.blocks() * st.fragment_size()
        }
    };
    for (dir, mode) in [
        ("lib/crust", 0o755),
        ("log", 0o755),
        ("cache", 0o755),
        ("tmp", 0o1777),
    ] {
        let path = Path::new(VAR).join(dir);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(&path)
            .context("state", || format!("cannot create {}", path.display()))?;
    }
    let (machine_id, new_id) = identity(Path::new(VAR))?;
    install_machine_id(&machine_id);
    let boots = count_boot(&Path::new(STATE_DIR).join(BOOT_COUNT))?;
    Ok(State {
        device: if encryption.is_some() {
            partition
        } else {
            device
        },
        size,
        grown,
        check,
        machine_id,
        new_id,
        boots,
        encryption,
    })
}

/// Makes the ext4 of an encrypted state partition inside dm-crypt (a first boot). Lazy
/// inode table and journal initialisation: what lies under them decrypts to noise, which
/// neither ext4 nor its journal replay ever reads as their own.
fn make_file_system(device: &Path) -> Result<()> {
    let out = Command::new(MKE2FS)
        .args([
            "-q",
            "-F",
            "-t",
            "ext4",
            "-b",
            "4096",
            "-L",
            STATE_LABEL,
            "-m",
            "1",
        ])
        .args(["-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard"])
        .arg(device)
        .env("PATH", "/usr/sbin:/usr/bin")
        .output()
        .context("state", || format!("cannot run {MKE2FS}"))?;
    if !out.status.success() {
        return Err(Error::new(
            "state",
            format!(
                "mke2fs failed on {}: {}",
                device.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    Ok(())
}

/// Runs `e2fsck -p` (preen: repair what is safe without questions).
fn check(device: &Path) -> Result<Check> {
    if !Path::new(E2FSCK).is_file() {
        return Ok(Check::Skipped);
    }
    let out = Command::new(E2FSCK)
        .arg("-p")
        .arg(device)
        .env("PATH", "/usr/sbin:/usr/bin")
        .output()
        .context("state", || format!("cannot run {E2FSCK}"))?;
    let report = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    match out.status.code() {
        Some(0) => Ok(Check::Clean),
        Some(1) | Some(2) => {
            console::warning(&format!("e2fsck repaired {}: {report}", device.display()));
            Ok(Check::Repaired)
        }
        code => Err(Error::new(
            "state",
            format!(
                "e2fsck could not repair {} (exit {code:?}): {report} {}",
                device.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        )
        .advice(
            "repair it from a rescue system (e2fsck -f), or clear the partition to start afresh",
        )),
    }
}

/// The machine id under `var`, made on first use.
fn identity(var: &Path) -> Result<(String, bool)> {
    let dir = var.join("lib/crust");
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&dir)
        .context("state", || format!("cannot create {}", dir.display()))?;
    let path = dir.join(MACHINE_ID);
    let (id, new) = match fs::read_to_string(&path)
        .ok()
        .and_then(|t| parse_machine_id(&t))
    {
        Some(id) => (id, false),
        None => {
            let id = new_machine_id()?;
            write_durably(&path, format!("{id}\n").as_bytes())?;
            (id, true)
        }
    };
    Ok((id, new))
}

/// The machine id of what is now mounted on `/var` (made on its first use), installed as
/// `/etc/machine-id`: a network-booted host's state disk, mounted after the tmpfs
/// ([`crate::netboot::state`]). `none` when it cannot be had (said on the console).
pub fn adopt_identity() -> String {
    match identity(Path::new(VAR)) {
        Ok((id, _)) => {
            install_machine_id(&id);
            id
        }
        Err(e) => {
            console::warning(&format!("state: no machine id on /var: {e}"));
            "none".into()
        }
    }
}

/// Installs the machine id as `/etc/machine-id` (on the `/etc` overlay).
fn install_machine_id(id: &str) {
    if let Err(e) = fs::write("/etc/machine-id", format!("{id}\n")) {
        console::warning(&format!("cannot write /etc/machine-id: {e}"));
    }
}

/// A machine id is 32 lowercase hex digits (systemd's format), not all zero.
pub fn parse_machine_id(text: &str) -> Option<String> {
    let id = text.trim_end_matches('\n');
    let ok = id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && id.bytes().any(|b| b != b'0');
    ok.then(|| id.to_owned())
}

fn new_machine_id() -> Result<String> {
    let mut bytes = [0u8; 16];
    // Unique, not secret: no need to wait (a second and more under emulation) for the
    // kernel's generator to be fully seeded.
    crate::random::fill(&mut bytes).context("state", || "no randomness from the kernel".into())?;
    // Formatted as a random (version 4) UUID without dashes, as systemd does.
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Increments the boot count at `path`; returns the new value.
fn count_boot(path: &Path) -> Result<u64> {
    let boots = fs::read_to_string(path)
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok())
        .unwrap_or(0)
        + 1;
    write_durably(path, format!("{boots}\n").as_bytes())?;
    Ok(boots)
}

/// Writes `data` to `path` through a temporary file, synced and renamed, so a power cut
/// leaves the old content or the new one.
fn write_durably(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let written = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(data)?;
            f.sync_all()
        })
        .and_then(|_| fs::rename(&tmp, path))
        .and_then(|_| File::open(path.parent().unwrap_or(Path::new("/")))?.sync_all());
    written.context("state", || format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_ids_are_checked() {
        assert_eq!(
            parse_machine_id("0123456789abcdef0123456789abcdef\n").as_deref(),
            Some("0123456789abcdef0123456789abcdef")
        );
        assert_eq!(parse_machine_id("0123456789ABCDEF0123456789abcdef"), None);
        assert_eq!(parse_machine_id(&"0".repeat(32)), None);
        assert_eq!(parse_machine_id("short"), None);
        let id = new_machine_id().unwrap();
        assert_eq!(parse_machine_id(&id), Some(id.clone()));
        assert_eq!(&id[12..13], "4");
    }

    #[test]
    fn identity_is_made_once_and_kept() {
        let var = tempfile::tempdir().unwrap();
        let (a, new_a) = identity(var.path()).unwrap();
        let (b, new_b) = identity(var.path()).unwrap();
        assert!(new_a && !new_b);
        assert_eq!(a, b);
        let count = var.path().join("boots");
        assert_eq!(count_boot(&count).unwrap(), 1);
        assert_eq!(count_boot(&count).unwrap(), 2);
    }
}
