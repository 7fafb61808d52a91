//! RAID 0 of a volume's disks: Linux md (the kernel's `md_mod` and `raid0`, which the
//! shipped profiles load) and Debian's `mdadm`, run by the helper process.
//!
//! An array is made once, with metadata 1.2 (its superblock 4 KiB into each member, the
//! data after it) and the name `crust:<volume>`, by which the host knows its members on
//! every later boot (there is no udev to assemble arrays): `mdadm --create /dev/md/<volume>
//! --run --level=0 --raid-devices=N --metadata=1.2 --name=crust:<volume> <disks>` on first
//! use, `mdadm --assemble /dev/md/<volume> --run <members>` afterwards. RAID 0 has no
//! redundancy and no resynchronisation: the array is usable the moment it exists, and one
//! lost member loses it (instance stores lose their data at every stop anyway).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crust_format::volume::array_name;

use super::disks::Sysfs;

/// mdadm, from the root.
const MDADM: &str = "/usr/sbin/mdadm";
/// The kernel's list of arrays.
pub const MDSTAT: &str = "/proc/mdstat";

/// The node mdadm is asked to make for volume `name`'s array.
pub fn node(name: &str) -> PathBuf {
    Path::new("/dev/md").join(name)
}

fn mdadm(args: &[&str], members: &[PathBuf]) -> Result<String, String> {
    if !Path::new(MDADM).is_file() {
        return Err(format!(
            "{MDADM} is not in this image: add mdadm to the profile's [root] packages"
        ));
    }
    if !Path::new(MDSTAT).exists() {
        return Err(format!(
            "this kernel has no md driver ({MDSTAT} is missing): add md_mod and raid0 to the \
             profile's [kernel] modules"
        ));
    }
    let out = Command::new(MDADM)
        .args(args)
        .args(members)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {MDADM}: {e}"))?;
    let text = format!(
        "{} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!(
            "mdadm {} failed ({}): {text}",
            args.first().copied().unwrap_or(""),
            out.status
        ))
    }
}

/// Makes volume `name`'s RAID 0 of `members` (all empty: the caller checked).
pub fn create(name: &str, members: &[PathBuf]) -> Result<String, String> {
    let node = node(name);
    let count = format!("--raid-devices={}", members.len());
    let label = format!("--name={}", array_name(name));
    mdadm(
        &[
            "--create",
            &node.to_string_lossy(),
            "--run",
            "--level=0",
            &count,
            "--metadata=1.2",
            &label,
        ],
        members,
    )
}

/// Assembles volume `name`'s array from `members` (each carrying its superblock).
pub fn assemble(name: &str, members: &[PathBuf]) -> Result<String, String> {
    let node = node(name);
    mdadm(&["--assemble", &node.to_string_lossy(), "--run"], members)
}

/// The md array `member` belongs to, if one is running: its kernel name (`md127`).
pub fn array_of(sys: &Sysfs, member: &str) -> Option<String> {
    fs::read_dir(sys.block(member).join("holders"))
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .find(|h| h.starts_with("md"))
}

/// The members of running array `md` (kernel names), from sysfs.
pub fn members_of(sys: &Sysfs, md: &str) -> Vec<String> {
    let mut members: Vec<String> = fs::read_dir(sys.block(md).join("slaves"))
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    members.sort();
    members
}

/// `/proc/mdstat`'s lines about `md` (`md127 : active raid0 vdc[1] vdb[0]` and the next
/// one, with the size and chunk), joined.
pub fn mdstat(md: &str) -> String {
    let text = fs::read_to_string(MDSTAT).unwrap_or_default();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line.split_whitespace().next() == Some(md) {
            let next = lines.next().unwrap_or("").trim();
            return format!("{} {next}", line.trim());
        }
    }
    format!("{md} is not in {MDSTAT}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrays_are_found_through_holders_and_slaves() {
        let dir = tempfile::tempdir().unwrap();
        let sys = Sysfs {
            root: dir.path().to_path_buf(),
        };
        let block = dir.path().join("class/block");
        for (name, sub, entry) in [
            ("nvme1n1", "holders", "md127"),
            ("nvme2n1", "holders", "md127"),
            ("md127", "slaves", "nvme2n1"),
            ("md127", "slaves", "nvme1n1"),
            ("vdb", "holders", "dm-3"),
        ] {
            let d = block.join(name).join(sub);
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join(entry), "").unwrap();
        }
        assert_eq!(array_of(&sys, "nvme1n1").as_deref(), Some("md127"));
        assert_eq!(array_of(&sys, "vdb"), None);
        assert_eq!(array_of(&sys, "vdz"), None);
        assert_eq!(members_of(&sys, "md127"), ["nvme1n1", "nvme2n1"]);
        assert_eq!(node("cache"), Path::new("/dev/md/cache"));
    }
}
