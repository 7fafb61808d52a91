//! The switch from the initramfs to the verified root, as util-linux's `switch_root` does
//! it: move the API mounts over, free the initramfs, make the new root `/`, and exec its
//! init (the verified copy of this binary).

use std::convert::Infallible;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crust_format::phase::Phase;
use nix::mount::{MsFlags, mount};
use nix::sys::statfs::{FsType, TMPFS_MAGIC, statfs};
use nix::unistd::{chdir, chroot, execv};

use crate::bootinfo::BootInfo;
use crate::console;
use crate::error::{Advise, Context, Error, Result};
use crate::stage1;

/// The mounts stage 1 made that stage 2 keeps.
const MOVED: [&str; 4] = ["/dev", "/proc", "/sys", "/run"];
/// What runs after the switch.
const NEXT_INIT: &std::ffi::CStr = c"/sbin/init";
/// `RAMFS_MAGIC` from `<linux/magic.h>` (nix 0.32 does not name it).
const RAMFS_MAGIC: u64 = 0x8584_58f6;

/// Switches to `new_root` and execs its init; returns only on failure.
pub fn run(new_root: &Path, mut boot: BootInfo) -> Result<Infallible> {
    for dir in MOVED {
        let target = new_root.join(&dir[1..]);
        if !target.is_dir() {
            return Err(Error::new(
                "switch-root",
                format!("the root image has no {dir} directory to move {dir} to"),
            )
            .advice("rebuild the image (its root needs /dev, /proc, /sys and /run)"));
        }
        mount(
            Some(dir),
            &target,
            None::<&str>,
            MsFlags::MS_MOVE,
            None::<&str>,
        )
        .context("switch-root", || {
            format!("cannot move {dir} to {}", target.display())
        })?;
    }
    let freed = free_initramfs();
    chdir(new_root).context("switch-root", || {
        format!("cannot enter {}", new_root.display())
    })?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .context("switch-root", || {
            format!("cannot move {} to /", new_root.display())
        })?;
    chroot(".").context("switch-root", || "cannot chroot into the new root".into())?;
    chdir("/").context("switch-root", || "cannot enter the new /".into())?;

    let at = console::now();
    crate::bootinfo::set_phase(&mut boot, Phase::SwitchRoot.as_str(), at);
    stage1::write_boot_info(&boot)?;
    console::phase_at(
        at,
        Phase::SwitchRoot,
        &format!(
            "freed {} KiB of initramfs, exec {}",
            freed / 1024,
            NEXT_INIT.to_string_lossy()
        ),
    );
    crate::observe::sink::hand_over();
    let errno = match execv(NEXT_INIT, &[NEXT_INIT]) {
        Err(errno) => errno,
        Ok(never) => match never {},
    };
    Err(Error::new(
        "switch-root",
        format!(
            "cannot run {} in the verified root: {}",
            NEXT_INIT.to_string_lossy(),
            errno.desc()
        ),
    ))
    .advise("rebuild the image: its root must hold this init at /sbin/init")
}

/// Deletes the initramfs's files, which would otherwise hold RAM for as long as the machine
/// runs. Returns the bytes freed. Refuses to touch anything unless `/` is a RAM file
/// system, so that a stage 1 started by mistake on a real root cannot wipe it.
fn free_initramfs() -> u64 {
    let is_ram = statfs("/").is_ok_and(|s| {
        let kind = s.filesystem_type();
        kind == TMPFS_MAGIC || kind == FsType(RAMFS_MAGIC as _)
    });
    let Ok(root) = fs::symlink_metadata("/") else {
        return 0;
    };
    if !is_ram {
        return 0;
    }
    let mut freed = 0;
    remove_children(Path::new("/"), root.dev(), &mut freed);
    freed
}

/// Removes everything under `dir` that lives on device `dev` (mount points of other file
/// systems, such as the new root, are left alone). Errors are skipped: freeing memory is
/// best effort.
fn remove_children(dir: &Path, dev: u64, freed: &mut u64) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.dev() != dev {
            continue;
        }
        if meta.is_dir() {
            remove_children(&path, dev, freed);
            let _ = fs::remove_dir(&path);
        } else if fs::remove_file(&path).is_ok() {
            *freed += meta.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_a_tree_on_one_device() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("a/b")).unwrap();
        fs::write(root.join("a/b/file"), [0u8; 100]).unwrap();
        fs::write(root.join("top"), [0u8; 20]).unwrap();
        std::os::unix::fs::symlink("/nonexistent", root.join("link")).unwrap();
        let dev = fs::metadata(root).unwrap().dev();
        let mut freed = 0;
        remove_children(root, dev, &mut freed);
        assert_eq!(fs::read_dir(root).unwrap().count(), 0);
        assert_eq!(freed, 120 + "/nonexistent".len() as u64);
    }

    #[test]
    fn leaves_other_devices_alone() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("keep"), b"x").unwrap();
        let mut freed = 0;
        remove_children(dir.path(), u64::MAX, &mut freed);
        assert!(dir.path().join("keep").exists());
        assert_eq!(freed, 0);
    }
}
