//! Network boot, live (diskless): what stage 1 does instead of finding a boot disk when the
//! kernel command line holds `crust.netboot` (the netboot UKI, docs/METAL.md).
//!
//! DHCP on the Ethernet links (the same client stage 2 runs), then `root.img` and
//! `verity.img` fetched from the source [`source`] chooses (HTTP(S) from the command
//! line's or the DHCP boot file's URL, else TFTP from the server that granted the lease),
//! into files on the initramfs's memory, each no longer than the signed manifest says; both are attached
//! read-only as loop devices and handed back as the "slot" stage 1 sets dm-verity up on.
//! The server is not trusted: the verity superblock is compared with the manifest, and
//! every block of the root is checked against the manifest's root hash as it is read.

pub mod source;
pub mod state;
pub mod tftp;

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use crust_format::install;
use crust_format::layout::Slot;
use crust_format::manifest::Manifest;

use crate::devnode::{self, DevNum, Kind};
use crate::disk::{BlockDev, BootDisk};
use crate::error::{Context, Error, Result};
use crate::{console, net};

use source::Source;

/// Where the fetched images are kept (the initramfs's memory: it stays, as the loop
/// devices' backing files, after the switch to the root).
pub const DIR: &str = "/run/crust/netboot";
/// The disk name stage 2 is told (no disk: `/var` is a tmpfs).
pub const DISK: &str = "network";

nix::ioctl_none_bad!(loop_ctl_get_free, 0x4C82);
nix::ioctl_write_int_bad!(loop_set_fd, 0x4C00);

/// Fetches the slot's images and attaches them; returns them as a boot "disk".
/// `command_line_url` is `crust.netboot.url=`, if the UKI's command line has one.
pub fn fetch(manifest: &Manifest, command_line_url: Option<&str>) -> Result<BootDisk> {
    let started = Instant::now();
    let mut network = net::Network::start();
    network
        .up_for_metadata()
        .map_err(|e| Error::new("netboot", format!("no network to boot from: {e}")))?;
    let boot_file = network.dhcp_boot_file();
    let source = source::choose(
        command_line_url,
        boot_file.as_deref(),
        network.dhcp_server(),
    )
    .map_err(|e| Error::new("netboot", e.to_string()))?;
    console::note(
        "crust-netboot",
        &format!(
            "fetching {} and {} {} from {}",
            install::NETBOOT_ROOT,
            install::NETBOOT_VERITY,
            source.how(),
            source.describe("")
        ),
    );
    fs::create_dir_all(DIR).context("netboot", || format!("cannot create {DIR}"))?;
    let fetching = Instant::now();
    let v = &manifest.verity;
    let mut bytes = 0;
    let mut files = Vec::new();
    for (name, len) in [
        (install::NETBOOT_ROOT, v.data_size()),
        (install::NETBOOT_VERITY, v.hash_size),
    ] {
        let path = Path::new(DIR).join(name);
        let file = File::create(&path)
            .context("netboot", || format!("cannot create {}", path.display()))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        let from = source.describe(name);
        let got = match &source {
            Source::Http { folder, .. } => {
                source::http_fetch(&folder.with_path(name), &mut out, len).map_err(|e| {
                    let hint = if e.to_string().contains("certificate") {
                        " (stage 1 trusts the web's public certificate authorities built into \
                         the init, not user-data's: serve the images with such a certificate, \
                         or over plain http, which dm-verity makes safe)"
                    } else {
                        ""
                    };
                    Error::new("netboot", format!("cannot fetch {from}: {e}{hint}"))
                })?
            }
            Source::Tftp { server, .. } => {
                tftp::fetch(*server, &source.tftp_path(name), &mut out, len)
                    .context("netboot", || format!("cannot fetch {from} by TFTP"))?
            }
        };
        out.flush()
            .context("netboot", || format!("cannot write {}", path.display()))?;
        drop(out);
        if got != len {
            return Err(Error::new(
                "netboot",
                format!("{from} is {got} bytes; the signed manifest says {len}"),
            ));
        }
        bytes += got;
        files.push(path);
    }
    let took = fetching.elapsed();
    console::note(
        "crust-netboot",
        &format!(
            "fetched {} and {} ({} KiB) {} from {} in {} ms ({} KiB/s; {} ms with DHCP)",
            install::NETBOOT_ROOT,
            install::NETBOOT_VERITY,
            bytes >> 10,
            source.how(),
            source.describe(""),
            took.as_millis(),
            (bytes >> 10) * 1000 / u64::try_from(took.as_millis().max(1)).unwrap_or(u64::MAX),
            started.elapsed().as_millis()
        ),
    );
    let root = attach(&files[0])?;
    let verity = attach(&files[1])?;
    Ok(BootDisk {
        disk: DISK.to_owned(),
        slot: Slot::A,
        root,
        verity,
    })
}

/// Attaches `file` read-only to a free loop device.
fn attach(file: &Path) -> Result<BlockDev> {
    let control = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/loop-control")
        .context("netboot", || {
            "cannot open /dev/loop-control (is the loop module loaded?)".into()
        })?;
    // SAFETY: LOOP_CTL_GET_FREE takes no argument; the fd is open.
    let number = unsafe { loop_ctl_get_free(control.as_raw_fd()) }
        .context("netboot", || "no free loop device".into())?;
    let name = format!("loop{number}");
    let sys = Path::new("/sys/class/block").join(&name);
    let deadline = Instant::now() + Duration::from_secs(2);
    let dev = loop {
        match DevNum::from_sysfs(&sys) {
            Ok(dev) => break dev,
            Err(e) if Instant::now() >= deadline => {
                return Err(Error::new("netboot", format!("{name} did not appear: {e}")));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let node = Path::new("/dev").join(&name);
    devnode::ensure(&node, Kind::Block, dev, Duration::from_secs(1))
        .context("netboot", || format!("cannot create {}", node.display()))?;
    let device = OpenOptions::new()
        .read(true)
        .open(&node)
        .context("netboot", || format!("cannot open {}", node.display()))?;
    // Read-only backing file: the kernel makes the loop device read-only too.
    let backing =
        File::open(file).context("netboot", || format!("cannot open {}", file.display()))?;
    let len = backing.metadata().map(|m| m.len()).unwrap_or(0);
    // SAFETY: LOOP_SET_FD takes the backing file's descriptor by value; both fds are open
    // for the call, and the kernel holds its own reference to the file afterwards.
    unsafe { loop_set_fd(device.as_raw_fd(), backing.as_raw_fd()) }.context("netboot", || {
        format!("cannot attach {} to {name}", file.display())
    })?;
    Ok(BlockDev {
        name,
        dev,
        sectors: len / 512,
    })
}
