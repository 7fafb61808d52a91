//! Loading the kernel modules the initramfs lists, in the order the builder computed from
//! `modules.dep` (dependencies first), with `finit_module(2)`.

use std::fs::File;
use std::path::Path;

use nix::errno::Errno;
use nix::kmod::{ModuleInitFlags, finit_module};

use crate::error::{Advise, Context, Error, Result};

/// `MODULE_INIT_COMPRESSED_FILE` (Linux 5.17): the kernel decompresses the module itself.
/// nix 0.32 does not name it.
const MODULE_INIT_COMPRESSED_FILE: u32 = 4;

/// What loading a module list did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Loaded {
    /// Modules loaded now.
    pub loaded: usize,
    /// Modules that were already loaded (or are built in under the same name).
    pub present: usize,
    /// Modules whose driver found no device to drive (`ENODEV`): harmless on hardware
    /// without that device, such as `kvm_intel` on an AMD host.
    pub no_device: Vec<String>,
}

/// The module paths of a list: one per line; blank lines and `#` comments are skipped.
pub fn parse_list(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
}

/// Loads every module in `list` (paths relative to `root`), in order.
pub fn load_list(root: &Path, list: &str) -> Result<Loaded> {
    let text = std::fs::read_to_string(root.join(list))
        .context("modules", || format!("cannot read the module list {list}"))
        .advise(INCOMPLETE)?;
    let mut done = Loaded::default();
    for module in parse_list(&text) {
        let file = File::open(root.join(module))
            .context("modules", || format!("cannot open {module}"))
            .advise(INCOMPLETE)?;
        match load(&file, module) {
            Ok(()) => done.loaded += 1,
            Err(Errno::EEXIST) => done.present += 1,
            Err(Errno::ENODEV) => done.no_device.push(file_name(module).to_owned()),
            Err(errno) => {
                return Err(Error::new(
                    "modules",
                    format!("cannot load {module}: {}", describe(errno)),
                )
                .advice(
                    "the module list does not fit this kernel (wrong order or version); \
                     rebuild the image",
                ));
            }
        }
    }
    Ok(done)
}

const INCOMPLETE: &str = "the initramfs is incomplete; rebuild the image";

fn load(file: &File, module: &str) -> std::result::Result<(), Errno> {
    let compressed = [".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .any(|ext| module.ends_with(ext));
    let flags = if compressed {
        ModuleInitFlags::from_bits_retain(MODULE_INIT_COMPRESSED_FILE)
    } else {
        ModuleInitFlags::empty()
    };
    finit_module(file, c"", flags)
}

/// What a `finit_module` error means; the kernel reuses a few errnos with a meaning of
/// their own (its log has the details).
fn describe(errno: Errno) -> String {
    let meaning = match errno {
        Errno::ENOENT => "unknown symbol: a module it needs is missing or listed after it",
        Errno::ENOEXEC => "not a module for this kernel (bad format or version magic)",
        Errno::EKEYREJECTED | Errno::EBADMSG => "module signature rejected",
        _ => return errno.desc().to_owned(),
    };
    format!("{meaning} ({errno})")
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_skips_blanks_and_comments() {
        let text = "# generated\nlib/modules/6.1/kernel/a.ko\n\n  lib/modules/6.1/kernel/b.ko  \n";
        let list: Vec<_> = parse_list(text).collect();
        assert_eq!(
            list,
            ["lib/modules/6.1/kernel/a.ko", "lib/modules/6.1/kernel/b.ko"]
        );
    }

    #[test]
    fn a_missing_module_file_names_the_module() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("modules"), "lib/modules/x/missing.ko\n").unwrap();
        let err = load_list(dir.path(), "modules").unwrap_err();
        assert_eq!(err.check, "modules");
        assert!(err.message.contains("lib/modules/x/missing.ko"), "{err}");
    }

    #[test]
    fn an_empty_list_loads_nothing() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("modules"), "").unwrap();
        assert_eq!(load_list(dir.path(), "modules").unwrap(), Loaded::default());
        assert!(load_list(dir.path(), "absent").is_err());
    }
}
